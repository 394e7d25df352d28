//! Who holds a room: a sorted set `{prefix}:interest:{room}` with one
//! member per node that has the room loaded, scored by when that node's
//! claim runs out (Redis time, ms). A node renews its claim every sync
//! interval and removes it when the room unloads; a node that died drops
//! out when its score passes.
//!
//! This is what lets a node alone on a room skip Redis (it publishes only
//! while the set names another node), and what gives every key of a room a
//! bounded life: each renewal sets the set's and the stream's TTL to
//! [`key_ttl`], the last node to leave deletes them, and a node that dies
//! leaves keys that expire on their own.
//!
//! The same scripts check the room's tombstone (`{prefix}:deleting:{room}`,
//! see `delete`): a room being deleted is never claimed, so the deleting
//! node's wait for the others to let go ends.

use std::time::Duration;

use tokio::time::Instant;

use super::connection::Connection;

/// How long every key of a room lives past its last renewal: five sync
/// intervals, so keys go at most 6 × `--cluster-sync-interval` after the
/// last node unloads (one interval for the renewal in flight), and a
/// claim survives four missed renewals (a slow Redis, a busy node).
pub fn key_ttl(sync_interval: Duration) -> Duration {
    sync_interval * 5
}

/// Claims or renews this node's interest; returns the tombstone flag, how
/// many other nodes hold the room and where the stream ends.
///
/// Under a tombstone no new claim is made, but one held is renewed: its
/// node has closed the room and is writing what it accepted, and the
/// deleting node waits for it to withdraw the claim once that is stored
/// (dropping it here let the rows go first, and those writes bring part of
/// the room back).
///
/// KEYS: interest, tombstone, stream. ARGV: node, ttl (ms).
const RENEW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
if redis.call('EXISTS', KEYS[2]) == 1 then
  if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
    redis.call('ZADD', KEYS[1], 'XX', now + ttl, ARGV[1])
    redis.call('PEXPIRE', KEYS[1], ttl)
  end
  return {1, 0, '0-0'}
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[3], ttl)
local newest = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
local id = '0-0'
if newest[1] then id = newest[1][1] end
return {0, redis.call('ZCARD', KEYS[1]) - 1, id}
";

/// Withdraws this node's interest; the last node to leave deletes the
/// stream (no one reads it any more).
///
/// KEYS: interest, stream. ARGV: node.
const LEAVE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[1], KEYS[2])
end
return 0
";

/// The keys of one room that the scripts touch.
#[derive(Debug, Clone)]
pub struct RoomKeys {
    pub interest: String,
    pub tombstone: String,
    pub stream: String,
}

/// What one renewal of the interest record found.
#[derive(Debug, Clone)]
pub struct Renewed {
    /// The room is being deleted: close it without saving.
    pub deleting: bool,
    /// Other nodes holding the room.
    pub others: usize,
    /// The id of the stream's newest entry (`0-0`: none), read in the same
    /// step as the claim: whatever another node publishes after seeing
    /// this claim comes after it.
    pub stream_end: String,
    /// When the renewal was sent: a message from another node handled
    /// after this instant may postdate what the renewal saw.
    pub asked_at: Instant,
}

/// Claims or renews this node's interest in the room for `ttl`.
///
/// # Errors
/// Redis's.
pub async fn renew(
    redis: &mut Connection,
    keys: &RoomKeys,
    node: &str,
    ttl: Duration,
) -> redis::RedisResult<Renewed> {
    let asked_at = Instant::now();
    let (deleting, others, stream_end): (i64, i64, String) = redis::cmd("EVAL")
        .arg(RENEW)
        .arg(3)
        .arg(&keys.interest)
        .arg(&keys.tombstone)
        .arg(&keys.stream)
        .arg(node)
        .arg(ttl.as_millis().max(1) as u64)
        .query_async(redis)
        .await?;
    Ok(Renewed {
        deleting: deleting == 1,
        others: usize::try_from(others).unwrap_or(0),
        stream_end,
        asked_at,
    })
}

/// Withdraws this node's interest in the room.
///
/// # Errors
/// Redis's (the claim then expires by itself).
pub async fn leave(redis: &mut Connection, keys: &RoomKeys, node: &str) -> redis::RedisResult<()> {
    redis::cmd("EVAL")
        .arg(LEAVE)
        .arg(2)
        .arg(&keys.interest)
        .arg(&keys.stream)
        .arg(node)
        .query_async(redis)
        .await
}

/// Whether this room shares its content with other nodes now, as the room
/// task sees it: it publishes updates, awareness and state vectors only
/// then.
#[derive(Debug, Default)]
pub struct Sharing {
    shared: bool,
    /// When a message from another node was last handled.
    last_remote: Option<Instant>,
}

impl Sharing {
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// Another node published on the room's stream: it holds the room.
    /// Returns whether the room just started sharing.
    pub fn heard_from_another(&mut self, now: Instant) -> bool {
        self.last_remote = Some(now);
        !std::mem::replace(&mut self.shared, true)
    }

    /// A renewal counted the other nodes. None counted, but a message
    /// handled since the renewal was sent, still means sharing: that node
    /// claimed the room after the count. Returns whether the room just
    /// started sharing.
    pub fn counted(&mut self, renewed: &Renewed) -> bool {
        let heard_since = self.last_remote.is_some_and(|t| t >= renewed.asked_at);
        let shared = renewed.others > 0 || heard_since;
        let started = shared && !self.shared;
        self.shared = shared;
        started
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn renewed(others: usize, asked_at: Instant) -> Renewed {
        Renewed {
            deleting: false,
            others,
            stream_end: "0-0".into(),
            asked_at,
        }
    }

    #[test]
    fn alone_until_another_node_shows_up() {
        let start = Instant::now();
        let mut sharing = Sharing::default();
        assert!(!sharing.counted(&renewed(0, start)));
        assert!(!sharing.is_shared());
        assert!(sharing.counted(&renewed(1, start)), "started sharing");
        assert!(!sharing.counted(&renewed(1, start)), "already sharing");
        assert!(!sharing.counted(&renewed(0, start + Duration::from_secs(1))));
        assert!(!sharing.is_shared(), "the other node left");
    }

    #[test]
    fn a_count_taken_before_a_message_does_not_end_sharing() {
        let start = Instant::now();
        let mut sharing = Sharing::default();
        let asked = start;
        // The renewal went out, then another node claimed the room and
        // published; its message is handled before the stale count.
        assert!(sharing.heard_from_another(start + Duration::from_millis(1)));
        assert!(!sharing.counted(&renewed(0, asked)));
        assert!(sharing.is_shared());
        // The next count, sent after that message, is believed.
        assert!(!sharing.counted(&renewed(0, start + Duration::from_secs(1))));
        assert!(!sharing.is_shared());
    }
}
