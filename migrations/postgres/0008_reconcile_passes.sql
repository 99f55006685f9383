-- The grant reconciler's last pass per provider (`jitsudo server providers`): whichever
-- node holds the reconcile lease writes it, every node reads it. Additive.
CREATE TABLE reconcile_passes (
    provider    text PRIMARY KEY,
    node        text NOT NULL,
    at          timestamptz NOT NULL,
    duration_ms bigint NOT NULL,
    listed      bigint NOT NULL,
    orphans     bigint NOT NULL,
    drift       bigint NOT NULL,
    tombstones  bigint NOT NULL,
    error       text
);
