//! `crdt_hub_webhook_*`: attempts by result, their duration, and the
//! events not yet delivered (described with the rest in `crate::metrics`).

use std::time::Duration;

use metrics::{counter, gauge, histogram};

/// One attempt: `delivered`, `status` (not 2xx), `timeout` or `error`.
pub fn attempt(result: &'static str, elapsed: Duration) {
    counter!("crdt_hub_webhook_deliveries_total", "result" => result).increment(1);
    histogram!("crdt_hub_webhook_delivery_seconds").record(elapsed.as_secs_f64());
}

pub fn dead_lettered() {
    counter!("crdt_hub_webhook_deliveries_total", "result" => "dead_lettered").increment(1);
}

/// Events in the outbox not yet delivered nor dead-lettered (all nodes').
pub fn pending(events: i64) {
    gauge!("crdt_hub_webhook_pending").set(events as f64);
}

/// An event dropped before it reached the outbox (too many waiting).
pub fn dropped() {
    counter!("crdt_hub_webhook_deliveries_total", "result" => "dropped").increment(1);
}
