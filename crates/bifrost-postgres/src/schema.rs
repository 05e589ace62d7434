//! The schema name, the SQL built for it once, and migrations.

use bifrost_core::{Error, Result};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::codec::{pg, unavailable};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// The columns every event query selects, in the order `codec::event_from_row` reads them.
pub(crate) const EVENT_COLUMNS: &str = "position, id, stream, version, aggregate_type, type, \
     schema_version, data, metadata, occurred_at, recorded_at";

/// The session setting an outbox transaction marks itself with (`SET LOCAL`), so that its
/// commit can tell it still runs inside that transaction.
pub(crate) const OUTBOX_SETTING: &str = "bifrost.outbox";

/// Every statement, with the schema name filled in once.
pub(crate) struct Sql {
    schema: String,
    quoted: String,
    /// The notification channel's name, as `pg_notify` takes it.
    pub(crate) channel: String,
    /// Whether an append transaction notifies `channel` of the new head; not when the head
    /// travels on an external cluster bus.
    pub(crate) head_on_notify: bool,
    pub(crate) listen: String,
    /// The consumer groups' channel: a payload is the id of a group whose fetchers should
    /// look again.
    pub(crate) groups_channel: String,
    pub(crate) groups_listen: String,
    /// The cluster bus's channel: a payload is a message or a reference to one (`cluster.rs`).
    pub(crate) bus_channel: String,
    pub(crate) bus_listen: String,
    pub(crate) lock_head: String,
    /// `lock_head` for an outbox transaction, which also says whether the transaction is
    /// still the one marked with `$1` and `READ COMMITTED`.
    pub(crate) lock_head_outbox: String,
    /// Whether the transaction is still the outbox transaction marked with `$1`.
    pub(crate) check_outbox: String,
    pub(crate) read_head: String,
    pub(crate) update_head: String,
    pub(crate) find_ids: String,
    pub(crate) find_streams: String,
    pub(crate) insert_events: String,
    pub(crate) upsert_streams: String,
    pub(crate) stream_state: String,
    pub(crate) delete_events: String,
    pub(crate) set_stream_state: String,
    pub(crate) notify: String,
    pub(crate) event_by_id: String,
    pub(crate) stream_info: String,
    pub(crate) read_stream_forward: String,
    pub(crate) read_stream_backward: String,
    pub(crate) clear_state_scopes: String,
    pub(crate) delete_state: String,
    pub(crate) put_state: String,
    pub(crate) read_state: String,
    pub(crate) scan_state: String,
}

