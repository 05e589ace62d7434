//! The body of a webhook message: the integration event an endpoint receives.
//!
//! Two shapes ([`ContentMode`]): Bifrost's own envelope and a structured CloudEvent 1.0.
//! An optional [`Transform`] renames the type, version and routing key from templates and
//! picks the `data` from the stored payload with JSON pointers.
//!
//! The envelope is written by hand: the stored `data` and `metadata` bytes are copied into
//! the body verbatim (never parsed and re-serialised), as the event API prints them.

use std::borrow::Cow;
use std::cell::OnceCell;

use base64::Engine as _;
use bifrost_core::json_out::{write_str, write_timestamp, write_u64, write_uuid};
use bifrost_core::{RecordedEvent, Timestamp};
use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;
use uuid::Uuid;

/// The content type of a payload that is not JSON (sent as `data_base64`).
const OCTET_STREAM: &str = "application/octet-stream";
/// The `source` when the event's metadata names none.
const DEFAULT_SOURCE: &str = "bifrost";

static NULL: Value = Value::Null;

// ---------------------------------------------------------------------------------------
// Public API

/// What a message is made from: a stored event, or a test message (no stream, no position).
#[derive(Clone, Copy, Debug)]
pub struct Source<'a> {
    pub id: Uuid,
    pub event_type: &'a str,
    pub stream: Option<&'a str>,
    pub position: Option<u64>,
    pub schema_version: u32,
    /// The payload bytes as stored (JSON, or anything else for a non-JSON payload).
    pub data: &'a [u8],
    /// The metadata JSON object as stored (empty means `{}`).
    pub metadata: &'a [u8],
    pub occurred_at: Timestamp,
}

impl<'a> Source<'a> {
    pub fn from_event(e: &'a RecordedEvent) -> Self {
        Self {
            id: e.id,
            event_type: e.event_type.as_str(),
            stream: Some(e.stream.as_str()),
            position: Some(e.position),
            schema_version: e.schema_version,
            data: &e.data,
            metadata: &e.metadata,
            occurred_at: e.occurred_at,
        }
    }
}

/// The shape of the body.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentMode {
    /// Bifrost's integration event envelope (`application/json`).
    #[default]
    Bifrost,
    /// A structured-mode CloudEvent 1.0 (`application/cloudevents+json`).
    Cloudevents,
}

impl ContentMode {
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Bifrost => "application/json",
            Self::Cloudevents => "application/cloudevents+json",
        }
    }
}

/// A validated transform:
/// `{"type"?: T, "version"?: T, "routing_key"?: T, "data"?: "<pointer>" | {"<key>": "<pointer>", ...}}`.
///
/// Serialises as that JSON object (so it round-trips through storage and GET);
/// deserialising validates it (a bad template or pointer is a serde error).
#[derive(Clone, Debug, PartialEq)]
pub struct Transform {
    event_type: Option<Template>,
    version: Option<Template>,
    routing_key: Option<Template>,
    data: Option<DataSelect>,
}

impl Transform {
    /// Parses and validates the JSON form of a transform.
    pub fn from_json(value: &Value) -> Result<Self, String> {
        let Value::Object(map) = value else {
            return Err("transform must be a JSON object".into());
        };
        let mut transform = Self { event_type: None, version: None, routing_key: None, data: None };
        for (key, value) in map {
            if value.is_null() {
                // An explicit null is the same as leaving the key out.
                if !matches!(key.as_str(), "type" | "version" | "routing_key" | "data") {
                    return Err(unknown_key(key));
                }
                continue;
            }
            match key.as_str() {
                "type" => transform.event_type = Some(Template::from_field("type", value)?),
                "version" => transform.version = Some(Template::from_field("version", value)?),
                "routing_key" => transform.routing_key = Some(Template::from_field("routing_key", value)?),
                "data" => transform.data = Some(DataSelect::from_json(value)?),
                _ => return Err(unknown_key(key)),
            }
        }
        Ok(transform)
    }

    /// The JSON form: the object [`Transform::from_json`] accepted.
    pub fn to_json(&self) -> Value {
        let mut map = serde_json::Map::new();
        let templates =
            [("type", &self.event_type), ("version", &self.version), ("routing_key", &self.routing_key)];
        for (key, template) in templates {
            if let Some(template) = template {
                map.insert(key.into(), Value::String(template.text.clone()));
            }
        }
        if let Some(data) = &self.data {
            map.insert("data".into(), data.to_json());
        }
        Value::Object(map)
    }
}

fn unknown_key(key: &str) -> String {
    format!("transform: unknown key {key:?} (expected type, version, routing_key or data)")
}

impl Serialize for Transform {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Transform {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Self::from_json(&value).map_err(serde::de::Error::custom)
    }
}

/// A message that cannot be rendered (a placeholder without a value, corrupt metadata).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RenderError(pub String);

/// A rendered message body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    pub body: Bytes,
    pub routing_key: String,
    pub content_type: &'static str,
}

/// The routing key alone (for filtering by `filter.routing_keys` before any attempt): the
/// transform's routing_key template or the event type.
pub fn routing_key(src: &Source<'_>, transform: Option<&Transform>) -> Result<String, RenderError> {
    let ctx = Ctx::new(src);
    routing_key_in(&ctx, transform)
}

