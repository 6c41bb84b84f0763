#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! Three catalog mends: a submission whose answer was lost is found at WeChat (its approval
//! honoured), `set_stock` on a product WeChat lost stores the stock and uploads it again, and
//! one unreadable product record no longer empties the shop.

use serde_json::{json, Value};

#[path = "reliability_support.rs"]
mod support;
use support::{get_product, run_schedule, stack_with, tea, Client, InProcess};

/// The merchant's `upsert` of a teapot (one SKU, `pot-1`), every field WeChat requires given.
fn pot() -> Value {
    json!({"action": "upsert", "product": {
        "product_id": "pot", "title": "Yixing clay teapot",
        "head_img": ["https://mmecimage.cn/p/wxlocal/pot.jpg"], "third_cat_id": 6153,
        "brand_id": 2100000000,
        "skus": [{"sku_id": "pot-1", "price": 4800, "stock": 20}]
    }})
}

/// The product `id` as WeChat (the sandbox) holds it: its draft, with `edit_status`.
async fn wechat_draft(r: &wxlocal::gateway::Running, id: &str) -> wxshop::shop::catalog::SpuInfo {
    r.app
        .wx
        .spu_get(&wxshop::shop::types::ProductKey::Out(id.into()), true)
        .await
        .unwrap()
}

/// WeChat's audit approves `id` now (the sandbox's control), pushing its verdict.
async fn wechat_approves(c: &Client, id: &str) {
    c.control("audit", &json!({"out_product_id": id, "approve": true}))
        .await;
}

