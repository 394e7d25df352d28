//! When a busy room sends its peers what the others wrote.
//!
//! Each frame a peer is sent costs a socket write, and on a loopback or LAN
//! socket the write is most of the server's CPU. A room
//! whose peers type all at once therefore sends at most one batch per
//! window: the first frame after a quiet window goes out at once (an idle
//! room adds no latency), later ones wait for the window to end and then go
//! out together, several frames per wake-up and per write. Frames are never
//! dropped or reordered, only held for at most one window (which tokio's
//! timer rounds up to the next whole millisecond).

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::core::PeerId;

/// Frames from one sender (`None`: from the room itself) for every other peer.
pub type Broadcast = (Option<PeerId>, Bytes);

#[derive(Debug)]
pub struct FanoutWindow {
    /// Zero sends every frame as soon as it exists.
    window: Duration,
    /// When the last batch went out.
    last_sent: Option<Instant>,
    /// Frames held until the window after `last_sent` ends, in the order
    /// they were made.
    held: Vec<Broadcast>,
}

impl FanoutWindow {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            last_sent: None,
            held: Vec::new(),
        }
    }

    /// Takes `frames` from `sender` for the other peers. Returns them to be
    /// sent now when the room was quiet and holds nothing; otherwise they
    /// are held (behind anything already held, so order is kept) until
    /// [`FanoutWindow::due`].
    pub fn offer(
        &mut self,
        now: Instant,
        sender: Option<PeerId>,
        frames: Vec<Bytes>,
    ) -> Vec<Broadcast> {
        if frames.is_empty() {
            return Vec::new();
        }
        let quiet = self
            .last_sent
            .is_none_or(|last| now.saturating_duration_since(last) >= self.window);
        if self.window.is_zero() || (quiet && self.held.is_empty()) {
            self.last_sent = Some(now);
            return frames.into_iter().map(|f| (sender, f)).collect();
        }
        self.held.extend(frames.into_iter().map(|f| (sender, f)));
        Vec::new()
    }

    /// When the held frames are to be sent, if any are held.
    pub fn due(&self) -> Option<Instant> {
        // Frames are held only when the last batch went out less than a
        // window ago, so the window after it is when they are due.
        if self.held.is_empty() {
            return None;
        }
        self.last_sent.map(|last| last + self.window)
    }

    /// Everything held, to be sent now (the window ended, or something must
    /// not overtake it: a frame to one peer, a peer leaving, shutdown).
    pub fn take(&mut self, now: Instant) -> Vec<Broadcast> {
        if !self.held.is_empty() {
            self.last_sent = Some(now);
        }
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_millis(2);

    fn frame(n: u8) -> Bytes {
        Bytes::from(vec![n])
    }

    fn bytes_of(sent: &[Broadcast]) -> Vec<u8> {
        sent.iter().map(|(_, f)| f[0]).collect()
    }

    #[test]
    fn a_quiet_room_sends_at_once() {
        let mut fanout = FanoutWindow::new(WINDOW);
        let start = Instant::now();
        assert_eq!(bytes_of(&fanout.offer(start, Some(1), vec![frame(1)])), [1]);
        let later = start + WINDOW;
        assert_eq!(bytes_of(&fanout.offer(later, Some(2), vec![frame(2)])), [2]);
        assert_eq!(fanout.due(), None);
    }

    #[test]
    fn a_busy_room_holds_frames_until_the_window_ends_then_sends_them_in_order() {
        let mut fanout = FanoutWindow::new(WINDOW);
        let start = Instant::now();
        assert_eq!(fanout.offer(start, Some(1), vec![frame(1)]).len(), 1);
        let soon = start + Duration::from_micros(300);
        assert!(fanout.offer(soon, Some(2), vec![frame(2)]).is_empty());
        assert!(
            fanout
                .offer(soon, None, vec![frame(3), frame(4)])
                .is_empty()
        );
        assert_eq!(fanout.due(), Some(start + WINDOW));
        let sent = fanout.take(start + WINDOW);
        assert_eq!(bytes_of(&sent), [2, 3, 4]);
        assert_eq!(sent[0].0, Some(2));
        assert_eq!(sent[1].0, None);
        assert_eq!(fanout.due(), None);
        // The batch just sent starts a new window.
        assert!(
            fanout
                .offer(start + WINDOW, Some(1), vec![frame(5)])
                .is_empty()
        );
    }

    #[test]
    fn frames_never_overtake_held_ones() {
        let mut fanout = FanoutWindow::new(WINDOW);
        let start = Instant::now();
        fanout.offer(start, Some(1), vec![frame(1)]);
        fanout.offer(start, Some(1), vec![frame(2)]);
        // Quiet again, but frame 2 is still held: frame 3 waits behind it.
        let late = start + WINDOW * 3;
        assert!(fanout.offer(late, Some(1), vec![frame(3)]).is_empty());
        assert_eq!(bytes_of(&fanout.take(late)), [2, 3]);
    }

    #[test]
    fn a_zero_window_never_holds() {
        let mut fanout = FanoutWindow::new(Duration::ZERO);
        let now = Instant::now();
        for n in 0..5 {
            assert_eq!(fanout.offer(now, Some(1), vec![frame(n)]).len(), 1);
        }
        assert!(fanout.take(now).is_empty());
    }
}
