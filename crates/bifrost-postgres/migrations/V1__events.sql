-- Runs with search_path set to Bifrost's own schema (default "bifrost").

-- The log. Payloads are bytea, not jsonb: jsonb re-serialises (key order, spacing,
-- duplicate keys), and the contract is to return JSON byte-for-byte as it was sent.
CREATE TABLE events (
    position       bigint      PRIMARY KEY,
    id             uuid        NOT NULL UNIQUE,
    stream         text        NOT NULL,
    version        bigint      NOT NULL,
    category       text        NOT NULL,
    aggregate_type text        NOT NULL,
    type           text        NOT NULL,
    schema_version integer     NOT NULL,
    data           bytea       NOT NULL,
    metadata       bytea       NOT NULL,
    correlation_id text,
    occurred_at    bigint      NOT NULL, -- microseconds since the Unix epoch
    recorded_at    bigint      NOT NULL, -- microseconds; never decreases along the log
    UNIQUE (stream, version)
);
CREATE INDEX events_category ON events (category, position);
CREATE INDEX events_correlation ON events (correlation_id, position) WHERE correlation_id IS NOT NULL;
-- recorded_at grows with position, which is exactly what a BRIN index is cheap and good at.
CREATE INDEX events_recorded_at ON events USING brin (recorded_at);

CREATE TABLE streams (
    name           text    COLLATE "C" PRIMARY KEY, -- byte order: listings page like the other backends
    category       text    NOT NULL,
    aggregate_type text    NOT NULL,
    version        bigint  NOT NULL,
    state          smallint NOT NULL DEFAULT 0, -- 0 live, 1 soft-deleted, 2 tombstoned
    created_at     bigint  NOT NULL,
    updated_at     bigint  NOT NULL
);
CREATE INDEX streams_category ON streams (category, name);

-- The single row every append transaction locks (FOR UPDATE) before numbering its events:
-- the serialization point that makes positions commit in order across every node.
CREATE TABLE head (
    id          integer PRIMARY KEY CHECK (id = 1),
    position    bigint  NOT NULL,
    recorded_at bigint  NOT NULL
);
INSERT INTO head (id, position, recorded_at) VALUES (1, 0, 0);
