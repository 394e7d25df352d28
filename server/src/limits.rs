//! Rate and resource limits (governor for the rates).
//!
//! Defaults are set so that a real editor never meets them — a fast typist
//! with presence sends tens of small messages a second — while one client
//! cannot take the server or its room from the others.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::body_budget::BodyBudget;
use crate::ip_connections::IpConnections;

/// Every limit, as configured.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// Messages a connection may send per second, and their burst.
    pub messages_per_second: u32,
    pub message_burst: u32,
    /// Bytes a connection may send per second, and their burst (at least
    /// one message of the largest size).
    pub bytes_per_second: u32,
    pub byte_burst: u32,
    /// A connection throttled this long without a break is closed (1008).
    pub max_throttled: Duration,
    /// New connections per second from one IP address, and their burst.
    pub connections_per_ip_per_second: u32,
    pub connection_burst_per_ip: u32,
    /// HTTP API requests per second from one IP address, and their burst.
    pub api_requests_per_second: u32,
    pub api_burst: u32,
    /// Open WebSocket connections, over all rooms.
    pub max_connections: usize,
    /// Longest a client address waits before reopening a room after its
    /// updates there were refused again and again (see [`crate::refusals`]).
    pub refusal_max_delay: Duration,
    /// Open TCP connections from one client address (IPv6: one /64),
    /// counted from accept, before any HTTP is read.
    pub max_connections_per_ip: usize,
    /// Largest request body (`POST …/update`).
    pub max_body_size: usize,
    /// Request body bytes held at once over the whole server.
    pub max_body_bytes_in_flight: usize,
    /// How long a body that does not fit in the above waits before 503.
    pub body_wait: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            messages_per_second: 200,
            message_burst: 1000,
            bytes_per_second: 4 << 20,
            byte_burst: 32 << 20,
            max_throttled: Duration::from_secs(10),
            connections_per_ip_per_second: 50,
            connection_burst_per_ip: 200,
            api_requests_per_second: 100,
            api_burst: 200,
            max_connections: 50_000,
            refusal_max_delay: Duration::from_secs(60),
            max_connections_per_ip: 256,
            max_body_size: 64 << 20,
            max_body_bytes_in_flight: 256 << 20,
            body_wait: crate::body_budget::DEFAULT_WAIT,
        }
    }
}

fn nonzero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n.max(1)).expect("max(1) is not zero")
}

fn quota(per_second: u32, burst: u32) -> Quota {
    Quota::per_second(nonzero(per_second)).allow_burst(nonzero(burst.max(per_second)))
}

/// Limits shared by the whole server.
pub struct Limits {
    pub config: LimitsConfig,
    /// One clock for every limiter: creating a governor clock calibrates
    /// it (CPUID and a timing loop), far too slow to do per message or per
    /// connection (it was 42 % of the CPU of a fast ingest).
    clock: DefaultClock,
    connection_slots: Arc<Semaphore>,
    /// Addresses whose updates a room refused, and until when they wait.
    pub refusals: crate::refusals::RepeatRefusals,
    /// Open TCP connections per client address.
    pub ip_connections: Arc<IpConnections>,
    /// Request body bytes in flight.
    pub bodies: Arc<BodyBudget>,
    new_connections: DefaultKeyedRateLimiter<IpAddr>,
    api_requests: DefaultKeyedRateLimiter<IpAddr>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A refusal with the wait a client should observe before trying again.
#[derive(Debug, Clone, Copy)]
pub struct RetryAfter(pub Duration);

impl Limits {
    pub fn new(config: LimitsConfig) -> Self {
        let clock = DefaultClock::default();
        Self {
            connection_slots: Arc::new(Semaphore::new(config.max_connections.max(1))),
            refusals: crate::refusals::RepeatRefusals::new(config.refusal_max_delay),
            ip_connections: IpConnections::new(config.max_connections_per_ip),
            bodies: BodyBudget::new(
                config.max_body_bytes_in_flight,
                config.max_body_size,
                config.body_wait,
            ),
            new_connections: RateLimiter::dashmap_with_clock(
                quota(
                    config.connections_per_ip_per_second,
                    config.connection_burst_per_ip,
                ),
                clock.clone(),
            ),
            api_requests: RateLimiter::dashmap_with_clock(
                quota(config.api_requests_per_second, config.api_burst),
                clock.clone(),
            ),
            clock,
            config,
        }
    }

    /// A slot for one more WebSocket connection, held until it closes.
    pub fn connection_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.connection_slots.clone().try_acquire_owned().ok()
    }

    /// Whether `ip` may open another connection now.
    ///
    /// # Errors
    /// [`RetryAfter`] when it is over its rate.
    pub fn admit_connection(&self, ip: IpAddr) -> Result<(), RetryAfter> {
        check_keyed(&self.new_connections, &self.clock, ip)
    }

    /// Whether `ip` may make another API request now.
    ///
    /// # Errors
    /// [`RetryAfter`] when it is over its rate.
    pub fn admit_api_request(&self, ip: IpAddr) -> Result<(), RetryAfter> {
        check_keyed(&self.api_requests, &self.clock, ip)
    }

    /// Forgets per-IP state that no longer limits anyone (call now and then
    /// so the maps stay small).
    pub fn forget_idle_clients(&self) {
        self.new_connections.retain_recent();
        self.api_requests.retain_recent();
    }

    /// Fresh per-connection rate state.
    pub fn for_connection(&self) -> ConnectionRate {
        ConnectionRate {
            messages: RateLimiter::direct_with_clock(
                quota(self.config.messages_per_second, self.config.message_burst),
                self.clock.clone(),
            ),
            bytes: RateLimiter::direct_with_clock(
                quota(self.config.bytes_per_second, self.config.byte_burst),
                self.clock.clone(),
            ),
            clock: self.clock.clone(),
            max_throttled: self.config.max_throttled,
            throttled_since: None,
            last_pause: None,
        }
    }
}

