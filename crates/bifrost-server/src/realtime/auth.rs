//! Who a WebSocket connection is and what it may do: the claims of its token
//! ([`Verifier`], over the server's JWT checks in `crate::auth::jwt`) and the channel rules
//! of the resulting [`Principal`].

use serde_json::{Map, Value};

pub(crate) use crate::auth::jwt::AuthError;
#[cfg(test)]
use crate::auth::jwt::{JwtConfig, JwtVerifier, unix_now};

/// Largest `info` claim, serialized.
const MAX_INFO_BYTES: usize = 1024;

/// Checks connection tokens with the configured key: the JWT path of
/// `Hub::authenticate`, whole, for the unit tests of the claim rules.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct Verifier {
    jwt: JwtVerifier,
}

#[cfg(test)]
impl Verifier {
    /// None when no key is configured. Err(message) for an unusable key (bad PEM, empty
    /// secret).
    pub(crate) fn new(config: &JwtConfig) -> Result<Option<Self>, String> {
        Ok(JwtVerifier::new(config)?.map(|jwt| Self { jwt }))
    }

    /// Checks signature, alg (HS256 for a secret; RS256 or ES256 matching a PEM key,
    /// decided from the key; any other alg refused), exp/nbf if present with the leeway,
    /// `sub` required (non-empty string), `info` an object ≤ 1 KiB serialized if present,
    /// `channels` an array of strings if present, `scope` a space-separated string if present.
    pub(crate) fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        self.verify_at(token, unix_now())
    }

    /// [`Verifier::verify`] at `now` (unix seconds).
    pub(crate) fn verify_at(&self, token: &str, now: u64) -> Result<Principal, AuthError> {
        let claims = self.jwt.verify_at(token, now, false)?;
        Principal::from_claims(&claims.map, claims.expires_at)
    }
}

impl Principal {
    /// A connection's rights from a verified token's claims.
    pub(crate) fn from_claims(
        claims: &Map<String, Value>,
        expires_at: Option<u64>,
    ) -> Result<Self, AuthError> {
        let user_id = match claims.get("sub") {
            Some(Value::String(sub)) if !sub.is_empty() => sub.clone(),
            None | Some(Value::Null) => return Err(AuthError::new("the token has no sub (user id)")),
            Some(_) => return Err(AuthError::new("sub must be a non-empty string")),
        };
        let info = match claims.get("info") {
            None | Some(Value::Null) => None,
            Some(info @ Value::Object(_)) => {
                if serde_json::to_vec(info).map_or(true, |bytes| bytes.len() > MAX_INFO_BYTES) {
                    return Err(AuthError::new("info is larger than 1 KiB"));
                }
                Some(info.clone())
            }
            Some(_) => return Err(AuthError::new("info must be an object")),
        };
        let channels = match claims.get("channels") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| item.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| AuthError::new("channels must be an array of strings"))?,
            Some(_) => return Err(AuthError::new("channels must be an array of strings")),
        };
        let (admin, append) = match claims.get("scope") {
            None | Some(Value::Null) => (false, false),
            Some(Value::String(scope)) => {
                let admin = scope.split_whitespace().any(|s| s == "admin");
                (admin, admin || scope.split_whitespace().any(|s| s == "append"))
            }
            Some(_) => return Err(AuthError::new("scope must be a space-separated string")),
        };
        Ok(Self {
            user_id: Some(user_id),
            admin,
            append,
            channels,
            info,
            expires_at,
            anonymous: false,
            tenant: None,
        })
    }
}

/// An authenticated (or anonymous, or dev-mode) connection's identity and rights.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Principal {
    /// `sub`; None for anonymous / dev without `?user_id`.
    pub(crate) user_id: Option<String>,
    /// `scope` contains `admin`, or dev mode.
    pub(crate) admin: bool,
    /// `scope` contains `append` (admin implies it): persistent publishes.
    pub(crate) append: bool,
    /// Grant patterns from the `channels` claim (or `anonymous_channels`).
    pub(crate) channels: Vec<String>,
    pub(crate) info: Option<Value>,
    /// `exp`, unix seconds.
    pub(crate) expires_at: Option<u64>,
    pub(crate) anonymous: bool,
    /// The credential's tenant: its channels are its own (`None`: the default tenant).
    pub(crate) tenant: Option<String>,
}

