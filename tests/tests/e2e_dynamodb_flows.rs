#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! The shop on DynamoDB, end to end: the in-process stack on a `dynamodb:TABLE` store (moto's
//! server, one for this file, a fresh table per test made as `infra/template.yaml` makes
//! production's), driven through the same routes as the `e2e_*` tests on SQLite — a purchase
//! from login to PAID, shipping, receipt and an after-sale refund, the catalog from upload to
//! a sold-out refusal, the schedule closing an unpaid order, and the listings that page
//! through DynamoDB's indexes (a user's orders, the shop, the merchant's events).
//!
//! moto answers one request at a time and is slow on a loaded host: few tests, modest
//! writes, and generous bounded waits ([`WAIT`]).

use serde_json::{json, Value};
use std::sync::OnceLock;
use std::time::Duration;
use wxlocal::gateway::Running;

#[path = "reliability_support.rs"]
mod support;
use support::{
    closed_at_wechat_pay, eventually, notification, return_code, run_schedule, shop_ids, Client,
    InProcess, Moto,
};

/// Long enough for moto on a loaded 2-core host.
const WAIT: Duration = Duration::from_secs(60);
/// The seeded tea's price, fen.
const TEA: i64 = 1990;

/// The file's one moto server (it ends with the test process: see [`Moto`]).
fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(support::start_moto)
}

/// The in-process stack (seeded with the tea) on a fresh DynamoDB table `tag`.
async fn stack(tag: &str) -> Running {
    stack_with_vars(tag, &[]).await
}

/// [`stack`] with the configuration `vars` too.
async fn stack_with_vars(tag: &str, vars: &[(&str, &str)]) -> Running {
    let moto = moto();
    let table = support::dynamodb_table(moto, tag).await;
    let mut vars = vars.to_vec();
    vars.push(("DYNAMODB_ENDPOINT", moto.endpoint.as_str()));
    let r = support::stack_on(&format!("dynamodb:{table}"), &vars).await;
    assert_eq!(r.app.store.backend(), "dynamodb");
    r
}

/// The order number of an answer of `unifiedOrder`.
fn no_of(order: &Value) -> String {
    order["out_trade_no"].as_str().unwrap().to_owned()
}

/// Returns once order `no` reads `want` to its user.
async fn until_order_reads(c: &Client, token: &str, no: &str, want: &str) {
    eventually(&format!("order {no} to read {want}"), WAIT, || async {
        c.status(token, no).await["status"] == want
    })
    .await;
}

/// `shop/order/pay` calls WeChat received about `no`.
async fn pays_told(c: &Client, no: &str) -> usize {
    c.order_pay_calls().await.get(no).copied().unwrap_or(0)
}

/// Every page of a listing, `page(cursor)` answering (items, next): the items in order and
/// how many pages it took (at most 20).
async fn all_pages<F, Fut>(mut page: F) -> (Vec<String>, usize)
where
    F: FnMut(Option<String>) -> Fut,
    Fut: std::future::Future<Output = (Vec<String>, Option<String>)>,
{
    let (mut all, mut cursor, mut pages) = (Vec::new(), None, 0);
    loop {
        let (items, next) = page(cursor.take()).await;
        all.extend(items);
        pages += 1;
        match next {
            Some(n) if pages < 20 => cursor = Some(n),
            Some(_) => panic!("the pages did not end: {all:?}"),
            None => return (all, pages),
        }
    }
}

/// One page (`limit`) of the user's orders, as the mini program's order list reads it.
async fn my_orders(
    c: &Client,
    token: &str,
    limit: usize,
    cursor: Option<String>,
) -> (Vec<String>, Option<String>) {
    let mut body = json!({"limit": limit});
    if let Some(cur) = cursor {
        body["cursor"] = json!(cur);
    }
    let (s, v) = c.post("/fn/queryOrder", Some(token), &body).await;
    assert_eq!(s, 200, "{v}");
    let ids = v["orders"]
        .as_array()
        .unwrap_or_else(|| panic!("no orders in {v}"))
        .iter()
        .map(|o| o["out_trade_no"].as_str().unwrap().to_owned())
        .collect();
    (ids, v["next"].as_str().map(str::to_owned))
}

