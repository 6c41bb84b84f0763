#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! What a buyer tapping "pay" again relies on, end to end over HTTP: the same key answers the
//! same order whatever order the cart's lines come in; an order with too little time left to
//! be paid is closed ("order again"), never refused by WeChat Pay mid-way; and a
//! secondary-merchant order the user cancelled in WeChat is not offered for payment again,
//! though WeChat's message about it was lost.

use bytes::Bytes;
use serde_json::{json, Value};
use std::time::Duration;

#[path = "reliability_support.rs"]
mod support;
use support::{eventually, pay_state, stack_with, Client, DEAD_NOTIFY_URL};

/// Long enough for a loaded machine.
const WAIT: Duration = Duration::from_secs(20);

const ADDRESS: &str = r#"{"receiver_name": "Alice", "detailed_address": "1 Tea Street", "tel_number": "13800000000"}"#;

/// A `unifiedOrder` body for `items` under `key`.
fn cart(items: Value, key: &str) -> Value {
    json!({"items": items, "address": serde_json::from_str::<Value>(ADDRESS).unwrap(),
           "idempotency_key": key})
}

/// GIVEN a cart of two lines (tea and cake) ordered under a key, WHEN the mini program retries
/// under the same key with the same cart rebuilt in the other order, THEN it gets the same
/// order back (200, the same `out_trade_no`, nothing held twice); the same key with another
/// quantity is still another request, 422 `IDEMPOTENCY_KEY_REUSED`. The retry used to be
/// refused 422 as if it were another cart: the key's fingerprint hashed the lines in the
/// order they came.
#[tokio::test]
async fn the_same_cart_in_another_line_order_is_the_same_request() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    c.listed_product("cake", "cake-1", 500).await;
    let (token, _) = c.login("line-order").await;
    let key = "tap-line-order";
    let tea = json!({"product_id": "tea", "sku_id": "tea-250g", "quantity": 1});
    let cake = json!({"product_id": "cake", "sku_id": "cake-1", "quantity": 2});
    let stock = c.stock().await;

    let (s, first) = c
        .post(
            "/fn/unifiedOrder",
            Some(&token),
            &cart(json!([tea, cake]), key),
        )
        .await;
    assert_eq!(s, 200, "{first}");
    assert_eq!(c.stock().await, stock - 1);

    let (s, again) = c
        .post(
            "/fn/unifiedOrder",
            Some(&token),
            &cart(json!([cake, tea]), key),
        )
        .await;
    assert_eq!(s, 200, "{again}");
    assert_eq!(again["out_trade_no"], first["out_trade_no"], "{again}");
    assert_eq!(again["total_fee"], first["total_fee"], "{again}");
    assert_eq!(again["status"], "PREPAID", "{again}");
    assert_eq!(c.stock().await, stock - 1, "held once");

    let more_cake = json!({"product_id": "cake", "sku_id": "cake-1", "quantity": 3});
    let (s, other) = c
        .post(
            "/fn/unifiedOrder",
            Some(&token),
            &cart(json!([more_cake, tea]), key),
        )
        .await;
    assert_eq!(
        (s, other["code"].as_str()),
        (422, Some("IDEMPOTENCY_KEY_REUSED")),
        "{other}"
    );
    assert_eq!(other["out_trade_no"], first["out_trade_no"], "{other}");
    let (s, list) = c.post("/fn/queryOrder", Some(&token), &json!({})).await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(list["orders"].as_array().unwrap().len(), 1, "{list}");
}