/// Renders the body of the message made from `src`.
pub fn render(
    src: &Source<'_>,
    mode: ContentMode,
    transform: Option<&Transform>,
) -> Result<Rendered, RenderError> {
    let ctx = Ctx::new(src);
    let event_type = match transform.and_then(|t| t.event_type.as_ref()) {
        Some(template) => Cow::Owned(template.render(&ctx)?),
        None => Cow::Borrowed(src.event_type),
    };
    let version = match transform.and_then(|t| t.version.as_ref()) {
        Some(template) => template.render(&ctx)?,
        None => src.schema_version.to_string(),
    };
    let routing_key = routing_key_in(&ctx, transform)?;
    let payload = match transform.and_then(|t| t.data.as_ref()) {
        Some(select) => Payload::Json(Cow::Owned(select.render(&ctx))),
        None => Payload::stored(src.data),
    };
    let metadata = ctx.metadata()?;
    let source =
        metadata.get("source").and_then(Value::as_str).filter(|s| !s.is_empty()).unwrap_or(DEFAULT_SOURCE);

    let capacity = 320 + payload.len_hint() + src.metadata.len();
    let mut out = Vec::with_capacity(capacity);
    let head = Head { event_type: &event_type, version: &version, routing_key: &routing_key, source };
    match mode {
        ContentMode::Bifrost => write_bifrost(&mut out, src, &head, &payload),
        ContentMode::Cloudevents => write_cloudevent(&mut out, src, &head, &payload, metadata),
    }
    Ok(Rendered { body: Bytes::from(out), routing_key, content_type: mode.content_type() })
}

/// A template that names targets (rooms, users) from an event, e.g. `project:{data.project_id}`.
/// A placeholder without a value gives no target; a template that is one lone placeholder
/// holding an array gives one target per scalar element.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetTemplate(Template);

impl TargetTemplate {
    pub fn parse(text: &str) -> Result<Self, String> {
        Template::parse(text).map(Self)
    }

    /// The template as it was written.
    pub fn as_str(&self) -> &str {
        &self.0.text
    }

    /// The targets this template names in `ctx` (none when a placeholder has no value).
    fn render_into(&self, ctx: &Ctx<'_, '_>, out: &mut Vec<String>) {
        if let [Part::Placeholder(placeholder)] = self.0.parts.as_slice() {
            let value = match placeholder.root {
                Root::Data => ctx.data().and_then(|data| walk(data, &placeholder.path)),
                Root::Metadata => ctx.metadata().ok().and_then(|m| walk(m, &placeholder.path)),
                _ => None,
            };
            if let Some(Value::Array(items)) = value {
                out.extend(items.iter().filter_map(scalar_text).map(Cow::into_owned));
                return;
            }
        }
        out.extend(self.0.render(ctx).ok());
    }
}

/// Renders target templates against one message, whose stored JSON is parsed at most once
/// however many templates ask for it.
pub struct Targets<'s, 'a> {
    ctx: Ctx<'s, 'a>,
}

impl<'s, 'a> Targets<'s, 'a> {
    pub fn new(src: &'s Source<'a>) -> Self {
        Self { ctx: Ctx::new(src) }
    }

    /// Every target the `templates` name, in order.
    pub fn render(&self, templates: &[TargetTemplate]) -> Vec<String> {
        let mut out = Vec::new();
        for template in templates {
            template.render_into(&self.ctx, &mut out);
        }
        out
    }
}

// ---------------------------------------------------------------------------------------
// Rendering

/// The facts of one message, with the stored JSON parsed at most once and only when needed.
struct Ctx<'s, 'a> {
    src: &'s Source<'a>,
    /// `None` when the stored data is not JSON.
    data: OnceCell<Option<Value>>,
    metadata: OnceCell<Result<Value, String>>,
}

impl<'s, 'a> Ctx<'s, 'a> {
    fn new(src: &'s Source<'a>) -> Self {
        Self { src, data: OnceCell::new(), metadata: OnceCell::new() }
    }

    fn data(&self) -> Option<&Value> {
        self.data
            .get_or_init(|| {
                if self.src.data.is_empty() {
                    Some(Value::Null)
                } else {
                    serde_json::from_slice(self.src.data).ok()
                }
            })
            .as_ref()
    }

    fn metadata(&self) -> Result<&Value, RenderError> {
        self.metadata
            .get_or_init(|| {
                if self.src.metadata.is_empty() {
                    return Ok(Value::Object(serde_json::Map::new()));
                }
                serde_json::from_slice(self.src.metadata)
                    .map_err(|e| format!("event {}: the stored metadata is not valid JSON: {e}", self.src.id))
            })
            .as_ref()
            .map_err(|e| RenderError(e.clone()))
    }
}

fn routing_key_in(ctx: &Ctx<'_, '_>, transform: Option<&Transform>) -> Result<String, RenderError> {
    match transform.and_then(|t| t.routing_key.as_ref()) {
        Some(template) => template.render(ctx),
        None => Ok(ctx.src.event_type.to_owned()),
    }
}

/// The `data` of the body.
enum Payload<'b> {
    /// JSON text, written as is (`null` for an empty payload).
    Json(Cow<'b, [u8]>),
    /// Bytes that are not JSON, sent as `data_base64`.
    Binary(&'b [u8]),
}

impl<'b> Payload<'b> {
    fn stored(data: &'b [u8]) -> Self {
        if data.is_empty() {
            Self::Json(Cow::Borrowed(b"null"))
        } else if serde_json::from_slice::<&RawValue>(data).is_ok() {
            Self::Json(Cow::Borrowed(data))
        } else {
            Self::Binary(data)
        }
    }

    fn len_hint(&self) -> usize {
        match self {
            Self::Json(json) => json.len(),
            Self::Binary(bytes) => bytes.len() / 3 * 4 + 64,
        }
    }
}

/// The envelope fields a transform may change.
struct Head<'h> {
    event_type: &'h str,
    version: &'h str,
    routing_key: &'h str,
    source: &'h str,
}

