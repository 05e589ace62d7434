//! Cases for a backend that several processes share: two stores ("nodes") opened on one
//! database, each case given both. Each backend calls them from tests of its own, since
//! how two nodes are opened on one namespace is the backend's.

#![allow(clippy::unwrap_used)] // a failed call is a failed case

use std::sync::Arc;

use super::{events, stream};
use crate::error::Error;
use crate::store::{EventStore, ExpectedVersion};

/// 64 tasks on two nodes race to append at the same expected version, round after round:
/// exactly one wins each version; every loser is told the actual version.
pub async fn racing_appends_on_two_nodes(a: Arc<dyn EventStore>, b: Arc<dyn EventStore>) {
    let name = stream("race-1");
    a.append(name.clone(), ExpectedVersion::NoStream, events(1)).await.unwrap();
    for round in 1..=5u64 {
        let mut tasks = Vec::new();
        for t in 0..64 {
            let store = if t % 2 == 0 { a.clone() } else { b.clone() };
            let name = name.clone();
            tasks.push(tokio::spawn(async move {
                store.append(name, ExpectedVersion::Exact(round), events(1)).await
            }));
        }
        let mut winners = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(r) => {
                    winners += 1;
                    assert_eq!(r.first_version, round + 1);
                }
                Err(Error::WrongExpectedVersion(c)) => {
                    assert_eq!(c.len(), 1);
                    assert_eq!(c[0].actual, Some(round + 1), "a loser must see the winner's version");
                }
                Err(e) => panic!("unexpected error {e}"),
            }
        }
        assert_eq!(winners, 1, "round {round}");
    }
    assert_eq!(a.stream_info(&name).await.unwrap().version, 6);
    assert_eq!(b.stream_info(&name).await.unwrap().version, 6);
}
