//! A writer whose every update misses its first part: one socket into a
//! room sends `count` updates of a client whose first update never reaches
//! the server, spread evenly over the run (issue 19's "10,000 gapped
//! updates"). None of them ever completes, so the room holds them (and,
//! past its caps, lets the oldest go). A server that tries every waiting
//! update again whenever the document changes pays for that on every honest
//! update of the room; the fan-out numbers of the honest clients show it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use yrs::{Doc, Text, Transact};

use crate::conn::{self, ConnectOptions};
use crate::wire::{Protocol, Wire};

/// The writer's Yjs client id: far from the honest clients' (1, 2, …).
const CLIENT_ID: u64 = (1 << 53) - 16;

/// Frames per second the writer stays under: servers limit messages per
/// connection (crdt-hub's default is 200/s), so updates share frames.
const FRAMES_PER_SECOND: f64 = 150.0;

/// What the writer did.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct GappedOutcome {
    pub updates_sent: u64,
    pub frames_sent: u64,
}

/// `count` updates of one client, each appending a character, without the
/// first one: every update starts past what a server can have.
fn updates(count: usize) -> Vec<Vec<u8>> {
    let doc = Doc::with_client_id(CLIENT_ID);
    let text = doc.get_or_insert_text("gapped");
    text.insert(&mut doc.transact_mut(), 0, "never sent");
    (0..count)
        .map(|_| {
            let mut txn = doc.transact_mut();
            let end = text.len(&txn);
            text.insert(&mut txn, end, "x");
            txn.encode_update_v1()
        })
        .collect()
}

/// Connects to `wire`'s room and sends the updates from `start` over
/// `duration`, reading (and dropping) whatever the server sends until
/// `stop`.
///
/// # Errors
/// When the connection cannot be opened.
pub async fn run(
    base: String,
    wire: Arc<Wire>,
    options: ConnectOptions,
    count: usize,
    start: Instant,
    duration: Duration,
    mut stop: watch::Receiver<bool>,
) -> Result<GappedOutcome> {
    let socket = conn::connect(&base, &wire, options).await?;
    let (mut sink, mut stream) = socket.split();
    let drain = tokio::spawn(async move {
        loop {
            tokio::select! {
                frame = stream.next() => if frame.is_none_or(|f| f.is_err()) { return },
                _ = stop.changed() => return,
            }
        }
    });
    // y-websocket takes several messages in one frame; Hocuspocus frames
    // carry one each.
    let frames = (duration.as_secs_f64() * FRAMES_PER_SECOND).max(1.0) as usize;
    let per_frame = match wire.protocol() {
        Protocol::YWebsocket => count.div_ceil(frames).max(1),
        Protocol::Hocuspocus => 1,
    };
    // Each frame, with the number of updates in it.
    let batches: Vec<(Vec<u8>, usize)> = updates(count)
        .chunks(per_frame)
        .map(|chunk| {
            let frame = chunk
                .iter()
                .flat_map(|update| wire.update(update.clone()))
                .collect();
            (frame, chunk.len())
        })
        .collect();
    let period = duration.div_f64(batches.len().max(1) as f64);
    let mut outcome = GappedOutcome::default();
    for (n, (frame, updates)) in batches.into_iter().enumerate() {
        sleep_until(start + period.mul_f64(n as f64)).await;
        if sink.send(WsMessage::Binary(frame.into())).await.is_err() {
            break;
        }
        outcome.frames_sent += 1;
        outcome.updates_sent += updates as u64;
    }
    drain.await.ok();
    Ok(outcome)
}
