//! `rush approval request|wait|show|cancel|list`, `rush ask`, `rush approvals`, `rush
//! approve`, `rush reject`, `rush human-queue configure|show`, `rush approval-policy set`:
//! the command line of the human attention queue.
//!
//! What clap cannot say alone (what each --kind needs and refuses, `--priority P CHANNEL`
//! pairs in order) is checked here too, by the conversions into protocol types, before
//! anything is sent: a [`UsageError`], exit status 2.

use std::path::{Path, PathBuf};

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{ArgAction, ArgGroup, Args, Subcommand};
use rush_proto::approval::{
    self as ap, ActionClass, ApprovalDetail, ApprovalKind, ApprovalRequest, ApprovalTarget, Channel,
    ClassPolicy, DecideRequest, OnTimeout, Priority, QueueChange, Route,
};
use rush_proto::{AgentName, Budget, Ops};

use super::UsageError;

/// A clap parser for a wire enum: its values offered (help, completions), and parsed.
macro_rules! wire_values {
    ($t:ty) => {
        PossibleValuesParser::new(<$t>::ALL.iter().map(|v| v.as_str())).try_map(|s| s.parse::<$t>())
    };
}

/// `--agent NAME` of the requests an agent sends as itself.
const AGENT_HELP: &str = "The agent to act for. Inside an agent, rush acts as that agent (it may be left out, \
                          or name itself); the operator must name one.";

const WAIT_STATUS: &str = "\
Exit status:
  0  approved
  1  the request failed (no such request, not yours, the daemon could not be reached)
  2  usage error: bad flags or values, refused before anything is sent
  3  rejected, expired at its deadline, or cancelled: stderr says which, by whom, through
     what, and why
  4  the wait ended (--timeout) with the request still pending";

pub const REQUEST_LONG_ABOUT: &str = "\
Ask a person to decide whether an agent may do something: have a capability token \
(--kind capability), run a command (--kind command), have its budget raised (--kind \
budget), or anything else (--kind custom). The daemon keeps the request in its human \
attention queue, across restarts, and sends it by its priority to a channel (see `rush \
human-queue`): `cli` (listed by `rush approvals`), `cli:blocking` (also prompted, with a \
bell, in every `rush approvals --follow` terminal), `webhook:NAME` (posted, with approve and \
reject buttons) or `email:ADDRESS` (a digest per batch window, with one-time links). Requests \
alike arriving within the batch window are delivered as one batch, and can be decided as one.

An operator decides: `rush approve` or `rush reject`, a webhook's buttons, an email's link. \
An approved capability request gets its token, for the approver's --ttl or else the \
queue's grant TTL (1h unless configured); an approved budget request raises the agent's \
budget (and resumes it if it was frozen at its cpu budget); a command is run by the asker \
once approved: `--kind command --wait` runs it; a custom request gets its answer only. A \
request not decided by its deadline (--timeout: 1h unless its class's policy says \
otherwise) is handled as --on-timeout says: `reject` (the default; state expired), \
`approve`, or `escalate` (raised to high priority, sent to the high-priority channel, and \
given one more timeout, then rejected).

Without --wait, rush prints the request's id, priority, channel and deadline, `approval \
12 pending (high, webhook:ops, deadline in 1h)` (--json: the request as the daemon holds \
it), and exits 0: the agent goes on, and learns the answer with `rush approval wait ID`, \
`rush approval show ID` or `rush agent inbox`. With --wait, rush waits for the decision \
(at most --wait-timeout; by default until the request's deadline) and exits with a status \
that says it (below); --json then prints the request as decided. With --freeze the daemon \
freezes the agent, every process of it (rush too, when it runs inside the agent), until the \
request is decided.

With --kind command --wait, an approved command is run by rush, once, in the current \
directory, with rush's stdin, stdout and stderr and environment, in place of rush (exec): \
its exit status is rush's, and stdout is the command's (what rush says goes to stderr, also \
with --json).

Run inside an agent, the request is that agent's (at most 100 may be pending per agent); \
the operator asks for agent NAME with --agent NAME. Audited as `approval_requested`, then \
`approval_decided`.";

pub const REQUEST_EXAMPLES: &str = "\
Examples:
  Ask for write access to a directory, and go on working:
    $ rush ask --kind capability --action 'write the new migrations' --path migrations \\
        --ops write,create
    approval 12 pending (medium, cli, deadline in 1h)

  Run a command only once someone approves it (exit status 3 if nobody does):
    $ rush ask --kind command --action 'run the migrations' --priority high --wait -- make migrate

  More CPU, the agent frozen until the answer:
    $ rush ask --kind budget --action 'the test suite needs more CPU' --budget cpu:2h \\
        --freeze --wait

  A question, approved if nobody answers within 10 minutes:
    $ rush ask --kind custom --action 'deploy fix-login to staging?' --timeout 10m \\
        --on-timeout approve

  The operator, for agent coder:
    $ sudo rush approval request --agent coder --kind custom --action 'rotate the API key'

Exit status:
  0  asked (without --wait); approved (with --wait)
  1  the request failed (refused by the daemon, or the daemon could not be reached)
  2  usage error: bad flags or values, refused before anything is sent
  3  with --wait: rejected, expired at its deadline, or cancelled: stderr says which, by
     whom, through what, and why
  4  with --wait: still pending when --wait-timeout passed
  With --kind command --wait, once approved: the command's own exit status (126 if it
  cannot be executed, 127 if it is not found).";

pub const WAIT_LONG_ABOUT: &str = "\
Wait until request ID (from `rush ask`) is decided, or --timeout passes (by default: until \
its deadline, followed through an escalation), and exit with a status that says how it \
was decided. Prints the decision on stdout when approved, `approval 12 approved by uid:0 via \
cli: write /w/migrations` (what it did and the reason, if any, in parentheses after), and \
the same line on stderr otherwise; --json prints the request on stdout whatever its state. \
A request decided already answers at once.

The command of an approved command request is not run by `wait` (only `rush ask --kind \
command --wait` runs its own). Run inside an agent, ID must be the agent's own request; \
the operator may wait for any, with or without --agent.";

