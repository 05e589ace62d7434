//! One module per subcommand.

pub(crate) mod append;
pub(crate) mod bench;
pub(crate) mod dlq;
pub(crate) mod groups;
pub(crate) mod keys;
pub(crate) mod read;
pub(crate) mod realtime;
pub(crate) mod serve;
pub(crate) mod tail;
pub(crate) mod webhooks;
pub(crate) mod ws;
