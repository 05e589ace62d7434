//! The HTTP workloads — W4 (appends over keep-alive connections) and W5 (append → SSE
//! delivery latency) — and the in-process server they use when no `--url` is given.

use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bifrost_api::{AppendResultBody, EventBody, StreamInfoBody};
use bifrost_core::DurableStore;
use futures::StreamExt;
use hdrhistogram::Histogram;
use metrics_exporter_prometheus::PrometheusHandle;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinSet;

use super::raw::{RawClient, parse, problem_message};
use super::report::{self, Report};
use super::workloads::{WriteSpec, shares, write_payload};
use crate::commands::serve::open_groups;
use bifrost_client::sse::SseParser;

/// W5 and group-latency: appends in flight at once before the pacer waits (a stalled server
/// shows up as a lower achieved rate, not as unbounded memory).
pub(super) const MAX_IN_FLIGHT: usize = 1024;
/// W5 and group-latency: how long deliveries may trail the last append before the run fails
/// (a hang guard).
pub(super) const DELIVERY_GRACE: Duration = Duration::from_secs(30);

/// `bifrost_server::serve` on 127.0.0.1:0 with the store's consumer groups, on its own
/// runtime in its own thread, so that the load generator and the server do not share a
/// scheduler.
pub(super) struct InProcessServer {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
}

impl InProcessServer {
    /// With `webhooks`, the server delivers webhooks too, and may reach loopback receivers.
    pub(super) async fn start(
        store: Arc<dyn DurableStore>,
        metrics: Option<PrometheusHandle>,
        webhooks: bool,
    ) -> anyhow::Result<Self> {
        let (addr_tx, addr_rx) = oneshot::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("bench-server".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .thread_name("bench-server")
                    .build()
                    .context("cannot start the server's runtime")?;
                runtime.block_on(async move {
                    // The groups' tasks run on this runtime, next to the server.
                    let groups = open_groups(&store).await?;
                    let webhooks = if webhooks {
                        let settings = bifrost_webhooks::WebhookSettings {
                            allow_cidrs: bifrost_webhooks::ssrf::AddressPolicy::parse_cidrs(&["127.0.0.0/8"])
                                .map_err(anyhow::Error::msg)?,
                            ..bifrost_webhooks::WebhookSettings::default()
                        };
                        Some(bifrost_webhooks::Webhooks::open(Arc::clone(&store), settings).await?)
                    } else {
                        None
                    };
                    let listener =
                        TcpListener::bind("127.0.0.1:0").await.context("cannot bind 127.0.0.1:0")?;
                    let _ = addr_tx.send(listener.local_addr()?);
                    let shutdown = async move {
                        let _ = stopped.await;
                    };
                    let config = bifrost_server::ServerConfig::default();
                    bifrost_server::serve(listener, store, groups, webhooks, config, metrics, shutdown)
                        .await?;
                    anyhow::Ok(())
                })
            })
            .context("cannot start the server thread")?;
        match addr_rx.await {
            Ok(addr) => Ok(Self { addr, stop, thread }),
            Err(_) => {
                let why = tokio::task::spawn_blocking(move || thread.join()).await;
                match why {
                    Ok(Ok(Err(e))) => Err(e.context("the in-process server did not start")),
                    _ => bail!("the in-process server did not start"),
                }
            }
        }
    }

    pub(super) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Graceful shutdown; the server closes the store.
    pub(super) async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        let thread = self.thread;
        match tokio::task::spawn_blocking(move || thread.join()).await {
            Ok(Ok(result)) => result.context("the in-process server failed"),
            _ => bail!("the in-process server stopped unexpectedly"),
        }
    }
}

