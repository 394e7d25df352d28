//! What every room is set up with (from the command line).

use std::time::Duration;

use super::presence::PresenceCaps;

/// Settings every room shares.
#[derive(Debug, Clone)]
pub struct RoomConfig {
    /// A room with no connection for this long is saved and unloaded.
    pub idle_timeout: Duration,
    /// Snapshots kept per room as version history.
    pub keep_snapshots: usize,
    /// Commands queued for a room before senders wait.
    pub inbox_capacity: usize,
    /// How long a room waits at shutdown for its connections to leave.
    pub shutdown_grace: Duration,
    /// A changed room writes a compacted snapshot this often...
    pub snapshot_interval: Duration,
    /// ...or as soon as this many updates are not in a snapshot...
    pub snapshot_max_updates: u64,
    /// ...or as soon as this many bytes of updates are not in a snapshot.
    pub snapshot_max_bytes: u64,
    /// Connections one room accepts; more are refused (1013).
    pub max_connections: usize,
    /// Rooms held in memory; joins that would load another are refused.
    pub max_rooms: usize,
    /// Updates that would grow a document past this many bytes (encoded;
    /// approximately: stored size plus updates since) are refused.
    pub max_document_bytes: u64,
    /// The longest a busy room holds a frame for company (see
    /// `FanoutWindow`); zero sends each frame at once.
    pub fanout_window: Duration,
    /// The shortest time between two of a room's awareness messages (see
    /// `PresenceWindow`); zero sends each change at once.
    pub awareness_window: Duration,
    /// What one connection, and the room's connections in all, may hold
    /// of awareness (see [`super::presence`]).
    pub presence: PresenceCaps,
    /// Where rooms and their connections run (see [`super::RoomThreads`]);
    /// none: on the shared pool.
    pub threads: super::RoomThreads,
}

impl Default for RoomConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(60),
            keep_snapshots: 20,
            inbox_capacity: 1024,
            shutdown_grace: Duration::from_secs(5),
            snapshot_interval: Duration::from_secs(30),
            snapshot_max_updates: 10_000,
            snapshot_max_bytes: 16 << 20,
            max_connections: 10_000,
            max_rooms: 100_000,
            max_document_bytes: 256 << 20,
            fanout_window: Duration::from_millis(5),
            awareness_window: Duration::from_millis(20),
            presence: PresenceCaps::default(),
            threads: super::RoomThreads::none(),
        }
    }
}
