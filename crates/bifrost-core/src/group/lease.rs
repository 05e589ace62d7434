//! Lease tokens: 128 opaque bits, written as 32 lowercase hex digits.

use std::fmt;
use std::str::FromStr;

use crate::{Error, Result};

/// Names one lease of one group. Opaque to consumers; each engine decides what its two
/// halves mean (a run and a counter, a position and a nonce), so that a token of a lease
/// that ended, or of an earlier run, never matches a lease held now.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseToken {
    high: u64,
    low: u64,
}

impl LeaseToken {
    pub const fn new(high: u64, low: u64) -> Self {
        Self { high, low }
    }

    pub const fn high(self) -> u64 {
        self.high
    }

    pub const fn low(self) -> u64 {
        self.low
    }
}

impl fmt::Display for LeaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}{:016x}", self.high, self.low)
    }
}

impl fmt::Debug for LeaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for LeaseToken {
    type Err = Error;

    fn from_str(token: &str) -> Result<Self> {
        let invalid = || Error::InvalidArgument(format!("{token:?} is not a lease token"));
        let hex = |part: &str| {
            if part.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                u64::from_str_radix(part, 16).ok()
            } else {
                None
            }
        };
        if token.len() != 32 || !token.is_ascii() {
            return Err(invalid());
        }
        let (high, low) = token.split_at(16);
        Ok(Self { high: hex(high).ok_or_else(invalid)?, low: hex(low).ok_or_else(invalid)? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_through_their_text() {
        for token in [LeaseToken::new(0, 0), LeaseToken::new(u64::MAX, 1), LeaseToken::new(0xabc, 0xdef)] {
            let text = token.to_string();
            assert_eq!(text.len(), 32);
            assert_eq!(text.parse::<LeaseToken>().unwrap(), token);
        }
    }

    #[test]
    fn anything_else_is_not_a_token() {
        for bad in [
            "",
            "garbage",
            &"0".repeat(31),
            &"0".repeat(33),
            &"A".repeat(32),
            "+000000000000000000000000000000f",
        ] {
            assert!(bad.parse::<LeaseToken>().is_err(), "{bad:?}");
        }
    }
}
