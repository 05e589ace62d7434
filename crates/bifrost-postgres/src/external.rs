//! The store's wake-ups on an external cluster bus ([`PostgresOptions::bus`]) instead of
//! `NOTIFY`: the head that another node's commit moved, and the consumer groups whose
//! fetchers should look again. The writer and the outbox announce what this node
//! committed; the listener (`listener.rs`) hears every node's announcements, and its poll
//! of the head, like the groups' fallback poll, makes up for any that are lost.
//!
//! [`PostgresOptions::bus`]: crate::PostgresOptions::bus

use std::sync::Arc;

use bifrost_core::Position;
use bifrost_core::cluster::ClusterBus;
use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::writer::advance;

/// The topic of the head: a payload is the position of this store's last commit.
pub(crate) const HEAD_TOPIC: &str = "store.head";
/// The topic of the consumer groups: a payload is their ids, comma-separated.
pub(crate) const GROUPS_TOPIC: &str = "store.groups";

/// The last position this node committed, published on the bus by a task of its own, so
/// that a slow bus never holds up a commit; commits that come faster than the bus takes
/// them share one announcement (the latest).
pub(crate) struct HeadAnnouncer {
    committed: watch::Sender<Position>,
    task: JoinHandle<()>,
}

impl HeadAnnouncer {
    pub(crate) fn start(bus: Arc<dyn ClusterBus>, head: Position) -> Self {
        let (committed, mut latest) = watch::channel(head);
        let task = tokio::spawn(async move {
            while latest.changed().await.is_ok() {
                let position = *latest.borrow_and_update();
                if let Err(e) = bus.publish(HEAD_TOPIC, Bytes::from(position.to_string())).await {
                    // The other nodes' poll finds the commit a little later.
                    tracing::debug!(error = %e, "could not announce a commit on the cluster bus");
                }
            }
        });
        Self { committed, task }
    }

    /// This node committed up to `position`.
    pub(crate) fn committed(&self, position: Position) {
        self.committed.send_if_modified(|p| advance(p, position));
    }

    pub(crate) fn stop(&self) {
        self.task.abort();
    }
}

/// An announced head, `None` when it is not one.
pub(crate) fn parse_head(payload: &[u8]) -> Option<Position> {
    std::str::from_utf8(payload).ok()?.parse().ok()
}

/// The groups' ids as published on [`GROUPS_TOPIC`].
pub(crate) fn groups_payload(groups: &[i64]) -> Bytes {
    let ids: Vec<String> = groups.iter().map(i64::to_string).collect();
    Bytes::from(ids.join(","))
}

/// The groups named by a [`GROUPS_TOPIC`] payload; what is not an id is skipped.
pub(crate) fn parse_groups(payload: &[u8]) -> Vec<i64> {
    std::str::from_utf8(payload)
        .map(|text| text.split(',').filter_map(|id| id.parse().ok()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_garbage_is_skipped() {
        assert_eq!(parse_groups(&groups_payload(&[1, 42, 7])), vec![1, 42, 7]);
        assert_eq!(parse_groups(b"3,x,,5"), vec![3, 5]);
        assert_eq!(parse_groups(b"\xff"), Vec::<i64>::new());
        assert_eq!(parse_head(b"123"), Some(123));
        assert_eq!(parse_head(b"-1"), None);
        assert_eq!(parse_head(b"\xff"), None);
    }
}
