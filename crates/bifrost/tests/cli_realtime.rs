//! `bifrost realtime …` and `bifrost ws` end to end: arguments refused before anything is
//! sent, and the commands against a spawned server.
//!
//! The tests named `server_*` need the server's `/v1/realtime` routes and `room:` channels.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns: a failure is a failed test

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{Server, bifrost, run, stderr, stdout};
use hmac::{Hmac, KeyInit as _, Mac as _};
use serde_json::{Value, json};
use sha2::Sha256;

/// Nothing listens on port 9 (discard): a command that needs the server fails to connect.
const NO_SERVER: &str = "http://127.0.0.1:9";

fn one_error_line(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line on stderr, got {stderr:?}");
    assert!(lines[0].starts_with("error: "), "{stderr:?}");
    lines[0].to_owned()
}

fn realtime(server: &str, args: &[&str]) -> Output {
    run(bifrost().arg("realtime").args(args).args(["--server", server]), None)
}

/// Runs the command, expects `code` and one error line, and returns that line.
fn fails(server: &str, args: &[&str], code: i32) -> String {
    let out = realtime(server, args);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
    assert!(stdout(&out).is_empty(), "{args:?} printed {:?}", stdout(&out));
    one_error_line(&stderr(&out))
}

#[test]
fn malformed_arguments_are_usage_errors_on_one_line() {
    let publish = ["publish", "--type", "task.moved", "--data", "{}"];
    let cases: &[(&[&str], &str)] = &[
        (&publish, "--room"),
        (&["publish", "--room", "r", "--data", "{}"], "--type"),
        (&["publish", "--room", "r", "--type", "t"], "--data"),
        (&[&publish[..], &["--room", "r", "--priority", "urgent"]].concat(), "--priority"),
        (&[&publish[..], &["--room", "r", "--into-stream", "s"]].concat(), "--persistent"),
        (&["presence"], "<ROOM>"),
        (&["bridges", "put"], "<NAME>"),
        (&["bridges", "put", "b", "--enabled", "maybe"], "--enabled"),
        (&["bridges", "put", "b", "--priority", "urgent"], "--priority"),
        (&["bridges", "put", "b", "--transform", "[1]"], "not a JSON object"),
        (&["bridges", "put", "b", "--transform", "{oops"], "not valid JSON"),
        (&["bridges", "get"], "<NAME>"),
        (&["bridges", "frobnicate"], "frobnicate"),
        (&["frobnicate"], "frobnicate"),
    ];
    for (args, expected) in cases {
        let line = fails(NO_SERVER, args, 2);
        assert!(line.contains(expected), "{args:?}: {line}");
    }
}

#[test]
fn refusals_that_need_no_server_exit_1() {
    let line = fails(NO_SERVER, &["publish", "--room", "r", "--type", "t", "--data", "{oops"], 1);
    assert!(line.contains("not one JSON value"), "{line}");
    let line = fails("https://127.0.0.1:9", &["presence", "lobby"], 1);
    assert!(line.contains("http://"), "{line}");
}

#[test]
fn an_unreachable_server_is_one_line_and_a_failure() {
    for args in [
        &["publish", "--room", "r", "--type", "t", "--data", "1"][..],
        &["presence", "lobby"],
        &["bridges", "list"],
        &["bridges", "get", "b"],
        &["bridges", "put", "b", "--type", "task.#", "--room", "p:{data.p}"],
        &["bridges", "delete", "b"],
    ] {
        let line = fails(NO_SERVER, args, 1);
        assert!(line.contains("cannot connect to the server at http://127.0.0.1:9"), "{args:?}: {line}");
    }
}

#[test]
fn every_subcommand_has_help() {
    for sub in
        [&["realtime"][..], &["realtime", "publish"], &["realtime", "presence"], &["realtime", "bridges"]]
    {
        let out = run(bifrost().args(sub).arg("--help"), None);
        assert!(out.status.success(), "{sub:?}: {}", stderr(&out));
        assert!(stdout(&out).contains("--server"), "{sub:?}");
    }
    let out = run(bifrost().args(["realtime", "publish", "--help"]), None);
    let help = stdout(&out);
    for flag in [
        "--room",
        "--user",
        "--stream",
        "--type",
        "--data",
        "--exclude-user",
        "--priority",
        "--persistent",
        "--into-stream",
        "--source-user",
        "--workspace",
        "Examples:",
    ] {
        assert!(help.contains(flag), "{flag} missing from publish --help");
    }
    let out = run(bifrost().args(["realtime", "bridges", "put", "--help"]), None);
    let help = stdout(&out);
    for flag in [
        "--type",
        "--category",
        "--room",
        "--user",
        "--exclude-user",
        "--priority",
        "--enabled",
        "--transform",
    ] {
        assert!(help.contains(flag), "{flag} missing from bridges put --help");
    }
    let out = run(bifrost().args(["ws", "--help"]), None);
    let help = stdout(&out);
    for text in ["--token", "--since", "room:"] {
        assert!(help.contains(text), "{text} missing from ws --help");
    }
}

