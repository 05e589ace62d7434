//! A Rust client of Bifrost's HTTP API (`/v1`).
//!
//! [`Client`] implements [`bifrost_core::EventStore`], so code written against the store
//! contract (catch-up subscriptions, the bus, projections) runs unchanged against a remote
//! server; it passes the same conformance suite as the embedded backends. On top of that
//! it has live subscriptions over Server-Sent Events ([`Client::subscribe`]) and typed
//! consumer-group calls ([`Client::put_group`], [`Client::fetch`], [`Client::ack`],
//! [`Client::nack`], the dead-letter queue). Requests and answers go through the API's
//! own types ([`api`], the `bifrost-api` crate the server uses too), so the client cannot
//! drift from the server's JSON. Webhook endpoints ([`Client::create_webhook`], …) and
//! real-time publishes, presence and bridges ([`Client::publish`], [`Client::presence`],
//! [`Client::put_bridge`], …) are plain calls too.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use bifrost_client::Client;
//! use bifrost_core::{EventStore, ExpectedVersion, NewEvent, StreamName};
//!
//! let client = Client::new("http://127.0.0.1:7070")?;
//! let event = NewEvent::json("order.submitted", &serde_json::json!({"total": 42.5}))?;
//! let stream = StreamName::new("order-123")?;
//! client.append(stream, ExpectedVersion::NoStream, vec![event]).await?;
//! # Ok(()) }
//! ```
//!
//! # Errors
//! The [`EventStore`](bifrost_core::EventStore) methods answer the contract's
//! [`bifrost_core::Error`]: `409 bifrost:wrong-expected-version` becomes
//! `WrongExpectedVersion` (with every conflict), `bifrost:duplicate-event-id`
//! `DuplicateEventId`, `bifrost:stream-not-found` `StreamNotFound`, `410` `StreamDeleted`,
//! `bifrost:out-of-range` `OutOfRange`, `bifrost:group-not-found` `GroupNotFound`,
//! `bifrost:state-conflict` `StateConflict`, any other 4xx `InvalidArgument` with the
//! server's detail, no answer or `503` `Unavailable`, another 5xx `Storage` (the server
//! keeps the cause of a 500 to its log), and an answer that does not decode `Corrupt`. The
//! client's own calls ([`Client::append_streams`], [`Client::stream_events`],
//! [`Client::log_events`], the group calls) answer [`Error`], which keeps the whole
//! [`Problem`].
//!
//! # Payloads
//! An event's `data` is sent as the caller's bytes and read back as a slice of the
//! answer, never re-serialised, so JSON comes back byte for byte. Two limits of JSON over
//! HTTP remain: `data` must be one JSON value (checked before sending), and whitespace
//! around that value cannot travel inside the request document, so it is not kept.
//!
//! # The head watch
//! [`EventStore::head`](bifrost_core::EventStore::head) returns a `watch::Receiver` of
//! the position of the last committed event. The client moves it itself with every
//! position an answer shows (its own appends, pages it reads), so it always covers the
//! client's own writes. On the first call, a background task starts: it asks the server
//! for its head, then follows `GET /v1/subscribe` from there and moves the watch with each
//! event's id, resuming a dropped connection with `Last-Event-ID` after growing delays.
//! (The API has no feed of positions alone, so the follower receives every event; it
//! reads only the ids.)
//! Until that task has caught up, the watch may be behind the server (it starts at the
//! highest position this client has seen); [`Client::fetch_head`] asks the server and
//! moves it at once. The watch never moves back. The task stops when the last clone of
//! the client is dropped or [`close`](bifrost_core::EventStore::close) is called; closing
//! also closes the watch, which ends the subscriptions that wait on it.
//!
//! # TLS
//! The built-in HTTP client speaks plain HTTP. For `https://` servers, pass a `reqwest`
//! client built with TLS through [`ClientBuilder::http_client`].

mod client;
mod error;
mod groups;
mod head;
mod keys;
mod realtime;
pub mod sse;
#[cfg(test)]
mod stand_in;
mod store;
mod subscribe;
mod webhooks;
mod wire;

/// The API's JSON types, which the group calls take and answer.
pub use bifrost_api as api;
pub use bifrost_api::Problem;
pub use client::{Client, ClientBuilder};
pub use error::{Error, Result};
pub use groups::{DeadLetter, DeadLetterPage, Message, PutOutcome};
pub use realtime::Publication;
pub use store::MAX_PAGE;
