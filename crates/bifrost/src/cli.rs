//! The command line: one `clap` derive tree. Parsing only; the commands live in
//! [`crate::commands`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::commands::{
    append::AppendArgs, bench::BenchArgs, dlq::DlqArgs, groups::GroupsArgs, read::ReadArgs,
    realtime::RealtimeArgs, tail::TailArgs, webhooks::WebhooksArgs, ws::WsArgs,
};
use crate::config::ConfigLayer;

#[derive(Debug, Parser)]
#[command(name = "bifrost", version, about = "Bifrost: a durable event store and event bus in one binary.")]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the HTTP server (the embedded SQLite store in the data dir by default).
    Serve(ServeArgs),
    /// Print the effective configuration (flags > environment > file > defaults) as TOML.
    Config(ServeArgs),
    /// Append one event to a stream through a running server.
    Append(AppendArgs),
    /// Read a stream, or the global log with --all, as JSON lines.
    Read(ReadArgs),
    /// Follow the live log (Server-Sent Events) and print each event as a JSON line.
    Tail(TailArgs),
    /// Open a WebSocket, subscribe to channels (resuming with --since) and print every frame
    /// the server sends as a JSON line.
    Ws(WsArgs),
    /// Consumer groups: create, list, show and delete them; fetch, ack and nack their events.
    Groups(GroupsArgs),
    /// A consumer group's dead letters: list, replay or discard them.
    Dlq(DlqArgs),
    /// Webhooks: endpoints that receive matching events as signed HTTP POSTs, retried until
    /// delivered; their messages, attempts, resends and test sends.
    Webhooks(WebhooksArgs),
    /// Real-time: publish messages to rooms, users and streams, show a room's presence, and
    /// manage the bridges that send stored events to rooms and users.
    Realtime(RealtimeArgs),
    /// Measure write, read and delivery throughput and latency.
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// A TOML configuration file; its keys are the long flag names with `_` for `-`.
    #[arg(long, env = "BIFROST_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,

    #[command(flatten)]
    pub(crate) settings: ConfigLayer,
}

/// Where the CLI commands find the server.
#[derive(Debug, Clone, Args)]
pub(crate) struct ServerArg {
    /// The base URL of a running `bifrost serve`.
    #[arg(long, env = "BIFROST_SERVER", value_name = "URL", default_value = "http://127.0.0.1:7070")]
    pub(crate) server: String,
}

/// [`ServerArg`] for commands with subcommands: accepted before or after the subcommand.
#[derive(Debug, Clone, Args)]
pub(crate) struct GlobalServerArg {
    /// The base URL of a running `bifrost serve`.
    #[arg(
        long,
        env = "BIFROST_SERVER",
        value_name = "URL",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    pub(crate) server: String,
}
