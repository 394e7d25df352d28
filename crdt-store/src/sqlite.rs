//! The SQLite backend: one file (or one in-memory database for tests), for a
//! single server process.
//!
//! SQLite allows one writer at a time. Every writing transaction starts with
//! `BEGIN IMMEDIATE`, which takes the write lock up front (waiting up to the
//! busy timeout for it), so a read-then-write transaction such as
//! `write_snapshot` can never be overtaken between its read and its write.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::merge;
use crate::pack::Packed;
use crate::rows::{
    LatestRow, RoomSummaryRow, SnapshotInfoRow, SnapshotRow, UpdateRow, logged_updates,
};
use crate::sqlite_batch;
use crate::{
    NewSnapshot, PendingUpdate, RoomName, RoomSummary, Snapshot, SnapshotId, SnapshotInfo, Store,
    StoreError, StoredRoom, UpdateId,
};

// `migrations` links to the top-level `migrations/`, inside this package
// so that `cargo package` carries it.
static MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");

/// How long a statement waits for another connection's write lock before
/// failing with `SQLITE_BUSY` (a transient error).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections to a database file: WAL lets readers run beside the one
/// writer, so a few connections are useful; more would only queue on the
/// write lock.
const FILE_POOL_SIZE: u32 = 4;

/// SQLite's own page cache per connection when none is given: a quarter
/// of SQLite's default (2 MB). The operating system caches the file's
/// pages besides it (outside the process), so a small cache costs little;
/// SQLite's default let each pooled connection grow by 2 MB as the
/// database did, which the soak read as the server's memory creeping up.
pub const DEFAULT_CACHE_BYTES: usize = 512 << 10;

/// The room listing's columns; `rooms` and `room_summary` add their own
/// WHERE / ORDER BY.
macro_rules! room_summary_select {
    () => {
        "SELECT r.name, r.updated_at, \
                 (SELECT count(*) FROM snapshots s WHERE s.room = r.name) AS snapshots, \
                 COALESCE((SELECT s.size FROM snapshots s WHERE s.room = r.name \
                           ORDER BY s.id DESC LIMIT 1), 0) \
                 + COALESCE((SELECT sum(length(u.data)) FROM updates u WHERE u.room = r.name), 0) \
                     AS size, \
                 COALESCE((SELECT s.update_count FROM snapshots s WHERE s.room = r.name \
                           ORDER BY s.id DESC LIMIT 1), 0) \
                 + COALESCE((SELECT sum(u.update_count) FROM updates u WHERE u.room = r.name), 0) \
                     AS updates \
             FROM rooms r"
    };
}

/// A [`Store`] in an SQLite database.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens `url`: `sqlite://path` (relative to the working directory; the
    /// file is created if missing) or `sqlite::memory:` (a private database
    /// that lives as long as this store).
    ///
    /// The database runs in WAL mode with `synchronous=FULL`, so a returned
    /// `append` survives a power loss, and with foreign keys enforced.
    ///
    /// # Errors
    /// [`StoreError::Database`] when the URL does not parse or the file
    /// cannot be opened.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with_cache(url, DEFAULT_CACHE_BYTES).await
    }

    /// [`Self::connect`], with at most `cache_bytes` of page cache per
    /// pooled connection of a file (SQLite rounds to whole pages; an
    /// in-memory database is all cache).
    ///
    /// # Errors
    /// As [`Self::connect`].
    pub async fn connect_with_cache(url: &str, cache_bytes: usize) -> Result<Self, StoreError> {
        // A negative cache_size is in KiB rather than pages.
        let cache_kib = (cache_bytes / 1024).max(1);
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT)
            .synchronous(SqliteSynchronous::Full);

        let pool = if is_in_memory(url) {
            // An in-memory database lives as long as its last connection:
            // keep exactly one, forever. WAL does not apply to memory.
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(options)
                .await?
        } else {
            SqlitePoolOptions::new()
                .max_connections(FILE_POOL_SIZE)
                .acquire_timeout(BUSY_TIMEOUT)
                .connect_with(
                    options
                        .journal_mode(SqliteJournalMode::Wal)
                        .pragma("cache_size", format!("-{cache_kib}")),
                )
                .await?
        };
        Ok(Self { pool })
    }
}

/// Whether the URL names an in-memory database, in any of the spellings
/// sqlx accepts (`sqlite::memory:`, `sqlite://:memory:`, `?mode=memory`).
fn is_in_memory(url: &str) -> bool {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    let (database, params) = rest.split_once('?').unwrap_or((rest, ""));
    database == ":memory:" || params.split('&').any(|param| param == "mode=memory")
}

crate::outbox::outbox_methods!(SqliteStore, crate::outbox::claim_sql!(""));

