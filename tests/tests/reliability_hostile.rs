#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! Hostile input: each case asserts the reply and that nothing changed (the order, its
//! syncs, the catalog), then — where it makes sense — that the genuine version of the same
//! request *does* change it, so a test that refuses everything could not pass.

#[path = "reliability_support.rs"]
mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::*;
use wxlocal::gateway::Running;

/// Everything an attacker could have moved for one unpaid order.
async fn untouched(r: &Running, c: &Client, token: &str, no: &str) {
    let o = c.status(token, no).await;
    assert_eq!(o["status"], "PREPAID", "{o}");
    assert!(o["transaction_id"].is_null(), "{o}");
    assert!(
        !r.sandbox
            .calls("shop/order/pay")
            .iter()
            .any(|v| v["out_order_id"] == no),
        "no sync for an order that was not paid"
    );
    assert!(c.dead_letters().await.is_empty());
}

fn without_sign(xml: &str) -> String {
    let a = xml.find("<sign>").unwrap();
    let b = xml.find("</sign>").unwrap() + "</sign>".len();
    format!("{}{}", &xml[..a], &xml[b..])
}

fn with_sign(xml: &str, sign: &str) -> String {
    format!(
        "{}<sign><![CDATA[{sign}]]></sign></xml>",
        without_sign(xml).trim_end_matches("</xml>")
    )
}

