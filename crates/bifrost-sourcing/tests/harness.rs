//! The given / when / then harness: on the account aggregate and on the shop's checkout
//! saga, and that each of its assertions fails when the expectation is wrong.

mod common;

use std::time::Duration;

use bifrost_sourcing::testing::{AggregateTest, SagaTest};
use common::shop::{
    Checkout, CheckoutState, EXPIRE, OrderCommand, OrderEvent, ReserveStock, StockEvent, WrapGift,
};
use common::{Account, AccountCommand, AccountError, AccountEvent, deposit};

fn opened() -> AccountEvent {
    AccountEvent::Opened { owner: "ada".into() }
}

fn withdraw(amount: i64) -> AccountCommand {
    AccountCommand::Withdraw { id: "1".into(), amount }
}

#[test]
fn a_deposit_to_an_open_account_is_decided_and_folded() {
    let state = AggregateTest::<Account>::given([opened(), AccountEvent::Deposited { amount: 10 }])
        .when(deposit("1", 5))
        .then([AccountEvent::Deposited { amount: 5 }]);
    assert_eq!(state, Account { owner: Some("ada".into()), balance: 15, deposits: 2 });
}

#[test]
fn a_deposit_to_an_account_never_opened_is_refused() {
    AggregateTest::<Account>::given([]).when(deposit("1", 5)).then_error(|e| *e == AccountError::NotOpen);
}

#[test]
fn a_withdrawal_beyond_the_balance_is_refused_with_the_balance() {
    AggregateTest::<Account>::given([opened(), AccountEvent::Deposited { amount: 10 }])
        .when(withdraw(11))
        .then_error(|e| *e == AccountError::InsufficientFunds { balance: 10 });
}

#[test]
#[should_panic(expected = "the command decided other events")]
fn then_fails_when_the_command_decides_other_events() {
    AggregateTest::<Account>::given([opened()])
        .when(deposit("1", 5))
        .then([AccountEvent::Deposited { amount: 6 }]);
}

#[test]
#[should_panic(expected = "the command was refused")]
fn then_fails_when_the_command_is_refused() {
    AggregateTest::<Account>::given([]).when(deposit("1", 5)).then([AccountEvent::Deposited { amount: 5 }]);
}

#[test]
#[should_panic(expected = "expected a refusal")]
fn then_error_fails_when_the_command_is_accepted() {
    AggregateTest::<Account>::given([opened()]).when(deposit("1", 5)).then_error(|_| true);
}

#[test]
#[should_panic(expected = "refused with an unexpected error")]
fn then_error_fails_on_another_refusal() {
    AggregateTest::<Account>::given([opened()])
        .when(withdraw(1))
        .then_error(|e| *e == AccountError::NotPositive);
}

const EXPIRY: Duration = Duration::from_secs(300);

fn checkout() -> SagaTest<Checkout> {
    SagaTest::new(Checkout { expire_after: EXPIRY }, "o1")
}

fn placed(item: &str) -> OrderEvent {
    OrderEvent::Placed { item: item.into() }
}

fn reserved() -> StockEvent {
    StockEvent::Reserved { order: "o1".into(), item: "book".into() }
}

fn reserve() -> ReserveStock {
    ReserveStock { order: "o1".into(), item: "book".into() }
}

fn cancel(reason: &str) -> OrderCommand {
    OrderCommand::Cancel { order: "o1".into(), reason: reason.into() }
}

#[test]
fn a_placed_order_asks_for_its_stock_and_schedules_its_expiry() {
    let outcome =
        checkout().when("order-o1", &placed("book")).then_sends(&[reserve()]).then_schedules(EXPIRE, EXPIRY);
    assert_eq!(outcome.state, CheckoutState { order: Some("o1".into()), ..CheckoutState::default() });
    assert!(!outcome.reaction.complete);
}

#[test]
fn a_gift_is_wrapped_before_its_stock_is_reserved() {
    let outcome = checkout().when("order-o1", &placed("gift-card"));
    let types: Vec<_> = outcome.reaction.commands.iter().map(|c| c.command_type.as_str()).collect();
    assert_eq!(types, ["shop.wrap_gift", "shop.reserve_stock"]);
    let wrap: WrapGift = serde_json::from_value(outcome.reaction.commands[0].payload.clone()).unwrap();
    assert_eq!(wrap, WrapGift { order: "o1".into() });
}

