//! A webhook receiver for end-to-end tests: a real HTTP server on a loopback port that
//! records every request (arrival time, headers, raw body) and answers as the test
//! programs it (a default reply, a queue of replies, or a function of the request and of
//! those before it; each with a status, an optional `Retry-After` and a delay). It can go
//! down (stop listening: connections are refused) and come up again on the same port.
//!
//! It owns its tokio runtime, so synchronous tests use it as it is; none of its methods may
//! be called from inside an async context.
//!
//! Also a Standard Webhooks v1 verifier written from the specification alone
//! (<https://www.standardwebhooks.com/>): the signed content is
//! `{webhook-id}.{webhook-timestamp}.{body}`, the key the base64-decoded secret after its
//! `whsec_` prefix, the signature HMAC-SHA256 in base64; `webhook-signature` holds
//! space-separated `v1,<signature>` entries, valid when any one matches; the timestamp must
//! be within 5 minutes of now.
//!
//! And a minimal blocking HTTP/1.1 client ([`send`]) for the tests' calls to the API.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit as _, Mac as _};
use serde_json::Value;
use sha2::Sha256;

/// One request as it reached the receiver.
#[derive(Clone, Debug)]
pub struct Request {
    /// When it arrived (before any programmed delay).
    pub at: Instant,
    /// Its arrival as wall-clock time.
    pub at_wall: SystemTime,
    pub method: String,
    /// Path and query, as sent.
    pub path: String,
    /// Header names lower-cased, in arrival order (a repeated header appears repeatedly).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The status it was answered with.
    pub status: u16,
    /// When the answer went out (after the delay); `None` while still being answered.
    pub answered_at: Option<Instant>,
}

impl Request {
    /// The first value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    /// Every value of a header.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().filter(|(k, _)| *k == name).map(|(_, v)| v.as_str()).collect()
    }

    pub fn webhook_id(&self) -> &str {
        self.header("webhook-id").unwrap_or("")
    }

    /// The body parsed as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The `id` of the JSON body (the event id), or "".
    pub fn event_id(&self) -> String {
        self.json()["id"].as_str().unwrap_or("").to_owned()
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Whether `needle` occurs in the raw body, byte for byte.
    pub fn body_contains(&self, needle: &[u8]) -> bool {
        !needle.is_empty() && self.body.windows(needle.len()).any(|w| w == needle)
    }
}

/// How to answer one request.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<String>,
    pub delay: Duration,
    pub body: String,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply { status, retry_after: None, delay: Duration::ZERO, body: String::new() }
    }

    pub fn ok() -> Reply {
        Reply::status(200)
    }

    pub fn retry_after(mut self, value: &str) -> Reply {
        self.retry_after = Some(value.to_owned());
        self
    }

    pub fn delay(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }

    pub fn body(mut self, body: &str) -> Reply {
        self.body = body.to_owned();
        self
    }
}

/// Decides the reply from the request and every request that came before it.
pub type Responder = Box<dyn Fn(&Request, &[Request]) -> Reply + Send>;

struct Programme {
    requests: Vec<Request>,
    default: Reply,
    queue: VecDeque<Reply>,
    responder: Option<Responder>,
}

type Shared = Arc<Mutex<Programme>>;

/// Stops the current server, and tells when it has stopped listening.
struct Serving {
    stop: tokio::sync::oneshot::Sender<()>,
    stopped: std::sync::mpsc::Receiver<()>,
}

pub struct Receiver {
    runtime: Option<tokio::runtime::Runtime>,
    shared: Shared,
    port: u16,
    serving: Mutex<Option<Serving>>,
}

impl Receiver {
    /// Listens on 127.0.0.1 on an ephemeral port, answering 200 by default.
    pub fn start() -> Receiver {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("receiver")
            .enable_all()
            .build()
            .unwrap();
        let listener = bind(&runtime, 0).expect("bind the receiver");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Mutex::new(Programme {
            requests: Vec::new(),
            default: Reply::ok(),
            queue: VecDeque::new(),
            responder: None,
        }));
        let receiver = Receiver { runtime: Some(runtime), shared, port, serving: Mutex::new(None) };
        receiver.serve(listener);
        receiver
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().unwrap()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The reply when neither the queue nor a responder decides.
    pub fn set_default(&self, reply: Reply) {
        self.shared.lock().unwrap().default = reply;
    }

    /// Replies used first, one per request, in order.
    pub fn push(&self, reply: Reply) {
        self.shared.lock().unwrap().queue.push_back(reply);
    }

    /// A function deciding every reply not taken from the queue.
    pub fn respond_with(&self, responder: impl Fn(&Request, &[Request]) -> Reply + Send + 'static) {
        self.shared.lock().unwrap().responder = Some(Box::new(responder));
    }

