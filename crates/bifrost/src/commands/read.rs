//! `bifrost read STREAM` and `bifrost read --all`: events as JSON lines, following the
//! API's page cursors.

use anyhow::Context;
use bifrost_core::StreamName;
use clap::Args;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::cli::ServerArg;
use crate::client::{ApiClient, parse_answer};
use crate::output::JsonLines;

/// The most the server returns in one page.
const MAX_PAGE: usize = 1000;
/// What one page holds when no --limit is given.
const DEFAULT_PAGE: usize = 100;

#[derive(Debug, Args)]
pub(crate) struct ReadArgs {
    /// The stream to read (leave it out with --all).
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub(crate) stream: Option<String>,

    /// Read the global log (every stream, in commit order) instead of one stream.
    #[arg(long)]
    pub(crate) all: bool,

    /// Stream: the first version to read [default: the first, or the last with --backward].
    #[arg(long, value_name = "VERSION", conflicts_with = "all")]
    pub(crate) from: Option<u64>,

    /// Stream: read from newer to older events.
    #[arg(long, conflicts_with = "all")]
    pub(crate) backward: bool,

    /// Stream: follow the pages to the end of the stream (else one page).
    #[arg(long, conflicts_with = "all")]
    pub(crate) all_pages: bool,

    /// Global log: start after this position (exclusive) [default: 0, the beginning].
    #[arg(long, value_name = "POSITION", requires = "all")]
    pub(crate) from_position: Option<u64>,

    /// Global log: only events whose type matches this pattern (`*` one segment, `#` any);
    /// repeat for several.
    #[arg(long = "type", value_name = "PATTERN", requires = "all")]
    pub(crate) types: Vec<String>,

    /// Global log: only events of streams in this category (the stream name before `-`).
    #[arg(long, value_name = "CATEGORY", requires = "all")]
    pub(crate) category: Option<String>,

    /// The most events to print [default: one page of 100 for a stream; everything with
    /// --all or --all-pages].
    #[arg(long, value_name = "N")]
    pub(crate) limit: Option<usize>,

    #[command(flatten)]
    pub(crate) server: ServerArg,
}

#[derive(Deserialize)]
struct StreamPage<'a> {
    #[serde(borrow)]
    events: Vec<&'a RawValue>,
    next: Option<u64>,
}

#[derive(Deserialize)]
struct LogPage<'a> {
    #[serde(borrow)]
    events: Vec<&'a RawValue>,
    next_position: u64,
}

pub(crate) async fn run(args: ReadArgs) -> anyhow::Result<()> {
    let client = ApiClient::new(&args.server.server)?;
    let mut out = JsonLines::stdout();
    match &args.stream {
        Some(stream) => read_stream(&client, &args, &StreamName::new(stream)?, &mut out).await?,
        None => read_log(&client, &args, &mut out).await?,
    }
    out.flush()?;
    Ok(())
}

async fn read_stream(
    client: &ApiClient,
    args: &ReadArgs,
    stream: &StreamName,
    out: &mut JsonLines,
) -> anyhow::Result<()> {
    let mut remaining = args.limit.unwrap_or(if args.all_pages { usize::MAX } else { DEFAULT_PAGE });
    let mut from = args.from;
    let direction = if args.backward { "backward" } else { "forward" };
    while remaining > 0 {
        let mut query =
            vec![("direction", direction.to_owned()), ("limit", remaining.min(MAX_PAGE).to_string())];
        if let Some(from) = from {
            query.push(("from", from.to_string()));
        }
        let body = client.get(client.url(&["v1", "streams", stream.as_str(), "events"], &query)).await?;
        let page: StreamPage<'_> = parse_answer(&body).context("reading a page of events")?;
        for event in page.events.iter().take(remaining) {
            out.line(event.get())?;
        }
        remaining = remaining.saturating_sub(page.events.len());
        match page.next {
            Some(next) if args.all_pages || args.limit.is_some() => from = Some(next),
            _ => break,
        }
        if page.events.is_empty() {
            break;
        }
    }
    Ok(())
}

async fn read_log(client: &ApiClient, args: &ReadArgs, out: &mut JsonLines) -> anyhow::Result<()> {
    let mut remaining = args.limit.unwrap_or(usize::MAX);
    let mut after = args.from_position.unwrap_or(0);
    while remaining > 0 {
        let mut query =
            vec![("from_position", after.to_string()), ("limit", remaining.min(MAX_PAGE).to_string())];
        query.extend(args.types.iter().map(|t| ("type", t.clone())));
        if let Some(category) = &args.category {
            query.push(("category", category.clone()));
        }
        let body = client.get(client.url(&["v1", "events"], &query)).await?;
        let page: LogPage<'_> = parse_answer(&body).context("reading a page of events")?;
        for event in page.events.iter().take(remaining) {
            out.line(event.get())?;
        }
        remaining = remaining.saturating_sub(page.events.len());
        // An empty page that does not move the cursor is the end of the log.
        if page.next_position <= after {
            break;
        }
        after = page.next_position;
    }
    Ok(())
}
