//! The task that owns one room: the only place its document changes.
//! Connections talk to it over a bounded channel; it never waits on a
//! connection (frames go out with `try_send`), so a slow client can never
//! stall its room.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crdt_store::{RoomName, Store};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::core::{Access, Effects, PeerId, Room, RoomError};
use super::peer::PeerLink;
use super::registry::Rooms;
use crate::close::{self, CloseReason};
use crate::persist::{self, StoredPosition};
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
    /// How long a room waits at shutdown for its connections to leave
    /// before it saves anyway.
    pub shutdown_grace: Duration,
    /// How long to wait before retrying a failed save.
    pub save_retry: Duration,
}

impl Default for RoomConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(60),
            keep_snapshots: 20,
            inbox_capacity: 1024,
            shutdown_grace: Duration::from_secs(5),
            save_retry: Duration::from_secs(1),
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

pub(super) struct RoomTask {
    pub name: RoomName,
    /// Registry generation of this room, so that it only ever removes
    /// itself and never a successor of the same name.
    pub generation: u64,
    pub inbox: mpsc::Receiver<RoomCommand>,
    pub rooms: Rooms,
    pub store: Arc<dyn Store>,
    pub config: Arc<RoomConfig>,
    pub shutdown: CancellationToken,
}

struct Loaded {
    room: Room,
    position: StoredPosition,
    links: HashMap<PeerId, PeerLink>,
}

impl RoomTask {
    pub async fn run(mut self) {
        let (doc, position) = match persist::load(&self.store, &self.name).await {
            Ok(loaded) => loaded,
            Err(e) => {
                error!(room = %self.name, error = %e, cause = ?std::error::Error::source(&e), "loading room failed; refusing its connections");
                self.close_inbox(JoinRefused::LoadFailed);
                return;
            }
        };
        debug!(room = %self.name, "room loaded");
        let mut state = Loaded {
            room: Room::new(doc),
            position,
            links: HashMap::new(),
        };
        self.serve(&mut state).await;
    }

    async fn serve(&mut self, state: &mut Loaded) {
        let far_future = Instant::now() + Duration::from_secs(86400 * 365);
        let mut idle_since = Some(Instant::now());
        let mut shutdown_deadline: Option<Instant> = None;
        loop {
            let unload_at = match (shutdown_deadline, idle_since) {
                (Some(deadline), _) if state.links.is_empty() => Instant::now().min(deadline),
                (Some(deadline), _) => deadline,
                (None, Some(since)) => since + self.config.idle_timeout,
                (None, None) => far_future,
            };
            tokio::select! {
                command = self.inbox.recv() => {
                    let Some(command) = command else { break };
                    self.handle(state, command, shutdown_deadline.is_some());
                    idle_since = state.links.is_empty().then(Instant::now);
                }
                () = self.shutdown.cancelled(), if shutdown_deadline.is_none() => {
                    shutdown_deadline = Some(Instant::now() + self.config.shutdown_grace);
                }
                () = sleep_until(unload_at) => {
                    if self.try_unload(state, shutdown_deadline).await {
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
            RoomCommand::Frame { peer, messages } => {
                if !state.links.contains_key(&peer) {
                    return; // evicted while its frame was queued
                }
                match state.room.receive(peer, messages) {
                    Ok(effects) => {
                        if effects.refused_read_only > 0 {
                            debug!(room = %self.name, peer, refused = effects.refused_read_only, "dropped updates from read-only peer");
                        }
                        self.deliver(state, Some(peer), effects);
                    }
                    Err(RoomError::Apply(e)) => {
                        warn!(room = %self.name, peer, error = %e, "update failed to apply; closing connection");
                        self.evict(state, peer, close::BAD_UPDATE);
                    }
                    Err(RoomError::Poisoned) => self.poisoned(state),
                }
            }
            RoomCommand::Leave { peer } => {
                if state.links.remove(&peer).is_some() {
                    let effects = state.room.leave(peer);
                    self.deliver(state, None, effects);
                }
            }
        }
    }

    /// Sends the frames of `effects`; peers whose outbox is full are closed
    /// as slow consumers (and their awareness removal sent in turn).
    fn deliver(&self, state: &mut Loaded, sender: Option<PeerId>, effects: Effects) {
        let mut slow = Vec::new();
        if let Some(sender) = sender {
            if let Some(link) = state.links.get(&sender) {
                for frame in effects.to_sender {
                    if link.outbox.try_send(frame).is_err() {
                        slow.push(sender);
                        break;
                    }
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
            warn!(room = %self.name, peer, "peer too slow: outbound queue full; closing it so it resyncs");
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

    /// yrs panicked mid-update: the document can't be trusted, so it must
    /// not be saved. Every peer is closed (they hold their edits and push
    /// them back on reconnect) and the next join reloads from storage.
    fn poisoned(&mut self, state: &mut Loaded) {
        error!(room = %self.name, "room state poisoned by a panic in yrs; closing all peers and reloading");
        for (_, link) in state.links.drain() {
            link.closer.close(close::ROOM_FAILED);
        }
        state.room = Room::new(yrs::Doc::new());
        self.close_inbox(JoinRefused::Unloading);
    }

    /// Saves the room and, when nothing arrived meanwhile, removes it from
    /// the registry. Returns whether the task is done.
    async fn try_unload(&mut self, state: &mut Loaded, shutdown_deadline: Option<Instant>) -> bool {
        if self.inbox.is_closed() {
            return true; // poisoned
        }
        if let Some(deadline) = shutdown_deadline {
            if Instant::now() >= deadline && !state.links.is_empty() {
                // Their connections are closing anyway; the document holds
                // everything they sent, and saving must not wait longer.
                for (_, link) in state.links.drain() {
                    link.closer.close(close::SHUTTING_DOWN);
                }
            }
        }
        if state.room.unsaved_updates() > 0 {
            let encoded = state.room.encode_state();
            let unsaved = state.room.unsaved_updates();
            match persist::save_snapshot(
                &self.store,
                &self.name,
                &encoded,
                &mut state.position,
                unsaved,
                self.config.keep_snapshots,
            )
            .await
            {
                Ok(()) => {
                    state.room.mark_saved();
                    info!(room = %self.name, bytes = encoded.len(), updates = unsaved, "room saved");
                }
                Err(e) => {
                    error!(room = %self.name, error = %e, cause = ?std::error::Error::source(&e), "saving room failed; keeping it in memory and retrying");
                    if shutdown_deadline
                        .is_some_and(|d| Instant::now() > d + self.config.shutdown_grace)
                    {
                        error!(room = %self.name, unsaved, "giving up saving room at shutdown: its latest edits are only in its clients now");
                        self.rooms.note_save_failure();
                        return true;
                    }
                    tokio::time::sleep(self.config.save_retry).await;
                    return false;
                }
            }
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
        debug!(room = %self.name, "room unloaded");
        true
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
