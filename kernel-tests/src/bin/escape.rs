//! `rush-test-escape STEP ARGS... [;; STEP ARGS...]...`: escape attempts against Rush's
//! confinement, one system call (or a short fixed sequence) per step, run in order in ONE
//! process so that a step can use what an earlier one left (an open fd, a mount, a
//! namespace, a rename). Every step prints one line, `ok DETAIL` or `errno NAME`, and
//! `errno NAME (STAGE)` when a later stage of a multi-call step failed (so `errno EPERM`
//! alone always means the step's first, decisive call was refused). A few steps print an
//! extra `ok ...` line for a stage that must succeed before the attempt. Exit status: 0 if
//! every line was `ok`, 10 otherwise, 2 on a usage error.
//!
//! `@` as a whole argument, or inside one (`/proc/self/fd/@`), is the number of the last
//! fd a step opened and kept (opath, dir, memfd, bpf-get, hold-open).
//!
//! Files: read PATH | cat PATH | open PATH (O_RDONLY, nothing read) | write PATH TEXT (O_TRUNC, no create) | put PATH TEXT (no
//! O_TRUNC, no create) | open-rw PATH | create PATH TEXT | ls DIR | readlink PATH |
//! symlink TARGET LINK | link FROM TO | link-follow FROM TO (AT_SYMLINK_FOLLOW) |
//! link-empty FD TO (AT_EMPTY_PATH) | rename FROM TO | unlink PATH | mkdir PATH |
//! mkfifo PATH | mknod-blk PATH MAJOR MINOR | truncate PATH LEN | chmod PATH OCTAL |
//! chown PATH UID GID | ino PATH
//! Fds: opath PATH | dir PATH | openat FD NAME | openat2 FD|cwd NAME RESOLVE[,RESOLVE]
//! (none, beneath, in-root, no-magiclinks, no-symlinks, no-xdev) | hold-open PATH (keeps
//! it open, prints `ok fd N`, waits for stdin EOF)
//! Processes: ptrace-attach PID | ptrace-seize PID | vm-read PID | vm-write PID |
//! pidfd-getfd PID FD | kill PID SIG | pidfd-kill PID SIG | sigio PID SIG [ioctl] |
//! sigio-self | fork-chain N DENIED GRANTED | clone-into-cgroup DIR | ids | nnp | cgroup
//! say TEXT | run PROG ARGS... | as-user UID GID -- PROG ARGS... (execs; the rest of the
//! line is PROG's)
//! Mounts and namespaces: mount-bind SRC DST | mount-tmpfs DST | umount PATH |
//! move-mount FROM TO | open-tree PATH | fsopen FSTYPE | pivot-root NEW OLD | chroot PATH |
//! unshare FLAG[,FLAG] (mnt, user, net, uts, ipc, pid, cgroup) | clone-newuser | setns PATH
//! Exec: memfd SRC (a memfd holding SRC's bytes) | mmap-read FD | mmap-exec FD |
//! mprotect-exec FD | execve PATH | execveat FD (both exec PATH/FD as
//! `rush-test-escape say executed`) | mmap-hold PATH rw|r (maps PATH MAP_SHARED, prints
//! `mapped PID`, then runs `write TEXT` / `read` lines from stdin through the mapping)
//! Mappings of any fd (also one received or inherited): fd PATH r|rw (opens and keeps
//! it) | recv-fd SOCKET (connects to a Unix socket, keeps the fd that comes as
//! SCM_RIGHTS) | pread FD | pwrite FD TEXT | map FD r|rw shared|private [TEXT] (the
//! whole file; prints its bytes, or with TEXT writes it at the start, msyncs: `ok wrote
//! N`) | map-mprotect FD TEXT (maps it shared read-only, `ok mapped`, then mprotect to
//! read-write and writes TEXT) | map-loop PATH N (N x open, mmap shared read, touch,
//! munmap, close: `ok N ns/iter X`)
//! Daemon connections: connect SOCKET (a Unix stream connection, fd kept) | serve-fd
//! SOCKET FD (listens on SOCKET, hands FD to the first to connect, with SCM_RIGHTS) |
//! ndjson FD LINE (writes LINE and a newline to FD, prints the line read back)
//! Notifications: inotify PATH [TOUCH] (a watch; with TOUCH, appends to it and counts
//! the events: `ok wd N events M`) | fanotify PATH fid|plain (fanotify_init, `ok init`
//! for fid, then fanotify_mark) | dnotify FD (fcntl F_NOTIFY) | tmpfile DIR TEXT
//! (O_TMPFILE|O_RDWR in DIR, TEXT written, fd kept)
//! Kernel: bpf-get PIN | bpf-poison FD (sets the map's first entry to all ones) |
//! bpf-map-create | map-dump PIN (outside agents: `entry KEY VALUE` lines in hex) |
//! io-uring-openat PATH | init-module | finit-module PATH | delete-module NAME |
//! socket-raw | socket-packet | socket-udp | sethostname (to its current name) |
//! swapoff PATH | ioperm (port 0x80 on) | net-admin (lo's flags, unchanged) | reboot-badmagic | handle PATH (outside: name_to_handle_at → `ok TYPE HEX`) |
//! open-by-handle MOUNTDIR TYPE HEX | btrfs-subvol PATH | btrfs-snap SRC DST
//! Hardening: add-key DESC DATA (a user key in the user keyring) | keyctl-read DESC
//! (search the user keyring, read the key) | perf-open | userfaultfd [user] |
//! clone3 (with CLONE_NEWUSER) | x32-getpid | caps (`ok eff HEX bnd HEX`) |
//! join-cgroup PROCS (writes its own pid into a cgroup.procs) | syscall-loop N (N x getppid,
//! stat, open+read+close, clock_gettime: `ok N ns/iter X`) | open-loop PATH N [PAUSE_US]
//! (N x open, + close when it opened, an untimed pause after each: `ok N refused R ns/iter X`)

use std::ffi::{CString, c_long};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, Ordering};

use nix::errno::Errno;

/// A refused step: the errno, and the stage when it was not the step's first call.
struct Fail(Errno, &'static str);

type Step = Result<String, Fail>;

/// A Unix socket address: a path, or `abstract:NAME` for the abstract name NAME (`@`
/// would be taken for the last fd).
fn unix_addr(name: &str) -> std::io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    match name.strip_prefix("abstract:") {
        Some(abstract_name) => std::os::unix::net::SocketAddr::from_abstract_name(abstract_name),
        None => std::os::unix::net::SocketAddr::from_pathname(name),
    }
}

fn io(e: std::io::Error) -> Fail {
    Fail(e.raw_os_error().map(Errno::from_raw).unwrap_or(Errno::UnknownErrno), "")
}

fn at(stage: &'static str) -> impl Fn(std::io::Error) -> Fail {
    move |e| Fail(io(e).0, stage)
}

/// A raw system call's return value: -1 → the errno of `stage`.
fn sys(ret: c_long, stage: &'static str) -> Result<c_long, Fail> {
    if ret < 0 { Err(Fail(Errno::last(), stage)) } else { Ok(ret) }
}

fn sysi(ret: i32, stage: &'static str) -> Result<i32, Fail> {
    sys(c_long::from(ret), stage).map(|r| r as i32)
}

fn cs(s: &str) -> CString {
    CString::new(s).expect("argument with a NUL byte")
}

fn num<T: std::str::FromStr>(s: &str) -> T {
    s.parse().unwrap_or_else(|_| usage(&format!("not a number: {s:?}")))
}

fn usage(why: &str) -> ! {
    eprintln!("rush-test-escape: {why} (see the header of kernel-tests/src/bin/escape.rs)");
    std::process::exit(2)
}

static LAST_FD: AtomicI32 = AtomicI32::new(-1);

fn keep(fd: RawFd) -> String {
    LAST_FD.store(fd, Ordering::Relaxed);
    format!("fd {fd}")
}

fn flush() {
    let _ = std::io::stdout().flush();
}

/// An extra `ok` line for a stage that has to succeed before the attempt proper.
fn stage_ok(what: &str) {
    println!("ok {what}");
    flush();
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        usage("no step");
    }
    let mut all = true;
    let mut rest: &[String] = &args;
    while !rest.is_empty() {
        let end = rest.iter().position(|a| a == ";;").unwrap_or(rest.len());
        let step: Vec<String> = rest[..end]
            .iter()
            .map(|a| {
                let fd = LAST_FD.load(Ordering::Relaxed).to_string();
                if a.contains('@') { a.replace('@', &fd) } else { a.clone() }
            })
            .collect();
        rest = if end < rest.len() { &rest[end + 1..] } else { &[] };
        if step.is_empty() {
            continue;
        }
        // as-user takes everything after it: the program and its own arguments.
        if step[0] == "as-user" {
            let mut whole: Vec<String> = step.clone();
            if !rest.is_empty() {
                whole.push(";;".into());
                whole.extend(rest.iter().cloned());
            }
            rest = &[];
            all &= report(as_user(&whole[1..]));
            continue;
        }
        all &= report(run_step(&step));
    }
    flush();
    if all { ExitCode::SUCCESS } else { ExitCode::from(10) }
}

