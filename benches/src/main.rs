//! `cargo xtask bench`: Rush's costs as ratios against a baseline measured in the same
//! run, alternating the two sides so machine noise hits both alike.

use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kernel_tests::{Daemon, bin, describe, is_root};

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

fn main() {
    assert!(is_root(), "the benchmarks need root (they run the daemon)");
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

    let d = Daemon::start();
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
