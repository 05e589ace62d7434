//! A thin client of the v1 HTTP API for the CLI commands and the HTTP bench workloads:
//! URLs, requests and problem+json errors. Bodies stay bytes so that event JSON is printed
//! as the server sent it.

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use reqwest::{StatusCode, Url};
use serde::Deserialize;

#[derive(Clone, Debug)]
pub(crate) struct ApiClient {
    http: reqwest::Client,
    base: Url,
}

/// An RFC 9457 problem as the server sends it.
#[derive(Debug, Deserialize)]
struct Problem {
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    detail: Option<String>,
}

impl ApiClient {
    pub(crate) fn new(base: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder().build().context("cannot create the HTTP client")?;
        Self::with_http(base, http)
    }

    pub(crate) fn with_http(base: &str, http: reqwest::Client) -> anyhow::Result<Self> {
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

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub(crate) fn base(&self) -> &Url {
        &self.base
    }

    /// The URL of `segments` under the base, each segment percent-encoded, plus a query.
    pub(crate) fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query.iter().map(|(k, v)| (k, v.as_str())));
        }
        url
    }

    /// POSTs a JSON body and returns the response body of a 2xx answer.
    pub(crate) async fn post_json(&self, url: Url, body: Vec<u8>) -> anyhow::Result<Bytes> {
        let request =
            self.http.post(url).header(reqwest::header::CONTENT_TYPE, "application/json").body(body);
        self.send(request).await
    }

    /// PUTs a JSON body and returns the response body of a 2xx answer.
    pub(crate) async fn put_json(&self, url: Url, body: Vec<u8>) -> anyhow::Result<Bytes> {
        let request = self.http.put(url).header(reqwest::header::CONTENT_TYPE, "application/json").body(body);
        self.send(request).await
    }

    /// POSTs with no body (the API ignores any).
    pub(crate) async fn post_empty(&self, url: Url) -> anyhow::Result<Bytes> {
        self.send(self.http.post(url)).await
    }

    pub(crate) async fn get(&self, url: Url) -> anyhow::Result<Bytes> {
        self.send(self.http.get(url)).await
    }

    /// DELETE; a 2xx answer's body (empty for `204`).
    pub(crate) async fn delete(&self, url: Url) -> anyhow::Result<Bytes> {
        self.send(self.http.delete(url)).await
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Bytes> {
        let response = request.send().await.map_err(|e| self.transport_error(e))?;
        read_success(response).await
    }

    /// A one-line message for a request that got no HTTP answer.
    pub(crate) fn transport_error(&self, e: reqwest::Error) -> anyhow::Error {
        let server = self.base.as_str().trim_end_matches('/');
        if e.is_connect() {
            anyhow!("cannot connect to the server at {server} (is `bifrost serve` running?)")
        } else if e.is_timeout() {
            anyhow!("the server at {server} did not answer in time")
        } else {
            anyhow!("request to {server} failed: {}", error_chain(&e))
        }
    }
}

/// The body of a 2xx response; any other status becomes `title: detail`.
pub(crate) async fn read_success(response: reqwest::Response) -> anyhow::Result<Bytes> {
    let status = response.status();
    let body = response.bytes().await.with_context(|| format!("reading a {status} response"))?;
    if status.is_success() {
        return Ok(body);
    }
    Err(anyhow!(problem_message(status, &body)))
}

/// `title: detail` from a problem+json body, or the status and the start of the body.
pub(crate) fn problem_message(status: StatusCode, body: &[u8]) -> String {
    match serde_json::from_slice::<Problem>(body) {
        Ok(Problem { title: Some(title), detail: Some(detail) }) if !detail.is_empty() => {
            one_line(&format!("{title}: {detail}"))
        }
        Ok(Problem { title: Some(title), .. }) => one_line(&title),
        _ => {
            let text = String::from_utf8_lossy(body);
            let text: String = text.chars().take(200).collect();
            if text.trim().is_empty() {
                format!("HTTP {status}")
            } else {
                one_line(&format!("HTTP {status}: {text}"))
            }
        }
    }
}

/// Collapses every run of whitespace (newlines included) into one space.
pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A JSON answer of the server read as `T`.
pub(crate) fn parse_answer<'a, T: Deserialize<'a>>(body: &'a [u8]) -> anyhow::Result<T> {
    serde_json::from_slice(body).map_err(|e| anyhow!("unexpected answer from the server: {e}"))
}

/// `e: cause: cause` on one line.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_built_under_the_base_with_encoded_parts() {
        let c = ApiClient::new("http://127.0.0.1:7070").unwrap();
        let url = c.url(&["v1", "streams", "order-1", "events"], &[("from", "3".into())]);
        assert_eq!(url.as_str(), "http://127.0.0.1:7070/v1/streams/order-1/events?from=3");
        let c = ApiClient::new("http://h:1/prefix").unwrap();
        let url = c.url(&["v1", "events"], &[("type", "a.#".into()), ("type", "b.*".into())]);
        assert_eq!(url.as_str(), "http://h:1/prefix/v1/events?type=a.%23&type=b.*");
    }

    #[test]
    fn only_plain_http_is_accepted() {
        assert!(ApiClient::new("https://example.org").is_err());
        assert!(ApiClient::new("not a url").is_err());
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
