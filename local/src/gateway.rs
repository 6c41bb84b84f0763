//! The local gateway: one process with every function behind the same routing table the SAM
//! template is tested against (`wxshop::handlers::ROUTES`), the WeChat sandbox mounted at
//! `/sandbox`, the outbox relay (what the DynamoDB stream does in AWS) and the schedule.
//!
//! Configuration comes from the same environment variables as Lambda; anything unset gets
//! a documented local default that points every WeChat call at the sandbox.

use crate::sandbox::{Sandbox, SandboxConfig};
use axum::body::Body;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::Router;
use bytes::Bytes;
use http_body_util::BodyExt;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use wxshop::app::{open_store, App};
use wxshop::config::Config;
use wxshop::handlers::{self, Caller};
use wxshop::http::ApiError;
use wxshop::time::Clock;

/// Largest request body the gateway passes on (API Gateway's own limit is 10 MB; nothing of
/// ours needs more than a few KiB).
pub const MAX_BODY: usize = 1024 * 1024;

/// Local defaults: never real credentials.
pub const LOCAL_DEFAULTS: &[(&str, &str)] = &[
    ("WX_APPID", "wx0000000000000001"),
    ("WX_APPSECRET", "local-appsecret-0000000000000001"),
    ("WXPAY_MCH_ID", "1900000001"),
    ("WXPAY_API_KEY", "localapikey000000000000000000001"),
    ("SESSION_SECRET", "local-session-secret-000000000000000000"),
    ("WX_PUSH_TOKEN", "localpushtoken"),
    ("WX_TRADING_COMPONENT", "always"),
    ("ADMIN_TOKEN", "local-admin-token"),
];

pub struct Options {
    pub addr: SocketAddr,
    /// `sqlite:PATH`, `memory` (default from `STORE`, else `sqlite:.wxlocal/wxshop.db`).
    pub store: Option<String>,
    /// Create the demo catalog (`tea` / `tea-250g`, 1990 fen).
    pub seed: bool,
    /// Sandbox time scale (1.0 real time).
    pub time_scale: f64,
    /// Extra variables that win over the environment (tests).
    pub overrides: HashMap<String, String>,
    /// Read the process environment (off in tests for isolation).
    pub use_env: bool,
    /// How often the outbox relay looks for due work.
    pub relay_every: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            addr: SocketAddr::from(([127, 0, 0, 1], 8787)),
            store: None,
            seed: false,
            time_scale: 1.0,
            overrides: HashMap::new(),
            use_env: true,
            relay_every: Duration::from_millis(100),
        }
    }
}

/// A running local stack.
pub struct Running {
    pub base_url: String,
    pub addr: SocketAddr,
    pub app: App,
    pub sandbox: Sandbox,
    pub admin_token: String,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops serving and the background loops.
    pub fn stop(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }

