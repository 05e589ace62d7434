//! The in-process bus workloads: a durable consumer with a no-op handler draining a
//! prefilled log, and append → handler latency at a fixed rate.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bifrost_bus::{Bus, ConsumerOptions, GroupFilter, HandlerError, StartFrom};
use bifrost_core::{
    DurableStore, EventType, ExpectedVersion, NewEvent, RecordedEvent, StreamAppend, StreamName,
};
use hdrhistogram::Histogram;
use tokio::task::JoinSet;

use super::report::{self, Report};
use super::workloads::payload;

/// Streams the bus workloads spread their events over.
const STREAMS: u64 = 1000;

fn stream(run_id: &str, name: &str, n: u64) -> anyhow::Result<StreamName> {
    Ok(StreamName::new(&format!("bench-{run_id}.{name}-{n}"))?)
}

/// A durable consumer (cursor in the store, 16 workers, per-stream order) with a no-op
/// handler, draining `total` events appended beforehand over 1,000 streams.
pub(super) async fn durable_consumer(
    store: &Arc<dyn DurableStore>,
    total: u64,
    run_id: &str,
) -> anyhow::Result<Report> {
    let event_type = EventType::new("bench.bus")?;
    let start = *store.head().borrow();
    let mut appends = Vec::with_capacity(1000);
    for seq in 0..total {
        let event = NewEvent::new(event_type.clone(), payload(0, seq));
        appends.push(StreamAppend::new(
            stream(run_id, "bus", seq % STREAMS)?,
            ExpectedVersion::Any,
            vec![event],
        ));
        if appends.len() == 1000 || seq + 1 == total {
            store.append_many(std::mem::take(&mut appends)).await.context("bus: prefilling the log")?;
        }
    }

    let handled = Arc::new(AtomicU64::new(0));
    let filter = GroupFilter::types(["bench.bus"]);
    let options = ConsumerOptions { start: StartFrom::Position(start), ..ConsumerOptions::default() };
    let bar = report::progress("bus", total, "handled");
    let started = Instant::now();
    let subscription = {
        let handled = handled.clone();
        Bus::new(store.clone())
            .consumer(&format!("bench-{run_id}"), filter, options, move |_event: RecordedEvent| {
                handled.fetch_add(1, Ordering::Relaxed);
                std::future::ready(Ok::<(), HandlerError>(()))
            })
            .await
            .context("bus: starting the consumer")?
    };
    let mut latency = report::histogram()?;
    let mut last = (started, 0);
    loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = (Instant::now(), handled.load(Ordering::Relaxed));
        bar.set_position(now.1);
        // One sample per poll: the mean time per event over the interval.
        if now.1 > last.1 {
            let per_event = now.0.duration_since(last.0) / u32::try_from(now.1 - last.1).unwrap_or(u32::MAX);
            report::record(&mut latency, per_event);
        }
        last = now;
        if now.1 >= total {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("bus: only {} of {total} events were handled within 10 minutes", now.1);
        }
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    let status = subscription.group().status().await?;
    subscription.unsubscribe().await?;
    if status.parked > 0 || handled.load(Ordering::Relaxed) != total {
        bail!("bus: {} handled, {} parked, of {total}", handled.load(Ordering::Relaxed), status.parked);
    }
    let description = "bus: durable consumer, 16 workers, no-op handler, 1,000 streams".to_owned();
    Ok(Report::new("bus", description, total, elapsed, "handler time per event (5 ms windows)", &latency))
}

/// Appends at `rate` events/s for `seconds` (10 writers, 500 streams) while an in-process
/// subscription handles them; reports append → handler latency.
pub(super) async fn handler_latency(
    store: &Arc<dyn DurableStore>,
    rate: u64,
    seconds: u64,
    run_id: &str,
) -> anyhow::Result<Report> {
    let event_type = format!("bench.bus_latency_{}", run_id.replace(['-', '.'], "_"));
    let latency = Arc::new(std::sync::Mutex::new(report::histogram()?));
    let received = Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    let subscription = {
        let (latency, received) = (latency.clone(), received.clone());
        Bus::new(store.clone())
            .subscribe(&event_type, move |event: RecordedEvent| {
                let (latency, received) = (latency.clone(), received.clone());
                async move {
                    // The payload carries when the append was sent, in µs since `epoch`.
                    let sent: u64 = std::str::from_utf8(&event.data)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| HandlerError::permanent("not a bench payload"))?;
                    let now = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
                    if let Ok(mut h) = latency.lock() {
                        h.saturating_record(now.saturating_sub(sent).max(1));
                    }
                    received.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
            })
            .await
            .context("bus-latency: subscribing")?
    };

    let writers = 10u64;
    let total = rate * seconds;
    let interval = Duration::from_secs_f64(writers as f64 / rate as f64);
    let event_type = EventType::new(&event_type)?;
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for w in 0..writers {
        let (store, event_type, run_id) = (store.clone(), event_type.clone(), run_id.to_owned());
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut appended = report::histogram()?;
            for i in 0..total / writers {
                tick.tick().await;
                let sent = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
                let event = NewEvent::new(event_type.clone(), sent.to_string().into_bytes());
                let at = Instant::now();
                let s = stream(&run_id, "bus-latency", (w + i * writers) % 500)?;
                store.append(s, ExpectedVersion::Any, vec![event]).await?;
                report::record(&mut appended, at.elapsed());
            }
            anyhow::Ok(appended)
        });
    }
    let mut appended: Histogram<u64> = report::histogram()?;
    while let Some(joined) = tasks.join_next().await {
        appended.add(joined.context("bus-latency: a writer stopped")??).context("merging latencies")?;
    }
    let send_window = started.elapsed();
    let sent = appended.len();
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.load(Ordering::Relaxed) < sent {
        if Instant::now() > deadline {
            bail!("bus-latency: {} of {sent} events were handled", received.load(Ordering::Relaxed));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    subscription.unsubscribe().await?;
    let latency = latency.lock().map_err(|_| anyhow::anyhow!("bus-latency: a handler panicked"))?.clone();
    let description = format!("bus: append → in-process handler at {rate} ev/s for {seconds} s");
    let report = Report::new("bus-latency", description, sent, send_window, "append → handler", &latency);
    Ok(report.with_appends(rate, &appended))
}
