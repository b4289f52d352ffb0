//! The command line: clap types, their help text, and the parsers clap calls.
//!
//! Every value a user types is parsed here, with the parsers of `rush-proto`, so bad input
//! is refused with exit status 2 before anything reaches the daemon.

use std::fmt;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use rush_proto::{AgentName, Budget, SpecError};

use crate::time;

mod approvals;
mod coordination;
mod gating;
mod spawn;
mod top;
mod workspace;
pub use approvals::*;
pub use coordination::*;
pub use gating::*;
pub use spawn::*;
pub use top::*;
pub use workspace::*;

const ABOUT: &str = "Run AI agents confined by the kernel";

const LONG_ABOUT: &str = "\
Run AI agents confined by the kernel.

rush is the command-line frontend of Rush. It asks the root daemon, rush-agentd, to run \
commands as agents: each agent gets its own cgroup, and eBPF programs attached to it \
enforce the agent's network policy and file grants in the kernel, whatever the agent \
does. rush itself holds no privileges; it talks to the daemon over a Unix socket.

Without a subcommand, rush is a bash-compatible shell (brush-core) with Rush built in: \
`rush` (interactive), `rush -c COMMAND [NAME [ARG...]]`, `rush SCRIPT [ARG...]`, `rush -s`, \
and bash's options (-e, -u, -x, -o NAME, -O NAME, --norc, --posix, ...). In it, `rush \
checkpoint`, `rush rollback` and `rush session attach/detach` save and restore the shell's \
own state (environment, cwd, aliases, functions, options, jobs, performance baseline). A \
script named like a subcommand runs as `rush ./NAME`. See docs/SHELL.md.";

const EXAMPLES: &str = "\
Examples:
  Check what this kernel can enforce:
    $ rush doctor

  Run a shell as an agent with no network, in the foreground:
    $ rush agent spawn scratch -- bash

  Run a coding agent in the background that may only reach one API:
    $ rush agent spawn coder --net api.anthropic.com:443 --detach -- claude -p 'fix the tests'
    $ rush agent logs coder --follow

  See what was refused in the last ten minutes:
    $ rush audit --since 10m

Exit status:
  0  success
  1  the request failed (one line on stderr says what and why)
  2  usage error: bad flags or values, refused before reaching the daemon
  3  `rush ask --wait`, `rush approval wait`: the request was rejected, expired or cancelled
  4  `rush ask --wait`, `rush approval wait`: the wait ended with the request still pending
  A foreground `rush agent spawn` exits with the agent's own status instead, and so does
  the command of an approved `rush ask --kind command --wait`.

Environment:
  RUSH_SOCKET   the daemon's socket when --socket is not given (set in every agent's
                environment: rush run inside an agent reaches the daemon as that agent)
  RUSH_SESSION  the session of session commands and `agent spawn` when --session is not
                given (set by `rush session attach`)
  RUSH_AGENT    set by the daemon in every agent: the rush shell run there is risk-gated,
                locked on (every line, and every external command on its expanded words)
  RUSH_PERF     `off`: the interactive shell does not time its commands (`rush perf`)";

