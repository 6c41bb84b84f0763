//! The trading component of the sandbox over real HTTP: SPU audit pushes (plaintext and safe
//! mode, verified with `wxshop::push`), order rules, delivery and after-sales.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sandbox_util;

use sandbox_util::*;
use serde_json::{json, Value};
use wxshop::push::{parse, PushConfig, PushEvent, PushQuery};

fn push_of(g: &Got, aes: Option<&str>) -> wxshop::push::PushMessage {
    let query = g.path_query.split_once('?').map(|x| x.1).unwrap_or("");
    let q = PushQuery::from_query_str(query);
    let cfg = PushConfig::new(APPID, PUSH_TOKEN, aes).unwrap();
    parse(&q, &g.body, &cfg).unwrap()
}

async fn audit_push_roundtrip(aes: Option<&str>, xml: bool) {
    let recv = Receiver::start(200, "success").await;
    let mut c = cfg();
    c.push_url = Some(format!("{}/callbacks/wechat", recv.url));
    c.push_aes_key = aes.map(str::to_owned);
    let sb = start(c).await;
    let base = sb.base_url();
    if xml {
        post_json(
            format!("{base}/_control/notifications"),
            json!({"push_format": "xml"}),
        )
        .await;
    }
    let tok = token(&base).await;
    let r = shop(&base, &tok, "spu/add", spu("tea", 1990)).await;
    assert_eq!(r["errcode"], 0, "{r}");
    let product_id = r["data"]["product_id"].as_u64().unwrap();
    assert!(product_id > (1u64 << 53), "64-bit ids beyond f64 precision");

    wait_for("the audit push", 3000, || !recv.got().is_empty()).await;
    let g = &recv.got()[0];
    let msg = push_of(g, aes);
    assert_eq!(msg.encrypted, aes.is_some());
    match msg.event().unwrap() {
        PushEvent::SpuAudit { body, .. } => {
            assert_eq!(body.out_product_id, "tea");
            assert_eq!(body.product_id, Some(product_id));
            assert_eq!(body.status, 4);
        }
        other => panic!("unexpected event {other:?}"),
    }
    if aes.is_some() {
        assert!(g.path_query.contains("encrypt_type=aes"));
        assert!(!String::from_utf8_lossy(&g.body).contains("open_product_spu_audit"));
    }
    let get = shop(&base, &tok, "spu/get", json!({"out_product_id": "tea"})).await;
    assert_eq!(get["spu"]["edit_status"], 4);
    assert_eq!(get["spu"]["product_id"].as_u64(), Some(product_id));
    assert_eq!(sb.sandbox.pushed_events().len(), 1);
}

#[tokio::test]
async fn spu_audit_push_plaintext_json() {
    audit_push_roundtrip(None, false).await;
}

#[tokio::test]
async fn spu_audit_push_safe_mode_json() {
    audit_push_roundtrip(Some(AES_KEY), false).await;
}

#[tokio::test]
async fn spu_audit_push_safe_mode_xml() {
    audit_push_roundtrip(Some(AES_KEY), true).await;
}

