#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! The stock orders take and give back reaches WeChat's trading component, end to end over
//! HTTP: WeChat shows a listed SKU's `stock_num` on its cards and in Channels live rooms (one
//! at 0 cannot be listed in a live room), so a SKU sold out here must read 0 there, and one
//! an order gave back must read its units again — coalesced, not one call per order.

use serde_json::{json, Value};
use std::time::Duration;

#[path = "reliability_support.rs"]
mod support;
use support::{eventually, notification, run_schedule, stack_with, Client};

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

/// GIVEN the listed tea at 5 and an order of 2 (WeChat reads 3), closed unpaid (WeChat reads 5)
/// WHEN the user's payment lands after the close (`payCallback`: the money is real, the order
/// is PAID and the close's units are taken again)
/// THEN WeChat reads 3 again: the stock taken again reaches it like any other change.
#[tokio::test]
async fn a_payment_after_the_close_takes_the_stock_again_at_wechat() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    c.set_stock(5).await;
    let (token, openid) = c.login("mirror-late-payer").await;
    let order = c.order_tea(&token, 2).await;
    let no = no_of(&order);
    until_wechat_reads(&r, &c, 3).await;
    close(&c, &token, &no).await;
    assert_eq!(c.stock().await, 5);
    until_wechat_reads(&r, &c, 5).await;

    let total = order["total_fee"].as_i64().unwrap();
    let (s, reply) = c
        .raw(
            "/callbacks/pay",
            notification(&r, &no, &openid, total, "4200000000202612070000000001"),
        )
        .await;
    assert_eq!(s, 200, "{reply}");
    assert!(reply.contains("SUCCESS"), "{reply}");
    assert_eq!(c.status(&token, &no).await["status"], "PAID");
    assert_eq!(c.stock().await, 3, "the paid order's units are taken again");
    until_wechat_reads(&r, &c, 3).await;
    r.stop();
}

/// The tea's stock mirror entry as stored (`None`: there is none), raw.
async fn mirror_entry(r: &wxlocal::gateway::Running) -> Option<Value> {
    let rec = r
        .app
        .store
        .get(wxshop::store::Kind::Outbox, "stock-mirror-tea")
        .await
        .unwrap()?;
    Some(rec.decode::<Value>().unwrap())
}

/// GIVEN the listed tea at 10, WeChat slow to answer `update_without_audit` (the call applied,
/// its answer 4 s late)
/// WHEN an order takes 1 (the mirror's call: WeChat reads 9) and, while that call is still on
/// its way back, a second order takes 2
/// THEN WeChat ends reading 7 — the change made during the call is not lost — and between the
/// two calls the product's entry waits in the outbox, due later with the stock it sent, free
/// (no worker holds it: a drain's page, a payment's sync in it, does not wait out the
/// product's spacing).
#[tokio::test]
async fn a_change_during_the_call_is_sent_after_a_cooling_off_nobody_waits_for() {
    let r = stack_with(&[("WX_HTTP_TIMEOUT_MS", "20000")]).await;
    let c = Client::new(&r);
    c.set_stock(10).await;
    assert_eq!(wechat_stock(&c).await, 10);
    c.control(
        "faults",
        &json!({"path": WITHOUT_AUDIT, "mode": "slow", "count": 1, "delay_ms": 4000}),
    )
    .await;
    let (alice, _) = c.login("mirror-slow-alice").await;
    let (bob, _) = c.login("mirror-slow-bob").await;
    c.order_tea(&alice, 1).await;
    // The call is applied (WeChat reads 9) and its answer not back yet.
    eventually("WeChat to read 9", WAIT, || async {
        wechat_stock(&c).await == 9
    })
    .await;
    c.order_tea(&bob, 2).await;
    assert_eq!(c.stock().await, 7);

    // Between the calls: the entry waits, due later, not claimed, carrying what it sent.
    let seen = std::sync::Mutex::new(None);
    let (rr, seen_ref) = (&r, &seen);
    eventually(
        "the mirror entry to cool off, due later",
        WAIT,
        move || async move {
            let Some(e) = mirror_entry(rr).await else {
                return false;
            };
            let cooling = e["attempts"] == 0
                && e["due_at_ms"].as_i64().unwrap() > rr.app.clock.now_ms()
                && e["task"]["sent"].is_object();
            if cooling {
                *seen_ref.lock().unwrap() = Some(e);
            }
            cooling
        },
    )
    .await;
    let e = seen.lock().unwrap().take().unwrap();
    let sent = e["task"]["sent"]["tea-250g"].as_i64().unwrap();
    assert!(sent == 9 || sent == 7, "{e}");

    until_wechat_reads(&r, &c, 7).await;
    // Done once nothing changed for a cooling-off: the entry goes, nothing more is sent.
    eventually("the mirror entry to be done", WAIT, || async {
        mirror_entry(&r).await.is_none()
    })
    .await;
    assert_eq!(wechat_stock(&c).await, 7);
    assert!(c.dead_letters().await.is_empty());
    r.stop();
}

