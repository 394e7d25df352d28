//! What every request handler shares.

use std::sync::Arc;

use crdt_store::Store;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connection::ConnectionConfig;
use crate::persist::Journal;
use crate::room::Rooms;

/// Cheap to clone: everything inside is shared.
#[derive(Clone)]
pub struct App {
    pub rooms: Rooms,
    pub store: Arc<dyn Store>,
    /// The group-commit write path every accepted update goes through.
    pub journal: Journal,
    pub connection: Arc<ConnectionConfig>,
    /// Largest WebSocket message accepted, in bytes (bigger: close 1009).
    pub max_message_size: usize,
    /// Cancelled once when shutdown starts; everything long-lived watches it.
    pub shutdown: CancellationToken,
    /// Tracks connection and room tasks so shutdown can wait for them.
    pub tasks: TaskTracker,
}
