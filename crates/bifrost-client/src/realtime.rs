//! Real-time over HTTP: publishes to `room:`, `user:` and `stream:` channels, the presence
//! of a room, and the rules that bridge stored events to rooms and users.
//!
//! Requests and answers are the API's own types ([`bifrost_api`], re-exported as
//! [`crate::api`]). An unknown bridge is the server's problem (`bifrost:bridge-not-found`)
//! as [`Error::Problem`]. The WebSocket itself (`GET /v1/ws`) is not spoken here.

use bifrost_api::{
    PresenceBody, PublishRequest, PublishedBody, RealtimeBridgeBody, RealtimeBridgeListBody,
    RealtimeBridgeRequest, StoredPublishBody,
};
use bytes::Bytes;
use reqwest::{Method, StatusCode};

use crate::client::Client;
use crate::error::{Error, Result};
use crate::wire;

/// What became of a publish: sent to who is connected now, or stored as an event (the
/// API's two answers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Publication {
    /// `202`: an ephemeral message went out; it is never stored.
    Published { message_id: String },
    /// `201`: a persistent publish, stored as one event of `stream` at `position`.
    Stored { event_id: String, stream: String, position: u64 },
}

impl Client {
    /// Publishes a message to the request's rooms, users and streams: `persistent` ones are
    /// stored (and reach stream subscribers, SSE and webhooks too), others only go to who
    /// is connected. A request without a target is the server's `400`.
    pub async fn publish(&self, request: &PublishRequest) -> Result<Publication> {
        let body = wire::to_json(request)?;
        let (status, answer) = self.realtime_call(Method::POST, &["publish"], Some(body)).await?;
        match status {
            StatusCode::ACCEPTED => {
                let PublishedBody { message_id } = wire::parse(&answer)?;
                Ok(Publication::Published { message_id })
            }
            StatusCode::CREATED => {
                let StoredPublishBody { event_id, stream, position } = wire::parse(&answer)?;
                Ok(Publication::Stored { event_id, stream, position })
            }
            other => Err(Error::decode(format!("a publish answered {other}, not 201 or 202"))),
        }
    }

    /// Who is in a room now, on every node: its users, each with their connections.
    pub async fn presence(&self, room: &str) -> Result<PresenceBody> {
        let room = non_empty(room, "room")?;
        let (_, answer) = self.realtime_call(Method::GET, &["rooms", room, "presence"], None).await?;
        wire::parse(&answer)
    }

    /// Creates (`true`, `201`) or replaces (`false`, `200`) the bridge `name`; the answer is
    /// the bridge with every field filled in.
    pub async fn put_bridge(
        &self,
        name: &str,
        request: &RealtimeBridgeRequest,
    ) -> Result<(bool, RealtimeBridgeBody)> {
        let name = non_empty(name, "bridge name")?;
        let body = wire::to_json(request)?;
        let (status, answer) = self.realtime_call(Method::PUT, &["bridges", name], Some(body)).await?;
        Ok((status == StatusCode::CREATED, wire::parse(&answer)?))
    }

    pub async fn get_bridge(&self, name: &str) -> Result<RealtimeBridgeBody> {
        let name = non_empty(name, "bridge name")?;
        let (_, answer) = self.realtime_call(Method::GET, &["bridges", name], None).await?;
        wire::parse(&answer)
    }

    /// Every bridge.
    pub async fn list_bridges(&self) -> Result<Vec<RealtimeBridgeBody>> {
        let (_, answer) = self.realtime_call(Method::GET, &["bridges"], None).await?;
        Ok(wire::parse::<RealtimeBridgeListBody>(&answer)?.bridges)
    }

    /// Deletes a bridge (`204`); events stored afterwards are no longer bridged by it.
    pub async fn delete_bridge(&self, name: &str) -> Result<()> {
        let name = non_empty(name, "bridge name")?;
        self.realtime_call(Method::DELETE, &["bridges", name], None).await.map(drop)
    }

    /// A request under `/v1/realtime`.
    async fn realtime_call(
        &self,
        method: Method,
        rest: &[&str],
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes)> {
        self.check_open()?;
        let mut segments = vec!["v1", "realtime"];
        segments.extend_from_slice(rest);
        let url = self.transport().url(&segments, &[]);
        let timeout = self.transport().timeout;
        self.transport().exchange(method, url, body, timeout).await
    }
}

/// A path segment must not be empty: `/v1/realtime/bridges/` is not a bridge.
fn non_empty<'a>(segment: &'a str, what: &str) -> Result<&'a str> {
    if segment.is_empty() { Err(Error::InvalidArgument(format!("the {what} is empty"))) } else { Ok(segment) }
}

#[cfg(test)]
mod tests {
    //! Each call against a stand-in server that records the request and answers as the
    //! API describes: method, path and body are what the contract names.

    use bifrost_api::{PriorityBody, ProblemType, PublishTargetRequest};
    use serde_json::{Value, json};

    use super::*;
    use crate::stand_in::{last, stand_in};

