//! The webhook workloads: deliveries per second to one and to ten endpoints from a backlog,
//! and append → receiver latency at a steady rate. The receiver is an HTTP server in the
//! bench (loopback, allowed through the SSRF guard) that answers 200 at once and counts
//! each message once, by its `webhook-id`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use bifrost_core::{DurableStore, ExpectedVersion, NewEvent, StreamName};
use hdrhistogram::Histogram;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::raw::{RawClient, parse};
use super::report::{self, Report};
use super::workloads::backlog;

/// Endpoints of the fan-out phase.
const FAN_OUT: usize = 10;
/// How long deliveries may take before the run fails (a hang guard).
const GRACE: Duration = Duration::from_secs(120);

/// What the receiver saw.
#[derive(Default)]
struct Seen {
    /// Distinct `webhook-id`s.
    ids: HashSet<String>,
    /// Requests, duplicates included.
    requests: u64,
    /// When each event was appended (latency workload).
    sent: HashMap<String, Instant>,
    latency: Option<Histogram<u64>>,
}

/// The bench's receiver on 127.0.0.1.
struct Receiver {
    url: String,
    seen: Arc<Mutex<Seen>>,
    stop: CancellationToken,
}

impl Receiver {
    async fn start() -> anyhow::Result<Self> {
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.context("cannot bind the receiver")?;
        let addr = listener.local_addr()?;
        let state = Arc::clone(&seen);
        let app = Router::new().route(
            "/hook",
            post(move |headers: HeaderMap| {
                let seen = Arc::clone(&state);
                async move {
                    let now = Instant::now();
                    let id = headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or_default();
                    if let Ok(mut seen) = seen.lock() {
                        seen.requests += 1;
                        let event = id.split(':').next().unwrap_or_default().to_owned();
                        if seen.ids.insert(id.to_owned())
                            && let Some(at) = seen.sent.get(&event).copied()
                            && let Some(h) = seen.latency.as_mut()
                        {
                            report::record(h, now.duration_since(at));
                        }
                    }
                    StatusCode::OK
                }
            }),
        );
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(token.cancelled_owned()).await;
        });
        Ok(Self { url: format!("http://{addr}/hook"), seen, stop })
    }

    fn delivered(&self) -> usize {
        self.seen.lock().map(|s| s.ids.len()).unwrap_or(0)
    }

    async fn wait_for(&self, name: &str, total: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + GRACE;
        let bar = report::progress(name, total as u64, "delivered");
        loop {
            let n = self.delivered();
            bar.set_position(n as u64);
            if n >= total {
                bar.finish_and_clear();
                return Ok(());
            }
            if Instant::now() > deadline {
                bar.finish_and_clear();
                bail!("{name}: only {n} of {total} messages arrived within {GRACE:?}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn reset(&self) {
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Seen::default();
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn create_endpoint(client: &RawClient, url: &str, start: serde_json::Value) -> anyhow::Result<String> {
    let body = serde_json::json!({"url": url, "start": start, "filter": {"types": ["bench.webhook"]}});
    let request = client.http().post(client.url(&["v1", "webhooks"], &[])).json(&body);
    let created =
        client.exchange(request, reqwest::StatusCode::CREATED).await.context("creating an endpoint")?;
    let created: serde_json::Value = parse(&created, "the created endpoint")?;
    created["id"].as_str().map(str::to_owned).context("the created endpoint has no id")
}

async fn delete_endpoint(client: &RawClient, id: &str) -> anyhow::Result<()> {
    let request = client.http().delete(client.url(&["v1", "webhooks", id], &[]));
    client.exchange(request, reqwest::StatusCode::NO_CONTENT).await.context("deleting an endpoint")?;
    Ok(())
}

/// Deliveries per second from a backlog of `total` events, to one endpoint and to ten.
pub(super) async fn throughput(
    client: &RawClient,
    store: &Arc<dyn DurableStore>,
    total: u64,
    streams: u64,
    run_id: &str,
) -> anyhow::Result<Vec<Report>> {
    let receiver = Receiver::start().await?;
    let before = *store.head().borrow();
    let prefix = format!("whbench{run_id}");
    backlog(store, total, streams, "bench.webhook", &prefix).await?;
    let mut reports = Vec::new();
    for endpoints in [1, FAN_OUT] {
        receiver.reset();
        let name = if endpoints == 1 { "webhooks-1" } else { "webhooks-10" };
        let started = Instant::now();
        let mut ids = Vec::new();
        for _ in 0..endpoints {
            ids.push(create_endpoint(client, &receiver.url, serde_json::json!({"position": before})).await?);
        }
        let messages = usize::try_from(total)? * endpoints;
        receiver.wait_for(name, messages).await?;
        let elapsed = started.elapsed();
        for id in &ids {
            delete_endpoint(client, id).await?;
        }
        let requests = receiver.seen.lock().map(|s| s.requests).unwrap_or(0);
        let description = format!("{endpoints} endpoint(s), {total}-event backlog, {requests} requests");
        let latency = report::histogram()?;
        reports.push(Report::new(name, description, messages as u64, elapsed, "-", &latency));
    }
    Ok(reports)
}

/// Append → receiver latency at `rate` events per second for `seconds`.
pub(super) async fn latency(
    client: &RawClient,
    store: &Arc<dyn DurableStore>,
    rate: u64,
    seconds: f64,
    run_id: &str,
) -> anyhow::Result<Report> {
    const NAME: &str = "webhook-latency";
    let receiver = Receiver::start().await?;
    if let Ok(mut seen) = receiver.seen.lock() {
        seen.latency = Some(report::histogram()?);
    }
    let id = create_endpoint(client, &receiver.url, serde_json::json!("end")).await?;
    let total = ((rate as f64 * seconds).round() as u64).max(1);
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let started = tokio::time::Instant::now();
    let mut appends = tokio::task::JoinSet::new();
    let mut append_latency = report::histogram()?;
    for i in 0..total {
        tokio::time::sleep_until(started + interval.mul_f64(i as f64)).await;
        let event = NewEvent::json("bench.webhook", &serde_json::json!({"seq": i}))?;
        let event_id = event.id.to_string();
        if let Ok(mut seen) = receiver.seen.lock() {
            seen.sent.insert(event_id, Instant::now());
        }
        let stream = StreamName::new(&format!("whlat{run_id}-{}", i % 100))?;
        let store = Arc::clone(store);
        appends.spawn(async move {
            let sent = Instant::now();
            store.append(stream, ExpectedVersion::Any, vec![event]).await.map(|_| sent.elapsed())
        });
        while let Some(done) = appends.try_join_next() {
            report::record(&mut append_latency, done.context("an append task stopped")??);
        }
    }
    let send_window = started.elapsed();
    while let Some(done) = appends.join_next().await {
        report::record(&mut append_latency, done.context("an append task stopped")??);
    }
    receiver.wait_for(NAME, usize::try_from(total)?).await?;
    delete_endpoint(client, &id).await?;
    let latency = receiver
        .seen
        .lock()
        .ok()
        .and_then(|mut s| s.latency.take())
        .context("the receiver kept no latencies")?;
    let description = format!("append → receiver, {rate}/s for {seconds}s, 1 endpoint");
    let report = Report::new(NAME, description, total, send_window, "append → receiver", &latency);
    Ok(report.with_appends(rate, &append_latency))
}
