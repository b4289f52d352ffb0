use std::sync::{Arc, Mutex};

use rush_proto::approval::{ActionClass, ClassPolicy, Route};

use super::*;

/// The agents as a test sets them, recording what the queue asked of them.
#[derive(Default)]
struct Agents {
    alive: Mutex<Vec<(String, Option<String>)>>,
    calls: Mutex<Vec<String>>,
}

impl Agents {
    fn add(&self, name: &str, trust: Option<&str>) {
        self.alive.lock().unwrap().push((name.into(), trust.map(str::to_owned)));
    }
    fn exit(&self, name: &str) {
        self.alive.lock().unwrap().retain(|(n, _)| n != name);
    }
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl ApprovalAgents for Agents {
    fn agent(&self, name: &str) -> Option<AgentFacts> {
        let alive = self.alive.lock().unwrap();
        let (_, trust) = alive.iter().find(|(n, _)| n == name)?;
        Some(AgentFacts { session: Some("s".into()), trust: trust.clone(), alive: true })
    }
    fn grantable(&self, path: &Path) -> Result<(), String> {
        if path.starts_with("/gone") { Err(format!("{}: not there", path.display())) } else { Ok(()) }
    }
    fn grant<'a>(
        &'a self,
        agent: &'a str,
        path: &'a Path,
        ops: Ops,
        ttl: u64,
        uid: u32,
    ) -> Pending<'a, String> {
        let line = format!("grant {agent} {ops} {} {ttl}s uid:{uid}", path.display());
        self.calls.lock().unwrap().push(line.clone());
        Box::pin(async move { Ok(line) })
    }
    fn raise_budget<'a>(&'a self, agent: &'a str, raise: Budget, _uid: u32) -> Pending<'a, String> {
        let line = format!("raise {agent} {raise}");
        self.calls.lock().unwrap().push(line.clone());
        Box::pin(async move { Ok(line) })
    }
    fn hold<'a>(&'a self, agent: &'a str) -> Pending<'a, ()> {
        self.calls.lock().unwrap().push(format!("hold {agent}"));
        Box::pin(async { Ok(()) })
    }
    fn release_hold(&self, agent: &str) -> Result<(), String> {
        self.calls.lock().unwrap().push(format!("release {agent}"));
        Ok(())
    }
}

struct Fixture {
    q: Arc<Approvals>,
    agents: Arc<Agents>,
    store: Arc<Store>,
    db: PathBuf,
    _dir: tempfile::TempDir,
}

fn fixture_with(config: ApprovalsConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let store = Arc::new(Store::open(&db).unwrap());
    let agents = Arc::new(Agents::default());
    agents.add("coder", Some("trusted"));
    agents.add("tester", None);
    let q = reopen(&store, &db, &agents, config);
    Fixture { q, agents, store, db, _dir: dir }
}

fn reopen(store: &Arc<Store>, db: &Path, agents: &Arc<Agents>, config: ApprovalsConfig) -> Arc<Approvals> {
    Arc::new(
        Approvals::new(ApprovalsSetup {
            store: store.clone(),
            agents: agents.clone(),
            claims: None,
            audit: Arc::new(AuditLog::open(db).unwrap()),
            config,
        })
        .unwrap(),
    )
}

fn fixture() -> Fixture {
    fixture_with(ApprovalsConfig::default())
}

fn write_on(path: &str) -> ApprovalRequest {
    ApprovalRequest {
        agent: None,
        action: format!("write {path}"),
        detail: ApprovalDetail::Capability { path: path.into(), ops: "write".parse().unwrap() },
        priority: None,
        timeout_secs: None,
        on_timeout: None,
        class: None,
        freeze: false,
    }
}

fn me(name: &str) -> Asker<'_> {
    Asker::Agent { name }
}

