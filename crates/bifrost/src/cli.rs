//! The command line: one `clap` derive tree. Parsing only; the commands live in
//! [`crate::commands`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::commands::{
    append::AppendArgs, bench::BenchArgs, dlq::DlqArgs, groups::GroupsArgs, keys::KeysArgs, read::ReadArgs,
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
    /// API keys: create them (the secret is printed once), list and revoke them.
    Keys(KeysArgs),
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

/// The credential the client commands present (`Authorization: Bearer`).
#[derive(Debug, Clone, Args)]
pub(crate) struct KeyArg {
    /// The credential to send (`Authorization: Bearer`): an API key (`bfk_…`), the admin
    /// key or a JWT; needed once the server has auth on.
    #[arg(long, env = "BIFROST_KEY", value_name = "KEY", hide_env_values = true, global = true)]
    pub(crate) key: Option<String>,
}

/// Where the CLI commands find the server, and the credential they present.
#[derive(Debug, Clone, Args)]
pub(crate) struct ServerArg {
    /// The base URL of a running `bifrost serve`.
    #[arg(
        long = "url",
        visible_alias = "server",
        env = "BIFROST_URL",
        value_name = "URL",
        default_value = "http://127.0.0.1:7070"
    )]
    pub(crate) server: String,

    #[command(flatten)]
    pub(crate) key: KeyArg,
}

/// [`ServerArg`] for commands with subcommands: accepted before or after the subcommand.
#[derive(Debug, Clone, Args)]
pub(crate) struct GlobalServerArg {
    /// The base URL of a running `bifrost serve`.
    #[arg(
        long = "url",
        visible_alias = "server",
        env = "BIFROST_URL",
        value_name = "URL",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    pub(crate) server: String,

    #[command(flatten)]
    pub(crate) key: KeyArg,
}

/// [`GlobalServerArg`] for `bifrost webhooks`, whose `--url` is an endpoint's: the server is
/// `--server` (or `BIFROST_URL`) there.
#[derive(Debug, Clone, Args)]
pub(crate) struct WebhooksServerArg {
    /// The base URL of a running `bifrost serve`.
    #[arg(
        long = "server",
        env = "BIFROST_URL",
        value_name = "URL",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    pub(crate) server: String,

    #[command(flatten)]
    pub(crate) key: KeyArg,
}

/// A server and the credential for it, whichever form of the flags gave them.
pub(crate) trait Target {
    fn url(&self) -> &str;
    fn key(&self) -> Option<&str>;
}

macro_rules! target {
    ($($arg:ty),*) => {$(
        impl Target for $arg {
            fn url(&self) -> &str {
                &self.server
            }

            fn key(&self) -> Option<&str> {
                self.key.key.as_deref()
            }
        }
    )*};
}

target!(ServerArg, GlobalServerArg, WebhooksServerArg);
