//! Refund notifications: `decrypt_req_info` and `parse_refund_notification` on arbitrary
//! input, and the `encrypt_req_info` → decrypt round trip.
//!
//! The first byte chooses the mode, the rest is the payload:
//! - 0: the payload is a whole notification body, key `KEY`;
//! - 1: the payload is a whole notification body, key `GOPAY_KEY` (the gopay vector's);
//! - 2: the payload is a `req_info` value to decrypt;
//! - 3: the payload is any plaintext: encrypt → decrypt gives it back;
//! - 4: the payload is the inner `<root>` plaintext: wrapped as a genuine notification, it
//!   parses past decryption, and when it parses its fields are the payload's.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wxshop::pay::notify::NotifyError;
use wxshop::pay::refund_notify::{decrypt_req_info, encrypt_req_info, parse_refund_notification};
use wxshop::pay::sign::Fields;
use wxshop::pay::xml::{self, XmlError};

const KEY: &str = "192006250b4c09247ec02edce69f6a2d";
const GOPAY_KEY: &str = "ziR0QKsTUfMOuochC9RfCdmfHECorQAP";

fn outer(req_info: &str) -> String {
    let mut f = Fields::new();
    f.insert("return_code".into(), "SUCCESS".into());
    f.insert("appid".into(), "wx2421b1c4370ec43b".into());
    f.insert("mch_id".into(), "10000100".into());
    f.insert("nonce_str".into(), "TeqClE3i0mvn3DrK".into());
    f.insert("req_info".into(), req_info.into());
    xml::encode(&f)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, payload)) = data.split_first() else {
        return;
    };
    match mode % 5 {
        0 | 1 => {
            let key = if mode % 5 == 0 { KEY } else { GOPAY_KEY };
            if let Ok(n) = parse_refund_notification(payload, key) {
                assert!(!n.outer().contains_key("req_info"));
                assert_eq!(n.out_trade_no.as_str(), n.fields()["out_trade_no"]);
            }
        }
        2 => {
            let Ok(text) = std::str::from_utf8(payload) else {
                return;
            };
            if let Ok(plain) = decrypt_req_info(text, KEY) {
                // Whatever decrypts re-encrypts to the same ciphertext (ECB, PKCS#7).
                if let Ok(p) = std::str::from_utf8(&plain) {
                    let compact: String =
                        text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
                    assert_eq!(encrypt_req_info(p, KEY), compact);
                }
            }
        }
        3 => {
            let Ok(text) = std::str::from_utf8(payload) else {
                return;
            };
            let ct = encrypt_req_info(text, KEY);
            assert_eq!(decrypt_req_info(&ct, KEY).as_deref(), Ok(payload));
            assert_ne!(
                decrypt_req_info(&ct, GOPAY_KEY).ok().as_deref(),
                Some(payload)
            );
        }
        _ => {
            let Ok(text) = std::str::from_utf8(payload) else {
                return;
            };
            let body = outer(&encrypt_req_info(text, KEY));
            let inner = xml::decode_root(payload, "root");
            match parse_refund_notification(body.as_bytes(), KEY) {
                Ok(n) => assert_eq!(Ok::<_, XmlError>(n.fields()), inner),
                Err(NotifyError::Base64 | NotifyError::Decrypt) => {
                    panic!("genuine req_info refused")
                }
                Err(NotifyError::Xml(e)) if body.len() <= xml::MAX_BODY => {
                    panic!("genuine outer XML refused: {e}")
                }
                Err(NotifyError::InnerXml(e)) => assert_eq!(Err(e), inner),
                Err(_) => {}
            }
        }
    }
});
