//! The client handle, its builder, and the HTTP exchange every call goes through.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bifrost_api::HeadBody;
use bifrost_core::{LogFilter, Position};
use bytes::Bytes;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result, problem_from_answer};
use crate::head;
use crate::sse::{SseEvent, SseParser};
use crate::wire;

/// A client of one Bifrost server. Cheap to clone: clones share one connection pool, one
/// head watch and one closed state.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    transport: Arc<Transport>,
    /// Cancelled by `close`: ends subscriptions and refuses every later call.
    closed: CancellationToken,
    head: Mutex<HeadState>,
}

/// The head watch: the sender lives here (and only here, so dropping it closes the
/// watch); the follower task holds a weak reference.
struct HeadState {
    sender: Option<Arc<watch::Sender<Position>>>,
    follower: Option<AbortHandle>,
    /// The last value, for receivers asked for after `close`.
    last: Position,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last clone is gone: nobody can read the head any more.
        if let Some(follower) = lock(&self.head).follower.take() {
            follower.abort();
        }
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.inner.transport.base.as_str())
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded state stays consistent even if a holder panicked: every update is one
    // assignment.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Client {
    /// A client of the server at `base_url` (e.g. `http://127.0.0.1:7070`) with the
    /// default settings.
    pub fn new(base_url: &str) -> Result<Client> {
        Self::builder(base_url).build()
    }

    pub fn builder(base_url: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(base_url.into())
    }

    /// The server's base URL, ending in `/`.
    pub fn base_url(&self) -> &Url {
        &self.inner.transport.base
    }

    /// Asks the server for the position of the last committed event and moves the head
    /// watch ([`EventStore::head`](bifrost_core::EventStore::head)) up to it.
    pub async fn fetch_head(&self) -> Result<Position> {
        self.check_open()?;
        let head = self.inner.transport.log_head().await?;
        self.advance_head(head);
        Ok(head)
    }

    pub(crate) fn transport(&self) -> &Transport {
        &self.inner.transport
    }

    pub(crate) fn shared_transport(&self) -> Arc<Transport> {
        Arc::clone(&self.inner.transport)
    }

    pub(crate) fn closed_token(&self) -> CancellationToken {
        self.inner.closed.clone()
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        if self.inner.closed.is_cancelled() { Err(Error::Closed) } else { Ok(()) }
    }

    /// Moves the head watch up to `position`, a position the server has shown to exist
    /// (never beyond its head). The head never moves back.
    pub(crate) fn advance_head(&self, position: Position) {
        let mut state = lock(&self.inner.head);
        if let Some(sender) = &state.sender {
            head::advance(sender, position);
        }
        state.last = state.last.max(position);
    }

    /// A receiver of the head watch; starts the follower on first use.
    pub(crate) fn head_receiver(&self) -> watch::Receiver<Position> {
        let mut state = lock(&self.inner.head);
        let Some(sender) = &state.sender else {
            // Closed: a receiver whose sender is gone, so waiting on it ends at once.
            let (_, receiver) = watch::channel(state.last);
            return receiver;
        };
        let receiver = sender.subscribe();
        // A follower ends only with the client, or with the runtime it ran on.
        if state.follower.as_ref().is_none_or(AbortHandle::is_finished) {
            // Outside a runtime there is nothing to run the follower on: the watch then
            // moves only with this client's own appends and reads.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let task = head::follow(
                    Arc::clone(&self.inner.transport),
                    Arc::downgrade(sender),
                    self.inner.closed.clone(),
                );
                state.follower = Some(runtime.spawn(task).abort_handle());
            }
        }
        receiver
    }

    /// Refuses every later call, ends subscriptions and the head watch. Idempotent.
    pub(crate) fn shut(&self) {
        self.inner.closed.cancel();
        let mut state = lock(&self.inner.head);
        if let Some(sender) = state.sender.take() {
            state.last = state.last.max(*sender.borrow());
        }
        if let Some(follower) = state.follower.take() {
            follower.abort();
        }
    }
}

/// Settings of a [`Client`].
#[must_use]
pub struct ClientBuilder {
    base_url: String,
    timeout: Duration,
    connect_timeout: Duration,
    idle_timeout: Duration,
    reconnect_min: Duration,
    reconnect_max: Duration,
    max_reconnects: Option<u32>,
    headers: HeaderMap,
    http: Option<reqwest::Client>,
    problems: Vec<String>,
}

