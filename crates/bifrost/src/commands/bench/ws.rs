//! The WebSocket workloads: the server's memory per idle connection (`ws-idle`), and how
//! long one publish to a room takes to reach the last of its subscribers
//! (`ws-broadcast`; `ws-broadcast-stream` does the same with an event appended to a
//! stream).
//!
//! The server is a child process (this executable's `serve` on a fresh data dir and a free
//! loopback port), so that its resident memory (`VmRSS` in `/proc/<pid>/status`) is its
//! own and not the load generator's. Each client connection is one task that reads frames
//! and keeps none; the clients use small WebSocket buffers so that 10,000 of them fit in
//! the bench comfortably. Thousands of sockets in each process need a higher open-file
//! limit: the bench raises its own to the hard limit (the child inherits it) or says how.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore, oneshot};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::http::wait_ready;
use super::raw::RawClient;
use super::report::{self, MemoryFigures, Report};

/// Connections being opened at once (the server's accept backlog is 1,024).
const CONNECTING: usize = 64;
/// File descriptors each process needs beyond one per connection (the store, the
/// runtime, the HTTP client).
const FD_MARGIN: u64 = 512;
/// How long one publish may take to reach every subscriber, and opening every connection
/// may take, before the run fails (a hang guard).
const GRACE: Duration = Duration::from_secs(60);
/// Time left between publishes, so that one broadcast's tail does not queue behind the next.
const PAUSE: Duration = Duration::from_millis(20);
/// Time for the server's memory to settle after the last connection opened.
const SETTLE: Duration = Duration::from_secs(2);
/// The stderr lines of the child server kept for an error message.
const STDERR_LINES: usize = 20;
/// The user of every bench connection.
const USER: &str = "bench";

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the WebSocket workloads do.
pub(super) struct WsSpec<'a> {
    /// Connections opened (and subscribed) by each workload.
    pub(super) connections: usize,
    /// Publishes (or appends) of the broadcast workloads, one at a time.
    pub(super) publishes: u64,
    pub(super) run_id: &'a str,
}

/// Raises the soft open-file limit to the hard one (a child started afterwards inherits
/// it); fails with how to raise the hard limit when even that is below `needed`.
#[cfg(unix)]
pub(super) fn raise_fd_limit(connections: usize) -> anyhow::Result<()> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let needed = connections as u64 + FD_MARGIN;
    let limit = getrlimit(Resource::Nofile);
    let current = limit.current.unwrap_or(u64::MAX);
    if current >= needed {
        return Ok(());
    }
    // No hard limit: ask for what is needed (the kernel's own cap, nr_open, still holds).
    let target = limit.maximum.unwrap_or(needed);
    if target < needed {
        bail!(
            "{connections} WebSocket connections need {needed} open files, and the hard limit is {target}: \
             raise it (as root: `ulimit -Hn {needed}`, or `nofile` in /etc/security/limits.conf) and run \
             again, or pass a smaller --ws-connections"
        );
    }
    setrlimit(Resource::Nofile, Rlimit { current: Some(target), maximum: limit.maximum }).map_err(|e| {
        anyhow!("cannot raise the open-file limit to {target} ({e}): run `ulimit -n {needed}` first")
    })
}

#[cfg(not(unix))]
pub(super) fn raise_fd_limit(_connections: usize) -> anyhow::Result<()> {
    Ok(())
}

/// `bifrost serve` as a child process on a fresh data dir and a free loopback port; killed
/// when dropped.
struct ChildServer {
    child: Child,
    addr: String,
    stderr: Arc<Mutex<VecDeque<String>>>,
    _data_dir: tempfile::TempDir,
}

