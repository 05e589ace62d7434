//! The bridges of a store: their settings (`bridges` scope), their states (`bridge-state`),
//! and on each node a runner per enabled bridge that waits for, or holds, its lease.
//!
//! Every node runs the same loop: each second it reads the bridges and starts, restarts
//! (changed settings) or stops (deleted, disabled) its runners, so a change made through
//! any node holds everywhere within a second.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bifrost_api::{BridgeBody, BridgeRequest, BridgeStateBody, StartBody};
use bifrost_core::lease::Leases;
use bifrost_core::{DurableStore, StateChange, TenantScope};
use bytes::Bytes;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::dead_letters::{self, DeadLetter};
use crate::intake::IngestCheck;
use crate::runner::{BridgeState, Connector, Runner, STATE_SCOPE, lease_name, out_lag};
use crate::spec::{BridgeSpec, InvalidBridge, check_name, check_stored_name};

/// The scope of the bridges' settings.
const SPEC_SCOPE: &str = "bridges";
/// The bridges a node's configuration file names (key: the name): the API may not change
/// or delete them, on any node.
const MANAGED_SCOPE: &str = "bridges-managed";
/// How often a node looks for changed bridges.
const SYNC_EVERY: Duration = Duration::from_secs(1);

/// What a bridge call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error(transparent)]
    Invalid(#[from] InvalidBridge),
    #[error("no bridge named {0:?}")]
    NotFound(String),
    #[error("bridge {0:?} is set in the configuration file; change it there")]
    ConfigManaged(String),
    #[error("bridge {bridge:?} has no dead letter {id:?}")]
    DeadLetterNotFound { bridge: String, id: String },
    #[error(transparent)]
    Store(#[from] bifrost_core::Error),
}

struct Running {
    spec: BridgeSpec,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// The bridges of one store, as one node serves and runs them.
pub struct Bridges {
    store: Arc<dyn DurableStore>,
    leases: Leases,
    heartbeat: Duration,
    connector: Arc<dyn Connector>,
    check: Option<Arc<dyn IngestCheck>>,
    running: Mutex<HashMap<String, Running>>,
}

impl Bridges {
    /// `leases` names this node; `heartbeat` is how often a runner renews its lease (and a
    /// waiting one tries to take it).
    pub fn new(
        store: Arc<dyn DurableStore>,
        leases: Leases,
        heartbeat: Duration,
        connector: Arc<dyn Connector>,
    ) -> Self {
        Self { store, leases, heartbeat, connector, check: None, running: Mutex::new(HashMap::new()) }
    }

    /// In-bridges append only events that pass `check` as well (the schema registry); the
    /// others become dead letters.
    pub fn with_ingest_check(mut self, check: Arc<dyn IngestCheck>) -> Self {
        self.check = Some(check);
        self
    }

    /// Creates (`true`) or replaces a bridge. `start` counts only at creation. A bridge of
    /// the configuration file is [`BridgeError::ConfigManaged`].
    pub async fn put(&self, name: &str, request: BridgeRequest) -> Result<(bool, BridgeBody), BridgeError> {
        self.put_in(name, request, TenantScope::All).await
    }

    /// [`Self::put`] of a bridge inside `tenant` (whose streams it sends or appends to);
    /// `name` as the store keeps it (behind the tenant's prefix for a tenant's bridge).
    pub async fn put_in(
        &self,
        name: &str,
        request: BridgeRequest,
        tenant: TenantScope,
    ) -> Result<(bool, BridgeBody), BridgeError> {
        check_stored_name(name)?;
        self.refuse_managed(name).await?;
        self.write(name, request, tenant).await
    }

    /// Puts the bridges of this node's configuration file and marks them managed; a bridge
    /// the file named before but names no more is left as it is, now managed through the
    /// API (nothing is deleted because a file changed).
    pub async fn configure(&self, bridges: &[(String, BridgeRequest)]) -> Result<(), BridgeError> {
        for (name, request) in bridges {
            check_name(name)?;
            self.write(name, request.clone(), TenantScope::All).await?;
        }
        let managed = bifrost_core::state::scan_all(self.store.as_ref(), MANAGED_SCOPE).await?;
        let mut changes: Vec<StateChange> = managed
            .into_iter()
            .filter(|entry| !bridges.iter().any(|(name, _)| *name == entry.key))
            .map(|entry| {
                tracing::info!(bridge = %entry.key, "no longer in the configuration file; managed through the API now");
                StateChange::Delete { scope: MANAGED_SCOPE.into(), key: entry.key }
            })
            .collect();
        changes.extend(bridges.iter().map(|(name, _)| StateChange::Put {
            scope: MANAGED_SCOPE.into(),
            key: name.clone(),
            value: Bytes::from_static(b"{}"),
        }));
        if !changes.is_empty() {
            self.store.write_state(changes).await?;
        }
        Ok(())
    }

    async fn refuse_managed(&self, name: &str) -> Result<(), BridgeError> {
        match self.store.read_state(MANAGED_SCOPE, name).await? {
            Some(_) => Err(BridgeError::ConfigManaged(name.to_owned())),
            None => Ok(()),
        }
    }

    async fn write(
        &self,
        name: &str,
        request: BridgeRequest,
        tenant: TenantScope,
    ) -> Result<(bool, BridgeBody), BridgeError> {
        let spec = BridgeSpec::from_request(request)?.in_tenant(tenant);
        let existing = self.read_spec(name).await?;
        let value = serde_json::to_vec(&spec).map(Bytes::from).map_err(|e| internal(&e))?;
        let mut write = vec![StateChange::Put { scope: SPEC_SCOPE.into(), key: name.into(), value }];
        if existing.is_none() {
            let checkpoint = match spec.start {
                StartBody::Beginning => 0,
                StartBody::End => *self.store.head().borrow(),
                StartBody::Position(p) => p,
            };
            let state = BridgeState { checkpoint, ..BridgeState::default() };
            let value = serde_json::to_vec(&state).map(Bytes::from).map_err(|e| internal(&e))?;
            write.push(StateChange::Put { scope: STATE_SCOPE.into(), key: name.into(), value });
        }
        self.store.write_state(write).await?;
        self.sync().await?;
        Ok((existing.is_none(), self.get(name).await?))
    }

    pub async fn get(&self, name: &str) -> Result<BridgeBody, BridgeError> {
        check_stored_name(name)?;
        let spec = self.read_spec(name).await?.ok_or_else(|| BridgeError::NotFound(name.to_owned()))?;
        self.body(name, spec).await
    }

    /// Every bridge, by name.
    pub async fn list(&self) -> Result<Vec<BridgeBody>, BridgeError> {
        let mut out = Vec::new();
        for (name, spec) in self.specs().await? {
            out.push(self.body(&name, spec).await?);
        }
        Ok(out)
    }

    pub async fn delete(&self, name: &str) -> Result<(), BridgeError> {
        check_stored_name(name)?;
        if self.read_spec(name).await?.is_none() {
            return Err(BridgeError::NotFound(name.to_owned()));
        }
        self.refuse_managed(name).await?;
        self.store
            .write_state(vec![
                StateChange::Delete { scope: SPEC_SCOPE.into(), key: name.into() },
                StateChange::Delete { scope: STATE_SCOPE.into(), key: name.into() },
                StateChange::delete_scope(dead_letters::scope(name)),
            ])
            .await?;
        self.sync().await?;
        Ok(())
    }

    /// An in-bridge's dead letters, oldest first (an out-bridge has none).
    pub async fn dead_letters(&self, name: &str) -> Result<Vec<DeadLetter>, BridgeError> {
        check_stored_name(name)?;
        if self.read_spec(name).await?.is_none() {
            return Err(BridgeError::NotFound(name.to_owned()));
        }
        let entries = bifrost_core::state::scan_all(self.store.as_ref(), &dead_letters::scope(name)).await?;
        entries
            .into_iter()
            .map(|entry| serde_json::from_slice(&entry.value).map_err(|e| internal(&e)))
            .collect()
    }

    /// Forgets one dead letter.
    pub async fn delete_dead_letter(&self, name: &str, id: &str) -> Result<(), BridgeError> {
        check_stored_name(name)?;
        if self.read_spec(name).await?.is_none() {
            return Err(BridgeError::NotFound(name.to_owned()));
        }
        let scope = dead_letters::scope(name);
        let missing = || BridgeError::DeadLetterNotFound { bridge: name.to_owned(), id: id.to_owned() };
        if id.is_empty() || id.len() > bifrost_core::state::MAX_STATE_NAME_LEN {
            return Err(missing());
        }
        let Some(value) = self.store.read_state(&scope, id).await? else { return Err(missing()) };
        // Only if it is still the one read: a concurrent delete answers 404 once.
        let write = vec![StateChange::expect(scope.clone(), id, Some(value)), StateChange::delete(scope, id)];
        match self.store.write_state(write).await {
            Ok(()) => Ok(()),
            Err(bifrost_core::Error::StateConflict { .. }) => Err(missing()),
            Err(e) => Err(e.into()),
        }
    }

    /// Keeps this node's runners in line with the stored bridges until `shutdown`, then
    /// stops them (their leases are released for another node to take at once).
    pub fn start(self: &Arc<Self>, shutdown: CancellationToken) -> JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SYNC_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                }
                if let Err(e) = this.sync().await {
                    tracing::warn!(error = %e, "cannot read the bridges");
                }
            }
            let stopping: Vec<Running> =
                this.running.lock().map(|mut r| r.drain().map(|(_, v)| v).collect()).unwrap_or_default();
            for running in stopping {
                running.stop.cancel();
                let _ = running.task.await;
            }
        })
    }

    /// Starts, restarts and stops this node's runners to match the stored bridges.
    async fn sync(&self) -> Result<(), BridgeError> {
        let specs: HashMap<String, BridgeSpec> =
            self.specs().await?.into_iter().filter(|(_, spec)| spec.enabled).collect();
        let Ok(mut running) = self.running.lock() else { return Ok(()) };
        running.retain(|name, r| {
            let keep = specs.get(name).is_some_and(|spec| *spec == r.spec);
            if !keep {
                r.stop.cancel();
            }
            keep
        });
        for (name, spec) in specs {
            if running.contains_key(&name) {
                continue;
            }
            let stop = CancellationToken::new();
            let runner = Runner {
                store: Arc::clone(&self.store),
                name: name.clone(),
                spec: spec.clone(),
                leases: self.leases.clone(),
                heartbeat: self.heartbeat,
                connector: Arc::clone(&self.connector),
                check: self.check.clone(),
            };
            let task = tokio::spawn(runner.run(stop.clone()));
            running.insert(name, Running { spec, stop, task });
        }
        Ok(())
    }

    async fn body(&self, name: &str, spec: BridgeSpec) -> Result<BridgeBody, BridgeError> {
        let state: BridgeState = match self.store.read_state(STATE_SCOPE, name).await? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| internal(&e))?,
            None => BridgeState::default(),
        };
        // Only a node that holds the lease runs the bridge.
        let holder = self.leases.live().await?.into_iter().find(|(lease, _)| *lease == lease_name(name));
        let (node, run_state) = match holder {
            Some((_, lease)) if spec.enabled => (Some(lease.owner), state.state()),
            _ => (None, BridgeStateBody::Stopped),
        };
        let lag = if spec.is_inbound() {
            state.lag.unwrap_or(0)
        } else {
            out_lag(self.store.as_ref(), &spec.log_filter()?, state.checkpoint).await?
        };
        Ok(BridgeBody {
            name: name.to_owned(),
            config: spec.to_body(),
            state: run_state,
            node,
            checkpoint: state.checkpoint,
            lag,
            published: state.published,
            last_error: state.last_error,
        })
    }

    async fn read_spec(&self, name: &str) -> Result<Option<BridgeSpec>, BridgeError> {
        let Some(bytes) = self.store.read_state(SPEC_SCOPE, name).await? else { return Ok(None) };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| internal(&e))
    }

    async fn specs(&self) -> Result<Vec<(String, BridgeSpec)>, BridgeError> {
        let entries = bifrost_core::state::scan_all(self.store.as_ref(), SPEC_SCOPE).await?;
        Ok(entries
            .into_iter()
            .filter_map(|entry| match serde_json::from_slice::<BridgeSpec>(&entry.value) {
                Ok(spec) => Some((entry.key, spec)),
                Err(e) => {
                    tracing::warn!(bridge = %entry.key, error = %e, "a stored bridge is unreadable");
                    None
                }
            })
            .collect())
    }
}

fn internal(e: &dyn std::fmt::Display) -> BridgeError {
    BridgeError::Store(bifrost_core::Error::Internal(format!("bridge record: {e}")))
}
