//! The group-commit write path: every update a room accepts is appended to
//! the store's update log in batches, one round trip per batch.
//!
//! Rooms hand updates over without waiting (broadcasting never waits for
//! the database). The journal task collects everything that arrives within
//! one flush window and appends it in one `Store::append`. When the
//! database is down it keeps the batch, retries with exponential backoff and
//! full jitter, and keeps collecting; rooms stop accepting new updates once
//! `max_pending_bytes` are waiting, so memory stays bounded and nothing is
//! dropped. On recovery everything pending is written in order.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use crdt_store::{PendingUpdate, RoomName, Store};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::backoff::Backoff;

/// Write-path settings.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// Updates arriving within this window are written together.
    pub flush_interval: Duration,
    /// Bytes of updates that may wait for the database before rooms refuse
    /// new updates.
    pub max_pending_bytes: usize,
    /// Largest batch written in one round trip.
    pub max_batch_bytes: usize,
    pub max_batch_updates: usize,
    /// First and largest retry delay while the database fails.
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// Counts every batch's updates as changes for a `document.changed`
    /// webhook, in the batch's own transaction (set by the app when
    /// webhooks want that event).
    pub count_unreported: bool,
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self {
            flush_interval: Duration::from_millis(50),
            max_pending_bytes: 256 << 20,
            max_batch_bytes: 8 << 20,
            max_batch_updates: 10_000,
            retry_base: Duration::from_millis(100),
            retry_cap: Duration::from_secs(10),
            count_unreported: false,
        }
    }
}

enum Entry {
    Update(PendingUpdate),
    /// Answered `true` by the writer once every update enqueued before it
    /// is written ([`Journal::answer_when_written`]).
    Barrier(oneshot::Sender<bool>),
}

/// The rooms' handle on the write path. Cheap to clone.
#[derive(Clone)]
pub struct Journal {
    entries: mpsc::UnboundedSender<Entry>,
    shared: Arc<Shared>,
}

/// State the journal task and its handles share, also read by `/readyz`
/// and metrics.
struct Shared {
    /// Bytes enqueued and not yet written: the only bound on the unbounded
    /// channel, checked by rooms before they accept an update.
    pending_bytes: AtomicUsize,
    max_pending_bytes: usize,
    written_updates: AtomicU64,
    written_batches: AtomicU64,
    /// Set while the database is failing, with the first failure's time.
    failing: Mutex<Option<Failure>>,
}

#[derive(Debug, Clone)]
pub struct Failure {
    pub since: std::time::Instant,
    pub error: String,
    pub attempts: u32,
}

/// What the journal has done so far, for logs, readiness and metrics.
#[derive(Debug, Clone)]
pub struct JournalStatus {
    pub pending_bytes: usize,
    pub written_updates: u64,
    pub written_batches: u64,
    pub failing: Option<Failure>,
}

/// The update was not accepted: too much is waiting for the database.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("storage write backlog is full ({pending} bytes pending)")]
pub struct Backlogged {
    pub pending: usize,
}

/// Runs the journal task; dropping it does not stop the task, [`JournalTask::drain`] does.
pub struct JournalTask {
    handle: JoinHandle<()>,
    stop: CancellationToken,
}

