//! Real-time: HTTP publishes to WebSocket channels, room presence and bridging rules.
//!
//! The WebSocket frames themselves are described in the API contract; these are the JSON
//! bodies of the HTTP routes under `/v1/realtime`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

/// The order in which a connection's queued frames go out: `high` overtakes `normal`
/// overtakes `low` (one subscription's events keep their position order).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum PriorityBody {
    High,
    #[default]
    Normal,
    Low,
}

impl PriorityBody {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::High => "high",
            Self::Normal => "normal",
            Self::Low => "low",
        }
    }
}

/// Where a publish goes: rooms, users and streams (`room:`, `user:`, `stream:` channels), or
/// the seed's form `{"type": "project", "id": "101"}`, which is the room `project:101`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PublishTargetRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streams: Option<Vec<String>>,
    /// With `id`: the room `{type}:{id}`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// Who a message comes from, as its receivers see it.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PublishSourceBody {
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub workspace_id: Option<String>,
}

/// `POST /v1/realtime/publish`.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    pub target: PublishTargetRequest,
    /// Connections of these users receive nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude_users: Option<Vec<String>>,
    /// An event type (dot-separated segments).
    #[serde(rename = "type")]
    pub event_type: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Value))]
    pub data: Box<RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<PublishSourceBody>,
    /// Default `normal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<PriorityBody>,
    /// Stored as an event (default false: sent to who is connected now, never stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent: Option<bool>,
    /// The stream of a persistent publish; default `realtime-{room}` for one room, else
    /// `realtime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
}

/// `202`: an ephemeral publish went out.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PublishedBody {
    pub message_id: String,
}

/// `201`: a persistent publish is stored.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StoredPublishBody {
    pub event_id: String,
    pub stream: String,
    pub position: u64,
}

/// One connection of a user in a room.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PresenceConnectionBody {
    pub connection_id: String,
    /// RFC 3339.
    pub joined_at: String,
}

/// A user in a room.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PresenceUserBody {
    pub user_id: String,
    /// The `info` claim of the user's token, or null.
    pub info: Value,
    pub connections: Vec<PresenceConnectionBody>,
}

/// `GET /v1/realtime/rooms/{room}/presence`: who is in a room, on every node.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PresenceBody {
    pub room: String,
    pub users: Vec<PresenceUserBody>,
    pub user_count: usize,
    pub connection_count: usize,
}

/// `PUT /v1/realtime/bridges/{name}`: a rule that sends stored events to rooms and users.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RealtimeBridgeRequest {
    /// Topic patterns over the event type; default `["#"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub types: Option<Vec<String>>,
    /// Only streams of this category; default any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// Room templates, e.g. `project:{data.project_id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Vec<String>>,
    /// User templates, e.g. `{data.assignee}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<Vec<String>>,
    /// User templates whose connections receive nothing, e.g. `{metadata.user_id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude_users: Option<Vec<String>>,
    /// Default `normal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<PriorityBody>,
    /// Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// A webhook transform: the frame gets `"integration": <the envelope>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<Value>,
}

/// A bridging rule, every field filled in.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RealtimeBridgeBody {
    pub name: String,
    pub types: Vec<String>,
    pub category: Option<String>,
    pub rooms: Vec<String>,
    pub users: Vec<String>,
    pub exclude_users: Vec<String>,
    pub priority: PriorityBody,
    pub enabled: bool,
    pub transform: Option<Value>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

/// `GET /v1/realtime/bridges`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RealtimeBridgeListBody {
    pub bridges: Vec<RealtimeBridgeBody>,
}
