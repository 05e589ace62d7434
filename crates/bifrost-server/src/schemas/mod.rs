//! The schema registry: JSON Schemas per tenant, event type and schema version, kept in the
//! store's state (scope `schemas`, key `tenant/type/version`) so every node on the store
//! shares them, and the validation of appended events against them.
//!
//! A schema is compiled once and cached with its type's other versions; a node re-reads a
//! type's versions at most every [`CACHE_TTL`] (at once when it registers one itself), so a
//! version registered on another node applies here within that time. Without any schema in
//! the store, an append costs one cached flag check.

pub(crate) mod compat;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bifrost_api::{CompatibilityBody, SchemaBody, SchemaRequest};
use bifrost_core::{DurableStore, EventType, NewEvent, StateChange, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::{ApiError, ProblemType};

const SCOPE: &str = "schemas";
/// How long a node trusts what it read of a type's schemas.
const CACHE_TTL: Duration = Duration::from_secs(2);
/// The state key's tenant part for the default tenant (not a tenant name's character).
const DEFAULT_TENANT: &str = "~";

/// `[schemas]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SchemasConfig {
    /// The compatibility of a new version that names none (`backward`).
    pub compatibility: CompatibilityBody,
    /// `schemas.unknown_version = "accept"`: an event whose version of a registered type has
    /// no schema is stored unchecked instead of refused.
    pub accept_unknown_versions: bool,
    /// `schemas.required`: events of a type with no schema are refused.
    pub required: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct SchemaRecord {
    #[serde(rename = "type")]
    event_type: String,
    version: u32,
    compatibility: CompatibilityBody,
    created_at: Timestamp,
    schema: Value,
}

impl SchemaRecord {
    fn body(&self, with_schema: bool) -> SchemaBody {
        SchemaBody {
            event_type: self.event_type.clone(),
            version: self.version,
            compatibility: self.compatibility,
            created_at: self.created_at.to_string(),
            schema: with_schema.then(|| self.schema.clone()),
        }
    }
}

struct Compiled {
    record: SchemaRecord,
    validator: jsonschema::Validator,
}

/// The versions of one type, compiled.
type Versions = BTreeMap<u32, Arc<Compiled>>;
/// Each type's versions by (tenant, type), with when they were read.
type TypeCache = HashMap<(String, String), (Instant, Arc<Versions>)>;

/// The registry of one store.
pub(crate) struct Registry {
    store: Arc<dyn DurableStore>,
    config: SchemasConfig,
    /// Whether the store holds any schema at all, and when that was read.
    any: Mutex<Option<(Instant, bool)>>,
    types: Mutex<TypeCache>,
}

fn tenant_key(tenant: Option<&str>) -> &str {
    tenant.unwrap_or(DEFAULT_TENANT)
}

fn type_prefix(tenant: Option<&str>, event_type: &str) -> String {
    format!("{}/{event_type}/", tenant_key(tenant))
}

fn storage(e: impl std::fmt::Display) -> ApiError {
    ApiError::unavailable(format!("the schema registry cannot be reached: {e}"))
}

fn compile(schema: &Value) -> Result<jsonschema::Validator, String> {
    jsonschema::options().with_draft(jsonschema::Draft::Draft202012).build(schema).map_err(|e| e.to_string())
}

/// One event to check: where it goes and what it is.
pub(crate) struct Checked<'a> {
    pub(crate) stream: &'a str,
    pub(crate) index: usize,
    pub(crate) event: &'a NewEvent,
}

impl Registry {
    pub(crate) fn new(store: Arc<dyn DurableStore>, config: SchemasConfig) -> Self {
        Self { store, config, any: Mutex::default(), types: Mutex::default() }
    }

