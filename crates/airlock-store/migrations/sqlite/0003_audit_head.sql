-- The signed head: rewritten in the transaction of every batch, so the newest record is always
-- covered by a signature and a restarted server finds nothing unsigned. (audit_checkpoints
-- keeps the permanent, periodic checkpoints.)
CREATE TABLE audit_head (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    seq        INTEGER NOT NULL,
    ts         INTEGER NOT NULL,
    head       TEXT NOT NULL,
    key_id     INTEGER NOT NULL,
    signature  TEXT NOT NULL
);
