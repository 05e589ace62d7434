//! The in-process workloads: W1 and W2 write through the `EventStore` trait, W3 reads the
//! whole global log back.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use bifrost_core::{
    DurableStore, EventStore, EventType, ExpectedVersion, LogFilter, NewEvent, StreamAppend, StreamName,
};
use bytes::Bytes;
use tokio::task::JoinSet;

use super::report::{self, Report};

/// Size of every event's `data`, in bytes.
pub(super) const PAYLOAD_BYTES: usize = 256;

/// A JSON object of exactly [`PAYLOAD_BYTES`] bytes that names its writer and sequence
/// number (W5 matches deliveries to appends by `seq`).
pub(super) fn payload(writer: u64, seq: u64) -> Bytes {
    let mut json = String::with_capacity(PAYLOAD_BYTES);
    write_payload(&mut json, writer, seq);
    Bytes::from(json)
}

/// Writes [`payload`] at the end of `out`, so that a request body needs no copy of it.
pub(super) fn write_payload(out: &mut String, writer: u64, seq: u64) {
    let start = out.len();
    let _ = write!(out, r#"{{"writer":{writer},"seq":{seq},"pad":""#);
    let pad = PAYLOAD_BYTES.saturating_sub(out.len() - start + 2);
    out.extend(std::iter::repeat_n('x', pad));
    out.push_str("\"}");
}

/// Splits `total` events between `writers` as evenly as possible.
pub(super) fn shares(total: u64, writers: u64) -> impl Iterator<Item = (u64, u64)> {
    (0..writers).map(move |w| (w, total / writers + u64::from(w < total % writers)))
}

/// A write workload: `writers` concurrent writers (store tasks, or HTTP connections for
/// W4), each appending `batch` events at a time to its own stream, `total` events in all.
pub(super) struct WriteSpec<'a> {
    pub(super) name: &'static str,
    pub(super) writers: u64,
    pub(super) batch: u64,
    pub(super) total: u64,
    pub(super) run_id: &'a str,
}

impl WriteSpec<'_> {
    pub(super) fn stream(&self, writer: u64) -> String {
        format!("bench-{}.{}.{writer}", self.run_id, self.name)
    }

    /// `{writers} {unit}s × {batch} event(s) per {per}`, prefixed with `via`.
    pub(super) fn description(&self, via: &str, unit: &str, per: &str) -> String {
        let events = if self.batch == 1 { "1 event".to_owned() } else { format!("{} events", self.batch) };
        format!("{via}: {} {unit} × {events} per {per}", self.writers)
    }
}

