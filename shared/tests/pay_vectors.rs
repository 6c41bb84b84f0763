//! Every vector in ../shared/vectors/pay_v2.json, plus sign → XML → parse → verify round trips.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use md5::{Digest, Md5};
use serde_json::Value;
use wxshop::domain::{Fen, OpenId, OutRefundNo, OutTradeNo};
use wxshop::pay::refund_notify::{build_refund_notification, RefundNotificationSpec};
use wxshop::pay::sign::detect_sign_type;
use wxshop::pay::xml;
use wxshop::pay::*;

fn vectors() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/vectors/pay_v2.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn fields_of(v: &Value) -> Fields {
    v.as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect()
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or_else(|| panic!("vector field {k}"))
}

#[test]
fn official_sign_example() {
    let all = vectors();
    let v = &all["official_sign_example"];
    let key = s(v, "key");
    let f = fields_of(&v["params"]);
    assert_eq!(sign(&f, key, SignType::Md5), s(v, "md5"));
    assert_eq!(sign(&f, key, SignType::HmacSha256), s(v, "hmac_sha256"));
    // The documented string to sign hashes to the same value.
    let digest = hex::encode_upper(Md5::digest(s(v, "string_to_sign").as_bytes()));
    assert_eq!(digest, s(v, "md5"));
}

#[test]
fn wechatpy_vector() {
    let all = vectors();
    let v = &all["wechatpy_test_vector"];
    let key = s(v, "key");
    let f = fields_of(&v["params"]);
    assert_eq!(sign(&f, key, SignType::Md5), s(v, "md5"));
    assert_eq!(sign(&f, key, SignType::HmacSha256), s(v, "hmac_sha256"));
}

#[test]
fn miniprogram_pay_sign() {
    let all = vectors();
    let v = &all["miniprogram_paySign_example"];
    let key = s(v, "key");
    let p = &v["params"];
    let prepay = s(p, "package").strip_prefix("prepay_id=").unwrap();
    let ts: i64 = s(p, "timeStamp").parse().unwrap();
    let md5 = payment_params_with_nonce(
        s(p, "appId"),
        prepay,
        key,
        SignType::Md5,
        ts,
        s(p, "nonceStr"),
    );
    assert_eq!(md5.pay_sign, s(v, "paySign_md5"));
    assert_eq!(md5.package, s(p, "package"));
    // Generic signer over the same five camelCase keys agrees.
    assert_eq!(sign(&fields_of(p), key, SignType::Md5), s(v, "paySign_md5"));
    let hmac = payment_params_with_nonce(
        s(p, "appId"),
        prepay,
        key,
        SignType::HmacSha256,
        ts,
        s(p, "nonceStr"),
    );
    assert_eq!(hmac.pay_sign, s(v, "paySign_hmac_sha256_if_signType_HMAC"));
    let json: Value = serde_json::to_value(&hmac).unwrap();
    let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 5);
    assert_eq!(json["signType"], "HMAC-SHA256");
    assert_eq!(json["timeStamp"], "1490840662");
}

#[test]
fn gopay_refund_req_info_decrypts() {
    let all = vectors();
    let v = &all["refund_notify_gopay"];
    let plain = decrypt_req_info(s(v, "req_info"), s(v, "api_key")).unwrap();
    assert_eq!(String::from_utf8(plain.clone()).unwrap(), s(v, "plaintext"));
    let inner = xml::decode_root(&plain, "root").unwrap();
    assert_eq!(inner["out_refund_no"], "50fd012ed1b311e7af7800163e32c503");
    assert_eq!(inner["refund_status"], "SUCCESS");
    // Wrapped in an outer message, the whole notification parses to a typed view.
    let mut outer = Fields::new();
    outer.insert("return_code".into(), "SUCCESS".into());
    outer.insert("appid".into(), "wx1".into());
    outer.insert("mch_id".into(), "10000100".into());
    outer.insert("req_info".into(), s(v, "req_info").into());
    let n = parse_refund_notification(xml::encode(&outer).as_bytes(), s(v, "api_key")).unwrap();
    assert_eq!(n.out_trade_no.as_str(), "4893e76d8c8b434cb64e9cd536338e33");
    assert_eq!(n.refund_fee, Fen::new(6).unwrap());
    assert_eq!(n.refund_status, RefundStatus::Success);
    assert_eq!(n.transaction_id, "4200000015201711256947025404");
    assert_eq!(
        n.success_time_ms,
        wxshop::time::parse_beijing_datetime("2017-11-25 15:36:17")
    );
    assert_eq!(
        n.refund_account.as_deref(),
        Some("REFUND_SOURCE_RECHARGE_FUNDS")
    );
    assert_eq!(n.refund_recv_account.as_deref(), Some("支付用户零钱"));
}

