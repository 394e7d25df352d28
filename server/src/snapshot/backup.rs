//! The msgpack backup envelope and recognising what a file holds.

use serde::{Deserialize, Serialize};

use crate::room::core::doc_from_updates;
use crate::subdocs::OwnedDoc;

/// The `format` field of every backup: how a backup is told apart from a
/// raw Yjs update.
pub const BACKUP_FORMAT: &str = "crdt-hub-snapshot";

/// A backup written by `export --format msgpack` (rmp-serde, fields by
/// name): a room's state with its metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backup {
    /// Always [`BACKUP_FORMAT`].
    pub format: String,
    /// Version of this envelope's layout (1).
    pub format_version: u32,
    /// The room it was exported from.
    pub room: String,
    /// The version (snapshot id) exported; `None` for a current document.
    pub version: Option<i64>,
    /// When the version was written (or the document exported), RFC 3339.
    pub created_at: String,
    /// Yjs v1 state vector of `state`.
    #[serde(with = "serde_bytes")]
    pub state_vector: Vec<u8>,
    /// The whole document as one Yjs v1 update.
    #[serde(with = "serde_bytes")]
    pub state: Vec<u8>,
}

impl Backup {
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).expect("a backup always encodes")
    }

    /// The backup in `bytes`, if they are one.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        rmp_serde::from_slice::<Backup>(bytes)
            .ok()
            .filter(|backup| backup.format == BACKUP_FORMAT)
    }
}

/// What an import file turned out to be.
pub enum ImportFile {
    Backup(Backup),
    Update(Vec<u8>),
}

impl ImportFile {
    /// Recognises a backup by its envelope; anything else must be a Yjs v1
    /// update.
    pub fn detect(bytes: Vec<u8>) -> Self {
        match Backup::decode(&bytes) {
            Some(backup) => ImportFile::Backup(backup),
            None => ImportFile::Update(bytes),
        }
    }

    pub fn state(&self) -> &[u8] {
        match self {
            ImportFile::Backup(backup) => &backup.state,
            ImportFile::Update(update) => update,
        }
    }

    pub fn describe(&self) -> &'static str {
        match self {
            ImportFile::Backup(_) => "msgpack backup",
            ImportFile::Update(_) => "Yjs update",
        }
    }
}

/// Checks that `state` is a Yjs v1 update that applies, the way the server
/// checks what clients send: the structural guard, then decoding and
/// applying it to an empty document.
///
/// # Errors
/// Why it is not acceptable.
pub fn validate_update(state: &[u8]) -> anyhow::Result<OwnedDoc> {
    if state.is_empty() {
        anyhow::bail!("it is empty");
    }
    crate::decode_guard::check_update_v1(state)
        .map_err(|e| anyhow::anyhow!("it is not a Yjs v1 update ({e})"))?;
    doc_from_updates([state])
        .map(|stored| stored.doc)
        .map_err(|e| anyhow::anyhow!("it does not apply ({})", e.problem))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backups_round_trip_and_updates_are_not_mistaken_for_them() {
        let backup = Backup {
            format: BACKUP_FORMAT.into(),
            format_version: 1,
            room: "notes".into(),
            version: Some(7),
            created_at: "2024-01-01T00:00:00Z".into(),
            state_vector: vec![0],
            state: vec![0, 0],
        };
        let bytes = backup.encode();
        assert_eq!(Backup::decode(&bytes), Some(backup));
        assert!(matches!(ImportFile::detect(bytes), ImportFile::Backup(_)));
        assert!(matches!(
            ImportFile::detect(vec![0, 0]),
            ImportFile::Update(_)
        ));
        // A map with another "format" is not a backup.
        let other = rmp_serde::to_vec_named(&serde_json::json!({"format": "x"})).unwrap();
        assert!(Backup::decode(&other).is_none());
    }

    #[test]
    fn validation_refuses_what_is_not_an_update() {
        assert!(validate_update(&[0, 0]).is_ok());
        assert!(validate_update(b"").is_err());
        assert!(validate_update(b"hello, world").is_err());
        assert!(validate_update(&[0xff, 0xff, 0xff, 0xff]).is_err());
    }
}
