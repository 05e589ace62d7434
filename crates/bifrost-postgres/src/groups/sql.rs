//! The consumer groups' statements, built once for the store's schema.
//!
//! Time is the database's (`statement_timestamp()`, in microseconds), never a node's: every
//! node agrees on when a lease expires or a retry is due. A filter is two parameters: the
//! category rule (a regular expression) and the type patterns as regular expressions over `'.' || type` (an
//! empty array: every type), as the log's reads use them.

use crate::schema::{EVENT_COLUMNS, Sql};

/// The time now, in microseconds since the Unix epoch, on the database's clock.
const NOW: &str = "(extract(epoch from statement_timestamp()) * 1000000)::bigint";

/// The advisory-lock class of a group's feed and lease (see `lock`); apart from the state
/// keys' class and the migrations' single-key lock. Key 0 of the vacuum class says which
/// node vacuums.
const LOCK_CLASS: i32 = 1_650_877_012;
const VACUUM_CLASS: i32 = 1_650_877_013;

pub(crate) struct GroupSql {
    pub(crate) channel: String,
    pub(crate) find: String,
    pub(crate) list: String,
    pub(crate) create: String,
    pub(crate) head: String,
    pub(crate) lock_row: String,
    pub(crate) set_config: String,
    pub(crate) find_for_update: String,
    pub(crate) delete: String,
    pub(crate) lock: String,
    pub(crate) feed: String,
    pub(crate) lease: String,
    pub(crate) lease_followers: String,
    pub(crate) next_due: String,
    pub(crate) drop_messages: String,
    pub(crate) seen: String,
    pub(crate) ack: String,
    pub(crate) held: String,
    pub(crate) retry: String,
    pub(crate) park: String,
    pub(crate) notify: String,
    pub(crate) expired: String,
    pub(crate) count_timeouts: String,
    pub(crate) next_deadline: String,
    pub(crate) status: String,
    pub(crate) consumers: String,
    pub(crate) count_events: String,
    pub(crate) dead_letters: String,
    pub(crate) checkpoint: String,
    pub(crate) replay: String,
    pub(crate) discard: String,
    pub(crate) drop_unmatched: String,
    pub(crate) dead_rows: String,
    pub(crate) vacuum_turn: String,
    pub(crate) vacuum_done: String,
    pub(crate) vacuum: String,
    pub(crate) add_matched: String,
    pub(crate) requeue: String,
}

/// `e` matches the filter given by the parameters `$c` (a regular expression over the
/// category: the category asked for, or the tenant and `$` rules; see `filter_params`) and
/// `$t` (type regexes).
fn matches(c: u8, t: u8) -> String {
    format!(
        "(${c}::text IS NULL OR e.category ~ ${c}) AND (cardinality(${t}::text[]) = 0 OR ('.' || e.type) ~ ANY(${t}))"
    )
}

