//! The Hocuspocus wire format, as Tiptap's `@hocuspocus/provider` (2.x,
//! 3.x, 4.x) speaks it: every message starts with its address (the
//! document's name, or `name\0session` for a v4 provider that opened one
//! document twice), then a type, then the payload.
//!
//! Types 0 (sync), 1 (awareness) and 3 (awareness query) carry exactly what
//! a y-websocket message of the same type does, so after the address a
//! message is a y-websocket frame the room already understands, and a
//! room's frame becomes a Hocuspocus message by putting the address in
//! front of it. Type 4 (sync reply) is a sync message that asks for no
//! sync step 1 in return; the room never sends one unasked, so it is read
//! as type 0. The rest (auth, stateless, close, sync status) belong to the
//! connection, not the room.

use bytes::{BufMut, Bytes, BytesMut};
use yrs::encoding::read::{Cursor, Read};
use yrs::encoding::write::Write;

/// The message types, as `@hocuspocus/common` numbers them.
pub mod kind {
    pub const SYNC: u8 = 0;
    pub const AWARENESS: u8 = 1;
    pub const AUTH: u8 = 2;
    pub const QUERY_AWARENESS: u8 = 3;
    pub const SYNC_REPLY: u8 = 4;
    pub const STATELESS: u8 = 5;
    pub const BROADCAST_STATELESS: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const SYNC_STATUS: u8 = 8;
}

/// Auth sub-types.
mod auth {
    pub const TOKEN: u8 = 0;
    pub const PERMISSION_DENIED: u8 = 1;
    pub const AUTHENTICATED: u8 = 2;
}

/// Longest address accepted, in bytes: a room name is far shorter, and the
/// address is copied into every message sent back.
pub const MAX_ADDRESS_BYTES: usize = 1024;

/// Longest token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// One message from a provider.
#[derive(Debug, PartialEq, Eq)]
pub struct Incoming {
    /// Where replies go: the document's name, with a session after `\0`
    /// for a v4 provider.
    pub address: String,
    pub message: ProviderMessage,
}

impl Incoming {
    /// The document the message is for: the address up to its `\0`.
    pub fn document(&self) -> &str {
        document_of(&self.address)
    }
}

/// The document an address names.
pub fn document_of(address: &str) -> &str {
    address.split('\0').next().unwrap_or(address)
}

/// What a provider's message asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum ProviderMessage {
    /// Sync, sync reply, awareness or awareness query: the same bytes as a
    /// y-websocket frame (a sync reply re-typed as sync), for the room.
    Room(Bytes),
    /// The provider's token for this document (an empty string when it
    /// has none).
    Auth { token: String },
    /// A stateless message: an application string, not part of the
    /// document.
    Stateless(String),
    /// The provider detaches from this document.
    Close,
    /// Types a provider may send that carry nothing for the server (a sync
    /// status echo, a newer type): Hocuspocus ignores them too.
    Ignored { kind: u64 },
}

/// Why a provider's message was refused. Each ends its connection with
/// close code 1002 (protocol error).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HocuspocusError {
    #[error("empty message")]
    Empty,
    #[error("the address is not a length-prefixed UTF-8 string inside the message")]
    BadAddress,
    #[error("the address is {len} bytes; at most {MAX_ADDRESS_BYTES} are accepted")]
    AddressTooLong { len: usize },
    #[error("the message ends before its type")]
    NoType,
    #[error("the auth message is malformed")]
    BadAuth,
    #[error("the token is {len} bytes; at most {MAX_TOKEN_BYTES} are accepted")]
    TokenTooLong { len: usize },
    #[error("the stateless payload is not a length-prefixed UTF-8 string")]
    BadStateless,
    /// Type 6 is how Hocuspocus servers fan a stateless message out among
    /// themselves; from a client it is never legitimate.
    #[error("broadcast-stateless is a server-to-server message")]
    BroadcastFromClient,
}

