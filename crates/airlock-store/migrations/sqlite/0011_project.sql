-- The project a request's token is accounted to (issue 8): usage, budgets and rate limits by
-- project.
ALTER TABLE usage ADD COLUMN project TEXT;
CREATE INDEX usage_project ON usage (project, ts);
