//! The schema registry: JSON Schemas (2020-12) per event type and schema version.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How a new version must relate to the highest lower one.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CompatibilityBody {
    /// Data valid under the highest lower version stays valid under this one.
    #[default]
    Backward,
    /// No check.
    None,
}

/// `PUT /v1/schemas/{type}/{version}`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SchemaRequest {
    /// A JSON Schema (2020-12); no remote `$ref`.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub schema: Value,
    /// Default: the server's `schemas.compatibility` (`backward`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compatibility: Option<CompatibilityBody>,
}

/// A registered schema; `schema` only when one is asked for by type and version.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SchemaBody {
    #[serde(rename = "type")]
    pub event_type: String,
    pub version: u32,
    pub compatibility: CompatibilityBody,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub schema: Option<Value>,
}

/// `GET /v1/schemas`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SchemaListBody {
    pub schemas: Vec<SchemaBody>,
}
