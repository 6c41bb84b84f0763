//! Safe mode (`encrypt_type=aes`, WECHAT_SHOP.md §9.3): round trips through `encrypt` →
//! `parse` in both formats, and every way a forged, corrupted or hostile push is refused with
//! its own error.
#![allow(clippy::unwrap_used)] // tests may unwrap

use aes::Aes256;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockEncryptMut, KeyIvInit};
use std::collections::HashSet;
use std::mem::discriminant;
use wxshop::push::*;

const TOKEN: &str = "test-token";
const APPID: &str = "wx1234567890abcdef";
const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const TS: &str = "1700000000";
const NONCE: &str = "1320562132";

const SPU_XML: &str = "<xml><ToUserName><![CDATA[gh_0123456789ab]]></ToUserName><FromUserName><![CDATA[oWeChatTeamFixedOpenid]]></FromUserName><CreateTime>1700000000</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[open_product_spu_audit]]></Event><OpenProductSpuAudit><out_product_id><![CDATA[SPU-1001]]></out_product_id><product_id>31000000000000001</product_id><status>4</status><reject_reason><![CDATA[]]></reject_reason></OpenProductSpuAudit></xml>";
const PAY_JSON: &str = r#"{"ToUserName":"gh_0123456789ab","FromUserName":"oWeChatTeamFixedOpenid","CreateTime":1700000100,"MsgType":"event","Event":"open_product_order_pay","order_info":{"out_order_id":"ORD-42","order_id":3302000000000000000,"transaction_id":"4200000000000000000000000000","pay_time":"2023-11-15 06:15:00","amount":1990}}"#;

fn cfg() -> PushConfig {
    PushConfig::new(APPID, TOKEN, Some(AES_KEY)).unwrap()
}

fn aes_query(msg_signature: &str) -> PushQuery {
    PushQuery::signed_aes(TOKEN, TS, NONCE, msg_signature)
}

/// Encrypts arbitrary (already padded) plaintext bytes independently of the code under test.
fn raw_encrypt(plain: &[u8]) -> String {
    let key = decode_aes_key(AES_KEY).unwrap();
    let iv: [u8; 16] = key[..16].try_into().unwrap();
    let c = cbc::Encryptor::<Aes256>::new(&key.into(), &iv.into())
        .encrypt_padded_vec_mut::<NoPadding>(plain);
    STANDARD.encode(c)
}

/// A correctly signed XML envelope around any `Encrypt` value.
fn deliver_encrypt(encrypt: &str) -> Result<PushMessage, PushError> {
    let body = format!("<xml><ToUserName>gh_1</ToUserName><Encrypt>{encrypt}</Encrypt></xml>");
    let sig = msg_signature(TOKEN, TS, NONCE, encrypt);
    parse(&aes_query(&sig), body.as_bytes(), &cfg())
}

/// `random16 || be32(len) || msg || appid`, padded with `pad` bytes of value `pad_byte`.
fn layout(msg: &[u8], appid: &str, len_field: u32) -> Vec<u8> {
    let mut v = b"0123456789abcdef".to_vec();
    v.extend_from_slice(&len_field.to_be_bytes());
    v.extend_from_slice(msg);
    v.extend_from_slice(appid.as_bytes());
    v
}

fn pad32(mut v: Vec<u8>) -> Vec<u8> {
    let pad = 32 - v.len() % 32;
    v.resize(v.len() + pad, pad as u8);
    v
}

#[test]
fn xml_round_trip() {
    // GIVEN a genuine safe-mode push in XML
    let (envelope, sig) = encrypt(&cfg(), SPU_XML, TS, NONCE).unwrap();
    assert!(
        envelope.starts_with("<xml><ToUserName><![CDATA[gh_0123456789ab]]></ToUserName><Encrypt>")
    );
    assert!(
        !envelope.contains("SPU-1001"),
        "the envelope must not leak the message"
    );
    // WHEN it is parsed
    let msg = parse(&aes_query(&sig), envelope.as_bytes(), &cfg()).unwrap();
    // THEN the decrypted message is typed
    assert!(msg.encrypted);
    assert_eq!(msg.format, Format::Xml);
    assert_eq!(msg.create_time, 1_700_000_000);
    let PushEvent::SpuAudit { body, .. } = msg.event().unwrap() else {
        panic!()
    };
    assert_eq!(body.product_id, Some(31_000_000_000_000_001));
    assert_eq!(reply_success(), "success");
}

