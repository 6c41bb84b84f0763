//! Session tokens: round trip, expiry, tampering, wrong secret, malformed input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use secrecy::SecretString;
use wxshop::domain::OpenId;
use wxshop::session::{SessionError, SessionKeys};

const SECRET: &str = "0123456789abcdef0123456789abcdef";
/// The TTL configured when tokens are verified (the default, 7 days).
const TTL: i64 = 7 * 24 * 3600;

fn keys(s: &str) -> SessionKeys {
    SessionKeys::new(&SecretString::from(s.to_owned()))
}

fn openid() -> OpenId {
    OpenId::parse("oUpF8uMEb4qRXf22hE3X68TekukE").unwrap()
}

#[test]
fn round_trip() {
    let k = keys(SECRET);
    let t = k.issue(&openid(), 1_700_000_000, 7 * 24 * 3600);
    let s = k.verify(&t, 1_700_000_100, TTL).unwrap();
    assert_eq!(s.openid, openid());
    assert_eq!(s.expires_at, 1_700_000_000 + 7 * 24 * 3600);
    assert_eq!(s.issued_at, 1_700_000_000);
    // A second key built from the same secret (another container) agrees.
    assert!(keys(SECRET).verify(&t, 1_700_000_100, TTL).is_ok());
    // Tokens are unique even for the same user and second.
    assert_ne!(t, k.issue(&openid(), 1_700_000_000, 7 * 24 * 3600));
    // Compact and URL-safe.
    assert!(t
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'));
}

#[test]
fn expired_tokens_are_refused() {
    let k = keys(SECRET);
    let t = k.issue(&openid(), 1000, 60);
    assert!(k.verify(&t, 1059, TTL).is_ok());
    assert_eq!(k.verify(&t, 1060, TTL), Err(SessionError::Expired));
    assert_eq!(k.verify(&t, 99_999, TTL), Err(SessionError::Expired));
}

#[test]
fn tampered_tokens_are_refused() {
    let k = keys(SECRET);
    let t = k.issue(&openid(), 1000, 3600);
    let (body, sig) = t.split_once('.').unwrap();

    // Another user's openid with the original signature.
    let mut payload: serde_json::Value =
        serde_json::from_slice(&B64.decode(body).unwrap()).unwrap();
    payload["sub"] = "oAttacker000000000000000000".into();
    let forged = format!("{}.{sig}", B64.encode(payload.to_string()));
    assert_eq!(
        k.verify(&forged, 1001, TTL),
        Err(SessionError::BadSignature)
    );

    // A later expiry with the original signature.
    let mut payload: serde_json::Value =
        serde_json::from_slice(&B64.decode(body).unwrap()).unwrap();
    payload["exp"] = 9_999_999_999i64.into();
    let forged = format!("{}.{sig}", B64.encode(payload.to_string()));
    assert_eq!(
        k.verify(&forged, 1001, TTL),
        Err(SessionError::BadSignature)
    );

    // A flipped signature byte.
    let mut raw = B64.decode(sig).unwrap();
    raw[0] ^= 1;
    let forged = format!("{body}.{}", B64.encode(raw));
    assert_eq!(
        k.verify(&forged, 1001, TTL),
        Err(SessionError::BadSignature)
    );

    // A truncated signature.
    let forged = format!("{body}.{}", &sig[..10]);
    assert!(k.verify(&forged, 1001, TTL).is_err());
}

#[test]
fn tokens_from_another_secret_are_refused() {
    let t = keys("another-secret-another-secret-00").issue(&openid(), 1000, 3600);
    assert_eq!(
        keys(SECRET).verify(&t, 1001, TTL),
        Err(SessionError::BadSignature)
    );
}

#[test]
fn malformed_tokens_are_refused() {
    let k = keys(SECRET);
    for bad in ["", ".", "abc", "a.b.c", "!!!.###", &"a".repeat(5000)] {
        assert_eq!(
            k.verify(bad, 1, TTL),
            Err(SessionError::Malformed),
            "{bad:.20}"
        );
    }
    // Correctly signed but not our payload shape: still refused, as malformed.
    let body = B64.encode(br#"{"hello":"world"}"#);
    let t = k.issue(&openid(), 1000, 3600);
    let (_, sig) = t.split_once('.').unwrap();
    assert!(k.verify(&format!("{body}.{sig}"), 1001, TTL).is_err());
}

#[test]
fn the_token_carries_no_secret_material() {
    let k = keys(SECRET);
    let t = k.issue(&openid(), 1000, 3600);
    let (body, _) = t.split_once('.').unwrap();
    let payload: serde_json::Value = serde_json::from_slice(&B64.decode(body).unwrap()).unwrap();
    let mut fields: Vec<_> = payload.as_object().unwrap().keys().cloned().collect();
    fields.sort();
    assert_eq!(fields, ["exp", "iat", "jti", "sub"]);
    assert!(!format!("{k:?}").contains(SECRET));
}