#[derive(Debug, Parser)]
#[command(
    name = "rush",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_long_help = EXAMPLES,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// Path of the daemon's Unix socket. It must be owned by root or by you.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "PATH",
        env = "RUSH_SOCKET",
        default_value = rush_proto::DEFAULT_SOCKET
    )]
    pub socket: PathBuf,

    /// Print JSON on stdout instead of text: one document, or one object per line when
    /// following a stream (--follow).
    #[arg(long, global = true, help_heading = "Global options")]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Spawn, list, inspect and stop agents; coordinate them (claims, intents, results, tasks)
    #[command(subcommand)]
    Agent(AgentCommand),

    /// Grant, revoke, list and commit file capability tokens of agents
    #[command(subcommand, visible_alias = "cap")]
    Capability(CapabilityCommand),

    /// Sessions: workspace directories whose history Rush keeps
    #[command(subcommand)]
    Session(SessionCommand),

    /// Snapshot a session's workspace, with your shell's state (and its agents' processes)
    #[command(long_about = CHECKPOINT_LONG_ABOUT, after_long_help = TIME_TRAVEL_EXAMPLES)]
    Checkpoint(CheckpointArgs),

    /// Put a session's workspace back as it was at a checkpoint (undoable)
    #[command(long_about = ROLLBACK_LONG_ABOUT, after_long_help = TIME_TRAVEL_EXAMPLES)]
    Rollback(RollbackArgs),

    /// A session's timelines and checkpoints: branch, switch, list, diff, delete, prune
    #[command(subcommand)]
    Timeline(TimelineCommand),

    /// Show the audit trail: spawns, exits, kills and everything the kernel refused
    #[command(long_about = AUDIT_LONG_ABOUT, after_long_help = AUDIT_EXAMPLES)]
    Audit(AuditArgs),

    /// Watch the daemon's event stream: agent state changes, denials, budgets, checkpoints
    #[command(long_about = EVENTS_LONG_ABOUT, after_long_help = EVENTS_EXAMPLES)]
    Events(EventsArgs),

    /// Ask a person for a decision; wait for, show, cancel and list requests
    #[command(subcommand)]
    Approval(ApprovalCommand),

    /// Ask a person for a decision (the same as `rush approval request`)
    #[command(long_about = REQUEST_LONG_ABOUT, after_long_help = REQUEST_EXAMPLES)]
    Ask(Box<RequestArgs>),

    /// List the requests waiting for a person's decision (the same as `rush approval list`)
    #[command(long_about = LIST_LONG_ABOUT, after_long_help = LIST_EXAMPLES)]
    Approvals(ListArgs),

    /// Approve a pending request, or a batch of them
    #[command(long_about = APPROVE_LONG_ABOUT, after_long_help = DECIDE_EXAMPLES)]
    Approve(ApproveArgs),

    /// Reject a pending request, or a batch of them
    #[command(long_about = REJECT_LONG_ABOUT, after_long_help = DECIDE_EXAMPLES)]
    Reject(RejectArgs),

    /// The human attention queue: where each priority goes, batching, similarity, aging
    #[command(subcommand)]
    HumanQueue(HumanQueueCommand),

    /// How each class of action is asked: its channel, priority, timeout, batch window
    #[command(subcommand)]
    ApprovalPolicy(ApprovalPolicyCommand),

    /// Show what risk gating decides about a shell command, and why (nothing runs)
    #[command(long_about = EXPLAIN_LONG_ABOUT, after_long_help = EXPLAIN_EXAMPLES)]
    Explain(ExplainArgs),

    /// Run a shell command if risk gating allows it: here, sandboxed, in a guest, or once a
    /// person says yes
    #[command(long_about = EXECUTE_LONG_ABOUT, after_long_help = EXECUTE_EXAMPLES)]
    Execute(ExecuteArgs),

    /// Guardrails learned from outcomes: list, remove, export, import
    #[command(subcommand, long_about = GUARDRAIL_LONG_ABOUT, after_long_help = GUARDRAIL_EXAMPLES)]
    Guardrail(GuardrailCommand),

    /// Hooks that put agent tools (Claude Code, Codex) behind risk gating
    #[command(subcommand, long_about = HOOK_LONG_ABOUT)]
    Hook(HookCommand),

    /// Show how long the rush shell's commands took, and which got slower
    #[command(long_about = PERF_LONG_ABOUT, after_long_help = PERF_EXAMPLES)]
    Perf(PerfArgs),

    /// Watch and steer every agent live: a full-screen table, its terminal, denials, approvals
    #[command(long_about = TOP_LONG_ABOUT, after_long_help = TOP_EXAMPLES)]
    Top(TopArgs),

    /// Show what this kernel supports and which guarantees hold on this machine
    #[command(long_about = DOCTOR_LONG_ABOUT)]
    Doctor {
        /// Show what agent profile NAME will allow here (its hosts, file tokens,
        /// environment, terminal), expanded for this directory and your home.
        #[arg(long, value_name = "NAME")]
        profile: Option<String>,
    },

    /// Print the versions of rush and of the running daemon
    #[command(long_about = "Print the versions of rush and of the running daemon, with the \
                      protocol version each speaks and how the daemon sees you. Exits 1 \
                      if the daemon cannot be reached; `rush --version` needs no daemon.")]
    Version,

    /// Say who you are to the daemon: the operator, an agent (which), or neither
    #[command(long_about = "Say how the daemon sees you: the operator (root or the operator \
                      group, outside any agent), agent NAME (a process inside an agent, \
                      whatever its uid: it may ask about itself only: `rush agent status`, \
                      `rush capability list`, `rush capability commit`, `rush doctor`, and \
                      coordinate with its session's agents: `rush agent claim`, `broadcast`, \
                      `publish`, `results`, `delegate`, `inbox`, ...; and ask a person: \
                      `rush ask`, `rush approval wait`), or unprivileged. The daemon decides from your process's credentials and \
                      cgroup, never from anything you say. With --json, one JSON object.")]
    Whoami,

    /// Print a shell completion script
    #[command(after_long_help = "Example:\n  $ rush completions bash > /etc/bash_completion.d/rush")]
    Completions {
        /// The shell to complete for.
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },

    /// Print the man page (roff) on stdout
    #[command(hide = true)]
    Man {
        /// Write rush.1 and a rush-SUBCOMMAND.1 page per subcommand into DIR instead
        /// (packaging: `cargo xtask deb`).
        #[arg(long, value_name = "DIR")]
        dir: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct PerfArgs {
    /// One command line, exactly as it was typed: its runs, newest last.
    #[arg(value_name = "COMMAND")]
    pub command: Option<String>,
    /// The session whose records to show; default: $RUSH_SESSION, else the shells
    /// attached to none (`default`).
    #[arg(long, short = 's', value_name = "SESSION")]
    pub session: Option<AgentName>,
    /// Only command lines whose last run is a regression.
    #[arg(long)]
    pub regressions: bool,
}

const PERF_LONG_ABOUT: &str = "\
Show the performance records of the rush shell. An interactive rush times every command \
line it runs (wall time, and CPU time of the shell and the children it waited for) with \
its exit status, per session, and keeps the last 20 runs of each line as its baseline \
(and up to 500 lines). A run slower than its baseline's median by 25% and by at least \
50 ms is a regression: the shell says so when it happens, and this command flags it.

The baseline is part of a checkpoint's shell state: `rush rollback` in the rush shell \
puts it back with the files, the environment and the functions. Records live in \
$XDG_STATE_HOME/rush/perf/SESSION.jsonl (else ~/.local/state/rush/perf); RUSH_PERF=off \
in a shell's environment stops the recording.

Without COMMAND: one line per command line, most recent first: runs, median, last run \
and its change against the median of the runs before it. With COMMAND: each run. \
--json prints the series.";

const PERF_EXAMPLES: &str = "\
Examples:
  $ rush perf
  $ rush perf 'cargo test'
  $ rush perf --regressions --session refactor --json";

const AUDIT_LONG_ABOUT: &str = "\
Show the audit trail the daemon keeps: agents spawned, exited and killed, requests it \
refused, and every connect() or sendmsg() the kernel denied an agent.

Text output is one line per record: the time (UTC), the record's sequence number, the \
agent, the kind of record, and its details as key=value pairs. With --json, rush prints \
one JSON array of records; with --json --follow, one JSON object per line (NDJSON), as \
records happen; with --export, every matching record as one JSON object per line.

The filters combine (a record must pass them all) and apply to --follow too. The daemon \
keeps the trail in its state database across restarts and reboots, pruning it by age and \
count (`[audit] retention` and `max_records` in its config; 90 days and a million records \
by default). A `records_lost` record says how many records the database refused (a full \
disk) before it took records again.";

const AUDIT_EXAMPLES: &str = "\
Examples:
  $ rush audit --since 10m
  $ rush audit --agent coder --since 2026-11-27T02:00:00Z --limit 50
  $ rush audit --kind file_deny,net_deny --since 1d --until 1h
  $ rush audit --session refactor --kind checkpoint,rollback
  $ rush audit --export --since 30d > audit-$(date +%F).jsonl
  $ rush audit --follow --json | jq 'select(.event.kind == \"net_deny\")'";

const EVENTS_LONG_ABOUT: &str = "\
Print the daemon's events: every agent state change (spawn, pause, resume, exit, kill), \
every denial, budget crossing, grant, revoke and checkpoint, and the agents' coordination \
(intents, claims, writes refused in claimed paths, results, delegated tasks), as the \
services publish them.

Without --follow, prints the newest --limit matching events from the audit trail and \
exits. With --follow, subscribes to the live stream and prints each event as it happens \
until you press Ctrl-C. The daemon never waits for a subscriber: one that falls more than \
`[events] backlog` events behind (4096 by default) or stops reading for 5 s is dropped, and `rush events` then says how \
many events it missed and exits 1.

Only root and the operator group may watch events.";

const EVENTS_EXAMPLES: &str = "\
Examples:
  $ rush events --follow
  $ rush events --follow --agent coder --kinds file_deny,net_deny
  $ rush events --follow --kinds intent,claim,claim_deny,result,task
  $ rush events --follow --json | jq 'select(.event.kind == \"budget_exceeded\")'
  $ rush events --session refactor --limit 50";

const DOCTOR_LONG_ABOUT: &str = "\
Ask the daemon what the running kernel supports (BPF LSM, cgroup v2 controllers, \
the BPF hooks Rush attaches, ...) and therefore which of Rush's guarantees hold on this \
machine. Every fact is probed, not read from configuration.

This is a report: it exits 0 even when guarantees do not hold, and 1 only when the \
daemon cannot be asked. To probe a kernel without a running daemon, run \
`rush-agentd doctor` as root.";

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Run a command as a new confined agent
    #[command(long_about = SPAWN_LONG_ABOUT, after_long_help = SPAWN_EXAMPLES)]
    Spawn(SpawnArgs),

    /// List the agents the daemon knows: running ones and those that exited
    #[command(
        long_about = "List the agents the daemon knows, running or exited, as a table: \
                      NAME STATE PID PROCS NET UPTIME/EXIT COMMAND. UPTIME/EXIT is how long \
                      a running agent has run, or how an exited one ended. With --json, \
                      prints one JSON array of agents.",
        visible_alias = "ls"
    )]
    List,

    /// Show everything about one agent
    #[command(long_about = "Show one agent as key: value lines: its state, first process, \
                            cgroup (path and id, the agent's identity in the kernel), the \
                            network policy, which kernel mechanisms confine it, and its \
                            exit status once it exited. With --json, prints the agent as \
                            one JSON object. Run inside an agent, NAME may be left out: \
                            an agent may see its own status (and only its own).")]
    Status {
        /// The agent's name (inside an agent: its own, the default).
        #[arg(value_name = "NAME")]
        name: Option<AgentName>,
    },

    /// Freeze every process of an agent until it is resumed
    #[command(long_about = "Freeze every process of the agent with the cgroup freezer: they \
                            stop where they are (no signal is sent, nothing is lost) until \
                            `rush agent resume`. Prints the agent as `status` does.")]
    Pause {
        /// The agent's name.
        #[arg(value_name = "NAME")]
        name: AgentName,
    },

    /// Continue a paused agent, or one frozen at its cpu budget
    #[command(
        long_about = "Thaw an agent paused with `rush agent pause` or frozen because it \
                            used up its cpu budget. --budget replaces the limits it names \
                            (the others stay): an agent frozen at its cpu budget continues \
                            only with a higher cpu limit, and resume fails, leaving it \
                            frozen, if the new one is still used up. Raising mem, pids, net, \
                            api or cost takes effect at once.",
        after_long_help = "Examples:\n  Give an agent frozen at cpu:1h another hour:\n    \
                                   $ rush agent resume coder --budget cpu:2h"
    )]
    Resume {
        /// The agent's name.
        #[arg(value_name = "NAME")]
        name: AgentName,
        /// New limits, in the --budget syntax of `agent spawn`, e.g. cpu:2h,cost:$10.
        #[arg(long, value_name = "KEY:VALUE,...")]
        budget: Option<Budget>,
    },

    /// Kill an agent's whole process tree and remove its cgroup
    #[command(long_about = "Kill every process in the agent's cgroup, including the ones \
                            that daemonized or double-forked, and remove the cgroup. Prints \
                            how many processes were killed. A --restartable agent is not started \
                            again after this; one whose restart failed (it is not running) is \
                            forgotten, with 0 processes killed.")]
    Kill {
        /// The agent's name.
        #[arg(value_name = "NAME")]
        name: AgentName,
    },

    /// Print what a detached agent wrote to stdout and stderr
    #[command(long_about = "Print what a detached agent (spawned with --detach) wrote to its \
                            stdout and stderr, as the daemon captured it. With --follow, \
                            keeps printing new output as it is written, until the agent \
                            exits or you press Ctrl-C. With --json, prints {\"data\": \"...\"}, \
                            one object per chunk when following.")]
    Logs {
        /// The agent's name.
        #[arg(value_name = "NAME")]
        name: AgentName,
        /// Keep printing output as the agent writes it.
        #[arg(long, short = 'f')]
        follow: bool,
    },

    /// Use an agent's terminal: see its screen, type into it, detach again
    #[command(long_about = ATTACH_LONG_ABOUT, after_long_help = ATTACH_EXAMPLES)]
    Attach {
        /// The agent's name (spawned with --tty).
        #[arg(value_name = "NAME")]
        name: AgentName,
        /// Watch only: nothing you type reaches the agent.
        #[arg(long, conflicts_with = "steal")]
        read_only: bool,
        /// Take the keyboard from whoever is typing (they can still watch).
        #[arg(long)]
        steal: bool,
        /// The keys that detach, comma-separated: `ctrl-X` or one character.
        #[arg(long, value_name = "KEYS", default_value = "ctrl-\\,d", value_parser = detach_keys)]
        detach_keys: DetachKeys,
    },

    /// Type text into an agent's terminal, as if at its keyboard
    #[command(
        long_about = "Type TEXT into the terminal of agent NAME (spawned with --tty), \
                            as a person at its keyboard would, whoever else is attached. \
                            TEXT is sent as given; --enter adds the Enter key (a carriage \
                            return) after it. Prints how many bytes were typed (--json: \
                            {\"bytes\": N}). Audited as terminal_input, with the length, \
                            not the text.",
        after_long_help = "Examples:\n  Answer a prompt of a detached agent:\n    \
                                $ rush agent send coder y --enter"
    )]
    Send {
        /// The agent's name.
        #[arg(value_name = "NAME")]
        name: AgentName,
        /// What to type.
        #[arg(value_name = "TEXT")]
        text: String,
        /// Press Enter after TEXT.
        #[arg(long)]
        enter: bool,
    },

    /// Tell the session's agents what this agent is about to do, and where
    #[command(long_about = BROADCAST_LONG_ABOUT, after_long_help = BROADCAST_EXAMPLES)]
    Broadcast(BroadcastArgs),

    /// List the live intents, marking those that overlap given paths
    #[command(long_about = QUERY_INTENTS_LONG_ABOUT, after_long_help = QUERY_INTENTS_EXAMPLES)]
    QueryIntents(QueryIntentsArgs),

    /// Take an exclusive, leased claim on a task (and write-protect its paths)
    #[command(long_about = CLAIM_LONG_ABOUT, after_long_help = CLAIM_EXAMPLES)]
    Claim(ClaimArgs),

    /// Extend the lease on a claimed task
    #[command(long_about = RENEW_LONG_ABOUT, after_long_help = CLAIM_EXAMPLES)]
    Renew(RenewArgs),

    /// Give up a claim (the operator: take it away from its holder)
    #[command(long_about = RELEASE_LONG_ABOUT, after_long_help = RELEASE_EXAMPLES)]
    Release(ReleaseArgs),

    /// List the live claims, or who holds a path
    #[command(long_about = CLAIMS_LONG_ABOUT, after_long_help = CLAIMS_EXAMPLES)]
    Claims(ClaimsArgs),

    /// Publish a result (a file or stdin) for the session's agents
    #[command(long_about = PUBLISH_LONG_ABOUT, after_long_help = PUBLISH_EXAMPLES)]
    Publish(PublishArgs),

    /// List the published results, or print one (waiting for it with --wait)
    #[command(long_about = RESULTS_LONG_ABOUT, after_long_help = RESULTS_EXAMPLES)]
    Results(ResultsArgs),

    /// Hand a task to another agent (or spawn one for it), optionally waiting for its result
    #[command(long_about = DELEGATE_LONG_ABOUT, after_long_help = DELEGATE_EXAMPLES)]
    Delegate(Box<DelegateArgs>),

    /// List the tasks delegated to the agent (waiting for one with --wait)
    #[command(long_about = INBOX_LONG_ABOUT, after_long_help = INBOX_EXAMPLES)]
    Inbox(InboxArgs),

    /// Git worktrees for agents, their untracked state cloned in, and a merge queue
    #[command(subcommand, long_about = WORKSPACE_LONG_ABOUT, after_long_help = WORKSPACE_EXAMPLES)]
    Workspace(WorkspaceCommand),
}

