//! Bifrost's HTTP service: the v1 JSON API over an [`EventStore`], live Server-Sent Events,
//! health, Prometheus metrics and the OpenAPI document.
//!
//! The JSON shapes are `bifrost_api`'s; this crate reads requests into the engine's types,
//! maps the engine's answers onto the wire types, and writes the events of the read paths
//! by hand (a stored payload is never re-serialised). Invariants: every error answer is
//! `application/problem+json` made by [`error::ApiError`]; bad input never touches the
//! store; a panicking handler answers 500 and the process lives on.

mod auth;
mod cluster;
pub mod error;
mod extract;
mod limits;
mod metrics;
mod openapi;
mod realtime;
mod routes;
mod schemas;
mod tls;
mod wire;

use std::any::Any;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use axum::http::header::{ALLOW, CONTENT_TYPE};
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use bifrost_bridges::Bridges;
use bifrost_core::group::GroupEngine;
use bifrost_core::{DurableStore, EventStore};
use bifrost_webhooks::Webhooks;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;

use crate::error::{ApiError, PROBLEM_JSON, ProblemType};

pub use crate::auth::{AuthConfig, JwtConfig, JwtKey, MIN_ADMIN_KEY_CHARS};
pub use crate::cluster::{ClusterBusError, ClusterBusSpec, ClusterConfig, NatsBus, default_node_id};
pub use crate::limits::LimitsConfig;
pub use crate::metrics::{install_metrics_recorder, set_store_durable};
pub use crate::openapi::openapi_json;
pub use crate::realtime::RealtimeConfig;
pub use crate::schemas::SchemasConfig;
pub use crate::tls::{TlsFiles, load_tls};

/// Limits and timings of the HTTP service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Largest request body, in bytes (4 MiB).
    pub max_body_bytes: usize,
    /// Largest `data` of one event, in bytes (1 MiB).
    pub max_event_bytes: usize,
    /// Most events in one append request, over all its streams (1000).
    pub max_events_per_append: usize,
    /// Interval of the SSE heartbeat comment (15 s).
    pub sse_heartbeat: Duration,
    /// WebSocket connections (`/v1/ws`).
    pub realtime: RealtimeConfig,
    /// Who may call the API (`[auth]`).
    pub auth: AuthConfig,
    /// Rate limits per caller (`[limits]`).
    pub limits: LimitsConfig,
    /// The schema registry's rules (`[schemas]`).
    pub schemas: SchemasConfig,
    /// HTTPS only, with this certificate and key (`--tls-cert`, `--tls-key`).
    pub tls: Option<TlsFiles>,
    /// This node's identity and heartbeat among the nodes that share its store.
    pub cluster: ClusterConfig,
    /// Bridges named in the configuration file (`[[bridges]]`), by name: put at start, and
    /// refused (`409 bifrost:bridge-config-managed`) to `PUT` and `DELETE` over the API, on
    /// every node. `None` (the file has no `bridges`): this node leaves the managed set as it
    /// is; a list, even empty, is the whole set (a bridge it no longer names goes to the API).
    pub bridges: Option<Vec<(String, bifrost_api::BridgeRequest)>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 4 * 1024 * 1024,
            max_event_bytes: 1024 * 1024,
            max_events_per_append: 1000,
            sse_heartbeat: Duration::from_secs(15),
            realtime: RealtimeConfig::default(),
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            schemas: SchemasConfig::default(),
            tls: None,
            cluster: ClusterConfig::default(),
            bridges: None,
        }
    }
}

/// What every handler sees.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) store: Arc<dyn EventStore>,
    /// The consumer groups of `store`.
    pub(crate) groups: Arc<dyn GroupEngine>,
    pub(crate) config: Arc<ServerConfig>,
    pub(crate) metrics: Option<PrometheusHandle>,
    /// The webhooks of `store`; `None` in a router made without them (the routes answer 503).
    pub(crate) webhooks: Option<Webhooks>,
    /// Cancelled when the server shuts down: ends the infinite responses (SSE).
    pub(crate) shutdown: CancellationToken,
    /// Real-time delivery (WebSocket, publishes, presence, bridges) of this node.
    pub(crate) realtime: Arc<realtime::Hub>,
    /// This node among the nodes that share the store.
    pub(crate) cluster: Arc<cluster::Cluster>,
    /// The broker bridges of the store; this node runs those whose lease it holds.
    pub(crate) bridges: Arc<Bridges>,
    /// The address this node serves on, once [`serve`] knows it.
    pub(crate) listen: Option<Arc<str>>,
    /// Credentials: the admin key, API keys, JWTs.
    pub(crate) auth: Arc<auth::Auth>,
    /// Rate limits per caller.
    pub(crate) limits: Arc<limits::Limits>,
    /// JSON Schemas of event types, checked on append.
    pub(crate) schemas: Arc<schemas::Registry>,
}

