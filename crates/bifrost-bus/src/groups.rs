//! The consumer groups of a store: created, changed, listed and deleted by name, and
//! started again from their stored state when the process restarts.

use std::collections::BTreeMap;
use std::sync::Arc;

use bifrost_core::{DurableStore, Error, EventStore, Result, StateChange, StateStore, Timestamp};
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;

use crate::config::{GroupConfig, GroupName};
use crate::group::{ConsumerGroup, Scopes, encode};

/// Where the group list lives in the state space: one key per group.
const GROUPS_SCOPE: &str = "groups";

#[derive(Serialize, Deserialize)]
struct GroupRecord {
    config: GroupConfig,
    created_at: Timestamp,
}

/// Every consumer group of one store.
pub struct Groups {
    store: Arc<dyn EventStore>,
    state: Arc<dyn StateStore>,
    groups: RwLock<BTreeMap<GroupName, (ConsumerGroup, Timestamp)>>,
}

/// Whether [`Groups::put`] created the group or changed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Put {
    Created,
    Updated,
}

impl Groups {
    /// Starts every group stored in `store`.
    pub async fn open(store: Arc<dyn DurableStore>) -> Result<Self> {
        Self::open_parts(store.clone(), store).await
    }

    /// Starts every group stored in `state`, reading events from `store`.
    pub async fn open_parts(store: Arc<dyn EventStore>, state: Arc<dyn StateStore>) -> Result<Self> {
        let mut groups = BTreeMap::new();
        let mut after: Option<String> = None;
        loop {
            let page = state.scan_state(GROUPS_SCOPE, after.as_deref(), 100).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.key.clone());
            for entry in page {
                let name = GroupName::new(&entry.key)?;
                let record: GroupRecord =
                    serde_json::from_slice(&entry.value).map_err(|e| Error::Corrupt {
                        message: format!("group {name}: unreadable settings: {e}"),
                        source: None,
                    })?;
                let group =
                    ConsumerGroup::open(name.clone(), record.config, store.clone(), state.clone()).await?;
                groups.insert(name, (group, record.created_at));
            }
        }
        Ok(Self { store, state, groups: RwLock::new(groups) })
    }

    /// Creates a group, or changes an existing one's settings (`start` counts only at
    /// creation). Changing the filter restarts the group's delivery from its checkpoint:
    /// leases still out expire, nothing settled is delivered again.
    pub async fn put(&self, name: GroupName, config: GroupConfig) -> Result<(ConsumerGroup, Put)> {
        config.validate()?;
        let mut groups = self.groups.write().await;
        if let Some((group, created_at)) = groups.get(&name) {
            let old = group.config();
            let config = GroupConfig { start: old.start, ..config };
            self.save(&name, &config, *created_at, Vec::new()).await?;
            if old.filter == config.filter {
                group.set_config(config);
                return Ok((group.clone(), Put::Updated));
            }
            let created_at = *created_at;
            group.close().await?;
            let group =
                ConsumerGroup::open(name.clone(), config, self.store.clone(), self.state.clone()).await?;
            groups.insert(name, (group.clone(), created_at));
            return Ok((group, Put::Updated));
        }
        // The start point is fixed now, in the same write as the group itself.
        let start = Scopes::group(&name).start(self.store.as_ref(), &config).await?;
        let created_at = Timestamp::now();
        self.save(&name, &config, created_at, vec![start]).await?;
        let group = ConsumerGroup::open(name.clone(), config, self.store.clone(), self.state.clone()).await?;
        groups.insert(name, (group.clone(), created_at));
        Ok((group, Put::Created))
    }

    async fn save(
        &self,
        name: &GroupName,
        config: &GroupConfig,
        created_at: Timestamp,
        mut extra: Vec<StateChange>,
    ) -> Result<()> {
        let record = encode(&GroupRecord { config: config.clone(), created_at })?;
        extra.push(StateChange::put(GROUPS_SCOPE, name.as_str(), record));
        self.state.write_state(extra).await
    }

    pub async fn get(&self, name: &GroupName) -> Option<ConsumerGroup> {
        self.groups.read().await.get(name).map(|(g, _)| g.clone())
    }

    /// When the group was created.
    pub async fn created_at(&self, name: &GroupName) -> Option<Timestamp> {
        self.groups.read().await.get(name).map(|(_, t)| *t)
    }

    /// Every group, in name order.
    pub async fn list(&self) -> Vec<ConsumerGroup> {
        self.groups.read().await.values().map(|(g, _)| g.clone()).collect()
    }

    /// Stops and forgets a group, its cursor and its dead letters. `false` when unknown.
    pub async fn delete(&self, name: &GroupName) -> Result<bool> {
        let mut groups = self.groups.write().await;
        let Some((group, _)) = groups.remove(name) else { return Ok(false) };
        group.close().await?;
        let scopes = Scopes::group(name);
        self.state
            .write_state(vec![
                StateChange::delete(GROUPS_SCOPE, name.as_str()),
                StateChange::delete_scope(scopes.cursor),
                StateChange::delete_scope(scopes.dead_letters),
            ])
            .await?;
        Ok(true)
    }

    /// Stops every group, writing what is not written yet.
    pub async fn close(&self) -> Result<()> {
        let groups = self.groups.read().await;
        let mut result = Ok(());
        for (group, _) in groups.values() {
            if let Err(e) = group.close().await {
                result = Err(e);
            }
        }
        result
    }
}
