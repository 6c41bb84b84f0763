#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! Shipping and receipt rules a merchant and a user notice, end to end over HTTP: a repeated
//! `ship` after the user confirmed receipt is still the idempotent success it was before, a
//! refunded order's receipt is refused as refunded, the parcel WeChat is told of lists what
//! actually ships after a partial refund, and the receipt read-back dates "shipped" from the
//! shipment, not from the order's last change.

use serde_json::{json, Value};
use std::time::Duration;
use wxlocal::gateway::Running;

#[path = "reliability_support.rs"]
mod support;
use support::{eventually, run_schedule, stack_with, wx_order, InProcess, DAY_MS};

/// Long enough for a loaded machine.
const WAIT: Duration = Duration::from_secs(30);

/// Returns once WeChat's component order of `no` reads `status`.
async fn until_wx_status(r: &Running, no: &str, status: i64, what: &str) {
    eventually(what, WAIT, || async {
        wx_order(r, no).await.status == status
    })
    .await;
}

/// `user` buys `qty` tea and pays at the sandbox's cashier; returns once WeChat's component
/// order reads paid (20): (token, out_trade_no).
async fn paid_and_synced(c: &InProcess<'_>, user: &str, qty: u32) -> (String, String) {
    let (token, _) = c.login(user).await;
    let order = c.order_tea(&token, qty).await;
    let no = order["out_trade_no"].as_str().unwrap().to_owned();
    c.pay_at_sandbox(&no).await;
    until_wx_status(c.r, &no, 20, "WeChat's component order paid (20)").await;
    (token, no)
}

/// `ship` of `no` with SF and this waybill: (HTTP status, answer).
async fn ship(c: &InProcess<'_>, no: &str, waybill_id: &str) -> (u16, Value) {
    c.admin(
        "/admin/orderSync",
        &json!({"action": "ship", "out_trade_no": no, "delivery_id": "SF",
                "waybill_id": waybill_id}),
    )
    .await
}

/// The `shop/delivery/send` requests the sandbox received for `no`.
fn sends_of(r: &Running, no: &str) -> Vec<Value> {
    r.sandbox
        .calls("shop/delivery/send")
        .into_iter()
        .filter(|v| v["out_order_id"] == no)
        .collect()
}

/// Returns once no `delivery/send` task of `no` is left in the outbox (it succeeded).
async fn until_send_done(r: &Running, no: &str) {
    let subject = wxshop::outbox::Task::DeliverySend {
        out_trade_no: wxshop::domain::OutTradeNo::parse(no.to_owned()).unwrap(),
    }
    .subject();
    eventually("the delivery/send task done", WAIT, || async {
        wxshop::outbox::entries_for(r.app.store.as_ref(), &subject, 20)
            .await
            .unwrap()
            .iter()
            .all(|c| !matches!(c.entry.task, wxshop::outbox::Task::DeliverySend { .. }))
    })
    .await;
}

/// GIVEN an order the merchant shipped (WeChat took the shipment) and the user then confirmed
/// receipt of (RECEIVED, synced to WeChat), WHEN the merchant's tool repeats the very same
/// `ship` (its first answer lost, say) THEN it is the same idempotent success as before the
/// receipt — 200, the order RECEIVED with its waybill, nothing sent to WeChat again — while
/// another waybill is still refused 409 `ORDER_NOT_SHIPPABLE` (WeChat holds the shipment). It
/// was 409 for the identical repeat too.
#[tokio::test]
async fn an_identical_ship_repeated_after_receipt_is_done_already() {
    let r = stack_with(&[]).await;
    let c = InProcess::new(&r);
    let (token, no) = paid_and_synced(&c, "ship-again", 1).await;
    let (s, v) = ship(&c, &no, "SF700").await;
    assert_eq!(s, 200, "{v}");
    until_wx_status(&r, &no, 30, "shipped at WeChat (30)").await;
    until_send_done(&r, &no).await;

    // Before the receipt, the repeat is "done already".
    let (s, v) = ship(&c, &no, "SF700").await;
    assert_eq!(s, 200, "{v}");

    let (s, v) = c
        .post(
            "/fn/queryOrder",
            Some(&token),
            &json!({"out_trade_no": no, "action": "confirm"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["order"]["status"], "RECEIVED", "{v}");
    until_wx_status(&r, &no, 100, "received at WeChat (100)").await;
    let sends = sends_of(&r, &no).len();
    assert_eq!(sends, 1, "one delivery/send");

    let (s, v) = ship(&c, &no, "SF700").await;
    assert_eq!(
        s, 200,
        "the same ship after the receipt is done already: {v}"
    );
    assert_eq!(v["order"]["status"], "RECEIVED", "{v}");
    assert_eq!(v["order"]["delivery"]["waybill_id"], "SF700", "{v}");
    let order = c.status(&token, &no).await;
    assert_eq!(order["status"], "RECEIVED", "{order}");
    assert_eq!(order["delivery"]["waybill_id"], "SF700", "{order}");

    // Another waybill: WeChat accepted the shipment already, so it stands.
    let (s, v) = ship(&c, &no, "SF701").await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["code"], "ORDER_NOT_SHIPPABLE", "{v}");
    assert_eq!(
        c.status(&token, &no).await["delivery"]["waybill_id"],
        "SF700"
    );

    // Nothing was sent to WeChat again.
    c.admin("/admin/orderSync", &json!({"action": "drain"}))
        .await;
    assert_eq!(sends_of(&r, &no).len(), sends, "no delivery/send again");
    assert!(c.dead_letters().await.is_empty());
}

/// GIVEN a paid order the merchant has not shipped yet WHEN the user confirms its receipt
/// THEN the answer is 409 `ORDER_NOT_SHIPPED` saying, in the API's words, what the order is
/// and what to do — it said "order is Paid; cannot confirm receipt" (the Rust name of the
/// status, no way forward) — and nothing changes.
#[tokio::test]
async fn confirming_receipt_before_shipping_says_to_wait_for_the_shipment() {
    let r = stack_with(&[]).await;
    let c = InProcess::new(&r);
    let (token, no) = paid_and_synced(&c, "early-receipt", 1).await;

    let (s, v) = c
        .post(
            "/fn/queryOrder",
            Some(&token),
            &json!({"out_trade_no": no, "action": "confirm"}),
        )
        .await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["code"], "ORDER_NOT_SHIPPED", "{v}");
    let message = v["message"].as_str().unwrap();
    assert!(
        message.contains("is PAID") && message.contains(no.as_str()),
        "names the order and its status as the API writes it: {v}"
    );
    assert!(
        message.contains("once the merchant has shipped it"),
        "says what to do: {v}"
    );
    assert_eq!(c.status(&token, &no).await["status"], "PAID");
}

