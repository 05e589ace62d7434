//! A bank account: a small aggregate with snapshots and an upcaster.
//!
//! The account's history starts with events written by an older version of the code, whose
//! `account.deposited` carried `{"cents": 1250}`; today's code reads `{"amount_cents": 1250,
//! "reference": null}` (schema version 2). An upcaster rewrites the old shape on every read,
//! the log stays as it was. A snapshot every 100 events keeps loads short.
//!
//! Run it: `cargo run --example bank_account`

use std::sync::Arc;

use bifrost_core::{EventStore, EventType, ExpectedVersion, NewEvent};
use bifrost_sourcing::{Aggregate, DomainEvent, Repository, StateSnapshots, Upcasters};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Account {
    pub(crate) open: bool,
    pub(crate) balance_cents: i64,
    pub(crate) transactions: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub(crate) enum AccountEvent {
    #[serde(rename = "account.opened")]
    Opened { holder: String },
    #[serde(rename = "account.deposited")]
    Deposited { amount_cents: i64, reference: Option<String> },
    #[serde(rename = "account.withdrawn")]
    Withdrawn { amount_cents: i64 },
}

impl DomainEvent for AccountEvent {
    fn schema_version(event_type: &str) -> u32 {
        match event_type {
            "account.deposited" => 2,
            _ => 1,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum AccountCommand {
    Open { holder: String },
    Deposit { amount_cents: i64, reference: Option<String> },
    Withdraw { amount_cents: i64 },
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub(crate) enum AccountError {
    #[error("the account is not open")]
    NotOpen,
    #[error("the account is already open")]
    AlreadyOpen,
    #[error("amounts must be positive")]
    NotPositive,
    #[error("insufficient funds: {balance_cents} cents available")]
    InsufficientFunds { balance_cents: i64 },
}

impl Aggregate for Account {
    const TYPE: &'static str = "account";
    type Event = AccountEvent;
    type Command = AccountCommand;
    type Error = AccountError;

    fn decide(&self, command: &AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        match command {
            AccountCommand::Open { .. } if self.open => Err(AccountError::AlreadyOpen),
            AccountCommand::Open { holder } => Ok(vec![AccountEvent::Opened { holder: holder.clone() }]),
            _ if !self.open => Err(AccountError::NotOpen),
            AccountCommand::Deposit { amount_cents, .. } | AccountCommand::Withdraw { amount_cents }
                if *amount_cents <= 0 =>
            {
                Err(AccountError::NotPositive)
            }
            AccountCommand::Deposit { amount_cents, reference } => Ok(vec![AccountEvent::Deposited {
                amount_cents: *amount_cents,
                reference: reference.clone(),
            }]),
            AccountCommand::Withdraw { amount_cents } if *amount_cents > self.balance_cents => {
                Err(AccountError::InsufficientFunds { balance_cents: self.balance_cents })
            }
            AccountCommand::Withdraw { amount_cents } => {
                Ok(vec![AccountEvent::Withdrawn { amount_cents: *amount_cents }])
            }
        }
    }

    fn evolve(mut self, event: &AccountEvent) -> Self {
        match event {
            AccountEvent::Opened { .. } => self.open = true,
            AccountEvent::Deposited { amount_cents, .. } => {
                self.balance_cents += amount_cents;
                self.transactions += 1;
            }
            AccountEvent::Withdrawn { amount_cents } => {
                self.balance_cents -= amount_cents;
                self.transactions += 1;
            }
        }
        self
    }
}

/// `account.deposited` v1 (`{"cents": n}`) → v2 (`{"amount_cents": n, "reference": null}`).
pub(crate) fn upcasters() -> Upcasters {
    Upcasters::new().register("account.deposited", 1, |v1| {
        let cents =
            v1.get("cents").and_then(serde_json::Value::as_i64).ok_or("a v1 deposit needs integer cents")?;
        Ok(serde_json::json!({ "amount_cents": cents, "reference": null }))
    })
}

/// What the example found.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) account: Account,
    pub(crate) version: u64,
    /// Events folded by a load without a snapshot, and with one.
    pub(crate) replayed_without_snapshot: u64,
    pub(crate) replayed_with_snapshot: u64,
    pub(crate) snapshot_version: Option<u64>,
    pub(crate) refusal: String,
    /// An account opened by today's code.
    pub(crate) newcomer: Account,
}

pub(crate) async fn run(store: Arc<bifrost_sqlite::SqliteStore>) -> bifrost_sourcing::Result<Report> {
    let events: Arc<dyn EventStore> = store.clone();
    // The history an older release wrote: opened, then two v1 deposits.
    let legacy = |t: &str, data: &str| -> bifrost_sourcing::Result<NewEvent> {
        Ok(NewEvent::new(EventType::new(t)?, data.as_bytes().to_vec()).with_schema_version(1))
    };
    events
        .append(
            Account::stream("ada")?,
            ExpectedVersion::NoStream,
            vec![
                legacy("account.opened", r#"{"holder":"Ada"}"#)?,
                legacy("account.deposited", r#"{"cents":1250}"#)?,
                legacy("account.deposited", r#"{"cents":750}"#)?,
            ],
        )
        .await?;

    let snapshots = Arc::new(StateSnapshots::new(store.clone()));
    let accounts = Repository::<Account>::new(events.clone())
        .with_upcasters(upcasters())
        .with_snapshots(snapshots, 100, 1);
    for i in 0..250 {
        let reference = Some(format!("salary-{i}"));
        accounts.execute("ada", &AccountCommand::Deposit { amount_cents: 100, reference }).await?;
    }
    accounts.execute("ada", &AccountCommand::Withdraw { amount_cents: 5_000 }).await?;
    let refusal = match accounts.execute("ada", &AccountCommand::Withdraw { amount_cents: 1_000_000 }).await {
        Err(e) => e.to_string(),
        Ok(_) => String::from("(the overdraft was accepted)"),
    };

    accounts.execute("grace", &AccountCommand::Open { holder: "Grace".into() }).await?;
    let newcomer = accounts
        .execute("grace", &AccountCommand::Deposit { amount_cents: 100, reference: None })
        .await?
        .state;

    let with_snapshot = accounts.load("ada").await?;
    let without_snapshot = Repository::<Account>::new(events).with_upcasters(upcasters()).load("ada").await?;
    assert_eq!(with_snapshot.state, without_snapshot.state, "a snapshot must not change the state");
    Ok(Report {
        account: with_snapshot.state,
        version: with_snapshot.version,
        replayed_without_snapshot: without_snapshot.replayed,
        replayed_with_snapshot: with_snapshot.replayed,
        snapshot_version: with_snapshot.snapshot_version,
        refusal,
        newcomer,
    })
}

#[cfg_attr(test, allow(dead_code))]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let store = bifrost_examples::open_store(dir.path())?;
    let report = run(store.clone()).await?;
    println!(
        "balance {} cents after {} transactions (stream version {})",
        report.account.balance_cents, report.account.transactions, report.version
    );
    println!(
        "load without a snapshot folded {} events; with the snapshot at version {:?}, {}",
        report.replayed_without_snapshot, report.snapshot_version, report.replayed_with_snapshot
    );
    println!("an overdraft: {}", report.refusal);
    println!("a new account: {} cents", report.newcomer.balance_cents);
    store.close().await?;
    Ok(())
}