fn report(r: Step) -> bool {
    let ok = match r {
        Ok(s) if s.is_empty() => {
            println!("ok");
            true
        }
        Ok(s) => {
            println!("ok {s}");
            true
        }
        Err(Fail(e, "")) => {
            println!("errno {e:?}");
            false
        }
        Err(Fail(e, stage)) => {
            println!("errno {e:?} ({stage})");
            false
        }
    };
    flush();
    ok
}

fn run_step(s: &[String]) -> Step {
    let a = |i: usize| -> &str {
        s.get(i).map(String::as_str).unwrap_or_else(|| usage(&format!("{}: too few arguments", s[0])))
    };
    match s[0].as_str() {
        // Files.
        "read" => read_all(File::open(a(1)).map_err(io)?).map(|v| v.len().to_string()),
        "cat" => read_all(File::open(a(1)).map_err(io)?)
            .map(|v| String::from_utf8_lossy(&v).escape_debug().to_string()),
        "write" => write_to(OpenOptions::new().write(true).truncate(true).open(a(1)), a(2)),
        "put" => write_to(OpenOptions::new().write(true).open(a(1)), a(2)),
        "open" => File::open(a(1)).map(|_| String::new()).map_err(io),
        "open-rw" => OpenOptions::new().read(true).write(true).open(a(1)).map(|_| String::new()).map_err(io),
        "create" => write_to(OpenOptions::new().write(true).create_new(true).open(a(1)), a(2)),
        "ls" => std::fs::read_dir(a(1)).map(|d| d.count().to_string()).map_err(io),
        // Unix sockets: a stream connect, a datagram sent to a bound path (`abstract:NAME`:
        // the abstract name NAME); a listener of the agent's own, connected to by itself.
        "unix-connect" => unix_addr(a(1))
            .and_then(|addr| std::os::unix::net::UnixStream::connect_addr(&addr))
            .map(|_| String::new())
            .map_err(io),
        "unix-send" => unix_addr(a(1))
            .and_then(|addr| std::os::unix::net::UnixDatagram::unbound()?.send_to_addr(b"hello", &addr))
            .map(|n| n.to_string())
            .map_err(io),
        "abstract-self" => unix_addr(&format!("abstract:{}", a(1)))
            .and_then(|addr| {
                let _listener = std::os::unix::net::UnixListener::bind_addr(&addr)?;
                std::os::unix::net::UnixStream::connect_addr(&addr)
            })
            .map(|_| String::new())
            .map_err(io),
        "readlink" => std::fs::read_link(a(1)).map(|p| p.display().to_string()).map_err(io),
        "symlink" => std::os::unix::fs::symlink(a(1), a(2)).map(|_| String::new()).map_err(io),
        "link" => std::fs::hard_link(a(1), a(2)).map(|_| String::new()).map_err(io),
        "link-follow" => linkat(libc::AT_FDCWD, a(1), a(2), libc::AT_SYMLINK_FOLLOW),
        "link-empty" => linkat(num(a(1)), "", a(2), libc::AT_EMPTY_PATH),
        "rename" => std::fs::rename(a(1), a(2)).map(|_| String::new()).map_err(io),
        "unlink" => std::fs::remove_file(a(1)).map(|_| String::new()).map_err(io),
        "mkdir" => std::fs::create_dir(a(1)).map(|_| String::new()).map_err(io),
        // SAFETY: mkfifo reads a NUL-terminated path (a CString temporary alive until the call
        // returns); nothing is kept.
        "mkfifo" => sysi(unsafe { libc::mkfifo(cs(a(1)).as_ptr(), 0o600) }, "").map(|_| String::new()),
        "mknod-blk" => {
            let dev = libc::makedev(num(a(2)), num(a(3)));
            // SAFETY: mknod reads a NUL-terminated path (a CString temporary alive until the call
            // returns); nothing is kept.
            sysi(unsafe { libc::mknod(cs(a(1)).as_ptr(), libc::S_IFBLK | 0o600, dev) }, "")
                .map(|_| String::new())
        }
        "truncate" => {
            // SAFETY: truncate reads a NUL-terminated path (a CString temporary alive until the
            // call returns); nothing is kept.
            sysi(unsafe { libc::truncate(cs(a(1)).as_ptr(), num(a(2))) }, "").map(|_| String::new())
        }
        "chmod" => {
            let mode = u32::from_str_radix(a(2), 8).unwrap_or_else(|_| usage("chmod: octal mode"));
            // SAFETY: chmod reads a NUL-terminated path (a CString temporary alive until the call
            // returns); nothing is kept.
            sysi(unsafe { libc::chmod(cs(a(1)).as_ptr(), mode) }, "").map(|_| String::new())
        }
        "chown" => {
            // SAFETY: chown reads a NUL-terminated path (a CString temporary alive until the call
            // returns); nothing is kept.
            sysi(unsafe { libc::chown(cs(a(1)).as_ptr(), num(a(2)), num(a(3))) }, "").map(|_| String::new())
        }
        "ino" => std::fs::metadata(a(1)).map(|m| format!("dev {} ino {}", m.dev(), m.ino())).map_err(io),
        // Fds.
        "opath" => open_raw(a(1), libc::O_PATH).map(keep),
        "dir" => open_raw(a(1), libc::O_RDONLY | libc::O_DIRECTORY).map(keep),
        "openat" => {
            // SAFETY: openat reads a NUL-terminated path (a CString temporary alive until the call
            // returns); nothing is kept.
            let fd = sysi(unsafe { libc::openat(num(a(1)), cs(a(2)).as_ptr(), libc::O_RDONLY) }, "")?;
            // SAFETY: fd was just returned by openat and nothing else owns it.
            read_all(unsafe { File::from_raw_fd(fd) }).map(|v| v.len().to_string())
        }
        "openat2" => openat2(a(1), a(2), a(3)),
        "hold-open" => hold_open(a(1)),
        // Processes.
        "ptrace-attach" => ptrace_attach(num(a(1)), false),
        "ptrace-seize" => ptrace_attach(num(a(1)), true),
        "vm-read" | "vm-write" => vm_rw(num(a(1)), s[0] == "vm-write"),
        "pidfd-getfd" => {
            // SAFETY: pidfd_open takes a pid and a flag word; no memory is passed.
            let pidfd =
                sys(unsafe { libc::syscall(libc::SYS_pidfd_open, num::<i32>(a(1)), 0) }, "pidfd_open")?;
            stage_ok("pidfd");
            // SAFETY: pidfd_getfd takes two descriptors' numbers and a flag word; no memory is
            // passed.
            let fd = sys(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, num::<i32>(a(2)), 0) }, "")?;
            Ok(format!("fd {fd}"))
        }
        // SAFETY: kill takes a pid and a signal number; no memory is passed.
        "kill" => sysi(unsafe { libc::kill(num(a(1)), num(a(2))) }, "").map(|_| String::new()),
        "pidfd-kill" => {
            // SAFETY: pidfd_open takes a pid and a flag word; no memory is passed.
            let pidfd =
                sys(unsafe { libc::syscall(libc::SYS_pidfd_open, num::<i32>(a(1)), 0) }, "pidfd_open")?;
            stage_ok("pidfd");
            let null = std::ptr::null::<libc::siginfo_t>();
            // SAFETY: a null siginfo is allowed (the kernel fills in a default); the rest are
            // integers.
            sys(unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd, num::<i32>(a(2)), null, 0) }, "")
                .map(|_| String::new())
        }
        "sigio" => sigio(num(a(1)), num(a(2)), s.get(3).is_some_and(|x| x == "ioctl")),
        "sigio-self" => sigio_self(),
        "fork-chain" => fork_chain(num(a(1)), a(2), a(3)),
        "clone-into-cgroup" => clone_into_cgroup(a(1)),
        // SAFETY: the get*id calls take nothing and cannot fail.
        "ids" => Ok(unsafe {
            format!(
                "uid {} euid {} gid {} egid {}",
                libc::getuid(),
                libc::geteuid(),
                libc::getgid(),
                libc::getegid()
            )
        }),
        // SAFETY: PR_GET_NO_NEW_PRIVS takes no pointer; it only returns the flag.
        "nnp" => sysi(unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) }, "")
            .map(|v| format!("nnp {v}")),
        "cgroup" => {
            std::fs::read_to_string("/proc/self/cgroup").map(|c| c.trim().replace('\n', "|")).map_err(io)
        }
        "say" => Ok(s[1..].join(" ")),
        "run" => std::process::Command::new(a(1))
            .args(&s[2..])
            .status()
            .map(|st| match (st.code(), std::os::unix::process::ExitStatusExt::signal(&st)) {
                (Some(c), _) => format!("exit {c}"),
                (None, Some(sig)) => format!("signal {sig}"),
                _ => "unknown".into(),
            })
            .map_err(io),
        // Mounts and namespaces.
        "mount-bind" => mount(a(1), a(2), None, libc::MS_BIND),
        "mount-tmpfs" => mount("tmpfs", a(1), Some("tmpfs"), 0),
        // SAFETY: umount2 reads a NUL-terminated path (a CString temporary alive until the call
        // returns); nothing is kept.
        "umount" => sysi(unsafe { libc::umount2(cs(a(1)).as_ptr(), 0) }, "").map(|_| String::new()),
        "move-mount" => {
            let (from, to) = (cs(a(1)), cs(a(2)));
            sys(
                // SAFETY: move_mount reads two NUL-terminated paths that live until the end of this
                // arm.
                unsafe {
                    libc::syscall(
                        libc::SYS_move_mount,
                        libc::AT_FDCWD,
                        from.as_ptr(),
                        libc::AT_FDCWD,
                        to.as_ptr(),
                        0,
                    )
                },
                "",
            )
            .map(|_| String::new())
        }
        "open-tree" => {
            let p = cs(a(1));
            let flags = 1 | libc::AT_RECURSIVE as c_long; // OPEN_TREE_CLONE
            // SAFETY: open_tree reads a NUL-terminated path alive until the end of this arm.
            sys(unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, p.as_ptr(), flags) }, "")
                .map(|fd| keep(fd as i32))
        }
        "fsopen" => {
            let t = cs(a(1));
            // SAFETY: fsopen reads a NUL-terminated file system name alive until the end of this
            // arm.
            sys(unsafe { libc::syscall(libc::SYS_fsopen, t.as_ptr(), 0) }, "").map(|fd| keep(fd as i32))
        }
        "pivot-root" => {
            let (n, o) = (cs(a(1)), cs(a(2)));
            // SAFETY: pivot_root reads two NUL-terminated paths alive until the end of this arm.
            sys(unsafe { libc::syscall(libc::SYS_pivot_root, n.as_ptr(), o.as_ptr()) }, "")
                .map(|_| String::new())
        }
        // SAFETY: chroot reads a NUL-terminated path (a CString temporary alive until the call
        // returns); nothing is kept.
        "chroot" => sysi(unsafe { libc::chroot(cs(a(1)).as_ptr()) }, "").map(|_| String::new()),
        // SAFETY: unshare takes a flag word; no memory is passed.
        "unshare" => sysi(unsafe { libc::unshare(ns_flags(a(1))) }, "").map(|_| String::new()),
        "clone-newuser" => clone_newuser(),
        "setns" => {
            let fd = open_raw(a(1), libc::O_RDONLY)?;
            stage_ok("opened");
            // SAFETY: setns takes a descriptor's number and a flag word; no memory is passed.
            sysi(unsafe { libc::setns(fd, 0) }, "").map(|_| String::new())
        }
        // Exec.
        "memfd" => memfd(a(1)),
        "mmap-read" => mmap_fd(num(a(1)), libc::PROT_READ, false),
        "mmap-exec" => mmap_fd(num(a(1)), libc::PROT_READ | libc::PROT_EXEC, false),
        "mprotect-exec" => mmap_fd(num(a(1)), libc::PROT_READ, true),
        "execve" => exec_self_like(Some(a(1)), -1),
        "execveat" => exec_self_like(None, num(a(1))),
        "mmap-hold" => mmap_hold(a(1), a(2) == "rw"),
        "fd" => {
            let flags = if a(2) == "rw" { libc::O_RDWR } else { libc::O_RDONLY };
            open_raw(a(1), flags).map(keep)
        }
        "recv-fd" => recv_fd(a(1)).map(keep),
        "connect" => std::os::unix::net::UnixStream::connect(a(1)).map(|s| keep(s.into_raw_fd())).map_err(io),
        "serve-fd" => serve_fd(a(1), num(a(2))),
        "ndjson" => ndjson(num(a(1)), a(2)),
        "pread" => {
            let mut buf = [0u8; 256];
            // SAFETY: buf is a writable buffer of the given length.
            let n =
                sys(unsafe { libc::pread(num(a(1)), buf.as_mut_ptr().cast(), buf.len(), 0) } as c_long, "")?;
            Ok(String::from_utf8_lossy(&buf[..n as usize]).escape_debug().to_string())
        }
        "pwrite" => {
            let t = a(2).as_bytes();
            // SAFETY: t is a readable buffer of the given length.
            sys(unsafe { libc::pwrite(num(a(1)), t.as_ptr().cast(), t.len(), 0) } as c_long, "")
                .map(|n| format!("wrote {n}"))
        }
        "map" => map_fd(num(a(1)), a(2), a(3), s.get(4).map(String::as_str)),
        "map-mprotect" => map_mprotect(num(a(1)), a(2)),
        "map-loop" => map_loop(a(1), num(a(2))),
        "inotify" => inotify(a(1), s.get(2).map(String::as_str)),
        "fanotify" => fanotify(a(1), a(2) == "fid"),
        "dnotify" => {
            const DN_MODIFY: i32 = 0x2;
            const DN_CREATE: i32 = 0x4;
            const DN_MULTISHOT: i32 = i32::MIN; // 0x80000000
            // SAFETY: fcntl on an fd number with an integer argument.
            sysi(unsafe { libc::fcntl(num(a(1)), libc::F_NOTIFY, DN_MODIFY | DN_CREATE | DN_MULTISHOT) }, "")
                .map(|_| String::new())
        }
        "tmpfile" => {
            let fd = open_raw(a(1), libc::O_TMPFILE | libc::O_RDWR)?;
            let t = a(2).as_bytes();
            // SAFETY: t is a readable buffer of the given length.
            sys(unsafe { libc::write(fd, t.as_ptr().cast(), t.len()) } as c_long, "write")?;
            Ok(keep(fd))
        }
        // Kernel.
        "bpf-get" => bpf_obj_get(a(1)).map(keep),
        "bpf-poison" => bpf_poison(num(a(1))),
        "bpf-map-create" => bpf_map_create().map(keep),
        "map-dump" => map_dump(a(1)),
        "io-uring-openat" => io_uring_openat(a(1)),
        "init-module" => {
            let junk =
                [0x7fu8, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 62, 0, 1, 0, 0, 0];
            let params = cs("");
            sys(
                // SAFETY: init_module reads junk.len() bytes of junk and the NUL-terminated params,
                // both alive here; it fails on the bad image or the missing capability.
                unsafe { libc::syscall(libc::SYS_init_module, junk.as_ptr(), junk.len(), params.as_ptr()) },
                "",
            )
            .map(|_| String::new())
        }
        "finit-module" => {
            let f = File::open(a(1)).map_err(at("open"))?;
            let params = cs("");
            // SAFETY: finit_module takes an open descriptor and reads the NUL-terminated params,
            // alive here.
            sys(unsafe { libc::syscall(libc::SYS_finit_module, f.as_raw_fd(), params.as_ptr(), 0) }, "")
                .map(|_| String::new())
        }
        "delete-module" => {
            let n = cs(a(1));
            // SAFETY: delete_module reads a NUL-terminated module name alive until the end of this
            // arm.
            sys(unsafe { libc::syscall(libc::SYS_delete_module, n.as_ptr(), libc::O_NONBLOCK) }, "")
                .map(|_| String::new())
        }
        "socket-raw" => socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP),
        "socket-packet" => socket(libc::AF_PACKET, libc::SOCK_RAW, 0),
        "socket-udp" => socket(libc::AF_INET, libc::SOCK_DGRAM, 0),
        "sethostname" => {
            let mut buf = [0u8; 256];
            // SAFETY: gethostname writes at most buf.len() bytes into buf.
            sysi(unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) }, "gethostname")?;
            let b = &buf[..buf.iter().position(|c| *c == 0).unwrap_or(buf.len())];
            // SAFETY: sethostname reads b.len() bytes of b (the current name: nothing changes if it
            // succeeds).
            sysi(unsafe { libc::sethostname(b.as_ptr().cast(), b.len()) }, "")
                .map(|_| format!("hostname {}", String::from_utf8_lossy(b)))
        }
        // SAFETY: swapoff reads a NUL-terminated path (a CString temporary alive until the call
        // returns); nothing is kept.
        "swapoff" => sysi(unsafe { libc::swapoff(cs(a(1)).as_ptr()) }, "").map(|_| String::new()),
        // Turning access on is what needs CAP_SYS_RAWIO (turning it off needs nothing).
        // SAFETY: ioperm takes integers only; no memory is passed.
        "ioperm" => sysi(unsafe { libc::ioperm(0x80, 1, 1) }, "").map(|_| String::new()),
        "net-admin" => net_admin(),
        "reboot-badmagic" => {
            // LINUX_REBOOT_MAGIC1 with a wrong MAGIC2: the capability check comes first, the
            // magic check then fails with EINVAL, so nothing ever reboots.
            // SAFETY: reboot with a wrong magic never reboots (EINVAL, or EPERM first); integers
            // only.
            sys(unsafe { libc::syscall(libc::SYS_reboot, 0xfee1deadu32 as i32, 0, 0, 0) }, "")
                .map(|_| String::new())
        }
        "handle" => name_to_handle(a(1)),
        "open-by-handle" => open_by_handle(a(1), num(a(2)), a(3)),
        "btrfs-subvol" => btrfs_subvol(a(1)),
        "btrfs-snap" => btrfs_snap(a(1), a(2)),
        // Hardening (harden.rs): keyrings, perf, userfaultfd, clone3, x32, capabilities.
        "add-key" => {
            const KEY_SPEC_USER_KEYRING: c_long = -4;
            let (t, d) = (cs("user"), cs(a(1)));
            let data = a(2).as_bytes();
            // SAFETY: add_key with NUL-terminated strings and a readable payload.
            sys(
                unsafe {
                    libc::syscall(
                        libc::SYS_add_key,
                        t.as_ptr(),
                        d.as_ptr(),
                        data.as_ptr(),
                        data.len(),
                        KEY_SPEC_USER_KEYRING,
                    )
                },
                "",
            )
            .map(|k| format!("key {k}"))
        }
        "keyctl-read" => {
            // KEYCTL_SEARCH (10) in the user keyring (-4), then KEYCTL_READ (11).
            let (t, d) = (cs("user"), cs(a(1)));
            // SAFETY: keyctl with NUL-terminated strings.
            let key = sys(
                unsafe { libc::syscall(libc::SYS_keyctl, 10, -4 as c_long, t.as_ptr(), d.as_ptr(), 0) },
                "",
            )?;
            stage_ok("found");
            let mut buf = [0u8; 256];
            // SAFETY: keyctl writes at most buf.len() bytes into buf.
            let n = sys(
                unsafe { libc::syscall(libc::SYS_keyctl, 11, key, buf.as_mut_ptr(), buf.len(), 0) },
                "read",
            )?;
            Ok(String::from_utf8_lossy(&buf[..(n as usize).min(buf.len())]).into_owned())
        }
        "perf-open" => {
            // A software clock counter on this process: the least privileged perf event.
            let mut attr = [0u8; 128];
            attr[0..4].copy_from_slice(&1u32.to_ne_bytes()); // type PERF_TYPE_SOFTWARE
            attr[4..8].copy_from_slice(&128u32.to_ne_bytes()); // size
            // SAFETY: attr is a zeroed perf_event_attr with type, size and config 0.
            sys(unsafe { libc::syscall(libc::SYS_perf_event_open, attr.as_ptr(), 0, -1, -1, 0) }, "")
                .map(|fd| format!("fd {fd}"))
        }
        "userfaultfd" => {
            const UFFD_USER_MODE_ONLY: c_long = 1;
            let flags = if s.get(1).is_some_and(|f| f == "user") { UFFD_USER_MODE_ONLY } else { 0 };
            // SAFETY: userfaultfd takes flags only.
            sys(unsafe { libc::syscall(libc::SYS_userfaultfd, flags | libc::O_CLOEXEC as c_long) }, "")
                .map(|fd| format!("fd {fd}"))
        }
        "clone3" => {
            // struct clone_args v0 with flags = CLONE_NEWUSER, exit_signal = SIGCHLD.
            let mut args = [0u64; 8];
            args[0] = libc::CLONE_NEWUSER as u64;
            args[4] = libc::SIGCHLD as u64;
            // SAFETY: clone3 with a valid args struct; the child exits at once.
            let pid = sys(unsafe { libc::syscall(libc::SYS_clone3, args.as_ptr(), 64usize) }, "")?;
            if pid == 0 {
                // SAFETY: the child leaves at once.
                unsafe { libc::_exit(0) };
            }
            // SAFETY: reaping our own child.
            unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), 0) };
            Ok(format!("pid {pid}"))
        }
        "x32-getpid" => {
            const X32_SYSCALL_BIT: c_long = 0x4000_0000;
            // SAFETY: getpid through the x32 ABI's number: no arguments.
            sys(unsafe { libc::syscall(X32_SYSCALL_BIT | libc::SYS_getpid) }, "").map(|p| format!("pid {p}"))
        }
        "caps" => {
            let status = std::fs::read_to_string("/proc/self/status").map_err(io)?;
            let get = |k: &str| {
                status.lines().find_map(|l| l.strip_prefix(k)).map(str::trim).unwrap_or("?").to_owned()
            };
            Ok(format!("eff {} bnd {}", get("CapEff:"), get("CapBnd:")))
        }
        "syscall-loop" => {
            // N x (getppid, stat, open+read+close of /dev/zero, clock_gettime): a
            // syscall-heavy loop for the seccomp filter's cost.
            let n: u64 = num(a(1));
            let path = cs("/dev/zero");
            let t = std::time::Instant::now();
            let mut buf = [0u8; 64];
            for _ in 0..n {
                // SAFETY: plain syscalls on valid buffers and a NUL-terminated path.
                unsafe {
                    libc::getppid();
                    let mut st: libc::stat = std::mem::zeroed();
                    libc::stat(path.as_ptr(), &mut st);
                    let fd = libc::open(path.as_ptr(), libc::O_RDONLY);
                    libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
                    libc::close(fd);
                    let mut ts: libc::timespec = std::mem::zeroed();
                    libc::syscall(libc::SYS_clock_gettime, libc::CLOCK_MONOTONIC, &mut ts);
                }
            }
            Ok(format!("{n} ns/iter {:.1}", t.elapsed().as_nanos() as f64 / n as f64))
        }
        "open-loop" => {
            // N x open(PATH) (+ close when it opened): for what auditing a Landlock denial
            // costs, on a path the agent may open and on one it may not. With PAUSE_US, a
            // pause after each open (not timed), so that the kernel's audit queue drains
            // between denials and every record is made in full.
            let (path, n): (CString, u64) = (cs(a(1)), num(a(2)));
            let pause = s.get(3).map(|p| std::time::Duration::from_micros(num(p)));
            let (mut timed, all) = (std::time::Duration::ZERO, std::time::Instant::now());
            let mut refused = 0u64;
            for _ in 0..n {
                let t = pause.map(|_| std::time::Instant::now());
                // SAFETY: open reads a NUL-terminated path alive across the loop; close
                // closes only the descriptor it just returned.
                unsafe {
                    let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        refused += 1;
                    } else {
                        libc::close(fd);
                    }
                }
                if let (Some(t), Some(p)) = (t, pause) {
                    timed += t.elapsed();
                    std::thread::sleep(p);
                }
            }
            if pause.is_none() {
                timed = all.elapsed();
            }
            Ok(format!("{n} refused {refused} ns/iter {:.1}", timed.as_nanos() as f64 / n as f64))
        }
        "join-cgroup" => {
            // Writes this process's pid into PATH (a cgroup.procs), as `echo $$ > PATH` does.
            let mut f = OpenOptions::new().write(true).open(a(1)).map_err(io)?;
            stage_ok("opened");
            f.write_all(std::process::id().to_string().as_bytes()).map_err(at("write"))?;
            Ok(String::new())
        }
        other => usage(&format!("unknown step {other:?}")),
    }
}