pub const SHOW_LONG_ABOUT: &str = "\
Show request ID as key: value lines: its agent, action and what exactly it asks for, its \
class, priority (and why it was raised), channel and whether it was delivered there, its \
deadline and what happens at it, its batch, and once decided, the decision: by whom, \
through what, when, why, and what it did. With --json, the request as one JSON object. \
Exit status 0 whatever its state (`rush approval wait` exits by it).

Run inside an agent, ID must be the agent's own request.";

pub const CANCEL_LONG_ABOUT: &str = "\
Withdraw pending request ID: its state becomes cancelled (decided by `agent`, or the \
operator's uid), whoever waits for it is answered, and a frozen agent (--freeze) is \
thawed. A request decided already cannot be cancelled (exit 1). Prints the request's new \
line; --json prints the request. Run inside an agent, ID must be the agent's own request; \
the operator may cancel any. Audited as `approval_decided` with state cancelled.";

pub const LIST_LONG_ABOUT: &str = "\
List the requests waiting for a person's decision, most urgent first: batches first (one \
line, `batch KEY: 3 requests (ids 4, 5, 7), high, first deadline in 4m`, and its requests \
indented below it; `rush approve --batch KEY` decides them all), then the single requests. \
Columns: ID AGENT PRIORITY KIND ACTION CHANNEL DEADLINE. PRIORITY is the priority now: \
marked ↑ with the reason when it was raised above the one asked for (waiting longer than \
the queue's aging, an escalation, or a claim another agent waits on). ACTION is cut at 60 \
characters (`rush approval show ID` has it whole). With --all, the decided requests the \
daemon keeps follow, with their decisions.

With --follow, rush then keeps printing requests as they arrive and decisions as they are \
made, until Ctrl-C. A request sent to `cli:blocking` rings the terminal's bell and is \
prompted: `approve 12 (coder: write /w/migrations)? [y]es/[n]o/[s]kip: `; y approves it, n \
rejects it, anything else leaves it pending. Prompts are made only when stdin and stdout are \
a terminal and without --json, and only in the terminal `rush approvals` runs in (never in \
an agent's). --follow watches the daemon's event stream, so it is the operator's only.

