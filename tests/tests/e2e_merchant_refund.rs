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
use support::{eventually, refunds_asked, run_schedule, stack_with, InProcess};

/// Long enough for a loaded machine.
const WAIT: Duration = Duration::from_secs(30);

/// The tea (1,990) is 1,490 of goods and 500 of freight in the freight order.
const FREIGHT: i64 = support::TWO_LINES_FREIGHT;
const TEA: i64 = 1990 - FREIGHT;
/// Two cups at 500.
const CUPS: i64 = 2 * 500;
const TOTAL: i64 = support::TWO_LINES_TOTAL;

/// `user` buys `quantity` teas (1,990 each) and pays at the sandbox's cashier (WeChat Pay; the
/// stack's component is off); returns once the order reads PAID: (token, out_trade_no).
async fn paid_tea(c: &InProcess<'_>, user: &str, quantity: u32) -> (String, String) {
    let (token, _) = c.login(user).await;
    let order = c.order_tea(&token, quantity).await;
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
    let refunds = refunds_asked(&r, &no);
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
    let (token, no) = paid_tea(&c, "greta", 1).await;
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
    assert_eq!(refunds_asked(&r, &no).len(), 1);
    assert_eq!(refunds_asked(&r, &no)[0].1, 300);
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
    let (token, no) = paid_tea(&c, "hanna", 1).await;
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
        refunds_asked(&r, &no),
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
    assert!(refunds_asked(&r, &no).is_empty());
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
    let (_token, no) = paid_tea(&c, "jo", 1).await;

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
        refunds_asked(&r, &no).is_empty(),
        "nothing refunded at WeChat Pay"
    );
}

/// The cups of the freight order, as the merchant's `refund` names a line.
fn cups(quantity: Option<u32>) -> Value {
    let mut line = json!({"product_id": "cup", "sku_id": "cup-1"});
    if let (Some(q), Some(l)) = (quantity, line.as_object_mut()) {
        l.insert("quantity".into(), json!(q));
    }
    line
}

/// GIVEN a paid order of a tea and two cups (the freight order, WeChat Pay only)
/// WHEN the merchant refunds the cups' line (no amount)
/// THEN the refund is the cups' price (1,000), about that line (`list` shows it: product,
/// SKU, quantity 2), WeChat Pay is asked for 1,000; the line is claimed as a user's after-sale
/// of it would claim it: the user's later `apply` for the cups is 400 `LINE_ALREADY_CLAIMED`,
/// while the tea is still applicable — for its price and the freight, the order's last
/// unclaimed units. Before, `product_id` and `sku_id` were ignored: the merchant's refund took
/// the default amount, all that was left (2,990), about no line.
#[tokio::test]
async fn a_line_refund_claims_only_that_line() {
    let r = stack_with(&[("WX_TRADING_COMPONENT", "off")]).await;
    let c = InProcess::new(&r);
    let (token, no) = support::two_lines_with_freight(&r, &c, "kai", false).await;

    let (s, v) = merchant_refund(&c, &no, cups(None)).await;
    assert_eq!(s, 200, "{v}");
    let a = v["aftersale"].clone();
    assert_eq!(
        (
            &a["amount"],
            &a["by"],
            &a["product_id"],
            &a["sku_id"],
            &a["quantity"]
        ),
        (
            &json!(CUPS),
            &json!("MERCHANT"),
            &json!("cup"),
            &json!("cup-1"),
            &json!(2)
        ),
        "{a}"
    );
    let id = a["aftersale_id"].as_str().unwrap().to_owned();
    c.until_refunded(&token, &no, &id).await;
    let mine = c.my_aftersale(&token, &no, &id).await;
    assert_eq!(
        (&mine["product_id"], &mine["quantity"], &mine["amount"]),
        (&json!("cup"), &json!(2), &json!(CUPS)),
        "the user's list shows the line: {mine}"
    );
    assert_eq!(
        refunds_asked(&r, &no)
            .iter()
            .map(|(_, fee)| *fee)
            .collect::<Vec<_>>(),
        vec![CUPS]
    );

    // The cups are claimed; the tea is not.
    let (s, v) = apply(&c, &token, &no, cups(None)).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (400, Some("LINE_ALREADY_CLAIMED")),
        "{v}"
    );
    let (s, v) = apply(
        &c,
        &token,
        &no,
        json!({"product_id": "tea", "sku_id": "tea-250g"}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["aftersale"]["amount"],
        TEA + FREIGHT,
        "the tea, the last units, with the freight: {v}"
    );
    // A merchant's refund of the cups again (another key): nothing of them is left.
    let (s, v) = merchant_refund(
        &c,
        &no,
        json!({"product_id": "cup", "sku_id": "cup-1", "idempotency_key": "k-2"}),
    )
    .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (400, Some("LINE_ALREADY_CLAIMED")),
        "{v}"
    );
}

