-- The sequencer looks for unchained events by commit time.
CREATE INDEX audit_events_by_time ON audit_events (at, id);
