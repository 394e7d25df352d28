//! WebSocket close codes the server uses, each with one meaning, so that a
//! client (or an operator reading a capture) can tell why a socket closed.
//! y-websocket clients reconnect after any close; the codes say whether
//! that is expected to help.

/// A close code with the reason text sent alongside it, and the short
/// name `crdt_hub_connections_closed_total` counts it under (one per
/// constant here, so that closes sharing a code, such as the several
/// 1013s, can be told apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: &'static str,
    pub label: &'static str,
}

impl CloseReason {
    const fn new(code: u16, reason: &'static str, label: &'static str) -> Self {
        Self {
            code,
            reason,
            label,
        }
    }

    /// Whether this goes on the wire as a close frame. 1006 never does
    /// (RFC 6455 §7.4.1): it names a socket dropped without one.
    pub fn is_sent(&self) -> bool {
        self.code != ABNORMAL
    }

    /// Whether the client was closed for what it sent, which it will send
    /// again when it reconnects (a stock y-websocket client resends its
    /// whole document): malformed or unappliable updates (1002),
    /// unsupported data (1003), too large (1009).
    pub fn refuses_content(self) -> bool {
        matches!(self.code, 1002 | 1003 | 1009)
    }
}

/// 4401: the token the session opened with has expired (`exp`, give or
/// take `--auth-leeway`). Reconnect with a fresh token; y-websocket 3.1+
/// stops reconnecting on its own on 44xx, so an app refreshes the token
/// and reconnects (docs/auth-and-limits.md).
pub const TOKEN_EXPIRED: CloseReason = CloseReason::new(4401, "token expired", "token_expired");
/// 4401: a Hocuspocus provider sent messages for a document and no
/// token for it within 10 s.
pub const NOT_AUTHENTICATED: CloseReason = CloseReason::new(
    4401,
    "no token came for a document on this socket",
    "not_authenticated",
);
/// 1008: a Hocuspocus provider sent more for a document than is held
/// while its token is awaited.
pub const UNAUTHENTICATED_BACKLOG: CloseReason = CloseReason::new(
    1008,
    "too much sent before the document's token",
    "unauthenticated_backlog",
);
/// 4403: the token's subject or the token itself was revoked
/// (`POST /api/revocations`).
pub const ACCESS_REVOKED: CloseReason = CloseReason::new(4403, "access revoked", "access_revoked");
/// 4403: an admin closed the room's sessions
/// (`POST /api/rooms/{room}/disconnect`).
pub const DISCONNECTED_BY_ADMIN: CloseReason =
    CloseReason::new(4403, "sessions closed by an admin", "disconnected_by_admin");
/// 1001: the server is shutting down; reconnect (to it or another node).
pub const SHUTTING_DOWN: CloseReason =
    CloseReason::new(1001, "server shutting down", "shutting_down");
/// 1001: no sign of life from the client within the keepalive window.
pub const KEEPALIVE_TIMEOUT: CloseReason =
    CloseReason::new(1001, "keepalive timeout", "keepalive_timeout");
/// 1002: a frame that is not valid y-websocket protocol.
pub const PROTOCOL_ERROR: CloseReason =
    CloseReason::new(1002, "malformed message", "protocol_error");
/// 1002: an update that decodes but cannot be applied to the document.
pub const BAD_UPDATE: CloseReason =
    CloseReason::new(1002, "update could not be applied", "bad_update");
/// 1002: an awareness state that is not JSON or nests too deep
/// (`--max-awareness-depth`): no Yjs client writes one, and every client
/// that parsed it would fail.
pub const BAD_AWARENESS: CloseReason = CloseReason::new(
    1002,
    "awareness state is not JSON or nests too deep",
    "bad_awareness",
);
/// 1003: an update creates a subdocument and the server refuses them
/// (`--subdocuments refuse`, the default). Reconnecting does not help.
pub const SUBDOCUMENTS_REFUSED: CloseReason = CloseReason::new(
    1003,
    "subdocuments are not accepted by this server (--subdocuments)",
    "subdocuments_refused",
);
/// 1003: y-websocket speaks binary frames only.
pub const TEXT_FRAME: CloseReason =
    CloseReason::new(1003, "text frames are not supported", "text_frame");
/// 1008: a message arrived in more frames than [`crate::frames::MAX_FRAGMENTS`].
pub const TOO_FRAGMENTED: CloseReason = CloseReason::new(
    1008,
    "policy violation: message in too many frames",
    "too_fragmented",
);
/// 1009: a frame larger than `--max-message-size`.
pub const MESSAGE_TOO_BIG: CloseReason =
    CloseReason::new(1009, "message too big", "message_too_big");
/// 1009: an awareness state longer than `--max-awareness-bytes`.
pub const AWARENESS_TOO_LARGE: CloseReason = CloseReason::new(
    1009,
    "awareness state too large (--max-awareness-bytes)",
    "awareness_too_large",
);
/// 1011: the room failed internally and is being reloaded; reconnect.
pub const ROOM_FAILED: CloseReason =
    CloseReason::new(1011, "room failed; reconnect to resync", "room_failed");
/// 1013: the client did not read its updates fast enough and its outbound
/// queue filled up. Nothing was dropped: it reconnects and resyncs.
pub const SLOW_CONSUMER: CloseReason = CloseReason::new(
    1013,
    "slow consumer: outbound queue full; reconnect to resync",
    "slow_consumer",
);
/// 1013: the room's stored state could not be loaded; retry later. The
/// server never serves an empty document in its place.
pub const LOAD_FAILED: CloseReason = CloseReason::new(
    1013,
    "room could not be loaded from storage; retry later",
    "load_failed",
);
/// 1013: too many updates are waiting for the database (it is down or
/// slow); this one was not applied. The client keeps it and sends it again
/// when it reconnects.
pub const STORAGE_BACKLOG: CloseReason = CloseReason::new(
    1013,
    "storage unavailable: write backlog full; retry later",
    "storage_backlog",
);
/// 1000: the room was deleted through the API. A client that reconnects
/// starts it afresh (with whatever its own replica holds).
pub const ROOM_DELETED: CloseReason = CloseReason::new(1000, "room deleted", "room_deleted");
/// 1008: the client sent faster than its rate limit for too long.
pub const RATE_LIMITED: CloseReason = CloseReason::new(
    1008,
    "policy violation: message rate limit exceeded",
    "rate_limited",
);
/// 1009: the update would grow the document past `--max-doc-size`; it was
/// not applied.
pub const DOCUMENT_TOO_LARGE: CloseReason = CloseReason::new(
    1009,
    "document size limit reached; update refused",
    "document_too_large",
);
/// 1013: the room already has `--max-connections-per-room` connections,
/// or the server holds `--max-rooms` rooms.
pub const ROOM_FULL: CloseReason =
    CloseReason::new(1013, "room or server at capacity; retry later", "room_full");

/// What a client sees when the socket ends without a close frame.
const ABNORMAL: u16 = 1006;

/// 1006, never sent: a socket write took longer than `--write-timeout`
/// (the client stopped reading and its TCP window is full), so the server
/// dropped the socket, which would not have taken a close frame either.
pub const WRITE_TIMEOUT: CloseReason =
    CloseReason::new(ABNORMAL, "write timed out", "write_timeout");
