#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! What the mini program's order page shows of a direct (fund_type 0) order the user
//! cancelled in WeChat's order centre, its `open_product_order_cancel` push lost: `queryOrder`
//! (which the page polls) reads it as WeChat holds it — closed, its stock back, its WeChat Pay
//! order closed so the cashier no longer takes it — as the schedule's sweep and a repeated
//! `unifiedOrder` key do. The component order is read (`shop/order/get`) only when WeChat Pay
//! reads the order unpaid, and a failed read leaves the page as it was.

use serde_json::{json, Value};
use std::time::Duration;

#[path = "reliability_support.rs"]
mod support;
use support::{
    closed_at_wechat_pay, component_reads, pay_calls, pay_state, stack_with, Client,
    DEAD_NOTIFY_URL,
};
use wxlocal::gateway::Running;

/// Long enough for a loaded machine.
const WAIT: Duration = Duration::from_secs(30);

/// `queryOrder` for `no`, as the mini program's order page polls it: (HTTP status, body).
async fn poll(c: &Client, token: &str, no: &str) -> (u16, Value) {
    c.post("/fn/queryOrder", Some(token), &json!({"out_trade_no": no}))
        .await
}

/// A direct-payment shop (fund_type 0, the trading component on) whose WeChat Pay
/// notifications go nowhere, one unit of tea on sale, and `user`'s unpaid order of it: (stack,
/// client, session token, order number).
async fn ordered(user: &str) -> (Running, Client, String, String) {
    let r = stack_with(&[("WXPAY_NOTIFY_URL", DEAD_NOTIFY_URL)]).await;
    let c = Client::new(&r);
    c.set_stock(1).await;
    let (token, _) = c.login(user).await;
    let order = c.order_tea(&token, 1).await;
    assert_eq!(order["fund_type"], 0, "{order}");
    assert_eq!(order["status"], "PREPAID", "{order}");
    let no = order["out_trade_no"].as_str().unwrap().to_owned();
    assert!(
        r.sandbox
            .calls("shop/order/add")
            .iter()
            .any(|a| a.to_string().contains(&no)),
        "a trading-component order"
    );
    assert_eq!(c.stock().await, 0);
    (r, c, token, no)
}

/// The user cancels order `no` in WeChat's order centre, and its push is lost.
async fn cancel_in_wechat_push_lost(c: &Client, no: &str) {
    c.control(
        "order",
        &json!({"action": "cancel", "out_order_id": no, "push": false}),
    )
    .await;
}

/// GIVEN a direct-payment shop with the trading component on and an unpaid order holding the
/// last unit, WHEN the user cancels it in WeChat's order centre, the cancel push is lost, and
/// the mini program's order page polls `queryOrder`, THEN the order reads CLOSED at once (not
/// "to pay"), the unit is back on sale for the next buyer, its WeChat Pay order is closed
/// (`pay/closeorder`, once) and the cashier no longer takes a payment for it; nothing
/// dead-lettered. It used to read PREPAID, holding the unit until the sweep came, while the
/// user could still pay it at WeChat Pay's cashier — a payment WeChat's component then
/// refuses to sync, money for a person to refund.
#[tokio::test]
async fn query_order_closes_a_direct_order_cancelled_in_wechat_whose_push_was_lost() {
    let (r, c, token, no) = ordered("query-cancelled-direct").await;
    cancel_in_wechat_push_lost(&c, &no).await;

    let (s, v) = poll(&c, &token, &no).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["order"]["status"], "CLOSED", "{v}");
    assert_eq!(
        pay_calls(&r, "pay/orderquery", &no),
        1,
        "WeChat Pay asked once"
    );
    assert_eq!(c.stock().await, 1, "the unit is back on sale");

    closed_at_wechat_pay(&r, &c, &no, WAIT).await;
    assert_eq!(
        pay_calls(&r, "pay/closeorder", &no),
        1,
        "its WeChat Pay order closed once"
    );

    // Polled again: closed, nothing asked of WeChat, nothing given back twice.
    let (s, v) = poll(&c, &token, &no).await;
    assert_eq!(
        (s, v["order"]["status"].as_str()),
        (200, Some("CLOSED")),
        "{v}"
    );
    assert_eq!(pay_calls(&r, "pay/orderquery", &no), 1);
    let (other, _) = c.login("query-cancelled-next-buyer").await;
    let next = c.order_tea(&other, 1).await;
    assert_eq!(next["status"], "PREPAID", "{next}");
    assert_eq!(
        c.stock().await,
        0,
        "given back once: the next buyer holds it"
    );
    assert!(c.dead_letters().await.is_empty());
}

