//! The presence storm: C clients in R rooms each move their cursor (an
//! awareness update) K times a second, and everyone measures how late the
//! others' moves reach them.
//!
//! Every client's state carries a send-time stamp ([`crate::stamp`]) in its
//! JSON, so a receiver finds the stamps of however many clients one
//! awareness message carries without decoding it. A server may merge
//! moves (crdt-hub's `--awareness-window`): a client that moved twice
//! within a window is then sent only its newer state, which is all a
//! cursor needs. So deliveries are counted per move received, and what
//! must hold is that every receiver ends with every other client's last
//! move ("last moves seen").
//!
//! With `echo`, each client also sends back every awareness message it
//! receives, as stock clients do: y-websocket (every major) and Hocuspocus
//! providers before v4 re-broadcast each change they apply, other
//! clients' included. A server then reads as many awareness messages as
//! it sends, each carrying what it merged.

use std::sync::Arc;
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
use crate::fanout::{self, Shared, Tally};
use crate::procstat;
use crate::stamp;
use crate::stats::{self, Latency, MIB, Metric, metric};
use crate::wire::{Incoming, Protocol, Wire};

#[derive(Debug, Clone)]
pub struct PresenceConfig {
    pub base: String,
    pub protocol: Protocol,
    pub clients: usize,
    pub rooms: usize,
    /// Cursor moves per second per client.
    pub rate: f64,
    pub arrivals: Arrivals,
    pub duration: Duration,
    pub room_prefix: String,
    pub connect: ConnectOptions,
    pub connect_concurrency: usize,
    pub drain_timeout: Duration,
    /// The server process, for CPU and memory; `None` skips those.
    pub server_pid: Option<u32>,
    /// Send back every awareness message received, as y-websocket does.
    pub echo: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct PresenceReport {
    pub clients: usize,
    pub rooms: usize,
    pub rate: f64,
    pub duration_s: f64,
    pub connected: usize,
    pub connect_failures: usize,
    pub connect_errors: Vec<String>,
    /// Moves sent, by every client.
    pub moves: u64,
    /// Moves × (room size − 1): what a server that merges nothing sends.
    pub offered: u64,
    /// Other clients' moves received (merged-away ones are not).
    pub delivered: u64,
    /// Awareness messages received, by every client.
    pub messages: u64,
    /// Own moves the server sent back to their sender.
    pub echoes: u64,
    /// Awareness messages the clients sent back (`echo`).
    pub echoed: u64,
    /// Receivers that ended with every other client's last move.
    pub last_moves_seen: usize,
    pub latency: Latency,
    pub send_lag: Latency,
    pub server_cpu_s: f64,
    /// Server CPU from the first move to the last delivery (at least the
    /// run's duration), in cores.
    pub server_cores: f64,
    pub cpu_us_per_delivery: f64,
    pub server_rss_mib: f64,
    pub loadgen_cpu_s: f64,
    pub closed_by_server: usize,
    pub close_reasons: Vec<String>,
}

impl PresenceReport {
    pub fn metrics(&self) -> Vec<Metric> {
        vec![
            metric(
                "moves/s offered to receivers",
                self.offered as f64 / self.duration_s,
            ),
            metric("moves received/s", self.delivered as f64 / self.duration_s),
            metric(
                "awareness messages/s",
                self.messages as f64 / self.duration_s,
            ),
            metric("p50 ms", self.latency.p50_ms),
            metric("p99 ms", self.latency.p99_ms),
            metric("p999 ms", self.latency.p999_ms),
            metric("server cores", self.server_cores),
            metric("CPU µs/move received", self.cpu_us_per_delivery),
            metric("server RSS MiB", self.server_rss_mib),
            metric(
                "receivers with every last move",
                self.last_moves_seen as f64 / self.connected.max(1) as f64,
            ),
            metric("closed by server", self.closed_by_server as f64),
        ]
    }
}

struct Mover {
    index: usize,
    room: usize,
    /// Awareness client id (Yjs clientID): index + 1.
    client_id: u64,
}

struct Heard {
    /// Moves received; a greeting or a repeat counts as a duplicate.
    tally: Tally,
    messages: u64,
    /// Messages sent back.
    echoed: u64,
    closed: Option<String>,
}

/// A client's sending half, shared by its cursor and, with `echo`, its
/// listener.
type Sink = Arc<tokio::sync::Mutex<SplitSink<Ws, WsMessage>>>;

struct Moved {
    sent: u64,
    /// The stamp of the last move.
    last: u64,
    lag: Histogram<u64>,
    error: Option<String>,
}

/// Runs one presence storm.
///
/// # Errors
/// Invalid configuration, or the server process vanished.
pub async fn run(config: &PresenceConfig) -> Result<PresenceReport> {
    if config.clients == 0 || config.rooms == 0 || config.rate <= 0.0 {
        bail!("clients, rooms and rate must be positive");
    }
    if config.clients > stamp::MAX_SENDER as usize {
        bail!("at most {} clients", stamp::MAX_SENDER);
    }
    let wires = Wire::for_rooms(config.protocol, &config.room_prefix, config.rooms);
    let movers: Vec<Mover> = (0..config.clients)
        .map(|index| Mover {
            index,
            room: index % config.rooms,
            client_id: index as u64 + 1,
        })
        .collect();
    let mover_wires: Vec<Arc<Wire>> = movers.iter().map(|m| wires[m.room].clone()).collect();
    let opened = conn::connect_many(
        &config.base,
        &mover_wires,
        config.connect_concurrency,
        config.connect,
    )
    .await;
    let mut members = vec![0usize; config.rooms];
    for (mover, socket) in movers.iter().zip(&opened.sockets) {
        if socket.is_some() {
            members[mover.room] += 1;
        }
    }
    let mean = config.rate * config.duration.as_secs_f64();
    let sends = match config.arrivals {
        Arrivals::Even => mean.round().max(1.0) as usize,
        Arrivals::Poisson => (mean + 6.0 * mean.sqrt() + 10.0).ceil() as usize,
    };
    let shared = Arc::new(Shared::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let period = Duration::from_secs_f64(1.0 / config.rate);
    let start = Instant::now() + Duration::from_millis(200);
    let server_before = sample(config.server_pid)?;
    let own_before = procstat::sample(None)?;

    let mut listeners = Vec::new();
    let mut senders = Vec::new();
    for (mover, socket) in movers.iter().zip(opened.sockets) {
        let Some(socket) = socket else { continue };
        let (sink, stream) = socket.split();
        let sink: Sink = Arc::new(tokio::sync::Mutex::new(sink));
        let wire = mover_wires[mover.index].clone();
        listeners.push((
            mover.room,
            mover.index,
            tokio::spawn(listen(
                stream,
                wire.clone(),
                mover.index as u32,
                config.clients,
                shared.clone(),
                stop_rx.clone(),
                config.echo.then(|| sink.clone()),
            )),
        ));
        let schedule = config.arrivals.schedule(
            start,
            period,
            config.duration,
            mover.index,
            config.clients,
            sends,
        );
        senders.push((
            mover.index,
            tokio::spawn(move_cursor(
                sink,
                wire,
                mover.index,
                mover.client_id,
                schedule,
            )),
        ));
    }

    let mut last_move = vec![0u64; config.clients];
    let mut lag = stats::new_histogram();
    let mut moves = 0;
    let mut offered = 0;
    let mut close_reasons = Vec::new();
    let mut sinks = Vec::new();
    for (index, sender) in senders {
        let (moved, sink) = sender.await?;
        lag.add(&moved.lag).ok();
        last_move[index] = moved.last;
        moves += moved.sent;
        offered += moved.sent * members[index % config.rooms].saturating_sub(1) as u64;
        close_reasons.extend(moved.error);
        sinks.push(sink);
    }
    // Merged-away moves never come: this waits until deliveries stop.
    fanout::wait_for_drain(&shared, offered, config.drain_timeout).await;
    // From the first move to the last delivery: a server that falls behind
    // works on after the senders stop.
    let first_move = start.into_std().duration_since(stamp::epoch());
    let busy = Duration::from_micros(shared.last_delivery())
        .saturating_sub(first_move)
        .max(config.duration)
        .as_secs_f64();
    let server_after = sample(config.server_pid)?;
    let own_after = procstat::sample(None)?;
    stop_tx.send(true).ok();

    let mut latency = stats::new_histogram();
    let (mut delivered, mut messages, mut echoes, mut echoed) = (0, 0, 0, 0);
    let mut last_moves_seen = 0;
    let mut closed_by_server = 0;
    for (room, me, listener) in listeners {
        let heard = listener.await?;
        if let Some(hist) = &heard.tally.latency {
            latency.add(hist).ok();
        }
        delivered += heard.tally.deliveries;
        messages += heard.messages;
        echoes += heard.tally.echoes;
        echoed += heard.echoed;
        let saw_all = (0..config.clients)
            .filter(|&other| other != me && other % config.rooms == room)
            .all(|other| heard.tally.newest[other] == last_move[other]);
        last_moves_seen += usize::from(saw_all);
        if let Some(reason) = heard.closed {
            closed_by_server += 1;
            if close_reasons.len() < 5 {
                close_reasons.push(reason);
            }
        }
    }
    drop(sinks);
    let server_cpu = server_after
        .cpu
        .saturating_sub(server_before.cpu)
        .as_secs_f64();
    Ok(PresenceReport {
        clients: config.clients,
        rooms: config.rooms,
        rate: config.rate,
        duration_s: config.duration.as_secs_f64(),
        connected: members.iter().sum(),
        connect_failures: opened.failures,
        connect_errors: opened.errors,
        moves,
        offered,
        delivered,
        messages,
        echoes,
        echoed,
        last_moves_seen,
        latency: Latency::of(&latency),
        send_lag: Latency::of(&lag),
        server_cpu_s: server_cpu,
        server_cores: server_cpu / busy,
        cpu_us_per_delivery: if delivered == 0 {
            f64::NAN
        } else {
            server_cpu * 1e6 / delivered as f64
        },
        server_rss_mib: server_after.rss_bytes as f64 / MIB,
        loadgen_cpu_s: own_after.cpu.saturating_sub(own_before.cpu).as_secs_f64(),
        closed_by_server,
        close_reasons,
    })
}

fn sample(pid: Option<u32>) -> Result<procstat::ProcSample> {
    match pid {
        Some(pid) => procstat::sample(Some(pid)),
        None => Ok(procstat::ProcSample::default()),
    }
}

/// A user's awareness state as y-prosemirror or y-codemirror would set it,
/// its cursor carrying the stamp field.
fn state_json(index: usize) -> String {
    format!(
        r##"{{"user":{{"name":"user {index}","color":"#30bced"}},"cursor":"{}"}}"##,
        stamp::field_text(index as u32)
    )
}

async fn move_cursor(
    sink: Sink,
    wire: Arc<Wire>,
    index: usize,
    client_id: u64,
    schedule: Vec<Instant>,
) -> (Moved, Sink) {
    let mut moved = Moved {
        sent: 0,
        last: 0,
        lag: stats::new_histogram(),
        error: None,
    };
    let mut json = state_json(index).into_bytes();
    let at = stamp::locate(&json).expect("the state holds a stamp field");
    for (clock, due) in (1u32..).zip(schedule) {
        sleep_until(due).await;
        stats::record(&mut moved.lag, due.elapsed());
        let micros = stamp::now_micros();
        stamp::patch(&mut json, at, micros);
        let state = std::str::from_utf8(&json).expect("ASCII");
        let frame = wire.awareness(client_id, clock, state);
        if let Err(e) = sink
            .lock()
            .await
            .send(WsMessage::Binary(frame.into()))
            .await
        {
            moved.error = Some(format!("send failed: {e}"));
            break;
        }
        moved.sent += 1;
        moved.last = micros;
    }
    (moved, sink)
}

async fn listen(
    mut stream: SplitStream<Ws>,
    wire: Arc<Wire>,
    me: u32,
    senders: usize,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    echo: Option<Sink>,
) -> Heard {
    let mut heard = Heard {
        tally: Tally::new(senders),
        messages: 0,
        echoed: 0,
        closed: None,
    };
    loop {
        let frame = match conn::next_binary(&mut stream, &mut stop).await {
            Read::Frame(frame) => frame,
            Read::Stopped => break,
            Read::Closed(reason) => {
                heard.closed = Some(reason);
                break;
            }
        };
        let Incoming::Awareness(update) = wire.parse(&frame) else {
            continue;
        };
        heard.messages += 1;
        heard.tally.count(update, me, stamp::now_micros(), &shared);
        if let Some(sink) = &echo {
            let frame = wire.awareness_update(update);
            if sink
                .lock()
                .await
                .send(WsMessage::Binary(frame.into()))
                .await
                .is_ok()
            {
                heard.echoed += 1;
            }
        }
    }
    heard
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_is_json_with_one_stamp_that_a_receiver_finds_in_the_frame() {
        let mut json = state_json(42).into_bytes();
        let at = stamp::locate(&json).unwrap();
        stamp::patch(&mut json, at, 123_456);
        let state = String::from_utf8(json).unwrap();
        serde_json::from_str::<serde_json::Value>(&state).expect("valid JSON");
        let wire = Wire::new(Protocol::Hocuspocus, "room-0");
        let frame = wire.awareness(43, 7, &state);
        let Incoming::Awareness(update) = wire.parse(&frame) else {
            panic!("not parsed as awareness");
        };
        let stamps: Vec<_> = stamp::find_all(update).collect();
        assert_eq!(stamps.len(), 1);
        assert_eq!((stamps[0].sender, stamps[0].micros), (42, 123_456));
    }
}