/// GIVEN a direct-payment order whose first `unifiedOrder` was cut off (its function killed)
/// while `pay/unifiedorder` was on its way back — the order CREATED, WeChat Pay holding a
/// prepay order under our number with the order's `time_expire` — WHEN the user taps again with
/// the same key with just over a minute left by our clock (60.8 s), WeChat's clock a second
/// ahead of ours and the deadline sent in whole seconds (so WeChat Pay reads under a minute),
/// THEN the order is closed as too near its expiry to pay — 409 `ORDER_CLOSED` (the mini
/// program orders again with a new key), stock back, the prepay order closed at WeChat Pay.
/// It used to pass the one-minute margin, ask `pay/unifiedorder` again with that `time_expire`,
/// and be refused (`time_expire时间过短，至少1分钟`): 502 `PAYMENT_REFUSED`, a failure the user
/// could do nothing about.
#[tokio::test]
async fn a_resumed_order_with_just_over_a_minute_left_is_closed_not_refused() {
    let r = stack_with(&[
        ("WXPAY_NOTIFY_URL", DEAD_NOTIFY_URL),
        ("WX_TRADING_COMPONENT", "off"),
    ])
    .await;
    let c = Client::new(&r);
    let (token, _) = c.login("just-over-a-minute").await;
    let key = "tap-just-over-a-minute";
    let before = c.stock().await;

    // The first attempt is cut off while WeChat Pay answers (late).
    c.fault(json!({"path": "pay/unifiedorder", "mode": "slow", "delay_ms": 3000, "count": 1}))
        .await;
    let body = cart(
        json!([{"product_id": "tea", "sku_id": "tea-250g", "quantity": 1}]),
        key,
    );
    let route = wxshop::handlers::find_route("POST", "/fn/unifiedOrder").unwrap();
    let req = http::Request::builder()
        .method("POST")
        .uri("/fn/unifiedOrder")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Bytes::from(body.to_string()))
        .unwrap();
    let cut = tokio::time::timeout(
        Duration::from_millis(1000),
        wxshop::handlers::handle(&r.app, route, req),
    )
    .await;
    assert!(cut.is_err(), "the call was to be cut off mid-way");
    let (_, list) = c.post("/fn/queryOrder", Some(&token), &json!({})).await;
    let made = list["orders"].as_array().unwrap().clone();
    assert_eq!(made.len(), 1, "{list}");
    assert_eq!(made[0]["status"], "CREATED", "{list}");
    let no = made[0]["out_trade_no"].as_str().unwrap().to_owned();
    eventually("the late prepay order", WAIT, || async {
        pay_state(&c, &no).await.as_deref() == Some("NOTPAY")
    })
    .await;
    assert_eq!(c.stock().await, before - 1);

    // 60.8 s left by our clock; WeChat's a second ahead.
    let parsed = wxshop::domain::OutTradeNo::parse(no.clone()).unwrap();
    let expires = wxshop::store::repo::get_order(r.app.store.as_ref(), &parsed)
        .await
        .unwrap()
        .unwrap()
        .value
        .expires_at_ms;
    let ours = expires - 60_800;
    r.app.clock.advance(ours - r.app.clock.now_ms());
    r.sandbox
        .clock()
        .advance(ours + 1_000 - r.sandbox.clock().now_ms());

    let (s, v) = c.post("/fn/unifiedOrder", Some(&token), &body).await;
    assert_eq!((s, v["code"].as_str()), (409, Some("ORDER_CLOSED")), "{v}");
    assert_eq!(c.status(&token, &no).await["status"], "CLOSED");
    assert_eq!(c.stock().await, before, "stock back at the close");
    eventually("the prepay order closed at WeChat Pay", WAIT, || async {
        pay_state(&c, &no).await.as_deref() == Some("CLOSED")
    })
    .await;
    let (s, again) = c.post("/fn/unifiedOrder", Some(&token), &body).await;
    assert_eq!(
        (s, again["code"].as_str()),
        (409, Some("ORDER_CLOSED")),
        "{again}"
    );
}

