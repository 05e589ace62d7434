//! NATS in-bridges: a JetStream durable pull consumer `bifrost-{name}` on the stream that
//! captures the bridge's subject, filtered to it, explicit acks.
//!
//! The consumer is made with the durable-consumer API of JetStream 2.9
//! (`CONSUMER.DURABLE.CREATE`) and read with pull requests (`CONSUMER.MSG.NEXT`), one
//! message per request: the first waits for a message, the next ones return at once while
//! the consumer has some. An ack is `+ACK` on the message's reply subject.

use std::time::Duration;

use async_nats::{Client, ConnectOptions, HeaderMap, Message, Request, StatusCode};
use async_trait::async_trait;
use bytes::Bytes;
use serde_json::{Value, json};

use crate::consume::{ConsumeError, Consumer, Delivery};
use crate::inbound::{Incoming, attribute_name};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long JetStream waits for an ack before it delivers a message again.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// Slack between a pull request's expiry on the server and the client giving up on it, so
/// the server ends the request first (a message is never sent to an abandoned request).
const REQUEST_SLACK: Duration = Duration::from_secs(2);
/// The CloudEvents NATS binding's prefix for binary-mode attributes.
const ATTRIBUTE_PREFIX: &str = "ce-";

pub struct NatsConsumer {
    client: Client,
    stream: String,
    durable: String,
    /// The consumer's pending count as the last delivered message told it.
    pending: Option<u64>,
}

/// The durable name of bridge `name`'s consumer (a NATS name has no `.`).
pub fn durable_name(name: &str) -> String {
    format!("bifrost-{}", name.replace(['.', '*', '>'], "_"))
}

impl NatsConsumer {
    /// Connects, finds the stream that captures `subject` and makes (or finds) the durable
    /// consumer of bridge `name`.
    pub async fn connect(url: &str, name: &str, subject: &str) -> Result<Self, ConsumeError> {
        let client = ConnectOptions::new()
            .name("bifrost-in-bridge")
            .connection_timeout(CONNECT_TIMEOUT)
            .request_timeout(Some(CONNECT_TIMEOUT))
            .connect(url)
            .await
            .map_err(|e| ConsumeError::Unreachable(format!("NATS: {e}")))?;
        let names = api(&client, "STREAM.NAMES", json!({ "subject": subject })).await?;
        let stream = names["streams"]
            .as_array()
            .and_then(|s| s.first())
            .and_then(Value::as_str)
            .ok_or_else(|| {
                ConsumeError::Refused(format!("no JetStream stream captures subject {subject:?}"))
            })?
            .to_owned();
        let durable = durable_name(name);
        let config = json!({
            "stream_name": stream,
            "config": {
                "durable_name": durable,
                "deliver_policy": "all",
                "ack_policy": "explicit",
                "ack_wait": ACK_WAIT.as_nanos() as u64,
                "filter_subject": subject,
                "replay_policy": "instant",
            },
        });
        let created = api(&client, &format!("CONSUMER.DURABLE.CREATE.{stream}.{durable}"), config).await?;
        if let Some(error) = created.get("error") {
            // A consumer made for another subject stays: say so rather than read the wrong one.
            return Err(ConsumeError::Refused(format!(
                "JetStream consumer {durable} on stream {stream}: {}",
                error["description"].as_str().unwrap_or("refused")
            )));
        }
        Ok(Self { client, stream, durable, pending: None })
    }

    /// One pull request: a message, or `None` when there is none (in time).
    async fn next(&self, wait: Option<Duration>) -> Result<Option<Message>, ConsumeError> {
        let (body, timeout) = match wait {
            Some(wait) => (json!({ "batch": 1, "expires": wait.as_nanos() as u64 }), wait + REQUEST_SLACK),
            None => (json!({ "batch": 1, "no_wait": true }), CONNECT_TIMEOUT),
        };
        // A delivered message keeps its own subject, which the client's shared reply
        // subscription cannot match to the request: each pull has an inbox of its own.
        let request = Request::new()
            .payload(Bytes::from(body.to_string()))
            .timeout(Some(timeout))
            .inbox(self.client.new_inbox());
        let subject = format!("$JS.API.CONSUMER.MSG.NEXT.{}.{}", self.stream, self.durable);
        let message = self
            .client
            .send_request(subject, request)
            .await
            .map_err(|e| ConsumeError::Unreachable(format!("JetStream pull: {e}")))?;
        match message.status {
            None | Some(StatusCode::OK) if message.reply.is_some() => Ok(Some(message)),
            // 404 no messages, 408 the request expired, 409 the consumer is busy elsewhere.
            Some(StatusCode::NOT_FOUND | StatusCode::TIMEOUT | StatusCode::REQUEST_TERMINATED) => Ok(None),
            Some(status) => Err(ConsumeError::Refused(format!(
                "JetStream pull: {status} {}",
                message.description.as_deref().unwrap_or("")
            ))),
            None => Ok(None),
        }
    }
}

