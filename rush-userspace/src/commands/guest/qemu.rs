//! One boot of the guest under QEMU: no network device, the console on QEMU's stdout,
//! read by [`Console`]; the command's output goes to our stdout as it comes.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::console::Console;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    /// Single-threaded TCG, as the VM test tier runs (xtask/src/vm.rs).
    Tcg,
}

pub struct Boot<'a> {
    pub qemu: &'a Path,
    pub vmlinuz: &'a Path,
    pub initrd: &'a Path,
    pub accel: Accel,
    pub memory_mb: u64,
    pub timeout: Duration,
    pub nonce: &'a str,
}

#[derive(Debug)]
pub enum End {
    Exited(ExitStatus),
    TimedOut,
    /// KVM only: QEMU printed nothing for [`KVM_SILENCE`] (a host whose KVM cannot run a
    /// stock kernel hangs rather than fails).
    Silent,
}

#[derive(Debug)]
pub struct Outcome {
    pub status: Option<i32>,
    pub end: End,
    /// Whether the guest printed anything (then QEMU had loaded the kernel and initrd).
    pub printed: bool,
    /// From QEMU's start to the command's start marker.
    pub boot_time: Option<Duration>,
    pub total: Duration,
    pub console_tail: Vec<String>,
    pub qemu_stderr: Vec<String>,
}

/// How long a KVM guest may stay silent before it counts as hung.
const KVM_SILENCE: Duration = Duration::from_secs(30);
/// After the status line the guest powers off at once; this long is a stuck poweroff.
const AFTER_STATUS: Duration = Duration::from_secs(20);

