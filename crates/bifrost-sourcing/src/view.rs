//! Keyed views: a read model of one value per key, kept in a store's state space and
//! updated atomically with the projection's checkpoint.

use std::collections::{HashMap, HashSet};
use std::marker::PhantomData;
use std::sync::Arc;

use async_trait::async_trait;
use bifrost_core::{LogFilter, Position, RecordedEvent, StateChange, StateStore};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::checkpoint;
use crate::error::{Error, Result};
use crate::event::{DomainEvent, decode};
use crate::projection::Projection;

/// One value of a keyed read model.
pub trait View: Serialize + DeserializeOwned + Send + Sync + 'static {
    type Event: DomainEvent;

    /// The key of the view an event updates (`None`: it updates none). Keys are anything
    /// that fits a string: an order id, a customer and a day, a project.
    fn key(event: &Self::Event, recorded: &RecordedEvent) -> Option<String>;

    /// The view after `event`: `None` removes it.
    fn evolve(view: Option<Self>, event: &Self::Event, recorded: &RecordedEvent) -> Option<Self>
    where
        Self: Sized;
}

/// A projection into views of type `V`, one per key.
pub struct ViewProjection<V: View> {
    name: String,
    state: Arc<dyn StateStore>,
    filter: LogFilter,
    scope: String,
    checkpoint_key: String,
    _view: PhantomData<fn() -> V>,
}

impl<V: View> ViewProjection<V> {
    /// `filter` must select only events that decode as `V::Event`: one that does not
    /// stops the projection with an error (its status shows it) until the code is fixed.
    pub fn new(name: &str, state: Arc<dyn StateStore>, filter: LogFilter) -> Self {
        Self {
            name: name.to_owned(),
            state,
            filter,
            scope: format!("sourcing/views/{name}"),
            checkpoint_key: format!("projection/{name}"),
            _view: PhantomData,
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<V>> {
        match self.state.read_state(&self.scope, key).await? {
            None => Ok(None),
            Some(bytes) => self.decode_view(key, &bytes).map(Some),
        }
    }

    /// Up to `limit` views in key order, after `after` when given.
    pub async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<(String, V)>> {
        let entries = self.state.scan_state(&self.scope, after, limit).await?;
        entries.into_iter().map(|e| self.decode_view(&e.key, &e.value).map(|v| (e.key, v))).collect()
    }

    fn decode_view(&self, key: &str, bytes: &[u8]) -> Result<V> {
        serde_json::from_slice(bytes).map_err(|e| Error::corrupt(format!("view {}/{key}", self.name), e))
    }
}

#[async_trait]
impl<V: View> Projection for ViewProjection<V> {
    fn name(&self) -> &str {
        &self.name
    }

    fn filter(&self) -> LogFilter {
        self.filter.clone()
    }

    async fn checkpoint(&self) -> Result<Position> {
        checkpoint::load(self.state.as_ref(), &self.checkpoint_key).await
    }

    async fn apply(&self, events: Vec<RecordedEvent>, from: Position, to: Position) -> Result<()> {
        // The batch's views, read once (all at once) and written once.
        let mut decoded = Vec::with_capacity(events.len());
        let mut order: Vec<String> = Vec::new();
        let mut seen = HashSet::new();
        for recorded in &events {
            let event: V::Event = decode(recorded)?;
            let key = V::key(&event, recorded);
            if let Some(key) = &key
                && seen.insert(key.clone())
            {
                order.push(key.clone());
            }
            decoded.push((event, key));
        }
        let current = futures::future::try_join_all(order.iter().map(|key| self.get(key))).await?;
        let mut touched: HashMap<String, Option<V>> = order.iter().cloned().zip(current).collect();
        for ((event, key), recorded) in decoded.into_iter().zip(&events) {
            let Some(key) = key else { continue };
            let view = touched.remove(&key).flatten();
            touched.insert(key, V::evolve(view, &event, recorded));
        }
        let mut changes = Vec::with_capacity(order.len() + 2);
        changes.push(checkpoint::expect(&self.checkpoint_key, from));
        for key in order {
            let change = match touched.remove(&key).flatten() {
                Some(view) => {
                    let bytes = serde_json::to_vec(&view)
                        .map_err(|e| Error::encode(format!("view {}/{key}", self.name), e))?;
                    StateChange::put(self.scope.clone(), key, bytes)
                }
                None => StateChange::delete(self.scope.clone(), key),
            };
            changes.push(change);
        }
        changes.push(checkpoint::put(&self.checkpoint_key, to));
        Ok(self.state.write_state(changes).await?)
    }

    async fn reset(&self) -> Result<()> {
        Ok(self
            .state
            .write_state(vec![
                StateChange::delete_scope(self.scope.clone()),
                StateChange::delete(checkpoint::SCOPE, self.checkpoint_key.clone()),
            ])
            .await?)
    }
}
