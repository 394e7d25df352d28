//! The Postgres backend, safe for several server processes sharing one
//! database.
//!
//! Writers of one room are serialised by the lock on the room's row in
//! `rooms`: `append` and `write_snapshot` both begin by upserting that row,
//! which holds its lock until commit. Everything else runs at READ COMMITTED,
//! except `load`, which reads at REPEATABLE READ so that its two reads see
//! one moment.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::merge;
use crate::pack::Packed;
use crate::rows::{
    LatestRow, RoomSummaryRow, SnapshotInfoRow, SnapshotRow, UpdateRow, logged_updates,
};
use crate::{
    NewSnapshot, PendingUpdate, RoomName, RoomSummary, Snapshot, SnapshotId, SnapshotInfo, Store,
    StoreError, StoredRoom, UpdateId,
};

// `migrations` links to the top-level `migrations/`, inside this package
// so that `cargo package` carries it.
static MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

/// Upper bound on connections per server process.
const MAX_CONNECTIONS: u32 = 10;

/// How long getting a connection may take, including opening a new one: a
/// database that is down or unreachable fails an operation with a transient
/// error after this, instead of hanging.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Appends a batch in one statement, hence one round trip and one implicit
/// transaction. The batch comes packed, one log row per room (see `pack`):
/// `$1` holds the rooms, distinct and in name order, `$2` the number of
/// updates in each row and `$3` the rows' data.
///
/// 1. `touched` upserts each room, in name order (so two batches lock rows
///    in the same order and cannot deadlock), taking the row lock.
/// 2. `ids` draws the ids only after that (its filter depends on
///    `touched`), so per room, ids are drawn in the order the row lock is
///    granted: an entry never becomes visible before an older one of its room.
/// 3. `numbered` gives the i-th row the i-th smallest id, and the final
///    SELECT returns them in batch order (`ord`) — not relying on the order
///    of `RETURNING`, which Postgres does not promise.
const APPEND_SQL: &str = "
WITH batch AS (
    SELECT room, update_count, data, ord
    FROM UNNEST($1::text[], $2::bigint[], $3::bytea[])
        WITH ORDINALITY AS b (room, update_count, data, ord)
),
touched AS (
    INSERT INTO rooms AS r
        (name, updated_at, update_count, unreported_updates, unreported_first_at, unreported_last_at)
    SELECT room, now(), update_count,
        CASE WHEN $4 THEN update_count ELSE 0 END,
        CASE WHEN $4 THEN $5::bigint END,
        CASE WHEN $4 THEN $5::bigint END
    FROM batch ORDER BY room
    ON CONFLICT (name) DO UPDATE SET
        updated_at = EXCLUDED.updated_at,
        update_count = r.update_count + EXCLUDED.update_count,
        unreported_updates = r.unreported_updates + EXCLUDED.unreported_updates,
        unreported_first_at = CASE WHEN r.unreported_updates > 0
            THEN r.unreported_first_at ELSE EXCLUDED.unreported_first_at END,
        unreported_last_at = COALESCE(EXCLUDED.unreported_last_at, r.unreported_last_at)
    RETURNING 1
),
ids AS (
    SELECT nextval(pg_get_serial_sequence('updates', 'id')) AS id
    FROM batch
    WHERE (SELECT count(*) FROM touched) > 0
),
numbered AS (
    SELECT b.room, b.update_count, b.data, b.ord, i.id
    FROM batch b
    JOIN (SELECT id, row_number() OVER (ORDER BY id) AS ord FROM ids) i USING (ord)
),
inserted AS (
    INSERT INTO updates (id, room, update_count, data)
    SELECT id, room, update_count, data FROM numbered
)
SELECT id FROM numbered ORDER BY ord";

/// The room listing's columns; `rooms` and `room_summary` add their own
/// WHERE / ORDER BY.
macro_rules! room_summary_select {
    () => {
        "SELECT r.name, r.updated_at, \
                 (SELECT count(*) FROM snapshots s WHERE s.room = r.name) AS snapshots, \
                 (COALESCE((SELECT s.size FROM snapshots s WHERE s.room = r.name \
                            ORDER BY s.id DESC LIMIT 1), 0) \
                  + COALESCE((SELECT sum(length(u.data)) FROM updates u \
                              WHERE u.room = r.name), 0))::bigint AS size, \
                 (COALESCE((SELECT s.update_count FROM snapshots s WHERE s.room = r.name \
                            ORDER BY s.id DESC LIMIT 1), 0) \
                  + COALESCE((SELECT sum(u.update_count) FROM updates u \
                              WHERE u.room = r.name), 0))::bigint AS updates \
             FROM rooms r"
    };
}

/// A [`Store`] in a Postgres database.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://…` or `postgresql://…`) and opens one
    /// connection to check it.
    ///
    /// # Errors
    /// [`StoreError::Database`] when the URL does not parse or no connection
    /// could be opened within a few seconds (transient, see
    /// [`StoreError::is_transient`], when the server is down).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)?.application_name("crdt-hub");
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }
}

crate::outbox::outbox_methods!(
    PostgresStore,
    crate::outbox::claim_sql!("FOR UPDATE SKIP LOCKED")
);

