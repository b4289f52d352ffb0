//! `cargo xtask bench`: Rush's costs as ratios against a baseline measured in the same
//! run, alternating the two sides so machine noise hits both alike.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod approvals;
mod claims;
mod dns;
mod events;
mod gating;
mod hardening;
mod landlock_audit;
mod meter;
mod peers;
mod scale;
mod shell;
mod snapshot;
mod terminal;
mod top;
mod workspace;

use kernel_tests::{Daemon, bin, describe, is_root};
use libbpf_rs::{MapCore, MapFlags, MapHandle};
use rush_ebpf::{MAP_NET_USAGE, Plain, RushNetUsage};

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn time(cmd: &mut Command) -> Duration {
    let t = Instant::now();
    let out = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).output().expect("run");
    let d = t.elapsed();
    assert!(out.status.success(), "{cmd:?} failed: {}", describe(&out));
    d
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// Runs `a` and `b` alternately `n` times; returns their p50s and p90s.
fn compare(n: usize, mut a: impl FnMut() -> Duration, mut b: impl FnMut() -> Duration) -> [Duration; 4] {
    let (mut va, mut vb) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        va.push(a());
        vb.push(b());
    }
    [percentile(&mut va, 0.5), percentile(&mut va, 0.9), percentile(&mut vb, 0.5), percentile(&mut vb, 0.9)]
}

fn report(what: &str, base: &str, r: [Duration; 4]) {
    let ratio = r[0].as_secs_f64() / r[2].as_secs_f64();
    println!("| {what} | {base} | {} | {} | {} | {} | {ratio:.2}x |", ms(r[0]), ms(r[1]), ms(r[2]), ms(r[3]));
}

