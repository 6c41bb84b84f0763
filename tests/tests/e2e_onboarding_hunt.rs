#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! The merchant's onboarding as their back-end engineer drives it, where it used to go wrong:
//! a category whose products WeChat takes only with their qualification images, and
//! qualification images WeChat does not host.

use serde_json::{json, Value};
use std::time::Duration;

#[path = "reliability_support.rs"]
mod support;
use support::{eventually, get_product, stack_with, Client};

/// The merchant's `upsert` of infant formula (WeChat's level-3 category 7419, which needs a
/// category qualification and, per product, `qualification_pics`).
fn formula(pics: Value) -> Value {
    json!({"action": "upsert", "product": {
        "product_id": "formula", "title": "Infant formula stage 1, 800 g",
        "head_img": ["https://mmecimage.cn/p/wxlocal/formula.jpg"], "third_cat_id": 7419,
        "qualification_pics": pics,
        "skus": [{"sku_id": "formula-800g", "price": 26800, "stock": 30}]
    }})
}

/// The calls of `path` (`shop/spu/add`, `shop/spu/update`) WeChat received for the formula.
fn sent(r: &wxlocal::gateway::Running, path: &str) -> Vec<Value> {
    r.sandbox
        .calls(path)
        .into_iter()
        .filter(|v| v["out_product_id"] == "formula")
        .collect()
}

