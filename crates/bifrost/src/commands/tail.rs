//! `bifrost tail`: follow `GET /v1/subscribe` (Server-Sent Events) and print each event as
//! a JSON line. A dropped connection is resumed with `Last-Event-ID`, so no event is lost
//! or printed twice.

use std::time::Duration;

use anyhow::anyhow;
use bifrost_client::Client;
use bifrost_core::{LogFilter, SubscribeFrom};
use clap::Args;
use futures::StreamExt;

use crate::cli::ServerArg;
use crate::output::{JsonLines, event_body};
use crate::remote;

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

pub(crate) async fn run(args: TailArgs) -> anyhow::Result<()> {
    let filter = LogFilter::default().with_types(&args.types).map_err(remote::invalid_argument)?;
    let client = remote::builder(&args.server)?
        .reconnect_delay(FIRST_BACKOFF, MAX_BACKOFF)
        .max_reconnects(args.max_retries)
        .build()
        .map_err(remote::describe)?;
    let from = args.from_position.map_or(SubscribeFrom::End, SubscribeFrom::After);
    let mut events = Client::subscribe(&client, from, filter).await.map_err(remote::describe)?;
    let mut out = JsonLines::stdout();
    while let Some(event) = events.next().await {
        let event = event.map_err(|e| anyhow!(e))?;
        out.value(&event_body(&event)?)?;
        out.flush()?;
    }
    Ok(())
}