/// The detach sequence of `rush agent attach`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetachKeys(pub Vec<u8>);

fn detach_keys(s: &str) -> Result<DetachKeys, String> {
    rush_proto::terminal::parse_detach_keys(s).map(DetachKeys)
}

const ATTACH_LONG_ABOUT: &str = "\
Make this terminal the terminal of agent NAME (spawned with --tty): its screen is shown \
(the scroll-back of what it printed, or the screen of a full-screen program as it is now), \
what you type goes to it in raw mode (Ctrl-C and Ctrl-Z are the agent's, not rush's), and \
your window size is its window size, kept in sync when you resize.

Press the detach keys (default Ctrl-\\ then d) to leave: the agent goes on running and \
`rush agent attach` brings you back. Closing the terminal detaches too. When the agent \
ends while you are attached, rush exits with its exit status (128+N if signal N killed it).

Several people can watch at once; one types. A second `attach` watches read-only until \
the one typing detaches (it is told so), --steal takes the keyboard over, --read-only \
never types. Only root or the user the agent runs as may attach. Each attach is audited \
(terminal_attached). The agent's output is also in `rush agent logs NAME`, as plain text.";

const ATTACH_EXAMPLES: &str = "\
Examples:
  A full-screen agent in the background, then at your terminal:
    $ rush agent spawn coder --tty --detach -- claude
    $ rush agent attach coder
  Watch someone else's session without typing:
    $ rush agent attach coder --read-only
  Detach with Ctrl-A d instead:
    $ rush agent attach coder --detach-keys ctrl-a,d";

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only events of these kinds (comma-separated or repeated): spawn, exit, kill,
    /// paused, resumed, net_deny, file_deny, budget_exceeded, checkpoint, intent, claim,
    /// claim_deny, result, task, ... as in `.event.kind` of the JSON; an unknown kind is an
    /// error that lists them all.
    #[arg(long, value_name = "KIND,...", value_delimiter = ',', value_parser = parse_kind)]
    pub kinds: Vec<String>,

    /// Only events about this agent.
    #[arg(long, value_name = "NAME")]
    pub agent: Option<AgentName>,

    /// Only events of session NAME (and of the agents spawned into it).
    #[arg(long, value_name = "NAME")]
    pub session: Option<AgentName>,

    /// Keep printing events as they happen, until Ctrl-C.
    #[arg(long, short = 'f')]
    pub follow: bool,

    /// Without --follow: how many of the newest matching events to print.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub limit: usize,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only records about this agent.
    #[arg(long, value_name = "NAME")]
    pub agent: Option<AgentName>,

    /// Only records at or after TIME: a duration ago (90s, 10m, 1h30m, 2d; a bare number
    /// is seconds), an RFC 3339 time (2026-11-27T02:16:11Z, 2026-11-27 02:16, 2026-11-27;
    /// UTC when no offset is given), or @MS for Unix milliseconds as in the JSON records.
    #[arg(long, value_name = "TIME", value_parser = parse_since)]
    pub since: Option<u64>,

    /// Only records at or before TIME, written as for --since (10m: ten minutes ago).
    #[arg(long, value_name = "TIME", value_parser = parse_until)]
    pub until: Option<u64>,

    /// Only records of session NAME: its checkpoints, rollbacks, timeline changes, and
    /// everything about the agents spawned into it.
    #[arg(long, value_name = "NAME")]
    pub session: Option<AgentName>,

    /// Only records of kind KIND (repeat it, or give a comma-separated list, for several):
    /// spawn, exit, kill, net_deny, file_deny, grant, revoke, checkpoint, claim, claim_deny,
    /// ... as in the fourth column of the text output and `.event.kind` in JSON; an unknown kind is an
    /// error that lists them all.
    #[arg(long, value_name = "KIND", value_delimiter = ',', value_parser = parse_kind)]
    pub kind: Vec<String>,

    /// Only records of requests made by this uid (spawns, kills, grants, checkpoints, ...).
    #[arg(long, value_name = "UID")]
    pub caller_uid: Option<u32>,

    /// Only the N newest matching records (0 = all). With --follow, limits the backlog
    /// printed before new records.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub limit: usize,

    /// Keep printing records as they happen, until you press Ctrl-C.
    #[arg(long, short = 'f')]
    pub follow: bool,

    /// Print every matching record as one JSON object per line (JSON lines), oldest first,
    /// for scripts and archives: `rush audit --export --since 30d > audit.jsonl`.
    #[arg(long, conflicts_with = "follow")]
    pub export: bool,
}

