//! The store's tests: round trips across opens, recovery, boots.

use std::path::{Path, PathBuf};

use rush_proto::{AgentInfo, Ops, SessionInfo, SpawnRequest};
use rusqlite::params;

use super::*;
use crate::core::FileKey;
use crate::core::token::{Condition, Origin, Token};

fn token(id: u64, cgroup_id: u64) -> Token {
    Token {
        id,
        agent: "a".into(),
        cgroup_id,
        path: "/srv/x".into(),
        key: FileKey { dev: 7, ino: 42 },
        mnt_id: 3,
        save_dir: Some(FileKey { dev: 7, ino: 2 }),
        ops: Ops::READ,
        expires: Some((123, 456)),
        granted_unix_ms: 9,
        origin: Origin::Grant,
        condition: Some(Condition {
            command: "true".into(),
            original: "/srv/x".into(),
            worktree: "/srv/.x".into(),
        }),
    }
}

fn info(name: &str, cgroup_id: u64) -> AgentInfo {
    serde_json::from_value(serde_json::json!({
        "name": name, "cgroup_id": cgroup_id, "cgroup_path": "/sys/fs/cgroup/rush/a", "pid": 10,
        "uid": 0, "command": ["sleep"], "net": {"mode": "deny"}, "state": "running", "processes": 1,
        "started_unix_ms": 1, "enforcement": [], "detached": true
    }))
    .unwrap()
}

#[test]
fn agents_and_tokens_round_trip_across_opens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let s = Store::open(&path).unwrap();
        s.put_agent(&AgentRecord { info: info("a", 5), files_confined: true, log_path: None }).unwrap();
        s.put_tokens(&[token(1, 5), token(2, 5), token(3, 6)]).unwrap();
        s.delete_tokens(&[2]).unwrap();
        s.rekey(5, FileKey { dev: 7, ino: 42 }, FileKey { dev: 7, ino: 43 }).unwrap();
    }
    let s = Store::open(&path).unwrap();
    let agents = s.agents().unwrap();
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0].info.name, "a");
    assert!(agents[0].files_confined);
    let t = s.tokens(5).unwrap();
    assert_eq!(t.len(), 1, "token 2 deleted, token 3 is another agent's");
    let mut want = token(1, 5);
    want.key.ino = 43;
    assert_eq!(t[0].key, want.key);
    assert_eq!(t[0].expires, want.expires);
    assert_eq!(t[0].condition, want.condition);
    assert_eq!(t[0].save_dir, want.save_dir);
    assert_eq!(s.max_token_id().unwrap(), 3);
    // Revoking the highest token does not free its id for reuse.
    s.delete_tokens(&[3]).unwrap();
    assert_eq!(s.max_token_id().unwrap(), 3, "a revoked token's id would be given again");
    // An older agent's removal under the name (another cgroup) leaves this one's row.
    s.delete_agent("a", 4).unwrap();
    assert_eq!(s.agents().unwrap().len(), 1, "a removal keyed by an old cgroup id took the new row");
    s.delete_agent("a", 5).unwrap();
    assert!(s.agents().unwrap().is_empty());
    assert!(s.tokens(5).unwrap().is_empty());
}

fn session(name: &str) -> SessionInfo {
    serde_json::from_value(serde_json::json!({
        "name": name, "workspace": "/w", "live": "/s/live", "backend": "git", "timeline": "main",
        "created_unix_ms": 1
    }))
    .unwrap()
}

#[test]
fn session_kv_cwd_and_attachments_round_trip_and_go_with_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let tricky = "line 1\nit's \"quoted\" $x `y` \\ ünï©ødé\0end";
    let att = |pid: i32, session: &str| AttachmentRecord {
        pid,
        start_ticks: 77,
        boot_id: "b".into(),
        session: session.into(),
        uid: 1000,
        since_unix_ms: 5,
        tty: Some("/dev/pts/1".into()),
    };
    {
        let s = Store::open(&path).unwrap();
        for name in ["s", "t"] {
            s.put_session(&session(name)).unwrap();
            assert!(s.put_kv(name, "k", tricky).unwrap());
            assert!(s.put_kv(name, "empty", "").unwrap());
            assert!(s.put_attachment(&att(if name == "s" { 10 } else { 11 }, name)).unwrap());
        }
        assert!(s.put_kv("s", "k2", "old").unwrap());
        assert!(s.put_kv("s", "k2", "new").unwrap());
        assert!(s.put_cwd("s", Path::new("/w/sub dir")).unwrap());
        assert!(!s.put_kv("gone", "k", "v").unwrap(), "a key of no session was stored");
        assert!(!s.put_cwd("gone", Path::new("/")).unwrap());
        assert!(!s.put_attachment(&att(12, "gone")).unwrap());
    }
    let s = Store::open(&path).unwrap();
    let kv = |k: Option<&str>| s.kv("s", k).unwrap();
    assert_eq!(
        kv(None),
        [("empty".into(), "".into()), ("k".into(), tricky.into()), ("k2".into(), "new".into())]
    );
    assert_eq!(kv(Some("k")), [("k".to_string(), tricky.to_string())]);
    assert_eq!(s.kv_keys("s").unwrap(), ["empty", "k", "k2"]);
    assert!(kv(Some("nope")).is_empty());
    assert_eq!(s.delete_kv("s", "k2").unwrap().as_deref(), Some("new"));
    assert_eq!(s.delete_kv("s", "k2").unwrap(), None);
    assert_eq!(s.cwd("s").unwrap(), Some(PathBuf::from("/w/sub dir")));
    assert_eq!(s.attachments(Some("s")).unwrap(), [att(10, "s")]);
    assert_eq!(s.attachments(None).unwrap().len(), 2);
    // The same shell attaching elsewhere moves its attachment.
    s.put_attachment(&att(10, "t")).unwrap();
    assert!(s.attachments(Some("s")).unwrap().is_empty());
    s.put_attachment(&att(10, "s")).unwrap();

    s.delete_session("s").unwrap();
    assert!(s.kv("s", None).unwrap().is_empty(), "kv outlived its session");
    assert_eq!(s.cwd("s").unwrap(), None);
    assert!(s.attachments(Some("s")).unwrap().is_empty());
    assert_eq!(s.kv("t", None).unwrap().len(), 2, "another session's keys went too");
    assert!(s.delete_attachment(&att(11, "t")).unwrap());
    assert!(!s.delete_attachment(&att(11, "t")).unwrap());
}

