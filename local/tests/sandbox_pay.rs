//! The merchant API v2 of the sandbox over real HTTP: unifiedorder rules, signatures,
//! payment notifications with WeChat's retries, refunds with encrypted notifications, bills.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sandbox_util;

use sandbox_util::*;
use serde_json::json;
use wxshop::pay::sign::{verify, SignType};

#[tokio::test]
async fn unifiedorder_success_idempotency_and_refusals() {
    let sb = start(cfg()).await;
    let base = sb.base_url();
    let notify = "http://127.0.0.1:9/callbacks/pay";

    // Success, reply signed MD5 like the request.
    let r = mch(
        &base,
        "pay/unifiedorder",
        order_fields("ORD000001", "1990", notify),
        SignType::Md5,
    )
    .await;
    assert_eq!(r["return_code"], "SUCCESS", "{r:?}");
    assert_eq!(r["result_code"], "SUCCESS", "{r:?}");
    assert_eq!(verify(&r, KEY), Ok(SignType::Md5));
    let prepay = r["prepay_id"].clone();
    assert!(prepay.starts_with("wx"));

    // Identical parameters (new nonce) → the same prepay_id.
    let mut again = order_fields("ORD000001", "1990", notify);
    again.insert("nonce_str".into(), "anothernonce".into());
    let r2 = mch(&base, "pay/unifiedorder", again, SignType::Md5).await;
    assert_eq!(r2["prepay_id"], prepay);

    // Changed amount → OUT_TRADE_NO_USED.
    let r3 = mch(
        &base,
        "pay/unifiedorder",
        order_fields("ORD000001", "2000", notify),
        SignType::Md5,
    )
    .await;
    assert_eq!(r3["result_code"], "FAIL");
    assert_eq!(r3["err_code"], "OUT_TRADE_NO_USED");
    assert_eq!(verify(&r3, KEY), Ok(SignType::Md5));

    // HMAC request → HMAC reply.
    let r4 = mch(
        &base,
        "pay/unifiedorder",
        order_fields("ORD000002", "1", notify),
        SignType::HmacSha256,
    )
    .await;
    assert_eq!(r4["result_code"], "SUCCESS");
    assert_eq!(verify(&r4, KEY), Ok(SignType::HmacSha256));

    // Bad signature → return_code FAIL 签名错误.
    let mut body = signed(order_fields("ORD000003", "1", notify), SignType::Md5);
    body = body.replace("ORD000003", "ORD000004");
    let (_, text) = post_raw(&format!("{base}/mch/pay/unifiedorder"), body).await;
    let f = wxshop::pay::xml::decode(text.as_bytes()).unwrap();
    assert_eq!(f["return_code"], "FAIL");
    assert_eq!(f["return_msg"], "签名错误");

    // HMAC signature without sign_type is verified as MD5 → 签名错误.
    let mut f5 = order_fields("ORD000005", "1", notify);
    f5.insert("appid".into(), APPID.into());
    f5.insert("mch_id".into(), MCH_ID.into());
    f5.insert("nonce_str".into(), "n".into());
    let s = wxshop::pay::sign::sign(&f5, KEY, SignType::HmacSha256);
    f5.insert("sign".into(), s);
    let (_, text) = post_raw(
        &format!("{base}/mch/pay/unifiedorder"),
        wxshop::pay::xml::encode(&f5),
    )
    .await;
    assert!(text.contains("签名错误"), "{text}");

    // Format and business checks.
    let r = mch(
        &base,
        "pay/unifiedorder",
        order_fields("ORD1", "1", notify),
        SignType::Md5,
    )
    .await;
    assert_eq!(r["return_code"], "FAIL", "out_trade_no shorter than 6");
    let r = mch(
        &base,
        "pay/unifiedorder",
        order_fields("ORD000006", "1.5", notify),
        SignType::Md5,
    )
    .await;
    assert_eq!(r["return_code"], "FAIL", "total_fee must be whole fen");
    let r = mch(
        &base,
        "pay/unifiedorder",
        order_fields("ORD000006", "0", notify),
        SignType::Md5,
    )
    .await;
    assert_eq!(r["return_code"], "FAIL", "total_fee ≥ 1");
    let r = mch(
        &base,
        "pay/unifiedorder",
        order_fields("ORD000006", "1", "http://x.test/pay?a=1"),
        SignType::Md5,
    )
    .await;
    assert_eq!(r["return_code"], "FAIL", "notify_url with a query");
    let mut no_openid = order_fields("ORD000006", "1", notify);
    no_openid.remove("openid");
    let r = mch(&base, "pay/unifiedorder", no_openid, SignType::Md5).await;
    assert_eq!(
        (r["result_code"].as_str(), r["err_code"].as_str()),
        ("FAIL", "PARAM_ERROR")
    );
    let mut no_body = order_fields("ORD000006", "1", notify);
    no_body.remove("body");
    let r = mch(&base, "pay/unifiedorder", no_body, SignType::Md5).await;
    assert_eq!(r["err_code"], "LACK_PARAMS");

    // Query a missing order; close one.
    let r = mch(
        &base,
        "pay/orderquery",
        fields(&[("out_trade_no", "NOSUCH001")]),
        SignType::Md5,
    )
    .await;
    assert_eq!(r["err_code"], "ORDERNOTEXIST");
    let r = mch(
        &base,
        "pay/closeorder",
        fields(&[("out_trade_no", "ORD000002")]),
        SignType::HmacSha256,
    )
    .await;
    assert_eq!(r["result_code"], "SUCCESS");
    let r = mch(
        &base,
        "pay/closeorder",
        fields(&[("out_trade_no", "ORD000002")]),
        SignType::Md5,
    )
    .await;
    assert_eq!(r["err_code"], "ORDERCLOSED");
    let r = mch(
        &base,
        "pay/unifiedorder",
        order_fields("ORD000002", "1", notify),
        SignType::HmacSha256,
    )
    .await;
    assert_eq!(r["err_code"], "ORDERCLOSED");
    assert_eq!(sb.sandbox.calls("pay/unifiedorder").len(), 13);
}