fn read_all(mut f: File) -> Result<Vec<u8>, Fail> {
    let mut v = Vec::new();
    f.read_to_end(&mut v).map_err(at("read"))?;
    Ok(v)
}

fn write_to(f: std::io::Result<File>, text: &str) -> Step {
    let mut f = f.map_err(io)?;
    f.write_all(text.as_bytes()).map_err(at("write"))?;
    Ok(String::new())
}

fn open_raw(path: &str, flags: i32) -> Result<RawFd, Fail> {
    // No O_CLOEXEC: a kept fd is meant to be reachable as /proc/self/fd/N, also after exec.
    // SAFETY: open reads a NUL-terminated path (a CString temporary alive until the call returns);
    // nothing is kept.
    sysi(unsafe { libc::open(cs(path).as_ptr(), flags) }, "")
}

fn linkat(fd: RawFd, from: &str, to: &str, flags: i32) -> Step {
    let (f, t) = (cs(from), cs(to));
    // SAFETY: linkat reads two NUL-terminated paths that live until the function returns.
    sysi(unsafe { libc::linkat(fd, f.as_ptr(), libc::AT_FDCWD, t.as_ptr(), flags) }, "")
        .map(|_| String::new())
}

fn openat2(dir: &str, name: &str, resolve: &str) -> Step {
    let dirfd = if dir == "cwd" { libc::AT_FDCWD } else { num(dir) };
    let mut r = 0u64;
    for f in resolve.split(',') {
        r |= match f {
            "none" | "" => 0,
            "beneath" => libc::RESOLVE_BENEATH,
            "in-root" => libc::RESOLVE_IN_ROOT,
            "no-magiclinks" => libc::RESOLVE_NO_MAGICLINKS,
            "no-symlinks" => libc::RESOLVE_NO_SYMLINKS,
            "no-xdev" => libc::RESOLVE_NO_XDEV,
            other => usage(&format!("openat2: unknown resolve flag {other:?}")),
        };
    }
    // SAFETY: open_how is plain integers; all zeroes is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = libc::O_RDONLY as u64;
    how.resolve = r;
    let p = cs(name);
    let fd = sys(
        // SAFETY: openat2 reads the path and `how` (size_of::<open_how>() bytes), both alive here.
        unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dirfd,
                p.as_ptr(),
                &how as *const libc::open_how,
                size_of::<libc::open_how>(),
            )
        },
        "",
    )?;
    // SAFETY: fd was just returned by openat2 and nothing else owns it.
    read_all(unsafe { File::from_raw_fd(fd as i32) }).map(|v| v.len().to_string())
}

