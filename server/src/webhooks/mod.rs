//! Webhooks (`--webhook-url`): signed events about rooms, delivered at
//! least once from an outbox in the database.
//!
//! Rooms and connections report through a [`Webhooks`] handle, one call
//! each, never waiting: `recorder` writes events into the outbox, with
//! `changes` reporting `document.changed` from the counts the journal
//! commits with the edits; `delivery` claims and POSTs them (each room's
//! in order), `client` makes the request, `signature` signs it. Without
//! `--webhook-url` there is no handle and nothing here runs.

pub mod args;
mod changes;
pub mod cli;
mod client;
mod delivery;
mod events;
mod metrics;
mod recorder;
mod signature;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crdt_store::{RoomName, Store};
use futures_util::future::BoxFuture;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::error;

pub use client::{Endpoint, EndpointError};
pub use events::{EventFilter, EventKind, UnknownEvent};
pub use signature::sign;

use events::Event;
use recorder::Notice;

/// What `serve`'s `--webhook-*` flags set.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub endpoint: Endpoint,
    /// Signs every body when set.
    pub secret: Option<String>,
    pub events: EventFilter,
    /// `document.changed` waits for this much quiet...
    pub debounce: Duration,
    /// ...but no longer than this while edits go on.
    pub max_wait: Duration,
    /// Longest one attempt may take.
    pub timeout: Duration,
    /// `document.changed` carries the document as JSON (`"json"`).
    pub include_json: bool,
    /// An event still failing after this long is dead-lettered, and a dead
    /// letter is pruned after as long again.
    pub max_age: Duration,
    /// Deliveries in flight at once (each to a different room).
    pub concurrency: usize,
    /// First and largest wait between attempts.
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// Events that may wait in memory for the database; more are dropped
    /// with an error logged (the database is down that long).
    pub max_queued: usize,
}

/// What reporting `document.changed` needs to read of a room. Given by
/// the app, which knows the rooms (this module does not: the rooms know
/// it).
pub trait RoomReader: Send + Sync + 'static {
    /// The document as `GET …/json` renders it, for
    /// `--webhook-include-json`; `None` when the room is not loaded (it is
    /// not loaded for this).
    fn json(&self, room: RoomName) -> BoxFuture<'static, Option<serde_json::Value>>;

    /// The document's state vector (Yjs v1): the loaded room's, else the
    /// stored document's; `None` when it cannot be read now.
    fn state_vector(&self, room: RoomName) -> BoxFuture<'static, Option<Vec<u8>>>;
}

/// The rooms' and connections' way to report events. Cheap to clone.
#[derive(Clone)]
pub struct Webhooks {
    notices: mpsc::UnboundedSender<Notice>,
    queued: Arc<AtomicUsize>,
    config: Arc<WebhookConfig>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("endpoint", &self.config.endpoint)
            .finish_non_exhaustive()
    }
}