/// Reads one provider message.
///
/// # Errors
/// [`HocuspocusError`] when the framing is broken; the payload of a room
/// message is checked later, by the y-websocket frame parser.
pub fn parse(frame: &Bytes) -> Result<Incoming, HocuspocusError> {
    if frame.is_empty() {
        return Err(HocuspocusError::Empty);
    }
    let mut cursor = Cursor::new(frame);
    let address = read_address(&mut cursor)?;
    let type_at = cursor.next;
    let kind: u64 = cursor.read_var().map_err(|_| HocuspocusError::NoType)?;
    let message = match u8::try_from(kind).unwrap_or(u8::MAX) {
        kind::SYNC | kind::AWARENESS | kind::QUERY_AWARENESS => {
            ProviderMessage::Room(frame.slice(type_at..))
        }
        kind::SYNC_REPLY => {
            let mut retyped = BytesMut::with_capacity(frame.len() - type_at);
            retyped.put_u8(kind::SYNC);
            retyped.put_slice(&frame[type_at + 1..]);
            ProviderMessage::Room(retyped.freeze())
        }
        kind::AUTH => {
            let sub: u64 = cursor.read_var().map_err(|_| HocuspocusError::BadAuth)?;
            if sub != u64::from(auth::TOKEN) {
                return Err(HocuspocusError::BadAuth);
            }
            let token = cursor.read_buf().map_err(|_| HocuspocusError::BadAuth)?;
            if token.len() > MAX_TOKEN_BYTES {
                return Err(HocuspocusError::TokenTooLong { len: token.len() });
            }
            let token = std::str::from_utf8(token).map_err(|_| HocuspocusError::BadAuth)?;
            // A v3+ provider adds its version after the token; not needed.
            ProviderMessage::Auth {
                token: token.to_string(),
            }
        }
        kind::STATELESS => {
            let payload = cursor
                .read_string()
                .map_err(|_| HocuspocusError::BadStateless)?;
            ProviderMessage::Stateless(payload.to_string())
        }
        kind::BROADCAST_STATELESS => return Err(HocuspocusError::BroadcastFromClient),
        kind::CLOSE => ProviderMessage::Close,
        _ => ProviderMessage::Ignored { kind },
    };
    Ok(Incoming { address, message })
}

fn read_address(cursor: &mut Cursor<'_>) -> Result<String, HocuspocusError> {
    let len: u64 = cursor.read_var().map_err(|_| HocuspocusError::BadAddress)?;
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > MAX_ADDRESS_BYTES {
        return Err(HocuspocusError::AddressTooLong { len });
    }
    let bytes = cursor
        .read_exact(len)
        .map_err(|_| HocuspocusError::BadAddress)?;
    let address = std::str::from_utf8(bytes).map_err(|_| HocuspocusError::BadAddress)?;
    Ok(address.to_string())
}

/// The address as it starts every message to its provider: a room's frame
/// goes out as this followed by the frame.
pub fn address_prefix(address: &str) -> Bytes {
    let mut out = Vec::with_capacity(address.len() + 2);
    out.write_string(address);
    out.into()
}

/// A room frame addressed to a provider.
pub fn addressed(prefix: &[u8], frame: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(prefix.len() + frame.len());
    out.put_slice(prefix);
    out.put_slice(frame);
    out.freeze()
}

/// "You may work on this document", with the scope the provider shows.
pub fn authenticated(address: &str, read_only: bool) -> Bytes {
    let mut out = start(address, kind::AUTH);
    out.write_var(auth::AUTHENTICATED);
    out.write_string(if read_only { "readonly" } else { "read-write" });
    out.into()
}

/// "You may not", with a reason the provider passes to
/// `onAuthenticationFailed`.
pub fn permission_denied(address: &str, reason: &str) -> Bytes {
    let mut out = start(address, kind::AUTH);
    out.write_var(auth::PERMISSION_DENIED);
    out.write_string(reason);
    out.into()
}

/// The answer to one update: `true` once it is stored, `false` if refused.
/// The provider counts its unsynced changes down on `true`.
pub fn sync_status(address: &str, saved: bool) -> Bytes {
    let mut out = start(address, kind::SYNC_STATUS);
    out.write_var(u8::from(saved));
    out.into()
}

/// The server ends this document's session (the socket stays open).
pub fn close(address: &str, reason: &str) -> Bytes {
    let mut out = start(address, kind::CLOSE);
    out.write_string(reason);
    out.into()
}

/// A stateless message to the provider.
pub fn stateless(address: &str, payload: &str) -> Bytes {
    let mut out = start(address, kind::STATELESS);
    out.write_string(payload);
    out.into()
}