fn hold_open(path: &str) -> Step {
    let f = File::open(path).map_err(io)?;
    let fd = f.into_raw_fd();
    println!("ok fd {fd}");
    flush();
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    Ok("released".into())
}

fn ptrace_attach(pid: i32, seize: bool) -> Step {
    let req = if seize { libc::PTRACE_SEIZE } else { libc::PTRACE_ATTACH };
    // SAFETY: ptrace attach/seize takes a pid and null addr/data; no memory of ours is touched.
    sys(unsafe { libc::ptrace(req, pid, 0usize, 0usize) }, "")?;
    // Attached (the attempt was not refused): let go at once.
    if seize {
        // SAFETY: PTRACE_INTERRUPT of the tracee just seized; null addr/data.
        unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, pid, 0usize, 0usize) };
    }
    let mut st = 0;
    // SAFETY: waitpid writes st, ours; PTRACE_DETACH takes a pid and null addr/data.
    unsafe {
        libc::waitpid(pid, &mut st, libc::__WALL);
        libc::ptrace(libc::PTRACE_DETACH, pid, 0usize, 0usize);
    }
    Ok("attached".into())
}

fn vm_rw(pid: i32, write: bool) -> Step {
    let mut buf = [0u8; 8];
    let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // Address 0x1000 is never mapped: a permitted call fails with EFAULT, not EPERM.
    let remote = libc::iovec { iov_base: 0x1000 as *mut libc::c_void, iov_len: buf.len() };
    let n = if write {
        // SAFETY: one local iovec over buf (8 bytes, ours, alive) and one remote iovec the kernel
        // checks in the target (never mapped: EFAULT).
        unsafe { libc::process_vm_writev(pid, &local, 1, &remote, 1, 0) }
    } else {
        // SAFETY: as above: the kernel writes at most buf.len() bytes into buf.
        unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) }
    };
    sys(n as c_long, "").map(|n| n.to_string())
}

