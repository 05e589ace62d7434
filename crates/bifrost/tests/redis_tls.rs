//! The Redis store over TLS (`rediss://`): `bifrost serve` against a Redis server of the
//! test's own that speaks only TLS, with Debian's self-signed "snakeoil" certificate
//! (issued to `localhost`). Trusted through `SSL_CERT_FILE`, the store opens and keeps
//! events; with the platform's roots, which do not hold it, the start fails with one line.
//! Skipped where the certificate or a TLS-capable `redis-server` is missing.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bifrost_core::testkit::service_unavailable;
use common::{Server, bifrost, call, run, stderr};
use serde_json::json;

const CERT: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";
const KEY: &str = "/etc/ssl/private/ssl-cert-snakeoil.key";

/// A TLS-only Redis on a free port, stopped when dropped.
struct TlsRedis {
    child: Child,
    port: u16,
}

impl TlsRedis {
    fn start() -> Option<Self> {
        if !Path::new(CERT).exists() || std::fs::read(KEY).is_err() {
            eprintln!("skipped: no readable snakeoil certificate and key ({CERT}, {KEY})");
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let spawned = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--tls-cert-file", CERT, "--tls-key-file", KEY, "--tls-ca-cert-file", CERT])
            .args(["--tls-auth-clients", "no", "--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => return service_unavailable("redis-server", e),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
                let _ = child.kill();
                return service_unavailable("redis-server with TLS", "it did not start listening");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Self { child, port })
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_redis_store_over_tls_keeps_events_and_refuses_an_untrusted_certificate() {
    let Some(redis) = TlsRedis::start() else { return };
    let url = format!("rediss://localhost:{}", redis.port);
    let dir = tempfile::tempdir().unwrap();

    let mut cmd = bifrost();
    cmd.env("SSL_CERT_FILE", CERT);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--store", &url, "--redis-prefix", "tls_test"]);
    cmd.arg("--data-dir").arg(dir.path());
    let server = Server::spawn(cmd);
    let events = json!({"events": [{"type": "order.placed", "data": {"total": 42}}]});
    let (status, body) = call(&server, reqwest::Method::POST, "/v1/streams/order-1/events", Some(events));
    assert_eq!(status, 201, "{body}");
    let (status, body) = call(&server, reqwest::Method::GET, "/v1/streams/order-1/events", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["events"][0]["data"]["total"], 42, "{body}");
    let (status, _) = server.terminate();
    assert_eq!(status.code(), Some(0));

    // The platform's roots do not hold the snakeoil certificate: no connection, one line.
    let mut cmd = bifrost();
    cmd.env("SSL_CERT_FILE", "/nonexistent-bundle.pem");
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--store", &url, "--redis-prefix", "tls_test"]);
    cmd.arg("--data-dir").arg(dir.path());
    let out = run(&mut cmd, None);
    assert!(!out.status.success(), "{}", stderr(&out));
    let text = stderr(&out);
    assert!(text.contains("cannot open the Redis store rediss://localhost"), "{text}");
}
