#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! Answers lost on the way back from WeChat: `pay/unifiedorder` or `shop/order/add` created
//! their order at WeChat, and we never heard (a timeout, a reset connection, the function
//! killed mid-call). We hold no id for it, yet when our order closes — at once, or when it
//! expires — what WeChat made is closed there too, by our number; and what WeChat never made
//! (it says "no such order") counts as closed, without a dead letter.
//!
//! The sandbox's `lost` fault applies a call and loses its answer; `slow` applies it and
//! answers late, which a function cut off by its timeout never reads.

#[path = "reliability_support.rs"]
mod support;

use bytes::Bytes;
use serde_json::{json, Value};
use std::time::Duration;
use support::*;
use wxshop::store::{Kind, Page, Query, Record, Store, StoreError, Write};

/// The trading component order for our number, as the sandbox holds it: its status.
async fn shop_status(c: &Client, no: &str) -> Option<i64> {
    let (_, st) = c.get("/sandbox/_control/state").await;
    st["shop_orders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["out_order_id"] == no)
        .and_then(|o| o["status"].as_i64())
}

async fn orders(c: &Client, token: &str) -> Vec<Value> {
    let (s, list) = c.post("/fn/queryOrder", Some(token), &json!({})).await;
    assert_eq!(s, 200, "{list}");
    list["orders"].as_array().unwrap().clone()
}

/// WeChat Pay notifies a payment of order `no` (as it would had the user paid it): what our
/// callback answered.
async fn notify_paid(r: &wxlocal::gateway::Running, c: &Client, order: &Value, openid: &str) {
    let no = order["out_trade_no"].as_str().unwrap();
    let total = order["total_fee"].as_i64().unwrap();
    let body = notification(r, no, openid, total, "4200000000202612060000000001");
    let (s, reply) = c.raw("/callbacks/pay", body).await;
    assert_eq!((s, return_code(&reply)), (200, "SUCCESS"), "{reply}");
}

/// Our unifiedOrder's `pay/unifiedorder` answer is lost: WeChat Pay made the prepay order, we
/// never learnt its prepay_id, the order is closed unpaid (503 to the user). The prepay order
/// is closed at WeChat Pay too — no one can pay it any more. The component order was never
/// made: WeChat says so (1010011) and that is final once a late create would have landed, with
/// no dead letter. A payment notification for the order after all is a payment after the
/// close, recorded as one: paid, its stock taken again.
#[tokio::test]
async fn a_prepay_whose_answer_was_lost_is_closed_at_wechat_pay() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (token, openid) = c.login("lost-prepay-answer").await;
    let before = c.stock().await;
    c.fault(json!({"path": "pay/unifiedorder", "mode": "lost", "count": 1}))
        .await;
    let (s, v) = c.order(&token, 1, Some("tap-lost-prepay")).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (503, Some("PAYMENT_UNAVAILABLE")),
        "{v}"
    );
    let made = orders(&c, &token).await;
    assert_eq!(made.len(), 1, "{made:?}");
    assert_eq!(made[0]["status"], "CLOSED");
    assert_eq!(c.stock().await, before, "stock back at the close");
    let no = made[0]["out_trade_no"].as_str().unwrap().to_owned();
    assert!(
        pay_state(&c, &no).await.is_some(),
        "the fault is what it claims: WeChat Pay made the order"
    );

    eventually(
        "the lost prepay order closed at WeChat Pay",
        Duration::from_secs(10),
        || async { pay_state(&c, &no).await.as_deref() == Some("CLOSED") },
    )
    .await;
    let (s, v) = c
        .post("/sandbox/_control/pay", None, &json!({"out_trade_no": no}))
        .await;
    assert_ne!(s, 200, "a closed prepay order cannot be paid: {v}");

    // The component order was never made: its cancel meets "no such order", asked again once
    // a late `shop/order/add` would have landed, and then done.
    let cancels = || {
        r.sandbox
            .calls("shop/order/pay")
            .iter()
            .filter(|c| c["out_order_id"] == no.as_str())
            .count()
    };
    eventually("the first cancel", Duration::from_secs(10), || async {
        cancels() >= 1
    })
    .await;
    r.app.clock.advance(6 * 60_000);
    eventually(
        "the cancel asked again",
        Duration::from_secs(10),
        || async { cancels() >= 2 },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let dead = c.dead_letters().await;
    assert!(dead.is_empty(), "{dead:?}");
    assert_eq!(shop_status(&c, &no).await, None);

    // Paid after all (the rules for a payment after the close): the money is real.
    notify_paid(&r, &c, &made[0], &openid).await;
    assert_eq!(c.status(&token, &no).await["status"], "PAID");
    assert_eq!(c.stock().await, before - 1, "stock taken again");
}

/// The user's `unifiedOrder` under `key` is cut off after 1 s while WeChat answers `path`
/// slowly (3 s, once): WeChat makes what it was asked for, and we hold one order, CREATED
/// with no ids. Its number.
async fn cut_off_while_wechat_answers(
    r: &wxlocal::gateway::Running,
    c: &Client,
    token: &str,
    key: &str,
    path: &str,
) -> String {
    c.fault(json!({"path": path, "mode": "slow", "delay_ms": 3000, "count": 1}))
        .await;
    order_cut_off(r, token, &order_body(key), Duration::from_millis(1000)).await;
    let made = orders(c, token).await;
    assert_eq!(made.len(), 1, "{made:?}");
    assert_eq!(made[0]["status"], "CREATED", "{made:?}");
    made[0]["out_trade_no"].as_str().unwrap().to_owned()
}

/// Waits for the component order of `no` that WeChat made after our call was cut off.
async fn late_component_order(c: &Client, no: &str) {
    eventually(
        "the late component order",
        Duration::from_secs(5),
        || async { shop_status(c, no).await == Some(10) },
    )
    .await;
}

/// Waits for the prepay order of `no` that WeChat Pay made after our call was cut off.
async fn late_prepay_order(c: &Client, no: &str) {
    eventually("the late prepay order", Duration::from_secs(5), || async {
        pay_state(c, no).await.as_deref() == Some("NOTPAY")
    })
    .await;
}

/// unifiedOrder as a function that its timeout cut off, on the app as it is.
async fn order_cut_off(r: &wxlocal::gateway::Running, token: &str, body: &Value, after: Duration) {
    let route = wxshop::handlers::find_route("POST", "/fn/unifiedOrder").unwrap();
    let req = http::Request::builder()
        .method("POST")
        .uri("/fn/unifiedOrder")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Bytes::from(body.to_string()))
        .unwrap();
    let run = wxshop::handlers::handle(&r.app, route, req);
    let cut = tokio::time::timeout(after, run).await;
    assert!(cut.is_err(), "the call was to be cut off mid-way");
}

