//! [`EventStore`] over the HTTP API: every method is one or more requests, every error
//! answer becomes the contract's [`bifrost_core::Error`].
//!
//! The server caps a page at [`MAX_PAGE`] events or streams; a larger `limit` is served
//! by asking for the following pages until it is met, so callers see the store contract's
//! paging, not the API's cap.

use async_trait::async_trait;
use bifrost_api::{
    LogEventsBody, MultiAppendResultBody, ProblemType, StreamEventsBody, StreamInfoBody, StreamListBody,
};
use bifrost_core::store::validate_appends;
use bifrost_core::{
    AppendResult, DeleteMode, Direction, EventId, EventStore, LogFilter, LogSlice, Position, RecordedEvent,
    Result as StoreResult, StreamAppend, StreamInfo, StreamListQuery, StreamListing, StreamName, StreamSlice,
    Version,
};
use reqwest::Method;
use tokio::sync::watch;

use crate::client::{Client, Query, filter_query};
use crate::error::{Error, Result};
use crate::wire;

/// The most events (or streams) the server returns in one page.
pub const MAX_PAGE: usize = 1000;

#[async_trait]
impl EventStore for Client {
    async fn append_many(&self, appends: Vec<StreamAppend>) -> StoreResult<Vec<AppendResult>> {
        validate_appends(&appends)?;
        let single = match appends.as_slice() {
            [only] => Some(&only.stream),
            _ => None,
        };
        let results = self.post_appends(&appends).await.map_err(|e| e.into_store_error(single))?;
        if let Some(last) = results.iter().map(|r| r.last_position).max() {
            self.advance_head(last);
        }
        Ok(results)
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        from: Version,
        direction: Direction,
        limit: usize,
    ) -> StoreResult<StreamSlice> {
        self.stream_events(stream, from, direction, limit).await.map_err(|e| e.into_store_error(Some(stream)))
    }

    async fn read_all(&self, after: Position, filter: &LogFilter, limit: usize) -> StoreResult<LogSlice> {
        Ok(self.log_events(after, filter, limit).await?)
    }