impl Principal {
    /// No JWT key configured: admin, named by the client (`?user_id=`) or not at all.
    pub(crate) fn dev(user_id: Option<String>) -> Self {
        Self {
            user_id,
            admin: true,
            append: true,
            channels: Vec::new(),
            info: None,
            expires_at: None,
            anonymous: false,
            tenant: None,
        }
    }

    /// `realtime.allow_anonymous` and no token: subscribe to `channels`, nothing else.
    pub(crate) fn anonymous(channels: &[String]) -> Self {
        Self {
            user_id: None,
            admin: false,
            append: false,
            channels: channels.to_vec(),
            info: None,
            expires_at: None,
            anonymous: true,
            tenant: None,
        }
    }

    /// Subscribe and presence: own `user:{sub}` always, others per `channels` grants (exact,
    /// or trailing `*` = prefix, e.g. `room:project:*`), all for admin.
    pub(crate) fn may_subscribe(&self, channel: &str) -> bool {
        if self.admin {
            return true;
        }
        if let Some(user_id) = &self.user_id
            && channel.strip_prefix("user:") == Some(user_id.as_str())
        {
            return true;
        }
        self.channels.iter().any(|grant| grants(grant, channel))
    }

    /// Publish over WS: `room:` channels it may subscribe to (persistent needs `append`);
    /// `user:` and `stream:` admin only; `type:` never; anonymous never.
    pub(crate) fn may_publish(&self, channel: &str, persistent: bool) -> bool {
        if self.anonymous {
            return false;
        }
        if channel.starts_with("room:") {
            self.may_subscribe(channel) && (self.append || !persistent)
        } else if channel.starts_with("user:") || channel.starts_with("stream:") {
            self.admin
        } else {
            false
        }
    }

    /// Seconds until the session ends (None: never): at `exp`, or, for a token let in
    /// within the `leeway` after its `exp`, at the end of that leeway.
    pub(crate) fn remaining(&self, now_unix: u64, leeway: u64) -> Option<u64> {
        self.expires_at.map(|exp| {
            let end = if exp > now_unix { exp } else { exp.saturating_add(leeway) };
            end.saturating_sub(now_unix)
        })
    }
}

