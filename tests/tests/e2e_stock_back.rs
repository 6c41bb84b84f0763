#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! Stock back on refunds, end to end over HTTP: the units an after-sale refunded in full,
//! of goods never shipped (or returned), go back on sale once the refund succeeded — once,
//! however often the refund is reported; nothing for a refund only after shipping, a price
//! adjustment, or a refund WeChat Pay closed.

use serde_json::{json, Value};
use std::time::Duration;
use wxlocal::gateway::Running;

#[path = "reliability_support.rs"]
mod support;
use support::{eventually, run_schedule, stack_with, Client};

/// Long enough for a loaded machine.
const WAIT: Duration = Duration::from_secs(30);
/// The seeded tea's price, fen.
const TEA: i64 = 1990;

/// `user` buys `qty` tea (stock set to `stock` first) and pays at the sandbox; returns once
/// the order reads PAID: (token, out_trade_no).
async fn paid_tea(c: &Client, user: &str, stock: u64, qty: u32) -> (String, String) {
    c.set_stock(stock).await;
    let (token, _) = c.login(user).await;
    let order = c.order_tea(&token, qty).await;
    let no = order["out_trade_no"].as_str().unwrap().to_owned();
    c.pay_at_sandbox(&no).await;
    eventually("the order to read PAID", WAIT, || async {
        c.status(&token, &no).await["status"] == "PAID"
    })
    .await;
    assert_eq!(c.stock().await, stock as i64 - i64::from(qty));
    (token, no)
}

/// The user applies (`extra`: amount, line, type) and the merchant approves.
async fn refund_approved(c: &Client, token: &str, no: &str, extra: Value) -> String {
    let id = c.apply(token, no, extra).await;
    c.approve(&id).await;
    id
}

/// Returns once after-sale `id` reads `want`.
async fn until_status(c: &Client, token: &str, no: &str, id: &str, want: &str) {
    eventually(&format!("after-sale {id} to read {want}"), WAIT, || async {
        c.my_aftersale(token, no, id).await["status"] == want
    })
    .await;
}

/// Returns once the tea's stock reads `want`.
async fn until_stock(c: &Client, want: i64) {
    eventually(&format!("the stock to read {want}"), WAIT, || async {
        c.stock().await == want
    })
    .await;
}

