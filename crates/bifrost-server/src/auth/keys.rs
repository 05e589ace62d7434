//! API keys, kept in the store's state so that every node on the store knows them: the
//! record under its id (scope `auth-keys`), the SHA-256 of its secret pointing at the id
//! (scope `auth-key-hashes`), and when it was last used (scope `auth-key-used`, apart, so
//! that a late write of it can never bring back a revoked key).
//!
//! Secrets are 32 random bytes; a hash of such a secret cannot be reversed or guessed, so
//! SHA-256 (not a slow password hash) is the right tool, and a lookup by hash leaks nothing
//! by its timing. Each node remembers a checked key for [`CACHE_TTL`], so a revocation
//! reaches every node within that time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bifrost_api::{KeyBody, KeyRequest, RestrictBody, ScopeBody};
use bifrost_core::{DurableStore, StateChange, Timestamp};
use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::jwt::AuthError;
use super::principal::{Actor, ActorKind, Principal, Restrict, Scopes};
use crate::error::{ApiError, ProblemType};

/// The prefix of every key's secret.
pub(crate) const KEY_PREFIX: &str = "bfk_";
const RECORDS: &str = "auth-keys";
const HASHES: &str = "auth-key-hashes";
const USED: &str = "auth-key-used";
/// How long a node trusts what it read of a key; revocations take at most this long.
pub(crate) const CACHE_TTL: Duration = Duration::from_secs(2);
/// `last_used_at` is written at most this often per key and node.
const USED_EVERY: Duration = Duration::from_secs(60);
/// Above this many cached keys the cache starts over (a flood of distinct keys).
const CACHE_MAX: usize = 10_000;
const MAX_NAME_CHARS: usize = 128;

/// A key as stored (never its secret).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct KeyRecord {
    pub(crate) id: Uuid,
    pub(crate) name: String,
    pub(crate) scopes: Vec<ScopeBody>,
    pub(crate) tenant: Option<String>,
    pub(crate) restrict: Option<RestrictBody>,
    pub(crate) expires_at: Option<Timestamp>,
    pub(crate) created_at: Timestamp,
    /// Hex SHA-256 of the secret.
    hash: String,
}

impl KeyRecord {
    pub(crate) fn body(&self, last_used_at: Option<Timestamp>, secret: Option<String>) -> KeyBody {
        KeyBody {
            id: self.id,
            name: self.name.clone(),
            scopes: self.scopes.clone(),
            tenant: self.tenant.clone(),
            restrict: self.restrict.clone(),
            expires_at: self.expires_at.map(|t| t.to_string()),
            created_at: self.created_at.to_string(),
            last_used_at: last_used_at.map(|t| t.to_string()),
            secret,
        }
    }
}

/// What a node remembers of a checked key: when it read it, and the caller it makes.
type Cached = (Instant, Option<Timestamp>, Arc<Principal>);

/// The API keys of a store.
pub(crate) struct KeyStore {
    store: Arc<dyn DurableStore>,
    /// By the SHA-256 of the secret.
    cache: Mutex<HashMap<[u8; 32], Cached>>,
    used: Mutex<HashMap<String, Instant>>,
    random: SystemRandom,
}

/// SHA-256 of a secret.
fn digest_secret(secret: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, secret.as_bytes()).as_ref());
    out
}

/// Hex SHA-256 of a secret: how the store names it.
pub(crate) fn hash_secret(secret: &str) -> String {
    hex(&digest_secret(secret))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut hex, b| {
        let _ = write!(hex, "{b:02x}");
        hex
    })
}

/// A tenant name: 1–64 of `a–z 0–9 _ -`.
pub(crate) fn check_tenant(tenant: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&tenant.len())
        && tenant.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok { Ok(()) } else { Err(format!("tenant {tenant:?} must be 1-64 characters of a-z 0-9 _ -")) }
}

fn storage(e: impl std::fmt::Display) -> ApiError {
    ApiError::unavailable(format!("the API keys cannot be reached: {e}"))
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(ProblemType::KeyNotFound, format!("no API key has id {id}")).with("id", id.into())
}