    /// Waits until the server task ends (never, unless stopped).
    pub async fn wait(mut self) {
        if let Some(server) = self.tasks.pop() {
            let _ = server.await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Clone)]
struct GatewayState {
    app: App,
    admin_token: Arc<String>,
}

/// Binds, builds the app and the sandbox, seeds if asked, and serves in the background.
pub async fn start(opts: Options) -> Result<Running, String> {
    let listener = tokio::net::TcpListener::bind(opts.addr)
        .await
        .map_err(|e| {
            format!(
                "cannot listen on {}: {e} (is another wxlocal running? try --addr 127.0.0.1:0)",
                opts.addr
            )
        })?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let base_url = format!("http://{addr}");

    let mut vars: HashMap<String, String> = LOCAL_DEFAULTS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    vars.insert("WXPAY_BASE_URL".into(), format!("{base_url}/sandbox/mch"));
    vars.insert("WX_API_BASE_URL".into(), format!("{base_url}/sandbox/api"));
    vars.insert(
        "WXPAY_NOTIFY_URL".into(),
        format!("{base_url}/callbacks/pay"),
    );
    vars.insert("STORE".into(), "sqlite:.wxlocal/wxshop.db".into());
    if opts.use_env {
        for (k, _) in LOCAL_DEFAULTS.iter().chain(
            [
                ("STORE", ""),
                ("WX_PUSH_AES_KEY", ""),
                ("WXPAY_SIGN_TYPE", ""),
                ("WXPAY_SUB_MCH_ID", ""),
                ("WXPAY_SUB_APPID", ""),
                ("WX_FUND_TYPE", ""),
                ("ORDER_TTL_SECS", ""),
            ]
            .iter(),
        ) {
            if let Ok(v) = std::env::var(k) {
                vars.insert(k.to_string(), v);
            }
        }
    }
    if let Some(s) = &opts.store {
        vars.insert("STORE".into(), s.clone());
    }
    vars.extend(opts.overrides.clone());
    if let Some(path) = vars.get("STORE").and_then(|s| s.strip_prefix("sqlite:")) {
        if let Some(dir) = std::path::Path::new(path)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
    }
    let config = Config::from_lookup(|k| vars.get(k).cloned()).map_err(|e| e.to_string())?;
    let store = open_store(&config.store)
        .await
        .map_err(|e| format!("cannot open the store: {e}"))?;
    let admin_token = vars.get("ADMIN_TOKEN").cloned().unwrap_or_default();
    let sandbox = Sandbox::new(SandboxConfig {
        appid: config.appid.clone(),
        appsecret: secrecy::ExposeSecret::expose_secret(&config.appsecret).to_owned(),
        mch_id: config.mch_id.clone(),
        api_key: config.api_key().to_owned(),
        sub_mch_id: config.sub_mch_id.clone(),
        sub_appid: config.sub_appid.clone(),
        push_url: Some(format!("{base_url}/callbacks/wechat")),
        push_token: secrecy::ExposeSecret::expose_secret(&config.push_token).to_owned(),
        push_aes_key: config
            .push_aes_key
            .as_ref()
            .map(|k| secrecy::ExposeSecret::expose_secret(k).to_owned()),
        time_scale: opts.time_scale,
        auto_audit: true,
        refund_interval_ms: crate::sandbox::mch::REFUND_INTERVAL_MS,
    });
    let app = App::new(config, store, Clock::default()).map_err(|e| e.to_string())?;

    let state = GatewayState {
        app: app.clone(),
        admin_token: Arc::new(admin_token.clone()),
    };
    let functions: Router = Router::new().fallback(gateway).with_state(state);
    let router = Router::new()
        .nest("/sandbox", sandbox.router())
        .fallback_service(functions);

    let mut tasks = Vec::new();
    // Outbox relay: in AWS the table's stream triggers orderSync; here we poll.
    let relay_app = app.clone();
    let every = opts.relay_every;
    tasks.push(tokio::spawn(async move {
        loop {
            if let Err(e) = handlers::order_sync::drain(&relay_app, 200).await {
                tracing::warn!(error = %e, "outbox relay");
            }
            tokio::time::sleep(every).await;
        }
    }));
    // The schedule (EventBridge rate(5 minutes) in AWS), a minute here.
    let sched_app = app.clone();
    tasks.push(tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            let report = handlers::order_sync::on_schedule(&sched_app).await;
            tracing::info!(%report, "schedule ran");
        }
    }));
    tasks.push(tokio::spawn(async move {
        if let Err(e) = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        {
            tracing::error!(error = %e, "server stopped");
        }
    }));

    let running = Running {
        base_url,
        addr,
        app,
        sandbox,
        admin_token,
        tasks,
    };
    if opts.seed {
        seed(&running).await?;
    }
    Ok(running)
}

