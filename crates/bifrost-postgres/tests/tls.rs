//! TLS to PostgreSQL: each `sslmode` negotiates and verifies what libpq would. Needs a
//! server with `ssl = on` (Debian's default, with its self-signed "snakeoil" certificate
//! issued to `localhost`, which the test URL's 127.0.0.1 does not match).

mod support;

use std::path::Path;

use bifrost_core::testkit::{event, service_unavailable, stream};
use bifrost_core::{Direction, Error, EventStore, ExpectedVersion, StreamAppend};
use bifrost_postgres::{PostgresStore, drop_schema};
use support::{SchemaGuard, fresh_schema, options, url};

const SNAKEOIL: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";
/// Debian's bundle of public CAs: it does not hold the snakeoil certificate.
const PUBLIC_CAS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The test URL with extra query parameters.
fn url_with(params: &str) -> String {
    let base = url();
    let separator = if base.contains('?') { '&' } else { '?' };
    format!("{base}{separator}{params}")
}

/// `Some(())` when the server is reachable and serves TLS; otherwise says why and skips.
/// A server with `ssl = off` is skipped even when services are required: TLS is a server
/// setting, not a missing service.
async fn tls_server() -> Option<()> {
    let plain = url_with("sslmode=disable");
    let (client, connection) = match tokio_postgres::connect(&plain, tokio_postgres::NoTls).await {
        Ok(pair) => pair,
        Err(e) => return service_unavailable("PostgreSQL", e),
    };
    let driver = tokio::spawn(connection);
    let ssl = client.query_one("SHOW ssl", &[]).await.ok().and_then(|row| row.try_get::<_, String>(0).ok());
    drop(client);
    let _ = driver.await;
    if ssl.as_deref() != Some("on") {
        eprintln!("skipped: the PostgreSQL server does not serve TLS (SHOW ssl = {ssl:?})");
        return None;
    }
    Some(())
}

fn snakeoil() -> Option<()> {
    if Path::new(SNAKEOIL).exists() {
        Some(())
    } else {
        eprintln!("skipped: {SNAKEOIL} (the server's self-signed certificate) is not on this machine");
        None
    }
}

/// Connects a store on a fresh schema through `url`; the guard drops the schema.
async fn connect(url: &str) -> (Result<PostgresStore, Error>, SchemaGuard) {
    let schema = fresh_schema();
    let guard = SchemaGuard { schema: schema.clone() };
    (PostgresStore::connect(url, options(&schema)).await, guard)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_encrypts_appends_and_reads() -> Result<(), Error> {
    let Some(()) = tls_server().await else { return Ok(()) };
    let (store, _guard) = connect(&url_with("sslmode=require")).await;
    let store = store?;
    assert!(store.connection_encrypted().await?, "sslmode=require must give an encrypted connection");
    let name = stream("tls-1");
    store
        .append_many(vec![StreamAppend::new(
            name.clone(),
            ExpectedVersion::NoStream,
            vec![event("Sealed", r#"{"a":1}"#)],
        )])
        .await?;
    let slice = store.read_stream(&name, 1, Direction::Forward, 10).await?;
    assert_eq!(slice.events.len(), 1);
    assert_eq!(&slice.events[0].data[..], br#"{"a":1}"#);
    store.close().await?;

    // The check itself tells the two apart.
    let (plain, _plain_guard) = connect(&url_with("sslmode=disable")).await;
    let plain = plain?;
    assert!(!plain.connection_encrypted().await?);
    plain.close().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_ca_accepts_the_root_and_verify_full_checks_the_name() -> Result<(), Error> {
    let Some(()) = tls_server().await else { return Ok(()) };
    let Some(()) = snakeoil() else { return Ok(()) };
    let (store, _guard) = connect(&url_with(&format!("sslmode=verify-ca&sslrootcert={SNAKEOIL}"))).await;
    let store = store?;
    assert!(store.connection_encrypted().await?);
    store.close().await?;

    let (store, _guard) = connect(&url_with(&format!("sslmode=verify-full&sslrootcert={SNAKEOIL}"))).await;
    match store {
        Err(Error::Unavailable(message)) => {
            eprintln!("refused as expected: {message}");
            assert!(message.contains("not valid for name"), "unclear reason: {message}");
        }
        Err(other) => panic!("expected Unavailable, got {other:?}"),
        Ok(_) => panic!("verify-full accepted a certificate issued to another name"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_refuses_a_self_signed_certificate_it_does_not_trust() -> Result<(), Error> {
    let Some(()) = tls_server().await else { return Ok(()) };
    if Path::new(PUBLIC_CAS).exists() {
        let (store, _guard) =
            connect(&url_with(&format!("sslmode=verify-ca&sslrootcert={PUBLIC_CAS}"))).await;
        match store {
            Err(Error::Unavailable(message)) => {
                eprintln!("refused as expected: {message}");
                assert!(message.contains("UnknownIssuer"), "unclear reason: {message}");
            }
            Err(other) => panic!("expected Unavailable, got {other:?}"),
            Ok(_) => panic!("verify-ca accepted a certificate no trusted CA issued"),
        }
    }
    // The platform's store: Debian links the snakeoil certificate into /etc/ssl/certs, so
    // there the refusal is the host name; elsewhere it is the unknown issuer. Either way
    // verify-full must not connect.
    let (store, _guard) = connect(&url_with("sslmode=verify-full")).await;
    match store {
        Err(Error::Unavailable(message)) => {
            eprintln!("refused as expected: {message}");
            assert!(message.contains("certificate"), "unclear reason: {message}");
        }
        Err(other) => panic!("expected Unavailable, got {other:?}"),
        Ok(_) => panic!("verify-full accepted the server's self-signed certificate"),
    }
    Ok(())
}

#[tokio::test]
async fn a_missing_root_certificate_file_is_an_invalid_argument() {
    // Fails before any connection is attempted, so no server is needed.
    let url = url_with("sslmode=verify-full&sslrootcert=/nonexistent/root.crt");
    let (store, _guard) = connect(&url).await;
    match store {
        Err(Error::InvalidArgument(message)) => {
            assert!(message.contains("/nonexistent/root.crt") && !message.contains('\n'), "{message}");
        }
        Err(other) => panic!("expected InvalidArgument, got {other:?}"),
        Ok(_) => panic!("connected without its root certificate"),
    }
    assert!(matches!(drop_schema(&url, "bifrost_unused").await, Err(Error::InvalidArgument(_))));
}

#[tokio::test]
async fn an_unparsable_root_certificate_is_an_invalid_argument() -> std::io::Result<()> {
    let dir = std::env::temp_dir().join(format!("bifrost-tls-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("root.crt");
    std::fs::write(&file, "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")?;
    let (store, _guard) =
        connect(&url_with(&format!("sslmode=verify-ca&sslrootcert={}", file.display()))).await;
    let _ = std::fs::remove_dir_all(&dir);
    assert!(matches!(store, Err(Error::InvalidArgument(_))), "{:?}", store.err());
    Ok(())
}
