//! The binary end to end: serve's lifecycle, usage errors, config precedence, and the
//! client commands against a spawned server.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns: a failure is a failed test

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Server, bifrost, run, stderr, stdout};

fn one_error_line(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line on stderr, got {stderr:?}");
    assert!(lines[0].starts_with("error: "), "{stderr:?}");
    lines[0].to_owned()
}

#[test]
fn serve_logs_its_address_once_and_exits_0_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0", &[]);
    assert!(dir.path().join("bifrost.db").exists(), "the embedded store lives in the data dir");
    let (status, lines) = server.terminate();
    assert_eq!(status.code(), Some(0), "{lines:?}");
    let announced = lines.iter().filter(|l| l.contains("bifrost listening on http://127.0.0.1:")).count();
    assert_eq!(announced, 1, "{lines:?}");
}

#[test]
fn the_listening_line_appears_even_when_the_log_is_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = bifrost();
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--store", "memory:", "--data-dir"]).arg(dir.path());
    cmd.env("BIFROST_LOG", "error");
    let server = Server::spawn(cmd);
    let (status, lines) = server.terminate();
    assert_eq!(status.code(), Some(0));
    assert_eq!(lines.iter().filter(|l| l.contains("listening on")).count(), 1, "{lines:?}");
}

#[test]
fn bad_flags_exit_2_with_one_error_line() {
    let out = run(bifrost().args(["serve", "--lisen", "127.0.0.1:1"]), None);
    assert_eq!(out.status.code(), Some(2));
    let line = one_error_line(&stderr(&out));
    assert!(line.contains("--lisen"), "{line}");

    let out = run(bifrost().args(["read"]), None);
    assert_eq!(out.status.code(), Some(2));
    one_error_line(&stderr(&out));
}

#[test]
fn a_busy_port_is_one_error_line_and_a_failure() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = run(bifrost().args(["serve", "--listen", &addr, "--data-dir"]).arg(dir.path()), None);
    assert_eq!(out.status.code(), Some(1));
    let line = one_error_line(&stderr(&out));
    assert!(line.contains(&addr), "{line}");
}

#[test]
fn an_unreachable_postgres_is_one_error_line_and_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = run(
        bifrost()
            .args(["serve", "--listen", "127.0.0.1:0", "--pg-connect-timeout-ms", "3000", "--data-dir"])
            .arg(dir.path())
            // Nothing listens on port 1: the connection is refused at once.
            .env("BIFROST_STORE", "postgres://bifrost:s3cret@127.0.0.1:1/test"),
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let line = one_error_line(&stderr(&out));
    assert!(line.contains("postgres://bifrost:***@127.0.0.1:1/test"), "names the store: {line}");
    assert!(line.contains("unreachable"), "{line}");
    assert!(!line.contains("s3cret"), "never the password: {line}");
    assert!(started.elapsed() < Duration::from_secs(10), "no wait beyond the connect timeout");
    assert!(!dir.path().join("bifrost.db").exists(), "PostgreSQL leaves the data dir alone");
}

#[test]
fn config_precedence_is_flag_then_environment_then_file_then_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bifrost.toml");
    std::fs::write(
        &file,
        "listen = \"10.0.0.1:1\"\nmax_body_bytes = 111\nmax_event_bytes = 222\nlog = \"debug\"\n",
    )
    .unwrap();
    let out = run(
        bifrost()
            .args(["config", "--max-body-bytes", "333"])
            .env("BIFROST_CONFIG", &file)
            .env("BIFROST_MAX_BODY_BYTES", "444")
            .env("BIFROST_MAX_EVENT_BYTES", "555"),
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("max_body_bytes = 333"), "flag beats environment and file: {text}");
    assert!(text.contains("max_event_bytes = 555"), "environment beats file: {text}");
    assert!(text.contains("listen = \"10.0.0.1:1\""), "file beats default: {text}");
    assert!(text.contains("log = \"debug\""), "{text}");
    assert!(text.contains("sse_heartbeat_ms = 15000"), "default: {text}");

    std::fs::write(&file, "listen = \"a:1\"\nlisten_adress = \"b:2\"\n").unwrap();
    let out = run(bifrost().arg("config").arg("--config").arg(&file), None);
    assert_eq!(out.status.code(), Some(1));
    assert!(one_error_line(&stderr(&out)).contains("listen_adress"));

    let out = run(bifrost().args(["config", "--config", "/nonexistent/bifrost.toml"]), None);
    assert_eq!(out.status.code(), Some(1));
    one_error_line(&stderr(&out));
}

