//! The link between a room and one connected peer: the frames the room
//! wants written to the socket, and the room's request to close it.
//!
//! This is a bounded queue of its own rather than a `tokio::sync::mpsc`
//! channel because of idle memory: tokio's channel allocates a 32-slot
//! block (about 1 KiB for `Bytes`) when it is created and keeps it for the
//! channel's life, and with 10,000 mostly idle connections per node that
//! block is an eighth of what a connection costs. A `VecDeque` allocates
//! only when frames queue, and is given back once a backlog has drained.
//!
//! What waits for a peer is bounded in frames and in bytes: a peer that
//! reads more slowly than its room changes is closed (1013) before its
//! backlog grows without end; nothing is dropped, it reconnects and
//! resyncs. Bytes are counted from the moment a frame is queued until the
//! connection has handed it to the kernel, so frames the connection took
//! off the queue and is still writing (in tungstenite's buffer, or in the
//! socket's `unsent` tail) count as well. Only the tail of a frame the room
//! wrote directly and the kernel cut short is not counted: at most one
//! small frame ([`MAX_DIRECT_FRAME`]).
//!
//! When the peer's socket is plain TCP the room writes a small frame to it
//! directly ([`crate::shared_socket`]) instead of queueing it, as long as
//! nothing is queued or being written for the peer: frames keep their order,
//! and a peer that keeps up costs no wake-up of its connection task per
//! delivery. Once the socket pushes back, frames queue as before.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::close::CloseReason;
use crate::shared_socket::{MAX_DIRECT_FRAME, SharedSocket};

/// Queue capacity kept after a backlog drains; more is given back.
const KEPT_CAPACITY: usize = 8;

/// What may wait for one peer before it counts as too slow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxLimits {
    /// Frames queued (`--max-queued-frames`).
    pub frames: usize,
    /// Bytes waiting behind the oldest frame not yet written
    /// (`--max-queued-bytes`). The oldest frame itself is not counted, so
    /// that a document's sync answer larger than the bound still goes out;
    /// what queues behind it is bounded.
    pub bytes: usize,
}

impl Default for OutboxLimits {
    fn default() -> Self {
        Self {
            frames: 2048,
            bytes: 64 << 20,
        }
    }
}

/// Creates the two ends of a peer link holding at most what `limits`
/// allow; with `socket`, the room writes frames to it directly while it can.
pub fn link(limits: OutboxLimits, socket: Option<Arc<SharedSocket>>) -> (PeerLink, PeerInbox) {
    let direct = socket.is_some();
    new_link(limits, socket, Bytes::new(), direct)
}

/// A link for a document on a multiplexed (Hocuspocus) socket: every frame
/// starts with `prefix` (the document's address), and it takes stateless
/// messages. Direct writes wait for [`InboxHandle::allow_direct_writes`]:
/// the session answers the provider's token before the room may speak.
pub fn multiplexed_link(
    limits: OutboxLimits,
    socket: Option<Arc<SharedSocket>>,
    prefix: Bytes,
) -> (PeerLink, PeerInbox) {
    new_link(limits, socket, prefix, false)
}

fn new_link(
    limits: OutboxLimits,
    socket: Option<Arc<SharedSocket>>,
    prefix: Bytes,
    direct: bool,
) -> (PeerLink, PeerInbox) {
    let stateless = !prefix.is_empty();
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            frames: VecDeque::new(),
            capacity: limits.frames.max(1),
            max_bytes: limits.bytes,
            queued_bytes: 0,
            taken_bytes: 0,
            oldest_taken: 0,
            close: None,
            links: 1,
            connection_gone: false,
            writing: false,
            flush_needed: false,
            direct,
            taken_frames: 0,
        }),
        wake: Notify::new(),
        socket,
        prefix,
        stateless,
    });
    (
        PeerLink {
            shared: shared.clone(),
        },
        PeerInbox { shared },
    )
}

