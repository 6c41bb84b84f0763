#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! The merchant's own refund of a paid order through wxshop (`POST /admin/aftersaleSync`
//! action `refund`), end to end over HTTP: an after-sale opened by the merchant and approved
//! at once, refunded by WeChat Pay under our `out_refund_no` and settled by its notification.
//! Before, the only refunds wxshop made were approvals of a user's after-sale: the freight
//! left on an order whose every line was refunded line by line stayed stuck (`ship` 409
//! `NOTHING_TO_SHIP` for ever, every new application 400 `LINE_ALREADY_CLAIMED`), and a
//! goodwill refund had to be made by hand in the WeChat Pay merchant platform.
//!
//! An order with freight is made as `e2e_freight_back` makes it: a paid order's stored record
//! given freight as a freight-charging version would write it (`unifiedOrder` charges none
//! yet). Everything else goes through the routes.

use serde_json::{json, Value};
use std::time::Duration;
use wxlocal::gateway::Running;

#[path = "reliability_support.rs"]
mod support;
use support::{eventually, run_schedule, stack_with, InProcess};

/// Long enough for a loaded machine.
const WAIT: Duration = Duration::from_secs(30);

/// The tea (1,990) is 1,490 of goods and 500 of freight in the freight order.
const FREIGHT: i64 = support::TWO_LINES_FREIGHT;
const TEA: i64 = 1990 - FREIGHT;
/// Two cups at 500.
const CUPS: i64 = 2 * 500;
const TOTAL: i64 = support::TWO_LINES_TOTAL;

/// `user` buys one tea (1,990) and pays at the sandbox's cashier (WeChat Pay; the stack's
/// component is off); returns once the order reads PAID: (token, out_trade_no).
async fn paid_tea(c: &InProcess<'_>, user: &str) -> (String, String) {
    let (token, _) = c.login(user).await;
    let order = c.order_tea(&token, 1).await;
    let no = order["out_trade_no"].as_str().unwrap().to_owned();
    c.pay_at_sandbox(&no).await;
    eventually("the order PAID", WAIT, || async {
        c.status(&token, &no).await["status"] == "PAID"
    })
    .await;
    (token, no)
}

/// The merchant's `refund` of `no` (`extra`: amount, reason, idempotency_key; a reason and a
/// key are added unless given): (HTTP status, answer).
async fn merchant_refund(c: &InProcess<'_>, no: &str, extra: Value) -> (u16, Value) {
    let mut body = json!({"action": "refund", "out_trade_no": no,
                          "reason": "freight given back", "idempotency_key": "k-1"});
    if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
        b.extend(e);
    }
    c.admin("/admin/aftersaleSync", &body).await
}

/// The refunds WeChat Pay was asked for of order `no`: (out_refund_no, refund_fee), each
/// number once, in order of number.
fn refunds_at_wechat_pay(r: &Running, no: &str) -> Vec<(String, i64)> {
    let mut refunds: Vec<(String, i64)> = r
        .sandbox
        .calls("secapi/pay/refund")
        .into_iter()
        .filter(|v| v["out_trade_no"] == no)
        .map(|v| {
            let fee = &v["refund_fee"];
            let fee = fee
                .as_i64()
                .or_else(|| fee.as_str().and_then(|s| s.parse().ok()))
                .unwrap();
            (v["out_refund_no"].as_str().unwrap().to_owned(), fee)
        })
        .collect();
    refunds.sort();
    refunds.dedup();
    refunds
}

/// The user applies for an after-sale of `no` (`extra`: line, amount, reason):
/// (HTTP status, answer).
async fn apply(c: &InProcess<'_>, token: &str, no: &str, extra: Value) -> (u16, Value) {
    let mut body = json!({"action": "apply", "out_trade_no": no, "reason": "not wanted"});
    if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
        b.extend(e);
    }
    c.post("/fn/aftersaleSync", Some(token), &body).await
}

async fn ship(c: &InProcess<'_>, no: &str) -> (u16, Value) {
    c.admin(
        "/admin/orderSync",
        &json!({"action": "ship", "out_trade_no": no, "delivery_id": "SF",
                "waybill_id": "SF900"}),
    )
    .await
}