impl Webhooks {
    /// Starts the recorder and the delivery worker under `tasks`; both stop
    /// when `shutdown` is cancelled (the recorder after writing what is
    /// pending).
    pub fn start(
        store: Arc<dyn Store>,
        config: WebhookConfig,
        reader: Arc<dyn RoomReader>,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> Self {
        let config = Arc::new(config);
        let (notices, receiver) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let written = Arc::new(Notify::new());
        tasks.spawn(
            recorder::Recorder {
                store: store.clone(),
                config: config.clone(),
                notices: receiver,
                queued: queued.clone(),
                written: written.clone(),
                changes: changes::Changes::new(
                    store.clone(),
                    config.clone(),
                    reader,
                    written.clone(),
                ),
                shutdown: shutdown.clone(),
            }
            .run(),
        );
        tasks.spawn(
            delivery::Worker {
                store,
                config: config.clone(),
                written,
                shutdown,
            }
            .run(),
        );
        Self {
            notices,
            queued,
            config,
        }
    }

    fn report(&self, event: Event) {
        if self.config.events.allows(event.kind) {
            self.send(Notice::Event(event));
        }
    }

    fn send(&self, notice: Notice) {
        if self.queued.load(Ordering::Relaxed) >= self.config.max_queued {
            metrics::dropped();
            error!(
                max = self.config.max_queued,
                "webhook events are not reaching the database; dropping one"
            );
            return;
        }
        self.queued.fetch_add(1, Ordering::Relaxed);
        if self.notices.send(notice).is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Updates from this node's clients were applied to the room (the
    /// journal counts them for `document.changed`); `state_vector` is
    /// asked for only when that event is wanted.
    pub fn document_changed(&self, room: &RoomName, state_vector: impl FnOnce() -> Vec<u8>) {
        if self.config.events.allows(EventKind::DocumentChanged) {
            self.send(Notice::Changed {
                room: room.as_str().to_string(),
                state_vector: state_vector(),
            });
        }
    }

    pub fn room_loaded(&self, room: &RoomName) {
        self.report(Event::new(EventKind::RoomLoaded, room.as_str()));
    }

    pub fn room_unloaded(&self, room: &RoomName) {
        self.report(Event::new(EventKind::RoomUnloaded, room.as_str()));
    }

    /// A connection joined (`opened`) or left the room; `sub` is its
    /// token's subject when authentication is on.
    pub fn connection(
        &self,
        opened: bool,
        room: &RoomName,
        peer: u64,
        sub: Option<&str>,
        writes: bool,
    ) {
        let kind = if opened {
            EventKind::ConnectionOpened
        } else {
            EventKind::ConnectionClosed
        };
        let mut event = Event::new(kind, room.as_str())
            .with("connection", peer)
            .with("access", if writes { "read-write" } else { "read-only" });
        if let Some(sub) = sub {
            event = event.with("sub", sub);
        }
        self.report(event);
    }

    pub fn version_created(&self, room: &RoomName, version: i64, restored_from: Option<i64>) {
        self.report(
            Event::new(EventKind::VersionCreated, room.as_str())
                .with("version", version)
                .with("restored_from", restored_from),
        );
    }

    pub fn room_restored(&self, room: &RoomName, from: i64, version: Option<i64>) {
        self.report(
            Event::new(EventKind::RoomRestored, room.as_str())
                .with("restored_from", from)
                .with("version", version),
        );
    }

    pub fn room_deleted(&self, room: &RoomName) {
        self.report(Event::new(EventKind::RoomDeleted, room.as_str()));
    }

    /// A Hocuspocus provider sent a stateless message.
    pub fn stateless(&self, room: &RoomName, peer: u64, payload: &str) {
        self.report(
            Event::new(EventKind::StatelessReceived, room.as_str())
                .with("connection", peer)
                .with("payload", payload),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The events in the outbox, as the store lists them.
    async fn recorded(store: &Arc<dyn Store>) -> Vec<String> {
        store
            .webhooks(false, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|record| record.event)
            .collect()
    }

    fn config() -> WebhookConfig {
        WebhookConfig {
            // Nothing listens on the discard port: deliveries are refused
            // and the events stay in the outbox for the test to read.
            endpoint: Endpoint::parse("http://127.0.0.1:9/hooks").unwrap(),
            secret: None,
            events: EventFilter::default(),
            debounce: Duration::from_secs(30),
            max_wait: Duration::from_secs(60),
            timeout: Duration::from_secs(1),
            include_json: false,
            max_age: Duration::from_secs(3600),
            concurrency: 1,
            retry_base: Duration::from_secs(60),
            retry_cap: Duration::from_secs(60),
            max_queued: 100,
        }
    }

    /// Rooms that are never loaded and whose stored state vector is `[0]`.
    struct NoRooms;

    impl RoomReader for NoRooms {
        fn json(&self, _: RoomName) -> BoxFuture<'static, Option<serde_json::Value>> {
            Box::pin(async { None })
        }

        fn state_vector(&self, _: RoomName) -> BoxFuture<'static, Option<Vec<u8>>> {
            Box::pin(async { Some(vec![0]) })
        }
    }

    fn no_rooms() -> Arc<dyn RoomReader> {
        Arc::new(NoRooms)
    }

    /// Rooms report their last change and `room.unloaded` as they stop,
    /// after shutdown began; the recorder waits for every room's handle
    /// to go before it ends.
    #[tokio::test]
    async fn at_shutdown_reports_of_rooms_still_stopping_are_written() {
        let store = crdt_store::connect("sqlite::memory:").await.unwrap();
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let registry = Webhooks::start(
            store.clone(),
            config(),
            no_rooms(),
            shutdown.clone(),
            &tasks,
        );
        let room = registry.clone();
        let name = RoomName::parse("stopping").unwrap();

        shutdown.cancel();
        tasks.close();
        // The room takes its time to stop, then reports and lets go; its
        // last edits were committed, counted.
        tokio::time::sleep(Duration::from_millis(500)).await;
        store
            .append_unreported(&[crdt_store::PendingUpdate {
                room: name.clone(),
                data: bytes::Bytes::from_static(&[0, 0]),
            }])
            .await
            .unwrap();
        room.document_changed(&name, || vec![0]);
        room.room_unloaded(&name);
        drop(room);
        tokio::time::timeout(Duration::from_secs(5), tasks.wait())
            .await
            .expect("the recorder ends once the rooms are gone");

        let mut events = recorded(&store).await;
        events.reverse();
        assert_eq!(events, ["document.changed", "room.unloaded"]);
    }

    #[tokio::test]
    async fn events_left_out_by_the_filter_are_not_recorded() {
        let store = crdt_store::connect("sqlite::memory:").await.unwrap();
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let config = WebhookConfig {
            events: EventFilter::parse("room.deleted").unwrap(),
            ..config()
        };
        let hooks = Webhooks::start(store.clone(), config, no_rooms(), shutdown.clone(), &tasks);
        let name = RoomName::parse("filtered").unwrap();
        hooks.room_loaded(&name);
        hooks.document_changed(&name, || unreachable!("not asked for when filtered out"));
        hooks.room_deleted(&name);
        drop(hooks);
        shutdown.cancel();
        tasks.close();
        tokio::time::timeout(Duration::from_secs(5), tasks.wait())
            .await
            .unwrap();
        assert_eq!(recorded(&store).await, ["room.deleted"]);
    }
}
