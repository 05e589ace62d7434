//! A group's dead-letter queue in the state space: one key per parked event, named by its
//! position so that the queue lists in log order. Listing, replay and discard.

use bifrost_core::group::{DeadLetter, DeadLetterEntry, ReplaySelection};
use bifrost_core::{EventId, Position, Result, StateChange, StateStore};

use super::{ConsumerGroup, decode};

/// The key of the dead letter of the event at `position`.
pub(super) fn key(position: Position) -> String {
    format!("{position:020}")
}

/// How many keys `scope` holds.
pub(super) async fn count(state: &dyn StateStore, scope: &str) -> Result<u64> {
    let mut count = 0;
    let mut after: Option<String> = None;
    loop {
        let page = state.scan_state(scope, after.as_deref(), 1000).await?;
        let Some(last) = page.last() else { return Ok(count) };
        after = Some(last.key.clone());
        count += page.len() as u64;
    }
}

impl ConsumerGroup {
    /// Dead letters in log order, after `after` (exclusive), up to `limit`.
    pub async fn dead_letters(&self, after: Option<Position>, limit: usize) -> Result<Vec<DeadLetterEntry>> {
        // Events parked by a lazy (in-process) nack may not be written yet.
        self.shared.persist(false).await?;
        let after = after.map(key);
        let entries =
            self.shared.state.scan_state(&self.shared.scopes.dead_letters, after.as_deref(), limit).await?;
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let dead_letter: DeadLetter = decode(&self.shared.name, "dead letter", &entry.value)?;
            let event = self.shared.store.event(dead_letter.event_id).await?;
            out.push(DeadLetterEntry { dead_letter, event });
        }
        Ok(out)
    }

    async fn select_dead_letters(&self, selection: &ReplaySelection) -> Result<Vec<DeadLetter>> {
        self.shared.persist(false).await?;
        let scope = &self.shared.scopes.dead_letters;
        if let ReplaySelection::Ids(ids) = selection {
            return self.dead_letters_by_id(ids).await;
        }
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.shared.state.scan_state(scope, after.as_deref(), 1000).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.key.clone());
            for entry in page {
                let dl: DeadLetter = decode(&self.shared.name, "dead letter", &entry.value)?;
                if let ReplaySelection::UpTo(p) = selection
                    && dl.position > *p
                {
                    // Keys are positions in order: nothing further is wanted.
                    return Ok(out);
                }
                out.push(dl);
            }
        }
        Ok(out)
    }

    /// Dead letters are keyed by position: an id is found through its event. Only an id
    /// whose event is gone (deleted since) needs a scan.
    async fn dead_letters_by_id(&self, ids: &[EventId]) -> Result<Vec<DeadLetter>> {
        let scope = &self.shared.scopes.dead_letters;
        let mut out = Vec::new();
        let mut unknown = Vec::new();
        for &id in ids {
            let Some(event) = self.shared.store.event(id).await? else {
                unknown.push(id);
                continue;
            };
            if let Some(value) = self.shared.state.read_state(scope, &key(event.position)).await? {
                out.push(decode(&self.shared.name, "dead letter", &value)?);
            }
        }
        let mut after: Option<String> = None;
        while !unknown.is_empty() {
            let page = self.shared.state.scan_state(scope, after.as_deref(), 1000).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.key.clone());
            for entry in page {
                let dl: DeadLetter = decode(&self.shared.name, "dead letter", &entry.value)?;
                if let Some(at) = unknown.iter().position(|id| *id == dl.event_id) {
                    unknown.swap_remove(at);
                    out.push(dl);
                }
            }
        }
        out.sort_by_key(|dl| dl.position);
        out.dedup_by_key(|dl| dl.position);
        Ok(out)
    }

    fn deletes(&self, dead_letters: &[DeadLetter]) -> Vec<StateChange> {
        let scope = &self.shared.scopes.dead_letters;
        dead_letters.iter().map(|dl| StateChange::delete(scope.clone(), key(dl.position))).collect()
    }

    /// Delivers dead letters again with fresh attempts. Returns how many were replayed;
    /// dead letters whose event was deleted meanwhile are dropped, not replayed.
    pub async fn replay(&self, selection: ReplaySelection) -> Result<usize> {
        let selected = self.select_dead_letters(&selection).await?;
        if selected.is_empty() {
            return Ok(0);
        }
        let mut events = Vec::with_capacity(selected.len());
        for dl in &selected {
            if let Some(event) = self.shared.store.event(dl.event_id).await? {
                events.push(event);
            }
        }
        let replayed = events.len();
        // The cursor that remembers the replays and the removal of their dead letters are
        // one write: a crash leaves either both or neither.
        let _guard = self.shared.persist_lock.lock().await;
        let (cursor, parked, generation) = {
            let mut inner = self.shared.lock();
            for event in events {
                inner.ledger.admit_replay(event, 0);
            }
            inner.ledger.parked = inner.ledger.parked.saturating_sub(selected.len() as u64);
            (inner.ledger.cursor(), inner.ledger.take_parked(), inner.ledger.generation)
        };
        self.shared.write(cursor, parked, self.deletes(&selected), generation, true).await?;
        self.shared.fetchers.notify_waiters();
        Ok(replayed)
    }

    /// Removes one dead letter. `false` when the group has none for that event.
    pub async fn discard(&self, id: EventId) -> Result<bool> {
        let selected = self.select_dead_letters(&ReplaySelection::Ids(vec![id])).await?;
        if selected.is_empty() {
            return Ok(false);
        }
        self.shared.state.write_state(self.deletes(&selected)).await?;
        let mut inner = self.shared.lock();
        inner.ledger.parked = inner.ledger.parked.saturating_sub(selected.len() as u64);
        Ok(true)
    }
}
