//! The room's handle on one connection.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use tokio::sync::{Notify, mpsc};

use crate::close::CloseReason;

/// How a room reaches one connected peer.
#[derive(Debug, Clone)]
pub struct PeerLink {
    /// Frames to write to the socket. Bounded: when it is full the peer is
    /// too slow and is closed instead of stalling the room or losing frames.
    pub outbox: mpsc::Sender<Bytes>,
    /// Tells the connection to close, even while its outbox is full.
    pub closer: Arc<CloseSignal>,
}

/// A one-shot "close with this reason" from the room (or anyone else) to a
/// connection task.
#[derive(Debug, Default)]
pub struct CloseSignal {
    reason: OnceLock<CloseReason>,
    notify: Notify,
}

impl CloseSignal {
    /// Asks the connection to close. The first reason wins.
    pub fn close(&self, reason: CloseReason) {
        if self.reason.set(reason).is_ok() {
            // notify_one keeps a permit when nobody waits yet, so the
            // signal is never missed.
            self.notify.notify_one();
        }
    }

    /// Resolves once [`CloseSignal::close`] was called.
    pub async fn closed(&self) -> CloseReason {
        loop {
            if let Some(reason) = self.reason.get() {
                return *reason;
            }
            self.notify.notified().await;
        }
    }
}