/// The trading component's order for our number, as the sandbox holds it: its status.
async fn shop_status(c: &Client, no: &str) -> Option<i64> {
    let (_, st) = c.get("/sandbox/_control/state").await;
    st["shop_orders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["out_order_id"] == no)
        .and_then(|o| o["status"].as_i64())
}

/// GIVEN a secondary-merchant shop (`WX_FUND_TYPE=1`) and a user's unpaid order holding the last
/// unit, WHEN the user cancels it in WeChat's order centre, the cancel push is lost, and the
/// mini program sends the order's key again ("pay again"), THEN WeChat's order is read: the
/// order is closed, its unit back on sale, and the answer is 409 `ORDER_CLOSED` (order again)
/// — not the stored payment parameters, with which the cashier would fail. A first call does
/// not read WeChat's order. It used to answer 200 PREPAID with the stored parameters.
#[tokio::test]
async fn a_repeated_key_of_an_order_cancelled_in_wechat_is_closed() {
    let r = stack_with(&[("WX_FUND_TYPE", "1")]).await;
    let c = Client::new(&r);
    c.set_stock(1).await;
    let (token, _) = c.login("cancelled-then-repeated").await;
    let key = "tap-cancelled-then-repeated";
    let reads = r.sandbox.calls("shop/order/get").len();
    let (s, order) = c.order(&token, 1, Some(key)).await;
    assert_eq!(s, 200, "{order}");
    assert_eq!(order["fund_type"], 1, "{order}");
    let no = order["out_trade_no"].as_str().unwrap().to_owned();
    assert_eq!(
        r.sandbox.calls("shop/order/get").len(),
        reads,
        "a first call reads nothing back"
    );
    assert_eq!(c.stock().await, 0);

    c.control(
        "order",
        &json!({"action": "cancel", "out_order_id": no, "push": false}),
    )
    .await;
    let (s, v) = c.order(&token, 1, Some(key)).await;
    assert_eq!((s, v["code"].as_str()), (409, Some("ORDER_CLOSED")), "{v}");
    assert_eq!(c.stock().await, 1, "the unit is back on sale");
    assert_eq!(c.status(&token, &no).await["status"], "CLOSED");
    let (other, _) = c.login("cancelled-then-next-buyer").await;
    let next = c.order_tea(&other, 1).await;
    assert_eq!(next["status"], "PREPAID", "{next}");
    eventually("no dead letter from the close", WAIT, || async {
        c.dead_letters().await.is_empty()
    })
    .await;
}

/// GIVEN the same shop and an unpaid order, WHEN the user pays it in WeChat and the payment
/// push has not landed, THEN the key sent again answers it PAID (the payment read from WeChat
/// and recorded), not PREPAID with parameters WeChat refuses for a paid order; and WHEN WeChat's
/// order cannot be read (`shop/order/get` failing) for another unpaid order, its key sent again
/// answers as before — 200 PREPAID with its payment parameters, nothing closed — since a 503
/// would stop the user paying an order that is most likely payable.
#[tokio::test]
async fn a_repeated_key_reads_a_secondary_merchant_order_paid_in_wechat() {
    let r = stack_with(&[("WX_FUND_TYPE", "1")]).await;
    r.sandbox.set_push_url(None);
    let c = Client::new(&r);
    let (token, _) = c.login("paid-then-repeated").await;
    let key = "tap-paid-then-repeated";
    let (s, order) = c.order(&token, 1, Some(key)).await;
    assert_eq!(s, 200, "{order}");
    let no = order["out_trade_no"].as_str().unwrap().to_owned();
    c.control("pay", &json!({"out_order_id": no})).await;
    assert_eq!(shop_status(&c, &no).await, Some(20), "paid at WeChat");

    let (s, v) = c.order(&token, 1, Some(key)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["out_trade_no"], no.as_str(), "{v}");
    assert_eq!(v["status"], "PAID", "{v}");
    assert_eq!(c.status(&token, &no).await["status"], "PAID");

    // WeChat's order unreadable: the stored parameters, nothing closed.
    let key2 = "tap-unreadable-then-repeated";
    let stock = c.stock().await;
    let (s, second) = c.order(&token, 1, Some(key2)).await;
    assert_eq!(s, 200, "{second}");
    let no2 = second["out_trade_no"].as_str().unwrap().to_owned();
    c.fault(json!({"path": "shop/order/get", "mode": "http500", "count": 50}))
        .await;
    let (s, v) = c.order(&token, 1, Some(key2)).await;
    c.clear_faults().await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["out_trade_no"], no2.as_str(), "{v}");
    assert_eq!(v["status"], "PREPAID", "{v}");
    assert_eq!(v["payment"], second["payment"], "{v}");
    assert_eq!(c.stock().await, stock - 1, "still held");
}
