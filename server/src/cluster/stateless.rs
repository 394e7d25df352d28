//! A stateless message posted to a node that does not hold the room: put
//! on the room's stream for the nodes that do (a node holding the room
//! publishes through its bus instead, see `bus`).

use crdt_store::RoomName;

use super::Cluster;
use super::interest::key_ttl;

/// Publishes when some node claims the room; returns how many do.
///
/// KEYS: interest, stream. ARGV: node, payload, ttl (ms).
const PUBLISH: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local holders = redis.call('ZCARD', KEYS[1])
if holders > 0 then
  redis.call('XADD', KEYS[2], '*', 'n', ARGV[1], 'k', 't', 'd', ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
return holders
";

impl Cluster {
    /// Sends `payload` to the Hocuspocus providers of `room` on the nodes
    /// holding it; returns how many nodes that is.
    ///
    /// # Errors
    /// When Redis cannot be asked.
    pub async fn publish_stateless(
        &self,
        room: &RoomName,
        payload: &str,
    ) -> redis::RedisResult<usize> {
        let keys = self.room_keys(room);
        let ttl_ms = key_ttl(self.config.sync_interval).as_millis().max(1) as u64;
        let mut redis = self.shared.clone();
        redis::cmd("EVAL")
            .arg(PUBLISH)
            .arg(2)
            .arg(&keys.interest)
            .arg(&keys.stream)
            .arg(&self.node)
            .arg(payload)
            .arg(ttl_ms)
            .query_async(&mut redis)
            .await
    }
}
