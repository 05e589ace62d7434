//! The client commands' side of `bifrost-client`: connecting to the server given on the
//! command line, and turning the client's errors into one readable line.

use anyhow::{anyhow, bail};
use bifrost_api::{Problem, ProblemType};
use bifrost_client::{Client, ClientBuilder, Error};
use reqwest::Url;

use crate::cli::Target;
use crate::output::one_line;

/// A client of the server `target` names (plain `http://`), with its credential.
pub(crate) fn connect(target: &impl Target) -> anyhow::Result<Client> {
    builder(target)?.build().map_err(describe)
}

/// The builder of [`connect`], for commands that need more settings.
pub(crate) fn builder(target: &impl Target) -> anyhow::Result<ClientBuilder> {
    let server = target.url();
    let url = Url::parse(server).map_err(|e| anyhow!("invalid server URL {server:?}: {e}"))?;
    if url.scheme() != "http" {
        bail!("server URL {url} is not supported: use http://HOST:PORT");
    }
    let builder = Client::builder(server);
    Ok(match target.key() {
        Some(key) => builder.bearer_token(key),
        None => builder,
    })
}

/// An argument the server would refuse, refused before sending: the line reads as the
/// server's `bifrost:invalid-argument` problem would.
pub(crate) fn invalid_argument(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("{}: {e}", ProblemType::InvalidArgument.title())
}

/// One line for a failed call: the server's problem as `title: detail`, or what kept the
/// request from getting an answer.
pub(crate) fn describe(e: Error) -> anyhow::Error {
    let line = match &e {
        Error::Problem(problem) => problem_line(problem),
        // The client names these itself; the line reads as the server's problem did.
        Error::GroupNotFound(_) => format!("{}: {e}", ProblemType::GroupNotFound.title()),
        Error::DeadLetterNotFound { .. } => format!("{}: {e}", ProblemType::DeadLetterNotFound.title()),
        Error::Transport { server, source } if source.is_connect() => {
            format!("cannot connect to the server at {server} (is `bifrost serve` running?)")
        }
        Error::Transport { server, source } if source.is_timeout() => {
            format!("the server at {server} did not answer in time")
        }
        Error::Transport { server, source } => format!("request to {server} failed: {}", error_chain(source)),
        _ => e.to_string(),
    };
    anyhow!(one_line(&line))
}

/// `title: detail`, or the title alone.
fn problem_line(problem: &Problem) -> String {
    match (problem.title.is_empty(), problem.detail.is_empty()) {
        (false, false) => format!("{}: {}", problem.title, problem.detail),
        (false, true) => problem.title.clone(),
        (true, _) => format!("HTTP {}: {}", problem.status, problem.detail),
    }
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

    fn server(url: &str) -> crate::cli::ServerArg {
        crate::cli::ServerArg {
            server: url.to_owned(),
            key: crate::cli::KeyArg { key: Some("bfk_test".to_owned()) },
        }
    }

    #[test]
    fn only_plain_http_is_accepted() {
        assert!(connect(&server("https://example.org")).is_err());
        assert!(connect(&server("not a url")).is_err());
        assert!(connect(&server("http://127.0.0.1:7070")).is_ok());
    }

    #[test]
    fn problems_read_as_title_and_detail() {
        let problem: Problem = serde_json::from_str(
            r#"{"type":"bifrost:wrong-expected-version","title":"Wrong expected version","status":409,
                "detail":"stream a expected version 1 but is at version 2"}"#,
        )
        .unwrap();
        assert_eq!(
            describe(Error::Problem(Box::new(problem))).to_string(),
            "Wrong expected version: stream a expected version 1 but is at version 2"
        );
        assert_eq!(
            describe(Error::GroupNotFound("billing".into())).to_string(),
            "Consumer group not found: there is no consumer group billing"
        );
    }
}
