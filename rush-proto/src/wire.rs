//! States on the wire: closed sets of values, each an enum on both sides.
//!
//! A state the daemon reports (an agent's enforcement, why it is paused, what a token
//! change does to it, where a token comes from) is one of a few values that both sides
//! compare. Spelled as strings, each side compares literals that can drift apart silently;
//! as enums, the compiler checks every comparison, and a value one side does not know is
//! refused when the line is read, with an error naming the field and the value (what a
//! `rush` older than its daemon says, instead of rendering a state it does not know).
//!
//! Each value keeps the spelling it had on the wire (and in the daemon's stored state, which
//! holds `AgentInfo` as JSON): `files:bpf-lsm`, `budget:cpu`, `in-place`. New values are
//! snake_case.

use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

/// A value a wire enum does not have: which field, what value, and what the reader knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: unknown value {value:?} (known here: {})", known.join(", "))]
pub struct UnknownValue {
    /// The field (or fields) this enum is the type of, e.g. `AgentInfo.enforcement`.
    pub field: &'static str,
    pub value: String,
    pub known: &'static [&'static str],
}

/// Declares a wire enum: each variant with its spelling on the wire; `as "FIELD"` names the
/// field(s) it types, for the error an unknown value gets. Generates `as_str`, `ALL`,
/// `Display`, `FromStr` and serde as that string.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident as $field:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// The field(s) of this type, as an unknown value's error names them.
            pub const FIELD: &'static str = $field;
            const TEXTS: &'static [&'static str] = &[$($text),+];

            /// The value's spelling on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::wire::UnknownValue;
            fn from_str(s: &str) -> Result<Self, $crate::wire::UnknownValue> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err($crate::wire::UnknownValue {
                        field: $field,
                        value: s.to_owned(),
                        known: $name::TEXTS,
                    }),
                }
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_str($crate::wire::ParseVisitor::<$name>::new())
            }
        }
    };
}
pub(crate) use wire_enum;

/// Deserializes a string through `FromStr`, keeping its error as serde's message.
pub struct ParseVisitor<T>(PhantomData<T>);

impl<T> ParseVisitor<T> {
    pub fn new() -> Self {
        ParseVisitor(PhantomData)
    }
}

impl<T> Default for ParseVisitor<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: FromStr<Err = UnknownValue>> serde::de::Visitor<'_> for ParseVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }
}

/// A set of wire enum values carried as one comma-joined string (`"operator,budget:cpu"`),
/// absent or null when empty: how `AgentInfo.paused` has always been spelled.
pub mod comma_list {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer};

    use super::UnknownValue;

    pub fn serialize<T: Display, S: Serializer>(values: &[T], s: S) -> Result<S::Ok, S::Error> {
        if values.is_empty() {
            return s.serialize_none();
        }
        let joined: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        s.serialize_str(&joined.join(","))
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<Vec<T>, D::Error>
    where
        T: FromStr<Err = UnknownValue>,
        D: Deserializer<'de>,
    {
        let Some(text) = Option::<String>::deserialize(d)? else { return Ok(Vec::new()) };
        text.split(',')
            .filter(|v| !v.is_empty())
            .map(|v| v.parse().map_err(serde::de::Error::custom))
            .collect()
    }
}

wire_enum! {
    /// One kernel mechanism confining an agent (`AgentInfo.enforcement`): family, then mechanism.
    pub enum Enforcement as "AgentInfo.enforcement" {
        /// Its identity in the kernel is its cgroup v2 (always).
        IdentityCgroupV2 = "identity:cgroup-v2",
        /// Its network policy, by cgroup sock_addr programs.
        NetCgroupSockAddr = "net:cgroup-sock-addr",
        /// Its file tokens, by the BPF LSM programs.
        FilesBpfLsm = "files:bpf-lsm",
        /// Its file tokens, by a Landlock ruleset.
        FilesLandlock = "files:landlock",
        /// Landlock scopes keep its signals and abstract sockets inside it (no BPF LSM guard).
        SelfProtectionLandlockScope = "self-protection:landlock-scope",
        /// Landlock's TCP port rules, besides the cgroup programs' address checks.
        NetLandlockTcpPorts = "net:landlock-tcp-ports",
        /// Its budget, by cgroup controllers.
        BudgetCgroup = "budget:cgroup",
        /// Host names of its `--net` list, by its own resolver in the daemon: the addresses
        /// their DNS answers give, for their TTL.
        NetDnsResolver = "net:dns-resolver",
    }
}

impl Enforcement {
    /// The file-token backend among these, if one confines the agent's files.
    pub fn files_backend(all: &[Enforcement]) -> Option<FilesBackend> {
        all.iter().find_map(|e| match e {
            Enforcement::FilesBpfLsm => Some(FilesBackend::BpfLsm),
            Enforcement::FilesLandlock => Some(FilesBackend::Landlock),
            _ => None,
        })
    }
}

wire_enum! {
    /// Why an agent is frozen (`AgentInfo.paused`, the `paused` audit record's `reason`).
    pub enum PauseReason as "AgentInfo.paused / paused.reason" {
        /// `rush agent pause`.
        Operator = "operator",
        /// Its cpu budget is spent.
        BudgetCpu = "budget:cpu",
        /// It asked for a decision with `--freeze`: frozen until the request is decided.
        Approval = "approval",
    }
}