impl ChildServer {
    async fn start() -> anyhow::Result<Self> {
        let data_dir = tempfile::Builder::new()
            .prefix("bifrost-bench-ws-")
            .tempdir()
            .context("cannot create a data directory for the server")?;
        let exe = std::env::current_exe().context("cannot find the bifrost executable")?;
        let mut command = Command::new(exe);
        // The bench's settings, not the environment's.
        for (key, _) in std::env::vars_os() {
            if key.to_str().is_some_and(|k| k.starts_with("BIFROST_")) {
                command.env_remove(key);
            }
        }
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--log", "warn", "--data-dir"])
            .arg(data_dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().context("cannot start the server process")?;
        let stderr: Arc<Mutex<VecDeque<String>>> = Arc::default();
        let (addr_tx, addr_rx) = oneshot::channel();
        if let Some(pipe) = child.stderr.take() {
            let lines = Arc::clone(&stderr);
            std::thread::spawn(move || read_stderr(pipe, &lines, addr_tx));
        }
        let mut server = Self { child, addr: String::new(), stderr, _data_dir: data_dir };
        match tokio::time::timeout(Duration::from_secs(30), addr_rx).await {
            Ok(Ok(addr)) => server.addr = addr,
            _ => bail!("the server process did not start: {}", server.last_words()),
        }
        Ok(server)
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    /// The server's resident memory, in KiB.
    fn rss_kib(&self) -> anyhow::Result<u64> {
        rss_kib(&Path::new("/proc").join(self.child.id().to_string()).join("status"))
    }

    /// Fails when the server is no longer running.
    fn check_running(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!("the server process exited ({status}): {}", self.last_words()),
            Err(e) => bail!("cannot check on the server process: {e}"),
        }
    }

    fn last_words(&self) -> String {
        let lines = self.stderr.lock().map(|l| l.iter().cloned().collect::<Vec<_>>()).unwrap_or_default();
        if lines.is_empty() { "no output".to_owned() } else { lines.join(" | ") }
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Keeps the server's last stderr lines and sends the address it listens on.
fn read_stderr(
    pipe: std::process::ChildStderr,
    lines: &Mutex<VecDeque<String>>,
    addr_tx: oneshot::Sender<String>,
) {
    let mut addr_tx = Some(addr_tx);
    for line in BufReader::new(pipe).lines() {
        let Ok(line) = line else { break };
        if let Some((_, addr)) = line.split_once("listening on http://")
            && let Some(tx) = addr_tx.take()
        {
            let _ = tx.send(addr.trim().to_owned());
        }
        if let Ok(mut lines) = lines.lock() {
            if lines.len() == STDERR_LINES {
                lines.pop_front();
            }
            lines.push_back(line);
        }
    }
}

/// `VmRSS` of a `/proc/<pid>/status` file, in KiB.
fn rss_kib(status: &Path) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(status).with_context(|| {
        format!("cannot read {} (the WebSocket workloads need Linux's /proc)", status.display())
    })?;
    parse_rss_kib(&text).with_context(|| format!("no VmRSS in {}", status.display()))
}

fn parse_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    line.split_whitespace().next()?.parse().ok()
}

/// Small buffers: the bench holds thousands of client connections that read little.
fn client_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0)
}

/// Opens one connection, subscribes it to `channel` and waits for the `subscribed` answer.
/// Every connection is the same user, [`USER`]: a room tells its subscribers when a user
/// joins, and 10,000 users joining one room would measure that instead.
async fn connect(ws_url: &str, channel: &str) -> anyhow::Result<Socket> {
    let url = format!("{ws_url}?user_id={USER}");
    let (mut socket, _) = tokio_tungstenite::connect_async_with_config(url, Some(client_config()), true)
        .await
        .map_err(|e| anyhow!("cannot open a WebSocket to {ws_url}: {e}"))?;
    let subscribe = serde_json::json!({"op": "subscribe", "id": "s", "channel": channel}).to_string();
    socket.send(Message::Text(subscribe.into())).await.context("cannot send subscribe")?;
    while let Some(message) = socket.next().await {
        let Message::Text(text) = message.context("the WebSocket failed before subscribing")? else {
            continue;
        };
        let frame: Reply = serde_json::from_str(text.as_str()).context("a frame is not JSON")?;
        match frame.op.as_str() {
            "subscribed" => return Ok(socket),
            "error" => bail!("cannot subscribe to {channel}: {}", frame.message.unwrap_or_default()),
            _ => {}
        }
    }
    bail!("the server closed the connection before subscribing it to {channel}")
}

#[derive(Deserialize)]
struct Reply {
    op: String,
    #[serde(default)]
    message: Option<String>,
}

/// A frame that carries a tick: `message {"data": {"t"}}` (a publish) or `event {"event":
/// {"data": {"t"}}}` (a stored event).
#[derive(Deserialize)]
struct TickFrame {
    #[serde(default)]
    data: Option<Tick>,
    #[serde(default)]
    event: Option<TickEvent>,
}

