//! Between the engine's types (`bifrost_core`, `bifrost_bus`) and the wire's
//! (`bifrost_api`), field by field, so that neither side's shape changes the other. These
//! are functions rather than `From` impls because both sides are other crates' types.

use std::time::Duration;

use bifrost_api::{
    AckBody, AppendResultBody, BackoffBody, BackoffKindBody, ConflictBody, ConsumerBody,
    ExpectedVersion as WireExpected, GroupBody, GroupConfigBody, GroupConfigRequest, GroupFilterBody,
    MAX_REASON_CHARS, MetadataRequest, NackActionBody, NackBody, NackRequest, ReplayRequest, StartBody,
    StreamInfoBody, StreamSummaryBody,
};
use bifrost_core::group::{
    Backoff, BackoffKind, GroupConfig, GroupFilter, GroupStatus, MAX_DELAY, NackAction, ReplaySelection,
    StartFrom,
};
use bifrost_core::{AppendResult, ExpectedVersion, Metadata, StreamInfo, StreamSummary, VersionConflict};

use crate::error::{ApiError, ApiResult};
use crate::wire::parse::parse_uuid;

// ---------------------------------------------------------------------------------------
// Streams

pub(crate) fn metadata(m: MetadataRequest) -> Metadata {
    Metadata {
        correlation_id: m.correlation_id,
        causation_id: m.causation_id,
        source: m.source,
        user_id: m.user_id,
        tenant_id: m.tenant_id,
        extra: m.extra,
    }
}

pub(crate) fn engine_expected(expected: WireExpected) -> ExpectedVersion {
    match expected {
        WireExpected::Any => ExpectedVersion::Any,
        WireExpected::NoStream => ExpectedVersion::NoStream,
        WireExpected::Exists => ExpectedVersion::StreamExists,
        WireExpected::Exact(v) => ExpectedVersion::Exact(v),
    }
}

pub(crate) fn expected_version(expected: ExpectedVersion) -> WireExpected {
    match expected {
        ExpectedVersion::Any => WireExpected::Any,
        ExpectedVersion::NoStream => WireExpected::NoStream,
        ExpectedVersion::StreamExists => WireExpected::Exists,
        ExpectedVersion::Exact(v) => WireExpected::Exact(v),
    }
}

pub(crate) fn conflict(c: &VersionConflict) -> ConflictBody {
    ConflictBody { stream: c.stream.to_string(), expected: expected_version(c.expected), actual: c.actual }
}

pub(crate) fn append_result(r: AppendResult) -> AppendResultBody {
    AppendResultBody {
        stream: r.stream.to_string(),
        first_version: r.first_version,
        last_version: r.last_version,
        first_position: r.first_position,
        last_position: r.last_position,
    }
}

pub(crate) fn stream_info(i: StreamInfo) -> StreamInfoBody {
    StreamInfoBody {
        stream: i.stream.to_string(),
        version: i.version,
        aggregate_type: i.aggregate_type,
        created_at: i.created_at.to_string(),
        updated_at: i.updated_at.to_string(),
        deleted: i.deleted,
    }
}

