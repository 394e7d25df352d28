use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::RoomName;

/// Id of a log entry (one or more updates of one room appended together);
/// increases in append order across the whole store.
pub type UpdateId = i64;
/// Id of a snapshot (a version of a room).
pub type SnapshotId = i64;

/// One accepted Yjs v1 update waiting to be appended to the log.
#[derive(Debug, Clone)]
pub struct PendingUpdate {
    pub room: RoomName,
    pub data: Bytes,
}

/// One entry of a room's update log.
#[derive(Debug, Clone)]
pub struct LoggedUpdate {
    pub id: UpdateId,
    pub data: Vec<u8>,
}

/// What [`crate::Store::load`] returns: apply `snapshot.state` then every
/// entry of `updates` in order to rebuild the room.
#[derive(Debug, Default)]
pub struct StoredRoom {
    pub snapshot: Option<Snapshot>,
    pub updates: Vec<LoggedUpdate>,
}

impl StoredRoom {
    pub fn is_empty(&self) -> bool {
        self.snapshot.is_none() && self.updates.is_empty()
    }

    /// Highest log id included, for [`NewSnapshot::through`].
    pub fn last_update_id(&self) -> Option<UpdateId> {
        self.updates.last().map(|u| u.id)
    }
}

/// A snapshot's metadata: one version in the room's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotInfo {
    pub id: SnapshotId,
    pub room: RoomName,
    pub created_at: DateTime<Utc>,
    /// Size of the encoded state, in bytes.
    pub size: i64,
    /// Updates folded into the document since the room was created.
    pub updates: i64,
    /// When this snapshot was written by a restore: the version restored.
    pub restored_from: Option<SnapshotId>,
}

/// A snapshot with its content.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub info: SnapshotInfo,
    /// The whole document as one Yjs v1 update.
    pub state: Vec<u8>,
    /// The state vector of `state`, Yjs v1 encoding.
    pub state_vector: Vec<u8>,
}

/// A snapshot to write (see [`crate::Store::write_snapshot`]).
#[derive(Debug, Clone, Copy)]
pub struct NewSnapshot<'a> {
    pub room: &'a RoomName,
    /// The whole document as one Yjs v1 update.
    pub state: &'a [u8],
    /// The latest snapshot the writer's state already contains, if any:
    /// when it is still the latest, the store need not merge it again.
    ///
    /// Only name a snapshot whose content the writer has applied (e.g. the
    /// one [`crate::Store::load`] returned). The id returned by the writer's
    /// own `write_snapshot` qualifies only when no other process writes the
    /// room: otherwise the store may have merged another writer's content
    /// into that snapshot, and naming it as `base` later would drop that
    /// content. `None` is always safe (the latest snapshot is merged).
    pub base: Option<SnapshotId>,
    /// Log entries of the room with an id up to this one are folded in and
    /// deleted. `None`: fold no log entry. The store merges the entries it
    /// deletes itself, so an entry the writer has not seen is not lost.
    pub through: Option<UpdateId>,
    /// Updates applied by the writer since `base` that are not in the log
    /// (added to the cumulative count).
    pub unlogged_updates: i64,
    /// Set when the snapshot records a restore of that version.
    pub restored_from: Option<SnapshotId>,
}

/// One stored room, for listings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoomSummary {
    pub room: RoomName,
    /// When an update or snapshot was last written.
    pub updated_at: DateTime<Utc>,
    pub snapshots: i64,
    /// Bytes stored: latest snapshot plus pending log entries.
    pub size: i64,
    /// Updates stored: those the latest snapshot holds (its cumulative
    /// count) plus those in log entries after it.
    pub updates: i64,
}

/// What a revocation names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RevocationKind {
    /// Every token of one subject (`sub` claim).
    Sub,
    /// One token (`jti` claim).
    Jti,
}

impl RevocationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationKind::Sub => "sub",
            RevocationKind::Jti => "jti",
        }
    }

    pub fn parse(kind: &str) -> Option<Self> {
        match kind {
            "sub" => Some(RevocationKind::Sub),
            "jti" => Some(RevocationKind::Jti),
            _ => None,
        }
    }
}

/// Access that ends before the token says: no session may use a token of
/// this subject, or this token, until `until`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Revocation {
    pub kind: RevocationKind,
    pub value: String,
    pub until: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}
