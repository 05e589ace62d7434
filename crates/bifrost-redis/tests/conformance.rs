//! The Redis store runs the full conformance suite and the state suite, each case on its
//! own key prefix.

mod support;

bifrost_core::conformance_suite!(support::harness);
bifrost_core::state_conformance_suite!(support::harness);
