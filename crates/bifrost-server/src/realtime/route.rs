//! Which channels a stored event goes to: its stream's, the type patterns it matches, the
//! targets of a persistent publish (`metadata.realtime`) and those bridging rules render.

use std::sync::Arc;

use bifrost_api::{PriorityBody, PublishSourceBody};
use bifrost_core::RecordedEvent;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::bridges::Bridge;

/// One channel an event goes to, and how.
#[derive(Clone, Debug)]
pub(crate) struct Route {
    pub(crate) channel: String,
    pub(crate) priority: PriorityBody,
    /// Connections of these users get nothing.
    pub(crate) exclude: Arc<[String]>,
    /// A bridge's transformed envelope (`"integration"` of the frame).
    pub(crate) integration: Option<Bytes>,
}

/// `metadata.realtime` of a persistent publish: where it goes and how.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct RealtimeMeta {
    pub(crate) target: Targets,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) exclude_users: Vec<String>,
    #[serde(default)]
    pub(crate) priority: PriorityBody,
    #[serde(default)]
    pub(crate) source: PublishSourceBody,
}

/// Rooms, users and streams (the names, without the channel prefix).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Targets {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) rooms: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) users: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) streams: Vec<String>,
}

impl Targets {
    pub(crate) fn is_empty(&self) -> bool {
        self.rooms.is_empty() && self.users.is_empty() && self.streams.is_empty()
    }

    /// The channel names.
    pub(crate) fn channels(&self) -> impl Iterator<Item = String> + '_ {
        let rooms = self.rooms.iter().map(|r| format!("room:{r}"));
        let users = self.users.iter().map(|u| format!("user:{u}"));
        let streams = self.streams.iter().map(|s| format!("stream:{s}"));
        rooms.chain(users).chain(streams)
    }
}

#[derive(Deserialize)]
struct MetadataWithRealtime {
    realtime: Option<RealtimeMeta>,
}

/// Every channel `event` goes to, each once (the first route to a channel wins), that
/// `wanted` accepts. `type_channels` are the `type:` channels to check.
pub(crate) fn routes<'t>(
    event: &RecordedEvent,
    type_channels: impl IntoIterator<Item = (&'t str, &'t bifrost_core::TypePattern)>,
    bridges: &[Bridge],
    wanted: &dyn Fn(&str) -> bool,
) -> Vec<Route> {
    let mut out: Vec<Route> = Vec::new();
    let no_exclusions: Arc<[String]> = Arc::from(Vec::new());
    let add = |out: &mut Vec<Route>, route: Route| {
        if wanted(&route.channel) && !out.iter().any(|r| r.channel == route.channel) {
            out.push(route);
        }
    };
    let plain = |channel: String| Route {
        channel,
        priority: PriorityBody::Normal,
        exclude: no_exclusions.clone(),
        integration: None,
    };
    // A tenant's event goes to its tenant's channels only (`acme/stream:order-1`).
    let tenant = event.stream.tenant();
    let prefix = tenant.map(|t| format!("{t}/")).unwrap_or_default();
    add(&mut out, plain(format!("{prefix}stream:{}", event.stream.local())));
    for (channel, pattern) in type_channels {
        if channel_tenant(channel) == tenant && pattern.matches(event.event_type.as_str()) {
            add(&mut out, plain(channel.to_owned()));
        }
    }
    if let Some(meta) = realtime_meta(&event.metadata) {
        let exclude: Arc<[String]> = Arc::from(meta.exclude_users);
        for channel in meta.target.channels() {
            let channel = format!("{prefix}{channel}");
            let route =
                Route { channel, priority: meta.priority, exclude: exclude.clone(), integration: None };
            add(&mut out, route);
        }
    }
    // Bridging rules are the default tenant's.
    if tenant.is_none() {
        for bridge in bridges {
            bridge.routes(event, &mut |route| add(&mut out, route));
        }
    }
    out
}

/// The tenant of a channel as the hub keys it: a tenant's connection subscribes to
/// `acme/stream:order-1` when it names `stream:order-1`. A client's channel has its kind's
/// `:` before any `/`, a tenant's key a `/` before any `:` (tenant ids have neither).
pub(crate) fn channel_tenant(channel: &str) -> Option<&str> {
    let slash = channel.find('/')?;
    match channel.find(':') {
        Some(colon) if colon < slash => None,
        _ => Some(&channel[..slash]),
    }
}

/// A channel key as the client named it.
pub(crate) fn client_channel(channel: &str) -> &str {
    match channel_tenant(channel) {
        Some(tenant) => &channel[tenant.len() + 1..],
        None => channel,
    }
}

/// The `realtime` member of stored metadata, if any (looked for only when the bytes name it).
pub(crate) fn realtime_meta(metadata: &[u8]) -> Option<RealtimeMeta> {
    const KEY: &[u8] = b"\"realtime\"";
    if !metadata.windows(KEY.len()).any(|w| w == KEY) {
        return None;
    }
    serde_json::from_slice::<MetadataWithRealtime>(metadata).ok()?.realtime
}
