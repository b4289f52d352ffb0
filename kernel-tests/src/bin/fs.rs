//! `rush-test-fs OP ARGS...`: one file operation and its outcome, for tests that must see
//! the exact errno an agent gets. Prints `ok` (plus a detail) or `errno NAME`, one line
//! per operation; exits 0 if every operation succeeded, 10 otherwise.
//!
//! read PATH | write PATH TEXT | create PATH | unlink PATH | mkdir PATH | rename FROM TO
//! link FROM TO | exec PATH [ARGS] | hold PATH (opens PATH read-write, prints `opened`,
//! then runs `read`/`write` lines from stdin on that descriptor until EOF)
//! open-loop N PATH (N × open+read+close; prints `ns_per_op X`)
//! try-loop N PATH (N × open, whatever each returns; prints `ok A denied B other C`)
//! open-serve (for each stdin line `N PATH`: N × open+read+close, prints `ns_per_op X`)
//! poll-open PATH (prints `ready`, then for each stdin line `grant`: open+close PATH in a
//! tight loop until it succeeds, prints `ok T N`; `revoke`: until it fails with EPERM,
//! prints `denied T N`; T = CLOCK_MONOTONIC ns of that attempt's return, N = attempts)
//! map PATH shared|shared-ro|private (maps PATH: shared read-write; shared read-only from a
//! read-write descriptor, made writable by mprotect on the first `write`; or private
//! read-only. Closes the descriptor, prints `mapped`, then runs `read`/`write` lines from
//! stdin on the pages)
//! deep-tree ROOT DEPTH (outside agents: makes ROOT/d/d/.../f, DEPTH levels; prints it)

use std::fs::{File, OpenOptions};
use std::io::{BufRead, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::ExitCode;

fn outcome<T>(r: std::io::Result<T>, ok: impl FnOnce(T) -> String) -> bool {
    match r {
        Ok(v) => {
            println!("{}", ok(v));
            true
        }
        Err(e) => {
            match e.raw_os_error() {
                Some(n) => println!("errno {:?}", nix::errno::Errno::from_raw(n)),
                None => println!("error {e}"),
            }
            false
        }
    }
}

fn read(path: &str) -> std::io::Result<usize> {
    let mut s = Vec::new();
    File::open(path)?.read_to_end(&mut s)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    let ok = match a(0) {
        "read" => outcome(read(a(1)), |n| format!("ok {n}")),
        "write" => outcome(
            OpenOptions::new()
                .append(true)
                .create(true)
                .open(a(1))
                .and_then(|mut f| f.write_all(a(2).as_bytes())),
            |_| "ok".into(),
        ),
        "create" => outcome(OpenOptions::new().write(true).create_new(true).open(a(1)), |_| "ok".into()),
        "unlink" => outcome(std::fs::remove_file(a(1)), |_| "ok".into()),
        "mkdir" => outcome(std::fs::create_dir(a(1)), |_| "ok".into()),
        "rename" => outcome(std::fs::rename(a(1), a(2)), |_| "ok".into()),
        "link" => outcome(std::fs::hard_link(a(1), a(2)), |_| "ok".into()),
        "exec" => outcome(std::process::Command::new(a(1)).args(&args[2..]).status(), |s| format!("ok {s}")),
        "hold" => hold(a(1)),
        "open-loop" => open_loop(a(1), a(2)),
        "try-loop" => try_loop(a(1), a(2)),
        "open-serve" => open_serve(),
        "create-serve" => create_serve(),
        "poll-open" => poll_open(a(1)),
        "map" => map(a(1), a(2)),
        "deep-tree" => deep_tree(a(1), a(2)),
        _ => {
            eprintln!(
                "usage: rush-test-fs read|write|create|unlink|mkdir|rename|link|exec|hold|open-loop|try-loop|open-serve|\
                 create-serve|poll-open|map|deep-tree ..."
            );
            return ExitCode::from(2);
        }
    };
    if ok { ExitCode::SUCCESS } else { ExitCode::from(10) }
}

fn hold(path: &str) -> bool {
    let file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) => return outcome::<()>(Err(e), |_| String::new()),
    };
    println!("opened");
    let _ = std::io::stdout().flush();
    let mut all = true;
    for line in std::io::stdin().lock().lines().map_while(Result::ok) {
        let mut byte = [0u8; 1];
        all &= match line.trim() {
            "read" => outcome(file.read_at(&mut byte, 0), |n| format!("ok {n}")),
            "write" => outcome(file.write_at(b"w", 0), |n| format!("ok {n}")),
            _ => continue,
        };
        let _ = std::io::stdout().flush();
    }
    all
}

fn open_loop(n: &str, path: &str) -> bool {
    let Ok(n) = n.parse::<u32>() else {
        // On stdout: open-serve's caller waits for one line per request.
        println!("open-loop: N must be a number, not {n:?}");
        return false;
    };
    let mut byte = [0u8; 1];
    let start = std::time::Instant::now();
    for _ in 0..n {
        match File::open(path).and_then(|mut f| f.read(&mut byte)) {
            Ok(_) => {}
            Err(e) => return outcome::<()>(Err(e), |_| String::new()),
        }
    }
    println!("ns_per_op {}", start.elapsed().as_nanos() / u128::from(n.max(1)));
    true
}

