//! Placeholder of the JWT checks (replaced by the real verifier).
#![allow(dead_code)]

use super::config::{JwtKey, RealtimeConfig};

pub(crate) struct Verifier;

#[derive(Debug)]
pub(crate) struct AuthError(pub(crate) String);

#[derive(Clone, Debug)]
pub(crate) struct Principal {
    pub(crate) user_id: Option<String>,
    pub(crate) admin: bool,
    pub(crate) append: bool,
    pub(crate) channels: Vec<String>,
    pub(crate) info: Option<serde_json::Value>,
    pub(crate) expires_at: Option<u64>,
    pub(crate) anonymous: bool,
}

impl Verifier {
    pub(crate) fn new(config: &RealtimeConfig) -> Result<Option<Self>, String> {
        match config.jwt {
            JwtKey::None => Ok(None),
            _ => Err("JWT keys are not supported yet".into()),
        }
    }

    pub(crate) fn verify(&self, _token: &str) -> Result<Principal, AuthError> {
        Err(AuthError("no key".into()))
    }
}

impl Principal {
    pub(crate) fn dev(user_id: Option<String>) -> Self {
        Self {
            user_id,
            admin: true,
            append: true,
            channels: Vec::new(),
            info: None,
            expires_at: None,
            anonymous: false,
        }
    }

    pub(crate) fn anonymous(channels: &[String]) -> Self {
        Self {
            user_id: None,
            admin: false,
            append: false,
            channels: channels.to_vec(),
            info: None,
            expires_at: None,
            anonymous: true,
        }
    }

    pub(crate) fn may_subscribe(&self, channel: &str) -> bool {
        self.admin
            || self.user_id.as_ref().is_some_and(|u| channel.strip_prefix("user:") == Some(u))
            || self.channels.iter().any(|g| match g.strip_suffix('*') {
                Some(prefix) => channel.starts_with(prefix),
                None => g == channel,
            })
    }

    pub(crate) fn may_publish(&self, channel: &str, persistent: bool) -> bool {
        if self.anonymous || channel.starts_with("type:") {
            return false;
        }
        if self.admin {
            return true;
        }
        channel.starts_with("room:") && self.may_subscribe(channel) && (!persistent || self.append)
    }

    pub(crate) fn remaining(&self, now_unix: u64) -> Option<u64> {
        self.expires_at.map(|exp| exp.saturating_sub(now_unix))
    }
}
