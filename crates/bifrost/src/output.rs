//! JSON lines on stdout: one event per line, exactly the server's JSON (keys in its order,
//! `data` as stored) with only the whitespace between tokens removed.

use std::borrow::Cow;
use std::io::{self, Write};

use anyhow::Context;

/// Removes whitespace outside strings, so that pretty-printed JSON (say, an event whose
/// `data` was appended pretty-printed) fits on one line. Everything else is kept byte for
/// byte.
pub(crate) fn compact_json(json: &str) -> Cow<'_, str> {
    if !json.contains(['\n', '\r']) {
        return Cow::Borrowed(json.trim());
    }
    let mut out = String::with_capacity(json.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in json.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Writes JSON lines to stdout.
pub(crate) struct JsonLines {
    out: io::BufWriter<io::Stdout>,
}

impl JsonLines {
    pub(crate) fn stdout() -> Self {
        Self { out: io::BufWriter::new(io::stdout()) }
    }

    pub(crate) fn line(&mut self, json: &str) -> io::Result<()> {
        self.out.write_all(compact_json(json).as_bytes())?;
        self.out.write_all(b"\n")
    }

    /// A JSON answer of the server on one line; an empty answer prints nothing.
    pub(crate) fn answer(&mut self, body: &[u8]) -> anyhow::Result<()> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let text = std::str::from_utf8(body).context("the server answered with invalid UTF-8")?;
        self.line(text)?;
        Ok(())
    }

    /// Pushes what is buffered to the terminal or the pipe (after each live event).
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compacting_keeps_strings_and_order() {
        let pretty = "{\n  \"b\": 1,\n  \"a\": \"x y\\\" \\n z\",\n  \"data\": { \"k\" : [1, 2] }\n}\n";
        assert_eq!(compact_json(pretty), r#"{"b":1,"a":"x y\" \n z","data":{"k":[1,2]}}"#);
        assert_eq!(compact_json(r#"{"a": 1}"#), r#"{"a": 1}"#, "single-line JSON is left alone");
    }
}
