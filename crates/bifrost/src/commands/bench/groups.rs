//! The consumer-group workloads, through HTTP like a remote consumer sees them: `groups`
//! (competing consumers draining a backlog, fetch → ack) and `group-latency` (events
//! appended at a fixed rate, timed from the append request to the fetch answer that
//! delivers them).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use hdrhistogram::Histogram;
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use serde::Deserialize;
use serde_json::json;
use tokio::task::JoinSet;

use super::http::{DELIVERY_GRACE, SendTimes, exchange, paced_appends, write_append};
use super::report::{self, Report};
use super::workloads::shares;
use crate::client::ApiClient;

/// Events a consumer asks for in one fetch.
const FETCH_MAX: u64 = 100;
/// How long a fetch waits for a first event.
const FETCH_WAIT_MS: u64 = 100;
/// Most events in one request of the prefill (the API's limit per append).
const PREFILL_REQUEST: u64 = 1000;
/// Concurrent requests of the prefill.
const PREFILL_WRITERS: u64 = 4;

/// What both workloads share: how many consumers fetch, over how many streams the events
/// are spread.
pub(super) struct GroupSpec<'a> {
    pub(super) consumers: u64,
    pub(super) streams: u64,
    pub(super) run_id: &'a str,
}

impl GroupSpec<'_> {
    fn group(&self, workload: &str) -> String {
        format!("bench-{}.{workload}", self.run_id)
    }

    fn stream(&self, workload: &str, index: u64) -> String {
        format!("bench-{}.{workload}.{index}", self.run_id)
    }
}

#[derive(Deserialize)]
struct Fetched {
    messages: Vec<Message>,
}

#[derive(Deserialize)]
struct Message {
    lease: String,
    event: MessageEvent,
}

#[derive(Deserialize)]
struct MessageEvent {
    position: u64,
    data: MessageData,
}

#[derive(Deserialize)]
struct MessageData {
    seq: Option<u64>,
}

#[derive(Deserialize)]
struct Settled {
    acked: u64,
    #[serde(default)]
    expired: Vec<String>,
}

/// Creates (or replaces) a group that starts at the end of the log and reads `event_type`.
async fn create_group(client: &ApiClient, group: &str, event_type: &str) -> anyhow::Result<()> {
    let body = json!({"filter": {"types": [event_type]}, "start": "end"});
    let url = client.url(&["v1", "groups", group], &[]);
    client
        .put_json(url, body.to_string().into_bytes())
        .await
        .with_context(|| format!("cannot create the consumer group {group}"))?;
    Ok(())
}

async fn delete_group(client: &ApiClient, group: &str) -> anyhow::Result<()> {
    client
        .delete(client.url(&["v1", "groups", group], &[]))
        .await
        .with_context(|| format!("cannot delete the consumer group {group}"))?;
    Ok(())
}

/// Leases up to [`FETCH_MAX`] events, waiting up to `wait_ms` for the first.
async fn fetch(client: &ApiClient, group: &str, consumer: &str, wait_ms: u64) -> anyhow::Result<Fetched> {
    let query =
        [("max", FETCH_MAX.to_string()), ("wait", wait_ms.to_string()), ("consumer", consumer.to_owned())];
    let url = client.url(&["v1", "groups", group, "fetch"], &query);
    let body = exchange(client, client.http().post(url), StatusCode::OK)
        .await
        .with_context(|| format!("fetch from {group}"))?;
    serde_json::from_slice(&body).map_err(|e| anyhow!("unexpected answer to a fetch from {group}: {e}"))
}

/// Acks every lease of `messages`; each must still be held.
async fn ack(client: &ApiClient, group: &str, messages: &[Message]) -> anyhow::Result<()> {
    let leases: Vec<&str> = messages.iter().map(|m| m.lease.as_str()).collect();
    let body = serde_json::to_vec(&json!({ "leases": leases })).context("cannot encode an ack")?;
    let url = client.url(&["v1", "groups", group, "ack"], &[]);
    let request = client.http().post(url).header(CONTENT_TYPE, "application/json").body(body);
    let answer =
        exchange(client, request, StatusCode::OK).await.with_context(|| format!("ack to {group}"))?;
    let settled: Settled = serde_json::from_slice(&answer)
        .map_err(|e| anyhow!("unexpected answer to an ack to {group}: {e}"))?;
    if settled.acked != leases.len() as u64 || !settled.expired.is_empty() {
        bail!(
            "{group}: {} of {} leases were acked, {} had expired",
            settled.acked,
            leases.len(),
            settled.expired.len()
        );
    }
    Ok(())
}