/// Waits (bounded) until the server answers `/healthz`.
pub(super) async fn wait_ready(client: &RawClient) -> anyhow::Result<()> {
    let url = client.url(&["healthz"], &[]);
    let mut last = String::new();
    for _ in 0..100 {
        match client.http().get(url.clone()).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => last = format!("HTTP {}", r.status()),
            Err(e) => last = client.transport_error(e).to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the server at {} is not ready: {last}", client.base())
}

/// The request body of an append of `n` bench events starting at `seq`.
pub(super) fn append_body(
    expected: impl fmt::Display,
    event_type: &str,
    writer: u64,
    seq: u64,
    n: u64,
) -> Vec<u8> {
    let mut body = String::with_capacity(64 + n as usize * 320);
    body.push('{');
    write_append(&mut body, expected, event_type, writer, seq, n);
    body.push('}');
    body.into_bytes()
}

/// Writes the fields of an append request, `"expected_version":…,"events":[…]`, of `n`
/// bench events starting at `seq`, each payload straight into `out`.
pub(super) fn write_append(
    out: &mut String,
    expected: impl fmt::Display,
    event_type: &str,
    writer: u64,
    seq: u64,
    n: u64,
) {
    let _ = write!(out, r#""expected_version":{expected},"events":["#);
    for i in seq..seq + n {
        if i > seq {
            out.push(',');
        }
        let _ = write!(out, r#"{{"type":"{event_type}","data":"#);
        write_payload(out, writer, i);
        out.push('}');
    }
    out.push(']');
}

/// POSTs an append and insists on `201 Created`.
pub(super) async fn append(
    client: &RawClient,
    stream: &str,
    body: Vec<u8>,
) -> anyhow::Result<AppendResultBody> {
    let url = client.url(&["v1", "streams", stream, "events"], &[]);
    let request = client.http().post(url).header(CONTENT_TYPE, "application/json").body(body);
    let bytes =
        client.exchange(request, StatusCode::CREATED).await.with_context(|| format!("append to {stream}"))?;
    parse(&bytes, &format!("an append to {stream}"))
}

/// W4: appends through HTTP, each checked (201, the expected versions), then each
/// stream's version checked through `GET /v1/streams/{stream}`.
pub(super) async fn write(client: &RawClient, spec: &WriteSpec<'_>) -> anyhow::Result<Report> {
    let event_type = format!("bench.{}", spec.name.replace('-', "_"));
    let bar = report::progress(spec.name, spec.total, "events");
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for (writer, count) in shares(spec.total, spec.writers).filter(|(_, n)| *n > 0) {
        let client = client.clone();
        let stream = spec.stream(writer);
        let event_type = event_type.clone();
        let bar = bar.clone();
        let batch = spec.batch;
        tasks.spawn(async move {
            let mut latency = report::histogram()?;
            let mut version = 0;
            while version < count {
                let n = batch.min(count - version);
                let body = append_body(version, &event_type, writer, version, n);
                let sent = Instant::now();
                let result = append(&client, &stream, body).await?;
                report::record(&mut latency, sent.elapsed());
                report::check_landed(&stream, version, n, result.first_version, result.last_version)?;
                version = result.last_version;
                bar.inc(n);
            }
            anyhow::Ok((stream, count, latency))
        });
    }
    let (latency, streams) = report::join_writers(&mut tasks).await?;
    let elapsed = started.elapsed();
    bar.finish_and_clear();

    for (stream, count) in streams {
        let body = client.get(client.url(&["v1", "streams", &stream], &[])).await?;
        let state: StreamInfoBody = parse(&body, &format!("a read of the stream {stream}"))?;
        if state.version != count {
            bail!("{}: stream {stream} is at version {} after {count} events", spec.name, state.version);
        }
    }
    let description = spec.description("HTTP", "connections", "request");
    Ok(Report::new(spec.name, description, spec.total, elapsed, "request", &latency))
}

/// What the bench's payloads say about themselves (see `workloads::write_payload`).
#[derive(Deserialize)]
pub(super) struct Payload {
    pub(super) seq: Option<u64>,
}

impl Payload {
    /// The `seq` of a bench event's payload.
    pub(super) fn seq_of(event: &EventBody<'_>) -> Option<u64> {
        serde_json::from_str::<Payload>(event.data.get()).ok()?.seq
    }
}

/// W5: one SSE subscriber from the end of the log; appends paced at `rate` per second by
/// absolute deadlines, fired from their own tasks; latency is the SSE arrival time minus
/// the instant the append's request was sent, matched by the `seq` in the payload.
pub(super) async fn delivery(
    client: &RawClient,
    sse_node: &RawClient,
    rate: u64,
    duration: f64,
    run_id: &str,
) -> anyhow::Result<Report> {
    let total = ((rate as f64 * duration).round() as u64).max(1);
    let stream = format!("bench-{run_id}.w5");
    let event_type = "bench.w5";

    // The marker's position is "the end of the log" for the subscription.
    let marker =
        format!(r#"{{"expected_version":"no_stream","events":[{{"type":"{event_type}","data":{{}}}}]}}"#);
    let start_after = append(client, &stream, marker.into_bytes()).await?.last_position;

    // The node's client: its default headers carry the credential, if any.
    let subscriber = sse_node.http().clone();
    let url = sse_node.url(
        &["v1", "subscribe"],
        &[("from_position", start_after.to_string()), ("type", event_type.into())],
    );
    let response = subscriber
        .get(url)
        .header(ACCEPT, "text/event-stream")
        .send()
        .await
        .map_err(|e| sse_node.transport_error(e))?;
    if !response.status().is_success() {
        let status = response.status();
        let body = response.bytes().await.unwrap_or_default();
        bail!("w5: the subscription was refused: {}", problem_message(status, &body));
    }

    let times = Arc::new(SendTimes::new(total));
    let delivered = Arc::new(AtomicU64::new(0));
    let bar = report::progress("w5", total, "delivered");
    let receiver = tokio::spawn(receive(
        response,
        stream.clone(),
        total,
        Arc::clone(&times),
        Arc::clone(&delivered),
        bar.clone(),
    ));

    let paced = paced_appends(client, rate, event_type, &times, |_| stream.clone(), || Ok(())).await?;

    let latency = match tokio::time::timeout(DELIVERY_GRACE, receiver).await {
        Ok(joined) => joined.context("the SSE subscriber stopped unexpectedly")??,
        Err(_) => bail!(
            "w5: only {} of {total} appended events were delivered over SSE within {DELIVERY_GRACE:?}",
            delivered.load(Ordering::Relaxed)
        ),
    };
    bar.finish_and_clear();
    let description = if std::ptr::eq(client, sse_node) {
        format!("HTTP: append → SSE, {rate}/s for {duration}s")
    } else {
        format!("HTTP: append on {} → SSE on {}, {rate}/s for {duration}s", client.base(), sse_node.base())
    };
    let report = Report::new("w5", description, total, paced.answered, "delivery", &latency);
    Ok(report.with_appends(rate, &paced.append_latency))
}

/// When each paced event's append was sent, and whether it was delivered yet, by the `seq`
/// in its payload: W5 and group-latency time every delivery against its append.
pub(super) struct SendTimes {
    epoch: Instant,
    /// Nanoseconds since `epoch` plus one; 0 until the append is sent.
    sent: Vec<AtomicU64>,
    seen: Vec<AtomicBool>,
}

impl SendTimes {
    pub(super) fn new(total: u64) -> Self {
        Self {
            epoch: Instant::now(),
            sent: (0..total).map(|_| AtomicU64::new(0)).collect(),
            seen: (0..total).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    fn len(&self) -> u64 {
        self.sent.len() as u64
    }

    /// Now, as [`Self::delivered`] takes it: read it as soon as a delivery arrives.
    pub(super) fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX - 1)
    }

    fn mark_sent(&self, seq: u64) {
        if let Some(slot) = usize::try_from(seq).ok().and_then(|i| self.sent.get(i)) {
            slot.store(self.now() + 1, Ordering::Release);
        }
    }

    /// The latency of event `seq` delivered at `now`; fails when `seq` is unknown, was
    /// delivered before, or was not sent yet.
    pub(super) fn delivered(&self, workload: &str, seq: u64, now: u64) -> anyhow::Result<Duration> {
        let index = usize::try_from(seq).ok().filter(|&i| i < self.sent.len());
        let Some(index) = index else { bail!("{workload}: delivered an event with unknown seq {seq}") };
        if self.seen[index].swap(true, Ordering::AcqRel) {
            bail!("{workload}: event {seq} was delivered twice");
        }
        let sent_at = self.sent[index].load(Ordering::Acquire);
        if sent_at == 0 {
            bail!("{workload}: event {seq} was delivered before it was sent");
        }
        Ok(Duration::from_nanos(now.saturating_sub(sent_at - 1)))
    }
}

/// What [`paced_appends`] measured.
pub(super) struct Paced {
    /// From the start until the last append was answered: the window an achieved rate is
    /// measured over, so an overloaded server shows as a lower rate, not the rate asked for.
    pub(super) answered: Duration,
    pub(super) append_latency: Histogram<u64>,
}

/// The load of W5 and group-latency: one single-event append per event of `times`, the
/// `seq`-th sent `seq / rate` seconds after the start (absolute deadlines: a slow answer
/// does not push later appends back), each from its own task, at most [`MAX_IN_FLIGHT`] at
/// once. `stream_of(seq)` names the stream; `check` runs after each append is sent and
/// ends the run when it fails.
pub(super) async fn paced_appends(
    client: &RawClient,
    rate: u64,
    event_type: &'static str,
    times: &Arc<SendTimes>,
    stream_of: impl Fn(u64) -> String,
    mut check: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Paced> {
    let append_latency = Arc::new(Mutex::new(report::histogram()?));
    let interval = 1e9 / rate as f64;
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut appends = JoinSet::new();
    let start = tokio::time::Instant::now();
    for seq in 0..times.len() {
        tokio::time::sleep_until(start + Duration::from_nanos((seq as f64 * interval) as u64)).await;
        let permit = Arc::clone(&in_flight).acquire_owned().await.context("the pacer's semaphore closed")?;
        let (client, times, append_latency) =
            (client.clone(), Arc::clone(times), Arc::clone(&append_latency));
        let stream = stream_of(seq);
        appends.spawn(async move {
            let _permit = permit;
            let body = append_body(r#""any""#, event_type, 0, seq, 1);
            let started = Instant::now();
            times.mark_sent(seq);
            append(&client, &stream, body).await?;
            let elapsed = started.elapsed();
            // Never held across an await.
            let mut histogram = append_latency.lock().unwrap_or_else(|p| p.into_inner());
            report::record(&mut histogram, elapsed);
            anyhow::Ok(())
        });
        while let Some(done) = appends.try_join_next() {
            done.context("an append task stopped unexpectedly")??;
        }
        check()?;
    }
    while let Some(done) = appends.join_next().await {
        done.context("an append task stopped unexpectedly")??;
    }
    let answered = start.elapsed();
    let append_latency = append_latency.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(Paced { answered, append_latency })
}

/// The W5 subscriber: every bench event exactly once, positions increasing.
async fn receive(
    response: reqwest::Response,
    stream: String,
    total: u64,
    times: Arc<SendTimes>,
    delivered: Arc<AtomicU64>,
    bar: indicatif::ProgressBar,
) -> anyhow::Result<Histogram<u64>> {
    let mut latency = report::histogram()?;
    let mut parser = SseParser::new();
    let mut body = response.bytes_stream();
    let (mut received, mut last_position) = (0u64, 0u64);
    let mut events = Vec::new();
    while received < total {
        let chunk = match body.next().await {
            Some(chunk) => chunk.context("w5: the SSE connection broke")?,
            None => bail!("w5: the server ended the SSE stream after {received} of {total} events"),
        };
        let now = times.now();
        parser.feed(&chunk, |event| events.push(event));
        for event in events.drain(..) {
            let d: EventBody<'_> = serde_json::from_slice(&event.data)
                .map_err(|e| anyhow!("w5: an SSE event is not an event: {e}"))?;
            let Some(seq) = Payload::seq_of(&d).filter(|_| d.stream == stream) else { continue };
            if d.position <= last_position {
                bail!("w5: position {} was delivered after position {last_position}", d.position);
            }
            last_position = d.position;
            report::record(&mut latency, times.delivered("w5", seq, now)?);
            received += 1;
            delivered.store(received, Ordering::Relaxed);
            bar.inc(1);
        }
    }
    Ok(latency)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_bodies_are_valid_requests() {
        let body = append_body(3, "bench.w4_batch", 2, 10, 3);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["expected_version"], 3);
        assert_eq!(v["events"].as_array().unwrap().len(), 3);
        assert_eq!(v["events"][2]["data"]["seq"], 12);
        assert_eq!(v["events"][0]["type"], "bench.w4_batch");
        let data = v["events"][1]["data"].to_string();
        assert_eq!(data.len(), super::super::workloads::PAYLOAD_BYTES, "{data}");
    }

    #[test]
    fn a_delivery_counts_once_and_only_after_its_send() {
        let times = SendTimes::new(2);
        assert!(times.delivered("t", 0, times.now()).unwrap_err().to_string().contains("before it was sent"));
        times.mark_sent(1);
        assert!(times.delivered("t", 1, times.now()).is_ok());
        assert!(times.delivered("t", 1, times.now()).unwrap_err().to_string().contains("twice"));
        assert!(times.delivered("t", 2, times.now()).unwrap_err().to_string().contains("unknown seq 2"));
    }
}
