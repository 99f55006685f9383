-- The grant reconciler's last pass per provider (`jitsudo server providers`): whichever
-- node holds the reconcile lease writes it, every node reads it. Additive.
CREATE TABLE reconcile_passes (
    provider    TEXT PRIMARY KEY,
    node        TEXT NOT NULL,
    at          INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    listed      INTEGER NOT NULL,
    orphans     INTEGER NOT NULL,
    drift       INTEGER NOT NULL,
    tombstones  INTEGER NOT NULL,
    error       TEXT
);
