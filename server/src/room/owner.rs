//! The task that owns one room: the only place its document changes.
//! Connections talk to it over a bounded channel; it never waits on a
//! connection (frames go out with `try_send`) nor on the database (updates
//! go to the journal, snapshots are written by a separate task), so neither
//! a slow client nor a slow database can stall the room.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use crdt_store::{RoomName, SnapshotId, SnapshotInfo, Store, StoreError};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::core::{Access, Effects, PeerId, Rejected, Room, RoomError};
use super::fanout::{Broadcast, FanoutWindow};
use super::peer::{PeerLink, QueueFull};
use super::presence::PresenceCaps;
use super::request::{Accepted, RoomEvent, RoomInfo, RoomReply, RoomRequest, Subscription};
use crate::close::{self, CloseReason};
use crate::persist::{self, Journal};
use crate::protocol::{ClientMessage, DocUpdate};

/// Settings every room shares.
#[derive(Debug, Clone)]
pub struct RoomConfig {
    /// A room with no connection for this long is saved and unloaded.
    pub idle_timeout: Duration,
    /// Snapshots kept per room as version history.
    pub keep_snapshots: usize,
    /// Commands queued for a room before senders wait.
    pub inbox_capacity: usize,
    /// How long a room waits at shutdown for its connections to leave.
    pub shutdown_grace: Duration,
    /// A changed room writes a compacted snapshot this often...
    pub snapshot_interval: Duration,
    /// ...or as soon as this many updates are not in a snapshot...
    pub snapshot_max_updates: u64,
    /// ...or as soon as this many bytes of updates are not in a snapshot.
    pub snapshot_max_bytes: u64,
    /// Connections one room accepts; more are refused (1013).
    pub max_connections: usize,
    /// Rooms held in memory; joins that would load another are refused.
    pub max_rooms: usize,
    /// Updates that would grow a document past this many bytes (encoded;
    /// approximately: stored size plus updates since) are refused.
    pub max_document_bytes: u64,
    /// The longest a busy room holds a frame for company (see
    /// [`FanoutWindow`]); zero sends each frame at once.
    pub fanout_window: Duration,
    /// What one connection, and the room's connections in all, may hold
    /// of awareness (see [`super::presence`]).
    pub presence: PresenceCaps,
}

impl Default for RoomConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(60),
            keep_snapshots: 20,
            inbox_capacity: 1024,
            shutdown_grace: Duration::from_secs(5),
            snapshot_interval: Duration::from_secs(30),
            snapshot_max_updates: 10_000,
            snapshot_max_bytes: 16 << 20,
            max_connections: 10_000,
            max_rooms: 100_000,
            max_document_bytes: 256 << 20,
            fanout_window: Duration::from_millis(5),
            presence: PresenceCaps::default(),
        }
    }
}

/// What connections and the API ask of a room.
pub enum RoomCommand {
    Join {
        peer: PeerId,
        access: Access,
        link: PeerLink,
        done: oneshot::Sender<Result<(), RoomUnavailable>>,
    },
    Frame {
        peer: PeerId,
        messages: Vec<ClientMessage>,
        /// When the connection read the frame, for the fan-out latency.
        received_at: Instant,
    },
    Leave {
        peer: PeerId,
    },
    Request {
        request: RoomRequest,
        done: oneshot::Sender<Result<RoomReply, RoomUnavailable>>,
    },
    /// From the cluster bus (`--redis-url`): another node's update,
    /// awareness or state vector, or the anti-entropy tick.
    Cluster(crate::cluster::Remote),
}

/// Why a room could not take a join or a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RoomUnavailable {
    /// The room was unloading as the command arrived; ask the registry again.
    #[error("room is unloading")]
    Unloading,
    #[error("room could not be loaded from storage")]
    LoadFailed,
    #[error("server is shutting down")]
    ShuttingDown,
    #[error("room is being deleted")]
    Deleting,
    #[error("room or server at capacity")]
    Full,
}

/// Most queued commands a room handles before it looks at its timers and
/// shutdown again.
const MAX_COMMANDS_PER_TURN: usize = 64;

/// How long an idle room waits for its updates to reach storage before it
/// gives up unloading for now (the database may be down: keep serving).
const UNLOAD_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// The room's place in the registry, which is all the room task knows of
/// it: the registry hands each task one (it spawns the tasks, so it knows
/// this module; this module does not know the registry). It acts on this
/// room's own generation only, never on a successor of the same name.
pub(super) trait Registration: Send + Sync + 'static {
    /// The room is being deleted: no join may load it meanwhile.
    fn mark_deleting(&self);
    /// Leaves the registry if `still_idle()` holds while the registry is
    /// locked (no new sender can be handed out meanwhile); returns whether
    /// the room is out of it.
    fn leave_if(&self, still_idle: &dyn Fn() -> bool) -> bool;
    /// Leaves the registry.
    fn leave(&self) {
        self.leave_if(&|| true);
    }
}

