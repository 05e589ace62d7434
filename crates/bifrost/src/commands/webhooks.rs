//! `bifrost webhooks …`: webhook endpoints through the HTTP API of a running server —
//! create, list, show, change and delete them, rotate their signing secret, look at their
//! messages and attempts, send messages again, and make a test send. One subcommand per
//! route; the endpoint's fields are flags.

use std::collections::BTreeMap;
use std::future::Future;
use std::str::FromStr;

use anyhow::bail;
use bifrost_api::{
    AttemptStatusBody, ContentModeBody, MAX_RETRY_SCHEDULE, RecoverRequest, RotateSecretRequest, StartBody,
    TestRequest, WebhookFilterRequest, WebhookRequest,
};
use bifrost_client::{Client, MAX_PAGE};
use bifrost_core::{EventId, Timestamp};
use clap::{Args, Subcommand, ValueEnum};
use reqwest::Url;
use reqwest::header::{HeaderName, HeaderValue};
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::cli::WebhooksServerArg;
use crate::commands::groups::StartArg;
use crate::output::{JsonLines, one_line};
use crate::remote;

/// Messages and attempts printed when no --limit is given (the newest ones).
const DEFAULT_LIMIT: usize = 100;

#[derive(Debug, Args)]
pub(crate) struct WebhooksArgs {
    #[command(subcommand)]
    pub(crate) command: WebhooksCommand,

    #[command(flatten)]
    pub(crate) server: WebhooksServerArg,
}

#[derive(Debug, Subcommand)]
pub(crate) enum WebhooksCommand {
    /// List endpoints in creation order, one JSON line each (never their secrets).
    List(ListArgs),
    /// Show one endpoint: its settings, `disabled_reason`, `failing_since`, `backlog`
    /// (messages not yet delivered) and timestamps.
    Get {
        /// The endpoint's id, as `create` or `list` printed it.
        id: String,
    },
    /// Create an endpoint: every event stored from now on (see --start) that its filter
    /// matches is POSTed to --url, signed, and retried until delivered. Prints the endpoint
    /// with its `secret`, which is shown only this once.
    #[command(after_help = "Examples:\n  \
        bifrost webhooks create --url https://example.com/hooks/orders --type 'order.#'\n  \
        bifrost webhooks create --url https://example.com/in --header 'Authorization: Bearer t0k' \\\n      \
        --retry-schedule-ms 1000,60000 --content-mode cloudevents --start beginning")]
    Create(CreateArgs),
    /// Change an endpoint: only the options given change (a JSON merge patch). Lists
    /// (--type, --routing-key, --retry-schedule-ms) replace the endpoint's; --header adds or
    /// replaces one header and keeps the others; --transform merges into the current
    /// transform. Prints the endpoint as it now is.
    #[command(after_help = "Examples:\n  \
        bifrost webhooks update ID --disable\n  \
        bifrost webhooks update ID --enable        (resumes where delivery stopped)\n  \
        bifrost webhooks update ID --url https://example.com/v2 --no-rate-limit --remove-header X-Old")]
    Update(UpdateArgs),
    /// Delete an endpoint with its messages and attempt log; nothing more is sent to it.
    Delete {
        /// The endpoint's id.
        id: String,
    },
    /// Give an endpoint a new signing secret and print it. The previous secret keeps
    /// signing (requests carry both signatures) for --grace-s seconds, so the receiver can
    /// switch without dropping requests.
    RotateSecret(RotateArgs),
    /// List an endpoint's messages (one per matching event), newest first, one JSON line
    /// each: {"event_id", "position", "status", "attempts", "next_attempt_at",
    /// "last_error", "payload"}; or one message with --event.
    Messages(MessagesArgs),
    /// List an endpoint's delivery attempts (kept 30 days), newest first, one JSON line
    /// each: {"id", "at", "event_id", "attempt", "trigger", "status", "response_status",
    /// "response_time_ms", "response_body", "error"}.
    Attempts(AttemptsArgs),
    /// Send one message again now, with a fresh retry schedule, whatever its status (the
    /// endpoint must be enabled).
    Resend {
        /// The endpoint's id.
        id: String,

        /// The event whose message to send again.
        event_id: EventId,
    },
    /// Send again, in log order, every message of an endpoint that failed for good within
    /// a time window (the endpoint must be enabled). Prints {"recovering": <n>}.
    #[command(after_help = "Example:\n  bifrost webhooks recover ID --since 2026-11-22T00:00:00Z")]
    Recover(RecoverArgs),
    /// Send a `bifrost.webhook.test` event to an endpoint once (not stored, not retried)
    /// and print the attempt: {"attempt": {...}}. Fails when the attempt failed.
    Test(TestArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Start after this endpoint id (ids are listed in creation order).
    #[arg(long, value_name = "ID")]
    pub(crate) after: Option<String>,

    /// The most endpoints to print [default: all of them]. When more remain, the id to
    /// continue from is printed on stderr.
    #[arg(long, value_name = "N")]
    pub(crate) limit: Option<usize>,
}

// What `create` and `update` both set (`update`: only the options given change).
#[derive(Debug, Args)]
pub(crate) struct SettingsArgs {
    /// Deliver only events whose type matches this pattern (`*` one segment, `#` zero or
    /// more, e.g. `order.#`); repeat for several [default when created: every type].
    #[arg(long = "type", value_name = "PATTERN")]
    pub(crate) types: Vec<String>,

