//! The notification hot path: verify + parse of the payloads in `bench/payloads.json` (the
//! same bytes the peers get), single thread, and the floor — MD5 of the payment's canonical
//! string once — that no verifier can beat.

use crate::stats::median;
use md5::{Digest, Md5};
use serde_json::{json, Value};
use std::hint::black_box;
use std::time::{Duration, Instant};
use wxshop::pay::notify::parse_payment_notification;
use wxshop::pay::refund_notify::RefundKey;
use wxshop::pay::sign::Fields;

pub const PAYLOADS: &str = include_str!("../payloads.json");

pub struct Payloads {
    pub key: String,
    pub appid: String,
    pub mch_id: String,
    pub pay_md5: String,
    pub pay_hmac: String,
    pub refund: String,
}

pub fn payloads() -> Result<Payloads, String> {
    let v: Value = serde_json::from_str(PAYLOADS).map_err(|e| e.to_string())?;
    let s = |k: &str| {
        v[k].as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("payloads.json has no `{k}`"))
    };
    Ok(Payloads {
        key: s("key")?,
        appid: s("appid")?,
        mch_id: s("mch_id")?,
        pay_md5: s("pay_md5")?,
        pay_hmac: s("pay_hmac")?,
        refund: s("refund")?,
    })
}

/// `k=v&…&key=KEY` of a message: what its MD5 signature is computed over.
pub fn canonical_string(fields: &Fields, key: &str) -> String {
    let mut s = String::new();
    for (k, v) in fields {
        if k == "sign" || v.is_empty() {
            continue;
        }
        s.push_str(k);
        s.push('=');
        s.push_str(v);
        s.push('&');
    }
    s.push_str("key=");
    s.push_str(key);
    s
}

type Case = Box<dyn FnMut() -> bool>;

/// The cases, each a closure doing one verify+parse (true when accepted).
fn cases(p: &Payloads) -> Result<Vec<(&'static str, Case)>, String> {
    let fields =
        wxshop::pay::xml::decode(p.pay_md5.as_bytes()).map_err(|e| format!("pay_md5: {e}"))?;
    let canonical = canonical_string(&fields, &p.key).into_bytes();
    let expected = fields.get("sign").cloned().unwrap_or_default();
    if hex_upper(&Md5::digest(&canonical)) != expected {
        return Err("the canonical string does not reproduce pay_md5's sign".into());
    }
    let mk_pay = |body: String, key: String, appid: String, mch: String| -> Case {
        Box::new(move || {
            parse_payment_notification(black_box(body.as_bytes()), &key)
                .and_then(|n| n.check_merchant(&appid, &mch, None, None).map(|_| n))
                .map(|n| black_box(n).success)
                .unwrap_or(false)
        })
    };
    let (rb, rk, ra, rm) = (
        p.refund.clone(),
        // As `payCallback` does: the key derived once (`App::refund_key`), not per call.
        RefundKey::new(&p.key),
        p.appid.clone(),
        p.mch_id.clone(),
    );
    Ok(vec![
        (
            "pay_md5",
            mk_pay(
                p.pay_md5.clone(),
                p.key.clone(),
                p.appid.clone(),
                p.mch_id.clone(),
            ),
        ),
        (
            "pay_hmac",
            mk_pay(
                p.pay_hmac.clone(),
                p.key.clone(),
                p.appid.clone(),
                p.mch_id.clone(),
            ),
        ),
        (
            "refund",
            Box::new(move || {
                rk.parse_notification(black_box(rb.as_bytes()))
                    .and_then(|n| n.check_merchant(&ra, &rm, None, None).map(|_| n))
                    .map(|n| black_box(n).refund_fee.get() > 0)
                    .unwrap_or(false)
            }),
        ),
        (
            "floor_md5",
            Box::new(move || {
                black_box(Md5::digest(black_box(&canonical)));
                true
            }),
        ),
    ])
}

/// The steps of `pay_md5`, for instruction counts per step (`notify-iters` only).
fn part_cases(p: &Payloads) -> Result<Vec<(&'static str, Case)>, String> {
    let body = p.pay_md5.clone();
    let fields =
        wxshop::pay::xml::decode(p.pay_md5.as_bytes()).map_err(|e| format!("pay_md5: {e}"))?;
    // Scanned once, outside the measured closure (the bench process keeps it to the end).
    let leaked: &'static str = Box::leak(p.pay_md5.clone().into_boxed_str());
    let flat = wxshop::pay::flat::scan(leaked.as_bytes()).map_err(|e| format!("pay_md5: {e}"))?;
    let key = p.key.clone();
    let k2 = p.key.clone();
    Ok(vec![
        (
            // The borrowing scanner the notification path uses (`pay::flat`).
            "part_xml_decode",
            Box::new(move || wxshop::pay::flat::scan(black_box(body.as_bytes())).is_ok()),
        ),
        (
            // Detect algorithm + sign + compare over the scanned fields.
            "part_verify_md5",
            Box::new(move || {
                let f = black_box(&flat);
                wxshop::pay::sign::verify_sorted(f.iter(), f.get("sign"), f.get("sign_type"), &key)
                    .is_ok()
            }),
        ),
        (
            "part_sign_md5",
            Box::new(move || {
                !wxshop::pay::sign::sign(black_box(&fields), &k2, wxshop::pay::sign::SignType::Md5)
                    .is_empty()
            }),
        ),
    ])
}

fn hex_upper(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

/// Operations per second of `f` over one round of about `secs` seconds.
fn round(f: &mut Case, secs: f64) -> f64 {
    // Batches of 256 keep the clock out of the loop.
    let deadline = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut n: u64 = 0;
    loop {
        for _ in 0..256 {
            black_box(f());
        }
        n += 256;
        let e = start.elapsed();
        if e >= deadline {
            return n as f64 / e.as_secs_f64();
        }
    }
}

pub fn run(args: &[String]) -> Result<(), String> {
    let secs: f64 = crate::num(args, "--secs", 1.0);
    let rounds: usize = crate::num(args, "--rounds", 5);
    let p = payloads()?;
    for (name, mut f) in cases(&p)? {
        if !f() {
            return Err(format!("{name}: our implementation refused the payload"));
        }
        round(&mut f, secs.min(0.3)); // warm-up
        let rates: Vec<f64> = (0..rounds).map(|_| round(&mut f, secs)).collect();
        let ops = median(rates.clone());
        println!(
            "{}",
            json!({"impl": "wxshop", "case": name, "ops_per_sec": ops, "ns_per_op": 1e9 / ops,
                   "rounds": rates.len(), "round_secs": secs,
                   "min": rates.iter().cloned().fold(f64::INFINITY, f64::min),
                   "max": rates.iter().cloned().fold(0.0, f64::max)})
        );
    }
    Ok(())
}

/// Exactly `--iters` calls of one case: run it under callgrind twice (N and 2N) and divide
/// the difference of the instruction counts by N for instructions per notification.
pub fn run_iters(args: &[String]) -> Result<(), String> {
    let case = crate::arg(args, "--case", "pay_md5");
    let iters: u64 = crate::num(args, "--iters", 10_000);
    let p = payloads()?;
    let (_, mut f) = cases(&p)?
        .into_iter()
        .chain(part_cases(&p)?)
        .find(|(n, _)| *n == case)
        .ok_or_else(|| format!("no case `{case}`"))?;
    let mut ok = 0u64;
    for _ in 0..iters {
        ok += u64::from(f());
    }
    println!("{}", json!({"case": case, "iters": iters, "accepted": ok}));
    Ok(())
}
