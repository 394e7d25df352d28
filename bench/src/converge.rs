//! After a run: does each room hold exactly what its senders sent? A fresh
//! client per room asks for everything (SyncStep1 with an empty state
//! vector) and compares the answer with what the senders produced.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures_util::{StreamExt, stream};
use yrs::block::ClientID;
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact, Update};

use crate::conn::{self, ConnectOptions};
use crate::wire::Wire;
use crate::workload::TEXT_NAME;

/// What a room's document must contain.
#[derive(Debug, Clone, Default)]
pub struct Expected {
    /// Each sender's Yjs client id and its final clock.
    pub clocks: Vec<(u64, u64)>,
    /// Length of the room's text.
    pub text_len: u64,
}

/// Checks every room, a few at a time. Returns how many matched and the
/// first few mismatches. Room `r` is asked at `bases[r % bases.len()]`: in
/// a cluster every node must hold every room's whole document, so the
/// checks rotate over the nodes.
pub async fn check_rooms(
    bases: &[String],
    wires: &[Arc<Wire>],
    expected: &[Expected],
    connect: ConnectOptions,
) -> (usize, Vec<String>) {
    let results: Vec<Result<()>> = stream::iter(wires.iter().zip(expected).enumerate())
        .map(|(index, (wire, expected))| async move {
            let base = &bases[index % bases.len()];
            let doc = fetch_document(base, wire, connect).await?;
            compare(&doc, expected).with_context(|| format!("room {} at {base}", wire.room()))
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let errors = results
        .into_iter()
        .filter_map(Result::err)
        .take(5)
        .map(|e| format!("{e:#}"))
        .collect();
    (ok, errors)
}

/// The server's whole document for `wire`'s room, through a fresh client.
///
/// # Errors
/// Connection failures, or a SyncStep2 that does not decode.
pub async fn fetch_document(base: &str, wire: &Wire, connect: ConnectOptions) -> Result<Doc> {
    let mut ws = conn::connect(base, wire, connect).await?;
    let payload = conn::request_sync_step2(
        &mut ws,
        wire,
        wire.sync_step1(&StateVector::default()),
        Duration::from_secs(30),
    )
    .await?;
    ws.close(None).await.ok();
    doc_from_update(&payload)
}

/// A document holding exactly `update`.
///
/// # Errors
/// The update does not decode or apply.
pub fn doc_from_update(update: &Bytes) -> Result<Doc> {
    let doc = Doc::new();
    doc.transact_mut()
        .apply_update(Update::decode_v1(update)?)
        .context("applying server state")?;
    Ok(doc)
}

/// The benchmark text of `doc`.
pub fn text_of(doc: &Doc) -> String {
    let text = doc.get_or_insert_text(TEXT_NAME);
    text.get_string(&doc.transact())
}

/// Whether `doc` holds exactly what `expected` says: each sender's clock
/// and the text's length.
///
/// # Errors
/// The first difference.
pub fn compare(doc: &Doc, expected: &Expected) -> Result<()> {
    let text = doc.get_or_insert_text(TEXT_NAME);
    let txn = doc.transact();
    let sv = txn.state_vector();
    for &(client, clock) in &expected.clocks {
        let got = u64::from(sv.get(&ClientID::new(client)));
        if got != clock {
            bail!("client {client}: server has clock {got}, sender produced {clock}");
        }
    }
    let len = u64::from(text.len(&txn));
    if len != expected.text_len {
        bail!("text length {len}, senders produced {}", expected.text_len);
    }
    Ok(())
}
