//! AMQP topic patterns over dotted event types: `*` matches exactly one segment, `#` zero
//! or more. `order.*` matches `order.submitted` but not `order.item.added`; `order.#`
//! matches both and `order` itself.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;
use crate::name::{MAX_NAME_LEN, is_type_char};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Segment {
    Literal(Box<str>),
    One,
    Any,
}

/// A compiled type pattern.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TypePattern {
    source: Box<str>,
    segments: Box<[Segment]>,
}

impl TypePattern {
    pub fn new(pattern: &str) -> Result<Self, Error> {
        let invalid =
            |why: String| Error::InvalidArgument(format!("invalid type pattern {pattern:?}: {why}"));
        if pattern.is_empty() || pattern.len() > MAX_NAME_LEN {
            return Err(invalid("a pattern has 1-256 characters".into()));
        }
        let mut segments = Vec::new();
        for segment in pattern.split('.') {
            let compiled = match segment {
                "" => {
                    return Err(invalid(
                        "segments are separated by single dots and none may be empty".into(),
                    ));
                }
                "*" => Segment::One,
                "#" => Segment::Any,
                literal => {
                    if let Some(c) = literal.chars().find(|&c| !is_type_char(c)) {
                        return Err(invalid(format!(
                            "{c:?} is not allowed; a segment is '*', '#' or A-Z a-z 0-9 _ -"
                        )));
                    }
                    Segment::Literal(literal.into())
                }
            };
            // `#.#` matches exactly what `#` does; collapsing keeps matching linear.
            if compiled == Segment::Any && segments.last() == Some(&Segment::Any) {
                continue;
            }
            segments.push(compiled);
        }
        Ok(Self { source: pattern.into(), segments: segments.into() })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The event type this pattern matches when it has no wildcard (lets backends use an
    /// equality lookup).
    pub fn as_exact(&self) -> Option<&str> {
        self.segments.iter().all(|s| matches!(s, Segment::Literal(_))).then_some(&*self.source)
    }

    /// An anchored POSIX regular expression that matches `"." + event_type` exactly when
    /// this pattern matches `event_type`, so SQL backends can filter with
    /// `('.' || type) ~ regex`. (The leading dot lets `#` absorb zero segments without
    /// special cases.) Literal segments hold only `A-Z a-z 0-9 _ -`, which need no escaping.
    pub fn to_dotted_regex(&self) -> String {
        let mut regex = String::from("^");
        for segment in self.segments.iter() {
            match segment {
                Segment::Literal(lit) => {
                    regex.push_str("\\.");
                    regex.push_str(lit);
                }
                Segment::One => regex.push_str("\\.[^.]+"),
                Segment::Any => regex.push_str("(\\.[^.]+)*"),
            }
        }
        regex.push('$');
        regex
    }

    pub fn matches(&self, event_type: &str) -> bool {
        let words: Vec<&str> = event_type.split('.').collect();
        matches_from(&self.segments, &words)
    }
}

/// Greedy matcher with one backtrack point per `#` (the classic wildcard algorithm on
/// segments instead of characters): linear for patterns with one `#`, never exponential.
fn matches_from(pattern: &[Segment], words: &[&str]) -> bool {
    let (mut p, mut w) = (0, 0);
    // Where to resume after the last `#`: (pattern index after it, word index it absorbs to).
    let mut backtrack: Option<(usize, usize)> = None;
    loop {
        if p < pattern.len() {
            match &pattern[p] {
                Segment::Any => {
                    backtrack = Some((p + 1, w));
                    p += 1;
                    continue;
                }
                Segment::One if w < words.len() => {
                    p += 1;
                    w += 1;
                    continue;
                }
                Segment::Literal(lit) if w < words.len() && **lit == *words[w] => {
                    p += 1;
                    w += 1;
                    continue;
                }
                _ => {}
            }
        } else if w == words.len() {
            return true;
        }
        // Mismatch: let the last `#` swallow one more word, or fail.
        match backtrack {
            Some((bp, bw)) if bw < words.len() => {
                backtrack = Some((bp, bw + 1));
                p = bp;
                w = bw + 1;
            }
            _ => return false,
        }
    }
}

impl FromStr for TypePattern {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::new(s)
    }
}

impl fmt::Display for TypePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl fmt::Debug for TypePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TypePattern({:?})", self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(pattern: &str, matching: &[&str], not_matching: &[&str]) {
        let p = TypePattern::new(pattern).unwrap();
        for t in matching {
            assert!(p.matches(t), "{pattern} should match {t}");
        }
        for t in not_matching {
            assert!(!p.matches(t), "{pattern} should not match {t}");
        }
    }

    #[test]
    fn star_matches_exactly_one_segment() {
        check("order.*", &["order.submitted", "order.x"], &["order", "order.item.added", "orders.x"]);
        check("*.created", &["task.created", "user.created"], &["created", "a.b.created"]);
        check("*", &["a", "order"], &["a.b"]);
    }

    #[test]
    fn hash_matches_zero_or_more_segments() {
        check("order.#", &["order", "order.submitted", "order.item.added"], &["orders", "x.order"]);
        check("#", &["a", "a.b", "a.b.c"], &[]);
        check("#.failed", &["failed", "order.failed", "a.b.failed"], &["failed.x", "order.failedx"]);
        check("a.#.z", &["a.z", "a.b.z", "a.b.c.z"], &["a", "a.b", "z", "a.z.y"]);
        check("a.#.#.z", &["a.z", "a.b.c.z"], &["a.b"]);
        check("#.b.#", &["b", "a.b", "b.c", "a.b.c", "x.y.b.z.w"], &["a.c", "bb"]);
        check("a.*.#", &["a.b", "a.b.c"], &["a"]);
    }

    #[test]
    fn literals_match_only_themselves() {
        let p = TypePattern::new("order.submitted").unwrap();
        assert_eq!(p.as_exact(), Some("order.submitted"));
        assert!(p.matches("order.submitted"));
        assert!(!p.matches("order.submitted.v2"));
        assert!(!p.matches("order"));
        assert_eq!(TypePattern::new("order.*").unwrap().as_exact(), None);
    }

    #[test]
    fn invalid_patterns_are_rejected() {
        for bad in ["", "a..b", ".a", "a.", "a*", "a#.b", "a b", "é"] {
            assert!(TypePattern::new(bad).is_err(), "{bad:?}");
        }
    }
}