fn operator() -> Decider {
    Decider { by: "uid:0".into(), via: DecidedVia::Cli, uid: 0 }
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

#[tokio::test]
async fn an_approved_capability_is_granted_once_with_the_approvers_ttl() {
    let f = fixture();
    let a = f.q.request(me("coder"), write_on("/w/migrations/1.sql"), None).await.unwrap();
    assert_eq!(a.state, ApprovalState::Pending);
    assert_eq!(a.batch_key, "capability:write:/w/migrations");
    let mut req = approve(a.id);
    req.ttl_secs = Some(120);
    let decided = f.q.decide(req, &operator()).await.unwrap();
    assert_eq!(decided.len(), 1);
    assert_eq!(decided[0].state, ApprovalState::Approved);
    let d = decided[0].decision.as_ref().unwrap();
    assert_eq!((d.by.as_str(), d.via, d.ttl_secs), ("uid:0", DecidedVia::Cli, Some(120)));
    assert_eq!(d.effect.as_deref(), Some("grant coder write /w/migrations/1.sql 120s uid:0"));
    // A second decision, either way, changes nothing and says who decided.
    let again = f.q.decide(approve(a.id), &operator()).await.unwrap_err();
    assert_eq!(again.fault, Fault::Exists);
    assert!(again.message.contains("already approved (by uid:0 via cli)"), "{}", again.message);
    assert_eq!(f.agents.calls().len(), 1);
    // Its agent hears of it once, in its inbox.
    assert_eq!(f.q.unseen_decisions("coder").len(), 1);
    assert!(f.q.unseen_decisions("coder").is_empty());
}

#[tokio::test]
async fn an_agent_asks_only_as_itself_and_sees_only_its_own() {
    let f = fixture();
    let mut req = write_on("/w/a");
    req.agent = Some("tester".into());
    let e = f.q.request(me("coder"), req, None).await.unwrap_err();
    assert_eq!(e.fault, Fault::Forbidden);
    let mine = f.q.request(me("coder"), write_on("/w/a"), None).await.unwrap();
    let e = f.q.get(me("tester"), None, mine.id).unwrap_err();
    assert_eq!(e.fault, Fault::NotFound);
    let (list, _) = f.q.list(me("tester"), None, true).unwrap();
    assert!(list.is_empty());
    // An operator must say for whom.
    let e = f.q.request(Asker::Operator { uid: 0 }, write_on("/w/a"), None).await.unwrap_err();
    assert_eq!(e.fault, Fault::Malformed);
    let e = f.q.request(me("coder"), write_on("/gone/x"), None).await.unwrap_err();
    assert_eq!(e.fault, Fault::NotFound);
    assert!(e.message.starts_with("detail.path: /gone/x"), "{}", e.message);
    let e = f.q.request(me("ghost"), write_on("/w/a"), None).await.unwrap_err();
    assert_eq!(e.fault, Fault::NotFound);
}

#[tokio::test]
async fn a_batch_is_decided_at_once_with_exclusions_and_the_rest_stays_pending() {
    let f = fixture();
    let mut ids = Vec::new();
    for (agent, file) in [("coder", "1.sql"), ("tester", "2.sql"), ("coder", "3.sql")] {
        ids.push(f.q.request(me(agent), write_on(&format!("/w/migrations/{file}")), None).await.unwrap().id);
    }
    let other = f.q.request(me("coder"), write_on("/w/src/main.rs"), None).await.unwrap();
    let (pending, batches) = f.q.list(Asker::Operator { uid: 0 }, None, false).unwrap();
    assert_eq!(pending.len(), 4);
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].ids, ids);
    let req = DecideRequest {
        target: ApprovalTarget::Batch("capability:write:/w/migrations".into()),
        approve: true,
        exclude: vec![ids[2]],
        ttl_secs: None,
        reason: None,
        remember: None,
        remember_scope: None,
    };
    let decided = f.q.decide(req, &operator()).await.unwrap();
    assert_eq!(decided.iter().map(|a| a.id).collect::<Vec<_>>(), ids[..2]);
    let (pending, _) = f.q.list(Asker::Operator { uid: 0 }, None, false).unwrap();
    assert_eq!(pending.iter().map(|a| a.id).collect::<Vec<_>>(), vec![ids[2], other.id]);
    // The queue's default TTL (1h) when the approver gives none.
    assert!(f.agents.calls().iter().all(|c| c.ends_with("3600s uid:0")), "{:?}", f.agents.calls());
    let e =
        f.q.decide(DecideRequest { target: ApprovalTarget::Batch("nope".into()), ..approve(0) }, &operator())
            .await
            .unwrap_err();
    assert_eq!(e.fault, Fault::NotFound);
}

