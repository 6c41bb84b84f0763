//! `payCallback` end to end in-process: an [`App`] on SQLite (file, WAL) or `:memory:`,
//! `n` PREPAID orders, then one signed notification each through `wxshop::handlers::handle`
//! (verify, merchant and amount checks, conditional transition + outbox entry, `SUCCESS`),
//! one at a time or `--concurrency N` in flight (as WeChat notifies many orders at once).
//! WeChat URLs point at a closed loopback port: this path makes no outbound call.

use crate::stats::{percentile, us};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;
use wxshop::app::{open_store, App};
use wxshop::config::Config;
use wxshop::domain::{
    Fen, FundType, OpenId, Order, OrderItem, OrderStatus, OutTradeNo, ProductId, SkuId,
};
use wxshop::pay::notify::{build_payment_notification, PaymentNotificationSpec};
use wxshop::pay::sign::SignType;
use wxshop::store::repo::{self, Batch};
use wxshop::time::Clock;

pub const APPID: &str = "wx2421b1c4370ec43b";
pub const MCH_ID: &str = "10000100";
pub const API_KEY: &str = "192006250b4c09247ec02edce69f6a2d";

/// A complete configuration that calls no WeChat host.
pub fn config_vars(store: &str, component: &str) -> HashMap<String, String> {
    [
        ("WX_APPID", APPID),
        ("WX_APPSECRET", "bench-appsecret-0000000000000001"),
        ("WXPAY_MCH_ID", MCH_ID),
        ("WXPAY_API_KEY", API_KEY),
        ("SESSION_SECRET", "bench-session-secret-00000000000000000"),
        ("WX_PUSH_TOKEN", "benchpushtoken"),
        ("WXPAY_NOTIFY_URL", "https://shop.example.com/callbacks/pay"),
        ("WX_API_BASE_URL", "http://127.0.0.1:9"),
        ("WXPAY_BASE_URL", "http://127.0.0.1:9"),
        ("WX_TRADING_COMPONENT", component),
        ("STORE", store),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

pub fn order(no: &OutTradeNo, openid: &OpenId, now: i64) -> Result<Order, String> {
    let price = Fen::new(1990).map_err(|e| e.to_string())?;
    Ok(Order {
        out_trade_no: no.clone(),
        openid: openid.clone(),
        items: vec![OrderItem {
            product_id: ProductId::parse("tea").map_err(|e| e.to_string())?,
            sku_id: SkuId::parse("tea-250g").map_err(|e| e.to_string())?,
            title: "Longjing green tea 250 g".into(),
            head_img: "https://mmecimage.cn/p/wxlocal/tea.jpg".into(),
            unit_price: price,
            quantity: 1,
        }],
        total: price,
        freight: Fen::ZERO,
        status: OrderStatus::Prepaid,
        fund_type: FundType::Direct,
        prepay_id: Some(format!("wx{now}bench")),
        prepay_at_ms: Some(now),
        transaction_id: None,
        paid_at_ms: None,
        wx_order_id: Some(3_700_000_000_000_000_000),
        sent_to_wechat: Default::default(),
        ticket: None,
        scene: Some(1177),
        trace_id: None,
        delivery: None,
        shipped_at_ms: None,
        address: None,
        refunded: Fen::ZERO,
        refund_claims: Default::default(),
        refunds_by_hand: Default::default(),
        aftersales: Default::default(),
        settled_at_ms: None,
        close_reason: None,
        created_at_ms: now,
        updated_at_ms: now,
        expires_at_ms: now + 1_800_000,
    })
}

/// JSON log lines as the Lambda binaries write them, into a sink (their cost, not their I/O).
pub fn sink_logs() {
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_current_span(true)
        .with_span_list(false)
        .with_target(false)
        .with_writer(std::io::sink)
        .try_init();
}

pub fn run(args: &[String]) -> Result<(), String> {
    let conc: usize = crate::num(args, "--concurrency", 1).max(1);
    // One at a time keeps the original single-thread measurement; N in flight needs a
    // multi-thread runtime, one worker per core (2 here), as wxlocal runs.
    let rt = if conc == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(crate::num(args, "--threads", 2))
            .enable_all()
            .build()
    }
    .map_err(|e| e.to_string())?;
    rt.block_on(bench(args, conc))
}

/// Sends `bodies[range]` through the handler, `conc` in flight (each worker takes the next
/// unsent one). Returns per-notification latencies and how many answered `SUCCESS`.
async fn send_all(
    app: &Arc<App>,
    route: &'static wxshop::handlers::Route,
    bodies: &Arc<Vec<bytes::Bytes>>,
    range: std::ops::Range<usize>,
    conc: usize,
) -> Result<(Vec<Duration>, usize), String> {
    let next = Arc::new(AtomicUsize::new(range.start));
    let end = range.end;
    let mut workers = Vec::with_capacity(conc);
    for _ in 0..conc {
        let (app, bodies, next) = (app.clone(), bodies.clone(), next.clone());
        let work = async move {
            let mut lat = Vec::new();
            let mut ok = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= end {
                    return Ok::<_, String>((lat, ok));
                }
                let req = http::Request::builder()
                    .method("POST")
                    .uri("/callbacks/pay")
                    .header("content-type", "text/xml")
                    .body(bodies[i].clone())
                    .map_err(|e| e.to_string())?;
                let t = Instant::now();
                let span =
                    tracing::info_span!("invocation", request_id = i, function = "payCallback");
                let resp = wxshop::handlers::handle(&app, route, req)
                    .instrument(span)
                    .await;
                lat.push(t.elapsed());
                let b = resp.body();
                if b.windows(7).any(|w| w == b"SUCCESS") && !b.windows(4).any(|w| w == b"FAIL") {
                    ok += 1;
                }
            }
        };
        if conc == 1 {
            // In place, on the current-thread runtime: the original one-at-a-time bench.
            return work.await;
        }
        workers.push(tokio::spawn(work));
    }
    let mut lat = Vec::with_capacity(end.saturating_sub(range.start));
    let mut ok = 0;
    for w in workers {
        let (l, o) = w.await.map_err(|e| e.to_string())??;
        lat.extend(l);
        ok += o;
    }
    Ok((lat, ok))
}

