//! Opening the database and finding rooms and versions in it, with errors
//! that say what to do.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use crdt_store::{RoomName, RoomSummary, Snapshot, SnapshotId, Store};

/// Opens the store at `url` (running pending migrations, as the server
/// does). An SQLite file must already exist: the snapshot tools never
/// create an empty database because of a mistyped path.
pub async fn open(url: &str) -> anyhow::Result<Arc<dyn Store>> {
    if let Some(path) = sqlite_path(url)
        && !Path::new(path).exists()
    {
        bail!(
            "no database at {path}: the server creates it on first start \
             (check --database-url / DATABASE_URL)"
        );
    }
    crdt_store::connect(url)
        .await
        .with_context(|| format!("cannot open the database at {}", crdt_store::redact(url)))
}

/// The file of an `sqlite://PATH` URL; `None` for other URLs and for
/// in-memory databases.
fn sqlite_path(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && !path.contains(":memory:") && path != "memory").then_some(path)
}

/// The stored room, or an error naming it.
pub async fn require_room(store: &Arc<dyn Store>, room: &RoomName) -> anyhow::Result<RoomSummary> {
    match store.room_summary(room).await.context("reading the room")? {
        Some(summary) => Ok(summary),
        None => bail!("room {room:?} not found (see `crdt-hub snapshot rooms`)"),
    }
}

/// One version of a stored room, with its state.
pub async fn require_version(
    store: &Arc<dyn Store>,
    room: &RoomName,
    version: SnapshotId,
) -> anyhow::Result<Snapshot> {
    require_room(store, room).await?;
    match store
        .snapshot(room, version)
        .await
        .context("reading the version")?
    {
        Some(snapshot) => Ok(snapshot),
        None => {
            bail!("room {room:?} has no version {version} (see `crdt-hub snapshot list {room}`)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::sqlite_path;

    #[test]
    fn finds_the_sqlite_file() {
        assert_eq!(sqlite_path("sqlite://crdt-hub.db"), Some("crdt-hub.db"));
        assert_eq!(
            sqlite_path("sqlite:///tmp/a.db?mode=rwc"),
            Some("/tmp/a.db")
        );
        assert_eq!(sqlite_path("sqlite::memory:"), None);
        assert_eq!(sqlite_path("postgres://u@h/db"), None);
    }
}
