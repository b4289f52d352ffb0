//! `rush agent spawn`'s arguments and its long help; `SpawnOptions` is shared with
//! `rush agent delegate --spawn`.

use clap::Args;
use rush_proto::{AgentName, Budget, FileGrant, Hardlinks, NetPolicy};

pub(super) const SPAWN_LONG_ABOUT: &str = "\
Run CMD as a new agent named NAME. The daemon creates a cgroup for the agent, puts the \
agent's policy into the eBPF maps its kernel programs check (--net now; --allow where the \
kernel can enforce it), and starts CMD inside the cgroup, as you, with your environment and \
in your current directory. CMD is in the cgroup before it executes its first instruction, \
and everything it starts stays there.

In the foreground (the default), from a terminal, the agent gets a terminal of its own \
that the daemon keeps, and rush attaches you to it (as `rush agent attach` does): raw \
mode, your window size, Ctrl-C to the agent. rush exits with the agent's exit status \
(128+N if a signal N killed it). The detach keys (Ctrl-\\ d) or a closed terminal leave \
it running; `rush agent attach NAME` returns to it.

With --no-tty, or when stdin or stdout is not a terminal, your stdin, stdout and stderr \
are handed to the agent as they are, rush prints nothing of its own (also not with \
--json), and rush exits with the agent's exit status. If rush ends before the agent, by \
Ctrl-C (rush then exits 130), a signal or a closed terminal, the daemon kills the agent: \
such an agent never outlives its rush.

With --detach, the agent runs in the background with stdin from /dev/null and its output \
captured by the daemon (read it with `rush agent logs`); with --tty --detach, on a \
terminal of its own for `rush agent attach`. rush prints the agent's name, first process \
id and cgroup id (or the agent as JSON with --json) and exits 0. Stop it with `rush agent kill`.";

pub(super) const SPAWN_EXAMPLES: &str = "\
Examples:
  A shell with no network at all (the default):
    $ rush agent spawn scratch -- bash

  Only HTTPS to one host, and read/write access to one tree for an hour:
    $ rush agent spawn coder --net api.anthropic.com:443 \\
        --allow /srv/repo:read,write,create:1h -- claude

  An untrusted script with a tight budget, frozen after 10 minutes of CPU:
    $ rush agent spawn tool --trust low --budget cpu:10m,mem:512M -- ./run.sh

  Any port of a local service, in the background:
    $ rush agent spawn indexer --net '127.0.0.1:*,[::1]:*' --detach -- ./index.sh

  A worker in a session that comes back after a reboot, confined to its workspace:
    $ rush agent spawn worker --session web --allow ~/src/web:read,write \\
        --detach --restartable -- ./work.sh";

#[derive(Debug, Args)]
pub struct SpawnArgs {
    /// The agent's name: 1-64 characters from a-z A-Z 0-9 . _ -, starting with a letter or
    /// digit. It names the agent's cgroup, so it must be unused.
    #[arg(value_name = "NAME")]
    pub name: AgentName,

    #[command(flatten)]
    pub opts: SpawnOptions,

    /// Run in the background: stdin from /dev/null, output captured for `rush agent logs`
    /// (with --tty: on a terminal of its own, for `rush agent attach`).
    #[arg(long, short = 'd')]
    pub detach: bool,

    /// Run on a terminal the daemon keeps (a pseudo-terminal): `rush agent attach` shows
    /// and types into it, detaching leaves the agent running, `rush agent logs` has its
    /// output as plain text. The default for a foreground spawn from a terminal.
    #[arg(long, conflicts_with = "no_tty")]
    pub tty: bool,

    /// In the foreground, hand the agent this terminal itself (stdin, stdout, stderr as
    /// they are) instead of a terminal of its own; it then ends when rush does.
    #[arg(long)]
    pub no_tty: bool,

    /// Start the agent again, as spawned here (command, environment, working directory,
    /// session, trust, budget, network policy, and its file tokens re-resolved from their
    /// paths), after a reboot or when the daemon starts and finds it gone (needs --detach).
    /// Its tokens are kept as grants and revokes leave them, timed ones with what is left of
    /// their time. It is never restarted with fewer restrictions: if a granted path no longer
    /// exists, its session is gone, or this boot cannot enforce its policy, it is not
    /// started (audited as restart_failed) and is tried again at the next daemon start.
    /// A restart is audited as agent_restarted with reason `reboot` or `gone` and the new
    /// pid. It stops being restartable when `rush agent kill` kills it (which also forgets
    /// one whose restart failed) or when it exits with status 0 while the daemon watches.
    /// Any other exit while the daemon runs does not restart it (no restart loops): it is
    /// started again at the next daemon start or boot.
    #[arg(long, requires = "detach")]
    pub restartable: bool,

    /// Spawn it in the background on a terminal of its own (as --detach --tty), then open
    /// `rush top` focused on it, its terminal live; quitting rush top leaves it running.
    #[arg(long, conflicts_with_all = ["no_tty", "detach"])]
    pub visible: bool,

    /// Run it in git worktree NAME of the repository holding the current directory (made
    /// now if there is none, as `rush agent workspace create NAME`), with read-write
    /// tokens on the worktree, read-only on the main tree and, of the shared .git, what a
    /// commit on its branch writes (see `rush agent workspace --help`).
    #[arg(long)]
    pub workspace: bool,

    /// With --workspace, a new workspace starts from this commit, branch or tag.
    #[arg(long, value_name = "REF", requires = "workspace")]
    pub from: Option<String>,

    /// With --workspace, a new workspace gets no .rushinclude files or build directories.
    #[arg(long, requires = "workspace")]
    pub no_state: bool,

