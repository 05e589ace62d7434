//! The OpenAPI document. Paths come from the `#[utoipa::path]` attribute of each handler
//! (collected by `routes::api`); this holds what is not attached to a route.

use std::sync::OnceLock;

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::{Modify, OpenApi};

use bifrost_api::{ConflictBody, EventBody, Problem, StreamSummaryBody};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Bifrost",
        description = "Bifrost's HTTP API v1: an event store, global log, live subscriptions, consumer groups. \
            Every error is application/problem+json with a stable `type` such as `bifrost:wrong-expected-version`."
    ),
    components(schemas(EventBody, Problem, ConflictBody, StreamSummaryBody)),
    modifiers(&BearerAuth),
    tags(
        (name = "streams", description = "Append to and read streams"),
        (name = "log", description = "The global log of every event"),
        (name = "live", description = "Server-Sent Events and WebSocket"),
        (name = "realtime", description = "Real-time: publishes to WebSocket rooms, users and streams, room presence, bridging rules"),
        (name = "groups", description = "Consumer groups: competing consumers with leases, acks, retries and dead letters (at-least-once)"),
        (name = "webhooks", description = "Webhooks: integration events delivered to HTTP endpoints with Standard Webhooks signing, retries, an attempt log and replay"),
        (name = "bridges", description = "Broker bridges: the log out to NATS JetStream, RabbitMQ and Redis, at-least-once and in order"),
        (name = "schemas", description = "The schema registry: JSON Schemas per event type and version, checked on append"),
        (name = "security", description = "API keys"),
        (name = "operations", description = "Health, readiness, metrics, this document"),
    )
)]
pub(crate) struct ApiDoc;

/// `Authorization: Bearer` (an API key, the admin key or a JWT): needed by every `/v1`
/// route once auth is on, and by none while it is off (hence the empty alternative).
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some("An API key (bfk_…), the admin key, or a JWT"))
            .build();
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
        }
        openapi.security = Some(vec![
            SecurityRequirement::default(),
            SecurityRequirement::new("bearer", Vec::<String>::new()),
        ]);
    }
}

/// The OpenAPI document of this API, as JSON (built once).
pub fn openapi_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        crate::routes::api().into_openapi().to_json().unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot render the OpenAPI document");
            "{}".to_owned()
        })
    })
}
