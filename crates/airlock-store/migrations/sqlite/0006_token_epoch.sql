-- The token root-key generation after an incident lockdown: tokens signed by keys below
-- min_root_key_id are refused, new ones are signed by signing_root_key_id (overriding the
-- configuration's keys.root_key_id, which predates the lockdown).
CREATE TABLE token_epoch (
    id                  INTEGER PRIMARY KEY CHECK (id = 1),
    min_root_key_id     INTEGER NOT NULL,
    signing_root_key_id INTEGER NOT NULL,
    at                  INTEGER NOT NULL,
    reason              TEXT
);
