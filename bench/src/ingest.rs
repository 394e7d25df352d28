//! B4: the automerge-paper editing trace (259,778 keystrokes), one Yjs
//! update per keystroke, pushed by one client as fast as the server takes
//! them while observers watch; plus the in-process baseline of yrs applying
//! the same updates to one document.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, Text, Transact, Update};

use crate::conn::{self, ConnectOptions};
use crate::converge;
use crate::procstat;
use crate::stats::{MIB, Metric, median, metric};
use crate::wire::{Incoming, Protocol, Wire};
use crate::workload::TEXT_NAME;

/// The trace as its JSON has it.
#[derive(Deserialize)]
struct RawTrace {
    #[serde(rename = "endContent")]
    end_content: String,
    txns: Vec<RawTxn>,
}

#[derive(Deserialize)]
struct RawTxn {
    patches: Vec<(u32, u32, String)>,
}

/// The trace as Yjs v1 updates, one per patch, and the text they produce.
pub struct Trace {
    pub updates: Vec<Bytes>,
    pub end_content: String,
}

/// Reads the gzipped trace and encodes every patch as its own update (one
/// yrs transaction each, as an editor sends one update per keystroke).
/// `limit` keeps only the first updates (for quick runs); the end content
/// is then the prefix's result.
///
/// # Errors
/// Unreadable file, bad JSON, or a replay that does not end in `endContent`.
pub fn load_trace(path: &Path, limit: Option<usize>) -> Result<Trace> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let raw: RawTrace =
        serde_json::from_reader(std::io::BufReader::new(flate2::read::GzDecoder::new(file)))
            .context("parsing trace JSON")?;
    let doc = Doc::with_client_id(1);
    let text = doc.get_or_insert_text(TEXT_NAME);
    let mut updates = Vec::new();
    let patches = raw.txns.iter().flat_map(|t| &t.patches);
    for (pos, deleted, inserted) in patches.take(limit.unwrap_or(usize::MAX)) {
        // The trace is ASCII, so character positions are yrs byte offsets.
        let mut txn = doc.transact_mut();
        if *deleted > 0 {
            text.remove_range(&mut txn, *pos, *deleted);
        }
        if !inserted.is_empty() {
            text.insert(&mut txn, *pos, inserted);
        }
        updates.push(Bytes::from(txn.encode_update_v1()));
    }
    let end_content = text.get_string(&doc.transact());
    if limit.is_none() && end_content != raw.end_content {
        bail!("replaying the trace does not give its endContent");
    }
    Ok(Trace {
        updates,
        end_content,
    })
}

/// yrs applying the trace's updates to one document, one transaction each.
#[derive(Debug, Clone, Serialize)]
pub struct Baseline {
    pub updates: usize,
    pub runs: usize,
    pub median_s: f64,
    pub us_per_update: f64,
}

/// Times `runs` replays of the updates into a fresh doc (decode + apply).
///
/// # Errors
/// An update fails to decode or apply, or the result is not the end content.
pub fn baseline(trace: &Trace, runs: usize) -> Result<Baseline> {
    let mut times = Vec::new();
    for _ in 0..runs.max(1) {
        let started = Instant::now();
        let doc = apply_all(&trace.updates)?;
        times.push(started.elapsed().as_secs_f64());
        if converge::text_of(&doc) != trace.end_content {
            bail!("in-process replay diverged from the trace");
        }
    }
    let median_s = median(&times);
    Ok(Baseline {
        updates: trace.updates.len(),
        runs: times.len(),
        median_s,
        us_per_update: median_s * 1e6 / trace.updates.len() as f64,
    })
}

fn apply_all(updates: &[Bytes]) -> Result<Doc> {
    let doc = Doc::new();
    for update in updates {
        doc.transact_mut()
            .apply_update(Update::decode_v1(update)?)?;
    }
    Ok(doc)
}

#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub base: String,
    pub protocol: Protocol,
    pub room: String,
    pub observers: usize,
    /// Updates sent but not yet seen by the first observer, at most.
    pub window: u64,
    pub timeout: Duration,
    pub server_pid: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct IngestReport {
    pub updates: usize,
    pub observers: usize,
    pub completed: bool,
    /// Updates per second from the first send to the last update written.
    pub send_rate: f64,
    /// Updates per second from the first send until every observer had all.
    pub updates_per_s: f64,
    pub all_observers_s: f64,
    pub observers_matching: usize,
    pub server_state_matches: bool,
    pub server_cpu_s: f64,
    pub server_cpu_us_per_update: f64,
    pub server_rss_mib: f64,
    pub errors: Vec<String>,
}