#[test]
fn ws_sends_its_token_as_a_bearer_header() {
    // A stand-in that reads the upgrade request and answers 401, as a server refusing the
    // token would.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = std::io::Read::read(&mut stream, &mut byte).unwrap();
            assert!(n > 0, "the request ended early");
            head.push(byte[0]);
        }
        let body =
            r#"{"type":"bifrost:unauthorized","title":"Unauthorized","status":401,"detail":"bad token"}"#;
        let answer = format!(
            "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        std::io::Write::write_all(&mut stream, answer.as_bytes()).unwrap();
        String::from_utf8(head).unwrap()
    });
    let url = format!("http://{addr}");
    let out = run(bifrost().args(["ws", "room:a", "--token", "t0k.en", "--server", &url]), None);
    let head = seen.join().unwrap().to_lowercase();
    assert!(head.starts_with("get /v1/ws "), "{head}");
    assert!(head.contains("\r\nauthorization: bearer t0k.en\r\n"), "{head}");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = one_error_line(&stderr(&out));
    assert!(line.contains("401"), "{line}");
}

// ---------------------------------------------------------------------------------------
// Against a server (these need the `/v1/realtime` routes).

/// Runs a command against `url`; stdout as JSON lines when it succeeds.
fn json_lines(url: &str, args: &[&str]) -> Vec<Value> {
    let out = realtime(url, args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    stdout(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn one_json(url: &str, args: &[&str]) -> Value {
    let mut lines = json_lines(url, args);
    assert_eq!(lines.len(), 1, "{args:?}: {lines:?}");
    lines.remove(0)
}

fn start_server(dir: &std::path::Path) -> Server {
    Server::start(dir, "127.0.0.1:0", &[])
}

/// `bifrost ws CHANNEL…` in the background, its stdout lines on a channel.
struct Ws {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Ws {
    fn open(url: &str, args: &[&str]) -> Ws {
        let mut child = bifrost()
            .arg("ws")
            .args(args)
            .args(["--server", url])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let pipe = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ws { child, lines }
    }

    /// The next frame whose `op` is `op`, skipping others (within 30 s).
    fn next(&self, op: &str) -> Value {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("no {op:?} frame within 30 s"));
            let frame: Value = serde_json::from_str(&line).unwrap();
            if frame["op"] == op {
                return frame;
            }
        }
    }
}

impl Drop for Ws {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn server_publishes_reach_subscribers_and_persistent_ones_are_stored() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path());
    let url = server.url();

    // A subscriber of the room, through `bifrost ws`.
    let ws = Ws::open(&url, &["room:project:101", "--user-id", "u-1"]);
    assert_eq!(ws.next("subscribed")["channel"], "room:project:101");

    // Ephemeral: 202 {"message_id"}, the subscriber gets it, nothing is stored.
    let published = one_json(
        &url,
        &["publish", "--room", "project:101", "--type", "task.moved", "--data", r#"{"task": 7}"#],
    );
    let message_id = published["message_id"].as_str().unwrap().to_owned();
    assert_eq!(published.as_object().unwrap().len(), 1, "{published}");
    let message = ws.next("message");
    assert_eq!(
        (&message["channel"], &message["message_id"], &message["type"], &message["data"]),
        (&json!("room:project:101"), &json!(message_id), &json!("task.moved"), &json!({"task": 7}))
    );

    // Persistent: 201 {"event_id", "stream", "position"}, readable with `bifrost read`.
    let stored = one_json(
        &url,
        &[
            "publish",
            "--room",
            "project:101",
            "--type",
            "task.done",
            "--data",
            r#"{"task": 8}"#,
            "--persistent",
            "--into-stream",
            "chat-101",
            "--priority",
            "high",
            "--source-user",
            "u-2",
        ],
    );
    assert_eq!(stored["stream"], "chat-101", "{stored}");
    assert!(stored["position"].as_u64().unwrap() >= 1, "{stored}");
    let read = run(bifrost().args(["read", "chat-101", "--server", &url]), None);
    assert!(read.status.success(), "{}", stderr(&read));
    let events: Vec<Value> = stdout(&read).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["id"], stored["event_id"]);
    assert_eq!(events[0]["position"], stored["position"]);
    assert_eq!((&events[0]["type"], &events[0]["data"]), (&json!("task.done"), &json!({"task": 8})));
    let event = ws.next("event");
    assert_eq!(event["event"]["id"], stored["event_id"], "{event}");

    // Without --into-stream, one room's persistent publishes go to `realtime-{room}`.
    let stored =
        one_json(&url, &["publish", "--room", "lobby", "--type", "note", "--data", "\"hi\"", "--persistent"]);
    assert_eq!(stored["stream"], "realtime-lobby", "{stored}");
    let read = run(bifrost().args(["read", "realtime-lobby", "--server", &url]), None);
    assert!(stdout(&read).contains(stored["event_id"].as_str().unwrap()), "{}", stdout(&read));

    // The server's refusal of a bad type: one line, exit 1.
    let line = fails(&url, &["publish", "--room", "lobby", "--type", "not a type!", "--data", "1"], 1);
    assert!(!line.is_empty());
}

#[test]
fn server_presence_of_a_room_lists_its_users() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path());
    let url = server.url();

    let empty = one_json(&url, &["presence", "project:empty"]);
    assert_eq!(empty, json!({"room": "project:empty", "users": [], "user_count": 0, "connection_count": 0}));

    let ws = Ws::open(&url, &["room:project:7", "--user-id", "u-9"]);
    ws.next("subscribed");
    let presence = one_json(&url, &["presence", "project:7"]);
    assert_eq!((presence["user_count"].as_u64(), presence["connection_count"].as_u64()), (Some(1), Some(1)));
    assert_eq!(presence["users"][0]["user_id"], "u-9", "{presence}");
}

