#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! The rules a merchant relies on in after-sales and refunds, end to end over HTTP: what an
//! after-sale holds of its order, and when it lets go of it.

use serde_json::{json, Value};
use std::time::Duration;
use wxlocal::gateway::Running;

#[path = "reliability_support.rs"]
mod support;
use support::{eventually, stack_with, Client};

const WAIT: Duration = Duration::from_secs(10);

/// A stack whose approvals of a return take the address from `WX_RETURN_ADDRESS`.
async fn return_stack() -> Running {
    let address = json!({"receiver_name": "Returns desk", "detailed_address": "8 Warehouse Road",
                         "tel_number": "021-5555-0101"});
    stack_with(&[("WX_RETURN_ADDRESS", &address.to_string())]).await
}

/// WeChat's after-sale id for ours, once stored.
async fn wx_aftersale_id(r: &Running, id: &str) -> Option<u64> {
    let id = wxshop::domain::AfterSaleId::parse(id.to_owned()).unwrap();
    wxshop::store::repo::get_aftersale(r.app.store.as_ref(), &id)
        .await
        .unwrap()?
        .value
        .wx_aftersale_id
}

/// WeChat's status for after-sale `wx`.
async fn wx_status(r: &Running, wx: u64) -> i64 {
    r.app
        .wx
        .ecaftersale_get(&wxshop::shop::types::AfterSaleKey::Id(wx))
        .await
        .unwrap()
        .status
}

/// The user pays `no` at the sandbox's cashier; returns once its payment reached WeChat's
/// component order (`shop/order/pay`).
async fn paid_and_synced(r: &Running, c: &Client, no: &str) {
    c.pay_at_sandbox(no).await;
    eventually("shop/order/pay", WAIT, || async {
        r.sandbox
            .calls("shop/order/pay")
            .iter()
            .any(|v| v.to_string().contains(no))
    })
    .await;
}