fn start(address: &str, kind: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(address.len() + 16);
    out.write_string(address);
    out.write_var(kind);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ClientMessage, parse_frame};
    use yrs::updates::encoder::Encode;
    use yrs::{Doc, StateVector, Text, Transact};

    fn message(address: &str, kind: u8, payload: &[u8]) -> Bytes {
        let mut out = start(address, kind);
        out.extend_from_slice(payload);
        out.into()
    }

    #[test]
    fn a_sync_step_1_is_a_y_websocket_frame_after_its_address() {
        let sv = StateVector::default().encode_v1();
        let mut payload = vec![0]; // sync step 1
        payload.write_buf(&sv);
        let incoming = parse(&message("notes", kind::SYNC, &payload)).unwrap();
        assert_eq!(incoming.address, "notes");
        let ProviderMessage::Room(frame) = incoming.message else {
            panic!("a room message");
        };
        assert!(matches!(
            parse_frame(&frame).unwrap()[..],
            [ClientMessage::SyncStep1(_)]
        ));
    }

    #[test]
    fn a_sync_reply_reaches_the_room_as_sync() {
        let doc = Doc::new();
        let text = doc.get_or_insert_text("t");
        let update = {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 0, "hi");
            txn.encode_update_v1()
        };
        let mut payload = vec![1]; // sync step 2
        payload.write_buf(&update);
        let incoming = parse(&message("notes", kind::SYNC_REPLY, &payload)).unwrap();
        let ProviderMessage::Room(frame) = incoming.message else {
            panic!("a room message");
        };
        assert_eq!(frame[0], kind::SYNC);
        assert!(matches!(
            parse_frame(&frame).unwrap()[..],
            [ClientMessage::DocUpdate(_)]
        ));
    }

    #[test]
    fn a_v4_address_names_its_document_before_the_session() {
        let incoming = parse(&message("notes\0abc", kind::QUERY_AWARENESS, &[])).unwrap();
        assert_eq!(incoming.document(), "notes");
        assert_eq!(incoming.address, "notes\0abc");
    }

    #[test]
    fn auth_carries_the_token_and_ignores_the_provider_version() {
        let mut payload = vec![auth::TOKEN];
        payload.write_string("secret.jwt");
        payload.write_string("3.1.0");
        let incoming = parse(&message("notes", kind::AUTH, &payload)).unwrap();
        assert_eq!(
            incoming.message,
            ProviderMessage::Auth {
                token: "secret.jwt".into()
            }
        );
    }

    #[test]
    fn broken_framing_is_refused_with_its_reason() {
        assert_eq!(parse(&Bytes::new()), Err(HocuspocusError::Empty));
        // The name's length runs past the end.
        assert_eq!(
            parse(&Bytes::from_static(&[10, b'a', b'b'])),
            Err(HocuspocusError::BadAddress)
        );
        // Not UTF-8.
        assert_eq!(
            parse(&Bytes::from_static(&[1, 0xff, 0])),
            Err(HocuspocusError::BadAddress)
        );
        assert_eq!(
            parse(&Bytes::from_static(&[1, b'a'])),
            Err(HocuspocusError::NoType)
        );
        let mut long = Vec::new();
        long.write_string(&"x".repeat(MAX_ADDRESS_BYTES + 1));
        long.push(0);
        assert_eq!(
            parse(&long.into()),
            Err(HocuspocusError::AddressTooLong {
                len: MAX_ADDRESS_BYTES + 1
            })
        );
        assert_eq!(
            parse(&message("a", kind::AUTH, &[auth::AUTHENTICATED])),
            Err(HocuspocusError::BadAuth)
        );
        assert_eq!(
            parse(&message("a", kind::BROADCAST_STATELESS, &[1, b'x'])),
            Err(HocuspocusError::BroadcastFromClient)
        );
    }

    #[test]
    fn unknown_types_are_ignored_as_hocuspocus_does() {
        assert_eq!(
            parse(&message("a", 42, &[])).unwrap().message,
            ProviderMessage::Ignored { kind: 42 }
        );
        let mut big = start("a", 0);
        big.truncate(2);
        big.write_var(300u64);
        assert_eq!(
            parse(&big.into()).unwrap().message,
            ProviderMessage::Ignored { kind: 300 }
        );
    }

    #[test]
    fn replies_read_back_as_the_provider_reads_them() {
        let mut cursor_bytes = authenticated("doc\0s", true).to_vec();
        let mut cursor = Cursor::new(&cursor_bytes);
        assert_eq!(cursor.read_string().unwrap(), "doc\0s");
        assert_eq!(cursor.read_var::<u8>().unwrap(), kind::AUTH);
        assert_eq!(cursor.read_var::<u8>().unwrap(), auth::AUTHENTICATED);
        assert_eq!(cursor.read_string().unwrap(), "readonly");
        cursor_bytes = sync_status("doc", true).to_vec();
        assert_eq!(cursor_bytes, [3, b'd', b'o', b'c', kind::SYNC_STATUS, 1]);
        let framed = addressed(&address_prefix("doc"), &[1, 2, 3]);
        assert_eq!(&framed[..], [3, b'd', b'o', b'c', 1, 2, 3]);
    }
}