pub(super) struct RoomTask {
    pub name: RoomName,
    /// This lifetime of the room (event ids carry it).
    pub generation: u64,
    pub inbox: mpsc::Receiver<RoomCommand>,
    /// Shared with the registry's handle (see `RoomHandle`).
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    pub registration: Box<dyn Registration>,
    pub store: Arc<dyn Store>,
    pub journal: Journal,
    pub config: Arc<RoomConfig>,
    pub shutdown: CancellationToken,
    /// The room's link to the other nodes, in cluster mode.
    pub bus: Option<crate::cluster::RoomBus>,
}

/// A snapshot being written in the background.
struct Compaction {
    task: JoinHandle<Result<SnapshotInfo, StoreError>>,
    /// Unsaved updates the snapshot covers.
    updates: u64,
    bytes: u64,
}

struct Loaded {
    room: Room,
    links: HashMap<PeerId, PeerLink>,
    /// Latest snapshot the document is known to contain (see
    /// [`persist::write_snapshot`]).
    base: Option<SnapshotId>,
    /// Approximate encoded size of the document (for the metric): stored
    /// size at load or last snapshot, plus updates applied since.
    document_bytes: i64,
    /// Bytes of updates not yet in a snapshot.
    unsaved_bytes: u64,
    compaction: Option<Compaction>,
    /// Answered when the compaction in flight finishes.
    snapshot_waiters: Vec<SnapshotWaiter>,
    /// Asked for a snapshot while one was in flight: they get the next one,
    /// which includes everything up to their request.
    queued_snapshot_waiters: Vec<SnapshotWaiter>,
    /// The restored version the next snapshot records (a restore asked
    /// for it through `RoomRequest::Snapshot`).
    restored_from: Option<SnapshotId>,
    /// Feed for event subscribers; created on the first subscription.
    events: Option<broadcast::Sender<RoomEvent>>,
    /// Updates applied in this lifetime of the room (event ids).
    applied: u64,
    last_change: Option<SystemTime>,
    /// Frames for the peers, held while the room is busy.
    fanout: FanoutWindow,
    /// Frames for the other peers that are ready to go, sent when the
    /// room's turn ends: a peer gets everything one turn produced in one
    /// write, and under load a turn handles many commands.
    ready: Vec<Broadcast>,
}

type SnapshotWaiter = oneshot::Sender<Result<RoomReply, RoomUnavailable>>;

/// Events a slow subscriber may fall behind before it is told to refetch.
const EVENT_BUFFER: usize = 1024;

impl RoomTask {
    pub async fn run(mut self) {
        if let Some(bus) = self.bus.as_mut()
            && bus.joined().await == crate::cluster::Joined::Deleting
        {
            info!("room is being deleted through another node; refusing its connections");
            self.registration.leave();
            self.close_inbox(RoomUnavailable::Deleting);
            return;
        }
        let loaded = match persist::load(&self.store, &self.name).await {
            Ok(loaded) => loaded,
            Err(e) => {
                error!(error = %e, cause = ?std::error::Error::source(&e), "loading room failed; refusing its connections");
                self.close_inbox(RoomUnavailable::LoadFailed);
                return;
            }
        };
        debug!("room loaded");
        crate::metrics::room_loaded();
        let document_bytes = loaded.stored_bytes as i64;
        crate::metrics::document_bytes(document_bytes);
        let mut state = Loaded {
            room: Room::with_held(loaded.doc).with_presence_caps(self.config.presence),
            links: HashMap::new(),
            document_bytes,
            base: loaded.base,
            unsaved_bytes: 0,
            compaction: None,
            snapshot_waiters: Vec::new(),
            queued_snapshot_waiters: Vec::new(),
            restored_from: None,
            events: None,
            applied: 0,
            last_change: None,
            fanout: FanoutWindow::new(self.config.fanout_window),
            ready: Vec::new(),
        };
        self.serve(&mut state).await;
        if let Some(compaction) = state.compaction.take() {
            // Let a snapshot in flight finish (the journal holds its
            // updates either way).
            let _ = timeout(self.config.shutdown_grace, compaction.task).await;
        }
        crate::metrics::document_bytes(-state.document_bytes);
        crate::metrics::room_unloaded();
        if self.bus.is_some() {
            // What this node accepted reaches storage before the bus, as it
            // drops, withdraws the room's claim: a node deleting the room
            // waits for that, then deletes the rows.
            let _ = timeout(UNLOAD_FLUSH_TIMEOUT, self.journal.flushed()).await;
        }
    }

