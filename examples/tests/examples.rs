//! Every example runs here, on a fresh embedded store, and its outcome is checked.

#[path = "../order_saga.rs"]
mod order_saga;

use order_saga::OrderStatus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_saga_confirms_a_good_order_and_says_what_it_compensates_for_the_failed_ones() {
    let dir = tempfile::tempdir().unwrap();
    let store = bifrost_examples::open_store(dir.path()).unwrap();
    let report = order_saga::run(store).await.unwrap();
    let status: Vec<_> = report.orders.iter().map(|(id, o, _)| (id.as_str(), o.status)).collect();
    assert_eq!(
        status,
        [
            ("1001", OrderStatus::Confirmed),
            ("1002", OrderStatus::Failed),
            ("1003", OrderStatus::Failed),
            ("1004", OrderStatus::Failed)
        ]
    );

    let printed = report.to_string();
    let lines: Vec<_> = printed.lines().collect();
    assert_eq!(lines.len(), 8, "{printed}");
    assert_eq!(lines[0], "order 1001 (ada): confirmed, payment pay-1001");
    // The declined card: the stock reserved for it is released; nothing was charged.
    let declined = lines[1];
    assert!(
        declined.starts_with("order 1002 (mallory): failed: payment.charge failed")
            && declined.contains("declined"),
        "{declined}"
    );
    assert_eq!(lines[2], "  compensated: reservation released (2 keyboard)");
    // The reservation itself was refused: nothing to undo.
    let out_of_stock = lines[3];
    assert!(
        out_of_stock.starts_with("order 1003 (grace): failed: inventory.reserve failed")
            && out_of_stock.contains("not enough keyboard"),
        "{out_of_stock}"
    );
    assert_eq!(lines[4], "  compensated: nothing (nothing was reserved or charged)");
    // The deadline passed while the card network held the charge: the saga gave up, so the
    // charge that went through afterwards is refunded and the stock released.
    assert_eq!(lines[5], "order 1004 (alan): failed: no outcome within 30s");
    assert_eq!(lines[6], "  compensated: reservation released (1 mouse), payment refunded (25.00)");
    // Only the confirmed order still holds stock.
    assert_eq!(
        lines[7],
        r#"on hand: {"keyboard": 4, "mouse": 8}; reserved: {"1001": {"keyboard": 1, "mouse": 2}}"#
    );
}

#[path = "../bank_account.rs"]
mod bank_account;

#[tokio::test]
async fn bank_account_upcasts_its_legacy_deposits_and_loads_from_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let store = bifrost_examples::open_store(dir.path()).unwrap();
    let report = bank_account::run(store).await.unwrap();
    // 12.50 + 7.50 from the v1 events, 250 deposits of 1.00, one withdrawal of 50.00.
    assert_eq!(report.account.balance_cents, 1250 + 750 + 25_000 - 5_000);
    assert_eq!(report.account.transactions, 2 + 250 + 1);
    assert_eq!(report.version, 254);
    assert_eq!(report.replayed_without_snapshot, 254);
    assert_eq!(report.snapshot_version, Some(200), "the snapshot taken when the stream reached 200");
    assert_eq!(report.replayed_with_snapshot, 54);
    assert_eq!(report.newcomer.balance_cents, 100);
    assert!(report.refusal.contains("insufficient funds"), "{}", report.refusal);
}

#[path = "../task_notifications.rs"]
mod task_notifications;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_notifications_notifies_each_created_task_once_and_keeps_project_boards() {
    let dir = tempfile::tempdir().unwrap();
    let store = bifrost_examples::open_store(dir.path()).unwrap();
    let report = task_notifications::run(store).await.unwrap();
    let mut sent: Vec<_> =
        report.notifications.iter().map(|n| (n.project_id.as_str(), n.message.as_str())).collect();
    sent.sort();
    assert_eq!(
        sent,
        [
            ("project-101", "user-456 created \"Implement feature X\""),
            ("project-101", "user-456 created \"Write the docs\""),
            ("project-202", "user-456 created \"Plan the launch\""),
        ]
    );
    let boards: Vec<_> =
        report.boards.iter().map(|(k, b)| (k.as_str(), b.open.len(), b.completed.clone())).collect();
    assert_eq!(
        boards,
        [("project-101", 1, vec!["Implement feature X".to_owned()]), ("project-202", 1, vec![])]
    );
}

#[test]
fn the_order_deadline_undoes_every_command_sent_even_before_its_effect_is_seen() {
    use bifrost_sourcing::testing::SagaTest;
    use std::time::Duration;

    let saga = order_saga::OrderSaga { deadline: Duration::from_secs(30) };
    let submitted = order_saga::OrderEvent::Submitted {
        order_id: "7".into(),
        customer: "ada".into(),
        items: [("mouse".to_owned(), 1)].into(),
        total_cents: 2_500,
    };
    let reserved = order_saga::InventoryEvent::Reserved {
        order_id: "7".into(),
        items: [("mouse".to_owned(), 1)].into(),
    };
    // The charge was sent, its outcome not yet seen, when the deadline came.
    let outcome = SagaTest::new(saga, "7")
        .given("order-7", &submitted)
        .given_from_command("inventory-main", &reserved)
        .when_timeout("deadline", serde_json::Value::Null)
        .then_completes();
    let sent: Vec<_> = outcome.reaction.commands.iter().map(|c| c.command_type.as_str()).collect();
    assert_eq!(sent, ["payment.refund", "inventory.release", "order"]);
}
