//! The read-judge-run loop: brush-interactive's line editor reads a line, the gate judges
//! it, brush runs it, and the run is timed into the performance records. Written here
//! rather than using brush-interactive's own loop, which has no place to judge a line
//! before it runs or to time it.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use brush_interactive::{InputBackend, InteractivePrompt, ReadResult};

use super::{ShellRef, gate, perf, prompt};

pub async fn run(shell: &ShellRef, interactive: bool, no_editing: bool) -> Result<(), brush_core::Error> {
    // reedline needs a terminal on stdin (`rush -i < file` reads plain lines).
    if interactive && !no_editing && std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        let options = brush_interactive::UIOptions::default();
        match brush_interactive::ReedlineInputBackend::new(&options, shell) {
            Ok(mut backend) => return repl(shell, &mut backend, interactive).await,
            Err(e) => eprintln!("rush: no line editing ({e}); reading plain lines"),
        }
    }
    if interactive {
        return repl(shell, &mut brush_interactive::MinimalInputBackend, interactive).await;
    }
    let mut reader = StdinReader { syntax_error: false };
    repl(shell, &mut reader, interactive).await?;
    if reader.syntax_error {
        // bash: a syntax error ends a non-interactive shell with status 2.
        shell.lock().await.set_last_exit_status(2);
    }
    Ok(())
}

async fn repl(
    shell: &ShellRef,
    input: &mut impl InputBackend,
    interactive: bool,
) -> Result<(), brush_core::Error> {
    if interactive && std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        brush_core::terminal::TerminalControl::acquire()?;
    }
    let mut recorder = if interactive { perf::Recorder::open(&*shell.lock().await) } else { None };
    // While a line runs, SIGINT is ours to handle (it would otherwise kill the shell when
    // nothing else has claimed it).
    let mut interrupt = if interactive {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok()
    } else {
        None
    };
    if interactive {
        tokio::spawn(stuck_line_watchdog());
    }
    shell.lock().await.start_interactive_session()?;
    loop {
        let prompt = {
            let mut sh = shell.lock().await;
            sh.check_for_completed_jobs()?;
            if interactive {
                prompt::refresh(&mut sh);
                run_prompt_command(&mut sh).await;
            }
            InteractivePrompt {
                prompt: sh.compose_prompt().await?,
                alt_side_prompt: sh.compose_alt_side_prompt().await?,
                continuation_prompt: sh.compose_continuation_prompt().await?,
            }
        };
        let line = match input.read_line(shell, prompt) {
            Ok(ReadResult::Input(l) | ReadResult::BoundCommand(l)) => l,
            Ok(ReadResult::Eof) => break,
            Ok(ReadResult::Interrupted) => {
                shell.lock().await.set_last_exit_status(130);
                continue;
            }
            Err(e) => {
                eprintln!("rush: cannot read input: {e}");
                break;
            }
        };
        let mut sh = shell.lock().await;
        if interactive {
            let _ = sh.add_to_history(line.trim_end_matches('\n'));
        }
        if line.trim().is_empty() {
            continue;
        }
        if !gate::check_line(&mut sh, &line).await {
            sh.set_last_exit_status(gate::EXIT_NOT_RUN);
            continue;
        }
        let lines = line.lines().count().max(1);
        let clock = perf::Clock::start();
        let params = sh.default_exec_params();
        LINE.fetch_add(1, Ordering::SeqCst);
        let result = {
            let source = brush_core::SourceInfo::from("main");
            let mut run = std::pin::pin!(sh.run_string(line.clone(), &source, &params));
            match interrupt.as_mut() {
                // Ctrl-C reaches the shell only while the shell itself is in the
                // foreground (`wait`, a Rush verb, shell code): a verb that handles it
                // ends as it chooses; otherwise the line is abandoned, as bash does. A
                // foreground program has the terminal and gets Ctrl-C alone.
                Some(sigint) => tokio::select! {
                    biased;
                    r = &mut run => r,
                    _ = sigint.recv() => match tokio::time::timeout(GRACE, &mut run).await {
                        Ok(r) => r,
                        Err(_) => {
                            let _ = writeln!(std::io::stderr());
                            Ok(brush_core::ExecutionResult::new(130))
                        }
                    },
                },
                None => run.await,
            }
        };
        LINE.fetch_add(1, Ordering::SeqCst);
        sh.increment_interactive_line_offset(lines);
        if interactive {
            // Saved after every line: a closed terminal (SIGHUP) or a crash loses nothing.
            let _ = sh.save_history();
        }
        let status = match &result {
            Ok(r) => u8::from(r.exit_code),
            Err(_) => 1,
        };
        if let Some(rec) = recorder.as_mut() {
            if rec.session() != super::session_file_name(&sh) || rec.is_stale() {
                recorder = perf::Recorder::open(&sh);
            }
            if let Some(rec) = recorder.as_mut()
                && let Some(note) = rec.record(line.trim(), clock.stop(), status)
            {
                let _ = writeln!(sh.stderr(), "rush: {note}");
            }
        }
        if interactive {
            prompt::command_done();
        }
        match result {
            Ok(r) if matches!(r.next_control_flow, brush_core::results::ExecutionControlFlow::ExitShell) => {
                break;
            }
            Ok(_) => {}
            Err(e) => {
                let mut err = sh.stderr();
                let _ = sh.display_error(&mut err, &e);
            }
        }
        if sh.options().exit_after_one_command {
            break;
        }
    }
    let mut sh = shell.lock().await;
    sh.end_interactive_session()?;
    if interactive {
        let _ = writeln!(sh.stderr(), "exit");
        let _ = sh.save_history();
    }
    sh.on_exit().await?;
    Ok(())
}