/// WeChat counts field lengths in UTF-8 bytes: 42 Chinese characters (126 bytes) fit `body`,
/// 43 (129 bytes) are refused like WeChat refuses them; `attach` and `refund_desc` alike.
#[tokio::test]
async fn field_lengths_count_utf8_bytes() {
    let sb = start(cfg()).await;
    let base = sb.base_url();
    let notify = "http://127.0.0.1:9/callbacks/pay";
    let with = |no: &str, k: &str, v: String| {
        let mut f = order_fields(no, "1", notify);
        f.insert(k.into(), v);
        f
    };
    let r = mch(
        &base,
        "pay/unifiedorder",
        with("LEN000001", "body", "茶".repeat(42)),
        SignType::Md5,
    )
    .await;
    assert_eq!(r["result_code"], "SUCCESS", "126 bytes fit: {r:?}");
    let r = mch(
        &base,
        "pay/unifiedorder",
        with("LEN000002", "body", "茶".repeat(43)),
        SignType::Md5,
    )
    .await;
    assert_eq!(
        (r["return_code"].as_str(), r["return_msg"].as_str()),
        ("FAIL", "body参数长度有误"),
        "129 bytes, 43 characters: {r:?}"
    );
    let r = mch(
        &base,
        "pay/unifiedorder",
        with("LEN000003", "attach", "茶".repeat(43)),
        SignType::Md5,
    )
    .await;
    assert_eq!(r["return_msg"], "attach参数长度有误", "{r:?}");
    let r = mch(
        &base,
        "secapi/pay/refund",
        fields(&[
            ("out_trade_no", "LEN000001"),
            ("out_refund_no", "LENR1"),
            ("total_fee", "1"),
            ("refund_fee", "1"),
            ("refund_desc", &"坏".repeat(27)),
        ]),
        SignType::Md5,
    )
    .await;
    assert_eq!(
        r["return_msg"], "refund_desc参数长度有误",
        "81 bytes, 27 characters: {r:?}"
    );
}

