-- Readers' state beside the log (consumer checkpoints, group cursors, dead letters):
-- a key-value space split into scopes. TEXT compares with the BINARY collation, so keys
-- scan in byte order.
CREATE TABLE state (
    scope TEXT NOT NULL,
    key   TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (scope, key)
) WITHOUT ROWID;
