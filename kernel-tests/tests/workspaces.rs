//! Agent workspaces on the real daemon (host tier): real git repositories made here, git
//! worktrees made by the daemon, agents committing in them under their tokens (Landlock on
//! the host), the merge queue merging, refusing, testing, and resuming after a kill -9.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kernel_tests::*;
use rush_proto::client::Client;
use serde_json::Value;

fn ready() -> bool {
    require(is_root(), "root (these tests start the daemon and agents)")
}

/// A daemon; in the guests (the VM tier runs the agent tests) one whose BPF LSM attached:
/// there the workspace's tokens are proven in the kernel, and without it the run fails.
fn daemon() -> Daemon {
    let d = Daemon::start();
    if Path::new("/payload/run").exists() && strict() {
        assert!(d.lsm_attached(), "BPF LSM must attach in the guests: {}", d.doctor());
    }
    d
}

/// `git -C dir ARGS`, which must succeed: its stdout, trimmed.
fn git(dir: &Path, args: &[&str]) -> String {
    // safe.directory: some repositories here are another user's.
    let out =
        Command::new("git").args(["-c", "safe.directory=*", "-C"]).arg(dir).args(args).output().unwrap();
    assert!(out.status.success(), "git {args:?} in {}: {}", dir.display(), describe(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A repository with one commit on `main`: a.txt, shared.txt, a .gitignore for target/
/// and .env, and .rushinclude naming .env.
fn repo() -> (tempfile::TempDir, PathBuf) {
    // Not /tmp: agents get a private one, and the guests' is RAM.
    let base = if Path::new("/var/tmp").is_dir() { PathBuf::from("/var/tmp") } else { std::env::temp_dir() };
    let dir = tempfile::Builder::new().prefix("rush-ws-").tempdir_in(base).unwrap();
    let r = dir.path().join("repo");
    std::fs::create_dir(&r).unwrap();
    git(&r, &["init", "-q", "-b", "main"]);
    git(&r, &["config", "user.name", "Tester"]);
    git(&r, &["config", "user.email", "tester@example.com"]);
    std::fs::write(r.join("a.txt"), "a\n").unwrap();
    std::fs::write(r.join("shared.txt"), "line 1\nline 2\nline 3\n").unwrap();
    std::fs::write(r.join(".gitignore"), "target/\n.env\nnode_modules/\n").unwrap();
    std::fs::write(r.join(".rushinclude"), ".env\n").unwrap();
    git(&r, &["add", "."]);
    git(&r, &["commit", "-qm", "initial"]);
    (dir, r)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs rush expecting a failure: its stderr.
fn refused(d: &Daemon, args: &[&str]) -> String {
    let out = d.rush(args);
    assert!(!out.status.success(), "rush {args:?} should fail: {}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    err
}

/// A commit in workspace `ws` (as the operator would, or an agent did).
fn commit_in(ws: &Path, file: &str, text: &str, msg: &str) -> String {
    std::fs::write(ws.join(file), text).unwrap();
    git(ws, &["add", file]);
    git(ws, &["commit", "-qm", msg]);
    git(ws, &["rev-parse", "HEAD"])
}

fn create(d: &Daemon, repo: &Path, name: &str) -> PathBuf {
    let w = d.rush_json(&["agent", "workspace", "create", name, "--repo", s(repo)]);
    PathBuf::from(w["workspace"]["path"].as_str().unwrap())
}

#[test]
fn create_copies_included_files_clones_build_state_and_leaves_the_main_tree_clean() {
    if !ready() {
        return;
    }
    let d = Daemon::start();
    let (_t, r) = repo();
    std::fs::write(r.join(".env"), "SECRET=1\n").unwrap();
    std::fs::write(r.join("notes.txt"), "untracked, not included\n").unwrap();
    std::fs::create_dir_all(r.join("target/debug")).unwrap();
    let big: Vec<u8> = (0..(1u32 << 20)).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(r.join("target/debug/app"), &big).unwrap();
    std::fs::create_dir_all(r.join("web/node_modules/x")).unwrap();
    std::fs::write(r.join("web/node_modules/x/index.js"), "module.exports = 1\n").unwrap();

    let out = d.rush(&["--json", "agent", "workspace", "create", "w1", "--repo", s(&r)]);
    assert!(out.status.success(), "{}", describe(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let w = &v["workspace"];
    let ws = PathBuf::from(w["path"].as_str().unwrap());
    assert_eq!(ws, r.join(".rush/workspaces/w1"));
    assert_eq!(w["branch"], "rush/w1");
    assert_eq!(git(&ws, &["rev-parse", "--abbrev-ref", "HEAD"]), "rush/w1");
    assert_eq!(std::fs::read(ws.join(".env")).unwrap(), b"SECRET=1\n", ".rushinclude file copied");
    assert_eq!(std::fs::read(ws.join("target/debug/app")).unwrap(), big, "build state cloned");
    assert!(ws.join("web/node_modules/x/index.js").exists(), "a nested build directory cloned");
    assert!(!ws.join("notes.txt").exists(), "an untracked file not in .rushinclude was copied");
    let cloned: Vec<&str> =
        w["state"]["cloned"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert_eq!(cloned, ["target", "web/node_modules"], "{w}");
    let method = w["state"]["method"].as_str().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    match method {
        "reflink" => assert!(!err.contains("copied, not cloned"), "{err}"),
        "copy" => assert!(err.contains("copied, not cloned") && err.contains("target"), "no warning: {err}"),
        other => panic!("method {other}"),
    }
    // The main tree stays clean: .rush/ is excluded locally, not in .gitignore.
    assert_eq!(git(&r, &["status", "--porcelain"]), "?? notes.txt");
    assert!(!std::fs::read_to_string(r.join(".gitignore")).unwrap().contains(".rush"));

    // --no-state leaves both out.
    let w2 = d.rush_json(&["agent", "workspace", "create", "w2", "--repo", s(&r), "--no-state"]);
    let ws2 = PathBuf::from(w2["workspace"]["path"].as_str().unwrap());
    assert!(ws2.join("a.txt").exists() && !ws2.join(".env").exists() && !ws2.join("target").exists());
    assert_eq!(w2["workspace"]["state"]["method"], "none");

    // Listed with its state.
    commit_in(&ws, "b.txt", "b\n", "b");
    std::fs::write(ws.join("wip.txt"), "x").unwrap();
    let list = d.rush_json(&["agent", "workspace", "list"]);
    let one = list.as_array().unwrap().iter().find(|w| w["name"] == "w1").unwrap();
    assert_eq!(one["status"]["ahead"], 1, "{one}");
    assert_eq!(one["status"]["behind"], 0);
    assert_eq!(one["status"]["dirty"], 1);
    assert_eq!(one["status"]["merged"], false);
    assert!(one["status"]["size_bytes"].as_u64().unwrap() >= 1 << 20, "{one}");
    let text = d.rush(&["agent", "workspace", "list"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.lines().next().unwrap().starts_with("NAME") && text.contains("rush/w1"), "{text}");
}

#[test]
fn an_agent_commits_in_its_workspace_and_cannot_write_the_main_checkout() {
    if !ready() {
        return;
    }
    let d = daemon();
    let (_t, r) = repo();
    let script = format!(
        "echo agent > agent.txt && git add agent.txt && git commit -qm 'by the agent' && echo committed; \
         echo x > {main}/escape.txt && echo ESCAPED; echo y >> {main}/a.txt && echo ESCAPED-A; true",
        main = s(&r)
    );
    let out = d
        .rush_cmd(&["agent", "spawn", "coder", "--workspace", "--", "/bin/sh", "-c", &script])
        .current_dir(&r)
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{said}");
    assert!(said.contains("committed"), "the agent could not commit: {said}");
    assert!(!said.contains("ESCAPED"), "the agent wrote the main checkout: {said}");
    assert!(!r.join("escape.txt").exists());
    assert_eq!(std::fs::read_to_string(r.join("a.txt")).unwrap(), "a\n");
    let ws = r.join(".rush/workspaces/coder");
    assert_eq!(git(&r, &["log", "-1", "--format=%s", "rush/coder"]), "by the agent");
    assert_eq!(git(&ws, &["status", "--porcelain"]), "");
    // Its tokens are the workspace's, exactly.
    let w = d.rush_json(&["agent", "workspace", "list"]);
    let grants: Vec<String> =
        w[0]["grants"].as_array().unwrap().iter().map(|g| g["path"].as_str().unwrap().to_owned()).collect();
    assert!(grants.contains(&s(&ws).to_owned()) && grants.contains(&s(&r).to_owned()), "{grants:?}");
    // The branch is merged through the queue; the main tree fast-forwards.
    let m = d.rush_json(&["agent", "workspace", "merge", "coder"]);
    assert_eq!(m["state"], "merged", "{m}");
    assert_eq!(std::fs::read_to_string(r.join("agent.txt")).unwrap(), "agent\n");
    assert_eq!(git(&r, &["status", "--porcelain"]), "");
}

/// What an agent in a workspace might try against the repository and the daemon: move
/// main, empty the shared object store, plant a hook or config, and point its worktree's
/// `.git` at a repository whose config makes git run a command (`core.fsmonitor`) when the
/// daemon looks at the worktree as the repository's owner.
#[test]
fn an_agent_cannot_move_main_empty_the_objects_plant_a_hook_or_redirect_its_git_dir() {
    if !ready() {
        return;
    }
    let d = daemon();
    let (t, r) = repo();
    let common = r.join(".git");
    let marker = t.path().join("pwned");
    let main_before = git(&r, &["rev-parse", "main"]);
    let objects_before = git(&r, &["count-objects"]);
    let script = format!(
        r#"git update-ref refs/heads/main HEAD 2>/dev/null && echo MOVED-MAIN
git branch -f main HEAD 2>/dev/null && echo MOVED-MAIN-2
rm -rf {common}/objects/* 2>/dev/null; ls {common}/objects | grep -q info || echo EMPTIED
echo 'touch {marker}' > {common}/hooks/post-merge 2>/dev/null && echo HOOK
printf '[core]\n\tfsmonitor = /bin/true\n' >> {common}/config 2>/dev/null && echo CONFIG
git init -q evil && printf '#!/bin/sh\ntouch {marker}\n' > fsm.sh && chmod +x fsm.sh
git -C evil config core.fsmonitor "$PWD/fsm.sh"
printf 'gitdir: %s/evil/.git\n' "$PWD" > .git && echo REDIRECTED
true"#,
        common = s(&common),
        marker = s(&marker)
    );
    let out = d
        .rush_cmd(&["agent", "spawn", "mallory", "--workspace", "--", "/bin/sh", "-c", &script])
        .current_dir(&r)
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{said}");
    for bad in ["MOVED-MAIN", "EMPTIED", "HOOK", "CONFIG"] {
        assert!(!said.contains(bad), "the agent could: {bad}\n{said}");
    }
    assert!(said.contains("REDIRECTED"), "its own .git file is its to write: {said}");
    assert_eq!(git(&r, &["rev-parse", "main"]), main_before);
    assert_eq!(git(&r, &["count-objects"]), objects_before);
    assert!(!common.join("hooks/post-merge").exists());
    // The daemon looks at the worktree (list: dirty count; remove: the same check) with
    // the git directory it recorded, not the one the agent wrote.
    let list = d.rush_json(&["agent", "workspace", "list"]);
    assert_eq!(list[0]["name"], "mallory", "{list}");
    let err = refused(&d, &["agent", "workspace", "remove", "mallory"]);
    assert!(err.contains("uncommitted"), "{err}");
    assert!(!marker.exists(), "the daemon ran the agent's fsmonitor command as the owner");
    // The attack is real: git run the way the worktree's .git file says runs it.
    let _ = Command::new("git").arg("-C").arg(r.join(".rush/workspaces/mallory")).arg("status").output();
    assert!(marker.exists(), "this test's attack did not work against plain git: it proves nothing");
}

#[test]
fn two_workspaces_one_merges_clean_the_other_conflicts_and_nothing_is_lost() {
    if !ready() {
        return;
    }
    let d = Daemon::start();
    let (_t, r) = repo();
    let wa = create(&d, &r, "alpha");
    let wb = create(&d, &r, "beta");
    commit_in(&wa, "shared.txt", "line 1\nALPHA\nline 3\n", "alpha edits line 2");
    commit_in(&wa, "alpha.txt", "alpha\n", "alpha adds a file");
    let beta_tip = commit_in(&wb, "shared.txt", "line 1\nBETA\nline 3\n", "beta edits line 2");

    let m = d.rush_json(&["agent", "workspace", "merge", "alpha", "--strategy", "merge"]);
    assert_eq!(m["state"], "merged", "{m}");
    let merged = git(&r, &["rev-parse", "main"]);
    assert_eq!(m["commit"], merged.as_str());
    assert_eq!(git(&r, &["log", "-1", "--format=%P", "main"]).split(' ').count(), 2, "a merge commit");
    assert_eq!(std::fs::read_to_string(r.join("shared.txt")).unwrap(), "line 1\nALPHA\nline 3\n");

    let out = d.rush(&["--json", "agent", "workspace", "merge", "beta"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let m: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(m["state"], "conflict", "{m}");
    assert_eq!(m["conflicts"], serde_json::json!(["shared.txt"]));
    let text = d.rush(&["agent", "workspace", "merge", "beta"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("conflict: shared.txt"), "{}", describe(&text));
    // Nothing moved, nothing lost: main where it was, beta's branch and tree as they were.
    assert_eq!(git(&r, &["rev-parse", "main"]), merged);
    assert_eq!(git(&r, &["rev-parse", "rush/beta"]), beta_tip);
    assert_eq!(std::fs::read_to_string(wb.join("shared.txt")).unwrap(), "line 1\nBETA\nline 3\n");
    assert_eq!(git(&wb, &["status", "--porcelain"]), "");
    assert_eq!(git(&r, &["status", "--porcelain"]), "");
    assert!(!git(&r, &["worktree", "list"]).contains(".rush/merges"), "a scratch worktree was left");

    // Squash and rebase land one linear history each.
    let wc = create(&d, &r, "gamma");
    commit_in(&wc, "g1.txt", "1\n", "g1");
    commit_in(&wc, "g2.txt", "2\n", "g2");
    let before = git(&r, &["rev-parse", "main"]);
    let m = d.rush_json(&["agent", "workspace", "merge", "gamma", "--strategy", "squash"]);
    assert_eq!(m["state"], "merged", "{m}");
    assert_eq!(git(&r, &["rev-parse", "main~1"]), before, "one squashed commit");
    assert!(r.join("g1.txt").exists() && r.join("g2.txt").exists());
    let wd = create(&d, &r, "delta");
    commit_in(&wd, "d1.txt", "1\n", "d1");
    commit_in(&wd, "d2.txt", "2\n", "d2");
    let before = git(&r, &["rev-parse", "main"]);
    let m = d.rush_json(&["agent", "workspace", "merge", "delta", "--strategy", "rebase"]);
    assert_eq!(m["state"], "merged", "{m}");
    assert_eq!(git(&r, &["rev-parse", "main~2"]), before, "two commits replayed");
    assert_eq!(git(&r, &["log", "-1", "--format=%s", "main"]), "d2");
    // Squashed and rebased workspaces count as merged: removable, their branch deleted.
    let removed = d.rush_json(&["agent", "workspace", "remove", "gamma"]);
    assert_eq!(removed[0]["branch_deleted"], true, "{removed}");
    // Audited: each made, merged, stopped and removed.
    let actions: Vec<(String, String)> = d
        .audit()
        .into_iter()
        .filter(|r| r["event"]["kind"] == "workspace")
        .map(|r| {
            (
                r["event"]["name"].as_str().unwrap().to_owned(),
                r["event"]["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for want in [("alpha", "created"), ("alpha", "merged"), ("beta", "merge_stopped"), ("gamma", "removed")] {
        assert!(actions.iter().any(|(n, a)| n == want.0 && a == want.1), "{want:?} not in {actions:?}");
    }
}

#[test]
fn a_failing_test_is_not_merged_and_its_output_is_reported() {
    if !ready() {
        return;
    }
    let d = Daemon::start();
    let (_t, r) = repo();
    let ws = create(&d, &r, "tested");
    commit_in(&ws, "feature.txt", "feature\n", "feature");
    let before = git(&r, &["rev-parse", "main"]);
    let out = d.rush(&[
        "--json",
        "agent",
        "workspace",
        "merge",
        "tested",
        "--test",
        "echo checking feature; test -f nothing.txt || { echo boom; exit 3; }",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let m: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(m["state"], "test_failed", "{m}");
    assert_eq!(m["test_exit"], 3);
    let tail = m["test_tail"].as_str().unwrap();
    assert!(tail.contains("checking feature") && tail.contains("boom"), "{tail}");
    assert_eq!(git(&r, &["rev-parse", "main"]), before, "a failed test moved main");
    assert!(!r.join("feature.txt").exists());
    // The test runs in the merged tree, confined: it sees the branch's file, cannot write
    // the main tree, and has no network.
    let probe = format!("test -f feature.txt && ! touch {}/from-test.txt 2>/dev/null && echo ok", s(&r));
    let m = d.rush_json(&["agent", "workspace", "merge", "tested", "--test", &probe]);
    assert_eq!(m["state"], "merged", "{m}");
    assert!(!r.join("from-test.txt").exists(), "the test wrote the main tree");
    assert!(r.join("feature.txt").exists());
    assert_ne!(git(&r, &["rev-parse", "main"]), before);
}

#[test]
fn removal_is_refused_with_unmerged_work_force_keeps_the_branch_and_gc_takes_merged_ones() {
    if !ready() {
        return;
    }
    let d = Daemon::start();
    let (_t, r) = repo();
    let ws = create(&d, &r, "keep");
    let tip = commit_in(&ws, "work.txt", "work\n", "work");
    let err = refused(&d, &["agent", "workspace", "remove", "keep"]);
    assert!(err.contains("1 commit(s) not merged") && err.contains("--force"), "{err}");
    assert!(ws.exists());
    std::fs::write(ws.join("dirty.txt"), "x").unwrap();
    let removed = d.rush_json(&["agent", "workspace", "remove", "keep", "--force"]);
    assert_eq!(removed[0]["branch_deleted"], false, "{removed}");
    assert_eq!(removed[0]["unmerged_commits"], 1);
    assert!(!ws.exists(), "the worktree is still there");
    assert_eq!(git(&r, &["rev-parse", "rush/keep"]), tip, "the branch was not kept");

    // A clean, unmerged workspace with uncommitted changes only is refused too.
    let wd = create(&d, &r, "dirty");
    std::fs::write(wd.join("a.txt"), "changed\n").unwrap();
    let err = refused(&d, &["agent", "workspace", "remove", "dirty"]);
    assert!(err.contains("uncommitted"), "{err}");

    // gc: merged and older than the cutoff only.
    let wm = create(&d, &r, "merged");
    commit_in(&wm, "m.txt", "m\n", "m");
    assert_eq!(d.rush_json(&["agent", "workspace", "merge", "merged"])["state"], "merged");
    let dry = d.rush_json(&["agent", "workspace", "gc", "--older-than", "1h"]);
    assert_eq!(dry, serde_json::json!([]), "younger than an hour");
    let dry = d.rush_json(&["agent", "workspace", "gc", "--older-than", "0s", "--dry-run"]);
    assert_eq!(dry.as_array().unwrap().len(), 1, "{dry}");
    assert!(wm.exists(), "a dry run removed it");
    let gone = d.rush_json(&["agent", "workspace", "gc", "--older-than", "0s"]);
    assert_eq!(gone[0]["name"], "merged", "{gone}");
    assert_eq!(gone[0]["branch_deleted"], true);
    assert!(!wm.exists());
    assert!(wd.exists(), "gc removed an unmerged workspace");
    let left: Vec<String> = d
        .rush_json(&["agent", "workspace", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(left, ["dirty"]);
}

#[test]
fn a_daemon_killed_during_a_merge_resumes_it_and_main_is_never_half_merged() {
    if !ready() {
        return;
    }
    let mut d = Daemon::start();
    let (_t, r) = repo();
    let ws = create(&d, &r, "crashy");
    for i in 0..5 {
        commit_in(&ws, &format!("f{i}.txt"), "x\n", &format!("c{i}"));
    }
    let before = git(&r, &["rev-parse", "main"]);
    let queued = d.rush_json(&["agent", "workspace", "merge", "crashy", "--no-wait", "--test", "sleep 3"]);
    assert_eq!(queued["state"], "queued", "{queued}");
    assert!(
        wait_until(Duration::from_secs(30), || {
            let q = d.rush_json(&["agent", "workspace", "queue"]);
            q[0]["state"] == "running" && r.join(".rush/merges/1").exists()
        }),
        "the merge never ran"
    );
    // A merge's test holds nothing else up: a workspace is made meanwhile.
    let started = std::time::Instant::now();
    create(&d, &r, "bystander");
    assert!(started.elapsed() < Duration::from_secs(2), "create waited {:?} for the test", started.elapsed());
    assert_eq!(
        d.rush_json(&["agent", "workspace", "queue"])[0]["state"],
        "running",
        "the test ended too soon"
    );
    d.kill9();
    assert_eq!(git(&r, &["rev-parse", "main"]), before, "main moved before the test passed");
    d.restart();
    assert!(
        wait_until(Duration::from_secs(60), || {
            d.rush_json(&["agent", "workspace", "queue"])[0]["state"] == "merged"
        }),
        "not merged after the restart: {}",
        d.rush_json(&["agent", "workspace", "queue"])
    );
    let q = d.rush_json(&["agent", "workspace", "queue"]);
    assert_eq!(q[0]["attempts"], 2, "{q}");
    assert!(q[0]["notes"].to_string().contains("started again"), "{q}");
    let main = git(&r, &["rev-parse", "main"]);
    assert_eq!(q[0]["commit"], main.as_str());
    assert_eq!(git(&r, &["rev-parse", "main^1"]), before);
    assert_eq!(git(&r, &["rev-parse", "main^2"]), git(&r, &["rev-parse", "rush/crashy"]));
    assert_eq!(git(&r, &["status", "--porcelain"]), "", "the main tree is not clean");
    assert!(!git(&r, &["worktree", "list"]).contains(".rush/merges"), "a scratch worktree was left");
    assert!(!r.join(".rush/merges/1").exists());
}

#[test]
fn a_claim_on_a_changed_path_refuses_the_merge_naming_its_holder() {
    if !ready() {
        return;
    }
    let d = Daemon::start();
    let (_t, r) = repo();
    let ws = create(&d, &r, "editor");
    commit_in(&ws, "shared.txt", "mine\n", "edit shared");
    let holder = d.sleepers("holder", 1).remove(0);
    let shared = r.join("shared.txt");
    let mut c = Client::connect(&d.socket).unwrap();
    assert!(claim_outcome(c.call(claim_request(&holder, "edit-shared", &[s(&shared)])).unwrap()).won);
    let err = refused(&d, &["agent", "workspace", "merge", "editor"]);
    assert!(err.contains("holder0") && err.contains("edit-shared") && err.contains("shared.txt"), "{err}");
    assert_eq!(std::fs::read_to_string(&shared).unwrap(), "line 1\nline 2\nline 3\n");
    // Released: it merges.
    let out = d.rush(&["agent", "release", "edit-shared", "--agent", &holder]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(d.rush_json(&["agent", "workspace", "merge", "editor"])["state"], "merged");
}

#[test]
fn bad_input_is_one_clear_line_each() {
    if !ready() {
        return;
    }
    let d = Daemon::start();
    let (t, r) = repo();
    let plain = t.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    let err = refused(&d, &["agent", "workspace", "create", "x", "--repo", s(&plain)]);
    assert!(err.contains("is not in a git repository"), "{err}");
    let err = refused(&d, &["agent", "workspace", "create", "x", "--repo", "/nonexistent/dir"]);
    assert!(err.contains("/nonexistent/dir"), "{err}");
    let err = refused(&d, &["agent", "workspace", "create", "bad/name", "--repo", s(&r)]);
    assert!(err.contains("bad workspace name"), "{err}");
    let err = refused(&d, &["agent", "workspace", "create", "x", "--repo", s(&r), "--from", "no-such-ref"]);
    assert!(err.contains("bad ref \"no-such-ref\""), "{err}");
    let ws = create(&d, &r, "x");
    let err = refused(&d, &["agent", "workspace", "create", "x", "--repo", s(&r)]);
    assert!(err.contains("already exists"), "{err}");
    git(&r, &["branch", "rush/taken"]);
    let err = refused(&d, &["agent", "workspace", "create", "taken", "--repo", s(&r)]);
    assert!(err.contains("branch \"rush/taken\" already exists"), "{err}");
    let err = refused(&d, &["agent", "workspace", "merge", "nobody"]);
    assert!(err.contains("no workspace \"nobody\""), "{err}");
    commit_in(&ws, "n.txt", "n\n", "n");
    let err = refused(&d, &["agent", "workspace", "merge", "x", "--into", "nowhere"]);
    assert!(err.contains("no branch \"nowhere\""), "{err}");
    std::fs::write(r.join("a.txt"), "edited in main\n").unwrap();
    let err = refused(&d, &["agent", "workspace", "merge", "x"]);
    assert!(err.contains("uncommitted change") && err.contains("a.txt"), "{err}");
    git(&r, &["checkout", "-q", "--", "a.txt"]);
    std::fs::write(ws.join("n.txt"), "uncommitted\n").unwrap();
    let err = refused(&d, &["agent", "workspace", "merge", "x"]);
    assert!(err.contains("commit them first"), "{err}");
    let out = d.rush(&["agent", "workspace", "merge", "x", "--strategy", "octopus"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.lines().next().unwrap().contains("'octopus' for '--strategy"),
        "{err}"
    );
    let err = refused(&d, &["agent", "workspace", "gc", "--older-than", "soon"]);
    assert!(err.contains("--older-than"), "{err}");
    let err = refused(&d, &["agent", "workspace", "remove", "nobody"]);
    assert!(err.contains("no workspace \"nobody\""), "{err}");
}

/// A merge into a branch the main tree does not have checked out moves that ref alone
/// (one compare-and-swap): the main tree and its branch stay as they are.
#[test]
fn a_merge_into_a_branch_not_checked_out_moves_only_that_branch() {
    if !ready() {
        return;
    }
    let d = Daemon::start();
    let (_t, r) = repo();
    git(&r, &["branch", "release"]);
    let ws = create(&d, &r, "hotfix");
    let tip = commit_in(&ws, "fix.txt", "fix\n", "the fix");
    let main = git(&r, &["rev-parse", "main"]);
    let m =
        d.rush_json(&["agent", "workspace", "merge", "hotfix", "--into", "release", "--strategy", "rebase"]);
    assert_eq!(m["state"], "merged", "{m}");
    assert_eq!(m["into"], "release");
    assert_eq!(
        git(&r, &["rev-parse", "release"]),
        tip,
        "a rebase onto an unchanged target is the tip itself"
    );
    assert_eq!(git(&r, &["rev-parse", "main"]), main, "main moved");
    assert!(!r.join("fix.txt").exists(), "the main tree changed");
    assert_eq!(git(&r, &["reflog", "-1", "--format=%gs", "release"]), "rush: merge workspace hotfix");
}

/// Users are not root: in a repository owned by another user (nobody), git runs as that
/// user, so the worktree, its copied state and the merge commits are theirs.
#[test]
fn in_a_repository_of_another_user_git_runs_as_that_user() {
    if !ready() {
        return;
    }
    const NOBODY: u32 = 65534;
    let d = Daemon::start();
    let (t, r) = repo();
    std::fs::write(r.join(".env"), "X=1\n").unwrap();
    std::fs::set_permissions(t.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let chown = Command::new("chown").args(["-R", &format!("{NOBODY}:{NOBODY}")]).arg(&r).output().unwrap();
    assert!(chown.status.success(), "{}", describe(&chown));
    let w = d.rush_json(&["agent", "workspace", "create", "theirs", "--repo", s(&r)]);
    assert_eq!(w["workspace"]["uid"], NOBODY);
    let ws = PathBuf::from(w["workspace"]["path"].as_str().unwrap());
    use std::os::unix::fs::MetadataExt;
    for p in [ws.clone(), ws.join("a.txt"), ws.join(".env"), r.join(".rush"), r.join(".git/worktrees/theirs")]
    {
        assert_eq!(std::fs::metadata(&p).unwrap().uid(), NOBODY, "{} is not nobody's", p.display());
    }
    // A commit as that user, merged by the queue as that user.
    let out = Command::new("sh")
        .args(["-c", "echo n > n.txt && git add n.txt && git commit -qm n"])
        .current_dir(&ws)
        .uid(NOBODY)
        .gid(NOBODY)
        .env("HOME", &ws)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let m = d.rush_json(&["agent", "workspace", "merge", "theirs"]);
    assert_eq!(m["state"], "merged", "{m}");
    assert_eq!(
        std::fs::metadata(r.join("n.txt")).unwrap().uid(),
        NOBODY,
        "the main tree's new file is root's"
    );
    let head = git(&r, &["rev-parse", "HEAD"]);
    let obj = r.join(".git/objects").join(&head[..2]).join(&head[2..]);
    assert_eq!(std::fs::metadata(&obj).unwrap().uid(), NOBODY, "the merge commit is root's");
}
