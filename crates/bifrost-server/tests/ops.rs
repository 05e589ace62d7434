//! Operations routes, the error layers (unknown routes, methods, panics) and the OpenAPI
//! document.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::routing::get;
use bifrost_core::{
    AppendResult, DeleteMode, Direction, Error, EventId, EventStore, InMemoryStore, LogFilter, LogSlice,
    MemoryState, Position, RecordedEvent, StateChange, StateEntry, StateStore, StreamAppend, StreamInfo,
    StreamListQuery, StreamListing, StreamName, StreamSlice,
};
use bifrost_server::{ServerConfig, install_metrics_recorder, router, router_with_extra_routes};
use common::TestApp;
use serde_json::{Value, json};
use tokio::sync::watch;
use tower::ServiceExt;

#[tokio::test]
async fn healthz_and_readyz_answer_ok() {
    let app = TestApp::memory().await;
    let resp = app.get("/healthz").await;
    assert_eq!((resp.status, resp.json()), (StatusCode::OK, json!({"status": "ok"})));
    let resp = app.get("/readyz").await;
    assert_eq!((resp.status, resp.json()), (StatusCode::OK, json!({"status": "ready"})));
}

/// A store that is down, or failing in one way per method.
struct DownStore(watch::Sender<Position>);

#[async_trait]
impl EventStore for DownStore {
    async fn append_many(&self, _: Vec<StreamAppend>) -> bifrost_core::Result<Vec<AppendResult>> {
        Err(Error::Unavailable("down".into()))
    }
    async fn read_stream(
        &self,
        _: &StreamName,
        _: u64,
        _: Direction,
        _: usize,
    ) -> bifrost_core::Result<StreamSlice> {
        Err(Error::Unavailable("down".into()))
    }
    async fn read_all(&self, _: Position, _: &LogFilter, _: usize) -> bifrost_core::Result<LogSlice> {
        Err(Error::Storage { message: "disk on fire".into(), source: None })
    }
    async fn event(&self, _: EventId) -> bifrost_core::Result<Option<RecordedEvent>> {
        Err(Error::Unavailable("down".into()))
    }
    async fn stream_info(&self, _: &StreamName) -> bifrost_core::Result<StreamInfo> {
        Err(Error::Corrupt { message: "stored stream state is invalid: 7".into(), source: None })
    }
    async fn list_streams(&self, _: &StreamListQuery) -> bifrost_core::Result<StreamListing> {
        Err(Error::Unavailable("down".into()))
    }
    async fn delete_stream(&self, _: &StreamName, _: DeleteMode) -> bifrost_core::Result<()> {
        Err(Error::StateConflict { scope: "streams".into(), key: "a".into() })
    }
    fn head(&self) -> watch::Receiver<Position> {
        self.0.subscribe()
    }
}

#[async_trait]
impl StateStore for DownStore {
    async fn write_state(&self, _: Vec<StateChange>) -> bifrost_core::Result<()> {
        Err(Error::Unavailable("down".into()))
    }
    async fn read_state(&self, _: &str, _: &str) -> bifrost_core::Result<Option<bytes::Bytes>> {
        Err(Error::Unavailable("down".into()))
    }
    async fn scan_state(&self, _: &str, _: Option<&str>, _: usize) -> bifrost_core::Result<Vec<StateEntry>> {
        Err(Error::Unavailable("down".into()))
    }
}

