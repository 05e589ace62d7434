//! `bifrost dlq …`: a consumer group's dead letters — the events it parked after their last
//! attempt or on a nack with `--park` — listed, replayed or discarded.

use bifrost_api::ReplayRequest;
use bifrost_bus::GroupName;
use bifrost_client::Client;
use bifrost_core::EventId;
use clap::{Args, Subcommand};
use serde_json::json;

use crate::cli::GlobalServerArg;
use crate::commands::groups::group_name;
use crate::output::{JsonLines, dead_letter_body};
use crate::remote;

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

pub(crate) async fn run(args: DlqArgs) -> anyhow::Result<()> {
    let client = remote::connect(&args.server)?;
    let mut out = JsonLines::stdout();
    let outcome = run_command(&client, &args.command, &mut out).await;
    // What was printed before a failure still reaches the terminal.
    out.flush()?;
    outcome
}

async fn run_command(client: &Client, command: &DlqCommand, out: &mut JsonLines) -> anyhow::Result<()> {
    match command {
        DlqCommand::List { group, limit } => list(client, &group_name(group)?, *limit, out).await,
        DlqCommand::Replay { group, event_ids } => {
            let group = group_name(group)?;
            let request = if event_ids.is_empty() {
                ReplayRequest::all()
            } else {
                ReplayRequest::events(event_ids.iter().copied())
            };
            let answer =
                client.replay_dead_letters(group.as_str(), &request).await.map_err(remote::describe)?;
            out.value(&answer)
        }
        DlqCommand::Discard { group, event_id } => {
            let group = group_name(group)?;
            client.discard_dead_letter(group.as_str(), *event_id).await.map_err(remote::describe)?;
            out.value(
                &json!({ "group": group.as_str(), "event_id": event_id.to_string(), "discarded": true }),
            )
        }
    }
}

/// Follows the pages of dead letters until `limit` are printed or there are no more.
async fn list(
    client: &Client,
    group: &GroupName,
    limit: Option<usize>,
    out: &mut JsonLines,
) -> anyhow::Result<()> {
    let mut remaining = limit.unwrap_or(usize::MAX);
    let mut after: Option<u64> = None;
    while remaining > 0 {
        let page = client
            .dead_letters(group.as_str(), after, remaining.min(MAX_PAGE))
            .await
            .map_err(remote::describe)?;
        for dead_letter in page.dead_letters.iter().take(remaining) {
            out.value(&dead_letter_body(dead_letter)?)?;
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
