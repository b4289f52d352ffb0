//! Resource budgets: the cgroup controller knobs (memory, pids, cpu rate) and counters
//! (cpu time, OOM kills, refused forks) behind one trait, and the rules that turn usage
//! into `rush agent status` lines and into actions at a limit.
//!
//! The knobs go through cgroups-rs (0.3: newer releases pull in zbus for systemd, which
//! this daemon does not need). cgroups-rs fixes its v2 root at /sys/fs/cgroup and treats a
//! host as either v1 or v2, so hybrid hosts (v2 identity at /sys/fs/cgroup/unified,
//! controllers in v1 hierarchies) use its V1 hierarchy for the agent's v1 directories, and
//! pure v2 hosts its V2 hierarchy for the agent's v2 directory. Two counters cgroups-rs
//! does not read on v2 (`memory.events`' `oom_kill`; it unwraps values that may be absent
//! in `memory_stat`) are read here directly.

mod book;

use std::path::{Path, PathBuf};

use cgroups_rs::{Cgroup, MaxValue, cpu::CpuController, memory::MemController};
use cgroups_rs::{hierarchies, pid::PidController};
use rush_proto::{Budget, BudgetResource, BudgetUnit, BudgetUsage};

use crate::adapters::cgroup::{AgentCgroup, CgroupLayout, CgroupMode};
pub use book::{AgentBudget, BudgetBook, Budgets, MeterSetup, Pause};

#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error("{resource} budget: {why}")]
    Unavailable { resource: &'static str, why: String },
    #[error("setting the {resource} limit of cgroup {path}: {message}")]
    Apply { resource: &'static str, path: String, message: String },
}

/// What the cgroup controllers have counted for one agent; None where this machine can't tell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupUsage {
    pub cpu_ns: Option<u64>,
    pub mem_bytes: Option<u64>,
    pub pids: Option<u64>,
    pub oom_kills: Option<u64>,
    pub fork_refusals: Option<u64>,
}

/// The cgroup controllers of agents. Implemented over cgroups-rs, and by a fake in tests.
pub trait ResourceControl: Send + Sync + 'static {
    /// Sets the kernel-enforced limits the budget has (memory, pids, cpu rate) and lifts
    /// those it does not. Must complete before the agent's first process runs.
    fn apply(&self, cg: &AgentCgroup, budget: &Budget) -> Result<(), BudgetError>;
    fn usage(&self, cg: &AgentCgroup) -> CgroupUsage;
    /// Budget resources this machine cannot enforce, and why (`rush doctor`, and spawns
    /// asking for them are refused).
    fn unavailable(&self) -> Vec<(&'static str, String)>;
}

/// Does the budget set a limit on `resource` (one of [`rush_proto::budget::BUDGET_KEYS`])?
pub fn sets(budget: &Budget, resource: &str) -> bool {
    match resource {
        "cpu" => budget.cpu_ms.is_some(),
        "cpu-rate" => budget.cpu_rate_pct.is_some(),
        "mem" => budget.mem_bytes.is_some(),
        "pids" => budget.pids.is_some(),
        "net" => budget.net_bytes.is_some(),
        "api" => budget.api_calls.is_some(),
        "cost" => budget.cost_micro_usd.is_some(),
        _ => false,
    }
}

/// Budget resources enforced through cgroup controllers, with the controller each needs.
const CONTROLLED: [(&str, &str); 4] =
    [("cpu", "cpu"), ("cpu-rate", "cpu"), ("mem", "memory"), ("pids", "pids")];

pub struct CgroupsRs {
    layout: CgroupLayout,
    /// cgroups-rs's v1 hierarchies, from one read of /proc/self/mountinfo (a handle is
    /// made per agent on every budget poll; the mounts are fixed like `layout`).
    v1: Option<hierarchies::V1>,
}

impl CgroupsRs {
    pub fn new(layout: CgroupLayout) -> CgroupsRs {
        let v1 = (layout.mode == CgroupMode::Hybrid).then(hierarchies::V1::new);
        CgroupsRs { layout, v1 }
    }

