#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! The rules a merchant and a user rely on in shipping and receipt, end to end over HTTP:
//! what `POST /admin/orderSync` `ship` answers, and that what our order says of the parcel
//! is what WeChat's order centre shows.

use serde_json::{json, Value};
use std::time::Duration;
use wxlocal::gateway::Running;

#[path = "reliability_support.rs"]
mod support;
use support::{eventually, stack_with, wx_order, Client};

const WAIT: Duration = Duration::from_secs(20);

/// `user` buys one tea and pays at the sandbox's cashier; returns once WeChat's component
/// order reads paid (20): (token, out_trade_no).
async fn paid_and_synced(r: &Running, c: &Client, user: &str) -> (String, String) {
    let (token, _) = c.login(user).await;
    let order = c.order_tea(&token, 1).await;
    let no = order["out_trade_no"].as_str().unwrap().to_owned();
    c.pay_at_sandbox(&no).await;
    eventually("WeChat's component order paid", WAIT, || async {
        wx_order(r, &no).await.status == 20
    })
    .await;
    (token, no)
}

/// `ship` of `no` with this courier and waybill: (HTTP status, answer).
async fn ship(c: &Client, no: &str, delivery_id: &str, waybill_id: &str) -> (u16, Value) {
    c.admin(
        "/admin/orderSync",
        &json!({"action": "ship", "out_trade_no": no, "delivery_id": delivery_id,
                "waybill_id": waybill_id}),
    )
    .await
}

/// The parcels WeChat's order holds, as (courier, waybill).
async fn parcels_at_wechat(r: &Running, no: &str) -> Vec<(String, String)> {
    wx_order(r, no)
        .await
        .order_detail
        .delivery_detail
        .map(|d| d.delivery_list)
        .unwrap_or_default()
        .into_iter()
        .map(|p| (p.delivery_id, p.waybill_id))
        .collect()
}

/// `delivery/send` calls the sandbox received for order `no`.
fn sends_of(r: &Running, no: &str) -> usize {
    r.sandbox
        .calls("shop/delivery/send")
        .into_iter()
        .filter(|v| v["out_order_id"] == no)
        .count()
}

/// GIVEN a paid order the merchant ships with a mistyped waybill, and WeChat takes the
/// shipment but its answer to `delivery/send` is lost (so the send waits for its retry)
/// WHEN the merchant corrects the waybill by shipping again
/// THEN the correction is refused (409 `ORDER_NOT_SHIPPABLE`, naming the waybill WeChat holds
/// and saying it cannot be changed there), our order keeps the waybill WeChat's order centre
/// shows the user, and the waiting send settles without a dead letter.
///
/// It used to answer 200 with the new waybill: the user's order in the mini program showed
/// one parcel and WeChat's order centre another, for good, and the re-sent `delivery/send`
/// (refused, WeChat holding another waybill) was dead-lettered for a person.
#[tokio::test]
async fn a_correction_after_wechat_took_the_shipment_unheard_is_refused() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (token, no) = paid_and_synced(&r, &c, "delia").await;

    c.fault(json!({"path": "shop/delivery/send", "mode": "lost", "count": 1}))
        .await;
    let (s, v) = ship(&c, &no, "SF", "SF-TYPO-1").await;
    assert_eq!(s, 200, "{v}");
    eventually("WeChat took the shipment", WAIT, || async {
        wx_order(&r, &no).await.status == 30
    })
    .await;
    assert_eq!(
        parcels_at_wechat(&r, &no).await,
        vec![("SF".to_owned(), "SF-TYPO-1".to_owned())]
    );
    // Its answer lost, the send waits for its retry (the stack's clock is all but still).
    eventually("the lost send to wait for its retry", WAIT, || async {
        sends_of(&r, &no) == 1
    })
    .await;

    let (s, v) = ship(&c, &no, "YTO", "YT0000042").await;
    assert_eq!(s, 409, "WeChat holds the shipment already: {v}");
    assert_eq!(v["code"], "ORDER_NOT_SHIPPABLE", "{v}");
    let message = v["message"].as_str().unwrap();
    assert!(
        message.contains("SF-TYPO-1"),
        "names the waybill WeChat holds: {v}"
    );

    let order = c.status(&token, &no).await;
    assert_eq!(order["status"], "SHIPPED", "{order}");
    assert_eq!(
        (
            &order["delivery"]["delivery_id"],
            &order["delivery"]["waybill_id"]
        ),
        (&json!("SF"), &json!("SF-TYPO-1")),
        "our order shows the parcel WeChat shows: {order}"
    );

    // The waiting send runs again: WeChat holds our waybill, so it is done.
    for _ in 0..20 {
        r.app.clock.advance(60_000);
        let (s, drained) = c
            .admin("/admin/orderSync", &json!({"action": "drain"}))
            .await;
        assert_eq!(s, 200, "{drained}");
        if sends_of(&r, &no) >= 2 {
            break;
        }
    }
    assert!(sends_of(&r, &no) >= 2, "the lost send was retried");
    let pending = || async {
        let no = wxshop::domain::OutTradeNo::parse(no.clone()).unwrap();
        let subject = wxshop::outbox::Task::DeliverySend { out_trade_no: no }.subject();
        wxshop::outbox::entries_for(r.app.store.as_ref(), &subject, 20)
            .await
            .unwrap()
            .len()
    };
    eventually("the send settled", WAIT, || async { pending().await == 0 }).await;
    let dead = c.dead_letters().await;
    assert!(dead.is_empty(), "{dead:?}");
    assert_eq!(
        parcels_at_wechat(&r, &no).await,
        vec![("SF".to_owned(), "SF-TYPO-1".to_owned())]
    );
}