#[async_trait]
impl Store for SqliteStore {
    async fn load(&self, room: &RoomName) -> Result<StoredRoom, StoreError> {
        // A deferred transaction reads one WAL snapshot from its first
        // SELECT on, so a compaction committing in between cannot make the
        // log read miss entries that the snapshot read did not contain.
        let mut tx = self.pool.begin().await?;
        let snapshot: Option<SnapshotRow> = sqlx::query_as(
            "SELECT id, created_at, size, update_count, restored_from, state, state_vector \
             FROM snapshots WHERE room = ?1 ORDER BY id DESC LIMIT 1",
        )
        .bind(room.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let updates: Vec<UpdateRow> = sqlx::query_as(
            "SELECT id, update_count, data FROM updates WHERE room = ?1 ORDER BY id",
        )
        .bind(room.as_str())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;

        Ok(StoredRoom {
            snapshot: snapshot.map(|row| row.into_snapshot(room)),
            updates: logged_updates(room, updates)?,
        })
    }

    async fn append_counted(
        &self,
        batch: &[PendingUpdate],
        count_unreported: bool,
    ) -> Result<Vec<UpdateId>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let now = Utc::now();
        let unreported_at = count_unreported.then(|| crate::outbox::millis(now));
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;

        // One log row per room (see `pack`), written by a few multi-row
        // statements (see `sqlite_batch`).
        let packed = Packed::new(batch);
        let mut row_ids = Vec::with_capacity(packed.packs.len());
        let mut packs = packed.packs.as_slice();
        for size in sqlite_batch::statement_sizes(packs.len()) {
            let (chunk, rest) = packs.split_at(size);
            packs = rest;
            let mut query = sqlx::query(sqlite_batch::upsert_rooms(size));
            for pack in chunk {
                query = query
                    .bind(pack.room.as_str())
                    .bind(now)
                    .bind(now)
                    .bind(pack.update_count)
                    .bind(if count_unreported {
                        pack.update_count
                    } else {
                        0
                    })
                    .bind(unreported_at)
                    .bind(unreported_at);
            }
            query.execute(&mut *tx).await?;

            let mut query = sqlx::query(sqlite_batch::insert_updates(size));
            for pack in chunk {
                query = query
                    .bind(pack.room.as_str())
                    .bind(pack.update_count)
                    .bind(pack.data.as_slice())
                    .bind(now);
            }
            // The rows went in in order, each taking the next id
            // (AUTOINCREMENT, under the write lock), so the last id tells
            // them all. Not `RETURNING`: sqlx hands each returned row over
            // from its SQLite thread separately, a thread wake-up per row.
            let last = query.execute(&mut *tx).await?.last_insert_rowid();
            // `size` is one of `sqlite_batch`'s statement sizes (≤ 256).
            let first = last - size as i64 + 1;
            row_ids.extend(first..=last);
        }
        let ids = packed.update_ids(&row_ids);

        tx.commit().await?;
        Ok(ids)
    }

    async fn write_snapshot(
        &self,
        snapshot: NewSnapshot<'_>,
        keep: usize,
    ) -> Result<SnapshotInfo, StoreError> {
        let room = snapshot.room;
        let now = Utc::now();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;

        sqlx::query(
            "INSERT INTO rooms (name, created_at, updated_at, update_count) \
             VALUES (?1, ?2, ?2, ?3) \
             ON CONFLICT (name) DO UPDATE SET \
                 updated_at = excluded.updated_at, \
                 update_count = rooms.update_count + excluded.update_count",
        )
        .bind(room.as_str())
        .bind(now)
        .bind(snapshot.unlogged_updates.max(0))
        .execute(&mut *tx)
        .await?;

        let latest: Option<LatestRow> = sqlx::query_as(
            "SELECT id, update_count, CASE WHEN id = ?2 THEN NULL ELSE state END AS state \
             FROM snapshots WHERE room = ?1 ORDER BY id DESC LIMIT 1",
        )
        .bind(room.as_str())
        .bind(snapshot.base)
        .fetch_optional(&mut *tx)
        .await?;

        // Delete and read in one statement: exactly the entries deleted are
        // the ones merged. On any later error the transaction rolls back.
        let folded: Vec<UpdateRow> = match snapshot.through {
            Some(through) => sqlx::query_as(
                "DELETE FROM updates WHERE room = ?1 AND id <= ?2 RETURNING id, update_count, data",
            )
            .bind(room.as_str())
            .bind(through)
            .fetch_all(&mut *tx)
            .await?,
            None => Vec::new(),
        };

        let compacted = merge::compact(&snapshot, latest, folded).await?;
        let size = i64::try_from(compacted.merged.state.len()).unwrap_or(i64::MAX);

        let info: SnapshotInfoRow = sqlx::query_as(
            "INSERT INTO snapshots \
                 (room, state, state_vector, size, update_count, restored_from, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
             RETURNING id, created_at, size, update_count, restored_from",
        )
        .bind(room.as_str())
        .bind(compacted.merged.state.as_slice())
        .bind(compacted.merged.state_vector.as_slice())
        .bind(size)
        .bind(compacted.update_count)
        .bind(snapshot.restored_from)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;

        sqlx::query(
            "DELETE FROM snapshots WHERE room = ?1 AND id NOT IN \
                 (SELECT id FROM snapshots WHERE room = ?1 ORDER BY id DESC LIMIT ?2)",
        )
        .bind(room.as_str())
        .bind(merge::keep_limit(keep))
        .execute(&mut *tx)
        .await?;

        tx.commit().await?;
        Ok(info.into_info(room))
    }

