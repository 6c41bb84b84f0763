#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! WeChat's platform taking a product off sale on its own (risk control, a violation: `spu`
//! status 13) and putting it back (5), with its push (`open_product_spu_status_update`)
//! delivered or lost: the shop stops selling the product either way, tells the user it is not
//! for sale rather than failing, and sells it again once WeChat restores it — but never a
//! product the merchant delisted.

use serde_json::{json, Value};
use std::time::Duration;

#[path = "reliability_support.rs"]
mod support;
use support::{eventually, get_product, run_schedule, stack_with, InProcess};

/// Whether the mini program's shop (`/fn/catalogSync` `products`) shows product `id`.
async fn shop_shows(c: &InProcess<'_>, token: &str, id: &str) -> bool {
    support::shop_ids(c, token).await.iter().any(|p| p == id)
}

/// WeChat's platform delists (`restore` false) or restores product `id`; `push` false: its
/// push is lost.
async fn platform(c: &InProcess<'_>, id: &str, restore: bool, push: bool) -> Value {
    c.control(
        "platform_delist",
        &json!({"out_product_id": id, "restore": restore, "push": push}),
    )
    .await
}

/// Waits (20 s at most) until the merchant's view of `id` reads `listing`.
async fn until_listing(c: &InProcess<'_>, id: &str, listing: &str) {
    eventually(
        &format!("{id} to read {listing}"),
        Duration::from_secs(20),
        || async { get_product(c, id).await["listing"] == listing },
    )
    .await;
}

/// An order of one `product`/`sku` to Alice, under `key`.
async fn order_of(
    c: &InProcess<'_>,
    token: &str,
    product: &str,
    sku: &str,
    key: &str,
) -> (u16, Value) {
    c.post(
        "/fn/unifiedOrder",
        Some(token),
        &json!({"items": [{"product_id": product, "sku_id": sku, "quantity": 1}],
                "idempotency_key": key,
                "address": {"receiver_name": "Alice", "detailed_address": "1 Tea Street",
                            "tel_number": "13800000000"}}),
    )
    .await
}

