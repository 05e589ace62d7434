//! Webhooks over HTTP: endpoints (create, list, show, change, delete, rotate their
//! secret), their messages and the log of every attempt, resending what failed, and test
//! sends.
//!
//! Requests and answers are the API's own types ([`bifrost_api`], re-exported as
//! [`crate::api`]). An unknown endpoint or message is the server's problem
//! (`bifrost:webhook-not-found`, `bifrost:message-not-found`) as [`Error::Problem`].

use std::time::Duration;

use bifrost_api::{
    AttemptsBody, MAX_TIMEOUT_MS, RecoverRequest, RecoveringBody, RotateSecretBody, RotateSecretRequest,
    TestBody, TestRequest, WebhookBody, WebhookCreatedBody, WebhookListBody, WebhookMessageBody,
    WebhookMessagesBody, WebhookRequest,
};
use bytes::Bytes;
use reqwest::{Method, StatusCode};

use crate::client::{Client, Query};
use crate::error::{Error, Result};
use crate::wire;

impl Client {
    /// Creates an endpoint (`201`); the answer carries its secret, shown this once.
    pub async fn create_webhook(&self, request: &WebhookRequest) -> Result<WebhookCreatedBody> {
        let body = wire::to_json(request)?;
        let (_, answer) = self.webhooks_call(Method::POST, &[], &[], Some(body), Duration::ZERO).await?;
        wire::parse(&answer)
    }

    /// A page of endpoints in creation order, after the endpoint `after` (the `next` of
    /// the previous page); `limit` defaults to 100 and is capped at 1000 by the server.
    pub async fn webhooks(&self, after: Option<&str>, limit: Option<usize>) -> Result<WebhookListBody> {
        let mut query = Query::new();
        if let Some(after) = after {
            query.push(("after", after.to_owned()));
        }
        if let Some(limit) = limit {
            query.push(("limit", limit.max(1).to_string()));
        }
        let (_, answer) = self.webhooks_call(Method::GET, &[], &query, None, Duration::ZERO).await?;
        wire::parse(&answer)
    }

    /// One endpoint (never its secret).
    pub async fn webhook(&self, id: &str) -> Result<WebhookBody> {
        let (_, answer) = self.webhook_call(Method::GET, id, &[], &[], None).await?;
        wire::parse(&answer)
    }

    /// Changes an endpoint with a JSON merge patch (RFC 7396) of its settings: the members
    /// given replace the endpoint's, `null` resets one, and objects (`filter`, `headers`,
    /// `transform`) merge member by member. Any field but `secret` and `start`;
    /// `"enabled": true` re-enables a disabled endpoint.
    pub async fn update_webhook(&self, id: &str, patch: &serde_json::Value) -> Result<WebhookBody> {
        let body = wire::to_json(patch)?;
        let (_, answer) = self.webhook_call(Method::PATCH, id, &[], &[], Some(body)).await?;
        wire::parse(&answer)
    }

    /// Deletes an endpoint with its messages and attempts.
    pub async fn delete_webhook(&self, id: &str) -> Result<()> {
        self.webhook_call(Method::DELETE, id, &[], &[], None).await.map(drop)
    }

    /// A new signing secret; the previous one still signs for the grace period (default
    /// a day).
    pub async fn rotate_webhook_secret(
        &self,
        id: &str,
        request: &RotateSecretRequest,
    ) -> Result<RotateSecretBody> {
        let body = wire::to_json(request)?;
        let (_, answer) = self.webhook_call(Method::POST, id, &["secret", "rotate"], &[], Some(body)).await?;
        wire::parse(&answer)
    }

    /// The endpoint's message of one event: its status, attempts and payload.
    pub async fn webhook_message(&self, id: &str, event_id: &str) -> Result<WebhookMessageBody> {
        let event_id = non_empty(event_id, "event id")?;
        let (_, answer) = self.webhook_call(Method::GET, id, &["messages", event_id], &[], None).await?;
        wire::parse(&answer)
    }

    /// A page of the endpoint's messages, newest first: of one `status` (`pending`,
    /// `succeeded`, `failed`) or all, before the cursor `before` (the `next` of the
    /// previous page).
    pub async fn webhook_messages(
        &self,
        id: &str,
        status: Option<&str>,
        before: Option<&str>,
        limit: Option<usize>,
    ) -> Result<WebhookMessagesBody> {
        let mut query = Query::new();
        if let Some(status) = status {
            query.push(("status", status.to_owned()));
        }
        push_page(&mut query, before, limit);
        let (_, answer) = self.webhook_call(Method::GET, id, &["messages"], &query, None).await?;
        wire::parse(&answer)
    }

