//! `rush-bench approvals`: the human attention queue, side by side in one run against a
//! plain `agent_status` round trip on the same daemon (one client connection, alternated:
//! each sample of a row is paired with a baseline sample taken just before it).
//!
//! One daemon with `batch_window = "0s"` routes `medium` to `cli`, `high` to a webhook (an
//! in-process HTTP/1.1 server, hyper, on loopback) and `low` to an email address (the
//! aiosmtpd sink of kernel-tests, plain SMTP on loopback; the row is skipped, saying why,
//! without the SDK venv's aiosmtpd). The operator asks on behalf of a sleeping agent. Rows:
//! - request → delivered: `cli`, the `request_approval` reply (stored: `rush approvals`
//!   lists it); `webhook`, until the receiver has the whole POST; `email`, until the sink
//!   has the message in its maildir (renamed into place after an fsync);
//! - approval → unblocked: a second connection blocked in `wait_approval` (a custom
//!   request), the operator's `decide`: from the decide sent to the waiter's reply; for a
//!   capability request of a file-confined agent, also until `list_capabilities` shows the
//!   token (on a Landlock host that includes freezing the agent and restarting it under
//!   its widened rules: a running process's Landlock rules cannot change).
//!
//! And the batching table: a synthetic trace of 1,000 requests from 20 agents over 30 min
//! (seeded, so every run replays the same trace) through the queue's own grouping
//! (`batching::replay`) at windows of 0 s, 30 s and 5 min, similarity 0.8 and off.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use kernel_tests::channels::{SmtpSink, smtp_python};
use kernel_tests::{Daemon, describe};
use rush_agentd::services::approvals::batching;
use rush_proto::approval::{
    ActionClass, Approval, ApprovalDetail, ApprovalOrigin, ApprovalRequest, ApprovalState, ApprovalTarget,
    Channel, DecideRequest, OnTimeout, Priority,
};
use rush_proto::client::Client;
use rush_proto::{Budget, Ops, RevokeTarget};

/// Samples per row.
const N: usize = 200;
/// How long the operator lets a waiter's `wait_approval` reach the daemon before deciding.
const WAITER_SETTLE: Duration = Duration::from_millis(20);
const EMAIL_TO: &str = "operator@example.org";

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// One row: its samples and the baseline samples taken alongside them.
struct Row {
    what: &'static str,
    samples: Vec<Duration>,
    baseline: Vec<Duration>,
}

impl Row {
    fn new(what: &'static str) -> Row {
        Row { what, samples: Vec::with_capacity(N), baseline: Vec::with_capacity(N) }
    }

    fn print(&mut self) {
        if self.samples.is_empty() {
            return;
        }
        let (p50, p90) = (percentile(&mut self.samples, 0.5), percentile(&mut self.samples, 0.9));
        let base = percentile(&mut self.baseline, 0.5);
        println!(
            "| {} | {} | {} | {} | {} | {:.1}x |",
            self.what,
            self.samples.len(),
            ms(p50),
            ms(p90),
            ms(base),
            p50.as_secs_f64() / base.as_secs_f64()
        );
    }
}