#[test]
fn server_bridges_round_trip_put_get_list_delete() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path());
    let url = server.url();

    assert!(json_lines(&url, &["bridges", "list"]).is_empty());
    let put = one_json(
        &url,
        &[
            "bridges",
            "put",
            "tasks",
            "--type",
            "task.#",
            "--category",
            "task",
            "--room",
            "project:{data.project_id}",
            "--user",
            "{data.assignee}",
            "--exclude-user",
            "{metadata.user_id}",
            "--priority",
            "high",
        ],
    );
    assert_eq!(put["name"], "tasks");
    assert_eq!(put["types"], json!(["task.#"]));
    assert_eq!(put["category"], "task");
    assert_eq!(put["rooms"], json!(["project:{data.project_id}"]));
    assert_eq!(put["users"], json!(["{data.assignee}"]));
    assert_eq!(put["exclude_users"], json!(["{metadata.user_id}"]));
    assert_eq!((put["priority"].as_str(), put["enabled"].as_bool()), (Some("high"), Some(true)));
    assert_eq!(one_json(&url, &["bridges", "get", "tasks"]), put);

    // A put replaces: what is not given takes its default.
    let replaced = one_json(&url, &["bridges", "put", "tasks", "--room", "all", "--enabled", "false"]);
    assert_eq!(replaced["types"], json!(["#"]), "{replaced}");
    assert_eq!((replaced["category"].clone(), replaced["enabled"].as_bool()), (Value::Null, Some(false)));
    assert_eq!(replaced["priority"], "normal");

    one_json(&url, &["bridges", "put", "notes", "--type", "note.*", "--user", "{data.to}"]);
    let listed = json_lines(&url, &["bridges", "list"]);
    let mut names: Vec<&str> = listed.iter().map(|b| b["name"].as_str().unwrap()).collect();
    names.sort_unstable();
    assert_eq!(names, ["notes", "tasks"]);

    assert_eq!(one_json(&url, &["bridges", "delete", "tasks"]), json!({"name": "tasks", "deleted": true}));
    for args in [&["bridges", "get", "tasks"][..], &["bridges", "delete", "tasks"]] {
        let line = fails(&url, args, 1);
        assert!(line.contains("Bridge not found"), "{args:?}: {line}");
    }
    assert_eq!(json_lines(&url, &["bridges", "list"]).len(), 1);
}

/// An HS256 JWT of `claims`, signed with `secret`.
fn jwt(secret: &str, claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signed = format!("{header}.{payload}");
    let mut mac = <Hmac<Sha256>>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(signed.as_bytes());
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

#[test]
fn server_ws_authenticates_with_its_token() {
    const SECRET: &str = "a-test-secret-of-enough-length-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0", &["--jwt-secret", SECRET]);
    let url = server.url();

    let token = jwt(SECRET, &json!({"sub": "u-5", "channels": ["room:project:*"]}));
    let ws = Ws::open(&url, &["room:project:5", "--token", &token]);
    assert_eq!(ws.next("connected")["user_id"], "u-5");
    assert_eq!(ws.next("subscribed")["channel"], "room:project:5");
    // With a JWT key the HTTP routes need a credential too.
    let denied = realtime(&url, &["presence", "project:5"]);
    assert!(stderr(&denied).contains("Unauthorized"), "{}", stderr(&denied));
    let admin = jwt(SECRET, &json!({"sub": "ops", "scope": "admin", "exp": 4_000_000_000u64}));
    let presence = one_json(&url, &["presence", "project:5", "--key", &admin]);
    assert_eq!(presence["users"][0]["user_id"], "u-5", "{presence}");

    // A channel the token does not allow: the subscription is refused, one line, exit 1.
    let out = run(bifrost().args(["ws", "room:other", "--token", &token, "--server", &url]), None);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(one_error_line(&stderr(&out)).contains("cannot subscribe to room:other"));

    // A token signed with another secret is refused at the upgrade.
    let forged = jwt("another-secret-of-enough-length-0123456789", &json!({"sub": "u-5"}));
    let out = run(bifrost().args(["ws", "room:project:5", "--token", &forged, "--server", &url]), None);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(one_error_line(&stderr(&out)).contains("401"), "{}", stderr(&out));
}
