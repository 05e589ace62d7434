//! Who is calling and what they may do: scopes, the tenant and the restrictions by stream
//! name of one request's credential.

use bifrost_api::{NameRuleBody, RestrictBody, ScopeBody};
use bifrost_core::NewEvent;
use serde::Serialize;

use crate::error::{ApiError, ProblemType};

/// One scope of the scope table.
pub(crate) type Scope = ScopeBody;

/// A set of scopes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Scopes(u8);

impl Scopes {
    pub(crate) const ALL: Scopes = Scopes(0b1_1111);

    fn bit(scope: Scope) -> u8 {
        match scope {
            Scope::Read => 1,
            Scope::Append => 2,
            Scope::Subscribe => 4,
            Scope::Groups => 8,
            Scope::Admin => 16,
        }
    }

    pub(crate) fn of(scopes: impl IntoIterator<Item = Scope>) -> Self {
        Self(scopes.into_iter().fold(0, |bits, s| bits | Self::bit(s)))
    }

    /// `admin` passes every scope.
    pub(crate) fn allows(self, scope: Scope) -> bool {
        self.0 & (Self::bit(scope) | Self::bit(Scope::Admin)) != 0
    }

    pub(crate) fn is_admin(self) -> bool {
        self.0 & Self::bit(Scope::Admin) != 0
    }

    /// Parses a JWT `scope` claim (space-separated); unknown words are ignored, as OAuth
    /// scopes of other services may share the claim.
    pub(crate) fn parse_claim(claim: &str) -> Self {
        Self::of(claim.split_whitespace().filter_map(|word| match word {
            "read" => Some(Scope::Read),
            "append" => Some(Scope::Append),
            "subscribe" => Some(Scope::Subscribe),
            "groups" => Some(Scope::Groups),
            "admin" => Some(Scope::Admin),
            _ => None,
        }))
    }
}

/// Streams a rule lets through: a name starting with one of `prefixes`, or of one of
/// `categories` (the name before its first `-`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct NameRule {
    prefixes: Vec<String>,
    categories: Vec<String>,
}

impl NameRule {
    pub(crate) fn allows(&self, stream: &str) -> bool {
        let category = stream.split_once('-').map_or(stream, |(c, _)| c);
        self.prefixes.iter().any(|p| stream.starts_with(p.as_str()))
            || self.categories.iter().any(|c| c == category)
    }
}

impl NameRule {
    /// WebSocket channel grants of the streams this rule lets through.
    pub(crate) fn channel_grants(&self) -> impl Iterator<Item = String> + '_ {
        let prefixes = self.prefixes.iter().map(|p| format!("stream:{p}*"));
        let categories =
            self.categories.iter().flat_map(|c| [format!("stream:{c}"), format!("stream:{c}-*")]);
        prefixes.chain(categories)
    }
}

impl From<&NameRuleBody> for NameRule {
    fn from(body: &NameRuleBody) -> Self {
        Self { prefixes: body.prefixes.clone(), categories: body.categories.clone() }
    }
}

/// A credential's restrictions; `None` restricts nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Restrict {
    pub(crate) append: Option<NameRule>,
    pub(crate) read: Option<NameRule>,
}

impl From<&RestrictBody> for Restrict {
    fn from(body: &RestrictBody) -> Self {
        Self {
            append: body.append.as_ref().map(NameRule::from),
            read: body.read.as_ref().map(NameRule::from),
        }
    }
}

/// How the caller proved who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ActorKind {
    /// Auth is off: everyone is everything.
    Open,
    /// `auth.admin_key`.
    AdminKey,
    /// An API key (`bfk_…`).
    Key,
    /// A JWT.
    Jwt,
}

/// The caller as the audit log names it: `{"kind", "id", "sub"}` (and the request's
/// address, which is the request's, not the credential's).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Actor {
    pub(crate) kind: ActorKind,
    /// The API key's id.
    pub(crate) id: Option<String>,
    /// The JWT's `sub`.
    pub(crate) sub: Option<String>,
}

/// The credential of one request, after the `authorize` layer checked it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Principal {
    /// `None`: the default tenant.
    pub(crate) tenant: Option<String>,
    pub(crate) scopes: Scopes,
    pub(crate) restrict: Restrict,
    pub(crate) actor: Actor,
}

impl Principal {
    /// Auth off: every scope, the default tenant, no restriction.
    pub(crate) fn open() -> Self {
        Self {
            tenant: None,
            scopes: Scopes::ALL,
            restrict: Restrict::default(),
            actor: Actor { kind: ActorKind::Open, id: None, sub: None },
        }
    }

    /// May this caller read `stream` directly (and see it in lists, the log, SSE)?
    pub(crate) fn may_read(&self, stream: &str) -> bool {
        if stream.starts_with('$') && !self.scopes.is_admin() {
            return false;
        }
        self.restrict.read.as_ref().is_none_or(|rule| rule.allows(stream))
    }

    /// Whether some streams are hidden from this caller (other tenants', those outside a
    /// read restriction, `$` streams without `admin`): lists, the log and live feeds must
    /// then be filtered ([`Principal::sees`]). Auth off: nothing is hidden.
    pub(crate) fn filters_reads(&self) -> bool {
        self.actor.kind != ActorKind::Open
    }

    /// Stamps appended events with who appends them, once auth is on: `metadata.tenant_id`
    /// is the credential's tenant (a different one in the request: 403), and a JWT's `sub`
    /// is `metadata.user_id` unless the event names one. Auth off: kept as sent.
    pub(crate) fn stamp(&self, events: &mut [NewEvent]) -> Result<(), ApiError> {
        if self.actor.kind == ActorKind::Open {
            return Ok(());
        }
        for event in events {
            let metadata = &mut event.metadata;
            if metadata.tenant_id.is_some() && metadata.tenant_id != self.tenant {
                return Err(ApiError::new(
                    ProblemType::Forbidden,
                    "metadata.tenant_id names another tenant than the credential's",
                ));
            }
            metadata.tenant_id.clone_from(&self.tenant);
            if metadata.user_id.is_none() {
                metadata.user_id.clone_from(&self.actor.sub);
            }
        }
        Ok(())
    }

    /// May this caller append to `stream`?
    pub(crate) fn may_append(&self, stream: &str) -> bool {
        self.restrict.append.as_ref().is_none_or(|rule| rule.allows(stream))
    }
}
