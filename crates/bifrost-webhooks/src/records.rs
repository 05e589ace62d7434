//! What the webhook engine keeps in the store's state space, beside the delivery groups:
//! endpoints, one record per attempted message, the attempt log and the resend queue.
//! Keys of messages and attempts sort newest first, so a page of the API is one scan.

use bifrost_api::{
    AttemptBody, AttemptStatusBody, AttemptTriggerBody, MessageStatusBody, WebhookMessageBody,
};
use bifrost_core::group::random;
use bifrost_core::{EventId, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Every endpoint, keyed by id (ids sort by creation time).
pub(crate) const ENDPOINTS: &str = "webhooks";
/// Resends and recoveries waiting for their attempt, keyed `<endpoint>/<position key>`.
pub(crate) const RESENDS: &str = "webhook-resends";

pub(crate) fn messages_scope(endpoint: &str) -> String {
    format!("webhook-messages/{endpoint}")
}

pub(crate) fn attempts_scope(endpoint: &str) -> String {
    format!("webhook-attempts/{endpoint}")
}

/// A message's key: newest (highest position) first.
pub(crate) fn message_key(position: u64) -> String {
    format!("{:016x}", u64::MAX - position)
}

/// The key of an attempt made at `at`: newest first, with a random tail so that two
/// attempts in one microsecond do not collide.
pub(crate) fn attempt_key(at: Timestamp) -> String {
    let inverted = i64::MAX.saturating_sub(at.as_micros().max(0));
    format!("{inverted:016x}{:08x}", random::next_u64() as u32)
}

/// The smallest attempt key older than `at` (for pruning: every key after it is older).
pub(crate) fn attempt_key_before(at: Timestamp) -> String {
    let inverted = i64::MAX.saturating_sub(at.as_micros().max(0));
    format!("{inverted:016x}ffffffff")
}

/// A resend's key: per endpoint, in position order.
pub(crate) fn resend_key(endpoint: &str, position: u64) -> String {
    format!("{endpoint}/{position:016x}")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum MessageStatus {
    Pending,
    Succeeded,
    Failed,
}

impl MessageStatus {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "succeeded" => Some(Self::Succeeded),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Trigger {
    Scheduled,
    Resend,
    Recover,
    Test,
}

impl Trigger {
    fn body(self) -> AttemptTriggerBody {
        match self {
            Self::Scheduled => AttemptTriggerBody::Scheduled,
            Self::Resend => AttemptTriggerBody::Resend,
            Self::Recover => AttemptTriggerBody::Recover,
            Self::Test => AttemptTriggerBody::Test,
        }
    }
}

/// A message that has been attempted (or failed before any attempt).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct MessageRecord {
    /// As the endpoint's tenant sees it (see `Endpoint::tenant_id`).
    pub event_id: EventId,
    pub position: u64,
    pub status: MessageStatus,
    pub attempts: u32,
    pub next_attempt_at: Option<Timestamp>,
    pub last_error: Option<String>,
    /// When it failed for the last time (what `recover` selects on).
    pub failed_at: Option<Timestamp>,
    /// The body every attempt sends, fixed at the first one, and its content type.
    pub content_type: Option<String>,
    pub body: Option<Box<RawValue>>,
}

impl MessageRecord {
    pub(crate) fn to_body(&self) -> WebhookMessageBody {
        WebhookMessageBody {
            event_id: self.event_id.to_string(),
            position: self.position,
            status: match self.status {
                MessageStatus::Pending => MessageStatusBody::Pending,
                MessageStatus::Succeeded => MessageStatusBody::Succeeded,
                MessageStatus::Failed => MessageStatusBody::Failed,
            },
            attempts: self.attempts,
            next_attempt_at: self.next_attempt_at.map(|t| t.to_string()),
            last_error: self.last_error.clone(),
            payload: self.body.clone(),
        }
    }
}

/// One attempt of the log.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct AttemptRecord {
    pub id: String,
    pub at: Timestamp,
    /// As the endpoint's tenant sees it.
    pub event_id: EventId,
    pub attempt: u32,
    pub trigger: Trigger,
    pub succeeded: bool,
    pub response_status: Option<u16>,
    pub response_time_ms: u64,
    pub response_body: Option<String>,
    pub error: Option<String>,
}

impl AttemptRecord {
    pub(crate) fn to_body(&self) -> AttemptBody {
        AttemptBody {
            id: self.id.clone(),
            at: self.at.to_string(),
            event_id: self.event_id.to_string(),
            attempt: self.attempt,
            trigger: self.trigger.body(),
            status: if self.succeeded { AttemptStatusBody::Succeeded } else { AttemptStatusBody::Failed },
            response_status: self.response_status,
            response_time_ms: self.response_time_ms,
            response_body: self.response_body.clone(),
            error: self.error.clone(),
        }
    }
}

/// A manual send (resend or recover) waiting for, or making, its attempts. A node claims
/// it by writing `claimed_until` over the value it read; a claim that runs out (its node
/// died) is taken by another node, the attempt counted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ResendEntry {
    pub event_id: EventId,
    pub position: u64,
    pub trigger: Trigger,
    /// Attempts made of this schedule so far.
    pub attempts: u32,
    pub due: Timestamp,
    pub claimed_until: Option<Timestamp>,
}

pub(crate) fn encode<T: Serialize>(value: &T) -> bifrost_core::Result<bytes::Bytes> {
    serde_json::to_vec(value)
        .map(bytes::Bytes::from)
        .map_err(|e| bifrost_core::Error::Internal(format!("cannot encode a webhook record: {e}")))
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> bifrost_core::Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| bifrost_core::Error::corrupt(format!("a stored webhook {what}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_newest_first() {
        assert!(message_key(10) < message_key(9));
        let old = Timestamp::from_micros(1_000);
        let new = Timestamp::from_micros(2_000);
        assert!(attempt_key(new) < attempt_key(old));
        assert!(attempt_key(new) < attempt_key_before(new));
        assert!(attempt_key_before(new) < attempt_key(old));
    }
}
