#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! The trading-component modes other than `always` (which every other e2e test runs), over
//! HTTP as the mini program and WeChat would: `off` (the template's default: WeChat Pay only,
//! nothing mirrored) and `scene` (the component only for scenes `shop/scene/check` matches).

use serde_json::{json, Value};
use std::time::Duration;
use wxlocal::gateway::Running;

#[path = "reliability_support.rs"]
mod support;
use support::{eventually, stack_with, Client};

fn address() -> Value {
    json!({"receiver_name": "A", "detailed_address": "1 Road", "tel_number": "13800000000"})
}

async fn buy(c: &Client, token: &str, scene: Option<u32>, address: Option<Value>) -> (u16, Value) {
    let mut body = json!({"items": [{"product_id": "tea", "sku_id": "tea-250g", "quantity": 1}]});
    if let Some(s) = scene {
        body["scene"] = json!(s);
    }
    if let Some(a) = address {
        body["address"] = a;
    }
    c.post("/fn/unifiedOrder", Some(token), &body).await
}

fn calls(r: &Running, api: &str) -> usize {
    r.sandbox.calls(api).len()
}

async fn status(c: &Client, token: &str, no: &str) -> Value {
    c.post("/fn/queryOrder", Some(token), &json!({"out_trade_no": no}))
        .await
        .1["order"]
        .clone()
}

/// `off`: a purchase and its refund run on WeChat Pay alone — no address needed, no
/// component order, no after-sale mirrored.
#[tokio::test]
async fn with_the_component_off_a_purchase_and_its_refund_use_wechat_pay_alone() {
    let r = stack_with(&[("WX_TRADING_COMPONENT", "off")]).await;
    let c = Client::new(&r);
    let (token, _) = c.login("olga").await;
    let (s, order) = buy(&c, &token, Some(1177), None).await;
    assert_eq!(s, 200, "{order}");
    assert!(order.get("orderInfo").is_none(), "{order}");
    assert!(order.get("ticket").is_none(), "{order}");
    let no = order["out_trade_no"].as_str().unwrap().to_owned();
    c.post("/sandbox/_control/pay", None, &json!({"out_trade_no": no}))
        .await;
    eventually("PAID", Duration::from_secs(10), || async {
        status(&c, &token, &no).await["status"] == "PAID"
    })
    .await;
    let (s, applied) = c
        .post(
            "/fn/aftersaleSync",
            Some(&token),
            &json!({"action": "apply", "out_trade_no": no, "reason": "changed my mind"}),
        )
        .await;
    assert_eq!(s, 200, "{applied}");
    let id = applied["aftersale"]["aftersale_id"].as_str().unwrap();
    let (s, v) = c
        .post(
            "/admin/aftersaleSync",
            Some(&c.admin_token),
            &json!({"action": "approve", "aftersale_id": id}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    eventually("REFUNDED", Duration::from_secs(10), || async {
        status(&c, &token, &no).await["status"] == "REFUNDED"
    })
    .await;
    for api in [
        "shop/scene/check",
        "shop/order/add",
        "shop/order/pay",
        "shop/ecaftersale/add",
    ] {
        assert_eq!(calls(&r, api), 0, "{api} called with the component off");
    }
    assert_eq!(calls(&r, "secapi/pay/refund"), 1);
}

/// `off`: an after-sale of an order with several lines needs no line named — nothing goes to
/// WeChat, which alone wants one — and is about the whole order, as before lines existed. A
/// line named is still checked and bounded by its value.
#[tokio::test]
async fn with_the_component_off_an_aftersale_may_be_about_the_whole_order() {
    let r = stack_with(&[("WX_TRADING_COMPONENT", "off")]).await;
    let c = Client::new(&r);
    c.listed_product("cup", "cup-1", 500).await;
    let (token, _) = c.login("oskar").await;
    let (s, order) = c
        .post(
            "/fn/unifiedOrder",
            Some(&token),
            &json!({"items": [{"product_id": "tea", "sku_id": "tea-250g", "quantity": 1},
                              {"product_id": "cup", "sku_id": "cup-1", "quantity": 2}]}),
        )
        .await;
    assert_eq!(s, 200, "{order}");
    let no = order["out_trade_no"].as_str().unwrap().to_owned();
    c.post("/sandbox/_control/pay", None, &json!({"out_trade_no": no}))
        .await;
    eventually("PAID", Duration::from_secs(10), || async {
        status(&c, &token, &no).await["status"] == "PAID"
    })
    .await;
    let apply = |extra: Value| {
        let mut body = json!({"action": "apply", "out_trade_no": no});
        if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
            b.extend(e);
        }
        let c = &c;
        let token = token.clone();
        async move { c.post("/fn/aftersaleSync", Some(&token), &body).await }
    };
    let (s, v) = apply(json!({"product_id": "cup", "sku_id": "cup-1", "amount": 1001})).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (400, Some("AMOUNT_OVER_LINE")),
        "{v}"
    );
    let (s, v) = apply(json!({"reason": "all of it"})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["aftersale"]["amount"], 1990 + 2 * 500, "{v}");
    assert!(v["aftersale"].get("product_id").is_none(), "{v}");
    assert_eq!(calls(&r, "shop/ecaftersale/add"), 0);
}