    fn forget(&self, tenant: Option<&str>, event_type: &str) {
        *self.any.lock().unwrap_or_else(PoisonError::into_inner) = None;
        self.types
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(tenant_key(tenant).to_owned(), event_type.to_owned()));
    }

    /// Registers `version` of `event_type`: `Ok(true)` when new (201), `Ok(false)` when the
    /// same schema was registered already (200).
    pub(crate) async fn put(
        &self,
        tenant: Option<&str>,
        event_type: &str,
        version: &str,
        request: SchemaRequest,
    ) -> Result<(bool, SchemaBody), ApiError> {
        let event_type = EventType::new(event_type)?.as_str().to_owned();
        let version = parse_version(version)?;
        compile(&request.schema).map_err(|e| {
            ApiError::new(ProblemType::InvalidSchema, format!("the schema cannot be used: {e}"))
        })?;
        let compatibility = request.compatibility.unwrap_or(self.config.compatibility);
        let versions = self.load(tenant, &event_type).await?;
        if let Some(existing) = versions.get(&version) {
            let record = &existing.record;
            if record.schema == request.schema && record.compatibility == compatibility {
                return Ok((false, record.body(false)));
            }
            return Err(exists(&event_type, version));
        }
        if compatibility == CompatibilityBody::Backward
            && let Some((_, lower)) = versions.range(..version).next_back()
        {
            let problems = compat::backward(&lower.record.schema, &request.schema);
            if !problems.is_empty() {
                let errors: Vec<Value> =
                    problems.iter().map(|p| json!({"path": p.path, "message": p.message})).collect();
                return Err(ApiError::new(
                    ProblemType::SchemaIncompatible,
                    format!(
                        "version {version} of {event_type} would reject data valid under version {}",
                        lower.record.version
                    ),
                )
                .with("errors", Value::Array(errors)));
            }
        }
        let record = SchemaRecord {
            event_type: event_type.clone(),
            version,
            compatibility,
            created_at: Timestamp::now(),
            schema: request.schema,
        };
        let key = format!("{}{version:010}", type_prefix(tenant, &event_type));
        let value = serde_json::to_vec(&record).map_err(|e| ApiError::internal(e.to_string()))?;
        // Registered by nobody else meanwhile: two nodes racing on one version get one winner.
        let written = self
            .store
            .write_state(vec![
                StateChange::expect(SCOPE, key.clone(), None),
                StateChange::put(SCOPE, key, value),
            ])
            .await;
        self.forget(tenant, &event_type);
        match written {
            Ok(()) => Ok((true, record.body(false))),
            Err(bifrost_core::Error::StateConflict { .. }) => Err(exists(&event_type, version)),
            Err(e) => Err(storage(e)),
        }
    }

    /// The schemas of a tenant, by type and version.
    pub(crate) async fn list(&self, tenant: Option<&str>) -> Result<Vec<SchemaBody>, ApiError> {
        let prefix = format!("{}/", tenant_key(tenant));
        let mut out = Vec::new();
        for entry in self.scan(&prefix).await? {
            match serde_json::from_slice::<SchemaRecord>(&entry.1) {
                Ok(record) => out.push(record.body(false)),
                Err(e) => tracing::warn!(key = %entry.0, error = %e, "a stored schema does not decode"),
            }
        }
        Ok(out)
    }

    /// One schema, with its document.
    pub(crate) async fn get(
        &self,
        tenant: Option<&str>,
        event_type: &str,
        version: &str,
    ) -> Result<SchemaBody, ApiError> {
        let not_found = || {
            ApiError::new(
                ProblemType::SchemaNotFound,
                format!("no schema for {event_type} version {version}"),
            )
        };
        let Ok(version) = version.parse::<u32>() else { return Err(not_found()) };
        let key = format!("{}{version:010}", type_prefix(tenant, event_type));
        let value = self.store.read_state(SCOPE, &key).await.map_err(storage)?.ok_or_else(not_found)?;
        let record: SchemaRecord = serde_json::from_slice(&value)
            .map_err(|e| ApiError::internal(format!("a stored schema: {e}")))?;
        Ok(record.body(true))
    }

    /// Every `(key, value)` of the scope whose key starts with `prefix`.
    async fn scan(&self, prefix: &str) -> Result<Vec<(String, bytes::Bytes)>, ApiError> {
        let mut out = Vec::new();
        let mut after = prefix.to_owned();
        loop {
            let page = self.store.scan_state(SCOPE, Some(&after), 256).await.map_err(storage)?;
            let full = page.len() == 256;
            for entry in page {
                if !entry.key.starts_with(prefix) {
                    return Ok(out);
                }
                after.clone_from(&entry.key);
                out.push((entry.key, entry.value));
            }
            if !full {
                return Ok(out);
            }
        }
    }

    /// The compiled versions of a type (cached).
    async fn load(&self, tenant: Option<&str>, event_type: &str) -> Result<Arc<Versions>, ApiError> {
        let cache_key = (tenant_key(tenant).to_owned(), event_type.to_owned());
        if let Some((at, versions)) =
            self.types.lock().unwrap_or_else(PoisonError::into_inner).get(&cache_key)
            && at.elapsed() < CACHE_TTL
        {
            return Ok(Arc::clone(versions));
        }
        let mut versions = Versions::new();
        for (key, value) in self.scan(&type_prefix(tenant, event_type)).await? {
            let record: SchemaRecord = serde_json::from_slice(&value)
                .map_err(|e| ApiError::internal(format!("the stored schema {key}: {e}")))?;
            let validator = compile(&record.schema).map_err(|e| {
                ApiError::internal(format!("the stored schema {key} no longer compiles: {e}"))
            })?;
            versions.insert(record.version, Arc::new(Compiled { record, validator }));
        }
        let versions = Arc::new(versions);
        self.types
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(cache_key, (Instant::now(), Arc::clone(&versions)));
        Ok(versions)
    }

    /// Whether any schema exists (cached), so that a store without schemas pays nothing.
    async fn any(&self) -> Result<bool, ApiError> {
        if let Some((at, any)) = *self.any.lock().unwrap_or_else(PoisonError::into_inner)
            && at.elapsed() < CACHE_TTL
        {
            return Ok(any);
        }
        let any = !self.store.scan_state(SCOPE, None, 1).await.map_err(storage)?.is_empty();
        *self.any.lock().unwrap_or_else(PoisonError::into_inner) = Some((Instant::now(), any));
        Ok(any)
    }

    /// Checks `events` of `tenant`: every violation of every event is listed (422
    /// `schema-violation`), or the first event whose version has no schema (422
    /// `schema-not-registered`). Nothing is stored unless this passes.
    pub(crate) async fn check(&self, tenant: Option<&str>, events: &[Checked<'_>]) -> Result<(), ApiError> {
        if !self.config.required && !self.any().await? {
            return Ok(());
        }
        let mut errors = Vec::new();
        for checked in events {
            let event = checked.event;
            let event_type = event.event_type.as_str();
            let versions = self.load(tenant, event_type).await?;
            let not_registered = |why: String| {
                ApiError::new(ProblemType::SchemaNotRegistered, why)
                    .with("stream", checked.stream.into())
                    .with("index", checked.index.into())
            };
            let compiled = match versions.get(&event.schema_version) {
                Some(compiled) => compiled,
                None if versions.is_empty() && !self.config.required => continue,
                None if versions.is_empty() => {
                    return Err(not_registered(format!(
                        "{event_type} has no schema, and this server requires one for every type"
                    )));
                }
                None if self.config.accept_unknown_versions => continue,
                None => {
                    let known: Vec<String> = versions.keys().map(u32::to_string).collect();
                    return Err(not_registered(format!(
                        "{event_type} has no schema version {} (registered: {})",
                        event.schema_version,
                        known.join(", ")
                    )));
                }
            };
            let data: Value = serde_json::from_slice(&event.data).map_err(|e| {
                ApiError::invalid_request(format!("event {}: data is not JSON: {e}", checked.index))
            })?;
            for error in compiled.validator.iter_errors(&data) {
                errors.push(json!({
                    "stream": checked.stream,
                    "index": checked.index,
                    "path": error.instance_path().as_str(),
                    "message": error.to_string(),
                }));
            }
        }
        if errors.is_empty() {
            return Ok(());
        }
        Err(ApiError::new(
            ProblemType::SchemaViolation,
            format!("{} schema violation(s): nothing was stored", errors.len()),
        )
        .with("errors", Value::Array(errors)))
    }
}