#[tokio::test]
async fn provider_mode_needs_sub_mch_id() {
    let mut c = cfg();
    c.sub_mch_id = Some("1900000109".into());
    c.sub_appid = Some("wxsubapp000000001".into());
    let sb = start(c).await;
    let base = sb.base_url();
    let f = order_fields("ORD100001", "1", "http://127.0.0.1:9/pay");
    let r = mch(&base, "pay/unifiedorder", f.clone(), SignType::Md5).await;
    assert_eq!(r["return_code"], "FAIL");
    assert_eq!(r["return_msg"], "受理机构必须传入sub_mch_id");
    let mut f2 = f;
    f2.remove("openid");
    f2.insert("sub_mch_id".into(), "1900000109".into());
    f2.insert("sub_appid".into(), "wxsubapp000000001".into());
    f2.insert("sub_openid".into(), "oSub000000000000000000000001".into());
    let r = mch(&base, "pay/unifiedorder", f2, SignType::Md5).await;
    assert_eq!(r["result_code"], "SUCCESS", "{r:?}");
    assert_eq!(r["sub_mch_id"], "1900000109");
}

#[tokio::test]
async fn payment_notification_is_retried_until_success() {
    let sb = start(cfg()).await;
    let base = sb.base_url();
    let recv = Receiver::start(200, PAY_OK).await;
    // 500, then FAIL, then a non-XML 200: all three count as failures.
    recv.plan(&[(500, "oops"), (200, PAY_FAIL), (200, "ok")]);
    let notify = format!("{}/callbacks/pay", recv.url);
    let r = mch(
        &base,
        "pay/unifiedorder",
        order_fields("PAY000001", "1990", &notify),
        SignType::HmacSha256,
    )
    .await;
    assert_eq!(r["result_code"], "SUCCESS");

    let paid = post_json(
        &format!("{base}/_control/pay"),
        json!({"out_trade_no": "PAY000001"}),
    )
    .await;
    let txn = paid["transaction_id"].as_str().unwrap().to_owned();
    assert_eq!(txn.len(), 28);
    wait_for("an acknowledged notification", 3000, || {
        sb.sandbox.notifications_delivered("PAY000001") == 1
    })
    .await;
    let got = recv.got();
    assert_eq!(got.len(), 4, "first attempt + 3 retries");
    for g in &got {
        assert_eq!(
            g.body, got[0].body,
            "every retry carries the same notification"
        );
    }
    let n = wxshop::pay::notify::parse_payment_notification(&got[0].body, KEY).unwrap();
    assert_eq!(n.transaction_id, txn);
    assert_eq!(n.total_fee.get(), 1990);
    assert_eq!(n.sign_type, SignType::HmacSha256);
    let raw = wxshop::pay::xml::decode(&got[0].body).unwrap();
    assert_eq!(raw["sign_type"], "HMAC-SHA256");
    assert_eq!(raw["time_end"].len(), 14);
    assert_eq!(sb.sandbox.deliveries().len(), 4);

    // The order is paid: query, close and re-order say so.
    let q = mch(
        &base,
        "pay/orderquery",
        fields(&[("transaction_id", &txn)]),
        SignType::Md5,
    )
    .await;
    assert_eq!(q["trade_state"], "SUCCESS");
    assert_eq!(q["out_trade_no"], "PAY000001");
    let c = mch(
        &base,
        "pay/closeorder",
        fields(&[("out_trade_no", "PAY000001")]),
        SignType::Md5,
    )
    .await;
    assert_eq!(c["err_code"], "ORDERPAID");
    let u = mch(
        &base,
        "pay/unifiedorder",
        order_fields("PAY000001", "1990", &notify),
        SignType::HmacSha256,
    )
    .await;
    assert_eq!(u["err_code"], "ORDERPAID");
    // Paying twice is refused by the control endpoint.
    let status = reqwest::Client::new()
        .post(format!("{base}/_control/pay"))
        .json(&json!({"out_trade_no": "PAY000001"}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 409);
}

#[tokio::test]
async fn duplicates_and_missing_sign_type_on_request() {
    let sb = start(cfg()).await;
    let base = sb.base_url();
    let recv = Receiver::start(200, PAY_OK).await;
    let notify = format!("{}/cb", recv.url);
    post_json(
        &format!("{base}/_control/notifications"),
        json!({"duplicate": 2, "omit_sign_type": true}),
    )
    .await;
    mch(
        &base,
        "pay/unifiedorder",
        order_fields("DUP000001", "5", &notify),
        SignType::HmacSha256,
    )
    .await;
    post_json(
        &format!("{base}/_control/pay"),
        json!({"out_trade_no": "DUP000001", "wait": true}),
    )
    .await;
    assert_eq!(sb.sandbox.notifications_delivered("DUP000001"), 3);
    let got = recv.got();
    assert_eq!(got.len(), 3);
    let raw = wxshop::pay::xml::decode(&got[0].body).unwrap();
    assert!(!raw.contains_key("sign_type"));
    assert_eq!(raw["sign"].len(), 64);
    // Verification must pick HMAC from the signature's length.
    assert!(wxshop::pay::notify::parse_payment_notification(&got[0].body, KEY).is_ok());
}

#[tokio::test]
async fn reorder_delivers_later_notifications_first() {
    let sb = start(cfg()).await;
    let base = sb.base_url();
    let recv = Receiver::start(200, PAY_OK).await;
    let notify = format!("{}/cb", recv.url);
    post_json(
        &format!("{base}/_control/notifications"),
        json!({"reorder": true}),
    )
    .await;
    for no in ["REO000001", "REO000002"] {
        mch(
            &base,
            "pay/unifiedorder",
            order_fields(no, "5", &notify),
            SignType::Md5,
        )
        .await;
        post_json(&format!("{base}/_control/pay"), json!({"out_trade_no": no})).await;
    }
    wait_for("both notifications", 3000, || recv.got().len() == 2).await;
    let got = recv.got();
    let first = wxshop::pay::xml::decode(&got[0].body).unwrap();
    assert_eq!(first["out_trade_no"], "REO000002");
}

/// A refund a person makes in the merchant platform (`/_control/merchant_refund`): refused
/// beyond what is left (409), otherwise numbered by WeChat and notified, encrypted, to the
/// merchant platform's refund-result URL with `refund_request_source` `VENDOR_PLATFORM`.
#[tokio::test]
async fn a_refund_made_in_the_merchant_platform_is_notified_as_such() {
    let recv = Receiver::start(200, PAY_OK).await;
    let mut c = cfg();
    c.refund_notify_url = Some(format!("{}/callbacks/refund", recv.url));
    let sb = start(c).await;
    let base = sb.base_url();
    let notify = format!("{}/callbacks/pay", recv.url);
    mch(
        &base,
        "pay/unifiedorder",
        order_fields("REF000009", "1000", &notify),
        SignType::Md5,
    )
    .await;
    let by_hand = |fee: i64| {
        reqwest::Client::new()
            .post(format!("{base}/_control/merchant_refund"))
            .json(&json!({"out_trade_no": "REF000009", "refund_fee": fee}))
            .send()
    };
    assert_eq!(by_hand(400).await.unwrap().status(), 409, "not paid yet");
    post_json(
        &format!("{base}/_control/pay"),
        json!({"out_trade_no": "REF000009", "wait": true}),
    )
    .await;
    assert_eq!(
        by_hand(1001).await.unwrap().status(),
        409,
        "beyond the total"
    );
    let made: serde_json::Value = by_hand(400).await.unwrap().json().await.unwrap();
    let no = made["out_refund_no"].as_str().unwrap().to_owned();
    wait_for("the refund notification", 3000, || {
        sb.sandbox.refund_notifications_delivered(&no) == 1
    })
    .await;
    let g = recv
        .got()
        .into_iter()
        .find(|g| g.path_query == "/callbacks/refund")
        .unwrap();
    let n = wxshop::pay::refund_notify::parse_refund_notification(&g.body, KEY).unwrap();
    assert_eq!(n.out_refund_no.as_str(), no);
    assert_eq!(n.refund_fee.get(), 400);
    assert_eq!(n.refund_request_source.as_deref(), Some("VENDOR_PLATFORM"));
    assert_eq!(n.refund_status.as_str(), "SUCCESS");
}

#[tokio::test]
async fn refund_sends_an_encrypted_notification() {
    let sb = start(cfg()).await;
    let base = sb.base_url();
    let recv = Receiver::start(200, PAY_OK).await;
    let notify = format!("{}/callbacks/pay", recv.url);
    let refund_notify = format!("{}/callbacks/refund", recv.url);
    mch(
        &base,
        "pay/unifiedorder",
        order_fields("REF000001", "1000", &notify),
        SignType::Md5,
    )
    .await;

    // Not paid yet: refused.
    let rf = |no: &str, fee: &str| {
        fields(&[
            ("out_trade_no", "REF000001"),
            ("out_refund_no", no),
            ("total_fee", "1000"),
            ("refund_fee", fee),
            ("notify_url", &refund_notify),
        ])
    };
    let r = mch(&base, "secapi/pay/refund", rf("R1", "400"), SignType::Md5).await;
    assert_eq!(r["result_code"], "FAIL");

    post_json(
        &format!("{base}/_control/pay"),
        json!({"out_trade_no": "REF000001", "wait": true}),
    )
    .await;
    let r = mch(&base, "secapi/pay/refund", rf("R1", "400"), SignType::Md5).await;
    assert_eq!(r["result_code"], "SUCCESS", "{r:?}");
    assert_eq!(verify(&r, KEY), Ok(SignType::Md5));
    let refund_id = r["refund_id"].clone();
    // Same out_refund_no, same amounts: the same refund.
    let again = mch(&base, "secapi/pay/refund", rf("R1", "400"), SignType::Md5).await;
    assert_eq!(again["refund_id"], refund_id);
    // Same out_refund_no, other amount: refused.
    let changed = mch(&base, "secapi/pay/refund", rf("R1", "300"), SignType::Md5).await;
    assert_eq!(changed["err_code"], "PARAM_ERROR");
    // More than what is left.
    let over = mch(&base, "secapi/pay/refund", rf("R2", "700"), SignType::Md5).await;
    assert_eq!(over["result_code"], "FAIL");
    assert_eq!(over["err_code"], "ERROR");
    assert!(!over["err_code_des"].is_empty());

    wait_for("the refund notification", 3000, || {
        sb.sandbox.refund_notifications_delivered("R1") == 1
    })
    .await;
    let g = recv
        .got()
        .into_iter()
        .find(|g| g.path_query == "/callbacks/refund")
        .unwrap();
    let outer = wxshop::pay::xml::decode(&g.body).unwrap();
    assert!(
        !outer.contains_key("sign"),
        "refund notifications are not signed"
    );
    let n = wxshop::pay::refund_notify::parse_refund_notification(&g.body, KEY).unwrap();
    let dbg = format!("{n:?}");
    assert!(dbg.contains("R1") && dbg.contains("REF000001"), "{dbg}");
    let plain = wxlocal::sandbox::deliver::decrypt_req_info(KEY, &outer["req_info"]).unwrap();
    let inner = wxshop::pay::xml::decode_root(&plain, "root").unwrap();
    assert_eq!(inner["refund_status"], "SUCCESS");
    assert_eq!(inner["refund_fee"], "400");
    assert_eq!(inner["refund_id"], refund_id);

    let q = mch(
        &base,
        "pay/refundquery",
        fields(&[("out_trade_no", "REF000001")]),
        SignType::Md5,
    )
    .await;
    assert_eq!(q["refund_count"], "1");
    assert_eq!(q["refund_status_0"], "SUCCESS");
    let q = mch(
        &base,
        "pay/refundquery",
        fields(&[("out_refund_no", "NOPE")]),
        SignType::Md5,
    )
    .await;
    assert_eq!(q["err_code"], "REFUNDNOTEXIST");
    let o = mch(
        &base,
        "pay/orderquery",
        fields(&[("out_trade_no", "REF000001")]),
        SignType::Md5,
    )
    .await;
    assert_eq!(o["trade_state"], "REFUND");

    // The bill of today lists the payment and the refund, in yuan with backticks.
    let today = wxshop::time::beijing_date(sb.sandbox.now_ms());
    let body = signed(
        fields(&[("bill_date", &today), ("bill_type", "ALL")]),
        SignType::Md5,
    );
    let (_, csv) = post_raw(&format!("{base}/mch/pay/downloadbill"), body).await;
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("交易时间,公众账号ID,商户号"), "{csv}");
    assert_eq!(lines.len(), 5, "{csv}");
    assert!(
        lines[1].contains("`REF000001") && lines[1].contains("`10.00"),
        "{csv}"
    );
    assert!(
        lines[2].contains("`REFUND") && lines[2].contains("`4.00"),
        "{csv}"
    );
    assert!(lines[3].starts_with("总交易单数"));
    assert!(lines[4].starts_with("`2,`10.00,`4.00"), "{csv}");
    // A day with no trade (yesterday, within the three months WeChat serves) has no bill; a
    // day past those three months is refused (what WeChat answers then is UNVERIFIED).
    let yesterday = wxshop::time::beijing_date(sb.sandbox.now_ms() - 86_400_000);
    let body = signed(fields(&[("bill_date", &yesterday)]), SignType::Md5);
    let (_, none) = post_raw(&format!("{base}/mch/pay/downloadbill"), body).await;
    assert!(
        none.starts_with('<') && none.contains("No Bill Exist"),
        "{none}"
    );
    let body = signed(fields(&[("bill_date", "20200101")]), SignType::Md5);
    let (_, old) = post_raw(&format!("{base}/mch/pay/downloadbill"), body).await;
    assert!(
        old.starts_with('<') && old.contains("invalid bill_date"),
        "{old}"
    );
}