/// One connect loop of `n` connects, in ns per connect, as the loop itself measured it.
fn connect_loop(cmd: &mut Command) -> f64 {
    let out = cmd.output().expect("run rush-test-net");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("ns_per_op "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no measurement: {}", describe(&out)))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The middle value (the upper one of an even count).
fn median_of<T: Ord + Copy>(v: &[T]) -> T {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

/// Commits the filesystem holding `p` (a timed copy must not end in the page cache).
fn syncfs(p: &Path) {
    let f = std::fs::File::open(p).expect("open for syncfs");
    nix::unistd::syncfs(std::os::fd::AsFd::as_fd(&f)).expect("syncfs");
}

/// xorshift64*: the same stream wherever it runs, so every tree a bench makes from one
/// seed has the same bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// A loopback peer outside any agent, one connection at a time on each port: `sink`
/// reads each connection to EOF, then closes; `source` writes `bytes` in 64 KiB writes,
/// then closes.
fn loopback_peer(bytes: u64) -> (SocketAddr, SocketAddr) {
    let sink = TcpListener::bind("127.0.0.1:0").unwrap();
    let source = TcpListener::bind("127.0.0.1:0").unwrap();
    let addrs = (sink.local_addr().unwrap(), source.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        for mut s in sink.incoming().flatten() {
            while let Ok(1..) = s.read(&mut buf) {}
        }
    });
    std::thread::spawn(move || {
        let buf = vec![0xa5u8; 64 * 1024];
        for mut s in source.incoming().flatten() {
            let mut left = bytes;
            while left > 0 {
                match s.write(&buf[..left.min(buf.len() as u64) as usize]) {
                    Ok(n) => left -= n as u64,
                    Err(_) => break,
                }
            }
        }
    });
    addrs
}

/// One `rush-test-net upload|download` run: bytes per second, as the tool measured it
/// (connect to last byte); panics unless every byte went through.
fn stream_rate(cmd: &mut Command, bytes: u64) -> f64 {
    let out = cmd.stdin(Stdio::null()).output().expect("run rush-test-net");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok());
    match (field("bytes "), field("ns ")) {
        (Some(b), Some(ns)) if b == bytes && out.status.success() => b as f64 / (ns as f64 / 1e9),
        _ => panic!("transfer incomplete: {}", describe(&out)),
    }
}

/// Watches the daemon's pinned usage map while an agent runs and records the most bytes
/// an entry counted (proof the counters ran: the agent has exited by the time it could be
/// asked through `rush agent status`).
struct UsageWatch {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<u64>,
}

impl UsageWatch {
    fn start(pin_dir: &Path) -> UsageWatch {
        let map = MapHandle::from_pinned_path(pin_dir.join(MAP_NET_USAGE)).expect("the pinned usage map");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut most = 0;
            while !stopped.load(Ordering::Relaxed) {
                for key in map.keys() {
                    let Ok(Some(value)) = map.lookup(&key, MapFlags::ANY) else { continue };
                    let Some(usage) = RushNetUsage::from_bytes(&value) else { continue };
                    if usage.limit_bytes > 0 {
                        most = most.max(usage.tx_bytes + usage.rx_bytes);
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            most
        });
        UsageWatch { stop, thread }
    }

    /// The most bytes one entry counted while watched.
    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// TCP loopback throughput: 256 MiB in 64 KiB writes, up (the measured process writes)
/// and down (it reads), against a peer outside any agent.
struct Throughput {
    sink: SocketAddr,
    source: SocketAddr,
    net: std::path::PathBuf,
}

const TPUT_BYTES: u64 = 256 << 20;
const DIRECTIONS: [&str; 2] = ["upload", "download"];
/// Every measured process sleeps first, inside or outside an agent, so that the daemon
/// has finished tearing down the previous agent (2 cores: it would share them).
const SETTLE: &str = "sleep 0.2; exec \"$0\" \"$@\"";

impl Throughput {
    fn start() -> Throughput {
        let (sink, source) = loopback_peer(TPUT_BYTES);
        Throughput { sink, source, net: bin("rush-test-net") }
    }

    /// The measured command line: sh (settle) + rush-test-net DIR ADDR BYTES.
    fn args(&self, dir: &str) -> Vec<String> {
        let addr = if dir == "upload" { self.sink } else { self.source };
        let net = self.net.to_str().unwrap();
        ["/bin/sh", "-c", SETTLE, net, dir, &addr.to_string(), &TPUT_BYTES.to_string()]
            .map(str::to_owned)
            .to_vec()
    }

    fn outside(&self, dir: &str) -> f64 {
        let args = self.args(dir);
        stream_rate(Command::new(&args[0]).args(&args[1..]), TPUT_BYTES)
    }

    /// Rate, and the bytes the kernel counted for the agent.
    fn inside(&self, d: &Daemon, dir: &str) -> (f64, u64) {
        let mut c = Command::new(bin("rush"));
        c.args([
            "--socket",
            d.socket.to_str().unwrap(),
            "agent",
            "spawn",
            "tput",
            "--net",
            "127.0.0.1:*",
            "--budget",
            "net:100G",
            "--",
        ]);
        c.args(self.args(dir));
        let watch = UsageWatch::start(&d.pin_dir);
        let rate = stream_rate(&mut c, TPUT_BYTES);
        let counted = watch.finish();
        assert!(counted > 0, "the agent's traffic was not counted: no usage entry with bytes seen");
        (rate, counted)
    }
}

/// Outside any agent (the programs attached: one failed lookup per packet) and inside an
/// agent whose packets the cgroup_skb programs count against a large byte budget;
/// alternated, medians. `baseline`: the same outside, before any Rush program was attached.
fn tcp_throughput(t: &Throughput, baseline: &[f64; 2], d: &Daemon, runs: usize) {
    let gbit = |r: f64| format!("{:.2} Gbit/s", r * 8.0 / 1e9);
    println!(
        "\n| TCP loopback, 256 MiB in 64 KiB writes (median of {runs}) | no Rush program | outside any agent \
         | inside an agent, counted against a budget | ratio inside/outside | bytes the kernel counted |"
    );
    println!("|---|---|---|---|---|---|");
    for (dir, base) in DIRECTIONS.into_iter().zip(baseline) {
        let (mut out, mut ins, mut counted) = (Vec::new(), Vec::new(), 0);
        for _ in 0..runs {
            out.push(t.outside(dir));
            let (rate, c) = t.inside(d, dir);
            ins.push(rate);
            counted = counted.max(c);
        }
        let (o, i) = (median(out), median(ins));
        let mib = counted as f64 / (1 << 20) as f64;
        println!(
            "| {dir} | {} | {} | {} | {:.2}x | {mib:.0} MiB (last poll) |",
            gbit(*base),
            gbit(o),
            gbit(i),
            i / o
        );
    }
}

/// The outside rates before any daemon runs.
fn tcp_baseline(t: &Throughput, runs: usize) -> [f64; 2] {
    DIRECTIONS.map(|dir| median((0..runs).map(|_| t.outside(dir)).collect()))
}

/// The spawn rows: warm, cold, cold joining no v1 hierarchy; returns the warm p50.
fn spawn_rows(d: &Daemon) -> Duration {
    let rush = bin("rush");
    let sock = d.socket.to_str().unwrap().to_owned();
    let truebin = "/bin/true";
    println!("| what | baseline | p50 | p90 | baseline p50 | baseline p90 | ratio (p50) |");
    println!("|---|---|---|---|---|---|---|");
    let r = compare(
        200,
        || time(Command::new(&rush).args(["--socket", &sock, "agent", "spawn", "bench", "--", truebin])),
        || time(&mut Command::new(truebin)),
    );
    report("`rush agent spawn x -- /bin/true` (end to end)", "fork+exec /bin/true", r);
    let spawn_p50 = r[0];
    // Cold: 100 ms apart, so no cgroup/RCU state is left warm by the previous spawn.
    let cold_spawns = |socket: &str| {
        let pause = || std::thread::sleep(Duration::from_millis(100));
        compare(
            30,
            || {
                pause();
                time(Command::new(&rush).args(["--socket", socket, "agent", "spawn", "bench", "--", truebin]))
            },
            || {
                pause();
                time(&mut Command::new(truebin))
            },
        )
    };
    report("same, cold (100 ms between spawns)", "fork+exec /bin/true", cold_spawns(&sock));
    // Cold again, joining no v1 hierarchy: what a pure cgroup v2 host pays (the process
    // is born in its cgroup by clone3, no migration).
    let v2_only = Daemon::start_with_config("[cgroup]\nv1_controllers = []\n");
    let r = cold_spawns(v2_only.socket.to_str().unwrap());
    drop(v2_only);
    report("same, cold, v2 only (no v1 controllers joined)", "fork+exec /bin/true", r);
    spawn_p50
}

/// `rush-bench spawn`: the spawn rows alone. On a hybrid host, first cold spawns with
/// `[cgroup] favordynmods = false` (the flag as the host has it: kernels from 6.18 keep
/// the per-thread-group lock once the flag was ever set, so that row is only "before"
/// on such a kernel if nothing set it since boot), then the default daemon's rows.
fn spawn_only() {
    let mounts = || std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let flag = || {
        mounts().lines().any(|l| l.split_whitespace().nth(2) == Some("cgroup2") && l.contains("favordynmods"))
    };
    let off = Daemon::start_with_config("[cgroup]\nfavordynmods = false\n");
    println!("favordynmods with the daemon configured off: {}", if flag() { "on" } else { "off" });
    let (rush, sock, truebin) = (bin("rush"), off.socket.to_str().unwrap().to_owned(), "/bin/true");
    let pause = || std::thread::sleep(Duration::from_millis(100));
    let r = compare(
        30,
        || {
            pause();
            time(Command::new(&rush).args(["--socket", &sock, "agent", "spawn", "bench", "--", truebin]))
        },
        || {
            pause();
            time(&mut Command::new(truebin))
        },
    );
    drop(off);
    let d = Daemon::start();
    println!("favordynmods with the default daemon: {}", if flag() { "on" } else { "off" });
    spawn_rows(&d);
    report("same, cold, `[cgroup] favordynmods = false` (measured first)", "fork+exec /bin/true", r);
}

fn main() {
    assert!(is_root(), "the benchmarks need root (they run the daemon)");
    // `rush-bench snapshot`: only the time-travel storage backends (loop btrfs, ~15 min).
    if std::env::args().nth(1).as_deref() == Some("snapshot") {
        snapshot::run();
        return;
    }
    // `rush-bench scale`: spawn/exit cycles per second, RSS, 50 clients vs 1 (~2 min).
    if std::env::args().nth(1).as_deref() == Some("scale") {
        scale::run();
        return;
    }
    // `rush-bench events`: the event bus with 10 subscribers vs none (~1 min).
    if std::env::args().nth(1).as_deref() == Some("events") {
        events::run();
        return;
    }
    // `rush-bench hardening`: the seccomp filter's and the spawn hardening's cost (~1 min).
    if std::env::args().nth(1).as_deref() == Some("hardening") {
        hardening::run();
        return;
    }
    // `rush-bench dns`: an agent's DNS through its resolver vs direct (~30 s).
    if std::env::args().nth(1).as_deref() == Some("dns") {
        dns::run();
        return;
    }
    // `rush-bench meter`: the metering proxy on a streamed answer vs direct TLS (~20 s).
    if std::env::args().nth(1).as_deref() == Some("meter") {
        meter::run();
        return;
    }
    // `rush-bench claims`: claim + release through Rush vs flock(2) vs a git ref CAS (~30 s).
    if std::env::args().nth(1).as_deref() == Some("claims") {
        claims::run();
        return;
    }
    // `rush-bench approvals`: the human attention queue: request → each channel, approve →
    // unblocked, vs an `agent_status` round trip; decisions saved by batching (~30 s).
    if std::env::args().nth(1).as_deref() == Some("approvals") {
        approvals::run();
        return;
    }
    // `rush-bench gating`: risk gating's decision over the corpus, in process vs
    // brush-parser's parse alone, through the daemon vs `hello`, `rush explain` vs `rush
    // version` (~30 s).
    if std::env::args().nth(1).as_deref() == Some("gating") {
        gating::run();
        return;
    }
    // `rush-bench shell`: the rush shell vs bash and dash: `-c true`, first prompt, RSS,
    // per-command cost of perf recording and of gating (~30 s).
    if std::env::args().nth(1).as_deref() == Some("shell") {
        shell::run();
        return;
    }
    // `rush-bench terminal`: keystroke echo and attach through Rush vs a plain pty (~20 s).
    if std::env::args().nth(1).as_deref() == Some("terminal") {
        terminal::run();
        return;
    }
    // `rush-bench top`: `rush top`'s CPU and the daemon's with it vs without, event to
    // screen latency, its RSS; 50 agents (~1.5 min).
    if std::env::args().nth(1).as_deref() == Some("top") {
        top::run();
        return;
    }
    // `rush-bench landlock-audit`: Landlock denials in the audit trail, on vs off (~1 min).
    if std::env::args().nth(1).as_deref() == Some("landlock-audit") {
        landlock_audit::run();
        return;
    }
    // `rush-bench workspace`: agent workspaces: create with 1 GB of build state on ext4
    // and a loop btrfs vs git worktree + copy / rebuild; the merge queue's throughput vs
    // sequential `git merge` (~2 min).
    if std::env::args().nth(1).as_deref() == Some("workspace") {
        workspace::run();
        return;
    }
    // `rush-bench peers`: Rush vs bubblewrap, firejail, podman, systemd-run: spawn,
    // workloads, memory, what each enforces (~15 min; flags size it).
    if std::env::args().nth(1).as_deref() == Some("peers") {
        peers::run();
        return;
    }
    // `rush-bench spawn`: the spawn rows only, favordynmods off then on (~30 s).
    if std::env::args().nth(1).as_deref() == Some("spawn") {
        spawn_only();
        return;
    }
    // `rush-bench tcp-throughput`: only that table.
    if std::env::args().nth(1).as_deref() == Some("tcp-throughput") {
        let t = Throughput::start();
        let baseline = tcp_baseline(&t, 7);
        tcp_throughput(&t, &baseline, &Daemon::start(), 7);
        return;
    }
    let uname = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    println!(
        "kernel {}, {} cores\n",
        uname.unwrap_or_default(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // connect() with no Rush program attached anywhere: the true baseline. UDP connect runs
    // the cgroup/connect4 hook without sending packets, so the loop isolates the hook.
    let target = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = target.local_addr().unwrap().to_string();
    let loops = 7;
    let per_loop = "200000";
    let net = bin("rush-test-net");
    let plain = || {
        let mut c = Command::new(&net);
        c.args(["connect-loop", per_loop, &addr]).stderr(Stdio::null());
        c
    };
    let mut no_program: Vec<f64> = (0..loops).map(|_| connect_loop(&mut plain())).collect();
    let tput = Throughput::start();
    let tput_baseline = tcp_baseline(&tput, loops);

    let d = Daemon::start();
    let rush = bin("rush");
    let sock = d.socket.to_str().unwrap().to_owned();
    let truebin = "/bin/true";

    let spawn_p50 = spawn_rows(&d);
    let r = compare(200, || time(Command::new(&rush).arg("--version")), || time(&mut Command::new(truebin)));
    report("`rush --version`", "fork+exec /bin/true", r);
    let version_p50 = r[0];
    let r = compare(
        200,
        || time(Command::new(&rush).args(["--socket", &sock, "agent", "list"])),
        || time(&mut Command::new(truebin)),
    );
    report("`rush agent list` (CLI round trip)", "fork+exec /bin/true", r);
    let list_p50 = r[0];

    // connect(): outside any agent with the programs attached, and inside an agent whose
    // allow list admits the destination; alternated with each other.
    let allow = addr.clone();
    let (mut outside, mut inside) = (Vec::new(), Vec::new());
    for _ in 0..loops {
        outside.push(connect_loop(&mut plain()));
        inside.push(connect_loop(Command::new(&rush).args([
            "--socket",
            &sock,
            "agent",
            "spawn",
            "netbench",
            "--net",
            &allow,
            "--",
            net.to_str().unwrap(),
            "connect-loop",
            per_loop,
            &addr,
        ])));
    }
    tcp_throughput(&tput, &tput_baseline, &d, loops);
    drop(d);
    no_program.extend((0..loops).map(|_| connect_loop(&mut plain())));
    let (base, out_ns, in_ns) = (median(no_program), median(outside), median(inside));
    println!(
        "\n| UDP connect() to 127.0.0.1 (median of {loops} loops of {per_loop}) | ns per connect | ratio vs no program |"
    );
    println!("|---|---|---|");
    println!("| no Rush program attached | {base:.0} | 1.00x |");
    println!("| programs attached, caller outside any agent | {out_ns:.0} | {:.2}x |", out_ns / base);
    println!("| inside an agent, destination on its allow list | {in_ns:.0} | {:.2}x |", in_ns / base);

    println!(
        "\ntargets: spawn p50 < 5 ms: {} ({}); CLI round trip p50 < 4 ms: {} (list {}, --version {})",
        if spawn_p50 < Duration::from_millis(5) { "met" } else { "MISSED" },
        ms(spawn_p50),
        if list_p50 < Duration::from_millis(4) { "met" } else { "MISSED" },
        ms(list_p50),
        ms(version_p50)
    );
}
