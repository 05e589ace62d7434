//! What the bench prints: a table for people, `--json` for machines.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

/// Latencies are recorded in microseconds, up to an hour, with 3 significant digits.
pub(super) fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).context("cannot create a latency histogram")
}

pub(super) fn record(histogram: &mut Histogram<u64>, elapsed: Duration) {
    histogram.saturating_record(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX).max(1));
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
/// Fails unless an append after `version` of `n` events landed right after it: every
/// write workload checks each answer, so a figure never counts a misplaced write.
pub(super) fn check_landed(stream: &str, version: u64, n: u64, first: u64, last: u64) -> anyhow::Result<()> {
    if first != version + 1 || last != version + n {
        anyhow::bail!("append to {stream} after version {version} landed at versions {first}..={last}");
    }
    Ok(())
}

/// Waits for every writer task; merges their latencies and lists each stream with the
/// number of events written to it.
pub(super) async fn join_writers<S: Send + 'static>(
    tasks: &mut tokio::task::JoinSet<anyhow::Result<(S, u64, Histogram<u64>)>>,
) -> anyhow::Result<(Histogram<u64>, Vec<(S, u64)>)> {
    use anyhow::Context as _;
    let mut latency = histogram()?;
    let mut streams = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (stream, count, h) = joined.context("a writer task stopped unexpectedly")??;
        latency.add(&h).context("merging latencies")?;
        streams.push((stream, count));
    }
    Ok((latency, streams))
}

pub(super) fn progress(name: &str, len: u64, unit: &str) -> ProgressBar {
    let template =
        format!("{{prefix:>10}} [{{bar:40}}] {{human_pos}}/{{human_len}} {unit} {{per_sec}} eta {{eta}}");
    let style = ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar());
    ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr())
        .with_style(style.progress_chars("=> "))
        .with_prefix(name.to_owned())
}

#[derive(Debug, Clone, Serialize)]
pub(super) struct Latency {
    pub(super) p50: u64,
    pub(super) p90: u64,
    pub(super) p99: u64,
    pub(super) p99_9: u64,
    pub(super) max: u64,
    pub(super) mean: f64,
    pub(super) samples: u64,
}

impl Latency {
    pub(super) fn of(h: &Histogram<u64>) -> Self {
        Self {
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p99_9: h.value_at_quantile(0.999),
            max: h.max(),
            mean: (h.mean() * 10.0).round() / 10.0,
            samples: h.len(),
        }
    }
}

/// One workload's result.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Report {
    pub(super) name: String,
    pub(super) description: String,
    pub(super) events: u64,
    /// Appends, pages or requests.
    pub(super) operations: u64,
    pub(super) seconds: f64,
    pub(super) events_per_second: f64,
    /// What one latency sample measures.
    pub(super) latency_of: &'static str,
    pub(super) latency_us: Latency,
    /// W5: the rate asked for (`events_per_second` is the rate achieved).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) target_rate: Option<f64>,
    /// W5: latency of the append requests themselves, next to their delivery latency.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) append_latency_us: Option<Latency>,
    /// The broadcast workloads: what the requests were (`publish`, `append`) …
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) request_of: Option<&'static str>,
    /// … and how long the server took to answer them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) request_latency_us: Option<Latency>,
    /// The broadcast workloads: how long the first receiver waited, next to the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) first_latency_us: Option<Latency>,
    /// ws-idle: the server's memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) memory: Option<MemoryFigures>,
}

/// The server's resident memory (`VmRSS`) before and after opening connections.
#[derive(Debug, Clone, Serialize)]
pub(super) struct MemoryFigures {
    pub(super) connections: usize,
    pub(super) rss_before_kib: u64,
    pub(super) rss_after_kib: u64,
    /// The growth divided by the connections.
    pub(super) kib_per_connection: f64,
}

impl MemoryFigures {
    pub(super) fn new(connections: usize, rss_before_kib: u64, rss_after_kib: u64) -> Self {
        let growth = rss_after_kib.saturating_sub(rss_before_kib) as f64;
        let per = if connections == 0 { 0.0 } else { growth / connections as f64 };
        Self { connections, rss_before_kib, rss_after_kib, kib_per_connection: (per * 100.0).round() / 100.0 }
    }
}

impl Report {
    pub(super) fn new(
        name: &str,
        description: String,
        events: u64,
        elapsed: Duration,
        latency_of: &'static str,
        latency: &Histogram<u64>,
    ) -> Self {
        let seconds = elapsed.as_secs_f64();
        Self {
            name: name.to_owned(),
            description,
            events,
            operations: latency.len(),
            seconds: (seconds * 1000.0).round() / 1000.0,
            events_per_second: if seconds > 0.0 { (events as f64 / seconds).round() } else { 0.0 },
            latency_of,
            latency_us: Latency::of(latency),
            target_rate: None,
            append_latency_us: None,
            request_of: None,
            request_latency_us: None,
            first_latency_us: None,
            memory: None,
        }
    }

