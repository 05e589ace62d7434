//! `bifrost realtime …`: real-time through the HTTP API of a running server — publish a
//! message to rooms, users and streams, show who is in a room, and manage the bridges that
//! send stored events to rooms and users. One subcommand per route; the bodies' fields
//! are flags. (`bifrost ws` is the WebSocket side.)

use std::io::Read;
use std::str::FromStr;

use anyhow::Context;
use bifrost_api::{
    PriorityBody, PublishRequest, PublishSourceBody, PublishTargetRequest, PublishedBody,
    RealtimeBridgeRequest, StoredPublishBody,
};
use bifrost_client::{Client, Publication};
use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::cli::GlobalServerArg;
use crate::commands::webhooks::JsonObject;
use crate::output::JsonLines;
use crate::remote;

#[derive(Debug, Args)]
pub(crate) struct RealtimeArgs {
    #[command(subcommand)]
    pub(crate) command: RealtimeCommand,

    #[command(flatten)]
    pub(crate) server: GlobalServerArg,
}

#[derive(Debug, Subcommand)]
pub(crate) enum RealtimeCommand {
    /// Publish a message to rooms, users and streams. Ephemeral by default: it goes to the
    /// WebSocket connections subscribed now and is never stored; prints {"message_id"}.
    /// With --persistent it is stored as one event (and reaches stream subscribers, SSE and
    /// webhooks too); prints {"event_id", "stream", "position"}.
    #[command(after_help = "Examples:\n  \
        bifrost realtime publish --room project:101 --type task.moved --data '{\"task\": 7}'\n  \
        bifrost realtime publish --user u-42 --type notice --data '\"hello\"' --priority high\n  \
        bifrost realtime publish --room project:101 --type task.done --data '{}' --persistent \\\n      \
        --exclude-user u-7 --source-user u-7")]
    Publish(PublishArgs),
    /// Show who is in a room now, on every node: {"room", "users": [{"user_id", "info",
    /// "connections"}], "user_count", "connection_count"}.
    Presence {
        /// The room, e.g. `project:101` (the channel `room:project:101`).
        room: String,
    },
    /// Bridges: rules that send each stored event they match to rooms and users.
    Bridges {
        #[command(subcommand)]
        command: BridgesCommand,
    },
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).multiple(true).args(["rooms", "users", "streams"])))]
pub(crate) struct PublishArgs {
    /// A room to publish to (the channel `room:{R}`), e.g. `project:101`; repeat for several.
    #[arg(long = "room", value_name = "R")]
    pub(crate) rooms: Vec<String>,

    /// A user to publish to (the channel `user:{U}`, all of the user's connections); repeat
    /// for several.
    #[arg(long = "user", value_name = "U")]
    pub(crate) users: Vec<String>,

    /// A stream whose subscribers get the message (the channel `stream:{S}`); repeat for
    /// several.
    #[arg(long = "stream", value_name = "S")]
    pub(crate) streams: Vec<String>,

    /// The message's type, dot-separated segments, e.g. `task.moved`.
    #[arg(long = "type", value_name = "T")]
    pub(crate) event_type: String,

    /// The message's data, a JSON value; `-` reads it from stdin.
    #[arg(long, value_name = "JSON")]
    pub(crate) data: String,

    /// Connections of this user receive nothing (say, the sender's own); repeat for several.
    #[arg(long = "exclude-user", value_name = "U")]
    pub(crate) exclude_users: Vec<String>,

    /// The order among a connection's queued frames: high overtakes normal overtakes low
    /// [default: normal].
    #[arg(long, value_enum, value_name = "P")]
    pub(crate) priority: Option<PriorityArg>,

    /// Store the message as an event (replayed to subscribers that resume) instead of only
    /// sending it to who is connected now.
    #[arg(long)]
    pub(crate) persistent: bool,

