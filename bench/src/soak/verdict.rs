//! The soak's pass/fail rules for memory and file descriptors, kept apart
//! from the I/O so that they can be tested on made-up samples.
//!
//! Issue 24 asks for "RSS within 5 % of its level after warm-up, no
//! file-descriptor growth". Under mixed load RSS swings with the fan-out
//! rounds (every client reconnects at a round boundary), so one reading
//! against another would judge noise: the level is the highest reading of
//! a window of samples, right after warm-up and at the end. Open file
//! descriptors follow the open connections one for one, so they are only
//! compared at quiet points, with no client connected and every room
//! unloaded, where a leaked socket or file is the only difference left.

use serde::Serialize;

/// How strict the verdict is.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Allowed RSS growth, as a fraction (0.05 for 5 %).
    pub rss_tolerance: f64,
    /// Samples per window (fewer when the run has few: a third of them).
    pub window: usize,
    /// Descriptors the end's quiet point may hold beyond the first's.
    pub fd_slack: u64,
}

/// What the memory and descriptor rules found.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MemoryVerdict {
    /// Samples under load after warm-up, and the window taken at each end.
    pub samples: usize,
    pub window: usize,
    /// Highest RSS in the first window after warm-up.
    pub rss_baseline_mib: f64,
    /// Highest RSS in the last window, and the very last reading.
    pub rss_end_max_mib: f64,
    pub rss_end_last_mib: f64,
    pub rss_growth_percent: f64,
    pub rss_ok: bool,
    pub fds_after_warmup: u64,
    pub fds_at_end: u64,
    pub fd_ok: bool,
}

impl MemoryVerdict {
    /// Why it fails, one line per broken rule.
    pub fn failures(&self, limits: Limits) -> Vec<String> {
        let mut failures = Vec::new();
        if self.samples == 0 {
            failures.push("no samples under load after warm-up: the run is too short".to_owned());
        } else if !self.rss_ok {
            failures.push(format!(
                "RSS grew {:.1} % ({:.1} → {:.1} MiB), more than {:.1} %",
                self.rss_growth_percent,
                self.rss_baseline_mib,
                self.rss_end_max_mib,
                limits.rss_tolerance * 100.0
            ));
        }
        if !self.fd_ok {
            failures.push(format!(
                "open file descriptors grew from {} to {} with no client connected",
                self.fds_after_warmup, self.fds_at_end
            ));
        }
        failures
    }
}

/// Judges `rss_mib`, the RSS readings under load after warm-up in the
/// order they were taken, and the descriptor counts of the two quiet
/// points. Only growth fails: a server that gives memory back is fine.
pub fn judge(
    rss_mib: &[f64],
    fds_after_warmup: u64,
    fds_at_end: u64,
    limits: Limits,
) -> MemoryVerdict {
    let window = limits.window.min(rss_mib.len() / 3).max(1);
    let max_of = |readings: &[f64]| readings.iter().copied().fold(0.0, f64::max);
    let (baseline, end_max, end_last) = if rss_mib.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (
            max_of(&rss_mib[..window.min(rss_mib.len())]),
            max_of(&rss_mib[rss_mib.len().saturating_sub(window)..]),
            rss_mib[rss_mib.len() - 1],
        )
    };
    let growth = if baseline > 0.0 {
        end_max / baseline - 1.0
    } else {
        0.0
    };
    MemoryVerdict {
        samples: rss_mib.len(),
        window,
        rss_baseline_mib: baseline,
        rss_end_max_mib: end_max,
        rss_end_last_mib: end_last,
        rss_growth_percent: growth * 100.0,
        // The epsilon: 105 / 100 - 1 is a hair above 0.05 in floating point.
        rss_ok: !rss_mib.is_empty() && growth <= limits.rss_tolerance + 1e-9,
        fds_after_warmup,
        fds_at_end,
        fd_ok: fds_at_end <= fds_after_warmup + limits.fd_slack,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        rss_tolerance: 0.05,
        window: 3,
        fd_slack: 0,
    };

    #[test]
    fn a_flat_but_noisy_run_passes() {
        // Swings of ±8 % around 40 MiB, the same at both ends.
        let rss = [40.0, 43.0, 37.0, 41.0, 39.0, 42.5, 38.0, 40.0, 43.0, 37.5];
        let v = judge(&rss, 21, 21, LIMITS);
        assert_eq!(v.window, 3);
        assert_eq!(v.rss_baseline_mib, 43.0);
        assert_eq!(v.rss_end_max_mib, 43.0);
        assert_eq!(v.rss_end_last_mib, 37.5);
        assert!(v.rss_ok && v.fd_ok, "{v:?}");
        assert!(v.failures(LIMITS).is_empty());
    }

    #[test]
    fn steady_growth_fails_even_when_the_last_reading_dips() {
        let rss = [40.0, 40.5, 41.0, 42.0, 43.0, 44.0, 45.0, 46.0, 40.0];
        let v = judge(&rss, 21, 21, LIMITS);
        // Baseline 41.0 (first three), end 46.0 (last three): +12.2 %.
        assert!((v.rss_growth_percent - 12.195).abs() < 0.01, "{v:?}");
        assert!(!v.rss_ok);
        assert_eq!(v.failures(LIMITS).len(), 1);
    }

    #[test]
    fn growth_up_to_the_tolerance_passes_and_shrinking_always_does() {
        assert!(judge(&[100.0, 100.0, 100.0, 105.0, 105.0, 105.0], 9, 9, LIMITS).rss_ok);
        // Six samples: windows of two.
        assert!(!judge(&[100.0, 100.0, 100.0, 100.0, 105.2, 100.0], 9, 9, LIMITS).rss_ok);
        assert!(judge(&[100.0, 100.0, 100.0, 60.0, 60.0, 60.0], 9, 9, LIMITS).rss_ok);
    }

    #[test]
    fn any_descriptor_growth_fails_unless_slack_allows_it() {
        let rss = [10.0; 6];
        let v = judge(&rss, 20, 21, LIMITS);
        assert!(v.rss_ok && !v.fd_ok);
        assert_eq!(v.failures(LIMITS).len(), 1);
        assert!(judge(&rss, 20, 19, LIMITS).fd_ok, "fewer is fine");
        let slack = Limits {
            fd_slack: 1,
            ..LIMITS
        };
        assert!(judge(&rss, 20, 21, slack).fd_ok);
    }

    #[test]
    fn short_runs_use_a_smaller_window_and_no_samples_fail() {
        // Two samples: a window of one, first against last.
        let v = judge(&[10.0, 10.4], 5, 5, LIMITS);
        assert_eq!(v.window, 1);
        assert!(v.rss_ok);
        let none = judge(&[], 5, 5, LIMITS);
        assert!(!none.rss_ok);
        assert_eq!(none.failures(LIMITS).len(), 1);
    }
}
