//! Where rooms are found, and created exactly once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crdt_store::{RoomName, Store};
use futures_util::FutureExt;
use std::panic::AssertUnwindSafe;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::config::RoomConfig;
use super::core::{Access, PeerId};
use super::owner::{Registration, RoomCommand, RoomTask, RoomUnavailable};
use super::peer::PeerLink;
use super::request::{RoomReply, RoomRequest};
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
    rooms: Mutex<HashMap<RoomName, Slot>>,
    next_generation: AtomicU64,
    store: Arc<dyn Store>,
    journal: Journal,
    config: Arc<RoomConfig>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    /// Set in cluster mode: every room loaded joins the bus.
    cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
    /// Set with `--webhook-url`: rooms report their events through it.
    webhooks: std::sync::OnceLock<crate::webhooks::Webhooks>,
    /// One lock per room being restored (see [`Rooms::restore_lock`]).
    restores: Mutex<HashMap<RoomName, Arc<tokio::sync::Mutex<()>>>>,
}

enum Slot {
    Loaded(RoomHandle),
    /// Its stored data is being deleted: no one may load it meanwhile, or
    /// the deletion would happen under a live copy that saves it again.
    Deleting,
}

/// A connection's way into one room.
#[derive(Clone, Debug)]
pub struct RoomHandle {
    inbox: mpsc::Sender<RoomCommand>,
    generation: u64,
    /// Connections in the room, kept up to date by the room itself so that
    /// listings need not ask every room.
    connections: Arc<AtomicUsize>,
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
                cluster: std::sync::OnceLock::new(),
                webhooks: std::sync::OnceLock::new(),
                restores: Mutex::default(),
            }),
        }
    }

    /// Held while a restore of `room` runs: restores of one room go one at
    /// a time, so each one's `before` version includes the previous one.
    /// (A lock, not the room's task: a restore waits on storage and on a
    /// diff computed off the runtime, which the room must not.)
    pub fn restore_lock(&self, room: &RoomName) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.inner.restores.lock().expect("not poisoned");
        // Locks nobody holds or waits for (only the map refers to them) go.
        locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        locks.entry(room.clone()).or_default().clone()
    }

    /// Makes every room loaded from now on a member of `cluster`.
    pub fn set_cluster(&self, cluster: Arc<crate::cluster::Cluster>) {
        let _ = self.inner.cluster.set(cluster);
    }

    /// The cluster every room loaded joins, in cluster mode.
    pub fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.inner.cluster.get()
    }

    /// Makes every room and connection report events to `webhooks`.
    pub fn set_webhooks(&self, webhooks: crate::webhooks::Webhooks) {
        let _ = self.inner.webhooks.set(webhooks);
    }

    /// Where events go, with `--webhook-url`.
    pub fn webhooks(&self) -> Option<&crate::webhooks::Webhooks> {
        self.inner.webhooks.get()
    }

    /// The room named `name`, spawning (and loading) it if it is not in
    /// memory.
    ///
    /// # Errors
    /// [`RoomUnavailable::Deleting`] while the room is being deleted.
    pub fn get_or_load(&self, name: &RoomName) -> Result<RoomHandle, RoomUnavailable> {
        let mut rooms = self.lock();
        match rooms.get(name) {
            Some(Slot::Loaded(handle)) => return Ok(handle.clone()),
            Some(Slot::Deleting) => return Err(RoomUnavailable::Deleting),
            None => {}
        }
        if rooms.len() >= self.inner.config.max_rooms {
            return Err(RoomUnavailable::Full);
        }
        let generation = self.inner.next_generation.fetch_add(1, Ordering::Relaxed);
        let (inbox, receiver) = mpsc::channel(self.inner.config.inbox_capacity);
        let connections = Arc::new(AtomicUsize::new(0));
        let handle = RoomHandle {
            inbox,
            generation,
            connections: connections.clone(),
        };
        rooms.insert(name.clone(), Slot::Loaded(handle.clone()));
        let task = RoomTask {
            name: name.clone(),
            generation,
            inbox: receiver,
            connections,
            registration: Box::new(Entry {
                rooms: self.clone(),
                name: name.clone(),
                generation,
            }),
            store: self.inner.store.clone(),
            journal: self.inner.journal.clone(),
            config: self.inner.config.clone(),
            shutdown: self.inner.shutdown.clone(),
            bus: self
                .inner
                .cluster
                .get()
                .map(|cluster| cluster.join_room(name, handle.inbox.clone())),
            webhooks: self.inner.webhooks.get().cloned(),
        };
        // parent: None, or the room would log inside the span of whichever
        // connection happened to load it.
        let span = tracing::info_span!(parent: None, "room", room = %name);
        let rooms = self.clone();
        let room = name.clone();
        let running = async move {
            // A panic that escapes the room (yrs encoding a corrupt
            // state, say) must not leave a dead handle behind: joins
            // would spin on it. Drop it; the next join reloads.
            if AssertUnwindSafe(task.run()).catch_unwind().await.is_err() {
                tracing::error!("room task panicked; it will reload from storage on the next join");
                rooms.remove(&room, generation);
            }
        }
        .instrument(span);
        match self.home(name) {
            Some(home) => drop(self.inner.tasks.spawn_on(running, home)),
            None => drop(self.inner.tasks.spawn(running)),
        }
        Ok(handle)
    }

    /// The runtime `name` runs on when rooms have threads of their own:
    /// where its connections are to run too.
    pub fn home(&self, name: &RoomName) -> Option<&tokio::runtime::Handle> {
        self.inner.config.threads.home(name)
    }

    /// Connections in `name` now (0 when it is not loaded).
    pub fn connections(&self, name: &RoomName) -> usize {
        match self.lock().get(name) {
            Some(Slot::Loaded(handle)) => handle.connections.load(Ordering::Relaxed),
            _ => 0,
        }
    }

    /// Whether the room is in memory (without loading it).
    pub fn is_loaded(&self, name: &RoomName) -> bool {
        matches!(self.lock().get(name), Some(Slot::Loaded(_)))
    }

    /// The rooms in memory with their connection counts.
    pub fn loaded(&self) -> Vec<(RoomName, usize)> {
        self.lock()
            .iter()
            .filter_map(|(name, slot)| match slot {
                Slot::Loaded(handle) => {
                    Some((name.clone(), handle.connections.load(Ordering::Relaxed)))
                }
                Slot::Deleting => None,
            })
            .collect()
    }

    /// Sends `request` to the room (loading it if needed) and waits for the
    /// answer, retrying when the room was unloading at that instant.
    ///
    /// # Errors
    /// [`RoomUnavailable`] when the room cannot be loaded, is being deleted
    /// or the server is shutting down.
    pub async fn request(
        &self,
        name: &RoomName,
        mut make: impl FnMut() -> RoomRequest,
    ) -> Result<RoomReply, RoomUnavailable> {
        loop {
            let handle = self.get_or_load(name)?;
            let (done, answer) = oneshot::channel();
            let command = RoomCommand::Request {
                request: make(),
                done,
            };
            if handle.inbox.send(command).await.is_err() {
                self.remove(name, handle.generation);
                continue;
            }
            match answer.await {
                Ok(Err(RoomUnavailable::Unloading)) | Err(_) => continue,
                Ok(result) => return result,
            }
        }
    }

    /// Like [`Rooms::request`], but only for a room already in memory:
    /// `None` when it is not loaded.
    pub async fn request_if_loaded(
        &self,
        name: &RoomName,
        request: RoomRequest,
    ) -> Option<Result<RoomReply, RoomUnavailable>> {
        let handle = match self.lock().get(name) {
            Some(Slot::Loaded(handle)) => handle.clone(),
            _ => return None,
        };
        let (done, answer) = oneshot::channel();
        handle
            .inbox
            .send(RoomCommand::Request { request, done })
            .await
            .ok()?;
        match answer.await {
            Ok(Err(RoomUnavailable::Unloading)) | Err(_) => None,
            Ok(result) => Some(result),
        }
    }

    /// Marks `name` as being deleted (called by the room as it stops).
    fn mark_deleting(&self, name: &RoomName, generation: u64) {
        let mut rooms = self.lock();
        let ours = matches!(rooms.get(name), Some(Slot::Loaded(h)) if h.generation == generation);
        if ours {
            rooms.insert(name.clone(), Slot::Deleting);
        }
    }

    /// Blocks loading `name` while its stored data is deleted; fails when
    /// the room is loaded (delete it through the room instead).
    pub fn begin_delete(&self, name: &RoomName) -> Result<(), RoomUnavailable> {
        let mut rooms = self.lock();
        match rooms.get(name) {
            Some(Slot::Deleting) => Err(RoomUnavailable::Deleting),
            Some(Slot::Loaded(_)) => Err(RoomUnavailable::Unloading),
            None => {
                rooms.insert(name.clone(), Slot::Deleting);
                Ok(())
            }
        }
    }

    /// Lets `name` be loaded again after its deletion.
    pub fn end_delete(&self, name: &RoomName) {
        let mut rooms = self.lock();
        if matches!(rooms.get(name), Some(Slot::Deleting)) {
            rooms.remove(name);
        }
    }

    /// Joins `name`, retrying when the room was unloading at that instant.
    ///
    /// # Errors
    /// [`RoomUnavailable`] when the room cannot be loaded, is being deleted
    /// or the server is shutting down.
    pub async fn join(
        &self,
        name: &RoomName,
        peer: PeerId,
        access: Access,
        link: PeerLink,
    ) -> Result<RoomHandle, RoomUnavailable> {
        loop {
            let handle = self.get_or_load(name)?;
            let (done, answer) = oneshot::channel();
            let command = RoomCommand::Join {
                peer,
                access,
                link: link.clone(),
                done,
            };
            if handle.inbox.send(command).await.is_err() {
                // Unloaded between lookup and send, or the task died.
                self.remove(name, handle.generation);
                continue;
            }
            match answer.await {
                Ok(Ok(())) => return Ok(handle),
                Ok(Err(RoomUnavailable::Unloading)) | Err(_) => continue,
                Ok(Err(refused)) => return Err(refused),
            }
        }
    }

    /// Number of rooms in memory.
    pub fn len(&self) -> usize {
        self.lock()
            .values()
            .filter(|slot| matches!(slot, Slot::Loaded(_)))
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes the room if it is still generation `generation`.
    fn remove(&self, name: &RoomName, generation: u64) {
        self.remove_if(name, generation, &|| true);
    }

    /// Removes the room if it is still generation `generation` and
    /// `still_idle()` holds while the registry is locked (no new sender
    /// can be handed out meanwhile).
    fn remove_if(&self, name: &RoomName, generation: u64, still_idle: &dyn Fn() -> bool) -> bool {
        let mut rooms = self.lock();
        match rooms.get(name) {
            Some(Slot::Loaded(handle)) if handle.generation == generation => {
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RoomName, Slot>> {
        // A panic while holding this lock can only come from HashMap itself;
        // the map is still consistent, so keep serving.
        self.inner
            .rooms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A room task's place in the registry (see [`Registration`]).
struct Entry {
    rooms: Rooms,
    name: RoomName,
    /// So that a room only ever removes itself, never a successor of the
    /// same name.
    generation: u64,
}

impl Registration for Entry {
    fn mark_deleting(&self) {
        self.rooms.mark_deleting(&self.name, self.generation);
    }

    fn leave_if(&self, still_idle: &dyn Fn() -> bool) -> bool {
        self.rooms
            .remove_if(&self.name, self.generation, still_idle)
    }
}

impl RoomHandle {
    /// Hands the messages of one frame to the room. Waits while the room's
    /// inbox is full: a busy room slows its writers down instead of
    /// dropping their updates.
    pub async fn send_frame(
        &self,
        peer: PeerId,
        messages: Vec<ClientMessage>,
        received_at: tokio::time::Instant,
    ) -> bool {
        self.send_frame_then(peer, messages, received_at, None)
            .await
    }

    /// [`Self::send_frame`], with `stored` answered once the frame's
    /// updates are in storage (`true`) or refused (`false`, or dropped).
    pub async fn send_frame_then(
        &self,
        peer: PeerId,
        messages: Vec<ClientMessage>,
        received_at: tokio::time::Instant,
        stored: Option<oneshot::Sender<bool>>,
    ) -> bool {
        self.inbox
            .send(RoomCommand::Frame {
                peer,
                messages,
                received_at,
                stored,
            })
            .await
            .is_ok()
    }

    /// A Hocuspocus provider's stateless message, for the room's event
    /// feed and webhooks.
    pub async fn stateless(&self, peer: PeerId, payload: String) -> bool {
        self.inbox
            .send(RoomCommand::Stateless { peer, payload })
            .await
            .is_ok()
    }

    pub async fn leave(&self, peer: PeerId) {
        let _ = self.inbox.send(RoomCommand::Leave { peer }).await;
    }
}
