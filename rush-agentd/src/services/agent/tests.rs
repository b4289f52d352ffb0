use super::capabilities::landlock_link_check;
use super::lifecycle::{EXITED_KEPT, reaches, resolve_net};
use super::persistence::restart_request;
use super::*;
use crate::adapters::bpf::FakeKernel;
use crate::adapters::cgroup::fake::FakeCgroups;
use crate::core::Fault;
use crate::services::policy::Policy;

struct Fixture {
    mgr: Arc<AgentManager>,
    kernel: Arc<FakeKernel>,
    cgroups: Arc<FakeCgroups>,
    control: Arc<crate::services::budget::fake::FakeControl>,
    _dir: tempfile::TempDir,
}

fn fixture(enforcement: Enforcement) -> Fixture {
    fixture_with(enforcement, crate::services::budget::fake::FakeControl::default())
}

fn fixture_with(enforcement: Enforcement, control: crate::services::budget::fake::FakeControl) -> Fixture {
    fixture_policy(enforcement, control, crate::services::policy::DEFAULT_POLICY)
}

fn fixture_policy(
    enforcement: Enforcement,
    control: crate::services::budget::fake::FakeControl,
    policy: &str,
) -> Fixture {
    fixture_full(enforcement, control, policy, None)
}

/// A fixture whose agents and tokens are written to `store`.
fn fixture_stored(enforcement: Enforcement, store: &Arc<crate::adapters::store::Store>) -> Fixture {
    fixture_full(
        enforcement,
        Default::default(),
        crate::services::policy::DEFAULT_POLICY,
        Some(store.clone()),
    )
}

fn fixture_full(
    enforcement: Enforcement,
    control: crate::services::budget::fake::FakeControl,
    policy: &str,
    store: Option<Arc<crate::adapters::store::Store>>,
) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let audit = Arc::new(AuditLog::open(&dir.path().join("state.db")).unwrap());
    let kernel = Arc::new(FakeKernel::default());
    let cgroups = Arc::new(FakeCgroups::default());
    let control = Arc::new(control);
    let mgr = AgentManager::new(AgentSetup {
        cgroups: cgroups.clone(),
        kernel: kernel.clone(),
        audit,
        enforcement,
        log_dir: dir.path().to_owned(),
        baseline: vec!["/usr:read,exec".parse().unwrap()],
        budgets: Budgets {
            control: control.clone(),
            policy: Policy::parse(policy, "t").unwrap(),
            meter: None,
            api_endpoints: 1,
        },
        criu: Arc::new(CriuSetup::new(None)),
        hardening: None,
        private_tmp: None,
        store,
        dns: None,
        terminal_scrollback: 4096,
    });
    Fixture { mgr, kernel, cgroups, control, _dir: dir }
}

fn enforced() -> Enforcement {
    Enforcement {
        net: true,
        files: FileBackend::Unavailable("BPF LSM programs did not attach: EPERM".into()),
        landlock: Default::default(),
        keys: Default::default(),
    }
}

/// `--user`: only root may name another user; names and uids resolve through the
/// user database; a trust level with `root_agents = false` refuses root.
#[test]
fn run_as_resolves_users_and_refuses_what_it_must() {
    let f = fixture_policy(enforced(), Default::default(), "[trust.nonroot]\nroot_agents = false\n");
    let policy = crate::adapters::harden::HardeningPolicy::default();
    let user = |u: &str| SpawnRequest { user: Some(u.into()), ..req("u", &["true"]) };
    let root = Caller { uid: 0, gid: 0, pid: 1, groups: vec![] };
    let nobody = f.mgr.run_as(&user("nobody"), &root, &policy).unwrap();
    assert_eq!((nobody.uid, nobody.gid), (65534, 65534));
    assert_eq!(f.mgr.run_as(&user("65534"), &root, &policy).unwrap().uid, 65534);
    let e = f.mgr.run_as(&user("no-such-user-x"), &root, &policy).unwrap_err();
    assert_eq!(e.fault, Fault::Invalid);
    assert!(e.message.contains("--user \"no-such-user-x\": no such user"), "{}", e.message);
    // A caller that is not root may only name itself.
    let alice = Caller { uid: 1000, gid: 1000, pid: 1, groups: vec![] };
    let e = f.mgr.run_as(&user("root"), &alice, &policy).unwrap_err();
    assert_eq!(e.fault, Fault::Forbidden, "{}", e.message);
    assert_eq!(f.mgr.run_as(&user("1000"), &alice, &policy).unwrap().uid, 1000);
    // Root agents refused by the level; with --user they pass.
    let level = f.mgr.budgets.policy().level("nonroot").unwrap().hardening.apply(&policy);
    let as_root = SpawnRequest { trust: Some("nonroot".into()), ..req("r", &["true"]) };
    let e = f.mgr.run_as(&as_root, &root, &level).unwrap_err();
    assert_eq!(e.fault, Fault::Forbidden);
    assert!(
        e.message.contains("trust level \"nonroot\" refuses root agents; give --user USER"),
        "{}",
        e.message
    );
    let with_user = SpawnRequest { user: Some("nobody".into()), ..as_root };
    assert_eq!(f.mgr.run_as(&with_user, &root, &level).unwrap().uid, 65534);
}

fn me() -> Caller {
    let uid = nix::unistd::getuid().as_raw();
    let gid = nix::unistd::getgid().as_raw();
    Caller { uid, gid, pid: std::process::id() as i32, groups: vec![gid] }
}

fn req(name: &str, cmd: &[&str]) -> SpawnRequest {
    SpawnRequest {
        name: name.into(),
        command: cmd.iter().map(|s| s.to_string()).collect(),
        net: Some(NetPolicy::Deny),
        trust: None,
        budget: Budget::default(),
        allow: vec![],
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        cwd: PathBuf::from("/"),
        stdio: StdioMode::Log,
        tty_size: None,
        allow_unconfined: false,
        session: None,
        restartable: false,
        hardlinks: None,
        user: None,
    }
}

