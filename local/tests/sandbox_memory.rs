//! A sandbox left running for days, or under a demo's load, stays the same size: what only
//! serves inspection (the call log, the delivery log, the pushed events) keeps its most recent
//! entries (`SandboxConfig::log_cap`, 10 000 by default), and a `prepay_id` is forgotten once
//! it expired (2 hours), as WeChat forgets it — still refused as expired, never as unknown —
//! while its order, payment and refunds stay.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sandbox_util;

use futures::StreamExt;
use sandbox_util::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use wxlocal::sandbox::{deliver, Sandbox};
use wxshop::pay::sign::SignType;
use wxshop::time::Clock;

/// The documented default of `SandboxConfig::log_cap`.
const CAP: usize = 10_000;

/// Every log keeps the `CAP` most recent entries, oldest first, through the `/_control`
/// endpoints as through the `Sandbox` methods tests use; acknowledgements are counted among
/// the attempts kept. (The logs used to keep every entry for as long as the sandbox ran.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inspection_logs_keep_the_most_recent_entries() {
    let sb = start(cfg()).await;
    let base = sb.base_url();
    let http = reqwest::Client::new();

    // Calls: 50 old ones, then CAP new ones.
    let call = |secret: String| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            http.get(format!(
                "{base}/api/cgi-bin/token?grant_type=client_credential&appid={APPID}&secret={secret}"
            ))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        }
    };
    for i in 0..50 {
        call(format!("old{i}")).await;
    }
    futures::stream::iter(0..CAP)
        .for_each_concurrent(16, |i| call(format!("new{i}")))
        .await;
    let calls = get_json(format!("{base}/_control/calls?path=cgi-bin/token")).await;
    let calls = calls["calls"].as_array().unwrap();
    assert_eq!(calls.len(), CAP, "the most recent calls");
    assert!(
        calls
            .iter()
            .all(|c| c["secret"].as_str().unwrap().starts_with("new")),
        "the oldest went first"
    );
    assert_eq!(sb.sandbox.calls("cgi-bin/token").len(), CAP);

    // Pushed events: 50 old ones, then CAP new ones (no push_url: recorded, not sent).
    for i in 0..50 + CAP {
        deliver::push_event(&sb.sandbox, "probe", "n", json!(i));
    }
    let pushed = sb.sandbox.pushed_events();
    assert_eq!(pushed.len(), CAP);
    assert_eq!(pushed[0]["n"], 50, "the oldest went first");

    // Deliveries: every payment notification in 11 copies, all acknowledged.
    let recv = Receiver::start(200, PAY_OK).await;
    let notify = format!("{}/pay", recv.url);
    post_json(
        format!("{base}/_control/notifications"),
        json!({"duplicate": 10}),
    )
    .await;
    let order = |i: usize| {
        let (base, notify) = (base.clone(), notify.clone());
        async move {
            let no = format!("LOG{i:07}");
            let r = mch(
                &base,
                "pay/unifiedorder",
                order_fields(&no, "100", &notify),
                SignType::Md5,
            )
            .await;
            assert_eq!(r["result_code"], "SUCCESS", "{r:?}");
            let p = post_json(
                format!("{base}/_control/pay"),
                json!({"out_trade_no": no, "wait": true}),
            )
            .await;
            assert!(p.get("error").is_none(), "{p}");
        }
    };
    // 920 orders, 10 120 attempts: the first 10 orders' and 10 of the 11th's are dropped.
    for i in 0..20 {
        order(i).await;
    }
    futures::stream::iter(20..920)
        .for_each_concurrent(16, order)
        .await;
    assert_eq!(sb.sandbox.deliveries().len(), CAP);
    let log = get_json(format!("{base}/_control/notifications")).await;
    assert_eq!(log["deliveries"].as_array().unwrap().len(), CAP);
    assert_eq!(log["pushed"].as_array().unwrap().len(), CAP);
    assert_eq!(sb.sandbox.notifications_delivered("LOG0000000"), 0);
    assert_eq!(sb.sandbox.notifications_delivered("LOG0000010"), 1);
    assert_eq!(sb.sandbox.notifications_delivered("LOG0000919"), 11);
    // Orders are no log: every one is still there.
    let state = get_json(format!("{base}/_control/state")).await;
    assert_eq!(state["pay_orders"].as_array().unwrap().len(), 920);
}

