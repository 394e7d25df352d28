//! `document.changed`: when a room's changes are reported, and reporting
//! them from the count the journal keeps with the edits in the database
//! (see [`crdt_store::UnreportedChanges`]).
//!
//! This node's rooms say when they applied updates (a hint carrying the
//! document's state vector then). Once a room has been quiet for
//! `--webhook-debounce`, or has waited `--webhook-max-wait`, the node
//! reports whatever the database counts for it. A count that nobody
//! reports in time — left by a node that was killed or stopped, or
//! committed after this node's last look — is taken by a sweep once it is
//! [`ORPHAN_GRACE`] overdue, by whichever node gets there first; the
//! generation check lets only one of them write it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use crdt_store::{NewWebhookEvent, Store, StoreError, UnreportedChanges, UnreportedFilter};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::warn;

use super::events::{Event, EventKind, new_event_id};
use super::{RoomReader, WebhookConfig};
use crate::backoff::Backoff;

/// How overdue a count must be before any node takes it; the room's own
/// node reports well before (at its debounce), with its own state vector.
const ORPHAN_GRACE: Duration = Duration::from_secs(5);

/// How often counts nobody reports are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Rooms taken per sweep (the rest wait for the next one).
const SWEEP_LIMIT: usize = 100;

/// Longest the recorder waits for a room to render its JSON (a busy room
/// answers later; the event goes without it then).
const RENDER_TIMEOUT: Duration = Duration::from_secs(2);

/// A local room's changes not yet reported, as the room said.
struct Hint {
    first: Instant,
    last: Instant,
    /// The document's state vector after the last change.
    state_vector: Vec<u8>,
}

pub(super) struct Changes {
    store: Arc<dyn Store>,
    config: Arc<WebhookConfig>,
    reader: Arc<dyn RoomReader>,
    /// Wakes the delivery worker when an event was written.
    written: Arc<Notify>,
    hints: HashMap<String, Hint>,
    next_sweep: Instant,
    /// While the database fails, nothing is tried before this.
    retry_at: Option<Instant>,
    backoff: Backoff,
}