#[tokio::test]
async fn spawn_installs_policy_first_and_cleans_up_after_exit() {
    let f = fixture(enforced());
    let (info, mut rx) = f.mgr.spawn(req("a1", &["sh", "-c", "exit 3"]), &me(), None).await.unwrap();
    assert_eq!(f.mgr.name_of(info.cgroup_id).as_deref(), Some("a1"));
    let status = rx.wait_for(|s| s.is_some()).await.unwrap().unwrap();
    assert_eq!(status.code, Some(3));
    // Give watch_exit's cleanup a moment: it runs before the status is sent.
    assert!(f.kernel.agents.lock().unwrap().is_empty(), "kernel policy must be removed after exit");
    assert!(f.cgroups.cgroups.lock().unwrap().is_empty(), "cgroup must be removed after exit");
    assert_eq!(f.mgr.status("a1").unwrap().state, AgentState::Exited);
}

#[tokio::test]
async fn name_in_use_is_refused_and_changes_nothing() {
    let f = fixture(enforced());
    let (_info, _rx) = f.mgr.spawn(req("a1", &["sleep", "5"]), &me(), None).await.unwrap();
    let e = f.mgr.spawn(req("a1", &["true"]), &me(), None).await.unwrap_err();
    assert_eq!(e.fault, Fault::Exists);
    assert_eq!(f.kernel.agents.lock().unwrap().len(), 1);
    assert_eq!(f.mgr.list().len(), 1);
    // kill through the fake (which knows no pids) — register the real pid first.
    let pid = f.mgr.status("a1").unwrap().pid;
    f.cgroups.add_pid("a1", pid);
    assert_eq!(f.mgr.kill("a1", &me()).await.unwrap(), 1);
    assert_eq!(f.mgr.status("a1").unwrap().state, AgentState::Exited);
    // The name is free again once the agent has exited.
    let (_i, mut rx) = f.mgr.spawn(req("a1", &["true"]), &me(), None).await.unwrap();
    rx.wait_for(|s| s.is_some()).await.unwrap();
}

/// What the daemon keeps per agent is bounded: a name spawned again, and many names,
/// leave only the newest EXITED_KEPT exited agents and their cgroup ids' names.
#[tokio::test]
async fn exited_agents_state_stays_bounded_over_reused_and_new_names() {
    let f = fixture(enforced());
    for i in 0..EXITED_KEPT + 20 {
        for name in ["same".to_string(), format!("n{i}")] {
            let (_i, mut rx) = f.mgr.spawn(req(&name, &["true"]), &me(), None).await.unwrap();
            rx.wait_for(|s| s.is_some()).await.unwrap();
        }
    }
    let reg = f.mgr.registry();
    assert_eq!(reg.agents.len(), EXITED_KEPT);
    assert_eq!(reg.exited_order.len(), EXITED_KEPT);
    assert_eq!(reg.names.len(), EXITED_KEPT, "a cgroup id's name outlived its agent");
    assert!(reg.agents.contains_key("same"));
}

#[tokio::test]
async fn bad_requests_leave_no_trace() {
    let f = fixture(enforced());
    let cases: Vec<(SpawnRequest, Fault, &str)> = vec![
        (req("bad name", &["true"]), Fault::Invalid, "invalid agent name"),
        (req("a", &[]), Fault::Invalid, "no command"),
        (req("a", &["/nonexistent/prog"]), Fault::Invalid, "cannot run"),
        (
            SpawnRequest { allow: vec!["/srv/a:read".parse().unwrap()], ..req("a", &["true"]) },
            Fault::Unsupported,
            "EPERM",
        ),
        (
            SpawnRequest { cwd: "/nonexistent".into(), ..req("a", &["true"]) },
            Fault::Invalid,
            "working directory",
        ),
        (SpawnRequest { stdio: StdioMode::Passed, ..req("a", &["true"]) }, Fault::Malformed, "SCM_RIGHTS"),
    ];
    for (r, kind, needle) in cases {
        let e = f.mgr.spawn(r.clone(), &me(), None).await.unwrap_err();
        assert_eq!(e.fault, kind, "{r:?}: {e:?}");
        assert!(e.message.contains(needle), "{:?} lacks {needle:?}", e.message);
    }
    assert!(f.kernel.agents.lock().unwrap().is_empty());
    assert!(f.cgroups.cgroups.lock().unwrap().is_empty());
    assert!(f.mgr.list().is_empty());
}

#[tokio::test]
async fn refuses_to_run_unconfined() {
    let f = fixture(Enforcement {
        net: false,
        files: FileBackend::Unavailable("x".into()),
        landlock: Default::default(),
        keys: Default::default(),
    });
    let e = f.mgr.spawn(req("a1", &["true"]), &me(), None).await.unwrap_err();
    assert_eq!(e.fault, Fault::Unsupported);
    assert!(f.mgr.list().is_empty());
}