#[tokio::test]
async fn readyz_answers_503_when_the_store_is_down_and_store_failures_map_to_problems() {
    let store = Arc::new(DownStore(watch::Sender::new(0)));
    // The groups keep their state elsewhere: opening them must not need the store.
    let groups =
        Arc::new(bifrost_bus::LocalGroups::open(store.clone(), Arc::new(MemoryState::new())).await.unwrap())
            as Arc<dyn bifrost_bus::GroupEngine>;
    let app = router(store, groups, ServerConfig::default(), None);
    let call = |req: Request<Body>| {
        let app = app.clone();
        async move {
            let resp = app.oneshot(req).await.unwrap();
            let status = resp.status();
            let ct = resp.headers()[header::CONTENT_TYPE].to_str().unwrap().to_owned();
            let body: Value =
                serde_json::from_slice(&axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap())
                    .unwrap();
            (
                status,
                ct,
                body["type"].as_str().unwrap().to_owned(),
                body["detail"].as_str().unwrap().to_owned(),
            )
        }
    };
    let (status, ct, ty, _) = call(Request::get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(
        (status, ct.as_str(), ty.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "application/problem+json", "bifrost:unavailable")
    );
    let append = Request::post("/v1/streams/a/events")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(r#"{"events":[{"type":"a","data":1}]}"#))
        .unwrap();
    let (status, _, ty, _) = call(append).await;
    assert_eq!((status, ty.as_str()), (StatusCode::SERVICE_UNAVAILABLE, "bifrost:unavailable"));
    let (status, _, ty, detail) = call(Request::get("/v1/events").body(Body::empty()).unwrap()).await;
    assert_eq!((status, ty.as_str()), (StatusCode::INTERNAL_SERVER_ERROR, "bifrost:internal"));
    assert!(!detail.contains("fire"), "driver detail stays in the log: {detail}");
    let (status, _, ty, detail) = call(Request::get("/v1/streams/a").body(Body::empty()).unwrap()).await;
    assert_eq!((status, ty.as_str()), (StatusCode::INTERNAL_SERVER_ERROR, "bifrost:internal"));
    assert!(!detail.contains("state"), "what does not decode stays in the log: {detail}");
    // Another writer got there first: the client may try again, so not a 500.
    let (status, _, ty, _) = call(Request::delete("/v1/streams/a").body(Body::empty()).unwrap()).await;
    assert_eq!((status, ty.as_str()), (StatusCode::CONFLICT, "bifrost:state-conflict"));
}

#[tokio::test]
async fn metrics_without_a_recorder_answer_503() {
    TestApp::memory().await.get("/metrics").await.assert_problem(503, "bifrost:unavailable");
}

#[tokio::test]
async fn metrics_render_appends_and_requests_by_route_template() {
    let handle = install_metrics_recorder().unwrap();
    let again = install_metrics_recorder().unwrap();
    let store = InMemoryStore::shared();
    let groups = bifrost_bus::groups::open(store.clone()).await.unwrap();
    let app = router(store, groups, ServerConfig::default(), Some(again));
    let append = Request::post("/v1/streams/order-77/events")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(common::events_body(3).to_string()))
        .unwrap();
    assert_eq!(app.clone().oneshot(append).await.unwrap().status(), StatusCode::CREATED);
    let read = Request::get("/v1/streams/order-77/events").body(Body::empty()).unwrap();
    assert_eq!(app.clone().oneshot(read).await.unwrap().status(), StatusCode::OK);

    let resp = app.oneshot(Request::get("/metrics").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/plain"));
    let text = String::from_utf8(axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap().to_vec())
        .unwrap();
    for needle in [
        "bifrost_appends_total",
        "bifrost_events_appended_total",
        "bifrost_events_read_total",
        "bifrost_append_duration_seconds_bucket{le=",
        "bifrost_append_duration_seconds_count",
        r#"route="/v1/streams/{stream}/events""#,
        r#"status="201""#,
        r#"method="POST""#,
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    assert!(!text.contains("order-77"), "raw paths must not become labels");
    assert!(!handle.render().is_empty());
}

#[tokio::test]
async fn an_unknown_route_is_a_404_problem() {
    let app = TestApp::memory().await;
    app.get("/nope").await.assert_problem(404, "bifrost:not-found");
    app.get("/v1/streams/a/events/extra").await.assert_problem(404, "bifrost:not-found");
}

#[tokio::test]
async fn a_wrong_method_is_a_405_problem_with_allow() {
    let app = TestApp::memory().await;
    let resp = app.call(Request::put("/v1/streams/a/events").body(Body::empty()).unwrap()).await;
    resp.assert_problem(405, "bifrost:method-not-allowed");
    let allow = resp.headers[header::ALLOW].to_str().unwrap();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
}

#[tokio::test]
async fn a_panicking_handler_answers_500_and_the_server_lives_on() {
    let store = InMemoryStore::shared();
    let groups = bifrost_bus::groups::open(store.clone()).await.unwrap();
    let extra: Router = Router::new().route(
        "/boom",
        get(|| async {
            if true {
                panic!("handler bug");
            }
            "unreachable"
        }),
    );
    let app = router_with_extra_routes(store, groups, ServerConfig::default(), None, extra);
    let resp = app.clone().oneshot(Request::get("/boom").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/problem+json");
    let body: Value =
        serde_json::from_slice(&axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap()).unwrap();
    assert_eq!(body["type"], "bifrost:internal");
    assert_eq!(body["status"], 500);
    assert!(!body["detail"].as_str().unwrap().contains("handler bug"));
    let resp = app.oneshot(Request::get("/healthz").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn openapi_json_describes_every_route() {
    let app = TestApp::memory().await;
    let resp = app.get("/openapi.json").await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.content_type(), "application/json");
    let doc = resp.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    let expected: [(&str, &[&str]); 20] = [
        ("/v1/streams/{stream}/events", &["post", "get"]),
        ("/v1/streams/{stream}", &["get", "delete"]),
        ("/v1/streams", &["get"]),
        ("/v1/append", &["post"]),
        ("/v1/events", &["get"]),
        ("/v1/events/{id}", &["get"]),
        ("/v1/head", &["get"]),
        ("/v1/subscribe", &["get"]),
        ("/healthz", &["get"]),
        ("/readyz", &["get"]),
        ("/metrics", &["get"]),
        ("/openapi.json", &["get"]),
        ("/v1/groups", &["get"]),
        ("/v1/groups/{group}", &["put", "get", "delete"]),
        ("/v1/groups/{group}/fetch", &["post"]),
        ("/v1/groups/{group}/ack", &["post"]),
        ("/v1/groups/{group}/nack", &["post"]),
        ("/v1/groups/{group}/dead-letters", &["get"]),
        ("/v1/groups/{group}/dead-letters/replay", &["post"]),
        ("/v1/groups/{group}/dead-letters/{event_id}", &["delete"]),
    ];
    for (path, methods) in expected {
        for method in methods {
            assert!(paths[path].get(*method).is_some(), "{method} {path} missing");
        }
    }
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for schema in [
        "EventBody",
        "Problem",
        "ConflictBody",
        "AppendResultBody",
        "AppendRequest",
        "MultiAppendRequest",
        "StreamAppendRequest",
        "NewEventRequest",
        "MetadataRequest",
        "ExpectedVersion",
        "StreamEventsBody",
        "LogEventsBody",
        "StreamListBody",
        "HeadBody",
        "StatusBody",
        "StreamInfoBody",
        "GroupBody",
        "GroupConfigBody",
        "GroupConfigRequest",
        "FetchBody",
        "MessageBody",
        "AckRequest",
        "NackRequest",
        "DeadLettersBody",
        "DeadLetterBody",
        "ReplayRequest",
    ] {
        assert!(schemas.contains_key(schema), "schema {schema} missing");
    }
    // Every reference resolves: no schema is named without being described.
    fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    out.push(r);
                }
                map.values().for_each(|v| refs(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    refs(&doc, &mut found);
    assert!(found.len() > 50, "{}", found.len());
    for r in found {
        let name = r.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("{r}"));
        assert!(schemas.contains_key(name), "{r} does not resolve");
    }
    assert_eq!(bifrost_server::openapi_json(), std::str::from_utf8(&resp.body).unwrap());
}