/// GIVEN a paid trading-component order of a tea and two cups
/// WHEN the merchant refunds one cup
/// THEN WeChat's trading component gets the after-sale on the user's behalf
/// (`ecaftersale/add` with that line, 1 cup, 500 fen), its refund is accepted there and it
/// completes (13) once WeChat Pay refunded it; ours reads REFUNDED, no dead letter. Before, a
/// merchant's refund was never sent to the trading component: WeChat's order centre showed
/// nothing refunded.
#[tokio::test]
async fn a_line_refund_of_a_component_order_reaches_wechat_and_completes() {
    let r = stack_with(&[]).await;
    let c = InProcess::new(&r);
    let (token, no) = support::two_lines_with_freight(&r, &c, "lou", true).await;
    let adds = c.calls("shop/ecaftersale/add");

    let (s, v) = merchant_refund(&c, &no, cups(Some(1))).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["aftersale"]["amount"], 500, "one cup's price: {v}");
    let id = v["aftersale"]["aftersale_id"].as_str().unwrap().to_owned();
    c.until_refunded(&token, &no, &id).await;

    let stored = || async {
        let id = wxshop::domain::AfterSaleId::parse(id.clone()).unwrap();
        wxshop::store::repo::get_aftersale(r.app.store.as_ref(), &id)
            .await
            .unwrap()
            .unwrap()
            .value
    };
    eventually("WeChat's after-sale id stored", WAIT, || async {
        stored().await.wx_aftersale_id.is_some()
    })
    .await;
    let sent = r.sandbox.calls("shop/ecaftersale/add");
    assert_eq!(sent.len(), adds + 1, "{sent:?}");
    let add = sent.last().unwrap();
    assert_eq!(
        (
            &add["product_info"],
            &add["orderamt"],
            &add["out_aftersale_id"]
        ),
        (
            &json!({"out_product_id": "cup", "out_sku_id": "cup-1", "product_cnt": 1}),
            &json!(500),
            &json!(id)
        ),
        "{add}"
    );
    let wx_id = stored().await.wx_aftersale_id.unwrap();
    eventually("WeChat's after-sale completed (13)", WAIT, || async {
        r.app
            .wx
            .ecaftersale_get(&wxshop::shop::types::AfterSaleKey::Id(wx_id))
            .await
            .is_ok_and(|wx| wx.status == 13)
    })
    .await;
    assert!(c.calls("shop/ecaftersale/acceptrefund") >= 1);
    assert!(
        c.dead_letters().await.is_empty(),
        "{:?}",
        c.dead_letters().await
    );
}

/// The refund WeChat Pay holds for `out_refund_no` (its sandbox's state): its `refund_id`.
async fn wechat_refund_id(c: &InProcess<'_>, out_refund_no: &str) -> String {
    let (s, v) = c.get("/sandbox/_control/state").await;
    assert_eq!(s, 200, "{v}");
    v["refunds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["out_refund_no"] == out_refund_no)
        .and_then(|f| f["refund_id"].as_str())
        .unwrap_or_else(|| panic!("no refund {out_refund_no} at WeChat Pay: {v}"))
        .to_owned()
}

/// WeChat Pay's signed SUCCESS notification of refund `out_refund_no` (`fee` of order `no`,
/// `total`).
async fn refund_success(
    r: &Running,
    c: &InProcess<'_>,
    no: &str,
    out_refund_no: &str,
    total: i64,
    fee: i64,
) -> String {
    use wxshop::domain::{Fen, OutRefundNo, OutTradeNo};
    let order_no = OutTradeNo::parse(no.to_owned()).unwrap();
    let order = wxshop::store::repo::get_order(r.app.store.as_ref(), &order_no)
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
            out_trade_no: order_no,
            out_refund_no: OutRefundNo::parse(out_refund_no.to_owned()).unwrap(),
            transaction_id: order.transaction_id.unwrap(),
            refund_id: wechat_refund_id(c, out_refund_no).await,
            total_fee: Fen::new(total).unwrap(),
            refund_fee: Fen::new(fee).unwrap(),
            success_time_ms: Some(1_700_000_000_000),
            refund_status: wxshop::pay::types::RefundStatus::Success,
        },
        cfg.api_key(),
    )
}

