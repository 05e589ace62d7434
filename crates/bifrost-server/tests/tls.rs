//! HTTPS with a test CA: the handshake, ALPN (h2 and http/1.1), TLS 1.2 and 1.3, a request
//! over each, and a plain-HTTP client refused on the same port.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;

use bifrost_core::{DurableStore, InMemoryStore};
use bifrost_server::{ServerConfig, TlsFiles, load_tls};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls").join(name)
}

fn files() -> TlsFiles {
    TlsFiles { cert: fixture("server.pem"), key: fixture("server.key") }
}

async fn start() -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let store: Arc<dyn DurableStore> = InMemoryStore::shared();
    let groups = bifrost_bus::groups::open(Arc::clone(&store)).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = ServerConfig { tls: Some(files()), ..ServerConfig::default() };
    tokio::spawn(bifrost_server::serve(listener, store, groups, None, config, None, async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

fn client(versions: &[&'static rustls::SupportedProtocolVersion], alpn: &[&[u8]]) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(fixture("ca.pem")).unwrap()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

#[tokio::test]
async fn https_speaks_h2_and_http_1_1_over_tls_1_2_and_1_3_with_the_test_ca() {
    let (addr, _stop) = start().await;
    let name = ServerName::try_from("localhost").unwrap();

    let h2 = client(&[&rustls::version::TLS13], &[b"h2", b"http/1.1"]);
    let stream = h2.connect(name.clone(), TcpStream::connect(addr).await.unwrap()).await.unwrap();
    let (_, session) = stream.get_ref();
    assert_eq!(session.alpn_protocol(), Some(&b"h2"[..]), "HTTP/2 is offered first and chosen");
    assert_eq!(session.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));

    // TLS 1.2 and HTTP/1.1: a whole request and its answer.
    let old = client(&[&rustls::version::TLS12], &[b"http/1.1"]);
    let mut stream = old.connect(name.clone(), TcpStream::connect(addr).await.unwrap()).await.unwrap();
    assert_eq!(stream.get_ref().1.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // WSS: the upgrade goes through the TLS connection.
    let http1 = client(&[&rustls::version::TLS13], &[b"http/1.1"]);
    let stream = http1.connect(name, TcpStream::connect(addr).await.unwrap()).await.unwrap();
    let (mut socket, _) =
        tokio_tungstenite::client_async("wss://localhost/v1/ws?user_id=ann", stream).await.unwrap();
    let frame = futures::StreamExt::next(&mut socket).await.unwrap().unwrap();
    let frame: serde_json::Value = serde_json::from_str(frame.to_text().unwrap()).unwrap();
    assert_eq!((frame["op"].as_str(), frame["user_id"].as_str()), (Some("connected"), Some("ann")));
}

#[tokio::test]
async fn plain_http_and_an_unknown_ca_get_no_answer() {
    let (addr, _stop) = start().await;
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer).await;
    assert!(!String::from_utf8_lossy(&answer).contains("200 OK"), "plain HTTP is not served");

    // A client that trusts only the system roots refuses the test certificate.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let strict = TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from("localhost").unwrap();
    assert!(strict.connect(name, TcpStream::connect(addr).await.unwrap()).await.is_err());
}

#[test]
fn bad_files_are_named() {
    let missing = TlsFiles { cert: fixture("nope.pem"), key: fixture("server.key") };
    assert!(load_tls(&missing).unwrap_err().contains("tls.cert"));
    let swapped = TlsFiles { cert: fixture("server.key"), key: fixture("server.pem") };
    assert!(load_tls(&swapped).is_err());
    let wrong_key = TlsFiles { cert: fixture("ca.pem"), key: fixture("server.key") };
    assert!(load_tls(&wrong_key).unwrap_err().contains("does not fit"), "{:?}", load_tls(&wrong_key).err());
    assert!(load_tls(&files()).is_ok());
}
