use std::sync::{Arc, Mutex};

use rush_proto::coordination::{
    BroadcastRequest, ClaimEnforcement, ClaimRequest, DelegateRequest, Fence, PublishRequest, ResultsQuery,
    TaskState,
};

use super::*;
use crate::adapters::bpf::FakeKernel;

/// Agents as a test sets them: name → (cgroup, session, alive).
#[derive(Default)]
struct Agents(Mutex<Vec<AgentView>>);

impl Agents {
    fn add(&self, name: &str, cgroup_id: u64, session: Option<&str>) {
        self.0.lock().unwrap().push(AgentView {
            name: name.into(),
            cgroup_id,
            session: session.map(str::to_owned),
            alive: true,
        });
    }
    fn exit(&self, name: &str) {
        self.0.lock().unwrap().iter_mut().filter(|a| a.name == name).for_each(|a| a.alive = false);
    }
}

impl CoordinationAgents for Agents {
    fn agent(&self, name: &str) -> Option<AgentView> {
        self.0.lock().unwrap().iter().find(|a| a.name == name).cloned()
    }
    fn alive(&self) -> Vec<AgentView> {
        self.0.lock().unwrap().iter().filter(|a| a.alive).cloned().collect()
    }
}

struct Fixture {
    c: Arc<Coordination>,
    agents: Arc<Agents>,
    kernel: Arc<FakeKernel>,
    store: Arc<Store>,
    dir: tempfile::TempDir,
}

fn fixture_with(kernel_claims: Result<(), String>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let store = Arc::new(Store::open(&db).unwrap());
    let audit = Arc::new(AuditLog::open(&db).unwrap());
    let agents = Arc::new(Agents::default());
    let kernel = Arc::new(FakeKernel::default());
    let c = Arc::new(Coordination::new(CoordinationSetup {
        store: Arc::new(Embedded { store: store.clone(), blobs: dir.path().join("results") }),
        agents: agents.clone(),
        kernel: kernel.clone(),
        audit,
        keys: FileKeys::default(),
        kernel_claims,
        max_result_bytes: 1024,
        node: String::new(),
    }));
    Fixture { c, agents, kernel, store, dir }
}

fn fixture() -> Fixture {
    fixture_with(Ok(()))
}

fn claim(task: &str, paths: &[&str]) -> ClaimRequest {
    ClaimRequest {
        agent: None,
        task: task.into(),
        paths: paths.iter().map(|p| p.to_string()).collect(),
        ttl_secs: None,
        enforce: false,
    }
}

fn agent(name: &str) -> Actor<'_> {
    Actor::Agent { name }
}

#[test]
fn one_winner_and_the_loser_is_told_who_holds_it() {
    let f = fixture();
    f.agents.add("a", 10, None);
    f.agents.add("b", 11, None);
    let won = f.c.claim(agent("a"), claim("t", &[])).unwrap();
    assert!(won.won);
    assert_eq!(won.claim.fencing, 1);
    let lost = f.c.claim(agent("b"), claim("t", &[])).unwrap();
    assert!(!lost.won);
    assert_eq!(lost.claim.agent, "a");
    assert_eq!(lost.claim.lease, won.claim.lease);
    // Claiming again what one holds changes nothing.
    let again = f.c.claim(agent("a"), claim("t", &[])).unwrap();
    assert!(again.won);
    assert_eq!(again.claim.lease, won.claim.lease);
}

#[test]
fn fencing_tokens_only_grow_across_holders_and_restarts() {
    let f = fixture();
    f.agents.add("a", 10, None);
    f.agents.add("b", 11, None);
    let first = f.c.claim(agent("a"), claim("t", &[])).unwrap().claim;
    f.c.release(agent("a"), None, "t").unwrap();
    let second = f.c.claim(agent("b"), claim("t", &[])).unwrap().claim;
    assert!(second.fencing > first.fencing);
    assert_ne!(second.lease, first.lease);
    // A new daemon on the same store keeps the holding and the counter.
    drop(f.c);
    let reopened = Store::open(&f.dir.path().join("state.db")).unwrap();
    let live = reopened.live_claims().unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].claim.agent, "b");
    assert_eq!(live[0].claim.fencing, second.fencing);
}