/// GIVEN the shop on DynamoDB WHEN a user logs in, orders a tea (the order sent twice with
/// one idempotency key), pays at WeChat Pay's cashier, and WeChat Pay's notification comes
/// again — three at once, then once more THEN one order is made and one unit taken, it reads
/// PAID with WeChat's transaction, the trading component is told once (`shop/order/pay`),
/// every notification is answered SUCCESS and nothing is dead-lettered or kept as a double
/// payment. AND the user's order list (the owner index) pages through their three orders
/// newest first, one a page, and none of another user's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purchase_on_dynamodb_is_paid_once_and_told_to_wechat() {
    let r = stack("buy").await;
    let c = InProcess::new(&r);
    let (token, openid) = c.login("dyn-ann").await;
    let start = c.stock().await;

    let (s, first) = c.order(&token, 1, Some("dyn-key-1")).await;
    assert_eq!(s, 200, "{first}");
    assert_eq!(first["total_fee"], TEA, "{first}");
    let no = no_of(&first);
    let (s, again) = c.order(&token, 1, Some("dyn-key-1")).await;
    assert_eq!(s, 200, "{again}");
    assert_eq!(
        again["out_trade_no"],
        no.as_str(),
        "the key gives the same order"
    );
    assert_eq!(c.stock().await, start - 1, "one unit for the two calls");

    let txid = c.pay_at_sandbox(&no).await;
    until_order_reads(&c, &token, &no, "PAID").await;
    eventually("shop/order/pay for the order", WAIT, || async {
        pays_told(&c, &no).await >= 1
    })
    .await;

    let body = notification(&r, &no, &openid, TEA, &txid);
    let replies =
        futures::future::join_all((0..3).map(|_| c.raw("/callbacks/pay", body.clone()))).await;
    for (s, reply) in replies {
        assert_eq!((s, return_code(&reply)), (200, "SUCCESS"), "{reply}");
    }
    let (s, reply) = c.raw("/callbacks/pay", body).await;
    assert_eq!((s, return_code(&reply)), (200, "SUCCESS"), "{reply}");
    let order = c.status(&token, &no).await;
    assert_eq!(
        (&order["status"], &order["transaction_id"]),
        (&json!("PAID"), &json!(txid)),
        "{order}"
    );
    // Whatever the notifications left due runs.
    run_schedule(&r).await;
    assert_eq!(pays_told(&c, &no).await, 1, "WeChat told once");
    assert_eq!(c.stock().await, start - 1);
    assert!(c.dead_letters().await.is_empty());
    let (s, v) = c
        .admin(
            "/admin/orderSync",
            &json!({"action": "events", "source": "double_payment"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["events"], json!([]), "no double payment kept: {v}");

    // The owner index: the user's orders, newest first, a page at a time.
    let second = no_of(&c.order_tea(&token, 1).await);
    let third = no_of(&c.order_tea(&token, 1).await);
    let (bob, _) = c.login("dyn-bob").await;
    let bobs = no_of(&c.order_tea(&bob, 1).await);
    let (mine, pages) = all_pages(|cur| my_orders(&c, &token, 1, cur)).await;
    assert_eq!(mine, vec![third.clone(), second, no], "pages of one");
    assert!(pages >= 3, "{pages} pages");
    let (mine, pages) = all_pages(|cur| my_orders(&c, &token, 20, cur)).await;
    assert_eq!((mine.len(), pages), (3, 1), "{mine:?}");
    assert_eq!(mine[0], third);
    let (theirs, _) = all_pages(|cur| my_orders(&c, &bob, 20, cur)).await;
    assert_eq!(theirs, vec![bobs]);
    r.stop();
}

/// GIVEN a paid tea on DynamoDB (5 in stock, 4 left) WHEN the merchant ships it, the user
/// confirms receipt, then applies for a refund only (the tin arrived crushed), the merchant
/// approves and WeChat Pay's refund notification comes THEN the order reads SHIPPED, RECEIVED
/// (WeChat told of both), then REFUNDED with the whole price refunded, the after-sale
/// REFUNDED; the stock stays 4 (a refund only after shipping puts nothing back), nothing
/// dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shipped_order_on_dynamodb_is_received_and_refunded() {
    let r = stack("ship").await;
    let c = InProcess::new(&r);
    c.set_stock(5).await;
    let (token, _) = c.login("dyn-cat").await;
    let no = no_of(&c.order_tea(&token, 1).await);
    c.pay_at_sandbox(&no).await;
    until_order_reads(&c, &token, &no, "PAID").await;
    eventually("shop/order/pay for the order", WAIT, || async {
        pays_told(&c, &no).await >= 1
    })
    .await;
    assert_eq!(c.stock().await, 4);

    let (s, v) = c
        .admin(
            "/admin/orderSync",
            &json!({"action": "ship", "out_trade_no": no, "delivery_id": "SF",
                    "waybill_id": "SF7000"}),
        )
        .await;
    assert_eq!(s, 200, "ship: {v}");
    assert_eq!(c.status(&token, &no).await["status"], "SHIPPED");
    let told = |api: &'static str| {
        let r = &r;
        let no = no.clone();
        async move {
            eventually(&format!("{api} for the order"), WAIT, || async {
                r.sandbox
                    .calls(api)
                    .iter()
                    .any(|v| v.to_string().contains(&no))
            })
            .await
        }
    };
    told("shop/delivery/send").await;
    let (s, v) = c
        .post(
            "/fn/queryOrder",
            Some(&token),
            &json!({"out_trade_no": no, "action": "confirm"}),
        )
        .await;
    assert_eq!(s, 200, "confirm: {v}");
    assert_eq!(v["order"]["status"], "RECEIVED", "{v}");
    told("shop/delivery/recieve").await;

    let id = c
        .apply(&token, &no, json!({"reason": "the tin arrived crushed"}))
        .await;
    assert_eq!(
        c.my_aftersale(&token, &no, &id).await["kind"],
        "REFUND_ONLY"
    );
    c.approve(&id).await;
    eventually("the after-sale to read REFUNDED", WAIT, || async {
        c.my_aftersale(&token, &no, &id).await["status"] == "REFUNDED"
    })
    .await;
    until_order_reads(&c, &token, &no, "REFUNDED").await;
    assert_eq!(c.status(&token, &no).await["refunded_fee"], TEA);

    run_schedule(&r).await;
    run_schedule(&r).await;
    assert_eq!(c.stock().await, 4, "nothing back after shipping");
    assert_eq!(c.status(&token, &no).await["status"], "REFUNDED");
    assert!(c.dead_letters().await.is_empty());
    r.stop();
}

