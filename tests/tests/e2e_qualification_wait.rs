#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! A product refused because its category's qualification is not approved yet (WeChat's
//! 1000005) waits for it, and goes to WeChat's audit by itself once WeChat approves the
//! category's qualification audit (the `open_product_category_audit` push). It used to stay
//! a `DRAFT` until the merchant remembered to upsert every such product again.

use serde_json::{json, Value};
use std::time::Duration;

#[path = "reliability_support.rs"]
mod support;
use support::{eventually, get_product, stack_with, Client};
use wxlocal::gateway::Running;

/// The merchant's `upsert` of a face cream: WeChat's level-3 category 7231, whose products
/// WeChat takes only once the shop's qualification for it is approved (`shop/cat/get`:
/// `qualification_type` 1), of brand `brand_id`.
fn cream(brand_id: u64) -> Value {
    json!({"action": "upsert", "product": {
        "product_id": "cream", "title": "Night cream, 50 ml",
        "head_img": ["https://mmecimage.cn/p/wxlocal/cream.jpg"], "third_cat_id": 7231,
        "brand_id": brand_id,
        "skus": [{"sku_id": "cream-50ml", "price": 12800, "stock": 40}]
    }})
}

/// How many times WeChat was asked to add the cream (`shop/spu/add`).
fn cream_added(r: &Running) -> usize {
    r.sandbox
        .calls("shop/spu/add")
        .into_iter()
        .filter(|v| v["out_product_id"] == "cream")
        .count()
}

/// Pushes the sandbox delivered and our endpoint acknowledged.
fn acked_pushes(r: &Running) -> usize {
    r.sandbox
        .deliveries()
        .iter()
        .filter(|d| d["kind"] == "push" && d["acked"] == true)
        .count()
}

/// The cream upserted while its category is not approved: refused (502, WeChat's 1000005 and
/// what to do), stored as a draft that waits for its category.
async fn cream_refused_for_its_category(r: &Running, c: &Client) {
    let (s, v) = c.admin("/admin/catalogSync", &cream(2_100_000_000)).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (502, Some("WECHAT_REFUSED")),
        "{v}"
    );
    assert!(v["message"].as_str().unwrap().contains("1000005"), "{v}");
    let p = get_product(c, "cream").await;
    assert_eq!(p["audit"], "DRAFT", "{p}");
    assert_eq!(
        p["waiting_for"],
        json!({"category": 7231}),
        "the product says what it waits for: {p}"
    );
    assert_eq!(cream_added(r), 1);
}

