//! `rush doctor`.

use rush_proto::{Request, Response};

use super::{Ctx, unexpected};
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
    let report = match ctx.connect().map_err(hint)?.call(Request::Doctor).map_err(|e| hint(e.into()))? {
        Response::Doctor { report } => report,
        other => return Err(unexpected("doctor", &other)),
    };
    if ctx.out.json {
        ctx.out.document(&report)?;
    } else {
        ctx.out.text(&render::doctor(&report))?;
    }
    Ok(0)
}
