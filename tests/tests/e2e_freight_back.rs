#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! The freight of an order of several items can be given back, end to end over HTTP: the
//! after-sale that claims the order's last unclaimed units keeps the order's own bound
//! (freight included), as an order's only item does; earlier lines keep their line's bound.
//! Before, every line was bounded by its price, an application without a line was refused
//! (`LINE_REQUIRED`) on a trading-component order, so the freight of such an order refunded
//! line by line could not be asked for: the order never became REFUNDED, `ship` answered
//! `NOTHING_TO_SHIP` for ever, and only a refund by hand in the merchant platform helped.
//!
//! `unifiedOrder` charges no freight yet (`freight` 0), so an order with freight is made by
//! giving a paid order's stored record freight as a freight-charging version would write it
//! (as `e2e_parcel_rules` does): the same total, part of it freight (the tea's unit price
//! less it). Everything else goes through the routes.

use serde_json::{json, Value};
use std::time::Duration;
use wxshop::domain::OutTradeNo;
use wxshop::store::repo;

#[path = "reliability_support.rs"]
mod support;
use support::{eventually, stack_with, InProcess};

/// Long enough for a loaded machine.
const WAIT: Duration = Duration::from_secs(30);

/// The tea (1,990) is 1,490 of goods and 500 of freight here.
const FREIGHT: i64 = support::TWO_LINES_FREIGHT;
const TEA: i64 = 1990 - FREIGHT;
/// Two cups at 500.
const CUPS: i64 = 2 * 500;
const TOTAL: i64 = support::TWO_LINES_TOTAL;

/// The user's application for an after-sale of `no` (`extra`: line, amount, reason):
/// (HTTP status, answer).
async fn apply(c: &InProcess<'_>, token: &str, no: &str, extra: Value) -> (u16, Value) {
    let mut body = json!({"action": "apply", "out_trade_no": no});
    if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
        b.extend(e);
    }
    c.post("/fn/aftersaleSync", Some(token), &body).await
}

fn tea_line() -> Value {
    json!({"product_id": "tea", "sku_id": "tea-250g", "reason": "not wanted"})
}

fn cup_line() -> Value {
    json!({"product_id": "cup", "sku_id": "cup-1", "reason": "not wanted"})
}

/// `extra` with `amount`.
fn asking(mut extra: Value, amount: i64) -> Value {
    extra["amount"] = json!(amount);
    extra
}

/// The after-sales and the amounts held on the order `no` stand as they were: `count`
/// after-sales, holding `held` fen.
async fn nothing_more_stored(c: &InProcess<'_>, no: &str, count: usize, held: i64) {
    assert_eq!(c.admin_aftersales(no).await.len(), count);
    let order = repo::get_order(
        c.r.app.store.as_ref(),
        &OutTradeNo::parse(no.to_owned()).unwrap(),
    )
    .await
    .unwrap()
    .unwrap()
    .value;
    let holds: i64 = order.refund_claims.values().map(|f| f.get()).sum();
    assert_eq!(holds, held, "{:?}", order.refund_claims);
}

/// The stock of SKU `sku_id` of product `product_id`, as the merchant reads it.
async fn stock_of(c: &InProcess<'_>, product_id: &str, sku_id: &str) -> i64 {
    let (s, p) = c
        .admin(
            "/admin/catalogSync",
            &json!({"action": "get", "product_id": product_id}),
        )
        .await;
    assert_eq!(s, 200, "{p}");
    p["product"]["skus"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["sku_id"] == sku_id)
        .and_then(|k| k["stock"].as_i64())
        .unwrap()
}

