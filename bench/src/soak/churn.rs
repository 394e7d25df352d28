//! Churn: clients join rooms, write a little and leave, all the time, so
//! that rooms go empty, unload after the server's idle timeout and are
//! reopened from storage by a later visit. Each room belongs to one
//! worker, so the soak knows exactly what every room must hold: the first
//! client of a visit checks the document the server hands it against
//! that, which catches an update lost between unload and reload at once
//! rather than only at the end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use yrs::block::ClientID;
use yrs::{ReadTxn, StateVector, Transact};

use crate::conn::{self, ConnectOptions, Ws};
use crate::converge::{self, Expected};
use crate::stamp;
use crate::wire::{Protocol, Wire};
use crate::workload;

/// Yjs client ids of churn clients start here, clear of the fan-out's
/// (its client *i* is `i + 1`).
const FIRST_CLIENT_ID: u64 = 1 << 32;

/// The churn rooms and what each must hold.
pub struct ChurnRooms {
    wires: Vec<Arc<Wire>>,
    expected: Mutex<Vec<Expected>>,
    next_client: AtomicU64,
}

impl ChurnRooms {
    pub fn new(protocol: Protocol, prefix: &str, rooms: usize) -> Self {
        Self {
            wires: Wire::for_rooms(protocol, prefix, rooms),
            expected: Mutex::new(vec![Expected::default(); rooms]),
            next_client: AtomicU64::new(FIRST_CLIENT_ID),
        }
    }

    pub fn wires(&self) -> &[Arc<Wire>] {
        &self.wires
    }

    /// What room `r` must hold, as far as its worker has confirmed.
    pub fn expected_of(&self, room: usize) -> Expected {
        self.expected.lock().expect("not poisoned")[room].clone()
    }

    pub fn expected(&self) -> Vec<Expected> {
        self.expected.lock().expect("not poisoned").clone()
    }

    /// Rooms that have content (worth an API read).
    pub fn written(&self) -> Vec<usize> {
        let expected = self.expected.lock().expect("not poisoned");
        (0..expected.len())
            .filter(|&r| expected[r].text_len > 0)
            .collect()
    }

    fn confirm(&self, room: usize, client: u64, clock: u64) {
        if clock == 0 {
            return;
        }
        let mut expected = self.expected.lock().expect("not poisoned");
        expected[room].clocks.push((client, clock));
        expected[room].text_len += clock;
    }
}

/// What the churn workers did, summed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChurnStats {
    pub visits: u64,
    pub joins: u64,
    /// Joins that found the document they expected (every visit's first).
    pub checked_joins: u64,
    /// Clients that left without a close frame.
    pub dropped: u64,
    pub updates: u64,
    pub failures: u64,
    pub errors: Vec<String>,
}

impl ChurnStats {
    fn merge(&mut self, other: Self) {
        self.visits += other.visits;
        self.joins += other.joins;
        self.checked_joins += other.checked_joins;
        self.dropped += other.dropped;
        self.updates += other.updates;
        self.failures += other.failures;
        let room = 5usize.saturating_sub(self.errors.len());
        self.errors.extend(other.errors.into_iter().take(room));
    }

    fn fail(&mut self, error: &anyhow::Error) {
        self.failures += 1;
        if self.errors.len() < 5 {
            self.errors.push(format!("{error:#}"));
        }
    }
}

