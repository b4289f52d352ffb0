//! Trust levels: named presets of default tokens, budget, network policy and exec rule,
//! in a TOML policy file users edit (`policy.file` in config.toml; the built-in
//! [`DEFAULT_POLICY`] when that file does not exist). `rush agent spawn --trust LEVEL`
//! picks one; flags given at spawn override its budget and network policy and add tokens.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rush_proto::{Budget, FileGrant, NetPolicy};
use serde::Deserialize;

/// Written to the docs and used when no policy file exists.
pub const DEFAULT_POLICY: &str = r#"# Rush trust levels: `rush agent spawn --trust LEVEL`.
# Flags given at spawn override a level's budget (per resource) and network policy, and
# add to its tokens. Keys: description, budget, net, allow (PATH:OPS[:TTL] tokens, which
# make the agent file-confined), exec ("granted": any token with the exec op lets the
# agent run a file; "system": only the baseline tokens (/usr, /bin, ...) carry exec, so
# the agent cannot run anything it wrote or was handed).

[trust.low]
description = "untrusted code: no network, tight budget, runs only system programs"
budget = "cpu:10m,mem:1G,pids:128"
net = "deny"
exec = "system"

[trust.medium]
description = "a coding agent on a budget"
budget = "cpu:1h,mem:4G,pids:512,net:2G,api:1000,cost:$10"
net = "allow"
exec = "granted"

[trust.high]
description = "trusted tools: generous limits"
budget = "mem:16G,pids:4096"
net = "allow"
exec = "granted"
"#;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy file {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("policy file {path}: {message}")]
    Parse { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecRule {
    /// Any token with the exec op lets the agent run a file.
    #[default]
    Granted,
    /// Only baseline tokens carry exec: the agent runs system programs only.
    System,
}

/// One trust level, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct TrustLevel {
    pub name: String,
    pub description: String,
    pub budget: Budget,
    pub net: Option<NetPolicy>,
    pub allow: Vec<FileGrant>,
    pub exec: ExecRule,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    pub levels: BTreeMap<String, TrustLevel>,
    /// Where it came from, for messages.
    pub source: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    trust: BTreeMap<String, RawLevel>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLevel {
    #[serde(default)]
    description: String,
    budget: Option<String>,
    net: Option<String>,
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    exec: ExecRule,
}

impl Policy {
    /// The file at `path`, or the built-in policy if there is none.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Policy::parse(&text, &path.display().to_string())
                .map_err(|message| PolicyError::Parse { path: path.to_owned(), message }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(Policy::parse(DEFAULT_POLICY, "the built-in policy").expect("the built-in policy parses"))
            }
            Err(source) => Err(PolicyError::Read { path: path.to_owned(), source }),
        }
    }

    pub fn parse(text: &str, source: &str) -> Result<Policy, String> {
        let raw: RawPolicy = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut levels = BTreeMap::new();
        for (name, l) in raw.trust {
            let at = |key: &str, e: &dyn std::fmt::Display| format!("[trust.{name}] {key}: {e}");
            let budget = match &l.budget {
                Some(b) => b.parse::<Budget>().map_err(|e| at("budget", &e))?,
                None => Budget::default(),
            };
            let net = l.net.as_deref().map(str::parse::<NetPolicy>).transpose().map_err(|e| at("net", &e))?;
            let allow = l
                .allow
                .iter()
                .map(|g| g.parse::<FileGrant>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| at("allow", &e))?;
            let level = TrustLevel {
                name: name.clone(),
                description: l.description,
                budget,
                net,
                allow,
                exec: l.exec,
            };
            levels.insert(name, level);
        }
        Ok(Policy { levels, source: source.to_owned() })
    }

    /// The level called `name`, or an error listing those that exist.
    pub fn level(&self, name: &str) -> Result<&TrustLevel, String> {
        self.levels.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.levels.keys().map(String::as_str).collect();
            format!(
                "unknown trust level {name:?}: {} defines {}",
                self.source,
                if known.is_empty() { "none".to_owned() } else { known.join(", ") }
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_policy_has_three_levels() {
        let p = Policy::parse(DEFAULT_POLICY, "built-in").unwrap();
        assert_eq!(p.levels.keys().collect::<Vec<_>>(), ["high", "low", "medium"]);
        let low = p.level("low").unwrap();
        assert_eq!(low.exec, ExecRule::System);
        assert_eq!(low.net, Some(NetPolicy::Deny));
        assert_eq!(low.budget.pids, Some(128));
        let e = p.level("root").unwrap_err();
        assert!(e.contains("unknown trust level \"root\"") && e.contains("high, low, medium"), "{e}");
    }

    #[test]
    fn bad_levels_name_the_level_and_key() {
        for (text, needle) in [
            ("[trust.x]\nbudget = \"cpu:lots\"", "[trust.x] budget: invalid --budget"),
            ("[trust.x]\nnet = \"sideways\"", "[trust.x] net:"),
            ("[trust.x]\nallow = [\"relative:read\"]", "[trust.x] allow:"),
            ("[trust.x]\nexec = \"sometimes\"", "unknown variant"),
            ("[trust.x]\ncolour = \"red\"", "unknown field"),
        ] {
            let e = Policy::parse(text, "t").unwrap_err();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn a_missing_file_means_the_built_in_policy() {
        let dir = tempfile::tempdir().unwrap();
        let p = Policy::load(&dir.path().join("none.toml")).unwrap();
        assert!(p.levels.contains_key("medium"));
        std::fs::write(dir.path().join("p.toml"), "[trust.ci]\nbudget = \"cpu:2s\"\n").unwrap();
        let p = Policy::load(&dir.path().join("p.toml")).unwrap();
        assert_eq!(p.level("ci").unwrap().budget.cpu_ms, Some(2000));
    }
}
