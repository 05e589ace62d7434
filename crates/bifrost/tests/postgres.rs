//! `bifrost serve` on PostgreSQL, end to end: each test runs the real binary in a schema of
//! its own and drops it afterwards. Without a reachable database the tests skip with a
//! clear line, or fail when `BIFROST_REQUIRE_SERVICES=1`.
//!
//! The database is `BIFROST_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`).

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns: a failure is a failed test

mod common;

use common::pg::{Schema, url};
use common::{Server, bifrost, run, stderr, stdout};

fn append(server: &str, stream: &str, event_type: &str, data: &str) -> serde_json::Value {
    let out = run(bifrost().args(["append", stream, event_type, data, "--server", server]), None);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_str(stdout(&out).trim()).unwrap()
}

fn read(server: &str, args: &[&str]) -> Vec<serde_json::Value> {
    let out = run(bifrost().arg("read").args(args).args(["--server", server]), None);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn serve_on_postgres_round_trips_keeps_the_log_across_restarts_and_exits_0_on_sigterm() {
    let Some(schema) = Schema::fresh() else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = url();
    let server = Server::start(dir.path(), "127.0.0.1:0", &["--store", &store, "--pg-schema", &schema.name]);
    assert!(!dir.path().join("bifrost.db").exists(), "the embedded store is not opened");
    let base = server.url();

    let first = append(&base, "order-1", "order.placed", r#"{"total": 42.5}"#);
    assert_eq!(first["first_version"], 1);
    assert_eq!(first["first_position"], 1, "a fresh schema starts an empty log: {first}");
    append(&base, "order-1", "order.paid", r#"{"amount": 42.5}"#);
    append(&base, "invoice-9", "invoice.sent", "\"text\"");

    let events = read(&base, &["order-1"]);
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["type"], "order.placed");
    assert_eq!(events[0]["data"]["total"], 42.5);
    assert_eq!(events[1]["version"], 2);

    let (status, lines) = server.terminate();
    assert_eq!(status.code(), Some(0), "{lines:?}");
    assert_eq!(lines.iter().filter(|l| l.contains("listening on")).count(), 1, "{lines:?}");

    // Again, the schema named through the environment: the log is the database's.
    let mut cmd = bifrost();
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--store", &store, "--data-dir"]).arg(dir.path());
    cmd.env("BIFROST_PG_SCHEMA", &schema.name);
    let server = Server::spawn(cmd);
    let base = server.url();
    let log = read(&base, &["--all"]);
    let types: Vec<&str> = log.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["order.placed", "order.paid", "invoice.sent"]);
    let positions: Vec<u64> = log.iter().map(|e| e["position"].as_u64().unwrap()).collect();
    assert_eq!(positions, [1, 2, 3]);
    let (status, lines) = server.terminate();
    assert_eq!(status.code(), Some(0), "{lines:?}");
}

#[test]
fn bench_on_postgres_runs_in_a_fresh_schema_and_drops_it() {
    let Some(_probe) = Schema::fresh() else { return };
    let out = run(
        bifrost().args([
            "bench",
            "--store",
            &url(),
            "--workload",
            "w1,w2,w3",
            "--count",
            "200",
            "--writers",
            "4",
            "--json",
        ]),
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let store = report["store"].as_str().unwrap();
    let schema = store.rsplit_once("schema ").unwrap().1.to_owned();
    assert!(schema.starts_with("bifrost_bench_"), "{store}");
    assert_eq!(report["workloads"][2]["events"], 400, "w3 reads exactly what w1 and w2 wrote");
    // The schema is gone: a server on it starts an empty log.
    let dir = tempfile::tempdir().unwrap();
    let cleanup = Schema { name: schema.clone() };
    let server = Server::start(dir.path(), "127.0.0.1:0", &["--store", &url(), "--pg-schema", &schema]);
    assert!(read(&server.url(), &["--all"]).is_empty(), "the bench dropped its schema");
    drop(server);
    drop(cleanup);
}