const CHECKPOINT_LONG_ABOUT: &str = "\
Take checkpoint NAME of a session's workspace: the session's agents are frozen, the \
workspace is synced and snapshotted read-only (a btrfs snapshot: tens of milliseconds \
whatever the tree's size; a git commit of every file where btrfs is unavailable), and the \
agents thawed. Your shell's state is saved with it: working directory and environment. \
With --with-processes, the agents' process trees are also dumped with CRIU, so that a \
rollback resumes them where they were; where CRIU cannot work (`rush doctor` says), that \
is refused and nothing is taken.

The session is the one named by --session, or else the one whose workspace contains the \
current directory.";

const ROLLBACK_LONG_ABOUT: &str = "\
Put a session's workspace back as it was at checkpoint NAME. The present state is first \
kept as an automatic checkpoint (undo-N: `rush rollback undo-N` undoes the rollback). The \
checkpoint is built as a new tree beside the live one and swapped in with one atomic \
rename: no process ever sees a half-restored tree, and a crash leaves the old tree or the \
new one (the daemon settles it when it starts again).

The session's running agents are stopped, since their open files and working directories \
belong to the replaced tree, except those whose processes the checkpoint holds: they are \
restored from it with CRIU.

A process cannot change its parent shell, so the saved shell state is printed, not \
applied: with --shell, rush prints commands that restore it (cd, export, unset) on stdout \
and its report on stderr, for `eval \"$(rush rollback NAME --shell)\"`. A shell whose \
working directory is inside the workspace needs a `cd` to see the restored tree.";

const TIME_TRAVEL_EXAMPLES: &str = "\
Examples:
  $ rush session create web --workspace ~/src/web
  $ cd ~/src/web && rush checkpoint before-refactor
  $ rush agent spawn coder --session web --allow ~/src/web:read,write,create,delete --detach -- claude
  $ rush timeline diff before-refactor main
  $ eval \"$(rush rollback before-refactor --shell)\"
  $ rush rollback undo-1            # changed your mind
  $ rush checkpoint mid-run --with-processes";

