#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! A merchant's block and unblock of one user at once (two admins, or a retried call): an
//! unblock lifts only the block it read. Before, `unblock_user` read the block and then deleted
//! whatever was there: a block written between the two (the user blocked again, with a new
//! reason) was deleted too, and the user logged in and ordered again with nobody having lifted
//! that block. Deterministic: a store wrapper holds the unblock's read until the other action
//! has committed.

use serde_json::{json, Value};
use std::time::Duration;
use wxshop::store::Kind;

#[path = "reliability_support.rs"]
mod support;
use support::{spawn_post, stack_with, HoldsOnce, InProcess, StoreCall};

/// Long enough for a loaded machine.
const WAIT: Duration = Duration::from_secs(20);

async fn block(c: &InProcess<'_>, openid: &str, reason: &str) -> (u16, Value) {
    c.admin(
        "/admin/orderSync",
        &json!({"action": "block_user", "openid": openid, "reason": reason}),
    )
    .await
}

async fn unblock(c: &InProcess<'_>, openid: &str) -> (u16, Value) {
    c.admin(
        "/admin/orderSync",
        &json!({"action": "unblock_user", "openid": openid}),
    )
    .await
}

/// `login` of `user` with a fresh sandbox code: (HTTP status, answer).
async fn login_answer(c: &InProcess<'_>, user: &str) -> (u16, Value) {
    let code = c.control("login", &json!({"user": user})).await;
    c.post("/fn/login", None, &json!({"code": code["code"]}))
        .await
}

/// The blocks listed for `openid` by `blocked_users`.
async fn listed(c: &InProcess<'_>, openid: &str) -> Vec<Value> {
    let (s, v) = c
        .admin("/admin/orderSync", &json!({"action": "blocked_users"}))
        .await;
    assert_eq!(s, 200, "{v}");
    v["blocked_users"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["openid"] == openid)
        .cloned()
        .collect()
}

/// Runs `unblock_user` of `openid` on a copy of the app whose store holds the unblock's read
/// of the block; `meanwhile` runs once that read is done, before it is answered. The
/// unblock's (HTTP status, answer).
async fn unblock_with_read_held<F, Fut>(
    c: &InProcess<'_>,
    openid: &str,
    meanwhile: F,
) -> (u16, Value)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let r = c.r;
    // Held once the block is read: the unblock acts on the block as it was.
    let held = HoldsOnce::after(r.app.store.clone(), |call| {
        matches!(call, StoreCall::Get(Kind::BlockedUser, _))
    });
    let mut app = r.app.clone();
    app.store = held.clone();
    let body = json!({"action": "unblock_user", "openid": openid}).to_string();
    let run = spawn_post(app, "/admin/orderSync", Some(&c.admin_token), body);
    held.wait_reached().await;
    meanwhile().await;
    held.let_go();
    let resp = tokio::time::timeout(WAIT, run)
        .await
        .expect("the unblock to answer")
        .unwrap();
    let status = resp.status().as_u16();
    let body: Value = serde_json::from_slice(resp.body()).unwrap_or(Value::Null);
    (status, body)
}

