//! The outbox with the toolkit: a command decided by the repository is stored in the same
//! SQLite transaction as the application's own row — both or neither.

mod common;

use std::sync::Arc;

use bifrost_sourcing::{CommandContext, Repository};
use bifrost_sqlite::rusqlite;
use common::{Account, deposit, open};

fn rows(store: &bifrost_sqlite::SqliteStore) -> i64 {
    let conn = rusqlite::Connection::open(store.path()).expect("open the database file");
    conn.query_row("SELECT count(*) FROM app_receipts", [], |r| r.get(0)).unwrap_or(0)
}

#[tokio::test]
async fn a_prepared_command_commits_or_rolls_back_with_the_applications_row() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(bifrost_sqlite::SqliteStore::open(dir.path(), Default::default()).unwrap());
    let accounts = Repository::<Account>::new(store.clone());
    accounts.execute("1", &open("1")).await.unwrap();

    // Committed: the receipt row and the deposit event.
    let prepared = accounts.prepare("1", &deposit("1", 25), &CommandContext::default()).await.unwrap();
    let (results, ()) = store
        .transact(move |conn| {
            conn.execute_batch("CREATE TABLE IF NOT EXISTS app_receipts (account TEXT, amount INTEGER)")?;
            conn.execute("INSERT INTO app_receipts VALUES ('1', 25)", [])?;
            Ok::<_, rusqlite::Error>((prepared.append.into_iter().collect(), ()))
        })
        .await
        .unwrap();
    assert_eq!(results[0].last_version, 2);
    assert_eq!((rows(&store), accounts.load("1").await.unwrap().state.balance), (1, 25));

    // The application fails after its insert: neither the row nor the event stays.
    let prepared = accounts.prepare("1", &deposit("1", 40), &CommandContext::default()).await.unwrap();
    let failed = store
        .transact(move |conn| {
            conn.execute("INSERT INTO app_receipts VALUES ('1', 40)", [])?;
            let _events = prepared.append;
            Err::<(Vec<_>, ()), _>(rusqlite::Error::InvalidQuery)
        })
        .await;
    assert!(failed.is_err());
    assert_eq!((rows(&store), accounts.load("1").await.unwrap().version), (1, 2));

    // The aggregate moved on since prepare: the stale append rolls the row back too.
    let stale = accounts.prepare("1", &deposit("1", 7), &CommandContext::default()).await.unwrap();
    accounts.execute("1", &deposit("1", 1)).await.unwrap();
    let conflict = store
        .transact(move |conn| {
            conn.execute("INSERT INTO app_receipts VALUES ('1', 7)", [])?;
            Ok::<_, rusqlite::Error>((stale.append.into_iter().collect(), ()))
        })
        .await;
    assert!(conflict.is_err());
    let loaded = accounts.load("1").await.unwrap();
    assert_eq!((rows(&store), loaded.version, loaded.state.balance), (1, 3, 26));
}
