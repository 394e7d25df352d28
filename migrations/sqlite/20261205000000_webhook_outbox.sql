-- Webhook events waiting to be delivered (--webhook-url), written before
-- the server acknowledges them so that a crash loses none: a restarted
-- server, or another node on the same database, delivers what is pending.
--
-- Times are milliseconds since the Unix epoch: SQLite keeps chrono's
-- RFC 3339 text with a varying number of fraction digits, which does not
-- compare in time order.
--
-- webhook_outbox  id               delivery order (per room, by id)
--                 event_id         X-Crdt-Hub-Delivery, the same on every retry
--                 event, room      X-Crdt-Hub-Event, and the room it is about
--                 body             the exact JSON sent (and signed)
--                 state            pending, delivered or dead (dead-lettered)
--                 attempts         POSTs started so far
--                 next_attempt_at  not retried before this
--                 leased_until     a node is delivering it until then
--                 expires_at       a failure after this dead-letters it
--                 finished_at      delivered or dead-lettered at (for pruning)
--                 last_error       why the last attempt failed

CREATE TABLE webhook_outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        TEXT    NOT NULL UNIQUE,
    event           TEXT    NOT NULL,
    room            TEXT    NOT NULL,
    body            TEXT    NOT NULL,
    state           TEXT    NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    leased_until    INTEGER,
    expires_at      INTEGER NOT NULL,
    finished_at     INTEGER,
    last_error      TEXT
);

CREATE INDEX webhook_outbox_pending ON webhook_outbox (room, id) WHERE state = 'pending';
CREATE INDEX webhook_outbox_finished ON webhook_outbox (state, finished_at);
