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
    pub fn new(name: &str) -> Result<Self, Error> {
        validate_stream(name)?;
        Ok(Self(name.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part before the first `-` (the whole name when there is none).
    pub fn category(&self) -> &str {
        self.0.split_once('-').map_or(&self.0, |(c, _)| c)
    }
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
    pub fn new(name: &str) -> Result<Self, Error> {
        validate_stream(name).map_err(|_| {
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

    pub fn as_str(&self) -> &str {
        &self.0
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
        let s = StreamName::new(name)?;
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
    fn event_types_follow_the_contract() {
        for ok in ["order.submitted", "a", "a-b.c_d.E9", &"x".repeat(256)] {
            assert!(EventType::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a..b", ".a", "a.", "a.*", "a.#", "a b", "é", &"x".repeat(257)] {
            assert!(matches!(EventType::new(bad), Err(Error::InvalidEventType { .. })), "{bad:?}");
        }
    }
}
