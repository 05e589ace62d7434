//! JWT checks shared by the HTTP routes and WebSocket connections: the signature, the one
//! accepted `alg`, `exp`/`nbf` with the leeway, and `iss`/`aud` when configured.
//!
//! The key decides the accepted `alg` (HS256 for a secret; RS256 or ES256 from a PEM key's
//! type or a JWKS entry's), so a token can never choose how it is checked: an HS256 token
//! "signed" with the text of a public key, or `alg: none`, is refused before any signature
//! check. Dates are checked here against an injected clock rather than by the JWT library,
//! so the rules (and the leeway) are testable without waiting.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, Validation};
use serde_json::{Map, Value};

/// Shorter RSA keys are refused: they no longer protect a signature.
const MIN_RSA_BITS: usize = 2048;
/// Length of an uncompressed SEC1 P-256 point (`0x04 || x || y`).
const P256_POINT_BYTES: usize = 65;

/// The key that checks tokens.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum JwtKey {
    /// No key (the default).
    #[default]
    None,
    /// HS256 with this shared secret.
    Secret(String),
    /// RS256 or ES256 with this PEM public key (the file's contents).
    PublicKeyPem(String),
    /// A JSON Web Key Set (the file's contents): the token's `kid` picks the key, each key's
    /// type its one alg (RSA: RS256, EC P-256: ES256).
    Jwks(String),
}

/// `[auth.jwt]`: how tokens are checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtConfig {
    pub key: JwtKey,
    /// `iss` must be this, when set.
    pub issuer: Option<String>,
    /// `aud` must be (or contain) this, when set.
    pub audience: Option<String>,
    /// Seconds of clock skew allowed on `exp` and `nbf` (60).
    pub leeway_s: u64,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self { key: JwtKey::None, issuer: None, audience: None, leeway_s: 60 }
    }
}

/// Why a token was refused, as a client may read it ("the token expired", "bad signature").
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct AuthError(pub(crate) String);

impl AuthError {
    pub(crate) fn new(reason: impl Into<String>) -> Self {
        Self(reason.into())
    }
}

/// The verified claims of a token.
#[derive(Clone, Debug)]
pub(crate) struct Claims {
    pub(crate) map: Map<String, Value>,
    /// `exp`, unix seconds.
    pub(crate) expires_at: Option<u64>,
}

/// Checks tokens with the configured key.
#[derive(Debug)]
pub(crate) struct JwtVerifier {
    keys: Keys,
    issuer: Option<String>,
    audience: Option<String>,
    pub(crate) leeway_s: u64,
}

#[derive(Debug)]
enum Keys {
    One(DecodingKey, Algorithm),
    ByKid(HashMap<String, (DecodingKey, Algorithm)>),
}

impl JwtVerifier {
    /// None when no key is configured. Err(message) for an unusable key (bad PEM, empty
    /// secret, a JWKS without a usable key).
    pub(crate) fn new(config: &JwtConfig) -> Result<Option<Self>, String> {
        let keys = match &config.key {
            JwtKey::None => return Ok(None),
            JwtKey::Secret(secret) if secret.is_empty() => return Err("the JWT secret is empty".to_owned()),
            JwtKey::Secret(secret) => {
                Keys::One(DecodingKey::from_secret(secret.as_bytes()), Algorithm::HS256)
            }
            JwtKey::PublicKeyPem(pem) => {
                let (key, alg) = public_key(pem)?;
                Keys::One(key, alg)
            }
            JwtKey::Jwks(json) => Keys::ByKid(jwks(json)?),
        };
        Ok(Some(Self {
            keys,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway_s: config.leeway_s,
        }))
    }