impl Changes {
    pub fn new(
        store: Arc<dyn Store>,
        config: Arc<WebhookConfig>,
        reader: Arc<dyn RoomReader>,
        written: Arc<Notify>,
    ) -> Self {
        Self {
            store,
            config,
            reader,
            written,
            hints: HashMap::new(),
            // The first look, right at start, finds what a killed
            // process left.
            next_sweep: Instant::now(),
            retry_at: None,
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(10)),
        }
    }

    /// Whether `document.changed` is wanted at all.
    fn wanted(&self) -> bool {
        self.config.events.allows(EventKind::DocumentChanged)
    }

    /// A local room applied updates; `state_vector` is its document's now.
    pub fn hint(&mut self, room: String, state_vector: Vec<u8>) {
        let now = Instant::now();
        let hint = self.hints.entry(room).or_insert_with(|| Hint {
            first: now,
            last: now,
            state_vector: Vec::new(),
        });
        hint.last = now;
        hint.state_vector = state_vector;
    }

    pub fn is_hinted(&self, room: &str) -> bool {
        self.hints.contains_key(room)
    }

    pub fn is_idle(&self) -> bool {
        self.hints.is_empty()
    }

    /// Reports what is due: every local room quiet or waiting long enough
    /// (every local room when `all`, at shutdown), then the counts nobody
    /// reported.
    pub async fn report_due(&mut self, all: bool) {
        let now = Instant::now();
        if !self.wanted() || self.retry_at.is_some_and(|at| now < at) {
            return;
        }
        let due: Vec<String> = self
            .hints
            .iter()
            .filter(|(_, hint)| {
                all || now >= hint.last + self.config.debounce
                    || now >= hint.first + self.config.max_wait
            })
            .map(|(room, _)| room.clone())
            .collect();
        for room in due {
            if self.report_room(&room).await.is_err() {
                return;
            }
            // Reported, or nothing counted for it: the edits were
            // reported by another node, or are not committed yet (their
            // count then waits for the sweep).
            self.hints.remove(&room);
        }
        if now >= self.next_sweep {
            self.next_sweep = now + SWEEP_EVERY;
            let _ = self.sweep().await;
        }
    }

    /// Reports `room`'s counted changes now, due or not: an event about
    /// the room goes after them.
    pub async fn report_before_event(&mut self, room: &str) {
        if self.hints.contains_key(room) && self.report_room(room).await.is_ok() {
            self.hints.remove(room);
        }
    }

    async fn report_room(&mut self, room: &str) -> Result<(), StoreError> {
        let found = self
            .store
            .unreported_changes(UnreportedFilter::Room(room), 1)
            .await;
        let found = self.checked(found)?;
        for changes in found {
            self.report(changes).await?;
        }
        Ok(())
    }

    async fn sweep(&mut self) -> Result<(), StoreError> {
        let grace = chrono::Duration::from_std(ORPHAN_GRACE).unwrap_or_default();
        let since = |wait: Duration| {
            chrono::Utc::now() - chrono::Duration::from_std(wait).unwrap_or_default() - grace
        };
        let filter = UnreportedFilter::Due {
            quiet_since: since(self.config.debounce),
            waiting_since: since(self.config.max_wait),
        };
        let found = self.store.unreported_changes(filter, SWEEP_LIMIT).await;
        for changes in self.checked(found)? {
            self.report(changes).await?;
        }
        Ok(())
    }

    /// Writes one room's `document.changed`, taking its count.
    async fn report(&mut self, changes: UnreportedChanges) -> Result<(), StoreError> {
        let state_vector = match self.hints.get(&changes.room) {
            Some(hint) => Some(hint.state_vector.clone()),
            None => match crdt_store::RoomName::from_stored(changes.room.clone()) {
                Ok(room) => self.reader.state_vector(room).await,
                // Not a name this server gives out: reported as it is.
                Err(_) => Some(Vec::new()),
            },
        };
        let Some(state_vector) = state_vector else {
            // The document could not be read now; the count waits.
            return Ok(());
        };
        let event = self
            .with_json(
                Event::new(EventKind::DocumentChanged, &changes.room)
                    .with("updates", changes.updates)
                    .with(
                        "state_vector",
                        base64::engine::general_purpose::STANDARD.encode(&state_vector),
                    ),
            )
            .await;
        let row = new_row(&event, &self.config, chrono::Utc::now());
        let reported = self.store.report_changes(&changes, &row).await;
        if self.checked(reported)? {
            self.written.notify_one();
        }
        Ok(())
    }

    /// Adds `"json"` with `--webhook-include-json`.
    async fn with_json(&self, event: Event) -> Event {
        if !self.config.include_json {
            return event;
        }
        let json = match crdt_store::RoomName::parse(&event.room) {
            Ok(room) => tokio::time::timeout(RENDER_TIMEOUT, self.reader.json(room))
                .await
                .ok()
                .flatten(),
            Err(_) => None,
        };
        event.with("json", json)
    }

    /// Backs off while the database fails.
    fn checked<T>(&mut self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        match result {
            Ok(value) => {
                self.backoff.reset();
                self.retry_at = None;
                Ok(value)
            }
            Err(e) => {
                let delay = self.backoff.next_delay();
                warn!(error = %e, retry_in = ?delay, "reporting document changes failed; retrying");
                self.retry_at = Some(Instant::now() + delay);
                Err(e)
            }
        }
    }
}

/// `event` as an outbox row written at `now`.
pub(super) fn new_row(
    event: &Event,
    config: &WebhookConfig,
    now: chrono::DateTime<chrono::Utc>,
) -> NewWebhookEvent {
    let expires_at =
        now + chrono::Duration::from_std(config.max_age).unwrap_or(chrono::Duration::MAX);
    let id = new_event_id();
    NewWebhookEvent {
        body: event.body(&id, now),
        event_id: id,
        event: event.kind.name().to_string(),
        room: event.room.clone(),
        created_at: now,
        expires_at,
    }
}
