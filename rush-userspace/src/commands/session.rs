//! `rush session`, `rush checkpoint`, `rush rollback`, `rush timeline`.

use std::path::PathBuf;

use anyhow::{Context, anyhow};
use rush_proto::{AgentName, Prune, SessionRef, ShellState, TimelineInfo};

use super::Ctx;
use crate::cli::{CheckpointArgs, RollbackArgs, SessionArg, SessionCommand, TimelineCommand};
use crate::error::Result;
use crate::render;
use crate::time::now_unix_ms;

/// The session named (--session, else $RUSH_SESSION), or the one the daemon finds around
/// the current directory.
fn session_ref(arg: &SessionArg) -> Result<SessionRef> {
    named_ref(arg.session.as_ref())
}

fn named_ref(name: Option<&AgentName>) -> Result<SessionRef> {
    let name = match name {
        Some(n) => Some(n.to_string()),
        None => env_session()?,
    };
    Ok(SessionRef { name, cwd: std::env::current_dir().ok() })
}

/// $RUSH_SESSION, checked; unset or empty is none.
pub fn env_session() -> Result<Option<String>> {
    match std::env::var("RUSH_SESSION") {
        Ok(s) if s.is_empty() => Ok(None),
        Ok(s) => match s.parse::<AgentName>() {
            Ok(_) => Ok(Some(s)),
            Err(e) => Err(anyhow!("RUSH_SESSION={s:?} in your environment: {e}").into()),
        },
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(anyhow!("RUSH_SESSION in your environment is not valid UTF-8").into())
        }
    }
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
    ShellState { cwd: shell_cwd(), env, ..ShellState::default() }
}

/// Our working directory as the shell that ran us names it: $PWD keeps the path the user
/// typed (through the workspace symlink) where it is current.
pub fn shell_cwd() -> Option<PathBuf> {
    std::env::var_os("PWD")
        .map(PathBuf::from)
        .filter(|p| std::fs::canonicalize(p).ok() == std::env::current_dir().ok())
        .or_else(|| std::env::current_dir().ok())
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
            let session = ctx.connect()?.create_session(name.as_str(), workspace)?;
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
            let sessions = ctx.connect()?.list_sessions()?;
            if ctx.out.json {
                ctx.out.document(&sessions)?;
            } else {
                ctx.out.text(&render::session_table(&sessions, now_unix_ms()))?;
            }
        }
        SessionCommand::Show { name } => {
            let detail = ctx.connect()?.show_session(named_ref(name.as_ref())?)?;
            if ctx.out.json {
                ctx.out.document(&detail)?;
            } else {
                ctx.out.text(&render::session_detail(&detail, now_unix_ms()))?;
            }
        }
        SessionCommand::Set { key, value, session } => {
            rush_proto::session::check_value(&key, &value).map_err(|e| anyhow!(e))?;
            let (session, p) = ctx.connect()?.session_set(session_ref(&session)?, key, value)?;
            if ctx.out.json {
                ctx.out.document(&p)?;
            } else {
                ctx.out.text(&format!(
                    "session {session}: {} set ({} bytes)\n",
                    render::sanitize(&p.key),
                    p.value.len()
                ))?;
            }
        }
        SessionCommand::Get { key, session } => {
            let (session, pairs) = ctx.connect()?.session_get(session_ref(&session)?, key.clone())?;
            match (key.is_some(), ctx.out.json) {
                (true, false) => ctx.out.text(&format!("{}\n", pairs[0].value))?,
                (true, true) => ctx.out.document(&serde_json::json!({
                    "session": session, "key": pairs[0].key, "value": pairs[0].value
                }))?,
                (false, false) => ctx.out.text(&render::kv_table(&pairs))?,
                (false, true) => {
                    let map: serde_json::Map<String, serde_json::Value> =
                        pairs.into_iter().map(|p| (p.key, p.value.into())).collect();
                    ctx.out.document(&map)?
                }
            }
        }
        SessionCommand::Unset { key, session } => {
            let (session, pair) = ctx.connect()?.session_unset(session_ref(&session)?, key)?;
            if ctx.out.json {
                ctx.out.document(&pair)?;
            } else {
                ctx.out.text(&format!("session {session}: {} unset\n", render::sanitize(&pair.key)))?;
            }
        }
        SessionCommand::Attach { name, print } => return super::attach::attach(ctx, &name, print),
        SessionCommand::Detach { print, session } => {
            return super::attach::detach(ctx, session.as_ref(), print);
        }
        SessionCommand::Rm { name } => {
            let workspace = ctx.connect()?.remove_session(name.as_str())?;
            if ctx.out.json {
                ctx.out.document(&serde_json::json!({ "name": name.as_str(), "workspace": workspace }))?;
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
    let c = ctx.connect()?.checkpoint(
        session_ref(&args.session)?,
        args.name.as_str(),
        args.with_processes,
        Some(shell_state()),
    )?;
    if ctx.out.json {
        ctx.out.document(&c)?;
    } else {
        ctx.out.text(&render::checkpoint_line(&c))?;
    }
    Ok(0)
}

pub fn rollback(ctx: &mut Ctx, args: RollbackArgs) -> Result<u8> {
    let r = ctx.connect()?.rollback(session_ref(&args.session)?, args.name.as_str())?;
    if ctx.out.json {
        ctx.out.document(&r)?;
        return Ok(0);
    }
    let report = render::rollback_report(&r);
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
    let changed = |ctx: &mut Ctx, t: TimelineInfo, verb: &str| -> Result<u8> {
        if ctx.out.json {
            ctx.out.document(&t)?;
        } else {
            let from = t.from.as_deref().map(|f| format!(" from checkpoint {f}")).unwrap_or_default();
            ctx.out.text(&format!("timeline {} {verb}{from}\n", t.name))?;
        }
        Ok(0)
    };
    let deleted = |ctx: &mut Ctx, names: Vec<String>| -> Result<u8> {
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
        TimelineCommand::Branch { name, from, session } => {
            let t =
                ctx.connect()?.branch(session_ref(&session)?, name.as_str(), from.map(|f| f.to_string()))?;
            changed(ctx, t, "branched")
        }
        TimelineCommand::Switch { name, session } => {
            let t = ctx.connect()?.switch_timeline(session_ref(&session)?, name.as_str())?;
            let code = changed(ctx, t, "is live")?;
            if !ctx.out.json {
                eprintln!("rush: a shell inside the workspace needs a `cd` to see the switched tree");
            }
            Ok(code)
        }
        TimelineCommand::List { session } => {
            let t = ctx.connect()?.list_timeline(session_ref(&session)?)?;
            if ctx.out.json {
                ctx.out.document(&t)?;
            } else {
                ctx.out.text(&render::timeline(&t, now_unix_ms()))?;
            }
            Ok(0)
        }
        TimelineCommand::Diff { a, b, session } => {
            let d = ctx.connect()?.diff(session_ref(&session)?, a.as_str(), b.as_str())?;
            if ctx.out.json {
                ctx.out.document(&d)?;
            } else {
                ctx.out.text(&render::diff(&d))?;
            }
            Ok(0)
        }
        TimelineCommand::Rm { name, session } => {
            let names = ctx.connect()?.delete_checkpoint(session_ref(&session)?, name.as_str())?;
            deleted(ctx, names)
        }
        TimelineCommand::Prune { keep, older_than, session } => {
            let prune = Prune { keep, older_than_ms: older_than };
            let names = ctx.connect()?.prune_checkpoints(session_ref(&session)?, prune)?;
            deleted(ctx, names)
        }
    }
}
