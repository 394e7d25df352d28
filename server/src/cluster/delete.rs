//! Deleting a room on every node, so that no node's copy in memory brings
//! it back (by a snapshot at unload, or updates its journal writes after
//! the rows are gone).
//!
//! The node serving the `DELETE`:
//! 1. sets the room's tombstone (`{prefix}:deleting:{room}`): from then on
//!    no node claims the room (see `interest`), and a node that loads it
//!    refuses its connections instead of serving it;
//! 2. publishes [`BusMessage::Deleted`] on the room's stream when other
//!    nodes hold the room; each closes it without saving, makes sure its
//!    journal has written what it accepted, and only then withdraws its
//!    claim (a node that misses the message finds the tombstone at its
//!    next renewal);
//! 3. waits until no other node claims the room (or the claims expire:
//!    those nodes died) and then deletes the stored rows;
//! 4. removes the tombstone.
//!
//! A claim still renewed after [`holder_patience`] belongs to a live node
//! that has not written what it accepted (its database may be out of
//! reach). Deleting then would let those writes land after the rows are
//! gone and bring part of the room back, so nothing is deleted: the
//! caller is told to retry, and the tombstone goes.

use std::time::Duration;

use crdt_store::RoomName;
use tokio::time::Instant;
use tracing::warn;

use super::Cluster;
use super::interest::key_ttl;

/// Sets the tombstone, drops this node's claim and tells the others.
///
/// KEYS: tombstone, interest, stream. ARGV: node, ttl (ms).
const BEGIN: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local others = redis.call('ZCARD', KEYS[2])
if others > 0 then
  redis.call('XADD', KEYS[3], '*', 'n', ARGV[1], 'k', 'x', 'd', '')
  redis.call('PEXPIRE', KEYS[3], ARGV[2])
end
return others
";

/// Counts the claims still in force, keeping the tombstone alive.
///
/// KEYS: tombstone, interest. ARGV: node, ttl (ms).
const COUNT: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
return redis.call('ZCARD', KEYS[2])
";

/// How often the deleting node looks whether the others let go.
const POLL: Duration = Duration::from_millis(50);

/// How long the deleting node waits for the others to let go: a dead
/// node's claim has expired by then (it lasts [`key_ttl`] unrenewed), so a
/// claim left is a live node's.
pub fn holder_patience(sync_interval: Duration) -> Duration {
    key_ttl(sync_interval) + sync_interval
}

/// Why [`Cluster::delete_everywhere`] did not clear the way.
#[derive(Debug, thiserror::Error)]
pub enum DeleteBlocked {
    /// The other nodes cannot be told, so the rows must not be deleted
    /// under them.
    #[error("Redis did not answer")]
    Redis(#[from] redis::RedisError),
    /// Nodes still holding the room kept their claims: they have not
    /// written what they accepted.
    #[error("{others} node(s) holding the room have not let go")]
    StillHeld { others: i64 },
}

impl Cluster {
    /// Steps 1–3 of the module docs: returns once no other node holds
    /// `room`, so its stored rows can be deleted. Call [`Self::deleted`]
    /// after deleting them (also when that failed, or when this refused
    /// because others still hold the room).
    ///
    /// # Errors
    /// [`DeleteBlocked`]: Redis cannot be asked, or a live node kept its
    /// claim for longer than `holder_patience` (six sync intervals).
    pub async fn delete_everywhere(&self, room: &RoomName) -> Result<(), DeleteBlocked> {
        let keys = self.room_keys(room);
        // A claim lasts at most this long unrenewed; the tombstone outlives
        // every claim made before it was set.
        let ttl = key_ttl(self.config.sync_interval);
        let ttl_ms = ttl.as_millis().max(1) as u64;
        let mut redis = self.shared.clone();
        let mut others: i64 = redis::cmd("EVAL")
            .arg(BEGIN)
            .arg(3)
            .arg(&keys.tombstone)
            .arg(&keys.interest)
            .arg(&keys.stream)
            .arg(&self.node)
            .arg(ttl_ms)
            .query_async(&mut redis)
            .await?;
        let deadline = Instant::now() + holder_patience(self.config.sync_interval);
        while others > 0 {
            if Instant::now() >= deadline {
                warn!(room = %room, others, "nodes holding the room did not let go in time; deleting nothing");
                return Err(DeleteBlocked::StillHeld { others });
            }
            tokio::time::sleep(POLL).await;
            others = redis::cmd("EVAL")
                .arg(COUNT)
                .arg(2)
                .arg(&keys.tombstone)
                .arg(&keys.interest)
                .arg(&self.node)
                .arg(ttl_ms)
                .query_async(&mut redis)
                .await?;
        }
        Ok(())
    }

    /// Step 4: the room may be claimed (and created afresh) again.
    pub async fn deleted(&self, room: &RoomName) {
        let keys = self.room_keys(room);
        let mut redis = self.shared.clone();
        let removed: redis::RedisResult<()> = redis::cmd("DEL")
            .arg(&keys.tombstone)
            .query_async(&mut redis)
            .await;
        if let Err(e) = removed {
            // It expires by itself within a few sync intervals.
            warn!(room = %room, error = %e, "removing the deletion tombstone failed");
        }
    }
}
