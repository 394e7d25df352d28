//! The task that owns one room: the only place its document changes.
//! Connections talk to it over a bounded channel; it never waits on a
//! connection (frames go out with `try_send`) nor on the database (updates
//! go to the journal, snapshots are written by a separate task), so neither
//! a slow client nor a slow database can stall the room.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crdt_store::{RoomName, SnapshotId, SnapshotInfo, Store, StoreError};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::core::{Access, Effects, PeerId, Room, RoomError};
use super::peer::PeerLink;
use super::registry::Rooms;
use crate::close::{self, CloseReason};
use crate::persist::{self, Journal};
use crate::protocol::ClientMessage;

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
        }
    }
}

/// What a connection asks of its room.
#[derive(Debug)]
pub enum RoomCommand {
    Join {
        peer: PeerId,
        access: Access,
        link: PeerLink,
        done: oneshot::Sender<Result<(), JoinRefused>>,
    },
    Frame {
        peer: PeerId,
        messages: Vec<ClientMessage>,
    },
    Leave {
        peer: PeerId,
    },
}

/// Why a join did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JoinRefused {
    /// The room was unloading as the join arrived; ask the registry again.
    #[error("room is unloading")]
    Unloading,
    #[error("room could not be loaded from storage")]
    LoadFailed,
    #[error("server is shutting down")]
    ShuttingDown,
}

/// How long an idle room waits for its updates to reach storage before it
/// gives up unloading for now (the database may be down: keep serving).
const UNLOAD_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) struct RoomTask {
    pub name: RoomName,
    /// Registry generation of this room, so that it only ever removes
    /// itself and never a successor of the same name.
    pub generation: u64,
    pub inbox: mpsc::Receiver<RoomCommand>,
    pub rooms: Rooms,
    pub store: Arc<dyn Store>,
    pub journal: Journal,
    pub config: Arc<RoomConfig>,
    pub shutdown: CancellationToken,
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
    /// Bytes of updates not yet in a snapshot.
    unsaved_bytes: u64,
    compaction: Option<Compaction>,
}

impl RoomTask {
    pub async fn run(mut self) {
        let (doc, base) = match persist::load(&self.store, &self.name).await {
            Ok(loaded) => loaded,
            Err(e) => {
                error!(error = %e, cause = ?std::error::Error::source(&e), "loading room failed; refusing its connections");
                self.close_inbox(JoinRefused::LoadFailed);
                return;
            }
        };
        debug!("room loaded");
        let mut state = Loaded {
            room: Room::new(doc),
            links: HashMap::new(),
            base,
            unsaved_bytes: 0,
            compaction: None,
        };
        self.serve(&mut state).await;
        if let Some(compaction) = state.compaction.take() {
            // Let a snapshot in flight finish (the journal holds its
            // updates either way).
            let _ = timeout(self.config.shutdown_grace, compaction.task).await;
        }
    }