#[tokio::test]
async fn allow_list_resolves_to_addresses() {
    let p = resolve_net(&"127.0.0.1:80,[::1]:*,localhost:8080,10.0.0.0/8:443".parse().unwrap(), false)
        .await
        .unwrap();
    let KernelNetPolicy::List(l) = p else { panic!() };
    assert!(l.contains(&("127.0.0.1".parse().unwrap(), 32, 80)));
    assert!(l.contains(&("::1".parse().unwrap(), 128, 0)));
    assert!(l.contains(&("10.0.0.0".parse().unwrap(), 8, 443)));
    assert!(l.iter().any(|(ip, len, port)| ip.is_loopback() && *len >= 32 && *port == 8080));
    let e = resolve_net(&"no-such-host.invalid:80".parse().unwrap(), false).await.unwrap_err();
    assert!(e.message.contains("no-such-host.invalid"), "{}", e.message);
    // A prefix on a name, from a request the CLI's parser did not make.
    let bad = NetPolicy::AllowList(vec![rush_proto::NetEndpoint {
        host: "localhost".into(),
        port: 80,
        prefix: Some(8),
    }]);
    let e = resolve_net(&bad, false).await.unwrap_err();
    assert!(e.message.contains("host name"), "{}", e.message);
}

#[tokio::test]
async fn logs_capture_detached_output() {
    let f = fixture(enforced());
    let (_i, mut rx) =
        f.mgr.spawn(req("a1", &["sh", "-c", "echo hello; echo err >&2"]), &me(), None).await.unwrap();
    rx.wait_for(|s| s.is_some()).await.unwrap();
    let (path, _) = f.mgr.log_path("a1").unwrap();
    assert_eq!(std::fs::read_to_string(path).unwrap(), "hello\nerr\n");
}

fn files_enforced() -> Enforcement {
    Enforcement {
        net: true,
        files: FileBackend::BpfLsm,
        landlock: Default::default(),
        keys: Default::default(),
    }
}

#[tokio::test]
async fn allow_confines_the_agent_and_installs_grants_before_it_runs() {
    let f = fixture(files_enforced());
    let dir = tempfile::tempdir().unwrap();
    let allow: FileGrant = format!("{}:read,write:1h", dir.path().display()).parse().unwrap();
    let r = SpawnRequest { allow: vec![allow], ..req("f1", &["sleep", "5"]) };
    let (info, _rx) = f.mgr.spawn(r, &me(), None).await.unwrap();
    assert!(f.kernel.files_confined.lock().unwrap().contains(&info.cgroup_id));
    assert!(info.enforcement.contains(&rush_proto::Enforcement::FilesBpfLsm), "{:?}", info.enforcement);
    let key = crate::core::FileKeys::default().key(dir.path()).unwrap();
    let grants = f.kernel.file_grants.lock().unwrap().clone();
    let entry = grants.get(&(info.cgroup_id, key)).expect("the --allow grant is in the kernel");
    assert!(entry.expires_ns[0] > crate::core::boot_time_ns() && entry.expires_ns[0] < u64::MAX);
    assert_eq!(entry.expires_ns[2], 0, "no exec granted");
    let usr = crate::core::FileKeys::default().key(std::path::Path::new("/usr")).unwrap();
    assert_eq!(grants.get(&(info.cgroup_id, usr)).unwrap().expires_ns[2], u64::MAX, "baseline /usr exec");
    // The detached agent's own log is granted (write) so it can keep writing to it.
    let origins: Vec<&str> =
        f.mgr.capabilities(Some("f1")).unwrap().into_iter().map(|t| t.origin.as_str()).collect();
    assert_eq!(origins, ["baseline", "spawn", "stdio"]);
}

#[tokio::test]
async fn hardlinks_reach_the_kernel_from_the_flag_or_the_trust_level() {
    let policy = "[trust.careful]\nhardlinks = \"refuse\"\n[trust.plain]\n";
    let f = fixture_policy(files_enforced(), Default::default(), policy);
    let dir = tempfile::tempdir().unwrap();
    let allow: FileGrant = format!("{}:read,write", dir.path().display()).parse().unwrap();
    let cases = [
        ("h1", None, None, Hardlinks::Follow),
        ("h2", None, Some(Hardlinks::RefuseWrite), Hardlinks::RefuseWrite),
        ("h3", Some("careful"), None, Hardlinks::Refuse),
        ("h4", Some("careful"), Some(Hardlinks::Follow), Hardlinks::Follow),
        ("h5", Some("plain"), None, Hardlinks::Follow),
    ];
    for (name, trust, flag, want) in cases {
        let r = SpawnRequest {
            allow: vec![allow.clone()],
            trust: trust.map(str::to_owned),
            hardlinks: flag,
            ..req(name, &["sleep", "5"])
        };
        let (info, _rx) = f.mgr.spawn(r, &me(), None).await.unwrap();
        assert_eq!(info.hardlinks, want, "{name}");
        let flags = f.kernel.flags.lock().unwrap()[&info.cgroup_id];
        assert_eq!(flags, AgentFlags { files_confined: true, hardlinks: want }, "{name}");
        assert_eq!(f.mgr.status(name).unwrap().hardlinks, want);
    }
    // Without --allow nothing is file-confined: no mode reaches the kernel.
    let r = SpawnRequest { hardlinks: Some(Hardlinks::Refuse), ..req("h6", &["sleep", "5"]) };
    let (info, _rx) = f.mgr.spawn(r, &me(), None).await.unwrap();
    assert_eq!(info.hardlinks, Hardlinks::Follow);
    assert_eq!(f.kernel.flags.lock().unwrap()[&info.cgroup_id].bits(), 0);
}

