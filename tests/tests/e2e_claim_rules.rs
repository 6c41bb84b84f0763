#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! What a user's application claims of an order with one item, end to end over HTTP, and
//! what the refusals of after-sales say to do.
//!
//! An application without a line on an order of one item is that line with the default
//! quantity: all of it that no live after-sale claims yet. It used to claim the item's whole
//! quantity whatever earlier after-sales claimed of it: on 2 × tea, one tea applied for and
//! then an application without a line claimed 2 more — 3 units of 2 — and once both were
//! refunded the second put none of its tea back on sale (its amount was less than 2 teas).
//!
//! `unifiedOrder` charges no freight yet (`freight` 0), so an order with freight is made by
//! giving a paid order's stored record freight as a freight-charging version would write it
//! (as `e2e_freight_back` does): the same total, part of it freight. Everything else goes
//! through the routes.

use serde_json::{json, Value};
use std::time::Duration;
use wxlocal::gateway::Running;
use wxshop::domain::{Fen, OutTradeNo};
use wxshop::store::repo;

#[path = "reliability_support.rs"]
mod support;
use support::{eventually, run_schedule, stack_with, wx_order, InProcess};

/// Long enough for a loaded machine.
const WAIT: Duration = Duration::from_secs(30);

/// The seeded tea's price, fen.
const PRICE: i64 = 1990;
/// Of two teas' 3,980: 500 of freight, each tea 1,740.
const FREIGHT: i64 = 500;
const TEA: i64 = PRICE - FREIGHT / 2;

/// The stored order `no` (of teas only) charges `freight` of its total: the tea's unit
/// price less `freight` / its quantity, the total unchanged (a version-checked write,
/// retried on a conflict).
async fn teas_carry_freight(r: &Running, no: &str, freight: i64) {
    let store = r.app.store.as_ref();
    let no = OutTradeNo::parse(no.to_owned()).unwrap();
    for _ in 0..50 {
        let current = repo::get_order(store, &no).await.unwrap().unwrap();
        let mut next = current.value.clone();
        let tea = &mut next.items[0];
        let per_unit = Fen::new(freight / i64::from(tea.quantity)).unwrap();
        tea.unit_price = tea.unit_price.checked_sub(per_unit).unwrap();
        next.freight = Fen::new(freight).unwrap();
        let mut batch = repo::Batch::new();
        batch.update_order(&current, &next);
        match batch.commit(store).await {
            Ok(()) => return,
            Err(e) if e.is_conflict() => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("{e}"),
        }
    }
    panic!("could not give order {no} freight");
}

/// `user` buys `qty` tea and pays at the sandbox's cashier; returns once WeChat's component
/// order reads paid (20): (token, out_trade_no).
async fn paid_teas(r: &Running, c: &InProcess<'_>, user: &str, qty: u32) -> (String, String) {
    let (token, _) = c.login(user).await;
    let order = c.order_tea(&token, qty).await;
    assert_eq!(order["total_fee"], PRICE * i64::from(qty), "{order}");
    let no = order["out_trade_no"].as_str().unwrap().to_owned();
    c.pay_at_sandbox(&no).await;
    eventually("WeChat's component order paid (20)", WAIT, || async {
        wx_order(r, &no).await.status == 20
    })
    .await;
    eventually("the order PAID", WAIT, || async {
        c.status(&token, &no).await["status"] == "PAID"
    })
    .await;
    (token, no)
}

/// The user's application for an after-sale of `no` (`extra`: line, amount, reason):
/// (HTTP status, answer).
async fn apply(c: &InProcess<'_>, token: &str, no: &str, extra: Value) -> (u16, Value) {
    let mut body = json!({"action": "apply", "out_trade_no": no});
    if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
        b.extend(e);
    }
    c.post("/fn/aftersaleSync", Some(token), &body).await
}

/// The tea's line, `quantity` of it if given.
fn tea_line(quantity: Option<u32>) -> Value {
    let mut v = json!({"product_id": "tea", "sku_id": "tea-250g", "reason": "not wanted"});
    if let Some(q) = quantity {
        v["quantity"] = json!(q);
    }
    v
}

/// The after-sales of `no` and the amounts held on it stand as they were: `count`
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

