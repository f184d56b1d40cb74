-- What budgets and anomaly detection charged (the cost, or the whole estimate when the
-- provider may have billed more than it reported), so the detector's baseline survives a
-- restart as it was.
ALTER TABLE usage ADD COLUMN charged_nanos INTEGER;
