//! `rush agent workspace create | list | merge | queue | remove | gc`, and the workspace
//! half of `rush agent spawn --workspace`.

use anyhow::{Context, anyhow};
use rush_proto::workspace::{MergeJob, MergeRequest, MergeState, RemovedWorkspace, WorkspaceInfo};

use super::Ctx;
use crate::cli::WorkspaceCommand;
use crate::error::Result;
use crate::render::Table;

pub fn workspace(ctx: &mut Ctx, cmd: WorkspaceCommand) -> Result<u8> {
    match cmd {
        WorkspaceCommand::Create(a) => {
            let repo = match a.repo {
                Some(r) => r,
                None => std::env::current_dir().context("cannot read the current directory")?,
            };
            let repo = std::fs::canonicalize(&repo).unwrap_or(repo);
            let (w, warnings) =
                ctx.connect()?.create_workspace(&a.name, &repo, a.from, a.branch, a.no_state)?;
            for warning in &warnings {
                eprintln!("rush: warning: {warning}");
            }
            if ctx.out.json {
                ctx.out.document(&serde_json::json!({"workspace": w, "warnings": warnings}))?;
            } else {
                ctx.out.text(&created(&w))?;
            }
            Ok(0)
        }
        WorkspaceCommand::List { repo } => {
            let repo = repo.map(|r| std::fs::canonicalize(&r).unwrap_or(r));
            let list = ctx.connect()?.list_workspaces(repo)?;
            if ctx.out.json {
                ctx.out.document(&list)?;
            } else {
                ctx.out.text(&table(&list))?;
            }
            Ok(0)
        }
        WorkspaceCommand::Merge(a) => {
            let job = ctx.connect()?.merge_workspace(MergeRequest {
                name: a.name,
                into: a.into,
                strategy: a.strategy,
                test: a.test,
                no_wait: a.no_wait,
            })?;
            if ctx.out.json {
                ctx.out.document(&job)?;
            } else {
                ctx.out.text(&merge_report(&job))?;
            }
            Ok(match job.state {
                MergeState::Merged | MergeState::Queued | MergeState::Running | MergeState::Landing => 0,
                _ => 1,
            })
        }
        WorkspaceCommand::Queue { workspace } => {
            let jobs = ctx.connect()?.list_merges(workspace)?;
            if ctx.out.json {
                ctx.out.document(&jobs)?;
            } else {
                let mut t = Table::new(&["ID", "WORKSPACE", "INTO", "STRATEGY", "STATE", "COMMIT", "NOTE"]);
                for j in &jobs {
                    t.row(vec![
                        j.id.to_string(),
                        j.workspace.clone(),
                        j.into.clone(),
                        j.strategy.to_string(),
                        j.state.to_string(),
                        j.commit.as_deref().map(short).unwrap_or("-").to_owned(),
                        j.notes.last().cloned().unwrap_or_default(),
                    ]);
                }
                ctx.out.text(&t.render())?;
            }
            Ok(0)
        }
        WorkspaceCommand::Remove { name, force } => {
            let removed = ctx.connect()?.remove_workspace(&name, force)?;
            removed_out(ctx, &removed)
        }
        WorkspaceCommand::Gc { older_than, dry_run } => {
            let age = rush_proto::parse_duration(&older_than)
                .map_err(|e| anyhow!("--older-than {older_than:?}: {e}"))?;
            let removed = ctx.connect()?.collect_workspaces(age.as_secs(), dry_run)?;
            removed_out(ctx, &removed)
        }
    }
}

/// `spawn --workspace`: workspace `name` of the repository holding `cwd` (made if there is
/// none); the agent starts in it with its tokens.
pub fn for_spawn(
    ctx: &mut Ctx,
    name: &str,
    cwd: &std::path::Path,
    from: Option<String>,
    no_state: bool,
) -> Result<WorkspaceInfo> {
    let mut client = ctx.connect()?;
    let existing = client.list_workspaces(None)?.into_iter().find(|w| w.name == name);
    if let Some(w) = existing {
        if from.is_some() {
            return Err(anyhow!(
                "workspace {name:?} exists already (from {}): --from applies to a new one",
                w.base
            )
            .into());
        }
        eprintln!("rush: agent {name} works in workspace {} (branch {})", w.path.display(), w.branch);
        return Ok(w);
    }
    let (w, warnings) = client.create_workspace(name, cwd, from, None, no_state)?;
    for warning in &warnings {
        eprintln!("rush: warning: {warning}");
    }
    eprintln!("rush: workspace {} made on branch {}", w.path.display(), w.branch);
    Ok(w)
}

