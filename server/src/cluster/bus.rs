//! A loaded room's connection to the cluster: what its owner task calls.

use std::sync::Arc;

use bytes::Bytes;
use crdt_store::RoomName;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{Instrument, debug, warn};

use super::anti_entropy;
use super::interest::{self, Renewed, RoomKeys, Sharing};
use super::lease::Lease;
use super::publisher::Publisher;
use super::reader::Reader;
use super::{BusMessage, Cluster, Remote, RemoteAwareness};
use crate::protocol::DocUpdate;
use crate::room::{Effects, Room, RoomCommand};

/// The awareness message tag: the first byte of an awareness frame.
const MSG_AWARENESS: u8 = 1;

/// Owned by the room's task; dropping it stops the room's reader, publisher
/// (after it sent what is queued) and heartbeat, releases the lease and
/// withdraws the room's interest claim.
pub struct RoomBus {
    cluster: Arc<Cluster>,
    outbox: mpsc::Sender<BusMessage>,
    lease: Lease,
    awareness: RemoteAwareness,
    /// Whether another node holds the room: nothing is published otherwise.
    sharing: Sharing,
    /// The first claim of the room's interest, until the room awaited it.
    joined: Option<oneshot::Receiver<Option<Renewed>>>,
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
    /// The room was deleted through another node: close it without
    /// saving anything (see `delete`).
    pub deleted: bool,
    /// A stateless message for the local Hocuspocus providers.
    pub stateless: Option<String>,
}

/// What the room's first claim found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joined {
    /// The room is being deleted through another node: do not serve it.
    Deleting,
    /// Claimed; whether other nodes hold it is known.
    Claimed,
    /// Redis did not answer in time: serve as if alone (the heartbeat
    /// claims the room once Redis answers).
    Unknown,
}

/// How long a room that loads waits for its first claim before it serves
/// as if alone (Redis down must not stop rooms from loading).
const JOIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

impl RoomBus {
    pub(super) fn start(
        cluster: Arc<Cluster>,
        room: &RoomName,
        inbox: mpsc::Sender<RoomCommand>,
    ) -> Self {
        let stop = CancellationToken::new();
        let keys = cluster.room_keys(room);
        let (outbox, queue) = mpsc::channel(cluster.config.publish_queue);
        let span = tracing::info_span!(parent: None, "cluster", room = %room);
        let publisher = Publisher {
            redis: cluster.shared.clone(),
            key: keys.stream.clone(),
            node: cluster.node.clone(),
            maxlen: cluster.config.stream_maxlen,
            ttl: interest::key_ttl(cluster.config.sync_interval),
        };
        tokio::spawn(publisher.run(queue).instrument(span.clone()));
        let (start_reader, start) = oneshot::channel();
        let reader = Reader {
            cluster: cluster.clone(),
            key: keys.stream.clone(),
            inbox: inbox.clone(),
            start,
            stop: stop.clone(),
        };
        tokio::spawn(reader.run().instrument(span.clone()));
        let lease = Lease::default();
        let (joined_tx, joined) = oneshot::channel();
        tokio::spawn(
            heartbeat(
                Membership {
                    cluster: cluster.clone(),
                    keys,
                    lease_key: cluster.lease_key(room),
                    lease: lease.clone(),
                    inbox,
                    stop: stop.clone(),
                },
                start_reader,
                joined_tx,
            )
            .instrument(span),
        );
        Self {
            cluster,
            outbox,
            lease,
            awareness: RemoteAwareness::default(),
            sharing: Sharing::default(),
            joined: Some(joined),
            dropped: std::sync::atomic::AtomicU64::new(0),
            _stop: stop.drop_guard(),
        }
    }

    /// Waits (briefly) for the room's first interest claim; the room calls
    /// it before it loads, so that a room being deleted is never served
    /// and a room another node holds publishes from its first update on.
    pub async fn joined(&mut self) -> Joined {
        let Some(joined) = self.joined.take() else {
            return Joined::Unknown;
        };
        match tokio::time::timeout(JOIN_TIMEOUT, joined).await {
            Ok(Ok(Some(renewed))) if renewed.deleting => Joined::Deleting,
            Ok(Ok(Some(renewed))) => {
                self.sharing.counted(&renewed);
                Joined::Claimed
            }
            _ => Joined::Unknown,
        }
    }

