//! The link between a room and one connected peer: the frames the room
//! wants written to the socket, and the room's request to close it.
//!
//! This is a bounded queue of its own rather than a `tokio::sync::mpsc`
//! channel because of idle memory: tokio's channel allocates a 32-slot
//! block (about 1 KiB for `Bytes`) when it is created and keeps it for the
//! channel's life, and with 10,000 mostly idle connections per node that
//! block is an eighth of what a connection costs. A `VecDeque` allocates
//! only when frames queue, and is given back once a backlog has drained.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::close::CloseReason;

/// Queue capacity kept after a backlog drains; more is given back.
const KEPT_CAPACITY: usize = 8;

/// Creates the two ends of a peer link holding at most `capacity` frames.
pub fn link(capacity: usize) -> (PeerLink, PeerInbox) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            frames: VecDeque::new(),
            capacity: capacity.max(1),
            close: None,
            links: 1,
            connection_gone: false,
        }),
        wake: Notify::new(),
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
}

#[derive(Debug)]
struct State {
    frames: VecDeque<Bytes>,
    /// Frames queued for one client before it counts as too slow.
    capacity: usize,
    /// The first close reason asked for wins.
    close: Option<CloseReason>,
    /// Live [`PeerLink`] clones: at zero the room has let go of the peer.
    links: usize,
    /// The session ended (its `Leave` is on the way to the room); frames
    /// for it are dropped, not counted against a queue nobody reads.
    connection_gone: bool,
}

/// The peer's queue is full: it is not reading fast enough.
#[derive(Debug, PartialEq, Eq)]
pub struct QueueFull;

/// What the connection should do next.
#[derive(Debug, PartialEq)]
pub enum Next {
    /// Write this frame (more may be queued behind it: [`PeerInbox::try_next`]).
    Frame(Bytes),
    /// The room asked for this close frame.
    Close(CloseReason),
    /// The room let go of the peer without a reason (it stopped).
    RoomGone,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock, but a poisoned queue is
        // still a queue.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl PeerLink {
    /// Queues a frame. Refused when the queue is full, or when a close was
    /// already asked for (the peer is on its way out).
    pub fn send(&self, frame: Bytes) -> Result<(), QueueFull> {
        let mut state = self.shared.lock();
        if state.close.is_some() || state.connection_gone {
            return Ok(());
        }
        if state.frames.len() >= state.capacity {
            return Err(QueueFull);
        }
        let was_empty = state.frames.is_empty();
        state.frames.push_back(frame);
        drop(state);
        // A non-empty queue already has a wake-up pending or the task is
        // draining it: one wake-up per batch, not per frame.
        if was_empty {
            self.shared.wake.notify_one();
        }
        Ok(())
    }

    /// Asks the connection to close with `reason`, even while its queue is
    /// full. Frames still queued are not written: the client resyncs.
    pub fn close(&self, reason: CloseReason) {
        let mut state = self.shared.lock();
        if state.close.is_none() {
            state.close = Some(reason);
            state.frames = VecDeque::new();
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
            return Some(Next::Frame(frame));
        }
        (state.links == 0).then_some(Next::RoomGone)
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

    #[tokio::test]
    async fn frames_arrive_in_order_and_a_full_queue_refuses() {
        let (link, inbox) = link(2);
        link.send(frame(1)).unwrap();
        link.send(frame(2)).unwrap();
        assert_eq!(link.send(frame(3)), Err(QueueFull));
        assert_eq!(inbox.next().await, Next::Frame(frame(1)));
        assert_eq!(inbox.try_next(), Some(Next::Frame(frame(2))));
        assert_eq!(inbox.try_next(), None);
        link.send(frame(4)).unwrap();
        assert_eq!(inbox.next().await, Next::Frame(frame(4)));
    }

    #[tokio::test]
    async fn close_overtakes_queued_frames_and_first_reason_wins() {
        let (link, inbox) = link(1);
        link.send(frame(1)).unwrap();
        link.close(close::SLOW_CONSUMER);
        link.close(close::SHUTTING_DOWN);
        assert_eq!(inbox.next().await, Next::Close(close::SLOW_CONSUMER));
        // The request stays until the session acts on it.
        assert_eq!(inbox.try_next(), Some(Next::Close(close::SLOW_CONSUMER)));
    }

    #[tokio::test]
    async fn a_waiting_connection_wakes_for_a_frame_and_for_the_room_going() {
        let (link, inbox) = link(4);
        let waiter = tokio::spawn(async move {
            let first = inbox.next().await;
            let second = inbox.next().await;
            (first, second)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        link.send(frame(7)).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(link);
        let (first, second) = waiter.await.unwrap();
        assert_eq!(first, Next::Frame(frame(7)));
        assert_eq!(second, Next::RoomGone);
    }

    #[test]
    fn the_room_is_gone_only_when_every_clone_is() {
        let (link, inbox) = link(4);
        let retry = link.clone();
        drop(link);
        assert_eq!(inbox.try_next(), None);
        drop(retry);
        assert_eq!(inbox.try_next(), Some(Next::RoomGone));
    }

    #[test]
    fn frames_for_a_finished_session_are_dropped_not_counted() {
        let (link, inbox) = link(1);
        drop(inbox);
        for n in 0..3 {
            assert_eq!(link.send(frame(n)), Ok(()));
        }
    }

    #[test]
    fn a_drained_backlog_gives_its_memory_back() {
        let (link, inbox) = link(100);
        for n in 0..50 {
            link.send(frame(n)).unwrap();
        }
        while let Some(Next::Frame(_)) = inbox.try_next() {}
        assert_eq!(inbox.shared.lock().frames.capacity(), 0);
    }
}
