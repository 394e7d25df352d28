//! Rows as both backends return them, and their conversion to the public
//! types. The column names are the same in both schemas, so one derive
//! serves Postgres and SQLite.

use chrono::{DateTime, Utc};

use crate::{LoggedUpdate, RoomName, Snapshot, SnapshotId, SnapshotInfo, StoreError, UpdateId};

/// The columns of `snapshots` that make a [`SnapshotInfo`].
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct SnapshotInfoRow {
    pub id: SnapshotId,
    pub created_at: DateTime<Utc>,
    pub size: i64,
    pub update_count: i64,
    pub restored_from: Option<SnapshotId>,
}

impl SnapshotInfoRow {
    pub fn into_info(self, room: &RoomName) -> SnapshotInfo {
        SnapshotInfo {
            id: self.id,
            room: room.clone(),
            created_at: self.created_at,
            size: self.size,
            updates: self.update_count,
            restored_from: self.restored_from,
        }
    }
}

/// A whole row of `snapshots`.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct SnapshotRow {
    #[sqlx(flatten)]
    pub info: SnapshotInfoRow,
    pub state: Vec<u8>,
    pub state_vector: Vec<u8>,
}

impl SnapshotRow {
    pub fn into_snapshot(self, room: &RoomName) -> Snapshot {
        Snapshot {
            info: self.info.into_info(room),
            state: self.state,
            state_vector: self.state_vector,
        }
    }
}

/// What `write_snapshot` needs of the latest stored snapshot: its state only
/// when the writer's state does not already contain it.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct LatestRow {
    pub id: SnapshotId,
    pub update_count: i64,
    pub state: Option<Vec<u8>>,
}

/// A row of `updates`: one update, or several packed (see [`crate::pack`]).
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct UpdateRow {
    pub id: UpdateId,
    pub update_count: i64,
    pub data: Vec<u8>,
}

impl UpdateRow {
    /// The updates the row holds, in append order.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] when the row does not split into them.
    pub fn into_updates(self, room: &RoomName) -> Result<Vec<Vec<u8>>, StoreError> {
        crate::pack::unpack(self.id, self.update_count, self.data).map_err(|bad| {
            StoreError::Corrupt {
                room: room.clone(),
                what: bad.to_string(),
                source: None,
            }
        })
    }
}

/// A room's log as `load` returns it: every update of every row, each with
/// its row's id.
pub(crate) fn logged_updates(
    room: &RoomName,
    rows: Vec<UpdateRow>,
) -> Result<Vec<LoggedUpdate>, StoreError> {
    let mut updates = Vec::with_capacity(rows.len());
    for row in rows {
        let id = row.id;
        updates.extend(
            row.into_updates(room)?
                .into_iter()
                .map(|data| LoggedUpdate { id, data }),
        );
    }
    Ok(updates)
}

/// A row of the room listing.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct RoomSummaryRow {
    pub name: String,
    pub updated_at: DateTime<Utc>,
    pub snapshots: i64,
    pub size: i64,
    pub updates: i64,
}

impl TryFrom<RoomSummaryRow> for crate::RoomSummary {
    type Error = crate::InvalidRoomName;

    fn try_from(row: RoomSummaryRow) -> Result<Self, Self::Error> {
        Ok(crate::RoomSummary {
            room: RoomName::from_stored(row.name)?,
            updated_at: row.updated_at,
            snapshots: row.snapshots,
            size: row.size,
            updates: row.updates,
        })
    }
}

/// A row of `revocations`.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct RevocationRow {
    pub kind: String,
    pub value: String,
    pub until: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

impl RevocationRow {
    /// `None` for a kind this version does not know (a newer server wrote
    /// it): ignored rather than failing every refresh.
    pub fn into_revocation(self) -> Option<crate::Revocation> {
        Some(crate::Revocation {
            kind: crate::RevocationKind::parse(&self.kind)?,
            value: self.value,
            until: self.until,
            created_at: self.created_at,
        })
    }
}
