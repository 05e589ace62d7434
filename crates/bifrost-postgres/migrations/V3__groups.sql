-- Consumer groups kept in the database, so that every node on it hands out, acks and
-- expires the same leases: a lease is a row, and a node that dies leaves nothing behind
-- that only it knew. See ARCHITECTURE.md, "Consumer groups on several nodes".

-- One row per group. kind: 'group' (the HTTP API) or 'consumer' (the in-process bus's
-- durable consumers), two name spaces. id is never reused, so nothing of a deleted group
-- can meet a new group of the same name. The other tables refer to it by group_id without a
-- foreign key: a key's check per inserted row would double the cost of feeding a group, and
-- deleting a group deletes its rows in the same transaction.
CREATE TABLE groups (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind         text   NOT NULL,
    name         text   COLLATE "C" NOT NULL,
    config       bytea  NOT NULL, -- the engine's settings, JSON
    created_at   bigint NOT NULL, -- microseconds since the Unix epoch
    read_to      bigint NOT NULL, -- every matching event up to here is in group_messages, or settled
    redeliveries bigint NOT NULL DEFAULT 0,
    timeouts     bigint NOT NULL DEFAULT 0,
    UNIQUE (kind, name)
);

-- The group's unsettled events that were read from the log: acked or parked ones are
-- deleted. A stream's first row is the only one that can be handed out, and only while no
-- row of its stream is leased.
CREATE TABLE group_messages (
    group_id  bigint  NOT NULL,
    position  bigint  NOT NULL,
    stream    text    COLLATE "C" NOT NULL,
    failures  integer NOT NULL DEFAULT 0,     -- deliveries that failed (nacked or timed out)
    leased    boolean NOT NULL DEFAULT false,
    due       bigint  NOT NULL DEFAULT 0,     -- µs: the lease's deadline when leased, else when it may go out
    lease     bigint  NOT NULL DEFAULT 0,     -- the lease's nonce: the low half of its token
    leased_at bigint  NOT NULL DEFAULT 0,
    reason    text,                           -- the last failure's reason
    replay    boolean NOT NULL DEFAULT false, -- replayed from the dead letters, below the checkpoint
    PRIMARY KEY (group_id, position)
) WITH (fillfactor = 70);
-- No index covers the columns a lease, a nack or a timeout changes (leased, due, lease,
-- failures), and pages keep room: those updates are heap-only, cleaned up as pages are read,
-- so a busy group leaves dead index entries only for what it acked.
CREATE INDEX group_messages_stream ON group_messages (group_id, stream, position);

CREATE TABLE group_dead_letters (
    group_id  bigint  NOT NULL,
    position  bigint  NOT NULL,
    event_id  uuid    NOT NULL,
    stream    text    NOT NULL,
    type      text    NOT NULL,
    attempts  integer NOT NULL,
    reason    text    NOT NULL,
    parked_at bigint  NOT NULL,
    PRIMARY KEY (group_id, position)
);
CREATE INDEX group_dead_letters_event ON group_dead_letters (group_id, event_id);

CREATE TABLE group_consumers (
    group_id  bigint NOT NULL,
    name      text   COLLATE "C" NOT NULL,
    last_seen bigint NOT NULL,
    PRIMARY KEY (group_id, name)
);
