//! Common tool chains, run as file-confined agents with only their workspace granted (plus
//! the daemon's default baseline): `python3 -m venv` + `pip install --no-index` from a
//! local wheel, git, `cargo build --offline` with a rustup toolchain in the user's home,
//! `npm ci --offline` from a local cache, make with cc. Each test asserts what the tool
//! made (the venv's python imports the package, `git log` shows the commit, the built
//! program runs) and, in the same agent, that it is confined: a file outside the
//! workspace and the baseline is refused, and so is writing the user's home.
//!
//! The default daemon: Landlock on this project's hosts, BPF LSM in the guests, where only
//! the tools the payload carries run (git, make; xtask/src/vm.rs). Under
//! RUSH_TEST_STRICT=1 a missing tool fails its test (`cargo xtask setup` installs them).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kernel_tests::*;

/// The agents' PATH: Debian's tools (what `cargo xtask setup` installs and the guests
/// carry), not the test's own PATH (pyenv shims, a git in /usr/local); agents get exactly
/// the environment each test gives, nothing of the test's own.
const SYSTEM_PATH: &str = "/usr/bin:/bin";

/// A workspace `ws/` (the agent's one grant) and, beside it, `outside/secret`, which
/// neither the grant nor the baseline covers.
struct Scene {
    root: tempfile::TempDir,
}

impl Scene {
    fn new() -> Scene {
        let root = tempfile::Builder::new().prefix("rush-toolchains-").tempdir_in("/tmp").unwrap();
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir(root.path().join("ws")).unwrap();
        std::fs::create_dir(root.path().join("outside")).unwrap();
        std::fs::write(root.path().join("outside/secret"), "secret data\n").unwrap();
        Scene { root }
    }
    fn ws(&self) -> PathBuf {
        self.root.path().join("ws")
    }
    fn ws_str(&self) -> String {
        self.ws().to_str().unwrap().to_owned()
    }
    fn secret(&self) -> String {
        self.root.path().join("outside/secret").to_str().unwrap().to_owned()
    }
    fn write(&self, rel: &str, text: &str) {
        let p = self.ws().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
}

/// The negative control, appended to every agent's script: the same agent, after the tool
/// ran, is refused a file outside its workspace and the baseline.
fn control(scene: &Scene) -> String {
    format!(
        "\nif cat {s} 2>/dev/null; then echo CONTROL-LEAKED; else echo control-refused; fi",
        s = scene.secret()
    )
}

/// `rush agent spawn NAME --allow WS:OPS -- sh -c 'set -e; SCRIPT; CONTROL'` in the
/// workspace, with exactly `env` as its environment.
fn agent(d: &Daemon, name: &str, scene: &Scene, ops: &str, env: &[(&str, &str)], script: &str) -> Output {
    agent_as(d, name, scene, ops, env, script, None)
}

fn agent_as(
    d: &Daemon,
    name: &str,
    scene: &Scene,
    ops: &str,
    env: &[(&str, &str)],
    script: &str,
    uid: Option<u32>,
) -> Output {
    use std::os::unix::process::CommandExt;
    let allow = format!("{}:{ops}", scene.ws_str());
    let script = format!("set -e\n{script}\n{}", control(scene));
    let mut cmd = d.rush_cmd(&["agent", "spawn", name, "--allow", &allow, "--", "sh", "-c", &script]);
    cmd.env_clear().envs(env.iter().copied()).current_dir(scene.ws());
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    let t = std::time::Instant::now();
    let out = cmd.output().expect("run rush");
    let took = t.elapsed().as_secs_f64();
    // File-confined, and by what: Landlock on this project's hosts, BPF LSM in the guests.
    let status = d.rush_json(&["agent", "status", name]);
    let files: Vec<&str> = status["enforcement"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.as_str())
        .filter(|e| e.starts_with("files:"))
        .collect();
    eprintln!("agent {name} ({files:?}): {took:.1}s\n{}", describe(&out));
    assert_eq!(files.len(), 1, "agent {name} is not file-confined: {status}");
    out
}

/// The agent succeeded, printed `want`, and its control was refused.
fn assert_ran(out: &Output, want: &str, what: &str) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{what}: the agent failed: {}", describe(out));
    assert!(stdout.lines().any(|l| l == want), "{what}: no line {want:?}: {}", describe(out));
    assert!(
        stdout.lines().any(|l| l == "control-refused") && !stdout.contains("secret data"),
        "{what}: the agent read a file outside its workspace and the baseline: {}",
        describe(out)
    );
}

