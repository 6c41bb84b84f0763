//! Fault injection: errcodes, HTTP 500 and delays on chosen APIs, by count or rate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sandbox_util;

use sandbox_util::*;
use serde_json::json;
use std::time::Instant;
use wxshop::pay::sign::{verify, SignType};

#[tokio::test]
async fn faults_by_count_rate_and_mode() {
    let sb = start(cfg()).await;
    let base = sb.base_url();
    let tok = token(&base).await;
    let faults = format!("{base}/_control/faults");

    // errcode on shop/order/pay, twice.
    post_json(
        &faults,
        json!({"path": "shop/order/pay", "mode": "errcode", "errcode": -1, "count": 2}),
    )
    .await;
    let body = json!({"out_order_id": "X", "openid": "o", "action_type": 1});
    assert_eq!(
        shop(&base, &tok, "order/pay", body.clone()).await["errcode"],
        -1
    );
    assert_eq!(
        shop(&base, &tok, "order/pay", body.clone()).await["errcode"],
        -1
    );
    // Third call reaches the real logic (order does not exist).
    assert_eq!(
        shop(&base, &tok, "order/pay", body.clone()).await["errcode"],
        1_010_011
    );
    assert_eq!(
        sb.sandbox.calls("shop/order/pay").len(),
        3,
        "faulted calls are recorded too"
    );

    // HTTP 500 once on unifiedorder, then normal.
    post_json(
        &faults,
        json!({"path": "pay/unifiedorder", "mode": "http500", "count": 1}),
    )
    .await;
    let notify = "http://127.0.0.1:9/pay";
    let (status, _) = post_raw(
        &format!("{base}/mch/pay/unifiedorder"),
        signed(order_fields("FLT000001", "1", notify), SignType::Md5),
    )
    .await;
    assert_eq!(status, 500);
    let ok = mch(
        &base,
        "pay/unifiedorder",
        order_fields("FLT000001", "1", notify),
        SignType::Md5,
    )
    .await;
    assert_eq!(ok["result_code"], "SUCCESS");

    // A merchant-API errcode fault is a signed SYSTEMERROR.
    post_json(
        &faults,
        json!({"path": "pay/orderquery", "mode": "errcode", "count": 1}),
    )
    .await;
    let q = mch(
        &base,
        "pay/orderquery",
        fields(&[("out_trade_no", "FLT000001")]),
        SignType::Md5,
    )
    .await;
    assert_eq!(q["err_code"], "SYSTEMERROR");
    assert_eq!(verify(&q, KEY), Ok(SignType::Md5));

    // Delay.
    post_json(
        &faults,
        json!({"path": "cat/get", "mode": "delay", "delay_ms": 150, "count": 1}),
    )
    .await;
    let t = Instant::now();
    assert_eq!(shop(&base, &tok, "cat/get", json!({})).await["errcode"], 0);
    assert!(t.elapsed().as_millis() >= 150);

    // "*" with rate 1.0 hits everything until cleared.
    post_json(
        &faults,
        json!({"path": "*", "mode": "errcode", "errcode": 45009, "rate": 1.0}),
    )
    .await;
    assert_eq!(
        shop(&base, &tok, "cat/get", json!({})).await["errcode"],
        45009
    );
    let listed = get_json(&faults).await;
    assert_eq!(listed["faults"].as_array().unwrap().len(), 1);
    let cleared = reqwest::Client::new().delete(&faults).send().await.unwrap();
    assert!(cleared.status().is_success());
    assert_eq!(shop(&base, &tok, "cat/get", json!({})).await["errcode"], 0);

    // rate 0.0 never fires.
    post_json(
        &faults,
        json!({"path": "cat/get", "mode": "http500", "rate": 0.0}),
    )
    .await;
    assert_eq!(shop(&base, &tok, "cat/get", json!({})).await["errcode"], 0);

    // Reset forgets everything.
    post_json(format!("{base}/_control/reset"), json!({})).await;
    assert!(sb.sandbox.calls("cat/get").is_empty());
    assert_eq!(
        shop(&base, &tok, "cat/get", json!({})).await["errcode"],
        40001
    );
}