/// Routes one request through `ROUTES` to the shared handlers.
async fn gateway(
    State(state): State<GatewayState>,
    req: axum::extract::Request,
) -> axum::response::Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let Some(route) = handlers::find_route(parts.method.as_str(), &path) else {
        let any_method = handlers::ROUTES.iter().any(|r| r.path == path);
        let err = if any_method {
            ApiError::new(
                http::StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                format!("{} is not allowed on {path}", parts.method),
            )
        } else {
            ApiError::not_found(
                "NO_SUCH_ROUTE",
                format!("no function at {path}; see the routes in README"),
            )
        };
        return to_axum(err.into_response());
    };
    if route.caller == Caller::Admin {
        let given = parts
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok = given.is_some_and(|g| {
            !state.admin_token.is_empty()
                && constant_time_eq(g.as_bytes(), state.admin_token.as_bytes())
        });
        if !ok {
            tracing::warn!(
                security = true,
                path,
                "admin route without valid authorisation"
            );
            return to_axum(
                ApiError::unauthenticated("admin routes need Authorization: Bearer $ADMIN_TOKEN")
                    .into_response(),
            );
        }
    }
    let bytes: Bytes = match http_body_util::Limited::new(body, MAX_BODY).collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => {
            return to_axum(
                ApiError::new(
                    http::StatusCode::PAYLOAD_TOO_LARGE,
                    "BODY_TOO_LARGE",
                    format!("request body is over {MAX_BODY} bytes"),
                )
                .into_response(),
            )
        }
    };
    let mut req = http::Request::from_parts(parts, bytes);
    // The TCP peer, as API Gateway's `sourceIp`: what `spbill_create_ip` is made of.
    if let Some(peer) = req
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
    {
        req.extensions_mut().insert(wxshop::http::PeerIp(peer));
    }
    // Run to the end even if the caller hangs up, as Lambda does: a handler dropped halfway
    // would leave its work half done (an order created, its idempotency key never completed),
    // so a client's retry after its own timeout would meet "in progress" and then a second order.
    let app = state.app.clone();
    match tokio::spawn(async move { handlers::handle(&app, route, req).await }).await {
        Ok(resp) => to_axum(resp),
        Err(e) => to_axum(ApiError::internal(format!("handler failed: {e}")).into_response()),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn to_axum(resp: http::Response<Bytes>) -> axum::response::Response {
    let (parts, body) = resp.into_parts();
    axum::response::Response::from_parts(parts, Body::from(body)).into_response()
}

/// The demo catalog, created the way a merchant would: upload (audited by the sandbox, which
/// pushes the verdict to `/callbacks/wechat`), then list.
pub async fn seed(r: &Running) -> Result<(), String> {
    let client = reqwest::Client::new();
    let admin = |body: serde_json::Value| {
        let client = client.clone();
        let url = format!("{}/admin/catalogSync", r.base_url);
        let token = r.admin_token.clone();
        async move {
            let resp = client
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = resp.status();
            let text = resp.text().await.map_err(|e| e.to_string())?;
            if !status.is_success() {
                return Err(format!("seeding failed: {status} {text}"));
            }
            serde_json::from_str::<serde_json::Value>(&text).map_err(|e| e.to_string())
        }
    };
    admin(serde_json::json!({
        "action": "upsert",
        "product": {
            "product_id": "tea", "title": "Longjing green tea 250 g",
            "head_img": ["https://mmecimage.cn/p/wxlocal/tea.jpg"], "third_cat_id": 6153, "brand_id": 2100000000,
            "skus": [{ "sku_id": "tea-250g", "price": 1990, "market_price": 2590, "stock": 1000 }]
        }
    }))
    .await?;
    // Wait (bounded) for the audit verdict to land, then list: WeChat lists approved
    // products only.
    for _ in 0..200 {
        let p = admin(serde_json::json!({ "action": "get", "product_id": "tea" })).await?;
        if p["product"]["audit"] == "APPROVED" {
            admin(serde_json::json!({ "action": "listing", "product_id": "tea" })).await?;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err("seeding: the product's audit was not approved within 10 s".into())
}
