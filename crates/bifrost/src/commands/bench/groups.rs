//! The consumer-group workloads, through HTTP like a remote consumer sees them: `groups`
//! (competing consumers draining a backlog, fetch → ack) and `group-latency` (events
//! appended at a fixed rate, timed from the append request to the fetch answer that
//! delivers them).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bifrost_api::{
    AckBody, AckRequest, FetchBody, GroupBody, GroupConfigRequest, GroupFilterRequest, MultiAppendResultBody,
    StartBody,
};
use hdrhistogram::Histogram;
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use tokio::task::JoinSet;

use super::http::{DELIVERY_GRACE, Payload, SendTimes, paced_appends, write_append};
use super::raw::{RawClient, parse};
use super::report::{self, Report};
use super::workloads::shares;

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

/// What the workloads keep of a leased event.
struct Leased {
    lease: String,
    position: u64,
    /// The `seq` of the bench payload.
    seq: Option<u64>,
}

/// The nodes consumer `n` fetches through and acks through: consumers are spread over the
/// nodes, and each acks through the next one (a load balancer keeps no consumer on one node).
fn spread(nodes: &[RawClient], n: u64) -> (RawClient, RawClient) {
    let at = |k: u64| nodes[usize::try_from(k % nodes.len() as u64).unwrap_or(0)].clone();
    (at(n), at(n + 1))
}

/// Creates (or replaces) a group that starts at the end of the log and reads `event_type`.
async fn create_group(client: &RawClient, group: &str, event_type: &str) -> anyhow::Result<()> {
    let settings = GroupConfigRequest {
        filter: Some(GroupFilterRequest { types: Some(vec![event_type.to_owned()]), category: None }),
        start: Some(StartBody::End),
        ..GroupConfigRequest::default()
    };
    let body = serde_json::to_vec(&settings).context("cannot encode the group's settings")?;
    let url = client.url(&["v1", "groups", group], &[]);
    let request = client.http().put(url).header(CONTENT_TYPE, "application/json").body(body);
    let answer = client.exchange_success(request).await;
    answer.with_context(|| format!("cannot create the consumer group {group}"))?;
    Ok(())
}

async fn delete_group(client: &RawClient, group: &str) -> anyhow::Result<()> {
    let request = client.http().delete(client.url(&["v1", "groups", group], &[]));
    let answer = client.exchange(request, StatusCode::NO_CONTENT).await;
    answer.with_context(|| format!("cannot delete the consumer group {group}"))?;
    Ok(())
}

/// Leases up to [`FETCH_MAX`] events, waiting up to `wait_ms` for the first.
async fn fetch(client: &RawClient, group: &str, consumer: &str, wait_ms: u64) -> anyhow::Result<Vec<Leased>> {
    let query =
        [("max", FETCH_MAX.to_string()), ("wait", wait_ms.to_string()), ("consumer", consumer.to_owned())];
    let url = client.url(&["v1", "groups", group, "fetch"], &query);
    let body = client
        .exchange(client.http().post(url), StatusCode::OK)
        .await
        .with_context(|| format!("fetch from {group}"))?;
    let fetched: FetchBody<'_> = parse(&body, &format!("a fetch from {group}"))?;
    Ok(fetched
        .messages
        .into_iter()
        .map(|m| Leased { seq: Payload::seq_of(&m.event), position: m.event.position, lease: m.lease })
        .collect())
}

/// Acks every lease of `messages`; each must still be held.
async fn ack(client: &RawClient, group: &str, messages: &[Leased]) -> anyhow::Result<()> {
    let leases: Vec<String> = messages.iter().map(|m| m.lease.clone()).collect();
    let sent = leases.len() as u64;
    let body = serde_json::to_vec(&AckRequest { leases }).context("cannot encode an ack")?;
    let url = client.url(&["v1", "groups", group, "ack"], &[]);
    let request = client.http().post(url).header(CONTENT_TYPE, "application/json").body(body);
    let answer = client.exchange(request, StatusCode::OK).await.with_context(|| format!("ack to {group}"))?;
    let settled: AckBody = parse(&answer, &format!("an ack to {group}"))?;
    if settled.acked != sent || !settled.expired.is_empty() {
        bail!(
            "{group}: {} of {} leases were acked, {} had expired",
            settled.acked,
            sent,
            settled.expired.len()
        );
    }
    Ok(())
}

/// Appends `total` events over `streams` streams through `POST /v1/append`, each request
/// carrying a few events of many streams, so that the streams interleave in the log as
/// independent writers would leave them. Returns the lowest and highest position written.
async fn prefill(
    client: &RawClient,
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
                    client.exchange(request, StatusCode::CREATED).await.context("multi-stream append")?;
                let answer: MultiAppendResultBody = parse(&answer, "a multi-stream append")?;
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
    nodes: &[RawClient],
    spec: &GroupSpec<'_>,
    total: u64,
) -> anyhow::Result<Report> {
    let client = &nodes[0];
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
        let (fetch_node, ack_node) = spread(nodes, consumer);
        let (group, bar) = (group.clone(), bar.clone());
        let (acked, done) = (Arc::clone(&acked), Arc::clone(&done));
        tasks.spawn(async move {
            let name = format!("bench-{consumer}");
            let mut latency = report::histogram()?;
            while done.load(Ordering::Acquire) < total {
                let sent = Instant::now();
                let fetched = fetch(&fetch_node, &group, &name, FETCH_WAIT_MS).await?;
                if fetched.is_empty() {
                    continue;
                }
                ack(&ack_node, &group, &fetched).await?;
                report::record(&mut latency, sent.elapsed());
                for m in &fetched {
                    let flag = m
                        .position
                        .checked_sub(low)
                        .and_then(|i| usize::try_from(i).ok())
                        .and_then(|i| acked.get(i));
                    let Some(flag) = flag else {
                        bail!("{NAME}: position {} is outside the prefill {low}..={high}", m.position)
                    };
                    if flag.swap(true, Ordering::AcqRel) {
                        bail!("{NAME}: position {} was delivered after it was acked", m.position);
                    }
                }
                let n = fetched.len() as u64;
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
async fn check_drained(client: &RawClient, group: &str) -> anyhow::Result<()> {
    let body = client.get(client.url(&["v1", "groups", group], &[])).await?;
    let status: GroupBody = parse(&body, &format!("a look at the group {group}"))?;
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
    nodes: &[RawClient],
    spec: &GroupSpec<'_>,
    rate: u64,
    duration: f64,
) -> anyhow::Result<Report> {
    let client = &nodes[0];
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
        let (fetch_node, ack_node) = spread(nodes, consumer);
        let (group, bar) = (group.clone(), bar.clone());
        let (times, delivered, stop) = (Arc::clone(&times), Arc::clone(&delivered), Arc::clone(&stop));
        consumers.spawn(async move {
            let name = format!("bench-{consumer}");
            let mut latency = report::histogram()?;
            while !stop.load(Ordering::Acquire) {
                let fetched = fetch(&fetch_node, &group, &name, 1000).await?;
                let now = times.now();
                for m in &fetched {
                    let Some(seq) = m.seq else {
                        bail!("{NAME}: delivered an event with an unknown seq at position {}", m.position)
                    };
                    report::record(&mut latency, times.delivered(NAME, seq, now)?);
                }
                if !fetched.is_empty() {
                    ack(&ack_node, &group, &fetched).await?;
                    let n = fetched.len() as u64;
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
        let m: Payload = serde_json::from_slice(&payload(0, 41)).unwrap();
        assert_eq!(m.seq, Some(41));
    }
}
