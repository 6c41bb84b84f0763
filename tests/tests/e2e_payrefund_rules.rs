#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! Refunds through WeChat Pay (an order whose money we hold, `fund_type` 0), end to end over
//! HTTP: what the merchant can do with a refund WeChat Pay will not make, and what the order
//! and the user see then.

use serde_json::json;
use std::time::Duration;
use wxlocal::gateway::Running;

#[path = "reliability_support.rs"]
mod support;
use support::{eventually, return_code, stack_with, Client};

const WAIT: Duration = Duration::from_secs(20);

/// `user` buys one tea (1990) and pays at the sandbox's cashier; returns once the order reads
/// PAID and WeChat's component order has the payment: (token, out_trade_no).
async fn paid(r: &Running, c: &Client, user: &str) -> (String, String) {
    let (token, _) = c.login(user).await;
    let order = c.order_tea(&token, 1).await;
    let no = order["out_trade_no"].as_str().unwrap().to_owned();
    c.pay_at_sandbox(&no).await;
    eventually("PAID", WAIT, || async {
        c.status(&token, &no).await["status"] == "PAID"
    })
    .await;
    eventually("shop/order/pay", WAIT, || async {
        r.sandbox
            .calls("shop/order/pay")
            .iter()
            .any(|v| v.to_string().contains(&no))
    })
    .await;
    (token, no)
}

/// A refund notification WeChat Pay could send for refund `out_refund_no` of `no` (1990 of
/// 1990), encrypted with our key as WeChat does.
fn refund_notification(
    r: &Running,
    no: &str,
    out_refund_no: &str,
    txid: &str,
    status: wxshop::pay::types::RefundStatus,
) -> String {
    use wxshop::domain::{Fen, OutRefundNo, OutTradeNo};
    let cfg = &r.app.config;
    wxshop::pay::refund_notify::build_refund_notification(
        &wxshop::pay::refund_notify::RefundNotificationSpec {
            appid: cfg.appid.clone(),
            mch_id: cfg.mch_id.clone(),
            sub_appid: None,
            sub_mch_id: None,
            out_trade_no: OutTradeNo::parse(no).unwrap(),
            out_refund_no: OutRefundNo::parse(out_refund_no).unwrap(),
            transaction_id: txid.to_owned(),
            refund_id: "50300000000000000000000000077".into(),
            total_fee: Fen::new(1990).unwrap(),
            refund_fee: Fen::new(1990).unwrap(),
            success_time_ms: Some(1_700_000_000_000),
            refund_status: status,
        },
        cfg.api_key(),
    )
}

