#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! The trading component's order pushes `open_product_order_cancel` and
//! `open_product_order_refund`, end to end: the sandbox pushes them as WeChat would (the
//! user cancelling in WeChat's order centre, an order refunded in full through after-sales),
//! and the test posts forged or late ones itself, signed with the stack's push token in
//! plaintext mode, where the signature does not cover the body. Each is acted on only as
//! WeChat's own record of the order (`shop/order/get`) states it. Both used to be recorded
//! and nothing else: an order the user cancelled in WeChat held its stock until it expired,
//! and a refund WeChat made whose after-sale push was lost waited for the schedule.

use serde_json::{json, Value};
use std::time::Duration;
use wxlocal::gateway::Running;

#[path = "reliability_support.rs"]
mod support;
use support::{eventually, Client};

const WAIT: Duration = Duration::from_secs(10);

/// A stack (`vars` over the defaults) whose pages (`MoneyNeedsAPerson`) are counted.
async fn stack(vars: &[(&str, &str)]) -> (Running, impl Fn() -> u64) {
    let (metrics, captured) = wxshop::metrics::Metrics::capture("test");
    let r = support::stack_with_metrics(vars, metrics).await;
    (r, move || {
        captured.total(wxshop::metrics::MONEY_NEEDS_A_PERSON)
    })
}

/// Posts an order event for `out_order_id` to the push URL as WeChat would, signed with the
/// stack's token (plaintext mode); `create_time` tells apart pushes of one event. The status
/// answered.
async fn push(r: &Running, event: &str, out_order_id: &str, create_time: i64, nonce: &str) -> u16 {
    let ts = r.app.clock.now_secs();
    let query =
        wxshop::push::PushQuery::signed("localpushtoken", &ts.to_string(), nonce).to_query_string();
    let body = json!({"ToUserName": "gh_x", "FromUserName": "oX", "CreateTime": create_time,
        "MsgType": "event", "Event": event, "order_info": {"out_order_id": out_order_id}});
    Client::new(r)
        .raw(&format!("/callbacks/wechat?{query}"), body.to_string())
        .await
        .0
}

/// WeChat's status of the component order of `no` (`shop/order/get`, through the app's
/// client).
async fn wx_status(r: &Running, no: &str) -> i64 {
    support::wx_order(r, no).await.status
}

