//! `bifrost tail`: follow `GET /v1/subscribe` (Server-Sent Events) and print each event as
//! a JSON line. A dropped connection is resumed with `Last-Event-ID`, so no event is lost
//! or printed twice.

use std::time::Duration;

use anyhow::{anyhow, bail};
use clap::Args;
use futures::StreamExt;
use reqwest::header::{ACCEPT, CONTENT_TYPE};

use crate::cli::ServerArg;
use crate::client::{ApiClient, error_chain, problem_message};
use crate::output::JsonLines;
use bifrost_client::sse::SseParser;

const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug, Args)]
pub(crate) struct TailArgs {
    /// Start after this position (exclusive); 0 replays the whole log first
    /// [default: only events committed from now on].
    #[arg(long, value_name = "POSITION")]
    pub(crate) from_position: Option<u64>,

    /// Only events whose type matches this pattern (`*` one segment, `#` any); repeat for
    /// several.
    #[arg(long = "type", value_name = "PATTERN")]
    pub(crate) types: Vec<String>,

    /// Give up after this many failed reconnections in a row.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub(crate) max_retries: u32,

    #[command(flatten)]
    pub(crate) server: ServerArg,
}

/// How a connection ended when reconnecting may help: the server closed the stream or the
/// connection broke.
struct Dropped {
    /// Whether anything arrived on it (a healthy connection resets the backoff).
    received: bool,
    why: String,
}

pub(crate) async fn run(args: TailArgs) -> anyhow::Result<()> {
    let client = ApiClient::new(&args.server.server)?;
    let mut out = JsonLines::stdout();
    let mut parser = SseParser::new();
    let mut failures = 0u32;
    let mut backoff = FIRST_BACKOFF;
    loop {
        let Dropped { received, why } = follow(&client, &args, &mut parser, &mut out).await?;
        if received {
            failures = 0;
            backoff = FIRST_BACKOFF;
        }
        failures += 1;
        if failures > args.max_retries {
            bail!("lost the connection to the server and could not resume ({why})");
        }
        let delay = parser.retry_ms().map_or(backoff, |ms| Duration::from_millis(ms).max(backoff));
        tracing::warn!(
            "connection lost ({why}); resuming after position {} in {delay:?}",
            parser.last_id().unwrap_or("(none yet)")
        );
        tokio::time::sleep(delay).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection: subscribe (resuming after the last id seen) and print until it ends.
/// Errors that a retry cannot fix (a rejected request, a closed stdout) are returned.
async fn follow(
    client: &ApiClient,
    args: &TailArgs,
    parser: &mut SseParser,
    out: &mut JsonLines,
) -> anyhow::Result<Dropped> {
    let mut query: Vec<(&str, String)> = Vec::new();
    if let Some(from) = args.from_position {
        query.push(("from_position", from.to_string()));
    }
    query.extend(args.types.iter().map(|t| ("type", t.clone())));
    let mut request =
        client.http().get(client.url(&["v1", "subscribe"], &query)).header(ACCEPT, "text/event-stream");
    if let Some(last) = parser.last_id() {
        request = request.header("Last-Event-ID", last);
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(e) => return Ok(Dropped { received: false, why: client.transport_error(e).to_string() }),
    };
    let status = response.status();
    if status.is_server_error() {
        return Ok(Dropped { received: false, why: format!("HTTP {status}") });
    }
    if !status.is_success() {
        let body = response.bytes().await.unwrap_or_default();
        return Err(anyhow!(problem_message(status, &body)));
    }
    let is_sse = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !is_sse {
        bail!("the server did not answer with an event stream (is {} a bifrost server?)", client.base());
    }

    let mut body = response.bytes_stream();
    let mut received = false;
    let mut events = Vec::new();
    loop {
        match body.next().await {
            Some(Ok(chunk)) => {
                received = true;
                parser.feed(&chunk, |event| events.push(event));
                for event in events.drain(..) {
                    out.line(&String::from_utf8_lossy(&event.data))?;
                }
                out.flush()?;
            }
            Some(Err(e)) => return Ok(Dropped { received, why: error_chain(&e) }),
            None => return Ok(Dropped { received, why: "the server closed the stream".into() }),
        }
    }
}
