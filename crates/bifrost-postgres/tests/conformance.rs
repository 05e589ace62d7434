//! The PostgreSQL store runs the full conformance suite, each case on its own schema.

mod support;

bifrost_core::conformance_suite!(support::harness);
