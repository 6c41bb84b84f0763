//! Cold start of a real function binary through a local Lambda Runtime API (the protocol of
//! tests/tests/lambda_runtime.rs): time from `exec` to the first `/response`, over `--runs`
//! fresh processes; then one process serves `--invocations` events and its peak RSS
//! (`VmHWM` in /proc/<pid>/status) is read.
//!
//! The deployed binaries carry only the DynamoDB store; `STORE=dynamodb:…` points at a closed
//! loopback port, and the events chosen are answered before any store or WeChat call:
//! `login` gets `{}` (400), `pay-callback` a correctly signed notification for another
//! merchant (full XML decode + signature verification, then `FAIL`).

use crate::stats::{median, ms, percentile};
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use serde_json::json;
use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

#[derive(Clone)]
struct ApiState {
    events: Arc<Mutex<VecDeque<(String, String)>>>,
    outcomes: mpsc::UnboundedSender<(String, Instant, Result<String, String>)>,
}

async fn next_invocation(State(s): State<ApiState>) -> axum::response::Response {
    loop {
        let next = s.events.lock().ok().and_then(|mut q| q.pop_front());
        if let Some((id, event)) = next {
            let deadline = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() + 30_000)
                .unwrap_or_default();
            let headers = [
                ("lambda-runtime-aws-request-id", id),
                ("lambda-runtime-deadline-ms", deadline.to_string()),
                (
                    "lambda-runtime-invoked-function-arn",
                    "arn:aws:lambda:us-east-1:123456789012:function:wxshop-bench".into(),
                ),
                (
                    "lambda-runtime-trace-id",
                    "Root=1-00000000-000000000000000000000000".into(),
                ),
                ("content-type", "application/json".into()),
            ];
            let mut h = HeaderMap::new();
            for (k, v) in headers {
                if let Ok(v) = v.parse() {
                    h.insert(k, v);
                }
            }
            return (StatusCode::OK, h, event).into_response();
        }
        // Nothing queued: hold the long poll, as Lambda does between invocations.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn start_api() -> Result<(std::net::SocketAddr, ApiState, Rx), String> {
    let (tx, rx) = mpsc::unbounded_channel();
    let state = ApiState {
        events: Arc::new(Mutex::new(VecDeque::new())),
        outcomes: tx,
    };
    let app = Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next_invocation))
        .route(
            "/2018-06-01/runtime/invocation/{id}/response",
            post(
                |State(s): State<ApiState>, UrlPath(id): UrlPath<String>, body: String| async move {
                    let _ = s.outcomes.send((id, Instant::now(), Ok(body)));
                    StatusCode::ACCEPTED
                },
            ),
        )
        .route(
            "/2018-06-01/runtime/invocation/{id}/error",
            post(
                |State(s): State<ApiState>, UrlPath(id): UrlPath<String>, body: String| async move {
                    let _ = s.outcomes.send((id, Instant::now(), Err(body)));
                    StatusCode::ACCEPTED
                },
            ),
        )
        .route(
            "/2018-06-01/runtime/init/error",
            post(|State(s): State<ApiState>, body: String| async move {
                let _ = s.outcomes.send(("init".into(), Instant::now(), Err(body)));
                StatusCode::ACCEPTED
            }),
        )
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, state, rx))
}

type Rx = mpsc::UnboundedReceiver<(String, Instant, Result<String, String>)>;

fn http_event(path: &str, body: &str, base64: bool) -> String {
    json!({
        "version": "2.0",
        "routeKey": format!("POST {path}"),
        "rawPath": path,
        "rawQueryString": "",
        "headers": {"content-type": if base64 { "text/xml" } else { "application/json" }},
        "requestContext": {
            "accountId": "123456789012", "apiId": "abc123",
            "domainName": "shop.example.com", "domainPrefix": "shop",
            "http": {"method": "POST", "path": path, "protocol": "HTTP/1.1",
                     "sourceIp": "203.0.113.7", "userAgent": "wxshop-bench"},
            "requestId": "apigw-1", "routeKey": format!("POST {path}"), "stage": "$default",
            "time": "01/Jan/2026:00:00:00 +0000", "timeEpoch": 1767225600000u64
        },
        "body": body,
        "isBase64Encoded": base64
    })
    .to_string()
}

