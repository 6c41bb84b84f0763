#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! Refund reports deciding on reads another report made stale, made to happen every time: one
//! report's read of a record is held (a store wrapper, [`HoldsOnce`]) until its twin — a copy
//! of the same notification, or another outcome of the same refund — has been answered, then
//! let go. What a merchant sees afterwards: every copy answered `SUCCESS` (WeChat stops
//! retrying), the refund counted once on the order, nothing kept as a `refund_mismatch` and no
//! `PayNotifyUnrecorded` counted (its alarm pages a person).

use serde_json::{json, Value};
use std::time::Duration;
use wxlocal::gateway::Running;
use wxshop::metrics::{Captured, Metrics, MONEY_NEEDS_A_PERSON, PAY_NOTIFY_UNRECORDED};
use wxshop::pay::types::RefundStatus;
use wxshop::store::Kind;

#[path = "reliability_support.rs"]
mod support;
use support::{
    events, eventually, spawn_post, tea_refund_notification, HoldsOnce, InProcess, StoreCall,
};

/// Long enough for a loaded machine.
const WAIT: Duration = Duration::from_secs(30);
/// The tea's price.
const TEA: i64 = 1990;
/// Where the sandbox's own refund notifications go nowhere: only those a test sends arrive.
const DEAD_REFUND_NOTIFY_URL: &str = "http://127.0.0.1:9/callbacks/refund";

/// Posts `body` to `/callbacks/refund` through a copy of the running app whose store holds the
/// first read of (`kind`, `id`); waits (bounded) until that read is held, runs `meanwhile`, then
/// lets the read go. The held report's reply, and `meanwhile`'s.
async fn held_at_read<F, Fut>(
    r: &Running,
    kind: Kind,
    id: &str,
    body: String,
    meanwhile: F,
) -> (String, String)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = String>,
{
    let (kind, id) = (kind, id.to_owned());
    // Held before it reads: the read sees what the twin wrote meanwhile.
    let gate = HoldsOnce::before(
        r.app.store.clone(),
        move |call| matches!(call, StoreCall::Get(k, i) if k == kind && i == id),
    );
    let mut app = r.app.clone();
    app.store = gate.clone();
    let held = spawn_post(app, "/callbacks/refund", None, body);
    gate.wait_reached().await;
    let other = meanwhile().await;
    gate.let_go();
    let resp = tokio::time::timeout(WAIT, held)
        .await
        .expect("the held report answered")
        .unwrap();
    assert_eq!(resp.status(), 200, "WeChat Pay always gets 200");
    let reply = String::from_utf8(resp.body().to_vec()).unwrap();
    (reply, other)
}

/// A stack without the trading component (WeChat Pay only), the sandbox's own refund
/// notifications lost, its handlers' metrics captured.
async fn stack() -> (Running, Captured) {
    let (metrics, captured) = Metrics::capture("test");
    let r = support::stack_with_metrics(
        &[
            ("WX_TRADING_COMPONENT", "off"),
            ("WXPAY_REFUND_NOTIFY_URL", DEAD_REFUND_NOTIFY_URL),
        ],
        metrics,
    )
    .await;
    (r, captured)
}

/// `user` buys one tea and pays at the sandbox's cashier; returns once the order reads PAID:
/// (token, out_trade_no, WeChat's transaction id).
async fn paid(c: &InProcess<'_>, user: &str) -> (String, String, String) {
    let (token, _) = c.login(user).await;
    let order = c.order_tea(&token, 1).await;
    let no = order["out_trade_no"].as_str().unwrap().to_owned();
    let txid = c.pay_at_sandbox(&no).await;
    eventually("the order PAID", WAIT, || async {
        c.status(&token, &no).await["status"] == "PAID"
    })
    .await;
    (token, no, txid)
}

/// GIVEN a paid order of one tea (1,990)
/// WHEN a person refunds it in WeChat Pay's merchant platform (an `out_refund_no` we never
/// issued) — all of it, or 1,200 of it — and WeChat's notification of it arrives twice at once:
/// one copy reads that there is no refund record, the other copy records the refund, then the
/// first reads the order
/// THEN both copies are answered SUCCESS, the order's `refunded_fee` is the refund, counted once,
/// one `refund_by_hand` event is kept and a person paged once, and nothing is kept as a
/// `refund_mismatch` nor counted as `PayNotifyUnrecorded`.
///
/// It used to refuse the first copy (`FAIL`, "unknown out_refund_no, beyond what the order has
/// left"), keep a `refund_mismatch` for a refund recorded once and correctly, and count
/// `PayNotifyUnrecorded` — whose alarm pages a person: `pay_callback::made_by_hand` took the
/// order, with this very refund counted on it, for one without room for it, on reads no
/// condition covered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refund_made_by_hand_notified_twice_at_once_is_recorded_once() {
    let (r, captured) = stack().await;
    let c = InProcess::new(&r);
    for (round, fee) in [TEA, 1200].into_iter().enumerate() {
        let (token, no, txid) = paid(&c, &format!("by-hand-{round}")).await;
        let out_refund_no = format!("5030000000000000000000000{round:04}");
        let body = tea_refund_notification(
            &r,
            &no,
            &out_refund_no,
            &txid,
            &out_refund_no,
            fee,
            RefundStatus::Success,
        );
        let (held, other) = held_at_read(&r, Kind::Order, &no, body.clone(), || async {
            c.raw("/callbacks/refund", body.clone()).await.1
        })
        .await;
        assert_eq!(
            [support::return_code(&held), support::return_code(&other)],
            ["SUCCESS"; 2],
            "round {round}: held {held}, other {other}"
        );
        let order = c.status(&token, &no).await;
        // Refunded in part, it still ships: PAID.
        let status = if fee == TEA { "REFUNDED" } else { "PAID" };
        assert_eq!(
            (&order["refunded_fee"], &order["status"]),
            (&json!(fee), &json!(status)),
            "round {round}: {order}"
        );
    }
    assert_eq!(events(&c, "refund_mismatch").await, Vec::<Value>::new());
    assert_eq!(events(&c, "refund_by_hand").await.len(), 2);
    assert_eq!(captured.total(PAY_NOTIFY_UNRECORDED), 0);
    assert_eq!(captured.total(MONEY_NEEDS_A_PERSON), 2, "once a refund");
}

