//! Probes.

use serde::{Deserialize, Serialize};

/// `GET /healthz` and `GET /readyz`: `{"status": "ok"}`, `{"status": "ready"}`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatusBody {
    pub status: String,
}
