#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! Parcel rules a merchant and a user notice, end to end over HTTP: an order every item of
//! which was refunded through after-sales (only its freight left) is not shipped — `ship` is
//! refused up front, and a send that finds it so later is never made with an empty parcel —
//! and the user's order (and the merchant's ship answer) says when it was shipped.
//!
//! `unifiedOrder` charges no freight yet (`freight` 0), so an order with freight is made by
//! giving a paid order's stored record freight as a freight-charging version would write it:
//! the same total, part of it freight (the tea's unit price less it). Everything else goes
//! through the routes.

use serde_json::{json, Value};
use std::time::Duration;
use wxlocal::gateway::Running;

#[path = "reliability_support.rs"]
mod support;
use support::{eventually, stack_with, wx_order, InProcess};

/// Long enough for a loaded machine.
const WAIT: Duration = Duration::from_secs(30);

/// Freight of the orders here, fen (the tea is 1,990: 1,490 of goods and 500 of freight).
const FREIGHT: i64 = 500;

/// Returns once WeChat's component order of `no` reads `status`.
async fn until_wx_status(r: &Running, no: &str, status: i64, what: &str) {
    eventually(what, WAIT, || async {
        wx_order(r, no).await.status == status
    })
    .await;
}

/// `user` buys one tea and pays at the sandbox's cashier; returns once WeChat's component
/// order reads paid (20): (token, out_trade_no).
async fn paid_and_synced(c: &InProcess<'_>, user: &str) -> (String, String) {
    let (token, _) = c.login(user).await;
    let order = c.order_tea(&token, 1).await;
    let no = order["out_trade_no"].as_str().unwrap().to_owned();
    c.pay_at_sandbox(&no).await;
    until_wx_status(c.r, &no, 20, "WeChat's component order paid (20)").await;
    (token, no)
}

/// The user gets the tea's whole price back (an after-sale of its one unit, 1,490 fen) and
/// the merchant approves it: returns once it reads REFUNDED.
async fn tea_refunded(c: &InProcess<'_>, token: &str, no: &str) {
    let id = c
        .apply(
            token,
            no,
            json!({"product_id": "tea", "sku_id": "tea-250g", "quantity": 1,
                   "amount": 1990 - FREIGHT, "reason": "not wanted"}),
        )
        .await;
    c.approve(&id).await;
    c.until_refunded(token, no, &id).await;
}

/// `ship` of `no` with SF and this waybill: (HTTP status, answer).
async fn ship(c: &InProcess<'_>, no: &str, waybill_id: &str) -> (u16, Value) {
    c.admin(
        "/admin/orderSync",
        &json!({"action": "ship", "out_trade_no": no, "delivery_id": "SF",
                "waybill_id": waybill_id}),
    )
    .await
}

/// The `shop/delivery/send` requests the sandbox received for `no`.
fn sends_of(r: &Running, no: &str) -> Vec<Value> {
    r.sandbox
        .calls("shop/delivery/send")
        .into_iter()
        .filter(|v| v["out_order_id"] == no)
        .collect()
}

/// Whether any send of `no` listed a parcel with no goods.
fn an_empty_parcel_sent(r: &Running, no: &str) -> bool {
    sends_of(r, no).iter().any(|s| {
        s["delivery_list"].as_array().is_some_and(|parcels| {
            parcels.iter().any(|p| {
                p["product_info_list"]
                    .as_array()
                    .is_none_or(|items| items.is_empty())
            })
        })
    })
}

/// The dead letters of `no`'s `delivery/send`.
async fn dead_sends(c: &InProcess<'_>, no: &str) -> Vec<Value> {
    c.dead_letters()
        .await
        .into_iter()
        .filter(|d| d["task"]["type"] == "delivery_send" && d["task"]["out_trade_no"] == no)
        .collect()
}