#[test]
fn a_lapsed_lease_goes_to_the_next_claimer_and_the_old_holder_cannot_renew_or_publish() {
    let f = fixture();
    f.agents.add("a", 10, None);
    f.agents.add("b", 11, None);
    let mut req = claim("t", &[]);
    req.ttl_secs = Some(1);
    let old = f.c.claim(agent("a"), req).unwrap().claim;
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let new = f.c.claim(agent("b"), claim("t", &[])).unwrap();
    assert!(new.won, "{new:?}");
    assert_eq!(new.claim.fencing, old.fencing + 1);
    let e = f.c.renew(agent("a"), None, "t", None).unwrap_err();
    assert_eq!(e.fault, Fault::NotFound, "{e}");
    let publish = PublishRequest {
        agent: None,
        key: "out".into(),
        content_base64: "aGk=".into(),
        for_agent: None,
        fence: Some(Fence { task: "t".into(), fencing: old.fencing }),
    };
    let e = f.c.publish(agent("a"), publish.clone()).unwrap_err();
    assert_eq!(e.fault, Fault::Forbidden);
    assert!(e.message.contains("stale fencing token") && e.message.contains("\"b\""), "{e}");
    let fresh =
        PublishRequest { fence: Some(Fence { task: "t".into(), fencing: new.claim.fencing }), ..publish };
    f.c.publish(agent("b"), fresh).unwrap();
}

#[test]
fn claims_of_an_exited_holder_are_released_by_the_sweep() {
    let f = fixture();
    f.agents.add("a", 10, None);
    f.agents.add("b", 11, None);
    f.c.claim(agent("a"), claim("t", &[])).unwrap();
    f.agents.exit("a");
    f.c.sweep();
    assert!(f.store.live_claims().unwrap().is_empty());
    assert!(f.c.claim(agent("b"), claim("t", &[])).unwrap().won);
}

#[test]
fn path_claims_deny_the_sessions_other_agents_only() {
    let f = fixture();
    let dir = f.dir.path().join("parser");
    std::fs::create_dir(&dir).unwrap();
    f.agents.add("a", 10, Some("s"));
    f.agents.add("b", 11, Some("s"));
    f.agents.add("other-session", 12, Some("t"));
    let won = f.c.claim(agent("a"), claim("parse", &[dir.to_str().unwrap()])).unwrap();
    assert_eq!(won.claim.enforcement, ClaimEnforcement::Kernel);
    let denies = f.kernel.claim_denies.lock().unwrap().clone();
    let key = FileKeys::default().key(&dir).unwrap();
    assert_eq!(denies.get(&11).map(|d| d.iter().map(|(k, _)| *k).collect::<Vec<_>>()), Some(vec![key]));
    assert_eq!(denies[&11][0].1.claim_id, won.claim.lease);
    assert_eq!(denies[&11][0].1.holder_cgroup, 10);
    assert!(denies.get(&10).is_none_or(Vec::is_empty), "the holder is not denied");
    assert!(denies.get(&12).is_none_or(Vec::is_empty), "another session is not denied");
    // A new agent of the session is denied before it runs.
    f.c.admit("late", 13, Some("s")).unwrap();
    assert_eq!(f.kernel.claim_denies.lock().unwrap()[&13].len(), 1);
    // Released: every deny goes.
    f.c.release(agent("a"), None, "parse").unwrap();
    assert!(f.kernel.claim_denies.lock().unwrap().get(&11).is_none_or(Vec::is_empty));
    // Who holds a path.
    f.c.claim(agent("b"), claim("parse", &[dir.to_str().unwrap()])).unwrap();
    let inside = format!("{}/lex.rs", dir.display());
    let held = f.c.claims(agent("a"), Some(&inside), None).unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].agent, "b");
    assert!(f.c.claims(agent("other-session"), None, None).unwrap().is_empty(), "sessions see their own");
}

