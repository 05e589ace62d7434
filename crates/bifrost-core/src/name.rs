//! Validated names: streams, categories and event types.

use std::collections::HashMap;
use std::fmt;
use std::ops::Deref;
use std::str::FromStr;
use std::sync::Arc;

use crate::error::Error;

/// Longest stream name or event type, in characters (all allowed characters are ASCII).
pub const MAX_NAME_LEN: usize = 256;

/// A stream name: 1–256 characters of `A–Z a–z 0–9 _ . : @ -`.
///
/// Cheap to clone (shared), because every event read back carries one.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamName(Arc<str>);

impl StreamName {
    /// A name as clients give it. Tenant prefixes and `$` system names are the server's
    /// to make ([`StreamName::in_tenant`], [`StreamName::system`]), never a client's.
    pub fn new(name: &str) -> Result<Self, Error> {
        validate_stream(name)?;
        Ok(Self(name.into()))
    }

    /// A name as the store keeps it: a client's name or a `$` system name, optionally
    /// behind a tenant prefix (`acme/order-1`). For names read back from storage.
    pub fn stored(name: &str) -> Result<Self, Error> {
        let local = match name.split_once(TENANT_SEPARATOR) {
            Some((tenant, local)) => {
                validate_tenant(tenant).map_err(|reason| Error::InvalidStreamName {
                    name: name.chars().take(MAX_STORED_NAME_LEN + 8).collect(),
                    reason,
                })?;
                local
            }
            None => name,
        };
        validate_stream(local.strip_prefix(SYSTEM_PREFIX).unwrap_or(local))?;
        Ok(Self(name.into()))
    }

    /// A server-written `$` stream (`$bifrost-audit`): `name` without its `$`.
    pub fn system(name: &str) -> Result<Self, Error> {
        validate_stream(name)?;
        Ok(Self(format!("{SYSTEM_PREFIX}{name}").into()))
    }

    /// `local` as tenant `tenant` names it in the store (`None`: the default tenant, whose
    /// names carry no prefix). `tenant` must be a valid tenant id ([`validate_tenant`]).
    pub fn in_tenant(tenant: Option<&str>, local: &StreamName) -> StreamName {
        match tenant {
            None => local.clone(),
            Some(tenant) => Self(format!("{tenant}{TENANT_SEPARATOR}{local}").into()),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The tenant whose name this is (`None`: the default tenant).
    pub fn tenant(&self) -> Option<&str> {
        self.0.split_once(TENANT_SEPARATOR).map(|(tenant, _)| tenant)
    }

    /// The name as its tenant sees it (without the tenant prefix).
    pub fn local(&self) -> &str {
        self.0.split_once(TENANT_SEPARATOR).map_or(&self.0, |(_, local)| local)
    }

    /// A `$` stream: written by the server only.
    pub fn is_system(&self) -> bool {
        self.local().starts_with(SYSTEM_PREFIX)
    }

    /// The part before the first `-` (the whole name when there is none), behind the
    /// tenant prefix when there is one: categories are per tenant too.
    pub fn category(&self) -> &str {
        let prefix = self.0.len() - self.local().len();
        &self.0[..prefix + self.local_category().len()]
    }

    /// The category as the name's tenant sees it (no tenant prefix): the default
    /// `aggregate_type`.
    pub fn local_category(&self) -> &str {
        let local = self.local();
        local.split_once('-').map_or(local, |(c, _)| c)
    }
}

/// Between a tenant and a stream name in the store (`acme/order-1`); not a name character.
pub const TENANT_SEPARATOR: char = '/';
/// The first character of server-written stream names; not a name character either.
pub const SYSTEM_PREFIX: char = '$';
const MAX_STORED_NAME_LEN: usize = MAX_TENANT_LEN + 2 + MAX_NAME_LEN;
/// Longest tenant id, in characters.
pub const MAX_TENANT_LEN: usize = 64;

/// A tenant id: 1–64 characters of `a–z 0–9 _ -`. The error says why not.
pub fn validate_tenant(tenant: &str) -> Result<(), String> {
    if tenant.is_empty() || tenant.len() > MAX_TENANT_LEN {
        return Err(format!("a tenant is 1-{MAX_TENANT_LEN} characters, got {}", tenant.len()));
    }
    if let Some(c) =
        tenant.chars().find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-'))
    {
        return Err(format!("{c:?} is not allowed in a tenant; use a-z 0-9 _ -"));
    }
    Ok(())
}

fn validate_stream(name: &str) -> Result<(), Error> {
    let invalid = |why: &str| Error::InvalidStreamName {
        name: name.chars().take(MAX_NAME_LEN + 8).collect(),
        reason: why.to_owned(),
    };
    if name.is_empty() {
        return Err(invalid("a stream name must not be empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid("a stream name is at most 256 characters"));
    }
    if let Some(c) = name.chars().find(|&c| !is_stream_char(c)) {
        return Err(invalid(&format!("{c:?} is not allowed; use A-Z a-z 0-9 _ . : @ -")));
    }
    Ok(())
}

fn is_stream_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '@' | '-')
}

impl FromStr for StreamName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::new(s)
    }
}

