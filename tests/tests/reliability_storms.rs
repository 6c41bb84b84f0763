#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! Storms: many concurrent duplicates of the same request must add up to exactly one effect
//! each — one PAID transition and one `shop/order/pay` per paid order, one order per
//! idempotency key, never more stock sold than there was.
//!
//! Sized for CI (a few seconds each in debug); `WXSHOP_STORM_SCALE=10` multiplies the counts.
//! Figures are printed on stderr (`cargo test … -- --nocapture`) and recorded in
//! docs/RELIABILITY.md.

#[path = "reliability_support.rs"]
mod support;

use futures::stream::{self, StreamExt};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use support::*;

/// N real paid orders × 10 concurrent copies of their genuine notification.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicate_notification_storm_pays_and_syncs_each_order_once() {
    let n = 200 * scale();
    const COPIES: usize = 10;
    let r = stack_with(&[("WXPAY_NOTIFY_URL", DEAD_NOTIFY_URL)]).await;
    let c = Client::new(&r);
    c.set_stock((n * 2) as u64).await;

    // Twenty shoppers place N orders; each pays at WeChat Pay (the sandbox), which assigns
    // the transaction id. The sandbox's own notifications go to a dead address, so only the
    // storm below can record the payments.
    let mut users = Vec::new();
    for i in 0..20 {
        users.push(c.login(&format!("storm{i}")).await);
    }
    let t0 = Instant::now();
    let orders: Vec<(String, String, String, String)> = stream::iter(0..n)
        .map(|i| {
            let c = c.clone();
            let (token, openid) = users[i % users.len()].clone();
            async move {
                let (s, v) = c.order(&token, 1, None).await;
                assert_eq!(s, 200, "{v}");
                let no = v["out_trade_no"].as_str().unwrap().to_owned();
                let txid = c.pay_at_sandbox(&no).await;
                (token, openid, no, txid)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let placed = t0.elapsed();
    assert_eq!(orders.len(), n);

    // The storm: every order's notification ten times at once, all orders interleaved.
    let t1 = Instant::now();
    let mut bodies = Vec::with_capacity(n * COPIES);
    for (_, openid, no, txid) in &orders {
        let body = notification(&r, no, openid, 1990, txid);
        for _ in 0..COPIES {
            bodies.push(body.clone());
        }
    }
    {
        use rand::seq::SliceRandom;
        bodies.shuffle(&mut rand::thread_rng());
    }
    let replies: Vec<(u16, String)> = stream::iter(bodies)
        .map(|b| {
            let c = c.clone();
            async move { c.raw("/callbacks/pay", b).await }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let storm = t1.elapsed();
    let mut by_code: HashMap<&str, usize> = HashMap::new();
    for (status, text) in &replies {
        assert_eq!(*status, 200, "{text}");
        *by_code.entry(return_code(text)).or_insert(0) += 1;
    }
    assert_eq!(
        by_code.get("SUCCESS").copied().unwrap_or(0),
        n * COPIES,
        "every genuine notification, duplicate or not, is acknowledged: {by_code:?}"
    );

    // Every order reads PAID with the transaction WeChat assigned.
    for (token, _, no, txid) in &orders {
        let o = c.status(token, no).await;
        assert_eq!(o["status"], "PAID", "{o}");
        assert_eq!(o["transaction_id"], txid.as_str(), "{o}");
    }
    // Exactly one shop/order/pay per order: each PAID transition enqueues exactly one sync in
    // the same write, so this also counts the transitions.
    let t2 = Instant::now();
    eventually(
        "N shop/order/pay calls",
        Duration::from_secs(60),
        || async { c.order_pay_calls().await.len() >= n },
    )
    .await;
    let synced = t2.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await; // room for a wrong extra call
    let calls = c.order_pay_calls().await;
    let nos: HashSet<&str> = orders.iter().map(|o| o.2.as_str()).collect();
    assert_eq!(calls.len(), n, "one synced order per paid order");
    for (no, count) in &calls {
        assert!(nos.contains(no.as_str()), "sync for an unknown order {no}");
        assert_eq!(*count, 1, "{no} synced {count} times");
    }
    assert!(
        c.dead_letters().await.is_empty(),
        "nothing dead-lettered in a clean storm"
    );
    eprintln!(
        "FIGURES notification storm: orders={n} notifications={} SUCCESS={} FAIL={} \
         PAID={n} shop/order/pay={} placed+paid_at_wechat={placed:?} storm={storm:?} \
         ({:.0} notifications/s) sync_wait={synced:?}",
        n * COPIES,
        by_code.get("SUCCESS").copied().unwrap_or(0),
        by_code.get("FAIL").copied().unwrap_or(0),
        calls.values().sum::<usize>(),
        (n * COPIES) as f64 / storm.as_secs_f64(),
    );
}

/// K idempotency keys × 10 concurrent `unifiedOrder` calls each → K orders, never more.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_retries_with_one_idempotency_key_make_one_order() {
    let keys = 20 * scale();
    const COPIES: usize = 10;
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    c.set_stock((keys * COPIES * 2) as u64).await;
    let (token, _) = c.login("idem").await;
    let stock_before = c.stock().await;

    let t0 = Instant::now();
    let mut jobs = Vec::new();
    for k in 0..keys {
        for _ in 0..COPIES {
            jobs.push(format!("checkout-{k}"));
        }
    }
    {
        use rand::seq::SliceRandom;
        jobs.shuffle(&mut rand::thread_rng());
    }
    // A live duplicate answers 409 REQUEST_IN_PROGRESS: the client retries it (bounded)
    // until it gets the stored result.
    let results: Vec<(String, String, usize)> = stream::iter(jobs)
        .map(|key| {
            let c = c.clone();
            let token = token.clone();
            async move {
                let mut in_progress = 0;
                for _ in 0..400 {
                    let (s, v) = c.order(&token, 2, Some(&key)).await;
                    match s {
                        200 => {
                            return (
                                key,
                                v["out_trade_no"].as_str().unwrap().to_owned(),
                                in_progress,
                            )
                        }
                        409 if v["code"] == "REQUEST_IN_PROGRESS" => {
                            in_progress += 1;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        _ => panic!("unexpected reply {s} {v}"),
                    }
                }
                panic!("{key} stayed in progress");
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let wall = t0.elapsed();

    let mut by_key: HashMap<String, HashSet<String>> = HashMap::new();
    let mut in_progress_replies = 0;
    for (key, no, ip) in &results {
        by_key.entry(key.clone()).or_default().insert(no.clone());
        in_progress_replies += ip;
    }
    assert_eq!(by_key.len(), keys);
    for (key, nos) in &by_key {
        assert_eq!(nos.len(), 1, "{key} answered with several orders: {nos:?}");
    }
    let (_, list) = c.post("/fn/queryOrder", Some(&token), &json!({})).await;
    let listed = list["orders"].as_array().unwrap();
    assert_eq!(listed.len(), keys, "one stored order per key");
    // One WeChat Pay order per key as well, and stock taken once per key.
    let unified = r.sandbox.calls("pay/unifiedorder");
    let prepaid: HashSet<&str> = unified
        .iter()
        .filter_map(|v| v["out_trade_no"].as_str())
        .collect();
    assert_eq!(prepaid.len(), keys, "one pay/unifiedorder order per key");
    assert_eq!(unified.len(), keys, "no duplicate pay/unifiedorder call");
    assert_eq!(c.stock().await, stock_before - (keys as i64) * 2);
    eprintln!(
        "FIGURES idempotency storm: keys={keys} calls={} orders={} in_progress_retries={in_progress_replies} wall={wall:?}",
        keys * COPIES,
        listed.len()
    );
}

/// M shoppers race for S units (M = 3·S): exactly S orders, the rest SOLD_OUT, stock 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_purchases_never_oversell() {
    let s_units = 20 * scale();
    let m = 3 * s_units;
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    c.set_stock(s_units as u64).await;
    let mut users = Vec::new();
    for i in 0..10 {
        users.push(c.login(&format!("racer{i}")).await.0);
    }
    let t0 = Instant::now();
    let outcomes: Vec<(u16, Value, usize)> = stream::iter(0..m)
        .map(|i| {
            let c = c.clone();
            let token = users[i % users.len()].clone();
            async move {
                // BUSY (503) means "the catalog changed under me too often; retry": a client
                // retries it. Anything else is final.
                let mut busy = 0;
                loop {
                    let (s, v) = c.order(&token, 1, None).await;
                    if s == 503 && v["code"] == "BUSY" && busy < 50 {
                        busy += 1;
                        continue;
                    }
                    return (s, v, busy);
                }
            }
        })
        .buffer_unordered(48)
        .collect()
        .await;
    let wall = t0.elapsed();
    let mut ok = 0;
    let mut sold_out = 0;
    let mut busy = 0;
    for (s, v, b) in &outcomes {
        busy += b;
        match (*s, v["code"].as_str()) {
            (200, _) => ok += 1,
            (409, Some("SOLD_OUT")) => sold_out += 1,
            _ => panic!("unexpected reply {s} {v}"),
        }
    }
    assert_eq!(ok, s_units, "exactly the stock was sold");
    assert_eq!(sold_out, m - s_units, "everyone else was refused");
    let left = c.stock().await;
    assert_eq!(left, 0, "stock never negative, nothing left unsold");
    let (_, wx) = c.get("/sandbox/_control/state").await;
    let prepaid = wx["pay_orders"].as_array().unwrap().len();
    assert_eq!(prepaid, s_units, "WeChat Pay saw one order per unit sold");
    eprintln!(
        "FIGURES stock race: stock={s_units} buyers={m} sold={ok} sold_out={sold_out} busy_retries={busy} stock_left={left} wall={wall:?}"
    );
}