/// A webhook receiver on loopback (hyper, HTTP/1.1, keep-alive): answers every request
/// `200 ok` and sends the instant it had the whole body, and the body, on the channel.
fn webhook_receiver() -> (String, mpsc::Receiver<(Instant, String)>) {
    let (tx, rx) = mpsc::channel();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the webhook receiver");
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let _ = tcp.set_nodelay(true);
                let tx = tx.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        async move {
                            let body =
                                req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let _ = tx.send((Instant::now(), String::from_utf8_lossy(&body).into_owned()));
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
    });
    (format!("http://{addr}/hook"), rx)
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn config(hook_url: &str, smtp: Option<(u16, u16, &Path)>) -> String {
    let mut c = String::from(
        "[approvals]\nbatch_window = \"0s\"\nsimilarity = 2.0\naging = \"0s\"\n\
         [approvals.routes]\nmedium = \"cli\"\nhigh = \"webhook:bench\"\n",
    );
    if smtp.is_some() {
        c.push_str(&format!("low = \"email:{EMAIL_TO}\"\n"));
    }
    c.push_str(&format!("[approvals.webhooks.bench]\nurl = \"{hook_url}\"\nattempts = 1\n"));
    if let Some((smtp_port, listener_port, secret)) = smtp {
        c.push_str(&format!(
            "[approvals.smtp]\nhost = \"127.0.0.1\"\nport = {smtp_port}\ntls = \"none\"\nfrom = \"rush@localhost\"\n\
             [approvals.listener]\naddress = \"127.0.0.1:{listener_port}\"\nsecret_file = \"{}\"\n",
            secret.display()
        ));
    }
    c
}

fn ask(agent: &str, action: String, detail: ApprovalDetail, priority: Priority) -> ApprovalRequest {
    ApprovalRequest {
        agent: Some(agent.to_owned()),
        action,
        detail,
        priority: Some(priority),
        timeout_secs: Some(600),
        on_timeout: None,
        class: None,
        freeze: false,
    }
}

fn custom() -> ApprovalDetail {
    ApprovalDetail::Custom { text: String::new() }
}

fn approve(id: u64) -> DecideRequest {
    DecideRequest {
        target: ApprovalTarget::Id(id),
        approve: true,
        exclude: vec![],
        ttl_secs: None,
        reason: None,
        remember: None,
        remember_scope: None,
    }
}

/// A second connection that waits for the requests it is given: it says when it is about
/// to call `wait_approval`, then sends the instant the reply came, and the state.
struct Waiter {
    ids: mpsc::Sender<(String, u64)>,
    calling: mpsc::Receiver<()>,
    answers: mpsc::Receiver<(Instant, ApprovalState)>,
}

impl Waiter {
    fn start(socket: &Path) -> Waiter {
        let mut c = Client::connect(socket).expect("connect the waiter");
        let (ids, ids_rx) = mpsc::channel::<(String, u64)>();
        let (calling_tx, calling) = mpsc::channel();
        let (answers_tx, answers) = mpsc::channel();
        std::thread::spawn(move || {
            for (agent, id) in ids_rx {
                let _ = calling_tx.send(());
                let a = c.wait_approval(Some(&agent), id, Some(60)).expect("wait_approval");
                let _ = answers_tx.send((Instant::now(), a.state));
            }
        });
        Waiter { ids, calling, answers }
    }

    /// Decides `id` once the waiter waits for it: decide sent → the waiter answered, and
    /// → the decide's own reply; and the instant the decide was sent.
    fn unblock(&self, c: &mut Client, agent: &str, id: u64) -> (Duration, Duration, Instant) {
        self.ids.send((agent.to_owned(), id)).unwrap();
        self.calling.recv().unwrap();
        std::thread::sleep(WAITER_SETTLE);
        let sent = Instant::now();
        let decided = c.decide(approve(id)).expect("decide");
        let replied = sent.elapsed();
        assert_eq!(decided.len(), 1);
        let (at, state) =
            self.answers.recv_timeout(Duration::from_secs(30)).expect("the waiter was not answered");
        assert_eq!(state, ApprovalState::Approved, "request {id}");
        (at.duration_since(sent), replied, sent)
    }
}

/// Why the capability rows cannot run here (no file-confined agent), if so.
fn confined_agent(d: &Daemon, dir: &Path) -> Result<(), String> {
    let allow = format!("{}:read", dir.display());
    let out = d.rush(&["agent", "spawn", "confined", "--detach", "--allow", &allow, "--", "sleep", "3600"]);
    if out.status.success() { Ok(()) } else { Err(describe(&out)) }
}