    /// Back to the default reply for every request.
    pub fn clear_responder(&self) {
        self.shared.lock().unwrap().responder = None;
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.lock().unwrap().requests.clone()
    }

    pub fn count(&self) -> usize {
        self.shared.lock().unwrap().requests.len()
    }

    /// Requests arrived but not yet answered.
    pub fn in_flight(&self) -> usize {
        self.shared.lock().unwrap().requests.iter().filter(|r| r.answered_at.is_none()).count()
    }

    /// The requests carrying this `webhook-id`, in arrival order.
    pub fn with_webhook_id(&self, id: &str) -> Vec<Request> {
        self.requests().into_iter().filter(|r| r.webhook_id() == id).collect()
    }

    /// Polls until `done` holds for the requests so far; panics after `deadline`.
    pub fn wait_until(
        &self,
        what: &str,
        deadline: Duration,
        done: impl Fn(&[Request]) -> bool,
    ) -> Vec<Request> {
        let started = Instant::now();
        loop {
            let requests = self.requests();
            if done(&requests) {
                return requests;
            }
            if started.elapsed() > deadline {
                let seen: Vec<String> = requests
                    .iter()
                    .map(|r| format!("{} {} {} -> {}", r.method, r.path, r.webhook_id(), r.status))
                    .collect();
                panic!("the receiver did not see {what} within {deadline:?}; it saw {seen:#?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops listening: new connections are refused, idle keep-alive connections are
    /// closed, requests being answered finish. Returns once the port is closed.
    pub fn down(&self) {
        let serving = self.serving.lock().unwrap().take();
        if let Some(serving) = serving {
            let _ = serving.stop.send(());
            serving.stopped.recv_timeout(Duration::from_secs(30)).expect("the receiver did not stop");
        }
    }

    /// Listens again on the same port.
    pub fn up(&self) {
        if self.serving.lock().unwrap().is_some() {
            return;
        }
        let started = Instant::now();
        let listener = loop {
            match bind(self.runtime(), self.port) {
                Ok(listener) => break listener,
                Err(_) if started.elapsed() < Duration::from_secs(10) => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("the receiver could not listen on port {} again: {e}", self.port),
            }
        };
        self.serve(listener);
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (stopped_tx, stopped) = std::sync::mpsc::channel();
        let app = Router::new().fallback(handle).with_state(Arc::clone(&self.shared));
        self.runtime().spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop_rx.await;
                })
                .await;
            let _ = stopped_tx.send(());
        });
        *self.serving.lock().unwrap() = Some(Serving { stop, stopped });
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(serving) = self.serving.get_mut().ok().and_then(Option::take) {
            let _ = serving.stop.send(());
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A listener on 127.0.0.1:`port` (0: ephemeral) with SO_REUSEADDR, so that the same port
/// can be taken again while connections of the previous listener linger in TIME_WAIT.
fn bind(runtime: &tokio::runtime::Runtime, port: u16) -> std::io::Result<tokio::net::TcpListener> {
    let _context = runtime.enter();
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
    socket.listen(1024)
}

async fn handle(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut request = Request {
        at: Instant::now(),
        at_wall: SystemTime::now(),
        method: method.to_string(),
        path: uri.path_and_query().map_or_else(|| uri.path().to_owned(), ToString::to_string),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (k.as_str().to_ascii_lowercase(), String::from_utf8_lossy(v.as_bytes()).into_owned())
            })
            .collect(),
        body: body.to_vec(),
        status: 0,
        answered_at: None,
    };
    let (index, reply) = {
        let mut programme = shared.lock().unwrap();
        let reply = match programme.queue.pop_front() {
            Some(reply) => reply,
            None => match &programme.responder {
                Some(responder) => responder(&request, &programme.requests),
                None => programme.default.clone(),
            },
        };
        request.status = reply.status;
        programme.requests.push(request);
        (programme.requests.len() - 1, reply)
    };
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    shared.lock().unwrap().requests[index].answered_at = Some(Instant::now());
    let mut response = Response::builder().status(reply.status);
    if let Some(retry_after) = &reply.retry_after {
        response = response.header("retry-after", retry_after);
    }
    response.body(Body::from(reply.body)).unwrap()
}

// ---------------------------------------------------------------------------------------
// Standard Webhooks v1 verification.

/// How far a `webhook-timestamp` may be from now.
pub const TOLERANCE_S: i64 = 5 * 60;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    MissingHeader(&'static str),
    BadSecret(String),
    BadTimestamp(String),
    TimestampOutOfTolerance { timestamp: i64, now: i64 },
    NoMatchingSignature,
}

/// The key of a `whsec_…` secret (a secret without the prefix is taken as it is).
pub fn secret_key(secret: &str) -> Result<Vec<u8>, Invalid> {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    BASE64.decode(encoded).map_err(|e| Invalid::BadSecret(format!("{secret:?}: {e}")))
}

fn mac(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256>>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
pub fn sign(secret: &str, id: &str, timestamp: &str, body: &[u8]) -> String {
    let key = secret_key(secret).expect("a valid secret");
    format!("v1,{}", BASE64.encode(mac(&key, id, timestamp, body).finalize().into_bytes()))
}

/// Whether one `webhook-signature` entry is a valid v1 signature with `secret`. Entries of
/// other versions never match. The comparison is constant-time.
pub fn entry_matches(secret: &str, id: &str, timestamp: &str, body: &[u8], entry: &str) -> bool {
    let Ok(key) = secret_key(secret) else { return false };
    let Some(("v1", signature)) = entry.split_once(',') else { return false };
    let Ok(signature) = BASE64.decode(signature) else { return false };
    mac(&key, id, timestamp, body).verify_slice(&signature).is_ok()
}

/// The entries of a `webhook-signature` header, in order.
pub fn signature_entries(header: &str) -> Vec<&str> {
    header.split(' ').filter(|e| !e.is_empty()).collect()
}

/// Verifies a delivery as a receiver following the specification would.
pub fn verify(
    secret: &str,
    id: &str,
    timestamp: &str,
    body: &[u8],
    signature_header: &str,
    now: i64,
) -> Result<(), Invalid> {
    secret_key(secret)?;
    let ts: i64 = timestamp.trim().parse().map_err(|_| Invalid::BadTimestamp(timestamp.to_owned()))?;
    if (now - ts).abs() > TOLERANCE_S {
        return Err(Invalid::TimestampOutOfTolerance { timestamp: ts, now });
    }
    if signature_entries(signature_header).iter().any(|e| entry_matches(secret, id, timestamp, body, e)) {
        Ok(())
    } else {
        Err(Invalid::NoMatchingSignature)
    }
}

pub fn unix_now() -> i64 {
    i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()).unwrap()
}

/// Verifies a recorded request with its own headers, against the current time.
pub fn verify_request(secret: &str, request: &Request) -> Result<(), Invalid> {
    let id = request.header("webhook-id").ok_or(Invalid::MissingHeader("webhook-id"))?;
    let ts = request.header("webhook-timestamp").ok_or(Invalid::MissingHeader("webhook-timestamp"))?;
    let sig = request.header("webhook-signature").ok_or(Invalid::MissingHeader("webhook-signature"))?;
    verify(secret, id, ts, &request.body, sig, unix_now())
}

/// Whether the `n`th entry of the request's signature header verifies with `secret`.
pub fn nth_entry_matches(secret: &str, request: &Request, n: usize) -> bool {
    let (Some(id), Some(ts), Some(sig)) = (
        request.header("webhook-id"),
        request.header("webhook-timestamp"),
        request.header("webhook-signature"),
    ) else {
        return false;
    };
    signature_entries(sig).get(n).is_some_and(|e| entry_matches(secret, id, ts, &request.body, e))
}

// ---------------------------------------------------------------------------------------
// A minimal blocking HTTP/1.1 client: one connection per request (`Connection: close`), so
// the tests need no runtime and depend on no HTTP client library's features.

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned())
}

