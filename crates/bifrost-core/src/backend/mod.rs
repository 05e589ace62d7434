//! For store backends; applications never need this.
//!
//! What the implementations of [`EventStore`](crate::EventStore) and
//! [`StateStore`](crate::StateStore) share, so that they apply one set of rules instead of
//! re-implementing them: [`rules`] (validation, the replay and expected-version checks,
//! paging windows, stream states), [`plan`] (planning a group of appends before writing
//! any of it) and [`codec`] (decoding stored columns and reporting corrupt data).

pub mod codec;
pub mod plan;
pub mod rules;
