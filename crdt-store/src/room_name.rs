//! The one type every layer uses to name a room, so that no unchecked string
//! reaches a room registry, a log line or a SQL bind parameter.

use std::fmt;

/// Longest room name accepted, in bytes of UTF-8.
pub const MAX_ROOM_NAME_BYTES: usize = 256;

/// A validated room name: UTF-8, 1 to 256 bytes, no control characters and
/// no invisible formatting characters.
///
/// Names are stored exactly as given (any other Unicode is fine, including
/// `/`), and only ever reach SQL as bind parameters. Characters that change
/// how a name looks without being seen (bidirectional overrides such as
/// U+202E, zero-width spaces and joiners, line and paragraph separators)
/// are refused: a name that reads as `invoice` in a listing or the demo
/// must be `invoice`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomName(String);

/// Why a string is not a room name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRoomName {
    #[error("room name is empty")]
    Empty,
    #[error("room name is {0} bytes long; the limit is {MAX_ROOM_NAME_BYTES}")]
    TooLong(usize),
    #[error("room name contains a control character at byte {0}")]
    ControlCharacter(usize),
    #[error("room name contains an invisible formatting character (U+{1:04X}) at byte {0}")]
    InvisibleCharacter(usize, u32),
}

/// Characters that are neither control characters nor visible: bidi
/// marks, embeddings, overrides and isolates; zero-width spaces, joiners
/// and the word joiner; the BOM; line and paragraph separators; the
/// invisible math operators; interlinear annotation marks.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{061C}'
            | '\u{115F}'
            | '\u{1160}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF9}'..='\u{FFFB}'
    )
}

impl RoomName {
    /// Checks `name` and wraps it.
    ///
    /// # Errors
    /// [`InvalidRoomName`] when the name is empty, longer than
    /// [`MAX_ROOM_NAME_BYTES`] or contains a control or invisible
    /// formatting character.
    pub fn parse(name: impl Into<String>) -> Result<Self, InvalidRoomName> {
        let room = Self::from_stored(name)?;
        if let Some((at, c)) = room.0.char_indices().find(|(_, c)| is_invisible(*c)) {
            return Err(InvalidRoomName::InvisibleCharacter(at, u32::from(c)));
        }
        Ok(room)
    }

    /// A name read back from storage, checked by the rules it was stored
    /// under: a room named before invisible characters were refused stays
    /// listed and reachable through the tools, though no client can open
    /// it by that name any more.
    ///
    /// # Errors
    /// As [`Self::parse`], without the invisible characters.
    pub fn from_stored(name: impl Into<String>) -> Result<Self, InvalidRoomName> {
        let name = name.into();
        if name.is_empty() {
            return Err(InvalidRoomName::Empty);
        }
        if name.len() > MAX_ROOM_NAME_BYTES {
            return Err(InvalidRoomName::TooLong(name.len()));
        }
        if let Some((at, _)) = name.char_indices().find(|(_, c)| c.is_control()) {
            return Err(InvalidRoomName::ControlCharacter(at));
        }
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// Serialized as the plain string (room listings are JSON).
impl serde::Serialize for RoomName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl AsRef<str> for RoomName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for RoomName {
    type Err = InvalidRoomName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_unicode_and_slashes() {
        assert_eq!(
            RoomName::parse("team-a/ノート 1").unwrap().as_str(),
            "team-a/ノート 1"
        );
    }

    #[test]
    fn rejects_bad_names() {
        assert_eq!(RoomName::parse(""), Err(InvalidRoomName::Empty));
        assert_eq!(
            RoomName::parse("a".repeat(257)),
            Err(InvalidRoomName::TooLong(257))
        );
        assert!(RoomName::parse("a".repeat(256)).is_ok());
        assert_eq!(
            RoomName::parse("ab\ncd"),
            Err(InvalidRoomName::ControlCharacter(2))
        );
        assert_eq!(
            RoomName::parse("\u{7f}"),
            Err(InvalidRoomName::ControlCharacter(0))
        );
    }

    #[test]
    fn rejects_names_that_look_like_something_else() {
        for (name, at, c) in [
            ("invoice\u{202E}fdp.exe", 7, 0x202E),
            ("a\u{200B}b", 1, 0x200B),
            ("line\u{2028}break", 4, 0x2028),
            ("\u{FEFF}bom", 0, 0xFEFF),
            ("iso\u{2066}late", 3, 0x2066),
        ] {
            assert_eq!(
                RoomName::parse(name),
                Err(InvalidRoomName::InvisibleCharacter(at, c)),
                "{name:?}"
            );
            assert!(RoomName::from_stored(name).is_ok());
        }
        // Visible non-ASCII stays fine (emoji joined by U+200D, the
        // zero-width joiner, do not).
        assert!(RoomName::parse("café/ノート").is_ok());
    }
}