    /// The stream a persistent message is stored in [default: `realtime-{room}` for one
    /// room, else `realtime`].
    #[arg(long, value_name = "NAME", requires = "persistent")]
    pub(crate) into_stream: Option<String>,

    /// Who the message comes from, as its receivers see it (`source.user_id`).
    #[arg(long, value_name = "U")]
    pub(crate) source_user: Option<String>,

    /// The workspace it comes from (`source.workspace_id`).
    #[arg(long, value_name = "W")]
    pub(crate) workspace: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum BridgesCommand {
    /// List every bridge, one JSON line each.
    List,
    /// Show one bridge.
    Get {
        /// The bridge's name.
        name: String,
    },
    /// Create a bridge, or replace one: options not given take their defaults. Each event
    /// stored from then on that it matches goes as an `event` frame to the rendered room
    /// and user channels. Prints the bridge.
    #[command(after_help = "Examples:\n  \
        bifrost realtime bridges put tasks --type 'task.#' --room 'project:{data.project_id}' \\\n      \
        --exclude-user '{metadata.user_id}'\n  \
        bifrost realtime bridges put assigned --type task.assigned --user '{data.assignee}' --priority high")]
    Put(PutBridgeArgs),
    /// Delete a bridge; events stored afterwards are no longer sent by it.
    Delete {
        /// The bridge's name.
        name: String,
    },
}

#[derive(Debug, Args)]
pub(crate) struct PutBridgeArgs {
    /// The bridge's name.
    pub(crate) name: String,

    /// Bridge only events whose type matches this pattern (`*` one segment, `#` zero or
    /// more, e.g. `task.#`); repeat for several [default: every type].
    #[arg(long = "type", alias = "types", value_name = "PATTERN")]
    pub(crate) types: Vec<String>,

    /// Bridge only events of streams in this category (the stream name before the first
    /// `-`) [default: any].
    #[arg(long, value_name = "C")]
    pub(crate) category: Option<String>,

    /// A room template, e.g. `project:{data.project_id}` (a placeholder without a value
    /// skips the target; one holding an array gives one room per element); repeat for
    /// several.
    #[arg(long = "room", value_name = "TEMPLATE")]
    pub(crate) rooms: Vec<String>,

    /// A user template, e.g. `{data.assignee}`; repeat for several.
    #[arg(long = "user", value_name = "TEMPLATE")]
    pub(crate) users: Vec<String>,

    /// A template of users whose connections receive nothing, e.g. `{metadata.user_id}`;
    /// repeat for several.
    #[arg(long = "exclude-user", value_name = "TEMPLATE")]
    pub(crate) exclude_users: Vec<String>,

    /// The priority of the frames it sends [default: normal].
    #[arg(long, value_enum, value_name = "P")]
    pub(crate) priority: Option<PriorityArg>,

    /// Whether the bridge sends anything [default: true].
    #[arg(long, value_name = "true|false")]
    pub(crate) enabled: Option<bool>,