/// `{"id","type","version","routing_key","occurred_at","source","stream","position","data"|
/// "data_base64"+"datacontenttype","metadata"}`.
fn write_bifrost(out: &mut Vec<u8>, src: &Source<'_>, head: &Head<'_>, payload: &Payload<'_>) {
    out.extend_from_slice(b"{\"id\":");
    write_uuid(out, src.id);
    out.extend_from_slice(b",\"type\":");
    write_str(out, head.event_type);
    out.extend_from_slice(b",\"version\":");
    write_str(out, head.version);
    out.extend_from_slice(b",\"routing_key\":");
    write_str(out, head.routing_key);
    out.extend_from_slice(b",\"occurred_at\":");
    write_timestamp(out, src.occurred_at);
    out.extend_from_slice(b",\"source\":");
    write_str(out, head.source);
    out.extend_from_slice(b",\"stream\":");
    match src.stream {
        Some(stream) => write_str(out, stream),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"position\":");
    match src.position {
        Some(position) => write_u64(out, position),
        None => out.extend_from_slice(b"null"),
    }
    match payload {
        Payload::Json(json) => {
            out.extend_from_slice(b",\"data\":");
            out.extend_from_slice(json);
        }
        Payload::Binary(bytes) => {
            out.extend_from_slice(b",\"data_base64\":");
            write_base64(out, bytes);
            out.extend_from_slice(b",\"datacontenttype\":");
            write_str(out, OCTET_STREAM);
        }
    }
    out.extend_from_slice(b",\"metadata\":");
    out.extend_from_slice(if src.metadata.is_empty() { b"{}" } else { src.metadata });
    out.push(b'}');
}

/// A structured-mode CloudEvent 1.0 with Bifrost's extension attributes.
fn write_cloudevent(
    out: &mut Vec<u8>,
    src: &Source<'_>,
    head: &Head<'_>,
    payload: &Payload<'_>,
    metadata: &Value,
) {
    out.extend_from_slice(b"{\"specversion\":\"1.0\",\"id\":");
    write_uuid(out, src.id);
    out.extend_from_slice(b",\"source\":");
    write_str(out, head.source);
    out.extend_from_slice(b",\"type\":");
    write_str(out, head.event_type);
    if let Some(stream) = src.stream {
        out.extend_from_slice(b",\"subject\":");
        write_str(out, stream);
    }
    out.extend_from_slice(b",\"time\":");
    write_timestamp(out, src.occurred_at);
    match payload {
        Payload::Json(json) => {
            out.extend_from_slice(b",\"datacontenttype\":\"application/json\",\"data\":");
            out.extend_from_slice(json);
        }
        Payload::Binary(bytes) => {
            out.extend_from_slice(b",\"datacontenttype\":");
            write_str(out, OCTET_STREAM);
            out.extend_from_slice(b",\"data_base64\":");
            write_base64(out, bytes);
        }
    }
    out.extend_from_slice(b",\"eventversion\":");
    write_str(out, head.version);
    out.extend_from_slice(b",\"routingkey\":");
    write_str(out, head.routing_key);
    if let Some(position) = src.position {
        out.extend_from_slice(b",\"position\":");
        write_u64(out, position);
    }
    let extensions = [
        ("correlationid", "correlation_id"),
        ("causationid", "causation_id"),
        ("tenantid", "tenant_id"),
        ("userid", "user_id"),
    ];
    for (attribute, key) in extensions {
        if let Some(value) = metadata.get(key).and_then(scalar_text) {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(attribute.as_bytes());
            out.extend_from_slice(b"\":");
            write_str(out, &value);
        }
    }
    out.push(b'}');
}

/// Quoted standard base64 (padded); its alphabet needs no escaping.
fn write_base64(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    out.extend_from_slice(base64::engine::general_purpose::STANDARD.encode(bytes).as_bytes());
    out.push(b'"');
}

/// A string as is, a number or boolean as its JSON text; anything else has no text.
fn scalar_text(value: &Value) -> Option<Cow<'_, str>> {
    match value {
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

// ---------------------------------------------------------------------------------------
// Templates

/// A text template with `{path}` placeholders; `{{` and `}}` are literal braces.
#[derive(Clone, Debug, PartialEq)]
struct Template {
    /// As the user wrote it (what [`Transform::to_json`] gives back).
    text: String,
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq)]
enum Part {
    Literal(String),
    Placeholder(Placeholder),
}

#[derive(Clone, Debug, PartialEq)]
struct Placeholder {
    /// The text between the braces, for error messages.
    name: String,
    root: Root,
    /// Object keys or array indexes below `data` or `metadata`.
    path: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Root {
    Id,
    Type,
    Stream,
    Category,
    SchemaVersion,
    Data,
    Metadata,
}

impl Template {
    fn from_field(field: &str, value: &Value) -> Result<Self, String> {
        let Value::String(text) = value else {
            return Err(format!("transform.{field} must be a string template"));
        };
        Self::parse(text).map_err(|e| format!("transform.{field}: {e}"))
    }

    fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("the template must not be empty".into());
        }
        let bytes = text.as_bytes();
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut i = 0;
        while let Some(found) = text[i..].find(['{', '}']) {
            let at = i + found;
            literal.push_str(&text[i..at]);
            let brace = bytes[at];
            if bytes.get(at + 1) == Some(&brace) {
                literal.push(char::from(brace));
                i = at + 2;
                continue;
            }
            if brace == b'}' {
                return Err(format!(
                    "stray \"}}\" at byte {at} of {text:?} (write \"}}}}\" for a literal brace)"
                ));
            }
            let end = match text[at + 1..].find(['{', '}']) {
                Some(found) if bytes[at + 1 + found] == b'}' => at + 1 + found,
                _ => {
                    return Err(format!(
                        "unclosed \"{{\" at byte {at} of {text:?} (write \"{{{{\" for a literal brace)"
                    ));
                }
            };
            let placeholder = Placeholder::parse(&text[at + 1..end])?;
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(Part::Placeholder(placeholder));
            i = end + 1;
        }
        literal.push_str(&text[i..]);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Self { text: text.to_owned(), parts })
    }

    fn render(&self, ctx: &Ctx<'_, '_>) -> Result<String, RenderError> {
        let mut out = String::with_capacity(self.text.len() + 32);
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Placeholder(placeholder) => placeholder.render(ctx, &mut out)?,
            }
        }
        Ok(out)
    }
}

impl Placeholder {
    fn parse(name: &str) -> Result<Self, String> {
        let mut segments = name.split('.');
        let root_name = segments.next().unwrap_or_default();
        let root = match root_name {
            "id" => Root::Id,
            "type" => Root::Type,
            "stream" => Root::Stream,
            "category" => Root::Category,
            "schema_version" => Root::SchemaVersion,
            "data" => Root::Data,
            "metadata" => Root::Metadata,
            _ => {
                return Err(format!(
                    "unknown placeholder {{{name}}}: use id, type, stream, category, schema_version, \
                     data.<path> or metadata.<key>"
                ));
            }
        };
        let path: Vec<String> = segments.map(str::to_owned).collect();
        if path.iter().any(String::is_empty) {
            return Err(format!("placeholder {{{name}}} has an empty path segment"));
        }
        match root {
            Root::Data => {}
            Root::Metadata if path.is_empty() => {
                return Err(format!("placeholder {{{name}}} needs a key, e.g. {{metadata.user_id}}"));
            }
            Root::Metadata => {}
            _ if !path.is_empty() => {
                return Err(format!("placeholder {{{name}}}: {root_name} has no fields"));
            }
            _ => {}
        }
        Ok(Self { name: name.to_owned(), root, path })
    }

    fn render(&self, ctx: &Ctx<'_, '_>, out: &mut String) -> Result<(), RenderError> {
        let src = ctx.src;
        let missing = || RenderError(format!("transform: placeholder {{{}}} has no value", self.name));
        match self.root {
            Root::Id => {
                let mut buffer = Uuid::encode_buffer();
                out.push_str(src.id.hyphenated().encode_lower(&mut buffer));
            }
            Root::Type => out.push_str(src.event_type),
            Root::Stream => out.push_str(src.stream.ok_or_else(missing)?),
            Root::Category => {
                let stream = src.stream.ok_or_else(missing)?;
                out.push_str(stream.split_once('-').map_or(stream, |(category, _)| category));
            }
            Root::SchemaVersion => out.push_str(&src.schema_version.to_string()),
            Root::Data => {
                let value = ctx.data().and_then(|data| walk(data, &self.path));
                out.push_str(&value.and_then(scalar_text).ok_or_else(missing)?);
            }
            Root::Metadata => {
                let value = walk(ctx.metadata()?, &self.path);
                out.push_str(&value.and_then(scalar_text).ok_or_else(missing)?);
            }
        }
        Ok(())
    }
}

/// Follows object keys (and, in arrays, decimal indexes) down from `value`.
fn walk<'v>(mut value: &'v Value, path: &[String]) -> Option<&'v Value> {
    for segment in path {
        value = match value {
            Value::Object(map) => map.get(segment)?,
            Value::Array(items) if segment.bytes().all(|b| b.is_ascii_digit()) => {
                items.get(segment.parse::<usize>().ok()?)?
            }
            _ => return None,
        };
    }
    Some(value)
}

// ---------------------------------------------------------------------------------------
// Data selection

/// What the `data` of a transformed message is: one pointer's value, or an object of them.
#[derive(Clone, Debug, PartialEq)]
enum DataSelect {
    Pointer(Pointer),
    Object(Vec<(String, Pointer)>),
}

/// An RFC 6901 JSON pointer into the stored data.
#[derive(Clone, Debug, PartialEq)]
struct Pointer(String);

impl DataSelect {
    fn from_json(value: &Value) -> Result<Self, String> {
        match value {
            Value::String(pointer) => {
                Pointer::parse(pointer).map(Self::Pointer).map_err(|e| format!("transform.data: {e}"))
            }
            Value::Object(map) => map
                .iter()
                .map(|(key, pointer)| match pointer {
                    Value::String(pointer) => Pointer::parse(pointer)
                        .map(|p| (key.clone(), p))
                        .map_err(|e| format!("transform.data.{key}: {e}")),
                    _ => Err(format!("transform.data.{key} must be a JSON pointer string")),
                })
                .collect::<Result<_, _>>()
                .map(Self::Object),
            _ => {
                Err("transform.data must be a JSON pointer string or an object of JSON pointer strings"
                    .into())
            }
        }
    }

    fn to_json(&self) -> Value {
        match self {
            Self::Pointer(pointer) => Value::String(pointer.0.clone()),
            Self::Object(fields) => Value::Object(
                fields.iter().map(|(key, pointer)| (key.clone(), Value::String(pointer.0.clone()))).collect(),
            ),
        }
    }