/// WeChat Pay takes successive refunds of one order at least a minute apart: a new refund
/// sooner is a signed `FREQUENCY_LIMITED` (and creates nothing), while asking again for the
/// refund it took (same `out_refund_no`) is not limited. The minute runs on the sandbox's
/// clock (`/_control/clock`), per order.
#[tokio::test]
async fn refunds_of_one_order_are_a_minute_apart() {
    let sb = start(cfg()).await;
    let base = sb.base_url();
    let notify = "http://127.0.0.1:9/callbacks/pay";
    for no in ["FRQ000001", "FRQ000002"] {
        mch(
            &base,
            "pay/unifiedorder",
            order_fields(no, "1000", notify),
            SignType::Md5,
        )
        .await;
        post_json(
            &format!("{base}/_control/pay"),
            json!({"out_trade_no": no, "wait": true}),
        )
        .await;
    }
    let rf = |order: &str, no: &str, fee: &str| {
        fields(&[
            ("out_trade_no", order),
            ("out_refund_no", no),
            ("total_fee", "1000"),
            ("refund_fee", fee),
        ])
    };
    let advance = |ms: i64| post_json(format!("{base}/_control/clock"), json!({"advance_ms": ms}));

    let r1 = mch(
        &base,
        "secapi/pay/refund",
        rf("FRQ000001", "F1", "100"),
        SignType::Md5,
    )
    .await;
    assert_eq!(r1["result_code"], "SUCCESS", "{r1:?}");
    let limited = mch(
        &base,
        "secapi/pay/refund",
        rf("FRQ000001", "F2", "100"),
        SignType::HmacSha256,
    )
    .await;
    assert_eq!(limited["return_code"], "SUCCESS", "{limited:?}");
    assert_eq!(limited["result_code"], "FAIL", "{limited:?}");
    assert_eq!(limited["err_code"], "FREQUENCY_LIMITED", "{limited:?}");
    assert!(limited["err_code_des"].contains("1分钟"), "{limited:?}");
    assert_eq!(verify(&limited, KEY), Ok(SignType::HmacSha256));
    // The refund it took, asked again: the same refund, not limited.
    let again = mch(
        &base,
        "secapi/pay/refund",
        rf("FRQ000001", "F1", "100"),
        SignType::Md5,
    )
    .await;
    assert_eq!(again["result_code"], "SUCCESS", "{again:?}");
    assert_eq!(again["refund_id"], r1["refund_id"]);
    // Another order is not held back by this one's refund.
    let other = mch(
        &base,
        "secapi/pay/refund",
        rf("FRQ000002", "G1", "100"),
        SignType::Md5,
    )
    .await;
    assert_eq!(other["result_code"], "SUCCESS", "{other:?}");
    // A refund that can never be taken is refused for what is wrong with it.
    let over = mch(
        &base,
        "secapi/pay/refund",
        rf("FRQ000001", "F3", "950"),
        SignType::Md5,
    )
    .await;
    assert_eq!(over["err_code"], "ERROR", "{over:?}");

    advance(59_000).await;
    let still = mch(
        &base,
        "secapi/pay/refund",
        rf("FRQ000001", "F2", "100"),
        SignType::Md5,
    )
    .await;
    assert_eq!(still["err_code"], "FREQUENCY_LIMITED", "{still:?}");
    advance(1_000).await;
    let r2 = mch(
        &base,
        "secapi/pay/refund",
        rf("FRQ000001", "F2", "100"),
        SignType::Md5,
    )
    .await;
    assert_eq!(r2["result_code"], "SUCCESS", "{r2:?}");
    // The minute starts again from the refund just taken.
    let r3 = mch(
        &base,
        "secapi/pay/refund",
        rf("FRQ000001", "F3", "100"),
        SignType::Md5,
    )
    .await;
    assert_eq!(r3["err_code"], "FREQUENCY_LIMITED", "{r3:?}");
    let q = mch(
        &base,
        "pay/refundquery",
        fields(&[("out_trade_no", "FRQ000001")]),
        SignType::Md5,
    )
    .await;
    assert_eq!(
        q["total_refund_count"], "2",
        "only the refunds taken: {q:?}"
    );

    // A sandbox configured without the gap takes them back to back.
    sb.sandbox.set_refund_interval_ms(0);
    let r3 = mch(
        &base,
        "secapi/pay/refund",
        rf("FRQ000001", "F3", "100"),
        SignType::Md5,
    )
    .await;
    assert_eq!(r3["result_code"], "SUCCESS", "{r3:?}");
}