    async fn serve(&mut self, state: &mut Loaded) {
        let far_future = Instant::now() + Duration::from_secs(86400 * 365);
        let mut idle_since = Some(Instant::now());
        let mut shutdown_deadline: Option<Instant> = None;
        let interval = self.config.snapshot_interval;
        let mut snapshot_tick = interval_at(Instant::now() + interval, interval);
        snapshot_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let unload_at = match (shutdown_deadline, idle_since) {
                (Some(_), _) if state.links.is_empty() => Instant::now(),
                (Some(deadline), _) => deadline,
                (None, Some(since)) => since + self.config.idle_timeout,
                (None, None) => far_future,
            };
            tokio::select! {
                command = self.inbox.recv() => {
                    let Some(command) = command else { return };
                    self.handle(state, command, shutdown_deadline.is_some());
                    if self.inbox.is_closed() {
                        return; // poisoned
                    }
                    idle_since = state.links.is_empty().then(Instant::now);
                }
                () = self.shutdown.cancelled(), if shutdown_deadline.is_none() => {
                    shutdown_deadline = Some(Instant::now() + self.config.shutdown_grace);
                }
                result = compaction_done(&mut state.compaction) => {
                    self.compacted(state, result);
                }
                _ = snapshot_tick.tick() => {
                    if state.room.unsaved_updates() > 0 {
                        self.start_compaction(state);
                    }
                }
                () = sleep_until(unload_at) => {
                    if shutdown_deadline.is_some() {
                        self.stop_for_shutdown(state);
                        return;
                    }
                    if self.try_unload(state).await {
                        return;
                    }
                    idle_since = state.links.is_empty().then(Instant::now);
                }
            }
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
                    let _ = done.send(Err(JoinRefused::ShuttingDown));
                    return;
                }
                let greeting = state.room.join(peer, access);
                state.links.insert(peer, link);
                let _ = done.send(Ok(()));
                let effects = Effects {
                    to_sender: greeting,
                    ..Effects::default()
                };
                self.deliver(state, Some(peer), effects);
            }
            RoomCommand::Frame { peer, messages } => self.on_frame(state, peer, messages),
            RoomCommand::Leave { peer } => {
                if state.links.remove(&peer).is_some() {
                    let effects = state.room.leave(peer);
                    self.deliver(state, None, effects);
                }
            }
        }
    }

    fn on_frame(&mut self, state: &mut Loaded, peer: PeerId, messages: Vec<ClientMessage>) {
        if !state.links.contains_key(&peer) {
            return; // evicted while its frame was queued
        }
        let incoming: usize = messages
            .iter()
            .map(|m| match m {
                ClientMessage::DocUpdate(u) => u.encoded.len(),
                _ => 0,
            })
            .sum();
        if incoming > 0
            && let Err(backlog) = self.journal.check_capacity(incoming)
        {
            warn!(
                peer,
                pending = backlog.pending,
                "storage backlog full; refusing the update and closing the connection"
            );
            self.evict(state, peer, close::STORAGE_BACKLOG);
            return;
        }
        match state.room.receive(peer, messages) {
            Ok(effects) => {
                if effects.refused_read_only > 0 {
                    debug!(
                        peer,
                        refused = effects.refused_read_only,
                        "dropped updates from read-only peer"
                    );
                }
                for update in &effects.applied {
                    state.unsaved_bytes += update.len() as u64;
                    self.journal.append(&self.name, update.clone());
                }
                let changed = !effects.applied.is_empty();
                self.deliver(state, Some(peer), effects);
                if changed && self.log_is_long(state) {
                    self.start_compaction(state);
                }
            }
            Err(RoomError::Apply(e)) => {
                warn!(peer, error = %e, "update failed to apply; closing connection");
                self.evict(state, peer, close::BAD_UPDATE);
            }
            Err(RoomError::Poisoned) => self.poisoned(state),
        }
    }

    fn log_is_long(&self, state: &Loaded) -> bool {
        let in_flight = state.compaction.as_ref();
        let updates = state.room.unsaved_updates() - in_flight.map_or(0, |c| c.updates);
        let bytes = state.unsaved_bytes - in_flight.map_or(0, |c| c.bytes);
        updates >= self.config.snapshot_max_updates || bytes >= self.config.snapshot_max_bytes
    }

    /// Sends the frames of `effects`; peers whose outbox is full are closed
    /// as slow consumers (and their awareness removal sent in turn).
    fn deliver(&self, state: &mut Loaded, sender: Option<PeerId>, effects: Effects) {
        let mut slow = Vec::new();
        if let Some(sender) = sender
            && let Some(link) = state.links.get(&sender)
        {
            for frame in effects.to_sender {
                if link.outbox.try_send(frame).is_err() {
                    slow.push(sender);
                    break;
                }
            }
        }
        if !effects.to_others.is_empty() {
            for (&peer, link) in &state.links {
                if Some(peer) == sender {
                    continue;
                }
                for frame in &effects.to_others {
                    if let Err(mpsc::error::TrySendError::Full(_)) =
                        link.outbox.try_send(frame.clone())
                    {
                        slow.push(peer);
                        break;
                    }
                }
            }
        }
        for peer in slow {
            warn!(
                peer,
                "peer too slow: outbound queue full; closing it so it resyncs"
            );
            self.evict(state, peer, close::SLOW_CONSUMER);
        }
    }

    fn evict(&self, state: &mut Loaded, peer: PeerId, reason: CloseReason) {
        if let Some(link) = state.links.remove(&peer) {
            link.closer.close(reason);
            let effects = state.room.leave(peer);
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
            link.closer.close(close::ROOM_FAILED);
        }
        if let Some(compaction) = state.compaction.take() {
            compaction.task.abort();
        }
        state.room = Room::new(yrs::Doc::new());
        self.close_inbox(JoinRefused::Unloading);
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
        let task = tokio::spawn(async move {
            persist::write_snapshot(&store, &name, &encoded, base, keep).await
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
        match result {
            Ok(Ok(info)) => {
                state.room.mark_saved(compaction.updates);
                state.unsaved_bytes = state.unsaved_bytes.saturating_sub(compaction.bytes);
                // Our own snapshot may contain another writer's content
                // that this document lacks: merge it again next time.
                state.base = None;
                info!(
                    snapshot = info.id,
                    bytes = info.size,
                    updates = compaction.updates,
                    "snapshot written"
                );
            }
            Ok(Err(e)) => {
                warn!(error = %e, cause = ?std::error::Error::source(&e), "writing snapshot failed; the update log still holds everything; retrying later");
            }
            Err(e) => error!(error = %e, "snapshot task failed"),
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
        if !state.links.is_empty() {
            return false;
        }
        let inbox = &self.inbox;
        if !self
            .rooms
            .remove_if(&self.name, self.generation, || inbox.is_empty())
        {
            return false;
        }
        self.close_inbox(JoinRefused::Unloading);
        debug!("room unloaded");
        true
    }

    /// Shutdown: every accepted update is already in the journal, which the
    /// server drains after the rooms stop; peers still here are told to go.
    fn stop_for_shutdown(&mut self, state: &mut Loaded) {
        for (_, link) in state.links.drain() {
            link.closer.close(close::SHUTTING_DOWN);
        }
        self.close_inbox(JoinRefused::ShuttingDown);
    }

    /// Stops taking commands and answers joins that were already queued.
    fn close_inbox(&mut self, refusal: JoinRefused) {
        self.inbox.close();
        self.rooms.remove(&self.name, self.generation);
        while let Ok(command) = self.inbox.try_recv() {
            if let RoomCommand::Join { done, .. } = command {
                let _ = done.send(Err(refusal));
            }
        }
    }
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
