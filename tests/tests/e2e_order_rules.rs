#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! The rules a buyer relies on along the purchase path, end to end over HTTP: an order the
//! user gave up in WeChat stops holding stock and stops asking to be paid, whether or not
//! WeChat's message about it arrived; a login WeChat answered with nonsense is a passing
//! failure, not the shop's settings; an address refused says which part is wrong, and makes
//! nothing.

use serde_json::json;
use std::time::Duration;

#[path = "reliability_support.rs"]
mod support;
use support::{eventually, run_schedule, stack_with, Client};

/// Long enough for a loaded machine.
const WAIT: Duration = Duration::from_secs(20);

/// GIVEN a secondary-merchant shop (`WX_FUND_TYPE=1`: WeChat collects, the component order is
/// the payment) and a user's unpaid order holding the last unit, WHEN the user cancels it in
/// WeChat's order centre and WeChat's `open_product_order_cancel` push is lost (WeChat does
/// not guarantee pushes), THEN reading the order (`queryOrder`, which asks WeChat about an
/// unpaid order anyway) shows it CLOSED, its stock back on sale for the next buyer, and the
/// schedule's sweep would have closed it too. It used to stay PREPAID — "to pay" in the mini
/// program, though WeChat will never take its payment — holding the unit until its own
/// expiry: the sweep and `queryOrder` read WeChat's order as cancelled (250) and took it only
/// as "not paid".
#[tokio::test]
async fn a_secondary_merchant_order_cancelled_in_wechat_is_closed_though_its_push_was_lost() {
    let r = stack_with(&[("WX_FUND_TYPE", "1")]).await;
    let c = Client::new(&r);
    c.set_stock(1).await;
    let (token, _) = c.login("cancel-lost-reader").await;
    let key = "tap-cancel-lost-reader";
    let (s, order) = c.order(&token, 1, Some(key)).await;
    assert_eq!(s, 200, "{order}");
    let no = order["out_trade_no"].as_str().unwrap().to_owned();
    assert_eq!(order["fund_type"], 1, "{order}");
    assert_eq!(c.stock().await, 0);

    c.control(
        "order",
        &json!({"action": "cancel", "out_order_id": no, "push": false}),
    )
    .await;

    let read = c.status(&token, &no).await;
    assert_eq!(read["status"], "CLOSED", "{read}");
    assert_eq!(c.stock().await, 1, "the unit is back on sale");
    // "Pay again" with the order's key: closed, so the mini program orders afresh.
    let (s, v) = c.order(&token, 1, Some(key)).await;
    assert_eq!((s, v["code"].as_str()), (409, Some("ORDER_CLOSED")), "{v}");
    let (other, _) = c.login("cancel-lost-next-buyer").await;
    let next = c.order_tea(&other, 1).await;
    assert_eq!(next["status"], "PREPAID", "{next}");
    // Closing it again (the user's own close) is harmless: it stays closed, nothing twice.
    let (s, v) = c
        .post(
            "/fn/queryOrder",
            Some(&token),
            &json!({"out_trade_no": no, "action": "close"}),
        )
        .await;
    assert_eq!(
        (s, v["order"]["status"].as_str()),
        (200, Some("CLOSED")),
        "{v}"
    );
    assert_eq!(
        c.stock().await,
        0,
        "given back once: the next buyer holds it"
    );
    eventually("no dead letter from the close", WAIT, || async {
        c.dead_letters().await.is_empty()
    })
    .await;
}

/// GIVEN the same cancelled order nobody reads, WHEN the schedule sweeps unpaid orders (well
/// before the order's own expiry), THEN it is closed and its stock given back. It used to be
/// left open until it expired.
#[tokio::test]
async fn the_sweep_closes_a_secondary_merchant_order_cancelled_in_wechat() {
    let r = stack_with(&[("WX_FUND_TYPE", "1")]).await;
    let c = Client::new(&r);
    c.set_stock(1).await;
    let (token, _) = c.login("cancel-lost-swept").await;
    let order = c.order_tea(&token, 1).await;
    let no = order["out_trade_no"].as_str().unwrap().to_owned();
    c.control(
        "order",
        &json!({"action": "cancel", "out_order_id": no, "push": false}),
    )
    .await;
    // Older than the sweep's minute, far from its expiry (15 minutes and more).
    r.app.clock.advance(2 * 60_000);
    r.sandbox.clock().advance(2 * 60_000);
    let report = run_schedule(&r).await;
    assert_eq!(c.stock().await, 1, "stock back: {report}");
    let orders = c.post("/fn/queryOrder", Some(&token), &json!({})).await.1;
    assert_eq!(orders["orders"][0]["status"], "CLOSED", "{orders}");
}

