//! The repository on a real store: load, execute, conflicts, idempotent commands,
//! snapshots and upcasting.

mod common;

use std::sync::Arc;

use bifrost_core::{EventType, ExpectedVersion, NewEvent, StreamName};
use bifrost_sourcing::snapshot::{Snapshot, SnapshotStore, StateSnapshots};
use bifrost_sourcing::{CommandContext, Error, Repository, Upcasters};
use common::{Account, AccountCommand, AccountError, TestStore, deposit, open};
use uuid::Uuid;

fn repo(store: &TestStore) -> Repository<Account> {
    Repository::new(store.events.clone())
}

#[tokio::test]
async fn an_aggregate_without_events_loads_as_default_and_does_not_exist() {
    let store = TestStore::sqlite().await;
    let repo = repo(&store);
    assert!(!repo.exists("1").await.unwrap());
    let loaded = repo.load("1").await.unwrap();
    assert_eq!((loaded.state, loaded.version, loaded.replayed), (Account::default(), 0, 0));
    assert_eq!(loaded.stream.as_str(), "account-1");
}

#[tokio::test]
async fn executed_commands_are_stored_and_folded_on_load() {
    let store = TestStore::sqlite().await;
    let repo = repo(&store);
    let opened = repo.execute("1", &open("1")).await.unwrap();
    assert_eq!(opened.version, 1);
    assert_eq!(opened.appended.as_ref().map(|a| a.first_version), Some(1));
    repo.execute("1", &deposit("1", 30)).await.unwrap();
    let after = repo.execute("1", &deposit("1", 12)).await.unwrap();
    assert_eq!((after.state.balance, after.version, after.attempts), (42, 3, 1));

    assert!(repo.exists("1").await.unwrap());
    let loaded = repo.load("1").await.unwrap();
    assert_eq!(loaded.state, after.state);
    assert_eq!((loaded.version, loaded.replayed, loaded.snapshot_version), (3, 3, None));
    let stored = store
        .events
        .read_stream(&StreamName::new("account-1").unwrap(), 1, Default::default(), 10)
        .await
        .unwrap();
    let types: Vec<_> = stored.events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["account.opened", "account.deposited", "account.deposited"]);
    assert_eq!(stored.events[1].data.as_ref(), br#"{"amount":30}"#, "the payload is the variant's content");
}

#[tokio::test]
async fn a_refused_command_returns_the_domain_error_and_stores_nothing() {
    let store = TestStore::sqlite().await;
    let repo = repo(&store);
    repo.execute("1", &open("1")).await.unwrap();
    let err = repo.execute("1", &AccountCommand::Withdraw { id: "1".into(), amount: 5 }).await.unwrap_err();
    assert_eq!(err.rejection::<AccountError>(), Some(&AccountError::InsufficientFunds { balance: 0 }));
    assert!(!err.is_transient());
    assert_eq!(repo.load("1").await.unwrap().version, 1);
}

