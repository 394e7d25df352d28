//! Where rooms are found, and created exactly once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crdt_store::{RoomName, Store};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::core::{Access, PeerId};
use super::owner::{JoinRefused, RoomCommand, RoomConfig, RoomTask};
use super::peer::PeerLink;
use crate::persist::Journal;
use crate::protocol::ClientMessage;

/// Every room loaded in this process.
///
/// Lookup and creation happen under one lock that is never held across an
/// `.await`: the first join of a cold room spawns its owner task (which
/// loads from storage while later joins queue in its inbox), so concurrent
/// first joins can never load a room twice.
#[derive(Clone)]
pub struct Rooms {
    inner: Arc<Inner>,
}

struct Inner {
    /// std Mutex: held only for map operations, never across an await.
    rooms: Mutex<HashMap<RoomName, RoomHandle>>,
    next_generation: AtomicU64,
    store: Arc<dyn Store>,
    journal: Journal,
    config: Arc<RoomConfig>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// A connection's way into one room.
#[derive(Clone, Debug)]
pub struct RoomHandle {
    inbox: mpsc::Sender<RoomCommand>,
    generation: u64,
}

impl Rooms {
    pub fn new(
        store: Arc<dyn Store>,
        journal: Journal,
        config: RoomConfig,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                rooms: Mutex::new(HashMap::new()),
                next_generation: AtomicU64::new(1),
                store,
                journal,
                config: Arc::new(config),
                shutdown,
                tasks,
            }),
        }
    }

    /// The room named `name`, spawning (and loading) it if it is not in
    /// memory.
    pub fn get_or_load(&self, name: &RoomName) -> RoomHandle {
        let mut rooms = self.lock();
        if let Some(handle) = rooms.get(name) {
            return handle.clone();
        }
        let generation = self.inner.next_generation.fetch_add(1, Ordering::Relaxed);
        let (inbox, receiver) = mpsc::channel(self.inner.config.inbox_capacity);
        let handle = RoomHandle { inbox, generation };
        rooms.insert(name.clone(), handle.clone());
        let task = RoomTask {
            name: name.clone(),
            generation,
            inbox: receiver,
            rooms: self.clone(),
            store: self.inner.store.clone(),
            journal: self.inner.journal.clone(),
            config: self.inner.config.clone(),
            shutdown: self.inner.shutdown.clone(),
        };
        // parent: None, or the room would log inside the span of whichever
        // connection happened to load it.
        let span = tracing::info_span!(parent: None, "room", room = %name);
        self.inner.tasks.spawn(task.run().instrument(span));
        handle
    }

    /// Joins `name`, retrying when the room was unloading at that instant.
    ///
    /// # Errors
    /// [`JoinRefused::LoadFailed`] or [`JoinRefused::ShuttingDown`].
    pub async fn join(
        &self,
        name: &RoomName,
        peer: PeerId,
        access: Access,
        link: PeerLink,
    ) -> Result<RoomHandle, JoinRefused> {
        loop {
            let handle = self.get_or_load(name);
            let (done, answer) = oneshot::channel();
            let command = RoomCommand::Join {
                peer,
                access,
                link: link.clone(),
                done,
            };
            if handle.inbox.send(command).await.is_err() {
                continue; // unloaded between lookup and send
            }
            match answer.await {
                Ok(Ok(())) => return Ok(handle),
                Ok(Err(JoinRefused::Unloading)) | Err(_) => continue,
                Ok(Err(refused)) => return Err(refused),
            }
        }
    }

    /// Number of rooms in memory.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes the room if it is still generation `generation`.
    pub(super) fn remove(&self, name: &RoomName, generation: u64) {
        self.remove_if(name, generation, || true);
    }

    /// Removes the room if it is still generation `generation` and
    /// `still_idle()` holds while the registry is locked (no new sender
    /// can be handed out meanwhile).
    pub(super) fn remove_if(
        &self,
        name: &RoomName,
        generation: u64,
        still_idle: impl FnOnce() -> bool,
    ) -> bool {
        let mut rooms = self.lock();
        match rooms.get(name) {
            Some(handle) if handle.generation == generation => {
                if !still_idle() {
                    return false;
                }
                rooms.remove(name);
                true
            }
            // Already replaced or removed: nothing of ours to remove.
            _ => true,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RoomName, RoomHandle>> {
        // A panic while holding this lock can only come from HashMap itself;
        // the map is still consistent, so keep serving.
        self.inner
            .rooms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl RoomHandle {
    /// Hands the messages of one frame to the room. Waits while the room's
    /// inbox is full: a busy room slows its writers down instead of
    /// dropping their updates.
    pub async fn send_frame(&self, peer: PeerId, messages: Vec<ClientMessage>) -> bool {
        self.inbox
            .send(RoomCommand::Frame { peer, messages })
            .await
            .is_ok()
    }

    pub async fn leave(&self, peer: PeerId) {
        let _ = self.inbox.send(RoomCommand::Leave { peer }).await;
    }
}
