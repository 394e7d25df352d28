//! Delivery: frames out to the room's peers, through the fan-out window
//! for the others; a peer whose queue is full is closed as a slow consumer
//! (it resyncs on reconnect) rather than skipped.

use std::collections::HashMap;

use bytes::Bytes;
use tokio::time::Instant;
use tracing::warn;

use super::{Loaded, RoomTask};
use crate::close::{self, CloseReason};
use crate::room::core::{Effects, PeerId};
use crate::room::fanout::Broadcast;
use crate::room::peer::{PeerLink, QueueFull};

impl RoomTask {
    /// Sends the frames of `effects` (those for the other peers through
    /// the fan-out window); peers whose queue is full are closed as slow
    /// consumers (and their awareness removal sent in turn).
    pub(super) fn deliver(&self, state: &mut Loaded, sender: Option<PeerId>, effects: Effects) {
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
        if effects.awareness_held && state.presence.changed(now) {
            self.send_awareness(state, now);
        }
        out.written.record();
        self.evict_slow(state, out.slow);
    }

    /// Sends the awareness changes the room holds as one message to every
    /// peer (through the fan-out window, behind what it holds) and to the
    /// other nodes.
    pub(super) fn send_awareness(&self, state: &mut Loaded, now: Instant) {
        state.presence.sent(now);
        let Some((skip, frame)) = state.room.take_awareness() else {
            return;
        };
        if let Some(bus) = &self.bus {
            bus.publish_awareness_frame(&frame);
        }
        let ready = state.fanout.offer(now, skip, vec![frame]);
        state.ready.extend(ready);
    }

    /// Sends what is ready and what the fan-out window held.
    pub(super) fn send_held_frames(&self, state: &mut Loaded) {
        state.ready.extend(state.fanout.take(Instant::now()));
        self.send_ready_frames(state);
    }

    /// Sends the frames this turn made ready for the other peers.
    pub(super) fn send_ready_frames(&self, state: &mut Loaded) {
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

    pub(super) fn evict_slow(&self, state: &mut Loaded, slow: Vec<(PeerId, QueueFull)>) {
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

    pub(super) fn evict(&self, state: &mut Loaded, peer: PeerId, reason: CloseReason) {
        if let Some(link) = state.links.remove(&peer) {
            link.close(reason);
            let effects = state.room.leave(peer);
            self.publish_awareness(&effects);
            self.deliver(state, None, effects);
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
