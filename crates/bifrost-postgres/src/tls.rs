//! TLS for every connection the store opens (pool, migrations, listener, schema drops),
//! configured the way libpq reads a connection string.
//!
//! tokio-postgres parses `sslmode` only up to `require` and rejects `sslrootcert`, so both
//! are taken out of the string here, before it is parsed, and applied to one rustls
//! connector:
//!
//! - `disable`, `prefer` (the default), `require`: tokio-postgres negotiates TLS; the
//!   certificate is not verified, as in libpq. `require` with an `sslrootcert` verifies
//!   the chain (libpq's compatibility rule).
//! - `verify-ca`: TLS required; the chain must lead to a trusted root, any host name.
//! - `verify-full`: TLS required; the chain and the host name are verified.
//!
//! Trusted roots come from the `sslrootcert` file when one is named, else from the
//! platform's store (`sslrootcert=system` says so explicitly and, as in libpq, implies
//! `verify-full`). The crypto provider is ring, passed explicitly, so nothing has to be
//! installed process-wide.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use bifrost_core::{Error, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{WebPkiServerVerifier, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// How much of the server's certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verify {
    /// Encryption only (libpq `prefer`, `require`).
    Nothing,
    /// The chain, not the host name (`verify-ca`).
    Chain,
    /// The chain and the host name (`verify-full`).
    Full,
}

/// Where trusted roots come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Roots {
    System,
    File(PathBuf),
}

/// The TLS part of a connection string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TlsSettings {
    pub(crate) verify: Verify,
    pub(crate) roots: Roots,
}

/// Parses a connection string (URL or `key=value` form) into the driver's configuration
/// and the TLS settings it cannot hold.
pub(crate) fn parse(url: &str) -> Result<(tokio_postgres::Config, TlsSettings)> {
    let (rest, ssl_mode, root_cert) = split_tls_params(url);
    let mut config = tokio_postgres::Config::from_str(&rest)
        .map_err(|e| Error::InvalidArgument(format!("invalid PostgreSQL URL: {e}")))?;
    let roots = match root_cert.as_deref() {
        None | Some("") => Roots::System,
        Some("system") => Roots::System,
        Some(path) => Roots::File(PathBuf::from(path)),
    };
    let explicit_system = root_cert.as_deref() == Some("system");
    let (mode, verify) = match ssl_mode.as_deref() {
        // libpq: `sslrootcert=system` makes `verify-full` the default.
        None if explicit_system => (SslMode::Require, Verify::Full),
        None | Some("prefer") => (SslMode::Prefer, Verify::Nothing),
        Some("disable") => (SslMode::Disable, Verify::Nothing),
        Some("require") if matches!(roots, Roots::File(_)) => (SslMode::Require, Verify::Chain),
        Some("require") => (SslMode::Require, Verify::Nothing),
        Some("verify-ca") => (SslMode::Require, Verify::Chain),
        Some("verify-full") => (SslMode::Require, Verify::Full),
        Some(other) => {
            return Err(Error::InvalidArgument(format!(
                "unsupported sslmode {other:?}: use disable, prefer, require, verify-ca or verify-full"
            )));
        }
    };
    if explicit_system && verify != Verify::Full {
        // libpq refuses this too: trusting every public CA without checking the name
        // would accept any certificate a CA issued to anyone.
        return Err(Error::InvalidArgument("sslrootcert=system requires sslmode=verify-full".into()));
    }
    config.ssl_mode(mode);
    Ok((config, TlsSettings { verify, roots }))
}

/// The connector for these settings; build it once and clone it (it shares its config).
pub(crate) fn connector(settings: &TlsSettings) -> Result<MakeRustlsConnect> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::storage("cannot configure TLS", e))?;
    let verifier: Arc<dyn ServerCertVerifier> = match settings.verify {
        Verify::Nothing => Arc::new(WithoutHostName { roots: None, provider }),
        Verify::Chain => {
            Arc::new(WithoutHostName { roots: Some(Arc::new(roots(&settings.roots)?)), provider })
        }
        Verify::Full => WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots(&settings.roots)?),
            provider,
        )
        .build()
        .map_err(|e| Error::InvalidArgument(format!("cannot use the trusted root certificates: {e}")))?,
    };
    let mut config = builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth();
    // Required by servers that accept `sslnegotiation=direct`; ignored otherwise.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(MakeRustlsConnect::new(config))
}

fn roots(source: &Roots) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    match source {
        Roots::File(path) => {
            let shown = path.display();
            let pem = std::fs::read(path)
                .map_err(|e| Error::InvalidArgument(format!("cannot read sslrootcert {shown}: {e}")))?;
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| Error::InvalidArgument(format!("sslrootcert {shown} is not valid PEM: {e}")))?;
            if certs.is_empty() {
                return Err(Error::InvalidArgument(format!("sslrootcert {shown} holds no PEM certificate")));
            }
            for cert in certs {
                store.add(cert).map_err(|e| {
                    Error::InvalidArgument(format!("sslrootcert {shown} holds an unusable certificate: {e}"))
                })?;
            }
        }
        Roots::System => {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::debug!(error = %e, "skipped part of the system certificate store");
            }
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                return Err(Error::InvalidArgument(
                    "no trusted root certificates found on this system; name a file with sslrootcert".into(),
                ));
            }
        }
    }
    Ok(store)
}

