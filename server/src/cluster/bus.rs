//! A loaded room's connection to the cluster: what its owner task calls.

use std::sync::Arc;

use bytes::Bytes;
use crdt_store::RoomName;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{Instrument, debug, warn};

use super::anti_entropy;
use super::lease::Lease;
use super::publisher::Publisher;
use super::reader::Reader;
use super::{BusMessage, Cluster, Remote, RemoteAwareness};
use crate::protocol::DocUpdate;
use crate::room::{Effects, Room, RoomCommand};

/// The awareness message tag: the first byte of an awareness frame.
const MSG_AWARENESS: u8 = 1;

/// Owned by the room's task; dropping it stops the room's reader, publisher
/// (after it sent what is queued) and heartbeat, and releases the lease.
pub struct RoomBus {
    cluster: Arc<Cluster>,
    outbox: mpsc::Sender<BusMessage>,
    lease: Lease,
    awareness: RemoteAwareness,
    /// Messages dropped because the publish queue was full.
    dropped: std::sync::atomic::AtomicU64,
    _stop: DropGuard,
}

/// What a remote message asks of the room's owner.
#[derive(Debug, Default)]
pub struct RemoteOutcome {
    /// Apply this update and broadcast it to local peers (never journal or
    /// publish it: it came from another node).
    pub update: Option<DocUpdate>,
    /// Frames for every local peer.
    pub to_peers: Vec<Bytes>,
}

impl RoomBus {
    pub(super) fn start(
        cluster: Arc<Cluster>,
        room: &RoomName,
        inbox: mpsc::Sender<RoomCommand>,
    ) -> Self {
        let stop = CancellationToken::new();
        let key = cluster.stream_key(room);
        let (outbox, queue) = mpsc::channel(cluster.config.publish_queue);
        let span = tracing::info_span!(parent: None, "cluster", room = %room);
        let publisher = Publisher {
            redis: cluster.manager.clone(),
            key: key.clone(),
            node: cluster.node.clone(),
            maxlen: cluster.config.stream_maxlen,
        };
        tokio::spawn(publisher.run(queue).instrument(span.clone()));
        let reader = Reader {
            client: cluster.client.clone(),
            key,
            node: cluster.node.clone(),
            inbox: inbox.clone(),
            outbox: outbox.clone(),
            stop: stop.clone(),
        };
        tokio::spawn(reader.run().instrument(span.clone()));
        let lease = Lease::default();
        tokio::spawn(
            heartbeat(
                cluster.clone(),
                cluster.lease_key(room),
                lease.clone(),
                inbox,
                stop.clone(),
            )
            .instrument(span),
        );
        Self {
            cluster,
            outbox,
            lease,
            awareness: RemoteAwareness::default(),
            dropped: std::sync::atomic::AtomicU64::new(0),
            _stop: stop.drop_guard(),
        }
    }

    /// Whether routine compaction may run here (this node holds the lease,
    /// or Redis cannot be asked).
    pub fn may_compact(&self) -> bool {
        self.lease.may_compact()
    }

    /// Publishes updates the room accepted from its own clients or API.
    pub fn publish_updates(&self, applied: &[Bytes]) {
        for update in applied {
            self.publish(BusMessage::Update(update.clone()));
        }
    }

    /// Publishes the awareness frames among `effects` (changes of this
    /// node's own clients, including their removal when they leave).
    pub fn publish_awareness(&self, effects: &Effects) {
        for frame in &effects.to_others {
            if frame.first() == Some(&MSG_AWARENESS) {
                self.publish(BusMessage::Awareness(frame.clone()));
            }
        }
    }

    /// Handles what the bus handed the room.
    pub fn handle(&mut self, room: &mut Room, remote: Remote) -> RemoteOutcome {
        let mut outcome = RemoteOutcome::default();
        let now = Instant::now();
        match remote {
            Remote::Message(BusMessage::Update(bytes)) => match DocUpdate::decode(bytes) {
                Ok(update) => outcome.update = Some(update),
                Err(e) => warn!(error = %e, "an update from another node does not decode; ignored"),
            },
            Remote::Message(BusMessage::Awareness(frame)) => {
                outcome
                    .to_peers
                    .extend(self.awareness.apply(room, &frame, now));
            }
            Remote::Message(BusMessage::StateVector(state)) => {
                match anti_entropy::missing_from(room.doc(), &state) {
                    Ok(Some(diff)) => {
                        debug!(
                            bytes = diff.len(),
                            "another node lacks content; publishing it"
                        );
                        self.publish(BusMessage::Update(Bytes::from(diff)));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        warn!(error = %e, "a state message from another node does not decode")
                    }
                }
            }
            Remote::Message(BusMessage::AwarenessQuery) => {
                if let Some(frame) = room.local_awareness_frame() {
                    self.publish(BusMessage::Awareness(frame));
                }
            }
            Remote::Tick => {
                let timeout = self.cluster.config.awareness_timeout;
                outcome
                    .to_peers
                    .extend(self.awareness.expire(room, now, timeout));
                self.publish(BusMessage::StateVector(anti_entropy::encode_state(
                    room.doc(),
                )));
            }
        }
        outcome
    }

    fn publish(&self, message: BusMessage) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.outbox.try_send(message) {
            let dropped = 1 + self
                .dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            super::metrics::dropped(1);
            if dropped.is_power_of_two() {
                warn!(
                    dropped,
                    "Redis is not keeping up; bus messages dropped (anti-entropy repairs them)"
                );
            }
        }
    }
}

/// Every sync interval: asks the room to publish its state vector and
/// expire stale remote awareness, and takes or renews the compaction lease.
async fn heartbeat(
    cluster: Arc<Cluster>,
    lease_key: String,
    lease: Lease,
    inbox: mpsc::Sender<RoomCommand>,
    stop: CancellationToken,
) {
    let interval = cluster.config.sync_interval;
    let ttl = (interval * 3).max(std::time::Duration::from_secs(2));
    let mut redis = cluster.manager.clone();
    // The reader sends the first tick once it reads the stream.
    let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        if let Err(mpsc::error::TrySendError::Closed(_)) =
            inbox.try_send(RoomCommand::Cluster(Remote::Tick))
        {
            break;
        }
        let refresh = lease.refresh(&mut redis, &lease_key, &cluster.node, ttl);
        tokio::select! {
            () = stop.cancelled() => break,
            result = refresh => if let Err(e) = result {
                debug!(error = %e, "compaction lease unavailable; compacting as if alone");
            },
        }
    }
    lease.release(&mut redis, &lease_key, &cluster.node).await;
}