#[test]
fn json_round_trip() {
    let (envelope, sig) = encrypt(&cfg(), PAY_JSON, TS, NONCE).unwrap();
    let env: serde_json::Value = serde_json::from_str(&envelope).unwrap();
    assert_eq!(env["ToUserName"], "gh_0123456789ab");
    assert!(env["Encrypt"].is_string());
    let msg = parse(&aes_query(&sig), envelope.as_bytes(), &cfg()).unwrap();
    assert!(msg.encrypted);
    assert_eq!(msg.format, Format::Json);
    let PushEvent::OrderPay { body, .. } = msg.event().unwrap() else {
        panic!()
    };
    assert_eq!(body.order_id, Some(3_302_000_000_000_000_000));
    assert_eq!(body.amount.map(|f| f.get()), Some(1990));
}

#[test]
fn every_encryption_is_fresh_and_sizes_pad_to_32() {
    let (a, _) = encrypt(&cfg(), PAY_JSON, TS, NONCE).unwrap();
    let (b, _) = encrypt(&cfg(), PAY_JSON, TS, NONCE).unwrap();
    assert_ne!(a, b);
    // messages whose padded length hits every pad value 1..=32 still round-trip
    for extra in 0..40 {
        let msg = PAY_JSON.replace("ORD-42", &format!("ORD-{}", "x".repeat(extra)));
        let (env, sig) = encrypt(&cfg(), &msg, TS, NONCE).unwrap();
        let got = parse(&aes_query(&sig), env.as_bytes(), &cfg()).unwrap();
        assert_eq!(
            got.raw["order_info"]["out_order_id"],
            format!("ORD-{}", "x".repeat(extra))
        );
    }
}

#[test]
fn plaintext_signature_is_also_checked_when_present() {
    let (envelope, sig) = encrypt(&cfg(), SPU_XML, TS, NONCE).unwrap();
    let mut q = aes_query(&sig);
    q.signature = Some(sign("wrong", TS, NONCE));
    assert_eq!(
        parse(&q, envelope.as_bytes(), &cfg()),
        Err(PushError::BadSignature)
    );
    // absent: msg_signature alone authenticates
    q.signature = None;
    assert!(parse(&q, envelope.as_bytes(), &cfg()).is_ok());
}

#[test]
fn compatible_mode_reads_the_encrypted_part() {
    // compatible mode: plaintext fields and Encrypt side by side; only Encrypt is believed
    let (envelope, sig) = encrypt(&cfg(), SPU_XML, TS, NONCE).unwrap();
    let forged_plain = "<MsgType>event</MsgType><Event>open_product_account_register</Event>";
    let body = envelope.replace("</xml>", &format!("{forged_plain}</xml>"));
    let msg = parse(&aes_query(&sig), body.as_bytes(), &cfg()).unwrap();
    assert_eq!(msg.event.as_deref(), Some("open_product_spu_audit"));
}

#[test]
fn wrong_msg_signature() {
    let (envelope, sig) = encrypt(&cfg(), SPU_XML, TS, NONCE).unwrap();
    // signed with another token
    let other = msg_signature("other-token", TS, NONCE, "x");
    assert_eq!(
        parse(&aes_query(&other), envelope.as_bytes(), &cfg()),
        Err(PushError::BadMsgSignature)
    );
    // a valid signature for a different ciphertext (tampered Encrypt)
    let (other_env, _) = encrypt(&cfg(), SPU_XML, TS, NONCE).unwrap();
    assert_eq!(
        parse(&aes_query(&sig), other_env.as_bytes(), &cfg()),
        Err(PushError::BadMsgSignature)
    );
    // another timestamp than the one signed
    let mut q = aes_query(&sig);
    q.timestamp = Some("1700000001".into());
    q.signature = None;
    assert_eq!(
        parse(&q, envelope.as_bytes(), &cfg()),
        Err(PushError::BadMsgSignature)
    );
    let mut q = aes_query(&sig);
    q.msg_signature = None;
    assert_eq!(
        parse(&q, envelope.as_bytes(), &cfg()),
        Err(PushError::MissingParam("msg_signature"))
    );
}

