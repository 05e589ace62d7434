//! Channels a WebSocket connection subscribes to, by name.

use bifrost_core::{StreamName, TypePattern};

/// Longest user id in a `user:` channel.
const MAX_USER_ID: usize = 256;

/// A channel: `stream:{name}`, `type:{pattern}`, `room:{name}` or `user:{id}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Channel {
    /// The events of one stream.
    Stream(StreamName),
    /// Events whose type matches an AMQP topic pattern.
    Type(TypePattern),
    /// A room (stream-name alphabet, e.g. `project:101`): publishes and bridged events.
    Room(String),
    /// One user's connections: targeted publishes and bridged events.
    User(String),
}

/// Why a channel name is refused.
#[derive(Debug)]
pub(crate) struct InvalidChannel(pub(crate) String);

impl Channel {
    pub(crate) fn parse(name: &str) -> Result<Self, InvalidChannel> {
        let invalid = |why: String| InvalidChannel(format!("invalid channel {name:?}: {why}"));
        match name.split_once(':') {
            Some(("stream", stream)) => {
                StreamName::new(stream).map(Self::Stream).map_err(|e| invalid(e.to_string()))
            }
            Some(("type", pattern)) => {
                TypePattern::new(pattern).map(Self::Type).map_err(|e| invalid(e.to_string()))
            }
            Some(("room", room)) => check_room(room).map(|()| Self::Room(room.to_owned())).map_err(invalid),
            Some(("user", user)) => check_user(user).map(|()| Self::User(user.to_owned())).map_err(invalid),
            _ => Err(invalid("a channel is stream:{name}, type:{pattern}, room:{name} or user:{id}".into())),
        }
    }

    /// The room of a `room:` channel.
    pub(crate) fn room(&self) -> Option<&str> {
        match self {
            Self::Room(room) => Some(room),
            _ => None,
        }
    }
}

/// A room name uses the stream-name alphabet (`A–Z a–z 0–9 _ . : @ -`, 1–256 characters).
pub(crate) fn check_room(room: &str) -> Result<(), String> {
    StreamName::new(room).map(drop).map_err(|e| e.to_string().replace("stream name", "room name"))
}

/// A user id is 1–256 characters without control characters.
pub(crate) fn check_user(user: &str) -> Result<(), String> {
    if user.is_empty() || user.chars().count() > MAX_USER_ID || user.chars().any(char::is_control) {
        return Err(format!("a user id is 1–{MAX_USER_ID} characters without control characters"));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_parsed_by_kind() {
        assert_eq!(
            Channel::parse("stream:order-1").unwrap(),
            Channel::Stream(StreamName::new("order-1").unwrap())
        );
        assert!(matches!(Channel::parse("type:order.#").unwrap(), Channel::Type(_)));
        assert_eq!(Channel::parse("room:project:101").unwrap(), Channel::Room("project:101".into()));
        assert_eq!(Channel::parse("user:u 9").unwrap(), Channel::User("u 9".into()));
        for bad in
            ["order-1", "stream:", "stream:bad name", "type:a..b", "feed:x", "room:", "room:a b", "user:"]
        {
            assert!(Channel::parse(bad).is_err(), "{bad}");
        }
    }
}
