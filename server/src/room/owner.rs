//! The task that owns one room: the only place its document changes.
//! Connections talk to it over a bounded channel; it never waits on a
//! connection (frames go out with `try_send`) nor on the database (updates
//! go to the journal, snapshots are written by a separate task), so neither
//! a slow client nor a slow database can stall the room.

//!
//! Its jobs, one file each: [`intake`] (what peers and other nodes send),
//! [`delivery`] (frames out, slow consumers closed), [`requests`] (the API
//! and tools), [`compaction`] (snapshots in the background); this file
//! holds the loop that interleaves them and the room's life: load, idle
//! unload, deletion, shutdown.

mod bus_only;
mod compaction;
mod delivery;
mod intake;
mod requests;
mod stateless;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crdt_store::{RoomName, SnapshotId, Store};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use self::compaction::{Compaction, compaction_done};
use super::config::RoomConfig;
use super::core::{Access, Effects, PeerId, Room};
use super::fanout::{Broadcast, FanoutWindow};
use super::peer::PeerLink;
use super::presence_window::PresenceWindow;
use super::request::{RoomEvent, RoomReply, RoomRequest};
use crate::close;
use crate::persist::{self, Journal};
use crate::protocol::ClientMessage;

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
        /// Answered `true` once the frame's updates are in storage, `false`
        /// if the room refused them (a Hocuspocus provider's sync status).
        stored: Option<oneshot::Sender<bool>>,
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
    /// A Hocuspocus provider's stateless message, for the room's event
    /// feed and webhooks.
    Stateless {
        peer: PeerId,
        payload: String,
    },
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
    /// Where the room reports events, with `--webhook-url`.
    pub webhooks: Option<crate::webhooks::Webhooks>,
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
    /// When the awareness changes the room holds go out.
    presence: PresenceWindow,
    /// Updates from other nodes this node has not stored, journaled before
    /// it acknowledges an edit (see [`bus_only`]).
    bus_only: bus_only::BusOnly,
    /// Another node deleted the room: it waits longer for the journal
    /// before the claim goes (see `run`).
    deleted_elsewhere: bool,
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
        if let Some(hooks) = &self.webhooks {
            hooks.room_loaded(&self.name);
        }
        let document_bytes = loaded.stored_bytes as i64;
        crate::metrics::document_bytes(document_bytes);
        let presence = PresenceWindow::new(self.config.awareness_window);
        let mut room = Room::with_held(loaded.doc).with_presence_caps(self.config.presence);
        if presence.holds() {
            room = room.hold_awareness();
        }
        let mut state = Loaded {
            room,
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
            presence,
            bus_only: bus_only::BusOnly::default(),
            deleted_elsewhere: false,
        };
        self.serve(&mut state).await;
        if let Some(compaction) = state.compaction.take() {
            // Let a snapshot in flight finish (the journal holds its
            // updates either way).
            compaction.settle(self.config.shutdown_grace).await;
        }
        crate::metrics::document_bytes(-state.document_bytes);
        crate::metrics::room_unloaded();
        if let Some(bus) = &self.bus {
            // What this node accepted reaches storage before the bus, as it
            // drops, withdraws the room's claim: a node deleting the room
            // waits for that, then deletes the rows. After a delete, as long
            // as that node waits: letting go sooner with writes pending
            // would let them land after the rows are gone.
            let patience = if state.deleted_elsewhere {
                bus.flush_patience_after_delete().max(UNLOAD_FLUSH_TIMEOUT)
            } else {
                UNLOAD_FLUSH_TIMEOUT
            };
            if timeout(patience, self.journal.flushed()).await.is_err() && state.deleted_elsewhere {
                warn!(
                    "storage did not take this room's writes in time; the deleting node deletes nothing"
                );
            }
        }
        if let Some(hooks) = &self.webhooks {
            hooks.room_unloaded(&self.name);
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
        let presence_due = sleep_until(far_future);
        tokio::pin!(presence_due);
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
            let presence_at = state.presence.due();
            if let Some(due) = presence_at
                && presence_due.deadline() != due
            {
                presence_due.as_mut().reset(due);
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
                () = &mut presence_due, if presence_at.is_some() => {
                    self.send_awareness(state, Instant::now());
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
                // Frames and awareness held for the others predate the
                // newcomer, whose greeting holds the whole document and
                // every current state.
                if state.presence.due().is_some() {
                    self.send_awareness(state, Instant::now());
                }
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
                stored,
            } => self.on_frame(state, peer, messages, received_at, stored),
            RoomCommand::Leave { peer } => {
                if state.links.remove(&peer).is_some() {
                    let effects = state.room.leave(peer);
                    self.publish_awareness(&effects);
                    self.deliver(state, None, effects);
                }
            }
            RoomCommand::Request { request, done } => self.on_request(state, request, done),
            RoomCommand::Cluster(remote) => self.on_cluster(state, remote),
            RoomCommand::Stateless { peer, payload } => {
                self.on_stateless(state, peer, payload);
            }
        }
    }

    /// yrs panicked mid-update: the document can't be trusted, so no
    /// snapshot of it may be written. Every peer is closed (they hold their
    /// edits and push them back on reconnect) and the next join reloads
    /// from storage, where the journal has put every update accepted so far.
    fn poisoned(&mut self, state: &mut Loaded) {
        error!("room state poisoned by a panic in yrs; closing all peers and reloading");
        state.room = Room::new(super::core::server_doc());
        self.close_unsaved(state, close::ROOM_FAILED);
    }

    /// Another node deleted the room: every peer is closed as by a local
    /// delete and the room unloads without saving (a snapshot would bring
    /// the room back); `run` flushes the journal before the bus lets go.
    fn deleted_elsewhere(&mut self, state: &mut Loaded) {
        info!("room deleted through another node; closing it without saving");
        state.deleted_elsewhere = true;
        self.close_unsaved(state, close::ROOM_DELETED);
    }

    /// Closes every peer with `reason` and stops without a snapshot: none
    /// in flight may land, and those asked for are refused.
    fn close_unsaved(&mut self, state: &mut Loaded, reason: close::CloseReason) {
        for (_, link) in state.links.drain() {
            link.close(reason);
        }
        if let Some(compaction) = state.compaction.take() {
            compaction.abort();
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
                RoomCommand::Frame { .. }
                | RoomCommand::Leave { .. }
                | RoomCommand::Cluster(_)
                | RoomCommand::Stateless { .. } => {}
            }
        }
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
