//! One attempt: sign, send to the vetted address, classify the answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};

use crate::endpoint::Endpoint;
use crate::sign::signature_header;
use crate::ssrf::{AddressPolicy, VettingResolver, forbidden_address};

/// The first bytes of an answer that the attempt log keeps.
const RESPONSE_BODY_LIMIT: usize = 1024;

/// How an attempt ended, as the metrics count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OutcomeKind {
    Success,
    HttpError,
    Timeout,
    NetworkError,
    Forbidden,
}

impl OutcomeKind {
    /// Every kind, in the order of their discriminants.
    pub(crate) const ALL: [OutcomeKind; 5] =
        [Self::Success, Self::HttpError, Self::Timeout, Self::NetworkError, Self::Forbidden];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::HttpError => "http_error",
            Self::Timeout => "timeout",
            Self::NetworkError => "network_error",
            Self::Forbidden => "forbidden",
        }
    }
}

/// What an attempt found out.
#[derive(Clone, Debug)]
pub(crate) struct Outcome {
    pub kind: OutcomeKind,
    pub status: Option<u16>,
    pub elapsed: Duration,
    pub response_body: Option<String>,
    pub error: Option<String>,
    /// `Retry-After` of a 429 or 503, in whole seconds.
    pub retry_after: Option<Duration>,
}

impl Outcome {
    pub(crate) fn succeeded(&self) -> bool {
        self.kind == OutcomeKind::Success
    }

    /// `410 Gone`: the receiver asks not to be called again.
    pub(crate) fn gone(&self) -> bool {
        self.status == Some(410)
    }
}

/// A client for one endpoint: its own connection pool, rustls with the system's roots, the
/// vetting resolver, no proxy, no redirects.
pub(crate) fn client(policy: &Arc<AddressPolicy>) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(VettingResolver::new(Arc::clone(policy))))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("Bifrost-Webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// What an attempt sends.
pub(crate) struct Request<'a> {
    pub webhook_id: &'a str,
    pub body: &'a Bytes,
    pub content_type: &'a str,
}

/// Makes one attempt: sign with every valid key, send, read the first KiB of the answer.
pub(crate) async fn attempt(
    client: &reqwest::Client,
    policy: &AddressPolicy,
    endpoint: &Endpoint,
    request: Request<'_>,
) -> Outcome {
    let started = Instant::now();
    let failed = |kind, error: String| Outcome {
        kind,
        status: None,
        elapsed: started.elapsed(),
        response_body: None,
        error: Some(error),
        retry_after: None,
    };
    let url = match reqwest::Url::parse(&endpoint.spec.url) {
        Ok(url) => url,
        Err(e) => return failed(OutcomeKind::NetworkError, format!("invalid url: {e}")),
    };
    if let Err(forbidden) = policy.check_literal_host(&url) {
        return failed(OutcomeKind::Forbidden, forbidden.to_string());
    }
    let now = bifrost_core::Timestamp::now();
    let timestamp = now.as_micros().div_euclid(1_000_000);
    let keys = endpoint.signing_keys(now);
    let signature = signature_header(&keys, request.webhook_id, timestamp, request.body);

    let mut headers = HeaderMap::new();
    for (name, value) in &endpoint.spec.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value))
        {
            headers.insert(name, value);
        }
    }
    let fixed = [
        ("webhook-id", request.webhook_id.to_owned()),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", signature),
    ];
    for (name, value) in fixed {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    if let Ok(value) = HeaderValue::from_str(request.content_type) {
        headers.insert(CONTENT_TYPE, value);
    }

    let sent = client
        .post(url)
        .headers(headers)
        .timeout(endpoint.spec.timeout())
        .body(request.body.clone())
        .send()
        .await;
    let mut response = match sent {
        Ok(response) => response,
        Err(e) => return classify_error(&e, started),
    };
    let status = response.status().as_u16();
    let retry_after = if matches!(status, 429 | 503) {
        response.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(parse_retry_after)
    } else {
        None
    };
    let mut body = Vec::new();
    while body.len() < RESPONSE_BODY_LIMIT {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(e) => {
                if e.is_timeout() {
                    return failed(OutcomeKind::Timeout, "timed out reading the answer".into());
                }
                break;
            }
        }
    }
    body.truncate(RESPONSE_BODY_LIMIT);
    let success = (200..300).contains(&status);
    Outcome {
        kind: if success { OutcomeKind::Success } else { OutcomeKind::HttpError },
        status: Some(status),
        elapsed: started.elapsed(),
        response_body: Some(String::from_utf8_lossy(&body).into_owned()),
        error: (!success).then(|| format!("the receiver answered {status}")),
        retry_after,
    }
}

/// `Retry-After`: delay-seconds, or an HTTP date (how long until then; a date past is 0).
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc2822).ok()?;
    let wait = at - time::OffsetDateTime::now_utc();
    Some(Duration::try_from(wait).unwrap_or(Duration::ZERO))
}

fn classify_error(e: &reqwest::Error, started: Instant) -> Outcome {
    let (kind, error) = if let Some(ip) = forbidden_address(e) {
        (OutcomeKind::Forbidden, format!("forbidden address {ip}"))
    } else if e.is_timeout() {
        (OutcomeKind::Timeout, "timed out".to_owned())
    } else {
        (OutcomeKind::NetworkError, error_chain(e))
    };
    Outcome {
        kind,
        status: None,
        elapsed: started.elapsed(),
        response_body: None,
        error: Some(error),
        retry_after: None,
    }
}

/// An error with its causes, `a: b: c`, for the attempt log.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_seconds_or_an_http_date() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO), "a date past");
        let later = time::OffsetDateTime::now_utc() + time::Duration::seconds(90);
        let header =
            later.format(&time::format_description::well_known::Rfc2822).map(|s| s.replace("+0000", "GMT"));
        let wait = header.ok().and_then(|h| parse_retry_after(&h));
        assert!(
            wait.is_some_and(|w| w > Duration::from_secs(80) && w <= Duration::from_secs(90)),
            "{wait:?}"
        );
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_retry_after("-5"), None);
    }
}