/// GIVEN the listed tea at 5 (WeChat reads 5), then WeChat losing it (`update_without_audit`
/// answers 9401002, no such product)
/// WHEN an order takes 1
/// THEN the merchant is told: a `stock_mirror_product_lost` event names the tea and what to do
/// (`set_stock` or `upsert` uploads it again); the task does not upload it again itself (no
/// `spu/add`: that would put it back in audit behind the merchant's back), the tea stays on
/// sale here, and nothing is dead-lettered.
#[tokio::test]
async fn a_product_wechat_lost_is_reported_to_the_merchant() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    c.set_stock(5).await;
    let adds = r.sandbox.calls("shop/spu/add").len();
    c.control(
        "faults",
        &json!({"path": WITHOUT_AUDIT, "mode": "errcode", "errcode": 9401002, "count": 1}),
    )
    .await;
    let (token, _) = c.login("mirror-lost").await;
    c.order_tea(&token, 1).await;
    let found = std::sync::Mutex::new(None);
    let (cr, found_ref) = (&c, &found);
    eventually(
        "a stock_mirror_product_lost event",
        WAIT,
        move || async move {
            let (s, v) = cr
                .admin(
                    "/admin/orderSync",
                    &json!({"action": "events", "source": "stock_mirror_product_lost"}),
                )
                .await;
            assert_eq!(s, 200, "{v}");
            let event = v["events"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["body"]["product_id"] == "tea")
                .cloned();
            let is = event.is_some();
            *found_ref.lock().unwrap() = event;
            is
        },
    )
    .await;
    let event = found.lock().unwrap().take().unwrap();
    let what = event["body"]["what_to_do"].as_str().unwrap();
    assert!(
        what.contains("set_stock") && what.contains("upsert"),
        "{event}"
    );
    assert!(
        event["body"]["error"].as_str().unwrap().contains("9401002"),
        "{event}"
    );
    assert_eq!(r.sandbox.calls("shop/spu/add").len(), adds);
    let (s, v) = c
        .admin(
            "/admin/catalogSync",
            &json!({"action": "get", "product_id": "tea"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["product"]["listing"], "LISTED", "{v}");
    assert!(c.dead_letters().await.is_empty());
    r.stop();
}

/// GIVEN the stack as in AWS, where the table's stream (new outbox entries only) runs the
/// outbox — here no relay, the test hands orderSync the stream's records — the listed tea at
/// 10 and WeChat slow to answer `update_without_audit` (applied, answer 4 s late)
/// WHEN an order takes 1 (its stream record runs the mirror: WeChat reads 9) and a second
/// order takes 2 while that call is on its way back
/// THEN by the end of that same invocation WeChat reads 7 and the entry is done: the stream
/// never sees the entry written back (a MODIFY), so the invocation that left it cooling off
/// runs it again once due — not the 5-minute schedule, and not a delete and add again.
#[tokio::test]
async fn in_a_stream_invocation_a_change_during_the_call_is_sent_before_it_ends() {
    use wxshop::handlers::order_sync::{on_outbox_records, LOCAL_SCHEDULE_BUDGET};
    let mut overrides = std::collections::HashMap::new();
    overrides.insert("ORDER_TTL_SECS".to_owned(), "900".to_owned());
    overrides.insert("WX_HTTP_TIMEOUT_MS".to_owned(), "20000".to_owned());
    let r = wxlocal::gateway::start(wxlocal::gateway::Options {
        addr: "127.0.0.1:0".parse().unwrap(),
        store: Some("memory".into()),
        seed: true,
        time_scale: 0.001,
        overrides,
        use_env: false,
        // No relay: only the "stream" below runs the outbox.
        relay_every: Duration::from_secs(3600),
        schedule_every: None,
        metrics: wxshop::metrics::Metrics::off(),
    })
    .await
    .expect("stack starts");
    let c = Client::new(&r);
    c.set_stock(10).await;
    assert_eq!(wechat_stock(&c).await, 10);
    c.control(
        "faults",
        &json!({"path": WITHOUT_AUDIT, "mode": "slow", "count": 1, "delay_ms": 4000}),
    )
    .await;
    let (alice, _) = c.login("stream-alice").await;
    let (bob, _) = c.login("stream-bob").await;
    c.order_tea(&alice, 1).await;
    assert!(
        mirror_entry(&r).await.is_some(),
        "the order added the mirror"
    );
    let app = r.app.clone();
    let invocation = tokio::spawn(async move {
        let deadline = wxshop::time::Deadline::after(LOCAL_SCHEDULE_BUDGET);
        on_outbox_records(&app, vec!["stock-mirror-tea".to_owned()], deadline).await
    });
    eventually("WeChat to read 9", WAIT, || async {
        wechat_stock(&c).await == 9
    })
    .await;
    c.order_tea(&bob, 2).await;
    assert_eq!(c.stock().await, 7);
    let failed = tokio::time::timeout(WAIT, invocation)
        .await
        .expect("the invocation ends")
        .unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(wechat_stock(&c).await, 7, "sent by the same invocation");
    assert!(
        mirror_entry(&r).await.is_none(),
        "done: {:?}",
        mirror_entry(&r).await
    );
    r.stop();
}