/// The room's end: queues frames for the peer, or asks it to close.
/// Dropping the last clone (the room let the peer go, or the room itself
/// ended) ends the connection's session.
#[derive(Debug)]
pub struct PeerLink {
    shared: Arc<Shared>,
}

/// The connection's end.
#[derive(Debug)]
pub struct PeerInbox {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the connection task. `notify_one` keeps a permit when the
    /// task is busy writing, so nothing queued meanwhile is missed.
    wake: Notify,
    /// The peer's socket, when the room may write to it itself.
    socket: Option<Arc<SharedSocket>>,
    /// What every frame written directly starts with: a Hocuspocus
    /// document's address (the connection adds it to the frames it writes).
    prefix: Bytes,
    /// The peer speaks the Hocuspocus protocol, which has stateless
    /// messages; a y-websocket client would log them as unknown.
    stateless: bool,
}

#[derive(Debug)]
struct State {
    frames: VecDeque<Bytes>,
    /// Frames queued for one client before it counts as too slow.
    capacity: usize,
    /// Bytes waiting behind the oldest unwritten frame before it counts
    /// as too slow.
    max_bytes: usize,
    /// Bytes in `frames`.
    queued_bytes: usize,
    /// Bytes of the frames the connection took and has not reported
    /// written yet ([`PeerInbox::written`]).
    taken_bytes: usize,
    /// Size of the first frame taken since then: the oldest unwritten one.
    oldest_taken: usize,
    /// The first close reason asked for wins.
    close: Option<CloseReason>,
    /// Live [`PeerLink`] clones: at zero the room has let go of the peer.
    links: usize,
    /// The session ended (its `Leave` is on the way to the room); frames
    /// for it are dropped, not counted against a queue nobody reads.
    connection_gone: bool,
    /// The connection took frames off the queue that may not be in the
    /// socket yet: a frame written directly now could overtake them.
    writing: bool,
    /// A direct write was cut short: its tail waits in the socket for the
    /// connection to flush it.
    flush_needed: bool,
    /// Direct writes are allowed (a shared socket, and the connection is
    /// not closing it).
    direct: bool,
    /// Frames the connection has taken off the queue, ever: which of them
    /// a [`WrittenMark`] stands for.
    taken_frames: u64,
}

/// How [`PeerLink::send`] handled a frame.
#[cfg(test)]
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// Written to the socket by the caller (for the sent-frame metrics).
    Directly,
    /// Queued for the connection (or dropped: the peer is on its way out).
    Queued,
}

/// The peer's queue is full: it is not reading fast enough. Says what
/// waited for it.
#[derive(Debug, PartialEq, Eq)]
pub struct QueueFull {
    /// Frames queued.
    pub frames: usize,
    /// Bytes queued or being written.
    pub bytes: usize,
}

/// What the connection should do next.
#[derive(Debug, PartialEq)]
pub enum Next {
    /// Write this frame (more may be queued behind it: [`PeerInbox::try_next`]),
    /// then call [`PeerInbox::written`].
    Frame(Bytes),
    /// Flush the socket: a frame the room wrote is only partly in it.
    Flush,
    /// The room asked for this close frame.
    Close(CloseReason),
    /// The room let go of the peer without a reason (it stopped).
    RoomGone,
}