    /// How long a room deleted through another node may take to write
    /// what it accepted before it lets go: a little longer than the
    /// deleting node waits (`holder_patience` in `cluster::delete`), which
    /// then deletes nothing rather than delete under a writer.
    pub fn flush_patience_after_delete(&self) -> std::time::Duration {
        super::delete::holder_patience(self.cluster.config.sync_interval)
            + self.cluster.config.sync_interval
    }

    /// Whether routine compaction may run here (this node holds the lease,
    /// or Redis cannot be asked).
    pub fn may_compact(&self) -> bool {
        self.lease.may_compact()
    }

    /// Publishes updates the room accepted from its own clients or API,
    /// when another node holds the room.
    pub fn publish_updates(&self, applied: &[Bytes]) {
        if !self.sharing.is_shared() {
            return;
        }
        for update in applied {
            self.publish(BusMessage::Update(update.clone()));
        }
    }

    /// Publishes a stateless message posted to this node's API, when
    /// another node holds the room.
    pub fn publish_stateless(&self, payload: &str) {
        if self.sharing.is_shared() {
            self.publish(BusMessage::Stateless(Bytes::copy_from_slice(
                payload.as_bytes(),
            )));
        }
    }

    /// Publishes the awareness frames among `effects` (changes of this
    /// node's own clients, including their removal when they leave), when
    /// another node holds the room.
    pub fn publish_awareness(&self, effects: &Effects) {
        if !self.sharing.is_shared() {
            return;
        }
        for frame in &effects.to_others {
            if frame.first() == Some(&MSG_AWARENESS) {
                self.publish(BusMessage::Awareness(frame.clone()));
            }
        }
    }

    /// Publishes an awareness message the room held and sent its peers
    /// (changes of this node's own peers only).
    pub fn publish_awareness_frame(&self, frame: &Bytes) {
        if self.sharing.is_shared() {
            self.publish(BusMessage::Awareness(frame.clone()));
        }
    }

    /// Handles what the bus handed the room.
    pub fn handle(&mut self, room: &mut Room, remote: Remote) -> RemoteOutcome {
        let mut outcome = RemoteOutcome::default();
        let now = Instant::now();
        match remote {
            Remote::Message(BusMessage::Deleted) => outcome.deleted = true,
            // Possibly from a node that does not hold the room (posted to
            // its API): not a sign that another node shares it.
            Remote::Message(message @ BusMessage::Stateless(_)) => {
                self.on_message(room, message, now, &mut outcome);
            }
            Remote::Message(message) => {
                if self.sharing.heard_from_another(now) {
                    self.announce(room);
                }
                self.on_message(room, message, now, &mut outcome);
            }
            Remote::Interest(renewed) => {
                if renewed.deleting {
                    outcome.deleted = true;
                } else if self.sharing.counted(&renewed) {
                    debug!(
                        others = renewed.others,
                        "another node holds the room; sharing it"
                    );
                    self.announce(room);
                }
            }
            Remote::Connected => {
                if self.sharing.is_shared() {
                    self.announce(room);
                }
            }
            Remote::Tick => {
                let timeout = self.cluster.config.awareness_timeout;
                outcome
                    .to_peers
                    .extend(self.awareness.expire(room, now, timeout));
                if self.sharing.is_shared() {
                    self.publish(BusMessage::StateVector(anti_entropy::encode_state(
                        room.doc(),
                    )));
                }
            }
        }
        outcome
    }

