//! Configuration: defaults, a TOML file, `BIFROST_*` environment variables and flags.
//!
//! Precedence is flag > environment > file > default. Clap reads a flag and its
//! environment twin into one [`ConfigLayer`] (the flag wins); [`Settings::resolve`] is the
//! merge of that layer over the file's layer over the defaults, so the rules are testable
//! without touching the process environment; the only file it reads is a JWT public key
//! named by the settings, checked at once ([`BadSetting`], exit code 2).

use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use bifrost_api::{BridgeRequest, CompatibilityBody};
use bifrost_postgres::PostgresOptions;
use bifrost_redis::RedisOptions;
use bifrost_server::{
    AuthConfig, ClusterBusSpec, ClusterConfig, JwtConfig, JwtKey, LimitsConfig, MIN_ADMIN_KEY_CHARS,
    RealtimeConfig, SchemasConfig, ServerConfig, TlsFiles,
};
use bifrost_sqlite::Durability;
use clap::Args;
use serde::Deserialize;

use crate::store::StoreSpec;

pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1:7070";
pub(crate) const DEFAULT_DATA_DIR: &str = "./bifrost-data";
pub(crate) const DEFAULT_LOG: &str = "info";
/// `cluster.poll_ms`: how long a lost wake-up between nodes may delay delivery.
const DEFAULT_CLUSTER_POLL: Duration = Duration::from_secs(1);

/// Every configurable key, each optional. The same struct is the flags (with their
/// environment twins) and the TOML file, so a key cannot exist in one and not the other.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ConfigLayer {
    /// Address to listen on [default: 127.0.0.1:7070].
    #[arg(long, env = "BIFROST_LISTEN", value_name = "ADDR")]
    pub(crate) listen: Option<String>,

    /// Directory of the embedded store [default: ./bifrost-data].
    #[arg(long, env = "BIFROST_DATA_DIR", value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,

    /// The store: absent for the embedded store in the data dir, `sqlite://DIR`, `memory:`
    /// (nothing kept after exit), or `postgres://USER[:PASSWORD]@HOST[:PORT]/DB`.
    #[arg(long, env = "BIFROST_STORE", value_name = "URL")]
    pub(crate) store: Option<String>,

    /// `full`: an append is acknowledged once it is on disk (fsync); `relaxed`: once it is
    /// committed, a crash of the machine may lose the last appends [default: full].
    #[arg(long, env = "BIFROST_DURABILITY", value_name = "MODE", value_parser = ["full", "relaxed"])]
    pub(crate) durability: Option<String>,

    /// Largest request body accepted, in bytes [default: 4194304].
    #[arg(long, env = "BIFROST_MAX_BODY_BYTES", value_name = "BYTES")]
    pub(crate) max_body_bytes: Option<usize>,

    /// Largest `data` of one event, in bytes [default: 1048576].
    #[arg(long, env = "BIFROST_MAX_EVENT_BYTES", value_name = "BYTES")]
    pub(crate) max_event_bytes: Option<usize>,

    /// Most events in one append request [default: 1000].
    #[arg(long, env = "BIFROST_MAX_EVENTS_PER_APPEND", value_name = "N")]
    pub(crate) max_events_per_append: Option<usize>,

    /// Interval of SSE heartbeat comments, in milliseconds [default: 15000].
    #[arg(long, env = "BIFROST_SSE_HEARTBEAT_MS", value_name = "MS")]
    pub(crate) sse_heartbeat_ms: Option<u64>,

    /// PostgreSQL: the schema that holds Bifrost's tables, created if missing [default: bifrost].
    #[arg(long, env = "BIFROST_PG_SCHEMA", value_name = "NAME")]
    pub(crate) pg_schema: Option<String>,

    /// Redis store: the prefix of every key, so that several clusters can share one Redis
    /// [default: bifrost].
    #[arg(long, env = "BIFROST_REDIS_PREFIX", value_name = "PREFIX")]
    pub(crate) redis_prefix: Option<String>,

    /// PostgreSQL: most pooled connections, shared by reads and the writer [default: 10].
    #[arg(long, env = "BIFROST_PG_POOL_SIZE", value_name = "N")]
    pub(crate) pg_pool_size: Option<usize>,

    /// PostgreSQL: how long opening a connection may take, in milliseconds [default: 10000].
    #[arg(long, env = "BIFROST_PG_CONNECT_TIMEOUT_MS", value_name = "MS")]
    pub(crate) pg_connect_timeout_ms: Option<u64>,

    /// PostgreSQL: pooled connections idle longer than this are closed, in milliseconds
    /// [default: 30000].
    #[arg(long, env = "BIFROST_PG_IDLE_TIMEOUT_MS", value_name = "MS")]
    pub(crate) pg_idle_timeout_ms: Option<u64>,

    /// PostgreSQL: how long a request waits for a pooled connection before it is answered
    /// 503, in milliseconds [default: 10000].
    #[arg(long, env = "BIFROST_PG_WAIT_TIMEOUT_MS", value_name = "MS")]
    pub(crate) pg_wait_timeout_ms: Option<u64>,

    /// Log filter (tracing `EnvFilter` syntax, e.g. `info,bifrost_server=debug`) [default: info].
    #[arg(long, env = "BIFROST_LOG", value_name = "FILTER")]
    pub(crate) log: Option<String>,

    /// Webhooks may reach addresses in this CIDR although the SSRF guard refuses its class
    /// (loopback, private, link-local, ...); repeatable. The environment twin is
    /// comma-separated. TOML: `webhooks.allow_cidrs`.
    #[arg(
        long = "webhook-allow-cidr",
        env = "BIFROST_WEBHOOK_ALLOW_CIDRS",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    #[serde(skip)]
    pub(crate) webhook_allow_cidrs: Option<Vec<String>>,

    /// The longest `Retry-After` of a receiver that webhooks honour, in seconds [default:
    /// 3600]. TOML: `webhooks.retry_after_max_s`.
    #[arg(long = "webhook-retry-after-max-s", env = "BIFROST_WEBHOOK_RETRY_AFTER_MAX_S", value_name = "S")]
    #[serde(skip)]
    pub(crate) webhook_retry_after_max_s: Option<u64>,

    /// The `[webhooks]` table of the TOML file.
    #[arg(skip)]
    pub(crate) webhooks: Option<WebhooksTable>,

    /// This node's name among the nodes on one store, in `Bifrost-Node` and
    /// `/v1/cluster/nodes` [default: <hostname>-<8 hex>, new at every start].
    #[arg(long, env = "BIFROST_NODE_ID", value_name = "ID")]
    pub(crate) node_id: Option<String>,

    /// How often this node writes its heartbeat, in ms [default: 1000]. TOML:
    /// `cluster.heartbeat_ms`.
    #[arg(long = "cluster-heartbeat-ms", env = "BIFROST_CLUSTER_HEARTBEAT_MS", value_name = "MS")]
    #[serde(skip)]
    pub(crate) cluster_heartbeat_ms: Option<u64>,

    /// A node silent this long (ms) is dead and its leases expire [default: 10000]. TOML:
    /// `cluster.lease_timeout_ms`.
    #[arg(long = "cluster-lease-timeout-ms", env = "BIFROST_CLUSTER_LEASE_TIMEOUT_MS", value_name = "MS")]
    #[serde(skip)]
    pub(crate) cluster_lease_timeout_ms: Option<u64>,

    /// What carries wake-ups, presence and ephemeral messages between the nodes of one
    /// store: `postgres` (LISTEN/NOTIFY), `nats://HOST[:PORT]` or `redis://HOST[:PORT]`
    /// [default: postgres]. TOML: `cluster.bus`.
    #[arg(long = "cluster-bus", env = "BIFROST_CLUSTER_BUS", value_name = "BUS")]
    #[serde(skip)]
    pub(crate) cluster_bus: Option<String>,

    /// A lost wake-up between nodes delays delivery by at most this many ms: the fallback
    /// poll of the head and of the consumer groups [default: 1000]. TOML: `cluster.poll_ms`.
    #[arg(long = "cluster-poll-ms", env = "BIFROST_CLUSTER_POLL_MS", value_name = "MS")]
    #[serde(skip)]
    pub(crate) cluster_poll_ms: Option<u64>,

    /// The `[cluster]` table of the TOML file.
    #[arg(skip)]
    pub(crate) cluster: Option<ClusterTable>,

    /// `[[bridges]]` in the TOML file: each a `name` and the body of `PUT /v1/bridges/{name}`.
    /// Applied at start; the API cannot change or delete them.
    #[arg(skip)]
    pub(crate) bridges: Option<Vec<serde_json::Map<String, serde_json::Value>>>,

    /// WebSocket: frames queued for one connection before it counts as a slow consumer
    /// [default: 1000]. TOML: `realtime.queue_size`.
    #[arg(long, env = "BIFROST_REALTIME_QUEUE_SIZE", value_name = "N")]
    #[serde(skip)]
    pub(crate) realtime_queue_size: Option<usize>,

    /// WebSocket: how many events back `since_position` recovers [default: 10000]. TOML:
    /// `realtime.recovery_max_events`.
    #[arg(long, env = "BIFROST_REALTIME_RECOVERY_MAX_EVENTS", value_name = "N")]
    #[serde(skip)]
    pub(crate) realtime_recovery_max_events: Option<u64>,

    /// WebSocket: subscriptions of one connection [default: 100]. TOML:
    /// `realtime.max_subscriptions`.
    #[arg(long, env = "BIFROST_REALTIME_MAX_SUBSCRIPTIONS", value_name = "N")]
    #[serde(skip)]
    pub(crate) realtime_max_subscriptions: Option<usize>,

    /// WebSocket: seconds between pings [default: 25]. TOML: `realtime.ping_interval_s`.
    #[arg(long, env = "BIFROST_REALTIME_PING_INTERVAL_S", value_name = "S")]
    #[serde(skip)]
    pub(crate) realtime_ping_interval_s: Option<u64>,

    /// WebSocket: seconds a connection may stay silent after a ping [default: 10]. TOML:
    /// `realtime.pong_timeout_s`.
    #[arg(long, env = "BIFROST_REALTIME_PONG_TIMEOUT_S", value_name = "S")]
    #[serde(skip)]
    pub(crate) realtime_pong_timeout_s: Option<u64>,

    /// WebSocket: largest frame a client may send, in bytes [default: 65536]. TOML:
    /// `realtime.max_frame_bytes`.
    #[arg(long, env = "BIFROST_REALTIME_MAX_FRAME_BYTES", value_name = "BYTES")]
    #[serde(skip)]
    pub(crate) realtime_max_frame_bytes: Option<usize>,

    /// WebSocket: connections without a token are let in (no user, no publish, not in
    /// presence) [default: false]. TOML: `realtime.allow_anonymous`.
    #[arg(
        long,
        env = "BIFROST_REALTIME_ALLOW_ANONYMOUS",
        value_name = "BOOL",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    #[serde(skip)]
    pub(crate) realtime_allow_anonymous: Option<bool>,

    /// WebSocket: channel patterns anonymous connections may subscribe to (exact, or a
    /// trailing `*` for a prefix); repeatable. The environment twin is comma-separated
    /// [default: room:*]. TOML: `realtime.anonymous_channels`.
    #[arg(
        long = "realtime-anonymous-channel",
        env = "BIFROST_REALTIME_ANONYMOUS_CHANNELS",
        value_name = "PATTERN",
        value_delimiter = ','
    )]
    #[serde(skip)]
    pub(crate) realtime_anonymous_channels: Option<Vec<String>>,

    /// WebSocket: seconds a closed connection stays in its rooms' presence [default: 5].
    /// TOML: `realtime.presence_grace_s`.
    #[arg(long, env = "BIFROST_REALTIME_PRESENCE_GRACE_S", value_name = "S")]
    #[serde(skip)]
    pub(crate) realtime_presence_grace_s: Option<u64>,

    /// The `[realtime]` table of the TOML file.
    #[arg(skip)]
    pub(crate) realtime: Option<RealtimeTable>,

    /// The admin key: a credential with every scope of the default tenant (at least 32
    /// characters); setting it switches auth on. TOML: `auth.admin_key`.
    #[arg(long, env = "BIFROST_ADMIN_KEY", value_name = "KEY", hide_env_values = true)]
    #[serde(skip)]
    pub(crate) admin_key: Option<String>,

    /// Every /v1 route needs a credential even with no admin key and no JWT key (API keys
    /// only) [default: false]. TOML: `auth.required`.
    #[arg(long, env = "BIFROST_AUTH_REQUIRED", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip)]
    pub(crate) auth_required: Option<bool>,

    /// /metrics needs an admin credential when auth is on [default: false]. TOML:
    /// `auth.protect_metrics`.
    #[arg(long, env = "BIFROST_AUTH_PROTECT_METRICS", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip)]
    pub(crate) auth_protect_metrics: Option<bool>,

    /// JWTs signed with this HS256 secret authenticate API calls and WebSocket connections
    /// (and switch auth on). TOML: `auth.jwt.secret`.
    #[arg(long, env = "BIFROST_JWT_SECRET", value_name = "SECRET", hide_env_values = true)]
    #[serde(skip)]
    pub(crate) jwt_secret: Option<String>,

    /// JWTs signed with the private half of this PEM public key (RSA: RS256, P-256: ES256)
    /// authenticate API calls and WebSocket connections; read at start. TOML:
    /// `auth.jwt.public_key_file`.
    #[arg(long, env = "BIFROST_JWT_PUBLIC_KEY_FILE", value_name = "FILE")]
    #[serde(skip)]
    pub(crate) jwt_public_key_file: Option<PathBuf>,

    /// JWTs are checked with the keys of this JSON Web Key Set file, by `kid` (RSA: RS256,
    /// P-256: ES256); read at start. TOML: `auth.jwt.jwks_file`.
    #[arg(long, env = "BIFROST_JWT_JWKS_FILE", value_name = "FILE")]
    #[serde(skip)]
    pub(crate) jwt_jwks_file: Option<PathBuf>,

    /// A JWT's `iss` must be this. TOML: `auth.jwt.issuer`.
    #[arg(long, env = "BIFROST_AUTH_JWT_ISSUER", value_name = "ISS")]
    #[serde(skip)]
    pub(crate) jwt_issuer: Option<String>,

    /// A JWT's `aud` must name this. TOML: `auth.jwt.audience`.
    #[arg(long, env = "BIFROST_AUTH_JWT_AUDIENCE", value_name = "AUD")]
    #[serde(skip)]
    pub(crate) jwt_audience: Option<String>,

    /// Seconds of clock skew allowed on a JWT's `exp` and `nbf` [default: 60]. TOML:
    /// `auth.jwt.leeway_s`.
    #[arg(long, env = "BIFROST_AUTH_JWT_LEEWAY_S", value_name = "S")]
    #[serde(skip)]
    pub(crate) jwt_leeway_s: Option<u64>,

    /// The `[auth]` table of the TOML file.
    #[arg(skip)]
    pub(crate) auth: Option<AuthTable>,

    /// Requests per second of one caller (credential, or IP address when auth is off); 0:
    /// no limit [default: 0]. Over it: 429 with Retry-After. TOML: `limits.requests_per_s`.
    #[arg(long, env = "BIFROST_LIMITS_REQUESTS_PER_S", value_name = "N")]
    #[serde(skip)]
    pub(crate) limits_requests_per_s: Option<u32>,

    /// Appended events per second of one caller; 0: no limit [default: 0]. TOML:
    /// `limits.events_per_s`.
    #[arg(long, env = "BIFROST_LIMITS_EVENTS_PER_S", value_name = "N")]
    #[serde(skip)]
    pub(crate) limits_events_per_s: Option<u32>,

    /// Seconds of its rate a caller may spend at once [default: 1]. TOML: `limits.burst_s`.
    #[arg(long, env = "BIFROST_LIMITS_BURST_S", value_name = "S")]
    #[serde(skip)]
    pub(crate) limits_burst_s: Option<u32>,

    /// The `[limits]` table of the TOML file.
    #[arg(skip)]
    pub(crate) limits: Option<LimitsTable>,

    /// Serve HTTPS (and WSS) only, with this PEM certificate chain; needs --tls-key. TOML:
    /// `tls.cert`.
    #[arg(long, env = "BIFROST_TLS_CERT", value_name = "FILE")]
    #[serde(skip)]
    pub(crate) tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert. TOML: `tls.key`.
    #[arg(long, env = "BIFROST_TLS_KEY", value_name = "FILE")]
    #[serde(skip)]
    pub(crate) tls_key: Option<PathBuf>,

    /// The `[tls]` table of the TOML file.
    #[arg(skip)]
    pub(crate) tls: Option<TlsTable>,

    /// The compatibility a new schema version must keep when it names none: backward or
    /// none [default: backward]. TOML: `schemas.compatibility`.
    #[arg(long, env = "BIFROST_SCHEMAS_COMPATIBILITY", value_name = "MODE")]
    #[serde(skip)]
    pub(crate) schemas_compatibility: Option<String>,

    /// An event whose version of a registered type has no schema: reject or accept
    /// [default: reject]. TOML: `schemas.unknown_version`.
    #[arg(long, env = "BIFROST_SCHEMAS_UNKNOWN_VERSION", value_name = "MODE")]
    #[serde(skip)]
    pub(crate) schemas_unknown_version: Option<String>,

    /// Events of a type with no schema are refused [default: false]. TOML:
    /// `schemas.required`.
    #[arg(long, env = "BIFROST_SCHEMAS_REQUIRED", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip)]
    pub(crate) schemas_required: Option<bool>,

    /// The `[schemas]` table of the TOML file.
    #[arg(skip)]
    pub(crate) schemas: Option<SchemasTable>,
}