#[tokio::test]
async fn forged_foreign_and_malformed_payment_notifications_change_nothing() {
    let r = stack_with(&[("WXPAY_NOTIFY_URL", DEAD_NOTIFY_URL)]).await;
    let c = Client::new(&r);
    let (token, openid) = c.login("victim").await;
    let (_, order) = c.order(&token, 1, None).await;
    let no = order["out_trade_no"].as_str().unwrap().to_owned();
    let cfg = &r.app.config;
    let txid = "4200000000202401010000000000001";
    let genuine = notification(&r, &no, &openid, 1990, txid);
    let spec = |appid: &'static str, mch: &'static str, total: i64, key: &'static str| {
        (appid, mch, total, key)
    };
    let mut cases: Vec<(&str, String)> = Vec::new();
    for (what, (appid, mch, total, key)) in [
        (
            "wrong amount",
            spec("", "", 1, cfg.api_key().to_owned().leak()),
        ),
        (
            "wrong appid",
            spec(
                "wx00000000000000ff",
                "",
                1990,
                cfg.api_key().to_owned().leak(),
            ),
        ),
        (
            "wrong mch_id",
            spec("", "1900000999", 1990, cfg.api_key().to_owned().leak()),
        ),
        (
            "signed with another key",
            spec("", "", 1990, "otherkey00000000000000000000000x"),
        ),
    ] {
        let appid = if appid.is_empty() { &cfg.appid } else { appid };
        let mch = if mch.is_empty() { &cfg.mch_id } else { mch };
        cases.push((
            what,
            signed_notification(&Notice {
                appid,
                mch_id: mch,
                sub_appid: None,
                sub_mch_id: None,
                api_key: key,
                openid: &openid,
                no: &no,
                total,
                txid,
            }),
        ));
    }
    cases.push((
        "a sub-merchant's notification, none configured",
        signed_notification(&Notice {
            appid: &cfg.appid,
            mch_id: &cfg.mch_id,
            sub_appid: Some("wx00000000000000aa"),
            sub_mch_id: Some("1900000109"),
            api_key: cfg.api_key(),
            openid: &openid,
            no: &no,
            total: 1990,
            txid,
        }),
    ));
    // Genuinely signed, but in another currency / with more cash than the total.
    for (what, field, value) in [
        ("another currency", "fee_type", "USD"),
        ("cash_fee above total_fee", "cash_fee", "1991"),
    ] {
        let mut fields = wxshop::pay::xml::decode(genuine.as_bytes()).unwrap();
        fields.remove("sign");
        fields.insert(field.to_owned(), value.to_owned());
        cases.push((
            what,
            wxshop::pay::sign::signed_xml(fields, cfg.api_key(), wxshop::pay::SignType::Md5),
        ));
    }
    cases.push(("forged sign", with_sign(&genuine, &"0".repeat(32))));
    cases.push(("empty sign", with_sign(&genuine, "")));
    cases.push(("missing sign", without_sign(&genuine)));
    cases.push((
        "field changed after signing",
        genuine.replace(txid, "4200000000202401010000000000009"),
    ));
    cases.push((
        "XXE",
        format!(
            r#"<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>{}"#,
            genuine.replace(&no, "&e;")
        ),
    ));
    let mut lol = String::from(r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol0 "lol">"#);
    for i in 1..10 {
        let prev = format!("&lol{};", i - 1);
        lol.push_str(&format!(r#"<!ENTITY lol{i} "{}">"#, prev.repeat(10)));
    }
    lol.push_str("]><xml><return_code>&lol9;</return_code></xml>");
    cases.push(("billion laughs", lol));
    cases.push((
        "deep nesting",
        format!(
            "<xml>{}{}</xml>",
            "<a>".repeat(50_000),
            "</a>".repeat(50_000)
        ),
    ));
    cases.push(("not XML", "{\"return_code\":\"SUCCESS\"}".to_owned()));
    cases.push(("empty body", String::new()));

    for (what, body) in &cases {
        let (s, text) = c.raw("/callbacks/pay", body.clone()).await;
        assert_eq!(s, 200, "{what}: {text}");
        assert_eq!(return_code(&text), "FAIL", "{what}: {text}");
        assert!(
            !text.contains("passwd") && !text.contains("lollol"),
            "{what}: nothing expanded into the reply: {text}"
        );
    }
    // Invalid UTF-8 inside an otherwise genuine message.
    let mut bytes = genuine.clone().into_bytes();
    let at = genuine.find("<openid>").unwrap() + 10;
    bytes[at] = 0xff;
    bytes[at + 1] = 0xfe;
    let (s, text) = c.raw("/callbacks/pay", bytes).await;
    assert_eq!((s, return_code(&text)), (200, "FAIL"), "{text}");
    // Unknown order, correctly signed: refused, and no order appears.
    let ghost = "WX20240101000000GHOST0001";
    let (s, text) = c
        .raw(
            "/callbacks/pay",
            notification(&r, ghost, &openid, 1990, txid),
        )
        .await;
    assert_eq!((s, return_code(&text)), (200, "FAIL"), "{text}");
    let (_, list) = c.post("/fn/queryOrder", Some(&token), &json!({})).await;
    assert_eq!(list["orders"].as_array().unwrap().len(), 1, "{list}");

    untouched(&r, &c, &token, &no).await;
    // The genuine notification is believed: the refusals above were not blanket refusals.
    let (_, text) = c.raw("/callbacks/pay", genuine).await;
    assert_eq!(return_code(&text), "SUCCESS", "{text}");
    assert_eq!(c.status(&token, &no).await["status"], "PAID");
    eprintln!(
        "FIGURES hostile notifications: {} refused cases + invalid UTF-8 + unknown order, 0 state changes",
        cases.len()
    );
}

/// Notifications signed with our key for our merchant that we cannot apply — another
/// currency, more cash than the total, a field that does not read (`time_end` in another
/// format, `cash_fee` not a whole number) — are refused (WeChat retries) *and* kept as
/// `payment_mismatch` evidence, as an amount mismatch is: money may have moved, and the
/// `PayNotifyUnrecorded` alarm sends the person to those events (docs/DEPLOY.md). Currency
/// and cash mismatches used to be logged only; unreadable fields were logged only and not
/// counted either, as if they were junk.
#[tokio::test]
async fn verified_notifications_we_cannot_apply_are_kept_for_a_person() {
    let r = stack_with(&[("WXPAY_NOTIFY_URL", DEAD_NOTIFY_URL)]).await;
    let c = Client::new(&r);
    let (token, openid) = c.login("keeper").await;
    let (_, order) = c.order(&token, 1, None).await;
    let no = order["out_trade_no"].as_str().unwrap().to_owned();
    let cfg = &r.app.config;
    for (i, (what, field, value)) in [
        ("another currency", "fee_type", "USD"),
        ("cash_fee above total_fee", "cash_fee", "1991"),
        (
            "time_end in another format",
            "time_end",
            "2023-11-14 22:13:20",
        ),
        ("cash_fee not a whole number", "cash_fee", "19.90"),
    ]
    .into_iter()
    .enumerate()
    {
        let txid = format!("42000000002024010100000000001{i}");
        let genuine = notification(&r, &no, &openid, 1990, &txid);
        let mut fields = wxshop::pay::xml::decode(genuine.as_bytes()).unwrap();
        fields.remove("sign");
        fields.insert(field.to_owned(), value.to_owned());
        let body = wxshop::pay::sign::signed_xml(fields, cfg.api_key(), wxshop::pay::SignType::Md5);
        let (s, text) = c.raw("/callbacks/pay", body).await;
        assert_eq!((s, return_code(&text)), (200, "FAIL"), "{what}: {text}");
        let kept = wxshop::store::repo::get_event(r.app.store.as_ref(), "payment_mismatch", &txid)
            .await
            .unwrap();
        let kept = kept.unwrap_or_else(|| panic!("{what}: no payment_mismatch evidence"));
        assert!(
            kept.value.body.contains(value) && kept.value.body.contains(&no),
            "{what}: the notification's fields are kept: {}",
            kept.value.body
        );
    }
    untouched(&r, &c, &token, &no).await;
}

#[tokio::test]
async fn oversized_bodies_are_refused_before_any_handler() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (token, _) = c.login("big").await;
    let stock = c.stock().await;
    let big = vec![b'a'; 10 * 1024 * 1024];
    for path in ["/callbacks/pay", "/callbacks/refund", "/callbacks/wechat"] {
        match c.try_raw(path, big.clone()).await {
            Ok((s, text)) => assert_eq!(s, 413, "{path}: {text}"),
            // The server may answer 413 and close before the client finished sending;
            // either way nothing was processed (checked below).
            Err(e) => eprintln!("{path}: connection closed while sending 10 MB: {e}"),
        }
    }
    let mut body = json!({"items": [{"product_id": "tea", "sku_id": "tea-250g", "quantity": 1}]});
    body["padding"] = json!("x".repeat(10 * 1024 * 1024));
    let resp = c
        .http
        .post(format!("{}/fn/unifiedOrder", c.base))
        .bearer_auth(&token)
        .body(serde_json::to_vec(&body).unwrap())
        .send()
        .await;
    if let Ok(resp) = resp {
        assert_eq!(resp.status().as_u16(), 413);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["code"], "BODY_TOO_LARGE");
    }
    // Just over the cap is refused too; just under reaches the handler.
    let (s, _) = c
        .raw("/callbacks/pay", vec![b' '; wxlocal::gateway::MAX_BODY + 1])
        .await;
    assert_eq!(s, 413);
    let (s, text) = c
        .raw("/callbacks/pay", vec![b' '; wxlocal::gateway::MAX_BODY])
        .await;
    assert_eq!((s, return_code(&text)), (200, "FAIL"));
    assert_eq!(c.stock().await, stock, "no order was taken");
    let (_, list) = c.post("/fn/queryOrder", Some(&token), &json!({})).await;
    assert_eq!(list["orders"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn provider_mode_refuses_a_foreign_sub_merchant() {
    let r = stack_with(&[
        ("WXPAY_NOTIFY_URL", DEAD_NOTIFY_URL),
        ("WXPAY_SUB_MCH_ID", "1900000109"),
        ("WXPAY_SUB_APPID", "wx0000000000000002"),
    ])
    .await;
    let c = Client::new(&r);
    let (token, openid) = c.login("sub").await;
    let (s, order) = c.order(&token, 1, None).await;
    assert_eq!(s, 200, "{order}");
    let no = order["out_trade_no"].as_str().unwrap().to_owned();
    let cfg = &r.app.config;
    let txid = "4200000000202401010000000000002";
    let notice = |sub_appid: &str, sub_mch: Option<&str>| {
        signed_notification(&Notice {
            appid: &cfg.appid,
            mch_id: &cfg.mch_id,
            sub_appid: Some(sub_appid),
            sub_mch_id: sub_mch,
            api_key: cfg.api_key(),
            openid: &openid,
            no: &no,
            total: 1990,
            txid,
        })
    };
    for (what, body) in [
        (
            "another sub-merchant",
            notice("wx0000000000000002", Some("1900000999")),
        ),
        ("no sub-merchant", notice("wx0000000000000002", None)),
        (
            "another sub-appid",
            notice("wx00000000000000ff", Some("1900000109")),
        ),
    ] {
        let (s, text) = c.raw("/callbacks/pay", body).await;
        assert_eq!((s, return_code(&text)), (200, "FAIL"), "{what}: {text}");
    }
    let o = c.status(&token, &no).await;
    assert_eq!(o["status"], "PREPAID", "{o}");
    let (_, text) = c
        .raw(
            "/callbacks/pay",
            notice("wx0000000000000002", Some("1900000109")),
        )
        .await;
    assert_eq!(return_code(&text), "SUCCESS", "ours is believed: {text}");
    assert_eq!(c.status(&token, &no).await["status"], "PAID");
}

/// An old genuine payment notification replayed after the order was refunded: the refund
/// stands (the payment is already recorded, so the replay is a harmless duplicate).
#[tokio::test]
async fn replayed_payment_notification_after_a_refund_changes_nothing() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (token, openid) = c.login("refundee").await;
    let (_, order) = c.order(&token, 1, None).await;
    let no = order["out_trade_no"].as_str().unwrap().to_owned();
    let txid = c.pay_at_sandbox(&no).await;
    eventually("PAID and synced", Duration::from_secs(10), || async {
        c.order_pay_calls().await.contains_key(&no)
    })
    .await;
    let (s, opened) = c
        .post(
            "/sandbox/_control/aftersale",
            None,
            &json!({"action": "apply", "out_order_id": no, "orderamt": 1990, "reason": "broken"}),
        )
        .await;
    assert_eq!(s, 200, "{opened}");
    let id = format!("WXAS{}", opened["aftersale_id"].as_u64().unwrap());
    eventually(
        "the imported after-sale",
        Duration::from_secs(10),
        || async {
            let (_, v) = c
                .admin(
                    "/admin/aftersaleSync",
                    &json!({"action": "approve", "aftersale_id": id}),
                )
                .await;
            v["aftersale"].is_object() || v["status"].is_string() || v.get("code").is_none()
        },
    )
    .await;
    eventually("the refund", Duration::from_secs(10), || async {
        c.status(&token, &no).await["refunded_fee"] == 1990
    })
    .await;
    let before = c.status(&token, &no).await;
    let syncs_before = c.order_pay_calls().await.get(&no).copied();

    let replay = notification(&r, &no, &openid, 1990, &txid);
    let (s, text) = c.raw("/callbacks/pay", replay).await;
    assert_eq!(s, 200);
    // The rule (pay_callback.rs): a payment already recorded answers SUCCESS, so WeChat
    // stops retrying; nothing is applied again.
    assert_eq!(return_code(&text), "SUCCESS", "{text}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = c.status(&token, &no).await;
    assert_eq!(after, before, "the replay changed the order");
    assert_eq!(c.order_pay_calls().await.get(&no).copied(), syncs_before);
    // A second, different payment for the refunded order is real money: acknowledged and
    // kept as evidence, but the order is not re-paid.
    let (_, text) = c
        .raw(
            "/callbacks/pay",
            notification(&r, &no, &openid, 1990, "4200000000202401019999999999999"),
        )
        .await;
    assert_eq!(return_code(&text), "SUCCESS", "{text}");
    let after = c.status(&token, &no).await;
    assert_eq!(after["transaction_id"], txid.as_str());
    assert_eq!(after["refunded_fee"], 1990);
    assert_eq!(after["status"], before["status"]);
}

#[tokio::test]
async fn users_cannot_be_spoofed_and_bad_tokens_are_refused() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (alice, alice_openid) = c.login("alice").await;
    let (mallory, _) = c.login("mallory").await;
    // Mallory orders "as Alice" by naming her openid in the body: the order is Mallory's.
    let mut body = json!({"items": [{"product_id": "tea", "sku_id": "tea-250g", "quantity": 1}],
        "address": {"receiver_name": "M", "detailed_address": "2 Road", "tel_number": "13800000001"},
        "openid": alice_openid, "_openid": alice_openid});
    let (s, v) = c.post("/fn/unifiedOrder", Some(&mallory), &body).await;
    assert_eq!(s, 200, "{v}");
    let no = v["out_trade_no"].as_str().unwrap().to_owned();
    let (_, alices) = c.post("/fn/queryOrder", Some(&alice), &json!({})).await;
    assert_eq!(alices["orders"].as_array().unwrap().len(), 0, "{alices}");
    let (s, _) = c
        .post(
            "/fn/queryOrder",
            Some(&alice),
            &json!({"out_trade_no": no, "action": "close"}),
        )
        .await;
    assert_eq!(s, 404, "Alice cannot see or close Mallory's order");
    assert_eq!(c.status(&mallory, &no).await["status"], "PREPAID");

    // Expired (genuinely signed), tampered, foreign-key, empty and missing tokens: 401.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let expired = r.app.sessions.issue(
        &wxshop::domain::OpenId::parse(alice_openid.clone()).unwrap(),
        now - 7200,
        60,
    );
    let (head, sig) = alice.split_once('.').unwrap();
    let mut flipped = sig.to_owned().into_bytes();
    flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
    let tampered_sig = format!("{head}.{}", String::from_utf8(flipped).unwrap());
    let (_, msig) = mallory.split_once('.').unwrap();
    let swapped = format!("{head}.{msig}");
    body["openid"] = Value::Null;
    for (what, token) in [
        ("expired", Some(expired.as_str())),
        ("tampered signature", Some(tampered_sig.as_str())),
        ("Alice's payload with Mallory's signature", Some(&swapped)),
        ("garbage", Some("not-a-token")),
        ("empty", Some("")),
        ("missing", None),
    ] {
        for path in [
            "/fn/unifiedOrder",
            "/fn/queryOrder",
            "/fn/aftersaleSync",
            "/fn/catalogSync",
        ] {
            let (s, v) = c.post(path, token, &body).await;
            assert_eq!(s, 401, "{what} on {path}: {v}");
            assert_eq!(v["code"], "UNAUTHENTICATED", "{what}: {v}");
        }
    }
    let (_, alices) = c.post("/fn/queryOrder", Some(&alice), &json!({})).await;
    assert_eq!(alices["orders"].as_array().unwrap().len(), 0);
}

/// A merchant who lowers `SESSION_TTL_SECS` (say after an incident) shortens every session,
/// including tokens issued under the longer TTL; those still within the new TTL keep working.
#[tokio::test]
async fn lowering_the_session_ttl_shortens_sessions_already_issued() {
    let r = stack_with(&[("SESSION_TTL_SECS", "3600")]).await;
    let c = Client::new(&r);
    let (_, openid) = c.login("alice").await;
    let openid = wxshop::domain::OpenId::parse(openid).unwrap();
    let now = r.app.clock.now_secs();
    let week = 7 * 24 * 3600;
    // Both issued under a 7-day TTL: one 2 hours ago, one 10 minutes ago.
    let old = r.app.sessions.issue(&openid, now - 7200, week);
    let recent = r.app.sessions.issue(&openid, now - 600, week);
    let (s, v) = c.post("/fn/queryOrder", Some(&old), &json!({})).await;
    assert_eq!(s, 401, "issued 2 h ago, TTL now 1 h: {v}");
    assert_eq!(v["code"], "UNAUTHENTICATED", "{v}");
    assert!(v["message"].as_str().unwrap().contains("expired"), "{v}");
    let (s, v) = c.post("/fn/queryOrder", Some(&recent), &json!({})).await;
    assert_eq!(s, 200, "issued 10 min ago is within the TTL: {v}");
}

/// A token whose `iat` lies in the future — we never issue one; only whoever holds the secret
/// (or a host with a wrong clock) could — is refused like any bad token, with the code the
/// mini program logs in again on. A minute of clock difference between hosts is allowed.
/// Such a token used to be let in, and its TTL bound counted from its future `iat`.
#[tokio::test]
async fn a_session_issued_in_the_future_is_refused() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (_, openid) = c.login("alice").await;
    let openid = wxshop::domain::OpenId::parse(openid).unwrap();
    let now = r.app.clock.now_secs();
    let week = 7 * 24 * 3600;
    let ahead = r.app.sessions.issue(&openid, now + 3600, week);
    for path in [
        "/fn/queryOrder",
        "/fn/unifiedOrder",
        "/fn/aftersaleSync",
        "/fn/catalogSync",
    ] {
        let (s, v) = c.post(path, Some(&ahead), &json!({})).await;
        assert_eq!(s, 401, "issued an hour ahead, on {path}: {v}");
        assert_eq!(v["code"], "UNAUTHENTICATED", "{v}");
        assert!(v["message"].as_str().unwrap().contains("future"), "{v}");
    }
    let skewed = r.app.sessions.issue(&openid, now + 30, week);
    let (s, v) = c.post("/fn/queryOrder", Some(&skewed), &json!({})).await;
    assert_eq!(s, 200, "30 s ahead is within the clock allowance: {v}");
}

