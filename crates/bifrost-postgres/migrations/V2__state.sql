-- Readers' state beside the log (consumer checkpoints, group cursors, dead letters): a
-- key-value space split into scopes. Keys sort with COLLATE "C" (byte order), so scans
-- page like the other backends; values are arbitrary bytes.
CREATE TABLE state (
    scope text  COLLATE "C" NOT NULL,
    key   text  COLLATE "C" NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (scope, key)
);