impl State {
    /// Whether queueing `len` more bytes would put more than `max_bytes`
    /// behind the oldest frame not yet written (which may be this one).
    fn too_many_bytes_with(&self, len: usize) -> bool {
        let waiting = self.queued_bytes + self.taken_bytes + len;
        let oldest = if self.taken_bytes > 0 {
            self.oldest_taken
        } else {
            self.frames.front().map_or(len, Bytes::len)
        };
        waiting - oldest > self.max_bytes
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock, but a poisoned queue is
        // still a queue.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl PeerLink {
    /// Whether stateless messages are sent to this peer.
    pub fn takes_stateless(&self) -> bool {
        self.shared.stateless
    }

    /// Writes a frame to the socket if nothing is ahead of it there, or
    /// queues it: [`PeerLink::send_all`] for one frame, as the tests send
    /// (the room sends everything through `send_all`).
    #[cfg(test)]
    pub fn send(&self, frame: &Bytes) -> Result<Sent, QueueFull> {
        self.send_all(&[frame]).map(|direct| {
            if direct == 1 {
                Sent::Directly
            } else {
                Sent::Queued
            }
        })
    }

    /// Writes as many of `frames` as the socket takes now, in one write,
    /// if nothing is ahead of them there; queues the rest. Returns how many
    /// were written here. Refused when the queue is full; dropped when a
    /// close was already asked for (the peer is on its way out).
    pub fn send_all(&self, frames: &[&Bytes]) -> Result<usize, QueueFull> {
        let mut state = self.shared.lock();
        if state.close.is_some() || state.connection_gone {
            return Ok(0);
        }
        let mut direct = 0;
        if state.direct
            && !state.writing
            && state.frames.is_empty()
            && let Some(socket) = &self.shared.socket
        {
            let prefix = &self.shared.prefix;
            let small = frames
                .iter()
                .take_while(|f| prefix.len() + f.len() <= MAX_DIRECT_FRAME)
                .count();
            let written = socket.try_write_frames(prefix, &frames[..small]);
            direct = written.taken;
            if written.started {
                state.flush_needed = true;
            }
        }
        let was_empty = state.frames.is_empty();
        let mut result = Ok(direct);
        for frame in &frames[direct..] {
            if state.frames.len() >= state.capacity || state.too_many_bytes_with(frame.len()) {
                result = Err(QueueFull {
                    frames: state.frames.len(),
                    bytes: state.queued_bytes + state.taken_bytes,
                });
                break;
            }
            state.queued_bytes += frame.len();
            state.frames.push_back((*frame).clone());
        }
        let wake = (was_empty && !state.frames.is_empty()) || state.flush_needed;
        drop(state);
        // A non-empty queue already has a wake-up pending or the task is
        // draining it: one wake-up per batch, not per frame.
        if wake {
            self.shared.wake.notify_one();
        }
        result
    }

    /// Asks the connection to close with `reason`, even while its queue is
    /// full. Frames still queued are not written: the client resyncs.
    pub fn close(&self, reason: CloseReason) {
        let mut state = self.shared.lock();
        if state.close.is_none() {
            state.close = Some(reason);
            state.frames = VecDeque::new();
            state.queued_bytes = 0;
            drop(state);
            self.shared.wake.notify_one();
        }
    }
}

impl Clone for PeerLink {
    fn clone(&self) -> Self {
        self.shared.lock().links += 1;
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for PeerLink {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.links -= 1;
        if state.links == 0 {
            drop(state);
            self.shared.wake.notify_one();
        }
    }
}

impl Drop for PeerInbox {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.connection_gone = true;
        state.frames = VecDeque::new();
        state.queued_bytes = 0;
    }
}

impl PeerInbox {
    /// Waits for the next frame or close request. A close request comes
    /// before queued frames.
    pub async fn next(&self) -> Next {
        loop {
            if let Some(next) = self.try_next() {
                return next;
            }
            self.shared.wake.notified().await;
        }
    }

    /// The next frame or close request, if there is one now.
    pub fn try_next(&self) -> Option<Next> {
        let mut state = self.shared.lock();
        if let Some(reason) = state.close {
            return Some(Next::Close(reason));
        }
        if let Some(frame) = state.frames.pop_front() {
            if state.frames.is_empty() && state.frames.capacity() > KEPT_CAPACITY {
                state.frames = VecDeque::new();
            }
            state.queued_bytes -= frame.len();
            if state.taken_bytes == 0 {
                state.oldest_taken = frame.len();
            }
            // Still waiting until it is written: counted until then.
            state.taken_bytes += frame.len();
            state.taken_frames += 1;
            state.writing = true;
            return Some(Next::Frame(frame));
        }
        if state.flush_needed {
            state.flush_needed = false;
            return Some(Next::Flush);
        }
        (state.links == 0).then_some(Next::RoomGone)
    }