/// The function is killed while `shop/order/add` is on its way back: WeChat holds the prepay
/// order and the component order, we hold neither id — the order is CREATED and nothing else.
/// When it expires and the sweep closes it, both are closed at WeChat by our number. A payment
/// notification for it after all is a payment after the close: paid, its stock taken again.
#[tokio::test]
async fn an_order_cut_off_mid_creation_is_closed_at_wechat_when_it_expires() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (token, openid) = c.login("cut-off").await;
    let before = c.stock().await;
    c.fault(json!({"path": "shop/order/add", "mode": "slow", "delay_ms": 3000, "count": 1}))
        .await;
    let body = json!({"items": [{"product_id": "tea", "sku_id": "tea-250g", "quantity": 1}],
        "address": {"receiver_name": "A", "detailed_address": "1 Road", "tel_number": "13800000000"},
        "idempotency_key": "tap-cut-off"});
    order_cut_off(&r, &token, &body, Duration::from_millis(1000)).await;
    let made = orders(&c, &token).await;
    assert_eq!(made.len(), 1, "{made:?}");
    assert_eq!(made[0]["status"], "CREATED", "neither id was recorded");
    let no = made[0]["out_trade_no"].as_str().unwrap().to_owned();
    assert_eq!(pay_state(&c, &no).await.as_deref(), Some("NOTPAY"));
    late_component_order(&c, &no).await;

    r.app.clock.advance(16 * 60_000);
    let (s, v) = c
        .admin("/admin/orderSync", &json!({"action": "sweep"}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(c.status(&token, &no).await["status"], "CLOSED");
    assert_eq!(c.stock().await, before, "stock back at the close");
    eventually(
        "both orders closed at WeChat",
        Duration::from_secs(10),
        || async {
            pay_state(&c, &no).await.as_deref() == Some("CLOSED")
                && shop_status(&c, &no).await == Some(250)
        },
    )
    .await;
    let dead = c.dead_letters().await;
    assert!(dead.is_empty(), "{dead:?}");
    // The same key again resumes the closed order: spent, as a repeated key's is.
    let (s, v) = c.post("/fn/unifiedOrder", Some(&token), &body).await;
    assert_eq!((s, v["code"].as_str()), (409, Some("ORDER_CLOSED")), "{v}");
    assert_eq!(orders(&c, &token).await.len(), 1, "no second order");
    // The key keeps that answer: repeats replay it rather than resume the order again.
    assert!(key_completed(&r, &openid, "tap-cut-off").await);
    let (s, v) = c.post("/fn/unifiedOrder", Some(&token), &body).await;
    assert_eq!((s, v["code"].as_str()), (409, Some("ORDER_CLOSED")), "{v}");

    notify_paid(&r, &c, &made[0], &openid).await;
    assert_eq!(c.status(&token, &no).await["status"], "PAID");
    assert_eq!(c.stock().await, before - 1, "stock taken again");
}

/// Secondary-merchant mode (WeChat collects): `shop/order/add` is the payment order, and its
/// answer is lost. The order closes unpaid (503), and the component order WeChat made is
/// closed there (`shop/order/close` by our number): the user cannot pay it any more.
#[tokio::test]
async fn a_component_order_whose_answer_was_lost_is_closed_at_wechat() {
    let r = stack_with(&[("WX_FUND_TYPE", "1")]).await;
    let c = Client::new(&r);
    let (token, _) = c.login("lost-component-answer").await;
    c.fault(json!({"path": "shop/order/add", "mode": "lost", "count": 1}))
        .await;
    let (s, v) = c.order(&token, 1, Some("tap-lost-add")).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (503, Some("WECHAT_UNAVAILABLE")),
        "{v}"
    );
    let made = orders(&c, &token).await;
    assert_eq!(made.len(), 1, "{made:?}");
    assert_eq!(made[0]["status"], "CLOSED");
    let no = made[0]["out_trade_no"].as_str().unwrap().to_owned();
    eventually(
        "the lost component order closed at WeChat",
        Duration::from_secs(10),
        || async { shop_status(&c, &no).await == Some(250) },
    )
    .await;
    let (s, v) = c
        .post("/sandbox/_control/pay", None, &json!({"out_order_id": no}))
        .await;
    assert_ne!(s, 200, "a closed component order cannot be paid: {v}");
    let dead = c.dead_letters().await;
    assert!(dead.is_empty(), "{dead:?}");
}

/// Our stored order's component order id (WeChat's `order_id`), if we hold one.
async fn stored_wx_order_id(r: &wxlocal::gateway::Running, no: &str) -> Option<u64> {
    let no = wxshop::domain::OutTradeNo::parse(no.to_owned()).unwrap();
    wxshop::store::repo::get_order(r.app.store.as_ref(), &no)
        .await
        .unwrap()
        .unwrap()
        .value
        .wx_order_id
}

