-- The cluster bus's messages too large for a notification (a NOTIFY payload is shorter
-- than 8000 bytes): the publishing node inserts the message here and notifies its id, and
-- every node reads it by that id. Rows are only needed while the notification is on its
-- way, so they are pruned after about a minute, and the table is UNLOGGED: it costs no WAL,
-- and a crash that empties it loses only messages the bus never promised to keep.
CREATE UNLOGGED TABLE bus_messages (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic      text        NOT NULL,
    payload    text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
