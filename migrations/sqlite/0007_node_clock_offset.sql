-- Each node's estimate of (database clock − its own clock), written with its heartbeat, for
-- the cluster status. Additive (old nodes write the default).
ALTER TABLE nodes ADD COLUMN clock_offset_us INTEGER NOT NULL DEFAULT 0;
