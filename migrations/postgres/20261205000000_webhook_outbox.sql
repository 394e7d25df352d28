-- Webhook events waiting to be delivered (--webhook-url), written before
-- the server acknowledges them so that a crash loses none: a restarted
-- server, or another node on the same database, delivers what is pending.
--
-- Times are milliseconds since the Unix epoch, as in the SQLite schema,
-- so that both backends share one set of types.
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
    id              BIGSERIAL PRIMARY KEY,
    event_id        TEXT    NOT NULL UNIQUE,
    event           TEXT    NOT NULL,
    room            TEXT    NOT NULL,
    body            TEXT    NOT NULL,
    state           TEXT    NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts        BIGINT  NOT NULL DEFAULT 0,
    created_at      BIGINT  NOT NULL,
    next_attempt_at BIGINT  NOT NULL,
    leased_until    BIGINT,
    expires_at      BIGINT  NOT NULL,
    finished_at     BIGINT,
    last_error      TEXT
);

CREATE INDEX webhook_outbox_pending ON webhook_outbox (room, id) WHERE state = 'pending';
CREATE INDEX webhook_outbox_finished ON webhook_outbox (state, finished_at);
