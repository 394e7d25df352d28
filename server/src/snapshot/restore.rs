//! `snapshot restore`: the command-line face of [`crate::restore`],
//! through a running server (`--server`: its API restores through the live
//! room) or straight in the database.

use anyhow::Context;
use crdt_store::{RoomName, SnapshotId};
use http::Method;
use serde_json::json;

use super::Target;
use super::client::ServerClient;
use super::database::open;
use super::progress::Progress;
use crate::restore::{RestoreError, Through};

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
        None => in_database(target, room, version, into, keep).await?,
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
) -> anyhow::Result<Outcome> {
    let store = open(&target.database_url).await?;
    let room = into.unwrap_or_else(|| source.clone());
    let restored = crate::restore::restore(&store, Through::Store { keep }, source, version, &room)
        .await
        .map_err(|e| match e {
            RestoreError::RoomNotFound(_) => {
                anyhow::anyhow!("{e} (see `crdt-hub snapshot rooms`)")
            }
            RestoreError::VersionNotFound { .. } => {
                anyhow::anyhow!("{e} (see `crdt-hub snapshot list {source}`)")
            }
            e => anyhow::Error::new(e),
        })
        .with_context(|| format!("restoring room {room:?} to version {version} of {source:?}"))?;
    Ok(Outcome {
        room,
        version,
        before: restored.before,
        restored: restored.restored,
        changed: restored.changed,
    })
}