    /// The frames taken so far are in the socket (flushed): the room may
    /// write directly again once the queue is empty.
    pub fn written(&self) {
        let mut state = self.shared.lock();
        state.taken_bytes = 0;
        state.oldest_taken = 0;
        if state.frames.is_empty() {
            state.writing = false;
        }
    }

    /// The connection is about to write its close frame: nothing may be
    /// written directly after it.
    pub fn stop_direct_writes(&self) {
        self.shared.lock().direct = false;
    }

    /// For a frame just taken ([`Next::Frame`]) that another task writes:
    /// that task says it is written with [`WrittenMark::written`], in place
    /// of [`PeerInbox::written`].
    pub fn mark(&self, frame: &Bytes) -> WrittenMark {
        WrittenMark {
            shared: self.shared.clone(),
            frame: self.shared.lock().taken_frames,
            len: frame.len(),
        }
    }

    /// A hold on the link for the task that writes to the socket when
    /// another task reads this inbox (a multiplexed socket's document).
    pub fn handle(&self) -> InboxHandle {
        InboxHandle {
            shared: self.shared.clone(),
        }
    }
}

/// One frame taken off a link, on its way to the socket through another
/// task: until it is written, nothing may be written directly for the
/// peer (it would overtake the frame).
#[derive(Debug)]
pub struct WrittenMark {
    shared: Arc<Shared>,
    /// Its place among the frames taken ([`State::taken_frames`]).
    frame: u64,
    len: usize,
}

impl WrittenMark {
    /// The frame is in the socket (flushed). Marks are written in order.
    pub fn written(self) {
        let mut state = self.shared.lock();
        state.taken_bytes = state.taken_bytes.saturating_sub(self.len);
        if state.taken_frames == self.frame {
            // The last frame taken: nothing is on its way any more.
            state.taken_bytes = 0;
            state.oldest_taken = 0;
            if state.frames.is_empty() {
                state.writing = false;
            }
        } else {
            // Later frames are still on their way; the oldest of them is
            // not known, so all of them count against the byte bound.
            state.oldest_taken = 0;
        }
    }
}

/// See [`PeerInbox::handle`].
#[derive(Debug, Clone)]
pub struct InboxHandle {
    shared: Arc<Shared>,
}

impl InboxHandle {
    /// The provider has its answer to the token: the room may write to
    /// the socket itself from now on (when it is a shared one).
    pub fn allow_direct_writes(&self) {
        self.shared.lock().direct = true;
    }