/// `prog` on `path` (a PATH-style list), if there.
fn find_in(path: &str, prog: &str) -> Option<PathBuf> {
    std::env::split_paths(path).map(|d| d.join(prog)).find(|p| p.is_file())
}

/// Runs `prog args` outside any agent; true when it exits 0.
fn works(prog: &Path, args: &[&str]) -> bool {
    Command::new(prog).args(args).output().is_ok_and(|o| o.status.success())
}

/// The tool on the system PATH, required (strict: a failure, not a skip).
fn tool(prog: &str, probe: &[&str]) -> Option<PathBuf> {
    let found = find_in(SYSTEM_PATH, prog).filter(|p| works(p, probe));
    require(found.is_some(), &format!("`{prog}` on {SYSTEM_PATH} (cargo xtask setup installs it)"))
        .then(|| found.unwrap())
}

/// The home directory of `uid` in the password database (what the daemon expands `~` to).
fn home_of(uid: u32) -> Option<PathBuf> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten().map(|u| u.dir)
}

fn daemon() -> Option<Daemon> {
    if !require(is_root(), "root (these tests start the daemon and create cgroups)") {
        return None;
    }
    Some(Daemon::start())
}

/// A wheel of package `rushdemo` 0.1 (`rushdemo.VALUE == "pip-ok-42"`), made here with
/// Python's zipfile: no build backend, no index.
fn make_wheel(python: &Path, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let script = r#"
import base64, hashlib, sys, zipfile
files = {
    "rushdemo/__init__.py": "VALUE = 'pip-ok-42'\n",
    "rushdemo-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: rushdemo\nVersion: 0.1\n",
    "rushdemo-0.1.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: rush-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = []
for name, text in files.items():
    digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
    record.append(f"{name},sha256={digest},{len(text.encode())}")
record.append("rushdemo-0.1.dist-info/RECORD,,")
files["rushdemo-0.1.dist-info/RECORD"] = "\n".join(record) + "\n"
with zipfile.ZipFile(sys.argv[1] + "/rushdemo-0.1-py3-none-any.whl", "w") as z:
    for name, text in files.items():
        z.writestr(name, text)
"#;
    let out = Command::new(python).args(["-c", script, dir.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "making the wheel: {}", describe(&out));
}

#[test]
fn python_venv_and_pip_install_from_a_local_wheel() {
    let Some(d) = daemon() else { return };
    let Some(python) = tool("python3", &["-c", "import ensurepip, venv"]) else { return };
    let scene = Scene::new();
    make_wheel(&python, &scene.ws().join("wheels"));
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    // HOME is the caller's own: pip finds its cache there unwritable and goes without.
    let env = [("PATH", SYSTEM_PATH), ("HOME", home.as_str())];
    let out = agent(
        &d,
        "py",
        &scene,
        "read,write,create,delete,exec",
        &env,
        "python3 -m venv venv\n\
         venv/bin/pip install --no-index --find-links wheels rushdemo\n\
         venv/bin/python -c 'import rushdemo; print(rushdemo.VALUE)'",
    );
    assert_ran(&out, "pip-ok-42", "python3 -m venv + pip install --no-index");
    assert!(scene.ws().join("venv/bin/python").exists());
}

/// git's identity comes from the environment, its global config from HOME (the
/// workspace): the baseline grants no `~/.gitconfig`.
fn git_script() -> &'static str {
    "git init -q repo\n\
     cd repo\n\
     echo 'hello from an agent' > README\n\
     git add README\n\
     git commit -q -m 'first commit, confined'\n\
     git log --format='log: %s <%ae>'\n\
     git status --porcelain | wc -l | sed 's/^ */dirty: /'"
}

fn git_env(ws: &str) -> Vec<(&'static str, String)> {
    vec![
        ("PATH", SYSTEM_PATH.to_owned()),
        ("HOME", ws.to_owned()),
        ("GIT_AUTHOR_NAME", "Rush Agent".to_owned()),
        ("GIT_AUTHOR_EMAIL", "agent@rush.invalid".to_owned()),
        ("GIT_COMMITTER_NAME", "Rush Agent".to_owned()),
        ("GIT_COMMITTER_EMAIL", "agent@rush.invalid".to_owned()),
    ]
}

#[test]
fn git_init_add_commit_log() {
    let Some(d) = daemon() else { return };
    if tool("git", &["--version"]).is_none() {
        return;
    }
    let scene = Scene::new();
    let env = git_env(&scene.ws_str());
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = agent(&d, "git", &scene, "read,write,create,delete", &env, git_script());
    assert_ran(&out, "log: first commit, confined <agent@rush.invalid>", "git init, add, commit, log");
    assert!(String::from_utf8_lossy(&out.stdout).lines().any(|l| l == "dirty: 0"), "{}", describe(&out));
}

/// Real users are not root: the `rush` client runs as nobody (an operator through
/// `operator_group`), so the agent does too, in a workspace nobody owns.
#[test]
fn git_as_an_unprivileged_user() {
    if !require(is_root(), "root") {
        return;
    }
    if tool("git", &["--version"]).is_none() {
        return;
    }
    const NOBODY: u32 = 65534;
    let group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(NOBODY)).ok().flatten();
    let Some(group) = group else {
        require(false, "a group with gid 65534 (nogroup)");
        return;
    };
    let d = Daemon::start_with_config(&format!("[daemon]\noperator_group = \"{}\"\n", group.name));
    // Its private temp dir lives beside the daemon's state dir: nobody must reach it.
    std::fs::set_permissions(d.state.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let scene = Scene::new();
    std::os::unix::fs::chown(scene.ws(), Some(NOBODY), Some(NOBODY)).unwrap();
    let env = git_env(&scene.ws_str());
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let socket = d.socket.to_str().unwrap().to_owned();
    env.push(("RUSH_SOCKET", &socket));
    let script =
        format!("{}\nid -u | sed 's/^/uid: /'\ntest -O \"$TMPDIR\" && echo tmpdir-owned", git_script());
    let out = agent_as(&d, "git-nobody", &scene, "read,write,create,delete", &env, &script, Some(NOBODY));
    assert_ran(&out, "log: first commit, confined <agent@rush.invalid>", "git as nobody");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.lines().any(|l| l == "uid: 65534"), "{}", describe(&out));
    assert!(stdout.lines().any(|l| l == "tmpdir-owned"), "its TMPDIR is its own: {}", describe(&out));
    let commit = scene.ws().join("repo/.git/HEAD");
    assert_eq!(std::fs::metadata(commit).unwrap().uid(), NOBODY);
}

