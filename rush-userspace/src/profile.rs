//! Agent profiles (`rush agent spawn --profile NAME`, `rush doctor --profile NAME`): what a
//! known agent tool needs, as TOML. Built in: contrib/profiles/*.toml; a file of the same
//! name in `$XDG_CONFIG_HOME/rush/profiles/` (else `~/.config/rush/profiles/`) or
//! `/etc/rush/profiles/` replaces the built-in one, and may add new names.
//!
//! A profile is the flags the user would have typed, filled in by rush before the request:
//! the daemon sees an ordinary spawn and enforces it as such, so a profile can never give
//! more than flags could. Flags given with it win (`--net`, `--budget`, `--tty`/`--no-tty`)
//! or add to it (`--allow`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use rush_proto::{Budget, FileGrant, NetPolicy};
use serde::{Deserialize, Serialize};

/// The profiles shipped with rush.
const BUILT_IN: &[(&str, &str)] = &[
    ("aider", include_str!("../../contrib/profiles/aider.toml")),
    ("claude-code", include_str!("../../contrib/profiles/claude-code.toml")),
    ("codex", include_str!("../../contrib/profiles/codex.toml")),
    ("gemini", include_str!("../../contrib/profiles/gemini.toml")),
    ("generic-openai", include_str!("../../contrib/profiles/generic-openai.toml")),
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    description: String,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    tty: bool,
    #[serde(default)]
    api: Vec<String>,
    #[serde(default)]
    net: Vec<String>,
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    budget: Option<String>,
}

/// A profile, read and checked, not yet applied.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    /// Where it was read from (`built-in` or a path).
    pub source: String,
    file: ProfileFile,
}

/// A profile applied to a spawn: the values the request gets.
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    pub profile: String,
    pub source: String,
    pub description: String,
    pub command: Vec<String>,
    pub tty: bool,
    /// The network policy (None: the profile lists no host and none was given).
    pub net: Option<NetPolicy>,
    /// API hosts left out because a cost budget sends the agent's calls through its meter.
    pub metered_api: Vec<String>,
    pub allow: Vec<FileGrant>,
    /// Directories the allow list names that do not exist yet (created before the spawn).
    pub create: Vec<PathBuf>,
    pub env: Vec<(String, String)>,
    pub budget: Option<Budget>,
}

/// Where a user's own profiles are.
fn user_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(x) => dirs.push(PathBuf::from(x).join("rush/profiles")),
        None => {
            if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
                dirs.push(PathBuf::from(home).join(".config/rush/profiles"));
            }
        }
    }
    dirs.push(PathBuf::from("/etc/rush/profiles"));
    dirs
}

/// The names of every profile: built in and found in the profile directories.
pub fn names() -> Vec<String> {
    let mut names: Vec<String> = BUILT_IN.iter().map(|(n, _)| n.to_string()).collect();
    for dir in user_dirs() {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "toml")
                    && let Some(stem) = p.file_stem().and_then(|s| s.to_str())
                {
                    names.push(stem.to_owned());
                }
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

impl Profile {
    pub fn load(name: &str) -> anyhow::Result<Profile> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            bail!("profile name {name:?}: letters, digits, - and _ only");
        }
        for dir in user_dirs() {
            let path = dir.join(format!("{name}.toml"));
            match std::fs::read_to_string(&path) {
                Ok(text) => return Profile::parse(name, &path.display().to_string(), &text),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(anyhow!(e).context(format!("profile {}", path.display()))),
            }
        }
        match BUILT_IN.iter().find(|(n, _)| *n == name) {
            Some((_, text)) => Profile::parse(name, "built-in", text),
            None => bail!(
                "no profile {name:?}: the profiles are {} (your own go in ~/.config/rush/profiles/NAME.toml)",
                names().join(", ")
            ),
        }
    }

    fn parse(name: &str, source: &str, text: &str) -> anyhow::Result<Profile> {
        let file: ProfileFile =
            toml::from_str(text).with_context(|| format!("profile {name} ({source}) is not valid"))?;
        let p = Profile { name: name.to_owned(), source: source.to_owned(), file };
        // Every entry checked now, with made-up paths: a bad profile fails before anything runs.
        p.apply(&ApplyInputs::check())?;
        Ok(p)
    }

    /// The profile with `inputs` (the flags and the places to expand) applied.
    pub fn apply(&self, inputs: &ApplyInputs) -> anyhow::Result<Applied> {
        let f = &self.file;
        let what = |key: &str| format!("profile {} ({}): {key}", self.name, self.source);
        let budget = match (&inputs.budget, &f.budget) {
            (Some(b), _) => Some(*b),
            (None, Some(b)) => Some(b.parse().map_err(|e| anyhow!("{e}")).with_context(|| what("budget"))?),
            (None, None) => None,
        };
        let metered = budget.as_ref().is_some_and(|b| b.cost_micro_usd.is_some());
        // With a cost budget the API is reached through the meter only: listed, it would
        // be a way around it (the daemon refuses that).
        let (api, metered_api) =
            if metered { (Vec::new(), f.api.clone()) } else { (f.api.clone(), Vec::new()) };
        let hosts: Vec<&String> = api.iter().chain(&f.net).collect();
        for h in &hosts {
            let _: NetPolicy =
                h.parse().map_err(|e| anyhow!("{e}")).with_context(|| what(&format!("host {h:?}")))?;
        }
        let net = match &inputs.net {
            Some(n) => Some(n.clone()),
            None if hosts.is_empty() => None,
            None => Some(
                hosts
                    .iter()
                    .map(|h| h.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
                    .parse()
                    .map_err(|e| anyhow!("{e}"))
                    .with_context(|| what("net"))?,
            ),
        };
        let mut allow = Vec::new();
        let mut create = Vec::new();
        for entry in &f.allow {
            let expanded = inputs.expand(entry);
            let dir = expanded.split(':').next().is_some_and(|p| p.ends_with('/'));
            let grant: FileGrant = expanded
                .parse()
                .map_err(|e| anyhow!("{e}"))
                .with_context(|| what(&format!("allow {entry:?}")))?;
            let grant = FileGrant { path: clean(&grant.path), ..grant };
            if dir && !grant.path.exists() {
                create.push(grant.path.clone());
            }
            allow.push(grant);
        }
        allow.extend(inputs.allow.iter().cloned());
        let env = f.env.iter().map(|(k, v)| (k.clone(), inputs.expand(v))).collect();
        let command = if inputs.command.is_empty() { f.command.clone() } else { inputs.command.clone() };
        Ok(Applied {
            profile: self.name.clone(),
            source: self.source.clone(),
            description: f.description.clone(),
            command,
            tty: inputs.tty.unwrap_or(f.tty),
            net,
            metered_api,
            allow,
            create,
            env,
            budget,
        })
    }
}

