//! The consumer groups of a store, as the server's API uses them: [`open`] picks the
//! engine. A store whose database several processes share (PostgreSQL) keeps its groups
//! there ([`StateStore::shared_groups`](bifrost_core::StateStore::shared_groups)); any other
//! store is opened by one process at a time, which runs the groups itself:
//! [`LocalGroups`], created, changed, listed and deleted by name, and started again from
//! their stored state when the process restarts.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use bifrost_core::group::{
    DeadLetterEntry, Fetch, GroupConfig, GroupEngine, GroupKind, GroupName, GroupStatus, Lease, LeaseToken,
    Put, ReplaySelection, Settled, Verdict,
};
use bifrost_core::{
    DurableStore, Error, EventId, EventStore, Position, Result, StateChange, StateStore, Timestamp,
};
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;

use crate::group::{ConsumerGroup, Scopes, decode, encode};

/// Where the group list of `kind` lives in the state space: one key per group.
fn list_scope(kind: GroupKind) -> &'static str {
    match kind {
        GroupKind::Group => "groups",
        GroupKind::Consumer => "consumers",
        GroupKind::Webhook => "webhook-groups",
    }
}

/// The consumer groups of the HTTP API in `store`: the store's shared engine when it has
/// one, else [`LocalGroups`] (every stored group started).
pub async fn open(store: Arc<dyn DurableStore>) -> Result<Arc<dyn GroupEngine>> {
    open_kind(store, GroupKind::Group).await
}

/// The groups of `kind` in `store`, as [`open`] picks them.
pub async fn open_kind(store: Arc<dyn DurableStore>, kind: GroupKind) -> Result<Arc<dyn GroupEngine>> {
    if let Some(shared) = store.shared_groups(kind) {
        return Ok(shared);
    }
    Ok(Arc::new(LocalGroups::open_kind(kind, store.clone(), store).await?))
}

#[derive(Serialize, Deserialize)]
struct GroupRecord {
    config: GroupConfig,
    created_at: Timestamp,
}

/// The consumer groups of a store that one process at a time opens, run in this process.
pub struct LocalGroups {
    store: Arc<dyn EventStore>,
    state: Arc<dyn StateStore>,
    kind: GroupKind,
    groups: RwLock<BTreeMap<GroupName, ConsumerGroup>>,
}

impl LocalGroups {
    /// Starts every consumer group of the HTTP API stored in `state`, reading events from
    /// `store`.
    pub async fn open(store: Arc<dyn EventStore>, state: Arc<dyn StateStore>) -> Result<Self> {
        Self::open_kind(GroupKind::Group, store, state).await
    }

    /// Starts every group of `kind` stored in `state`, reading events from `store`.
    pub async fn open_kind(
        kind: GroupKind,
        store: Arc<dyn EventStore>,
        state: Arc<dyn StateStore>,
    ) -> Result<Self> {
        let mut groups = BTreeMap::new();
        let mut after: Option<String> = None;
        loop {
            let page = state.scan_state(list_scope(kind), after.as_deref(), 100).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.key.clone());
            for entry in page {
                let name = GroupName::new(&entry.key)
                    .map_err(|e| Error::corrupt("a stored group name is invalid", e))?;
                let record: GroupRecord = decode(&name, "settings", &entry.value)?;
                let group = Self::start(kind, &name, record, &store, &state).await?;
                groups.insert(name, group);
            }
        }
        Ok(Self { store, state, kind, groups: RwLock::new(groups) })
    }

    async fn start(
        kind: GroupKind,
        name: &GroupName,
        record: GroupRecord,
        store: &Arc<dyn EventStore>,
        state: &Arc<dyn StateStore>,
    ) -> Result<ConsumerGroup> {
        let scopes = Scopes::of(kind, name);
        ConsumerGroup::open_in(
            name.clone(),
            scopes,
            record.config,
            store.clone(),
            state.clone(),
            record.created_at,
        )
        .await
    }

    /// The running group `name`.
    pub async fn get(&self, name: &GroupName) -> Result<ConsumerGroup> {
        self.groups.read().await.get(name).cloned().ok_or_else(|| Error::GroupNotFound(name.to_string()))
    }

    async fn save(&self, name: &GroupName, record: &GroupRecord, mut extra: Vec<StateChange>) -> Result<()> {
        extra.push(StateChange::put(list_scope(self.kind), name.as_str(), encode(record)?));
        self.state.write_state(extra).await
    }
}