/// GIVEN WeChat's login answer (`sns/jscode2session`) arrives unreadable — HTTP 200 with an
/// HTML page, as a proxy or gateway in the way answers — WHEN the user logs in, THEN the answer
/// is 503 `WECHAT_BAD_REPLY` (a passing failure: log in again shortly), no session, and the
/// next login goes through. It used to be 503 `LOGIN_UNAVAILABLE`, "the shop's WeChat
/// settings need attention", with an ERROR telling the operator to check `WX_APPID` /
/// `WX_APPSECRET`, which were fine.
#[tokio::test]
async fn an_unreadable_login_answer_is_a_passing_failure_not_the_shops_settings() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    c.fault(json!({"path": "sns/jscode2session", "mode": "garbled", "count": 1}))
        .await;
    let code = c.control("login", &json!({"user": "garbled-login"})).await;
    let (s, v) = c
        .post("/fn/login", None, &json!({"code": code["code"]}))
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (503, Some("WECHAT_BAD_REPLY")),
        "{v}"
    );
    assert!(v.get("token").is_none(), "{v}");
    assert!(
        !v["message"].as_str().unwrap().contains("settings"),
        "not the shop's settings: {v}"
    );
    c.login("garbled-login").await;
}

/// GIVEN a buyer whose address has a part too long (a pasted block of text as the street, a
/// province field filled with a whole address), WHEN they order, THEN the answer is 400
/// `BAD_ADDRESS` naming the part and its limit, and nothing is made: no order, no stock held,
/// WeChat Pay not asked. A required part too long used to be told "address needs
/// receiver_name, detailed_address and tel_number" — all three were there — and an over-long
/// `province`, `city` or `town` was taken, stored and sent to WeChat with the order.
#[tokio::test]
async fn an_address_part_too_long_is_named_and_nothing_is_made() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (token, _) = c.login("long-address").await;
    let before = c.stock().await;
    let prepays = r.sandbox.calls("pay/unifiedorder").len();
    let long = |n: usize| "路".repeat(n);
    let cases = [
        (
            "detailed_address",
            long(257),
            "detailed_address is longer than 256",
        ),
        ("receiver_name", long(65), "receiver_name is longer than 64"),
        ("tel_number", "1".repeat(33), "tel_number is longer than 32"),
        ("province", long(65), "province is longer than 64"),
        ("city", long(65), "city is longer than 64"),
        ("town", long(65), "town is longer than 64"),
        ("receiver_name", " ".to_owned(), "receiver_name is required"),
    ];
    for (part, value, said) in cases {
        let mut address = json!({"receiver_name": "Alice", "detailed_address": "1 Tea Street",
                                 "tel_number": "13800000000"});
        address[part] = json!(value);
        let (s, v) = c
            .post(
                "/fn/unifiedOrder",
                Some(&token),
                &json!({"items": [{"product_id": "tea", "sku_id": "tea-250g", "quantity": 1}],
                        "address": address}),
            )
            .await;
        assert_eq!(
            (s, v["code"].as_str()),
            (400, Some("BAD_ADDRESS")),
            "{part}: {v}"
        );
        let message = v["message"].as_str().unwrap();
        assert!(message.contains(said), "{part}: {message}");
    }
    // At the limits, the order is taken.
    let address = json!({"receiver_name": long(64), "detailed_address": long(256),
                         "tel_number": "1".repeat(32), "province": long(64)});
    assert_eq!(
        c.stock().await,
        before,
        "nothing held by the refused orders"
    );
    assert_eq!(
        r.sandbox.calls("pay/unifiedorder").len(),
        prepays,
        "WeChat Pay not asked"
    );
    let (s, v) = c
        .post(
            "/fn/unifiedOrder",
            Some(&token),
            &json!({"items": [{"product_id": "tea", "sku_id": "tea-250g", "quantity": 1}],
                    "address": address}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(c.stock().await, before - 1);
}