With --json, one JSON object: {\"approvals\": [...], \"batches\": [...]}, each batch with its \
key, ids, priority and first deadline; with --follow, that object on one line, then one \
event per line (as `rush events --follow --json`). Run inside an agent, it lists the \
agent's own requests.";

pub const LIST_EXAMPLES: &str = "\
Examples:
  $ rush approvals
  ID   AGENT  PRIORITY             KIND        ACTION                 CHANNEL       DEADLINE
  batch capability:write:/w: 2 requests (ids 4, 7), high, first deadline in 4m
    4  coder  high                 capability  write /w/migrations    cli:blocking  in 4m
    7  coder  high                 capability  write /w/schema.sql    cli:blocking  in 9m
  9    docs   medium↑ (waited 1h)  custom      publish the changelog  webhook:ops   in 20m
  $ rush approve --batch capability:write:/w --ttl 30m

  Answer cli:blocking requests as they come (in a terminal of its own):
    $ sudo rush approvals --follow";

pub const APPROVE_LONG_ABOUT: &str = "\
Approve pending request ID, or with --batch KEY every pending request of the batches with \
that key (as `rush approvals` shows them), less the --exclude ones, which stay pending. \
What an approval does depends on the request's kind: a capability request gets its token, \
for --ttl (default: the queue's grant TTL, 1h unless configured); a budget request raises \
the agent's budget (and resumes an agent frozen at its cpu budget); a command request lets \
the asker run its command; a custom request is answered. A frozen agent (--freeze) is \
thawed.

Prints one line per request decided, what the approval did after the colon (or why it \
could not: the request is approved all the same): `approved 4 (coder: write \
/w/migrations): token 17 granted: write on /w/migrations for 1h`; --json prints the \
requests as decided, one JSON array. A request decided already (by someone else, a \
webhook, its deadline) is an error, exit 1, and so is a batch key with nothing pending. \
Operators only: no agent decides, its own requests or any other's. Decided `via: cli` by \
your uid (`uid:N`); audited as `approval_decided`.";

pub const REJECT_LONG_ABOUT: &str = "\
Reject pending request ID, or with --batch KEY every pending request of the batches with \
that key, less the --exclude ones, which stay pending. The asker learns it (`rush ask \
--wait` exits 3, and its inbox says so), with --reason if given; a frozen agent (--freeze) \
is thawed. Prints one line per request decided: `rejected 4 (coder: write /w/migrations)`; \
--json prints the requests as decided, one JSON array. A request decided already is an \
error, exit 1. Operators only. Audited as `approval_decided`.";

pub const DECIDE_EXAMPLES: &str = "\
Examples:
  $ rush approve 4 --ttl 30m
  approved 4 (coder: write /w/migrations): token 17 granted: write on /w/migrations for 30m
  $ rush approve --batch capability:write:/w --exclude 7
  $ rush reject 9 --reason 'not before the release'";

pub const CONFIGURE_LONG_ABOUT: &str = "\
Change the human attention queue's settings; what is not named stays. The settings are \
stored by the daemon and apply to requests made after (pending ones keep their channel and \
deadline); they override the `[approvals]` section of its config file. Prints the settings \
now in effect, as `rush human-queue show` does.

--priority P CHANNEL routes requests of priority P (high, medium or low) to CHANNEL: `cli` \
(listed by `rush approvals`), `cli:blocking` (also prompted in every `rush approvals \
--follow` terminal, with a bell), `webhook:NAME` (a webhook of the daemon's config, \
`[approvals.webhooks.NAME]`) or `email:ADDRESS` (a digest per batch window, through \
`[approvals.smtp]`). Repeat it for each priority to route; a priority never routed goes \
to `cli`. A class's policy (`rush approval-policy set`) overrides the route.

--batch-window: requests with the same batch key arriving within this long are delivered \
as one (0: each alone). --similarity: how alike (the Jaccard similarity of their words, 0 \
to 1) two requests of one kind must be to be batched although their keys differ (1: only \
identical ones; above 1: never). --aging: a pending request is raised one priority level \
per this long waiting (0: never). Operators only.";

pub const CONFIGURE_EXAMPLES: &str = "\
Examples:
  $ rush human-queue configure --priority high cli:blocking --priority medium webhook:ops \\
      --priority low email:me@example.org --batch-window 5m
  $ rush human-queue configure --aging 30m --similarity 0.8";

pub const SHOW_QUEUE_LONG_ABOUT: &str = "\
Show the human attention queue's settings in effect: where each priority is routed, the \
policy of each class of action, the batch window, similarity threshold and aging, the TTL \
of approved capabilities, the trust levels whose kernel file denials become requests \
(`deny_to_ask`), the webhooks and SMTP relay the daemon's config names, and the address the \
daemon listens on for webhook and email callbacks. With --json, one JSON object. Operators \
only.";

pub const POLICY_SET_LONG_ABOUT: &str = "\
Set how a class of action is asked: exactly one of --destructive, --capability, \
--budget, --network, --command, --custom, whose value is the channel its requests go to, \
whatever their priority. The policy replaces the class's previous one: its --priority, \
--timeout (and what happens at it) and --batch-window override what the request asks \
for; what is not given here is the request's, and the queue's.

A request's class is the one it names (`rush ask --class`), else its kind's: \
capability, budget, command or custom; `destructive` is for actions that delete, \
overwrite or rewrite history, `network` for network access. --timeout DURATION[:ACTION] \
sets the deadline, and with ACTION (reject, approve or escalate) what happens at it. \
Operators only. Prints the queue's settings now in effect.";

pub const POLICY_SET_EXAMPLES: &str = "\
Examples:
  Destructive actions to a blocking prompt, high priority, rejected after an hour:
    $ rush approval-policy set --destructive cli:blocking --priority high --timeout 1h:reject
  Budget raises to the ops webhook, batched over 10 minutes:
    $ rush approval-policy set --budget webhook:ops --batch-window 10m";

#[derive(Debug, Subcommand)]
pub enum ApprovalCommand {
    /// Ask a person for a decision (the same as `rush ask`)
    #[command(long_about = REQUEST_LONG_ABOUT, after_long_help = REQUEST_EXAMPLES)]
    Request(Box<RequestArgs>),

    /// Wait for a request to be decided; the exit status says how it was
    #[command(long_about = WAIT_LONG_ABOUT, after_long_help = WAIT_STATUS)]
    Wait(WaitArgs),

    /// Show one request: what it asks for, where it is, how it was decided
    #[command(long_about = SHOW_LONG_ABOUT)]
    Show(IdArgs),

    /// Withdraw a pending request
    #[command(long_about = CANCEL_LONG_ABOUT)]
    Cancel(IdArgs),

    /// List the pending requests, batches folded (the same as `rush approvals`)
    #[command(long_about = LIST_LONG_ABOUT, after_long_help = LIST_EXAMPLES, visible_alias = "ls")]
    List(ListArgs),
}

#[derive(Debug, Subcommand)]
pub enum HumanQueueCommand {
    /// Route priorities to channels; set the batch window, similarity and aging
    #[command(long_about = CONFIGURE_LONG_ABOUT, after_long_help = CONFIGURE_EXAMPLES)]
    Configure(ConfigureArgs),

    /// Show the queue's settings: routes, class policies, batching, aging, channels
    #[command(long_about = SHOW_QUEUE_LONG_ABOUT)]
    Show,
}

#[derive(Debug, Subcommand)]
pub enum ApprovalPolicyCommand {
    /// Set the channel, priority, timeout and batch window of one class of action
    #[command(long_about = POLICY_SET_LONG_ABOUT, after_long_help = POLICY_SET_EXAMPLES)]
    Set(PolicySetArgs),
}

#[derive(Debug, Args)]
pub struct RequestArgs {
    /// One line for the person deciding: what the agent wants to do (up to 4096 bytes).
    #[arg(long, value_name = "TEXT", value_parser = parse_action)]
    pub action: String,

    /// What is asked for: a capability token (--path, --ops), a command (after --), a
    /// budget raise (--budget), or anything else (--detail).
    #[arg(long, value_name = "KIND", value_parser = wire_values!(ApprovalKind))]
    pub kind: ApprovalKind,

    /// --kind capability: the file or directory the token is for (relative paths are
    /// taken from the current directory).
    #[arg(long, value_name = "PATH", value_parser = parse_request_path, help_heading = "By kind")]
    pub path: Option<PathBuf>,

    /// --kind capability: the operations, a comma list of read, write, exec, create,
    /// delete (default: write).
    #[arg(long, value_name = "OPS", value_parser = super::parse_ops, help_heading = "By kind")]
    pub ops: Option<Ops>,

    /// --kind budget: the limits to raise to, in the --budget syntax of `rush agent
    /// spawn` (e.g. cpu:2m,mem:1G).
    #[arg(long, value_name = "KEY:VALUE,...", help_heading = "By kind")]
    pub budget: Option<Budget>,

    /// --kind custom: more text for the person (up to 4096 bytes).
    #[arg(long, value_name = "TEXT", value_parser = parse_detail, help_heading = "By kind")]
    pub detail: Option<String>,

    /// How soon a person should see it; it picks the channel (default: the class's
    /// policy, else medium).
    #[arg(long, value_name = "PRIORITY", value_parser = wire_values!(Priority))]
    pub priority: Option<Priority>,

    /// How long the request waits for a decision (e.g. 10m, 1h; 1s to 30d; default: the
    /// class's policy, else 1h).
    #[arg(long, value_name = "DURATION", value_parser = parse_request_timeout)]
    pub timeout: Option<u64>,

    /// What happens at the deadline: reject (state expired), approve, or escalate (high
    /// priority, one more timeout) (default: the class's policy, else reject).
    #[arg(long, value_name = "ACTION", value_parser = wire_values!(OnTimeout))]
    pub on_timeout: Option<OnTimeout>,

    /// The class of action, for the queue's policies (default: the kind's).
    #[arg(long, value_name = "CLASS", value_parser = wire_values!(ActionClass))]
    pub class: Option<ActionClass>,

    /// Freeze the agent (all its processes) until the request is decided.
    #[arg(long)]
    pub freeze: bool,

    #[arg(long, value_name = "NAME", help = AGENT_HELP)]
    pub agent: Option<AgentName>,

    /// Wait for the decision; the exit status says it (with --kind command, run the
    /// command once approved).
    #[arg(long)]
    pub wait: bool,

    /// With --wait: wait at most this long (default: until the request's deadline).
    #[arg(long, value_name = "DURATION", requires = "wait", value_parser = parse_wait_timeout)]
    pub wait_timeout: Option<u64>,

    /// --kind command: the command to be approved and its arguments, after `--`.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

impl RequestArgs {
    /// The request to send: what --kind needs given, what it does not take refused, the
    /// command's working directory `cwd`.
    pub fn to_request(&self, cwd: &Path) -> Result<ApprovalRequest, UsageError> {
        let kind = self.kind;
        for (what, given, of) in [
            ("--path", self.path.is_some(), ApprovalKind::Capability),
            ("--ops", self.ops.is_some(), ApprovalKind::Capability),
            ("--budget", self.budget.is_some(), ApprovalKind::Budget),
            ("--detail", self.detail.is_some(), ApprovalKind::Custom),
            ("a command after --", !self.command.is_empty(), ApprovalKind::Command),
        ] {
            if given && of != kind {
                return Err(UsageError(format!("{what} is for --kind {of}, not --kind {kind}")));
            }
        }
        let detail = match kind {
            ApprovalKind::Capability => {
                let path = self.path.clone().ok_or_else(|| {
                    UsageError(
                        "--kind capability needs --path PATH: the file or directory the token is for".into(),
                    )
                })?;
                ApprovalDetail::Capability { path, ops: self.ops.unwrap_or(Ops::WRITE) }
            }
            ApprovalKind::Command => {
                if self.command.is_empty() {
                    return Err(UsageError(
                        "--kind command needs the command after --, e.g. `rush ask --kind command \
                         --action 'run the migrations' -- make migrate`"
                            .into(),
                    ));
                }
                ApprovalDetail::Command { argv: self.command.clone(), cwd: Some(cwd.to_owned()) }
            }
            ApprovalKind::Budget => match &self.budget {
                Some(raise) if !raise.is_empty() => ApprovalDetail::Budget { raise: *raise },
                _ => {
                    return Err(UsageError(
                        "--kind budget needs --budget KEY:VALUE,...: the limits to raise to (e.g. \
                         cpu:2m,mem:1G)"
                            .into(),
                    ));
                }
            },
            ApprovalKind::Custom => ApprovalDetail::Custom { text: self.detail.clone().unwrap_or_default() },
        };
        let request = ApprovalRequest {
            agent: self.agent.as_ref().map(|a| a.to_string()),
            action: self.action.clone(),
            detail,
            priority: self.priority,
            timeout_secs: self.timeout,
            on_timeout: self.on_timeout,
            class: self.class,
            freeze: self.freeze,
        };
        ap::check_request(&request).map_err(|why| UsageError(format!("invalid request: {why}")))?;
        Ok(request)
    }
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// The request's id (from `rush ask` or `rush approvals`).
    #[arg(value_name = "ID")]
    pub id: u64,
    /// Wait at most this long (e.g. 30s, 10m; default: until the request's deadline).
    #[arg(long, value_name = "DURATION", value_parser = parse_wait_timeout)]
    pub timeout: Option<u64>,
    #[arg(long, value_name = "NAME", help = AGENT_HELP)]
    pub agent: Option<AgentName>,
}

#[derive(Debug, Args)]
pub struct IdArgs {
    /// The request's id (from `rush ask` or `rush approvals`).
    #[arg(value_name = "ID")]
    pub id: u64,
    #[arg(long, value_name = "NAME", help = AGENT_HELP)]
    pub agent: Option<AgentName>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Also the decided requests the daemon keeps.
    #[arg(long)]
    pub all: bool,
    /// Only this agent's requests (inside an agent: its own, the default).
    #[arg(long, value_name = "NAME")]
    pub agent: Option<AgentName>,
    /// Keep printing requests as they arrive and decisions as they are made, prompting
    /// for the cli:blocking ones, until Ctrl-C.
    #[arg(long, short = 'f')]
    pub follow: bool,
}

/// ID or --batch KEY: what `rush approve` and `rush reject` decide.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["id", "batch"])))]
pub struct DecideTarget {
    /// The pending request to decide.
    #[arg(value_name = "ID")]
    pub id: Option<u64>,
    /// Every pending request of the batches with this key (`rush approvals` shows them).
    #[arg(long, value_name = "KEY")]
    pub batch: Option<String>,
    /// With --batch: leave this request pending (repeat for several).
    // Not `requires = "batch"`: clap lets a group's member go missing when another member
    // (ID) is given.
    #[arg(long, value_name = "ID", conflicts_with = "id")]
    pub exclude: Vec<u64>,
    /// Why, for the asker and the audit trail (up to 4096 bytes).
    #[arg(long, value_name = "TEXT", value_parser = parse_reason)]
    pub reason: Option<String>,
}

impl DecideTarget {
    pub fn to_request(&self, approve: bool, ttl_secs: Option<u64>) -> DecideRequest {
        let target = match (&self.batch, self.id) {
            (Some(key), _) => ApprovalTarget::Batch(key.clone()),
            (None, Some(id)) => ApprovalTarget::Id(id),
            (None, None) => unreachable!("clap requires ID or --batch"),
        };
        DecideRequest {
            target,
            approve,
            exclude: self.exclude.clone(),
            ttl_secs,
            reason: self.reason.clone(),
            remember: None,
            remember_scope: None,
        }
    }
}

#[derive(Debug, Args)]
pub struct ApproveArgs {
    #[command(flatten)]
    pub target: DecideTarget,
    /// How long an approved capability's token lasts (e.g. 30m, 1h; 1s to 30d; default:
    /// the queue's grant TTL).
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
    pub ttl: Option<u64>,
    #[command(flatten)]
    pub remember: super::RememberArgs,
}

#[derive(Debug, Args)]
pub struct RejectArgs {
    #[command(flatten)]
    pub target: DecideTarget,
    #[command(flatten)]
    pub remember: super::RememberArgs,
}

/// A word of `--priority P CHANNEL`: which of the two it is is checked by [`routes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteWord {
    Priority(Priority),
    Channel(Channel),
}

#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("change")
        .required(true)
        .multiple(true)
        .args(["priority", "batch_window", "similarity", "aging"])
))]
pub struct ConfigureArgs {
    /// Route requests of PRIORITY (high, medium, low) to CHANNEL: cli, cli:blocking,
    /// webhook:NAME or email:ADDRESS. Repeat for each priority.
    #[arg(
        long,
        num_args = 2,
        value_names = ["PRIORITY", "CHANNEL"],
        action = ArgAction::Append,
        value_parser = parse_route_word
    )]
    pub priority: Vec<RouteWord>,
    /// Requests with one batch key arriving within this long are delivered as one (e.g.
    /// 5m; 0: no batching).
    #[arg(long, value_name = "DURATION", value_parser = parse_batch_window)]
    pub batch_window: Option<u64>,
    /// The similarity (0 to 1) at or over which two requests of one kind are batched
    /// although their keys differ (1: identical ones only; above 1: never).
    #[arg(long, value_name = "F", value_parser = parse_similarity)]
    pub similarity: Option<f64>,
    /// Raise a pending request one priority level per this long waiting (e.g. 30m; 0:
    /// never).
    #[arg(long, value_name = "DURATION", value_parser = parse_aging)]
    pub aging: Option<u64>,
}

