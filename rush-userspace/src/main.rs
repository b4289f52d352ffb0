//! `rush`: the command-line frontend of Rush.
//!
//! It knows nothing but the protocol crate: it parses what the user typed (refusing bad
//! input with exit status 2 before anything reaches the daemon), sends one request over
//! the daemon's Unix socket, and renders the reply as text or JSON.

mod cli;
mod commands;
mod error;
mod output;
mod profile;
mod render;
mod time;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;

use crate::cli::{Cli, UsageError};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    match commands::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let mut stderr = std::io::stderr().lock();
            for line in e.lines() {
                let _ = writeln!(stderr, "rush: {line}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}

/// A value our parsers refused is reported as their one self-explaining line
/// (`rush: invalid --net "x": ...`); anything else the way clap does, with usage.
/// Both exit 2 (help and --version exit 0).
fn usage_error(e: clap::Error) -> ExitCode {
    if e.kind() == ErrorKind::ValueValidation
        && let Some(source) = std::error::Error::source(&e)
        && (source.is::<rush_proto::SpecError>() || source.is::<UsageError>())
    {
        let _ = writeln!(std::io::stderr(), "rush: {source}");
        return ExitCode::from(2);
    }
    e.exit()
}
