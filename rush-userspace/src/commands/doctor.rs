//! `rush doctor`.

use super::Ctx;
use crate::error::Result;
use crate::render;

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