/// GIVEN a paid, unshipped order of one line, 2 × tea, with freight
/// WHEN the user applies for one tea (`quantity` 1), then again without a line
/// THEN the second after-sale claims the one tea left (`quantity` 1) and, being the order's
/// last unclaimed unit, its price and the freight; a third application, with or without the
/// line, is 400 `LINE_ALREADY_CLAIMED` (nothing stored); once the merchant approved both and
/// WeChat Pay refunded them, the order is REFUNDED and 2 teas are back on sale, not 3 (nor 1).
///
/// Before, the application without a line claimed both teas again (`quantity` 2: 3 units
/// claimed of 2), and its refund, less than 2 teas' price, put none back on sale.
#[tokio::test]
async fn no_line_on_an_order_of_one_item_claims_only_what_is_left_of_it() {
    let r = stack_with(&[]).await;
    let c = InProcess::new(&r);
    let (token, no) = paid_teas(&r, &c, "hana", 2).await;
    teas_carry_freight(&r, &no, FREIGHT).await;
    let order = c.status(&token, &no).await;
    assert_eq!(
        (&order["total_fee"], &order["freight"]),
        (&json!(2 * PRICE), &json!(FREIGHT)),
        "{order}"
    );
    let stock = c.stock().await;

    // One tea: its price.
    let (s, v) = apply(&c, &token, &no, tea_line(Some(1))).await;
    assert_eq!(s, 200, "{v}");
    let first = v["aftersale"].clone();
    assert_eq!(
        (&first["quantity"], &first["amount"]),
        (&json!(1), &json!(TEA)),
        "{first}"
    );

    // No line: the tea left, the order's last unit, with the freight.
    let (s, v) = apply(&c, &token, &no, json!({"reason": "the other one too"})).await;
    assert_eq!(s, 200, "{v}");
    let second = v["aftersale"].clone();
    assert_eq!(
        (
            &second["product_id"],
            &second["quantity"],
            &second["amount"]
        ),
        (&json!("tea"), &json!(1), &json!(TEA + FREIGHT)),
        "the one tea left, and the freight: {second}"
    );

    // Nothing left: refused as for the line named.
    for extra in [json!({"reason": "more"}), tea_line(None)] {
        let (s, v) = apply(&c, &token, &no, extra).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (400, Some("LINE_ALREADY_CLAIMED")),
            "{v}"
        );
        assert!(
            v["message"].as_str().unwrap().contains("all 2 ordered"),
            "{v}"
        );
    }
    nothing_more_stored(&c, &no, 2, 2 * PRICE).await;

    // Both approved and refunded (WeChat Pay takes one refund of an order a minute).
    let ids = [&first, &second].map(|a| a["aftersale_id"].as_str().unwrap().to_owned());
    eventually("both after-sales at WeChat", WAIT, || async {
        r.sandbox.calls("shop/ecaftersale/add").len() >= 2
    })
    .await;
    c.approve(&ids[0]).await;
    c.until_refunded(&token, &no, &ids[0]).await;
    r.sandbox.clock().advance(60_000);
    c.approve(&ids[1]).await;
    c.until_refunded(&token, &no, &ids[1]).await;
    eventually("the order REFUNDED", WAIT, || async {
        c.status(&token, &no).await["status"] == "REFUNDED"
    })
    .await;
    assert_eq!(c.status(&token, &no).await["refunded_fee"], 2 * PRICE);

    // Two teas back on sale, one per after-sale, and no more once everything due has run.
    eventually("both teas back on sale", WAIT, || async {
        c.stock().await == stock + 2
    })
    .await;
    run_schedule(&r).await;
    run_schedule(&r).await;
    assert_eq!(c.stock().await, stock + 2, "2 teas back, not 3");
    assert!(c.dead_letters().await.is_empty());
}

/// GIVEN a paid order of one tea (1,990)
/// WHEN the user asks for 5,000 fen, then applies without an amount, cancels, and then tells
/// the parcel of the cancelled after-sale and the merchant approves it
/// THEN 5,000 is 409 `NOT_REFUNDABLE` saying to ask for at most 1,990 fen or to leave
/// `amount` out (which asks for the 1,990); each move of the cancelled after-sale is 409
/// `AFTERSALE_STATE` naming its status as the API writes it (`CANCELLED`, not the code's
/// `Cancelled`), what that status allows, and to read it again.
///
/// Before, the messages said only what was wrong: "refund of 5000 fen exceeds the 1990 fen
/// still refundable", "after-sale is Cancelled; cannot approve".
#[tokio::test]
async fn refusals_of_an_application_and_of_an_aftersale_say_what_to_do() {
    let r = stack_with(&[]).await;
    let c = InProcess::new(&r);
    let (token, no) = paid_teas(&r, &c, "ines", 1).await;

    let (s, v) = apply(&c, &token, &no, json!({"amount": 5000})).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (409, Some("NOT_REFUNDABLE")),
        "{v}"
    );
    let msg = v["message"].as_str().unwrap();
    assert!(
        msg.contains("5000") && msg.contains("ask for at most 1990 fen"),
        "says what to ask for: {msg}"
    );
    assert!(msg.contains("leave `amount` out"), "{msg}");
    nothing_more_stored(&c, &no, 0, 0).await;

    let (s, v) = apply(&c, &token, &no, json!({})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["aftersale"]["amount"], PRICE, "{v}");
    let id = v["aftersale"]["aftersale_id"].as_str().unwrap().to_owned();
    let (s, v) = c
        .post(
            "/fn/aftersaleSync",
            Some(&token),
            &json!({"action": "cancel", "aftersale_id": id}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["aftersale"]["status"], "CANCELLED", "{v}");

    let (s, v) = c
        .post(
            "/fn/aftersaleSync",
            Some(&token),
            &json!({"action": "return", "aftersale_id": id, "delivery_id": "SF",
                    "delivery_name": "SF Express", "waybill_id": "SF100"}),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (409, Some("AFTERSALE_STATE")),
        "{v}"
    );
    let msg = v["message"].as_str().unwrap();
    assert!(
        msg.starts_with("after-sale is CANCELLED: cannot"),
        "the status as the API writes it: {msg}"
    );
    assert!(msg.contains("`apply` anew"), "says what it allows: {msg}");
    assert!(msg.contains("read it again"), "{msg}");

    let (s, v) = c
        .admin(
            "/admin/aftersaleSync",
            &json!({"action": "approve", "aftersale_id": id}),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (409, Some("AFTERSALE_STATE")),
        "{v}"
    );
    let msg = v["message"].as_str().unwrap();
    assert!(
        msg.starts_with("after-sale is CANCELLED: cannot approve"),
        "{msg}"
    );
    assert!(!msg.contains("Cancelled"), "no Rust variant name: {msg}");
    assert_eq!(
        c.my_aftersale(&token, &no, &id).await["status"],
        "CANCELLED"
    );
}
