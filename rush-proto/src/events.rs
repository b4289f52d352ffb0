//! The daemon's event stream: what `Subscribe` delivers, one `Event` per reply, until the
//! caller closes the connection or falls behind.

use serde::{Deserialize, Serialize};

use crate::audit::{AuditEvent, AuditRecord};

/// One event on the daemon's bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// Something the audit trail recorded: agent state changes (spawn, pause, resume,
    /// exit, kill), denials, budget crossings, grants and revokes, checkpoints. Published
    /// after it was written, so a subscriber never sees what the trail could lose.
    Audit(Box<AuditRecord>),
    /// This subscriber fell behind by `missed` events (the bus keeps a bounded backlog per
    /// subscriber and never waits for one); the daemon ends the stream after this marker.
    Lagged { missed: u64 },
}

impl Event {
    /// The kind a `Subscribe` filter names it by: the audit event's kind, or "lagged".
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Audit(r) => r.event.kind(),
            Event::Lagged { .. } => "lagged",
        }
    }

    pub fn agent(&self) -> Option<&str> {
        match self {
            Event::Audit(r) => r.agent.as_deref(),
            Event::Lagged { .. } => None,
        }
    }

    pub fn session(&self) -> Option<&str> {
        match self {
            Event::Audit(r) => r.session.as_deref().or_else(|| r.event.session()),
            Event::Lagged { .. } => None,
        }
    }
}

/// `Subscribe`: which events to deliver. Empty `kinds` = every kind; a filter on agent or
/// session delivers only events about it. A `lagged` marker is always delivered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribeRequest {
    /// Event kinds (`AuditEvent::KINDS`); an unknown one is refused, naming the known ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

impl SubscribeRequest {
    /// The first kind that is not an event kind, if any.
    pub fn unknown_kind(&self) -> Option<&str> {
        self.kinds.iter().map(String::as_str).find(|k| !AuditEvent::KINDS.contains(k))
    }

    /// Whether `event` passes this filter.
    pub fn matches(&self, event: &Event) -> bool {
        if matches!(event, Event::Lagged { .. }) {
            return true;
        }
        (self.kinds.is_empty() || self.kinds.iter().any(|k| k == event.kind()))
            && self.agent.as_deref().is_none_or(|a| event.agent() == Some(a))
            && self.session.as_deref().is_none_or(|s| event.session() == Some(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(agent: &str, seq: u64) -> Event {
        let json = serde_json::json!({
            "seq": seq, "time_unix_ms": 1, "agent": agent,
            "event": {"kind": "exit", "pid": 5, "status": {"code": 0, "signal": null}}
        });
        Event::Audit(serde_json::from_value(json).unwrap())
    }

    #[test]
    fn filters_by_kind_agent_and_always_pass_the_lagged_marker() {
        let f = SubscribeRequest { kinds: vec!["exit".into()], agent: Some("a".into()), session: None };
        assert!(f.matches(&exit("a", 1)));
        assert!(!f.matches(&exit("b", 2)));
        assert!(f.matches(&Event::Lagged { missed: 3 }));
        let spawn_only = SubscribeRequest { kinds: vec!["spawn".into()], ..Default::default() };
        assert!(!spawn_only.matches(&exit("a", 1)));
        assert_eq!(
            SubscribeRequest { kinds: vec!["nope".into()], ..Default::default() }.unknown_kind(),
            Some("nope")
        );
    }

    #[test]
    fn events_round_trip_and_an_unknown_type_is_an_error() {
        let e = exit("a", 7);
        let text = serde_json::to_string(&e).unwrap();
        assert!(text.starts_with(r#"{"type":"audit""#), "{text}");
        assert_eq!(serde_json::from_str::<Event>(&text).unwrap(), e);
        let err = serde_json::from_str::<Event>(r#"{"type":"bogus"}"#).unwrap_err().to_string();
        assert!(err.contains("bogus"), "{err}");
    }
}
