//! The model fed a fake event stream, and the layout drawn at fixed sizes (snapshots of
//! the screen's text in `snapshots/`; `cargo insta review` after a deliberate change).

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::style::Color;
use rush_proto::approval::Approval;
use rush_proto::audit::AuditRecord;
use rush_proto::events::Event;
use rush_proto::{AgentInfo, AgentState};
use serde_json::json;

use super::model::{Model, Pane, Screen, SortKey, state_label};
use super::view;

const NOW: u64 = 1_795_745_771_000;

fn agent(name: &str, extra: serde_json::Value) -> AgentInfo {
    let mut v = json!({
        "name": name, "cgroup_id": 7, "cgroup_path": format!("/sys/fs/cgroup/rush/agents/{name}"),
        "pid": 4242, "uid": 1000, "command": ["claude", "-p", "fix it"], "net": {"mode": "deny"},
        "state": "running", "processes": 3, "started_unix_ms": NOW - 192_000,
        "enforcement": [], "detached": true, "trust": "medium",
        "usage": [
            {"resource": "cpu", "unit": "millis", "used": 12_000, "limit": 60_000, "at_limit": "frozen"},
            {"resource": "mem", "unit": "bytes", "used": 52_428_800, "limit": 536_870_912, "at_limit": "oom"},
            {"resource": "net", "unit": "bytes", "used": 0, "limit": null, "at_limit": "-"}
        ]
    });
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        for (k, val) in e {
            o.insert(k.clone(), val.clone());
        }
    }
    serde_json::from_value(v).expect("a test agent")
}

fn record(seq: u64, agent: &str, at: u64, event: serde_json::Value) -> Event {
    let r: AuditRecord =
        serde_json::from_value(json!({"seq": seq, "time_unix_ms": at, "agent": agent, "event": event}))
            .unwrap();
    Event::Audit(Box::new(r))
}

fn file_deny(seq: u64, agent: &str, at: u64, path: &str) -> Event {
    record(
        seq,
        agent,
        at,
        json!({"kind": "file_deny", "pid": 9, "uid": 1000, "comm": "cat", "hook": "file_open", "op": "read", "path": path}),
    )
}

fn approval(id: u64, agent: &str) -> Approval {
    serde_json::from_value(json!({
        "id": id, "agent": agent, "origin": "agent", "action": "rm -rf build/",
        "detail": {"kind": "command", "argv": ["rm", "-rf", "build/"], "cwd": "/src"},
        "class": "destructive", "priority": "high", "effective_priority": "high",
        "batch_key": "rm build", "channel": "cli", "created_unix_ms": NOW - 5_000,
        "deadline_unix_ms": NOW + 295_000, "on_timeout": "reject", "freeze": true, "state": "pending"
    }))
    .expect("a test approval")
}

/// Four agents in four states, a denial, an approval, a terminal with colours.
fn fixture() -> Model {
    let mut m = Model::new(true, NOW);
    m.set_agents(
        vec![
            agent("coder", json!({"tty": true, "session": "feature-x"})),
            agent(
                "builder",
                json!({"paused": "budget:cpu", "usage": [
                    {"resource": "cpu", "unit": "millis", "used": 61_000, "limit": 60_000, "at_limit": "frozen", "exceeded": true}
                ]}),
            ),
            agent("asker", json!({"paused": "approval"})),
            agent("old", json!({"state": "exited", "exit": {"code": 0, "signal": null}, "processes": 0})),
        ],
        NOW - 1_000,
    );
    // A second sample a second later: coder used 300 ms of CPU meanwhile.
    let mut later = m.rows.iter().map(|r| r.info.clone()).collect::<Vec<_>>();
    for a in &mut later {
        if a.name == "coder" {
            a.usage[0].used += 300;
        }
    }
    m.set_agents(later, NOW);
    m.set_approvals(vec![approval(12, "asker")]);
    m.on_event(file_deny(1, "coder", NOW - 2_000, "/etc/shadow"));
    m.on_event(record(
        2,
        "coder",
        NOW - 1_500,
        json!({"kind": "net_deny", "pid": 9, "uid": 1000, "comm": "curl", "hook": "connect4", "destination": "93.184.216.34:443", "protocol": "tcp"}),
    ));
    m.selected = Some("coder".into());
    let mut screen = Screen::new("coder", false, 24, 80);
    screen.feed(b"$ cargo test\r\n\x1b[32mtest result: ok\x1b[0m. 12 passed\r\n$ ");
    m.screen = Some(screen);
    m
}