    /// A page of the endpoint's attempt log, newest first: of one `status` (`succeeded`,
    /// `failed`) or all, of one event or all, before the cursor `before` (the `next` of the
    /// previous page).
    pub async fn webhook_attempts(
        &self,
        id: &str,
        status: Option<&str>,
        event_id: Option<&str>,
        before: Option<&str>,
        limit: Option<usize>,
    ) -> Result<AttemptsBody> {
        let mut query = Query::new();
        if let Some(status) = status {
            query.push(("status", status.to_owned()));
        }
        if let Some(event_id) = event_id {
            query.push(("event_id", event_id.to_owned()));
        }
        push_page(&mut query, before, limit);
        let (_, answer) = self.webhook_call(Method::GET, id, &["attempts"], &query, None).await?;
        wire::parse(&answer)
    }

    /// Sends one message again now, with a fresh retry schedule, whatever its status
    /// (`202`). A disabled endpoint answers `409 bifrost:webhook-disabled`.
    pub async fn resend_webhook_message(&self, id: &str, event_id: &str) -> Result<()> {
        let event_id = non_empty(event_id, "event id")?;
        self.webhook_call(Method::POST, id, &["messages", event_id, "resend"], &[], None).await.map(drop)
    }

    /// Sends again, in log order, every message that failed within the window (`202`). A
    /// disabled endpoint answers `409 bifrost:webhook-disabled`.
    pub async fn recover_webhook(&self, id: &str, request: &RecoverRequest) -> Result<RecoveringBody> {
        let body = wire::to_json(request)?;
        let (_, answer) = self.webhook_call(Method::POST, id, &["recover"], &[], Some(body)).await?;
        wire::parse(&answer)
    }

    /// One attempt of a `bifrost.webhook.test` event, made while the call waits: the
    /// answer is that attempt, succeeded or failed. The call is allowed the longest
    /// attempt timeout beyond the client's own.
    pub async fn test_webhook(&self, id: &str, request: &TestRequest) -> Result<TestBody> {
        let body = wire::to_json(request)?;
        let id = non_empty(id, "webhook id")?;
        let extra = Duration::from_millis(MAX_TIMEOUT_MS);
        let (_, answer) = self.webhooks_call(Method::POST, &[id, "test"], &[], Some(body), extra).await?;
        wire::parse(&answer)
    }