#[async_trait]
impl Consumer for NatsConsumer {
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, ConsumeError> {
        let mut out = Vec::new();
        let Some(first) = self.next(Some(wait)).await? else {
            self.pending = Some(0);
            return Ok(out);
        };
        out.push(self.delivery(first));
        while out.len() < max {
            match self.next(None).await? {
                Some(message) => out.push(self.delivery(message)),
                None => break,
            }
        }
        Ok(out)
    }

    async fn ack(&mut self, receipts: &[String]) -> Result<(), ConsumeError> {
        for reply in receipts {
            self.client
                .publish(reply.clone(), Bytes::from_static(b"+ACK"))
                .await
                .map_err(|e| ConsumeError::Unreachable(format!("JetStream ack: {e}")))?;
        }
        self.client.flush().await.map_err(|e| ConsumeError::Unreachable(format!("JetStream ack: {e}")))
    }

    async fn pending(&mut self) -> Option<u64> {
        self.pending
    }
}

impl NatsConsumer {
    fn delivery(&mut self, message: Message) -> Delivery {
        let reply = message.reply.as_ref().map(|r| r.to_string()).unwrap_or_default();
        let ack = AckSubject::parse(&reply);
        if let Some(ack) = &ack {
            // The messages behind this one: what is left once the batch is acked.
            self.pending = Some(ack.pending);
        }
        let headers = message.headers.as_ref();
        let incoming = Incoming {
            subject: message.subject.to_string(),
            message_id: header(headers, "Nats-Msg-Id"),
            sequence: ack.map(|a| a.stream_sequence.to_string()),
            attributes: attributes(headers),
            body: message.payload,
        };
        Delivery { message: incoming, receipt: reply }
    }
}

fn header(headers: Option<&HeaderMap>, name: &str) -> Option<String> {
    headers?.get(name).map(|v| v.as_str().to_owned()).filter(|v| !v.is_empty())
}

fn attributes(headers: Option<&HeaderMap>) -> Vec<(String, String)> {
    let Some(headers) = headers else { return Vec::new() };
    headers
        .iter()
        .filter_map(|(name, values)| {
            let attribute = attribute_name(name.as_ref(), &[ATTRIBUTE_PREFIX])?;
            Some((attribute, values.first()?.as_str().to_owned()))
        })
        .collect()
}

/// What a JetStream ack subject tells: `$JS.ACK.<stream>.<consumer>.<delivered>.<stream
/// seq>.<consumer seq>.<time>.<pending>`.
struct AckSubject {
    stream_sequence: u64,
    pending: u64,
}

impl AckSubject {
    fn parse(subject: &str) -> Option<Self> {
        let tokens: Vec<&str> = subject.split('.').collect();
        if tokens.get(..2) != Some(&["$JS", "ACK"]) {
            return None;
        }
        // Nine tokens, or (newer) a domain and an account hash more and a token at the end.
        let (sequence, pending) = match tokens.len() {
            9 => (5, 8),
            n if n >= 11 => (7, 10),
            _ => return None,
        };
        let number = |i: usize| tokens.get(i)?.parse::<u64>().ok();
        Some(Self { stream_sequence: number(sequence)?, pending: number(pending)? })
    }
}

/// A JetStream API call (`$JS.API.<what>`).
async fn api(client: &Client, what: &str, body: Value) -> Result<Value, ConsumeError> {
    let reply = client
        .request(format!("$JS.API.{what}"), Bytes::from(body.to_string()))
        .await
        .map_err(|e| ConsumeError::Unreachable(format!("JetStream {what}: {e} (is JetStream on?)")))?;
    serde_json::from_slice(&reply.payload)
        .map_err(|e| ConsumeError::Refused(format!("JetStream {what}: the reply is not JSON: {e}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ack_subjects_give_the_stream_sequence_and_the_pending_count() {
        let ack = AckSubject::parse("$JS.ACK.ORDERS.bifrost-b.1.42.40.1700000000000000000.7").unwrap();
        assert_eq!((ack.stream_sequence, ack.pending), (42, 7));
        let long =
            AckSubject::parse("$JS.ACK.dom.hash.ORDERS.bifrost-b.1.43.40.1700000000000000000.8.tok").unwrap();
        assert_eq!((long.stream_sequence, long.pending), (43, 8));
        assert!(AckSubject::parse("_INBOX.x").is_none());
        assert_eq!(durable_name("a.b"), "bifrost-a_b");
    }
}
