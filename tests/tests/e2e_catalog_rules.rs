#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! What a merchant relies on in the catalog whatever the order in which things happen: the
//! price charged is one WeChat approved, never that of a draft it did not audit.

use serde_json::json;
use std::time::Duration;

#[path = "reliability_support.rs"]
mod support;
use support::{buy_tea, get_product, stack_with, tea, Client};

async fn verdict(c: &Client, approve: bool) {
    // A verdict push is told from a replay by its ids, status and `CreateTime` (seconds): let
    // each be stamped later than the one before, as any real one is.
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
            &json!({"out_product_id": "tea", "approve": approve, "reason": "no"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
}

fn audit_pushes(r: &wxlocal::gateway::Running) -> usize {
    r.sandbox
        .pushed_events()
        .iter()
        .filter(|e| e["Event"] == "open_product_spu_audit")
        .count()
}

/// GIVEN an approved tea selling at 1990 with an edit (2500) under audit
/// WHEN the merchant submits another edit (9900) and, while that submission is on its way to
/// WeChat, WeChat approves the first edit and pushes its verdict
/// THEN that verdict (WeChat's draft: the 2500 edit) does not approve the 9900 edit, which
/// WeChat has not audited: the tea sells as WeChat approved it (2500, as WeChat sells it),
/// the 9900 edit stays under audit, and when WeChat rejects it, 9900 is never charged. The verdict used to approve
/// whatever edit we held as under audit: the 9900 edit went on sale unaudited, and stayed on
/// sale after WeChat rejected it.
#[tokio::test]
async fn a_verdict_on_an_earlier_edit_does_not_approve_a_later_one() {
    let r = stack_with(&[]).await;
    r.sandbox.set_auto_audit(false);
    let c = Client::new(&r);
    let (token, _) = c.login("buyer").await;

    let stock = c.stock().await;
    let (s, v) = c
        .admin(
            "/admin/catalogSync",
            &tea("Longjing tea, spring", 2500, stock),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["product"]["edit"]["audit"], "AUDITING", "{v}");
    assert_eq!(buy_tea(&c, &token).await, Ok(1990));

    // The next edit's submission reaches WeChat 2 s late.
    c.fault(json!({"path": "shop/spu/update", "mode": "delay", "delay_ms": 2000, "count": 1}))
        .await;
    let stock = c.stock().await;
    let later = tokio::spawn({
        let c = c.clone();
        async move {
            c.admin(
                "/admin/catalogSync",
                &tea("Longjing tea, gold", 9900, stock),
            )
            .await
        }
    });
    support::eventually("the later edit stored", Duration::from_secs(5), || {
        let c = c.clone();
        async move { get_product(&c, "tea").await["edit"]["title"] == "Longjing tea, gold" }
    })
    .await;
    let before = audit_pushes(&r);
    let on_sale = get_product(&c, "tea").await["title"].clone();
    verdict(&c, true).await; // WeChat approves the edit it holds: the 2500 one
    let (s, v) = later.await.unwrap();
    assert_eq!(s, 200, "{v}");
    support::eventually("the approval pushed", Duration::from_secs(5), || {
        let n = audit_pushes(&r);
        async move { n > before }
    })
    .await;
    // Its handling: the push is delivered in the background, and a loaded host may take
    // longer than any fixed pause (a 500 ms sleep here raced it); whatever edit the verdict
    // puts on sale, the title on sale changes, and what it changed to is checked below.
    support::eventually("the verdict handled", Duration::from_secs(20), || {
        let (c, on_sale) = (c.clone(), on_sale.clone());
        async move { get_product(&c, "tea").await["title"] != on_sale }
    })
    .await;

    // The 2500 edit WeChat approved is on sale (as at WeChat); the 9900 one is under audit.
    let p = get_product(&c, "tea").await;
    assert_eq!(p["title"], "Longjing tea, spring", "{p}");
    assert_eq!(p["audit"], "APPROVED", "{p}");
    assert_eq!(p["edit"]["title"], "Longjing tea, gold", "{p}");
    assert_eq!(p["edit"]["audit"], "AUDITING", "{p}");
    assert_eq!(buy_tea(&c, &token).await, Ok(2500));

    // WeChat rejects the 9900 edit: it never goes on sale.
    verdict(&c, false).await;
    support::eventually("the rejection", Duration::from_secs(10), || {
        let c = c.clone();
        async move { get_product(&c, "tea").await["edit"]["audit"] == "REJECTED" }
    })
    .await;
    let p = get_product(&c, "tea").await;
    assert_eq!(p["title"], "Longjing tea, spring", "{p}");
    assert_eq!(buy_tea(&c, &token).await, Ok(2500));
    r.stop();
}