#[tokio::test]
async fn deadlines_apply_the_timeout_policy_and_escalate_once() {
    let f = fixture();
    let mut req = write_on("/w/x");
    req.timeout_secs = Some(1);
    let rejected = f.q.request(me("coder"), req.clone(), None).await.unwrap();
    req.on_timeout = Some(OnTimeout::Approve);
    let approved = f.q.request(me("coder"), req.clone(), None).await.unwrap();
    req.on_timeout = Some(OnTimeout::Escalate);
    req.priority = Some(Priority::Low);
    let escalated = f.q.request(me("coder"), req, None).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    f.q.sweep(false).await;
    let get = |id| f.q.get(Asker::Operator { uid: 0 }, None, id).unwrap();
    assert_eq!(get(rejected.id).state, ApprovalState::Expired);
    assert_eq!(get(rejected.id).decision.unwrap().via, DecidedVia::Timeout);
    assert_eq!(get(approved.id).state, ApprovalState::Approved);
    assert_eq!(f.agents.calls().len(), 1, "the approval by timeout was applied");
    let e = get(escalated.id);
    assert_eq!((e.state, e.escalated, e.effective_priority), (ApprovalState::Pending, true, Priority::High));
    // Its second deadline rejects it.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    f.q.sweep(false).await;
    assert_eq!(get(escalated.id).state, ApprovalState::Expired);
}

#[tokio::test]
async fn a_deadline_passed_while_the_daemon_was_down_is_applied_late_and_nothing_is_lost_or_decided_twice() {
    let f = fixture();
    let mut ids = Vec::new();
    for i in 0..100 {
        let mut req = write_on(&format!("/w/d{i}/f"));
        req.timeout_secs = Some(if i < 10 { 1 } else { 3600 });
        ids.push(f.q.request(me(if i % 2 == 0 { "coder" } else { "tester" }), req, None).await.unwrap().id);
    }
    // An approval whose effect a crash cut off: decided in the store, not applied.
    f.store
        .update_pending(ids[50], |a| {
            a.state = ApprovalState::Approved;
            a.decision = Some(Decision {
                by: "uid:0".into(),
                via: DecidedVia::Cli,
                unix_ms: 1,
                reason: None,
                ttl_secs: Some(60),
                late: false,
                effect: None,
            });
        })
        .unwrap();
    drop(f.q);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let q = reopen(&f.store, &f.db, &f.agents, ApprovalsConfig::default());
    q.sweep(true).await;
    let (all, _) = q.list(Asker::Operator { uid: 0 }, None, true).unwrap();
    assert_eq!(all.len(), 100, "none lost");
    for a in &all[..10] {
        assert_eq!(a.state, ApprovalState::Expired);
        assert!(a.decision.as_ref().unwrap().late, "{a:?}");
    }
    assert_eq!(all.iter().filter(|a| a.state == ApprovalState::Pending).count(), 89);
    assert_eq!(f.agents.calls(), vec!["grant coder write /w/d50/f 60s uid:0".to_string()]);
    // Applied once: another start does not grant again.
    q.sweep(true).await;
    assert_eq!(f.agents.calls().len(), 1);
}

#[tokio::test]
async fn freeze_holds_the_agent_until_its_last_frozen_request_is_decided() {
    let f = fixture();
    let mut req = write_on("/w/a");
    req.freeze = true;
    let a = f.q.request(me("coder"), req.clone(), None).await.unwrap();
    req.detail = ApprovalDetail::Custom { text: "x".into() };
    let b = f.q.request(me("coder"), req, None).await.unwrap();
    f.q.decide(DecideRequest { approve: false, ..approve(a.id) }, &operator()).await.unwrap();
    assert!(!f.agents.calls().contains(&"release coder".to_string()), "{:?}", f.agents.calls());
    f.q.cancel(me("coder"), None, b.id).unwrap();
    assert_eq!(f.agents.calls().last().unwrap(), "release coder");
}

