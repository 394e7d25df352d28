//! Puts the rooms' events into the outbox. Rooms hand notices over without
//! waiting (a channel); this task debounces `document.changed` per room
//! and writes events in batches, retrying while the database fails.
//!
//! The window: a notice is durable once written here, normally within
//! `WRITE_WINDOW`; a `document.changed` waits in memory for its debounce
//! first (at most `--webhook-max-wait`). A `kill -9` inside that window
//! loses the event, not the edits (the journal has those). At shutdown
//! every pending change is written before the task ends.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use crdt_store::{NewWebhookEvent, Store};
use tokio::sync::{Notify, mpsc};
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use super::WebhookConfig;
use super::events::{Event, EventKind, new_event_id};
use crate::backoff::Backoff;

/// What a room reports.
pub(super) enum Notice {
    Event(Event),
    /// Updates were applied; `state_vector` is the document's after them.
    Changed {
        room: String,
        updates: u64,
        state_vector: Vec<u8>,
    },
}

/// Events waiting to be written are collected this long, so that a burst
/// (a hundred connections opening) is one transaction.
const WRITE_WINDOW: Duration = Duration::from_millis(20);

/// The handles that remain once every room has stopped: this task's and
/// the registry's.
const IDLE_HOLDERS: usize = 2;

/// Longest the recorder waits at shutdown for rooms still reporting (they
/// stop within `--shutdown-grace`, 5 s by default).
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

/// Attempts to write events once shutdown has begun.
const SHUTDOWN_ATTEMPTS: u32 = 5;

/// A room's changes not yet reported.
struct Pending {
    first: Instant,
    last: Instant,
    updates: u64,
    state_vector: Vec<u8>,
}

pub(super) struct Recorder {
    pub store: Arc<dyn Store>,
    pub config: Arc<WebhookConfig>,
    pub notices: mpsc::UnboundedReceiver<Notice>,
    /// Notices sent and not yet taken (the channel's only bound).
    pub queued: Arc<AtomicUsize>,
    /// Wakes the delivery worker when something was written.
    pub written: Arc<Notify>,
    /// The document's JSON, for `--webhook-include-json`.
    pub render_json: super::RenderJson,
    pub shutdown: CancellationToken,
}

impl Recorder {
    pub async fn run(mut self) {
        let mut changes: HashMap<String, Pending> = HashMap::new();
        let mut ready: Vec<Event> = Vec::new();
        let mut stopped_at: Option<Instant> = None;
        // Checking every room's debounce this often bounds the lateness of
        // a `document.changed` without a timer per room.
        let tick = (self.config.debounce / 8).clamp(Duration::from_millis(5), WRITE_WINDOW * 5);
        loop {
            let stopping = self.shutdown.is_cancelled();
            tokio::select! {
                () = sleep(if ready.is_empty() { tick } else { WRITE_WINDOW }) => {}
                () = self.shutdown.cancelled(), if !stopping => {}
            }
            while let Ok(notice) = self.notices.try_recv() {
                self.queued.fetch_sub(1, Ordering::Relaxed);
                match notice {
                    Notice::Event(event) => {
                        // A change reported before this event goes first.
                        if let Some(pending) = changes.remove(&event.room) {
                            ready.push(changed(&event.room, pending));
                        }
                        ready.push(event);
                    }
                    Notice::Changed {
                        room,
                        updates,
                        state_vector,
                    } => {
                        let now = Instant::now();
                        let pending = changes.entry(room).or_insert_with(|| Pending {
                            first: now,
                            last: now,
                            updates: 0,
                            state_vector: Vec::new(),
                        });
                        pending.last = now;
                        pending.updates += updates;
                        pending.state_vector = state_vector;
                    }
                }
            }
            let now = Instant::now();
            let due: Vec<String> = changes
                .iter()
                .filter(|(_, p)| {
                    stopping
                        || now >= p.last + self.config.debounce
                        || now >= p.first + self.config.max_wait
                })
                .map(|(room, _)| room.clone())
                .collect();
            for room in due {
                if let Some(pending) = changes.remove(&room) {
                    ready.push(changed(&room, pending));
                }
            }
            if !ready.is_empty() {
                let mut events = Vec::with_capacity(ready.len());
                for event in ready.drain(..) {
                    events.push(self.with_json(event).await);
                }
                self.write(events).await;
            }
            if stopping && changes.is_empty() && self.queued.load(Ordering::Relaxed) == 0 {
                // Rooms report their last changes and `room.unloaded` as
                // they stop, after shutdown began: each holds a handle
                // (sharing `queued`), so wait for them, within reason.
                let reporters = Arc::strong_count(&self.queued);
                if reporters <= IDLE_HOLDERS
                    || stopped_at.get_or_insert_with(Instant::now).elapsed() >= SHUTDOWN_WAIT
                {
                    return;
                }
            }
        }
    }

    /// Writes events, retrying with backoff until they are in (at
    /// shutdown, a few times).
    async fn write(&self, events: Vec<Event>) {
        let now = chrono::Utc::now();
        let expires_at =
            now + chrono::Duration::from_std(self.config.max_age).unwrap_or(chrono::Duration::MAX);
        let rows: Vec<NewWebhookEvent> = events
            .iter()
            .map(|event| {
                let id = new_event_id();
                NewWebhookEvent {
                    body: event.body(&id, now),
                    event_id: id,
                    event: event.kind.name().to_string(),
                    room: event.room.clone(),
                    created_at: now,
                    expires_at,
                }
            })
            .collect();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        loop {
            match self.store.enqueue_webhooks(&rows).await {
                Ok(()) => break,
                Err(e) => {
                    let delay = backoff.next_delay();
                    warn!(error = %e, events = rows.len(), retry_in = ?delay, "writing webhook events failed; retrying");
                    // Retried for as long as the server runs; at shutdown a
                    // database that stays down must not hold the exit.
                    if self.shutdown.is_cancelled() && backoff.attempts() >= SHUTDOWN_ATTEMPTS {
                        error!(
                            events = rows.len(),
                            "database down at shutdown: these webhook events are lost"
                        );
                        return;
                    }
                    sleep(delay).await;
                }
            }
        }
        self.written.notify_one();
    }
}

/// Longest the recorder waits for a room to render its JSON (a busy room
/// answers later; the event goes without it then).
const RENDER_TIMEOUT: Duration = Duration::from_secs(2);

impl Recorder {
    /// Adds `"json"` to a `document.changed` with `--webhook-include-json`.
    async fn with_json(&self, event: Event) -> Event {
        if !self.config.include_json || event.kind != EventKind::DocumentChanged {
            return event;
        }
        let json = match crdt_store::RoomName::parse(&event.room) {
            Ok(room) => tokio::time::timeout(RENDER_TIMEOUT, (self.render_json)(room))
                .await
                .ok()
                .flatten(),
            Err(_) => None,
        };
        event.with("json", json)
    }
}

fn changed(room: &str, pending: Pending) -> Event {
    Event::new(EventKind::DocumentChanged, room)
        .with("updates", pending.updates)
        .with(
            "state_vector",
            base64::engine::general_purpose::STANDARD.encode(&pending.state_vector),
        )
}
