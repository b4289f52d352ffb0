//! `[gating]` in config.toml: which rules file, the default trust level, and what counts
//! as an outcome worth a guardrail.

use std::path::PathBuf;

use serde::Deserialize;

/// `[gating]` in config.toml.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GatingConfig {
    /// The rules, weights and thresholds (TOML, the shipped file's format); None: the
    /// shipped defaults. Every rule's `match` / `not_match` examples are checked when
    /// the daemon starts: a rule failing its own examples stops it, naming the example.
    pub rules: Option<PathBuf>,
    /// The trust level an operator's commands are judged at unless they name one; None:
    /// the rules file's `default_trust`.
    pub default_trust: Option<String>,
    /// Whether outcomes (rollbacks, rejections, denial storms) teach guardrails.
    pub learn: bool,
    /// A rollback this soon after a command that failed makes it a guardrail (seconds).
    pub rollback_after_failure_secs: u64,
    /// A rollback this soon after any command makes it a guardrail (seconds).
    pub rollback_after_any_secs: u64,
    /// This many kernel denials of one agent ...
    pub denial_storm: u32,
    /// ... within this many seconds, right after a command it ran (within
    /// `rollback_after_any_secs`), make that command a guardrail.
    pub denial_storm_secs: u64,
}

impl Default for GatingConfig {
    fn default() -> Self {
        GatingConfig {
            rules: None,
            default_trust: None,
            learn: true,
            rollback_after_failure_secs: 300,
            rollback_after_any_secs: 60,
            denial_storm: 20,
            denial_storm_secs: 10,
        }
    }
}

impl GatingConfig {
    /// Whether the numbers make sense; Err names the key.
    pub fn check(&self) -> Result<(), String> {
        for (key, v) in [
            ("gating.rollback_after_failure_secs", self.rollback_after_failure_secs),
            ("gating.rollback_after_any_secs", self.rollback_after_any_secs),
            ("gating.denial_storm_secs", self.denial_storm_secs),
        ] {
            if !(1..=86_400).contains(&v) {
                return Err(format!("{key}: {v} is not 1-86400"));
            }
        }
        if self.denial_storm < 2 {
            return Err(format!(
                "gating.denial_storm: {} is under 2 (one denial is not a storm)",
                self.denial_storm
            ));
        }
        Ok(())
    }

    /// The rules in effect: the file's, or the shipped ones.
    pub fn policy(&self) -> Result<rush_gate::Policy, String> {
        self.check()?;
        match &self.rules {
            None => Ok(rush_gate::Policy::shipped()),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("gating.rules: {}: {e}", path.display()))?;
                rush_gate::Policy::from_toml(&text)
                    .map_err(|e| format!("gating.rules: {}: {e}", path.display()))
            }
        }
    }
}
