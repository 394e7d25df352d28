//! The two framings the generator speaks.
//!
//! y-websocket (crdt-hub, `@y/websocket-server`): one room per URL path, each
//! frame is a `yrs::sync::Message`.
//!
//! Hocuspocus: one socket may carry several documents, so every frame starts
//! with the document name as a lib0 var-string, then the same message. A
//! client must send an Auth/Token message (`[name][2][0][token]`) before the
//! server handles anything else for that document (it queues the rest); the
//! server answers `[name][2][2][scope]`. Sync replies to a client's SyncStep1
//! come with type 4 (`SyncReply`) instead of 0, and each applied update is
//! acknowledged with a type-8 `SyncStatus` message.

use std::sync::Arc;

use yrs::StateVector;
use yrs::encoding::read::{Cursor, Read};
use yrs::encoding::write::Write;
use yrs::sync::{Message, SyncMessage};
use yrs::updates::encoder::Encode;

const MSG_SYNC: u32 = 0;
const MSG_AWARENESS: u32 = 1;
const MSG_AUTH: u32 = 2;
/// Hocuspocus: a sync message that must not trigger another SyncStep1.
const MSG_SYNC_REPLY: u32 = 4;
const SYNC_STEP1: u32 = 0;
const SYNC_STEP2: u32 = 1;
const SYNC_UPDATE: u32 = 2;
/// Hocuspocus auth sub-types.
const AUTH_TOKEN: u32 = 0;
const AUTH_PERMISSION_DENIED: u32 = 1;
const AUTH_AUTHENTICATED: u32 = 2;

/// Which framing a server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Protocol {
    /// Plain y-websocket: room in the URL path.
    YWebsocket,
    /// Hocuspocus: document name prefixed to every message.
    Hocuspocus,
}

/// How to address one room and frame its messages.
#[derive(Debug, Clone)]
pub struct Wire {
    protocol: Protocol,
    room: String,
    /// Hocuspocus' document-name prefix; empty for y-websocket.
    prefix: Vec<u8>,
}

/// A server frame, classified just enough for the benchmark.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    SyncStep1,
    SyncStep2(&'a [u8]),
    Update(&'a [u8]),
    /// An awareness update (y-protocols encoding), undecoded.
    Awareness(&'a [u8]),
    Authenticated,
    PermissionDenied,
    /// Awareness, sync status and anything else the benchmark ignores.
    Other,
    Malformed,
}

impl Wire {
    /// One wire per room, for rooms named `{prefix}-0`, `{prefix}-1`, …
    pub fn for_rooms(protocol: Protocol, prefix: &str, rooms: usize) -> Vec<Arc<Self>> {
        (0..rooms)
            .map(|r| Arc::new(Self::new(protocol, &format!("{prefix}-{r}"))))
            .collect()
    }

    pub fn new(protocol: Protocol, room: &str) -> Self {
        let mut prefix = Vec::new();
        if protocol == Protocol::Hocuspocus {
            prefix.write_string(room);
        }
        Self {
            protocol,
            room: room.to_owned(),
            prefix,
        }
    }

    pub fn room(&self) -> &str {
        &self.room
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The URL to open for this room on the server at `base` (`ws://host:port`).
    pub fn url(&self, base: &str) -> String {
        let base = base.trim_end_matches('/');
        match self.protocol {
            Protocol::YWebsocket => format!("{base}/{}", self.room),
            Protocol::Hocuspocus => format!("{base}/"),
        }
    }

    /// The frame a client sends right after the WebSocket opens, if any.
    pub fn hello(&self) -> Option<Vec<u8>> {
        (self.protocol == Protocol::Hocuspocus).then(|| {
            let mut frame = self.prefix.clone();
            frame.write_var(MSG_AUTH);
            frame.write_var(AUTH_TOKEN);
            frame.write_string("");
            frame
        })
    }

    pub fn sync_step1(&self, sv: &StateVector) -> Vec<u8> {
        self.frame(&Message::Sync(SyncMessage::SyncStep1(sv.clone())))
    }

    /// Wraps a Yjs v1 update as a sync Update message.
    pub fn update(&self, update: Vec<u8>) -> Vec<u8> {
        self.frame(&Message::Sync(SyncMessage::Update(update)))
    }

    /// An awareness message setting `client`'s state to `json` at `clock`.
    pub fn awareness(&self, client: u64, clock: u32, json: &str) -> Vec<u8> {
        use yrs::block::ClientID;
        use yrs::sync::AwarenessUpdate;
        use yrs::sync::awareness::AwarenessUpdateEntry;
        let entry = AwarenessUpdateEntry {
            clock,
            json: json.into(),
        };
        self.frame(&Message::Awareness(AwarenessUpdate {
            clients: [(ClientID::new(client), entry)].into(),
        }))
    }

    /// An awareness message carrying `update` (an encoded awareness
    /// update, as [`Incoming::Awareness`] borrows it) as it is.
    pub fn awareness_update(&self, update: &[u8]) -> Vec<u8> {
        use yrs::encoding::write::Write;
        let mut frame = self.prefix.clone();
        frame.write_var(1u32); // MSG_AWARENESS
        frame.write_buf(update);
        frame
    }

    fn frame(&self, message: &Message) -> Vec<u8> {
        let mut frame = self.prefix.clone();
        frame.extend_from_slice(&message.encode_v1());
        frame
    }

    /// Classifies a frame from the server, borrowing any update payload.
    pub fn parse<'a>(&self, frame: &'a [u8]) -> Incoming<'a> {
        let mut cursor = Cursor::new(frame);
        if self.protocol == Protocol::Hocuspocus && cursor.read_string().is_err() {
            return Incoming::Malformed;
        }
        parse_message(&mut cursor, self.protocol).unwrap_or(Incoming::Malformed)
    }
}

fn parse_message<'a>(
    cursor: &mut Cursor<'a>,
    protocol: Protocol,
) -> Result<Incoming<'a>, yrs::encoding::read::Error> {
    let tag: u32 = cursor.read_var()?;
    let is_sync = tag == MSG_SYNC || (protocol == Protocol::Hocuspocus && tag == MSG_SYNC_REPLY);
    if is_sync {
        return Ok(match cursor.read_var::<u32>()? {
            SYNC_STEP1 => Incoming::SyncStep1,
            SYNC_STEP2 => Incoming::SyncStep2(read_payload(cursor)?),
            SYNC_UPDATE => Incoming::Update(read_payload(cursor)?),
            _ => Incoming::Other,
        });
    }
    if tag == MSG_AWARENESS {
        return Ok(Incoming::Awareness(read_payload(cursor)?));
    }
    if tag == MSG_AUTH && protocol == Protocol::Hocuspocus {
        return Ok(match cursor.read_var::<u32>()? {
            AUTH_AUTHENTICATED => Incoming::Authenticated,
            AUTH_PERMISSION_DENIED => Incoming::PermissionDenied,
            _ => Incoming::Other,
        });
    }
    Ok(Incoming::Other)
}