/// `scene`: a scene `shop/scene/check` matches goes through the component (its ticket and
/// `orderInfo` for `wx.requestOrderPayment`), another does not. Such an order without an
/// address is refused before WeChat Pay opens anything. A scene check WeChat refuses for good
/// (no permission, the API retired) is the shop's problem, not one to retry (502); a busy one
/// is (503).
#[tokio::test]
async fn with_scene_check_only_matching_scenes_use_the_component() {
    let r = stack_with(&[("WX_TRADING_COMPONENT", "scene")]).await;
    let c = Client::new(&r);
    let (token, _) = c.login("sami").await;

    let (s, plain) = buy(&c, &token, Some(1001), None).await;
    assert_eq!(s, 200, "{plain}");
    assert!(plain.get("orderInfo").is_none(), "{plain}");
    assert_eq!(calls(&r, "shop/order/add"), 0);

    let (s, channels) = buy(&c, &token, Some(1177), Some(address())).await;
    assert_eq!(s, 200, "{channels}");
    assert!(channels["ticket"].is_string(), "{channels}");
    assert_eq!(
        channels["orderInfo"]["out_order_id"], channels["out_trade_no"],
        "{channels}"
    );
    assert_eq!(calls(&r, "shop/order/add"), 1);

    let prepays = calls(&r, "pay/unifiedorder");
    let (s, v) = buy(&c, &token, Some(1177), None).await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["code"], "ADDRESS_REQUIRED", "{v}");
    assert_eq!(
        calls(&r, "pay/unifiedorder"),
        prepays,
        "WeChat Pay was asked to open an order the component would refuse"
    );

    for (errcode, status, code) in [
        (48001, 502, "SCENE_CHECK_REFUSED"),
        (-1, 503, "WECHAT_UNAVAILABLE"),
    ] {
        c.post(
            "/sandbox/_control/faults",
            None,
            &json!({"path": "shop/scene/check", "mode": "errcode", "errcode": errcode, "count": 1}),
        )
        .await;
        let (s, v) = buy(&c, &token, Some(1177), Some(address())).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (status, Some(code)),
            "{errcode}: {v}"
        );
    }
}

/// `scene` with the mini program's pre-order check: `wx.checkBeforeAddOrder`'s `requireOrder`,
/// sent as `require_order`, decides whether the order goes through the component, and the
/// deprecated `shop/scene/check` is not asked — so a scene check WeChat has retired does not
/// stop a shop whose client sends the verdict. A verdict that needs the component and no
/// address is refused before WeChat Pay opens anything; a verdict other than 0 or 1 is
/// refused as such. (Without the verdict, the scene check decides: the test above.)
#[tokio::test]
async fn with_scene_check_the_pre_order_checks_verdict_decides() {
    let r = stack_with(&[("WX_TRADING_COMPONENT", "scene")]).await;
    let c = Client::new(&r);
    let (token, _) = c.login("vera").await;
    // Retired for good: any call to it would fail the order (502).
    c.post(
        "/sandbox/_control/faults",
        None,
        &json!({"path": "shop/scene/check", "mode": "errcode", "errcode": 48001, "count": 1000}),
    )
    .await;
    let order = |scene: u32, require: Value, address: Option<Value>| {
        let mut body = json!({"items": [{"product_id": "tea", "sku_id": "tea-250g", "quantity": 1}],
                              "scene": scene, "require_order": require});
        if let Some(a) = address {
            body["address"] = a;
        }
        let (c, token) = (&c, &token);
        async move { c.post("/fn/unifiedOrder", Some(token), &body).await }
    };

    // 1001 is a scene the sandbox's scene check would not match: the verdict wins.
    let (s, channels) = order(1001, json!(1), Some(address())).await;
    assert_eq!(s, 200, "{channels}");
    assert!(channels["ticket"].is_string(), "{channels}");
    assert_eq!(
        channels["orderInfo"]["out_order_id"], channels["out_trade_no"],
        "{channels}"
    );
    assert_eq!(calls(&r, "shop/order/add"), 1);

    // 1177 is one it would match: the verdict says no order is needed.
    let (s, plain) = order(1177, json!(0), None).await;
    assert_eq!(s, 200, "{plain}");
    assert!(plain.get("orderInfo").is_none(), "{plain}");
    assert_eq!(calls(&r, "shop/order/add"), 1);

    let prepays = calls(&r, "pay/unifiedorder");
    let (s, v) = order(1001, json!(1), None).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (400, Some("ADDRESS_REQUIRED")),
        "{v}"
    );
    let (s, v) = order(1177, json!(2), Some(address())).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (400, Some("BAD_REQUIRE_ORDER")),
        "{v}"
    );
    assert_eq!(
        calls(&r, "pay/unifiedorder"),
        prepays,
        "WeChat Pay was asked to open an order that was refused"
    );
    assert_eq!(calls(&r, "shop/scene/check"), 0);
}

