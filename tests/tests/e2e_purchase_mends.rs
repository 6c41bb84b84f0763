#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! What a buyer coming back to the cashier relies on, end to end over HTTP: an idempotency key
//! sent again answers the order as WeChat holds it — paid though the notification was lost,
//! closed when WeChat Pay or WeChat's order centre closed it — never payment parameters for an
//! order paid already; and a direct order the user cancelled in WeChat's order centre, its
//! push lost, is closed here (stock back) and at WeChat Pay, by the schedule's sweep too, so
//! it can no longer be paid.

use serde_json::{json, Value};
use std::time::Duration;

#[path = "reliability_support.rs"]
mod support;
use support::{
    closed_at_wechat_pay, component_reads, eventually, pay_calls, pay_state, run_schedule,
    stack_with, Client, InProcess, DEAD_NOTIFY_URL,
};

/// Long enough for a loaded machine.
const WAIT: Duration = Duration::from_secs(30);

/// The answer `unifiedOrder` gives to the key `key` (one tea): (HTTP status, body).
async fn tap(c: &Client, token: &str, key: &str) -> (u16, Value) {
    c.order(token, 1, Some(key)).await
}

/// `payment` carries no payment parameters: an empty object.
fn no_parameters(v: &Value) -> bool {
    v["payment"].as_object().is_some_and(|p| p.is_empty())
}

/// GIVEN a direct-payment shop (fund_type 0, the trading component on) and a user's order
/// under a key, WHEN the user pays it at WeChat Pay and the notification is lost, and the mini
/// program sends the key again (the user back at the cashier), THEN WeChat Pay is asked once
/// (`pay/orderquery`), the payment recorded and the key answered 200 PAID with no payment
/// parameters; the payment is synced to the component order once (`shop/order/pay`), and the
/// key sent once more asks WeChat nothing. A first call asks nothing. It used to answer 200
/// PREPAID with the stored parameters: the cashier opened again for an order WeChat Pay holds
/// paid, and a client trusting the answer showed "unpaid".
#[tokio::test]
async fn a_repeated_key_of_a_direct_order_paid_without_its_notification_answers_paid() {
    let r = stack_with(&[("WXPAY_NOTIFY_URL", DEAD_NOTIFY_URL)]).await;
    let c = Client::new(&r);
    let (token, _) = c.login("paid-direct-repeated").await;
    let key = "tap-paid-direct-repeated";
    let (s, first) = tap(&c, &token, key).await;
    assert_eq!(s, 200, "{first}");
    assert_eq!(
        (first["status"].as_str(), first["fund_type"].as_i64()),
        (Some("PREPAID"), Some(0)),
        "{first}"
    );
    assert!(
        !no_parameters(&first),
        "a first call carries its parameters: {first}"
    );
    let no = first["out_trade_no"].as_str().unwrap().to_owned();
    assert_eq!(
        pay_calls(&r, "pay/orderquery", &no),
        0,
        "a first call asks nothing"
    );

    c.pay_at_sandbox(&no).await;
    assert_eq!(pay_state(&c, &no).await.as_deref(), Some("SUCCESS"));

    let (s, again) = tap(&c, &token, key).await;
    assert_eq!(s, 200, "{again}");
    assert_eq!(again["out_trade_no"], no.as_str(), "{again}");
    assert_eq!(again["status"], "PAID", "{again}");
    assert!(
        no_parameters(&again),
        "a paid order carries no payment parameters: {again}"
    );
    assert_eq!(
        pay_calls(&r, "pay/orderquery", &no),
        1,
        "one WeChat Pay question"
    );
    assert_eq!(component_reads(&r, &no), 0, "paid: nothing more read");
    assert_eq!(c.status(&token, &no).await["status"], "PAID");

    eventually(
        "the payment synced to the component order",
        WAIT,
        || async { c.order_pay_calls().await.get(&no).copied() == Some(1) },
    )
    .await;
    eventually("WeChat's component order paid", WAIT, || async {
        support::wx_order(&r, &no).await.status == 20
    })
    .await;

    let (s, third) = tap(&c, &token, key).await;
    assert_eq!(s, 200, "{third}");
    assert_eq!(third["status"], "PAID", "{third}");
    assert!(no_parameters(&third), "{third}");
    assert_eq!(
        pay_calls(&r, "pay/orderquery", &no),
        1,
        "a paid order: nothing asked"
    );
    assert_eq!(
        c.order_pay_calls().await.get(&no).copied(),
        Some(1),
        "synced once"
    );
    assert!(c.dead_letters().await.is_empty());
}