impl ConfigureArgs {
    pub fn to_change(&self) -> Result<QueueChange, UsageError> {
        Ok(QueueChange {
            routes: routes(&self.priority)?,
            class: None,
            batch_window_secs: self.batch_window,
            similarity: self.similarity,
            aging_secs: self.aging,
        })
    }
}

/// The `--priority P CHANNEL` pairs as routes: each a priority then a channel, each
/// priority once.
pub fn routes(words: &[RouteWord]) -> Result<Vec<Route>, UsageError> {
    let mut routes: Vec<Route> = Vec::new();
    for pair in words.chunks(2) {
        let route = match pair {
            [RouteWord::Priority(priority), RouteWord::Channel(channel)] => {
                Route { priority: *priority, channel: channel.clone() }
            }
            _ => {
                let shown: Vec<String> = pair
                    .iter()
                    .map(|w| match w {
                        RouteWord::Priority(p) => p.to_string(),
                        RouteWord::Channel(c) => c.to_string(),
                    })
                    .collect();
                return Err(UsageError(format!(
                    "invalid --priority {}: expected a priority, then a channel (e.g. --priority high \
                     cli:blocking)",
                    shown.join(" ")
                )));
            }
        };
        if routes.iter().any(|r| r.priority == route.priority) {
            return Err(UsageError(format!("--priority {} is given twice", route.priority)));
        }
        routes.push(route);
    }
    Ok(routes)
}

