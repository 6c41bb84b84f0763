//! The whole local stack in-process: `wxlocal::gateway::start` (gateway, handlers, store,
//! outbox relay, WeChat sandbox), then `--purchases` purchases by `--concurrency` clients over
//! loopback HTTP, each: sandbox login code → `/fn/login` → `/fn/unifiedOrder` (which adds the
//! order to the trading component) → the user pays (`/sandbox/_control/pay`) → the signed
//! notification is acknowledged → the outbox relay's `shop/order/pay` reaches the sandbox.
//!
//! Latency per purchase is login → notification acknowledged; the run's clock stops when
//! every `shop/order/pay` has arrived. CPU time is this process's (user + system), which
//! includes the sandbox and the HTTP clients, so it overstates what wxshop alone costs.

use crate::stats::{ms, percentile, process_cpu};
use reqwest::Url;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wxlocal::gateway::{start, Options, Running};

pub fn run(args: &[String]) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(bench(args))
}

async fn post(
    http: &reqwest::Client,
    url: &Url,
    token: Option<&str>,
    body: Value,
) -> Result<Value, String> {
    let mut rb = http.post(url.clone()).json(&body);
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    let resp = rb.send().await.map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{url}: {status} {text}"));
    }
    serde_json::from_str(&text).map_err(|e| format!("{url}: {e}: {text}"))
}

/// The demo catalog, with enough stock for any run.
async fn seed(r: &Running, http: &reqwest::Client, stock: u64) -> Result<(), String> {
    let url = endpoint(r, "/admin/catalogSync")?;
    let tok = Some(r.admin_token.as_str());
    post(http, &url, tok, json!({
        "action": "upsert",
        "product": {
            "product_id": "tea", "title": "Longjing green tea 250 g",
            "head_img": ["https://mmecimage.cn/p/wxlocal/tea.jpg"], "third_cat_id": 6153, "brand_id": 2100000000,
            "skus": [{ "sku_id": "tea-250g", "price": 1990, "market_price": 2590, "stock": stock }]
        }
    }))
    .await?;
    for _ in 0..400 {
        let p = post(
            http,
            &url,
            tok,
            json!({"action": "get", "product_id": "tea"}),
        )
        .await?;
        if p["product"]["audit"] == "APPROVED" {
            post(
                http,
                &url,
                tok,
                json!({"action": "listing", "product_id": "tea"}),
            )
            .await?;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err("the product was not approved within 10 s".into())
}

/// `r.base_url` + `path`, parsed.
fn endpoint(r: &Running, path: &str) -> Result<Url, String> {
    let text = format!("{}{path}", r.base_url);
    Url::parse(&text).map_err(|e| format!("{text}: {e}"))
}

/// The URLs a purchase calls, parsed once for the run: each client request then hands reqwest
/// a parsed URL (it would parse a string again for every request).
struct Endpoints {
    login_code: Url,
    login: Url,
    order: Url,
    pay: Url,
}

impl Endpoints {
    fn of(r: &Running) -> Result<Endpoints, String> {
        Ok(Endpoints {
            login_code: endpoint(r, "/sandbox/_control/login")?,
            login: endpoint(r, "/fn/login")?,
            order: endpoint(r, "/fn/unifiedOrder")?,
            pay: endpoint(r, "/sandbox/_control/pay")?,
        })
    }
}

async fn purchase(
    r: &Running,
    http: &reqwest::Client,
    at: &Endpoints,
    user: &str,
) -> Result<String, String> {
    let code = post(http, &at.login_code, None, json!({ "user": user })).await?;
    let code = code["code"].as_str().ok_or("no code")?.to_owned();
    let login = post(http, &at.login, None, json!({ "code": code })).await?;
    let token = login["token"].as_str().ok_or("no token")?.to_owned();
    let order = post(
        http,
        &at.order,
        Some(&token),
        json!({
            "address": {"receiver_name": "Bench", "detailed_address": "1 Tea Street, Hangzhou", "tel_number": "13800000000"},
            "items": [{"product_id": "tea", "sku_id": "tea-250g", "quantity": 1}],
            "scene": 1177, "idempotency_key": user
        }),
    )
    .await?;
    let no = order["out_trade_no"]
        .as_str()
        .ok_or_else(|| format!("no out_trade_no: {order}"))?
        .to_owned();
    post(http, &at.pay, None, json!({ "out_trade_no": no })).await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while r.sandbox.notifications_delivered(&no) == 0 {
        if Instant::now() > deadline {
            return Err(format!("{no}: notification not acknowledged within 20 s"));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(no)
}

async fn bench(args: &[String]) -> Result<(), String> {
    let total: usize = crate::num(args, "--purchases", 2000);
    let conc: usize = crate::num(args, "--concurrency", 16).max(1);
    let store = crate::arg(args, "--store", "memory");
    let relay_ms: u64 = crate::num(args, "--relay-ms", 10);
    if crate::flag(args, "--logs") {
        crate::callback::sink_logs();
    }
    let r = start(Options {
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        store: Some(store.clone()),
        seed: false,
        time_scale: 0.001,
        overrides: Default::default(),
        use_env: false,
        relay_every: Duration::from_millis(relay_ms),
        schedule_every: Some(Duration::from_secs(60)),
        metrics: Default::default(),
    })
    .await?;
    let r = Arc::new(r);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(conc * 2)
        .build()
        .map_err(|e| e.to_string())?;
    seed(&r, &http, 10_000_000).await?;
    // The run counts every `shop/order/pay` call it makes: the sandbox's call log keeps them
    // all (by default only the most recent `LOG_CAP`).
    r.sandbox.set_log_cap(usize::MAX);
    let synced_before = r.sandbox.calls("shop/order/pay").len();

    let at = Arc::new(Endpoints::of(&r)?);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let cpu0 = process_cpu();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..conc {
        let (r, http, at, next) = (r.clone(), http.clone(), at.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, String>(lat);
                }
                let t = Instant::now();
                purchase(&r, &http, &at, &format!("bench-{w}-{i}")).await?;
                lat.push(t.elapsed());
            }
        }));
    }
    let mut lat = Vec::with_capacity(total);
    for t in tasks {
        lat.extend(t.await.map_err(|e| e.to_string())??);
    }
    let paid_at = t0.elapsed();
    // Bounded wait for the relay's shop/order/pay of every order.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let synced = r.sandbox.calls("shop/order/pay").len() - synced_before;
        if synced >= total {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "only {synced} of {total} orders synced within 60 s"
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = t0.elapsed();
    let cpu = process_cpu().zip(cpu0).map(|(a, b)| a.saturating_sub(b));
    println!(
        "{}",
        json!({
            "bench": "stack", "store": store, "purchases": total, "concurrency": conc,
            "relay_ms": relay_ms,
            "purchases_per_sec": total as f64 / elapsed.as_secs_f64(),
            "secs_to_all_paid": paid_at.as_secs_f64(),
            "secs_to_all_synced": elapsed.as_secs_f64(),
            "p50_ms": ms(percentile(&mut lat, 50.0)),
            "p99_ms": ms(percentile(&mut lat, 99.0)),
            "cpu_ms_per_purchase": cpu.map(|c| c.as_secs_f64() * 1e3 / total as f64),
        })
    );
    r.stop();
    Ok(())
}
