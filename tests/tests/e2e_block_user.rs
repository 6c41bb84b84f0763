#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! A merchant blocking one user, end to end over HTTP: `/admin/orderSync` `block_user`,
//! `unblock_user`, `blocked_users`. A blocked user gets no session (`login` 403
//! `USER_BLOCKED`) and makes no order (`unifiedOrder` 403 `USER_BLOCKED` with a token issued
//! before the block, nothing held); they still read their orders and apply for after-sales of
//! paid ones. Before, a merchant could stop one user only by rotating `SESSION_SECRET`, which
//! logs everybody out.

use serde_json::{json, Value};
use std::time::Duration;

#[path = "reliability_support.rs"]
mod support;
use support::{eventually, stack_with, InProcess};

/// Long enough for a loaded machine.
const WAIT: Duration = Duration::from_secs(20);

async fn block(c: &InProcess<'_>, openid: &str, reason: &str) -> (u16, Value) {
    c.admin(
        "/admin/orderSync",
        &json!({"action": "block_user", "openid": openid, "reason": reason}),
    )
    .await
}

/// A login code of `user` from the sandbox (as `wx.login` gives it), sent to `login`.
async fn login_answer(c: &InProcess<'_>, user: &str) -> (u16, Value) {
    let code = c.control("login", &json!({"user": user})).await;
    c.post("/fn/login", None, &json!({"code": code["code"]}))
        .await
}

/// GIVEN a user with a paid order and a session, WHEN the merchant blocks them, THEN a new
/// login is refused 403 `USER_BLOCKED` (no token), an order with the token they already hold
/// is refused 403 `USER_BLOCKED` with no stock held and nothing sent to WeChat Pay, while
/// `queryOrder` still shows their paid order and an after-sale on it is applied for; the
/// block is listed with its reason and who made it, and kept as a `user_block` event; another
/// user orders as before. WHEN the merchant unblocks them, THEN they log in and order again.
#[tokio::test]
async fn a_blocked_user_cannot_log_in_or_order_but_keeps_their_orders_and_after_sales() {
    let r = stack_with(&[]).await;
    let c = InProcess::new(&r);
    let (token, openid) = c.login("block-me").await;
    let paid = c.order_tea(&token, 1).await;
    let paid_no = paid["out_trade_no"].as_str().unwrap().to_owned();
    c.pay_at_sandbox(&paid_no).await;
    eventually("the order to read PAID", WAIT, || async {
        c.status(&token, &paid_no).await["status"] == "PAID"
    })
    .await;

    let (s, v) = block(&c, &openid, "coupon farming").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["blocked"]["openid"], openid.as_str(), "{v}");
    assert_eq!(v["blocked"]["reason"], "coupon farming", "{v}");
    assert!(
        v["still_allowed"].to_string().contains("after-sales"),
        "the answer says what the user can still do: {v}"
    );

    // No new session.
    let (s, v) = login_answer(&c, "block-me").await;
    assert_eq!(s, 403, "{v}");
    assert_eq!(v["code"], "USER_BLOCKED", "{v}");
    assert!(v.get("token").is_none(), "{v}");

    // No order with the token issued before the block: nothing held, nothing sent.
    let stock = c.stock().await;
    let unifiedorders = c.calls("pay/unifiedorder");
    let (s, v) = c.order(&token, 1, Some("after-block")).await;
    assert_eq!(s, 403, "{v}");
    assert_eq!(v["code"], "USER_BLOCKED", "{v}");
    let (s, v) = c.order(&token, 1, None).await;
    assert_eq!(s, 403, "{v}");
    assert_eq!(v["code"], "USER_BLOCKED", "{v}");
    assert_eq!(
        c.stock().await,
        stock,
        "a blocked user's order holds no stock"
    );
    assert_eq!(c.calls("pay/unifiedorder"), unifiedorders, "nothing sent");

    // Their paid order stays theirs: read, and an after-sale applied for.
    assert_eq!(c.status(&token, &paid_no).await["status"], "PAID");
    let aftersale = c
        .apply(&token, &paid_no, json!({"amount": 1, "reason": "dented"}))
        .await;
    assert!(!aftersale.is_empty());

    // Listed with its reason, who and when; kept as an event.
    let (s, v) = c
        .admin("/admin/orderSync", &json!({"action": "blocked_users"}))
        .await;
    assert_eq!(s, 200, "{v}");
    let listed = v["blocked_users"].as_array().unwrap();
    let ours: Vec<&Value> = listed
        .iter()
        .filter(|b| b["openid"] == openid.as_str())
        .collect();
    assert_eq!(ours.len(), 1, "{v}");
    assert_eq!(ours[0]["reason"], "coupon farming", "{v}");
    assert!(
        ours[0]["blocked_by"]
            .as_str()
            .unwrap()
            .contains("ADMIN_TOKEN"),
        "{v}"
    );
    assert!(ours[0]["blocked_at"].as_i64().unwrap() > 0, "{v}");
    let (s, v) = c
        .admin(
            "/admin/orderSync",
            &json!({"action": "events", "source": "user_block"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["body"]["action"] == "block"
                && e["body"]["openid"] == openid.as_str()
                && e["body"]["reason"] == "coupon farming"),
        "{v}"
    );

    // Somebody else is not blocked.
    let (other, _) = c.login("not-blocked").await;
    c.order_tea(&other, 1).await;

    // Unblocked: logs in and orders again.
    let (s, v) = c
        .admin(
            "/admin/orderSync",
            &json!({"action": "unblock_user", "openid": openid}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["was_blocked"], true, "{v}");
    let (s, v) = login_answer(&c, "block-me").await;
    assert_eq!(s, 200, "{v}");
    c.order_tea(&token, 1).await;
    let (s, v) = c
        .admin("/admin/orderSync", &json!({"action": "blocked_users"}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(
        !v["blocked_users"].to_string().contains(&openid),
        "unblocked, no longer listed: {v}"
    );
}

/// GIVEN the merchant's block actions, WHEN the openid is malformed (or missing) or no reason
/// is given, THEN 400 and nothing is stored: no block listed, and the user still logs in.
#[tokio::test]
async fn a_block_of_a_malformed_openid_or_without_a_reason_is_refused_and_stores_nothing() {
    let r = stack_with(&[]).await;
    let c = InProcess::new(&r);
    for bad in ["", "o@1", "has space", &"o".repeat(129)] {
        let (s, v) = block(&c, bad, "fraud").await;
        assert_eq!(s, 400, "{bad}: {v}");
        assert_eq!(v["code"], "BAD_OPENID", "{bad}: {v}");
    }
    let (_, openid) = c.login("no-reason").await;
    let (s, v) = block(&c, &openid, "  ").await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["code"], "REASON_REQUIRED", "{v}");
    let (s, v) = c
        .admin("/admin/orderSync", &json!({"action": "blocked_users"}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["blocked_users"], json!([]), "{v}");
    let (s, v) = login_answer(&c, "no-reason").await;
    assert_eq!(s, 200, "{v}");
}
