//! Upcasters: old stored events rewritten into the current schema on the way in.
//!
//! An upcaster takes the JSON payload of `(event type, schema version n)` and returns the
//! payload of version `n + 1`. They chain: a v1 event meets the v1→v2 upcaster, then the
//! v2→v3 one, and so on until none is registered for its version. The log is never
//! rewritten; every read (repository loads, projections, sagas) applies the same chain
//! before typed decoding.

use std::collections::HashMap;
use std::sync::Arc;

use bifrost_core::RecordedEvent;
use bytes::Bytes;
use serde_json::Value;

use crate::error::{Error, Result};

type UpcastFn = Arc<dyn Fn(Value) -> Result<Value, String> + Send + Sync>;

/// The registered upcasters, keyed by `(event type, schema version they read)`.
#[derive(Clone, Default)]
pub struct Upcasters {
    /// Per event type, the step that reads each version.
    steps: HashMap<String, HashMap<u32, UpcastFn>>,
}

impl std::fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut keys: Vec<_> =
            self.steps.iter().flat_map(|(t, steps)| steps.keys().map(move |v| (t, *v))).collect();
        keys.sort();
        f.debug_struct("Upcasters").field("steps", &keys).finish()
    }
}

impl Upcasters {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the step from `from_version` to `from_version + 1` of `event_type`.
    /// Registering the same step twice replaces the first.
    pub fn register(
        mut self,
        event_type: &str,
        from_version: u32,
        upcast: impl Fn(Value) -> Result<Value, String> + Send + Sync + 'static,
    ) -> Self {
        self.steps.entry(event_type.to_owned()).or_default().insert(from_version, Arc::new(upcast));
        self
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The event with its payload carried up the chain of registered steps, as far as it
    /// goes without a gap. An event with no step for its version is returned unchanged (its
    /// bytes are not touched); decoding then refuses a version the code does not read.
    pub fn upcast(&self, mut event: RecordedEvent) -> Result<RecordedEvent> {
        let Some(steps) = self.steps.get(event.event_type.as_str()) else { return Ok(event) };
        let mut value: Option<Value> = None;
        while let Some(step) = steps.get(&event.schema_version) {
            let fail = |reason: String| Error::Upcast {
                event_type: event.event_type.to_string(),
                from_version: event.schema_version,
                reason,
            };
            let current = match value.take() {
                Some(v) => v,
                None => serde_json::from_slice(&event.data)
                    .map_err(|e| fail(format!("the payload is not JSON: {e}")))?,
            };
            value = Some(step(current).map_err(fail)?);
            event.schema_version += 1;
        }
        if let Some(value) = value {
            let bytes = serde_json::to_vec(&value).map_err(|e| Error::encode("an upcast payload", e))?;
            event.data = Bytes::from(bytes);
        }
        Ok(event)
    }
}