/// `[schemas]` in the TOML file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct SchemasTable {
    pub(crate) compatibility: Option<String>,
    pub(crate) unknown_version: Option<String>,
    pub(crate) required: Option<bool>,
}

/// `[tls]` in the TOML file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct TlsTable {
    pub(crate) cert: Option<PathBuf>,
    pub(crate) key: Option<PathBuf>,
}

/// `[limits]` in the TOML file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct LimitsTable {
    pub(crate) requests_per_s: Option<u32>,
    pub(crate) events_per_s: Option<u32>,
    pub(crate) burst_s: Option<u32>,
}

/// `[auth]` in the TOML file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct AuthTable {
    pub(crate) admin_key: Option<String>,
    pub(crate) required: Option<bool>,
    pub(crate) protect_metrics: Option<bool>,
    pub(crate) jwt: Option<JwtTable>,
}

/// `[auth.jwt]` in the TOML file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct JwtTable {
    pub(crate) secret: Option<String>,
    pub(crate) public_key_file: Option<PathBuf>,
    pub(crate) jwks_file: Option<PathBuf>,
    pub(crate) issuer: Option<String>,
    pub(crate) audience: Option<String>,
    pub(crate) leeway_s: Option<u64>,
}

/// A setting the server cannot start with. The binary exits with code 2 for it, as for a
/// bad flag; the message names the setting.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct BadSetting(String);

/// `[realtime]` in the TOML file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RealtimeTable {
    pub(crate) queue_size: Option<usize>,
    pub(crate) recovery_max_events: Option<u64>,
    pub(crate) max_subscriptions: Option<usize>,
    pub(crate) ping_interval_s: Option<u64>,
    pub(crate) pong_timeout_s: Option<u64>,
    pub(crate) max_frame_bytes: Option<usize>,
    pub(crate) presence_grace_s: Option<u64>,
    pub(crate) allow_anonymous: Option<bool>,
    pub(crate) anonymous_channels: Option<Vec<String>>,
}

