//! `export`: a version or the current document, as a Yjs update, a msgpack
//! backup or JSON.

use std::io::{IsTerminal, Write};
use std::path::Path;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use crdt_store::{RoomName, SnapshotId};
use http::Method;
use yrs::updates::encoder::Encode;
use yrs::{ReadTxn, Transact};

use super::backup::{BACKUP_FORMAT, Backup, validate_update};
use super::client::ServerClient;
use super::database::{open, require_room, require_version};
use super::listing::rfc3339;
use super::progress::Progress;
use super::{ExportFormat, Target};
use crate::doc_json::doc_to_json;

/// What is exported.
struct Exported {
    version: Option<SnapshotId>,
    created_at: DateTime<Utc>,
    /// The whole document as one Yjs v1 update.
    state: Vec<u8>,
    state_vector: Vec<u8>,
}

pub async fn run(
    target: &Target,
    room: &RoomName,
    version: Option<SnapshotId>,
    format: ExportFormat,
    output: Option<&Path>,
) -> anyhow::Result<()> {
    let binary = format != ExportFormat::Json;
    if binary && output.is_none() && std::io::stdout().is_terminal() {
        bail!(
            "refusing to write {} to a terminal: add -o FILE, redirect (> FILE), \
             or use --format json",
            if format == ExportFormat::Ybin {
                "a binary Yjs update"
            } else {
                "binary msgpack"
            }
        );
    }
    let progress = Progress::spinner("reading the document");
    let exported = match (version, &target.server) {
        (Some(version), _) => read_version(target, room, version).await?,
        (None, Some(server)) => read_live(server, room).await?,
        (None, None) => read_current(target, room).await?,
    };
    progress.step("encoding");
    let bytes = match format {
        ExportFormat::Ybin => exported.state,
        ExportFormat::Msgpack => Backup {
            format: BACKUP_FORMAT.to_string(),
            format_version: 1,
            room: room.to_string(),
            version: exported.version,
            created_at: rfc3339(exported.created_at),
            state_vector: exported.state_vector,
            state: exported.state,
        }
        .encode(),
        ExportFormat::Json => {
            let doc =
                validate_update(&exported.state).context("the stored document does not load")?;
            let mut json = serde_json::to_vec_pretty(&doc_to_json(&doc))?;
            json.push(b'\n');
            json
        }
    };
    progress.step("writing");
    match output {
        Some(path) => {
            write_file(path, &bytes).await?;
            drop(progress);
            let what = match exported.version {
                Some(version) => format!("version {version}"),
                None => "the current document".to_string(),
            };
            eprintln!(
                "exported {what} of room {room:?} ({} bytes) to {}",
                bytes.len(),
                path.display()
            );
        }
        None => {
            drop(progress);
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(&bytes).context("writing to stdout")?;
            stdout.flush().context("writing to stdout")?;
        }
    }
    Ok(())
}

async fn read_version(
    target: &Target,
    room: &RoomName,
    version: SnapshotId,
) -> anyhow::Result<Exported> {
    let store = open(&target.database_url).await?;
    let snapshot = require_version(&store, room, version).await?;
    Ok(Exported {
        version: Some(version),
        created_at: snapshot.info.created_at,
        state: snapshot.state,
        state_vector: snapshot.state_vector,
    })
}

/// The latest version plus every update logged after it, merged the way
/// the server loads a room.
async fn read_current(target: &Target, room: &RoomName) -> anyhow::Result<Exported> {
    let store = open(&target.database_url).await?;
    require_room(&store, room).await?;
    let loaded = crate::persist::load_whole(&store, room)
        .await
        .with_context(|| format!("loading room {room:?}"))?;
    let state = loaded.doc.encode_state().map_err(anyhow::Error::msg)?;
    Ok(Exported {
        version: None,
        created_at: Utc::now(),
        state_vector: yrs::encode_state_vector_from_update_v1(&state)
            .context("encoding the state vector")?,
        state,
    })
}

/// The live document of a running server.
async fn read_live(server: &ServerClient, room: &RoomName) -> anyhow::Result<Exported> {
    let state = server
        .send(
            Method::GET,
            &ServerClient::room_path(room, "/state"),
            "application/octet-stream",
            Vec::new(),
        )
        .await?
        .to_vec();
    let doc = validate_update(&state).context("the server's document does not load")?;
    let state_vector = doc.transact().state_vector().encode_v1();
    Ok(Exported {
        version: None,
        created_at: Utc::now(),
        state,
        state_vector,
    })
}

/// Writes `bytes` to `path` through a temporary file beside it, so that an
/// interrupted export never leaves a truncated file under the real name.
async fn write_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    tokio::fs::write(&partial, bytes)
        .await
        .with_context(|| format!("cannot write {}", path.display()))?;
    tokio::fs::rename(&partial, path)
        .await
        .with_context(|| format!("cannot write {}", path.display()))
}