#[derive(Deserialize)]
struct AppendedMany {
    results: Vec<AppendedOne>,
}

#[derive(Deserialize)]
struct AppendedOne {
    first_version: u64,
    last_version: u64,
    first_position: u64,
    last_position: u64,
}

/// Appends `total` events over `streams` streams through `POST /v1/append`, each request
/// carrying a few events of many streams, so that the streams interleave in the log as
/// independent writers would leave them. Returns the lowest and highest position written.
async fn prefill(
    client: &ApiClient,
    spec: &GroupSpec<'_>,
    workload: &str,
    event_type: &str,
    total: u64,
) -> anyhow::Result<(u64, u64)> {
    let bar = report::progress(workload, total, "prefill");
    let mut tasks = JoinSet::new();
    for writer in 0..PREFILL_WRITERS.min(spec.streams) {
        // (stream, events it gets, version so far) of the streams this writer owns.
        let mut owned: Vec<(String, u64, u64)> = shares(total, spec.streams)
            .filter(|(s, n)| s % PREFILL_WRITERS == writer && *n > 0)
            .map(|(s, n)| (spec.stream(workload, s), n, 0))
            .collect();
        let (client, bar, event_type) = (client.clone(), bar.clone(), event_type.to_owned());
        tasks.spawn(async move {
            let (mut low, mut high) = (u64::MAX, 0);
            let per_stream = (PREFILL_REQUEST / owned.len().max(1) as u64).max(1);
            while owned.iter().any(|(_, n, v)| v < n) {
                let mut body = String::from(r#"{"appends":["#);
                let mut planned = Vec::new();
                let mut events = 0;
                for (i, (stream, n, version)) in owned.iter().enumerate() {
                    let k = per_stream.min(n - *version);
                    if k == 0 || events + k > PREFILL_REQUEST {
                        continue;
                    }
                    if !planned.is_empty() {
                        body.push(',');
                    }
                    let _ = write!(body, r#"{{"stream":"{stream}","#);
                    write_append(&mut body, *version, &event_type, writer, *version, k);
                    body.push('}');
                    planned.push((i, k));
                    events += k;
                }
                body.push_str("]}");
                let url = client.url(&["v1", "append"], &[]);
                let request =
                    client.http().post(url).header(CONTENT_TYPE, "application/json").body(body.into_bytes());
                let answer =
                    exchange(&client, request, StatusCode::CREATED).await.context("multi-stream append")?;
                let answer: AppendedMany = serde_json::from_slice(&answer)
                    .map_err(|e| anyhow!("unexpected answer to a multi-stream append: {e}"))?;
                if answer.results.len() != planned.len() {
                    bail!("{} appends were answered with {} results", planned.len(), answer.results.len());
                }
                for ((i, k), result) in planned.into_iter().zip(answer.results) {
                    let (stream, _, version) = &mut owned[i];
                    report::check_landed(stream, *version, k, result.first_version, result.last_version)?;
                    *version = result.last_version;
                    low = low.min(result.first_position);
                    high = high.max(result.last_position);
                }
                bar.inc(events);
            }
            anyhow::Ok((low, high))
        });
    }
    let (mut low, mut high) = (u64::MAX, 0);
    while let Some(joined) = tasks.join_next().await {
        let (l, h) = joined.context("a prefill task stopped unexpectedly")??;
        (low, high) = (low.min(l), high.max(h));
    }
    bar.finish_and_clear();
    Ok((low, high))
}

/// `groups`: `total` events over `spec.streams` streams are appended first; then
/// `spec.consumers` consumers drain them, each looping fetch (up to 100) → ack. Every
/// event must be acked exactly once; latency is one fetch → ack round.
pub(super) async fn throughput(
    client: &ApiClient,
    spec: &GroupSpec<'_>,
    total: u64,
) -> anyhow::Result<Report> {
    const NAME: &str = "groups";
    let event_type = "bench.groups";
    let group = spec.group(NAME);
    create_group(client, &group, event_type).await?;
    let (low, high) = prefill(client, spec, NAME, event_type, total).await?;
    if high < low || high - low + 1 < total {
        bail!("{NAME}: the prefill of {total} events landed at positions {low}..={high}");
    }
    // One flag per position of the prefill: acked once, and only once.
    let span = usize::try_from(high - low + 1).context("the prefill spans too many positions")?;
    let acked: Arc<Vec<AtomicBool>> = Arc::new((0..span).map(|_| AtomicBool::new(false)).collect());
    let done = Arc::new(AtomicU64::new(0));

    let bar = report::progress(NAME, total, "acked");
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for consumer in 0..spec.consumers {
        let (client, group, bar) = (client.clone(), group.clone(), bar.clone());
        let (acked, done) = (Arc::clone(&acked), Arc::clone(&done));
        tasks.spawn(async move {
            let name = format!("bench-{consumer}");
            let mut latency = report::histogram()?;
            while done.load(Ordering::Acquire) < total {
                let sent = Instant::now();
                let fetched = fetch(&client, &group, &name, FETCH_WAIT_MS).await?;
                if fetched.messages.is_empty() {
                    continue;
                }
                ack(&client, &group, &fetched.messages).await?;
                report::record(&mut latency, sent.elapsed());
                for m in &fetched.messages {
                    let flag = m
                        .event
                        .position
                        .checked_sub(low)
                        .and_then(|i| usize::try_from(i).ok())
                        .and_then(|i| acked.get(i));
                    let Some(flag) = flag else {
                        bail!("{NAME}: position {} is outside the prefill {low}..={high}", m.event.position)
                    };
                    if flag.swap(true, Ordering::AcqRel) {
                        bail!("{NAME}: position {} was delivered after it was acked", m.event.position);
                    }
                }
                let n = fetched.messages.len() as u64;
                done.fetch_add(n, Ordering::AcqRel);
                bar.inc(n);
            }
            anyhow::Ok(latency)
        });
    }
    let mut latency = report::histogram()?;
    while let Some(joined) = tasks.join_next().await {
        let h = joined.context("a consumer task stopped unexpectedly")??;
        latency.add(&h).context("merging latencies")?;
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();

    let processed = done.load(Ordering::Acquire);
    if processed != total {
        bail!("{NAME}: {processed} events were acked, {total} were appended");
    }
    check_drained(client, &group).await?;
    delete_group(client, &group).await?;
    let description = format!("HTTP: {} consumers × fetch {FETCH_MAX} → ack", spec.consumers);
    Ok(Report::new(NAME, description, total, elapsed, "fetch+ack", &latency))
}

/// The group has nothing left: no lag, nothing leased, nothing parked.
async fn check_drained(client: &ApiClient, group: &str) -> anyhow::Result<()> {
    #[derive(Deserialize)]
    struct Status {
        lag: u64,
        in_flight: u64,
        parked: u64,
    }
    let body = client.get(client.url(&["v1", "groups", group], &[])).await?;
    let status: Status =
        serde_json::from_slice(&body).map_err(|e| anyhow!("unexpected status of the group {group}: {e}"))?;
    if (status.lag, status.in_flight, status.parked) != (0, 0, 0) {
        bail!(
            "{group}: after the run the group shows lag {}, {} in flight, {} parked",
            status.lag,
            status.in_flight,
            status.parked
        );
    }
    Ok(())
}

/// `group-latency`: appends paced at `rate` per second by absolute deadlines (one event per
/// request, over `spec.streams` streams) while `spec.consumers` consumers long-poll the
/// group and ack. Latency is the arrival of the fetch answer minus the instant the append
/// request was sent, matched by the `seq` in the payload.
pub(super) async fn latency(
    client: &ApiClient,
    spec: &GroupSpec<'_>,
    rate: u64,
    duration: f64,
) -> anyhow::Result<Report> {
    const NAME: &str = "group-latency";
    let event_type = "bench.group_latency";
    let total = ((rate as f64 * duration).round() as u64).max(1);
    let group = spec.group(NAME);
    create_group(client, &group, event_type).await?;

    let times = Arc::new(SendTimes::new(total));
    let delivered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let bar = report::progress(NAME, total, "delivered");
    let mut consumers = JoinSet::new();
    for consumer in 0..spec.consumers {
        let (client, group, bar) = (client.clone(), group.clone(), bar.clone());
        let (times, delivered, stop) = (Arc::clone(&times), Arc::clone(&delivered), Arc::clone(&stop));
        consumers.spawn(async move {
            let name = format!("bench-{consumer}");
            let mut latency = report::histogram()?;
            while !stop.load(Ordering::Acquire) {
                let fetched = fetch(&client, &group, &name, 1000).await?;
                let now = times.now();
                for m in &fetched.messages {
                    let Some(seq) = m.event.data.seq else {
                        bail!(
                            "{NAME}: delivered an event with an unknown seq at position {}",
                            m.event.position
                        )
                    };
                    report::record(&mut latency, times.delivered(NAME, seq, now)?);
                }
                if !fetched.messages.is_empty() {
                    ack(&client, &group, &fetched.messages).await?;
                    let n = fetched.messages.len() as u64;
                    delivered.fetch_add(n, Ordering::AcqRel);
                    bar.inc(n);
                }
            }
            anyhow::Ok(latency)
        });
    }

    let stream_of = |seq| spec.stream(NAME, seq % spec.streams);
    // A consumer that failed ends the run now, not after the last append.
    let consumer_failed = || match consumers.try_join_next() {
        Some(failed) => {
            failed.context("a consumer task stopped unexpectedly")??;
            bail!("{NAME}: a consumer stopped before the end of the run")
        }
        None => Ok(()),
    };
    let paced = match paced_appends(client, rate, event_type, &times, stream_of, consumer_failed).await {
        Ok(paced) => paced,
        Err(e) => {
            stop.store(true, Ordering::Release);
            consumers.abort_all();
            return Err(e);
        }
    };

    let grace = tokio::time::Instant::now() + DELIVERY_GRACE;
    while delivered.load(Ordering::Acquire) < total {
        if tokio::time::Instant::now() > grace {
            stop.store(true, Ordering::Release);
            consumers.abort_all();
            bail!(
                "{NAME}: only {} of {total} appended events were delivered within {DELIVERY_GRACE:?}",
                delivered.load(Ordering::Acquire)
            );
        }
        if let Some(failed) = consumers.try_join_next() {
            failed.context("a consumer task stopped unexpectedly")??;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Release);
    let mut latency: Histogram<u64> = report::histogram()?;
    while let Some(joined) = consumers.join_next().await {
        let h = joined.context("a consumer task stopped unexpectedly")??;
        latency.add(&h).context("merging latencies")?;
    }
    bar.finish_and_clear();
    check_drained(client, &group).await?;
    delete_group(client, &group).await?;

    let description = format!("HTTP: append → group fetch, {rate}/s for {duration}s");
    let report = Report::new(NAME, description, total, paced.answered, "delivery", &latency);
    Ok(report.with_appends(rate, &paced.append_latency))
}

#[cfg(test)]
mod tests {
    use super::super::workloads::payload;
    use super::*;

    #[test]
    fn streams_and_groups_are_named_by_run_and_workload() {
        let spec = GroupSpec { consumers: 8, streams: 1000, run_id: "ab12" };
        assert_eq!(spec.group("groups"), "bench-ab12.groups");
        assert_eq!(spec.stream("group-latency", 7), "bench-ab12.group-latency.7");
        bifrost_core::StreamName::new(&spec.stream("group-latency", 7)).unwrap();
        bifrost_bus::GroupName::new(&spec.group("group-latency")).unwrap();
    }

    #[test]
    fn a_payload_names_its_seq() {
        let m: MessageData = serde_json::from_slice(&payload(0, 41)).unwrap();
        assert_eq!(m.seq, Some(41));
    }
}