#[derive(Deserialize)]
struct TickEvent {
    data: Tick,
}

#[derive(Deserialize)]
struct Tick {
    t: u64,
}

fn tick_of(text: &str) -> Option<u64> {
    let frame: TickFrame = serde_json::from_str(text).ok()?;
    frame.data.map(|d| d.t).or(frame.event.map(|e| e.data.t))
}

/// Counts, for the tick being broadcast, the clients that received it.
struct Arrivals {
    /// The tick awaited (`u64::MAX`: none yet).
    tick: AtomicU64,
    received: AtomicUsize,
    expected: usize,
    /// When the first and the last expected client received it.
    first: Mutex<Option<Instant>>,
    last: Mutex<Option<Instant>>,
    all: Notify,
    /// Clients whose connection ended.
    closed: AtomicUsize,
}

impl Arrivals {
    fn new(expected: usize) -> Self {
        Self {
            tick: AtomicU64::new(u64::MAX),
            received: AtomicUsize::new(0),
            expected,
            first: Mutex::new(None),
            last: Mutex::new(None),
            all: Notify::new(),
            closed: AtomicUsize::new(0),
        }
    }

    fn expect(&self, tick: u64) {
        self.received.store(0, Ordering::SeqCst);
        for slot in [&self.first, &self.last] {
            if let Ok(mut at) = slot.lock() {
                *at = None;
            }
        }
        self.tick.store(tick, Ordering::SeqCst);
    }

    fn arrived(&self, tick: u64) {
        let now = Instant::now();
        if tick != self.tick.load(Ordering::SeqCst) {
            return;
        }
        let received = self.received.fetch_add(1, Ordering::SeqCst) + 1;
        if received == 1
            && let Ok(mut first) = self.first.lock()
        {
            *first = Some(now);
        }
        if received == self.expected {
            if let Ok(mut last) = self.last.lock() {
                *last = Some(now);
            }
            self.all.notify_one();
        }
    }
}

/// The open client connections, each read by its own task.
struct Clients {
    tasks: JoinSet<()>,
    /// Connect → subscribed, per connection.
    connect_latency: Histogram<u64>,
    elapsed: Duration,
}

/// Opens `n` connections subscribed to `channel`, [`CONNECTING`] at a time; each is then
/// read by a task that reports ticks to `arrivals` and keeps nothing.
async fn open_clients(
    name: &str,
    ws_url: &str,
    channel: &str,
    n: usize,
    arrivals: &Arc<Arrivals>,
) -> anyhow::Result<Clients> {
    let bar = report::progress(name, n as u64, "connections");
    let permits = Arc::new(Semaphore::new(CONNECTING));
    let mut connecting = JoinSet::new();
    let mut tasks = JoinSet::new();
    let mut connect_latency = report::histogram()?;
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + GRACE;
    let mut opened = 0;
    for _ in 0..n {
        let permit = Arc::clone(&permits).acquire_owned().await.context("the connection limiter closed")?;
        let (ws_url, channel) = (ws_url.to_owned(), channel.to_owned());
        connecting.spawn(async move {
            let begun = Instant::now();
            let socket = connect(&ws_url, &channel).await;
            drop(permit);
            socket.map(|s| (s, begun.elapsed()))
        });
        while let Some(done) = connecting.try_join_next() {
            opened += 1;
            keep(done, &mut tasks, &mut connect_latency, arrivals)?;
        }
        bar.set_position(opened);
    }
    while opened < n as u64 {
        let Ok(Some(done)) = tokio::time::timeout_at(deadline, connecting.join_next()).await else {
            bail!("{name}: only {opened} of {n} connections opened within {GRACE:?}");
        };
        opened += 1;
        keep(done, &mut tasks, &mut connect_latency, arrivals)?;
        bar.set_position(opened);
    }
    bar.finish_and_clear();
    Ok(Clients { tasks, connect_latency, elapsed: started.elapsed() })
}

