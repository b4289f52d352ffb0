//! Risk gating's commands: `rush explain`, `rush execute`, `rush guardrail`, `rush hook`.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use rush_proto::gate::GuardrailScope;

pub const EXPLAIN_LONG_ABOUT: &str = "\
Show what risk gating decides about a shell command, and why. Nothing runs.

The daemon parses COMMAND with brush-parser (the parser of the shell Rush runs), walks its \
whole tree (pipelines, lists, subshells, $( ), backticks, <( ), redirections, here-docs, \
functions and aliases defined on the line, and the commands that sh -c, bash -lc, eval, \
xargs, find -exec, env, sudo, nohup, timeout ... run), tags each command by the rules, \
sums the tags' weights into a score, and decides by the trust level's thresholds: allow, \
sandbox, vm-only, ask or deny. The strictest of the score, the rules' floors and the \
guardrails in scope wins. The same command, context and rules always give the same \
answer: no model is involved.

The context is yours (the session whose workspace holds --cwd, judged at --trust or the \
configured default) unless --agent names an agent, or you are an agent: then it is the \
agent's own trust level, tokens and session.";

pub const EXPLAIN_EXAMPLES: &str = "\
Examples:
  $ rush explain 'cargo test --workspace'
  $ rush explain 'curl -fsSL https://get.example.sh | sh'
  $ rush explain --trust low 'git push --force origin main'
  $ rush explain --json 'bash -lc \"rm -rf ~\"' | jq .decision

Exit status:
  0  explained (whatever the decision)
  1  the daemon could not judge it (one line says why)";

pub const EXECUTE_LONG_ABOUT: &str = "\
Run a shell command if risk gating allows it (see `rush explain`).

allow    runs it here with bash -c, in --cwd.
sandbox  runs it as a confined agent (a new one, named gate-PID) that may read, write, \
create and delete only in the workspace, and exec only what the baseline allows; no network.
vm-only  runs it in a throwaway QEMU guest on a copy of the workspace (the guest kit \
installed by `cargo xtask guest-kit`, or RUSH_GUEST_DIR); refused, saying why, where no \
guest can boot. The workspace itself is never changed.
ask      an agent's command goes to the human attention queue (`rush approvals`), and runs \
once approved; yours is asked on this terminal (no terminal: not run, exit 3).
deny     nothing runs.

How it ended is reported to the daemon: a rollback right after it, or a storm of kernel \
denials, teaches a guardrail (`rush guardrail list`).

Run inside an agent, rush execute is that agent's: judged at its trust level with its \
tokens, its asks in the queue as its requests, and the command run confined, as it. An \
operator's --agent NAME judges the command as that agent and asks as it, but runs it here, \
as the operator: to run it confined, run rush execute inside the agent.";

pub const EXECUTE_EXAMPLES: &str = "\
Examples:
  $ rush execute 'cargo test'
  $ rush execute --trust low 'rm -rf target'

Exit status:
  the command's own status when it ran (128+N when killed by signal N)
  1  the request failed, or the sandbox or guest could not start (one line says why)
  3  not run: denied, rejected, expired, or asked with no one to ask";

pub const GUARDRAIL_LONG_ABOUT: &str = "\
Guardrails: rules risk gating learned from outcomes (a rollback right after a command, a \
command rejected when asked, a storm of kernel denials after one, a person's \"always \
allow / always ask / never\" on an approval), or imported. Each is a normalised command \
pattern (* matches anything), a decision, and a scope: global, session:NAME or \
repository:/PATH. The same lesson twice is one guardrail.";

pub const GUARDRAIL_EXAMPLES: &str = "\
Examples:
  $ rush guardrail list
  $ rush guardrail rm 3
  $ rush guardrail export > team-guardrails.toml
  $ rush guardrail import team-guardrails.toml

The file format (TOML):
  [[guardrail]]
  pattern = \"git push --force *\"
  decision = \"ask\"          # allow | sandbox | vm-only | ask | deny
  scope = \"global\"          # global | session | repository
  # session = \"s1\"          # with scope = \"session\"
  # repository = \"/src/app\" # with scope = \"repository\"
  because = \"force pushes rewrote main twice\"";

pub const HOOK_LONG_ABOUT: &str = "\
Put the tools coding agents use behind risk gating (see `rush explain`).

`rush hook claude-code` is a Claude Code PreToolUse hook, and `rush hook codex` a Codex \
one: each reads the tool's hook JSON on stdin, asks the daemon to judge the call, and \
prints the answer on stdout in that tool's own contract. A Bash call is judged as its \
command line, in the directory the payload's cwd names. A file tool is judged as the shell \
command that does the same to the same file, so the same rules (workspace, system paths, \
secrets, an agent's tokens) apply: a write (Claude Code's Write, Edit, MultiEdit, \
NotebookEdit; the files of a Codex apply_patch) as `: > 'FILE'`, a delete as \
`rm -f -- 'FILE'`, a Claude Code Read as `cat -- 'FILE'`. Other tools get no answer (the \
tool's own permission flow goes on).

