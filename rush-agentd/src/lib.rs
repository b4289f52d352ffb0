//! rush-agentd: the root daemon, in four layers; a room uses its own layer or lower ones,
//! never higher, and there are no import loops (`cargo xtask layers` checks both):
//!
//! - [`core`] — identifiers, file keys, clocks, errors, /proc facts; imports nothing of the crate
//! - [`adapters`] — the kernel, the database, the filesystem:
//!   - [`adapters::bpf`] — loads, pins and owns the kernel programs and maps; decodes their events
//!   - [`adapters::cgroup`] — one cgroup per agent, on pure v2 or hybrid hosts
//!   - [`adapters::spawn`] — clone3 into the agent's cgroup, then exec
//!   - [`adapters::harden`] — namespaces, capabilities and the seccomp filter of every agent
//!   - [`adapters::landlock`] — the Landlock file backend: tokens as a ruleset applied before exec
//!   - [`adapters::audit_netlink`] — the kernel's audit records of agents (seccomp, Landlock)
//!   - [`adapters::mappings`] — which processes map which files (revokes reaching mappings)
//!   - [`adapters::condition`] — worktrees of conditional tokens: copy, promote, discard
//!   - [`adapters::store`] — the state database, one file per group of tables
//!   - [`adapters::snapshot`] — workspace snapshots (btrfs, git) and process images (CRIU)
//! - [`services`] — the domains, each owning its state:
//!   - [`services::agent`] — agents: lifecycle, capabilities, budgets, persistence, processes
//!   - [`services::session`] — sessions: checkpoints, rollbacks, timelines, state
//!   - [`services::tokens`] — capability tokens and their kernel grant entries
//!   - [`services::budget`] — resource budgets: cgroup limits and counters, usage
//!   - [`services::meter`] — cost budgets: the metering proxy for model API calls
//!   - [`services::policy`] — trust levels (presets of tokens, budget, network, exec rule)
//!   - [`services::baseline`] — what every file-confined agent gets; private TMPDIRs
//!   - [`services::audit`] — the audit trail
//!   - [`services::events`] — the typed event bus every service publishes to
//! - the edge: [`api`] (the socket, principals, dispatch, wire errors), [`config`],
//!   [`probe`] (`doctor`), [`handles`] (what services need of each other, implemented),
//!   [`daemon`] (wires them together and runs until SIGTERM/SIGINT)
//!
//! A new domain (coordination, approvals, gating, workspaces) is a new folder under
//! `services/` with its own error type (`service_error!`) and, for what it needs of other
//! services, a handle trait of its own; its requests are dispatched in `api.rs`, its
//! handles implemented in `handles.rs` and its construction in `daemon.rs`.

pub mod adapters;
pub mod api;
pub mod config;
pub mod core;
pub mod daemon;
pub mod handles;
pub mod probe;
pub mod services;
