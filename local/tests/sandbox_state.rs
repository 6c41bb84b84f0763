//! A sandbox with a state file remembers across restarts, as WeChat does: a second sandbox
//! opened on the file knows the first one's orders, prepay ids, refunds, products and tokens,
//! and finishes what the first left under way (a refund being processed, a product waiting
//! for its automatic audit). An unreadable file is refused, naming it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sandbox_util;

use axum::Router;
use sandbox_util::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use wxlocal::sandbox::{Sandbox, SandboxConfig};
use wxshop::pay::sign::SignType;
use wxshop::time::Clock;

/// A sandbox on `path`, served under `/sandbox` on 127.0.0.1:0: (sandbox, base URL).
async fn open(cfg: SandboxConfig, path: &Path) -> (Sandbox, String) {
    let sb = Sandbox::with_state_file(cfg, Clock::default(), path).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().nest("/sandbox", sb.router());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (sb, format!("http://{addr}/sandbox"))
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

#[tokio::test]
async fn a_second_sandbox_on_the_file_knows_and_finishes_what_the_first_did() {
    let path = temp_file("state");
    let recv = Receiver::start(200, PAY_OK).await;
    let notify = format!("{}/callbacks/pay", recv.url);
    let refund_notify = format!("{}/callbacks/refund", recv.url);

    // The first sandbox: slow (a refund would take ~17 minutes to be processed) and without
    // automatic audits, so both are still under way when it is left.
    let mut slow = cfg();
    slow.time_scale = 1000.0;
    slow.auto_audit = false;
    let (_first, base) = open(slow, &path).await;
    let placed = mch(
        &base,
        "pay/unifiedorder",
        order_fields("KEEP000001", "1000", &notify),
        SignType::Md5,
    )
    .await;
    let prepay_id = placed["prepay_id"].clone();
    mch(
        &base,
        "pay/unifiedorder",
        order_fields("KEEP000002", "500", &notify),
        SignType::Md5,
    )
    .await;
    post_json(
        &format!("{base}/_control/pay"),
        json!({"out_trade_no": "KEEP000001"}),
    )
    .await;
    let r = mch(
        &base,
        "secapi/pay/refund",
        fields(&[
            ("out_trade_no", "KEEP000001"),
            ("out_refund_no", "KEEPR1"),
            ("total_fee", "1000"),
            ("refund_fee", "400"),
            ("notify_url", &refund_notify),
        ]),
        SignType::Md5,
    )
    .await;
    assert_eq!(r["result_code"], "SUCCESS", "{r:?}");
    let tok = token(&base).await;
    let added = shop(&base, &tok, "spu/add", spu("tea", 1990)).await;
    assert_eq!(added["errcode"], 0, "{added}");
    let product_id = added["data"]["product_id"].clone();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "owner-only: it holds tokens");
    }

    // The second sandbox on the same file, at the usual speed and auditing by itself.
    let (second, base) = open(cfg(), &path).await;
    assert_eq!(second.state_file(), Some(path.as_path()));
    let q = mch(
        &base,
        "pay/orderquery",
        fields(&[("out_trade_no", "KEEP000001")]),
        SignType::Md5,
    )
    .await;
    assert_eq!(q["trade_state"], "SUCCESS", "{q:?}");
    // The cashier still knows the unpaid order's prepay id… and the paid one's.
    let unpaid = mch(
        &base,
        "pay/orderquery",
        fields(&[("out_trade_no", "KEEP000002")]),
        SignType::Md5,
    )
    .await;
    assert_eq!(unpaid["trade_state"], "NOTPAY", "{unpaid:?}");
    let again = post_json(
        &format!("{base}/_control/pay"),
        json!({"prepay_id": prepay_id}),
    )
    .await;
    assert!(
        again["error"].as_str().unwrap().contains("paid already"),
        "{again}"
    );
    // The token issued before still works.
    let list = shop(
        &base,
        &tok,
        "spu/get",
        json!({"out_product_id": "tea", "need_edit_spu": 1}),
    )
    .await;
    assert_eq!(list["errcode"], 0, "{list}");
    assert_eq!(list["spu"]["product_id"], product_id);
    // What was under way finishes: the refund, with its notification, and the audit.
    wait_for("the refund to be processed", 5000, || {
        second.refund_notifications_delivered("KEEPR1") == 1
    })
    .await;
    let rq = mch(
        &base,
        "pay/refundquery",
        fields(&[("out_refund_no", "KEEPR1")]),
        SignType::Md5,
    )
    .await;
    assert_eq!(rq["refund_status_0"], "SUCCESS", "{rq:?}");
    let mut approved = false;
    for _ in 0..200 {
        let spu = shop(
            &base,
            &tok,
            "spu/get",
            json!({"out_product_id": "tea", "need_edit_spu": 1}),
        )
        .await;
        if spu["spu"]["edit_status"] == 4 {
            approved = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(approved, "the audit left under way was decided");
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[tokio::test]
async fn an_unreadable_state_file_is_refused_naming_it() {
    for (tag, content) in [
        ("garbage", "{not json".to_owned()),
        ("format", json!({"format": 999}).to_string()),
    ] {
        let path = temp_file(tag);
        std::fs::write(&path, &content).unwrap();
        let err = match Sandbox::with_state_file(cfg(), Clock::default(), &path) {
            Ok(_) => panic!("{tag}: opened"),
            Err(e) => e,
        };
        assert!(err.contains(&path.display().to_string()), "{tag}: {err}");
        if tag == "format" {
            assert!(err.contains("format 999"), "{err}");
        }
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            content,
            "{tag}: left as it was"
        );
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
