//! Authentication and authorisation of the API: the admin key, API keys and JWTs, the
//! scope table, restrictions by stream name, and the one layer (`authorize`) that applies
//! them to every route before any handler runs.
//!
//! Auth is off (open, single-user dev mode) until an admin key or a JWT key is configured
//! or `auth.required` is set; then every `/v1` route needs a credential. The order of
//! refusals is fixed: `401` (no, bad, expired or revoked credential), then `403` (scope or
//! restriction, decided from the route and the names in its path), then whatever the
//! handler finds (`404` and the rest). A caller over its rate gets `429` once its
//! credential is known.

pub(crate) mod access;
pub(crate) mod audit;
pub(crate) mod jwt;
pub(crate) mod keys;
pub(crate) mod principal;
pub(crate) mod tenancy;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Path, Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bifrost_api::{RestrictBody, ScopeBody};
use bifrost_core::{DurableStore, Timestamp};
use ring::digest::{SHA256, digest};
use serde_json::Value;
use subtle::ConstantTimeEq;

use self::access::Access;
use self::jwt::{AuthError, Claims, JwtVerifier};
pub use self::jwt::{JwtConfig, JwtKey};
use self::keys::{KEY_PREFIX, KeyStore, check_tenant};
pub(crate) use self::principal::{Actor, ActorKind, Principal, Restrict, Scope, Scopes};
use crate::error::{ApiError, ProblemType};
use crate::limits::Limits;

/// Shortest admin key.
pub const MIN_ADMIN_KEY_CHARS: usize = 32;

/// `[auth]`: who may call the API.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthConfig {
    /// `auth.admin_key` (`--admin-key`): a credential with every scope of the default
    /// tenant; at least 32 characters.
    pub admin_key: Option<String>,
    /// `auth.required`: credentials are needed even with no admin key and no JWT key (API
    /// keys only).
    pub required: bool,
    /// `auth.protect_metrics`: `/metrics` needs `admin`.
    pub protect_metrics: bool,
    /// `[auth.jwt]`.
    pub jwt: JwtConfig,
}

impl AuthConfig {
    /// Whether routes need a credential.
    pub fn is_on(&self) -> bool {
        self.required || self.admin_key.is_some() || self.jwt.key != JwtKey::None
    }

    /// Checks what can be checked before serving: the admin key's length and the JWT key.
    /// `Err` names the setting and says what is wrong.
    pub fn check(&self) -> Result<(), String> {
        if let Some(key) = &self.admin_key
            && key.chars().count() < MIN_ADMIN_KEY_CHARS
        {
            return Err(format!("auth.admin_key must be at least {MIN_ADMIN_KEY_CHARS} characters"));
        }
        JwtVerifier::new(&self.jwt).map(|_| ())
    }
}

/// A checked credential.
pub(crate) struct Authenticated {
    pub(crate) principal: Arc<Principal>,
    /// A JWT's claims (the WebSocket reads `channels` and `info` from them).
    pub(crate) claims: Option<Claims>,
}

/// The credentials of one server.
pub(crate) struct Auth {
    on: bool,
    protect_metrics: bool,
    admin_key: Option<[u8; 32]>,
    /// The admin key's principal, made once.
    admin: Arc<Principal>,
    jwt: Result<Option<JwtVerifier>, String>,
    pub(crate) keys: KeyStore,
    /// Everyone's principal while auth is off.
    open: Arc<Principal>,
}

fn sha256(text: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, text.as_bytes()).as_ref());
    out
}

impl Auth {
    pub(crate) fn new(config: &AuthConfig, store: Arc<dyn DurableStore>) -> Self {
        let jwt = JwtVerifier::new(&config.jwt);
        if let Err(e) = &jwt {
            tracing::error!(error = %e, "the JWT key is unusable: tokens are refused");
        }
        Self {
            on: config.is_on(),
            protect_metrics: config.protect_metrics,
            admin_key: config.admin_key.as_deref().map(sha256),
            admin: Arc::new(Principal {
                tenant: None,
                scopes: Scopes::ALL,
                restrict: Restrict::default(),
                actor: Actor { kind: ActorKind::AdminKey, id: None, sub: None },
            }),
            jwt,
            keys: KeyStore::new(store),
            open: Arc::new(Principal::open()),
        }
    }