impl Journal {
    /// Starts the journal task writing into `store`.
    pub fn start(store: Arc<dyn Store>, config: JournalConfig) -> (Journal, JournalTask) {
        let (entries, receiver) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            pending_bytes: AtomicUsize::new(0),
            max_pending_bytes: config.max_pending_bytes,
            written_updates: AtomicU64::new(0),
            written_batches: AtomicU64::new(0),
            failing: Mutex::new(None),
        });
        let stop = CancellationToken::new();
        let writer = Writer {
            store,
            config,
            receiver,
            shared: shared.clone(),
            stop: stop.clone(),
        };
        let handle = tokio::spawn(writer.run());
        (Journal { entries, shared }, JournalTask { handle, stop })
    }

    /// Whether an update of `len` bytes may be accepted now.
    ///
    /// # Errors
    /// [`Backlogged`] when the pending bytes would pass the limit.
    pub fn check_capacity(&self, len: usize) -> Result<(), Backlogged> {
        let pending = self.shared.pending_bytes.load(Ordering::Relaxed);
        if pending.saturating_add(len) > self.shared.max_pending_bytes {
            return Err(Backlogged { pending });
        }
        Ok(())
    }

    /// Queues an accepted update for the log. Never waits.
    pub fn append(&self, room: &RoomName, data: Bytes) {
        let pending = self
            .shared
            .pending_bytes
            .fetch_add(data.len(), Ordering::Relaxed);
        crate::metrics::pending_bytes(pending + data.len());
        let entry = Entry::Update(PendingUpdate {
            room: room.clone(),
            data,
        });
        if let Err(mpsc::error::SendError(Entry::Update(update))) = self.entries.send(entry) {
            // Only after drain(): every room has stopped by then.
            error!(room = %update.room, bytes = update.data.len(), "update arrived after the journal stopped; it is only in memory");
        }
    }

    /// Resolves once every update queued before this call is in storage.
    /// Waits as long as the database is down: callers bound it themselves.
    pub async fn flushed(&self) {
        let (done, wait) = oneshot::channel();
        self.answer_when_written(done);
        // Dropped unanswered: the journal has stopped.
        let _ = wait.await;
    }

    /// Answers `stored` with `true` once every update queued before this
    /// call is in storage. Dropped unanswered (a "no") if the journal has
    /// stopped or gave up at shutdown.
    pub fn answer_when_written(&self, stored: oneshot::Sender<bool>) {
        let _ = self.entries.send(Entry::Barrier(stored));
    }

    pub fn status(&self) -> JournalStatus {
        JournalStatus {
            pending_bytes: self.shared.pending_bytes.load(Ordering::Relaxed),
            written_updates: self.shared.written_updates.load(Ordering::Relaxed),
            written_batches: self.shared.written_batches.load(Ordering::Relaxed),
            failing: self.shared.failing().clone(),
        }
    }
}

impl Shared {
    fn failing(&self) -> std::sync::MutexGuard<'_, Option<Failure>> {
        self.failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl JournalTask {
    /// Writes everything still queued, retrying until `deadline`, and stops.
    /// Returns whether everything was written. Call after every room has
    /// stopped appending.
    pub async fn drain(self, deadline: Duration) -> bool {
        self.stop.cancel();
        match tokio::time::timeout(deadline, self.handle).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                error!(error = %e, "journal task failed");
                false
            }
            Err(_) => {
                error!("journal could not write everything before the shutdown deadline");
                false
            }
        }
    }
}

struct Writer {
    store: Arc<dyn Store>,
    config: JournalConfig,
    receiver: mpsc::UnboundedReceiver<Entry>,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

#[derive(Default)]
struct Batch {
    updates: Vec<PendingUpdate>,
    bytes: usize,
    barriers: Vec<oneshot::Sender<bool>>,
}

impl Writer {
    /// Runs until stopped and everything queued is written.
    async fn run(mut self) {
        let mut carry: Option<Entry> = None;
        // The last batch filled up: more may be queued, and the next batch
        // is written as soon as it is taken, without a window (one window
        // per batch would cap a backlog's drain at one batch per window).
        let mut behind = false;
        loop {
            let first = match carry.take() {
                Some(entry) => entry,
                None => match self.next_entry().await {
                    Some(entry) => entry,
                    None => return, // stopped and empty
                },
            };
            let mut batch = Batch::default();
            if !self.add(&mut batch, first) {
                carry = self.collect(&mut batch, !behind).await;
            }
            behind = carry.is_some() || self.is_full(&batch);
            self.write(batch).await;
        }
    }

    /// The next entry; after `stop`, only what is already queued.
    async fn next_entry(&mut self) -> Option<Entry> {
        if self.stop.is_cancelled() {
            return self.receiver.try_recv().ok();
        }
        tokio::select! {
            entry = self.receiver.recv() => entry,
            () = self.stop.cancelled() => self.receiver.try_recv().ok(),
        }
    }

