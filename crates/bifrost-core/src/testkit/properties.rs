//! Property tests of the log invariants: random operation sequences checked against a
//! model, and random concurrent interleavings checked against the invariants.

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::HashMap;
use std::future::Future;

use futures::StreamExt;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use super::{IntoHarness, events, stream};
use crate::error::Error;
use crate::store::{DeleteMode, Direction, ExpectedVersion, LogFilter, SubscribeFrom};
use crate::subscription::subscribe;

#[derive(Clone, Debug)]
enum Op {
    Append { stream: u8, expected: Expect, count: u8 },
    SoftDelete { stream: u8 },
}

#[derive(Clone, Debug)]
enum Expect {
    Any,
    NoStream,
    Exists,
    /// The correct current version (when the stream exists).
    Current,
    /// A version off by this much from the current one.
    Off(i8),
}

fn op() -> impl Strategy<Value = Op> {
    let expect = prop_oneof![
        Just(Expect::Any),
        Just(Expect::NoStream),
        Just(Expect::Exists),
        Just(Expect::Current),
        (-2i8..=2).prop_filter("non-zero", |d| *d != 0).prop_map(Expect::Off),
    ];
    prop_oneof![
        6 => (0u8..4, expect, 1u8..4).prop_map(|(stream, expected, count)| Op::Append { stream, expected, count }),
        1 => (0u8..4).prop_map(|stream| Op::SoftDelete { stream }),
    ]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Model: per stream, the last version and whether it is soft-deleted.
#[derive(Default)]
struct Model {
    streams: HashMap<u8, (u64, bool)>,
    total: usize,
}

pub fn sequential_model_check<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output: IntoHarness>,
{
    let rt = runtime();
    let mut runner = TestRunner::new(Config { cases: 24, ..Config::default() });
    runner
        .run(&proptest::collection::vec(op(), 1..40), |ops| {
            rt.block_on(async {
                let Some(harness) = factory().await.into_harness() else { return Ok(()) };
                let store = harness.store.clone();
                let mut model = Model::default();
                for op in ops {
                    match op {
                        Op::Append { stream: s, expected, count } => {
                            let (version, deleted) = model.streams.get(&s).copied().unwrap_or((0, true));
                            let exists = version > 0 && !deleted;
                            let (expected, should_pass) = match expected {
                                Expect::Any => (ExpectedVersion::Any, true),
                                Expect::NoStream => (ExpectedVersion::NoStream, !exists),
                                Expect::Exists => (ExpectedVersion::StreamExists, exists),
                                Expect::Current if exists => (ExpectedVersion::Exact(version), true),
                                Expect::Current => (ExpectedVersion::Exact(0), true),
                                Expect::Off(d) => {
                                    let v = (version as i64 + d as i64).max(1) as u64;
                                    (ExpectedVersion::Exact(v), exists && v == version)
                                }
                            };
                            let result = store
                                .append(stream(&format!("p-{s}")), expected, events(count as usize))
                                .await;
                            match (should_pass, result) {
                                (true, Ok(r)) => {
                                    prop_assert_eq!(r.first_version, version + 1);
                                    prop_assert_eq!(r.last_version, version + count as u64);
                                    model.streams.insert(s, (version + count as u64, false));
                                    model.total += count as usize;
                                }
                                (false, Err(Error::WrongExpectedVersion(c))) => {
                                    prop_assert_eq!(c.len(), 1);
                                    prop_assert_eq!(c[0].actual, exists.then_some(version));
                                }
                                (pass, other) => prop_assert!(false, "expected pass={pass}, got {other:?}"),
                            }
                        }
                        Op::SoftDelete { stream: s } => {
                            let result =
                                store.delete_stream(&stream(&format!("p-{s}")), DeleteMode::Soft).await;
                            match model.streams.get_mut(&s) {
                                Some((_, deleted @ false)) => {
                                    prop_assert!(result.is_ok());
                                    *deleted = true;
                                }
                                _ => prop_assert!(matches!(result, Err(Error::StreamNotFound(_)))),
                            }
                        }
                    }
                }
                // The log holds exactly what was acknowledged, in strictly increasing order.
                let log = store.read_all(0, &LogFilter::default(), 10_000).await.unwrap().events;
                prop_assert_eq!(log.len(), model.total);
                prop_assert!(log.windows(2).all(|w| w[0].position < w[1].position));
                for (s, (version, deleted)) in &model.streams {
                    let info = store.stream_info(&stream(&format!("p-{s}"))).await.unwrap();
                    prop_assert_eq!(info.version, *version);
                    prop_assert_eq!(info.deleted, *deleted);
                    let in_log: Vec<u64> = log
                        .iter()
                        .filter(|e| e.stream.as_str() == format!("p-{s}"))
                        .map(|e| e.version)
                        .collect();
                    prop_assert_eq!(in_log, (1..=*version).collect::<Vec<_>>());
                }
                // A subscription from the start replays the same log.
                let mut sub = subscribe(store.clone(), SubscribeFrom::Start, LogFilter::default());
                for expected in &log {
                    let got = sub.next().await.unwrap().unwrap();
                    prop_assert_eq!(got.id, expected.id);
                }
                let _ = store.close().await;
                Ok(())
            })
        })
        .unwrap();
}

pub fn concurrent_invariants<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output: IntoHarness>,
{
    let rt = runtime();
    let mut runner = TestRunner::new(Config { cases: 8, ..Config::default() });
    let plan =
        proptest::collection::vec(proptest::collection::vec((0u8..3, 1u8..4, any::<bool>()), 1..25), 2..6);
    runner
        .run(&plan, |writers| {
            rt.block_on(async {
                let Some(harness) = factory().await.into_harness() else { return Ok(()) };
                let store = harness.store.clone();
                let mut sub = subscribe(store.clone(), SubscribeFrom::Start, LogFilter::default());
                let mut tasks = Vec::new();
                for script in writers {
                    let store = store.clone();
                    tasks.push(tokio::spawn(async move {
                        let mut acked = Vec::new();
                        for (s, count, guarded) in script {
                            let name = stream(&format!("q-{s}"));
                            let expected = if guarded {
                                match store.stream_info(&name).await {
                                    Ok(info) => ExpectedVersion::Exact(info.version),
                                    Err(_) => ExpectedVersion::NoStream,
                                }
                            } else {
                                ExpectedVersion::Any
                            };
                            match store.append(name, expected, events(count as usize)).await {
                                Ok(r) => acked.push(r),
                                Err(Error::WrongExpectedVersion(_)) => {} // lost a race: fine
                                Err(e) => panic!("unexpected append error {e}"),
                            }
                        }
                        acked
                    }));
                }
                let mut acked = Vec::new();
                for t in tasks {
                    acked.extend(t.await.unwrap());
                }
                let total: u64 = acked.iter().map(|r| r.last_version - r.first_version + 1).sum();
                let log = store.read_all(0, &LogFilter::default(), 100_000).await.unwrap().events;
                prop_assert_eq!(log.len() as u64, total);
                prop_assert!(log.windows(2).all(|w| w[0].position < w[1].position));
                for s in 0..3 {
                    let name = stream(&format!("q-{s}"));
                    if let Ok(slice) = store.read_stream(&name, 1, Direction::Forward, 100_000).await {
                        let versions: Vec<u64> = slice.events.iter().map(|e| e.version).collect();
                        prop_assert_eq!(versions.clone(), (1..=versions.len() as u64).collect::<Vec<_>>());
                    }
                }
                for expected in &log {
                    let got = sub.next().await.unwrap().unwrap();
                    prop_assert_eq!(got.position, expected.position);
                }
                let _ = store.close().await;
                Ok(())
            })
        })
        .unwrap();
}