    async fn serve(&mut self, state: &mut Loaded) {
        let far_future = Instant::now() + Duration::from_secs(86400 * 365);
        let mut idle_since = Some(Instant::now());
        let mut shutdown_deadline: Option<Instant> = None;
        let interval = self.config.snapshot_interval;
        let mut snapshot_tick = interval_at(Instant::now() + interval, interval);
        snapshot_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // One timer for the room's life, moved only when its deadline does:
        // a fresh one per turn would be registered and removed again for
        // every command.
        let unload = sleep_until(far_future);
        tokio::pin!(unload);
        let fanout_due = sleep_until(far_future);
        tokio::pin!(fanout_due);
        loop {
            let unload_at = match (shutdown_deadline, idle_since) {
                (Some(_), _) if state.links.is_empty() => Instant::now(),
                (Some(deadline), _) => deadline,
                (None, Some(since)) => since + self.config.idle_timeout,
                (None, None) => far_future,
            };
            if unload.deadline() != unload_at {
                unload.as_mut().reset(unload_at);
            }
            let fanout_at = state.fanout.due();
            if let Some(due) = fanout_at
                && fanout_due.deadline() != due
            {
                fanout_due.as_mut().reset(due);
            }
            tokio::select! {
                command = self.inbox.recv() => {
                    let Some(command) = command else { return };
                    // Commands already queued are handled in this same
                    // turn: under load the room then wakes, and sets up
                    // this select's timers, once per batch, not once per
                    // keystroke.
                    let mut from_bus_only = true;
                    let mut turn = Turn::new(MAX_COMMANDS_PER_TURN);
                    let mut next = Some(command);
                    while let Some(command) = next.take() {
                        // Bus traffic alone does not keep an idle room loaded.
                        from_bus_only &= matches!(command, RoomCommand::Cluster(_));
                        self.handle(state, command, shutdown_deadline.is_some());
                        if self.inbox.is_closed() {
                            return; // poisoned or deleted
                        }
                        next = turn.next(&mut self.inbox);
                    }
                    self.connections
                        .store(state.links.len(), std::sync::atomic::Ordering::Relaxed);
                    idle_since = match idle_since {
                        Some(since) if from_bus_only && state.links.is_empty() => Some(since),
                        _ => state.links.is_empty().then(Instant::now),
                    };
                }
                () = self.shutdown.cancelled(), if shutdown_deadline.is_none() => {
                    shutdown_deadline = Some(Instant::now() + self.config.shutdown_grace);
                }
                () = &mut fanout_due, if fanout_at.is_some() => {
                    self.send_held_frames(state);
                }
                result = compaction_done(&mut state.compaction) => {
                    self.compacted(state, result);
                }
                _ = snapshot_tick.tick() => {
                    if state.room.unsaved_updates() > 0 {
                        self.start_routine_compaction(state);
                    }
                }
                () = &mut unload => {
                    if shutdown_deadline.is_some() {
                        self.stop_for_shutdown(state);
                        return;
                    }
                    if self.try_unload(state).await {
                        return;
                    }
                    // Event streams keep a room loaded while they last, but
                    // closing one sends the room nothing: without
                    // connections, look again one idle timeout later.
                    idle_since = state.links.is_empty().then(Instant::now);
                }
            }
            self.send_ready_frames(state);
        }
    }

    fn handle(&mut self, state: &mut Loaded, command: RoomCommand, shutting_down: bool) {
        match command {
            RoomCommand::Join {
                peer,
                access,
                link,
                done,
            } => {
                if shutting_down {
                    let _ = done.send(Err(RoomUnavailable::ShuttingDown));
                    return;
                }
                if state.links.len() >= self.config.max_connections {
                    let _ = done.send(Err(RoomUnavailable::Full));
                    return;
                }
                // Frames held for the others predate the newcomer, whose
                // greeting holds the whole document.
                self.send_held_frames(state);
                let greeting = state.room.join(peer, access);
                state.links.insert(peer, link);
                let _ = done.send(Ok(()));
                let effects = Effects {
                    to_sender: greeting,
                    ..Effects::default()
                };
                self.deliver(state, Some(peer), effects);
            }
            RoomCommand::Frame {
                peer,
                messages,
                received_at,
            } => self.on_frame(state, peer, messages, received_at),
            RoomCommand::Leave { peer } => {
                if state.links.remove(&peer).is_some() {
                    let effects = state.room.leave(peer);
                    self.publish_awareness(&effects);
                    self.deliver(state, None, effects);
                }
            }
            RoomCommand::Request { request, done } => self.on_request(state, request, done),
            RoomCommand::Cluster(remote) => self.on_cluster(state, remote),
        }
    }