/// A path without a trailing slash (`~/.claude/` grants the directory `~/.claude`).
fn clean(p: &Path) -> PathBuf {
    p.components().collect()
}

/// What a profile is applied with.
#[derive(Debug, Clone, Default)]
pub struct ApplyInputs {
    pub workspace: PathBuf,
    pub home: PathBuf,
    pub net: Option<NetPolicy>,
    pub budget: Option<Budget>,
    pub allow: Vec<FileGrant>,
    pub tty: Option<bool>,
    pub command: Vec<String>,
}

impl ApplyInputs {
    fn check() -> ApplyInputs {
        ApplyInputs { workspace: "/workspace".into(), home: "/home/user".into(), ..ApplyInputs::default() }
    }

    /// `{workspace}` and a leading `~` expanded.
    fn expand(&self, s: &str) -> String {
        let s = s.replace("{workspace}", &self.workspace.to_string_lossy());
        match s.strip_prefix('~') {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => {
                format!("{}{rest}", self.home.display())
            }
            _ => s,
        }
    }
}

/// Makes the directories a profile grants that do not exist yet (as the user running rush).
pub fn create_dirs(applied: &Applied) -> anyhow::Result<()> {
    for dir in &applied.create {
        std::fs::create_dir_all(dir).with_context(|| {
            format!("cannot create {} for profile {}'s grant", dir.display(), applied.profile)
        })?;
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .with_context(|| format!("chmod {}", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> ApplyInputs {
        ApplyInputs { workspace: "/src/app".into(), home: "/home/ann".into(), ..ApplyInputs::default() }
    }

    #[test]
    fn every_built_in_profile_parses_and_applies() {
        for (name, _) in BUILT_IN {
            let p = Profile::load(name).unwrap();
            let a = p.apply(&inputs()).unwrap();
            assert!(a.allow.iter().any(|g| g.path == Path::new("/src/app")), "{name}: {a:?}");
        }
    }

    #[test]
    fn claude_code_expands_to_its_hosts_tokens_and_env() {
        let a = Profile::load("claude-code").unwrap().apply(&inputs()).unwrap();
        assert_eq!(a.command, ["claude"]);
        assert!(a.tty);
        let net = a.net.unwrap().to_string();
        assert!(net.contains("api.anthropic.com:443") && net.contains("statsig.anthropic.com:443"), "{net}");
        let paths: Vec<_> = a.allow.iter().map(|g| g.path.display().to_string()).collect();
        assert_eq!(paths, ["/src/app", "/home/ann/.claude"]);
        assert!(a.env.contains(&("CLAUDE_CONFIG_DIR".into(), "/home/ann/.claude".into())));
    }

    #[test]
    fn a_cost_budget_takes_the_api_off_the_network_list() {
        let budget: Budget = "cost:$5".parse().unwrap();
        let a = Profile::load("claude-code")
            .unwrap()
            .apply(&ApplyInputs { budget: Some(budget), ..inputs() })
            .unwrap();
        let net = a.net.unwrap().to_string();
        assert!(!net.contains("api.anthropic.com"), "{net}");
        assert_eq!(a.metered_api, ["api.anthropic.com:443"]);
    }

    #[test]
    fn flags_win_over_the_profile() {
        let a = Profile::load("claude-code")
            .unwrap()
            .apply(&ApplyInputs {
                net: Some(NetPolicy::Deny),
                tty: Some(false),
                command: vec!["true".into()],
                allow: vec!["/data:read".parse().unwrap()],
                ..inputs()
            })
            .unwrap();
        assert_eq!(a.net, Some(NetPolicy::Deny));
        assert!(!a.tty);
        assert_eq!(a.command, ["true"]);
        assert_eq!(a.allow.last().unwrap().path, Path::new("/data"));
    }

    #[test]
    fn a_bad_profile_is_refused_naming_what_is_wrong() {
        let e =
            Profile::parse("x", "test", "description = \"d\"\nallow = [\"relative:read\"]\n").unwrap_err();
        assert!(format!("{e:#}").contains("allow \"relative:read\""), "{e:#}");
        let e = Profile::parse("x", "test", "description = \"d\"\nnet = [\"nohost\"]\n").unwrap_err();
        assert!(format!("{e:#}").contains("nohost"), "{e:#}");
        let e = Profile::parse("x", "test", "description = \"d\"\nsurprise = 1\n").unwrap_err();
        assert!(format!("{e:#}").contains("surprise"), "{e:#}");
        assert!(Profile::load("../etc/passwd").is_err());
        let e = Profile::load("no-such-profile").unwrap_err().to_string();
        assert!(e.contains("claude-code"), "{e}");
    }
}