#[derive(Debug, Args)]
pub struct SessionArg {
    /// The session; default: $RUSH_SESSION (set by `rush session attach`), else the one
    /// whose workspace contains the current directory.
    #[arg(long, short = 's', value_name = "SESSION")]
    pub session: Option<AgentName>,
}

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// Make a session own a directory: its contents move into the snapshot store and the
    /// path becomes a symlink to them, so you keep working where you were
    #[command(long_about = "Make session NAME own a workspace directory (default: the current \
                            one). Its contents move into the daemon's snapshot store (a btrfs \
                            subvolume; see `rush doctor`) and the directory becomes a symlink to \
                            them, so paths stay the same. A shell inside the directory must `cd` \
                            into it again. `rush session rm` puts it back as a plain directory.")]
    Create {
        #[arg(value_name = "NAME")]
        name: AgentName,
        /// The directory (default: the current directory).
        #[arg(long, short = 'w', value_name = "DIR")]
        workspace: Option<PathBuf>,
    },
    /// List sessions: workspace, store, timeline, checkpoints, agents, attachments, keys
    #[command(
        visible_alias = "ls",
        long_about = "List sessions as a table: NAME WORKSPACE STORE TIMELINE CHECKPOINTS \
                      AGENTS (running agents spawned into it) ATTACHED (shells attached to it \
                      now) KEYS (of its key-value state) CWD (the working directory `rush \
                      session attach` starts in) AGE. With --json, one JSON array of sessions."
    )]
    List,
    /// Show everything about one session: workspace, store, timeline, working directory,
    /// attachments, agents, checkpoints and keys
    #[command(
        visible_alias = "status",
        long_about = "Show one session as key: value lines: its workspace, store and live \
                      timeline, the working directory attach starts in, the shells attached \
                      to it (pid, uid, terminal, since when), its running agents, its \
                      checkpoints (oldest first) and the names of its keys (values are \
                      printed only by `rush session get`). NAME defaults to $RUSH_SESSION, else \
                      the session whose workspace contains the current directory. With --json, \
                      one JSON object.",
        after_long_help = "Examples:\n  $ rush session show web\n  $ rush session show --json | jq .attachments"
    )]
    Show {
        /// The session (default: $RUSH_SESSION, else the one around the current directory).
        #[arg(value_name = "NAME")]
        name: Option<AgentName>,
    },
    /// Set a key of the session's key-value state
    #[command(long_about = SESSION_SET_LONG_ABOUT, after_long_help = SESSION_KV_EXAMPLES)]
    Set {
        /// 1-256 bytes of printable characters, with no whitespace and no '='.
        #[arg(value_name = "KEY", value_parser = parse_key)]
        key: String,
        /// Any UTF-8 text up to 64 KiB: newlines, quotes and the empty string are kept
        /// exactly.
        #[arg(value_name = "VALUE", allow_hyphen_values = true)]
        value: String,
        #[command(flatten)]
        session: SessionArg,
    },
    /// Print a key's value, exactly (or every key and value)
    #[command(long_about = SESSION_GET_LONG_ABOUT, after_long_help = SESSION_KV_EXAMPLES)]
    Get {
        /// The key; without it, every key and value.
        #[arg(value_name = "KEY", value_parser = parse_key)]
        key: Option<String>,
        #[command(flatten)]
        session: SessionArg,
    },
    /// Remove a key of the session's key-value state
    #[command(long_about = "Remove KEY from the session's key-value state. A key the session \
                            does not have is an error (exit 1). Audited as `session_kv` with \
                            action=unset (the value is not recorded).")]
    Unset {
        #[arg(value_name = "KEY", value_parser = parse_key)]
        key: String,
        #[command(flatten)]
        session: SessionArg,
    },
    /// Bind a shell to a session: a subshell in it, or (--print) lines for your shell's eval
    #[command(long_about = SESSION_ATTACH_LONG_ABOUT, after_long_help = SESSION_ATTACH_EXAMPLES)]
    Attach {
        /// The session to attach to.
        #[arg(value_name = "NAME")]
        name: AgentName,
        /// Print shell commands (export RUSH_SESSION=..., cd ...) instead of starting a
        /// subshell, for `eval "$(rush session attach NAME --print)"`.
        #[arg(long)]
        print: bool,
    },
    /// Leave the attached session, saving the current directory as its working directory
    #[command(long_about = SESSION_DETACH_LONG_ABOUT, after_long_help = SESSION_ATTACH_EXAMPLES)]
    Detach {
        /// Print `unset RUSH_SESSION` for eval, and the report on stderr.
        #[arg(long)]
        print: bool,
        /// The session; default: $RUSH_SESSION.
        #[arg(long, short = 's', value_name = "SESSION")]
        session: Option<AgentName>,
    },
    /// Remove a session: its workspace is put back as a plain directory at its path, and
    /// its checkpoints, timelines, keys and attachments are deleted. Refused while its
    /// agents run.
    Rm {
        #[arg(value_name = "NAME")]
        name: AgentName,
    },
}

const SESSION_SET_LONG_ABOUT: &str = "\
Set KEY of the session's key-value state to VALUE, replacing any value it had. The pair \
is written to the daemon's state database before rush returns, and stays until it is \
unset or the session removed: across daemon restarts and reboots. Agents and scripts of \
the session share what is kept here (an API endpoint, a ticket number, the task at hand).

VALUE is any UTF-8 text up to 64 KiB, kept exactly: newlines, quotes, `$`, the empty \
string. KEY is 1-256 bytes of printable characters with no whitespace and no '=' (a bad \
key is refused with exit status 2, naming it and why).

The audit trail records that KEY was set (a `session_kv` record with the key and \
action=set), never the value: values may be secrets. The database itself is readable by \
root only.";

const SESSION_GET_LONG_ABOUT: &str = "\
Print the value of KEY, byte for byte as it was set, followed by one newline (which \
`$(rush session get KEY)` strips, like any newlines the value ends with; `--json` keeps \
them). A key the session does not have is an error, exit status 1: session \"S\" has no \
key \"K\".

