//! `bifrost ws CHANNEL…`: open `GET /v1/ws`, subscribe to each channel and print every frame
//! the server sends as a JSON line, until the server closes the connection or the user
//! stops the command.

use anyhow::{Context, anyhow, bail};
use clap::Args;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::cli::ServerArg;
use crate::output::JsonLines;

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  bifrost ws stream:order-123\n  bifrost ws 'type:order.#' --since 1041\n  \
    bifrost ws room:project:101 user:u-42 --token \"$JWT\""
)]
pub(crate) struct WsArgs {
    /// Channels to subscribe to: `stream:{name}`, `type:{pattern}`, `room:{name}` or
    /// `user:{id}`.
    #[arg(required = true, value_name = "CHANNEL")]
    pub(crate) channels: Vec<String>,

    /// Resume after this position (the last one seen): the events missed since then come
    /// first, in log order [default: only events from now on].
    #[arg(long, value_name = "POSITION")]
    pub(crate) since: Option<u64>,

    /// A JWT, sent as `Authorization: Bearer` (for servers that require one).
    #[arg(long, env = "BIFROST_TOKEN", value_name = "JWT")]
    pub(crate) token: Option<String>,

    /// The connection's user when the server runs without auth.
    #[arg(long, value_name = "ID")]
    pub(crate) user_id: Option<String>,

    #[command(flatten)]
    pub(crate) server: ServerArg,
}

pub(crate) async fn run(args: WsArgs) -> anyhow::Result<()> {
    let mut url = reqwest::Url::parse(&args.server.server)
        .map_err(|e| anyhow!("invalid server URL {:?}: {e}", args.server.server))?;
    if url.scheme() != "http" {
        bail!("server URL {url} is not supported: use http://HOST:PORT");
    }
    url.set_scheme("ws").map_err(|()| anyhow!("cannot make a ws:// URL of {}", args.server.server))?;
    url.set_path("/v1/ws");
    if let Some(user) = &args.user_id {
        url.query_pairs_mut().append_pair("user_id", user);
    }
    let mut request = url.as_str().into_client_request().context("cannot make the WebSocket request")?;
    if let Some(token) = args.token.as_ref().or(args.server.key.key.as_ref()) {
        let value =
            HeaderValue::from_str(&format!("Bearer {token}")).context("the token is not a valid header")?;
        request.headers_mut().insert("authorization", value);
    }
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(|e| anyhow!("cannot open a WebSocket to {url}: {e}"))?;
    for (i, channel) in args.channels.iter().enumerate() {
        let mut frame = serde_json::json!({"op": "subscribe", "id": format!("sub-{i}"), "channel": channel});
        if let Some(since) = args.since {
            frame["since_position"] = since.into();
        }
        socket.send(Message::Text(frame.to_string().into())).await.context("cannot subscribe")?;
    }
    let mut out = JsonLines::stdout();
    while let Some(message) = socket.next().await {
        match message.context("the WebSocket failed")? {
            Message::Text(text) => {
                let frame: serde_json::Value =
                    serde_json::from_str(text.as_str()).context("a frame is not JSON")?;
                out.value(&frame)?;
                out.flush()?;
                // A subscription the server refused ends the command: it would print nothing.
                let refused = (frame["op"] == "error")
                    .then(|| frame["id"].as_str().and_then(|id| id.strip_prefix("sub-")))
                    .flatten()
                    .and_then(|i| i.parse::<usize>().ok());
                if let Some(i) = refused {
                    let channel = args.channels.get(i).map_or("?", String::as_str);
                    let message = frame["message"].as_str().unwrap_or("refused");
                    bail!("cannot subscribe to {channel}: {message}");
                }
            }
            Message::Close(frame) => {
                let (code, reason) =
                    frame.map_or((1005, String::new()), |f| (u16::from(f.code), f.reason.to_string()));
                if code == 1000 || code == 1001 {
                    return Ok(());
                }
                bail!("the server closed the connection: {code} {reason}");
            }
            _ => {}
        }
    }
    Ok(())
}
