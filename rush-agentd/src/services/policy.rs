//! Trust levels: named presets of default tokens, budget, network policy and exec rule,
//! in a TOML policy file users edit (`policy.file` in config.toml; the built-in
//! [`DEFAULT_POLICY`] when that file does not exist). `rush agent spawn --trust LEVEL`
//! picks one; flags given at spawn override its budget and network policy and add tokens.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rush_proto::{Budget, FileGrant, Hardlinks, NetPolicy};
use serde::Deserialize;

/// Written to the docs and used when no policy file exists.
pub const DEFAULT_POLICY: &str = r#"# Rush trust levels: `rush agent spawn --trust LEVEL`.
# Flags given at spawn override a level's budget (per resource) and network policy, and
# add to its tokens. Keys: description, budget, net, allow (PATH:OPS[:TTL] tokens, which
# make the agent file-confined), exec ("granted": any token with the exec op lets the
# agent run a file; "system": only the baseline tokens (/usr, /bin, ...) carry exec, so
# the agent cannot run anything it wrote or was handed), hardlinks ("follow",
# "refuse-write" or "refuse": what a grant on a directory gives to a regular file with
# more than one hard link; see `rush agent spawn --help`; --hardlinks overrides it),
# and the process hardening of config.toml's [hardening], per level: drop_capabilities
# (the capabilities its agents can never hold; [] drops none), seccomp (true/false: the
# system call filter `rush doctor` describes) and root_agents (false: refuse to run its
# agents as root; `rush agent spawn --user USER` runs them as USER).

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
    /// None: `follow`, unless the spawn says otherwise.
    pub hardlinks: Option<Hardlinks>,
    /// What it overrides of the daemon's `[hardening]`.
    pub hardening: HardeningOverride,
}

/// A trust level's hardening keys; None keeps the daemon's `[hardening]` value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HardeningOverride {
    pub drop_capabilities: Option<Vec<caps::Capability>>,
    pub seccomp: Option<bool>,
    pub root_agents: Option<bool>,
}

impl HardeningOverride {
    pub fn apply(
        &self,
        base: &crate::adapters::harden::HardeningPolicy,
    ) -> crate::adapters::harden::HardeningPolicy {
        crate::adapters::harden::HardeningPolicy {
            drop: self.drop_capabilities.clone().unwrap_or_else(|| base.drop.clone()),
            seccomp: self.seccomp.unwrap_or(base.seccomp),
            root_agents: self.root_agents.unwrap_or(base.root_agents),
        }
    }
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
    hardlinks: Option<String>,
    drop_capabilities: Option<Vec<String>>,
    seccomp: Option<bool>,
    root_agents: Option<bool>,
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
            let hardlinks = l
                .hardlinks
                .as_deref()
                .map(str::parse::<Hardlinks>)
                .transpose()
                .map_err(|e| at("hardlinks", &e))?;
            let drop_capabilities = l
                .drop_capabilities
                .as_deref()
                .map(crate::adapters::harden::parse_capabilities)
                .transpose()
                .map_err(|e| at("drop_capabilities", &e))?;
            let hardening =
                HardeningOverride { drop_capabilities, seccomp: l.seccomp, root_agents: l.root_agents };
            let level = TrustLevel {
                name: name.clone(),
                description: l.description,
                budget,
                net,
                allow,
                exec: l.exec,
                hardlinks,
                hardening,
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
            (
                "[trust.x]\nhardlinks = \"sometimes\"",
                "[trust.x] hardlinks: invalid --hardlinks \"sometimes\"",
            ),
            ("[trust.x]\nhardlinks = 2", "expected a string"),
            ("[trust.x]\ncolour = \"red\"", "unknown field"),
        ] {
            let e = Policy::parse(text, "t").unwrap_err();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn hardening_per_level_overrides_the_daemon_and_names_bad_keys() {
        let p = Policy::parse(
            "[trust.tools]\ndrop_capabilities = [\"SYS_ADMIN\", \"CAP_BPF\"]\nseccomp = false\nroot_agents = false\n\
             [trust.plain]\n",
            "t",
        )
        .unwrap();
        let base = crate::adapters::harden::HardeningPolicy::default();
        let tools = p.level("tools").unwrap().hardening.apply(&base);
        assert_eq!(tools.drop, [caps::Capability::CAP_SYS_ADMIN, caps::Capability::CAP_BPF]);
        assert!(!tools.seccomp && !tools.root_agents);
        assert_eq!(p.level("plain").unwrap().hardening.apply(&base), base);
        let e = Policy::parse("[trust.x]\ndrop_capabilities = [\"CAP_FLY\"]\n", "t").unwrap_err();
        assert!(e.contains("[trust.x] drop_capabilities: unknown capability \"CAP_FLY\""), "{e}");
        let e = Policy::parse("[trust.x]\nseccomp = \"maybe\"\n", "t").unwrap_err();
        assert!(e.contains("seccomp"), "{e}");
    }

    #[test]
    fn hardlinks_per_level() {
        let p = Policy::parse(
            "[trust.a]\nhardlinks = \"refuse-write\"\n[trust.b]\nhardlinks = \"refuse\"\n[trust.c]\n",
            "t",
        )
        .unwrap();
        assert_eq!(p.level("a").unwrap().hardlinks, Some(Hardlinks::RefuseWrite));
        assert_eq!(p.level("b").unwrap().hardlinks, Some(Hardlinks::Refuse));
        assert_eq!(p.level("c").unwrap().hardlinks, None);
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