/// A shop page of `limit` from `cursor`: its product ids and `next`.
async fn shop_page(
    c: &Client,
    token: &str,
    limit: usize,
    cursor: Option<String>,
) -> (Vec<String>, Option<String>) {
    let mut body = json!({"action": "products", "limit": limit});
    if let Some(cur) = cursor {
        body["cursor"] = json!(cur);
    }
    let (s, v) = c.post("/fn/catalogSync", Some(token), &body).await;
    assert_eq!(s, 200, "{v}");
    let ids = v["products"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["product_id"].as_str().unwrap().to_owned())
        .collect();
    (ids, v["next"].as_str().map(str::to_owned))
}

/// A page (`limit`) of the merchant's `push` events: their keys (with when they came) and
/// `next`.
async fn push_events(
    c: &Client,
    limit: usize,
    cursor: Option<String>,
) -> (Vec<String>, Option<String>) {
    let mut body = json!({"action": "events", "source": "push", "limit": limit});
    if let Some(cur) = cursor {
        body["cursor"] = json!(cur);
    }
    let (s, v) = c.admin("/admin/orderSync", &body).await;
    assert_eq!(s, 200, "{v}");
    let keys = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("{}@{}", e["key"], e["received_at"]))
        .collect();
    (keys, v["next"].as_str().map(str::to_owned))
}

