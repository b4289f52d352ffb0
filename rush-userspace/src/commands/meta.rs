//! `rush version`, `rush whoami`, `rush completions`, `rush man`.

use clap::CommandFactory;
use rush_proto::client::Hello;
use rush_proto::{CallerInfo, CallerRole, PROTOCOL_VERSION};
use serde::Serialize;

use super::Ctx;
use crate::cli::Cli;
use crate::error::{Error, Result};
use crate::render::sanitize;

const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Serialize)]
struct Versions {
    rush: Side,
    /// `null` when the daemon could not be reached.
    daemon: Option<Side>,
}

#[derive(Serialize)]
struct Side {
    version: String,
    protocol_version: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    caller: Option<CallerInfo>,
}

/// Our version, then the daemon's; exits 1 (after printing ours) if it cannot be reached.
pub fn version(ctx: &mut Ctx) -> Result<u8> {
    let rush = Side { version: VERSION.into(), protocol_version: PROTOCOL_VERSION, caller: None };
    let hello = ctx.connect().and_then(|mut c| Ok(c.hello()?));
    let (daemon, failure) = match hello {
        Ok(Hello { daemon_version, protocol_version, caller }) => {
            (Some(Side { version: daemon_version, protocol_version, caller: Some(caller) }), None)
        }
        Err(e) => (None, Some(e)),
    };
    let versions = Versions { rush, daemon };
    if ctx.out.json {
        ctx.out.document(&versions)?;
    } else {
        ctx.out.text(&render_versions(&versions, &ctx.socket.to_string_lossy()))?;
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(0),
    }
}

fn render_versions(v: &Versions, socket: &str) -> String {
    let mut out = format!("rush {} (protocol {})\n", v.rush.version, v.rush.protocol_version);
    if let Some(d) = &v.daemon {
        out += &format!(
            "rush-agentd {} (protocol {}) at {}\n",
            sanitize(&d.version),
            d.protocol_version,
            sanitize(socket)
        );
        if let Some(c) = &d.caller {
            out += &format!("you: {}\n", caller_line(c));
        }
    }
    out
}

/// `operator (uid 0, gid 0, pid 7)`, `agent coder (...)`, `unprivileged (...)`.
fn caller_line(c: &CallerInfo) -> String {
    let role = match &c.role {
        CallerRole::Operator => "operator".to_string(),
        CallerRole::Agent { name } => format!("agent {}", sanitize(name)),
        CallerRole::Unprivileged => "unprivileged".to_string(),
    };
    format!("{role} (uid {}, gid {}, pid {})", c.uid, c.gid, c.pid)
}

/// How the daemon sees us.
pub fn whoami(ctx: &mut Ctx) -> Result<u8> {
    let hello = ctx.connect()?.hello()?;
    if ctx.out.json {
        ctx.out.document(&hello.caller)?;
    } else {
        ctx.out.text(&format!("{}\n", caller_line(&hello.caller)))?;
    }
    Ok(0)
}

pub fn completions(ctx: &mut Ctx, shell: clap_complete::Shell) -> Result<u8> {
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "rush", &mut buf);
    ctx.out.text(&String::from_utf8_lossy(&buf))?;
    Ok(0)
}

pub fn man(ctx: &mut Ctx, dir: Option<&std::path::Path>) -> Result<u8> {
    if let Some(dir) = dir {
        let written =
            std::fs::create_dir_all(dir).and_then(|()| clap_mangen::generate_to(Cli::command(), dir));
        if let Err(e) = written {
            let what = format!("cannot write the man pages into {}", dir.display());
            return Err(Error::from(anyhow::Error::new(e).context(what)));
        }
        return Ok(0);
    }
    let mut buf = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut buf).map_err(Error::stdout)?;
    ctx.out.text(&String::from_utf8_lossy(&buf))?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_text() {
        let v = Versions {
            rush: Side { version: "0.1.0".into(), protocol_version: 1, caller: None },
            daemon: Some(Side {
                version: "0.1.0".into(),
                protocol_version: 1,
                caller: Some(CallerInfo { uid: 0, gid: 0, pid: 7, role: CallerRole::Operator }),
            }),
        };
        assert_eq!(
            render_versions(&v, "/run/rush/agentd.sock"),
            "rush 0.1.0 (protocol 1)\nrush-agentd 0.1.0 (protocol 1) at /run/rush/agentd.sock\n\
             you: operator (uid 0, gid 0, pid 7)\n"
        );
    }
}