    /// Deliver only events of streams in this category (the stream name before the first
    /// `-`, e.g. `order` for `order-123`) [default when created: any].
    #[arg(long, value_name = "C")]
    pub(crate) category: Option<String>,

    /// Deliver only events whose routing key (the event type, or what --transform makes of
    /// it) matches this pattern; repeat for several [default when created: every key].
    #[arg(long = "routing-key", value_name = "PATTERN")]
    pub(crate) routing_keys: Vec<String>,

    /// A note for people, shown with the endpoint.
    #[arg(long, value_name = "D")]
    pub(crate) description: Option<String>,

    /// A header sent with every request, as `Name: value`; repeat for several. `webhook-*`,
    /// `content-*` and `host` are set by Bifrost and cannot be given.
    #[arg(long = "header", value_name = "NAME: VALUE")]
    pub(crate) headers: Vec<HeaderArg>,

    /// Start at most this many attempts per second; waiting for the limit is not a failure
    /// [default when created: no limit].
    #[arg(long, value_name = "N")]
    pub(crate) rate_limit: Option<u32>,

    /// Deliver each stream's events in order: none is attempted while an earlier one of its
    /// stream is still pending [default when created: unordered, faster].
    #[arg(long)]
    pub(crate) ordered: bool,

    /// How long the receiver has to answer with a 2xx, in milliseconds; at most 120000
    /// [default when created: 15000].
    #[arg(long, value_name = "N")]
    pub(crate) timeout_ms: Option<u64>,

    /// Delays before attempts 2, 3, … in milliseconds, comma-separated, each ±20 % jitter;
    /// at most 20; `''` or `none` for a single attempt [default when created:
    /// 5000,300000,1800000,7200000,18000000,36000000,36000000].
    #[arg(long, value_name = "MS,MS,…")]
    pub(crate) retry_schedule_ms: Option<RetrySchedule>,

    /// Disable the endpoint when it has been failing (no success) for this many seconds
    /// [default when created: 432000, five days].
    #[arg(long, value_name = "N")]
    pub(crate) disable_after_s: Option<u64>,

    /// The request body: `bifrost` (the integration event as JSON) or `cloudevents` (a
    /// structured CloudEvent 1.0) [default when created: bifrost].
    #[arg(long, value_enum, value_name = "MODE")]
    pub(crate) content_mode: Option<ContentModeArg>,

    /// Reshape what is sent, a JSON object: {"type"?, "version"?, "routing_key"?: templates
    /// with `{path}` placeholders such as `{data.kind}`, "data"?: a JSON pointer into the
    /// event's data, or an object of them}, e.g. '{"routing_key": "{category}.{type}"}'.
    #[arg(long, value_name = "JSON")]
    pub(crate) transform: Option<JsonObject>,
}

#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
    /// Where to POST the events: an absolute http:// or https:// URL. Addresses on
    /// loopback and private networks are refused unless the server allows them
    /// (`--webhook-allow-cidr`).
    #[arg(long, value_name = "URL", value_parser = parse_endpoint_url)]
    pub(crate) url: String,

    #[command(flatten)]
    pub(crate) settings: SettingsArgs,

    /// Create the endpoint disabled: messages wait until `update ID --enable`.
    #[arg(long)]
    pub(crate) disabled: bool,

