//! The budgets service's own state: for each agent the registry knows, why it is frozen,
//! which cgroup counters were already audited, its cost meter and the spend last written
//! to the store. The agents service asks for it by name and never holds it; what turns
//! usage into a pause or an audit record is here too, so it is tested without a kernel.
//!
//! Lock order: the agents' registry, then this book (a change of pause reasons is written
//! into the agent's info under both, so two changes cannot land out of order).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use rush_proto::{AgentInfo, BudgetResource, PauseReason};

use super::{CgroupUsage, ResourceControl};
use crate::services::meter::{AgentMeter, Ledger, MeterConfig, MeterEvent, Upstream};
use crate::services::policy::Policy;

/// What budgets and trust levels need, chosen by the daemon at start.
pub struct Budgets {
    pub control: Arc<dyn ResourceControl>,
    pub policy: Policy,
    /// None: cost budgets are refused (unit tests).
    pub meter: Option<MeterSetup>,
    /// How many API endpoint addresses the kernel counts connects to; with none, an `api`
    /// budget would count nothing and is refused.
    pub api_endpoints: usize,
}

/// The metering proxy's config and where its events go.
pub struct MeterSetup {
    pub config: Arc<MeterConfig>,
    pub events: tokio::sync::mpsc::UnboundedSender<MeterEvent>,
}

/// Why an agent is frozen; each reason holds one freeze of its cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pause {
    pub operator: bool,
    pub cpu_budget: bool,
    /// Frozen while a request it made with `--freeze` waits for a person.
    pub approval: bool,
}

impl Pause {
    pub fn from_info(paused: &[PauseReason]) -> Pause {
        Pause {
            operator: paused.contains(&PauseReason::Operator),
            cpu_budget: paused.contains(&PauseReason::BudgetCpu),
            approval: paused.contains(&PauseReason::Approval),
        }
    }

    pub fn describe(self) -> Vec<PauseReason> {
        [
            (self.operator, PauseReason::Operator),
            (self.cpu_budget, PauseReason::BudgetCpu),
            (self.approval, PauseReason::Approval),
        ]
        .into_iter()
        .filter_map(|(on, r)| on.then_some(r))
        .collect()
    }

    /// The flag of one reason.
    fn flag(&mut self, reason: PauseReason) -> &mut bool {
        match reason {
            PauseReason::Operator => &mut self.operator,
            PauseReason::BudgetCpu => &mut self.cpu_budget,
            PauseReason::Approval => &mut self.approval,
        }
    }

    pub fn has(mut self, reason: PauseReason) -> bool {
        *self.flag(reason)
    }

    pub fn set(&mut self, reason: PauseReason, on: bool) {
        *self.flag(reason) = on;
    }

    /// How many freezes of the cgroup these reasons hold.
    pub fn freezes(self) -> usize {
        usize::from(self.operator) + usize::from(self.cpu_budget) + usize::from(self.approval)
    }
}

/// Counters already reported to the audit trail, so each OOM kill and refused fork is
/// recorded once. None until first read (an adopted agent's past is not re-reported).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Reported {
    oom_kills: Option<u64>,
    fork_refusals: Option<u64>,
}

/// OOM kills and refused forks counted since the last report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NewCounts {
    pub oom_kills: Option<u64>,
    pub fork_refusals: Option<u64>,
}

/// One agent's budget state.
pub struct AgentBudget {
    pause: Pause,
    reported: Reported,
    /// The metering proxy of an agent with a cost budget; dropping it stops it.
    meter: Option<AgentMeter>,
    /// The cost last written to the store (restored into the meter after a restart).
    cost_saved: u64,
}

impl AgentBudget {
    /// A new agent: not paused, nothing counted yet (every kill and refusal is new).
    pub fn spawned(meter: Option<AgentMeter>) -> AgentBudget {
        AgentBudget {
            pause: Pause::default(),
            reported: Reported { oom_kills: Some(0), fork_refusals: Some(0) },
            meter,
            cost_saved: 0,
        }
    }