/// Auth schemes are case-insensitive (RFC 9110 §11.1): a client sending `bearer` or `BEARER`,
/// or padding the header with whitespace, is let in — for users and for the admin token —
/// while any other scheme is still refused with the same clear error.
#[tokio::test]
async fn the_bearer_scheme_is_read_in_any_case() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (alice, _) = c.login("alice").await;
    let send = |path: &'static str, auth: String| {
        let c = c.clone();
        async move {
            let resp = c
                .http
                .post(format!("{}{path}", c.base))
                .header("authorization", auth)
                .json(&if path.starts_with("/admin/") {
                    json!({"action": "dead_letters"})
                } else {
                    json!({})
                })
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap())
        }
    };
    for spelling in [
        "Bearer {}",
        "bearer {}",
        "BEARER {}",
        "bEaReR \t {}  ",
        " Bearer  {}",
    ] {
        for (path, token) in [
            ("/fn/queryOrder", alice.as_str()),
            ("/admin/orderSync", r.admin_token.as_str()),
        ] {
            let (s, v) = send(path, spelling.replace("{}", token)).await;
            assert_eq!(s, 200, "{path} with {spelling:?}: {v}");
        }
    }
    for spelling in [
        "Basic {}",
        "Token {}",
        "Bearer{}",
        "Bearer: {}",
        "{}",
        "Bearer",
    ] {
        let (s, v) = send("/fn/queryOrder", spelling.replace("{}", &alice)).await;
        assert_eq!(s, 401, "user with {spelling:?}: {v}");
        assert_eq!(v["code"], "UNAUTHENTICATED", "{v}");
        let (s, v) = send("/admin/orderSync", spelling.replace("{}", &r.admin_token)).await;
        assert_eq!(s, 401, "admin with {spelling:?}: {v}");
        assert!(
            v["message"].as_str().unwrap_or("").contains("Bearer"),
            "the error says what to send: {v}"
        );
    }
}

