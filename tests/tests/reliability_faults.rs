#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! Faults: WeChat failing about 30 % of calls (error codes, HTTP 500, answers slower than
//! our client's timeout) must not lose or double anything: every order converges — paid,
//! synced once — through retries; only a permanent refusal dead-letters, and a dead letter
//! can be listed and replayed.
//!
//! The outbox backs off 2 s, 4 s, 8 s … between attempts. To keep this under a minute the
//! test moves the app's clock forward (`App::clock`, the same clock the outbox reads) before
//! each `drain`, which is what waiting would do.

#[path = "reliability_support.rs"]
mod support;

use futures::stream::{self, StreamExt};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::*;

async fn shop_status(c: &Client, no: &str) -> Option<i64> {
    let (_, st) = c.get("/sandbox/_control/state").await;
    st["shop_orders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["out_order_id"] == no)
        .and_then(|o| o["status"].as_i64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_percent_faults_every_order_converges_through_retries() {
    let n = 30 * scale();
    let r = stack_with(&[("WX_HTTP_TIMEOUT_MS", "300")]).await;
    let c = Client::new(&r);
    c.set_stock((n * 2) as u64).await;
    let (token, _) = c.login("faulty").await;
    let mut orders = Vec::new();
    for _ in 0..n {
        let (s, v) = c.order(&token, 1, None).await;
        assert_eq!(s, 200, "{v}");
        orders.push(v["out_trade_no"].as_str().unwrap().to_owned());
    }
    // From here on, every WeChat API (token, pay/orderquery, shop/order/pay, …) fails ~30 %
    // of the time: three faults of 12 % each (1 − 0.88³ ≈ 32 %).
    for f in [
        json!({"path": "*", "mode": "errcode", "errcode": -1, "err_code": "SYSTEMERROR", "rate": 0.12}),
        json!({"path": "*", "mode": "http500", "rate": 0.12}),
        json!({"path": "*", "mode": "delay", "delay_ms": 1000, "rate": 0.12}),
    ] {
        c.fault(f).await;
    }
    let t0 = Instant::now();
    // The users pay; WeChat Pay notifies (our callback needs nothing from WeChat to record
    // a payment). Meanwhile each user's app polls queryOrder, which asks pay/orderquery
    // under the same faults and must still answer (or say "retry" with 503).
    let polled: Vec<(usize, usize)> = stream::iter(orders.clone())
        .map(|no| {
            let c = c.clone();
            let token = token.clone();
            async move {
                c.pay_at_sandbox(&no).await;
                let (mut polls, mut unavailable) = (0, 0);
                loop {
                    polls += 1;
                    assert!(polls < 400, "{no} never read PAID");
                    let (s, v) = c
                        .post("/fn/queryOrder", Some(&token), &json!({"out_trade_no": no}))
                        .await;
                    match s {
                        200 if v["order"]["status"] == "PAID" => return (polls, unavailable),
                        200 => {}
                        503 => unavailable += 1,
                        _ => panic!("queryOrder {s} {v}"),
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let paid_after = t0.elapsed();
    let unavailable: usize = polled.iter().map(|p| p.1).sum();

    // Syncs converge: run what is due, let the back-off elapse, again (bounded).
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(
            rounds <= 40 && t0.elapsed() < Duration::from_secs(45),
            "syncs did not converge"
        );
        let (s, v) = c
            .admin("/admin/orderSync", &json!({"action": "drain"}))
            .await;
        assert!(s == 200 || s == 503, "{s} {v}");
        let mut synced = 0;
        let (_, st) = c.get("/sandbox/_control/state").await;
        for o in st["shop_orders"].as_array().unwrap() {
            if orders.iter().any(|no| o["out_order_id"] == no.as_str()) && o["status"] == 20 {
                synced += 1;
            }
        }
        if synced == n {
            break;
        }
        r.app.clock.advance(20_000);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let converged = t0.elapsed();
    // Nothing dead-lettered: every failure above was transient.
    let dead = c.dead_letters().await;
    assert!(dead.is_empty(), "transient faults dead-lettered: {dead:?}");
    let calls = c.order_pay_calls().await;
    let attempts: usize = orders
        .iter()
        .map(|no| calls.get(no).copied().unwrap_or(0))
        .sum();
    for no in &orders {
        let o = c.status(&token, no).await;
        assert_eq!(o["status"], "PAID", "{o}");
    }
    c.clear_faults().await;
    let (_, faults_log) = c.get("/sandbox/_control/notifications").await;
    let deliveries = faults_log["deliveries"]
        .as_array()
        .map(Vec::len)
        .unwrap_or(0);
    eprintln!(
        "FIGURES faults: orders={n} fault_rate≈32% paid_in={paid_after:?} queryOrder_polls={} \
         queryOrder_503={unavailable} shop/order/pay_attempts={attempts} (retries={}) \
         drain_rounds={rounds} converged_in={converged:?} dead_letters=0 pay_notification_attempts={deliveries}",
        polled.iter().map(|p| p.0).sum::<usize>(),
        attempts - n,
    );
}

#[tokio::test]
async fn a_permanent_refusal_is_dead_lettered_listed_and_replayable() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (token, _) = c.login("deadletter").await;
    let (_, v) = c.order(&token, 1, None).await;
    let no = v["out_trade_no"].as_str().unwrap().to_owned();
    // WeChat refuses the next shop/order/pay with a permanent error (47001, data format).
    c.fault(json!({"path": "shop/order/pay", "mode": "errcode", "errcode": 47001, "count": 1}))
        .await;
    c.pay_at_sandbox(&no).await;
    eventually("the dead letter", Duration::from_secs(10), || async {
        !c.dead_letters().await.is_empty()
    })
    .await;
    let dead: Vec<Value> = c.dead_letters().await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let entry = &dead[0];
    assert_eq!(entry["task"]["type"], "order_pay", "{entry}");
    assert_eq!(entry["task"]["out_trade_no"], no.as_str());
    assert_eq!(
        entry["attempts"], 1,
        "a permanent error is not retried: {entry}"
    );
    assert!(
        entry["last_error"].as_str().unwrap().contains("47001"),
        "{entry}"
    );
    // Not retried by itself meanwhile.
    r.app.clock.advance(3_600_000);
    let (s, _) = c
        .admin("/admin/orderSync", &json!({"action": "drain"}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(c.order_pay_calls().await.get(&no).copied(), Some(1));
    assert_ne!(shop_status(&c, &no).await, Some(20));
    // The merchant fixes the cause (the fault is gone) and replays it.
    let id = entry["id"].as_str().unwrap().to_owned();
    let (s, v) = c
        .admin("/admin/orderSync", &json!({"action": "replay", "id": id}))
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = c
        .admin("/admin/orderSync", &json!({"action": "replay", "id": id}))
        .await;
    assert_eq!(s, 404, "a replayed letter is no longer dead: {v}");
    eventually("the replayed sync", Duration::from_secs(10), || async {
        shop_status(&c, &no).await == Some(20)
    })
    .await;
    assert!(c.dead_letters().await.is_empty());
    assert_eq!(c.order_pay_calls().await.get(&no).copied(), Some(2));
}

/// `shop/order/pay` calls for `no` with an action other than 1 (pay): cancels.
async fn cancels_sent(c: &Client, no: &str) -> Vec<Value> {
    let (_, v) = c.get("/sandbox/_control/calls?path=shop/order/pay").await;
    v["calls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|call| call["out_order_id"] == no && call["action_type"] != 1)
        .cloned()
        .collect()
}

/// The user pays while the order is being closed (after their `queryOrder` close asked WeChat
/// Pay and heard "not paid", before `pay/closeorder` reached it): `pay/closeorder` answers
/// ORDERPAID and the payment is recorded — and the component order stays paid. It used to be cancelled there all the same
/// (from the order as read before the close), and the payment sync then took WeChat's
/// "cancelled" (250 ≥ 20) for "already paid": paid here, cancelled at WeChat, silently.
#[tokio::test]
async fn a_payment_racing_the_close_keeps_the_component_order_paid() {
    let r = stack_with(&[("WXPAY_NOTIFY_URL", DEAD_NOTIFY_URL)]).await;
    let c = Client::new(&r);
    let (token, _) = c.login("racer").await;
    let (s, v) = c.order(&token, 1, None).await;
    assert_eq!(s, 200, "{v}");
    let no = v["out_trade_no"].as_str().unwrap().to_owned();
    assert_eq!(shop_status(&c, &no).await, Some(10));
    // The close's first `pay/closeorder` fails, so the payment lands between the two.
    c.fault(json!({"path": "pay/closeorder", "mode": "http500", "count": 1}))
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
    c.pay_at_sandbox(&no).await; // its notification goes nowhere
    r.app.clock.advance(600_000);
    let (s, _) = c
        .admin("/admin/orderSync", &json!({"action": "drain"}))
        .await;
    assert_eq!(s, 200);
    eventually(
        "the payment found by the close",
        Duration::from_secs(10),
        || async { c.status(&token, &no).await["status"] == "PAID" },
    )
    .await;
    eventually("the payment synced", Duration::from_secs(10), || async {
        shop_status(&c, &no).await == Some(20)
    })
    .await;
    // The outbox has nothing left that could still cancel it.
    r.app.clock.advance(3_600_000);
    let (s, _) = c
        .admin("/admin/orderSync", &json!({"action": "drain"}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(shop_status(&c, &no).await, Some(20));
    assert!(cancels_sent(&c, &no).await.is_empty());
    assert!(c.dead_letters().await.is_empty());
}

/// The user closes an unpaid order while WeChat Pay cannot be asked whether it was paid: the
/// close is refused (503 `ORDER_STATUS_UNKNOWN`) and nothing changes — the order stays open,
/// its stock held — as the schedule's sweep leaves it. It used to be closed on what we held:
/// had the user paid meanwhile, the mini program (which closes the order a reused key holds,
/// then orders afresh) could have had them pay a second order. Once WeChat answers, the close
/// goes through.
#[tokio::test]
async fn a_close_wechat_pay_cannot_be_asked_about_changes_nothing() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (token, _) = c.login("closer").await;
    let before = c.stock().await;
    let (s, v) = c.order(&token, 1, None).await;
    assert_eq!(s, 200, "{v}");
    let no = v["out_trade_no"].as_str().unwrap().to_owned();
    let held = c.stock().await;
    assert_eq!(held, before - 1);
    c.fault(json!({"path": "pay/orderquery", "mode": "http500", "count": 1}))
        .await;
    let (s, v) = c
        .post(
            "/fn/queryOrder",
            Some(&token),
            &json!({"out_trade_no": no, "action": "close"}),
        )
        .await;
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["code"], "ORDER_STATUS_UNKNOWN", "{v}");
    assert_eq!(c.status(&token, &no).await["status"], "PREPAID");
    assert_eq!(c.stock().await, held, "nothing given back");
    let (_, calls) = c.get("/sandbox/_control/calls?path=pay/closeorder").await;
    assert_eq!(calls["calls"].as_array().map(Vec::len), Some(0), "{calls}");

    let (s, v) = c
        .post(
            "/fn/queryOrder",
            Some(&token),
            &json!({"out_trade_no": no, "action": "close"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["order"]["status"], "CLOSED", "{v}");
    assert_eq!(c.stock().await, before, "the stock is back");
}

/// The merchant ships while the payment sync is still failing (WeChat's order still reads
/// unpaid): `delivery/send` is refused as out of order, and that waits for the payment sync
/// instead of being dead-lettered as final.
#[tokio::test]
async fn shipping_before_the_payment_sync_waits_for_it() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (token, _) = c.login("eager").await;
    let (_, v) = c.order(&token, 1, None).await;
    let no = v["out_trade_no"].as_str().unwrap().to_owned();
    c.fault(json!({"path": "shop/order/pay", "mode": "errcode", "errcode": -1, "count": 3}))
        .await;
    c.pay_at_sandbox(&no).await;
    eventually("PAID", Duration::from_secs(10), || async {
        c.status(&token, &no).await["status"] == "PAID"
    })
    .await;
    let (s, v) = c
        .admin(
            "/admin/orderSync",
            &json!({"action": "ship", "out_trade_no": no, "delivery_id": "SF", "waybill_id": "SF100"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    eventually("delivery/send tried", Duration::from_secs(10), || async {
        let (_, v) = c
            .get("/sandbox/_control/calls?path=shop/delivery/send")
            .await;
        !v["calls"].as_array().unwrap().is_empty()
    })
    .await;
    for _ in 0..8 {
        r.app.clock.advance(120_000);
        c.admin("/admin/orderSync", &json!({"action": "drain"}))
            .await;
        if shop_status(&c, &no).await == Some(30) {
            break;
        }
    }
    let dead = c.dead_letters().await;
    let (_, sends) = c
        .get("/sandbox/_control/calls?path=shop/delivery/send")
        .await;
    assert_eq!(shop_status(&c, &no).await, Some(30), "{dead:?} {sends}");
    assert!(dead.is_empty(), "{dead:?}");
}

/// GIVEN WeChat Pay answering `pay/orderquery` slowly (400 ms each) and 20 unpaid orders for
/// the sweep to ask about (8 s of calls), and an expired record for the purge after it
/// WHEN the schedule runs with a 2 s deadline
/// THEN it returns by the deadline plus the call in flight, reports the unpaid sweep
/// unfinished, and the purge after the slow sweep still ran; the next run does the same.
/// It used to run every phase to the end: past orderSync's 60 s Lambda timeout with enough
/// orders, and then nothing after the sweep ever ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_wechat_cannot_push_the_schedule_past_its_deadline() {
    use wxshop::handlers::order_sync::on_schedule;
    use wxshop::store::{Expect, Kind, Record, Write};
    use wxshop::time::Deadline;
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    c.set_stock(100).await;
    let (token, _) = c.login("patient").await;
    for _ in 0..20 {
        let (s, v) = c.order(&token, 1, None).await;
        assert_eq!(s, 200, "{v}");
    }
    // Older than the sweep's minute, well before ORDER_TTL_SECS (900 s): asked about, not closed.
    r.app.clock.advance(120_000);
    c.fault(json!({"path": "pay/orderquery", "mode": "delay", "delay_ms": 400}))
        .await;
    let budget = Duration::from_secs(2);
    for run in 0..2 {
        let mut expired = Record::new(Kind::Kv, format!("schedule-test-{run}"), "1".into());
        expired.expires_at = Some(1);
        r.app
            .store
            .write(vec![Write::put(expired, Expect::Any)])
            .await
            .unwrap();
        let t0 = Instant::now();
        let report = on_schedule(&r.app, Deadline::after(budget)).await;
        let took = t0.elapsed();
        assert!(
            took < budget + Duration::from_millis(1000),
            "run {run} took {took:?}: {report}"
        );
        assert_eq!(
            report["unfinished"],
            json!(["unpaid"]),
            "run {run}: {report}"
        );
        let checked = report["swept"]["checked"].as_u64().unwrap();
        assert!((1..20).contains(&checked), "run {run}: {report}");
        assert_eq!(
            report["purged"], 1,
            "run {run}: the phase after the slow sweep ran: {report}"
        );
        assert_eq!(report["failed"], json!([]), "run {run}: {report}");
    }
    r.stop();
}

/// GIVEN 200 unpaid orders WeChat Pay cannot answer for (`orderquery`: ORDERNOTEXIST — it
/// never heard of them, so it cannot say they were not paid), all older than one a user left
/// unpaid WHEN that order's time is up and the schedule sweeps, then the merchant sweeps
/// THEN the 200 are held (not closed: they may have been paid), said in the report and as
/// 200 `ExpiredOrdersHeld`, and the newer order is closed and its stock put back by the
/// second sweep. The sweep used to take the 200 oldest every run: the newer order stayed
/// open, its stock taken, for good.
#[tokio::test]
async fn orders_wechat_never_answers_for_do_not_starve_the_sweep() {
    use wxshop::domain::{OrderStatus, OutTradeNo};
    use wxshop::handlers::order_sync::on_schedule;
    use wxshop::metrics::{Metrics, EXPIRED_ORDERS_HELD};
    use wxshop::store::repo::{self, Batch};
    use wxshop::time::Deadline;
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    c.set_stock(10).await;
    let (token, _) = c.login("unpaid").await;
    let (s, v) = c.order(&token, 1, None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(c.stock().await, 9);
    let no = OutTradeNo::parse(v["out_trade_no"].as_str().unwrap().to_owned()).unwrap();
    let store = r.app.store.as_ref();
    let order = repo::get_order(store, &no).await.unwrap().unwrap().value;
    assert_eq!(order.status, OrderStatus::Prepaid);
    let mut batch = Batch::new();
    for i in 0..200 {
        let mut stuck = order.clone();
        stuck.out_trade_no = OutTradeNo::generate(order.created_at_ms);
        stuck.created_at_ms = order.created_at_ms - 600_000 + i;
        stuck.expires_at_ms = stuck.created_at_ms + 900_000;
        batch.create_order(&stuck);
        if batch.len() == 100 {
            std::mem::take(&mut batch).commit(store).await.unwrap();
        }
    }
    r.app.clock.advance(16 * 60_000);

    let mut app = r.app.clone();
    let (metrics, captured) = Metrics::capture("wxshop-OrderSyncFunction-X");
    app.metrics = metrics;
    let report = on_schedule(&app, Deadline::after(Duration::from_secs(40))).await;
    let swept = &report["swept"];
    assert_eq!(
        (&swept["checked"], &swept["closed"]),
        (&json!(200), &json!(0)),
        "{report}"
    );
    assert_eq!(report["unfinished"], json!([]), "{report}");

    let (s, v) = c
        .admin("/admin/orderSync", &json!({"action": "sweep"}))
        .await;
    assert_eq!(s, 200, "{v}");
    let closed = repo::get_order(store, &no).await.unwrap().unwrap().value;
    assert_eq!(closed.status, OrderStatus::Closed, "{v}");
    assert_eq!(c.stock().await, 10, "its stock is back");
    assert_eq!((&v["closed"], &v["held"]), (&json!(1), &json!(199)), "{v}");

    // The held orders are told: in the report, and as the metric the alarm watches.
    assert_eq!(swept["held"], 200, "{report}");
    let held: Vec<Value> = captured
        .lines()
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v.get(EXPIRED_ORDERS_HELD).is_some())
        .collect();
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0][EXPIRED_ORDERS_HELD], 200);
    r.stop();
}
