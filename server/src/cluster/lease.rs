//! The compaction lease: `SET {prefix}:lease:{room} NODE NX PX …`, renewed
//! by its holder, so that one node at a time compacts a room. Concurrent
//! compactions are safe (snapshots are CRDT merges), so the lease only saves
//! work: when Redis cannot be asked, a node compacts as if alone. Until its
//! first answer, a room that just loaded does not compact on its own
//! accord: assuming it held the lease let every node that loaded a room
//! compact it during its first sync interval, whoever held the lease.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::connection::Connection;

/// Deletes the lease only if this node holds it.
const RELEASE: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";
/// Extends the lease only if this node holds it.
const RENEW: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end";

/// Whether this node may compact the room, as last learned from Redis.
#[derive(Debug, Clone)]
pub struct Lease {
    held: Arc<AtomicBool>,
}

impl Default for Lease {
    fn default() -> Self {
        // Not held until Redis answers the room's first request for it, or
        // fails to (see `refresh`).
        Self {
            held: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Lease {
    pub fn may_compact(&self) -> bool {
        self.held.load(Ordering::Relaxed)
    }

    /// Takes or renews the lease for `ttl`; records whether this node holds
    /// it (on a Redis error: yes, see the module docs).
    pub async fn refresh(
        &self,
        redis: &mut Connection,
        key: &str,
        node: &str,
        ttl: Duration,
    ) -> redis::RedisResult<bool> {
        let ttl_ms = ttl.as_millis().max(1) as u64;
        let result = async {
            let renewed: i64 = redis::cmd("EVAL")
                .arg(RENEW)
                .arg(1)
                .arg(key)
                .arg(node)
                .arg(ttl_ms)
                .query_async(redis)
                .await?;
            if renewed == 1 {
                return Ok(true);
            }
            let taken: Option<String> = redis::cmd("SET")
                .arg(key)
                .arg(node)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms)
                .query_async(redis)
                .await?;
            Ok(taken.is_some())
        }
        .await;
        self.held
            .store(*result.as_ref().unwrap_or(&true), Ordering::Relaxed);
        result
    }

    /// Gives the lease up if this node holds it (the room unloads).
    pub async fn release(&self, redis: &mut Connection, key: &str, node: &str) {
        let _: redis::RedisResult<i64> = redis::cmd("EVAL")
            .arg(RELEASE)
            .arg(1)
            .arg(key)
            .arg(node)
            .query_async(redis)
            .await;
    }
}