#[test]
fn generated_payment_notifications_verify() {
    let all = vectors();
    for (name, st) in [
        ("generated_payment_notify_md5", SignType::Md5),
        ("generated_payment_notify_hmac", SignType::HmacSha256),
    ] {
        let v = &all[name];
        let key = s(v, "key");
        let n = parse_payment_notification(s(v, "xml").as_bytes(), key).unwrap();
        assert_eq!(n.sign_type, st, "{name}");
        assert!(n.success);
        assert_eq!(n.appid, "wx2421b1c4370ec43b");
        assert_eq!(n.mch_id, "10000100");
        assert_eq!(n.out_trade_no.as_str(), "1409811653");
        assert_eq!(n.transaction_id, "1004400740201409030005092168");
        assert_eq!(n.total_fee, Fen::new(1).unwrap());
        assert_eq!(n.cash_fee, Some(Fen::new(1).unwrap()));
        assert_eq!(n.fee_type, "CNY");
        assert_eq!(n.openid.as_deref(), Some("oUpF8uMEb4qRXf22hE3X68TekukE"));
        assert_eq!(n.attach.as_deref(), Some("order-meta"));
        assert_eq!(n.time_end_ms, Some(1_409_721_340_000));
        // Wrong key: refused.
        assert!(matches!(
            parse_payment_notification(s(v, "xml").as_bytes(), "0123456789abcdef0123456789abcdef"),
            Err(NotifyError::Sign(VerifyError::Mismatch))
        ));
    }
    // The HMAC notification also verifies when WeChat leaves sign_type out (WxJava#1585).
    let v = &all["generated_payment_notify_hmac"];
    let mut f = xml::decode(s(v, "xml").as_bytes()).unwrap();
    f.remove("sign_type");
    let resigned = sign(&f, s(v, "key"), SignType::HmacSha256);
    f.insert("sign".into(), resigned);
    assert_eq!(detect_sign_type(&f), Ok(SignType::HmacSha256));
    let body = xml::encode(&f);
    let n = parse_payment_notification(body.as_bytes(), s(v, "key")).unwrap();
    assert_eq!(n.sign_type, SignType::HmacSha256);
}

#[test]
fn generated_refund_notification_parses() {
    let all = vectors();
    let v = &all["generated_refund_notify"];
    let key = s(v, "key");
    let n = parse_refund_notification(s(v, "xml").as_bytes(), key).unwrap();
    assert_eq!(n.appid, "wx2421b1c4370ec43b");
    assert_eq!(n.out_trade_no.as_str(), "1409811653");
    assert_eq!(n.out_refund_no.as_str(), "R1409811653");
    assert_eq!(n.refund_id, "50000408942018111907145868882");
    assert_eq!(n.total_fee, Fen::new(1).unwrap());
    assert_eq!(n.settlement_refund_fee, Some(Fen::new(1).unwrap()));
    let f = xml::decode(s(v, "xml").as_bytes()).unwrap();
    let plain = decrypt_req_info(&f["req_info"], key).unwrap();
    assert_eq!(String::from_utf8(plain).unwrap(), s(v, "plaintext"));
    // Our encryption reproduces WeChat's ciphertext exactly (ECB, 16-byte PKCS#7).
    assert_eq!(encrypt_req_info(s(v, "plaintext"), key), f["req_info"]);
}

