//! The conformance suite: the store contract as executable cases. Every backend runs all
//! of them through [`conformance_suite!`](crate::conformance_suite):
//!
//! ```ignore
//! async fn store() -> bifrost_core::testkit::Harness { /* open a fresh, empty store */ }
//! bifrost_core::conformance_suite!(store);
//! ```

use std::any::Any;
use std::sync::Arc;

use crate::event::NewEvent;
use crate::name::{EventType, StreamName};
use crate::state::{DurableStore, StateStore};
use crate::store::EventStore;

pub mod cases;
pub mod group_cases;
pub mod node_cases;
pub mod properties;
pub mod state_cases;

/// A fresh, empty store, plus whatever must live as long as it (a temporary directory, a
/// database schema to drop).
pub struct Harness {
    pub store: Arc<dyn EventStore>,
    /// The same store's state space, when it keeps one (every backend does; a remote
    /// client may not). [`state_conformance_suite!`](crate::state_conformance_suite) needs it.
    pub state: Option<Arc<dyn StateStore>>,
    pub guard: Box<dyn Any + Send + Sync>,
}

impl Harness {
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Self { store, state: None, guard: Box::new(()) }
    }

    pub fn with_guard(store: Arc<dyn EventStore>, guard: impl Any + Send + Sync) -> Self {
        Self { store, state: None, guard: Box::new(guard) }
    }

    /// A store that keeps its readers' state as well as the log.
    pub fn durable<S: DurableStore>(store: Arc<S>, guard: impl Any + Send + Sync) -> Self {
        Self { state: Some(store.clone()), store, guard: Box::new(guard) }
    }
}

/// What a backend's factory returns: a store, or `None` when the service it needs is
/// unreachable and the run does not require services (see [`service_unavailable`]).
pub trait IntoHarness {
    fn into_harness(self) -> Option<Harness>;
}

impl IntoHarness for Harness {
    fn into_harness(self) -> Option<Harness> {
        Some(self)
    }
}

impl IntoHarness for Option<Harness> {
    fn into_harness(self) -> Option<Harness> {
        self
    }
}

/// Call when a test's external service (PostgreSQL, a broker) is unreachable: prints a
/// clear skip line and returns `None`, or panics when `BIFROST_REQUIRE_SERVICES=1` (CI),
/// so a missing service can never pass silently there.
pub fn service_unavailable<T>(service: &str, why: impl std::fmt::Display) -> Option<T> {
    if std::env::var("BIFROST_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
        panic!("{service} is required (BIFROST_REQUIRE_SERVICES=1) but unreachable: {why}");
    }
    eprintln!("skipped: {service} is unreachable ({why}); set BIFROST_REQUIRE_SERVICES=1 to fail instead");
    None
}

/// The whole global log, read page by page.
pub async fn all_events<S: EventStore + ?Sized>(store: &S) -> Vec<crate::event::RecordedEvent> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page =
            store.read_all(after, &crate::store::LogFilter::default(), 1000).await.expect("read the log");
        if page.events.is_empty() {
            return out;
        }
        after = page.next_position;
        out.extend(page.events);
    }
}

/// A stream name; panics on an invalid one (test input only).
pub fn stream(name: &str) -> StreamName {
    StreamName::new(name).expect("valid stream name in test")
}

/// A JSON event of `event_type` carrying `data` verbatim.
pub fn event(event_type: &str, data: &str) -> NewEvent {
    NewEvent::new(EventType::new(event_type).expect("valid event type in test"), data.as_bytes().to_vec())
}

/// A reader paging through the global log (pages of 97) as fast as it can while writers
/// commit, asserting it never goes backwards: the "no holes for readers" check of the
/// ordering tests. [`PagingReader::finish`] returns every position it saw, in order.
pub struct PagingReader {
    done: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Vec<crate::store::Position>>,
}

impl PagingReader {
    /// Starts reading after `after`.
    pub fn spawn(store: Arc<dyn EventStore>, after: crate::store::Position) -> Self {
        use std::sync::atomic::Ordering;
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let finished = done.clone();
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut after = after;
            loop {
                let finishing = finished.load(Ordering::Acquire);
                let page = store
                    .read_all(after, &crate::store::LogFilter::default(), 97)
                    .await
                    .expect("a page of the log");
                if page.events.is_empty() && finishing {
                    return seen;
                }
                let empty = page.events.is_empty();
                for e in page.events {
                    assert!(e.position > after, "paging reader went backwards: {} after {after}", e.position);
                    after = e.position;
                    seen.push(e.position);
                }
                if empty {
                    tokio::task::yield_now().await;
                }
            }
        });
        Self { done, task }
    }

    /// Reads to the end of the log as it is now, then returns every position seen.
    pub async fn finish(self) -> Vec<crate::store::Position> {
        self.done.store(true, std::sync::atomic::Ordering::Release);
        self.task.await.expect("the paging reader failed")
    }
}