#[tokio::test]
async fn class_policy_overrides_the_askers_priority_and_timeout() {
    let mut config = ApprovalsConfig::default();
    config.routes.insert("high".into(), "cli:blocking".into());
    let f = fixture_with(config);
    f.q.configure(QueueChange {
        class: Some(ClassPolicy {
            class: Some(ActionClass::Destructive),
            priority: Some(Priority::High),
            timeout_secs: Some(60),
            on_timeout: Some(OnTimeout::Reject),
            ..Default::default()
        }),
        ..Default::default()
    })
    .unwrap();
    let mut req = write_on("/w/a");
    req.class = Some(ActionClass::Destructive);
    req.priority = Some(Priority::Low);
    req.timeout_secs = Some(3600 * 24);
    let a = f.q.request(me("coder"), req, None).await.unwrap();
    assert_eq!(a.priority, Priority::High);
    assert_eq!(a.channel, Channel::Cli { blocking: true });
    assert_eq!(a.deadline_unix_ms - a.created_unix_ms, 60_000);
    // A channel the config cannot deliver to is refused, naming it.
    let e =
        f.q.configure(QueueChange {
            routes: vec![Route { priority: Priority::Low, channel: Channel::Webhook("ops".into()) }],
            ..Default::default()
        })
        .unwrap_err();
    assert!(e.message.contains("webhook:ops"), "{}", e.message);
    // Stored: a new queue on the same store has it.
    let q2 = reopen(&f.store, &f.db, &f.agents, {
        let mut c = ApprovalsConfig::default();
        c.routes.insert("high".into(), "cli:blocking".into());
        c
    });
    assert_eq!(q2.settings().classes.len(), 1);
}

#[tokio::test]
async fn denials_become_requests_for_trusted_levels_deduplicated_and_rate_limited() {
    let config = ApprovalsConfig {
        deny_to_ask: vec!["trusted".into()],
        deny_to_ask_per_minute: 3,
        ..Default::default()
    };
    let f = fixture_with(config);
    let write = "write".parse().unwrap();
    let a = f.q.ask_from_denial("coder", "/w/migrations", write).unwrap();
    assert_eq!(a.origin, ApprovalOrigin::DenyToAsk);
    assert_eq!(a.action, "coder wants write on /w/migrations");
    assert!(f.q.ask_from_denial("coder", "/w/migrations", write).is_none(), "deduplicated");
    assert!(f.q.ask_from_denial("tester", "/w/migrations", write).is_none(), "no trust level: no request");
    assert!(f.q.ask_from_denial("coder", "/w/b", write).is_some());
    assert!(f.q.ask_from_denial("coder", "/w/c", write).is_some());
    assert!(f.q.ask_from_denial("coder", "/w/d", write).is_none(), "3 a minute");
}

#[tokio::test]
async fn requests_of_gone_agents_are_cancelled_and_waiters_woken() {
    let f = fixture();
    let a = f.q.request(me("tester"), write_on("/w/a"), None).await.unwrap();
    let q = f.q.clone();
    let waiter = tokio::spawn(async move { q.wait(Asker::Operator { uid: 0 }, None, a.id, Some(30)).await });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    f.agents.exit("tester");
    f.q.sweep(false).await;
    let got =
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.unwrap().unwrap().unwrap();
    assert_eq!(got.state, ApprovalState::Cancelled);
    assert_eq!(got.decision.unwrap().via, DecidedVia::Daemon);
}

#[tokio::test]
async fn waiting_requests_age_into_a_higher_priority() {
    let config = ApprovalsConfig { aging: "1s".into(), ..Default::default() };
    let f = fixture_with(config);
    let mut req = write_on("/w/a");
    req.priority = Some(Priority::Low);
    let a = f.q.request(me("coder"), req, None).await.unwrap();
    assert_eq!(a.effective_priority, Priority::Low);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let a = f.q.get(Asker::Operator { uid: 0 }, None, a.id).unwrap();
    assert_eq!(a.effective_priority, Priority::Medium);
    assert!(a.raised_because.unwrap().starts_with("waiting over"));
}