/// `always`: an order without an address is refused before anything is made — no order, no
/// stock taken, nothing asked of WeChat.
#[tokio::test]
async fn with_the_component_always_on_no_address_makes_nothing() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (token, _) = c.login("ali").await;
    let (s, v) = buy(&c, &token, None, None).await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["code"], "ADDRESS_REQUIRED", "{v}");
    assert_eq!(calls(&r, "pay/unifiedorder"), 0);
    let (_, list) = c.post("/fn/queryOrder", Some(&token), &json!({})).await;
    assert_eq!(list["orders"], json!([]), "{list}");
}

/// The mini program's pre-order check (`wx.checkBeforeAddOrder`) gives a `traceId`, which
/// attributes Channels sales: `unifiedOrder` passes it to `shop/order/add`. A malformed one is
/// refused before anything is made.
#[tokio::test]
async fn the_pre_order_checks_trace_id_reaches_the_component_order() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (token, _) = c.login("tina").await;
    let mut body = json!({"items": [{"product_id": "tea", "sku_id": "tea-250g", "quantity": 1}],
                          "address": address(), "trace_id": "tr-3f9a-77"});
    let (s, v) = c.post("/fn/unifiedOrder", Some(&token), &body).await;
    assert_eq!(s, 200, "{v}");
    let added = r.sandbox.calls("shop/order/add");
    assert_eq!(added.len(), 1);
    assert_eq!(added[0]["trace_id"], "tr-3f9a-77", "{:?}", added[0]);
    body["trace_id"] = json!("not a trace id");
    let (s, v) = c.post("/fn/unifiedOrder", Some(&token), &body).await;
    assert_eq!((s, v["code"].as_str()), (400, Some("BAD_TRACE_ID")), "{v}");
    assert_eq!(r.sandbox.calls("shop/order/add").len(), 1);
}

/// `login` says which orders the shop makes, so the mini program can hold them against what
/// `wx.checkBeforeAddOrder` says the user's scene needs before it orders.
#[tokio::test]
async fn login_says_which_orders_the_shop_makes() {
    /// Environment overrides → the login's `fund_type` and `trading_component`.
    type Mode = (&'static [(&'static str, &'static str)], u64, &'static str);
    let modes: [Mode; 4] = [
        (&[], 0, "always"), // wxlocal's default
        (&[("WX_TRADING_COMPONENT", "off")], 0, "off"),
        (&[("WX_TRADING_COMPONENT", "scene")], 0, "scene"),
        (&[("WX_FUND_TYPE", "1")], 1, "always"),
    ];
    for (vars, fund_type, component) in modes {
        let r = stack_with(vars).await;
        let c = Client::new(&r);
        let (_, code) = c
            .post("/sandbox/_control/login", None, &json!({"user": "lena"}))
            .await;
        let (s, v) = c
            .post("/fn/login", None, &json!({"code": code["code"]}))
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            (v["fund_type"].as_u64(), v["trading_component"].as_str()),
            (Some(fund_type), Some(component)),
            "{vars:?}: {v}"
        );
        // The server's clock at issue, which the client judges `expires_at` by (a phone clock
        // hours ahead would otherwise find every token expired).
        let issued = v["issued_at"].as_i64().expect("issued_at");
        assert!((issued - r.app.clock.now_secs()).abs() <= 5, "{v}");
        assert_eq!(
            v["expires_at"].as_i64(),
            Some(issued + r.app.config.session_ttl_secs),
            "{v}"
        );
    }
}
