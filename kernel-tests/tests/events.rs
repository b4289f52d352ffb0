//! The daemon's event stream through the real daemon, its socket and the CLI: subscribers
//! get what their filter names, in order; a slow one is dropped with a marker and a stuck
//! one is cut off, while the others and the daemon go on unslowed; agents may not watch.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use kernel_tests::*;
use rush_proto::{
    Event, PROTOCOL_VERSION, Reply, ReplyEnvelope, Request, RequestEnvelope, Response, SubscribeRequest,
};

fn host_ready() -> bool {
    require(is_root(), "root (the daemon creates cgroups and loads BPF programs)")
}

/// A subscriber on its own connection, read (or not) at the test's pace.
struct Subscriber {
    lines: BufReader<UnixStream>,
}

impl Subscriber {
    /// Subscribes and waits for `Subscribed`; Err: the daemon's refusal.
    fn start(d: &Daemon, filter: SubscribeRequest) -> Result<Subscriber, String> {
        let mut stream = UnixStream::connect(&d.socket).expect("connect");
        let env = RequestEnvelope { version: PROTOCOL_VERSION, id: 1, request: Request::Subscribe(filter) };
        let mut line = serde_json::to_vec(&env).unwrap();
        line.push(b'\n');
        stream.write_all(&line).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut s = Subscriber { lines: BufReader::new(stream) };
        match s.next() {
            Some(Ok(Response::Subscribed)) => Ok(s),
            Some(Err(why)) => Err(why),
            other => panic!("expected subscribed, got {other:?}"),
        }
    }

