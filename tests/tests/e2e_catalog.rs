#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! `catalogSync` upserts when what we store and what WeChat holds disagree: each case must be
//! repaired by the upsert itself, never refused forever.

use serde_json::{json, Value};

#[path = "reliability_support.rs"]
mod support;
use support::{buy_tea, get_product, stack_with, tea, Client};

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
    assert!(first_id.is_u64(), "WeChat's product id is kept: {v}");

    let (s, v) = c
        .admin("/admin/catalogSync", &kettle("Kettle 1 L, steel"))
        .await;
    assert_eq!(s, 200, "an edit under audit must go through: {v}");
    assert_eq!(v["product"]["audit"], "AUDITING", "{v}");
    assert_eq!(v["product"]["title"], "Kettle 1 L, steel", "{v}");
    assert!(v["product"]["wx_product_id"].is_u64(), "{v}");
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
        schedule_every: None,
        metrics: Default::default(),
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
    assert_eq!(v["code"], "BAD_IMG_UPLOAD", "{v}");
    let message = v["message"].as_str().unwrap();
    assert!(
        message.contains("upload_type must be 1 (by img_url), not 0")
            && message.contains("put the image at a URL WeChat can fetch"),
        "the refusal says what to do instead: {v}"
    );
    assert_eq!(
        r.sandbox.calls("shop/img/upload").len(),
        1,
        "nothing sent to WeChat"
    );
    r.stop();
}