    fn on_message(
        &mut self,
        room: &mut Room,
        message: BusMessage,
        now: Instant,
        outcome: &mut RemoteOutcome,
    ) {
        match message {
            BusMessage::Update(bytes) => match DocUpdate::decode(bytes) {
                Ok(update) => outcome.update = Some(update),
                Err(e) => warn!(error = %e, "an update from another node does not decode; ignored"),
            },
            BusMessage::Awareness(frame) => {
                outcome
                    .to_peers
                    .extend(self.awareness.apply(room, &frame, now));
            }
            BusMessage::StateVector(state) => {
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
            BusMessage::AwarenessQuery => {
                if let Some(frame) = room.local_awareness_frame() {
                    self.publish(BusMessage::Awareness(frame));
                }
            }
            BusMessage::Deleted => outcome.deleted = true,
            BusMessage::Stateless(payload) => match String::from_utf8(payload.to_vec()) {
                Ok(payload) => outcome.stateless = Some(payload),
                Err(_) => warn!("a stateless message from another node is not UTF-8; ignored"),
            },
        }
    }

    /// The room starts sharing (or its reader reconnected): the other nodes
    /// learn what it has (they answer with what it lacks) and who is here,
    /// and are asked who is there.
    fn announce(&self, room: &Room) {
        self.publish(BusMessage::StateVector(anti_entropy::encode_state(
            room.doc(),
        )));
        self.publish(BusMessage::AwarenessQuery);
        if let Some(frame) = room.local_awareness_frame() {
            self.publish(BusMessage::Awareness(frame));
        }
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

/// What the heartbeat keeps up for one room.
struct Membership {
    cluster: Arc<Cluster>,
    keys: RoomKeys,
    lease_key: String,
    lease: Lease,
    inbox: mpsc::Sender<RoomCommand>,
    stop: CancellationToken,
}

/// Claims the room's interest (telling the reader where to start and the
/// room what it found) and asks for the compaction lease, then every sync
/// interval: asks the room to publish its state vector and expire stale
/// remote awareness, renews the claim (telling the room whether other nodes
/// hold it, or that it is being deleted), and takes or renews the
/// compaction lease. When the room unloads: releases the lease and
/// withdraws the claim.
async fn heartbeat(
    membership: Membership,
    start_reader: oneshot::Sender<Option<String>>,
    joined: oneshot::Sender<Option<Renewed>>,
) {
    let Membership {
        cluster,
        keys,
        lease_key,
        lease,
        inbox,
        stop,
    } = membership;
    let interval = cluster.config.sync_interval;
    let key_ttl = interest::key_ttl(interval);
    // Three intervals (at least 2 s, so a short interval does not make the
    // lease flap), but never longer than any other key of the room lives.
    let lease_ttl = (interval * 3)
        .max(std::time::Duration::from_secs(2))
        .min(key_ttl);
    let mut redis = cluster.shared.clone();
    let first = tokio::select! {
        () = stop.cancelled() => None,
        result = interest::renew(&mut redis, &keys, &cluster.node, key_ttl) => Some(result),
    };
    match first {
        Some(Ok(renewed)) => {
            let _ = start_reader.send(Some(renewed.stream_end.clone()));
            let _ = joined.send(Some(renewed));
        }
        Some(Err(e)) => {
            super::metrics::redis_error();
            debug!(error = %e, "claiming the room failed; serving as if alone until Redis answers");
            let _ = start_reader.send(None);
            let _ = joined.send(None);
        }
        None => {}
    }
    let lease = LeaseRenewal {
        lease,
        key: lease_key,
        node: cluster.node.clone(),
        ttl: lease_ttl,
    };
    // Now rather than one interval later: until then the room does not
    // compact on its own accord (see `lease`).
    lease.refresh(&mut redis, &stop).await;
    let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    while !stop.is_cancelled() {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        // A closed inbox does not end the claim: the room has stopped but
        // may still be writing what it accepted (its journal, a snapshot);
        // a node deleting the room waits for the claim to go, and the bus
        // withdraws it only when the room drops it, after those writes.
        let _ = inbox.try_send(RoomCommand::Cluster(Remote::Tick));
        let renew = interest::renew(&mut redis, &keys, &cluster.node, key_ttl);
        tokio::select! {
            () = stop.cancelled() => break,
            result = renew => match result {
                // A full inbox drops this count; the next one comes an
                // interval later.
                Ok(renewed) => {
                    let _ = inbox.try_send(RoomCommand::Cluster(Remote::Interest(renewed)));
                }
                Err(e) => {
                    super::metrics::redis_error();
                    debug!(error = %e, "renewing the room's claim failed");
                }
            },
        }
        if !lease.refresh(&mut redis, &stop).await {
            break;
        }
    }
    lease.release(&mut redis).await;
    if let Err(e) = interest::leave(&mut redis, &keys, &cluster.node).await {
        debug!(error = %e, "withdrawing the room's claim failed; it expires by itself");
    }
}

/// The room's compaction lease as its heartbeat keeps it.
struct LeaseRenewal {
    lease: Lease,
    key: String,
    node: String,
    ttl: std::time::Duration,
}

impl LeaseRenewal {
    /// Takes or renews the lease; false if the room stopped first.
    async fn refresh(
        &self,
        redis: &mut super::connection::Connection,
        stop: &CancellationToken,
    ) -> bool {
        tokio::select! {
            () = stop.cancelled() => false,
            result = self.lease.refresh(redis, &self.key, &self.node, self.ttl) => {
                if let Err(e) = result {
                    debug!(error = %e, "compaction lease unavailable; compacting as if alone");
                }
                true
            }
        }
    }

    async fn release(&self, redis: &mut super::connection::Connection) {
        self.lease.release(redis, &self.key, &self.node).await;
    }
}
