//! What nodes tell each other about a room, and how it looks in a stream
//! entry: fields `n` (sending node), `k` (kind) and `d` (payload).

use bytes::Bytes;

/// One message a room publishes on its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusMessage {
    /// A Yjs v1 update the room accepted (or an anti-entropy diff).
    Update(Bytes),
    /// An awareness frame (`[1][awareness update]`), as sent to peers.
    Awareness(Bytes),
    /// The room's state vector and delete-set digest, for anti-entropy
    /// (see `anti_entropy`).
    StateVector(Bytes),
    /// "I just loaded this room: send me your clients' awareness."
    AwarenessQuery,
    /// "This room was deleted through my API": every node holding it
    /// closes it without saving (see `delete`).
    Deleted,
    /// A stateless message for every Hocuspocus provider in the room (the
    /// UTF-8 payload), posted to another node's API. Best effort, as
    /// Hocuspocus's own Redis fan-out is: a dropped one is not repaired.
    Stateless(Bytes),
}

impl BusMessage {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Update(_) => "u",
            Self::Awareness(_) => "a",
            Self::StateVector(_) => "s",
            Self::AwarenessQuery => "q",
            Self::Deleted => "x",
            Self::Stateless(_) => "t",
        }
    }

    pub fn payload(&self) -> &[u8] {
        match self {
            Self::Update(b) | Self::Awareness(b) | Self::StateVector(b) | Self::Stateless(b) => b,
            Self::AwarenessQuery | Self::Deleted => &[],
        }
    }

    /// Rebuilds a message from an entry's kind and payload (`None` for a
    /// kind this version does not know: newer nodes may send more).
    pub fn parse(kind: &str, payload: Vec<u8>) -> Option<Self> {
        let payload = Bytes::from(payload);
        Some(match kind {
            "u" => Self::Update(payload),
            "a" => Self::Awareness(payload),
            "s" => Self::StateVector(payload),
            "q" => Self::AwarenessQuery,
            "x" => Self::Deleted,
            "t" => Self::Stateless(payload),
            _ => return None,
        })
    }
}

/// What the bus hands a room's owner task (`RoomCommand::Cluster`).
#[derive(Debug)]
pub enum Remote {
    /// Another node published this.
    Message(BusMessage),
    /// Time to publish the state vector and expire stale remote awareness.
    Tick,
    /// The reader (re)connected: a room that shares its content asks the
    /// others for what it missed meanwhile.
    Connected,
    /// What the room's interest record said (see `interest`).
    Interest(super::interest::Renewed),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for message in [
            BusMessage::Update(Bytes::from_static(b"\x01\x02")),
            BusMessage::Awareness(Bytes::from_static(b"\x01\x00")),
            BusMessage::StateVector(Bytes::from_static(b"\x00")),
            BusMessage::AwarenessQuery,
            BusMessage::Stateless(Bytes::from_static(b"saved")),
            BusMessage::Deleted,
        ] {
            let parsed = BusMessage::parse(message.kind(), message.payload().to_vec());
            assert_eq!(parsed, Some(message));
        }
        assert_eq!(BusMessage::parse("zz", vec![]), None);
    }
}
