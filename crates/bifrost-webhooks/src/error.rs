//! What a webhook operation can fail with; the server maps each onto a problem type.

/// A failed webhook operation.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A bad field or parameter (400).
    #[error("{0}")]
    Invalid(String),
    /// The URL names an address webhooks may not reach (422).
    #[error("{0}")]
    UrlForbidden(String),
    /// No endpoint has this id (404).
    #[error("no webhook endpoint {0:?}")]
    NotFound(String),
    /// The endpoint's filter does not match this event, or there is no such event (404).
    #[error("{0}")]
    MessageNotFound(String),
    /// Resend or recover on a disabled endpoint (409).
    #[error("webhook endpoint {0:?} is disabled; enable it first")]
    Disabled(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] bifrost_core::Error),
}

pub type Result<T, E = WebhookError> = std::result::Result<T, E>;
