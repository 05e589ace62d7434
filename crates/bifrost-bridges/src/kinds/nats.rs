//! NATS JetStream: each message is a JetStream publish to its subject, confirmed by the
//! stream's PubAck. A JetStream stream must capture the subject; without one nobody answers
//! and the batch is refused.
//!
//! A JetStream publish is a core NATS request whose reply is the PubAck, so this needs only
//! core NATS (async-nats is built without its `jetstream` feature): the client's request
//! multiplexer (one shared reply subscription) carries every publish of a batch out before
//! the first PubAck is awaited.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::str::FromStr;
use std::task::Poll;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::{
    Client, ConnectOptions, Event, HeaderMap, HeaderName, HeaderValue, Message, Request, RequestError,
    RequestErrorKind, StatusCode,
};
use async_trait::async_trait;
use serde::Deserialize;
use tokio::sync::watch;

use crate::message::Outgoing;
use crate::publish::{PublishError, Publisher};

/// How long the first TCP + NATS handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one PubAck may take. The bridge wraps a whole batch in its own, usually
/// shorter, timeout; this one bounds a publisher used on its own.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Pings find a connection that died without a TCP reset (two missed pongs drop it).
const PING_INTERVAL: Duration = Duration::from_secs(10);

/// The CloudEvents NATS binding's prefix for binary-mode attributes.
const ATTRIBUTE_PREFIX: &str = "ce-";

/// A connection to one NATS server for one bridge. The client reconnects on its own after
/// the first connection; a batch in flight when the connection drops fails as
/// [`PublishError::Unreachable`] and is retried whole by the bridge (the dedupe ids keep
/// JetStream from storing a message twice).
pub struct NatsPublisher {
    client: Client,
    /// Counts disconnections, so a batch can fail as soon as its connection drops instead of
    /// waiting for PubAcks that will never come.
    disconnects: watch::Receiver<u64>,
}

impl NatsPublisher {
    /// Connects to `url` (`nats://host:port`, with `user:password@` if the server wants it).
    /// Tries once, for at most 5 s; unreachable is [`PublishError::Unreachable`].
    pub async fn connect(url: &str) -> Result<Self, PublishError> {
        let (tx, disconnects) = watch::channel(0_u64);
        let client = ConnectOptions::new()
            .name("bifrost-bridge")
            .connection_timeout(CONNECT_TIMEOUT)
            .request_timeout(Some(ACK_TIMEOUT))
            .ping_interval(PING_INTERVAL)
            .event_callback(move |event| {
                let tx = tx.clone();
                async move {
                    match event {
                        Event::Disconnected => {
                            tracing::warn!("NATS connection lost");
                            tx.send_modify(|n| *n += 1);
                        }
                        // Our own close (the bridge stopped or changed): nothing went wrong.
                        Event::Closed => {
                            tracing::debug!("NATS connection closed");
                            tx.send_modify(|n| *n += 1);
                        }
                        Event::Connected => tracing::info!("NATS connection (re)established"),
                        other => tracing::debug!(event = %other, "NATS client event"),
                    }
                }
            })
            .connect(url)
            .await
            .map_err(|e| PublishError::Unreachable(format!("NATS at {}: {e}", redact(url))))?;
        Ok(Self { client, disconnects })
    }
}

