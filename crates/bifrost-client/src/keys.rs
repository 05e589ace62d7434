//! API keys over HTTP: create one (its secret is in this answer only), list them, revoke
//! one. An admin credential is needed; an unknown key is the server's
//! `bifrost:key-not-found` as [`Error::Problem`](crate::Error::Problem).

use bifrost_api::{KeyBody, KeyListBody, KeyRequest};
use bytes::Bytes;
use reqwest::{Method, StatusCode};

use crate::client::Client;
use crate::error::{Error, Result};
use crate::wire;

impl Client {
    /// Creates a key (`201`); the answer's `secret` is shown this once.
    pub async fn create_key(&self, request: &KeyRequest) -> Result<KeyBody> {
        let body = wire::to_json(request)?;
        let (_, answer) = self.keys_call(Method::POST, None, Some(body)).await?;
        wire::parse(&answer)
    }

    /// The keys of the caller's tenant, oldest first (never their secrets).
    pub async fn keys(&self) -> Result<KeyListBody> {
        let (_, answer) = self.keys_call(Method::GET, None, None).await?;
        wire::parse(&answer)
    }

    /// Revokes a key: every node refuses it within seconds.
    pub async fn revoke_key(&self, id: &str) -> Result<()> {
        if id.trim().is_empty() {
            return Err(Error::InvalidArgument("the key id is empty".into()));
        }
        self.keys_call(Method::DELETE, Some(id), None).await.map(drop)
    }

    async fn keys_call(
        &self,
        method: Method,
        id: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes)> {
        self.check_open()?;
        let mut segments = vec!["v1", "keys"];
        segments.extend(id);
        let url = self.transport().url(&segments, &[]);
        let timeout = self.transport().timeout;
        self.transport().exchange(method, url, body, timeout).await
    }
}