    /// A paced workload's report: the rate asked for, and the latency of its appends next to
    /// the latency it measures.
    pub(super) fn with_appends(mut self, target_rate: u64, append_latency: &Histogram<u64>) -> Self {
        self.target_rate = Some(target_rate as f64);
        self.append_latency_us = Some(Latency::of(append_latency));
        self
    }

    /// The latency of the requests that started what the workload measures.
    pub(super) fn with_requests(mut self, what: &'static str, latency: &Histogram<u64>) -> Self {
        self.request_of = Some(what);
        self.request_latency_us = Some(Latency::of(latency));
        self
    }

    pub(super) fn with_first(mut self, latency: &Histogram<u64>) -> Self {
        self.first_latency_us = Some(Latency::of(latency));
        self
    }

    pub(super) fn with_memory(mut self, memory: MemoryFigures) -> Self {
        self.memory = Some(memory);
        self
    }
}

#[derive(Debug, Serialize)]
pub(super) struct Summary {
    bifrost_version: &'static str,
    store: String,
    durability: String,
    cpus: usize,
    workloads: Vec<Report>,
}

impl Summary {
    pub(super) fn new(store: String, durability: String) -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        Self { bifrost_version: env!("CARGO_PKG_VERSION"), store, durability, cpus, workloads: Vec::new() }
    }

    pub(super) fn push(&mut self, report: Report) {
        self.workloads.push(report);
    }

    pub(super) fn to_json(&self) -> anyhow::Result<String> {
        serde_json::to_string_pretty(self).context("cannot encode the results")
    }

    pub(super) fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "bifrost {} bench: {}, durability {}, {} CPUs\n",
            self.bifrost_version, self.store, self.durability, self.cpus
        );
        let _ = writeln!(
            out,
            "{:<19} {:<44} {:>9} {:>8} {:>10}  {:<19} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "workload",
            "what",
            "events",
            "seconds",
            "events/s",
            "latency",
            "p50",
            "p90",
            "p99",
            "p99.9",
            "max"
        );
        for r in &self.workloads {
            let l = &r.latency_us;
            let _ = writeln!(
                out,
                "{:<19} {:<44} {:>9} {:>8.2} {:>10}  {:<19} {:>8} {:>8} {:>8} {:>8} {:>8}",
                r.name,
                r.description,
                r.events,
                r.seconds,
                r.events_per_second,
                r.latency_of,
                micros(l.p50),
                micros(l.p90),
                micros(l.p99),
                micros(l.p99_9),
                micros(l.max),
            );
            let extra_rows = [
                ("append", r.append_latency_us.as_ref()),
                (r.request_of.unwrap_or(""), r.request_latency_us.as_ref()),
                ("→ first of N", r.first_latency_us.as_ref()),
            ];
            for (label, l) in extra_rows.into_iter().filter_map(|(label, l)| Some((label, l?))) {
                let _ = writeln!(
                    out,
                    "{:<19} {:<44} {:>9} {:>8} {:>10}  {:<19} {:>8} {:>8} {:>8} {:>8} {:>8}",
                    "",
                    "",
                    "",
                    "",
                    "",
                    label,
                    micros(l.p50),
                    micros(l.p90),
                    micros(l.p99),
                    micros(l.p99_9),
                    micros(l.max),
                );
            }
            if let Some(m) = &r.memory {
                let _ = writeln!(
                    out,
                    "{:<19} server RSS {:.1} MiB → {:.1} MiB: {:.2} KiB per connection",
                    "",
                    m.rss_before_kib as f64 / 1024.0,
                    m.rss_after_kib as f64 / 1024.0,
                    m.kib_per_connection,
                );
            }
        }
        out
    }
}

/// `850µs`, `3.14ms`, `1.20s`.
fn micros(us: u64) -> String {
    match us {
        0..1_000 => format!("{us}µs"),
        1_000..1_000_000 => format!("{:.2}ms", us as f64 / 1e3),
        _ => format!("{:.2}s", us as f64 / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_print_in_a_readable_unit() {
        assert_eq!(micros(850), "850µs");
        assert_eq!(micros(3_140), "3.14ms");
        assert_eq!(micros(1_200_000), "1.20s");
    }

    #[test]
    fn a_report_summarises_its_histogram() {
        let mut h = histogram().unwrap();
        for us in 1..=1000 {
            record(&mut h, Duration::from_micros(us));
        }
        let r = Report::new("w1", "x".into(), 1000, Duration::from_secs(2), "append", &h);
        assert_eq!(r.events_per_second, 500.0);
        assert_eq!(r.operations, 1000);
        assert!((499..=501).contains(&r.latency_us.p50), "{}", r.latency_us.p50);
        assert!((989..=991).contains(&r.latency_us.p99), "{}", r.latency_us.p99);
    }
}