/// `/_control/pay` is WeChat's cashier, and refuses what it refuses: a `prepay_id` older than
/// 2 hours (even with no `time_expire`), the `prepay_id` of a closed order, a second payment
/// of a paid order, a `prepay_id` it never issued. The user pays by the `prepay_id` the mini
/// program got (`package`), or by `out_trade_no`.
#[tokio::test]
async fn the_cashier_refuses_what_wechats_refuses() {
    let sb = start(cfg()).await;
    let base = sb.base_url();
    let notify = "http://127.0.0.1:9/callbacks/pay";
    let http = reqwest::Client::new();
    let pay = |body: serde_json::Value| {
        let req = http.post(format!("{base}/_control/pay")).json(&body);
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<serde_json::Value>().await.unwrap())
        }
    };
    let mut prepay = std::collections::HashMap::new();
    for no in ["CSH000001", "CSH000002", "CSH000003", "CSH000004"] {
        let r = mch(
            &base,
            "pay/unifiedorder",
            order_fields(no, "100", notify),
            SignType::Md5,
        )
        .await;
        assert_eq!(r["result_code"], "SUCCESS", "{r:?}");
        prepay.insert(no, r["prepay_id"].clone());
    }
    let trade_state = |no: &'static str| {
        let base = base.clone();
        async move {
            mch(
                &base,
                "pay/orderquery",
                fields(&[("out_trade_no", no)]),
                SignType::Md5,
            )
            .await["trade_state"]
                .clone()
        }
    };

    // Paid by its prepay_id (as `package`); a second payment is refused, by either key.
    let (s, v) =
        pay(json!({"package": format!("prepay_id={}", prepay["CSH000001"]), "wait": true})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["out_trade_no"], "CSH000001", "{v}");
    assert_eq!(trade_state("CSH000001").await, "SUCCESS");
    let (s, v) = pay(json!({"prepay_id": prepay["CSH000001"]})).await;
    assert_eq!(s, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("paid already"), "{v}");
    let (s, v) = pay(json!({"out_trade_no": "CSH000001"})).await;
    assert_eq!(s, 409, "{v}");

    // Closed: its prepay_id is refused.
    let c = mch(
        &base,
        "pay/closeorder",
        fields(&[("out_trade_no", "CSH000002")]),
        SignType::Md5,
    )
    .await;
    assert_eq!(c["result_code"], "SUCCESS", "{c:?}");
    let (s, v) = pay(json!({"prepay_id": prepay["CSH000002"]})).await;
    assert_eq!(s, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("closed"), "{v}");

    // Never issued.
    let (s, v) = pay(json!({"prepay_id": "wx20240101000000nosuchprepayid0000"})).await;
    assert_eq!(s, 409, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("no such prepay_id"),
        "{v}"
    );

    // A prepay_id lives 2 hours: just before, it pays; just after, it does not.
    post_json(
        &format!("{base}/_control/clock"),
        json!({"advance_ms": 7_200_000 - 5_000}),
    )
    .await;
    let (s, v) = pay(json!({"prepay_id": prepay["CSH000003"]})).await;
    assert_eq!(s, 200, "{v}");
    post_json(
        &format!("{base}/_control/clock"),
        json!({"advance_ms": 10_000}),
    )
    .await;
    for body in [
        json!({"prepay_id": prepay["CSH000004"]}),
        json!({"out_trade_no": "CSH000004"}),
    ] {
        let (s, v) = pay(body).await;
        assert_eq!(s, 409, "{v}");
        assert!(v["error"].as_str().unwrap().contains("expired"), "{v}");
    }
    assert_eq!(trade_state("CSH000004").await, "NOTPAY");
}

