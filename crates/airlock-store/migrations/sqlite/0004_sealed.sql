-- Sealed secrets: only ciphertext and the data key wrapped by the customer's KEK. Nothing here
-- opens without the KEK (OpenBao Transit, AWS KMS or a key file kept outside the database).
CREATE TABLE sealed_secrets (
    id           TEXT PRIMARY KEY,
    credential   TEXT NOT NULL,
    kek          TEXT NOT NULL,
    kek_version  TEXT NOT NULL,
    wrapped_key  BLOB NOT NULL,
    nonce        BLOB NOT NULL,
    ciphertext   BLOB NOT NULL,
    created_at   INTEGER NOT NULL,
    rewrapped_at INTEGER
);

-- The version of the secret last read from its store (KV version, Secrets Manager version id,
-- sealed id); never the value.
ALTER TABLE credentials ADD COLUMN secret_version TEXT;