    /// A request under `/v1/webhooks/{id}`.
    async fn webhook_call(
        &self,
        method: Method,
        id: &str,
        rest: &[&str],
        query: &[(&'static str, String)],
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes)> {
        let id = non_empty(id, "webhook id")?;
        let mut segments = vec![id];
        segments.extend_from_slice(rest);
        self.webhooks_call(method, &segments, query, body, Duration::ZERO).await
    }

    /// A request under `/v1/webhooks`, allowed `extra` time beyond the timeout.
    async fn webhooks_call(
        &self,
        method: Method,
        rest: &[&str],
        query: &[(&'static str, String)],
        body: Option<Vec<u8>>,
        extra: Duration,
    ) -> Result<(StatusCode, Bytes)> {
        self.check_open()?;
        let mut segments = vec!["v1", "webhooks"];
        segments.extend_from_slice(rest);
        let url = self.transport().url(&segments, query);
        let timeout = self.transport().timeout.saturating_add(extra);
        self.transport().exchange(method, url, body, timeout).await
    }
}

/// `before` and `limit` of a page newest first.
fn push_page(query: &mut Query, before: Option<&str>, limit: Option<usize>) {
    if let Some(before) = before {
        query.push(("before", before.to_owned()));
    }
    if let Some(limit) = limit {
        query.push(("limit", limit.max(1).to_string()));
    }
}

/// A path segment must not be empty: `/v1/webhooks/` is not an endpoint.
fn non_empty<'a>(segment: &'a str, what: &str) -> Result<&'a str> {
    if segment.is_empty() { Err(Error::InvalidArgument(format!("the {what} is empty"))) } else { Ok(segment) }
}

#[cfg(test)]
mod tests {
    //! Each call against a stand-in server that records the request and answers as the
    //! API describes: method, path, query and body are what the contract names.

    use bifrost_api::{ContentModeBody, ProblemType, StartBody, WebhookFilterRequest};
    use serde_json::{Value, json};

    use super::*;
    use crate::stand_in::{last, stand_in};

    fn endpoint() -> Value {
        json!({
            "id": "wh_1", "url": "https://example.com/hook",
            "filter": {"types": ["#"], "category": null, "routing_keys": ["#"]},
            "description": "", "headers": {}, "enabled": true, "rate_limit_per_s": null,
            "ordered": false, "timeout_ms": 15000, "retry_schedule_ms": [5000],
            "disable_after_s": 432000, "content_mode": "bifrost", "transform": null,
            "start": "end", "disabled_reason": null, "failing_since": null, "backlog": 0,
            "created_at": "2026-11-22T10:00:00.000000Z", "updated_at": "2026-11-22T10:00:00.000000Z"
        })
    }

    fn attempt() -> Value {
        json!({
            "id": "a1", "at": "2026-11-22T10:00:00.000000Z",
            "event_id": "01936a5e-0000-7000-8000-000000000000", "attempt": 1, "trigger": "test",
            "status": "succeeded", "response_status": 200, "response_time_ms": 3,
            "response_body": "ok", "error": null
        })
    }

    #[tokio::test]
    async fn create_posts_the_request_and_reads_the_secret() {
        let mut created = endpoint();
        created["secret"] = json!("whsec_AAAA");
        let (client, seen) = stand_in(201, created).await;
        let request = WebhookRequest {
            url: "https://example.com/hook".into(),
            filter: Some(WebhookFilterRequest { types: Some(vec!["order.#".into()]), ..Default::default() }),
            content_mode: Some(ContentModeBody::Cloudevents),
            start: Some(StartBody::Beginning),
            ..Default::default()
        };
        let answer = client.create_webhook(&request).await.unwrap();
        assert_eq!((answer.webhook.id.as_str(), answer.secret.as_str()), ("wh_1", "whsec_AAAA"));
        let request_seen = last(&seen);
        assert_eq!((request_seen.method.as_str(), request_seen.target.as_str()), ("POST", "/v1/webhooks"));
        assert_eq!(request_seen.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            request_seen.body,
            Some(json!({"url": "https://example.com/hook", "filter": {"types": ["order.#"]},
                        "content_mode": "cloudevents", "start": "beginning"}))
        );
    }

    #[tokio::test]
    async fn endpoint_routes_encode_ids_and_queries() {
        let (client, seen) = stand_in(200, json!({"webhooks": [endpoint()], "next": "wh_1"})).await;
        let page = client.webhooks(Some("wh 0/x"), Some(0)).await.unwrap();
        assert_eq!((page.webhooks.len(), page.next.as_deref()), (1, Some("wh_1")));
        assert_eq!(last(&seen).target, "/v1/webhooks?after=wh+0%2Fx&limit=1");
        client.webhooks(None, None).await.unwrap();
        assert_eq!(last(&seen).target, "/v1/webhooks");

        let (client, seen) = stand_in(200, endpoint()).await;
        assert_eq!(client.webhook("a/b c").await.unwrap().id, "wh_1");
        assert_eq!((last(&seen).method, last(&seen).target), ("GET".into(), "/v1/webhooks/a%2Fb%20c".into()));
        let patch = json!({"enabled": false, "filter": {"category": null}});
        client.update_webhook("wh_1", &patch).await.unwrap();
        let s = last(&seen);
        assert_eq!(
            (s.method.as_str(), s.target.as_str(), s.body),
            ("PATCH", "/v1/webhooks/wh_1", Some(patch))
        );
    }

    #[tokio::test]
    async fn delete_resend_and_recover_take_their_empty_or_accepted_answers() {
        let (client, seen) = stand_in(204, Value::Null).await;
        client.delete_webhook("wh_1").await.unwrap();
        assert_eq!((last(&seen).method, last(&seen).target), ("DELETE".into(), "/v1/webhooks/wh_1".into()));

        let (client, seen) = stand_in(202, json!({})).await;
        client.resend_webhook_message("wh_1", "e-1").await.unwrap();
        let s = last(&seen);
        assert_eq!((s.method.as_str(), s.target.as_str()), ("POST", "/v1/webhooks/wh_1/messages/e-1/resend"));

        let (client, seen) = stand_in(202, json!({"recovering": 3})).await;
        let request = RecoverRequest {
            since: "2026-11-22T10:00:00Z".into(),
            until: Some("2026-11-23T10:00:00Z".into()),
        };
        assert_eq!(client.recover_webhook("wh_1", &request).await.unwrap().recovering, 3);
        let s = last(&seen);
        assert_eq!((s.method.as_str(), s.target.as_str()), ("POST", "/v1/webhooks/wh_1/recover"));
        assert_eq!(s.body, Some(json!({"since": "2026-11-22T10:00:00Z", "until": "2026-11-23T10:00:00Z"})));
    }

    #[tokio::test]
    async fn rotation_sends_only_what_is_given() {
        let (client, seen) = stand_in(
            200,
            json!({"secret": "whsec_B", "previous_valid_until": "2026-11-23T10:00:00.000000Z"}),
        )
        .await;
        let answer = client.rotate_webhook_secret("wh_1", &RotateSecretRequest::default()).await.unwrap();
        assert_eq!(answer.secret, "whsec_B");
        let s = last(&seen);
        assert_eq!((s.target.as_str(), s.body), ("/v1/webhooks/wh_1/secret/rotate", Some(json!({}))));
        let request = RotateSecretRequest { secret: None, grace_s: Some(0) };
        client.rotate_webhook_secret("wh_1", &request).await.unwrap();
        assert_eq!(last(&seen).body, Some(json!({"grace_s": 0})));
    }

    #[tokio::test]
    async fn messages_and_attempts_pass_their_filters() {
        let message = json!({"event_id": "e-1", "position": 7, "status": "failed", "attempts": 8,
                             "next_attempt_at": null, "last_error": "HTTP 500", "payload": {"id": "e-1"}});
        let (client, seen) = stand_in(200, message.clone()).await;
        let one = client.webhook_message("wh_1", "e-1").await.unwrap();
        assert_eq!((one.position, one.attempts), (7, 8));
        assert_eq!(last(&seen).target, "/v1/webhooks/wh_1/messages/e-1");

        let (client, seen) = stand_in(200, json!({"messages": [message], "next": "c2"})).await;
        let page = client.webhook_messages("wh_1", Some("failed"), Some("c 1"), Some(5)).await.unwrap();
        assert_eq!(page.next.as_deref(), Some("c2"));
        assert_eq!(last(&seen).target, "/v1/webhooks/wh_1/messages?status=failed&before=c+1&limit=5");
        client.webhook_messages("wh_1", None, None, None).await.unwrap();
        assert_eq!(last(&seen).target, "/v1/webhooks/wh_1/messages");

        let (client, seen) = stand_in(200, json!({"attempts": [attempt()], "next": null})).await;
        let page = client
            .webhook_attempts("wh_1", Some("succeeded"), Some("e-1"), Some("c"), Some(2))
            .await
            .unwrap();
        assert_eq!(page.attempts[0].response_status, Some(200));
        assert_eq!(
            last(&seen).target,
            "/v1/webhooks/wh_1/attempts?status=succeeded&event_id=e-1&before=c&limit=2"
        );
    }

    #[tokio::test]
    async fn a_test_send_answers_its_attempt() {
        let (client, seen) = stand_in(200, json!({"attempt": attempt()})).await;
        let request = TestRequest { data: Some(json!({"hello": 1})) };
        let answer = client.test_webhook("wh_1", &request).await.unwrap();
        assert_eq!(answer.attempt.id, "a1");
        let s = last(&seen);
        assert_eq!(
            (s.target.as_str(), s.body),
            ("/v1/webhooks/wh_1/test", Some(json!({"data": {"hello": 1}})))
        );
    }

    #[tokio::test]
    async fn problems_keep_their_type_and_empty_ids_are_refused() {
        let problem = json!({"type": "bifrost:webhook-not-found", "title": "Webhook endpoint not found",
                             "status": 404, "detail": "there is no webhook endpoint wh_9"});
        let (client, seen) = stand_in(404, problem).await;
        let err = client.webhook("wh_9").await.unwrap_err();
        assert_eq!(err.problem().and_then(|p| p.kind()), Some(ProblemType::WebhookNotFound), "{err:?}");
        let before = seen.lock().unwrap().len();
        assert!(matches!(client.webhook("").await, Err(Error::InvalidArgument(_))));
        assert!(matches!(client.resend_webhook_message("wh_1", "").await, Err(Error::InvalidArgument(_))));
        assert!(matches!(
            client.test_webhook("", &TestRequest::default()).await,
            Err(Error::InvalidArgument(_))
        ));
        assert_eq!(seen.lock().unwrap().len(), before, "nothing was sent");
    }
}