    /// Checks the signature and alg, `exp` (required when `require_exp`) and `nbf` with the
    /// leeway, `iss` and `aud` when configured; `now` in unix seconds.
    pub(crate) fn verify_at(&self, token: &str, now: u64, require_exp: bool) -> Result<Claims, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            ErrorKind::Json(_) => AuthError::new("the token's header is not JSON naming a known alg"),
            _ => AuthError::new("not a JWT"),
        })?;
        let (key, alg) = match &self.keys {
            Keys::One(key, alg) => (key, *alg),
            Keys::ByKid(keys) => {
                let found = match &header.kid {
                    Some(kid) => keys.get(kid),
                    // One key needs no name.
                    None if keys.len() == 1 => keys.values().next(),
                    None => return Err(AuthError::new("the token names no kid")),
                };
                let (key, alg) = found.ok_or_else(|| AuthError::new("no key has the token's kid"))?;
                (key, *alg)
            }
        };
        if header.alg != alg {
            return Err(AuthError(format!("alg {:?} is refused: this server takes {alg:?}", header.alg)));
        }
        // Only the signature and the alg are left to the library; the claims are checked
        // below, against the caller's clock.
        let mut validation = Validation::new(alg);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        let map = jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => AuthError::new("bad signature"),
                ErrorKind::InvalidAlgorithm => AuthError(format!("only {alg:?} is accepted")),
                ErrorKind::Json(_) => AuthError::new("the token's claims are not a JSON object"),
                ErrorKind::Base64(_) | ErrorKind::Utf8(_) | ErrorKind::InvalidToken => {
                    AuthError::new("not a JWT")
                }
                _ => AuthError(format!("the token cannot be checked: {e}")),
            })?
            .claims;

        let expires_at = seconds_claim(&map, "exp")?;
        match expires_at {
            None if require_exp => return Err(AuthError::new("the token has no exp")),
            Some(exp) if exp.saturating_add(self.leeway_s) < now => {
                return Err(AuthError::new("the token expired"));
            }
            _ => {}
        }
        if let Some(nbf) = seconds_claim(&map, "nbf")?
            && nbf > now.saturating_add(self.leeway_s)
        {
            return Err(AuthError::new("the token is not valid yet (nbf)"));
        }
        if let Some(issuer) = &self.issuer
            && map.get("iss").and_then(Value::as_str) != Some(issuer.as_str())
        {
            return Err(AuthError::new("the token's iss is not this server's issuer"));
        }
        if let Some(audience) = &self.audience {
            let ok = match map.get("aud") {
                Some(Value::String(aud)) => aud == audience,
                Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(audience.as_str())),
                _ => false,
            };
            if !ok {
                return Err(AuthError::new("the token's aud does not name this server"));
            }
        }
        Ok(Claims { map, expires_at })
    }
}

/// The key of a PEM public key and the one alg it verifies.
fn public_key(pem: &str) -> Result<(DecodingKey, Algorithm), String> {
    // A private key would parse (the library takes RSA private keys too) and then fail every
    // check, or hand a secret to the server; the operator meant its public half.
    if pem.contains("PRIVATE KEY-----") {
        return Err("this is a private key: give its public half (openssl pkey -in KEY -pubout)".to_owned());
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
        check_rsa(&key)?;
        return Ok((key, Algorithm::RS256));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem.as_bytes()) {
        check_p256(&key)?;
        return Ok((key, Algorithm::ES256));
    }
    Err("not a PEM RSA or EC (P-256) public key".to_owned())
}

fn check_rsa(key: &DecodingKey) -> Result<(), String> {
    let modulus_len = match key.kind() {
        DecodingKeyKind::SecretOrDer(der) => {
            let (modulus, _exponent) = (DEFAULT_PROVIDER.key_utils.rsa_pub_components_from_public_key)(der)
                .map_err(|e| format!("not a usable RSA public key: {e}"))?;
            modulus.iter().skip_while(|b| **b == 0).count()
        }
        DecodingKeyKind::RsaModulusExponent { n, .. } => n.iter().skip_while(|b| **b == 0).count(),
    };
    let bits = modulus_len * 8;
    if bits < MIN_RSA_BITS {
        return Err(format!("the RSA key has {bits} bits; at least {MIN_RSA_BITS} are needed"));
    }
    Ok(())
}

