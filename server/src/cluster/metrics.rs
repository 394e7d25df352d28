//! Metrics of cluster mode (names `crdt_hub_cluster_…`).

use metrics::{counter, describe_counter};

pub fn describe() {
    describe_counter!(
        "crdt_hub_cluster_published_total",
        "Bus messages written to Redis, by kind (update, awareness, state, query)."
    );
    describe_counter!(
        "crdt_hub_cluster_received_total",
        "Bus messages from other nodes handed to rooms, by kind."
    );
    describe_counter!(
        "crdt_hub_cluster_dropped_total",
        "Bus messages not published (queue full or Redis failing); anti-entropy repairs them."
    );
    describe_counter!(
        "crdt_hub_cluster_redis_errors_total",
        "Failed Redis operations (publish, read, connect)."
    );
}

fn kind_label(kind: &str) -> &'static str {
    match kind {
        "u" => "update",
        "a" => "awareness",
        "s" => "state",
        "q" => "query",
        "x" => "deleted",
        _ => "other",
    }
}

pub fn published(kind: &str, count: u64) {
    counter!("crdt_hub_cluster_published_total", "kind" => kind_label(kind)).increment(count);
}

pub fn received(kind: &str) {
    counter!("crdt_hub_cluster_received_total", "kind" => kind_label(kind)).increment(1);
}

pub fn dropped(count: u64) {
    counter!("crdt_hub_cluster_dropped_total").increment(count);
}

pub fn redis_error() {
    counter!("crdt_hub_cluster_redis_errors_total").increment(1);
}