fn b64(b: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, x)| acc | (*x as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The event for a binary, and what its response must contain.
fn event_for(bin: &str) -> Result<(String, &'static str), String> {
    if bin.contains("pay-callback") || bin.contains("pay_callback") {
        // Signed with our key, but for merchant 10000100 while the function is configured as
        // 1900000109: verified, then refused as another merchant's.
        let p = crate::notify::payloads()?;
        Ok((
            http_event("/callbacks/pay", &b64(p.pay_md5.as_bytes()), true),
            "FAIL",
        ))
    } else if bin.contains("login") {
        Ok((http_event("/fn/login", "{}", false), "\"statusCode\":400"))
    } else {
        Err(format!(
            "no event defined for {bin} (login or pay-callback)"
        ))
    }
}

fn command(bin: &str, api: std::net::SocketAddr, store: &str) -> tokio::process::Command {
    let mut vars = crate::callback::config_vars(store, "always");
    vars.insert("WX_APPID".into(), "wx0123456789abcdef".into());
    vars.insert("WXPAY_MCH_ID".into(), "1900000109".into());
    vars.insert("DYNAMODB_ENDPOINT".into(), "http://127.0.0.1:9".into());
    let mut cmd = tokio::process::Command::new(bin);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AWS_LAMBDA_RUNTIME_API", api.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", "wxshop-bench")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_REGION", "us-east-1")
        .envs(vars)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    cmd
}

async fn outcome(rx: &mut Rx) -> Result<(String, Instant, String), String> {
    let (id, at, r) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .map_err(|_| "no answer within 30 s".to_owned())?
        .ok_or("runtime API closed")?;
    r.map(|b| (id.clone(), at, b))
        .map_err(|e| format!("{id}: error: {e}"))
}

fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

pub fn run(args: &[String]) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(bench(args))
}

async fn bench(args: &[String]) -> Result<(), String> {
    let bin = crate::arg(args, "--bin", "");
    if bin.is_empty() {
        return Err("--bin PATH of a function binary".into());
    }
    let runs: usize = crate::num(args, "--runs", 20);
    let invocations: usize = crate::num(args, "--invocations", 1000);
    let store = crate::arg(args, "--store", "dynamodb:wxshop-bench");
    let (event, expect) = event_for(&bin)?;
    let size = std::fs::metadata(&bin).map_err(|e| e.to_string())?.len();
    let (addr, state, mut rx) = start_api().await?;

    let mut cold = Vec::with_capacity(runs);
    for i in 0..=runs {
        let id = format!("cold-{i}");
        if let Ok(mut q) = state.events.lock() {
            q.push_back((id.clone(), event.clone()));
        }
        let t0 = Instant::now();
        let mut child = command(&bin, addr, &store)
            .spawn()
            .map_err(|e| format!("spawn {bin}: {e}"))?;
        let (got, at, body) = outcome(&mut rx).await?;
        let _ = child.start_kill();
        let _ = child.wait().await;
        if got != id || !body.contains(expect) {
            return Err(format!("{id}: unexpected answer {got}: {body}"));
        }
        // Run 0 warms the page cache and is not counted.
        if i > 0 {
            cold.push(at.duration_since(t0));
        }
    }
    let cold_ms: Vec<f64> = cold.iter().map(|d| ms(*d)).collect();

    // One process, `invocations` sequential events.
    if let Ok(mut q) = state.events.lock() {
        for i in 0..invocations {
            q.push_back((format!("warm-{i}"), event.clone()));
        }
    }
    let mut child = command(&bin, addr, &store)
        .spawn()
        .map_err(|e| format!("spawn {bin}: {e}"))?;
    let pid = child.id().ok_or("child has no pid")?;
    let (_, first_at, _) = outcome(&mut rx).await?;
    let mut last = first_at;
    let mut gaps = Vec::with_capacity(invocations);
    for _ in 1..invocations {
        let (_, at, body) = outcome(&mut rx).await?;
        if !body.contains(expect) {
            return Err(format!("unexpected answer: {body}"));
        }
        gaps.push(at.duration_since(last));
        last = at;
    }
    let hwm = status_kb(pid, "VmHWM:");
    let rss = status_kb(pid, "VmRSS:");
    let _ = child.start_kill();
    let _ = child.wait().await;
    let warm_total = last.duration_since(first_at);
    println!(
        "{}",
        json!({
            "bench": "coldstart", "bin": bin, "size_bytes": size,
            "runs": cold.len(),
            "cold_median_ms": median(cold_ms.clone()),
            "cold_min_ms": cold_ms.iter().cloned().fold(f64::INFINITY, f64::min),
            "cold_max_ms": cold_ms.iter().cloned().fold(0.0, f64::max),
            "invocations": invocations,
            "warm_invocations_per_sec": (invocations.saturating_sub(1)) as f64 / warm_total.as_secs_f64(),
            "warm_p50_ms": ms(percentile(&mut gaps, 50.0)),
            "warm_p99_ms": ms(percentile(&mut gaps, 99.0)),
            "vm_hwm_kb": hwm, "vm_rss_kb": rss,
        })
    );
    Ok(())
}
