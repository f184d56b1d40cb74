-- Spend caps (issue 8): on a token, an identity (token subject) or a credential; per UTC day,
-- calendar month or in total; integer nano-dollars.
CREATE TABLE budgets (
    id            TEXT PRIMARY KEY,
    kind          TEXT NOT NULL,            -- token | identity | credential
    key           TEXT NOT NULL,
    period        TEXT NOT NULL,            -- day | month | total
    limit_nanos   INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    created_by    TEXT NOT NULL
);
CREATE INDEX usage_subject ON usage (subject, ts);