    /// A cgroups-rs handle on the agent's controller directories.
    fn handle(&self, cg: &AgentCgroup) -> Result<Cgroup, String> {
        match self.layout.mode {
            CgroupMode::Unified => {
                let rel = cg
                    .v2_dir
                    .strip_prefix(hierarchies::UNIFIED_MOUNTPOINT)
                    .map_err(|_| "cgroups-rs needs the v2 hierarchy at /sys/fs/cgroup".to_owned())?;
                Ok(Cgroup::load(Box::new(hierarchies::V2::new()), rel))
            }
            CgroupMode::Hybrid => {
                // The same relative path in every v1 hierarchy (see FsCgroups).
                let (rel, _) = self
                    .layout
                    .v1
                    .iter()
                    .find_map(|(_, root)| {
                        cg.v1_dirs
                            .iter()
                            .find_map(|d| d.strip_prefix(root).ok().map(|r| (r.to_owned(), root)))
                    })
                    .ok_or_else(|| "the agent has no v1 controller directories".to_owned())?;
                Ok(Cgroup::load(Box::new(self.v1.clone().unwrap_or_default()), rel))
            }
        }
    }

    fn has_controller(&self, controller: &str) -> bool {
        match self.layout.mode {
            CgroupMode::Unified => {
                self.layout.v2_root == Path::new(hierarchies::UNIFIED_MOUNTPOINT)
                    && self.layout.v2_controllers.iter().any(|c| c == controller)
            }
            CgroupMode::Hybrid => {
                let v1 = if controller == "cpu" { ["cpu", "cpuacct"].as_slice() } else { &[controller] };
                v1.iter().all(|c| self.layout.v1.iter().any(|(have, _)| have == c))
            }
        }
    }

    /// The agent's directory for a v1 controller, or its v2 directory.
    fn dir(&self, cg: &AgentCgroup, v1_controller: &str) -> Option<PathBuf> {
        match self.layout.mode {
            CgroupMode::Unified => Some(cg.v2_dir.clone()),
            CgroupMode::Hybrid => {
                let (_, root) = self.layout.v1.iter().find(|(c, _)| c == v1_controller)?;
                cg.v1_dirs.iter().find(|d| d.starts_with(root)).cloned()
            }
        }
    }
}

fn apply_err(resource: &'static str, cg: &Cgroup) -> impl FnOnce(cgroups_rs::error::Error) -> BudgetError {
    let path = cg.path().to_owned();
    move |e| BudgetError::Apply { resource, path, message: error_text(&e) }
}

fn error_text(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s += &format!(": {inner}");
        src = inner.source();
    }
    s
}

/// `key value` lines (cpu.stat, memory.events, memory.oom_control): the value of `key`.
pub fn flat_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

impl ResourceControl for CgroupsRs {
    fn apply(&self, cg: &AgentCgroup, budget: &Budget) -> Result<(), BudgetError> {
        if let Some((resource, why)) = self.unavailable().into_iter().find(|(r, _)| sets(budget, r)) {
            return Err(BudgetError::Unavailable { resource, why });
        }
        let unlimited = || self.unavailable().is_empty();
        let handle = match self.handle(cg) {
            Ok(h) => h,
            // Nothing to set, and nothing this machine could set.
            Err(_) if budget.is_empty() && !unlimited() => return Ok(()),
            Err(why) => return Err(BudgetError::Unavailable { resource: "cgroup", why }),
        };
        if let Some(mem) = handle.controller_of::<MemController>() {
            let limit = budget.mem_bytes.map_or(-1, |b| b.min(i64::MAX as u64) as i64);
            mem.set_limit(limit).map_err(apply_err("mem", &handle))?;
            // No swapping past the limit: a memory budget is a real one. Swap accounting
            // may be off (no memsw/swap file): then there is no swap to account either.
            let swap = if budget.mem_bytes.is_some() { if handle.v2() { 0 } else { limit } } else { -1 };
            let _ = mem.set_memswap_limit(swap);
        }
        if let Some(pids) = handle.controller_of::<PidController>() {
            let max = budget.pids.map_or(MaxValue::Max, |n| MaxValue::Value(n.min(i64::MAX as u64) as i64));
            pids.set_pid_max(max).map_err(apply_err("pids", &handle))?;
        }
        if let Some(cpu) = handle.controller_of::<CpuController>() {
            const PERIOD_US: u64 = 100_000;
            let quota = budget.cpu_rate_pct.map_or(-1, |pct| i64::from(pct) * PERIOD_US as i64 / 100);
            cpu.set_cfs_quota_and_period(Some(quota), Some(PERIOD_US))
                .map_err(apply_err("cpu-rate", &handle))?;
        }
        Ok(())
    }

