//! `/etc/rush/config.toml`: every section and key optional, with the defaults below
//! (`contrib/config.toml` is the full commented file, checked against [`Config::default`]).
//!
//! ```toml
//! [daemon]
//! socket = "/run/rush/agentd.sock"
//! state_dir = "/var/lib/rush"
//! operator_group = "rush"      # members may operate the daemon, besides root
//! log_format = "text"          # or "json"
//!
//! [bpf]
//! pin_dir = "/sys/fs/bpf/rush"
//!
//! [cgroup]
//! parent = "rush"              # agent cgroups live in <hierarchy>/<parent>/<agent>
//! # hybrid hosts only: v1 hierarchies agents join (each join costs a spawn ~10 ms once
//! # the kernel's cgroup locks have cooled down; pure cgroup v2 hosts pay nothing)
//! v1_controllers = ["cpu", "cpuacct", "memory", "pids", "freezer"]
//! # hybrid hosts joining v1 hierarchies only: sets the host's cgroup2 `favordynmods`
//! # flag while the daemon runs, so a join does not wait ~10 ms (forks pay a little)
//! favordynmods = true
//!
//! [files]
//! # tokens every file-confined agent (one spawned with --allow) gets, so that programs
//! # can load and common tool chains run; paths missing on this machine are skipped;
//! # `~/REL` is in the home of the user the agent runs as (read and exec only)
//! baseline = ["/usr:read,exec", "/lib:read,exec", "/etc/ld.so.cache:read", "/dev/null:read,write",
//!             ..., "/etc/ssl/certs:read", "~/.rustup:read,exec", "~/.cargo/bin:read,exec"]
//! private_tmp = true           # each agent its own TMPDIR, <state_dir>-tmp/<agent>
//!
//! enforcement = "auto"         # auto | bpf-lsm | landlock: what enforces file tokens
//!
//! [landlock]                   # agents confined by Landlock, whose tokens change:
//! on_narrow = "restart"        # a revoke or expiry: "restart" or "kill" the agent
//! on_widen = "restart"         # a grant: "restart" or "kill"
//! audit_denials = true         # Landlock's denials in the audit trail (Linux 6.15+): the
//!                              # daemon turns the kernel's audit on if it is off
//!
//! [snapshot]                  # session workspaces, checkpoints and timelines
//! store = "auto"               # auto | btrfs | btrfs-loop | git (see `rush doctor`)
//! image_size = "64G"           # the loop-mounted btrfs image (sparse); raising it grows it
//! # criu = "/usr/sbin/criu"    # for `rush checkpoint --with-processes` (default: searched)
//! # dir = "/var/lib/rush-workspaces"   # session trees off the workspace's own btrfs
//! #                            # (default: <state_dir>-workspaces; never inside the state dir)
//!
//! [policy]
//! file = "/etc/rush/policy.toml" # trust levels; the built-in ones when it does not exist
//!
//! [hardening]                  # every agent, every kernel (trust levels may override the
//! cgroup_namespace = true      # last three): its own cgroup namespace;
//! private_cgroupfs = true      # its own mount namespace, cgroupfs read-only there
//! drop_capabilities = ["CAP_SYS_ADMIN", "CAP_BPF", ...]   # never held (bounding set too)
//! seccomp = true               # refuse bpf, keyrings, perf, fanotify, mounts, modules, ...
//! root_agents = true           # false: refuse agents that would run as root (--user)
//!
//! [budget]
//! poll_ms = 250                # how often cpu time, OOM kills and refused forks are read
//! # model API endpoints (HOST:PORT, IP:PORT): each connect an agent makes to one counts as
//! # one call against its `api` budget; host names are resolved when the daemon starts
//! api_endpoints = []
//!
//! [audit]                      # the audit trail (in <state_dir>/state.db), pruned at
//! retention = "90d"            # start and hourly: records older than this go ("0": kept)
//! max_records = 1000000        # and all but the newest this many (0: no limit)
//!
//! [events]                     # the event stream (`rush events --follow`)
//! backlog = 4096               # events a subscriber may fall behind by before it is dropped
//!
//! [meter]                      # the metering proxy of agents with a cost budget
//! upstream = "https://api.openai.com/v1"  # the default route; the path goes before each call's
//! ca_file = "/etc/rush/extra-ca.pem"       # trusted besides the system's roots (optional)
//! [meter.prices]               # USD per million tokens; `*` = prefix; default = unknown models
//! "claude-3-5-sonnet*" = { input = 3, output = 15 }
//! default = { input = 3, output = 15 }
//! [meter.routes.anthropic]     # calls to /anthropic/... on the meter: services/meter/config.rs
//! upstream = "https://api.anthropic.com"
//! env = ["ANTHROPIC_BASE_URL"]
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::adapters::landlock::LandlockSection;
use crate::adapters::snapshot::SnapshotSection;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub bpf: BpfSection,
    pub cgroup: CgroupSection,
    pub files: FilesSection,
    pub policy: PolicySection,
    pub budget: BudgetSection,
    pub meter: crate::services::meter::MeterConfig,
    pub landlock: LandlockSection,
    pub snapshot: SnapshotSection,
    pub audit: AuditSection,
    pub events: EventsSection,
    pub hardening: crate::adapters::harden::HardeningSection,
    pub dns: DnsSection,
    pub terminal: TerminalSection,
    pub coordination: CoordinationSection,
    pub approvals: crate::services::approvals::ApprovalsConfig,
    pub gating: crate::services::gating::GatingConfig,
    pub workspaces: crate::services::workspaces::WorkspacesConfig,
}

