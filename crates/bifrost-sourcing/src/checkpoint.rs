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

/// The write applies only if the checkpoint is still `position` (`0`: none recorded): a
/// second reader of the same name that got there first makes it fail instead of applying
/// the same events twice.
pub(crate) fn expect(key: &str, position: Position) -> StateChange {
    let value = (position > 0).then(|| bytes::Bytes::copy_from_slice(&position.to_be_bytes()));
    StateChange::expect(SCOPE, key, value)
}

fn decode(bytes: &[u8]) -> Option<Position> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}