#[test]
fn without_bpf_lsm_path_claims_are_advisory_or_refused_with_enforce() {
    let f = fixture_with(Err("no BPF LSM".into()));
    f.agents.add("a", 10, None);
    let dir = f.dir.path().to_str().unwrap().to_owned();
    let out = f.c.claim(agent("a"), claim("t", &[&dir])).unwrap();
    assert_eq!(out.claim.enforcement, ClaimEnforcement::Advisory);
    assert!(out.warning.unwrap().contains("advisory"));
    let mut strict = claim("u", &[&dir]);
    strict.enforce = true;
    let e = f.c.claim(agent("a"), strict).unwrap_err();
    assert_eq!(e.fault, Fault::Unsupported);
    assert!(f.kernel.claim_denies.lock().unwrap().is_empty());
}

#[test]
fn bad_input_is_refused_naming_it() {
    let f = fixture();
    f.agents.add("a", 10, None);
    let cases: Vec<(ClaimRequest, &str)> = vec![
        (claim("", &[]), "task is empty"),
        (ClaimRequest { ttl_secs: Some(0), ..claim("t", &[]) }, "at least 1s"),
        (ClaimRequest { ttl_secs: Some(u64::MAX), ..claim("t", &[]) }, "30 days"),
        (claim("t", &["relative/dir"]), "not absolute"),
        (claim("t", &["/tmp/[unclosed"]), "bad glob"),
        (claim("t", &["/nonexistent/rush-claim"]), "does not exist"),
    ];
    for (req, want) in cases {
        let e = f.c.claim(agent("a"), req.clone()).unwrap_err();
        assert!(e.message.contains(want), "{req:?}: {e}");
    }
    let e = f.c.claim(Actor::Operator { uid: 0 }, claim("t", &[])).unwrap_err();
    assert!(e.message.contains("--agent"), "{e}");
    let big = PublishRequest {
        agent: None,
        key: "k".into(),
        content_base64: data_encoding::BASE64.encode(&[0u8; 2000]),
        for_agent: None,
        fence: None,
    };
    let e = f.c.publish(agent("a"), big).unwrap_err();
    assert!(e.message.contains("2000 bytes") && e.message.contains("max_result_bytes"), "{e}");
}