    /// An agent re-adopted after a daemon restart: paused as stored, its counters' past
    /// not reported again, its meter holding what it had spent.
    pub fn adopted(info: &AgentInfo, meter: Option<AgentMeter>) -> AgentBudget {
        AgentBudget::restored(&info.paused, saved_cost(info), meter)
    }

    fn restored(paused: &[PauseReason], cost_saved: u64, meter: Option<AgentMeter>) -> AgentBudget {
        if let Some(m) = &meter {
            m.ledger.restore(cost_saved, 0);
        }
        AgentBudget { pause: Pause::from_info(paused), reported: Reported::default(), meter, cost_saved }
    }
}

/// The cost an agent had spent when it was last stored.
pub fn saved_cost(info: &AgentInfo) -> u64 {
    info.usage.iter().find(|u| u.resource == BudgetResource::Cost).map_or(0, |u| u.used)
}

pub struct BudgetBook {
    setup: Budgets,
    agents: Mutex<HashMap<String, AgentBudget>>,
}

impl BudgetBook {
    pub fn new(setup: Budgets) -> BudgetBook {
        BudgetBook { setup, agents: Mutex::default() }
    }

    fn agents(&self) -> MutexGuard<'_, HashMap<String, AgentBudget>> {
        self.agents.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn control(&self) -> &Arc<dyn ResourceControl> {
        &self.setup.control
    }

    pub fn policy(&self) -> &Policy {
        &self.setup.policy
    }

    pub fn api_endpoints(&self) -> usize {
        self.setup.api_endpoints
    }

    /// The metering proxy's setup; None where cost budgets are refused.
    pub fn meter_setup(&self) -> Option<&MeterSetup> {
        self.setup.meter.as_ref()
    }

    /// The model APIs the meter forwards to (none without a meter).
    pub fn meter_upstreams(&self) -> Vec<Upstream> {
        self.setup.meter.as_ref().map(|m| m.config.upstreams()).unwrap_or_default()
    }

    /// Takes over agent `name`'s budget state, replacing (and so stopping the meter of)
    /// a previous agent of that name.
    pub fn enter(&self, name: &str, budget: AgentBudget) {
        self.agents().insert(name.to_owned(), budget);
    }

    /// Drops an agent the registry forgot; its meter stops.
    pub fn forget(&self, name: &str) {
        self.agents().remove(name);
    }

    pub fn pause(&self, name: &str) -> Pause {
        self.agents().get(name).map_or_else(Pause::default, |b| b.pause)
    }

    /// Changes why `name` is frozen; returns the reasons now in force.
    pub fn set_pause(&self, name: &str, change: impl FnOnce(&mut Pause)) -> Vec<PauseReason> {
        let mut agents = self.agents();
        let Some(b) = agents.get_mut(name) else { return Vec::new() };
        change(&mut b.pause);
        b.pause.describe()
    }

    /// The spend ledger of `name`'s meter (agents with a cost budget).
    pub fn ledger(&self, name: &str) -> Option<Arc<Ledger>> {
        self.agents().get(name)?.meter.as_ref().map(|m| m.ledger.clone())
    }

    /// Whether `cost` differs from what the store holds; if so it is taken as stored (the
    /// caller writes it).
    pub fn cost_changed(&self, name: &str, cost: u64) -> bool {
        let mut agents = self.agents();
        let Some(b) = agents.get_mut(name) else { return false };
        let changed = b.cost_saved != cost;
        b.cost_saved = cost;
        changed
    }