#[test]
fn a_readable_database_is_left_alone_and_a_damaged_one_moved_aside_and_salvaged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    assert_eq!(recover_if_corrupt(&path).unwrap(), None, "no database yet");
    {
        let s = Store::open(&path).unwrap();
        s.put_session(&session("s1")).unwrap();
        s.put_agent(&AgentRecord { info: info("a", 5), files_confined: true, log_path: None }).unwrap();
        s.put_tokens(&[token(1, 5)]).unwrap();
        // Pages at the end of the file: the audit rows, the damage below hits them.
        let conn = s.lock();
        for i in 0..2000 {
            conn.execute(
                "INSERT INTO audit (time_unix_ms, kind, event) VALUES (?1, 'spawn', ?2)",
                params![i, "x".repeat(200)],
            )
            .unwrap();
        }
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
    }
    assert_eq!(recover_if_corrupt(&path).unwrap(), None, "an intact database is not touched");

    // Damage the last pages (audit's): the sessions, agents and tokens stay readable.
    let len = std::fs::metadata(&path).unwrap().len();
    let mut bytes = std::fs::read(&path).unwrap();
    for b in &mut bytes[(len as usize - 40_000)..(len as usize - 20_000)] {
        *b = 0xa5;
    }
    std::fs::write(&path, &bytes).unwrap();
    let r = recover_if_corrupt(&path).unwrap().expect("damage found");
    assert!(r.moved_to.exists(), "{r:?}");
    assert_eq!(std::fs::read(&r.moved_to).unwrap(), bytes, "the damaged file kept as it was");
    let copied = |t: &str| r.salvaged.iter().find(|(n, _)| n == t).map(|(_, c)| *c);
    assert_eq!(copied("sessions"), Some(1), "{r:?}");
    assert_eq!(copied("tokens"), Some(1), "{r:?}");
    assert!(copied("audit").unwrap_or(0) < 2000, "some audit rows were lost: {r:?}");
    let s = Store::open(&path).unwrap();
    assert_eq!(s.sessions().unwrap().len(), 1);
    assert_eq!(s.agents().unwrap().len(), 1, "same boot: the agent record is kept");
    assert_eq!(s.tokens(5).unwrap().len(), 1);
    drop(s);
    assert_eq!(recover_if_corrupt(&path).unwrap(), None, "the new database is whole");

    // Not a database at all: moved aside, a new empty one.
    std::fs::write(&path, b"this is not an SQLite database, not even close..........").unwrap();
    let _ = std::fs::remove_file(dir.path().join("state.db-wal"));
    let r = recover_if_corrupt(&path).unwrap().expect("damage found");
    assert!(r.why.contains("not a database"), "{r:?}");
    let s = Store::open(&path).unwrap();
    assert!(s.sessions().unwrap().is_empty());
}

#[test]
fn restartable_agents_outlive_a_boot_until_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let request: SpawnRequest = serde_json::from_value(serde_json::json!({
        "name": "r", "command": ["sleep", "9"], "cwd": "/", "stdio": "log", "restartable": true
    }))
    .unwrap();
    let rec = RestartRecord {
        request,
        uid: 1000,
        gid: 1000,
        groups: vec![27],
        grants: vec![RestartGrant { path: "/srv/w".into(), ops: Ops::READ, expires_unix_ms: Some(5) }],
        files_confined: true,
        pid: 77,
    };
    {
        let s = Store::open(&path).unwrap();
        assert!(!s.from_earlier_boot());
        s.put_restartable(&rec).unwrap();
        s.lock().execute("UPDATE meta SET value = 'another-boot' WHERE key = 'boot_id'", []).unwrap();
    }
    let s = Store::open(&path).unwrap();
    assert!(s.from_earlier_boot());
    assert_eq!(s.restartable().unwrap(), vec![rec]);
    s.delete_restartable("r").unwrap();
    assert!(s.restartable().unwrap().is_empty());
}

#[test]
fn a_store_from_another_boot_is_emptied_and_a_newer_schema_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let s = Store::open(&path).unwrap();
        s.put_tokens(&[token(1, 5)]).unwrap();
        s.put_agent(&AgentRecord { info: info("b", 5), files_confined: true, log_path: None }).unwrap();
        s.lock().execute("UPDATE meta SET value = 'another-boot' WHERE key = 'boot_id'", []).unwrap();
    }
    let s = Store::open(&path).unwrap();
    assert!(s.tokens(5).unwrap().is_empty());
    assert!(s.from_earlier_boot());
    let gone: Vec<String> = s.take_earlier_boot_agents().into_iter().map(|a| a.name).collect();
    assert_eq!(gone, ["b"], "the earlier boot's agents, for the audit trail");
    assert!(s.agents().unwrap().is_empty());
    s.lock().pragma_update(None, "user_version", 99).unwrap();
    drop(s);
    let e = Store::open(&path).err().unwrap().to_string();
    assert!(e.contains("99") && e.contains("newer"), "{e}");
}