    /// See [`PeerInbox::stop_direct_writes`].
    pub fn stop_direct_writes(&self) {
        self.shared.lock().direct = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::close;
    use std::time::Duration;

    fn frame(n: u8) -> Bytes {
        Bytes::from(vec![n])
    }

    /// Bounded in frames only.
    fn frames(frames: usize) -> OutboxLimits {
        OutboxLimits {
            frames,
            bytes: usize::MAX / 2,
        }
    }

    fn sized(len: usize) -> Bytes {
        Bytes::from(vec![0; len])
    }

    #[test]
    fn bytes_waiting_behind_the_oldest_frame_are_bounded() {
        let limits = OutboxLimits {
            frames: 1000,
            bytes: 100,
        };
        let (link, inbox) = link(limits, None);
        // A frame larger than the bound goes out (a big document's sync
        // answer); what queues behind it is bounded.
        link.send(&sized(500)).unwrap();
        link.send(&sized(60)).unwrap();
        link.send(&sized(40)).unwrap();
        assert_eq!(
            link.send(&sized(1)),
            Err(QueueFull {
                frames: 3,
                bytes: 600
            })
        );
        // Taken by the connection but not yet written: still waiting.
        assert_eq!(inbox.try_next(), Some(Next::Frame(sized(500))));
        assert_eq!(inbox.try_next(), Some(Next::Frame(sized(60))));
        assert!(link.send(&sized(1)).is_err());
        // Written: the room may queue again, up to the bound behind the
        // oldest frame still waiting (the 40).
        inbox.written();
        link.send(&sized(100)).unwrap();
        assert!(link.send(&sized(1)).is_err());
    }

    #[test]
    fn a_slow_reader_is_refused_by_bytes_long_before_frames() {
        let limits = OutboxLimits {
            frames: 2048,
            bytes: 8 << 20,
        };
        let (link, _inbox) = link(limits, None);
        let update = sized(1 << 20);
        let queued = (0..2048).take_while(|_| link.send(&update).is_ok()).count();
        // The 1 MB frame at the head, and 8 MB behind it.
        assert_eq!(queued, 9);
    }

    #[tokio::test]
    async fn frames_arrive_in_order_and_a_full_queue_refuses() {
        let (link, inbox) = link(frames(2), None);
        link.send(&frame(1)).unwrap();
        link.send(&frame(2)).unwrap();
        assert_eq!(
            link.send(&frame(3)),
            Err(QueueFull {
                frames: 2,
                bytes: 2
            })
        );
        assert_eq!(inbox.next().await, Next::Frame(frame(1)));
        assert_eq!(inbox.try_next(), Some(Next::Frame(frame(2))));
        assert_eq!(inbox.try_next(), None);
        link.send(&frame(4)).unwrap();
        assert_eq!(inbox.next().await, Next::Frame(frame(4)));
    }

    #[tokio::test]
    async fn close_overtakes_queued_frames_and_first_reason_wins() {
        let (link, inbox) = link(frames(1), None);
        link.send(&frame(1)).unwrap();
        link.close(close::SLOW_CONSUMER);
        link.close(close::SHUTTING_DOWN);
        assert_eq!(inbox.next().await, Next::Close(close::SLOW_CONSUMER));
        // The request stays until the session acts on it.
        assert_eq!(inbox.try_next(), Some(Next::Close(close::SLOW_CONSUMER)));
    }

    #[tokio::test]
    async fn a_waiting_connection_wakes_for_a_frame_and_for_the_room_going() {
        let (link, inbox) = link(frames(4), None);
        let waiter = tokio::spawn(async move {
            let first = inbox.next().await;
            let second = inbox.next().await;
            (first, second)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        link.send(&frame(7)).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(link);
        let (first, second) = waiter.await.unwrap();
        assert_eq!(first, Next::Frame(frame(7)));
        assert_eq!(second, Next::RoomGone);
    }

    #[test]
    fn the_room_is_gone_only_when_every_clone_is() {
        let (link, inbox) = link(frames(4), None);
        let retry = link.clone();
        drop(link);
        assert_eq!(inbox.try_next(), None);
        drop(retry);
        assert_eq!(inbox.try_next(), Some(Next::RoomGone));
    }

    #[test]
    fn frames_for_a_finished_session_are_dropped_not_counted() {
        let (link, inbox) = link(frames(1), None);
        drop(inbox);
        for n in 0..3 {
            assert_eq!(link.send(&frame(n)), Ok(Sent::Queued));
        }
    }

    #[test]
    fn a_drained_backlog_gives_its_memory_back() {
        let (link, inbox) = link(frames(100), None);
        for n in 0..50 {
            link.send(&frame(n)).unwrap();
        }
        while let Some(Next::Frame(_)) = inbox.try_next() {}
        assert_eq!(inbox.shared.lock().frames.capacity(), 0);
    }

    /// A shared socket, and the client's end of it.
    async fn socket_pair() -> (Arc<SharedSocket>, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let connect = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(connect, listener.accept());
        let (_read, socket) = SharedSocket::split(accepted.unwrap().0);
        (Arc::new(socket), client.unwrap())
    }

    #[tokio::test]
    async fn frames_go_straight_to_the_socket_unless_the_connection_holds_some() {
        use tokio::io::AsyncReadExt;
        let (socket, mut client) = socket_pair().await;
        let (link, inbox) = link(frames(8), Some(socket));

        assert_eq!(link.send(&frame(1)), Ok(Sent::Directly));
        // The connection holds a frame it took: later ones must queue
        // behind it, and go direct again only once it wrote them all.
        link.shared.lock().writing = true;
        assert_eq!(link.send(&frame(2)), Ok(Sent::Queued));
        assert_eq!(link.send_all(&[&frame(3), &frame(4)]), Ok(0));
        inbox.written();
        assert_eq!(inbox.try_next(), Some(Next::Frame(frame(2))));
        assert_eq!(inbox.try_next(), Some(Next::Frame(frame(3))));
        assert_eq!(inbox.try_next(), Some(Next::Frame(frame(4))));
        assert_eq!(link.send(&frame(5)), Ok(Sent::Queued));
        assert_eq!(inbox.try_next(), Some(Next::Frame(frame(5))));
        inbox.written();
        assert_eq!(link.send_all(&[&frame(6), &frame(7)]), Ok(2));
        // Closing: nothing may follow the close frame.
        inbox.stop_direct_writes();
        assert_eq!(link.send(&frame(8)), Ok(Sent::Queued));

        let mut wire = [0u8; 6];
        client.read_exact(&mut wire).await.unwrap();
        assert_eq!(wire, [0x82, 1, 1, 0x82, 1, 6]);
        let mut next = [0u8; 3];
        client.read_exact(&mut next).await.unwrap();
        assert_eq!(next, [0x82, 1, 7]);
    }

    /// A multiplexed document's link: nothing direct before the session
    /// allows it, every direct frame starts with the address, and frames
    /// another task writes hold direct writes back until the last of them
    /// is marked written.
    #[tokio::test]
    async fn a_multiplexed_link_waits_for_its_writer_marks() {
        use tokio::io::AsyncReadExt;
        let (socket, mut client) = socket_pair().await;
        let (link, inbox) = multiplexed_link(frames(8), Some(socket), Bytes::from_static(b"\x01d"));
        let handle = inbox.handle();
        assert!(link.takes_stateless());

        // The join's frames, before the token's answer is out.
        assert_eq!(link.send(&frame(1)), Ok(Sent::Queued));
        handle.allow_direct_writes();
        let Some(Next::Frame(first)) = inbox.try_next() else {
            panic!("the queued frame")
        };
        let first = inbox.mark(&first);
        assert_eq!(
            link.send(&frame(2)),
            Ok(Sent::Queued),
            "frame 1 is on its way"
        );
        let Some(Next::Frame(second)) = inbox.try_next() else {
            panic!("the queued frame")
        };
        let second = inbox.mark(&second);
        first.written();
        assert_eq!(
            link.send(&frame(3)),
            Ok(Sent::Queued),
            "frame 2 is on its way"
        );
        assert_eq!(inbox.try_next(), Some(Next::Frame(frame(3))));
        // Marked in order: only the last frame taken lets direct writes on.
        second.written();
        assert_eq!(link.send(&frame(4)), Ok(Sent::Queued));
        assert_eq!(inbox.shared.lock().taken_bytes, 1, "frame 3 still counts");
        let Some(Next::Frame(fourth)) = inbox.try_next() else {
            panic!("the queued frame")
        };
        inbox.mark(&fourth).written();
        assert_eq!(inbox.shared.lock().taken_bytes, 0);
        assert_eq!(link.send(&frame(5)), Ok(Sent::Directly));
        handle.stop_direct_writes();
        assert_eq!(link.send(&frame(6)), Ok(Sent::Queued));

        let mut wire = [0u8; 5];
        client.read_exact(&mut wire).await.unwrap();
        assert_eq!(wire, [0x82, 3, 1, b'd', 5]);
    }
}
