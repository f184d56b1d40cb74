-- The PostgreSQL schema: the same tables and columns as the SQLite migrations 0001-0012 end
-- with, so one set of queries serves both. Integers are BIGINT (unix milliseconds, counts,
-- nano-dollars), booleans are BIGINT 0/1 as on SQLite, JSON is TEXT, bytes are BYTEA.
-- Invariant I1: no column ever holds a provider key, a token or a prompt.

CREATE TABLE credentials (
    name           TEXT PRIMARY KEY,
    provider       TEXT NOT NULL,
    env            TEXT NOT NULL,
    secret_ref     TEXT NOT NULL,
    base_url       TEXT,
    models         TEXT NOT NULL,
    priority       BIGINT NOT NULL DEFAULT 100,
    fingerprint    TEXT,
    last4          TEXT,
    created_at     BIGINT NOT NULL,
    rotated_at     BIGINT,
    last_used_at   BIGINT,
    suspended      BIGINT NOT NULL DEFAULT 0,
    secret_version TEXT
);

CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,
    subject     TEXT NOT NULL,
    env         TEXT NOT NULL,
    models      TEXT NOT NULL,
    credentials TEXT NOT NULL,
    key_id      BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    revoked_at  BIGINT,
    minted_by   TEXT NOT NULL,
    claims      TEXT
);
CREATE INDEX tokens_revoked ON tokens (revoked_at) WHERE revoked_at IS NOT NULL;

CREATE TABLE admin_keys (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    role         TEXT NOT NULL,
    hash         TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    last_used_at BIGINT,
    revoked_at   BIGINT,
    grant_scope  TEXT
);

CREATE TABLE usage (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ts            BIGINT NOT NULL,
    request_id    TEXT NOT NULL,
    token_id      TEXT,
    subject       TEXT,
    env           TEXT,
    credential    TEXT,
    provider      TEXT,
    endpoint      TEXT NOT NULL,
    model         TEXT,
    status        BIGINT NOT NULL,
    outcome       TEXT NOT NULL,
    input_tokens  BIGINT,
    output_tokens BIGINT,
    cached_tokens BIGINT,
    latency_ms    BIGINT NOT NULL,
    ttfb_ms       BIGINT,
    stream        BIGINT NOT NULL,
    attempts      BIGINT NOT NULL,
    client_ip     TEXT,
    cost_nanos    BIGINT,
    project       TEXT,
    charged_nanos BIGINT
);
CREATE INDEX usage_ts ON usage (ts);
CREATE INDEX usage_token ON usage (token_id, ts);
CREATE INDEX usage_credential ON usage (credential, ts);
CREATE INDEX usage_subject ON usage (subject, ts);
CREATE INDEX usage_project ON usage (project, ts);

-- The audit log: append-only, hash-chained (see crates/airlock-audit). The trigger makes an
-- accidental UPDATE or DELETE fail; the chain and the signed checkpoints are the defence
-- against anyone who can write to the database.
CREATE TABLE audit (
    seq           BIGINT PRIMARY KEY,
    ts            BIGINT NOT NULL,
    actor_kind    TEXT NOT NULL,
    actor         TEXT,
    subject       TEXT,
    action        TEXT NOT NULL,
    target_kind   TEXT,
    target        TEXT,
    outcome       TEXT NOT NULL,
    reason        TEXT,
    request_id    TEXT,
    client_ip     TEXT,
    credential    TEXT,
    model         TEXT,
    status        BIGINT,
    input_tokens  BIGINT,
    output_tokens BIGINT,
    cost_micros   BIGINT,
    prev          TEXT NOT NULL,
    hash          TEXT NOT NULL,
    key           TEXT
);
CREATE INDEX audit_ts ON audit (ts);
CREATE INDEX audit_credential ON audit (credential, ts) WHERE credential IS NOT NULL;
CREATE INDEX audit_actor ON audit (actor, ts);
CREATE INDEX audit_action ON audit (action, ts);

CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only';
END;
$$;
CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();

CREATE TABLE audit_checkpoints (
    seq       BIGINT PRIMARY KEY,
    ts        BIGINT NOT NULL,
    head      TEXT NOT NULL,
    key_id    BIGINT NOT NULL,
    signature TEXT NOT NULL
);

CREATE TABLE audit_head (
    id        BIGINT PRIMARY KEY CHECK (id = 1),
    seq       BIGINT NOT NULL,
    ts        BIGINT NOT NULL,
    head      TEXT NOT NULL,
    key_id    BIGINT NOT NULL,
    signature TEXT NOT NULL
);

CREATE TABLE sealed_secrets (
    id           TEXT PRIMARY KEY,
    credential   TEXT NOT NULL,
    kek          TEXT NOT NULL,
    kek_version  TEXT NOT NULL,
    wrapped_key  BYTEA NOT NULL,
    nonce        BYTEA NOT NULL,
    ciphertext   BYTEA NOT NULL,
    created_at   BIGINT NOT NULL,
    rewrapped_at BIGINT
);

CREATE TABLE rotations (
    id              TEXT PRIMARY KEY,
    credential      TEXT NOT NULL,
    source          TEXT NOT NULL,
    state           TEXT NOT NULL,
    reason          TEXT,
    old_fingerprint TEXT,
    old_last4       TEXT,
    old_version     TEXT,
    old_ref         TEXT,
    new_fingerprint TEXT,
    new_last4       TEXT,
    new_version     TEXT,
    started_at      BIGINT NOT NULL,
    tested_at       BIGINT,
    promoted_at     BIGINT,
    confirmed_at    BIGINT
);
CREATE INDEX rotations_credential ON rotations (credential, started_at);

CREATE TABLE token_epoch (
    id                  BIGINT PRIMARY KEY CHECK (id = 1),
    min_root_key_id     BIGINT NOT NULL,
    signing_root_key_id BIGINT NOT NULL,
    at                  BIGINT NOT NULL,
    reason              TEXT
);

CREATE TABLE service_accounts (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    scope        TEXT NOT NULL,
    hash         TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    created_by   TEXT NOT NULL,
    last_used_at BIGINT,
    revoked_at   BIGINT
);
CREATE UNIQUE INDEX service_accounts_active_name ON service_accounts (name) WHERE revoked_at IS NULL;

CREATE TABLE trust_policies (
    name       TEXT PRIMARY KEY,
    policy     TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL
);

CREATE TABLE budgets (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    key         TEXT NOT NULL,
    period      TEXT NOT NULL,
    limit_nanos BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    created_by  TEXT NOT NULL
);

CREATE TABLE rate_limits (
    id         TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,
    key        TEXT NOT NULL,
    rpm        BIGINT,
    tpm        BIGINT,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL
);