#[tokio::test]
async fn results_round_trip_and_a_waiter_wakes_when_it_is_published() {
    let f = fixture();
    f.agents.add("a", 10, Some("s"));
    f.agents.add("b", 11, Some("s"));
    f.agents.add("c", 12, Some("s"));
    let waiter = {
        let c = f.c.clone();
        tokio::spawn(async move {
            let q = ResultsQuery { key: Some("review".into()), wait_secs: Some(5), ..Default::default() };
            c.results(Actor::Agent { name: "b" }, q).await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let content = vec![0u8, 255, 10, 13];
    let req = PublishRequest {
        agent: None,
        key: "review".into(),
        content_base64: data_encoding::BASE64.encode(&content),
        for_agent: Some("b".into()),
        fence: None,
    };
    let published = f.c.publish(agent("a"), req).unwrap();
    let got = waiter.await.unwrap().unwrap();
    assert_eq!(got[0].sha256, published.sha256);
    assert_eq!(
        data_encoding::BASE64.decode(got[0].content_base64.as_ref().unwrap().as_bytes()).unwrap(),
        content
    );
    // Meant for b: c does not see it.
    let q = ResultsQuery { key: Some("review".into()), ..Default::default() };
    assert_eq!(f.c.results(agent("c"), q).await.unwrap_err().fault, Fault::NotFound);
}

#[tokio::test]
async fn a_delegated_task_is_in_the_inbox_and_its_result_completes_it() {
    let f = fixture();
    f.agents.add("a", 10, Some("s"));
    f.agents.add("reviewer", 11, Some("s"));
    let req = DelegateRequest {
        agent: None,
        to: "reviewer".into(),
        text: "review parser".into(),
        parent: None,
        spawn: None,
    };
    let task = f.c.delegate(agent("a"), &req).unwrap();
    let inbox = f.c.inbox(agent("reviewer"), None, None).await.unwrap();
    assert_eq!(inbox, vec![task.clone()]);
    let done = PublishRequest {
        agent: None,
        key: task.result_key.clone(),
        content_base64: "b2s=".into(),
        for_agent: Some("a".into()),
        fence: None,
    };
    f.c.publish(agent("reviewer"), done).unwrap();
    assert!(f.c.inbox(agent("reviewer"), None, None).await.unwrap().is_empty());
    assert_eq!(f.store.task(task.id).unwrap().unwrap().state, TaskState::Done);
    // Bad delegations.
    let to_self = DelegateRequest { to: "a".into(), ..req.clone() };
    assert!(f.c.delegate(agent("a"), &to_self).unwrap_err().message.contains("itself"));
    let nobody = DelegateRequest { to: "ghost".into(), ..req };
    assert_eq!(f.c.delegate(agent("a"), &nobody).unwrap_err().fault, Fault::NotFound);
}

#[test]
fn intents_overlapping_the_query_are_marked() {
    let f = fixture();
    f.agents.add("a", 10, Some("s"));
    f.agents.add("b", 11, Some("s"));
    let req = BroadcastRequest {
        agent: None,
        text: "optimizing parser".into(),
        paths: vec!["/w/parser".into()],
        ttl_secs: None,
    };
    f.c.broadcast(agent("a"), req).unwrap();
    let seen = f.c.intents(agent("b"), &["/w/parser/lex.rs".into()], None).unwrap();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].overlaps);
    let elsewhere = f.c.intents(agent("b"), &["/w/docs".into()], None).unwrap();
    assert!(!elsewhere[0].overlaps);
}

/// A daemon (node) on the fixture's store, with agents and a kernel of its own: what
/// daemons sharing an etcd cluster are, as far as the service sees.
fn second_node(f: &Fixture, node: &str) -> (Arc<Coordination>, Arc<Agents>, Arc<FakeKernel>) {
    let agents = Arc::new(Agents::default());
    let kernel = Arc::new(FakeKernel::default());
    let c = Arc::new(Coordination::new(CoordinationSetup {
        store: Arc::new(Embedded { store: f.store.clone(), blobs: f.dir.path().join("results") }),
        agents: agents.clone(),
        kernel: kernel.clone(),
        audit: Arc::new(AuditLog::open(&f.dir.path().join("state2.db")).unwrap()),
        keys: FileKeys::default(),
        kernel_claims: Ok(()),
        max_result_bytes: 1024,
        node: node.into(),
    }));
    (c, agents, kernel)
}

#[test]
fn nodes_sharing_a_store_keep_their_agents_apart() {
    let f = fixture();
    let (n1, agents1, _) = second_node(&f, "n1");
    let (n2, agents2, kernel2) = second_node(&f, "n2");
    let dir = f.dir.path().join("parser");
    std::fs::create_dir(&dir).unwrap();
    // One name on two nodes: two agents.
    agents1.add("a", 10, Some("s"));
    agents2.add("a", 20, Some("s"));
    agents2.add("b", 21, Some("s"));
    let won = n1.claim(agent("a"), claim("parse", &[dir.to_str().unwrap()])).unwrap();
    assert!(won.won);
    let twin = n2.claim(agent("a"), claim("parse", &[])).unwrap();
    assert!(!twin.won, "node 2's agent a was taken for node 1's: {twin:?}");
    // (Renew, release and a fenced publish compare the node in the etcd store, where
    // nodes exist: kernel-tests/tests/etcd.rs.)
    // Node 2 mirrors node 1's claim: both its agents of the session are denied, its "a" too.
    n2.sweep();
    let denies = kernel2.claim_denies.lock().unwrap().clone();
    let key = FileKeys::default().key(&dir).unwrap();
    for cg in [20, 21] {
        assert_eq!(denies.get(&cg).map(|d| d.iter().map(|(k, _)| *k).collect::<Vec<_>>()), Some(vec![key]));
        assert_eq!(denies[&cg][0].1.holder_cgroup, 0, "the holder is not an agent of node 2");
    }
    // Node 2 never ends node 1's claim because node 1's agent is not among its own...
    n2.sweep();
    assert_eq!(f.store.live_claims().unwrap().len(), 1);
    // ... node 1 does, once its agent exited; node 2's mirror follows at its next sweep.
    agents1.exit("a");
    n1.sweep();
    assert!(f.store.live_claims().unwrap().is_empty());
    n2.sweep();
    assert!(kernel2.claim_denies.lock().unwrap().get(&21).is_none_or(Vec::is_empty));
}
