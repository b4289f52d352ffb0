//! `rush agent broadcast | query-intents | claim | renew | release | claims | publish |
//! results | delegate | inbox`: agents coordinating through the daemon.
//!
//! Inside an agent, rush sends these as that agent (the daemon knows it by its cgroup);
//! the operator names the agent it acts for with --agent.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, anyhow};
use data_encoding::BASE64;
use rush_proto::AgentName;
use rush_proto::coordination::{
    BroadcastRequest, ClaimOutcome, ClaimRequest, DelegateRequest, PublishRequest, ResultInfo, ResultsQuery,
};

use super::Ctx;
use crate::cli::{
    BroadcastArgs, ClaimArgs, ClaimsArgs, DEFAULT_WAIT_SECS, DelegateArgs, InboxArgs, PublishArgs,
    QueryIntentsArgs, ReleaseArgs, RenewArgs, ResultsArgs,
};
use crate::error::Result;
use crate::render;
use crate::time::now_unix_ms;

/// The most a result may hold: what fits, base64-encoded, in the daemon's 1 MiB request
/// line (the daemon's own limit, `[coordination] max_result_bytes`, may be lower).
pub const MAX_RESULT_BYTES: u64 = 700 << 10;

fn name(a: Option<AgentName>) -> Option<String> {
    a.map(|a| a.to_string())
}

pub fn broadcast(ctx: &mut Ctx, args: BroadcastArgs) -> Result<u8> {
    let intent = ctx.connect()?.broadcast(BroadcastRequest {
        agent: name(args.agent),
        text: args.text,
        paths: args.paths,
        ttl_secs: args.ttl,
    })?;
    if ctx.out.json {
        ctx.out.document(&intent)?;
    } else {
        ctx.out.text(&render::intent_line(&intent, now_unix_ms()))?;
    }
    Ok(0)
}

pub fn query_intents(ctx: &mut Ctx, args: QueryIntentsArgs) -> Result<u8> {
    let marked = !args.paths.is_empty();
    let intents = ctx.connect()?.query_intents(args.paths, name(args.session))?;
    if ctx.out.json {
        ctx.out.document(&intents)?;
    } else {
        ctx.out.text(&render::intent_table(&intents, now_unix_ms(), marked))?;
    }
    Ok(0)
}

/// A warning of the daemon's, on stderr (stdout stays the answer, or one JSON document).
fn warn(warning: Option<&str>) {
    if let Some(w) = warning {
        eprintln!("rush: warning: {}", render::sanitize(w));
    }
}

/// Won (or renewed): the claim, exit 0. Lost: the holder's claim on stdout with --json,
/// and on stderr who holds it, exit 1.
fn claim_outcome(ctx: &mut Ctx, verb: &str, outcome: ClaimOutcome) -> Result<u8> {
    let now = now_unix_ms();
    if ctx.out.json {
        ctx.out.document(&outcome)?;
    } else if outcome.won {
        ctx.out.text(&render::claim_held(verb, &outcome.claim, now))?;
    }
    if !outcome.won {
        return Err(anyhow!("{}", render::claim_lost(&outcome.claim, now)).into());
    }
    warn(outcome.warning.as_deref());
    Ok(0)
}

pub fn claim(ctx: &mut Ctx, args: ClaimArgs) -> Result<u8> {
    let outcome = ctx.connect()?.claim(ClaimRequest {
        agent: name(args.agent),
        task: args.task,
        paths: args.paths,
        ttl_secs: args.ttl,
        enforce: args.enforce,
    })?;
    claim_outcome(ctx, "claimed", outcome)
}

pub fn renew(ctx: &mut Ctx, args: RenewArgs) -> Result<u8> {
    let agent = name(args.agent);
    let outcome = ctx.connect()?.renew(agent.as_deref(), &args.task, args.ttl)?;
    claim_outcome(ctx, "renewed", outcome)
}

