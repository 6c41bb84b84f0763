#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! The rules of a receipt, end to end over HTTP: a receipt the user confirmed in WeChat's
//! order centre (or WeChat confirmed when the confirmation period ran out) reaches our order
//! even when WeChat's `open_product_order_confirm` push about it was lost for good — the
//! schedule reads shipped orders back from WeChat once they have been shipped a day — and
//! only when WeChat's own order says so.

use serde_json::{json, Value};
use std::time::Duration;

#[path = "reliability_support.rs"]
mod support;
use support::{eventually, run_schedule, stack_with, wx_order, InProcess, DAY_MS};

/// Long enough for a loaded machine.
const WAIT: Duration = Duration::from_secs(20);

/// `user` logs in, orders one tea and pays it (WeChat Pay); returns once the trading
/// component has the payment (`shop/order/pay`): (token, out_trade_no).
async fn paid_and_synced(c: &InProcess<'_>, user: &str) -> (String, String) {
    let (token, _) = c.login(user).await;
    let order = c.order_tea(&token, 1).await;
    let no = order["out_trade_no"].as_str().unwrap().to_owned();
    c.pay_at_sandbox(&no).await;
    eventually("shop/order/pay", WAIT, || async {
        c.r.sandbox
            .calls("shop/order/pay")
            .iter()
            .any(|v| v.to_string().contains(&no))
    })
    .await;
    (token, no)
}

/// The merchant ships `no` with `waybill`; returns once WeChat's order reads shipped (30).
async fn ship(c: &InProcess<'_>, no: &str, waybill: &str) {
    let (s, v) = c
        .admin(
            "/admin/orderSync",
            &json!({"action": "ship", "out_trade_no": no, "delivery_id": "SF", "waybill_id": waybill}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    eventually("shipped at WeChat (30)", WAIT, || async {
        wx_order(c.r, no).await.status == 30
    })
    .await;
}

fn receipts(report: &Value) -> &Value {
    &report["receipts"]
}

/// GIVEN two paid trading-component orders the merchant shipped, WHEN the user confirms
/// receipt of one in WeChat's order centre and WeChat's `open_product_order_confirm` push is
/// lost for good (sandbox `/_control/order` `confirm_receipt`, `"push": false`), THEN within
/// the day after the shipment the schedule leaves it to the push (nothing asked), and once
/// the order has been shipped a day its `receipts` phase reads WeChat's order back (100) and
/// `queryOrder` shows it RECEIVED, as the push would have; the other order, which WeChat
/// still reads shipped (30), stays SHIPPED; a later run records nothing more. Nothing read a
/// shipped order back: the first stayed SHIPPED for good.
#[tokio::test]
async fn a_receipt_confirmed_in_wechat_whose_push_was_lost_is_read_back_by_the_schedule() {
    let r = stack_with(&[]).await;
    let c = InProcess::new(&r);
    let (token, no) = paid_and_synced(&c, "receipt-lost").await;
    let (other_token, other) = paid_and_synced(&c, "receipt-not-yet").await;
    ship(&c, &no, "SF300").await;
    ship(&c, &other, "SF301").await;

    let confirmed = c
        .control(
            "order",
            &json!({"action": "confirm_receipt", "out_order_id": no, "push": false}),
        )
        .await;
    assert_eq!(confirmed["status"], 100, "{confirmed}");
    assert_eq!(wx_order(&r, &no).await.status, 100);

    // Within the day the push is waited for: nothing asked, ours still SHIPPED.
    let report = run_schedule(&r).await;
    assert_eq!(c.status(&token, &no).await["status"], "SHIPPED");
    assert_eq!(
        receipts(&report)["asked"].as_u64().unwrap_or(0),
        0,
        "{report}"
    );

    // A day on, the schedule reads both back.
    c.advance_both(DAY_MS + 60_000).await;
    let report = run_schedule(&r).await;
    assert_eq!(
        c.status(&token, &no).await["status"],
        "RECEIVED",
        "{report}"
    );
    assert_eq!(receipts(&report)["asked"], 2, "{report}");
    assert_eq!(receipts(&report)["received"], 1, "{report}");
    assert_eq!(receipts(&report)["unanswered"], 0, "{report}");
    let failed = report["failed"].as_array().cloned().unwrap_or_default();
    assert!(!failed.contains(&json!("receipts")), "{report}");
    // The guard: WeChat's order still reads 30, so ours stays SHIPPED.
    assert_eq!(wx_order(&r, &other).await.status, 30);
    assert_eq!(c.status(&other_token, &other).await["status"], "SHIPPED");
    // WeChat has the receipt: nothing is sent back to it.
    assert!(
        !r.sandbox
            .calls("shop/delivery/recieve")
            .iter()
            .any(|v| v.to_string().contains(&no)),
        "WeChat has the receipt; nothing to send"
    );

    // Another run records nothing more; the received order is no longer read.
    let report = run_schedule(&r).await;
    assert_eq!(receipts(&report)["received"], 0, "{report}");
    assert_eq!(c.status(&token, &no).await["status"], "RECEIVED");
    assert_eq!(c.status(&other_token, &other).await["status"], "SHIPPED");
    assert!(c.dead_letters().await.is_empty());
}

/// GIVEN a shipped trading-component order WeChat's order cannot be read for (`shop/order/get`
/// failing) after the user confirmed receipt there, push lost, WHEN the schedule runs a day
/// on THEN the order is left SHIPPED and counted `unanswered` (nothing guessed), and the next
/// run, WeChat readable again, records it RECEIVED.
#[tokio::test]
async fn a_receipt_wechat_cannot_be_read_for_is_left_for_the_next_run() {
    let r = stack_with(&[]).await;
    let c = InProcess::new(&r);
    let (token, no) = paid_and_synced(&c, "receipt-unread").await;
    ship(&c, &no, "SF310").await;
    c.control(
        "order",
        &json!({"action": "confirm_receipt", "out_order_id": no, "push": false}),
    )
    .await;
    c.advance_both(DAY_MS + 60_000).await;

    c.fault(json!({"path": "shop/order/get", "mode": "http500", "count": 1000}))
        .await;
    let report = run_schedule(&r).await;
    c.clear_faults().await;
    assert_eq!(c.status(&token, &no).await["status"], "SHIPPED");
    assert_eq!(receipts(&report)["unanswered"], 1, "{report}");
    assert_eq!(receipts(&report)["received"], 0, "{report}");

    // The turn goes on after the order it asked about last: a run or two brings it round.
    let mut received = false;
    for _ in 0..3 {
        let report = run_schedule(&r).await;
        if c.status(&token, &no).await["status"] == "RECEIVED" {
            assert_eq!(receipts(&report)["received"], 1, "{report}");
            received = true;
            break;
        }
    }
    assert!(received, "recorded once WeChat can be read");
    assert_eq!(c.status(&token, &no).await["status"], "RECEIVED");
}