#[async_trait]
impl GroupEngine for LocalGroups {
    /// Changing the filter starts a new run of the group from its checkpoint: leases still
    /// out end (handed out again, their attempt uncounted), nothing settled is delivered
    /// again.
    async fn put(&self, name: &GroupName, config: GroupConfig) -> Result<Put> {
        config.validate()?;
        let mut groups = self.groups.write().await;
        if let Some(group) = groups.get(name) {
            let old = group.config();
            let record = GroupRecord {
                config: GroupConfig { start: old.start, ..config },
                created_at: group.created_at(),
            };
            self.save(name, &record, Vec::new()).await?;
            // A new filter or order needs a new run (the ledger is built on both).
            if old.filter == record.config.filter && old.ordered == record.config.ordered {
                group.set_config(record.config);
                return Ok(Put::Updated);
            }
            group.close_releasing().await?;
            let group = Self::start(self.kind, name, record, &self.store, &self.state).await?;
            groups.insert(name.clone(), group);
            return Ok(Put::Updated);
        }
        // The start point is fixed now, in the same write as the group itself.
        let start = Scopes::of(self.kind, name).start(self.store.as_ref(), &config).await?;
        let record = GroupRecord { config, created_at: Timestamp::now() };
        self.save(name, &record, vec![start]).await?;
        let group = Self::start(self.kind, name, record, &self.store, &self.state).await?;
        groups.insert(name.clone(), group);
        Ok(Put::Created)
    }

    async fn status(&self, name: &GroupName) -> Result<GroupStatus> {
        self.get(name).await?.status().await
    }

    async fn list(&self) -> Result<Vec<GroupName>> {
        Ok(self.groups.read().await.keys().cloned().collect())
    }

    async fn delete(&self, name: &GroupName) -> Result<()> {
        let mut groups = self.groups.write().await;
        let group = groups.remove(name).ok_or_else(|| Error::GroupNotFound(name.to_string()))?;
        group.close().await?;
        let scopes = Scopes::of(self.kind, name);
        self.state
            .write_state(vec![
                StateChange::delete(list_scope(self.kind), name.as_str()),
                StateChange::delete_scope(scopes.cursor),
                StateChange::delete_scope(scopes.dead_letters),
            ])
            .await
    }

    async fn fetch(&self, name: &GroupName, fetch: Fetch<'_>) -> Result<Vec<Lease>> {
        let deadline = tokio::time::Instant::now() + fetch.wait;
        let mut group = self.get(name).await?;
        // A fetch can outlive its group run: a group whose filter changed (a new run under
        // the same name) is fetched from again; one that was deleted is not found.
        for _ in 0..2 {
            let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
            match group.fetch(Fetch { wait, ..fetch }).await {
                Err(Error::Unavailable(why)) => {
                    let current = self.get(name).await?;
                    if current.same_run(&group) {
                        return Err(Error::Unavailable(why));
                    }
                    group = current;
                }
                done => return done,
            }
        }
        Ok(Vec::new())
    }

    async fn settle(
        &self,
        name: &GroupName,
        leases: &[LeaseToken],
        verdict: Verdict<'_>,
        deferred: bool,
    ) -> Result<Settled> {
        self.get(name).await?.settle(leases, verdict, deferred).await
    }

    async fn dead_letters(
        &self,
        name: &GroupName,
        after: Option<Position>,
        limit: usize,
    ) -> Result<Vec<DeadLetterEntry>> {
        self.get(name).await?.dead_letters(after, limit).await
    }

    async fn replay(&self, name: &GroupName, selection: ReplaySelection) -> Result<usize> {
        self.get(name).await?.replay(selection).await
    }

    async fn discard(&self, name: &GroupName, id: EventId) -> Result<bool> {
        self.get(name).await?.discard(id).await
    }

    async fn close(&self) -> Result<()> {
        let groups = self.groups.read().await;
        let mut result = Ok(());
        for group in groups.values() {
            if let Err(e) = group.close().await {
                result = Err(e);
            }
        }
        result
    }
}