/// Odd while a line runs; each line adds 2.
static LINE: AtomicU64 = AtomicU64::new(0);
/// How long a Rush verb gets to end by itself after Ctrl-C.
const GRACE: Duration = Duration::from_millis(500);

/// brush checks for nothing between the builtins of a loop (`while true; do :; done`):
/// such a line never yields, so Ctrl-C cannot abandon it. This task, on another worker,
/// sees a Ctrl-C that did not end the line within a second, says so, and ends the shell
/// on the next one (the way out bash would have given).
async fn stuck_line_watchdog() {
    let Ok(mut sigint) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()) else {
        return;
    };
    let mut armed_for: Option<u64> = None;
    loop {
        sigint.recv().await;
        let line = LINE.load(Ordering::SeqCst);
        if line.is_multiple_of(2) {
            continue;
        }
        if armed_for == Some(line) {
            eprintln!("\nrush: ending the shell: its line did not stop on Ctrl-C");
            std::process::exit(130);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        if LINE.load(Ordering::SeqCst) == line {
            eprintln!(
                "\nrush: this line does not stop on Ctrl-C (a loop of builtins); Ctrl-C again ends the shell"
            );
            armed_for = Some(line);
        }
    }
}

/// PROMPT_COMMAND, a string or an array of them, as bash runs it before each prompt.
async fn run_prompt_command(sh: &mut super::Shell) {
    let commands: Vec<String> = match sh.env_var("PROMPT_COMMAND").map(|v| v.value().clone()) {
        Some(brush_core::ShellValue::String(s)) => vec![s],
        Some(brush_core::ShellValue::IndexedArray(a)) => a.values().cloned().collect(),
        _ => return,
    };
    let status = sh.last_exit_status();
    for c in commands {
        let params = sh.default_exec_params();
        let _ = sh.run_string(c, &brush_core::SourceInfo::from("PROMPT_COMMAND"), &params).await;
    }
    sh.set_last_exit_status(status);
}

/// Standard input read the way bash reads a script from a pipe: a byte at a time (so a
/// command that reads stdin gets the rest of it, not what we buffered), one complete
/// command at a time (so an alias defined on one line applies to the next, and a
/// multi-line `if` arrives whole).
pub struct StdinReader {
    /// Set after a syntax error: bash stops reading a non-interactive script there.
    pub syntax_error: bool,
}

impl StdinReader {
    /// Appends one line (or what is left before EOF) to `buf`; false at EOF with nothing
    /// read by this call.
    fn read_physical_line(buf: &mut Vec<u8>) -> std::io::Result<bool> {
        let mut byte = [0u8; 1];
        let start = buf.len();
        loop {
            // SAFETY: reads one byte into a live one-byte buffer from fd 0, which we do not
            // own and do not close.
            let n = unsafe { libc::read(0, byte.as_mut_ptr().cast(), 1) };
            match n {
                0 => return Ok(buf.len() > start),
                1 => {
                    buf.push(byte[0]);
                    if byte[0] == b'\n' {
                        return Ok(true);
                    }
                }
                _ => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
    }
}

impl InputBackend for StdinReader {
    fn read_line(
        &mut self,
        shell: &brush_interactive::ShellRef<impl brush_core::ShellExtensions>,
        _prompt: InteractivePrompt,
    ) -> Result<ReadResult, brush_interactive::ShellError> {
        if self.syntax_error {
            return Ok(ReadResult::Eof);
        }
        let mut buf = Vec::new();
        loop {
            if !Self::read_physical_line(&mut buf)? {
                if buf.is_empty() {
                    return Ok(ReadResult::Eof);
                }
                // EOF inside an unfinished command: brush reports the syntax error.
                self.syntax_error = true;
                return Ok(ReadResult::Input(String::from_utf8_lossy(&buf).into_owned()));
            }
            let text = String::from_utf8_lossy(&buf).into_owned();
            let Ok(sh) = shell.try_lock() else { return Ok(ReadResult::Input(text)) };
            match sh.parse_string(text.clone()) {
                Err(brush_parser::ParseError::Tokenizing { inner, .. }) if inner.is_incomplete() => continue,
                Err(brush_parser::ParseError::ParsingAtEndOfInput) => continue,
                Err(_) => {
                    self.syntax_error = true;
                    return Ok(ReadResult::Input(text));
                }
                Ok(_) => return Ok(ReadResult::Input(text)),
            }
        }
    }
}