async fn bench(args: &[String], conc: usize) -> Result<(), String> {
    let store_kind = crate::arg(args, "--store", "sqlite");
    let n: usize = crate::num(args, "--n", 5000);
    let warm: usize = crate::num(args, "--warmup", 200);
    let component = crate::arg(args, "--component", "always");
    let logs = crate::flag(args, "--logs");
    if logs {
        sink_logs();
    }
    let store = match store_kind.as_str() {
        "memory" => "memory".to_owned(),
        "sqlite" => {
            let dir = std::path::Path::new("target/bench-data");
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
            let path = dir.join(format!("paycallback-{}.db", std::process::id()));
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
            format!("sqlite:{}", path.display())
        }
        other => return Err(format!("--store {other}: sqlite or memory")),
    };
    let vars = config_vars(&store, &component);
    let config = Config::from_lookup(|k| vars.get(k).cloned()).map_err(|e| e.to_string())?;
    let store_h = open_store(&config.store).await.map_err(|e| e.to_string())?;
    let app = App::new(config, store_h, Clock::default()).map_err(|e| e.to_string())?;

    // Orders, 100 per batch.
    let now = app.clock.now_ms();
    let openid = OpenId::parse("oUpF8uMEb4qRXf22hE3X68TekukE").map_err(|e| e.to_string())?;
    let total = warm + n;
    let mut nos = Vec::with_capacity(total);
    for chunk in 0..total.div_ceil(100) {
        let mut batch = Batch::new();
        for i in chunk * 100..((chunk + 1) * 100).min(total) {
            let no = OutTradeNo::parse(format!("BENCH{now}{i:07}")).map_err(|e| e.to_string())?;
            batch.create_order(&order(&no, &openid, now)?);
            nos.push(no);
        }
        batch
            .commit(app.store.as_ref())
            .await
            .map_err(|e| e.to_string())?;
    }
    let bodies: Vec<bytes::Bytes> = nos
        .iter()
        .enumerate()
        .map(|(i, no)| {
            let spec = PaymentNotificationSpec {
                appid: APPID.into(),
                mch_id: MCH_ID.into(),
                sub_appid: None,
                sub_mch_id: None,
                openid: openid.clone(),
                out_trade_no: no.clone(),
                transaction_id: format!("42000{now}{i:09}"),
                total_fee: Fen::new(1990).unwrap_or(Fen::ZERO),
                time_end_ms: now,
                attach: None,
                sign_type: SignType::Md5,
                omit_sign_type: false,
            };
            bytes::Bytes::from(build_payment_notification(&spec, API_KEY))
        })
        .collect();
    let route = wxshop::handlers::find_route("POST", "/callbacks/pay")
        .ok_or("no route for /callbacks/pay")?;

    let app = Arc::new(app);
    let bodies = Arc::new(bodies);

    let (sk, comp) = (&store_kind, &component);
    let pass = |label: &'static str| {
        let (app, bodies) = (&app, &bodies);
        async move {
            // Warm-up, one at a time, not counted.
            let (_, warm_ok) = send_all(app, route, bodies, 0..warm, 1).await?;
            let cpu0 = crate::stats::process_cpu();
            let start = Instant::now();
            let (mut lat, ok) = send_all(app, route, bodies, warm..total, conc).await?;
            let elapsed = start.elapsed();
            let cpu = crate::stats::process_cpu()
                .zip(cpu0)
                .map(|(a, b)| a.saturating_sub(b));
            if warm_ok + ok != bodies.len() {
                return Err(format!(
                    "{label}: {} of {} answered SUCCESS",
                    warm_ok + ok,
                    bodies.len()
                ));
            }
            // One at a time, the rate is n ÷ the sum of the handler times (as before); with
            // N in flight the handler times overlap, so it is n ÷ the wall-clock time.
            let measured: Duration = lat.iter().sum();
            let rate = if conc == 1 {
                n as f64 / measured.as_secs_f64()
            } else {
                n as f64 / elapsed.as_secs_f64()
            };
            let p50 = percentile(&mut lat, 50.0);
            let p99 = percentile(&mut lat, 99.0);
            let max = lat.last().copied().unwrap_or_default();
            Ok::<_, String>(json!({
                "bench": "paycallback", "store": sk, "component": comp, "logs": logs,
                "pass": label, "notifications": n, "warmup": warm, "concurrency": conc,
                "ops_per_sec": rate,
                "ops_per_sec_wall": n as f64 / elapsed.as_secs_f64(),
                "p50_us": us(p50), "p99_us": us(p99), "max_us": us(max),
                "wall_secs": elapsed.as_secs_f64(),
                "cpu_us_per_op": cpu.map(|c| c.as_secs_f64() * 1e6 / n as f64),
                "loadavg": std::fs::read_to_string("/proc/loadavg").ok().map(|l| l.trim().to_owned()),
            }))
        }
    };
    let first = pass("first").await?;
    // Every order must now be PAID (spot check a few) before the duplicate pass.
    for no in nos.iter().step_by(nos.len().div_ceil(20).max(1)) {
        let o = repo::get_order(app.store.as_ref(), no)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("order vanished")?;
        if o.value.status != OrderStatus::Paid {
            return Err(format!(
                "order {no} is {:?} after its notification",
                o.value.status
            ));
        }
    }
    println!("{first}");
    let dup = pass("duplicate").await?;
    println!("{dup}");
    if let Some(path) = store.strip_prefix("sqlite:") {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{path}{suffix}"));
        }
    }
    Ok(())
}
