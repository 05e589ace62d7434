//! `bifrost groups …`: consumer groups through the HTTP API of a running server — create,
//! show, list and delete them, and lease, ack and nack their events by hand.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use anyhow::bail;
use bifrost_api::{
    BackoffKindBody, BackoffRequest, GroupConfigRequest, GroupFilterRequest, NackRequest, StartBody,
};
use bifrost_bus::GroupName;
use bifrost_client::Client;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use crate::cli::GlobalServerArg;
use crate::output::{JsonLines, message_body};
use crate::remote;

#[derive(Debug, Args)]
pub(crate) struct GroupsArgs {
    #[command(subcommand)]
    pub(crate) command: GroupsCommand,

    #[command(flatten)]
    pub(crate) server: GlobalServerArg,
}

#[derive(Debug, Subcommand)]
pub(crate) enum GroupsCommand {
    /// List every consumer group, one JSON line each.
    List,
    /// Show one group: its settings, checkpoint, lag, leases in flight, dead letters and
    /// consumers.
    Show {
        /// The group's name.
        name: String,
    },
    /// Create a group, or replace an existing group's settings (options not given take their
    /// defaults; --start counts only when the group is created).
    Create(CreateArgs),
    /// Delete a group with its checkpoint and dead letters.
    Delete {
        /// The group's name.
        name: String,
    },
    /// Lease events of a group (waiting up to --wait-ms for the first) and print each as a
    /// JSON line: {"lease", "attempt", "event"}.
    Fetch(FetchArgs),
    /// Ack leases: their events are done and never delivered again. Fails when a lease was
    /// no longer held (timed out, already settled, or from before a restart).
    Ack(AckArgs),
    /// Nack leases: deliver their events again after a delay, or park them (--park) in the
    /// group's dead letters.
    Nack(NackArgs),
}

#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
    /// The group's name: 1–128 characters of A–Z a–z 0–9 _ . : @ -.
    pub(crate) name: String,

    /// Only events whose type matches this pattern (`*` one segment, `#` any); repeat for
    /// several [default: every type].
    #[arg(long = "type", value_name = "PATTERN")]
    pub(crate) types: Vec<String>,

    /// Only events of streams in this category (the stream name before the first `-`).
    #[arg(long, value_name = "C")]
    pub(crate) category: Option<String>,

    /// Where a new group starts: `beginning`, `end`, or after a log position [default:
    /// beginning].
    #[arg(long, value_name = "beginning|end|POSITION")]
    pub(crate) start: Option<StartArg>,

    /// A lease not acked within this counts as a failed attempt [default: 30000].
    #[arg(long, value_name = "N")]
    pub(crate) ack_timeout_ms: Option<u64>,

    /// Deliveries before an event is parked in the dead letters [default: 5].
    #[arg(long, value_name = "N")]
    pub(crate) max_attempts: Option<u32>,

    /// How the delay before a retry grows [default: exponential].
    #[arg(long, value_enum, value_name = "KIND")]
    pub(crate) backoff: Option<BackoffArg>,

    /// The delay before the second attempt [default: 1000].
    #[arg(long, value_name = "N")]
    pub(crate) backoff_initial_ms: Option<u64>,

    /// No retry delay is longer than this [default: 60000].
    #[arg(long, value_name = "N")]
    pub(crate) backoff_max_ms: Option<u64>,

    /// Retry after exactly the backoff delay, not a random part of it.
    #[arg(long)]
    pub(crate) no_jitter: bool,

    /// Events leased out at once, over all consumers [default: 1000].
    #[arg(long, value_name = "N")]
    pub(crate) max_in_flight: Option<u64>,
}

#[derive(Debug, Args)]
pub(crate) struct FetchArgs {
    /// The group's name.
    pub(crate) name: String,

    /// The most events to lease.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub(crate) max: u64,

    /// How long to wait for the first event when none is ready, in milliseconds.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub(crate) wait_ms: u64,