/// The user orders `qty` of `product`/`sku`: (status, answer).
async fn order_of(c: &Client, token: &str, product: &str, sku: &str, qty: u32) -> (u16, Value) {
    c.post(
        "/fn/unifiedOrder",
        Some(token),
        &json!({"items": [{"product_id": product, "sku_id": sku, "quantity": qty}],
                "address": {"receiver_name": "A", "detailed_address": "1 Road",
                            "tel_number": "13800000000"}}),
    )
    .await
}

/// GIVEN the shop on DynamoDB WHEN the merchant uploads a mug and a cup (WeChat audits each
/// and pushes its verdict) and lists them, sets the mug's stock to 1, and two users order a
/// mug each THEN both are on sale in the shop beside the tea (in product-id order, on pages
/// of any size), the first user gets the last mug and the second is refused 409 `SOLD_OUT`
/// with the stock at 0; the audit pushes are among the merchant's events, a page at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_product_on_dynamodb_goes_on_sale_and_sells_out() {
    let r = stack("catalog").await;
    let c = InProcess::new(&r);
    c.listed_product("mug", "mug-1", 800).await;
    c.listed_product("cup", "cup-1", 500).await;
    let (token, _) = c.login("dyn-dan").await;
    let all = vec!["cup".to_owned(), "mug".to_owned(), "tea".to_owned()];
    assert_eq!(shop_ids(&c, &token).await, all);
    let (paged, pages) = all_pages(|cur| shop_page(&c, &token, 1, cur)).await;
    assert_eq!(paged, all, "pages of one");
    assert!(pages >= 3, "{pages} pages");
    assert_eq!(all_pages(|cur| shop_page(&c, &token, 2, cur)).await.0, all);

    let (s, v) = c
        .admin(
            "/admin/catalogSync",
            &json!({"action": "set_stock", "product_id": "mug", "sku_id": "mug-1", "stock": 1}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, first) = order_of(&c, &token, "mug", "mug-1", 1).await;
    assert_eq!(s, 200, "{first}");
    assert_eq!(first["total_fee"], 800, "{first}");
    let (eve, _) = c.login("dyn-eve").await;
    let (s, refused) = order_of(&c, &eve, "mug", "mug-1", 1).await;
    assert_eq!(
        (s, &refused["code"]),
        (409, &json!("SOLD_OUT")),
        "{refused}"
    );
    let mug = support::get_product(&c, "mug").await;
    assert_eq!(mug["skus"][0]["stock"], 0, "{mug}");

    // The audit verdicts WeChat pushed, kept as events, a page at a time.
    let (one_page, _) = push_events(&c, 100, None).await;
    assert!(one_page.len() >= 2, "an audit push a product: {one_page:?}");
    let (paged, pages) = all_pages(|cur| push_events(&c, 1, cur)).await;
    assert_eq!(paged, one_page, "pages of one");
    assert_eq!(pages, one_page.len().max(1));
    r.stop();
}

/// Past `ORDER_TTL_SECS` (900 s in these stacks), with a minute to spare.
const PAST_EXPIRY_MS: i64 = 16 * 60_000;

