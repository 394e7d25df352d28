//! The y-websocket wire protocol, on top of `yrs::sync`'s message types.
//!
//! Incoming frames are parsed here, in the connection's task and not the
//! room's, so that a hostile frame costs its own connection the decode time
//! and never reaches a room undecoded. Outgoing frames are encoded once and
//! shared (`Bytes`) by every peer that receives them.
//!
//! Stock y-websocket clients read exactly one message per frame, so every
//! frame we send holds one message; frames we receive may hold several.

use std::panic::{AssertUnwindSafe, catch_unwind};

use bytes::Bytes;
use yrs::StateVector;
use yrs::Update;
use yrs::encoding::read::{self, Cursor};
use yrs::encoding::write::Write;
use yrs::sync::protocol::{MSG_AUTH, MSG_AWARENESS, MSG_SYNC};
use yrs::sync::{AwarenessUpdate, Message, MessageReader, SyncMessage};
use yrs::updates::decoder::{Decode, DecoderV1};
use yrs::updates::encoder::{Encode, Encoder, EncoderV1};

use crate::awareness_guard::{self, StateError, StateLimits};
use crate::decode_guard::{self, GuardError};
use crate::subdocs::SubdocPolicy;

/// One message a client sent, decoded and ready for the room.
#[derive(Debug)]
pub enum ClientMessage {
    /// "Here is my state vector: send me what I miss."
    SyncStep1(StateVector),
    /// A document update, from a `SyncStep2` answer or a live `Update`.
    DocUpdate(DocUpdate),
    Awareness(AwarenessUpdate),
    AwarenessQuery,
    /// Auth and unknown message types: y-websocket ignores them, so do we.
    Ignored {
        tag: u8,
    },
}

/// A decoded document update together with the bytes it came from, so
/// that the room can forward and persist the original without re-encoding.
#[derive(Debug)]
pub struct DocUpdate {
    pub update: Update,
    /// The Yjs v1 encoding of `update`, as received.
    pub encoded: Bytes,
}

impl DocUpdate {
    /// Decodes an update that did not come in a frame (HTTP API, import).
    ///
    /// # Errors
    /// The decoder's error when the bytes are not a Yjs v1 update.
    pub fn decode(encoded: impl Into<Bytes>) -> Result<Self, read::Error> {
        let encoded = encoded.into();
        decode_guard::check_update_v1(&encoded)
            .map_err(|e| read::Error::Custom(format!("refused by the decode guard: {e}")))?;
        let update = catch_unwind(AssertUnwindSafe(|| Update::decode_v1(&encoded)))
            .unwrap_or(Err(read::Error::Custom("decoder panicked".into())))?;
        Ok(Self { update, encoded })
    }
}

/// Why a frame was refused. Every variant ends the sending connection with
/// close code 1002 (protocol error); the room never sees the frame.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("empty frame")]
    Empty,
    #[error("malformed message #{index} in frame")]
    Malformed {
        index: usize,
        #[source]
        source: read::Error,
    },
    #[error("message #{index} carries a document update that does not decode")]
    BadUpdate {
        index: usize,
        #[source]
        source: read::Error,
    },
    #[error("decoding message #{index} panicked inside yrs")]
    DecoderPanic { index: usize },
    /// The message could make yrs allocate or work far beyond its size.
    #[error("message #{index} refused before decoding")]
    Refused {
        index: usize,
        #[source]
        source: GuardError,
    },
    /// The update creates a subdocument, and the policy refuses them.
    #[error("message #{index} creates {count} subdocument(s)")]
    Subdocument { index: usize, count: usize },
    /// An awareness state is not JSON, or is too long or too deep (see
    /// [`crate::awareness_guard`]).
    #[error("message #{index} carries an awareness state the server refuses")]
    Awareness {
        index: usize,
        #[source]
        source: StateError,
    },
}

/// What the server accepts in a client's frame beyond well-formed bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct FrameRules {
    /// Whether updates may create subdocuments.
    pub subdocuments: SubdocPolicy,
    /// Bounds on each awareness state.
    pub awareness: StateLimits,
}

