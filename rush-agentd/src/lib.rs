//! rush-agentd: the root daemon. Each module is one domain:
//! - [`bpf`] — loads, pins and owns the kernel programs and maps; decodes their events
//! - [`cgroup`] — one cgroup per agent, on pure v2 or hybrid hosts
//! - [`budget`] — resource budgets: cgroup limits and counters, usage, actions at a limit
//! - [`agent`] — spawning, tracking and killing agents
//! - [`session`] — sessions: workspaces with checkpoints, rollbacks and timelines
//! - [`snapshot`] — time travel: workspace checkpoints (btrfs, git) and process images (CRIU)
//! - [`spawn`] — clone3 into the agent's cgroup, then exec
//! - [`harden`] — namespaces, capabilities and the seccomp filter of every agent
//! - [`tokens`] — capability tokens and their kernel grant entries
//! - [`baseline`] — what every file-confined agent gets: the baseline, its private TMPDIR
//! - [`landlock`] — the Landlock file backend: tokens as a ruleset applied before exec
//! - [`mappings`] — revokes and expiries reaching files mapped in memory
//! - [`audit`] — the audit trail
//! - [`events`] — the typed event bus every service publishes to
//! - [`audit_netlink`] — the kernel audit records of agents (seccomp refusals, Landlock denials)
//! - [`api`] — the Unix-socket NDJSON server and caller identification
//! - [`policy`] — trust levels (presets of tokens, budget, network, exec rule)
//! - [`probe`] — what this kernel supports (`doctor`)
//! - [`meter`] — cost budgets: the metering proxy for model API calls
//! - [`config`] — /etc/rush/config.toml
//! - [`daemon`] — wires them together and runs until SIGTERM/SIGINT

pub mod agent;
pub mod api;
pub mod audit;
pub mod audit_netlink;
pub mod baseline;
pub mod bpf;
pub mod budget;
pub mod cgroup;
pub mod condition;
pub mod config;
pub mod core;
pub mod daemon;
pub mod events;
pub mod harden;
pub mod landlock;
pub mod mappings;
pub mod meter;
pub mod policy;
pub mod probe;
pub mod session;
pub mod snapshot;
pub mod spawn;
pub mod store;
pub mod tokens;
