//! An incremental Server-Sent Events parser (the WHATWG `text/event-stream` format): bytes
//! in, whatever their chunking, events out.
//!
//! Handles `id:`, `event:`, `data:` (several lines join with `\n`), `retry:`, comments (the
//! server's heartbeats), dispatch on a blank line, and LF, CRLF and CR line ends, including a
//! CRLF split between two chunks. Public so that every reader of the stream (the client, the
//! CLI's `tail`, the bench) parses it one way.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The last event id of the stream (it carries over to events that set none).
    pub id: Option<String>,
    /// The `event:` field, if any.
    pub event: Option<String>,
    pub data: Vec<u8>,
}

impl SseEvent {
    /// The event's type: its `event:` field, `message` when it has none.
    pub fn event_type(&self) -> &str {
        self.event.as_deref().unwrap_or("message")
    }
}

#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    /// The previous chunk ended in `\r`: a `\n` starting the next one ends no line.
    after_cr: bool,
    event: Option<String>,
    data: Vec<u8>,
    has_data: bool,
    last_id: Option<String>,
    retry_ms: Option<u64>,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// The last event id seen (what a reconnect sends as `Last-Event-ID`).
    pub fn last_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    /// The reconnection delay the server asked for with `retry:`.
    pub fn retry_ms(&self) -> Option<u64> {
        self.retry_ms
    }

    /// Feeds bytes; calls `on_event` for every event they complete.
    pub fn feed(&mut self, bytes: &[u8], mut on_event: impl FnMut(SseEvent)) {
        let mut rest = bytes;
        if std::mem::take(&mut self.after_cr) {
            rest = rest.strip_prefix(b"\n").unwrap_or(rest);
        }
        while let Some(end) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            let line = if self.line.is_empty() {
                self.process_line(&rest[..end])
            } else {
                self.line.extend_from_slice(&rest[..end]);
                let line = std::mem::take(&mut self.line);
                self.process_line(&line)
            };
            if let Some(event) = line {
                on_event(event);
            }
            let was_cr = rest[end] == b'\r';
            rest = &rest[end + 1..];
            if was_cr {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        self.line.extend_from_slice(rest);
    }

    fn process_line(&mut self, line: &[u8]) -> Option<SseEvent> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line[0] == b':' {
            return None; // a comment: the heartbeat
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"event" => self.event = Some(String::from_utf8_lossy(value).into_owned()),
            b"id" if !value.contains(&0) => self.last_id = Some(String::from_utf8_lossy(value).into_owned()),
            b"retry" => {
                if let Some(ms) = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()) {
                    self.retry_ms = Some(ms);
                }
            }
            _ => {} // unknown fields
        }
        None
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = self.event.take();
        if !std::mem::take(&mut self.has_data) {
            self.data.clear();
            return None;
        }
        Some(SseEvent {
            id: self.last_id.clone(),
            event: event.filter(|e| !e.is_empty()),
            data: std::mem::take(&mut self.data),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: Option<&str>, event: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            id: id.map(str::to_owned),
            event: event.map(str::to_owned),
            data: data.as_bytes().to_vec(),
        }
    }

    fn parse_in_chunks(input: &[u8], chunk: usize) -> Vec<SseEvent> {
        let mut parser = SseParser::default();
        let mut out = Vec::new();
        for piece in input.chunks(chunk) {
            parser.feed(piece, |e| out.push(e));
        }
        out
    }

    #[test]
    fn the_servers_frames_become_events() {
        let input = b"id: 7\nevent: order.submitted\ndata: {\"a\":1}\n\n: heartbeat\n\n";
        assert_eq!(parse_in_chunks(input, 1024), vec![ev(Some("7"), Some("order.submitted"), "{\"a\":1}")]);
    }

    #[test]
    fn every_chunking_and_line_end_gives_the_same_events() {
        let input = b": hi\r\n\r\nid: 1\r\nevent: a\r\ndata: x\r\n\r\nid:2\rdata:y\r\rdata: z\n\ndata:  two spaces\n\n";
        let whole = parse_in_chunks(input, input.len());
        assert_eq!(
            whole,
            vec![
                ev(Some("1"), Some("a"), "x"),
                ev(Some("2"), None, "y"),
                ev(Some("2"), None, "z"),
                ev(Some("2"), None, " two spaces"),
            ]
        );
        for size in 1..input.len() {
            assert_eq!(parse_in_chunks(input, size), whole, "chunks of {size}");
        }
    }

    fn feed_collect(parser: &mut SseParser, bytes: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        parser.feed(bytes, |e| out.push(e));
        out
    }

    #[test]
    fn comments_and_empty_events_dispatch_nothing_but_ids_stick() {
        let mut p = SseParser::new();
        assert!(feed_collect(&mut p, b": heartbeat\n\n").is_empty());
        assert!(feed_collect(&mut p, b"id: 41\n\n").is_empty());
        assert_eq!(p.last_id(), Some("41"));
        assert_eq!(feed_collect(&mut p, b"event: t\ndata: d\n\n"), vec![ev(Some("41"), Some("t"), "d")]);
    }

    #[test]
    fn retry_and_unknown_fields() {
        let mut p = SseParser::new();
        assert!(feed_collect(&mut p, b"retry: 2500\nfoo: bar\nretry: soon\n\n").is_empty());
        assert_eq!(p.retry_ms(), Some(2500));
    }

    #[test]
    fn an_unfinished_event_waits_for_its_blank_line() {
        let mut p = SseParser::new();
        assert!(feed_collect(&mut p, b"id: 1\ndata: {}\n").is_empty());
        let events = feed_collect(&mut p, b"\n");
        assert_eq!(events, vec![ev(Some("1"), None, "{}")]);
        assert_eq!(events[0].event_type(), "message");
    }

    #[test]
    fn data_lines_join_with_newlines_and_ids_stick() {
        assert_eq!(parse_in_chunks(b"data: a\ndata:b\ndata\n\n", 3), vec![ev(None, None, "a\nb\n")]);
        let mut parser = SseParser::default();
        let mut out = Vec::new();
        parser.feed(b"id: 41\n\nretry: 10\nunknown: x\n\nid: bad\0id\n", |e| out.push(e));
        assert!(out.is_empty());
        parser.feed(b"data: d\n", |e| out.push(e));
        assert!(out.is_empty(), "no event before its blank line");
        parser.feed(b"\n", |e| out.push(e));
        assert_eq!(out, vec![ev(Some("41"), None, "d")]);
    }
}