/// rustup's toolchains in the user's home (`~/.rustup`, `~/.cargo/bin`), as on this
/// project's machines and most developers': reachable through the baseline's home entries,
/// read and exec only. The crate has no dependencies; CARGO_TARGET_DIR is in the workspace.
#[test]
fn cargo_build_offline_with_a_rustup_toolchain_in_home() {
    let Some(d) = daemon() else { return };
    let home = home_of(0).expect("root's home in /etc/passwd");
    // The cargo a developer's shell finds: this test's PATH, else ~/.cargo/bin.
    let test_path = std::env::var("PATH").unwrap_or_default();
    let cargo = find_in(&test_path, "cargo")
        .or_else(|| find_in(home.join(".cargo/bin").to_str().unwrap(), "cargo"))
        .filter(|c| works(c, &["--version"]));
    if !require(cargo.is_some(), "cargo (rustup's, in ~/.cargo/bin, or the system's)") {
        return;
    }
    let cargo = cargo.unwrap();
    let cargo_dir = cargo.parent().unwrap().to_str().unwrap().to_owned();
    eprintln!("cargo: {}", cargo.display());
    let scene = Scene::new();
    scene.write(
        "hello/Cargo.toml",
        "[package]\nname = \"hello\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\n",
    );
    scene.write("hello/src/main.rs", "fn main() {\n    println!(\"cargo-ok-{}\", 6 * 7);\n}\n");
    let path = format!("{cargo_dir}:{SYSTEM_PATH}");
    let target = format!("{}/target", scene.ws_str());
    let env =
        [("PATH", path.as_str()), ("HOME", home.to_str().unwrap()), ("CARGO_TARGET_DIR", target.as_str())];
    // Home is readable where the baseline says (the toolchain), nowhere else, and never
    // writable: ~/.cargo (credentials.toml lives there) cannot be listed, ~/.rustup not
    // written.
    let script = "cd hello\n\
                  cargo build --offline\n\
                  \"$CARGO_TARGET_DIR\"/debug/hello\n\
                  if ls \"$HOME\"/.cargo >/dev/null 2>&1; then echo HOME-LISTED; else echo home-refused; fi\n\
                  if touch \"$HOME\"/.rustup/rush-probe 2>/dev/null; then echo HOME-WRITTEN; else echo home-write-refused; fi";
    let out = agent(&d, "cargo", &scene, "read,write,create,delete,exec", &env, script);
    assert_ran(&out, "cargo-ok-42", "cargo build --offline");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.lines().any(|l| l == "home-refused"), "{}", describe(&out));
    assert!(stdout.lines().any(|l| l == "home-write-refused"), "{}", describe(&out));
    assert!(!home.join(".rustup/rush-probe").exists());
}

