-- The audit log: append-only, hash-chained (see crates/airlock-audit for the encoding).
-- The server only ever INSERTs here; the triggers make an accidental UPDATE or DELETE fail
-- (they are no defence against someone with write access to the file: the chain and the
-- signed checkpoints are).
CREATE TABLE audit (
    seq           INTEGER PRIMARY KEY,
    ts            INTEGER NOT NULL,
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
    status        INTEGER,
    input_tokens  INTEGER,
    output_tokens INTEGER,
    cost_micros   INTEGER,
    prev          TEXT NOT NULL,
    hash          TEXT NOT NULL
);
CREATE INDEX audit_ts ON audit (ts);
CREATE INDEX audit_credential ON audit (credential, ts) WHERE credential IS NOT NULL;
CREATE INDEX audit_actor ON audit (actor, ts);
CREATE INDEX audit_action ON audit (action, ts);

CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;

-- Signed positions of the chain.
CREATE TABLE audit_checkpoints (
    seq        INTEGER PRIMARY KEY,
    ts         INTEGER NOT NULL,
    head       TEXT NOT NULL,
    key_id     INTEGER NOT NULL,
    signature  TEXT NOT NULL
);
