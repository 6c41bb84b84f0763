#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! Rules of the secondary-merchant funds flows (`WX_FUND_TYPE=1`) a merchant relies on, end
//! to end over HTTP: one withdrawal for a double tap, whatever order the two requests end in.

use serde_json::{json, Value};
use std::time::Duration;
use wxlocal::gateway::Running;

#[path = "reliability_support.rs"]
mod support;
use wxshop::domain::OutTradeNo;

async fn stack() -> Running {
    support::stack_with(&[("WX_FUND_TYPE", "1")]).await
}

async fn post(r: &Running, path: &str, bearer: Option<&str>, body: &Value) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{}{path}", r.base_url))
        .json(body);
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn control(r: &Running, path: &str, body: &Value) -> Value {
    let (s, v) = post(r, &format!("/sandbox/_control/{path}"), None, body).await;
    assert_eq!(s, 200, "{path}: {v}");
    v
}

async fn funds(r: &Running, body: Value) -> (u16, Value) {
    post(r, "/admin/funds", Some(&r.admin_token), &body).await
}

async fn funds_ok(r: &Running, body: Value) -> Value {
    let (s, v) = funds(r, body.clone()).await;
    assert_eq!(s, 200, "{body} → {v}");
    v
}

/// A fund_type 1 order of 2 × tea, ordered by alice and not paid yet: its number and total.
async fn unpaid_order(r: &Running) -> (String, i64) {
    let code = control(r, "login", &json!({"user": "alice"})).await;
    let (s, v) = post(r, "/fn/login", None, &json!({"code": code["code"]})).await;
    assert_eq!(s, 200, "{v}");
    let token = v["token"].as_str().unwrap().to_owned();
    let (s, order) = post(
        r,
        "/fn/unifiedOrder",
        Some(&token),
        &json!({"items": [{"product_id": "tea", "sku_id": "tea-250g", "quantity": 2}],
                "address": {"receiver_name": "Alice", "detailed_address": "1 Tea Street",
                            "tel_number": "13800000000"}}),
    )
    .await;
    assert_eq!(s, 200, "{order}");
    let no = order["out_trade_no"].as_str().unwrap().to_owned();
    (no, order["total_fee"].as_i64().unwrap())
}

/// Waits (up to 30 s: a loaded CI host is slow) for the order to read settled here.
async fn settled(r: &Running, no: &str) {
    let out = OutTradeNo::parse(no.to_owned()).unwrap();
    support::eventually(
        "the order to be settled",
        Duration::from_secs(30),
        || async {
            wxshop::store::repo::get_order(r.app.store.as_ref(), &out)
                .await
                .unwrap()
                .is_some_and(|o| o.value.settled_at_ms.is_some())
        },
    )
    .await;
}

/// A fund_type 1 order bought, paid in WeChat and settled: its total is available.
async fn available_money(r: &Running) -> i64 {
    let (no, total) = unpaid_order(r).await;
    control(r, "pay", &json!({"out_order_id": no})).await;
    control(r, "settle", &json!({"out_order_id": no})).await;
    settled(r, &no).await;
    let b = funds_ok(r, json!({"action": "balance"})).await;
    assert_eq!(b["available_fen"], total, "{b}");
    funds_ok(
        r,
        json!({"action": "set_bank_account", "account": {
            "bank_account_type": "ACCOUNT_TYPE_BUSINESS", "account_bank": "招商银行",
            "bank_address_code": "440300", "account_number": "6225880112345678"}}),
    )
    .await;
    total
}

