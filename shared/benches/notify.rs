//! Criterion view of the notification hot path (issue 8; figures in docs/PERFORMANCE.md):
//! XML decode, signature verification and the typed parse of a payment notification (MD5 and
//! HMAC-SHA256) and of a refund notification, on the payloads the peers are compared on
//! (`bench/payloads.json`), plus the floor: MD5 of the canonical string once.
//!
//! `cargo bench -p wxshop --bench notify` (the peer comparison itself is
//! `scripts/bench-peers.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use md5::{Digest, Md5};
use wxshop::pay::notify::parse_payment_notification;
use wxshop::pay::refund_notify::{parse_refund_notification, RefundKey};
use wxshop::pay::{sign, xml};

const PAYLOADS: &str = include_str!("../../bench/payloads.json");

fn payload(name: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(PAYLOADS).unwrap();
    v[name].as_str().unwrap().to_owned()
}

fn canonical(fields: &sign::Fields, key: &str) -> Vec<u8> {
    let mut s = String::new();
    for (k, v) in fields {
        if k != "sign" && !v.is_empty() {
            s.push_str(&format!("{k}={v}&"));
        }
    }
    s.push_str("key=");
    s.push_str(key);
    s.into_bytes()
}

fn notify(c: &mut Criterion) {
    let key = payload("key");
    let (md5, hmac, refund) = (payload("pay_md5"), payload("pay_hmac"), payload("refund"));
    let mut g = c.benchmark_group("notify");
    g.throughput(Throughput::Elements(1));
    g.bench_function("pay_md5", |b| {
        b.iter(|| parse_payment_notification(black_box(md5.as_bytes()), &key).unwrap())
    });
    g.bench_function("pay_hmac", |b| {
        b.iter(|| parse_payment_notification(black_box(hmac.as_bytes()), &key).unwrap())
    });
    let refund_key = RefundKey::new(&key);
    g.bench_function("refund", |b| {
        b.iter(|| {
            refund_key
                .parse_notification(black_box(refund.as_bytes()))
                .unwrap()
        })
    });
    // With the key derived on every call, as the peers do.
    g.bench_function("refund_key_per_call", |b| {
        b.iter(|| parse_refund_notification(black_box(refund.as_bytes()), &key).unwrap())
    });
    // The parts, to see where the time goes.
    g.bench_function("part/xml_decode", |b| {
        b.iter(|| xml::decode(black_box(md5.as_bytes())).unwrap())
    });
    let fields = xml::decode(md5.as_bytes()).unwrap();
    g.bench_function("part/verify_md5", |b| {
        b.iter(|| sign::verify(black_box(&fields), &key).unwrap())
    });
    let canon = canonical(&fields, &key);
    assert_eq!(
        hex::encode_upper(Md5::digest(&canon)),
        fields["sign"],
        "canonical string"
    );
    g.bench_function("floor_md5", |b| b.iter(|| Md5::digest(black_box(&canon))));
    g.finish();
}

criterion_group!(benches, notify);
criterion_main!(benches);
