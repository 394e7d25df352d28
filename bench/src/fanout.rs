//! The fan-out run: C clients over R rooms, each sending K stamped updates
//! per second for D seconds (on an even beat or as a Poisson process:
//! [`Arrivals`]), everyone measuring the latency of what the others sent.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::arrivals::Arrivals;
use crate::conn::{self, ConnectOptions, Read, Ws};
use crate::converge::{self, Expected};
use crate::procstat::{self, ProcSample};
use crate::stamp;
use crate::stats::{self, Latency, MIB, Metric, metric};
use crate::wire::{Incoming, Protocol, Wire};
use crate::workload::{self, Prepared};

/// What to run.
#[derive(Debug, Clone)]
pub struct FanoutConfig {
    /// `ws://127.0.0.1:PORT`, one per server node. With several, each
    /// room's clients are spread over them round-robin (see [`node_of`]),
    /// so most deliveries cross from one node to another.
    pub bases: Vec<String>,
    pub protocol: Protocol,
    pub clients: usize,
    pub rooms: usize,
    /// Updates per second per client.
    pub rate: f64,
    pub arrivals: Arrivals,
    pub duration: Duration,
    /// Room names are `{room_prefix}-{index}`; make it unique per run when
    /// the server keeps documents between runs.
    pub room_prefix: String,
    pub connect: ConnectOptions,
    pub connect_concurrency: usize,
    /// Longest wait after the last send for deliveries still in flight.
    pub drain_timeout: Duration,
    /// The server processes (one per node), for CPU and memory, summed;
    /// empty skips those numbers.
    pub server_pids: Vec<u32>,
    pub check_convergence: bool,
    /// Updates a writer in room 0 sends, each missing its first part (see
    /// [`crate::gapped`]); 0 runs without it.
    pub gapped_updates: usize,
    /// Each room is first given a document of about this many bytes (a
    /// seeding client pastes it and stays); 0 starts them empty.
    pub preload_bytes: usize,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutReport {
    /// Server nodes the clients were spread over.
    pub nodes: usize,
    pub clients: usize,
    pub rooms: usize,
    pub rate: f64,
    pub duration_s: f64,
    pub connected: usize,
    pub connect_failures: usize,
    pub connect_errors: Vec<String>,
    pub connect_s: f64,
    /// Deliveries per second the schedule asks for: sent × (room size − 1).
    pub offered_dps: f64,
    pub sent: u64,
    pub expected: u64,
    pub received: u64,
    /// Own updates the server sent back to their sender (not counted as
    /// deliveries; the Node servers echo, crdt-hub does not).
    pub echoes: u64,
    /// Other clients' updates a receiver got again: a sender's stamps only
    /// grow, so one not newer than the last a receiver saw from that sender
    /// is a repeat. Not deliveries and not in the latency histogram (their
    /// age would read as latency). A cluster's anti-entropy re-sends
    /// updates still in flight on the bus; a single server sends none.
    pub duplicates: u64,
    pub delivery_ratio: f64,
    /// Deliveries over the time from the first send to the last delivery.
    pub sustained_dps: f64,
    pub latency: Latency,
    /// How late senders were against their schedule (generator health).
    pub send_lag: Latency,
    pub server_cpu_s: f64,
    pub cpu_us_per_delivery: f64,
    pub server_rss_mib: f64,
    pub server_peak_rss_mib: f64,
    /// CPU the generator itself used over the same window.
    pub loadgen_cpu_s: f64,
    /// Connections the server closed during the run, with their codes.
    pub closed_by_server: usize,
    pub close_reasons: Vec<String>,
    pub rooms_converged: usize,
    pub convergence_errors: Vec<String>,
    /// What the gapped writer sent (zero without one).
    pub gapped: crate::gapped::GappedOutcome,
    /// What each room must hold: the soak checks the rooms again after
    /// they were unloaded and come back from storage.
    #[serde(skip)]
    pub expected_rooms: Vec<Expected>,
}

/// Pause before the convergence check when the clients were spread over
/// several nodes.
const CLUSTER_SETTLE: Duration = Duration::from_secs(1);

/// Metric name: 1 when the run met the saturation criterion, else 0.
pub const KEEPS_UP: &str = "keeps up (p99 ≤ 50 ms, ≥ 99 %)";

impl FanoutReport {
    pub fn metrics(&self) -> Vec<Metric> {
        vec![
            metric("offered deliveries/s", self.offered_dps),
            metric("sustained deliveries/s", self.sustained_dps),
            metric("delivery ratio", self.delivery_ratio),
            metric("p50 ms", self.latency.p50_ms),
            metric("p99 ms", self.latency.p99_ms),
            metric("p999 ms", self.latency.p999_ms),
            metric("server CPU µs/delivery", self.cpu_us_per_delivery),
            metric("server RSS MiB", self.server_rss_mib),
            metric("loadgen CPU s", self.loadgen_cpu_s),
            metric("send lag p99 ms", self.send_lag.p99_ms),
            metric("connect failures", self.connect_failures as f64),
            metric("closed by server", self.closed_by_server as f64),
            metric(
                "rooms converged %",
                100.0 * self.rooms_converged as f64 / self.rooms.max(1) as f64,
            ),
            metric(KEEPS_UP, f64::from(u8::from(self.keeps_up()))),
            metric("gapped updates sent", self.gapped.updates_sent as f64),
        ]
    }