impl IngestReport {
    pub fn metrics(&self) -> Vec<Metric> {
        vec![
            metric("updates/s (all observers)", self.updates_per_s),
            metric("time to all observers s", self.all_observers_s),
            metric("accepted updates/s", self.send_rate),
            metric("server CPU µs/update", self.server_cpu_us_per_update),
            metric("server RSS MiB", self.server_rss_mib),
            metric("observers with endContent", self.observers_matching as f64),
            metric(
                "server state = endContent",
                f64::from(u8::from(self.server_state_matches)),
            ),
        ]
    }
}

/// Pushes the trace through a server.
///
/// # Errors
/// Connections fail or the server vanished.
pub async fn run(config: &IngestConfig, trace: &Trace) -> Result<IngestReport> {
    let wire = Arc::new(Wire::new(config.protocol, &config.room));
    let connect = ConnectOptions::default();
    let total = trace.updates.len() as u64;
    let (stop_tx, stop_rx) = watch::channel(false);
    let acked = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(Notify::new());
    let milestones = Arc::new(milestones(&trace.updates));
    let mut observers = Vec::new();
    for i in 0..config.observers {
        let ws = conn::connect(&config.base, &wire, connect)
            .await
            .with_context(|| format!("observer {i}"))?;
        let ack = (i == 0).then(|| (acked.clone(), progress.clone()));
        observers.push(tokio::spawn(observe(
            ws,
            wire.clone(),
            milestones.clone(),
            ack,
            stop_rx.clone(),
        )));
    }
    let sender = conn::connect(&config.base, &wire, connect)
        .await
        .context("sender")?;
    let frames: Vec<Bytes> = trace
        .updates
        .iter()
        .map(|u| Bytes::from(wire.update(u.to_vec())))
        .collect();

    let before = procstat::sample(Some(config.server_pid))?;
    let started = Instant::now();
    let (mut sink, mut echoes) = sender.split();
    // The Node servers echo every update to its sender and Hocuspocus acks
    // each: keep reading so the server never blocks on this socket.
    let drain = tokio::spawn(async move { while let Some(Ok(_)) = echoes.next().await {} });
    let mut errors = Vec::new();
    let deadline = started + config.timeout;
    let mut sent = 0u64;
    'send: while sent < total {
        // Refill once half the window is free: fewer, larger writes.
        while sent - acked.load(Ordering::Acquire) > config.window / 2 {
            if tokio::time::timeout_at(deadline.into(), progress.notified())
                .await
                .is_err()
            {
                errors.push(format!("timed out with {sent} sent"));
                break 'send;
            }
        }
        let room = (config.window - (sent - acked.load(Ordering::Acquire))).min(total - sent);
        for frame in &frames[sent as usize..(sent + room) as usize] {
            if let Err(e) = sink.feed(WsMessage::Binary(frame.clone())).await {
                errors.push(format!("send failed: {e}"));
                break 'send;
            }
        }
        if let Err(e) = sink.flush().await {
            errors.push(format!("send failed: {e}"));
            break;
        }
        sent += room;
    }
    let send_elapsed = started.elapsed();

    let remaining = deadline.saturating_duration_since(Instant::now());
    let observed = tokio::time::timeout(remaining, futures_util::future::join_all(observers)).await;
    let after = procstat::sample(Some(config.server_pid))?;
    stop_tx.send(true).ok();
    let outcomes: Vec<Observed> = match observed {
        Ok(results) => results.into_iter().collect::<Result<_, _>>()?,
        Err(_) => {
            errors.push("observers did not all finish in time".into());
            Vec::new()
        }
    };

    let completed = outcomes.len() == config.observers && outcomes.iter().all(|o| o.done.is_some());
    let all_done = outcomes.iter().filter_map(|o| o.done).max();
    let all_observers_s = match (completed, all_done) {
        (true, Some(done)) => done.duration_since(started).as_secs_f64(),
        _ => f64::NAN,
    };
    // Off the clock: replay what each observer received, and ask the server
    // for its document, and compare both with the trace's end content.
    let observers_matching = outcomes
        .iter()
        .filter(|o| {
            apply_all(&o.updates)
                .map(|doc| converge::text_of(&doc) == trace.end_content)
                .unwrap_or(false)
        })
        .count();
    let server_state_matches = converge::fetch_document(&config.base, &wire, connect)
        .await
        .map(|doc| converge::text_of(&doc) == trace.end_content)
        .unwrap_or(false);
    // Only now may the sender leave: Hocuspocus without persistence forgets
    // a document when its last client disconnects.
    drop(sink);
    drain.abort();
    let server_cpu = after.cpu.saturating_sub(before.cpu).as_secs_f64();
    Ok(IngestReport {
        updates: trace.updates.len(),
        observers: config.observers,
        completed,
        send_rate: sent as f64 / send_elapsed.as_secs_f64(),
        updates_per_s: total as f64 / all_observers_s,
        all_observers_s,
        observers_matching,
        server_state_matches,
        server_cpu_s: server_cpu,
        server_cpu_us_per_update: server_cpu * 1e6 / sent.max(1) as f64,
        server_rss_mib: after.rss_bytes as f64 / MIB,
        errors,
    })
}