    fn usage(&self, cg: &AgentCgroup) -> CgroupUsage {
        // The counted files alone, read directly: cgroups-rs's stat getters read every file
        // of a controller (some 45 on a hybrid host), and this runs every budget round and
        // on an exiting agent's way to its caller hearing of the exit. A file that is not
        // there (a controller this machine lacks) counts as unknown.
        let read = |controller: &str, file: &str| {
            self.dir(cg, controller).and_then(|d| std::fs::read_to_string(d.join(file)).ok())
        };
        let number =
            |controller: &str, file: &str| read(controller, file).and_then(|t| t.trim().parse().ok());
        let v2 = self.layout.mode == CgroupMode::Unified;
        CgroupUsage {
            cpu_ns: if v2 {
                read("cpu", "cpu.stat").and_then(|t| flat_keyed(&t, "usage_usec")).map(|us| us * 1000)
            } else {
                number("cpuacct", "cpuacct.usage")
            },
            mem_bytes: number("memory", if v2 { "memory.current" } else { "memory.usage_in_bytes" }),
            oom_kills: read("memory", if v2 { "memory.events" } else { "memory.oom_control" })
                .and_then(|t| flat_keyed(&t, "oom_kill")),
            pids: number("pids", "pids.current"),
            fork_refusals: read("pids", "pids.events").and_then(|t| flat_keyed(&t, "max")),
        }
    }

    fn unavailable(&self) -> Vec<(&'static str, String)> {
        CONTROLLED
            .iter()
            .filter(|(_, controller)| !self.has_controller(controller))
            .map(|(resource, controller)| {
                let why = match self.layout.mode {
                    CgroupMode::Unified if self.layout.v2_root != Path::new(hierarchies::UNIFIED_MOUNTPOINT) => {
                        format!(
                            "the cgroup v2 hierarchy is at {}, not /sys/fs/cgroup",
                            self.layout.v2_root.display()
                        )
                    }
                    CgroupMode::Unified => {
                        format!("the cgroup v2 root does not offer the {controller} controller")
                    }
                    CgroupMode::Hybrid => format!(
                        "no v1 {controller} hierarchy is mounted or agents do not join it (config cgroup.v1_controllers)"
                    ),
                };
                (*resource, why)
            })
            .collect()
    }
}

/// Everything counted for one agent, from the cgroup, the kernel maps and the meter.
#[derive(Debug, Clone, Copy, Default)]
pub struct Observed {
    pub cgroup: CgroupUsage,
    /// Bytes sent plus received (the kernel's byte counter), if it counts this agent.
    pub net_bytes: Option<u64>,
    pub api_calls: Option<u64>,
    /// Packets dropped and connects refused at the budget: the kernel refuses what would
    /// cross a limit without counting it, so usage alone stays just under the limit.
    pub net_dropped: u64,
    pub api_refused: u64,
    pub cost_micro_usd: Option<u64>,
}

/// Milliseconds of CPU time used, if known.
pub fn cpu_ms(o: &Observed) -> Option<u64> {
    o.cgroup.cpu_ns.map(|ns| ns / 1_000_000)
}

/// Has the agent used up its CPU-time budget?
pub fn cpu_spent(budget: &Budget, o: &Observed) -> bool {
    matches!((budget.cpu_ms, cpu_ms(o)), (Some(limit), Some(used)) if used >= limit)
}

/// `rush agent status` lines: every limited resource, and unlimited ones that are counted.
pub fn usage_lines(budget: &Budget, o: &Observed) -> Vec<BudgetUsage> {
    let line = |resource: BudgetResource, unit, used: Option<u64>, limit: Option<u64>, at_limit: &str| {
        if limit.is_none() && used.is_none() {
            return None;
        }
        let used = used.unwrap_or(0);
        Some(BudgetUsage {
            resource,
            unit,
            used,
            limit,
            at_limit: at_limit.to_owned(),
            exceeded: limit.is_some_and(|l| used >= l),
        })
    };
    [
        line(
            BudgetResource::Cpu,
            BudgetUnit::Millis,
            cpu_ms(o),
            budget.cpu_ms,
            "frozen until resumed with a raised budget",
        ),
        line(
            BudgetResource::CpuRate,
            BudgetUnit::Percent,
            budget.cpu_rate_pct.map(|_| 0),
            budget.cpu_rate_pct.map(u64::from),
            "throttled (cpu.max)",
        )
        .map(|mut l| {
            // A rate is a ceiling, never "used up".
            l.exceeded = false;
            l
        }),
        line(
            BudgetResource::Mem,
            BudgetUnit::Bytes,
            o.cgroup.mem_bytes,
            budget.mem_bytes,
            "reclaim, then OOM kill inside the agent",
        ),
        line(
            BudgetResource::Pids,
            BudgetUnit::Count,
            o.cgroup.pids,
            budget.pids,
            "fork and clone fail (EAGAIN)",
        ),
        line(BudgetResource::Net, BudgetUnit::Bytes, o.net_bytes, budget.net_bytes, "packets dropped"),
        line(
            BudgetResource::Api,
            BudgetUnit::Count,
            o.api_calls,
            budget.api_calls,
            "connects to the API refused (EPERM)",
        ),
        line(
            BudgetResource::Cost,
            BudgetUnit::MicroUsd,
            o.cost_micro_usd,
            budget.cost_micro_usd,
            "calls refused by the metering proxy (HTTP 402)",
        ),
    ]
    .into_iter()
    .flatten()
    .map(|mut l| {
        match l.resource {
            // Ceilings the kernel holds: being at one is not a breach.
            BudgetResource::Mem | BudgetResource::Pids => l.exceeded = false,
            BudgetResource::Net => l.exceeded |= l.limit.is_some() && o.net_dropped > 0,
            BudgetResource::Api => l.exceeded |= l.limit.is_some() && o.api_refused > 0,
            _ => {}
        }
        l
    })
    .collect()
}