pub fn release(ctx: &mut Ctx, args: ReleaseArgs) -> Result<u8> {
    let agent = name(args.agent);
    let claim = ctx.connect()?.release(agent.as_deref(), &args.task)?;
    if ctx.out.json {
        ctx.out.document(&claim)?;
    } else {
        ctx.out.text(&render::released_line(&claim))?;
    }
    Ok(0)
}

pub fn claims(ctx: &mut Ctx, args: ClaimsArgs) -> Result<u8> {
    let claims = ctx.connect()?.list_claims(args.path, name(args.session))?;
    if ctx.out.json {
        ctx.out.document(&claims)?;
    } else {
        ctx.out.text(&render::claim_table(&claims, now_unix_ms()))?;
    }
    Ok(0)
}

/// FILE's content, refused before it is read when it is over the limit.
fn read_file(path: &Path) -> Result<Vec<u8>> {
    let shown = path.display().to_string();
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot open {shown}"))?;
    let size = file.metadata().with_context(|| format!("cannot read {shown}"))?.len();
    if size > MAX_RESULT_BYTES {
        return Err(too_big(&format!("{shown} is {size} bytes")).into());
    }
    // It may have grown since.
    read_limited(&mut file, &shown)
}

/// Everything `r` holds, up to the limit.
fn read_limited(r: &mut impl Read, what: &str) -> Result<Vec<u8>> {
    let mut content = Vec::new();
    r.take(MAX_RESULT_BYTES + 1).read_to_end(&mut content).with_context(|| format!("cannot read {what}"))?;
    if content.len() as u64 > MAX_RESULT_BYTES {
        return Err(too_big(&format!("{what} holds more than {MAX_RESULT_BYTES} bytes")).into());
    }
    Ok(content)
}

fn too_big(what: &str) -> anyhow::Error {
    anyhow!(
        "{what}: a result holds at most 700 KiB ({MAX_RESULT_BYTES} bytes); publish less, or put the data \
         where the other agents can read it and publish its path"
    )
}

pub fn publish(ctx: &mut Ctx, args: PublishArgs) -> Result<u8> {
    let content = match &args.file {
        Some(path) => read_file(path)?,
        None => read_limited(&mut std::io::stdin().lock(), "stdin")?,
    };
    let result = ctx.connect()?.publish(PublishRequest {
        agent: name(args.agent),
        key: args.key,
        content_base64: BASE64.encode(&content),
        for_agent: name(args.for_agent),
        fence: args.fence,
    })?;
    if ctx.out.json {
        ctx.out.document(&result)?;
    } else {
        ctx.out.text(&render::published_line(&result))?;
    }
    Ok(0)
}

/// Writes one result's content to stdout, exactly (--json: its record, content base64).
fn print_result(ctx: &mut Ctx, mut results: Vec<ResultInfo>, key: &str) -> Result<u8> {
    let Some(r) = results.pop() else {
        return Err(anyhow!("the daemon sent no result {key:?}").into());
    };
    if ctx.out.json {
        ctx.out.document(&r)?;
        return Ok(0);
    }
    let encoded = r
        .content_base64
        .as_deref()
        .ok_or_else(|| anyhow!("the daemon sent result {key:?} without its content"))?;
    let content = BASE64
        .decode(encoded.as_bytes())
        .map_err(|e| anyhow!("the content of result {key:?} from the daemon is not base64: {e}"))?;
    ctx.out.bytes(&content)?;
    Ok(0)
}

pub fn results(ctx: &mut Ctx, args: ResultsArgs) -> Result<u8> {
    let wait_secs = args.wait.then(|| args.timeout.unwrap_or(DEFAULT_WAIT_SECS));
    let query = ResultsQuery { agent: None, from: name(args.from), key: args.key.clone(), wait_secs };
    let results = ctx.connect()?.results(query)?;
    match &args.key {
        Some(key) => print_result(ctx, results, key),
        None if ctx.out.json => {
            ctx.out.document(&results)?;
            Ok(0)
        }
        None => {
            ctx.out.text(&render::results_table(&results, now_unix_ms()))?;
            Ok(0)
        }
    }
}

