//! Bridging rules: stored events that match a rule go as `event` frames to the `room:` and
//! `user:` channels its templates render (`project:{data.project_id}`).
//!
//! Rules live in the store's state space (scope `realtime-bridges`), so every node that shares
//! the store serves the same ones: a change applies at once on the node that made it and
//! within a second on the others (each reloads them every second).

use std::sync::{Arc, RwLock};

use bifrost_api::{ProblemType, RealtimeBridgeBody, RealtimeBridgeRequest};
use bifrost_core::{Category, DurableStore, RecordedEvent, StateChange, Timestamp, TypePattern};
use bifrost_webhooks::render::{self, ContentMode, Source, TargetTemplate, Targets, Transform};

use super::channel::{check_room, check_user};
use super::route::Route;
use crate::error::ApiError;

const SCOPE: &str = "realtime-bridges";

/// A rule, compiled.
#[derive(Clone, Debug)]
pub(crate) struct Bridge {
    body: RealtimeBridgeBody,
    types: Vec<TypePattern>,
    category: Option<Category>,
    rooms: Vec<TargetTemplate>,
    users: Vec<TargetTemplate>,
    exclude: Vec<TargetTemplate>,
    transform: Option<Transform>,
}

impl Bridge {
    fn compile(body: RealtimeBridgeBody) -> Result<Self, String> {
        let types = body
            .types
            .iter()
            .map(|t| TypePattern::new(t).map_err(|e| format!("types: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let category =
            body.category.as_deref().map(Category::new).transpose().map_err(|e| format!("category: {e}"))?;
        let templates = |field: &str, texts: &[String]| {
            texts
                .iter()
                .map(|t| TargetTemplate::parse(t).map_err(|e| format!("{field}: {t:?}: {e}")))
                .collect::<Result<Vec<_>, _>>()
        };
        let rooms = templates("rooms", &body.rooms)?;
        let users = templates("users", &body.users)?;
        let exclude = templates("exclude_users", &body.exclude_users)?;
        if rooms.is_empty() && users.is_empty() {
            return Err("a bridge needs at least one of rooms and users".into());
        }
        let transform = body.transform.as_ref().map(Transform::from_json).transpose()?;
        Ok(Self { body, types, category, rooms, users, exclude, transform })
    }

    /// The routes of `event` under this rule (none when it is disabled or does not match).
    pub(crate) fn routes(&self, event: &RecordedEvent, add: &mut dyn FnMut(Route)) {
        if !self.body.enabled
            || !self.types.iter().any(|t| t.matches(event.event_type.as_str()))
            || self.category.as_ref().is_some_and(|c| c.as_str() != event.stream.category())
        {
            return;
        }
        let source = Source::from_event(event);
        let targets = Targets::new(&source);
        let render_all = |templates: &[TargetTemplate]| targets.render(templates);
        let exclude: Arc<[String]> = Arc::from(render_all(&self.exclude));
        let integration = self.transform.as_ref().and_then(|transform| {
            match render::render(&source, ContentMode::Bifrost, Some(transform)) {
                Ok(rendered) => Some(rendered.body),
                Err(e) => {
                    tracing::debug!(bridge = %self.body.name, error = %e, "bridge transform failed");
                    None
                }
            }
        });
        let mut route = |channel: String| {
            add(Route {
                channel,
                priority: self.body.priority,
                exclude: exclude.clone(),
                integration: integration.clone(),
            });
        };
        for room in render_all(&self.rooms) {
            if check_room(&room).is_ok() {
                route(format!("room:{room}"));
            }
        }
        for user in render_all(&self.users) {
            if check_user(&user).is_ok() {
                route(format!("user:{user}"));
            }
        }
    }
}

/// The rules of a store, and this node's compiled copy of them.
pub(crate) struct Bridges {
    store: Arc<dyn DurableStore>,
    current: RwLock<Arc<Vec<Bridge>>>,
}

impl Bridges {
    pub(crate) fn new(store: Arc<dyn DurableStore>) -> Self {
        Self { store, current: RwLock::default() }
    }

    /// The rules as this node last loaded them.
    pub(crate) fn current(&self) -> Arc<Vec<Bridge>> {
        self.current.read().map(|c| Arc::clone(&c)).unwrap_or_default()
    }

    /// Loads every rule from the store.
    pub(crate) async fn reload(&self) -> bifrost_core::Result<()> {
        let mut loaded = Vec::new();
        for entry in bifrost_core::state::scan_all(self.store.as_ref(), SCOPE).await? {
            match serde_json::from_slice::<RealtimeBridgeBody>(&entry.value)
                .map_err(|e| e.to_string())
                .and_then(Bridge::compile)
            {
                Ok(bridge) => loaded.push(bridge),
                Err(e) => tracing::warn!(bridge = %entry.key, error = %e, "a stored bridge is unusable"),
            }
        }
        if let Ok(mut current) = self.current.write() {
            *current = Arc::new(loaded);
        }
        Ok(())
    }

    pub(crate) async fn put(
        &self,
        name: &str,
        request: RealtimeBridgeRequest,
    ) -> Result<(bool, RealtimeBridgeBody), ApiError> {
        check_name(name)?;
        let existing = self.read(name).await?;
        let now = Timestamp::now().to_string();
        let body = RealtimeBridgeBody {
            name: name.to_owned(),
            types: request.types.unwrap_or_else(|| vec!["#".to_owned()]),
            category: request.category,
            rooms: request.rooms.unwrap_or_default(),
            users: request.users.unwrap_or_default(),
            exclude_users: request.exclude_users.unwrap_or_default(),
            priority: request.priority.unwrap_or_default(),
            enabled: request.enabled.unwrap_or(true),
            transform: request.transform,
            created_at: existing.as_ref().map_or_else(|| now.clone(), |b| b.created_at.clone()),
            updated_at: now,
        };
        Bridge::compile(body.clone()).map_err(ApiError::invalid_argument)?;
        let value = serde_json::to_vec(&body).map_err(|e| ApiError::internal(e.to_string()))?;
        self.store
            .write_state(vec![StateChange::Put {
                scope: SCOPE.into(),
                key: name.into(),
                value: value.into(),
            }])
            .await?;
        self.reload_or_warn().await;
        Ok((existing.is_none(), body))
    }

    pub(crate) async fn get(&self, name: &str) -> Result<RealtimeBridgeBody, ApiError> {
        check_name(name)?;
        self.read(name).await?.ok_or_else(|| not_found(name))
    }

    pub(crate) async fn list(&self) -> Result<Vec<RealtimeBridgeBody>, ApiError> {
        let entries = bifrost_core::state::scan_all(self.store.as_ref(), SCOPE).await?;
        Ok(entries.into_iter().filter_map(|e| serde_json::from_slice(&e.value).ok()).collect())
    }

    pub(crate) async fn delete(&self, name: &str) -> Result<(), ApiError> {
        check_name(name)?;
        if self.read(name).await?.is_none() {
            return Err(not_found(name));
        }
        self.store.write_state(vec![StateChange::Delete { scope: SCOPE.into(), key: name.into() }]).await?;
        self.reload_or_warn().await;
        Ok(())
    }

    async fn read(&self, name: &str) -> Result<Option<RealtimeBridgeBody>, ApiError> {
        let Some(value) = self.store.read_state(SCOPE, name).await? else { return Ok(None) };
        let body = serde_json::from_slice(&value)
            .map_err(|e| ApiError::internal(format!("stored bridge {name:?} does not decode: {e}")))?;
        Ok(Some(body))
    }

    async fn reload_or_warn(&self) {
        if let Err(e) = self.reload().await {
            tracing::warn!(error = %e, "cannot reload the realtime bridges");
        }
    }
}

fn check_name(name: &str) -> Result<(), ApiError> {
    bifrost_bridges::spec::check_name(name).map_err(|e| ApiError::invalid_argument(e.0))
}

fn not_found(name: &str) -> ApiError {
    ApiError::new(ProblemType::BridgeNotFound, format!("no realtime bridge named {name:?}"))
        .with("bridge", serde_json::Value::String(name.to_owned()))
}