/// GIVEN an after-sale of one tea approved, its refund at WeChat Pay still under way (no
/// outcome, no notification yet)
/// WHEN WeChat's reports of two outcomes of that refund arrive at once — `REFUNDCLOSE` reads the
/// refund record (under way) and, before it reads the after-sale, `CHANGE` (WeChat took the
/// money and holds it) is recorded
/// THEN both are answered SUCCESS and the refund stays as `CHANGE` left it: the after-sale
/// REFUND_ABNORMAL (the money waits at WeChat for a person to redirect), its `refund_abnormal`
/// event kept, no `refund_closed` (nothing tells the merchant to approve it again, which would
/// pay twice), nothing kept as a `refund_mismatch` nor counted as `PayNotifyUnrecorded`. The
/// other way round, `CHANGE` held while
/// `REFUNDCLOSE` is recorded, ends as the two arriving one after the other do: REFUND_ABNORMAL.
///
/// It used to refuse the `REFUNDCLOSE` (`FAIL`: "record refund failure" not allowed from
/// REFUND_ABNORMAL), keep a `refund_mismatch` and count `PayNotifyUnrecorded` — its alarm
/// paging a person — for a report that, read again, changes nothing (a refund held by WeChat
/// stays for a person): `pay_callback::apply_refund` refused it on an after-sale read after the
/// refund record, with no condition on either.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refundclose_racing_a_change_of_one_refund_is_not_a_mismatch() {
    let (r, captured) = stack().await;
    let c = InProcess::new(&r);
    for (round, held_status) in [RefundStatus::RefundClose, RefundStatus::Change]
        .into_iter()
        .enumerate()
    {
        c.control("refund_outcome", &json!({"status": "PROCESSING"}))
            .await;
        let (token, no, txid) = paid(&c, &format!("closed-{round}")).await;
        let (s, a) = c
            .post(
                "/fn/aftersaleSync",
                Some(&token),
                &json!({"action": "apply", "out_trade_no": no, "reason": "not wanted"}),
            )
            .await;
        assert_eq!(s, 200, "{a}");
        let id = a["aftersale"]["aftersale_id"].as_str().unwrap().to_owned();
        let (s, v) = c
            .admin(
                "/admin/aftersaleSync",
                &json!({"action": "approve", "aftersale_id": id}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        let out_refund_no = v["aftersale"]["out_refund_no"].as_str().unwrap().to_owned();
        let refund_id = || async {
            let (_, st) = c.get("/sandbox/_control/state").await;
            st["refunds"].as_array().and_then(|rs| {
                rs.iter()
                    .find(|x| x["out_refund_no"] == out_refund_no.as_str())
                    .and_then(|x| x["refund_id"].as_str().map(str::to_owned))
            })
        };
        eventually("WeChat Pay took the refund", WAIT, || async {
            refund_id().await.is_some()
        })
        .await;
        let refund_id = refund_id().await.unwrap();
        let notice = |status| {
            tea_refund_notification(&r, &no, &out_refund_no, &txid, &refund_id, TEA, status)
        };
        let other_status = if held_status == RefundStatus::Change {
            RefundStatus::RefundClose
        } else {
            RefundStatus::Change
        };
        let other_body = notice(other_status);
        let (held, other) = held_at_read(&r, Kind::AfterSale, &id, notice(held_status), || {
            let other_body = other_body.clone();
            let c = &c;
            async move { c.raw("/callbacks/refund", other_body).await.1 }
        })
        .await;
        assert_eq!(
            [support::return_code(&held), support::return_code(&other)],
            ["SUCCESS"; 2],
            "round {round}: held {held}, other {other}"
        );
        let a = c.my_aftersale(&token, &no, &id).await;
        assert_eq!(a["status"], "REFUND_ABNORMAL", "round {round}: {a}");
        let order = c.status(&token, &no).await;
        assert_eq!(order["refunded_fee"], 0, "round {round}: {order}");
    }
    assert_eq!(events(&c, "refund_mismatch").await, Vec::<Value>::new());
    assert_eq!(events(&c, "refund_abnormal").await.len(), 2);
    let closed = events(&c, "refund_closed").await;
    assert_eq!(
        closed.len(),
        1,
        "only the REFUNDCLOSE recorded first: {closed:?}"
    );
    assert_eq!(captured.total(PAY_NOTIFY_UNRECORDED), 0);
}