/// Kept for a person by the order events ([`ORDER_EVENT_MISMATCH_EVENTS`]).
///
/// [`ORDER_EVENT_MISMATCH_EVENTS`]: wxshop::handlers::audit_callback::ORDER_EVENT_MISMATCH_EVENTS
async fn mismatches(c: &Client) -> Vec<Value> {
    let (s, v) = c
        .admin(
            "/admin/orderSync",
            &json!({"action": "events", "source": "order_event_mismatch"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    v["events"].as_array().unwrap().clone()
}

/// `user` orders `qty` tea (unpaid, in the trading component): (token, out_trade_no).
async fn ordered(r: &Running, c: &Client, user: &str, qty: u32) -> (String, String) {
    let (token, _) = c.login(user).await;
    let (s, v) = c.order(&token, qty, None).await;
    assert_eq!(s, 200, "{v}");
    let no = v["out_trade_no"].as_str().unwrap().to_owned();
    assert!(
        r.sandbox
            .calls("shop/order/add")
            .iter()
            .any(|a| a.to_string().contains(&no)),
        "in the trading component"
    );
    (token, no)
}

/// The user cancels their unpaid order in WeChat's order centre: the sandbox pushes
/// `open_product_order_cancel`, and our order is closed as an unpaid order is — its stock
/// back on sale (another buyer gets the last unit), its WeChat Pay order closed. The same
/// push again (a retry, a replay) gives nothing back twice. Nothing pages.
#[tokio::test]
async fn a_cancel_in_wechat_closes_the_unpaid_order_and_frees_its_stock() {
    let (r, paged) = stack(&[]).await;
    let c = Client::new(&r);
    c.set_stock(1).await;
    let (token, no) = ordered(&r, &c, "olga", 1).await;
    assert_eq!(c.status(&token, &no).await["status"], "PREPAID");
    let (other, _) = c.login("pete").await;
    let (s, v) = c.order(&other, 1, None).await;
    assert_eq!((s, v["code"].as_str()), (409, Some("SOLD_OUT")), "{v}");

    c.control("order", &json!({"action": "cancel", "out_order_id": no}))
        .await;
    eventually("the order closed", WAIT, || async {
        c.status(&token, &no).await["status"] == "CLOSED"
    })
    .await;
    assert_eq!(c.stock().await, 1, "its stock given back");
    eventually("its WeChat Pay order closed", WAIT, || async {
        r.sandbox
            .calls("pay/closeorder")
            .iter()
            .any(|v| v.to_string().contains(&no))
    })
    .await;
    let (s, v) = c.order(&other, 1, None).await;
    assert_eq!(s, 200, "the last unit is for sale again: {v}");
    assert_eq!(c.stock().await, 0);

    // The cancel again, as a later push of it: nothing more is given back.
    let ts = r.app.clock.now_secs();
    assert_eq!(
        push(&r, "open_product_order_cancel", &no, ts + 1, "n-again").await,
        200
    );
    assert_eq!(c.status(&token, &no).await["status"], "CLOSED");
    assert_eq!(c.stock().await, 0, "nothing given back twice");
    assert_eq!(paged(), 0);
    assert!(mismatches(&c).await.is_empty());
    assert!(
        c.dead_letters().await.is_empty(),
        "{:?}",
        c.dead_letters().await
    );
}

/// GIVEN an order left unpaid in the trading component WHEN WeChat's clock passes its
/// `expire_time` (our `expires_at_ms`, ORDER_TTL_SECS 900 in these stacks) THEN WeChat
/// cancels it by itself, as an unpaid timeout: its order reads 181 (the status the sandbox
/// picked, UNVERIFIED; 250 also means it) and `open_product_order_cancel` is pushed — at the
/// sandbox's next request, here a read of its clock, before our own sweep has run. Ours is
/// closed from that push: its stock back on sale, its WeChat Pay order closed, nothing paged,
/// nothing dead-lettered; the cashier refuses its payment. (The sandbox used to leave an
/// expired order awaiting payment at WeChat for ever and push nothing: only our sweep, when
/// it came, closed it.)
#[tokio::test]
async fn an_order_left_unpaid_past_its_expiry_is_cancelled_by_wechat_and_closed_here() {
    let (r, paged) = stack(&[]).await;
    let c = Client::new(&r);
    c.set_stock(1).await;
    let (token, no) = ordered(&r, &c, "ursula", 1).await;
    assert_eq!(c.status(&token, &no).await["status"], "PREPAID");
    assert_eq!(c.stock().await, 0);
    let parsed = wxshop::domain::OutTradeNo::parse(no.clone()).unwrap();
    let stored_status = || async {
        wxshop::store::repo::get_order(r.app.store.as_ref(), &parsed)
            .await
            .unwrap()
            .unwrap()
            .value
            .status
            .as_str()
            .to_owned()
    };

    // Both clocks past the expiry (pushes are taken only close to our time); WeChat notices
    // at its next request.
    r.app.clock.advance(16 * 60_000);
    r.sandbox.clock().advance(16 * 60_000);
    assert_eq!(stored_status().await, "PREPAID", "our sweep has not run");
    let (s, v) = c.post("/sandbox/_control/clock", None, &json!({})).await;
    assert_eq!(s, 200, "{v}");
    assert!(
        r.sandbox.pushed_events().iter().any(|e| {
            e["Event"] == "open_product_order_cancel" && e["order_info"]["out_order_id"] == no
        }),
        "the cancel pushed"
    );
    assert_eq!(wx_status(&r, &no).await, 181);

    eventually("the order closed from the push", WAIT, || async {
        stored_status().await == "CLOSED"
    })
    .await;
    assert_eq!(c.stock().await, 1, "its stock given back");
    eventually("its WeChat Pay order closed", WAIT, || async {
        r.sandbox
            .calls("pay/closeorder")
            .iter()
            .any(|v| v.to_string().contains(&no))
    })
    .await;
    let (s, v) = c
        .post("/sandbox/_control/pay", None, &json!({"out_trade_no": no}))
        .await;
    assert_eq!(s, 409, "its payment refused: {v}");
    assert_eq!(c.status(&token, &no).await["status"], "CLOSED");
    assert_eq!(wx_status(&r, &no).await, 181, "still cancelled at WeChat");
    assert_eq!(paged(), 0);
    assert!(mismatches(&c).await.is_empty());
    assert!(
        c.dead_letters().await.is_empty(),
        "{:?}",
        c.dead_letters().await
    );
}

/// A cancel push WeChat's order does not bear out — forged (plaintext mode does not sign the
/// body), or late, from before the order was made again — changes nothing: WeChat's order
/// is still awaiting payment, so ours stays PREPAID with its stock held. Pushes naming an
/// order we do not have, or no order of ours at all, are acknowledged and change nothing.
#[tokio::test]
async fn a_cancel_push_for_an_order_wechat_holds_unpaid_changes_nothing() {
    let (r, paged) = stack(&[]).await;
    let c = Client::new(&r);
    let before = c.stock().await;
    let (token, no) = ordered(&r, &c, "quin", 2).await;
    let ts = r.app.clock.now_secs();
    assert_eq!(
        push(&r, "open_product_order_cancel", &no, ts, "n-forged").await,
        200
    );
    assert_eq!(c.status(&token, &no).await["status"], "PREPAID");
    assert_eq!(c.stock().await, before - 2, "its stock still held");
    assert_eq!(wx_status(&r, &no).await, 10);
    for (other, nonce) in [
        ("WX20990101000000000000000000", "n-unknown"),
        ("../x", "n-bad"),
    ] {
        assert_eq!(
            push(&r, "open_product_order_cancel", other, ts, nonce).await,
            200,
            "{other}"
        );
    }
    assert_eq!(c.status(&token, &no).await["status"], "PREPAID");
    assert_eq!(paged(), 0);
}

/// WeChat's order reads cancelled while ours is paid (here: cancelled at WeChat, its push
/// lost, then paid through WeChat Pay all the same). The money is real: nothing changes — ours
/// stays PAID, nothing is closed or refunded — and a person is paged once, with the case kept
/// as an `order_event_mismatch` event, however often WeChat pushes it, and whether the push
/// or the payment sync (`shop/order/pay`, refused for the cancelled order) finds it first.
#[tokio::test]
async fn a_cancel_at_wechat_of_an_order_we_hold_paid_pages_and_changes_nothing() {
    let (r, paged) = stack(&[]).await;
    let c = Client::new(&r);
    let (token, no) = ordered(&r, &c, "rhea", 1).await;
    c.control(
        "order",
        &json!({"action": "cancel", "out_order_id": no, "push": false}),
    )
    .await;
    let before = paged();
    c.pay_at_sandbox(&no).await;
    eventually("the order paid", WAIT, || async {
        c.status(&token, &no).await["status"] == "PAID"
    })
    .await;
    let stock = c.stock().await;

    let ts = r.app.clock.now_secs();
    assert_eq!(
        push(&r, "open_product_order_cancel", &no, ts, "n-paid").await,
        200
    );
    assert_eq!(c.status(&token, &no).await["status"], "PAID");
    assert_eq!(c.stock().await, stock);
    assert_eq!(paged() - before, 1, "a person is paged");
    let kept = mismatches(&c).await;
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0]["body"]["out_order_id"], no, "{kept:?}");
    assert_eq!(kept[0]["body"]["status"], "PAID", "{kept:?}");

    assert_eq!(
        push(&r, "open_product_order_cancel", &no, ts + 1, "n-paid-2").await,
        200
    );
    assert_eq!(c.status(&token, &no).await["status"], "PAID");
    assert_eq!(paged() - before, 1, "paged once");
    assert_eq!(mismatches(&c).await.len(), 1);
}

/// A payment that arrives after our own close (it raced the close; here its notification is
/// posted once the close has gone through): the user closes the unpaid order, the outbox
/// closes it at WeChat Pay and cancels the component order (250); then the payment comes.
/// It is recorded — PAID, the stock taken again — and its sync to the component order
/// (`shop/order/pay`) is refused, WeChat's order being cancelled: that is kept once as an
/// `order_event_mismatch` event saying what to do (ship it here only, or refund it) and pages
/// a person once — not again for a re-sync or a later cancel push — with no dead letter. It
/// used to page nobody: the payment sync was dead-lettered as "in status 250".
#[tokio::test]
async fn a_payment_after_our_close_pages_once_for_the_cancelled_component_order() {
    let (r, paged) = stack(&[]).await;
    let c = Client::new(&r);
    let before = c.stock().await;
    let (token, no) = ordered(&r, &c, "xena", 1).await;
    let (s, v) = c
        .post(
            "/fn/queryOrder",
            Some(&token),
            &json!({"out_trade_no": no, "action": "close"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["order"]["status"], "CLOSED", "{v}");
    eventually("the component order cancelled", WAIT, || async {
        wx_status(&r, &no).await == 250
    })
    .await;
    eventually("its cancel pushed back and taken in", WAIT, || async {
        r.sandbox
            .deliveries()
            .iter()
            .any(|d| d["key"] == "open_product_order_cancel" && d["acked"] == true)
    })
    .await;
    assert_eq!(c.stock().await, before, "the close gave the stock back");

    let order = c.status(&token, &no).await;
    let parsed = wxshop::domain::OutTradeNo::parse(no.clone()).unwrap();
    let openid = wxshop::store::repo::get_order(r.app.store.as_ref(), &parsed)
        .await
        .unwrap()
        .unwrap()
        .value
        .openid;
    let body = support::notification(
        &r,
        &no,
        openid.as_str(),
        order["total_fee"].as_i64().unwrap(),
        "4200000000202612060000000077",
    );
    let (s, reply) = c.raw("/callbacks/pay", body).await;
    assert_eq!(
        (s, support::return_code(&reply)),
        (200, "SUCCESS"),
        "{reply}"
    );
    assert_eq!(c.status(&token, &no).await["status"], "PAID");
    assert_eq!(c.stock().await, before - 1, "the stock taken again");

    eventually("a person paged", WAIT, || async { paged() == 1 }).await;
    let kept = mismatches(&c).await;
    assert_eq!(kept.len(), 1, "{kept:?}");
    let body = &kept[0]["body"];
    assert_eq!(body["out_order_id"], no, "{kept:?}");
    assert_eq!(body["status"], "PAID", "{kept:?}");
    assert_eq!(body["wx_status"], 250, "{kept:?}");
    assert!(
        body["found_by"]
            .as_str()
            .is_some_and(|f| f.contains("shop/order/pay")),
        "{kept:?}"
    );
    assert!(
        body["what_to_do"]
            .as_str()
            .is_some_and(|w| w.contains("ship") && w.contains("refund")),
        "{kept:?}"
    );
    assert!(
        c.dead_letters().await.is_empty(),
        "{:?}",
        c.dead_letters().await
    );

    // A re-sync by hand and a late cancel push find the same case: nobody is paged again.
    let calls = c.order_pay_calls().await.get(&no).copied().unwrap_or(0);
    let (s, v) = c
        .admin(
            "/admin/orderSync",
            &json!({"action": "resync", "out_trade_no": no}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    eventually("the payment synced again", WAIT, || async {
        c.order_pay_calls().await.get(&no).copied().unwrap_or(0) > calls
    })
    .await;
    let ts = r.app.clock.now_secs();
    assert_eq!(
        push(&r, "open_product_order_cancel", &no, ts + 1, "n-late").await,
        200
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(paged(), 1, "paged once");
    assert_eq!(mismatches(&c).await.len(), 1);
    assert_eq!(c.status(&token, &no).await["status"], "PAID");
    assert!(c.dead_letters().await.is_empty());
}

/// GIVEN an order paid through WeChat Pay after WeChat cancelled its component order (250;
/// the user cancelled it in WeChat's order centre, the push lost — as a payment racing our
/// own close leaves it too), and the payment sync held back by a busy WeChat, WHEN the user
/// applies for a refund and the merchant approves it, THEN the refund goes through WeChat Pay
/// as any other (REFUNDED), and the after-sale is not mirrored at WeChat — which takes no
/// after-sale of a cancelled order (`ecaftersale/add` refused, 100000, its order read back:
/// 250) — without a dead letter: the after-sale's sync finds the cancelled order first and
/// keeps the order's `order_event_mismatch` once (paging once), every later sync of it (the
/// approval's, the refund's) asks WeChat nothing more, nor does the schedule's read-back of
/// open after-sales (`not_at_wechat`), and the payment sync, once WeChat
/// answers, finds the same case and pages nobody again. Each after-sale sync used to end in
/// the dead letter ("its order is in status 250").
#[tokio::test]
async fn a_refund_of_an_order_paid_after_wechats_cancel_is_made_without_wechats_aftersale() {
    let (r, paged) = stack(&[]).await;
    let c = Client::new(&r);
    let (token, no) = ordered(&r, &c, "yara", 1).await;
    c.control(
        "order",
        &json!({"action": "cancel", "out_order_id": no, "push": false}),
    )
    .await;
    assert_eq!(wx_status(&r, &no).await, 250);
    // The payment sync is held back (WeChat busy), so the after-sale's sync meets WeChat's
    // cancelled order first.
    c.fault(json!({"path": "shop/order/pay", "mode": "errcode", "errcode": -1, "count": 1000}))
        .await;
    c.pay_at_sandbox(&no).await;
    eventually("the order paid", WAIT, || async {
        c.status(&token, &no).await["status"] == "PAID"
    })
    .await;

    let (s, v) = c
        .post(
            "/fn/aftersaleSync",
            Some(&token),
            &json!({"action": "apply", "out_trade_no": no, "reason": "paid after I closed it"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let id = v["aftersale"]["aftersale_id"].as_str().unwrap().to_owned();
    eventually("a person paged", WAIT, || async { paged() == 1 }).await;
    let kept = mismatches(&c).await;
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(
        kept[0]["body"]["found_by"]
            .as_str()
            .is_some_and(|f| f.contains("ecaftersale/add")),
        "{kept:?}"
    );
    let adds = || {
        r.sandbox
            .calls("shop/ecaftersale/add")
            .into_iter()
            .filter(|a| a["out_order_id"] == no.as_str())
            .count()
    };
    assert_eq!(adds(), 1, "refused once");
    // The schedule's read-back of open after-sales (whose pushes may have been lost) asks
    // WeChat nothing about it either: WeChat holds no after-sale of a cancelled order.
    r.app.clock.advance(11 * 60_000);
    let gets = || r.sandbox.calls("shop/ecaftersale/get").len();
    let before = gets();
    let report = support::run_schedule(&r).await;
    let sweep = &report["wechat_refunds"];
    assert_eq!(sweep["asked"], 0, "{report}");
    assert_eq!(sweep["not_at_wechat"], 1, "{report}");
    assert_eq!(gets(), before, "WeChat was not asked");

    let (s, v) = c
        .admin(
            "/admin/aftersaleSync",
            &json!({"action": "approve", "aftersale_id": id}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let refunded = || async {
        let (s, v) = c
            .post(
                "/fn/aftersaleSync",
                Some(&token),
                &json!({"action": "list", "out_trade_no": no}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v["aftersales"][0]["status"] == "REFUNDED"
    };
    eventually("refunded through WeChat Pay", WAIT, refunded).await;
    let refunds: Vec<Value> = r
        .sandbox
        .calls("secapi/pay/refund")
        .into_iter()
        .filter(|c| c["out_trade_no"] == no.as_str())
        .collect();
    assert_eq!(refunds.len(), 1, "{refunds:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        adds(),
        1,
        "the approval's and the refund's syncs asked WeChat nothing"
    );

    // WeChat answers again: the payment sync finds the same cancelled order.
    c.clear_faults().await;
    let calls = c.order_pay_calls().await.get(&no).copied().unwrap_or(0);
    r.app.clock.advance(120_000);
    eventually("the payment synced again", WAIT, || async {
        c.order_pay_calls().await.get(&no).copied().unwrap_or(0) > calls
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(paged(), 1, "paged once");
    assert_eq!(mismatches(&c).await.len(), 1);
    let dead = c.dead_letters().await;
    assert!(dead.is_empty(), "{dead:?}");
}

/// `user` orders one tea and pays through WeChat Pay; returns once the trading component has
/// the payment (`shop/order/pay`): (token, out_trade_no).
async fn paid_and_synced(r: &Running, c: &Client, user: &str) -> (String, String) {
    let (token, no) = ordered(r, c, user, 1).await;
    c.pay_at_sandbox(&no).await;
    eventually("shop/order/pay", WAIT, || async {
        c.order_pay_calls().await.contains_key(&no)
    })
    .await;
    (token, no)
}

/// The user applies for all of `no` through the mini program: WeChat's id of the after-sale,
/// once it reached WeChat.
async fn applied_at_wechat(r: &Running, c: &Client, token: &str, no: &str) -> (String, u64) {
    let (s, v) = c
        .post(
            "/fn/aftersaleSync",
            Some(token),
            &json!({"action": "apply", "out_trade_no": no, "reason": "changed my mind"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let id = v["aftersale"]["aftersale_id"].as_str().unwrap().to_owned();
    let parsed = wxshop::domain::AfterSaleId::parse(id.clone()).unwrap();
    let wx_id = || async {
        wxshop::store::repo::get_aftersale(r.app.store.as_ref(), &parsed)
            .await
            .unwrap()
            .and_then(|a| a.value.wx_aftersale_id)
    };
    eventually("the after-sale at WeChat", WAIT, || async {
        wx_id().await.is_some()
    })
    .await;
    (id, wx_id().await.unwrap())
}

/// A secondary-merchant order (fund_type 1: WeChat holds the money and refunds it): WeChat's
/// staff refund the user's after-sale of all of it and its `aftersale_refund_success` push is
/// lost; `open_product_order_refund` arrives. The order's after-sales are read back from
/// WeChat then and there (not at the schedule's next turn, after its grace): the refund is
/// recorded from WeChat's after-sale — its amount, not the push's, which names none — and
/// ours reads REFUNDED. Nothing pages. It used to stay PAID, nothing refunded, and shippable.
#[tokio::test]
async fn a_refund_in_full_whose_aftersale_push_was_lost_is_read_back_from_wechat() {
    let (r, paged) = stack(&[("WX_FUND_TYPE", "1")]).await;
    let c = Client::new(&r);
    let (token, no) = ordered(&r, &c, "sara", 1).await;
    c.control("pay", &json!({"out_order_id": no})).await;
    eventually("the order paid", WAIT, || async {
        c.status(&token, &no).await["status"] == "PAID"
    })
    .await;
    let (id, wx) = applied_at_wechat(&r, &c, &token, &no).await;
    c.control("aftersale", &json!({"action": "platform_refund", "aftersale_id": wx, "push": false, "order_push": true})).await;
    eventually("the order refunded", WAIT, || async {
        c.status(&token, &no).await["status"] == "REFUNDED"
    })
    .await;
    let order = c.status(&token, &no).await;
    assert_eq!(order["refunded_fee"], order["total_fee"], "{order}");
    let (_, list) = c
        .post(
            "/fn/aftersaleSync",
            Some(&token),
            &json!({"action": "list", "out_trade_no": no}),
        )
        .await;
    let ours = list["aftersales"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["aftersale_id"] == id.as_str())
        .cloned()
        .unwrap();
    assert_eq!(ours["status"], "REFUNDED", "{list}");
    assert_eq!(paged(), 0);
    assert!(mismatches(&c).await.is_empty());
}

/// An order whose money we hold (fund_type 0) that WeChat says went back in full, while no
/// refund of ours accounts for it (here WeChat's staff marked the after-sale refunded, the
/// merchant never approved it): nothing is recorded — no amount is made up from the push —
/// and a person is paged once, the case kept as an `order_event_mismatch` event.
#[tokio::test]
async fn a_refund_in_full_our_books_do_not_show_pages_a_person() {
    let (r, paged) = stack(&[]).await;
    let c = Client::new(&r);
    let (token, no) = paid_and_synced(&r, &c, "tess").await;
    let (_, wx) = applied_at_wechat(&r, &c, &token, &no).await;
    c.control("aftersale", &json!({"action": "platform_refund", "aftersale_id": wx, "push": false, "order_push": true})).await;
    eventually("a person paged", WAIT, || async { paged() == 1 }).await;
    let order = c.status(&token, &no).await;
    assert_eq!(order["status"], "PAID", "{order}");
    assert_eq!(order["refunded_fee"], 0, "{order}");
    let kept = mismatches(&c).await;
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0]["body"]["refunded"], 0, "{kept:?}");

    let ts = r.app.clock.now_secs();
    assert_eq!(
        push(&r, "open_product_order_refund", &no, ts + 1, "n-refund-2").await,
        200
    );
    assert_eq!(paged(), 1, "paged once");
}

/// The ordinary full refund of an order whose money we hold: the merchant approves, our
/// WeChat Pay refund goes out, WeChat's after-sale is accepted and its order reads 200, and
/// `open_product_order_refund` arrives — possibly before our refund's notification. Our
/// refund under way accounts for it: nothing pages, and the order ends REFUNDED. A refund
/// push WeChat's order does not bear out (a paid order, not refunded there) changes nothing.
#[tokio::test]
async fn an_ordinary_full_refund_and_a_forged_refund_push_page_nobody() {
    let (r, paged) = stack(&[]).await;
    let c = Client::new(&r);
    let (token, no) = paid_and_synced(&r, &c, "ugo").await;
    let (id, _) = applied_at_wechat(&r, &c, &token, &no).await;
    let (s, v) = c
        .admin(
            "/admin/aftersaleSync",
            &json!({"action": "approve", "aftersale_id": id}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    eventually("the order refunded", WAIT, || async {
        c.status(&token, &no).await["status"] == "REFUNDED"
    })
    .await;
    eventually("WeChat's order refunded in full", WAIT, || async {
        wx_status(&r, &no).await == 200
    })
    .await;
    eventually("its refund push taken in", WAIT, || async {
        r.sandbox
            .pushed_events()
            .iter()
            .any(|e| e["Event"] == "open_product_order_refund")
    })
    .await;

    let (other_token, other) = paid_and_synced(&r, &c, "vick").await;
    let ts = r.app.clock.now_secs();
    assert_eq!(
        push(&r, "open_product_order_refund", &other, ts, "n-forged").await,
        200
    );
    let order = c.status(&other_token, &other).await;
    assert_eq!(order["status"], "PAID", "{order}");
    // Given the handler time to act on the sandbox's push too.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(paged(), 0);
    assert!(mismatches(&c).await.is_empty());
}

/// Events of `source` kept for a person.
async fn events_of(c: &Client, source: &str) -> Vec<Value> {
    let (s, v) = c
        .admin(
            "/admin/orderSync",
            &json!({"action": "events", "source": source}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    v["events"].as_array().unwrap().clone()
}

/// An order whose money we hold (fund_type 0): the merchant approves the user's refund of all
/// of it, WeChat's after-sale is accepted (its order reads refunded in full, 200, and
/// `open_product_order_refund` is pushed), but WeChat Pay does not pay it out — it closes the
/// refund (`REFUNDCLOSE`: the after-sale REFUND_FAILED, a `refund_closed` event telling the
/// merchant to approve again) or cannot pay it into the user's account (`CHANGE`:
/// REFUND_ABNORMAL, a `refund_abnormal` event). That pages a person once, there. The refund
/// push, however often it comes, counts such a refund as ours and pages nothing more. It used
/// to count only REFUNDING refunds as accounted for: the push paged again (CHANGE: twice in
/// all) with an `order_event_mismatch` telling the merchant to look for a refund made
/// elsewhere; and a closed refund paged nobody but through that push.
async fn a_refund_push_does_not_page_again_for_a_refund_that_paged(outcome: &str) {
    let (r, paged) = stack(&[]).await;
    let c = Client::new(&r);
    let user = if outcome == "CHANGE" { "yann" } else { "zoe" };
    let (token, no) = paid_and_synced(&r, &c, user).await;
    let (id, _) = applied_at_wechat(&r, &c, &token, &no).await;
    c.control("refund_outcome", &json!({"status": outcome, "count": 1}))
        .await;
    // The refund reaches WeChat Pay after the approval reached the after-sale
    // (`ecaftersale/acceptrefund`), as it mostly does: a refund outcome first would leave
    // nothing to accept there.
    c.fault(json!({"path": "secapi/pay/refund", "mode": "delay", "delay_ms": 500, "count": 1}))
        .await;
    let (s, v) = c
        .admin(
            "/admin/aftersaleSync",
            &json!({"action": "approve", "aftersale_id": id}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let held = if outcome == "CHANGE" {
        "REFUND_ABNORMAL"
    } else {
        "REFUND_FAILED"
    };
    let status = || async {
        let (_, list) = c
            .post(
                "/fn/aftersaleSync",
                Some(&token),
                &json!({"action": "list", "out_trade_no": no}),
            )
            .await;
        list["aftersales"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["aftersale_id"] == id.as_str())
            .map(|a| a["status"].clone())
            .unwrap()
    };
    eventually(held, WAIT, || async { status().await == held }).await;
    eventually("WeChat's order refunded in full", WAIT, || async {
        wx_status(&r, &no).await == 200
    })
    .await;
    eventually("its refund push taken in", WAIT, || async {
        r.sandbox
            .deliveries()
            .iter()
            .any(|d| d["key"] == "open_product_order_refund" && d["acked"] == true)
    })
    .await;
    // Pushed again after our refund failed, whenever the first one came.
    let ts = r.app.clock.now_secs();
    assert_eq!(
        push(&r, "open_product_order_refund", &no, ts + 1, "n-after").await,
        200
    );
    assert_eq!(
        push(&r, "open_product_order_refund", &no, ts + 2, "n-after-2").await,
        200
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let source = if outcome == "CHANGE" {
        "refund_abnormal"
    } else {
        "refund_closed"
    };
    let kept = events_of(&c, source).await;
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(
        mismatches(&c).await.is_empty(),
        "{:?}",
        mismatches(&c).await
    );
    assert_eq!(paged(), 1, "paged once, for the refund itself");
    assert_eq!(status().await, held);
    let order = c.status(&token, &no).await;
    assert_eq!(order["status"], "PAID", "nothing refunded: {order}");
    assert_eq!(order["refunded_fee"], 0, "{order}");
}

#[tokio::test]
async fn a_refund_push_does_not_page_again_for_a_refund_wechat_closed() {
    a_refund_push_does_not_page_again_for_a_refund_that_paged("REFUNDCLOSE").await;
}

#[tokio::test]
async fn a_refund_push_does_not_page_again_for_an_abnormal_refund() {
    a_refund_push_does_not_page_again_for_a_refund_that_paged("CHANGE").await;
}

/// Our own close coming back: the user closes an unpaid order in the mini program, the outbox
/// cancels the component order (`shop/order/pay` with a cancel action), and WeChat — the
/// sandbox, at least; UNVERIFIED that WeChat pushes for the merchant's own cancels — pushes
/// `open_product_order_cancel`. Ours is closed already: its stock is given back once, nothing
/// pages, nothing is dead-lettered.
#[tokio::test]
async fn our_own_close_pushed_back_changes_nothing() {
    let (r, paged) = stack(&[]).await;
    let c = Client::new(&r);
    let before = c.stock().await;
    let (token, no) = ordered(&r, &c, "wade", 2).await;
    let (s, v) = c
        .post(
            "/fn/queryOrder",
            Some(&token),
            &json!({"out_trade_no": no, "action": "close"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["order"]["status"], "CLOSED", "{v}");
    eventually("the cancel pushed back", WAIT, || async {
        r.sandbox.pushed_events().iter().any(|e| {
            e["Event"] == "open_product_order_cancel" && e["order_info"]["out_order_id"] == no
        })
    })
    .await;
    eventually("the push taken in", WAIT, || async {
        r.sandbox
            .deliveries()
            .iter()
            .any(|d| d["key"] == "open_product_order_cancel" && d["acked"] == true)
    })
    .await;
    assert_eq!(wx_status(&r, &no).await, 250);
    assert_eq!(c.status(&token, &no).await["status"], "CLOSED");
    assert_eq!(c.stock().await, before, "its stock given back once");
    assert_eq!(paged(), 0);
    assert!(c.dead_letters().await.is_empty());
}
