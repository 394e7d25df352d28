//! Prometheus metrics, through the `metrics` facade and its Prometheus
//! exporter. Names follow Prometheus conventions (`crdt_hub_…_total`,
//! `_seconds`, `_bytes`); every metric is described once at start.
//!
//! Metrics recorded by `crdt-hub-core` (updates applied, held updates,
//! ignored awareness entries) are described here too, with the rest.
//!
//! Hot paths record per batch, not per delivery: one frame fanned out to a
//! thousand peers is one fan-out observation, and a connection counts what
//! it wrote once per socket flush.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{
    Counter, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge,
    histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The metrics every frame or update touches, registered once: each
/// `counter!` call hashes its name and labels and looks them up in the
/// registry (six per update: about 4 % of the server's samples in B4). Set by
/// [`install`] once the recorder is there; before that (unit tests, fuzz
/// targets) nothing is recorded, as the no-op recorder would. The two an
/// applied update records (`crdt_hub_updates_applied_total`,
/// `crdt_hub_update_apply_seconds`) are `crdt-hub-core`'s, registered by
/// [`install`] the same way.
static HOT: OnceLock<Hot> = OnceLock::new();

struct Hot {
    /// Messages and bytes received, by [`KINDS`].
    received: [(Counter, Counter); KINDS.len()],
    /// Messages and bytes sent, by [`KINDS`].
    sent: [(Counter, Counter); KINDS.len()],
    fanout_seconds: Histogram,
    fanout_hold_seconds: Histogram,
}

impl Hot {
    fn register() -> Self {
        let by_kind = |messages: &'static str, bytes: &'static str| {
            KINDS.map(|kind| {
                (
                    counter!(messages, "type" => kind),
                    counter!(bytes, "type" => kind),
                )
            })
        };
        Self {
            received: by_kind(
                "crdt_hub_messages_received_total",
                "crdt_hub_received_bytes_total",
            ),
            sent: by_kind("crdt_hub_messages_sent_total", "crdt_hub_sent_bytes_total"),
            fanout_seconds: histogram!("crdt_hub_fanout_seconds"),
            fanout_hold_seconds: histogram!("crdt_hub_fanout_hold_seconds"),
        }
    }
}

/// Installs the process-wide recorder (once; later calls return the same
/// handle) and describes every metric.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let latency = [
                0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05,
                0.1, 0.25, 0.5, 1.0, 2.5,
            ];
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("crdt_hub_flush_batch_updates".into()),
                        &[
                            1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0,
                        ],
                    )
                })
                .expect("bucket lists are not empty")
                .install_recorder()
                .unwrap_or_else(|_| {
                    // Another recorder is installed (a test harness): keep a
                    // private one so /metrics still renders.
                    PrometheusBuilder::new().build_recorder().handle()
                });
            describe();
            HOT.get_or_init(Hot::register);
            crdt_hub_core::metrics::register();
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                })
                .ok();
            handle
        })
        .clone()
}

