//! What happened, as the rooms report it, and the JSON each event is sent
//! as. `--webhook-events` picks the kinds by the names here.

use std::collections::BTreeSet;
use std::fmt;

use serde_json::{Map, Value, json};

/// The kinds of event, by their wire names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventKind {
    DocumentChanged,
    RoomLoaded,
    RoomUnloaded,
    ConnectionOpened,
    ConnectionClosed,
    VersionCreated,
    RoomRestored,
    RoomDeleted,
    StatelessReceived,
}

impl EventKind {
    pub const ALL: [EventKind; 9] = [
        EventKind::DocumentChanged,
        EventKind::RoomLoaded,
        EventKind::RoomUnloaded,
        EventKind::ConnectionOpened,
        EventKind::ConnectionClosed,
        EventKind::VersionCreated,
        EventKind::RoomRestored,
        EventKind::RoomDeleted,
        EventKind::StatelessReceived,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EventKind::DocumentChanged => "document.changed",
            EventKind::RoomLoaded => "room.loaded",
            EventKind::RoomUnloaded => "room.unloaded",
            EventKind::ConnectionOpened => "connection.opened",
            EventKind::ConnectionClosed => "connection.closed",
            EventKind::VersionCreated => "version.created",
            EventKind::RoomRestored => "room.restored",
            EventKind::RoomDeleted => "room.deleted",
            EventKind::StatelessReceived => "stateless.received",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The kinds `--webhook-events` lets through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFilter(BTreeSet<EventKind>);

impl Default for EventFilter {
    fn default() -> Self {
        Self(EventKind::ALL.into_iter().collect())
    }
}

/// `--webhook-events` named a kind that does not exist.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown webhook event {0:?}; known: {known}", known = known())]
pub struct UnknownEvent(String);

fn known() -> String {
    EventKind::ALL.map(EventKind::name).join(", ")
}

impl EventFilter {
    /// A comma list of event names; `all` (or nothing) for every kind.
    ///
    /// # Errors
    /// [`UnknownEvent`] for a name that is not an event.
    pub fn parse(list: &str) -> Result<Self, UnknownEvent> {
        let mut kinds = BTreeSet::new();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "all" {
                return Ok(Self::default());
            }
            let kind = EventKind::ALL
                .into_iter()
                .find(|kind| kind.name() == name)
                .ok_or_else(|| UnknownEvent(name.to_string()))?;
            kinds.insert(kind);
        }
        if kinds.is_empty() {
            return Ok(Self::default());
        }
        Ok(Self(kinds))
    }

    pub fn allows(&self, kind: EventKind) -> bool {
        self.0.contains(&kind)
    }
}

/// One event, before it gets its id and time.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: EventKind,
    pub room: String,
    /// The fields beside `id`, `event`, `room` and `time`.
    pub fields: Map<String, Value>,
}

impl Event {
    pub fn new(kind: EventKind, room: &str) -> Self {
        Self {
            kind,
            room: room.to_string(),
            fields: Map::new(),
        }
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.fields.insert(key.to_string(), value.into());
        self
    }

    /// The body sent: `{"id", "event", "room", "time", …fields}`.
    pub fn body(&self, id: &str, time: chrono::DateTime<chrono::Utc>) -> String {
        let mut body = Map::new();
        body.insert("id".into(), json!(id));
        body.insert("event".into(), json!(self.kind.name()));
        body.insert("room".into(), json!(self.room));
        body.insert(
            "time".into(),
            json!(time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        );
        for (key, value) in &self.fields {
            body.insert(key.clone(), value.clone());
        }
        Value::Object(body).to_string()
    }
}

/// A fresh event id: 128 random bits, as the receiver's idempotency key.
pub fn new_event_id() -> String {
    format!("evt_{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_names_and_refuse_unknown_ones() {
        let filter = EventFilter::parse("document.changed, room.deleted").unwrap();
        assert!(filter.allows(EventKind::DocumentChanged));
        assert!(filter.allows(EventKind::RoomDeleted));
        assert!(!filter.allows(EventKind::RoomLoaded));
        assert_eq!(EventFilter::parse("all").unwrap(), EventFilter::default());
        let error = EventFilter::parse("document.changed,doc.changed").unwrap_err();
        assert!(error.to_string().contains("\"doc.changed\""), "{error}");
        assert!(error.to_string().contains("room.loaded"), "{error}");
    }

    #[test]
    fn bodies_carry_id_event_room_time_and_fields() {
        let event = Event::new(EventKind::DocumentChanged, "notes").with("updates", 3);
        let time = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let body: Value = serde_json::from_str(&event.body("evt_1", time)).unwrap();
        assert_eq!(
            body,
            json!({"id": "evt_1", "event": "document.changed", "room": "notes",
                   "time": "2023-11-14T22:13:20.000Z", "updates": 3})
        );
        assert_ne!(new_event_id(), new_event_id());
    }
}