#[tokio::test]
async fn manual_audit_and_spu_rules() {
    let mut c = cfg();
    c.auto_audit = false;
    let sb = start(c).await;
    let base = sb.base_url();
    let tok = token(&base).await;

    // Images must be WeChat-hosted; categories must exist.
    let mut bad = spu("x1", 100);
    bad["head_img"] = json!(["https://example.com/a.jpg"]);
    assert_eq!(shop(&base, &tok, "spu/add", bad).await["errcode"], 47001);
    let mut bad = spu("x1", 100);
    bad["third_cat_id"] = json!(999_999);
    assert_eq!(
        shop(&base, &tok, "spu/add", bad).await["errcode"],
        1_000_009
    );
    let mut bad = spu("x1", 100);
    bad["third_cat_id"] = json!(7231);
    assert_eq!(
        shop(&base, &tok, "spu/add", bad).await["errcode"],
        1_000_005
    );
    let mut bad = spu("x1", 100);
    bad["brand_id"] = json!(42);
    assert_eq!(
        shop(&base, &tok, "spu/add", bad).await["errcode"],
        1_000_006
    );
    let mut no_id = spu("x1", 100);
    no_id.as_object_mut().unwrap().remove("out_product_id");
    assert_eq!(
        shop(&base, &tok, "spu/add", no_id).await["errcode"],
        1_000_001
    );

    assert_eq!(
        shop(&base, &tok, "spu/add", spu("p1", 500)).await["errcode"],
        0
    );
    assert_eq!(
        shop(&base, &tok, "spu/add", spu("p1", 500)).await["errcode"],
        1_000_012
    );
    // Under audit: no update, no listing.
    assert_eq!(
        shop(&base, &tok, "spu/update", spu("p1", 600)).await["errcode"],
        1_000_002
    );
    assert_eq!(
        shop(&base, &tok, "spu/listing", json!({"out_product_id": "p1"})).await["errcode"],
        1_000_003
    );
    let rejected = post_json(
        format!("{base}/_control/audit"),
        json!({"out_product_id": "p1", "approve": false, "reason": "blurry photo"}),
    )
    .await;
    assert_eq!(rejected["status"], 3);
    let got = shop(
        &base,
        &tok,
        "spu/get",
        json!({"out_product_id": "p1", "need_edit_spu": 1}),
    )
    .await;
    assert_eq!(got["spu"]["edit_status"], 3);
    assert_eq!(got["spu"]["audit_info"]["reject_reason"], "blurry photo");
    assert_eq!(
        shop(&base, &tok, "spu/update", spu("p1", 600)).await["errcode"],
        0
    );
    post_json(
        format!("{base}/_control/audit"),
        json!({"out_product_id": "p1", "approve": true}),
    )
    .await;
    assert_eq!(
        shop(&base, &tok, "spu/listing", json!({"out_product_id": "p1"})).await["errcode"],
        0
    );
    let list = shop(
        &base,
        &tok,
        "spu/get_list",
        json!({"page": 1, "page_size": 10, "status": 5}),
    )
    .await;
    assert_eq!(list["total_num"], 1);
    assert_eq!(list["spus"][0]["skus"][0]["sale_price"], 600);
    // Price change without audit on an approved SKU; a new SKU needs the audited update.
    let wa = shop(
        &base,
        &tok,
        "spu/update_without_audit",
        json!({"out_product_id": "p1", "skus": [{"out_sku_id": "p1-sku", "sale_price": 650}]}),
    )
    .await;
    assert_eq!(wa["errcode"], 0);
    let wa = shop(
        &base,
        &tok,
        "spu/update_without_audit",
        json!({"out_product_id": "p1", "skus": [{"out_sku_id": "new", "sale_price": 1}]}),
    )
    .await;
    assert_eq!(wa["errcode"], 1_000_004);
    assert_eq!(sb.sandbox.calls("spu/add").len(), 7);
}

/// Adds, approves (auto) and lists a product; returns its sandbox.
async fn listed(sb: &wxlocal::sandbox::Running, tok: &str, id: &str, price: i64) {
    let base = sb.base_url();
    assert_eq!(
        shop(&base, tok, "spu/add", spu(id, price)).await["errcode"],
        0
    );
    let s = sb.sandbox.clone();
    let id2 = id.to_owned();
    wait_for("auto audit", 3000, move || {
        s.deliveries().is_empty()
            && !s
                .pushed_events()
                .iter()
                .all(|e| e["OpenProductSpuAudit"]["out_product_id"] != json!(id2))
    })
    .await;
    assert_eq!(
        shop(&base, tok, "spu/listing", json!({"out_product_id": id})).await["errcode"],
        0
    );
}