const FIOSETOWN: libc::c_ulong = 0x8901;
const F_SETSIG: i32 = 10;

fn sigio(pid: i32, sig: i32, via_ioctl: bool) -> Step {
    // A socket pair: sockets take both F_SETOWN and the FIOSETOWN ioctl (pipes only the former).
    let mut p = [0; 2];
    // SAFETY: socketpair writes two descriptor numbers into p, which has room for two.
    sysi(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, p.as_mut_ptr()) }, "socketpair")?;
    if via_ioctl {
        // SAFETY: FIOSETOWN reads one int (pid) through the pointer, which is alive.
        sysi(unsafe { libc::ioctl(p[0], FIOSETOWN, &pid) }, "")?;
    } else {
        // SAFETY: fcntl on our own socket with an integer argument.
        sysi(unsafe { libc::fcntl(p[0], libc::F_SETOWN, pid) }, "")?;
    }
    stage_ok("setown");
    // SAFETY: fcntl on our own socket with an integer argument.
    sysi(unsafe { libc::fcntl(p[0], F_SETSIG, sig) }, "F_SETSIG")?;
    // SAFETY: fcntl on our own socket with an integer argument.
    sysi(unsafe { libc::fcntl(p[0], libc::F_SETFL, libc::O_ASYNC | libc::O_NONBLOCK) }, "O_ASYNC")?;
    // SAFETY: write reads one byte of a static string.
    sys(unsafe { libc::write(p[1], b"x".as_ptr().cast(), 1) } as c_long, "write")?;
    // Delivery (or its refusal) happens inside write(); give a signal a moment anyway.
    std::thread::sleep(std::time::Duration::from_millis(200));
    Ok("triggered".into())
}

fn sigio_self() -> Step {
    // SAFETY: the sigset is plain data (zeroed, then initialised by sigemptyset); the pipe writes
    // two ints into p; the fcntls take integers; write reads one static byte; sigtimedwait reads
    // set and ts, both alive, and a null siginfo is allowed.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let mut p = [0; 2];
        sysi(libc::pipe(p.as_mut_ptr()), "pipe")?;
        sysi(libc::fcntl(p[0], libc::F_SETOWN, libc::getpid()), "")?;
        sysi(libc::fcntl(p[0], F_SETSIG, libc::SIGUSR1), "F_SETSIG")?;
        sysi(libc::fcntl(p[0], libc::F_SETFL, libc::O_ASYNC | libc::O_NONBLOCK), "O_ASYNC")?;
        sys(libc::write(p[1], b"x".as_ptr().cast(), 1) as c_long, "write")?;
        let ts = libc::timespec { tv_sec: 2, tv_nsec: 0 };
        sysi(libc::sigtimedwait(&set, std::ptr::null_mut(), &ts), "sigtimedwait")?;
    }
    Ok("received".into())
}

/// A chain of `n` processes, each the child of the one before; the deepest prints its depth
/// and cgroup and tries both opens. Every parent exits with its child's status.
fn fork_chain(n: u32, denied: &str, granted: &str) -> Step {
    flush();
    // SAFETY: getpid cannot fail.
    let top = unsafe { libc::getpid() };
    for depth in 1..=n {
        flush();
        // SAFETY: this tool is single-threaded, so the child of fork may allocate and print as
        // usual.
        let child = sysi(unsafe { libc::fork() }, "fork")?;
        if child > 0 {
            let mut st = 0;
            // SAFETY: waitpid writes the status into st, ours.
            unsafe { libc::waitpid(child, &mut st, 0) };
            let code = if libc::WIFEXITED(st) { libc::WEXITSTATUS(st) } else { 99 };
            // SAFETY: getpid cannot fail.
            if unsafe { libc::getpid() } == top {
                return if code == 0 {
                    Ok(format!("chain {n} exit 0"))
                } else {
                    Err(Fail(Errno::ECHILD, "chain"))
                };
            }
            flush();
            // SAFETY: _exit ends this process of the chain without running anything else; stdout
            // was flushed.
            unsafe { libc::_exit(code) };
        }
        if depth == n {
            // SAFETY: getpid cannot fail.
            println!("ok depth {n} pid {}", unsafe { libc::getpid() });
            let mut good = report(run_step(&["cgroup".into()]));
            good &= !report(run_step(&["read".into(), denied.into()]));
            good &= report(run_step(&["read".into(), granted.into()]));
            flush();
            // SAFETY: as above: stdout was flushed, nothing else needs to run.
            unsafe { libc::_exit(if good { 0 } else { 1 }) };
        }
    }
    unreachable!()
}

fn clone_into_cgroup(dir: &str) -> Step {
    let fd = open_raw(dir, libc::O_RDONLY | libc::O_DIRECTORY)?;
    stage_ok("opened");
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    let args = CloneArgs {
        flags: 0x2_0000_0000, // CLONE_INTO_CGROUP
        exit_signal: libc::SIGCHLD as u64,
        cgroup: fd as u64,
        ..Default::default()
    };
    flush();
    let pid = sys(
        // SAFETY: clone3 without CLONE_VM reads `args` (its size passed with it) and forks: the
        // child has its own copy of this single-threaded process.
        unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, size_of::<CloneArgs>()) },
        "",
    )?;
    if pid == 0 {
        let cg = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let line = format!("ok child-cgroup {}\n", cg.trim().replace('\n', "|"));
        // SAFETY: write reads line.len() bytes of line, alive; _exit ends the child without
        // returning into the parent's code.
        unsafe {
            libc::write(1, line.as_ptr().cast(), line.len());
            libc::_exit(0);
        }
    }
    let mut st = 0;
    // SAFETY: waitpid writes the status into st, ours.
    unsafe { libc::waitpid(pid as i32, &mut st, 0) };
    Ok("child ran".into())
}