/// GIVEN a paid, unshipped trading-component order of two items (a tea, two cups) with freight
/// WHEN the user applies for the tea, then for the cups without an amount, and the merchant
/// approves both
/// THEN the tea's after-sale is bounded by its price (asking for it and the freight is 400
/// `AMOUNT_OVER_LINE`, nothing stored), the cups' — the order's last unclaimed units — asks by
/// default for their price and the freight (more is 409 `NOT_REFUNDABLE`, nothing stored),
/// WeChat takes it (`ecaftersale/add` with that `orderamt`), both are refunded by WeChat Pay,
/// the refunds sum to `total_fee`, the order is REFUNDED (`ship` refuses it as such, not
/// `NOTHING_TO_SHIP`), and every unit is back on sale.
///
/// Before, the cups were bounded by their price (1,000): the freight could not be asked for
/// and the order stayed PAID with 500 fen refundable and nothing to ship.
#[tokio::test]
async fn the_last_line_of_an_order_takes_its_freight_back() {
    let r = stack_with(&[]).await;
    let c = InProcess::new(&r);
    let (token, no) = support::two_lines_with_freight(&r, &c, "frida", true).await;
    let (tea_stock, cup_stock) = (
        stock_of(&c, "tea", "tea-250g").await,
        stock_of(&c, "cup", "cup-1").await,
    );

    // The tea first: while the cups are unclaimed it cannot take the freight.
    let (s, v) = apply(&c, &token, &no, asking(tea_line(), TEA + FREIGHT)).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (400, Some("AMOUNT_OVER_LINE")),
        "{v}"
    );
    assert!(
        v["message"].as_str().unwrap().contains(&TEA.to_string()),
        "{v}"
    );
    nothing_more_stored(&c, &no, 0, 0).await;
    let (s, v) = apply(&c, &token, &no, tea_line()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["aftersale"]["amount"], TEA,
        "the tea's price by default: {v}"
    );
    let tea_id = v["aftersale"]["aftersale_id"].as_str().unwrap().to_owned();

    // The cups are the last units: their price and the freight, and no more.
    let (s, v) = apply(&c, &token, &no, asking(cup_line(), CUPS + FREIGHT + 1)).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (409, Some("NOT_REFUNDABLE")),
        "{v}"
    );
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains(&(CUPS + FREIGHT).to_string()),
        "says what can still be asked for: {v}"
    );
    nothing_more_stored(&c, &no, 1, TEA).await;
    let (s, v) = apply(&c, &token, &no, cup_line()).await;
    assert_eq!(s, 200, "{v}");
    let cups = v["aftersale"].clone();
    assert_eq!(
        (&cups["amount"], &cups["quantity"]),
        (&json!(CUPS + FREIGHT), &json!(2)),
        "the cups' price and the freight by default: {cups}"
    );
    let cups_id = cups["aftersale_id"].as_str().unwrap().to_owned();

    // WeChat takes the cups' after-sale for that amount.
    eventually("both after-sales at WeChat", WAIT, || async {
        r.sandbox.calls("shop/ecaftersale/add").len() >= 2
    })
    .await;
    let adds = r.sandbox.calls("shop/ecaftersale/add");
    let cup_add = adds
        .iter()
        .find(|a| a["product_info"]["out_product_id"] == "cup")
        .unwrap();
    assert_eq!(cup_add["orderamt"], CUPS + FREIGHT, "{adds:?}");

    // Both approved and refunded (WeChat Pay takes one refund of an order a minute).
    c.approve(&tea_id).await;
    c.until_refunded(&token, &no, &tea_id).await;
    r.sandbox.clock().advance(60_000);
    c.approve(&cups_id).await;
    c.until_refunded(&token, &no, &cups_id).await;
    eventually("the order REFUNDED", WAIT, || async {
        c.status(&token, &no).await["status"] == "REFUNDED"
    })
    .await;
    let order = c.status(&token, &no).await;
    assert_eq!(order["refunded_fee"], TOTAL, "{order}");
    let refunds = support::refunds_asked(&r, &no);
    let refunded: i64 = refunds.iter().map(|(_, fee)| fee).sum();
    assert_eq!(
        refunded, TOTAL,
        "WeChat Pay refunded all of it: {refunds:?}"
    );

    // Closed: not shippable, and every unit back on sale.
    let (s, v) = c
        .admin(
            "/admin/orderSync",
            &json!({"action": "ship", "out_trade_no": no, "delivery_id": "SF",
                    "waybill_id": "SF900"}),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (409, Some("ORDER_NOT_SHIPPABLE")),
        "{v}"
    );
    eventually("every unit back on sale", WAIT, || async {
        stock_of(&c, "tea", "tea-250g").await == tea_stock + 1
            && stock_of(&c, "cup", "cup-1").await == cup_stock + 2
    })
    .await;
    assert!(c.dead_letters().await.is_empty());
}

