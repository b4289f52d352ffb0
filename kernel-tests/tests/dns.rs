//! Host names in `--net` allow lists stay true: an agent's DNS goes to its own resolver in
//! the daemon, whatever server it asks; the addresses answered for listed names are
//! allowed for their TTL (plus a grace), names off the list get no answer, and raw
//! addresses no listed name returned are refused. A real DNS server (dnsmasq) answers,
//! and its answer for an allowed name changes while the agent runs.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kernel_tests::*;

/// Addresses of 198.18.0.0/15 (benchmarking, never routed) on `lo` for one test: a DNS
/// answer may not open loopback, so the test's servers listen on these.
struct LoAddrs(Vec<String>);

impl LoAddrs {
    fn add(addrs: &[&str]) -> LoAddrs {
        for a in addrs {
            let _ = Command::new("ip").args(["addr", "del", &format!("{a}/32"), "dev", "lo"]).status();
            let st =
                Command::new("ip").args(["addr", "add", &format!("{a}/32"), "dev", "lo"]).status().unwrap();
            assert!(st.success(), "ip addr add {a}/32 dev lo");
        }
        LoAddrs(addrs.iter().map(|a| a.to_string()).collect())
    }
}

impl Drop for LoAddrs {
    fn drop(&mut self) {
        for a in &self.0 {
            let _ = Command::new("ip").args(["addr", "del", &format!("{a}/32"), "dev", "lo"]).status();
        }
    }
}

/// Listeners on `port` of each address, counting the connections each accepted.
struct Listeners(Vec<(String, std::sync::Arc<std::sync::atomic::AtomicUsize>)>);

impl Listeners {
    fn on(addrs: &[&str], port: u16) -> Listeners {
        let mut all = Vec::new();
        for addr in addrs {
            let l = TcpListener::bind((*addr, port)).unwrap_or_else(|e| panic!("listen {addr}:{port}: {e}"));
            let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let c = count.clone();
            std::thread::spawn(move || {
                for s in l.incoming().flatten() {
                    c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    drop(s);
                }
            });
            all.push((addr.to_string(), count));
        }
        Listeners(all)
    }

    fn accepted(&self, addr: &str) -> usize {
        self.0.iter().find(|(a, _)| a == addr).map_or(0, |(_, c)| c.load(std::sync::atomic::Ordering::SeqCst))
    }
}

/// A detached agent that runs `rush-test-net ARGS` whenever a request file appears in
/// `dir`, so one running agent (one resolver, its own lookups) answers every question.
struct Asker {
    dir: PathBuf,
}

impl Asker {
    fn spawn(d: &Daemon, name: &str, net: &str) -> Asker {
        let dir = tempfile::Builder::new().prefix("rush-dns-").tempdir_in("/tmp").unwrap().keep();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let script = format!(
            "cd {dir}; while true; do if mv req cur 2>/dev/null; then {net_bin} $(cat cur) > out.new 2>&1; mv out.new out; fi; sleep 0.05; done",
            dir = dir.display(),
            net_bin = bin("rush-test-net").display()
        );
        let out = d.rush(&["agent", "spawn", name, "--detach", "--net", net, "--", "/bin/sh", "-c", &script]);
        assert!(out.status.success(), "spawn {name}: {}", describe(&out));
        Asker { dir }
    }

    fn ask(&self, args: &str) -> String {
        let out = self.dir.join("out");
        let _ = std::fs::remove_file(&out);
        let tmp = self.dir.join("req.new");
        std::fs::File::create(&tmp).unwrap().write_all(args.as_bytes()).unwrap();
        std::fs::rename(&tmp, self.dir.join("req")).unwrap();
        let asked = std::time::Instant::now();
        assert!(
            wait_until(Duration::from_secs(60), || out.exists()),
            "the agent did not answer {args:?}; ps:\n{}\nls:\n{}",
            String::from_utf8_lossy(&Command::new("sh").arg("-c").arg("ps -eo pid,stat,wchan:30,args | grep -E 'rush-test-net|sleep 0.05|/bin/sh -c cd' | grep -v grep").output().unwrap().stdout),
            String::from_utf8_lossy(&Command::new("ls").arg("-la").arg(&self.dir).output().unwrap().stdout)
        );
        let text = std::fs::read_to_string(&out).unwrap();
        eprintln!("asked {args:?}: {text:?} in {:?}", asked.elapsed());
        text
    }
}