/// Splits one binary frame into its messages and decodes each, accepting
/// subdocuments and awareness states within the default limits.
///
/// # Errors
/// [`ProtocolError`] when any message in the frame is malformed; the whole
/// frame is then refused (nothing of it is applied).
pub fn parse_frame(frame: &Bytes) -> Result<Vec<ClientMessage>, ProtocolError> {
    parse_frame_with(
        frame,
        FrameRules {
            subdocuments: SubdocPolicy::Allow,
            ..FrameRules::default()
        },
    )
}

/// [`parse_frame`] under `rules`: updates that create subdocuments are
/// refused unless they allow them, and every awareness state must pass
/// [`awareness_guard::check_update`].
///
/// # Errors
/// As [`parse_frame`], [`ProtocolError::Subdocument`] and
/// [`ProtocolError::Awareness`].
pub fn parse_frame_with(
    frame: &Bytes,
    rules: FrameRules,
) -> Result<Vec<ClientMessage>, ProtocolError> {
    if frame.is_empty() {
        return Err(ProtocolError::Empty);
    }
    // yrs has panicked on malformed input before; a panic here must cost
    // one connection, never the process or a room.
    catch_unwind(AssertUnwindSafe(|| parse_frame_inner(frame, rules)))
        .unwrap_or(Err(ProtocolError::DecoderPanic { index: 0 }))
}

fn parse_frame_inner(
    frame: &Bytes,
    rules: FrameRules,
) -> Result<Vec<ClientMessage>, ProtocolError> {
    // `MessageReader` decodes state vectors and awareness updates itself:
    // check every payload before it does.
    decode_guard::check_frame(frame).map_err(|e| ProtocolError::Refused {
        index: e.index,
        source: e.source,
    })?;
    let mut decoder = DecoderV1::new(Cursor::new(frame));
    let mut messages = Vec::with_capacity(1);
    for (index, message) in MessageReader::new(&mut decoder).enumerate() {
        let message = message.map_err(|source| ProtocolError::Malformed { index, source })?;
        messages.push(match message {
            Message::Sync(SyncMessage::SyncStep1(sv)) => ClientMessage::SyncStep1(sv),
            Message::Sync(SyncMessage::SyncStep2(bytes) | SyncMessage::Update(bytes)) => {
                let summary = decode_guard::check_update_v1(&bytes)
                    .map_err(|source| ProtocolError::Refused { index, source })?;
                if summary.subdocs > 0 && !rules.subdocuments.allows() {
                    return Err(ProtocolError::Subdocument {
                        index,
                        count: summary.subdocs,
                    });
                }
                let update = Update::decode_v1(&bytes)
                    .map_err(|source| ProtocolError::BadUpdate { index, source })?;
                ClientMessage::DocUpdate(DocUpdate {
                    update,
                    encoded: Bytes::from(bytes),
                })
            }
            Message::Awareness(update) => {
                awareness_guard::check_update(&update, rules.awareness)
                    .map_err(|source| ProtocolError::Awareness { index, source })?;
                ClientMessage::Awareness(update)
            }
            Message::AwarenessQuery => ClientMessage::AwarenessQuery,
            Message::Auth(_) => ClientMessage::Ignored { tag: MSG_AUTH },
            Message::Custom(tag, _) => ClientMessage::Ignored { tag },
        });
    }
    if messages.is_empty() {
        // The reader stops at the end of the buffer; a frame that ended
        // inside its first message yields nothing rather than an error.
        return Err(ProtocolError::Malformed {
            index: 0,
            source: read::Error::EndOfBuffer(1),
        });
    }
    Ok(messages)
}

/// `[sync, step1, sv]`: what the server sends first on every connection.
pub fn encode_sync_step1(sv: &StateVector) -> Bytes {
    encode(&Message::Sync(SyncMessage::SyncStep1(sv.clone())))
}

/// `[sync, step2, update]`: the answer to a client's SyncStep1.
pub fn encode_sync_step2(update: &[u8]) -> Bytes {
    encode_sync_payload(yrs::sync::protocol::MSG_SYNC_STEP_2, update)
}