#[async_trait]
impl Publisher for NatsPublisher {
    async fn publish(&self, batch: &[Outgoing]) -> Result<(), PublishError> {
        if batch.is_empty() {
            return Ok(());
        }
        // Mark the current count as seen before looking at the state: a drop after this
        // line wakes `lost` below, one before it shows in the state.
        let mut disconnects = self.disconnects.clone();
        disconnects.borrow_and_update();
        if self.client.connection_state() != State::Connected {
            return Err(PublishError::Unreachable("not connected to NATS".into()));
        }
        let requests = batch
            .iter()
            .map(|msg| Ok(Request::new().headers(headers(msg)?).payload(msg.body.clone())))
            .collect::<Result<Vec<_>, PublishError>>()?;

        let mut acks: Vec<Ack<'_>> = batch
            .iter()
            .zip(requests)
            .map(|(msg, request)| Box::pin(self.client.send_request(msg.target.clone(), request)) as Ack<'_>)
            .collect();
        let mut done: Vec<Option<Result<Message, RequestError>>> = batch.iter().map(|_| None).collect();
        let mut lost = pin!(disconnects.changed());
        let mut next = 0;

        // The first pass polls every request once, in batch order: each sends its message
        // into the client's ordered command queue and then waits for its PubAck. Later
        // passes collect the PubAcks; they are checked in batch order, so the error
        // reported is the first message's that failed.
        poll_fn(|cx| {
            for (ack, slot) in acks.iter_mut().zip(done.iter_mut()) {
                if slot.is_none()
                    && let Poll::Ready(result) = ack.as_mut().poll(cx)
                {
                    *slot = Some(result);
                }
            }
            while let Some(Some(result)) = done.get(next) {
                let msg = &batch[next];
                if let Err(e) = pub_ack(&msg.target, result) {
                    return Poll::Ready(Err(e));
                }
                next += 1;
            }
            if next == batch.len() {
                return Poll::Ready(Ok(()));
            }
            if lost.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(PublishError::Unreachable(format!(
                    "the NATS connection dropped with {} of {} messages unconfirmed",
                    batch.len() - next,
                    batch.len()
                ))));
            }
            Poll::Pending
        })
        .await
    }
}

/// One publish waiting for its PubAck.
type Ack<'a> = Pin<Box<dyn Future<Output = Result<Message, RequestError>> + Send + 'a>>;

/// `Nats-Msg-Id` (JetStream's dedupe id), `Content-Type`, and in binary mode the CloudEvents
/// attributes as `ce-<name>`.
fn headers(msg: &Outgoing) -> Result<HeaderMap, PublishError> {
    let mut headers = HeaderMap::new();
    headers
        .insert(async_nats::header::NATS_MESSAGE_ID, header_value(msg, "Nats-Msg-Id", &msg.id.to_string())?);
    headers.insert("Content-Type", header_value(msg, "Content-Type", &msg.content_type)?);
    for (name, value) in &msg.attributes {
        let header = format!("{ATTRIBUTE_PREFIX}{name}");
        let value = header_value(msg, &header, value)?;
        let name = HeaderName::from_str(&header).map_err(|e| {
            PublishError::Refused(format!("event {}: {header:?} is not a NATS header name: {e}", msg.id))
        })?;
        headers.insert(name, value);
    }
    Ok(headers)
}

fn header_value(msg: &Outgoing, header: &str, value: &str) -> Result<HeaderValue, PublishError> {
    HeaderValue::from_str(value)
        .map_err(|e| PublishError::Refused(format!("event {}: header {header}: {e}", msg.id)))
}

/// JetStream's answer to a publish: a PubAck, or an error.
#[derive(Deserialize)]
struct PubAck {
    error: Option<ApiError>,
    stream: Option<String>,
    seq: Option<u64>,
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    code: u16,
    #[serde(default)]
    description: String,
}

