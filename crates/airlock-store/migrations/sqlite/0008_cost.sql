-- Cost of each request in integer nano-dollars (10^-9 USD), from the price table at the time.
ALTER TABLE usage ADD COLUMN cost_nanos INTEGER;
