-- Changes not yet reported in a `document.changed` webhook, counted on the
-- room's row by the same transaction that appends the edits (only while
-- webhooks want `document.changed`). A crash after an edit's commit thus
-- cannot lose its event: the count is in the database with the edit, and
-- whichever node sees it due turns it into an outbox event, in one
-- transaction that takes the count off again.
--
-- rooms  unreported_updates   updates appended since the last report
--        unreported_first_at  when the first of them was appended (ms since
--                             the epoch): bounds the wait while edits go on
--        unreported_last_at   when the last was (ms): the debounce's quiet
--        report_generation    raised by every report: a node reports a count
--                             only if nobody reported it meanwhile

ALTER TABLE rooms ADD COLUMN unreported_updates INTEGER NOT NULL DEFAULT 0;
ALTER TABLE rooms ADD COLUMN unreported_first_at INTEGER;
ALTER TABLE rooms ADD COLUMN unreported_last_at INTEGER;
ALTER TABLE rooms ADD COLUMN report_generation INTEGER NOT NULL DEFAULT 0;

CREATE INDEX rooms_unreported ON rooms (unreported_first_at) WHERE unreported_updates > 0;
