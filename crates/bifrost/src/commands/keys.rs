//! `bifrost keys …`: API keys through the HTTP API of a running server (an admin credential
//! in `--key`): create one (its secret is printed this once), list them, revoke one.

use bifrost_api::{KeyRequest, NameRuleBody, RestrictBody, ScopeBody};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use crate::cli::GlobalServerArg;
use crate::output::JsonLines;
use crate::remote;

#[derive(Debug, Args)]
pub(crate) struct KeysArgs {
    #[command(subcommand)]
    pub(crate) command: KeysCommand,

    #[command(flatten)]
    pub(crate) server: GlobalServerArg,
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Create a key and print it as one JSON line with its `secret` (`bfk_…`): the only
    /// time the secret is shown; the server keeps only its hash.
    #[command(after_help = "Examples:\n  \
        bifrost keys create --name ci --scope read --scope append --append-prefix order-\n  \
        bifrost keys create --name acme-admin --scope admin --tenant acme --expires-at 2027-01-01T00:00:00Z")]
    Create(CreateArgs),
    /// List the keys of the caller's tenant, one JSON line each (never their secrets).
    List,
    /// Revoke a key: every node refuses it within 5 seconds.
    Revoke {
        /// The key's id, as `create` or `list` printed it.
        id: String,
    },
}

#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
    /// Who or what uses the key (1-128 characters).
    #[arg(long)]
    name: String,

    /// A scope of the key; repeatable. `admin` includes every other.
    #[arg(long = "scope", value_name = "SCOPE", required = true)]
    scopes: Vec<ScopeArg>,

    /// The key's tenant (1-64 of a-z 0-9 _ -) [default: the caller's].
    #[arg(long)]
    tenant: Option<String>,

    /// Appends only to streams starting with this; repeatable.
    #[arg(long = "append-prefix", value_name = "PREFIX")]
    append_prefixes: Vec<String>,

    /// Appends only to streams of this category; repeatable.
    #[arg(long = "append-category", value_name = "CATEGORY")]
    append_categories: Vec<String>,

    /// Reads only streams starting with this (others are left out of lists, the log and
    /// live feeds); repeatable.
    #[arg(long = "read-prefix", value_name = "PREFIX")]
    read_prefixes: Vec<String>,

    /// Reads only streams of this category; repeatable.
    #[arg(long = "read-category", value_name = "CATEGORY")]
    read_categories: Vec<String>,

    /// RFC 3339: the key is refused after this.
    #[arg(long, value_name = "TIME")]
    expires_at: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ScopeArg {
    Read,
    Append,
    Subscribe,
    Groups,
    Admin,
}

impl From<ScopeArg> for ScopeBody {
    fn from(scope: ScopeArg) -> Self {
        match scope {
            ScopeArg::Read => Self::Read,
            ScopeArg::Append => Self::Append,
            ScopeArg::Subscribe => Self::Subscribe,
            ScopeArg::Groups => Self::Groups,
            ScopeArg::Admin => Self::Admin,
        }
    }
}

/// A rule of the restriction, or none when neither list has an entry.
fn rule(prefixes: Vec<String>, categories: Vec<String>) -> Option<NameRuleBody> {
    (!prefixes.is_empty() || !categories.is_empty()).then_some(NameRuleBody { prefixes, categories })
}

impl CreateArgs {
    fn request(self) -> KeyRequest {
        let append = rule(self.append_prefixes, self.append_categories);
        let read = rule(self.read_prefixes, self.read_categories);
        let restrict = (append.is_some() || read.is_some()).then_some(RestrictBody { append, read });
        KeyRequest {
            name: self.name,
            scopes: self.scopes.into_iter().map(ScopeBody::from).collect(),
            tenant: self.tenant,
            restrict,
            expires_at: self.expires_at,
        }
    }
}

pub(crate) async fn run(args: KeysArgs) -> anyhow::Result<()> {
    let client = remote::connect(&args.server)?;
    let mut out = JsonLines::stdout();
    match args.command {
        KeysCommand::Create(create) => {
            let key = client.create_key(&create.request()).await.map_err(remote::describe)?;
            out.value(&key)?;
        }
        KeysCommand::List => {
            for key in client.keys().await.map_err(remote::describe)?.keys {
                out.value(&key)?;
            }
        }
        KeysCommand::Revoke { id } => {
            client.revoke_key(&id).await.map_err(remote::describe)?;
            out.value(&json!({"revoked": id}))?;
        }
    }
    out.flush()?;
    Ok(())
}