/// GIVEN a paid order of one tea (1990) whose user asked for their money back, and WeChat
/// Pay refusing its refund for good — the user's WeChat account is closed
/// (`USER_ACCOUNT_ABNORMAL`; WECHAT_PAY_V2.md §5: "cannot refund online", a person refunds
/// by hand) — so the approved after-sale reads REFUND_FAILED;
/// WHEN the merchant pays the user back another way (a bank transfer) and records it with
/// `mark_refunded`;
/// THEN the after-sale reads REFUNDED to the user, the order REFUNDED with `refunded_fee`
/// 1990 (so it no longer ships), nothing more is asked of WeChat Pay and nothing more can be
/// applied for; and should WeChat Pay still report a SUCCESS for that refund after all, it is
/// acknowledged and kept for a person (`refund_superseded`), the money counted once.
///
/// It used to be a dead end: `mark_refunded` was 409 `AFTERSALE_STATE` ("only an abnormal
/// refund is"), `reject` 409 too, and approving again only asked WeChat Pay for the refund it
/// refuses — the after-sale stayed REFUND_FAILED for good, holding the order's whole amount,
/// the order still PAID and shippable although the user had their money.
#[tokio::test]
async fn a_refund_wechat_pay_refuses_for_good_can_be_recorded_as_paid_another_way() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (token, no) = paid(&r, &c, "quinn").await;
    let id = c
        .apply(&token, &no, json!({"reason": "never arrived"}))
        .await;
    c.fault(json!({"path": "secapi/pay/refund", "mode": "errcode",
                   "err_code": "USER_ACCOUNT_ABNORMAL", "count": 1000}))
        .await;
    c.approve(&id).await;
    eventually("REFUND_FAILED", WAIT, || async {
        c.my_aftersale(&token, &no, &id).await["status"] == "REFUND_FAILED"
    })
    .await;
    let refund_calls = r.sandbox.calls("secapi/pay/refund").len();
    assert_eq!(refund_calls, 1, "one refusal, not retried");
    // The merchant is told what can be done about it (the dead letter is written just after
    // the after-sale reads REFUND_FAILED).
    eventually("the dead letter saying what to do", WAIT, || async {
        c.dead_letters().await.iter().any(|d| {
            d.to_string().contains("USER_ACCOUNT_ABNORMAL")
                && d.to_string().contains("mark_refunded")
        })
    })
    .await;
    let out_refund_no = c.my_aftersale(&token, &no, &id).await["out_refund_no"]
        .as_str()
        .unwrap()
        .to_owned();

    // The merchant transferred the 1990 to the user's bank account and records it.
    let (s, v) = c
        .admin(
            "/admin/aftersaleSync",
            &json!({"action": "mark_refunded", "aftersale_id": id}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["aftersale"]["status"], "REFUNDED", "{v}");
    assert_eq!(c.my_aftersale(&token, &no, &id).await["status"], "REFUNDED");
    let order = c.status(&token, &no).await;
    assert_eq!(order["refunded_fee"], 1990, "{order}");
    assert_eq!(order["status"], "REFUNDED", "{order}");
    // Recorded twice: refused as for any refunded after-sale, counted once.
    let (s, v) = c
        .admin(
            "/admin/aftersaleSync",
            &json!({"action": "mark_refunded", "aftersale_id": id}),
        )
        .await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["code"], "AFTERSALE_STATE", "{v}");
    assert_eq!(c.status(&token, &no).await["refunded_fee"], 1990);
    // Nothing is left to ask for; WeChat Pay was asked nothing more.
    let (s, v) = c
        .post(
            "/fn/aftersaleSync",
            Some(&token),
            &json!({"action": "apply", "out_trade_no": no, "reason": "again"}),
        )
        .await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["code"], "NOT_REFUNDABLE", "{v}");
    assert_eq!(r.sandbox.calls("secapi/pay/refund").len(), refund_calls);

    // WeChat Pay reports a SUCCESS for the refund it had refused after all: acknowledged,
    // not counted again, kept for a person (the user may have been paid twice).
    let txid = c.status(&token, &no).await["transaction_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let body = refund_notification(
        &r,
        &no,
        &out_refund_no,
        &txid,
        wxshop::pay::types::RefundStatus::Success,
    );
    for _ in 0..2 {
        let (s, reply) = c.raw("/callbacks/refund", body.clone()).await;
        assert_eq!(s, 200);
        assert_eq!(return_code(&reply), "SUCCESS", "{reply}");
    }
    assert_eq!(c.status(&token, &no).await["refunded_fee"], 1990);
    let (kept, _) =
        wxshop::store::repo::events_of(r.app.store.as_ref(), "refund_superseded", 50, None)
            .await
            .unwrap();
    assert!(
        kept.iter().any(|e| e.body.contains(&out_refund_no)),
        "kept for a person: {kept:?}"
    );
}

