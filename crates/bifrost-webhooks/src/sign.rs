//! Standard Webhooks signing: secrets (`whsec_` + base64 of the key) and the
//! `webhook-signature` header, `v1,<base64 HMAC-SHA256("{id}.{timestamp}.{body}")>`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// The prefix of every secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// Shortest and longest key, in bytes.
pub const MIN_KEY_BYTES: usize = 24;
pub const MAX_KEY_BYTES: usize = 64;
/// The size of a generated key.
const GENERATED_KEY_BYTES: usize = 32;

/// Why a secret is not acceptable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid secret: {0}")]
pub struct BadSecret(&'static str);

/// The key of a secret, checked: `whsec_` + base64 of 24–64 bytes.
pub fn parse_secret(secret: &str) -> Result<Vec<u8>, BadSecret> {
    let encoded = secret.strip_prefix(SECRET_PREFIX).ok_or(BadSecret("a secret starts with \"whsec_\""))?;
    let key = STANDARD.decode(encoded).map_err(|_| BadSecret("the part after \"whsec_\" must be base64"))?;
    if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&key.len()) {
        return Err(BadSecret("the key must be 24 to 64 bytes"));
    }
    Ok(key)
}

/// A new secret of 32 random bytes from the operating system.
pub fn generate_secret() -> Result<String, ring::error::Unspecified> {
    let mut key = [0u8; GENERATED_KEY_BYTES];
    SystemRandom::new().fill(&mut key)?;
    Ok(format!("{SECRET_PREFIX}{}", STANDARD.encode(key)))
}

/// The value of `webhook-signature`: one `v1,` entry per key, in the order given (newest
/// first), space-separated.
pub fn signature_header(keys: &[Vec<u8>], webhook_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut header = String::new();
    for key in keys {
        let key = hmac::Key::new(hmac::HMAC_SHA256, key);
        let mut ctx = hmac::Context::with_key(&key);
        ctx.update(webhook_id.as_bytes());
        ctx.update(b".");
        ctx.update(timestamp.to_string().as_bytes());
        ctx.update(b".");
        ctx.update(body);
        if !header.is_empty() {
            header.push(' ');
        }
        header.push_str("v1,");
        header.push_str(&STANDARD.encode(ctx.sign().as_ref()));
    }
    header
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn signs_as_the_standard_webhooks_reference_does() {
        // The example of the Standard Webhooks reference libraries.
        let key = parse_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let header =
            signature_header(&[key], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
        assert_eq!(header, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn one_entry_per_key_newest_first() {
        let a = parse_secret(&generate_secret().unwrap()).unwrap();
        let b = parse_secret(&generate_secret().unwrap()).unwrap();
        let both = signature_header(&[a.clone(), b.clone()], "id", 1, b"{}");
        let first = signature_header(&[a], "id", 1, b"{}");
        let second = signature_header(&[b], "id", 1, b"{}");
        assert_eq!(both, format!("{first} {second}"));
    }

    #[test]
    fn secrets_are_checked() {
        assert!(parse_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(parse_secret("whsec_!!!").is_err());
        assert!(parse_secret("whsec_AAAA").is_err(), "3 bytes is too short");
        assert_eq!(parse_secret(&generate_secret().unwrap()).unwrap().len(), 32);
    }
}