/// GIVEN a paid trading-component order of a tea and two cups with 500 fen of freight, each
/// line refunded at its price through the user's after-sales — stuck: `ship` is 409
/// `NOTHING_TO_SHIP` (its message sending the merchant to `refund`) and a new application 400
/// `LINE_ALREADY_CLAIMED`
/// WHEN the merchant refunds it without an amount
/// THEN WeChat Pay is asked for a refund of the freight (500) under our `out_refund_no`, the
/// after-sale (`by` MERCHANT, no line) is not sent to WeChat's trading component, and once the
/// notification came the order is REFUNDED for its whole total (`ship`: `ORDER_NOT_SHIPPABLE`).
#[tokio::test]
async fn the_freight_left_on_an_order_refunded_line_by_line_is_refunded_by_the_merchant() {
    let r = stack_with(&[]).await;
    let c = InProcess::new(&r);
    let (token, no) = support::two_lines_with_freight(&r, &c, "frida", true).await;

    // Each line at its price: the freight is left.
    let (s, v) = apply(
        &c,
        &token,
        &no,
        json!({"product_id": "tea", "sku_id": "tea-250g"}),
    )
    .await;
    assert_eq!((s, &v["aftersale"]["amount"]), (200, &json!(TEA)), "{v}");
    let tea_id = v["aftersale"]["aftersale_id"].as_str().unwrap().to_owned();
    let (s, v) = apply(
        &c,
        &token,
        &no,
        json!({"product_id": "cup", "sku_id": "cup-1", "amount": CUPS}),
    )
    .await;
    assert_eq!((s, &v["aftersale"]["amount"]), (200, &json!(CUPS)), "{v}");
    let cups_id = v["aftersale"]["aftersale_id"].as_str().unwrap().to_owned();
    c.approve(&tea_id).await;
    c.until_refunded(&token, &no, &tea_id).await;
    r.sandbox.clock().advance(60_000); // WeChat Pay: one refund of an order a minute
    c.approve(&cups_id).await;
    c.until_refunded(&token, &no, &cups_id).await;
    eventually("the two lines' refunds on the order", WAIT, || async {
        c.status(&token, &no).await["refunded_fee"] == TEA + CUPS
    })
    .await;

    // Stuck: nothing to ship, no line left to apply for.
    let (s, v) = ship(&c, &no).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (409, Some("NOTHING_TO_SHIP")),
        "{v}"
    );
    assert!(
        v["message"].as_str().unwrap().contains("\"refund\""),
        "sends the merchant to refund: {v}"
    );
    let (s, v) = apply(
        &c,
        &token,
        &no,
        json!({"product_id": "cup", "sku_id": "cup-1"}),
    )
    .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (400, Some("LINE_ALREADY_CLAIMED")),
        "{v}"
    );
    let adds = c.calls("shop/ecaftersale/add");

    // The merchant refunds what is left.
    r.sandbox.clock().advance(60_000);
    let (s, v) = merchant_refund(&c, &no, json!({})).await;
    assert_eq!(s, 200, "{v}");
    let a = v["aftersale"].clone();
    assert_eq!(
        (&a["amount"], &a["by"], &a["kind"], &a["status"]),
        (
            &json!(FREIGHT),
            &json!("MERCHANT"),
            &json!("REFUND_ONLY"),
            &json!("REFUNDING")
        ),
        "{a}"
    );
    assert!(a.get("product_id").is_none(), "no line: {a}");
    let id = a["aftersale_id"].as_str().unwrap().to_owned();
    let out_refund_no = a["out_refund_no"].as_str().unwrap().to_owned();

    c.until_refunded(&token, &no, &id).await;
    eventually("the order REFUNDED", WAIT, || async {
        c.status(&token, &no).await["status"] == "REFUNDED"
    })
    .await;
    let order = c.status(&token, &no).await;
    assert_eq!(order["refunded_fee"], TOTAL, "{order}");
    let refunds = refunds_at_wechat_pay(&r, &no);
    assert!(
        refunds.contains(&(out_refund_no.clone(), FREIGHT)),
        "WeChat Pay asked for the freight under our number: {refunds:?}"
    );
    assert_eq!(
        refunds.iter().map(|(_, fee)| fee).sum::<i64>(),
        TOTAL,
        "{refunds:?}"
    );
    let (s, v) = ship(&c, &no).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (409, Some("ORDER_NOT_SHIPPABLE")),
        "{v}"
    );
    // Not sent to WeChat's trading component (no line for `ecaftersale/add`).
    assert_eq!(c.calls("shop/ecaftersale/add"), adds);
    assert!(
        c.dead_letters().await.is_empty(),
        "{:?}",
        c.dead_letters().await
    );
}