Without KEY, print every key and value as a table (values with control characters \
escaped, long ones cut), or with --json one JSON object mapping each key to its value. \
With KEY and --json, one object: {\"session\", \"key\", \"value\"}.";

const SESSION_KV_EXAMPLES: &str = "\
Examples:
  $ rush session set task 'port the parser to nom' --session web
  $ rush session get task --session web
  port the parser to nom
  $ rush session set notes \"$(cat notes.md)\"     # multi-line, kept exactly
  $ rush session get --json | jq -r .notes
  $ rush session unset notes";

const SESSION_ATTACH_LONG_ABOUT: &str = "\
Bind a shell to session NAME. The daemon records the attachment (the shell's pid, your \
uid, its terminal, the time; `rush session show` lists them, and it is audited as \
`session_attached`); in the attached shell RUSH_SESSION=NAME, so every session command \
(`checkpoint`, `rollback`, `timeline ...`, `session get/set/unset/show/detach`) and `agent \
spawn` act on NAME without --session, wherever the shell's directory is. The session is \
chosen by --session first, then RUSH_SESSION, then the workspace containing the current \
directory; a RUSH_SESSION naming no session is an error naming it.

By default rush starts an interactive subshell ($SHELL, else /bin/sh) attached to the \
session, in the session's working directory (the one `rush session detach` last saved, \
else the workspace). When that shell exits, rush detaches it and exits with its status.

With --print, rush starts nothing: it attaches the shell that ran it (its parent process) \
and prints two lines for that shell to eval, every value single-quoted:
  export RUSH_SESSION='NAME'
  cd 'DIR'
Attachments end with `rush session detach` or when their shell exits (the daemon prunes \
attachments of shells that are gone, also across restarts and reboots).";

const SESSION_DETACH_LONG_ABOUT: &str = "\
Detach the shell that ran rush (its parent process) from its session (--session, else \
$RUSH_SESSION): the current directory is saved as the session's working directory, where \
the next `rush session attach` starts, and the attachment is dropped (audited as \
`session_detached`). Detaching a shell that is not attached is an error.

rush cannot change its parent shell's environment: with --print it prints `unset \
RUSH_SESSION` for eval (and its report on stderr); without, it says what to do: `exit` in a \
subshell started by `rush session attach`, else unset RUSH_SESSION.";

const SESSION_ATTACH_EXAMPLES: &str = "\
Examples:
  A subshell attached to session web, in its working directory; `exit` detaches:
    $ rush session attach web
    $ rush checkpoint before-refactor       # session web, wherever you are
    $ rush session detach && exit

  Attach the shell you are in, and detach it later:
    $ eval \"$(rush session attach web --print)\"
    $ rush agent spawn coder --detach -- claude   # an agent of session web
    $ eval \"$(rush session detach --print)\"";

fn parse_key(s: &str) -> Result<String, UsageError> {
    rush_proto::session::check_key(s).map(|()| s.to_owned()).map_err(UsageError)
}

#[derive(Debug, Args)]
pub struct CheckpointArgs {
    /// The checkpoint's name (unique among the session's checkpoints and timelines).
    #[arg(value_name = "NAME")]
    pub name: AgentName,
    #[command(flatten)]
    pub session: SessionArg,
    /// Also dump the session's agents' processes with CRIU.
    #[arg(long)]
    pub with_processes: bool,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The checkpoint to go back to.
    #[arg(value_name = "NAME")]
    pub name: AgentName,
    #[command(flatten)]
    pub session: SessionArg,
    /// Print shell commands restoring the saved working directory and environment on
    /// stdout (for eval), and the report on stderr.
    #[arg(long)]
    pub shell: bool,
}

#[derive(Debug, Subcommand)]
pub enum TimelineCommand {
    /// A new writable timeline from a checkpoint (default: from the live workspace); the
    /// workspace stays where it is
    Branch {
        #[arg(value_name = "NAME")]
        name: AgentName,
        /// The checkpoint to start from.
        #[arg(long, value_name = "CHECKPOINT")]
        from: Option<AgentName>,
        #[command(flatten)]
        session: SessionArg,
    },
    /// Point the workspace at another timeline (refused while the session's agents run)
    Switch {
        #[arg(value_name = "NAME")]
        name: AgentName,
        #[command(flatten)]
        session: SessionArg,
    },
    /// The session's timelines and checkpoints
    List {
        #[command(flatten)]
        session: SessionArg,
    },
    /// Files added (A), removed (D) and modified (M) from A to B, each a checkpoint or a
    /// timeline, and the differences of their saved environments
    Diff {
        #[arg(value_name = "A")]
        a: AgentName,
        #[arg(value_name = "B")]
        b: AgentName,
        #[command(flatten)]
        session: SessionArg,
    },
    /// Delete a checkpoint
    Rm {
        #[arg(value_name = "CHECKPOINT")]
        name: AgentName,
        #[command(flatten)]
        session: SessionArg,
    },
    /// Delete all but the newest N checkpoints, and/or those older than AGE
    Prune {
        /// Keep the newest N.
        #[arg(long, value_name = "N")]
        keep: Option<u32>,
        /// Delete those older than AGE (90s, 10m, 1h30m, 7d).
        #[arg(long, value_name = "AGE", value_parser = parse_age)]
        older_than: Option<u64>,
        #[command(flatten)]
        session: SessionArg,
    },
}

fn parse_age(s: &str) -> Result<u64, SpecError> {
    rush_proto::parse_duration(s).map(|d| d.as_millis() as u64)
}

#[derive(Debug, Subcommand)]
pub enum CapabilityCommand {
    /// Give a file-confined agent a capability token on a file or directory
    #[command(long_about = GRANT_LONG_ABOUT, after_long_help = GRANT_EXAMPLES)]
    Grant(GrantArgs),

    /// Withdraw an agent's tokens, by path or by id; open files lose access at once
    #[command(long_about = "Withdraw capability tokens of a running agent: every token on \
                            PATH (--path), or one token (--id, from `rush capability list`). \
                            The kernel entry is rewritten before rush returns, so the agent's \
                            next open, read or write under that path fails with EPERM, also \
                            on files it already has open. Prints the withdrawn tokens.")]
    Revoke(RevokeArgs),

    /// List capability tokens: of one agent, or of all
    #[command(long_about = "List capability tokens as a table: ID AGENT PATH OPS EXPIRES \
                            ORIGIN. ORIGIN is `baseline` (what every file-confined agent gets \
                            so that programs and tool chains run, from the daemon's config, \
                            and its private TMPDIR), `spawn` \
                            (--allow) or `grant`. Expired tokens stay listed, marked as \
                            expired, until the agent exits. With --json, one JSON array. \
                            Run inside an agent, it lists that agent's own tokens.")]
    List {
        /// Only this agent's tokens.
        #[arg(value_name = "AGENT")]
        agent: Option<AgentName>,
    },

    /// Run an agent's conditions: promote its worktree's changes, or discard them
    #[command(long_about = COMMIT_LONG_ABOUT)]
    Commit {
        /// The agent whose conditional tokens to check (inside an agent: its own, the
        /// default; an agent may commit only its own).
        #[arg(value_name = "AGENT")]
        agent: Option<AgentName>,
        /// Only this conditional token (default: all of the agent's).
        #[arg(long, value_name = "ID")]
        token: Option<u64>,
    },
}

const COMMIT_LONG_ABOUT: &str = "\
Run the condition of each conditional token of AGENT (see `rush capability grant \
--condition`): the agent is frozen, the condition runs as a confined agent of its own \
(named AGENT-check-ID, working directory the worktree, no network, writes to the worktree \
only), and then, if it exited 0, the worktree's changes (files added, changed, removed) are \
copied to the granted directory, each file replaced in one rename; otherwise the worktree \
is put back as the directory is, and the reason is recorded. Either way the agent is \
thawed and keeps working in its worktree. Prints one line per token (--json: an array). \
Exit status 0 if every condition passed, 1 if any discarded. The same runs by itself when \
the agent exits; its worktree is then removed.";

const GRANT_LONG_ABOUT: &str = "\
Give a running agent a capability token: it may perform OPS on PATH, and on everything \
under PATH when PATH is a directory. OPS is a comma list of read, write, exec, create and \
delete. With --duration the token lapses by itself after that long: the expiry is checked \
by the kernel against the boot clock, so it holds even if the daemon is not running.

With --condition CMD (directories only) the token is conditional: a worktree, a copy of \
PATH beside it (.NAME.rush-AGENT-ID, a reflink copy where the filesystem can), is what the \
agent gets OPS on, and PATH stays untouched until CMD, run confined in the worktree on \
`rush capability commit` or when the agent exits, exits 0. The agent must be told to work \
in the worktree (printed here, and by `rush capability list`).

Only agents spawned with at least one --allow are file-confined (their file access is \
denied unless a token covers it); granting to any other agent is refused, since it would \
change nothing. PATH must exist: tokens name inodes, so to let an agent create a file, \
grant `create` on its directory. Needs the BPF LSM backend (see `rush doctor`).";

const GRANT_EXAMPLES: &str = "\
Examples:
  $ rush capability grant coder --path /srv/project --ops read,write,create,delete
  $ rush capability grant coder --path /srv/data/input.csv --ops read --duration 30m
  $ rush capability grant coder --path /srv/project --ops read,write,create,delete \\
        --condition 'cargo test --offline'";

#[derive(Debug, Args)]
pub struct GrantArgs {
    /// The agent to grant to.
    #[arg(value_name = "AGENT")]
    pub agent: AgentName,
    /// Absolute path of an existing file or directory.
    #[arg(long, value_name = "PATH", value_parser = parse_absolute)]
    pub path: PathBuf,
    /// Comma list of read, write, exec, create, delete.
    #[arg(long, value_name = "OPS", value_parser = parse_ops)]
    pub ops: rush_proto::Ops,
    /// How long the token lasts (e.g. 90s, 30m, 1h); forever if omitted.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
    pub duration: Option<u64>,
    /// A shell command that must exit 0 for the agent's writes to reach PATH (the agent
    /// writes to a worktree meanwhile).
    #[arg(long, value_name = "CMD")]
    pub condition: Option<String>,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["path", "id"])))]
