//! `rush doctor` and `rush doctor --profile NAME`.

use anyhow::Context;

use super::Ctx;
use crate::error::Result;
use crate::profile::{ApplyInputs, Profile};
use crate::render::{self, sanitize};

/// A report: exits 0 whatever it says; 1 only when the daemon could not be asked.
pub fn doctor(ctx: &mut Ctx) -> Result<u8> {
    let hint = |e: crate::error::Error| {
        if e.is_unreachable() {
            e.with_hint("`rush-agentd doctor` probes this kernel without a running daemon (as root)")
        } else {
            e
        }
    };
    let report = ctx.connect().map_err(hint)?.doctor().map_err(|e| hint(e.into()))?;
    if ctx.out.json {
        ctx.out.document(&report)?;
    } else {
        ctx.out.text(&render::doctor(&report))?;
    }
    Ok(0)
}

/// What a profile will allow here: expanded for this directory and home, with what this
/// daemon can enforce of it.
pub fn profile(ctx: &mut Ctx, name: &str) -> Result<u8> {
    let profile = Profile::load(name)?;
    let applied = profile.apply(&ApplyInputs {
        workspace: std::env::current_dir().context("cannot read the current directory")?,
        home: super::spawn::home()?,
        ..ApplyInputs::default()
    })?;
    let report = ctx.connect()?.doctor()?;
    let holds =
        |what: &str| report.guarantees.iter().find(|g| g.name == what).map(|g| (g.holds, g.detail.clone()));
    let files = holds("file tokens");
    let net = holds("network policy");
    if ctx.out.json {
        let mut doc = serde_json::to_value(&applied).expect("serializes");
        doc["file_tokens_enforced"] = files.as_ref().is_some_and(|f| f.0).into();
        doc["network_policy_enforced"] = net.as_ref().is_some_and(|n| n.0).into();
        ctx.out.document(&doc)?;
        return Ok(0);
    }
    let mut out = format!(
        "profile {} ({}): {}\n",
        sanitize(&applied.profile),
        sanitize(&applied.source),
        sanitize(&applied.description)
    );
    let line = |k: &str, v: String| format!("{k:<12} {v}\n");
    out += &line(
        "command:",
        if applied.command.is_empty() {
            "(give one after --)".into()
        } else {
            sanitize(&applied.command.join(" "))
        },
    );
    out += &line("terminal:", if applied.tty { "yes (--tty)".into() } else { "no".into() });
    out += &line("net:", applied.net.as_ref().map_or("deny (no host listed)".into(), |n| n.to_string()));
    if !applied.metered_api.is_empty() {
        out += &line("metered:", format!("{} only through the agent's meter", applied.metered_api.join(",")));
    }
    for (i, g) in applied.allow.iter().enumerate() {
        let note = if applied.create.contains(&g.path) { " (created at spawn)" } else { "" };
        out += &line(
            if i == 0 { "files:" } else { "" },
            format!("{}:{}{note}", sanitize(&g.path.to_string_lossy()), g.ops),
        );
    }
    for (i, (k, v)) in applied.env.iter().enumerate() {
        out += &line(if i == 0 { "env:" } else { "" }, sanitize(&format!("{k}={v}")));
    }
    out += &line("budget:", applied.budget.as_ref().map_or("none".into(), |b| b.to_string()));
    out += "\nhere:\n";
    match files {
        Some((true, how)) => out += &format!("  file tokens: enforced ({})\n", sanitize(&how)),
        Some((false, why)) => {
            out += &format!("  file tokens: NOT enforceable ({}): the spawn is refused\n", sanitize(&why))
        }
        None => out += "  file tokens: this daemon does not say\n",
    }
    match net {
        Some((true, how)) => out += &format!("  network policy: enforced ({})\n", sanitize(&how)),
        Some((false, why)) => out += &format!("  network policy: NOT enforced ({})\n", sanitize(&why)),
        None => {}
    }
    ctx.out.text(&out)?;
    Ok(0)
}
