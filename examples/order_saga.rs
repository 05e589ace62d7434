//! The order saga: order.submitted → reserve inventory → charge payment → order.confirmed,
//! or order.failed with what was done undone: the reservation released, the payment
//! refunded.
//!
//! Three aggregates (an order, the warehouse's inventory, a payment per order) know nothing
//! of each other. The saga listens to their events, issues commands through the command
//! bus, compensates when a command is refused, and gives up on an order that takes too
//! long, with a timeout that would still fire after a restart.
//!
//! Four orders: one goes through, one card is declined (its reservation is released), one
//! asks for more than the warehouse has (nothing to undo), and one card network answers
//! only after the order's deadline (the late charge is refunded and the reservation
//! released). The saga runs on a manual clock, so the deadline passes without waiting.
//!
//! Run it: `cargo run --example order_saga`

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bifrost_core::{
    Direction, Error as StoreError, EventStore, LogFilter, RecordedEvent, StateStore, StreamName,
};
use bifrost_sourcing::{
    Aggregate, AggregateCommand, Command, CommandBus, CommandEnvelope, DomainEvent, ManualClock, Reaction,
    Repository, Saga, SagaManager, Timeout,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

// ---- The order ------------------------------------------------------------------------

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Order {
    pub(crate) status: OrderStatus,
    pub(crate) customer: String,
    pub(crate) items: BTreeMap<String, u32>,
    pub(crate) total_cents: i64,
    pub(crate) payment_id: Option<String>,
    pub(crate) failure: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum OrderStatus {
    #[default]
    New,
    Submitted,
    Confirmed,
    Failed,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub(crate) enum OrderEvent {
    #[serde(rename = "order.submitted")]
    Submitted { order_id: String, customer: String, items: BTreeMap<String, u32>, total_cents: i64 },
    #[serde(rename = "order.confirmed")]
    Confirmed { order_id: String, payment_id: String },
    #[serde(rename = "order.failed")]
    Failed { order_id: String, reason: String },
}

impl DomainEvent for OrderEvent {}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub(crate) enum OrderCommand {
    Submit { order_id: String, customer: String, items: BTreeMap<String, u32>, total_cents: i64 },
    Confirm { order_id: String, payment_id: String },
    Fail { order_id: String, reason: String },
}

impl Command for OrderCommand {
    const TYPE: &'static str = "order";
}

impl AggregateCommand for OrderCommand {
    fn aggregate_id(&self) -> &str {
        match self {
            Self::Submit { order_id, .. } | Self::Confirm { order_id, .. } | Self::Fail { order_id, .. } => {
                order_id
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum OrderError {
    #[error("order {0} was already submitted")]
    AlreadySubmitted(String),
    #[error("an order needs at least one item and a positive total")]
    Empty,
    #[error("order {0} is not waiting for an outcome")]
    NotPending(String),
}

impl Aggregate for Order {
    const TYPE: &'static str = "order";
    type Event = OrderEvent;
    type Command = OrderCommand;
    type Error = OrderError;

    fn decide(&self, command: &OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        match command {
            OrderCommand::Submit { order_id, customer, items, total_cents } => {
                if self.status != OrderStatus::New {
                    return Err(OrderError::AlreadySubmitted(order_id.clone()));
                }
                if items.is_empty() || *total_cents <= 0 {
                    return Err(OrderError::Empty);
                }
                Ok(vec![OrderEvent::Submitted {
                    order_id: order_id.clone(),
                    customer: customer.clone(),
                    items: items.clone(),
                    total_cents: *total_cents,
                }])
            }
            OrderCommand::Confirm { order_id, payment_id } => match self.status {
                OrderStatus::Submitted => Ok(vec![OrderEvent::Confirmed {
                    order_id: order_id.clone(),
                    payment_id: payment_id.clone(),
                }]),
                _ => Err(OrderError::NotPending(order_id.clone())),
            },
            OrderCommand::Fail { order_id, reason } => match self.status {
                OrderStatus::Submitted => {
                    Ok(vec![OrderEvent::Failed { order_id: order_id.clone(), reason: reason.clone() }])
                }
                // Failing twice (a timeout racing a refusal) changes nothing.
                OrderStatus::Failed => Ok(vec![]),
                _ => Err(OrderError::NotPending(order_id.clone())),
            },
        }
    }

    fn evolve(mut self, event: &OrderEvent) -> Self {
        match event {
            OrderEvent::Submitted { customer, items, total_cents, .. } => {
                self.status = OrderStatus::Submitted;
                self.customer = customer.clone();
                self.items = items.clone();
                self.total_cents = *total_cents;
            }
            OrderEvent::Confirmed { payment_id, .. } => {
                self.status = OrderStatus::Confirmed;
                self.payment_id = Some(payment_id.clone());
            }
            OrderEvent::Failed { reason, .. } => {
                self.status = OrderStatus::Failed;
                self.failure = Some(reason.clone());
            }
        }
        self
    }
}

// ---- The inventory (one warehouse) ---------------------------------------------------

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Inventory {
    pub(crate) on_hand: BTreeMap<String, u32>,
    /// What each order holds.
    pub(crate) reserved: BTreeMap<String, BTreeMap<String, u32>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub(crate) enum InventoryEvent {
    #[serde(rename = "inventory.restocked")]
    Restocked { sku: String, quantity: u32 },
    #[serde(rename = "inventory.reserved")]
    Reserved { order_id: String, items: BTreeMap<String, u32> },
    #[serde(rename = "inventory.released")]
    Released { order_id: String, items: BTreeMap<String, u32> },
}

impl DomainEvent for InventoryEvent {}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct ReserveInventory {
    pub(crate) order_id: String,
    pub(crate) items: BTreeMap<String, u32>,
}

impl Command for ReserveInventory {
    const TYPE: &'static str = "inventory.reserve";
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct ReleaseInventory {
    pub(crate) order_id: String,
}

impl Command for ReleaseInventory {
    const TYPE: &'static str = "inventory.release";
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum InventoryCommand {
    Restock { sku: String, quantity: u32 },
    Reserve(ReserveInventory),
    Release(ReleaseInventory),
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum InventoryError {
    #[error("not enough {sku}: {available} available, {wanted} wanted")]
    OutOfStock { sku: String, available: u32, wanted: u32 },
}

pub(crate) const WAREHOUSE: &str = "main";

impl Aggregate for Inventory {
    const TYPE: &'static str = "inventory";
    type Event = InventoryEvent;
    type Command = InventoryCommand;
    type Error = InventoryError;

    fn decide(&self, command: &InventoryCommand) -> Result<Vec<InventoryEvent>, InventoryError> {
        match command {
            InventoryCommand::Restock { sku, quantity } => {
                Ok(vec![InventoryEvent::Restocked { sku: sku.clone(), quantity: *quantity }])
            }
            InventoryCommand::Reserve(ReserveInventory { order_id, items }) => {
                if self.reserved.contains_key(order_id) {
                    return Ok(vec![]);
                }
                for (sku, &wanted) in items {
                    let available = self.on_hand.get(sku).copied().unwrap_or(0);
                    if available < wanted {
                        return Err(InventoryError::OutOfStock { sku: sku.clone(), available, wanted });
                    }
                }
                Ok(vec![InventoryEvent::Reserved { order_id: order_id.clone(), items: items.clone() }])
            }
            InventoryCommand::Release(ReleaseInventory { order_id }) => Ok(self
                .reserved
                .get(order_id)
                .map(|items| InventoryEvent::Released { order_id: order_id.clone(), items: items.clone() })
                .into_iter()
                .collect()),
        }
    }

    fn evolve(mut self, event: &InventoryEvent) -> Self {
        match event {
            InventoryEvent::Restocked { sku, quantity } => {
                *self.on_hand.entry(sku.clone()).or_default() += quantity
            }
            InventoryEvent::Reserved { order_id, items } => {
                for (sku, quantity) in items {
                    *self.on_hand.entry(sku.clone()).or_default() -= quantity;
                }
                self.reserved.insert(order_id.clone(), items.clone());
            }
            InventoryEvent::Released { order_id, items } => {
                for (sku, quantity) in items {
                    *self.on_hand.entry(sku.clone()).or_default() += quantity;
                }
                self.reserved.remove(order_id);
            }
        }
        self
    }
}

// ---- The payment (one per order) ------------------------------------------------------

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Payment {
    pub(crate) charged_cents: i64,
    pub(crate) refunded: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub(crate) enum PaymentEvent {
    #[serde(rename = "payment.charged")]
    Charged { order_id: String, payment_id: String, amount_cents: i64 },
    #[serde(rename = "payment.refunded")]
    Refunded { order_id: String, amount_cents: i64 },
}

impl DomainEvent for PaymentEvent {}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct ChargePayment {
    pub(crate) order_id: String,
    pub(crate) customer: String,
    pub(crate) amount_cents: i64,
}

impl Command for ChargePayment {
    const TYPE: &'static str = "payment.charge";
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct RefundPayment {
    pub(crate) order_id: String,
}

impl Command for RefundPayment {
    const TYPE: &'static str = "payment.refund";
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum PaymentCommand {
    Charge(ChargePayment),
    Refund(RefundPayment),
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum PaymentError {
    #[error("the card of {0} was declined")]
    Declined(String),
}

/// The card network of this example declines one customer.
pub(crate) const DECLINED_CUSTOMER: &str = "mallory";
/// The card network answers for this customer only once told to (see [`CardNetwork`]).
pub(crate) const SLOW_CUSTOMER: &str = "alan";

/// The card network a charge passes before it is recorded. It answers at once, except for
/// [`SLOW_CUSTOMER`]: that charge waits until [`answer`](Self::answer), which `run` calls
/// only after the saga has given up on the order.
#[derive(Debug)]
pub(crate) struct CardNetwork {
    /// Set once a charge of the slow customer waits for an answer.
    holding: watch::Sender<bool>,
    /// Set once the network answers the charges it held.
    answered: watch::Sender<bool>,
}

impl Default for CardNetwork {
    fn default() -> Self {
        Self { holding: watch::Sender::new(false), answered: watch::Sender::new(false) }
    }
}

impl CardNetwork {
    async fn authorize(&self, customer: &str) {
        if customer == SLOW_CUSTOMER {
            self.holding.send_replace(true);
            let _ = self.answered.subscribe().wait_for(|answered| *answered).await;
        }
    }

    /// Resolves once a charge waits for the network's answer.
    pub(crate) async fn holding(&self) {
        let _ = self.holding.subscribe().wait_for(|holding| *holding).await;
    }

    pub(crate) fn answer(&self) {
        self.answered.send_replace(true);
    }
}

impl Aggregate for Payment {
    const TYPE: &'static str = "payment";
    type Event = PaymentEvent;
    type Command = PaymentCommand;
    type Error = PaymentError;

    fn decide(&self, command: &PaymentCommand) -> Result<Vec<PaymentEvent>, PaymentError> {
        match command {
            // One charge per order; a refunded order is not charged again.
            PaymentCommand::Charge(_) if self.charged_cents > 0 || self.refunded => Ok(vec![]),
            PaymentCommand::Charge(charge) if charge.customer == DECLINED_CUSTOMER => {
                Err(PaymentError::Declined(charge.customer.clone()))
            }
            PaymentCommand::Charge(charge) => Ok(vec![PaymentEvent::Charged {
                order_id: charge.order_id.clone(),
                payment_id: format!("pay-{}", charge.order_id),
                amount_cents: charge.amount_cents,
            }]),
            // Refunding what was never charged (the charge was declined) changes nothing.
            PaymentCommand::Refund(_) if self.charged_cents == 0 => Ok(vec![]),
            PaymentCommand::Refund(RefundPayment { order_id }) => Ok(vec![PaymentEvent::Refunded {
                order_id: order_id.clone(),
                amount_cents: self.charged_cents,
            }]),
        }
    }

    fn evolve(mut self, event: &PaymentEvent) -> Self {
        match event {
            PaymentEvent::Charged { amount_cents, .. } => self.charged_cents += amount_cents,
            PaymentEvent::Refunded { amount_cents, .. } => {
                self.charged_cents -= amount_cents;
                self.refunded = true;
            }
        }
        self
    }
}

// ---- The saga ---------------------------------------------------------------------------

pub(crate) struct OrderSaga {
    /// How long an order may take before the saga gives up on it.
    pub(crate) deadline: Duration,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct OrderProgress {
    pub(crate) customer: String,
    pub(crate) items: BTreeMap<String, u32>,
    pub(crate) total_cents: i64,
    /// Commands sent so far: what a compensation has to undo.
    pub(crate) reservation_asked: bool,
    pub(crate) charge_asked: bool,
    pub(crate) outcome: Option<String>,
}

impl Saga for OrderSaga {
    const NAME: &'static str = "ordersaga";
    type State = OrderProgress;

    fn filter(&self) -> LogFilter {
        LogFilter::default()
            .with_types(["order.submitted", "inventory.reserved", "payment.charged"])
            .unwrap_or_default()
    }

    /// `order.submitted` names its order; the other events carry the order id as their
    /// correlation id, because the saga's commands set it and the repositories copy it.
    fn correlate(&self, event: &RecordedEvent) -> Option<String> {
        if event.event_type.as_str() == "order.submitted" {
            return event.stream.as_str().strip_prefix("order-").map(str::to_owned);
        }
        event.metadata().ok()?.correlation_id
    }

    fn handle(&self, state: &mut OrderProgress, event: &RecordedEvent) -> bifrost_sourcing::Result<Reaction> {
        let order_id = event.metadata()?.correlation_id.unwrap_or_default();
        match event.event_type.as_str() {
            "order.submitted" => {
                let OrderEvent::Submitted { order_id, customer, items, total_cents } =
                    bifrost_sourcing::event::decode(event)?
                else {
                    return Ok(Reaction::none());
                };
                *state = OrderProgress {
                    customer,
                    items: items.clone(),
                    total_cents,
                    reservation_asked: true,
                    ..OrderProgress::default()
                };
                Reaction::none()
                    .send(&ReserveInventory { order_id, items })
                    .map(|r| r.schedule("deadline", self.deadline, serde_json::Value::Null))
            }
            "inventory.reserved" => {
                state.charge_asked = true;
                Reaction::none().send(&ChargePayment {
                    order_id,
                    customer: state.customer.clone(),
                    amount_cents: state.total_cents,
                })
            }
            "payment.charged" => {
                let PaymentEvent::Charged { payment_id, .. } = bifrost_sourcing::event::decode(event)? else {
                    return Ok(Reaction::none());
                };
                state.outcome = Some("confirmed".into());
                Ok(Reaction::none()
                    .send(&OrderCommand::Confirm { order_id, payment_id })?
                    .cancel("deadline")
                    .complete())
            }
            _ => Ok(Reaction::none()),
        }
    }

    fn on_command_failed(
        &self,
        state: &mut OrderProgress,
        command: &CommandEnvelope,
        error: &str,
    ) -> bifrost_sourcing::Result<Reaction> {
        let order_id =
            command.payload.get("order_id").and_then(|v| v.as_str()).unwrap_or_default().to_owned();
        self.give_up(state, order_id, format!("{} failed: {error}", command.command_type))
    }

    fn on_timeout(&self, state: &mut OrderProgress, timeout: &Timeout) -> bifrost_sourcing::Result<Reaction> {
        self.give_up(state, timeout.instance.clone(), format!("no outcome within {:?}", self.deadline))
    }
}

impl OrderSaga {
    /// Compensation: undo every command sent, then fail the order.
    ///
    /// The undo commands are sent even when their effect has not been seen yet (the deadline
    /// can come between a reservation and the event that reports it): the dispatcher sends
    /// an instance's commands in the order its steps were stored, so the reservation or the
    /// charge has been handled before its undo arrives, and an undo of nothing is a no-op.
    fn give_up(
        &self,
        state: &mut OrderProgress,
        order_id: String,
        reason: String,
    ) -> bifrost_sourcing::Result<Reaction> {
        let mut reaction = Reaction::none();
        if state.charge_asked {
            reaction = reaction.send(&RefundPayment { order_id: order_id.clone() })?;
        }
        if state.reservation_asked {
            reaction = reaction.send(&ReleaseInventory { order_id: order_id.clone() })?;
        }
        state.outcome = Some(reason.clone());
        Ok(reaction.send(&OrderCommand::Fail { order_id, reason })?.complete())
    }
}

// ---- Wiring -----------------------------------------------------------------------------

/// The inventory's handlers: the saga's commands become the warehouse aggregate's.
struct InventoryHandler(Repository<Inventory>);

#[async_trait::async_trait]
impl bifrost_sourcing::CommandHandler<ReserveInventory> for InventoryHandler {
    async fn validate(&self, command: &ReserveInventory) -> Result<(), String> {
        if command.items.values().any(|&q| q == 0) {
            Err("quantities must be positive".into())
        } else {
            Ok(())
        }
    }

    async fn handle(
        &self,
        command: ReserveInventory,
        context: bifrost_sourcing::CommandContext,
    ) -> bifrost_sourcing::Result<()> {
        self.0.execute_with(WAREHOUSE, &InventoryCommand::Reserve(command), &context).await.map(|_| ())
    }
}

#[async_trait::async_trait]
impl bifrost_sourcing::CommandHandler<ReleaseInventory> for InventoryHandler {
    async fn handle(
        &self,
        command: ReleaseInventory,
        context: bifrost_sourcing::CommandContext,
    ) -> bifrost_sourcing::Result<()> {
        self.0.execute_with(WAREHOUSE, &InventoryCommand::Release(command), &context).await.map(|_| ())
    }
}

/// The payment's handlers: a charge passes the card network, then the payment aggregate.
struct PaymentHandler {
    payments: Repository<Payment>,
    network: Arc<CardNetwork>,
}

#[async_trait::async_trait]
impl bifrost_sourcing::CommandHandler<ChargePayment> for PaymentHandler {
    async fn validate(&self, command: &ChargePayment) -> Result<(), String> {
        if command.amount_cents > 0 { Ok(()) } else { Err("a charge must be positive".into()) }
    }

    async fn handle(
        &self,
        command: ChargePayment,
        context: bifrost_sourcing::CommandContext,
    ) -> bifrost_sourcing::Result<()> {
        self.network.authorize(&command.customer).await;
        let id = command.order_id.clone();
        self.payments.execute_with(&id, &PaymentCommand::Charge(command), &context).await.map(|_| ())
    }
}

#[async_trait::async_trait]
impl bifrost_sourcing::CommandHandler<RefundPayment> for PaymentHandler {
    async fn handle(
        &self,
        command: RefundPayment,
        context: bifrost_sourcing::CommandContext,
    ) -> bifrost_sourcing::Result<()> {
        let id = command.order_id.clone();
        self.payments.execute_with(&id, &PaymentCommand::Refund(command), &context).await.map(|_| ())
    }
}

/// Everything the example runs on one store.
pub(crate) struct Shop {
    pub(crate) store: Arc<dyn EventStore>,
    pub(crate) bus: Arc<CommandBus>,
    pub(crate) orders: Repository<Order>,
    pub(crate) inventory: Repository<Inventory>,
}

impl Shop {
    pub(crate) fn new(
        store: Arc<dyn EventStore>,
        network: Arc<CardNetwork>,
    ) -> bifrost_sourcing::Result<Self> {
        let orders = Repository::<Order>::new(store.clone());
        let inventory = Repository::<Inventory>::new(store.clone());
        let payments = Repository::<Payment>::new(store.clone());
        let mut bus = CommandBus::new();
        bus.register::<OrderCommand>(orders.clone())?;
        bus.register::<ChargePayment>(PaymentHandler {
            payments: payments.clone(),
            network: network.clone(),
        })?;
        bus.register::<RefundPayment>(PaymentHandler { payments, network })?;
        bus.register::<ReserveInventory>(InventoryHandler(inventory.clone()))?;
        bus.register::<ReleaseInventory>(InventoryHandler(inventory.clone()))?;
        Ok(Self { store, bus: Arc::new(bus), orders, inventory })
    }

    pub(crate) fn saga(
        &self,
        store: Arc<dyn EventStore>,
        state: Arc<dyn StateStore>,
        deadline: Duration,
    ) -> bifrost_sourcing::Result<SagaManager<OrderSaga>> {
        SagaManager::new(OrderSaga { deadline }, store, state, self.bus.clone())
    }

    pub(crate) async fn submit(
        &self,
        order_id: &str,
        customer: &str,
        items: &[(&str, u32)],
        total_cents: i64,
    ) -> bifrost_sourcing::Result<()> {
        let items = items.iter().map(|(sku, q)| ((*sku).to_owned(), *q)).collect();
        let command =
            OrderCommand::Submit { order_id: order_id.into(), customer: customer.into(), items, total_cents };
        self.bus.dispatch(command).await
    }

    /// Waits until every order has an outcome (or `limit` passes).
    pub(crate) async fn settle(
        &self,
        order_ids: &[&str],
        limit: Duration,
    ) -> bifrost_sourcing::Result<Vec<(String, Order)>> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let mut orders = Vec::new();
            for id in order_ids {
                orders.push(((*id).to_owned(), self.orders.load(id).await?.state));
            }
            let settled =
                orders.iter().all(|(_, o)| matches!(o.status, OrderStatus::Confirmed | OrderStatus::Failed));
            if settled || tokio::time::Instant::now() >= deadline {
                return Ok(orders);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the saga's instance for `order_id` (the stream `ordersaga-<id>`) has
    /// finished, or `limit` passes.
    pub(crate) async fn saga_finished(
        &self,
        order_id: &str,
        limit: Duration,
    ) -> bifrost_sourcing::Result<()> {
        let stream = StreamName::new(&format!("{}-{order_id}", OrderSaga::NAME))?;
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let last = match self.store.read_stream(&stream, u64::MAX, Direction::Backward, 1).await {
                Ok(slice) => slice.events.into_iter().next(),
                Err(StoreError::StreamNotFound(_)) => None,
                Err(e) => return Err(e.into()),
            };
            let finished = match last {
                Some(step) => bifrost_sourcing::saga::step_of::<OrderProgress>(&step)?.done,
                None => false,
            };
            if finished || tokio::time::Instant::now() >= deadline {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What the compensations undid, per order, as the log records it: the items whose
    /// reservation was released and the amount refunded.
    pub(crate) async fn compensations(&self) -> bifrost_sourcing::Result<BTreeMap<String, Compensation>> {
        let filter = LogFilter::default().with_types(["inventory.released", "payment.refunded"])?;
        let mut undone = BTreeMap::<String, Compensation>::new();
        let mut after = 0;
        loop {
            let page = self.store.read_all(after, &filter, 1000).await?;
            if page.events.is_empty() {
                return Ok(undone);
            }
            after = page.next_position;
            for event in &page.events {
                if event.event_type.as_str() == "inventory.released" {
                    if let InventoryEvent::Released { order_id, items } =
                        bifrost_sourcing::event::decode(event)?
                    {
                        undone.entry(order_id).or_default().released.extend(items);
                    }
                } else if let PaymentEvent::Refunded { order_id, amount_cents } =
                    bifrost_sourcing::event::decode(event)?
                {
                    undone.entry(order_id).or_default().refunded_cents += amount_cents;
                }
            }
        }
    }
}

/// What a failed order's compensation undid.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Compensation {
    pub(crate) released: BTreeMap<String, u32>,
    pub(crate) refunded_cents: i64,
}

impl fmt::Display for Compensation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut undone = Vec::new();
        if !self.released.is_empty() {
            let items: Vec<_> = self.released.iter().map(|(sku, q)| format!("{q} {sku}")).collect();
            undone.push(format!("reservation released ({})", items.join(", ")));
        }
        if self.refunded_cents > 0 {
            let cents = self.refunded_cents;
            undone.push(format!("payment refunded ({}.{:02})", cents / 100, cents % 100));
        }
        if undone.is_empty() {
            f.write_str("nothing (nothing was reserved or charged)")
        } else {
            f.write_str(&undone.join(", "))
        }
    }
}

/// How the story ended: each order, what its compensation undid, and the warehouse.
pub(crate) struct Report {
    pub(crate) orders: Vec<(String, Order, Compensation)>,
    pub(crate) inventory: Inventory,
}

/// What the program prints: one line per order, and for a failed one what was compensated.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (id, order, compensation) in &self.orders {
            match (order.status, &order.payment_id, &order.failure) {
                (OrderStatus::Confirmed, Some(payment), _) => {
                    writeln!(f, "order {id} ({}): confirmed, payment {payment}", order.customer)?
                }
                (OrderStatus::Failed, _, Some(reason)) => {
                    writeln!(f, "order {id} ({}): failed: {reason}", order.customer)?;
                    writeln!(f, "  compensated: {compensation}")?;
                }
                (status, _, _) => writeln!(f, "order {id} ({}): {status:?}", order.customer)?,
            }
        }
        writeln!(f, "on hand: {:?}; reserved: {:?}", self.inventory.on_hand, self.inventory.reserved)
    }
}

/// How long an order may take.
pub(crate) const DEADLINE: Duration = Duration::from_secs(30);

/// The seeds' story: one order goes through, one card is declined, one order asks for more
/// than the warehouse has; then one card network answers only after the order's deadline.
pub(crate) async fn run(store: Arc<bifrost_sqlite::SqliteStore>) -> bifrost_sourcing::Result<Report> {
    let events: Arc<dyn EventStore> = store.clone();
    let network = Arc::new(CardNetwork::default());
    let shop = Shop::new(events.clone(), network.clone())?;
    for (sku, quantity) in [("keyboard", 5), ("mouse", 10)] {
        shop.inventory.execute(WAREHOUSE, &InventoryCommand::Restock { sku: sku.into(), quantity }).await?;
    }
    let clock = Arc::new(ManualClock::default());
    let saga = shop.saga(events, store.clone(), DEADLINE)?.with_clock(clock.clone()).start();

    shop.submit("1001", "ada", &[("keyboard", 1), ("mouse", 2)], 12_900).await?;
    shop.submit("1002", DECLINED_CUSTOMER, &[("keyboard", 2)], 19_800).await?;
    shop.submit("1003", "grace", &[("keyboard", 50)], 495_000).await?;
    shop.settle(&["1001", "1002", "1003"], Duration::from_secs(20)).await?;

    // The stock is reserved and the charge waits at the card network when the deadline
    // passes: the saga gives up, so the charge that goes through afterwards is refunded.
    shop.submit("1004", SLOW_CUSTOMER, &[("mouse", 1)], 2_500).await?;
    network.holding().await;
    clock.advance(DEADLINE);
    shop.saga_finished("1004", Duration::from_secs(20)).await?;
    network.answer();

    let orders = shop.settle(&["1001", "1002", "1003", "1004"], Duration::from_secs(20)).await?;
    saga.stop().await;
    let mut compensations = shop.compensations().await?;
    let orders = orders
        .into_iter()
        .map(|(id, order)| {
            let compensation = compensations.remove(&id).unwrap_or_default();
            (id, order, compensation)
        })
        .collect();
    let inventory = shop.inventory.load(WAREHOUSE).await?.state;
    Ok(Report { orders, inventory })
}

#[cfg_attr(test, allow(dead_code))]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let store = bifrost_examples::open_store(dir.path())?;
    let report = run(store.clone()).await?;
    print!("{report}");
    store.close().await?;
    Ok(())
}
