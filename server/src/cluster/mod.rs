//! Cluster mode (`--redis-url`): several crdt-hub nodes serve the same rooms.
//!
//! Each loaded room claims its interest in `{prefix}:interest:{room}` (see
//! `interest`). While another node holds the room too, a node publishes
//! on the room's Redis Stream, `{prefix}:room:{room}`, every update its
//! room accepts from its own clients or API, the awareness changes of its
//! own clients, and every `--cluster-sync-interval` the room's state
//! vector; alone on a room it publishes nothing. Every node that has
//! the room loaded reads the stream (`XREAD BLOCK`) and hands what other
//! nodes published to its room owner as [`Remote`] commands: updates are
//! applied and broadcast to local peers but never journaled (their origin
//! node persists them) nor published again. A node that sees a state vector
//! lacking some of its content publishes the difference (anti-entropy), so
//! nodes converge even after missing bus messages; a node that starts
//! sharing a room publishes its state vector at once, so it is caught up
//! before it misses anything. A lease (`{prefix}:lease:{room}`) lets one
//! node at a time compact a room. Every key of a room expires a few sync
//! intervals after the last node holding it let go, and a room deleted
//! through any node's API is closed on every node (`delete`).
//!
//! Redis trouble never stops a room: publishing and reading log, back off
//! and retry while the room keeps serving its local clients.
//!
//! The bus runs the same on one Redis and on a Redis Cluster
//! (`--redis-cluster`): every key of a room hashes to one slot, and every
//! command names keys of one room only, so only the connections differ
//! (`connection`).

mod anti_entropy;
mod args;
mod awareness;
mod bus;
mod connection;
mod delete;
mod interest;
mod lease;
mod message;
mod metrics;
mod publisher;
mod reader;
mod revocations;
mod stateless;

use std::sync::Arc;
use std::time::Duration;

use crdt_store::RoomName;
use tokio::sync::mpsc;

use crate::room::RoomCommand;

pub use args::ClusterArgs;
pub use awareness::RemoteAwareness;
pub use bus::{Joined, RemoteOutcome, RoomBus};
pub use delete::DeleteBlocked;
pub use message::{BusMessage, Remote};

/// Settings of cluster mode.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Prefix of every Redis key this node uses.
    pub prefix: String,
    /// How often a room publishes its state vector (anti-entropy), renews
    /// its compaction lease and expires stale remote awareness.
    pub sync_interval: Duration,
    /// Remote awareness entries not renewed for this long are removed.
    pub awareness_timeout: Duration,
    /// Approximate length streams are trimmed to (`XADD … MAXLEN ~`).
    pub stream_maxlen: usize,
    /// Bus messages a room may queue for Redis before it drops new ones
    /// (anti-entropy repairs what was dropped).
    pub publish_queue: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            prefix: "crdt-hub".into(),
            sync_interval: Duration::from_secs(5),
            awareness_timeout: Duration::from_secs(30),
            stream_maxlen: 10_000,
            publish_queue: 4096,
        }
    }
}

/// `{prefix}:{kind}:{=room}`: the braces make a Redis Cluster hash tag, so
/// every key of one room lives in one slot (the scripts touch several at
/// once) while rooms spread over the shards. The `=` keeps the tag from
/// being empty (Redis would hash the whole key) for a name that starts
/// with `}`; whatever braces a name holds, the tag starts at the brace
/// before `=` (the prefix has none, see `args`), so it is the same for
/// each of the room's keys, and distinct names give distinct keys.
fn room_key(prefix: &str, kind: &str, room: &RoomName) -> String {
    format!("{prefix}:{kind}:{{={}}}", room.as_str())
}

/// How a room's publisher and reader wait between failed Redis calls: 50 ms
/// doubling to 5 s, with full jitter so that every room of a node (and of
/// every node) does not retry at the same instant once Redis is back.
fn redis_backoff() -> crate::backoff::Backoff {
    crate::backoff::Backoff::new(Duration::from_millis(50), Duration::from_secs(5))
}

/// This node's membership in a cluster: shared by every room.
pub struct Cluster {
    node: String,
    redis: connection::Redis,
    /// Publishing, scripts and leases (multiplexed; reconnects by itself).
    shared: connection::Connection,
    config: ClusterConfig,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.node)
            .field("prefix", &self.config.prefix)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Prepares the connection to Redis (lazily: a node starts, and serves
    /// locally, while Redis is unreachable). With `redis_cluster`, `url`
    /// names seed nodes of a Redis Cluster (comma-separated). With
    /// `ca_pem`, rediss:// connections trust those CA certificates instead
    /// of the system's.
    ///
    /// # Errors
    /// When a URL is not a valid Redis URL.
    pub fn new(
        url: &str,
        redis_cluster: bool,
        config: ClusterConfig,
        ca_pem: Option<Vec<u8>>,
    ) -> redis::RedisResult<Arc<Self>> {
        let redis = connection::Redis::open(url, redis_cluster, ca_pem)?;
        let shared = redis.shared()?;
        metrics::describe();
        let node = format!("{:016x}", rand::random::<u64>());
        Ok(Arc::new(Self {
            node,
            redis,
            shared,
            config,
        }))
    }

    /// This node's id on the bus.
    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    pub fn stream_key(&self, room: &RoomName) -> String {
        self.key("room", room)
    }

    pub fn lease_key(&self, room: &RoomName) -> String {
        self.key("lease", room)
    }

    /// The keys the interest and deletion scripts touch.
    fn room_keys(&self, room: &RoomName) -> interest::RoomKeys {
        interest::RoomKeys {
            interest: self.key("interest", room),
            tombstone: self.key("deleting", room),
            stream: self.stream_key(room),
        }
    }

    fn key(&self, kind: &str, room: &RoomName) -> String {
        room_key(&self.config.prefix, kind, room)
    }
    /// Connects a room that is being loaded to the bus: starts its reader,
    /// publisher and heartbeat, which stop when the returned bus drops.
    pub fn join_room(
        self: &Arc<Self>,
        room: &RoomName,
        inbox: mpsc::Sender<RoomCommand>,
    ) -> RoomBus {
        RoomBus::start(self.clone(), room, inbox)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The part of a key Redis Cluster hashes (its hash tag rules).
    fn hashed(key: &str) -> &str {
        if let Some(open) = key.find('{')
            && let Some(len) = key[open + 1..].find('}')
            && len > 0
        {
            return &key[open + 1..open + 1 + len];
        }
        key
    }

    #[test]
    fn every_key_of_a_room_hashes_to_one_slot() {
        for name in ["notes", "a}b", "{x}", "a{b", "}", "team/notes:1"] {
            let room = RoomName::parse(name).unwrap();
            let tags: Vec<String> = ["room", "lease", "interest", "deleting"]
                .iter()
                .map(|kind| hashed(&room_key("crdt-hub", kind, &room)).to_string())
                .collect();
            assert!(tags.iter().all(|t| t == &tags[0]), "{name}: {tags:?}");
        }
        let a = room_key("p", "room", &RoomName::parse("a").unwrap());
        let b = room_key("p", "room", &RoomName::parse("b").unwrap());
        assert_ne!(hashed(&a), hashed(&b), "rooms spread over slots");
    }
}