/// GIVEN the same order, the cups claimed first
/// WHEN the tea — now the last unclaimed unit — is applied for, then its after-sale is
/// cancelled and the cups' rejected
/// THEN the tea asks by default for its price and the freight; the cups' application, made
/// while the tea was unclaimed, stays at their price; once the tea's is cancelled, a new one
/// of the tea is again the last units (the cups' is still live) and keeps the order's bound.
/// A cups' after-sale rejected afterwards changes nothing already applied for.
#[tokio::test]
async fn whichever_line_is_claimed_last_takes_the_freight() {
    let r = stack_with(&[]).await;
    let c = InProcess::new(&r);
    let (token, no) = support::two_lines_with_freight(&r, &c, "greta", true).await;

    let (s, v) = apply(&c, &token, &no, asking(cup_line(), CUPS + 1)).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (400, Some("AMOUNT_OVER_LINE")),
        "{v}"
    );
    let (s, v) = apply(&c, &token, &no, cup_line()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["aftersale"]["amount"], CUPS, "{v}");
    let cups_id = v["aftersale"]["aftersale_id"].as_str().unwrap().to_owned();

    let (s, v) = apply(&c, &token, &no, tea_line()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["aftersale"]["amount"], TEA + FREIGHT, "{v}");
    let tea_id = v["aftersale"]["aftersale_id"].as_str().unwrap().to_owned();
    let (s, v) = c
        .post(
            "/fn/aftersaleSync",
            Some(&token),
            &json!({"action": "cancel", "aftersale_id": tea_id}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["aftersale"]["status"], "CANCELLED", "{v}");

    // Again, with the amount named: the whole of what is left.
    let (s, v) = apply(&c, &token, &no, asking(tea_line(), TEA + FREIGHT)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["aftersale"]["amount"], TEA + FREIGHT, "{v}");
    let tea_id = v["aftersale"]["aftersale_id"].as_str().unwrap().to_owned();

    // The cups' rejected: the tea's after-sale keeps what it was accepted for.
    let (s, v) = c
        .admin(
            "/admin/aftersaleSync",
            &json!({"action": "reject", "aftersale_id": cups_id, "reason": "not returned"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let tea = c.my_aftersale(&token, &no, &tea_id).await;
    assert_eq!(
        (&tea["status"], &tea["amount"]),
        (&json!("REQUESTED"), &json!(TEA + FREIGHT)),
        "{tea}"
    );
    // The cups, unclaimed again, are the last units once more (the tea is claimed): the
    // order's bound, which the tea's after-sale leaves at their price.
    let (s, v) = apply(&c, &token, &no, cup_line()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["aftersale"]["amount"], CUPS, "{v}");
    nothing_more_stored(&c, &no, 4, TEA + FREIGHT + CUPS).await;
}

/// GIVEN a paid order of two items with freight paid by WeChat Pay alone (the component off,
/// so an after-sale may name no line)
/// WHEN the user applies for the tea, then for the cups without an amount
/// THEN the tea is bounded by its price and the cups — the last units — take the freight too,
/// as on a component order.
#[tokio::test]
async fn with_the_component_off_the_last_line_takes_the_freight_too() {
    let r = stack_with(&[("WX_TRADING_COMPONENT", "off")]).await;
    let c = InProcess::new(&r);
    let (token, no) = support::two_lines_with_freight(&r, &c, "hanna", false).await;
    let (s, v) = apply(&c, &token, &no, asking(tea_line(), TEA + 1)).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (400, Some("AMOUNT_OVER_LINE")),
        "{v}"
    );
    let (s, v) = apply(&c, &token, &no, tea_line()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["aftersale"]["amount"], TEA, "{v}");
    let (s, v) = apply(&c, &token, &no, cup_line()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["aftersale"]["amount"], CUPS + FREIGHT, "{v}");
    assert_eq!(r.sandbox.calls("shop/ecaftersale/add").len(), 0);
}