wire_enum! {
    /// What a token change does to a running agent (`ChangeEffect.action`, and the
    /// `ruleset_change` audit record's `action`: `restart` or `kill`).
    pub enum ChangeAction as "ChangeEffect.action / ruleset_change.action" {
        /// The kernel map changes under the running agent (BPF LSM).
        InPlace = "in-place",
        /// Frozen, killed, and started again under the new rules (Landlock).
        Restart = "restart",
        /// Frozen and killed (Landlock, `on_narrow`/`on_widen = "kill"`, foreground agents).
        Kill = "kill",
        /// Nothing to do (no such change, or the agent is not file-confined).
        None = "none",
    }
}

wire_enum! {
    /// The file backend confining an agent (`ChangeEffect.backend`), spelled as the
    /// daemon's `[files] enforcement` setting.
    pub enum FilesBackend as "ChangeEffect.backend" {
        BpfLsm = "bpf-lsm",
        Landlock = "landlock",
        /// Not file-confined.
        None = "none",
    }
}

wire_enum! {
    /// Where a capability token comes from (`TokenInfo.origin`).
    pub enum TokenOrigin as "TokenInfo.origin" {
        /// The daemon's `[files] baseline`, for every file-confined agent.
        Baseline = "baseline",
        /// `rush agent spawn --allow`.
        Spawn = "spawn",
        /// `rush capability grant`.
        Grant = "grant",
        /// The agent's own stdin/stdout/stderr or log, when they are regular files.
        Stdio = "stdio",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_unknown_ones_name_field_and_value() {
        for e in Enforcement::ALL {
            let json = serde_json::to_string(e).unwrap();
            assert_eq!(json, format!("\"{e}\""));
            assert_eq!(serde_json::from_str::<Enforcement>(&json).unwrap(), *e);
        }
        let err = serde_json::from_str::<Enforcement>("\"files:martian\"").unwrap_err().to_string();
        assert!(err.contains("AgentInfo.enforcement") && err.contains("\"files:martian\""), "{err}");
        assert!(err.contains("files:bpf-lsm"), "the known values are listed: {err}");
        let err = serde_json::from_str::<TokenOrigin>("7").unwrap_err().to_string();
        assert!(err.contains("expected a string"), "{err}");
        assert_eq!("kill".parse::<ChangeAction>(), Ok(ChangeAction::Kill));
    }

    #[test]
    fn a_comma_list_is_one_string_or_nothing() {
        #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
        struct S {
            #[serde(default, skip_serializing_if = "Vec::is_empty", with = "comma_list")]
            paused: Vec<PauseReason>,
        }
        let both = S { paused: vec![PauseReason::Operator, PauseReason::BudgetCpu] };
        assert_eq!(serde_json::to_string(&both).unwrap(), r#"{"paused":"operator,budget:cpu"}"#);
        assert_eq!(serde_json::from_str::<S>(r#"{"paused":"operator,budget:cpu"}"#).unwrap(), both);
        assert_eq!(serde_json::to_string(&S { paused: vec![] }).unwrap(), "{}");
        assert_eq!(serde_json::from_str::<S>(r#"{"paused":null}"#).unwrap(), S { paused: vec![] });
        assert_eq!(serde_json::from_str::<S>("{}").unwrap(), S { paused: vec![] });
        let err = serde_json::from_str::<S>(r#"{"paused":"operator,nap"}"#).unwrap_err().to_string();
        assert!(err.contains("AgentInfo.paused") && err.contains("\"nap\""), "{err}");
    }
}

wire_enum! {
    /// What keeps a session's history (`[snapshot] store`).
    pub enum SessionStore as "SessionInfo.backend" {
        /// Subvolumes on the btrfs the workspace already lives on.
        Btrfs = "btrfs",
        /// Subvolumes on a btrfs image under the daemon's state dir, loop-mounted.
        BtrfsLoop = "btrfs-loop",
        /// Commits in a git repository of the daemon's (no btrfs here).
        Git = "git",
    }
}

wire_enum! {
    /// What changed an agent's file tokens, in the audit records of what that did to it.
    pub enum TokenChange as "AuditEvent.cause (revoke_kill, ruleset_change)" {
        Grant = "grant",
        Revoke = "revoke",
        /// A token's TTL ran out.
        Expiry = "expiry",
    }
}

wire_enum! {
    /// Why a conditional token's check ran.
    pub enum CommitCause as "AuditEvent.cause (commit)" {
        /// `rush capability commit` (by the operator or the agent itself).
        Request = "request",
        /// The agent exited: the last chance for its work; the worktree is removed after.
        Exit = "exit",
    }
}

wire_enum! {
    /// How a rollback a crash interrupted was settled when the daemon started again.
    pub enum RollbackOutcome as "AuditEvent.outcome (rollback_repaired)" {
        /// The swap had happened: the rollback stands.
        Completed = "completed",
        /// It had not: the workspace is as it was.
        Undone = "undone",
    }
}

wire_enum! {
    pub enum TimelineAction as "AuditEvent.action (timeline_change)" {
        Branch = "branch",
        Switch = "switch",
    }
}

wire_enum! {
    /// A change of a session's key-value state.
    pub enum KvAction as "AuditEvent.action (session_kv)" {
        Set = "set",
        Unset = "unset",
    }
}

wire_enum! {
    /// Why a starting daemon started a restartable agent again.
    pub enum RestartReason as "AuditEvent.reason (agent_restarted, restart_failed)" {
        /// The machine restarted.
        Reboot = "reboot",
        /// The daemon found it dead.
        Gone = "gone",
    }
}
