//! One document attached to a multiplexed socket: its place in the room,
//! and the task that carries the room's frames (and the sync statuses of
//! the provider's updates) to the socket, addressed to its provider.

use bytes::Bytes;
use crdt_hub_core::hocuspocus::{addressed, sync_status};
use crdt_store::RoomName;
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::close::{self, CloseReason};
use crate::room::{Access, InboxHandle, Next, PeerId, PeerInbox, RoomHandle, WrittenMark};
use crate::sessions::{Closer, Registered};

/// What the document tasks hand the socket's writer.
pub(super) enum Out {
    /// With the mark of the room's frame it carries, if it carries one:
    /// until the frame is written the room writes nothing directly.
    Frame(Bytes, Option<WrittenMark>),
    /// A frame the room wrote directly is only partly in the socket.
    Flush,
    /// End the whole socket: the room or an admin asked for it.
    Close(CloseReason),
}

/// The answer a provider's updates get, in the order they came.
pub(super) enum Ack {
    /// Answered once the room says they are stored (or not).
    Stored {
        updates: usize,
        stored: oneshot::Receiver<bool>,
    },
    /// Answered now: `saved` per update (a read-only document's).
    Now(Vec<bool>),
}

/// Updates of one document waiting for the database (with as many in
/// the channel to this task): past that, the provider is sending faster
/// than storage takes it (or storage is down), and its socket is closed
/// (1013) rather than its answers piling up.
pub(super) const MAX_WAITING_ACKS: usize = 4096;

/// A document a provider attached.
pub(super) struct Attached {
    pub room: RoomHandle,
    pub name: RoomName,
    pub peer: PeerId,
    pub access: Access,
    /// When its token stops granting access.
    pub access_ends: Option<Instant>,
    pub sub: Option<std::sync::Arc<str>>,
    /// Sync statuses to send, in order.
    pub acks: mpsc::Sender<Ack>,
    /// Its place among the live sessions (revocations and admin closes).
    pub _registered: Registered,
    pub forwarder: JoinHandle<()>,
    /// Lets the room write to the socket itself, and stops it.
    pub inbox: InboxHandle,
}

impl Attached {
    /// Leaves the room and stops carrying its frames.
    pub async fn detach(self) {
        self.inbox.stop_direct_writes();
        self.forwarder.abort();
        self.room.leave(self.peer).await;
    }
}

/// Carries the room's frames for one document to the socket, addressed to
/// its provider (`prefix`), when the room could not write them itself;
/// and the sync statuses of the provider's updates, in order, as each is
/// stored. Ends when the room or an admin closes the peer (the whole socket
/// closes then: a provider resyncs every document when it reconnects), or
/// when the socket's writer is gone.
pub(super) async fn forward(
    address: String,
    prefix: Bytes,
    inbox: PeerInbox,
    closer: std::sync::Arc<Closer>,
    mut acks: mpsc::Receiver<Ack>,
    out: mpsc::Sender<Out>,
) {
    let mut waiting = FuturesOrdered::new();
    loop {
        tokio::select! {
            next = inbox.next() => match next {
                Next::Frame(frame) => {
                    let mark = inbox.mark(&frame);
                    if out.send(Out::Frame(addressed(&prefix, &frame), Some(mark))).await.is_err() {
                        return;
                    }
                }
                Next::Flush => {
                    if out.send(Out::Flush).await.is_err() {
                        return;
                    }
                }
                Next::Close(reason) => {
                    let _ = out.send(Out::Close(reason)).await;
                    return;
                }
                Next::RoomGone => {
                    let _ = out.send(Out::Close(close::ROOM_FAILED)).await;
                    return;
                }
            },
            reason = closer.closed() => {
                let _ = out.send(Out::Close(reason)).await;
                return;
            }
            Some(ack) = acks.recv(), if waiting.len() < MAX_WAITING_ACKS => waiting.push_back(async move {
                match ack {
                    Ack::Stored { updates, stored } => {
                        vec![stored.await.unwrap_or(false); updates]
                    }
                    Ack::Now(saved) => saved,
                }
            }),
            Some(saved) = waiting.next(), if !waiting.is_empty() => {
                for saved in saved {
                    if out.send(Out::Frame(sync_status(&address, saved), None)).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}