/// GIVEN a paid, unshipped order of a tea (1,990)
/// WHEN the merchant refunds 300 fen of goodwill
/// THEN WeChat Pay refunds 300, the user's `list` shows the merchant's refund (REFUNDED, `by`
/// MERCHANT, its reason), the day's reconciliation matches the bill's refund to ours, the order
/// stays PAID and shippable with 1,690 left: the user's later application asks for that by
/// default and no more; no stock comes back.
#[tokio::test]
async fn a_goodwill_refund_leaves_the_order_shippable_with_less_to_refund() {
    let r = stack_with(&[("WX_TRADING_COMPONENT", "off")]).await;
    let c = InProcess::new(&r);
    c.advance_to_china(12, 0).await; // one China day for the order, its refund and the bill
    let (token, no) = paid_tea(&c, "greta").await;
    let stock = c.stock().await;

    let (s, v) = merchant_refund(
        &c,
        &no,
        json!({"amount": 300, "reason": "sorry for the delay"}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let id = v["aftersale"]["aftersale_id"].as_str().unwrap().to_owned();
    c.until_refunded(&token, &no, &id).await;
    let mine = c.my_aftersale(&token, &no, &id).await;
    assert_eq!(
        (&mine["by"], &mine["amount"], &mine["reason"]),
        (
            &json!("MERCHANT"),
            &json!(300),
            &json!("sorry for the delay")
        ),
        "{mine}"
    );
    assert_eq!(refunds_at_wechat_pay(&r, &no).len(), 1);
    assert_eq!(refunds_at_wechat_pay(&r, &no)[0].1, 300);
    eventually("the refund on the order", WAIT, || async {
        c.status(&token, &no).await["refunded_fee"] == 300
    })
    .await;
    assert_eq!(c.status(&token, &no).await["status"], "PAID");

    // The day's bill lists the refund, and it is ours, for that amount.
    let day = wxshop::time::beijing_date(r.app.clock.now_ms());
    let (s, v) = c
        .admin(
            "/admin/orderSync",
            &json!({"action": "reconcile", "bill_date": day}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (
            &v["refunds_checked"],
            &v["refund_mismatches"],
            &v["mismatches"]
        ),
        (&json!(1), &json!([]), &json!([])),
        "{v}"
    );

    // The user's application: what is left, and no more.
    let (s, v) = apply(&c, &token, &no, json!({"amount": 1691})).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (409, Some("NOT_REFUNDABLE")),
        "{v}"
    );
    let (s, v) = apply(&c, &token, &no, json!({})).await;
    assert_eq!((s, &v["aftersale"]["amount"]), (200, &json!(1690)), "{v}");
    let (s, v) = c
        .post(
            "/fn/aftersaleSync",
            Some(&token),
            &json!({"action": "cancel", "aftersale_id": v["aftersale"]["aftersale_id"]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");

    // Still shippable; the goods never came back, so no stock either.
    let (s, v) = ship(&c, &no).await;
    assert_eq!((s, &v["order"]["status"]), (200, &json!("SHIPPED")), "{v}");
    assert_eq!(
        c.stock().await,
        stock,
        "a refund of money puts no stock back"
    );
}

/// GIVEN a paid order of a tea (1,990) with a user's after-sale holding 1,500 of it
/// WHEN the merchant refunds more than the 490 left beside it, then 490
/// THEN the first is 409 `NOT_REFUNDABLE` naming the user's after-sale, nothing stored or sent
/// to WeChat Pay; the second is refunded; the same key again answers the same refund
/// (without an amount too) and WeChat Pay is asked once; another amount under the key is 422
/// `IDEMPOTENCY_KEY_REUSED`; once nothing is left, a new refund is 409 `NOT_REFUNDABLE`.
#[tokio::test]
async fn a_merchant_refund_fits_beside_open_after_sales_and_is_made_once_per_key() {
    let r = stack_with(&[("WX_TRADING_COMPONENT", "off")]).await;
    let c = InProcess::new(&r);
    let (token, no) = paid_tea(&c, "hanna").await;
    let (s, v) = apply(&c, &token, &no, json!({"amount": 1500})).await;
    assert_eq!(s, 200, "{v}");
    let users = v["aftersale"]["aftersale_id"].as_str().unwrap().to_owned();

    let (s, v) = merchant_refund(&c, &no, json!({"amount": 491, "idempotency_key": "big"})).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (409, Some("NOT_REFUNDABLE")),
        "{v}"
    );
    assert!(
        v["message"].as_str().unwrap().contains(&users),
        "names the after-sale holding the rest: {v}"
    );
    assert_eq!(c.admin_aftersales(&no).await.len(), 1, "nothing stored");

    let (s, first) = merchant_refund(&c, &no, json!({"amount": 490})).await;
    assert_eq!(s, 200, "{first}");
    let id = first["aftersale"]["aftersale_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, again) = merchant_refund(&c, &no, json!({"amount": 490})).await;
    assert_eq!(s, 200, "{again}");
    assert_eq!(again["aftersale"]["aftersale_id"], id.as_str());
    assert_eq!(
        again["aftersale"]["out_refund_no"],
        first["aftersale"]["out_refund_no"]
    );
    let (s, v) = merchant_refund(&c, &no, json!({"amount": 100})).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (422, Some("IDEMPOTENCY_KEY_REUSED")),
        "{v}"
    );
    c.until_refunded(&token, &no, &id).await;
    let (s, v) = merchant_refund(&c, &no, json!({})).await;
    assert_eq!(
        (s, &v["aftersale"]["aftersale_id"]),
        (200, &json!(id)),
        "{v}"
    );
    assert_eq!(
        refunds_at_wechat_pay(&r, &no),
        vec![(
            first["aftersale"]["out_refund_no"]
                .as_str()
                .unwrap()
                .to_owned(),
            490
        )],
        "one refund at WeChat Pay, none for the refused one"
    );
    assert_eq!(c.admin_aftersales(&no).await.len(), 2);

    // The user's after-sale refunded too: nothing is left.
    r.sandbox.clock().advance(60_000);
    c.approve(&users).await;
    c.until_refunded(&token, &no, &users).await;
    eventually("the order REFUNDED", WAIT, || async {
        c.status(&token, &no).await["status"] == "REFUNDED"
    })
    .await;
    let (s, v) = merchant_refund(&c, &no, json!({"idempotency_key": "k-2"})).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (409, Some("NOT_REFUNDABLE")),
        "{v}"
    );
}

/// GIVEN an order not paid yet
/// WHEN the merchant refunds it (or an order that does not exist, or with a bad amount or
/// reason)
/// THEN 409 `ORDER_NOT_PAID` (404 `ORDER_NOT_FOUND`, 400 `BAD_AMOUNT`, 400 `BAD_REASON`),
/// nothing stored, nothing sent to WeChat Pay.
#[tokio::test]
async fn an_unpaid_order_is_not_refunded() {
    let r = stack_with(&[("WX_TRADING_COMPONENT", "off")]).await;
    let c = InProcess::new(&r);
    let (token, _) = c.login("ida").await;
    let order = c.order_tea(&token, 1).await;
    let no = order["out_trade_no"].as_str().unwrap().to_owned();

    let (s, v) = merchant_refund(&c, &no, json!({})).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (409, Some("ORDER_NOT_PAID")),
        "{v}"
    );
    let (s, v) = merchant_refund(&c, "WX20261205120000abcdefghijkl", json!({})).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (404, Some("ORDER_NOT_FOUND")),
        "{v}"
    );
    let (s, v) = merchant_refund(&c, &no, json!({"amount": 0})).await;
    assert_eq!((s, v["code"].as_str()), (400, Some("BAD_AMOUNT")), "{v}");
    let (s, v) = merchant_refund(&c, &no, json!({"reason": "  "})).await;
    assert_eq!((s, v["code"].as_str()), (400, Some("BAD_REASON")), "{v}");
    let (s, v) = merchant_refund(&c, &no, json!({"reason": "x".repeat(201)})).await;
    assert_eq!((s, v["code"].as_str()), (400, Some("BAD_REASON")), "{v}");
    assert!(c.admin_aftersales(&no).await.is_empty());
    assert!(refunds_at_wechat_pay(&r, &no).is_empty());
}

/// GIVEN a paid order of a tea (1,990)
/// WHEN the merchant's `refund` carries a field it does not take — `product` (a typo of
/// `product_id`), or an approval's `aftersale_id`
/// THEN 400 `BAD_REQUEST` naming the field and listing the fields `refund` takes; nothing is
/// stored and WeChat Pay is asked for nothing. Before, the field was ignored and the order
/// refunded the default amount: all that was left (1,990), where the merchant meant one item.
#[tokio::test]
async fn a_refund_with_a_field_it_does_not_take_is_refused() {
    let r = stack_with(&[("WX_TRADING_COMPONENT", "off")]).await;
    let c = InProcess::new(&r);
    let (_token, no) = paid_tea(&c, "jo").await;

    for (field, value) in [("product", json!("tea")), ("aftersale_id", json!("AS1"))] {
        let (s, v) = merchant_refund(&c, &no, json!({ field: value })).await;
        assert_eq!((s, v["code"].as_str()), (400, Some("BAD_REQUEST")), "{v}");
        let message = v["message"].as_str().unwrap();
        assert!(message.contains(&format!("`{field}`")), "names it: {v}");
        for accepted in ["out_trade_no", "amount", "reason", "idempotency_key"] {
            assert!(message.contains(accepted), "lists {accepted}: {v}");
        }
    }
    assert!(c.admin_aftersales(&no).await.is_empty(), "nothing stored");
    run_schedule(&r).await;
    assert!(
        refunds_at_wechat_pay(&r, &no).is_empty(),
        "nothing refunded at WeChat Pay"
    );
}
