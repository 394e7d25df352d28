//! What the HTTP API, the snapshot tools and other nodes ask of a room,
//! besides connections joining and sending frames.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use crdt_store::{SnapshotInfo, StoreError};
use tokio::sync::broadcast;
use yrs::{Doc, StateVector};

use crate::protocol::DocUpdate;

/// Computes an update from the room's current document (a restore, a
/// migration): `Ok(None)` when there is nothing to change.
pub type Transform = Box<dyn FnOnce(&Doc) -> Result<Option<Vec<u8>>, TransformError> + Send>;

/// Why a [`Transform`] could not compute its update; the caller's own
/// error, carried back to it whole.
pub type TransformError = Box<dyn std::error::Error + Send + Sync>;

/// A request to a room, answered through a oneshot.
pub enum RoomRequest {
    Info,
    /// The document as one update; with a state vector, only what it lacks.
    State(Option<StateVector>),
    /// The document's content as JSON, one entry per top-level type.
    Json,
    /// Applies an update from outside (HTTP API, import) and broadcasts it.
    Apply(DocUpdate),
    /// Computes an update from the current document and applies it.
    Transform(Transform),
    /// Writes a compacted snapshot now and answers with it; with
    /// `restored_from`, the snapshot records a restore of that version.
    Snapshot {
        restored_from: Option<crdt_store::SnapshotId>,
    },
    /// A feed of every update applied from now on.
    Subscribe,
    /// Closes every connection and stops the room without saving, so that
    /// its stored data can be deleted.
    Delete,
    /// A stateless message for every Hocuspocus provider in the room (it
    /// is not part of the document, nor stored).
    Stateless(String),
}

/// Answers, one variant per request.
#[derive(Debug)]
pub enum RoomReply {
    Info(RoomInfo),
    State(Vec<u8>),
    Json(serde_json::Value),
    /// What an update from outside did.
    Applied(Accepted),
    /// The update (or a transform's) could not be computed or applied;
    /// nothing changed.
    Failed(RequestFailed),
    Snapshot(Result<SnapshotInfo, SnapshotFailed>),
    Events(Subscription),
    Deleted,
    /// How many peers a stateless message was queued for.
    Delivered(usize),
}

/// Why an update from outside (or a transform's) changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum RequestFailed {
    #[error("the update does not apply: {0}")]
    DoesNotApply(#[source] yrs::error::UpdateError),
    #[error("the computed update does not decode: {0}")]
    ComputedUpdateInvalid(#[source] yrs::encoding::read::Error),
    #[error("{0}")]
    Transform(#[source] TransformError),
    /// yrs panicked on it: the room closed its peers and reloads.
    #[error("the update broke the document; the room reloads")]
    Poisoned,
}

/// Why a requested snapshot was not written. Cloned to every caller
/// waiting for the same snapshot.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SnapshotFailed {
    #[error("writing the snapshot failed: {0}")]
    Store(#[source] Arc<StoreError>),
    /// The task writing it panicked or was cancelled.
    #[error("the snapshot task failed: {0}")]
    Task(#[source] Arc<tokio::task::JoinError>),
}

/// What applying an update from outside did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// It brought something new (stored, and sent to the peers as far as
    /// it integrated).
    pub new: bool,
    /// Part of it waits for what it builds on (see `room::held`): what
    /// came before that part is in the document, the rest is stored and
    /// integrates once what it needs arrives.
    pub waiting: bool,
}

/// A room as the API shows it.
#[derive(Debug, Clone)]
pub struct RoomInfo {
    pub connections: usize,
    /// Size of the whole document encoded as one Yjs v1 update.
    pub document_bytes: usize,
    /// Yjs v1 encoding.
    pub state_vector: Vec<u8>,
    /// Updates applied since the last snapshot.
    pub unsaved_updates: u64,
    /// When an update was last applied in this process.
    pub last_change: Option<SystemTime>,
    /// Parts of updates waiting for what they build on, and their bytes.
    pub held_updates: usize,
    pub held_bytes: usize,
}

/// What event feeds (SSE) are told.
#[derive(Debug, Clone)]
pub enum RoomEvent {
    /// One applied update.
    Update {
        /// `{room generation}-{sequence}`: increases by one per update
        /// within one loaded lifetime of the room.
        id: String,
        update: Bytes,
    },
    /// A Hocuspocus provider's stateless message (not part of the
    /// document).
    Stateless { payload: std::sync::Arc<str> },
}

/// A live feed of a room's updates.
#[derive(Debug)]
pub struct Subscription {
    pub events: broadcast::Receiver<RoomEvent>,
    /// The id of the last event before the feed starts: a consumer whose
    /// Last-Event-ID differs has missed something and must refetch.
    pub last_id: String,
}
