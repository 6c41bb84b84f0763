#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
#![allow(dead_code)] // shared by the reliability_* tests; each uses a part
//! Helpers shared by the `reliability_*` and `e2e_*` tests (included with `#[path]`; on its
//! own this file is an empty test target). Everything talks to a stack over HTTP on
//! 127.0.0.1, as its users do; every wait is bounded.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use wxlocal::gateway::{start, Options, Running};
use wxshop::domain::{Fen, OpenId, OutTradeNo};
use wxshop::pay::notify::{build_payment_notification, PaymentNotificationSpec};
use wxshop::pay::SignType;

/// `WXSHOP_STORM_SCALE` (default 1): multiplies the sizes of the load tests.
pub fn scale() -> usize {
    std::env::var("WXSHOP_STORM_SCALE")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|n| *n >= 1)
        .unwrap_or(1)
}

/// A dead address: notifications the sandbox sends by itself go nowhere, so only the
/// notifications a test sends can move an order to PAID.
pub const DEAD_NOTIFY_URL: &str = "http://127.0.0.1:9/callbacks/pay";

pub async fn stack_with(vars: &[(&str, &str)]) -> Running {
    stack_with_metrics(vars, wxshop::metrics::Metrics::off()).await
}

/// [`stack_with`] on `store` (`memory`, `sqlite:PATH`, `dynamodb:TABLE` with
/// `DYNAMODB_ENDPOINT` among `vars`). Off `memory` the outbox relay looks for due work every
/// 100 ms (wxlocal's default) instead of 20: each look is a listing of the status index (nine
/// `Query` calls on DynamoDB), and moto answers one request at a time.
pub async fn stack_on(store: &str, vars: &[(&str, &str)]) -> Running {
    let relay_every = if store == "memory" {
        Duration::from_millis(20)
    } else {
        Duration::from_millis(100)
    };
    start_stack(store, vars, wxshop::metrics::Metrics::off(), relay_every).await
}

/// [`stack_with`], its handlers' metrics going to `metrics` (e.g. `Metrics::capture`).
pub async fn stack_with_metrics(
    vars: &[(&str, &str)],
    metrics: wxshop::metrics::Metrics,
) -> Running {
    if std::env::var("WXSHOP_E2E_STORE").as_deref() == Ok("dynamodb") {
        static MOTO: std::sync::OnceLock<Moto> = std::sync::OnceLock::new();
        let moto = MOTO.get_or_init(start_moto);
        let table = dynamodb_table(moto, "hunt").await;
        let mut vars = vars.to_vec();
        vars.push(("DYNAMODB_ENDPOINT", moto.endpoint.as_str()));
        return start_stack(
            &format!("dynamodb:{table}"),
            &vars,
            metrics,
            Duration::from_millis(100),
        )
        .await;
    }
    start_stack("memory", vars, metrics, Duration::from_millis(20)).await
}

async fn start_stack(
    store: &str,
    vars: &[(&str, &str)],
    metrics: wxshop::metrics::Metrics,
    relay_every: Duration,
) -> Running {
    let mut overrides = HashMap::new();
    overrides.insert("ORDER_TTL_SECS".to_owned(), "900".to_owned());
    for (k, v) in vars {
        overrides.insert((*k).to_owned(), (*v).to_owned());
    }
    start(Options {
        addr: "127.0.0.1:0".parse().unwrap(),
        store: Some(store.into()),
        seed: true,
        time_scale: 0.001,
        overrides,
        use_env: false,
        relay_every,
        schedule_every: None,
        metrics,
    })
    .await
    .expect("stack starts")
}

#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub admin_token: String,
    pub http: reqwest::Client,
}

impl Client {
    pub fn new(r: &Running) -> Self {
        Client::at(&r.base_url, &r.admin_token)
    }