fn check_p256(key: &DecodingKey) -> Result<(), String> {
    let point_len = match key.kind() {
        DecodingKeyKind::SecretOrDer(point) => point.len(),
        DecodingKeyKind::RsaModulusExponent { .. } => 0,
    };
    if point_len != P256_POINT_BYTES {
        return Err("the EC key is not on P-256: only ES256 is accepted".to_owned());
    }
    // Parses the point, so a damaged key stops the start rather than every request.
    (DEFAULT_PROVIDER.verifier_factory)(&Algorithm::ES256, key)
        .map_err(|e| format!("not a usable P-256 public key: {e}"))?;
    Ok(())
}

/// The keys of a JWKS by `kid`: RSA keys verify RS256, P-256 keys ES256; anything else
/// (symmetric keys, other curves, an `alg` that contradicts the key) stops the start.
fn jwks(json: &str) -> Result<HashMap<String, (DecodingKey, Algorithm)>, String> {
    let set: JwkSet = serde_json::from_str(json).map_err(|e| format!("not a JSON Web Key Set: {e}"))?;
    let mut keys = HashMap::new();
    for (index, jwk) in set.keys.iter().enumerate() {
        let kid = jwk.common.key_id.clone().unwrap_or_default();
        let name = if kid.is_empty() { format!("key {index}") } else { format!("key {kid:?}") };
        let alg = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => Algorithm::ES256,
            _ => return Err(format!("{name}: only RSA (RS256) and EC P-256 (ES256) keys are accepted")),
        };
        if let Some(declared) = jwk.common.key_algorithm
            && format!("{declared:?}") != format!("{alg:?}")
        {
            return Err(format!("{name}: its alg {declared:?} does not fit its key type ({alg:?})"));
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("{name}: {e}"))?;
        match alg {
            Algorithm::RS256 => check_rsa(&key),
            _ => check_p256(&key),
        }
        .map_err(|e| format!("{name}: {e}"))?;
        if kid.is_empty() && set.keys.len() > 1 {
            return Err(format!("{name} has no kid: in a set of several keys each needs one"));
        }
        if keys.insert(kid, (key, alg)).is_some() {
            return Err(format!("{name}: two keys have this kid"));
        }
    }
    if keys.is_empty() {
        return Err("the JSON Web Key Set has no keys".to_owned());
    }
    Ok(keys)
}