#[tokio::test]
async fn admin_routes_need_the_admin_token() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (user, _) = c.login("user").await;
    let stock = c.stock().await;
    let wrong = format!("{}x", r.admin_token);
    let calls = [
        (
            "/admin/catalogSync",
            json!({"action": "set_stock", "product_id": "tea", "sku_id": "tea-250g", "stock": 0}),
        ),
        ("/admin/orderSync", json!({"action": "dead_letters"})),
        ("/admin/aftersaleSync", json!({"action": "list"})),
        ("/admin/funds", json!({"action": "balance"})),
    ];
    for (path, body) in &calls {
        for (what, token) in [
            ("no token", None),
            ("a user's session token", Some(user.as_str())),
            ("a wrong admin token", Some(wrong.as_str())),
            ("an empty token", Some("")),
        ] {
            let (s, v) = c.post(path, token, body).await;
            assert_eq!(s, 401, "{path} with {what}: {v}");
        }
    }
    // Basic auth or the token in the body does not count either.
    let resp = c
        .http
        .post(format!("{}/admin/catalogSync", c.base))
        .basic_auth("admin", Some(&r.admin_token))
        .json(&calls[0].1)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(c.stock().await, stock, "the stock did not move");
}

/// A product audit verdict (the kind of event that decides what may be sold) replayed with a
/// bad signature, or encrypted for another mini program, is refused and changes nothing.
/// The seeded tea's audit status, as the merchant reads it.
async fn tea_audit(c: &Client) -> Value {
    let (_, p) = c
        .admin(
            "/admin/catalogSync",
            &json!({"action": "get", "product_id": "tea"}),
        )
        .await;
    p["product"]["audit"].clone()
}

/// The audit approval the sandbox pushed while seeding, and the same event turned into a
/// (later) rejection.
fn seeded_audit_and_forged_rejection(r: &Running) -> (Value, Value) {
    let genuine = r
        .sandbox
        .pushed_events()
        .into_iter()
        .find(|e| e["Event"] == "open_product_spu_audit")
        .expect("the seed's audit push");
    let mut forged = genuine.clone();
    forged["OpenProductSpuAudit"]["status"] = json!(3);
    forged["OpenProductSpuAudit"]["reject_reason"] = json!("forged");
    forged["CreateTime"] = json!(genuine["CreateTime"].as_i64().unwrap_or(1_700_000_000) + 1);
    (genuine, forged)
}

