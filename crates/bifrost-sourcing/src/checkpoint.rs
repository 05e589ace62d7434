//! Checkpoints of the toolkit's log readers (projections, sagas), kept in a store's durable
//! state space.

use bifrost_core::{Position, StateChange, StateStore};

use crate::error::{Error, Result};

pub(crate) const SCOPE: &str = "sourcing/checkpoints";

/// The position a reader has fully processed, `0` when it has none.
pub(crate) async fn load(state: &dyn StateStore, key: &str) -> Result<Position> {
    match state.read_state(SCOPE, key).await? {
        None => Ok(0),
        Some(bytes) => {
            decode(&bytes).ok_or_else(|| Error::corrupt(format!("checkpoint {key}"), "not 8 bytes"))
        }
    }
}

pub(crate) fn put(key: &str, position: Position) -> StateChange {
    StateChange::put(SCOPE, key, position.to_be_bytes().to_vec())
}

fn decode(bytes: &[u8]) -> Option<Position> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}