    /// A webhook transform, a JSON object: each frame gets `"integration": <the envelope
    /// it makes>`, e.g. '{"type": "{data.kind}"}'.
    #[arg(long, value_name = "JSON")]
    pub(crate) transform: Option<JsonObject>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum PriorityArg {
    High,
    Normal,
    Low,
}

impl From<PriorityArg> for PriorityBody {
    fn from(priority: PriorityArg) -> Self {
        match priority {
            PriorityArg::High => PriorityBody::High,
            PriorityArg::Normal => PriorityBody::Normal,
            PriorityArg::Low => PriorityBody::Low,
        }
    }
}

/// `--data`: one JSON value, kept as written.
#[derive(Debug)]
struct JsonData(Box<RawValue>);

impl FromStr for JsonData {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        serde_json::from_str::<Box<RawValue>>(s.trim())
            .map(Self)
            .map_err(|e| format!("the data is not one JSON value: {e}"))
    }
}

pub(crate) async fn run(args: RealtimeArgs) -> anyhow::Result<()> {
    let client = remote::connect(&args.server)?;
    let mut out = JsonLines::stdout();
    let outcome = run_command(&client, &args.command, &mut out).await;
    // What was printed before a failure still reaches the terminal.
    out.flush()?;
    outcome
}

async fn run_command(client: &Client, command: &RealtimeCommand, out: &mut JsonLines) -> anyhow::Result<()> {
    match command {
        RealtimeCommand::Publish(publish) => {
            let data = match publish.data.as_str() {
                "-" => {
                    let mut text = String::new();
                    std::io::stdin().read_to_string(&mut text).context("cannot read the data from stdin")?;
                    text
                }
                given => given.to_owned(),
            };
            let data: JsonData = data.parse().map_err(remote::invalid_argument)?;
            let request = publish_request(publish, data.0);
            match client.publish(&request).await.map_err(remote::describe)? {
                Publication::Published { message_id } => out.value(&PublishedBody { message_id }),
                Publication::Stored { event_id, stream, position } => {
                    out.value(&StoredPublishBody { event_id, stream, position })
                }
            }
        }
        RealtimeCommand::Presence { room } => {
            out.value(&client.presence(room).await.map_err(remote::describe)?)
        }
        RealtimeCommand::Bridges { command } => match command {
            BridgesCommand::List => {
                for bridge in client.list_bridges().await.map_err(remote::describe)? {
                    out.value(&bridge)?;
                }
                Ok(())
            }
            BridgesCommand::Get { name } => {
                out.value(&client.get_bridge(name).await.map_err(remote::describe)?)
            }
            BridgesCommand::Put(put) => {
                let (_, bridge) =
                    client.put_bridge(&put.name, &bridge_request(put)).await.map_err(remote::describe)?;
                out.value(&bridge)
            }
            BridgesCommand::Delete { name } => {
                client.delete_bridge(name).await.map_err(remote::describe)?;
                out.value(&json!({ "name": name, "deleted": true }))
            }
        },
    }
}

/// `Some(list)` unless it is empty, so that the server's default applies.
fn given(list: &[String]) -> Option<Vec<String>> {
    (!list.is_empty()).then(|| list.to_vec())
}

/// What `publish` sends: only what was given.
fn publish_request(args: &PublishArgs, data: Box<RawValue>) -> PublishRequest {
    let source = (args.source_user.is_some() || args.workspace.is_some()).then(|| PublishSourceBody {
        user_id: args.source_user.clone(),
        workspace_id: args.workspace.clone(),
    });
    PublishRequest {
        target: PublishTargetRequest {
            rooms: given(&args.rooms),
            users: given(&args.users),
            streams: given(&args.streams),
            kind: None,
            id: None,
        },
        exclude_users: given(&args.exclude_users),
        event_type: args.event_type.clone(),
        data,
        source,
        priority: args.priority.map(PriorityBody::from),
        persistent: args.persistent.then_some(true),
        stream: args.into_stream.clone(),
    }
}

/// What `bridges put` sends: only what was given, so the server's defaults apply to the rest.
fn bridge_request(args: &PutBridgeArgs) -> RealtimeBridgeRequest {
    RealtimeBridgeRequest {
        types: given(&args.types),
        category: args.category.clone(),
        rooms: given(&args.rooms),
        users: given(&args.users),
        exclude_users: given(&args.exclude_users),
        priority: args.priority.map(PriorityBody::from),
        enabled: args.enabled,
        transform: args.transform.as_ref().map(|t| Value::Object(t.0.clone())),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Wrap {
        #[command(subcommand)]
        command: RealtimeCommand,
    }

    fn parse(argv: &[&str]) -> Result<RealtimeCommand, clap::Error> {
        Wrap::try_parse_from(std::iter::once("realtime").chain(argv.iter().copied())).map(|w| w.command)
    }

    fn publish_body(argv: &[&str]) -> Value {
        let argv: Vec<&str> = ["publish", "--type", "task.moved"].iter().chain(argv).copied().collect();
        let RealtimeCommand::Publish(args) = parse(&argv).unwrap() else { panic!() };
        let data: JsonData = args.data.parse().unwrap();
        serde_json::to_value(publish_request(&args, data.0)).unwrap()
    }

    fn bridge_body(argv: &[&str]) -> Value {
        let argv: Vec<&str> = ["bridges", "put", "tasks"].iter().chain(argv).copied().collect();
        let RealtimeCommand::Bridges { command: BridgesCommand::Put(args) } = parse(&argv).unwrap() else {
            panic!()
        };
        serde_json::to_value(bridge_request(&args)).unwrap()
    }

    #[test]
    fn publish_sends_only_what_was_given() {
        assert_eq!(
            publish_body(&["--room", "project:101", "--data", r#"{"task": 7}"#]),
            serde_json::json!({"target": {"rooms": ["project:101"]}, "type": "task.moved", "data": {"task": 7}})
        );
        assert_eq!(
            publish_body(&[
                "--room",
                "a",
                "--room",
                "b",
                "--user",
                "u-1",
                "--stream",
                "order-1",
                "--data",
                " 42 ",
                "--exclude-user",
                "u-2",
                "--priority",
                "low",
                "--persistent",
                "--into-stream",
                "chat-1",
                "--source-user",
                "u-2",
                "--workspace",
                "w-1",
            ]),
            serde_json::json!({
                "target": {"rooms": ["a", "b"], "users": ["u-1"], "streams": ["order-1"]},
                "exclude_users": ["u-2"], "type": "task.moved", "data": 42,
                "source": {"user_id": "u-2", "workspace_id": "w-1"}, "priority": "low",
                "persistent": true, "stream": "chat-1"
            })
        );
    }

    #[test]
    fn publish_refuses_what_the_server_would() {
        assert!(
            parse(&["publish", "--type", "t", "--data", "1"]).unwrap_err().to_string().contains("--room")
        );
        assert!(parse(&["publish", "--room", "r", "--data", "1"]).is_err(), "--type is required");
        assert!(parse(&["publish", "--room", "r", "--type", "t"]).is_err(), "--data is required");
        assert!(
            parse(&["publish", "--room", "r", "--type", "t", "--data", "1", "--priority", "urgent"]).is_err()
        );
        assert!(
            parse(&["publish", "--room", "r", "--type", "t", "--data", "1", "--into-stream", "s"]).is_err(),
            "--into-stream needs --persistent"
        );
        assert!("{oops".parse::<JsonData>().unwrap_err().contains("not one JSON value"));
        assert!("1 2".parse::<JsonData>().is_err());
    }

    #[test]
    fn bridges_put_sends_only_what_was_given() {
        assert_eq!(bridge_body(&[]), serde_json::json!({}));
        assert_eq!(
            bridge_body(&[
                "--type",
                "task.#",
                "--types",
                "note.*",
                "--category",
                "task",
                "--room",
                "project:{data.project_id}",
                "--user",
                "{data.assignee}",
                "--exclude-user",
                "{metadata.user_id}",
                "--priority",
                "high",
                "--enabled",
                "false",
                "--transform",
                r#"{"type": "{data.kind}"}"#,
            ]),
            serde_json::json!({
                "types": ["task.#", "note.*"], "category": "task", "rooms": ["project:{data.project_id}"],
                "users": ["{data.assignee}"], "exclude_users": ["{metadata.user_id}"], "priority": "high",
                "enabled": false, "transform": {"type": "{data.kind}"}
            })
        );
        assert!(parse(&["bridges", "put", "t", "--enabled", "maybe"]).is_err());
        assert!(parse(&["bridges", "put", "t", "--transform", "[1]"]).is_err());
        assert!(parse(&["bridges", "put"]).is_err(), "the name is required");
    }
}
