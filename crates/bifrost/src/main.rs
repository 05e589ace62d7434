//! The `bifrost` binary: parse the command line, set up logging, run one command, and turn
//! any failure into one `error: …` line and a non-zero exit code.

mod cli;
mod commands;
mod config;
mod output;
mod remote;
mod store;

use std::io::{self, IsTerminal};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use clap::error::ErrorKind;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command};
use crate::commands::{append, bench, dlq, groups, keys, read, realtime, serve, tail, webhooks, ws};
use crate::config::{BadSetting, Settings};
use crate::output::one_line;

/// Exit code of a failed command; usage errors and settings the server cannot start with
/// ([`BadSetting`]) exit with 2, as clap does.
const FAILURE: u8 = 1;
const USAGE: u8 = 2;
/// Log filter of the client commands unless `BIFROST_LOG` says otherwise.
const CLIENT_LOG: &str = "warn";

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // `bifrost read --all | head`: the reader left, which is not a failure.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) if e.chain().any(|cause| cause.is::<BadSetting>()) => {
            eprintln!("error: {}", one_line(&format!("{e:#}")));
            ExitCode::from(USAGE)
        }
        Err(e) => {
            eprintln!("error: {}", one_line(&format!("{e:#}")));
            ExitCode::from(FAILURE)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let settings = Settings::load(args.config.as_deref(), args.settings)?;
            init_tracing(&settings.log)?;
            multi_thread()?.block_on(serve::run(settings))
        }
        Command::Config(args) => {
            let settings = Settings::load(args.config.as_deref(), args.settings)?;
            println!("{settings}");
            Ok(())
        }
        Command::Append(args) => {
            init_tracing(&client_log())?;
            current_thread()?.block_on(append::run(args))
        }
        Command::Read(args) => {
            init_tracing(&client_log())?;
            current_thread()?.block_on(read::run(args))
        }
        Command::Tail(args) => {
            init_tracing(&client_log())?;
            current_thread()?.block_on(tail::run(args))
        }
        Command::Ws(args) => {
            init_tracing(&client_log())?;
            current_thread()?.block_on(ws::run(args))
        }
        Command::Groups(args) => {
            init_tracing(&client_log())?;
            current_thread()?.block_on(groups::run(args))
        }
        Command::Dlq(args) => {
            init_tracing(&client_log())?;
            current_thread()?.block_on(dlq::run(args))
        }
        Command::Webhooks(args) => {
            init_tracing(&client_log())?;
            current_thread()?.block_on(webhooks::run(args))
        }
        Command::Realtime(args) => {
            init_tracing(&client_log())?;
            current_thread()?.block_on(realtime::run(args))
        }
        Command::Keys(args) => {
            init_tracing(&client_log())?;
            current_thread()?.block_on(keys::run(args))
        }
        Command::Bench(args) => {
            init_tracing(&client_log())?;
            multi_thread()?.block_on(bench::run(args))
        }
    }
}

fn client_log() -> String {
    std::env::var("BIFROST_LOG").unwrap_or_else(|_| CLIENT_LOG.to_owned())
}

/// Logs go to stderr; stdout is for the commands' output.
fn init_tracing(filter: &str) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(filter).with_context(|| format!("invalid log filter {filter:?}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
}

fn multi_thread() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the runtime")
}

fn current_thread() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the runtime")
}

/// Help and version print as clap prints them; a usage error becomes one line (clap's
/// message and its tip), exit code 2.
fn usage_error(e: &clap::Error) -> ExitCode {
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            let code = u8::try_from(e.exit_code()).unwrap_or(USAGE);
            ExitCode::from(code)
        }
        _ => {
            // clap's message, its list of arguments and its tips; not the usage block.
            let rendered = e.render().to_string();
            let message = rendered
                .lines()
                .map(str::trim)
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            let message = message.strip_prefix("error:").map_or(message.as_str(), str::trim);
            eprintln!("error: {message} (see --help)");
            ExitCode::from(USAGE)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.downcast_ref::<io::Error>().is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}
