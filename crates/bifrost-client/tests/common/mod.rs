//! A real server on an ephemeral port, for the client's tests.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bifrost_client::Client;
use bifrost_core::{DurableStore, InMemoryStore};
use bifrost_server::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// A running server; dropping it (or [`TestServer::stop`]) shuts it down.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    /// Serves `store` on `addr` (`127.0.0.1:0` for any free port).
    pub async fn start(store: Arc<dyn DurableStore>, config: ServerConfig, addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind the test server");
        let addr = listener.local_addr().unwrap();
        let groups = bifrost_bus::groups::open(Arc::clone(&store)).await.expect("open the groups");
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            // A dropped sender stops the server too.
            let _ = stopped.await;
        };
        let task = tokio::spawn(bifrost_server::serve(listener, store, groups, None, config, None, shutdown));
        Self { addr, stop: Some(stop), task: Some(task) }
    }

    /// A fresh in-memory store on any free port.
    pub async fn memory(config: ServerConfig) -> Self {
        Self::start(InMemoryStore::shared(), config, any_port()).await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn client(&self) -> Client {
        Client::new(&self.url()).unwrap()
    }

    /// Shuts down gracefully (ending live streams) and waits until the store is closed.
    pub async fn stop(mut self) {
        drop(self.stop.take());
        if let Some(task) = self.task.take() {
            task.await.expect("the server task").expect("the server stops cleanly");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        drop(self.stop.take());
    }
}

pub fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A TCP forwarder in front of a server whose connections can be cut at will, while the
/// server and its store keep running: a dropped connection as a client meets it.
pub struct CutProxy {
    pub addr: SocketAddr,
    cut: watch::Sender<u64>,
    /// Every connection task holds a clone of the current generation's sender; a cut
    /// starts a new generation and waits until the old one's are all gone.
    generation: Arc<Mutex<(mpsc::Sender<()>, mpsc::Receiver<()>)>>,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl CutProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind(any_port()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, _) = watch::channel(0u64);
        let generation = Arc::new(Mutex::new(mpsc::channel(1)));
        let accepted = Arc::new(AtomicUsize::new(0));
        let task = {
            let (cuts, generation, accepted) = (cut.clone(), Arc::clone(&generation), Arc::clone(&accepted));
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let mut cut = cuts.subscribe();
                    let alive = generation.lock().unwrap().0.clone();
                    tokio::spawn(async move {
                        let _alive = alive;
                        let Ok(mut outbound) = TcpStream::connect(upstream).await else { return };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = cut.changed() => {}
                        }
                    });
                }
            })
        };
        Self { addr, cut, generation, accepted, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Drops every open connection and returns once they are closed; later connections go
    /// through again.
    pub async fn cut(&self) {
        let (old_sender, mut old) =
            std::mem::replace(&mut *self.generation.lock().unwrap(), mpsc::channel(1));
        drop(old_sender);
        self.cut.send_modify(|n| *n += 1);
        // Every sender of the old generation is dropped once its connection is closed.
        let _ = old.recv().await;
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