    /// The saturation criterion: p99 within 50 ms and 99 % delivered.
    pub fn keeps_up(&self) -> bool {
        self.connect_failures == 0
            && self.closed_by_server == 0
            && self.delivery_ratio >= 0.99
            && self.latency.p99_ms <= 50.0
    }
}

struct Client {
    index: usize,
    room: usize,
    client_id: u64,
    frames: Vec<Prepared>,
}

/// What every receiver adds to: how many deliveries so far, and when the
/// latest came (the drain wait watches it).
#[derive(Default)]
pub(crate) struct Shared {
    /// Deliveries received so far, by every client.
    received: AtomicU64,
    /// Microsecond stamp of the latest delivery.
    last_delivery: AtomicU64,
}

impl Shared {
    /// Counts `count` deliveries received at `now` (µs since the stamp epoch).
    pub(crate) fn add_deliveries(&self, count: u64, now: u64) {
        self.received.fetch_add(count, Ordering::Relaxed);
        self.last_delivery.fetch_max(now, Ordering::Relaxed);
    }

    /// When the latest delivery came, µs since the stamp epoch.
    pub(crate) fn last_delivery(&self) -> u64 {
        self.last_delivery.load(Ordering::Relaxed)
    }
}

struct ReceiverOutcome {
    tally: Tally,
    closed: Option<String>,
}

/// What one receiver made of the stamps it read.
pub(crate) struct Tally {
    /// Latency of each delivery.
    pub latency: Option<Histogram<u64>>,
    /// Other clients' stamps seen for the first time.
    pub deliveries: u64,
    /// Its own stamps, sent back by the server.
    pub echoes: u64,
    /// Stamps not newer than one already seen from the same sender.
    pub duplicates: u64,
    /// The newest stamp seen from each sender.
    pub newest: Vec<u64>,
}

impl Tally {
    pub(crate) fn new(senders: usize) -> Self {
        Self {
            latency: None,
            deliveries: 0,
            echoes: 0,
            duplicates: 0,
            newest: vec![0; senders],
        }
    }

