-- Workload identity (issue 6).

-- A developer admin key mints only within its grant: JSON {env, models, credentials, max_ttl_secs}.
ALTER TABLE admin_keys ADD COLUMN grant_scope TEXT;

-- What a token was minted from: the claims that satisfied a trust policy (JSON object), if any.
ALTER TABLE tokens ADD COLUMN claims TEXT;

-- Keys for workloads without an OIDC identity, shaped alk_sa_<id>_<secret>; only a keyed hash of
-- the secret is stored. Such a key can only mint tokens within `scope` (same JSON as grant_scope).
CREATE TABLE service_accounts (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    scope         TEXT NOT NULL,
    hash          TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    created_by    TEXT NOT NULL,
    last_used_at  INTEGER,
    revoked_at    INTEGER
);
CREATE UNIQUE INDEX service_accounts_active_name ON service_accounts (name) WHERE revoked_at IS NULL;

-- Trust policies added through the admin API (those in the configuration file are not stored).
CREATE TABLE trust_policies (
    name          TEXT PRIMARY KEY,
    policy        TEXT NOT NULL,            -- JSON, the same shape as a [[trust]] table
    created_at    INTEGER NOT NULL,
    created_by    TEXT NOT NULL
);
