//! Differential: `wxshop::pay::flat::scan_root` (the notification fast path, borrowed fields)
//! against `wxshop::pay::xml::decode_root` (the hardened general decoder it must match).
//!
//! Properties: never panics; for every input and both roots (`xml` for notifications,
//! `root` for the decrypted refund `req_info`) the two agree exactly — both accept with the
//! same fields, or both refuse with the same `XmlError`; the scanner's fields come sorted by
//! name with no duplicates, and every lookup matches the reference's map.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wxshop::pay::{flat, xml};

fn check(data: &[u8], root: &'static str) {
    let reference = xml::decode_root(data, root);
    let ours = flat::scan_root(data, root);
    match (&ours, &reference) {
        (Ok(f), Ok(r)) => {
            assert_eq!(&f.to_fields(), r);
            let names: Vec<&str> = f.iter().map(|(k, _)| k).collect();
            assert!(names.windows(2).all(|w| w[0] < w[1]), "{names:?}");
            for (k, v) in r {
                assert_eq!(f.get(k), Some(v.as_str()));
            }
        }
        (Err(a), Err(b)) => assert_eq!(a, b),
        _ => panic!(
            "scanner {:?} but reference {:?} on {:?}",
            ours.map(|f| f.to_fields()),
            reference,
            String::from_utf8_lossy(data)
        ),
    }
}

fuzz_target!(|data: &[u8]| {
    check(data, "xml");
    check(data, "root");
});