#[tokio::test]
async fn landlock_refuses_a_granted_dir_holding_a_linked_file_unless_following() {
    let enforcement = Enforcement {
        net: true,
        files: FileBackend::Landlock,
        landlock: Default::default(),
        keys: Default::default(),
    };
    let f = fixture(enforcement);
    let root = tempfile::tempdir().unwrap();
    let (a, b) = (root.path().join("a"), root.path().join("b"));
    std::fs::create_dir_all(a.join("sub")).unwrap();
    std::fs::create_dir(&b).unwrap();
    std::fs::write(b.join("x"), "secret").unwrap();
    std::fs::hard_link(b.join("x"), a.join("sub/h")).unwrap();
    let rw: FileGrant = format!("{}:read,write", a.display()).parse().unwrap();
    let ro: FileGrant = format!("{}:read", a.display()).parse().unwrap();
    for (mode, grant) in [(Hardlinks::RefuseWrite, &rw), (Hardlinks::Refuse, &ro)] {
        let r = SpawnRequest { allow: vec![grant.clone()], hardlinks: Some(mode), ..req("l1", &["true"]) };
        let e = f.mgr.spawn(r, &me(), None).await.unwrap_err();
        assert_eq!(e.fault, Fault::Unsupported);
        let h = a.join("sub/h");
        assert!(
            e.message.contains(&format!("{} has 2 hard links", h.display()))
                && e.message.contains(&format!("--hardlinks {mode} under Landlock")),
            "{}",
            e.message
        );
    }
    // refuse-write does not look below a read-only grant; a token on the file itself
    // names it.
    let named: FileGrant = format!("{}:read,write", a.join("sub/h").display()).parse().unwrap();
    for (allow, mode) in
        [(vec![ro.clone()], Hardlinks::RefuseWrite), (vec![rw.clone(), named], Hardlinks::Refuse)]
    {
        assert_eq!(
            landlock_link_check(mode, allow.iter().map(|g| (&g.path, g.ops, Origin::Spawn)), &[]),
            Ok(())
        );
    }
    let bound =
        landlock_link_check(Hardlinks::Refuse, [(&PathBuf::from("/usr"), Ops::READ, Origin::Baseline)], &[]);
    assert_eq!(bound, Ok(()), "the baseline is not walked");
}

#[tokio::test]
async fn grant_and_revoke_rewrite_the_kernel_entry() {
    let f = fixture(files_enforced());
    let dir = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let allow: FileGrant = format!("{}:read", dir.path().display()).parse().unwrap();
    let r = SpawnRequest { allow: vec![allow], ..req("g1", &["sleep", "5"]) };
    let (info, _rx) = f.mgr.spawn(r, &me(), None).await.unwrap();
    let key = crate::core::FileKeys::default().key(other.path()).unwrap();
    let entry = |f: &Fixture| f.kernel.file_grants.lock().unwrap().get(&(info.cgroup_id, key)).copied();

    let grant = GrantRequest {
        agent: "g1".into(),
        path: other.path().to_owned(),
        ops: "write,create".parse().unwrap(),
        duration_secs: None,
        condition: None,
    };
    let token = f.mgr.grant(grant.clone(), &me()).await.unwrap().0;
    assert_eq!(entry(&f).unwrap().expires_ns[1], u64::MAX);
    // A second token on the same path, then revoke by path: both go, entry deleted.
    f.mgr.grant(GrantRequest { ops: "read".parse().unwrap(), ..grant.clone() }, &me()).await.unwrap();
    let (gone, _) = f.mgr.revoke("g1", RevokeTarget::Path(other.path().to_owned()), &me()).await.unwrap();
    assert_eq!(gone.len(), 2);
    assert!(gone.iter().any(|t| t.id == token.id));
    assert_eq!(entry(&f), None);
    let e = f.mgr.revoke("g1", RevokeTarget::Id(token.id), &me()).await.unwrap_err();
    assert_eq!(e.fault, Fault::NotFound);
    let e = f
        .mgr
        .grant(GrantRequest { path: "/nonexistent/x".into(), ..grant.clone() }, &me())
        .await
        .unwrap_err();
    assert_eq!(e.fault, Fault::NotFound);
    assert!(e.message.contains("/nonexistent/x"), "{}", e.message);
}

#[tokio::test]
async fn a_write_the_store_refuses_refuses_the_grant_and_reports_the_revoke() {
    let db = tempfile::tempdir().unwrap();
    let store = Arc::new(crate::adapters::store::Store::open(&db.path().join("state.db")).unwrap());
    let f = fixture_stored(files_enforced(), &store);
    let dir = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let allow: FileGrant = format!("{}:read", dir.path().display()).parse().unwrap();
    let r = SpawnRequest { allow: vec![allow], ..req("s1", &["sleep", "60"]) };
    let (info, _rx) = f.mgr.spawn(r, &me(), None).await.unwrap();
    assert_eq!(f.mgr.check_state().problems, Vec::<String>::new());
    let key = crate::core::FileKeys::default().key(other.path()).unwrap();
    let entry = |f: &Fixture| f.kernel.file_grants.lock().unwrap().get(&(info.cgroup_id, key)).copied();
    let grant = GrantRequest {
        agent: "s1".into(),
        path: other.path().to_owned(),
        ops: "write".parse().unwrap(),
        duration_secs: None,
        condition: None,
    };
    let held = f.mgr.tokens.of_agent(info.cgroup_id).len();

    store.refuse_writes(true);
    let e = f.mgr.grant(grant.clone(), &me()).await.unwrap_err();
    assert!(e.message.contains("grant not saved"), "{}", e.message);
    assert_eq!(entry(&f), None, "a grant the store refused never reaches the kernel");
    assert_eq!(f.mgr.tokens.of_agent(info.cgroup_id).len(), held, "nor the daemon's memory");
    // (The fake cgroups cannot kill it: it ends by itself.)
    let e = f.mgr.spawn(req("s2", &["sleep", "1"]), &me(), None).await.unwrap_err();
    assert!(e.message.contains("killed") && e.message.contains("not saved"), "{}", e.message);

    store.refuse_writes(false);
    let token = f.mgr.grant(grant, &me()).await.unwrap().0;
    assert!(entry(&f).is_some());
    assert_eq!(f.mgr.check_state().problems, Vec::<String>::new());
    store.refuse_writes(true);
    let e = f.mgr.revoke("s1", RevokeTarget::Id(token.id), &me()).await.unwrap_err();
    assert!(e.message.contains("lost the access in the kernel now"), "{}", e.message);
    assert_eq!(entry(&f), None, "the revoke holds in the kernel although the store refused it");
    assert_eq!(f.mgr.unsaved_revokes(), 1);
    let problems = f.mgr.check_state().problems;
    assert!(problems.iter().any(|p| p.contains(&format!("token {}", token.id))), "{problems:?}");
    store.refuse_writes(false);
    assert_eq!(f.mgr.unsaved_revokes(), 0, "retried once the store takes writes");
    assert!(store.tokens(info.cgroup_id).unwrap().iter().all(|t| t.id != token.id));
    assert_eq!(f.mgr.check_state().problems, Vec::<String>::new());

    // The kernel map changed behind the daemon's back: the check says so.
    f.kernel.file_grants.lock().unwrap().insert((info.cgroup_id, key), FileGrantEntry::default());
    let problems = f.mgr.check_state().problems;
    assert!(problems.iter().any(|p| p.contains("no token makes")), "{problems:?}");
}