/// Sends one request to `addr` (`host:port`) and reads the whole answer.
pub fn send(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Answer> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let target = addr.to_socket_addrs()?.next().ok_or_else(|| invalid("no address"))?;
    let mut stream = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_answer(&raw)
}

fn parse_answer(raw: &[u8]) -> std::io::Result<Answer> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| invalid("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| invalid("no status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &raw[end + 4..];
    let chunked =
        headers.iter().any(|(k, v)| k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        let mut body = Vec::new();
        let mut at = 0;
        loop {
            let line_end = rest[at..]
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| invalid("a chunk without a size line"))?;
            let size_text = String::from_utf8_lossy(&rest[at..at + line_end]).into_owned();
            let size_text = size_text.split(';').next().unwrap_or("").trim().to_owned();
            let size = usize::from_str_radix(&size_text, 16).map_err(|_| invalid("a bad chunk size"))?;
            at += line_end + 2;
            if size == 0 {
                break;
            }
            let chunk = rest.get(at..at + size).ok_or_else(|| invalid("a short chunk"))?;
            body.extend_from_slice(chunk);
            at += size + 2;
        }
        body
    } else {
        let length = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok());
        match length {
            Some(length) => rest.get(..length).ok_or_else(|| invalid("a short body"))?.to_vec(),
            None => rest.to_vec(),
        }
    };
    Ok(Answer { status, headers, body })
}