/// `npm ci --offline` of a lock that names a package only the local cache has: packed and
/// added to the cache here, outside the agent, without the network; the agent's cache is
/// in its workspace (npm_config_cache), since the baseline lets no tool write `~/.npm`.
#[test]
fn npm_ci_offline_from_a_local_cache() {
    let Some(d) = daemon() else { return };
    let Some(npm) = tool("npm", &["--version"]) else { return };
    if tool("node", &["--version"]).is_none() {
        return;
    }
    let scene = Scene::new();
    let pkg = scene.root.path().join("outside/pkg");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(
        pkg.join("package.json"),
        r#"{"name": "rush-toolchain-demo", "version": "1.0.0", "main": "index.js"}"#,
    )
    .unwrap();
    std::fs::write(pkg.join("index.js"), "module.exports = 'npm-ok-42';\n").unwrap();
    let cache = scene.ws().join(".npm-cache");
    let outside_cache = scene.root.path().join("outside/npm-cache");
    let npm_out = |args: &[&str], cwd: &Path| {
        let out = Command::new(&npm)
            .args(args)
            .current_dir(cwd)
            .env("npm_config_update_notifier", "false")
            .output()
            .unwrap();
        assert!(out.status.success(), "npm {args:?}: {}", describe(&out));
        out
    };
    let packed = npm_out(&["pack", "--json", "--cache", outside_cache.to_str().unwrap()], &pkg);
    let packed: serde_json::Value = serde_json::from_slice(&packed.stdout).expect("npm pack --json");
    let integrity = packed[0]["integrity"].as_str().expect("integrity").to_owned();
    let tarball = pkg.join(packed[0]["filename"].as_str().expect("filename"));
    npm_out(&["cache", "add", tarball.to_str().unwrap(), "--cache", cache.to_str().unwrap()], &pkg);
    scene.write(
        "app/package.json",
        r#"{"name": "app", "version": "1.0.0", "dependencies": {"rush-toolchain-demo": "1.0.0"}}"#,
    );
    scene.write(
        "app/package-lock.json",
        &format!(
            r#"{{
  "name": "app", "version": "1.0.0", "lockfileVersion": 3, "requires": true,
  "packages": {{
    "": {{"name": "app", "version": "1.0.0", "dependencies": {{"rush-toolchain-demo": "1.0.0"}}}},
    "node_modules/rush-toolchain-demo": {{
      "version": "1.0.0",
      "resolved": "https://registry.npmjs.org/rush-toolchain-demo/-/rush-toolchain-demo-1.0.0.tgz",
      "integrity": "{integrity}"
    }}
  }}
}}
"#
        ),
    );
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let cache = cache.to_str().unwrap().to_owned();
    let env = [("PATH", SYSTEM_PATH), ("HOME", home.as_str()), ("npm_config_cache", cache.as_str())];
    let out = agent(
        &d,
        "npm",
        &scene,
        "read,write,create,delete",
        &env,
        "cd app\n\
         npm ci --offline --no-audit --no-fund\n\
         node -e 'console.log(require(\"rush-toolchain-demo\"))'",
    );
    assert_ran(&out, "npm-ok-42", "npm ci --offline");
}

