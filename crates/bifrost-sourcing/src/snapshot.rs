//! Snapshots: an aggregate's state at a version, so a load reads only the newer events.
//!
//! A snapshot is keyed by its stream and carries the stream version it covers and the
//! schema version of the state's encoding. A snapshot whose schema version is not the
//! current one, or that fails to decode, is ignored: the load replays the whole stream, so
//! changing the state type never breaks a load.

use std::sync::Arc;

use async_trait::async_trait;
use bifrost_core::{StateChange, StateStore, StreamName, Version};
use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub stream: StreamName,
    /// The last stream version folded into `state`.
    pub version: Version,
    /// The version of the state's encoding.
    pub schema_version: u32,
    /// The state, encoded (JSON).
    pub state: Bytes,
}

/// Where snapshots are kept. One (the newest saved) per stream.
#[async_trait]
pub trait SnapshotStore: Send + Sync + 'static {
    async fn load(&self, stream: &StreamName) -> Result<Option<Snapshot>>;
    async fn save(&self, snapshot: &Snapshot) -> Result<()>;
    async fn delete(&self, stream: &StreamName) -> Result<()>;
}

/// Snapshots kept in a store's durable state space (every Bifrost backend has one).
#[derive(Clone)]
pub struct StateSnapshots {
    state: Arc<dyn StateStore>,
}

const SCOPE: &str = "sourcing/snapshots";
/// `version` (8 bytes) and `schema_version` (4 bytes) before the state.
const HEADER: usize = 12;

impl StateSnapshots {
    pub fn new(state: Arc<dyn StateStore>) -> Self {
        Self { state }
    }
}

#[async_trait]
impl SnapshotStore for StateSnapshots {
    async fn load(&self, stream: &StreamName) -> Result<Option<Snapshot>> {
        let Some(value) = self.state.read_state(SCOPE, stream.as_str()).await? else { return Ok(None) };
        if value.len() < HEADER {
            return Err(Error::corrupt(format!("snapshot of {stream}"), "shorter than its header"));
        }
        let mut version = [0u8; 8];
        version.copy_from_slice(&value[..8]);
        let mut schema_version = [0u8; 4];
        schema_version.copy_from_slice(&value[8..HEADER]);
        Ok(Some(Snapshot {
            stream: stream.clone(),
            version: u64::from_be_bytes(version),
            schema_version: u32::from_be_bytes(schema_version),
            state: value.slice(HEADER..),
        }))
    }

    async fn save(&self, snapshot: &Snapshot) -> Result<()> {
        let mut value = BytesMut::with_capacity(HEADER + snapshot.state.len());
        value.put_u64(snapshot.version);
        value.put_u32(snapshot.schema_version);
        value.put_slice(&snapshot.state);
        let change = StateChange::put(SCOPE, snapshot.stream.as_str(), value.freeze());
        Ok(self.state.write_state(vec![change]).await?)
    }

    async fn delete(&self, stream: &StreamName) -> Result<()> {
        Ok(self.state.write_state(vec![StateChange::delete(SCOPE, stream.as_str())]).await?)
    }
}