    /// The signing secret: `whsec_` and the base64 of 24 to 64 bytes [default: 32 random
    /// bytes, printed in the answer].
    #[arg(long, value_name = "S")]
    pub(crate) secret: Option<String>,

    /// Which events become messages: `end` (events stored from now on), `beginning` (the
    /// whole log), or those after a log position [default: end].
    #[arg(long, value_name = "beginning|end|POSITION")]
    pub(crate) start: Option<StartArg>,
}

#[derive(Debug, Args)]
pub(crate) struct UpdateArgs {
    /// The endpoint's id.
    pub(crate) id: String,

    /// A new URL to POST the events to (absolute http:// or https://).
    #[arg(long, value_name = "URL", value_parser = parse_endpoint_url)]
    pub(crate) url: Option<String>,

    #[command(flatten)]
    pub(crate) settings: SettingsArgs,

    /// Re-enable the endpoint (also one disabled for failing or `410 Gone`): delivery
    /// resumes where it stopped.
    #[arg(long, conflicts_with = "disable")]
    pub(crate) enable: bool,

    /// Disable the endpoint: nothing is sent, its messages wait.
    #[arg(long)]
    pub(crate) disable: bool,

    /// Deliver events in any order again (undoes --ordered).
    #[arg(long, conflicts_with = "ordered")]
    pub(crate) unordered: bool,

    /// Remove the rate limit.
    #[arg(long, conflicts_with = "rate_limit")]
    pub(crate) no_rate_limit: bool,

    /// Remove the transform: events are sent as they are.
    #[arg(long, conflicts_with = "transform")]
    pub(crate) no_transform: bool,

    /// Remove the category filter: streams of any category.
    #[arg(long, conflicts_with = "category")]
    pub(crate) no_category: bool,

    /// Stop sending this header; repeat for several.
    #[arg(long, value_name = "NAME")]
    pub(crate) remove_header: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct RotateArgs {
    /// The endpoint's id.
    pub(crate) id: String,

    /// The new secret: `whsec_` and the base64 of 24 to 64 bytes [default: 32 random bytes].
    #[arg(long, value_name = "S")]
    pub(crate) secret: Option<String>,

    /// How long the previous secret keeps signing, in seconds; 0 retires it at once
    /// [default: 86400].
    #[arg(long, value_name = "N")]
    pub(crate) grace_s: Option<u64>,
}

#[derive(Debug, Args)]
pub(crate) struct MessagesArgs {
    /// The endpoint's id.
    pub(crate) id: String,

    /// Show only the message of this event (a JSON line, or a failure when the endpoint's
    /// filter does not match the event).
    #[arg(long, value_name = "EVENT_ID", conflicts_with_all = ["status", "before", "limit"])]
    pub(crate) event: Option<EventId>,

    /// Only messages with this status: `pending` (not yet delivered), `succeeded`, or
    /// `failed` (every attempt failed) [default: all].
    #[arg(long, value_enum, value_name = "STATUS")]
    pub(crate) status: Option<MessageStatusArg>,

    /// Continue an earlier listing from this cursor (printed on stderr when --limit cut it
    /// short).
    #[arg(long, value_name = "C")]
    pub(crate) before: Option<String>,

    /// The most messages to print [default: 100].
    #[arg(long, value_name = "N")]
    pub(crate) limit: Option<usize>,
}

#[derive(Debug, Args)]
pub(crate) struct AttemptsArgs {
    /// The endpoint's id.
    pub(crate) id: String,

    /// Only attempts that `succeeded` (a 2xx in time) or `failed` [default: all].
    #[arg(long, value_enum, value_name = "STATUS")]
    pub(crate) status: Option<AttemptStatusArg>,

    /// Only the attempts of this event's message.
    #[arg(long, value_name = "EVENT_ID")]
    pub(crate) event: Option<EventId>,

    /// Continue an earlier listing from this cursor (printed on stderr when --limit cut it
    /// short).
    #[arg(long, value_name = "C")]
    pub(crate) before: Option<String>,

    /// The most attempts to print [default: 100].
    #[arg(long, value_name = "N")]
    pub(crate) limit: Option<usize>,
}

#[derive(Debug, Args)]
pub(crate) struct RecoverArgs {
    /// The endpoint's id.
    pub(crate) id: String,