impl AppState {
    fn new(
        store: Arc<dyn DurableStore>,
        groups: Arc<dyn GroupEngine>,
        config: ServerConfig,
        metrics: Option<PrometheusHandle>,
        shutdown: CancellationToken,
    ) -> Self {
        let auth = Arc::new(auth::Auth::new(&config.auth, Arc::clone(&store)));
        let limits = Arc::new(limits::Limits::new(&config.limits));
        let schemas = Arc::new(schemas::Registry::new(Arc::clone(&store), config.schemas.clone()));
        let realtime =
            Arc::new(realtime::Hub::new(Arc::clone(&store), &config, Arc::clone(&auth), shutdown.clone()));
        let cluster = Arc::new(cluster::Cluster::new(Arc::clone(&store), config.cluster.clone()));
        let bridges = Arc::new(
            Bridges::new(
                Arc::clone(&store),
                cluster.leases.clone(),
                config.cluster.heartbeat,
                Arc::new(bifrost_bridges::kinds::Brokers),
            )
            .with_ingest_check(Arc::new(schemas::IngestSchemas(Arc::clone(&schemas)))),
        );
        Self {
            store,
            groups,
            config: Arc::new(config),
            metrics,
            webhooks: None,
            shutdown,
            realtime,
            cluster,
            bridges,
            listen: None,
            limits,
            schemas,
            auth,
        }
    }
}

/// The whole API as a router, ready for `axum::serve` or `tower::ServiceExt::oneshot`.
/// `groups` must be the consumer groups of `store` (`bifrost_bus::groups::open`). `metrics: None` makes
/// `/metrics` answer 503.
pub fn router(
    store: Arc<dyn DurableStore>,
    groups: Arc<dyn GroupEngine>,
    config: ServerConfig,
    metrics: Option<PrometheusHandle>,
) -> Router {
    build(AppState::new(store, groups, config, metrics, CancellationToken::new()), None)
}

/// [`router`] with webhooks (`bifrost_webhooks::Webhooks::open` over the same store); their
/// delivery runs only where [`serve`] (or `Webhooks::start`) runs it.
pub fn router_with_webhooks(
    store: Arc<dyn DurableStore>,
    groups: Arc<dyn GroupEngine>,
    webhooks: Webhooks,
    config: ServerConfig,
    metrics: Option<PrometheusHandle>,
) -> Router {
    let mut state = AppState::new(store, groups, config, metrics, CancellationToken::new());
    state.webhooks = Some(webhooks);
    build(state, None)
}

/// [`router`] with extra routes behind the same layers (error mapping, panic catching,
/// metrics). For tests of those layers.
#[doc(hidden)]
pub fn router_with_extra_routes(
    store: Arc<dyn DurableStore>,
    groups: Arc<dyn GroupEngine>,
    config: ServerConfig,
    metrics: Option<PrometheusHandle>,
    extra: Router,
) -> Router {
    build(AppState::new(store, groups, config, metrics, CancellationToken::new()), Some(extra))
}

fn build(state: AppState, extra: Option<Router>) -> Router {
    let (mut api, _) = routes::api().split_for_parts();
    api = api.fallback(routes::ops::not_found);
    let body_limit = state.config.max_body_bytes;
    let node = HeaderValue::from_str(state.cluster.node_id())
        .unwrap_or_else(|_| HeaderValue::from_static("unnamed"));
    let guard = auth::Guard { auth: Arc::clone(&state.auth), limits: Arc::clone(&state.limits) };
    let auditor = auth::audit::Auditor { store: Arc::clone(&state.store) };
    let mut app = api.with_state(state);
    if let Some(extra) = extra {
        app = app.merge(extra);
    }
    // Innermost first: the body limit applies to extraction, panics become 500 problems,
    // every admin write is audited before its answer leaves, every request's credential is
    // checked against its route before any handler runs, anything else that is not a
    // problem yet becomes one, and the metrics see the final status under the matched route
    // template.
    app.layer(DefaultBodyLimit::max(body_limit))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(axum::middleware::from_fn_with_state(auditor, auth::audit::audit))
        .layer(axum::middleware::from_fn_with_state(guard, auth::authorize))
        .layer(axum::middleware::map_response(problems_only))
        .layer(axum::middleware::from_fn(metrics::track_requests))
        .layer(axum::middleware::map_response_with_state(node, name_the_node))
}

