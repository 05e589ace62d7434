//! `bifrost dlq …`: a consumer group's dead letters — the events it parked after their last
//! attempt or on a nack with `--park` — listed, replayed or discarded.

use bifrost_bus::GroupName;
use bifrost_core::EventId;
use clap::{Args, Subcommand};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use crate::cli::GlobalServerArg;
use crate::client::{ApiClient, parse_answer};
use crate::commands::groups::group_name;
use crate::output::JsonLines;

#[derive(Debug, Args)]
pub(crate) struct DlqArgs {
    #[command(subcommand)]
    pub(crate) command: DlqCommand,

    #[command(flatten)]
    pub(crate) server: GlobalServerArg,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DlqCommand {
    /// List a group's dead letters in log order, one JSON line each: {"event", "event_id",
    /// "position", "stream", "type", "attempts", "reason", "parked_at"}.
    List {
        /// The group's name.
        group: String,

        /// The most dead letters to list [default: all of them].
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
    },
    /// Deliver dead letters again with fresh attempts: these events, or all of them.
    Replay {
        /// The group's name.
        group: String,

        /// Event ids to replay [default: every dead letter of the group].
        #[arg(value_name = "EVENT_ID")]
        event_ids: Vec<EventId>,
    },
    /// Remove one dead letter without delivering it again.
    Discard {
        /// The group's name.
        group: String,

        /// The parked event's id.
        event_id: EventId,
    },
}

/// The most dead letters the server returns in one page.
const MAX_PAGE: usize = 1000;

#[derive(Deserialize)]
struct DeadLetters<'a> {
    #[serde(borrow)]
    dead_letters: Vec<&'a RawValue>,
    next: Option<u64>,
}

pub(crate) async fn run(args: DlqArgs) -> anyhow::Result<()> {
    let client = ApiClient::new(&args.server.server)?;
    let mut out = JsonLines::stdout();
    match &args.command {
        DlqCommand::List { group, limit } => list(&client, &group_name(group)?, *limit, &mut out).await?,
        DlqCommand::Replay { group, event_ids } => {
            let group = group_name(group)?;
            let body = if event_ids.is_empty() { json!({}) } else { json!({ "event_ids": event_ids }) };
            let url = client.url(&["v1", "groups", group.as_str(), "dead-letters", "replay"], &[]);
            let answer = client.post_json(url, body.to_string().into_bytes()).await?;
            out.answer(&answer)?;
        }
        DlqCommand::Discard { group, event_id } => {
            let group = group_name(group)?;
            let id = event_id.to_string();
            let url = client.url(&["v1", "groups", group.as_str(), "dead-letters", &id], &[]);
            client.delete(url).await?;
            out.line(&json!({ "group": group.as_str(), "event_id": id, "discarded": true }).to_string())?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Follows the pages of dead letters until `limit` are printed or there are no more.
async fn list(
    client: &ApiClient,
    group: &GroupName,
    limit: Option<usize>,
    out: &mut JsonLines,
) -> anyhow::Result<()> {
    let mut remaining = limit.unwrap_or(usize::MAX);
    let mut after: Option<u64> = None;
    while remaining > 0 {
        let mut query = vec![("limit", remaining.min(MAX_PAGE).to_string())];
        if let Some(after) = after {
            query.push(("after", after.to_string()));
        }
        let body = client.get(client.url(&["v1", "groups", group.as_str(), "dead-letters"], &query)).await?;
        let page: DeadLetters<'_> = parse_answer(&body)?;
        for dead_letter in page.dead_letters.iter().take(remaining) {
            out.line(dead_letter.get())?;
        }
        remaining = remaining.saturating_sub(page.dead_letters.len());
        match page.next {
            Some(next) if !page.dead_letters.is_empty() && after.is_none_or(|a| next > a) => {
                after = Some(next)
            }
            _ => break,
        }
    }
    Ok(())
}
