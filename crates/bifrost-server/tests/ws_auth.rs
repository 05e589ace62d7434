//! WebSocket authentication with a real client over loopback: tokens at the upgrade (query
//! or header) and in an `auth` frame, bad and expired tokens, the auth timeout, a session
//! that ends at `exp`, claims that restrict channels and publishes, anonymous connections.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bifrost_core::{DurableStore, InMemoryStore};
use bifrost_server::{AuthConfig, JwtConfig, JwtKey, RealtimeConfig, ServerConfig};
use common::ws::{Node, assert_quiet, close_code, next_frame, request, send};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

const SECRET: &str = "a-test-secret-of-a-good-length-0123456789";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn token(claims: Value) -> String {
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

async fn node(realtime: RealtimeConfig) -> Node {
    node_with_leeway(realtime, JwtConfig::default().leeway_s).await
}

async fn node_with_leeway(realtime: RealtimeConfig, leeway_s: u64) -> Node {
    let store: Arc<dyn DurableStore> = InMemoryStore::shared();
    let jwt = JwtConfig { key: JwtKey::Secret(SECRET.into()), leeway_s, ..JwtConfig::default() };
    let auth = AuthConfig { jwt, ..AuthConfig::default() };
    Node::start(store, ServerConfig { realtime, auth, ..ServerConfig::default() }).await
}

#[tokio::test]
async fn a_good_token_connects_as_its_user_by_query_or_header() {
    let node = node(RealtimeConfig::default()).await;
    let good = token(json!({"sub": "alice", "exp": now() + 600}));
    let mut by_query = node.open(&format!("/v1/ws?access_token={good}")).await.unwrap();
    let connected = next_frame(&mut by_query).await;
    assert_eq!((connected["op"].as_str(), connected["user_id"].as_str()), (Some("connected"), Some("alice")));
    let mut by_header = node.open_with("/v1/ws", Some(&good)).await.unwrap();
    assert_eq!(next_frame(&mut by_header).await["user_id"], "alice");
    // `?user_id=` names nobody once tokens are checked.
    let mut named = node.open(&format!("/v1/ws?access_token={good}&user_id=mallory")).await.unwrap();
    assert_eq!(next_frame(&mut named).await["user_id"], "alice");
}

#[tokio::test]
async fn a_bad_or_expired_token_is_refused_at_the_upgrade() {
    let node = node(RealtimeConfig::default()).await;
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "alice"}),
        &EncodingKey::from_secret(b"someone else's secret"),
    )
    .unwrap();
    let expired = token(json!({"sub": "alice", "exp": now() - 120}));
    let no_sub = token(json!({"exp": now() + 600}));
    for bad in [forged.as_str(), expired.as_str(), no_sub.as_str(), "not-a-jwt"] {
        assert_eq!(node.open(&format!("/v1/ws?access_token={bad}")).await.err(), Some(401), "{bad}");
        assert_eq!(node.open_with("/v1/ws", Some(bad)).await.err(), Some(401), "{bad}");
    }
    let response = reqwest::Client::new()
        .get(node.url("/v1/ws?access_token=not-a-jwt"))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["type"], "bifrost:unauthorized");
}

