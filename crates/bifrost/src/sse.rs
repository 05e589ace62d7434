//! An incremental Server-Sent Events parser (the WHATWG event-stream format): bytes in,
//! events out, whatever the chunking of the bytes.
//!
//! Handles `id:`, `event:`, `data:` (several lines join with `\n`), `retry:`, comments,
//! dispatch on a blank line, and LF, CRLF and CR line ends — including a CRLF split between
//! two chunks.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseEvent {
    /// The last event id seen on the stream (it carries over events that set none).
    pub(crate) id: Option<String>,
    /// The `event:` field, `message` when absent.
    pub(crate) event: String,
    pub(crate) data: String,
}

#[derive(Debug, Default)]
pub(crate) struct SseParser {
    line: Vec<u8>,
    /// The previous chunk ended in `\r`: a `\n` at the start of the next one ends nothing.
    after_cr: bool,
    event: Option<String>,
    data: String,
    has_data: bool,
    last_id: Option<String>,
    retry_ms: Option<u64>,
}

impl SseParser {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// The last event id seen (what a reconnect sends as `Last-Event-ID`).
    pub(crate) fn last_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    /// The reconnection delay the server asked for with `retry:`.
    pub(crate) fn retry_ms(&self) -> Option<u64> {
        self.retry_ms
    }

    /// Feeds bytes; calls `on_event` for every event they complete.
    pub(crate) fn feed(&mut self, bytes: &[u8], mut on_event: impl FnMut(SseEvent)) {
        let mut rest = bytes;
        if self.after_cr {
            self.after_cr = false;
            if let Some(tail) = rest.strip_prefix(b"\n") {
                rest = tail;
            }
        }
        while let Some(end) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.line.extend_from_slice(&rest[..end]);
            let line = std::mem::take(&mut self.line);
            if let Some(event) = self.process_line(&line) {
                on_event(event);
            }
            let is_cr = rest[end] == b'\r';
            rest = &rest[end + 1..];
            if is_cr {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        self.line.extend_from_slice(rest);
    }

    #[cfg(test)]
    fn feed_collect(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        self.feed(bytes, |e| out.push(e));
        out
    }

    fn process_line(&mut self, line: &[u8]) -> Option<SseEvent> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line[0] == b':' {
            return None; // a comment (heartbeat)
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_ref(), ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_owned()),
            "id" if !value.contains('\0') => self.last_id = Some(value.to_owned()),
            "retry" => {
                if let Ok(ms) = value.parse() {
                    self.retry_ms = Some(ms);
                }
            }
            _ => {} // unknown fields are ignored
        }
        None
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = self.event.take();
        if !self.has_data {
            self.data.clear();
            return None;
        }
        self.has_data = false;
        Some(SseEvent {
            id: self.last_id.clone(),
            event: event.filter(|e| !e.is_empty()).unwrap_or_else(|| "message".to_owned()),
            data: std::mem::take(&mut self.data),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: Option<&str>, event: &str, data: &str) -> SseEvent {
        SseEvent { id: id.map(str::to_owned), event: event.to_owned(), data: data.to_owned() }
    }

    fn parse_in_chunks(input: &[u8], chunk: usize) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        input.chunks(chunk).flat_map(|c| p.feed_collect(c)).collect()
    }

    #[test]
    fn fields_make_an_event_on_a_blank_line() {
        let input = b"id: 7\nevent: order.submitted\ndata: {\"a\":1}\n\n";
        assert_eq!(parse_in_chunks(input, 1024), vec![ev(Some("7"), "order.submitted", "{\"a\":1}")]);
    }

    #[test]
    fn every_chunking_gives_the_same_events() {
        let input = b": hello\r\n\r\nid: 1\r\nevent: a\r\ndata: x\r\n\r\nid:2\rdata:y\r\rdata: z\n\n";
        let whole = parse_in_chunks(input, input.len());
        assert_eq!(
            whole,
            vec![ev(Some("1"), "a", "x"), ev(Some("2"), "message", "y"), ev(Some("2"), "message", "z")]
        );
        for size in 1..input.len() {
            assert_eq!(parse_in_chunks(input, size), whole, "chunks of {size}");
        }
    }

    #[test]
    fn data_lines_join_with_newlines() {
        let input = b"data: first\ndata:second\ndata\n\n";
        assert_eq!(parse_in_chunks(input, 3), vec![ev(None, "message", "first\nsecond\n")]);
    }

    #[test]
    fn comments_and_empty_events_dispatch_nothing_but_ids_stick() {
        let mut p = SseParser::new();
        assert!(p.feed_collect(b": heartbeat\n\n").is_empty());
        assert!(p.feed_collect(b"id: 41\n\n").is_empty());
        assert_eq!(p.last_id(), Some("41"));
        assert_eq!(p.feed_collect(b"event: t\ndata: d\n\n"), vec![ev(Some("41"), "t", "d")]);
    }

    #[test]
    fn retry_and_unknown_fields() {
        let mut p = SseParser::new();
        assert!(p.feed_collect(b"retry: 2500\nfoo: bar\nretry: soon\n\n").is_empty());
        assert_eq!(p.retry_ms(), Some(2500));
    }

    #[test]
    fn an_unfinished_event_waits_for_its_blank_line() {
        let mut p = SseParser::new();
        assert!(p.feed_collect(b"id: 1\ndata: {}\n").is_empty());
        assert_eq!(p.feed_collect(b"\n"), vec![ev(Some("1"), "message", "{}")]);
    }
}