#[test]
fn sign_xml_parse_verify_round_trips() {
    let key = "192006250b4c09247ec02edce69f6a2d";
    for st in [SignType::Md5, SignType::HmacSha256] {
        let mut f = Fields::new();
        f.insert("appid".into(), "wxd930ea5d5a258f4f".into());
        f.insert("body".into(), "茶叶 <礼盒> & ]]> more".into());
        f.insert(
            "detail".into(),
            r#"{"goods_detail":[{"goods_id":"1"}]}"#.into(),
        );
        f.insert("empty".into(), String::new());
        f.insert("zz_unknown_future_field".into(), "x".into());
        let body = signed_xml(f.clone(), key, st);
        let back = xml::decode(body.as_bytes()).unwrap();
        assert_eq!(verify(&back, key), Ok(st));
        assert!(back.contains_key("nonce_str"));
        assert_eq!(back["body"], f["body"]);
        // Tampering with any field, known or not, breaks it.
        for k in ["body", "zz_unknown_future_field", "nonce_str"] {
            let mut t = back.clone();
            t.get_mut(k).unwrap().push('1');
            assert_eq!(verify(&t, key), Err(VerifyError::Mismatch), "{k}");
        }
        // Adding a field breaks it too; adding an empty one does not (empty = absent).
        let mut t = back.clone();
        t.insert("extra".into(), "1".into());
        assert_eq!(verify(&t, key), Err(VerifyError::Mismatch));
        let mut t = back.clone();
        t.insert("extra".into(), String::new());
        assert_eq!(verify(&t, key), Ok(st));
    }
}

#[test]
fn built_notifications_round_trip() {
    let key = "192006250b4c09247ec02edce69f6a2d";
    for st in [SignType::Md5, SignType::HmacSha256] {
        let spec = PaymentNotificationSpec {
            appid: "wxprovider".into(),
            mch_id: "1230000109".into(),
            sub_appid: Some("wxsub".into()),
            sub_mch_id: Some("1900000109".into()),
            openid: OpenId::parse("oSub_openid-1").unwrap(),
            out_trade_no: OutTradeNo::parse("WX20240101000000abcdefabcdef").unwrap(),
            transaction_id: "4200000001".into(),
            total_fee: Fen::new(2999).unwrap(),
            time_end_ms: 1_700_000_000_000,
            attach: None,
            sign_type: st,
            omit_sign_type: false,
        };
        let body = build_payment_notification(&spec, key);
        let n = parse_payment_notification(body.as_bytes(), key).unwrap();
        assert_eq!(n.sub_openid.as_deref(), Some("oSub_openid-1"));
        assert_eq!(n.openid, None);
        assert_eq!(n.payer_openid(), Some("oSub_openid-1"));
        assert_eq!(n.total_fee.get(), 2999);
        assert!(n
            .check_merchant(
                "wxprovider",
                "1230000109",
                Some("wxsub"),
                Some("1900000109")
            )
            .is_ok());
        assert!(n
            .check_merchant(
                "wxprovider",
                "1230000109",
                Some("wxsub"),
                Some("1900000110")
            )
            .is_err());
    }
    let spec = RefundNotificationSpec {
        appid: "wx1".into(),
        mch_id: "10000100".into(),
        sub_appid: None,
        sub_mch_id: None,
        out_trade_no: OutTradeNo::parse("1409811653").unwrap(),
        out_refund_no: OutRefundNo::parse("RF1").unwrap(),
        transaction_id: "42".into(),
        refund_id: "50".into(),
        total_fee: Fen::new(10).unwrap(),
        refund_fee: Fen::new(10).unwrap(),
        refund_status: RefundStatus::RefundClose,
        success_time_ms: None,
    };
    let n =
        parse_refund_notification(build_refund_notification(&spec, key).as_bytes(), key).unwrap();
    assert_eq!(n.refund_status, RefundStatus::RefundClose);
    assert_eq!(n.success_time_ms, None);
}
