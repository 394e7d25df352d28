-- Revoked access (POST /api/revocations): a token subject (`sub`) or one
-- token (`jti`) that no session may use until `until`, whatever the token's
-- own expiry. Kept here so that it survives a restart and every node of a
-- cluster, which share the database, enforces it.

CREATE TABLE revocations (
    kind       TEXT        NOT NULL CHECK (kind IN ('sub', 'jti')),
    value      TEXT        NOT NULL,
    until      TIMESTAMPTZ NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (kind, value)
);
