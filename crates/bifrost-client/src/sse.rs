//! An incremental Server-Sent Events parser (the WHATWG `text/event-stream` format): bytes
//! in, whatever their chunking, events out.
//!
//! Handles `id:`, `event:`, `data:` (several lines join with `\n`), comments (the server's
//! heartbeats), dispatch on a blank line, and LF, CRLF and CR line ends, including a CRLF
//! split between two chunks. `retry:` is ignored: the client has its own reconnect delays.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseEvent {
    /// The last event id of the stream (it carries over to events that set none).
    pub(crate) id: Option<String>,
    /// The `event:` field, if any.
    pub(crate) event: Option<String>,
    pub(crate) data: Vec<u8>,
}

#[derive(Debug, Default)]
pub(crate) struct SseParser {
    line: Vec<u8>,
    /// The previous chunk ended in `\r`: a `\n` starting the next one ends no line.
    after_cr: bool,
    event: Option<String>,
    data: Vec<u8>,
    has_data: bool,
    last_id: Option<String>,
}

impl SseParser {
    /// Feeds bytes; calls `on_event` for every event they complete.
    pub(crate) fn feed(&mut self, bytes: &[u8], mut on_event: impl FnMut(SseEvent)) {
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
            _ => {} // `retry` and unknown fields
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
