//! `restore`: brings a room back to a version, through a running server
//! (`--server`, live) or directly in the database.
//!
//! Both ways follow the same steps (see [`crate::http::api::restore`] for
//! the live one): save the current state as a version (`before`), compute
//! the update from `before` to the version ([`crate::restore`]), apply it,
//! save the result as a version with `restored_from`.

use anyhow::Context;
use bytes::Bytes;
use crdt_store::{PendingUpdate, RoomName, SnapshotId};
use http::Method;
use serde_json::json;
use yrs::Update;
use yrs::updates::decoder::Decode;

use super::Target;
use super::client::ServerClient;
use super::database::{open, require_version};
use super::progress::Progress;
use crate::persist;
use crate::room::core::doc_from_updates;

/// What a restore did, as both ways report it.
struct Outcome {
    room: RoomName,
    version: SnapshotId,
    before: SnapshotId,
    restored: SnapshotId,
    changed: bool,
}

pub async fn run(
    target: &Target,
    room: &RoomName,
    version: SnapshotId,
    into: Option<RoomName>,
    keep: usize,
) -> anyhow::Result<()> {
    let progress = Progress::spinner("restoring");
    let outcome = match &target.server {
        Some(server) => through_server(server, room, version, into).await?,
        None => in_database(target, room, version, into, keep, &progress).await?,
    };
    drop(progress);
    let Outcome {
        room,
        version,
        before,
        restored,
        changed,
    } = outcome;
    if changed {
        println!("restored room {room:?} to version {version}");
    } else {
        println!("room {room:?} already matched version {version}");
    }
    println!(
        "  before:   version {before} (undo: crdt-hub snapshot restore {room} --version {before})"
    );
    println!("  restored: version {restored}");
    Ok(())
}

async fn through_server(
    server: &ServerClient,
    room: &RoomName,
    version: SnapshotId,
    into: Option<RoomName>,
) -> anyhow::Result<Outcome> {
    let mut body = json!({ "version": version });
    if let Some(into) = &into {
        body["into"] = json!(into);
    }
    let answer = server
        .send(
            Method::POST,
            &ServerClient::room_path(room, "/restore"),
            "application/json",
            body.to_string().into_bytes(),
        )
        .await
        .with_context(|| format!("restoring room {room:?} to version {version}"))?;
    let answer: serde_json::Value =
        serde_json::from_slice(&answer).context("the server's answer is not JSON")?;
    let id = |field: &str| {
        answer[field]
            .as_i64()
            .with_context(|| format!("the server's answer lacks {field:?}: {answer}"))
    };
    Ok(Outcome {
        room: into.unwrap_or_else(|| room.clone()),
        version,
        before: id("before")?,
        restored: id("restored")?,
        changed: answer["changed"].as_bool().unwrap_or(true),
    })
}

async fn in_database(
    target: &Target,
    source: &RoomName,
    version: SnapshotId,
    into: Option<RoomName>,
    keep: usize,
    progress: &Progress,
) -> anyhow::Result<Outcome> {
    let store = open(&target.database_url).await?;
    // Read the version before writing anything: a new snapshot may prune it.
    let version_state = require_version(&store, source, version).await?.state;
    let room = into.unwrap_or_else(|| source.clone());

    progress.step("saving the current state as a version");
    let current = persist::load_whole(&store, &room)
        .await
        .with_context(|| format!("loading room {room:?}"))?;
    let current_state = current.doc.encode_state().map_err(anyhow::Error::msg)?;
    let before = persist::write_snapshot(&store, &room, &current_state, current.base, keep, None)
        .await
        .context("saving the state before the restore")?;
    // What the store saved may include writes of others since the load:
    // the restore starts from exactly that.
    let before_state = store
        .snapshot(&room, before.id)
        .await?
        .with_context(|| format!("version {} vanished", before.id))?
        .state;

    progress.step("computing the restore");
    let (update, after_state) =
        tokio::task::spawn_blocking(move || compute(&before_state, &version_state))
            .await
            .context("the restore task failed")??;

    progress.step("writing the restore");
    if let Some(update) = &update {
        store
            .append(&[PendingUpdate {
                room: room.clone(),
                data: Bytes::from(update.clone()),
            }])
            .await
            .context("writing the restore update")?;
    }
    let restored = persist::write_snapshot(&store, &room, &after_state, None, keep, Some(version))
        .await
        .context("saving the restored state")?;
    Ok(Outcome {
        room,
        version,
        before: before.id,
        restored: restored.id,
        changed: update.is_some(),
    })
}

/// The restore update from `before` to the version, and the state after it.
fn compute(before: &[u8], version: &[u8]) -> anyhow::Result<(Option<Vec<u8>>, Vec<u8>)> {
    let load = |what: &str, state: &[u8]| {
        doc_from_updates([state])
            .map_err(|(_, detail)| anyhow::anyhow!("the stored {what} does not load: {detail}"))
    };
    let mut current = load("current state", before)?;
    let target = load("version", version)?;
    let update = crate::restore::restore_update(&current.doc, &target.doc)?;
    if let Some(update) = &update {
        let decoded = Update::decode_v1(update).context("the restore update does not decode")?;
        current
            .held
            .apply(
                &current.doc,
                decoded,
                &bytes::Bytes::copy_from_slice(update),
            )
            .context("the restore update does not apply")?;
    }
    let after = current.encode_state().map_err(anyhow::Error::msg)?;
    Ok((update, after))
}