/// GIVEN a shipped order refunded in full (an after-sale the merchant approved: REFUNDED),
/// WHEN the user confirms its receipt THEN the answer is 409 `ORDER_REFUNDED` — saying what
/// the order is, where it answered `ORDER_NOT_SHIPPED`, though it was shipped — and nothing
/// changes: still REFUNDED, no `delivery/recieve` sent.
#[tokio::test]
async fn confirming_receipt_of_a_refunded_order_says_it_was_refunded() {
    let r = stack_with(&[]).await;
    let c = InProcess::new(&r);
    let (token, no) = paid_and_synced(&c, "refunded-receipt", 1).await;
    let (s, v) = ship(&c, &no, "SF710").await;
    assert_eq!(s, 200, "{v}");
    until_wx_status(&r, &no, 30, "shipped at WeChat (30)").await;

    let id = c.apply(&token, &no, json!({"reason": "never mind"})).await;
    c.approve(&id).await;
    c.until_refunded(&token, &no, &id).await;
    eventually("the order REFUNDED", WAIT, || async {
        c.status(&token, &no).await["status"] == "REFUNDED"
    })
    .await;

    let (s, v) = c
        .post(
            "/fn/queryOrder",
            Some(&token),
            &json!({"out_trade_no": no, "action": "confirm"}),
        )
        .await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["code"], "ORDER_REFUNDED", "{v}");
    assert_eq!(c.status(&token, &no).await["status"], "REFUNDED");
    c.admin("/admin/orderSync", &json!({"action": "drain"}))
        .await;
    assert!(
        !r.sandbox
            .calls("shop/delivery/recieve")
            .iter()
            .any(|v| v["out_order_id"] == no),
        "no receipt sent to WeChat"
    );
}