/// A `prepay_id` lives 2 hours; then the sandbox forgets it (pruned when a later one is
/// issued), also in its state file. Where it is used it is answered as an expired one was
/// before — the cashier refuses it as expired, whatever its order's state (also after a
/// restart); `shop/order/add` still takes it — and one never issued stays unknown. Orders
/// and payments stay. (Every prepay id used to be remembered for ever.)
#[tokio::test]
async fn an_expired_prepay_id_is_forgotten_and_still_refused_as_expired() {
    let path = temp_file("prepay");
    let (sb, base) = open(&path).await;
    let recv = Receiver::start(200, PAY_OK).await;
    let notify = format!("{}/pay", recv.url);
    let unified = |no: &'static str| {
        let (base, notify) = (base.clone(), notify.clone());
        async move {
            let r = mch(
                &base,
                "pay/unifiedorder",
                order_fields(no, "1990", &notify),
                SignType::Md5,
            )
            .await;
            assert_eq!(r["result_code"], "SUCCESS", "{r:?}");
            r["prepay_id"].clone()
        }
    };

    let unpaid = unified("PRE0000001").await;
    let paid = unified("PRE0000002").await;
    let (s, v) = cashier(&base, &paid).await;
    assert_eq!(s, 200, "{v}");
    sb.saved().await;
    assert_eq!(kept_prepay_ids(&path).len(), 2);

    // Past both prepay ids' 2 hours; the next issue prunes them.
    sb.advance_clock(7_200_000 + 120_000);
    let fresh = unified("PRE0000003").await;
    sb.saved().await;
    assert_eq!(
        kept_prepay_ids(&path),
        vec![fresh.clone()],
        "only the prepay id still valid is kept"
    );

    for p in [&unpaid, &paid] {
        let (s, v) = cashier(&base, p).await;
        assert_eq!(s, 409, "{v}");
        assert!(v["error"].as_str().unwrap().contains("expired"), "{v}");
    }
    let (s, v) = cashier(&base, "wx20240101000000nosuchprepayid0000").await;
    assert_eq!(s, 409, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("no such prepay_id"),
        "{v}"
    );

    // The orders stay: the unpaid one unpaid, the paid one paid.
    for (no, want) in [("PRE0000001", "NOTPAY"), ("PRE0000002", "SUCCESS")] {
        let q = mch(
            &base,
            "pay/orderquery",
            fields(&[("out_trade_no", no)]),
            SignType::Md5,
        )
        .await;
        assert_eq!(q["trade_state"], want, "{q:?}");
    }

    // The trading component still takes the forgotten one, as it took an expired one.
    let tok = token(&base).await;
    assert_eq!(
        shop(&base, &tok, "spu/add", spu("tea", 1990)).await["errcode"],
        0
    );
    let mut listed = json!(null);
    for _ in 0..300 {
        listed = shop(&base, &tok, "spu/listing", json!({"out_product_id": "tea"})).await;
        if listed["errcode"] == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(listed["errcode"], 0, "{listed}");
    let body = order_add_body(
        sb.now_ms(),
        "PRE0000001",
        "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o",
        "tea",
        1990,
        0,
        Some(&unpaid),
    );
    let added = shop(&base, &tok, "order/add", body).await;
    assert_eq!(added["errcode"], 0, "{added}");

    // After a restart the forgotten one is still the sandbox's own, expired.
    sb.saved().await;
    let restarted = image(&path);
    let (_again, base2) = open(&restarted).await;
    let (s, v) = cashier(&base2, &unpaid).await;
    assert_eq!(s, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("expired"), "{v}");
    let (s, v) = cashier(&base2, &fresh).await;
    assert_eq!(s, 200, "the valid one pays: {v}");
    for p in [&path, &restarted] {
        let _ = std::fs::remove_dir_all(p.parent().unwrap());
    }
}

fn temp_file(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("wxlocal-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("wxshop.db-sandbox.json")
}

/// A sandbox on `path`, served under `/sandbox` on 127.0.0.1:0: (sandbox, base URL).
async fn open(path: &Path) -> (Sandbox, String) {
    let sb = Sandbox::with_state_file(cfg(), Clock::default(), path).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().nest("/sandbox", sb.router());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (sb, format!("http://{addr}/sandbox"))
}

/// A copy of the state file and its journal as they are now (what a restart would read).
fn image(path: &Path) -> PathBuf {
    let copy = temp_file("prepay-image");
    std::fs::copy(path, &copy).unwrap();
    std::fs::copy(
        path.with_extension("journal"),
        copy.with_extension("journal"),
    )
    .unwrap();
    copy
}

/// The prepay ids the state file at `path` holds: a sandbox opened on a copy of it writes
/// everything it read as its snapshot.
fn kept_prepay_ids(path: &Path) -> Vec<String> {
    let copy = image(path);
    drop(Sandbox::with_state_file(cfg(), Clock::default(), &copy).unwrap());
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&copy).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(copy.parent().unwrap());
    v["pay"]["prepay_ids"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

/// The user pays with `prepay_id` in WeChat's cashier: (HTTP status, answer).
async fn cashier(base: &str, prepay_id: &str) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}/_control/pay"))
        .json(&json!({"prepay_id": prepay_id, "wait": true}))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}
