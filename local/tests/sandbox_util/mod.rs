//! Shared helpers for the sandbox tests: start the sandbox alone on 127.0.0.1:0, a tiny
//! receiver for notifications and pushes, and v2 request signing.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use axum::body::Bytes;
use axum::http::{StatusCode, Uri};
use axum::response::IntoResponse;
use axum::Router;
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wxlocal::sandbox::{bind, Running, SandboxConfig};
use wxshop::pay::sign::{sign_in_place, Fields, SignType};
use wxshop::pay::xml;

pub const APPID: &str = "wxd930ea5d5a258f4f";
pub const SECRET: &str = "test-appsecret-0123456789abcdef";
pub const MCH_ID: &str = "10000100";
pub const KEY: &str = "192006250b4c09247ec02edce69f6a2d";
pub const PUSH_TOKEN: &str = "pushtoken123";
pub const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

pub fn cfg() -> SandboxConfig {
    SandboxConfig {
        appid: APPID.into(),
        appsecret: SECRET.into(),
        mch_id: MCH_ID.into(),
        api_key: KEY.into(),
        sub_mch_id: None,
        sub_appid: None,
        push_url: None,
        push_token: PUSH_TOKEN.into(),
        push_aes_key: None,
        time_scale: 0.001,
        auto_audit: true,
        refund_interval_ms: wxlocal::sandbox::mch::REFUND_INTERVAL_MS,
        refund_notify_url: None,
        log_cap: wxlocal::sandbox::LOG_CAP,
    }
}

pub async fn start(cfg: SandboxConfig) -> Running {
    bind("127.0.0.1:0".parse().unwrap(), cfg).await.unwrap()
}

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Got {
    pub path_query: String,
    pub body: Vec<u8>,
}

struct RecvState {
    got: Vec<Got>,
    plan: VecDeque<(u16, String)>,
    default: (u16, String),
}

/// A tiny HTTP server standing in for our callbacks: records every request and answers from
/// a plan (then the default).
#[derive(Clone)]
pub struct Receiver {
    inner: Arc<Mutex<RecvState>>,
    pub url: String,
}

pub const PAY_OK: &str =
    "<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>";
pub const PAY_FAIL: &str =
    "<xml><return_code><![CDATA[FAIL]]></return_code><return_msg><![CDATA[busy]]></return_msg></xml>";

