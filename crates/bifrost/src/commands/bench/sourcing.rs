//! The event-sourcing workloads: loading a long aggregate with and without a snapshot, and
//! commands through the repository on concurrent aggregates.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use bifrost_core::{DurableStore, EventStore, ExpectedVersion, StreamAppend};
use bifrost_sourcing::{Aggregate, DomainEvent, Repository, StateSnapshots};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use super::report::{self, Report};
use super::workloads::shares;

/// A ledger of amounts: one small event per command, a state worth snapshotting.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Ledger {
    total: i64,
    entries: u64,
    last_note: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
enum LedgerEvent {
    #[serde(rename = "bench.ledger_entry")]
    Entry { amount: i64, note: String },
}

impl DomainEvent for LedgerEvent {}

#[derive(Debug, thiserror::Error)]
#[error("amounts must not be zero")]
struct ZeroAmount;

impl Aggregate for Ledger {
    const TYPE: &'static str = "benchledger";
    type Event = LedgerEvent;
    type Command = i64;
    type Error = ZeroAmount;

    fn decide(&self, amount: &i64) -> Result<Vec<LedgerEvent>, ZeroAmount> {
        if *amount == 0 {
            return Err(ZeroAmount);
        }
        Ok(vec![LedgerEvent::Entry { amount: *amount, note: format!("entry {}", self.entries + 1) }])
    }

    fn evolve(mut self, event: &LedgerEvent) -> Self {
        let LedgerEvent::Entry { amount, note } = event;
        self.total += amount;
        self.entries += 1;
        self.last_note.clone_from(note);
        self
    }
}

/// Times `loads` loads of one aggregate of `events` events: first replaying every event,
/// then from a snapshot taken at its last version.
pub(super) async fn aggregate_load(
    store: &Arc<dyn DurableStore>,
    events: u64,
    run_id: &str,
) -> anyhow::Result<Vec<Report>> {
    const LOADS: u64 = 20;
    let id = format!("load{run_id}");
    let stream = Ledger::stream(&id)?;
    let mut version = 0;
    while version < events {
        let n = 1000.min(events - version);
        let batch = (version..version + n)
            .map(|i| {
                bifrost_sourcing::event::encode(&LedgerEvent::Entry {
                    amount: 1,
                    note: format!("entry {}", i + 1),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        store
            .append_many(vec![StreamAppend::new(stream.clone(), ExpectedVersion::Exact(version), batch)])
            .await
            .context("aggregate-load: writing the aggregate")?;
        version += n;
    }

    let log: Arc<dyn EventStore> = store.clone();
    let plain = Repository::<Ledger>::new(log.clone());
    let snapshots = Arc::new(StateSnapshots::new(store.clone()));
    let snapshotted = Repository::<Ledger>::new(log).with_snapshots(snapshots, events.max(1), 1);
    snapshotted.snapshot(&id).await.context("aggregate-load: saving the snapshot")?;

    let mut reports = Vec::new();
    for (name, repository, replays) in
        [("aggregate-load", &plain, events), ("aggregate-load-snapshot", &snapshotted, 0)]
    {
        let mut latency = report::histogram()?;
        let started = Instant::now();
        for _ in 0..LOADS {
            let begun = Instant::now();
            let loaded = repository.load(&id).await?;
            report::record(&mut latency, begun.elapsed());
            if loaded.version != events || loaded.state.entries != events || loaded.replayed != replays {
                bail!(
                    "{name}: loaded version {} with {} entries after replaying {}; expected {events}, {events}, {replays}",
                    loaded.version,
                    loaded.state.entries,
                    loaded.replayed
                );
            }
        }
        let description = match replays {
            0 => format!("load an aggregate of {events} events from a snapshot at its last version"),
            _ => format!("load an aggregate of {events} events by replaying them all"),
        };
        reports.push(Report::new(name, description, events * LOADS, started.elapsed(), "one load", &latency));
    }
    Ok(reports)
}

/// `commands` commands through the repository, spread over `aggregates` aggregates that
/// each run one command at a time (load, decide, append with the expected version), with a
/// snapshot every 100 events.
pub(super) async fn commands(
    store: &Arc<dyn DurableStore>,
    commands: u64,
    aggregates: u64,
    run_id: &str,
) -> anyhow::Result<Report> {
    let log: Arc<dyn EventStore> = store.clone();
    let snapshots = Arc::new(StateSnapshots::new(store.clone()));
    let repository = Repository::<Ledger>::new(log).with_snapshots(snapshots, 100, 1);
    let bar = report::progress("commands", commands, "commands");
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for (aggregate, count) in shares(commands, aggregates).filter(|(_, n)| *n > 0) {
        let repository = repository.clone();
        let bar = bar.clone();
        let id = format!("cmd{run_id}x{aggregate}");
        tasks.spawn(async move {
            let mut latency = report::histogram()?;
            for i in 0..count {
                let begun = Instant::now();
                let done = repository.execute(&id, &1).await?;
                report::record(&mut latency, begun.elapsed());
                if done.version != i + 1 {
                    bail!("command {i} on {id} landed at version {}", done.version);
                }
                bar.inc(1);
            }
            anyhow::Ok((id, count, latency))
        });
    }
    let (latency, _) = report::join_writers(&mut tasks).await?;
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    let description =
        format!("commands: {aggregates} aggregates × one command at a time, snapshot every 100 events");
    Ok(Report::new(
        "commands",
        description,
        commands,
        elapsed,
        "one command (load, decide, append)",
        &latency,
    ))
}