/// GIVEN a user blocked for "coupon farming", WHEN one admin unblocks them while another
/// blocks them again for "chargeback fraud" (written after the unblock read the block, before
/// it deleted it), THEN the new block stands: the unblock answers 409 `BLOCK_CHANGED` (nothing
/// lifted), the user's login is refused 403 `USER_BLOCKED` and their order too, and
/// `blocked_users` lists the block with its new reason; no `unblock` event is recorded.
#[tokio::test]
async fn an_unblock_does_not_lift_a_block_made_again_while_it_ran() {
    let r = stack_with(&[]).await;
    let c = InProcess::new(&r);
    let (token, openid) = c.login("blocked-twice").await;
    let (s, v) = block(&c, &openid, "coupon farming").await;
    assert_eq!(s, 200, "{v}");

    let (s, v) = unblock_with_read_held(&c, &openid, || async {
        let (s, v) = block(&c, &openid, "chargeback fraud").await;
        assert_eq!(s, 200, "{v}");
    })
    .await;
    assert_eq!(s, 409, "the unblock lifted a block it never read: {v}");
    assert_eq!(v["code"], "BLOCK_CHANGED", "{v}");

    let (s, v) = login_answer(&c, "blocked-twice").await;
    assert_eq!(s, 403, "the user blocked again logs in: {v}");
    assert_eq!(v["code"], "USER_BLOCKED", "{v}");
    let (s, v) = c.order(&token, 1, None).await;
    assert_eq!(s, 403, "{v}");
    assert_eq!(v["code"], "USER_BLOCKED", "{v}");
    let ours = listed(&c, &openid).await;
    assert_eq!(ours.len(), 1, "{ours:?}");
    assert_eq!(ours[0]["reason"], "chargeback fraud", "{ours:?}");
    let (s, v) = c
        .admin(
            "/admin/orderSync",
            &json!({"action": "events", "source": "user_block"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(
        !v["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["body"]["action"] == "unblock"),
        "no unblock happened: {v}"
    );

    // Unblocked when the merchant asks again, having seen the new block.
    let (s, v) = unblock(&c, &openid).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["was_blocked"], true, "{v}");
    let (s, v) = login_answer(&c, "blocked-twice").await;
    assert_eq!(s, 200, "{v}");
}

/// GIVEN a blocked user, WHEN one admin's unblock has read the block and, before it deletes
/// it, another admin unblocks them and then blocks them again (the same reason, at the same
/// moment: a block written anew, not a version on), THEN the first unblock lifts nothing
/// (409 `BLOCK_CHANGED`): the user stays blocked. Exactly one `unblock` event is recorded.
#[tokio::test]
async fn an_unblock_does_not_lift_a_block_lifted_and_written_anew_while_it_ran() {
    let r = stack_with(&[]).await;
    let c = InProcess::new(&r);
    let (_, openid) = c.login("blocked-anew").await;
    let (s, v) = block(&c, &openid, "fraud").await;
    assert_eq!(s, 200, "{v}");

    let (s, v) = unblock_with_read_held(&c, &openid, || async {
        let (s, v) = unblock(&c, &openid).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["was_blocked"], true, "{v}");
        let (s, v) = block(&c, &openid, "fraud").await;
        assert_eq!(s, 200, "{v}");
    })
    .await;
    assert_eq!(s, 409, "the unblock lifted a block it never read: {v}");
    assert_eq!(v["code"], "BLOCK_CHANGED", "{v}");

    let (s, v) = login_answer(&c, "blocked-anew").await;
    assert_eq!(s, 403, "the user blocked anew logs in: {v}");
    assert_eq!(listed(&c, &openid).await.len(), 1);
    let (_, v) = c
        .admin(
            "/admin/orderSync",
            &json!({"action": "events", "source": "user_block"}),
        )
        .await;
    let unblocks = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["body"]["action"] == "unblock")
        .count();
    assert_eq!(unblocks, 1, "{v}");
}

/// GIVEN a blocked user, WHEN two unblocks run at once (the second's read held until the first
/// has lifted the block), THEN both answer 200, the user logs in, and one `unblock` event is
/// recorded (the second lifted nothing: `was_blocked` false).
#[tokio::test]
async fn two_unblocks_at_once_lift_the_block_once() {
    let r = stack_with(&[]).await;
    let c = InProcess::new(&r);
    let (_, openid) = c.login("unblocked-twice").await;
    let (s, v) = block(&c, &openid, "fraud").await;
    assert_eq!(s, 200, "{v}");

    let (s, v) = unblock_with_read_held(&c, &openid, || async {
        let (s, v) = unblock(&c, &openid).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["was_blocked"], true, "{v}");
    })
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["was_blocked"], false, "{v}");
    let (s, v) = login_answer(&c, "unblocked-twice").await;
    assert_eq!(s, 200, "{v}");
    let (_, v) = c
        .admin(
            "/admin/orderSync",
            &json!({"action": "events", "source": "user_block"}),
        )
        .await;
    let unblocks = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["body"]["action"] == "unblock")
        .count();
    assert_eq!(unblocks, 1, "{v}");
}