pub fn run() {
    let uname = std::process::Command::new("uname").arg("-r").output().expect("uname");
    println!(
        "kernel {}, {} cores; {N} samples per row, each paired with an agent_status round trip\n",
        String::from_utf8_lossy(&uname.stdout).trim(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let (hook_url, hooks) = webhook_receiver();
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = dir.path().join("listener.secret");
    std::fs::write(&secret, "bench-listener-secret\n").unwrap();
    let sink = match smtp_python() {
        Some(_) => Some(SmtpSink::start(false, None)),
        None => {
            println!(
                "email row skipped: no python with aiosmtpd (the SDK venv: `cargo xtask setup` installs it)\n"
            );
            None
        }
    };
    let smtp = sink.as_ref().map(|s| (s.port, free_tcp_port(), secret.as_path()));
    let d = Daemon::start_with_config(&config(&hook_url, smtp));
    let out = d.rush(&["agent", "spawn", "asker", "--detach", "--", "sleep", "3600"]);
    assert!(out.status.success(), "{}", describe(&out));
    let work = dir.path().join("work");
    let granted = work.join("migrations");
    std::fs::create_dir_all(&granted).unwrap();
    let confined = confined_agent(&d, &work);
    if let Err(why) = &confined {
        println!("capability rows skipped: no file-confined agent here: {why}\n");
    }
    let mut c = Client::connect(&d.socket).expect("connect");
    let waiter = Waiter::start(&d.socket);
    let base = |c: &mut Client| {
        let t = Instant::now();
        c.agent_status(Some("asker")).expect("agent_status");
        t.elapsed()
    };

    let mut baseline = Row::new("baseline: `agent_status` round trip");
    let mut cli = Row::new("request → cli (the `request_approval` reply: stored, listed)");
    let mut webhook = Row::new("request → webhook (the receiver has the POST)");
    let mut email = Row::new("request → email (the message in the sink's maildir)");
    let mut unblock = Row::new("approve → waiter unblocked (custom request)");
    let mut decide = Row::new("approve: the operator's `decide` reply (custom request)");
    let mut cap_unblock = Row::new("approve → waiter unblocked (capability request)");
    let mut cap_listed = Row::new("approve → token in `list_capabilities` (capability request)");
    let ops: Ops = "write,create".parse().unwrap();
    let t_run = Instant::now();
    for i in 0..N {
        let b = base(&mut c);
        baseline.samples.push(b);
        baseline.baseline.push(b);

        // cli: the reply means the request is stored; check it is listed (not timed).
        cli.baseline.push(base(&mut c));
        let t = Instant::now();
        let a = c
            .request_approval(ask("asker", format!("bench cli {i}"), custom(), Priority::Medium))
            .expect("request");
        cli.samples.push(t.elapsed());
        assert_eq!(a.channel, Channel::Cli { blocking: false });
        let (listed, _) = c.list_approvals(None, false).expect("list");
        assert!(listed.iter().any(|l| l.id == a.id), "request {} not listed", a.id);
        c.cancel_approval(None, a.id).expect("cancel");

        // webhook: high priority, posted at once.
        while hooks.try_recv().is_ok() {}
        webhook.baseline.push(base(&mut c));
        let action = format!("bench webhook {i}");
        let t = Instant::now();
        let a = c.request_approval(ask("asker", action.clone(), custom(), Priority::High)).expect("request");
        let (at, body) = hooks.recv_timeout(Duration::from_secs(15)).expect("no webhook POST in 15 s");
        webhook.samples.push(at.duration_since(t));
        assert!(body.contains(&action), "the POST is not request {}'s: {body}", a.id);
        c.cancel_approval(None, a.id).expect("cancel");

        // email: low priority, a digest of one.
        if let Some(sink) = &sink {
            let next = sink.maildir.join(format!("{}.eml", i + 1));
            email.baseline.push(base(&mut c));
            let t = Instant::now();
            let a = c
                .request_approval(ask("asker", format!("bench email {i}"), custom(), Priority::Low))
                .expect("request");
            while !next.exists() {
                assert!(t.elapsed() < Duration::from_secs(30), "no email for request {} in 30 s", a.id);
                std::thread::sleep(Duration::from_micros(200));
            }
            email.samples.push(t.elapsed());
            c.cancel_approval(None, a.id).expect("cancel");
        }

        // approve → unblocked, custom.
        let a = c
            .request_approval(ask("asker", format!("bench unblock {i}"), custom(), Priority::Medium))
            .expect("request");
        unblock.baseline.push(base(&mut c));
        let (waited, replied, _) = waiter.unblock(&mut c, "asker", a.id);
        unblock.samples.push(waited);
        decide.samples.push(replied);
        decide.baseline.push(*unblock.baseline.last().unwrap());

        // approve → unblocked and granted, capability.
        if confined.is_ok() {
            let detail = ApprovalDetail::Capability { path: granted.clone(), ops };
            let a = c
                .request_approval(ask("confined", "write migrations/".into(), detail, Priority::Medium))
                .expect("request");
            cap_unblock.baseline.push(base(&mut c));
            let (waited, _, sent) = waiter.unblock(&mut c, "confined", a.id);
            cap_unblock.samples.push(waited);
            loop {
                let tokens = c.list_capabilities(Some("confined")).expect("capabilities");
                if tokens.iter().any(|t| t.path == granted && !t.expired) {
                    break;
                }
                assert!(sent.elapsed() < Duration::from_secs(30), "request {}'s token never listed", a.id);
            }
            cap_listed.samples.push(sent.elapsed());
            cap_listed.baseline.push(*cap_unblock.baseline.last().unwrap());
            c.revoke("confined", RevokeTarget::Path(granted.clone())).expect("revoke");
        }
        if (i + 1) % 50 == 0 {
            eprintln!("  {} of {N} ({:.0} s)", i + 1, t_run.elapsed().as_secs_f64());
        }
    }
    println!("| what | n | p50 | p90 | agent_status p50 (paired) | ratio (p50) |");
    println!("|---|---|---|---|---|---|");
    for row in [
        &mut baseline,
        &mut cli,
        &mut webhook,
        &mut email,
        &mut decide,
        &mut unblock,
        &mut cap_unblock,
        &mut cap_listed,
    ] {
        row.print();
    }
    drop(waiter);
    drop(d);
    batching_table();
}

/// splitmix64: a small seeded generator, so the trace is the same every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }

    /// An exponential gap of this mean.
    fn gap(&mut self, mean_ms: f64) -> u64 {
        (-(1.0 - self.unit()).ln() * mean_ms) as u64
    }
}

const AGENTS: usize = 20;
const PER_AGENT: usize = 50;
const TRACE_SPAN_MS: u64 = 30 * 60 * 1000;

/// What one episode of an agent's work asks about: a few requests on one topic, in quick
/// succession, then a pause while it works.
enum Topic {
    Files { dir: &'static str, ops: &'static str },
    Command(usize),
    Budget(usize),
    Custom(usize),
}

const DIRS: [&str; 6] = [
    "/w/repo/migrations",
    "/w/repo/src/api",
    "/w/repo/src/db",
    "/w/repo/tests/fixtures",
    "/w/repo/docs",
    "/w/repo/.github/workflows",
];
const WORDS: [&str; 12] = [
    "users", "orders", "billing", "auth", "search", "cache", "events", "audit", "invoices", "sessions",
    "tags", "ledger",
];
const BRANCHES: [&str; 8] = [
    "fix-login",
    "feat-search",
    "fix-billing",
    "chore-deps",
    "feat-export",
    "fix-cache",
    "feat-audit",
    "docs-api",
];

fn topic(rng: &mut Rng) -> Topic {
    let r = rng.unit();
    if r < 0.40 {
        // The migrations and the API are where most of the work is.
        let dir = *rng.pick(&[DIRS[0], DIRS[0], DIRS[1], DIRS[1], DIRS[2], DIRS[3], DIRS[4], DIRS[5]]);
        let ops = *rng.pick(&["write,create", "write,create", "write,create", "write", "write", "read"]);
        Topic::Files { dir, ops }
    } else if r < 0.65 {
        Topic::Command(rng.below(8))
    } else if r < 0.75 {
        Topic::Budget(rng.below(4))
    } else {
        Topic::Custom(rng.below(6))
    }
}

fn words(s: &str) -> Vec<String> {
    s.split(' ').map(str::to_owned).collect()
}

/// One request of `topic`: (action, detail).
fn request_of(topic: &Topic, rng: &mut Rng) -> (String, ApprovalDetail) {
    match *topic {
        Topic::Files { dir, ops } => {
            let base = dir.rsplit('/').next().unwrap();
            let word = rng.pick(&WORDS);
            let file = match base {
                "migrations" => format!("{:03}_{word}.sql", 100 + rng.below(60)),
                "workflows" => format!("{word}.yml"),
                "docs" => format!("{word}.md"),
                "fixtures" => format!("{word}.json"),
                _ => format!("{word}.rs"),
            };
            let verb = if ops == "read" { "read" } else { "write" };
            let action = match rng.below(3) {
                0 => format!("{verb} {base}/"),
                1 => format!("{verb} {base}/{file}"),
                _ => format!("{verb} {file} in {base}"),
            };
            let detail =
                ApprovalDetail::Capability { path: PathBuf::from(dir).join(file), ops: ops.parse().unwrap() };
            (action, detail)
        }
        Topic::Command(which) => {
            let branch = rng.pick(&BRANCHES);
            let argv = match which {
                0 => format!("git push origin {branch}"),
                1 => format!("git push --force-with-lease origin {branch}"),
                2 => format!("npm install {}", rng.pick(&["left-pad", "zod", "express", "vitest"])),
                3 => "cargo publish --dry-run".to_owned(),
                4 => format!("make deploy-{}", rng.pick(&["staging", "staging", "prod"])),
                5 => format!("docker build -t app:{branch} ."),
                6 => format!("rm -rf {}", rng.pick(&["target", "node_modules", "dist"])),
                _ => format!("psql -c \"delete from {} where stale\"", rng.pick(&WORDS)),
            };
            (format!("run {argv}"), ApprovalDetail::Command { argv: words(&argv), cwd: None })
        }
        Topic::Budget(which) => {
            let n = 1 + rng.below(4) as u64;
            let (action, raise) = match which {
                0 => (
                    "the test suite needs more CPU",
                    Budget { cpu_ms: Some(n * 600_000), ..Budget::default() },
                ),
                1 => {
                    ("the build needs more memory", Budget { mem_bytes: Some(n << 30), ..Budget::default() })
                }
                2 => ("downloading the dataset", Budget { net_bytes: Some(n << 30), ..Budget::default() }),
                _ => (
                    "more model calls for the refactor",
                    Budget {
                        api_calls: Some(n * 100),
                        cost_micro_usd: Some(n * 2_000_000),
                        ..Budget::default()
                    },
                ),
            };
            (action.to_owned(), ApprovalDetail::Budget { raise })
        }
        Topic::Custom(which) => {
            let branch = rng.pick(&BRANCHES);
            let svc = rng.pick(&["api", "web", "worker"]);
            // Near-duplicates: the same ask, worded a little differently.
            let action = match (which, rng.below(3)) {
                (0, 0) => format!("deploy the {svc} service to staging"),
                (0, 1) => format!("deploy the {svc} service to staging now"),
                (0, _) => format!("please deploy the {svc} service to staging"),
                (1, 0) => format!("open a pull request for {branch}"),
                (1, 1) => format!("open a pull request for {branch} against main"),
                (1, _) => format!("may I open a pull request for {branch}"),
                (2, 0) => format!("merge {branch} into main"),
                (2, 1) => format!("merge branch {branch} into main"),
                (2, _) => format!("merge {branch} into main, CI is green"),
                (3, 0) => "rotate the staging database password".to_owned(),
                (3, _) => "rotate the staging database password now".to_owned(),
                (4, 0) => format!("delete the stale branch {branch}"),
                (4, _) => format!("may I delete the stale branch {branch}"),
                (_, 0) => {
                    format!("upgrade {} to the latest version", rng.pick(&["tokio", "react", "django"]))
                }
                (_, _) => {
                    format!("bump {} to the latest minor version", rng.pick(&["tokio", "react", "django"]))
                }
            };
            (action, custom())
        }
    }
}

/// 1,000 requests from 20 agents over 30 minutes, in arrival order: each agent works in
/// episodes (1 to 5 requests on one topic, 1-20 s apart, then ~90 s of work), starting in
/// the first minute; the times are then scaled to span 30 minutes.
fn trace(seed: u64) -> Vec<Approval> {
    let mut rng = Rng(seed);
    let mut arrivals: Vec<(u64, usize, String, ApprovalDetail)> = Vec::new();
    for agent in 0..AGENTS {
        let mut t = rng.below(60_000) as u64;
        let mut made = 0;
        while made < PER_AGENT {
            let topic = topic(&mut rng);
            let k = (1 + rng.below(5)).min(PER_AGENT - made);
            for _ in 0..k {
                let (action, detail) = request_of(&topic, &mut rng);
                arrivals.push((t, agent, action, detail));
                t += 1_000 + rng.gap(6_000.0).min(19_000);
            }
            made += k;
            t += rng.gap(90_000.0);
        }
    }
    let last = arrivals.iter().map(|a| a.0).max().unwrap_or(1).max(1);
    arrivals.sort_by_key(|a| a.0);
    arrivals
        .into_iter()
        .enumerate()
        .map(|(i, (t, agent, action, detail))| {
            let created = t * TRACE_SPAN_MS / last;
            Approval {
                id: i as u64 + 1,
                agent: format!("agent{agent}"),
                session: None,
                origin: ApprovalOrigin::Agent,
                batch_key: batching::batch_key(&detail, &action),
                class: ActionClass::of_kind(detail.kind()),
                action,
                detail,
                priority: Priority::Medium,
                effective_priority: Priority::Medium,
                raised_because: None,
                risk_score: None,
                tags: vec![],
                channel: Channel::Cli { blocking: false },
                created_unix_ms: created,
                deadline_unix_ms: created + 3_600_000,
                on_timeout: OnTimeout::Reject,
                escalated: false,
                freeze: false,
                delivered_unix_ms: None,
                state: ApprovalState::Pending,
                decision: None,
            }
        })
        .collect()
}

fn batching_table() {
    let trace = trace(19);
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for a in &trace {
        *kinds.entry(a.kind().to_string()).or_default() += 1;
    }
    let keys: std::collections::BTreeSet<&str> = trace.iter().map(|a| a.batch_key.as_str()).collect();
    let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
    println!(
        "\nbatching: a synthetic trace of {} requests from {AGENTS} agents over 30 min (seed 19): {}; {} distinct batch keys\n",
        trace.len(),
        kinds.join(", "),
        keys.len()
    );
    println!("| batch window | similarity | requests | decisions | decisions saved |");
    println!("|---|---|---|---|---|");
    for (window, label) in [(0, "0 s"), (30_000, "30 s"), (300_000, "5 min")] {
        for (similarity, s) in [(2.0, "off (key only)"), (0.8, "0.8")] {
            let r = batching::replay(&trace, window, similarity);
            let saved = r.requests - r.decisions;
            println!(
                "| {label} | {s} | {} | {} | {saved} ({:.0}%) |",
                r.requests,
                r.decisions,
                saved as f64 * 100.0 / r.requests as f64
            );
        }
    }
}