    /// Messages that failed at or after this time, RFC 3339 (e.g. 2026-11-22T00:00:00Z).
    #[arg(long, value_name = "RFC3339")]
    pub(crate) since: Timestamp,

    /// … and before this time, RFC 3339 [default: now].
    #[arg(long, value_name = "RFC3339")]
    pub(crate) until: Option<Timestamp>,
}

#[derive(Debug, Args)]
pub(crate) struct TestArgs {
    /// The endpoint's id.
    pub(crate) id: String,

    /// The test event's data, a JSON value [default: {}].
    #[arg(long, value_name = "JSON")]
    pub(crate) data: Option<JsonValue>,
}

/// `--header 'Name: value'`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HeaderArg {
    pub(crate) name: String,
    pub(crate) value: String,
}

impl FromStr for HeaderArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let Some((name, value)) = s.split_once(':') else {
            return Err(format!("{s:?} has no colon; write a header as 'Name: value'"));
        };
        let (name, value) = (name.trim(), value.trim());
        if name.is_empty() {
            return Err(format!("{s:?} has no header name before the colon; write 'Name: value'"));
        }
        HeaderName::from_str(name).map_err(|_| format!("{name:?} is not a valid header name"))?;
        HeaderValue::from_str(value)
            .map_err(|_| format!("the value of header {name} is not a valid header value"))?;
        Ok(Self { name: name.to_owned(), value: value.to_owned() })
    }
}

/// `--retry-schedule-ms 1000,5000,60000`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RetrySchedule(pub(crate) Vec<u64>);