    fn on_request(
        &mut self,
        state: &mut Loaded,
        request: RoomRequest,
        done: oneshot::Sender<Result<RoomReply, RoomUnavailable>>,
    ) {
        let reply = match request {
            RoomRequest::Info => RoomReply::Info(RoomInfo {
                connections: state.links.len(),
                document_bytes: state.room.encode_state().len(),
                state_vector: state.room.state_vector_v1(),
                unsaved_updates: state.room.unsaved_updates(),
                last_change: state.last_change,
                held_updates: state.room.held().len(),
                held_bytes: state.room.held().bytes(),
            }),
            RoomRequest::State(sv) => RoomReply::State(state.room.encode_diff(sv.as_ref())),
            RoomRequest::Json => RoomReply::Json(crate::doc_json::doc_to_json(state.room.doc())),
            RoomRequest::Apply(update) => self.apply_external(state, update),
            RoomRequest::Transform(transform) => match transform(state.room.doc()) {
                Ok(None) => RoomReply::Applied(Accepted {
                    new: false,
                    waiting: false,
                }),
                Ok(Some(encoded)) => match DocUpdate::decode(encoded) {
                    Ok(update) => self.apply_external(state, update),
                    Err(e) => {
                        error!(error = %e, "transform produced an update that does not decode");
                        RoomReply::Failed(format!("the computed update does not decode: {e}"))
                    }
                },
                Err(e) => {
                    warn!(error = %e, "transform failed; nothing changed");
                    RoomReply::Failed(e)
                }
            },
            RoomRequest::Snapshot { restored_from } => {
                // Recorded by the next snapshot started (this one's, or the
                // one queued behind a compaction in flight).
                state.restored_from = state.restored_from.or(restored_from);
                if state.compaction.is_none() {
                    self.start_compaction(state);
                    state.snapshot_waiters.push(done);
                } else {
                    state.queued_snapshot_waiters.push(done);
                }
                return;
            }
            RoomRequest::Subscribe => {
                let sender = state
                    .events
                    .get_or_insert_with(|| broadcast::channel(EVENT_BUFFER).0);
                RoomReply::Events(Subscription {
                    events: sender.subscribe(),
                    last_id: self.event_id(state.applied),
                })
            }
            RoomRequest::Delete => {
                for (_, link) in state.links.drain() {
                    link.close(close::ROOM_DELETED);
                }
                if let Some(compaction) = state.compaction.take() {
                    compaction.task.abort();
                }
                self.registration.mark_deleting();
                self.close_inbox(RoomUnavailable::Deleting);
                info!("room closed for deletion");
                RoomReply::Deleted
            }
        };
        let _ = done.send(Ok(reply));
    }

    /// Applies an update that came from outside (API, import, restore):
    /// every peer receives it. Returns whether it was applied.
    fn apply_external(&mut self, state: &mut Loaded, update: DocUpdate) -> RoomReply {
        match state.room.apply_external(update) {
            Ok(effects) => {
                let accepted = Accepted {
                    new: !effects.applied.is_empty(),
                    waiting: effects.incomplete > 0,
                };
                self.accepted(state, &effects.applied);
                self.deliver(state, None, effects);
                RoomReply::Applied(accepted)
            }
            Err(RoomError::Apply(e)) => {
                warn!(error = %e, "external update failed to apply");
                RoomReply::Failed(format!("the update does not apply: {e}"))
            }
            Err(RoomError::Poisoned) => {
                self.poisoned(state);
                RoomReply::Failed("the update broke the document; the room reloads".into())
            }
        }
    }

    /// Bookkeeping for updates the room applied: journal, events,
    /// compaction threshold.
    fn accepted(&self, state: &mut Loaded, applied: &[Bytes]) {
        if let Some(bus) = &self.bus {
            bus.publish_updates(applied);
        }
        self.accepted_from(state, applied, true);
    }

    /// [`Self::accepted`]; updates from another node (`local` false) are
    /// neither journaled (their node does that) nor published again.
    fn accepted_from(&self, state: &mut Loaded, applied: &[Bytes], local: bool) {
        if applied.is_empty() {
            return;
        }
        let added: usize = applied.iter().map(Bytes::len).sum();
        state.document_bytes += added as i64;
        crate::metrics::document_bytes(added as i64);
        for update in applied {
            state.unsaved_bytes += update.len() as u64;
            state.applied += 1;
            if local {
                self.journal.append(&self.name, update.clone());
            }
            if let Some(events) = &state.events {
                let _ = events.send(RoomEvent {
                    id: self.event_id(state.applied),
                    update: update.clone(),
                });
            }
        }
        if state
            .events
            .as_ref()
            .is_some_and(|e| e.receiver_count() == 0)
        {
            state.events = None;
        }
        state.last_change = Some(SystemTime::now());
        if self.log_is_long(state) {
            self.start_routine_compaction(state);
        }
    }