/// Coordination between agents (intents, claims, results, tasks).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CoordinationSection {
    /// Largest result `rush agent publish` accepts, in bytes (at most 700 KiB: a request
    /// line carries it base64-encoded within the API's 1 MiB).
    pub max_result_bytes: usize,
    /// Where coordination state lives: this daemon's state.db, or an etcd cluster shared
    /// by several daemons (machines).
    pub backend: CoordinationBackend,
    /// etcd's client URLs (`http://HOST:PORT`, or `https://` with `etcd_ca_file`).
    pub etcd_endpoints: Vec<String>,
    /// Every key Rush writes in etcd starts with this (`/rush/claims/TASK`, ...): daemons
    /// sharing a prefix share claims; ends with `/`.
    pub etcd_prefix: String,
    /// The TTL of this daemon's etcd lease (a duration, `10s`): a daemon that stops
    /// answering (dead, stopped, cut off) loses its claims this long after.
    pub etcd_lease_ttl: String,
    /// PEM CA certificate(s) the etcd servers' certificates must chain to (https only).
    pub etcd_ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for clusters that require them (both or neither).
    pub etcd_cert_file: Option<PathBuf>,
    pub etcd_key_file: Option<PathBuf>,
    /// This daemon's name among the daemons sharing the store; empty: `HOSTNAME:STATE_DIR`.
    pub node: String,
}

impl Default for CoordinationSection {
    fn default() -> Self {
        CoordinationSection {
            max_result_bytes: 512 << 10,
            backend: CoordinationBackend::Embedded,
            etcd_endpoints: vec!["http://127.0.0.1:2379".into()],
            etcd_prefix: "/rush/".into(),
            etcd_lease_ttl: "10s".into(),
            etcd_ca_file: None,
            etcd_cert_file: None,
            etcd_key_file: None,
            node: String::new(),
        }
    }
}

/// `[coordination] backend`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub enum CoordinationBackend {
    /// The daemon's SQLite store: one machine.
    #[default]
    Embedded,
    /// An etcd cluster (v3 API): several daemons, on several machines.
    Etcd,
}

impl TryFrom<String> for CoordinationBackend {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "embedded" => Ok(CoordinationBackend::Embedded),
            "etcd" => Ok(CoordinationBackend::Etcd),
            _ => Err(format!("coordination.backend: {s:?} is not \"embedded\" or \"etcd\"")),
        }
    }
}

/// etcd's lease TTLs this daemon accepts: below etcd's own minimum (about 1.5 s with its
/// default election timeout) a lease cannot be kept alive reliably.
pub const ETCD_LEASE_TTL: std::ops::RangeInclusive<u64> = 2..=3600;

impl CoordinationSection {
    /// The node lease's TTL (validated by `Config::parse`).
    pub fn etcd_lease_ttl(&self) -> std::time::Duration {
        rush_proto::parse_duration(&self.etcd_lease_ttl).unwrap_or(std::time::Duration::from_secs(10))
    }