/// `--timeout DURATION[:ACTION]` of a class policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyTimeout {
    pub secs: u64,
    pub on_timeout: Option<OnTimeout>,
}

#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("class")
        .required(true)
        .args(["destructive", "capability", "budget", "network", "command", "custom"])
))]
pub struct PolicySetArgs {
    /// Requests of class destructive (deletes, overwrites, history rewrites) go to CHANNEL.
    #[arg(long, value_name = "CHANNEL", value_parser = parse_channel, help_heading = "Class (exactly one)")]
    pub destructive: Option<Channel>,
    /// Requests of class capability (file capability tokens) go to CHANNEL.
    #[arg(long, value_name = "CHANNEL", value_parser = parse_channel, help_heading = "Class (exactly one)")]
    pub capability: Option<Channel>,
    /// Requests of class budget (budget raises) go to CHANNEL.
    #[arg(long, value_name = "CHANNEL", value_parser = parse_channel, help_heading = "Class (exactly one)")]
    pub budget: Option<Channel>,
    /// Requests of class network (network access) go to CHANNEL.
    #[arg(long, value_name = "CHANNEL", value_parser = parse_channel, help_heading = "Class (exactly one)")]
    pub network: Option<Channel>,
    /// Requests of class command (commands to run) go to CHANNEL.
    #[arg(long, value_name = "CHANNEL", value_parser = parse_channel, help_heading = "Class (exactly one)")]
    pub command: Option<Channel>,
    /// Requests of class custom (anything else) go to CHANNEL.
    #[arg(long, value_name = "CHANNEL", value_parser = parse_channel, help_heading = "Class (exactly one)")]
    pub custom: Option<Channel>,
    /// The class's requests get this priority, whatever they ask.
    #[arg(long, value_name = "PRIORITY", value_parser = wire_values!(Priority))]
    pub priority: Option<Priority>,
    /// Their deadline (1s to 30d), and with :ACTION what happens at it: reject, approve or
    /// escalate (e.g. 1h:reject).
    #[arg(long, value_name = "DURATION[:ACTION]", value_parser = parse_policy_timeout)]
    pub timeout: Option<PolicyTimeout>,
    /// Their batch window (e.g. 10m; 0: each request alone).
    #[arg(long, value_name = "DURATION", value_parser = parse_batch_window)]
    pub batch_window: Option<u64>,
}

impl PolicySetArgs {
    pub fn to_policy(&self) -> ClassPolicy {
        let (class, channel) = [
            (ActionClass::Destructive, &self.destructive),
            (ActionClass::Capability, &self.capability),
            (ActionClass::Budget, &self.budget),
            (ActionClass::Network, &self.network),
            (ActionClass::Command, &self.command),
            (ActionClass::Custom, &self.custom),
        ]
        .into_iter()
        .find_map(|(class, channel)| channel.as_ref().map(|c| (class, c.clone())))
        .expect("clap requires one class");
        ClassPolicy {
            class: Some(class),
            channel: Some(channel),
            priority: self.priority,
            timeout_secs: self.timeout.map(|t| t.secs),
            on_timeout: self.timeout.and_then(|t| t.on_timeout),
            batch_window_secs: self.batch_window,
        }
    }
}

