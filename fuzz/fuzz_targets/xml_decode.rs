//! `wxshop::pay::xml::decode` / `decode_root` on arbitrary bytes.
//!
//! Properties: never panics; whatever decodes re-encodes (`encode_root`) to a message that
//! decodes to the very same field map.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wxshop::pay::xml;

fn check(data: &[u8], root: &'static str) {
    let Ok(fields) = xml::decode_root(data, root) else {
        return;
    };
    let encoded = xml::encode_root(&fields, root);
    if encoded.len() > xml::MAX_BODY {
        // CDATA wrapping can push a message near the cap over it; refusing that is right.
        return;
    }
    match xml::decode_root(encoded.as_bytes(), root) {
        Ok(again) => assert_eq!(again, fields, "round trip changed the fields: {encoded:?}"),
        Err(e) => panic!("re-encoded message does not decode: {e}: {encoded:?}"),
    }
    if root == "xml" {
        assert_eq!(xml::encode(&fields), encoded);
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = xml::decode(data);
    check(data, "xml");
    check(data, "root");
});
