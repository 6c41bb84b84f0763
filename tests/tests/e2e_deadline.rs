#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! No WeChat call outlives the function's own time. Each call waits `WX_HTTP_TIMEOUT_MS` at
//! most, but a chain of them can outlast a Lambda's Timeout; Lambda then kills the function
//! mid-call and the work is cut anywhere (an idempotency key answered 409 for its claim's
//! window, an outbox entry leased for a minute). With the invocation's deadline bounding every
//! call, a slow WeChat makes the request fail cleanly — 503, nothing half-done, the same key
//! good again at once — and an orderSync item fail cleanly and stay due.
//!
//! The stacks give their functions a time of their own (`WXLOCAL_FUNCTION_TIME_MS`, as the
//! template's Timeout does in AWS) and a `WX_HTTP_TIMEOUT_MS` longer than it, so that only the
//! deadline can cut the delayed call.

use serde_json::json;
use std::time::{Duration, Instant};

#[path = "reliability_support.rs"]
mod support;
use support::{eventually, pay_calls, stack_with, Client};

/// Long enough for a loaded machine.
const WAIT: Duration = Duration::from_secs(30);

/// unifiedOrder's time in these stacks.
const UNIFIED_ORDER_TIME: Duration = Duration::from_secs(4);

/// GIVEN unifiedOrder has 4 s to run AND WeChat Pay's `unifiedorder` takes 20 s to answer
/// (calls may wait 30 s), WHEN a user orders, THEN the answer is a clean 503 well within the
/// function's time (not a function killed mid-call), the stock is back, AND once WeChat Pay
/// is quick again the same idempotency key orders at once (no 409 from a claim left in
/// progress).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_whose_wechat_pay_call_outlasts_the_function_fails_cleanly_and_retries() {
    let r = stack_with(&[
        ("WX_HTTP_TIMEOUT_MS", "30000"),
        ("WXLOCAL_FUNCTION_TIME_MS", "unifiedOrder=4000"),
    ])
    .await;
    let c = Client::new(&r);
    let (token, _) = c.login("deadline-buyer").await;
    let stock = c.stock().await;
    c.fault(json!({"path": "pay/unifiedorder", "mode": "delay", "delay_ms": 20_000}))
        .await;

    let started = Instant::now();
    let (s, v) = c.order(&token, 1, Some("deadline-key-1")).await;
    let took = started.elapsed();
    assert_eq!(s, 503, "a clean 'try again': {v}");
    // Loosely: within the function's time and a generous margin for a loaded machine, far
    // from the 20 s WeChat Pay takes.
    assert!(
        took < UNIFIED_ORDER_TIME + Duration::from_secs(5),
        "answered after {took:?}"
    );
    eventually("the stock back", WAIT, || async {
        c.stock().await == stock
    })
    .await;

    c.clear_faults().await;
    let (s, v) = c.order(&token, 1, Some("deadline-key-1")).await;
    assert_eq!(s, 200, "the same key orders once WeChat Pay answers: {v}");
    assert!(v["out_trade_no"].is_string(), "{v}");
    assert_eq!(c.stock().await, stock - 1, "one unit taken, once");
}

/// GIVEN orderSync has 3 s to run (its stream batch: here the outbox relay) AND WeChat Pay's
/// `closeorder` takes 25 s to answer (calls may wait 30 s), WHEN the user closes an unpaid
/// order, THEN the close task's call is cut by the batch's time and the task, still due, is
/// tried again within seconds (not held by one call killed with its invocation), AND once
/// WeChat Pay is quick again it is done: the WeChat Pay order closed, nothing dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_sync_item_whose_call_outlasts_the_batch_fails_cleanly_and_stays_due() {
    let r = stack_with(&[
        ("WX_HTTP_TIMEOUT_MS", "30000"),
        ("WXLOCAL_FUNCTION_TIME_MS", "orderSync=3000"),
    ])
    .await;
    let c = Client::new(&r);
    let (token, _) = c.login("deadline-closer").await;
    let order = c.order_tea(&token, 1).await;
    let no = order["out_trade_no"].as_str().unwrap().to_owned();
    c.fault(json!({"path": "pay/closeorder", "mode": "delay", "delay_ms": 25_000}))
        .await;

    let (s, v) = c
        .post(
            "/fn/queryOrder",
            Some(&token),
            &json!({"out_trade_no": no, "action": "close"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["order"]["status"], "CLOSED", "{v}");

    // Each try is cut within the batch's 3 s, so a second one comes within seconds — not after
    // the 25 s the first call would otherwise hang.
    eventually(
        "the close task tried again",
        Duration::from_secs(20),
        || async { pay_calls(&r, "pay/closeorder", &no) >= 2 },
    )
    .await;

    c.clear_faults().await;
    eventually("the close task done", WAIT, || async {
        let (_, st) = c.get("/sandbox/_control/state").await;
        let closed = st["pay_orders"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["out_trade_no"] == no.as_str() && o["trade_state"] == "CLOSED");
        closed && c.dead_letters().await.is_empty()
    })
    .await;
}