    fn publish_request(persistent: bool) -> PublishRequest {
        PublishRequest {
            target: PublishTargetRequest { rooms: Some(vec!["project:101".into()]), ..Default::default() },
            exclude_users: Some(vec!["u-1".into()]),
            event_type: "task.moved".into(),
            data: serde_json::value::RawValue::from_string(r#"{"task": 7}"#.into()).unwrap(),
            source: None,
            priority: Some(PriorityBody::High),
            persistent: persistent.then_some(true),
            stream: None,
        }
    }

    fn bridge() -> Value {
        json!({
            "name": "tasks", "types": ["task.#"], "category": null, "rooms": ["project:{data.project_id}"],
            "users": [], "exclude_users": ["{metadata.user_id}"], "priority": "normal", "enabled": true,
            "transform": null, "created_at": "2026-11-22T10:00:00.000000Z",
            "updated_at": "2026-11-22T10:00:00.000000Z"
        })
    }

    #[tokio::test]
    async fn an_ephemeral_publish_is_published_by_its_202() {
        let (client, seen) = stand_in(202, json!({"message_id": "m-1"})).await;
        let answer = client.publish(&publish_request(false)).await.unwrap();
        assert_eq!(answer, Publication::Published { message_id: "m-1".into() });
        let s = last(&seen);
        assert_eq!((s.method.as_str(), s.target.as_str()), ("POST", "/v1/realtime/publish"));
        assert_eq!(
            s.body,
            Some(json!({"target": {"rooms": ["project:101"]}, "exclude_users": ["u-1"],
                        "type": "task.moved", "data": {"task": 7}, "priority": "high"}))
        );
    }

    #[tokio::test]
    async fn a_persistent_publish_is_stored_by_its_201() {
        let (client, seen) =
            stand_in(201, json!({"event_id": "e-1", "stream": "realtime-project:101", "position": 9})).await;
        let answer = client.publish(&publish_request(true)).await.unwrap();
        assert_eq!(
            answer,
            Publication::Stored {
                event_id: "e-1".into(),
                stream: "realtime-project:101".into(),
                position: 9
            }
        );
        assert_eq!(last(&seen).body.unwrap()["persistent"], true);

        let (client, _) = stand_in(200, json!({"message_id": "m-1"})).await;
        let err = client.publish(&publish_request(false)).await.unwrap_err();
        assert!(matches!(err, Error::Decode(_)), "{err:?}");
    }

    #[tokio::test]
    async fn presence_encodes_the_room() {
        let snapshot = json!({"room": "project:1 x", "users": [{"user_id": "u-1", "info": null,
            "connections": [{"connection_id": "c-1", "joined_at": "2026-11-22T10:00:00Z"}]}],
            "user_count": 1, "connection_count": 1});
        let (client, seen) = stand_in(200, snapshot).await;
        let presence = client.presence("project:1 x").await.unwrap();
        assert_eq!((presence.user_count, presence.users[0].user_id.as_str()), (1, "u-1"));
        assert_eq!(last(&seen).target, "/v1/realtime/rooms/project:1%20x/presence");
    }

    #[tokio::test]
    async fn bridges_are_put_got_listed_and_deleted() {
        let (client, seen) = stand_in(201, bridge()).await;
        let request = RealtimeBridgeRequest {
            types: Some(vec!["task.#".into()]),
            rooms: Some(vec!["project:{data.project_id}".into()]),
            enabled: Some(false),
            ..Default::default()
        };
        let (created, body) = client.put_bridge("tasks", &request).await.unwrap();
        assert!(created);
        assert_eq!(body.name, "tasks");
        let s = last(&seen);
        assert_eq!((s.method.as_str(), s.target.as_str()), ("PUT", "/v1/realtime/bridges/tasks"));
        assert_eq!(
            s.body,
            Some(json!({"types": ["task.#"], "rooms": ["project:{data.project_id}"], "enabled": false}))
        );

        let (client, _) = stand_in(200, bridge()).await;
        assert!(!client.put_bridge("tasks", &request).await.unwrap().0, "200: replaced");
        assert_eq!(client.get_bridge("tasks").await.unwrap().rooms, ["project:{data.project_id}"]);

        let (client, seen) = stand_in(200, json!({"bridges": [bridge()]})).await;
        assert_eq!(client.list_bridges().await.unwrap().len(), 1);
        assert_eq!((last(&seen).method, last(&seen).target), ("GET".into(), "/v1/realtime/bridges".into()));

        let (client, seen) = stand_in(204, Value::Null).await;
        client.delete_bridge("a/b").await.unwrap();
        assert_eq!(
            (last(&seen).method, last(&seen).target),
            ("DELETE".into(), "/v1/realtime/bridges/a%2Fb".into())
        );
    }

    #[tokio::test]
    async fn problems_keep_their_type_and_empty_names_are_refused() {
        let problem = json!({"type": "bifrost:bridge-not-found", "title": "Bridge not found",
                             "status": 404, "detail": "there is no bridge tasks"});
        let (client, seen) = stand_in(404, problem).await;
        let err = client.get_bridge("tasks").await.unwrap_err();
        assert_eq!(err.problem().and_then(|p| p.kind()), Some(ProblemType::BridgeNotFound), "{err:?}");
        let before = seen.lock().unwrap().len();
        assert!(matches!(client.get_bridge("").await, Err(Error::InvalidArgument(_))));
        assert!(matches!(client.delete_bridge("").await, Err(Error::InvalidArgument(_))));
        assert!(matches!(client.presence("").await, Err(Error::InvalidArgument(_))));
        assert!(matches!(
            client.put_bridge("", &RealtimeBridgeRequest::default()).await,
            Err(Error::InvalidArgument(_))
        ));
        assert_eq!(seen.lock().unwrap().len(), before, "nothing was sent");
    }
}
