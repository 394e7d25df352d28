//! When a client sends: on an even beat, or as a Poisson process.
//!
//! An even beat (client i at start + (i/C + n)·period) is what a load
//! generator does by default and what no person does. A server that saves
//! work by holding a room's frames for company (crdt-hub's fan-out window)
//! can look better on an even beat than it is; Poisson arrivals, with the
//! same mean rate, are the usual model of independent people typing.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

/// How each client spaces its sends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arrivals {
    /// Every `period`, clients staggered evenly over one period.
    #[default]
    Even,
    /// Exponential gaps with mean `period`, independent per client (seeded
    /// by the client's index, so runs are repeatable), within the run's
    /// duration: a client sends as many updates as its process puts there
    /// (on average the even beat's number), so the offered rate holds.
    Poisson,
}

impl Arrivals {
    /// The times client `index` of `clients` sends, at most `sends` of
    /// them, none after `duration`.
    pub fn schedule(
        self,
        start: Instant,
        period: Duration,
        duration: Duration,
        index: usize,
        clients: usize,
        sends: usize,
    ) -> Vec<Instant> {
        match self {
            Self::Even => {
                let offset = period.mul_f64(index as f64 / clients.max(1) as f64);
                (0..sends)
                    .map(|n| start + offset + period.mul_f64(n as f64))
                    .collect()
            }
            Self::Poisson => {
                let mut rng = StdRng::seed_from_u64(index as u64);
                let end = start + duration;
                let mut at = start;
                std::iter::from_fn(|| {
                    // Inverse transform: -ln(1 - U) is Exp(1).
                    let unit: f64 = rng.random();
                    at += period.mul_f64(-(1.0 - unit).ln());
                    (at < end).then_some(at)
                })
                .take(sends)
                .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_gaps_have_the_mean_and_spread_of_an_exponential() {
        let start = Instant::now();
        let period = Duration::from_millis(40);
        let long = Duration::from_secs(3600);
        let times = Arrivals::Poisson.schedule(start, period, long, 3, 200, 20_000);
        let gaps: Vec<f64> = std::iter::once(start)
            .chain(times.iter().copied())
            .collect::<Vec<_>>()
            .windows(2)
            .map(|w| (w[1] - w[0]).as_secs_f64() / period.as_secs_f64())
            .collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let variance = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
        assert!((mean - 1.0).abs() < 0.03, "mean gap {mean} periods");
        assert!((variance - 1.0).abs() < 0.1, "variance {variance}");
        // Repeatable, and different per client.
        assert_eq!(
            times,
            Arrivals::Poisson.schedule(start, period, long, 3, 200, 20_000)
        );
        assert_ne!(
            times[0],
            Arrivals::Poisson.schedule(start, period, long, 4, 200, 1)[0]
        );
        // Within the run: 10 s at 25/s is 250 sends on average.
        let sends: usize = (0..200)
            .map(|i| {
                let run = Duration::from_secs(10);
                let times = Arrivals::Poisson.schedule(start, period, run, i, 200, 1000);
                assert!(times.iter().all(|t| *t < start + run));
                times.len()
            })
            .sum();
        assert!((sends as f64 / 200.0 - 250.0).abs() < 5.0, "{sends} sends");
    }

    #[test]
    fn an_even_beat_staggers_clients_over_one_period() {
        let start = Instant::now();
        let period = Duration::from_millis(100);
        let times = Arrivals::Even.schedule(start, period, Duration::from_secs(1), 1, 4, 3);
        assert_eq!(
            times,
            [25, 125, 225].map(|ms| start + Duration::from_millis(ms))
        );
    }
}