/// `[cluster]` in the TOML file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ClusterTable {
    pub(crate) heartbeat_ms: Option<u64>,
    pub(crate) lease_timeout_ms: Option<u64>,
    pub(crate) bus: Option<String>,
    pub(crate) poll_ms: Option<u64>,
}

/// `[webhooks]` in the TOML file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct WebhooksTable {
    pub(crate) allow_cidrs: Option<Vec<String>>,
    pub(crate) retry_after_max_s: Option<u64>,
}

impl ConfigLayer {
    /// Reads a config file. A file named explicitly must exist; unknown keys are errors.
    pub(crate) fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::from_toml(&text).with_context(|| format!("config file {}", path.display()))
    }

    pub(crate) fn from_toml(text: &str) -> anyhow::Result<Self> {
        toml::from_str(text).map_err(|e| {
            // toml's Display draws a multi-line snippet; errors here are one line.
            let line = e.span().map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
            let message = e.message().trim().replace('\n', " ");
            match line {
                Some(line) => anyhow::anyhow!("line {line}: {message}"),
                None => anyhow::anyhow!("{message}"),
            }
        })
    }

    /// `self` where it has a value, else `lower`.
    fn over(self, lower: Self) -> Self {
        Self {
            listen: self.listen.or(lower.listen),
            data_dir: self.data_dir.or(lower.data_dir),
            store: self.store.or(lower.store),
            durability: self.durability.or(lower.durability),
            max_body_bytes: self.max_body_bytes.or(lower.max_body_bytes),
            max_event_bytes: self.max_event_bytes.or(lower.max_event_bytes),
            max_events_per_append: self.max_events_per_append.or(lower.max_events_per_append),
            sse_heartbeat_ms: self.sse_heartbeat_ms.or(lower.sse_heartbeat_ms),
            pg_schema: self.pg_schema.or(lower.pg_schema),
            redis_prefix: self.redis_prefix.or(lower.redis_prefix),
            pg_pool_size: self.pg_pool_size.or(lower.pg_pool_size),
            pg_connect_timeout_ms: self.pg_connect_timeout_ms.or(lower.pg_connect_timeout_ms),
            pg_idle_timeout_ms: self.pg_idle_timeout_ms.or(lower.pg_idle_timeout_ms),
            pg_wait_timeout_ms: self.pg_wait_timeout_ms.or(lower.pg_wait_timeout_ms),
            log: self.log.or(lower.log),
            webhook_allow_cidrs: self.webhook_allow_cidrs.or(lower.webhook_allow_cidrs),
            webhook_retry_after_max_s: self.webhook_retry_after_max_s.or(lower.webhook_retry_after_max_s),
            webhooks: self.webhooks.or(lower.webhooks),
            node_id: self.node_id.or(lower.node_id),
            cluster_heartbeat_ms: self.cluster_heartbeat_ms.or(lower.cluster_heartbeat_ms),
            cluster_lease_timeout_ms: self.cluster_lease_timeout_ms.or(lower.cluster_lease_timeout_ms),
            cluster_bus: self.cluster_bus.or(lower.cluster_bus),
            cluster_poll_ms: self.cluster_poll_ms.or(lower.cluster_poll_ms),
            cluster: self.cluster.or(lower.cluster),
            limits_requests_per_s: self.limits_requests_per_s.or(lower.limits_requests_per_s),
            limits_events_per_s: self.limits_events_per_s.or(lower.limits_events_per_s),
            limits_burst_s: self.limits_burst_s.or(lower.limits_burst_s),
            limits: self.limits.or(lower.limits),
            tls_cert: self.tls_cert.or(lower.tls_cert),
            tls_key: self.tls_key.or(lower.tls_key),
            tls: self.tls.or(lower.tls),
            schemas_compatibility: self.schemas_compatibility.or(lower.schemas_compatibility),
            schemas_unknown_version: self.schemas_unknown_version.or(lower.schemas_unknown_version),
            schemas_required: self.schemas_required.or(lower.schemas_required),
            schemas: self.schemas.or(lower.schemas),
            bridges: self.bridges.or(lower.bridges),
            realtime_queue_size: self.realtime_queue_size.or(lower.realtime_queue_size),
            realtime_recovery_max_events: self
                .realtime_recovery_max_events
                .or(lower.realtime_recovery_max_events),
            realtime_max_subscriptions: self.realtime_max_subscriptions.or(lower.realtime_max_subscriptions),
            realtime_ping_interval_s: self.realtime_ping_interval_s.or(lower.realtime_ping_interval_s),
            realtime_pong_timeout_s: self.realtime_pong_timeout_s.or(lower.realtime_pong_timeout_s),
            realtime_max_frame_bytes: self.realtime_max_frame_bytes.or(lower.realtime_max_frame_bytes),
            realtime_allow_anonymous: self.realtime_allow_anonymous.or(lower.realtime_allow_anonymous),
            realtime_anonymous_channels: self
                .realtime_anonymous_channels
                .or(lower.realtime_anonymous_channels),
            realtime_presence_grace_s: self.realtime_presence_grace_s.or(lower.realtime_presence_grace_s),
            realtime: self.realtime.or(lower.realtime),
            admin_key: self.admin_key.or(lower.admin_key),
            auth_required: self.auth_required.or(lower.auth_required),
            auth_protect_metrics: self.auth_protect_metrics.or(lower.auth_protect_metrics),
            jwt_jwks_file: self.jwt_jwks_file.or(lower.jwt_jwks_file),
            jwt_issuer: self.jwt_issuer.or(lower.jwt_issuer),
            jwt_audience: self.jwt_audience.or(lower.jwt_audience),
            jwt_secret: self.jwt_secret.or(lower.jwt_secret),
            jwt_public_key_file: self.jwt_public_key_file.or(lower.jwt_public_key_file),
            jwt_leeway_s: self.jwt_leeway_s.or(lower.jwt_leeway_s),
            auth: self.auth.or(lower.auth),
        }
    }
}

/// `[[bridges]]`: each table's `name` and the rest as the API's bridge body, checked as the
/// API checks it, so that a bad bridge stops the start instead of failing later.
fn configured_bridges(
    tables: &[serde_json::Map<String, serde_json::Value>],
) -> anyhow::Result<Vec<(String, BridgeRequest)>> {
    let mut out: Vec<(String, BridgeRequest)> = Vec::new();
    for (i, table) in tables.iter().enumerate() {
        let mut body = table.clone();
        let name = match body.remove("name") {
            Some(serde_json::Value::String(name)) => name,
            _ => bail!("bridges[{i}] needs a name = \"…\""),
        };
        let request: BridgeRequest = serde_json::from_value(serde_json::Value::Object(body))
            .map_err(|e| anyhow::anyhow!("bridges[{i}] {name:?}: {e}"))?;
        bifrost_bridges::spec::check_name(&name).map_err(|e| anyhow::anyhow!("bridges[{i}]: {}", e.0))?;
        bifrost_bridges::BridgeSpec::from_request(request.clone())
            .map_err(|e| anyhow::anyhow!("bridges[{i}] {name:?}: {}", e.0))?;
        if out.iter().any(|(other, _)| *other == name) {
            bail!("bridges[{i}]: the name {name:?} is used twice");
        }
        out.push((name, request));
    }
    Ok(out)
}

/// A JSON value as a TOML value (inline tables for objects): how `bifrost config` prints a
/// bridge's settings.
fn toml_value(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Array(items) => {
            format!("[{}]", items.iter().map(toml_value).collect::<Vec<_>>().join(", "))
        }
        serde_json::Value::Object(map) => {
            let fields: Vec<String> = map.iter().map(|(k, v)| format!("{k} = {}", toml_value(v))).collect();
            format!("{{ {} }}", fields.join(", "))
        }
        // A JSON string, number or boolean is written the same in TOML (null never occurs:
        // the body leaves absent settings out).
        other => other.to_string(),
    }
}

/// Node identity and heartbeat: flag or environment, else the `[cluster]` table, else default.
/// The rate limits: flag or environment, else `[limits]`, else off.
fn limits_config(layer: &ConfigLayer) -> Result<LimitsConfig, BadSetting> {
    let table = layer.limits.clone().unwrap_or_default();
    let defaults = LimitsConfig::default();
    let limits = LimitsConfig {
        requests_per_s: layer
            .limits_requests_per_s
            .or(table.requests_per_s)
            .unwrap_or(defaults.requests_per_s),
        events_per_s: layer.limits_events_per_s.or(table.events_per_s).unwrap_or(defaults.events_per_s),
        burst_s: layer.limits_burst_s.or(table.burst_s).unwrap_or(defaults.burst_s),
    };
    if limits.burst_s == 0 {
        return Err(BadSetting("limits.burst_s (--limits-burst-s) must be at least 1".to_owned()));
    }
    Ok(limits)
}

/// `--tls-cert` and `--tls-key`, both or neither; the files are read and checked here, so
/// a bad one stops the start.
fn tls_files(layer: &ConfigLayer) -> Result<Option<TlsFiles>, BadSetting> {
    let table = layer.tls.clone().unwrap_or_default();
    let cert = layer.tls_cert.clone().or(table.cert);
    let key = layer.tls_key.clone().or(table.key);
    let files = match (cert, key) {
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => TlsFiles { cert, key },
        (Some(_), None) => {
            return Err(BadSetting("tls.cert (--tls-cert) is set without tls.key (--tls-key)".to_owned()));
        }
        (None, Some(_)) => {
            return Err(BadSetting("tls.key (--tls-key) is set without tls.cert (--tls-cert)".to_owned()));
        }
    };
    bifrost_server::load_tls(&files).map_err(BadSetting)?;
    Ok(Some(files))
}