/// W1 / W2: appends through the trait, each writer with exact expected versions so that
/// every result can be checked.
pub(super) async fn write(store: &Arc<dyn EventStore>, spec: &WriteSpec<'_>) -> anyhow::Result<Report> {
    let event_type = EventType::new(&format!("bench.{}", spec.name.replace('-', "_")))?;
    let bar = report::progress(spec.name, spec.total, "events");
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for (writer, count) in shares(spec.total, spec.writers).filter(|(_, n)| *n > 0) {
        let store = Arc::clone(store);
        let stream = StreamName::new(&spec.stream(writer))?;
        let event_type = event_type.clone();
        let bar = bar.clone();
        let batch = spec.batch;
        tasks.spawn(async move {
            let mut latency = report::histogram()?;
            let mut version = 0;
            while version < count {
                let n = batch.min(count - version);
                let events = (version..version + n)
                    .map(|seq| NewEvent::new(event_type.clone(), payload(writer, seq)))
                    .collect();
                let sent = Instant::now();
                let result = store
                    .append(stream.clone(), ExpectedVersion::Exact(version), events)
                    .await
                    .with_context(|| format!("append to {stream} at version {version} failed"))?;
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
        let info = store.stream_info(&stream).await?;
        if info.version != count {
            bail!(
                "{}: stream {stream} is at version {} after {count} events were written",
                spec.name,
                info.version
            );
        }
    }
    let description = spec.description("store", "writers", "append");
    Ok(Report::new(spec.name, description, spec.total, elapsed, "append", &latency))
}

/// What W3 must find in the log.
#[derive(Debug, Clone, Copy)]
pub(super) enum LogExpectation {
    /// A store this run created: exactly the events it wrote.
    Exactly(u64),
    /// A store given by the user may hold more.
    AtLeast(u64),
}

/// W3: the whole global log, page by page, checking that positions strictly increase.
pub(super) async fn read_log(
    store: &Arc<dyn EventStore>,
    page_size: usize,
    expect: LogExpectation,
) -> anyhow::Result<Report> {
    let head = *store.head().borrow();
    let bar = report::progress("w3", head, "positions");
    let filter = LogFilter::default();
    let mut latency = report::histogram()?;
    let (mut after, mut events) = (0, 0u64);
    let started = Instant::now();
    loop {
        let sent = Instant::now();
        let page = store.read_all(after, &filter, page_size).await.context("reading the global log")?;
        if page.events.is_empty() {
            break;
        }
        report::record(&mut latency, sent.elapsed());
        for event in &page.events {
            if event.position <= after {
                bail!("w3: position {} follows position {after} in the global log", event.position);
            }
            after = event.position;
        }
        events += page.events.len() as u64;
        bar.set_position(after);
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();

    match expect {
        LogExpectation::Exactly(n) if events != n => {
            bail!("w3: the log holds {events} events, {n} were written")
        }
        LogExpectation::AtLeast(n) if events < n => {
            bail!("w3: the log holds {events} events, fewer than the {n} written")
        }
        _ => {}
    }
    if after < head {
        bail!("w3: the read ended at position {after}, before the head of the log at {head}");
    }
    let description = format!("store: read_all, pages of {page_size}");
    Ok(Report::new("w3", description, events, elapsed, "page", &latency))
}

/// Appends `total` events of `event_type` over `streams` streams named `{prefix}-{n}`, 1,000
/// per append: the backlog the delivery workloads (webhooks, bridges) drain.
pub(super) async fn backlog(
    store: &Arc<dyn DurableStore>,
    total: u64,
    streams: u64,
    event_type: &str,
    prefix: &str,
) -> anyhow::Result<()> {
    let mut written = 0;
    while written < total {
        let n = (total - written).min(1000);
        let mut by_stream: HashMap<u64, Vec<NewEvent>> = HashMap::new();
        for i in written..written + n {
            let event = NewEvent::json(event_type, &serde_json::json!({"seq": i, "note": "delivery bench"}))?;
            by_stream.entry(i % streams).or_default().push(event);
        }
        let appends = by_stream
            .into_iter()
            .map(|(s, events)| {
                let stream = StreamName::new(&format!("{prefix}-{s}"))?;
                Ok(StreamAppend::new(stream, ExpectedVersion::Any, events))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        store.append_many(appends).await?;
        written += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use bifrost_core::InMemoryStore;

    use super::*;

    #[test]
    fn payloads_are_256_bytes_of_json() {
        for (w, seq) in [(0, 0), (63, 199_999), (u64::MAX, u64::MAX)] {
            let p = payload(w, seq);
            assert_eq!(p.len(), PAYLOAD_BYTES);
            let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
            assert_eq!(v["seq"], seq);
        }
    }

    #[test]
    fn shares_add_up() {
        let s: Vec<_> = shares(10, 4).collect();
        assert_eq!(s, vec![(0, 3), (1, 3), (2, 2), (3, 2)]);
        assert_eq!(shares(200_000, 64).map(|(_, n)| n).sum::<u64>(), 200_000);
    }

    #[test]
    fn a_write_spec_names_its_streams_and_describes_itself() {
        let spec = WriteSpec { name: "w4-batch", writers: 64, batch: 100, total: 10, run_id: "ab12" };
        assert_eq!(spec.stream(7), "bench-ab12.w4-batch.7");
        StreamName::new(&spec.stream(7)).unwrap();
        assert_eq!(
            spec.description("HTTP", "connections", "request"),
            "HTTP: 64 connections × 100 events per request"
        );
        let spec = WriteSpec { batch: 1, ..spec };
        assert_eq!(spec.description("store", "writers", "append"), "store: 64 writers × 1 event per append");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn write_then_read_verifies_the_log() {
        let store: Arc<dyn EventStore> = InMemoryStore::shared();
        let w1 = WriteSpec { name: "w1", writers: 8, batch: 1, total: 100, run_id: "t" };
        let w2 = WriteSpec { name: "w2", writers: 3, batch: 7, total: 50, run_id: "t" };
        assert_eq!(write(&store, &w1).await.unwrap().operations, 100);
        assert_eq!(write(&store, &w2).await.unwrap().operations, 9, "17, 17 and 16 events in appends of 7");
        let r = read_log(&store, 40, LogExpectation::Exactly(150)).await.unwrap();
        assert_eq!((r.events, r.operations), (150, 4));
        assert!(read_log(&store, 40, LogExpectation::Exactly(151)).await.is_err());
    }
}