/// GIVEN an order of two lines — two tea, three cups — whose cups were refunded entirely and
/// one tea of two refunded (refund-only after-sales the merchant approved before shipping),
/// WHEN the merchant ships it THEN WeChat's `delivery/send` lists what the parcel holds: one
/// tea, and no cups (WECHAT_SHOP.md §6: `product_info_list` is the items in this parcel). It
/// listed every line at its ordered quantity.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_shipment_lists_what_is_left_after_partial_refunds() {
    let r = stack_with(&[]).await;
    let c = InProcess::new(&r);
    c.listed_product("cup", "cup-1", 500).await;
    let (token, _) = c.login("partly-refunded").await;
    let (s, order) = c
        .post(
            "/fn/unifiedOrder",
            Some(&token),
            &json!({"items": [{"product_id": "tea", "sku_id": "tea-250g", "quantity": 2},
                              {"product_id": "cup", "sku_id": "cup-1", "quantity": 3}],
                    "address": {"receiver_name": "A", "detailed_address": "1 Road",
                                "tel_number": "13800000000"}}),
        )
        .await;
    assert_eq!(s, 200, "{order}");
    let no = order["out_trade_no"].as_str().unwrap().to_owned();
    c.pay_at_sandbox(&no).await;
    until_wx_status(&r, &no, 20, "WeChat's component order paid (20)").await;

    let cups = c
        .apply(
            &token,
            &no,
            json!({"product_id": "cup", "sku_id": "cup-1", "reason": "not wanted"}),
        )
        .await;
    c.approve(&cups).await;
    c.until_refunded(&token, &no, &cups).await;
    // WeChat Pay takes one refund of an order a minute.
    r.sandbox.clock().advance(60_000);
    let tea = c
        .apply(
            &token,
            &no,
            json!({"product_id": "tea", "sku_id": "tea-250g", "quantity": 1,
                   "reason": "one is enough"}),
        )
        .await;
    c.approve(&tea).await;
    c.until_refunded(&token, &no, &tea).await;
    // Part of the other tea's price back (a price adjustment): that tea still ships.
    r.sandbox.clock().advance(60_000);
    let adjusted = c
        .apply(
            &token,
            &no,
            json!({"product_id": "tea", "sku_id": "tea-250g", "quantity": 1, "amount": 500,
                   "reason": "price dropped"}),
        )
        .await;
    c.approve(&adjusted).await;
    c.until_refunded(&token, &no, &adjusted).await;
    let order = c.status(&token, &no).await;
    assert_eq!(order["status"], "PAID", "{order}");
    assert_eq!(order["refunded_fee"], 1500 + 1990 + 500, "{order}");

    let (s, v) = ship(&c, &no, "SF720").await;
    assert_eq!(s, 200, "{v}");
    eventually("delivery/send of the order", WAIT, || async {
        !sends_of(&r, &no).is_empty()
    })
    .await;
    let sends = sends_of(&r, &no);
    let parcels = sends[0]["delivery_list"].as_array().unwrap();
    assert_eq!(parcels.len(), 1, "{sends:?}");
    assert_eq!(
        parcels[0]["product_info_list"],
        json!([{"out_product_id": "tea", "out_sku_id": "tea-250g", "product_cnt": 1}]),
        "the parcel holds one tea and no cups: {sends:?}"
    );
    until_wx_status(&r, &no, 30, "shipped at WeChat (30)").await;
    assert_eq!(c.status(&token, &no).await["status"], "SHIPPED");
    assert!(c.dead_letters().await.is_empty());
}

/// GIVEN a component order shipped a day ago whose receipt the user confirmed in WeChat's
/// order centre (push lost for good), and which changed after the shipment without leaving
/// SHIPPED (the user applied for an after-sale 23 hours on and withdrew it), WHEN the schedule
/// runs a day after the shipment THEN its `receipts` phase reads it back and the order is
/// RECEIVED: "shipped a day ago" counts from the shipment. It counted from the order's last
/// change, so the read-back waited a day after the withdrawn after-sale.
#[tokio::test]
async fn a_shipped_order_changed_later_is_still_read_back_a_day_after_shipping() {
    let r = stack_with(&[]).await;
    let c = InProcess::new(&r);
    let (token, no) = paid_and_synced(&c, "changed-after-shipping", 1).await;
    let (s, v) = ship(&c, &no, "SF730").await;
    assert_eq!(s, 200, "{v}");
    until_wx_status(&r, &no, 30, "shipped at WeChat (30)").await;

    c.advance_both(23 * 3_600_000).await;
    let id = c
        .apply(&token, &no, json!({"reason": "where is it?"}))
        .await;
    let (s, v) = c
        .post(
            "/fn/aftersaleSync",
            Some(&token),
            &json!({"action": "cancel", "aftersale_id": id}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["aftersale"]["status"], "CANCELLED", "{v}");
    assert_eq!(c.status(&token, &no).await["status"], "SHIPPED");
    let updated = wxshop::store::repo::get_order(
        r.app.store.as_ref(),
        &wxshop::domain::OutTradeNo::parse(no.clone()).unwrap(),
    )
    .await
    .unwrap()
    .unwrap()
    .value
    .updated_at_ms;
    assert!(
        updated >= r.app.clock.now_ms() - 3_600_000,
        "the after-sale changed the order after its shipment"
    );

    let confirmed = c
        .control(
            "order",
            &json!({"action": "confirm_receipt", "out_order_id": no, "push": false}),
        )
        .await;
    assert_eq!(confirmed["status"], 100, "{confirmed}");

    // A day and a minute after the shipment; two hours after the after-sale.
    c.advance_both(DAY_MS - 23 * 3_600_000 + 60_000).await;
    let mut received = false;
    for _ in 0..3 {
        let report = run_schedule(&r).await;
        if c.status(&token, &no).await["status"] == "RECEIVED" {
            assert_eq!(report["receipts"]["received"], 1, "{report}");
            received = true;
            break;
        }
    }
    assert!(received, "read back a day after the shipment");
}
