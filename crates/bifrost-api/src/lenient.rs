//! Request fields whose value is checked after the body's shape.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// A request field read in two steps: any JSON is accepted while the body is parsed, and
/// what is not a `T` is kept as it was sent. The server then answers a bad value as a bad
/// argument naming the field (`400 bifrost:invalid-argument`), not as a malformed body
/// (`400 bifrost:invalid-request`). Written, it is the `T` (or the JSON it was read from).
#[derive(Clone)]
pub enum Lenient<T> {
    Valid(T),
    /// Not a `T`: the JSON text as received.
    Invalid(Box<RawValue>),
}

impl<T> Lenient<T> {
    /// The value, or the JSON that is not one.
    pub fn into_result(self) -> Result<T, Box<RawValue>> {
        match self {
            Self::Valid(value) => Ok(value),
            Self::Invalid(raw) => Err(raw),
        }
    }
}

impl<T> From<T> for Lenient<T> {
    fn from(value: T) -> Self {
        Self::Valid(value)
    }
}

impl<T: fmt::Debug> fmt::Debug for Lenient<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Valid(value) => f.debug_tuple("Valid").field(value).finish(),
            Self::Invalid(raw) => f.debug_tuple("Invalid").field(&raw.get()).finish(),
        }
    }
}

impl<T: PartialEq> PartialEq for Lenient<T> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Valid(a), Self::Valid(b)) => a == b,
            (Self::Invalid(a), Self::Invalid(b)) => a.get() == b.get(),
            _ => false,
        }
    }
}

impl<T: Serialize> Serialize for Lenient<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Valid(value) => value.serialize(serializer),
            Self::Invalid(raw) => raw.serialize(serializer),
        }
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Lenient<T> {
    /// Needs serde_json's deserializer (it keeps the raw text).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        Ok(match serde_json::from_str(raw.get()) {
            Ok(value) => Self::Valid(value),
            Err(_) => Self::Invalid(raw),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Serialize)]
    struct Body {
        id: Option<Lenient<u32>>,
    }

    #[test]
    fn a_value_of_the_wrong_kind_is_kept_as_sent_and_written_back_as_it_came() {
        let body: Body = serde_json::from_str(r#"{"id": 7}"#).unwrap();
        assert_eq!(body.id, Some(Lenient::Valid(7)));
        let body: Body = serde_json::from_str(r#"{"id": "seven"}"#).unwrap();
        let Some(Lenient::Invalid(raw)) = &body.id else { panic!("{:?}", body.id) };
        assert_eq!(raw.get(), r#""seven""#);
        assert_eq!(serde_json::to_string(&body).ok().as_deref(), Some(r#"{"id":"seven"}"#));
        let body: Body = serde_json::from_str(r#"{"id": null}"#).unwrap();
        assert!(body.id.is_none(), "null is an absent value, not a bad one");
    }
}