    /// The selected JSON (a missing value, or data that is not JSON, is `null`).
    fn render(&self, ctx: &Ctx<'_, '_>) -> Vec<u8> {
        let select =
            |pointer: &Pointer| ctx.data().and_then(|data| data.pointer(&pointer.0)).unwrap_or(&NULL);
        let mut out = Vec::new();
        match self {
            Self::Pointer(pointer) => {
                let _ = serde_json::to_writer(&mut out, select(pointer));
            }
            Self::Object(fields) => {
                out.push(b'{');
                for (i, (key, pointer)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_str(&mut out, key);
                    out.push(b':');
                    let _ = serde_json::to_writer(&mut out, select(pointer));
                }
                out.push(b'}');
            }
        }
        out
    }
}

impl Pointer {
    fn parse(pointer: &str) -> Result<Self, String> {
        if !pointer.is_empty() && !pointer.starts_with('/') {
            return Err(format!(
                "invalid JSON pointer {pointer:?}: it must be empty (the whole data) or start with \"/\""
            ));
        }
        let mut rest = pointer;
        while let Some(at) = rest.find('~') {
            rest = &rest[at + 1..];
            if !(rest.starts_with('0') || rest.starts_with('1')) {
                return Err(format!("invalid JSON pointer {pointer:?}: \"~\" must be followed by 0 or 1"));
            }
        }
        Ok(Self(pointer.to_owned()))
    }
}