#[async_trait]
impl Store for PostgresStore {
    async fn load(&self, room: &RoomName) -> Result<StoredRoom, StoreError> {
        // REPEATABLE READ: both reads see the same snapshot of the database,
        // so a compaction committing between them cannot hide log entries.
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        let snapshot: Option<SnapshotRow> = sqlx::query_as(
            "SELECT id, created_at, size, update_count, restored_from, state, state_vector \
             FROM snapshots WHERE room = $1 ORDER BY id DESC LIMIT 1",
        )
        .bind(room.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let updates: Vec<UpdateRow> = sqlx::query_as(
            "SELECT id, update_count, data FROM updates WHERE room = $1 ORDER BY id",
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
        let packed = Packed::new(batch);
        let rooms: Vec<&str> = packed.packs.iter().map(|p| p.room.as_str()).collect();
        let counts: Vec<i64> = packed.packs.iter().map(|p| p.update_count).collect();
        let data: Vec<&[u8]> = packed.packs.iter().map(|p| p.data.as_slice()).collect();
        let row_ids: Vec<UpdateId> = sqlx::query_scalar(APPEND_SQL)
            .bind(rooms)
            .bind(counts)
            .bind(data)
            .bind(count_unreported)
            .bind(crate::outbox::millis(chrono::Utc::now()))
            .fetch_all(&self.pool)
            .await?;
        debug_assert_eq!(row_ids.len(), packed.packs.len());
        Ok(packed.update_ids(&row_ids))
    }

    async fn write_snapshot(
        &self,
        snapshot: NewSnapshot<'_>,
        keep: usize,
    ) -> Result<SnapshotInfo, StoreError> {
        let room = snapshot.room;
        let mut tx = self.pool.begin().await?;

        // First the room's row lock (creating the row if needed): another
        // compaction or append of this room waits here until we commit, and
        // every statement after this one sees what they committed before.
        sqlx::query(
            "INSERT INTO rooms AS r (name, update_count) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET \
                 updated_at = now(), \
                 update_count = r.update_count + EXCLUDED.update_count",
        )
        .bind(room.as_str())
        .bind(snapshot.unlogged_updates.max(0))
        .execute(&mut *tx)
        .await?;

        let latest: Option<LatestRow> = sqlx::query_as(
            "SELECT id, update_count, CASE WHEN id = $2 THEN NULL ELSE state END AS state \
             FROM snapshots WHERE room = $1 ORDER BY id DESC LIMIT 1",
        )
        .bind(room.as_str())
        .bind(snapshot.base)
        .fetch_optional(&mut *tx)
        .await?;

        // Delete and read in one statement: exactly the entries deleted are
        // the ones merged. On any later error the transaction rolls back.
        let folded: Vec<UpdateRow> = match snapshot.through {
            Some(through) => sqlx::query_as(
                "DELETE FROM updates WHERE room = $1 AND id <= $2 RETURNING id, update_count, data",
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
                 (room, state, state_vector, size, update_count, restored_from) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             RETURNING id, created_at, size, update_count, restored_from",
        )
        .bind(room.as_str())
        .bind(compacted.merged.state.as_slice())
        .bind(compacted.merged.state_vector.as_slice())
        .bind(size)
        .bind(compacted.update_count)
        .bind(snapshot.restored_from)
        .fetch_one(&mut *tx)
        .await?;

        sqlx::query(
            "DELETE FROM snapshots WHERE room = $1 AND id NOT IN \
                 (SELECT id FROM snapshots WHERE room = $1 ORDER BY id DESC LIMIT $2)",
        )
        .bind(room.as_str())
        .bind(merge::keep_limit(keep))
        .execute(&mut *tx)
        .await?;

        tx.commit().await?;
        Ok(info.into_info(room))
    }

    async fn rooms(&self) -> Result<Vec<RoomSummary>, StoreError> {
        // COLLATE "C": byte order, the same as SQLite's and as `RoomName`'s.
        let rows: Vec<RoomSummaryRow> = sqlx::query_as(concat!(
            room_summary_select!(),
            " ORDER BY r.name COLLATE \"C\""
        ))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(RoomSummary::try_from)
            .collect::<Result<_, _>>()?)
    }

    async fn room_summary(&self, room: &RoomName) -> Result<Option<RoomSummary>, StoreError> {
        let row: Option<RoomSummaryRow> =
            sqlx::query_as(concat!(room_summary_select!(), " WHERE r.name = $1"))
                .bind(room.as_str())
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(RoomSummary::try_from).transpose()?)
    }

    async fn snapshots(&self, room: &RoomName) -> Result<Vec<SnapshotInfo>, StoreError> {
        let rows: Vec<SnapshotInfoRow> = sqlx::query_as(
            "SELECT id, created_at, size, update_count, restored_from \
             FROM snapshots WHERE room = $1 ORDER BY id DESC",
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
             FROM snapshots WHERE room = $1 AND id = $2",
        )
        .bind(room.as_str())
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|row| row.into_snapshot(room)))
    }

    async fn delete_room(&self, room: &RoomName) -> Result<bool, StoreError> {
        // The log and the snapshots go with the row (ON DELETE CASCADE).
        let deleted = sqlx::query("DELETE FROM rooms WHERE name = $1")
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
            "INSERT INTO revocations (kind, value, until, created_at) VALUES ($1, $2, $3, $4) \
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
        sqlx::query("DELETE FROM revocations WHERE until <= $1")
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
        "postgres"
    }
}