#[tokio::test]
async fn order_rules_delivery_and_aftersale() {
    let sb = start(cfg()).await;
    let base = sb.base_url();
    let tok = token(&base).await;
    let openid = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o";
    let now = || sb.sandbox.now_ms();

    // Not registered yet.
    assert_eq!(
        shop(&base, &tok, "register/check", json!({})).await["errcode"],
        1_040_003
    );
    assert_eq!(
        shop(&base, &tok, "register/apply", json!({})).await["errcode"],
        0
    );
    assert_eq!(
        shop(&base, &tok, "register/check", json!({})).await["data"]["status"],
        2
    );

    // A product that is added (and approved) but not listed cannot be ordered.
    assert_eq!(
        shop(&base, &tok, "spu/add", spu("unlisted", 990)).await["errcode"],
        0
    );
    let s = sb.sandbox.clone();
    wait_for("auto audit", 3000, move || {
        !s.pushed_events()
            .iter()
            .all(|e| e["Event"] != "open_product_spu_audit")
    })
    .await;
    let r = shop(
        &base,
        &tok,
        "order/add",
        order_add_body(now(), "O1", openid, "unlisted", 990, 1, None),
    )
    .await;
    assert_eq!(r["errcode"], 9_401_022, "{r}");
    let r = shop(
        &base,
        &tok,
        "order/add",
        order_add_body(now(), "O1", openid, "ghost", 990, 1, None),
    )
    .await;
    assert_eq!(r["errcode"], 9_401_002, "{r}");

    listed(&sb, &tok, "tea", 1990).await;
    // Wrong price, inconsistent price_info, stale create_time.
    let r = shop(
        &base,
        &tok,
        "order/add",
        order_add_body(now(), "O1", openid, "tea", 1000, 1, None),
    )
    .await;
    assert_eq!(r["errcode"], 1_010_006, "{r}");
    let mut b = order_add_body(now(), "O1", openid, "tea", 1990, 1, None);
    b["order_detail"]["price_info"]["order_price"] = json!(1);
    assert_eq!(
        shop(&base, &tok, "order/add", b).await["errcode"],
        1_010_005
    );
    let b = order_add_body(now() - 60_000, "O1", openid, "tea", 1990, 1, None);
    assert_eq!(
        shop(&base, &tok, "order/add", b).await["errcode"],
        1_010_008
    );
    // fund_type 0 needs a real prepay_id.
    let b = order_add_body(now(), "O1", openid, "tea", 1990, 0, Some("wxnotreal"));
    assert_eq!(shop(&base, &tok, "order/add", b).await["errcode"], 47001);

    // A real WeChat Pay order, then the component order with its prepay_id.
    let recv = Receiver::start(200, PAY_OK).await;
    let u = mch(
        &base,
        "pay/unifiedorder",
        order_fields("O2ORDER01", "1990", &format!("{}/pay", recv.url)),
        wxshop::pay::sign::SignType::Md5,
    )
    .await;
    let prepay = u["prepay_id"].clone();
    let mut b = order_add_body(now(), "O2ORDER01", openid, "tea", 1990, 0, Some(&prepay));
    b["stringify_64bits_number"] = json!(true);
    let added = shop(&base, &tok, "order/add", b).await;
    assert_eq!(added["errcode"], 0, "{added}");
    let order_id: u64 = added["data"]["order_id"].as_str().unwrap().parse().unwrap();
    assert!(order_id > (1u64 << 53));
    assert!(added["data"]["ticket"].is_string());

    // order/pay before payment: the transaction must exist.
    let pay = |txn: &str| {
        json!({"out_order_id": "O2ORDER01", "openid": openid, "action_type": 1,
        "transaction_id": txn, "pay_time": wxshop::time::beijing_datetime(now())})
    };
    assert_eq!(
        shop(&base, &tok, "order/pay", pay("4200000000000000")).await["errcode"],
        47001
    );
    let paid = post_json(
        format!("{base}/_control/pay"),
        json!({"out_trade_no": "O2ORDER01", "wait": true}),
    )
    .await;
    let txn = paid["transaction_id"].as_str().unwrap();
    assert_eq!(shop(&base, &tok, "order/pay", pay(txn)).await["errcode"], 0);
    assert_eq!(
        shop(&base, &tok, "order/pay", pay(txn)).await["errcode"],
        100_000,
        "only while status 10"
    );
    let got = shop(
        &base,
        &tok,
        "order/get",
        json!({"order_id": order_id, "openid": openid}),
    )
    .await;
    assert_eq!(got["order"]["status"], 20);
    assert_eq!(
        got["order"]["order_detail"]["pay_info"]["transaction_id"],
        json!(txn)
    );
    let other = shop(
        &base,
        &tok,
        "order/get",
        json!({"order_id": order_id, "openid": "someoneelse"}),
    )
    .await;
    assert_eq!(other["errcode"], 1_010_011);

    // Delivery: couriers from the list only; then receipt.
    let companies = shop(&base, &tok, "delivery/get_company_list", json!({})).await;
    let sf = companies["company_list"][0]["delivery_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let send = |id: &str| {
        json!({"out_order_id": "O2ORDER01", "openid": openid, "finish_all_delivery": 1,
        "delivery_list": [{"delivery_id": id, "waybill_id": "SF123"}],
        "ship_done_time": wxshop::time::beijing_datetime(now())})
    };
    assert_eq!(
        shop(&base, &tok, "delivery/send", send("NOPE")).await["errcode"],
        47001
    );
    assert_eq!(
        shop(&base, &tok, "delivery/send", send(&sf)).await["errcode"],
        0
    );
    assert_eq!(
        shop(&base, &tok, "delivery/send", send(&sf)).await["errcode"],
        100_000
    );
    let recv_body = json!({"out_order_id": "O2ORDER01", "openid": openid});
    assert_eq!(
        shop(&base, &tok, "delivery/recieve", recv_body.clone()).await["errcode"],
        0
    );
    let got = shop(&base, &tok, "order/get", recv_body).await;
    assert_eq!(got["order"]["status"], 100);

    // After-sale: more than paid is refused; refund-only accepted → 13, order fully refunded → 200.
    let add = |amt: i64| {
        json!({"out_order_id": "O2ORDER01", "openid": openid, "type": 1,
        "out_aftersale_id": "AS1", "orderamt": amt, "refund_reason": "not needed", "refund_reason_type": 2,
        "product_info": {"out_product_id": "tea", "out_sku_id": "tea-sku", "product_cnt": 1}})
    };
    assert_eq!(
        shop(&base, &tok, "ecaftersale/add", add(5000)).await["errcode"],
        47001
    );
    let a = shop(&base, &tok, "ecaftersale/add", add(1990)).await;
    assert_eq!(a["errcode"], 0, "{a}");
    let as_id = a["aftersale_id"].as_u64().unwrap();
    let again = shop(&base, &tok, "ecaftersale/add", add(1990)).await;
    assert_eq!(
        again["aftersale_id"].as_u64(),
        Some(as_id),
        "re-entrant on out_aftersale_id"
    );
    assert_eq!(
        shop(
            &base,
            &tok,
            "ecaftersale/acceptreturn",
            json!({"aftersale_id": as_id})
        )
        .await["errcode"],
        100_000
    );
    assert_eq!(
        shop(
            &base,
            &tok,
            "ecaftersale/acceptrefund",
            json!({"aftersale_id": as_id})
        )
        .await["errcode"],
        0
    );
    let g = shop(
        &base,
        &tok,
        "ecaftersale/get",
        json!({"out_aftersale_id": "AS1"}),
    )
    .await;
    assert_eq!(g["after_sales_order"]["status"], 13);
    let l = shop(
        &base,
        &tok,
        "ecaftersale/get_list",
        json!({"openid": openid, "offset": 0, "limit": 10}),
    )
    .await;
    assert_eq!(l["after_sales_orders"].as_array().unwrap().len(), 1);
    // WeChat lists its ids only, as strings.
    let wx_id = g["after_sales_order"]["aftersale_id"].as_u64().unwrap();
    assert_eq!(l["after_sales_orders"][0], json!(wx_id.to_string()));
    let got: Value = shop(
        &base,
        &tok,
        "order/get",
        json!({"out_order_id": "O2ORDER01", "openid": openid}),
    )
    .await;
    assert_eq!(got["order"]["status"], 200);
    assert_eq!(sb.sandbox.calls("shop/order/pay").len(), 3);
}

