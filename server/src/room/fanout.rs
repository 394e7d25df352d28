//! When a busy room sends its peers what the others wrote.
//!
//! Each frame a peer is sent costs a socket write, and on a loopback or LAN
//! socket the write is most of the server's CPU. Several frames in one write
//! cost little more than one, so a busy room holds a frame for company:
//! - only when the room's recent pace says another frame will come before
//!   the held one is due, so a room with one typist, or whose edits come
//!   further apart than the window, sends each frame at once;
//! - until the frame after the next would come too late, then everything
//!   held goes out together, several frames per wake-up and per write;
//! - for one and a quarter of the room's gaps at most, so a steady room
//!   sends pairs: two frames per write already save half the writes, and a
//!   third would make the oldest frame wait a whole gap more (holding for
//!   two gaps sent triples at 90k deliveries/s, 13 % less CPU, but p99 went
//!   past 5 ms). A quarter gap of slack rather than a half: with Poisson
//!   senders the awaited frame often does not come, and the frame waits
//!   the whole hold; in an alternated A/B at 90k, 1.25 gaps gave p99 4.8 ms
//!   against 5.5 for 1.5, at the same CPU (BENCHMARKS.md). But at least a
//!   millisecond (the timer's granularity), so a room flooded by a fast
//!   sender sends one batch per millisecond, not one per few frames;
//! - never longer than the window (which tokio's timer rounds up to the
//!   next whole millisecond).
//!
//! Frames are never dropped or reordered.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::core::PeerId;

/// The shortest hold of a held frame (unless the window is shorter).
const MIN_HOLD: Duration = Duration::from_millis(1);

/// Frames from one sender (`None`: from the room itself) for every other peer.
pub type Broadcast = (Option<PeerId>, Bytes);

#[derive(Debug)]
pub struct FanoutWindow {
    /// The longest a frame is held; zero sends every frame as soon as it
    /// exists.
    window: Duration,
    /// The room's recent time between offers (a moving average, each gap
    /// counted as at most four windows so that a pause ends holding and a
    /// busy spell starts it again within a few frames): what predicts
    /// whether another frame is coming in time.
    pace: Duration,
    /// When frames were last offered.
    last_offer: Option<Instant>,
    /// When the oldest held frame was offered.
    held_since: Option<Instant>,
    /// Frames held, in the order they were made.
    held: Vec<Broadcast>,
}