/// WeChat signs every reply with the request's `sign_type`, its error replies too: an
/// injected business error on an HMAC-SHA256 request is HMAC-SHA256-signed (and says so),
/// and echoes the request's sub-merchant ids like any reply. It used to be MD5-signed
/// whatever the request used.
#[tokio::test]
async fn an_injected_error_is_signed_like_the_request() {
    let mut c = cfg();
    c.sub_mch_id = Some("1900000109".into());
    let sb = start(c).await;
    let base = sb.base_url();
    post_json(
        &format!("{base}/_control/faults"),
        json!({"path": "pay/orderquery", "mode": "errcode", "count": 2}),
    )
    .await;
    let query = fields(&[("out_trade_no", "FLT000002"), ("sub_mch_id", "1900000109")]);
    let q = mch(&base, "pay/orderquery", query.clone(), SignType::HmacSha256).await;
    assert_eq!(q["err_code"], "SYSTEMERROR", "{q:?}");
    assert_eq!(q["sign_type"], "HMAC-SHA256", "{q:?}");
    assert_eq!(q["sign"].len(), 64, "{q:?}");
    assert_eq!(verify(&q, KEY), Ok(SignType::HmacSha256));
    assert_eq!(q["sub_mch_id"], "1900000109", "{q:?}");
    let q = mch(&base, "pay/orderquery", query, SignType::Md5).await;
    assert_eq!(q["err_code"], "SYSTEMERROR", "{q:?}");
    assert!(!q.contains_key("sign_type"), "{q:?}");
    assert_eq!(verify(&q, KEY), Ok(SignType::Md5));
}

