-- crdt-hub storage schema (SQLite). Applied migrations are never edited:
-- change the schema with a new migration.
--
-- The same three tables as the Postgres schema, with SQLite types:
-- timestamps are TEXT in RFC 3339 (what sqlx encodes a chrono DateTime<Utc>
-- as, always written by the store, never by SQLite's own clock), bytes are
-- BLOB, integers are INTEGER (64-bit).
--
-- rooms      one row per room that has ever been written.
--              name          the room name exactly as given (a bind parameter, never SQL)
--              created_at    first write
--              updated_at    last append or snapshot
--              update_count  updates ever recorded: appended log entries plus the
--                            unlogged updates reported by snapshots
-- updates    the append-only log of Yjs v1 updates not yet folded into a
--            snapshot. AUTOINCREMENT so that an id is never reused after
--            compaction deletes the newest entries: ids only grow.
-- snapshots  compacted versions of a room: `state` is the whole document as
--            one Yjs v1 update, `state_vector` its state vector, `size` the
--            length of `state`, `update_count` the updates folded into the
--            document since the room was created, `restored_from` the version a
--            restore copied (no foreign key: that version may be pruned since).
--
-- Deleting a room deletes its log and snapshots (ON DELETE CASCADE; the store
-- turns `PRAGMA foreign_keys` on for every connection). Writers are
-- serialised by `BEGIN IMMEDIATE`.

CREATE TABLE rooms (
    name         TEXT    PRIMARY KEY NOT NULL,
    created_at   TEXT    NOT NULL,
    updated_at   TEXT    NOT NULL,
    update_count INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE updates (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    room       TEXT    NOT NULL REFERENCES rooms (name) ON DELETE CASCADE,
    data       BLOB    NOT NULL,
    created_at TEXT    NOT NULL
);

CREATE INDEX updates_room_id ON updates (room, id);

CREATE TABLE snapshots (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    room          TEXT    NOT NULL REFERENCES rooms (name) ON DELETE CASCADE,
    state         BLOB    NOT NULL,
    state_vector  BLOB    NOT NULL,
    size          INTEGER NOT NULL,
    update_count  INTEGER NOT NULL,
    restored_from INTEGER,
    created_at    TEXT    NOT NULL
);

CREATE INDEX snapshots_room_id ON snapshots (room, id);