/// GIVEN the trading component on WHEN the merchant upserts a new product and WeChat takes its
/// `spu/add` but the answer is lost on the way back (HTTP 500 after the call was applied)
/// THEN the upsert reads WeChat's draft back, finds it there, and answers 200 with the product
/// `AUDITING`; WeChat's approval push then approves it, and once listed the shop sells it.
/// It used to answer 503 and hold the product `DRAFT`: the approval push was ignored, and the
/// product never went on sale.
#[tokio::test]
async fn a_new_product_whose_upload_answer_was_lost_goes_on_sale_when_approved() {
    let r = stack_with(&[]).await;
    r.sandbox.set_auto_audit(false);
    let c = Client::new(&r);
    c.fault(json!({"path": "shop/spu/add", "mode": "lost", "count": 1}))
        .await;
    let (s, v) = c.admin("/admin/catalogSync", &pot()).await;
    assert_eq!(s, 200, "WeChat has it: {v}");
    assert_eq!(v["product"]["audit"], "AUDITING", "{v}");
    assert!(v["product"]["submit_error"].is_null(), "{v}");
    assert_eq!(wechat_draft(&r, "pot").await.edit_status, 2);

    wechat_approves(&c, "pot").await;
    c.until_audit_reads("pot", "APPROVED").await;
    let (s, v) = c
        .admin(
            "/admin/catalogSync",
            &json!({"action": "listing", "product_id": "pot"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (token, _) = c.login("pot-buyer").await;
    assert!(support::shop_ids(&c, &token)
        .await
        .contains(&"pot".to_owned()));
    r.stop();
}

/// GIVEN the seeded tea approved and on sale WHEN the merchant edits its title, WeChat takes
/// the `spu/update` but its answer is lost, and WeChat's `spu/get` fails too as the upsert
/// reads back THEN the upsert answers 503 `SUBMISSION_UNCONFIRMED`, the edit stays `AUDITING`
/// (the approved version sells meanwhile); WeChat approves it with its push lost, and the
/// schedule's audit sweep, past the grace period, applies the approval: the new title is on
/// sale. The edit used to be held `DRAFT`, and both the push and the sweep ignored WeChat's
/// approval: the edit never took effect.
#[tokio::test]
async fn an_edit_whose_answer_was_lost_takes_effect_when_the_sweep_finds_it_approved() {
    let r = stack_with(&[]).await;
    r.sandbox.set_auto_audit(false);
    let c = Client::new(&r);
    let stock = c.stock().await;
    c.fault(json!({"path": "shop/spu/update", "mode": "lost", "count": 1}))
        .await;
    c.fault(json!({"path": "shop/spu/get", "mode": "http500", "count": 1}))
        .await;
    let edit = tea("Longjing green tea 250 g, spring", 2100, stock as u32);
    let (s, v) = c.admin("/admin/catalogSync", &edit).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (503, Some("SUBMISSION_UNCONFIRMED")),
        "{v}"
    );
    let p = get_product(&c, "tea").await;
    assert_eq!(p["edit"]["audit"], "AUDITING", "{p}");
    assert_eq!(p["audit"], "APPROVED", "the approved version sells on: {p}");
    assert_eq!(
        wechat_draft(&r, "tea").await.title,
        "Longjing green tea 250 g, spring",
        "the fault is what it claims: WeChat took the update"
    );

    r.sandbox.set_push_url(None);
    wechat_approves(&c, "tea").await;
    // Both clocks: WeChat takes an order only stamped within 5 s of its own time.
    InProcess::new(&r).advance_both(11 * 60_000).await;
    let report = run_schedule(&r).await;
    let p = get_product(&c, "tea").await;
    assert!(p["edit"].is_null(), "still under audit: {p} {report}");
    assert_eq!(p["title"], "Longjing green tea 250 g, spring", "{p}");
    let (token, _) = c.login("tea-buyer").await;
    assert_eq!(support::buy_tea(&c, &token).await, Ok(2100));
    r.stop();
}

/// GIVEN the seeded tea WHEN the merchant's edit is lost before WeChat applies it (HTTP 500)
/// and WeChat cannot be read back either THEN the upsert answers 503
/// `SUBMISSION_UNCONFIRMED`, and the same upsert again sends it (WeChat's draft is then that
/// edit, under audit) instead of answering 200 with nothing sent. (Old code: 503
/// `WECHAT_UNAVAILABLE`.) A refusal by WeChat (an errcode) still leaves the edit `DRAFT`.
#[tokio::test]
async fn an_unconfirmed_edit_is_sent_again_by_the_same_upsert_and_a_refusal_stays_draft() {
    let r = stack_with(&[]).await;
    r.sandbox.set_auto_audit(false);
    let c = Client::new(&r);
    let stock = c.stock().await;
    let edit = tea("Longjing green tea 250 g, summer", 2200, stock as u32);
    c.fault(json!({"path": "shop/spu/update", "mode": "http500", "count": 1}))
        .await;
    c.fault(json!({"path": "shop/spu/get", "mode": "http500", "count": 1}))
        .await;
    let (s, v) = c.admin("/admin/catalogSync", &edit).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (503, Some("SUBMISSION_UNCONFIRMED")),
        "{v}"
    );
    assert_ne!(
        wechat_draft(&r, "tea").await.title,
        "Longjing green tea 250 g, summer"
    );
    let (s, v) = c.admin("/admin/catalogSync", &edit).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["product"]["edit"]["audit"], "AUDITING", "{v}");
    assert!(v["product"]["edit"]["submit_error"].is_null(), "{v}");
    let wx = wechat_draft(&r, "tea").await;
    assert_eq!(
        (wx.title.as_str(), wx.edit_status),
        ("Longjing green tea 250 g, summer", 2)
    );

    // WeChat refuses the next edit outright (an errcode of its own): nothing of it is under
    // audit there.
    c.fault(json!({"path": "shop/spu/update", "mode": "errcode", "errcode": 9401020, "count": 1}))
        .await;
    let (s, v) = c
        .admin(
            "/admin/catalogSync",
            &tea("Longjing green tea 250 g, autumn", 2200, stock as u32),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (502, Some("WECHAT_REFUSED")),
        "{v}"
    );
    let p = get_product(&c, "tea").await;
    assert_eq!(p["edit"]["audit"], "DRAFT", "{p}");
    r.stop();
}