/// The `stock_back` event of after-sale `id`, as the merchant lists events, if its units
/// went back.
async fn stock_back_event(c: &Client, id: &str) -> Option<Value> {
    let (s, v) = c
        .admin(
            "/admin/orderSync",
            &json!({"action": "events", "source": "stock_back"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let event = v["events"]
        .as_array()?
        .iter()
        .find(|e| e["key"] == id)?
        .clone();
    Some(match &event["body"] {
        Value::String(b) => serde_json::from_str(b).unwrap(),
        other => other.clone(),
    })
}

/// After the schedule ran twice (every due outbox entry done), the stock still reads `want`
/// and nothing about after-sale `id` waits to put stock back.
async fn settled_at(r: &Running, c: &Client, id: &str, want: i64) {
    run_schedule(r).await;
    run_schedule(r).await;
    let pending = wxshop::outbox::pending_for(r.app.store.as_ref(), &format!("stock:{id}"), 10)
        .await
        .unwrap();
    assert!(pending.is_empty(), "{pending:?}");
    assert_eq!(c.stock().await, want);
    let dead = c.dead_letters().await;
    assert!(dead.is_empty(), "{dead:?}");
}

/// WeChat Pay's signed SUCCESS notification of after-sale `id`'s refund (`fee` of `total`),
/// as it sends it again and again.
async fn success_notification(r: &Running, no: &str, id: &str, total: i64, fee: i64) -> String {
    use wxshop::domain::{AfterSaleId, Fen, OutTradeNo};
    let store = r.app.store.as_ref();
    let a = wxshop::store::repo::get_aftersale(store, &AfterSaleId::parse(id.to_owned()).unwrap())
        .await
        .unwrap()
        .unwrap()
        .value;
    let out_refund_no = a.out_refund_no.unwrap();
    let refund = wxshop::store::repo::get_refund(store, &out_refund_no)
        .await
        .unwrap()
        .unwrap()
        .value;
    let order = wxshop::store::repo::get_order(store, &OutTradeNo::parse(no.to_owned()).unwrap())
        .await
        .unwrap()
        .unwrap()
        .value;
    let cfg = &r.app.config;
    wxshop::pay::refund_notify::build_refund_notification(
        &wxshop::pay::refund_notify::RefundNotificationSpec {
            appid: cfg.appid.clone(),
            mch_id: cfg.mch_id.clone(),
            sub_appid: None,
            sub_mch_id: None,
            out_trade_no: OutTradeNo::parse(no.to_owned()).unwrap(),
            out_refund_no,
            transaction_id: order.transaction_id.unwrap(),
            refund_id: refund.refund_id.unwrap(),
            total_fee: Fen::new(total).unwrap(),
            refund_fee: Fen::new(fee).unwrap(),
            success_time_ms: Some(1_700_000_000_000),
            refund_status: wxshop::pay::types::RefundStatus::Success,
        },
        cfg.api_key(),
    )
}

/// The merchant ships `no`.
async fn ship(c: &Client, no: &str) {
    let (s, v) = c
        .admin(
            "/admin/orderSync",
            &json!({"action": "ship", "out_trade_no": no, "delivery_id": "SF",
                    "waybill_id": "SF1000"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
}

/// A paid order refunded in full before it was shipped (the user changed their mind) puts its
/// 2 units back on sale: 3 left → 5. Once: WeChat Pay's notification replayed twice, the
/// schedule run again, and the task itself run a second time (a worker whose lease ran out)
/// add nothing more. Before, refunds never gave stock back: the 2 units stayed sold for good,
/// the stock read 3 (a shop with a few units showed SOLD_OUT while the tea sat in the
/// warehouse).
#[tokio::test]
async fn a_full_refund_before_shipping_puts_the_units_back_once() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (token, no) = paid_tea(&c, "ann", 5, 2).await;
    let id = refund_approved(&c, &token, &no, json!({"reason": "changed my mind"})).await;
    until_status(&c, &token, &no, &id, "REFUNDED").await;
    until_stock(&c, 5).await;
    assert_eq!(c.status(&token, &no).await["status"], "REFUNDED");

    // WeChat Pay tells it again; the schedule runs again.
    let again = success_notification(&r, &no, &id, 2 * TEA, 2 * TEA).await;
    for _ in 0..2 {
        let (s, reply) = c.raw("/callbacks/refund", again.clone()).await;
        assert_eq!(
            (s, support::return_code(&reply)),
            (200, "SUCCESS"),
            "{reply}"
        );
    }
    settled_at(&r, &c, &id, 5).await;

    // The task again, as a worker whose lease ran out would repeat it: nothing more.
    let lines = vec![wxshop::domain::AfterSaleLine {
        product_id: wxshop::domain::ProductId::parse("tea").unwrap(),
        sku_id: wxshop::domain::SkuId::parse("tea-250g").unwrap(),
        quantity: 2,
    }];
    let task = wxshop::outbox::Task::StockBack {
        aftersale_id: wxshop::domain::AfterSaleId::parse(id.clone()).unwrap(),
        lines,
    };
    let now = r.app.clock.now_ms();
    wxshop::outbox::enqueue(
        r.app.store.as_ref(),
        &wxshop::outbox::OutboxEntry::new(task, now),
    )
    .await
    .unwrap();
    settled_at(&r, &c, &id, 5).await;
    let event = stock_back_event(&c, &id).await.expect("a stock_back event");
    assert_eq!(event["back"][0]["quantity"], 2, "{event}");
}

/// Part of a line's quantity refunded before shipping (1 of 3, its whole price) puts that
/// many back: 7 → 4 ordered → 5.
#[tokio::test]
async fn a_partial_quantity_refund_puts_that_many_back() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (token, no) = paid_tea(&c, "bob", 7, 3).await;
    let id = refund_approved(
        &c,
        &token,
        &no,
        json!({"product_id": "tea", "sku_id": "tea-250g", "quantity": 1}),
    )
    .await;
    until_status(&c, &token, &no, &id, "REFUNDED").await;
    assert_eq!(c.my_aftersale(&token, &no, &id).await["amount"], TEA);
    until_stock(&c, 5).await;
    settled_at(&r, &c, &id, 5).await;
    assert_eq!(c.status(&token, &no).await["status"], "PAID");
    let event = stock_back_event(&c, &id).await.expect("a stock_back event");
    assert_eq!(event["back"][0]["quantity"], 1, "{event}");
}

/// A refund only after shipping (the user keeps, or lost, the goods) puts nothing back.
#[tokio::test]
async fn a_refund_only_after_shipping_puts_nothing_back() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (token, no) = paid_tea(&c, "cat", 5, 2).await;
    ship(&c, &no).await;
    let id = refund_approved(&c, &token, &no, json!({"reason": "never came"})).await;
    until_status(&c, &token, &no, &id, "REFUNDED").await;
    settled_at(&r, &c, &id, 3).await;
    assert!(stock_back_event(&c, &id).await.is_none());
}

/// A price adjustment before shipping (part of a unit's price back) puts nothing back: the
/// goods are still to be shipped.
#[tokio::test]
async fn a_price_adjustment_puts_nothing_back() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (token, no) = paid_tea(&c, "dan", 5, 2).await;
    let id = refund_approved(&c, &token, &no, json!({"amount": 500, "reason": "promo"})).await;
    until_status(&c, &token, &no, &id, "REFUNDED").await;
    settled_at(&r, &c, &id, 3).await;
    assert!(stock_back_event(&c, &id).await.is_none());
    assert_eq!(c.status(&token, &no).await["status"], "PAID");
}

/// A refund WeChat Pay closed (`REFUNDCLOSE`) moved no money: nothing back, the after-sale
/// REFUND_FAILED. Approved again, it refunds, and only then are the units back.
#[tokio::test]
async fn a_closed_refund_puts_nothing_back_until_it_succeeds() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (token, no) = paid_tea(&c, "eve", 5, 2).await;
    c.control("refund_outcome", &json!({"status": "REFUNDCLOSE"}))
        .await;
    let id = refund_approved(&c, &token, &no, json!({})).await;
    until_status(&c, &token, &no, &id, "REFUND_FAILED").await;
    settled_at(&r, &c, &id, 3).await;
    assert!(stock_back_event(&c, &id).await.is_none());

    // Approved again, under a new refund number: refunded (WeChat Pay takes one refund of an
    // order a minute, so the clocks move on and the schedule runs), and only now back.
    c.approve(&id).await;
    let both = support::InProcess::new(&r);
    eventually("the refund approved again to succeed", WAIT, || async {
        both.advance_both(61_000).await;
        run_schedule(&r).await;
        c.my_aftersale(&token, &no, &id).await["status"] == "REFUNDED"
    })
    .await;
    until_stock(&c, 5).await;
    settled_at(&r, &c, &id, 5).await;
}

/// A return and refund after shipping puts the units back once refunded: the goods came
/// back (the user sent them, the merchant approved the refund on their arrival).
#[tokio::test]
async fn a_return_after_shipping_puts_the_units_back() {
    let address = json!({"receiver_name": "Returns desk", "detailed_address": "8 Warehouse Road",
                         "tel_number": "021-5555-0101"});
    let r = stack_with(&[("WX_RETURN_ADDRESS", &address.to_string())]).await;
    let c = Client::new(&r);
    let (token, no) = paid_tea(&c, "fay", 5, 2).await;
    ship(&c, &no).await;
    let id = c
        .apply(&token, &no, json!({"type": "return", "reason": "too big"}))
        .await;
    c.approve(&id).await;
    until_status(&c, &token, &no, &id, "AWAITING_RETURN").await;
    eventually("the parcel back recorded", WAIT, || async {
        let (s, _) = c
            .post(
                "/fn/aftersaleSync",
                Some(&token),
                &json!({"action": "return", "aftersale_id": id, "delivery_id": "SF",
                        "delivery_name": "顺丰速运", "waybill_id": "SF2000"}),
            )
            .await;
        s == 200
    })
    .await;
    until_status(&c, &token, &no, &id, "RETURNING").await;
    assert_eq!(c.stock().await, 3, "nothing back before the refund");
    c.approve(&id).await;
    until_status(&c, &token, &no, &id, "REFUNDED").await;
    until_stock(&c, 5).await;
    settled_at(&r, &c, &id, 5).await;
}