#[tokio::test]
async fn push_events_with_bad_signatures_or_a_foreign_appid_change_nothing() {
    const AES: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFA";
    let r = stack_with(&[("WX_PUSH_AES_KEY", AES)]).await;
    let c = Client::new(&r);
    let approved = || tea_audit(&c);
    assert_eq!(approved().await, "APPROVED");
    // The genuine approval the sandbox pushed while seeding, turned into a rejection.
    let (_, ev) = seeded_audit_and_forged_rejection(&r);
    let msg = ev.to_string();
    let token = "localpushtoken";
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let ours = wxshop::push::PushConfig::new(&r.app.config.appid, token, Some(AES)).unwrap();
    let foreign = wxshop::push::PushConfig::new("wx00000000000000ff", token, Some(AES)).unwrap();
    let post = |query: String, body: String| {
        let c = c.clone();
        async move {
            let resp = c
                .http
                .post(format!("{}/callbacks/wechat?{query}", c.base))
                .body(body)
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    let (env_foreign, sig_foreign) = wxshop::push::encrypt(&foreign, &msg, &ts, "nonce1").unwrap();
    let (env_ours, sig_ours) = wxshop::push::encrypt(&ours, &msg, &ts, "nonce2").unwrap();
    let q = |nonce: &str, sig: &str| {
        wxshop::push::PushQuery::signed_aes(token, &ts, nonce, sig).to_query_string()
    };
    // Encrypted for another appid under our token and key: only WeChat (or a holder of both)
    // can make one, so it says our WX_APPID is wrong — a server error, for the 5xx alarm.
    let (s, text) = post(q("nonce1", &sig_foreign), env_foreign).await;
    assert_eq!(s, 503, "foreign appid, valid signature: {text}");
    assert!(text.contains("PUSH_WRONG_APPID"), "{text}");
    assert_eq!(
        approved().await,
        "APPROVED",
        "the foreign push changed the audit"
    );
    let cases = [
        (
            "bad msg_signature",
            q("nonce2", &"0".repeat(40)),
            env_ours.clone(),
        ),
        (
            "signature of another message",
            q("nonce2", &sig_foreign),
            env_ours.clone(),
        ),
        (
            "plaintext where safe mode is on",
            wxshop::push::PushQuery::signed(token, &ts, "nonce3").to_query_string(),
            msg.clone(),
        ),
        ("no signature at all", String::new(), env_ours.clone()),
    ];
    for (what, query, body) in &cases {
        let (s, text) = post(query.clone(), body.clone()).await;
        assert!((400..500).contains(&s), "{what}: {s} {text}");
        assert_eq!(approved().await, "APPROVED", "{what} changed the audit");
    }
    // GET URL verification with a bad signature echoes nothing.
    let resp = c
        .http
        .get(format!(
            "{}/callbacks/wechat?signature=bad&timestamp={ts}&nonce=n&echostr=ECHO",
            c.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    assert!(!resp.text().await.unwrap().contains("ECHO"));
    // The properly signed message is taken in: the refusals were not blanket refusals. An
    // audit push is then checked against WeChat's own record of the product (`spu/get`),
    // which has nothing rejected: the approved product stays on sale.
    let asked = r.sandbox.calls("shop/spu/get").len();
    let (s, text) = post(q("nonce2", &sig_ours), env_ours).await;
    assert_eq!(s, 200, "{text}");
    assert_eq!(r.sandbox.calls("shop/spu/get").len(), asked + 1);
    assert_eq!(approved().await, "APPROVED");
}

/// The one-body guard holds for every spelling of a signature that verifies: the same
/// signature uppercased, or with a trailing space, under the same timestamp and nonce is the
/// signature already used, not a fresh one, and the other body under it is refused.
#[tokio::test]
async fn plaintext_push_signatures_hold_for_one_body_in_any_spelling() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let audit = || tea_audit(&c);
    assert_eq!(audit().await, "APPROVED");
    let (genuine, forged) = seeded_audit_and_forged_rejection(&r);
    let now = r.app.clock.now_secs().to_string();
    let signed = wxshop::push::PushQuery::signed("localpushtoken", &now, "n-spelled");
    let url = |signature: String| {
        let q = wxshop::push::PushQuery {
            signature: Some(signature),
            ..signed.clone()
        };
        format!("{}/callbacks/wechat?{}", c.base, q.to_query_string())
    };
    let post = |url: String, body: &Value| {
        let c = c.clone();
        let body = body.to_string();
        async move {
            let resp = c.http.post(url).body(body).send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    let sig = signed.signature.clone().unwrap();
    let (s, t) = post(url(sig.clone()), &genuine).await;
    assert_eq!((s, t.as_str()), (200, "success"));
    for spelling in [sig.to_ascii_uppercase(), format!("{sig} ")] {
        let (s, t) = post(url(spelling.clone()), &forged).await;
        assert_eq!(s, 403, "`{spelling}`: {t}");
        assert!(t.contains("already used"), "{t}");
        assert_eq!(
            audit().await,
            "APPROVED",
            "a respelled signature carried another body"
        );
    }
}

/// The console's URL verification (GET) is signed as a plaintext push is. Its URL, seen once
/// (a proxy log, say), must not carry a push: the signature is spent by the verification.
#[tokio::test]
async fn a_url_verification_signature_carries_no_push() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    assert_eq!(tea_audit(&c).await, "APPROVED");
    let (_, forged) = seeded_audit_and_forged_rejection(&r);
    let now = r.app.clock.now_secs().to_string();
    let mut q = wxshop::push::PushQuery::signed("localpushtoken", &now, "n-verify");
    q.echostr = Some("ECHO-1".into());
    let url = format!("{}/callbacks/wechat?{}", c.base, q.to_query_string());
    let resp = c.http.get(&url).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.text().await.unwrap(), "ECHO-1");
    let resp = c
        .http
        .post(&url)
        .body(forged.to_string())
        .send()
        .await
        .unwrap();
    let (s, t) = (resp.status().as_u16(), resp.text().await.unwrap());
    assert_eq!(s, 403, "{t}");
    assert_eq!(
        tea_audit(&c).await,
        "APPROVED",
        "a verification URL carried a push"
    );
    // The console may verify again with the same URL: still echoed.
    let resp = c.http.get(&url).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

/// The console's URL verification is held to the push window as pushes are. GIVEN a
/// verification URL signed with our token whose `timestamp` is an hour old (a URL seen once in
/// a proxy's log, say) or an hour ahead, THEN it is refused — 403 naming the timestamp, the
/// `echostr` not echoed — and the same verification four minutes old is echoed. A captured
/// verification URL used to be echoed for ever.
#[tokio::test]
async fn a_url_verification_far_from_its_time_is_refused() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let now = r.app.clock.now_secs();
    let verify = |ts: i64, nonce: &str| {
        let mut q = wxshop::push::PushQuery::signed("localpushtoken", &ts.to_string(), nonce);
        q.echostr = Some(format!("ECHO-{nonce}"));
        let url = format!("{}/callbacks/wechat?{}", c.base, q.to_query_string());
        let c = c.clone();
        async move {
            let resp = c.http.get(url).send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    for (what, ts, nonce) in [
        ("an hour old", now - 3600, "v-old"),
        ("an hour ahead", now + 3600, "v-ahead"),
    ] {
        let (s, t) = verify(ts, nonce).await;
        assert_eq!(s, 403, "{what}: {t}");
        assert!(t.contains("timestamp"), "{what}: {t}");
        assert!(!t.contains("ECHO"), "{what} echoed: {t}");
    }
    let (s, t) = verify(now - 240, "v-recent").await;
    assert_eq!((s, t.as_str()), (200, "ECHO-v-recent"));
}

/// A refused push answers 403, which no error alarm sees, so each refusal that means "not
/// WeChat's, or our token or clock is wrong" is counted as `PushRefused` for its alarm: a URL
/// verification or push with a signature that does not match our token (`signature`, or
/// `msg_signature` in safe mode), one signed an hour ago, another body under a plaintext
/// signature already used. A request without any signature (a scanner) is refused but not
/// counted, and genuine pushes and verifications are not counted. These refusals used to be
/// only a 403 and a log line.
#[tokio::test]
async fn refused_pushes_are_counted_for_the_alarm() {
    use wxshop::metrics::{Metrics, PUSH_REFUSED};
    let (metrics, captured) = Metrics::capture("wxshop-AuditCallbackFunction-X");
    let r = stack_with_metrics(&[], metrics).await;
    let c = Client::new(&r);
    let (genuine, forged) = seeded_audit_and_forged_rejection(&r);
    let token = "localpushtoken";
    let now = r.app.clock.now_secs();
    let query =
        |ts: i64, nonce: &str| wxshop::push::PushQuery::signed(token, &ts.to_string(), nonce);
    let get = |q: wxshop::push::PushQuery| {
        let c = c.clone();
        async move {
            let url = format!("{}/callbacks/wechat?{}", c.base, q.to_query_string());
            let resp = c.http.get(url).send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    let post = |q: wxshop::push::PushQuery, body: &Value| {
        let c = c.clone();
        let body = body.to_string();
        async move {
            c.raw(&format!("/callbacks/wechat?{}", q.to_query_string()), body)
                .await
        }
    };
    let refused = || captured.total(PUSH_REFUSED);
    let echo = |mut q: wxshop::push::PushQuery| {
        q.echostr = Some("ECHO".into());
        q
    };

    let (s, t) = get(echo(query(now, "v-good"))).await;
    assert_eq!((s, t.as_str()), (200, "ECHO"));
    assert_eq!(refused(), 0, "a genuine verification is not counted");

    let mut bad = echo(query(now, "v-bad"));
    bad.signature = Some("0".repeat(40));
    assert_eq!(get(bad).await.0, 403);
    assert_eq!(refused(), 1, "verification with a bad signature");
    assert_eq!(get(echo(query(now - 3600, "v-old"))).await.0, 403);
    assert_eq!(refused(), 2, "verification an hour old");

    let mut bad = query(now, "p-bad");
    bad.signature = Some("0".repeat(40));
    assert_eq!(post(bad, &forged).await.0, 403);
    assert_eq!(refused(), 3, "push with a bad signature");
    assert_eq!(post(query(now - 3600, "p-old"), &forged).await.0, 403);
    assert_eq!(refused(), 4, "push an hour old");
    let (s, t) = post(query(now, "p-used"), &genuine).await;
    assert_eq!((s, t.as_str()), (200, "success"));
    assert_eq!(refused(), 4, "a genuine push is not counted");
    let (s, t) = post(query(now, "p-used"), &forged).await;
    assert_eq!(s, 403, "{t}");
    assert!(t.contains("already used"), "{t}");
    assert_eq!(refused(), 5, "another body under a used signature");

    // A scanner's requests without any signature: refused, not counted.
    let (s, _) = c.raw("/callbacks/wechat", forged.to_string()).await;
    assert_eq!(s, 403);
    let resp = c
        .http
        .get(format!("{}/callbacks/wechat?echostr=x", c.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    assert_eq!(refused(), 5, "requests without a signature are not counted");
    assert_eq!(tea_audit(&c).await, "APPROVED", "no refused push acted");

    // Safe mode: a `msg_signature` that does not match the body is counted too.
    const AES: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFA";
    let (metrics, captured) = Metrics::capture("wxshop-AuditCallbackFunction-Y");
    let r = stack_with_metrics(&[("WX_PUSH_AES_KEY", AES)], metrics).await;
    let c = Client::new(&r);
    let cfg = wxshop::push::PushConfig::new(&r.app.config.appid, token, Some(AES)).unwrap();
    let ts = r.app.clock.now_secs().to_string();
    let (envelope, _) = wxshop::push::encrypt(&cfg, &forged.to_string(), &ts, "s-bad").unwrap();
    let q = wxshop::push::PushQuery::signed_aes(token, &ts, "s-bad", &"0".repeat(40));
    let (s, t) = c
        .raw(
            &format!("/callbacks/wechat?{}", q.to_query_string()),
            envelope,
        )
        .await;
    assert_eq!(s, 403, "{t}");
    assert_eq!(captured.total(PUSH_REFUSED), 1, "a bad msg_signature");
}

/// Plaintext push mode: WeChat's `signature` covers token, timestamp and nonce, not the body.
/// A signed URL seen once (a proxy log, say) must not carry another body, nor be used long
/// after its time: both refused, the product untouched. The genuine redelivery of the same body
/// still passes, and the same body under a fresh signature is taken in (and checked with
/// WeChat) — the refusals are not blanket refusals.
#[tokio::test]
async fn plaintext_push_signatures_hold_for_one_body_and_only_near_their_time() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let audit = || tea_audit(&c);
    assert_eq!(audit().await, "APPROVED");
    let (genuine, forged) = seeded_audit_and_forged_rejection(&r);
    let now = r.app.clock.now_secs();
    let url = |ts: i64, nonce: &str| {
        let q = wxshop::push::PushQuery::signed("localpushtoken", &ts.to_string(), nonce);
        format!("{}/callbacks/wechat?{}", c.base, q.to_query_string())
    };
    let post = |url: String, body: &Value| {
        let c = c.clone();
        let body = body.to_string();
        async move {
            let resp = c.http.post(url).body(body).send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    // A signed URL used for the genuine message, then for a forged one: refused.
    let (s, t) = post(url(now, "n-seen"), &genuine).await;
    assert_eq!((s, t.as_str()), (200, "success"));
    let (s, t) = post(url(now, "n-seen"), &forged).await;
    assert_eq!(s, 403, "{t}");
    assert!(t.contains("already used"), "{t}");
    assert_eq!(
        audit().await,
        "APPROVED",
        "a reused signature changed the audit"
    );
    // WeChat's redelivery of the same body under the same URL is fine.
    let (s, t) = post(url(now, "n-seen"), &genuine).await;
    assert_eq!((s, t.as_str()), (200, "success"));
    // A validly signed URL from long ago, never used: refused for its age.
    let (s, t) = post(url(now - 3_600, "n-old"), &forged).await;
    assert_eq!(s, 403, "{t}");
    assert!(t.contains("timestamp"), "{t}");
    assert_eq!(
        audit().await,
        "APPROVED",
        "a stale signature changed the audit"
    );
    // The same body, freshly signed: taken in, as far as any audit push is: acknowledged and
    // checked against WeChat's own record of the product (`spu/get`), which has nothing
    // rejected, so the approved product stays on sale.
    let asked = r.sandbox.calls("shop/spu/get").len();
    let (s, t) = post(url(now, "n-fresh"), &forged).await;
    assert_eq!((s, t.as_str()), (200, "success"));
    assert_eq!(r.sandbox.calls("shop/spu/get").len(), asked + 1);
    assert_eq!(audit().await, "APPROVED");
}

/// A verdict the merchant is to read (a brand audit) is kept as the message read, not as the
/// request body: in safe mode the body is only ciphertext, which told the merchant nothing.
#[tokio::test]
async fn a_safe_mode_push_is_kept_readable() {
    const AES: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFA";
    let r = stack_with(&[("WX_PUSH_AES_KEY", AES)]).await;
    let c = Client::new(&r);
    let token = "localpushtoken";
    let ts = r.app.clock.now_secs().to_string();
    let msg = json!({"ToUserName": "gh_abc", "FromUserName": "o_wechat", "CreateTime": ts.parse::<i64>().unwrap(),
        "MsgType": "event", "Event": "open_product_brand_audit",
        "QualificationAuditResult": {"audit_id": "AUD-77", "status": 1, "audit_type": 1,
                                      "reject_reason": "", "brand_id": 2100000777u64}})
    .to_string();
    let cfg = wxshop::push::PushConfig::new(&r.app.config.appid, token, Some(AES)).unwrap();
    let (envelope, sig) = wxshop::push::encrypt(&cfg, &msg, &ts, "n-brand").unwrap();
    let query = wxshop::push::PushQuery::signed_aes(token, &ts, "n-brand", &sig).to_query_string();
    let resp = c
        .http
        .post(format!("{}/callbacks/wechat?{query}", c.base))
        .body(envelope)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let kept = wxshop::store::repo::get_event(r.app.store.as_ref(), "push", &{
        let parsed = wxshop::push::PushEvent::from_message(
            &wxshop::push::decode_message(msg.as_bytes()).unwrap(),
        )
        .unwrap();
        parsed.dedupe_key()
    })
    .await
    .unwrap()
    .expect("the verdict is recorded");
    assert!(
        kept.value.body.contains("2100000777"),
        "{}",
        kept.value.body
    );
    assert!(kept.value.body.contains("AUD-77"), "{}", kept.value.body);
}

/// Safe mode signs the body, yet a push captured once (a proxy's log, a recorded request)
/// would act whenever posted again once its dedupe record is gone. GIVEN a genuinely signed
/// safe-mode push delisting `tea` whose `timestamp` is an hour old, or an hour ahead, THEN it
/// is refused as a stale plaintext one is: 403 naming the timestamp, never `success`, and
/// `tea` stays on sale. The same message within the window (4 minutes old: WeChat's retries
/// come seconds apart) is taken in and delists it. Safe-mode pushes used to be held to no
/// time at all.
#[tokio::test]
async fn a_safe_mode_push_far_from_its_time_is_refused() {
    const AES: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFA";
    let r = stack_with(&[("WX_PUSH_AES_KEY", AES)]).await;
    let c = Client::new(&r);
    let (buyer, _) = c.login("buyer").await;
    let token = "localpushtoken";
    let cfg = wxshop::push::PushConfig::new(&r.app.config.appid, token, Some(AES)).unwrap();
    let listing = || {
        let c = c.clone();
        async move {
            let (_, p) = c
                .admin(
                    "/admin/catalogSync",
                    &json!({"action": "get", "product_id": "tea"}),
                )
                .await;
            p["product"]["listing"].clone()
        }
    };
    let push = |ts: i64, nonce: &'static str| {
        let (c, cfg) = (c.clone(), cfg.clone());
        async move {
            let msg = json!({"ToUserName": "gh_abc", "FromUserName": "o_wechat", "CreateTime": ts,
                "MsgType": "event", "Event": "open_product_spu_status_update",
                "OpenProductSpuStatusUpdate": {"out_product_id": "tea", "status": 13,
                                               "reason": "platform delisting"}})
            .to_string();
            let ts = ts.to_string();
            let (envelope, sig) = wxshop::push::encrypt(&cfg, &msg, &ts, nonce).unwrap();
            let query =
                wxshop::push::PushQuery::signed_aes(token, &ts, nonce, &sig).to_query_string();
            c.raw(&format!("/callbacks/wechat?{query}"), envelope).await
        }
    };
    assert_eq!(listing().await, "LISTED");
    let now = r.app.clock.now_secs();
    for (what, ts, nonce) in [
        ("an hour old", now - 3600, "n-old"),
        ("an hour ahead", now + 3600, "n-ahead"),
    ] {
        let (s, t) = push(ts, nonce).await;
        assert_eq!(s, 403, "{what}: {t}");
        assert!(t.contains("timestamp"), "{what}: {t}");
        assert_eq!(listing().await, "LISTED", "{what} delisted tea");
    }
    let (s, v) = c.order(&buyer, 1, None).await;
    assert_eq!(s, 200, "tea still sells: {v}");
    let (s, t) = push(now - 240, "n-recent").await;
    assert_eq!((s, t.as_str()), (200, "success"));
    assert_eq!(listing().await, "DELISTED");
}

/// A customer-service message (a user's own words, which WeChat pushes to the same URL) is
/// acknowledged and kept only 30 days, its repeat still recognised; a shop event is kept as
/// before, without expiry. Such messages used to be kept forever.
#[tokio::test]
async fn a_users_message_is_kept_only_for_a_while() {
    const AES: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFA";
    let r = stack_with(&[("WX_PUSH_AES_KEY", AES)]).await;
    let c = Client::new(&r);
    let token = "localpushtoken";
    let cfg = wxshop::push::PushConfig::new(&r.app.config.appid, token, Some(AES)).unwrap();
    let now = r.app.clock.now_secs();
    let store = r.app.store.clone();
    let push = |msg: String, nonce: &'static str| {
        let (c, cfg, store) = (c.clone(), cfg.clone(), store.clone());
        async move {
            let ts = now.to_string();
            let (envelope, sig) = wxshop::push::encrypt(&cfg, &msg, &ts, nonce).unwrap();
            let query =
                wxshop::push::PushQuery::signed_aes(token, &ts, nonce, &sig).to_query_string();
            let resp = c
                .http
                .post(format!("{}/callbacks/wechat?{query}", c.base))
                .body(envelope)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), 200);
            let parsed = wxshop::push::PushEvent::from_message(
                &wxshop::push::decode_message(msg.as_bytes()).unwrap(),
            )
            .unwrap();
            wxshop::store::repo::get_event(store.as_ref(), "push", &parsed.dedupe_key())
                .await
                .unwrap()
                .expect("the push is recorded")
        }
    };
    let said = json!({"ToUserName": "gh_abc", "FromUserName": "o_user", "CreateTime": now,
        "MsgType": "text", "Content": "my phone is 13800000000", "MsgId": 1234567})
    .to_string();
    let kept = push(said.clone(), "n-said").await;
    let month = 30 * 24 * 3600;
    let expires = kept.value.expires_at.expect("a user's message expires");
    assert!(
        (now + month - 5..=now + month + 5).contains(&expires),
        "{expires} vs {now}"
    );
    // WeChat's retry is recognised as the same message: the one record, unchanged.
    let again = push(said, "n-said-2").await;
    assert_eq!(again.value, kept.value);
    assert_eq!(again.version, kept.version);
    let verdict = json!({"ToUserName": "gh_abc", "FromUserName": "o_wechat", "CreateTime": now,
        "MsgType": "event", "Event": "open_product_brand_audit",
        "QualificationAuditResult": {"audit_id": "AUD-78", "status": 1, "audit_type": 1,
                                      "reject_reason": "", "brand_id": 2100000778u64}})
    .to_string();
    assert_eq!(
        push(verdict, "n-verdict").await.value.expires_at,
        None,
        "shop events are kept"
    );
}

/// The way to safe mode without losing pushes: the console goes to compatible mode (the
/// message in the clear beside its `Encrypt`, `encrypt_type=aes`) before WX_PUSH_AES_KEY
/// reaches every instance. An instance without the key reads such a push as the plaintext-mode
/// push it also is — under the same guard (one body per signature) — and the merchant reads
/// the verdict. A safe-mode push (ciphertext only) still needs the key. Compatible-mode pushes
/// used to be refused outright without the key (400), and plaintext ones with it (403), so
/// every order of the two steps lost the pushes in between.
#[tokio::test]
async fn a_compatible_mode_push_is_read_before_the_key_is_deployed() {
    const AES: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFA";
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let token = "localpushtoken";
    let ts = r.app.clock.now_secs().to_string();
    let console = wxshop::push::PushConfig::new(&r.app.config.appid, token, Some(AES)).unwrap();
    let fields = |audit_id: &str| {
        format!(
            "<ToUserName><![CDATA[gh_abc]]></ToUserName><FromUserName><![CDATA[o_wechat]]></FromUserName>\
             <CreateTime>{ts}</CreateTime><MsgType><![CDATA[event]]></MsgType>\
             <Event><![CDATA[open_product_brand_audit]]></Event><QualificationAuditResult>\
             <audit_id>{audit_id}</audit_id><status>1</status><audit_type>1</audit_type>\
             <reject_reason></reject_reason><brand_id>2100000888</brand_id></QualificationAuditResult>"
        )
    };
    let compatible = |audit_id: &str, nonce: &str| {
        let msg = format!("<xml>{}</xml>", fields(audit_id));
        let enc = wxshop::push::encrypt_payload(&console, msg.as_bytes()).unwrap();
        let sig = wxshop::push::msg_signature(token, &ts, nonce, &enc);
        let body = format!(
            "<xml>{}<Encrypt><![CDATA[{enc}]]></Encrypt></xml>",
            fields(audit_id)
        );
        let query = wxshop::push::PushQuery::signed_aes(token, &ts, nonce, &sig);
        (query.to_query_string(), body)
    };
    let post = |query: String, body: String| {
        let c = c.clone();
        async move { c.raw(&format!("/callbacks/wechat?{query}"), body).await }
    };

    let (query, body) = compatible("AUD-88", "n-compat");
    let (s, t) = post(query.clone(), body.clone()).await;
    assert_eq!((s, t.as_str()), (200, "success"));
    let (s, v) = c
        .admin(
            "/admin/orderSync",
            &json!({"action": "events", "source": "push"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let verdict = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["body"]["QualificationAuditResult"]["audit_id"] == "AUD-88")
        .unwrap_or_else(|| panic!("the verdict is listed readable: {v}"));
    assert_eq!(verdict["event"], "open_product_brand_audit", "{verdict}");
    assert!(verdict.get("unreadable").is_none(), "{verdict}");

    // Its clear fields changed (`Encrypt`, which the signatures cover, kept): refused, as
    // another body under a plaintext-mode push's signature is.
    let other = body.replace("AUD-88", "AUD-FORGED");
    assert_ne!(other, body);
    let (s, t) = post(query, other).await;
    assert_eq!(s, 403, "{t}");
    assert!(t.contains("already used"), "{t}");
    // Badly signed: refused.
    let (_, body) = compatible("AUD-89", "n-bad");
    let bad = wxshop::push::PushQuery::signed_aes(token, &ts, "n-other", &"0".repeat(40));
    let (s, t) = post(bad.to_query_string(), body).await;
    assert_eq!(s, 403, "{t}");

    // Safe mode (only the ciphertext) cannot be read without the key: a server error (our
    // setting), which the 5xx alarm counts.
    let msg = format!("<xml>{}</xml>", fields("AUD-90"));
    let (envelope, sig) = wxshop::push::encrypt(&console, &msg, &ts, "n-safe").unwrap();
    let query = wxshop::push::PushQuery::signed_aes(token, &ts, "n-safe", &sig);
    let (s, t) = post(query.to_query_string(), envelope).await;
    assert_eq!(s, 503, "{t}");
    assert!(t.contains("PUSH_NOT_CONFIGURED"), "{t}");
}

/// A safe-mode push signed with our token that our key cannot decrypt — the EncodingAESKey
/// was regenerated in the console and WX_PUSH_AES_KEY not updated — is WeChat's, and every
/// push fails alike until the setting is fixed: 503 (a server error, which the API's 5xx alarm
/// counts, and WeChat retries), nothing recorded. It used to be 400 with a security warning,
/// as if probed, so every push was lost without a page.
#[tokio::test]
async fn a_push_our_key_cannot_decrypt_is_a_server_error() {
    const OURS: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFA";
    const CONSOLE: &str = "ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210zyxwvut";
    let r = stack_with(&[("WX_PUSH_AES_KEY", OURS)]).await;
    let c = Client::new(&r);
    let token = "localpushtoken";
    let ts = r.app.clock.now_secs().to_string();
    let msg = json!({"ToUserName": "gh_abc", "FromUserName": "o_wechat",
        "CreateTime": ts.parse::<i64>().unwrap(), "MsgType": "event",
        "Event": "open_product_brand_audit",
        "QualificationAuditResult": {"audit_id": "AUD-KEY", "status": 1, "audit_type": 1,
                                      "reject_reason": "", "brand_id": 2100000999u64}})
    .to_string();
    let push = |key: &str, nonce: &str| {
        let cfg = wxshop::push::PushConfig::new(&r.app.config.appid, token, Some(key)).unwrap();
        let (envelope, sig) = wxshop::push::encrypt(&cfg, &msg, &ts, nonce).unwrap();
        let query = wxshop::push::PushQuery::signed_aes(token, &ts, nonce, &sig);
        let c = c.clone();
        async move {
            c.raw(
                &format!("/callbacks/wechat?{}", query.to_query_string()),
                envelope,
            )
            .await
        }
    };
    let listed = || async {
        let (s, v) = c
            .admin(
                "/admin/orderSync",
                &json!({"action": "events", "source": "push"}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v.to_string().contains("AUD-KEY")
    };
    let (s, t) = push(CONSOLE, "n-rotated").await;
    assert_eq!(s, 503, "{t}");
    assert!(t.contains("PUSH_DECRYPT_FAILED"), "{t}");
    assert!(!listed().await, "nothing recorded");
    // With the key the stack has, the same message is taken in: the refusal was the key's.
    let (s, t) = push(OURS, "n-ours").await;
    assert_eq!((s, t.as_str()), (200, "success"));
    assert!(listed().await);
}

/// A user reads and acts on their own orders and after-sales only, and a refusal reads the
/// same whether the other user's order (or after-sale) exists or not: Mallory, holding
/// Alice's order number and after-sale id, gets exactly the answer a made-up number gets —
/// for reading the order, closing or confirming it, applying for its refund, listing its
/// after-sales, and cancelling or sending back Alice's after-sale — and Alice's order and
/// after-sale are untouched.
#[tokio::test]
async fn another_users_order_and_aftersale_read_as_absent() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (alice, _) = c.login("alice-owner").await;
    let (mallory, _) = c.login("mallory-prober").await;
    let (s, order) = c.order(&alice, 1, None).await;
    assert_eq!(s, 200, "{order}");
    let no = order["out_trade_no"].as_str().unwrap().to_owned();
    c.pay_at_sandbox(&no).await;
    eventually("PAID", Duration::from_secs(10), || async {
        c.status(&alice, &no).await["status"] == "PAID"
    })
    .await;
    let (s, applied) = c
        .post(
            "/fn/aftersaleSync",
            Some(&alice),
            &json!({"action": "apply", "out_trade_no": no, "reason": "broken"}),
        )
        .await;
    assert_eq!(s, 200, "{applied}");
    let aftersale = applied["aftersale"]["aftersale_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // A well-formed number and id nobody has, of the same shapes.
    let other_last = |id: &str| {
        let last = if id.ends_with('Z') { 'Y' } else { 'Z' };
        format!("{}{last}", &id[..id.len() - 1])
    };
    let made_up_no = other_last(&no);
    let made_up_as = other_last(&aftersale);
    let probes = |no: &str, id: &str| {
        vec![
            ("/fn/queryOrder", json!({"out_trade_no": no})),
            (
                "/fn/queryOrder",
                json!({"out_trade_no": no, "action": "close"}),
            ),
            (
                "/fn/queryOrder",
                json!({"out_trade_no": no, "action": "confirm"}),
            ),
            (
                "/fn/aftersaleSync",
                json!({"action": "apply", "out_trade_no": no, "amount": 1}),
            ),
            (
                "/fn/aftersaleSync",
                json!({"action": "apply", "out_trade_no": no, "idempotency_key": "k1"}),
            ),
            (
                "/fn/aftersaleSync",
                json!({"action": "list", "out_trade_no": no}),
            ),
            (
                "/fn/aftersaleSync",
                json!({"action": "cancel", "aftersale_id": id}),
            ),
            (
                "/fn/aftersaleSync",
                json!({"action": "return", "aftersale_id": id,
                "delivery_id": "SF", "delivery_name": "SF", "waybill_id": "SF1"}),
            ),
        ]
    };
    let theirs = probes(&no, &aftersale);
    let nobodys = probes(&made_up_no, &made_up_as);
    for ((path, real), (_, fake)) in theirs.iter().zip(&nobodys) {
        let (s, v) = c.post(path, Some(&mallory), real).await;
        let (s2, v2) = c.post(path, Some(&mallory), fake).await;
        assert_eq!(s, 404, "{path} {real}: {v}");
        // The same answer, the number or id it names aside.
        let same = |v: &Value, from: &str, to: &str| v.to_string().replace(from, to);
        assert_eq!(
            same(&v, &no, "N").replace(&aftersale, "A"),
            same(&v2, &made_up_no, "N").replace(&made_up_as, "A"),
            "{path} {real}: {s} vs {s2}"
        );
        assert_eq!(s, s2, "{path}");
    }
    // Alice's order and after-sale as they were.
    let mine = c.status(&alice, &no).await;
    assert_eq!(mine["status"], "PAID", "{mine}");
    let (s, list) = c
        .post(
            "/fn/aftersaleSync",
            Some(&alice),
            &json!({"action": "list", "out_trade_no": no}),
        )
        .await;
    assert_eq!(s, 200, "{list}");
    let all = list["aftersales"].as_array().unwrap();
    assert_eq!(all.len(), 1, "{list}");
    assert_eq!(all[0]["status"], "REQUESTED", "{list}");
    assert!(all[0].get("goods_return").is_none(), "{list}");
}
