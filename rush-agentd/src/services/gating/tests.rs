use std::sync::Arc;

use rush_proto::approval::{ActionClass, ApprovalOrigin, Channel, OnTimeout, Priority};
use rush_proto::{Ops, gate::DecidedBy};

use super::*;

/// Agents and sessions as a test sets them: agent `coder` (trust low, a token on /w, in
/// session s whose workspace is /w) and `admin` (trust high, no session).
struct Context;

impl GatingContext for Context {
    fn agent(&self, name: &str) -> Option<AgentContext> {
        match name {
            "coder" => Some(AgentContext {
                session: Some("s".into()),
                trust: Some("low".into()),
                tokens: vec![rush_gate::Token { path: "/w".into(), ops: Ops(Ops::READ.0 | Ops::WRITE.0) }],
            }),
            "admin" => Some(AgentContext { session: None, trust: Some("high".into()), tokens: Vec::new() }),
            _ => None,
        }
    }
    fn workspace(&self, session: &str) -> Option<PathBuf> {
        (session == "s").then(|| PathBuf::from("/w"))
    }
    fn session_at(&self, cwd: &Path) -> Option<(String, PathBuf)> {
        cwd.starts_with("/w").then(|| ("s".to_owned(), PathBuf::from("/w")))
    }
}

struct Fixture {
    g: Gating,
    _dir: tempfile::TempDir,
}

fn fixture_with(config: GatingConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let store = Arc::new(Store::open(&db).unwrap());
    let g = Gating::new(GatingSetup {
        store,
        audit: Arc::new(AuditLog::open(&db).unwrap()),
        context: Arc::new(Context),
        policy: config.policy().unwrap(),
        config,
    })
    .unwrap();
    Fixture { g, _dir: dir }
}

fn fixture() -> Fixture {
    fixture_with(GatingConfig::default())
}

const OPERATOR: Asker<'static> = Asker::Operator { uid: 0 };

fn req(command: &str, cwd: &str) -> AssessRequest {
    AssessRequest { command: command.into(), cwd: cwd.into(), agent: None, trust: None }
}

#[test]
fn an_agent_is_judged_at_its_own_trust_whatever_it_asks_for() {
    let f = fixture();
    let mut r = req("git status", "/w");
    r.trust = Some("high".into());
    let a = f.g.assess(Asker::Agent { name: "coder" }, &r).unwrap();
    assert_eq!(a.trust, "low");
    assert_eq!(a.workspace.as_deref(), Some(Path::new("/w")));
    // The operator may judge as it, and at another level.
    let mut r = req("git status", "/elsewhere");
    r.agent = Some("coder".into());
    assert_eq!(f.g.assess(OPERATOR, &r).unwrap().trust, "low");
    r.trust = Some("high".into());
    assert_eq!(f.g.assess(OPERATOR, &r).unwrap().trust, "high");
    // Alone, the operator's cwd decides the session; the default trust applies.
    let a = f.g.assess(OPERATOR, &req("ls", "/w/src")).unwrap();
    assert_eq!((a.trust.as_str(), a.workspace.as_deref()), ("medium", Some(Path::new("/w"))));
    let a = f.g.assess(OPERATOR, &req("ls", "/tmp")).unwrap();
    assert_eq!(a.workspace, None);
}

#[test]
fn bad_input_is_refused_naming_it() {
    let f = fixture();
    for (r, fault, words) in [
        (req("", "/w"), Fault::Invalid, "empty"),
        (req("ls\0x", "/w"), Fault::Invalid, "NUL"),
        (req("ls", "relative"), Fault::Invalid, "not an absolute path"),
        (AssessRequest { agent: Some("ghost".into()), ..req("ls", "/w") }, Fault::NotFound, "ghost"),
    ] {
        let e = f.g.assess(OPERATOR, &r).unwrap_err();
        assert_eq!(e.fault, fault, "{e}");
        assert!(e.message.contains(words), "{e}");
    }
    let long = "x".repeat(rush_proto::gate::MAX_COMMAND + 1);
    assert!(f.g.assess(OPERATOR, &req(&long, "/w")).unwrap_err().message.contains("limit"));
}