/// The merchant's `platform_delisting` events, as `(product_id, status, via)`, sorted: what
/// WeChat's platform did to products here and how it was learnt.
async fn platform_events(c: &InProcess<'_>) -> Vec<(String, i64, String)> {
    let (s, v) = c
        .admin(
            "/admin/orderSync",
            &json!({"action": "events", "source": "platform_delisting"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let mut out: Vec<(String, i64, String)> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let body: Value = match &e["body"] {
                Value::String(b) => serde_json::from_str(b).unwrap(),
                other => other.clone(),
            };
            (
                body["product_id"].as_str().unwrap().to_owned(),
                body["status"].as_i64().unwrap(),
                body["via"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

/// `(product_id, status, via)` as [`platform_events`] lists them.
fn ev(id: &str, status: i64, via: &str) -> (String, i64, String) {
    (id.to_owned(), status, via.to_owned())
}

/// One schedule run, bounded: its report.
async fn schedule(c: &InProcess<'_>) -> Value {
    tokio::time::timeout(Duration::from_secs(60), run_schedule(c.r))
        .await
        .expect("the schedule run ends")
}

/// GIVEN tea on sale, and a cup the merchant delisted
/// WHEN WeChat's platform delists both on its own and its push arrives, then restores both
/// and that push arrives too
/// THEN tea leaves the shop at once and an order of it is 409 `NOT_FOR_SALE`; restored, it is
/// back in the shop and sells. The cup stays delisted throughout: the restore is WeChat's
/// undoing of its own delisting, not a listing of what the merchant took off sale. The restore
/// push used to list any product WeChat read listed, the merchant's delisted ones included.
#[tokio::test]
async fn a_platform_delisting_pushed_stops_sales_and_its_restore_lists_only_what_it_took() {
    let r = stack_with(&[]).await;
    let c = InProcess::new(&r);
    let (token, _) = c.login("buyer").await;
    c.listed_product("cup", "cup-1", 500).await;
    let (s, v) = c
        .admin(
            "/admin/catalogSync",
            &json!({"action": "delisting", "product_id": "cup"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(shop_shows(&c, &token, "tea").await);
    // Status pushes answered `success`.
    let answered = || {
        r.sandbox
            .deliveries()
            .iter()
            .filter(|d| {
                d["kind"] == "push"
                    && d["key"] == "open_product_spu_status_update"
                    && d["status"] == 200
            })
            .count()
    };

    for id in ["tea", "cup"] {
        let v = platform(&c, id, false, true).await;
        assert_eq!(v["status"], 13, "{v}");
    }
    until_listing(&c, "tea", "DELISTED").await;
    assert!(!shop_shows(&c, &token, "tea").await);
    let (s, v) = order_of(&c, &token, "tea", "tea-250g", "a-1").await;
    assert_eq!((s, v["code"].as_str()), (409, Some("NOT_FOR_SALE")), "{v}");

    for id in ["tea", "cup"] {
        let v = platform(&c, id, true, true).await;
        assert_eq!(v["status"], 5, "{v}");
    }
    until_listing(&c, "tea", "LISTED").await;
    assert!(shop_shows(&c, &token, "tea").await);
    let (s, v) = order_of(&c, &token, "tea", "tea-250g", "a-2").await;
    assert_eq!(s, 200, "{v}");

    // Every status push was taken in, the cup's restore among them.
    eventually(
        "the four status pushes to be answered",
        Duration::from_secs(20),
        || async { answered() >= 4 },
    )
    .await;
    assert_eq!(get_product(&c, "cup").await["listing"], "DELISTED");
    assert!(!shop_shows(&c, &token, "cup").await);
    let (s, v) = order_of(&c, &token, "cup", "cup-1", "a-3").await;
    assert_eq!((s, v["code"].as_str()), (409, Some("NOT_FOR_SALE")), "{v}");
    // The merchant reads what the platform did to tea (nothing to the cup here: it was theirs).
    assert_eq!(
        platform_events(&c).await,
        vec![ev("tea", 5, "push"), ev("tea", 13, "push")]
    );
}

/// GIVEN tea on sale, and WeChat's platform delists it with its push lost
/// WHEN a user orders tea
/// THEN the order is refused 409 `NOT_FOR_SALE` (WeChat's `order/add` refused it, and WeChat's
/// record of tea reads delisted by the platform), nothing is charged and the stock it took is
/// back; tea is now off the shop, and a second order of it is refused here without asking
/// WeChat; the idempotency key is free for another cart, which is bought. Every order of tea
/// used to fail 502 `WECHAT_REFUSED` for good, and tea stayed in the shop.
#[tokio::test]
async fn a_platform_delisting_whose_push_was_lost_is_read_back_when_wechat_refuses_an_order() {
    let r = stack_with(&[]).await;
    let c = InProcess::new(&r);
    let (token, _) = c.login("buyer").await;
    c.listed_product("cup", "cup-1", 500).await;
    let stock = c.stock().await;

    platform(&c, "tea", false, false).await;
    assert!(shop_shows(&c, &token, "tea").await, "no push: still shown");

    let adds = c.calls("shop/order/add");
    let (s, v) = order_of(&c, &token, "tea", "tea-250g", "b-1").await;
    assert_eq!((s, v["code"].as_str()), (409, Some("NOT_FOR_SALE")), "{v}");
    assert!(v["message"].as_str().unwrap().contains("tea"), "{v}");
    assert_eq!(c.calls("shop/order/add"), adds + 1, "WeChat refused it");
    assert_eq!(c.stock().await, stock, "the stock it took is back");
    assert_eq!(get_product(&c, "tea").await["listing"], "DELISTED");
    assert!(!shop_shows(&c, &token, "tea").await);
    assert_eq!(
        platform_events(&c).await,
        vec![ev("tea", 13, "order_refused")],
        "the merchant is told"
    );

    let (prepays, adds, reads) = (
        c.calls("pay/unifiedorder"),
        c.calls("shop/order/add"),
        c.calls("shop/spu/get"),
    );
    let (s, v) = order_of(&c, &token, "tea", "tea-250g", "b-2").await;
    assert_eq!((s, v["code"].as_str()), (409, Some("NOT_FOR_SALE")), "{v}");
    assert_eq!(
        (
            c.calls("pay/unifiedorder"),
            c.calls("shop/order/add"),
            c.calls("shop/spu/get")
        ),
        (prepays, adds, reads),
        "refused here, WeChat not asked"
    );

    // The refused key is free: the user buys something else with it.
    let (s, v) = order_of(&c, &token, "cup", "cup-1", "b-1").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["total_fee"], 500, "{v}");
}

/// GIVEN tea and a cup on sale, and WeChat's platform delists both with their pushes lost
/// WHEN a user orders a cart of both
/// THEN the order is refused 409 `NOT_FOR_SALE` naming both, both are read at WeChat (at
/// once) and taken off sale here, each with its `order_refused` event, and the stock is back.
#[tokio::test]
async fn a_refused_cart_of_several_products_delists_every_one_wechat_holds_delisted() {
    let r = stack_with(&[]).await;
    let c = InProcess::new(&r);
    let (token, _) = c.login("buyer").await;
    c.listed_product("cup", "cup-1", 500).await;
    let stock = c.stock().await;
    for id in ["tea", "cup"] {
        platform(&c, id, false, false).await;
    }
    let reads = c.calls("shop/spu/get");
    let (s, v) = c
        .post(
            "/fn/unifiedOrder",
            Some(&token),
            &json!({"items": [{"product_id": "tea", "sku_id": "tea-250g", "quantity": 1},
                              {"product_id": "cup", "sku_id": "cup-1", "quantity": 1}],
                    "idempotency_key": "d-1",
                    "address": {"receiver_name": "Alice", "detailed_address": "1 Tea Street",
                                "tel_number": "13800000000"}}),
        )
        .await;
    assert_eq!((s, v["code"].as_str()), (409, Some("NOT_FOR_SALE")), "{v}");
    let message = v["message"].as_str().unwrap();
    assert!(message.contains("tea") && message.contains("cup"), "{v}");
    assert_eq!(c.calls("shop/spu/get"), reads + 2, "each product read once");
    for id in ["tea", "cup"] {
        assert_eq!(get_product(&c, id).await["listing"], "DELISTED", "{id}");
    }
    assert_eq!(c.stock().await, stock, "the stock it took is back");
    assert_eq!(
        platform_events(&c).await,
        vec![
            ev("cup", 13, "order_refused"),
            ev("tea", 13, "order_refused")
        ]
    );
}

/// GIVEN tea on sale and a cup the merchant delisted
/// WHEN WeChat's platform delists both with its pushes lost, and nobody orders
/// THEN the schedule's run finds tea delisted at WeChat and takes it off the shop (its report
/// counting `audits.platform_delisted` 1), and an order is refused here; WHEN WeChat restores
/// both, pushes lost again, THEN the next run puts tea back on sale (`platform_restored` 1)
/// and it sells, while the cup stays delisted. Neither was ever read back: tea stayed on sale
/// here for good, and after a lost restore a product stayed off sale for good.
#[tokio::test]
async fn the_schedule_reads_back_platform_delistings_and_restores_whose_pushes_were_lost() {
    let r = stack_with(&[]).await;
    let c = InProcess::new(&r);
    let (token, _) = c.login("buyer").await;
    c.listed_product("cup", "cup-1", 500).await;
    let (s, v) = c
        .admin(
            "/admin/catalogSync",
            &json!({"action": "delisting", "product_id": "cup"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");

    let report = schedule(&c).await;
    assert!(
        report["audits"].get("platform_delisted").is_none()
            && report["audits"].get("platform_restored").is_none(),
        "nothing to count, nothing shown: {report}"
    );

    for id in ["tea", "cup"] {
        platform(&c, id, false, false).await;
    }
    let report = schedule(&c).await;
    assert_eq!(report["audits"]["platform_delisted"], 1, "{report}");
    assert_eq!(get_product(&c, "tea").await["listing"], "DELISTED");
    assert!(!shop_shows(&c, &token, "tea").await);
    let adds = c.calls("shop/order/add");
    let (s, v) = order_of(&c, &token, "tea", "tea-250g", "c-1").await;
    assert_eq!((s, v["code"].as_str()), (409, Some("NOT_FOR_SALE")), "{v}");
    assert_eq!(c.calls("shop/order/add"), adds, "refused here");

    for id in ["tea", "cup"] {
        platform(&c, id, true, false).await;
    }
    let report = schedule(&c).await;
    assert_eq!(report["audits"]["platform_restored"], 1, "{report}");
    assert!(
        report["audits"].get("platform_delisted").is_none(),
        "{report}"
    );
    assert_eq!(get_product(&c, "tea").await["listing"], "LISTED");
    assert!(shop_shows(&c, &token, "tea").await);
    let (s, v) = order_of(&c, &token, "tea", "tea-250g", "c-2").await;
    assert_eq!(s, 200, "{v}");

    assert_eq!(get_product(&c, "cup").await["listing"], "DELISTED");
    assert!(!shop_shows(&c, &token, "cup").await);
    assert_eq!(
        platform_events(&c).await,
        vec![ev("tea", 5, "schedule"), ev("tea", 13, "schedule")]
    );
}

/// The control refuses what it does not take: an unknown field (400), a product the sandbox
/// does not have or one not delisted by the platform to restore (409).
#[tokio::test]
async fn the_platform_delist_control_refuses_what_it_cannot_do() {
    let r = stack_with(&[]).await;
    let c = InProcess::new(&r);
    let ask = |body: Value| {
        let c = &c;
        async move {
            c.post("/sandbox/_control/platform_delist", None, &body)
                .await
        }
    };
    let (s, v) = ask(json!({"out_product_id": "tea", "pushed": false})).await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = ask(json!({"restore": true})).await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = ask(json!({"out_product_id": "nope"})).await;
    assert_eq!(s, 409, "{v}");
    let (s, v) = ask(json!({"out_product_id": "tea", "restore": true})).await;
    assert_eq!(s, 409, "tea is listed: {v}");
    // spu/get and spu/get_list show the platform's delisting.
    let (s, _) = ask(json!({"out_product_id": "tea", "push": false})).await;
    assert_eq!(s, 200);
    let key = wxshop::shop::types::ProductKey::Out("tea".into());
    assert_eq!(r.app.wx.spu_get(&key, false).await.unwrap().status, 13);
    let list = r
        .app
        .wx
        .spu_get_list(&wxshop::shop::catalog::SpuListRequest {
            status: Some(13),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(list.total_num, 1);
    assert_eq!(list.spus[0].out_product_id, "tea");
}

/// GIVEN tea on sale and a record that cannot be read as a product listed before it
/// (`a-broken`: another version's, or damaged) WHEN WeChat's platform delists tea and restores
/// it, both pushes lost THEN the schedule takes tea off sale and puts it back on sale, the bad
/// record skipped. The restore scan used to fail at the bad record's page on every run: no
/// product after it was ever restored.
#[tokio::test]
async fn an_unreadable_product_record_does_not_stop_the_restore_scan() {
    let r = stack_with(&[]).await;
    let c = InProcess::new(&r);
    let (token, _) = c.login("buyer").await;
    support::store_unreadable_product(&r, "a-broken", "APPROVED").await;
    platform(&c, "tea", false, false).await;
    let report = schedule(&c).await;
    assert_eq!(report["audits"]["platform_delisted"], 1, "{report}");
    assert!(!shop_shows(&c, &token, "tea").await);

    platform(&c, "tea", true, false).await;
    let report = schedule(&c).await;
    assert_eq!(report["audits"]["platform_restored"], 1, "{report}");
    assert_eq!(get_product(&c, "tea").await["listing"], "LISTED");
    assert!(shop_shows(&c, &token, "tea").await);
    r.stop();
}
