//! One typed bus every service publishes its events to; subscribers (the API's
//! `Subscribe`, `rush audit --follow`, later the TUI and the shell) each read at their own
//! pace.
//!
//! The bus is a bounded ring per subscriber (tokio's broadcast channel): publishing never
//! waits, so a slow subscriber can never slow the daemon; it falls behind, loses the oldest
//! events it had not read and is told how many (`Lagged`), which the API turns into a
//! marker and the end of that subscription.
//!
//! The audit trail is where durable events start: `AuditLog::record` writes the record,
//! then publishes it here, so no subscriber sees an event the trail could still lose by a
//! crash in between. Events that need no trail (later: agent output, claims) are
//! published directly.

use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use rush_proto::{AuditRecord, Event};
use serde_json::value::RawValue;
use tokio::sync::broadcast;

/// Events a subscriber may fall behind by before it is cut off.
pub const BACKLOG: usize = 4096;

/// A handle on the bus; clones publish to the same subscribers.
#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Arc<Published>>,
}

/// What a subscriber reads: events in publication order, or how many it missed.
pub type Subscription = broadcast::Receiver<Arc<Published>>;

/// An event as published: shared by every subscriber, and turned into JSON at most once
/// however many subscribers send it (the first one that does).
#[derive(Debug)]
pub struct Published {
    event: Event,
    json: OnceLock<Box<RawValue>>,
}

impl Published {
    pub fn new(event: Event) -> Published {
        Published { event, json: OnceLock::new() }
    }

    /// The event as JSON, made once.
    pub fn json(&self) -> &RawValue {
        self.json.get_or_init(|| serde_json::value::to_raw_value(&self.event).expect("events serialize"))
    }
}

impl Deref for Published {
    type Target = Event;
    fn deref(&self) -> &Event {
        &self.event
    }
}

impl Default for EventBus {
    fn default() -> EventBus {
        EventBus::new(BACKLOG)
    }
}

impl EventBus {
    pub fn new(backlog: usize) -> EventBus {
        EventBus { tx: broadcast::channel(backlog).0 }
    }

    /// Delivers `event` to every current subscriber; never waits, never fails (an event
    /// with no subscriber is simply not kept).
    pub fn publish(&self, event: Event) {
        let _ = self.tx.send(Arc::new(Published::new(event)));
    }

    pub fn subscribe(&self) -> Subscription {
        self.tx.subscribe()
    }

    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }
}

/// The audit record an event carries, if it is one.
pub fn audit_record(event: &Event) -> Option<&AuditRecord> {
    match event {
        Event::Audit(r) => Some(r),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use broadcast::error::TryRecvError;

    #[test]
    fn a_slow_subscriber_lags_and_the_others_and_the_publisher_do_not_wait() {
        let bus = EventBus::new(4);
        let mut slow = bus.subscribe();
        let mut fast = bus.subscribe();
        for missed in 0..10 {
            bus.publish(Event::Lagged { missed });
            assert!(matches!(**fast.try_recv().unwrap(), Event::Lagged { missed: m } if m == missed));
        }
        assert_eq!(slow.try_recv().unwrap_err(), TryRecvError::Lagged(6));
        assert!(matches!(**slow.try_recv().unwrap(), Event::Lagged { missed: 6 }), "then the newest 4");
        assert_eq!(bus.subscribers(), 2);
    }
}
