//! What the accept loop does when `accept` fails.
//!
//! The usual cause is running out of file descriptors (`EMFILE` for the
//! process, `ENFILE` for the machine), and it does not go away by asking
//! again: the pending connection stays in the kernel's queue, so an
//! immediate retry fails the same way and the loop spins a core while
//! logging a line per turn. So each failure in a row doubles a short sleep
//! up to a cap (a socket closing elsewhere frees a descriptor within it),
//! the first success resets it, and the warning is written at most once per
//! `LOG_EVERY` with the number of failures since the last one. Every
//! failure is counted in `crdt_hub_accept_errors_total`.

use std::io;
use std::time::{Duration, Instant};

use tracing::warn;

/// Sleep after the first failure in a row.
const FIRST_DELAY: Duration = Duration::from_millis(5);

/// Longest sleep: a client that arrives while descriptors are short waits
/// at most this long past the moment one frees up.
const MAX_DELAY: Duration = Duration::from_secs(1);

/// At most one warning per this long.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Backoff and rate-limited logging for a failing `accept`.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    /// The sleep after the next failure; `None` after a success.
    next_delay: Option<Duration>,
    last_logged: Option<Instant>,
    /// Failures not mentioned in a warning yet.
    unlogged: u64,
}

impl AcceptBackoff {
    /// Records a failure; returns how long to sleep before accepting again.
    pub fn failed(&mut self, error: &io::Error) -> Duration {
        crate::metrics::accept_failed();
        self.unlogged += 1;
        let now = Instant::now();
        if self
            .last_logged
            .is_none_or(|at| now.duration_since(at) >= LOG_EVERY)
        {
            let hint = if is_out_of_descriptors(error) {
                "out of file descriptors: raise the hard RLIMIT_NOFILE (LimitNOFILE= in systemd, ulimit -Hn) or lower --max-connections-per-ip"
            } else {
                "retrying"
            };
            warn!(error = %error, failures = self.unlogged, "accept failed: {hint}");
            self.last_logged = Some(now);
            self.unlogged = 0;
        }
        let delay = self.next_delay.unwrap_or(FIRST_DELAY);
        self.next_delay = Some((delay * 2).min(MAX_DELAY));
        delay
    }

    /// Records a success: the next failure starts from the shortest sleep.
    pub fn succeeded(&mut self) {
        self.next_delay = None;
    }
}

/// `EMFILE` or `ENFILE`.
fn is_out_of_descriptors(error: &io::Error) -> bool {
    // 24 and 23 on Linux and the BSDs alike.
    matches!(error.raw_os_error(), Some(24 | 23))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleeps_grow_to_the_cap_and_reset_on_success() {
        let mut backoff = AcceptBackoff::default();
        let error = io::Error::from_raw_os_error(24);
        let delays: Vec<_> = (0..12).map(|_| backoff.failed(&error)).collect();
        assert_eq!(delays[0], FIRST_DELAY);
        assert_eq!(delays[1], FIRST_DELAY * 2);
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*delays.last().unwrap(), MAX_DELAY);
        backoff.succeeded();
        assert_eq!(backoff.failed(&error), FIRST_DELAY);
    }

    #[test]
    fn warnings_are_rate_limited() {
        let mut backoff = AcceptBackoff::default();
        let error = io::Error::from_raw_os_error(24);
        backoff.failed(&error);
        assert_eq!(backoff.unlogged, 0, "the first failure is logged");
        for _ in 0..100 {
            backoff.failed(&error);
        }
        assert_eq!(backoff.unlogged, 100, "the next ones wait for LOG_EVERY");
    }
}