#[tokio::test]
async fn without_a_token_the_client_must_authenticate_in_a_frame_in_time() {
    let realtime = RealtimeConfig { auth_timeout: Duration::from_millis(500), ..RealtimeConfig::default() };
    let node = node(realtime).await;

    // Anything before `auth` is refused; a good `auth` connects, echoing its id.
    let mut socket = node.open("/v1/ws").await.unwrap();
    send(&mut socket, json!({"op": "subscribe", "id": "early", "channel": "room:r"})).await;
    let refused = next_frame(&mut socket).await;
    assert_eq!(
        (refused["op"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("bifrost:unauthorized"))
    );
    send(&mut socket, json!({"op": "auth", "id": "a1", "token": token(json!({"sub": "bob"}))})).await;
    let connected = next_frame(&mut socket).await;
    assert_eq!(
        (connected["op"].as_str(), connected["id"].as_str(), connected["user_id"].as_str()),
        (Some("connected"), Some("a1"), Some("bob"))
    );
    assert_eq!(
        request(&mut socket, json!({"op": "subscribe", "channel": "user:bob"})).await["op"],
        "subscribed"
    );

    // A bad token in `auth`: an error, then close 4001; the subscribe path is never reached.
    let mut bad = node.open("/v1/ws").await.unwrap();
    send(&mut bad, json!({"op": "auth", "id": "a2", "token": "nope"})).await;
    let error = next_frame(&mut bad).await;
    assert_eq!((error["code"].as_str(), error["id"].as_str()), (Some("bifrost:unauthorized"), Some("a2")));
    assert_eq!(close_code(&mut bad).await, Some(4001));

    // Silence: closed 4001 after the timeout.
    let mut silent = node.open("/v1/ws").await.unwrap();
    assert_eq!(close_code(&mut silent).await, Some(4001));
}

#[tokio::test]
async fn the_session_ends_at_exp_unless_a_new_token_for_the_same_user_extends_it() {
    let node = node_with_leeway(RealtimeConfig::default(), 0).await;
    let short = token(json!({"sub": "carol", "exp": now() + 2}));
    let mut socket = node.open(&format!("/v1/ws?access_token={short}")).await.unwrap();
    next_frame(&mut socket).await;
    // Another user's token is refused and changes nothing.
    let other = request(
        &mut socket,
        json!({"op": "auth", "token": token(json!({"sub": "dave", "exp": now() + 600}))}),
    )
    .await;
    assert_eq!(other["code"], "bifrost:forbidden");
    let extended = request(
        &mut socket,
        json!({"op": "auth", "token": token(json!({"sub": "carol", "exp": now() + 4}))}),
    )
    .await;
    assert_eq!(extended["op"], "connected");
    let started = std::time::Instant::now();
    assert_eq!(close_code(&mut socket).await, Some(4001));
    assert!(started.elapsed() >= Duration::from_secs(2), "closed at the new exp, not the old one");

    let mut short_lived = node
        .open(&format!("/v1/ws?access_token={}", token(json!({"sub": "erin", "exp": now() + 1}))))
        .await
        .unwrap();
    next_frame(&mut short_lived).await;
    assert_eq!(close_code(&mut short_lived).await, Some(4001));
}

#[tokio::test]
async fn channel_claims_and_scopes_decide_what_a_connection_may_do() {
    let node = node(RealtimeConfig::default()).await;
    let claims = json!({"sub": "alice", "channels": ["room:project:*", "stream:order-1"], "scope": "append",
                        "info": {"name": "Alice"}});
    let mut alice = node.open(&format!("/v1/ws?access_token={}", token(claims))).await.unwrap();
    next_frame(&mut alice).await;
    for allowed in ["room:project:7", "stream:order-1", "user:alice"] {
        let reply = request(&mut alice, json!({"op": "subscribe", "channel": allowed})).await;
        assert_eq!(reply["op"], "subscribed", "{allowed}: {reply}");
    }
    for refused in ["room:lobby", "stream:order-2", "user:bob", "type:order.#", "room:project"] {
        let reply = request(&mut alice, json!({"op": "subscribe", "channel": refused})).await;
        assert_eq!(reply["code"], "bifrost:forbidden", "{refused}: {reply}");
    }
    let presence = request(&mut alice, json!({"op": "presence", "room": "lobby"})).await;
    assert_eq!(presence["code"], "bifrost:forbidden");
    let presence = request(&mut alice, json!({"op": "presence", "room": "project:7"})).await;
    assert_eq!(presence["users"][0]["info"], json!({"name": "Alice"}), "{presence}");

    // Publish: rooms it may subscribe to (persistent with `append`); users and streams are
    // for admins only.
    let ok = request(
        &mut alice,
        json!({"op": "publish", "channel": "room:project:9", "type": "t.x", "data": 1, "persistent": true}),
    )
    .await;
    assert_eq!(ok["op"], "ok", "{ok}");
    for refused in ["user:bob", "stream:order-1", "room:lobby"] {
        let reply =
            request(&mut alice, json!({"op": "publish", "channel": refused, "type": "t.x", "data": 1})).await;
        assert_eq!(reply["code"], "bifrost:forbidden", "{refused}: {reply}");
    }
    let reader = json!({"sub": "bob", "channels": ["room:*"]});
    let mut bob = node.open(&format!("/v1/ws?access_token={}", token(reader))).await.unwrap();
    next_frame(&mut bob).await;
    let reply = request(
        &mut bob,
        json!({"op": "publish", "channel": "room:a", "type": "t.x", "data": 1, "persistent": true}),
    )
    .await;
    assert_eq!(reply["code"], "bifrost:forbidden", "persistent needs append: {reply}");
    let reply =
        request(&mut bob, json!({"op": "publish", "channel": "room:a", "type": "t.x", "data": 1})).await;
    assert_eq!(reply["op"], "ok");

    let admin = token(json!({"sub": "root", "scope": "admin"}));
    let mut root = node.open(&format!("/v1/ws?access_token={admin}")).await.unwrap();
    next_frame(&mut root).await;
    for channel in ["user:bob", "type:order.#", "stream:anything"] {
        assert_eq!(
            request(&mut root, json!({"op": "subscribe", "channel": channel})).await["op"],
            "subscribed"
        );
    }
}

#[tokio::test]
async fn anonymous_connections_see_only_their_channels_publish_nothing_and_are_not_in_presence() {
    let realtime = RealtimeConfig { allow_anonymous: true, ..RealtimeConfig::default() };
    let node = node(realtime).await;
    let mut guest = node.open("/v1/ws").await.unwrap();
    let connected = next_frame(&mut guest).await;
    assert_eq!((connected["op"].as_str(), connected["user_id"].clone()), (Some("connected"), Value::Null));
    assert_eq!(
        request(&mut guest, json!({"op": "subscribe", "channel": "room:lobby"})).await["op"],
        "subscribed"
    );
    let reply = request(&mut guest, json!({"op": "subscribe", "channel": "stream:order-1"})).await;
    assert_eq!(reply["code"], "bifrost:forbidden");
    let reply =
        request(&mut guest, json!({"op": "publish", "channel": "room:lobby", "type": "t.x", "data": 1}))
            .await;
    assert_eq!(reply["code"], "bifrost:forbidden");
    let admin = token(json!({"sub": "ops", "scope": "admin", "exp": now() + 600}));
    let (_, presence) =
        node.call_as(Some(&admin), reqwest::Method::GET, "/v1/realtime/rooms/lobby/presence", None).await;
    assert_eq!(presence["user_count"], 0);

    // A member joining is seen by the guest; the guest's own arrival was seen by nobody.
    let mut member = node
        .open(&format!("/v1/ws?access_token={}", token(json!({"sub": "m", "channels": ["room:*"]}))))
        .await
        .unwrap();
    next_frame(&mut member).await;
    request(&mut member, json!({"op": "subscribe", "channel": "room:lobby"})).await;
    assert_eq!(next_frame(&mut guest).await["op"], "join");
    assert_quiet(&mut member).await;
}

/// Tenants on the WebSocket: each connection's channels are its tenant's, in its names; the
/// same channel name of two tenants and of the default tenant are three channels.
#[tokio::test]
async fn a_tenants_connection_sees_its_tenants_channels_only() {
    const ADMIN: &str = "the-admin-key-of-the-ws-tenancy-test-0123456789";
    let config = ServerConfig {
        auth: AuthConfig { admin_key: Some(ADMIN.into()), ..AuthConfig::default() },
        ..ServerConfig::default()
    };
    let store: Arc<dyn DurableStore> = InMemoryStore::shared();
    let node = Node::start(store, config).await;
    let tenant_key = async |tenant: &str| {
        let body = json!({"name": tenant, "scopes": ["admin"], "tenant": tenant});
        let (status, key) = node.call_as(Some(ADMIN), reqwest::Method::POST, "/v1/keys", Some(body)).await;
        assert_eq!(status, 201, "{key}");
        key["secret"].as_str().unwrap().to_owned()
    };
    let (acme, globex) = (tenant_key("acme").await, tenant_key("globex").await);
    let mut sockets = Vec::new();
    for token in [&acme, &globex, &ADMIN.to_owned()] {
        let mut socket = node.open(&format!("/v1/ws?access_token={token}")).await.unwrap();
        assert_eq!(next_frame(&mut socket).await["op"], "connected");
        common::ws::subscribe(&mut socket, "stream:order-1", None).await;
        common::ws::subscribe(&mut socket, "type:order.#", None).await;
        sockets.push(socket);
    }
    let id = "0190a1b2-0000-7000-8000-0000000000c1";
    for (token, by) in [(&acme, "acme"), (&globex, "globex"), (&ADMIN.to_owned(), "default")] {
        let body = json!({"events": [{"id": id, "type": "order.placed", "data": {"by": by}}]});
        let (status, _) =
            node.call_as(Some(token), reqwest::Method::POST, "/v1/streams/order-1/events", Some(body)).await;
        assert_eq!(status, 201);
    }
    for (socket, by) in sockets.iter_mut().zip(["acme", "globex", "default"]) {
        // Its one event on each of its two channels, in its names, and nothing else.
        let mut channels = Vec::new();
        for _ in 0..2 {
            let frame = next_frame(socket).await;
            assert_eq!(frame["op"], "event", "{by}: {frame}");
            let event = &frame["event"];
            assert_eq!(
                (event["data"]["by"].as_str(), event["stream"].as_str(), event["id"].as_str()),
                (Some(by), Some("order-1"), Some(id)),
                "{frame}"
            );
            channels.push(frame["channel"].as_str().unwrap().to_owned());
        }
        channels.sort();
        assert_eq!(channels, ["stream:order-1", "type:order.#"], "{by}");
        assert_quiet(socket).await;
    }
    // Publishes go to the publisher's tenant's channels, stored ones into its streams.
    for socket in &mut sockets {
        common::ws::subscribe(socket, "room:r", None).await;
    }
    // The message may come before the publish's reply: take both, in any order.
    send(
        &mut sockets[0],
        json!({"op": "publish", "id": "p1", "channel": "room:r", "type": "t.x", "data": {"n": 1}}),
    )
    .await;
    let (first, second) = (next_frame(&mut sockets[0]).await, next_frame(&mut sockets[0]).await);
    let (reply, message) = if first["op"] == "message" { (second, first) } else { (first, second) };
    assert_eq!((reply["op"].as_str(), reply["id"].as_str()), (Some("ok"), Some("p1")), "{reply}");
    assert_eq!(
        (message["op"].as_str(), message["channel"].as_str()),
        (Some("message"), Some("room:r")),
        "{message}"
    );
    let stored = json!({"target": {"rooms": ["r"]}, "type": "t.y", "data": {}, "persistent": true});
    let (status, body) =
        node.call_as(Some(&acme), reqwest::Method::POST, "/v1/realtime/publish", Some(stored)).await;
    assert_eq!((status, body["stream"].as_str()), (201, Some("realtime-r")), "{body}");
    let frame = next_frame(&mut sockets[0]).await;
    assert_eq!(
        (frame["channel"].as_str(), frame["event"]["stream"].as_str()),
        (Some("room:r"), Some("realtime-r")),
        "{frame}"
    );
    assert_eq!(frame["event"]["id"], body["event_id"]);
    for socket in &mut sockets {
        assert_quiet(socket).await;
    }
    // Presence per tenant: each room `r` holds its own tenant's one connection.
    let mut users = Vec::new();
    for socket in &mut sockets {
        let reply = request(socket, json!({"op": "presence", "room": "r"})).await;
        assert_eq!(
            (reply["op"].as_str(), reply["room"].as_str(), reply["user_count"].as_u64()),
            (Some("presence"), Some("r"), Some(1)),
            "{reply}"
        );
        users.push(reply["users"][0]["user_id"].clone());
    }
    assert!(users[0] != users[1] && users[1] != users[2], "{users:?}");
    let (status, body) =
        node.call_as(Some(&acme), reqwest::Method::GET, "/v1/realtime/rooms/r/presence", None).await;
    assert_eq!(
        (status, body["room"].as_str(), body["user_count"].as_u64()),
        (200, Some("r"), Some(1)),
        "{body}"
    );
    assert_eq!(body["users"][0]["user_id"], users[0]);
    // Bridging rules are the default tenant's.
    let (status, _) = node.call_as(Some(&acme), reqwest::Method::GET, "/v1/realtime/bridges", None).await;
    assert_eq!(status, 403);
}