    fn event_id(&self, sequence: u64) -> String {
        format!("{}-{}", self.generation, sequence)
    }

    fn on_frame(
        &mut self,
        state: &mut Loaded,
        peer: PeerId,
        mut messages: Vec<ClientMessage>,
        received_at: Instant,
    ) {
        if !state.links.contains_key(&peer) {
            return; // evicted while its frame was queued
        }
        // The messages up to the first update storage or the size cap
        // cannot take are handled, as they would have been one by one.
        let refusal = self.admit_updates(state, peer, &mut messages);
        if !messages.is_empty() {
            self.receive(state, peer, messages, received_at);
        }
        if let Some(reason) = refusal {
            self.evict(state, peer, reason);
        }
    }

    /// Cuts `messages` before the first update the journal's backlog or
    /// `--max-doc-size` refuses, and returns the reason to close the peer.
    fn admit_updates(
        &self,
        state: &Loaded,
        peer: PeerId,
        messages: &mut Vec<ClientMessage>,
    ) -> Option<CloseReason> {
        let max_document = i64::try_from(self.config.max_document_bytes).unwrap_or(i64::MAX);
        let mut incoming = 0usize;
        for (index, message) in messages.iter().enumerate() {
            let ClientMessage::DocUpdate(update) = message else {
                continue;
            };
            let size = update.encoded.len();
            if let Err(backlog) = self.journal.check_capacity(incoming + size) {
                warn!(
                    peer,
                    pending = backlog.pending,
                    "storage backlog full; refusing the update and closing the connection"
                );
                messages.truncate(index);
                return Some(close::STORAGE_BACKLOG);
            }
            if state
                .document_bytes
                .saturating_add((incoming + size) as i64)
                > max_document
            {
                warn!(
                    peer,
                    document_bytes = state.document_bytes,
                    incoming = size,
                    "update would grow the document past --max-doc-size; refused"
                );
                messages.truncate(index);
                return Some(close::DOCUMENT_TOO_LARGE);
            }
            incoming += size;
        }
        None
    }

    fn receive(
        &mut self,
        state: &mut Loaded,
        peer: PeerId,
        messages: Vec<ClientMessage>,
        received_at: Instant,
    ) {
        let (effects, error) = match state.room.receive(peer, messages) {
            Ok(effects) => (effects, None),
            Err(Rejected {
                error: RoomError::Poisoned,
                ..
            }) => {
                // Storage has everything up to here; the peer resyncs
                // whatever of its own did not get there.
                self.poisoned(state);
                return;
            }
            Err(Rejected {
                error: RoomError::Apply(e),
                effects,
            }) => (*effects, Some(e)),
        };
        if let Some(ignored) = &effects.awareness_ignored {
            warn!(
                peer,
                not_owner = ignored.not_owner,
                client_cap = ignored.client_cap,
                room_bytes = ignored.room_bytes,
                "awareness entries ignored: another connection's client id, or past --max-awareness-clients / --max-awareness-room-bytes (logged once per connection; counted in crdt_hub_awareness_ignored_total)"
            );
        }
        if effects.refused_read_only > 0 {
            debug!(
                peer,
                refused = effects.refused_read_only,
                "dropped updates from read-only peer"
            );
        }
        let fanned_out = !effects.to_others.is_empty();
        self.accepted(state, &effects.applied);
        self.publish_awareness(&effects);
        self.deliver(state, Some(peer), effects);
        if fanned_out {
            crate::metrics::fanout_latency(received_at.elapsed());
        }
        if let Some(e) = error {
            warn!(peer, error = %e, "update failed to apply; closing connection");
            self.evict(state, peer, close::BAD_UPDATE);
        }
    }

    fn log_is_long(&self, state: &Loaded) -> bool {
        let in_flight = state.compaction.as_ref();
        let updates = state.room.unsaved_updates() - in_flight.map_or(0, |c| c.updates);
        let bytes = state.unsaved_bytes - in_flight.map_or(0, |c| c.bytes);
        updates >= self.config.snapshot_max_updates || bytes >= self.config.snapshot_max_bytes
    }

