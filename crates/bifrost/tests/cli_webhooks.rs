//! `bifrost webhooks …` end to end: arguments refused before anything is sent, and the
//! commands against a spawned server.
//!
//! The tests named `server_*` need the server's `/v1/webhooks` routes.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns: a failure is a failed test

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Server, bifrost, run, stderr, stdout};
use serde_json::{Value, json};

/// Nothing listens on port 9 (discard): a command that needs the server fails to connect.
const NO_SERVER: &str = "http://127.0.0.1:9";

fn one_error_line(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line on stderr, got {stderr:?}");
    assert!(lines[0].starts_with("error: "), "{stderr:?}");
    lines[0].to_owned()
}

fn webhooks(server: &str, args: &[&str]) -> Output {
    run(bifrost().arg("webhooks").args(args).args(["--server", server]), None)
}

/// Runs the command, expects `code` and one error line, and returns that line.
fn fails(server: &str, args: &[&str], code: i32) -> String {
    let out = webhooks(server, args);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
    assert!(stdout(&out).is_empty(), "{args:?} printed {:?}", stdout(&out));
    one_error_line(&stderr(&out))
}

#[test]
fn malformed_flags_are_usage_errors_on_one_line() {
    let url = ["create", "--url", "https://example.com/hook"];
    let cases: &[(&[&str], &str)] = &[
        (&["--header", "Authorization Bearer x"], "no colon"),
        (&["--header", ": x"], "no header name"),
        (&["--header", "Bad Name: x"], "not a valid header name"),
        (&["--retry-schedule-ms", "1000,soon"], "not a number of milliseconds"),
        (&["--retry-schedule-ms", "1000;5000"], "not a number of milliseconds"),
        (&["--transform", "{\"type\": "], "not valid JSON"),
        (&["--transform", "\"order\""], "not a JSON object"),
        (&["--content-mode", "xml"], "--content-mode"),
        (&["--start", "soon"], "--start"),
        (&["--rate-limit", "fast"], "--rate-limit"),
    ];
    for (extra, expected) in cases {
        let args: Vec<&str> = url.iter().chain(extra.iter()).copied().collect();
        let line = fails(NO_SERVER, &args, 2);
        assert!(line.contains(expected), "{args:?}: {line}");
    }
    let too_long = vec!["1"; 21].join(",");
    assert!(
        fails(NO_SERVER, &[&url[..], &["--retry-schedule-ms", &too_long]].concat(), 2).contains("at most 20")
    );
}

#[test]
fn other_subcommands_check_their_arguments_before_sending() {
    let cases: &[(&[&str], &str)] = &[
        (&["create"], "--url"),
        (&["create", "--url", "example.com/hook"], "not an absolute URL"),
        (&["create", "--url", "ftp://example.com/hook"], "http://"),
        (&["update", "wh_1", "--enable", "--disable"], "--disable"),
        (&["update", "wh_1", "--rate-limit", "2", "--no-rate-limit"], "--no-rate-limit"),
        (&["update", "wh_1", "--transform", "{}", "--no-transform"], "--no-transform"),
        (&["update", "wh_1", "--category", "order", "--no-category"], "--no-category"),
        (&["update", "wh_1", "--secret", "whsec_x"], "--secret"),
        (&["update", "wh_1", "--start", "end"], "--start"),
        (&["update", "wh_1", "--transform", "[]"], "not a JSON object"),
        (&["get"], "<ID>"),
        (&["messages", "wh_1", "--status", "lost"], "--status"),
        (&["messages", "wh_1", "--event", "0193a5e0-0000-7000-8000-000000000001", "--limit", "2"], "--limit"),
        (&["attempts", "wh_1", "--status", "pending"], "--status"),
        (&["attempts", "wh_1", "--event", "e-1"], "--event"),
        (&["resend", "wh_1", "not-an-event-id"], "EVENT_ID"),
        (&["recover", "wh_1"], "--since"),
        (&["recover", "wh_1", "--since", "yesterday"], "RFC 3339"),
        (&["recover", "wh_1", "--since", "2026-11-22T00:00:00Z", "--until", "soon"], "RFC 3339"),
        (&["test", "wh_1", "--data", "{oops"], "not valid JSON"),
        (&["rotate-secret", "wh_1", "--grace-s", "ten"], "--grace-s"),
        (&["frobnicate"], "frobnicate"),
    ];
    for (args, expected) in cases {
        let line = fails(NO_SERVER, args, 2);
        assert!(line.contains(expected), "{args:?}: {line}");
    }
}

