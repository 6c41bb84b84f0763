//! `wxshop::pay::notify::parse_payment_notification(body, KEY)` on arbitrary bytes.
//!
//! Properties: never panics; any field map that decodes, once signed with our key (MD5 or
//! HMAC-SHA256), is accepted by `verify` with that algorithm, parses past the signature
//! check when re-encoded, and is refused as a mismatch as soon as one value changes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wxshop::pay::notify::{parse_payment_notification, NotifyError};
use wxshop::pay::sign::{self, SignType, VerifyError};
use wxshop::pay::xml;

const KEY: &str = "192006250b4c09247ec02edce69f6a2d";

fuzz_target!(|data: &[u8]| {
    let parsed = parse_payment_notification(data, KEY);
    let Ok(mut fields) = xml::decode(data) else {
        assert!(matches!(parsed, Err(NotifyError::Xml(_))), "{parsed:?}");
        return;
    };
    if let Ok(n) = &parsed {
        // Accepted means: the signature verified over every field received.
        assert_eq!(n.fields(), fields);
        assert_eq!(n.body(), data);
        assert_eq!(sign::verify(&fields, KEY), Ok(n.sign_type));
    }

    let st = if data.len() % 2 == 0 {
        SignType::Md5
    } else {
        SignType::HmacSha256
    };
    fields.remove("sign");
    fields.remove("sign_type");
    sign::sign_in_place(&mut fields, KEY, st);
    assert_eq!(sign::verify(&fields, KEY), Ok(st), "{fields:?}");
    assert_eq!(sign::detect_sign_type(&fields), Ok(st));

    // Re-encoded, the signed message gets past the signature whatever else is wrong with it.
    let body = xml::encode(&fields);
    if body.len() > xml::MAX_BODY || fields.len() > xml::MAX_FIELDS {
        // Signing adds up to three fields and CDATA; past the caps a refusal is right.
        return;
    }
    match parse_payment_notification(body.as_bytes(), KEY) {
        Err(NotifyError::Sign(e)) => panic!("signed message refused: {e}: {body:?}"),
        Err(NotifyError::Xml(e)) => panic!("encoded message does not decode: {e}: {body:?}"),
        _ => {}
    }

    // Any change to a signed value is a mismatch.
    let target = fields
        .keys()
        .find(|k| k.as_str() != "sign" && k.as_str() != "sign_type")
        .cloned();
    if let Some(k) = target {
        let mut tampered = fields.clone();
        if let Some(v) = tampered.get_mut(&k) {
            v.push('x');
        }
        assert_eq!(
            sign::verify(&tampered, KEY),
            Err(VerifyError::Mismatch),
            "tampered `{k}` still verifies"
        );
    }
});