    /// Sends the frames of `effects` (those for the other peers through
    /// the fan-out window); peers whose queue is full are closed as slow
    /// consumers (and their awareness removal sent in turn).
    fn deliver(&self, state: &mut Loaded, sender: Option<PeerId>, effects: Effects) {
        let now = Instant::now();
        let mut out = Outgoing::default();
        if let Some(sender) = sender
            && !effects.to_sender.is_empty()
            && state.links.contains_key(&sender)
        {
            // Nothing ready or held for the others may be overtaken by
            // this peer's answer.
            state.ready.extend(state.fanout.take(now));
            send_to_others(&state.links, &state.ready, &mut out);
            state.ready.clear();
            let link = &state.links[&sender];
            for frame in effects.to_sender {
                if let Err(full) = out.send(link, &frame) {
                    out.slow.push((sender, full));
                    break;
                }
            }
        }
        let ready = state.fanout.offer(now, sender, effects.to_others);
        state.ready.extend(ready);
        out.written.record();
        self.evict_slow(state, out.slow);
    }

    /// Sends what is ready and what the fan-out window held.
    fn send_held_frames(&self, state: &mut Loaded) {
        state.ready.extend(state.fanout.take(Instant::now()));
        self.send_ready_frames(state);
    }

    /// Sends the frames this turn made ready for the other peers.
    fn send_ready_frames(&self, state: &mut Loaded) {
        // Evicting a slow peer makes frames of its own (its awareness
        // removal), sent in the next round.
        while !state.ready.is_empty() {
            let mut out = Outgoing::default();
            send_to_others(&state.links, &state.ready, &mut out);
            state.ready.clear();
            out.written.record();
            self.evict_slow(state, out.slow);
        }
        if state.ready.capacity() > KEPT_READY_CAPACITY {
            state.ready = Vec::new();
        }
    }

    fn evict_slow(&self, state: &mut Loaded, slow: Vec<(PeerId, QueueFull)>) {
        for (peer, full) in slow {
            warn!(
                peer,
                queued_frames = full.frames,
                queued_bytes = full.bytes,
                "peer too slow: outbound queue full (--max-queued-frames / --max-queued-bytes); closing it so it resyncs"
            );
            self.evict(state, peer, close::SLOW_CONSUMER);
        }
    }

    fn evict(&self, state: &mut Loaded, peer: PeerId, reason: CloseReason) {
        if let Some(link) = state.links.remove(&peer) {
            link.close(reason);
            let effects = state.room.leave(peer);
            self.publish_awareness(&effects);
            self.deliver(state, None, effects);
        }
    }

    /// yrs panicked mid-update: the document can't be trusted, so no
    /// snapshot of it may be written. Every peer is closed (they hold their
    /// edits and push them back on reconnect) and the next join reloads
    /// from storage, where the journal has put every update accepted so far.
    fn poisoned(&mut self, state: &mut Loaded) {
        error!("room state poisoned by a panic in yrs; closing all peers and reloading");
        for (_, link) in state.links.drain() {
            link.close(close::ROOM_FAILED);
        }
        if let Some(compaction) = state.compaction.take() {
            compaction.task.abort();
        }
        state.room = Room::new(super::core::server_doc());
        for waiter in state
            .snapshot_waiters
            .drain(..)
            .chain(state.queued_snapshot_waiters.drain(..))
        {
            let _ = waiter.send(Err(RoomUnavailable::Unloading));
        }
        self.close_inbox(RoomUnavailable::Unloading);
    }

    /// A compaction of the room's own accord (timer, long log): in cluster
    /// mode only on the node holding the room's lease. Requested snapshots
    /// and the one at unload always run (concurrent compactions are safe).
    fn start_routine_compaction(&self, state: &mut Loaded) {
        if self.bus.as_ref().is_none_or(|bus| bus.may_compact()) {
            self.start_compaction(state);
        }
    }

    /// Publishes the awareness changes of this node's own peers.
    fn publish_awareness(&self, effects: &Effects) {
        if let Some(bus) = &self.bus {
            bus.publish_awareness(effects);
        }
    }

    /// Something from the cluster bus: another node's update is applied and
    /// sent to every local peer, but not journaled nor published again.
    fn on_cluster(&mut self, state: &mut Loaded, remote: crate::cluster::Remote) {
        let Some(bus) = self.bus.as_mut() else {
            return;
        };
        let outcome = bus.handle(&mut state.room, remote);
        if outcome.deleted {
            self.deleted_elsewhere(state);
            return;
        }
        if !outcome.to_peers.is_empty() {
            let effects = Effects {
                to_others: outcome.to_peers,
                ..Effects::default()
            };
            self.deliver(state, None, effects);
        }
        let Some(update) = outcome.update else {
            return;
        };
        match state.room.apply_external(update) {
            Ok(effects) => {
                self.accepted_from(state, &effects.applied, false);
                self.deliver(state, None, effects);
            }
            Err(RoomError::Apply(e)) => {
                warn!(error = %e, "update from another node failed to apply; ignored");
            }
            Err(RoomError::Poisoned) => self.poisoned(state),
        }
    }