    async fn event(&self, id: EventId) -> StoreResult<Option<RecordedEvent>> {
        self.check_open()?;
        let url = self.transport().url(&["v1", "events", &id.to_string()], &[]);
        match self.transport().get(url).await {
            Ok(body) => {
                let event = wire::one_event(&body)?;
                self.advance_head(event.position);
                Ok(Some(event))
            }
            Err(Error::Problem(p)) if p.kind() == Some(ProblemType::EventNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn stream_info(&self, stream: &StreamName) -> StoreResult<StreamInfo> {
        self.stream_info_of(stream).await.map_err(|e| e.into_store_error(Some(stream)))
    }

    async fn list_streams(&self, query: &StreamListQuery) -> StoreResult<StreamListing> {
        Ok(self.list_stream_pages(query).await?)
    }

    async fn delete_stream(&self, stream: &StreamName, mode: DeleteMode) -> StoreResult<()> {
        self.check_open().map_err(|e| e.into_store_error(Some(stream)))?;
        let query: Query = match mode {
            DeleteMode::Soft => Vec::new(),
            DeleteMode::Hard => vec![("hard", "true".into())],
        };
        let url = self.transport().url(&["v1", "streams", stream.as_str()], &query);
        self.transport()
            .exchange(Method::DELETE, url, None, self.transport().timeout)
            .await
            .map_err(|e| e.into_store_error(Some(stream)))?;
        Ok(())
    }

    fn head(&self) -> watch::Receiver<Position> {
        self.head_receiver()
    }

    /// Closes this client (every clone): later calls answer `Unavailable`, subscriptions
    /// and the head watch end. The server is not affected.
    async fn close(&self) -> StoreResult<()> {
        self.shut();
        Ok(())
    }
}

/// The store's calls with the client's own [`Error`], which keeps the server's whole
/// problem (its title and detail, say, for a command-line tool to show).
impl Client {
    /// Appends in one request: one stream's append, or an atomic append to several, as
    /// [`EventStore::append_many`] does.
    pub async fn append_streams(&self, appends: &[StreamAppend]) -> Result<Vec<AppendResult>> {
        validate_appends(appends).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let results = self.post_appends(appends).await?;
        if let Some(last) = results.iter().map(|r| r.last_position).max() {
            self.advance_head(last);
        }
        Ok(results)
    }

    /// Up to `limit` events of a stream from version `from`, as
    /// [`EventStore::read_stream`] reads them (pages past the server's cap).
    pub async fn stream_events(
        &self,
        stream: &StreamName,
        from: Version,
        direction: Direction,
        limit: usize,
    ) -> Result<StreamSlice> {
        self.read_stream_pages(stream, from, direction, limit.max(1)).await
    }

    /// Up to `limit` events of the global log after `after`, as [`EventStore::read_all`]
    /// reads them.
    pub async fn log_events(&self, after: Position, filter: &LogFilter, limit: usize) -> Result<LogSlice> {
        self.read_log_pages(after, filter, limit.max(1)).await
    }

    async fn post_appends(&self, appends: &[StreamAppend]) -> Result<Vec<AppendResult>> {
        self.check_open()?;
        let transport = self.transport();
        if let [append] = appends {
            let body = wire::to_json(&wire::append_request(append)?)?;
            let url = transport.url(&["v1", "streams", append.stream.as_str(), "events"], &[]);
            let (_, answer) = transport.exchange(Method::POST, url, Some(body), transport.timeout).await?;
            return Ok(vec![wire::append_result(wire::parse(&answer)?)?]);
        }
        let body = wire::to_json(&wire::multi_append_request(appends)?)?;
        let url = transport.url(&["v1", "append"], &[]);
        let (_, answer) = transport.exchange(Method::POST, url, Some(body), transport.timeout).await?;
        let results: MultiAppendResultBody = wire::parse(&answer)?;
        if results.results.len() != appends.len() {
            return Err(Error::decode(format!(
                "{} results for an append to {} streams",
                results.results.len(),
                appends.len()
            )));
        }
        results.results.into_iter().map(wire::append_result).collect()
    }

    async fn read_stream_pages(
        &self,
        stream: &StreamName,
        mut from: Version,
        direction: Direction,
        limit: usize,
    ) -> Result<StreamSlice> {
        self.check_open()?;
        let direction_name = match direction {
            Direction::Forward => "forward",
            Direction::Backward => "backward",
        };
        let mut events = Vec::new();
        loop {
            let ask = (limit - events.len()).min(MAX_PAGE);
            let query: Query = vec![
                ("from", from.to_string()),
                ("limit", ask.to_string()),
                ("direction", direction_name.into()),
            ];
            let url = self.transport().url(&["v1", "streams", stream.as_str(), "events"], &query);
            let body = self.transport().get(url).await?;
            let page: StreamEventsBody<'_> = wire::parse(&body)?;
            let next = page.next;
            let got = wire::events(&body, page.events)?;
            if let Some(last) = got.iter().map(|e| e.position).max() {
                self.advance_head(last);
            }
            let empty = got.is_empty();
            events.extend(got);
            match next {
                Some(n) if events.len() < limit && !empty => from = n,
                next => return Ok(StreamSlice { events, next }),
            }
        }
    }

    async fn read_log_pages(&self, after: Position, filter: &LogFilter, limit: usize) -> Result<LogSlice> {
        self.check_open()?;
        let filter_query = filter_query(filter);
        let mut events = Vec::new();
        let mut next_position = after;
        loop {
            let ask = (limit - events.len()).min(MAX_PAGE);
            let mut query = filter_query.clone();
            query.push(("from_position", next_position.to_string()));
            query.push(("limit", ask.to_string()));
            let url = self.transport().url(&["v1", "events"], &query);
            let body = self.transport().get(url).await?;
            let page: LogEventsBody<'_> = wire::parse(&body)?;
            let got = wire::events(&body, page.events)?;
            next_position = page.next_position;
            // Every position the server names is at or below its head.
            self.advance_head(next_position);
            let short = got.len() < ask;
            events.extend(got);
            // A short page is the end of the log (or of what one filtered request may scan).
            if short || events.len() >= limit {
                return Ok(LogSlice { events, next_position });
            }
        }
    }

    async fn stream_info_of(&self, stream: &StreamName) -> Result<StreamInfo> {
        self.check_open()?;
        let url = self.transport().url(&["v1", "streams", stream.as_str()], &[]);
        let body = self.transport().get(url).await?;
        wire::stream_info(wire::parse::<StreamInfoBody>(&body)?)
    }

    async fn list_stream_pages(&self, list: &StreamListQuery) -> Result<StreamListing> {
        self.check_open()?;
        let limit = list.limit.max(1);
        let mut streams = Vec::new();
        let mut after = list.after.clone();
        loop {
            let ask = (limit - streams.len()).min(MAX_PAGE);
            let mut query: Query = vec![("limit", ask.to_string())];
            if let Some(prefix) = &list.prefix {
                query.push(("prefix", prefix.clone()));
            }
            if let Some(category) = &list.category {
                query.push(("category", category.as_str().to_owned()));
            }
            if let Some(after) = &after {
                query.push(("after", after.clone()));
            }
            let body = self.transport().get(self.transport().url(&["v1", "streams"], &query)).await?;
            let page: StreamListBody = wire::parse(&body)?;
            let empty = page.streams.is_empty();
            for s in page.streams {
                streams.push(wire::stream_summary(s)?);
            }
            match page.next {
                Some(next) if streams.len() < limit && !empty => after = Some(next),
                next => {
                    let next = next.map(|n| n.parse().map_err(Error::decode)).transpose()?;
                    return Ok(StreamListing { streams, next });
                }
            }
        }
    }
}