/// Whether `reply` confirms the publish to `subject`.
fn pub_ack(subject: &str, reply: &Result<Message, RequestError>) -> Result<(), PublishError> {
    let message = match reply {
        Ok(message) => message,
        Err(e) => {
            return Err(match e.kind() {
                RequestErrorKind::NoResponders => PublishError::Refused(format!(
                    "subject {subject:?}: no JetStream stream captures it (no responders)"
                )),
                RequestErrorKind::TimedOut => PublishError::Refused(format!(
                    "subject {subject:?}: no PubAck within {} s",
                    ACK_TIMEOUT.as_secs()
                )),
                RequestErrorKind::InvalidSubject | RequestErrorKind::MaxPayloadExceeded => {
                    PublishError::Refused(format!("subject {subject:?}: {e}"))
                }
                RequestErrorKind::Other => PublishError::Unreachable(format!("subject {subject:?}: {e}")),
            });
        }
    };
    if let Some(status) = message.status.filter(|s| *s != StatusCode::OK) {
        let description = message.description.as_deref().unwrap_or("");
        return Err(PublishError::Refused(format!(
            "subject {subject:?}: JetStream answered {status} {description}"
        )));
    }
    let ack: PubAck = serde_json::from_slice(&message.payload)
        .map_err(|e| PublishError::Refused(format!("subject {subject:?}: the reply is not a PubAck: {e}")))?;
    match ack {
        PubAck { error: Some(error), .. } => Err(PublishError::Refused(format!(
            "subject {subject:?}: JetStream error {}: {}",
            error.code, error.description
        ))),
        PubAck { stream: Some(_), seq: Some(_), .. } => Ok(()),
        PubAck { .. } => Err(PublishError::Refused(format!(
            "subject {subject:?}: the reply is not a PubAck: {}",
            String::from_utf8_lossy(&message.payload)
        ))),
    }
}

/// `url` without its password (or token, the user part alone), for error messages.
fn redact(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else { return url.to_owned() };
    let Some(at) = url[start..].find('@').map(|i| start + i) else { return url.to_owned() };
    match url[start..at].split_once(':') {
        Some((user, _)) => format!("{}{user}:***{}", &url[..start], &url[at..]),
        None => format!("{}***{}", &url[..start], &url[at..]),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn reply(payload: &'static str) -> Result<Message, RequestError> {
        Ok(Message {
            subject: "_INBOX.x".into(),
            reply: None,
            payload: Bytes::from_static(payload.as_bytes()),
            headers: None,
            status: None,
            description: None,
            length: payload.len(),
        })
    }

    #[test]
    fn a_pub_ack_confirms_and_a_jetstream_error_refuses_naming_the_subject() {
        assert!(pub_ack("a.b", &reply(r#"{"stream":"S","seq":7}"#)).is_ok());
        assert!(pub_ack("a.b", &reply(r#"{"stream":"S","seq":7,"duplicate":true}"#)).is_ok());
        let refused = |payload| match pub_ack("a.b", &reply(payload)) {
            Err(PublishError::Refused(why)) => why,
            other => panic!("{other:?}"),
        };
        let why =
            refused(r#"{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}"#);
        assert_eq!(why, r#"subject "a.b": JetStream error 503: maximum messages exceeded"#);
        assert!(refused("{}").contains("not a PubAck"));
        assert!(refused("+OK").contains("not a PubAck"));
    }

    #[test]
    fn headers_carry_the_dedupe_id_the_content_type_and_prefixed_attributes() {
        let msg = Outgoing {
            id: "01936a5e-7c1f-7d2a-9b3c-4d5e6f708192".parse().unwrap(),
            event_type: "order.submitted".into(),
            position: 3,
            target: "bifrost.order.submitted".into(),
            body: Bytes::from_static(b"{}"),
            content_type: "application/json".into(),
            attributes: vec![("specversion".into(), "1.0".into())],
        };
        let h = headers(&msg).unwrap();
        assert_eq!(h.get("Nats-Msg-Id").unwrap().as_str(), "01936a5e-7c1f-7d2a-9b3c-4d5e6f708192");
        assert_eq!(h.get("Content-Type").unwrap().as_str(), "application/json");
        assert_eq!(h.get("ce-specversion").unwrap().as_str(), "1.0");

        let bad = Outgoing { attributes: vec![("x".into(), "a\r\nb".into())], ..msg };
        assert!(matches!(headers(&bad), Err(PublishError::Refused(_))));
    }

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(redact("nats://u:secret@h:4222"), "nats://u:***@h:4222");
        assert_eq!(redact("nats://token@h:4222"), "nats://***@h:4222");
        assert_eq!(redact("nats://h:4222"), "nats://h:4222");
    }
}
