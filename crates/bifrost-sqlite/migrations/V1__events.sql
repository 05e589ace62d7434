-- The log. `position` is the rowid: strictly increasing, assigned by the single writer
-- from `meta.last_position` so that a hard delete of the newest events never lets a
-- position be reused.
CREATE TABLE events (
    position       INTEGER PRIMARY KEY,
    id             BLOB    NOT NULL,
    stream         TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    category       TEXT    NOT NULL,
    aggregate_type TEXT    NOT NULL,
    type           TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    data           BLOB    NOT NULL,
    metadata       BLOB    NOT NULL,
    correlation_id TEXT,
    occurred_at    INTEGER NOT NULL,
    recorded_at    INTEGER NOT NULL
);
CREATE UNIQUE INDEX events_id ON events (id);
CREATE UNIQUE INDEX events_stream_version ON events (stream, version);
CREATE INDEX events_category ON events (category, position);
CREATE INDEX events_correlation ON events (correlation_id, position) WHERE correlation_id IS NOT NULL;

-- One row per stream: its head version and state (0 live, 1 soft-deleted, 2 tombstoned).
CREATE TABLE streams (
    name           TEXT    PRIMARY KEY,
    category       TEXT    NOT NULL,
    aggregate_type TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    state          INTEGER NOT NULL DEFAULT 0,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX streams_category ON streams (category, name);

CREATE TABLE meta (
    key   TEXT    PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO meta (key, value) VALUES ('last_position', 0);
