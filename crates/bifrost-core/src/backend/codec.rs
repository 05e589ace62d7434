//! Helpers every backend uses to turn stored columns into the model and back, so that
//! they read and report corrupt data the same way.

use crate::error::{Error, Result};

/// A stored value that does not decode: the database holds something this version of
/// Bifrost never writes.
pub fn corrupt(what: &str, detail: impl std::fmt::Display) -> Error {
    Error::Corrupt { message: format!("stored {what} is invalid: {detail}"), source: None }
}

/// A stored signed integer column (SQL has no unsigned one) as the model's `u64`.
pub fn u64_from(v: i64, what: &str) -> Result<u64> {
    u64::try_from(v).map_err(|_| corrupt(what, v))
}

/// A position or version as a signed integer column; past `i64::MAX` is the caller's error.
pub fn i64_from(v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::InvalidArgument(format!("{v} is too large")))
}