/// `slow`: the call takes effect at once; only its answer is late, so what it changed can be
/// seen (by another call, by a pushed event) before the caller hears back.
#[tokio::test]
async fn a_slow_answer_comes_after_the_call_took_effect() {
    let sb = start(cfg()).await;
    let base = sb.base_url();
    let tok = token(&base).await;
    post_json(
        format!("{base}/_control/faults"),
        json!({"path": "account/update_info", "mode": "slow", "delay_ms": SLOW_MS, "count": 1}),
    )
    .await;
    let t = Instant::now();
    let (b, k) = (base.clone(), tok.clone());
    let slow = tokio::spawn(async move {
        shop(
            &b,
            &k,
            "account/update_info",
            json!({"service_agent_phone": "020-1"}),
        )
        .await
    });
    // The change is looked for (not after a fixed 100 ms: on a loaded host the call may not
    // have reached the sandbox by then), and must be seen while the answer is still delayed.
    let deadline = Instant::now() + std::time::Duration::from_secs(20);
    let info = loop {
        let info = shop(&base, &tok, "account/get_info", json!({})).await;
        if info["data"]["service_agent_phone"] == "020-1" {
            break info;
        }
        assert!(
            Instant::now() < deadline && !slow.is_finished(),
            "the change not seen before its answer: {info}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(info["data"]["service_agent_phone"], "020-1", "{info}");
    assert!(!slow.is_finished(), "the answer is still on its way");
    assert_eq!(slow.await.unwrap()["errcode"], 0);
    assert!(t.elapsed().as_millis() >= u128::from(SLOW_MS));
}

/// The `slow` fault's delay above: long enough that a loaded host still sees the change
/// before the answer comes.
const SLOW_MS: u64 = 5_000;

/// POSTs `body` to a control endpoint: (HTTP status, answer).
async fn control(url: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// The test knobs take only what a test can mean: a fault with a misspelt field, a count or
/// delay out of range, both a count and a rate, a delay on a mode without one, errcode 0, a
/// refund outcome count or notification `duplicate` out of range, is refused with 400 naming
/// what is allowed, and nothing is set. (A misspelt `count` used to leave the fault on every
/// call for as long as the sandbox ran, a delay could hold calls for hours, and out-of-range
/// counts were cut or taken without a word.)
#[tokio::test]
async fn knobs_out_of_range_are_refused_with_the_allowed_range() {
    let sb = start(cfg()).await;
    let base = sb.base_url();
    let faults = format!("{base}/_control/faults");
    for (fault, says) in [
        (
            json!({"path": "pay/orderquery", "mode": "http500", "cout": 1}),
            "unknown field `cout`",
        ),
        (
            json!({"path": "pay/orderquery", "mode": "http500", "count": 0}),
            "count must be within 1..=10000",
        ),
        (
            json!({"path": "pay/orderquery", "mode": "http500", "count": 10_001}),
            "count must be within 1..=10000",
        ),
        (
            json!({"path": "pay/orderquery", "mode": "http500", "rate": 1.5}),
            "rate must be within 0.0..=1.0",
        ),
        (
            json!({"path": "pay/orderquery", "mode": "http500", "rate": 0.5, "count": 1}),
            "count or rate, not both",
        ),
        (
            json!({"path": "pay/orderquery", "mode": "delay", "delay_ms": 3_600_000}),
            "delay_ms must be within 0..=60000",
        ),
        (
            json!({"path": "pay/orderquery", "mode": "errcode", "delay_ms": 100}),
            "delay_ms is for the delay and slow modes",
        ),
        (
            json!({"path": "shop/order/get", "mode": "errcode", "errcode": 0}),
            "errcode must not be 0",
        ),
        (json!({"path": "", "mode": "http500"}), "path"),
    ] {
        let (s, v) = control(&faults, fault.clone()).await;
        assert_eq!(s, 400, "{fault}: {v}");
        let msg = v["error"].as_str().unwrap();
        assert!(msg.contains(says), "{fault}: {msg}");
    }
    assert_eq!(get_json(&faults).await["faults"], json!([]), "none set");
    // In range: taken; at most 100 at once.
    for i in 0..100 {
        let (s, v) = control(
            &faults,
            json!({"path": format!("p{i}"), "mode": "delay", "delay_ms": 60_000, "count": 10_000}),
        )
        .await;
        assert_eq!(s, 200, "{v}");
    }
    let (s, v) = control(&faults, json!({"path": "p", "mode": "http500", "count": 1})).await;
    assert_eq!(s, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("at most 100"), "{v}");

    let outcome = format!("{base}/_control/refund_outcome");
    for count in [json!(0), json!(101), json!(-1), json!("3")] {
        let (s, v) = control(&outcome, json!({"status": "REFUNDCLOSE", "count": count})).await;
        assert_eq!(s, 400, "{count}: {v}");
        assert!(
            v["error"].as_str().unwrap().contains("1..=100"),
            "{count}: {v}"
        );
    }
    let (s, v) = control(&outcome, json!({"status": "CHANGE", "count": 60})).await;
    assert_eq!((s, v["pending_outcomes"].clone()), (200, json!(60)), "{v}");
    let (s, v) = control(&outcome, json!({"status": "CHANGE", "count": 41})).await;
    assert_eq!(s, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("count ≤ 40"), "{v}");

    let notifications = format!("{base}/_control/notifications");
    let (s, v) = control(&notifications, json!({"duplicate": 11})).await;
    assert_eq!(s, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("0..=10"), "{v}");
    let (s, v) = control(&notifications, json!({"duplicate": 10})).await;
    assert_eq!((s, v["duplicate"].clone()), (200, json!(10)), "{v}");
}

/// `/_control/clock` moves only by what a test can mean: a whole number of ms, 1 ms to 400
/// days either way, 100 years from real time at most. A string, a fraction, 0, a misspelt
/// field, a step past 400 days or a move past 100 years is refused with 400 naming what is
/// allowed, and the clock stays where it was. (They used to be ignored without a word — a
/// test then ran at the wrong time — and a step near `i64::MAX` overflowed the clock.)
#[tokio::test]
async fn clock_moves_out_of_range_are_refused_and_move_nothing() {
    let sb = start(cfg()).await;
    let clock = format!("{}/_control/clock", sb.base_url());
    const DAY: i64 = 86_400_000;
    let (s, v) = control(&clock, json!({})).await;
    assert_eq!(s, 200, "{v}");
    let at = v["now_ms"].as_i64().unwrap();
    for body in [
        json!({"advance_ms": "3600000"}),
        json!({"advance_ms": 1.5}),
        json!({"advance_ms": 0}),
        json!({"advance_ms": 401 * DAY}),
        json!({"advance_ms": -401 * DAY}),
        json!({"advance_ms": i64::MAX}),
        json!({"advance": 60_000}),
        json!({"advance_ms": 60_000, "why": "typo"}),
        json!([60_000]),
    ] {
        let (s, v) = control(&clock, body.clone()).await;
        assert_eq!(s, 400, "{body}: {v}");
        let msg = v["error"].as_str().unwrap();
        assert!(msg.contains("400 days"), "{body}: {msg}");
    }
    let (_, v) = control(&clock, json!({})).await;
    let now = v["now_ms"].as_i64().unwrap();
    assert!((at..at + 60_000).contains(&now), "not moved: {at} → {now}");

    // In range, either way: taken.
    let (s, v) = control(&clock, json!({"advance_ms": 400 * DAY})).await;
    assert_eq!(s, 200, "{v}");
    assert!(v["now_ms"].as_i64().unwrap() >= at + 400 * DAY, "{v}");
    let (s, v) = control(&clock, json!({"advance_ms": -400 * DAY})).await;
    assert_eq!(s, 200, "{v}");
    assert!(v["now_ms"].as_i64().unwrap() < at + DAY, "{v}");

    // Steps within range that add up past 100 years: refused at the step that would.
    for _ in 0..91 {
        let (s, v) = control(&clock, json!({"advance_ms": 400 * DAY})).await;
        assert_eq!(s, 200, "{v}");
    }
    let (s, v) = control(&clock, json!({"advance_ms": 400 * DAY})).await;
    assert_eq!(s, 400, "{v}");
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains("100 years"), "{msg}");
}