/// The schema registry's rules: flag or environment, else `[schemas]`, else default.
fn schemas_config(layer: &ConfigLayer) -> Result<SchemasConfig, BadSetting> {
    let table = layer.schemas.clone().unwrap_or_default();
    let compatibility = match layer.schemas_compatibility.clone().or(table.compatibility).as_deref() {
        None | Some("backward") => CompatibilityBody::Backward,
        Some("none") => CompatibilityBody::None,
        Some(other) => {
            return Err(BadSetting(format!(
                "schemas.compatibility must be \"backward\" or \"none\", not {other:?}"
            )));
        }
    };
    let accept_unknown_versions =
        match layer.schemas_unknown_version.clone().or(table.unknown_version).as_deref() {
            None | Some("reject") => false,
            Some("accept") => true,
            Some(other) => {
                return Err(BadSetting(format!(
                    "schemas.unknown_version must be \"reject\" or \"accept\", not {other:?}"
                )));
            }
        };
    let required = layer.schemas_required.or(table.required).unwrap_or(false);
    Ok(SchemasConfig { compatibility, accept_unknown_versions, required })
}

fn cluster_config(layer: &ConfigLayer) -> ClusterConfig {
    let table = layer.cluster.clone().unwrap_or_default();
    let defaults = ClusterConfig::default();
    let millis = |ms: Option<u64>, default: Duration| ms.map_or(default, Duration::from_millis);
    ClusterConfig {
        node_id: layer.node_id.clone().unwrap_or(defaults.node_id),
        heartbeat: millis(layer.cluster_heartbeat_ms.or(table.heartbeat_ms), defaults.heartbeat),
        lease_timeout: millis(
            layer.cluster_lease_timeout_ms.or(table.lease_timeout_ms),
            defaults.lease_timeout,
        ),
    }
}

/// The bus between the nodes and its fallback poll: flag or environment, else the
/// `[cluster]` table, else `postgres` and 1 s.
fn cluster_bus(layer: &ConfigLayer) -> Result<(ClusterBusSpec, Duration), BadSetting> {
    let table = layer.cluster.clone().unwrap_or_default();
    let bus = match layer.cluster_bus.clone().or(table.bus) {
        Some(value) => ClusterBusSpec::parse(&value).map_err(BadSetting)?,
        None => ClusterBusSpec::Postgres,
    };
    let poll = layer.cluster_poll_ms.or(table.poll_ms).map_or(DEFAULT_CLUSTER_POLL, Duration::from_millis);
    if poll.is_zero() {
        return Err(BadSetting("cluster.poll_ms must be greater than 0".to_owned()));
    }
    Ok((bus, poll))
}

/// The WebSocket settings: flag or environment, else the `[realtime]` table, else default.
fn realtime_config(layer: &ConfigLayer) -> Result<RealtimeConfig, BadSetting> {
    let table = layer.realtime.clone().unwrap_or_default();
    let defaults = RealtimeConfig::default();
    let seconds = |s: Option<u64>, default: Duration| s.map_or(default, Duration::from_secs);
    let realtime = RealtimeConfig {
        queue_size: layer.realtime_queue_size.or(table.queue_size).unwrap_or(defaults.queue_size),
        recovery_max_events: layer
            .realtime_recovery_max_events
            .or(table.recovery_max_events)
            .unwrap_or(defaults.recovery_max_events),
        max_subscriptions: layer
            .realtime_max_subscriptions
            .or(table.max_subscriptions)
            .unwrap_or(defaults.max_subscriptions),
        ping_interval: seconds(
            layer.realtime_ping_interval_s.or(table.ping_interval_s),
            defaults.ping_interval,
        ),
        pong_timeout: seconds(layer.realtime_pong_timeout_s.or(table.pong_timeout_s), defaults.pong_timeout),
        max_frame_bytes: layer
            .realtime_max_frame_bytes
            .or(table.max_frame_bytes)
            .unwrap_or(defaults.max_frame_bytes),
        presence_grace: seconds(
            layer.realtime_presence_grace_s.or(table.presence_grace_s),
            defaults.presence_grace,
        ),
        allow_anonymous: layer
            .realtime_allow_anonymous
            .or(table.allow_anonymous)
            .unwrap_or(defaults.allow_anonymous),
        anonymous_channels: match layer.realtime_anonymous_channels.clone().or(table.anonymous_channels) {
            Some(patterns) => anonymous_channels(patterns)?,
            None => defaults.anonymous_channels.clone(),
        },
        ..defaults
    };
    Ok(realtime)
}

/// The `[auth]` settings: flag or environment, else the file, else default (open). Reads
/// the JWT key files, and returns their paths for printing.
fn auth_config(layer: &ConfigLayer) -> Result<(AuthConfig, Option<PathBuf>), BadSetting> {
    let table = layer.auth.clone().unwrap_or_default();
    let jwt_table = table.jwt.clone().unwrap_or_default();
    let defaults = JwtConfig::default();
    let mut auth = AuthConfig {
        admin_key: layer.admin_key.clone().or(table.admin_key),
        required: layer.auth_required.or(table.required).unwrap_or(false),
        protect_metrics: layer.auth_protect_metrics.or(table.protect_metrics).unwrap_or(false),
        jwt: JwtConfig {
            key: JwtKey::None,
            issuer: layer.jwt_issuer.clone().or(jwt_table.issuer),
            audience: layer.jwt_audience.clone().or(jwt_table.audience),
            leeway_s: layer.jwt_leeway_s.or(jwt_table.leeway_s).unwrap_or(defaults.leeway_s),
        },
    };
    if let Some(key) = &auth.admin_key
        && key.chars().count() < MIN_ADMIN_KEY_CHARS
    {
        return Err(BadSetting(format!(
            "auth.admin_key (--admin-key, BIFROST_ADMIN_KEY) must be at least {MIN_ADMIN_KEY_CHARS} characters"
        )));
    }
    let secret = layer.jwt_secret.clone().or(jwt_table.secret);
    let key_file = layer.jwt_public_key_file.clone().or(jwt_table.public_key_file);
    let jwks_file = layer.jwt_jwks_file.clone().or(jwt_table.jwks_file);
    let given =
        usize::from(secret.is_some()) + usize::from(key_file.is_some()) + usize::from(jwks_file.is_some());
    if given > 1 {
        return Err(BadSetting(
            "auth.jwt.secret (--jwt-secret), auth.jwt.public_key_file (--jwt-public-key-file) and \
             auth.jwt.jwks_file (--jwt-jwks-file) are exclusive: give one of them"
                .to_owned(),
        ));
    }
    let read = |setting: &str, path: &Path| {
        let named = format!("{setting} {}", path.display());
        std::fs::read_to_string(path)
            .map(|text| (named.clone(), text))
            .map_err(|e| BadSetting(format!("{named}: cannot read it: {e}")))
    };
    let (named, path) = match (secret, key_file, jwks_file) {
        (Some(secret), _, _) => {
            auth.jwt.key = JwtKey::Secret(secret);
            ("auth.jwt.secret".to_owned(), None)
        }
        (None, Some(path), _) => {
            let (named, pem) = read("auth.jwt.public_key_file", &path)?;
            auth.jwt.key = JwtKey::PublicKeyPem(pem);
            (named, Some(path))
        }
        (None, None, Some(path)) => {
            let (named, jwks) = read("auth.jwt.jwks_file", &path)?;
            auth.jwt.key = JwtKey::Jwks(jwks);
            (named, Some(path))
        }
        (None, None, None) => return Ok((auth, None)),
    };
    auth.check().map_err(|e| BadSetting(format!("{named}: {e}")))?;
    Ok((auth, path))
}

/// Trimmed, without empty ones; each must name a channel kind, so a typo (`rooms:*`) is
/// an error rather than a grant that matches nothing.
fn anonymous_channels(patterns: Vec<String>) -> Result<Vec<String>, BadSetting> {
    let patterns: Vec<String> =
        patterns.into_iter().map(|p| p.trim().to_owned()).filter(|p| !p.is_empty()).collect();
    for pattern in &patterns {
        if !["stream:", "type:", "room:", "user:"].iter().any(|kind| pattern.starts_with(kind)) {
            return Err(BadSetting(format!(
                "realtime.anonymous_channels: {pattern:?} is not a channel pattern \
                 (stream:, type:, room: or user: and a name, or a prefix ending in *)"
            )));
        }
    }
    Ok(patterns)
}

/// The effective configuration of `bifrost serve`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Settings {
    pub(crate) listen: String,
    pub(crate) data_dir: PathBuf,
    pub(crate) store: StoreSpec,
    pub(crate) durability: Durability,
    pub(crate) max_body_bytes: usize,
    pub(crate) max_event_bytes: usize,
    pub(crate) max_events_per_append: usize,
    pub(crate) sse_heartbeat: Duration,
    pub(crate) pg_schema: String,
    pub(crate) redis_prefix: String,
    pub(crate) pg_pool_size: usize,
    pub(crate) pg_connect_timeout: Duration,
    pub(crate) pg_idle_timeout: Duration,
    pub(crate) pg_wait_timeout: Duration,
    pub(crate) log: String,
    /// Checked CIDRs, as given.
    pub(crate) webhook_allow_cidrs: Vec<String>,
    pub(crate) webhook_retry_after_max: Duration,
    pub(crate) cluster: ClusterConfig,
    /// `cluster.bus`.
    pub(crate) cluster_bus: ClusterBusSpec,
    /// `cluster.poll_ms`.
    pub(crate) cluster_poll: Duration,
    /// `[[bridges]]`, checked, by name; `None` when the file has none.
    pub(crate) bridges: Option<Vec<(String, BridgeRequest)>>,
    pub(crate) realtime: RealtimeConfig,
    pub(crate) auth: AuthConfig,
    pub(crate) limits: LimitsConfig,
    pub(crate) tls: Option<TlsFiles>,
    pub(crate) schemas: SchemasConfig,
    /// Where the JWT key was read from, when it is a public key or a key set.
    pub(crate) jwt_key_file: Option<PathBuf>,
}