#[test]
fn refusals_that_need_no_server_exit_1() {
    let line = fails(NO_SERVER, &["update", "wh_1"], 1);
    assert!(line.contains("nothing to change"), "{line}");
    let line = fails(
        NO_SERVER,
        &["create", "--url", "https://example.com/h", "--header", "X-Team: a", "--header", "x-team: b"],
        1,
    );
    assert!(line.contains("given twice"), "{line}");
    let line = fails(NO_SERVER, &["update", "wh_1", "--header", "X-A: 1", "--remove-header", "x-a"], 1);
    assert!(line.contains("--remove-header"), "{line}");
    let line = fails("https://127.0.0.1:9", &["list"], 1);
    assert!(line.contains("http://"), "{line}");
}

#[test]
fn an_unreachable_server_is_one_line_and_a_failure() {
    for args in [
        &["list"][..],
        &["get", "wh_1"],
        &["create", "--url", "https://example.com/hook", "--type", "order.#"],
        &["update", "wh_1", "--disable"],
        &["delete", "wh_1"],
        &["rotate-secret", "wh_1"],
        &["messages", "wh_1"],
        &["attempts", "wh_1"],
        &["resend", "wh_1", "0193a5e0-0000-7000-8000-000000000001"],
        &["recover", "wh_1", "--since", "2026-11-22T00:00:00Z"],
        &["test", "wh_1"],
    ] {
        let line = fails(NO_SERVER, args, 1);
        assert!(line.contains("cannot connect to the server at http://127.0.0.1:9"), "{args:?}: {line}");
    }
}

#[test]
fn every_subcommand_has_help() {
    let out = run(bifrost().args(["webhooks", "--help"]), None);
    assert!(out.status.success());
    let help = stdout(&out);
    for sub in [
        "list",
        "get",
        "create",
        "update",
        "delete",
        "rotate-secret",
        "messages",
        "attempts",
        "resend",
        "recover",
        "test",
    ] {
        assert!(help.contains(sub), "{sub} missing from {help}");
        let out = run(bifrost().args(["webhooks", sub, "--help"]), None);
        assert!(out.status.success(), "{sub}: {}", stderr(&out));
        assert!(stdout(&out).contains("--server"), "{sub}");
    }
    let out = run(bifrost().args(["webhooks", "create", "--help"]), None);
    let help = stdout(&out);
    for flag in [
        "--url",
        "--type",
        "--category",
        "--routing-key",
        "--description",
        "--header",
        "--disabled",
        "--secret",
        "--rate-limit",
        "--ordered",
        "--timeout-ms",
        "--retry-schedule-ms",
        "--disable-after-s",
        "--content-mode",
        "--transform",
        "--start",
        "Examples:",
    ] {
        assert!(help.contains(flag), "{flag} missing from create --help");
    }
    let out = run(bifrost().args(["webhooks", "update", "--help"]), None);
    let help = stdout(&out);
    for flag in
        ["--enable", "--disable", "--no-rate-limit", "--no-transform", "--no-category", "--remove-header"]
    {
        assert!(help.contains(flag), "{flag} missing from update --help");
    }
}

// ---------------------------------------------------------------------------------------
// Against a server (these need the `/v1/webhooks` routes).

