//! Threads of the rooms' own: each runs a share of the rooms, and their
//! WebSocket connections, on a single-threaded runtime.
//!
//! On tokio's shared work-stealing pool a keystroke crosses threads: the
//! connection that reads it, the room that merges it and the writes to the
//! other peers run wherever a worker is free, and an idle worker is woken
//! (a futex, a context switch) to steal each burst of runnable tasks. In
//! the fan-out benchmark those hand-offs cost 7–21 % of the CPU per
//! delivery (one worker against two, BENCHMARKS.md). A room and its
//! connections on one thread of their own hand nothing off; with one such
//! thread per core the server still uses every core. Measured against the
//! pool: 8–9 % less CPU per delivery at 45k and 90k deliveries/s, 10–12 %
//! less in presence storms, but 10 % more at 18k, where each thread wakes
//! for fewer events (BENCHMARKS.md, "Room threads").
//!
//! A room's thread is picked by a hash of its name, so the upgrade of a
//! WebSocket knows where the room will run before the room is loaded, and
//! every connection of the room lands on the same thread.
//!
//! What is not one room's stays on the shared pool: HTTP, the handshake,
//! the journal, Hocuspocus connections (they multiplex rooms), TLS streams'
//! I/O. Work that crosses between a room thread and the pool still works
//! (tokio wakes a task on any runtime); a crossing costs one wake-up.
//!
//! The price is isolation, which is why it is not the default. On the pool,
//! a room busy with large updates holds one worker while the other rooms
//! run on the others; on a room thread it delays every room hashed to the
//! same thread (the bystanders of `hostile_outbox.rs`, whose p99 must stay
//! under 50 ms while another room takes 1 MB edits, missed it with one
//! thread per core). And a room's connections no longer spread over
//! cores: the room's own work never did (it is one task), but its
//! connections' reading and decoding now share its core.

use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io;
use std::sync::Arc;

use crdt_store::RoomName;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// The room threads, if rooms have threads of their own; cheap to clone.
/// The threads stop once the last clone is gone (their runtimes drop what
/// is left on them).
#[derive(Clone, Default)]
pub struct RoomThreads {
    threads: Option<Arc<Threads>>,
}

struct Threads {
    handles: Vec<Handle>,
    /// Dropping these ends the threads' runtimes.
    _stops: Vec<oneshot::Sender<()>>,
}

impl RoomThreads {
    /// Rooms run on whatever runtime loads them (the shared pool).
    pub fn none() -> Self {
        Self::default()
    }

    /// Starts `count` threads (none for 0), named `crdt-hub-rooms-N`.
    ///
    /// # Errors
    /// When a runtime or a thread cannot be made.
    pub fn start(count: usize) -> io::Result<Self> {
        if count == 0 {
            return Ok(Self::none());
        }
        let mut handles = Vec::with_capacity(count);
        let mut stops = Vec::with_capacity(count);
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (stop, stopped) = oneshot::channel::<()>();
            handles.push(runtime.handle().clone());
            stops.push(stop);
            std::thread::Builder::new()
                .name(format!("crdt-hub-rooms-{index}"))
                .spawn(move || {
                    // Err once the sender is dropped: that is the signal.
                    let _ = runtime.block_on(stopped);
                })?;
        }
        Ok(Self {
            threads: Some(Arc::new(Threads {
                handles,
                _stops: stops,
            })),
        })
    }

    /// How many threads run rooms (0: none of their own).
    pub fn count(&self) -> usize {
        self.threads.as_ref().map_or(0, |t| t.handles.len())
    }

    /// The runtime that runs `room` and its connections, if rooms have
    /// threads of their own. The same room always gets the same one.
    pub fn home(&self, room: &RoomName) -> Option<&Handle> {
        let handles = &self.threads.as_ref()?.handles;
        let mut hasher = DefaultHasher::new();
        room.as_str().hash(&mut hasher);
        let index = hasher.finish() % handles.len() as u64;
        handles.get(usize::try_from(index).ok()?)
    }
}

impl fmt::Debug for RoomThreads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RoomThreads({})", self.count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(name: &str) -> RoomName {
        RoomName::parse(name).unwrap()
    }

    #[test]
    fn without_threads_rooms_have_no_home() {
        let threads = RoomThreads::start(0).unwrap();
        assert_eq!(threads.count(), 0);
        assert!(threads.home(&room("a")).is_none());
    }

    #[test]
    fn a_room_always_has_the_same_home_and_rooms_spread_over_every_thread() {
        let threads = RoomThreads::start(4).unwrap();
        let id = |name: &str| threads.home(&room(name)).unwrap().id();
        assert_eq!(id("notes"), id("notes"));
        let mut per_thread = std::collections::HashMap::new();
        for n in 0..1000 {
            *per_thread.entry(id(&format!("room-{n}"))).or_insert(0) += 1;
        }
        assert_eq!(per_thread.len(), 4);
        assert!(
            per_thread.values().all(|&rooms| rooms > 180),
            "{per_thread:?}"
        );
    }

    #[test]
    fn work_spawned_at_home_runs_on_a_room_thread_and_threads_stop_with_the_last_clone() {
        /// Says when the task holding it is dropped.
        struct Dropped(std::sync::mpsc::Sender<()>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                let _ = self.0.send(());
            }
        }

        let threads = RoomThreads::start(2).unwrap();
        let home = threads.home(&room("notes")).unwrap().clone();
        let (name_tx, name_rx) = std::sync::mpsc::channel();
        let (dropped_tx, dropped_rx) = std::sync::mpsc::channel();
        home.spawn(async move {
            let _dropped = Dropped(dropped_tx);
            name_tx
                .send(std::thread::current().name().map(str::to_owned))
                .unwrap();
            std::future::pending::<()>().await;
        });
        let name = name_rx.recv().unwrap().unwrap();
        assert!(name.starts_with("crdt-hub-rooms-"), "{name}");
        assert!(dropped_rx.try_recv().is_err());
        drop(threads);
        // The thread's runtime shut down and dropped the task it held.
        dropped_rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("the room thread's runtime still runs after every clone was dropped");
    }
}
