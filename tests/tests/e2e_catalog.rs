#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! `catalogSync` upserts when what we store and what WeChat holds disagree: each case must be
//! repaired by the upsert itself, never refused forever.

use serde_json::{json, Value};

#[path = "reliability_support.rs"]
mod support;
use support::{stack_with, Client};

fn kettle(title: &str) -> Value {
    json!({"action": "upsert", "product": {
        "product_id": "kettle", "title": title,
        "head_img": ["https://mmecimage.cn/p/wxlocal/kettle.jpg"], "third_cat_id": 6153,
        "brand_id": 2100000000,
        "skus": [{"sku_id": "kettle-1l", "price": 8800, "stock": 5}]
    }})
}

async fn sandbox_product(c: &Client, out_product_id: &str) -> Value {
    let (s, v) = c.get("/sandbox/_control/state").await;
    assert_eq!(s, 200, "{v}");
    v["products"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["out_product_id"] == out_product_id)
        .cloned()
        .unwrap_or_else(|| panic!("the sandbox has no {out_product_id}: {v}"))
}

/// An edit before WeChat's verdict: WeChat refuses `spu/update` while the audit runs
/// (errcode 1000002); the upsert withdraws that audit and submits the new version.
#[tokio::test]
async fn editing_a_product_under_audit_resubmits_the_new_version() {
    let r = stack_with(&[]).await;
    r.sandbox.set_auto_audit(false);
    let c = Client::new(&r);

    let (s, v) = c.admin("/admin/catalogSync", &kettle("Kettle 1 L")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["product"]["audit"], "AUDITING", "{v}");
    let first_id = v["product"]["wx_product_id"].clone();

    let (s, v) = c
        .admin("/admin/catalogSync", &kettle("Kettle 1 L, steel"))
        .await;
    assert_eq!(s, 200, "an edit under audit must go through: {v}");
    assert_eq!(v["product"]["audit"], "AUDITING", "{v}");
    assert_eq!(v["product"]["title"], "Kettle 1 L, steel", "{v}");
    assert_eq!(v["product"]["wx_product_id"], first_id, "{v}");

    let (_, calls) = c
        .get("/sandbox/_control/calls?path=shop/spu/del_audit")
        .await;
    assert_eq!(calls["calls"].as_array().unwrap().len(), 1, "{calls}");
    let p = sandbox_product(&c, "kettle").await;
    assert_eq!(p["edit_status"], 2, "under audit again: {p}");
    assert!(p.to_string().contains("Kettle 1 L, steel"), "{p}");
    r.stop();
}

/// WeChat has a product we never stored — the state an upsert leaves when `spu/add`
/// succeeded and the store write after it failed, or a second environment on the same
/// account. `spu/add` is refused (errcode 1000012); the upsert updates it instead and
/// stores WeChat's product id.
#[tokio::test]
async fn a_product_wechat_already_has_but_we_never_stored_is_updated() {
    // Stack A seeds `tea`: its sandbox (WeChat) holds the product.
    let a = stack_with(&[]).await;
    let ca = Client::new(&a);
    let (s, v) = ca
        .admin(
            "/admin/catalogSync",
            &json!({"action": "get", "product_id": "tea"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let wx_id = v["product"]["wx_product_id"].clone();
    assert!(wx_id.is_u64(), "{v}");

    // Stack B: an empty store, talking to the same WeChat.
    let api = format!("{}/sandbox/api", a.base_url);
    let b = wxlocal::gateway::start(wxlocal::gateway::Options {
        addr: "127.0.0.1:0".parse().unwrap(),
        store: Some("memory".into()),
        seed: false,
        time_scale: 0.001,
        overrides: [("WX_API_BASE_URL".to_owned(), api)].into_iter().collect(),
        use_env: false,
        relay_every: std::time::Duration::from_millis(20),
    })
    .await
    .unwrap();
    let cb = Client::new(&b);
    let (s, v) = cb
        .admin(
            "/admin/catalogSync",
            &json!({"action": "upsert", "product": {
                "product_id": "tea", "title": "Longjing green tea 250 g, new crop",
                "head_img": ["https://mmecimage.cn/p/wxlocal/tea.jpg"], "third_cat_id": 6153,
                "brand_id": 2100000000,
                "skus": [{"sku_id": "tea-250g", "price": 1990, "stock": 10}]
            }}),
        )
        .await;
    assert_eq!(s, 200, "the upsert must adopt WeChat's product: {v}");
    assert_eq!(v["product"]["wx_product_id"], wx_id, "{v}");
    assert_eq!(v["product"]["audit"], "AUDITING", "{v}");
    let (s, v) = cb
        .admin(
            "/admin/catalogSync",
            &json!({"action": "get", "product_id": "tea"}),
        )
        .await;
    assert_eq!(s, 200, "stored: {v}");
    assert_eq!(v["product"]["wx_product_id"], wx_id, "{v}");
    let (_, adds) = ca.get("/sandbox/_control/calls?path=shop/spu/add").await;
    let (_, updates) = ca.get("/sandbox/_control/calls?path=shop/spu/update").await;
    assert_eq!(
        adds["calls"].as_array().unwrap().len(),
        2,
        "A's seed, B's refused add: {adds}"
    );
    assert_eq!(updates["calls"].as_array().unwrap().len(), 1, "{updates}");
    b.stop();
    a.stop();
}

/// The merchant gets a WeChat-hosted image through `wechat` `shop/img/upload`: WeChat takes
/// that call as multipart form fields, not JSON, so it goes out as such and answers
/// `img_info.temp_img_url` (it used to go out as JSON, which WeChat cannot read). Binary
/// uploads, which cannot travel in the JSON API, are refused with what to do instead.
#[tokio::test]
async fn an_image_is_uploaded_to_wechat_by_url() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let upload = |body: Value| {
        let c = c.clone();
        async move {
            c.admin(
                "/admin/catalogSync",
                &json!({"action": "wechat", "api": "shop/img/upload", "body": body}),
            )
            .await
        }
    };
    let (s, v) = upload(json!({
        "resp_type": 1, "upload_type": 1, "img_url": "https://example.com/kettle.jpg"
    }))
    .await;
    assert_eq!(s, 200, "{v}");
    let url = v["img_info"]["temp_img_url"].as_str().unwrap_or_default();
    assert!(url.starts_with("https://mmecimage.cn/p/"), "{v}");
    let (_, calls) = c.get("/sandbox/_control/calls?path=shop/img/upload").await;
    assert_eq!(
        calls["calls"][0]["img_url"], "https://example.com/kettle.jpg",
        "{calls}"
    );

    let (s, v) = upload(json!({"resp_type": 0, "upload_type": 0})).await;
    assert_eq!(s, 400, "{v}");
    assert!(v["message"].as_str().unwrap().contains("img_url"), "{v}");
    r.stop();
}
