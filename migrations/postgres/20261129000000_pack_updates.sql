-- One log row may hold several updates: the updates one flush collected for
-- one room (see crdt-store/src/pack.rs). A row writes and indexes once
-- however many updates it holds, which is most of what the log costs.
--
-- updates.update_count  how many updates `data` holds. 1: `data` is one Yjs
--                       v1 update, as in every row written before this
--                       migration. More: `data` is that many updates, each
--                       prefixed by its length as a varint (Yjs's
--                       writeVarUint8Array framing).
--
-- A server older than this migration refuses to start on the migrated
-- database (its migrator does not know this version), so it never misreads
-- a packed row as one update.

ALTER TABLE updates ADD COLUMN update_count BIGINT NOT NULL DEFAULT 1
    CHECK (update_count >= 1);
