//! `bifrost append STREAM TYPE [DATA]`: one event through `POST /v1/streams/{stream}/events`.

use std::fmt;
use std::io::Read;
use std::str::FromStr;

use anyhow::{Context, anyhow, bail};
use bifrost_core::{EventType, StreamName};
use clap::Args;
use serde::Serialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::cli::ServerArg;
use crate::client::ApiClient;
use crate::output::JsonLines;

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

impl ExpectedVersionArg {
    fn to_json(self) -> serde_json::Value {
        match self {
            Self::Exact(n) => serde_json::Value::from(n),
            other => serde_json::Value::from(other.to_string()),
        }
    }
}

#[derive(Serialize)]
struct AppendBody<'a> {
    expected_version: serde_json::Value,
    events: [NewEventBody<'a>; 1],
}

#[derive(Serialize)]
struct NewEventBody<'a> {
    #[serde(rename = "type")]
    event_type: &'a str,
    /// Sent exactly as given.
    data: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<&'a RawValue>,
}

pub(crate) async fn run(args: AppendArgs) -> anyhow::Result<()> {
    let stream = StreamName::new(&args.stream)?;
    EventType::new(&args.event_type)?;
    let data = match args.data.as_deref() {
        Some(data) if data != "-" => data.to_owned(),
        _ => read_stdin()?,
    };
    let body = request_body(&args, &data)?;
    let client = ApiClient::new(&args.server.server)?;
    let url = client.url(&["v1", "streams", stream.as_str(), "events"], &[]);
    let response = client.post_json(url, body).await?;
    let mut out = JsonLines::stdout();
    out.answer(&response)?;
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

/// Checks DATA and --metadata locally, then builds the request JSON.
fn request_body(args: &AppendArgs, data: &str) -> anyhow::Result<Vec<u8>> {
    let data: &RawValue = serde_json::from_str(data.trim())
        .map_err(|e| anyhow!("DATA is not valid JSON ({e}); quote strings, e.g. '\"text\"'"))?;
    let metadata: Option<&RawValue> = match &args.metadata {
        None => None,
        Some(m) => {
            let raw: &RawValue =
                serde_json::from_str(m.trim()).map_err(|e| anyhow!("--metadata is not valid JSON ({e})"))?;
            if !raw.get().starts_with('{') {
                bail!("--metadata must be a JSON object, e.g. '{{\"correlation_id\":\"c-1\"}}'");
            }
            Some(raw)
        }
    };
    let body = AppendBody {
        expected_version: args.expected_version.to_json(),
        events: [NewEventBody { event_type: &args.event_type, data, id: args.id, metadata }],
    };
    serde_json::to_vec(&body).context("cannot encode the request")
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
            server: ServerArg { server: "http://127.0.0.1:7070".into() },
        }
    }

    #[test]
    fn the_body_keeps_data_bytes_and_spells_expected_versions_like_the_api() {
        let body = request_body(&args("no_stream", None), " {\"b\": 1, \"a\": 2.50}\n").unwrap();
        assert_eq!(
            String::from_utf8(body).unwrap(),
            r#"{"expected_version":"no_stream","events":[{"type":"order.placed","data":{"b": 1, "a": 2.50}}]}"#
        );
        let body = request_body(&args("7", Some(r#"{"source":"cli"}"#)), "\"x\"").unwrap();
        assert_eq!(
            String::from_utf8(body).unwrap(),
            r#"{"expected_version":7,"events":[{"type":"order.placed","data":"x","metadata":{"source":"cli"}}]}"#
        );
    }

    #[test]
    fn invalid_json_is_refused_before_sending() {
        assert!(
            request_body(&args("any", None), "{nope").unwrap_err().to_string().contains("not valid JSON")
        );
        assert!(request_body(&args("any", None), "plain words").is_err());
        assert!(request_body(&args("any", Some("[1]")), "1").is_err());
        assert!("maybe".parse::<ExpectedVersionArg>().is_err());
    }
}
