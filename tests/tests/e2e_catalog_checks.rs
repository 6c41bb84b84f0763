#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! The catalog's checks against what WeChat takes: products WeChat would refuse are refused
//! before anything is stored, and a review withdrawn at WeChat, outside our API, is read back.

use serde_json::{json, Value};
use std::time::Duration;

#[path = "reliability_support.rs"]
mod support;
use support::{get_product, run_schedule, stack_with, Client, InProcess};

/// The merchant's `upsert` of a teapot (one SKU, `pot-1`), every field WeChat requires given.
fn pot() -> Value {
    json!({"action": "upsert", "product": {
        "product_id": "pot", "title": "Yixing clay teapot",
        "head_img": ["https://mmecimage.cn/p/wxlocal/pot.jpg"], "third_cat_id": 6153,
        "brand_id": 2100000000,
        "skus": [{"sku_id": "pot-1", "price": 4800, "stock": 20}]
    }})
}

/// [`pot`] with `field` set to `value` (`null`: left out).
fn pot_with(field: &str, value: Value) -> Value {
    let mut v = pot();
    let product = v["product"].as_object_mut().unwrap();
    if value.is_null() {
        product.remove(field);
    } else {
        product.insert(field.to_owned(), value);
    }
    v
}

/// GIVEN the trading component on
/// WHEN the merchant upserts a product WeChat's `spu/add` would refuse — a 2-character title,
/// no `head_img`, no `third_cat_id`, `brand_id` 0 — and then one with no `brand_id` at all
/// THEN each refused one is 400 with a code naming the field (`BAD_TITLE` saying 3–60,
/// `BAD_HEAD_IMG`, `BAD_CATEGORY`, `BAD_BRAND`), nothing is stored and WeChat is not asked;
/// the one without a brand is uploaded as WeChat's "no brand" (2100000000), approved, and
/// listed. They used to be stored and sent: WeChat refused them (502 `WECHAT_REFUSED`), and a
/// missing brand was stored as 0, a brand WeChat does not know, so no brandless product could
/// be uploaded without knowing WeChat's magic number.
#[tokio::test]
async fn products_wechat_would_refuse_are_refused_before_anything_is_stored() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    // The seeded tea was uploaded at start.
    let uploads = r.sandbox.calls("spu/add").len();

    let refused = [
        ("title", json!("Po"), "BAD_TITLE", "3–60"),
        ("head_img", json!([]), "BAD_HEAD_IMG", "head_img"),
        ("head_img", Value::Null, "BAD_HEAD_IMG", "head_img"),
        ("third_cat_id", Value::Null, "BAD_CATEGORY", "third_cat_id"),
        ("brand_id", json!(0), "BAD_BRAND", "2100000000"),
    ];
    for (field, value, code, says) in refused {
        let (s, v) = c
            .admin("/admin/catalogSync", &pot_with(field, value.clone()))
            .await;
        assert_eq!(
            (s, v["code"].as_str()),
            (400, Some(code)),
            "{field}={value}: {v}"
        );
        let msg = v["message"].as_str().unwrap();
        assert!(msg.contains(says), "{field}: {msg}");
    }
    let (s, v) = c
        .admin(
            "/admin/catalogSync",
            &json!({"action": "get", "product_id": "pot"}),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (404, Some("NO_SUCH_PRODUCT")),
        "{v}"
    );
    assert_eq!(
        r.sandbox.calls("spu/add").len(),
        uploads,
        "WeChat was not asked"
    );

    let (s, v) = c
        .admin("/admin/catalogSync", &pot_with("brand_id", Value::Null))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["product"]["brand_id"], 2100000000u64, "{v}");
    c.until_audit_reads("pot", "APPROVED").await;
    let (s, v) = c
        .admin(
            "/admin/catalogSync",
            &json!({"action": "listing", "product_id": "pot"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["product"]["listing"], "LISTED", "{v}");
}

/// GIVEN a new product under its first audit (WeChat not deciding by itself)
/// WHEN its review is withdrawn at WeChat outside our API (the console or another tool calls
/// `shop/spu/del_audit`: WeChat's draft reads `edit_status` 1), no verdict can come, and the
/// schedule runs after the audit push's grace period
/// THEN the product reads `DRAFT` here, its `submit_error` saying the review was withdrawn at
/// WeChat; the merchant's upsert of the same version submits it again, and WeChat's approval
/// makes it `APPROVED`. The sweep used to take `edit_status` 1 as "not decided yet": the
/// product stayed `AUDITING` for good, and an upsert of the same version uploaded nothing.
#[tokio::test]
async fn an_audit_withdrawn_at_wechat_is_read_back_and_submitted_again() {
    let r = stack_with(&[]).await;
    r.sandbox.set_auto_audit(false);
    let c = InProcess::new(&r);

    let (s, v) = c.admin("/admin/catalogSync", &pot()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["product"]["audit"], "AUDITING", "{v}");

    // Someone withdraws the review at WeChat itself, not through catalogSync.
    tokio::time::timeout(
        Duration::from_secs(15),
        r.app
            .wx
            .spu_del_audit(&wxshop::shop::types::ProductKey::Out("pot".into())),
    )
    .await
    .expect("WeChat answers")
    .expect("WeChat withdraws the review");

    c.advance_both(11 * 60_000).await;
    let report = tokio::time::timeout(Duration::from_secs(30), run_schedule(&r))
        .await
        .expect("the schedule run ends");
    assert_eq!(report["audits"]["withdrawn"], 1, "{report}");
    let p = get_product(&c, "pot").await;
    assert_eq!(p["audit"], "DRAFT", "schedule: {report}; product: {p}");
    let why = p["submit_error"].as_str().unwrap_or_default();
    assert!(why.contains("withdrawn at WeChat"), "{p}");

    // The same version again: back to WeChat's audit, and its verdict applies.
    let (s, v) = c.admin("/admin/catalogSync", &pot()).await;
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
}
