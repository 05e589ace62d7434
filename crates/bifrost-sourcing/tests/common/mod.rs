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

/// `account.opened` is at version 2 and `account.deposited` at version 3: older versions
/// reach them through upcasters (see the repository tests).
impl DomainEvent for AccountEvent {
    fn schema_version(event_type: &str) -> u32 {
        match event_type {
            "account.opened" => 2,
            "account.deposited" => 3,
            _ => 1,
        }
    }
}

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
            // Withdrawing nothing changes nothing.
            AccountCommand::Withdraw { amount: 0, .. } => Ok(vec![]),
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

/// The events of `stream` in order, none when it does not exist.
pub async fn stream_events(store: &Arc<dyn EventStore>, stream: &str) -> Vec<bifrost_core::RecordedEvent> {
    let stream = bifrost_core::StreamName::new(stream).expect("stream name");
    match store.read_stream(&stream, 1, bifrost_core::Direction::Forward, 10_000).await {
        Ok(slice) => slice.events,
        Err(bifrost_core::Error::StreamNotFound(_)) => Vec::new(),
        Err(e) => panic!("reading {stream}: {e}"),
    }
}

/// The head of the log now.
pub fn head(store: &Arc<dyn EventStore>) -> bifrost_core::Position {
    *store.head().borrow()
}

/// How long a test waits for something that should happen (a generous bound, so a loaded
/// machine does not fail the test; nothing asserts that it was quick).
pub const DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Waits, within [`DEADLINE`], for `future`; `what` names it when it does not come.
pub async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, future).await {
        Ok(value) => value,
        Err(_) => panic!("gave up waiting for {what}"),
    }
}

