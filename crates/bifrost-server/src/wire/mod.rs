//! The server's side of the wire contract. The JSON shapes themselves are `bifrost_api`'s;
//! this module reads request bodies into the engine's types (`parse`), maps the engine's
//! answers onto the wire's types (`map`), and writes the events of the read paths by hand
//! (`writer`), so that a stored payload goes out without being re-serialised.

mod map;
mod parse;
mod writer;

pub(crate) use map::{
    ack_body, append_result, conflict, expected_version, group_body, group_config, nack_action, nack_body,
    nack_reason, replay_selection, stream_info, stream_summary,
};
pub(crate) use parse::{check_leases, parse_body, parse_expected_version, parse_uuid, to_new_events};
pub(crate) use writer::{dead_letters_json, event_json, fetch_json, log_events_json, stream_events_json};