/// GIVEN the seeded tea approved and on sale, then deleted at WeChat (the console) WHEN the
/// merchant sets its stock THEN the answer is 200: the stock is stored, a `notice` says WeChat
/// no longer had it and that it was uploaded again, the product is off sale here (`AUDITING`,
/// `DELISTED`: the shop does not list it, an order is refused) until WeChat approves it again
/// and the merchant lists it — then it sells with that stock. It used to answer a bare 502,
/// store nothing, and keep selling a product WeChat no longer had.
#[tokio::test]
async fn set_stock_on_a_product_wechat_lost_stores_it_and_uploads_it_again() {
    let r = stack_with(&[]).await;
    r.sandbox.set_auto_audit(false);
    let c = Client::new(&r);
    let (token, _) = c.login("stock-buyer").await;
    assert!(support::shop_ids(&c, &token)
        .await
        .contains(&"tea".to_owned()));
    r.app
        .wx
        .spu_del(&wxshop::shop::types::ProductKey::Out("tea".into()))
        .await
        .unwrap();

    let (s, v) = c
        .admin(
            "/admin/catalogSync",
            &json!({"action": "set_stock", "product_id": "tea", "sku_id": "tea-250g", "stock": 40}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let notice = v["notice"].as_str().unwrap_or_default();
    assert!(
        notice.contains("no longer has") && notice.contains("list it again"),
        "{v}"
    );
    let p = get_product(&c, "tea").await;
    assert_eq!(p["skus"][0]["stock"], 40, "{p}");
    assert_eq!(
        (p["audit"].as_str(), p["listing"].as_str()),
        (Some("AUDITING"), Some("DELISTED")),
        "{p}"
    );
    assert!(!support::shop_ids(&c, &token)
        .await
        .contains(&"tea".to_owned()));
    assert!(support::buy_tea(&c, &token).await.is_err());
    let wx = wechat_draft(&r, "tea").await;
    assert_eq!(
        (wx.edit_status, wx.skus[0].stock_num),
        (2, 40),
        "uploaded again with the stock"
    );

    wechat_approves(&c, "tea").await;
    c.until_audit_reads("tea", "APPROVED").await;
    let (s, v) = c
        .admin(
            "/admin/catalogSync",
            &json!({"action": "listing", "product_id": "tea"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(c.stock().await, 40);
    assert!(support::buy_tea(&c, &token).await.is_ok());
    r.stop();
}

/// GIVEN a catalog holding the seeded tea and one product record that cannot be read (written
/// by another version, or damaged: here raw bytes through the stack's own store) WHEN a user
/// opens the shop (a page of 100, and pages of 1) THEN the tea is listed and the bad record
/// skipped; the user's `get` of it is 404 like any product not on sale; the merchant's
/// `products` lists the tea and names the bad record under `unreadable`, and the merchant's
/// `get` of it is 500 `PRODUCT_UNREADABLE` naming it. Every shop page used to answer 503, and
/// so did the merchant's list.
#[tokio::test]
async fn one_unreadable_product_record_does_not_empty_the_shop() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    support::store_unreadable_product(&r, "broken", "APPROVED").await;

    let (token, _) = c.login("shop-reader").await;
    assert_eq!(support::shop_ids(&c, &token).await, vec!["tea".to_owned()]);
    let (s, v) = c
        .post(
            "/fn/catalogSync",
            Some(&token),
            &json!({"action": "products", "limit": 1}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["products"][0]["product_id"], "tea", "{v}");
    let (s, v) = c
        .post(
            "/fn/catalogSync",
            Some(&token),
            &json!({"action": "get", "product_id": "broken"}),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (404, Some("NO_SUCH_PRODUCT")),
        "{v}"
    );

    let (s, v) = c
        .admin("/admin/catalogSync", &json!({"action": "products"}))
        .await;
    assert_eq!(s, 200, "{v}");
    let ids: Vec<&str> = v["products"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["product_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["tea"], "{v}");
    assert_eq!(v["unreadable"][0]["product_id"], "broken", "{v}");
    let (s, v) = c
        .admin(
            "/admin/catalogSync",
            &json!({"action": "get", "product_id": "broken"}),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (500, Some("PRODUCT_UNREADABLE")),
        "{v}"
    );
    assert!(
        v["message"].as_str().unwrap_or_default().contains("broken"),
        "{v}"
    );
    r.stop();
}

/// GIVEN a record under audit that cannot be read as a product (`a-broken`, listed before
/// `tea`) and tea's edit approved by WeChat with its push lost WHEN the schedule runs past the
/// grace period THEN tea's verdict is applied and the run's report counts the bad record
/// (`audits.unreadable` 1). The sweep used to fail at the bad record's page every run: no
/// verdict whose push was lost was ever found again.
#[tokio::test]
async fn an_unreadable_product_under_audit_does_not_stop_the_audit_sweep() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    support::store_unreadable_product(&r, "a-broken", "AUDITING").await;
    support::tea_edit_approved_push_lost(&r, &c).await;
    r.app.clock.advance(11 * 60_000);
    let report = run_schedule(&r).await;
    assert_eq!(report["audits"]["decided"], 1, "{report}");
    assert_eq!(report["audits"]["unreadable"], 1, "{report}");
    let p = get_product(&c, "tea").await;
    assert!(p["edit"].is_null(), "still under audit: {p}");
    assert_eq!(p["title"], "Longjing green tea 250 g, autumn", "{p}");
    r.stop();
}
