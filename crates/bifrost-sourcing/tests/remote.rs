//! The toolkit against a remote server: the repository and a projection run over
//! `bifrost-client`, unchanged, with the same guarantees as in process.

mod common;

use std::sync::Arc;

use bifrost_client::Client;
use bifrost_core::{DurableStore, EventStore, InMemoryStore, LogFilter, MemoryState, RecordedEvent};
use bifrost_sourcing::{ProjectionRunner, Repository, View, ViewProjection};
use common::{Account, AccountEvent, deposit, open};
use serde::{Deserialize, Serialize};

/// Serves a fresh in-memory store on a free port; the server stops when the sender drops.
async fn serve() -> (String, tokio::sync::oneshot::Sender<()>) {
    let store: Arc<dyn DurableStore> = Arc::new(InMemoryStore::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("local address"));
    let groups = bifrost_bus::groups::open(store.clone()).await.expect("open the groups");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        let _ = stopped.await;
    };
    tokio::spawn(bifrost_server::serve(listener, store, groups, None, Default::default(), None, shutdown));
    (url, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_remote_repositories_racing_on_one_aggregate_never_lose_an_update() {
    let (url, _server) = serve().await;
    // Two clients, as two application processes would hold.
    let first = Repository::<Account>::new(Arc::new(Client::new(&url).unwrap())).with_max_attempts(1000);
    let second = Repository::<Account>::new(Arc::new(Client::new(&url).unwrap())).with_max_attempts(1000);
    first.execute("remote", &open("remote")).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let repo = if i % 2 == 0 { first.clone() } else { second.clone() };
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                repo.execute("remote", &deposit("remote", 1)).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let loaded = second.load("remote").await.unwrap();
    assert_eq!((loaded.state.balance, loaded.version), (80, 81));
    assert!(first.exists("remote").await.unwrap());
    assert!(!first.exists("nobody").await.unwrap());
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct Balance {
    balance: i64,
}

impl View for Balance {
    type Event = AccountEvent;

    fn key(_: &AccountEvent, recorded: &RecordedEvent) -> Option<String> {
        Some(recorded.stream.as_str().to_owned())
    }

    fn evolve(view: Option<Self>, event: &AccountEvent, _: &RecordedEvent) -> Option<Self> {
        let mut view = view.unwrap_or_default();
        match event {
            AccountEvent::Deposited { amount } => view.balance += amount,
            AccountEvent::Withdrew { amount } => view.balance -= amount,
            AccountEvent::Opened { .. } => {}
        }
        Some(view)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_reads_a_remote_log_live() {
    let (url, _server) = serve().await;
    let client: Arc<dyn EventStore> = Arc::new(Client::new(&url).unwrap());
    let accounts = Repository::<Account>::new(client.clone());
    for id in ["a", "b"] {
        accounts.execute(id, &open(id)).await.unwrap();
        accounts.execute(id, &deposit(id, 10)).await.unwrap();
    }
    let views = Arc::new(ViewProjection::<Balance>::new(
        "balances",
        Arc::new(MemoryState::new()),
        LogFilter::default().with_types(["account.#"]).unwrap(),
    ));
    let running = ProjectionRunner::new(client.clone(), views.clone()).start();
    let last = accounts.execute("a", &deposit("a", 5)).await.unwrap().appended.unwrap().last_position;
    let reached = tokio::time::timeout(std::time::Duration::from_secs(10), running.wait_for(last)).await;
    assert!(reached.is_ok(), "the projection did not follow the remote log: {:?}", running.status());
    running.stop().await;
    assert_eq!(views.get("account-a").await.unwrap(), Some(Balance { balance: 15 }));
    assert_eq!(views.get("account-b").await.unwrap(), Some(Balance { balance: 10 }));
}