/// Boots and waits. `on_output` runs once, when the guest first prints.
pub fn boot(b: &Boot<'_>, mut on_output: impl FnMut()) -> Result<Outcome> {
    let mut cmd = Command::new(b.qemu);
    match b.accel {
        Accel::Kvm => cmd.args(["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => cmd.args(["-accel", "tcg,thread=single", "-cpu", "max"]),
    };
    cmd.args(["-machine", "q35", "-m", &b.memory_mb.to_string(), "-smp", "1"])
        // -nic none: the guest has no network device at all.
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(b.vmlinuz)
        .arg("-initrd")
        .arg(b.initrd)
        .args(["-append", "console=ttyS0 quiet panic=-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Not the workspace: a QEMU that aborts (KVM on a host that cannot run the guest)
        // must not leave a core file in it.
        .current_dir("/");
    // SAFETY: prctl and setrlimit are async-signal-safe and read only the local `none`.
    // QEMU must not outlive rush (killed by a timeout of its caller) and keep a core
    // busy, nor dump core anywhere.
    unsafe {
        cmd.pre_exec(|| {
            let none = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
                || libc::setrlimit(libc::RLIMIT_CORE, &none) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("cannot start {}", b.qemu.display()))?;
    let stdout = child.stdout.take().context("QEMU's stdout")?;
    let stderr = child.stderr.take().context("QEMU's stderr")?;

    // The readers only read; this thread feeds the console and writes our stdout (whose
    // lock the CLI's output may hold for the whole command on this thread).
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || read_chunks(stdout, &tx));
    let (err_tx, err_rx) = mpsc::channel::<Vec<String>>();
    std::thread::spawn(move || {
        let _ = err_tx.send(BufReader::new(stderr).lines().map_while(std::result::Result::ok).collect());
    });

    let mut console = Console::new(b.nonce);
    let mut run = Run { printed: false, boot_time: None, status_at: None, stdout_open: true };
    let mut out = Vec::new();
    let mut eof = false;
    let end = loop {
        if eof {
            std::thread::sleep(Duration::from_millis(50));
        } else {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(chunk) => run.take(&mut console, &chunk, &mut out, start, &mut on_output),
                Err(RecvTimeoutError::Timeout) => {}
                // QEMU closed its stdout: it is exiting.
                Err(RecvTimeoutError::Disconnected) => eof = true,
            }
        }
        if let Some(st) = child.try_wait().context("waiting for QEMU")? {
            break End::Exited(st);
        }
        let stop = if run.status_at.is_some_and(|t| t.elapsed() > AFTER_STATUS) {
            Some(None)
        } else if start.elapsed() > b.timeout {
            Some(Some(End::TimedOut))
        } else if b.accel == Accel::Kvm && !run.printed && start.elapsed() > KVM_SILENCE {
            Some(Some(End::Silent))
        } else {
            None
        };
        if let Some(why) = stop {
            let _ = child.kill();
            let st = child.wait().context("waiting for QEMU")?;
            break why.unwrap_or(End::Exited(st));
        }
    };
    // What QEMU wrote before it ended; not waiting long (nor joining the readers), in
    // case something it started still holds its pipes.
    let drained = Instant::now() + Duration::from_secs(2);
    while let Ok(chunk) = rx.recv_timeout(drained.saturating_duration_since(Instant::now())) {
        run.take(&mut console, &chunk, &mut out, start, &mut on_output);
    }
    let qemu_stderr = err_rx.recv_timeout(Duration::from_secs(1)).unwrap_or_default();
    console.finish(&mut out);
    run.forward(&mut out);
    Ok(Outcome {
        status: console.status(),
        end,
        printed: run.printed,
        boot_time: run.boot_time,
        total: start.elapsed(),
        console_tail: console.tail(),
        qemu_stderr,
    })
}

/// What one boot saw so far.
struct Run {
    printed: bool,
    boot_time: Option<Duration>,
    status_at: Option<Instant>,
    stdout_open: bool,
}

impl Run {
    fn take(
        &mut self,
        console: &mut Console,
        chunk: &[u8],
        out: &mut Vec<u8>,
        start: Instant,
        on_output: &mut impl FnMut(),
    ) {
        if !self.printed {
            self.printed = true;
            on_output();
        }
        let was_started = console.started();
        console.feed(chunk, out);
        if console.started() && !was_started {
            self.boot_time = Some(start.elapsed());
        }
        if console.status().is_some() && self.status_at.is_none() {
            self.status_at = Some(Instant::now());
        }
        self.forward(out);
    }

    /// Writes the command's output to our stdout. Once whoever reads it is gone, the rest
    /// is dropped and the guest still runs to its end, as a command whose reader left would.
    fn forward(&mut self, out: &mut Vec<u8>) {
        if self.stdout_open && !out.is_empty() {
            let mut stdout = std::io::stdout().lock();
            self.stdout_open = stdout.write_all(out).and_then(|()| stdout.flush()).is_ok();
        }
        out.clear();
    }
}

/// QEMU's stdout, chunk by chunk, until QEMU closes it (or no one listens).
fn read_chunks(mut from: impl Read, tx: &mpsc::Sender<Vec<u8>>) {
    let mut buf = vec![0u8; 1 << 14];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A stand-in for qemu-system-x86_64: a script that prints a console.
    fn fake_qemu(dir: &Path, body: &str) -> std::path::PathBuf {
        let p = dir.join("qemu");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn boot_fake(qemu: &Path, accel: Accel, timeout: Duration) -> (Outcome, u32) {
        let mut outputs = 0;
        let b = Boot {
            qemu,
            vmlinuz: Path::new("/nonexistent"),
            initrd: Path::new("/nonexistent"),
            accel,
            memory_mb: 512,
            timeout,
            nonce: "N1",
        };
        let o = boot(&b, || outputs += 1).unwrap();
        (o, outputs)
    }

    /// The CLI's output may hold stdout's lock on the calling thread for the whole
    /// command: the guest's output must still get through (it once deadlocked here).
    #[test]
    fn a_guest_reports_its_status_while_this_thread_holds_stdout() {
        let d = tempfile::tempdir().unwrap();
        let q = fake_qemu(
            d.path(),
            "echo 'rush-vm: init started'; echo '@@RUSH-START-N1@@'; echo guest-output; \
             printf '\\n@@RUSH-EXIT-N1=3@@\\n'; echo 'reboot: Power down'",
        );
        let held = std::io::stdout().lock();
        let (o, outputs) = boot_fake(&q, Accel::Tcg, Duration::from_secs(20));
        drop(held);
        assert_eq!(o.status, Some(3));
        assert!(matches!(o.end, End::Exited(st) if st.success()), "{:?}", o.end);
        assert!(o.printed && o.boot_time.is_some() && outputs == 1);
        assert_eq!(o.console_tail, ["rush-vm: init started", "reboot: Power down"]);
    }

    #[test]
    fn a_guest_past_its_time_is_stopped_and_a_silent_kvm_one_is_told_apart() {
        let d = tempfile::tempdir().unwrap();
        let q = fake_qemu(d.path(), "echo booting; exec sleep 30");
        let t = Instant::now();
        let (o, _) = boot_fake(&q, Accel::Tcg, Duration::from_secs(1));
        assert!(matches!(o.end, End::TimedOut) && o.status.is_none(), "{:?}", o.end);
        assert!(t.elapsed() < Duration::from_secs(10));
        let q = fake_qemu(d.path(), "echo 'failed to set MSR' >&2; exit 134");
        let (o, outputs) = boot_fake(&q, Accel::Kvm, Duration::from_secs(20));
        assert!(!o.printed && outputs == 0 && o.status.is_none());
        assert_eq!(o.qemu_stderr, ["failed to set MSR"]);
    }
}