/// A length-prefixed buffer, borrowed from the frame itself (`Read::read_buf`
/// would tie it to the cursor instead).
fn read_payload<'a>(cursor: &mut Cursor<'a>) -> Result<&'a [u8], yrs::encoding::read::Error> {
    let len = cursor.read_var::<u32>()? as usize;
    let start = cursor.next;
    let end = start
        .checked_add(len)
        .filter(|&end| end <= cursor.buf.len())
        .ok_or(yrs::encoding::read::Error::EndOfBuffer(len))?;
    cursor.next = end;
    Ok(&cursor.buf[start..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hocuspocus_frames_carry_the_document_name() {
        let wire = Wire::new(Protocol::Hocuspocus, "room-1");

        assert_eq!(
            wire.hello().unwrap(),
            b"\x06room-1\x02\x00\x00",
            "auth token message with an empty token"
        );
        assert_eq!(
            wire.update(vec![7, 8, 9]),
            b"\x06room-1\x00\x02\x03\x07\x08\x09"
        );
        assert_eq!(
            wire.sync_step1(&StateVector::default()),
            b"\x06room-1\x00\x00\x01\x00"
        );
        assert_eq!(wire.url("ws://127.0.0.1:9/"), "ws://127.0.0.1:9/");
    }

    #[test]
    fn an_echo_is_the_awareness_message_it_answers() {
        for protocol in [Protocol::YWebsocket, Protocol::Hocuspocus] {
            let wire = Wire::new(protocol, "room-1");
            let sent = wire.awareness(42, 7, r#"{"cursor":1}"#);
            let Incoming::Awareness(update) = wire.parse(&sent) else {
                panic!("not awareness");
            };
            assert_eq!(wire.awareness_update(update), sent);
        }
    }

    #[test]
    fn hocuspocus_replies_parse() {
        let wire = Wire::new(Protocol::Hocuspocus, "d");

        assert_eq!(
            wire.parse(b"\x01d\x02\x02\x0aread-write"),
            Incoming::Authenticated
        );
        assert_eq!(
            wire.parse(b"\x01d\x04\x01\x02\xaa\xbb"),
            Incoming::SyncStep2(&[0xaa, 0xbb])
        );
        assert_eq!(
            wire.parse(b"\x01d\x00\x02\x01\xcc"),
            Incoming::Update(&[0xcc])
        );
        assert_eq!(
            wire.parse(b"\x01d\x08\x01"),
            Incoming::Other,
            "sync status ack"
        );
        assert_eq!(
            wire.parse(b"\x05d"),
            Incoming::Malformed,
            "name longer than frame"
        );
    }

    #[test]
    fn y_websocket_frames_have_no_prefix() {
        let wire = Wire::new(Protocol::YWebsocket, "r");

        assert!(wire.hello().is_none());
        assert_eq!(wire.update(vec![1]), b"\x00\x02\x01\x01");
        assert_eq!(wire.parse(b"\x00\x01\x01\x05"), Incoming::SyncStep2(&[5]));
        assert_eq!(
            wire.parse(b"\x04\x01\x00"),
            Incoming::Other,
            "type 4 is not sync here"
        );
        assert_eq!(wire.url("ws://127.0.0.1:9"), "ws://127.0.0.1:9/r");
    }
}