impl FromStr for RetrySchedule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() || s == "none" {
            return Ok(Self(Vec::new()));
        }
        let delays = s
            .split(',')
            .map(|d| {
                d.trim().parse::<u64>().map_err(|_| {
                    format!(
                        "{:?} is not a number of milliseconds; write the delays as e.g. 1000,5000,60000",
                        d.trim()
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if delays.len() > MAX_RETRY_SCHEDULE {
            return Err(format!("{} delays given, at most {MAX_RETRY_SCHEDULE} are allowed", delays.len()));
        }
        Ok(Self(delays))
    }
}

/// A JSON object given on the command line (`--transform`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct JsonObject(pub(crate) Map<String, Value>);

impl FromStr for JsonObject {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match serde_json::from_str(s) {
            Ok(Value::Object(object)) => Ok(Self(object)),
            Ok(_) => Err(format!("{s} is not a JSON object (write it as {{\"key\": …}})")),
            Err(e) => Err(format!("not valid JSON: {e}")),
        }
    }
}

/// Any JSON value given on the command line (`--data`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct JsonValue(pub(crate) Value);

impl FromStr for JsonValue {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        serde_json::from_str(s).map(Self).map_err(|e| format!("not valid JSON: {e}"))
    }
}

/// `--url`: what the API takes, an absolute `http` or `https` URL (kept as written).
fn parse_endpoint_url(s: &str) -> Result<String, String> {
    let url = Url::parse(s).map_err(|e| format!("not an absolute URL: {e}"))?;
    match url.scheme() {
        "http" | "https" => Ok(s.to_owned()),
        other => Err(format!("the scheme is {other:?}; use an http:// or https:// URL")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ContentModeArg {
    Bifrost,
    Cloudevents,
}

impl From<ContentModeArg> for ContentModeBody {
    fn from(mode: ContentModeArg) -> Self {
        match mode {
            ContentModeArg::Bifrost => ContentModeBody::Bifrost,
            ContentModeArg::Cloudevents => ContentModeBody::Cloudevents,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum MessageStatusArg {
    Pending,
    Succeeded,
    Failed,
}

impl MessageStatusArg {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum AttemptStatusArg {
    Succeeded,
    Failed,
}

impl AttemptStatusArg {
    fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }
}

pub(crate) async fn run(args: WebhooksArgs) -> anyhow::Result<()> {
    let client = remote::connect(&args.server)?;
    let mut out = JsonLines::stdout();
    let outcome = run_command(&client, &args.command, &mut out).await;
    // What was printed before a failure still reaches the terminal.
    out.flush()?;
    outcome
}

async fn run_command(client: &Client, command: &WebhooksCommand, out: &mut JsonLines) -> anyhow::Result<()> {
    match command {
        WebhooksCommand::List(list) => {
            let limit = list.limit.unwrap_or(usize::MAX);
            let more = print_pages(out, limit, list.after.clone(), |after, n| async move {
                let page = client.webhooks(after.as_deref(), Some(n)).await.map_err(remote::describe)?;
                Ok((page.webhooks, page.next))
            })
            .await?;
            more_hint(out, "after", more)
        }
        WebhooksCommand::Get { id } => out.value(&client.webhook(id).await.map_err(remote::describe)?),
        WebhooksCommand::Create(create) => {
            let request = create_request(create)?;
            out.value(&client.create_webhook(&request).await.map_err(remote::describe)?)
        }
        WebhooksCommand::Update(update) => {
            let patch = update_patch(update)?;
            out.value(&client.update_webhook(&update.id, &patch).await.map_err(remote::describe)?)
        }
        WebhooksCommand::Delete { id } => {
            client.delete_webhook(id).await.map_err(remote::describe)?;
            out.value(&json!({ "id": id, "deleted": true }))
        }
        WebhooksCommand::RotateSecret(rotate) => {
            let request = RotateSecretRequest { secret: rotate.secret.clone(), grace_s: rotate.grace_s };
            out.value(&client.rotate_webhook_secret(&rotate.id, &request).await.map_err(remote::describe)?)
        }
        WebhooksCommand::Messages(messages) => {
            if let Some(event) = messages.event {
                let message = client
                    .webhook_message(&messages.id, &event.to_string())
                    .await
                    .map_err(remote::describe)?;
                return out.value(&message);
            }
            let status = messages.status.map(MessageStatusArg::as_str);
            let limit = messages.limit.unwrap_or(DEFAULT_LIMIT);
            let more = print_pages(out, limit, messages.before.clone(), |before, n| async move {
                let page = client
                    .webhook_messages(&messages.id, status, before.as_deref(), Some(n))
                    .await
                    .map_err(remote::describe)?;
                Ok((page.messages, page.next))
            })
            .await?;
            more_hint(out, "before", more)
        }
        WebhooksCommand::Attempts(attempts) => {
            let status = attempts.status.map(AttemptStatusArg::as_str);
            let event = attempts.event.map(|e| e.to_string());
            let event = event.as_deref();
            let limit = attempts.limit.unwrap_or(DEFAULT_LIMIT);
            let more = print_pages(out, limit, attempts.before.clone(), |before, n| async move {
                let page = client
                    .webhook_attempts(&attempts.id, status, event, before.as_deref(), Some(n))
                    .await
                    .map_err(remote::describe)?;
                Ok((page.attempts, page.next))
            })
            .await?;
            more_hint(out, "before", more)
        }
        WebhooksCommand::Resend { id, event_id } => {
            let event_id = event_id.to_string();
            client.resend_webhook_message(id, &event_id).await.map_err(remote::describe)?;
            out.value(&json!({ "id": id, "event_id": event_id, "accepted": true }))
        }
        WebhooksCommand::Recover(recover) => {
            let request = RecoverRequest {
                since: recover.since.to_string(),
                until: recover.until.map(|t| t.to_string()),
            };
            out.value(&client.recover_webhook(&recover.id, &request).await.map_err(remote::describe)?)
        }
        WebhooksCommand::Test(test) => {
            let request = TestRequest { data: test.data.as_ref().map(|d| d.0.clone()) };
            let answer = client.test_webhook(&test.id, &request).await.map_err(remote::describe)?;
            out.value(&answer)?;
            let attempt = &answer.attempt;
            if attempt.status == AttemptStatusBody::Failed {
                let why = match (&attempt.error, attempt.response_status) {
                    (Some(error), _) => error.clone(),
                    (None, Some(status)) => format!("the endpoint answered HTTP {status}"),
                    (None, None) => "no answer".to_owned(),
                };
                bail!("the test send failed: {}", one_line(&why));
            }
            Ok(())
        }
    }
}

/// Prints the items of successive pages until `limit` are printed or the pages end; the
/// cursor to continue from when `limit` stopped it and the server has more.
async fn print_pages<T, F, Fut>(
    out: &mut JsonLines,
    limit: usize,
    mut cursor: Option<String>,
    mut page: F,
) -> anyhow::Result<Option<String>>
where
    T: Serialize,
    F: FnMut(Option<String>, usize) -> Fut,
    Fut: Future<Output = anyhow::Result<(Vec<T>, Option<String>)>>,
{
    if limit == 0 {
        return Ok(None);
    }
    let mut remaining = limit;
    while remaining > 0 {
        let (items, next) = page(cursor.clone(), remaining.min(MAX_PAGE)).await?;
        for item in items.iter().take(remaining) {
            out.value(item)?;
        }
        remaining = remaining.saturating_sub(items.len());
        match next {
            // A cursor that does not move, or an empty page, is the end.
            Some(next) if !items.is_empty() && cursor.as_ref() != Some(&next) => cursor = Some(next),
            _ => return Ok(None),
        }
    }
    Ok(cursor)
}

/// When --limit cut a listing short: how to go on, on stderr (stdout stays JSON lines).
fn more_hint(out: &mut JsonLines, flag: &str, cursor: Option<String>) -> anyhow::Result<()> {
    if let Some(cursor) = cursor {
        out.flush()?;
        eprintln!("more: continue with --{flag} {cursor}");
    }
    Ok(())
}

fn filter_request(settings: &SettingsArgs) -> Option<WebhookFilterRequest> {
    let filter = WebhookFilterRequest {
        types: (!settings.types.is_empty()).then(|| settings.types.clone()),
        category: settings.category.clone(),
        routing_keys: (!settings.routing_keys.is_empty()).then(|| settings.routing_keys.clone()),
    };
    (filter != WebhookFilterRequest::default()).then_some(filter)
}

/// The headers given, each name once (in any case).
fn headers(given: &[HeaderArg]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut headers = BTreeMap::new();
    for header in given {
        if headers.keys().any(|name: &String| name.eq_ignore_ascii_case(&header.name)) {
            return Err(remote::invalid_argument(format!(
                "header {} is given twice; give each header once",
                header.name
            )));
        }
        headers.insert(header.name.clone(), header.value.clone());
    }
    Ok(headers)
}

/// What `create` sends: only what was given, so the server's defaults apply to the rest.
fn create_request(args: &CreateArgs) -> anyhow::Result<WebhookRequest> {
    let settings = &args.settings;
    let headers = headers(&settings.headers)?;
    Ok(WebhookRequest {
        url: args.url.clone(),
        filter: filter_request(settings),
        description: settings.description.clone(),
        headers: (!headers.is_empty()).then_some(headers),
        enabled: args.disabled.then_some(false),
        secret: args.secret.clone(),
        rate_limit_per_s: settings.rate_limit,
        ordered: settings.ordered.then_some(true),
        timeout_ms: settings.timeout_ms,
        retry_schedule_ms: settings.retry_schedule_ms.as_ref().map(|s| s.0.clone()),
        disable_after_s: settings.disable_after_s,
        content_mode: settings.content_mode.map(ContentModeBody::from),
        transform: settings.transform.as_ref().map(|t| Value::Object(t.0.clone())),
        start: args.start.map(StartBody::from),
    })
}

/// What `update` sends: a JSON merge patch (RFC 7396) of the options given; `null` removes.
fn update_patch(args: &UpdateArgs) -> anyhow::Result<Value> {
    let settings = &args.settings;
    let mut patch = Map::new();
    let mut set = |key: &str, value: Value| {
        patch.insert(key.to_owned(), value);
    };
    if let Some(url) = &args.url {
        set("url", json!(url));
    }
    let mut filter = Map::new();
    if !settings.types.is_empty() {
        filter.insert("types".into(), json!(settings.types));
    }
    if let Some(category) = &settings.category {
        filter.insert("category".into(), json!(category));
    }
    if args.no_category {
        filter.insert("category".into(), Value::Null);
    }
    if !settings.routing_keys.is_empty() {
        filter.insert("routing_keys".into(), json!(settings.routing_keys));
    }
    if !filter.is_empty() {
        set("filter", Value::Object(filter));
    }
    if let Some(description) = &settings.description {
        set("description", json!(description));
    }
    let mut header_patch: Map<String, Value> =
        headers(&settings.headers)?.into_iter().map(|(name, value)| (name, json!(value))).collect();
    for name in &args.remove_header {
        if header_patch.keys().any(|given| given.eq_ignore_ascii_case(name)) {
            return Err(remote::invalid_argument(format!(
                "header {name} is both set with --header and removed with --remove-header"
            )));
        }
        header_patch.insert(name.clone(), Value::Null);
    }
    if !header_patch.is_empty() {
        set("headers", Value::Object(header_patch));
    }
    if args.enable {
        set("enabled", json!(true));
    }
    if args.disable {
        set("enabled", json!(false));
    }
    if let Some(rate_limit) = settings.rate_limit {
        set("rate_limit_per_s", json!(rate_limit));
    }
    if args.no_rate_limit {
        set("rate_limit_per_s", Value::Null);
    }
    if settings.ordered {
        set("ordered", json!(true));
    }
    if args.unordered {
        set("ordered", json!(false));
    }
    if let Some(timeout_ms) = settings.timeout_ms {
        set("timeout_ms", json!(timeout_ms));
    }
    if let Some(schedule) = &settings.retry_schedule_ms {
        set("retry_schedule_ms", json!(schedule.0));
    }
    if let Some(disable_after_s) = settings.disable_after_s {
        set("disable_after_s", json!(disable_after_s));
    }
    if let Some(mode) = settings.content_mode {
        set("content_mode", json!(ContentModeBody::from(mode)));
    }
    if let Some(transform) = &settings.transform {
        set("transform", Value::Object(transform.0.clone()));
    }
    if args.no_transform {
        set("transform", Value::Null);
    }
    if patch.is_empty() {
        bail!("nothing to change: give at least one option to update (see `bifrost webhooks update --help`)");
    }
    Ok(Value::Object(patch))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Wrap {
        #[command(subcommand)]
        command: WebhooksCommand,
    }

    fn parse(argv: &[&str]) -> Result<WebhooksCommand, clap::Error> {
        Wrap::try_parse_from(std::iter::once("webhooks").chain(argv.iter().copied())).map(|w| w.command)
    }

    fn create_body(argv: &[&str]) -> Value {
        let argv: Vec<&str> =
            ["create", "--url", "https://example.com/h"].iter().chain(argv).copied().collect();
        let WebhooksCommand::Create(args) = parse(&argv).unwrap() else { panic!() };
        serde_json::to_value(create_request(&args).unwrap()).unwrap()
    }

    fn update_body(argv: &[&str]) -> anyhow::Result<Value> {
        let argv: Vec<&str> = ["update", "wh_1"].iter().chain(argv).copied().collect();
        let WebhooksCommand::Update(args) = parse(&argv).unwrap() else { panic!() };
        update_patch(&args)
    }

    #[test]
    fn create_sends_only_what_was_given() {
        assert_eq!(create_body(&[]), json!({"url": "https://example.com/h"}));
        let body = create_body(&[
            "--type",
            "order.#",
            "--type",
            "invoice.*",
            "--routing-key",
            "eu.#",
            "--header",
            "Authorization: Bearer a:b",
            "--header",
            "X-Team:billing",
            "--disabled",
            "--secret",
            "whsec_x",
            "--rate-limit",
            "5",
            "--ordered",
            "--timeout-ms",
            "2000",
            "--retry-schedule-ms",
            "1000, 5000",
            "--disable-after-s",
            "60",
            "--content-mode",
            "cloudevents",
            "--transform",
            r#"{"routing_key": "{category}.{type}"}"#,
            "--start",
            "41",
            "--description",
            "orders",
        ]);
        assert_eq!(
            body,
            json!({
                "url": "https://example.com/h",
                "filter": {"types": ["order.#", "invoice.*"], "routing_keys": ["eu.#"]},
                "description": "orders",
                "headers": {"Authorization": "Bearer a:b", "X-Team": "billing"},
                "enabled": false, "secret": "whsec_x", "rate_limit_per_s": 5, "ordered": true,
                "timeout_ms": 2000, "retry_schedule_ms": [1000, 5000], "disable_after_s": 60,
                "content_mode": "cloudevents", "transform": {"routing_key": "{category}.{type}"},
                "start": {"position": 41}
            })
        );
        assert_eq!(create_body(&["--retry-schedule-ms", ""])["retry_schedule_ms"], json!([]));
        assert_eq!(create_body(&["--category", "order"])["filter"], json!({"category": "order"}));
        assert_eq!(create_body(&["--start", "beginning"])["start"], "beginning");
    }

    #[test]
    fn update_sends_a_merge_patch_of_what_was_given() {
        assert!(update_body(&[]).unwrap_err().to_string().contains("nothing to change"));
        assert_eq!(update_body(&["--enable"]).unwrap(), json!({"enabled": true}));
        assert_eq!(
            update_body(&[
                "--disable",
                "--no-rate-limit",
                "--no-transform",
                "--no-category",
                "--unordered",
                "--header",
                "X-New: 1",
                "--remove-header",
                "X-Old",
            ])
            .unwrap(),
            json!({"enabled": false, "rate_limit_per_s": null, "transform": null,
                   "filter": {"category": null}, "ordered": false,
                   "headers": {"X-New": "1", "X-Old": null}})
        );
        assert_eq!(
            update_body(&["--url", "http://h/x", "--type", "a.*", "--retry-schedule-ms", "none"]).unwrap(),
            json!({"url": "http://h/x", "filter": {"types": ["a.*"]}, "retry_schedule_ms": []})
        );
        assert!(update_body(&["--header", "X: 1", "--remove-header", "x"]).is_err());
    }

    #[test]
    fn update_refuses_contradictions_and_fields_it_cannot_change() {
        for argv in [
            &["update", "wh_1", "--enable", "--disable"][..],
            &["update", "wh_1", "--rate-limit", "3", "--no-rate-limit"],
            &["update", "wh_1", "--transform", "{}", "--no-transform"],
            &["update", "wh_1", "--category", "a", "--no-category"],
            &["update", "wh_1", "--ordered", "--unordered"],
            &["update", "wh_1", "--secret", "whsec_x"],
            &["update", "wh_1", "--start", "end"],
        ] {
            assert!(parse(argv).is_err(), "{argv:?}");
        }
    }

    #[test]
    fn bad_values_are_refused_while_parsing() {
        let create = |extra: &[&str]| {
            let argv: Vec<&str> =
                ["create", "--url", "https://e.com/"].iter().chain(extra).copied().collect();
            parse(&argv).err().map(|e| e.to_string())
        };
        assert!(create(&["--header", "NoColon"]).unwrap().contains("no colon"));
        assert!(create(&["--header", ": v"]).is_some());
        assert!(create(&["--header", "Bad Name: v"]).is_some());
        assert!(create(&["--retry-schedule-ms", "1000,soon"]).unwrap().contains("\"soon\""));
        assert!(create(&["--retry-schedule-ms", &vec!["1"; 21].join(",")]).unwrap().contains("at most 20"));
        assert!(create(&["--transform", "{nope"]).unwrap().contains("not valid JSON"));
        assert!(create(&["--transform", "[1]"]).unwrap().contains("not a JSON object"));
        assert!(create(&["--content-mode", "xml"]).is_some());
        assert!(create(&["--start", "soon"]).is_some());
        assert!(parse(&["create", "--url", "example.com/h"]).is_err());
        assert!(parse(&["create", "--url", "ftp://example.com/h"]).is_err());
        assert!(parse(&["create"]).is_err(), "--url is required");
        assert!(parse(&["test", "wh_1", "--data", "{"]).is_err());
        assert!(parse(&["recover", "wh_1", "--since", "yesterday"]).is_err());
        assert!(parse(&["recover", "wh_1"]).is_err(), "--since is required");
        assert!(parse(&["resend", "wh_1", "not-a-uuid"]).is_err());
        assert!(parse(&["messages", "wh_1", "--status", "lost"]).is_err());
        assert!(parse(&["attempts", "wh_1", "--status", "pending"]).is_err());
        let event = "01936a5e-0000-7000-8000-000000000000";
        assert!(parse(&["messages", "wh_1", "--event", event, "--limit", "3"]).is_err());
        assert!(parse(&["messages", "wh_1", "--event", event]).is_ok());
    }

    #[test]
    fn duplicate_headers_are_refused() {
        let WebhooksCommand::Create(args) =
            parse(&["create", "--url", "https://e.com/", "--header", "X-A: 1", "--header", "x-a: 2"])
                .unwrap()
        else {
            panic!()
        };
        assert!(create_request(&args).unwrap_err().to_string().contains("given twice"));
    }

    #[test]
    fn retry_schedules_and_headers_parse() {
        assert_eq!("1000,5000".parse(), Ok(RetrySchedule(vec![1000, 5000])));
        assert_eq!(" none ".parse(), Ok(RetrySchedule(vec![])));
        assert_eq!(
            "Authorization:  Bearer x ".parse(),
            Ok(HeaderArg { name: "Authorization".into(), value: "Bearer x".into() })
        );
    }
}
