//! Live WebSocket sessions, by room and by the token that opened them, so
//! that access that ends ends the sessions it opened: an admin closing a
//! room's sessions, a subject or token revoked ([`crate::revocations`]).
//! A token that expires is the connection's own timer.
//!
//! A token is checked at the upgrade only; without this, an employee
//! removed from a document kept editing until they closed the tab.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crdt_store::{RevocationKind, RoomName};
use tokio::sync::Notify;

use crate::close::CloseReason;

/// Every live session of this process.
#[derive(Debug, Default)]
pub struct Sessions {
    entries: Mutex<HashMap<u64, Entry>>,
}

#[derive(Debug)]
struct Entry {
    room: RoomName,
    sub: Option<Arc<str>>,
    jti: Option<Arc<str>>,
    closer: Arc<Closer>,
}

/// How a session is told to end, and why.
#[derive(Debug, Default)]
pub struct Closer {
    reason: Mutex<Option<CloseReason>>,
    notify: Notify,
}

impl Closer {
    /// Asks the session to close with `reason` (the first reason wins).
    pub fn close(&self, reason: CloseReason) {
        let mut held = self.reason.lock().expect("not poisoned");
        if held.is_none() {
            *held = Some(reason);
            self.notify.notify_one();
        }
    }

    /// Resolves once the session is asked to close.
    pub async fn closed(&self) -> CloseReason {
        loop {
            if let Some(reason) = *self.reason.lock().expect("not poisoned") {
                return reason;
            }
            self.notify.notified().await;
        }
    }
}

/// What a session's token says of who it is, for logs and revocations.
#[derive(Debug, Clone, Default)]
pub struct Holder {
    pub sub: Option<Arc<str>>,
    pub jti: Option<Arc<str>>,
}

/// A session's place in [`Sessions`]; it leaves when this drops.
#[derive(Debug)]
pub struct Registered {
    sessions: Arc<Sessions>,
    peer: u64,
    pub closer: Arc<Closer>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.sessions
            .entries
            .lock()
            .expect("not poisoned")
            .remove(&self.peer);
    }
}

impl Sessions {
    /// Adds connection `peer`, in `room`, opened by `holder`.
    pub fn register(self: &Arc<Self>, peer: u64, room: RoomName, holder: Holder) -> Registered {
        let closer = Arc::new(Closer::default());
        self.entries.lock().expect("not poisoned").insert(
            peer,
            Entry {
                room,
                sub: holder.sub,
                jti: holder.jti,
                closer: closer.clone(),
            },
        );
        Registered {
            sessions: self.clone(),
            peer,
            closer,
        }
    }

    /// Closes every session in `room`; returns how many.
    pub fn close_room(&self, room: &RoomName, reason: CloseReason) -> usize {
        self.close_where(|entry| &entry.room == room, reason)
    }

    /// Closes every session opened by a token of subject `sub` (kind
    /// [`RevocationKind::Sub`]) or by the token `jti`; returns how many.
    pub fn close_revoked(&self, kind: RevocationKind, value: &str, reason: CloseReason) -> usize {
        self.close_where(
            |entry| match kind {
                RevocationKind::Sub => entry.sub.as_deref() == Some(value),
                RevocationKind::Jti => entry.jti.as_deref() == Some(value),
            },
            reason,
        )
    }

    fn close_where(&self, matches: impl Fn(&Entry) -> bool, reason: CloseReason) -> usize {
        let entries = self.entries.lock().expect("not poisoned");
        let mut closed = 0;
        for entry in entries.values().filter(|e| matches(e)) {
            entry.closer.close(reason);
            closed += 1;
        }
        closed
    }

    /// Live sessions.
    pub fn len(&self) -> usize {
        self.entries.lock().expect("not poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::close;

    fn holder(sub: &str, jti: &str) -> Holder {
        Holder {
            sub: Some(sub.into()),
            jti: Some(jti.into()),
        }
    }

    #[tokio::test]
    async fn sessions_close_by_room_subject_and_token_and_leave_when_dropped() {
        let sessions = Arc::new(Sessions::default());
        let room = |n: &str| RoomName::parse(n).unwrap();
        let a = sessions.register(1, room("a"), holder("alice", "t1"));
        let b = sessions.register(2, room("b"), holder("alice", "t2"));
        let c = sessions.register(3, room("a"), holder("bob", "t3"));
        assert_eq!(
            sessions.close_revoked(RevocationKind::Sub, "alice", close::ACCESS_REVOKED),
            2
        );
        assert_eq!(a.closer.closed().await, close::ACCESS_REVOKED);
        assert_eq!(b.closer.closed().await, close::ACCESS_REVOKED);
        assert_eq!(
            sessions.close_revoked(RevocationKind::Jti, "t3", close::ACCESS_REVOKED),
            1
        );
        drop((a, b, c));
        assert!(sessions.is_empty());
        let d = sessions.register(4, room("a"), Holder::default());
        assert_eq!(sessions.close_room(&room("a"), close::ACCESS_REVOKED), 1);
        assert_eq!(d.closer.closed().await, close::ACCESS_REVOKED);
    }
}