fn removed_out(ctx: &mut Ctx, removed: &[RemovedWorkspace]) -> Result<u8> {
    if ctx.out.json {
        ctx.out.document(removed)?;
        return Ok(0);
    }
    let mut text = String::new();
    for r in removed {
        let branch = if r.branch_deleted {
            format!("branch {} deleted (merged)", r.branch)
        } else if r.unmerged_commits > 0 {
            format!("branch {} kept ({} unmerged commit(s))", r.branch, r.unmerged_commits)
        } else {
            format!("branch {} kept", r.branch)
        };
        text.push_str(&format!("removed workspace {} ({}); {branch}\n", r.name, r.path.display()));
    }
    if removed.is_empty() {
        text.push_str("no workspace removed\n");
    }
    ctx.out.text(&text)?;
    Ok(0)
}

fn short(c: &str) -> &str {
    &c[..c.len().min(10)]
}

fn created(w: &WorkspaceInfo) -> String {
    let s = &w.state;
    let mut out = format!(
        "workspace {} at {}\n  branch {} from {} ({})\n  worktree in {} ms",
        w.name,
        w.path.display(),
        w.branch,
        w.base,
        short(&w.base_commit),
        s.worktree_ms
    );
    if !s.included.is_empty() || !s.cloned.is_empty() {
        let method = s.method.map(|m| m.to_string()).unwrap_or_default();
        out.push_str(&format!(
            "; state in {} ms: {} file(s) from .rushinclude, {} build dir(s) by {method}, {} MiB\n",
            s.state_ms,
            s.included.len(),
            s.cloned.len(),
            s.bytes >> 20
        ));
    } else {
        out.push('\n');
    }
    out
}

fn table(list: &[WorkspaceInfo]) -> String {
    let mut t = Table::new(&[
        "NAME", "BRANCH", "BASE", "AHEAD", "BEHIND", "DIRTY", "SIZE", "MERGED", "AGENT", "PATH",
    ]);
    for w in list {
        let s = w.status.clone().unwrap_or_default();
        let n = |v: Option<u32>| v.map_or("-".to_owned(), |v| v.to_string());
        t.row(vec![
            w.name.clone(),
            w.branch.clone(),
            format!("{} {}", w.base, short(&w.base_commit)),
            n(s.ahead),
            n(s.behind),
            if s.missing { "missing".into() } else { s.dirty.to_string() },
            format!("{:.1}M", s.size_bytes as f64 / (1 << 20) as f64),
            if s.merged { "yes".into() } else { "no".into() },
            s.agent.map(|a| format!("{a:?}").to_lowercase()).unwrap_or_else(|| "-".into()),
            w.path.display().to_string(),
        ]);
    }
    t.render()
}

fn merge_report(j: &MergeJob) -> String {
    let mut out = format!("merge {} of {} ({}) into {}: {}", j.id, j.workspace, j.branch, j.into, j.state);
    if let Some(c) = &j.commit
        && j.state == MergeState::Merged
    {
        out.push_str(&format!(" as {}", short(c)));
    }
    out.push('\n');
    for f in &j.conflicts {
        out.push_str(&format!("  conflict: {}\n", f.display()));
    }
    for n in &j.notes {
        out.push_str(&format!("  {n}\n"));
    }
    if let Some(tail) = j.test_tail.as_deref().filter(|t| !t.is_empty())
        && j.state != MergeState::Merged
    {
        out.push_str("  test output (last lines):\n");
        for l in tail.lines() {
            out.push_str(&format!("    {l}\n"));
        }
    }
    if !j.state.is_final() {
        out.push_str(&format!("  follow it with: rush agent workspace queue {}\n", j.workspace));
    }
    out
}
