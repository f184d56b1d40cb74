-- Core schema. Invariant I1: no column ever holds a provider key. Credentials hold the
-- reference (where the key lives), a keyed fingerprint and the last four characters.

CREATE TABLE credentials (
    name          TEXT PRIMARY KEY,
    provider      TEXT NOT NULL,
    env           TEXT NOT NULL,
    secret_ref    TEXT NOT NULL,
    base_url      TEXT,
    models        TEXT NOT NULL,            -- JSON array of globs
    priority      INTEGER NOT NULL DEFAULT 100,
    fingerprint   TEXT,
    last4         TEXT,
    created_at    INTEGER NOT NULL,         -- unix milliseconds
    rotated_at    INTEGER,
    last_used_at  INTEGER,
    suspended     INTEGER NOT NULL DEFAULT 0
);

-- Metadata of minted tokens. The token string itself is never stored: it is a bearer
-- credential and the server can verify it from its signature alone.
CREATE TABLE tokens (
    id            TEXT PRIMARY KEY,
    subject       TEXT NOT NULL,
    env           TEXT NOT NULL,
    models        TEXT NOT NULL,            -- JSON array
    credentials   TEXT NOT NULL,            -- JSON array
    key_id        INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,         -- unix seconds
    revoked_at    INTEGER,
    minted_by     TEXT NOT NULL
);
CREATE INDEX tokens_revoked ON tokens (revoked_at) WHERE revoked_at IS NOT NULL;

-- Admin API keys, shaped alk_admin_<id>_<secret>; only a keyed hash of the secret is stored.
CREATE TABLE admin_keys (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    role          TEXT NOT NULL,
    hash          TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    last_used_at  INTEGER,
    revoked_at    INTEGER
);

-- One row per proxied request, written when the response finishes (or the client leaves).
CREATE TABLE usage (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    ts             INTEGER NOT NULL,        -- unix milliseconds, request start
    request_id     TEXT NOT NULL,
    token_id       TEXT,
    subject        TEXT,
    env            TEXT,
    credential     TEXT,
    provider       TEXT,
    endpoint       TEXT NOT NULL,
    model          TEXT,
    status         INTEGER NOT NULL,
    outcome        TEXT NOT NULL,
    input_tokens   INTEGER,
    output_tokens  INTEGER,
    cached_tokens  INTEGER,
    latency_ms     INTEGER NOT NULL,
    ttfb_ms        INTEGER,
    stream         INTEGER NOT NULL,
    attempts       INTEGER NOT NULL,
    client_ip      TEXT
);
CREATE INDEX usage_ts ON usage (ts);
CREATE INDEX usage_token ON usage (token_id, ts);
CREATE INDEX usage_credential ON usage (credential, ts);