fn describe() {
    describe_gauge!("crdt_hub_connections", "Open WebSocket connections.");
    describe_counter!(
        "crdt_hub_webhook_deliveries_total",
        "Webhook attempts by result: delivered (2xx), status (another status), timeout, error (connection, TLS, HTTP); and events dead_lettered (past --webhook-max-age) or dropped (the database unreachable for too long)."
    );
    describe_gauge!(
        "crdt_hub_webhook_pending",
        "Webhook events in the outbox not yet delivered nor dead-lettered (every node's)."
    );
    describe_histogram!(
        "crdt_hub_webhook_delivery_seconds",
        Unit::Seconds,
        "Duration of webhook attempts."
    );
    describe_counter!(
        "crdt_hub_connections_total",
        "WebSocket connections accepted."
    );
    describe_counter!(
        "crdt_hub_connections_closed_total",
        "Connections closed by the server, by close code and reason: one reason per kind of close (slow_consumer, rate_limited, protocol_error, ...; docs/protocol.md), and write_timeout under code 1006 for a socket dropped because it took no bytes for --write-timeout."
    );
    describe_gauge!("crdt_hub_rooms", "Rooms loaded in memory.");
    describe_counter!(
        "crdt_hub_messages_received_total",
        "Messages received from clients, by type."
    );
    describe_counter!(
        "crdt_hub_received_bytes_total",
        Unit::Bytes,
        "Bytes of messages received from clients, by type."
    );
    describe_counter!(
        "crdt_hub_messages_sent_total",
        "Messages sent to clients, by type."
    );
    describe_counter!(
        "crdt_hub_sent_bytes_total",
        Unit::Bytes,
        "Bytes sent to clients, by type."
    );
    describe_counter!(
        "crdt_hub_updates_applied_total",
        "Document updates applied to rooms."
    );
    describe_histogram!(
        "crdt_hub_update_apply_seconds",
        Unit::Seconds,
        "Time to apply one update, or a burst of one peer's updates together, to a room's document."
    );
    describe_histogram!(
        "crdt_hub_fanout_seconds",
        Unit::Seconds,
        "From reading an update off a socket to queuing it for the last peer of its room, or to holding it for company (then see crdt_hub_fanout_hold_seconds)."
    );
    describe_histogram!(
        "crdt_hub_fanout_hold_seconds",
        Unit::Seconds,
        "How long a busy room held a batch of frames for company before sending it (--fanout-window); one per held batch."
    );
    describe_histogram!(
        "crdt_hub_flush_batch_updates",
        "Updates written per group-commit batch."
    );
    describe_histogram!(
        "crdt_hub_flush_seconds",
        Unit::Seconds,
        "Time to write one group-commit batch."
    );
    describe_gauge!(
        "crdt_hub_pending_bytes",
        Unit::Bytes,
        "Bytes of accepted updates not yet written to storage."
    );
    describe_counter!(
        "crdt_hub_flush_failures_total",
        "Failed attempts to write a batch."
    );
    describe_counter!("crdt_hub_snapshots_total", "Compacted snapshots written.");
    describe_gauge!(
        "crdt_hub_held_updates",
        "Parts of updates waiting in memory for what they build on (the rest of each update is in the document already)."
    );
    describe_counter!(
        "crdt_hub_held_evicted_total",
        "Held parts of updates let go from memory past the per-room caps (storage keeps them; they load again with the room)."
    );
    describe_gauge!(
        "crdt_hub_document_bytes",
        Unit::Bytes,
        "Encoded size of the documents in memory (stored size at load plus updates applied since)."
    );
    describe_counter!(
        "crdt_hub_rate_limited_total",
        "Requests and messages refused or delayed by rate limits, by kind."
    );
    describe_counter!(
        "crdt_hub_awareness_ignored_total",
        "Awareness entries from clients ignored (not forwarded), by reason: not_owner (another connection's client id), client_cap (--max-awareness-clients), room_bytes (--max-awareness-room-bytes)."
    );
    describe_counter!(
        "crdt_hub_auth_refusals_total",
        "Requests refused by authentication, by reason."
    );
    describe_counter!(
        "crdt_hub_accept_errors_total",
        "Failed accepts on the listening socket (mostly out of file descriptors); the loop backs off."
    );
    describe_gauge!(
        "crdt_hub_body_bytes_in_flight",
        Unit::Bytes,
        "Request body bytes reserved by requests being read or handled (--max-body-bytes-in-flight)."
    );
}

pub fn connection_opened() {
    counter!("crdt_hub_connections_total").increment(1);
    gauge!("crdt_hub_connections").increment(1.0);
}

