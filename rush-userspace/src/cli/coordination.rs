//! `rush agent broadcast | query-intents | claim | renew | release | claims | publish |
//! results | delegate | inbox`: the command line of agent coordination.

use std::path::{Path, PathBuf};

use clap::{ArgGroup, Args};
use rush_proto::AgentName;
use rush_proto::coordination::{self as co, Fence};

use super::{SpawnOptions, UsageError};

/// `--agent NAME` of the commands an agent runs as itself.
const AGENT_HELP: &str = "The agent to act for. Inside an agent, rush acts as that agent (it may be left out, \
                          or name itself); the operator must name one.";

pub const BROADCAST_LONG_ABOUT: &str = "\
Declare an intent: tell the other agents of the session what this agent is about to do, \
and where (--paths). An intent is a notice, not a lock: nothing is refused because of it. \
Agents look for intents touching what they plan to change with `rush agent query-intents \
--paths`, before they start (and `rush agent claim` what must not be done twice).

The intent lasts --ttl (2h by default), then disappears. Relative paths are taken from \
the current directory; globs (`*`, `?`, `[..]`, `**` as a whole component) are kept as \
globs. Prints `intent N: TEXT (expires in ...)`; --json prints the intent. Audited as \
`intent`.

Run by an agent, the intent is that agent's; the operator declares one for an agent with \
--agent NAME.";

pub const BROADCAST_EXAMPLES: &str = "\
Examples:
  $ rush agent broadcast 'renaming Lexer to Tokenizer' --paths 'src/parser/**' --ttl 30m
  intent 7: renaming Lexer to Tokenizer (expires in 30m)

  Before touching a file, see who said they would:
    $ rush agent query-intents --paths src/parser/lex.rs";

pub const QUERY_INTENTS_LONG_ABOUT: &str = "\
List the live intents (see `rush agent broadcast`) as a table: ID AGENT SESSION EXPIRES \
PATHS TEXT. With --paths, an OVERLAPS column marks the intents naming a path that may \
overlap one of yours (one is inside the other, or a glob may match both: `src/*.rs` and \
`src/*.md` count as overlapping, to be safe). Relative paths are taken from the current \
directory.

An agent sees the intents of its own session; the operator sees every session's, or one \
session's with --session. With --json, one JSON array of intents (`overlaps: true` on the \
overlapping ones).";