#[test]
fn a_rollback_right_after_a_failed_command_is_learned_once_in_its_session() {
    let f = fixture();
    let cmd = "make migrate";
    let rec = |exit| ExecutionRecord {
        command: cmd.into(),
        cwd: "/w".into(),
        agent: None,
        exit_code: Some(exit),
        decision: GateDecision::Allow,
    };
    assert!(f.g.record(OPERATOR, 0, rec(2)).unwrap().is_empty());
    let g = f.g.rolled_back("s", "before").expect("learned");
    assert_eq!((g.decision, g.source), (GateDecision::Ask, GuardrailSource::Rollback));
    assert_eq!(g.scope, GuardrailScope::Session { session: "s".into() });
    assert!(g.because.contains("exit 2") && g.because.contains("before"), "{}", g.because);
    assert_eq!(g.audit_ids.len(), 1);
    // The same lesson again: the same guardrail, not a second one.
    f.g.record(OPERATOR, 0, rec(2)).unwrap();
    assert!(f.g.rolled_back("s", "before").is_none());
    assert_eq!(f.g.list().unwrap().len(), 1);
    // In the session it asks; elsewhere the rules alone decide.
    let a = f.g.assess(OPERATOR, &req(cmd, "/w")).unwrap();
    assert_eq!(
        (a.decision, a.decided_by, a.guardrail),
        (GateDecision::Ask, DecidedBy::Guardrail, Some(g.id))
    );
    assert_ne!(f.g.assess(OPERATOR, &req(cmd, "/tmp")).unwrap().decided_by, DecidedBy::Guardrail);
    // A rollback with no command before it in that session teaches nothing.
    assert!(f.g.rolled_back("other", "x").is_none());
    // Removed: gone, and its removal refused twice.
    f.g.remove(g.id, 0).unwrap();
    assert!(f.g.list().unwrap().is_empty());
    assert_eq!(f.g.remove(g.id, 0).unwrap_err().fault, Fault::NotFound);
}

#[test]
fn learning_off_keeps_only_what_a_person_says() {
    let f = fixture_with(GatingConfig { learn: false, ..GatingConfig::default() });
    f.g.record(
        OPERATOR,
        0,
        ExecutionRecord {
            command: "make migrate".into(),
            cwd: "/w".into(),
            agent: None,
            exit_code: Some(1),
            decision: GateDecision::Allow,
        },
    )
    .unwrap();
    assert!(f.g.rolled_back("s", "before").is_none());
    let rejected = command_approval(ApprovalState::Rejected);
    assert!(f.g.approval_decided(&rejected, None, None, "uid:0").is_none());
    assert!(f.g.approval_decided(&rejected, Some(GateDecision::Deny), None, "uid:0").is_some());
}

fn command_approval(state: ApprovalState) -> Approval {
    Approval {
        id: 9,
        agent: "coder".into(),
        session: Some("s".into()),
        origin: ApprovalOrigin::Agent,
        action: "force push".into(),
        detail: ApprovalDetail::Command {
            argv: vec!["git".into(), "push".into(), "--force".into(), "origin".into(), "main".into()],
            cwd: Some("/w".into()),
        },
        class: ActionClass::Command,
        priority: Priority::Medium,
        effective_priority: Priority::Medium,
        raised_because: None,
        risk_score: None,
        tags: Vec::new(),
        batch_key: "command:git push".into(),
        channel: Channel::Cli { blocking: false },
        created_unix_ms: 0,
        deadline_unix_ms: 1,
        on_timeout: OnTimeout::Reject,
        escalated: false,
        freeze: false,
        delivered_unix_ms: None,
        state,
        decision: None,
    }
}

