//! `import`: merges a file written by `export` into a room.

use std::path::Path;

use anyhow::Context;
use bytes::Bytes;
use crdt_store::{PendingUpdate, RoomName};
use http::Method;

use super::Target;
use super::backup::{ImportFile, validate_update};
use super::client::ServerClient;
use super::database::open;
use super::progress::Progress;

pub async fn run(target: &Target, room: &RoomName, file: &Path) -> anyhow::Result<()> {
    let progress = Progress::spinner("reading the file");
    let bytes = tokio::fs::read(file)
        .await
        .with_context(|| format!("cannot read {}", file.display()))?;
    progress.step("validating");
    let import = ImportFile::detect(bytes);
    validate_update(import.state()).with_context(|| {
        format!(
            "{} cannot be imported: it is neither a crdt-hub msgpack backup nor a valid Yjs v1 update",
            file.display()
        )
    })?;
    let state = Bytes::copy_from_slice(import.state());
    let size = state.len();
    let place = match &target.server {
        Some(server) => {
            progress.step("sending to the server");
            server
                .send(
                    Method::POST,
                    &ServerClient::room_path(room, "/update"),
                    "application/octet-stream",
                    state.to_vec(),
                )
                .await
                .with_context(|| format!("importing into room {room:?}"))?;
            format!("live through {}", server.url())
        }
        None => {
            let store = open(&target.database_url).await?;
            progress.step("writing to the database");
            store
                .append(&[PendingUpdate {
                    room: room.clone(),
                    data: state,
                }])
                .await
                .with_context(|| format!("importing into room {room:?}"))?;
            "into the database".to_string()
        }
    };
    drop(progress);
    eprintln!(
        "imported {} ({}, {size} bytes) into room {room:?} {place}",
        file.display(),
        import.describe()
    );
    Ok(())
}
