//! `WxClient` against a fake api.weixin.qq.com served by axum on 127.0.0.1:0.
//!
//! The fake hands out tokens like WeChat's `stable_token` (normal mode returns the current
//! token, force mode a new one), rejects unknown tokens with 42001, and answers each API path
//! with a canned or scripted reply while recording path, query and body.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wxshop::config::TokenMode;
use wxshop::domain::Fen;
use wxshop::shop::aftersale::*;
use wxshop::shop::catalog::*;
use wxshop::shop::funds::*;
use wxshop::shop::order::*;
use wxshop::shop::{
    AddressInfo, AfterSaleKey, OrderKey, ProductKey, WxClient, WxClientConfig, WxError, WxErrorKind,
};
use wxshop::store::sqlite::SqliteStore;
use wxshop::store::{kv, DynStore};
use wxshop::time::Clock;

const APPID: &str = "wxtestappid";
const SECRET: &str = "test-app-secret-value";
const BIG_ORDER_ID: u64 = 3_302_968_738_502_279_424;

// ------------------------------------------------------------------------ the fake

#[derive(Clone, Debug)]
struct Recorded {
    path: String,
    query: HashMap<String, String>,
    content_type: String,
    body: Bytes,
}

impl Recorded {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    fn token(&self) -> &str {
        self.query
            .get("access_token")
            .map(String::as_str)
            .unwrap_or("")
    }
}

struct Reply {
    status: u16,
    body: String,
}

#[derive(Default)]
struct FakeState {
    stable_hits: usize,
    stable_bodies: Vec<Value>,
    classic_hits: usize,
    classic_queries: Vec<HashMap<String, String>>,
    next_token: usize,
    current: Option<String>,
    valid: HashSet<String>,
    expires_in: i64,
    token_delay_ms: u64,
    reject_all: bool,
    log: Vec<Recorded>,
    scripted: HashMap<String, VecDeque<Reply>>,
    canned: HashMap<String, Value>,
    delay_ms: HashMap<String, u64>,
}

impl FakeState {
    fn new_token(&mut self) -> String {
        self.next_token += 1;
        let t = format!("TOKEN-{}", self.next_token);
        self.valid.insert(t.clone());
        self.current = Some(t.clone());
        t
    }
}

type Shared = Arc<Mutex<FakeState>>;

#[derive(Clone)]
struct Fake {
    base: String,
    state: Shared,
}

impl Fake {
    async fn start() -> Fake {
        let state: Shared = Arc::new(Mutex::new(FakeState {
            expires_in: 7200,
            ..Default::default()
        }));
        let app = Router::new()
            .route("/cgi-bin/stable_token", post(stable_token))
            .route("/cgi-bin/token", get(classic_token))
            .route("/sns/jscode2session", get(jscode2session))
            .fallback(api)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Fake {
            base: format!("http://{addr}"),
            state,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut FakeState) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }

    fn canned(&self, path: &str, v: Value) {
        self.with(|s| s.canned.insert(path.to_owned(), v));
    }

    fn script(&self, path: &str, status: u16, body: &str) {
        self.with(|s| {
            s.scripted
                .entry(path.to_owned())
                .or_default()
                .push_back(Reply {
                    status,
                    body: body.to_owned(),
                })
        });
    }

    fn stable_hits(&self) -> usize {
        self.with(|s| s.stable_hits)
    }

    fn calls(&self, path: &str) -> Vec<Recorded> {
        self.with(|s| s.log.iter().filter(|r| r.path == path).cloned().collect())
    }

    fn last(&self, path: &str) -> Recorded {
        self.calls(path)
            .pop()
            .unwrap_or_else(|| panic!("{path} was never called"))
    }

    /// WeChat expired the current token: it is refused and stable_token issues a new one.
    fn expire_current(&self) {
        self.with(|s| {
            if let Some(t) = s.current.take() {
                s.valid.remove(&t);
            }
        });
    }

    /// The current token is refused, but stable_token (normal mode) still hands it out.
    fn poison_current(&self) {
        self.with(|s| {
            if let Some(t) = s.current.clone() {
                s.valid.remove(&t);
            }
        });
    }

    fn config(&self, mode: TokenMode) -> WxClientConfig {
        WxClientConfig {
            api_base_url: format!("{}/", self.base),
            appid: APPID.into(),
            secret: SecretString::from(SECRET.to_owned()),
            token_mode: mode,
            timeout: Duration::from_millis(1500),
        }
    }

    fn client(&self, store: DynStore, clock: Clock) -> WxClient {
        WxClient::new_with_clock(self.config(TokenMode::Stable), store, clock).unwrap()
    }
}

async fn stable_token(State(s): State<Shared>, body: Bytes) -> Response {
    let (delay, reply) = {
        let mut st = s.lock().unwrap();
        st.stable_hits += 1;
        let v: Value = serde_json::from_slice(&body).unwrap();
        st.stable_bodies.push(v.clone());
        if v["secret"] != SECRET || v["appid"] != APPID || v["grant_type"] != "client_credential" {
            return axum::Json(json!({"errcode": 40001, "errmsg": "invalid credential"}))
                .into_response();
        }
        let force = v["force_refresh"].as_bool().unwrap_or(false);
        let tok = match (&st.current, force) {
            (Some(t), false) => t.clone(),
            _ => st.new_token(),
        };
        (
            st.token_delay_ms,
            json!({"access_token": tok, "expires_in": st.expires_in}),
        )
    };
    tokio::time::sleep(Duration::from_millis(delay)).await;
    axum::Json(reply).into_response()
}

async fn classic_token(State(s): State<Shared>, uri: Uri) -> Response {
    let mut st = s.lock().unwrap();
    st.classic_hits += 1;
    let q = query(&uri);
    st.classic_queries.push(q.clone());
    if q.get("secret").map(String::as_str) != Some(SECRET) {
        return axum::Json(json!({"errcode": 40001, "errmsg": "invalid credential"}))
            .into_response();
    }
    let tok = st.new_token();
    axum::Json(json!({"access_token": tok, "expires_in": st.expires_in})).into_response()
}

async fn jscode2session(uri: Uri) -> Response {
    let q = query(&uri);
    let ok = q.get("appid").map(String::as_str) == Some(APPID)
        && q.get("secret").map(String::as_str) == Some(SECRET)
        && q.get("grant_type").map(String::as_str) == Some("authorization_code");
    if !ok {
        return axum::Json(json!({"errcode": 40013, "errmsg": "invalid appid"})).into_response();
    }
    match q.get("js_code").map(String::as_str) {
        Some("good-code") => axum::Json(json!({
            "openid": "oUpF8uMEb4qRXf22hE3X68TekukE",
            "session_key": "tiihtNczf5v6AKRyjwEUhQ==",
            "unionid": "oGZUI0egBJY1zhBYw2KhdUfwVJJE"
        }))
        .into_response(),
        _ => axum::Json(json!({"errcode": 40029, "errmsg": "invalid code, rid: 64f0-1a2b"}))
            .into_response(),
    }
}

async fn api(State(s): State<Shared>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path().trim_start_matches('/').to_owned();
    let q = query(&uri);
    let (delay, reply) = {
        let mut st = s.lock().unwrap();
        st.log.push(Recorded {
            path: path.clone(),
            query: q.clone(),
            content_type: headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned(),
            body,
        });
        let token_ok = q.get("access_token").is_some_and(|t| st.valid.contains(t));
        let reply = if st.reject_all || !token_ok {
            Reply {
                status: 200,
                body: json!({"errcode": 42001, "errmsg": "access_token expired rid: 6519ab12-1e6a1f1b"}).to_string(),
            }
        } else if let Some(r) = st.scripted.get_mut(&path).and_then(VecDeque::pop_front) {
            r
        } else if let Some(v) = st.canned.get(&path) {
            Reply {
                status: 200,
                body: v.to_string(),
            }
        } else {
            Reply {
                status: 200,
                body: json!({"errcode": 0, "errmsg": "ok"}).to_string(),
            }
        };
        (st.delay_ms.get(&path).copied().unwrap_or(0), reply)
    };
    tokio::time::sleep(Duration::from_millis(delay)).await;
    (
        StatusCode::from_u16(reply.status).unwrap(),
        [("content-type", "application/json")],
        reply.body,
    )
        .into_response()
}