// ---------------------------------------------------------------------------------------

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use bifrost_core::{EventType, StreamName};
    use serde_json::json;

    use super::*;

    const ID: &str = "01936a5e-7c1f-7d2a-9b3c-4d5e6f708192";
    const DATA: &[u8] = br#"{"b":1,  "a":[1.50,2]}"#;
    const METADATA: &[u8] =
        br#"{"correlation_id":"c-1","causation_id":null,"source":null,"user_id":"u-9","tenant_id":null,"any_other_key":"kept"}"#;

    fn src<'a>(data: &'a [u8], metadata: &'a [u8]) -> Source<'a> {
        Source {
            id: ID.parse().unwrap(),
            event_type: "order.submitted",
            stream: Some("order-123"),
            position: Some(1041),
            schema_version: 1,
            data,
            metadata,
            occurred_at: "2026-11-22T10:00:00.123456Z".parse().unwrap(),
        }
    }

    fn test_message<'a>(data: &'a [u8], metadata: &'a [u8]) -> Source<'a> {
        Source { stream: None, position: None, ..src(data, metadata) }
    }

    fn transform(value: Value) -> Transform {
        Transform::from_json(&value).unwrap()
    }

    fn body_text(rendered: &Rendered) -> &str {
        std::str::from_utf8(&rendered.body).unwrap()
    }

    fn body_json(rendered: &Rendered) -> Value {
        serde_json::from_slice(&rendered.body).unwrap()
    }

    fn keys(body: &str) -> Vec<String> {
        // The top-level keys in the order written (serde_json's Map would sort them).
        let raw: std::collections::BTreeMap<String, &RawValue> = serde_json::from_str(body).unwrap();
        let mut found: Vec<(usize, String)> =
            raw.keys().map(|k| (body.find(&format!("\"{k}\":")).unwrap(), k.clone())).collect();
        found.sort();
        found.into_iter().map(|(_, k)| k).collect()
    }

    /// Renders `template` as the type of the message made from `source`.
    fn render_type(source: &Source<'_>, template: &str) -> Result<String, RenderError> {
        let t = transform(json!({ "type": template }));
        render(source, ContentMode::Bifrost, Some(&t))
            .map(|r| body_json(&r)["type"].as_str().unwrap().to_owned())
    }

    #[test]
    fn bifrost_envelope_field_by_field_in_order_with_data_verbatim() {
        let r = render(&src(DATA, METADATA), ContentMode::Bifrost, None).unwrap();
        assert_eq!(r.content_type, "application/json");
        assert_eq!(r.routing_key, "order.submitted");
        let text = body_text(&r);
        assert_eq!(
            keys(text),
            [
                "id",
                "type",
                "version",
                "routing_key",
                "occurred_at",
                "source",
                "stream",
                "position",
                "data",
                "metadata"
            ]
        );
        assert!(text.contains(r#""data":{"b":1,  "a":[1.50,2]},"metadata":"#), "{text}");
        assert!(
            text.ends_with(&format!(",\"metadata\":{}}}", std::str::from_utf8(METADATA).unwrap())),
            "{text}"
        );
        let body = body_json(&r);
        assert_eq!(body["id"], ID);
        assert_eq!(body["type"], "order.submitted");
        assert_eq!(body["version"], "1");
        assert_eq!(body["routing_key"], "order.submitted");
        assert_eq!(body["occurred_at"], "2026-11-22T10:00:00.123456Z");
        assert_eq!(body["source"], "bifrost");
        assert_eq!(body["stream"], "order-123");
        assert_eq!(body["position"], 1041);
        assert_eq!(body["data"], json!({"a": [1.5, 2], "b": 1}));
        assert_eq!(body["metadata"]["correlation_id"], "c-1");
        assert_eq!(body["metadata"]["any_other_key"], "kept");
        assert_eq!(body.as_object().unwrap().len(), 10);
    }

    #[test]
    fn exact_bytes_of_a_small_envelope() {
        let r = render(&src(b"{\"total\":42.5}", b""), ContentMode::Bifrost, None).unwrap();
        let expected = format!(
            "{{\"id\":\"{ID}\",\"type\":\"order.submitted\",\"version\":\"1\",\"routing_key\":\"order.submitted\",\
             \"occurred_at\":\"2026-11-22T10:00:00.123456Z\",\"source\":\"bifrost\",\"stream\":\"order-123\",\
             \"position\":1041,\"data\":{{\"total\":42.5}},\"metadata\":{{}}}}"
        );
        assert_eq!(body_text(&r), expected);
    }

    #[test]
    fn source_defaults_to_bifrost_or_comes_from_metadata() {
        let body =
            |metadata: &[u8]| body_json(&render(&src(DATA, metadata), ContentMode::Bifrost, None).unwrap());
        assert_eq!(body(b"")["source"], "bifrost");
        assert_eq!(body(b"{}")["source"], "bifrost");
        assert_eq!(body(br#"{"source":null}"#)["source"], "bifrost");
        assert_eq!(body(br#"{"source":"checkout"}"#)["source"], "checkout");
        let ce = render(&src(DATA, br#"{"source":"checkout"}"#), ContentMode::Cloudevents, None).unwrap();
        assert_eq!(body_json(&ce)["source"], "checkout");
    }

    #[test]
    fn empty_data_is_null_and_schema_version_is_the_version() {
        let source = Source { schema_version: 7, ..src(b"", b"") };
        let r = render(&source, ContentMode::Bifrost, None).unwrap();
        assert!(body_text(&r).contains(r#""data":null,"metadata":{}"#), "{}", body_text(&r));
        assert_eq!(body_json(&r)["version"], "7");
    }

    #[test]
    fn non_json_data_is_sent_as_base64() {
        let bytes: &[u8] = &[0xff, 0x00, b'a', b'{'];
        let r = render(&src(bytes, b""), ContentMode::Bifrost, None).unwrap();
        let text = body_text(&r);
        assert_eq!(
            keys(text),
            [
                "id",
                "type",
                "version",
                "routing_key",
                "occurred_at",
                "source",
                "stream",
                "position",
                "data_base64",
                "datacontenttype",
                "metadata"
            ]
        );
        let body = body_json(&r);
        assert_eq!(body["data_base64"], "/wBhew==");
        assert_eq!(body["datacontenttype"], "application/octet-stream");
        assert!(body.get("data").is_none());

        let ce = render(&src(b"plain text", b""), ContentMode::Cloudevents, None).unwrap();
        let body = body_json(&ce);
        assert_eq!(body["data_base64"], "cGxhaW4gdGV4dA==");
        assert_eq!(body["datacontenttype"], "application/octet-stream");
        assert!(body.get("data").is_none());
    }

    #[test]
    fn a_test_message_has_null_stream_and_position() {
        let r = render(&test_message(DATA, b""), ContentMode::Bifrost, None).unwrap();
        assert!(body_text(&r).contains(r#""stream":null,"position":null,"data":"#), "{}", body_text(&r));
        let ce = render(&test_message(DATA, b""), ContentMode::Cloudevents, None).unwrap();
        let body = body_json(&ce);
        assert!(body.get("subject").is_none());
        assert!(body.get("position").is_none());
    }

    #[test]
    fn from_event_takes_the_stored_fields() {
        let event = RecordedEvent {
            id: ID.parse().unwrap(),
            stream: StreamName::new("order-123").unwrap(),
            aggregate_type: "order".into(),
            event_type: EventType::new("order.submitted").unwrap(),
            schema_version: 2,
            version: 3,
            position: 1041,
            data: Bytes::from_static(DATA),
            metadata: Bytes::from_static(METADATA),
            occurred_at: "2026-11-22T10:00:00.123456Z".parse().unwrap(),
            recorded_at: "2026-11-22T10:00:01Z".parse().unwrap(),
        };
        let source = Source::from_event(&event);
        assert_eq!(source.id, event.id);
        assert_eq!(source.event_type, "order.submitted");
        assert_eq!(source.stream, Some("order-123"));
        assert_eq!(source.position, Some(1041));
        assert_eq!(source.schema_version, 2);
        assert_eq!(source.data, DATA);
        assert_eq!(source.metadata, METADATA);
        assert_eq!(source.occurred_at, event.occurred_at);
    }

    #[test]
    fn cloudevents_structured_mode() {
        let r = render(&src(DATA, METADATA), ContentMode::Cloudevents, None).unwrap();
        assert_eq!(r.content_type, "application/cloudevents+json");
        assert_eq!(ContentMode::Cloudevents.content_type(), "application/cloudevents+json");
        assert_eq!(ContentMode::Bifrost.content_type(), "application/json");
        let text = body_text(&r);
        assert_eq!(
            keys(text),
            [
                "specversion",
                "id",
                "source",
                "type",
                "subject",
                "time",
                "datacontenttype",
                "data",
                "eventversion",
                "routingkey",
                "position",
                "correlationid",
                "userid"
            ]
        );
        assert!(text.contains(r#""data":{"b":1,  "a":[1.50,2]},"#), "{text}");
        let body = body_json(&r);
        assert_eq!(body["specversion"], "1.0");
        assert_eq!(body["id"], ID);
        assert_eq!(body["source"], "bifrost");
        assert_eq!(body["type"], "order.submitted");
        assert_eq!(body["subject"], "order-123");
        assert_eq!(body["time"], "2026-11-22T10:00:00.123456Z");
        assert_eq!(body["datacontenttype"], "application/json");
        assert_eq!(body["eventversion"], "1");
        assert_eq!(body["routingkey"], "order.submitted");
        assert_eq!(body["position"], json!(1041));
        assert_eq!(body["correlationid"], "c-1");
        assert_eq!(body["userid"], "u-9");
        // Null causation and tenant ids are left out, and so is every other metadata key.
        assert!(body.get("causationid").is_none());
        assert!(body.get("tenantid").is_none());
        assert!(body.get("any_other_key").is_none());

        let all = br#"{"correlation_id":"c","causation_id":"k","tenant_id":"t","user_id":"u"}"#;
        let body = body_json(&render(&src(DATA, all), ContentMode::Cloudevents, None).unwrap());
        assert_eq!(
            (&body["correlationid"], &body["causationid"], &body["tenantid"], &body["userid"]),
            (&json!("c"), &json!("k"), &json!("t"), &json!("u"))
        );
        let none = body_json(&render(&src(DATA, b""), ContentMode::Cloudevents, None).unwrap());
        for key in ["correlationid", "causationid", "tenantid", "userid"] {
            assert!(none.get(key).is_none(), "{key}");
        }
    }

    #[test]
    fn content_mode_serde_is_lowercase() {
        assert_eq!(serde_json::to_string(&ContentMode::Cloudevents).unwrap(), "\"cloudevents\"");
        assert_eq!(serde_json::from_str::<ContentMode>("\"bifrost\"").unwrap(), ContentMode::Bifrost);
        assert_eq!(ContentMode::default(), ContentMode::Bifrost);
    }

    #[test]
    fn templates_insert_strings_numbers_booleans_and_indexes() {
        let data = br#"{"project":{"id":"p-7","n":3,"ratio":0.25,"live":true,"tags":["x","y"]},"items":[{"sku":"s-1"}]}"#;
        let metadata = br#"{"tenant_id":"acme","user_id":"u-9"}"#;
        let source = src(data, metadata);
        let cases = [
            ("{type}.v{schema_version}", "order.submitted.v1"),
            ("{id}", ID),
            ("{stream}/{category}", "order-123/order"),
            ("p.{data.project.id}", "p.p-7"),
            ("{data.project.n}-{data.project.ratio}", "3-0.25"),
            ("live={data.project.live}", "live=true"),
            ("{data.project.tags.1}/{data.items.0.sku}", "y/s-1"),
            ("{{literal}} {{{data.project.id}}}", "{literal} {p-7}"),
            ("tenant.{metadata.tenant_id}", "tenant.acme"),
            ("plain", "plain"),
        ];
        for (template, expected) in cases {
            assert_eq!(render_type(&source, template).unwrap(), expected, "{template}");
        }
        // A stream without a `-` is its own category.
        let single = Source { stream: Some("inventory"), ..src(data, metadata) };
        assert_eq!(render_type(&single, "{category}").unwrap(), "inventory");
    }

    #[test]
    fn version_and_routing_key_templates() {
        let t = transform(json!({
            "type": "{category}.placed",
            "version": "{schema_version}.0",
            "routing_key": "{metadata.tenant_id}.{type}",
        }));
        let source = src(br#"{"a":1}"#, br#"{"tenant_id":"acme"}"#);
        let r = render(&source, ContentMode::Bifrost, Some(&t)).unwrap();
        let body = body_json(&r);
        assert_eq!(body["type"], "order.placed");
        assert_eq!(body["version"], "1.0");
        assert_eq!(body["routing_key"], "acme.order.submitted");
        assert_eq!(body["id"], ID, "the id stays the event id");
        assert_eq!(body["data"], json!({"a": 1}));
        assert_eq!(r.routing_key, "acme.order.submitted");
        assert_eq!(routing_key(&source, Some(&t)).unwrap(), "acme.order.submitted");
        assert_eq!(routing_key(&source, None).unwrap(), "order.submitted");
        // Without a routing_key template the key is the event type, even with a new type.
        let only_type = transform(json!({"type": "x"}));
        assert_eq!(routing_key(&source, Some(&only_type)).unwrap(), "order.submitted");

        let ce = body_json(&render(&source, ContentMode::Cloudevents, Some(&t)).unwrap());
        assert_eq!(ce["type"], "order.placed");
        assert_eq!(ce["eventversion"], "1.0");
        assert_eq!(ce["routingkey"], "acme.order.submitted");
    }

    #[test]
    fn placeholders_without_a_value_fail_naming_the_placeholder() {
        let data = br#"{"a":null,"o":{"k":1},"list":[1],"s":"x"}"#;
        let source = src(data, br#"{"user_id":null}"#);
        for name in [
            "data.project_id",
            "data.a",
            "data.o",
            "data.list",
            "data.list.5",
            "data.s.x",
            "metadata.user_id",
            "metadata.nope",
        ] {
            let err = render_type(&source, &format!("t.{{{name}}}")).unwrap_err();
            assert_eq!(err.0, format!("transform: placeholder {{{name}}} has no value"));
            assert_eq!(err.to_string(), err.0);
        }
        let test = test_message(data, b"");
        for name in ["stream", "category"] {
            let err = render_type(&test, &format!("{{{name}}}")).unwrap_err();
            assert_eq!(err.0, format!("transform: placeholder {{{name}}} has no value"));
        }
        // Data that is not JSON has no fields.
        let err = render_type(&src(b"\x01binary", b""), "{data.a}").unwrap_err();
        assert_eq!(err.0, "transform: placeholder {data.a} has no value");
        // The routing key alone fails the same way.
        let t = transform(json!({"routing_key": "{data.project_id}"}));
        assert_eq!(
            routing_key(&source, Some(&t)).unwrap_err().0,
            "transform: placeholder {data.project_id} has no value"
        );
    }

    #[test]
    fn data_pointers_select_from_the_data() {
        let source = src(br#"{"order":{"id":"o-1","lines":[{"sku":"a"},{"sku":"b"}]},"x/y":1,"m~n":2}"#, b"");
        let data_of = |select: Value, mode: ContentMode| {
            let t = transform(json!({ "data": select }));
            body_json(&render(&source, mode, Some(&t)).unwrap())["data"].clone()
        };
        assert_eq!(data_of(json!("/order/id"), ContentMode::Bifrost), json!("o-1"));
        assert_eq!(data_of(json!("/order/lines/1"), ContentMode::Bifrost), json!({"sku": "b"}));
        assert_eq!(data_of(json!("/x~1y"), ContentMode::Bifrost), json!(1));
        assert_eq!(data_of(json!("/m~0n"), ContentMode::Bifrost), json!(2));
        assert_eq!(data_of(json!("/missing"), ContentMode::Bifrost), Value::Null);
        assert_eq!(data_of(json!(""), ContentMode::Bifrost)["order"]["id"], "o-1");
        assert_eq!(
            data_of(
                json!({"order_id": "/order/id", "first": "/order/lines/0/sku", "none": "/nope"}),
                ContentMode::Cloudevents
            ),
            json!({"order_id": "o-1", "first": "a", "none": null})
        );
        // Data that is not JSON selects nothing.
        let t = transform(json!({"data": {"a": "/a"}}));
        let binary = render(&src(b"\x01binary", b""), ContentMode::Bifrost, Some(&t)).unwrap();
        assert_eq!(body_json(&binary)["data"], json!({"a": null}));
        assert!(body_json(&binary).get("data_base64").is_none());
    }

    #[test]
    fn parse_errors_at_create_time() {
        let bad = [
            json!({"type": "{data.a"}),
            json!({"type": "a}b"}),
            json!({"type": "{{}"}),
            json!({"type": "{a{b}"}),
            json!({"type": "{nope}"}),
            json!({"type": "{}"}),
            json!({"type": "{data..a}"}),
            json!({"type": "{metadata}"}),
            json!({"type": "{id.x}"}),
            json!({"type": ""}),
            json!({"type": 3}),
            json!({"version": "{Type}"}),
            json!({"routing_key": "x.{stream"}),
            json!({"data": "order/id"}),
            json!({"data": "/a~2"}),
            json!({"data": "/a~"}),
            json!({"data": {"k": "nope"}}),
            json!({"data": {"k": 1}}),
            json!({"data": 1}),
            json!({"other": "x"}),
            json!("type"),
        ];
        for value in bad {
            let err = Transform::from_json(&value).unwrap_err();
            assert!(err.contains("transform"), "{value}: {err}");
            assert!(serde_json::from_value::<Transform>(value.clone()).is_err(), "{value}");
        }
        let err = Transform::from_json(&json!({"type": "{data.a"})).unwrap_err();
        assert!(err.contains("transform.type") && err.contains("unclosed"), "{err}");
        let err = Transform::from_json(&json!({"routing_key": "a}"})).unwrap_err();
        assert!(err.contains("transform.routing_key") && err.contains("stray"), "{err}");
        let err = Transform::from_json(&json!({"version": "{nope}"})).unwrap_err();
        assert!(err.contains("{nope}"), "{err}");
        let err = Transform::from_json(&json!({"data": {"k": "x"}})).unwrap_err();
        assert!(err.contains("transform.data.k") && err.contains("JSON pointer"), "{err}");
        let err = serde_json::from_value::<Transform>(json!({"data": "x"})).unwrap_err();
        assert!(err.to_string().contains("invalid JSON pointer \"x\""), "{err}");
        // Good ones, including escaped braces and the empty pointer.
        for value in [json!({}), json!({"type": "{{}}"}), json!({"data": ""}), json!({"type": null})] {
            Transform::from_json(&value).unwrap();
        }
    }

    #[test]
    fn transform_serde_round_trip() {
        let value = json!({
            "type": "{category}.{data.kind}",
            "version": "{{v}}{schema_version}",
            "routing_key": "{metadata.tenant_id}.{type}",
            "data": {"id": "/order/id", "all": ""},
        });
        let t = transform(value.clone());
        assert_eq!(t.to_json(), value);
        assert_eq!(serde_json::to_value(&t).unwrap(), value);
        let back: Transform = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!(back, t);
        let single = transform(json!({"data": "/a/0"}));
        assert_eq!(single.to_json(), json!({"data": "/a/0"}));
        assert_eq!(serde_json::from_value::<Transform>(single.to_json()).unwrap(), single);
        assert_eq!(transform(json!({})).to_json(), json!({}));
    }

    #[test]
    fn corrupt_metadata_is_a_render_error() {
        let err = render(&src(DATA, b"{not json"), ContentMode::Bifrost, None).unwrap_err();
        assert!(err.0.contains("metadata"), "{err}");
        // Routing without metadata placeholders does not need it.
        assert_eq!(routing_key(&src(DATA, b"{not json"), None).unwrap(), "order.submitted");
    }

    #[test]
    fn target_templates_name_rooms_and_users_from_the_event() {
        let data = br#"{"project_id":101,"watchers":["u-1","u-2",{"x":1}],"empty":[]}"#;
        let source = src(data, METADATA);
        let rendered = Targets::new(&source);
        let targets = |t: &str| rendered.render(&[TargetTemplate::parse(t).unwrap()]);
        assert_eq!(targets("project:{data.project_id}"), ["project:101"]);
        assert_eq!(targets("{metadata.user_id}"), ["u-9"]);
        // A lone placeholder holding an array: one target per scalar element.
        assert_eq!(targets("{data.watchers}"), ["u-1", "u-2"]);
        assert!(targets("{data.empty}").is_empty());
        // Inside a longer template an array has no text: no target.
        assert!(targets("w:{data.watchers}").is_empty());
        assert!(targets("project:{data.missing}").is_empty());
        assert_eq!(targets("{category}-{type}"), ["order-order.submitted"]);
        assert!(TargetTemplate::parse("project:{nope}").is_err());
    }
}
