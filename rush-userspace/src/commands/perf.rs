//! `rush perf`: the rush shell's performance records (src/shell/perf.rs), read from the
//! session's file; no daemon.

use anyhow::anyhow;

use super::Ctx;
use crate::cli::PerfArgs;
use crate::error::Result;
use crate::render::Table;
use crate::shell::PerfStore;
use crate::shell::perf::{judge, median, seconds};

pub fn perf(ctx: &mut Ctx, args: &PerfArgs) -> Result<u8> {
    let session = match &args.session {
        Some(s) => s.to_string(),
        None => super::session::env_session()?.unwrap_or_else(|| "default".into()),
    };
    let path = PerfStore::path_for(&session)
        .ok_or_else(|| anyhow!("neither XDG_STATE_HOME nor HOME is set: no performance records to read"))?;
    let store = PerfStore::load(&path).map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?;
    if let Some(cmd) = &args.command {
        let runs = store.runs(cmd);
        if runs.is_empty() {
            return Err(
                anyhow!("no runs of {cmd:?} in session {session}'s records ({})", path.display()).into()
            );
        }
        if ctx.out.json {
            ctx.out.document(&rush_proto::PerfSeries { command: cmd.clone(), samples: runs.to_vec() })?;
            return Ok(0);
        }
        let mut t = Table::new(&["WHEN", "WALL", "CPU", "STATUS", "VS MEDIAN BEFORE"]);
        for (i, s) in runs.iter().enumerate() {
            let vs = match judge(&runs[..i], s.wall_ms) {
                Some(v) => {
                    format!("{:+.0}%{}", v.slower_by * 100.0, if v.regression { " REGRESSION" } else { "" })
                }
                None => "-".into(),
            };
            t.row(vec![
                crate::time::format_unix_ms(s.at_unix_ms),
                seconds(s.wall_ms),
                seconds(s.cpu_ms),
                s.status.to_string(),
                vs,
            ]);
        }
        ctx.out.text(&t.render())?;
        return Ok(0);
    }
    let mut rows: Vec<(u64, Vec<String>, rush_proto::PerfSeries)> = Vec::new();
    for (cmd, runs) in store.series() {
        let Some(last) = runs.last() else { continue };
        let verdict = judge(&runs[..runs.len() - 1], last.wall_ms);
        if args.regressions && !verdict.is_some_and(|v| v.regression) {
            continue;
        }
        let med = median(&mut runs.iter().map(|s| s.wall_ms).collect::<Vec<_>>());
        let change = match verdict {
            Some(v) => {
                format!("{:+.0}%{}", v.slower_by * 100.0, if v.regression { " REGRESSION" } else { "" })
            }
            None => "-".into(),
        };
        rows.push((
            last.at_unix_ms,
            vec![
                runs.len().to_string(),
                seconds(med),
                seconds(last.wall_ms),
                change,
                crate::render::sanitize(cmd),
            ],
            rush_proto::PerfSeries { command: cmd.clone(), samples: runs.clone() },
        ));
    }
    rows.sort_by_key(|r| std::cmp::Reverse(r.0));
    if ctx.out.json {
        let series: Vec<_> = rows.into_iter().map(|r| r.2).collect();
        ctx.out.document(&series)?;
        return Ok(0);
    }
    if rows.is_empty() {
        ctx.out.text(&format!(
            "no {}records in session {session} ({})\n",
            if args.regressions { "regressions in the " } else { "" },
            path.display()
        ))?;
        return Ok(0);
    }
    let mut t = Table::new(&["RUNS", "MEDIAN", "LAST", "LAST VS BEFORE", "COMMAND"]);
    for (_, cells, _) in rows {
        t.row(cells);
    }
    ctx.out.text(&t.render())?;
    Ok(0)
}