impl ClientBuilder {
    fn new(base_url: String) -> Self {
        Self {
            base_url,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(45),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            max_reconnects: None,
            headers: HeaderMap::new(),
            http: None,
            problems: Vec::new(),
        }
    }

    /// Longest wait for a whole answer (default 30 s). A long-poll fetch gets its `wait`
    /// on top; a live subscription is bounded by [`idle_timeout`](Self::idle_timeout)
    /// instead.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Longest wait for a TCP connection (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// A live subscription that receives nothing, not even a heartbeat, for this long is
    /// taken as dropped and reconnected (default 45 s; the server sends a heartbeat at
    /// least every 15 s).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Delays between reconnection attempts of live subscriptions and of the head
    /// follower: from `min`, doubling up to `max` (default 100 ms to 5 s).
    pub fn reconnect_delay(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min = min;
        self.reconnect_max = max.max(min);
        self
    }

    /// A live subscription gives up after this many failed reconnections in a row (a
    /// connection that could not be opened, or that ended before anything came on it): its
    /// stream then yields [`Error::Disconnected`] (as `Unavailable`) and ends. Default:
    /// it never gives up.
    pub fn max_reconnects(mut self, attempts: u32) -> Self {
        self.max_reconnects = Some(attempts);
        self
    }

    /// A header sent with every request, e.g. an API key.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        match (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            (Ok(name), Ok(mut value)) => {
                value.set_sensitive(true);
                self.headers.insert(name, value);
            }
            _ => self.problems.push(format!("invalid header {name:?}")),
        }
        self
    }

    /// `Authorization: Bearer <token>` on every request.
    pub fn bearer_token(mut self, token: &str) -> Self {
        match HeaderValue::try_from(format!("Bearer {token}")) {
            Ok(mut value) => {
                value.set_sensitive(true);
                self.headers.insert(AUTHORIZATION, value);
            }
            Err(_) => self.problems.push("the bearer token is not a valid header value".into()),
        }
        self
    }

    /// Uses this `reqwest` client (its TLS, proxy and pool settings) instead of building
    /// one; [`connect_timeout`](Self::connect_timeout) then does not apply.
    pub fn http_client(mut self, http: reqwest::Client) -> Self {
        self.http = Some(http);
        self
    }

    pub fn build(self) -> Result<Client> {
        if let Some(problem) = self.problems.into_iter().next() {
            return Err(Error::Config(problem));
        }
        let mut base = Url::parse(&self.base_url)
            .map_err(|e| Error::Config(format!("invalid server URL {:?}: {e}", self.base_url)))?;
        match base.scheme() {
            "http" => {}
            "https" if self.http.is_some() => {}
            "https" => {
                return Err(Error::Config(format!(
                    "{base} needs TLS, which this client does not build in: pass a reqwest client \
                     with TLS enabled through ClientBuilder::http_client"
                )));
            }
            other => return Err(Error::Config(format!("unsupported URL scheme {other:?} in {base}"))),
        }
        if base.cannot_be_a_base() {
            return Err(Error::Config(format!("{base} cannot be a base URL")));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        base.set_query(None);
        base.set_fragment(None);
        let http = match self.http {
            Some(http) => http,
            None => reqwest::Client::builder()
                .connect_timeout(self.connect_timeout)
                // Answers are small and live frames must not wait for a delayed ACK.
                .tcp_nodelay(true)
                .build()
                .map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))?,
        };
        let transport = Transport {
            http,
            base,
            headers: self.headers,
            timeout: self.timeout,
            idle_timeout: self.idle_timeout,
            reconnect: (self.reconnect_min, self.reconnect_max),
            max_reconnects: self.max_reconnects,
        };
        let (sender, _) = watch::channel(0);
        Ok(Client {
            inner: Arc::new(Inner {
                transport: Arc::new(transport),
                closed: CancellationToken::new(),
                head: Mutex::new(HeadState { sender: Some(Arc::new(sender)), follower: None, last: 0 }),
            }),
        })
    }
}

/// What every request needs: the pool, the base URL, the settings.
pub(crate) struct Transport {
    http: reqwest::Client,
    base: Url,
    headers: HeaderMap,
    pub(crate) timeout: Duration,
    idle_timeout: Duration,
    reconnect: (Duration, Duration),
    pub(crate) max_reconnects: Option<u32>,
}

