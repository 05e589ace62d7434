//! The wire contract of Bifrost's HTTP API (`/v1`): every request and answer body, and the
//! problem types of its error answers.
//!
//! This crate is the one definition of the API's JSON. The server (`bifrost-server`) reads
//! requests and writes answers through these types, the Rust client (`bifrost-client`)
//! writes requests and reads answers through the same ones, and the server's
//! `/openapi.json` is generated from them (feature `openapi`: utoipa's `ToSchema` on every
//! type). Serde only: no I/O, no HTTP stack, no dependency on the store's model — the
//! mapping between these shapes and the engine's types belongs to the server and the
//! client.
//!
//! # Compatibility
//! The serde shape of every type here is a promise to clients in any language: a field is
//! never renamed, retyped or removed, and a problem `type` is never reused. Answers may
//! grow fields, so readers ignore the ones they do not know; requests refuse unknown
//! fields, so a typo is an error rather than a silently ignored setting.
//!
//! # Payloads
//! An event's `data` (and its stored `metadata`) is a borrowed [`RawValue`]: the server
//! takes `data` out of the request body without re-serialising it, and a reader takes it
//! out of the answer the same way, so JSON travels byte for byte.
//!
//! [`RawValue`]: serde_json::value::RawValue

mod bridges;
mod cluster;
mod event;
mod groups;
mod keys;
mod lenient;
mod ops;
mod problem;
mod realtime;
mod schemas;
mod streams;
mod webhooks;

pub use bridges::{
    BridgeBody, BridgeConfigBody, BridgeContentModeBody, BridgeDirectionBody, BridgeErrorBody,
    BridgeKindBody, BridgeListBody, BridgeRequest, BridgeStateBody,
};
pub use cluster::{ClusterNodeBody, ClusterNodesBody};
pub use event::{EventBody, MetadataRequest, NewEventRequest};
pub use groups::{
    AckBody, AckRequest, BackoffBody, BackoffKindBody, BackoffRequest, ConsumerBody, DeadLetterBody,
    DeadLettersBody, FetchBody, GroupBody, GroupConfigBody, GroupConfigRequest, GroupFilterBody,
    GroupFilterRequest, GroupListBody, MAX_LEASES_PER_REQUEST, MAX_REASON_CHARS, MessageBody, NackActionBody,
    NackBody, NackRequest, ReplayBody, ReplayRequest, StartBody,
};
pub use keys::{KeyBody, KeyListBody, KeyRequest, NameRuleBody, RestrictBody, ScopeBody};
pub use lenient::Lenient;
pub use ops::StatusBody;
pub use problem::{ConflictBody, Problem, ProblemType, UnknownProblemType};
pub use realtime::{
    PresenceBody, PresenceConnectionBody, PresenceUserBody, PriorityBody, PublishRequest, PublishSourceBody,
    PublishTargetRequest, PublishedBody, RealtimeBridgeBody, RealtimeBridgeListBody, RealtimeBridgeRequest,
    StoredPublishBody,
};
pub use schemas::{CompatibilityBody, SchemaBody, SchemaListBody, SchemaRequest};
pub use streams::{
    AppendRequest, AppendResultBody, ExpectedVersion, HeadBody, LogEventsBody, MultiAppendRequest,
    MultiAppendResultBody, StreamAppendRequest, StreamEventsBody, StreamInfoBody, StreamListBody,
    StreamSummaryBody,
};
pub use webhooks::{
    AttemptBody, AttemptStatusBody, AttemptTriggerBody, AttemptsBody, ContentModeBody,
    DEFAULT_DISABLE_AFTER_S, DEFAULT_RETRY_SCHEDULE_MS, DEFAULT_ROTATION_GRACE_S, DEFAULT_TIMEOUT_MS,
    DisabledReasonBody, MAX_RETRY_SCHEDULE, MAX_TIMEOUT_MS, MessageStatusBody, RecoverRequest,
    RecoveringBody, RotateSecretBody, RotateSecretRequest, TestBody, TestRequest, WebhookBody,
    WebhookCreatedBody, WebhookFilterBody, WebhookFilterRequest, WebhookListBody, WebhookMessageBody,
    WebhookMessagesBody, WebhookRequest,
};