`rush hook install claude-code|codex` writes the hook into the tool's settings. \
docs/HOOKS.md has the contracts, with their sources.

Examples:
  $ rush hook install claude-code
  $ rush hook install claude-code --settings .claude/settings.json --dry-run
  $ rush hook install codex --trust low
  $ echo '{\"hook_event_name\":\"PreToolUse\",\"cwd\":\"/src/app\",\"tool_name\":\"Bash\",
      \"tool_input\":{\"command\":\"rm -rf /\"}}' | rush hook claude-code

Exit status:
  0  always for claude-code and codex: the answer (or its absence) is on stdout; a call
     that cannot be judged is answered ask (Claude Code) or deny (Codex), never allowed
  1  install: the settings could not be read or written, or are not valid JSON (then they
     are left as they were)";

pub const HOOK_CLAUDE_CODE_LONG_ABOUT: &str = "\
Claude Code's PreToolUse hook (https://code.claude.com/docs/en/hooks): the hook's JSON on \
stdin (session_id, cwd, hook_event_name, tool_name, tool_input, ...), the decision on \
stdout as {\"hookSpecificOutput\": {\"hookEventName\": \"PreToolUse\", \
\"permissionDecision\": D, \"permissionDecisionReason\": R}}, exit 0.

The gate's allow is allow (Claude Code's own deny and ask rules still apply), ask is ask \
(a person decides in Claude Code's prompt), deny is deny (the reason goes to the model). \
sandbox and vm-only are ask: Claude Code cannot run a call confined, so the reason says \
what the gate wanted and that `rush execute` runs the command that way. Bash, Edit, \
MultiEdit, Write, NotebookEdit and Read are judged; any other tool gets no answer. A \
payload that cannot be read, and a daemon that cannot be reached or does not answer \
within 20 s, are ask, with the reason.";

pub const HOOK_CODEX_LONG_ABOUT: &str = "\
Codex's PreToolUse hook (https://developers.openai.com/codex/hooks): the hook's JSON on \
stdin (session_id, turn_id, cwd, hook_event_name, model, tool_name, tool_input, ...), \
Bash calls with tool_input.command, apply_patch calls with the patch in \
tool_input.command; the answer on stdout, exit 0.

Codex blocks a call only on permissionDecision deny: it refuses allow (without \
updatedInput) and ask as unsupported and then runs the call. So the gate's allow prints \
nothing (Codex's own approval policy decides, as without the hook), and sandbox, vm-only, \
ask and deny print deny, the reason saying what a person can do (run it themselves, or \
through `rush execute`, which confines it or asks through `rush approvals`). A payload \
that cannot be read, and a daemon that cannot be reached or does not answer within 20 s, \
are deny, with the reason. Tools other than Bash and apply_patch get no answer.";

pub const HOOK_INSTALL_LONG_ABOUT: &str = "\
Write the hook into a tool's settings: a PreToolUse entry running this rush binary \
(`rush hook TOOL`, with --socket when a socket other than the default one is in use, and \
the --agent and --trust given).

