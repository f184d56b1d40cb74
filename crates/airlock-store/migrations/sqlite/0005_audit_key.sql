-- The keyed fingerprint of the provider key a request used (never the key), so the log can
-- prove that a rotated-out key was not used after its promotion time.
-- No index on it: every append would pay for one, and the check (instr over the list of
-- keys a request used, after a time) is an admin command served by audit_ts.
ALTER TABLE audit ADD COLUMN key TEXT;

-- Rotations: each step with its time, what was staged and what it replaced (fingerprints and
-- store versions only).
CREATE TABLE rotations (
    id              TEXT PRIMARY KEY,
    credential      TEXT NOT NULL,
    source          TEXT NOT NULL,          -- stdin, store, auto
    state           TEXT NOT NULL,          -- staged, failed, promoted, confirmed
    reason          TEXT,
    old_fingerprint TEXT,
    old_last4       TEXT,
    old_version     TEXT,
    old_ref         TEXT,
    new_fingerprint TEXT,
    new_last4       TEXT,
    new_version     TEXT,
    started_at      INTEGER NOT NULL,
    tested_at       INTEGER,
    promoted_at     INTEGER,
    confirmed_at    INTEGER
);
CREATE INDEX rotations_credential ON rotations (credential, started_at);
