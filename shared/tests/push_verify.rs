//! URL verification (GET) and the plaintext-mode `signature` on POST (WECHAT_SHOP.md §9.2).
#![allow(clippy::unwrap_used)] // tests may unwrap

use wxshop::push::{parse, sign, verify_url, PushConfig, PushError, PushQuery};

const TOKEN: &str = "test-token";
const APPID: &str = "wx1234567890abcdef";

fn verification_query(signature: &str) -> PushQuery {
    PushQuery::from_query_str(&format!(
        "signature={signature}&timestamp=1700000000&nonce=424242&echostr=5838479218127813673"
    ))
}

#[test]
fn url_verification_echoes_echostr() {
    // GIVEN the query the console sends, signed with our token
    let q = verification_query(&sign(TOKEN, "1700000000", "424242"));
    // THEN echostr comes back verbatim
    assert_eq!(verify_url(&q, TOKEN).unwrap(), "5838479218127813673");
}

#[test]
fn url_verification_accepts_uppercase_hex() {
    let q = verification_query(&sign(TOKEN, "1700000000", "424242").to_ascii_uppercase());
    assert!(verify_url(&q, TOKEN).is_ok());
}

#[test]
fn signature_is_sha1_of_sorted_parts() {
    // sorted: "1700000000" < "424242" < "test-token"
    use sha1::{Digest, Sha1};
    let expected = hex::encode(Sha1::digest(b"1700000000424242test-token"));
    assert_eq!(sign(TOKEN, "1700000000", "424242"), expected);
}

#[test]
fn url_verification_refuses_wrong_signature() {
    let q = verification_query(&sign("another-token", "1700000000", "424242"));
    assert_eq!(verify_url(&q, TOKEN), Err(PushError::BadSignature));
    let q = verification_query("0000000000000000000000000000000000000000");
    assert_eq!(verify_url(&q, TOKEN), Err(PushError::BadSignature));
    let q = verification_query("");
    assert_eq!(
        verify_url(&q, TOKEN),
        Err(PushError::MissingParam("signature"))
    );
}

#[test]
fn url_verification_refuses_tampered_parameters() {
    let sig = sign(TOKEN, "1700000000", "424242");
    let q = PushQuery::from_query_str(&format!(
        "signature={sig}&timestamp=1700000001&nonce=424242&echostr=x"
    ));
    assert_eq!(verify_url(&q, TOKEN), Err(PushError::BadSignature));
}

#[test]
fn url_verification_checks_each_parameter() {
    let sig = sign(TOKEN, "1700000000", "424242");
    let cases = [
        (
            format!("signature={sig}&nonce=424242&echostr=x"),
            PushError::MissingParam("timestamp"),
        ),
        (
            format!("signature={sig}&timestamp=1700000000&echostr=x"),
            PushError::MissingParam("nonce"),
        ),
        (
            format!("signature={sig}&timestamp=1700000000&nonce=424242"),
            PushError::MissingParam("echostr"),
        ),
        (
            format!("signature={sig}&timestamp=17e8&nonce=424242&echostr=x"),
            PushError::BadTimestamp,
        ),
        (
            format!("signature={sig}&timestamp=-1&nonce=424242&echostr=x"),
            PushError::BadTimestamp,
        ),
    ];
    for (query, expected) in cases {
        assert_eq!(
            verify_url(&PushQuery::from_query_str(&query), TOKEN),
            Err(expected),
            "{query}"
        );
    }
    assert_eq!(
        verify_url(&verification_query(&sig), ""),
        Err(PushError::EmptyToken)
    );
}

#[test]
fn query_is_percent_decoded() {
    let sig = sign(TOKEN, "1700000000", "a b");
    let q = PushQuery::from_query_str(&format!(
        "?signature={sig}&timestamp=1700000000&nonce=a%20b&echostr=x%2By"
    ));
    assert_eq!(verify_url(&q, TOKEN).unwrap(), "x+y");
}

const SPU_AUDIT: &str = r#"{"ToUserName":"gh_0123456789ab","FromUserName":"oWeChatTeamFixedOpenid","CreateTime":1700000000,"MsgType":"event","Event":"open_product_account_register","OpenProductAccountRegister":{"status":2}}"#;

#[test]
fn plaintext_post_needs_a_valid_signature() {
    let cfg = PushConfig::new(APPID, TOKEN, None).unwrap();
    // GIVEN a genuine plaintext push
    let q = PushQuery::signed(TOKEN, "1700000000", "n1");
    let msg = parse(&q, SPU_AUDIT.as_bytes(), &cfg).unwrap();
    assert!(!msg.encrypted);
    assert_eq!(msg.event.as_deref(), Some("open_product_account_register"));

    // WHEN it is signed with another token, or not at all
    let forged = PushQuery::signed("guess", "1700000000", "n1");
    assert_eq!(
        parse(&forged, SPU_AUDIT.as_bytes(), &cfg),
        Err(PushError::BadSignature)
    );
    let unsigned = PushQuery {
        signature: None,
        ..q.clone()
    };
    assert_eq!(
        parse(&unsigned, SPU_AUDIT.as_bytes(), &cfg),
        Err(PushError::MissingParam("signature"))
    );
    // `encrypt_type=raw` is plaintext mode too
    let raw = PushQuery {
        encrypt_type: Some("raw".into()),
        ..q.clone()
    };
    assert!(parse(&raw, SPU_AUDIT.as_bytes(), &cfg).is_ok());
    let bad_ts = PushQuery {
        timestamp: Some("1700000000.5".into()),
        ..q
    };
    assert_eq!(
        parse(&bad_ts, SPU_AUDIT.as_bytes(), &cfg),
        Err(PushError::BadTimestamp)
    );
}

#[test]
fn config_refuses_empty_or_bad_secrets() {
    assert_eq!(PushConfig::new("", TOKEN, None), Err(PushError::EmptyAppId));
    assert_eq!(PushConfig::new(APPID, "", None), Err(PushError::EmptyToken));
    assert_eq!(
        PushConfig::new(APPID, TOKEN, Some("too-short")),
        Err(PushError::BadAesKey)
    );
    // an empty key means plaintext mode
    assert_eq!(
        PushConfig::new(APPID, TOKEN, Some("")).unwrap().aes_key,
        None
    );
}
