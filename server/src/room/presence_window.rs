//! When a room sends the awareness changes it holds
//! ([`crate::room::presence_batch`]): at most one awareness message per
//! window. A change that comes a window or more after the room's last
//! awareness message goes at once, so a quiet room (one person moving a
//! cursor now and then) adds no latency; one that comes sooner waits until
//! a window after that message, with whatever else changes meanwhile. A
//! busy room's cursors are then at most a window late, and each peer gets
//! one awareness frame per window however many clients moved.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub struct PresenceWindow {
    /// The shortest time between two awareness messages; zero never holds.
    window: Duration,
    /// When the room last sent one.
    last_sent: Option<Instant>,
    /// When the changes held now are to go, if any are held.
    due: Option<Instant>,
}

impl PresenceWindow {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            last_sent: None,
            due: None,
        }
    }

    /// Whether the room holds awareness changes at all (`false` when the
    /// window is zero: each change goes with the input that made it).
    pub fn holds(&self) -> bool {
        !self.window.is_zero()
    }

    /// The room holds a new change: returns whether to send now.
    pub fn changed(&mut self, now: Instant) -> bool {
        if self.due.is_some() {
            return false;
        }
        match self.last_sent {
            Some(last) if now < last + self.window => {
                self.due = Some(last + self.window);
                false
            }
            _ => true,
        }
    }

    /// When the held changes are to go, if any are held.
    pub fn due(&self) -> Option<Instant> {
        self.due
    }

    /// The room sent what it held.
    pub fn sent(&mut self, now: Instant) {
        self.last_sent = Some(now);
        self.due = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_millis(20);

    #[test]
    fn a_quiet_room_sends_each_change_at_once() {
        let mut window = PresenceWindow::new(WINDOW);
        let start = Instant::now();
        for n in 0..5 {
            let now = start + WINDOW * n;
            assert!(window.changed(now), "change {n}");
            window.sent(now);
            assert_eq!(window.due(), None);
        }
    }

    #[test]
    fn changes_sooner_than_a_window_wait_for_its_end_together() {
        let mut window = PresenceWindow::new(WINDOW);
        let start = Instant::now();
        assert!(window.changed(start));
        window.sent(start);
        let soon = start + WINDOW / 4;
        assert!(!window.changed(soon));
        assert_eq!(window.due(), Some(start + WINDOW));
        // More changes join the held ones; the due time stays.
        assert!(!window.changed(soon + WINDOW / 4));
        assert_eq!(window.due(), Some(start + WINDOW));
        window.sent(start + WINDOW);
        assert_eq!(window.due(), None);
        // Busy: the next change waits a whole window after that message.
        assert!(!window.changed(start + WINDOW + WINDOW / 10));
        assert_eq!(window.due(), Some(start + WINDOW * 2));
    }

    #[test]
    fn a_zero_window_does_not_hold() {
        let window = PresenceWindow::new(Duration::ZERO);
        assert!(!window.holds());
    }
}