/// Every answer names the node that gave it (`Bifrost-Node`).
async fn name_the_node(State(node): State<HeaderValue>, mut response: Response) -> Response {
    response.headers_mut().insert(HeaderName::from_static("bifrost-node"), node);
    response
}

fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned());
    tracing::error!(panic = %message, "a request handler panicked");
    ApiError::internal("the server failed while handling this request").into_response()
}

/// Error answers that axum makes on its own (unknown method, body limits) are plain text;
/// rewrite them as problems so that clients see one error format.
async fn problems_only(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_problem = response
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    if is_problem {
        return response;
    }
    let kind = ProblemType::for_status(status.as_u16());
    let allow = response.headers().get(ALLOW).cloned();
    let detail = match kind {
        ProblemType::MethodNotAllowed => "this route does not support this method".to_owned(),
        _ => format!("the request failed with status {status}"),
    };
    let mut problem = ApiError::new(kind, detail).into_response();
    if let Some(allow) = allow {
        problem.headers_mut().insert(ALLOW, allow);
    }
    problem
}

/// Serves the API on `listener` until `shutdown` resolves, then shuts down gracefully:
/// stops accepting, ends every SSE stream, lets in-flight requests finish, stops webhook
/// delivery, closes the consumer groups (writing their last acks) and then the store.
/// With `webhooks`, this node delivers webhooks too.
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Arc<dyn DurableStore>,
    groups: Arc<dyn GroupEngine>,
    webhooks: Option<Webhooks>,
    config: ServerConfig,
    metrics: Option<PrometheusHandle>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let tls = match config.tls.as_ref().map(tls::load_tls).transpose() {
        Ok(tls) => tls,
        Err(e) => {
            if let Some(w) = &webhooks {
                let _ = w.close().await;
            }
            let _ = groups.close().await;
            let _ = store.close().await;
            return Err(std::io::Error::other(e));
        }
    };
    let token = CancellationToken::new();
    let mut state =
        AppState::new(Arc::clone(&store), Arc::clone(&groups), config, metrics.clone(), token.clone());
    state.webhooks = webhooks.clone();
    let listen = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    state.listen = Some(Arc::from(listen.as_str()));
    // The file's bridges are in place before any node's runner can meet them half-written.
    let configured = match &state.config.bridges {
        Some(bridges) => state.bridges.configure(bridges).await,
        None => Ok(()),
    };
    if let Err(e) = configured {
        if let Some(w) = &webhooks {
            let _ = w.close().await;
        }
        let _ = groups.close().await;
        let _ = store.close().await;
        return Err(std::io::Error::other(format!("cannot apply the configured bridges: {e}")));
    }
    let heartbeat = tokio::spawn(Arc::clone(&state.cluster).run(listen, token.clone()));
    let bridging = state.bridges.start(token.clone());
    state.realtime.start_cluster().await;
    let delivery = webhooks.as_ref().map(|w| w.start(token.clone()));
    let app = build(state, None);
    let upkeep = metrics.map(|handle| tokio::spawn(metrics_upkeep(handle, token.clone())));
    let signal = {
        let token = token.clone();
        async move {
            shutdown.await;
            token.cancel();
        }
    };
    let served = match tls {
        Some(tls) => {
            tokio::spawn(signal);
            tls::serve_tls(listener, app, tls, token.clone()).await
        }
        None => {
            // Responses are small and latency matters (SSE frames above all): without
            // NODELAY, Nagle holds a frame back until the client's delayed ACK, tens of
            // milliseconds later.
            let listener = listener.tap_io(|tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                }
            });
            // The client's address reaches the handlers (rate limits per IP).
            let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
            axum::serve(listener, app).with_graceful_shutdown(signal).await
        }
    };
    token.cancel();
    if let Some(task) = upkeep {
        let _ = task.await;
    }
    if let Some(task) = delivery {
        let _ = task.await;
    }
    let _ = heartbeat.await;
    let _ = bridging.await;
    // Groups write their state into the store, so they stop first.
    let webhooks_closed = match &webhooks {
        Some(w) => w.close().await.map_err(|e| std::io::Error::other(e.to_string())),
        None => Ok(()),
    };
    let groups_closed = groups.close().await;
    let closed = store.close().await;
    served?;
    webhooks_closed?;
    groups_closed.map_err(std::io::Error::other)?;
    closed.map_err(std::io::Error::other)
}

/// The Prometheus recorder needs periodic upkeep (histogram draining, idle metrics).
async fn metrics_upkeep(handle: PrometheusHandle, token: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tick.tick() => handle.run_upkeep(),
        }
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}