/// A request's query: name and value pairs, names repeated for lists.
pub(crate) type Query = Vec<(&'static str, String)>;

impl Transport {
    /// `segments` under the base URL, each percent-encoded, plus a query.
    pub(crate) fn url(&self, segments: &[&str], query: &[(&'static str, String)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query.iter().map(|(k, v)| (k, v.as_str())));
        }
        url
    }

    pub(crate) fn server(&self) -> String {
        self.base.as_str().trim_end_matches('/').to_owned()
    }

    fn transport_error(&self, source: reqwest::Error) -> Error {
        Error::Transport { server: self.server(), source }
    }

    fn request(&self, method: Method, url: Url) -> reqwest::RequestBuilder {
        self.http.request(method, url).headers(self.headers.clone())
    }

    /// Sends a request and returns the status and body of a 2xx answer; any other answer
    /// is an [`Error::Problem`].
    pub(crate) async fn exchange(
        &self,
        method: Method,
        url: Url,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes)> {
        let mut request = self.request(method, url).timeout(timeout);
        if let Some(body) = body {
            request = request.header(CONTENT_TYPE, "application/json").body(body);
        }
        let response = request.send().await.map_err(|e| self.transport_error(e))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| self.transport_error(e))?;
        if status.is_success() {
            Ok((status, body))
        } else {
            Err(Error::Problem(Box::new(problem_from_answer(status.as_u16(), &body))))
        }
    }

    pub(crate) async fn get(&self, url: Url) -> Result<Bytes> {
        self.exchange(Method::GET, url, None, self.timeout).await.map(|(_, body)| body)
    }

    /// The position of the last committed event (`GET /v1/head`).
    pub(crate) async fn log_head(&self) -> Result<Position> {
        let body = self.get(self.url(&["v1", "head"], &[])).await?;
        let head: HeadBody = wire::parse(&body)?;
        Ok(head.position)
    }

    /// Opens `GET /v1/subscribe`: the first connection with `from_position`, a reconnect
    /// with `Last-Event-ID` (the last position received), as the API resumes them.
    pub(crate) async fn open_sse(
        &self,
        query: &[(&'static str, String)],
        resume: Resume,
    ) -> Result<SseConnection> {
        let mut query = query.to_vec();
        let mut request = match resume {
            Resume::From(after) => {
                query.push(("from_position", after.to_string()));
                self.request(Method::GET, self.url(&["v1", "subscribe"], &query))
            }
            Resume::LastEventId(after) => self
                .request(Method::GET, self.url(&["v1", "subscribe"], &query))
                .header("Last-Event-ID", after.to_string()),
        };
        request = request.header(ACCEPT, "text/event-stream");
        // The answer's head must come in time; its body is open-ended.
        let sent = tokio::time::timeout(self.timeout, request.send()).await;
        let response = match sent {
            Ok(sent) => sent.map_err(|e| self.transport_error(e))?,
            Err(_) => return Err(Error::Timeout { server: self.server(), after: self.timeout }),
        };
        let status = response.status();
        if !status.is_success() {
            // The answer's headers came; its body must not hang the caller either.
            let body = tokio::time::timeout(self.timeout, response.bytes())
                .await
                .map_err(|_| Error::Timeout { server: self.server(), after: self.timeout })?
                .map_err(|e| self.transport_error(e))?;
            return Err(Error::Problem(Box::new(problem_from_answer(status.as_u16(), &body))));
        }
        let is_sse = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !is_sse {
            return Err(Error::Decode(format!(
                "{} did not answer with an event stream; is it a Bifrost server?",
                self.server()
            )));
        }
        Ok(SseConnection {
            response,
            parser: SseParser::default(),
            ready: Default::default(),
            idle_timeout: self.idle_timeout,
            received: false,
            ended: None,
        })
    }

    pub(crate) fn backoff(&self) -> Backoff {
        Backoff { min: self.reconnect.0, max: self.reconnect.1, next: self.reconnect.0 }
    }
}

/// Where a live connection starts.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Resume {
    /// The first connection: events after this position.
    From(Position),
    /// A reconnect: events after the last one received.
    LastEventId(Position),
}

/// One open `text/event-stream` answer.
pub(crate) struct SseConnection {
    response: reqwest::Response,
    parser: SseParser,
    ready: std::collections::VecDeque<SseEvent>,
    idle_timeout: Duration,
    /// Whether anything (an event, a heartbeat) came on this connection.
    pub(crate) received: bool,
    /// Why it ended, once it has.
    pub(crate) ended: Option<String>,
}

impl SseConnection {
    /// The next event, or `None` once the connection ended, broke or stayed silent past
    /// the idle timeout (the caller reconnects).
    pub(crate) async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(event);
            }
            match tokio::time::timeout(self.idle_timeout, self.response.chunk()).await {
                Ok(Ok(Some(bytes))) => {
                    self.received = true;
                    let ready = &mut self.ready;
                    self.parser.feed(&bytes, |event| ready.push_back(event));
                }
                Ok(Ok(None)) => {
                    tracing::debug!("the server ended the event stream");
                    self.ended = Some("the server closed the stream".into());
                    return None;
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "the event stream broke");
                    self.ended = Some(format!("the connection broke: {e}"));
                    return None;
                }
                Err(_) => {
                    tracing::debug!("the event stream stayed silent past the idle timeout");
                    self.ended = Some("the stream stayed silent past the idle timeout".into());
                    return None;
                }
            }
        }
    }
}

