//! `rush-bench dns`: what an agent's own resolver costs a DNS lookup, side by side in one
//! run, alternating: the same loop of A queries (one UDP socket, one query at a time) to
//! a local dnsmasq
//! - from outside any agent, straight to dnsmasq (the baseline);
//! - from an agent that lists dnsmasq's address (the cgroup hook only, no resolver);
//! - from an agent with a host name in `--net`, asking "8.8.8.8:53": redirected by the
//!   kernel to its resolver in the daemon, which checks the name, forwards to dnsmasq and
//!   writes the answer's address into the kernel's allow map.

use std::process::Stdio;

use kernel_tests::{Daemon, Dnsmasq, bin, describe};

const QUERIES: &str = "2000";
const ROUNDS: usize = 9;

fn ns_per_query(out: &std::process::Output) -> f64 {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("ns_per_op "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no measurement: {}", describe(out)))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn run() {
    let dns = Dnsmasq::start("198.18.0.2 api.rush.test\n");
    let server = format!("127.0.0.1:{}", dns.port);
    let d = Daemon::start_with_config(&format!("[dns]\nupstream = \"{server}\"\n"));
    let tool = bin("rush-test-net").display().to_string();
    let in_agent = |net: &str, to: &str| {
        let out = d
            .rush_cmd(&[
                "agent",
                "spawn",
                "dns-bench",
                "--net",
                net,
                "--",
                &tool,
                "dns-loop",
                QUERIES,
                to,
                "api.rush.test",
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run rush");
        ns_per_query(&out)
    };
    let (mut direct, mut hooked, mut resolved) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let out = std::process::Command::new(&tool)
            .args(["dns-loop", QUERIES, &server, "api.rush.test"])
            .output()
            .expect("run rush-test-net");
        direct.push(ns_per_query(&out));
        hooked.push(in_agent(&server, &server));
        resolved.push(in_agent("api.rush.test:443", "8.8.8.8:53"));
    }
    let (direct, hooked, resolved) = (median(direct), median(hooked), median(resolved));
    println!(
        "\n## DNS lookups: an agent's resolver vs direct (median of {ROUNDS} rounds of {QUERIES} A queries)\n"
    );
    println!("| path | µs per query | ratio vs direct |");
    println!("|---|---|---|");
    println!("| outside any agent, straight to dnsmasq | {:.1} | 1.00 |", direct / 1000.0);
    println!(
        "| agent listing dnsmasq's address (hook only) | {:.1} | {:.2} |",
        hooked / 1000.0,
        hooked / direct
    );
    println!(
        "| agent with a name: kernel redirect + its resolver + dnsmasq | {:.1} | {:.2} |",
        resolved / 1000.0,
        resolved / direct
    );
}
