-- Rate limits (issue 8): requests and/or tokens per minute on a token, identity or credential.
CREATE TABLE rate_limits (
    id            TEXT PRIMARY KEY,
    kind          TEXT NOT NULL,            -- token | identity | credential
    key           TEXT NOT NULL,
    rpm           INTEGER,
    tpm           INTEGER,
    created_at    INTEGER NOT NULL,
    created_by    TEXT NOT NULL
);
