-- crdt-hub storage schema (Postgres). Applied migrations are never edited:
-- change the schema with a new migration.
--
-- rooms      one row per room that has ever been written. Every write takes
--            this row's lock first (the upsert in append, the upsert in
--            write_snapshot), which is what serialises writers of one room.
--              name          the room name exactly as given (a bind parameter, never SQL)
--              created_at    first write
--              updated_at    last append or snapshot
--              update_count  updates ever recorded: appended log entries plus the
--                            unlogged updates reported by snapshots
-- updates    the append-only log of Yjs v1 updates not yet folded into a
--            snapshot. ids come from one sequence, so they only grow, and
--            append takes them after the room's lock, so per room they grow in
--            commit order too.
-- snapshots  compacted versions of a room: `state` is the whole document as
--            one Yjs v1 update, `state_vector` its state vector, `size` the
--            length of `state`, `update_count` the updates folded into the
--            document since the room was created, `restored_from` the version a
--            restore copied (no foreign key: that version may be pruned since).
--
-- Deleting a room deletes its log and snapshots (ON DELETE CASCADE).

CREATE TABLE rooms (
    name         TEXT        PRIMARY KEY,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    update_count BIGINT      NOT NULL DEFAULT 0
);

CREATE TABLE updates (
    id         BIGSERIAL   PRIMARY KEY,
    room       TEXT        NOT NULL REFERENCES rooms (name) ON DELETE CASCADE,
    data       BYTEA       NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX updates_room_id ON updates (room, id);

CREATE TABLE snapshots (
    id            BIGSERIAL   PRIMARY KEY,
    room          TEXT        NOT NULL REFERENCES rooms (name) ON DELETE CASCADE,
    state         BYTEA       NOT NULL,
    state_vector  BYTEA       NOT NULL,
    size          BIGINT      NOT NULL,
    update_count  BIGINT      NOT NULL,
    restored_from BIGINT,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX snapshots_room_id ON snapshots (room, id);