    async fn rooms(&self) -> Result<Vec<RoomSummary>, StoreError> {
        let rows: Vec<RoomSummaryRow> =
            sqlx::query_as(concat!(room_summary_select!(), " ORDER BY r.name"))
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(RoomSummary::try_from)
            .collect::<Result<_, _>>()?)
    }

    async fn room_summary(&self, room: &RoomName) -> Result<Option<RoomSummary>, StoreError> {
        let row: Option<RoomSummaryRow> =
            sqlx::query_as(concat!(room_summary_select!(), " WHERE r.name = ?1"))
                .bind(room.as_str())
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(RoomSummary::try_from).transpose()?)
    }

    async fn snapshots(&self, room: &RoomName) -> Result<Vec<SnapshotInfo>, StoreError> {
        let rows: Vec<SnapshotInfoRow> = sqlx::query_as(
            "SELECT id, created_at, size, update_count, restored_from \
             FROM snapshots WHERE room = ?1 ORDER BY id DESC",
        )
        .bind(room.as_str())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|row| row.into_info(room)).collect())
    }

    async fn snapshot(
        &self,
        room: &RoomName,
        id: SnapshotId,
    ) -> Result<Option<Snapshot>, StoreError> {
        let row: Option<SnapshotRow> = sqlx::query_as(
            "SELECT id, created_at, size, update_count, restored_from, state, state_vector \
             FROM snapshots WHERE room = ?1 AND id = ?2",
        )
        .bind(room.as_str())
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|row| row.into_snapshot(room)))
    }

    async fn delete_room(&self, room: &RoomName) -> Result<bool, StoreError> {
        // The log and the snapshots go with the row (ON DELETE CASCADE).
        let deleted = sqlx::query("DELETE FROM rooms WHERE name = ?1")
            .bind(room.as_str())
            .execute(&self.pool)
            .await?;
        Ok(deleted.rows_affected() > 0)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn revoke(&self, revocation: &crate::Revocation) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO revocations (kind, value, until, created_at) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (kind, value) DO UPDATE SET until = excluded.until",
        )
        .bind(revocation.kind.as_str())
        .bind(&revocation.value)
        .bind(revocation.until)
        .bind(revocation.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn revocations(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<crate::Revocation>, StoreError> {
        sqlx::query("DELETE FROM revocations WHERE until <= ?1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        let rows: Vec<crate::rows::RevocationRow> =
            sqlx::query_as("SELECT kind, value, until, created_at FROM revocations")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .filter_map(crate::rows::RevocationRow::into_revocation)
            .collect())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_memory_urls() {
        assert!(is_in_memory("sqlite::memory:"));
        assert!(is_in_memory("sqlite://:memory:"));
        assert!(is_in_memory("sqlite://?mode=memory"));
        assert!(!is_in_memory("sqlite://crdt-hub.db"));
        assert!(!is_in_memory("sqlite://memory.db"));
    }

    #[tokio::test]
    async fn every_pooled_connection_has_the_page_cache_it_was_given() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("cache.db").display());
        let store = SqliteStore::connect_with_cache(&url, 300 << 10)
            .await
            .unwrap();
        // Hold every connection at once, so each is asked.
        let mut held = Vec::new();
        for _ in 0..FILE_POOL_SIZE {
            let mut conn = store.pool.acquire().await.unwrap();
            let (cache,): (i64,) = sqlx::query_as("PRAGMA cache_size")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            assert_eq!(cache, -300, "300 KiB, as SQLite counts a negative size");
            held.push(conn);
        }
        let default = SqliteStore::connect(&url).await.unwrap();
        let (cache,): (i64,) = sqlx::query_as("PRAGMA cache_size")
            .fetch_one(&default.pool)
            .await
            .unwrap();
        assert_eq!(cache, -512);
    }
}
