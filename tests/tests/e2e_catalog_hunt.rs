#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! The catalog as a merchant drives it and a shopper sees it, where it used to go wrong: an
//! audit withdrawn by WeChat's product id, listing what cannot be listed, and a price change
//! WeChat took while an order took stock.

use serde_json::{json, Value};
use std::time::Duration;

#[path = "reliability_support.rs"]
mod support;
use support::{buy_tea, eventually, get_product, stack_with, tea, Client};

/// The merchant's `upsert` of a teapot (one SKU, `pot-1`) at `price` fen.
fn pot(price: i64) -> Value {
    json!({"action": "upsert", "product": {
        "product_id": "pot", "title": "Yixing clay teapot",
        "head_img": ["https://mmecimage.cn/p/wxlocal/pot.jpg"], "third_cat_id": 6153,
        "brand_id": 2100000000,
        "skus": [{"sku_id": "pot-1", "price": price, "stock": 20}]
    }})
}

/// GIVEN a new product under its first audit (WeChat not deciding by itself)
/// WHEN the merchant withdraws that audit through `wechat` `shop/spu/del_audit`, naming the
/// product by WeChat's `product_id` (the `wx_product_id` that `get` shows; WeChat takes either
/// id), and then upserts the same version again
/// THEN the product reads `DRAFT` here after the withdrawal, the upsert submits it to WeChat
/// again, WeChat's approval comes, and once listed the shopper can see and buy it. The
/// withdrawal used to be missed when named by WeChat's id: the product stayed `AUDITING` here
/// for good, the upsert of the same version uploaded nothing, no verdict could ever come, and
/// the product never went on sale.
#[tokio::test]
async fn an_audit_withdrawn_by_wechats_product_id_is_submitted_again() {
    let r = stack_with(&[]).await;
    r.sandbox.set_auto_audit(false);
    let c = Client::new(&r);
    let (token, _) = c.login("buyer").await;

    let (s, v) = c.admin("/admin/catalogSync", &pot(4800)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["product"]["audit"], "AUDITING", "{v}");
    let wx_id = v["product"]["wx_product_id"].as_u64().expect("WeChat's id");

    let (s, v) = c
        .admin(
            "/admin/catalogSync",
            &json!({"action": "wechat", "api": "shop/spu/del_audit",
                    "body": {"product_id": wx_id}}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let p = get_product(&c, "pot").await;
    assert_eq!(p["audit"], "DRAFT", "the withdrawal is known here: {p}");

    // The same version again: back to WeChat's audit.
    let (s, v) = c.admin("/admin/catalogSync", &pot(4800)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["product"]["audit"], "AUDITING", "{v}");
    let (s, v) = c
        .post(
            "/sandbox/_control/audit",
            None,
            &json!({"out_product_id": "pot", "approve": true}),
        )
        .await;
    assert_eq!(s, 200, "WeChat has the product under audit again: {v}");
    c.until_audit_reads("pot", "APPROVED").await;
    let (s, v) = c
        .admin(
            "/admin/catalogSync",
            &json!({"action": "listing", "product_id": "pot"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");

    let (s, v) = c
        .post(
            "/fn/catalogSync",
            Some(&token),
            &json!({"action": "get", "product_id": "pot"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["product"]["skus"][0]["price"], 4800, "{v}");
    let (s, v) = c
        .post(
            "/fn/unifiedOrder",
            Some(&token),
            &json!({"items": [{"product_id": "pot", "sku_id": "pot-1", "quantity": 1}],
                    "address": {"receiver_name": "Alice", "detailed_address": "1 Tea Street",
                                "tel_number": "13800000000"}}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["total_fee"], 4800, "{v}");
}

/// GIVEN the trading component on
/// WHEN the merchant lists a product id we do not have, a product under its first audit, and
/// one WeChat rejected
/// THEN the first is 404 `NO_SUCH_PRODUCT` (as for every other action), the others 409
/// `NOT_APPROVED`, whose message says what to do (list it once approved; fix and upsert a
/// rejected one); none goes on sale. They used to be 502 `WECHAT_REFUSED` — "WeChat refused
/// for good: pages a person" — with WeChat's refusal relayed, for what is the merchant's
/// timing or id.
#[tokio::test]
async fn listing_what_wechat_never_approved_says_what_to_do() {
    let r = stack_with(&[]).await;
    r.sandbox.set_auto_audit(false);
    let c = Client::new(&r);
    let (token, _) = c.login("buyer").await;
    let listing = |id: &str| json!({"action": "listing", "product_id": id});

    let (s, v) = c.admin("/admin/catalogSync", &listing("no-such")).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (404, Some("NO_SUCH_PRODUCT")),
        "{v}"
    );

    let (s, v) = c.admin("/admin/catalogSync", &pot(4800)).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = c.admin("/admin/catalogSync", &listing("pot")).await;
    assert_eq!((s, v["code"].as_str()), (409, Some("NOT_APPROVED")), "{v}");
    let msg = v["message"].as_str().unwrap();
    assert!(
        msg.contains("under WeChat's audit") && msg.contains("once approved"),
        "{msg}"
    );

    let (s, v) = c
        .post(
            "/sandbox/_control/audit",
            None,
            &json!({"out_product_id": "pot", "approve": false, "reason": "blurry images"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    c.until_audit_reads("pot", "REJECTED").await;
    let (s, v) = c.admin("/admin/catalogSync", &listing("pot")).await;
    assert_eq!((s, v["code"].as_str()), (409, Some("NOT_APPROVED")), "{v}");
    let msg = v["message"].as_str().unwrap();
    assert!(msg.contains("rejected") && msg.contains("upsert"), "{msg}");

    assert_eq!(get_product(&c, "pot").await["listing"], "DELISTED");
    let (s, v) = c
        .post(
            "/fn/catalogSync",
            Some(&token),
            &json!({"action": "get", "product_id": "pot"}),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (404, Some("NO_SUCH_PRODUCT")),
        "{v}"
    );
}

/// GIVEN the seeded tea, approved and listed at 1990
/// WHEN the merchant reprices it to 2500 (`spu/update_without_audit`, no audit) and, while
/// WeChat's answer is on its way, a shopper orders one (taking stock)
/// THEN the upsert succeeds and the shop shows and charges 2500, the price WeChat sells at: a
/// shopper can buy it. The upsert used to answer 409 `RETRY` after WeChat had taken the new
/// price: ours stayed 1990, shown and charged, and WeChat's `order/add` refused every order
/// at a price unlike its own until the merchant repeated the upsert.
#[tokio::test]
async fn a_price_wechat_took_while_an_order_took_stock_is_the_price_sold() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (token, _) = c.login("buyer").await;
    let (early, _) = c.login("early").await;
    assert_eq!(buy_tea(&c, &token).await, Ok(1990));
    // That order's stock reaches WeChat first (the stock mirror, a `update_without_audit` of
    // stock only): the repricing below is then the next such call, the one delayed.
    let stock = c.stock().await;
    eventually(
        "the order's stock to reach WeChat",
        Duration::from_secs(20),
        || async {
            r.sandbox
                .calls("spu/update_without_audit")
                .iter()
                .any(|v| v["skus"][0]["stock_num"] == stock)
        },
    )
    .await;

    // WeChat takes 2 s to act on (and answer) the repricing.
    c.fault(
        json!({"path": "shop/spu/update_without_audit", "mode": "delay",
                   "delay_ms": 2000, "count": 1}),
    )
    .await;
    let stock = c.stock().await;
    let upsert = tokio::spawn({
        let c = c.clone();
        async move {
            c.admin(
                "/admin/catalogSync",
                &tea("Longjing green tea 250 g", 2500, stock),
            )
            .await
        }
    });
    eventually(
        "the repricing to reach WeChat",
        Duration::from_secs(20),
        || async {
            r.sandbox
                .calls("spu/update_without_audit")
                .iter()
                .any(|v| v["skus"][0]["sale_price"] == 2500)
        },
    )
    .await;
    // Meanwhile a shopper's order takes stock (at the price still on sale).
    let (s, v) = c.order(&early, 1, None).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = tokio::time::timeout(Duration::from_secs(30), upsert)
        .await
        .expect("the upsert answers")
        .unwrap();

    let (ss, shown) = c
        .post(
            "/fn/catalogSync",
            Some(&token),
            &json!({"action": "get", "product_id": "tea"}),
        )
        .await;
    assert_eq!(ss, 200, "{shown}");
    assert_eq!(shown["product"]["skus"][0]["price"], 2500, "{shown}");
    assert_eq!(
        buy_tea(&c, &token).await,
        Ok(2500),
        "the price shown is charged and WeChat takes the order"
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["product"]["skus"][0]["price"], 2500, "{v}");
}