fn as_user(rest: &[String]) -> Step {
    if rest.len() < 4 || rest[2] != "--" {
        usage("as-user UID GID -- PROG ARGS...");
    }
    let (uid, gid): (u32, u32) = (num(&rest[0]), num(&rest[1]));
    // SAFETY: setgroups with size 0 reads nothing through the null list; setgid and setuid take
    // integers.
    unsafe {
        sysi(libc::setgroups(0, std::ptr::null()), "setgroups")?;
        sysi(libc::setgid(gid), "setgid")?;
        sysi(libc::setuid(uid), "setuid")?;
    }
    stage_ok(&format!("as {uid}:{gid}"));
    let argv: Vec<CString> = rest[3..].iter().map(|s| cs(s)).collect();
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|c| c.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    // SAFETY: argv is NUL-terminated strings alive here and ptrs ends with a null pointer, as execv
    // requires.
    unsafe { libc::execv(argv[0].as_ptr(), ptrs.as_ptr()) };
    Err(Fail(Errno::last(), "exec"))
}

fn mount(src: &str, dst: &str, fstype: Option<&str>, flags: libc::c_ulong) -> Step {
    let (s, d) = (cs(src), cs(dst));
    let t = fstype.map(cs);
    let tp = t.as_ref().map_or(std::ptr::null(), |t| t.as_ptr());
    // SAFETY: mount reads NUL-terminated source, target and (or null) type, alive until the
    // function returns; null data is allowed.
    sysi(unsafe { libc::mount(s.as_ptr(), d.as_ptr(), tp, flags, std::ptr::null()) }, "")
        .map(|_| String::new())
}

fn ns_flags(list: &str) -> i32 {
    let mut f = 0;
    for n in list.split(',') {
        f |= match n {
            "mnt" => libc::CLONE_NEWNS,
            "user" => libc::CLONE_NEWUSER,
            "net" => libc::CLONE_NEWNET,
            "uts" => libc::CLONE_NEWUTS,
            "ipc" => libc::CLONE_NEWIPC,
            "pid" => libc::CLONE_NEWPID,
            "cgroup" => libc::CLONE_NEWCGROUP,
            other => usage(&format!("unshare: unknown namespace {other:?}")),
        };
    }
    f
}

fn clone_newuser() -> Step {
    flush();
    let flags = (libc::CLONE_NEWUSER | libc::SIGCHLD) as c_long;
    // SAFETY: a raw clone without CLONE_VM is a fork (new stack copy, no shared memory); the child
    // only calls _exit.
    let pid = sys(unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) }, "")?;
    if pid == 0 {
        // SAFETY: _exit ends the child at once.
        unsafe { libc::_exit(0) };
    }
    let mut st = 0;
    // SAFETY: waitpid writes the status into st, ours.
    unsafe { libc::waitpid(pid as i32, &mut st, 0) };
    Ok("child in a new user namespace".into())
}

fn memfd(src: &str) -> Step {
    let bytes = std::fs::read(src).map_err(at("read source"))?;
    let name = cs("rush-escape");
    // SAFETY: memfd_create reads a NUL-terminated name alive here.
    let fd = sysi(unsafe { libc::memfd_create(name.as_ptr(), 0) }, "")?;
    // SAFETY: fd was just returned by memfd_create and nothing else owns it.
    let mut f = unsafe { File::from_raw_fd(fd) };
    f.write_all(&bytes).map_err(at("write"))?;
    Ok(keep(f.into_raw_fd()))
}

fn mmap_fd(fd: RawFd, prot: i32, then_mprotect_exec: bool) -> Step {
    let len = 4096;
    // SAFETY: a new mapping at an address the kernel picks; nothing of ours is overwritten.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_PRIVATE, fd, 0) };
    if p == libc::MAP_FAILED {
        return Err(Fail(Errno::last(), if then_mprotect_exec { "mmap" } else { "" }));
    }
    if then_mprotect_exec {
        // SAFETY: p and len are the mapping just made.
        let r = unsafe { libc::mprotect(p, len, libc::PROT_READ | libc::PROT_EXEC) };
        let e = Errno::last();
        // SAFETY: the mapping just made; no reference into it exists.
        unsafe { libc::munmap(p, len) };
        if r < 0 {
            return Err(Fail(e, ""));
        }
    } else {
        // SAFETY: the mapping just made; no reference into it exists.
        unsafe { libc::munmap(p, len) };
    }
    Ok("mapped".into())
}

/// Replaces this process with PATH (or the file behind FD) run as `... say executed`.
fn exec_self_like(path: Option<&str>, fd: RawFd) -> Step {
    let argv: Vec<CString> = ["rush-test-escape", "say", "executed"].iter().map(|s| cs(s)).collect();
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|c| c.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    flush();
    match path {
        Some(p) => {
            let p = cs(p);
            // SAFETY: p, argv and envp are NUL-terminated strings or null-terminated pointer arrays
            // alive here; on success nothing returns.
            unsafe { libc::execve(p.as_ptr(), ptrs.as_ptr(), envp.as_ptr()) };
        }
        None => {
            let empty = cs("");
            // SAFETY: as for execve: an empty path with AT_EMPTY_PATH, pointer arrays ending with
            // null, all alive here.
            unsafe {
                libc::syscall(
                    libc::SYS_execveat,
                    fd,
                    empty.as_ptr(),
                    ptrs.as_ptr(),
                    envp.as_ptr(),
                    libc::AT_EMPTY_PATH,
                )
            };
        }
    }
    Err(Fail(Errno::last(), ""))
}

fn mmap_hold(path: &str, rw: bool) -> Step {
    let f = OpenOptions::new().read(true).write(rw).open(path).map_err(io)?;
    let len = f.metadata().map_err(at("fstat"))?.len() as usize;
    if len == 0 {
        return Err(Fail(Errno::EINVAL, "empty file"));
    }
    let prot = libc::PROT_READ | if rw { libc::PROT_WRITE } else { 0 };
    // SAFETY: a new mapping at an address the kernel picks; nothing of ours is overwritten.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, f.as_raw_fd(), 0) };
    if p == libc::MAP_FAILED {
        return Err(Fail(Errno::last(), "mmap"));
    }
    drop(f); // the mapping alone holds the file from here on
    println!("mapped {}", std::process::id());
    flush();
    // SAFETY: p is a mapping of len bytes that stays until the process exits and nothing else here
    // refers to it; it is written only on `write` commands, which the tests send for read-write
    // mappings (another process changing the file changes the bytes read, which is what the test
    // looks at).
    let map = unsafe { std::slice::from_raw_parts_mut(p.cast::<u8>(), len) };
    for line in std::io::stdin().lock().lines().map_while(Result::ok) {
        if let Some(text) = line.strip_prefix("write ") {
            let n = text.len().min(len);
            map[..n].copy_from_slice(&text.as_bytes()[..n]);
            println!("ok wrote {n}");
        } else if line.trim() == "read" {
            println!("ok {}", String::from_utf8_lossy(map).escape_debug());
        }
        flush();
    }
    Ok("released".into())
}

/// Connects to the Unix socket at `path` and returns the fd that arrives as SCM_RIGHTS.
fn recv_fd(path: &str) -> Result<RawFd, Fail> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let stream = std::os::unix::net::UnixStream::connect(path).map_err(io)?;
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::empty())
        .map_err(|e| Fail(e, "recvmsg"))?;
    for c in msg.cmsgs().map_err(|e| Fail(e, "cmsgs"))? {
        if let ControlMessageOwned::ScmRights(fds) = c
            && let Some(fd) = fds.first()
        {
            return Ok(*fd);
        }
    }
    Err(Fail(Errno::EBADMSG, "no fd"))
}

/// Listens on `path` and sends `fd` (SCM_RIGHTS) to the first connection.
fn serve_fd(path: &str, fd: RawFd) -> Step {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(io)?;
    let (stream, _) = listener.accept().map_err(io)?;
    let fds = [fd];
    let iov = [std::io::IoSlice::new(b"x")];
    sendmsg::<()>(stream.as_raw_fd(), &iov, &[ControlMessage::ScmRights(&fds)], MsgFlags::empty(), None)
        .map_err(|e| Fail(e, "sendmsg"))?;
    Ok(format!("sent fd {fd}"))
}

