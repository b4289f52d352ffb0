//! What the gate remembers between a command and its outcome: the commands run recently
//! (in memory: a lesson is about what just happened, and a restart between a command
//! and its rollback loses only that lesson) and each agent's recent kernel denials.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Mutex;

use super::GatingConfig;

/// Commands remembered at most (oldest forgotten first).
const REMEMBERED: usize = 1024;

#[derive(Debug, Clone)]
pub struct Execution {
    /// Its `command_run` audit record.
    pub audit_seq: u64,
    pub pattern: String,
    pub agent: Option<String>,
    pub session: Option<String>,
    pub repository: Option<PathBuf>,
    pub exit_code: Option<i32>,
    pub at_ms: u64,
    pub who: String,
}

pub struct Learning {
    on: bool,
    after_failure_ms: u64,
    after_any_ms: u64,
    storm: u32,
    storm_ms: u64,
    recent: Mutex<VecDeque<Execution>>,
    /// Per agent: the times of its denials within the storm window, and the executions a
    /// storm already taught (one lesson per command run).
    denials: Mutex<HashMap<String, (VecDeque<u64>, u64)>>,
}

impl Learning {
    pub fn new(c: &GatingConfig) -> Learning {
        Learning {
            on: c.learn,
            after_failure_ms: c.rollback_after_failure_secs * 1000,
            after_any_ms: c.rollback_after_any_secs * 1000,
            storm: c.denial_storm,
            storm_ms: c.denial_storm_secs * 1000,
            recent: Mutex::new(VecDeque::new()),
            denials: Mutex::default(),
        }
    }

    pub fn ran(&self, ex: Execution) {
        if !self.on {
            return;
        }
        let mut r = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if r.len() == REMEMBERED {
            r.pop_front();
        }
        r.push_back(ex);
    }

    /// The last command run in `session` before a rollback at `now`, if the rollback
    /// followed it closely enough to be about it: within `after_any` of it, or within
    /// `after_failure` of it failing. Taken: one rollback teaches about it once.
    pub fn before_rollback(&self, session: &str, now: u64) -> Option<Execution> {
        if !self.on {
            return None;
        }
        let mut r = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let i = r.iter().rposition(|e| e.session.as_deref() == Some(session))?;
        let e = &r[i];
        let age = now.saturating_sub(e.at_ms);
        let failed = e.exit_code != Some(0);
        if age <= self.after_any_ms || (failed && age <= self.after_failure_ms) { r.remove(i) } else { None }
    }

    /// A denial of `agent` at `now`: when it completes a storm, the last command the agent
    /// ran (recently enough) and the denials counted.
    pub fn denial(&self, agent: &str, now: u64) -> Option<(Execution, u32)> {
        if !self.on {
            return None;
        }
        let mut d = self.denials.lock().unwrap_or_else(|p| p.into_inner());
        let (times, taught) = d.entry(agent.to_owned()).or_default();
        times.push_back(now);
        while times.front().is_some_and(|t| now.saturating_sub(*t) > self.storm_ms) {
            times.pop_front();
        }
        if (times.len() as u32) < self.storm {
            return None;
        }
        let count = times.len() as u32;
        let r = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let e = r.iter().rev().find(|e| e.agent.as_deref() == Some(agent))?;
        if now.saturating_sub(e.at_ms) > self.after_any_ms || *taught == e.audit_seq {
            return None;
        }
        *taught = e.audit_seq;
        times.clear();
        Some((e.clone(), count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(seq: u64, session: &str, exit: Option<i32>, at_ms: u64) -> Execution {
        Execution {
            audit_seq: seq,
            pattern: format!("cmd{seq}"),
            agent: Some("a".into()),
            session: Some(session.into()),
            repository: None,
            exit_code: exit,
            at_ms,
            who: "a".into(),
        }
    }

    #[test]
    fn a_rollback_teaches_about_the_last_command_of_its_session_when_close_enough() {
        let l = Learning::new(&GatingConfig::default());
        l.ran(ex(1, "s", Some(0), 0));
        l.ran(ex(2, "t", Some(0), 0));
        // 61 s after a command that succeeded: not about it.
        assert!(l.before_rollback("s", 61_000).is_none());
        l.ran(ex(3, "s", Some(1), 100_000));
        // 200 s after one that failed: about it, once.
        assert_eq!(l.before_rollback("s", 300_000).unwrap().audit_seq, 3);
        assert!(l.before_rollback("s", 300_000).is_none());
        // 30 s after one that succeeded: about it.
        assert_eq!(l.before_rollback("t", 30_000).unwrap().audit_seq, 2);
    }

    #[test]
    fn a_denial_storm_teaches_once_per_command() {
        let l = Learning::new(&GatingConfig::default());
        l.ran(ex(7, "s", Some(0), 1_000));
        let mut taught = 0;
        for i in 0..50 {
            if l.denial("a", 2_000 + i * 10).is_some() {
                taught += 1;
            }
        }
        assert_eq!(taught, 1, "one storm, one lesson");
        // Denials spread out are no storm.
        let l = Learning::new(&GatingConfig::default());
        l.ran(ex(8, "s", Some(0), 0));
        assert!((0..30).all(|i| l.denial("a", i * 1_000).is_none()));
        // No command run: nothing to learn.
        let l = Learning::new(&GatingConfig::default());
        assert!((0..30).all(|i| l.denial("b", i).is_none()));
    }
}
