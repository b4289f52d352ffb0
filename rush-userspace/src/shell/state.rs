//! The shell's state as a checkpoint and a session attachment keep it, and applying it
//! back: environment (exported variables), cwd, aliases, functions, `set -o`/`shopt`
//! options, the job table (as text: processes are not restored unless a checkpoint
//! was taken `--with-processes`) and the performance baseline.

use brush_core::namedoptions::{ShellOptionKind as Kind, options};
use rush_proto::{ShellOption, ShellOptionKind, ShellState};

use super::Shell;
use super::args::ShellArgs;

/// Variables that change by themselves from one command to the next: not shell state.
const VOLATILE: [&str; 6] = ["_", "OLDPWD", "SHLVL", "PWD", "RUSH_PROMPT", "BASH_COMMAND"];

fn kind_of(k: ShellOptionKind) -> Kind {
    match k {
        ShellOptionKind::Set => Kind::SetO,
        ShellOptionKind::Shopt => Kind::Shopt,
    }
}

/// The command line's `-e`, `-o pipefail`, `-O extglob`...; an unknown name is refused,
/// named.
pub fn apply_args(shell: &mut Shell, a: &ShellArgs) -> Result<(), String> {
    for (flag, on) in &a.flags {
        let def =
            options(Kind::Set).get(&flag.to_string()).ok_or_else(|| format!("-{flag}: invalid option"))?;
        def.set(shell.options_mut(), *on);
    }
    for (name, on) in &a.set_options {
        let def = options(Kind::SetO).get(name).ok_or_else(|| format!("{name}: invalid option name"))?;
        def.set(shell.options_mut(), *on);
    }
    for (name, on) in &a.shopt_options {
        let def =
            options(Kind::Shopt).get(name).ok_or_else(|| format!("{name}: invalid shell option name"))?;
        def.set(shell.options_mut(), *on);
    }
    Ok(())
}

pub fn capture(shell: &Shell, baseline: Vec<rush_proto::PerfSeries>) -> ShellState {
    let mut env: Vec<(String, String)> = shell
        .env()
        .iter_exported()
        .filter(|(k, _)| !VOLATILE.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.value().to_cow_str(shell).into_owned()))
        .collect();
    env.sort();
    env.dedup_by(|a, b| a.0 == b.0);
    let mut aliases: Vec<(String, String)> =
        shell.aliases().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    aliases.sort();
    let mut functions: Vec<(String, String)> =
        shell.funcs().iter().map(|(name, f)| (name.clone(), f.definition().to_string())).collect();
    functions.sort();
    let mut opts = Vec::new();
    for (kind, k) in [(ShellOptionKind::Set, Kind::SetO), (ShellOptionKind::Shopt, Kind::Shopt)] {
        for o in options(k).iter() {
            opts.push(ShellOption { kind, name: o.name.to_owned(), on: o.definition.get(shell.options()) });
        }
    }
    opts.sort_by(|a, b| (a.kind as u8, &a.name).cmp(&(b.kind as u8, &b.name)));
    let jobs =
        shell.jobs().jobs.iter().map(|j| format!("[{}] {} {}", j.id, j.state, j.command_line)).collect();
    ShellState {
        cwd: Some(shell.working_dir().to_path_buf()),
        env,
        jobs,
        aliases,
        functions,
        options: opts,
        perf: baseline,
    }
}

/// Puts `saved` in place; what could not be applied is returned, one line each (a
/// function whose text no longer parses, a cwd that is gone).
pub async fn apply(shell: &mut Shell, saved: &ShellState) -> Vec<String> {
    let mut problems = Vec::new();
    // Exported variables: the saved set exactly. Unexported shell variables are the
    // shell's scratch space and stay.
    let current: Vec<String> = shell
        .env()
        .iter_exported()
        .map(|(k, _)| k.clone())
        .filter(|k| !VOLATILE.contains(&k.as_str()))
        .collect();
    for k in current {
        if !saved.env.iter().any(|(s, _)| *s == k) {
            let _ = shell.env_mut().unset(&k);
        }
    }
    for (k, v) in &saved.env {
        if VOLATILE.contains(&k.as_str()) {
            continue;
        }
        let mut var = brush_core::ShellVariable::new(v.clone());
        var.export();
        if let Err(e) = shell.set_env_global(k, var) {
            problems.push(format!("variable {k}: {e}"));
        }
    }
    shell.aliases_mut().clear();
    for (k, v) in &saved.aliases {
        shell.aliases_mut().insert(k.clone(), v.clone());
    }
    {
        shell.funcs_mut().clear();
        for (name, text) in &saved.functions {
            let params = shell.default_exec_params();
            let r =
                shell.run_string(text.clone(), &brush_core::SourceInfo::from("checkpoint"), &params).await;
            if r.is_err() || shell.funcs().get(name).is_none() {
                problems.push(format!("function {name}: its saved definition did not load"));
            }
        }
    }
    for o in &saved.options {
        match options(kind_of(o.kind)).get(&o.name) {
            Some(def) => def.set(shell.options_mut(), o.on),
            None => problems.push(format!("option {}: this shell has no such option", o.name)),
        }
    }
    if let Some(cwd) = &saved.cwd
        && let Err(e) = shell.set_working_dir(cwd)
    {
        problems.push(format!("cwd {}: {e}", cwd.display()));
    }
    problems
}
