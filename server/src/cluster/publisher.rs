//! Writes a room's bus messages to its stream, batching whatever queued
//! while the previous batch was in flight into one pipeline. On a Redis
//! error the batch is dropped (anti-entropy repairs it once Redis is back)
//! and the publisher backs off; the room never waits for it. Every batch
//! renews the stream's TTL: a stream that XADD creates has none, and no
//! key of a room may outlive it (see `interest`).

use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::BusMessage;
use super::connection::Connection;

/// Most entries sent in one pipeline.
const BATCH: usize = 256;

pub struct Publisher {
    pub redis: Connection,
    pub key: String,
    pub node: String,
    pub maxlen: usize,
    /// The stream's TTL ([`super::interest::key_ttl`]).
    pub ttl: std::time::Duration,
}

impl Publisher {
    /// Runs until every sender of `queue` is gone and the queue is drained.
    pub async fn run(mut self, mut queue: mpsc::Receiver<BusMessage>) {
        let mut batch = Vec::with_capacity(BATCH);
        let mut backoff = super::redis_backoff();
        while queue.recv_many(&mut batch, BATCH).await > 0 {
            let mut pipe = redis::pipe();
            let count = batch.len() as u64;
            let mut kinds: Vec<&'static str> = Vec::with_capacity(batch.len());
            for message in batch.drain(..) {
                kinds.push(message.kind());
                pipe.cmd("XADD")
                    .arg(&self.key)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(self.maxlen)
                    .arg("*")
                    .arg("n")
                    .arg(&self.node)
                    .arg("k")
                    .arg(message.kind())
                    .arg("d")
                    .arg(message.payload())
                    .ignore();
            }
            pipe.cmd("PEXPIRE")
                .arg(&self.key)
                .arg(self.ttl.as_millis().max(1) as u64)
                .ignore();
            match pipe.query_async::<()>(&mut self.redis).await {
                Ok(()) => {
                    backoff.reset();
                    for kind in kinds {
                        super::metrics::published(kind, 1);
                    }
                }
                Err(e) => {
                    super::metrics::redis_error();
                    super::metrics::dropped(count);
                    let delay = backoff.next_delay();
                    warn!(error = %e, retry_in = ?delay, "publishing to Redis failed; dropped (anti-entropy repairs it)");
                    tokio::time::sleep(delay).await;
                }
            }
        }
        debug!("publisher stopped");
    }
}
