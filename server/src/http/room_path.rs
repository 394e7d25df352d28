//! The room name in a WebSocket URL: `WebsocketProvider(url, room)` opens
//! `url + '/' + room`, so everything after the first `/` (slashes included,
//! query excluded) is the room, percent-decoded.

use crdt_store::{InvalidRoomName, RoomName};
use percent_encoding::percent_decode_str;

#[derive(Debug, thiserror::Error)]
pub enum BadRoomPath {
    #[error("room name is not valid UTF-8 after percent-decoding")]
    NotUtf8,
    #[error(transparent)]
    Invalid(#[from] InvalidRoomName),
}

/// Parses the request path (`/team-a/notes%201`) into a room name.
///
/// # Errors
/// [`BadRoomPath`] when the decoded name is not UTF-8 or not a valid name.
pub fn room_from_path(path: &str) -> Result<RoomName, BadRoomPath> {
    let encoded = path.strip_prefix('/').unwrap_or(path);
    let decoded = percent_decode_str(encoded)
        .decode_utf8()
        .map_err(|_| BadRoomPath::NotUtf8)?;
    Ok(RoomName::parse(decoded.into_owned())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_paths() {
        assert_eq!(room_from_path("/notes").unwrap().as_str(), "notes");
        assert_eq!(
            room_from_path("/team-a/notes%201").unwrap().as_str(),
            "team-a/notes 1"
        );
        assert_eq!(room_from_path("/%E3%83%8E").unwrap().as_str(), "ノ");
    }

    #[test]
    fn refuses_bad_paths() {
        assert!(room_from_path("/").is_err());
        assert!(room_from_path("/%FF").is_err());
        assert!(room_from_path("/a%0Ab").is_err());
        assert!(room_from_path(&format!("/{}", "x".repeat(257))).is_err());
    }
}
