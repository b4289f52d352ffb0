//! `rush session`, `rush checkpoint`, `rush rollback`, `rush timeline`.

use std::path::PathBuf;

use anyhow::Context;
use rush_proto::{Prune, Request, Response, SessionRef, ShellState};

use super::{Ctx, unexpected};
use crate::cli::{CheckpointArgs, RollbackArgs, SessionArg, SessionCommand, TimelineCommand};
use crate::error::Result;
use crate::render;
use crate::time::now_unix_ms;

/// The session named, or the one the daemon finds around the current directory.
fn session_ref(arg: &SessionArg) -> SessionRef {
    SessionRef { name: arg.session.as_ref().map(|s| s.to_string()), cwd: std::env::current_dir().ok() }
}

/// Variables that change by themselves from one command to the next: not shell state.
const VOLATILE: [&str; 3] = ["_", "OLDPWD", "SHLVL"];

/// Our working directory and environment, as the shell that ran us has them.
fn shell_state() -> ShellState {
    let mut env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| !VOLATILE.contains(&k.as_str()))
        .collect();
    env.sort();
    // $PWD keeps the path the user typed (through the workspace symlink) where it is current.
    let cwd = std::env::var_os("PWD")
        .map(PathBuf::from)
        .filter(|p| std::fs::canonicalize(p).ok() == std::env::current_dir().ok())
        .or_else(|| std::env::current_dir().ok());
    ShellState { cwd, env, jobs: Vec::new() }
}

pub fn session(ctx: &mut Ctx, cmd: SessionCommand) -> Result<u8> {
    match cmd {
        SessionCommand::Create { name, workspace } => {
            let dir = match workspace {
                Some(d) => d,
                None => std::env::current_dir().context("cannot read the current directory")?,
            };
            let workspace = std::path::absolute(&dir)
                .with_context(|| format!("workspace {}: cannot make it absolute", dir.display()))?;
            let request = Request::CreateSession { name: name.to_string(), workspace };
            let session = match ctx.connect()?.call(request)? {
                Response::Session { session } => session,
                other => return Err(unexpected("session", &other)),
            };
            if ctx.out.json {
                ctx.out.document(&session)?;
            } else {
                ctx.out.text(&format!(
                    "session {} created: {} is now kept in the {} store ({})\n",
                    session.name,
                    session.workspace.display(),
                    session.backend,
                    session.live.display()
                ))?;
                if std::env::current_dir().is_err() {
                    eprintln!(
                        "rush: your shell is in the directory that moved: `cd {}`",
                        session.workspace.display()
                    );
                }
            }
        }
        SessionCommand::List => {
            let sessions = match ctx.connect()?.call(Request::ListSessions)? {
                Response::Sessions { sessions } => sessions,
                other => return Err(unexpected("sessions", &other)),
            };
            if ctx.out.json {
                ctx.out.document(&sessions)?;
            } else {
                ctx.out.text(&render::session_table(&sessions, now_unix_ms()))?;
            }
        }
        SessionCommand::Rm { name } => {
            let (name, workspace) =
                match ctx.connect()?.call(Request::RemoveSession { name: name.to_string() })? {
                    Response::SessionRemoved { name, workspace } => (name, workspace),
                    other => return Err(unexpected("session_removed", &other)),
                };
            if ctx.out.json {
                ctx.out.document(&serde_json::json!({ "name": name, "workspace": workspace }))?;
            } else {
                ctx.out.text(&format!(
                    "session {name} removed: {} is a plain directory again\n",
                    workspace.display()
                ))?;
            }
        }
    }
    Ok(0)
}

pub fn checkpoint(ctx: &mut Ctx, args: CheckpointArgs) -> Result<u8> {
    let request = Request::Checkpoint {
        session: session_ref(&args.session),
        name: args.name.to_string(),
        with_processes: args.with_processes,
        shell: Some(shell_state()),
    };
    let c = match ctx.connect()?.call(request)? {
        Response::Checkpointed { checkpoint } => checkpoint,
        other => return Err(unexpected("checkpointed", &other)),
    };
    if ctx.out.json {
        ctx.out.document(&c)?;
    } else {
        ctx.out.text(&format!(
            "checkpoint {} of session {} taken in {} ms: {}\n",
            c.name,
            c.session,
            c.took_ms,
            c.captured.join(", ")
        ))?;
    }
    Ok(0)
}