    /// Another node deleted the room: every peer is closed as by a local
    /// delete and the room unloads without saving (a snapshot would bring
    /// the room back); `run` flushes the journal before the bus lets go.
    fn deleted_elsewhere(&mut self, state: &mut Loaded) {
        info!("room deleted through another node; closing it without saving");
        for (_, link) in state.links.drain() {
            link.close(close::ROOM_DELETED);
        }
        if let Some(compaction) = &state.compaction {
            compaction.task.abort();
        }
        for waiter in state
            .snapshot_waiters
            .drain(..)
            .chain(state.queued_snapshot_waiters.drain(..))
        {
            let _ = waiter.send(Err(RoomUnavailable::Unloading));
        }
        self.close_inbox(RoomUnavailable::Unloading);
    }

    /// Encodes the document and writes it as a snapshot in the background.
    fn start_compaction(&self, state: &mut Loaded) {
        if state.compaction.is_some() {
            return;
        }
        let encoded = state.room.encode_state();
        let store = self.store.clone();
        let name = self.name.clone();
        let base = state.base;
        let keep = self.config.keep_snapshots;
        let restored_from = state.restored_from.take();
        let task = tokio::spawn(async move {
            persist::write_snapshot(&store, &name, &encoded, base, keep, restored_from).await
        });
        state.compaction = Some(Compaction {
            task,
            updates: state.room.unsaved_updates(),
            bytes: state.unsaved_bytes,
        });
    }

    fn compacted(
        &self,
        state: &mut Loaded,
        result: Result<Result<SnapshotInfo, StoreError>, tokio::task::JoinError>,
    ) {
        let Some(compaction) = state.compaction.take() else {
            return;
        };
        let outcome = match result {
            Ok(Ok(info)) => {
                state.room.mark_saved(compaction.updates);
                state.unsaved_bytes = state.unsaved_bytes.saturating_sub(compaction.bytes);
                // Our own snapshot may contain another writer's content
                // that this document lacks: merge it again next time.
                state.base = None;
                crate::metrics::snapshot_written();
                crate::metrics::document_bytes(info.size - state.document_bytes);
                state.document_bytes = info.size;
                debug!(
                    snapshot = info.id,
                    bytes = info.size,
                    updates = compaction.updates,
                    "snapshot written"
                );
                Ok(info)
            }
            Ok(Err(e)) => {
                warn!(error = %e, cause = ?std::error::Error::source(&e), "writing snapshot failed; the update log still holds everything; retrying later");
                Err(e.to_string())
            }
            Err(e) => {
                error!(error = %e, "snapshot task failed");
                Err(e.to_string())
            }
        };
        for waiter in state.snapshot_waiters.drain(..) {
            let _ = waiter.send(Ok(RoomReply::Snapshot(outcome.clone())));
        }
        if !state.queued_snapshot_waiters.is_empty() {
            self.start_compaction(state);
            state.snapshot_waiters = std::mem::take(&mut state.queued_snapshot_waiters);
        }
    }

    /// Idle: makes sure storage has everything, compacts, and, when
    /// nothing arrived meanwhile, removes the room from the registry.
    /// Returns whether the task is done.
    async fn try_unload(&mut self, state: &mut Loaded) -> bool {
        if timeout(UNLOAD_FLUSH_TIMEOUT, self.journal.flushed())
            .await
            .is_err()
        {
            debug!("storage is not keeping up; staying loaded for now");
            return false;
        }
        if state.room.unsaved_updates() > 0 {
            self.start_compaction(state);
        }
        if state.compaction.is_some() {
            let result = compaction_done(&mut state.compaction).await;
            self.compacted(state, result);
        }
        if !is_idle(state) {
            return false;
        }
        let inbox = &self.inbox;
        if !self.registration.leave_if(&|| inbox.is_empty()) {
            return false;
        }
        self.close_inbox(RoomUnavailable::Unloading);
        debug!("room unloaded");
        true
    }

    /// Shutdown: every accepted update is already in the journal, which the
    /// server drains after the rooms stop; peers still here are told to go.
    fn stop_for_shutdown(&mut self, state: &mut Loaded) {
        for (_, link) in state.links.drain() {
            link.close(close::SHUTTING_DOWN);
        }
        self.close_inbox(RoomUnavailable::ShuttingDown);
    }

    /// Stops taking commands and answers those already queued.
    fn close_inbox(&mut self, refusal: RoomUnavailable) {
        self.inbox.close();
        if refusal != RoomUnavailable::Deleting {
            self.registration.leave();
        }
        while let Ok(command) = self.inbox.try_recv() {
            match command {
                RoomCommand::Join { done, .. } => {
                    let _ = done.send(Err(refusal));
                }
                RoomCommand::Request { done, .. } => {
                    let _ = done.send(Err(refusal));
                }
                RoomCommand::Frame { .. } | RoomCommand::Leave { .. } | RoomCommand::Cluster(_) => {
                }
            }
        }
    }
}

