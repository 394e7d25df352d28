//! Storage for crdt-hub rooms: an append-only log of Yjs updates plus
//! compacted snapshots, behind one [`Store`] trait with a Postgres and an
//! SQLite implementation.
//!
//! The crate knows nothing about sockets. It knows just enough about Yjs to
//! compact safely: a snapshot is always the CRDT merge of everything it
//! replaces, so two writers can never erase each other's updates.

mod cover;
mod error;
mod merge;
mod outbox;
mod pack;
mod room_name;
mod rows;
mod types;
mod unreported;

pub mod postgres;
pub mod sqlite;
mod sqlite_batch;

use std::sync::Arc;

use async_trait::async_trait;

pub use error::StoreError;
pub use outbox::{
    NewWebhookEvent, Redeliver, WebhookDelivery, WebhookRecord, WebhookRetry, WebhookState,
};
pub use room_name::{InvalidRoomName, MAX_ROOM_NAME_BYTES, RoomName};
pub use types::{
    LoggedUpdate, NewSnapshot, PendingUpdate, Revocation, RevocationKind, RoomSummary, Snapshot,
    SnapshotId, SnapshotInfo, StoredRoom, UpdateId,
};
pub use unreported::{UnreportedChanges, UnreportedFilter};

/// What the rooms need from storage.
///
/// Every method is one logical operation; the implementations make each one
/// atomic (one transaction) so that a crash between two statements never
/// leaves a room half-written.
#[async_trait]
pub trait Store: WebhookOutbox + Send + Sync + 'static {
    /// Everything stored for `room`: the latest snapshot (if any) and every
    /// log entry not yet folded into a snapshot, in append order.
    /// An unknown room is an empty [`StoredRoom`], not an error.
    async fn load(&self, room: &RoomName) -> Result<StoredRoom, StoreError>;

    /// Appends a batch of updates, possibly for many rooms, in one
    /// transaction and as few round trips as the backend allows (the
    /// group-commit path calls this once per flush window). Returns the ids
    /// given to the updates, in the order of `batch`: a room's updates in
    /// one batch go into one log entry and share its id, and a later
    /// append's ids are greater.
    async fn append(&self, batch: &[PendingUpdate]) -> Result<Vec<UpdateId>, StoreError> {
        self.append_counted(batch, false).await
    }

    /// [`Store::append`] that also counts the batch's updates as changes
    /// not yet reported in a `document.changed` webhook, in the same
    /// transaction: once the edits are committed, so is the knowledge that
    /// they are to be reported (see [`WebhookOutbox::report_changes`]).
    async fn append_unreported(
        &self,
        batch: &[PendingUpdate],
    ) -> Result<Vec<UpdateId>, StoreError> {
        self.append_counted(batch, true).await
    }

    /// What both appends do: [`Store::append_unreported`] when
    /// `count_unreported`, else [`Store::append`].
    async fn append_counted(
        &self,
        batch: &[PendingUpdate],
        count_unreported: bool,
    ) -> Result<Vec<UpdateId>, StoreError>;

    /// Writes a compacted snapshot, in one transaction:
    /// 1. the new snapshot's state is the CRDT merge of `snapshot.state`,
    ///    the latest stored snapshot (when it is not `snapshot.base`), and
    ///    every log entry of the room with id <= `snapshot.through`;
    /// 2. those log entries are deleted;
    /// 3. all but the newest `keep` snapshots of the room are pruned
    ///    (`keep` is at least 1).
    ///
    /// Merging instead of overwriting is what makes concurrent writers safe:
    /// a log entry is only ever deleted by the transaction that folded it
    /// into a snapshot.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] when `snapshot.state`, the stored snapshot
    /// to merge or a log entry to fold does not decode as a Yjs v1 update;
    /// then nothing is changed.
    async fn write_snapshot(
        &self,
        snapshot: NewSnapshot<'_>,
        keep: usize,
    ) -> Result<SnapshotInfo, StoreError>;

    /// Every stored room, by name.
    async fn rooms(&self) -> Result<Vec<RoomSummary>, StoreError>;

    /// One stored room, or `None` when nothing is stored under that name.
    async fn room_summary(&self, room: &RoomName) -> Result<Option<RoomSummary>, StoreError>;

    /// The room's snapshots (its version history), newest first.
    async fn snapshots(&self, room: &RoomName) -> Result<Vec<SnapshotInfo>, StoreError>;

    /// One snapshot with its state, or `None` when the room has no snapshot
    /// with that id.
    async fn snapshot(
        &self,
        room: &RoomName,
        id: SnapshotId,
    ) -> Result<Option<Snapshot>, StoreError>;

    /// Deletes the room, its log and its snapshots. Returns whether anything
    /// was stored.
    async fn delete_room(&self, room: &RoomName) -> Result<bool, StoreError>;

    /// Records a revocation, or moves the `until` of the same one.
    async fn revoke(&self, revocation: &Revocation) -> Result<(), StoreError>;

    /// The revocations still in force at `now` (and forgets the others).
    async fn revocations(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<Revocation>, StoreError>;

    /// Applies the embedded migrations that are not applied yet.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// One cheap round trip, for readiness checks.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Which backend this is, for logs: `"postgres"` or `"sqlite"`.
    fn backend(&self) -> &'static str;
}