/// GIVEN component orders added with an `expire_time` 16 minutes ahead — one secondary-
/// merchant (fund_type=1), one paid through WeChat Pay (fund_type=0, its WeChat Pay order's
/// `time_expire` the same moment) — and one a day ahead, none paid WHEN the sandbox's clock
/// passes the first two's `expire_time` THEN WeChat cancels them by itself (unpaid timeout):
/// `order/get` reads 181 (`STATUS_EXPIRED`, UNVERIFIED: 250 is documented for the same), one
/// `open_product_order_cancel` is pushed for each, `getpaymentparams` answers 1010043,
/// `order/pay` and `order/close` 100000, and the user can pay neither (the cashier refuses the
/// WeChat Pay order past its `time_expire`). A minute before, all were payable; the one a day
/// ahead still is; one whose WeChat Pay order the user paid at the cashier before its expiry
/// is not cancelled, and the merchant's late `order/pay` is taken. (The sandbox used to leave
/// an expired order waiting for payment for ever, refusing only its payment parameters, and
/// pushed nothing.)
#[tokio::test]
async fn an_order_unpaid_past_its_expire_time_is_cancelled_and_pushed() {
    let recv = Receiver::start(200, PAY_OK).await;
    let sb = start(cfg()).await;
    let base = sb.base_url();
    let tok = token(&base).await;
    let openid = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o";
    listed(&sb, &tok, "tea", 1990).await;
    let now = sb.sandbox.now_ms();
    let soon = now + 16 * 60_000;
    let add = |body: Value| {
        let (base, tok) = (base.clone(), tok.clone());
        async move { shop(&base, &tok, "order/add", body).await }
    };
    let mut f1 = order_add_body(now, "EXP1", openid, "tea", 1990, 1, None);
    f1["expire_time"] = json!(soon / 1000);
    assert_eq!(add(f1).await["errcode"], 0);
    let mut wp = order_fields("EXP0000002", "1990", &format!("{}/pay", recv.url));
    wp.insert(
        "time_expire".into(),
        wxshop::time::beijing_compact(soon / 1000 * 1000),
    );
    let u = mch(
        &base,
        "pay/unifiedorder",
        wp,
        wxshop::pay::sign::SignType::Md5,
    )
    .await;
    assert_eq!(u["result_code"], "SUCCESS", "{u:?}");
    let mut f0 = order_add_body(
        now,
        "EXP0000002",
        openid,
        "tea",
        1990,
        0,
        Some(u["prepay_id"].as_str()),
    );
    f0["expire_time"] = json!(soon / 1000);
    assert_eq!(add(f0).await["errcode"], 0);
    // Paid at WeChat's cashier before its expiry, the merchant's `order/pay` not made yet.
    let mut wp = order_fields("EXP0000004", "1990", &format!("{}/pay", recv.url));
    wp.insert(
        "time_expire".into(),
        wxshop::time::beijing_compact(soon / 1000 * 1000),
    );
    let u = mch(
        &base,
        "pay/unifiedorder",
        wp,
        wxshop::pay::sign::SignType::Md5,
    )
    .await;
    let mut f4 = order_add_body(
        now,
        "EXP0000004",
        openid,
        "tea",
        1990,
        0,
        Some(u["prepay_id"].as_str()),
    );
    f4["expire_time"] = json!(soon / 1000);
    assert_eq!(add(f4).await["errcode"], 0);
    let paid = post_json(
        format!("{base}/_control/pay"),
        json!({"out_trade_no": "EXP0000004", "wait": true}),
    )
    .await;
    let txn = paid["transaction_id"].as_str().unwrap().to_owned();
    let mut later = order_add_body(now, "EXP3", openid, "tea", 1990, 1, None);
    later["expire_time"] = json!((now + 86_000_000) / 1000);
    assert_eq!(add(later).await["errcode"], 0);

    let status = |no: &'static str| {
        let (base, tok) = (base.clone(), tok.clone());
        async move {
            shop(
                &base,
                &tok,
                "order/get",
                json!({"out_order_id": no, "openid": openid}),
            )
            .await["order"]["status"]
                .clone()
        }
    };
    let params = |no: &'static str| {
        let (base, tok) = (base.clone(), tok.clone());
        async move {
            shop(
                &base,
                &tok,
                "order/getpaymentparams",
                json!({"out_order_id": no, "openid": openid}),
            )
            .await["errcode"]
                .clone()
        }
    };
    let cancels = || {
        sb.sandbox
            .pushed_events()
            .iter()
            .filter(|e| e["Event"] == "open_product_order_cancel")
            .map(|e| e["order_info"]["out_order_id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let clock = |ms: i64| post_json(format!("{base}/_control/clock"), json!({"advance_ms": ms}));

    // A minute before: payable.
    clock(15 * 60_000).await;
    for no in ["EXP1", "EXP0000002", "EXP3"] {
        assert_eq!(status(no).await, 10, "{no}");
    }
    assert_eq!(params("EXP1").await, 0);
    assert!(cancels().is_empty());

    // Past it: cancelled by WeChat, pushed once each; the later order untouched.
    clock(2 * 60_000).await;
    let mut pushed = cancels();
    pushed.sort();
    assert_eq!(pushed, ["EXP0000002", "EXP1"]);
    for no in ["EXP1", "EXP0000002"] {
        assert_eq!(status(no).await, 181, "{no}");
        let close = shop(
            &base,
            &tok,
            "order/close",
            json!({"out_order_id": no, "openid": openid}),
        )
        .await;
        assert_eq!(close["errcode"], 100_000, "{no}: {close}");
    }
    assert_eq!(status("EXP3").await, 10);
    assert_eq!(
        status("EXP0000004").await,
        10,
        "paid at the cashier: not cancelled"
    );
    let synced = shop(
        &base,
        &tok,
        "order/pay",
        json!({"out_order_id": "EXP0000004", "openid": openid, "action_type": 1,
               "transaction_id": txn, "pay_time": wxshop::time::beijing_datetime(sb.sandbox.now_ms())}),
    )
    .await;
    assert_eq!(
        synced["errcode"], 0,
        "the merchant's late sync is taken: {synced}"
    );
    assert_eq!(params("EXP1").await, 1_010_043);
    assert_eq!(params("EXP3").await, 0);
    let synced = shop(
        &base,
        &tok,
        "order/pay",
        json!({"out_order_id": "EXP0000002", "openid": openid, "action_type": 4}),
    )
    .await;
    assert_eq!(synced["errcode"], 100_000, "{synced}");
    let http = reqwest::Client::new();
    for body in [
        json!({"out_order_id": "EXP1"}),
        json!({"out_trade_no": "EXP0000002"}),
    ] {
        let r = http
            .post(format!("{base}/_control/pay"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 409, "{body}: the user cannot pay it");
        let v: Value = r.json().await.unwrap();
        assert!(v["error"].as_str().unwrap().contains("expire"), "{v}");
    }
    // Later requests cancel nothing twice.
    clock(60_000).await;
    assert_eq!(cancels().len(), 2);
}