    /// This daemon's name among the daemons sharing the store.
    pub fn node_name(&self, state_dir: &Path) -> String {
        if !self.node.is_empty() {
            return self.node.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let host = host.trim();
        format!("{host}:{}", state_dir.display())
    }

    fn check(&self) -> Result<(), String> {
        let ttl = rush_proto::parse_duration(&self.etcd_lease_ttl)
            .map_err(|e| format!("coordination.etcd_lease_ttl: {e}"))?;
        if !ETCD_LEASE_TTL.contains(&ttl.as_secs()) || ttl.subsec_nanos() != 0 {
            return Err(format!(
                "coordination.etcd_lease_ttl: {:?} is not {}s-{}s",
                self.etcd_lease_ttl,
                ETCD_LEASE_TTL.start(),
                ETCD_LEASE_TTL.end()
            ));
        }
        if !self.etcd_prefix.starts_with('/')
            || !self.etcd_prefix.ends_with('/')
            || self.etcd_prefix.len() < 2
        {
            return Err(format!(
                "coordination.etcd_prefix: {:?} must start and end with / (e.g. \"/rush/\")",
                self.etcd_prefix
            ));
        }
        if self.node.len() > 256 || self.node.chars().any(char::is_control) {
            return Err("coordination.node: at most 256 printable characters".into());
        }
        if self.etcd_cert_file.is_some() != self.etcd_key_file.is_some() {
            return Err("coordination.etcd_cert_file and etcd_key_file: set both or neither".into());
        }
        if self.etcd_cert_file.is_some() && self.etcd_ca_file.is_none() {
            return Err("coordination.etcd_cert_file: a client certificate needs etcd_ca_file (TLS)".into());
        }
        for f in [&self.etcd_ca_file, &self.etcd_cert_file, &self.etcd_key_file].into_iter().flatten() {
            if !f.is_absolute() {
                return Err(format!("coordination: {} is not an absolute path", f.display()));
            }
        }
        if self.backend == CoordinationBackend::Etcd && self.etcd_endpoints.is_empty() {
            return Err("coordination.etcd_endpoints: empty (backend = \"etcd\" needs at least one)".into());
        }
        let tls = self.etcd_ca_file.is_some();
        for e in &self.etcd_endpoints {
            let rest = match (e.strip_prefix("http://"), e.strip_prefix("https://")) {
                (Some(rest), _) if !tls => rest,
                (_, Some(rest)) if tls => rest,
                (Some(_), _) => {
                    return Err(format!(
                        "coordination.etcd_endpoints: {e:?} is http:// but etcd_ca_file is set (use https://)"
                    ));
                }
                (_, Some(_)) => {
                    return Err(format!(
                        "coordination.etcd_endpoints: {e:?} is https:// and needs etcd_ca_file"
                    ));
                }
                _ => return Err(format!("coordination.etcd_endpoints: {e:?} is not http://HOST:PORT")),
            };
            let port = rest.trim_end_matches('/').rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>()));
            if !matches!(port, Some((h, Ok(p))) if !h.is_empty() && p != 0) {
                return Err(format!("coordination.etcd_endpoints: {e:?} is not http[s]://HOST:PORT"));
            }
        }
        Ok(())
    }
}

/// Agents on a terminal (`rush agent spawn --tty`, `rush agent attach`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TerminalSection {
    /// Raw bytes of each agent's terminal output kept for a viewer who attaches later
    /// (its plain text goes to the agent's log whatever this is).
    pub scrollback: usize,
}

impl Default for TerminalSection {
    fn default() -> Self {
        TerminalSection { scrollback: 1 << 20 }
    }
}

/// Host names in `--net` allow lists: each such agent's DNS goes to a resolver of its own
/// in the daemon, which answers only names on its list and allows the addresses it
/// returns for their TTL.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DnsSection {
    /// The DNS server queries are forwarded to (`IP` or `IP:PORT`); empty: the first
    /// `nameserver` of /etc/resolv.conf.
    pub upstream: String,
    /// Seconds an address stays allowed after its TTL ran out (connections opened just
    /// before).
    pub grace_secs: u64,
    /// TTLs longer than this many seconds are cut to it.
    pub max_ttl_secs: u64,
}