#[test]
fn a_persons_always_and_never_on_a_command_approval_become_guardrails() {
    let f = fixture();
    let as_coder = |cmd: &str| {
        let mut r = req(cmd, "/w");
        r.agent = Some("coder".into());
        f.g.assess(OPERATOR, &r).unwrap()
    };
    let before = as_coder("git push --force origin main");
    assert_ne!(before.decision, GateDecision::Allow, "{before:?}");
    let approved = command_approval(ApprovalState::Approved);
    // Approved without "always": nothing learned.
    assert!(f.g.approval_decided(&approved, None, None, "uid:0").is_none());
    let g = f.g.approval_decided(&approved, Some(GateDecision::Allow), None, "uid:0").unwrap();
    assert_eq!((g.source, g.decision), (GuardrailSource::Human, GateDecision::Allow));
    assert_eq!(g.scope, GuardrailScope::Session { session: "s".into() });
    let after = as_coder("git push --force origin main");
    assert_eq!((after.decision, after.decided_by), (GateDecision::Allow, DecidedBy::Guardrail), "{after:?}");
    // A rejection teaches "ask first", globally when asked so; "never" denies.
    let rejected = command_approval(ApprovalState::Rejected);
    let g = f.g.approval_decided(&rejected, None, Some(GuardrailScope::Global), "uid:0").unwrap();
    assert_eq!((g.source, g.decision), (GuardrailSource::Rejection, GateDecision::Ask));
    let never =
        f.g.approval_decided(&rejected, Some(GateDecision::Deny), Some(GuardrailScope::Global), "uid:0");
    // Same scope and pattern as the rejection's: learned once, the first lesson kept.
    assert!(never.is_none());
    // Other kinds of request teach nothing.
    let mut custom = command_approval(ApprovalState::Rejected);
    custom.detail = ApprovalDetail::Custom { text: "x".into() };
    assert!(f.g.approval_decided(&custom, Some(GateDecision::Deny), None, "uid:0").is_none());
}

#[test]
fn imports_are_checked_whole_and_kept_once() {
    let f = fixture();
    let spec = |pattern: &str, decision| GuardrailSpec {
        pattern: pattern.into(),
        decision,
        scope: GuardrailScope::Global,
        because: String::new(),
    };
    let (added, existing) =
        f.g.import(
            vec![spec("git push --force *", GateDecision::Deny), spec("make deploy*", GateDecision::Ask)],
            0,
        )
        .unwrap();
    assert_eq!((added.len(), existing.len()), (2, 0));
    let (added, existing) = f.g.import(vec![spec("git push --force *", GateDecision::Deny)], 0).unwrap();
    assert_eq!((added.len(), existing.len()), (0, 1));
    for bad in ["", "*", " * ", "ls\u{1b}[2J"] {
        let e =
            f.g.import(vec![spec("ok", GateDecision::Ask), spec(bad, GateDecision::Deny)], 0).unwrap_err();
        assert!(e.message.starts_with("guardrails[1]"), "{bad:?}: {e}");
    }
    assert_eq!(f.g.list().unwrap().len(), 2, "a bad import adds nothing");
    let a = f.g.assess(OPERATOR, &req("cd /tmp && git push --force origin main", "/tmp")).unwrap();
    assert_eq!((a.decision, a.decided_by), (GateDecision::Deny, DecidedBy::Guardrail));
}

#[test]
fn a_command_approval_is_scored_where_its_agent_is() {
    let f = fixture();
    let argv: Vec<String> = ["bash", "-c", "rm -rf /w/build"].map(String::from).to_vec();
    let (score, tags) = f.g.score("coder", &argv, Some(Path::new("/w"))).unwrap();
    assert!(score > 0, "{tags:?}");
    assert!(tags.iter().any(|t| t == "fs.delete.recursive"), "{tags:?}");
    assert!(f.g.score("ghost", &argv, None).is_none());
    assert_eq!(command_line(&["echo".into(), "it's".into(), "a b".into()]), r#"echo 'it'\''s' 'a b'"#);
}

#[test]
fn a_rules_file_that_fails_its_own_examples_stops_the_gate_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = GatingConfig { rules: Some(dir.path().join("none.toml")), ..GatingConfig::default() };
    assert!(missing.policy().unwrap_err().contains("none.toml"));
    let bad_trust = GatingConfig { default_trust: Some("paranoid".into()), ..GatingConfig::default() };
    let dir2 = tempfile::tempdir().unwrap();
    let db = dir2.path().join("state.db");
    let e = Gating::new(GatingSetup {
        store: Arc::new(Store::open(&db).unwrap()),
        audit: Arc::new(AuditLog::open(&db).unwrap()),
        context: Arc::new(Context),
        policy: bad_trust.policy().unwrap(),
        config: bad_trust,
    })
    .err()
    .unwrap();
    assert!(e.contains("paranoid"), "{e}");
    assert!(GatingConfig { denial_storm: 1, ..GatingConfig::default() }.check().is_err());
}
