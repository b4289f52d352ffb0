//! `rush`: the command-line frontend of Rush, and a shell.
//!
//! With a subcommand (`rush agent list`) it is a client that knows nothing but the
//! protocol crate: it parses what the user typed (refusing bad input with exit status 2
//! before anything reaches the daemon), sends one request over the daemon's Unix socket,
//! and renders the reply as text or JSON. Without one (`rush`, `rush -c CMD`, `rush
//! SCRIPT`) it is a bash-compatible shell with Rush built in (src/shell/).

mod cli;
mod commands;
mod error;
mod output;
mod profile;
mod render;
mod shell;
mod time;
mod top;

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;

use crate::cli::{Cli, UsageError};

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    if shell::wants_shell(&args[1.min(args.len())..]) {
        return shell::run(args.into_iter().skip(1).collect());
    }
    ExitCode::from(run_cli(args))
}

/// The command-line client on these arguments (the program name first); its exit status.
/// The shell's `rush` builtin runs it too.
pub fn run_cli(args: Vec<OsString>) -> u8 {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    match commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            let mut stderr = std::io::stderr().lock();
            for line in e.lines() {
                let _ = writeln!(stderr, "rush: {line}");
            }
            e.exit_code()
        }
    }
}

/// A value our parsers refused is reported as their one self-explaining line
/// (`rush: invalid --net "x": ...`); anything else the way clap does, with usage.
/// Both exit 2 (help and --version exit 0).
fn usage_error(e: clap::Error) -> u8 {
    if e.kind() == ErrorKind::ValueValidation
        && let Some(source) = std::error::Error::source(&e)
        && (source.is::<rush_proto::SpecError>() || source.is::<UsageError>())
    {
        let _ = writeln!(std::io::stderr(), "rush: {source}");
        return 2;
    }
    let _ = e.print();
    let _ = std::io::stdout().flush();
    // Help and --version go to stdout and succeed; anything else is a usage error.
    if e.use_stderr() { 2 } else { 0 }
}