pub fn parse_channel(s: &str) -> Result<Channel, UsageError> {
    s.parse::<Channel>().map_err(|why| UsageError(format!("invalid {why}")))
}

fn parse_route_word(s: &str) -> Result<RouteWord, UsageError> {
    if let Ok(p) = s.parse::<Priority>() {
        return Ok(RouteWord::Priority(p));
    }
    if let Ok(c) = s.parse::<Channel>() {
        return Ok(RouteWord::Channel(c));
    }
    let why = match s.split_once(':').map_or(s, |(kind, _)| kind) {
        "cli" | "webhook" | "email" => s.parse::<Channel>().err().unwrap_or_default(),
        _ => format!(
            "{s:?} is neither a priority (high, medium, low) nor a channel (cli, cli:blocking, \
             webhook:NAME, email:ADDRESS)"
        ),
    };
    Err(UsageError(format!("invalid --priority: {why}")))
}

fn parse_text(flag: &str, s: &str) -> Result<String, UsageError> {
    if s.len() > ap::MAX_TEXT {
        return Err(UsageError(format!(
            "invalid {flag}: {} bytes, over the limit of {}",
            s.len(),
            ap::MAX_TEXT
        )));
    }
    Ok(s.to_owned())
}

fn parse_action(s: &str) -> Result<String, UsageError> {
    if s.trim().is_empty() {
        return Err(UsageError("invalid --action: empty (say what the agent wants to do)".into()));
    }
    parse_text("--action", s)
}

fn parse_detail(s: &str) -> Result<String, UsageError> {
    parse_text("--detail", s)
}

fn parse_reason(s: &str) -> Result<String, UsageError> {
    parse_text("--reason", s)
}

fn parse_request_path(s: &str) -> Result<PathBuf, UsageError> {
    let cwd = std::env::current_dir().map_err(|e| {
        UsageError(format!("cannot resolve --path {s:?}: cannot read the current directory: {e}"))
    })?;
    super::absolutize(&cwd, s).map(PathBuf::from)
}

/// A duration for `flag`, in seconds, within `min..=max`.
fn seconds(flag: &str, s: &str, min: u64, max: u64) -> Result<u64, UsageError> {
    let secs =
        rush_proto::parse_duration(s).map_err(|e| UsageError(format!("invalid {flag}: {e}")))?.as_secs();
    if secs < min || secs > max {
        let show = |v: u64| if v == 0 { "0".to_owned() } else { crate::render::short_duration(v) };
        return Err(UsageError(format!(
            "invalid {flag} {s:?}: must be between {} and {}",
            show(min),
            show(max)
        )));
    }
    Ok(secs)
}

fn parse_request_timeout(s: &str) -> Result<u64, UsageError> {
    seconds("--timeout", s, 1, ap::MAX_TIMEOUT_SECS)
}

fn parse_wait_timeout(s: &str) -> Result<u64, UsageError> {
    seconds("--timeout", s, 1, ap::MAX_TIMEOUT_SECS)
}

pub(super) fn parse_ttl(s: &str) -> Result<u64, UsageError> {
    seconds("--ttl", s, 1, ap::MAX_TIMEOUT_SECS)
}

fn parse_batch_window(s: &str) -> Result<u64, UsageError> {
    seconds("--batch-window", s, 0, ap::MAX_TIMEOUT_SECS)
}

fn parse_aging(s: &str) -> Result<u64, UsageError> {
    seconds("--aging", s, 0, ap::MAX_TIMEOUT_SECS)
}

fn parse_similarity(s: &str) -> Result<f64, UsageError> {
    match s.parse::<f64>() {
        Ok(f) if f.is_finite() && f >= 0.0 => Ok(f),
        _ => Err(UsageError(format!(
            "invalid --similarity {s:?}: expected a number from 0 to 1 (above 1: never batch by similarity)"
        ))),
    }
}