/// A grant covers `channel`: equal, or a prefix of it when the grant's last character is `*`
/// (a `*` anywhere else is just a character).
fn grants(grant: &str, channel: &str) -> bool {
    match grant.strip_suffix('*') {
        Some(prefix) => channel.starts_with(prefix),
        None => grant == channel,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    use serde_json::json;

    use super::*;
    use crate::auth::jwt::JwtKey;

    const SECRET: &str = "a-test-secret-of-thirty-two-bytes";
    const NOW: u64 = 1_800_000_000;
    const RS256_PUBLIC: &str = include_str!("../../tests/fixtures/jwt_rs256_public.pem");
    const RS256_PRIVATE: &str = include_str!("../../tests/fixtures/jwt_rs256_private.pem");
    const ES256_PUBLIC: &str = include_str!("../../tests/fixtures/jwt_es256_public.pem");
    const ES256_PRIVATE: &str = include_str!("../../tests/fixtures/jwt_es256_private.pem");
    const ES384_PUBLIC: &str = include_str!("../../tests/fixtures/jwt_es384_public.pem");

    fn verifier(jwt: JwtKey) -> Verifier {
        Verifier::new(&JwtConfig { key: jwt, ..JwtConfig::default() }).unwrap().unwrap()
    }

    fn hs256(claims: &Value) -> String {
        encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
    }

    fn refusal(verifier: &Verifier, token: &str) -> String {
        verifier.verify_at(token, NOW).unwrap_err().0
    }

    #[test]
    fn a_good_hs256_token_gives_its_principal() {
        let v = verifier(JwtKey::Secret(SECRET.into()));
        let token = hs256(&json!({
            "sub": "alice",
            "exp": NOW + 300,
            "nbf": NOW - 10,
            "scope": "read append",
            "channels": ["room:project:*", "room:lobby"],
            "info": {"name": "Alice"},
        }));
        let p = v.verify_at(&token, NOW).unwrap();
        assert_eq!(
            p,
            Principal {
                user_id: Some("alice".into()),
                admin: false,
                append: true,
                channels: vec!["room:project:*".into(), "room:lobby".into()],
                info: Some(json!({"name": "Alice"})),
                expires_at: Some(NOW + 300),
                anonymous: false,
                tenant: None,
            }
        );
        assert_eq!(p.remaining(NOW, 60), Some(300));
        assert_eq!(p.remaining(NOW + 301, 60), Some(59), "past exp, the leeway is what is left");
        assert_eq!(p.remaining(NOW + 361, 60), Some(0));

        let admin = v.verify_at(&hs256(&json!({"sub": "root", "scope": "admin"})), NOW).unwrap();
        assert!(admin.admin && admin.append, "admin implies append");
        assert_eq!(admin.expires_at, None);
        assert_eq!(admin.remaining(NOW, 60), None, "no exp: the session never ends");

        // verify() reads the clock itself.
        let stale = hs256(&json!({"sub": "alice", "exp": unix_now() - 120}));
        assert_eq!(v.verify(&stale).unwrap_err().0, "the token expired");
        let fresh = hs256(&json!({"sub": "alice", "exp": unix_now() + 60}));
        assert_eq!(v.verify(&fresh).unwrap().user_id.as_deref(), Some("alice"));
    }

    #[test]
    fn a_token_signed_with_another_secret_has_a_bad_signature() {
        let v = verifier(JwtKey::Secret(SECRET.into()));
        let other = encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": "alice"}),
            &EncodingKey::from_secret(b"another secret"),
        )
        .unwrap();
        assert_eq!(refusal(&v, &other), "bad signature");
        // Claims changed after signing.
        let good = hs256(&json!({"sub": "alice"}));
        let mut parts: Vec<&str> = good.split('.').collect();
        let forged = hs256(&json!({"sub": "alice", "scope": "admin"}));
        parts[1] = forged.split('.').nth(1).unwrap();
        assert_eq!(refusal(&v, &parts.join(".")), "bad signature");
        assert_eq!(refusal(&v, "not-a-token"), "not a JWT");
    }

    #[test]
    fn exp_is_checked_with_the_leeway() {
        let v = verifier(JwtKey::Secret(SECRET.into()));
        let beyond = hs256(&json!({"sub": "alice", "exp": NOW - 61}));
        assert_eq!(refusal(&v, &beyond), "the token expired");
        let within = hs256(&json!({"sub": "alice", "exp": NOW - 60}));
        let p = v.verify_at(&within, NOW).unwrap();
        assert_eq!(p.remaining(NOW, 60), Some(0));

        let strict = Verifier::new(&JwtConfig {
            key: JwtKey::Secret(SECRET.into()),
            leeway_s: 0,
            ..Default::default()
        })
        .unwrap()
        .unwrap();
        assert_eq!(refusal(&strict, &within), "the token expired", "the leeway is the configured one");
        let bad = hs256(&json!({"sub": "alice", "exp": "tomorrow"}));
        assert_eq!(refusal(&v, &bad), "exp must be a date in seconds since 1970");
        let fraction = hs256(&json!({"sub": "alice", "exp": (NOW + 10) as f64 + 0.5}));
        assert_eq!(v.verify_at(&fraction, NOW).unwrap().expires_at, Some(NOW + 10));
    }

    #[test]
    fn a_token_before_its_nbf_is_refused_beyond_the_leeway() {
        let v = verifier(JwtKey::Secret(SECRET.into()));
        let future = hs256(&json!({"sub": "alice", "nbf": NOW + 61}));
        assert_eq!(refusal(&v, &future), "the token is not valid yet (nbf)");
        let within = hs256(&json!({"sub": "alice", "nbf": NOW + 60}));
        assert!(v.verify_at(&within, NOW).is_ok());
    }

    #[test]
    fn sub_is_required_and_a_non_empty_string() {
        let v = verifier(JwtKey::Secret(SECRET.into()));
        assert_eq!(refusal(&v, &hs256(&json!({"scope": "admin"}))), "the token has no sub (user id)");
        assert_eq!(refusal(&v, &hs256(&json!({"sub": ""}))), "sub must be a non-empty string");
        assert_eq!(refusal(&v, &hs256(&json!({"sub": 42}))), "sub must be a non-empty string");
    }

    #[test]
    fn claims_of_the_wrong_shape_are_refused() {
        let v = verifier(JwtKey::Secret(SECRET.into()));
        for (claims, reason) in [
            (json!({"sub": "a", "channels": "room:x"}), "channels must be an array of strings"),
            (json!({"sub": "a", "channels": ["room:x", 1]}), "channels must be an array of strings"),
            (json!({"sub": "a", "scope": ["admin"]}), "scope must be a space-separated string"),
            (json!({"sub": "a", "info": "Alice"}), "info must be an object"),
        ] {
            assert_eq!(refusal(&v, &hs256(&claims)), reason, "{claims}");
        }
    }

    #[test]
    fn info_may_hold_at_most_one_kib() {
        let v = verifier(JwtKey::Secret(SECRET.into()));
        // {"n":"…"} is 8 bytes around the string.
        let fits = json!({"n": "x".repeat(MAX_INFO_BYTES - 8)});
        assert_eq!(serde_json::to_vec(&fits).unwrap().len(), MAX_INFO_BYTES);
        let p = v.verify_at(&hs256(&json!({"sub": "a", "info": fits})), NOW).unwrap();
        assert_eq!(p.info, Some(fits));
        let too_large = json!({"n": "x".repeat(MAX_INFO_BYTES - 7)});
        assert_eq!(refusal(&v, &hs256(&json!({"sub": "a", "info": too_large}))), "info is larger than 1 KiB");
    }

    #[test]
    fn rs256_and_es256_keys_verify_their_own_alg() {
        let claims = json!({"sub": "bob", "exp": NOW + 60});
        let rs = verifier(JwtKey::PublicKeyPem(RS256_PUBLIC.into()));
        let signing = EncodingKey::from_rsa_pem(RS256_PRIVATE.as_bytes()).unwrap();
        let token = encode(&Header::new(Algorithm::RS256), &claims, &signing).unwrap();
        assert_eq!(rs.verify_at(&token, NOW).unwrap().user_id.as_deref(), Some("bob"));

        let es = verifier(JwtKey::PublicKeyPem(ES256_PUBLIC.into()));
        let signing = EncodingKey::from_ec_pem(ES256_PRIVATE.as_bytes()).unwrap();
        let es_token = encode(&Header::new(Algorithm::ES256), &claims, &signing).unwrap();
        assert_eq!(es.verify_at(&es_token, NOW).unwrap().user_id.as_deref(), Some("bob"));

        // Each key takes only its own alg.
        assert_eq!(refusal(&rs, &es_token), "alg ES256 is refused: this server takes RS256");
        assert_eq!(refusal(&es, &token), "alg RS256 is refused: this server takes ES256");
        let hs = verifier(JwtKey::Secret(SECRET.into()));
        assert_eq!(refusal(&hs, &token), "alg RS256 is refused: this server takes HS256");
        // Another RSA alg of the same key is refused too.
        let rs512 = encode(
            &Header::new(Algorithm::RS512),
            &claims,
            &EncodingKey::from_rsa_pem(RS256_PRIVATE.as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(refusal(&rs, &rs512), "alg RS512 is refused: this server takes RS256");
    }

    #[test]
    fn alg_confusion_and_alg_none_are_refused() {
        let rs = verifier(JwtKey::PublicKeyPem(RS256_PUBLIC.into()));
        // The classic attack: HS256 keyed with the (public) PEM text.
        let confused = encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": "mallory", "scope": "admin"}),
            &EncodingKey::from_secret(RS256_PUBLIC.as_bytes()),
        )
        .unwrap();
        assert_eq!(refusal(&rs, &confused), "alg HS256 is refused: this server takes RS256");

        // {"alg":"none","typ":"JWT"} . {"sub":"alice","scope":"admin"} . (no signature)
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsInNjb3BlIjoiYWRtaW4ifQ.";
        let hs = verifier(JwtKey::Secret(SECRET.into()));
        for v in [&rs, &hs] {
            assert_eq!(refusal(v, none), "the token's header is not JSON naming a known alg");
        }
        // The same with a valid HS256 signature of other claims glued on.
        let signature = hs256(&json!({"sub": "alice"})).rsplit('.').next().unwrap().to_owned();
        assert_eq!(
            refusal(&hs, &format!("{none}{signature}")),
            "the token's header is not JSON naming a known alg"
        );
    }

    #[test]
    fn unusable_keys_are_refused_at_start_and_no_key_is_dev_mode() {
        let new = |key| Verifier::new(&JwtConfig { key, ..JwtConfig::default() });
        assert!(new(JwtKey::None).unwrap().is_none());
        assert_eq!(new(JwtKey::Secret(String::new())).unwrap_err(), "the JWT secret is empty");
        assert_eq!(
            new(JwtKey::PublicKeyPem("hello".into())).unwrap_err(),
            "not a PEM RSA or EC (P-256) public key"
        );
        assert!(new(JwtKey::PublicKeyPem(RS256_PRIVATE.into())).unwrap_err().contains("private key"));
        assert!(new(JwtKey::PublicKeyPem(ES256_PRIVATE.into())).unwrap_err().contains("private key"));
        assert_eq!(
            new(JwtKey::PublicKeyPem(ES384_PUBLIC.into())).unwrap_err(),
            "the EC key is not on P-256: only ES256 is accepted"
        );
        // A PEM whose body is damaged.
        let damaged = RS256_PUBLIC.replacen("MII", "MIA", 1);
        assert!(new(JwtKey::PublicKeyPem(damaged)).is_err());
    }

    #[test]
    fn grants_match_exactly_or_by_a_trailing_star() {
        let p = Principal {
            channels: vec!["room:lobby".into(), "room:project:*".into(), "room:*:public".into()],
            ..Principal::anonymous(&[])
        };
        let p = Principal { anonymous: false, user_id: Some("alice".into()), ..p };
        for (channel, allowed) in [
            ("room:lobby", true),
            ("room:lobby2", false),
            ("room:lobb", false),
            ("room:project:101", true),
            ("room:project:", true),
            ("room:project", false),
            ("room:other", false),
            // `*` not last is a plain character.
            ("room:*:public", true),
            ("room:x:public", false),
            // Its own user channel, and no one else's.
            ("user:alice", true),
            ("user:alice2", false),
            ("user:bob", false),
            ("stream:orders", false),
        ] {
            assert_eq!(p.may_subscribe(channel), allowed, "{channel}");
        }
        let admin = Principal { admin: true, ..p.clone() };
        for channel in ["room:other", "user:bob", "stream:orders", "type:order.*"] {
            assert!(admin.may_subscribe(channel), "{channel}");
        }
        assert!(Principal::dev(None).may_subscribe("user:anyone"));
        let anonymous = Principal::anonymous(&["room:*".to_owned()]);
        assert!(anonymous.may_subscribe("room:lobby"));
        assert!(!anonymous.may_subscribe("user:"), "no user: an anonymous has no user channel");
        assert!(!anonymous.may_subscribe("stream:orders"));
    }

    #[test]
    fn publish_rules_follow_the_channel_kind_and_the_scopes() {
        let member = Principal {
            user_id: Some("alice".into()),
            admin: false,
            append: false,
            channels: vec!["room:project:*".into()],
            info: None,
            expires_at: None,
            anonymous: false,
            tenant: None,
        };
        assert!(member.may_publish("room:project:1", false));
        assert!(!member.may_publish("room:project:1", true), "persistent needs append");
        assert!(!member.may_publish("room:other", false), "only rooms it may subscribe to");
        assert!(!member.may_publish("user:alice", false), "user: is admin only, even its own");
        assert!(!member.may_publish("stream:orders", false));
        assert!(!member.may_publish("type:order.*", false));

        let appender = Principal { append: true, ..member.clone() };
        assert!(appender.may_publish("room:project:1", true));
        assert!(!appender.may_publish("room:other", true));

        let admin = Principal::dev(Some("root".into()));
        assert!(admin.may_publish("room:anything", true));
        assert!(admin.may_publish("user:bob", false));
        assert!(admin.may_publish("stream:orders", true));
        assert!(!admin.may_publish("type:order.*", false), "type: never");
        assert!(!admin.may_publish("queue:x", false), "not a channel kind");

        let anonymous = Principal::anonymous(&["room:*".to_owned()]);
        assert!(anonymous.may_subscribe("room:lobby"));
        assert!(!anonymous.may_publish("room:lobby", false), "anonymous never publishes");
        let anonymous_admin = Principal { admin: true, ..anonymous };
        assert!(!anonymous_admin.may_publish("room:lobby", false));
    }
}
