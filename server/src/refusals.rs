//! Clients whose updates were refused, and how long they must wait before
//! they may try again.
//!
//! y-websocket reconnects after any close and sends its whole document
//! again. A client whose update the server refuses for what it is (larger
//! than `--max-doc-size`, a subdocument, bytes that do not apply) was
//! closed, reconnected and re-uploaded it about four times a second
//! forever: 52 reconnects of 2 MB in 12 s (red-team finding, issue 27).
//! Now each such refusal of a client address in a room doubles the time
//! before that address may open that room again (1 s, 2 s, 4 s … up to
//! `--refusal-max-delay`); an upgrade within it gets 429 with Retry-After
//! before anything is read. A quiet spell of ten times the longest delay
//! starts the count again.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use crdt_store::RoomName;
use tokio::time::Instant;

/// The first refusal's delay.
const FIRST_DELAY: Duration = Duration::from_secs(1);

/// At most this many (address, room) pairs are remembered; past it, the
/// oldest quiet ones go first, then nothing new is recorded (the refusals
/// themselves still happen).
const MAX_ENTRIES: usize = 100_000;

/// One address's refusals in one room.
#[derive(Debug, Clone, Copy)]
struct Strikes {
    count: u32,
    last: Instant,
    /// No upgrade before this.
    until: Instant,
}

/// Refusals by client address and room.
#[derive(Debug)]
pub struct RepeatRefusals {
    max_delay: Duration,
    entries: Mutex<HashMap<(IpAddr, RoomName), Strikes>>,
}

impl RepeatRefusals {
    /// `max_delay` zero turns the waits off (for a server behind a proxy
    /// that hides client addresses: every client would share one wait).
    pub fn new(max_delay: Duration) -> Self {
        Self {
            max_delay,
            entries: Mutex::default(),
        }
    }

    /// Records that an update of `ip` in `room` was refused; returns how
    /// long that address must now wait before it may open the room again.
    pub fn record(&self, ip: IpAddr, room: &RoomName) -> Duration {
        if self.max_delay.is_zero() {
            return Duration::ZERO;
        }
        let now = Instant::now();
        let quiet = self.max_delay * 10;
        let mut entries = self.entries.lock().expect("not poisoned");
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, s| now.duration_since(s.last) < quiet);
            if entries.len() >= MAX_ENTRIES {
                return Duration::ZERO;
            }
        }
        let strikes = entries.entry((ip, room.clone())).or_insert(Strikes {
            count: 0,
            last: now,
            until: now,
        });
        if now.duration_since(strikes.last) >= quiet {
            strikes.count = 0;
        }
        strikes.count = strikes.count.saturating_add(1);
        let delay = FIRST_DELAY
            .saturating_mul(1 << (strikes.count - 1).min(20))
            .min(self.max_delay.max(FIRST_DELAY));
        strikes.last = now;
        strikes.until = now + delay;
        delay
    }

    /// `Err(wait)` while `ip` must still wait before opening `room`.
    ///
    /// # Errors
    /// How long is left.
    pub fn check(&self, ip: IpAddr, room: &RoomName) -> Result<(), Duration> {
        let entries = self.entries.lock().expect("not poisoned");
        match entries.get(&(ip, room.clone())) {
            Some(strikes) if strikes.until > Instant::now() => Err(strikes.until - Instant::now()),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[tokio::test(start_paused = true)]
    async fn each_refusal_doubles_the_wait_up_to_the_cap_and_quiet_resets_it() {
        let refusals = RepeatRefusals::new(Duration::from_secs(8));
        let room = RoomName::parse("big").unwrap();
        let delays: Vec<u64> = (0..6)
            .map(|_| refusals.record(ip(1), &room).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 8, 8]);
        assert!(refusals.check(ip(1), &room).is_err());
        assert!(refusals.check(ip(2), &room).is_ok(), "another address");
        let other = RoomName::parse("other").unwrap();
        assert!(refusals.check(ip(1), &other).is_ok(), "another room");
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(refusals.check(ip(1), &room).is_ok(), "waited it out");
        tokio::time::advance(Duration::from_secs(80)).await;
        assert_eq!(refusals.record(ip(1), &room), Duration::from_secs(1));

        let off = RepeatRefusals::new(Duration::ZERO);
        assert_eq!(off.record(ip(1), &room), Duration::ZERO);
        assert!(off.check(ip(1), &room).is_ok());
    }
}