/// At WeChat, `spu/update` writes the draft; the approved (online) version stays on sale while
/// the draft is reviewed and stays as it was if the draft is rejected. An edit must therefore
/// never take an approved product off sale here: buyers keep buying the approved version, at
/// its price, until the edit is approved. A repeat of what is stored uploads nothing, and a
/// price change of an approved SKU needs no audit (`spu/update_without_audit`).
#[tokio::test]
async fn an_edit_keeps_the_approved_product_on_sale_until_its_verdict() {
    let r = stack_with(&[]).await;
    r.sandbox.set_auto_audit(false);
    let c = Client::new(&r);
    let (token, _) = c.login("buyer").await;
    const TITLE: &str = "Longjing green tea 250 g"; // as seeded, approved and listed

    // The same product again: nothing to review, nothing uploaded, still on sale.
    let (s, v) = c.admin("/admin/catalogSync", &tea(TITLE, 1990, 1000)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["product"]["audit"], "APPROVED", "{v}");
    assert!(v["product"]["edit"].is_null(), "{v}");
    assert!(r.sandbox.calls("shop/spu/update").is_empty());
    assert_eq!(buy_tea(&c, &token).await, Ok(1990));

    // Only the price: no audit, and the new price is charged at once.
    let stock = c.stock().await;
    let (s, v) = c
        .admin("/admin/catalogSync", &tea(TITLE, 1800, stock as u32))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["product"]["audit"], "APPROVED", "{v}");
    assert!(r.sandbox.calls("shop/spu/update").is_empty());
    // The order above also sent its stock (the stock mirror: `stock_num` only); the
    // repricing is the one call carrying a price.
    let without: Vec<_> = r
        .sandbox
        .calls("shop/spu/update_without_audit")
        .into_iter()
        .filter(|w| !w["skus"][0]["sale_price"].is_null())
        .collect();
    assert_eq!(without.len(), 1, "{without:?}");
    assert_eq!(without[0]["skus"][0]["sale_price"], 1800, "{without:?}");
    assert_eq!(buy_tea(&c, &token).await, Ok(1800));

    // A new title and price: under review, while the approved version sells on.
    let stock = c.stock().await;
    let (s, v) = c
        .admin(
            "/admin/catalogSync",
            &tea("Longjing tea 250 g, spring", 2500, stock as u32),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["product"]["audit"], "APPROVED", "{v}");
    assert_eq!(v["product"]["edit"]["audit"], "AUDITING", "{v}");
    assert_eq!(r.sandbox.calls("shop/spu/update").len(), 1);
    assert_eq!(buy_tea(&c, &token).await, Ok(1800));

    // Rejected: the approved version still sells; the reason is there for the merchant.
    let (s, v) = c
        .post(
            "/sandbox/_control/audit",
            None,
            &json!({"out_product_id": "tea", "approve": false, "reason": "title misleading"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    support::eventually("the rejection", std::time::Duration::from_secs(10), || {
        let c = c.clone();
        async move { get_product(&c, "tea").await["edit"]["audit"] == "REJECTED" }
    })
    .await;
    let p = get_product(&c, "tea").await;
    assert_eq!(p["edit"]["reject_reason"], "title misleading", "{p}");
    assert_eq!(p["audit"], "APPROVED", "{p}");
    assert_eq!(p["title"], TITLE, "{p}");
    assert_eq!(buy_tea(&c, &token).await, Ok(1800));

    // A corrected edit, approved: it replaces the version on sale.
    let stock = c.stock().await;
    let (s, v) = c
        .admin(
            "/admin/catalogSync",
            &tea("Longjing green tea 250 g, spring", 2100, stock as u32),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["product"]["edit"]["audit"], "AUDITING", "{v}");
    // A verdict push is told from a replay by its ids, status and `CreateTime` (seconds):
    // let this approval be stamped after the seed's, as any real one is.
    c.post(
        "/sandbox/_control/clock",
        None,
        &json!({"advance_ms": 2000}),
    )
    .await;
    let (s, v) = c
        .post(
            "/sandbox/_control/audit",
            None,
            &json!({"out_product_id": "tea", "approve": true}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    support::eventually("the approval", std::time::Duration::from_secs(10), || {
        let c = c.clone();
        async move { get_product(&c, "tea").await["edit"].is_null() }
    })
    .await;
    let p = get_product(&c, "tea").await;
    assert_eq!(p["title"], "Longjing green tea 250 g, spring", "{p}");
    assert_eq!(p["audit"], "APPROVED", "{p}");
    assert_eq!(buy_tea(&c, &token).await, Ok(2100));
    r.stop();
}

/// The price in an edit under review is not on sale yet: a stock change made meanwhile (the
/// same edit with another stock, as a merchant's tool re-sends the whole product) changes the
/// stock, here and at WeChat, and nothing else. It used to put the edit's price on sale with
/// it, here and at WeChat, before any verdict.
#[tokio::test]
async fn a_stock_change_during_an_edits_review_keeps_the_approved_price() {
    let r = stack_with(&[]).await;
    r.sandbox.set_auto_audit(false);
    let c = Client::new(&r);
    let (token, _) = c.login("buyer").await;
    let stock = c.stock().await as u32;
    const EDIT: &str = "Longjing tea 250 g, spring";
    let (s, v) = c.admin("/admin/catalogSync", &tea(EDIT, 2500, stock)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["product"]["edit"]["audit"], "AUDITING", "{v}");
    assert_eq!(buy_tea(&c, &token).await, Ok(1990));

    let stock = c.stock().await as u32;
    let (s, v) = c
        .admin("/admin/catalogSync", &tea(EDIT, 2500, stock + 50))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["product"]["edit"]["audit"], "AUDITING", "{v}");
    assert_eq!(v["product"]["skus"][0]["stock"], stock + 50, "{v}");
    assert_eq!(v["product"]["skus"][0]["price"], 1990, "{v}");
    let without = r.sandbox.calls("shop/spu/update_without_audit");
    let last = without.last().expect("the stock went to WeChat");
    assert_eq!(last["skus"][0]["stock_num"], stock + 50, "{without:?}");
    assert!(
        last["skus"][0].get("sale_price").is_none(),
        "the edit's price went on sale at WeChat: {without:?}"
    );
    assert_eq!(buy_tea(&c, &token).await, Ok(1990));
    r.stop();
}

/// A price change of one SKU while an edit that reprices another is under review: only the
/// SKU the merchant repriced now changes price. The other used to take its price from the edit
/// here but not at WeChat, so WeChat refused every order of it (`shop/order/add`: the sale
/// price differs from the product's).
#[tokio::test]
async fn repricing_one_sku_during_an_edits_review_leaves_the_others_alone() {
    let r = stack_with(&[]).await;
    r.sandbox.set_auto_audit(false);
    let c = Client::new(&r);
    let (token, _) = c.login("buyer").await;
    let pot = |title: &str, small: i64, large: i64| {
        json!({"action": "upsert", "product": {
            "product_id": "pot", "title": title,
            "head_img": ["https://mmecimage.cn/p/wxlocal/pot.jpg"], "third_cat_id": 6153,
            "brand_id": 2100000000,
            "skus": [{"sku_id": "pot-s", "price": small, "stock": 10},
                     {"sku_id": "pot-l", "price": large, "stock": 10}]
        }})
    };
    let (s, v) = c
        .admin("/admin/catalogSync", &pot("Clay pot", 1000, 2000))
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = c
        .post(
            "/sandbox/_control/audit",
            None,
            &json!({"out_product_id": "pot", "approve": true}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    support::eventually("the approval", std::time::Duration::from_secs(10), || {
        let c = c.clone();
        async move { get_product(&c, "pot").await["audit"] == "APPROVED" }
    })
    .await;
    let (s, v) = c
        .admin(
            "/admin/catalogSync",
            &json!({"action": "listing", "product_id": "pot"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let buy = |sku: &'static str| {
        let (c, token) = (c.clone(), token.clone());
        async move {
            let (s, v) = c
                .post(
                    "/fn/unifiedOrder",
                    Some(&token),
                    &json!({"items": [{"product_id": "pot", "sku_id": sku, "quantity": 1}],
                        "address": {"receiver_name": "A", "detailed_address": "1 Road",
                                    "tel_number": "13800000000"}}),
                )
                .await;
            if s == 200 {
                Ok(v["total_fee"].as_i64().unwrap())
            } else {
                Err(v)
            }
        }
    };
    // An edit: new title, the small pot dearer. Under review; the approved version sells.
    let (s, v) = c
        .admin("/admin/catalogSync", &pot("Clay pot, glazed", 1200, 2000))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["product"]["edit"]["audit"], "AUDITING", "{v}");
    assert_eq!(buy("pot-s").await, Ok(1000));

    // The large pot repriced meanwhile: no audit for that, and only that.
    let (s, v) = c
        .admin("/admin/catalogSync", &pot("Clay pot, glazed", 1200, 2200))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["product"]["edit"]["audit"], "AUDITING", "{v}");
    assert_eq!(buy("pot-l").await, Ok(2200));
    assert_eq!(buy("pot-s").await, Ok(1000));
    r.stop();
}

/// WeChat shows an approved SKU's stock (a Channels live room will not list it at 0): a stock
/// change reaches WeChat, without an audit.
#[tokio::test]
async fn a_stock_change_reaches_wechat_without_an_audit() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    c.set_stock(0).await;
    let calls = r.sandbox.calls("shop/spu/update_without_audit");
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["skus"][0]["out_sku_id"], "tea-250g", "{calls:?}");
    assert_eq!(calls[0]["skus"][0]["stock_num"], 0, "{calls:?}");
    let p = sandbox_product(&c, "tea").await;
    assert_eq!(p["skus"][0]["stock_num"], 0, "{p}");
    assert!(r.sandbox.calls("shop/spu/update").is_empty());
    assert_eq!(get_product(&c, "tea").await["audit"], "APPROVED");
    r.stop();
}

/// WeChat can push its verdict before it answers `spu/update` (a quick audit, a slow answer).
/// The verdict must find the submission it decides: the edit goes on sale, instead of the
/// verdict landing on the version before and the edit staying under audit for good.
#[tokio::test]
async fn a_verdict_that_overtakes_wechats_answer_is_not_lost() {
    let r = stack_with(&[]).await; // the sandbox audits by itself, in a millisecond
    let c = Client::new(&r);
    // The seed's approval was pushed this second; a verdict push is told from a replay by its
    // ids, status and `CreateTime` (seconds), so let this one be stamped later, as any is.
    c.post(
        "/sandbox/_control/clock",
        None,
        &json!({"advance_ms": 2000}),
    )
    .await;
    c.fault(json!({"path": "shop/spu/update", "mode": "slow", "delay_ms": 1500, "count": 1}))
        .await;
    let stock = c.stock().await;
    let (s, v) = c
        .admin(
            "/admin/catalogSync",
            &tea("Longjing green tea 250 g, spring", 2100, stock as u32),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let pushed = r
        .sandbox
        .pushed_events()
        .iter()
        .filter(|e| e["Event"] == "open_product_spu_audit")
        .count();
    assert_eq!(pushed, 2, "the verdict came before the answer");
    support::eventually(
        "the edit approved",
        std::time::Duration::from_secs(5),
        || {
            let c = c.clone();
            async move { get_product(&c, "tea").await["edit"].is_null() }
        },
    )
    .await;
    let p = get_product(&c, "tea").await;
    assert_eq!(p["title"], "Longjing green tea 250 g, spring", "{p}");
    let (token, _) = c.login("buyer").await;
    assert_eq!(buy_tea(&c, &token).await, Ok(2100));
    r.stop();
}

/// An edit under audit withdraws that audit (`spu/del_audit`) and submits the new version; if
/// that submission fails, WeChat has nothing under audit, and the product must say so — the
/// new version `DRAFT`, with the error — instead of `AUDITING` for good. The same upsert again
/// submits it.
#[tokio::test]
async fn a_failed_resubmission_after_a_withdrawal_leaves_the_draft_unsubmitted() {
    let r = stack_with(&[]).await;
    r.sandbox.set_auto_audit(false);
    let c = Client::new(&r);
    let (s, v) = c.admin("/admin/catalogSync", &kettle("Kettle 1 L")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["product"]["audit"], "AUDITING", "{v}");

    // WeChat refuses the update while the audit runs (1000002, as it does), the withdrawal
    // goes through, and the update after it fails (-1, system busy).
    c.fault(json!({"path": "shop/spu/update", "mode": "errcode", "errcode": 1000002, "count": 1}))
        .await;
    c.fault(json!({"path": "shop/spu/update", "mode": "errcode", "errcode": -1, "count": 1}))
        .await;
    let (s, v) = c
        .admin("/admin/catalogSync", &kettle("Kettle 1 L, steel"))
        .await;
    assert_ne!(s, 200, "the merchant hears of the failure: {v}");
    assert_eq!(r.sandbox.calls("shop/spu/del_audit").len(), 1);
    assert_eq!(sandbox_product(&c, "kettle").await["edit_status"], 1);
    let p = get_product(&c, "kettle").await;
    assert_eq!(p["audit"], "DRAFT", "{p}");
    assert_eq!(p["title"], "Kettle 1 L, steel", "{p}");
    assert!(
        p["submit_error"].as_str().is_some_and(|e| e.contains("-1")),
        "{p}"
    );

    let (s, v) = c
        .admin("/admin/catalogSync", &kettle("Kettle 1 L, steel"))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["product"]["audit"], "AUDITING", "{v}");
    assert!(v["product"]["submit_error"].is_null(), "{v}");
    let wx = sandbox_product(&c, "kettle").await;
    assert_eq!(wx["edit_status"], 2, "{wx}");
    assert_eq!(wx["title"], "Kettle 1 L, steel", "{wx}");
    r.stop();
}

/// `products` answers 100 at a time with a `next` cursor; passing it back gives the next page,
/// so a catalog of any size can be read to its end.
#[tokio::test]
async fn the_product_list_pages_past_100() {
    let r = stack_with(&[]).await;
    r.sandbox.set_auto_audit(false);
    let c = Client::new(&r);
    for i in 0..101 {
        let (s, v) = c
            .admin(
                "/admin/catalogSync",
                &json!({"action": "upsert", "product": {
                    "product_id": format!("p{i:03}"), "title": format!("Product {i}"),
                    "head_img": ["https://mmecimage.cn/p/wxlocal/p.jpg"], "third_cat_id": 6153,
                    "brand_id": 2100000000,
                    "skus": [{"sku_id": format!("p{i:03}-1"), "price": 100, "stock": 1}]
                }}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut next = Value::Null;
    for _ in 0..5 {
        let (s, v) = c
            .admin(
                "/admin/catalogSync",
                &json!({"action": "products", "next": next}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        for p in v["products"].as_array().unwrap() {
            assert!(
                seen.insert(p["product_id"].as_str().unwrap().to_owned()),
                "{p} twice"
            );
        }
        next = v["next"].clone();
        if next.is_null() {
            break;
        }
    }
    assert!(next.is_null(), "the list ends");
    assert_eq!(seen.len(), 102, "the seeded tea and 101 more");
    assert!(seen.contains("tea") && seen.contains("p000") && seen.contains("p100"));
    r.stop();
}

/// WeChat does not promise to deliver a push. An audit verdict whose push never came is found
/// by the schedule: once a submission has waited past its grace period, WeChat's draft is read
/// and its verdict applied. One lost push used to leave the edit under audit for good.
#[tokio::test]
async fn a_verdict_whose_push_never_came_is_found_by_the_schedule() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    // WeChat approves tea's edit; its push is lost.
    support::tea_edit_approved_push_lost(&r, &c).await;
    // Within the grace period the schedule leaves it to the push.
    wxshop::handlers::order_sync::on_schedule(
        &r.app,
        wxshop::time::Deadline::after(wxshop::handlers::order_sync::LOCAL_SCHEDULE_BUDGET),
    )
    .await;
    assert_eq!(get_product(&c, "tea").await["edit"]["audit"], "AUDITING");
    r.app.clock.advance(11 * 60_000);
    let report = wxshop::handlers::order_sync::on_schedule(
        &r.app,
        wxshop::time::Deadline::after(wxshop::handlers::order_sync::LOCAL_SCHEDULE_BUDGET),
    )
    .await;
    let p = get_product(&c, "tea").await;
    assert!(p["edit"].is_null(), "still under audit: {p}");
    assert_eq!(p["title"], "Longjing green tea 250 g, autumn", "{p}");
    assert_eq!(p["audit"], "APPROVED", "{p}");
    assert_eq!(report["audits"]["decided"], 1, "{report}");
}

/// GIVEN a catalog of 150 products, 50 of them drafts under audit WeChat cannot find (they
/// never reached it: `spu/get` answers "product not found", so no verdict ever comes), listed
/// before `tea`, whose edit WeChat approved with its push lost WHEN the schedule runs twice
/// THEN it reads only the 51 products under audit, asks about the 50 once (they then wait
/// their turn) and applies `tea`'s verdict on the second run. The sweep used to read the whole
/// catalog every run and ask about the first 50 in listing order: `tea`'s edit stayed under
/// audit for good.
#[tokio::test]
async fn drafts_wechat_never_decides_do_not_starve_the_audit_sweep() {
    use wxshop::domain::{AuditStatus, ProductId};
    use wxshop::handlers::order_sync::{on_schedule, LOCAL_SCHEDULE_BUDGET};
    use wxshop::store::repo::{self, Batch};
    use wxshop::time::Deadline;
    let r = stack_with(&[]).await;
    r.sandbox.set_auto_audit(false);
    let c = Client::new(&r);
    let stock = c.stock().await;
    let (s, v) = c
        .admin(
            "/admin/catalogSync",
            &tea("Longjing green tea 250 g, spring", 2300, stock as u32),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["product"]["edit"]["audit"], "AUDITING", "{v}");
    r.sandbox.set_push_url(None);
    let (s, v) = c
        .post(
            "/sandbox/_control/audit",
            None,
            &json!({"out_product_id": "tea", "approve": true}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    // 50 drafts under audit WeChat has never seen (ids before "tea"), and 99 approved
    // products (after it).
    let store = r.app.store.as_ref();
    let tea_stored = repo::get_product(store, &ProductId::parse("tea".to_owned()).unwrap())
        .await
        .unwrap()
        .unwrap()
        .value;
    let now = r.app.clock.now_ms();
    let mut batch = Batch::new();
    for i in 0..149 {
        let mut p = tea_stored.clone();
        p.edit = None;
        p.wx_product_id = None;
        if i < 50 {
            p.product_id = ProductId::parse(format!("a{i:03}")).unwrap();
            p.audit = AuditStatus::Auditing;
            p.updated_at_ms = now - 3_600_000;
        } else {
            p.product_id = ProductId::parse(format!("z{i:03}")).unwrap();
        }
        batch.create_product(&p);
        if batch.len() == 50 {
            std::mem::take(&mut batch).commit(store).await.unwrap();
        }
    }
    batch.commit(store).await.unwrap();
    r.app.clock.advance(11 * 60_000);

    let schedule = || on_schedule(&r.app, Deadline::after(LOCAL_SCHEDULE_BUDGET));
    let first = schedule().await;
    let second = schedule().await;
    let p = get_product(&c, "tea").await;
    assert!(
        p["edit"].is_null(),
        "still under audit: {p} {first} {second}"
    );
    assert_eq!(p["title"], "Longjing green tea 250 g, spring", "{p}");
    assert_eq!(p["audit"], "APPROVED", "{p}");
    assert_eq!(
        first["audits"],
        json!({"checked": 51, "asked": 50, "decided": 0, "reindexed": 0}),
        "{first}"
    );
    assert_eq!(
        second["audits"],
        json!({"checked": 51, "asked": 1, "decided": 1, "reindexed": 0}),
        "{second}"
    );
    assert_eq!(
        get_product(&c, "a000").await["audit"],
        "AUDITING",
        "WeChat has no verdict for it"
    );
    r.stop();
}

/// GIVEN a catalog of 300 approved products and one edit under audit WHEN the schedule runs
/// THEN its audit sweep reads that one product, not the catalog: an edit keeps the approved
/// product's own status, and the sweep used to list every product every run to find such
/// edits — its reads grew with the catalog.
#[tokio::test]
async fn the_audit_sweep_reads_only_what_is_under_audit() {
    use wxshop::domain::ProductId;
    use wxshop::handlers::order_sync::{on_schedule, LOCAL_SCHEDULE_BUDGET};
    use wxshop::store::repo::{self, Batch};
    use wxshop::time::Deadline;
    let r = stack_with(&[]).await;
    r.sandbox.set_auto_audit(false);
    let c = Client::new(&r);
    let store = r.app.store.as_ref();
    let tea_stored = repo::get_product(store, &ProductId::parse("tea".to_owned()).unwrap())
        .await
        .unwrap()
        .unwrap()
        .value;
    for chunk in 0..3 {
        let mut batch = Batch::new();
        for i in 0..100 {
            let mut p = tea_stored.clone();
            p.product_id = ProductId::parse(format!("p{chunk}{i:02}")).unwrap();
            batch.create_product(&p);
        }
        batch.commit(store).await.unwrap();
    }
    let stock = c.stock().await;
    let (s, v) = c
        .admin(
            "/admin/catalogSync",
            &tea("Longjing green tea 250 g, winter", 2300, stock as u32),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["product"]["edit"]["audit"], "AUDITING", "{v}");
    // (The first runs also index again, 100 a run until done, what was stored before the
    // index followed drafts: counted as `reindexed`, not as the sweep's reads.)
    let report = on_schedule(&r.app, Deadline::after(LOCAL_SCHEDULE_BUDGET)).await;
    assert_eq!(report["audits"]["checked"], 1, "{report}");
    assert_eq!(report["audits"]["asked"], 0, "within the grace: {report}");
    r.stop();
}

/// GIVEN an edit under audit stored as before the index followed drafts (indexed under the
/// approved product's own status, where the audit sweep no longer reads), whose approval's
/// push was lost WHEN the schedule runs past the grace period THEN it indexes the product
/// again and applies the verdict: an upgrade leaves no edit under audit for good — also when
/// the re-indexing kept a cursor the store no longer takes.
#[tokio::test]
async fn an_edit_stored_before_the_index_followed_drafts_is_still_swept() {
    use wxshop::store::{Expect, Kind, Write};
    let r = stack_with(&[]).await;
    r.sandbox.set_auto_audit(false);
    let c = Client::new(&r);
    let stock = c.stock().await;
    let (s, v) = c
        .admin(
            "/admin/catalogSync",
            &tea("Longjing green tea 250 g, old", 2300, stock as u32),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    r.sandbox.set_push_url(None);
    let (s, v) = c
        .post(
            "/sandbox/_control/audit",
            None,
            &json!({"out_product_id": "tea", "approve": true}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let store = r.app.store.as_ref();
    let mut rec = store.get(Kind::Product, "tea").await.unwrap().unwrap();
    // On sale (approved, listed) with its edit under audit: the sweep's on-sale partition.
    assert_eq!(rec.status.as_deref(), Some("ON_SALE_AUDITING"));
    let version = rec.version;
    rec.status = Some("APPROVED".into());
    rec.version += 1;
    store
        .write(vec![Write::put(rec, Expect::Version(version))])
        .await
        .unwrap();
    // The re-indexing left half done by a wxlocal whose SQLite cursors were a bare `sort:id`
    // (base64 of `0:a`): such a cursor is refused now, and the re-indexing starts again.
    let until = r.app.clock.now_secs() + 3600;
    let kept = "migration/product-audit-index";
    assert!(wxshop::store::kv::put_if(store, kept, "MDph", until, None)
        .await
        .unwrap());
    r.app.clock.advance(11 * 60_000);
    let report = wxshop::handlers::order_sync::on_schedule(
        &r.app,
        wxshop::time::Deadline::after(wxshop::handlers::order_sync::LOCAL_SCHEDULE_BUDGET),
    )
    .await;
    let p = get_product(&c, "tea").await;
    assert!(p["edit"].is_null(), "still under audit: {p} {report}");
    assert_eq!(p["title"], "Longjing green tea 250 g, old", "{p}");
    assert_eq!(report["audits"]["reindexed"], 1, "{report}");
    r.stop();
}

/// A product the merchant delisted is not put back on sale by a push that says "listed"
/// (`open_product_spu_status_update`, status 5) unless WeChat's own record of the product
/// (`spu/get`) says so: in plaintext mode the push's signature does not cover its body, so a
/// body can ride on a signature once seen, and a late push can describe an earlier state. It
/// used to re-list the product here at once, selling what the merchant had taken off sale.
#[tokio::test]
async fn a_listed_push_wechat_does_not_confirm_lists_nothing() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (token, _) = c.login("buyer").await;
    let (s, v) = c
        .admin(
            "/admin/catalogSync",
            &json!({"action": "delisting", "product_id": "tea"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(sandbox_product(&c, "tea").await["status"], 11);
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let query =
        wxshop::push::PushQuery::signed("localpushtoken", &ts.to_string(), "n1").to_query_string();
    let forged = json!({"ToUserName": "gh_x", "FromUserName": "oX", "CreateTime": ts,
        "MsgType": "event", "Event": "open_product_spu_status_update",
        "OpenProductSpuStatusUpdate": {"out_product_id": "tea", "product_id": 1, "status": 5,
                                       "reason": ""}});
    let (s, text) = c
        .raw(&format!("/callbacks/wechat?{query}"), forged.to_string())
        .await;
    assert!(s == 200 && text == "success", "{s} {text}");
    assert_eq!(get_product(&c, "tea").await["listing"], "DELISTED");
    let refused = buy_tea(&c, &token).await.unwrap_err();
    assert_eq!(refused["code"], "NOT_FOR_SALE", "{refused}");

    // The platform's own delisting (13) and restoring (5) of a product WeChat lists: the
    // restore is confirmed by WeChat's record, and the product sells again.
    let (s, v) = c
        .admin(
            "/admin/catalogSync",
            &json!({"action": "listing", "product_id": "tea"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    for (status, at, listing) in [(13, ts + 1, "DELISTED"), (5, ts + 2, "LISTED")] {
        let query = wxshop::push::PushQuery::signed("localpushtoken", &at.to_string(), "n2")
            .to_query_string();
        let mut push = forged.clone();
        push["CreateTime"] = json!(at);
        push["OpenProductSpuStatusUpdate"]["status"] = json!(status);
        let (s, text) = c
            .raw(&format!("/callbacks/wechat?{query}"), push.to_string())
            .await;
        assert!(s == 200 && text == "success", "{s} {text}");
        assert_eq!(get_product(&c, "tea").await["listing"], listing);
    }
    assert_eq!(buy_tea(&c, &token).await, Ok(1990));
    r.stop();
}

/// Stopping sales does not wait for WeChat: a delisting WeChat fails to take still stops
/// orders here at once (every order goes through unifiedOrder), and says that WeChat still
/// lists the product; the same call again delists it there too. It used to leave the product
/// on sale here until WeChat answered.
#[tokio::test]
async fn a_delisting_wechat_fails_still_stops_sales_here() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (token, _) = c.login("buyer").await;
    assert!(buy_tea(&c, &token).await.is_ok());
    c.post(
        "/sandbox/_control/faults",
        None,
        &json!({"path": "shop/spu/delisting", "mode": "http500", "count": 1}),
    )
    .await;
    let delist = json!({"action": "delisting", "product_id": "tea"});
    let (s, v) = c.admin("/admin/catalogSync", &delist).await;
    assert!(s >= 500, "{s} {v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("WeChat still lists it"),
        "{v}"
    );
    let refused = buy_tea(&c, &token).await.unwrap_err();
    assert_eq!(get_product(&c, "tea").await["listing"], "DELISTED");
    assert!(
        refused["message"].as_str().unwrap().contains("not listed"),
        "{refused}"
    );
    let (s, v) = c.admin("/admin/catalogSync", &delist).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(r.sandbox.calls("shop/spu/delisting").len(), 2);
}

/// The pass-throughs that touch what we keep keep it true: a review withdrawn with
/// `shop/spu/del_audit` leaves the edit a draft not submitted (it used to wait under audit for
/// a verdict that never comes), and `shop/cat/get` (~2 MB, rate-limited) is answered from the
/// hour-long category cache instead of asking WeChat each time.
#[tokio::test]
async fn pass_throughs_keep_what_we_hold_true() {
    let r = stack_with(&[]).await;
    r.sandbox.set_auto_audit(false);
    let c = Client::new(&r);
    let stock = c.stock().await;
    let (s, v) = c
        .admin(
            "/admin/catalogSync",
            &tea("Longjing green tea 250 g, winter", 2300, stock as u32),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["product"]["edit"]["audit"], "AUDITING", "{v}");
    let (s, v) = c
        .admin(
            "/admin/catalogSync",
            &json!({"action": "wechat", "api": "shop/spu/del_audit", "body": {"out_product_id": "tea"}}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let p = get_product(&c, "tea").await;
    assert_eq!(p["edit"]["audit"], "DRAFT", "{p}");
    assert_eq!(p["audit"], "APPROVED", "the version on sale stays: {p}");

    let cat = json!({"action": "wechat", "api": "shop/cat/get", "body": {}});
    let (s, first) = c.admin("/admin/catalogSync", &cat).await;
    assert_eq!(s, 200, "{first}");
    assert!(
        first["third_cat_list"]
            .as_array()
            .is_some_and(|l| !l.is_empty()),
        "{first}"
    );
    let asked = r.sandbox.calls("shop/cat/get").len();
    let (s, second) = c.admin("/admin/catalogSync", &cat).await;
    assert_eq!(s, 200, "{second}");
    assert_eq!(second["third_cat_list"], first["third_cat_list"]);
    assert_eq!(
        r.sandbox.calls("shop/cat/get").len(),
        asked,
        "asked WeChat again"
    );
}

/// A shop that sold with the trading component off, then turned it on: its products are ours
/// alone (sellable, never uploaded). Upserting one again must upload it to WeChat, as any
/// version that never reached WeChat is; it used to be taken for "nothing changed", so WeChat
/// never had it and could neither list it nor take its orders.
#[tokio::test]
async fn a_product_made_with_the_component_off_is_uploaded_once_it_is_on() {
    use std::time::Duration;
    use wxlocal::gateway::{start, Options};
    let dir = support::temp_dir("component-on");
    let store = format!("sqlite:{}/wxshop.db", dir.display());
    let stack = |component: &str| {
        let store = store.clone();
        let mut overrides = std::collections::HashMap::new();
        overrides.insert("WX_TRADING_COMPONENT".to_owned(), component.to_owned());
        async move {
            start(Options {
                addr: "127.0.0.1:0".parse().unwrap(),
                store: Some(store),
                seed: true,
                time_scale: 0.001,
                overrides,
                use_env: false,
                relay_every: Duration::from_millis(20),
                schedule_every: None,
                metrics: Default::default(),
            })
            .await
            .expect("stack starts")
        }
    };
    let pot = json!({"action": "upsert", "product": {
        "product_id": "pot", "title": "Clay pot",
        "head_img": ["https://mmecimage.cn/p/wxlocal/pot.jpg"], "third_cat_id": 6153,
        "brand_id": 2100000000,
        "skus": [{"sku_id": "pot-s", "price": 1000, "stock": 10}]
    }});
    let r = stack("off").await;
    let c = Client::new(&r);
    let (s, v) = c.admin("/admin/catalogSync", &pot).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["product"]["audit"], "APPROVED", "{v}");
    let (s, v) = c
        .admin(
            "/admin/catalogSync",
            &json!({"action": "listing", "product_id": "pot"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    r.stop();
    drop(r); // lets go of the store's lock

    let r = stack("always").await;
    let c = Client::new(&r);
    let (s, v) = c.admin("/admin/catalogSync", &pot).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        r.sandbox
            .calls("shop/spu/add")
            .iter()
            .filter(|a| a["out_product_id"] == "pot")
            .count(),
        1,
        "the product went to WeChat: {v}"
    );
    support::eventually("WeChat's approval", Duration::from_secs(10), || {
        let c = c.clone();
        async move {
            get_product(&c, "pot").await["wx_product_id"].is_u64()
                && get_product(&c, "pot").await["edit"].is_null()
        }
    })
    .await;
    let (s, v) = c
        .admin(
            "/admin/catalogSync",
            &json!({"action": "listing", "product_id": "pot"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (token, _) = c.login("buyer").await;
    let (s, v) = c
        .post(
            "/fn/unifiedOrder",
            Some(&token),
            &json!({"items": [{"product_id": "pot", "sku_id": "pot-s", "quantity": 1}],
                "address": {"receiver_name": "A", "detailed_address": "1 Road",
                            "tel_number": "13800000000"}}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["total_fee"], 1000, "{v}");
    r.stop();
    let _ = std::fs::remove_dir_all(dir);
}

/// A SKU's `market_price` (the crossed-out price beside the price) is an `Int` at WeChat, as
/// the price is. GIVEN one above 2,147,483,647 fen, or below zero, THEN the upsert is refused
/// as a price past the limit is (400 `BAD_PRICE`, naming `market_price`), for a product on
/// sale and a new one alike, and nothing changes: not ours, and WeChat is not asked. One at
/// the limit is taken. Past it used to be stored and sent, for WeChat to refuse.
#[tokio::test]
async fn a_market_price_wechat_cannot_take_is_refused_and_changes_nothing() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let before = get_product(&c, "tea").await;
    let writes = || {
        [
            "shop/spu/add",
            "shop/spu/update",
            "shop/spu/update_without_audit",
        ]
        .iter()
        .map(|p| r.sandbox.calls(p).len())
        .sum::<usize>()
    };
    let written = writes();
    let tea_at = |market_price: i64| {
        let mut v = tea("Tea", 1990, 100);
        v["product"]["skus"][0]["market_price"] = json!(market_price);
        v
    };
    let kettle_at = |market_price: i64| {
        let mut v = kettle("Kettle");
        v["product"]["skus"][0]["market_price"] = json!(market_price);
        v
    };
    let max = i64::from(i32::MAX);
    for market_price in [max + 1, 3_000_000_000, -1] {
        for (what, upsert) in [
            ("tea", tea_at(market_price)),
            ("kettle", kettle_at(market_price)),
        ] {
            let (s, v) = c.admin("/admin/catalogSync", &upsert).await;
            assert_eq!(
                (s, v["code"].as_str()),
                (400, Some("BAD_PRICE")),
                "{what} at {market_price}: {v}"
            );
            assert!(
                v["message"].as_str().unwrap().contains("market_price"),
                "{v}"
            );
        }
    }
    let after = get_product(&c, "tea").await;
    assert_eq!(after["skus"], before["skus"], "{after}");
    assert_eq!(after["edit"], before["edit"], "no edit submitted: {after}");
    let (s, v) = c
        .admin(
            "/admin/catalogSync",
            &json!({"action": "get", "product_id": "kettle"}),
        )
        .await;
    assert_eq!(s, 404, "no kettle was made: {v}");
    assert_eq!(writes(), written, "WeChat was not asked");
    // At the limit: taken, and WeChat is told.
    let (s, v) = c.admin("/admin/catalogSync", &tea_at(max)).await;
    assert_eq!(s, 200, "{v}");
    assert!(writes() > written);
    r.stop();
}

// ------------------------------------------------------------ the shop (`/fn/catalogSync`)

/// `POST /fn/catalogSync` as the buyer's phone sends it: (status, answer).
async fn shop(c: &Client, token: &str, body: Value) -> (u16, Value) {
    c.post("/fn/catalogSync", Some(token), &body).await
}

/// The products on sale, read page by page (`limit` a page) to the end: the ids in order, and
/// each product as shown. Every page holds at most `limit`; the walk is bounded.
async fn shop_walk(c: &Client, token: &str, limit: u64) -> Vec<Value> {
    let mut all = Vec::new();
    let mut cursor = Value::Null;
    for _ in 0..50 {
        let (s, v) = shop(
            c,
            token,
            json!({"action": "products", "limit": limit, "cursor": cursor}),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        let page = v["products"].as_array().unwrap();
        assert!(page.len() as u64 <= limit, "{v}");
        all.extend(page.iter().cloned());
        cursor = v["next"].clone();
        if cursor.is_null() {
            return all;
        }
    }
    panic!("the listing never ended");
}

fn ids(products: &[Value]) -> Vec<&str> {
    products
        .iter()
        .map(|p| p["product_id"].as_str().unwrap())
        .collect()
}

/// The product `id` as the shop shows it, through `get`.
async fn shop_product(c: &Client, token: &str, id: &str) -> Value {
    let (s, v) = shop(c, token, json!({"action": "get", "product_id": id})).await;
    assert_eq!(s, 200, "{v}");
    v["product"].clone()
}

/// A product uploaded for audit, one SKU at `price`.
fn upsert(id: &str, price: i64) -> Value {
    json!({"action": "upsert", "product": {
        "product_id": id, "title": format!("{id} for tests"),
        "head_img": ["https://mmecimage.cn/p/wxlocal/p.jpg"], "third_cat_id": 6153,
        "brand_id": 2100000000,
        "skus": [{"sku_id": format!("{id}-1"), "price": price, "stock": 7}]
    }})
}

/// The mini program reads the shop it sells from: only what `unifiedOrder` would sell (not a
/// product under audit, delisted or rejected), in the public shape with the catalog's price and
/// stock, a page at a time until `next` is null. The only way to read products used to be the
/// merchant's `/admin/catalogSync`, so a mini program could not show its own shop.
#[tokio::test]
async fn the_shop_lists_what_can_be_ordered() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (token, _) = c.login("buyer").await;
    c.listed_product("mug", "mug-1", 500).await;
    c.listed_product("cup", "cup-1", 300).await;
    let (s, v) = c
        .admin(
            "/admin/catalogSync",
            &json!({"action": "delisting", "product_id": "cup"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    r.sandbox.set_auto_audit(false);
    let (s, v) = c.admin("/admin/catalogSync", &upsert("pending", 100)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["product"]["audit"], "AUDITING", "{v}");
    let (s, v) = c.admin("/admin/catalogSync", &upsert("banned", 100)).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = c
        .post(
            "/sandbox/_control/audit",
            None,
            &json!({"out_product_id": "banned", "approve": false, "reason": "not allowed"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    support::eventually("the rejection", std::time::Duration::from_secs(10), || {
        let c = c.clone();
        async move { get_product(&c, "banned").await["audit"] == "REJECTED" }
    })
    .await;

    // One page (default limit 20): the two on sale, nothing else, and no next page.
    let (s, v) = shop(&c, &token, json!({"action": "products"})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        ids(v["products"].as_array().unwrap()),
        ["mug", "tea"],
        "{v}"
    );
    assert!(v["next"].is_null(), "{v}");
    // The public shape, exactly: the catalog's prices and stock, nothing of the audit.
    assert_eq!(
        v["products"][1],
        json!({"product_id": "tea", "title": "Longjing green tea 250 g",
            "head_img": ["https://mmecimage.cn/p/wxlocal/tea.jpg"],
            "skus": [{"sku_id": "tea-250g", "price": 1990, "market_price": 2590,
                "stock": 1000, "attrs": []}]}),
        "{v}"
    );
    assert_eq!(v["products"][0]["skus"][0]["price"], 500, "{v}");
    assert_eq!(v["products"][0]["skus"][0]["stock"], 100, "{v}");

    // A page at a time: each product once, in order, then `next` null.
    let walked = shop_walk(&c, &token, 1).await;
    assert_eq!(ids(&walked), ["mug", "tea"]);
    // `get` of one on sale is the same product; of one not on sale, absent.
    assert_eq!(shop_product(&c, &token, "tea").await, v["products"][1]);
    for id in ["cup", "pending", "banned", "nosuchthing"] {
        let (s, v) = shop(&c, &token, json!({"action": "get", "product_id": id})).await;
        assert_eq!(s, 404, "{id}: {v}");
        assert_eq!(v["code"], "NO_SUCH_PRODUCT", "{id}: {v}");
    }
    let (s, v) = shop(
        &c,
        &token,
        json!({"action": "get", "product_id": "not an id!"}),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["code"], "BAD_PRODUCT_ID", "{v}");
    // What the shop lists is what sells: the delisted cup is refused at checkout too.
    let (s, v) = c
        .post(
            "/fn/unifiedOrder",
            Some(&token),
            &json!({"items": [{"product_id": "cup", "sku_id": "cup-1", "quantity": 1}],
                "address": {"receiver_name": "A", "detailed_address": "1 Road",
                    "tel_number": "13800000000"}}),
        )
        .await;
    assert_eq!(s, 409, "{v}");
    r.stop();
}

/// A shop page is filled past products not on sale, a bounded number of store reads at a
/// time: many not on sale in a row give short (even empty) pages, never a product twice or a
/// product missed, and `limit` is held to 1–100.
#[tokio::test]
async fn shop_pages_skip_what_is_not_on_sale() {
    let r = stack_with(&[]).await;
    r.sandbox.set_auto_audit(false);
    let c = Client::new(&r);
    let (token, _) = c.login("buyer").await;
    // Ten under audit, sorted before the tea.
    for i in 0..10 {
        let (s, v) = c
            .admin("/admin/catalogSync", &upsert(&format!("a{i}"), 100))
            .await;
        assert_eq!(s, 200, "{v}");
    }
    let walked = shop_walk(&c, &token, 2).await;
    assert_eq!(ids(&walked), ["tea"]);
    let walked = shop_walk(&c, &token, 20).await;
    assert_eq!(ids(&walked), ["tea"]);
    // `limit` is held to 1–100: 0 reads one product a time (three reads: the first three
    // drafts, an empty page), 1000 reads all eleven at once.
    let (s, v) = shop(&c, &token, json!({"action": "products", "limit": 0})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["products"], json!([]), "{v}");
    assert!(v["next"].is_string(), "{v}");
    let (s, v) = shop(&c, &token, json!({"action": "products", "limit": 1000})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(ids(v["products"].as_array().unwrap()), ["tea"], "{v}");
    assert!(v["next"].is_null(), "{v}");
    let (s, v) = shop(
        &c,
        &token,
        json!({"action": "products", "cursor": "made-up"}),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["code"], "BAD_CURSOR", "{v}");
    r.stop();
}

/// The price shown is the price charged. While an edit with a new price is under audit the
/// approved version sells on, so the shop shows its price and title (never the draft's), and
/// `unifiedOrder` charges that; once the edit is approved, the new price shows and is charged.
#[tokio::test]
async fn the_shop_shows_the_price_unified_order_charges() {
    let r = stack_with(&[]).await;
    r.sandbox.set_auto_audit(false);
    let c = Client::new(&r);
    let (token, _) = c.login("buyer").await;
    let stock = c.stock().await as u32;
    const EDIT: &str = "Longjing tea 250 g, spring";
    let (s, v) = c.admin("/admin/catalogSync", &tea(EDIT, 2500, stock)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["product"]["edit"]["audit"], "AUDITING", "{v}");

    let shown = shop_product(&c, &token, "tea").await;
    assert_eq!(shown["title"], "Longjing green tea 250 g", "{shown}");
    assert_eq!(shown["skus"][0]["price"], 1990, "{shown}");
    let listed = shop_walk(&c, &token, 20).await;
    assert_eq!(listed, std::slice::from_ref(&shown));
    assert_eq!(buy_tea(&c, &token).await, Ok(1990));

    // Approved (stamped after the seed's approval, as any real one is): the new version.
    c.post(
        "/sandbox/_control/clock",
        None,
        &json!({"advance_ms": 2000}),
    )
    .await;
    let (s, v) = c
        .post(
            "/sandbox/_control/audit",
            None,
            &json!({"out_product_id": "tea", "approve": true}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    support::eventually("the approval", std::time::Duration::from_secs(10), || {
        let c = c.clone();
        async move { get_product(&c, "tea").await["edit"].is_null() }
    })
    .await;
    let shown = shop_product(&c, &token, "tea").await;
    assert_eq!(shown["title"], EDIT, "{shown}");
    assert_eq!(shown["skus"][0]["price"], 2500, "{shown}");
    assert_eq!(shop_walk(&c, &token, 20).await, [shown]);
    assert_eq!(buy_tea(&c, &token).await, Ok(2500));
    r.stop();
}

/// The stock shown is what can still be ordered: a purchase takes it down, and ordering one
/// more than is shown is refused (SOLD_OUT) while ordering exactly that much is not.
#[tokio::test]
async fn the_stock_shown_is_what_can_be_ordered() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (token, _) = c.login("buyer").await;
    let stock_shown =
        |p: &Value| -> u32 { u32::try_from(p["skus"][0]["stock"].as_u64().unwrap()).unwrap() };
    let before = stock_shown(&shop_product(&c, &token, "tea").await);
    let (s, v) = c.order(&token, 3, None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        stock_shown(&shop_product(&c, &token, "tea").await),
        before - 3
    );

    c.set_stock(5).await;
    let shown = stock_shown(&shop_product(&c, &token, "tea").await);
    assert_eq!(shown, 5);
    let (s, v) = c.order(&token, shown + 1, None).await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["code"], "SOLD_OUT", "{v}");
    let (s, v) = c.order(&token, shown, None).await;
    assert_eq!(s, 200, "{v}");
    let listed = shop_walk(&c, &token, 20).await;
    assert_eq!(stock_shown(&listed[0]), 0, "{listed:?}");
    r.stop();
}

/// The shop's route needs a session (the admin token is none) and only reads: the merchant's
/// actions sent to it are refused and change nothing, here or at WeChat; the merchant's route
/// is as it was.
#[tokio::test]
async fn the_shop_route_needs_a_session_and_only_reads() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (token, _) = c.login("buyer").await;
    let admin_token = r.admin_token.clone();
    for body in [
        json!({"action": "products"}),
        json!({"action": "get", "product_id": "tea"}),
    ] {
        for (what, bearer) in [
            ("no token", None),
            ("garbage", Some("not-a-token")),
            ("the admin token", Some(admin_token.as_str())),
        ] {
            let (s, v) = c.post("/fn/catalogSync", bearer, &body).await;
            assert_eq!(s, 401, "{what}: {v}");
            assert_eq!(v["code"], "UNAUTHENTICATED", "{what}: {v}");
        }
    }
    let spu_calls = || {
        [
            "shop/spu/add",
            "shop/spu/update",
            "shop/spu/update_without_audit",
            "shop/spu/listing",
            "shop/spu/delisting",
            "shop/spu/del_audit",
        ]
        .map(|p| r.sandbox.calls(p).len())
    };
    let before = get_product(&c, "tea").await;
    let calls_before = spu_calls();
    for body in [
        tea("Free tea", 1, 1_000_000),
        json!({"action": "set_stock", "product_id": "tea", "sku_id": "tea-250g", "stock": 0}),
        json!({"action": "delisting", "product_id": "tea"}),
        json!({"action": "listing", "product_id": "tea"}),
        json!({"action": "wechat", "api": "shop/spu/del_audit",
            "body": {"out_product_id": "tea"}}),
        json!({"action": "nope"}),
        json!({}),
    ] {
        let (s, v) = shop(&c, &token, body.clone()).await;
        assert_eq!(s, 400, "{body}: {v}");
        assert_eq!(v["code"], "BAD_REQUEST", "{body}: {v}");
    }
    assert_eq!(get_product(&c, "tea").await, before, "nothing changed");
    assert_eq!(spu_calls(), calls_before, "nothing sent to WeChat");
    // The merchant's route answers as before: every product, the merchant's whole record.
    let (s, v) = c
        .admin("/admin/catalogSync", &json!({"action": "products"}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["products"][0]["audit"], "APPROVED", "{v}");
    assert_eq!(v["products"][0]["listing"], "LISTED", "{v}");
    r.stop();
}

/// GIVEN a mini-program developer following docs/API.md by hand WHEN the shop's catalogSync
/// gets a body it cannot read (an action misspelt, a field missing, a field of the wrong type)
/// THEN it is still 400 `BAD_REQUEST`, with serde's detail kept, but the message also says what
/// to do and where the route is described (it read only "invalid request body: missing field
/// `product_id` at line 1 column 15"); AND WHEN the product asked for is not on sale THEN the
/// 404 `NO_SUCH_PRODUCT` says why it may be gone and to reload the shop's products (it read
/// only "no product gone on sale").
#[tokio::test]
async fn the_shop_says_what_to_do_with_a_body_it_cannot_read_or_a_product_not_on_sale() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (token, _) = c.login("reader").await;
    let route = "(see docs/API.md, POST /fn/catalogSync)";
    for (body, serde, todo) in [
        (
            json!({"action": "get"}),
            "missing field `product_id`",
            "give it",
        ),
        (
            json!({"action": "prodcts"}),
            "unknown variant `prodcts`, expected `products` or `get`",
            "use one of those",
        ),
        (
            json!({"action": "get", "product_id": 5}),
            "invalid type: integer `5`, expected a string",
            "give each field the type the route's table shows",
        ),
        (json!({}), "missing field `action`", "give it"),
    ] {
        let (s, v) = shop(&c, &token, body.clone()).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (400, Some("BAD_REQUEST")),
            "{body}: {v}"
        );
        let m = v["message"].as_str().unwrap();
        assert!(
            m.starts_with("the body must be a JSON object"),
            "{body}: {v}"
        );
        assert!(m.contains(serde), "{body}: {v}");
        assert!(m.contains(todo), "{body}: {v}");
        assert!(m.ends_with(route), "{body}: {v}");
    }
    // Not JSON at all.
    let resp = c
        .http
        .post(format!("{}/fn/catalogSync", c.base))
        .bearer_auth(&token)
        .body("action=get")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["code"], "BAD_REQUEST", "{v}");
    let m = v["message"].as_str().unwrap();
    assert!(
        m.contains("the body is not JSON: send one JSON object"),
        "{v}"
    );
    assert!(m.ends_with(route), "{v}");

    let (s, v) = shop(&c, &token, json!({"action": "get", "product_id": "gone"})).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (404, Some("NO_SUCH_PRODUCT")),
        "{v}"
    );
    let m = v["message"].as_str().unwrap();
    assert!(m.contains("no product gone on sale"), "{v}");
    assert!(
        m.contains("reload the shop's products (catalogSync products)"),
        "{v}"
    );
    // The merchant's side names where the catalog is listed.
    let (s, v) = c
        .admin(
            "/admin/catalogSync",
            &json!({"action": "get", "product_id": "gone"}),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (404, Some("NO_SUCH_PRODUCT")),
        "{v}"
    );
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("catalogSync products"),
        "{v}"
    );
    r.stop();
}
