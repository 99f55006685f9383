-- Dead-letter listings filter by state and sink, and every node's Notifier counts rows per
-- sink and state every few seconds: both are answered from this index alone.
CREATE INDEX outbox_by_sink_state ON outbox (sink, state);
