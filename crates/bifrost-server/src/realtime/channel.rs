//! Channels a WebSocket connection subscribes to, by name.

use bifrost_core::{Category, LogFilter, RecordedEvent, StreamName, TypePattern};

/// A channel of stored events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Channel {
    /// `stream:{name}`: the events of one stream.
    Stream(StreamName),
    /// `type:{pattern}`: events whose type matches an AMQP topic pattern.
    Type(TypePattern),
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
            Some(("room" | "user", _)) => Err(invalid(
                "room: and user: channels (rooms, presence, targeted publishes) are not served by this \
                 server yet; subscribe to stream: or type: channels"
                    .into(),
            )),
            _ => Err(invalid("a channel is stream:{name} or type:{pattern}".into())),
        }
    }

    /// The narrowest log filter that still sees every event of the channel.
    pub(crate) fn log_filter(&self) -> LogFilter {
        match self {
            Self::Stream(stream) => {
                LogFilter { category: Category::new(stream.category()).ok(), ..LogFilter::default() }
            }
            Self::Type(pattern) => LogFilter { types: vec![pattern.clone()], ..LogFilter::default() },
        }
    }

    /// Whether `event` belongs to the channel (beyond what the log filter already checked).
    pub(crate) fn matches(&self, event: &RecordedEvent) -> bool {
        match self {
            Self::Stream(stream) => event.stream == *stream,
            Self::Type(pattern) => pattern.matches(event.event_type.as_str()),
        }
    }
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
        for bad in ["order-1", "stream:", "stream:bad name", "type:a..b", "feed:x", "room:project:1"] {
            assert!(Channel::parse(bad).is_err(), "{bad}");
        }
    }
}