/// GIVEN a direct-payment shop (trading component off) and an unpaid order holding the last
/// unit, WHEN its WeChat Pay order is closed at WeChat (final there: it can no longer be paid)
/// and the key is sent again, THEN the order is closed here, the unit back on sale, and the key
/// answered 409 `ORDER_CLOSED` (order again with a new key), not parameters the cashier
/// refuses. And WHEN WeChat Pay cannot be asked (`pay/orderquery` failing) about another
/// unpaid order, its key answers as before: 200 PREPAID with its parameters, nothing closed.
/// The closed one used to answer 200 PREPAID and hold its unit until it expired.
#[tokio::test]
async fn a_repeated_key_of_a_direct_order_closed_at_wechat_pay_is_closed() {
    let r = stack_with(&[
        ("WXPAY_NOTIFY_URL", DEAD_NOTIFY_URL),
        ("WX_TRADING_COMPONENT", "off"),
    ])
    .await;
    let c = Client::new(&r);
    c.set_stock(1).await;
    let (token, _) = c.login("closed-at-pay-repeated").await;
    let key = "tap-closed-at-pay-repeated";
    let (s, first) = tap(&c, &token, key).await;
    assert_eq!(s, 200, "{first}");
    let no = first["out_trade_no"].as_str().unwrap().to_owned();
    assert_eq!(c.stock().await, 0);

    // Closed at WeChat Pay (as a person in the merchant platform, or another deployment,
    // would close it).
    let parsed = wxshop::domain::OutTradeNo::parse(no.clone()).unwrap();
    r.app.pay.close_order(&parsed).await.unwrap();
    assert_eq!(pay_state(&c, &no).await.as_deref(), Some("CLOSED"));

    let (s, v) = tap(&c, &token, key).await;
    assert_eq!((s, v["code"].as_str()), (409, Some("ORDER_CLOSED")), "{v}");
    assert_eq!(c.status(&token, &no).await["status"], "CLOSED");
    assert_eq!(c.stock().await, 1, "the unit is back on sale");
    let (s, v) = tap(&c, &token, key).await;
    assert_eq!((s, v["code"].as_str()), (409, Some("ORDER_CLOSED")), "{v}");

    // WeChat Pay unreadable: the stored parameters, nothing closed.
    let key2 = "tap-unreadable-direct-repeated";
    let (s, second) = tap(&c, &token, key2).await;
    assert_eq!(s, 200, "{second}");
    let no2 = second["out_trade_no"].as_str().unwrap().to_owned();
    c.fault(json!({"path": "pay/orderquery", "mode": "http500", "count": 50}))
        .await;
    let (s, v) = tap(&c, &token, key2).await;
    c.clear_faults().await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["out_trade_no"], no2.as_str(), "{v}");
    assert_eq!(v["status"], "PREPAID", "{v}");
    assert_eq!(v["payment"], second["payment"], "{v}");
    assert_eq!(c.stock().await, 0, "still held");
    assert_eq!(pay_state(&c, &no2).await.as_deref(), Some("NOTPAY"));
}

/// GIVEN a direct-payment order paid with its notification received, WHEN the mini program
/// sends its key again (a double tap after the payment went through), THEN the answer is 200
/// PAID with no payment parameters (`payment` empty). It used to carry the stored parameters,
/// with which a client that looks at `payment` opens the cashier for an order paid already.
#[tokio::test]
async fn a_paid_direct_order_is_answered_without_payment_parameters() {
    let r = stack_with(&[("WX_TRADING_COMPONENT", "off")]).await;
    let c = Client::new(&r);
    let (token, _) = c.login("paid-then-double-tap").await;
    let key = "tap-paid-then-double-tap";
    let (s, first) = tap(&c, &token, key).await;
    assert_eq!(s, 200, "{first}");
    let no = first["out_trade_no"].as_str().unwrap().to_owned();
    c.pay_at_sandbox(&no).await;
    eventually("the notification recorded", WAIT, || async {
        c.status(&token, &no).await["status"] == "PAID"
    })
    .await;

    let (s, again) = tap(&c, &token, key).await;
    assert_eq!(s, 200, "{again}");
    assert_eq!(again["status"], "PAID", "{again}");
    assert!(no_parameters(&again), "{again}");
}

/// GIVEN a secondary-merchant shop (`WX_FUND_TYPE=1`) and an unpaid order, WHEN the user pays
/// it in WeChat, the push is lost, and the key is sent again, THEN the answer reads the payment
/// (200 PAID, as before) and carries no payment parameters. It used to carry the stored ones.
#[tokio::test]
async fn a_secondary_merchant_order_read_paid_is_answered_without_payment_parameters() {
    let r = stack_with(&[("WX_FUND_TYPE", "1")]).await;
    r.sandbox.set_push_url(None);
    let c = Client::new(&r);
    let (token, _) = c.login("paid-fund1-repeated").await;
    let key = "tap-paid-fund1-repeated";
    let (s, first) = tap(&c, &token, key).await;
    assert_eq!(s, 200, "{first}");
    assert!(!no_parameters(&first), "{first}");
    let no = first["out_trade_no"].as_str().unwrap().to_owned();
    c.control("pay", &json!({"out_order_id": no})).await;

    let (s, again) = tap(&c, &token, key).await;
    assert_eq!(s, 200, "{again}");
    assert_eq!(again["status"], "PAID", "{again}");
    assert!(no_parameters(&again), "{again}");
}