fn parse_policy_timeout(s: &str) -> Result<PolicyTimeout, UsageError> {
    let (duration, on_timeout) = match s.rsplit_once(':') {
        Some((d, action)) => {
            let on = action.parse::<OnTimeout>().map_err(|_| {
                UsageError(format!(
                    "invalid --timeout {s:?}: {action:?} is not what happens at the deadline (reject, \
                     approve or escalate)"
                ))
            })?;
            (d, Some(on))
        }
        None => (s, None),
    };
    Ok(PolicyTimeout { secs: seconds("--timeout", duration, 1, ap::MAX_TIMEOUT_SECS)?, on_timeout })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        Cli::try_parse_from(std::iter::once("rush").chain(args.iter().copied())).map(|c| c.command)
    }

    fn ask(args: &[&str]) -> RequestArgs {
        match parse(&[&["ask"], args].concat()).unwrap_or_else(|e| panic!("{args:?}: {e}")) {
            Command::Ask(a) => *a,
            other => panic!("{args:?} parsed as {other:?}"),
        }
    }

    /// The request `rush ask ARGS` sends, or why it is refused, from /w.
    fn request(args: &[&str]) -> Result<ApprovalRequest, String> {
        ask(args).to_request(Path::new("/w")).map_err(|e| e.0)
    }

    #[test]
    fn each_kind_builds_its_detail() {
        let cwd = std::env::current_dir().unwrap();
        let r =
            request(&["--kind", "capability", "--action", "write migrations", "--path", "m/../mig"]).unwrap();
        assert_eq!(
            r.detail,
            ApprovalDetail::Capability { path: cwd.join("mig"), ops: Ops::WRITE },
            "relative to the current directory, write by default"
        );
        let r = request(&["--kind", "capability", "--action", "x", "--path", "/w/a", "--ops", "read,create"])
            .unwrap();
        assert_eq!(
            r.detail,
            ApprovalDetail::Capability { path: "/w/a".into(), ops: "read,create".parse().unwrap() }
        );
        let r = request(&["--kind", "command", "--action", "run migrations", "--", "make", "-j2", "migrate"])
            .unwrap();
        assert_eq!(
            r.detail,
            ApprovalDetail::Command {
                argv: vec!["make".into(), "-j2".into(), "migrate".into()],
                cwd: Some("/w".into())
            }
        );
        let r = request(&["--kind", "budget", "--action", "more cpu", "--budget", "cpu:2m,mem:1G"]).unwrap();
        assert_eq!(r.detail, ApprovalDetail::Budget { raise: "cpu:2m,mem:1G".parse().unwrap() });
        let r = request(&["--kind", "custom", "--action", "deploy?", "--detail", "branch x"]).unwrap();
        assert_eq!(r.detail, ApprovalDetail::Custom { text: "branch x".into() });
        assert_eq!(
            (r.agent, r.priority, r.timeout_secs, r.on_timeout, r.class, r.freeze),
            (None, None, None, None, None, false)
        );
    }

    #[test]
    fn common_flags() {
        let a = ask(&[
            "--kind",
            "custom",
            "--action",
            "x",
            "--priority",
            "high",
            "--timeout",
            "10m",
            "--on-timeout",
            "escalate",
            "--class",
            "destructive",
            "--freeze",
            "--agent",
            "coder",
            "--wait",
            "--wait-timeout",
            "2h",
        ]);
        assert!(a.wait && a.wait_timeout == Some(7200));
        let r = a.to_request(Path::new("/")).unwrap();
        assert_eq!(r.agent.as_deref(), Some("coder"));
        assert_eq!(
            (r.priority, r.timeout_secs, r.on_timeout, r.class, r.freeze),
            (
                Some(Priority::High),
                Some(600),
                Some(OnTimeout::Escalate),
                Some(ActionClass::Destructive),
                true
            )
        );
        // `rush approval request` is the same command.
        let Command::Approval(ApprovalCommand::Request(r)) =
            parse(&["approval", "request", "--kind", "custom", "--action", "x"]).unwrap()
        else {
            panic!()
        };
        assert_eq!(r.kind, ApprovalKind::Custom);
    }

    #[test]
    fn kind_specific_requirements_name_the_flag() {
        let e = request(&["--kind", "capability", "--action", "x"]).unwrap_err();
        assert!(e.contains("--path"), "{e}");
        let e = request(&["--kind", "command", "--action", "x"]).unwrap_err();
        assert!(e.contains("the command after --"), "{e}");
        let e = request(&["--kind", "budget", "--action", "x"]).unwrap_err();
        assert!(e.contains("--budget"), "{e}");
        let e = request(&["--kind", "custom", "--action", "x", "--path", "/w"]).unwrap_err();
        assert_eq!(e, "--path is for --kind capability, not --kind custom");
        let e = request(&["--kind", "capability", "--action", "x", "--path", "/w", "--budget", "cpu:1m"])
            .unwrap_err();
        assert_eq!(e, "--budget is for --kind budget, not --kind capability");
        let e = request(&["--kind", "custom", "--action", "x", "--", "rm", "-rf", "/"]).unwrap_err();
        assert!(e.starts_with("a command after -- is for --kind command"), "{e}");
        let e = request(&["--kind", "budget", "--action", "x", "--ops", "read"]).unwrap_err();
        assert!(e.starts_with("--ops is for --kind capability"), "{e}");
    }

    #[test]
    fn bad_values_are_refused_by_clap() {
        for (args, needle) in [
            (&["ask", "--kind", "capabilty", "--action", "x"][..], "capabilty"),
            (&["ask", "--kind", "custom"], "--action"),
            (&["ask", "--action", "x"], "--kind"),
            (&["ask", "--kind", "custom", "--action", " "], "empty"),
            (&["ask", "--kind", "custom", "--action", "x", "--timeout", "0"], "between 1s and 30d"),
            (&["ask", "--kind", "custom", "--action", "x", "--timeout", "31d"], "between 1s and 30d"),
            (&["ask", "--kind", "custom", "--action", "x", "--priority", "urgent"], "urgent"),
            (&["ask", "--kind", "custom", "--action", "x", "--on-timeout", "ignore"], "ignore"),
            (&["ask", "--kind", "custom", "--action", "x", "--wait-timeout", "5m"], "--wait"),
            (&["ask", "--kind", "capability", "--action", "x", "--path", "/w", "--ops", "fly"], "fly"),
            (&["ask", "--kind", "budget", "--action", "x", "--budget", "cpu"], "cpu"),
        ] {
            let e = parse(args).expect_err("should be refused");
            assert_eq!(e.exit_code(), 2, "{args:?}");
            let shown =
                format!("{e} {}", std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default());
            assert!(shown.contains(needle), "{args:?}: {shown}");
        }
    }

    #[test]
    fn decide_takes_an_id_or_a_batch() {
        let Command::Approve(a) = parse(&["approve", "4", "--ttl", "30m", "--reason", "ok"]).unwrap() else {
            panic!()
        };
        let d = a.target.to_request(true, a.ttl);
        assert_eq!(
            d,
            DecideRequest {
                target: ApprovalTarget::Id(4),
                approve: true,
                exclude: vec![],
                ttl_secs: Some(1800),
                reason: Some("ok".into()),
                remember: None,
                remember_scope: None,
            }
        );
        let Command::Reject(r) =
            parse(&["reject", "--batch", "capability:write:/w", "--exclude", "5", "--exclude", "7"]).unwrap()
        else {
            panic!()
        };
        let d = r.target.to_request(false, None);
        assert_eq!(d.target, ApprovalTarget::Batch("capability:write:/w".into()));
        assert_eq!((d.approve, d.exclude), (false, vec![5, 7]));
        for (args, kind) in [
            (&["approve"][..], ErrorKind::MissingRequiredArgument),
            (&["approve", "4", "--batch", "k"], ErrorKind::ArgumentConflict),
            (&["reject", "4", "--exclude", "5"], ErrorKind::ArgumentConflict),
            (&["reject", "--exclude", "5"], ErrorKind::MissingRequiredArgument),
            (&["reject", "4", "--ttl", "1h"], ErrorKind::UnknownArgument),
            (&["approve", "4", "--ttl", "0s"], ErrorKind::ValueValidation),
        ] {
            assert_eq!(parse(args).expect_err("should be refused").kind(), kind, "{args:?}");
        }
    }

    #[test]
    fn priority_routes_come_in_pairs() {
        let Command::HumanQueue(HumanQueueCommand::Configure(c)) = parse(&[
            "human-queue",
            "configure",
            "--priority",
            "high",
            "cli:blocking",
            "--priority",
            "medium",
            "webhook:ops",
            "--priority",
            "low",
            "email:me@example.org",
            "--batch-window",
            "5m",
        ])
        .unwrap() else {
            panic!()
        };
        let change = c.to_change().unwrap();
        assert_eq!(
            change.routes,
            [
                Route { priority: Priority::High, channel: Channel::Cli { blocking: true } },
                Route { priority: Priority::Medium, channel: Channel::Webhook("ops".into()) },
                Route { priority: Priority::Low, channel: Channel::Email("me@example.org".into()) },
            ]
        );
        assert_eq!(
            (change.batch_window_secs, change.similarity, change.aging_secs, change.class),
            (Some(300), None, None, None)
        );

        let configure = |args: &[&str]| match parse(&[&["human-queue", "configure"], args].concat()) {
            Ok(Command::HumanQueue(HumanQueueCommand::Configure(c))) => c.to_change().map_err(|e| e.0),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(format!(
                "clap: {e} {}",
                std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default()
            )),
        };
        let e = configure(&["--priority", "cli:blocking", "high"]).unwrap_err();
        assert!(
            e.starts_with("invalid --priority cli:blocking high: expected a priority, then a channel"),
            "{e}"
        );
        let e = configure(&["--priority", "high", "cli", "--priority", "high", "webhook:x"]).unwrap_err();
        assert_eq!(e, "--priority high is given twice");
        let e = configure(&["--priority", "high", "sms:123"]).unwrap_err();
        assert!(e.contains("\"sms:123\" is neither a priority"), "{e}");
        let e = configure(&["--priority", "high", "email:nobody"]).unwrap_err();
        assert!(e.contains("channel \"email:nobody\": an email channel is email:USER@DOMAIN"), "{e}");
        let e = configure(&["--priority", "high"]).unwrap_err();
        assert!(e.starts_with("clap: ") && e.contains("2 values required"), "{e}");
        assert!(configure(&[]).unwrap_err().starts_with("clap: "), "something to change is required");
        let c = configure(&["--similarity", "0.8", "--aging", "0"]).unwrap();
        assert_eq!((c.similarity, c.aging_secs), (Some(0.8), Some(0)));
        assert!(configure(&["--similarity=-1"]).unwrap_err().contains("invalid --similarity"));
        assert!(configure(&["--similarity", "NaN"]).is_err());
        let e = configure(&["--aging", "31d"]).unwrap_err();
        assert!(e.contains("invalid --aging \"31d\": must be between 0 and 30d"), "{e}");
        assert!(configure(&["--batch-window", "5x"]).unwrap_err().contains("invalid --batch-window: "));
    }

    #[test]
    fn class_policy_takes_one_class_and_a_timeout_with_its_action() {
        let set = |args: &[&str]| match parse(&[&["approval-policy", "set"], args].concat()) {
            Ok(Command::ApprovalPolicy(ApprovalPolicyCommand::Set(s))) => Ok(s.to_policy()),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e),
        };
        let p = set(&[
            "--destructive",
            "cli:blocking",
            "--priority",
            "high",
            "--timeout",
            "1h:reject",
            "--batch-window",
            "0",
        ])
        .unwrap();
        assert_eq!(
            p,
            ClassPolicy {
                class: Some(ActionClass::Destructive),
                channel: Some(Channel::Cli { blocking: true }),
                priority: Some(Priority::High),
                timeout_secs: Some(3600),
                on_timeout: Some(OnTimeout::Reject),
                batch_window_secs: Some(0),
            }
        );
        let p = set(&["--network", "webhook:sec", "--timeout", "90m"]).unwrap();
        assert_eq!((p.class, p.timeout_secs, p.on_timeout), (Some(ActionClass::Network), Some(5400), None));
        assert_eq!(set(&["--priority", "high"]).unwrap_err().kind(), ErrorKind::MissingRequiredArgument);
        assert_eq!(
            set(&["--budget", "cli", "--command", "cli"]).unwrap_err().kind(),
            ErrorKind::ArgumentConflict
        );
        for (args, needle) in [
            (&["--custom", "sms:1"][..], "channel \"sms:1\""),
            (&["--custom", "cli", "--timeout", "1h:ignore"], "\"ignore\" is not what happens"),
            (&["--custom", "cli", "--timeout", "0:reject"], "between 1s and 30d"),
            (&["--custom", "cli", "--timeout", "soon"], "invalid --timeout"),
        ] {
            let e = set(args).expect_err("should be refused");
            let source = std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default();
            assert!(source.contains(needle), "{args:?}: {source}");
        }
    }

    #[test]
    fn list_wait_show_cancel() {
        let Command::Approvals(l) = parse(&["approvals", "--all", "--agent", "coder", "-f"]).unwrap() else {
            panic!()
        };
        assert!(l.all && l.follow && l.agent.unwrap().as_str() == "coder");
        assert!(matches!(parse(&["approval", "ls"]).unwrap(), Command::Approval(ApprovalCommand::List(_))));
        let Command::Approval(ApprovalCommand::Wait(w)) =
            parse(&["approval", "wait", "12", "--timeout", "5m"]).unwrap()
        else {
            panic!()
        };
        assert_eq!((w.id, w.timeout), (12, Some(300)));
        assert!(matches!(
            parse(&["approval", "show", "12"]).unwrap(),
            Command::Approval(ApprovalCommand::Show(IdArgs { id: 12, agent: None }))
        ));
        assert!(matches!(
            parse(&["approval", "cancel", "3"]).unwrap(),
            Command::Approval(ApprovalCommand::Cancel(_))
        ));
        assert!(parse(&["approval", "wait", "x"]).is_err());
    }
}