/// Runs a command against `url`; stdout as JSON lines when it succeeds.
fn json_lines(url: &str, args: &[&str]) -> Vec<Value> {
    let out = webhooks(url, args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    stdout(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn one_json(url: &str, args: &[&str]) -> Value {
    let mut lines = json_lines(url, args);
    assert_eq!(lines.len(), 1, "{args:?}: {lines:?}");
    lines.remove(0)
}

fn start_server(dir: &std::path::Path) -> Server {
    Server::start(dir, "127.0.0.1:0", &["--webhook-allow-cidr", "127.0.0.0/8"])
}

#[test]
fn server_endpoints_round_trip_create_get_list_update_rotate_delete() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path());
    let url = server.url();

    let created = one_json(
        &url,
        &[
            "create",
            "--url",
            "http://127.0.0.1:9/hooks/orders",
            "--type",
            "order.#",
            "--category",
            "order",
            "--description",
            "orders to the ERP",
            "--header",
            "Authorization: Bearer t0k:en",
            "--rate-limit",
            "5",
            "--ordered",
            "--timeout-ms",
            "2000",
            "--retry-schedule-ms",
            "1000,5000",
            "--disable-after-s",
            "600",
            "--content-mode",
            "cloudevents",
            "--transform",
            r#"{"routing_key": "{category}.{type}"}"#,
            "--start",
            "beginning",
        ],
    );
    let id = created["id"].as_str().unwrap().to_owned();
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{created}");
    assert_eq!(created["url"], "http://127.0.0.1:9/hooks/orders");
    assert_eq!(created["filter"], json!({"types": ["order.#"], "category": "order", "routing_keys": ["#"]}));
    assert_eq!(created["description"], "orders to the ERP");
    assert_eq!(created["headers"], json!({"Authorization": "Bearer t0k:en"}));
    assert_eq!(created["enabled"], true);
    assert_eq!(created["rate_limit_per_s"], 5);
    assert_eq!(created["ordered"], true);
    assert_eq!(created["timeout_ms"], 2000);
    assert_eq!(created["retry_schedule_ms"], json!([1000, 5000]));
    assert_eq!(created["disable_after_s"], 600);
    assert_eq!(created["content_mode"], "cloudevents");
    assert_eq!(created["transform"], json!({"routing_key": "{category}.{type}"}));
    assert_eq!(created["start"], "beginning");

    // `get` shows the same endpoint, never its secret.
    let shown = one_json(&url, &["get", &id]);
    assert!(shown.get("secret").is_none(), "{shown}");
    let mut without_secret = created.clone();
    without_secret.as_object_mut().unwrap().remove("secret");
    assert_eq!(shown, without_secret);

    // A second endpoint with the defaults; the list follows pages, and --limit cuts it short
    // with the cursor on stderr.
    let second = one_json(&url, &["create", "--url", "http://127.0.0.1:9/b", "--disabled", "--start", "end"]);
    let second_id = second["id"].as_str().unwrap().to_owned();
    assert_eq!(second["enabled"], false);
    assert_eq!(second["disabled_reason"], "manual");
    assert_eq!(
        second["retry_schedule_ms"],
        json!([5000, 300000, 1800000, 7200000, 18000000, 36000000, 36000000])
    );
    assert_eq!(
        (second["timeout_ms"].as_u64(), second["content_mode"].as_str()),
        (Some(15000), Some("bifrost"))
    );
    let listed = json_lines(&url, &["list"]);
    let ids: Vec<&str> = listed.iter().map(|w| w["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [id.as_str(), second_id.as_str()], "creation order");
    assert!(listed.iter().all(|w| w.get("secret").is_none()));
    let out = webhooks(&url, &["list", "--limit", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let page: Vec<Value> = stdout(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(page.len(), 1);
    let hint = stderr(&out);
    let cursor =
        hint.trim().strip_prefix("more: continue with --after ").unwrap_or_else(|| panic!("{hint:?}"));
    let rest = json_lines(&url, &["list", "--after", cursor]);
    assert_eq!(rest.iter().map(|w| w["id"].as_str().unwrap()).collect::<Vec<_>>(), [second_id.as_str()]);

    // Update: only what is given changes; null resets.
    let updated = one_json(
        &url,
        &[
            "update",
            &id,
            "--url",
            "http://127.0.0.1:9/hooks/v2",
            "--no-category",
            "--no-rate-limit",
            "--no-transform",
            "--unordered",
            "--header",
            "X-Team: billing",
            "--remove-header",
            "Authorization",
            "--retry-schedule-ms",
            "",
            "--disable",
        ],
    );
    assert_eq!(updated["id"], id.as_str());
    assert_eq!(updated["url"], "http://127.0.0.1:9/hooks/v2");
    assert_eq!(updated["filter"], json!({"types": ["order.#"], "category": null, "routing_keys": ["#"]}));
    assert_eq!(updated["headers"], json!({"X-Team": "billing"}));
    assert_eq!(updated["rate_limit_per_s"], Value::Null);
    assert_eq!(updated["transform"], Value::Null);
    assert_eq!(updated["ordered"], false);
    assert_eq!(updated["retry_schedule_ms"], json!([]));
    assert_eq!(
        (updated["enabled"].as_bool(), updated["disabled_reason"].as_str()),
        (Some(false), Some("manual"))
    );
    assert_eq!(updated["description"], "orders to the ERP", "untouched");
    assert_eq!(updated["timeout_ms"], 2000, "untouched");
    assert_eq!(one_json(&url, &["get", &id]), updated);
    let enabled = one_json(&url, &["update", &id, "--enable"]);
    assert_eq!((enabled["enabled"].as_bool(), &enabled["disabled_reason"]), (Some(true), &Value::Null));

    // Rotation: a new secret, the old one valid for the grace period.
    let rotated = one_json(&url, &["rotate-secret", &id]);
    let new_secret = rotated["secret"].as_str().unwrap();
    assert!(new_secret.starts_with("whsec_") && new_secret != secret, "{rotated}");
    assert!(rotated["previous_valid_until"].is_string(), "{rotated}");
    let chosen = format!("whsec_{}", "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"); // 24 bytes
    let rotated = one_json(&url, &["rotate-secret", &id, "--secret", &chosen, "--grace-s", "0"]);
    assert_eq!(rotated["secret"], chosen.as_str());
    assert_eq!(rotated["previous_valid_until"], Value::Null);

    // The server's refusals: one line, exit 1.
    let line = fails(&url, &["create", "--url", "http://10.1.2.3/hook"], 1);
    assert!(line.contains("Webhook URL forbidden"), "{line}");
    fails(&url, &["update", &id, "--timeout-ms", "999999"], 1);
    fails(&url, &["create", "--url", "http://127.0.0.1:9/x", "--header", "Webhook-Id: mine"], 1);

    // Delete: gone for every route.
    assert_eq!(one_json(&url, &["delete", &id]), json!({"id": id, "deleted": true}));
    for args in [&["get", &id][..], &["delete", &id], &["update", &id, "--enable"], &["messages", &id]] {
        let line = fails(&url, args, 1);
        assert!(line.contains("Webhook endpoint not found"), "{args:?}: {line}");
    }
    let listed = json_lines(&url, &["list"]);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], second_id.as_str());
}

/// A receiver on loopback that answers every request with `status`, counting them.
fn receiver(status: u16) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut request = Vec::new();
            let mut chunk = [0u8; 8192];
            // The head, then the body by its length.
            let complete = loop {
                let Ok(n) = stream.read(&mut chunk) else { break false };
                if n == 0 {
                    break false;
                }
                request.extend_from_slice(&chunk[..n]);
                let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
                let head = String::from_utf8_lossy(&request[..end]).to_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if request.len() >= end + 4 + length {
                    break true;
                }
            };
            if complete {
                seen.fetch_add(1, Ordering::SeqCst);
            }
            let _ = write!(stream, "HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    (format!("http://{addr}/hook"), count)
}

/// Polls `check` until it holds or 30 s pass.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "{what} did not happen within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn server_messages_attempts_resend_recover_and_test() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path());
    let url = server.url();
    let (hook, received) = receiver(200);

    let appended = run(
        bifrost().args(["append", "order-1", "order.placed", r#"{"total": 42}"#, "--server", &url]),
        None,
    );
    assert!(appended.status.success(), "{}", stderr(&appended));
    let event_id = {
        let read = run(bifrost().args(["read", "order-1", "--server", &url]), None);
        let event: Value = serde_json::from_str(stdout(&read).lines().next().unwrap()).unwrap();
        event["id"].as_str().unwrap().to_owned()
    };

    let created = one_json(&url, &["create", "--url", &hook, "--type", "order.#", "--start", "beginning"]);
    let id = created["id"].as_str().unwrap().to_owned();

    // The event becomes a message and is delivered.
    eventually("the delivery", || {
        let message = one_json(&url, &["messages", &id, "--event", &event_id]);
        message["status"] == "succeeded"
    });
    assert!(received.load(Ordering::SeqCst) >= 1);
    let message = one_json(&url, &["messages", &id, "--event", &event_id]);
    assert_eq!(message["event_id"], event_id.as_str());
    assert_eq!(message["payload"]["data"], json!({"total": 42}), "{message}");
    let listed = json_lines(&url, &["messages", &id, "--status", "succeeded"]);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(json_lines(&url, &["messages", &id, "--status", "failed"]).is_empty());

    let attempts = json_lines(&url, &["attempts", &id, "--event", &event_id]);
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(
        (
            attempts[0]["status"].as_str(),
            attempts[0]["trigger"].as_str(),
            attempts[0]["response_status"].as_u64()
        ),
        (Some("succeeded"), Some("scheduled"), Some(200))
    );

    // Resend: delivered again, a second attempt in the log.
    let accepted = one_json(&url, &["resend", &id, &event_id]);
    assert_eq!(accepted, json!({"id": id, "event_id": event_id, "accepted": true}));
    eventually("the resend", || json_lines(&url, &["attempts", &id, "--status", "succeeded"]).len() == 2);
    let newest = &json_lines(&url, &["attempts", &id, "--limit", "1"])[0];
    assert_eq!(newest["trigger"], "resend");

    // Recover: nothing failed.
    let recovering = one_json(&url, &["recover", &id, "--since", "2020-01-01T00:00:00Z"]);
    assert_eq!(recovering, json!({"recovering": 0}));

    // A test send: one attempt, printed.
    let tested = one_json(&url, &["test", &id, "--data", r#"{"ping": true}"#]);
    assert_eq!(
        (tested["attempt"]["status"].as_str(), tested["attempt"]["trigger"].as_str()),
        (Some("succeeded"), Some("test"))
    );

    // Unknown event: the server's problem on one line.
    let line = fails(&url, &["messages", &id, "--event", "0193a5e0-0000-7000-8000-000000000001"], 1);
    assert!(line.contains("Webhook message not found"), "{line}");

    // Disabled: resend and recover are refused.
    one_json(&url, &["update", &id, "--disable"]);
    let line = fails(&url, &["resend", &id, &event_id], 1);
    assert!(line.contains("Webhook endpoint disabled"), "{line}");
    let line = fails(&url, &["recover", &id, "--since", "2020-01-01T00:00:00Z"], 1);
    assert!(line.contains("Webhook endpoint disabled"), "{line}");
}

#[test]
fn server_a_failed_test_send_prints_the_attempt_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path());
    let url = server.url();
    let (hook, _) = receiver(500);
    let created = one_json(&url, &["create", "--url", &hook]);
    let id = created["id"].as_str().unwrap();
    let out = webhooks(&url, &["test", id]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let printed: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(
        (printed["attempt"]["status"].as_str(), printed["attempt"]["response_status"].as_u64()),
        (Some("failed"), Some(500))
    );
    let line = one_error_line(&stderr(&out));
    assert!(line.contains("the test send failed"), "{line}");
}