fn try_loop(n: &str, path: &str) -> bool {
    let Ok(n) = n.parse::<u32>() else {
        eprintln!("try-loop: N must be a number");
        return false;
    };
    let (mut ok, mut denied, mut other) = (0, 0, 0);
    for _ in 0..n {
        match File::open(path) {
            Ok(_) => ok += 1,
            Err(e) if e.raw_os_error() == Some(libc_eperm()) => denied += 1,
            Err(_) => other += 1,
        }
    }
    println!("ok {ok} denied {denied} other {other}");
    true
}

fn libc_eperm() -> i32 {
    nix::errno::Errno::EPERM as i32
}

/// `N PATH` lines on stdin, each answered by `open-loop N PATH`'s line; a refused open is
/// answered too and serving goes on (so a test can ask again), failing the exit status.
fn open_serve() -> bool {
    let mut all = true;
    for line in std::io::stdin().lock().lines().map_while(Result::ok) {
        let Some((n, path)) = line.trim().split_once(' ') else { continue };
        all &= open_loop(n, path);
        let _ = std::io::stdout().flush();
    }
    all
}

/// A PATH per line on stdin, each created (a new, empty file) and answered `ok` or
/// `errno E`; serving goes on after a refusal, failing the exit status.
fn create_serve() -> bool {
    let mut all = true;
    for line in std::io::stdin().lock().lines().map_while(Result::ok) {
        all &= outcome(OpenOptions::new().write(true).create_new(true).open(line.trim()), |_| "ok".into());
        let _ = std::io::stdout().flush();
    }
    all
}

fn monotonic_ns() -> u64 {
    // SAFETY: clock_gettime writes only into `ts`.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is a valid timespec for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn poll_open(path: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(path) else { return false };
    let attempt = || {
        // SAFETY: a NUL-terminated path; the descriptor is closed right away.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        if fd >= 0 {
            // SAFETY: our own descriptor.
            unsafe { libc::close(fd) };
        }
        (fd >= 0, errno, monotonic_ns())
    };
    println!("ready");
    let _ = std::io::stdout().flush();
    for line in std::io::stdin().lock().lines().map_while(Result::ok) {
        let want_open = match line.trim() {
            "grant" => true,
            "revoke" => false,
            _ => continue,
        };
        let mut n: u64 = 0;
        loop {
            n += 1;
            match attempt() {
                (true, _, t) if want_open => break println!("ok {t} {n}"),
                (false, libc::EPERM, t) if !want_open => break println!("denied {t} {n}"),
                (true, _, _) | (false, libc::EPERM, _) => {}
                (false, errno, _) => {
                    println!("errno {:?}", nix::errno::Errno::from_raw(errno));
                    return false;
                }
            }
        }
        let _ = std::io::stdout().flush();
    }
    true
}

fn map(path: &str, mode: &str) -> bool {
    use std::os::fd::AsRawFd;
    let shared = mode.starts_with("shared");
    let file = match OpenOptions::new().read(true).write(shared).open(path) {
        Ok(f) => f,
        Err(e) => return outcome::<()>(Err(e), |_| String::new()),
    };
    let len = file.metadata().map(|m| m.len() as usize).unwrap_or(0).max(1);
    let (prot, flags) = match mode {
        "shared" => (libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED),
        "shared-ro" => (libc::PROT_READ, libc::MAP_SHARED),
        _ => (libc::PROT_READ, libc::MAP_PRIVATE),
    };
    // SAFETY: a fresh mapping of an open file; the kernel picks the address.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, file.as_raw_fd(), 0) };
    if p == libc::MAP_FAILED {
        return outcome::<()>(Err(std::io::Error::last_os_error()), |_| String::new());
    }
    // The pages alone from here on: no descriptor for the file hooks to check.
    drop(file);
    println!("mapped");
    let _ = std::io::stdout().flush();
    for line in std::io::stdin().lock().lines().map_while(Result::ok) {
        match line.trim() {
            "read" => {
                // SAFETY: offset 0 of a live mapping at least one byte long.
                println!("ok {}", unsafe { std::ptr::read_volatile(p.cast::<u8>()) } as char)
            }
            "write" if shared => {
                // SAFETY: our own mapping, shared, from a read-write descriptor.
                let writable = prot & libc::PROT_WRITE != 0
                    || unsafe { libc::mprotect(p, len, libc::PROT_READ | libc::PROT_WRITE) } == 0;
                if !writable {
                    outcome::<()>(Err(std::io::Error::last_os_error()), |_| String::new());
                    continue;
                }
                // SAFETY: offset 0 of a live mapping, writable now.
                unsafe { std::ptr::write_volatile(p.cast::<u8>(), b'W') };
                println!("ok");
            }
            _ => continue,
        }
        let _ = std::io::stdout().flush();
    }
    true
}

fn deep_tree(root: &str, depth: &str) -> bool {
    let Ok(depth) = depth.parse::<usize>() else {
        eprintln!("deep-tree: DEPTH must be a number");
        return false;
    };
    // Relative steps: an absolute path 1000 levels deep is longer than PATH_MAX.
    let r = (|| -> std::io::Result<PathBuf> {
        std::env::set_current_dir(root)?;
        for _ in 0..depth {
            std::fs::create_dir_all("d")?;
            std::env::set_current_dir("d")?;
        }
        std::fs::write("f", b"deep")?;
        std::env::current_dir()
    })();
    outcome(r, |p| format!("ok {}", p.join("f").display()))
}
