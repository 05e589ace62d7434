//! Publishes: to rooms, users and streams, ephemeral (sent to who is connected, never
//! stored) or persistent (one stored event whose `metadata.realtime` says where it goes).

use axum::extract::ws::Utf8Bytes;
use bifrost_api::{PriorityBody, PublishRequest, PublishSourceBody};
use bifrost_core::json_out::write_str;
use bifrost_core::{EventType, StreamName};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::channel::{check_room, check_user};
use super::frames;
use super::route::{RealtimeMeta, Targets};
use crate::error::ApiError;

/// A checked publish.
pub(crate) struct Publish {
    pub(crate) targets: Targets,
    pub(crate) exclude_users: Vec<String>,
    pub(crate) event_type: EventType,
    pub(crate) data: Box<RawValue>,
    pub(crate) source: PublishSourceBody,
    pub(crate) priority: PriorityBody,
    pub(crate) persistent: bool,
    /// Where a persistent publish is stored.
    pub(crate) stream: StreamName,
    /// The publisher's tenant: its channels and, when persistent, its stream.
    pub(crate) tenant: Option<String>,
}

impl Publish {
    /// Checks an HTTP publish: `400` for a missing or bad target or type, `413` for data
    /// over `max_data` bytes.
    pub(crate) fn from_request(request: PublishRequest, max_data: usize) -> Result<Self, ApiError> {
        let target = request.target;
        let mut targets = Targets {
            rooms: target.rooms.unwrap_or_default(),
            users: target.users.unwrap_or_default(),
            streams: target.streams.unwrap_or_default(),
        };
        match (target.kind, target.id) {
            (Some(kind), Some(id)) => targets.rooms.push(format!("{kind}:{id}")),
            (None, None) => {}
            _ => {
                return Err(ApiError::invalid_argument(
                    "target: \"type\" and \"id\" go together (the room type:id)",
                ));
            }
        }
        let persistent = request.persistent.unwrap_or(false);
        let stream = request.stream.map(|s| StreamName::new(&s)).transpose()?;
        Self::new(
            targets,
            request.exclude_users.unwrap_or_default(),
            &request.event_type,
            request.data,
            request.source.unwrap_or_default(),
            request.priority.unwrap_or_default(),
            persistent,
            stream,
            max_data,
        )
    }

    /// Checks the parts of a publish (from HTTP or a WebSocket frame).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        targets: Targets,
        exclude_users: Vec<String>,
        event_type: &str,
        data: Box<RawValue>,
        source: PublishSourceBody,
        priority: PriorityBody,
        persistent: bool,
        stream: Option<StreamName>,
        max_data: usize,
    ) -> Result<Self, ApiError> {
        if targets.is_empty() {
            return Err(ApiError::invalid_argument(
                "a publish needs a target: rooms, users or streams (or the room {\"type\", \"id\"})",
            ));
        }
        for room in &targets.rooms {
            check_room(room).map_err(|e| ApiError::invalid_argument(format!("target.rooms: {e}")))?;
        }
        for user in targets.users.iter().chain(&exclude_users) {
            check_user(user).map_err(|e| ApiError::invalid_argument(format!("users: {e}")))?;
        }
        for stream in &targets.streams {
            StreamName::new(stream)?;
        }
        let event_type = EventType::new(event_type)?;
        if data.get().len() > max_data {
            return Err(ApiError::payload_too_large(format!(
                "data is {} bytes, more than the limit of {max_data}",
                data.get().len()
            )));
        }
        let stream = match stream {
            Some(stream) => stream,
            None => {
                match (targets.rooms.as_slice(), targets.users.is_empty() && targets.streams.is_empty()) {
                    ([room], true) => StreamName::new(&format!("realtime-{room}"))?,
                    _ => StreamName::new("realtime")?,
                }
            }
        };
        Ok(Self {
            targets,
            exclude_users,
            event_type,
            data,
            source,
            priority,
            persistent,
            stream,
            tenant: None,
        })
    }

    /// What a persistent publish stores in `metadata.realtime`.
    pub(crate) fn meta(&self) -> RealtimeMeta {
        RealtimeMeta {
            target: self.targets.clone(),
            exclude_users: self.exclude_users.clone(),
            priority: self.priority,
            source: self.source.clone(),
        }
    }

    /// The ephemeral message of this publish.
    /// Published by a connection or credential of `tenant`.
    pub(crate) fn in_tenant(mut self, tenant: Option<String>) -> Self {
        self.tenant = tenant;
        self
    }

    pub(crate) fn into_ephemeral(self) -> Ephemeral {
        let prefix = self.tenant.as_ref().map(|t| format!("{t}/")).unwrap_or_default();
        Ephemeral {
            channels: self.targets.channels().map(|c| format!("{prefix}{c}")).collect(),
            exclude_users: self.exclude_users,
            message_id: uuid::Uuid::now_v7().to_string(),
            event_type: self.event_type.as_str().to_owned(),
            data: self.data,
            source: self.source,
            priority: self.priority,
            timestamp: bifrost_core::Timestamp::now().to_string(),
        }
    }
}

/// A message sent to who is connected now, on every node; never stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Ephemeral {
    pub(crate) channels: Vec<String>,
    #[serde(default)]
    pub(crate) exclude_users: Vec<String>,
    pub(crate) message_id: String,
    #[serde(rename = "type")]
    pub(crate) event_type: String,
    pub(crate) data: Box<RawValue>,
    pub(crate) source: PublishSourceBody,
    pub(crate) priority: PriorityBody,
    pub(crate) timestamp: String,
}

impl Ephemeral {
    /// `message {"channel", "message_id", "type", "data", "source", "priority", "timestamp"}`.
    pub(crate) fn frame(&self, channel: &str) -> Utf8Bytes {
        let data = self.data.get();
        let mut out = Vec::with_capacity(data.len() + 256);
        out.extend_from_slice(b"{\"op\":\"message\",\"channel\":");
        // A tenant's channel as the client named it.
        write_str(&mut out, super::route::client_channel(channel));
        out.extend_from_slice(b",\"message_id\":");
        write_str(&mut out, &self.message_id);
        out.extend_from_slice(b",\"type\":");
        write_str(&mut out, &self.event_type);
        out.extend_from_slice(b",\"data\":");
        out.extend_from_slice(data.as_bytes());
        out.extend_from_slice(b",\"source\":{\"user_id\":");
        write_opt(&mut out, self.source.user_id.as_deref());
        out.extend_from_slice(b",\"workspace_id\":");
        write_opt(&mut out, self.source.workspace_id.as_deref());
        out.extend_from_slice(b"},\"priority\":");
        write_str(&mut out, self.priority.as_str());
        out.extend_from_slice(b",\"timestamp\":");
        write_str(&mut out, &self.timestamp);
        out.push(b'}');
        frames::text(out)
    }
}

fn write_opt(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(value) => write_str(out, value),
        None => out.extend_from_slice(b"null"),
    }
}
