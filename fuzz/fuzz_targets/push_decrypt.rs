//! Message push: `wxshop::push::parse` in plaintext and safe mode, `wxshop::push::decrypt`,
//! and the encrypt → decrypt round trips.
//!
//! The first byte chooses the mode, the rest is the payload:
//! - 0: the payload is a plaintext push, sent with a genuine `signature`: in plaintext mode
//!   `parse` reads exactly what `decode_message` reads; in safe mode it refuses it;
//! - 1: the payload is a message: `encrypt` makes a genuine safe-mode push of it, which
//!   `parse` accepts and reads as `decode_message` does (with `encrypted`);
//! - 2: the payload is a safe-mode envelope with a genuine `msg_signature` over its
//!   `Encrypt` value (taken from the flat XML or JSON, when there is one);
//! - 3: the payload is an `Encrypt` value for `decrypt`;
//! - 4: the payload is any bytes: `encrypt_payload_with` → `decrypt` gives them back;
//! - 5: the payload is `query\nbody`, both hostile: `parse` (both modes) and `verify_url`
//!   must not panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wxshop::push::{
    decode_message, decrypt, encrypt, encrypt_payload_with, msg_signature, parse, verify_url,
    PushConfig, PushError, PushQuery,
};

const TOKEN: &str = "test-token";
const APPID: &str = "wx1234567890abcdef";
const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const TS: &str = "1700000000";
const NONCE: &str = "1320562132";

fn cfg() -> PushConfig {
    match PushConfig::new(APPID, TOKEN, Some(AES_KEY)) {
        Ok(c) => c,
        Err(e) => panic!("fixed push config refused: {e}"),
    }
}

/// Plaintext mode: no EncodingAESKey.
fn plain_cfg() -> PushConfig {
    match PushConfig::new(APPID, TOKEN, None) {
        Ok(c) => c,
        Err(e) => panic!("fixed push config refused: {e}"),
    }
}

/// The `Encrypt` value of a flat envelope, read independently of the code under test.
fn encrypt_value(body: &[u8]) -> Option<String> {
    if let Ok(serde_json::Value::Object(m)) = serde_json::from_slice::<serde_json::Value>(body) {
        return m.get("Encrypt")?.as_str().map(str::to_owned);
    }
    wxshop::pay::xml::decode(body).ok()?.remove("Encrypt")
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, payload)) = data.split_first() else {
        return;
    };
    let cfg = cfg();
    match mode % 6 {
        0 => {
            let q = PushQuery::signed(TOKEN, TS, NONCE);
            // Safe mode (an AES key configured) refuses every plaintext body: `signature`
            // does not cover it.
            assert!(parse(&q, payload, &cfg).is_err());
            let parsed = parse(&q, payload, &plain_cfg());
            assert_eq!(parsed, decode_message(payload));
            if let Ok(msg) = parsed {
                if let Ok(ev) = msg.event() {
                    let _ = (ev.dedupe_key(), ev.name(), ev.head());
                }
            }
        }
        1 => {
            let Ok(msg) = std::str::from_utf8(payload) else {
                return;
            };
            let Ok((envelope, signature)) = encrypt(&cfg, msg, TS, NONCE) else {
                assert!(decode_message(payload).is_err());
                return;
            };
            let q = PushQuery::signed_aes(TOKEN, TS, NONCE, &signature);
            match parse(&q, envelope.as_bytes(), &cfg) {
                Ok(got) => {
                    let Ok(mut want) = decode_message(payload) else {
                        panic!("encrypt accepted a message decode_message refuses");
                    };
                    want.encrypted = true;
                    assert_eq!(got, want);
                }
                // The envelope is a third bigger than the message; past the cap is fine.
                Err(PushError::TooLarge { .. }) => {}
                Err(e) => panic!("genuine safe-mode push refused: {e}: {envelope:?}"),
            }
        }
        2 => {
            let encrypt = encrypt_value(payload).unwrap_or_default();
            let sig = msg_signature(TOKEN, TS, NONCE, &encrypt);
            let q = PushQuery::signed_aes(TOKEN, TS, NONCE, &sig);
            if let Ok(msg) = parse(&q, payload, &cfg) {
                assert!(msg.encrypted);
                let _ = msg.event();
            }
        }
        3 => {
            let Ok(text) = std::str::from_utf8(payload) else {
                return;
            };
            let _ = decrypt(&cfg, text);
        }
        4 => {
            let mut random = [0u8; 16];
            let n = payload.len().min(16);
            random[..n].copy_from_slice(&payload[..n]);
            let Ok(ct) = encrypt_payload_with(&cfg, random, payload) else {
                panic!("encrypt_payload_with refused {} bytes", payload.len());
            };
            assert_eq!(decrypt(&cfg, &ct).as_deref(), Ok(payload));
            let other = match PushConfig::new("wx_other_app", TOKEN, Some(AES_KEY)) {
                Ok(c) => c,
                Err(e) => panic!("{e}"),
            };
            assert!(matches!(
                decrypt(&other, &ct),
                Err(PushError::WrongAppId { .. })
            ));
        }
        _ => {
            let split = payload.iter().position(|&b| b == b'\n');
            let (query, body) = match split {
                Some(i) => (&payload[..i], &payload[i + 1..]),
                None => (payload, &b""[..]),
            };
            let q = PushQuery::from_query_str(&String::from_utf8_lossy(query));
            let _ = verify_url(&q, TOKEN);
            for c in [&cfg, &plain_cfg()] {
                if let Ok(msg) = parse(&q, body, c) {
                    let _ = msg.event();
                }
            }
        }
    }
});