    pub(crate) fn is_on(&self) -> bool {
        self.on
    }

    /// Checks a bearer credential: an API key (`bfk_…`), the admin key, or a JWT (which must
    /// carry `exp`, except a WebSocket connection's token: `require_exp` false).
    pub(crate) async fn authenticate(
        &self,
        token: &str,
        require_exp: bool,
    ) -> Result<Authenticated, AuthError> {
        if token.starts_with(KEY_PREFIX) {
            let principal = self.keys.verify(token, Timestamp::now()).await?;
            return Ok(Authenticated { principal, claims: None });
        }
        if let Some(admin) = &self.admin_key
            && bool::from(sha256(token).ct_eq(admin))
        {
            return Ok(Authenticated { principal: Arc::clone(&self.admin), claims: None });
        }
        let verifier = match &self.jwt {
            Ok(Some(verifier)) => verifier,
            Ok(None) => return Err(AuthError::new("unknown credential")),
            Err(e) => return Err(AuthError(format!("tokens cannot be checked: {e}"))),
        };
        let claims = verifier.verify_at(token, jwt::unix_now(), require_exp)?;
        let sub = match claims.map.get("sub") {
            None | Some(Value::Null) => None,
            Some(Value::String(sub)) if !sub.is_empty() => Some(sub.clone()),
            Some(_) => return Err(AuthError::new("sub must be a non-empty string")),
        };
        let scopes = match claims.map.get("scope") {
            None | Some(Value::Null) => Scopes::default(),
            Some(Value::String(scope)) => Scopes::parse_claim(scope),
            Some(_) => return Err(AuthError::new("scope must be a space-separated string")),
        };
        let tenant = match claims.map.get("tenant") {
            None | Some(Value::Null) => None,
            Some(Value::String(tenant)) => {
                check_tenant(tenant).map_err(AuthError)?;
                Some(tenant.clone())
            }
            Some(_) => return Err(AuthError::new("tenant must be a string")),
        };
        let restrict = match claims.map.get("restrict") {
            None | Some(Value::Null) => Restrict::default(),
            Some(value) => {
                let body: RestrictBody = serde_json::from_value(value.clone())
                    .map_err(|e| AuthError(format!("restrict is malformed: {e}")))?;
                Restrict::from(&body)
            }
        };
        let actor = Actor { kind: ActorKind::Jwt, id: None, sub };
        let principal = Arc::new(Principal { tenant, scopes, restrict, actor });
        Ok(Authenticated { principal, claims: Some(claims) })
    }
}

/// `401 bifrost:unauthorized` with `WWW-Authenticate: Bearer`.
pub(crate) fn unauthorized(reason: &str) -> Response {
    let mut response =
        ApiError::new(ProblemType::Unauthorized, format!("the credential was refused: {reason}"))
            .into_response();
    response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

pub(crate) fn forbidden(detail: impl Into<String>) -> ApiError {
    ApiError::new(ProblemType::Forbidden, detail)
}

/// The token of an `Authorization: Bearer` header.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
}

/// `?access_token=` of the query string.
pub(crate) fn query_token(parts: &Parts) -> Option<String> {
    let axum::extract::Query(pairs) =
        axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&parts.uri).ok()?;
    pairs.into_iter().find(|(k, _)| k == "access_token").map(|(_, v)| v)
}

/// The client's address, when the server was started with connection info.
pub(crate) fn client_ip(parts: &Parts) -> Option<IpAddr> {
    parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip())
}

