//! Booting a guest under QEMU and reading its serial console: every line is echoed live
//! with a prefix and logged; the `@@EXIT=<rc>@@` line the guest's /init prints last
//! becomes the result.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

pub struct Boot<'a> {
    pub label: &'a str,
    pub vmlinuz: &'a Path,
    pub initrd: &'a Path,
    pub append: String,
    pub memory_mb: u32,
    /// QEMU's -accel value: kvm, tcg,thread=single, tcg,thread=multi.
    pub accel: &'a str,
    pub timeout: Duration,
    pub log: PathBuf,
    /// A raw disk image attached as virtio-blk (/dev/vda in the guest).
    pub disk: Option<&'a Path>,
}

#[derive(Default, Clone)]
pub struct Outcome {
    /// The guest's payload status from the marker; None when no marker came.
    pub exit: Option<i32>,
    pub timed_out: bool,
    pub qemu_status: Option<i32>,
    /// From QEMU's start to the first line of /init.
    pub boot_time: Option<Duration>,
    pub total_time: Duration,
    /// The console, as lines (without the prefix).
    pub lines: Vec<String>,
}

struct Shared {
    exit: Option<i32>,
    first_init_line: Option<Duration>,
    marker_at: Option<Instant>,
    lines: Vec<String>,
}

pub fn boot(b: &Boot<'_>) -> Result<Outcome> {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", b.accel, "-cpu", if b.accel == "kvm" { "host" } else { "max" }]);
    cmd.args(["-machine", "q35", "-m", &b.memory_mb.to_string(), "-smp", "2"])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(b.vmlinuz)
        .arg("-initrd")
        .arg(b.initrd)
        .arg("-append")
        .arg(&b.append)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // QEMU must not outlive xtask (killed by a CI timeout, say) and keep a core busy.
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    if let Some(disk) = b.disk {
        cmd.arg("-drive").arg(format!("file={},format=raw,if=virtio", disk.display()));
    }
    eprintln!("    $ {}", shell_words(&cmd));
    let start = Instant::now();
    let mut child = cmd.spawn().context("starting qemu-system-x86_64")?;
    let mut log = std::fs::File::create(&b.log).with_context(|| format!("creating {}", b.log.display()))?;
    let shared = Arc::new(Mutex::new(Shared {
        exit: None,
        first_init_line: None,
        marker_at: None,
        lines: Vec::new(),
    }));

    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let prefix = format!("[{}] ", b.label);
    let s2 = shared.clone();
    let p2 = prefix.clone();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        let out = std::io::stdout();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let _ = log.write_all(&buf);
            let line = String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']).replace('\r', "");
            let _ = writeln!(out.lock(), "{p2}{line}");
            let mut s = s2.lock().unwrap();
            if s.first_init_line.is_none() && line.contains("rush-vm: init started") {
                s.first_init_line = Some(start.elapsed());
            }
            if let Some(rc) = marker(&line) {
                s.exit = Some(rc);
                s.marker_at = Some(Instant::now());
            }
            s.lines.push(line);
        }
    });
    let p3 = prefix.clone();
    let err_reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{p3}qemu: {line}");
        }
    });

    let mut timed_out = false;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        let marker_at = shared.lock().unwrap().marker_at;
        // After the marker the guest powers off at once; do not wait long for it.
        let late = marker_at.is_some_and(|t| t.elapsed() > Duration::from_secs(30));
        if start.elapsed() > b.timeout || late {
            timed_out = !late;
            if timed_out {
                eprintln!("{prefix}TIMEOUT after {:?}: killing QEMU", b.timeout);
            }
            let _ = child.kill();
            break child.wait().ok();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = reader.join();
    let _ = err_reader.join();
    let total_time = start.elapsed();
    let s = shared.lock().unwrap();
    Ok(Outcome {
        exit: s.exit,
        timed_out,
        qemu_status: status.and_then(|s| s.code()),
        boot_time: s.first_init_line,
        total_time,
        lines: s.lines.clone(),
    })
}

/// `@@EXIT=<rc>@@` anywhere in the line (kernel messages may share it).
fn marker(line: &str) -> Option<i32> {
    let at = line.find("@@EXIT=")?;
    let rest = &line[at + 7..];
    let end = rest.find("@@")?;
    rest[..end].trim().parse().ok()
}

fn shell_words(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| {
            let a = a.to_string_lossy();
            if a.contains(' ') { format!("'{a}'") } else { a.into_owned() }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn marker_is_found_in_noise() {
        assert_eq!(super::marker("@@EXIT=0@@"), Some(0));
        assert_eq!(super::marker("[  1.2] foo @@EXIT=101@@"), Some(101));
        assert_eq!(super::marker("@@EXIT=@@"), None);
        assert_eq!(super::marker("echo \"@@EXIT=$rc@@\""), None);
    }
}
