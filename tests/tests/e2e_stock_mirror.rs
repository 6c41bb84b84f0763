#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! The stock orders take and give back reaches WeChat's trading component, end to end over
//! HTTP: WeChat shows a listed SKU's `stock_num` on its cards and in Channels live rooms (one
//! at 0 cannot be listed in a live room), so a SKU sold out here must read 0 there, and one
//! an order gave back must read its units again — coalesced, not one call per order.

use serde_json::{json, Value};
use std::time::Duration;

#[path = "reliability_support.rs"]
mod support;
use support::{eventually, run_schedule, stack_with, Client};

/// Long enough for a loaded machine.
const WAIT: Duration = Duration::from_secs(30);
const WITHOUT_AUDIT: &str = "shop/spu/update_without_audit";

/// WeChat's `stock_num` of the seeded tea's SKU, as the sandbox holds it.
async fn wechat_stock(c: &Client) -> i64 {
    let (s, v) = c.get("/sandbox/_control/state").await;
    assert_eq!(s, 200, "{v}");
    let p = v["products"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["out_product_id"] == "tea")
        .cloned()
        .unwrap_or_else(|| panic!("the sandbox has no tea: {v}"));
    let sku = p["skus"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["out_sku_id"] == "tea-250g")
        .cloned()
        .unwrap_or_else(|| panic!("WeChat's tea has no tea-250g: {p}"));
    sku["stock_num"].as_i64().unwrap()
}

/// Waits (bounded) until WeChat's tea reads `want`, running the schedule meanwhile as its
/// trigger would.
async fn until_wechat_reads(r: &wxlocal::gateway::Running, c: &Client, want: i64) {
    eventually(
        &format!("WeChat's tea stock_num to read {want}"),
        WAIT,
        || async {
            if wechat_stock(c).await == want {
                return true;
            }
            run_schedule(r).await;
            wechat_stock(c).await == want
        },
    )
    .await;
}

async fn close(c: &Client, token: &str, no: &str) {
    let (s, v) = c
        .post(
            "/fn/queryOrder",
            Some(token),
            &json!({"out_trade_no": no, "action": "close"}),
        )
        .await;
    assert_eq!(
        (s, v["order"]["status"].as_str()),
        (200, Some("CLOSED")),
        "{v}"
    );
}

fn no_of(order: &Value) -> String {
    order["out_trade_no"].as_str().unwrap().to_owned()
}

/// GIVEN the listed tea with 2 in stock (WeChat reads 2)
/// WHEN two users order one each
/// THEN WeChat reads 0 (sold out: a live room no longer offers it);
/// WHEN one of them closes the order unpaid
/// THEN WeChat reads 1 again.
#[tokio::test]
async fn orders_sell_out_at_wechat_and_a_close_puts_the_unit_back_there() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    c.set_stock(2).await;
    assert_eq!(wechat_stock(&c).await, 2);
    let (alice, _) = c.login("mirror-alice").await;
    let (bob, _) = c.login("mirror-bob").await;
    let first = c.order_tea(&alice, 1).await;
    c.order_tea(&bob, 1).await;
    assert_eq!(c.stock().await, 0);
    until_wechat_reads(&r, &c, 0).await;

    close(&c, &alice, &no_of(&first)).await;
    assert_eq!(c.stock().await, 1);
    until_wechat_reads(&r, &c, 1).await;
    assert!(
        c.dead_letters().await.is_empty(),
        "{:?}",
        c.dead_letters().await
    );
    r.stop();
}

/// GIVEN the listed tea with 100 in stock
/// WHEN 20 orders take one each, one after another
/// THEN WeChat reads 80, and heard of it in far fewer calls than orders (coalesced: a flash
/// sale must not make one `update_without_audit` per order).
#[tokio::test]
async fn a_burst_of_orders_makes_few_calls() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    c.set_stock(100).await;
    let before = r.sandbox.calls(WITHOUT_AUDIT).len();
    let (token, _) = c.login("mirror-burst").await;
    const N: usize = 20;
    for _ in 0..N {
        c.order_tea(&token, 1).await;
    }
    assert_eq!(c.stock().await, 80);
    until_wechat_reads(&r, &c, 80).await;
    // Nothing more comes once WeChat has the last number.
    run_schedule(&r).await;
    let calls = r.sandbox.calls(WITHOUT_AUDIT).len() - before;
    assert!(
        (1..=N / 4).contains(&calls),
        "{calls} update_without_audit calls for {N} orders"
    );
    assert_eq!(wechat_stock(&c).await, 80);
    r.stop();
}

/// GIVEN an order of the listed tea (WeChat reads the stock it left)
/// WHEN the merchant delists the tea and the order is closed unpaid
/// THEN the unit is back here, and WeChat is not called: a product it does not list gets no
/// stock call (as one never listed, which no order can take).
#[tokio::test]
async fn a_product_wechat_does_not_list_gets_no_stock_call() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    c.set_stock(5).await;
    let (token, _) = c.login("mirror-delisted").await;
    let order = c.order_tea(&token, 1).await;
    until_wechat_reads(&r, &c, 4).await;
    let (s, v) = c
        .admin(
            "/admin/catalogSync",
            &json!({"action": "delisting", "product_id": "tea"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let calls = r.sandbox.calls(WITHOUT_AUDIT).len();

    close(&c, &token, &no_of(&order)).await;
    assert_eq!(c.stock().await, 5);
    run_schedule(&r).await;
    run_schedule(&r).await;
    assert_eq!(r.sandbox.calls(WITHOUT_AUDIT).len(), calls);
    assert!(c.dead_letters().await.is_empty());
    r.stop();
}

/// GIVEN the listed tea at 5, an order of 2 paid (WeChat reads 3)
/// WHEN the user is refunded in full before shipping (the units go back on sale)
/// THEN WeChat reads 5 again.
#[tokio::test]
async fn units_back_after_a_refund_reach_wechat() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    c.set_stock(5).await;
    let (token, _) = c.login("mirror-refund").await;
    let no = no_of(&c.order_tea(&token, 2).await);
    c.pay_at_sandbox(&no).await;
    eventually("the order to read PAID", WAIT, || async {
        c.status(&token, &no).await["status"] == "PAID"
    })
    .await;
    until_wechat_reads(&r, &c, 3).await;
    let id = c
        .apply(&token, &no, json!({"reason": "changed my mind"}))
        .await;
    c.approve(&id).await;
    eventually("the after-sale to read REFUNDED", WAIT, || async {
        c.my_aftersale(&token, &no, &id).await["status"] == "REFUNDED"
    })
    .await;
    eventually("the stock back here", WAIT, || async {
        c.stock().await == 5
    })
    .await;
    until_wechat_reads(&r, &c, 5).await;
    r.stop();
}
