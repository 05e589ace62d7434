//! `bifrost read STREAM` and `bifrost read --all`: events as JSON lines, following the
//! API's page cursors.

use bifrost_client::{Client, MAX_PAGE};
use bifrost_core::{Category, Direction, LogFilter, StreamName};
use clap::Args;

use crate::cli::ServerArg;
use crate::output::{JsonLines, event_body};
use crate::remote;

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

pub(crate) async fn run(args: ReadArgs) -> anyhow::Result<()> {
    let client = remote::connect(&args.server)?;
    let mut out = JsonLines::stdout();
    let outcome = match &args.stream {
        Some(stream) => read_stream(&client, &args, &StreamName::new(stream)?, &mut out).await,
        None => read_log(&client, &args, &mut out).await,
    };
    // What was printed before a failure still reaches the terminal.
    out.flush()?;
    outcome
}

async fn read_stream(
    client: &Client,
    args: &ReadArgs,
    stream: &StreamName,
    out: &mut JsonLines,
) -> anyhow::Result<()> {
    let mut remaining = args.limit.unwrap_or(if args.all_pages { usize::MAX } else { DEFAULT_PAGE });
    let direction = if args.backward { Direction::Backward } else { Direction::Forward };
    // No --from: the first version forward, the last one backward (as the API defaults).
    let mut from = args.from.unwrap_or(match direction {
        Direction::Forward => 1,
        Direction::Backward => u64::MAX,
    });
    while remaining > 0 {
        let page = client
            .stream_events(stream, from, direction, remaining.min(MAX_PAGE))
            .await
            .map_err(remote::describe)?;
        for event in page.events.iter().take(remaining) {
            out.value(&event_body(event)?)?;
        }
        remaining = remaining.saturating_sub(page.events.len());
        match page.next {
            Some(next) if args.all_pages || args.limit.is_some() => from = next,
            _ => break,
        }
        if page.events.is_empty() {
            break;
        }
    }
    Ok(())
}

async fn read_log(client: &Client, args: &ReadArgs, out: &mut JsonLines) -> anyhow::Result<()> {
    let mut filter = LogFilter::default().with_types(&args.types).map_err(remote::invalid_argument)?;
    if let Some(category) = &args.category {
        filter.category = Some(Category::new(category).map_err(remote::invalid_argument)?);
    }
    let mut remaining = args.limit.unwrap_or(usize::MAX);
    let mut after = args.from_position.unwrap_or(0);
    while remaining > 0 {
        let page =
            client.log_events(after, &filter, remaining.min(MAX_PAGE)).await.map_err(remote::describe)?;
        for event in page.events.iter().take(remaining) {
            out.value(&event_body(event)?)?;
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
