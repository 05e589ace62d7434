//! Spawning `bifrost` for end-to-end tests: a server on an ephemeral port, its stderr
//! captured, and helpers to stop it the ways a user or a crash would.

#![allow(dead_code, unreachable_pub)] // each test binary uses a different part
#![allow(clippy::unwrap_used)] // test support: a failure here is a failed test

pub mod consumers;
pub mod pg;
pub mod receiver;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_bifrost");

/// A command for the binary with a clean `BIFROST_*` environment.
pub fn bifrost() -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars() {
        if key.starts_with("BIFROST_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Runs the binary to completion with a hang guard.
pub fn run(cmd: &mut Command, stdin: Option<&str>) -> Output {
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn bifrost");
    if let Some(input) = stdin {
        use std::io::Write;
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input.as_bytes()).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("bifrost did not finish within 60 s: {cmd:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub struct Server {
    child: Child,
    pub addr: String,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts `bifrost serve` on an ephemeral port (or `listen`) over `data_dir` and waits
    /// for its "listening on" line and for `/healthz`.
    pub fn start(data_dir: &Path, listen: &str, extra: &[&str]) -> Server {
        let mut cmd = bifrost();
        cmd.arg("serve").arg("--listen").arg(listen).arg("--data-dir").arg(data_dir).args(extra);
        Self::spawn(cmd)
    }

    pub fn spawn(mut cmd: Command) -> Server {
        let mut child =
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let pipe = child.stderr.take().unwrap();
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if let Some((_, addr)) = line.split_once("listening on http://") {
                    let _ = addr_tx.send(addr.trim().to_owned());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = match addr_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the server did not report its address; stderr: {:?}", lines.lock().unwrap());
            }
        };
        let server = Server { child, addr, stderr: lines };
        server.wait_healthy();
        server
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if http_get_status(&self.addr, "/healthz") == Some(200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("/healthz did not answer within 30 s");
    }

    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// SIGKILL: no chance to flush or close anything.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then the exit status (with a hang guard).
    pub fn terminate(mut self) -> (ExitStatus, Vec<String>) {
        let status = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status().unwrap();
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the stderr reader drain.
                std::thread::sleep(Duration::from_millis(100));
                return (status, self.stderr_lines());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the server did not exit within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal blocking GET, so that readiness checks need no runtime.
pub fn http_get_status(addr: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

/// `(status, JSON body)` of one request to `server`, from a test's own thread.
pub fn call(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    pg::block_on(async {
        let mut request = reqwest::Client::new().request(method, format!("{}{path}", server.url()));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(serde_json::Value::Null))
    })
}

/// Appends `n` `order.placed` events to `stream` through `server`; their ids, in order.
pub fn append_orders(server: &Server, stream: &str, n: usize) -> Vec<String> {
    let events: Vec<serde_json::Value> =
        (0..n).map(|i| serde_json::json!({"type": "order.placed", "data": {"i": i}})).collect();
    let path = format!("/v1/streams/{stream}/events");
    let (status, body) =
        call(server, reqwest::Method::POST, &path, Some(serde_json::json!({"events": events})));
    assert_eq!(status, 201, "{body}");
    let (first, last) = (body["first_position"].as_u64().unwrap(), body["last_position"].as_u64().unwrap());
    let path = format!("/v1/events?from_position={}&limit=1000", first - 1);
    let (_, read) = call(server, reqwest::Method::GET, &path, None);
    read["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["position"].as_u64().unwrap() <= last)
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Polls `check` every 100 ms until it holds; fails the test after `limit`.
pub fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "{what} did not happen in time");
        std::thread::sleep(Duration::from_millis(100));
    }
}
