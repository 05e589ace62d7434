//! Raw HTTP for the HTTP workloads: request bodies written straight into bytes and answers
//! read into `bifrost_api`'s types, so the load generator measures the server, not a
//! client library's overhead. The JSON shapes are the API's own; nothing here defines one.

use anyhow::{Context, anyhow, bail};
use bifrost_api::Problem;
use bytes::Bytes;
use reqwest::{StatusCode, Url};
use serde::Deserialize;

use crate::output::one_line;
use crate::remote::error_chain;

/// A `reqwest` client and the server's base URL.
#[derive(Clone, Debug)]
pub(super) struct RawClient {
    http: reqwest::Client,
    base: Url,
}

impl RawClient {
    pub(super) fn new(base: &str, http: reqwest::Client) -> anyhow::Result<Self> {
        let mut base = Url::parse(base).map_err(|e| anyhow!("invalid server URL {base:?}: {e}"))?;
        if base.scheme() != "http" {
            bail!("server URL {base} is not supported: use http://HOST:PORT");
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        Ok(Self { http, base })
    }

    pub(super) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub(super) fn base(&self) -> &Url {
        &self.base
    }

    /// The URL of `segments` under the base, each segment percent-encoded, plus a query.
    pub(super) fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query.iter().map(|(k, v)| (k, v.as_str())));
        }
        url
    }

    /// A one-line message for a request that got no HTTP answer.
    pub(super) fn transport_error(&self, e: reqwest::Error) -> anyhow::Error {
        let server = self.base.as_str().trim_end_matches('/');
        if e.is_connect() {
            anyhow!("cannot connect to the server at {server} (is `bifrost serve` running?)")
        } else if e.is_timeout() {
            anyhow!("the server at {server} did not answer in time")
        } else {
            anyhow!("request to {server} failed: {}", error_chain(&e))
        }
    }

    /// Sends `request` and returns the body of an answer with status `expected`; any
    /// other answer is an error with the server's problem.
    pub(super) async fn exchange(
        &self,
        request: reqwest::RequestBuilder,
        expected: StatusCode,
    ) -> anyhow::Result<Bytes> {
        self.exchange_if(request, |status| status == expected).await
    }

    /// [`Self::exchange`], for a request that may succeed with any 2xx (a PUT that creates
    /// or replaces).
    pub(super) async fn exchange_success(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Bytes> {
        self.exchange_if(request, |status| status.is_success()).await
    }

    async fn exchange_if(
        &self,
        request: reqwest::RequestBuilder,
        expected: impl Fn(StatusCode) -> bool,
    ) -> anyhow::Result<Bytes> {
        let response = request.send().await.map_err(|e| self.transport_error(e))?;
        let status = response.status();
        let body = response.bytes().await.with_context(|| format!("reading a {status} answer"))?;
        if !expected(status) {
            bail!("answered {status}: {}", problem_message(status, &body));
        }
        Ok(body)
    }

    /// GET, expecting `200 OK`.
    pub(super) async fn get(&self, url: Url) -> anyhow::Result<Bytes> {
        self.exchange(self.http.get(url), StatusCode::OK).await
    }
}

/// `title: detail` of a problem answer, or the status and the start of the body.
pub(super) fn problem_message(status: StatusCode, body: &[u8]) -> String {
    match serde_json::from_slice::<Problem>(body) {
        Ok(problem) if problem.detail.is_empty() => one_line(&problem.title),
        Ok(problem) => one_line(&format!("{}: {}", problem.title, problem.detail)),
        Err(_) => {
            let text: String = String::from_utf8_lossy(body).chars().take(200).collect();
            if text.trim().is_empty() {
                format!("HTTP {status}")
            } else {
                one_line(&format!("HTTP {status}: {text}"))
            }
        }
    }
}

/// An answer read as one of the API's types.
pub(super) fn parse<'a, T: Deserialize<'a>>(body: &'a [u8], what: &str) -> anyhow::Result<T> {
    serde_json::from_slice(body).map_err(|e| anyhow!("unexpected answer to {what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_built_under_the_base_with_encoded_parts() {
        let c = RawClient::new("http://127.0.0.1:7070", reqwest::Client::new()).unwrap();
        let url = c.url(&["v1", "streams", "order-1", "events"], &[("from", "3".into())]);
        assert_eq!(url.as_str(), "http://127.0.0.1:7070/v1/streams/order-1/events?from=3");
        let c = RawClient::new("http://h:1/prefix", reqwest::Client::new()).unwrap();
        let url = c.url(&["v1", "events"], &[("type", "a.#".into()), ("type", "b.*".into())]);
        assert_eq!(url.as_str(), "http://h:1/prefix/v1/events?type=a.%23&type=b.*");
        assert!(RawClient::new("https://example.org", reqwest::Client::new()).is_err());
    }

    #[test]
    fn problems_read_as_title_and_detail() {
        let body = br#"{"type":"bifrost:wrong-expected-version","title":"Wrong expected version","status":409,"detail":"stream a expected version 1 but is at version 2"}"#;
        assert_eq!(
            problem_message(StatusCode::CONFLICT, body),
            "Wrong expected version: stream a expected version 1 but is at version 2"
        );
        assert_eq!(
            problem_message(StatusCode::BAD_GATEWAY, b"oops\nmore"),
            "HTTP 502 Bad Gateway: oops more"
        );
    }
}