/// What the `authorize` layer needs.
#[derive(Clone)]
pub(crate) struct Guard {
    pub(crate) auth: Arc<Auth>,
    pub(crate) limits: Arc<Limits>,
}

/// The layer: checks the credential of every request against the route's access, then
/// hands the handler its [`Principal`] (in the request's extensions; see [`Caller`]).
pub(crate) async fn authorize(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    let Guard { auth, limits } = guard;
    let (mut parts, body) = request.into_parts();
    let ip = client_ip(&parts);
    let template = parts.extensions.get::<MatchedPath>().cloned();
    let template = template.as_ref().map(MatchedPath::as_str);
    let access = || match template {
        Some(template) => access::required(&parts.method, template).unwrap_or(Access::Scope(Scope::Admin)),
        // No route: outside /v1 a plain 404; inside, a credential first (no probing).
        None if !parts.uri.path().starts_with("/v1") => Access::Open,
        None => Access::Scope(Scope::Read),
    };
    if !auth.on {
        // Open: every caller is everything; only a request limit needs the route's access.
        let principal = Arc::clone(&auth.open);
        if limits.limits_requests()
            && !matches!(access(), Access::Open | Access::Metrics)
            && let Err(limited) = limits.request(&principal, ip)
        {
            return limited.into_response();
        }
        parts.extensions.insert(principal);
        return next.run(Request::from_parts(parts, body)).await;
    }
    let access = access();
    let scope = match access {
        Access::Open | Access::WebSocket => return next.run(Request::from_parts(parts, body)).await,
        Access::Metrics if !auth.protect_metrics => return next.run(Request::from_parts(parts, body)).await,
        Access::Metrics => Scope::Admin,
        Access::Scope(scope) => scope,
    };
    let token = bearer(&parts.headers)
        .or_else(|| (template == Some("/v1/subscribe")).then(|| query_token(&parts)).flatten());
    let Some(token) = token else {
        return unauthorized("this route needs Authorization: Bearer <API key or JWT>");
    };
    let principal = match auth.authenticate(&token, true).await {
        Ok(authenticated) => authenticated.principal,
        Err(e) => return unauthorized(&e.0),
    };
    if let Err(limited) = limits.request(&principal, ip) {
        return limited.into_response();
    }
    if template.is_some() && !principal.scopes.allows(scope) {
        return forbidden(format!("this route needs the {} scope", scope.as_str())).into_response();
    }
    if principal.tenant.is_some() && template.is_some_and(|t| t.starts_with("/v1/realtime/bridges")) {
        return forbidden(crate::realtime::TENANTS_REFUSED).into_response();
    }
    // The names in the path matter only to a restricted credential, or for a `$` stream.
    let path = parts.uri.path();
    let named = principal.restrict != Restrict::default() || path.contains('$') || path.contains("%24");
    if named
        && let Some(template) = template
        && access::restricted_stream(template)
        && let Ok(Path(params)) = Path::<Vec<(String, String)>>::from_request_parts(&mut parts, &()).await
        && let Some((_, stream)) = params.iter().find(|(k, _)| k == "stream")
    {
        let allowed = match scope {
            ScopeBody::Append => principal.may_append(stream),
            ScopeBody::Read => principal.may_read(stream),
            _ => true,
        };
        if !allowed {
            return forbidden(format!("this credential may not {} stream {stream}", scope.as_str()))
                .into_response();
        }
    }
    parts.extensions.insert(principal);
    next.run(Request::from_parts(parts, body)).await
}

/// The caller of a `/v1` route, as the `authorize` layer checked it.
pub(crate) struct Caller(pub(crate) Arc<Principal>);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Arc<Principal>>()
            .cloned()
            .map(Self)
            .ok_or_else(|| ApiError::internal("this route was reached without its credential check"))
    }
}

/// The client's address, when the server knows it.
pub(crate) struct ClientIp(pub(crate) Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(client_ip(parts)))
    }
}