impl Settings {
    /// Merges the flags (already merged with their environment twins by clap) over the
    /// file over the defaults, and checks every value.
    pub(crate) fn resolve(flags_and_env: ConfigLayer, file: ConfigLayer) -> anyhow::Result<Self> {
        let layer = flags_and_env.over(file);
        let realtime = realtime_config(&layer)?;
        let (auth, jwt_key_file) = auth_config(&layer)?;
        let limits = limits_config(&layer)?;
        let tls = tls_files(&layer)?;
        let schemas = schemas_config(&layer)?;
        let cluster = cluster_config(&layer);
        let (cluster_bus, cluster_poll) = cluster_bus(&layer)?;
        let bridges = layer.bridges.as_deref().map(configured_bridges).transpose()?;
        let defaults = ServerConfig::default();
        let pg = PostgresOptions::default();
        let millis = |ms: Option<u64>, default: Duration| ms.map_or(default, Duration::from_millis);
        let data_dir = layer.data_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let store = StoreSpec::parse(layer.store.as_deref(), &data_dir)?;
        let durability = match layer.durability.as_deref() {
            None => Durability::Full,
            Some(s) => s
                .parse()
                .map_err(|_| anyhow::anyhow!("durability must be \"full\" or \"relaxed\", not {s:?}"))?,
        };
        let settings = Self {
            listen: layer.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_owned()),
            data_dir,
            store,
            durability,
            max_body_bytes: layer.max_body_bytes.unwrap_or(defaults.max_body_bytes),
            max_event_bytes: layer.max_event_bytes.unwrap_or(defaults.max_event_bytes),
            max_events_per_append: layer.max_events_per_append.unwrap_or(defaults.max_events_per_append),
            sse_heartbeat: layer.sse_heartbeat_ms.map_or(defaults.sse_heartbeat, Duration::from_millis),
            pg_schema: layer.pg_schema.unwrap_or(pg.schema),
            redis_prefix: layer.redis_prefix.unwrap_or_else(|| RedisOptions::default().prefix),
            pg_pool_size: layer.pg_pool_size.unwrap_or(pg.pool_size),
            pg_connect_timeout: millis(layer.pg_connect_timeout_ms, pg.connect_timeout),
            pg_idle_timeout: millis(layer.pg_idle_timeout_ms, pg.idle_timeout),
            pg_wait_timeout: millis(layer.pg_wait_timeout_ms, pg.wait_timeout),
            log: layer.log.unwrap_or_else(|| DEFAULT_LOG.to_owned()),
            webhook_allow_cidrs: layer
                .webhook_allow_cidrs
                .or_else(|| layer.webhooks.as_ref().and_then(|w| w.allow_cidrs.clone()))
                .unwrap_or_default()
                .into_iter()
                .map(|c| c.trim().to_owned())
                .filter(|c| !c.is_empty())
                .collect(),
            cluster,
            cluster_bus,
            cluster_poll,
            bridges,
            realtime,
            auth,
            limits,
            tls,
            schemas,
            jwt_key_file,
            webhook_retry_after_max: Duration::from_secs(
                layer
                    .webhook_retry_after_max_s
                    .or_else(|| layer.webhooks.as_ref().and_then(|w| w.retry_after_max_s))
                    .unwrap_or(3600),
            ),
        };
        settings.check()?;
        Ok(settings)
    }

    /// Reads the file (when one is named) and resolves.
    pub(crate) fn load(config: Option<&Path>, flags_and_env: ConfigLayer) -> anyhow::Result<Self> {
        let file = match config {
            Some(path) => ConfigLayer::from_file(path)?,
            None => ConfigLayer::default(),
        };
        Self::resolve(flags_and_env, file)
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.listen.trim().is_empty() {
            bail!("listen must be an address such as {DEFAULT_LISTEN}");
        }
        for (key, value) in [
            ("max_body_bytes", self.max_body_bytes),
            ("max_event_bytes", self.max_event_bytes),
            ("max_events_per_append", self.max_events_per_append),
            ("pg_pool_size", self.pg_pool_size),
        ] {
            if value == 0 {
                bail!("{key} must be greater than 0");
            }
        }
        for (key, value) in [
            ("sse_heartbeat_ms", self.sse_heartbeat),
            ("pg_connect_timeout_ms", self.pg_connect_timeout),
            ("pg_idle_timeout_ms", self.pg_idle_timeout),
            ("pg_wait_timeout_ms", self.pg_wait_timeout),
        ] {
            if value.is_zero() {
                bail!("{key} must be greater than 0");
            }
        }
        // The full naming rule is the PostgreSQL store's; it reports a bad name on connect.
        if self.pg_schema.trim().is_empty() {
            bail!("pg_schema must name a schema, such as \"bifrost\"");
        }
        bifrost_webhooks::ssrf::AddressPolicy::parse_cidrs(&self.webhook_allow_cidrs)
            .map_err(|e| anyhow::anyhow!("webhook allow CIDR: {e}"))?;
        let realtime = &self.realtime;
        for (key, value) in [
            ("realtime.queue_size", realtime.queue_size),
            ("realtime.max_subscriptions", realtime.max_subscriptions),
            ("realtime.max_frame_bytes", realtime.max_frame_bytes),
        ] {
            if value == 0 {
                bail!("{key} must be greater than 0");
            }
        }
        if realtime.ping_interval.is_zero() || realtime.pong_timeout.is_zero() {
            bail!("realtime.ping_interval_s and realtime.pong_timeout_s must be greater than 0");
        }
        let cluster = &self.cluster;
        let id = &cluster.node_id;
        if id.is_empty()
            || id.len() > 128
            || !id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
        {
            bail!("node_id must be 1–128 characters of A–Z a–z 0–9 _ - . :, not {id:?}");
        }
        if cluster.heartbeat.is_zero() || cluster.lease_timeout <= cluster.heartbeat {
            bail!("cluster.heartbeat_ms must be greater than 0 and less than cluster.lease_timeout_ms");
        }
        // The Redis store carries its wake-ups on its own Pub/Sub.
        if !self.cluster_bus.is_postgres() && matches!(self.store, StoreSpec::Redis(_)) {
            return Err(BadSetting(format!(
                "cluster.bus {} applies to the PostgreSQL store; the Redis store {} is its own bus \
                 (leave cluster.bus out)",
                self.cluster_bus, self.store
            ))
            .into());
        }
        // Only PostgreSQL and Redis are shared by several processes; the others are one node alone.
        if !self.cluster_bus.is_postgres() && !matches!(self.store, StoreSpec::Postgres(_)) {
            return Err(BadSetting(format!(
                "cluster.bus {} needs a store shared by several nodes (postgres://…); the store {} \
                 serves one process only",
                self.cluster_bus, self.store
            ))
            .into());
        }
        if self.webhook_retry_after_max > Duration::from_secs(86_400) {
            bail!("webhooks.retry_after_max_s is at most 86400 (a day)");
        }
        Ok(())
    }

    pub(crate) fn server_config(&self) -> ServerConfig {
        ServerConfig {
            max_body_bytes: self.max_body_bytes,
            max_event_bytes: self.max_event_bytes,
            max_events_per_append: self.max_events_per_append,
            sse_heartbeat: self.sse_heartbeat,
            realtime: self.realtime.clone(),
            auth: self.auth.clone(),
            limits: self.limits.clone(),
            tls: self.tls.clone(),
            schemas: self.schemas.clone(),
            cluster: self.cluster.clone(),
            bridges: self.bridges.clone(),
        }
    }

    pub(crate) fn webhook_settings(&self) -> anyhow::Result<bifrost_webhooks::WebhookSettings> {
        let allow_cidrs = bifrost_webhooks::ssrf::AddressPolicy::parse_cidrs(&self.webhook_allow_cidrs)
            .map_err(|e| anyhow::anyhow!("webhook allow CIDR: {e}"))?;
        Ok(bifrost_webhooks::WebhookSettings {
            allow_cidrs,
            retry_after_max: self.webhook_retry_after_max,
            ..bifrost_webhooks::WebhookSettings::default()
        })
    }

    pub(crate) fn redis_options(&self) -> RedisOptions {
        RedisOptions {
            prefix: self.redis_prefix.clone(),
            poll_interval: self.cluster_poll,
            ..RedisOptions::default()
        }
    }

    pub(crate) fn postgres_options(&self) -> PostgresOptions {
        PostgresOptions {
            schema: self.pg_schema.clone(),
            pool_size: self.pg_pool_size,
            connect_timeout: self.pg_connect_timeout,
            idle_timeout: self.pg_idle_timeout,
            wait_timeout: self.pg_wait_timeout,
            poll_interval: self.cluster_poll,
            ..PostgresOptions::default()
        }
    }
}

