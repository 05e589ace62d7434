//! API keys: what `POST /v1/keys` takes and what the key routes show. The secret
//! (`bfk_…`) is shown once, in the answer to its creation; the server keeps only its hash.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What a credential may do. `admin` includes every other scope.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ScopeBody {
    /// `GET` streams, events, stream metadata, schemas.
    Read,
    /// `POST /v1/streams/{s}/events`, `POST /v1/append`.
    Append,
    /// `GET /v1/subscribe`, `GET /v1/ws`.
    Subscribe,
    /// Fetch, ack, nack; `GET` groups and dead letters.
    Groups,
    /// Everything, within the credential's tenant.
    Admin,
}

impl ScopeBody {
    /// The scope as it is written in a key's `scopes` and a JWT's `scope` claim.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Append => "append",
            Self::Subscribe => "subscribe",
            Self::Groups => "groups",
            Self::Admin => "admin",
        }
    }
}

/// Streams a credential may touch: a name passes when it starts with one of `prefixes` or
/// belongs to one of `categories` (the name before its first `-`).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NameRuleBody {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefixes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
}

/// Restrictions of a credential by stream name; an absent rule restricts nothing.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RestrictBody {
    /// Appends elsewhere are refused (403).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub append: Option<NameRuleBody>,
    /// Direct reads elsewhere are refused (403); lists, the log, SSE and WebSocket leave
    /// those streams out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<NameRuleBody>,
}

/// `POST /v1/keys`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct KeyRequest {
    /// 1–128 characters, for people: who or what uses the key.
    pub name: String,
    /// At least one.
    pub scopes: Vec<ScopeBody>,
    /// The key's tenant; only an admin of the default tenant may name one other than its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restrict: Option<RestrictBody>,
    /// RFC 3339; after it the key is refused (401).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// An API key as the server shows it (never with its secret, except at creation).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyBody {
    pub id: Uuid,
    pub name: String,
    pub scopes: Vec<ScopeBody>,
    /// Null: the default tenant.
    pub tenant: Option<String>,
    pub restrict: Option<RestrictBody>,
    pub expires_at: Option<String>,
    pub created_at: String,
    /// When a request last used it (updated at most once a minute); null: never.
    pub last_used_at: Option<String>,
    /// `bfk_…`: only in the answer to `POST /v1/keys`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// `GET /v1/keys`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyListBody {
    pub keys: Vec<KeyBody>,
}
