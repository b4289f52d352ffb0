//! The shell's own builtins and state on a real brush shell, in process (no daemon).

use super::*;

async fn shell() -> Shell {
    use brush_builtins::ShellBuilderExt as _;
    let mut sh = brush_core::Shell::builder_with_extensions::<Ext>()
        .profile(brush_core::ProfileLoadBehavior::Skip)
        .rc(brush_core::RcLoadBehavior::Skip)
        .default_builtins(brush_builtins::BuiltinSet::BashMode)
        .build()
        .await
        .unwrap();
    builtins::register(&mut sh);
    sh
}

async fn run(sh: &mut Shell, code: &str) -> u8 {
    let params = sh.default_exec_params();
    let r = sh.run_string(code.to_owned(), &brush_core::SourceInfo::from("test"), &params).await.unwrap();
    u8::from(r.exit_code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captured_state_applied_brings_back_env_aliases_functions_options_and_cwd() {
    let mut sh = shell().await;
    let dir = tempfile::tempdir().unwrap();
    let there = dir.path().canonicalize().unwrap();
    let code = format!(
        "export A='one two' Q=\"it's\"; alias ll='ls -l'; f() {{ echo \"in f $1\"; }}; set -o pipefail; shopt -s extglob; cd {}",
        there.display()
    );
    assert_eq!(run(&mut sh, &code).await, 0);
    let saved = state::capture(&sh, Vec::new());
    assert!(saved.env.contains(&("A".into(), "one two".into())), "{:?}", saved.env);
    assert_eq!(saved.aliases, [("ll".to_string(), "ls -l".to_string())]);
    assert_eq!(saved.functions.len(), 1);
    // Everything changed after the capture.
    assert_eq!(
        run(
            &mut sh,
            "export A=2 B=3; unalias ll; unset -f f; g() { :; }; set +o pipefail; shopt -u extglob; cd /"
        )
        .await,
        0
    );
    let problems = state::apply(&mut sh, &saved).await;
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(var_string(&sh, "A").as_deref(), Some("one two"));
    assert_eq!(var_string(&sh, "Q").as_deref(), Some("it's"));
    assert!(sh.env_var("B").is_none(), "B was exported after the capture");
    assert_eq!(sh.aliases().get("ll").map(String::as_str), Some("ls -l"));
    assert!(sh.funcs().get("f").is_some() && sh.funcs().get("g").is_none());
    assert!(sh.options().return_last_failure_from_pipeline && sh.options().extended_globbing);
    assert_eq!(sh.working_dir(), there);
    // The restored function runs.
    let out = there.join("out");
    assert_eq!(run(&mut sh, &format!("f x > {}", out.display())).await, 0);
    assert_eq!(std::fs::read_to_string(out).unwrap(), "in f x\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_function_that_does_not_parse_is_named_not_fatal() {
    let mut sh = shell().await;
    let mut saved = state::capture(&sh, Vec::new());
    saved.functions.push(("broken".into(), "broken () { (".into()));
    saved.cwd = Some("/nonexistent/rush-test".into());
    let problems = state::apply(&mut sh, &saved).await;
    assert!(problems.iter().any(|p| p.starts_with("function broken")), "{problems:?}");
    assert!(problems.iter().any(|p| p.starts_with("cwd /nonexistent")), "{problems:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alias_lists_sorted_and_quoted_and_disown_empties_the_job_table() {
    let mut sh = shell().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("aliases");
    let code = format!("alias zz='b c' aa=\"it's\" mm=x; alias > {}", out.display());
    assert_eq!(run(&mut sh, &code).await, 0);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "alias aa='it'\\''s'\nalias mm='x'\nalias zz='b c'\n");
    assert_eq!(run(&mut sh, "sleep 5 & sleep 5 &").await, 0);
    assert_eq!(sh.jobs().jobs.len(), 2);
    assert_eq!(run(&mut sh, "disown %1").await, 0);
    assert_eq!(sh.jobs().jobs.len(), 1);
    assert_eq!(run(&mut sh, "disown %9").await, 1);
    assert_eq!(run(&mut sh, "disown -a").await, 0);
    assert!(sh.jobs().jobs.is_empty());
}

#[test]
fn subcommands_mean_the_client_and_everything_else_the_shell() {
    let w = |a: &[&str]| wants_shell(&a.iter().map(OsString::from).collect::<Vec<_>>());
    assert!(w(&[]));
    assert!(w(&["-c", "true"]) && w(&["script.sh"]) && w(&["./agent"]) && w(&["--norc"]) && w(&["-s"]));
    assert!(!w(&["agent", "list"]) && !w(&["--json", "audit"]) && !w(&["--socket=/x", "doctor"]));
    assert!(!w(&["--help"]) && !w(&["--version"]) && !w(&["cap", "list"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_sends_sigterm_by_default_and_takes_dash_number() {
    use std::os::unix::process::ExitStatusExt;
    let mut sh = shell().await;
    for (args, signal) in
        [("", libc::SIGTERM), ("-9 ", libc::SIGKILL), ("-s INT ", libc::SIGINT), ("-HUP ", libc::SIGHUP)]
    {
        let mut sleep = std::process::Command::new("sleep");
        sleep.arg("30");
        // SAFETY: only async-signal-safe calls between fork and exec. The test's runner may
        // ignore SIGHUP or SIGINT (nohup, a background job), which sleep would inherit.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut sleep, || {
                for sig in [libc::SIGHUP, libc::SIGINT, libc::SIGTERM] {
                    libc::signal(sig, libc::SIG_DFL);
                }
                Ok(())
            });
        }
        let mut child = sleep.spawn().unwrap();
        assert_eq!(run(&mut sh, &format!("kill {args}{}", child.id())).await, 0, "kill {args}");
        assert_eq!(child.wait().unwrap().signal(), Some(signal), "kill {args}");
    }
    assert_eq!(run(&mut sh, "kill -l 9 > /dev/null").await, 0);
}