fn query(uri: &Uri) -> HashMap<String, String> {
    url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

fn store() -> DynStore {
    Arc::new(SqliteStore::memory().unwrap())
}

async fn setup() -> (Fake, WxClient, Clock) {
    let fake = Fake::start().await;
    let clock = Clock::default();
    let client = fake.client(store(), clock.clone());
    (fake, client, clock)
}

// ------------------------------------------------------------------------ token

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_callers_share_one_token_fetch() {
    let (fake, client, _) = setup().await;
    fake.with(|s| s.token_delay_ms = 150);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { c.register_check().await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(fake.stable_hits(), 1);
    let calls = fake.calls("shop/register/check");
    assert_eq!(calls.len(), 20);
    assert!(calls.iter().all(|c| c.token() == "TOKEN-1"));
    let body = fake.with(|s| s.stable_bodies[0].clone());
    assert_eq!(
        body,
        json!({"grant_type": "client_credential", "appid": APPID, "secret": SECRET, "force_refresh": false})
    );
}

#[tokio::test]
async fn token_is_shared_through_the_store_across_containers() {
    let fake = Fake::start().await;
    let shared = store();
    let a = fake.client(shared.clone(), Clock::default());
    let b = fake.client(shared.clone(), Clock::default());
    a.register_apply().await.unwrap();
    b.register_apply().await.unwrap();
    assert_eq!(
        fake.stable_hits(),
        1,
        "the second container adopts the stored token"
    );
    let entry = kv::get(shared.as_ref(), &format!("access_token:{APPID}"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(entry.value, "TOKEN-1");
    assert!(entry.expires_at > Clock::default().now_secs() + 7000);
    assert_eq!(fake.last("shop/register/apply").token(), "TOKEN-1");
}

#[tokio::test]
async fn token_is_refreshed_five_minutes_before_expiry() {
    let (fake, client, clock) = setup().await;
    client.register_apply().await.unwrap();
    clock.advance(6_800 * 1000); // 400 s left: still used
    client.register_apply().await.unwrap();
    assert_eq!(fake.stable_hits(), 1);
    clock.advance(150 * 1000); // 250 s left: refresh ahead
    client.register_apply().await.unwrap();
    assert_eq!(fake.stable_hits(), 2);
}

#[tokio::test]
async fn expired_token_mid_call_refreshes_and_retries_once() {
    let (fake, client, _) = setup().await;
    client.register_apply().await.unwrap();
    fake.expire_current();
    client.register_apply().await.unwrap();
    let calls = fake.calls("shop/register/apply");
    let tokens: Vec<_> = calls.iter().map(|c| c.token().to_owned()).collect();
    assert_eq!(tokens, ["TOKEN-1", "TOKEN-1", "TOKEN-2"]);
    assert_eq!(fake.stable_hits(), 2);
}

#[tokio::test]
async fn a_refresh_in_one_container_reaches_the_others_through_the_store() {
    let fake = Fake::start().await;
    let shared = store();
    let a = fake.client(shared.clone(), Clock::default());
    let b = fake.client(shared.clone(), Clock::default());
    a.register_apply().await.unwrap();
    b.register_apply().await.unwrap();
    fake.expire_current();
    a.register_apply().await.unwrap(); // 42001 → refresh → TOKEN-2 published
    b.register_apply().await.unwrap(); // 42001 with TOKEN-1 → adopts TOKEN-2 from the store
    assert_eq!(fake.stable_hits(), 2);
    let tokens: Vec<_> = fake
        .calls("shop/register/apply")
        .iter()
        .map(|c| c.token().to_owned())
        .collect();
    assert_eq!(
        tokens,
        ["TOKEN-1", "TOKEN-1", "TOKEN-1", "TOKEN-2", "TOKEN-1", "TOKEN-2"]
    );
}

#[tokio::test]
async fn rejected_token_that_stable_token_returns_again_is_force_refreshed() {
    let (fake, client, _) = setup().await;
    client.register_apply().await.unwrap();
    fake.poison_current(); // 40001-like: refused, but normal mode still returns it
    client.register_apply().await.unwrap();
    let bodies = fake.with(|s| s.stable_bodies.clone());
    let force: Vec<_> = bodies
        .iter()
        .map(|b| b["force_refresh"].as_bool().unwrap())
        .collect();
    assert_eq!(force, [false, false, true]);
    assert_eq!(fake.last("shop/register/apply").token(), "TOKEN-2");
}

#[tokio::test]
async fn token_errors_are_retried_only_once() {
    let (fake, client, _) = setup().await;
    fake.with(|s| s.reject_all = true);
    let err = client.register_apply().await.unwrap_err();
    assert_eq!(err.errcode(), Some(42001));
    assert_eq!(err.kind(), WxErrorKind::TokenInvalid);
    assert_eq!(err.rid(), Some("6519ab12-1e6a1f1b"));
    assert_eq!(fake.calls("shop/register/apply").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_hit_by_42001_share_one_refresh() {
    let (fake, client, _) = setup().await;
    client.register_apply().await.unwrap();
    fake.expire_current();
    fake.with(|s| s.token_delay_ms = 100);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { c.register_check().await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(
        fake.stable_hits(),
        2,
        "one initial fetch, one shared refresh"
    );
    let ok = fake
        .calls("shop/register/check")
        .iter()
        .filter(|c| c.token() == "TOKEN-2")
        .count();
    assert_eq!(ok, 20);
}

#[tokio::test]
async fn classic_mode_uses_cgi_bin_token() {
    let fake = Fake::start().await;
    let client =
        WxClient::new_with_clock(fake.config(TokenMode::Classic), store(), Clock::default())
            .unwrap();
    client.register_apply().await.unwrap();
    client.register_apply().await.unwrap();
    let (hits, q) = fake.with(|s| (s.classic_hits, s.classic_queries[0].clone()));
    assert_eq!(hits, 1);
    assert_eq!(fake.stable_hits(), 0);
    assert_eq!(q["grant_type"], "client_credential");
    assert_eq!(q["appid"], APPID);
    assert_eq!(q["secret"], SECRET);
}

#[tokio::test]
async fn wrong_secret_is_a_permanent_error_from_the_token_endpoint() {
    let fake = Fake::start().await;
    let mut cfg = fake.config(TokenMode::Stable);
    cfg.secret = SecretString::from("wrong".to_owned());
    let client = WxClient::new(cfg, store()).unwrap();
    let err = client.register_apply().await.unwrap_err();
    assert!(
        matches!(&err, WxError::Api { errcode: 40001, path, .. } if path == "cgi-bin/stable_token")
    );
    assert!(fake.calls("shop/register/apply").is_empty());
    assert!(!err.to_string().contains("wrong"));
}

// ------------------------------------------------------------------------ error classes

#[tokio::test]
async fn quota_is_typed_with_back_off_and_no_token_refresh() {
    let (fake, client, _) = setup().await;
    fake.script(
        "shop/order/get",
        200,
        r#"{"errcode":45009,"errmsg":"reach max api daily quota limit rid: 64f1-2b3c-4d5e"}"#,
    );
    let err = client
        .order_get(&OrderKey::Out("o1".into()), "oid")
        .await
        .unwrap_err();
    match &err {
        WxError::Api {
            errcode, rid, path, ..
        } => {
            assert_eq!(*errcode, 45009);
            assert_eq!(rid.as_deref(), Some("64f1-2b3c-4d5e"));
            assert_eq!(path, "shop/order/get");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.kind(), WxErrorKind::QuotaExceeded);
    assert!(err.is_retryable());
    assert!(err.retry_after().unwrap() >= Duration::from_secs(60));
    assert_eq!(fake.stable_hits(), 1);
    assert_eq!(fake.calls("shop/order/get").len(), 1, "no automatic retry");
}

#[tokio::test]
async fn busy_http_5xx_and_business_errors_are_classed() {
    let (fake, client, _) = setup().await;
    fake.script(
        "shop/order/close",
        200,
        r#"{"errcode":-1,"errmsg":"system error"}"#,
    );
    let busy = client
        .order_close(&OrderKey::Id(BIG_ORDER_ID), "oid")
        .await
        .unwrap_err();
    assert_eq!(busy.kind(), WxErrorKind::Busy);
    assert!(busy.is_retryable() && busy.retry_after().is_some());

    fake.script("shop/order/close", 502, "<html>bad gateway</html>");
    let http = client
        .order_close(&OrderKey::Id(1), "oid")
        .await
        .unwrap_err();
    assert!(matches!(http, WxError::Http { status: 502, .. }));
    assert!(http.is_retryable());

    fake.script(
        "shop/order/close",
        200,
        r#"{"errcode":1010005,"errmsg":"price_info字段异常"}"#,
    );
    let perm = client
        .order_close(&OrderKey::Id(1), "oid")
        .await
        .unwrap_err();
    assert_eq!(perm.kind(), WxErrorKind::Permanent);
    assert!(!perm.is_retryable());
    assert_eq!(perm.retry_after(), None);

    fake.script("shop/order/close", 200, "not json");
    let dec = client
        .order_close(&OrderKey::Id(1), "oid")
        .await
        .unwrap_err();
    assert!(matches!(dec, WxError::Decode { .. }), "{dec:?}");

    // errcode wins over a non-2xx status.
    fake.script("shop/order/close", 500, r#"{"errcode":-1,"errmsg":"busy"}"#);
    let e = client
        .order_close(&OrderKey::Id(1), "oid")
        .await
        .unwrap_err();
    assert_eq!(e.errcode(), Some(-1));
}

#[tokio::test]
async fn timeouts_and_connect_failures_are_retryable_and_leak_no_secrets() {
    let (fake, client, _) = setup().await;
    client.register_apply().await.unwrap();
    fake.with(|s| s.delay_ms.insert("shop/order/get".into(), 3000));
    let err = client.order_get(&OrderKey::Id(1), "oid").await.unwrap_err();
    assert!(matches!(err, WxError::Timeout { .. }), "{err:?}");
    assert!(err.is_retryable());
    let text = format!("{err} {err:?}");
    assert!(
        !text.contains("TOKEN-1") && !text.contains("access_token="),
        "{text}"
    );

    // Nothing listens on this port.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = dead.local_addr().unwrap();
    drop(dead);
    let mut cfg = fake.config(TokenMode::Stable);
    cfg.api_base_url = format!("http://{addr}");
    let down = WxClient::new(cfg, store()).unwrap();
    let err = down.register_apply().await.unwrap_err();
    assert_eq!(err.kind(), WxErrorKind::Transport, "{err:?}");
    assert!(err.is_retryable());
    let text = format!("{err} {err:?}");
    assert!(!text.contains(SECRET), "{text}");
}

// ------------------------------------------------------------------------ login

#[tokio::test]
async fn code2session_returns_openid_and_keeps_session_key_secret() {
    let (_fake, client, _) = setup().await;
    let s = client.code2session("good-code").await.unwrap();
    assert_eq!(s.openid.as_str(), "oUpF8uMEb4qRXf22hE3X68TekukE");
    assert_eq!(s.unionid.as_deref(), Some("oGZUI0egBJY1zhBYw2KhdUfwVJJE"));
    assert_eq!(s.session_key.expose_secret(), "tiihtNczf5v6AKRyjwEUhQ==");
    assert!(!format!("{s:?}").contains("tiihtNczf5v6AKRyjwEUhQ"));

    let err = client.code2session("used-code").await.unwrap_err();
    assert_eq!(err.errcode(), Some(40029));
    assert!(!err.is_retryable());
    assert!(!format!("{err} {err:?}").contains(SECRET));
}

// ------------------------------------------------------------------------ register, account

#[tokio::test]
async fn register_and_account_family() {
    let (fake, client, _) = setup().await;
    fake.canned(
        "shop/register/check",
        json!({"errcode":0,"errmsg":"ok","data":{"status":2,"access_info":{"spu_audit_success":1,"ec_order_finished":1},
            "scene_group_list":[{"group_id":1,"name":"视频号、公众号场景","reason":"","status":1,
            "scene_group_ext_list":[{"ext_id":1,"status":1,"name":"客服售后"}]}],"future_field":true}}),
    );
    let st = client.register_check().await.unwrap();
    assert!(st.is_complete());
    assert_eq!(st.access_info.spu_audit_success, 1);
    assert_eq!(st.scene_group_list[0].scene_group_ext_list[0].ext_id, 1);
    let r = fake.last("shop/register/check");
    assert_eq!(r.json(), json!({}));
    assert!(r.content_type.starts_with("application/json"));

    client.register_finish_access_info(6).await.unwrap();
    assert_eq!(
        fake.last("shop/register/finish_access_info").json(),
        json!({"access_info_item": 6})
    );
    client.register_apply_scene(1).await.unwrap();
    assert_eq!(
        fake.last("shop/register/apply_scene").json(),
        json!({"scene_group_id": 1})
    );

    fake.canned(
        "shop/account/get_brand_list",
        json!({"errcode":0,"data":[{"brand_id":"2100000000","brand_wording":"无品牌"}]}),
    );
    let brands = client.account_get_brand_list().await.unwrap();
    assert_eq!(brands[0].brand_id, 2_100_000_000);
    fake.canned(
        "shop/account/get_category_list",
        json!({"errcode":0,"data":[{"third_cat_id":6493,"first_cat_id":"1"}]}),
    );
    let cats = client.account_get_category_list().await.unwrap();
    assert_eq!((cats[0].third_cat_id, cats[0].first_cat_id), (6493, 1));

    let info = wxshop::shop::account::AccountInfo {
        service_agent_phone: Some("020-88888888".into()),
        service_agent_type: vec![0, 2],
        default_receiving_address: Some(AddressInfo {
            receiver_name: "张三".into(),
            detailed_address: "广州市天河区".into(),
            tel_number: "13800000000".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    client.account_update_info(&info).await.unwrap();
    assert_eq!(
        fake.last("shop/account/update_info").json(),
        json!({"service_agent_phone":"020-88888888","service_agent_type":[0,2],
            "default_receiving_address":{"receiver_name":"张三","detailed_address":"广州市天河区","tel_number":"13800000000"}})
    );
    fake.canned(
        "shop/account/get_info",
        json!({"errcode":0,"data":{"service_agent_path":"pages/cs","service_agent_type":[1]}}),
    );
    let got = client.account_get_info().await.unwrap();
    assert_eq!(got.service_agent_path.as_deref(), Some("pages/cs"));
}

// ------------------------------------------------------------------------ catalog

#[tokio::test]
async fn categories_are_cached_for_an_hour() {
    let (fake, client, clock) = setup().await;
    fake.canned(
        "shop/cat/get",
        json!({"errcode":0,"third_cat_list":[{"third_cat_id":6493,"third_cat_name":"爽肤水","qualification":"",
            "qualification_type":0,"product_qualification":"","product_qualification_type":"2",
            "first_cat_id":6472,"first_cat_name":"美妆","second_cat_id":6473,"second_cat_name":"护肤"}]}),
    );
    let a = client.cat_get().await.unwrap();
    let b = client.cat_get().await.unwrap();
    assert_eq!(a[0].third_cat_id, 6493);
    assert_eq!(b[0].product_qualification_type, 2);
    assert_eq!(fake.calls("shop/cat/get").len(), 1);
    clock.advance(3601 * 1000);
    client.cat_get().await.unwrap();
    assert_eq!(fake.calls("shop/cat/get").len(), 2);
}

#[tokio::test]
async fn image_upload_is_multipart() {
    let (fake, client, _) = setup().await;
    fake.canned(
        "shop/img/upload",
        json!({"errcode":0,"img_info":{"temp_img_url":"https://mmecimage.cn/p/wx/abc","media_id":"m1"}}),
    );
    let info = client
        .img_upload(&ImgUpload {
            resp_type: ImgRespType::Url,
            source: ImgSource::Bytes {
                bytes: Bytes::from_static(b"\x89PNG fake image"),
                filename: "a.png".into(),
            },
        })
        .await
        .unwrap();
    assert_eq!(
        info.temp_img_url.as_deref(),
        Some("https://mmecimage.cn/p/wx/abc")
    );
    let r = fake.last("shop/img/upload");
    assert!(
        r.content_type.starts_with("multipart/form-data"),
        "{}",
        r.content_type
    );
    let body = String::from_utf8_lossy(&r.body);
    assert!(body.contains("name=\"resp_type\"\r\n\r\n1\r\n"), "{body}");
    assert!(body.contains("name=\"upload_type\"\r\n\r\n0\r\n"));
    assert!(body.contains("name=\"media\"; filename=\"a.png\""));
    assert!(body.contains("PNG fake image"));
    assert_eq!(r.token(), "TOKEN-1");

    client
        .img_upload(&ImgUpload {
            resp_type: ImgRespType::MediaId,
            source: ImgSource::Url("https://example.com/x.jpg".into()),
        })
        .await
        .unwrap();
    let body = String::from_utf8_lossy(&fake.last("shop/img/upload").body).to_string();
    assert!(body.contains("name=\"upload_type\"\r\n\r\n1\r\n"));
    assert!(body.contains("name=\"img_url\"\r\n\r\nhttps://example.com/x.jpg\r\n"));

    let too_big = client
        .img_upload(&ImgUpload {
            resp_type: ImgRespType::Url,
            source: ImgSource::Bytes {
                bytes: Bytes::from(vec![0u8; MAX_IMAGE_BYTES + 1]),
                filename: "big.png".into(),
            },
        })
        .await
        .unwrap_err();
    assert!(matches!(too_big, WxError::Invalid { .. }));
}

#[tokio::test]
async fn image_upload_survives_token_expiry() {
    let (fake, client, _) = setup().await;
    client.register_apply().await.unwrap();
    fake.expire_current();
    client
        .img_upload(&ImgUpload {
            resp_type: ImgRespType::Url,
            source: ImgSource::Bytes {
                bytes: Bytes::from_static(b"img"),
                filename: "a.png".into(),
            },
        })
        .await
        .unwrap();
    let calls = fake.calls("shop/img/upload");
    assert_eq!(calls.len(), 2);
    assert!(String::from_utf8_lossy(&calls[1].body).contains("img"));
}

#[tokio::test]
async fn audits() {
    let (fake, client, _) = setup().await;
    fake.canned(
        "shop/audit/audit_brand",
        json!({"errcode":0,"audit_id":"RQAAAHIrzB"}),
    );
    let id = client
        .audit_brand(&AuditBrandRequest {
            audit_req: AuditBrandReq {
                license: vec!["https://mmecimage.cn/p/lic".into()],
                brand_info: BrandInfo {
                    brand_audit_type: 1,
                    trademark_type: "29".into(),
                    brand_management_type: 2,
                    commodity_origin_type: 2,
                    brand_wording: "悦诗风吟".into(),
                    ..Default::default()
                },
                scene_group_list: vec![1],
            },
        })
        .await
        .unwrap();
    assert_eq!(id, "RQAAAHIrzB");
    let body = fake.last("shop/audit/audit_brand").json();
    assert_eq!(body["audit_req"]["brand_info"]["brand_wording"], "悦诗风吟");
    assert_eq!(body["audit_req"]["scene_group_list"], json!([1]));
    assert!(body["audit_req"]["brand_info"]
        .get("trademark_applicant")
        .is_none());

    fake.canned(
        "shop/audit/audit_category",
        json!({"errcode":0,"audit_id":12345}),
    );
    let id = client
        .audit_category(&AuditCategoryRequest {
            audit_req: AuditCategoryReq {
                license: vec!["l".into()],
                category_info: CategoryInfo {
                    level1: 1,
                    level2: 2,
                    level3: 3,
                    certificate: vec!["c".into()],
                },
                scene_group_list: vec![1],
            },
        })
        .await
        .unwrap();
    assert_eq!(id, "12345");
    assert_eq!(
        fake.last("shop/audit/audit_category").json()["audit_req"]["category_info"],
        json!({"level1":1,"level2":2,"level3":3,"certificate":["c"]})
    );

    fake.canned(
        "shop/audit/result",
        json!({"errcode":0,"data":{"status":1,"brand_id":"2100000001","reject_reason":""}}),
    );
    let r = client.audit_result("RQAAAHIrzB").await.unwrap();
    assert_eq!((r.status, r.brand_id), (1, Some(2_100_000_001)));
    assert_eq!(
        fake.last("shop/audit/result").json(),
        json!({"audit_id":"RQAAAHIrzB"})
    );

    fake.canned(
        "shop/audit/get_miniapp_certificate",
        json!({"errcode":0,"category_info_list":[{"first_category_id":1,"second_category_id":"2","certificate_url":["u"]}],
            "brand_info":{"brand_wording":"b","sale_authorization":[],"trademark_registration_certificate":["t"]}}),
    );
    let c = client.get_miniapp_certificate(1).await.unwrap();
    assert_eq!(c.category_info_list[0].second_category_id, 2);
    assert_eq!(
        c.brand_info.unwrap().trademark_registration_certificate,
        ["t"]
    );
    assert_eq!(
        fake.last("shop/audit/get_miniapp_certificate").json(),
        json!({"req_type":1})
    );
}

fn sample_spu() -> Spu {
    Spu {
        out_product_id: Some("P1".into()),
        title: "爽肤水 200ml".into(),
        path: "pages/product?id=P1".into(),
        head_img: vec!["https://mmecimage.cn/p/h".into()],
        third_cat_id: 6493,
        brand_id: NO_BRAND_ID,
        skus: vec![SpuSku {
            out_product_id: "P1".into(),
            out_sku_id: "S1".into(),
            thumb_img: "https://mmecimage.cn/p/t".into(),
            sale_price: Fen::new(1299).unwrap(),
            market_price: Fen::new(1999).unwrap(),
            stock_num: 100,
            sku_attrs: vec![SkuAttr {
                attr_key: "容量".into(),
                attr_value: "200ml".into(),
            }],
            ..Default::default()
        }],
        scene_group_list: vec![1],
        ..Default::default()
    }
}

#[tokio::test]
async fn spu_family() {
    let (fake, client, _) = setup().await;
    fake.canned(
        "shop/spu/add",
        json!({"errcode":0,"data":{"product_id":23423523452345235u64,"out_product_id":"P1","create_time":"2021-03-01 12:00:00",
            "skus":[{"sku_id":"23423523452345236","out_sku_id":"S1"}]}}),
    );
    let r = client.spu_add(&sample_spu()).await.unwrap();
    assert_eq!(r.product_id, 23_423_523_452_345_235);
    assert_eq!(r.skus[0].sku_id, 23_423_523_452_345_236);
    let body = fake.last("shop/spu/add").json();
    assert_eq!(body["out_product_id"], "P1");
    assert!(body.get("product_id").is_none());
    assert_eq!(body["brand_id"], 2_100_000_000u64);
    assert_eq!(body["skus"][0]["sale_price"], 1299);
    assert_eq!(body["skus"][0]["sku_attrs"][0]["attr_key"], "容量");

    let mut upd = sample_spu();
    upd.product_id = Some(23_423_523_452_345_235);
    upd.out_product_id = None;
    fake.canned("shop/spu/update", json!({"errcode":0,"data":{"product_id":"23423523452345235","update_time":"2021-03-02 12:00:00"}}));
    let r = client.spu_update(&upd).await.unwrap();
    assert_eq!(r.update_time.as_deref(), Some("2021-03-02 12:00:00"));
    assert_eq!(
        fake.last("shop/spu/update").json()["product_id"],
        23_423_523_452_345_235u64
    );

    client
        .spu_update_without_audit(&SpuUpdateWithoutAudit {
            key: ProductKey::Out("P1".into()),
            path: None,
            skus: vec![SkuWithoutAudit {
                out_sku_id: "S1".into(),
                stock_num: Some(5),
                ..Default::default()
            }],
        })
        .await
        .unwrap();
    assert_eq!(
        fake.last("shop/spu/update_without_audit").json(),
        json!({"out_product_id":"P1","skus":[{"out_sku_id":"S1","stock_num":5}]})
    );

    let big = ProductKey::Id(23_423_523_452_345_235);
    for (path, res) in [
        ("shop/spu/del", client.spu_del(&big).await),
        ("shop/spu/del_audit", client.spu_del_audit(&big).await),
        ("shop/spu/listing", client.spu_listing(&big).await),
        ("shop/spu/delisting", client.spu_delisting(&big).await),
    ] {
        res.unwrap();
        assert_eq!(
            fake.last(path).json(),
            json!({"product_id": 23_423_523_452_345_235u64}),
            "{path}"
        );
        assert_eq!(
            String::from_utf8_lossy(&fake.last(path).body),
            r#"{"product_id":23423523452345235}"#
        );
    }

    fake.canned(
        "shop/spu/get",
        json!({"errcode":0,"spu":{"product_id":"23423523452345235","out_product_id":"P1","title":"t","status":5,"edit_status":"4",
            "audit_info":{"reject_reason":""},"skus":[{"sku_id":1,"out_sku_id":"S1","sale_price":"1299","market_price":1999,"stock_num":"7"}]}}),
    );
    let spu = client
        .spu_get(&ProductKey::Out("P1".into()), true)
        .await
        .unwrap();
    assert_eq!((spu.status, spu.edit_status), (5, 4));
    assert_eq!(spu.skus[0].sale_price.get(), 1299);
    assert_eq!(spu.skus[0].stock_num, 7);
    assert_eq!(
        fake.last("shop/spu/get").json(),
        json!({"out_product_id":"P1","need_edit_spu":1})
    );

    fake.canned(
        "shop/spu/get_list",
        json!({"errcode":0,"total_num":"1","spus":[{"product_id":5,"out_product_id":"P1"}]}),
    );
    let list = client
        .spu_get_list(&SpuListRequest {
            status: Some(5),
            page_size: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!((list.total_num, list.spus[0].product_id), (1, 5));
    assert_eq!(
        fake.last("shop/spu/get_list").json(),
        json!({"status":5,"page":1,"page_size":10,"need_edit_spu":0})
    );

    fake.canned("shop/scene/check", json!({"errcode":0,"is_matched":1}));
    assert!(client.scene_check(1177).await.unwrap().matched());
    assert_eq!(fake.last("shop/scene/check").json(), json!({"scene":1177}));
}

// ------------------------------------------------------------------------ orders, delivery

fn sample_order() -> OrderAddRequest {
    OrderAddRequest {
        out_order_id: "WX20240101120000abcdefghijkl".into(),
        openid: "oUpF8uMEb4qRXf22hE3X68TekukE".into(),
        path: "pages/order/detail?id=WX20240101120000abcdefghijkl".into(),
        scene: Some(1177),
        order_detail: OrderDetail {
            product_infos: vec![OrderProductInfo {
                out_product_id: "P1".into(),
                out_sku_id: "S1".into(),
                product_cnt: 2,
                sale_price: Fen::new(1299).unwrap(),
                sku_real_price: Some(Fen::new(2598).unwrap()),
                path: "pages/product?id=P1".into(),
                title: "爽肤水".into(),
                head_img: "https://mmecimage.cn/p/h".into(),
                ..Default::default()
            }],
            pay_info: Some(PayInfo {
                pay_method_type: 0,
                prepay_id: Some("wx201410272009395522657a690389285100".into()),
                prepay_time: Some("2024-01-01 12:00:00".into()),
                ..Default::default()
            }),
            price_info: PriceInfo {
                order_price: Fen::new(2598).unwrap(),
                freight: Fen::ZERO,
                ..Default::default()
            },
            ..Default::default()
        },
        delivery_detail: DeliveryDetailReq { delivery_type: 1 },
        address_info: Some(AddressInfo {
            receiver_name: "张三".into(),
            detailed_address: "广州市".into(),
            tel_number: "13800000000".into(),
            ..Default::default()
        }),
        fund_type: Some(0),
        expire_time: Some(1_704_085_200),
        trace_id: Some("trace-1".into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn order_add_stamps_create_time_and_reads_64_bit_ids_as_strings_or_numbers() {
    let (fake, client, clock) = setup().await;
    fake.script(
        "shop/order/add",
        200,
        r#"{"errcode":0,"errmsg":"ok","data":{"order_id":"3302968738502279424","out_order_id":"WX20240101120000abcdefghijkl","ticket":"TICKET","ticket_expire_time":"2024-01-02 12:00:00","final_price":"2598"}}"#,
    );
    fake.script(
        "shop/order/add",
        200,
        r#"{"errcode":0,"errmsg":"ok","data":{"order_id":3302968738502279424,"ticket":"T2","final_price":2598}}"#,
    );
    let r = client.order_add(&sample_order()).await.unwrap();
    assert_eq!(r.order_id, BIG_ORDER_ID);
    assert_eq!(r.ticket, "TICKET");
    assert_eq!(r.ticket_expire_time, "2024-01-02 12:00:00");
    assert_eq!(r.final_price, Fen::new(2598).unwrap());
    let r2 = client.order_add(&sample_order()).await.unwrap();
    assert_eq!(r2.order_id, BIG_ORDER_ID);

    let body = fake.last("shop/order/add").json();
    assert_eq!(body["stringify_64bits_number"], true);
    let stamped =
        wxshop::time::parse_beijing_datetime(body["create_time"].as_str().unwrap()).unwrap();
    assert!(
        (stamped - clock.now_ms()).abs() < 5000,
        "create_time within 5 s of now"
    );
    assert_eq!(
        body["order_detail"]["product_infos"][0]["sku_real_price"],
        2598
    );
    assert_eq!(
        body["order_detail"]["price_info"],
        json!({"order_price":2598,"freight":0})
    );
    assert_eq!(body["order_detail"]["pay_info"]["pay_method_type"], 0);
    assert_eq!(body["delivery_detail"], json!({"delivery_type":1}));
    assert_eq!(body["fund_type"], 0);
    assert!(body["order_detail"].get("delivery_detail").is_none());

    let mut pinned = sample_order();
    pinned.create_time = Some("2024-01-01 12:00:00".into());
    fake.canned("shop/order/add", json!({"errcode":0,"data":{"order_id":1}}));
    client.order_add(&pinned).await.unwrap();
    let body = fake.last("shop/order/add").json();
    assert_eq!(body["create_time"], "2024-01-01 12:00:00");
}

#[tokio::test]
async fn order_pay_get_list_params_close() {
    let (fake, client, _) = setup().await;
    client
        .order_pay(&OrderPayRequest {
            key: OrderKey::Out("WX1".into()),
            openid: "oid".into(),
            action_type: 1,
            action_remark: None,
            transaction_id: Some("4200000001".into()),
            pay_time: Some("2024-01-01 12:00:05".into()),
        })
        .await
        .unwrap();
    assert_eq!(
        fake.last("shop/order/pay").json(),
        json!({"out_order_id":"WX1","openid":"oid","action_type":1,"transaction_id":"4200000001","pay_time":"2024-01-01 12:00:05"})
    );

    fake.canned(
        "shop/order/get",
        json!({"errcode":0,"order":{"order_id":3302968738502279424u64,"out_order_id":"WX1","status":20,"path":"p",
            "order_detail":{"product_infos":[{"out_product_id":"P1","out_sku_id":"S1","product_cnt":1,"sale_price":100,"real_price":"90"}],
            "pay_info":{"pay_method_type":0,"transaction_id":"42"},"price_info":{"order_price":90,"freight":"0"},
            "delivery_detail":{"delivery_type":1,"finish_all_delivery":1,"delivery_list":[{"delivery_id":"SF","waybill_id":"SF1"}]},
            "promotion_info":{"finder_username":"f"}},"unknown":{"a":1}}}),
    );
    let o = client
        .order_get(&OrderKey::Id(BIG_ORDER_ID), "oid")
        .await
        .unwrap();
    assert_eq!((o.order_id, o.status), (BIG_ORDER_ID, 20));
    assert_eq!(
        o.order_detail.product_infos[0].real_price,
        Some(Fen::new(90).unwrap())
    );
    assert_eq!(
        o.order_detail.delivery_detail.unwrap().delivery_list[0].waybill_id,
        "SF1"
    );
    assert_eq!(
        String::from_utf8_lossy(&fake.last("shop/order/get").body),
        r#"{"order_id":3302968738502279424,"openid":"oid"}"#
    );

    fake.canned("shop/order/get_list", json!({"errcode":0,"total_num":1,"orders":[{"order_id":"3302968738502279424","status":"10"}]}));
    let l = client
        .order_get_list(&OrderListRequest::default())
        .await
        .unwrap();
    assert_eq!(
        (l.total_num, l.orders[0].order_id, l.orders[0].status),
        (1, BIG_ORDER_ID, 10)
    );
    assert_eq!(
        fake.last("shop/order/get_list").json(),
        json!({"page":1,"page_size":100})
    );

    fake.canned(
        "shop/order/getpaymentparams",
        json!({"errcode":0,"payment_params":{"timeStamp":1650000000,"nonceStr":"n","package":"prepay_id=wx1","paySign":"s","signType":"RSA"}}),
    );
    let p = client
        .order_get_payment_params(&OrderKey::Out("WX1".into()), "oid")
        .await
        .unwrap();
    assert_eq!(p.time_stamp, "1650000000");
    assert_eq!(p.package, "prepay_id=wx1");
    assert_eq!(
        serde_json::to_value(&p).unwrap(),
        json!({"timeStamp":"1650000000","nonceStr":"n","package":"prepay_id=wx1","paySign":"s","signType":"RSA"})
    );

    client
        .order_close(&OrderKey::Out("WX1".into()), "oid")
        .await
        .unwrap();
    assert_eq!(
        fake.last("shop/order/close").json(),
        json!({"out_order_id":"WX1","openid":"oid"})
    );
}

#[tokio::test]
async fn delivery_family_uses_recieve_spelling() {
    let (fake, client, _) = setup().await;
    fake.canned(
        "shop/delivery/get_company_list",
        json!({"errcode":0,"company_list":[{"delivery_id":"SF","delivery_name":"顺丰速运"}]}),
    );
    let list = client.delivery_get_company_list().await.unwrap();
    assert_eq!(list[0].delivery_id, "SF");

    client
        .delivery_send(&DeliverySendRequest {
            key: OrderKey::Id(BIG_ORDER_ID),
            openid: "oid".into(),
            finish_all_delivery: 1,
            delivery_list: vec![DeliveryParcel {
                delivery_id: "SF".into(),
                waybill_id: "SF123".into(),
                product_info_list: vec![DeliveryProduct {
                    out_product_id: "P1".into(),
                    out_sku_id: "S1".into(),
                    product_cnt: 1,
                }],
            }],
            ship_done_time: Some("2024-01-02 10:00:00".into()),
        })
        .await
        .unwrap();
    assert_eq!(
        fake.last("shop/delivery/send").json(),
        json!({"order_id":BIG_ORDER_ID,"openid":"oid","finish_all_delivery":1,
            "delivery_list":[{"delivery_id":"SF","waybill_id":"SF123","product_info_list":[{"out_product_id":"P1","out_sku_id":"S1","product_cnt":1}]}],
            "ship_done_time":"2024-01-02 10:00:00"})
    );

    client
        .delivery_recieve(&OrderKey::Out("WX1".into()), "oid")
        .await
        .unwrap();
    assert_eq!(
        fake.last("shop/delivery/recieve").json(),
        json!({"out_order_id":"WX1","openid":"oid"})
    );
    assert!(fake.calls("shop/delivery/receive").is_empty());
}

// ------------------------------------------------------------------------ after-sales

#[tokio::test]
async fn ec_aftersale_family() {
    let (fake, client, _) = setup().await;
    fake.canned(
        "shop/ecaftersale/add",
        json!({"errcode":0,"aftersale_id":"4000000001596225"}),
    );
    let id = client
        .ecaftersale_add(&EcAfterSaleAddRequest {
            order: OrderKey::Out("WX1".into()),
            out_aftersale_id: Some("AS1".into()),
            openid: "oid".into(),
            kind: 1,
            product_info: EcProductInfo {
                out_product_id: Some("P1".into()),
                out_sku_id: Some("S1".into()),
                product_cnt: 1,
                ..Default::default()
            },
            orderamt: Fen::new(1299).unwrap(),
            refund_reason: "不想要了".into(),
            refund_reason_type: 2,
            media_list: vec![],
        })
        .await
        .unwrap();
    assert_eq!(id, 4_000_000_001_596_225);
    assert_eq!(
        fake.last("shop/ecaftersale/add").json(),
        json!({"out_order_id":"WX1","out_aftersale_id":"AS1","openid":"oid","type":1,
            "product_info":{"out_product_id":"P1","out_sku_id":"S1","product_cnt":1},
            "orderamt":1299,"refund_reason":"不想要了","refund_reason_type":2})
    );

    fake.canned(
        "shop/ecaftersale/get",
        json!({"errcode":0,"after_sales_order":{"aftersale_id":4000000001596225u64,"out_aftersale_id":"AS1",
            "order_id":"3302968738502279424","openid":"oid","type":1,"status":13,"orderamt":"1299","refund_reason_type":2,
            "product_info":{"product_id":"23423523452345235","product_cnt":1},
            "media_list":[{"type":1,"url":"u","thumb_url":"t"}],"refund_pay_detail":{"refund_id":"50000000382019052709732678859"},
            "create_time":"1650876295006","update_time":1650876299000u64}}),
    );
    let a = client
        .ecaftersale_get(&AfterSaleKey::Id(4_000_000_001_596_225))
        .await
        .unwrap();
    assert_eq!(
        (a.aftersale_id, a.order_id, a.status),
        (4_000_000_001_596_225, BIG_ORDER_ID, 13)
    );
    assert_eq!(a.create_time, 1_650_876_295_006);
    assert_eq!(a.orderamt.get(), 1299);
    assert_eq!(a.product_info.product_id, Some(23_423_523_452_345_235));
    assert!(a.refund_pay_detail.unwrap().refund_id.is_some());
    assert_eq!(
        fake.last("shop/ecaftersale/get").json(),
        json!({"aftersale_id":4_000_000_001_596_225u64})
    );

    fake.canned(
        "shop/ecaftersale/get_list",
        json!({"errcode":0,"after_sales_orders":[{"aftersale_id":"4000000001596225","out_aftersale_id":"AS1"}],"has_more":false}),
    );
    let l = client
        .ecaftersale_get_list(&EcAfterSaleListRequest {
            begin_create_time: Some(1_650_000_000_000),
            end_create_time: Some(1_650_900_000_000),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        l.after_sales_orders[0].aftersale_id,
        Some(4_000_000_001_596_225)
    );
    assert!(!l.has_more);
    // As SKIT models WeChat's answer: WeChat's ids only, as strings.
    fake.canned(
        "shop/ecaftersale/get_list",
        json!({"errcode":0,"after_sales_orders":["4000000001596225", 4000000001596226u64],"has_more":true}),
    );
    let ids = client
        .ecaftersale_get_list(&EcAfterSaleListRequest::default())
        .await
        .unwrap();
    assert_eq!(
        ids.after_sales_orders
            .iter()
            .map(|r| (r.aftersale_id, r.out_aftersale_id.clone()))
            .collect::<Vec<_>>(),
        vec![
            (Some(4_000_000_001_596_225), None),
            (Some(4_000_000_001_596_226), None)
        ]
    );
    assert!(ids.has_more);
    client
        .ecaftersale_get_list(&EcAfterSaleListRequest {
            begin_create_time: Some(1_650_000_000_000),
            end_create_time: Some(1_650_900_000_000),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        fake.last("shop/ecaftersale/get_list").json(),
        json!({"begin_create_time":1_650_000_000_000i64,"end_create_time":1_650_900_000_000i64,"offset":0,"limit":50})
    );

    let key = AfterSaleKey::Out("AS1".into());
    client
        .ecaftersale_update(&EcAfterSaleUpdateRequest {
            key: key.clone(),
            openid: "oid".into(),
            kind: Some(2),
            orderamt: Some(Fen::new(100).unwrap()),
            refund_reason: None,
            refund_reason_type: None,
            media_list: vec![],
        })
        .await
        .unwrap();
    assert_eq!(
        fake.last("shop/ecaftersale/update").json(),
        json!({"out_aftersale_id":"AS1","openid":"oid","type":2,"orderamt":100})
    );
    client.ecaftersale_cancel(&key, "oid").await.unwrap();
    assert_eq!(
        fake.last("shop/ecaftersale/cancel").json(),
        json!({"out_aftersale_id":"AS1","openid":"oid"})
    );
    client.ecaftersale_acceptrefund(&key).await.unwrap();
    assert_eq!(
        fake.last("shop/ecaftersale/acceptrefund").json(),
        json!({"out_aftersale_id":"AS1"})
    );
    client.ecaftersale_reject(&key).await.unwrap();
    assert_eq!(
        fake.last("shop/ecaftersale/reject").json(),
        json!({"out_aftersale_id":"AS1"})
    );
    client
        .ecaftersale_acceptreturn(
            &key,
            &AddressInfo {
                receiver_name: "仓库".into(),
                detailed_address: "地址".into(),
                tel_number: "1".into(),
                province: Some("广东".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        fake.last("shop/ecaftersale/acceptreturn").json(),
        json!({"out_aftersale_id":"AS1","address_info":{"receiver_name":"仓库","detailed_address":"地址","tel_number":"1","province":"广东"}})
    );
    client
        .ecaftersale_uploadreturninfo(&ReturnInfoUpload {
            key,
            openid: "oid".into(),
            delivery_id: "SF".into(),
            delivery_name: "顺丰速运".into(),
            waybill_id: "SF9".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        fake.last("shop/ecaftersale/uploadreturninfo").json(),
        json!({"out_aftersale_id":"AS1","openid":"oid","delivery_id":"SF","delivery_name":"顺丰速运","waybill_id":"SF9"})
    );
}

#[tokio::test]
async fn legacy_aftersale_family() {
    let (fake, client, _) = setup().await;
    client
        .aftersale_add(&LegacyAfterSaleAddRequest {
            out_order_id: "WX1".into(),
            out_aftersale_id: "AS1".into(),
            openid: "oid".into(),
            kind: 1,
            create_time: "2024-01-01 12:00:00".into(),
            status: 2,
            finish_all_aftersale: 0,
            path: "pages/aftersale".into(),
            refund: Fen::new(100).unwrap(),
            product_infos: vec![LegacyProductInfo {
                out_product_id: "P1".into(),
                out_sku_id: "S1".into(),
                product_cnt: 1,
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    let body = fake.last("shop/aftersale/add").json();
    assert_eq!(body["type"], 1);
    assert_eq!(body["refund"], 100);
    assert!(body.get("orderamt").is_none());

    fake.canned(
        "shop/aftersale/get",
        json!({"errcode":0,"aftersale_infos":[{"order_id":"3302968738502279424","out_order_id":"WX1","out_aftersale_id":"AS1",
            "openid":"oid","type":1,"status":13,"refund":"100","product_infos":[{"out_product_id":"P1","out_sku_id":"S1","product_cnt":"1"}]}]}),
    );
    let l = client
        .aftersale_get(&OrderKey::Out("WX1".into()), "oid")
        .await
        .unwrap();
    assert_eq!(
        (l[0].order_id, l[0].status, l[0].refund.get()),
        (Some(BIG_ORDER_ID), 13, 100)
    );
    assert_eq!(
        fake.last("shop/aftersale/get").json(),
        json!({"out_order_id":"WX1","openid":"oid"})
    );

    client
        .aftersale_update(&LegacyAfterSaleUpdateRequest {
            out_order_id: "WX1".into(),
            openid: "oid".into(),
            out_aftersale_id: "AS1".into(),
            status: 13,
            finish_all_aftersale: 1,
        })
        .await
        .unwrap();
    assert_eq!(
        fake.last("shop/aftersale/update").json(),
        json!({"out_order_id":"WX1","openid":"oid","out_aftersale_id":"AS1","status":13,"finish_all_aftersale":1})
    );
}

// ------------------------------------------------------------------------ funds

#[tokio::test]
async fn funds_balance_flows_and_withdrawals() {
    let (fake, client, _) = setup().await;
    fake.canned(
        "shop/funds/getbalance",
        json!({"errcode":0,"balance_info":{"available_amount":12345,"pending_amount":"678"}}),
    );
    let b = client.funds_get_balance().await.unwrap();
    assert_eq!(
        (b.available_amount.get(), b.pending_amount.get()),
        (12345, 678)
    );
    assert_eq!(fake.last("shop/funds/getbalance").json(), json!({}));

    fake.canned(
        "shop/funds/scanorderflow",
        json!({"errcode":0,"funds_flow_ids":["F1",2],"total_num":2}),
    );
    let ids = client
        .funds_scan_order_flow("20240101", 1, 100)
        .await
        .unwrap();
    assert_eq!(ids.funds_flow_ids, ["F1", "2"]);
    assert_eq!(
        fake.last("shop/funds/scanorderflow").json(),
        json!({"date":"20240101","page_num":1,"page_size":100})
    );

    fake.canned(
        "shop/funds/getorderflow",
        json!({"errcode":0,"funds_flow":{"funds_flow_id":"F1","bookkeeping_time":"2024-01-01 12:00:00","type":"交易",
            "flow_type":"收入","amount":"12.34","balance":100.5,"busi_type":"订单","request_no":"WX1"}}),
    );
    let f = client.funds_get_order_flow("F1").await.unwrap();
    assert_eq!((f.amount.get(), f.balance.get()), (1234, 10050));
    assert_eq!(f.kind, "交易");
    assert_eq!(
        fake.last("shop/funds/getorderflow").json(),
        json!({"funds_flow_id":"F1"})
    );

    fake.canned(
        "shop/funds/submitwithdraw",
        json!({"errcode":0,"out_request_no":12345678901234567u64,"qrcode_ticket":"QT"}),
    );
    let w = client
        .funds_submit_withdraw(Fen::new(10000).unwrap(), Some("weekly"), None)
        .await
        .unwrap();
    assert_eq!(
        (w.out_request_no.as_str(), w.qrcode_ticket.as_str()),
        ("12345678901234567", "QT")
    );
    assert_eq!(
        fake.last("shop/funds/submitwithdraw").json(),
        json!({"amount":10000,"remark":"weekly"})
    );
    assert!(matches!(
        client.funds_submit_withdraw(Fen::ZERO, None, None).await,
        Err(WxError::Invalid { .. })
    ));

    fake.canned(
        "shop/funds/scanwithdraw",
        json!({"errcode":0,"out_request_nos":["R1"],"total_num":1}),
    );
    assert_eq!(
        client
            .funds_scan_withdraw(1, 10)
            .await
            .unwrap()
            .out_request_nos,
        ["R1"]
    );

    fake.canned(
        "shop/funds/getwithdrawdetail",
        json!({"errcode":0,"withdraw_info":{"amount":10000,"create_time":1704081600,"update_time":"1704081700","status":"SUCCESS","bank_name":"招商银行"}}),
    );
    let d = client.funds_get_withdraw_detail("R1").await.unwrap();
    assert_eq!(
        (d.amount.get(), d.update_time, d.status.as_str()),
        (10000, 1_704_081_700, "SUCCESS")
    );
    assert_eq!(
        fake.last("shop/funds/getwithdrawdetail").json(),
        json!({"out_request_no":"R1"})
    );

    fake.canned(
        "shop/funds/qrcode/gen",
        json!({"errcode":0,"qrcode_ticket":"QT2"}),
    );
    assert_eq!(client.funds_qrcode_gen(1).await.unwrap(), "QT2");
    assert_eq!(
        fake.last("shop/funds/qrcode/gen").json(),
        json!({"identity_type":1})
    );
    fake.canned(
        "shop/funds/qrcode/get",
        json!({"errcode":0,"qrcode_buf":"iVBORw0KGgo="}),
    );
    assert_eq!(
        client.funds_qrcode_get("QT").await.unwrap(),
        b"\x89PNG\r\n\x1a\n"
    );
    fake.canned(
        "shop/funds/qrcode/check",
        json!({"errcode":0,"status":1,"scan_user_type":"1","self_check_err_code":0}),
    );
    let c = client.funds_qrcode_check("QT").await.unwrap();
    assert!(c.is_confirmed());
    assert_eq!(c.scan_user_type, 1);
    fake.script(
        "shop/funds/qrcode/get",
        200,
        r#"{"errcode":60220,"errmsg":"ticket expired"}"#,
    );
    let e = client.funds_qrcode_get("QT").await.unwrap_err();
    assert_eq!(e.errcode(), Some(60220));
    assert!(!e.is_retryable());
}

#[tokio::test]
async fn funds_bank_account_and_lookups() {
    let (fake, client, _) = setup().await;
    fake.canned(
        "shop/funds/getbankaccount",
        json!({"errcode":0,"account_info":{"bank_account_type":"ACCOUNT_TYPE_BUSINESS","account_bank":"招商银行",
            "bank_address_code":110000,"bank_branch_id":402713354941u64,"account_number":"6214***1234"},"verify_fail_reason":""}),
    );
    let a = client.funds_get_bank_account().await.unwrap();
    let info = a.account_info.unwrap();
    assert_eq!(info.bank_address_code, "110000");
    assert_eq!(info.bank_branch_id.as_deref(), Some("402713354941"));

    client.funds_set_bank_account(&info).await.unwrap();
    assert_eq!(
        fake.last("shop/funds/setbankaccount").json(),
        json!({"account_info":{"bank_account_type":"ACCOUNT_TYPE_BUSINESS","account_bank":"招商银行",
            "bank_address_code":"110000","bank_branch_id":"402713354941","account_number":"6214***1234"}})
    );

    fake.canned(
        "shop/funds/getbanklist",
        json!({"errcode":0,"data":[{"account_bank":"招商银行","bank_code":"1001","bank_id":1001,"bank_name":"招商银行","bank_type":2,"need_branch":true}]}),
    );
    let l = client
        .funds_get_bank_list(&BankListRequest {
            key_words: Some("招商".into()),
            limit: Some(10),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        (l.data[0].bank_id.as_str(), l.data[0].need_branch),
        ("1001", true)
    );
    assert_eq!(
        fake.last("shop/funds/getbanklist").json(),
        json!({"limit":10,"key_words":"招商"})
    );

    fake.canned(
        "shop/funds/getbankbynum",
        json!({"errcode":0,"data":[{"account_bank":"招商银行","bank_code":"1001","bank_id":"1001","bank_name":"招商银行","need_branch":0}],"total_count":1}),
    );
    let l = client
        .funds_get_bank_by_num("6214830000000000")
        .await
        .unwrap();
    assert!(!l.data[0].need_branch);
    assert_eq!(l.total_count, Some(1));
    assert_eq!(
        fake.last("shop/funds/getbankbynum").json(),
        json!({"account_number":"6214830000000000"})
    );

    fake.canned(
        "shop/funds/getprovince",
        json!({"errcode":0,"data":[{"province_code":1,"province_name":"北京市"}],"total_count":1}),
    );
    assert_eq!(
        client.funds_get_province().await.unwrap().data[0].province_code,
        "1"
    );
    fake.canned("shop/funds/getcity", json!({"errcode":0,"data":[{"city_code":"10","city_name":"北京市","bank_address_code":"110000"}],"total_count":1}));
    let cities = client.funds_get_city(1).await.unwrap();
    assert_eq!(cities.data[0].bank_address_code, "110000");
    assert_eq!(
        fake.last("shop/funds/getcity").json(),
        json!({"province_code":1})
    );

    fake.canned(
        "shop/funds/getsubbranch",
        json!({"errcode":0,"account_bank":"招商银行","account_bank_code":1001,"bank_alias":"招行","bank_alias_code":"1001",
            "count":1,"total_count":"1","data":[{"branch_id":402713354941u64,"branch_name":"招商银行北京分行"}]}),
    );
    let s = client
        .funds_get_sub_branch(&SubBranchRequest {
            bank_code: "1001".into(),
            city_code: 10,
            offset: Some(0),
            limit: Some(20),
        })
        .await
        .unwrap();
    assert_eq!(
        (s.account_bank_code.as_str(), s.data[0].branch_id.as_str()),
        ("1001", "402713354941")
    );
    assert_eq!(
        fake.last("shop/funds/getsubbranch").json(),
        json!({"bank_code":"1001","city_code":10,"offset":0,"limit":20})
    );
}

#[tokio::test]
async fn funds_for_payment_management_service_carry_biz_type_and_mchid() {
    let (fake, client, _) = setup().await;
    let client = client.with_funds_mchid("1230000109");
    fake.canned(
        "shop/funds/getbalance",
        json!({"errcode":0,"balance_info":{"available_amount":1,"pending_amount":2}}),
    );
    client.funds_get_balance().await.unwrap();
    assert_eq!(
        fake.last("shop/funds/getbalance").json(),
        json!({"biz_type":1,"mchid":"1230000109"})
    );
}

#[tokio::test]
async fn from_config_uses_the_mini_program_credentials_and_base_url() {
    let fake = Fake::start().await;
    let base = fake.base.clone();
    let vars: HashMap<&str, String> = [
        ("WX_APPID", APPID.to_owned()),
        ("WX_APPSECRET", SECRET.to_owned()),
        ("WXPAY_MCH_ID", "1900000109".to_owned()),
        (
            "WXPAY_API_KEY",
            "192006250b4c09247ec02edce69f6a2d".to_owned(),
        ),
        (
            "SESSION_SECRET",
            "0123456789abcdef0123456789abcdef".to_owned(),
        ),
        ("WX_PUSH_TOKEN", "tok".to_owned()),
        (
            "WXPAY_NOTIFY_URL",
            "https://x.example/callbacks/pay".to_owned(),
        ),
        ("WX_API_BASE_URL", base),
    ]
    .into_iter()
    .collect();
    let cfg = wxshop::config::Config::from_lookup(|k| vars.get(k).cloned()).unwrap();
    let clock = Clock::default();
    clock.advance(3_600_000);
    let client = WxClient::from_config_with_clock(&cfg, store(), clock.clone()).unwrap();
    client.order_add(&sample_order()).await.unwrap_err(); // canned `ok` has no order_id
    let body = fake.last("shop/order/add").json();
    let stamped =
        wxshop::time::parse_beijing_datetime(body["create_time"].as_str().unwrap()).unwrap();
    assert!(
        (stamped - clock.now_ms()).abs() < 5000,
        "stamped with the shared clock"
    );
    assert_eq!(fake.with(|s| s.stable_bodies[0]["appid"].clone()), APPID);
}