#[test]
fn reserved_stock_cancels_the_expiry_and_completes_the_checkout() {
    let outcome = checkout()
        .given("order-o1", &placed("book"))
        .when_from_command("stock-o1", &reserved())
        .then_sends_nothing()
        .then_cancels(EXPIRE)
        .then_completes();
    assert!(outcome.state.reserved);
}

#[test]
fn the_expiry_cancels_the_order() {
    checkout()
        .given("order-o1", &placed("book"))
        .when_timeout(EXPIRE, serde_json::json!({ "order": "o1" }))
        .then_sends(&[cancel("expired")])
        .then_completes();
}

#[test]
fn a_refused_reservation_cancels_the_order() {
    let outcome = checkout()
        .given("order-o1", &placed("book"))
        .when_command_fails(&reserve(), "command rejected: book is out of stock")
        .then_sends(&[cancel("shop.reserve_stock failed: command rejected: book is out of stock")])
        .then_completes();
    assert!(outcome.state.cancelled);
}

#[test]
#[should_panic(expected = "the step sent other commands")]
fn then_sends_fails_on_other_commands() {
    checkout()
        .when("order-o1", &placed("book"))
        .then_sends(&[ReserveStock { order: "o1".into(), item: "pen".into() }]);
}

#[test]
#[should_panic(expected = "the step sent a shop.reserve_stock command")]
fn then_sends_fails_on_a_command_of_another_type() {
    checkout().when("order-o1", &placed("book")).then_sends(&[cancel("expired")]);
}

#[test]
#[should_panic(expected = "the step sent other commands")]
fn then_sends_fails_when_the_step_sent_nothing() {
    checkout()
        .given("order-o1", &placed("book"))
        .when_from_command("stock-o1", &reserved())
        .then_sends(&[reserve()]);
}

#[test]
#[should_panic(expected = "the step sent [\"shop.reserve_stock\"]")]
fn then_sends_nothing_fails_when_a_command_was_sent() {
    checkout().when("order-o1", &placed("book")).then_sends_nothing();
}

#[test]
#[should_panic(expected = "did not schedule \"expire\" after 60s")]
fn then_schedules_fails_on_another_delay() {
    checkout().when("order-o1", &placed("book")).then_schedules(EXPIRE, Duration::from_secs(60));
}

#[test]
#[should_panic(expected = "did not schedule \"remind\"")]
fn then_schedules_fails_on_another_timeout() {
    checkout().when("order-o1", &placed("book")).then_schedules("remind", EXPIRY);
}

#[test]
#[should_panic(expected = "the step did not cancel \"expire\"")]
fn then_cancels_fails_when_nothing_was_cancelled() {
    checkout().when("order-o1", &placed("book")).then_cancels(EXPIRE);
}

#[test]
#[should_panic(expected = "the step did not complete the saga")]
fn then_completes_fails_when_the_saga_goes_on() {
    checkout().when("order-o1", &placed("book")).then_completes();
}

#[test]
#[should_panic(expected = "not to instance \"o1\"")]
fn an_event_of_another_instance_fails_the_test() {
    checkout().when("order-o2", &placed("book"));
}

#[test]
fn a_completed_checkout_ignores_a_late_expiry_as_the_manager_does() {
    checkout()
        .given("order-o1", &placed("book"))
        .given_from_command("stock-o1", &reserved())
        .when_timeout(EXPIRE, serde_json::json!({ "order": "o1" }))
        .then_sends_nothing();
}

#[test]
#[should_panic(expected = "correlates to None")]
fn an_event_that_would_not_reach_the_instance_in_production_fails_the_test() {
    // Stock events find their order by the correlation id the saga's command gave them: one
    // without it (not produced by the saga's command) reaches no instance.
    checkout().given("order-o1", &placed("book")).when("stock-o1", &reserved());
}

#[test]
fn a_timeout_never_scheduled_does_not_fire_as_the_manager_would_not_fire_it() {
    checkout().when_timeout(EXPIRE, serde_json::json!({ "order": "o1" })).then_sends_nothing();
}