impl KeyStore {
    pub(crate) fn new(store: Arc<dyn DurableStore>) -> Self {
        Self { store, cache: Mutex::default(), used: Mutex::default(), random: SystemRandom::new() }
    }

    /// Stores a new key of `tenant` (already decided by the caller's rights) and returns it
    /// with its secret, the only time the secret is shown.
    pub(crate) async fn create(
        &self,
        request: KeyRequest,
        tenant: Option<String>,
    ) -> Result<KeyBody, ApiError> {
        let name = request.name.trim();
        if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
            return Err(ApiError::invalid_argument("name must be 1-128 characters"));
        }
        if request.scopes.is_empty() {
            return Err(ApiError::invalid_argument("scopes must name at least one scope"));
        }
        if let Some(tenant) = &tenant {
            check_tenant(tenant).map_err(ApiError::invalid_argument)?;
        }
        if let Some(restrict) = &request.restrict {
            for rule in [&restrict.append, &restrict.read].into_iter().flatten() {
                if rule.prefixes.is_empty() && rule.categories.is_empty() {
                    return Err(ApiError::invalid_argument(
                        "a restriction needs at least one prefix or category (or leave it out)",
                    ));
                }
            }
        }
        let now = Timestamp::now();
        let expires_at = request
            .expires_at
            .as_deref()
            .map(|t| {
                t.parse::<Timestamp>().map_err(|_| {
                    ApiError::invalid_argument(format!("expires_at must be an RFC 3339 timestamp, got {t:?}"))
                })
            })
            .transpose()?;
        if expires_at.is_some_and(|t| t <= now) {
            return Err(ApiError::invalid_argument("expires_at is in the past"));
        }
        let mut bytes = [0u8; 32];
        self.random.fill(&mut bytes).map_err(|_| ApiError::internal("the system's random source failed"))?;
        let secret = format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
        let mut scopes = request.scopes;
        scopes.sort();
        scopes.dedup();
        let record = KeyRecord {
            id: Uuid::now_v7(),
            name: name.to_owned(),
            scopes,
            tenant,
            restrict: request.restrict,
            expires_at,
            created_at: now,
            hash: hash_secret(&secret),
        };
        let value = serde_json::to_vec(&record).map_err(|e| ApiError::internal(e.to_string()))?;
        let id = record.id.to_string();
        self.store
            .write_state(vec![
                StateChange::put(RECORDS, id.clone(), value),
                StateChange::put(HASHES, record.hash.clone(), id.into_bytes()),
            ])
            .await
            .map_err(storage)?;
        Ok(record.body(None, Some(secret)))
    }

    /// The keys of `tenant`, oldest first.
    pub(crate) async fn list(&self, tenant: Option<&str>) -> Result<Vec<KeyBody>, ApiError> {
        let entries = bifrost_core::state::scan_all(&*self.store, RECORDS).await.map_err(storage)?;
        let used = bifrost_core::state::scan_all(&*self.store, USED).await.map_err(storage)?;
        let used: HashMap<String, Timestamp> = used
            .into_iter()
            .filter_map(|e| Some((e.key, std::str::from_utf8(&e.value).ok()?.parse().ok()?)))
            .collect();
        let mut keys = Vec::new();
        for entry in entries {
            let Ok(record) = serde_json::from_slice::<KeyRecord>(&entry.value) else {
                tracing::warn!(key = %entry.key, "an API key record does not decode; it is left out");
                continue;
            };
            if record.tenant.as_deref() == tenant {
                keys.push(record.body(used.get(&entry.key).copied(), None));
            }
        }
        Ok(keys)
    }

    /// The key `id` of `tenant`; another tenant's is as absent as a key that never was.
    async fn get(&self, id: &str, tenant: Option<&str>) -> Result<KeyRecord, ApiError> {
        let value =
            self.store.read_state(RECORDS, id).await.map_err(storage)?.ok_or_else(|| not_found(id))?;
        let record: KeyRecord =
            serde_json::from_slice(&value).map_err(|e| ApiError::internal(format!("API key {id}: {e}")))?;
        if record.tenant.as_deref() != tenant {
            return Err(not_found(id));
        }
        Ok(record)
    }

    /// Revokes `id`: refused here at once, on every other node within [`CACHE_TTL`].
    pub(crate) async fn revoke(&self, id: &str, tenant: Option<&str>) -> Result<KeyRecord, ApiError> {
        let record = self.get(id, tenant).await?;
        self.store
            .write_state(vec![
                StateChange::delete(RECORDS, id),
                StateChange::delete(HASHES, record.hash.clone()),
                StateChange::delete(USED, id),
            ])
            .await
            .map_err(storage)?;
        // This node refuses it at once; the others within the cache's lifetime.
        self.lock_cache().clear();
        Ok(record)
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Cached>> {
        self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The caller whose key's secret is `secret`, if the key exists and has not expired.
    pub(crate) async fn verify(&self, secret: &str, now: Timestamp) -> Result<Arc<Principal>, AuthError> {
        let hash = digest_secret(secret);
        let cached = self.lock_cache().get(&hash).filter(|(at, ..)| at.elapsed() < CACHE_TTL).cloned();
        let (_, expires_at, principal) = match cached {
            Some(cached) => cached,
            None => {
                let record = self.load(&hex(&hash)).await?;
                let principal = Arc::new(Principal {
                    tenant: record.tenant.clone(),
                    scopes: Scopes::of(record.scopes.iter().copied()),
                    restrict: record.restrict.as_ref().map(Restrict::from).unwrap_or_default(),
                    actor: Actor { kind: ActorKind::Key, id: Some(record.id.to_string()), sub: None },
                });
                let cached = (Instant::now(), record.expires_at, principal);
                let mut cache = self.lock_cache();
                if cache.len() >= CACHE_MAX {
                    cache.clear();
                }
                cache.insert(hash, cached.clone());
                cached
            }
        };
        if expires_at.is_some_and(|t| t <= now) {
            return Err(AuthError::new("the API key expired"));
        }
        if let Some(id) = &principal.actor.id {
            self.note_use(id);
        }
        Ok(principal)
    }

    async fn load(&self, hash: &str) -> Result<KeyRecord, AuthError> {
        let unknown = || AuthError::new("unknown or revoked API key");
        let unreachable = |e: bifrost_core::Error| {
            tracing::warn!(error = %e, "cannot read API keys");
            AuthError::new("the API keys cannot be read just now")
        };
        let id = self.store.read_state(HASHES, hash).await.map_err(unreachable)?.ok_or_else(unknown)?;
        let id = std::str::from_utf8(&id).map_err(|_| unknown())?;
        let value = self.store.read_state(RECORDS, id).await.map_err(unreachable)?.ok_or_else(unknown)?;
        let record: KeyRecord = serde_json::from_slice(&value).map_err(|_| unknown())?;
        // The index pointed here; the record must agree (a revoked key's index entry that
        // outlived a crash must not let its secret in).
        if !bool::from(record.hash.as_bytes().ct_eq(hash.as_bytes())) {
            return Err(unknown());
        }
        Ok(record)
    }

    /// Writes `last_used_at`, at most once a minute per key from this node, off the request.
    fn note_use(&self, id: &str) {
        {
            let mut used = self.used.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if used.get(id).is_some_and(|at| at.elapsed() < USED_EVERY) {
                return;
            }
            if used.len() >= CACHE_MAX {
                used.clear();
            }
            used.insert(id.to_owned(), Instant::now());
        }
        let id = id.to_owned();
        let store = Arc::clone(&self.store);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(async move {
            let change = StateChange::put(USED, id, Timestamp::now().to_string().into_bytes());
            if let Err(e) = store.write_state_unflushed(vec![change]).await {
                tracing::debug!(error = %e, "cannot note when an API key was last used");
            }
        });
    }
}
