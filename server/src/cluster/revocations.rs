//! Revocations made through one node reach the others at once: the node
//! publishes on `{prefix}:revocations` after storing one, and every node
//! subscribed there reloads the revocations from the database (which stays
//! the truth; the message carries nothing). Without Redis, or when a
//! message is lost, `--revocation-refresh` still picks them up.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::Cluster;
use super::connection::Notice;

impl Cluster {
    fn revocations_channel(&self) -> String {
        format!("{}:revocations", self.config.prefix)
    }

    /// Tells the other nodes that a revocation was stored.
    pub async fn announce_revocation(&self) {
        let mut redis = self.shared.clone();
        let published: redis::RedisResult<i64> = redis::cmd("PUBLISH")
            .arg(self.revocations_channel())
            .arg(&self.node)
            .query_async(&mut redis)
            .await;
        if let Err(e) = published {
            super::metrics::redis_error();
            warn!(error = %e, "cannot tell the other nodes of a revocation; they pick it up at their next refresh");
        }
    }

    /// Calls `reload` whenever another node announces a revocation, until
    /// `stop`; reconnects with backoff while Redis is away.
    pub async fn watch_revocations(
        self: Arc<Self>,
        reload: impl Fn() + Send + 'static,
        stop: CancellationToken,
    ) {
        let mut backoff = super::redis_backoff();
        let channel = self.revocations_channel();
        loop {
            let mut subscription = tokio::select! {
                () = stop.cancelled() => return,
                result = self.redis.subscribe(&channel) => match result {
                    Ok(subscription) => subscription,
                    Err(e) => {
                        super::metrics::redis_error();
                        let delay = backoff.next_delay();
                        debug!(error = %e, retry_in = ?delay, "cannot subscribe to revocations");
                        tokio::select! {
                            () = stop.cancelled() => return,
                            () = tokio::time::sleep(delay) => continue,
                        }
                    }
                },
            };
            backoff.reset();
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    notice = subscription.next() => match notice {
                        // Whatever was announced while unsubscribed.
                        Some(Notice::Subscribed) => reload(),
                        Some(Notice::Message(from)) => {
                            if from != self.node {
                                reload();
                            }
                        }
                        None => break, // connection lost: subscribe again
                    },
                }
            }
        }
    }
}