pub(crate) fn stream_summary(s: StreamSummary) -> StreamSummaryBody {
    StreamSummaryBody {
        stream: s.stream.to_string(),
        version: s.version,
        aggregate_type: s.aggregate_type,
        updated_at: s.updated_at.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// Consumer groups
//
// The engine's own serde shape of a group's settings is its storage format; the API's is
// bifrost-api's. They are mapped here field by field, so neither changes the other.

/// The engine's settings of a `PUT`; the engine validates them when the group is put.
pub(crate) fn group_config(request: GroupConfigRequest) -> ApiResult<GroupConfig> {
    let defaults = GroupConfig::default();
    let filter = request.filter.unwrap_or_default();
    let backoff = request.backoff.unwrap_or_default();
    let max_in_flight = match request.max_in_flight {
        None => defaults.max_in_flight,
        Some(n) => usize::try_from(n)
            .map_err(|_| ApiError::invalid_argument(format!("max_in_flight {n} is too large")))?,
    };
    Ok(GroupConfig {
        filter: GroupFilter {
            types: filter.types.unwrap_or_default(),
            category: filter.category,
            ..GroupFilter::default()
        },
        start: request.start.map_or(defaults.start, start_from),
        ack_timeout: request.ack_timeout_ms.map_or(defaults.ack_timeout, Duration::from_millis),
        max_attempts: request.max_attempts.unwrap_or(defaults.max_attempts),
        backoff: Backoff {
            kind: backoff.kind.map_or(defaults.backoff.kind, backoff_kind),
            initial: backoff.initial_ms.map_or(defaults.backoff.initial, Duration::from_millis),
            max: backoff.max_ms.map_or(defaults.backoff.max, Duration::from_millis),
            jitter: backoff.jitter.unwrap_or(defaults.backoff.jitter),
        },
        max_in_flight,
        ordered: true,
    })
}

fn start_from(start: StartBody) -> StartFrom {
    match start {
        StartBody::Beginning => StartFrom::Beginning,
        StartBody::End => StartFrom::End,
        StartBody::Position(p) => StartFrom::Position(p),
    }
}

fn start_body(start: StartFrom) -> StartBody {
    match start {
        StartFrom::Beginning => StartBody::Beginning,
        StartFrom::End => StartBody::End,
        StartFrom::Position(p) => StartBody::Position(p),
    }
}

fn backoff_kind(kind: BackoffKindBody) -> BackoffKind {
    match kind {
        BackoffKindBody::Exponential => BackoffKind::Exponential,
        BackoffKindBody::Fixed => BackoffKind::Fixed,
    }
}

fn backoff_kind_body(kind: BackoffKind) -> BackoffKindBody {
    match kind {
        BackoffKind::Exponential => BackoffKindBody::Exponential,
        BackoffKind::Fixed => BackoffKindBody::Fixed,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

fn group_config_body(c: &GroupConfig) -> GroupConfigBody {
    GroupConfigBody {
        filter: GroupFilterBody { types: c.filter.types.clone(), category: c.filter.category.clone() },
        start: start_body(c.start),
        ack_timeout_ms: millis(c.ack_timeout),
        max_attempts: c.max_attempts,
        backoff: BackoffBody {
            kind: backoff_kind_body(c.backoff.kind),
            initial_ms: millis(c.backoff.initial),
            max_ms: millis(c.backoff.max),
            jitter: c.backoff.jitter,
        },
        max_in_flight: count(c.max_in_flight),
    }
}

/// `GET /v1/groups/{group}`.
pub(crate) fn group_body(status: GroupStatus) -> GroupBody {
    GroupBody {
        group: status.name.to_string(),
        config: group_config_body(&status.config),
        checkpoint: status.checkpoint,
        lag: status.lag,
        in_flight: status.in_flight,
        waiting: status.waiting,
        parked: status.parked,
        redeliveries: status.redeliveries,
        timeouts: status.timeouts,
        consumers: status
            .consumers
            .into_iter()
            .map(|(name, seen)| ConsumerBody { name, last_seen: seen.to_string() })
            .collect(),
        created_at: Some(status.created_at.to_string()),
    }
}

/// `acked` leases held, the `expired` tokens not.
pub(crate) fn ack_body(acked: usize, expired: Vec<String>) -> AckBody {
    AckBody { acked: count(acked), expired }
}

/// `nacked` leases held, the `expired` tokens not.
pub(crate) fn nack_body(nacked: usize, expired: Vec<String>) -> NackBody {
    NackBody { nacked: count(nacked), expired }
}

/// A nack's reason, if any, within its length limit.
pub(crate) fn nack_reason(request: &NackRequest) -> ApiResult<Option<&str>> {
    match request.reason.as_deref() {
        Some(reason) if reason.chars().count() > MAX_REASON_CHARS => {
            Err(ApiError::invalid_argument(format!("reason is at most {MAX_REASON_CHARS} characters")))
        }
        reason => Ok(reason),
    }
}

pub(crate) fn nack_action(request: &NackRequest) -> ApiResult<NackAction> {
    match (request.action, request.delay_ms) {
        (NackActionBody::Park, Some(_)) => {
            Err(ApiError::invalid_argument("delay_ms applies only to action \"retry\""))
        }
        (NackActionBody::Park, None) => Ok(NackAction::Park),
        (NackActionBody::Retry, None) => Ok(NackAction::Retry(None)),
        (NackActionBody::Retry, Some(ms)) => {
            let delay = Duration::from_millis(ms);
            if delay > MAX_DELAY {
                return Err(ApiError::invalid_argument(format!(
                    "delay_ms is at most {} ms",
                    MAX_DELAY.as_millis()
                )));
            }
            Ok(NackAction::Retry(Some(delay)))
        }
    }
}

pub(crate) fn replay_selection(request: ReplayRequest) -> ApiResult<ReplaySelection> {
    let Some(ids) = request.event_ids else { return Ok(ReplaySelection::All) };
    let ids = ids.iter().map(|id| parse_uuid(id)).collect::<ApiResult<Vec<_>>>()?;
    Ok(ReplaySelection::Ids(ids))
}