impl FanoutWindow {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            pace: window * 4,
            last_offer: None,
            held_since: None,
            held: Vec::new(),
        }
    }

    /// Takes `frames` from `sender` for the other peers. Returns what is to
    /// be sent now: nothing while another frame is expected before the
    /// oldest held one is due, otherwise these frames behind everything
    /// held (so order is kept).
    pub fn offer(
        &mut self,
        now: Instant,
        sender: Option<PeerId>,
        frames: Vec<Bytes>,
    ) -> Vec<Broadcast> {
        if frames.is_empty() {
            return Vec::new();
        }
        let longest_gap = self.window * 4;
        let gap = self
            .last_offer
            .map_or(longest_gap, |last| now.saturating_duration_since(last))
            .min(longest_gap);
        self.last_offer = Some(now);
        self.pace = (self.pace * 3 + gap) / 4;
        self.held.extend(frames.into_iter().map(|f| (sender, f)));
        let since = *self.held_since.get_or_insert(now);
        if !self.window.is_zero() && now + self.pace <= since + self.hold() {
            return Vec::new();
        }
        self.take(now)
    }

    /// When the held frames are to be sent, if any are held.
    pub fn due(&self) -> Option<Instant> {
        self.held_since.map(|since| since + self.hold())
    }

    /// How long the oldest held frame may wait at the room's current pace:
    /// long enough for the next frame, not for the one after.
    fn hold(&self) -> Duration {
        (self.pace + self.pace / 4).clamp(MIN_HOLD.min(self.window), self.window)
    }

    /// Everything held, to be sent now (the window ended, or something must
    /// not overtake it: a frame to one peer, a peer leaving, shutdown).
    pub fn take(&mut self, now: Instant) -> Vec<Broadcast> {
        if let Some(since) = self.held_since.take()
            && since < now
        {
            crate::metrics::fanout_held(now - since);
        }
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_millis(5);
    /// A busy room's time between frames.
    const GAP: Duration = Duration::from_millis(1);

    fn frame(n: u8) -> Bytes {
        Bytes::from(vec![n])
    }

    fn bytes_of(sent: &[Broadcast]) -> Vec<u8> {
        sent.iter().map(|(_, f)| f[0]).collect()
    }

    /// A room that has had a frame every `gap` for a while (nothing held);
    /// returns it and when its next frame is due.
    fn busy_room(gap: Duration) -> (FanoutWindow, Instant) {
        let mut fanout = FanoutWindow::new(WINDOW);
        let start = Instant::now();
        for n in 0..40 {
            fanout.offer(start + gap * n, Some(1), vec![frame(0)]);
        }
        fanout.take(start + gap * 40);
        (fanout, start + gap * 40)
    }

    /// Offers one frame every `gap` from `start` until one is held; returns when.
    fn offer_until_held(fanout: &mut FanoutWindow, start: Instant, gap: Duration) -> Instant {
        for n in 0..20 {
            let now = start + gap * n;
            if fanout.offer(now, Some(1), vec![frame(0)]).is_empty() {
                return now;
            }
        }
        panic!("a room with a frame every {gap:?} never held one");
    }

    #[test]
    fn a_quiet_room_sends_at_once() {
        let mut fanout = FanoutWindow::new(WINDOW);
        let start = Instant::now();
        // Frames further apart than the window: none is worth waiting for.
        for n in 0..50 {
            let now = start + (WINDOW + Duration::from_millis(1)) * n;
            assert_eq!(
                bytes_of(&fanout.offer(now, Some(1), vec![frame(n as u8)])),
                [n as u8]
            );
            assert_eq!(fanout.due(), None);
        }
    }

    #[test]
    fn a_busy_room_holds_a_frame_for_company_and_sends_them_together_in_order() {
        let (mut fanout, held_at) = busy_room(GAP);
        assert!(fanout.offer(held_at, Some(1), vec![frame(1)]).is_empty());
        assert_held_for_the_next_gap(&fanout, held_at, GAP);
        // A frame sooner than the pace said (this one from the room
        // itself): the next is still expected in time, so it is held too.
        let second = held_at + GAP / 8;
        assert!(fanout.offer(second, None, vec![frame(2)]).is_empty());
        // One more would come after the first frame is due: everything
        // goes now, in order, with its sender.
        let sent = fanout.offer(second + GAP, Some(4), vec![frame(4), frame(5)]);
        assert_eq!(bytes_of(&sent), [1, 2, 4, 5]);
        let senders: Vec<_> = sent.iter().map(|(s, _)| *s).collect();
        assert_eq!(senders, [Some(1), None, Some(4), Some(4)]);
        assert_eq!(fanout.due(), None);
    }

    #[test]
    fn a_steady_busy_room_sends_pairs() {
        // 2 ms: a room's pace at 90k deliveries/s in the benchmark.
        let gap = GAP * 2;
        let (mut fanout, start) = busy_room(gap);
        for pair in 0..10 {
            let first = start + gap * (2 * pair);
            assert!(fanout.offer(first, Some(1), vec![frame(1)]).is_empty());
            assert_held_for_the_next_gap(&fanout, first, gap);
            let sent = fanout.offer(first + gap, Some(2), vec![frame(2)]);
            assert_eq!(bytes_of(&sent), [1, 2], "pair {pair}");
        }
    }

    fn assert_held_for_the_next_gap(fanout: &FanoutWindow, held_at: Instant, gap: Duration) {
        let due = fanout.due().expect("a frame is held");
        let held_for = due - held_at;
        assert!(
            held_for >= gap * 5 / 4 && held_for <= gap * 5 / 4 + gap / 10,
            "held for {held_for:?}"
        );
    }

    #[test]
    fn frames_almost_a_window_apart_go_out_in_pairs() {
        let gap = WINDOW * 4 / 5;
        let (mut fanout, held_at) = busy_room(gap);
        for pair in 0..5 {
            let first = held_at + gap * (2 * pair);
            assert!(fanout.offer(first, Some(1), vec![frame(1)]).is_empty());
            assert_eq!(fanout.due(), Some(first + WINDOW));
            let sent = fanout.offer(first + gap, Some(2), vec![frame(2)]);
            assert_eq!(bytes_of(&sent), [1, 2]);
        }
    }

    #[test]
    fn a_flooded_room_sends_large_batches() {
        let gap = Duration::from_micros(10);
        let (mut fanout, start) = busy_room(gap);
        let mut sent = Vec::new();
        let mut n = 0;
        while sent.is_empty() {
            sent = fanout.offer(start + gap * n, Some(1), vec![frame(0)]);
            n += 1;
        }
        // Held for the shortest hold: about that many gaps' worth of frames.
        let per_hold = MIN_HOLD.as_micros() / gap.as_micros();
        assert!(sent.len() as u128 >= per_hold - 2, "{} frames", sent.len());
        assert!(sent.len() as u128 <= per_hold + 2, "{} frames", sent.len());
    }

    #[test]
    fn a_frame_whose_company_does_not_come_goes_out_when_it_is_due() {
        let (mut fanout, held_at) = busy_room(GAP);
        assert!(fanout.offer(held_at, Some(1), vec![frame(1)]).is_empty());
        assert_held_for_the_next_gap(&fanout, held_at, GAP);
        assert_eq!(bytes_of(&fanout.take(held_at + GAP * 5 / 4)), [1]);
        assert_eq!(fanout.due(), None);
    }

    #[test]
    fn a_pause_ends_holding_and_a_busy_spell_starts_it_again() {
        let (mut fanout, next) = busy_room(GAP);
        let after_pause = next + WINDOW * 10;
        assert_eq!(fanout.offer(after_pause, Some(1), vec![frame(1)]).len(), 1);
        let again = offer_until_held(&mut fanout, after_pause + GAP, GAP);
        assert!(
            again <= after_pause + GAP * 4,
            "held again only {:?} after the pause",
            again - after_pause
        );
    }

    #[test]
    fn frames_never_overtake_held_ones() {
        let (mut fanout, held_at) = busy_room(GAP);
        assert!(fanout.offer(held_at, Some(1), vec![frame(1)]).is_empty());
        // Long after the held frame was due (its timer not yet handled),
        // a frame goes out behind it, not before it.
        let late = held_at + WINDOW * 3;
        assert_eq!(
            bytes_of(&fanout.offer(late, Some(1), vec![frame(2)])),
            [1, 2]
        );
    }

    #[test]
    fn a_zero_window_never_holds() {
        let mut fanout = FanoutWindow::new(Duration::ZERO);
        let now = Instant::now();
        for n in 0..5 {
            assert_eq!(fanout.offer(now, Some(1), vec![frame(n)]).len(), 1);
        }
        assert_eq!(fanout.due(), None);
        assert!(fanout.take(now).is_empty());
    }
}
