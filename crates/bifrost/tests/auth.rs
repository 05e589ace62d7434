//! Auth end to end through the binary: the start line of each mode, bad settings (exit 2),
//! `bifrost keys` with `--key`, a key used by the client commands, revocation reaching
//! every node of one PostgreSQL database within 5 s.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use common::{Server, bifrost, eventually, pg, run, stderr, stdout};
use serde_json::Value;

const ADMIN: &str = "an-admin-key-for-the-binary-tests-0123456789";

fn cli(server: &Server, key: Option<&str>, args: &[&str]) -> std::process::Output {
    let mut cmd = bifrost();
    cmd.args(args).env("BIFROST_URL", server.url());
    if let Some(key) = key {
        cmd.env("BIFROST_KEY", key);
    }
    run(&mut cmd, None)
}

fn json_lines(out: &std::process::Output) -> Vec<Value> {
    stdout(out).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn the_start_line_says_whether_auth_is_on() {
    let dir = tempfile::tempdir().unwrap();
    let open = Server::start(dir.path(), "127.0.0.1:0", &[]);
    let (_, lines) = open.terminate();
    assert!(lines.iter().any(|l| l.contains("auth=off (open, single-user dev mode)")), "{lines:?}");

    let dir = tempfile::tempdir().unwrap();
    let on = Server::start(dir.path(), "127.0.0.1:0", &["--admin-key", ADMIN]);
    let (_, lines) = on.terminate();
    assert!(lines.iter().any(|l| l.contains("auth=on")), "{lines:?}");
    assert!(!lines.iter().any(|l| l.contains(ADMIN)), "the admin key is never logged: {lines:?}");
}

#[test]
fn bad_auth_and_tls_settings_exit_2_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let pem = dir.path().join("key.pem");
    std::fs::write(&pem, "not a key").unwrap();
    let tls = concat!(env!("CARGO_MANIFEST_DIR"), "/../bifrost-server/tests/fixtures/tls");
    let (cert, key, ca) = (format!("{tls}/server.pem"), format!("{tls}/server.key"), format!("{tls}/ca.pem"));
    let cases: [(&[&str], &str); 7] = [
        (&["--tls-cert", &cert], "tls.key"),
        (&["--tls-key", &key], "tls.cert"),
        (&["--tls-cert", &ca, "--tls-key", &key], "does not fit"),
        (&["--admin-key", "short"], "auth.admin_key"),
        (&["--jwt-secret", "s", "--jwt-jwks-file", "/nonexistent"], "exclusive"),
        (&["--jwt-public-key-file", pem.to_str().unwrap()], "auth.jwt.public_key_file"),
        (&["--jwt-jwks-file", "/nonexistent/jwks.json"], "auth.jwt.jwks_file"),
    ];
    for (args, named) in cases {
        let out =
            run(bifrost().args(["serve", "--listen", "127.0.0.1:0", "--data-dir", data]).args(args), None);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(named), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn with_tls_the_server_announces_https() {
    let dir = tempfile::tempdir().unwrap();
    let tls = concat!(env!("CARGO_MANIFEST_DIR"), "/../bifrost-server/tests/fixtures/tls");
    let mut cmd = bifrost();
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir", dir.path().to_str().unwrap()]).args([
        "--tls-cert",
        &format!("{tls}/server.pem"),
        "--tls-key",
        &format!("{tls}/server.key"),
    ]);
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let announced = lines.by_ref().map_while(Result::ok).find(|l| l.contains("listening on"));
    let _ = child.kill();
    let _ = child.wait();
    let announced = announced.unwrap();
    assert!(announced.contains("bifrost listening on https://127.0.0.1:"), "{announced}");
}

#[test]
fn keys_are_made_listed_used_and_revoked_with_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0", &["--admin-key", ADMIN]);

    let refused = cli(&server, None, &["keys", "list"]);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("Unauthorized"), "{}", stderr(&refused));

    let out = cli(
        &server,
        Some(ADMIN),
        &[
            "keys",
            "create",
            "--name",
            "writer",
            "--scope",
            "append",
            "--scope",
            "read",
            "--append-prefix",
            "order-",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let created = &json_lines(&out)[0];
    let secret = created["secret"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["restrict"]["append"]["prefixes"][0], "order-");

    let listed = json_lines(&cli(&server, Some(ADMIN), &["keys", "list"]));
    assert_eq!(listed.len(), 1);
    assert!(listed[0].get("secret").is_none(), "{}", listed[0]);

    let append = |key: &str, stream: &str| cli(&server, Some(key), &["append", stream, "order.placed", "{}"]);
    assert!(append(&secret, "order-1").status.success());
    let elsewhere = append(&secret, "invoice-1");
    assert!(!elsewhere.status.success());
    assert!(stderr(&elsewhere).contains("Forbidden"), "{}", stderr(&elsewhere));
    // The key reads but cannot manage keys.
    let read = cli(&server, Some(&secret), &["read", "order-1"]);
    assert!(read.status.success(), "{}", stderr(&read));
    assert!(!cli(&server, Some(&secret), &["keys", "list"]).status.success());

    let revoked = cli(&server, Some(ADMIN), &["keys", "revoke", &id]);
    assert!(revoked.status.success(), "{}", stderr(&revoked));
    let after = append(&secret, "order-1");
    assert!(stderr(&after).contains("Unauthorized"), "{}", stderr(&after));
    let lines = server.stderr_lines();
    assert!(!lines.iter().any(|l| l.contains(&secret)), "a key's secret is never logged");
}

#[test]
fn a_revoked_key_is_refused_by_every_node_of_the_database_within_5_s() {
    let Some(schema) = pg::Schema::fresh() else { return };
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes: Vec<Server> = dirs
        .iter()
        .map(|dir| {
            let mut args: Vec<String> = schema.serve_args().to_vec();
            args.extend(["--admin-key".into(), ADMIN.into()]);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Server::start(dir.path(), "127.0.0.1:0", &args)
        })
        .collect();
    let created =
        json_lines(&cli(&nodes[0], Some(ADMIN), &["keys", "create", "--name", "r", "--scope", "read"]));
    let secret = created[0]["secret"].as_str().unwrap().to_owned();
    let id = created[0]["id"].as_str().unwrap().to_owned();
    for node in &nodes {
        let out = cli(node, Some(&secret), &["read", "--all"]);
        assert!(out.status.success(), "a key made on one node works on all: {}", stderr(&out));
    }
    assert!(cli(&nodes[1], Some(ADMIN), &["keys", "revoke", &id]).status.success());
    for node in &nodes {
        eventually("the revoked key is refused", Duration::from_secs(5), || {
            stderr(&cli(node, Some(&secret), &["read", "--all"])).contains("Unauthorized")
        });
    }
}
