//! A bank account aggregate and store helpers shared by the toolkit's tests.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use bifrost_core::{DurableStore, EventStore, InMemoryStore, StateStore};
use bifrost_sourcing::{Aggregate, AggregateCommand, Command, DomainEvent};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub owner: Option<String>,
    pub balance: i64,
    pub deposits: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum AccountEvent {
    #[serde(rename = "account.opened")]
    Opened { owner: String },
    #[serde(rename = "account.deposited")]
    Deposited { amount: i64 },
    #[serde(rename = "account.withdrew")]
    Withdrew { amount: i64 },
}

impl DomainEvent for AccountEvent {}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AccountCommand {
    Open { id: String, owner: String },
    Deposit { id: String, amount: i64 },
    Withdraw { id: String, amount: i64 },
}

impl Command for AccountCommand {
    const TYPE: &'static str = "account";
}

impl AggregateCommand for AccountCommand {
    fn aggregate_id(&self) -> &str {
        match self {
            Self::Open { id, .. } | Self::Deposit { id, .. } | Self::Withdraw { id, .. } => id,
        }
    }
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum AccountError {
    #[error("the account is already open")]
    AlreadyOpen,
    #[error("the account is not open")]
    NotOpen,
    #[error("amounts must be positive")]
    NotPositive,
    #[error("insufficient funds: the balance is {balance}")]
    InsufficientFunds { balance: i64 },
}

impl Aggregate for Account {
    const TYPE: &'static str = "account";
    type Event = AccountEvent;
    type Command = AccountCommand;
    type Error = AccountError;

    fn decide(&self, command: &AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        match command {
            AccountCommand::Open { owner, .. } => {
                if self.owner.is_some() {
                    return Err(AccountError::AlreadyOpen);
                }
                Ok(vec![AccountEvent::Opened { owner: owner.clone() }])
            }
            AccountCommand::Deposit { amount, .. } => {
                if self.owner.is_none() {
                    return Err(AccountError::NotOpen);
                }
                if *amount <= 0 {
                    return Err(AccountError::NotPositive);
                }
                Ok(vec![AccountEvent::Deposited { amount: *amount }])
            }
            AccountCommand::Withdraw { amount, .. } => {
                if *amount > self.balance {
                    return Err(AccountError::InsufficientFunds { balance: self.balance });
                }
                Ok(vec![AccountEvent::Withdrew { amount: *amount }])
            }
        }
    }

    fn evolve(mut self, event: &AccountEvent) -> Self {
        match event {
            AccountEvent::Opened { owner } => self.owner = Some(owner.clone()),
            AccountEvent::Deposited { amount } => {
                self.balance += amount;
                self.deposits += 1;
            }
            AccountEvent::Withdrew { amount } => self.balance -= amount,
        }
        self
    }
}

pub fn open(id: &str) -> AccountCommand {
    AccountCommand::Open { id: id.into(), owner: format!("owner of {id}") }
}

pub fn deposit(id: &str, amount: i64) -> AccountCommand {
    AccountCommand::Deposit { id: id.into(), amount }
}

/// A store under test, with what must outlive it.
pub struct TestStore {
    pub events: Arc<dyn EventStore>,
    pub state: Arc<dyn StateStore>,
    pub dir: Option<tempfile::TempDir>,
}

impl TestStore {
    pub fn memory() -> Self {
        let store = Arc::new(InMemoryStore::new());
        Self::from_durable(store, None)
    }

    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(open_sqlite(dir.path()));
        Self::from_durable(store, Some(dir))
    }

    /// The same SQLite directory opened again, as after a restart.
    pub async fn reopen(self) -> Self {
        let dir = self.dir.expect("only a SQLite store can be reopened");
        self.events.close().await.expect("close");
        drop(self.events);
        drop(self.state);
        let store = Arc::new(open_sqlite(dir.path()));
        Self::from_durable(store, Some(dir))
    }

    fn from_durable<S: DurableStore>(store: Arc<S>, dir: Option<tempfile::TempDir>) -> Self {
        Self { events: store.clone(), state: store, dir }
    }
}

fn open_sqlite(dir: &std::path::Path) -> bifrost_sqlite::SqliteStore {
    bifrost_sqlite::SqliteStore::open(dir, bifrost_sqlite::SqliteOptions::default()).expect("open sqlite")
}