#[test]
fn wrong_appid() {
    let theirs = PushConfig::new("wxSomebodyElse0000", TOKEN, Some(AES_KEY)).unwrap();
    let (envelope, sig) = encrypt(&theirs, SPU_XML, TS, NONCE).unwrap();
    assert_eq!(
        parse(&aes_query(&sig), envelope.as_bytes(), &cfg()),
        Err(PushError::WrongAppId {
            got: "wxSomebodyElse0000".into()
        })
    );
}

#[test]
fn wrong_key_shows_as_bad_padding_or_appid() {
    let other_key = PushConfig::new(
        APPID,
        TOKEN,
        Some("ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210zyxwvut"),
    )
    .unwrap();
    let (envelope, sig) = encrypt(&other_key, SPU_XML, TS, NONCE).unwrap();
    let err = parse(&aes_query(&sig), envelope.as_bytes(), &cfg()).unwrap_err();
    assert_eq!(err.code(), "PUSH_DECRYPT_FAILED", "{err:?}");
}

#[test]
fn bad_padding() {
    let msg = SPU_XML.as_bytes();
    let body = layout(msg, APPID, msg.len() as u32);
    let fill = 32 - body.len() % 32; // bytes to a block boundary (1..=32)

    // pad byte 0
    let mut zero = body.clone();
    zero.resize(body.len() + fill, 0);
    assert_eq!(
        deliver_encrypt(&raw_encrypt(&zero)),
        Err(PushError::BadPaddingValue(0))
    );

    // pad byte 33: a full extra block of 33s and then some
    let mut big = body.clone();
    big.resize(body.len() + fill + 32, 33);
    assert_eq!(
        deliver_encrypt(&raw_encrypt(&big)),
        Err(PushError::BadPaddingValue(33))
    );

    // inconsistent: the last byte says N but the N bytes before disagree
    let mut bad = pad32(body.clone());
    let n = bad.len();
    let pad = bad[n - 1] as usize;
    if pad > 1 {
        bad[n - 2] ^= 0x55;
    } else {
        // pad of 1 cannot be inconsistent; use a full block pad of 32 with one bad byte
        bad.resize(n + 32, 32);
        bad[n + 3] = 7;
    }
    assert_eq!(
        deliver_encrypt(&raw_encrypt(&bad)),
        Err(PushError::InconsistentPadding)
    );

    // and the correct padding is accepted by the same path
    assert!(deliver_encrypt(&raw_encrypt(&pad32(body))).is_ok());
}

#[test]
fn bad_length_field() {
    let msg = SPU_XML.as_bytes();
    let overrun = pad32(layout(msg, APPID, 1_000_000));
    assert_eq!(
        deliver_encrypt(&raw_encrypt(&overrun)),
        Err(PushError::BadMessageLength)
    );
    // too short to hold random + length
    let tiny = vec![16u8; 32]; // decrypts to nothing after padding removal
    assert_eq!(
        deliver_encrypt(&raw_encrypt(&tiny)),
        Err(PushError::BadMessageLength)
    );
}

#[test]
fn bad_base64_and_ciphertext_length() {
    assert_eq!(deliver_encrypt("not*base64!"), Err(PushError::BadBase64));
    assert_eq!(
        deliver_encrypt(&STANDARD.encode([7u8; 15])),
        Err(PushError::BadCiphertextLength(15))
    );
}