fn draw(m: &mut Model, cols: u16, rows: u16) -> Terminal<TestBackend> {
    let mut t = Terminal::new(TestBackend::new(cols, rows)).unwrap();
    t.draw(|f| view::draw(f, m)).unwrap();
    t
}

fn text(t: &Terminal<TestBackend>) -> String {
    let buf = t.backend().buffer();
    let mut out = String::new();
    for y in 0..buf.area.height {
        let line: String = (0..buf.area.width).map(|x| buf[(x, y)].symbol().to_string()).collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[test]
fn the_states_read_as_the_issue_names_them() {
    let m = fixture();
    let label = |n: &str| state_label(&m.rows.iter().find(|r| r.info.name == n).unwrap().info, &m.approvals);
    assert_eq!(label("coder"), "running");
    assert_eq!(label("builder"), "paused: budget");
    assert_eq!(label("asker"), "waiting: approval 12");
    assert_eq!(label("old"), "exited 0");
    let paused = agent("p", json!({"paused": "operator"}));
    assert_eq!(state_label(&paused, &[]), "paused: operator");
}

#[test]
fn cpu_now_is_the_rate_between_two_samples() {
    let m = fixture();
    let coder = m.rows.iter().find(|r| r.info.name == "coder").unwrap();
    let pct = coder.cpu_pct.expect("two samples a second apart give a rate");
    assert!((pct - 30.0).abs() < 0.01, "300 ms of CPU in 1000 ms is 30%, got {pct}");
    let old = m.rows.iter().find(|r| r.info.name == "old").unwrap();
    assert_eq!(old.cpu_pct, None, "an exited agent has no CPU now");
}

#[test]
fn denials_count_for_a_minute_then_drop_out() {
    let mut m = fixture();
    assert_eq!(m.denials_last_minute("coder"), 2);
    assert_eq!(m.denials_last_minute("builder"), 0);
    // The same record again (the seed and the subscription overlap) counts once in the pane.
    m.on_event(file_deny(1, "coder", NOW - 2_000, "/etc/shadow"));
    assert_eq!(m.agent_audit("coder").count(), 2);
    m.tick(NOW + 57_000);
    assert_eq!(m.denials_last_minute("coder"), 2);
    m.tick(NOW + 61_000);
    assert_eq!(m.denials_last_minute("coder"), 0);
}

#[test]
fn events_that_change_an_agent_ask_for_a_refresh_and_others_do_not() {
    let mut m = fixture();
    m.want_refresh = false;
    m.on_event(file_deny(3, "coder", NOW, "/root/.ssh/id_rsa"));
    assert!(!m.want_refresh, "a denial changes no agent's row but its count");
    m.on_event(record(4, "new", NOW, json!({"kind": "spawn", "pid": 1, "uid": 0, "command": ["x"], "net": {"mode": "deny"}, "caller_uid": 0})));
    assert!(m.want_refresh, "a spawn adds a row");
    m.want_detail = false;
    m.on_event(record(
        5,
        "coder",
        NOW,
        json!({"kind": "grant", "caller_uid": 0, "token": {"id": 3, "agent": "coder", "path": "/src", "ops": 1, "granted_unix_ms": NOW, "expires_unix_ms": null, "expired": false, "origin": "grant"}}),
    ));
    assert!(m.want_detail, "a grant to the focused agent changes its tokens");
    m.on_event(Event::Lagged { missed: 9 });
    assert!(m.feed_error.as_deref().is_some_and(|e| e.contains("9 missed")));
}

#[test]
fn the_selection_follows_the_agent_through_sorting_filtering_and_new_rows() {
    let mut m = fixture();
    m.selected = Some("builder".into());
    m.cycle_sort();
    assert_eq!(m.sort, SortKey::Cpu);
    assert_eq!(m.selected.as_deref(), Some("builder"));
    // Exited agents sort last whatever the key.
    assert_eq!(m.rows.last().unwrap().info.name, "old");
    m.filter = "paused".into();
    m.refilter();
    assert_eq!(m.visible().iter().map(|r| r.info.name.as_str()).collect::<Vec<_>>(), ["builder"]);
    m.filter = "nothing-matches".into();
    m.refilter();
    assert_eq!(m.selected, None);
    m.filter.clear();
    m.refilter();
    m.selected = Some("asker".into());
    m.move_selection(1);
    let order: Vec<String> = m.visible().iter().map(|r| r.info.name.clone()).collect();
    let at = order.iter().position(|n| n == "asker").unwrap();
    assert_eq!(m.selected.as_deref(), Some(order[at + 1].as_str()));
    m.move_selection(-100);
    assert_eq!(m.selected.as_deref(), Some(order[0].as_str()));
    m.pane = Pane::Approvals;
    m.move_selection(5);
    assert_eq!(m.approval_selected, 0, "one approval: nowhere to move");
}

#[test]
fn layout_80x24() {
    let mut m = fixture();
    let t = draw(&mut m, 80, 24);
    let screen = text(&t);
    assert!(screen.contains("paused: budget"), "{screen}");
    assert!(screen.contains("waiting: approval 12"), "{screen}");
    assert!(screen.contains("/etc/shadow"), "the denial is named in the focus pane:\n{screen}");
    assert!(screen.contains("test result: ok"), "the terminal is shown:\n{screen}");
    insta::assert_snapshot!("layout_80x24", screen);
}

#[test]
fn layout_160x48() {
    let mut m = fixture();
    let token = |id: u64, path: &str, origin: &str, expires: Option<u64>| -> rush_proto::TokenInfo {
        serde_json::from_value(
            json!({"id": id, "agent": "coder", "path": path, "ops": 3, "granted_unix_ms": NOW,
            "expires_unix_ms": expires, "expired": false, "origin": origin}),
        )
        .unwrap()
    };
    m.detail = Some(super::model::Detail {
        agent: "coder".into(),
        tokens: vec![
            token(1, "/usr", "baseline", None),
            token(2, "/src", "spawn", None),
            token(3, "/data", "grant", Some(NOW + 3_599_000)),
        ],
        diff: Ok(Some(
            serde_json::from_value(json!({"a": "before-refactor", "b": "main",
            "added": ["src/new.rs"], "removed": [], "modified": ["src/lib.rs"], "took_ms": 3}))
            .unwrap(),
        )),
    });
    let t = draw(&mut m, 160, 48);
    let screen = text(&t);
    assert!(screen.contains("feature-x"), "the wide table has the session:\n{screen}");
    assert!(screen.contains("!"), "a budget past its limit is marked:\n{screen}");
    assert!(screen.contains("token 3 /data") && screen.contains("expires in 59m59s"), "{screen}");
    assert!(screen.contains("+ 1 baseline tokens") && !screen.contains("/usr"), "{screen}");
    assert!(screen.contains("diff since before-refactor: 1 added, 1 modified, 0 removed"), "{screen}");
    assert!(screen.contains("A src/new.rs") && screen.contains("M src/lib.rs"), "{screen}");
    insta::assert_snapshot!("layout_160x48", screen);
}

#[test]
fn tiny_and_empty_screens_draw_without_panicking() {
    for (c, r) in [(20, 5), (1, 1), (80, 6), (300, 100)] {
        let mut m = fixture();
        draw(&mut m, c, r);
        let mut empty = Model::new(true, NOW);
        let t = draw(&mut empty, c.max(60), r.max(10));
        if c >= 60 && r >= 10 {
            assert!(text(&t).contains("none running"), "{}", text(&t));
        }
    }
}

#[test]
fn the_terminal_keeps_its_colours_and_no_color_drops_them() {
    let mut m = fixture();
    let t = draw(&mut m, 80, 24);
    let buf = t.backend().buffer();
    let green = buf.content.iter().any(|c| c.symbol() == "t" && c.fg == Color::Indexed(2));
    assert!(green, "the agent's green `test result` is green on screen");
    let mut plain = fixture();
    plain.color = false;
    let t = draw(&mut plain, 80, 24);
    let coloured =
        t.backend().buffer().content.iter().filter(|c| c.fg != Color::Reset || c.bg != Color::Reset).count();
    assert_eq!(coloured, 0, "NO_COLOR: no cell has a colour");
}

#[test]
fn help_lists_every_key_and_the_plain_table_has_every_agent() {
    let mut m = fixture();
    m.mode = super::model::Mode::Help;
    let screen = text(&draw(&mut m, 100, 30));
    for (key, _) in view::HELP {
        assert!(screen.contains(key), "help shows {key}:\n{screen}");
    }
    let table = super::plain::table(&fixture());
    for name in ["coder", "builder", "asker", "old"] {
        assert!(table.contains(name), "{table}");
    }
    assert!(table.contains("cpu 102%"), "{table}");
    assert!(table.lines().nth(1).unwrap().starts_with("NAME"), "{table}");
    let _ = AgentState::Running;
}