/// One NDJSON exchange on `fd`: `line` out, one line back (printed as it came).
fn ndjson(fd: RawFd, line: &str) -> Step {
    let out = format!("{line}\n");
    // SAFETY: out is a readable buffer of the given length.
    sys(unsafe { libc::write(fd, out.as_ptr().cast(), out.len()) } as c_long, "write")?;
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        // SAFETY: byte is a writable buffer of length 1.
        let n = sys(unsafe { libc::read(fd, byte.as_mut_ptr().cast(), 1) } as c_long, "read")?;
        if n == 0 || byte[0] == b'\n' {
            break;
        }
        reply.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

/// Maps the whole file behind `fd`: PROT_READ (`r`) or PROT_READ|PROT_WRITE (`rw`),
/// MAP_SHARED or MAP_PRIVATE; prints its bytes, or writes `text` at its start.
fn map_fd(fd: RawFd, prot: &str, sharing: &str, text: Option<&str>) -> Step {
    let prot = match prot {
        "r" => libc::PROT_READ,
        "rw" => libc::PROT_READ | libc::PROT_WRITE,
        other => usage(&format!("map: prot {other:?}")),
    };
    let flags = match sharing {
        "shared" => libc::MAP_SHARED,
        "private" => libc::MAP_PRIVATE,
        other => usage(&format!("map: {other:?}")),
    };
    let len = fd_len(fd)?;
    // SAFETY: a new mapping at an address the kernel picks; nothing else refers to it.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd, 0) };
    if p == libc::MAP_FAILED {
        return Err(Fail(Errno::last(), ""));
    }
    // SAFETY: p is a live mapping of len bytes, unmapped below before it goes away.
    let map = unsafe { std::slice::from_raw_parts_mut(p.cast::<u8>(), len) };
    let out = match text {
        Some(t) => {
            let n = t.len().min(len);
            map[..n].copy_from_slice(&t.as_bytes()[..n]);
            // SAFETY: msync of the mapping made above.
            unsafe { libc::msync(p, len, libc::MS_SYNC) };
            format!("wrote {n}")
        }
        None => String::from_utf8_lossy(map).escape_debug().to_string(),
    };
    // SAFETY: the mapping made above; `map` is not used after this.
    unsafe { libc::munmap(p, len) };
    Ok(out)
}

fn fd_len(fd: RawFd) -> Result<usize, Fail> {
    // SAFETY: fstat into a zeroed stat buffer we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes one struct stat into st, ours.
    sysi(unsafe { libc::fstat(fd, &mut st) }, "fstat")?;
    if st.st_size == 0 {
        return Err(Fail(Errno::EINVAL, "empty file"));
    }
    Ok(st.st_size as usize)
}

/// A shared read-only mapping of `fd`, then mprotect to read-write and a write of `text`.
fn map_mprotect(fd: RawFd, text: &str) -> Step {
    let len = fd_len(fd)?;
    // SAFETY: a new mapping at an address the kernel picks.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, fd, 0) };
    if p == libc::MAP_FAILED {
        return Err(Fail(Errno::last(), "mmap"));
    }
    stage_ok("mapped");
    // SAFETY: mprotect of the mapping made above.
    if unsafe { libc::mprotect(p, len, libc::PROT_READ | libc::PROT_WRITE) } < 0 {
        let e = Errno::last();
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(p, len) };
        return Err(Fail(e, ""));
    }
    let n = text.len().min(len);
    // SAFETY: p is now a writable mapping of len >= n bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), p.cast::<u8>(), n);
        libc::msync(p, len, libc::MS_SYNC);
        libc::munmap(p, len);
    }
    Ok(format!("wrote {n}"))
}

/// `n` x (open, mmap MAP_SHARED PROT_READ, read one byte, munmap, close) of `path`.
fn map_loop(path: &str, n: u64) -> Step {
    let p = cs(path);
    let start = std::time::Instant::now();
    for _ in 0..n {
        // SAFETY: open of a NUL-terminated path; the fd is closed below.
        let fd = sysi(unsafe { libc::open(p.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) }, "open")?;
        // SAFETY: a new one-page mapping at an address the kernel picks.
        let m = unsafe { libc::mmap(std::ptr::null_mut(), 4096, libc::PROT_READ, libc::MAP_SHARED, fd, 0) };
        if m == libc::MAP_FAILED {
            return Err(Fail(Errno::last(), "mmap"));
        }
        // SAFETY: m is a readable mapping of at least one byte; unmapped right after.
        unsafe {
            std::ptr::read_volatile(m.cast::<u8>());
            libc::munmap(m, 4096);
            libc::close(fd);
        }
    }
    Ok(format!("{n} ns/iter {}", start.elapsed().as_nanos() / u128::from(n.max(1))))
}

/// An inotify watch on `path`; with `touch`, an append to it and the events it caused.
fn inotify(path: &str, touch: Option<&str>) -> Step {
    // SAFETY: inotify_init1 takes flags and returns an fd.
    let ifd = sysi(unsafe { libc::inotify_init1(libc::IN_NONBLOCK) }, "inotify_init1")?;
    let p = cs(path);
    // SAFETY: a watch on a NUL-terminated path.
    let wd = sysi(unsafe { libc::inotify_add_watch(ifd, p.as_ptr(), libc::IN_ALL_EVENTS) }, "")?;
    let Some(t) = touch else { return Ok(format!("wd {wd}")) };
    OpenOptions::new().append(true).open(t).map_err(at("touch"))?.write_all(b"").map_err(at("touch"))?;
    let mut buf = [0u8; 4096];
    // SAFETY: read into our buffer; the events are counted, not parsed beyond their length.
    let n = unsafe { libc::read(ifd, buf.as_mut_ptr().cast(), buf.len()) };
    let (mut events, mut off) = (0, 0usize);
    while n > 0 && off + 16 <= n as usize {
        let len = u32::from_ne_bytes(buf[off + 12..off + 16].try_into().unwrap()) as usize;
        events += 1;
        off += 16 + len;
    }
    Ok(format!("wd {wd} events {events}"))
}

/// fanotify_init (FID reporting, which needs no CAP_SYS_ADMIN, or plain), then an inode
/// mark on `path` for opens, reads, writes and closes of it and of its entries.
fn fanotify(path: &str, fid: bool) -> Step {
    const FAN_CLASS_NOTIF: u32 = 0;
    const FAN_REPORT_FID: u32 = 0x200;
    const FAN_MARK_ADD: u32 = 1;
    const FAN_EVENTS: u64 = 0x1 | 0x2 | 0x8 | 0x20 | 0x0800_0000; // access, modify, close-write, open, on-child
    let flags = FAN_CLASS_NOTIF | if fid { FAN_REPORT_FID } else { 0 };
    let init_stage = if fid { "fanotify_init" } else { "" };
    // SAFETY: fanotify_init takes two flag words and returns an fd.
    let fd =
        sys(unsafe { libc::syscall(libc::SYS_fanotify_init, flags, libc::O_RDONLY as u32) }, init_stage)?;
    if fid {
        stage_ok("init");
    }
    let p = cs(path);
    // SAFETY: fanotify_mark of a NUL-terminated path relative to the cwd.
    sys(
        unsafe {
            libc::syscall(libc::SYS_fanotify_mark, fd, FAN_MARK_ADD, FAN_EVENTS, libc::AT_FDCWD, p.as_ptr())
        },
        "",
    )
    .map(|_| String::new())
}

// bpf(2), by hand: the commands and attribute layouts of include/uapi/linux/bpf.h.
const BPF_MAP_CREATE: c_long = 0;
const BPF_MAP_LOOKUP_ELEM: c_long = 1;
const BPF_MAP_UPDATE_ELEM: c_long = 2;
const BPF_MAP_GET_NEXT_KEY: c_long = 4;
const BPF_OBJ_GET: c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: c_long = 15;

#[repr(C, align(8))]
struct BpfAttr([u8; 160]);

impl BpfAttr {
    fn new() -> BpfAttr {
        BpfAttr([0; 160])
    }
    fn u32(&mut self, off: usize, v: u32) -> &mut Self {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, off: usize, v: u64) -> &mut Self {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
}

fn bpf(cmd: c_long, attr: &mut BpfAttr, stage: &'static str) -> Result<c_long, Fail> {
    // SAFETY: bpf reads and writes at most attr.0.len() bytes of the attribute buffer, ours.
    // The callers' pointers inside it are to buffers alive across the call: a path, or keys,
    // values and info sized from the map's own key_size / value_size (no per-CPU maps here).
    sys(unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.0.as_mut_ptr(), attr.0.len()) }, stage)
}

fn bpf_obj_get(pin: &str) -> Result<RawFd, Fail> {
    let p = cs(pin);
    let mut a = BpfAttr::new();
    a.u64(0, p.as_ptr() as u64);
    bpf(BPF_OBJ_GET, &mut a, "").map(|fd| fd as RawFd)
}

/// (key size, value size) of a map.
fn bpf_map_sizes(fd: RawFd, stage: &'static str) -> Result<(usize, usize), Fail> {
    let mut info = [0u8; 128];
    let mut a = BpfAttr::new();
    a.u32(0, fd as u32).u32(4, info.len() as u32).u64(8, info.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a, stage)?;
    let field = |off: usize| u32::from_ne_bytes(info[off..off + 4].try_into().unwrap()) as usize;
    Ok((field(8), field(12)))
}