/// The webhook outbox (`--webhook-url`): events stored before they are
/// acknowledged and delivered from the database, so a crash loses none.
/// Part of every [`Store`].
#[async_trait]
pub trait WebhookOutbox: Send + Sync + 'static {
    /// Puts webhook events in the outbox, in order (an event id already
    /// there is left as it is).
    async fn enqueue_webhooks(&self, events: &[NewWebhookEvent]) -> Result<(), StoreError>;

    /// Claims up to `limit` events due at `now` for delivery until
    /// `lease_until`, counting an attempt for each: at most one per room,
    /// the room's oldest pending event, so each room's events go out in
    /// order. An event leased to another claimer is not claimed again
    /// before its lease ends (a claimer that died leaves its events to the
    /// others then); with Postgres, concurrent claimers never get the
    /// same event. Sorted by id.
    async fn claim_webhooks(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        lease_until: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> Result<Vec<WebhookDelivery>, StoreError>;

    /// Marks a claimed event delivered.
    async fn webhook_delivered(
        &self,
        id: i64,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), StoreError>;

    /// Records a failed attempt: retried at a time, or dead-lettered.
    async fn webhook_failed(
        &self,
        id: i64,
        error: &str,
        retry: WebhookRetry,
    ) -> Result<(), StoreError>;

    /// Deletes delivered events finished before `delivered_before` and
    /// dead-lettered ones finished before `dead_before`; returns how many.
    async fn prune_webhooks(
        &self,
        delivered_before: chrono::DateTime<chrono::Utc>,
        dead_before: chrono::DateTime<chrono::Utc>,
    ) -> Result<u64, StoreError>;

    /// The newest `limit` events, or only the failed ones (dead-lettered,
    /// or pending after a failed attempt), newest first.
    async fn webhooks(
        &self,
        failed_only: bool,
        limit: usize,
    ) -> Result<Vec<WebhookRecord>, StoreError>;

    /// Puts events back in line, due at `now` and expiring at
    /// `expires_at`; returns how many.
    async fn redeliver_webhooks(
        &self,
        which: Redeliver,
        now: chrono::DateTime<chrono::Utc>,
        expires_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<u64, StoreError>;

    /// Rooms with changes not yet reported (see
    /// [`Store::append_unreported`]), at most `limit`.
    async fn unreported_changes(
        &self,
        filter: UnreportedFilter<'_>,
        limit: usize,
    ) -> Result<Vec<UnreportedChanges>, StoreError>;

    /// Puts `event`, the `document.changed` that reports `changes`, in the
    /// outbox and takes `changes.updates` off the room's count, in one
    /// transaction. When another reporter took that count first (the
    /// room's generation moved on), writes nothing and returns `false`.
    /// Edits counted after `changes` was read stay counted, waiting from
    /// `event.created_at` on.
    async fn report_changes(
        &self,
        changes: &UnreportedChanges,
        event: &NewWebhookEvent,
    ) -> Result<bool, StoreError>;

    /// Events not yet delivered nor dead-lettered.
    async fn pending_webhooks(&self) -> Result<i64, StoreError>;
}

/// Opens the store named by `url` (`postgres://…`, `postgresql://…` or
/// `sqlite://path`, `sqlite::memory:`), creating an SQLite file if needed,
/// and runs the embedded migrations.
///
/// # Errors
/// [`StoreError::UnsupportedUrl`] for another scheme; otherwise the
/// connection or migration error.
pub async fn connect(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    connect_with(url, &StoreOptions::default()).await
}

/// How a store uses memory; backends ignore what is not theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// SQLite's page cache per pooled connection.
    pub sqlite_cache_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            sqlite_cache_bytes: sqlite::DEFAULT_CACHE_BYTES,
        }
    }
}

/// [`connect`] with `options`.
///
/// # Errors
/// As [`connect`].
pub async fn connect_with(url: &str, options: &StoreOptions) -> Result<Arc<dyn Store>, StoreError> {
    let store = open(url, options).await?;
    store.migrate().await?;
    Ok(store)
}

/// Like [`connect`], but leaves the schema alone (for `crdt-hub migrate`
/// to report what it does, and for tests of the migration itself).
///
/// # Errors
/// As [`connect`].
pub async fn connect_without_migrating(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    open(url, &StoreOptions::default()).await
}

/// The backend `url` names, opened with `options`.
async fn open(url: &str, options: &StoreOptions) -> Result<Arc<dyn Store>, StoreError> {
    match scheme(url) {
        Some("postgres" | "postgresql") => {
            Ok(Arc::new(postgres::PostgresStore::connect(url).await?))
        }
        Some("sqlite") => Ok(Arc::new(
            sqlite::SqliteStore::connect_with_cache(url, options.sqlite_cache_bytes).await?,
        )),
        _ => Err(StoreError::UnsupportedUrl(redact(url))),
    }
}

fn scheme(url: &str) -> Option<&str> {
    url.split_once(':').map(|(scheme, _)| scheme)
}

/// A database URL with any password replaced, safe for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(start), Some(at)) if at > start => {
            let userinfo = &url[start + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..start + 3], user, &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("sqlite://crdt-hub.db"), "sqlite://crdt-hub.db");
    }
}