    /// The next reply; None at the end of the stream (the daemon closed it).
    fn next(&mut self) -> Option<Result<Response, String>> {
        let mut line = String::new();
        match self.lines.read_line(&mut line) {
            Ok(0) => None,
            // A line cut off by the daemon dropping this subscriber mid-write: the end.
            Ok(_) if !line.ends_with('\n') => None,
            Ok(_) => {
                let env: ReplyEnvelope =
                    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {:.200}", line));
                Some(match env.reply {
                    Reply::Ok(r) => Ok(r),
                    Reply::Err(e) => Err(e.message),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
            Err(e) => panic!("reading the event stream: {e}"),
        }
    }

    fn next_event(&mut self) -> Option<Event> {
        match self.next()? {
            Ok(Response::Event { event }) => Some(event),
            other => panic!("expected an event, got {:.300}", format!("{other:?}")),
        }
    }
}

/// (kind, agent) of an audit event.
fn kind_agent(e: &Event) -> (String, String) {
    (e.kind().to_owned(), e.agent().unwrap_or("-").to_owned())
}

fn spawn_true(d: &Daemon, name: &str, arg: &str) {
    let out = d.rush(&["agent", "spawn", name, "--", "/bin/true", arg]);
    assert!(out.status.success(), "spawn {name}: {}", describe(&out));
}

#[test]
fn subscribers_get_what_their_filter_names_in_order_and_the_cli_follows() {
    if !host_ready() {
        return;
    }
    let d = Daemon::start();
    // The CLI first: its lines arrive on a channel; warm-up spawns until it prints one (it
    // has then subscribed), and what the warm-up made is drained.
    let mut cli = d
        .rush_cmd(&["--json", "events", "--follow", "--agent", "b"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, cli_lines) = std::sync::mpsc::channel::<String>();
    let stdout = cli.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let warm = Instant::now();
    loop {
        assert!(warm.elapsed() < Duration::from_secs(20), "the CLI never printed an event");
        spawn_true(&d, "b", "warm-up");
        if cli_lines.recv_timeout(Duration::from_secs(1)).is_ok() {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    while cli_lines.try_recv().is_ok() {}

    let mut all = Subscriber::start(&d, SubscribeRequest::default()).unwrap();
    let mut only_a = Subscriber::start(
        &d,
        SubscribeRequest { kinds: vec!["exit".into()], agent: Some("a".into()), session: None },
    )
    .unwrap();

    spawn_true(&d, "a", "1");
    spawn_true(&d, "b", "2");
    let got: Vec<(String, String)> = (0..4).map(|_| kind_agent(&all.next_event().unwrap())).collect();
    let want = [("spawn", "a"), ("exit", "a"), ("spawn", "b"), ("exit", "b")];
    assert_eq!(got, want.map(|(k, a)| (k.to_owned(), a.to_owned())), "every event, in order");
    let first = only_a.next_event().unwrap();
    assert_eq!(kind_agent(&first), ("exit".into(), "a".into()));
    let Event::Audit(first) = first else { unreachable!() };
    // Nothing else reaches the filtered subscriber: the next thing it sees is a's next exit.
    spawn_true(&d, "b", "3");
    spawn_true(&d, "a", "4");
    let next = only_a.next_event().unwrap();
    assert_eq!(kind_agent(&next), ("exit".into(), "a".into()));
    let Event::Audit(rec) = &next else { unreachable!() };
    assert!(rec.seq > first.seq + 4, "a's second exit, after b's spawn, exit and a's spawn: {rec:?}");

    // The CLI printed b's events as JSON lines, and only b's.
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let line = cli_lines.recv_timeout(Duration::from_secs(10)).unwrap_or_else(|_| panic!("{seen:?}"));
        let e: Event = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {:.200}", line));
        seen.push(kind_agent(&e));
    }
    cli.kill().unwrap();
    let _ = cli.wait();
    assert!(seen.iter().all(|(_, a)| a == "b"), "{seen:?}");
    assert_eq!(seen.iter().filter(|(k, _)| k == "spawn").count(), 2, "{seen:?}");

    // An unknown kind is refused by name, on the socket and by the CLI.
    let refused =
        Subscriber::start(&d, SubscribeRequest { kinds: vec!["spwn".into()], ..Default::default() });
    let why = refused.err().expect("an unknown kind is refused");
    assert!(why.contains("spwn") && why.contains("file_deny"), "{why}");
    let bad = d.rush(&["events", "--follow", "--kinds", "spwn"]);
    assert_eq!(bad.status.code(), Some(2), "a usage error: {}", describe(&bad));

    // Without --follow: the newest events from the trail.
    let past = d.rush_json(&["events", "--agent", "a", "--limit", "2"]);
    let kinds: Vec<&str> =
        past.as_array().unwrap().iter().map(|e| e["event"]["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["spawn", "exit"], "{past}");
}

#[test]
fn agents_may_not_watch_the_event_stream() {
    if !host_ready() {
        return;
    }
    let d = Daemon::start();
    let rush = bin("rush").display().to_string();
    let socket = d.socket.display().to_string();
    let out = d.rush(&["agent", "spawn", "watcher", "--", &rush, "--socket", &socket, "events", "--follow"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stderr) + String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("may not subscribe"), "{text}");
}

#[test]
fn a_slow_subscriber_is_dropped_with_a_marker_a_stuck_one_cut_off_and_nobody_else_waits() {
    if !host_ready() {
        return;
    }
    const BACKLOG: usize = 16;
    const SPAWNS: usize = 20;
    let d = Daemon::start_with_config(&format!("[events]\nbacklog = {BACKLOG}\n"));
    // Events of 64 KiB each (the spawn's argv is in its audit record): a few fill a socket.
    let big = "x".repeat(64 * 1024);

    // The fast subscriber reads all the time, on its own thread.
    let mut fast = Subscriber::start(&d, SubscribeRequest::default()).unwrap();
    let fast_reader = std::thread::spawn(move || {
        let mut seqs = Vec::new();
        while seqs.len() < SPAWNS * 2 {
            match fast.next_event() {
                Some(Event::Audit(r)) => seqs.push(r.seq),
                other => panic!("the fast subscriber got {other:?} after {} events", seqs.len()),
            }
        }
        seqs
    });
    // The stuck subscriber never reads.
    let mut stuck = Subscriber::start(&d, SubscribeRequest::default()).unwrap();
    // The slow one is the CLI with its stdout not read: the pipe fills, the CLI stops
    // reading its socket, the socket fills, the daemon's side falls behind the bus.
    let mut slow =
        d.rush_cmd(&["events", "--follow"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));

    let started = Instant::now();
    let mut list_ms = Vec::new();
    for i in 0..SPAWNS {
        spawn_true(&d, &format!("s{i}"), &big);
        let t = Instant::now();
        let out = d.rush(&["agent", "list"]);
        assert!(out.status.success(), "{}", describe(&out));
        list_ms.push(t.elapsed().as_millis());
    }
    let generating = started.elapsed();
    assert!(generating < Duration::from_secs(4), "spawns took {generating:?}: the test needs < 4 s");
    assert!(list_ms.iter().all(|&ms| ms < 2000), "the daemon kept answering: {list_ms:?} ms");

    // The fast subscriber got every event, in order, with no gap.
    let seqs = fast_reader.join().unwrap();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");

    // The slow one, read now: some events, then the marker, then the CLI says so and fails.
    let mut text = String::new();
    slow.stdout.take().unwrap().read_to_string(&mut text).unwrap();
    let mut err = String::new();
    slow.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let status = slow.wait().unwrap();
    let last = text.lines().last().unwrap_or("");
    assert!(last.contains("events missed"), "last line: {:.200}", last);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("fell") && err.contains("behind"), "{err}");

    // The stuck one was cut off: what fit in its socket, then the end of the stream.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = 0;
    loop {
        assert!(Instant::now() < deadline, "the stuck subscriber was never dropped");
        match stuck.next() {
            Some(Ok(Response::Event { event: Event::Audit(_) })) => got += 1,
            Some(Ok(Response::Event { event: Event::Lagged { .. } })) => {}
            None => break,
            other => panic!("stuck subscriber: {:.300}", format!("{other:?}")),
        }
    }
    eprintln!("stuck subscriber: {got} events, then the end, {:?} after the spawns", started.elapsed());
    assert!(got < SPAWNS * 2, "it missed events ({got} of {})", SPAWNS * 2);
    assert!(d.log_text().contains("event subscriber"), "the daemon logged the drop");

    // A subscriber that stops reading while the bus is still within its backlog: its
    // socket fills (events of ~480 KiB), and one event waiting 5 s for it cuts it off.
    let mut stopped = Subscriber::start(&d, SubscribeRequest::default()).unwrap();
    let huge: Vec<String> = (0..4).map(|i| format!("{i}{}", "y".repeat(120 * 1024))).collect();
    let cut_spawns = 6;
    assert!(cut_spawns * 2 < BACKLOG);
    for i in 0..cut_spawns {
        let mut args =
            vec!["agent".to_string(), "spawn".into(), format!("h{i}"), "--".into(), "/bin/true".into()];
        args.extend(huge.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = d.rush(&args);
        assert!(out.status.success(), "{}", describe(&out));
    }
    std::thread::sleep(Duration::from_secs(7));
    let (mut events, mut lagged) = (0, false);
    while let Some(reply) = stopped.next() {
        match reply {
            Ok(Response::Event { event: Event::Audit(_) }) => events += 1,
            Ok(Response::Event { event: Event::Lagged { .. } }) => lagged = true,
            other => panic!("stopped subscriber: {:.300}", format!("{other:?}")),
        }
    }
    eprintln!("stopped subscriber: {events} of {} events, then the end", cut_spawns * 2);
    assert!(!lagged && events < cut_spawns * 2, "cut off by the send timeout, not by lag");
}