/// The category's qualification audit applied for through `wechat`: its `audit_id`.
async fn apply_for_the_category(c: &Client) -> String {
    let licence = c
        .uploaded_image("https://files.example.com/licence.jpg")
        .await;
    let certificate = c
        .uploaded_image("https://files.example.com/cosmetics-permit.jpg")
        .await;
    let (s, v) = c
        .wechat(
            "shop/audit/audit_category",
            json!({"audit_req": {"license": [licence],
            "category_info": {"level1": 3, "level2": 301, "level3": 7231,
                              "certificate": [certificate]}}}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    v["audit_id"].as_str().unwrap().to_owned()
}

/// WeChat's own record of the cream's draft (`spu/get`, `need_edit_spu` 1): its `edit_status`.
async fn wechat_edit_status(r: &Running) -> i64 {
    r.app
        .wx
        .spu_get(&wxshop::shop::types::ProductKey::Out("cream".into()), true)
        .await
        .unwrap()
        .edit_status
}

/// GIVEN a product refused by WeChat because its category's qualification is not approved
/// (1000005): stored DRAFT, `waiting_for: {category: 7231}`
/// WHEN the merchant applies for the category (`shop/audit/audit_category`) and WeChat
/// approves it (`open_product_category_audit`, status 1)
/// THEN the product is submitted to WeChat's audit again by itself (the outbox): AUDITING
/// here and under audit at WeChat (`edit_status` 2), no longer waiting; approved, it reads
/// APPROVED. It used to stay DRAFT until the merchant upserted it again.
#[tokio::test]
async fn a_product_waiting_for_its_category_is_submitted_once_the_category_is_approved() {
    let r = stack_with(&[]).await;
    r.sandbox.set_auto_audit(false);
    let c = Client::new(&r);
    cream_refused_for_its_category(&r, &c).await;

    let audit_id = apply_for_the_category(&c).await;
    c.control("audit", &json!({"audit_id": audit_id})).await;

    eventually(
        "the cream submitted again by itself",
        Duration::from_secs(20),
        || {
            let c = c.clone();
            async move { get_product(&c, "cream").await["audit"] == "AUDITING" }
        },
    )
    .await;
    assert_eq!(cream_added(&r), 2, "submitted once more");
    let p = get_product(&c, "cream").await;
    assert!(p.get("waiting_for").is_none(), "no longer waiting: {p}");
    assert!(p.get("submit_error").is_none(), "{p}");
    assert_eq!(wechat_edit_status(&r).await, 2, "under audit at WeChat");

    // The verdict is the merchant's to read.
    let (s, v) = c
        .admin(
            "/admin/orderSync",
            &json!({"action": "events", "source": "qualification_verdict"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let body = v["events"][0].to_string();
    assert!(
        body.contains("APPROVED") && body.contains("7231"),
        "the category's approval recorded: {v}"
    );

    c.control("audit", &json!({"out_product_id": "cream"}))
        .await;
    eventually("the cream approved", Duration::from_secs(20), || {
        let c = c.clone();
        async move { get_product(&c, "cream").await["audit"] == "APPROVED" }
    })
    .await;
}

/// GIVEN a product waiting for its category, the category's audit applied for
/// WHEN WeChat approves it and its push is lost
/// THEN the 5-minute schedule, past the push grace period (10 minutes), asks WeChat
/// (`shop/audit/result`), finds the approval, and the product is submitted again by itself.
#[tokio::test]
async fn a_lost_category_approval_is_found_by_the_schedule() {
    let r = stack_with(&[]).await;
    r.sandbox.set_auto_audit(false);
    let c = Client::new(&r);
    let inside = support::InProcess::new(&r);
    cream_refused_for_its_category(&r, &c).await;

    let audit_id = apply_for_the_category(&c).await;
    c.control("audit", &json!({"audit_id": audit_id, "push": false}))
        .await;
    // Within the grace period the schedule does not ask.
    support::run_schedule(&r).await;
    assert!(r.sandbox.calls("shop/audit/result").is_empty());
    assert_eq!(get_product(&c, "cream").await["audit"], "DRAFT");

    inside.advance_both(11 * 60_000).await;
    let report = support::run_schedule(&r).await;
    assert_eq!(r.sandbox.calls("shop/audit/result").len(), 1, "asked once");
    assert_eq!(
        report["audits"]["qualification_verdicts"], 1,
        "counted in the report: {report}"
    );
    eventually(
        "the cream submitted again by itself",
        Duration::from_secs(20),
        || {
            let c = c.clone();
            async move { get_product(&c, "cream").await["audit"] == "AUDITING" }
        },
    )
    .await;
    assert_eq!(cream_added(&r), 2);
    // Decided: not asked again.
    inside.advance_both(11 * 60_000).await;
    support::run_schedule(&r).await;
    assert_eq!(r.sandbox.calls("shop/audit/result").len(), 1);
}

/// GIVEN a product waiting for its category's qualification
/// WHEN WeChat rejects the category's audit (status 9, with a reason)
/// THEN nothing is submitted; the product stays DRAFT, still waiting, and its `submit_error`
/// carries WeChat's reason and what to do.
#[tokio::test]
async fn a_rejected_category_submits_nothing_and_the_product_says_why() {
    let r = stack_with(&[]).await;
    r.sandbox.set_auto_audit(false);
    let c = Client::new(&r);
    cream_refused_for_its_category(&r, &c).await;

    let audit_id = apply_for_the_category(&c).await;
    c.control(
        "audit",
        &json!({"audit_id": audit_id, "approve": false, "reason": "licence expired"}),
    )
    .await;
    eventually(
        "the rejection shown on the product",
        Duration::from_secs(20),
        || {
            let c = c.clone();
            async move {
                get_product(&c, "cream").await["submit_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("licence expired"))
            }
        },
    )
    .await;
    let p = get_product(&c, "cream").await;
    assert_eq!(p["audit"], "DRAFT", "{p}");
    assert_eq!(p["waiting_for"], json!({"category": 7231}), "{p}");
    assert!(
        p["submit_error"]
            .as_str()
            .unwrap()
            .contains("shop/audit/audit_category"),
        "says what to do: {p}"
    );
    assert_eq!(cream_added(&r), 1, "nothing submitted");
}

/// The merchant's `upsert` of baby formula: level-3 category 7419, which needs the shop's
/// qualification (as 7231 does) and each product's qualification images.
async fn formula(c: &Client) -> Value {
    let pic = c
        .uploaded_image("https://files.example.com/formula-permit.jpg")
        .await;
    json!({"action": "upsert", "product": {
        "product_id": "formula", "title": "Infant formula, 800 g",
        "head_img": ["https://mmecimage.cn/p/wxlocal/formula.jpg"], "third_cat_id": 7419,
        "qualification_pics": [pic],
        "skus": [{"sku_id": "formula-800g", "price": 26800, "stock": 12}]
    }})
}

/// How many times WeChat was asked to add the formula (`shop/spu/add`).
fn formula_added(r: &Running) -> usize {
    r.sandbox
        .calls("shop/spu/add")
        .into_iter()
        .filter(|v| v["out_product_id"] == "formula")
        .count()
}

/// A category qualification applied for in WeChat's console, not through catalogSync (the
/// sandbox has no console: the call goes to WeChat directly, so nothing of it is recorded
/// here): its `audit_id`.
async fn apply_in_the_console(r: &Running, c: &Client, level3: u64) -> String {
    let licence = c
        .uploaded_image("https://files.example.com/licence.jpg")
        .await;
    let reply: Value = r
        .app
        .wx
        .post_json(
            "shop/audit/audit_category",
            &json!({"audit_req": {"license": [licence.clone()],
                "category_info": {"level1": 3, "level2": 301, "level3": level3,
                                  "certificate": [licence]}}}),
        )
        .await
        .unwrap();
    reply["audit_id"].as_str().unwrap().to_owned()
}

/// The merchant's `qualification_verdict` events, as orderSync `events` lists them.
async fn verdict_events(c: &Client) -> String {
    let (s, v) = c
        .admin(
            "/admin/orderSync",
            &json!({"action": "events", "source": "qualification_verdict"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    v["events"].to_string()
}

/// GIVEN a face cream waiting for its category (7231) and baby formula waiting for another
/// (7419)
/// WHEN WeChat pushes the approval of a category audit applied for in WeChat's console (its
/// `audit_id` unknown here; the push does not name the category)
/// THEN the push is acknowledged, the verdict is an event the merchant reads, and every
/// product waiting for a category is submitted again once: the cream, whose category it was,
/// goes to WeChat's audit and is approved; the formula, refused again (1000005), goes on
/// waiting, submitted exactly once more — no loop. Such a push used to be acknowledged and
/// only logged: the cream stayed DRAFT until the merchant upserted it again.
#[tokio::test]
async fn a_console_approval_submits_the_waiting_products_once() {
    let r = stack_with(&[]).await;
    r.sandbox.set_auto_audit(false);
    let c = Client::new(&r);
    cream_refused_for_its_category(&r, &c).await;
    let (s, v) = c.admin("/admin/catalogSync", &formula(&c).await).await;
    assert_eq!(s, 502, "{v}");
    assert!(v["message"].as_str().unwrap().contains("1000005"), "{v}");
    assert_eq!(
        get_product(&c, "formula").await["waiting_for"],
        json!({"category": 7419})
    );

    let audit_id = apply_in_the_console(&r, &c, 7231).await;
    let before = acked_pushes(&r);
    c.control("audit", &json!({"audit_id": audit_id})).await;
    eventually("the push acknowledged", Duration::from_secs(20), || {
        let r = &r;
        async move { acked_pushes(r) > before }
    })
    .await;
    eventually(
        "the cream submitted again by itself",
        Duration::from_secs(20),
        || {
            let c = c.clone();
            async move { get_product(&c, "cream").await["audit"] == "AUDITING" }
        },
    )
    .await;
    assert_eq!(cream_added(&r), 2, "the cream submitted once more");
    assert_eq!(wechat_edit_status(&r).await, 2, "under audit at WeChat");
    eventually(
        "the formula submitted again and refused again",
        Duration::from_secs(20),
        || {
            let (r, c) = (&r, c.clone());
            async move {
                formula_added(r) == 2
                    && get_product(&c, "formula").await["submit_error"]
                        .as_str()
                        .is_some_and(|e| e.contains("1000005"))
            }
        },
    )
    .await;
    // The outbox relay (every 20 ms) would have submitted it again by now if it looped.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(formula_added(&r), 2, "submitted exactly once more");
    let f = get_product(&c, "formula").await;
    assert_eq!(f["audit"], "DRAFT", "{f}");
    assert_eq!(
        f["waiting_for"],
        json!({"category": 7419}),
        "goes on waiting: {f}"
    );
    let events = verdict_events(&c).await;
    assert!(
        events.contains(&audit_id) && events.contains("outside wxshop"),
        "the console's verdict recorded: {events}"
    );

    c.control("audit", &json!({"out_product_id": "cream"}))
        .await;
    eventually("the cream approved", Duration::from_secs(20), || {
        let c = c.clone();
        async move { get_product(&c, "cream").await["audit"] == "APPROVED" }
    })
    .await;
}

/// GIVEN the face cream being submitted while its category's audit (applied for through
/// catalogSync) is pending, WeChat slow to answer the submission (a `slow` fault on
/// `spu/add`: refused 1000005 at once, the answer 8 s on its way)
/// WHEN WeChat approves the category (its push acknowledged, its verdict applied) before the
/// refusal reaches us — the verdict finds nothing waiting, the cream being under submission
/// THEN once the refusal is stored (`waiting_for`), the approval is seen and the cream is
/// submitted again by itself: AUDITING, under audit at WeChat. It used to wait for ever.
#[tokio::test]
async fn an_approval_landing_during_the_refusal_still_submits_the_product() {
    let r = stack_with(&[("WX_HTTP_TIMEOUT_MS", "30000")]).await;
    r.sandbox.set_auto_audit(false);
    let c = Client::new(&r);
    let audit_id = apply_for_the_category(&c).await;
    c.fault(json!({"path": "shop/spu/add", "mode": "slow", "delay_ms": 8000, "count": 1}))
        .await;
    let upsert = tokio::spawn({
        let c = c.clone();
        async move { c.admin("/admin/catalogSync", &cream(2_100_000_000)).await }
    });
    eventually(
        "WeChat to refuse the cream",
        Duration::from_secs(20),
        || {
            let r = &r;
            async move { cream_added(r) == 1 }
        },
    )
    .await;
    // WeChat approves the category now: after refusing the cream, before we hear of it.
    c.control("audit", &json!({"audit_id": audit_id})).await;
    eventually("the approval recorded", Duration::from_secs(20), || {
        let c = c.clone();
        async move { verdict_events(&c).await.contains("APPROVED") }
    })
    .await;
    assert_eq!(get_product(&c, "cream").await["audit"], "AUDITING");
    let (s, v) = upsert.await.unwrap();
    assert_eq!(
        (s, v["code"].as_str()),
        (502, Some("WECHAT_REFUSED")),
        "{v}"
    );
    assert!(v["message"].as_str().unwrap().contains("1000005"), "{v}");

    eventually(
        "the cream submitted again by itself",
        Duration::from_secs(20),
        || {
            let (r, c) = (&r, c.clone());
            async move {
                cream_added(r) == 2 && get_product(&c, "cream").await["audit"] == "AUDITING"
            }
        },
    )
    .await;
    let p = get_product(&c, "cream").await;
    assert!(p.get("waiting_for").is_none(), "no longer waiting: {p}");
    assert_eq!(wechat_edit_status(&r).await, 2, "under audit at WeChat");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(cream_added(&r), 2, "submitted once");
}

/// GIVEN the face cream waiting for its category
/// WHEN the category is approved in WeChat's console and no push ever comes
/// THEN the schedule, a day after the cream's refusal, submits it again by itself (counted
/// in its report: `waiting_resubmitted`), and it goes to WeChat's audit; not before the day
/// is out, and not again the next run. It used to wait for ever.
#[tokio::test]
async fn the_schedule_submits_a_product_waiting_a_day_without_a_push() {
    let r = stack_with(&[]).await;
    r.sandbox.set_auto_audit(false);
    let c = Client::new(&r);
    let inside = support::InProcess::new(&r);
    cream_refused_for_its_category(&r, &c).await;
    let audit_id = apply_in_the_console(&r, &c, 7231).await;
    c.control("audit", &json!({"audit_id": audit_id, "push": false}))
        .await;

    inside.advance_both(12 * 3_600_000).await;
    let report = support::run_schedule(&r).await;
    assert!(
        !report.to_string().contains("waiting_resubmitted"),
        "not within the day: {report}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(cream_added(&r), 1);

    inside.advance_both(13 * 3_600_000).await;
    let report = support::run_schedule(&r).await;
    assert!(
        report.to_string().contains("\"waiting_resubmitted\":1"),
        "{report}"
    );
    eventually(
        "the cream submitted again by itself",
        Duration::from_secs(20),
        || {
            let c = c.clone();
            async move { get_product(&c, "cream").await["audit"] == "AUDITING" }
        },
    )
    .await;
    assert_eq!(cream_added(&r), 2);
    assert_eq!(wechat_edit_status(&r).await, 2, "under audit at WeChat");
    let report = support::run_schedule(&r).await;
    assert!(
        !report.to_string().contains("waiting_resubmitted"),
        "{report}"
    );
}

/// GIVEN the face cream waiting for its category, the category approved in WeChat's console
/// (no push)
/// WHEN the merchant applies for the category through catalogSync and WeChat answers 1050003
/// (already approved)
/// THEN the answer is still WeChat's refusal (502), saying the waiting products go to audit,
/// and the cream is submitted again by itself. It used to wait until upserted again.
#[tokio::test]
async fn an_already_approved_answer_submits_the_waiting_products() {
    let r = stack_with(&[]).await;
    r.sandbox.set_auto_audit(false);
    let c = Client::new(&r);
    cream_refused_for_its_category(&r, &c).await;
    let audit_id = apply_in_the_console(&r, &c, 7231).await;
    c.control("audit", &json!({"audit_id": audit_id, "push": false}))
        .await;

    let licence = c
        .uploaded_image("https://files.example.com/licence.jpg")
        .await;
    let (s, v) = c
        .wechat(
            "shop/audit/audit_category",
            json!({"audit_req": {"license": [licence.clone()],
            "category_info": {"level1": 3, "level2": 301, "level3": 7231,
                              "certificate": [licence]}}}),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (502, Some("WECHAT_REFUSED")),
        "{v}"
    );
    let m = v["message"].as_str().unwrap();
    assert!(
        m.contains("1050003") && m.contains("waiting_for.category"),
        "{v}"
    );
    eventually(
        "the cream submitted again by itself",
        Duration::from_secs(20),
        || {
            let c = c.clone();
            async move { get_product(&c, "cream").await["audit"] == "AUDITING" }
        },
    )
    .await;
    assert_eq!(cream_added(&r), 2);
    assert_eq!(wechat_edit_status(&r).await, 2, "under audit at WeChat");
}

/// GIVEN a product refused for a brand WeChat has not authorised (1000006)
/// WHEN the merchant applies for the brand and WeChat approves it, giving it a new `brand_id`
/// THEN the product says it waits for its brand, and the verdict (an event the merchant
/// reads with orderSync `events`) names the new `brand_id` to upsert the product with.
#[tokio::test]
async fn a_brand_verdict_names_the_new_brand_id() {
    let r = stack_with(&[]).await;
    r.sandbox.set_auto_audit(false);
    let c = Client::new(&r);
    // Green tea (6153) needs no category qualification; brand 123456 is no brand of ours.
    let mut tea = support::tea("Moon green tea 250 g", 2590, 10);
    tea["product"]["brand_id"] = json!(123_456);
    let (s, v) = c.admin("/admin/catalogSync", &tea).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (502, Some("WECHAT_REFUSED")),
        "{v}"
    );
    assert!(v["message"].as_str().unwrap().contains("1000006"), "{v}");
    let p = get_product(&c, "tea").await;
    assert_eq!(p["waiting_for"], json!({"brand": 123_456}), "{p}");

    let licence = c
        .uploaded_image("https://files.example.com/licence.jpg")
        .await;
    let (s, v) = c
        .wechat(
            "shop/audit/audit_brand",
            json!({"audit_req": {"license": [licence.clone()], "brand_info": {
            "brand_wording": "Moon Cream", "sale_authorization": [licence]}}}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let audit_id = v["audit_id"].as_str().unwrap().to_owned();
    let verdict = c.control("audit", &json!({"audit_id": audit_id})).await;
    let new_brand = verdict["brand_id"].as_u64().expect("the push's brand_id");
    eventually("the brand verdict recorded", Duration::from_secs(20), || {
        let c = c.clone();
        async move {
            let (_, v) = c
                .admin(
                    "/admin/orderSync",
                    &json!({"action": "events", "source": "qualification_verdict"}),
                )
                .await;
            v["events"]
                .to_string()
                .contains(&format!("upsert the products refused for their brand (waiting_for.brand) with brand_id {new_brand}"))
        }
    })
    .await;
}

/// GIVEN green tea refused for a brand WeChat has not authorised (1000006)
/// WHEN a brand audit applied for in WeChat's console is approved (its push: an `audit_id`
/// unknown here, the new `brand_id`)
/// THEN the verdict is an event the merchant reads, naming the new `brand_id` to upsert the
/// products of that brand with; the tea is not submitted again (its `brand_id` is the old
/// one) and still says it waits for its brand. Such a push used to be only logged.
#[tokio::test]
async fn a_console_brand_approval_is_an_event_naming_the_brand_id() {
    let r = stack_with(&[]).await;
    r.sandbox.set_auto_audit(false);
    let c = Client::new(&r);
    let mut tea = support::tea("Moon green tea 250 g", 2590, 10);
    tea["product"]["brand_id"] = json!(123_456);
    let (s, v) = c.admin("/admin/catalogSync", &tea).await;
    assert_eq!(s, 502, "{v}");
    let licence = c
        .uploaded_image("https://files.example.com/licence.jpg")
        .await;
    let reply: Value = r
        .app
        .wx
        .post_json(
            "shop/audit/audit_brand",
            &json!({"audit_req": {"license": [licence.clone()], "brand_info": {
                "brand_wording": "Moon Tea", "sale_authorization": [licence]}}}),
        )
        .await
        .unwrap();
    let audit_id = reply["audit_id"].as_str().unwrap().to_owned();
    let verdict = c.control("audit", &json!({"audit_id": audit_id})).await;
    let new_brand = verdict["brand_id"].as_u64().expect("the push's brand_id");
    eventually(
        "the brand verdict recorded",
        Duration::from_secs(20),
        || {
            let (c, audit_id) = (c.clone(), audit_id.clone());
            async move {
                let events = verdict_events(&c).await;
                events.contains(&audit_id)
                    && events.contains(&format!("approved brand_id {new_brand}"))
                    && events.contains("outside wxshop")
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let added = r
        .sandbox
        .calls("shop/spu/add")
        .into_iter()
        .filter(|v| v["out_product_id"] == "tea")
        .count();
    assert_eq!(added, 1, "not submitted again with its old brand_id");
    let p = get_product(&c, "tea").await;
    assert_eq!(p["waiting_for"], json!({"brand": 123_456}), "{p}");
}

/// GIVEN the `wechat` pass-through
/// WHEN its `body` is not a JSON object, or lacks what the api requires
/// THEN 400 `BAD_WECHAT_BODY` naming what is wrong, and nothing is sent to WeChat. Such a
/// body used to go to WeChat and come back 502, as if WeChat had refused the merchant.
#[tokio::test]
async fn a_malformed_wechat_body_is_refused_here() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let apis = [
        "shop/audit/result",
        "shop/audit/audit_category",
        "shop/register/check",
        "shop/spu/get",
    ];
    let before: Vec<usize> = apis.iter().map(|a| r.sandbox.calls(a).len()).collect();
    for (api, body, says) in [
        ("shop/audit/result", json!("RQAAB123"), "JSON object"),
        ("shop/audit/audit_category", json!([1, 2]), "JSON object"),
        ("shop/register/check", json!(7), "JSON object"),
        ("shop/audit/result", Value::Null, "audit_id"),
        ("shop/audit/result", json!({}), "audit_id"),
        (
            "shop/audit/audit_category",
            json!({"audit_req": {"license": []}}),
            "level3",
        ),
        (
            "shop/spu/get",
            json!({"need_edit_spu": 1}),
            "out_product_id",
        ),
    ] {
        let (s, v) = c.wechat(api, body.clone()).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (400, Some("BAD_WECHAT_BODY")),
            "{api} {body}: {v}"
        );
        assert!(
            v["message"].as_str().unwrap().contains(says),
            "{api} {body}: {v}"
        );
    }
    for (api, n) in apis.iter().zip(&before) {
        assert_eq!(r.sandbox.calls(api).len(), *n, "{api} sent to WeChat");
    }
    // A well-formed body still goes to WeChat.
    c.wechat("shop/register/check", json!({})).await;
    assert_eq!(r.sandbox.calls("shop/register/check").len(), before[2] + 1);
}

/// The stack's store, counting the product records read from the listings of products not
/// on sale (`DRAFT`, `APPROVED`, `REJECTED`).
struct CountingUnlisted {
    inner: wxshop::store::DynStore,
    read: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl wxshop::store::Store for CountingUnlisted {
    async fn get(
        &self,
        kind: wxshop::store::Kind,
        id: &str,
    ) -> Result<Option<wxshop::store::Record>, wxshop::store::StoreError> {
        self.inner.get(kind, id).await
    }
    async fn write(
        &self,
        writes: Vec<wxshop::store::Write>,
    ) -> Result<(), wxshop::store::StoreError> {
        self.inner.write(writes).await
    }
    async fn query(
        &self,
        query: wxshop::store::Query,
    ) -> Result<wxshop::store::Page, wxshop::store::StoreError> {
        let unlisted = query.kind == wxshop::store::Kind::Product
            && matches!(&query.index, wxshop::store::Index::Status(s)
                if ["DRAFT", "APPROVED", "REJECTED"].contains(&s.as_str()));
        let page = self.inner.query(query).await?;
        if unlisted {
            self.read
                .fetch_add(page.records.len(), std::sync::atomic::Ordering::SeqCst);
        }
        Ok(page)
    }
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
}

/// GIVEN 520 drafts (`bulk-000`.. — before the cream in the catalog's product-id order) and
/// the face cream waiting for its category, approved in WeChat's console with no push
/// WHEN the schedule runs, a day after the cream's refusal
/// THEN within 8 runs the cream is submitted again by itself and goes to WeChat's audit, and
/// a run then reads at most 100 of the products not on sale. The sweep used to read the first
/// 500 products not on sale on every run: the cream, after them, was never looked at and
/// stayed DRAFT for good, and every run read 500 products for nothing.
#[tokio::test]
async fn the_schedule_finds_a_waiting_product_past_500_others() {
    use wxshop::store::repo::{self, Batch};
    let r = stack_with(&[]).await;
    r.sandbox.set_auto_audit(false);
    let c = Client::new(&r);
    let inside = support::InProcess::new(&r);
    cream_refused_for_its_category(&r, &c).await;
    let store = r.app.store.as_ref();
    let cream_stored = repo::get_product(
        store,
        &wxshop::domain::ProductId::parse("cream".to_owned()).unwrap(),
    )
    .await
    .unwrap()
    .unwrap()
    .value;
    let mut batch = Batch::new();
    for i in 0..520 {
        let mut p = cream_stored.clone();
        p.product_id = wxshop::domain::ProductId::parse(format!("bulk-{i:03}")).unwrap();
        p.waiting_for = None;
        batch.create_product(&p);
        if batch.len() == 10 {
            std::mem::take(&mut batch).commit(store).await.unwrap();
        }
    }
    batch.commit(store).await.unwrap();
    let audit_id = apply_in_the_console(&r, &c, 7231).await;
    c.control("audit", &json!({"audit_id": audit_id, "push": false}))
        .await;
    inside.advance_both(25 * 3_600_000).await;

    let mut runs = 0;
    let mut resubmitted = false;
    while runs < 8 && !resubmitted {
        let report = support::run_schedule(&r).await;
        runs += 1;
        resubmitted = report.to_string().contains("\"waiting_resubmitted\":1");
    }
    assert!(
        resubmitted,
        "the cream submitted again within {runs} runs (the cream: {})",
        get_product(&c, "cream").await
    );
    eventually(
        "the cream submitted again by itself",
        Duration::from_secs(20),
        || {
            let c = c.clone();
            async move { get_product(&c, "cream").await["audit"] == "AUDITING" }
        },
    )
    .await;
    assert_eq!(cream_added(&r), 2, "submitted once more");

    let counting = std::sync::Arc::new(CountingUnlisted {
        inner: r.app.store.clone(),
        read: std::sync::atomic::AtomicUsize::new(0),
    });
    let mut app = r.app.clone();
    app.store = counting.clone();
    use wxshop::handlers::order_sync::{on_schedule, LOCAL_SCHEDULE_BUDGET};
    let report = on_schedule(&app, wxshop::time::Deadline::after(LOCAL_SCHEDULE_BUDGET)).await;
    assert!(
        !report.to_string().contains("waiting_resubmitted"),
        "{report}"
    );
    let read = counting.read.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        read <= 100,
        "a run with nothing waiting reads at most 100 products not on sale: {read}"
    );
    assert_eq!(cream_added(&r), 2);
    r.stop();
}