impl Drop for Asker {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn config(dns: &Dnsmasq) -> String {
    format!("[dns]\nupstream = \"127.0.0.1:{}\"\ngrace_secs = 1\n", dns.port)
}

fn agent_info(d: &Daemon, name: &str) -> serde_json::Value {
    d.rush_json(&["agent", "status", name])
}

#[test]
fn names_in_allow_lists_follow_their_dns_answers() {
    if !require(is_root(), "root") || !require(Path::new("/usr/sbin/dnsmasq").exists(), "dnsmasq") {
        return;
    }
    let dns = Dnsmasq::start(
        "198.18.0.2 api.rush.test\n198.18.0.4 other.rush.test\n198.18.0.5 a.wild.rush.test\n198.18.0.6 wild.rush.test\n",
    );
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _addrs = LoAddrs::add(&["198.18.0.2", "198.18.0.3", "198.18.0.4", "198.18.0.5", "198.18.0.6"]);
    let listeners =
        Listeners::on(&["198.18.0.2", "198.18.0.3", "198.18.0.4", "198.18.0.5", "198.18.0.6"], port);
    let d = Daemon::start_with_config(&config(&dns));
    let doctor = d.doctor();
    let line = doctor["guarantees"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "net: host names follow their DNS answers")
        .cloned();
    let line = line.unwrap_or_else(|| panic!("no DNS line in doctor: {doctor}"));
    assert!(
        line["holds"] == true
            && line["detail"].as_str().unwrap().contains(&format!("127.0.0.1:{}", dns.port)),
        "{line}"
    );
    let agent = Asker::spawn(&d, "dns", &format!("api.rush.test:{port},*.wild.rush.test:{port}"));
    let info = agent_info(&d, "dns");
    assert!(info["enforcement"].as_array().unwrap().iter().any(|e| e == "net:dns-resolver"), "{info}");

    // The listed name: resolved by the agent's own C library, through its resolver.
    let out = agent.ask(&format!("tcp api.rush.test:{port}"));
    assert_eq!(out, "resolved 198.18.0.2\nok\n");
    assert_eq!(listeners.accepted("198.18.0.2"), 1);
    // A raw address no listed name returned, and a name off the list.
    assert_eq!(agent.ask(&format!("tcp 198.18.0.4:{port}")), "errno EPERM\n");
    let out = agent.ask(&format!("tcp other.rush.test:{port}"));
    assert!(out.starts_with("resolve-failed"), "{out}");
    assert_eq!(
        agent.ask(&format!("tcp 198.18.0.4:{port}")),
        "errno EPERM\n",
        "asking taught the kernel nothing"
    );
    // The wildcard: names below it, not the domain itself.
    assert_eq!(agent.ask(&format!("tcp a.wild.rush.test:{port}")), "resolved 198.18.0.5\nok\n");
    let out = agent.ask(&format!("tcp wild.rush.test:{port}"));
    assert!(out.starts_with("resolve-failed"), "{out}");
    assert_eq!(agent.ask(&format!("tcp 198.18.0.6:{port}")), "errno EPERM\n");
    assert_eq!(listeners.accepted("198.18.0.4") + listeners.accepted("198.18.0.6"), 0);

    // The name moves: the new address is reachable as soon as the agent's lookup sees it;
    // the old one stops once its TTL (2 s) and grace (1 s) have run out.
    dns.answer("198.18.0.3 api.rush.test\n");
    assert!(
        wait_until(Duration::from_secs(10), || agent.ask(&format!("tcp api.rush.test:{port}"))
            == "resolved 198.18.0.3\nok\n"),
        "the new address never became reachable"
    );
    assert!(listeners.accepted("198.18.0.3") >= 1);
    assert!(
        wait_until(Duration::from_secs(15), || agent.ask(&format!("tcp 198.18.0.2:{port}"))
            == "errno EPERM\n"),
        "the old address stayed allowed past its TTL"
    );

    // DNS rebinding: the listed name now points at this machine's loopback (or the cloud
    // metadata address); the answer reaches the agent, the address stays refused.
    dns.answer("127.0.0.1 api.rush.test\n169.254.169.254 meta.wild.rush.test\n");
    std::thread::sleep(Duration::from_secs(4));
    let out = agent.ask(&format!("tcp api.rush.test:{port}"));
    assert_eq!(out, "resolved 127.0.0.1\nerrno EPERM\n", "a DNS answer opened loopback");
    let out = agent.ask(&format!("tcp meta.wild.rush.test:{port}"));
    assert_eq!(out, "resolved 169.254.169.254\nerrno EPERM\n", "a DNS answer opened link-local");
    dns.answer("198.18.0.3 api.rush.test\n");

    // No way around the resolver: any server on port 53, over UDP or TCP, is the agent's
    // resolver (the reply seems to come from the server asked); the real DNS server on its
    // own port is not on the list.
    let out = agent.ask("dns udp 8.8.8.8:53 other.rush.test");
    assert_eq!(out, "from 8.8.8.8:53\nrcode 5\n", "a name off the list over another server");
    let out = agent.ask("dns udp 8.8.8.8:53 api.rush.test");
    assert_eq!(out, "from 8.8.8.8:53\nrcode 0\na 198.18.0.3\n");
    let out = agent.ask("dns tcp 9.9.9.9:53 other.rush.test");
    assert_eq!(out, "rcode 5\n", "DNS over TCP");
    let out = agent.ask(&format!("dns udp 127.0.0.1:{} other.rush.test", dns.port));
    assert_eq!(out, "errno EPERM\n", "the upstream server directly");

    // An agent without names keeps its DNS to its list (no resolver, nothing redirected).
    let out = d.rush(&[
        "agent",
        "spawn",
        "plain",
        "--net",
        "198.18.0.2:80",
        "--",
        &bin("rush-test-net").to_string_lossy(),
        "dns",
        "udp",
        "8.8.8.8:53",
        "api.rush.test",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "errno EPERM\n", "{}", describe(&out));
}

#[test]
fn a_name_that_resolves_nowhere_is_refused_at_spawn_and_wildcards_need_the_resolver() {
    if !require(is_root(), "root") || !require(Path::new("/usr/sbin/dnsmasq").exists(), "dnsmasq") {
        return;
    }
    let dns = Dnsmasq::start("198.18.0.2 api.rush.test\n");
    let d = Daemon::start_with_config(&config(&dns));
    let out = d.rush(&["agent", "spawn", "typo", "--net", "apii.rush.test:443", "--", "true"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("apii.rush.test") && err.contains("cannot resolve"), "{err}");
    // Names the DNS does not know but /etc/hosts does (localhost) are allowed as resolved.
    let out = d.rush(&[
        "agent",
        "spawn",
        "local",
        "--net",
        "localhost:9",
        "--",
        &bin("rush-test-net").to_string_lossy(),
        "tcp",
        "127.0.0.1:9",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("errno ECONNREFUSED"),
        "localhost:9 allowed as /etc/hosts has it: {}",
        describe(&out)
    );
}