/// A connection that opened: its latency recorded, its reader started.
fn keep(
    done: Result<anyhow::Result<(Socket, Duration)>, tokio::task::JoinError>,
    tasks: &mut JoinSet<()>,
    connect_latency: &mut Histogram<u64>,
    arrivals: &Arc<Arrivals>,
) -> anyhow::Result<()> {
    let (mut socket, took) = done.context("a connecting task stopped")??;
    report::record(connect_latency, took);
    let arrivals = Arc::clone(arrivals);
    tasks.spawn(async move {
        // Reading also answers the server's pings.
        while let Some(Ok(message)) = socket.next().await {
            if let Message::Text(text) = message
                && let Some(tick) = tick_of(text.as_str())
            {
                arrivals.arrived(tick);
            }
        }
        arrivals.closed.fetch_add(1, Ordering::SeqCst);
    });
    Ok(())
}

/// `ws-idle`: the server's resident memory before and after `n` idle connections, each
/// subscribed to one room.
pub(super) async fn idle(spec: &WsSpec<'_>) -> anyhow::Result<Report> {
    const NAME: &str = "ws-idle";
    let n = spec.connections;
    let mut server = ChildServer::start().await?;
    wait_ready(&RawClient::new(&server.url(), reqwest::Client::new())?).await?;
    // The runtime's threads and the store's caches are warm after one connection.
    let arrivals = Arc::new(Arrivals::new(n));
    let channel = format!("room:bench-idle-{}", spec.run_id);
    drop(connect(&server.ws_url(), &channel).await?);
    tokio::time::sleep(SETTLE).await;
    let before = server.rss_kib()?;
    let mut clients = open_clients(NAME, &server.ws_url(), &channel, n, &arrivals).await?;
    tokio::time::sleep(SETTLE).await;
    server.check_running()?;
    let after = server.rss_kib()?;
    let closed = arrivals.closed.load(Ordering::SeqCst);
    if closed > 0 {
        bail!("{NAME}: the server closed {closed} of the {n} idle connections");
    }
    clients.tasks.shutdown().await;
    let memory = MemoryFigures::new(n, before, after);
    let description = format!("{n} idle connections subscribed to one room");
    let report =
        Report::new(NAME, description, n as u64, clients.elapsed, "subscribe", &clients.connect_latency);
    Ok(report.with_memory(memory))
}

/// How the broadcast workloads reach every subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fanout {
    /// An ephemeral publish to one room (`POST /v1/realtime/publish`).
    Room,
    /// An event appended to one stream (`POST /v1/streams/{stream}/events`).
    Stream,
}