/// GIVEN a paid order shipped with a waybill WeChat refuses (`delivery/send` dead-lettered,
/// WeChat's order still awaiting shipment), and the user, seeing SHIPPED in the mini
/// program, confirms receipt once the parcel came
/// WHEN the merchant, paged by the dead letter, corrects the waybill by shipping again
/// THEN the correction is taken (200, the order RECEIVED with the new waybill), the shipment
/// reaches WeChat with it, and the user's receipt follows there (WeChat's order completed,
/// 100), with no dead letter left.
///
/// It used to refuse the correction (409 "order is Received; cannot correct the shipment"):
/// a replay could only resend the refused waybill, so WeChat's order stayed unshipped for
/// good and the receipt sync, waiting for the shipment, was dead-lettered too.
#[tokio::test]
async fn a_refused_shipment_is_corrected_after_the_user_confirmed_receipt() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (token, no) = paid_and_synced(&r, &c, "edgar").await;

    c.fault(json!({"path": "shop/delivery/send", "mode": "errcode", "errcode": 47001, "count": 1}))
        .await;
    let (s, v) = ship(&c, &no, "SF", "SF-BAD-1").await;
    assert_eq!(s, 200, "{v}");
    eventually("the refused send dead-lettered", WAIT, || async {
        c.dead_letters()
            .await
            .iter()
            .any(|d| d["task"]["type"] == "delivery_send" && d["task"]["out_trade_no"] == no)
    })
    .await;
    assert_eq!(wx_order(&r, &no).await.status, 20, "WeChat took nothing");

    let (s, v) = c
        .post(
            "/fn/queryOrder",
            Some(&token),
            &json!({"out_trade_no": no, "action": "confirm"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["order"]["status"], "RECEIVED", "{v}");

    let (s, v) = ship(&c, &no, "YTO", "YT0000077").await;
    assert_eq!(s, 200, "the correction: {v}");
    assert_eq!(v["order"]["status"], "RECEIVED", "{v}");
    assert_eq!(v["order"]["delivery"]["waybill_id"], "YT0000077", "{v}");

    // The corrected send and the receipt reach WeChat (the receipt retried once the
    // shipment is there).
    for _ in 0..40 {
        if wx_order(&r, &no).await.status == 100 {
            break;
        }
        r.app.clock.advance(60_000);
        let (s, drained) = c
            .admin("/admin/orderSync", &json!({"action": "drain"}))
            .await;
        assert_eq!(s, 200, "{drained}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        wx_order(&r, &no).await.status,
        100,
        "WeChat's order shipped and received"
    );
    assert_eq!(
        parcels_at_wechat(&r, &no).await,
        vec![("YTO".to_owned(), "YT0000077".to_owned())]
    );
    let dead = c.dead_letters().await;
    assert!(dead.is_empty(), "{dead:?}");
    assert_eq!(c.status(&token, &no).await["status"], "RECEIVED");
}

/// GIVEN a shipment whose `delivery/send` answer was lost (WeChat took it), and WeChat's
/// order unreadable for now (`shop/order/get` failing)
/// WHEN the merchant corrects the waybill
/// THEN nothing is decided on a guess: 503 `WECHAT_UNAVAILABLE` (retry shortly), the order
/// keeps its waybill; asked again once WeChat answers, the correction is refused as WeChat
/// holds the first waybill (409 naming it).
#[tokio::test]
async fn a_correction_waits_for_wechat_to_say_what_it_holds() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (token, no) = paid_and_synced(&r, &c, "dora").await;
    c.fault(json!({"path": "shop/delivery/send", "mode": "lost", "count": 1}))
        .await;
    let (s, v) = ship(&c, &no, "SF", "SF-TYPO-2").await;
    assert_eq!(s, 200, "{v}");
    eventually("WeChat took the shipment", WAIT, || async {
        wx_order(&r, &no).await.status == 30
    })
    .await;

    c.fault(json!({"path": "shop/order/get", "mode": "http500", "count": 20}))
        .await;
    let (s, v) = ship(&c, &no, "YTO", "YT0000043").await;
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["code"], "WECHAT_UNAVAILABLE", "{v}");
    c.clear_faults().await;
    assert_eq!(
        c.status(&token, &no).await["delivery"]["waybill_id"],
        "SF-TYPO-2",
        "nothing changed"
    );

    let (s, v) = ship(&c, &no, "YTO", "YT0000043").await;
    assert_eq!(s, 409, "{v}");
    assert!(v["message"].as_str().unwrap().contains("SF-TYPO-2"), "{v}");
    assert_eq!(
        c.status(&token, &no).await["delivery"]["waybill_id"],
        "SF-TYPO-2"
    );
}
