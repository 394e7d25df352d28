//! The metrics this crate records, through the `metrics` facade: a call
//! does nothing until a recorder is installed (the server's, at start), so
//! unit tests and fuzz targets record nothing. The server's `metrics.rs`
//! installs the recorder and describes every metric, these included, so
//! `/metrics` reads the same wherever a metric is recorded.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Histogram, counter, gauge, histogram};

/// The metrics every update touches, registered once: each `counter!` call
/// hashes its name and labels and looks them up in the registry. Set by
/// [`register`] once the recorder is there; before that nothing is
/// recorded, as the no-op recorder would.
static HOT: OnceLock<Hot> = OnceLock::new();

struct Hot {
    updates_applied: Counter,
    update_apply_seconds: Histogram,
}

/// Registers the per-update metrics with the installed recorder; call once
/// it is installed (later calls do nothing).
pub fn register() {
    HOT.get_or_init(|| Hot {
        updates_applied: counter!("crdt_hub_updates_applied_total"),
        update_apply_seconds: histogram!("crdt_hub_update_apply_seconds"),
    });
}

/// `updates` applied in `elapsed` (several of a peer's burst go in together).
pub(crate) fn update_applied(elapsed: Duration, updates: u64) {
    if let Some(hot) = HOT.get() {
        hot.updates_applied.increment(updates);
        hot.update_apply_seconds.record(elapsed.as_secs_f64());
    }
}

/// A held update let go from memory past the caps (storage keeps it).
pub(crate) fn held_update_evicted() {
    counter!("crdt_hub_held_evicted_total").increment(1);
}

/// Parts of updates held, waiting for what they build on, in every room.
pub(crate) fn held_updates(delta: i64) {
    let gauge = gauge!("crdt_hub_held_updates");
    if delta >= 0 {
        gauge.increment(delta as f64);
    } else {
        gauge.decrement(delta.unsigned_abs() as f64);
    }
}

/// Awareness entries a room ignored for `reason` (`not_owner`,
/// `client_cap`, `room_bytes`).
pub(crate) fn awareness_ignored(reason: &'static str, count: u64) {
    if count > 0 {
        counter!("crdt_hub_awareness_ignored_total", "reason" => reason).increment(count);
    }
}