    /// Adds entries arriving within the flush window (with `wait`) or
    /// already queued (without, and once stopping). Returns an entry that
    /// did not fit the batch.
    ///
    /// Sleeps through the window and then takes what queued up, rather
    /// than waiting on the channel: a task woken for every update (tens of
    /// thousands a second under load) costs a scheduler round and often a
    /// worker thread's wake-up each time, for nothing the batch needs.
    async fn collect(&mut self, batch: &mut Batch, wait: bool) -> Option<Entry> {
        if wait && !self.stop.is_cancelled() {
            let deadline = Instant::now() + self.config.flush_interval;
            tokio::select! {
                () = sleep_until(deadline) => {}
                () = self.stop.cancelled() => {}
            }
        }
        while let Ok(entry) = self.receiver.try_recv() {
            if !self.fits(batch, &entry) {
                return Some(entry);
            }
            if self.add(batch, entry) {
                return None;
            }
        }
        None
    }

    fn fits(&self, batch: &Batch, entry: &Entry) -> bool {
        match entry {
            Entry::Barrier(_) => true,
            Entry::Update(update) => {
                batch.updates.is_empty()
                    || (batch.bytes + update.data.len() <= self.config.max_batch_bytes
                        && batch.updates.len() < self.config.max_batch_updates)
            }
        }
    }

    /// Adds one entry; returns whether the batch is full.
    fn add(&self, batch: &mut Batch, entry: Entry) -> bool {
        match entry {
            Entry::Barrier(done) => batch.barriers.push(done),
            Entry::Update(update) => {
                batch.bytes += update.data.len();
                batch.updates.push(update);
            }
        }
        self.is_full(batch)
    }

    fn is_full(&self, batch: &Batch) -> bool {
        batch.bytes >= self.config.max_batch_bytes
            || batch.updates.len() >= self.config.max_batch_updates
    }

    /// Writes one batch, retrying failures with backoff until it is written
    /// (at shutdown, until `drain`'s deadline gives up on the task).
    async fn write(&mut self, batch: Batch) {
        let mut backoff = Backoff::new(self.config.retry_base, self.config.retry_cap);
        if !batch.updates.is_empty() {
            loop {
                let started = Instant::now();
                let appended = if self.config.count_unreported {
                    self.store.append_unreported(&batch.updates).await
                } else {
                    self.store.append(&batch.updates).await
                };
                match appended {
                    Ok(_) => {
                        crate::metrics::batch_written(batch.updates.len(), started.elapsed());
                        debug!(updates = batch.updates.len(), bytes = batch.bytes, elapsed = ?started.elapsed(), "batch written");
                        self.recovered(backoff.attempts());
                        break;
                    }
                    Err(e) => {
                        crate::metrics::batch_failed();
                        let delay = backoff.next_delay();
                        self.failed(
                            &e,
                            backoff.attempts(),
                            batch.updates.len(),
                            batch.bytes,
                            delay,
                        );
                        if !e.is_transient() && backoff.attempts() == 1 {
                            warn!(error = %e, "storage error that may not be transient; retrying anyway so nothing is dropped");
                        }
                        tokio::time::sleep(delay).await;
                    }
                }
            }
            let pending = self
                .shared
                .pending_bytes
                .fetch_sub(batch.bytes, Ordering::Relaxed)
                - batch.bytes;
            crate::metrics::pending_bytes(pending);
            self.shared
                .written_updates
                .fetch_add(batch.updates.len() as u64, Ordering::Relaxed);
            self.shared.written_batches.fetch_add(1, Ordering::Relaxed);
        }
        for done in batch.barriers {
            let _ = done.send(true);
        }
    }

    fn failed(
        &self,
        error: &crdt_store::StoreError,
        attempts: u32,
        updates: usize,
        bytes: usize,
        delay: Duration,
    ) {
        let mut failing = self.shared.failing();
        let failure = failing.get_or_insert_with(|| Failure {
            since: std::time::Instant::now(),
            error: String::new(),
            attempts: 0,
        });
        failure.error = error.to_string();
        failure.attempts = attempts;
        let pending = self.shared.pending_bytes.load(Ordering::Relaxed);
        warn!(error = %error, cause = ?std::error::Error::source(error), attempts, updates, bytes, pending_bytes = pending, retry_in = ?delay, "writing updates failed; holding them and retrying");
    }