/// Frames kept room for between turns; more is given back.
const KEPT_READY_CAPACITY: usize = 16;

/// Sends each peer the frames the others made, all of them in one call
/// (one write when its socket takes them).
fn send_to_others(links: &HashMap<PeerId, PeerLink>, frames: &[Broadcast], out: &mut Outgoing) {
    if let [(from, frame)] = frames {
        for (&peer, link) in links {
            if *from != Some(peer)
                && let Err(full) = out.send(link, frame)
            {
                out.slow.push((peer, full));
            }
        }
        return;
    }
    let mut batch = Vec::with_capacity(frames.len());
    for (&peer, link) in links {
        batch.clear();
        batch.extend(
            frames
                .iter()
                .filter(|(from, _)| *from != Some(peer))
                .map(|(_, frame)| frame),
        );
        if !batch.is_empty()
            && let Err(full) = out.send_all(link, &batch)
        {
            out.slow.push((peer, full));
        }
    }
}

/// What one delivery round did: peers found too slow, and the frames the
/// room wrote to sockets itself (the connections count the ones they
/// write).
#[derive(Default)]
struct Outgoing {
    slow: Vec<(PeerId, QueueFull)>,
    written: crate::metrics::SentFrames,
}

impl Outgoing {
    /// Sends `frame` to `link`; refused when the peer's queue is full.
    fn send(&mut self, link: &PeerLink, frame: &Bytes) -> Result<(), QueueFull> {
        self.send_all(link, &[frame])
    }

    /// Sends `frames` to `link`; refused when the peer's queue is full.
    fn send_all(&mut self, link: &PeerLink, frames: &[&Bytes]) -> Result<(), QueueFull> {
        let direct = link.send_all(frames)?;
        for frame in &frames[..direct] {
            self.written.add(frame);
        }
        Ok(())
    }
}

/// The commands a room handles in one turn: the one it woke for, then
/// those already queued, at most `max` in all. A command is taken off the
/// queue only when it is to be handled: one taken and left over would be
/// lost (an early version lost one frame per full turn, and every update
/// after it then waited for it forever).
struct Turn {
    left: usize,
}

impl Turn {
    fn new(max: usize) -> Self {
        // The first command is already taken.
        Self {
            left: max.saturating_sub(1),
        }
    }

    fn next<T>(&mut self, inbox: &mut mpsc::Receiver<T>) -> Option<T> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        inbox.try_recv().ok()
    }
}

/// No connection and no event subscriber: the room may unload.
fn is_idle(state: &Loaded) -> bool {
    state.links.is_empty()
        && state
            .events
            .as_ref()
            .is_none_or(|events| events.receiver_count() == 0)
}

/// Resolves when the compaction in flight (if any) finishes; never, if none.
async fn compaction_done(
    compaction: &mut Option<Compaction>,
) -> Result<Result<SnapshotInfo, StoreError>, tokio::task::JoinError> {
    match compaction {
        Some(compaction) => (&mut compaction.task).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives a turn the way the room does; returns what it handled.
    fn run_turn(first: u32, inbox: &mut mpsc::Receiver<u32>, max: usize) -> Vec<u32> {
        let mut turn = Turn::new(max);
        let mut handled = Vec::new();
        let mut next = Some(first);
        while let Some(command) = next.take() {
            handled.push(command);
            next = turn.next(inbox);
        }
        handled
    }

    #[tokio::test]
    async fn a_turn_handles_at_most_max_commands_and_leaves_the_rest_queued() {
        let (tx, mut rx) = mpsc::channel(256);
        for n in 1..200 {
            tx.send(n).await.unwrap();
        }
        assert_eq!(run_turn(0, &mut rx, 64), (0..64).collect::<Vec<_>>());
        // Nothing was taken and dropped: the next turn starts at 64.
        let first = rx.try_recv().unwrap();
        assert_eq!(first, 64);
        assert_eq!(run_turn(first, &mut rx, 64), (64..128).collect::<Vec<_>>());
        assert_eq!(rx.try_recv().unwrap(), 128);
    }

    #[tokio::test]
    async fn a_turn_ends_when_the_queue_is_empty() {
        let (tx, mut rx) = mpsc::channel(8);
        tx.send(1).await.unwrap();
        assert_eq!(run_turn(0, &mut rx, 64), [0, 1]);
        assert_eq!(run_turn(7, &mut rx, 1), [7]);
    }
}
