//! The contract between `rush-agentd` and its callers.
//!
//! Wire format: newline-delimited JSON over a Unix stream socket. Every line a caller
//! sends is a [`RequestEnvelope`]; every line the daemon sends back is a
//! [`ReplyEnvelope`] carrying the same `id`. Most requests get exactly one reply;
//! the streaming ones say so on their variant ([`Request::Spawn`] in the foreground,
//! [`Request::Audit`] and [`Request::AgentLogs`] with `follow`).
//!
//! A foreground spawn passes the caller's stdin, stdout and stderr to the daemon as
//! `SCM_RIGHTS` ancillary data on the request line itself (see [`client`]), so the agent
//! writes straight to the user's terminal with no copying through the daemon.

pub mod api;
pub mod approval;
pub mod audit;
pub mod budget;
pub mod client;
pub mod coordination;
pub mod events;
pub mod gate;
pub mod session;
pub mod spec;
pub mod terminal;
pub mod wire;
pub mod workspace;

pub use api::*;
pub use audit::{AuditEvent, AuditRecord};
pub use budget::{Budget, BudgetResource, BudgetUnit, BudgetUsage};
pub use events::{Event, SubscribeRequest};
pub use session::{
    Attachment, CheckpointInfo, DiffReport, EnvChange, KeyValue, PerfSample, PerfSeries, Prune,
    RollbackReport, SessionDetail, SessionInfo, SessionRef, ShellOption, ShellOptionKind, ShellState,
    Timeline, TimelineInfo,
};
pub use spec::{AgentName, FileGrant, Hardlinks, NetEndpoint, NetPolicy, Ops, SpecError, parse_duration};
pub use wire::{
    ChangeAction, CommitCause, Enforcement, FilesBackend, KvAction, PauseReason, RestartReason,
    RollbackOutcome, SessionStore, TimelineAction, TokenChange, TokenOrigin, UnknownValue,
};

/// Bumped on any incompatible change of the wire types. The daemon refuses a request
/// whose envelope carries another version, with [`ErrorKind::VersionMismatch`]
/// ([`ApiError::version_mismatch`]); the client refuses a reply in another version
/// ([`client::ClientError::DaemonVersion`]). Both errors name both versions.
///
/// 2: wire states are enums ([`wire`]); requests declare who may send them, and agents
/// call as themselves.
pub const PROTOCOL_VERSION: u32 = 2;

/// Where `rush` and `rush-agentd` meet unless told otherwise (`--socket`, `RUSH_SOCKET`).
pub const DEFAULT_SOCKET: &str = "/run/rush/agentd.sock";