/// `[sync, update, update]`: a live update forwarded to peers.
pub fn encode_update(update: &[u8]) -> Bytes {
    encode_sync_payload(yrs::sync::protocol::MSG_SYNC_UPDATE, update)
}

/// `[awareness, update]`.
pub fn encode_awareness(update: &AwarenessUpdate) -> Bytes {
    let mut encoder = EncoderV1::new();
    encoder.write_var(MSG_AWARENESS);
    encoder.write_buf(update.encode_v1());
    Bytes::from(encoder.to_vec())
}

/// `[query awareness]`.
pub fn encode_awareness_query() -> Bytes {
    encode(&Message::AwarenessQuery)
}

/// Builds a sync frame around an update without copying it through an
/// intermediate `Message` (updates can be megabytes).
fn encode_sync_payload(kind: u8, update: &[u8]) -> Bytes {
    let mut encoder = EncoderV1::new();
    encoder.write_var(MSG_SYNC);
    encoder.write_var(kind);
    encoder.write_buf(update);
    Bytes::from(encoder.to_vec())
}

fn encode(message: &Message) -> Bytes {
    Bytes::from(message.encode_v1())
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::{Doc, GetString, Text, Transact};

    fn text_update(s: &str) -> Vec<u8> {
        let doc = Doc::new();
        let text = doc.get_or_insert_text("t");
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, s);
        txn.encode_update_v1()
    }

    #[test]
    fn parses_several_messages_in_one_frame() {
        let mut frame = encode_update(&text_update("hi")).to_vec();
        frame.extend_from_slice(&encode_awareness_query());
        frame.extend_from_slice(&encode_sync_step1(&StateVector::default()));
        let messages = parse_frame(&Bytes::from(frame)).unwrap();
        assert!(matches!(messages[0], ClientMessage::DocUpdate(_)));
        assert!(matches!(messages[1], ClientMessage::AwarenessQuery));
        assert!(matches!(messages[2], ClientMessage::SyncStep1(_)));
        if let ClientMessage::DocUpdate(u) = &messages[0] {
            let doc = Doc::new();
            doc.transact_mut()
                .apply_update(Update::decode_v1(&u.encoded).unwrap())
                .unwrap();
            assert_eq!(
                doc.get_or_insert_text("t").get_string(&doc.transact()),
                "hi"
            );
        }
    }

    #[test]
    fn unknown_types_are_ignored() {
        let frame = Bytes::from_static(&[9, 2, 0xAA, 0xBB]);
        let messages = parse_frame(&frame).unwrap();
        assert!(matches!(messages[0], ClientMessage::Ignored { tag: 9 }));
    }

    #[test]
    fn a_frame_with_a_state_that_is_not_json_is_refused_whole() {
        use yrs::block::ClientID;
        use yrs::sync::awareness::AwarenessUpdateEntry;
        let awareness = |json: &str| {
            let entry = AwarenessUpdateEntry {
                clock: 1,
                json: json.into(),
            };
            let update = AwarenessUpdate {
                clients: [(ClientID::new(5), entry)].into(),
            };
            encode_awareness(&update)
        };
        let mut frame = encode_update(&text_update("hi")).to_vec();
        frame.extend_from_slice(&awareness("not json {"));
        assert!(matches!(
            parse_frame(&Bytes::from(frame)),
            Err(ProtocolError::Awareness { index: 1, .. })
        ));
        let fine = parse_frame(&awareness(r#"{"user":{"name":"ann"}}"#)).unwrap();
        assert!(matches!(fine[0], ClientMessage::Awareness(_)));
    }

    #[test]
    fn rejects_garbage() {
        for frame in [
            &[][..],
            &[0][..],
            &[0, 2][..],
            &[0, 2, 10, 1, 2][..],
            &[0, 7, 0][..],
            &[
                0, 2, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F,
            ][..],
            &[0, 2, 3, 0xFF, 0xFF, 0xFF][..],
        ] {
            assert!(
                parse_frame(&Bytes::copy_from_slice(frame)).is_err(),
                "{frame:?}"
            );
        }
    }
}