/// GIVEN a category whose products WeChat takes only with their qualification images
/// (`shop/cat/get`: `product_qualification_type` 1; here 7419, infant formula), its category
/// qualification approved (`shop/audit/audit_category`)
/// WHEN the merchant upserts a product of it with `qualification_pics`
/// THEN the images go to WeChat with the product, WeChat audits it, and once approved and
/// listed the buyer sees it; a blank image URL is refused (400, nothing stored), and a new
/// image is a change WeChat reviews (a new audit). `qualification_pics` used to be dropped
/// without a word: every such product was refused by WeChat (502 `WECHAT_REFUSED`, 1000008
/// "qualification_pics required") and stored as a draft that could never go on sale.
#[tokio::test]
async fn a_product_needing_qualification_images_goes_on_sale_with_them() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (token, _) = c.login("buyer").await;
    let licence = c
        .uploaded_image("https://files.example.com/licence.jpg")
        .await;
    let certificate = c
        .uploaded_image("https://files.example.com/formula-permit.jpg")
        .await;

    let (s, v) = c
        .wechat(
            "shop/audit/audit_category",
            json!({"audit_req": {"license": [licence],
            "category_info": {"level1": 4, "level2": 401, "level3": 7419,
                              "certificate": [certificate]}}}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let audit_id = v["audit_id"].as_str().unwrap().to_owned();
    eventually(
        "the category audit approved",
        Duration::from_secs(20),
        || {
            let c = c.clone();
            let audit_id = audit_id.clone();
            async move {
                let (s, v) = c
                    .wechat("shop/audit/result", json!({"audit_id": audit_id}))
                    .await;
                s == 200 && v["data"]["status"] == 1
            }
        },
    )
    .await;

    // A blank image: refused here, nothing stored, nothing sent.
    let (s, v) = c.admin("/admin/catalogSync", &formula(json!([" "]))).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (400, Some("BAD_QUALIFICATION_PICS")),
        "{v}"
    );
    let (s, v) = c
        .admin(
            "/admin/catalogSync",
            &json!({"action": "get", "product_id": "formula"}),
        )
        .await;
    assert_eq!(s, 404, "nothing stored: {v}");
    assert!(sent(&r, "shop/spu/add").is_empty());

    let pic = c
        .uploaded_image("https://files.example.com/formula-report.jpg")
        .await;
    let (s, v) = c.admin("/admin/catalogSync", &formula(json!([pic]))).await;
    assert_eq!(s, 200, "WeChat takes it for audit: {v}");
    assert_eq!(v["product"]["audit"], "AUDITING", "{v}");
    assert_eq!(v["product"]["qualification_pics"], json!([pic]), "{v}");
    let added = sent(&r, "shop/spu/add");
    assert_eq!(added.len(), 1);
    assert_eq!(added[0]["qualification_pics"], json!([pic]), "{}", added[0]);

    eventually("the product approved", Duration::from_secs(20), || {
        let c = c.clone();
        async move { get_product(&c, "formula").await["audit"] == "APPROVED" }
    })
    .await;
    let (s, v) = c
        .admin(
            "/admin/catalogSync",
            &json!({"action": "listing", "product_id": "formula"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(
        support::shop_ids(&c, &token)
            .await
            .contains(&"formula".to_owned()),
        "the buyer sees it"
    );

    // A new qualification image is reviewed again: an edit under audit, the approved
    // version on sale meanwhile.
    let renewed = c
        .uploaded_image("https://files.example.com/formula-report-2027.jpg")
        .await;
    r.sandbox.set_auto_audit(false);
    let (s, v) = c
        .admin("/admin/catalogSync", &formula(json!([renewed])))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["product"]["edit"]["audit"], "AUDITING", "{v}");
    assert_eq!(
        v["product"]["edit"]["qualification_pics"],
        json!([renewed]),
        "{v}"
    );
    let updated = sent(&r, "shop/spu/update");
    assert_eq!(updated.len(), 1, "sent for audit");
    assert_eq!(updated[0]["qualification_pics"], json!([renewed]));
    assert!(support::shop_ids(&c, &token)
        .await
        .contains(&"formula".to_owned()));
}

/// GIVEN a merchant applying for a brand or a category qualification
/// WHEN an image (licence, certificate, authorisation) is a URL on the merchant's own host,
/// not one `shop/img/upload` gave
/// THEN the sandbox refuses it as WeChat does (images must be WeChat-hosted, WECHAT_SHOP.md
/// §0, §2.3): 502 `WECHAT_REFUSED` naming the field and `shop/img/upload`, no audit started;
/// the same application with the uploaded image's URL or `media_id` is taken. The sandbox
/// used to take any URL, so an onboarding that worked locally failed at WeChat.
#[tokio::test]
async fn qualification_images_must_be_uploaded_to_wechat_first() {
    let r = stack_with(&[]).await;
    r.sandbox.set_auto_audit(false);
    let c = Client::new(&r);
    let own = "https://files.example.com/licence.jpg";

    let brand = |licence: &str, authorisation: &str| {
        json!({"audit_req": {"license": [licence], "brand_info": {
            "brand_wording": "West Lake Tea", "sale_authorization": [authorisation]}}})
    };
    let hosted = c.uploaded_image(own).await;
    for body in [brand(own, &hosted), brand(&hosted, own)] {
        let (s, v) = c.wechat("shop/audit/audit_brand", body).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (502, Some("WECHAT_REFUSED")),
            "{v}"
        );
        let msg = v["message"].as_str().unwrap();
        assert!(
            msg.contains("shop/img/upload") && msg.contains(own),
            "says which image and what to do: {msg}"
        );
    }
    let (s, v) = c
        .wechat("shop/audit/audit_brand", brand(&hosted, &hosted))
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["audit_id"].as_str().is_some(), "{v}");

    let category = |certificate: &str| {
        json!({"audit_req": {"license": [hosted.clone()], "category_info": {
            "level1": 3, "level2": 301, "level3": 7231, "certificate": [certificate]}}})
    };
    let (s, v) = c.wechat("shop/audit/audit_category", category(own)).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (502, Some("WECHAT_REFUSED")),
        "{v}"
    );
    assert!(
        v["message"].as_str().unwrap().contains("certificate"),
        "{v}"
    );
    let (s, v) = c
        .wechat(
            "shop/img/upload",
            json!({"resp_type": 0, "upload_type": 1, "img_url": own}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let media_id = v["img_info"]["media_id"].as_str().unwrap().to_owned();
    let (s, v) = c
        .wechat("shop/audit/audit_category", category(&media_id))
        .await;
    assert_eq!(s, 200, "a media_id from shop/img/upload: {v}");
}

/// GIVEN a shop whose infant formula category (7419) has no approved qualification, and no
/// brand authorised but WeChat's "no brand"
/// WHEN the merchant upserts a formula, then a tea of an unauthorised brand
/// THEN each is 502 `WECHAT_REFUSED` saying what to do next (`shop/audit/audit_category`,
/// `shop/audit/audit_brand`), in our words whatever language WeChat's message is in. The
/// refusal used to carry only WeChat's own message.
#[tokio::test]
async fn onboarding_refusals_say_what_to_do() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (s, v) = c.admin("/admin/catalogSync", &formula(json!([]))).await;
    let message = v["message"].as_str().unwrap_or_default();
    assert_eq!(
        (s, v["code"].as_str()),
        (502, Some("WECHAT_REFUSED")),
        "{v}"
    );
    assert!(
        message.contains("what to do") && message.contains("shop/audit/audit_category"),
        "{v}"
    );

    let (s, v) = c
        .admin(
            "/admin/catalogSync",
            &json!({"action": "upsert", "product": {
                "product_id": "branded", "title": "Branded green tea 250 g",
                "head_img": ["https://mmecimage.cn/p/wxlocal/tea.jpg"], "third_cat_id": 6153,
                "brand_id": 2100000123u64,
                "skus": [{"sku_id": "branded-250g", "price": 2990, "stock": 5}]
            }}),
        )
        .await;
    let message = v["message"].as_str().unwrap_or_default();
    assert_eq!(
        (s, v["code"].as_str()),
        (502, Some("WECHAT_REFUSED")),
        "{v}"
    );
    assert!(
        message.contains("what to do") && message.contains("shop/audit/audit_brand"),
        "{v}"
    );
    r.stop();
}
