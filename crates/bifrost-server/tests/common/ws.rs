//! A served node over loopback and a real WebSocket client for it: for the real-time tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bifrost_core::DurableStore;
use bifrost_server::ServerConfig;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub const WAIT: Duration = Duration::from_secs(10);

/// A node serving `store` on a loopback port until dropped.
pub struct Node {
    pub addr: SocketAddr,
    pub store: Arc<dyn DurableStore>,
    pub http: reqwest::Client,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Node {
    pub async fn start(store: Arc<dyn DurableStore>, config: ServerConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let groups = bifrost_bus::groups::open(Arc::clone(&store)).await.unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(bifrost_server::serve(
            listener,
            Arc::clone(&store),
            groups,
            None,
            config,
            None,
            async {
                let _ = stopped.await;
            },
        ));
        Self { addr, store, http: reqwest::Client::new(), _stop: stop }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `(status, JSON body)` of a request with an optional JSON body.
    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_as(None, method, path, body).await
    }

    /// [`Node::call`] with `Authorization: Bearer <token>`.
    pub async fn call_as(
        &self,
        token: Option<&str>,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() })
    }

    pub async fn publish(&self, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, "/v1/realtime/publish", Some(body)).await
    }

    /// A connection as `user` (dev mode: no JWT key), past its `connected` frame.
    pub async fn connect(&self, user: &str) -> Socket {
        let mut socket = self.open(&format!("/v1/ws?user_id={user}")).await.unwrap();
        let connected = next_frame(&mut socket).await;
        assert_eq!(connected["op"], "connected", "{connected}");
        socket
    }

    /// A WebSocket on `path_and_query`, or the HTTP status of a refused upgrade.
    pub async fn open(&self, path_and_query: &str) -> Result<Socket, u16> {
        self.open_with(path_and_query, None).await
    }

    pub async fn open_with(&self, path_and_query: &str, bearer: Option<&str>) -> Result<Socket, u16> {
        let mut request = format!("ws://{}{path_and_query}", self.addr).into_client_request().unwrap();
        if let Some(token) = bearer {
            request.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((socket, _)) => Ok(socket),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
            Err(e) => panic!("cannot connect: {e}"),
        }
    }
}

/// The next text frame, as JSON (pings and pongs skipped).
pub async fn next_frame(socket: &mut Socket) -> Value {
    loop {
        let message =
            tokio::time::timeout(WAIT, socket.next()).await.expect("a frame in time").unwrap().unwrap();
        match message {
            Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// The close code the server ends the connection with (frames before it are skipped).
pub async fn close_code(socket: &mut Socket) -> Option<u16> {
    loop {
        match tokio::time::timeout(WAIT, socket.next()).await.expect("a close in time") {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            None | Some(Err(_)) => return None,
        }
    }
}

pub async fn send(socket: &mut Socket, frame: Value) {
    socket.send(Message::Text(frame.to_string().into())).await.unwrap();
}

/// Sends `frame` and returns the reply that echoes its `id`.
pub async fn request(socket: &mut Socket, mut frame: Value) -> Value {
    let id = format!("r-{}", uuid::Uuid::new_v4().simple());
    frame["id"] = json!(id);
    send(socket, frame).await;
    loop {
        let reply = next_frame(socket).await;
        if reply["id"] == json!(id) {
            return reply;
        }
    }
}

/// Subscribes and checks the `subscribed` reply.
pub async fn subscribe(socket: &mut Socket, channel: &str, since: Option<u64>) -> Value {
    let mut frame = json!({"op": "subscribe", "channel": channel});
    if let Some(since) = since {
        frame["since_position"] = json!(since);
    }
    let reply = request(socket, frame).await;
    assert_eq!(reply["op"], "subscribed", "{reply}");
    assert_eq!(reply["channel"], channel);
    reply
}

/// Proves that nothing is queued for the client: a ping's `pong` is the next frame.
pub async fn assert_quiet(socket: &mut Socket) {
    send(socket, json!({"op": "ping", "id": "quiet"})).await;
    let next = next_frame(socket).await;
    assert_eq!(
        (next["op"].as_str(), next["id"].as_str()),
        (Some("pong"), Some("quiet")),
        "unexpected {next}"
    );
}
