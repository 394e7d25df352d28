//! Join storm: many clients open one room holding a large document within
//! one second; how long until every one of them holds the whole document?

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures_util::SinkExt;
use serde::Serialize;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use yrs::{Doc, StateVector, Text, Transact};

use crate::conn::{self, ConnectOptions};
use crate::converge;
use crate::procstat;
use crate::stats::{self, Latency, MIB, Metric, metric};
use crate::wire::{Protocol, Wire};
use crate::workload::{self, TEXT_NAME};

/// Seed updates are at most this large, as an editor pasting text would send.
const SEED_CHUNK: usize = 64 * 1024;
/// Ends the seeded text, so a joiner can check it got all of it cheaply.
const SEED_END: &str = "<<end-of-seed>>";
/// One joiner in this many also decodes its document with yrs (after the
/// clock stops) to prove the bytes are the whole document.
const DECODE_EVERY: usize = 50;

#[derive(Debug, Clone)]
pub struct StormConfig {
    pub base: String,
    pub protocol: Protocol,
    pub room: String,
    pub doc_bytes: usize,
    pub joiners: usize,
    /// Joins are spread evenly over this window.
    pub spread: Duration,
    pub timeout: Duration,
    pub server_pid: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct StormReport {
    pub doc_bytes: usize,
    pub joiners: usize,
    pub synced: usize,
    pub failures: usize,
    pub errors: Vec<String>,
    /// From the first join to the last joiner holding the whole document.
    pub all_synced_s: f64,
    /// Per joiner, from its own connect to holding the whole document.
    pub sync_time: Latency,
    pub decoded_ok: usize,
    pub decoded_checked: usize,
    pub rss_before_mib: f64,
    pub peak_rss_mib: f64,
    pub server_cpu_s: f64,
}

impl StormReport {
    pub fn metrics(&self) -> Vec<Metric> {
        vec![
            metric("synced", self.synced as f64),
            metric("all synced s", self.all_synced_s),
            metric("sync p50 ms", self.sync_time.p50_ms),
            metric("sync p99 ms", self.sync_time.p99_ms),
            metric("peak RSS MiB", self.peak_rss_mib),
            metric("server CPU s", self.server_cpu_s),
            metric(
                "decoded docs OK %",
                100.0 * self.decoded_ok as f64 / self.decoded_checked.max(1) as f64,
            ),
        ]
    }
}

/// Seeds the room, then lets the joiners in.
///
/// # Errors
/// Seeding failed, or the server process vanished.
pub async fn run(config: &StormConfig) -> Result<StormReport> {
    let wire = Arc::new(Wire::new(config.protocol, &config.room));
    let connect = ConnectOptions {
        timeout: config.timeout,
        read_buffer: 64 * 1024,
        ..ConnectOptions::default()
    };
    let (_seeder, text_len) = seed(&config.base, &wire, config.doc_bytes, connect).await?;
    let before = procstat::sample(Some(config.server_pid))?;
    let peak = Arc::new(AtomicU64::new(before.rss_bytes));
    let sampler = tokio::spawn(sample_rss(config.server_pid, peak.clone()));

    let t0 = Instant::now() + Duration::from_millis(50);
    let joiners: Vec<_> = (0..config.joiners)
        .map(|i| {
            let at = t0 + config.spread.mul_f64(i as f64 / config.joiners as f64);
            let (base, wire) = (config.base.clone(), wire.clone());
            let keep = i % DECODE_EVERY == 0;
            tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                let started = Instant::now();
                let result = join(&base, &wire, connect, text_len).await;
                result.map(|(ws, payload)| {
                    (
                        started.elapsed(),
                        Instant::now(),
                        ws,
                        keep.then_some(payload),
                    )
                })
            })
        })
        .collect();

    let mut sync_times = stats::new_histogram();
    let (mut synced, mut failures, mut last_done) = (0, 0, t0);
    let mut errors = Vec::new();
    let mut kept = Vec::new();
    let mut sockets = Vec::new();
    for joiner in joiners {
        match joiner.await? {
            Ok((took, done, ws, payload)) => {
                synced += 1;
                stats::record(&mut sync_times, took);
                last_done = last_done.max(done);
                sockets.push(ws);
                kept.extend(payload);
            }
            Err(e) => {
                failures += 1;
                if errors.len() < 5 {
                    errors.push(format!("{e:#}"));
                }
            }
        }
    }
    sampler.abort();
    let after = procstat::sample(Some(config.server_pid))?;
    drop(sockets);

    let decoded_checked = kept.len();
    let decoded_ok = kept
        .iter()
        .filter(|payload| {
            converge::doc_from_update(payload)
                .map(|doc| {
                    converge::text_of(&doc).len() == text_len
                        && converge::text_of(&doc).ends_with(SEED_END)
                })
                .unwrap_or(false)
        })
        .count();
    Ok(StormReport {
        doc_bytes: config.doc_bytes,
        joiners: config.joiners,
        synced,
        failures,
        errors,
        all_synced_s: if failures == 0 {
            last_done.duration_since(t0).as_secs_f64()
        } else {
            f64::NAN
        },
        sync_time: Latency::of(&sync_times),
        decoded_ok,
        decoded_checked,
        rss_before_mib: before.rss_bytes as f64 / MIB,
        peak_rss_mib: peak.load(Ordering::Relaxed).max(after.rss_bytes) as f64 / MIB,
        server_cpu_s: after.cpu.saturating_sub(before.cpu).as_secs_f64(),
    })
}