pub struct RevokeArgs {
    /// The agent whose tokens to withdraw.
    #[arg(value_name = "AGENT")]
    pub agent: AgentName,
    /// Every token of the agent on this path.
    #[arg(long, value_name = "PATH", value_parser = parse_absolute)]
    pub path: Option<PathBuf>,
    /// One token, by the id `rush capability list` shows.
    #[arg(long, value_name = "ID")]
    pub id: Option<u64>,
}

fn parse_absolute(s: &str) -> Result<PathBuf, UsageError> {
    if s.starts_with('/') {
        Ok(PathBuf::from(s))
    } else {
        Err(UsageError(format!("invalid --path {s:?}: the path must be absolute")))
    }
}

fn parse_ops(s: &str) -> Result<rush_proto::Ops, UsageError> {
    match s.parse::<rush_proto::Ops>() {
        Ok(ops) if ops.0 != 0 => Ok(ops),
        Ok(_) => Err(UsageError(format!("invalid --ops {s:?}: no operations"))),
        Err(why) => Err(UsageError(format!(
            "invalid --ops {s:?}: {why} (expected a comma list of read,write,exec,create,delete)"
        ))),
    }
}

fn parse_duration_arg(s: &str) -> Result<u64, UsageError> {
    rush_proto::parse_duration(s)
        .map(|d| d.as_secs())
        .map_err(|e| UsageError(format!("invalid --duration: {e}")))
}

/// A usage error of our own, worded to be shown alone: `rush: <message>`.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn parse_since(s: &str) -> Result<u64, UsageError> {
    parse_time_at("--since", s, time::now_unix_ms())
}

fn parse_until(s: &str) -> Result<u64, UsageError> {
    parse_time_at("--until", s, time::now_unix_ms())
}

fn parse_kind(s: &str) -> Result<String, UsageError> {
    let kinds = rush_proto::AuditEvent::KINDS;
    if kinds.contains(&s) {
        return Ok(s.to_owned());
    }
    Err(UsageError(format!("unknown audit record kind {s:?} (known kinds: {})", kinds.join(", "))))
}

