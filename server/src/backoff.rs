//! Exponential backoff with full jitter (each wait uniform in
//! `[0, min(cap, base·2^attempt)]`), so that many writers retrying against
//! a recovering database, or many rooms against a recovering Redis, spread
//! out instead of arriving together. Used by the journal and by the
//! cluster's publishers and readers.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The wait before the next retry.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32.checked_shl(self.attempt.min(30)).unwrap_or(u32::MAX));
        self.attempt = self.attempt.saturating_add(1);
        let ceiling = exp.min(self.cap);
        ceiling.mul_f64(rand::random::<f64>())
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps_and_jitters() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let delays: Vec<_> = (0..12).map(|_| backoff.next_delay()).collect();
        assert!(delays[0] <= Duration::from_millis(100));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(2)));
        // Full jitter: not all equal to the ceiling.
        assert!(delays.iter().any(|d| *d < Duration::from_secs(1)));
        assert_eq!(backoff.attempts(), 12);
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn waits_spread_over_the_whole_range() {
        // At the cap, 200 waits drawn from [0, 1 s]: a draw from [0.5, 1 s]
        // only (half jitter) would put all of them in the upper half, with
        // a chance of 2^-200 of doing so here.
        let cap = Duration::from_secs(1);
        let mut backoff = Backoff::new(cap, cap);
        let delays: Vec<_> = (0..200).map(|_| backoff.next_delay()).collect();
        assert!(delays.iter().all(|d| *d <= cap));
        assert!(delays.iter().any(|d| *d < cap / 2));
        assert!(delays.iter().any(|d| *d >= cap / 2));
    }
}