/// The settings as a TOML file that reproduces them, except that a PostgreSQL password is
/// printed as `***` (give it through `BIFROST_STORE` or a private file instead).
impl fmt::Display for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A JSON string literal is a valid TOML basic string.
        let quote = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\""));
        let mut out = String::new();
        let _ = writeln!(out, "listen = {}", quote(&self.listen));
        let _ = writeln!(out, "data_dir = {}", quote(&self.data_dir.to_string_lossy()));
        let _ = writeln!(out, "store = {}", quote(&self.store.to_string()));
        let _ = writeln!(out, "durability = {}", quote(&self.durability.to_string()));
        let _ = writeln!(out, "max_body_bytes = {}", self.max_body_bytes);
        let _ = writeln!(out, "max_event_bytes = {}", self.max_event_bytes);
        let _ = writeln!(out, "max_events_per_append = {}", self.max_events_per_append);
        let _ = writeln!(out, "sse_heartbeat_ms = {}", self.sse_heartbeat.as_millis());
        let _ = writeln!(out, "pg_schema = {}", quote(&self.pg_schema));
        let _ = writeln!(out, "redis_prefix = {}", quote(&self.redis_prefix));
        let _ = writeln!(out, "pg_pool_size = {}", self.pg_pool_size);
        let _ = writeln!(out, "pg_connect_timeout_ms = {}", self.pg_connect_timeout.as_millis());
        let _ = writeln!(out, "pg_idle_timeout_ms = {}", self.pg_idle_timeout.as_millis());
        let _ = writeln!(out, "pg_wait_timeout_ms = {}", self.pg_wait_timeout.as_millis());
        let _ = writeln!(out, "log = {}", quote(&self.log));
        let _ = writeln!(out, "node_id = {}", quote(&self.cluster.node_id));
        if self.bridges.as_ref().is_some_and(Vec::is_empty) {
            // A top-level key: before the first table.
            let _ = writeln!(out, "bridges = []");
        }
        let _ = writeln!(out, "\n[webhooks]");
        let cidrs: Vec<String> = self.webhook_allow_cidrs.iter().map(|c| quote(c)).collect();
        let _ = writeln!(out, "allow_cidrs = [{}]", cidrs.join(", "));
        let _ = writeln!(out, "retry_after_max_s = {}", self.webhook_retry_after_max.as_secs());
        let _ = writeln!(out, "\n[cluster]");
        let _ = writeln!(out, "heartbeat_ms = {}", self.cluster.heartbeat.as_millis());
        let _ = writeln!(out, "lease_timeout_ms = {}", self.cluster.lease_timeout.as_millis());
        let _ = writeln!(out, "bus = {}", quote(&self.cluster_bus.to_string()));
        let _ = writeln!(out, "poll_ms = {}", self.cluster_poll.as_millis());
        let r = &self.realtime;
        let _ = writeln!(out, "\n[realtime]");
        let _ = writeln!(out, "queue_size = {}", r.queue_size);
        let _ = writeln!(out, "recovery_max_events = {}", r.recovery_max_events);
        let _ = writeln!(out, "max_subscriptions = {}", r.max_subscriptions);
        let _ = writeln!(out, "ping_interval_s = {}", r.ping_interval.as_secs());
        let _ = writeln!(out, "pong_timeout_s = {}", r.pong_timeout.as_secs());
        let _ = writeln!(out, "max_frame_bytes = {}", r.max_frame_bytes);
        let _ = writeln!(out, "presence_grace_s = {}", r.presence_grace.as_secs());
        let _ = writeln!(out, "allow_anonymous = {}", r.allow_anonymous);
        let channels: Vec<String> = r.anonymous_channels.iter().map(|c| quote(c)).collect();
        let _ = writeln!(out, "anonymous_channels = [{}]", channels.join(", "));
        let a = &self.auth;
        let _ = writeln!(out, "\n[auth]");
        if a.admin_key.is_some() {
            // Secrets are never printed; a file read back without them is open again, so say so.
            let _ = writeln!(out, "# admin_key = \"***\" (set, not shown)");
        }
        let _ = writeln!(out, "required = {}", a.required);
        let _ = writeln!(out, "protect_metrics = {}", a.protect_metrics);
        let _ = writeln!(out, "\n[auth.jwt]");
        match (&a.jwt.key, &self.jwt_key_file) {
            (JwtKey::Secret(_), _) => {
                let _ = writeln!(out, "# secret = \"***\" (set, not shown)");
            }
            (JwtKey::PublicKeyPem(_), Some(path)) => {
                let _ = writeln!(out, "public_key_file = {}", quote(&path.to_string_lossy()));
            }
            (JwtKey::Jwks(_), Some(path)) => {
                let _ = writeln!(out, "jwks_file = {}", quote(&path.to_string_lossy()));
            }
            _ => {}
        }
        for (name, value) in [("issuer", &a.jwt.issuer), ("audience", &a.jwt.audience)] {
            if let Some(value) = value {
                let _ = writeln!(out, "{name} = {}", quote(value));
            }
        }
        let _ = writeln!(out, "leeway_s = {}", a.jwt.leeway_s);
        let l = &self.limits;
        let _ = writeln!(out, "\n[limits]");
        let _ = writeln!(out, "requests_per_s = {}", l.requests_per_s);
        let _ = writeln!(out, "events_per_s = {}", l.events_per_s);
        let _ = write!(out, "burst_s = {}", l.burst_s);
        let sc = &self.schemas;
        let _ = write!(
            out,
            "\n\n[schemas]\ncompatibility = {}",
            quote(match sc.compatibility {
                CompatibilityBody::Backward => "backward",
                CompatibilityBody::None => "none",
            })
        );
        let unknown = if sc.accept_unknown_versions { "accept" } else { "reject" };
        let _ = write!(out, "\nunknown_version = {}\nrequired = {}", quote(unknown), sc.required);
        if let Some(tls) = &self.tls {
            let _ = write!(out, "\n\n[tls]\ncert = {}", quote(&tls.cert.to_string_lossy()));
            let _ = write!(out, "\nkey = {}", quote(&tls.key.to_string_lossy()));
        }
        for (name, request) in self.bridges.iter().flatten() {
            let _ = write!(out, "\n\n[[bridges]]\nname = {}", quote(name));
            let mut request = request.clone();
            request.url = bifrost_bridges::spec::mask_password(&request.url);
            if let Ok(serde_json::Value::Object(body)) = serde_json::to_value(&request) {
                for (key, value) in &body {
                    let _ = write!(out, "\n{key} = {}", toml_value(value));
                }
            }
        }
        f.write_str(&out)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Flags {
        #[command(flatten)]
        layer: ConfigLayer,
    }

    fn flags(args: &[&str]) -> ConfigLayer {
        let mut argv = vec!["bifrost"];
        argv.extend_from_slice(args);
        Flags::try_parse_from(argv).unwrap().layer
    }

    fn file(text: &str) -> ConfigLayer {
        ConfigLayer::from_toml(text).unwrap()
    }

    #[test]
    fn realtime_settings_follow_the_precedence_and_reach_the_server() {
        let s = Settings::resolve(ConfigLayer::default(), ConfigLayer::default()).unwrap();
        assert_eq!(s.server_config().realtime, RealtimeConfig::default());
        let table = "[realtime]\nqueue_size = 50\nping_interval_s = 5\nmax_frame_bytes = 4096";
        let s = Settings::resolve(flags(&["--realtime-queue-size", "7"]), file(table)).unwrap();
        let realtime = s.server_config().realtime;
        assert_eq!(realtime.queue_size, 7, "the flag wins over the file");
        assert_eq!(realtime.ping_interval, Duration::from_secs(5));
        assert_eq!(realtime.max_frame_bytes, 4096);
        assert_eq!(realtime.recovery_max_events, 10_000);
        let again = Settings::resolve(ConfigLayer::default(), file(&s.to_string())).unwrap();
        assert_eq!(again, s, "the printed configuration reads back");
        let zero = Settings::resolve(flags(&["--realtime-queue-size", "0"]), ConfigLayer::default());
        assert!(zero.unwrap_err().to_string().contains("realtime.queue_size"));
    }

    const RS256_PUBLIC: &str =
        concat!(env!("CARGO_MANIFEST_DIR"), "/../bifrost-server/tests/fixtures/jwt_rs256_public.pem");
    const ES256_PUBLIC: &str =
        concat!(env!("CARGO_MANIFEST_DIR"), "/../bifrost-server/tests/fixtures/jwt_es256_public.pem");

    /// The message of a resolve that failed with a [`BadSetting`] (exit code 2).
    fn bad_setting(flags_and_env: ConfigLayer, file: ConfigLayer) -> String {
        let err = Settings::resolve(flags_and_env, file).unwrap_err();
        assert!(err.downcast_ref::<BadSetting>().is_some(), "not a BadSetting: {err:#}");
        let message = format!("{err:#}");
        assert!(!message.contains('\n'), "{message}");
        message
    }

    #[test]
    fn jwt_settings_follow_the_precedence_and_reach_the_server() {
        let s = Settings::resolve(ConfigLayer::default(), ConfigLayer::default()).unwrap();
        assert_eq!(s.auth.jwt.key, JwtKey::None, "no key by default: dev mode");
        assert_eq!(s.auth.jwt.leeway_s, 60);
        assert_eq!(s.jwt_key_file, None);

        let table = "[auth.jwt]\nsecret = \"from-file\"\nleeway_s = 30";
        let s = Settings::resolve(ConfigLayer::default(), file(table)).unwrap();
        assert_eq!(s.server_config().auth.jwt.key, JwtKey::Secret("from-file".into()));
        assert_eq!(s.auth.jwt.leeway_s, 30);
        let s = Settings::resolve(flags(&["--jwt-secret", "from-flag", "--jwt-leeway-s", "5"]), file(table))
            .unwrap();
        assert_eq!(s.auth.jwt.key, JwtKey::Secret("from-flag".into()), "the flag wins over the file");
        assert_eq!(s.auth.jwt.leeway_s, 5);

        // A public key file is read at start; its contents reach the server.
        let table = format!("[auth.jwt]\npublic_key_file = {RS256_PUBLIC:?}");
        let s = Settings::resolve(ConfigLayer::default(), file(&table)).unwrap();
        let pem = std::fs::read_to_string(RS256_PUBLIC).unwrap();
        assert_eq!(s.server_config().auth.jwt.key, JwtKey::PublicKeyPem(pem));
        assert_eq!(s.jwt_key_file.as_deref(), Some(Path::new(RS256_PUBLIC)));
        let again = Settings::resolve(ConfigLayer::default(), file(&s.to_string())).unwrap();
        assert_eq!(again, s, "the printed configuration reads back");
        let s = Settings::resolve(flags(&["--jwt-public-key-file", ES256_PUBLIC]), file(&table)).unwrap();
        assert_eq!(s.jwt_key_file.as_deref(), Some(Path::new(ES256_PUBLIC)), "the flag wins");
    }

    #[test]
    fn a_secret_and_a_key_file_together_are_a_bad_setting_naming_both() {
        let key_file = format!("[auth.jwt]\npublic_key_file = {RS256_PUBLIC:?}");
        for (given, table) in [
            (flags(&["--jwt-secret", "s", "--jwt-public-key-file", RS256_PUBLIC]), String::new()),
            (flags(&["--jwt-secret", "s"]), key_file),
            (
                ConfigLayer::default(),
                format!("[auth.jwt]\nsecret = \"s\"\npublic_key_file = {RS256_PUBLIC:?}"),
            ),
        ] {
            let message = bad_setting(given, file(&table));
            assert!(message.contains("auth.jwt.secret"), "{message}");
            assert!(message.contains("auth.jwt.public_key_file"), "{message}");
        }
    }

    #[test]
    fn an_unusable_jwt_key_is_a_bad_setting_naming_it() {
        let missing =
            bad_setting(flags(&["--jwt-public-key-file", "/nonexistent/key.pem"]), ConfigLayer::default());
        assert!(
            missing.starts_with("auth.jwt.public_key_file /nonexistent/key.pem: cannot read it"),
            "{missing}"
        );

        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("key.pem");
        std::fs::write(&garbage, "not a key").unwrap();
        let table = format!("[auth.jwt]\npublic_key_file = {:?}", garbage.to_string_lossy());
        let message = bad_setting(ConfigLayer::default(), file(&table));
        assert!(message.contains("auth.jwt.public_key_file"), "{message}");
        assert!(message.contains("not a PEM RSA or EC (P-256) public key"), "{message}");

        let private = RS256_PUBLIC.replace("public", "private");
        let message = bad_setting(flags(&["--jwt-public-key-file", &private]), ConfigLayer::default());
        assert!(message.contains("private key"), "{message}");

        let message = bad_setting(flags(&["--jwt-secret", ""]), ConfigLayer::default());
        assert_eq!(message, "auth.jwt.secret: the JWT secret is empty");
        assert!(ConfigLayer::from_toml("[auth.jwt]\nleeway = 5").is_err(), "unknown keys are errors");
    }

    #[test]
    fn bridges_of_the_file_are_checked_reach_the_server_and_print_without_their_password() {
        let text = r#"
[[bridges]]
name = "orders"
direction = "out"
kind = "redis-stream"
url = "redis://:s3cret@127.0.0.1:6379"
filter = { types = ["order.#"] }
start = "beginning"
batch_size = 10

[[bridges]]
name = "ingest"
direction = "in"
kind = "rabbitmq"
url = "amqp://guest:guest@127.0.0.1:5672/%2f"
source = "incoming"
"#;
        let s = Settings::resolve(ConfigLayer::default(), file(text)).unwrap();
        let server = s.server_config();
        let bridges = server.bridges.unwrap();
        let names: Vec<&str> = bridges.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["orders", "ingest"]);
        assert_eq!(bridges[0].1.batch_size, Some(10));

        // `bifrost config` prints them as TOML that reads back the same, bar the passwords.
        let printed = s.to_string();
        assert!(!printed.contains("s3cret") && printed.contains("redis://:***@127.0.0.1:6379"), "{printed}");
        let again = Settings::resolve(ConfigLayer::default(), file(&printed)).unwrap().bridges.unwrap();
        assert_eq!(again.len(), 2);
        assert_eq!(again[0].1.filter, bridges[0].1.filter);
        assert_eq!(again[1].1.source.as_deref(), Some("incoming"));

        // No bridges in the file: this node manages none; `bridges = []`: it manages an empty set.
        assert_eq!(Settings::resolve(ConfigLayer::default(), ConfigLayer::default()).unwrap().bridges, None);
        let empty = Settings::resolve(ConfigLayer::default(), file("bridges = []")).unwrap();
        assert_eq!(empty.bridges, Some(Vec::new()));
        let printed = empty.to_string();
        assert_eq!(
            Settings::resolve(ConfigLayer::default(), file(&printed)).unwrap().bridges,
            Some(Vec::new())
        );

        for (bad, says) in [
            ("[[bridges]]\ndirection = \"out\"\nkind = \"nats\"\nurl = \"nats://x\"", "needs a name"),
            ("[[bridges]]\nname = \"a\"\nkind = \"nats\"\nurl = \"nats://x\"", "direction"),
            (
                "[[bridges]]\nname = \"a\"\ndirection = \"out\"\nkind = \"nats\"\nurl = \"nats://x\"\nbatch_size = 0",
                "batch_size",
            ),
            (
                "[[bridges]]\nname = \"a b\"\ndirection = \"out\"\nkind = \"nats\"\nurl = \"nats://x\"",
                "bridges[0]",
            ),
            (
                "[[bridges]]\nname = \"a\"\ndirection = \"out\"\nkind = \"nats\"\nurl = \"nats://x\"\n\
              [[bridges]]\nname = \"a\"\ndirection = \"out\"\nkind = \"nats\"\nurl = \"nats://x\"",
                "used twice",
            ),
        ] {
            let e = Settings::resolve(ConfigLayer::default(), file(bad)).unwrap_err().to_string();
            assert!(e.contains(says) && !e.contains('\n'), "{bad}: {e}");
        }
    }

    #[test]
    fn the_cluster_bus_and_its_poll_follow_the_precedence_and_reach_the_store() {
        let s = Settings::resolve(ConfigLayer::default(), ConfigLayer::default()).unwrap();
        assert_eq!(
            (s.cluster_bus.clone(), s.cluster_poll),
            (ClusterBusSpec::Postgres, Duration::from_secs(1))
        );
        let pg = "store = \"postgres://u:secret@db/app\"\n";
        let table = format!("{pg}[cluster]\nbus = \"nats://file:4222\"\npoll_ms = 250");
        let s = Settings::resolve(ConfigLayer::default(), file(&table)).unwrap();
        assert_eq!(s.cluster_bus, ClusterBusSpec::Nats("nats://file:4222".into()));
        assert_eq!(s.postgres_options().poll_interval, Duration::from_millis(250));
        let s = Settings::resolve(
            flags(&["--cluster-bus", "nats://u:pw@flag:4222", "--cluster-poll-ms", "500"]),
            file(&table),
        )
        .unwrap();
        assert_eq!(s.cluster_bus, ClusterBusSpec::Nats("nats://u:pw@flag:4222".into()), "the flag wins");
        assert_eq!(s.cluster_poll, Duration::from_millis(500));
        let printed = s.to_string();
        assert!(printed.contains("bus = \"nats://u:***@flag:4222\""), "{printed}");
        assert!(!printed.contains(":pw@"), "{printed}");

        let message = bad_setting(flags(&["--cluster-bus", "kafka://u:pw@h"]), file(pg));
        assert!(message.starts_with("cluster.bus must be"), "{message}");
        assert!(!message.contains("pw"), "{message}");
        let message = bad_setting(flags(&["--cluster-poll-ms", "0"]), file(pg));
        assert_eq!(message, "cluster.poll_ms must be greater than 0");
        for store in [&[][..], &["--store", "memory:"][..]] {
            let mut args = vec!["--cluster-bus", "nats://127.0.0.1:4222"];
            args.extend_from_slice(store);
            let message = bad_setting(flags(&args), ConfigLayer::default());
            assert!(message.contains("needs a store shared by several nodes"), "{message}");
        }
        let s = Settings::resolve(
            flags(&["--cluster-bus", "postgres", "--store", "memory:"]),
            ConfigLayer::default(),
        );
        assert!(s.is_ok(), "postgres is the default and fits any store");
    }

    #[test]
    fn node_identity_and_heartbeat_follow_the_precedence() {
        let s = Settings::resolve(ConfigLayer::default(), ConfigLayer::default()).unwrap();
        let other = Settings::resolve(ConfigLayer::default(), ConfigLayer::default()).unwrap();
        assert_ne!(s.cluster.node_id, other.cluster.node_id, "a new default id at every start");
        assert_eq!(
            (s.cluster.heartbeat, s.cluster.lease_timeout),
            (Duration::from_secs(1), Duration::from_secs(10))
        );

        let table = "node_id = \"from-file\"\n[cluster]\nheartbeat_ms = 200\nlease_timeout_ms = 3000";
        let s = Settings::resolve(
            flags(&["--node-id", "n-1", "--cluster-lease-timeout-ms", "5000"]),
            file(table),
        )
        .unwrap();
        let cluster = s.server_config().cluster;
        assert_eq!(cluster.node_id, "n-1", "the flag over the file");
        assert_eq!(cluster.heartbeat, Duration::from_millis(200), "the file where no flag says");
        assert_eq!(cluster.lease_timeout, Duration::from_millis(5000));
        let again = Settings::resolve(ConfigLayer::default(), file(&s.to_string())).unwrap();
        assert_eq!(again, s, "the printed configuration reads back");

        for bad in [
            &["--node-id", "has space"][..],
            &["--node-id", ""],
            &["--cluster-heartbeat-ms", "0"],
            &["--cluster-heartbeat-ms", "2000", "--cluster-lease-timeout-ms", "1000"],
        ] {
            assert!(Settings::resolve(flags(bad), ConfigLayer::default()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn printed_settings_hide_the_jwt_secret() {
        let s =
            Settings::resolve(flags(&["--jwt-secret", "hunter2-hunter2"]), ConfigLayer::default()).unwrap();
        let text = s.to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("# secret = \"***\""), "{text}");
        // The printed file still parses (the secret line is a comment).
        let again = Settings::resolve(ConfigLayer::default(), file(&text)).unwrap();
        assert_eq!(again.auth.jwt.key, JwtKey::None);
    }

    #[test]
    fn anonymous_access_and_presence_grace_follow_the_precedence() {
        let s = Settings::resolve(ConfigLayer::default(), ConfigLayer::default()).unwrap();
        assert!(!s.realtime.allow_anonymous);
        assert_eq!(s.realtime.anonymous_channels, ["room:*"]);
        assert_eq!(s.realtime.presence_grace, Duration::from_secs(5));

        let table = "[realtime]\nallow_anonymous = true\nanonymous_channels = [\"room:public:*\", \" \"]\n\
                     presence_grace_s = 0";
        let s = Settings::resolve(ConfigLayer::default(), file(table)).unwrap();
        let realtime = s.server_config().realtime;
        assert!(realtime.allow_anonymous);
        assert_eq!(realtime.anonymous_channels, ["room:public:*"], "blank patterns are dropped");
        assert_eq!(realtime.presence_grace, Duration::ZERO);
        let again = Settings::resolve(ConfigLayer::default(), file(&s.to_string())).unwrap();
        assert_eq!(again, s, "the printed configuration reads back");

        let given = flags(&[
            "--realtime-allow-anonymous=false",
            "--realtime-anonymous-channel",
            "room:a",
            "--realtime-anonymous-channel",
            "stream:news",
            "--realtime-presence-grace-s",
            "9",
        ]);
        let s = Settings::resolve(given, file(table)).unwrap();
        assert!(!s.realtime.allow_anonymous, "the flag wins over the file");
        assert_eq!(s.realtime.anonymous_channels, ["room:a", "stream:news"]);
        assert_eq!(s.realtime.presence_grace, Duration::from_secs(9));
        let bare = Settings::resolve(flags(&["--realtime-allow-anonymous"]), ConfigLayer::default()).unwrap();
        assert!(bare.realtime.allow_anonymous, "the bare flag means true");

        let message =
            bad_setting(flags(&["--realtime-anonymous-channel", "rooms:*"]), ConfigLayer::default());
        assert!(message.contains("realtime.anonymous_channels"), "{message}");
        assert!(message.contains("rooms:*"), "{message}");
    }

    #[test]
    fn webhook_settings_follow_the_precedence_and_are_checked() {
        let s = Settings::resolve(ConfigLayer::default(), ConfigLayer::default()).unwrap();
        assert!(s.webhook_allow_cidrs.is_empty());
        assert_eq!(s.webhook_retry_after_max, Duration::from_secs(3600));

        let table = "[webhooks]\nallow_cidrs = [\"10.0.0.0/8\"]\nretry_after_max_s = 60";
        let s = Settings::resolve(ConfigLayer::default(), file(table)).unwrap();
        assert_eq!(s.webhook_allow_cidrs, ["10.0.0.0/8"]);
        assert_eq!(s.webhook_retry_after_max, Duration::from_secs(60));

        let given = flags(&["--webhook-allow-cidr", "127.0.0.0/8", "--webhook-allow-cidr", "::1"]);
        let s = Settings::resolve(given, file(table)).unwrap();
        assert_eq!(s.webhook_allow_cidrs, ["127.0.0.0/8", "::1"], "flags win over the file");
        assert_eq!(s.webhook_settings().unwrap().allow_cidrs.len(), 2);
        // The printed configuration reads back as the same settings.
        let again = Settings::resolve(ConfigLayer::default(), file(&s.to_string())).unwrap();
        assert_eq!(again, s);

        let bad = Settings::resolve(flags(&["--webhook-allow-cidr", "10.0.0.0/33"]), ConfigLayer::default());
        assert!(bad.unwrap_err().to_string().contains("10.0.0.0/33"));
        let too_long =
            Settings::resolve(flags(&["--webhook-retry-after-max-s", "86401"]), ConfigLayer::default());
        assert!(too_long.unwrap_err().to_string().contains("retry_after_max_s"));
    }

    #[test]
    fn no_configuration_gives_the_documented_defaults() {
        let s = Settings::resolve(ConfigLayer::default(), ConfigLayer::default()).unwrap();
        assert_eq!(s.listen, "127.0.0.1:7070");
        assert_eq!(s.data_dir, PathBuf::from("./bifrost-data"));
        assert_eq!(s.store, StoreSpec::Sqlite(PathBuf::from("./bifrost-data")));
        assert_eq!(s.durability, Durability::Full);
        assert_eq!(s.max_body_bytes, 4 * 1024 * 1024);
        assert_eq!(s.max_event_bytes, 1024 * 1024);
        assert_eq!(s.max_events_per_append, 1000);
        assert_eq!(s.sse_heartbeat, Duration::from_secs(15));
        assert_eq!(s.log, "info");
        assert_eq!(s.pg_schema, "bifrost");
        assert_eq!(s.pg_pool_size, 10);
        assert_eq!(s.pg_connect_timeout, Duration::from_secs(10));
        assert_eq!(s.pg_idle_timeout, Duration::from_secs(30));
        assert_eq!(s.pg_wait_timeout, Duration::from_secs(10));
    }

    #[test]
    fn postgres_keys_follow_the_same_precedence_and_reach_the_store_options() {
        let s = Settings::resolve(
            flags(&[
                "--store",
                "postgres://u@db/app",
                "--pg-schema",
                "from_flag",
                "--pg-wait-timeout-ms",
                "1",
            ]),
            file(
                "pg_schema = \"from_file\"\npg_pool_size = 4\npg_connect_timeout_ms = 2500\n\
                 pg_idle_timeout_ms = 60000\npg_wait_timeout_ms = 9",
            ),
        )
        .unwrap();
        assert_eq!(s.store, StoreSpec::Postgres("postgres://u@db/app".into()));
        assert_eq!(s.pg_schema, "from_flag", "flag beats file");
        assert_eq!(s.pg_wait_timeout, Duration::from_millis(1), "flag beats file");
        assert_eq!(s.pg_pool_size, 4, "file beats default");
        let options = s.postgres_options();
        assert_eq!(options.schema, "from_flag");
        assert_eq!(options.pool_size, 4);
        assert_eq!(options.connect_timeout, Duration::from_millis(2500));
        assert_eq!(options.idle_timeout, Duration::from_secs(60));
        assert_eq!(options.wait_timeout, Duration::from_millis(1));
        let defaults = PostgresOptions::default();
        assert_eq!(options.max_batch, defaults.max_batch, "keys without a setting keep the store's default");
    }

    #[test]
    fn invalid_postgres_settings_are_one_line_errors_naming_the_key() {
        for (text, key) in [
            ("pg_pool_size = 0", "pg_pool_size"),
            ("pg_connect_timeout_ms = 0", "pg_connect_timeout_ms"),
            ("pg_idle_timeout_ms = 0", "pg_idle_timeout_ms"),
            ("pg_wait_timeout_ms = 0", "pg_wait_timeout_ms"),
            ("pg_schema = \" \"", "pg_schema"),
        ] {
            let err = Settings::resolve(ConfigLayer::default(), file(text)).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
        assert!(ConfigLayer::from_toml("pg_pool_size = -1").is_err());
    }

    #[test]
    fn printed_settings_hide_the_postgres_password() {
        let s = Settings::resolve(
            flags(&["--store", "postgres://app:s3cret@db:5432/events"]),
            ConfigLayer::default(),
        )
        .unwrap();
        let text = s.to_string();
        assert!(text.contains("store = \"postgres://app:***@db:5432/events\""), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
    }

    #[test]
    fn file_beats_default() {
        let s = Settings::resolve(
            ConfigLayer::default(),
            file("listen = \"0.0.0.0:9000\"\nsse_heartbeat_ms = 500\ndurability = \"relaxed\""),
        )
        .unwrap();
        assert_eq!(s.listen, "0.0.0.0:9000");
        assert_eq!(s.sse_heartbeat, Duration::from_millis(500));
        assert_eq!(s.durability, Durability::Relaxed);
        assert_eq!(s.max_events_per_append, 1000);
    }

    #[test]
    fn flag_or_environment_beats_file_key_by_key() {
        let s = Settings::resolve(
            flags(&["--listen", "127.0.0.1:1", "--max-event-bytes", "10"]),
            file("listen = \"0.0.0.0:9000\"\nmax_event_bytes = 20\nmax_body_bytes = 30"),
        )
        .unwrap();
        assert_eq!(s.listen, "127.0.0.1:1");
        assert_eq!(s.max_event_bytes, 10);
        assert_eq!(s.max_body_bytes, 30, "keys the flags leave out still come from the file");
    }

    #[test]
    fn the_store_defaults_to_the_embedded_store_in_the_data_dir() {
        let s = Settings::resolve(ConfigLayer::default(), file("data_dir = \"/var/lib/bifrost\"")).unwrap();
        assert_eq!(s.store, StoreSpec::Sqlite(PathBuf::from("/var/lib/bifrost")));
        let s = Settings::resolve(flags(&["--store", "memory:"]), file("data_dir = \"/x\"")).unwrap();
        assert_eq!(s.store, StoreSpec::Memory);
    }

    #[test]
    fn unknown_keys_in_the_file_are_named_in_the_error() {
        let err = ConfigLayer::from_toml("listen = \"a:1\"\nlisten_addr = \"b:2\"").unwrap_err().to_string();
        assert!(err.contains("listen_addr"), "{err}");
        assert!(err.contains("line 2"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn invalid_values_are_rejected() {
        assert!(Settings::resolve(ConfigLayer::default(), file("durability = \"sometimes\"")).is_err());
        assert!(Settings::resolve(ConfigLayer::default(), file("max_body_bytes = 0")).is_err());
        assert!(ConfigLayer::from_toml("max_body_bytes = \"big\"").is_err());
    }

    #[test]
    fn printed_settings_read_back_as_the_same_settings() {
        let s = Settings::resolve(
            flags(&[
                "--listen",
                "[::1]:7000",
                "--log",
                "debug,hyper=warn",
                "--store",
                "memory:",
                "--pg-schema",
                "events",
                "--pg-idle-timeout-ms",
                "1234",
            ]),
            ConfigLayer::default(),
        )
        .unwrap();
        let again = Settings::resolve(ConfigLayer::default(), file(&s.to_string())).unwrap();
        assert_eq!(again, s);
    }
}