/// A connection ended; `closed` is why, when the server closed it (with a
/// close frame, or by dropping a socket whose writes timed out).
pub fn connection_closed(closed: Option<crate::close::CloseReason>) {
    gauge!("crdt_hub_connections").decrement(1.0);
    if let Some(closed) = closed {
        counter!(
            "crdt_hub_connections_closed_total",
            "code" => closed.code.to_string(),
            "reason" => closed.label
        )
        .increment(1);
    }
}

pub fn room_loaded() {
    gauge!("crdt_hub_rooms").increment(1.0);
}

pub fn room_unloaded() {
    gauge!("crdt_hub_rooms").decrement(1.0);
}

pub fn message_received(frame: &[u8]) {
    if let Some(hot) = HOT.get() {
        let (messages, bytes) = &hot.received[kind_index(frame)];
        messages.increment(1);
        bytes.increment(frame.len() as u64);
    }
}

/// Message types, as labelled; frames the server sends hold one message,
/// and a received frame counts as its first.
const KINDS: [&str; 6] = [
    "sync_step1",
    "sync_step2",
    "update",
    "awareness",
    "awareness_query",
    "other",
];

fn kind_index(frame: &[u8]) -> usize {
    match frame {
        [0, 0, ..] => 0,
        [0, 1, ..] => 1,
        [0, 2, ..] => 2,
        [1, ..] => 3,
        [3, ..] => 4,
        _ => 5,
    }
}

/// Counts frames written in one flush, grouped by type.
#[derive(Default)]
pub struct SentFrames {
    counts: [(u64, u64); KINDS.len()],
}

impl SentFrames {
    pub fn add(&mut self, frame: &[u8]) {
        let counts = &mut self.counts[kind_index(frame)];
        counts.0 += 1;
        counts.1 += frame.len() as u64;
    }

    pub fn record(self) {
        let Some(hot) = HOT.get() else { return };
        for ((messages, bytes), (sent_messages, sent_bytes)) in self.counts.iter().zip(&hot.sent) {
            if *messages > 0 {
                sent_messages.increment(*messages);
                sent_bytes.increment(*bytes);
            }
        }
    }
}

pub fn fanout_latency(elapsed: Duration) {
    if let Some(hot) = HOT.get() {
        hot.fanout_seconds.record(elapsed.as_secs_f64());
    }
}

/// A batch of frames held for company went out after `held`.
pub fn fanout_held(held: Duration) {
    if let Some(hot) = HOT.get() {
        hot.fanout_hold_seconds.record(held.as_secs_f64());
    }
}

pub fn batch_written(updates: usize, elapsed: Duration) {
    histogram!("crdt_hub_flush_batch_updates").record(updates as f64);
    histogram!("crdt_hub_flush_seconds").record(elapsed.as_secs_f64());
}

pub fn batch_failed() {
    counter!("crdt_hub_flush_failures_total").increment(1);
}

pub fn pending_bytes(bytes: usize) {
    gauge!("crdt_hub_pending_bytes").set(bytes as f64);
}

pub fn snapshot_written() {
    counter!("crdt_hub_snapshots_total").increment(1);
}

/// Adjusts the in-memory document size by `delta` bytes.
pub fn document_bytes(delta: i64) {
    if delta >= 0 {
        gauge!("crdt_hub_document_bytes").increment(delta as f64);
    } else {
        gauge!("crdt_hub_document_bytes").decrement((-delta) as f64);
    }
}

pub fn rate_limited(kind: &'static str) {
    counter!("crdt_hub_rate_limited_total", "kind" => kind).increment(1);
}

pub fn auth_refused(reason: &'static str) {
    counter!("crdt_hub_auth_refusals_total", "reason" => reason).increment(1);
}

pub fn accept_failed() {
    counter!("crdt_hub_accept_errors_total").increment(1);
}

pub fn body_bytes_reserved(bytes: usize) {
    gauge!("crdt_hub_body_bytes_in_flight").increment(bytes as f64);
}

pub fn body_bytes_released(bytes: usize) {
    gauge!("crdt_hub_body_bytes_in_flight").decrement(bytes as f64);
}