fn exists(event_type: &str, version: u32) -> ApiError {
    ApiError::new(
        ProblemType::SchemaExists,
        format!(
            "version {version} of {event_type} is registered with another schema; register a new version"
        ),
    )
}

fn parse_version(version: &str) -> Result<u32, ApiError> {
    match version.parse::<u32>() {
        Ok(v) if v >= 1 => Ok(v),
        _ => Err(ApiError::invalid_argument(format!("version must be an integer >= 1, got {version:?}"))),
    }
}

/// The registry as in-bridges' check: a message whose event breaks its type's schema is a
/// dead letter, named with every violation; a registry it cannot read now is retried.
pub(crate) struct IngestSchemas(pub(crate) Arc<Registry>);

#[async_trait::async_trait]
impl bifrost_bridges::IngestCheck for IngestSchemas {
    async fn check(
        &self,
        tenant: Option<&str>,
        stream: &str,
        event: &NewEvent,
    ) -> Result<Option<String>, bifrost_core::Error> {
        let checked = [Checked { stream, index: 0, event }];
        let Err(error) = self.0.check(tenant, &checked).await else { return Ok(None) };
        match error.kind() {
            ProblemType::SchemaViolation => {
                let violations: Vec<String> = error
                    .extra("errors")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|e| {
                        format!(
                            "{}: {}",
                            e["path"].as_str().unwrap_or(""),
                            e["message"].as_str().unwrap_or("")
                        )
                    })
                    .collect();
                Ok(Some(format!("schema violation: {}", violations.join("; "))))
            }
            ProblemType::SchemaNotRegistered | ProblemType::InvalidRequest => {
                Ok(Some(error.detail().to_owned()))
            }
            _ => Err(bifrost_core::Error::Unavailable(format!("the schema registry: {}", error.detail()))),
        }
    }
}