/// Reconnection delays: doubling from `min` up to `max`, back to `min` after a success.
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }
}

/// The query of a log filter: `type` repeated, `category`, `correlation_id`, `since`,
/// `until`.
pub(crate) fn filter_query(filter: &LogFilter) -> Query {
    let mut query: Query = filter.types.iter().map(|p| ("type", p.as_str().to_owned())).collect();
    if let Some(category) = &filter.category {
        query.push(("category", category.as_str().to_owned()));
    }
    if let Some(correlation_id) = &filter.correlation_id {
        query.push(("correlation_id", correlation_id.clone()));
    }
    if let Some(since) = filter.since {
        query.push(("since", since.to_string()));
    }
    if let Some(until) = filter.until {
        query.push(("until", until.to_string()));
    }
    query
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_built_under_the_base_with_encoded_parts() {
        let c = Client::new("http://127.0.0.1:7070").unwrap();
        let url = c.transport().url(&["v1", "streams", "order-1", "events"], &[("from", "3".into())]);
        assert_eq!(url.as_str(), "http://127.0.0.1:7070/v1/streams/order-1/events?from=3");
        let c = Client::new("http://h:1/prefix?x=1").unwrap();
        let url = c.transport().url(&["v1", "events"], &[("type", "a.#".into()), ("type", "b.*".into())]);
        assert_eq!(url.as_str(), "http://h:1/prefix/v1/events?type=a.%23&type=b.*");
        let url = c.transport().url(&["v1", "groups", "a/b c"], &[]);
        assert_eq!(url.as_str(), "http://h:1/prefix/v1/groups/a%2Fb%20c");
    }

    #[test]
    fn bad_configurations_are_refused() {
        assert!(matches!(Client::new("not a url"), Err(Error::Config(_))));
        assert!(matches!(Client::new("ftp://h/"), Err(Error::Config(_))));
        assert!(matches!(Client::new("https://h/"), Err(Error::Config(_))));
        assert!(Client::builder("https://h/").http_client(reqwest::Client::new()).build().is_ok());
        assert!(matches!(
            Client::builder("http://h/").header("bad header", "v").build(),
            Err(Error::Config(_))
        ));
        assert!(Client::builder("http://h/").header("x-api-key", "k").bearer_token("t").build().is_ok());
    }

    #[test]
    fn filters_become_repeated_query_parameters() {
        let filter = LogFilter {
            category: Some(bifrost_core::Category::new("order").unwrap()),
            correlation_id: Some("c 1".into()),
            since: Some(bifrost_core::Timestamp::from_micros(1)),
            until: Some(bifrost_core::Timestamp::from_micros(2)),
            ..LogFilter::default()
        }
        .with_types(["order.*", "task.#"])
        .unwrap();
        let c = Client::new("http://h/").unwrap();
        let url = c.transport().url(&["v1", "events"], &filter_query(&filter));
        assert_eq!(
            url.query(),
            Some(
                "type=order.*&type=task.%23&category=order&correlation_id=c+1\
                 &since=1970-01-01T00%3A00%3A00.000001Z&until=1970-01-01T00%3A00%3A00.000002Z"
            )
        );
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let c = Client::builder("http://h/")
            .reconnect_delay(Duration::from_millis(10), Duration::from_millis(35))
            .build()
            .unwrap();
        let mut b = c.transport().backoff();
        let delays: Vec<_> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [10, 20, 35, 35]);
        b.reset();
        assert_eq!(b.next_delay().as_millis(), 10);
    }
}
