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
///
/// Each worker owns some slots, and each slot has a room at a time. A room
/// gets `visits_per_room` visits, then a fresh one takes its slot: every
/// visit adds a client and its text, so a room that lived for the whole
/// run would grow for the whole run, and the server's memory with it (a
/// loaded document holds every client's items). With rooms replaced, the
/// documents loaded at any time stay the same size on average, and the
/// soak's RSS measures what the server keeps, not how much was written.
/// Retired rooms stay in storage; API reads and the final check reopen
/// them.
pub struct ChurnRooms {
    protocol: Protocol,
    prefix: String,
    /// Visits a room gets before it is retired; 0 keeps every room for the
    /// whole run.
    visits_per_room: u32,
    state: Mutex<State>,
    next_client: AtomicU64,
}

struct State {
    /// Every room opened, oldest first, with what it must hold as far as
    /// its worker has confirmed.
    rooms: Vec<(Arc<Wire>, Expected)>,
    /// Each slot's room and how many visits that room has left.
    slots: Vec<(usize, u32)>,
}

impl ChurnRooms {
    pub fn new(protocol: Protocol, prefix: &str, slots: usize, visits_per_room: u32) -> Self {
        let rooms = (0..slots)
            .map(|r| {
                (
                    Arc::new(Wire::new(protocol, &format!("{prefix}-{r}"))),
                    Expected::default(),
                )
            })
            .collect();
        // The first rooms retire at staggered times, so that later the
        // slots' rooms are of every age at once rather than all young or
        // all old together.
        let slots = (0..slots)
            .map(|s| {
                let first = (u64::from(visits_per_room) * (s as u64 + 1)).div_ceil(slots as u64);
                (s, u32::try_from(first).unwrap_or(u32::MAX))
            })
            .collect();
        Self {
            protocol,
            prefix: prefix.to_owned(),
            visits_per_room,
            state: Mutex::new(State { rooms, slots }),
            next_client: AtomicU64::new(FIRST_CLIENT_ID),
        }
    }

    pub fn slots(&self) -> usize {
        self.lock().slots.len()
    }

    /// The room the next visit to `slot` goes to: its current one, or a
    /// fresh one once that has had its visits.
    fn visit(&self, slot: usize) -> usize {
        let mut state = self.lock();
        let (room, left) = state.slots[slot];
        if self.visits_per_room == 0 {
            return room;
        }
        if left > 0 {
            state.slots[slot].1 = left - 1;
            return room;
        }
        let fresh = state.rooms.len();
        let name = format!("{}-{fresh}", self.prefix);
        state.rooms.push((
            Arc::new(Wire::new(self.protocol, &name)),
            Expected::default(),
        ));
        state.slots[slot] = (fresh, self.visits_per_room - 1);
        fresh
    }

    pub fn wire(&self, room: usize) -> Arc<Wire> {
        self.lock().rooms[room].0.clone()
    }

    /// Every room opened so far.
    pub fn wires(&self) -> Vec<Arc<Wire>> {
        self.lock().rooms.iter().map(|(w, _)| w.clone()).collect()
    }

    /// What room `r` must hold, as far as its worker has confirmed.
    pub fn expected_of(&self, room: usize) -> Expected {
        self.lock().rooms[room].1.clone()
    }

    pub fn expected(&self) -> Vec<Expected> {
        self.lock().rooms.iter().map(|(_, e)| e.clone()).collect()
    }

    /// Rooms that have content (worth an API read).
    pub fn written(&self) -> Vec<usize> {
        let state = self.lock();
        (0..state.rooms.len())
            .filter(|&r| state.rooms[r].1.text_len > 0)
            .collect()
    }

    fn confirm(&self, room: usize, client: u64, clock: u64) {
        if clock == 0 {
            return;
        }
        let expected = &mut self.lock().rooms[room].1;
        expected.clocks.push((client, clock));
        expected.text_len += clock;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("not poisoned")
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

/// Worker `worker` of `workers`: visits its slots' rooms (slots `worker`,
/// `worker + workers`, …) in turn until `until`. A visit opens one to three clients
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
    let mine: Vec<usize> = (worker..rooms.slots()).step_by(workers.max(1)).collect();
    for &slot in mine.iter().cycle() {
        if Instant::now() >= until {
            break;
        }
        let room = rooms.visit(slot);
        let wire = rooms.wire(room);
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
            let (base, wire) = (base.clone(), wire.clone());
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
                Err(e) => outcome.fail(&e.context(format!("room {}", wire.room()))),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_gets_a_fresh_room_after_its_visits_and_slots_retire_staggered() {
        let rooms = ChurnRooms::new(Protocol::YWebsocket, "c", 4, 8);
        // Slot s's first room gets 8 × (s + 1) / 4 visits; the visit after
        // them goes to the slot's next room.
        let firsts: Vec<usize> = (0..4)
            .map(|s| (0..).take_while(|_| rooms.visit(s) == s).count())
            .collect();
        assert_eq!(firsts, [2, 4, 6, 8]);
        // Every later room gets 8 visits: slot 0's second has had one.
        let room = rooms.visit(0);
        assert!(room >= 4);
        assert!((0..6).all(|_| rooms.visit(0) == room));
        assert_ne!(rooms.visit(0), room);
        assert_eq!(rooms.wires().len(), rooms.expected().len());
        assert!(rooms.wire(room).room().starts_with("c-"));
    }

    #[test]
    fn with_no_visit_count_the_rooms_stay() {
        let rooms = ChurnRooms::new(Protocol::YWebsocket, "c", 2, 0);
        assert!((0..100).all(|_| rooms.visit(1) == 1));
        assert_eq!(rooms.wires().len(), 2);
    }
}