#[tokio::test]
async fn grants_to_unconfined_agents_and_without_lsm_are_refused() {
    let f = fixture(files_enforced());
    let (_i, _rx) = f.mgr.spawn(req("free", &["sleep", "5"]), &me(), None).await.unwrap();
    let grant = GrantRequest {
        agent: "free".into(),
        path: "/tmp".into(),
        ops: Ops::READ,
        duration_secs: None,
        condition: None,
    };
    let e = f.mgr.grant(grant.clone(), &me()).await.unwrap_err();
    assert!(e.message.contains("not file-confined"), "{}", e.message);
    let f = fixture(enforced());
    let e = f.mgr.grant(grant, &me()).await.unwrap_err();
    assert_eq!(e.fault, Fault::Unsupported);
}

/// An agent running a copy of `sleep` from a directory it was granted `ops` on: the
/// program's text is an executable, private mapping of a file there.
async fn mapping_agent(
    f: &Fixture,
    name: &str,
    ops: &str,
    extra: &[FileGrant],
) -> (tempfile::TempDir, watch::Receiver<Option<ExitStatus>>) {
    let dir = tempfile::tempdir().unwrap();
    let sleep = dir.path().join("sleep");
    std::fs::copy("/bin/sleep", &sleep).unwrap();
    let allow: FileGrant = format!("{}:{ops}", dir.path().display()).parse().unwrap();
    let cmd = [sleep.to_str().unwrap(), "30"];
    // Another test's fork may briefly hold the copy's write fd: ETXTBSY, retried.
    let (info, rx) = loop {
        let allow = [std::slice::from_ref(&allow), extra].concat();
        let r = SpawnRequest { allow, ..req(name, &cmd) };
        match f.mgr.spawn(r, &me(), None).await {
            Err(e) if e.message.contains("Text file busy") => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await
            }
            r => break r.unwrap(),
        }
    };
    f.cgroups.add_pid(name, info.pid);
    // Until it has executed the copy, its maps show the daemon's binary.
    for _ in 0..500 {
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", info.pid)).unwrap_or_default();
        if maps.contains(sleep.to_str().unwrap()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    (dir, rx)
}

fn revoke_kills(f: &Fixture) -> Vec<(u32, String, String, TokenChange)> {
    let all = f.mgr.audit.query(&rush_proto::AuditQuery::default()).unwrap();
    all.into_iter()
        .filter_map(|r| match r.event {
            AuditEvent::RevokeKill { pid, path, ops, cause, .. } => Some((pid, path, ops, cause)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn revoke_kills_only_processes_whose_mappings_lost_an_operation() {
    let f = fixture(files_enforced());
    let (dir, mut rx) = mapping_agent(&f, "m1", "read,exec", &[]).await;
    let pid = f.mgr.status("m1").unwrap().pid;
    let grant = |ops: &str| GrantRequest {
        agent: "m1".into(),
        path: dir.path().to_owned(),
        ops: ops.parse().unwrap(),
        duration_secs: None,
        condition: None,
    };
    // Write taken away: the program's mapping is private, nothing it uses is lost.
    let w = f.mgr.grant(grant("write"), &me()).await.unwrap().0;
    f.mgr.revoke("m1", RevokeTarget::Id(w.id), &me()).await.unwrap();
    assert_eq!(*f.cgroups.freezes.lock().unwrap(), ["freeze m1", "thaw m1"]);
    // A second token granting the same: revoking it takes nothing away, no freeze.
    let again = f.mgr.grant(grant("read,exec"), &me()).await.unwrap().0;
    f.mgr.revoke("m1", RevokeTarget::Id(again.id), &me()).await.unwrap();
    assert_eq!(f.cgroups.freezes.lock().unwrap().len(), 2, "nothing lost, nothing frozen");
    assert!(revoke_kills(&f).is_empty());
    assert_eq!(f.mgr.status("m1").unwrap().state, AgentState::Running);

    // Read and exec taken away: the process mapping its program goes.
    f.mgr.revoke("m1", RevokeTarget::Path(dir.path().to_owned()), &me()).await.unwrap();
    let status = rx.wait_for(|s| s.is_some()).await.unwrap().unwrap();
    assert_eq!(status.signal, Some(libc::SIGKILL));
    let path = dir.path().join("sleep").display().to_string();
    assert_eq!(revoke_kills(&f), [(pid, path, "read,exec".into(), TokenChange::Revoke)]);
    assert_eq!(f.cgroups.freezes.lock().unwrap()[2..], ["freeze m1", "thaw m1"]);
}

#[tokio::test]
async fn an_expiring_token_kills_the_processes_mapping_its_files() {
    let f = fixture(files_enforced());
    let started = std::time::Instant::now();
    // Two tokens lapsing together: one freeze for both.
    let other = tempfile::tempdir().unwrap();
    let extra: FileGrant = format!("{}:read:1s", other.path().display()).parse().unwrap();
    let (dir, mut rx) = mapping_agent(&f, "m2", "read,exec:1s", &[extra]).await;
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), rx.wait_for(|s| s.is_some()))
        .await
        .expect("killed at expiry")
        .unwrap()
        .unwrap();
    assert_eq!(status.signal, Some(libc::SIGKILL));
    assert!(started.elapsed() >= std::time::Duration::from_secs(1));
    // The kill is recorded after the enforcement returns, which may be after the exit
    // status arrived (a loaded machine): wait for the record.
    for _ in 0..200 {
        if !revoke_kills(&f).is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let kills = revoke_kills(&f);
    assert_eq!(kills.len(), 1, "{kills:?}");
    assert_eq!(kills[0].1, dir.path().join("sleep").display().to_string());
    assert_eq!(kills[0].3, TokenChange::Expiry);
    // The thaw can come after the exit status: wait for it.
    for _ in 0..100 {
        if f.cgroups.freezes.lock().unwrap().len() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(*f.cgroups.freezes.lock().unwrap(), ["freeze m2", "thaw m2"]);
    assert!(f.mgr.pending_expiries().is_empty());
}

#[tokio::test]
async fn restartable_agents_are_stored_forgotten_at_exit_0_and_refused_in_the_foreground() {
    let db = tempfile::tempdir().unwrap();
    let store = Arc::new(crate::adapters::store::Store::open(&db.path().join("state.db")).unwrap());
    let f = fixture_stored(enforced(), &store);
    let fg = SpawnRequest { restartable: true, stdio: StdioMode::Passed, ..req("fg", &["true"]) };
    let e = f.mgr.spawn(fg, &me(), None).await.unwrap_err();
    assert!(e.message.contains("--restartable") && e.message.contains("--detach"), "{}", e.message);
    let r = SpawnRequest { restartable: true, ..req("r", &["sh", "-c", "sleep 0.3"]) };
    let (info, mut rx) = f.mgr.spawn(r, &me(), None).await.unwrap();
    assert!(info.restartable);
    let stored = store.restartable().unwrap();
    assert_eq!(stored.len(), 1, "written before the spawn is answered");
    assert_eq!((stored[0].pid, stored[0].uid), (info.pid, me().uid));
    assert_eq!(stored[0].request.command, ["sh", "-c", "sleep 0.3"]);
    let status = rx.wait_for(|s| s.is_some()).await.unwrap().unwrap();
    assert_eq!(status.code, Some(0));
    assert!(store.restartable().unwrap().is_empty(), "exit 0: done, not restarted");
    // A non-zero exit keeps it for the next start, and is not restarted meanwhile.
    let r = SpawnRequest { restartable: true, ..req("r2", &["sh", "-c", "exit 3"]) };
    let (_, mut rx) = f.mgr.spawn(r, &me(), None).await.unwrap();
    rx.wait_for(|s| s.is_some()).await.unwrap();
    assert_eq!(store.restartable().unwrap().len(), 1);
    assert_eq!(f.mgr.status("r2").unwrap().state, AgentState::Exited);
}

#[tokio::test]
async fn a_starting_daemon_restarts_what_is_gone_and_fails_closed_on_a_missing_path() {
    let db = tempfile::tempdir().unwrap();
    let store = Arc::new(crate::adapters::store::Store::open(&db.path().join("state.db")).unwrap());
    let f = fixture_stored(files_enforced(), &store);
    let dir = tempfile::tempdir().unwrap();
    let keep = dir.path().join("keep");
    let gone = dir.path().join("gone");
    std::fs::create_dir(&keep).unwrap();
    std::fs::create_dir(&gone).unwrap();
    for (name, path) in [("ok", &keep), ("lost", &gone)] {
        let allow: FileGrant = format!("{}:read", path.display()).parse().unwrap();
        let r = SpawnRequest { restartable: true, allow: vec![allow], ..req(name, &["sleep", "30"]) };
        f.mgr.spawn(r, &me(), None).await.unwrap();
    }
    std::fs::remove_dir(&gone).unwrap();
    // Another daemon on the same store: both are gone from its point of view.
    let g = fixture_stored(files_enforced(), &store);
    assert_eq!(g.mgr.restart_restartable(|_| true).await, 1);
    let ok = g.mgr.status("ok").unwrap();
    assert!(ok.restartable && ok.state == AgentState::Running);
    assert_ne!(ok.pid, f.mgr.status("ok").unwrap().pid, "a new process");
    assert!(g.kernel.files_confined.lock().unwrap().contains(&ok.cgroup_id), "still confined");
    let key = crate::core::FileKeys::default().key(&keep).unwrap();
    assert!(g.kernel.file_grants.lock().unwrap().contains_key(&(ok.cgroup_id, key)));
    assert!(g.mgr.status("lost").is_err(), "never started with fewer tokens");
    let events = audit_kinds(&g);
    assert!(
        events.iter().any(|e| matches!(e, AuditEvent::AgentRestarted { reason, new_pid, .. }
            if *reason == RestartReason::Gone && *new_pid == ok.pid)),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| matches!(e, AuditEvent::RestartFailed { error, .. }
            if error.contains(&*gone.to_string_lossy()))),
        "{events:?}"
    );
    // A session that no longer exists: not started either.
    let h = fixture_stored(files_enforced(), &store);
    let mut rec = store.restartable().unwrap().into_iter().find(|r| r.request.name == "ok").unwrap();
    rec.request.session = Some("s".into());
    store.put_restartable(&rec).unwrap();
    assert_eq!(h.mgr.restart_restartable(|_| false).await, 0);
    // The operator's kill forgets it, also one whose restart failed.
    assert_eq!(g.mgr.kill_by_operator("lost", &me()).await.unwrap(), 0);
    let names: Vec<String> = store.restartable().unwrap().into_iter().map(|r| r.request.name).collect();
    assert_eq!(names, ["ok"]);
    for m in [&f.mgr, &g.mgr] {
        for a in m.list() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(a.pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[test]
fn a_restart_request_keeps_what_is_left_of_timed_grants_and_never_runs_unconfined() {
    let grant = |p: &str, exp| crate::adapters::store::RestartGrant {
        path: p.into(),
        ops: Ops::READ,
        expires_unix_ms: exp,
    };
    let mut rec = crate::adapters::store::RestartRecord {
        request: SpawnRequest { allow_unconfined: true, ..req("a", &["true"]) },
        uid: 0,
        gid: 0,
        groups: vec![],
        grants: vec![grant("/a", None), grant("/b", Some(10_500)), grant("/c", Some(9_000))],
        files_confined: true,
        pid: 1,
    };
    let r = restart_request(&rec, 10_000).unwrap();
    assert!(!r.allow_unconfined && r.restartable && r.stdio == StdioMode::Log);
    let got: Vec<(String, Option<u64>)> =
        r.allow.iter().map(|g| (g.path.display().to_string(), g.ttl_secs)).collect();
    assert_eq!(got, [("/a".to_string(), None), ("/b".to_string(), Some(1))], "/c has expired");
    rec.grants = vec![grant("/c", Some(9_000))];
    let e = restart_request(&rec, 10_000).unwrap_err();
    assert!(e.contains("unconfined"), "{e}");
    rec.files_confined = false;
    assert!(restart_request(&rec, 10_000).unwrap().allow.is_empty());
}

fn audit_kinds(f: &Fixture) -> Vec<AuditEvent> {
    let q = rush_proto::AuditQuery::default();
    f.mgr.audit.query(&q).unwrap().into_iter().map(|r| r.event).collect()
}

fn set_usage(f: &Fixture, name: &str, u: crate::services::budget::CgroupUsage) {
    f.control.usage.lock().unwrap().insert(name.into(), u);
}

#[tokio::test]
async fn a_spent_cpu_budget_freezes_once_and_resume_needs_a_raise() {
    let f = fixture(enforced());
    let mut r = req("cpu1", &["sleep", "30"]);
    r.budget = "cpu:2s,mem:64M".parse().unwrap();
    f.mgr.spawn(r, &me(), None).await.unwrap();
    assert_eq!(f.control.applied.lock().unwrap()["cpu1"].mem_bytes, Some(64 << 20));

    set_usage(
        &f,
        "cpu1",
        crate::services::budget::CgroupUsage { cpu_ns: Some(1_900_000_000), ..Default::default() },
    );
    f.mgr.check_budgets().await;
    assert!(f.cgroups.freezes.lock().unwrap().is_empty(), "not spent yet");
    set_usage(
        &f,
        "cpu1",
        crate::services::budget::CgroupUsage { cpu_ns: Some(2_050_000_000), ..Default::default() },
    );
    f.mgr.check_budgets().await;
    f.mgr.check_budgets().await;
    assert_eq!(*f.cgroups.freezes.lock().unwrap(), ["freeze cpu1"], "frozen exactly once");
    let info = f.mgr.status("cpu1").unwrap();
    assert_eq!(info.paused, [PauseReason::BudgetCpu]);
    let cpu = info.usage.iter().find(|u| u.resource == BudgetResource::Cpu).unwrap();
    assert!(cpu.exceeded && cpu.used == 2050 && cpu.limit == Some(2000));
    assert!(audit_kinds(&f).iter().any(|e| matches!(
        e,
        AuditEvent::BudgetExceeded { resource: BudgetResource::Cpu, used: 2050, limit: 2000, .. }
    )));

    // Without a raise, or with one still used up: refused, still frozen.
    let e = f.mgr.resume("cpu1", None, &me()).await.unwrap_err();
    assert!(e.message.contains("stays frozen") && e.message.contains("--budget cpu:"), "{}", e.message);
    let e = f.mgr.resume("cpu1", Some("cpu:2s".parse().unwrap()), &me()).await.unwrap_err();
    assert_eq!(e.fault, Fault::Invalid);
    assert_eq!(*f.cgroups.freezes.lock().unwrap(), ["freeze cpu1"]);

    let info = f.mgr.resume("cpu1", Some("cpu:4s".parse().unwrap()), &me()).await.unwrap();
    assert!(info.paused.is_empty());
    assert_eq!(info.budget.cpu_ms, Some(4000));
    assert_eq!(info.budget.mem_bytes, Some(64 << 20), "limits not named stay");
    assert_eq!(*f.cgroups.freezes.lock().unwrap(), ["freeze cpu1", "thaw cpu1"]);
    f.mgr.kill("cpu1", &me()).await.unwrap();
}

#[tokio::test]
async fn oom_kills_and_refused_forks_are_audited_once_each() {
    let f = fixture(enforced());
    let mut r = req("hog", &["sleep", "30"]);
    r.budget = "mem:32M,pids:8".parse().unwrap();
    f.mgr.spawn(r, &me(), None).await.unwrap();
    set_usage(
        &f,
        "hog",
        crate::services::budget::CgroupUsage {
            oom_kills: Some(1),
            fork_refusals: Some(5),
            ..Default::default()
        },
    );
    f.mgr.check_budgets().await;
    f.mgr.check_budgets().await;
    set_usage(
        &f,
        "hog",
        crate::services::budget::CgroupUsage {
            oom_kills: Some(3),
            fork_refusals: Some(5),
            ..Default::default()
        },
    );
    f.mgr.check_budgets().await;
    let events = audit_kinds(&f);
    let ooms: Vec<u64> = events
        .iter()
        .filter_map(|e| if let AuditEvent::OomKill { count, .. } = e { Some(*count) } else { None })
        .collect();
    let forks: Vec<u64> = events
        .iter()
        .filter_map(|e| if let AuditEvent::ForkRefused { count, limit: 8 } = e { Some(*count) } else { None })
        .collect();
    assert_eq!(ooms, [1, 2]);
    assert_eq!(forks, [5]);
    f.mgr.kill("hog", &me()).await.unwrap();
}

#[tokio::test]
async fn trust_levels_fill_in_defaults_that_flags_override() {
    let f = fixture(files_enforced());
    let mut r = req("t1", &["sleep", "30"]);
    r.trust = Some("low".into());
    r.net = None;
    r.budget = "mem:2G".parse().unwrap();
    r.allow = vec![FileGrant { path: "/tmp".into(), ops: "read,exec".parse().unwrap(), ttl_secs: None }];
    let (info, _) = f.mgr.spawn(r, &me(), None).await.unwrap();
    assert_eq!(info.trust.as_deref(), Some("low"));
    assert_eq!(info.net, NetPolicy::Deny);
    assert_eq!(info.budget.to_string(), "cpu:10m,mem:2G,pids:128");
    // exec = "system": the agent's own grant lost exec; later exec grants are refused.
    let tmp = f.mgr.capabilities(Some("t1")).unwrap();
    let t = tmp.iter().find(|t| t.path == std::path::Path::new("/tmp")).unwrap();
    assert_eq!(t.ops, Ops::READ);
    let e = f
        .mgr
        .grant(
            GrantRequest {
                agent: "t1".into(),
                path: "/tmp".into(),
                ops: Ops::EXEC,
                duration_secs: None,
                condition: None,
            },
            &me(),
        )
        .await
        .unwrap_err();
    assert!(e.message.contains("exec rule is \"system\""), "{}", e.message);
    let mut r = req("t2", &["true"]);
    r.trust = Some("root".into());
    let e = f.mgr.spawn(r, &me(), None).await.unwrap_err();
    assert!(e.message.contains("unknown trust level \"root\""), "{}", e.message);
    f.mgr.kill("t1", &me()).await.unwrap();
}

#[tokio::test]
async fn budgets_this_machine_cannot_enforce_are_refused() {
    let control = crate::services::budget::fake::FakeControl {
        missing: vec![("mem", "no v1 memory hierarchy".into())],
        ..Default::default()
    };
    let f = fixture_with(enforced(), control);
    let mut r = req("m1", &["true"]);
    r.budget = "mem:1G".parse().unwrap();
    let e = f.mgr.spawn(r, &me(), None).await.unwrap_err();
    assert_eq!(e.fault, Fault::Unsupported);
    assert!(e.message.contains("mem budget: no v1 memory hierarchy"), "{}", e.message);
    let mut r = req("m2", &["true"]);
    r.budget = "pids:10".parse().unwrap();
    assert!(f.mgr.spawn(r, &me(), None).await.is_ok(), "other resources still work");
}

#[tokio::test]
async fn net_and_api_budgets_reach_the_kernel_before_the_agent_runs_and_on_resume() {
    let f = fixture(enforced());
    let mut r = req("n1", &["sleep", "30"]);
    r.budget = "net:1M,api:5".parse().unwrap();
    let (info, _) = f.mgr.spawn(r, &me(), None).await.unwrap();
    let set = f.kernel.budgets.lock().unwrap()[&info.cgroup_id];
    assert_eq!((set.bytes, set.api_calls), (Some(1 << 20), Some(5)));
    f.kernel.usage.lock().unwrap().insert(
        info.cgroup_id,
        crate::adapters::bpf::NetUsage {
            tx_bytes: 600_000,
            rx_bytes: 400_000,
            api_calls: 5,
            dropped_packets: 0,
            refused_calls: 2,
        },
    );
    let s = f.mgr.status("n1").unwrap();
    let line = |r: &str| s.usage.iter().find(|u| u.resource.as_str() == r).unwrap().clone();
    assert_eq!(line("net").used, 1_000_000);
    assert!(!line("net").exceeded);
    assert!(line("api").exceeded, "refused calls mean the budget was hit");
    f.mgr.resume("n1", Some("api:50".parse().unwrap()), &me()).await.unwrap();
    let set = f.kernel.budgets.lock().unwrap()[&info.cgroup_id];
    assert_eq!((set.bytes, set.api_calls), (Some(1 << 20), Some(50)), "raised, the rest kept");
    f.mgr.kill("n1", &me()).await.unwrap();
}

#[test]
fn a_network_policy_reaching_the_meter_upstream_is_spotted() {
    let up: crate::services::meter::Upstream = "http://10.1.2.3:8080".parse().unwrap();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert!(reaches(&KernelNetPolicy::Allow, &up));
    assert!(!reaches(&KernelNetPolicy::Deny, &up));
    assert!(reaches(&KernelNetPolicy::List(vec![(ip("10.0.0.0"), 8, 0)]), &up));
    assert!(reaches(&KernelNetPolicy::List(vec![(ip("10.1.2.3"), 32, 8080)]), &up));
    assert!(!reaches(&KernelNetPolicy::List(vec![(ip("10.1.2.3"), 32, 443)]), &up));
    assert!(!reaches(&KernelNetPolicy::List(vec![(ip("10.2.0.0"), 16, 0)]), &up));
    assert!(!reaches(&KernelNetPolicy::List(vec![(ip("::1"), 128, 0)]), &up));
}