#[test]
fn mode_and_key_mismatches() {
    let (envelope, sig) = encrypt(&cfg(), SPU_XML, TS, NONCE).unwrap();
    let plain_only = PushConfig::new(APPID, TOKEN, None).unwrap();
    assert_eq!(
        parse(&aes_query(&sig), envelope.as_bytes(), &plain_only),
        Err(PushError::NoAesKey)
    );
    assert_eq!(
        encrypt(&plain_only, SPU_XML, TS, NONCE),
        Err(PushError::NoAesKey)
    );
    let mut q = aes_query(&sig);
    q.encrypt_type = Some("sm4".into());
    assert_eq!(
        parse(&q, envelope.as_bytes(), &cfg()),
        Err(PushError::UnsupportedEncryptType("sm4".into()))
    );
    // an envelope without Encrypt
    let sig = msg_signature(TOKEN, TS, NONCE, "");
    assert_eq!(
        parse(&aes_query(&sig), br#"{"ToUserName":"gh_1"}"#, &cfg()),
        Err(PushError::MissingEncrypt)
    );
}

#[test]
fn encrypted_reply_is_decryptable_and_signed() {
    let reply = r#"{"ret_code":0,"ret_msg":"ok","out_coupon_id":"CP-1","out_user_coupon_id":"UC-1","request_id":"R-9"}"#;
    let out = encrypt_reply(&cfg(), reply, TS, NONCE).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let enc = v["Encrypt"].as_str().unwrap();
    assert_eq!(v["MsgSignature"], msg_signature(TOKEN, TS, NONCE, enc));
    assert_eq!(v["TimeStamp"], TS);
    assert_eq!(v["Nonce"], NONCE);
    assert_eq!(decrypt(&cfg(), enc).unwrap(), reply.as_bytes());
    let xml = encrypt_reply(&cfg(), "<xml><ret_code>0</ret_code></xml>", TS, NONCE).unwrap();
    assert!(xml.starts_with("<xml><Encrypt><![CDATA["));
    assert!(xml.contains("<TimeStamp>1700000000</TimeStamp>"));
}

const DOCTYPE: &str = r#"<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><xml><ToUserName>&xxe;</ToUserName><FromUserName>o</FromUserName><CreateTime>1</CreateTime><MsgType>event</MsgType></xml>"#;

#[test]
fn doctype_is_refused_everywhere() {
    // in a plaintext push
    let q = PushQuery::signed(TOKEN, TS, NONCE);
    assert_eq!(
        parse(&q, DOCTYPE.as_bytes(), &cfg()),
        Err(PushError::Doctype)
    );
    // in the envelope of an encrypted push
    let sig = msg_signature(TOKEN, TS, NONCE, "x");
    let env = r#"<!DOCTYPE xml [<!ENTITY e "x">]><xml><Encrypt>&e;</Encrypt></xml>"#;
    assert_eq!(
        parse(&aes_query(&sig), env.as_bytes(), &cfg()),
        Err(PushError::Doctype)
    );
    // inside the decrypted message
    let encrypted = encrypt_payload(&cfg(), DOCTYPE.as_bytes()).unwrap();
    assert_eq!(deliver_encrypt(&encrypted), Err(PushError::Doctype));
}

#[test]
fn oversize_and_too_deep_are_refused() {
    let q = PushQuery::signed(TOKEN, TS, NONCE);
    let big = format!("<xml><a>{}</a></xml>", "x".repeat(MAX_BODY));
    assert_eq!(
        parse(&q, big.as_bytes(), &cfg()),
        Err(PushError::TooLarge {
            len: big.len(),
            max: MAX_BODY
        })
    );
    let deep_xml = format!(
        "<xml>{}1{}</xml>",
        "<a>".repeat(MAX_DEPTH),
        "</a>".repeat(MAX_DEPTH)
    );
    assert_eq!(
        parse(&q, deep_xml.as_bytes(), &cfg()),
        Err(PushError::TooDeep(MAX_DEPTH))
    );
    let deep_json = format!(
        r#"{{"a":{}1{}}}"#,
        r#"{"a":"#.repeat(MAX_DEPTH),
        "}".repeat(MAX_DEPTH)
    );
    assert_eq!(
        parse(&q, deep_json.as_bytes(), &cfg()),
        Err(PushError::TooDeep(MAX_DEPTH))
    );
    // far deeper than serde_json's own recursion limit: still our error, no stack overflow
    let abyss = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let abyss = format!(r#"{{"a":{abyss}}}"#);
    assert_eq!(
        parse(&q, abyss.as_bytes(), &cfg()),
        Err(PushError::TooDeep(MAX_DEPTH))
    );
    // too deep inside the encrypted message
    let encrypted = encrypt_payload(&cfg(), deep_xml.as_bytes()).unwrap();
    assert_eq!(
        deliver_encrypt(&encrypted),
        Err(PushError::TooDeep(MAX_DEPTH))
    );
}

#[test]
fn garbage_bodies() {
    let q = PushQuery::signed(TOKEN, TS, NONCE);
    let p = |b: &[u8]| parse(&q, b, &cfg());
    assert_eq!(p(b""), Err(PushError::Empty));
    assert_eq!(p(b"  \n"), Err(PushError::Empty));
    assert_eq!(p(b"success"), Err(PushError::UnknownFormat));
    assert_eq!(p(b"<xml><a>\xff</a></xml>"), Err(PushError::NotUtf8));
    assert!(matches!(
        p(b"<xml><a></b></xml>"),
        Err(PushError::MalformedXml(_))
    ));
    assert!(matches!(p(b"{\"a\":"), Err(PushError::MalformedJson(_))));
    assert_eq!(
        p(br#"{"ToUserName":"gh","FromUserName":"o","CreateTime":1}"#),
        Err(PushError::MissingField("MsgType"))
    );
    assert_eq!(
        p(br#"{"ToUserName":"gh","FromUserName":"o","CreateTime":"soon","MsgType":"event"}"#),
        Err(PushError::BadCreateTime)
    );
    assert_eq!(
        p(br#"{"ToUserName":"gh","FromUserName":"o","CreateTime":-1,"MsgType":"event"}"#),
        Err(PushError::BadCreateTime)
    );
    // a repeated header element is not a header
    assert_eq!(
        p(b"<xml><ToUserName>a</ToUserName><ToUserName>b</ToUserName><FromUserName>o</FromUserName><CreateTime>1</CreateTime><MsgType>event</MsgType></xml>"),
        Err(PushError::MissingField("ToUserName"))
    );
}

/// The brief's list of refusals: each one must be told apart by its type.
#[test]
fn each_refusal_is_a_distinct_error() {
    let (envelope, _) = encrypt(&cfg(), SPU_XML, TS, NONCE).unwrap();
    let theirs = PushConfig::new("wxSomebodyElse0000", TOKEN, Some(AES_KEY)).unwrap();
    let (their_env, their_sig) = encrypt(&theirs, SPU_XML, TS, NONCE).unwrap();
    let body = layout(SPU_XML.as_bytes(), APPID, SPU_XML.len() as u32);
    let fill = 32 - body.len() % 32;
    let mut zero = body.clone();
    zero.resize(body.len() + fill, 0);
    let mut inconsistent = pad32(body.clone());
    inconsistent.resize(inconsistent.len() + 32, 32);
    let n = inconsistent.len();
    inconsistent[n - 5] = 9;
    let plain_q = PushQuery::signed(TOKEN, TS, NONCE);

    let errors = [
        parse(
            &PushQuery::signed("x", TS, NONCE),
            SPU_XML.as_bytes(),
            &cfg(),
        )
        .unwrap_err(),
        parse(&aes_query("0"), envelope.as_bytes(), &cfg()).unwrap_err(),
        parse(&aes_query(&their_sig), their_env.as_bytes(), &cfg()).unwrap_err(),
        deliver_encrypt(&raw_encrypt(&zero)).unwrap_err(),
        deliver_encrypt(&raw_encrypt(&inconsistent)).unwrap_err(),
        deliver_encrypt("%%%").unwrap_err(),
        parse(&plain_q, DOCTYPE.as_bytes(), &cfg()).unwrap_err(),
        parse(&plain_q, &vec![b'<'; MAX_BODY + 1], &cfg()).unwrap_err(),
        parse(
            &plain_q,
            format!("<xml>{}{}</xml>", "<a>".repeat(9), "</a>".repeat(9)).as_bytes(),
            &cfg(),
        )
        .unwrap_err(),
    ];
    let kinds: HashSet<_> = errors.iter().map(discriminant).collect();
    assert_eq!(kinds.len(), errors.len(), "{errors:#?}");
    // and they map to the handler's classes
    assert!(errors[0].is_unauthenticated() && errors[1].is_unauthenticated());
    assert!(errors[2].is_misconfiguration());
    for e in &errors {
        assert!(!e.to_string().contains(AES_KEY));
        assert!(!e.to_string().contains(TOKEN));
    }
}