impl Deref for StreamName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl serde::Serialize for StreamName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// A category: what a stream name holds before its first `-`. Same alphabet as streams,
/// without the `-`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Category(String);

impl Category {
    /// A category as clients give it; a leading `$` names the category of `$` streams
    /// (`$bifrost`).
    pub fn new(name: &str) -> Result<Self, Error> {
        validate_stream(name.strip_prefix(SYSTEM_PREFIX).unwrap_or(name)).map_err(|_| {
            Error::InvalidArgument(format!(
                "invalid category {name:?}: use 1-256 characters of A-Z a-z 0-9 _ . : @"
            ))
        })?;
        if name.contains('-') {
            return Err(Error::InvalidArgument(format!(
                "invalid category {name:?}: a category is the part of a stream name before its first '-', so it cannot contain one"
            )));
        }
        Ok(Self(name.to_owned()))
    }

    /// `category` as tenant `tenant` names it in the store (see [`StreamName::in_tenant`]).
    pub fn in_tenant(tenant: Option<&str>, category: &Category) -> Category {
        match tenant {
            None => category.clone(),
            Some(tenant) => Self(format!("{tenant}{TENANT_SEPARATOR}{}", category.0)),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The category of `$` streams.
    pub fn is_system(&self) -> bool {
        let local = self.0.split_once(TENANT_SEPARATOR).map_or(self.0.as_str(), |(_, local)| local);
        local.starts_with(SYSTEM_PREFIX)
    }
}

/// A dotted event type such as `order.submitted`: 1–256 characters, segments of
/// `A–Z a–z 0–9 _ -`, no empty segment.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventType(Arc<str>);

impl EventType {
    pub fn new(name: &str) -> Result<Self, Error> {
        validate_type(name)?;
        Ok(Self(name.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn validate_type(name: &str) -> Result<(), Error> {
    let invalid = |why: String| Error::InvalidEventType {
        name: name.chars().take(MAX_NAME_LEN + 8).collect(),
        reason: why,
    };
    if name.is_empty() {
        return Err(invalid("an event type must not be empty".into()));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid("an event type is at most 256 characters".into()));
    }
    for segment in name.split('.') {
        if segment.is_empty() {
            return Err(invalid("segments are separated by single dots and none may be empty".into()));
        }
        if let Some(c) = segment.chars().find(|&c| !is_type_char(c)) {
            return Err(invalid(format!(
                "{c:?} is not allowed; use dot-separated segments of A-Z a-z 0-9 _ -"
            )));
        }
    }
    Ok(())
}

pub(crate) fn is_type_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-')
}

impl FromStr for EventType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::new(s)
    }
}

impl Deref for EventType {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl serde::Serialize for EventType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Shares one allocation per distinct stream name and event type across the rows of a
/// read, instead of validating and allocating both for every row. Bounded, so a read over
/// many distinct names cannot grow it without limit.
#[derive(Default)]
pub struct NameCache {
    streams: HashMap<Box<str>, StreamName>,
    types: HashMap<Box<str>, EventType>,
}

impl NameCache {
    const MAX: usize = 4096;

    pub fn stream(&mut self, name: &str) -> Result<StreamName, Error> {
        if let Some(s) = self.streams.get(name) {
            return Ok(s.clone());
        }
        let s = StreamName::stored(name)?;
        if self.streams.len() < Self::MAX {
            self.streams.insert(name.into(), s.clone());
        }
        Ok(s)
    }

    pub fn event_type(&mut self, name: &str) -> Result<EventType, Error> {
        if let Some(t) = self.types.get(name) {
            return Ok(t.clone());
        }
        let t = EventType::new(name)?;
        if self.types.len() < Self::MAX {
            self.types.insert(name.into(), t.clone());
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_follow_the_contract() {
        for ok in ["order-123", "a", "A_b.c:d@e-f", &"x".repeat(256)] {
            assert!(StreamName::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "has space", "slash/", "ünicode", "nul\0", &"x".repeat(257), "$all"] {
            assert!(matches!(StreamName::new(bad), Err(Error::InvalidStreamName { .. })), "{bad:?}");
        }
    }

    #[test]
    fn category_is_the_text_before_the_first_dash() {
        assert_eq!(StreamName::new("order-12-3").unwrap().category(), "order");
        assert_eq!(StreamName::new("order").unwrap().category(), "order");
        assert_eq!(StreamName::new("-x").unwrap().category(), "");
    }

    #[test]
    fn tenant_and_system_names_are_the_servers_to_make() {
        let local = StreamName::new("order-1").unwrap();
        let name = StreamName::in_tenant(Some("a-b"), &local);
        assert_eq!(name.as_str(), "a-b/order-1");
        assert_eq!(name.tenant(), Some("a-b"));
        assert_eq!(name.local(), "order-1");
        assert_eq!(name.category(), "a-b/order");
        assert_eq!(name.local_category(), "order");
        assert_eq!(StreamName::in_tenant(None, &local), local);
        assert_eq!(local.tenant(), None);

        let audit = StreamName::system("bifrost-audit").unwrap();
        assert_eq!(audit.as_str(), "$bifrost-audit");
        assert!(audit.is_system() && !local.is_system());
        assert_eq!(StreamName::in_tenant(Some("t"), &audit).category(), "t/$bifrost");
        assert!(Category::in_tenant(Some("t"), &Category::new("$bifrost").unwrap()).is_system());

        for stored in ["a-b/order-1", "$bifrost-audit", "t/$bifrost-audit", "order-1"] {
            assert_eq!(StreamName::stored(stored).unwrap().as_str(), stored);
        }
        for bad in ["Upper/x", "/x", "t/", "t/a/b", "$$x", "t/$", "x$"] {
            assert!(StreamName::stored(bad).is_err(), "{bad:?}");
        }
        // Clients name neither.
        for bad in ["t/order-1", "$bifrost-audit"] {
            assert!(StreamName::new(bad).is_err(), "{bad:?}");
        }
        assert!(validate_tenant(&"x".repeat(65)).is_err());
        assert!(validate_tenant("acme_1-eu").is_ok());
    }

    #[test]
    fn event_types_follow_the_contract() {
        for ok in ["order.submitted", "a", "a-b.c_d.E9", &"x".repeat(256)] {
            assert!(EventType::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a..b", ".a", "a.", "a.*", "a.#", "a b", "é", &"x".repeat(257)] {
            assert!(matches!(EventType::new(bad), Err(Error::InvalidEventType { .. })), "{bad:?}");
        }
    }
}
