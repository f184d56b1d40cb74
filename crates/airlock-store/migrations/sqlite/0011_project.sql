-- The project a request's token is accounted to (issue 8): usage, budgets and rate limits by
-- project.
ALTER TABLE usage ADD COLUMN project TEXT;
CREATE INDEX usage_project ON usage (project, ts);
-- What budgets and anomaly detection charged (the cost, or the whole estimate when the
-- provider may have billed more than it reported), so the detector's baseline survives a
-- restart as it was.
ALTER TABLE usage ADD COLUMN charged_nanos INTEGER;