/// For unit tests: limits recorded, usage set by the test.
#[cfg(test)]
pub mod fake {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    pub struct FakeControl {
        pub applied: Mutex<HashMap<String, Budget>>,
        pub usage: Mutex<HashMap<String, CgroupUsage>>,
        pub missing: Vec<(&'static str, String)>,
    }

    impl ResourceControl for FakeControl {
        fn apply(&self, cg: &AgentCgroup, budget: &Budget) -> Result<(), BudgetError> {
            if let Some((resource, why)) = self.missing.iter().find(|(r, _)| sets(budget, r)) {
                return Err(BudgetError::Unavailable { resource, why: why.clone() });
            }
            self.applied.lock().unwrap().insert(cg.name.clone(), *budget);
            Ok(())
        }
        fn usage(&self, cg: &AgentCgroup) -> CgroupUsage {
            self.usage.lock().unwrap().get(&cg.name).copied().unwrap_or_default()
        }
        fn unavailable(&self) -> Vec<(&'static str, String)> {
            self.missing.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(cpu_ms: u64) -> Observed {
        Observed {
            cgroup: CgroupUsage {
                cpu_ns: Some(cpu_ms * 1_000_000),
                mem_bytes: Some(1 << 20),
                pids: Some(3),
                ..Default::default()
            },
            net_bytes: Some(5000),
            api_calls: Some(10),
            cost_micro_usd: None,
            ..Default::default()
        }
    }

    #[test]
    fn cpu_budget_is_spent_at_the_limit() {
        let b: Budget = "cpu:2s".parse().unwrap();
        assert!(!cpu_spent(&b, &observed(1999)));
        assert!(cpu_spent(&b, &observed(2000)));
        assert!(!cpu_spent(&Budget::default(), &observed(99_999)));
    }

    #[test]
    fn status_lines_show_limits_and_counted_usage() {
        let b: Budget = "cpu:2s,api:10,cost:$1,mem:64M".parse().unwrap();
        let lines = usage_lines(&b, &observed(2500));
        let find = |r: &str| {
            lines.iter().find(|l| l.resource.as_str() == r).unwrap_or_else(|| panic!("{r} missing"))
        };
        assert!(find("cpu").exceeded);
        assert_eq!(find("cpu").used, 2500);
        assert!(find("api").exceeded, "10 of 10 calls used");
        assert_eq!(find("cost").used, 0);
        assert!(!find("cost").exceeded);
        assert!(!find("mem").exceeded);
        assert_eq!(find("mem").percent().map(|p| p.round()), Some(2.0));
        // Unlimited but counted: shown without a limit.
        assert_eq!(find("net").limit, None);
        assert_eq!(find("pids").limit, None);
        assert!(!lines.iter().any(|l| l.resource == BudgetResource::CpuRate));
    }

    #[test]
    fn flat_keyed_files() {
        let stat = "usage_usec 1234\nuser_usec 1000\nsystem_usec 234\n";
        assert_eq!(flat_keyed(stat, "usage_usec"), Some(1234));
        assert_eq!(flat_keyed("low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\n", "oom_kill"), Some(2));
        assert_eq!(flat_keyed("oom_kill_disable 0\nunder_oom 0\n", "oom_kill"), None);
    }
}