/// Calls [`Limits::forget_idle_clients`] every `every` until `shutdown`.
pub async fn forget_idle_clients_every(
    limits: Arc<Limits>,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => limits.forget_idle_clients(),
        }
    }
}

fn check_keyed(
    limiter: &DefaultKeyedRateLimiter<IpAddr>,
    clock: &DefaultClock,
    ip: IpAddr,
) -> Result<(), RetryAfter> {
    limiter
        .check_key(&ip)
        .map_err(|not_until| RetryAfter(not_until.wait_time_from(clock.now())))
}

/// One connection's message and byte rates.
pub struct ConnectionRate {
    messages: DefaultDirectRateLimiter,
    bytes: DefaultDirectRateLimiter,
    clock: DefaultClock,
    max_throttled: Duration,
    /// Since when the connection has kept running into its limit: set at
    /// the first pause, cleared after a full second without one (a paused
    /// client that resumes reads one message in time and pauses again, so
    /// "every message waited" would never hold).
    throttled_since: Option<Instant>,
    last_pause: Option<Instant>,
}

/// A connection that went this long without a pause is no longer over its rate.
const CALM: Duration = Duration::from_secs(1);

/// What to do with a connection after one of its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Read on.
    Go,
    /// Stop reading for this long (backpressure).
    Pause(Duration),
    /// It has been over its rate for too long: close it (1008).
    Close,
}

impl ConnectionRate {
    /// Accounts for one message of `len` bytes that arrived in `frames`
    /// WebSocket frames: every frame counts against the message rate, so
    /// fragmenting a message buys nothing.
    pub fn admit(&mut self, frames: u32, len: usize) -> Admission {
        let now = self.clock.now();
        let mut wait = Duration::ZERO;
        match self.messages.check_n(nonzero(frames)) {
            Ok(Ok(())) => {}
            Ok(Err(not_until)) => wait = wait.max(not_until.wait_time_from(now)),
            // More frames than the whole burst: it can never pass.
            Err(_) => return Admission::Close,
        }
        let cells = nonzero(u32::try_from(len).unwrap_or(u32::MAX));
        match self.bytes.check_n(cells) {
            Ok(Ok(())) => {}
            Ok(Err(not_until)) => wait = wait.max(not_until.wait_time_from(now)),
            // Larger than the whole burst: it can never pass.
            Err(_) => return Admission::Close,
        }
        if wait.is_zero() {
            if self.last_pause.is_none_or(|at| at.elapsed() > CALM) {
                self.throttled_since = None;
            }
            return Admission::Go;
        }
        self.last_pause = Some(Instant::now());
        let since = *self.throttled_since.get_or_insert_with(Instant::now);
        if since.elapsed() > self.max_throttled {
            Admission::Close
        } else {
            Admission::Pause(wait)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn forgetting_idle_clients_runs_until_shutdown() {
        let limits = Arc::new(Limits::new(LimitsConfig::default()));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(forget_idle_clients_every(
            limits,
            Duration::from_secs(60),
            shutdown.clone(),
        ));
        tokio::time::sleep(Duration::from_secs(150)).await;
        assert!(!task.is_finished(), "it keeps going past its first rounds");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("it stops at shutdown")
            .unwrap();
    }

    #[test]
    fn a_burst_passes_then_the_rate_applies() {
        let limits = Limits::new(LimitsConfig {
            messages_per_second: 10,
            message_burst: 20,
            ..LimitsConfig::default()
        });
        let mut rate = limits.for_connection();
        for _ in 0..20 {
            assert_eq!(rate.admit(1, 10), Admission::Go);
        }
        assert!(matches!(rate.admit(1, 10), Admission::Pause(_)));
    }

    #[test]
    fn every_frame_of_a_fragmented_message_counts() {
        let limits = Limits::new(LimitsConfig {
            messages_per_second: 10,
            message_burst: 20,
            ..LimitsConfig::default()
        });
        let mut rate = limits.for_connection();
        assert_eq!(rate.admit(15, 10), Admission::Go);
        assert!(matches!(rate.admit(10, 10), Admission::Pause(_)));
        assert_eq!(rate.admit(21, 10), Admission::Close, "more than the burst");
    }

    #[test]
    fn sustained_excess_closes() {
        let limits = Limits::new(LimitsConfig {
            messages_per_second: 1,
            message_burst: 1,
            max_throttled: Duration::from_millis(20),
            ..LimitsConfig::default()
        });
        let mut rate = limits.for_connection();
        assert_eq!(rate.admit(1, 1), Admission::Go);
        assert!(matches!(rate.admit(1, 1), Admission::Pause(_)));
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(rate.admit(1, 1), Admission::Close);
    }

    #[test]
    fn per_ip_connection_rate() {
        let limits = Limits::new(LimitsConfig {
            connections_per_ip_per_second: 1,
            connection_burst_per_ip: 2,
            ..LimitsConfig::default()
        });
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(limits.admit_connection(ip).is_ok());
        assert!(limits.admit_connection(ip).is_ok());
        assert!(limits.admit_connection(ip).is_err());
        assert!(
            limits
                .admit_connection("127.0.0.2".parse().unwrap())
                .is_ok()
        );
    }

    #[test]
    fn connection_slots_run_out_and_come_back() {
        let limits = Limits::new(LimitsConfig {
            max_connections: 1,
            ..LimitsConfig::default()
        });
        let slot = limits.connection_slot().unwrap();
        assert!(limits.connection_slot().is_none());
        drop(slot);
        assert!(limits.connection_slot().is_some());
    }
}