impl Receiver {
    pub async fn start(default_status: u16, default_body: &str) -> Receiver {
        let inner = Arc::new(Mutex::new(RecvState {
            got: Vec::new(),
            plan: VecDeque::new(),
            default: (default_status, default_body.to_owned()),
        }));
        let st = inner.clone();
        let app = Router::new().fallback(move |uri: Uri, body: Bytes| {
            let st = st.clone();
            async move {
                let (status, body_out) = {
                    let mut s = st.lock().unwrap();
                    s.got.push(Got {
                        path_query: uri
                            .path_and_query()
                            .map(|p| p.to_string())
                            .unwrap_or_default(),
                        body: body.to_vec(),
                    });
                    s.plan.pop_front().unwrap_or_else(|| s.default.clone())
                };
                (StatusCode::from_u16(status).unwrap(), body_out).into_response()
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            inner,
            url: format!("http://{addr}"),
        }
    }

    /// The next replies, in order, before the default applies again.
    pub fn plan(&self, replies: &[(u16, &str)]) {
        let mut s = self.inner.lock().unwrap();
        s.plan = replies.iter().map(|(c, b)| (*c, (*b).to_owned())).collect();
    }

    pub fn got(&self) -> Vec<Got> {
        self.inner.lock().unwrap().got.clone()
    }
}

/// Polls `f` every 5 ms for at most `ms`; panics with `what` if it never holds.
pub async fn wait_for<F: FnMut() -> bool>(what: &str, ms: u64, mut f: F) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
    while tokio::time::Instant::now() < deadline {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for {what}");
}

pub fn fields(pairs: &[(&str, &str)]) -> Fields {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Adds appid, mch_id, nonce_str and the signature; returns the XML body.
pub fn signed(mut f: Fields, st: SignType) -> String {
    f.entry("appid".into()).or_insert(APPID.into());
    f.entry("mch_id".into()).or_insert(MCH_ID.into());
    f.entry("nonce_str".into())
        .or_insert("5K8264ILTKCH16CQ2502SI8ZNMTM67VS".into());
    sign_in_place(&mut f, KEY, st);
    xml::encode(&f)
}

pub async fn post_raw(url: &str, body: String) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(url)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

/// POSTs a signed merchant request; returns the reply's fields.
pub async fn mch(base: &str, api: &str, f: Fields, st: SignType) -> Fields {
    let (_, body) = post_raw(&format!("{base}/mch/{api}"), signed(f, st)).await;
    xml::decode(body.as_bytes()).unwrap()
}

pub async fn post_json(url: impl reqwest::IntoUrl, body: Value) -> Value {
    reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

pub async fn get_json(url: impl reqwest::IntoUrl) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

/// A valid access token from `stable_token`.
pub async fn token(base: &str) -> String {
    let v = post_json(
        &format!("{base}/api/cgi-bin/stable_token"),
        serde_json::json!({"grant_type": "client_credential", "appid": APPID, "secret": SECRET}),
    )
    .await;
    v["access_token"].as_str().unwrap().to_owned()
}

/// POSTs `shop/{api}` with a token.
pub async fn shop(base: &str, tok: &str, api: &str, body: Value) -> Value {
    post_json(&format!("{base}/api/shop/{api}?access_token={tok}"), body).await
}

/// The unifiedorder fields of a typical mini-program order.
pub fn order_fields(out_trade_no: &str, total_fee: &str, notify_url: &str) -> Fields {
    fields(&[
        ("body", "wxshop-test"),
        ("out_trade_no", out_trade_no),
        ("total_fee", total_fee),
        ("spbill_create_ip", "127.0.0.1"),
        ("notify_url", notify_url),
        ("trade_type", "JSAPI"),
        ("openid", "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"),
    ])
}

/// A sellable product: added, (auto-)approved, listed. Returns the spu/add reply.
pub fn spu(out_product_id: &str, price: i64) -> Value {
    serde_json::json!({
        "out_product_id": out_product_id,
        "title": format!("Product {out_product_id}"),
        "path": format!("pages/product?id={out_product_id}"),
        "head_img": ["https://mmecimage.cn/p/wxtest/head.jpg"],
        "third_cat_id": 6153,
        "brand_id": 2100000000u64,
        "skus": [{
            "out_product_id": out_product_id,
            "out_sku_id": format!("{out_product_id}-sku"),
            "thumb_img": "https://mmecimage.cn/p/wxtest/thumb.jpg",
            "sale_price": price, "market_price": price + 100, "stock_num": 100,
            "sku_attrs": [{"attr_key": "size", "attr_value": "250g"}]
        }]
    })
}

/// An `order/add` body for one unit of `out_product_id` at `price`.
pub fn order_add_body(
    now_ms: i64,
    out_order_id: &str,
    openid: &str,
    out_product_id: &str,
    price: i64,
    fund_type: i64,
    prepay_id: Option<&str>,
) -> Value {
    let mut detail = serde_json::json!({
        "product_infos": [{
            "out_product_id": out_product_id, "out_sku_id": format!("{out_product_id}-sku"),
            "product_cnt": 1, "sale_price": price, "sku_real_price": price,
            "path": "pages/product", "title": "Product", "head_img": "https://mmecimage.cn/p/x.jpg"
        }],
        "price_info": {"order_price": price, "freight": 0}
    });
    if fund_type == 0 {
        detail["pay_info"] = serde_json::json!({
            "pay_method_type": 0,
            "prepay_id": prepay_id,
            "prepay_time": wxshop::time::beijing_datetime(now_ms),
        });
    }
    serde_json::json!({
        "create_time": wxshop::time::beijing_datetime(now_ms),
        "out_order_id": out_order_id,
        "openid": openid,
        "path": format!("pages/order?id={out_order_id}"),
        "fund_type": fund_type,
        "order_detail": detail,
        "delivery_detail": {"delivery_type": 1},
        "address_info": {"receiver_name": "Alice", "detailed_address": "1 Road", "tel_number": "13800000000"}
    })
}