/// GIVEN a paid order whose one item was refunded in full through an after-sale (its whole
/// price back) while its freight was not — so it is still PAID —
/// WHEN the merchant ships it
/// THEN the shipment is refused 409 `NOTHING_TO_SHIP`, saying every item was refunded and
/// what to do (refund what is left), and nothing is stored or sent: the order stays PAID
/// without a waybill, no `delivery/send` reaches WeChat, whose order stays paid (20). Once the
/// freight is refunded too (the merchant's `refund`) the order is REFUNDED, and `ship` says so.
///
/// It was accepted (200, SHIPPED), and WeChat was sent a parcel listing no goods, which it
/// took: the user's order centre showed a shipment with nothing in it.
#[tokio::test]
async fn shipping_an_order_whose_every_item_was_refunded_is_refused() {
    let r = stack_with(&[]).await;
    let c = InProcess::new(&r);
    let (token, no) = paid_and_synced(&c, "nothing-left").await;
    support::tea_carries_freight(&r, &no, FREIGHT).await;
    tea_refunded(&c, &token, &no).await;
    let order = c.status(&token, &no).await;
    assert_eq!(order["status"], "PAID", "{order}");
    assert_eq!(order["refunded_fee"], 1990 - FREIGHT, "{order}");

    let (s, v) = ship(&c, &no, "SF800").await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["code"], "NOTHING_TO_SHIP", "{v}");
    let message = v["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("every item") && message.contains("refund"),
        "says why and what to do: {v}"
    );

    let order = c.status(&token, &no).await;
    assert_eq!(order["status"], "PAID", "{order}");
    assert!(
        order.get("delivery").is_none(),
        "no waybill stored: {order}"
    );
    assert!(order.get("shipped_at_ms").is_none(), "{order}");
    let (s, drained) = c
        .admin("/admin/orderSync", &json!({"action": "drain"}))
        .await;
    assert_eq!(s, 200, "{drained}");
    assert!(sends_of(&r, &no).is_empty(), "nothing sent to WeChat");
    assert_eq!(
        wx_order(&r, &no).await.status,
        20,
        "WeChat's order unshipped"
    );

    // What the refusal advises: the freight back too (WeChat Pay takes one refund of an
    // order a minute), and the order is closed, REFUNDED. The user cannot ask for it: the
    // only item's every unit is under an after-sale (no line on a one-item order is that
    // line, what is left of it — since `e2e_claim_rules`); the merchant's own refund gives
    // it back.
    r.sandbox.clock().advance(60_000);
    let (s, v) = c
        .post(
            "/fn/aftersaleSync",
            Some(&token),
            &json!({"action": "apply", "out_trade_no": no, "reason": "the freight back"}),
        )
        .await;
    assert_eq!(
        (s, &v["code"]),
        (400, &json!("LINE_ALREADY_CLAIMED")),
        "{v}"
    );
    let (s, v) = c
        .admin(
            "/admin/aftersaleSync",
            &json!({"action": "refund", "out_trade_no": no, "reason": "the freight back",
                    "idempotency_key": "freight-back"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["aftersale"]["amount"], FREIGHT, "{v}");
    let id = v["aftersale"]["aftersale_id"].as_str().unwrap().to_owned();
    c.until_refunded(&token, &no, &id).await;
    eventually("the order REFUNDED", WAIT, || async {
        c.status(&token, &no).await["status"] == "REFUNDED"
    })
    .await;
    let (s, v) = ship(&c, &no, "SF800").await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["code"], "ORDER_NOT_SHIPPABLE", "{v}");
    assert!(sends_of(&r, &no).is_empty(), "nothing sent to WeChat");
}

