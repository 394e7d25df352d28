//! Puts the rooms' events into the outbox. Rooms hand notices over without
//! waiting (a channel); this task writes events in batches, retrying while
//! the database fails, and has [`Changes`] report `document.changed` from
//! the counts the journal commits with the edits.
//!
//! The window: an event is durable once written here, within a tick of
//! its notice (at most 100 ms); a `kill -9` inside that window loses it.
//! Not so `document.changed`: its count is committed with the edits, and
//! the next node to look (this one after a restart) reports it. At
//! shutdown every local room's changes are reported before the task ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crdt_store::Store;
use tokio::sync::{Notify, mpsc};
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use super::WebhookConfig;
use super::changes::{Changes, new_row};
use super::events::Event;
use crate::backoff::Backoff;

/// What a room reports.
pub(super) enum Notice {
    Event(Event),
    /// Updates were applied; `state_vector` is the document's after them.
    Changed {
        room: String,
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

pub(super) struct Recorder {
    pub store: Arc<dyn Store>,
    pub config: Arc<WebhookConfig>,
    pub notices: mpsc::UnboundedReceiver<Notice>,
    /// Notices sent and not yet taken (the channel's only bound).
    pub queued: Arc<AtomicUsize>,
    /// Wakes the delivery worker when something was written.
    pub written: Arc<Notify>,
    pub changes: Changes,
    pub shutdown: CancellationToken,
}

impl Recorder {
    pub async fn run(mut self) {
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
                        // Changes made before this event are reported first.
                        if self.changes.is_hinted(&event.room) {
                            self.write(std::mem::take(&mut ready)).await;
                            self.changes.report_before_event(&event.room).await;
                        }
                        ready.push(event);
                    }
                    Notice::Changed { room, state_vector } => {
                        self.changes.hint(room, state_vector);
                    }
                }
            }
            self.write(std::mem::take(&mut ready)).await;
            self.changes.report_due(stopping).await;
            if stopping && self.queued.load(Ordering::Relaxed) == 0 {
                // Rooms report their last changes and `room.unloaded` as
                // they stop, after shutdown began: each holds a handle
                // (sharing `queued`), so wait for them, within reason (and
                // for a database that fails, not forever).
                let reporters = Arc::strong_count(&self.queued);
                let waited = stopped_at.get_or_insert_with(Instant::now).elapsed();
                if (reporters <= IDLE_HOLDERS && self.changes.is_idle()) || waited >= SHUTDOWN_WAIT
                {
                    return;
                }
            }
        }
    }

    /// Writes events, retrying with backoff until they are in (at
    /// shutdown, a few times).
    async fn write(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let now = chrono::Utc::now();
        let rows: Vec<_> = events
            .iter()
            .map(|event| new_row(event, &self.config, now))
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