/// `user` buys one tea (1990) and pays; once WeChat's component order is paid, they ask for
/// its return and refund and the merchant accepts the return (WeChat's after-sale at 6,
/// waiting for the goods): (token, out_trade_no, after-sale id, WeChat's after-sale id).
async fn return_accepted(r: &Running, c: &Client, user: &str) -> (String, String, String, u64) {
    let (token, _) = c.login(user).await;
    let (s, order) = c.order(&token, 1, None).await;
    assert_eq!(s, 200, "{order}");
    let no = order["out_trade_no"].as_str().unwrap().to_owned();
    paid_and_synced(r, c, &no).await;
    let (s, v) = c
        .post(
            "/fn/aftersaleSync",
            Some(&token),
            &json!({"action": "apply", "out_trade_no": no, "type": "return",
                    "reason": "too big", "idempotency_key": "return-1"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["aftersale"]["amount"], 1990, "{v}");
    let id = v["aftersale"]["aftersale_id"].as_str().unwrap().to_owned();
    let (s, v) = c
        .admin(
            "/admin/aftersaleSync",
            &json!({"action": "approve", "aftersale_id": id}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["aftersale"]["status"], "AWAITING_RETURN", "{v}");
    eventually("the return accepted at WeChat (6)", WAIT, || async {
        match wx_aftersale_id(r, &id).await {
            Some(wx) => wx_status(r, wx).await == 6,
            None => false,
        }
    })
    .await;
    let wx = wx_aftersale_id(r, &id).await.unwrap();
    (token, no, id, wx)
}

/// The user asks again for the tea's 1990: the answer.
async fn apply_again(c: &Client, token: &str, no: &str) -> (u16, Value) {
    c.post(
        "/fn/aftersaleSync",
        Some(token),
        &json!({"action": "apply", "out_trade_no": no, "reason": "again"}),
    )
    .await
}

/// The merchant's `aftersale_wechat` event about `id`'s return closed at WeChat, if kept.
async fn return_closed_event(r: &Running, id: &str) -> Option<Value> {
    wxshop::store::repo::get_event(
        r.app.store.as_ref(),
        wxshop::handlers::aftersale_sync::WECHAT_AFTERSALE_EVENTS,
        &format!("return_closed/{id}"),
    )
    .await
    .unwrap()
    .map(|e| serde_json::from_str(&e.value.body).unwrap())
}

/// A return the merchant accepted, whose goods the user never sent: WeChat closes its
/// after-sale (7) and pushes `aftersale_user_upload_return_info_overdue` (UNVERIFIED, the
/// sandbox's `return_overdue`). Believed as WeChat's after-sale read back, ours is CANCELLED,
/// its 1990 no longer held on the order — the user may ask for it again — and the merchant is
/// told; nothing is dead-lettered. Nobody could close it before: the merchant rejects only
/// before accepting a return or once the goods came back, the refund cannot be approved
/// before they are sent, and the push was ignored — ours stayed AWAITING_RETURN, telling the
/// user to send goods WeChat no longer takes, and held the order's whole amount for good,
/// every new application refused (409 NOT_REFUNDABLE).
#[tokio::test]
async fn a_return_wechat_closed_for_want_of_the_goods_lets_go_of_its_amount() {
    let r = return_stack().await;
    let c = Client::new(&r);
    let (token, no, id, wx) = return_accepted(&r, &c, "ursula").await;
    // The only tea is claimed by the return: an application without a line is that line,
    // nothing of it left (it was 409 NOT_REFUNDABLE, the amount held, before an only item's
    // units counted as a named line's do).
    let (s, v) = apply_again(&c, &token, &no).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (400, Some("LINE_ALREADY_CLAIMED")),
        "claimed by the return: {v}"
    );

    let (s, v) = c
        .post(
            "/sandbox/_control/aftersale",
            None,
            &json!({"action": "return_overdue", "aftersale_id": wx}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    // The merchant's event is written after the after-sale turns CANCELLED: waited for too.
    eventually(
        "ours cancelled as WeChat closed it, the merchant told",
        WAIT,
        || async {
            c.my_aftersale(&token, &no, &id).await["status"] == "CANCELLED"
                && return_closed_event(&r, &id).await.is_some()
        },
    )
    .await;
    let event = return_closed_event(&r, &id)
        .await
        .expect("the merchant told");
    assert_eq!(event["wx_status"], 7, "{event}");
    let (s, v) = apply_again(&c, &token, &no).await;
    assert_eq!(s, 200, "the amount is free again: {v}");
    assert_eq!(v["aftersale"]["amount"], 1990, "{v}");
    // The cancel mirrored to WeChat meets its closed after-sale: nothing dead-lettered.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dead = c.dead_letters().await;
    assert!(dead.is_empty(), "{dead:?}");
    assert_eq!(wx_status(&r, wx).await, 7);
    assert!(r.sandbox.calls("secapi/pay/refund").is_empty());
}

/// The same with the push lost: the schedule reads the return back once it has been quiet
/// for its grace and closes ours as the push would have (`wechat_refunds` `closed`).
#[tokio::test]
async fn a_return_wechat_closed_whose_push_was_lost_is_closed_by_the_schedule() {
    use wxshop::handlers::order_sync::{on_schedule, LOCAL_SCHEDULE_BUDGET};
    let r = return_stack().await;
    let c = Client::new(&r);
    let (token, no, id, wx) = return_accepted(&r, &c, "vera").await;
    let (s, v) = c
        .post(
            "/sandbox/_control/aftersale",
            None,
            &json!({"action": "return_overdue", "aftersale_id": wx, "push": false}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    r.app.clock.advance(11 * 60_000);
    let report = on_schedule(&r.app, wxshop::time::Deadline::after(LOCAL_SCHEDULE_BUDGET)).await;
    assert_eq!(report["wechat_refunds"]["closed"], 1, "{report}");
    assert_eq!(
        c.my_aftersale(&token, &no, &id).await["status"],
        "CANCELLED",
        "{report}"
    );
    assert!(return_closed_event(&r, &id).await.is_some());
    let (s, v) = apply_again(&c, &token, &no).await;
    assert_eq!(s, 200, "the amount is free again: {v}");
    let later = on_schedule(&r.app, wxshop::time::Deadline::after(LOCAL_SCHEDULE_BUDGET)).await;
    assert_eq!(later["wechat_refunds"]["closed"], 0, "{later}");
}

/// `user` pays an order of two lines in the trading component — two tea (1990 each) and
/// three cups (500 each) — and WeChat's component order has the payment: (token,
/// out_trade_no).
async fn two_lines_paid(r: &Running, c: &Client, user: &str) -> (String, String) {
    c.listed_product("cup", "cup-1", 500).await;
    let (token, _) = c.login(user).await;
    let (s, order) = c
        .post(
            "/fn/unifiedOrder",
            Some(&token),
            &json!({"items": [{"product_id": "tea", "sku_id": "tea-250g", "quantity": 2},
                              {"product_id": "cup", "sku_id": "cup-1", "quantity": 3}],
                    "address": {"receiver_name": "A", "detailed_address": "1 Road",
                                "tel_number": "13800000000"}}),
        )
        .await;
    assert_eq!(s, 200, "{order}");
    let no = order["out_trade_no"].as_str().unwrap().to_owned();
    paid_and_synced(r, c, &no).await;
    (token, no)
}

/// Guard: two applications for the same line at once, each under its own key (two devices),
/// can together claim no more than the line — one is accepted, the other refused 400
/// `LINE_ALREADY_CLAIMED` — and the other line is untouched. Then each line refunded in turn:
/// the order stays PAID (still shipped) after the first, reads REFUNDED once both went back,
/// `refunded_fee` the sum paid, and nothing more can be asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lines_are_claimed_once_and_the_order_is_refunded_when_all_went_back() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (token, no) = two_lines_paid(&r, &c, "wanda").await;
    let cups = |key: &str| {
        json!({"action": "apply", "out_trade_no": no, "product_id": "cup", "sku_id": "cup-1",
               "reason": "chipped", "idempotency_key": key})
    };
    let (phone, tablet) = (cups("phone"), cups("tablet"));
    let (a, b) = tokio::join!(
        c.post("/fn/aftersaleSync", Some(&token), &phone),
        c.post("/fn/aftersaleSync", Some(&token), &tablet)
    );
    let mut codes = [a.0, b.0];
    codes.sort_unstable();
    assert_eq!(codes, [200, 400], "{} / {}", a.1, b.1);
    let (won, lost) = if a.0 == 200 {
        (&a.1, &b.1)
    } else {
        (&b.1, &a.1)
    };
    assert_eq!(lost["code"], "LINE_ALREADY_CLAIMED", "{lost}");
    assert_eq!(
        (&won["aftersale"]["amount"], &won["aftersale"]["quantity"]),
        (&json!(1500), &json!(3)),
        "{won}"
    );
    let cup_id = won["aftersale"]["aftersale_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, v) = c
        .admin(
            "/admin/aftersaleSync",
            &json!({"action": "approve", "aftersale_id": cup_id}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    eventually("the cups refunded", WAIT, || async {
        c.status(&token, &no).await["refunded_fee"] == 1500
    })
    .await;
    assert_eq!(c.status(&token, &no).await["status"], "PAID");

    let (s, v) = c
        .post(
            "/fn/aftersaleSync",
            Some(&token),
            &json!({"action": "apply", "out_trade_no": no, "product_id": "tea",
                    "sku_id": "tea-250g", "idempotency_key": "tea"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["aftersale"]["amount"], 2 * 1990, "{v}");
    let tea_id = v["aftersale"]["aftersale_id"].as_str().unwrap().to_owned();
    // WeChat Pay takes one refund of an order a minute.
    r.sandbox.clock().advance(60_000);
    let (s, v) = c
        .admin(
            "/admin/aftersaleSync",
            &json!({"action": "approve", "aftersale_id": tea_id}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    eventually("everything refunded", WAIT, || async {
        c.status(&token, &no).await["status"] == "REFUNDED"
    })
    .await;
    assert_eq!(c.status(&token, &no).await["refunded_fee"], 2 * 1990 + 1500);
    for line in [
        json!({"product_id": "cup", "sku_id": "cup-1", "quantity": 1}),
        json!({}),
    ] {
        let mut body = json!({"action": "apply", "out_trade_no": no, "amount": 1});
        if let (Some(b), Value::Object(l)) = (body.as_object_mut(), line) {
            b.extend(l);
        }
        let (s, v) = c.post("/fn/aftersaleSync", Some(&token), &body).await;
        assert!(s == 400 || s == 409, "nothing is left: {v}");
    }
    let dead = c.dead_letters().await;
    assert!(dead.is_empty(), "{dead:?}");
}

/// `user` pays one tea (1990) and applies for its refund; WeChat Pay takes the refund and
/// cannot pay it out (`CHANGE`): REFUND_ABNORMAL. (token, out_trade_no, after-sale id, the
/// signed `SUCCESS` notification WeChat sends once a person redirected it.)
async fn refund_held_at_wechat(
    r: &Running,
    c: &Client,
    user: &str,
) -> (String, String, String, String) {
    use wxshop::domain::{Fen, OutRefundNo, OutTradeNo};
    let (token, _) = c.login(user).await;
    let (_, order) = c.order(&token, 1, None).await;
    let no = order["out_trade_no"].as_str().unwrap().to_owned();
    c.pay_at_sandbox(&no).await;
    eventually("PAID", WAIT, || async {
        c.status(&token, &no).await["status"] == "PAID"
    })
    .await;
    let (s, v) = c
        .post(
            "/sandbox/_control/refund_outcome",
            None,
            &json!({"status": "CHANGE"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = c
        .post(
            "/fn/aftersaleSync",
            Some(&token),
            &json!({"action": "apply", "out_trade_no": no, "reason": "broken"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let id = v["aftersale"]["aftersale_id"].as_str().unwrap().to_owned();
    let (s, v) = c
        .admin(
            "/admin/aftersaleSync",
            &json!({"action": "approve", "aftersale_id": id}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    eventually("REFUND_ABNORMAL", WAIT, || async {
        c.my_aftersale(&token, &no, &id).await["status"] == "REFUND_ABNORMAL"
    })
    .await;
    let out_refund_no = c.my_aftersale(&token, &no, &id).await["out_refund_no"]
        .as_str()
        .unwrap()
        .to_owned();
    let store = r.app.store.as_ref();
    let refund =
        wxshop::store::repo::get_refund(store, &OutRefundNo::parse(out_refund_no.clone()).unwrap())
            .await
            .unwrap()
            .unwrap()
            .value;
    let order = wxshop::store::repo::get_order(store, &OutTradeNo::parse(no.clone()).unwrap())
        .await
        .unwrap()
        .unwrap()
        .value;
    let cfg = &r.app.config;
    let success = wxshop::pay::refund_notify::build_refund_notification(
        &wxshop::pay::refund_notify::RefundNotificationSpec {
            appid: cfg.appid.clone(),
            mch_id: cfg.mch_id.clone(),
            sub_appid: None,
            sub_mch_id: None,
            out_trade_no: OutTradeNo::parse(no.clone()).unwrap(),
            out_refund_no: OutRefundNo::parse(out_refund_no).unwrap(),
            transaction_id: order.transaction_id.unwrap(),
            refund_id: refund.refund_id.unwrap(),
            total_fee: Fen::new(1990).unwrap(),
            refund_fee: Fen::new(1990).unwrap(),
            success_time_ms: Some(1_700_000_000_000),
            refund_status: wxshop::pay::types::RefundStatus::Success,
        },
        cfg.api_key(),
    );
    assert_eq!(c.status(&token, &no).await["refunded_fee"], 0);
    (token, no, id, success)
}

/// Guard: a refund WeChat held (`CHANGE`) and a person then redirected is counted once,
/// whichever way its end is told and however often — WeChat's `SUCCESS` for the same
/// `out_refund_no` (twice) before or after the merchant's `mark_refunded`: the after-sale
/// REFUNDED, `refunded_fee` 1990 once, every notification acknowledged, a `mark_refunded`
/// after the `SUCCESS` refused (409 `AFTERSALE_STATE`), and no second refund asked for.
#[tokio::test]
async fn a_held_refund_redirected_is_counted_once_however_its_end_is_told() {
    use support::return_code;
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let mark = |id: &str| json!({"action": "mark_refunded", "aftersale_id": id});

    // WeChat's SUCCESS first (twice), the merchant's record after.
    let (token, no, id, success) = refund_held_at_wechat(&r, &c, "xena").await;
    for _ in 0..2 {
        let (s, reply) = c.raw("/callbacks/refund", success.clone()).await;
        assert_eq!((s, return_code(&reply)), (200, "SUCCESS"), "{reply}");
    }
    assert_eq!(c.my_aftersale(&token, &no, &id).await["status"], "REFUNDED");
    assert_eq!(c.status(&token, &no).await["refunded_fee"], 1990);
    assert_eq!(c.status(&token, &no).await["status"], "REFUNDED");
    let (s, v) = c.admin("/admin/aftersaleSync", &mark(&id)).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (409, Some("AFTERSALE_STATE")),
        "{v}"
    );
    assert_eq!(c.status(&token, &no).await["refunded_fee"], 1990);

    // The merchant's record first, WeChat's SUCCESS after.
    let (token, no, id, success) = refund_held_at_wechat(&r, &c, "yara").await;
    let (s, v) = c.admin("/admin/aftersaleSync", &mark(&id)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["aftersale"]["status"], "REFUNDED", "{v}");
    let (s, reply) = c.raw("/callbacks/refund", success).await;
    assert_eq!((s, return_code(&reply)), (200, "SUCCESS"), "{reply}");
    assert_eq!(c.status(&token, &no).await["refunded_fee"], 1990);
    assert_eq!(c.my_aftersale(&token, &no, &id).await["status"], "REFUNDED");
    assert_eq!(
        r.sandbox.calls("secapi/pay/refund").len(),
        2,
        "one refund each"
    );
}