/// The function is killed while `shop/order/add` is on its way back (its answer lost to us):
/// WeChat holds the component order, we hold no id for it. The user pays anyway (the payment
/// notification comes): the order is PAID. Shipping it must reach WeChat's component order
/// too — the id is learnt by our number (`shop/order/get`) and stored, `delivery/send` goes
/// out, WeChat's order reads shipped (30); the user's receipt reaches it as well (100). Such
/// an order used to be shipped here only: nothing acted without a stored `wx_order_id`, and
/// WeChat kept a paid component order unshipped.
#[tokio::test]
async fn a_paid_order_whose_component_answer_was_lost_is_shipped_at_wechat() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (token, _) = c.login("lost-add-then-paid").await;
    c.fault(json!({"path": "shop/order/add", "mode": "slow", "delay_ms": 3000, "count": 1}))
        .await;
    let body = json!({"items": [{"product_id": "tea", "sku_id": "tea-250g", "quantity": 1}],
        "address": {"receiver_name": "A", "detailed_address": "1 Road", "tel_number": "13800000000"},
        "idempotency_key": "tap-lost-add-paid"});
    order_cut_off(&r, &token, &body, Duration::from_millis(1000)).await;
    let made = orders(&c, &token).await;
    assert_eq!(made.len(), 1, "{made:?}");
    let no = made[0]["out_trade_no"].as_str().unwrap().to_owned();
    late_component_order(&c, &no).await;
    assert_eq!(
        stored_wx_order_id(&r, &no).await,
        None,
        "the answer was lost"
    );

    // Paid after all: WeChat Pay notifies us, and the payment is synced by our number.
    c.control("pay", &json!({"out_trade_no": no, "wait": true}))
        .await;
    assert_eq!(c.status(&token, &no).await["status"], "PAID");
    eventually(
        "the payment synced to the component order",
        Duration::from_secs(10),
        || async { shop_status(&c, &no).await == Some(20) },
    )
    .await;

    let (s, v) = c
        .admin(
            "/admin/orderSync",
            &json!({"action": "ship", "out_trade_no": no, "delivery_id": "SF", "waybill_id": "SF-LOST-1"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    eventually(
        "the shipment at WeChat's component order",
        Duration::from_secs(10),
        || async { shop_status(&c, &no).await == Some(30) },
    )
    .await;
    let sends: Vec<Value> = r
        .sandbox
        .calls("delivery/send")
        .into_iter()
        .filter(|c| c["out_order_id"] == no.as_str())
        .collect();
    assert_eq!(sends.len(), 1, "{sends:?}");
    assert_eq!(
        sends[0]["delivery_list"][0]["waybill_id"], "SF-LOST-1",
        "{sends:?}"
    );
    let learnt = stored_wx_order_id(&r, &no).await;
    assert!(
        learnt.is_some_and(|id| id > 0),
        "the id is stored: {learnt:?}"
    );

    // The user's receipt reaches WeChat's order too.
    let (s, v) = c
        .post(
            "/fn/queryOrder",
            Some(&token),
            &json!({"out_trade_no": no, "action": "confirm"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    eventually(
        "the receipt at WeChat's component order",
        Duration::from_secs(10),
        || async { shop_status(&c, &no).await == Some(100) },
    )
    .await;
    let dead = c.dead_letters().await;
    assert!(dead.is_empty(), "{dead:?}");
}

/// As above, the `shop/order/add` answer lost, and then the answer of the payment sync
/// (`shop/order/pay`) lost too: the retry is refused as out of order (100000), and reading
/// WeChat's order back by our number (paid, 20) shows it landed — WeChat's `order_id` read
/// there is stored on our order. Shipping then sends `delivery/send` without asking WeChat for
/// the id again. The id read with the sync used to be dropped: every later call looked it up.
#[tokio::test]
async fn a_payment_sync_read_back_stores_the_component_id_it_learns() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (token, _) = c.login("lost-add-sync-learns").await;
    c.fault(json!({"path": "shop/order/add", "mode": "slow", "delay_ms": 3000, "count": 1}))
        .await;
    let body = json!({"items": [{"product_id": "tea", "sku_id": "tea-250g", "quantity": 1}],
        "address": {"receiver_name": "A", "detailed_address": "1 Road", "tel_number": "13800000000"},
        "idempotency_key": "tap-lost-add-sync-learns"});
    order_cut_off(&r, &token, &body, Duration::from_millis(1000)).await;
    let no = orders(&c, &token).await[0]["out_trade_no"]
        .as_str()
        .unwrap()
        .to_owned();
    late_component_order(&c, &no).await;
    c.fault(json!({"path": "shop/order/pay", "mode": "lost", "count": 1}))
        .await;
    c.control("pay", &json!({"out_trade_no": no, "wait": true}))
        .await;
    eventually(
        "the id learnt from the sync's read-back stored",
        Duration::from_secs(10),
        || async { stored_wx_order_id(&r, &no).await.is_some_and(|id| id > 0) },
    )
    .await;
    assert_eq!(shop_status(&c, &no).await, Some(20));
    let pays = r
        .sandbox
        .calls("shop/order/pay")
        .into_iter()
        .filter(|p| p["out_order_id"] == no.as_str())
        .count();
    assert_eq!(pays, 2, "the lost one and the refused retry");

    let gets = || r.sandbox.calls("shop/order/get").len();
    let before = gets();
    let (s, v) = c
        .admin(
            "/admin/orderSync",
            &json!({"action": "ship", "out_trade_no": no, "delivery_id": "SF", "waybill_id": "SF-LEARNT-1"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    eventually(
        "the shipment at WeChat's component order",
        Duration::from_secs(10),
        || async { shop_status(&c, &no).await == Some(30) },
    )
    .await;
    assert_eq!(gets(), before, "the id was not looked up again");
    let dead = c.dead_letters().await;
    assert!(dead.is_empty(), "{dead:?}");
}

/// `shop/order/add` failed without WeChat making the order (system busy, every try): the
/// order closes unpaid (503), and is then paid after all (a payment notification). Shipping
/// it looks WeChat's component order up by our number, WeChat has none (1010011): once a late
/// `add` would have landed, the shipment stands here only — no `delivery/send`, no dead
/// letter — and a `component_order_missing` event tells a person that a paid order is not in
/// the trading component.
#[tokio::test]
async fn a_paid_order_wechat_never_made_a_component_order_of_is_kept_for_a_person() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (token, openid) = c.login("never-made-then-paid").await;
    c.fault(json!({"path": "shop/order/add", "mode": "errcode", "errcode": -1, "count": 5}))
        .await;
    let (s, v) = c.order(&token, 1, Some("tap-never-made")).await;
    assert_eq!(s, 503, "{v}");
    let made = orders(&c, &token).await;
    let no = made[0]["out_trade_no"].as_str().unwrap().to_owned();
    assert_eq!(
        shop_status(&c, &no).await,
        None,
        "WeChat made no component order"
    );
    notify_paid(&r, &c, &made[0], &openid).await;
    assert_eq!(c.status(&token, &no).await["status"], "PAID");

    let (s, v) = c
        .admin(
            "/admin/orderSync",
            &json!({"action": "ship", "out_trade_no": no, "delivery_id": "SF", "waybill_id": "SF-NONE-1"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(c.status(&token, &no).await["status"], "SHIPPED");
    r.app.clock.advance(6 * 60_000);
    let missing = || async {
        let (s, v) = c
            .admin(
                "/admin/orderSync",
                &json!({"action": "events", "source": "component_order_missing"}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v["events"].as_array().cloned().unwrap_or_default()
    };
    eventually(
        "a person told of the paid order missing from the component",
        Duration::from_secs(10),
        || async { missing().await.iter().any(|e| e["key"] == no.as_str()) },
    )
    .await;
    assert!(r.sandbox.calls("delivery/send").is_empty());
    let dead = c.dead_letters().await;
    assert!(dead.is_empty(), "{dead:?}");
}

/// As above, the `shop/order/add` answer lost and the order paid after all: the user's
/// after-sale reaches WeChat's component order (`ecaftersale/add` against our number, the
/// component order's id learnt and stored first). It used to stay ours only.
#[tokio::test]
async fn an_aftersale_of_a_paid_order_whose_component_answer_was_lost_reaches_wechat() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (token, _) = c.login("lost-add-aftersale").await;
    c.fault(json!({"path": "shop/order/add", "mode": "slow", "delay_ms": 3000, "count": 1}))
        .await;
    let body = json!({"items": [{"product_id": "tea", "sku_id": "tea-250g", "quantity": 1}],
        "address": {"receiver_name": "A", "detailed_address": "1 Road", "tel_number": "13800000000"},
        "idempotency_key": "tap-lost-add-as"});
    order_cut_off(&r, &token, &body, Duration::from_millis(1000)).await;
    let made = orders(&c, &token).await;
    let no = made[0]["out_trade_no"].as_str().unwrap().to_owned();
    late_component_order(&c, &no).await;
    c.control("pay", &json!({"out_trade_no": no, "wait": true}))
        .await;
    eventually(
        "the payment synced to the component order",
        Duration::from_secs(10),
        || async { shop_status(&c, &no).await == Some(20) },
    )
    .await;

    let (s, v) = c
        .post(
            "/fn/aftersaleSync",
            Some(&token),
            &json!({"action": "apply", "out_trade_no": no, "reason": "changed my mind",
                    "idempotency_key": "as-lost-add"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let adds = || {
        r.sandbox
            .calls("shop/ecaftersale/add")
            .into_iter()
            .filter(|a| a["out_order_id"] == no.as_str())
            .count()
    };
    eventually(
        "the after-sale added at WeChat",
        Duration::from_secs(10),
        || async { adds() == 1 },
    )
    .await;
    assert!(stored_wx_order_id(&r, &no).await.is_some());
    let dead = c.dead_letters().await;
    assert!(dead.is_empty(), "{dead:?}");
}

/// A paid order whose `shop/order/add` answer was lost: `unifiedOrder` cut off while the add
/// is on its way back (WeChat makes the component order, we never read its id), then paid at
/// WeChat — through WeChat Pay (`out_trade_no`), or for fund_type 1 in the component
/// (`out_order_id`, its `open_product_order_pay` push records it). Its number and total.
async fn paid_with_its_component_id_lost(
    r: &wxlocal::gateway::Running,
    c: &Client,
    token: &str,
    key: &str,
    secondary: bool,
) -> (String, i64) {
    c.fault(json!({"path": "shop/order/add", "mode": "slow", "delay_ms": 3000, "count": 1}))
        .await;
    let body = json!({"items": [{"product_id": "tea", "sku_id": "tea-250g", "quantity": 1}],
        "address": {"receiver_name": "A", "detailed_address": "1 Road", "tel_number": "13800000000"},
        "idempotency_key": key});
    order_cut_off(r, token, &body, Duration::from_millis(1000)).await;
    let made = orders(c, token).await;
    assert_eq!(made.len(), 1, "{made:?}");
    let no = made[0]["out_trade_no"].as_str().unwrap().to_owned();
    let total = made[0]["total_fee"].as_i64().unwrap();
    late_component_order(c, &no).await;
    let pay = if secondary {
        json!({"out_order_id": no, "wait": true})
    } else {
        json!({"out_trade_no": no, "wait": true})
    };
    let (s, v) = c.post("/sandbox/_control/pay", None, &pay).await;
    assert_eq!(s, 200, "{v}");
    eventually("the order PAID", Duration::from_secs(10), || async {
        c.status(token, &no).await["status"] == "PAID"
    })
    .await;
    if !secondary {
        eventually(
            "the payment synced to the component order",
            Duration::from_secs(10),
            || async { shop_status(c, &no).await == Some(20) },
        )
        .await;
    }
    // Fund_type 1: the payment is believed as `shop/order/get` by our number states it, and
    // WeChat's id read there is stored with it. Fund_type 0: `shop/order/pay` answers no id.
    // The id is stored by a write of its own right after the payment's (best effort), so the
    // order can read PAID a moment before it holds the id: waited for, not checked at once
    // (that raced the push's handler on a loaded host).
    if secondary {
        eventually(
            "WeChat's id stored with the payment",
            Duration::from_secs(20),
            || async { stored_wx_order_id(r, &no).await.is_some() },
        )
        .await;
    }
    assert_eq!(
        stored_wx_order_id(r, &no).await.is_some(),
        secondary,
        "the add answer was lost; only a fund_type 1 payment (read back by our number) learns the id"
    );
    (no, total)
}

/// Order `no` as it stands when paid with no component id stored: written back without WeChat's
/// id — as a payment recorded before ids were stored with payments left it, or one whose id
/// write failed (that write is best effort). For tests of the paths that learn the id when
/// they need it.
async fn forget_wx_order_id(r: &wxlocal::gateway::Running, no: &str) {
    let no = wxshop::domain::OutTradeNo::parse(no.to_owned()).unwrap();
    let store = r.app.store.as_ref();
    let current = wxshop::store::repo::get_order(store, &no)
        .await
        .unwrap()
        .unwrap();
    let mut next = current.value.clone();
    next.wx_order_id = None;
    let mut batch = wxshop::store::repo::Batch::new();
    batch.update_order(&current, &next);
    batch.commit(store).await.unwrap();
}

/// The order a cut-off `unifiedOrder` made (its `shop/order/add` answer lost, so it never
/// stored its payment ids) is paid at WeChat; the user taps again with the same idempotency
/// key once the claim's in-progress window has passed, and the call resumes that order. It is
/// answered as it is — PAID, 200, nothing to pay — without asking WeChat for payment parameters
/// or opening anything there again, and the key keeps that answer for later repeats. It used
/// to fail: 500 "no prepay_id" (fund_type 0), 502 from `getpaymentparams` (fund_type 1).
async fn a_paid_order_is_answered_when_its_key_resumes(secondary: bool) {
    let vars: &[(&str, &str)] = if secondary {
        &[("WX_FUND_TYPE", "1")]
    } else {
        &[]
    };
    let r = stack_with(vars).await;
    let c = Client::new(&r);
    let (token, _) = c.login("paid-then-resumed").await;
    let key = "tap-paid-then-resumed";
    let (no, total) = paid_with_its_component_id_lost(&r, &c, &token, key, secondary).await;
    let stock = c.stock().await;
    let prepays = r.sandbox.calls("pay/unifiedorder").len();
    let adds = r.sandbox.calls("shop/order/add").len();
    let params = r.sandbox.calls("shop/order/getpaymentparams").len();

    // The cut-off attempt's claim is presumed dead after its window: the retry resumes.
    r.app.clock.advance(31_000);
    let (s, v) = c.order(&token, 1, Some(key)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["out_trade_no"], no.as_str(), "{v}");
    assert_eq!(v["status"], "PAID", "{v}");
    assert_eq!(v["total_fee"], total, "{v}");
    assert!(
        v["payment"].is_object(),
        "the client requires a payment: {v}"
    );
    let (s, again) = c.order(&token, 1, Some(key)).await;
    assert_eq!(s, 200, "{again}");
    assert_eq!(again["out_trade_no"], no.as_str(), "{again}");
    assert_eq!(again["status"], "PAID", "{again}");

    assert_eq!(orders(&c, &token).await.len(), 1, "no second order");
    assert_eq!(c.stock().await, stock, "stock taken once");
    assert_eq!(r.sandbox.calls("pay/unifiedorder").len(), prepays);
    assert_eq!(r.sandbox.calls("shop/order/add").len(), adds);
    assert_eq!(
        r.sandbox.calls("shop/order/getpaymentparams").len(),
        params,
        "WeChat is not asked to pay a paid order"
    );
}

#[tokio::test]
async fn a_paid_order_is_answered_when_its_key_resumes_direct() {
    a_paid_order_is_answered_when_its_key_resumes(false).await;
}

#[tokio::test]
async fn a_paid_order_is_answered_when_its_key_resumes_secondary_merchant() {
    a_paid_order_is_answered_when_its_key_resumes(true).await;
}

/// A store whose write recording an idempotency key's result never returns: the function is
/// cut off (its timeout) after everything else, its order made and prepaid, its claim left in
/// progress for a retry to take over once the claim's window has passed.
struct StallsTheResult(wxshop::store::DynStore);

#[async_trait::async_trait]
impl Store for StallsTheResult {
    async fn get(&self, kind: Kind, id: &str) -> Result<Option<Record>, StoreError> {
        self.0.get(kind, id).await
    }

    async fn write(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        let completes = writes.iter().any(|w| {
            matches!(w, Write::Put { record, .. }
                if record.kind == Kind::Idempotency
                    && record.body.contains(r#""status":"COMPLETED""#))
        });
        if completes {
            std::future::pending::<()>().await;
        }
        self.0.write(writes).await
    }

    async fn query(&self, query: Query) -> Result<Page, StoreError> {
        self.0.query(query).await
    }

    fn backend(&self) -> &'static str {
        self.0.backend()
    }
}

/// `unifiedOrder` for one tea under `key`, cut off just before it records its result: the
/// order is PREPAID (its payment ids stored), the key still in progress. Its number.
async fn prepaid_then_cut_off(
    r: &wxlocal::gateway::Running,
    c: &Client,
    token: &str,
    key: &str,
) -> String {
    let mut app = r.app.clone();
    app.store = std::sync::Arc::new(StallsTheResult(r.app.store.clone()));
    let route = wxshop::handlers::find_route("POST", "/fn/unifiedOrder").unwrap();
    let req = http::Request::builder()
        .method("POST")
        .uri("/fn/unifiedOrder")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Bytes::from(order_body(key).to_string()))
        .unwrap();
    let run = wxshop::handlers::handle(&app, route, req);
    let cut = tokio::time::timeout(Duration::from_secs(3), run).await;
    assert!(cut.is_err(), "the call was to be cut off mid-way");
    let made = orders(c, token).await;
    assert_eq!(made.len(), 1, "{made:?}");
    assert_eq!(made[0]["status"], "PREPAID", "{made:?}");
    made[0]["out_trade_no"].as_str().unwrap().to_owned()
}

/// The body `c.order` sends for one tea under `key`.
fn order_body(key: &str) -> Value {
    json!({"items": [{"product_id": "tea", "sku_id": "tea-250g", "quantity": 1}],
        "address": {"receiver_name": "A", "detailed_address": "1 Road", "tel_number": "13800000000"},
        "idempotency_key": key})
}

/// Whether `key` of the user `openid` holds its answer (completed), so repeats replay it
/// instead of resuming the order again.
async fn key_completed(r: &wxlocal::gateway::Running, openid: &str, key: &str) -> bool {
    let id = format!("unifiedOrder:{openid}:{key}");
    let rec = r.app.store.get(Kind::Idempotency, &id).await.unwrap();
    rec.is_some_and(|rec| rec.body.contains(r#""status":"COMPLETED""#))
}

/// Moves WeChat's clock and ours past the order's expiry (`ORDER_TTL_SECS` 900) and the
/// claim's in-progress window.
fn past_expiry(r: &wxlocal::gateway::Running) {
    r.sandbox.clock().advance(16 * 60_000);
    r.app.clock.advance(16 * 60_000);
}

/// How the user's cut-off order stands at WeChat Pay when they tap again, past its expiry.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AtWechat {
    Unpaid,
    /// Paid, its notification never delivered.
    PaidUnnotified,
    /// `pay/orderquery` fails.
    Unreachable,
}

/// The order a cut-off `unifiedOrder` made and prepaid is left past its expiry, the sweep not
/// come round yet; the user taps again with the same key, and the call resumes that order. It
/// is settled as a completed key's order is (`replay`), never handed the stored parameters of
/// a prepay order expired at WeChat too: unpaid → closed (stock back, closed at WeChat Pay),
/// 409 `ORDER_CLOSED`, and the key completed with it; paid → recorded, 200 `PAID`; WeChat Pay
/// unreachable → not closed, 503 `ORDER_STATUS_UNKNOWN`, and the same key once it answers
/// gets 409. It used to answer 200 PREPAID with the expired payment parameters.
///
/// `left_ms`: instead of past its expiry, the order has that long left — less than the minute
/// a payment is given (`PAY_MARGIN_MS`), so WeChat Pay would refuse the payment as the order
/// expires mid-payment: settled the same way. That used to answer 200 PREPAID with the stored
/// payment parameters too.
async fn an_expired_order_is_settled_when_its_key_resumes(
    at_wechat: AtWechat,
    left_ms: Option<i64>,
) {
    let r = stack_with(&[("WXPAY_NOTIFY_URL", DEAD_NOTIFY_URL)]).await;
    let c = Client::new(&r);
    let (token, openid) = c.login("expired-then-resumed").await;
    let key = "tap-expired-then-resumed";
    let before = c.stock().await;
    let no = prepaid_then_cut_off(&r, &c, &token, key).await;
    assert_eq!(c.stock().await, before - 1);
    if at_wechat == AtWechat::PaidUnnotified {
        c.control("pay", &json!({"out_trade_no": no})).await;
    }
    if at_wechat == AtWechat::Unreachable {
        // Before the clocks move, and every call failing (`count` the most the sandbox
        // takes): past its expiry WeChat cancels the component order by itself, lazily at the
        // sandbox's next request, and pushes `open_product_order_cancel`, which our handler
        // checks with `orderquery` — answered 503 while it fails, and pushed again. Set after
        // the clocks moved, the fault raced that push (which could close the order first), and
        // with a small `count` the push's retries could use it up before the user's tap.
        c.fault(json!({"path": "pay/orderquery", "mode": "http500", "count": 10_000}))
            .await;
    }
    match left_ms {
        None => past_expiry(&r),
        Some(left) => {
            // `ORDER_TTL_SECS` 900; well past the claim's window too.
            r.sandbox.clock().advance(900_000 - left);
            r.app.clock.advance(900_000 - left);
        }
    }
    if at_wechat == AtWechat::Unreachable {
        let (s, v) = c.order(&token, 1, Some(key)).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (503, Some("ORDER_STATUS_UNKNOWN")),
            "{v}"
        );
        assert_eq!(c.stock().await, before - 1, "the stock stays held");
        assert_eq!(pay_state(&c, &no).await.as_deref(), Some("NOTPAY"));
        assert!(!key_completed(&r, &openid, key).await, "retried later");
        c.clear_faults().await;
    }

    let (s, v) = c.order(&token, 1, Some(key)).await;
    if at_wechat == AtWechat::PaidUnnotified {
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["out_trade_no"], no.as_str(), "{v}");
        assert_eq!(v["status"], "PAID", "{v}");
        assert_eq!(c.stock().await, before - 1, "the stock stays sold");
        assert_eq!(pay_state(&c, &no).await.as_deref(), Some("SUCCESS"));
    } else {
        assert_eq!((s, v["code"].as_str()), (409, Some("ORDER_CLOSED")), "{v}");
        assert_eq!(c.stock().await, before, "stock back at the close");
        eventually(
            "the prepay order closed at WeChat Pay",
            Duration::from_secs(10),
            || async { pay_state(&c, &no).await.as_deref() == Some("CLOSED") },
        )
        .await;
    }
    assert!(key_completed(&r, &openid, key).await, "repeats replay it");
    let (s2, again) = c.order(&token, 1, Some(key)).await;
    assert_eq!(
        (s2, again["code"].clone()),
        (s, v["code"].clone()),
        "{again}"
    );
    assert_eq!(orders(&c, &token).await.len(), 1, "no second order");
}

#[tokio::test]
async fn an_expired_unpaid_order_is_closed_when_its_key_resumes() {
    an_expired_order_is_settled_when_its_key_resumes(AtWechat::Unpaid, None).await;
}

#[tokio::test]
async fn an_expired_order_paid_unnotified_is_answered_paid_when_its_key_resumes() {
    an_expired_order_is_settled_when_its_key_resumes(AtWechat::PaidUnnotified, None).await;
}

#[tokio::test]
async fn an_expired_order_wechat_cannot_say_about_is_kept_when_its_key_resumes() {
    an_expired_order_is_settled_when_its_key_resumes(AtWechat::Unreachable, None).await;
}

#[tokio::test]
async fn an_unpaid_order_with_seconds_left_is_closed_when_its_key_resumes() {
    an_expired_order_is_settled_when_its_key_resumes(AtWechat::Unpaid, Some(5_000)).await;
}

#[tokio::test]
async fn an_order_paid_unnotified_with_seconds_left_is_answered_paid_when_its_key_resumes() {
    an_expired_order_is_settled_when_its_key_resumes(AtWechat::PaidUnnotified, Some(5_000)).await;
}

#[tokio::test]
async fn an_order_with_seconds_left_wechat_cannot_say_about_is_kept_when_its_key_resumes() {
    an_expired_order_is_settled_when_its_key_resumes(AtWechat::Unreachable, Some(5_000)).await;
}

/// Secondary-merchant mode (WeChat collects): the order a cut-off `unifiedOrder` made and
/// prepaid is paid in the trading component, and its `open_product_order_pay` push has not
/// landed. The user taps again with the same key (after the claim's window): WeChat's order
/// is read (`shop/order/get`), the payment recorded, and the order answered PAID — 200,
/// `payment` {} — with the key completed. It used to ask `getpaymentparams`, which refuses a
/// paid order: 502 until the push landed.
#[tokio::test]
async fn a_secondary_merchant_order_paid_unpushed_is_answered_paid_when_its_key_resumes() {
    let r = stack_with(&[("WX_FUND_TYPE", "1")]).await;
    r.sandbox.set_push_url(None);
    let c = Client::new(&r);
    let (token, openid) = c.login("paid-unpushed-then-resumed").await;
    let key = "tap-paid-unpushed-then-resumed";
    let before = c.stock().await;
    let no = prepaid_then_cut_off(&r, &c, &token, key).await;
    c.control("pay", &json!({"out_order_id": no})).await;
    assert_eq!(shop_status(&c, &no).await, Some(20), "paid at WeChat");
    assert_eq!(
        orders(&c, &token).await[0]["status"],
        "PREPAID",
        "not pushed"
    );
    let params = r.sandbox.calls("shop/order/getpaymentparams").len();

    r.app.clock.advance(31_000);
    let (s, v) = c.order(&token, 1, Some(key)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["out_trade_no"], no.as_str(), "{v}");
    assert_eq!(v["status"], "PAID", "{v}");
    assert_eq!(v["payment"], json!({}), "{v}");
    assert_eq!(
        r.sandbox.calls("shop/order/getpaymentparams").len(),
        params,
        "WeChat is not asked to pay a paid order"
    );
    assert!(key_completed(&r, &openid, key).await, "repeats replay it");
    let (s, again) = c.order(&token, 1, Some(key)).await;
    assert_eq!(
        (s, again["status"].as_str()),
        (200, Some("PAID")),
        "{again}"
    );
    assert_eq!(orders(&c, &token).await[0]["status"], "PAID");
    assert_eq!(c.stock().await, before - 1, "stock taken once");
}

/// Secondary-merchant mode (WeChat collects; the component order, its `expire_time` our
/// order's expiry, is the payment): the user leaves an order unpaid and buys again with its key
/// when 5 seconds are left before that expiry. The payment would fail in the cashier as the
/// order expires, so, as for a direct order: WeChat asked (unpaid), the order closed (stock
/// back, the component order cancelled at WeChat), 409 `ORDER_CLOSED`; paid there with the
/// push not landed → recorded, 200 PAID, nothing cancelled. With 2 minutes left the key pays
/// it as before. It used to replay the stored payment parameters.
async fn a_secondary_merchant_key_replayed_near_expiry(paid: bool) {
    let r = stack_with(&[("WX_FUND_TYPE", "1")]).await;
    r.sandbox.set_push_url(None);
    let c = Client::new(&r);
    let (token, _) = c.login("secondary-late").await;
    let before = c.stock().await;
    let (s, first) = c.order(&token, 1, Some("secondary-late")).await;
    assert_eq!(s, 200, "{first}");
    assert_eq!(first["status"], "PREPAID", "{first}");
    let no = first["out_trade_no"].as_str().unwrap().to_owned();
    assert_eq!(shop_status(&c, &no).await, Some(10));
    let left = stored(&r, &no).await.expires_at_ms - r.app.clock.now_ms();

    // 2 minutes left: the same order and payment.
    r.app.clock.advance(left - 120_000);
    r.sandbox.clock().advance(left - 120_000);
    let (s, v) = c.order(&token, 1, Some("secondary-late")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["payment"], first["payment"], "{v}");
    assert_eq!(v["status"], "PREPAID", "{v}");

    if paid {
        c.control("pay", &json!({"out_order_id": no})).await;
    }
    // 5 seconds left.
    r.app.clock.advance(115_000);
    r.sandbox.clock().advance(115_000);
    let (s, v) = c.order(&token, 1, Some("secondary-late")).await;
    if paid {
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["status"], "PAID", "{v}");
        assert_eq!(c.stock().await, before - 1, "the stock stays sold");
        assert_eq!(shop_status(&c, &no).await, Some(20), "not cancelled");
        assert_eq!(orders(&c, &token).await[0]["status"], "PAID");
    } else {
        assert_eq!((s, v["code"].as_str()), (409, Some("ORDER_CLOSED")), "{v}");
        assert_eq!(c.stock().await, before, "stock back at the close");
        eventually(
            "the component order cancelled at WeChat",
            Duration::from_secs(10),
            || async { shop_status(&c, &no).await == Some(250) },
        )
        .await;
        let (s, fresh) = c.order(&token, 1, Some("secondary-late-2")).await;
        assert_eq!(s, 200, "{fresh}");
        assert_ne!(fresh["out_trade_no"], no.as_str(), "{fresh}");
    }
}

#[tokio::test]
async fn a_secondary_merchant_key_replayed_with_seconds_left_closes_its_order() {
    a_secondary_merchant_key_replayed_near_expiry(false).await;
}

#[tokio::test]
async fn a_secondary_merchant_key_replayed_with_seconds_left_of_a_paid_order_is_answered_paid() {
    a_secondary_merchant_key_replayed_near_expiry(true).await;
}

/// How WeChat holds a secondary-merchant order whose `shop/order/add` answer was lost when the
/// user taps again with the same key.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum LostAdd {
    /// Waiting for payment (status 10).
    Pending,
    /// Paid in the trading component, its `open_product_order_pay` push never delivered.
    PaidUnpushed,
    /// Cancelled there (the merchant's back office, `shop/order/close`).
    Cancelled,
    /// `shop/order/get` fails (system busy) until cleared.
    Unreadable,
}

/// Secondary-merchant mode (WeChat collects): `unifiedOrder` is cut off while `shop/order/add`
/// is on its way back, so WeChat made the component order (the payment order) and we hold it
/// CREATED with no id. The user taps again with the same key once the claim's window has
/// passed, and the call resumes that order: WeChat's order is read by our number first
/// (`shop/order/get`), never added again. Pending → its id learnt and its payment parameters
/// asked for, 200 PREPAID; paid, the push lost → the payment recorded, 200 PAID with nothing
/// to pay; cancelled there → closed here (stock back), 409 `ORDER_CLOSED`; unreadable → 503
/// `ORDER_STATUS_UNKNOWN`, nothing closed, and the same key once WeChat answers gets the
/// payment parameters. Each time one order here and one at WeChat, and the key keeps the
/// answer. It used to send `shop/order/add` again: refused for a paid order ("can no longer be
/// replaced"), whose order was then closed as a failed prepay — 502, the key released for a
/// second order — though the user had paid.
async fn a_lost_add_is_read_back_when_its_key_resumes(at_wechat: LostAdd) {
    let r = stack_with(&[("WX_FUND_TYPE", "1")]).await;
    r.sandbox.set_push_url(None);
    let c = Client::new(&r);
    let (token, openid) = c.login("lost-add-then-resumed").await;
    let key = "tap-lost-add-then-resumed";
    let before = c.stock().await;
    let no = cut_off_while_wechat_answers(&r, &c, &token, key, "shop/order/add").await;
    late_component_order(&c, &no).await;
    match at_wechat {
        LostAdd::PaidUnpushed => {
            c.control("pay", &json!({"out_order_id": no})).await;
            assert_eq!(shop_status(&c, &no).await, Some(20), "paid at WeChat");
        }
        LostAdd::Cancelled => {
            let at = wxshop::shop::types::OrderKey::Out(no.clone());
            r.app.wx.order_close(&at, &openid).await.unwrap();
            assert_eq!(shop_status(&c, &no).await, Some(250), "cancelled at WeChat");
        }
        LostAdd::Pending | LostAdd::Unreadable => {}
    }
    assert_eq!(orders(&c, &token).await[0]["status"], "CREATED");
    let adds = r.sandbox.calls("shop/order/add").len();
    let params = r.sandbox.calls("shop/order/getpaymentparams").len();

    // Past the claim's window, on both clocks (an `add`'s create_time must be within 5 s of
    // WeChat's).
    r.app.clock.advance(31_000);
    r.sandbox.clock().advance(31_000);
    if at_wechat == LostAdd::Unreadable {
        c.fault(json!({"path": "shop/order/get", "mode": "errcode", "errcode": -1, "count": 50}))
            .await;
        let (s, v) = c.order(&token, 1, Some(key)).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (503, Some("ORDER_STATUS_UNKNOWN")),
            "{v}"
        );
        assert_eq!(
            orders(&c, &token).await[0]["status"],
            "CREATED",
            "not closed"
        );
        assert_eq!(c.stock().await, before - 1, "the stock stays held");
        assert_eq!(
            shop_status(&c, &no).await,
            Some(10),
            "still payable at WeChat"
        );
        assert!(!key_completed(&r, &openid, key).await, "retried later");
        c.clear_faults().await;
    }

    let (s, v) = c.order(&token, 1, Some(key)).await;
    match at_wechat {
        LostAdd::Pending | LostAdd::Unreadable => {
            assert_eq!(s, 200, "{v}");
            assert_eq!(v["out_trade_no"], no.as_str(), "{v}");
            assert_eq!(v["status"], "PREPAID", "{v}");
            assert!(
                v["payment"]["package"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("prepay_id=")),
                "{v}"
            );
            assert_eq!(
                r.sandbox.calls("shop/order/getpaymentparams").len(),
                params + 1
            );
            assert!(
                stored_wx_order_id(&r, &no).await.is_some_and(|id| id > 0),
                "WeChat's id learnt and stored"
            );
            assert_eq!(c.stock().await, before - 1, "stock taken once");
            // WeChat's order is the one the user pays.
            let (s, paid) = c
                .post("/sandbox/_control/pay", None, &json!({"out_order_id": no}))
                .await;
            assert_eq!(s, 200, "{paid}");
        }
        LostAdd::PaidUnpushed => {
            assert_eq!(s, 200, "{v}");
            assert_eq!(v["out_trade_no"], no.as_str(), "{v}");
            assert_eq!(v["status"], "PAID", "{v}");
            assert_eq!(v["payment"], json!({}), "{v}");
            assert_eq!(
                r.sandbox.calls("shop/order/getpaymentparams").len(),
                params,
                "WeChat is not asked to pay a paid order"
            );
            assert_eq!(orders(&c, &token).await[0]["status"], "PAID");
            assert_eq!(c.stock().await, before - 1, "stock taken once");
            assert!(
                stored_wx_order_id(&r, &no).await.is_some_and(|id| id > 0),
                "WeChat's id stored with the payment, not looked up again at shipping"
            );
        }
        LostAdd::Cancelled => {
            assert_eq!((s, v["code"].as_str()), (409, Some("ORDER_CLOSED")), "{v}");
            assert_eq!(orders(&c, &token).await[0]["status"], "CLOSED");
            assert_eq!(c.stock().await, before, "stock back at the close");
        }
    }
    assert_eq!(
        r.sandbox.calls("shop/order/add").len(),
        adds,
        "WeChat's order is not added again"
    );
    assert!(key_completed(&r, &openid, key).await, "repeats replay it");
    let (s2, again) = c.order(&token, 1, Some(key)).await;
    assert_eq!(s2, s, "{again}");
    assert_eq!(again["code"], v["code"], "{again}");
    assert_eq!(again["out_trade_no"], v["out_trade_no"], "{again}");
    assert_eq!(orders(&c, &token).await.len(), 1, "no second order");
    let dead = c.dead_letters().await;
    assert!(dead.is_empty(), "{dead:?}");
}

#[tokio::test]
async fn a_lost_add_paid_unpushed_is_answered_paid_when_its_key_resumes() {
    a_lost_add_is_read_back_when_its_key_resumes(LostAdd::PaidUnpushed).await;
}

#[tokio::test]
async fn a_lost_add_unpaid_is_paid_as_it_is_when_its_key_resumes() {
    a_lost_add_is_read_back_when_its_key_resumes(LostAdd::Pending).await;
}

#[tokio::test]
async fn a_lost_add_cancelled_at_wechat_is_closed_when_its_key_resumes() {
    a_lost_add_is_read_back_when_its_key_resumes(LostAdd::Cancelled).await;
}

#[tokio::test]
async fn a_lost_add_wechat_cannot_read_is_kept_when_its_key_resumes() {
    a_lost_add_is_read_back_when_its_key_resumes(LostAdd::Unreadable).await;
}

/// Where a cut-off fund_type 0 `unifiedOrder` lost its answer, and how WeChat Pay holds the
/// order when the user taps again.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum DirectLost {
    /// `pay/unifiedorder` on its way back: WeChat Pay made the prepay order, no component
    /// order was asked for.
    Prepay,
    /// `shop/order/add` on its way back: WeChat holds the prepay order and the component
    /// order (10), both unpaid.
    Add,
    /// As `Add`, then the WeChat Pay order paid (the sandbox's cashier; a real user holds no
    /// prepay id for it), its notification lost.
    AddPaidUnnotified,
}

/// Our stored order for `no`.
async fn stored(r: &wxlocal::gateway::Running, no: &str) -> wxshop::domain::Order {
    let no = wxshop::domain::OutTradeNo::parse(no.to_owned()).unwrap();
    wxshop::store::repo::get_order(r.app.store.as_ref(), &no)
        .await
        .unwrap()
        .unwrap()
        .value
}

/// The sandbox's record of `no`: its WeChat Pay order's prepay id, and its component order
/// (WeChat's id and the prepay id it names) if there is one.
async fn at_wechat(c: &Client, no: &str) -> (String, Option<(u64, String)>) {
    let (_, st) = c.get("/sandbox/_control/state").await;
    let pay = st["pay_orders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["out_trade_no"] == no)
        .unwrap()["prepay_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let shop = st["shop_orders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["out_order_id"] == no)
        .map(|o| {
            let prepay = o
                .pointer("/order_detail/pay_info/prepay_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            // The state stringifies 64-bit ids.
            let id = o["order_id"].as_str().unwrap().parse().unwrap();
            (id, prepay)
        });
    (pay, shop)
}

/// Fund_type 0 (we collect through WeChat Pay; the component order mirrors it): `unifiedOrder`
/// is cut off while `pay/unifiedorder` or `shop/order/add` is on its way back, so WeChat made
/// what it was asked for and ours is CREATED with no ids. The same key once the claim's
/// window has passed resumes it: unpaid → asked again under the same number, WeChat Pay
/// answers with the same prepay order (one at WeChat Pay, its `prepay_id` the one the
/// component order names), the component order added (or its unpaid one replaced, same
/// `order_id`), 200 PREPAID with both ids stored. Paid at WeChat Pay with the notification
/// lost → `pay/unifiedorder` answers ORDERPAID: the payment read back (`orderquery`) and
/// recorded, 200 PAID with nothing to pay, no `shop/order/add` again, nothing closed, and the
/// payment synced to the component order by our number (20). Each time the key keeps the
/// answer, one order, stock taken once, no dead letter. The paid case used to be closed as a
/// failed prepay — 502, the key released for a second order — and then recorded as a payment
/// after the close.
async fn a_direct_lost_answer_resumes(lost: DirectLost) {
    let r = stack_with(&[("WXPAY_NOTIFY_URL", DEAD_NOTIFY_URL)]).await;
    let c = Client::new(&r);
    let (token, openid) = c.login("direct-lost-then-resumed").await;
    let key = "tap-direct-lost-then-resumed";
    let before = c.stock().await;
    let path = if lost == DirectLost::Prepay {
        "pay/unifiedorder"
    } else {
        "shop/order/add"
    };
    let no = cut_off_while_wechat_answers(&r, &c, &token, key, path).await;
    if lost == DirectLost::Prepay {
        late_prepay_order(&c, &no).await;
        assert_eq!(shop_status(&c, &no).await, None, "no component order asked");
    } else {
        late_component_order(&c, &no).await;
    }
    if lost == DirectLost::AddPaidUnnotified {
        c.control("pay", &json!({"out_trade_no": no})).await;
        assert_eq!(pay_state(&c, &no).await.as_deref(), Some("SUCCESS"));
    }
    assert_eq!(orders(&c, &token).await[0]["status"], "CREATED");
    let adds = r.sandbox.calls("shop/order/add").len();
    let closes = r.sandbox.calls("pay/closeorder").len();

    // Past the claim's window, on both clocks (an `add`'s create_time must be within 5 s of
    // WeChat's).
    r.app.clock.advance(31_000);
    r.sandbox.clock().advance(31_000);
    let (s, v) = c.order(&token, 1, Some(key)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["out_trade_no"], no.as_str(), "{v}");
    let ours = stored(&r, &no).await;
    let (prepay, shop) = at_wechat(&c, &no).await;
    if lost == DirectLost::AddPaidUnnotified {
        assert_eq!(v["status"], "PAID", "{v}");
        assert_eq!(v["payment"], json!({}), "{v}");
        assert_eq!(
            r.sandbox.calls("shop/order/add").len(),
            adds,
            "a paid component order is not added again"
        );
        assert_eq!(ours.status.as_str(), "PAID");
        eventually(
            "the payment synced to the component order",
            Duration::from_secs(10),
            || async { shop_status(&c, &no).await == Some(20) },
        )
        .await;
    } else {
        assert_eq!(v["status"], "PREPAID", "{v}");
        assert_eq!(
            v["payment"]["package"].as_str(),
            Some(format!("prepay_id={prepay}").as_str()),
            "the prepay order WeChat Pay made first: {v}"
        );
        assert_eq!(ours.prepay_id.as_deref(), Some(prepay.as_str()));
        let (wx_id, named) = shop.expect("the component order");
        assert_eq!(named, prepay, "the component order names that prepay order");
        assert_eq!(ours.wx_order_id, Some(wx_id), "WeChat's id stored");
        assert_eq!(shop_status(&c, &no).await, Some(10));
        assert_eq!(
            r.sandbox.calls("shop/order/add").len(),
            adds + 1,
            "added once more: the first time, or replacing the unpaid one"
        );
    }
    assert_eq!(
        r.sandbox.calls("pay/closeorder").len(),
        closes,
        "nothing closed"
    );
    assert_eq!(c.stock().await, before - 1, "stock taken once");
    assert!(key_completed(&r, &openid, key).await, "repeats replay it");
    let (s2, again) = c.order(&token, 1, Some(key)).await;
    assert_eq!(s2, 200, "{again}");
    assert_eq!(again["status"], v["status"], "{again}");
    assert_eq!(again["out_trade_no"], no.as_str(), "{again}");
    assert_eq!(orders(&c, &token).await.len(), 1, "no second order");
    let dead = c.dead_letters().await;
    assert!(dead.is_empty(), "{dead:?}");
}

/// Fund_type 0: `unifiedOrder` is cut off while `pay/unifiedorder` is on its way back (WeChat
/// Pay made the prepay order; ours is CREATED with no id), and the user taps again with the
/// same key only when 5 seconds are left before the order's expiry — its `time_expire` at
/// WeChat Pay, which asking again must repeat. No payment is offered that WeChat Pay would
/// refuse as the order expires mid-payment: the order is closed as an expired one is (stock
/// back, the prepay order closed at WeChat Pay by our number), 409 `ORDER_CLOSED` with the key
/// completed, and a new key buys. It used to ask `pay/unifiedorder` again, which WeChat Pay
/// refuses with under a minute to go (`time_expire时间过短`, as the sandbox does): a 502,
/// the key released.
#[tokio::test]
async fn a_direct_lost_prepay_answer_with_seconds_left_is_closed_when_its_key_resumes() {
    let r = stack_with(&[("WXPAY_NOTIFY_URL", DEAD_NOTIFY_URL)]).await;
    let c = Client::new(&r);
    let (token, openid) = c.login("direct-lost-late").await;
    let key = "tap-direct-lost-late";
    let before = c.stock().await;
    let no = cut_off_while_wechat_answers(&r, &c, &token, key, "pay/unifiedorder").await;
    late_prepay_order(&c, &no).await;
    let asked = r.sandbox.calls("pay/unifiedorder").len();

    // 5 s before its expiry (`ORDER_TTL_SECS` 900), on both clocks.
    r.app.clock.advance(895_000);
    r.sandbox.clock().advance(895_000);
    let (s, v) = c.order(&token, 1, Some(key)).await;
    assert_eq!((s, v["code"].as_str()), (409, Some("ORDER_CLOSED")), "{v}");
    assert_eq!(
        r.sandbox.calls("pay/unifiedorder").len(),
        asked,
        "WeChat Pay not asked for a payment again"
    );
    assert_eq!(c.stock().await, before, "stock back at the close");
    eventually(
        "the prepay order closed at WeChat Pay",
        Duration::from_secs(10),
        || async { pay_state(&c, &no).await.as_deref() == Some("CLOSED") },
    )
    .await;
    assert!(key_completed(&r, &openid, key).await, "repeats replay it");
    let (s, again) = c.order(&token, 1, Some(key)).await;
    assert_eq!((s, again["code"].as_str()), (409, Some("ORDER_CLOSED")));
    let (s, fresh) = c.order(&token, 1, Some("tap-direct-lost-late-2")).await;
    assert_eq!(s, 200, "{fresh}");
    assert_ne!(fresh["out_trade_no"], no.as_str(), "{fresh}");
    assert_eq!(fresh["status"], "PREPAID", "{fresh}");
    let dead = c.dead_letters().await;
    assert!(dead.is_empty(), "{dead:?}");
}

#[tokio::test]
async fn a_direct_lost_prepay_answer_is_opened_again_when_its_key_resumes() {
    a_direct_lost_answer_resumes(DirectLost::Prepay).await;
}

#[tokio::test]
async fn a_direct_lost_add_is_added_again_unpaid_when_its_key_resumes() {
    a_direct_lost_answer_resumes(DirectLost::Add).await;
}

#[tokio::test]
async fn a_direct_lost_add_paid_unnotified_is_answered_paid_when_its_key_resumes() {
    a_direct_lost_answer_resumes(DirectLost::AddPaidUnnotified).await;
}

/// The user applies for a refund of all of order `no` in WeChat's own order centre; its
/// `aftersale_new_order` push imports it here (REQUESTED). WeChat's after-sale id and ours.
async fn applied_in_wechat(c: &Client, no: &str, total: i64) -> (u64, String) {
    let v = c
        .control(
            "aftersale",
            &json!({"action": "apply", "out_order_id": no, "orderamt": total}),
        )
        .await;
    let wx = v["aftersale_id"].as_u64().unwrap();
    eventually(
        "the after-sale imported from WeChat",
        Duration::from_secs(10),
        || async {
            merchant_aftersales(c, no)
                .await
                .iter()
                .any(|a| a["status"] == "REQUESTED")
        },
    )
    .await;
    let list = merchant_aftersales(c, no).await;
    assert_eq!(list.len(), 1, "{list:?}");
    let ours = list[0]["aftersale_id"].as_str().unwrap().to_owned();
    (wx, ours)
}

/// The user cancels WeChat's after-sale `wx` in WeChat's order centre, and the
/// `aftersale_user_cancel` push never reaches us.
async fn cancelled_in_wechat_unpushed(c: &Client, wx: u64) {
    c.control(
        "aftersale",
        &json!({"action": "cancel", "aftersale_id": wx, "push": false}),
    )
    .await;
}

/// Every after-sale of `no`, as the merchant lists them.
async fn merchant_aftersales(c: &Client, no: &str) -> Vec<Value> {
    let (s, v) = c
        .admin(
            "/admin/aftersaleSync",
            &json!({"action": "list", "out_trade_no": no}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    v["aftersales"].as_array().cloned().unwrap_or_default()
}

/// One after-sale of `no`, as the merchant lists it.
async fn merchant_aftersale(c: &Client, no: &str, id: &str) -> Value {
    merchant_aftersales(c, no)
        .await
        .into_iter()
        .find(|a| a["aftersale_id"] == id)
        .unwrap_or(Value::Null)
}

/// Secondary-merchant mode (WeChat collects and refunds), the `shop/order/add` answer lost and
/// the order paid at WeChat: an after-sale of it (opened in WeChat's order centre, imported by
/// its push) is approved — the component order's id is learnt by our number first and
/// stored — and WeChat refunds it (`ecaftersale/acceptrefund`): ours REFUNDED. The approval
/// used to be refused 409 `NOT_AT_WECHAT` ("WeChat does not have this order") although WeChat
/// held the order and its money.
#[tokio::test]
async fn a_secondary_merchant_aftersale_of_an_order_whose_add_answer_was_lost_is_approved() {
    let r = stack_with(&[("WX_FUND_TYPE", "1")]).await;
    let c = Client::new(&r);
    let (token, _) = c.login("lost-add-secondary-approve").await;
    let (no, total) =
        paid_with_its_component_id_lost(&r, &c, &token, "tap-lost-add-sec", true).await;
    // The payment's read-back stores the id; one paid without it stored (an older record, a
    // failed best-effort write) is what the approval must still handle.
    forget_wx_order_id(&r, &no).await;
    let (_, ours) = applied_in_wechat(&c, &no, total).await;
    assert_eq!(stored_wx_order_id(&r, &no).await, None);

    let (s, v) = c
        .admin(
            "/admin/aftersaleSync",
            &json!({"action": "approve", "aftersale_id": ours}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["aftersale"]["status"], "REFUNDING", "{v}");
    assert!(
        stored_wx_order_id(&r, &no).await.is_some_and(|id| id > 0),
        "the component order's id is learnt and stored"
    );
    eventually(
        "WeChat's refund recorded",
        Duration::from_secs(10),
        || async { merchant_aftersale(&c, &no, &ours).await["status"] == "REFUNDED" },
    )
    .await;
    let accepts = r.sandbox.calls("shop/ecaftersale/acceptrefund");
    assert_eq!(accepts.len(), 1, "accepted at WeChat once: {accepts:?}");
    let dead = c.dead_letters().await;
    assert!(dead.is_empty(), "{dead:?}");
}

/// The `shop/order/add` answer lost, the order paid through WeChat Pay: the user applies in
/// WeChat's order centre (imported here by its push), then cancels there — that push lost.
/// The merchant approves before anything read the cancel back, and the refund task runs
/// while the after-sale's sync cannot learn the component order's id (`shop/order/get`
/// busy). The refund task still reads WeChat's after-sale first: cancelled there, so nothing
/// is refunded and ours is CANCELLED. It used to check WeChat's after-sale only for an order
/// with a stored component id, and refunded an after-sale the user had cancelled.
#[tokio::test]
async fn an_aftersale_cancelled_in_wechat_of_an_order_whose_add_answer_was_lost_is_not_refunded() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (token, _) = c.login("lost-add-refund-check").await;
    let (no, total) =
        paid_with_its_component_id_lost(&r, &c, &token, "tap-lost-add-refund", false).await;
    let (wx, ours) = applied_in_wechat(&c, &no, total).await;
    cancelled_in_wechat_unpushed(&c, wx).await;

    // The after-sale's sync cannot learn the order's id now; it tries again later.
    c.fault(json!({"path": "shop/order/get", "mode": "errcode", "errcode": -1, "count": 20}))
        .await;
    let (s, v) = c
        .admin(
            "/admin/aftersaleSync",
            &json!({"action": "approve", "aftersale_id": ours}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    eventually(
        "ours cancelled as WeChat's was",
        Duration::from_secs(10),
        || async { merchant_aftersale(&c, &no, &ours).await["status"] == "CANCELLED" },
    )
    .await;
    c.clear_faults().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refunds: Vec<Value> = r
        .sandbox
        .calls("secapi/pay/refund")
        .into_iter()
        .filter(|c| c["out_trade_no"] == no.as_str())
        .collect();
    assert!(refunds.is_empty(), "nothing refunded: {refunds:?}");
    assert_eq!(c.status(&token, &no).await["status"], "PAID");
}

/// The `shop/order/add` answer lost, the order paid: the user applies in WeChat's order
/// centre (imported by its push) and cancels there, that push lost. Once the grace for pushes
/// has passed, the schedule reads the after-sale back (`ecaftersale/get`) and cancels ours as
/// the push would have. Its sweep used to pass over the after-sales of any order without a
/// stored component id: ours stayed REQUESTED, holding the order's money for an after-sale
/// WeChat shows cancelled.
#[tokio::test]
async fn the_schedule_reads_back_aftersales_of_an_order_whose_add_answer_was_lost() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (token, _) = c.login("lost-add-sweep").await;
    let (no, total) =
        paid_with_its_component_id_lost(&r, &c, &token, "tap-lost-add-sweep", false).await;
    let (wx, ours) = applied_in_wechat(&c, &no, total).await;
    cancelled_in_wechat_unpushed(&c, wx).await;

    r.app.clock.advance(11 * 60_000);
    let report = support::run_schedule(&r).await;
    assert_eq!(
        merchant_aftersale(&c, &no, &ours).await["status"],
        "CANCELLED",
        "{report}"
    );
    assert_eq!(report["wechat_refunds"]["cancelled"], 1, "{report}");
    let dead = c.dead_letters().await;
    assert!(dead.is_empty(), "{dead:?}");
}

/// Secondary-merchant mode, the `shop/order/add` answer lost and the order paid at WeChat: the
/// user applies in WeChat's order centre and cancels there (ours CANCELLED by its push) while
/// WeChat cannot tell us the component order's id (`shop/order/get` busy). The merchant then
/// approves the cancelled after-sale: refused at once (409 `AFTERSALE_STATE`) without asking
/// WeChat anything — the refusal does not turn on WeChat. The approval used to ask
/// `shop/order/get` first, and answered 503 `WECHAT_UNAVAILABLE` ("approve again") for an
/// after-sale no approval could ever take.
#[tokio::test]
async fn approving_a_cancelled_aftersale_of_an_order_whose_add_answer_was_lost_asks_wechat_nothing()
{
    let r = stack_with(&[("WX_FUND_TYPE", "1")]).await;
    let c = Client::new(&r);
    let (token, _) = c.login("lost-add-cancelled-approve").await;
    let (no, total) =
        paid_with_its_component_id_lost(&r, &c, &token, "tap-lost-add-cancelled", true).await;
    // As above: paid with no id stored, so an approval would have to ask WeChat for it.
    forget_wx_order_id(&r, &no).await;
    let (wx, ours) = applied_in_wechat(&c, &no, total).await;
    c.fault(json!({"path": "shop/order/get", "mode": "errcode", "errcode": -1, "count": 100}))
        .await;
    c.control(
        "aftersale",
        &json!({"action": "cancel", "aftersale_id": wx}),
    )
    .await;
    eventually(
        "ours cancelled by the push",
        Duration::from_secs(10),
        || async { merchant_aftersale(&c, &no, &ours).await["status"] == "CANCELLED" },
    )
    .await;
    // The cancel's sync (which cannot learn the id either) is done asking for now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = || r.sandbox.calls("shop/order/get").len();
    let before = asked();

    let (s, v) = c
        .admin(
            "/admin/aftersaleSync",
            &json!({"action": "approve", "aftersale_id": ours}),
        )
        .await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["code"], "AFTERSALE_STATE", "{v}");
    assert_eq!(asked(), before, "WeChat was not asked");
    assert_eq!(stored_wx_order_id(&r, &no).await, None);
}

/// `shop/order/add` failed without WeChat making the order (busy, every try), the order was
/// paid after all, and the user applies for a refund of it: the after-sale's sync finds no
/// component order at WeChat (1010011) once a late `add` would have landed, which is kept as
/// a `component_order_missing` event. The schedule's read-back of open after-sales then asks
/// WeChat nothing about that after-sale, run after run, and says why (`not_at_wechat` in its
/// report): WeChat holds no after-sale of an order it never made. Every run used to spend an
/// `ecaftersale/get` on it that could only fail.
#[tokio::test]
async fn the_schedule_asks_wechat_nothing_about_aftersales_of_an_order_it_never_made() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (token, openid) = c.login("never-made-aftersale").await;
    c.fault(json!({"path": "shop/order/add", "mode": "errcode", "errcode": -1, "count": 5}))
        .await;
    let (s, v) = c.order(&token, 1, Some("tap-never-made-as")).await;
    assert_eq!(s, 503, "{v}");
    let made = orders(&c, &token).await;
    let no = made[0]["out_trade_no"].as_str().unwrap().to_owned();
    notify_paid(&r, &c, &made[0], &openid).await;
    assert_eq!(c.status(&token, &no).await["status"], "PAID");
    let (s, v) = c
        .post(
            "/fn/aftersaleSync",
            Some(&token),
            &json!({"action": "apply", "out_trade_no": no, "reason": "changed my mind"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let ours = v["aftersale"]["aftersale_id"].as_str().unwrap().to_owned();

    r.app.clock.advance(6 * 60_000);
    eventually(
        "a person told of the paid order missing from the component",
        Duration::from_secs(10),
        || async {
            let (s, v) = c
                .admin(
                    "/admin/orderSync",
                    &json!({"action": "events", "source": "component_order_missing"}),
                )
                .await;
            assert_eq!(s, 200, "{v}");
            v["events"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e["key"] == no.as_str()))
        },
    )
    .await;

    // Past the grace for pushes: the after-sale is due to be read back.
    r.app.clock.advance(11 * 60_000);
    for run in 1..=2 {
        let report = support::run_schedule(&r).await;
        let sweep = &report["wechat_refunds"];
        assert_eq!(sweep["asked"], 0, "run {run}: {report}");
        assert_eq!(sweep["not_at_wechat"], 1, "run {run}: {report}");
    }
    let gets = r.sandbox.calls("shop/ecaftersale/get");
    assert!(gets.is_empty(), "WeChat was not asked: {gets:?}");
    assert_eq!(
        merchant_aftersale(&c, &no, &ours).await["status"],
        "REQUESTED"
    );
    let dead = c.dead_letters().await;
    assert!(dead.is_empty(), "{dead:?}");
}