    fn recovered(&self, attempts: u32) {
        let mut failing = self.shared.failing();
        if let Some(failure) = failing.take() {
            info!(attempts, down_for = ?failure.since.elapsed(), "storage writes recovered; pending updates written");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn journal(config: JournalConfig) -> (Journal, JournalTask, Arc<dyn Store>) {
        let store = crdt_store::connect("sqlite::memory:").await.unwrap();
        let (journal, task) = Journal::start(store.clone(), config);
        (journal, task, store)
    }

    fn update(n: u8) -> Bytes {
        Bytes::from(vec![n])
    }

    #[tokio::test]
    async fn updates_within_one_window_are_written_as_one_batch() {
        let (journal, task, store) = journal(JournalConfig {
            flush_interval: Duration::from_millis(100),
            ..JournalConfig::default()
        })
        .await;
        let room = RoomName::parse("window").unwrap();
        for n in 0..5 {
            journal.append(&room, update(n));
        }
        journal.flushed().await;
        let status = journal.status();
        assert_eq!((status.written_batches, status.written_updates), (1, 5));
        let stored = store.load(&room).await.unwrap();
        assert_eq!(stored.updates.len(), 5);
        assert!(task.drain(Duration::from_secs(5)).await);
    }

    /// An acknowledgement is answered by the writer once the updates queued
    /// before it are stored, and not before; after the journal stopped it
    /// is a no.
    #[tokio::test]
    async fn an_answer_comes_once_what_came_before_is_stored() {
        let (journal, task, store) = journal(JournalConfig {
            flush_interval: Duration::from_millis(300),
            ..JournalConfig::default()
        })
        .await;
        let room = RoomName::parse("answers").unwrap();
        journal.append(&room, update(1));
        let (stored, answer) = oneshot::channel();
        journal.answer_when_written(stored);
        let mut answer = Box::pin(answer);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), &mut answer)
                .await
                .is_err(),
            "answered within the flush window"
        );
        assert_eq!(answer.await, Ok(true));
        assert_eq!(store.load(&room).await.unwrap().updates.len(), 1);
        assert!(task.drain(Duration::from_secs(5)).await);
        let (late, answer) = oneshot::channel();
        journal.answer_when_written(late);
        assert!(answer.await.is_err(), "the journal has stopped");
    }

    /// A backlog bigger than one batch is written batch after batch: only
    /// the first waits for the window, or a burst would drain at one batch
    /// per window.
    #[tokio::test]
    async fn a_backlog_is_written_without_a_window_per_batch() {
        let window = Duration::from_secs(1);
        let (journal, task, _store) = journal(JournalConfig {
            flush_interval: window,
            max_batch_updates: 10,
            ..JournalConfig::default()
        })
        .await;
        let room = RoomName::parse("backlog").unwrap();
        let started = Instant::now();
        for n in 0..35 {
            journal.append(&room, update(n));
        }
        journal.flushed().await;
        let status = journal.status();
        assert_eq!((status.written_batches, status.written_updates), (4, 35));
        // One window, not four (the writes themselves take milliseconds).
        assert!(
            started.elapsed() < window * 2,
            "took {:?}",
            started.elapsed()
        );
        assert!(task.drain(Duration::from_secs(5)).await);
    }

    #[tokio::test]
    async fn stopping_writes_what_is_queued_without_waiting_for_the_window() {
        let (journal, task, store) = journal(JournalConfig {
            flush_interval: Duration::from_secs(60),
            ..JournalConfig::default()
        })
        .await;
        let room = RoomName::parse("stop").unwrap();
        journal.append(&room, update(1));
        journal.append(&room, update(2));
        // Well inside the minute-long window.
        assert!(task.drain(Duration::from_secs(5)).await);
        assert_eq!(store.load(&room).await.unwrap().updates.len(), 2);
    }
}