/// GIVEN a paid order (one item, and freight) the merchant shipped, whose `delivery/send`
/// WeChat refused (dead-lettered), and whose item was then refunded in full (the freight not)
/// WHEN the merchant replays the dead send
/// THEN no parcel without goods goes to WeChat: the send is not made and is a dead letter
/// again, its error saying `NOTHING_TO_SHIP`, for the merchant to see; WeChat's order stays
/// unshipped (20), ours SHIPPED with its waybill.
///
/// The replayed send listed no goods (`product_info_list` []), and WeChat took it: its order
/// read shipped (30), a parcel with nothing in it in the user's order centre.
#[tokio::test]
async fn a_send_finding_every_item_refunded_sends_no_empty_parcel() {
    let r = stack_with(&[]).await;
    let c = InProcess::new(&r);
    let (token, no) = paid_and_synced(&c, "emptied-later").await;
    support::tea_carries_freight(&r, &no, FREIGHT).await;

    c.fault(
        json!({"path": "shop/delivery/send", "mode": "errcode", "errcode": 47001,
                   "count": 1}),
    )
    .await;
    let (s, v) = ship(&c, &no, "SF810").await;
    assert_eq!(s, 200, "{v}");
    eventually("the refused send dead-lettered", WAIT, || async {
        !dead_sends(&c, &no).await.is_empty()
    })
    .await;
    assert_eq!(wx_order(&r, &no).await.status, 20, "WeChat took nothing");

    tea_refunded(&c, &token, &no).await;
    let dead = dead_sends(&c, &no).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let (s, v) = c
        .admin(
            "/admin/orderSync",
            &json!({"action": "replay", "id": dead[0]["id"]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");

    // The replayed send runs: a dead letter again, or (as it was) WeChat's order shipped.
    eventually("the replayed send settled", WAIT, || async {
        c.admin("/admin/orderSync", &json!({"action": "drain"}))
            .await;
        let dead = dead_sends(&c, &no).await;
        dead.iter().any(|d| {
            d["last_error"]
                .as_str()
                .unwrap_or("")
                .contains("NOTHING_TO_SHIP")
        }) || wx_order(&r, &no).await.status == 30
    })
    .await;
    assert!(
        !an_empty_parcel_sent(&r, &no),
        "a parcel without goods went to WeChat: {:?}",
        sends_of(&r, &no)
    );
    assert_eq!(
        wx_order(&r, &no).await.status,
        20,
        "WeChat's order unshipped"
    );
    let dead = dead_sends(&c, &no).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let error = dead[0]["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("NOTHING_TO_SHIP") && error.contains("every item"),
        "the dead letter says why: {error}"
    );
    let order = c.status(&token, &no).await;
    assert_eq!(order["status"], "SHIPPED", "{order}");
    assert_eq!(order["delivery"]["waybill_id"], "SF810", "{order}");
}

/// GIVEN a paid order WHEN the merchant ships it THEN the ship answer and the user's order
/// (queryOrder, one order and the list) carry `shipped_at_ms`, when it was shipped — absent
/// before — and a corrected waybill keeps it. It was never shown, though the order kept it.
#[tokio::test]
async fn the_order_says_when_it_was_shipped() {
    let r = stack_with(&[]).await;
    let c = InProcess::new(&r);
    let (token, no) = paid_and_synced(&c, "when-shipped").await;
    let before = c.status(&token, &no).await;
    assert!(before.get("shipped_at_ms").is_none(), "{before}");
    let paid_at = before["paid_at"].as_i64().unwrap();

    let from = r.app.clock.now_ms();
    c.fault(
        json!({"path": "shop/delivery/send", "mode": "errcode", "errcode": 47001,
                   "count": 1}),
    )
    .await;
    let (s, v) = ship(&c, &no, "SF820").await;
    let to = r.app.clock.now_ms();
    assert_eq!(s, 200, "{v}");
    let shipped_at = v["order"]["shipped_at_ms"]
        .as_i64()
        .unwrap_or_else(|| panic!("the ship answer says when: {v}"));
    assert!(
        (from..=to).contains(&shipped_at) && shipped_at >= paid_at,
        "{shipped_at} within {from}..={to}: {v}"
    );
    let order = c.status(&token, &no).await;
    assert_eq!(order["shipped_at_ms"], shipped_at, "{order}");
    let (s, page) = c.post("/fn/queryOrder", Some(&token), &json!({})).await;
    assert_eq!(s, 200, "{page}");
    let listed = page["orders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["out_trade_no"] == no)
        .cloned()
        .unwrap();
    assert_eq!(listed["shipped_at_ms"], shipped_at, "{listed}");

    // The send refused (a waybill WeChat will not take): corrected, the time stays.
    eventually("the refused send dead-lettered", WAIT, || async {
        !dead_sends(&c, &no).await.is_empty()
    })
    .await;
    r.app.clock.advance(60_000);
    let (s, v) = ship(&c, &no, "SF821").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["order"]["delivery"]["waybill_id"], "SF821", "{v}");
    assert_eq!(v["order"]["shipped_at_ms"], shipped_at, "{v}");
    until_wx_status(&r, &no, 30, "shipped at WeChat (30)").await;
    assert_eq!(c.status(&token, &no).await["shipped_at_ms"], shipped_at);
}
