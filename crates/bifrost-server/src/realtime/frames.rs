//! The JSON text frames the server sends, written by hand: a stored event's JSON is copied
//! in as the event API prints it, never parsed and re-serialised.

use axum::extract::ws::Utf8Bytes;
use bifrost_api::PriorityBody;
use bifrost_core::json_out::{write_str, write_u64};
use bifrost_core::{RecordedEvent, TenantScope};
use serde_json::Value;

use crate::wire;

/// `{"op": op, "id"?: <the request's>, ...fields}`.
pub(crate) fn reply(op: &str, id: Option<&Value>, fields: impl FnOnce(&mut Vec<u8>)) -> Utf8Bytes {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(b"{\"op\":");
    write_str(&mut out, op);
    if let Some(id) = id {
        out.extend_from_slice(b",\"id\":");
        let _ = serde_json::to_writer(&mut out, id);
    }
    fields(&mut out);
    out.push(b'}');
    text(out)
}

/// `error {"code": "bifrost:<code>", "message"}`.
pub(crate) fn error(id: Option<&Value>, code: &str, message: &str) -> Utf8Bytes {
    reply("error", id, |out| {
        out.extend_from_slice(b",\"code\":");
        write_str(out, &format!("bifrost:{code}"));
        out.extend_from_slice(b",\"message\":");
        write_str(out, message);
    })
}

/// `event {"channel", "position", "priority", "event", "integration"?}`. A tenant's
/// channel (`acme/stream:order-1`) gets the channel and the event in the tenant's names.
pub(crate) fn event(
    channel: &str,
    event: &RecordedEvent,
    priority: PriorityBody,
    integration: Option<&[u8]>,
) -> Utf8Bytes {
    let local;
    let (channel, event) = match super::route::channel_tenant(channel) {
        Some(tenant) => {
            let mut copy = event.clone();
            TenantScope::Only(Some(tenant.to_owned())).localize(&mut copy);
            local = copy;
            (super::route::client_channel(channel), &local)
        }
        None => (channel, event),
    };
    let json = wire::event_json(event);
    let mut out = Vec::with_capacity(json.len() + integration.map_or(0, <[u8]>::len) + 128);
    out.extend_from_slice(b"{\"op\":\"event\",\"channel\":");
    write_str(&mut out, channel);
    out.extend_from_slice(b",\"position\":");
    write_u64(&mut out, event.position);
    out.extend_from_slice(b",\"priority\":");
    write_str(&mut out, priority.as_str());
    out.extend_from_slice(b",\"event\":");
    out.extend_from_slice(&json);
    if let Some(integration) = integration {
        out.extend_from_slice(b",\"integration\":");
        out.extend_from_slice(integration);
    }
    out.push(b'}');
    text(out)
}

/// `join {"room", "user_id", "info"}`.
pub(crate) fn join(room: &str, user: &str, info: &Value) -> Utf8Bytes {
    reply("join", None, |out| {
        out.extend_from_slice(b",\"room\":");
        write_str(out, room);
        out.extend_from_slice(b",\"user_id\":");
        write_str(out, user);
        out.extend_from_slice(b",\"info\":");
        let _ = serde_json::to_writer(&mut *out, info);
    })
}

/// `leave {"room", "user_id"}`.
pub(crate) fn leave(room: &str, user: &str) -> Utf8Bytes {
    reply("leave", None, |out| {
        out.extend_from_slice(b",\"room\":");
        write_str(out, room);
        out.extend_from_slice(b",\"user_id\":");
        write_str(out, user);
    })
}

/// A frame's bytes as text. Every writer above writes JSON, which is UTF-8.
pub(crate) fn text(bytes: Vec<u8>) -> Utf8Bytes {
    match String::from_utf8(bytes) {
        Ok(text) => text.into(),
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned().into(),
    }
}