/// GIVEN two teas ordered on DynamoDB and left unpaid WHEN their time is up and the schedule
/// runs THEN it closes the order (read from the status index), the two units are back on sale,
/// WeChat Pay's order is closed (its cashier refuses it) and WeChat told; the user reads it
/// CLOSED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpaid_order_on_dynamodb_is_closed_by_the_schedule() {
    use wxshop::domain::{OrderStatus, OutTradeNo};
    let r = stack("expiry").await;
    let c = InProcess::new(&r);
    let (token, _) = c.login("dyn-fay").await;
    let start = c.stock().await;
    let no = no_of(&c.order_tea(&token, 2).await);
    assert_eq!(c.stock().await, start - 2);

    r.sandbox.clock().advance(PAST_EXPIRY_MS);
    r.app.clock.advance(PAST_EXPIRY_MS);
    // The schedule runs every 5 minutes: the order is to be closed by a run, once. Up to
    // three runs: the fresh-clone CI twice saw a first run on moto whose sweep looked at no
    // order at all (`swept.checked` 0, nothing unfinished, no failure) — not reproduced in a
    // dozen runs here; such a run is printed for its cause to be found.
    let mut closed = 0;
    for run in 1..=3 {
        let report = run_schedule(&r).await;
        closed += report["swept"]["closed"].as_i64().unwrap();
        if closed > 0 {
            break;
        }
        eprintln!("schedule run {run} closed nothing: {report}");
    }
    assert_eq!(closed, 1, "the expired order closed once by the schedule");
    let stored = wxshop::store::repo::get_order(
        r.app.store.as_ref(),
        &OutTradeNo::parse(no.clone()).unwrap(),
    )
    .await
    .unwrap()
    .unwrap()
    .value;
    assert_eq!(stored.status, OrderStatus::Closed);
    assert_eq!(c.stock().await, start, "the two units are back");
    closed_at_wechat_pay(&r, &c, &no, WAIT).await;
    assert_eq!(c.status(&token, &no).await["status"], "CLOSED");
    r.stop();
}

/// GIVEN the shop on DynamoDB with the trading component off, and a product of 8 SKUs whose
/// main image the merchant gave inline (a `data:` URL of 55 KB: shown by the mini program as
/// any image) WHEN a user orders one of each SKU and pays THEN the order is made (200, the 8
/// units taken) and reads PAID. Each of the order's lines used to copy the image whole: the
/// order record came to 440 KB, over DynamoDB's 400 KB item limit, and on AWS the user was
/// answered 503 `STORE_UNAVAILABLE` "storage is unavailable; retry shortly" every time they
/// tried (and the store-unavailable metric counted it), while SQLite took the order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_of_many_lines_of_a_product_with_an_inline_image_fits_dynamodb() {
    const SKUS: usize = 8;
    let r = stack_with_vars("inline", &[("WX_TRADING_COMPONENT", "off")]).await;
    let c = InProcess::new(&r);
    let image = format!("data:image/jpeg;base64,{}", "A".repeat(55_000));
    let skus: Vec<Value> = (0..SKUS)
        .map(|i| json!({"sku_id": format!("v{i}"), "price": 300, "stock": 5}))
        .collect();
    let (s, v) = c
        .admin(
            "/admin/catalogSync",
            &json!({"action": "upsert", "product": {
                "product_id": "sampler", "title": "Tea sampler",
                "head_img": [image], "skus": skus}}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = c
        .admin(
            "/admin/catalogSync",
            &json!({"action": "listing", "product_id": "sampler"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");

    let (token, _) = c.login("dyn-gus").await;
    let items: Vec<Value> = (0..SKUS)
        .map(|i| json!({"product_id": "sampler", "sku_id": format!("v{i}"), "quantity": 1}))
        .collect();
    let (s, order) = c
        .post(
            "/fn/unifiedOrder",
            Some(&token),
            &json!({"items": items,
                    "address": {"receiver_name": "A", "detailed_address": "1 Road",
                                "tel_number": "13800000000"}}),
        )
        .await;
    assert_eq!(s, 200, "{order}");
    assert_eq!(order["total_fee"], 300 * SKUS as i64, "{order}");
    let no = no_of(&order);
    let sampler = support::get_product(&c, "sampler").await;
    assert!(
        sampler["skus"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["stock"] == 4),
        "one of each taken: {sampler}"
    );
    c.pay_at_sandbox(&no).await;
    until_order_reads(&c, &token, &no, "PAID").await;
    let paid = c.status(&token, &no).await;
    assert_eq!(paid["items"].as_array().map(Vec::len), Some(SKUS), "{paid}");
    r.stop();
}