    pub fn at(base: &str, admin_token: &str) -> Self {
        Client {
            base: base.to_owned(),
            admin_token: admin_token.to_owned(),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    pub async fn post(&self, path: &str, bearer: Option<&str>, body: &Value) -> (u16, Value) {
        let mut req = self.http.post(format!("{}{path}", self.base)).json(body);
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// POSTs raw bytes; `Err` if the connection failed (e.g. the server died).
    pub async fn try_raw(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> Result<(u16, String), reqwest::Error> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .body(body)
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await?))
    }

    pub async fn raw(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, String) {
        self.try_raw(path, body).await.unwrap()
    }

    /// A call to the sandbox's `/sandbox/_control/{path}` (what WeChat or the user does
    /// there), which must succeed: its answer.
    pub async fn control(&self, path: &str, body: &Value) -> Value {
        let (s, v) = self
            .post(&format!("/sandbox/_control/{path}"), None, body)
            .await;
        assert_eq!(s, 200, "{path}: {v}");
        v
    }

    /// Logs `user` in through the sandbox: (session token, openid).
    pub async fn login(&self, user: &str) -> (String, String) {
        let code = self.control("login", &json!({"user": user})).await;
        let (status, v) = self
            .post("/fn/login", None, &json!({"code": code["code"]}))
            .await;
        assert_eq!(status, 200, "{v}");
        (
            v["token"].as_str().unwrap().to_owned(),
            v["openid"].as_str().unwrap().to_owned(),
        )
    }

    pub async fn order(&self, token: &str, qty: u32, key: Option<&str>) -> (u16, Value) {
        let mut body = json!({"items": [{"product_id": "tea", "sku_id": "tea-250g", "quantity": qty}],
            "address": {"receiver_name": "A", "detailed_address": "1 Road", "tel_number": "13800000000"}});
        if let Some(k) = key {
            body["idempotency_key"] = json!(k);
        }
        self.post("/fn/unifiedOrder", Some(token), &body).await
    }

    /// `qty` × tea through `unifiedOrder`, to Alice at 1 Tea Street, which must succeed: the
    /// order as answered.
    pub async fn order_tea(&self, token: &str, qty: u32) -> Value {
        let (s, order) = self
            .post(
                "/fn/unifiedOrder",
                Some(token),
                &json!({"items": [{"product_id": "tea", "sku_id": "tea-250g", "quantity": qty}],
                        "address": {"receiver_name": "Alice", "detailed_address": "1 Tea Street",
                                    "tel_number": "13800000000"}}),
            )
            .await;
        assert_eq!(s, 200, "{order}");
        order
    }

    /// The user pays order `no` in WeChat (a trading-component order, `fund_type` 1: the
    /// sandbox pushes `open_product_order_pay`); returns once the order reads PAID.
    pub async fn pay_in_wechat(&self, token: &str, no: &str) {
        self.control("pay", &json!({"out_order_id": no})).await;
        eventually_in_300_polls("the order to read PAID", || async {
            let (_, v) = self
                .post("/fn/queryOrder", Some(token), &json!({"out_trade_no": no}))
                .await;
            v["order"]["status"] == "PAID"
        })
        .await;
    }

    /// The caller's order as `queryOrder` shows it.
    pub async fn status(&self, token: &str, no: &str) -> Value {
        let (s, v) = self
            .post("/fn/queryOrder", Some(token), &json!({"out_trade_no": no}))
            .await;
        assert_eq!(s, 200, "{v}");
        v["order"].clone()
    }

    pub async fn admin(&self, path: &str, body: &Value) -> (u16, Value) {
        let token = self.admin_token.clone();
        self.post(path, Some(&token), body).await
    }

    /// catalogSync's `wechat` pass-through of `api` with `body`: (HTTP status, answer).
    pub async fn wechat(&self, api: &str, body: Value) -> (u16, Value) {
        self.admin(
            "/admin/catalogSync",
            &json!({"action": "wechat", "api": api, "body": body}),
        )
        .await
    }

    /// An image uploaded by URL through `shop/img/upload`: WeChat's `temp_img_url` of it.
    pub async fn uploaded_image(&self, url: &str) -> String {
        let (s, v) = self
            .wechat(
                "shop/img/upload",
                json!({"resp_type": 1, "upload_type": 1, "img_url": url}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v["img_info"]["temp_img_url"].as_str().unwrap().to_owned()
    }

    pub async fn stock(&self) -> i64 {
        let (s, p) = self
            .admin(
                "/admin/catalogSync",
                &json!({"action": "get", "product_id": "tea"}),
            )
            .await;
        assert_eq!(s, 200, "{p}");
        p["product"]["skus"][0]["stock"].as_i64().unwrap()
    }

    pub async fn set_stock(&self, stock: u64) {
        let (s, v) = self
            .admin(
                "/admin/catalogSync",
                &json!({"action": "set_stock", "product_id": "tea", "sku_id": "tea-250g", "stock": stock}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
    }

    /// A second product for carts of several lines: uploaded (the sandbox audits it) and
    /// listed, with one SKU `sku_id` at `price` fen.
    pub async fn listed_product(&self, product_id: &str, sku_id: &str, price: i64) {
        let (s, v) = self
            .admin(
                "/admin/catalogSync",
                &json!({"action": "upsert", "product": {
                    "product_id": product_id, "title": format!("{product_id} for tests"),
                    "head_img": ["https://mmecimage.cn/p/wxlocal/tea.jpg"], "third_cat_id": 6153,
                    "brand_id": 2100000000,
                    "skus": [{"sku_id": sku_id, "price": price, "stock": 100}]
                }}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        let get = json!({"action": "get", "product_id": product_id});
        eventually("the audit verdict", Duration::from_secs(10), || async {
            self.admin("/admin/catalogSync", &get).await.1["product"]["audit"] == "APPROVED"
        })
        .await;
        let (s, v) = self
            .admin(
                "/admin/catalogSync",
                &json!({"action": "listing", "product_id": product_id}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
    }

    /// The user applies for an after-sale on `no` (`extra`: amount, reason, type): its id.
    pub async fn apply(&self, token: &str, no: &str, extra: Value) -> String {
        let mut body = json!({"action": "apply", "out_trade_no": no});
        if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
            b.extend(e);
        }
        let (s, applied) = self.post("/fn/aftersaleSync", Some(token), &body).await;
        assert_eq!(s, 200, "{applied}");
        applied["aftersale"]["aftersale_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The merchant approves an after-sale.
    pub async fn approve(&self, id: &str) {
        let (s, v) = self
            .admin(
                "/admin/aftersaleSync",
                &json!({"action": "approve", "aftersale_id": id}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
    }

    /// Returns once the user's list of after-sales of `no` shows `id` REFUNDED.
    pub async fn until_refunded(&self, token: &str, no: &str, id: &str) {
        eventually_in_300_polls("the after-sale to read REFUNDED", || async {
            let (_, v) = self
                .post(
                    "/fn/aftersaleSync",
                    Some(token),
                    &json!({"action": "list", "out_trade_no": no}),
                )
                .await;
            v["aftersales"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["aftersale_id"] == id && a["status"] == "REFUNDED")
        })
        .await;
    }

    /// Returns once the merchant's `get` of product `id` reads its audit `want` (20 s at most).
    pub async fn until_audit_reads(&self, id: &str, want: &str) {
        let get = json!({"action": "get", "product_id": id});
        eventually(
            &format!("{id}'s audit to read {want}"),
            Duration::from_secs(20),
            || async { self.admin("/admin/catalogSync", &get).await.1["product"]["audit"] == want },
        )
        .await;
    }

    /// The user's after-sale `id` of order `no`, as they list it.
    pub async fn my_aftersale(&self, token: &str, no: &str, id: &str) -> Value {
        let (s, v) = self
            .post(
                "/fn/aftersaleSync",
                Some(token),
                &json!({"action": "list", "out_trade_no": no}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v["aftersales"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["aftersale_id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no after-sale {id} in {v}"))
    }

    /// Every after-sale of `no`, as the merchant lists them.
    pub async fn admin_aftersales(&self, no: &str) -> Vec<Value> {
        let (s, v) = self
            .admin(
                "/admin/aftersaleSync",
                &json!({"action": "list", "out_trade_no": no}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v["aftersales"].as_array().cloned().unwrap_or_default()
    }

    /// The user pays at the sandbox (WeChat Pay): the transaction id WeChat assigned.
    pub async fn pay_at_sandbox(&self, no: &str) -> String {
        let (s, v) = self
            .post("/sandbox/_control/pay", None, &json!({"out_trade_no": no}))
            .await;
        assert_eq!(s, 200, "{v}");
        v["transaction_id"].as_str().unwrap().to_owned()
    }

    /// `shop/order/pay` calls the sandbox received, by `out_order_id`.
    pub async fn order_pay_calls(&self) -> HashMap<String, usize> {
        let (s, v) = self
            .get("/sandbox/_control/calls?path=shop/order/pay")
            .await;
        assert_eq!(s, 200, "{v}");
        let mut by = HashMap::new();
        for c in v["calls"].as_array().unwrap() {
            let id = c["out_order_id"].as_str().unwrap_or("?").to_owned();
            *by.entry(id).or_insert(0) += 1;
        }
        by
    }

    pub async fn dead_letters(&self) -> Vec<Value> {
        let (s, v) = self
            .admin("/admin/orderSync", &json!({"action": "dead_letters"}))
            .await;
        assert_eq!(s, 200, "{v}");
        v["dead_letters"].as_array().unwrap().clone()
    }

    pub async fn fault(&self, f: Value) {
        let (s, v) = self.post("/sandbox/_control/faults", None, &f).await;
        assert_eq!(s, 200, "{v}");
    }

    pub async fn clear_faults(&self) {
        let resp = self
            .http
            .delete(format!("{}/sandbox/_control/faults", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
    }
}

/// A [`Client`] of a stack running in this process, through which a test may also look
/// inside it: its store and clock (`r.app`), and what the sandbox was asked (`r.sandbox`).
/// Everything else is the [`Client`]'s (it derefs to one).
pub struct InProcess<'a> {
    pub r: &'a Running,
    client: Client,
}

impl<'a> InProcess<'a> {
    pub fn new(r: &'a Running) -> Self {
        InProcess {
            r,
            client: Client::new(r),
        }
    }

    /// How many calls of the WeChat API `api` (e.g. `shop/order/pay`) the sandbox received.
    pub fn calls(&self, api: &str) -> usize {
        self.r.sandbox.calls(api).len()
    }
}

impl std::ops::Deref for InProcess<'_> {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl InProcess<'_> {
    /// The user pays order `no` in WeChat (a `fund_type` 1 order) and every push of the
    /// payment is lost: our check of it (`shop/order/get`) fails, so each of WeChat's three
    /// tries (5 s apart, time-compressed) is answered 503 and WeChat stops; then the
    /// sandbox's faults are cleared.
    pub async fn pay_in_wechat_every_push_lost(&self, no: &str) {
        self.control(
            "faults",
            &json!({"path": "shop/order/get", "mode": "http500", "count": 1000}),
        )
        .await;
        self.control("pay", &json!({"out_order_id": no})).await;
        eventually_in_300_polls("WeChat to give up pushing", || async {
            self.r
                .sandbox
                .deliveries()
                .iter()
                .filter(|d| d["kind"] == "push" && d["status"] == 503)
                .count()
                >= 3
        })
        .await;
        self.clear_faults().await;
    }
}

/// A day in milliseconds.
pub const DAY_MS: i64 = 86_400_000;

impl InProcess<'_> {
    /// Moves the app's and the sandbox's clocks together by `ms`.
    pub async fn advance_both(&self, ms: i64) {
        self.r.app.clock.advance(ms);
        self.control("clock", &json!({"advance_ms": ms})).await;
    }

    /// Moves both clocks forward to the next time it is `hour`:`minute` in China.
    pub async fn advance_to_china(&self, hour: i64, minute: i64) {
        let now = self.r.app.clock.now_ms();
        let of_day = (now + 8 * 3_600_000).rem_euclid(DAY_MS);
        let want = (hour * 60 + minute) * 60_000;
        self.advance_both((want - of_day).rem_euclid(DAY_MS).max(1))
            .await;
    }
}

/// One run of the orderSync schedule, as its 5-minute trigger makes it: its report.
pub async fn run_schedule(r: &Running) -> Value {
    use wxshop::handlers::order_sync::{on_schedule, LOCAL_SCHEDULE_BUDGET};
    on_schedule(&r.app, wxshop::time::Deadline::after(LOCAL_SCHEDULE_BUDGET)).await
}

/// WeChat's own record of an order (`shop/order/get`, through the app's client).
pub async fn wx_order(r: &Running, no: &str) -> wxshop::shop::order::OrderInfo {
    let no = OutTradeNo::parse(no.to_owned()).unwrap();
    let order = wxshop::store::repo::get_order(r.app.store.as_ref(), &no)
        .await
        .unwrap()
        .unwrap()
        .value;
    r.app
        .wx
        .order_get(
            &wxshop::shop::types::OrderKey::Out(no.to_string()),
            order.openid.as_str(),
        )
        .await
        .unwrap()
}

/// Polls `f` 20 ms apart until it holds, giving up once it has been polled 300 times AND
/// 20 s have passed: the wait of the `e2e_*` files, which import it as `eventually`. (It used
/// to give up after the 300 polls alone — 6 s plus what `f` takes — which a CI host running
/// every test binary at once can outlast; the name stays for the files that import it.)
pub async fn eventually_in_300_polls<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    const AT_LEAST: Duration = Duration::from_secs(20);
    let start = Instant::now();
    let mut polls = 0;
    while polls < 300 || start.elapsed() < AT_LEAST {
        if f().await {
            return;
        }
        polls += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "timed out waiting for {what} ({polls} polls, {:?})",
        start.elapsed()
    );
}

/// Polls `f` every 25 ms until it holds or `limit` passes — never less than 20 s: `limit` is
/// how long the wait should take on a quiet machine, and a CI host running every test binary
/// at once can take several times that (a wait is not a measure of speed; tests that bound
/// how long something takes measure it themselves).
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let limit = limit.max(Duration::from_secs(20));
    let start = Instant::now();
    while start.elapsed() < limit {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

pub struct Notice<'a> {
    pub appid: &'a str,
    pub mch_id: &'a str,
    pub sub_appid: Option<&'a str>,
    pub sub_mch_id: Option<&'a str>,
    pub api_key: &'a str,
    pub openid: &'a str,
    pub no: &'a str,
    pub total: i64,
    pub txid: &'a str,
}

/// A correctly signed payment notification as WeChat Pay sends it.
pub fn signed_notification(n: &Notice<'_>) -> String {
    build_payment_notification(
        &PaymentNotificationSpec {
            appid: n.appid.to_owned(),
            mch_id: n.mch_id.to_owned(),
            sub_appid: n.sub_appid.map(str::to_owned),
            sub_mch_id: n.sub_mch_id.map(str::to_owned),
            openid: OpenId::parse(n.openid).unwrap(),
            out_trade_no: OutTradeNo::parse(n.no).unwrap(),
            transaction_id: n.txid.to_owned(),
            total_fee: Fen::new(n.total).unwrap(),
            time_end_ms: 1_700_000_000_000,
            attach: None,
            sign_type: SignType::Md5,
            omit_sign_type: false,
        },
        n.api_key,
    )
}

/// A notification for our own merchant (the stack's configuration).
pub fn notification(r: &Running, no: &str, openid: &str, total: i64, txid: &str) -> String {
    let cfg = &r.app.config;
    signed_notification(&Notice {
        appid: &cfg.appid,
        mch_id: &cfg.mch_id,
        sub_appid: cfg.sub_appid.as_deref(),
        sub_mch_id: cfg.sub_mch_id.as_deref(),
        api_key: cfg.api_key(),
        openid,
        no,
        total,
        txid,
    })
}

/// `return_code` of a WeChat Pay XML reply.
pub fn return_code(reply: &str) -> &'static str {
    if reply.contains("<return_code><![CDATA[SUCCESS]]>") {
        "SUCCESS"
    } else if reply.contains("<return_code><![CDATA[FAIL]]>") {
        "FAIL"
    } else {
        "OTHER"
    }
}

/// The `wxlocal` binary, built (incrementally) first so the test never runs a stale one.
pub fn wxlocal_bin() -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(["build", "-q", "-p", "wxlocal"])
        .current_dir(&root)
        .status()
        .expect("cargo build -p wxlocal runs");
    assert!(status.success(), "cargo build -p wxlocal failed");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    target.join("debug").join("wxlocal")
}

/// A fresh directory under the system temp dir.
pub fn temp_dir(tag: &str) -> std::path::PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let d = std::env::temp_dir().join(format!("wxshop-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A child `wxlocal serve` (stderr to `log`), with the base URL from its first stdout line.
pub fn spawn_serve(
    bin: &std::path::Path,
    store: &str,
    seed: bool,
    env: &[(&str, &str)],
    log: &std::path::Path,
) -> (std::process::Child, String) {
    let mut args = vec!["serve", "--addr", "127.0.0.1:0", "--store", store];
    if seed {
        args.push("--seed");
    }
    spawn_wxlocal(bin, &args, env, log)
}

/// A child `wxlocal` with `args` that serves (stderr to `log`), with the base URL from its
/// first stdout line; panics with the log if it exits or prints nothing within 60 s.
pub fn spawn_wxlocal(
    bin: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
    log: &std::path::Path,
) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut cmd = std::process::Command::new(bin);
    cmd.args(args);
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap(),
        );
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("wxlocal serve starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        if let Some(Ok(first)) = lines.next() {
            let _ = tx.send(first);
        }
        for _ in lines {} // keep draining so the child never blocks on stdout
    });
    let Ok(first) = rx.recv_timeout(Duration::from_secs(60)) else {
        let _ = child.kill();
        panic!(
            "wxlocal {args:?} printed no address within 60 s; log: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    };
    let base = first
        .strip_prefix("wxlocal listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_owned();
    (child, base)
}

/// What a finished run of a command showed: its exit code (`None` when it was killed, or
/// did not stop in time), stdout and stderr.
pub struct Ran {
    pub code: Option<i32>,
    pub stopped: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` (stdin empty, stdout and stderr captured) until it exits; one still running
/// after `limit` is killed (`stopped: false`).
pub fn run_to_end(mut cmd: std::process::Command, limit: Duration) -> Ran {
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("wxlocal runs");
    let read = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = pipe.read_to_string(&mut s);
            s
        })
    };
    let out = read(Box::new(child.stdout.take().unwrap()));
    let err = read(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ran {
        code: status.and_then(|s| s.code()),
        stopped: status.is_some(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Runs `wxlocal` with `args` until it exits (killed after `limit`): whether it succeeded and
/// what it wrote to stderr.
pub fn run_wxlocal(
    bin: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
    limit: Duration,
) -> (bool, String) {
    let mut cmd = std::process::Command::new(bin);
    cmd.args(args).envs(env.iter().copied());
    let ran = run_to_end(cmd, limit);
    if !ran.stopped {
        panic!(
            "wxlocal {args:?} still running after {limit:?}; stderr: {}",
            ran.stderr
        );
    }
    (ran.code == Some(0), ran.stderr)
}

/// The merchant's `upsert` of `tea` (one SKU, `tea-250g`) at `price` fen with `stock` units.
pub fn tea(title: &str, price: i64, stock: impl Into<i64>) -> Value {
    let stock: i64 = stock.into();
    json!({"action": "upsert", "product": {
        "product_id": "tea", "title": title,
        "head_img": ["https://mmecimage.cn/p/wxlocal/tea.jpg"], "third_cat_id": 6153,
        "brand_id": 2100000000,
        "skus": [{"sku_id": "tea-250g", "price": price, "market_price": 2590, "stock": stock}]
    }})
}

/// The merchant's view of product `id` (`/admin/catalogSync` `get`).
pub async fn get_product(c: &Client, id: &str) -> Value {
    let (s, v) = c
        .admin(
            "/admin/catalogSync",
            &json!({"action": "get", "product_id": id}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    v["product"].clone()
}

/// A buyer orders one `tea`: the amount charged (`total_fee`), or the refusal.
pub async fn buy_tea(c: &Client, token: &str) -> Result<i64, Value> {
    let (s, v) = c.order(token, 1, None).await;
    if s == 200 {
        Ok(v["total_fee"].as_i64().unwrap())
    } else {
        Err(v)
    }
}

/// The WeChat Pay order for our number, as the sandbox holds it: its `trade_state`.
pub async fn pay_state(c: &Client, no: &str) -> Option<String> {
    let (_, st) = c.get("/sandbox/_control/state").await;
    st["pay_orders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["out_trade_no"] == no)
        .and_then(|o| o["trade_state"].as_str())
        .map(str::to_owned)
}

/// Calls of WeChat Pay's `path` (e.g. `pay/orderquery`) about order `no` the sandbox received.
pub fn pay_calls(r: &Running, path: &str, no: &str) -> usize {
    r.sandbox
        .calls(path)
        .iter()
        .filter(|v| v["out_trade_no"] == no)
        .count()
}

/// The refunds WeChat Pay was asked for of order `no`: (out_refund_no, refund_fee), each
/// number once (a retry under the same number is the same refund), in order of number.
pub fn refunds_asked(r: &Running, no: &str) -> Vec<(String, i64)> {
    let mut refunds: Vec<(String, i64)> = r
        .sandbox
        .calls("secapi/pay/refund")
        .into_iter()
        .filter(|v| v["out_trade_no"] == no)
        .map(|v| {
            let fee = &v["refund_fee"];
            let fee = fee
                .as_i64()
                .or_else(|| fee.as_str().and_then(|s| s.parse().ok()))
                .unwrap();
            (v["out_refund_no"].as_str().unwrap().to_owned(), fee)
        })
        .collect();
    refunds.sort();
    refunds.dedup();
    refunds
}

/// Reads of the component order `no` (`shop/order/get`) the sandbox received.
pub fn component_reads(r: &Running, no: &str) -> usize {
    r.sandbox
        .calls("shop/order/get")
        .iter()
        .filter(|v| v["out_order_id"] == no)
        .count()
}

/// A direct order closed here whose WeChat Pay order the close task closes: within `wait`
/// WeChat Pay reads it CLOSED, its cashier refuses a payment (409), and the close task is done
/// (its `shop/order/pay` call made) with nothing dead-lettered.
pub async fn closed_at_wechat_pay(r: &Running, c: &Client, no: &str, wait: Duration) {
    eventually("the WeChat Pay order closed", wait, || async {
        pay_state(c, no).await.as_deref() == Some("CLOSED")
    })
    .await;
    let (s, v) = c
        .post("/sandbox/_control/pay", None, &json!({"out_trade_no": no}))
        .await;
    assert_eq!(s, 409, "WeChat's cashier no longer takes it: {v}");
    eventually(
        "the close task done, nothing dead-lettered",
        wait,
        || async {
            c.dead_letters().await.is_empty()
                && r.sandbox
                    .calls("shop/order/pay")
                    .iter()
                    .any(|v| v["out_order_id"] == no)
        },
    )
    .await;
}

/// Stores a product record `id` that cannot be read as a product (written by another version,
/// or damaged), indexed under `status` (`APPROVED`, `AUDITING`, `ON_SALE`…) as the catalog's
/// records are: raw bytes through the stack's own store.
pub async fn store_unreadable_product(r: &Running, id: &str, status: &str) {
    use wxshop::store::{Expect, Kind, Record, Write};
    let mut rec = Record::new(
        Kind::Product,
        id,
        format!(r#"{{"product_id": "{id}", "title": 42"#),
    );
    rec.owner = Some(wxshop::store::repo::PRODUCTS_OWNER.to_owned());
    rec.status = Some(status.to_owned());
    r.app
        .store
        .write(vec![Write::Put {
            record: rec,
            expect: Expect::Absent,
        }])
        .await
        .unwrap();
}

/// The ids of the products the mini program's shop lists (`/fn/catalogSync` `products`, one
/// page of 100), in its order.
pub async fn shop_ids(c: &Client, token: &str) -> Vec<String> {
    let (s, v) = c
        .post(
            "/fn/catalogSync",
            Some(token),
            &json!({"action": "products", "limit": 100}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    v["products"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["product_id"].as_str().unwrap().to_owned())
        .collect()
}

/// GIVEN the seeded tea, WeChat's audits by hand: the merchant edits tea's title (an edit under
/// audit), WeChat approves it and its push is lost (the stack's push URL unset).
pub async fn tea_edit_approved_push_lost(r: &Running, c: &Client) {
    r.sandbox.set_auto_audit(false);
    let stock = c.stock().await;
    let (s, v) = c
        .admin(
            "/admin/catalogSync",
            &tea("Longjing green tea 250 g, autumn", 2300, stock as u32),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["product"]["edit"]["audit"], "AUDITING", "{v}");
    r.sandbox.set_push_url(None);
    let (s, v) = c
        .post(
            "/sandbox/_control/audit",
            None,
            &json!({"out_product_id": "tea", "approve": true}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
}

/// The freight order of `e2e_freight_back` and `e2e_merchant_refund`: one tea (1,990, of which
/// [`TWO_LINES_FREIGHT`] is freight once [`tea_carries_freight`] wrote it) and two cups at 500.
pub const TWO_LINES_FREIGHT: i64 = 500;
/// What the freight order costs in all: the tea and two cups.
pub const TWO_LINES_TOTAL: i64 = 1990 + 2 * 500;

/// `user` buys one tea and two cups and pays at the sandbox's cashier; the stored order then
/// charges [`TWO_LINES_FREIGHT`] of its total. With the component on, returns once WeChat's
/// component order reads paid (20); off, once the order reads PAID: (token, out_trade_no).
pub async fn two_lines_with_freight(
    r: &Running,
    c: &InProcess<'_>,
    user: &str,
    component: bool,
) -> (String, String) {
    const WAIT: Duration = Duration::from_secs(30);
    c.listed_product("cup", "cup-1", 500).await;
    let (token, _) = c.login(user).await;
    let (s, order) = c
        .post(
            "/fn/unifiedOrder",
            Some(&token),
            &json!({"items": [{"product_id": "tea", "sku_id": "tea-250g", "quantity": 1},
                              {"product_id": "cup", "sku_id": "cup-1", "quantity": 2}],
                    "address": {"receiver_name": "A", "detailed_address": "1 Road",
                                "tel_number": "13800000000"}}),
        )
        .await;
    assert_eq!(s, 200, "{order}");
    assert_eq!(order["total_fee"], TWO_LINES_TOTAL, "{order}");
    let no = order["out_trade_no"].as_str().unwrap().to_owned();
    c.pay_at_sandbox(&no).await;
    if component {
        eventually("WeChat's component order paid (20)", WAIT, || async {
            wx_order(r, &no).await.status == 20
        })
        .await;
    } else {
        eventually("the order PAID", WAIT, || async {
            c.status(&token, &no).await["status"] == "PAID"
        })
        .await;
    }
    tea_carries_freight(r, &no, TWO_LINES_FREIGHT).await;
    let order = c.status(&token, &no).await;
    assert_eq!(
        (&order["total_fee"], &order["freight"]),
        (&json!(TWO_LINES_TOTAL), &json!(TWO_LINES_FREIGHT)),
        "{order}"
    );
    (token, no)
}

/// The stored order `no` charges `freight` of its total: its one tea's unit price less it, the
/// total unchanged (a version-checked write, retried on a conflict) — an order with freight,
/// which nothing in the catalog charges yet.
pub async fn tea_carries_freight(r: &Running, no: &str, freight: i64) {
    use wxshop::store::repo;
    let store = r.app.store.as_ref();
    let no = OutTradeNo::parse(no.to_owned()).unwrap();
    let freight = Fen::new(freight).unwrap();
    for _ in 0..50 {
        let current = repo::get_order(store, &no).await.unwrap().unwrap();
        let mut next = current.value.clone();
        let tea = next
            .items
            .iter_mut()
            .find(|i| i.product_id.as_str() == "tea")
            .unwrap();
        assert_eq!(tea.quantity, 1);
        tea.unit_price = tea.unit_price.checked_sub(freight).unwrap();
        next.freight = freight;
        let mut batch = repo::Batch::new();
        batch.update_order(&current, &next);
        match batch.commit(store).await {
            Ok(()) => return,
            Err(e) if e.is_conflict() => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("{e}"),
        }
    }
    panic!("could not give order {no} freight");
}

// ------------------------------------------------------------------ DynamoDB (moto)

/// moto's server (a local DynamoDB-compatible endpoint) serving one request at a time, as
/// `shared/tests/store_dynamo.rs` runs it: its threaded server checks a condition and writes
/// unlocked, so two conditional writes could both win, which DynamoDB never lets happen.
/// Killed on drop; also ends by itself when this process does (it watches its stdin, whose
/// other end only this process holds), so one kept in a `static` for a whole test file does
/// not outlive it.
pub struct Moto {
    child: std::process::Child,
    pub endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const MOTO_ONE_AT_A_TIME: &str = "import os, sys, threading
def watch_parent():
    sys.stdin.read()
    os._exit(0)
threading.Thread(target=watch_parent, daemon=True).start()
from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple
run_simple(sys.argv[1], int(sys.argv[2]), DomainDispatcherApplication(create_backend_app), \
threaded=False)
";

/// Starts moto's server on 127.0.0.1 at a free port (`scripts/ensure-moto.sh` installs it
/// when missing; `WXSHOP_PYTHON` names the Python) and waits until it listens (30 s at most).
pub fn start_moto() -> Moto {
    use std::process::{Command, Stdio};
    let ensure = Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../scripts/ensure-moto.sh"
        ))
        .status()
        .expect("run scripts/ensure-moto.sh");
    assert!(ensure.success(), "scripts/ensure-moto.sh failed");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(std::env::var("WXSHOP_PYTHON").unwrap_or_else(|_| "python3".into()))
        .args(["-c", MOTO_ONE_AT_A_TIME, "127.0.0.1", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start moto");
    let mut moto = Moto {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = moto.child.try_wait() {
            panic!("moto exited with {status} before it listened");
        }
        assert!(Instant::now() < deadline, "moto did not listen within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    moto
}

/// A fresh DynamoDB table on `moto`, made as production's (`infra/template.yaml`: the `pk`
/// hash key, `gsi1`/`gsi2` projecting every attribute, the stream, TTL on `ttl`): its name,
/// `wxshop-{tag}-{pid}-{nanos}`. Tried up to 5 times: on a loaded host moto can take longer
/// than the store's 3 s timeout to create a table with two GSIs (seen in `store_dynamo`); a
/// creation that went through before its answer timed out is kept by the next try.
pub async fn dynamodb_table(moto: &Moto, tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let table = format!("wxshop-{tag}-{}-{nanos}", std::process::id());
    let store = wxshop::store::dynamo::DynamoStore::connect(&table, Some(&moto.endpoint))
        .await
        .unwrap();
    let mut failed = Vec::new();
    for _ in 0..5 {
        match store.create_table().await {
            Ok(()) => return table,
            Err(e) => failed.push(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("cannot create the table {table} on moto: {failed:?}");
}

/// A store call a [`HoldsOnce`] may hold: a `get` of (`kind`, `id`), or a `query`.
pub enum StoreCall<'a> {
    Get(wxshop::store::Kind, &'a str),
    Query(&'a wxshop::store::Query),
}

/// Which call a [`HoldsOnce`] holds: `true` for the one (asked of each call until then).
pub type PicksACall = Box<dyn FnMut(StoreCall<'_>) -> bool + Send>;

/// A store around the app's that holds, once, the first call `at` picks, telling `reached`
/// and waiting (bounded) for `release`; every other call passes. Held *before* the call runs
/// (it then sees what was written meanwhile) or *after* it (its answer is stale by the time the
/// request acts on it): the two ends of a request's race with another. Installed on a copy of
/// the running app (`app.store = held.clone()`) driven with `wxshop::handlers::handle`, it
/// stops one request between its reads while the test makes another commit — deterministic,
/// no luck.
pub struct HoldsOnce {
    inner: wxshop::store::DynStore,
    at: std::sync::Mutex<PicksACall>,
    after: bool,
    armed: std::sync::atomic::AtomicBool,
    pub reached: tokio::sync::Notify,
    pub release: tokio::sync::Notify,
}

impl HoldsOnce {
    /// Holds the first call `at` picks before it runs.
    pub fn before(
        inner: wxshop::store::DynStore,
        at: impl FnMut(StoreCall<'_>) -> bool + Send + 'static,
    ) -> std::sync::Arc<Self> {
        Self::new(inner, at, false)
    }

    /// Holds the answer of the first call `at` picks.
    pub fn after(
        inner: wxshop::store::DynStore,
        at: impl FnMut(StoreCall<'_>) -> bool + Send + 'static,
    ) -> std::sync::Arc<Self> {
        Self::new(inner, at, true)
    }

    fn new(
        inner: wxshop::store::DynStore,
        at: impl FnMut(StoreCall<'_>) -> bool + Send + 'static,
        after: bool,
    ) -> std::sync::Arc<Self> {
        std::sync::Arc::new(HoldsOnce {
            inner,
            at: std::sync::Mutex::new(Box::new(at)),
            after,
            armed: std::sync::atomic::AtomicBool::new(true),
            reached: tokio::sync::Notify::new(),
            release: tokio::sync::Notify::new(),
        })
    }

    /// Waits (bounded) until the picked call is held.
    pub async fn wait_reached(&self) {
        tokio::time::timeout(Duration::from_secs(30), self.reached.notified())
            .await
            .expect("the held request reached the call it is held at");
    }

    /// Lets the held call go.
    pub fn let_go(&self) {
        self.release.notify_one();
    }

    /// Whether `call` is the one to hold (once).
    fn picks(&self, call: StoreCall<'_>) -> bool {
        use std::sync::atomic::Ordering;
        self.armed.load(Ordering::SeqCst)
            && (self.at.lock().unwrap())(call)
            && self.armed.swap(false, Ordering::SeqCst)
    }

    async fn hold(&self) {
        let released = self.release.notified();
        self.reached.notify_one();
        tokio::time::timeout(Duration::from_secs(30), released)
            .await
            .expect("the held call let go in time");
    }
}

#[async_trait::async_trait]
impl wxshop::store::Store for HoldsOnce {
    async fn get(
        &self,
        kind: wxshop::store::Kind,
        id: &str,
    ) -> Result<Option<wxshop::store::Record>, wxshop::store::StoreError> {
        let held = self.picks(StoreCall::Get(kind, id));
        if held && !self.after {
            self.hold().await;
        }
        let got = self.inner.get(kind, id).await;
        if held && self.after {
            self.hold().await;
        }
        got
    }

    async fn write(
        &self,
        writes: Vec<wxshop::store::Write>,
    ) -> Result<(), wxshop::store::StoreError> {
        self.inner.write(writes).await
    }

    async fn query(
        &self,
        query: wxshop::store::Query,
    ) -> Result<wxshop::store::Page, wxshop::store::StoreError> {
        let held = self.picks(StoreCall::Query(&query));
        if held && !self.after {
            self.hold().await;
        }
        let got = self.inner.query(query).await;
        if held && self.after {
            self.hold().await;
        }
        got
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
}

/// `body` POSTed to `path` through `app` — a copy of the running app, e.g. with a
/// [`HoldsOnce`] store — in-process, on a task of its own; `bearer` as its authorization.
pub fn spawn_post(
    app: wxshop::app::App,
    path: &str,
    bearer: Option<&str>,
    body: String,
) -> tokio::task::JoinHandle<wxshop::http::Response> {
    let route = wxshop::handlers::find_route("POST", path).unwrap();
    let mut req = http::Request::builder().method("POST").uri(path);
    if let Some(token) = bearer {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let req = req.body(bytes::Bytes::from(body)).unwrap();
    tokio::spawn(async move { wxshop::handlers::handle(&app, route, req).await })
}

/// The refund notification WeChat Pay sends for refund `out_refund_no` (`refund_id`) of `fee`
/// of order `no` — one tea (1,990) — encrypted with our key as WeChat does; it carries a
/// success time only when `status` is `SUCCESS`.
pub fn tea_refund_notification(
    r: &Running,
    no: &str,
    out_refund_no: &str,
    txid: &str,
    refund_id: &str,
    fee: i64,
    status: wxshop::pay::types::RefundStatus,
) -> String {
    use wxshop::domain::OutRefundNo;
    let cfg = &r.app.config;
    let success = status == wxshop::pay::types::RefundStatus::Success;
    wxshop::pay::refund_notify::build_refund_notification(
        &wxshop::pay::refund_notify::RefundNotificationSpec {
            appid: cfg.appid.clone(),
            mch_id: cfg.mch_id.clone(),
            sub_appid: None,
            sub_mch_id: None,
            out_trade_no: OutTradeNo::parse(no).unwrap(),
            out_refund_no: OutRefundNo::parse(out_refund_no).unwrap(),
            transaction_id: txid.to_owned(),
            refund_id: refund_id.to_owned(),
            total_fee: Fen::new(1990).unwrap(),
            refund_fee: Fen::new(fee).unwrap(),
            success_time_ms: success.then_some(1_700_000_000_000),
            refund_status: status,
        },
        cfg.api_key(),
    )
}

/// The events the merchant is shown under `source` (`/admin/orderSync` `events`).
pub async fn events(c: &InProcess<'_>, source: &str) -> Vec<Value> {
    let (s, v) = c
        .admin(
            "/admin/orderSync",
            &json!({"action": "events", "source": source}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    v["events"].as_array().cloned().unwrap_or_default()
}