#[tokio::test]
async fn two_repositories_racing_on_one_aggregate_never_lose_an_update() {
    for store in [TestStore::memory(), TestStore::sqlite().await] {
        // Two repositories over one store, as two processes would have.
        let first = Arc::new(repo(&store).with_max_attempts(1000));
        let second = Arc::new(repo(&store).with_max_attempts(1000));
        first.execute("shared", &open("shared")).await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..64 {
            let repo = if i % 2 == 0 { first.clone() } else { second.clone() };
            tasks.push(tokio::spawn(async move {
                let mut retried = 0;
                for _ in 0..5 {
                    let done = repo.execute("shared", &deposit("shared", 1)).await.unwrap();
                    retried += done.attempts - 1;
                }
                retried
            }));
        }
        let mut retries = 0;
        for task in tasks {
            retries += task.await.unwrap();
        }
        let loaded = first.load("shared").await.unwrap();
        assert_eq!(loaded.state.balance, 320, "an update was lost ({retries} retries)");
        assert_eq!(loaded.state.deposits, 320);
        assert_eq!(loaded.version, 321);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_retries_every_conflict_is_reported_and_every_success_counted() {
    let store = TestStore::sqlite().await;
    let repo = Arc::new(repo(&store).with_max_attempts(1));
    repo.execute("1", &open("1")).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let repo = repo.clone();
        tasks.push(tokio::spawn(async move { repo.execute("1", &deposit("1", 1)).await }));
    }
    let mut ok = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => ok += 1,
            Err(Error::Conflict { attempts, .. }) => assert_eq!(attempts, 1),
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(repo.load("1").await.unwrap().state.balance, ok, "successes and the balance disagree");
}

#[tokio::test]
async fn a_command_id_makes_executing_twice_harmless() {
    let store = TestStore::sqlite().await;
    let repo = repo(&store);
    repo.execute("1", &open("1")).await.unwrap();
    let context = CommandContext::with_id(Uuid::now_v7()).correlated("c-1");
    let first = repo.execute_with("1", &deposit("1", 10), &context).await.unwrap();
    assert!(!first.already_applied);
    // Re-sent before anything else happened: the store answers with the original append.
    let second = repo.execute_with("1", &deposit("1", 10), &context).await.unwrap();
    assert!(second.already_applied);
    repo.execute("1", &deposit("1", 5)).await.unwrap();
    // Re-sent after the stream moved on: still applied once.
    let third = repo.execute_with("1", &deposit("1", 10), &context).await.unwrap();
    assert!(third.already_applied);
    let loaded = repo.load("1").await.unwrap();
    assert_eq!((loaded.state.balance, loaded.version), (15, 3));
    let event =
        store.events.read_stream(&loaded.stream, 2, Default::default(), 1).await.unwrap().events.remove(0);
    let metadata = event.metadata().unwrap();
    assert_eq!(metadata.correlation_id.as_deref(), Some("c-1"));
    assert_eq!(metadata.causation_id, context.command_id.map(|id| id.to_string()));
}

#[tokio::test]
async fn snapshots_shorten_loads_and_give_the_same_state() {
    let store = TestStore::sqlite().await;
    let snapshots = Arc::new(StateSnapshots::new(store.state.clone()));
    let repo = repo(&store).with_snapshots(snapshots.clone(), 10, 1);
    repo.execute("1", &open("1")).await.unwrap();
    for amount in 1..=24 {
        repo.execute("1", &deposit("1", amount)).await.unwrap();
    }
    let loaded = repo.load("1").await.unwrap();
    assert_eq!(loaded.snapshot_version, Some(20));
    assert_eq!((loaded.replayed, loaded.version), (5, 25));
    let replayed = Repository::<Account>::new(store.events.clone()).load("1").await.unwrap();
    assert_eq!(replayed.replayed, 25);
    assert_eq!(loaded.state, replayed.state);
    assert_eq!(loaded.state.balance, (1..=24).sum::<i64>());
}

#[tokio::test]
async fn a_snapshot_that_does_not_decode_or_has_another_schema_falls_back_to_full_replay() {
    let store = TestStore::sqlite().await;
    let snapshots = Arc::new(StateSnapshots::new(store.state.clone()));
    let repo = repo(&store).with_snapshots(snapshots.clone(), 1000, 2);
    repo.execute("1", &open("1")).await.unwrap();
    repo.execute("1", &deposit("1", 7)).await.unwrap();
    let stream = StreamName::new("account-1").unwrap();

    let garbage =
        Snapshot { stream: stream.clone(), version: 2, schema_version: 2, state: "not json".into() };
    snapshots.save(&garbage).await.unwrap();
    let loaded = repo.load("1").await.unwrap();
    assert_eq!((loaded.snapshot_version, loaded.replayed, loaded.state.balance), (None, 2, 7));

    let old_schema = Snapshot {
        stream: stream.clone(),
        version: 2,
        schema_version: 1,
        state: serde_json::to_vec(&Account { balance: 999, ..Account::default() }).unwrap().into(),
    };
    snapshots.save(&old_schema).await.unwrap();
    let loaded = repo.load("1").await.unwrap();
    assert_eq!((loaded.snapshot_version, loaded.state.balance), (None, 7));

    repo.snapshot("1").await.unwrap();
    let loaded = repo.load("1").await.unwrap();
    assert_eq!((loaded.snapshot_version, loaded.replayed, loaded.state.balance), (Some(2), 0, 7));
}

#[tokio::test]
async fn a_v1_event_is_upcast_to_v2_before_it_is_decoded() {
    let store = TestStore::sqlite().await;
    let stream = StreamName::new("account-9").unwrap();
    // Version 1 of account.deposited carried the amount in cents under another name, and
    // version 2 of account.opened once had a "name" field.
    let v1 = |t: &str, data: &str| {
        NewEvent::new(EventType::new(t).unwrap(), data.as_bytes().to_vec()).with_schema_version(1)
    };
    store
        .events
        .append(
            stream.clone(),
            ExpectedVersion::NoStream,
            vec![v1("account.opened", r#"{"name":"ada"}"#), v1("account.deposited", r#"{"cents":1250}"#)],
        )
        .await
        .unwrap();
    let upcasters = Upcasters::new()
        .register("account.opened", 1, |mut v| {
            let name = v.get_mut("name").map(serde_json::Value::take).ok_or("no name")?;
            Ok(serde_json::json!({ "owner": name }))
        })
        .register("account.deposited", 1, |v| {
            let cents = v.get("cents").and_then(serde_json::Value::as_i64).ok_or("no cents")?;
            Ok(serde_json::json!({ "euros": cents / 100 }))
        })
        .register("account.deposited", 2, |v| {
            let euros = v.get("euros").and_then(serde_json::Value::as_i64).ok_or("no euros")?;
            Ok(serde_json::json!({ "amount": euros }))
        });
    let without = Repository::<Account>::new(store.events.clone()).load("9").await.unwrap_err();
    assert!(matches!(without, Error::Decode { schema_version: 1, .. }), "{without}");

    let repo = repo(&store).with_upcasters(upcasters.clone());
    let loaded = repo.load("9").await.unwrap();
    assert_eq!(loaded.state.owner.as_deref(), Some("ada"));
    assert_eq!(loaded.state.balance, 12);

    // The log itself is untouched.
    let raw = store.events.read_stream(&stream, 2, Default::default(), 1).await.unwrap().events.remove(0);
    assert_eq!((raw.schema_version, raw.data.as_ref()), (1, &br#"{"cents":1250}"#[..]));
    let upcast = upcasters.upcast(raw).unwrap();
    assert_eq!((upcast.schema_version, upcast.data.as_ref()), (3, &br#"{"amount":12}"#[..]));
}

#[tokio::test]
async fn a_failing_upcaster_is_reported_with_its_type_and_version() {
    let store = TestStore::sqlite().await;
    let repo = repo(&store);
    let v1 = NewEvent::new(EventType::new("account.opened").unwrap(), br#"{"name":"ada"}"#.to_vec());
    store
        .events
        .append(StreamName::new("account-1").unwrap(), ExpectedVersion::NoStream, vec![v1])
        .await
        .unwrap();
    let failing = Upcasters::new().register("account.opened", 1, |_| Err("unsupported shape".into()));
    let err = repo.clone().with_upcasters(failing).load("1").await.unwrap_err();
    assert!(
        matches!(&err, Error::Upcast { event_type, from_version: 1, reason } if event_type == "account.opened" && reason == "unsupported shape"),
        "{err}"
    );
}

#[tokio::test]
async fn prepare_decides_without_storing_and_its_append_expects_the_loaded_version() {
    let store = TestStore::sqlite().await;
    let repo = repo(&store);
    repo.execute("1", &open("1")).await.unwrap();
    let prepared = repo.prepare("1", &deposit("1", 5), &CommandContext::default()).await.unwrap();
    assert_eq!(prepared.state.balance, 5);
    let append = prepared.append.expect("a deposit has an event");
    assert_eq!(append.expected, ExpectedVersion::Exact(1));
    assert_eq!(repo.load("1").await.unwrap().version, 1, "prepare stored something");
    // A competing write makes the prepared append stale.
    repo.execute("1", &deposit("1", 1)).await.unwrap();
    let stale = store.events.append_many(vec![append]).await.unwrap_err();
    assert!(matches!(stale, bifrost_core::Error::WrongExpectedVersion(_)));

    // A command that changes nothing prepares no append (an empty one would fail the
    // application's transaction); one whose id was executed prepares none either.
    let withdraw_nothing = AccountCommand::Withdraw { id: "1".into(), amount: 0 };
    let nothing = repo.prepare("1", &withdraw_nothing, &CommandContext::default()).await.unwrap();
    assert!(nothing.append.is_none() && !nothing.already_applied);
    let context = CommandContext::with_id(Uuid::now_v7());
    repo.execute_with("1", &deposit("1", 2), &context).await.unwrap();
    let again = repo.prepare("1", &deposit("1", 2), &context).await.unwrap();
    assert!(again.append.is_none() && again.already_applied);
}

#[tokio::test]
async fn a_command_refused_by_the_state_it_produced_counts_as_applied_when_resent() {
    let store = TestStore::sqlite().await;
    let repo = repo(&store);
    let context = CommandContext::with_id(Uuid::now_v7());
    repo.execute_with("1", &open("1"), &context).await.unwrap();
    repo.execute("1", &deposit("1", 3)).await.unwrap();
    // A second "open" is refused by an open account, but this one is the same command.
    let resent = repo.execute_with("1", &open("1"), &context).await.unwrap();
    assert!(resent.already_applied);
    assert_eq!((resent.version, resent.state.balance), (2, 3));
    // A different command that is refused the same way is a refusal.
    let other =
        repo.execute_with("1", &open("1"), &CommandContext::with_id(Uuid::now_v7())).await.unwrap_err();
    assert_eq!(other.rejection::<AccountError>(), Some(&AccountError::AlreadyOpen));
}

#[tokio::test]
async fn an_event_the_upcasters_cannot_bring_to_the_current_version_is_refused_not_misread() {
    let store = TestStore::sqlite().await;
    let stream = StreamName::new("account-7").unwrap();
    let at = |version: u32, data: &str| {
        NewEvent::new(EventType::new("account.deposited").unwrap(), data.as_bytes().to_vec())
            .with_schema_version(version)
    };
    let opened = NewEvent::new(EventType::new("account.opened").unwrap(), br#"{"owner":"ada"}"#.to_vec())
        .with_schema_version(2);
    store
        .events
        .append(stream.clone(), ExpectedVersion::NoStream, vec![opened, at(1, r#"{"cents":100}"#)])
        .await
        .unwrap();
    // Only the v1 → v2 step is known: the event stops at v2, a version the code does not read.
    let gap = Upcasters::new().register("account.deposited", 1, Ok);
    let err = repo(&store).with_upcasters(gap).load("7").await.unwrap_err();
    assert!(
        matches!(&err, Error::Decode { schema_version: 2, reason, .. } if reason.contains("reads version 3")),
        "{err}"
    );

    // An event written by newer code (v4) is not decoded as v3 either.
    let newer = StreamName::new("account-8").unwrap();
    let opened = NewEvent::new(EventType::new("account.opened").unwrap(), br#"{"owner":"bo"}"#.to_vec())
        .with_schema_version(2);
    store
        .events
        .append(newer, ExpectedVersion::NoStream, vec![opened, at(4, r#"{"amount":1,"memo":"x"}"#)])
        .await
        .unwrap();
    let err = repo(&store).load("8").await.unwrap_err();
    assert!(matches!(err, Error::Decode { schema_version: 4, .. }), "{err}");
}

#[tokio::test]
async fn a_command_on_a_soft_deleted_aggregate_is_stored_after_its_last_version() {
    let store = TestStore::sqlite().await;
    let snapshots = Arc::new(StateSnapshots::new(store.state.clone()));
    let repo = repo(&store).with_snapshots(snapshots, 2, 1);
    repo.execute("1", &open("1")).await.unwrap();
    repo.execute("1", &deposit("1", 5)).await.unwrap();
    let stream = StreamName::new("account-1").unwrap();
    store.events.delete_stream(&stream, bifrost_core::DeleteMode::Soft).await.unwrap();
    assert!(!repo.exists("1").await.unwrap());
    // The snapshot at version 2 no longer describes a stream that reads as absent.
    let loaded = repo.load("1").await.unwrap();
    assert_eq!((loaded.version, loaded.snapshot_version, loaded.state.balance), (0, None, 0));

    let reopened = repo.execute("1", &open("1")).await.unwrap();
    assert!(!reopened.already_applied, "a new version after a soft delete is no replay");
    assert_eq!(reopened.version, 3, "versions continue after a soft delete");
    assert_eq!(reopened.appended.map(|a| a.first_version), Some(3));
}

/// An aggregate whose type would not be its streams' category.
#[derive(Debug, Default)]
struct Dashed;

impl bifrost_sourcing::Aggregate for Dashed {
    const TYPE: &'static str = "bank-account";
    type Event = common::AccountEvent;
    type Command = ();
    type Error = AccountError;

    fn decide(&self, (): &()) -> Result<Vec<common::AccountEvent>, AccountError> {
        Ok(vec![])
    }

    fn evolve(self, _: &common::AccountEvent) -> Self {
        self
    }
}

#[tokio::test]
async fn an_aggregate_type_with_a_dash_is_refused() {
    let store = TestStore::memory();
    let err = Repository::<Dashed>::new(store.events.clone()).load("1").await.unwrap_err();
    assert!(err.to_string().contains("bank-account"), "{err}");
}