/// make runs cc, which writes its intermediate files to TMPDIR (the agent's private one),
/// then the program it built.
#[test]
fn make_compiles_c_with_cc_and_runs_it() {
    let Some(d) = daemon() else { return };
    if tool("make", &["--version"]).is_none() || tool("cc", &["--version"]).is_none() {
        return;
    }
    let scene = Scene::new();
    scene.write(
        "hello.c",
        "#include <stdio.h>\nint main(void) { printf(\"make-ok-%d\\n\", 6 * 7); return 0; }\n",
    );
    scene.write("Makefile", "run: hello\n\t./hello\n\nhello: hello.c\n\t$(CC) -O2 -o $@ hello.c\n");
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let env = [("PATH", SYSTEM_PATH), ("HOME", home.as_str())];
    let out = agent(&d, "make", &scene, "read,write,create,delete,exec", &env, "make -s run");
    assert_ran(&out, "make-ok-42", "make + cc");
}

/// make with shell recipes only (what the guests can run: they carry make, not a C
/// compiler): a chain of targets, one of them made through TMPDIR.
#[test]
fn make_runs_shell_recipes() {
    let Some(d) = daemon() else { return };
    if tool("make", &["--version"]).is_none() {
        return;
    }
    let scene = Scene::new();
    scene.write("in.txt", "make\n");
    scene.write(
        "Makefile",
        "all: out.txt\n\tcat out.txt\n\n\
         out.txt: mid.txt\n\tsed 's/$$/-ok-42/' mid.txt > $@\n\n\
         mid.txt: in.txt\n\tcp in.txt \"$$TMPDIR/t\" && mv \"$$TMPDIR/t\" $@\n",
    );
    let env = [("PATH", SYSTEM_PATH), ("HOME", "/nonexistent")];
    let out = agent(&d, "make-sh", &scene, "read,write,create,delete", &env, "make -s");
    assert_ran(&out, "make-ok-42", "make with shell recipes");
    assert_eq!(std::fs::read_to_string(scene.ws().join("out.txt")).unwrap(), "make-ok-42\n");
}