/// The libpq modes that do not check the host name. Without roots (`prefer`/`require`):
/// encryption without authentication. With roots (`verify-ca`): the chain must end at a
/// trusted root. Either way the server must hold the key of the certificate it presented.
#[derive(Debug)]
struct WithoutHostName {
    roots: Option<Arc<RootCertStore>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for WithoutHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Takes `sslmode` and `sslrootcert` out of a connection string; returns the rest and the
/// two values (last one wins, as in libpq). Values that are not recognised stay for
/// tokio-postgres to judge.
fn split_tls_params(url: &str) -> (String, Option<String>, Option<String>) {
    let mut mode = None;
    let mut root = None;
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return (url.to_owned(), None, None);
        };
        let mut kept = Vec::new();
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match percent_decode(key).as_str() {
                "sslmode" => mode = Some(percent_decode(value)),
                "sslrootcert" => root = Some(percent_decode(value)),
                _ => kept.push(pair),
            }
        }
        let rest = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
        return (rest, mode, root);
    }
    // key=value form: drop the two settings' `key=value` tokens, keep the rest verbatim.
    let mut rest = String::with_capacity(url.len());
    for (token, value) in key_value_tokens(url) {
        if let Some(v) = value.strip_prefix("sslmode=") {
            mode = Some(unquote(v));
        } else if let Some(v) = value.strip_prefix("sslrootcert=") {
            root = Some(unquote(v));
        } else {
            rest.push_str(token);
        }
    }
    (rest, mode, root)
}

/// Splits a `key=value` connection string into tokens, each with its leading whitespace
/// (so the kept ones re-join verbatim) and its trimmed text. Quoted values may hold spaces.
fn key_value_tokens(s: &str) -> Vec<(&str, &str)> {
    let mut tokens = Vec::new();
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let text_start = i;
        let mut quoted = false;
        while i < bytes.len() && (quoted || !bytes[i].is_ascii_whitespace()) {
            match bytes[i] {
                b'\\' => i += 1,
                b'\'' => quoted = !quoted,
                _ => {}
            }
            i += 1;
        }
        let end = i.min(bytes.len());
        tokens.push((&s[start..end], &s[text_start..end]));
        start = end;
    }
    tokens
}

fn unquote(v: &str) -> String {
    let inner = v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')).unwrap_or(v);
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        out.push(if c == '\\' { chars.next().unwrap_or('\\') } else { c });
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(Some(hi)), Some(Some(lo))) =
                (bytes.get(i + 1).map(|&b| hex(b)), bytes.get(i + 2).map(|&b| hex(b)))
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parameters_are_taken_out() {
        let (rest, mode, root) = split_tls_params(
            "postgres://u@h/db?application_name=x&sslmode=verify-full&sslrootcert=%2Fa%20b.pem",
        );
        assert_eq!(rest, "postgres://u@h/db?application_name=x");
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/a b.pem"));
        let (rest, ..) = split_tls_params("postgresql://u@h/db?sslmode=require");
        assert_eq!(rest, "postgresql://u@h/db");
    }

    #[test]
    fn key_value_parameters_are_taken_out() {
        let (rest, mode, root) =
            split_tls_params("host=h password='a b' sslmode=verify-ca sslrootcert='/x y.pem' dbname=d");
        assert_eq!(rest, "host=h password='a b' dbname=d");
        assert_eq!(mode.as_deref(), Some("verify-ca"));
        assert_eq!(root.as_deref(), Some("/x y.pem"));
    }

    #[test]
    fn modes_map_to_driver_modes_and_checks() -> Result<()> {
        let check = |url: &str| parse(url).map(|(c, t)| (c.get_ssl_mode(), t.verify));
        assert_eq!(check("postgres://h/db")?, (SslMode::Prefer, Verify::Nothing));
        assert_eq!(check("postgres://h/db?sslmode=disable")?, (SslMode::Disable, Verify::Nothing));
        assert_eq!(check("postgres://h/db?sslmode=require")?, (SslMode::Require, Verify::Nothing));
        assert_eq!(
            check("postgres://h/db?sslmode=require&sslrootcert=/r.pem")?,
            (SslMode::Require, Verify::Chain)
        );
        assert_eq!(check("postgres://h/db?sslmode=verify-ca")?, (SslMode::Require, Verify::Chain));
        assert_eq!(check("postgres://h/db?sslmode=verify-full")?, (SslMode::Require, Verify::Full));
        assert_eq!(check("postgres://h/db?sslrootcert=system")?, (SslMode::Require, Verify::Full));
        assert!(matches!(check("postgres://h/db?sslmode=allow"), Err(Error::InvalidArgument(_))));
        assert!(matches!(
            check("postgres://h/db?sslmode=require&sslrootcert=system"),
            Err(Error::InvalidArgument(_))
        ));
        Ok(())
    }
}