pub const QUERY_INTENTS_EXAMPLES: &str = "\
Examples:
  $ rush agent query-intents --paths src/parser
  ID  AGENT    SESSION  EXPIRES  OVERLAPS  PATHS                      TEXT
  7   coder-1  web      in 29m   yes       /srv/web/src/parser/**     renaming Lexer to Tokenizer
  $ rush agent query-intents --json | jq '.[] | select(.overlaps)'";

pub const CLAIM_LONG_ABOUT: &str = "\
Take an exclusive lease on TASK, a name the agents agree on (a ticket, a module, \
`parser-rewrite`): of all the agents that claim it, exactly one holds it, and every other \
is told which one. The daemon decides with one compare-and-swap in its state database, \
committed before it answers, so two claims never both win, also across a daemon restart.

A claim is a lease: it lapses after --ttl (30m by default) unless its holder renews it \
(`rush agent renew`), and ends when the holder releases it, exits or is killed. The next \
claimant then gets it. Each holding has a lease number and a fencing token. The fencing \
token grows every time the task changes hands, so whoever shows the highest one owns the \
task, and a holder that was paused past its lease (and lost the task without knowing) \
shows a stale one. Show it where the work lands: `rush agent publish --fence TASK:TOKEN` \
refuses a result whose token is not the task's current one.

With --paths, the claim also protects files. While it lasts, the other agents of the \
holder's session may not write, create, delete or rename anything in those paths (a file, \
or a directory and everything below it). The kernel enforces this with BPF LSM: their \
attempts fail with EPERM and are audited as `claim_deny`, naming the task and its holder. \
Reads stay allowed, and agents of other sessions are not affected. A glob protects what \
it matches when the claim is made. Relative paths are taken from the current directory; \
a path that is not a glob must exist.

Without BPF LSM (see `rush doctor`, guarantee `path claims`) the paths are advisory: the \
claim is still exclusive and listed by `rush agent claims --path`, but nothing stops other \
agents writing there. rush then prints a warning, and with --enforce the claim is refused \
instead.

Exit status 0 when the task is yours (also when you held it already), 1 when another \
agent holds it: stderr then says `task TASK is held by agent NAME (fencing F, expires in \
...)`. --json prints the outcome, {\"won\", \"claim\", \"warning\"}, either way (the \
holder's claim when lost). Audited as `claim` (action acquired, renewed, released, \
revoked, expired or holder_exited).

Run by an agent, the claim is that agent's; the operator claims for an agent with \
--agent NAME.";

pub const CLAIM_EXAMPLES: &str = "\
Examples:
  Two agents go for the same task; the second learns who has it:
    $ rush agent claim parser --paths src/parser --ttl 1h
    claimed parser: lease 12, fencing token 3, expires in 1h
      paths: /srv/web/src/parser (kernel: the session's other agents cannot write, create,
             delete or rename there)
    $ rush agent claim parser
    rush: task parser is held by agent coder-1 (fencing 3, expires in 59m)

  Keep the lease while working, publish under its token, let go:
    $ rush agent renew parser --ttl 1h
    $ rush agent publish parser-patch --file fix.diff --fence parser:3
    $ rush agent release parser

  In a script (exit status 1 if another agent holds it):
    $ out=$(rush agent claim parser --json) && fence=$(jq -r .claim.fencing <<<\"$out\")

  Who holds the file a write was refused in:
    $ rush agent claims --path src/parser/lex.rs";

pub const RENEW_LONG_ABOUT: &str = "\
Extend the lease on TASK that the agent holds: it now ends --ttl from now (by default, \
the TTL the claim was taken with). The lease number and fencing token stay the same. A \
task the agent does not hold (never claimed, released, or its lease already lapsed and \
possibly taken by another agent) is an error, exit status 1: claim it again, and expect a \
new fencing token. Prints `renewed TASK: lease L, fencing token F, expires in ...`; --json \
prints the outcome as `rush agent claim` does. Audited as `claim` with action renewed.";

pub const RELEASE_LONG_ABOUT: &str = "\
Give up the claim on TASK: its paths are writable by the session's other agents again at \
once, and the next `rush agent claim TASK` wins (with a higher fencing token). An agent \
releases its own claims only. The operator releases the claim of agent NAME with --agent \
NAME, or, without --agent, whoever holds the task (audited as `claim` with action revoked \
and the operator's uid; an agent's own release is action released). A task not held (by \
that agent) is an error, exit status 1. Prints the claim released; --json prints it as \
JSON.";

pub const RELEASE_EXAMPLES: &str = "\
Examples:
  $ rush agent release parser
  released parser (held by coder-1, lease 12, fencing token 3)
  Take a task away from a stuck agent (operator):
    $ sudo rush agent release parser";

pub const CLAIMS_LONG_ABOUT: &str = "\
List the live claims as a table: TASK HOLDER SESSION FENCING EXPIRES ENFORCEMENT PATHS. \
ENFORCEMENT is `kernel` (the session's other agents get EPERM writing in PATHS), \
`advisory` (this kernel has no BPF LSM: nothing refuses their writes) or `-` (a claim \
without paths).

With --path, only the claims covering PATH (inside one of their paths, or matched by one \
of their globs): how an agent whose write was refused with EPERM finds out which task and \
which agent hold it, and whom to ask. Relative paths are taken from the current \
directory.

An agent sees the claims of its own session; the operator sees every session's, or one \
session's with --session. With --json, one JSON array of claims.";

pub const CLAIMS_EXAMPLES: &str = "\
Examples:
  $ rush agent claims
  TASK    HOLDER   SESSION  FENCING  EXPIRES  ENFORCEMENT  PATHS
  parser  coder-1  web      3        in 58m   kernel       /srv/web/src/parser
  $ echo x >> src/parser/lex.rs
  bash: src/parser/lex.rs: Operation not permitted
  $ rush agent claims --path src/parser/lex.rs";

pub const PUBLISH_LONG_ABOUT: &str = "\
Publish a result under KEY: the content of FILE (--file) or of stdin (--stdin), up to \
700 KiB (the daemon may be set to less: `[coordination] max_result_bytes`, 512 KiB by \
default), any bytes. The daemon stores it by its sha256 digest and tells the session's \
agents where to find it: `rush agent results KEY`. Publishing KEY again replaces it.

--for AGENT makes it readable by that agent only (and the operator); otherwise every agent \
of the session may read it. --fence TASK:TOKEN publishes only if TOKEN is still the \
current fencing token of TASK and the agent holds it (see `rush agent claim`): a holder \
whose lease lapsed while it worked cannot overwrite the work of the one that took over.

Publishing key task/N, as the agent task N was delegated to, completes that task (see \
`rush agent delegate`). Prints `published KEY: N bytes, sha256 ...`; --json prints the \
result's record. Audited as `result` (key, size and digest, never the content).

Run by an agent, the result is that agent's; the operator publishes for an agent with \
--agent NAME.";

pub const PUBLISH_EXAMPLES: &str = "\
Examples:
  $ rush agent publish parser-patch --file fix.diff --fence parser:3
  published parser-patch: 4211 bytes, sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
  $ cargo test 2>&1 | rush agent publish test-log --stdin --for reviewer

  Complete the task in your inbox (RUSH_TASK is set for an agent spawned for it):
    $ rush agent publish task/$RUSH_TASK --file summary.md";

pub const RESULTS_LONG_ABOUT: &str = "\
Without KEY, list the results you may read as a table: KEY FROM FOR SESSION SIZE AGE \
SHA256 (its first 12 hex digits). An agent reads its session's results that are for \
everyone, for it, or its own; the operator reads all. --from lists only those published by \
one agent.

With KEY, write that result's content to stdout, byte for byte (redirect it to a file for \
binary content); --json prints its record instead, the content base64-encoded in \
`content_base64`. A key not published (or not readable by you) is an error, exit status 1. \
With --wait, wait for KEY to be published first, up to --timeout (60s by default, 1h at \
most): how a delegator waits for the task/N of a task it handed out.";

pub const RESULTS_EXAMPLES: &str = "\
Examples:
  $ rush agent results
  KEY           FROM     FOR  SESSION  SIZE  AGE  SHA256
  parser-patch  coder-1  -    web      4.1K  2m   9f86d081884c
  $ rush agent results parser-patch > fix.diff
  $ rush agent results task/12 --wait --timeout 30m
  $ rush agent results parser-patch --json | jq -r .content_base64 | base64 -d";

pub const DELEGATE_LONG_ABOUT: &str = "\
Hand a task to agent TO: TEXT (what is to be done) goes to TO's inbox, where `rush agent \
inbox` shows it, and the task gets a number N and a result key, task/N. The task is done \
when TO publishes its result under task/N (`rush agent publish task/N ...`); the delegator \
reads it with `rush agent results task/N`. Prints `task N delegated to TO (its result: \
rush agent results task/N)`; --json prints the task (and the agent spawned for it).

--wait then waits for the result, up to --timeout (60s by default, 1h at most), and \
writes it to stdout byte for byte (--json: its record, the content base64-encoded), the \
line about the task going to stderr; exit status 1 if it did not come in time. --parent N \
makes the task part of task N (a chain of delegations).

TO must be a running agent. With --spawn (operator only) the daemon spawns TO for the \
task instead, detached, from the spawn options (--profile, --allow, --net, --budget, \
--session, --trust, ...; as `rush agent spawn`) and CMD after `--`: the task is in its \
inbox before its first process runs, and RUSH_TASK=N is in its environment.

Run by an agent, the task is delegated by that agent; the operator delegates as agent \
NAME with --agent NAME. Audited as `task` (action delegated, then done).";

pub const DELEGATE_EXAMPLES: &str = "\
Examples:
  $ rush agent delegate 'write tests for src/parser' tester
  task 12 delegated to tester (its result: rush agent results task/12)

  Hand off and wait for the answer:
    $ rush agent delegate 'review fix.diff' reviewer --wait --timeout 30m > review.md

  Spawn a worker for it (operator), acting as agent lead:
    $ rush agent delegate 'summarise the logs' summariser --agent lead --spawn \\
        --profile claude-code --session web -- claude -p \"$(cat prompt.md)\"";

pub const INBOX_LONG_ABOUT: &str = "\
List the open tasks delegated to the agent (see `rush agent delegate`) as a table: ID \
FROM RESULT-KEY TEXT, oldest first, or `inbox empty`. A task leaves the inbox when the \
agent publishes its result under RESULT-KEY. With --wait and an empty inbox, wait until a \
task arrives or --timeout (60s by default, 1h at most) passes; the inbox is then printed \
as it is (possibly still empty, exit status 0).

Below the tasks, the agent's requests for a person's decision (`rush ask`) decided since it \
last looked (here, or with `rush approval wait` or `show`), one line each: `approval 12 \
approved by uid:0 via cli: write /w/migrations`. With --json, one JSON object: \
{\"tasks\": [...], \"approvals\": [...]}.

Run by an agent, it is that agent's inbox; the operator reads agent NAME's with --agent \
NAME.";

pub const INBOX_EXAMPLES: &str = "\
Examples:
  $ rush agent inbox
  ID  FROM  RESULT-KEY  TEXT
  12  lead  task/12     write tests for src/parser
  A worker's loop:
    $ while :; do rush agent inbox --wait --timeout 1h --json | jq -c '.tasks[]' | ...; done";

#[derive(Debug, Args)]
pub struct BroadcastArgs {
    /// What the agent is about to do (up to 4096 bytes).
    #[arg(value_name = "TEXT")]
    pub text: String,
    /// A path or glob the intent is about (repeat for several, up to 64).
    #[arg(long = "paths", value_name = "PATH", value_parser = parse_path)]
    pub paths: Vec<String>,
    /// How long the intent lasts (90s, 30m, 2h; default 2h, at most 30d).
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
    pub ttl: Option<u64>,
    #[arg(long, value_name = "NAME", help = AGENT_HELP)]
    pub agent: Option<AgentName>,
}

#[derive(Debug, Args)]
pub struct QueryIntentsArgs {
    /// Mark the intents overlapping this path or glob (repeat for several).
    #[arg(long = "paths", value_name = "PATH", value_parser = parse_path)]
    pub paths: Vec<String>,
    /// Only intents of agents of this session (an agent sees its own session's only).
    #[arg(long, value_name = "SESSION")]
    pub session: Option<AgentName>,
}

#[derive(Debug, Args)]
pub struct ClaimArgs {
    /// The task: 1-256 bytes of printable characters, no whitespace.
    #[arg(value_name = "TASK", value_parser = parse_task)]
    pub task: String,
    /// A file, directory or glob the session's other agents may not write in while the
    /// claim lasts (repeat for several, up to 64).
    #[arg(long = "paths", value_name = "PATH", value_parser = parse_path)]
    pub paths: Vec<String>,
    /// How long the lease lasts unless renewed (90s, 30m, 2h; default 30m, at most 30d).
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
    pub ttl: Option<u64>,
    /// Refuse the claim if the kernel cannot enforce its paths (no BPF LSM), instead of
    /// taking it with advisory paths.
    #[arg(long)]
    pub enforce: bool,
    #[arg(long, value_name = "NAME", help = AGENT_HELP)]
    pub agent: Option<AgentName>,
}

#[derive(Debug, Args)]
pub struct RenewArgs {
    /// The task the agent holds.
    #[arg(value_name = "TASK", value_parser = parse_task)]
    pub task: String,
    /// The lease's new length, from now (default: the TTL it was claimed with).
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
    pub ttl: Option<u64>,
    #[arg(long, value_name = "NAME", help = AGENT_HELP)]
    pub agent: Option<AgentName>,
}

#[derive(Debug, Args)]
pub struct ReleaseArgs {
    /// The task to give up.
    #[arg(value_name = "TASK", value_parser = parse_task)]
    pub task: String,
    /// Release only if agent NAME holds it (the operator without --agent releases
    /// whoever holds it; inside an agent, the agent itself).
    #[arg(long, value_name = "NAME")]
    pub agent: Option<AgentName>,
}

#[derive(Debug, Args)]
pub struct ClaimsArgs {
    /// Only the claims covering this path: who holds it.
    #[arg(long, value_name = "PATH", value_parser = parse_path)]
    pub path: Option<String>,
    /// Only claims held by agents of this session (an agent sees its own session's only).
    #[arg(long, value_name = "SESSION")]
    pub session: Option<AgentName>,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("content").required(true).args(["file", "stdin"])))]
pub struct PublishArgs {
    /// The result's key: 1-256 bytes of printable characters, no whitespace (task/N for
    /// the result of task N).
    #[arg(value_name = "KEY", value_parser = parse_result_key)]
    pub key: String,
    /// Publish the content of FILE.
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Publish what is read from stdin, to its end.
    #[arg(long)]
    pub stdin: bool,
    /// Only AGENT (and the operator) may read it.
    #[arg(long = "for", value_name = "AGENT")]
    pub for_agent: Option<AgentName>,
    /// Publish only while TOKEN is TASK's current fencing token, held by this agent.
    #[arg(long, value_name = "TASK:TOKEN", value_parser = parse_fence)]
    pub fence: Option<Fence>,
    #[arg(long, value_name = "NAME", help = AGENT_HELP)]
    pub agent: Option<AgentName>,
}

#[derive(Debug, Args)]
pub struct ResultsArgs {
    /// The result to print (its content, raw); without it, list the results.
    #[arg(value_name = "KEY", value_parser = parse_result_key)]
    pub key: Option<String>,
    /// Only results published by this agent.
    #[arg(long, value_name = "AGENT")]
    pub from: Option<AgentName>,
    /// Wait for KEY to be published.
    #[arg(long, requires = "key")]
    pub wait: bool,
    /// With --wait: how long to wait (default 60s, at most 1h).
    #[arg(long, value_name = "DURATION", requires = "wait", value_parser = parse_timeout)]
    pub timeout: Option<u64>,
}

#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("spawn_settings")
        .multiple(true)
        .args(["net", "trust", "budget", "allow", "hardlinks", "user", "allow_unconfined", "session", "profile", "command"])
        .requires("spawn")
))]
#[command(group(ArgGroup::new("spawn_command").multiple(true).args(["command", "profile"])))]
pub struct DelegateArgs {
    /// What is to be done (up to 4096 bytes).
    #[arg(value_name = "TEXT")]
    pub text: String,
    /// The agent that gets the task.
    #[arg(value_name = "TO")]
    pub to: AgentName,
    /// The task this one is part of.
    #[arg(long, value_name = "ID")]
    pub parent: Option<u64>,
    /// Then wait for the task's result (task/N) and write it to stdout.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: how long to wait (default 60s, at most 1h).
    #[arg(long, value_name = "DURATION", requires = "wait", value_parser = parse_timeout)]
    pub timeout: Option<u64>,
    /// The agent delegating. Inside an agent, rush acts as that agent (it may be left
    /// out, or name itself); the operator must name one.
    #[arg(long, value_name = "NAME")]
    pub agent: Option<AgentName>,
    /// Spawn TO for the task, detached (operator only), with the options below and CMD
    /// after `--` (or the --profile's command).
    #[arg(long, requires = "spawn_command")]
    pub spawn: bool,
    #[command(flatten, next_help_heading = "Spawn options (with --spawn)")]
    pub spawn_opts: SpawnOptions,
    /// With --spawn: the command TO runs, after `--`.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct InboxArgs {
    /// With an empty inbox, wait for a task to arrive.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: how long to wait (default 60s, at most 1h).
    #[arg(long, value_name = "DURATION", requires = "wait", value_parser = parse_timeout)]
    pub timeout: Option<u64>,
    #[arg(long, value_name = "NAME", help = AGENT_HELP)]
    pub agent: Option<AgentName>,
}

/// How long `--wait` waits unless told.
pub const DEFAULT_WAIT_SECS: u64 = 60;

/// `p` made absolute against `cwd` and normalised lexically: `.` and empty components
/// dropped, `..` removing the component before it (never above `/`), no trailing slash.
/// Glob components are kept as they are.
pub fn absolutize(cwd: &Path, p: &str) -> Result<String, UsageError> {
    if p.is_empty() {
        return Err(UsageError("invalid path \"\": empty".into()));
    }
    let base = if p.starts_with('/') {
        ""
    } else {
        cwd.to_str().ok_or_else(|| {
            UsageError(format!(
                "cannot resolve {p:?}: the current directory {} is not UTF-8; give an absolute path",
                cwd.display()
            ))
        })?
    };
    let mut parts: Vec<&str> = Vec::new();
    for c in base.split('/').chain(p.split('/')) {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

fn parse_path(s: &str) -> Result<String, UsageError> {
    let cwd = std::env::current_dir()
        .map_err(|e| UsageError(format!("cannot resolve {s:?}: cannot read the current directory: {e}")))?;
    let path = absolutize(&cwd, s)?;
    co::check_pattern(&path).map_err(UsageError)?;
    Ok(path)
}

/// `TASK:TOKEN`; the task may contain ':' itself (the token is after the last one).
pub fn parse_fence(s: &str) -> Result<Fence, UsageError> {
    let bad = |why: String| {
        UsageError(format!("invalid --fence {s:?}: {why} (expected TASK:TOKEN, e.g. parser:3)"))
    };
    let (task, token) = s.rsplit_once(':').ok_or_else(|| bad("no ':'".into()))?;
    co::check_name("the task", task).map_err(bad)?;
    let fencing =
        token.parse::<u64>().map_err(|_| bad(format!("fencing token {token:?} is not a number")))?;
    Ok(Fence { task: task.to_owned(), fencing })
}

fn parse_task(s: &str) -> Result<String, UsageError> {
    co::check_name("task", s).map(|()| s.to_owned()).map_err(|why| UsageError(format!("invalid task: {why}")))
}

fn parse_result_key(s: &str) -> Result<String, UsageError> {
    co::check_name("result key", s)
        .map(|()| s.to_owned())
        .map_err(|why| UsageError(format!("invalid key: {why}")))
}

fn parse_ttl(s: &str) -> Result<u64, UsageError> {
    let secs =
        rush_proto::parse_duration(s).map_err(|e| UsageError(format!("invalid --ttl: {e}")))?.as_secs();
    co::check_ttl("invalid --ttl", secs).map_err(UsageError)?;
    Ok(secs)
}

fn parse_timeout(s: &str) -> Result<u64, UsageError> {
    let secs =
        rush_proto::parse_duration(s).map_err(|e| UsageError(format!("invalid --timeout: {e}")))?.as_secs();
    if secs == 0 || secs > co::MAX_WAIT_SECS {
        return Err(UsageError(format!("invalid --timeout {s:?}: wait 1s to 1h")));
    }
    Ok(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_made_absolute_and_normalised() {
        let cwd = Path::new("/srv/web/src");
        for (given, want) in [
            ("parser", "/srv/web/src/parser"),
            ("parser/", "/srv/web/src/parser"),
            ("./parser//lex.rs", "/srv/web/src/parser/lex.rs"),
            ("../tests", "/srv/web/tests"),
            ("../../../../..", "/"),
            (".", "/srv/web/src"),
            ("/etc/../var/./log/", "/var/log"),
            ("/", "/"),
            ("parser/**/*.rs", "/srv/web/src/parser/**/*.rs"),
            ("../[ab]?.md", "/srv/web/[ab]?.md"),
        ] {
            assert_eq!(absolutize(cwd, given).unwrap(), want, "{given}");
        }
        assert_eq!(absolutize(Path::new("/"), "x").unwrap(), "/x");
        assert!(absolutize(cwd, "").unwrap_err().0.contains("empty"));
        use std::os::unix::ffi::OsStrExt;
        let odd = std::ffi::OsStr::from_bytes(b"/tmp/\xff");
        let e = absolutize(Path::new(odd), "x").unwrap_err().0;
        assert!(e.contains("not UTF-8") && e.contains("\"x\""), "{e}");
        assert_eq!(absolutize(Path::new(odd), "/abs").unwrap(), "/abs");
    }

    #[test]
    fn fences_parse_at_the_last_colon() {
        assert_eq!(parse_fence("parser:3").unwrap(), Fence { task: "parser".into(), fencing: 3 });
        assert_eq!(parse_fence("ns:task:12").unwrap(), Fence { task: "ns:task".into(), fencing: 12 });
        for (bad, why) in [
            ("parser", "no ':'"),
            ("parser:", "\"\" is not a number"),
            ("parser:x", "\"x\" is not a number"),
            ("parser:-1", "is not a number"),
            (":3", "empty"),
            ("a b:3", "' '"),
        ] {
            let e = parse_fence(bad).unwrap_err().0;
            assert!(e.starts_with(&format!("invalid --fence {bad:?}")) && e.contains(why), "{bad}: {e}");
        }
    }

    fn parse(args: &[&str]) -> Result<super::super::AgentCommand, clap::Error> {
        use clap::Parser;
        let cli = super::super::Cli::try_parse_from(["rush", "agent"].iter().chain(args))?;
        match cli.command {
            super::super::Command::Agent(a) => Ok(a),
            other => panic!("{args:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn coordination_flags() {
        use super::super::AgentCommand as A;
        let cwd = std::env::current_dir().unwrap();
        let A::Claim(c) =
            parse(&["claim", "t1", "--paths", "x/../y", "--paths", "/w/**", "--ttl", "1h", "--enforce"])
                .unwrap()
        else {
            panic!()
        };
        assert_eq!(c.paths, [format!("{}/y", cwd.display()), "/w/**".to_owned()]);
        assert_eq!((c.task.as_str(), c.ttl, c.enforce, c.agent), ("t1", Some(3600), true, None));
        let A::Publish(p) = parse(&["publish", "k", "--stdin", "--fence", "t1:4", "--for", "lead"]).unwrap()
        else {
            panic!()
        };
        assert_eq!(p.fence, Some(Fence { task: "t1".into(), fencing: 4 }));
        assert!(p.stdin && p.file.is_none() && p.for_agent.unwrap().as_str() == "lead");
        // One source, exactly.
        assert!(parse(&["publish", "k"]).is_err());
        assert!(parse(&["publish", "k", "--stdin", "--file", "f"]).is_err());
        // --wait needs a key, --timeout needs --wait.
        assert!(parse(&["results", "--wait"]).is_err());
        assert!(parse(&["results", "k", "--timeout", "5s"]).is_err());
        let A::Results(r) = parse(&["results", "k", "--wait", "--timeout", "5m"]).unwrap() else { panic!() };
        assert_eq!((r.wait, r.timeout), (true, Some(300)));
        assert!(parse(&["claim", "a b"]).is_err());
        assert!(parse(&["claims", "--path", "/w/[x"]).is_err());
    }

    #[test]
    fn delegate_spawn_options_need_spawn_and_spawn_needs_a_command() {
        use super::super::AgentCommand as A;
        let A::Delegate(d) = parse(&["delegate", "do it", "w", "--agent", "lead"]).unwrap() else { panic!() };
        assert!(!d.spawn && d.command.is_empty() && d.agent.unwrap().as_str() == "lead");
        let A::Delegate(d) = parse(&[
            "delegate",
            "do it",
            "w",
            "--spawn",
            "--net",
            "deny",
            "--allow",
            "/tmp:read",
            "--session",
            "s",
            "--budget",
            "cpu:1m",
            "--",
            "sh",
            "-c",
            "true",
        ])
        .unwrap() else {
            panic!()
        };
        assert!(d.spawn && d.spawn_opts.net.is_some() && d.spawn_opts.allow.len() == 1);
        assert_eq!(d.command, ["sh", "-c", "true"]);
        let A::Delegate(d) = parse(&["delegate", "x", "w", "--spawn", "--profile", "codex"]).unwrap() else {
            panic!()
        };
        assert_eq!(d.spawn_opts.profile.as_deref(), Some("codex"));
        for bad in [
            &["delegate", "x", "w", "--spawn"][..],
            &["delegate", "x", "w", "--net", "deny"],
            &["delegate", "x", "w", "--", "sh"],
            &["delegate", "x", "w", "--timeout", "5s"],
        ] {
            let e = parse(bad).expect_err("should be refused");
            assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
        }
    }

    #[test]
    fn durations_are_bounded() {
        assert_eq!(parse_ttl("30m").unwrap(), 1800);
        assert_eq!(parse_ttl("90").unwrap(), 90);
        assert!(parse_ttl("0").unwrap_err().0.contains("at least 1s"));
        assert!(parse_ttl("31d").unwrap_err().0.contains("30 days"));
        assert!(parse_ttl("soon").unwrap_err().0.starts_with("invalid --ttl"));
        assert_eq!(parse_timeout("1h").unwrap(), 3600);
        assert!(parse_timeout("61m").unwrap_err().0.contains("1s to 1h"));
        assert!(parse_timeout("0s").is_err());
    }
}