    /// Counts the stamps in `bytes`, read by receiver `me` at `now` (µs
    /// since the stamp epoch), and adds the deliveries to `shared`.
    pub(crate) fn count(&mut self, bytes: &[u8], me: u32, now: u64, shared: &Shared) {
        let mut fresh = 0;
        for found in stamp::find_all(bytes) {
            if found.sender == me {
                self.echoes += 1;
                continue;
            }
            if is_repeat(&mut self.newest, found.sender, found.micros) {
                self.duplicates += 1;
                continue;
            }
            fresh += 1;
            let hist = self.latency.get_or_insert_with(stats::new_histogram);
            stats::record(
                hist,
                Duration::from_micros(now.saturating_sub(found.micros)),
            );
        }
        if fresh > 0 {
            self.deliveries += fresh;
            shared.add_deliveries(fresh, now);
        }
    }
}

struct SenderOutcome {
    sent: u64,
    lag: Histogram<u64>,
    error: Option<String>,
}

/// Runs one fan-out measurement.
///
/// # Errors
/// Invalid configuration, or the server process vanished.
pub async fn run(config: &FanoutConfig) -> Result<FanoutReport> {
    if config.clients == 0 || config.rooms == 0 || config.rate <= 0.0 {
        bail!("clients, rooms and rate must be positive");
    }
    if config.bases.is_empty() {
        bail!("no server URL");
    }
    if config.clients > stamp::MAX_SENDER as usize {
        bail!("at most {} clients", stamp::MAX_SENDER);
    }
    let mean = config.rate * config.duration.as_secs_f64();
    let per_client = match config.arrivals {
        Arrivals::Even => mean.round().max(1.0) as usize,
        // Enough for what the process puts in the run: a Poisson count is
        // almost never 6 standard deviations above its mean.
        Arrivals::Poisson => (mean + 6.0 * mean.sqrt() + 10.0).ceil() as usize,
    };
    let wires = Wire::for_rooms(config.protocol, &config.room_prefix, config.rooms);
    let clients: Vec<Client> = (0..config.clients)
        .map(|index| {
            let room = index % config.rooms;
            let client_id = index as u64 + 1;
            let updates = workload::stamped_updates(client_id, index as u32, per_client);
            Client {
                index,
                room,
                client_id,
                frames: workload::prepare(&wires[room], updates),
            }
        })
        .collect();

    let mut seeders = Vec::new();
    let mut seeded_len = 0;
    if config.preload_bytes > 0 {
        for (room, wire) in wires.iter().enumerate() {
            let base = &config.bases[node_of(room, config.rooms, config.bases.len())];
            let (seeder, len) =
                crate::join_storm::seed(base, wire, config.preload_bytes, config.connect).await?;
            seeders.push(seeder);
            seeded_len = len as u64;
        }
    }
    let client_wires: Vec<Arc<Wire>> = clients.iter().map(|c| wires[c.room].clone()).collect();
    let client_bases: Vec<&str> = clients
        .iter()
        .map(|c| config.bases[node_of(c.index, config.rooms, config.bases.len())].as_str())
        .collect();
    let opened = conn::connect_each(
        &client_bases,
        &client_wires,
        config.connect_concurrency,
        config.connect,
    )
    .await;
    let mut members = vec![0usize; config.rooms];
    for (client, socket) in clients.iter().zip(&opened.sockets) {
        if socket.is_some() {
            members[client.room] += 1;
        }
    }

    let shared = Arc::new(Shared::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let period = Duration::from_secs_f64(1.0 / config.rate);
    let start = Instant::now() + Duration::from_millis(200);
    let server_before = sample_servers(&config.server_pids)?;
    let own_before = procstat::sample(None)?;

    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    let mut plans = Vec::new();
    for (client, socket) in clients.into_iter().zip(opened.sockets) {
        let Some(socket) = socket else { continue };
        let (sink, stream) = socket.split();
        receivers.push(tokio::spawn(receive(
            stream,
            client_wires[client.index].clone(),
            client.index as u32,
            config.clients,
            shared.clone(),
            stop_rx.clone(),
        )));
        let schedule = config.arrivals.schedule(
            start,
            period,
            config.duration,
            client.index,
            config.clients,
            client.frames.len(),
        );
        plans.push((client.room, client.client_id));
        senders.push(tokio::spawn(send(sink, client.frames, schedule)));
    }

    let gapped = (config.gapped_updates > 0).then(|| {
        tokio::spawn(crate::gapped::run(
            config.bases[0].clone(),
            wires[0].clone(),
            config.connect,
            config.gapped_updates,
            start,
            config.duration,
            stop_rx.clone(),
        ))
    });

    let mut sent_per_client = Vec::with_capacity(senders.len());
    let mut lag = stats::new_histogram();
    let mut send_errors = Vec::new();
    let mut sinks_done = Vec::new();
    for sender in senders {
        let (outcome, sink) = sender.await?;
        lag.add(&outcome.lag).ok();
        sent_per_client.push(outcome.sent);
        send_errors.extend(outcome.error);
        sinks_done.push(sink);
    }
    let expected: u64 = plans
        .iter()
        .zip(&sent_per_client)
        .map(|(&(room, _), &sent)| sent * (members[room].saturating_sub(1)) as u64)
        .sum();
    wait_for_drain(&shared, expected, config.drain_timeout).await;
    let server_after = sample_servers(&config.server_pids)?;
    let own_after = procstat::sample(None)?;

    stop_tx.send(true).ok();
    let gapped = match gapped {
        Some(task) => task.await??,
        None => crate::gapped::GappedOutcome::default(),
    };
    let mut latency = stats::new_histogram();
    let (mut received, mut echoes, mut duplicates) = (0u64, 0u64, 0u64);
    let mut close_reasons: Vec<String> = send_errors;
    let mut closed_by_server = 0;
    for receiver in receivers {
        let outcome = receiver.await?;
        if let Some(hist) = &outcome.tally.latency {
            latency.add(hist).ok();
        }
        received += outcome.tally.deliveries;
        echoes += outcome.tally.echoes;
        duplicates += outcome.tally.duplicates;
        if let Some(reason) = outcome.closed {
            closed_by_server += 1;
            if close_reasons.len() < 5 {
                close_reasons.push(reason);
            }
        }
    }
    // Checked while the senders are still connected: Hocuspocus without a
    // persistence extension forgets a document when its last client leaves.
    let mut expected_rooms = expected_documents(config.rooms, &plans, &sent_per_client);
    for room in &mut expected_rooms {
        room.text_len += seeded_len;
    }
    let (rooms_converged, convergence_errors) = if config.check_convergence {
        if config.bases.len() > 1 {
            // Every delivery arrived, so every node has applied every
            // update; the pause only lets stray bus traffic (state vectors,
            // anti-entropy) settle before a fresh client asks.
            tokio::time::sleep(CLUSTER_SETTLE).await;
        }
        converge::check_rooms(&config.bases, &wires, &expected_rooms, config.connect).await
    } else {
        (0, vec!["not checked".to_owned()])
    };
    drop(sinks_done);
    drop(seeders);

    let first_send = start.into_std();
    let last = shared.last_delivery.load(Ordering::Relaxed);
    let window = Duration::from_micros(last)
        .saturating_sub(first_send.duration_since(stamp::epoch()))
        .as_secs_f64();
    let connected: usize = members.iter().sum();
    let offered_dps: f64 = members
        .iter()
        .map(|&m| m as f64 * config.rate * m.saturating_sub(1) as f64)
        .sum();
    let server_cpu = server_after
        .cpu
        .saturating_sub(server_before.cpu)
        .as_secs_f64();
    Ok(FanoutReport {
        nodes: config.bases.len(),
        clients: config.clients,
        rooms: config.rooms,
        rate: config.rate,
        duration_s: config.duration.as_secs_f64(),
        connected,
        connect_failures: opened.failures,
        connect_errors: opened.errors,
        connect_s: opened.elapsed.as_secs_f64(),
        offered_dps,
        sent: sent_per_client.iter().sum(),
        expected,
        received,
        echoes,
        duplicates,
        delivery_ratio: if expected == 0 {
            0.0
        } else {
            received as f64 / expected as f64
        },
        sustained_dps: if window > 0.0 {
            received as f64 / window
        } else {
            0.0
        },
        latency: Latency::of(&latency),
        send_lag: Latency::of(&lag),
        server_cpu_s: server_cpu,
        cpu_us_per_delivery: if received == 0 {
            f64::NAN
        } else {
            server_cpu * 1e6 / received as f64
        },
        server_rss_mib: server_after.rss_bytes as f64 / MIB,
        server_peak_rss_mib: server_after.hwm_bytes as f64 / MIB,
        loadgen_cpu_s: own_after.cpu.saturating_sub(own_before.cpu).as_secs_f64(),
        closed_by_server,
        close_reasons,
        rooms_converged,
        convergence_errors,
        gapped,
        expected_rooms,
    })
}

/// The counters of every server process, summed (a cluster's cost is that
/// of all its nodes).
fn sample_servers(pids: &[u32]) -> Result<ProcSample> {
    let mut total = ProcSample::default();
    for &pid in pids {
        let one = procstat::sample(Some(pid))?;
        total.cpu += one.cpu;
        total.rss_bytes += one.rss_bytes;
        total.hwm_bytes += one.hwm_bytes;
    }
    Ok(total)
}

/// Which of `nodes` servers client `index` connects to. Client `i` is in
/// room `i % rooms`; its rank within the room, `i / rooms`, goes round-robin
/// over the nodes, so every room has clients on every node (when it has at
/// least as many clients as there are nodes) and room sizes per node differ
/// by at most one.
pub fn node_of(index: usize, rooms: usize, nodes: usize) -> usize {
    (index / rooms.max(1)) % nodes.max(1)
}

/// Per room: each sender's Yjs client id and how many clock units it
/// produced (every update inserts one ASCII stamp field).
fn expected_documents(rooms: usize, plans: &[(usize, u64)], sent: &[u64]) -> Vec<Expected> {
    let mut expected: Vec<Expected> = (0..rooms).map(|_| Expected::default()).collect();
    for (&(room, client_id), &count) in plans.iter().zip(sent) {
        let clock = count * stamp::FIELD_LEN as u64;
        expected[room].clocks.push((client_id, clock));
        expected[room].text_len += clock;
    }
    expected
}

async fn send(
    mut sink: SplitSink<Ws, WsMessage>,
    frames: Vec<Prepared>,
    schedule: Vec<Instant>,
) -> (SenderOutcome, SplitSink<Ws, WsMessage>) {
    let mut outcome = SenderOutcome {
        sent: 0,
        lag: stats::new_histogram(),
        error: None,
    };
    for (prepared, due) in frames.into_iter().zip(schedule) {
        sleep_until(due).await;
        stats::record(&mut outcome.lag, due.elapsed());
        let Prepared {
            mut frame,
            stamp_at,
        } = prepared;
        stamp::patch(&mut frame, stamp_at, stamp::now_micros());
        if let Err(e) = sink.send(WsMessage::Binary(frame.into())).await {
            outcome.error = Some(format!("send failed: {e}"));
            break;
        }
        outcome.sent += 1;
    }
    (outcome, sink)
}

async fn receive(
    mut stream: SplitStream<Ws>,
    wire: Arc<Wire>,
    me: u32,
    senders: usize,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> ReceiverOutcome {
    let mut outcome = ReceiverOutcome {
        tally: Tally::new(senders),
        closed: None,
    };
    loop {
        let frame = match conn::next_binary(&mut stream, &mut stop).await {
            Read::Frame(frame) => frame,
            Read::Stopped => break,
            Read::Closed(reason) => {
                outcome.closed = Some(reason);
                break;
            }
        };
        let Incoming::Update(update) = wire.parse(&frame) else {
            continue;
        };
        outcome
            .tally
            .count(update, me, stamp::now_micros(), &shared);
    }
    outcome
}

/// Whether a stamp from `sender` is one this receiver has already seen
/// (not newer than the newest it saw from that sender); records it when
/// it is new. A sender's stamps strictly increase: each is the send time
/// in µs, and one sender sends one update at a time.
pub(crate) fn is_repeat(newest: &mut [u64], sender: u32, micros: u64) -> bool {
    let Some(seen) = newest.get_mut(sender as usize) else {
        return false;
    };
    if micros <= *seen {
        return true;
    }
    *seen = micros;
    false
}

/// Waits until every expected delivery arrived, nothing arrived for two
/// seconds, or `timeout` passed.
pub(crate) async fn wait_for_drain(shared: &Shared, expected: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut last_count = shared.received.load(Ordering::Relaxed);
    let mut last_progress = Instant::now();
    while Instant::now() < deadline {
        let count = shared.received.load(Ordering::Relaxed);
        if count >= expected {
            return;
        }
        if count != last_count {
            last_count = count;
            last_progress = Instant::now();
        } else if last_progress.elapsed() > Duration::from_secs(2) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_room_is_spread_evenly_over_the_nodes() {
        let (clients, rooms, nodes) = (200, 20, 3);
        let mut per_room_node = vec![vec![0usize; nodes]; rooms];
        for index in 0..clients {
            per_room_node[index % rooms][node_of(index, rooms, nodes)] += 1;
        }
        for counts in &per_room_node {
            // 10 clients of a room over 3 nodes: 4, 3, 3.
            assert_eq!(counts, &[4, 3, 3]);
        }
    }

    #[test]
    fn repeats_are_told_apart_per_sender() {
        let mut newest = vec![0; 3];
        assert!(!is_repeat(&mut newest, 0, 100));
        assert!(!is_repeat(&mut newest, 1, 50)); // another sender's clock
        assert!(is_repeat(&mut newest, 0, 100)); // the same update again
        assert!(is_repeat(&mut newest, 0, 90)); // an older one, re-sent
        assert!(!is_repeat(&mut newest, 0, 101));
        assert!(!is_repeat(&mut newest, 7, 1)); // unknown sender: counted
    }

    #[test]
    fn one_node_takes_everyone() {
        assert!((0..50).all(|i| node_of(i, 7, 1) == 0));
        // Degenerate inputs do not divide by zero.
        assert_eq!(node_of(5, 0, 0), 0);
    }
}