    /// The command to run and its arguments, after `--`. CMD is looked up in your PATH.
    /// Optional with a --profile that names one.
    #[arg(last = true, required_unless_present = "profile", value_name = "CMD")]
    pub command: Vec<String>,
}

/// What the agent is allowed and where it works: shared by `agent spawn` and `agent
/// delegate --spawn`.
#[derive(Debug, Args)]
pub struct SpawnOptions {
    /// Outbound network policy: `deny` (no IPv4/IPv6 connect or send at all), `allow`
    /// (anything), or a comma list of HOST:PORT the agent may reach. HOST is an IP address
    /// (IPv6 in brackets, e.g. [::1]:443), a CIDR block (10.0.0.0/8:443, [fd00::/8]:*), a
    /// host name (api.anthropic.com:443) or `*.` and a domain for any name below it
    /// (*.githubusercontent.com:443); PORT is 1-65535, or * for any port. The agent's DNS
    /// then goes to its own resolver in the daemon, whatever server it asks: listed names
    /// resolve and their addresses are allowed for the answer's TTL (+ `[dns] grace_secs`),
    /// other names get REFUSED, and an answer never opens loopback or link-local addresses
    /// (list those by IP). Without a DNS server the daemon resolves names once, at spawn.
    /// The default is the trust level's policy, or `deny` without --trust.
    #[arg(long, value_name = "POLICY")]
    pub net: Option<NetPolicy>,

    /// A trust level from the daemon's policy file (built in: low, medium, high): its
    /// budget, network policy, default tokens and exec rule. --budget and --net override
    /// it, --allow adds to its tokens. At `low`, the agent runs only system programs
    /// (/usr, /bin...), never files it wrote or was granted.
    #[arg(long, value_name = "LEVEL")]
    pub trust: Option<String>,

    /// What the agent may consume, a comma list of KEY:VALUE:
    /// cpu:TIME (cumulative CPU time, e.g. 90s, 1h; at the limit the agent is frozen until
    /// `rush agent resume --budget` raises it), cpu-rate:N% (of one core), mem:SIZE (e.g.
    /// 512M, 2G; OOM kill inside the agent), pids:N (fork fails beyond it), net:SIZE (bytes
    /// sent plus received; then packets are dropped), api:N (model API calls: connects to
    /// the configured endpoints), cost:$N (spend reported by the API, through the daemon's
    /// metering proxy). The daemon refuses a limit this machine cannot enforce.
    #[arg(long, value_name = "KEY:VALUE,...")]
    pub budget: Option<Budget>,

    /// Grant file access: PATH:OPS[:TTL], OPS a comma list of
    /// read,write,exec,create,delete, TTL how long the grant lasts (e.g. 90s, 30m, 1h; forever if omitted). PATH
    /// must be absolute. Repeat for several grants. File grants are enforced by BPF LSM,
    /// or by Landlock where BPF LSM programs cannot attach (see `rush doctor`). The daemon
    /// refuses the spawn when neither can enforce them: an agent is never started with a
    /// grant that is not really enforced, unless --allow-unconfined says so. A
    /// file-confined agent also gets the daemon's baseline (system programs, libraries and
    /// the read-only system data tool chains need; see `rush capability list AGENT`) and a
    /// private TMPDIR of its own, never the shared /tmp.
    #[arg(long = "allow", value_name = "PATH:OPS[:TTL]")]
    pub allow: Vec<FileGrant>,

    /// What a grant on a directory gives to a regular file below it that has more than
    /// one hard link (another name, possibly outside every grant, reaches the same file):
    /// `follow` (the file is granted like any other: a link made by someone else into a
    /// granted directory opens the file it points to), `refuse-write` (writing it needs a
    /// token naming that file itself; reading follows the directory), or `refuse`
    /// (reading, writing and executing it need such a token; note that some system
    /// binaries are hard links, e.g. Debian's /usr/bin/perl). Only for agents with
    /// --allow. Default: the trust level's `hardlinks`, else `follow`. BPF LSM checks the
    /// link count at every open, read, write and mapping; under Landlock, which cannot
    /// see link counts, the daemon instead refuses the spawn (and later grants) when a
    /// granted directory holds such a file, looking at most 100000 entries deep per
    /// directory; links made after that check are not caught there.
    #[arg(long, value_name = "MODE")]
    pub hardlinks: Option<Hardlinks>,

    /// Run the agent as USER (a name or a numeric uid), with that user's primary group and
    /// supplementary groups, instead of as you. Only root may name another user. Agents
    /// run by root are root inside their confinement (without the capabilities the daemon
    /// drops, see `rush doctor`); a trust level with `root_agents = false` refuses them
    /// unless --user names an unprivileged user.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,

    /// Start the agent even where the daemon cannot enforce what it asks for (file grants
    /// with no file backend, a network policy with no network programs). The spawn is
    /// audited as such, and `agent list` and `agent status` mark the agent UNCONFINED.
    #[arg(long)]
    pub allow_unconfined: bool,

    /// The session the agent works in: checkpoints freeze it, rollbacks stop or restore it.
    /// Default: $RUSH_SESSION (the session `rush session attach` bound your shell to).
    #[arg(long, value_name = "SESSION")]
    pub session: Option<AgentName>,

    /// Start from an agent profile: the hosts, file tokens, environment and terminal a
    /// known agent tool needs (built in: claude-code, codex, aider, gemini,
    /// generic-openai; yours in ~/.config/rush/profiles/NAME.toml). Flags given as well
    /// win (--net, --budget, --tty, --no-tty) or add (--allow); CMD defaults to the
    /// profile's command. With a cost budget, the profile's API hosts are left off the
    /// network list: the agent reaches the API through its meter only. `rush doctor
    /// --profile NAME` shows what it will allow.
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
}