pub fn rollback(ctx: &mut Ctx, args: RollbackArgs) -> Result<u8> {
    let request = Request::Rollback { session: session_ref(&args.session), name: args.name.to_string() };
    let r = match ctx.connect()?.call(request)? {
        Response::RolledBack { report } => report,
        other => return Err(unexpected("rolled_back", &other)),
    };
    if ctx.out.json {
        ctx.out.document(&r)?;
        return Ok(0);
    }
    let mut report = format!(
        "session {} rolled back to {} in {} ms; undo with `rush rollback {}`\n",
        r.checkpoint.session, r.checkpoint.name, r.took_ms, r.undo.name
    );
    if !r.stopped.is_empty() {
        report += &format!("stopped agents (their files were replaced): {}\n", r.stopped.join(", "));
    }
    if !r.restored.is_empty() {
        report += &format!("restored agents' processes: {}\n", r.restored.join(", "));
    }
    if args.shell {
        eprint!("{}", report.lines().map(|l| format!("rush: {l}\n")).collect::<String>());
        let current = shell_state();
        if let Some(saved) = &r.shell {
            ctx.out.text(&render::shell_restore(saved, &current))?;
        } else {
            eprintln!("rush: checkpoint {} saved no shell state", r.checkpoint.name);
        }
    } else {
        ctx.out.text(&report)?;
        if let Some(shell) = &r.shell {
            ctx.out.text(&format!(
                "its saved shell state ({} variables{}) is not applied: with --shell, rush prints \
                 commands for eval\n",
                shell.env.len(),
                shell.cwd.as_ref().map(|c| format!(", cwd {}", c.display())).unwrap_or_default()
            ))?;
        }
    }
    Ok(0)
}

pub fn timeline(ctx: &mut Ctx, cmd: TimelineCommand) -> Result<u8> {
    let changed = |ctx: &mut Ctx, request: Request, verb: &str| -> Result<u8> {
        let t = match ctx.connect()?.call(request)? {
            Response::TimelineChanged { timeline } => timeline,
            other => return Err(unexpected("timeline_changed", &other)),
        };
        if ctx.out.json {
            ctx.out.document(&t)?;
        } else {
            let from = t.from.as_deref().map(|f| format!(" from checkpoint {f}")).unwrap_or_default();
            ctx.out.text(&format!("timeline {} {verb}{from}\n", t.name))?;
        }
        Ok(0)
    };
    let deleted = |ctx: &mut Ctx, request: Request| -> Result<u8> {
        let names = match ctx.connect()?.call(request)? {
            Response::CheckpointsDeleted { names } => names,
            other => return Err(unexpected("checkpoints_deleted", &other)),
        };
        if ctx.out.json {
            ctx.out.document(&names)?;
        } else if names.is_empty() {
            ctx.out.text("no checkpoint deleted\n")?;
        } else {
            ctx.out.text(&format!("deleted {}\n", names.join(", ")))?;
        }
        Ok(0)
    };
    match cmd {
        TimelineCommand::Branch { name, from, session } => changed(
            ctx,
            Request::Branch {
                session: session_ref(&session),
                name: name.to_string(),
                from: from.map(|f| f.to_string()),
            },
            "branched",
        ),
        TimelineCommand::Switch { name, session } => {
            let code = changed(
                ctx,
                Request::SwitchTimeline { session: session_ref(&session), name: name.to_string() },
                "is live",
            )?;
            if !ctx.out.json {
                eprintln!("rush: a shell inside the workspace needs a `cd` to see the switched tree");
            }
            Ok(code)
        }
        TimelineCommand::List { session } => {
            let t = match ctx.connect()?.call(Request::ListTimeline { session: session_ref(&session) })? {
                Response::Timeline { timeline } => timeline,
                other => return Err(unexpected("timeline", &other)),
            };
            if ctx.out.json {
                ctx.out.document(&t)?;
            } else {
                ctx.out.text(&render::timeline(&t, now_unix_ms()))?;
            }
            Ok(0)
        }
        TimelineCommand::Diff { a, b, session } => {
            let request =
                Request::Diff { session: session_ref(&session), a: a.to_string(), b: b.to_string() };
            let d = match ctx.connect()?.call(request)? {
                Response::Diff { diff } => diff,
                other => return Err(unexpected("diff", &other)),
            };
            if ctx.out.json {
                ctx.out.document(&d)?;
            } else {
                ctx.out.text(&render::diff(&d))?;
            }
            Ok(0)
        }
        TimelineCommand::Rm { name, session } => {
            deleted(ctx, Request::DeleteCheckpoint { session: session_ref(&session), name: name.to_string() })
        }
        TimelineCommand::Prune { keep, older_than, session } => deleted(
            ctx,
            Request::PruneCheckpoints {
                session: session_ref(&session),
                prune: Prune { keep, older_than_ms: older_than },
            },
        ),
    }
}