/// GIVEN a direct-payment shop with the trading component on and an unpaid order holding the
/// last unit, WHEN the user cancels it in WeChat's order centre and the cancel push is lost,
/// THEN the schedule's sweep finds it cancelled at WeChat (`shop/order/get`): ours is closed,
/// the unit back on sale, and its WeChat Pay order closed (`pay/closeorder`), so the user can
/// no longer pay it — nothing dead-lettered. It used to stay PREPAID, holding the unit until it
/// expired, its WeChat Pay order payable (and a payment then refused by the component's sync,
/// the money left for a person to refund).
#[tokio::test]
async fn the_sweep_closes_a_direct_order_cancelled_in_wechat() {
    let r = stack_with(&[("WXPAY_NOTIFY_URL", DEAD_NOTIFY_URL)]).await;
    let c = InProcess::new(&r);
    c.set_stock(1).await;
    let (token, _) = c.login("cancelled-direct-swept").await;
    let order = c.order_tea(&token, 1).await;
    assert_eq!(order["fund_type"], 0, "{order}");
    let no = order["out_trade_no"].as_str().unwrap().to_owned();
    assert_eq!(c.stock().await, 0);
    c.control(
        "order",
        &json!({"action": "cancel", "out_order_id": no, "push": false}),
    )
    .await;
    // No push came: the order as stored (the page of orders, which asks WeChat nothing;
    // reading this one order through `queryOrder` would close it itself now).
    let (_, page) = c.post("/fn/queryOrder", Some(&token), &json!({})).await;
    assert_eq!(
        page["orders"][0]["status"], "PREPAID",
        "no push came: {page}"
    );
    assert_eq!(c.stock().await, 0, "still held");

    // The sweep looks at unpaid orders a minute old; this one has 14 minutes left.
    c.advance_both(61_000).await;
    run_schedule(&r).await;
    assert_eq!(c.status(&token, &no).await["status"], "CLOSED");
    assert_eq!(c.stock().await, 1, "the unit is back on sale");
    closed_at_wechat_pay(&r, &c, &no, WAIT).await;
    assert!(c.dead_letters().await.is_empty());
}

/// GIVEN the same shop and an unpaid order under a key, WHEN the user cancels it in WeChat's
/// order centre, the push is lost, and the mini program sends the key again, THEN WeChat Pay
/// reads it unpaid and its component order reads cancelled: it is closed here (stock back), its
/// WeChat Pay order closed, and the key answered 409 `ORDER_CLOSED` (order again). It used to
/// answer 200 PREPAID with parameters that could still pay an order WeChat holds cancelled.
#[tokio::test]
async fn a_repeated_key_of_a_direct_order_cancelled_in_wechat_is_closed() {
    let r = stack_with(&[("WXPAY_NOTIFY_URL", DEAD_NOTIFY_URL)]).await;
    let c = Client::new(&r);
    c.set_stock(1).await;
    let (token, _) = c.login("cancelled-direct-repeated").await;
    let key = "tap-cancelled-direct-repeated";
    let (s, first) = tap(&c, &token, key).await;
    assert_eq!(s, 200, "{first}");
    let no = first["out_trade_no"].as_str().unwrap().to_owned();
    assert_eq!(
        component_reads(&r, &no),
        0,
        "a first call reads nothing back"
    );
    c.control(
        "order",
        &json!({"action": "cancel", "out_order_id": no, "push": false}),
    )
    .await;

    let (s, v) = tap(&c, &token, key).await;
    assert_eq!((s, v["code"].as_str()), (409, Some("ORDER_CLOSED")), "{v}");
    assert_eq!(c.status(&token, &no).await["status"], "CLOSED");
    assert_eq!(c.stock().await, 1, "the unit is back on sale");
    eventually("the WeChat Pay order closed", WAIT, || async {
        pay_state(&c, &no).await.as_deref() == Some("CLOSED")
    })
    .await;
    let (other, _) = c.login("cancelled-direct-next-buyer").await;
    let next = c.order_tea(&other, 1).await;
    assert_eq!(next["status"], "PREPAID", "{next}");
    let (s, v) = tap(&c, &token, key).await;
    assert_eq!((s, v["code"].as_str()), (409, Some("ORDER_CLOSED")), "{v}");
}