/// Writes about `bytes` of text into the room in paste-sized updates, then
/// waits for the server's answer to a SyncStep1 (sent after the updates on
/// the same socket, so it reflects them). Returns the still-open seeding
/// connection, a user who stays in the room, and the text length.
pub(crate) async fn seed(
    base: &str,
    wire: &Wire,
    bytes: usize,
    connect: ConnectOptions,
) -> Result<(conn::Ws, usize)> {
    let mut ws = conn::connect(base, wire, connect)
        .await
        .context("seeding client")?;
    let doc = Doc::with_client_id(999_999_999);
    let text = doc.get_or_insert_text(TEXT_NAME);
    let mut len = 0usize;
    let chunks = bytes.div_ceil(SEED_CHUNK).max(1);
    for n in 0..chunks {
        let mut chunk = workload::filler(SEED_CHUNK, n as u64 + 1);
        if n + 1 == chunks {
            chunk.push_str(SEED_END);
        }
        let update = {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, len as u32, &chunk);
            txn.encode_update_v1()
        };
        len += chunk.len();
        ws.feed(WsMessage::Binary(wire.update(update).into()))
            .await?;
    }
    let payload = conn::request_sync_step2(
        &mut ws,
        wire,
        wire.sync_step1(&StateVector::default()),
        Duration::from_secs(60),
    )
    .await
    .context("seed did not reach the server")?;
    let held = converge::text_of(&converge::doc_from_update(&payload)?).len();
    if held != len {
        bail!("server holds {held} bytes of text after seeding {len}");
    }
    Ok((ws, len))
}

/// One joiner: connect, ask for everything as a fresh y-websocket client
/// does, and wait for a SyncStep2 that holds the whole text.
async fn join(
    base: &str,
    wire: &Wire,
    connect: ConnectOptions,
    text_len: usize,
) -> Result<(conn::Ws, Bytes)> {
    let options = ConnectOptions {
        await_greeting: false,
        ..connect
    };
    let mut ws = conn::connect(base, wire, options).await?;
    let payload = conn::request_sync_step2(
        &mut ws,
        wire,
        wire.sync_step1(&StateVector::default()),
        connect.timeout,
    )
    .await?;
    // Cheap completeness check on the hot path; the full decode happens for
    // a sample after the clock stops.
    let tail_ok = payload
        .windows(SEED_END.len())
        .rev()
        .take(4096)
        .any(|w| w == SEED_END.as_bytes());
    if payload.len() < text_len || !tail_ok {
        bail!(
            "SyncStep2 of {} bytes does not hold the whole document",
            payload.len()
        );
    }
    Ok((ws, payload))
}

async fn sample_rss(pid: u32, peak: Arc<AtomicU64>) {
    loop {
        peak.fetch_max(procstat::rss_bytes(pid), Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