/// `ws-broadcast`, `ws-broadcast-stream`: `n` connections subscribed to one channel, then
/// publishes one at a time, each timed from sending it to the last connection receiving it.
pub(super) async fn broadcast(spec: &WsSpec<'_>, fanout: Fanout) -> anyhow::Result<Report> {
    let (name, channel, what, plural, latency_of) = match fanout {
        Fanout::Room => (
            "ws-broadcast",
            format!("room:bench-{}", spec.run_id),
            "publish",
            "publishes",
            "publish → last of N",
        ),
        Fanout::Stream => (
            "ws-broadcast-stream",
            format!("stream:wsbench-{}", spec.run_id),
            "append",
            "appends",
            "append → last of N",
        ),
    };
    let target = channel.split_once(':').map_or(channel.as_str(), |(_, rest)| rest).to_owned();
    let n = spec.connections;
    let mut server = ChildServer::start().await?;
    let client = RawClient::new(&server.url(), reqwest::Client::builder().tcp_nodelay(true).build()?)?;
    wait_ready(&client).await?;
    let arrivals = Arc::new(Arrivals::new(n));
    let mut clients = open_clients(name, &server.ws_url(), &channel, n, &arrivals).await?;
    tokio::time::sleep(SETTLE).await;

    let bar = report::progress(name, spec.publishes, "publishes");
    let mut latency = report::histogram()?;
    let mut request_latency = report::histogram()?;
    let mut first_latency = report::histogram()?;
    let started = Instant::now();
    for tick in 0..spec.publishes {
        arrivals.expect(tick);
        let (url, body) = match fanout {
            Fanout::Room => (
                client.url(&["v1", "realtime", "publish"], &[]),
                format!(r#"{{"target":{{"rooms":["{target}"]}},"type":"bench.tick","data":{{"t":{tick}}}}}"#),
            ),
            Fanout::Stream => (
                client.url(&["v1", "streams", &target, "events"], &[]),
                format!(r#"{{"events":[{{"type":"bench.tick","data":{{"t":{tick}}}}}]}}"#),
            ),
        };
        let expected = if fanout == Fanout::Room { StatusCode::ACCEPTED } else { StatusCode::CREATED };
        let request = client.http().post(url).header(CONTENT_TYPE, "application/json").body(body);
        let sent = Instant::now();
        client.exchange(request, expected).await.with_context(|| format!("{name}: {what} {tick}"))?;
        report::record(&mut request_latency, sent.elapsed());
        if tokio::time::timeout(GRACE, arrivals.all.notified()).await.is_err() {
            server.check_running()?;
            let received = arrivals.received.load(Ordering::SeqCst);
            let closed = arrivals.closed.load(Ordering::SeqCst);
            bail!(
                "{name}: {what} {tick} reached {received} of {n} connections within {GRACE:?} \
                 ({closed} connections were closed)"
            );
        }
        let last = arrivals.last.lock().ok().and_then(|l| *l).context("no arrival time was kept")?;
        report::record(&mut latency, last.saturating_duration_since(sent));
        let first = arrivals.first.lock().ok().and_then(|f| *f).unwrap_or(last);
        report::record(&mut first_latency, first.saturating_duration_since(sent));
        bar.inc(1);
        tokio::time::sleep(PAUSE).await;
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    let closed = arrivals.closed.load(Ordering::SeqCst);
    if closed > 0 {
        bail!("{name}: the server closed {closed} of the {n} connections during the run");
    }
    clients.tasks.shutdown().await;
    let kind = if fanout == Fanout::Room { "room" } else { "stream" };
    let description = format!("{} {plural}, {n} subscribers of one {kind}", spec.publishes);
    let delivered = spec.publishes * n as u64;
    let report = Report::new(name, description, delivered, elapsed, latency_of, &latency);
    Ok(report.with_requests(what, &request_latency).with_first(&first_latency))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_is_read_from_proc_status() {
        let status = "Name:\tbifrost\nVmPeak:\t  200000 kB\nVmRSS:\t   35120 kB\nRssAnon:\t 20000 kB\n";
        assert_eq!(parse_rss_kib(status), Some(35_120));
        assert_eq!(parse_rss_kib("Name:\tx\n"), None);
        let own = Path::new("/proc/self/status");
        if own.exists() {
            assert!(rss_kib(own).unwrap() > 0);
        }
    }

    #[test]
    fn ticks_are_found_in_messages_and_events() {
        let message = r#"{"op":"message","channel":"room:bench","message_id":"m","type":"bench.tick","data":{"t":7},"source":{"user_id":null,"workspace_id":null},"priority":"normal","timestamp":"2026-11-22T10:00:00Z"}"#;
        assert_eq!(tick_of(message), Some(7));
        let event = r#"{"op":"event","channel":"stream:s","position":3,"priority":"normal","event":{"id":"e","data":{"t":9},"metadata":{}}}"#;
        assert_eq!(tick_of(event), Some(9));
        assert_eq!(tick_of(r#"{"op":"presence","room":"bench","users":[]}"#), None);
        assert_eq!(tick_of(r#"{"op":"message","data":"text"}"#), None);
        assert_eq!(tick_of("not json"), None);
    }

    #[test]
    fn arrivals_signal_once_every_client_has_the_tick() {
        let arrivals = Arrivals::new(3);
        arrivals.expect(1);
        arrivals.arrived(0);
        arrivals.arrived(1);
        arrivals.arrived(1);
        assert!(arrivals.first.lock().unwrap().is_some());
        assert!(arrivals.last.lock().unwrap().is_none());
        arrivals.arrived(1);
        assert!(arrivals.last.lock().unwrap().is_some());
        arrivals.expect(2);
        assert_eq!(arrivals.received.load(Ordering::SeqCst), 0);
        assert!(arrivals.last.lock().unwrap().is_none());
    }

    #[cfg(unix)]
    #[test]
    fn the_open_file_limit_is_raised_or_the_error_says_how() {
        match raise_fd_limit(1000) {
            Ok(()) => {
                let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
                assert!(limit.current.unwrap_or(u64::MAX) >= 1000 + FD_MARGIN);
            }
            Err(e) => assert!(e.to_string().contains("ulimit"), "{e}"),
        }
        let e = raise_fd_limit(usize::MAX / 2).unwrap_err().to_string();
        assert!(e.contains("ulimit"), "{e}");
    }
}
