#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! The bill reconciliation's walk of the orders paid on a day (`reconcile`'s other-way check,
//! also the funds reconciliation's) while an order moves on. The walk reads the paid
//! statuses' indexes one after another (PAID, then SHIPPED, …): an order shipped after the
//! PAID walk read it and before the SHIPPED walk was read there again — counted twice.
//! Deterministic: a store wrapper holds the SHIPPED walk until the merchant's `ship` is done.

use serde_json::{json, Value};
use std::time::Duration;
use wxshop::store::{Index, Kind};

#[path = "reliability_support.rs"]
mod support;
use support::{eventually, spawn_post, stack_with, HoldsOnce, InProcess, StoreCall};
use wxshop::domain::{Fen, OpenId, OutTradeNo};
use wxshop::pay::notify::{build_payment_notification, PaymentNotificationSpec};
use wxshop::pay::SignType;

/// Long enough for a loaded machine.
const WAIT: Duration = Duration::from_secs(20);

/// GIVEN two orders paid today — one in WeChat Pay's SUCCESS bill, one recorded paid here
/// that WeChat Pay never took (a notification its bill knows nothing of) —, WHEN the merchant
/// ships both while `reconcile` of the day is walking our paid orders — after the PAID walk
/// read them, before the SHIPPED walk — THEN the answer checked two orders paid here
/// (`paid_here_checked` 2), as a run before the shipments and one after say, and names the
/// one the bill lacks once (`payments_awaiting_bill`: the day's bill is not final yet).
#[tokio::test]
async fn orders_shipped_while_the_day_is_reconciled_are_checked_once() {
    let r = stack_with(&[]).await;
    let c = InProcess::new(&r);
    c.advance_to_china(12, 0).await;
    let (token, openid) = c.login("ships-midway").await;
    let order = c.order_tea(&token, 1).await;
    let no = order["out_trade_no"].as_str().unwrap().to_owned();
    c.pay_at_sandbox(&no).await;
    let ghost = c.order_tea(&token, 1).await;
    let ghost_total = ghost["total_fee"].as_i64().unwrap();
    let ghost = ghost["out_trade_no"].as_str().unwrap().to_owned();
    let cfg = &r.app.config;
    let body = build_payment_notification(
        &PaymentNotificationSpec {
            appid: cfg.appid.clone(),
            mch_id: cfg.mch_id.clone(),
            sub_appid: None,
            sub_mch_id: None,
            openid: OpenId::parse(&openid).unwrap(),
            out_trade_no: OutTradeNo::parse(&ghost).unwrap(),
            transaction_id: "4200000000000000000000000077".into(),
            total_fee: Fen::new(ghost_total).unwrap(),
            time_end_ms: r.app.clock.now_ms(),
            attach: None,
            sign_type: SignType::Md5,
            omit_sign_type: false,
        },
        cfg.api_key(),
    );
    let (s, text) = c.raw("/callbacks/pay", body).await;
    assert!(s == 200 && text.contains("SUCCESS"), "{s} {text}");
    for n in [&no, &ghost] {
        eventually("the order to read PAID", WAIT, || async {
            c.status(&token, n).await["status"] == "PAID"
        })
        .await;
    }
    let day = wxshop::time::beijing_date(r.app.clock.now_ms());
    let (s, before) = c
        .admin(
            "/admin/orderSync",
            &json!({"action": "reconcile", "bill_date": day}),
        )
        .await;
    assert_eq!(s, 200, "{before}");
    assert_eq!(before["paid_here_checked"], 2, "{before}");
    let awaiting = |v: &Value| v["payments_awaiting_bill"].as_array().unwrap().clone();
    assert_eq!(awaiting(&before).len(), 1, "{before}");
    assert_eq!(awaiting(&before)[0]["out_trade_no"], ghost.as_str());

    // Held before the walk of the SHIPPED orders reads them: after the PAID walk.
    let held = HoldsOnce::before(r.app.store.clone(), |call| {
        matches!(call, StoreCall::Query(q)
            if q.kind == Kind::Order && q.index == Index::Status("SHIPPED".into()))
    });
    let mut app = r.app.clone();
    app.store = held.clone();
    let body = json!({"action": "reconcile", "bill_date": day}).to_string();
    let run = spawn_post(app, "/admin/orderSync", Some(&c.admin_token), body);
    held.wait_reached().await;
    for (n, waybill) in [(&no, "SF1234567890"), (&ghost, "SF1234567891")] {
        let (s, v) = c
            .admin(
                "/admin/orderSync",
                &json!({"action": "ship", "out_trade_no": n, "delivery_id": "SF",
                    "waybill_id": waybill}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(c.status(&token, n).await["status"], "SHIPPED");
    }
    held.let_go();
    let resp = tokio::time::timeout(WAIT, run)
        .await
        .expect("the reconciliation to answer")
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let during: Value = serde_json::from_slice(resp.body()).unwrap();
    assert_eq!(
        during["paid_here_checked"], 2,
        "two orders paid here, each counted twice: {during}"
    );
    assert_eq!(
        awaiting(&during).len(),
        1,
        "the order the bill lacks, named twice: {during}"
    );
    assert_eq!(during["missing_from_bill"], json!([]), "{during}");
    assert_eq!(during["mismatches"], json!([]), "{during}");

    let (s, after) = c
        .admin(
            "/admin/orderSync",
            &json!({"action": "reconcile", "bill_date": day}),
        )
        .await;
    assert_eq!(s, 200, "{after}");
    assert_eq!(after["paid_here_checked"], 2, "{after}");
    assert_eq!(awaiting(&after).len(), 1, "{after}");
}
