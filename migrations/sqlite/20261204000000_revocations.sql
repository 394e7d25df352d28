-- Revoked access (POST /api/revocations): a token subject (`sub`) or one
-- token (`jti`) that no session may use until `until`, whatever the token's
-- own expiry. Kept here so that it survives a restart and every node of a
-- cluster, which share the database, enforces it.
--
-- revocations  kind        'sub' or 'jti'
--              value       the claim's value
--              until       RFC 3339; past it the row means nothing (and is pruned)
--              created_at  when it was revoked

CREATE TABLE revocations (
    kind       TEXT NOT NULL CHECK (kind IN ('sub', 'jti')),
    value      TEXT NOT NULL,
    until      TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (kind, value)
);