pub fn delegate(ctx: &mut Ctx, args: DelegateArgs) -> Result<u8> {
    let spawn = if args.spawn {
        let request =
            super::spawn::build_request(&args.to, args.spawn_opts, args.command, Some(false), true)?;
        Some(Box::new(request))
    } else {
        None
    };
    let mut client = ctx.connect()?;
    let (task, spawned) = client.delegate(DelegateRequest {
        agent: name(args.agent),
        to: args.to.to_string(),
        text: args.text,
        parent: args.parent,
        spawn,
    })?;
    // With --wait, stdout is the result's: what was delegated goes to stderr.
    if ctx.out.json && !args.wait {
        #[derive(serde::Serialize)]
        struct Delegated<'a> {
            task: &'a rush_proto::coordination::Task,
            #[serde(skip_serializing_if = "Option::is_none")]
            spawned: Option<&'a rush_proto::AgentInfo>,
        }
        ctx.out.document(&Delegated { task: &task, spawned: spawned.as_ref() })?;
    } else {
        let mut text = render::delegated_line(&task);
        if let Some(agent) = &spawned {
            text += &format!(
                "spawned {} (pid {}, cgroup id {}); output: rush agent logs {}\n",
                render::sanitize(&agent.name),
                agent.pid,
                agent.cgroup_id,
                render::sanitize(&agent.name)
            );
        }
        if args.wait {
            eprint!("{}", text.lines().map(|l| format!("rush: {l}\n")).collect::<String>());
        } else {
            ctx.out.text(&text)?;
        }
    }
    if !args.wait {
        return Ok(0);
    }
    let wait_secs = args.timeout.unwrap_or(DEFAULT_WAIT_SECS);
    let query = ResultsQuery {
        agent: None,
        from: None,
        key: Some(task.result_key.clone()),
        wait_secs: Some(wait_secs),
    };
    let results = client.results(query).with_context(|| {
        format!("task {} was delegated to {}, but its result did not come", task.id, task.to)
    })?;
    print_result(ctx, results, &task.result_key)
}

pub fn inbox(ctx: &mut Ctx, args: InboxArgs) -> Result<u8> {
    let wait_secs = args.wait.then(|| args.timeout.unwrap_or(DEFAULT_WAIT_SECS));
    let agent = name(args.agent);
    let (tasks, approvals) = ctx.connect()?.inbox(agent.as_deref(), wait_secs)?;
    if ctx.out.json {
        #[derive(serde::Serialize)]
        struct Inbox<'a> {
            tasks: &'a [rush_proto::coordination::Task],
            approvals: &'a [rush_proto::approval::Approval],
        }
        ctx.out.document(&Inbox { tasks: &tasks, approvals: &approvals })?;
    } else {
        ctx.out.text(&render::inbox(&tasks, &approvals))?;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_content_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.bin");
        std::fs::write(&big, vec![0u8; MAX_RESULT_BYTES as usize + 1]).unwrap();
        let Err(crate::error::Error::Failed { error, .. }) = read_file(&big) else { panic!("not refused") };
        let e = error.to_string();
        assert!(
            e.contains(&big.display().to_string()) && e.contains("716801 bytes") && e.contains("700 KiB"),
            "{e}"
        );
        let ok = dir.path().join("ok.bin");
        std::fs::write(&ok, [0u8, 255, 10]).unwrap();
        assert_eq!(read_file(&ok).ok().unwrap(), [0u8, 255, 10]);
        let mut stdin = std::io::Cursor::new(vec![1u8; MAX_RESULT_BYTES as usize + 10]);
        let Err(crate::error::Error::Failed { error, .. }) = read_limited(&mut stdin, "stdin") else {
            panic!("not refused")
        };
        assert!(error.to_string().starts_with("stdin holds more than 716800 bytes: "), "{error}");
    }
}