/// A time flag's value as Unix milliseconds, durations counted back from `now_ms`.
fn parse_time_at(flag: &str, s: &str, now_ms: u64) -> Result<u64, UsageError> {
    let err = |why: String| {
        UsageError(format!(
            "invalid {flag} {s:?}: {why} (expected a duration ago like 10m, a time like \
             2026-11-27T02:16:11Z, or @UNIX_MS)"
        ))
    };
    if let Some(ms) = s.strip_prefix('@') {
        return ms.parse::<u64>().map_err(|_| err("@ must be followed by Unix milliseconds".into()));
    }
    let b = s.as_bytes();
    if b.len() >= 5 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-' {
        return time::parse_rfc3339(s).map_err(err);
    }
    match rush_proto::parse_duration(s) {
        Ok(d) => Ok(now_ms.saturating_sub(d.as_millis().try_into().unwrap_or(u64::MAX))),
        Err(SpecError::Duration { why, .. }) => Err(err(why)),
        Err(other) => Err(err(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use clap::error::ErrorKind;
    use rush_proto::{Hardlinks, NetPolicy};

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("rush").chain(args.iter().copied()))
    }

    fn spawn(args: &[&str]) -> SpawnArgs {
        let mut full = vec!["agent", "spawn"];
        full.extend_from_slice(args);
        match parse(&full).unwrap_or_else(|e| panic!("{args:?}: {e}")).command {
            Command::Agent(AgentCommand::Spawn(s)) => s,
            other => panic!("{args:?} parsed as {other:?}"),
        }
    }

    /// The source message clap would show for a value our parsers refused.
    fn refusal(args: &[&str]) -> String {
        let e = parse(args).expect_err("should be refused");
        assert_eq!(e.kind(), ErrorKind::ValueValidation, "{args:?}: {e}");
        std::error::Error::source(&e).expect("a source").to_string()
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn man_page_and_completions_render() {
        let mut man = Vec::new();
        clap_mangen::Man::new(Cli::command()).render(&mut man).unwrap();
        let man = String::from_utf8(man).unwrap();
        assert!(man.contains(".TH rush 1") && man.contains("RUSH_SOCKET"), "{man}");
        for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "rush", &mut script);
            assert!(String::from_utf8(script).unwrap().contains("spawn"), "{shell}");
        }
    }

    #[test]
    fn bash_completion_offers_every_subcommand() {
        let mut script = Vec::new();
        clap_complete::generate(clap_complete::Shell::Bash, &mut Cli::command(), "rush", &mut script);
        let script = String::from_utf8(script).unwrap();
        let cli = Cli::command();
        let visible: Vec<&str> =
            cli.get_subcommands().filter(|c| !c.is_hide_set()).map(|c| c.get_name()).collect();
        assert!(
            visible.len() > 10 && visible.contains(&"agent") && visible.contains(&"audit"),
            "{visible:?}"
        );
        for name in visible {
            assert!(script.contains(&format!("rush,{name})")), "{name}");
        }
        // And the nested ones: `rush agent spawn`, its `--net`.
        assert!(script.contains("rush__subcmd__agent,spawn)") && script.contains("--net"));
    }

    #[test]
    fn user_names_who_the_agent_runs_as() {
        assert_eq!(spawn(&["bot", "--user", "dev", "--", "true"]).opts.user.as_deref(), Some("dev"));
        assert_eq!(spawn(&["bot", "--", "true"]).opts.user, None);
    }

    #[test]
    fn restartable_needs_detach() {
        assert!(spawn(&["bot", "-d", "--restartable", "--", "true"]).restartable);
        let e = parse(&["agent", "spawn", "bot", "--restartable", "--", "true"]).unwrap_err().to_string();
        assert!(e.contains("--detach"), "{e}");
    }

    #[test]
    fn spawn_defaults_and_flags() {
        let s = spawn(&["bot", "--", "echo", "-n", "hi"]);
        assert_eq!(s.name.as_str(), "bot");
        assert_eq!(s.opts.net, None, "the trust level's, or deny: decided by the daemon");
        assert!(s.opts.allow.is_empty() && !s.detach && s.opts.budget.is_none() && s.opts.trust.is_none());
        assert_eq!(s.opts.hardlinks, None, "the trust level's, or follow: decided by the daemon");
        for (flag, mode) in [
            ("follow", Hardlinks::Follow),
            ("refuse-write", Hardlinks::RefuseWrite),
            ("refuse", Hardlinks::Refuse),
        ] {
            assert_eq!(spawn(&["bot", "--hardlinks", flag, "--", "true"]).opts.hardlinks, Some(mode));
        }
        assert_eq!(s.command, ["echo", "-n", "hi"]);

        let s = spawn(&[
            "bot",
            "--net",
            "127.0.0.1:80,[::1]:*",
            "--allow",
            "/srv:read",
            "--allow",
            "/tmp/x:write,create:1h",
            "-d",
            "--",
            "sh",
            "-c",
            "true",
        ]);
        assert!(matches!(s.opts.net, Some(NetPolicy::AllowList(ref eps)) if eps.len() == 2));
        assert_eq!(s.opts.allow.len(), 2);
        assert_eq!(s.opts.allow[1].ttl_secs, Some(3600));
        assert!(s.detach);
        assert_eq!(s.command, ["sh", "-c", "true"]);
    }

    #[test]
    fn global_flags_go_anywhere() {
        let c = parse(&["agent", "list", "--json", "--socket", "/tmp/s"]).unwrap();
        assert!(c.json);
        assert_eq!(c.socket, PathBuf::from("/tmp/s"));
        let c = parse(&["--json", "doctor"]).unwrap();
        assert!(c.json);
    }

    #[test]
    fn bad_values_are_refused_with_the_parsers_message() {
        assert!(refusal(&["agent", "spawn", "bad name", "--", "true"]).contains("invalid agent name"));
        assert!(refusal(&["agent", "spawn", "a", "--net", "nope", "--", "true"]).contains("invalid --net"));
        assert!(refusal(&["agent", "spawn", "a", "--allow", "rel:read", "--", "true"]).contains("absolute"));
        let e = refusal(&["agent", "spawn", "a", "--hardlinks", "sometimes", "--", "true"]);
        assert!(e.contains("invalid --hardlinks \"sometimes\"") && e.contains("refuse-write"), "{e}");
        assert!(refusal(&["agent", "status", "a/b"]).contains("invalid agent name"));
        assert!(refusal(&["agent", "kill", ".."]).contains("invalid agent name"));
        assert!(refusal(&["audit", "--agent", "x y"]).contains("invalid agent name"));
        assert!(refusal(&["audit", "--since", "yesterday"]).contains("invalid --since"));
        assert!(refusal(&["audit", "--since", "2026-13-01"]).contains("month 13"));
    }

    #[test]
    fn missing_or_misplaced_command_is_a_usage_error() {
        for args in [
            &["agent", "spawn", "a"][..],
            &["agent", "spawn", "a", "--"],
            &["agent", "spawn", "a", "true"],
            &["agent", "spawn", "--", "true"],
        ] {
            let e = parse(args).expect_err("should be refused");
            assert_eq!(e.exit_code(), 2, "{args:?}: {e}");
        }
    }

    #[test]
    fn repeated_net_is_refused() {
        let e = parse(&["agent", "spawn", "a", "--net", "deny", "--net", "allow", "--", "x"]);
        assert_eq!(e.unwrap_err().kind(), ErrorKind::ArgumentConflict);
    }

    #[test]
    fn audit_flags() {
        let c = parse(&["audit", "--agent", "bot", "--limit", "5", "-f", "--since", "@1234"]).unwrap();
        let Command::Audit(a) = c.command else { panic!("not audit") };
        assert_eq!(a.agent.unwrap().as_str(), "bot");
        assert_eq!((a.limit, a.follow, a.since), (5, true, Some(1234)));
        assert!(parse(&["audit", "--limit", "-1"]).is_err());
        let c = parse(&[
            "audit",
            "--kind",
            "spawn,exit",
            "--kind",
            "file_deny",
            "--session",
            "s",
            "--until",
            "@99",
            "--caller-uid",
            "1000",
            "--export",
        ])
        .unwrap();
        let Command::Audit(a) = c.command else { panic!("not audit") };
        assert_eq!(a.kind, ["spawn", "exit", "file_deny"]);
        assert_eq!(
            (a.session.unwrap().as_str(), a.until, a.caller_uid, a.export),
            ("s", Some(99), Some(1000), true)
        );
        let e = parse(&["audit", "--kind", "spawn,fle_deny"]).unwrap_err().to_string();
        assert!(e.contains("\"fle_deny\"") && e.contains("file_deny"), "{e}");
        assert!(parse(&["audit", "--export", "--follow"]).is_err());
        let e = parse(&["audit", "--until", "soon"]).unwrap_err().to_string();
        assert!(e.contains("--until"), "{e}");
    }

    #[test]
    fn session_kv_and_attach_flags() {
        let c = parse(&["session", "set", "k", "--value-like", "-s", "web"]).unwrap();
        let Command::Session(SessionCommand::Set { key, value, session }) = c.command else { panic!() };
        assert_eq!(
            (key.as_str(), value.as_str(), session.session.unwrap().as_str()),
            ("k", "--value-like", "web")
        );
        let c = parse(&["session", "set", "k", ""]).unwrap();
        assert!(matches!(c.command, Command::Session(SessionCommand::Set { value, .. }) if value.is_empty()));
        assert!(refusal(&["session", "set", "a=b", "v"]).contains("invalid key \"a=b\""));
        assert!(refusal(&["session", "get", "a b"]).contains("whitespace"));
        let c = parse(&["session", "attach", "web", "--print"]).unwrap();
        assert!(matches!(c.command, Command::Session(SessionCommand::Attach { print: true, .. })));
        let c = parse(&["session", "status"]).unwrap();
        assert!(matches!(c.command, Command::Session(SessionCommand::Show { name: None })));
    }

    #[test]
    fn since_forms() {
        let now = 1_795_745_771_123;
        assert_eq!(parse_time_at("--since", "10m", now).unwrap(), now - 600_000);
        assert_eq!(parse_time_at("--since", "90", now).unwrap(), now - 90_000);
        assert_eq!(parse_time_at("--since", "1h30m", now).unwrap(), now - 5_400_000);
        assert_eq!(parse_time_at("--since", "100000d", now).unwrap(), 0);
        assert_eq!(parse_time_at("--since", "@42", now).unwrap(), 42);
        assert_eq!(parse_time_at("--since", "2026-11-27T02:16:11.123Z", now).unwrap(), now);
        assert_eq!(parse_time_at("--since", "2026-11-27", now).unwrap(), 1_795_737_600_000);
        for bad in ["", "@", "@x", "10y", "2026-11-27T25:00", "now"] {
            let e = parse_time_at("--since", bad, now).unwrap_err().to_string();
            assert!(e.starts_with("invalid --since"), "{bad:?}: {e}");
        }
    }
}