impl GroupSql {
    pub(crate) fn new(store: &Sql) -> Self {
        let s = store.quoted_schema();
        let e_columns: Vec<String> = EVENT_COLUMNS.split(", ").map(|c| format!("e.{c}")).collect();
        let e_columns = e_columns.join(", ");
        Self {
            channel: store.groups_channel.clone(),
            find: format!("SELECT id, config FROM {s}.groups WHERE kind = $1 AND name = $2"),
            list: format!("SELECT name FROM {s}.groups WHERE kind = $1 ORDER BY name"),
            create: format!(
                "INSERT INTO {s}.groups (kind, name, config, created_at, read_to) VALUES ($1, $2, $3, {NOW}, $4) \
                 ON CONFLICT (kind, name) DO NOTHING RETURNING id"
            ),
            head: format!("SELECT position FROM {s}.head WHERE id = 1"),
            lock_row: format!(
                "SELECT id, config, read_to FROM {s}.groups WHERE kind = $1 AND name = $2 FOR UPDATE"
            ),
            set_config: format!("UPDATE {s}.groups SET config = $2 WHERE id = $1"),
            find_for_update: format!("SELECT id FROM {s}.groups WHERE kind = $1 AND name = $2 FOR UPDATE"),
            delete: format!(
                "WITH g AS (DELETE FROM {s}.groups WHERE id = $1), \
                 m AS (DELETE FROM {s}.group_messages WHERE group_id = $1), \
                 d AS (DELETE FROM {s}.group_dead_letters WHERE group_id = $1), \
                 c AS (DELETE FROM {s}.group_consumers WHERE group_id = $1) \
                 SELECT 1"
            ),
            // Feeding and leasing of one group take turns: a feed never re-inserts what a
            // concurrent ack just deleted, and the in-flight limit holds exactly.
            lock: format!("SELECT pg_advisory_xact_lock({LOCK_CLASS}, ($1::bigint % 2147483647)::int)"),
            // Reads the log after read_to into the group's rows, while it holds fewer than $3:
            // the first $6 matching events within $2 positions (up to the committed head),
            // read_to moving past what was read. A deleted group reads nothing. (The bounds are
            // subqueries, not a join, so that they bound the scan of the log's key.)
            feed: format!(
                "WITH g AS (SELECT read_to FROM {s}.groups WHERE id = $1), \
                 top AS (SELECT g.read_to AS after, least(h.position, g.read_to + $2) AS upto \
                    FROM {s}.head h, g WHERE h.id = 1 AND h.position > g.read_to \
                    AND (SELECT count(*) FROM (SELECT 1 FROM {s}.group_messages \
                         WHERE group_id = $1 LIMIT $3) b) < $3), \
                 picked AS (SELECT e.position, {queue} AS stream FROM {s}.events e \
                    WHERE e.position > (SELECT after FROM top) AND e.position <= (SELECT upto FROM top) \
                    AND {m} ORDER BY e.position LIMIT $6), \
                 ins AS (INSERT INTO {s}.group_messages (group_id, position, stream) \
                    SELECT $1, position, stream FROM picked ON CONFLICT DO NOTHING) \
                 UPDATE {s}.groups SET read_to = CASE WHEN (SELECT count(*) FROM picked) < $6 THEN top.upto \
                    ELSE (SELECT max(position) FROM picked) END \
                 FROM top WHERE groups.id = $1 RETURNING read_to",
                m = matches(4, 5),
                queue = queue("$7")
            ),
            // The first row of each stream that has nothing out and is due, in log order,
            // within the in-flight limit $3; leased with the nonce $5 until now + $4. One pass
            // over the group's rows finds, per stream, its first row, whether any row is out
            // and when it is due (only a stream's first rows can wait for a retry: the latest
            // due time is the first row's). The result is an array, not a join, so that
            // whatever the statistics (a plan made while the table was empty) no plan can
            // compare every row with every other.
            lease: format!(
                "WITH room AS (SELECT $3::bigint - count(*) FILTER (WHERE leased) AS n \
                    FROM {s}.group_messages WHERE group_id = $1), \
                 heads AS (SELECT ARRAY(SELECT min(position) FROM {s}.group_messages WHERE group_id = $1 \
                    GROUP BY stream HAVING NOT bool_or(leased) AND max(due) <= {NOW} \
                    ORDER BY 1 LIMIT greatest(0, least($2, (SELECT n FROM room)))) AS a), \
                 pick AS (SELECT m.position FROM {s}.group_messages m \
                    WHERE m.group_id = $1 AND m.position = ANY ((SELECT a FROM heads)::bigint[]) \
                    FOR UPDATE OF m SKIP LOCKED), \
                 upd AS (UPDATE {s}.group_messages m SET leased = true, due = {NOW} + $4, lease = $5, \
                    leased_at = {NOW} FROM pick WHERE m.group_id = $1 AND m.position = pick.position \
                    RETURNING m.position, m.failures, m.stream), \
                 counted AS (UPDATE {s}.groups SET redeliveries = redeliveries + r.n \
                    FROM (SELECT count(*) AS n FROM upd WHERE failures > 0) r WHERE groups.id = $1 AND r.n > 0) \
                 SELECT {e_columns}, upd.failures, upd.position, upd.stream FROM upd \
                 LEFT JOIN {s}.events e ON e.position = upd.position ORDER BY upd.position"
            ),
            // The rows right after the leased first rows of streams $2, up to $3 per stream and
            // $6 in all, leased with them (a batch consumer settles them together).
            lease_followers: format!(
                "WITH pick AS (SELECT position FROM (SELECT position, row_number() OVER \
                    (PARTITION BY stream ORDER BY position) AS k FROM {s}.group_messages \
                    WHERE group_id = $1 AND stream = ANY($2) AND NOT leased) f WHERE k <= $3 \
                    ORDER BY position LIMIT $6), \
                 upd AS (UPDATE {s}.group_messages m SET leased = true, due = {NOW} + $4, lease = $5, \
                    leased_at = {NOW} FROM pick WHERE m.group_id = $1 AND m.position = pick.position \
                    RETURNING m.position, m.failures, m.stream) \
                 SELECT {e_columns}, upd.failures, upd.position, upd.stream FROM upd \
                 LEFT JOIN {s}.events e ON e.position = upd.position ORDER BY upd.position"
            ),
            next_due: format!(
                "SELECT min(due) - {NOW} FROM {s}.group_messages WHERE group_id = $1 AND NOT leased AND due > {NOW}"
            ),
            drop_messages: format!(
                "DELETE FROM {s}.group_messages WHERE group_id = $1 AND position = ANY($2)"
            ),
            seen: format!(
                "INSERT INTO {s}.group_consumers (group_id, name, last_seen) VALUES ($1, $2, {NOW}) \
                 ON CONFLICT (group_id, name) DO UPDATE SET last_seen = excluded.last_seen"
            ),
            // Deletes the rows still leased under the tokens ($2 positions, $3 nonces).
            ack: format!(
                "WITH d AS (DELETE FROM {s}.group_messages m \
                    USING unnest($2::bigint[], $3::bigint[]) AS t (position, lease) \
                    WHERE m.group_id = $1 AND m.position = t.position AND m.leased AND m.lease = t.lease \
                    RETURNING m.position, m.leased_at) \
                 SELECT d.position, {NOW} - d.leased_at FROM d"
            ),
            held: format!(
                "SELECT m.position, m.failures FROM {s}.group_messages m \
                 JOIN unnest($2::bigint[], $3::bigint[]) AS t (position, lease) \
                 ON m.position = t.position AND m.lease = t.lease \
                 WHERE m.group_id = $1 AND m.leased ORDER BY m.position FOR UPDATE OF m"
            ),
            retry: format!(
                "UPDATE {s}.group_messages m SET leased = false, failures = t.failures, due = {NOW} + t.delay, \
                 reason = t.reason FROM unnest($2::bigint[], $3::integer[], $4::bigint[], $5::text[]) \
                 AS t (position, failures, delay, reason) WHERE m.group_id = $1 AND m.position = t.position"
            ),
            park: format!(
                "WITH d AS (DELETE FROM {s}.group_messages m \
                    USING unnest($2::bigint[], $3::integer[], $4::text[]) AS t (position, attempts, reason) \
                    WHERE m.group_id = $1 AND m.position = t.position \
                    RETURNING m.position, t.attempts, t.reason) \
                 INSERT INTO {s}.group_dead_letters \
                    (group_id, position, event_id, stream, type, attempts, reason, parked_at) \
                 SELECT $1, e.position, e.id, e.stream, e.type, d.attempts, d.reason, {NOW} \
                 FROM d JOIN {s}.events e ON e.position = d.position \
                 ON CONFLICT (group_id, position) DO UPDATE SET attempts = excluded.attempts, \
                    reason = excluded.reason, parked_at = excluded.parked_at"
            ),
            // Outside any transaction that writes: a notifying transaction commits while
            // holding PostgreSQL's notification lock, so writes that notified would commit (and
            // flush) one at a time.
            notify: "SELECT pg_notify($1, id::text) FROM unnest($2::bigint[]) AS id".to_owned(),
            expired: format!(
                "SELECT m.group_id, m.position, m.failures, g.config FROM {s}.group_messages m \
                 JOIN {s}.groups g ON g.id = m.group_id WHERE m.leased AND m.due <= {NOW} \
                 ORDER BY m.due LIMIT $1 FOR UPDATE OF m SKIP LOCKED"
            ),
            count_timeouts: format!("UPDATE {s}.groups SET timeouts = timeouts + $2 WHERE id = $1"),
            next_deadline: format!("SELECT min(due) - {NOW} FROM {s}.group_messages WHERE leased"),
            status: format!(
                "SELECT g.id, g.config, g.created_at, g.read_to, g.redeliveries, g.timeouts, \
                 (SELECT min(position) FROM {s}.group_messages WHERE group_id = g.id AND NOT replay), \
                 (SELECT count(*) FROM {s}.group_messages WHERE group_id = g.id), \
                 (SELECT count(*) FROM {s}.group_messages WHERE group_id = g.id AND leased), \
                 (SELECT count(*) FROM {s}.group_messages WHERE group_id = g.id AND NOT leased AND due > {NOW}), \
                 (SELECT count(*) FROM {s}.group_dead_letters WHERE group_id = g.id), \
                 (SELECT position FROM {s}.head WHERE id = 1) \
                 FROM {s}.groups g WHERE g.kind = $1 AND g.name = $2"
            ),
            consumers: format!(
                "SELECT name, last_seen FROM {s}.group_consumers WHERE group_id = $1 ORDER BY name"
            ),
            count_events: format!(
                "SELECT count(*) FROM {s}.events e WHERE e.position > $1 AND e.position <= $2 AND {m}",
                m = matches(3, 4)
            ),
            dead_letters: format!(
                "SELECT {e_columns}, d.event_id, d.position, d.stream, d.type, d.attempts, d.reason, d.parked_at \
                 FROM {s}.group_dead_letters d LEFT JOIN {s}.events e ON e.id = d.event_id \
                 WHERE d.group_id = $1 AND d.position > $2 ORDER BY d.position LIMIT $3"
            ),
            checkpoint: format!(
                "SELECT coalesce((SELECT min(position) - 1 FROM {s}.group_messages \
                 WHERE group_id = $1 AND NOT replay), (SELECT read_to FROM {s}.groups WHERE id = $1))"
            ),
            // Moves the selected dead letters back ($3: these event ids, $4: up to this
            // position; both NULL: all), with fresh attempts; those whose event is gone are
            // dropped. Below the checkpoint $2 a row is a replay, which does not hold it back.
            replay: format!(
                "WITH sel AS (DELETE FROM {s}.group_dead_letters d WHERE d.group_id = $1 \
                    AND ($3::uuid[] IS NULL OR d.event_id = ANY($3)) \
                    AND ($4::bigint IS NULL OR d.position <= $4) RETURNING d.event_id) \
                 INSERT INTO {s}.group_messages (group_id, position, stream, replay) \
                 SELECT $1, e.position, {queue}, e.position <= $2 FROM sel \
                 JOIN {s}.events e ON e.id = sel.event_id \
                 ON CONFLICT (group_id, position) DO NOTHING RETURNING position",
                queue = queue("$5")
            ),
            discard: format!("DELETE FROM {s}.group_dead_letters WHERE group_id = $1 AND event_id = $2"),
            dead_rows: format!(
                "SELECT n_dead_tup, n_live_tup FROM pg_stat_user_tables \
                 WHERE schemaname = '{schema}' AND relname = 'group_messages'",
                schema = store.schema()
            ),
            vacuum_turn: format!("SELECT pg_try_advisory_lock({VACUUM_CLASS}, 0)"),
            vacuum_done: format!("SELECT pg_advisory_unlock({VACUUM_CLASS}, 0)"),
            vacuum: format!("VACUUM (ANALYZE) {s}.group_messages"),
            drop_unmatched: format!(
                "DELETE FROM {s}.group_messages m WHERE m.group_id = $1 AND NOT EXISTS \
                 (SELECT 1 FROM {s}.events e WHERE e.position = m.position AND {m})",
                m = matches(2, 3)
            ),
            add_matched: format!(
                "INSERT INTO {s}.group_messages (group_id, position, stream) \
                 SELECT $1, e.position, {queue} FROM {s}.events e \
                 WHERE e.position > $2 AND e.position <= $3 AND {new} AND NOT ({old}) \
                 ON CONFLICT DO NOTHING",
                new = matches(4, 5),
                old = matches(6, 7),
                queue = queue("$8")
            ),
            // A changed order: each row's queue again, from its event.
            requeue: format!(
                "UPDATE {s}.group_messages m SET stream = {queue} FROM {s}.events e \
                 WHERE m.group_id = $1 AND e.position = m.position",
                queue = queue("$2")
            ),
        }
    }
}

/// The queue (the `stream` column of `group_messages`) of event `e`: its stream when the
/// group keeps per-stream order (the boolean parameter `ordered`), else `@<position>`, a
/// queue of its own.
fn queue(ordered: &str) -> String {
    format!("CASE WHEN {ordered}::boolean THEN e.stream ELSE '@' || e.position::text END")
}