#[test]
fn auth_and_realtime_settings_read_their_environment_twins() {
    let key = concat!(env!("CARGO_MANIFEST_DIR"), "/../bifrost-server/tests/fixtures/jwt_es256_public.pem");
    let out = run(
        bifrost()
            .arg("config")
            .env("BIFROST_JWT_PUBLIC_KEY_FILE", key)
            .env("BIFROST_AUTH_JWT_LEEWAY_S", "7")
            .env("BIFROST_REALTIME_ALLOW_ANONYMOUS", "true")
            .env("BIFROST_REALTIME_ANONYMOUS_CHANNELS", "room:public:*, user:guest")
            .env("BIFROST_REALTIME_PRESENCE_GRACE_S", "2"),
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for line in [
        format!("public_key_file = {key:?}"),
        "leeway_s = 7".to_owned(),
        "allow_anonymous = true".to_owned(),
        "anonymous_channels = [\"room:public:*\", \"user:guest\"]".to_owned(),
        "presence_grace_s = 2".to_owned(),
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in {text}");
    }

    let out = run(bifrost().arg("config").env("BIFROST_JWT_SECRET", "s3cret-s3cret"), None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stdout(&out).contains("s3cret"), "the secret is never printed");
}

#[test]
fn a_bad_jwt_setting_stops_the_start_with_exit_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let out = run(
        bifrost()
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .env("BIFROST_JWT_PUBLIC_KEY_FILE", &missing),
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    let line = one_error_line(&stderr(&out));
    assert!(line.contains("auth.jwt.public_key_file"), "{line}");
    assert!(line.contains(&missing.display().to_string()), "{line}");
    assert!(!dir.path().join("bifrost.db").exists(), "nothing opened before the check");

    let out = run(
        bifrost().args(["config", "--jwt-public-key-file"]).arg(&missing).env("BIFROST_JWT_SECRET", "s3cret"),
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    let line = one_error_line(&stderr(&out));
    assert!(line.contains("auth.jwt.secret") && line.contains("auth.jwt.public_key_file"), "{line}");
    assert!(!line.contains("s3cret"), "{line}");
}

#[test]
fn invalid_json_data_is_refused_before_sending() {
    // No server at this address: the check happens first.
    let out = run(
        bifrost().args(["append", "order-1", "order.placed", "{not json", "--server", "http://127.0.0.1:9"]),
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(one_error_line(&stderr(&out)).contains("not valid JSON"));
}

#[test]
fn append_and_read_round_trip_through_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0", &[]);
    let url = server.url();

    let out = run(
        bifrost()
            .args([
                "append",
                "order-1",
                "order.placed",
                r#"{"total": 42.5}"#,
                "--expected-version",
                "no_stream",
            ])
            .args(["--metadata", r#"{"correlation_id":"c-1"}"#])
            .env("BIFROST_URL", &url),
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let result: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(result["stream"], "order-1");
    assert_eq!(result["first_version"], 1);

    // DATA from stdin, a fixed id.
    let id = "0193a5e0-0000-7000-8000-000000000001";
    let out = run(
        bifrost().args([
            "append",
            "order-1",
            "order.paid",
            "-",
            "--expected-version",
            "1",
            "--id",
            id,
            "--server",
            &url,
        ]),
        Some("{\n  \"amount\": 42.5\n}\n"),
    );
    assert!(out.status.success(), "{}", stderr(&out));

    // A stale expected version: the server's problem, on one line, exit 1.
    let out = run(
        bifrost().args([
            "append",
            "order-1",
            "order.paid",
            "{}",
            "--expected-version",
            "1",
            "--server",
            &url,
        ]),
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let line = one_error_line(&stderr(&out));
    assert!(line.contains(": "), "title: detail, got {line}");

    run(bifrost().args(["append", "invoice-9", "invoice.sent", "\"text\"", "--server", &url]), None);

    let out = run(bifrost().args(["read", "order-1", "--server", &url]), None);
    assert!(out.status.success(), "{}", stderr(&out));
    let events: Vec<serde_json::Value> =
        stdout(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["type"], "order.placed");
    assert_eq!(events[0]["data"]["total"], 42.5);
    assert_eq!(events[0]["metadata"]["correlation_id"], "c-1");
    assert_eq!(events[1]["id"], id);
    assert_eq!(events[1]["version"], 2);

    let out = run(bifrost().args(["read", "order-1", "--backward", "--limit", "1", "--server", &url]), None);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{}", stderr(&out));
    assert!(lines[0].contains("order.paid"));

    let out = run(bifrost().args(["read", "--all", "--server", &url]), None);
    assert_eq!(stdout(&out).lines().count(), 3, "{}", stderr(&out));
    let out = run(bifrost().args(["read", "--all", "--type", "order.*", "--server", &url]), None);
    assert_eq!(stdout(&out).lines().count(), 2);
    let out = run(bifrost().args(["read", "--all", "--category", "invoice", "--server", &url]), None);
    assert_eq!(stdout(&out).lines().count(), 1);
    let out = run(
        bifrost().args(["read", "--all", "--from-position", "1", "--limit", "1", "--server", &url]),
        None,
    );
    let event: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(event["id"], id);

    let out = run(bifrost().args(["read", "nope-1", "--server", &url]), None);
    assert_eq!(out.status.code(), Some(1));
    one_error_line(&stderr(&out));
}

/// Reads JSON lines from a child's stdout on a thread; `take(n)` waits (bounded).
struct LineReader {
    rx: std::sync::mpsc::Receiver<String>,
}

impl LineReader {
    fn new(pipe: std::process::ChildStdout) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { rx }
    }

    fn take(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            let line =
                self.rx.recv_timeout(left).unwrap_or_else(|_| panic!("only {} of {n} lines", out.len()));
            out.push(serde_json::from_str(&line).unwrap());
        }
        out
    }

    fn nothing_more_within(&self, wait: Duration) {
        if let Ok(line) = self.rx.recv_timeout(wait) {
            panic!("unexpected line {line}");
        }
    }
}

#[test]
fn tail_follows_the_log_and_resumes_after_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0", &[]);
    let url = server.url();
    let append = |stream: &str, t: &str| {
        let out = run(bifrost().args(["append", stream, t, "{}", "--server", &url]), None);
        assert!(out.status.success(), "{}", stderr(&out));
    };
    append("a-1", "a.one");

    let mut tail = bifrost()
        .args(["tail", "--from-position", "0", "--type", "a.#", "--server", &url])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let lines = LineReader::new(tail.stdout.take().unwrap());
    let first = lines.take(1);
    assert_eq!(first[0]["type"], "a.one", "catch-up from the log");

    append("b-1", "b.skipped");
    append("a-1", "a.two");
    assert_eq!(lines.take(1)[0]["type"], "a.two", "live, filtered");

    // The server goes away and comes back on the same address and data.
    let addr = server.addr.clone();
    server.kill();
    let server = Server::start(dir.path(), &addr, &[]);
    append("a-2", "a.three");
    let resumed = lines.take(1);
    assert_eq!(resumed[0]["type"], "a.three", "resumed after the last position, no duplicate");
    lines.nothing_more_within(Duration::from_millis(500));

    let _ = tail.kill();
    let _ = tail.wait();
    drop(server);
}

#[test]
fn ws_prints_the_frames_of_its_channels_resuming_after_a_position() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0", &[]);
    let url = server.url();
    let append = |stream: &str, t: &str| {
        let out = run(bifrost().args(["append", stream, t, "{}", "--server", &url]), None);
        assert!(out.status.success(), "{}", stderr(&out));
    };
    append("w-1", "w.one");
    append("w-2", "w.other");
    append("w-1", "w.two");

    let mut ws = bifrost()
        .args(["ws", "stream:w-1", "--since", "1", "--user-id", "me", "--server", &url])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let lines = LineReader::new(ws.stdout.take().unwrap());
    let head = lines.take(3);
    assert_eq!((head[0]["op"].as_str(), head[0]["user_id"].as_str()), (Some("connected"), Some("me")));
    assert_eq!(head[1]["op"], "subscribed");
    assert_eq!((head[1]["position"].as_u64(), head[1]["recovered"].as_bool()), (Some(1), Some(true)));
    assert_eq!(
        (head[2]["op"].as_str(), head[2]["position"].as_u64()),
        (Some("event"), Some(3)),
        "missed, w-1 only"
    );
    append("w-1", "w.three");
    let live = lines.take(1);
    assert_eq!(live[0]["event"]["type"], "w.three");
    lines.nothing_more_within(Duration::from_millis(300));
    let _ = ws.kill();
    let _ = ws.wait();

    let out = run(bifrost().args(["ws", "stream:w-1", "nope", "--server", &url]), None);
    assert!(!out.status.success(), "a refused subscription ends the command");
    assert!(stdout(&out).contains("bifrost:invalid-channel"), "the error frame is printed: {}", stdout(&out));
    let error = stderr(&out);
    assert_eq!(error.trim().lines().count(), 1, "one readable line: {error}");
    assert!(error.contains("cannot subscribe to nope"), "{error}");
    drop(server);
}

#[test]
fn bench_runs_every_workload_small_and_prints_json() {
    let out = run(
        bifrost().args([
            "bench",
            "--count",
            "600",
            "--writers",
            "8",
            "--rate",
            "400",
            "--duration",
            "0.5",
            "--ws-connections",
            "40",
            "--ws-publishes",
            "5",
            "--json",
        ]),
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    // `all` runs the bridges of the brokers that answer and skips the others (saying so).
    let (bridged, rows): (Vec<&serde_json::Value>, Vec<&serde_json::Value>) = report["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .partition(|w| w["name"].as_str().unwrap().starts_with("bridges-"));
    for row in &bridged {
        assert!(
            row["events"].as_u64().unwrap() > 0 && row["events_per_second"].as_f64().unwrap() > 0.0,
            "{row}"
        );
    }
    let names: Vec<&str> = rows.iter().map(|w| w["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "w1",
            "w2",
            "w3",
            "bus",
            "bus-latency",
            "aggregate-load",
            "aggregate-load-snapshot",
            "commands",
            "w4-single",
            "w4-batch",
            "w5",
            "groups",
            "group-latency",
            "webhooks-1",
            "webhooks-10",
            "webhook-latency",
            "ws-idle",
            "ws-broadcast",
            "ws-broadcast-stream"
        ]
    );
    let w3 = rows[2];
    assert_eq!(w3["events"], 1200, "w3 reads what w1 and w2 wrote");
    // The webhook throughput rows measure deliveries/s only.
    for w in rows.iter().filter(|w| w["latency_of"] != "-") {
        assert!(w["latency_us"]["p50"].as_u64().unwrap() > 0, "{w}");
    }
    let idle = rows[16];
    assert_eq!(idle["memory"]["connections"], 40, "{idle}");
    assert!(idle["memory"]["rss_after_kib"].as_u64().unwrap() > 0, "{idle}");
    for broadcast in &rows[17..] {
        assert_eq!(
            (broadcast["events"].as_u64(), broadcast["latency_us"]["samples"].as_u64()),
            (Some(200), Some(5)),
            "every publish reached all 40 subscribers: {broadcast}"
        );
    }
}

#[test]
fn ws_bench_refusals_are_one_line() {
    let out = run(bifrost().args(["bench", "--workload", "ws-idle", "--url", "http://127.0.0.1:9"]), None);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).trim().lines().count() == 1 && stderr(&out).contains("leave out --url"));
    let out = run(
        bifrost().args(["bench", "--workload", "ws-broadcast", "--ws-connections", "1000000000000"]),
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let error = stderr(&out);
    assert_eq!(error.trim().lines().count(), 1, "{error}");
    assert!(error.contains("ulimit"), "{error}");
}

/// Runs a client command against `url`; stdout as JSON lines when it succeeds.
fn json_lines(url: &str, args: &[&str]) -> Vec<serde_json::Value> {
    let out = run(bifrost().args(args).args(["--server", url]), None);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    stdout(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn one_json(url: &str, args: &[&str]) -> serde_json::Value {
    let mut lines = json_lines(url, args);
    assert_eq!(lines.len(), 1, "{args:?}: {lines:?}");
    lines.remove(0)
}

#[test]
fn groups_and_dead_letters_are_managed_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0", &[]);
    let url = server.url();
    for (stream, event_type) in [
        ("order-1", "order.placed"),
        ("order-1", "order.paid"),
        ("order-2", "order.placed"),
        ("invoice-1", "invoice.sent"),
    ] {
        one_json(&url, &["append", stream, event_type, "{}"]);
    }

    let group = one_json(
        &url,
        &[
            "groups",
            "create",
            "billing",
            "--type",
            "order.#",
            "--max-attempts",
            "3",
            "--backoff",
            "fixed",
            "--backoff-initial-ms",
            "1",
            "--no-jitter",
        ],
    );
    assert_eq!(group["group"], "billing");
    assert_eq!(group["config"]["filter"]["types"], serde_json::json!(["order.#"]));
    assert_eq!(group["config"]["max_attempts"], 3);
    assert_eq!(group["config"]["backoff"]["kind"], "fixed");
    let shown = one_json(&url, &["groups", "show", "billing"]);
    assert_eq!(shown["lag"], 3, "three order events, the invoice does not match: {shown}");
    let listed = json_lines(&url, &["groups", "list"]);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["group"], "billing");

    // One event per stream at a time: order-1's second waits for its first.
    let leases = json_lines(&url, &["groups", "fetch", "billing", "--max", "10", "--consumer", "cli-test"]);
    assert_eq!(leases.len(), 2, "{leases:?}");
    let lease_of = |leases: &[serde_json::Value], stream: &str| {
        let m = leases.iter().find(|m| m["event"]["stream"] == stream).unwrap();
        (m["lease"].as_str().unwrap().to_owned(), m["event"]["id"].as_str().unwrap().to_owned())
    };
    let (first, _) = lease_of(&leases, "order-1");
    let (parked_lease, parked_id) = lease_of(&leases, "order-2");
    assert_eq!(leases[0]["attempt"], 1);

    let acked = one_json(&url, &["groups", "ack", "billing", &first]);
    assert_eq!(acked["acked"], 1);
    let nacked =
        one_json(&url, &["groups", "nack", "billing", &parked_lease, "--park", "--reason", "bad total"]);
    assert_eq!(nacked["nacked"], 1);

    // An ack of a lease already settled: the answer is printed, the command fails.
    let out = run(bifrost().args(["groups", "ack", "billing", &first, "--server", &url]), None);
    assert_eq!(out.status.code(), Some(1));
    assert!(one_error_line(&stderr(&out)).contains("1 of 1 leases were not acked"));
    let answer: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(answer["expired"][0], first.as_str());

    // A retry comes back as the next attempt.
    let leases = json_lines(&url, &["groups", "fetch", "billing", "--wait-ms", "2000"]);
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert_eq!(leases[0]["event"]["type"], "order.paid");
    let (second, _) = lease_of(&leases, "order-1");
    one_json(&url, &["groups", "nack", "billing", &second, "--delay-ms", "0"]);
    let leases = json_lines(&url, &["groups", "fetch", "billing", "--wait-ms", "2000"]);
    assert_eq!(leases[0]["attempt"], 2);
    one_json(&url, &["groups", "ack", "billing", leases[0]["lease"].as_str().unwrap()]);

    let dead = json_lines(&url, &["dlq", "list", "billing"]);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["event"]["id"], parked_id.as_str());
    assert_eq!(dead[0]["reason"], "bad total");
    assert_eq!(one_json(&url, &["groups", "show", "billing"])["parked"], 1);

    // Replayed: delivered again with fresh attempts, then parked again and discarded.
    assert_eq!(one_json(&url, &["dlq", "replay", "billing", &parked_id])["replayed"], 1);
    let leases = json_lines(&url, &["groups", "fetch", "billing", "--wait-ms", "2000"]);
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert_eq!(leases[0]["event"]["id"], parked_id.as_str());
    assert_eq!(leases[0]["attempt"], 1);
    one_json(&url, &["groups", "nack", "billing", leases[0]["lease"].as_str().unwrap(), "--park"]);
    assert_eq!(json_lines(&url, &["dlq", "list", "billing", "--limit", "5"]).len(), 1);
    let discarded = one_json(&url, &["dlq", "discard", "billing", &parked_id]);
    assert_eq!(discarded["discarded"], true);
    assert!(json_lines(&url, &["dlq", "list", "billing"]).is_empty());
    let shown = one_json(&url, &["groups", "show", "billing"]);
    assert_eq!((shown["lag"].as_u64(), shown["parked"].as_u64()), (Some(0), Some(0)), "{shown}");
    let consumers: Vec<&str> =
        shown["consumers"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(consumers, ["anonymous", "cli-test"], "in name order");

    assert_eq!(one_json(&url, &["groups", "delete", "billing"])["deleted"], true);
    assert!(json_lines(&url, &["groups", "list"]).is_empty());

    // Unknown groups and dead letters: exit 1 and the server's problem on one line.
    for args in [
        &["groups", "show", "billing"][..],
        &["groups", "fetch", "nope"],
        &["dlq", "list", "nope"],
        &["dlq", "discard", "nope", "0193a5e0-0000-7000-8000-000000000001"],
    ] {
        let out = run(bifrost().args(args).args(["--server", &url]), None);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let line = one_error_line(&stderr(&out));
        assert!(line.contains("not found"), "{args:?}: {line}");
        assert!(stdout(&out).is_empty());
    }
    // A bad name never reaches the server; a bad event id is a usage error.
    let out = run(bifrost().args(["groups", "show", "a b", "--server", &url]), None);
    assert_eq!(out.status.code(), Some(1));
    assert!(one_error_line(&stderr(&out)).contains("invalid group name"));
    let out = run(bifrost().args(["dlq", "discard", "g", "not-a-uuid", "--server", &url]), None);
    assert_eq!(out.status.code(), Some(2));
    one_error_line(&stderr(&out));
}