struct Observed {
    updates: Vec<Bytes>,
    done: Option<Instant>,
}

/// How far into the trace what an observer received reaches. A server may
/// merge several updates into one frame (crdt-hub does for a burst from
/// one socket), so frames are not counted: the inserted and deleted
/// lengths they carry are, against the trace's running totals.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Reach {
    inserted: u64,
    deleted: u64,
}

impl Reach {
    fn of(update: &[u8]) -> Self {
        let Ok(update) = Update::decode_v1(update) else {
            return Self::default();
        };
        let total = |set: &yrs::IdSet| -> u64 {
            set.iter()
                .flat_map(|(_, ranges)| ranges.iter())
                .map(|r| u64::from(r.end - r.start))
                .sum()
        };
        Self {
            inserted: total(&update.insertions(true)),
            deleted: total(update.delete_set()),
        }
    }

    fn add(&mut self, other: Self) {
        self.inserted += other.inserted;
        self.deleted += other.deleted;
    }

    fn covers(&self, other: &Self) -> bool {
        self.inserted >= other.inserted && self.deleted >= other.deleted
    }
}

/// The running [`Reach`] after each update of the trace.
fn milestones(updates: &[Bytes]) -> Vec<Reach> {
    let mut reach = Reach::default();
    updates
        .iter()
        .map(|u| {
            reach.add(Reach::of(u));
            reach
        })
        .collect()
}

/// Collects every update (zero-copy slices of the frames) until `total`
/// arrived; the first observer also paces the sender.
async fn observe(
    ws: conn::Ws,
    wire: Arc<Wire>,
    milestones: Arc<Vec<Reach>>,
    ack: Option<(Arc<AtomicU64>, Arc<Notify>)>,
    mut stop: watch::Receiver<bool>,
) -> Observed {
    let total = milestones.len();
    let (_sink, mut stream) = ws.split();
    let mut observed = Observed {
        updates: Vec::with_capacity(total),
        done: None,
    };
    let mut reach = Reach::default();
    let mut passed = 0;
    while passed < total {
        let message = tokio::select! {
            biased;
            _ = stop.changed() => break,
            message = stream.next() => message,
        };
        let Some(Ok(message)) = message else { break };
        let WsMessage::Binary(frame) = message else {
            continue;
        };
        if let Incoming::Update(update) = wire.parse(&frame) {
            reach.add(Reach::of(update));
            observed.updates.push(frame.slice_ref(update));
            while passed < total && reach.covers(&milestones[passed]) {
                passed += 1;
            }
            if let Some((acked, progress)) = &ack {
                acked.store(passed as u64, Ordering::Release);
                progress.notify_one();
            }
        }
    }
    if passed == total {
        observed.done = Some(Instant::now());
    }
    observed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_merged_frame_reaches_as_far_as_its_parts() {
        let doc = Doc::with_client_id(3);
        let text = doc.get_or_insert_text(TEXT_NAME);
        let mut updates = Vec::new();
        for (i, c) in "hello".chars().enumerate() {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, i as u32, &c.to_string());
            updates.push(Bytes::from(txn.encode_update_v1()));
        }
        {
            let mut txn = doc.transact_mut();
            text.remove_range(&mut txn, 1, 2);
            updates.push(Bytes::from(txn.encode_update_v1()));
        }
        let steps = milestones(&updates);
        assert_eq!(
            steps.last(),
            Some(&Reach {
                inserted: 5,
                deleted: 2
            })
        );
        let merged = yrs::merge_updates_v1(updates.iter().map(|u| u.as_ref())).unwrap();
        let reach = Reach::of(&merged);
        assert!(reach.covers(steps.last().unwrap()));
        assert!(!Reach::of(&updates[0]).covers(&steps[1]));
    }
}