/// `n` events `test.event` with data `{"n":i}`.
pub fn events(n: usize) -> Vec<NewEvent> {
    (0..n).map(|i| event("test.event", &format!("{{\"n\":{i}}}"))).collect()
}

/// Generates one test per conformance case (and the property tests) for a backend.
/// `$factory` is an `async fn() -> Harness` that opens a fresh, empty store.
///
/// `conformance_suite!(factory, json_values_only)` is for a store that carries each
/// payload as a JSON value (a client of the HTTP API): every case but the one that keeps
/// bytes around the value and the one that names streams as only the server may (tenant
/// prefixes, `$` streams), which a client cannot.
#[macro_export]
macro_rules! conformance_suite {
    ($factory:path) => {
        $crate::__conformance_suite!($factory;
            payload_bytes_around_a_json_value_round_trip,
            tenant_and_system_names_keep_their_own_categories,
        );
    };
    ($factory:path, json_values_only) => {
        $crate::__conformance_suite!($factory;);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_suite {
    ($factory:path; $($extra:ident),* $(,)?) => {
        $crate::__conformance_cases!($factory;
            append_to_a_new_stream_numbers_versions_from_one,
            positions_strictly_increase_across_streams,
            expected_no_stream_holds_only_for_a_missing_stream,
            expected_stream_exists_holds_only_for_an_existing_stream,
            append_with_stale_expected_version_is_rejected_with_actual_version,
            expected_exact_zero_means_no_stream,
            expected_any_always_appends,
            resending_an_append_returns_the_original_result_and_stores_nothing,
            resending_a_stored_id_with_different_content_is_a_duplicate,
            reusing_an_id_in_another_stream_is_a_duplicate,
            a_batch_with_one_stored_id_stores_nothing,
            a_rejected_batch_stores_nothing,
            failing_appends_among_concurrent_ones_store_nothing,
            multi_stream_append_is_atomic_and_names_every_conflict,
            multi_stream_append_returns_results_in_request_order,
            multi_stream_append_is_idempotent,
            malformed_appends_are_rejected,
            read_stream_forward_pages_with_next,
            read_stream_backward_pages_with_next,
            read_stream_from_past_the_end,
            read_of_an_unknown_stream_is_not_found,
            read_all_pages_from_an_exclusive_position,
            read_all_from_beyond_the_head_is_out_of_range,
            read_all_filters_by_type_pattern,
            read_all_filters_by_category,
            read_all_filters_by_correlation_id,
            read_all_filters_by_time_range,
            filtered_read_that_matches_nothing_advances_to_the_head,
            event_by_id,
            stream_info_reports_version_type_and_times,
            aggregate_type_defaults_to_the_category,
            list_streams_filters_and_pages_in_name_order,
            soft_delete_hides_the_stream_until_the_next_append,
            hard_delete_removes_the_events_and_forbids_the_name,
            deleting_an_unknown_stream_is_not_found,
            large_and_unicode_payloads_round_trip_byte_for_byte,
            metadata_round_trips_with_free_keys,
            occurred_at_is_kept_and_recorded_at_never_decreases,
            subscription_catches_up_then_goes_live,
            subscription_from_end_sees_only_new_events,
            subscription_from_a_position_is_exclusive,
            subscription_applies_its_filter,
            subscriptions_under_concurrent_appends_see_every_event_once_in_order,
            concurrent_appends_with_the_same_expected_version_have_one_winner,
            concurrent_writers_keep_versions_contiguous_and_positions_increasing,
            many_events_in_one_append,
            closing_the_store_ends_subscriptions_and_refuses_appends,
            large_page_reads_match_small_page_reads_across_gaps,
            $($extra,)*
        );

        #[test]
        fn log_invariants_hold_for_any_sequence_of_operations() {
            $crate::testkit::properties::sequential_model_check(|| $factory());
        }

        #[test]
        fn log_invariants_hold_for_any_interleaving_of_concurrent_appends() {
            $crate::testkit::properties::concurrent_invariants(|| $factory());
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($factory:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let Some(harness) = $crate::testkit::IntoHarness::into_harness($factory().await) else {
                    return;
                };
                // A hang is a failure with a name, not a stalled test run.
                let case = $crate::testkit::cases::$case(harness.store.clone());
                if tokio::time::timeout(std::time::Duration::from_secs(120), case).await.is_err() {
                    panic!("conformance case {} did not finish within 120 s", stringify!($case));
                }
                let _ = harness.store.close().await;
                // Guards may block (dropping a database schema): not on a runtime worker,
                // which may be the one that must drive the connections they wait for.
                let _ = tokio::task::spawn_blocking(move || drop(harness)).await;
            }
        )*
    };
}

/// Generates one test per case of the state contract ([`StateStore`]) for a backend whose
/// factory (the same one [`conformance_suite!`](crate::conformance_suite) takes) returns a
/// [`Harness::durable`].
#[macro_export]
macro_rules! state_conformance_suite {
    ($factory:path) => {
        $crate::__state_conformance_cases!($factory;
            state_put_then_read_round_trips_bytes,
            state_reads_of_missing_keys_are_none,
            state_put_replaces_and_delete_removes,
            state_write_applies_changes_in_order,
            state_write_with_an_invalid_change_applies_nothing,
            state_scan_pages_in_key_order_within_one_scope,
            state_delete_scope_removes_only_that_scope,
            state_concurrent_writers_lose_nothing,
            state_is_separate_from_the_log,
            state_expectations_that_hold_let_the_write_apply,
            state_an_expectation_that_fails_writes_nothing,
            state_expectations_fence_concurrent_writers,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __state_conformance_cases {
    ($factory:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let Some(harness) = $crate::testkit::IntoHarness::into_harness($factory().await) else {
                    return;
                };
                let state = harness.state.clone().expect("the factory must return Harness::durable");
                let case = $crate::testkit::state_cases::$case(harness.store.clone(), state);
                if tokio::time::timeout(std::time::Duration::from_secs(120), case).await.is_err() {
                    panic!("state conformance case {} did not finish within 120 s", stringify!($case));
                }
                let _ = harness.store.close().await;
                let _ = tokio::task::spawn_blocking(move || drop(harness)).await;
            }
        )*
    };
}

/// Generates one test per case of the consumer-group contract
/// ([`GroupEngine`](crate::group::GroupEngine)) for an engine. `$factory` is an
/// `async fn() -> Option<Box<dyn GroupFixture>>` (`None`: the service it needs is
/// unreachable, see [`service_unavailable`]) giving a fresh store with its engine.
#[macro_export]
macro_rules! group_conformance_suite {
    ($factory:path) => {
        $crate::__group_conformance_cases!($factory;
            events_of_one_stream_are_leased_one_at_a_time_in_order,
            an_unordered_group_hands_out_each_event_on_its_own,
            a_released_lease_comes_back_with_its_attempt_uncounted,
            ack_advances_the_checkpoint_to_below_the_lowest_unsettled_event,
            retries_follow_the_backoff_and_stop_at_max_attempts,
            nack_with_a_delay_waits_that_long_and_park_parks_at_once,
            a_parked_event_is_replayed_with_fresh_attempts_and_can_be_discarded,
            replay_selects_by_id_and_up_to_a_position,
            a_lease_not_acked_in_time_is_redelivered_with_its_attempt_counted,
            timed_out_leases_are_parked_after_max_attempts_with_the_reason,
            a_long_poll_returns_as_soon_as_an_event_arrives,
            a_long_poll_wakes_when_an_ack_releases_the_next_event_of_a_stream,
            filters_and_start_points_choose_the_events,
            tenant_groups_see_their_tenant_and_dollar_streams_only_by_category,
            unknown_groups_are_not_found_and_bad_settings_are_refused,
            deleting_a_group_ends_it_and_a_new_one_of_that_name_starts_afresh,
            changing_the_filter_keeps_what_is_settled,
            max_in_flight_bounds_the_leases_out,
            consecutive_events_of_a_stream_can_be_leased_together,
            lag_counts_unread_matching_events_without_parked_ones,
            a_fetch_without_wait_sees_events_appended_before_it,
            order_per_stream_holds_with_8_competing_consumers_over_300_streams,
            a_group_resumes_after_a_graceful_restart,
            a_group_resumes_after_a_crash,
            a_lease_out_at_a_crash_on_its_last_attempt_is_parked,
            lag_right_after_a_restart_does_not_count_what_was_acked,
            a_dead_letter_whose_event_was_deleted_is_found_by_id_and_dropped_on_replay,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __group_conformance_cases {
    ($factory:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let Some(fixture) = $factory().await else { return };
                let case = $crate::testkit::group_cases::$case(fixture);
                if tokio::time::timeout(std::time::Duration::from_secs(120), case).await.is_err() {
                    panic!("group conformance case {} did not finish within 120 s", stringify!($case));
                }
            }
        )*
    };
}