/// A `NumericDate` claim as whole seconds; absent or null: None.
pub(crate) fn seconds_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, AuthError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(seconds) = n.as_u64() {
                return Ok(Some(seconds));
            }
            // RFC 7519 allows fractions; a negative or non-finite date is malformed.
            match n.as_f64() {
                // Truncation is the intent: whole seconds.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                Some(f) if f.is_finite() && f >= 0.0 => Ok(Some(f as u64)),
                _ => Err(AuthError(format!("{name} must be a date in seconds since 1970"))),
            }
        }
        Some(_) => Err(AuthError(format!("{name} must be a date in seconds since 1970"))),
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use jsonwebtoken::jwk::Jwk;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    use super::*;

    const NOW: u64 = 1_800_000_000;
    const RS256_PRIVATE: &str = include_str!("../../tests/fixtures/jwt_rs256_private.pem");
    const ES256_PRIVATE: &str = include_str!("../../tests/fixtures/jwt_es256_private.pem");

    fn rsa() -> EncodingKey {
        EncodingKey::from_rsa_pem(RS256_PRIVATE.as_bytes()).unwrap()
    }

    fn ec() -> EncodingKey {
        EncodingKey::from_ec_pem(ES256_PRIVATE.as_bytes()).unwrap()
    }

    /// A JWK of `key`'s public half, named `kid`.
    fn jwk(key: &EncodingKey, alg: Algorithm, kid: &str) -> Value {
        let mut jwk = serde_json::to_value(Jwk::from_encoding_key(key, alg).unwrap()).unwrap();
        jwk["kid"] = kid.into();
        jwk
    }

    fn verifier(config: JwtConfig) -> JwtVerifier {
        JwtVerifier::new(&config).unwrap().unwrap()
    }

    fn token(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        encode(&header, claims, key).unwrap()
    }

    #[test]
    fn a_jwks_picks_the_key_by_kid_and_each_key_its_alg() {
        let set = json!({"keys": [jwk(&rsa(), Algorithm::RS256, "r1"), jwk(&ec(), Algorithm::ES256, "e1")]});
        let v = verifier(JwtConfig { key: JwtKey::Jwks(set.to_string()), ..JwtConfig::default() });
        let claims = json!({"sub": "a", "exp": NOW + 60});
        assert!(v.verify_at(&token(Algorithm::RS256, Some("r1"), &rsa(), &claims), NOW, true).is_ok());
        assert!(v.verify_at(&token(Algorithm::ES256, Some("e1"), &ec(), &claims), NOW, true).is_ok());
        // The RSA key's kid on an EC-signed token: the key decides the alg.
        let wrong = v.verify_at(&token(Algorithm::ES256, Some("r1"), &ec(), &claims), NOW, true);
        assert!(wrong.unwrap_err().0.contains("refused"));
        let unknown = v.verify_at(&token(Algorithm::RS256, Some("zz"), &rsa(), &claims), NOW, true);
        assert_eq!(unknown.unwrap_err().0, "no key has the token's kid");
        let nameless = v.verify_at(&token(Algorithm::RS256, None, &rsa(), &claims), NOW, true);
        assert_eq!(nameless.unwrap_err().0, "the token names no kid");
        // HS256 "signed" with nothing the set holds.
        let hs = token(Algorithm::HS256, Some("r1"), &EncodingKey::from_secret(b"x"), &claims);
        assert!(v.verify_at(&hs, NOW, true).is_err());
    }

    #[test]
    fn a_bad_jwks_stops_the_start() {
        let bad = |set: Value| {
            JwtVerifier::new(&JwtConfig { key: JwtKey::Jwks(set.to_string()), ..JwtConfig::default() })
        };
        assert!(bad(json!({"keys": []})).unwrap_err().contains("no keys"));
        assert!(
            bad(json!({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "s"}]}))
                .unwrap_err()
                .contains("only RSA")
        );
        let r = jwk(&rsa(), Algorithm::RS256, "same");
        assert!(bad(json!({"keys": [r.clone(), r]})).unwrap_err().contains("two keys"));
        assert!(
            JwtVerifier::new(&JwtConfig { key: JwtKey::Jwks("not json".into()), ..JwtConfig::default() })
                .is_err()
        );
    }

    #[test]
    fn exp_issuer_and_audience_are_checked_when_asked_for() {
        let secret = JwtKey::Secret("s3cret-of-enough-length-0123456789".into());
        let key = EncodingKey::from_secret(b"s3cret-of-enough-length-0123456789");
        let v = verifier(JwtConfig {
            key: secret,
            issuer: Some("https://id.example".into()),
            audience: Some("bifrost".into()),
            ..JwtConfig::default()
        });
        let sign = |claims: Value| token(Algorithm::HS256, None, &key, &claims);
        let good = json!({"exp": NOW + 60, "iss": "https://id.example", "aud": ["other", "bifrost"]});
        assert!(v.verify_at(&sign(good), NOW, true).is_ok());
        let no_exp = json!({"iss": "https://id.example", "aud": "bifrost"});
        assert_eq!(v.verify_at(&sign(no_exp.clone()), NOW, true).unwrap_err().0, "the token has no exp");
        assert!(v.verify_at(&sign(no_exp), NOW, false).is_ok(), "a WebSocket token may have no exp");
        let other_iss = json!({"exp": NOW + 60, "iss": "https://evil.example", "aud": "bifrost"});
        assert!(v.verify_at(&sign(other_iss), NOW, true).unwrap_err().0.contains("iss"));
        let other_aud = json!({"exp": NOW + 60, "iss": "https://id.example", "aud": "elsewhere"});
        assert!(v.verify_at(&sign(other_aud), NOW, true).unwrap_err().0.contains("aud"));
    }
}