    /// The consumer's name, as the group lists it [default: the server's, `anonymous`].
    #[arg(long, value_name = "C")]
    pub(crate) consumer: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct AckArgs {
    /// The group's name.
    pub(crate) name: String,

    /// Leases as `fetch` printed them.
    #[arg(required = true, value_name = "LEASE")]
    pub(crate) leases: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct NackArgs {
    /// The group's name.
    pub(crate) name: String,

    /// Leases as `fetch` printed them.
    #[arg(required = true, value_name = "LEASE")]
    pub(crate) leases: Vec<String>,

    /// Park the events in the dead letters now instead of retrying them.
    #[arg(long)]
    pub(crate) park: bool,

    /// Retry after this many milliseconds instead of the group's backoff.
    #[arg(long, value_name = "N", conflicts_with = "park")]
    pub(crate) delay_ms: Option<u64>,

    /// Why, kept with a dead letter.
    #[arg(long, value_name = "R")]
    pub(crate) reason: Option<String>,
}

/// `--start`, as the API spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartArg {
    Beginning,
    End,
    After(u64),
}

impl FromStr for StartArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "beginning" => Ok(Self::Beginning),
            "end" => Ok(Self::End),
            n => n
                .parse()
                .map(Self::After)
                .map_err(|_| format!("{n:?} is not beginning, end or a log position")),
        }
    }
}

impl fmt::Display for StartArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Beginning => f.write_str("beginning"),
            Self::End => f.write_str("end"),
            Self::After(p) => write!(f, "{p}"),
        }
    }
}

