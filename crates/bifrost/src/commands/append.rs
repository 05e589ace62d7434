//! `bifrost append STREAM TYPE [DATA]`: one event through `POST /v1/streams/{stream}/events`.

use std::fmt;
use std::io::Read;
use std::str::FromStr;

use anyhow::{Context, anyhow, bail};
use bifrost_core::{EventType, ExpectedVersion, Metadata, NewEvent, StreamAppend, StreamName};
use clap::Args;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::cli::ServerArg;
use crate::output::{JsonLines, append_result_body};
use crate::remote;

#[derive(Debug, Args)]
pub(crate) struct AppendArgs {
    /// The stream, e.g. `order-123`.
    pub(crate) stream: String,

    /// The event type, e.g. `order.submitted`.
    #[arg(value_name = "TYPE")]
    pub(crate) event_type: String,

    /// The event's data, a JSON value; `-` or absent: read it from stdin.
    pub(crate) data: Option<String>,

    /// Optimistic concurrency check: `any`, `no_stream`, `exists` or a version number.
    #[arg(long, value_name = "any|no_stream|exists|N", default_value = "any")]
    pub(crate) expected_version: ExpectedVersionArg,

    /// Metadata, a JSON object (`correlation_id`, `causation_id`, `source`, `user_id`,
    /// `tenant_id` and any other keys).
    #[arg(long, value_name = "JSON")]
    pub(crate) metadata: Option<String>,

    /// The event id (the idempotency key of the append); a UUID v7 is made when absent.
    #[arg(long, value_name = "UUID")]
    pub(crate) id: Option<Uuid>,

    #[command(flatten)]
    pub(crate) server: ServerArg,
}

/// `--expected-version`, as the API spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExpectedVersionArg {
    Any,
    NoStream,
    Exists,
    Exact(u64),
}

impl FromStr for ExpectedVersionArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "any" => Ok(Self::Any),
            "no_stream" => Ok(Self::NoStream),
            "exists" => Ok(Self::Exists),
            n => n
                .parse()
                .map(Self::Exact)
                .map_err(|_| format!("{n:?} is not any, no_stream, exists or a version number")),
        }
    }
}

impl fmt::Display for ExpectedVersionArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::NoStream => f.write_str("no_stream"),
            Self::Exists => f.write_str("exists"),
            Self::Exact(n) => write!(f, "{n}"),
        }
    }
}

impl From<ExpectedVersionArg> for ExpectedVersion {
    fn from(arg: ExpectedVersionArg) -> Self {
        match arg {
            ExpectedVersionArg::Any => ExpectedVersion::Any,
            ExpectedVersionArg::NoStream => ExpectedVersion::NoStream,
            ExpectedVersionArg::Exists => ExpectedVersion::StreamExists,
            ExpectedVersionArg::Exact(n) => ExpectedVersion::Exact(n),
        }
    }
}

pub(crate) async fn run(args: AppendArgs) -> anyhow::Result<()> {
    let stream = StreamName::new(&args.stream)?;
    EventType::new(&args.event_type)?;
    let data = match args.data.as_deref() {
        Some(data) if data != "-" => data.to_owned(),
        _ => read_stdin()?,
    };
    let event = new_event(&args, &data)?;
    let client = remote::connect(&args.server)?;
    let append = StreamAppend::new(stream, args.expected_version.into(), vec![event]);
    let results = client.append_streams(&[append]).await.map_err(remote::describe)?;
    let mut out = JsonLines::stdout();
    for result in &results {
        out.value(&append_result_body(result))?;
    }
    out.flush()?;
    Ok(())
}

fn read_stdin() -> anyhow::Result<String> {
    let mut data = String::new();
    std::io::stdin().read_to_string(&mut data).context("cannot read the event data from stdin")?;
    if data.trim().is_empty() {
        bail!("no event data: give DATA as an argument or pipe JSON on stdin");
    }
    Ok(data)
}

/// Checks TYPE, DATA and --metadata locally and builds the event. DATA is sent as it is
/// given (without the whitespace around it).
fn new_event(args: &AppendArgs, data: &str) -> anyhow::Result<NewEvent> {
    let event_type = EventType::new(&args.event_type)?;
    let data = data.trim();
    serde_json::from_str::<&RawValue>(data)
        .map_err(|e| anyhow!("DATA is not valid JSON ({e}); quote strings, e.g. '\"text\"'"))?;
    let mut event = NewEvent::new(event_type, data.to_owned().into_bytes());
    if let Some(id) = args.id {
        event.id = id;
    }
    if let Some(m) = &args.metadata {
        let raw: &RawValue =
            serde_json::from_str(m.trim()).map_err(|e| anyhow!("--metadata is not valid JSON ({e})"))?;
        if !raw.get().starts_with('{') {
            bail!("--metadata must be a JSON object, e.g. '{{\"correlation_id\":\"c-1\"}}'");
        }
        event.metadata = serde_json::from_str::<Metadata>(raw.get())
            .map_err(|e| anyhow!("--metadata is not valid ({e})"))?;
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::ServerArg;

    fn args(expected: &str, metadata: Option<&str>) -> AppendArgs {
        AppendArgs {
            stream: "order-1".into(),
            event_type: "order.placed".into(),
            data: None,
            expected_version: expected.parse().unwrap(),
            metadata: metadata.map(str::to_owned),
            id: None,
            server: ServerArg {
                server: "http://127.0.0.1:7070".into(),
                key: crate::cli::KeyArg { key: None },
            },
        }
    }

    #[test]
    fn the_event_keeps_the_data_bytes_and_expected_versions_read_like_the_api() {
        let event = new_event(&args("no_stream", None), " {\"b\": 1, \"a\": 2.50}\n").unwrap();
        assert_eq!(event.data.as_ref(), br#"{"b": 1, "a": 2.50}"#);
        assert_eq!(event.event_type.as_str(), "order.placed");
        assert!(event.metadata.is_empty());
        let event = new_event(&args("7", Some(r#"{"source":"cli","shard":3}"#)), "\"x\"").unwrap();
        assert_eq!(event.data.as_ref(), br#""x""#);
        assert_eq!(event.metadata.source.as_deref(), Some("cli"));
        assert_eq!(event.metadata.extra["shard"], 3);
        assert_eq!(ExpectedVersion::from(args("7", None).expected_version), ExpectedVersion::Exact(7));
        assert_eq!(
            ExpectedVersion::from(args("exists", None).expected_version),
            ExpectedVersion::StreamExists
        );
    }

    #[test]
    fn invalid_json_is_refused_before_sending() {
        assert!(new_event(&args("any", None), "{nope").unwrap_err().to_string().contains("not valid JSON"));
        assert!(new_event(&args("any", None), "plain words").is_err());
        assert!(new_event(&args("any", Some("[1]")), "1").is_err());
        assert!(new_event(&args("any", Some(r#"{"source": 5}"#)), "1").is_err());
        assert!("maybe".parse::<ExpectedVersionArg>().is_err());
    }
}
