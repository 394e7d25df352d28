//! The delivery worker: claims due events from the outbox and POSTs them,
//! several rooms at once and each room's events in order (the claim hands
//! out a room's oldest pending event only, and only once it is done).
//! Nothing here is on a room's path: a receiver that hangs holds one
//! delivery slot for `--webhook-timeout`, never a room.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crdt_store::{Store, WebhookDelivery, WebhookRetry};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::WebhookConfig;
use super::client::AttemptError;
use super::signature::sign;
use crate::backoff::Backoff;

/// How often the worker looks for due events without being woken (retries
/// come due on their own; other nodes write events too).
const POLL_EVERY: Duration = Duration::from_millis(250);

/// How often delivered and expired rows are pruned, and the pending gauge
/// refreshed.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(10);

/// Delivered events stay this long, for `crdt-hub webhooks list`.
const KEEP_DELIVERED: Duration = Duration::from_secs(3600);

pub(super) struct Worker {
    pub store: Arc<dyn Store>,
    pub config: Arc<WebhookConfig>,
    pub written: Arc<Notify>,
    pub shutdown: CancellationToken,
}

impl Worker {
    pub async fn run(self) {
        let mut running: JoinSet<()> = JoinSet::new();
        let mut housekeeping = Instant::now();
        let mut store_backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        loop {
            if self.shutdown.is_cancelled() {
                // Deliveries in flight are dropped; their lease runs out and
                // the next claimer (a restart, another node) sends them.
                running.abort_all();
                return;
            }
            if housekeeping.elapsed() >= HOUSEKEEPING_EVERY {
                housekeeping = Instant::now();
                self.housekeeping().await;
            }
            let free = self.config.concurrency.saturating_sub(running.len());
            let mut claimed = 0;
            if free > 0 {
                let now = chrono::Utc::now();
                let lease = now + chrono::Duration::from_std(self.lease()).unwrap_or_default();
                match self.store.claim_webhooks(now, lease, free).await {
                    Ok(deliveries) => {
                        store_backoff.reset();
                        claimed = deliveries.len();
                        for delivery in deliveries {
                            running.spawn(deliver(
                                self.store.clone(),
                                self.config.clone(),
                                delivery,
                            ));
                        }
                    }
                    Err(e) => {
                        let delay = store_backoff.next_delay();
                        warn!(error = %e, retry_in = ?delay, "claiming webhook events failed");
                        tokio::select! {
                            () = sleep(delay) => {}
                            () = self.shutdown.cancelled() => {}
                        }
                        continue;
                    }
                }
            }
            if claimed == free && free > 0 {
                continue; // there may be more due right now
            }
            tokio::select! {
                Some(_) = running.join_next() => {}
                () = self.written.notified() => {}
                () = sleep(POLL_EVERY) => {}
                () = self.shutdown.cancelled() => {}
            }
        }
    }

    /// Longer than any attempt may take: an attempt still running when its
    /// lease ends could be sent twice.
    fn lease(&self) -> Duration {
        self.config.timeout * 2 + Duration::from_secs(5)
    }

    async fn housekeeping(&self) {
        let now = chrono::Utc::now();
        let keep = |d: Duration| now - chrono::Duration::from_std(d).unwrap_or_default();
        match self
            .store
            .prune_webhooks(keep(KEEP_DELIVERED), keep(self.config.max_age))
            .await
        {
            Ok(pruned) if pruned > 0 => debug!(pruned, "pruned finished webhook events"),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "pruning webhook events failed"),
        }
        if let Ok(pending) = self.store.pending_webhooks().await {
            super::metrics::pending(pending);
        }
    }
}

/// One attempt at one event, and its outcome recorded.
async fn deliver(store: Arc<dyn Store>, config: Arc<WebhookConfig>, delivery: WebhookDelivery) {
    let mut headers = vec![
        ("x-crdt-hub-event", delivery.event.clone()),
        ("x-crdt-hub-delivery", delivery.event_id.clone()),
    ];
    if let Some(secret) = &config.secret {
        headers.push((
            "x-crdt-hub-signature",
            sign(secret.as_bytes(), delivery.body.as_bytes()),
        ));
    }
    let started = Instant::now();
    let body = Bytes::from(delivery.body.clone());
    let result = config.endpoint.post(&headers, body, config.timeout).await;
    super::metrics::attempt(
        result
            .as_ref()
            .map_or_else(AttemptError::label, |_| "delivered"),
        started.elapsed(),
    );
    let now = chrono::Utc::now();
    let recorded = match result {
        Ok(status) => {
            debug!(event = %delivery.event, id = %delivery.event_id, status, "webhook delivered");
            store.webhook_delivered(delivery.id, now).await
        }
        Err(e) => {
            let retry = if now >= delivery.expires_at {
                warn!(event = %delivery.event, id = %delivery.event_id, attempts = delivery.attempts, error = %e, "webhook dead-lettered after --webhook-max-age");
                super::metrics::dead_lettered();
                WebhookRetry::DeadLetter(now)
            } else {
                let delay = retry_delay(&config, delivery.attempts);
                debug!(event = %delivery.event, id = %delivery.event_id, attempts = delivery.attempts, error = %e, retry_in = ?delay, "webhook attempt failed");
                WebhookRetry::At(now + chrono::Duration::from_std(delay).unwrap_or_default())
            };
            store
                .webhook_failed(delivery.id, &e.to_string(), retry)
                .await
        }
    };
    if let Err(e) = recorded {
        // The lease runs out and the event is sent again: at least once.
        warn!(error = %e, id = %delivery.event_id, "recording a webhook attempt failed");
    }
}

/// Exponential backoff with full jitter, by the attempts made so far.
fn retry_delay(config: &WebhookConfig, attempts: i64) -> Duration {
    let mut backoff = Backoff::new(config.retry_base, config.retry_cap);
    let mut delay = backoff.next_delay();
    // Past the cap every draw is alike; 32 doublings reach any cap.
    for _ in 1..attempts.clamp(1, 32) {
        delay = backoff.next_delay();
    }
    delay
}