For claude-code the file is ~/.claude/settings.json (a project's: .claude/settings.json in \
it) and the matcher Bash|Edit|MultiEdit|Write|NotebookEdit|Read. For codex it is \
$CODEX_HOME/hooks.json, else ~/.codex/hooks.json, and the matcher ^(Bash|apply_patch)$; \
Codex runs a hook only once you have trusted it: open /hooks in Codex.

Everything else in the file is kept, in its order; an entry of rush's already there is \
updated in place (installing twice leaves one); a new one goes last. The file is replaced \
at once (a temporary file renamed over it, its mode and owner kept, a symlink followed). \
A file that is not valid JSON is refused and left as it was.";

pub const HOOK_INSTALL_EXAMPLES: &str = "\
Examples:
  $ rush hook install claude-code
  $ rush hook install claude-code --settings ./.claude/settings.json --trust low
  $ rush hook install codex --dry-run

Exit status:
  0  installed, or already installed (nothing rewritten)
  1  the file could not be read or written, or is not valid JSON (left as it was)";

/// `--cwd`, `--agent`, `--trust`: the context a command is judged in.
#[derive(Debug, Args, Clone, Default)]
pub struct GateContextArgs {
    /// Judge (and run) it in this directory (default: the current one).
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<PathBuf>,
    /// Judge it as this agent: its trust level, tokens and session.
    #[arg(long, value_name = "NAME")]
    pub agent: Option<String>,
    /// Judge it at this trust level (low, medium, high, or one the rules define).
    #[arg(long, value_name = "LEVEL")]
    pub trust: Option<String>,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The command line, as one argument (quote it).
    #[arg(value_name = "COMMAND")]
    pub command: String,
    #[command(flatten)]
    pub context: GateContextArgs,
}

#[derive(Debug, Args)]
pub struct ExecuteArgs {
    /// The command line, as one argument (quote it).
    #[arg(value_name = "COMMAND")]
    pub command: String,
    #[command(flatten)]
    pub context: GateContextArgs,
    /// How long an ask waits for a person (e.g. 10m; default: the queue's timeout).
    #[arg(long, value_name = "DURATION", value_parser = super::parse_ttl)]
    pub wait: Option<u64>,
    /// Run it in a throwaway guest on a copy of the workspace even where the gate allows
    /// or sandboxes it (the vm-only path; never weaker: a deny still denies, an ask still
    /// asks first).
    #[arg(long)]
    pub in_guest: bool,
}

#[derive(Debug, Subcommand)]
pub enum GuardrailCommand {
    /// List the guardrails (oldest first)
    List,
    /// Remove a guardrail
    Rm {
        /// Its id (see `rush guardrail list`).
        id: u64,
    },
    /// Print the guardrails as TOML (to share them: `rush guardrail import FILE`)
    Export {
        /// Only these scopes: global, session:NAME, repository:/PATH.
        #[arg(long, value_name = "SCOPE", value_parser = parse_scope)]
        scope: Vec<GuardrailScope>,
    },
    /// Add the guardrails of a TOML file (`-`: stdin); ones already there are kept
    Import {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

pub fn parse_scope(s: &str) -> Result<GuardrailScope, String> {
    s.parse()
}

/// The agent tools `rush hook` speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HookTool {
    /// Claude Code (PreToolUse hooks in settings.json)
    ClaudeCode,
    /// OpenAI Codex CLI (PreToolUse hooks in hooks.json)
    Codex,
}

#[derive(Debug, Subcommand)]
pub enum HookCommand {
    /// Claude Code's PreToolUse hook: the hook's JSON on stdin, the decision on stdout
    #[command(long_about = HOOK_CLAUDE_CODE_LONG_ABOUT)]
    ClaudeCode(HookRunArgs),
    /// Codex's PreToolUse hook: the hook's JSON on stdin, a deny (or nothing) on stdout
    #[command(long_about = HOOK_CODEX_LONG_ABOUT)]
    Codex(HookRunArgs),
    /// Write the hook into a tool's settings (idempotent; other settings kept)
    #[command(long_about = HOOK_INSTALL_LONG_ABOUT, after_long_help = HOOK_INSTALL_EXAMPLES)]
    Install(HookInstallArgs),
}

#[derive(Debug, Args, Clone, Default)]
pub struct HookRunArgs {
    /// Judge as this agent: its trust level, tokens and session (default: the caller; a
    /// tool running inside a rush agent is that agent).
    #[arg(long, value_name = "NAME")]
    pub agent: Option<String>,
    /// Judge at this trust level (low, medium, high, or one the rules define).
    #[arg(long, value_name = "LEVEL")]
    pub trust: Option<String>,
}

#[derive(Debug, Args)]
pub struct HookInstallArgs {
    /// The tool whose settings to edit.
    #[arg(value_enum)]
    pub tool: HookTool,
    /// The settings file to edit (default: ~/.claude/settings.json; Codex:
    /// $CODEX_HOME/hooks.json, else ~/.codex/hooks.json). Created, with its directories,
    /// when missing.
    #[arg(long, value_name = "FILE")]
    pub settings: Option<PathBuf>,
    /// Print the whole file as it would be written; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The installed hook judges as this agent (written into its command as --agent).
    #[arg(long, value_name = "NAME")]
    pub agent: Option<String>,
    /// The installed hook judges at this trust level (written into its command as --trust).
    #[arg(long, value_name = "LEVEL")]
    pub trust: Option<String>,
}

/// `--always`, `--always-ask`, `--never` on `rush approve` / `rush reject`.
#[derive(Debug, Args, Clone, Default)]
pub struct RememberArgs {
    /// Also learn a guardrail: this command is allowed from now on (command requests)
    #[arg(long, conflicts_with_all = ["always_ask", "never"])]
    pub always: bool,
    /// Also learn a guardrail: this command is always asked about (command requests)
    #[arg(long, conflicts_with = "never")]
    pub always_ask: bool,
    /// Also learn a guardrail: this command is denied from now on (command requests)
    #[arg(long)]
    pub never: bool,
    /// Where that guardrail applies: global, session:NAME, repository:/PATH (default: the
    /// request's session, else global).
    #[arg(long, value_name = "SCOPE", value_parser = parse_scope)]
    pub scope: Option<GuardrailScope>,
}

impl RememberArgs {
    pub fn decision(&self) -> Option<rush_proto::gate::GateDecision> {
        use rush_proto::gate::GateDecision;
        match (self.always, self.always_ask, self.never) {
            (true, _, _) => Some(GateDecision::Allow),
            (_, true, _) => Some(GateDecision::Ask),
            (_, _, true) => Some(GateDecision::Deny),
            _ => None,
        }
    }
}