/// Worker `worker` of `workers`: visits its rooms (`worker`, `worker +
/// workers`, …) in turn until `until`. A visit opens one to three clients
/// at once, each writing one to five updates, staying up to 3 s and
/// leaving, a third of them without a close frame. With a few rooms per
/// worker a room sits empty for longer than a short idle timeout between
/// visits, so most visits reopen an unloaded room.
pub async fn worker(
    base: String,
    rooms: Arc<ChurnRooms>,
    worker: usize,
    workers: usize,
    connect: ConnectOptions,
    until: Instant,
    stats: Arc<Mutex<ChurnStats>>,
) {
    let mut rng = StdRng::seed_from_u64(worker as u64);
    let mine: Vec<usize> = (worker..rooms.wires.len())
        .step_by(workers.max(1))
        .collect();
    for &room in mine.iter().cycle() {
        if Instant::now() >= until {
            break;
        }
        let before = rooms.expected_of(room);
        // The others write only once the first has checked what it found.
        let (checked_tx, checked_rx) = watch::channel(false);
        let mut checked_tx = Some(checked_tx);
        let mut tasks = Vec::new();
        for j in 0..rng.random_range(1..=3) {
            let visit = Visit {
                client_id: rooms.next_client.fetch_add(1, Ordering::Relaxed),
                updates: rng.random_range(1..=5),
                hold: Duration::from_millis(rng.random_range(200..3000)),
                abrupt: rng.random_bool(1.0 / 3.0),
                check: (j == 0).then(|| (before.clone(), checked_tx.take().expect("first"))),
                after: checked_rx.clone(),
            };
            let (id, abrupt) = (visit.client_id, visit.abrupt);
            let (base, wire) = (base.clone(), rooms.wires[room].clone());
            tasks.push((id, abrupt, tokio::spawn(visit.run(base, wire, connect))));
        }
        let mut outcome = ChurnStats {
            visits: 1,
            ..ChurnStats::default()
        };
        for (client_id, abrupt, task) in tasks {
            let (sent, result) = task.await.unwrap_or_else(|e| (0, Err(e.into())));
            // What was sent before a failure is most likely in the room;
            // if not, the next visit's check says so.
            rooms.confirm(room, client_id, sent * stamp::FIELD_LEN as u64);
            outcome.updates += sent;
            match result {
                Ok(checked) => {
                    outcome.joins += 1;
                    outcome.checked_joins += u64::from(checked);
                    outcome.dropped += u64::from(abrupt);
                }
                Err(e) => outcome.fail(&e.context(format!("room {}", rooms.wires[room].room()))),
            }
        }
        stats.lock().expect("not poisoned").merge(outcome);
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..500))).await;
    }
}

/// One client's stay in a room.
struct Visit {
    client_id: u64,
    updates: usize,
    hold: Duration,
    /// Leave by dropping the socket instead of a close handshake.
    abrupt: bool,
    /// The document this client must find on joining, if it checks, and
    /// where to say that it has.
    check: Option<(Expected, watch::Sender<bool>)>,
    /// Set once the visit's checking client has checked.
    after: watch::Receiver<bool>,
}

impl Visit {
    /// Returns how many updates went out, and whether the stay went well
    /// (and included the join check).
    async fn run(
        mut self,
        base: String,
        wire: Arc<Wire>,
        connect: ConnectOptions,
    ) -> (u64, Result<bool>) {
        let mut sent = 0;
        let result = self.stay(&base, &wire, connect, &mut sent).await;
        (sent, result)
    }

    async fn stay(
        &mut self,
        base: &str,
        wire: &Wire,
        connect: ConnectOptions,
        sent: &mut u64,
    ) -> Result<bool> {
        let mut ws = conn::connect(base, wire, connect).await?;
        if let Some((expected, checked)) = &self.check {
            let doc = whole_document(&mut ws, wire).await?;
            converge::compare(&doc, expected).context("on joining")?;
            checked.send(true).ok();
        } else {
            // An error means the checker is gone (it failed): go ahead.
            self.after.wait_for(|&done| done).await.ok();
        }
        let updates = workload::stamped_updates(self.client_id, 0, self.updates);
        for prepared in workload::prepare(wire, updates) {
            ws.send(WsMessage::Binary(prepared.frame.into())).await?;
            *sent += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The server answers a SyncStep1 after it has applied what this
        // socket sent before it: once the answer holds them, they count.
        let doc = whole_document(&mut ws, wire).await?;
        let clock = u64::from(
            doc.transact()
                .state_vector()
                .get(&ClientID::new(self.client_id)),
        );
        if clock != *sent * stamp::FIELD_LEN as u64 {
            bail!(
                "client {} sent {sent} updates, the room holds clock {clock}",
                self.client_id
            );
        }
        hold(&mut ws, self.hold).await?;
        if self.abrupt {
            drop(ws);
        } else {
            ws.close(None).await.ok();
            let drained = tokio::time::timeout(Duration::from_secs(5), async {
                while let Some(Ok(_)) = ws.next().await {}
            });
            drained.await.context("no close from the server")?;
        }
        Ok(self.check.is_some())
    }
}

async fn whole_document(ws: &mut Ws, wire: &Wire) -> Result<yrs::Doc> {
    let frame = wire.sync_step1(&StateVector::default());
    let payload = conn::request_sync_step2(ws, wire, frame, Duration::from_secs(30)).await?;
    converge::doc_from_update(&payload)
}

/// Stays connected for `time`, reading (which answers the server's pings).
async fn hold(ws: &mut Ws, time: Duration) -> Result<()> {
    let deadline = Instant::now() + time;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Ok(()),
            Ok(Some(Ok(WsMessage::Close(close)))) => bail!("closed by server: {close:?}"),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => return Err(e).context("reading"),
            Ok(None) => bail!("connection ended"),
        }
    }
}