impl Sql {
    pub(crate) fn new(schema: &str) -> Result<Self> {
        let valid = !schema.is_empty()
            && schema.len() <= 48
            && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && schema.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            return Err(Error::InvalidArgument(format!(
                "invalid schema name {schema:?}: use 1-48 characters of a-z 0-9 _, not starting with a digit"
            )));
        }
        let s = format!("\"{schema}\"");
        Ok(Self {
            schema: schema.to_owned(),
            channel: format!("bifrost_head_{schema}"),
            head_on_notify: true,
            listen: format!("LISTEN \"bifrost_head_{schema}\""),
            groups_channel: format!("bifrost_groups_{schema}"),
            groups_listen: format!("LISTEN \"bifrost_groups_{schema}\""),
            bus_channel: format!("bifrost_bus_{schema}"),
            bus_listen: format!("LISTEN \"bifrost_bus_{schema}\""),
            lock_head: format!("SELECT position, recorded_at FROM {s}.head WHERE id = 1 FOR UPDATE"),
            lock_head_outbox: format!(
                "SELECT position, recorded_at, coalesce(current_setting('{OUTBOX_SETTING}', true) = $1, false) \
                 AND current_setting('transaction_isolation') = 'read committed' \
                 FROM {s}.head WHERE id = 1 FOR UPDATE"
            ),
            check_outbox: format!("SELECT coalesce(current_setting('{OUTBOX_SETTING}', true) = $1, false)"),
            read_head: format!("SELECT position FROM {s}.head WHERE id = 1"),
            update_head: format!("UPDATE {s}.head SET position = $1, recorded_at = $2 WHERE id = 1"),
            find_ids: format!(
                "SELECT id, stream, version, position, type, data FROM {s}.events WHERE id = ANY($1::uuid[])"
            ),
            find_streams: format!(
                "SELECT name, version, state FROM {s}.streams WHERE name = ANY($1::text[])"
            ),
            insert_events: format!(
                "INSERT INTO {s}.events (position, id, stream, version, category, aggregate_type, type, \
                 schema_version, data, metadata, correlation_id, occurred_at, recorded_at) \
                 SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::bigint[], $5::text[], \
                 $6::text[], $7::text[], $8::integer[], $9::bytea[], $10::bytea[], $11::text[], \
                 $12::bigint[], $13::bigint[])"
            ),
            upsert_streams: format!(
                "INSERT INTO {s}.streams (name, category, aggregate_type, version, state, created_at, updated_at) \
                 SELECT n, c, a, v, 0, $5, $5 FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) \
                 AS t (n, c, a, v) \
                 ON CONFLICT (name) DO UPDATE SET version = excluded.version, state = 0, \
                 updated_at = excluded.updated_at"
            ),
            stream_state: format!("SELECT version, state FROM {s}.streams WHERE name = $1"),
            delete_events: format!("DELETE FROM {s}.events WHERE stream = $1"),
            set_stream_state: format!("UPDATE {s}.streams SET state = $2, updated_at = $3 WHERE name = $1"),
            notify: "SELECT pg_notify($1, $2)".to_owned(),
            event_by_id: format!("SELECT {EVENT_COLUMNS} FROM {s}.events WHERE id = $1"),
            stream_info: format!(
                "SELECT version, aggregate_type, created_at, updated_at, state FROM {s}.streams WHERE name = $1"
            ),
            read_stream_forward: format!(
                "SELECT {EVENT_COLUMNS} FROM {s}.events WHERE stream = $1 AND version BETWEEN $2 AND $3 \
                 ORDER BY version ASC"
            ),
            read_stream_backward: format!(
                "SELECT {EVENT_COLUMNS} FROM {s}.events WHERE stream = $1 AND version BETWEEN $2 AND $3 \
                 ORDER BY version DESC"
            ),
            clear_state_scopes: format!("DELETE FROM {s}.state WHERE scope = ANY($1::text[])"),
            delete_state: format!(
                "DELETE FROM {s}.state AS t USING unnest($1::text[], $2::text[]) AS d (scope, key) \
                 WHERE t.scope = d.scope AND t.key = d.key"
            ),
            put_state: format!(
                "INSERT INTO {s}.state (scope, key, value) \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[]) \
                 ON CONFLICT (scope, key) DO UPDATE SET value = excluded.value"
            ),
            read_state: format!("SELECT value FROM {s}.state WHERE scope = $1 AND key = $2"),
            scan_state: format!(
                "SELECT key, value FROM {s}.state WHERE scope = $1 AND key > $2 ORDER BY key LIMIT $3"
            ),
            quoted: s,
        })
    }

    pub(crate) fn schema(&self) -> &str {
        &self.schema
    }

    pub(crate) fn quoted_schema(&self) -> &str {
        &self.quoted
    }
}

/// Creates the schema and applies pending migrations. Serialised by an advisory lock, so
/// several nodes starting at once apply each migration exactly once.
pub(crate) async fn migrate(
    config: &tokio_postgres::Config,
    tls: MakeRustlsConnect,
    sql: &Sql,
) -> Result<()> {
    let (mut client, connection) = config.connect(tls).await.map_err(unavailable)?;
    let driver = tokio::spawn(connection);
    let lock_key = format!("bifrost-migrate:{}", sql.schema());
    let result = async {
        client.execute("SELECT pg_advisory_lock(hashtext($1))", &[&lock_key]).await.map_err(pg)?;
        client
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {0}; SET search_path TO {0}",
                sql.quoted_schema()
            ))
            .await
            .map_err(pg)?;
        let migrated = embedded::migrations::runner()
            .run_async(&mut client)
            .await
            .map_err(|e| Error::storage("schema migration failed", e));
        client.execute("SELECT pg_advisory_unlock(hashtext($1))", &[&lock_key]).await.map_err(pg)?;
        migrated.map(|_| ())
    }
    .await;
    drop(client);
    let _ = driver.await;
    result
}