    /// What of `usage` was not audited yet, taken as audited now. The budget poll and an
    /// exit watcher may both get here with the same counts: read and updated under one
    /// lock, each kill and refusal is reported once.
    pub fn new_counts(&self, name: &str, usage: &CgroupUsage) -> NewCounts {
        let mut agents = self.agents();
        let Some(b) = agents.get_mut(name) else { return NewCounts::default() };
        let mut new = NewCounts::default();
        if let Some(kills) = usage.oom_kills {
            new.oom_kills = b.reported.oom_kills.filter(|s| kills > *s).map(|seen| kills - seen);
            b.reported.oom_kills = Some(kills.max(b.reported.oom_kills.unwrap_or(0)));
        }
        if let Some(refused) = usage.fork_refusals {
            new.fork_refusals = b.reported.fork_refusals.filter(|s| refused > *s).map(|seen| refused - seen);
            b.reported.fork_refusals = Some(refused.max(b.reported.fork_refusals.unwrap_or(0)));
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book() -> BudgetBook {
        BudgetBook::new(Budgets {
            control: Arc::new(crate::services::budget::fake::FakeControl::default()),
            policy: Policy::default(),
            meter: None,
            api_endpoints: 0,
        })
    }

    fn counts(oom: u64, forks: u64) -> CgroupUsage {
        CgroupUsage { oom_kills: Some(oom), fork_refusals: Some(forks), ..Default::default() }
    }

    #[test]
    fn a_spawned_agents_kills_and_refusals_are_reported_once_each() {
        let b = book();
        b.enter("a", AgentBudget::spawned(None));
        assert_eq!(b.new_counts("a", &counts(0, 0)), NewCounts { oom_kills: None, fork_refusals: None });
        assert_eq!(
            b.new_counts("a", &counts(2, 5)),
            NewCounts { oom_kills: Some(2), fork_refusals: Some(5) }
        );
        // The exit watcher reads the same counters: nothing new.
        assert_eq!(b.new_counts("a", &counts(2, 5)), NewCounts::default());
        assert_eq!(b.new_counts("a", &counts(3, 5)), NewCounts { oom_kills: Some(1), fork_refusals: None });
        // A counter that went back (a new cgroup) reports nothing and does not lower the mark.
        assert_eq!(b.new_counts("a", &counts(1, 5)), NewCounts::default());
        assert_eq!(b.new_counts("a", &counts(4, 5)), NewCounts { oom_kills: Some(1), fork_refusals: None });
        assert_eq!(b.new_counts("unknown", &counts(9, 9)), NewCounts::default());
    }

    #[test]
    fn an_adopted_agents_past_is_not_reported_again_and_its_pause_and_spend_come_back() {
        let b = book();
        b.enter("a", AgentBudget::restored(&[PauseReason::BudgetCpu], 1234, None));
        assert_eq!(b.pause("a"), Pause { operator: false, cpu_budget: true, approval: false });
        assert_eq!(b.pause("a").freezes(), 1);
        assert_eq!(b.new_counts("a", &counts(7, 3)), NewCounts::default(), "the first read sets the mark");
        assert_eq!(b.new_counts("a", &counts(8, 3)), NewCounts { oom_kills: Some(1), fork_refusals: None });
        assert!(!b.cost_changed("a", 1234), "the stored spend is the restored one");
        assert!(b.cost_changed("a", 1300));
        assert!(!b.cost_changed("a", 1300));
    }

    #[test]
    fn pause_reasons_are_held_apart_and_forgotten_with_the_agent() {
        let b = book();
        b.enter("a", AgentBudget::spawned(None));
        assert_eq!(b.set_pause("a", |p| p.operator = true), vec![PauseReason::Operator]);
        assert_eq!(
            b.set_pause("a", |p| p.cpu_budget = true),
            vec![PauseReason::Operator, PauseReason::BudgetCpu]
        );
        assert_eq!(b.pause("a").freezes(), 2);
        // A new agent of the same name starts unpaused.
        b.enter("a", AgentBudget::spawned(None));
        assert_eq!(b.pause("a"), Pause::default());
        b.forget("a");
        assert_eq!(b.set_pause("a", |p| p.operator = true), Vec::<PauseReason>::new());
    }
}