/// Guard: GIVEN an approved refund WeChat Pay accepted and is still paying (`PROCESSING`, as a
/// refund to a bank card takes days); WHEN the merchant records it paid another way
/// (`mark_refunded`); THEN that is refused (409 `AFTERSALE_STATE`) and nothing changes —
/// WeChat Pay may still pay it, and the user would be paid twice — the after-sale still
/// REFUNDING, the order's `refunded_fee` 0.
#[tokio::test]
async fn a_refund_still_under_way_cannot_be_recorded_as_paid_another_way() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (token, no) = paid(&r, &c, "rhea").await;
    let id = c.apply(&token, &no, json!({"reason": "damaged"})).await;
    c.control(
        "refund_outcome",
        &json!({"status": "PROCESSING", "count": 1}),
    )
    .await;
    c.approve(&id).await;
    eventually("the refund taken by WeChat Pay", WAIT, || async {
        !r.sandbox.calls("secapi/pay/refund").is_empty()
    })
    .await;
    let (s, v) = c
        .admin(
            "/admin/aftersaleSync",
            &json!({"action": "mark_refunded", "aftersale_id": id}),
        )
        .await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["code"], "AFTERSALE_STATE", "{v}");
    assert_eq!(
        c.my_aftersale(&token, &no, &id).await["status"],
        "REFUNDING"
    );
    assert_eq!(c.status(&token, &no).await["refunded_fee"], 0);
}

/// GIVEN an approved refund WeChat Pay refused for good (`USER_ACCOUNT_ABNORMAL`) that the
/// merchant paid another way and recorded (`mark_refunded`: the after-sale and the order
/// REFUNDED at 1990);
/// WHEN WeChat Pay reports that refund `CHANGE` after all (sent twice) — it took the refund
/// and could not pay it out: the money left the merchant a second time and waits at WeChat
/// to be redirected;
/// THEN each report is acknowledged, nothing is counted again (`refunded_fee` 1990), it is
/// kept (`refund_superseded`) and a person is paged once (`MoneyNeedsAPerson`) — the 1990
/// waiting at WeChat is the merchant's to get back. A `SUCCESS` for such a refund paged, but a
/// `CHANGE` was only logged as a warning: the second 1990 waited at WeChat with nobody told.
#[tokio::test]
async fn a_second_refund_held_at_wechat_for_a_refunded_aftersale_pages_a_person() {
    let (metrics, captured) = wxshop::metrics::Metrics::capture("test");
    let r = support::stack_with_metrics(&[], metrics).await;
    let c = Client::new(&r);
    let paged = || captured.total(wxshop::metrics::MONEY_NEEDS_A_PERSON);
    let (token, no) = paid(&r, &c, "sela").await;
    let id = c.apply(&token, &no, json!({"reason": "lost"})).await;
    c.fault(json!({"path": "secapi/pay/refund", "mode": "errcode",
                   "err_code": "USER_ACCOUNT_ABNORMAL", "count": 1000}))
        .await;
    c.approve(&id).await;
    eventually("REFUND_FAILED", WAIT, || async {
        c.my_aftersale(&token, &no, &id).await["status"] == "REFUND_FAILED"
    })
    .await;
    let (s, v) = c
        .admin(
            "/admin/aftersaleSync",
            &json!({"action": "mark_refunded", "aftersale_id": id}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(c.status(&token, &no).await["refunded_fee"], 1990);
    let out_refund_no = c.my_aftersale(&token, &no, &id).await["out_refund_no"]
        .as_str()
        .unwrap()
        .to_owned();
    let txid = c.status(&token, &no).await["transaction_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = paged();
    let body = refund_notification(
        &r,
        &no,
        &out_refund_no,
        &txid,
        wxshop::pay::types::RefundStatus::Change,
    );
    for _ in 0..2 {
        let (s, reply) = c.raw("/callbacks/refund", body.clone()).await;
        assert_eq!(s, 200);
        assert_eq!(return_code(&reply), "SUCCESS", "{reply}");
    }
    assert_eq!(c.status(&token, &no).await["refunded_fee"], 1990);
    assert_eq!(c.my_aftersale(&token, &no, &id).await["status"], "REFUNDED");
    let (kept, _) =
        wxshop::store::repo::events_of(r.app.store.as_ref(), "refund_superseded", 50, None)
            .await
            .unwrap();
    assert!(
        kept.iter().any(|e| e.body.contains(&out_refund_no)),
        "kept for a person: {kept:?}"
    );
    assert_eq!(paged() - before, 1, "a person paged once");
}