/// An openid is a user under one appid. In provider mode the mini program's openid (from
/// `jscode2session` with `sub_appid`) goes in `sub_openid` with `sub_appid`; sent as `openid`
/// (under the provider's `appid`) — the classic provider-mode mistake — WeChat refuses it
/// with PARAM_ERROR, as it refuses the reverse and both at once. Openids the sandbox never
/// issued (made up by a test) cannot be placed and are taken.
#[tokio::test]
async fn an_openid_is_taken_only_with_the_appid_it_was_issued_under() {
    const SUB_APPID: &str = "wxsubapp000000001";
    let mut c = cfg();
    c.sub_mch_id = Some("1900000109".into());
    c.sub_appid = Some(SUB_APPID.into());
    let sb = start(c).await;
    let base = sb.base_url();
    let login = |appid: &'static str| {
        let base = base.clone();
        async move {
            let code = post_json(format!("{base}/_control/login"), json!({"user": "alice"})).await;
            let v = get_json(format!(
                "{base}/api/sns/jscode2session?appid={appid}&secret={SECRET}&js_code={}&grant_type=authorization_code",
                code["code"].as_str().unwrap()
            ))
            .await;
            (code, v["openid"].as_str().unwrap().to_owned())
        }
    };
    let (minted, in_app) = login(SUB_APPID).await;
    assert_eq!(
        minted["openid"],
        in_app.as_str(),
        "the mini program's openid"
    );
    let (_, under_provider) = login(APPID).await;
    assert_ne!(in_app, under_provider, "one user, one openid per appid");

    let mut n = 0;
    let mut order = |who: &[(&str, &str)]| {
        n += 1;
        let mut f = order_fields(&format!("OID{n:06}"), "1", "http://127.0.0.1:9/pay");
        f.remove("openid");
        f.insert("sub_mch_id".into(), "1900000109".into());
        for (k, v) in who {
            f.insert((*k).into(), (*v).into());
        }
        let base = base.clone();
        async move { mch(&base, "pay/unifiedorder", f, SignType::HmacSha256).await }
    };
    let ok = order(&[("sub_appid", SUB_APPID), ("sub_openid", &in_app)]).await;
    assert_eq!(ok["result_code"], "SUCCESS", "{ok:?}");
    let ok = order(&[("openid", &under_provider)]).await;
    assert_eq!(ok["result_code"], "SUCCESS", "{ok:?}");

    let wrong = order(&[("sub_appid", SUB_APPID), ("openid", &in_app)]).await;
    assert_eq!(wrong["result_code"], "FAIL", "{wrong:?}");
    assert_eq!(wrong["err_code"], "PARAM_ERROR", "{wrong:?}");
    assert_eq!(wrong["err_code_des"], "appid和openid不匹配", "{wrong:?}");
    assert_eq!(verify(&wrong, KEY), Ok(SignType::HmacSha256));
    let wrong = order(&[("sub_appid", SUB_APPID), ("sub_openid", &under_provider)]).await;
    assert_eq!(
        wrong["err_code_des"], "sub_appid和sub_openid不匹配",
        "{wrong:?}"
    );
    let both = order(&[
        ("sub_appid", SUB_APPID),
        ("sub_openid", &in_app),
        ("openid", &under_provider),
    ])
    .await;
    assert_eq!(both["err_code"], "PARAM_ERROR", "{both:?}");
    assert_eq!(
        both["err_code_des"], "openid和sub_openid只能传一个",
        "{both:?}"
    );

    let made_up = order(&[
        ("sub_appid", SUB_APPID),
        ("openid", "oMadeUp000000000000000000001"),
    ])
    .await;
    assert_eq!(made_up["result_code"], "SUCCESS", "{made_up:?}");
}