/// Polls `check` until it answers `Some`, within [`DEADLINE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    within(what, async {
        loop {
            if let Some(value) = check().await {
                return value;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
}

/// A small shop for the saga, command bus and harness tests: orders, stock reservations
/// and the checkout saga that ties them together.
pub mod shop {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use async_trait::async_trait;
    use bifrost_core::{LogFilter, RecordedEvent};
    use bifrost_sourcing::event::decode;
    use bifrost_sourcing::{
        Aggregate, AggregateCommand, Command, CommandBus, CommandContext, CommandEnvelope, CommandHandler,
        DomainEvent, Reaction, Repository, Saga, Timeout,
    };
    use serde::{Deserialize, Serialize};

    use super::TestStore;

    /// An item the warehouse refuses to reserve.
    pub const OUT_OF_STOCK: &str = "unobtainium";
    /// Items starting with this are back-ordered: accepted, never reserved.
    pub const BACKORDER: &str = "backorder";
    /// Items starting with this are gift-wrapped first, by a command no handler serves.
    pub const GIFT: &str = "gift";
    /// The checkout's timeout.
    pub const EXPIRE: &str = "expire";

    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
    pub struct Order {
        pub item: Option<String>,
        pub cancelled: Option<String>,
    }

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "type", content = "data")]
    pub enum OrderEvent {
        #[serde(rename = "shop.order_placed")]
        Placed { item: String },
        #[serde(rename = "shop.order_cancelled")]
        Cancelled { reason: String },
    }

    impl DomainEvent for OrderEvent {}

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub enum OrderCommand {
        Place { order: String, item: String },
        Cancel { order: String, reason: String },
    }

    impl Command for OrderCommand {
        const TYPE: &'static str = "shop.order";
    }

    impl AggregateCommand for OrderCommand {
        fn aggregate_id(&self) -> &str {
            match self {
                Self::Place { order, .. } | Self::Cancel { order, .. } => order,
            }
        }
    }

    #[derive(Debug, PartialEq, thiserror::Error)]
    pub enum OrderError {
        #[error("the order was already placed")]
        AlreadyPlaced,
        #[error("no such order")]
        NotPlaced,
    }

    impl Aggregate for Order {
        const TYPE: &'static str = "order";
        type Event = OrderEvent;
        type Command = OrderCommand;
        type Error = OrderError;

        fn decide(&self, command: &OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
            match command {
                OrderCommand::Place { item, .. } => match self.item {
                    Some(_) => Err(OrderError::AlreadyPlaced),
                    None => Ok(vec![OrderEvent::Placed { item: item.clone() }]),
                },
                OrderCommand::Cancel { reason, .. } => match (&self.item, &self.cancelled) {
                    (None, _) => Err(OrderError::NotPlaced),
                    // Cancelling twice changes nothing.
                    (Some(_), Some(_)) => Ok(Vec::new()),
                    (Some(_), None) => Ok(vec![OrderEvent::Cancelled { reason: reason.clone() }]),
                },
            }
        }

        fn evolve(mut self, event: &OrderEvent) -> Self {
            match event {
                OrderEvent::Placed { item } => self.item = Some(item.clone()),
                OrderEvent::Cancelled { reason } => self.cancelled = Some(reason.clone()),
            }
            self
        }
    }

    /// The stock held for one order. Every reservation holds one more unit: only the
    /// command id keeps a command sent twice from holding two.
    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
    pub struct Stock {
        pub reserved: u32,
        pub backordered: u32,
    }

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "type", content = "data")]
    pub enum StockEvent {
        #[serde(rename = "shop.stock_reserved")]
        Reserved { order: String, item: String },
        #[serde(rename = "shop.stock_backordered")]
        Backordered { order: String, item: String },
    }

    impl DomainEvent for StockEvent {}

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct ReserveStock {
        pub order: String,
        pub item: String,
    }

    impl Command for ReserveStock {
        const TYPE: &'static str = "shop.reserve_stock";
    }

    impl AggregateCommand for ReserveStock {
        fn aggregate_id(&self) -> &str {
            &self.order
        }
    }

    #[derive(Debug, PartialEq, thiserror::Error)]
    pub enum StockError {
        #[error("{item} is out of stock")]
        OutOfStock { item: String },
    }

    impl Aggregate for Stock {
        const TYPE: &'static str = "stock";
        type Event = StockEvent;
        type Command = ReserveStock;
        type Error = StockError;

        fn decide(&self, command: &ReserveStock) -> Result<Vec<StockEvent>, StockError> {
            let ReserveStock { order, item } = command.clone();
            if item == OUT_OF_STOCK {
                return Err(StockError::OutOfStock { item });
            }
            if item.starts_with(BACKORDER) {
                return Ok(vec![StockEvent::Backordered { order, item }]);
            }
            Ok(vec![StockEvent::Reserved { order, item }])
        }

        fn evolve(mut self, event: &StockEvent) -> Self {
            match event {
                StockEvent::Reserved { .. } => self.reserved += 1,
                StockEvent::Backordered { .. } => self.backordered += 1,
            }
            self
        }
    }

    /// Gift wrapping: the checkout asks for it, but no handler serves it.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct WrapGift {
        pub order: String,
    }

    impl Command for WrapGift {
        const TYPE: &'static str = "shop.wrap_gift";
    }

    /// Place an order, reserve its stock, give up when the stock does not come in time or
    /// the reservation is refused.
    pub struct Checkout {
        pub expire_after: Duration,
    }

    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
    pub struct CheckoutState {
        pub order: Option<String>,
        pub reserved: bool,
        pub cancelled: bool,
    }

    impl Checkout {
        fn cancel(state: &mut CheckoutState, reason: String) -> bifrost_sourcing::Result<Reaction> {
            state.cancelled = true;
            let order = state.order.clone().unwrap_or_default();
            Ok(Reaction::none().send(&OrderCommand::Cancel { order, reason })?.complete())
        }
    }

    impl Saga for Checkout {
        const NAME: &'static str = "checkout";
        type State = CheckoutState;

        fn filter(&self) -> LogFilter {
            LogFilter::default().with_types(["shop.order_placed", "shop.stock_reserved"]).expect("patterns")
        }

        fn correlate(&self, event: &RecordedEvent) -> Option<String> {
            match event.event_type.as_str() {
                "shop.order_placed" => event.stream.as_str().strip_prefix("order-").map(str::to_owned),
                _ => event.metadata().ok()?.correlation_id,
            }
        }

        fn handle(
            &self,
            state: &mut CheckoutState,
            event: &RecordedEvent,
        ) -> bifrost_sourcing::Result<Reaction> {
            if event.event_type.as_str() == "shop.order_placed" {
                let OrderEvent::Placed { item } = decode::<OrderEvent>(event)? else {
                    return Ok(Reaction::none());
                };
                let order = event.stream.as_str().trim_start_matches("order-").to_owned();
                state.order = Some(order.clone());
                let mut reaction = Reaction::none();
                if item.starts_with(GIFT) {
                    reaction = reaction.send(&WrapGift { order: order.clone() })?;
                }
                return Ok(reaction.send(&ReserveStock { order: order.clone(), item })?.schedule(
                    EXPIRE,
                    self.expire_after,
                    serde_json::json!({ "order": order }),
                ));
            }
            match decode::<StockEvent>(event)? {
                StockEvent::Reserved { .. } => {
                    state.reserved = true;
                    Ok(Reaction::none().cancel(EXPIRE).complete())
                }
                StockEvent::Backordered { .. } => Ok(Reaction::none()),
            }
        }

        fn on_timeout(
            &self,
            state: &mut CheckoutState,
            timeout: &Timeout,
        ) -> bifrost_sourcing::Result<Reaction> {
            if timeout.name != EXPIRE {
                return Ok(Reaction::none());
            }
            Self::cancel(state, "expired".to_owned())
        }

        fn on_command_failed(
            &self,
            state: &mut CheckoutState,
            command: &CommandEnvelope,
            error: &str,
        ) -> bifrost_sourcing::Result<Reaction> {
            Self::cancel(state, format!("{} failed: {error}", command.command_type))
        }
    }

    /// A handler that counts the commands that reach it.
    pub struct Counted<H> {
        pub inner: H,
        pub calls: Arc<AtomicUsize>,
    }

    #[async_trait]
    impl<C: Command, H: CommandHandler<C>> CommandHandler<C> for Counted<H> {
        async fn validate(&self, command: &C) -> Result<(), String> {
            self.inner.validate(command).await
        }

        async fn handle(&self, command: C, context: CommandContext) -> bifrost_sourcing::Result<()> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.inner.handle(command, context).await
        }
    }

    /// How often each command reached its handler, across restarts (each restart builds a
    /// new bus on the reopened store; the counts carry over).
    #[derive(Clone, Default)]
    pub struct Calls {
        pub reserve: Arc<AtomicUsize>,
        pub order: Arc<AtomicUsize>,
    }

    impl Calls {
        /// The shop's command bus on `store`: stock reservations and order commands, each
        /// handled by its aggregate's repository.
        pub fn bus(&self, store: &TestStore) -> Arc<CommandBus> {
            let mut bus = CommandBus::new();
            let stock = Repository::<Stock>::new(store.events.clone());
            bus.register::<ReserveStock>(Counted { inner: stock, calls: self.reserve.clone() })
                .expect("register");
            let orders = Repository::<Order>::new(store.events.clone());
            bus.register::<OrderCommand>(Counted { inner: orders, calls: self.order.clone() })
                .expect("register");
            Arc::new(bus)
        }

        pub fn reserve(&self) -> usize {
            self.reserve.load(Ordering::SeqCst)
        }

        pub fn order(&self) -> usize {
            self.order.load(Ordering::SeqCst)
        }
    }

    /// Places order `id` for `item` and returns the log position of the placement.
    pub async fn place(store: &TestStore, id: &str, item: &str) -> bifrost_core::Position {
        let command = OrderCommand::Place { order: id.to_owned(), item: item.to_owned() };
        let executed =
            Repository::<Order>::new(store.events.clone()).execute(id, &command).await.expect("place");
        executed.appended.expect("the order was stored").last_position
    }
}