/// GIVEN a paid order of two teas (stock 5 → 3), shipped
/// WHEN the merchant refunds one tea as money only (the goods stay with the user, or were
/// damaged), then the other with `restock: true` (a return taken by phone: the tea is back on
/// the shelf), whose refund WeChat Pay keeps processing
/// THEN the first puts nothing back (3, once settled); the second nothing while its refund is
/// under way (REFUNDING, 3), and its unit once WeChat Pay's notification says it succeeded (4),
/// with a `stock_back` event. `restock` without a line is 400 `BAD_RESTOCK`, nothing stored.
/// Before, `restock` was ignored (the merchant had to `set_stock` by hand) and so was the line.
#[tokio::test]
async fn a_restocked_line_refund_puts_its_units_back_once_refunded_and_not_before() {
    let r = stack_with(&[("WX_TRADING_COMPONENT", "off")]).await;
    let c = InProcess::new(&r);
    c.set_stock(5).await;
    let (token, no) = paid_tea(&c, "mo", 2).await;
    let (s, v) = ship(&c, &no).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(c.stock().await, 3);
    let tea = |extra: Value| {
        let mut body = json!({"product_id": "tea", "sku_id": "tea-250g", "quantity": 1});
        if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
            b.extend(e);
        }
        body
    };

    let (s, v) = merchant_refund(&c, &no, json!({"restock": true})).await;
    assert_eq!((s, v["code"].as_str()), (400, Some("BAD_RESTOCK")), "{v}");
    assert!(v["message"].as_str().unwrap().contains("restock"), "{v}");
    assert!(c.admin_aftersales(&no).await.is_empty(), "nothing stored");

    // Money only.
    let (s, v) = merchant_refund(&c, &no, tea(json!({}))).await;
    assert_eq!(s, 200, "{v}");
    assert!(v["aftersale"].get("restock").is_none(), "{v}");
    let money = v["aftersale"]["aftersale_id"].as_str().unwrap().to_owned();
    c.until_refunded(&token, &no, &money).await;
    run_schedule(&r).await;
    run_schedule(&r).await;
    assert_eq!(
        c.stock().await,
        3,
        "a refund of money only puts nothing back"
    );

    // Restocked, its refund still processing at WeChat Pay.
    r.sandbox.clock().advance(60_000); // WeChat Pay: one refund of an order a minute
    c.control("refund_outcome", &json!({"status": "PROCESSING"}))
        .await;
    let (s, v) = merchant_refund(
        &c,
        &no,
        tea(json!({"restock": true, "idempotency_key": "k-2"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["aftersale"]["restock"], true, "{v}");
    let back = v["aftersale"]["aftersale_id"].as_str().unwrap().to_owned();
    let out_refund_no = v["aftersale"]["out_refund_no"].as_str().unwrap().to_owned();
    eventually("WeChat Pay asked for the refund", WAIT, || async {
        refunds_asked(&r, &no).len() == 2
    })
    .await;
    run_schedule(&r).await;
    run_schedule(&r).await;
    assert_eq!(
        c.my_aftersale(&token, &no, &back).await["status"],
        "REFUNDING"
    );
    assert_eq!(
        c.stock().await,
        3,
        "nothing back before the refund succeeded"
    );

    // WeChat Pay says it succeeded: the unit is back.
    let note = refund_success(&r, &c, &no, &out_refund_no, 2 * 1990, 1990).await;
    let (s, reply) = c.raw("/callbacks/refund", note).await;
    assert_eq!(
        (s, support::return_code(&reply)),
        (200, "SUCCESS"),
        "{reply}"
    );
    c.until_refunded(&token, &no, &back).await;
    eventually("the tea back on sale", WAIT, || async {
        c.stock().await == 4
    })
    .await;
    run_schedule(&r).await;
    assert_eq!(c.stock().await, 4, "once");
    let (s, v) = c
        .admin(
            "/admin/orderSync",
            &json!({"action": "events", "source": "stock_back"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let keys: Vec<&str> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["key"].as_str())
        .collect();
    assert_eq!(keys, vec![back.as_str()], "{v}");
    assert!(
        c.dead_letters().await.is_empty(),
        "{:?}",
        c.dead_letters().await
    );
}

/// GIVEN a paid order of two teas (stock 5 → 3), not shipped
/// WHEN the merchant refunds one tea's line, `restock` left out (the user cancelled it by
/// phone before the parcel left)
/// THEN once refunded the tea is back on sale (4), as a user's after-sale of an unshipped line
/// gives it back: the refund took it out of the parcel, so it never left the warehouse. Before,
/// a merchant's line refund without `restock` put nothing back: the unit was neither shipped
/// nor on sale — lost to the stock count.
#[tokio::test]
async fn a_line_refund_before_shipping_puts_its_units_back() {
    let r = stack_with(&[("WX_TRADING_COMPONENT", "off")]).await;
    let c = InProcess::new(&r);
    c.set_stock(5).await;
    let (token, no) = paid_tea(&c, "mo", 2).await;
    assert_eq!(c.stock().await, 3);

    let (s, v) = merchant_refund(
        &c,
        &no,
        json!({"product_id": "tea", "sku_id": "tea-250g", "quantity": 1}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["aftersale"].get("restock").is_none(), "{v}");
    let id = v["aftersale"]["aftersale_id"].as_str().unwrap().to_owned();
    c.until_refunded(&token, &no, &id).await;
    eventually("the tea back on sale", WAIT, || async {
        c.stock().await == 4
    })
    .await;
    run_schedule(&r).await;
    assert_eq!(c.stock().await, 4, "once");
}