fn bpf_next_key(fd: RawFd, key: Option<&[u8]>, next: &mut [u8], stage: &'static str) -> Result<bool, Fail> {
    let mut a = BpfAttr::new();
    a.u32(0, fd as u32).u64(8, key.map_or(0, |k| k.as_ptr() as u64)).u64(16, next.as_mut_ptr() as u64);
    match bpf(BPF_MAP_GET_NEXT_KEY, &mut a, stage) {
        Ok(_) => Ok(true),
        Err(Fail(Errno::ENOENT, _)) => Ok(false),
        Err(e) => Err(e),
    }
}

fn bpf_poison(fd: RawFd) -> Step {
    let (ks, vs) = bpf_map_sizes(fd, "")?;
    let mut key = vec![0u8; ks];
    if !bpf_next_key(fd, None, &mut key, "get_next_key")? {
        return Err(Fail(Errno::ENOENT, "empty map"));
    }
    let value = vec![0xffu8; vs];
    let mut a = BpfAttr::new();
    a.u32(0, fd as u32).u64(8, key.as_ptr() as u64).u64(16, value.as_ptr() as u64).u64(24, 0);
    bpf(BPF_MAP_UPDATE_ELEM, &mut a, "update")?;
    Ok("poisoned".into())
}

fn bpf_map_create() -> Result<RawFd, Fail> {
    let mut a = BpfAttr::new();
    a.u32(0, 2).u32(4, 4).u32(8, 4).u32(12, 1); // BPF_MAP_TYPE_ARRAY, 4-byte key and value, 1 entry
    bpf(BPF_MAP_CREATE, &mut a, "").map(|fd| fd as RawFd)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn map_dump(pin: &str) -> Step {
    let fd = bpf_obj_get(pin)?;
    let (ks, vs) = bpf_map_sizes(fd, "info")?;
    let mut entries = Vec::new();
    let mut key: Option<Vec<u8>> = None;
    loop {
        let mut next = vec![0u8; ks];
        if !bpf_next_key(fd, key.as_deref(), &mut next, "get_next_key")? {
            break;
        }
        let mut value = vec![0u8; vs];
        let mut a = BpfAttr::new();
        a.u32(0, fd as u32).u64(8, next.as_ptr() as u64).u64(16, value.as_mut_ptr() as u64);
        if bpf(BPF_MAP_LOOKUP_ELEM, &mut a, "lookup").is_ok() {
            entries.push(format!("entry {} {}", hex(&next), hex(&value)));
        }
        key = Some(next);
    }
    entries.sort();
    for e in &entries {
        println!("{e}");
    }
    Ok(format!("{} entries", entries.len()))
}

fn io_uring_openat(path: &str) -> Step {
    use io_uring::{IoUring, opcode, types};
    let mut ring = IoUring::new(4).map_err(at("io_uring_setup"))?;
    let p = cs(path);
    let op =
        opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), p.as_ptr()).flags(libc::O_RDONLY).build().user_data(1);
    // SAFETY: the entry points at p, a NUL-terminated path that lives until this function returns,
    // after the completion was reaped.
    unsafe { ring.submission().push(&op) }.map_err(|_| Fail(Errno::EBUSY, "sq push"))?;
    ring.submit_and_wait(1).map_err(at("io_uring_enter"))?;
    let cqe = ring.completion().next().ok_or(Fail(Errno::EAGAIN, "no cqe"))?;
    let res = cqe.result();
    if res < 0 {
        return Err(Fail(Errno::from_raw(-res), ""));
    }
    // SAFETY: res is the descriptor io_uring's openat returned; nothing else owns it.
    read_all(unsafe { File::from_raw_fd(res) }).map(|v| v.len().to_string())
}

fn socket(domain: i32, ty: i32, proto: i32) -> Step {
    // SAFETY: socket takes integers only.
    sysi(unsafe { libc::socket(domain, ty, proto) }, "").map(|fd| {
        // SAFETY: closes the socket just made, owned by nothing else.
        unsafe { libc::close(fd) };
        String::new()
    })
}

fn net_admin() -> Step {
    // SAFETY: socket takes integers only.
    let s = sysi(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) }, "socket")?;
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, c) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *c as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS writes into ifr, a whole struct ifreq of ours.
    sysi(unsafe { libc::ioctl(s, libc::SIOCGIFFLAGS, &mut ifr) }, "SIOCGIFFLAGS")?;
    // Set the flags lo already has: changes nothing, yet needs CAP_NET_ADMIN.
    // SAFETY: SIOCSIFFLAGS reads ifr, a whole struct ifreq of ours.
    sysi(unsafe { libc::ioctl(s, libc::SIOCSIFFLAGS, &ifr) }, "").map(|_| "lo flags set".into())
}

const MAX_HANDLE_SZ: usize = 128;

#[repr(C)]
struct FileHandle {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; MAX_HANDLE_SZ],
}

fn name_to_handle(path: &str) -> Step {
    let mut h =
        FileHandle { handle_bytes: MAX_HANDLE_SZ as u32, handle_type: 0, f_handle: [0; MAX_HANDLE_SZ] };
    let mut mount_id = 0;
    let p = cs(path);
    sysi(
        // SAFETY: name_to_handle_at writes at most handle_bytes (MAX_HANDLE_SZ) bytes after the
        // header of h and an int into mount_id, all ours; the path is alive.
        unsafe {
            libc::name_to_handle_at(
                libc::AT_FDCWD,
                p.as_ptr(),
                (&mut h as *mut FileHandle).cast(),
                &mut mount_id,
                0,
            )
        },
        "",
    )?;
    Ok(format!("{} {}", h.handle_type, hex(&h.f_handle[..h.handle_bytes as usize])))
}

fn open_by_handle(mount_dir: &str, ty: i32, hexs: &str) -> Step {
    let bytes: Vec<u8> = (0..hexs.len() / 2)
        .map(|i| {
            u8::from_str_radix(&hexs[2 * i..2 * i + 2], 16).unwrap_or_else(|_| usage("open-by-handle: hex"))
        })
        .collect();
    let mut h =
        FileHandle { handle_bytes: bytes.len() as u32, handle_type: ty, f_handle: [0; MAX_HANDLE_SZ] };
    h.f_handle[..bytes.len()].copy_from_slice(&bytes);
    let mfd =
        open_raw(mount_dir, libc::O_RDONLY | libc::O_DIRECTORY).map_err(|Fail(e, _)| Fail(e, "mount fd"))?;
    let fd = sysi(
        // SAFETY: open_by_handle_at reads h, whose handle_bytes says how many bytes follow (at most
        // MAX_HANDLE_SZ, all inside h).
        unsafe { libc::open_by_handle_at(mfd, (&mut h as *mut FileHandle).cast(), libc::O_RDONLY) },
        "",
    )?;
    // SAFETY: fd was just returned by open_by_handle_at and nothing else owns it.
    read_all(unsafe { File::from_raw_fd(fd) }).map(|v| v.len().to_string())
}

// btrfs ioctls (include/uapi/linux/btrfs.h): struct btrfs_ioctl_vol_args { __s64 fd; char name[4088]; }.
#[repr(C)]
struct BtrfsVolArgs {
    fd: i64,
    name: [u8; 4088],
}

const fn iow(ty: u64, nr: u64, size: u64) -> u64 {
    (1 << 30) | (size << 16) | (ty << 8) | nr
}

const BTRFS_IOC_SNAP_CREATE: u64 = iow(0x94, 1, 4096);
const BTRFS_IOC_SUBVOL_CREATE: u64 = iow(0x94, 14, 4096);

fn btrfs_vol_ioctl(parent: &std::path::Path, name: &std::ffi::OsStr, src_fd: i64, req: u64) -> Step {
    let dir = File::open(parent).map_err(at("open parent"))?;
    let mut args = BtrfsVolArgs { fd: src_fd, name: [0; 4088] };
    let n = name.as_bytes();
    args.name[..n.len()].copy_from_slice(n);
    // SAFETY: the btrfs volume ioctls read and write one struct btrfs_ioctl_vol_args (4096 bytes,
    // `args`, ours).
    sysi(unsafe { libc::ioctl(dir.as_raw_fd(), req as _, &mut args) }, "").map(|_| String::new())
}

fn split(path: &str) -> (&std::path::Path, &std::ffi::OsStr) {
    let p = std::path::Path::new(path);
    (
        p.parent().unwrap_or(std::path::Path::new(".")),
        p.file_name().unwrap_or_else(|| usage("path without a name")),
    )
}

fn btrfs_subvol(path: &str) -> Step {
    let (parent, name) = split(path);
    btrfs_vol_ioctl(parent, name, 0, BTRFS_IOC_SUBVOL_CREATE)
}

fn btrfs_snap(src: &str, dst: &str) -> Step {
    let s = File::open(src).map_err(at("open source"))?;
    let (parent, name) = split(dst);
    btrfs_vol_ioctl(parent, name, i64::from(s.as_raw_fd()), BTRFS_IOC_SNAP_CREATE)
}
