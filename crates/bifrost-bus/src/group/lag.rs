//! A group's lag beyond what its reader has taken in: matching events counted in chunks
//! of the log, each chunk once over the group's life, so a status query does not re-read
//! the backlog every time.

use bifrost_core::{Position, Result};

use super::{READ_PAGE, Shared};

/// Matching events beyond what the reader has taken in.
#[derive(Default)]
pub(super) struct UnreadCount {
    /// (after, up to, matching events in between), in log order.
    chunks: Vec<(Position, Position, u64)>,
}

impl Shared {
    pub(super) async fn count_unread(&self, read_to: Position) -> Result<u64> {
        let mut unread = self.unread.lock().await;
        unread.chunks.retain(|&(_, to, _)| to > read_to);
        // The chunk the reader is inside: count what is left of it again.
        if let Some(first) = unread.chunks.first_mut()
            && first.0 < read_to
        {
            let page = self.store.read_all(read_to, &self.filter, READ_PAGE).await?;
            let to = first.1;
            *first = (read_to, to, page.events.iter().filter(|e| e.position <= to).count() as u64);
        }
        let head = *self.store.head().borrow();
        let mut after = unread.chunks.last().map_or(read_to, |c| c.1).max(read_to);
        while after < head {
            let page = self.store.read_all(after, &self.filter, READ_PAGE).await?;
            if page.next_position <= after {
                break;
            }
            unread.chunks.push((after, page.next_position, page.events.len() as u64));
            after = page.next_position;
        }
        Ok(unread.chunks.iter().map(|c| c.2).sum())
    }
}