impl From<StartArg> for StartBody {
    fn from(start: StartArg) -> Self {
        match start {
            StartArg::Beginning => StartBody::Beginning,
            StartArg::End => StartBody::End,
            StartArg::After(position) => StartBody::Position(position),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum BackoffArg {
    Fixed,
    Exponential,
}

impl From<BackoffArg> for BackoffKindBody {
    fn from(kind: BackoffArg) -> Self {
        match kind {
            BackoffArg::Fixed => BackoffKindBody::Fixed,
            BackoffArg::Exponential => BackoffKindBody::Exponential,
        }
    }
}

pub(crate) async fn run(args: GroupsArgs) -> anyhow::Result<()> {
    let client = remote::connect(&args.server)?;
    let mut out = JsonLines::stdout();
    let outcome = run_command(&client, &args.command, &mut out).await;
    // What was printed before a failure still reaches the terminal.
    out.flush()?;
    outcome
}

async fn run_command(client: &Client, command: &GroupsCommand, out: &mut JsonLines) -> anyhow::Result<()> {
    match command {
        GroupsCommand::List => {
            for group in client.list_groups().await.map_err(remote::describe)? {
                out.value(&group)?;
            }
            Ok(())
        }
        GroupsCommand::Show { name } => {
            let name = group_name(name)?;
            out.value(&client.get_group(name.as_str()).await.map_err(remote::describe)?)
        }
        GroupsCommand::Create(create) => {
            let name = group_name(&create.name)?;
            let (_, group) =
                client.put_group(name.as_str(), &create_request(create)).await.map_err(remote::describe)?;
            out.value(&group)
        }
        GroupsCommand::Delete { name } => {
            let name = group_name(name)?;
            client.delete_group(name.as_str()).await.map_err(remote::describe)?;
            out.value(&json!({ "group": name.as_str(), "deleted": true }))
        }
        GroupsCommand::Fetch(fetch) => {
            let name = group_name(&fetch.name)?;
            let max = usize::try_from(fetch.max).unwrap_or(usize::MAX);
            let wait = Duration::from_millis(fetch.wait_ms);
            let messages = client
                .fetch(name.as_str(), max, wait, fetch.consumer.as_deref())
                .await
                .map_err(remote::describe)?;
            for message in &messages {
                out.value(&message_body(message)?)?;
            }
            Ok(())
        }
        GroupsCommand::Ack(ack) => {
            let name = group_name(&ack.name)?;
            let answer = client.ack(name.as_str(), &ack.leases).await.map_err(remote::describe)?;
            out.value(&answer)?;
            all_settled(&answer.expired, ack.leases.len(), "acked")
        }
        GroupsCommand::Nack(nack) => {
            let name = group_name(&nack.name)?;
            let answer = client.nack(name.as_str(), &nack_request(nack)).await.map_err(remote::describe)?;
            out.value(&answer)?;
            all_settled(&answer.expired, nack.leases.len(), "nacked")
        }
    }
}

pub(crate) fn group_name(name: &str) -> anyhow::Result<GroupName> {
    Ok(GroupName::new(name)?)
}

/// The settings `create` sends: only what was given, so the server's defaults apply to the
/// rest.
fn create_request(args: &CreateArgs) -> GroupConfigRequest {
    let filter = (!args.types.is_empty() || args.category.is_some()).then(|| GroupFilterRequest {
        types: (!args.types.is_empty()).then(|| args.types.clone()),
        category: args.category.clone(),
    });
    let backoff = BackoffRequest {
        kind: args.backoff.map(BackoffKindBody::from),
        initial_ms: args.backoff_initial_ms,
        max_ms: args.backoff_max_ms,
        jitter: args.no_jitter.then_some(false),
    };
    GroupConfigRequest {
        filter,
        start: args.start.map(StartBody::from),
        ack_timeout_ms: args.ack_timeout_ms,
        max_attempts: args.max_attempts,
        backoff: (backoff != BackoffRequest::default()).then_some(backoff),
        max_in_flight: args.max_in_flight,
    }
}

fn nack_request(args: &NackArgs) -> NackRequest {
    let mut request = if args.park {
        NackRequest::park(args.leases.clone())
    } else {
        NackRequest::retry(args.leases.clone())
    };
    request.delay_ms = args.delay_ms;
    request.reason = args.reason.clone();
    request
}

/// Leases the group no longer held make the command fail, after the answer is printed.
fn all_settled(expired: &[String], sent: usize, verb: &str) -> anyhow::Result<()> {
    match expired.len() {
        0 => Ok(()),
        n => bail!(
            "{n} of {sent} leases were not {verb}: no longer held (timed out, already settled, or from \
             before a restart of the server); their events are delivered again unless already settled"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(extra: &[&str]) -> CreateArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrap {
            #[command(flatten)]
            create: CreateArgs,
        }
        let argv = std::iter::once("create").chain(std::iter::once("g")).chain(extra.iter().copied());
        Wrap::try_parse_from(argv).unwrap().create
    }

    fn create_body(args: &CreateArgs) -> serde_json::Value {
        serde_json::to_value(create_request(args)).unwrap()
    }

    fn nack_body(args: &NackArgs) -> serde_json::Value {
        serde_json::to_value(nack_request(args)).unwrap()
    }

    #[test]
    fn create_sends_only_what_was_given() {
        assert_eq!(create_body(&create(&[])), json!({}));
        let body = create_body(&create(&[
            "--type",
            "order.#",
            "--type",
            "invoice.*",
            "--start",
            "41",
            "--max-attempts",
            "3",
            "--max-in-flight",
            "10",
        ]));
        assert_eq!(
            body,
            json!({"filter": {"types": ["order.#", "invoice.*"]}, "start": {"position": 41},
                   "max_attempts": 3, "max_in_flight": 10})
        );
        assert_eq!(create_body(&create(&["--start", "end", "--category", "order"]))["start"], "end");
    }

    #[test]
    fn backoff_options_send_only_their_fields() {
        let body =
            create_body(&create(&["--backoff", "fixed", "--backoff-initial-ms", "250", "--no-jitter"]));
        assert_eq!(body, json!({"backoff": {"kind": "fixed", "initial_ms": 250, "jitter": false}}));
        let body = create_body(&create(&["--backoff-max-ms", "9000"]));
        assert_eq!(body, json!({"backoff": {"max_ms": 9000}}));
    }

    #[test]
    fn start_parses_names_and_positions() {
        assert_eq!("beginning".parse(), Ok(StartArg::Beginning));
        assert_eq!("end".parse(), Ok(StartArg::End));
        assert_eq!("7".parse(), Ok(StartArg::After(7)));
        assert!("soon".parse::<StartArg>().is_err());
    }

    #[test]
    fn nack_bodies_say_retry_or_park() {
        let args = NackArgs {
            name: "g".into(),
            leases: vec!["l1".into()],
            park: true,
            delay_ms: None,
            reason: Some("bad data".into()),
        };
        assert_eq!(nack_body(&args), json!({"leases": ["l1"], "action": "park", "reason": "bad data"}));
        let args = NackArgs { park: false, delay_ms: Some(5), reason: None, ..args };
        assert_eq!(nack_body(&args), json!({"leases": ["l1"], "action": "retry", "delay_ms": 5}));
    }
}