/// Every file-confined agent gets its own TMPDIR (created by the daemon, read, write,
/// create and delete; mode 0700): /tmp itself stays out of reach, another agent cannot
/// read it, and it is gone when the agent exits.
#[test]
fn private_tmpdir_per_agent() {
    let Some(d) = daemon() else { return };
    let scene = Scene::new();
    let ws = scene.ws_str();
    let env = [("PATH", SYSTEM_PATH), ("HOME", "/nonexistent"), ("TMPDIR", "/tmp")];
    // A: writes in its TMPDIR, says where, and waits for B.
    let allow = format!("{ws}:read,write,create,delete");
    let script = format!(
        "echo a-secret > \"$TMPDIR/a\" && echo \"$TMPDIR\" > {ws}/a-tmpdir && \
         while [ ! -e {ws}/b-done ]; do sleep 0.05; done"
    );
    let out = d
        .rush_cmd(&["agent", "spawn", "tmp-a", "--detach", "--allow", &allow, "--", "sh", "-c", &script])
        .env_clear()
        .envs(env)
        .current_dir(scene.ws())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let a_file = scene.ws().join("a-tmpdir");
    assert!(wait_until(std::time::Duration::from_secs(20), || a_file.exists()), "agent A did not start");
    let a_tmp = PathBuf::from(std::fs::read_to_string(&a_file).unwrap().trim());
    assert_ne!(a_tmp, Path::new("/tmp"), "the daemon sets TMPDIR, whatever the caller's was");
    let meta = std::fs::metadata(&a_tmp).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o700, "{}", a_tmp.display());
    assert_eq!(std::fs::read_to_string(a_tmp.join("a")).unwrap(), "a-secret\n");

    // B: its own TMPDIR works; /tmp and A's TMPDIR do not.
    let b_script = format!(
        "echo b > \"$TMPDIR/b\" && cat \"$TMPDIR/b\" | sed 's/^/own: /'\n\
         if echo x 2>/dev/null >/tmp/rush-toolchains-probe-$$; then echo TMP-WRITTEN; else echo tmp-refused; fi\n\
         if cat {a}/a 2>/dev/null; then echo A-READ; else echo other-refused; fi\n\
         echo \"$TMPDIR\" | sed 's/^/tmpdir: /'\n\
         touch {ws}/b-done",
        a = a_tmp.display()
    );
    let out = agent(&d, "tmp-b", &scene, "read,write,create,delete", &env, &b_script);
    assert_ran(&out, "own: b", "a second agent's own TMPDIR");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.lines().any(|l| l == "tmp-refused"), "{}", describe(&out));
    assert!(
        stdout.lines().any(|l| l == "other-refused") && !stdout.contains("a-secret"),
        "{}",
        describe(&out)
    );
    let b_tmp = stdout.lines().find_map(|l| l.strip_prefix("tmpdir: ")).expect("B's TMPDIR").to_owned();
    assert_ne!(Path::new(&b_tmp), a_tmp.as_path());
    assert!(!Path::new(&b_tmp).exists(), "B's TMPDIR outlived B");
    assert!(
        wait_until(std::time::Duration::from_secs(20), || !a_tmp.exists()),
        "A's TMPDIR {} outlived A",
        a_tmp.display()
    );
}

/// Landlock cannot change a running agent's rules: a grant restarts it. The new process
/// gets the same TMPDIR back (the path its rules name), empty, writable, and it goes when
/// the agent is killed. Landlock only (the guests run the suite's BPF LSM tests).
#[test]
fn landlock_restart_keeps_the_tmpdir() {
    if !require(is_root(), "root") {
        return;
    }
    let d = Daemon::start_with_config("[files]\nenforcement = \"landlock\"\n");
    let scene = Scene::new();
    let ws = scene.ws_str();
    let allow = format!("{ws}:read,write,create,delete");
    let script = "touch \"$TMPDIR/w-$$\" && echo \"$$ $TMPDIR $(ls \"$TMPDIR\" | wc -l)\"; sleep 60";
    let out = d
        .rush_cmd(&["agent", "spawn", "ll-tmp", "--detach", "--allow", &allow, "--", "sh", "-c", script])
        .env_clear()
        .envs([("PATH", SYSTEM_PATH)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let lines = || -> Vec<Vec<String>> {
        let out = d.rush(&["agent", "logs", "ll-tmp"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with("---") && !l.is_empty())
            .map(|l| l.split(' ').map(str::to_owned).collect())
            .collect()
    };
    assert!(wait_until(std::time::Duration::from_secs(20), || lines().len() == 1), "{:?}", lines());
    let out = d.rush(&["capability", "grant", "ll-tmp", "--path", &scene.secret(), "--ops", "read"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(wait_until(std::time::Duration::from_secs(20), || lines().len() == 2), "{:?}", lines());
    let l = lines();
    assert_ne!(l[0][0], l[1][0], "a new process: {l:?}");
    assert_eq!(l[0][1], l[1][1], "the same TMPDIR: {l:?}");
    assert_eq!(l[1][2], "1", "made again empty, then written: {l:?}");
    let tmp = PathBuf::from(&l[1][1]);
    assert!(tmp.is_dir());
    let out = d.rush(&["agent", "kill", "ll-tmp"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        wait_until(std::time::Duration::from_secs(20), || !tmp.exists()),
        "{} outlived the agent",
        tmp.display()
    );
}