impl Default for DnsSection {
    fn default() -> Self {
        DnsSection { upstream: String::new(), grace_secs: 30, max_ttl_secs: 3600 }
    }
}

/// The event bus (`rush events --follow`, `rush audit --follow`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EventsSection {
    /// Events a subscriber may fall behind by before it is dropped (with a marker).
    pub backlog: usize,
}

impl Default for EventsSection {
    fn default() -> Self {
        EventsSection { backlog: crate::services::events::BACKLOG }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuditSection {
    /// Records older than this are deleted (a duration: `30d`, `12h`; `0` keeps them).
    pub retention: String,
    /// At most this many records are kept, the newest (0: no limit).
    pub max_records: u64,
}

impl Default for AuditSection {
    fn default() -> Self {
        AuditSection { retention: "90d".into(), max_records: 1_000_000 }
    }
}

impl AuditSection {
    pub fn max_age(&self) -> Option<std::time::Duration> {
        // Validated by `Config::parse`.
        rush_proto::parse_duration(&self.retention).ok().filter(|d| !d.is_zero())
    }

    pub fn max_records(&self) -> Option<u64> {
        (self.max_records > 0).then_some(self.max_records)
    }
}

/// Which mechanism enforces file tokens.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum EnforcementChoice {
    /// BPF LSM where its programs attach, else Landlock, else none (file tokens refused).
    #[default]
    Auto,
    /// BPF LSM only: per-inode tokens, live revoke on open files, expiry in the kernel.
    BpfLsm,
    /// Landlock only (even where BPF LSM attaches): path rules fixed when the agent starts.
    Landlock,
}

impl EnforcementChoice {
    pub fn as_str(self) -> &'static str {
        match self {
            EnforcementChoice::Auto => "auto",
            EnforcementChoice::BpfLsm => "bpf-lsm",
            EnforcementChoice::Landlock => "landlock",
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PolicySection {
    pub file: PathBuf,
}

impl Default for PolicySection {
    fn default() -> Self {
        PolicySection { file: PathBuf::from("/etc/rush/policy.toml") }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetSection {
    pub poll_ms: u64,
    pub api_endpoints: Vec<String>,
}

impl Default for BudgetSection {
    fn default() -> Self {
        BudgetSection { poll_ms: 250, api_endpoints: Vec::new() }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FilesSection {
    /// `PATH:OPS` tokens given to every file-confined agent; PATH absolute, or `~/REL` for
    /// a path in the home of the user the agent runs as (read and exec only). See
    /// [`crate::services::baseline`]: what each default entry is for, and what the baseline must
    /// never contain.
    pub baseline: Vec<String>,
    /// Each file-confined agent gets its own temporary directory, `<state_dir>-tmp/<agent>`
    /// (read, write, create, delete), as `TMPDIR`; removed when it exits.
    pub private_tmp: bool,
    /// `auto`, `bpf-lsm` or `landlock`.
    pub enforcement: EnforcementChoice,
}

impl Default for FilesSection {
    fn default() -> Self {
        let base = [
            "/usr:read,exec",
            "/bin:read,exec",
            "/sbin:read,exec",
            "/lib:read,exec",
            "/lib64:read,exec",
            "/etc/ld.so.cache:read",
            "/etc/ld.so.conf:read",
            "/etc/ld.so.conf.d:read",
            "/etc/localtime:read",
            "/etc/nsswitch.conf:read",
            "/etc/passwd:read",
            "/etc/group:read",
            "/dev/null:read,write",
            "/dev/zero:read",
            "/dev/full:read,write",
            "/dev/random:read",
            "/dev/urandom:read",
            "/dev/tty:read,write",
            "/dev/pts:read,write",
            // Read-only system data that common tool chains fail without (each found by
            // running the tool confined: kernel-tests/tests/toolchains.rs).
            // pip (its vendored `distro`, run by `python3 -m venv`'s ensurepip): EACCES is fatal.
            "/etc/debian_version:read",
            // pip (Python's `mimetypes`, which opens what exists): EACCES is fatal.
            "/etc/mime.types:read",
            // node (npm): OpenSSL's configuration, read at start-up; EACCES aborts.
            "/etc/ssl/openssl.cnf:read",
            // npm with a `cafile` (set in Debian's and many sites' npmrc) dies without it;
            // every TLS client's trust anchors. Public certificates only (not /etc/ssl/private).
            "/etc/ssl/certs:read",
            // git (Debian's): the system config; EACCES is fatal ("unknown error occurred
            // while reading the configuration files"). Skipped where there is none.
            "/etc/gitconfig:read",
            // Toolchains installed per user (rustup): read and exec, in the home of the user
            // the agent runs as. Not ~/.cargo itself (credentials.toml).
            "~/.rustup:read,exec",
            "~/.cargo/bin:read,exec",
        ];
        FilesSection {
            baseline: base.iter().map(|s| s.to_string()).collect(),
            private_tmp: true,
            enforcement: EnforcementChoice::Auto,
        }
    }
}

impl FilesSection {
    /// The baseline as grants (validated by `Config::parse`); home entries keep their
    /// `~/` path until a spawn expands them ([`crate::services::baseline::expand`]).
    pub fn grants(&self) -> Vec<rush_proto::FileGrant> {
        self.baseline.iter().filter_map(|g| crate::services::baseline::parse_entry(g).ok()).collect()
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonConfig {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub operator_group: Option<String>,
    pub log_format: LogFormat,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            socket: PathBuf::from(rush_proto::DEFAULT_SOCKET),
            state_dir: PathBuf::from("/var/lib/rush"),
            operator_group: None,
            log_format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BpfSection {
    pub pin_dir: PathBuf,
}

impl Default for BpfSection {
    fn default() -> Self {
        BpfSection { pin_dir: PathBuf::from("/sys/fs/bpf/rush") }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CgroupSection {
    pub parent: PathBuf,
    pub v1_controllers: Vec<String>,
    /// Set the cgroup2 `favordynmods` flag while the daemon runs, where agents join v1
    /// hierarchies (see [`crate::adapters::cgroup::favor_dynmods`]).
    pub favordynmods: bool,
}

impl Default for CgroupSection {
    fn default() -> Self {
        CgroupSection {
            parent: PathBuf::from("rush"),
            v1_controllers: crate::adapters::cgroup::V1_CONTROLLERS.iter().map(|c| c.to_string()).collect(),
            favordynmods: true,
        }
    }
}

pub const DEFAULT_CONFIG: &str = "/etc/rush/config.toml";
/// The directory of the default config, which agents may not enter.
pub const DEFAULT_CONFIG_DIR: &str = "/etc/rush";

impl Config {
    /// Reads `path`; a missing file at the default location means all defaults, while a
    /// missing file the operator named explicitly is an error.
    pub fn load(path: &Path, explicit: bool) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => return Ok(Config::default()),
            Err(source) => return Err(ConfigError::Read { path: path.to_owned(), source }),
        };
        Self::parse(&text).map_err(|message| ConfigError::Parse { path: path.to_owned(), message })
    }

    pub fn parse(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        for g in &config.files.baseline {
            crate::services::baseline::parse_entry(g).map_err(|e| format!("files.baseline: {e}"))?;
        }
        if !(10..=60_000).contains(&config.budget.poll_ms) {
            return Err(format!("budget.poll_ms: {} is not 10-60000", config.budget.poll_ms));
        }
        for ep in &config.budget.api_endpoints {
            match ep.parse::<rush_proto::NetPolicy>() {
                Ok(rush_proto::NetPolicy::AllowList(eps)) if eps.len() == 1 && eps[0].port != 0 => {}
                _ => return Err(format!("budget.api_endpoints: {ep:?} is not HOST:PORT")),
            }
        }
        if let Some(d) = &config.snapshot.dir
            && (!d.is_absolute() || d.starts_with(&config.daemon.state_dir))
        {
            return Err(format!(
                "snapshot.dir: {} must be an absolute path outside daemon.state_dir (agents may not enter the state dir)",
                d.display()
            ));
        }
        if let Err(e) = rush_proto::budget::parse_size(&config.snapshot.image_size) {
            return Err(format!("snapshot.image_size: {e}"));
        }
        if let Err(e) = rush_proto::parse_duration(&config.audit.retention) {
            return Err(format!("audit.retention: {e}"));
        }
        config.coordination.check()?;
        config.approvals.check()?;
        config.gating.check()?;
        if !(1..=1 << 20).contains(&config.events.backlog) {
            return Err(format!("events.backlog: {} is not 1-1048576", config.events.backlog));
        }
        crate::adapters::harden::parse_capabilities(&config.hardening.drop_capabilities)
            .map_err(|e| format!("hardening.drop_capabilities: {e}"))?;
        for c in &config.cgroup.v1_controllers {
            if !crate::adapters::cgroup::V1_CONTROLLERS.contains(&c.as_str()) {
                return Err(format!(
                    "cgroup.v1_controllers: {c:?} is not one of {}",
                    crate::adapters::cgroup::V1_CONTROLLERS.join(", ")
                ));
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped, commented config (installed as /etc/rush/config.toml) sets every key to
    /// its default: what it documents cannot drift from what the daemon does.
    #[test]
    fn contrib_config_is_the_defaults() {
        let text = include_str!("../../contrib/config.toml");
        assert_eq!(Config::parse(text).unwrap(), Config::default());
        // Every section is there, so none is undocumented.
        for section in [
            "daemon",
            "bpf",
            "cgroup",
            "files",
            "landlock",
            "snapshot",
            "policy",
            "budget",
            "audit",
            "meter",
            "meter.prices",
            "coordination",
            "approvals",
            "gating",
        ] {
            assert!(text.contains(&format!("\n[{section}]\n")), "contrib/config.toml lacks [{section}]");
        }
    }

    #[test]
    fn empty_config_is_all_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn sections_override_defaults_independently() {
        let c = Config::parse("[cgroup]\nparent = \"rush-test/agents\"\n[daemon]\nlog_format = \"json\"\n")
            .unwrap();
        assert_eq!(c.cgroup.parent, PathBuf::from("rush-test/agents"));
        assert_eq!(c.daemon.log_format, LogFormat::Json);
        assert_eq!(c.bpf, BpfSection::default());
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let e = Config::parse("[daemon]\nsockte = \"/x\"\n").unwrap_err();
        assert!(e.contains("sockte"), "{e}");
    }

    #[test]
    fn unknown_v1_controllers_are_refused_by_name() {
        let e = Config::parse("[cgroup]\nv1_controllers = [\"pids\", \"cpuset\"]\n").unwrap_err();
        assert!(e.contains("\"cpuset\""), "{e}");
        let c = Config::parse("[cgroup]\nv1_controllers = []\n").unwrap();
        assert!(c.cgroup.v1_controllers.is_empty());
    }

    #[test]
    fn baseline_tokens_are_validated() {
        assert_eq!(Config::default().files.grants().len(), FilesSection::default().baseline.len());
        let e = Config::parse("[files]\nbaseline = [\"/usr:fly\"]\n").unwrap_err();
        assert!(e.contains("fly"), "{e}");
        let e = Config::parse("[files]\nbaseline = [\"/usr:read:5m\"]\n").unwrap_err();
        assert!(e.contains("cannot expire"), "{e}");
        let e = Config::parse("[files]\nbaseline = [\"~/.npm:read,write\"]\n").unwrap_err();
        assert!(e.contains("read and exec only"), "{e}");
        let c =
            Config::parse("[files]\nbaseline = [\"~/.rustup:read,exec\"]\nprivate_tmp = false\n").unwrap();
        assert_eq!(c.files.grants()[0].path, Path::new("~/.rustup"));
        assert!(!c.files.private_tmp);
    }

    /// What the baseline must never contain: the user's secrets, the daemon's state, or
    /// write outside what a tool must write (only device nodes are written through it).
    #[test]
    fn the_default_baseline_holds_no_secrets_and_writes_no_files() {
        let grants = Config::default().files.grants();
        for g in &grants {
            let p = g.path.to_string_lossy();
            for never in [
                "/root",
                "/home",
                "/etc/shadow",
                "/etc/gshadow",
                "/etc/ssh",
                "/etc/ssl/private",
                "/var/lib/rush",
                "/etc/rush",
            ] {
                assert!(!p.starts_with(never), "baseline entry {p} is under {never}");
            }
            for never in [
                "~/.ssh",
                "~/.gnupg",
                "~/.cargo/credentials",
                "~/.npmrc",
                "~/.gitconfig",
                "~/.git-credentials",
            ] {
                assert!(!p.starts_with(never), "baseline entry {p}");
            }
            assert!(
                g.path != Path::new("/") && g.path != Path::new("/etc") && g.path != Path::new("~"),
                "{p}"
            );
            let writes =
                g.ops.0 & (rush_proto::Ops::WRITE.0 | rush_proto::Ops::CREATE.0 | rush_proto::Ops::DELETE.0);
            assert!(writes == 0 || p.starts_with("/dev/"), "baseline entry {p} writes");
        }
    }

    #[test]
    fn enforcement_and_landlock_policy_parse() {
        let c =
            Config::parse("[files]\nenforcement = \"landlock\"\n[landlock]\non_narrow = \"kill\"\n").unwrap();
        assert_eq!(c.files.enforcement, EnforcementChoice::Landlock);
        assert_eq!(c.landlock.on_narrow, crate::adapters::landlock::OnChange::Kill);
        assert_eq!(c.landlock.on_widen, crate::adapters::landlock::OnChange::Restart);
        assert!(c.landlock.audit_denials);
        assert!(!Config::parse("[landlock]\naudit_denials = false\n").unwrap().landlock.audit_denials);
        assert!(Config::parse("[landlock]\non_narrow = \"ignore\"\n").is_err());
    }

    #[test]
    fn audit_retention_parses_and_zero_means_no_limit() {
        let d = Config::default().audit;
        assert_eq!(d.max_age(), Some(std::time::Duration::from_secs(90 * 86_400)));
        assert_eq!(d.max_records(), Some(1_000_000));
        let c = Config::parse("[audit]\nretention = \"0\"\nmax_records = 0\n").unwrap();
        assert_eq!((c.audit.max_age(), c.audit.max_records()), (None, None));
        let e = Config::parse("[audit]\nretention = \"soon\"\n").unwrap_err();
        assert!(e.contains("audit.retention"), "{e}");
    }

    #[test]
    fn coordination_backend_and_etcd_keys_are_checked_by_name() {
        let c = Config::parse(
            "[coordination]\nbackend = \"etcd\"\netcd_endpoints = [\"http://10.0.0.1:2379\", \"http://h2:2379\"]\n\
             etcd_lease_ttl = \"2s\"\nnode = \"ci-7\"\n",
        )
        .unwrap();
        assert_eq!(c.coordination.backend, CoordinationBackend::Etcd);
        assert_eq!(c.coordination.etcd_lease_ttl(), std::time::Duration::from_secs(2));
        assert_eq!(c.coordination.node_name(Path::new("/var/lib/rush")), "ci-7");
        assert!(Config::default().coordination.node_name(Path::new("/s")).ends_with(":/s"));
        for (text, key) in [
            ("backend = \"zookeeper\"", "coordination.backend"),
            ("etcd_lease_ttl = \"1s\"", "coordination.etcd_lease_ttl"),
            ("etcd_lease_ttl = \"soon\"", "coordination.etcd_lease_ttl"),
            ("etcd_prefix = \"rush\"", "coordination.etcd_prefix"),
            ("etcd_endpoints = [\"127.0.0.1:2379\"]", "coordination.etcd_endpoints"),
            ("etcd_endpoints = [\"http://127.0.0.1\"]", "coordination.etcd_endpoints"),
            ("etcd_endpoints = [\"https://127.0.0.1:2379\"]", "coordination.etcd_endpoints"),
            ("backend = \"etcd\"\netcd_endpoints = []", "coordination.etcd_endpoints"),
            ("etcd_cert_file = \"/c.pem\"", "etcd_key_file"),
            ("etcd_ca_file = \"/ca.pem\"", "coordination.etcd_endpoints"),
        ] {
            let e = Config::parse(&format!("[coordination]\n{text}\n")).unwrap_err();
            assert!(e.contains(key), "{text}: {e}");
        }
        let tls = Config::parse(
            "[coordination]\netcd_endpoints = [\"https://e:2379\"]\netcd_ca_file = \"/ca.pem\"\n\
             etcd_cert_file = \"/c.pem\"\netcd_key_file = \"/k.pem\"\n",
        );
        assert!(tls.is_ok(), "{tls:?}");
    }

    #[test]
    fn missing_default_file_is_fine_but_missing_explicit_file_is_not() {
        let p = Path::new("/nonexistent/rush.toml");
        assert!(Config::load(p, false).is_ok());
        assert!(Config::load(p, true).is_err());
    }
}