/// GIVEN the same shop and an unpaid order nobody cancelled, WHEN the order page polls it,
/// THEN it reads PREPAID, its unit still held, each poll asking WeChat Pay once and reading
/// the component order once (`shop/order/get`); and WHEN the user pays (the notification
/// lost), THEN the next poll reads PAID from WeChat Pay's answer alone — no component read —
/// and a paid order's poll asks WeChat nothing more.
#[tokio::test]
async fn query_order_reads_the_component_order_only_while_wechat_pay_reads_it_unpaid() {
    let (r, c, token, no) = ordered("query-not-cancelled").await;
    assert_eq!(component_reads(&r, &no), 0, "ordering reads nothing back");

    for n in 1..=2 {
        let (s, v) = poll(&c, &token, &no).await;
        assert_eq!(
            (s, v["order"]["status"].as_str()),
            (200, Some("PREPAID")),
            "{v}"
        );
        assert_eq!(pay_calls(&r, "pay/orderquery", &no), n);
        assert_eq!(component_reads(&r, &no), n, "one component read per poll");
    }
    assert_eq!(c.stock().await, 0, "still held");
    assert_eq!(pay_state(&c, &no).await.as_deref(), Some("NOTPAY"));

    c.pay_at_sandbox(&no).await;
    let (s, v) = poll(&c, &token, &no).await;
    assert_eq!(
        (s, v["order"]["status"].as_str()),
        (200, Some("PAID")),
        "{v}"
    );
    assert_eq!(pay_calls(&r, "pay/orderquery", &no), 3);
    assert_eq!(
        component_reads(&r, &no),
        2,
        "paid: the component order not read"
    );
    let (s, v) = poll(&c, &token, &no).await;
    assert_eq!(
        (s, v["order"]["status"].as_str()),
        (200, Some("PAID")),
        "{v}"
    );
    assert_eq!(
        pay_calls(&r, "pay/orderquery", &no),
        3,
        "a paid order: nothing asked"
    );
}

/// GIVEN a direct-payment shop with the trading component off (no component order: no
/// `wx_order_id`), WHEN the order page polls an unpaid order, THEN it reads PREPAID and no
/// component order is read.
#[tokio::test]
async fn query_order_reads_no_component_order_for_an_order_not_in_the_component() {
    let r = stack_with(&[
        ("WXPAY_NOTIFY_URL", DEAD_NOTIFY_URL),
        ("WX_TRADING_COMPONENT", "off"),
    ])
    .await;
    let c = Client::new(&r);
    let (token, _) = c.login("query-no-component").await;
    let order = c.order_tea(&token, 1).await;
    assert_eq!(order["fund_type"], 0, "{order}");
    let no = order["out_trade_no"].as_str().unwrap().to_owned();
    let (s, v) = poll(&c, &token, &no).await;
    assert_eq!(
        (s, v["order"]["status"].as_str()),
        (200, Some("PREPAID")),
        "{v}"
    );
    assert_eq!(pay_calls(&r, "pay/orderquery", &no), 1);
    assert!(
        r.sandbox.calls("shop/order/get").is_empty(),
        "no component order to read"
    );
}

/// GIVEN an order the user cancelled in WeChat's order centre (push lost), WHEN the order
/// page polls it while WeChat's component order cannot be read (`shop/order/get` failing),
/// THEN the poll still answers 200 with the order as stored (PREPAID, its unit held) — a
/// failed read is not the user's problem, and nothing is closed on it; and once WeChat
/// answers again, the next poll reads it CLOSED, the unit back on sale.
#[tokio::test]
async fn a_failed_component_read_leaves_the_poll_answering_the_stored_order() {
    let (r, c, token, no) = ordered("query-component-unreadable").await;
    cancel_in_wechat_push_lost(&c, &no).await;
    c.fault(json!({"path": "shop/order/get", "mode": "http500", "count": 1000}))
        .await;

    let (s, v) = poll(&c, &token, &no).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["order"]["status"], "PREPAID", "{v}");
    assert_eq!(
        pay_calls(&r, "pay/orderquery", &no),
        1,
        "WeChat Pay answered"
    );
    assert_eq!(c.stock().await, 0, "still held");
    assert_eq!(pay_state(&c, &no).await.as_deref(), Some("NOTPAY"));

    c.clear_faults().await;
    let (s, v) = poll(&c, &token, &no).await;
    assert_eq!(
        (s, v["order"]["status"].as_str()),
        (200, Some("CLOSED")),
        "{v}"
    );
    assert_eq!(c.stock().await, 1, "the unit is back on sale");
}