/// A double tap on "withdraw" (or the merchant's tool retrying while the first request still
/// waits for WeChat's answer): WeChat takes the first and refuses the second as the day's
/// second withdrawal. GIVEN the first request's answer is slow to come back from WeChat, WHEN
/// the second arrives meanwhile, THEN it does not say the QR code is lost for good and to
/// withdraw tomorrow — the first request's answer carries that QR code — but that a withdrawal
/// is being submitted (409 `WITHDRAWAL_IN_PROGRESS`, to repeat shortly), and repeated once the
/// first has answered it gets the same withdrawal and QR code again (`resumed`). One
/// withdrawal is made. The second used to answer `WITHDRAWAL_QRCODE_LOST`, telling the
/// merchant to give up the day's withdrawal the admin could still confirm.
#[tokio::test]
async fn a_double_tap_on_withdraw_makes_one_withdrawal_and_never_calls_its_qr_code_lost() {
    for whole in [false, true] {
        let r = stack().await;
        let total = available_money(&r).await;
        let amount = if whole { total } else { 1000 };
        control(
            &r,
            "faults",
            &json!({"path": "shop/funds/submitwithdraw", "mode": "slow", "count": 1,
                    "delay_ms": 1500}),
        )
        .await;
        let first = {
            let r = &r;
            async move { funds(r, json!({"action": "withdraw", "amount_fen": amount})).await }
        };
        let second = async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            funds(&r, json!({"action": "withdraw", "amount_fen": amount})).await
        };
        let ((s1, v1), (s2, v2)) = tokio::join!(first, second);
        assert_eq!(
            s1, 200,
            "whole={whole}: the first tap gets its QR code: {v1}"
        );
        let ticket = v1["qrcode_ticket"].as_str().unwrap().to_owned();
        let id = v1["withdrawal"]["withdraw_id"].as_str().unwrap().to_owned();
        assert_ne!(
            v2["code"], "WITHDRAWAL_QRCODE_LOST",
            "whole={whole}: the QR code is in the first tap's answer: {v2}"
        );
        if s2 == 200 {
            assert_eq!(v2["qrcode_ticket"], ticket.as_str(), "whole={whole}: {v2}");
        } else {
            assert_eq!(
                (s2, v2["code"].as_str()),
                (409, Some("WITHDRAWAL_IN_PROGRESS")),
                "whole={whole}: {v2}"
            );
            assert!(
                v2["message"].as_str().unwrap().contains("again"),
                "whole={whole}: says what to do: {v2}"
            );
        }
        // Repeated now, it gets the first's QR code again.
        let again = funds_ok(&r, json!({"action": "withdraw", "amount_fen": amount})).await;
        assert_eq!(again["resumed"], true, "whole={whole}: {again}");
        assert_eq!(again["qrcode_ticket"], ticket.as_str(), "whole={whole}");
        assert_eq!(again["withdrawal"]["withdraw_id"], id.as_str());
        assert!(again["withdrawal"]["qrcode_lost"].is_null(), "{again}");
        let held = r.app.wx.funds_scan_withdraw(1, 10).await.unwrap();
        assert_eq!(held.out_request_nos, vec![id.clone()], "whole={whole}: one");
        let b = funds_ok(&r, json!({"action": "balance"})).await;
        assert_eq!(b["available_fen"], total - amount, "whole={whole}: {b}");
    }
}

/// WeChat settles an order only once it is paid, but its pushes are not ordered: the
/// settlement can arrive while the payment's push is still on its way (or after it was lost).
/// GIVEN a paid fund_type 1 order whose `open_product_order_settle` push arrives before its
/// `open_product_order_pay`, THEN the order still reads paid and settled and its money
/// withdrawable. The settlement used to be acknowledged and dropped as "for an unpaid order":
/// the money stayed pending here for good while WeChat held it available.
#[tokio::test]
async fn a_settlement_pushed_before_its_payment_still_makes_the_money_withdrawable() {
    let r = stack().await;
    let (no, total) = unpaid_order(&r).await;
    // The sandbox holds the pay push and sends the next push (the settlement) first.
    control(&r, "notifications", &json!({"reorder": true})).await;
    control(&r, "pay", &json!({"out_order_id": no})).await;
    control(&r, "settle", &json!({"out_order_id": no})).await;
    settled(&r, &no).await;
    let order = wxshop::store::repo::get_order(
        r.app.store.as_ref(),
        &OutTradeNo::parse(no.clone()).unwrap(),
    )
    .await
    .unwrap()
    .unwrap()
    .value;
    assert!(order.status.is_paid(), "{:?}", order.status);
    let first_pushes = || -> Vec<String> {
        r.sandbox
            .deliveries()
            .iter()
            .filter(|d| d["kind"] == "push" && d["attempt"] == 0)
            .map(|d| d["key"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    // The held pay push is delivered after the settlement: it may still be on its way when
    // the order reads settled (the settlement alone can record the payment).
    support::eventually(
        "the held pay push delivered",
        Duration::from_secs(30),
        || async { first_pushes().iter().any(|k| k == "open_product_order_pay") },
    )
    .await;
    let pushed = first_pushes();
    let at = |e: &str| pushed.iter().position(|k| k == e).unwrap();
    assert!(
        at("open_product_order_settle") < at("open_product_order_pay"),
        "the settlement went first: {pushed:?}"
    );
    let b = funds_ok(&r, json!({"action": "balance"})).await;
    assert_eq!(
        (b["available_fen"].as_i64(), b["pending_fen"].as_i64()),
        (Some(total), Some(0)),
        "{b}"
    );
}
