//! The real function binaries, run as Lambda runs them: each is started with
//! `AWS_LAMBDA_RUNTIME_API` pointing at a small Runtime API server in this test, which hands it
//! API Gateway HTTP API (2.0), DynamoDB stream and EventBridge schedule events and records what
//! comes back (`/response`, `/error`, `/init/error`).
//!
//! The binaries are built (debug) by this test with `cargo build -p <functions> --features
//! <function>/local-store`: `local-store` adds SQLite to the Lambda binaries so `STORE=memory`
//! works without a DynamoDB server (the deployed binaries have no SQLite). WeChat is never
//! called: `WX_API_BASE_URL`/`WXPAY_BASE_URL` point at a closed local port, and every request
//! here is answered before any WeChat call (401, 400, FAIL, URL verification, routing).
//!
//! The Secrets Manager path (`WXSHOP_SECRET_ARN`) runs against moto's server
//! (`scripts/ensure-moto.sh` installs it when missing).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::mpsc;

const API_KEY: &str = "192006250b4c09247ec02edce69f6a2d";
const SESSION_SECRET: &str = "s3ss10n-s3cr3t-0123456789abcdefXYZ";
const APPSECRET: &str = "appsecret-value-never-logged";
const PUSH_TOKEN: &str = "pushtoken123";

// ------------------------------------------------------------------ building the binaries

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// binary name → executable, built once per test process.
fn binaries() -> &'static HashMap<String, PathBuf> {
    static BINS: OnceLock<HashMap<String, PathBuf>> = OnceLock::new();
    BINS.get_or_init(|| {
        let names: Vec<&str> = wxshop::handlers::Function::ALL
            .iter()
            .map(|f| f.binary())
            .collect();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        cmd.current_dir(workspace_root()).args([
            "build",
            "--quiet",
            "--message-format=json-render-diagnostics",
        ]);
        for n in &names {
            cmd.args(["-p", n]);
        }
        let features: Vec<String> = names.iter().map(|n| format!("{n}/local-store")).collect();
        cmd.args(["--features", &features.join(",")]);
        let out = cmd
            .stderr(Stdio::inherit())
            .output()
            .expect("run cargo build");
        assert!(
            out.status.success(),
            "cargo build of the function binaries failed"
        );
        let mut bins = HashMap::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Ok(msg) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if msg["reason"] == "compiler-artifact" {
                if let (Some(name), Some(exe)) =
                    (msg["target"]["name"].as_str(), msg["executable"].as_str())
                {
                    if names.contains(&name) {
                        bins.insert(name.to_owned(), PathBuf::from(exe));
                    }
                }
            }
        }
        assert_eq!(
            bins.len(),
            names.len(),
            "not every function binary was built: {bins:?}"
        );
        bins
    })
}

// ------------------------------------------------------------------ the Runtime API

#[derive(Debug)]
enum Outcome {
    Response {
        id: String,
        body: Value,
    },
    Error {
        id: String,
        error_type: String,
        body: Value,
    },
    InitError {
        error_type: String,
        body: Value,
    },
}

/// An invocation's time limit when the test gives none: Lambda's deadline header is this far on.
const DEFAULT_TIMEOUT_MS: u128 = 30_000;

#[derive(Clone)]
struct ApiState {
    /// (request id, event, time limit in ms)
    events: Arc<Mutex<VecDeque<(String, Value, u128)>>>,
    outcomes: mpsc::UnboundedSender<Outcome>,
}

struct RuntimeApi {
    addr: std::net::SocketAddr,
    outcomes: mpsc::UnboundedReceiver<Outcome>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn next_invocation(State(s): State<ApiState>) -> axum::response::Response {
    loop {
        let next = s.events.lock().unwrap().pop_front();
        if let Some((id, event, timeout_ms)) = next {
            let deadline = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()
                + timeout_ms;
            let mut headers = HeaderMap::new();
            headers.insert("lambda-runtime-aws-request-id", id.parse().unwrap());
            headers.insert(
                "lambda-runtime-deadline-ms",
                deadline.to_string().parse().unwrap(),
            );
            headers.insert(
                "lambda-runtime-invoked-function-arn",
                "arn:aws:lambda:us-east-1:123456789012:function:wxshop-test"
                    .parse()
                    .unwrap(),
            );
            headers.insert(
                "lambda-runtime-trace-id",
                "Root=1-00000000-000000000000000000000000".parse().unwrap(),
            );
            headers.insert("content-type", "application/json".parse().unwrap());
            return (StatusCode::OK, headers, event.to_string()).into_response();
        }
        // No more events: hold the long poll, as Lambda does between invocations.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn error_type(h: &HeaderMap) -> String {
    h.get("lambda-runtime-function-error-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn json_body(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned()))
}

impl RuntimeApi {
    async fn start(events: Vec<Value>) -> RuntimeApi {
        let timed = events
            .into_iter()
            .map(|e| (e, DEFAULT_TIMEOUT_MS))
            .collect();
        RuntimeApi::start_timed(timed).await
    }

    /// Events each with the time limit (ms) its deadline header gives.
    async fn start_timed(events: Vec<(Value, u128)>) -> RuntimeApi {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = ApiState {
            events: Arc::new(Mutex::new(
                events
                    .into_iter()
                    .enumerate()
                    .map(|(i, (e, timeout_ms))| (format!("req-{i}"), e, timeout_ms))
                    .collect(),
            )),
            outcomes: tx,
        };
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next_invocation))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(|State(s): State<ApiState>, UrlPath(id): UrlPath<String>, body: String| async move {
                    let _ = s.outcomes.send(Outcome::Response { id, body: json_body(&body) });
                    StatusCode::ACCEPTED
                }),
            )
            .route(
                "/2018-06-01/runtime/invocation/{id}/error",
                post(
                    |State(s): State<ApiState>, UrlPath(id): UrlPath<String>, h: HeaderMap, body: String| async move {
                        let _ = s.outcomes.send(Outcome::Error { id, error_type: error_type(&h), body: json_body(&body) });
                        StatusCode::ACCEPTED
                    },
                ),
            )
            .route(
                "/2018-06-01/runtime/init/error",
                post(|State(s): State<ApiState>, h: HeaderMap, body: String| async move {
                    let _ = s.outcomes.send(Outcome::InitError { error_type: error_type(&h), body: json_body(&body) });
                    StatusCode::ACCEPTED
                }),
            )
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        RuntimeApi {
            addr,
            outcomes: rx,
            server,
        }
    }

    async fn next_outcome(&mut self) -> Outcome {
        tokio::time::timeout(Duration::from_secs(30), self.outcomes.recv())
            .await
            .expect("the function answered nothing within 30 s")
            .expect("runtime API closed")
    }
}

// ------------------------------------------------------------------ the function process

/// A configuration that is complete and calls no real WeChat host.
fn valid_config() -> Vec<(&'static str, String)> {
    vec![
        ("WX_APPID", "wx0123456789abcdef".into()),
        ("WX_APPSECRET", APPSECRET.into()),
        ("WXPAY_MCH_ID", "1900000109".into()),
        ("WXPAY_API_KEY", API_KEY.into()),
        ("SESSION_SECRET", SESSION_SECRET.into()),
        ("WX_PUSH_TOKEN", PUSH_TOKEN.into()),
        (
            "WXPAY_NOTIFY_URL",
            "https://shop.example.com/callbacks/pay".into(),
        ),
        ("STORE", "memory".into()),
        // Port 9 (discard) on loopback: nothing listens; a WeChat call would fail fast.
        ("WX_API_BASE_URL", "http://127.0.0.1:9".into()),
        ("WXPAY_BASE_URL", "http://127.0.0.1:9".into()),
    ]
}

struct FunctionProcess {
    child: tokio::process::Child,
    stdout: tokio::task::JoinHandle<String>,
}

impl FunctionProcess {
    fn spawn(binary: &str, api: &RuntimeApi, env: &[(&str, String)]) -> FunctionProcess {
        let exe = &binaries()[binary];
        let mut cmd = tokio::process::Command::new(exe);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AWS_LAMBDA_RUNTIME_API", api.addr.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", format!("wxshop-{binary}"))
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_LOG_LEVEL", "DEBUG")
            .env("AWS_REGION", "us-east-1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start the function binary");
        let mut out = child.stdout.take().unwrap();
        let stdout = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut s = String::new();
            let _ = out.read_to_string(&mut s).await;
            s
        });
        FunctionProcess { child, stdout }
    }

    /// Stops the process and returns its log (stdout).
    async fn stop(mut self) -> String {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        tokio::time::timeout(Duration::from_secs(10), self.stdout)
            .await
            .expect("log reader")
            .unwrap_or_default()
    }
}

/// Logs are JSON lines, carry request id and function, and never a secret.
fn check_logs(log: &str, function: &str) {
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("log line is not JSON: {l}")))
        .collect();
    assert!(!lines.is_empty(), "no logs");
    assert!(
        lines.iter().any(|l| l["span"]["request_id"]
            .as_str()
            .is_some_and(|r| r.starts_with("req-"))
            && l["span"]["function"] == function),
        "no log line carries request_id and function={function}:\n{log}"
    );
    for secret in [API_KEY, SESSION_SECRET, APPSECRET, PUSH_TOKEN] {
        assert!(!log.contains(secret), "a secret reached the logs");
    }
}

// ------------------------------------------------------------------ events

fn http_event(
    method: &str,
    raw_path: &str,
    stage: &str,
    query: &str,
    headers: Value,
    body: Option<&str>,
    base64: bool,
) -> Value {
    json!({
        "version": "2.0",
        "routeKey": format!("{method} {raw_path}"),
        "rawPath": raw_path,
        "rawQueryString": query,
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123",
            "domainName": "shop.example.com",
            "domainPrefix": "shop",
            "http": {
                "method": method,
                "path": raw_path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.7",
                "userAgent": "wxshop-test"
            },
            "requestId": "apigw-1",
            "routeKey": format!("{method} {raw_path}"),
            "stage": stage,
            "time": "01/Jan/2026:00:00:00 +0000",
            "timeEpoch": 1767225600000u64
        },
        "body": body,
        "isBase64Encoded": base64
    })
}

fn post_json(path: &str, body: &str) -> Value {
    http_event(
        "POST",
        path,
        "$default",
        "",
        json!({"content-type": "application/json"}),
        Some(body),
        false,
    )
}

/// The event as API Gateway passes an IAM-authorised (SigV4) request on.
fn iam_signed(mut event: Value) -> Value {
    event["requestContext"]["authorizer"] = json!({"iam": {
        "accessKey": "AKIAEXAMPLE", "accountId": "123456789012", "callerId": "AIDAEXAMPLE",
        "userArn": "arn:aws:iam::123456789012:user/ops", "userId": "AIDAEXAMPLE"
    }});
    event
}

fn response_of(o: Outcome) -> (String, Value) {
    match o {
        Outcome::Response { id, body } => (id, body),
        other => panic!("expected a response, got {other:?}"),
    }
}

/// The JSON body of an API Gateway 2.0 response.
fn body_json(resp: &Value) -> Value {
    let body = resp["body"].as_str().unwrap_or_default();
    let text = if resp["isBase64Encoded"] == true {
        String::from_utf8(base64_decode(body)).unwrap()
    } else {
        body.to_owned()
    };
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

fn body_text(resp: &Value) -> String {
    match body_json(resp) {
        Value::String(s) => s,
        v => v.to_string(),
    }
}

/// Minimal standard base64 decoding (test helper; avoids another dependency).
fn base64_decode(s: &str) -> Vec<u8> {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut buf = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = A.iter().position(|a| *a == c).expect("base64") as u32;
        buf = (buf << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
        }
    }
    out
}

fn base64_encode(b: &[u8]) -> String {
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

// ------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_order_routes_by_raw_path_and_stage() {
    let mut api = RuntimeApi::start(vec![
        post_json("/fn/queryOrder", "{}"),
        // A named stage prefixes rawPath; the route is still found.
        http_event(
            "POST",
            "/prod/fn/queryOrder",
            "prod",
            "",
            json!({"content-type": "application/json"}),
            Some("{}"),
            false,
        ),
        // Another function's route is not served here.
        post_json("/fn/login", "{}"),
    ])
    .await;
    let f = FunctionProcess::spawn("query-order", &api, &valid_config());
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(response_of(api.next_outcome().await));
    }
    let log = f.stop().await;
    let (id, r) = &seen[0];
    assert_eq!(id, "req-0");
    assert_eq!(r["statusCode"], 401, "{r}");
    assert_eq!(body_json(r)["code"], "UNAUTHENTICATED", "{r}");
    assert_eq!(seen[1].1["statusCode"], 401, "{}", seen[1].1);
    assert_eq!(seen[2].1["statusCode"], 404, "{}", seen[2].1);
    assert_eq!(body_json(&seen[2].1)["code"], "NO_SUCH_ROUTE");
    check_logs(&log, "queryOrder");
}

/// Each binary runs its own function — `lambda::run::<entry::X>()` in its `main.rs` — so that it
/// links that function's code only: every route of its function reaches its handler, and a
/// route of any other function is `NO_SUCH_ROUTE`. A `main.rs` wired to the wrong entry fails
/// here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_binary_serves_its_own_routes_and_no_other() {
    use wxshop::handlers::{Caller, Function, ROUTES};
    for function in Function::ALL {
        let own: Vec<_> = ROUTES.iter().filter(|r| r.function == function).collect();
        let foreign = ROUTES
            .iter()
            .find(|r| r.function != function)
            .expect("another function's route");
        let event = |r: &wxshop::handlers::Route| {
            let e = http_event(
                r.method,
                r.path,
                "$default",
                "",
                json!({"content-type": "application/json"}),
                (r.method == "POST").then_some("{}"),
                false,
            );
            if r.caller == Caller::Admin {
                iam_signed(e)
            } else {
                e
            }
        };
        let mut events: Vec<Value> = own.iter().map(|r| event(r)).collect();
        events.push(event(foreign));
        let mut api = RuntimeApi::start(events).await;
        let f = FunctionProcess::spawn(function.binary(), &api, &valid_config());
        let mut answers = Vec::new();
        for _ in 0..=own.len() {
            answers.push(response_of(api.next_outcome().await).1);
        }
        let log = f.stop().await;
        for (r, answer) in own.iter().zip(&answers) {
            assert_ne!(
                body_json(answer)["code"],
                "NO_SUCH_ROUTE",
                "{} did not serve its own {} {}: {answer}",
                function.binary(),
                r.method,
                r.path
            );
        }
        let last = &answers[own.len()];
        assert_eq!(
            body_json(last)["code"],
            "NO_SUCH_ROUTE",
            "{} served {} {} of {}: {last}",
            function.binary(),
            foreign.method,
            foreign.path,
            foreign.function.name()
        );
        check_logs(&log, function.name());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_with_an_empty_body_is_a_400() {
    let mut api = RuntimeApi::start(vec![http_event(
        "POST",
        "/fn/login",
        "$default",
        "",
        json!({"content-type": "application/json"}),
        None,
        false,
    )])
    .await;
    let f = FunctionProcess::spawn("login", &api, &valid_config());
    let (_, r) = response_of(api.next_outcome().await);
    let log = f.stop().await;
    assert_eq!(r["statusCode"], 400, "{r}");
    assert!(body_json(&r)["code"].is_string(), "{r}");
    check_logs(&log, "login");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pay_callback_answers_a_forged_notification_with_fail() {
    let forged = "<xml><return_code><![CDATA[SUCCESS]]></return_code><appid><![CDATA[wx0123456789abcdef]]></appid>\
        <mch_id><![CDATA[1900000109]]></mch_id><nonce_str><![CDATA[abc]]></nonce_str>\
        <result_code><![CDATA[SUCCESS]]></result_code><out_trade_no><![CDATA[WX1]]></out_trade_no>\
        <total_fee>1</total_fee><transaction_id><![CDATA[42000000]]></transaction_id>\
        <sign><![CDATA[0123456789ABCDEF0123456789ABCDEF]]></sign></xml>";
    let mut api = RuntimeApi::start(vec![http_event(
        "POST",
        "/callbacks/pay",
        "$default",
        "",
        json!({"content-type": "text/xml"}),
        // API Gateway base64-encodes bodies it does not treat as text.
        Some(&base64_encode(forged.as_bytes())),
        true,
    )])
    .await;
    let f = FunctionProcess::spawn("pay-callback", &api, &valid_config());
    let (_, r) = response_of(api.next_outcome().await);
    let log = f.stop().await;
    let body = body_text(&r);
    assert!(body.contains("FAIL"), "expected the FAIL XML, got {r}");
    assert!(
        !body.contains(">SUCCESS<") && !body.contains("[SUCCESS]"),
        "{r}"
    );
    check_logs(&log, "payCallback");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_callback_verifies_the_push_url() {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let nonce = "1234567";
    let signature = wxshop::push::sign(PUSH_TOKEN, &ts, nonce);
    let good = format!("signature={signature}&timestamp={ts}&nonce={nonce}&echostr=echo-8899");
    let bad = format!(
        "signature={}&timestamp={ts}&nonce={nonce}&echostr=echo-8899",
        "0".repeat(40)
    );
    let mut api = RuntimeApi::start(vec![
        http_event(
            "GET",
            "/callbacks/wechat",
            "$default",
            &good,
            json!({}),
            None,
            false,
        ),
        http_event(
            "GET",
            "/callbacks/wechat",
            "$default",
            &bad,
            json!({}),
            None,
            false,
        ),
    ])
    .await;
    let f = FunctionProcess::spawn("audit-callback", &api, &valid_config());
    let (_, ok) = response_of(api.next_outcome().await);
    let (_, refused) = response_of(api.next_outcome().await);
    let log = f.stop().await;
    assert_eq!(ok["statusCode"], 200, "{ok}");
    assert_eq!(body_text(&ok), "echo-8899");
    assert_eq!(refused["statusCode"], 403, "{refused}");
    check_logs(&log, "auditCallback");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_sync_takes_schedule_stream_and_http_events() {
    let stream = json!({"Records": [
        {"eventID": "1", "eventName": "INSERT", "eventVersion": "1.1", "eventSource": "aws:dynamodb",
         "awsRegion": "us-east-1",
         "dynamodb": {"Keys": {"pk": {"S": "outbox#does-not-exist"}}, "SequenceNumber": "111",
                      "SizeBytes": 26, "StreamViewType": "NEW_IMAGE"},
         "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/t/stream/2026"},
        {"eventID": "2", "eventName": "MODIFY", "eventVersion": "1.1", "eventSource": "aws:dynamodb",
         "awsRegion": "us-east-1",
         "dynamodb": {"Keys": {"pk": {"S": "order#o1"}}, "SequenceNumber": "222",
                      "SizeBytes": 26, "StreamViewType": "NEW_IMAGE"},
         "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/t/stream/2026"}
    ]});
    let schedule = json!({
        "version": "0", "id": "e1", "detail-type": "Scheduled Event", "source": "aws.events",
        "account": "123456789012", "time": "2026-01-01T00:00:00Z", "region": "us-east-1",
        "resources": ["arn:aws:events:us-east-1:123456789012:rule/sweep"], "detail": {}
    });
    let mut api = RuntimeApi::start(vec![
        schedule,
        stream,
        iam_signed(post_json("/admin/orderSync", "{}")),
        // A query string that is no valid URI as sent (raw space, quote, angle brackets: API
        // Gateway passes them on): answered, and the process lives on for the next event.
        iam_signed(http_event(
            "POST",
            "/admin/orderSync",
            "$default",
            "note=a b\"c<d>",
            json!({"content-type": "application/json"}),
            Some("{}"),
            false,
        )),
        json!({"something": "else"}),
    ])
    .await;
    let f = FunctionProcess::spawn("order-sync", &api, &valid_config());
    let (_, swept) = response_of(api.next_outcome().await);
    let (_, batch) = response_of(api.next_outcome().await);
    let (_, admin) = response_of(api.next_outcome().await);
    let (_, raw) = response_of(api.next_outcome().await);
    let unknown = api.next_outcome().await;
    let log = f.stop().await;

    assert!(swept.is_object(), "schedule result: {swept}");
    let failures = batch["batchItemFailures"]
        .as_array()
        .unwrap_or_else(|| panic!("{batch}"));
    for fail in failures {
        // Only the outbox record may be reported; the MODIFY of an order is not ours.
        assert_eq!(fail["itemIdentifier"], "111", "{batch}");
    }
    let status = admin["statusCode"]
        .as_u64()
        .unwrap_or_else(|| panic!("{admin}"));
    assert!(
        status != 404 && status != 403 && status < 500,
        "admin route: {admin}"
    );
    assert_eq!(raw["statusCode"], admin["statusCode"], "{raw}");
    match unknown {
        Outcome::Error {
            id,
            error_type,
            body,
        } => {
            assert_eq!(id, "req-4");
            assert_eq!(body["errorType"], "UnknownEvent", "{body} ({error_type})");
        }
        other => panic!("an unknown event must be an invocation error: {other:?}"),
    }
    check_logs(&log, "orderSync");
}

/// GIVEN a stream batch of 12 outbox entries (closing orders at WeChat Pay) and WeChat Pay
/// taking every call and never answering (each waits out `WX_HTTP_TIMEOUT_MS` = 1.5 s: 18 s
/// for the batch) WHEN orderSync gets the batch with 17 s left of its invocation THEN it
/// answers before its deadline: no entry is started past the deadline less `SCHEDULE_MARGIN`
/// (15 s), and those not started — the tail of the batch — are reported by sequence number
/// as batch item failures, untouched in the outbox, so the stream's retry runs them at once.
/// It used to run the whole batch whatever the deadline: on Lambda, killed at the timeout
/// mid-call, the whole batch failed and was retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_batch_stops_starting_entries_before_its_deadline() {
    use wxshop::outbox::{OutboxEntry, Task};
    // WeChat Pay that takes each connection and never answers.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_addr = hole.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = hole.accept().await {
            conns.push(c);
        }
    });
    let db = std::env::temp_dir().join(format!(
        "wxshop-stream-deadline-{}-{}.db",
        std::process::id(),
        rand::random::<u32>()
    ));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut entries = Vec::new();
    {
        let store = wxshop::store::sqlite::SqliteStore::open(&db).unwrap();
        let mut batch = wxshop::store::repo::Batch::new();
        for i in 0..12 {
            let no = wxshop::domain::OutTradeNo::generate(now + i);
            let order: wxshop::domain::Order = serde_json::from_value(json!({
                "out_trade_no": no, "openid": "oUpF8uMEb4qRXf22hE3X68TekukE", "items": [],
                "total": 100, "status": "CLOSED", "prepay_id": format!("wx{i:030}"),
                "close_reason": "closed by user",
                "created_at_ms": now, "updated_at_ms": now, "expires_at_ms": now + 900_000
            }))
            .unwrap();
            batch.create_order(&order);
            let entry = OutboxEntry::new(Task::OrderClose { out_trade_no: no }, now);
            entries.push(entry.clone());
            batch.enqueue(entry);
        }
        batch.commit(&store).await.unwrap();
    }
    let records: Vec<Value> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            json!({"eventID": i.to_string(), "eventName": "INSERT", "eventVersion": "1.1",
                   "eventSource": "aws:dynamodb", "awsRegion": "us-east-1",
                   "dynamodb": {"Keys": {"pk": {"S": format!("outbox#{}", e.id)}},
                                "SequenceNumber": (1000 + i).to_string(),
                                "SizeBytes": 26, "StreamViewType": "NEW_IMAGE"},
                   "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/t/stream/2026"})
        })
        .collect();
    let limit = Duration::from_secs(17);
    let mut api =
        RuntimeApi::start_timed(vec![(json!({ "Records": records }), limit.as_millis())]).await;
    let mut env = valid_config();
    env.push(("STORE", format!("sqlite:{}", db.display())));
    env.push(("WXPAY_BASE_URL", format!("http://{hole_addr}")));
    env.push(("WX_HTTP_TIMEOUT_MS", "1500".into()));
    binaries(); // built before the clock starts
    let t0 = std::time::Instant::now();
    let f = FunctionProcess::spawn("order-sync", &api, &env);
    let (_, batch) = response_of(api.next_outcome().await);
    let took = t0.elapsed();
    let log = f.stop().await;
    held.abort();

    assert!(
        took < limit,
        "answered after its deadline ({took:?}): {batch}"
    );
    let failed: Vec<u64> = batch["batchItemFailures"]
        .as_array()
        .unwrap_or_else(|| panic!("{batch}"))
        .iter()
        .map(|f| f["itemIdentifier"].as_str().unwrap().parse().unwrap())
        .collect();
    // 2 s to start entries in, 1.5 s each: one or two run, the rest are handed back.
    let ran = 12 - failed.len();
    assert!((1..=3).contains(&ran), "{batch}");
    let tail: Vec<u64> = (1000 + ran as u64..1012).collect();
    assert_eq!(failed, tail, "the entries not started, in order: {batch}");
    let store = wxshop::store::sqlite::SqliteStore::open(&db).unwrap();
    for (i, e) in entries.iter().enumerate() {
        let subject = e.task.subject();
        let now_entries = wxshop::outbox::entries_for(&store, &subject, 5)
            .await
            .unwrap();
        assert_eq!(now_entries.len(), 1, "{subject}");
        let attempts = now_entries[0].entry.attempts;
        if i < ran {
            assert_eq!(attempts, 1, "ran once and is due again later: {subject}");
        } else {
            assert_eq!(attempts, 0, "not started, free for the retry: {subject}");
            assert!(now_entries[0].entry.due_at_ms <= now, "{subject}");
        }
    }
    drop(store);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    check_logs(&log, "orderSync");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_configuration_is_an_init_error_naming_every_variable() {
    let mut api = RuntimeApi::start(vec![post_json("/fn/login", "{}")]).await;
    let mut f = FunctionProcess::spawn("login", &api, &[("WXPAY_SIGN_TYPE", "SHA1".into())]);
    let outcome = api.next_outcome().await;
    let status = tokio::time::timeout(Duration::from_secs(10), f.child.wait())
        .await
        .expect("the function exits after an init error")
        .unwrap();
    assert!(!status.success(), "exit status {status}");
    let _ = f.stop().await;
    match outcome {
        Outcome::InitError { error_type, body } => {
            assert_eq!(error_type, "Runtime.ConfigError");
            assert_eq!(body["errorType"], "ConfigError");
            let msg = body["errorMessage"].as_str().unwrap();
            for var in [
                "WX_APPID",
                "WX_APPSECRET",
                "WXPAY_MCH_ID",
                "WXPAY_API_KEY",
                "SESSION_SECRET",
                "WX_PUSH_TOKEN",
                "WXPAY_NOTIFY_URL",
                "WXPAY_SIGN_TYPE",
            ] {
                assert!(msg.contains(var), "{var} missing from: {msg}");
            }
        }
        other => panic!("expected /init/error, got {other:?}"),
    }
}

// ------------------------------------------------------------------ secrets (moto)

struct Moto {
    child: tokio::process::Child,
    url: String,
}

async fn start_moto() -> Moto {
    let ensure = std::process::Command::new("bash")
        .arg(workspace_root().join("scripts/ensure-moto.sh"))
        .status()
        .expect("run scripts/ensure-moto.sh");
    assert!(ensure.success(), "scripts/ensure-moto.sh failed");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = tokio::process::Command::new(
        std::env::var("WXSHOP_PYTHON").unwrap_or_else(|_| "python3".into()),
    )
    .args([
        "-m",
        "moto.server",
        "-H",
        "127.0.0.1",
        "-p",
        &port.to_string(),
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .kill_on_drop(true)
    .spawn()
    .expect("start moto");
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    // Python's start-up (moto imports a lot) can take well over 10 s on a loaded host: up to
    // 30 s, as the other tests' moto waits (100 polls, ~10 s, before).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if client.get(format!("{url}/moto-api/")).send().await.is_ok() {
            return Moto { child, url };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("moto did not start on {url} within 30 s");
}

/// Creates a secret through moto's Secrets Manager JSON API; returns its ARN.
async fn create_secret(moto: &Moto, name: &str, value: &Value) -> String {
    let resp: Value = reqwest::Client::new()
        .post(&moto.url)
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amz-target", "secretsmanager.CreateSecret")
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/secretsmanager/aws4_request, SignedHeaders=host, Signature=00",
        )
        .body(json!({"Name": name, "SecretString": value.to_string()}).to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    resp["ARN"]
        .as_str()
        .unwrap_or_else(|| panic!("CreateSecret: {resp}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_come_from_secrets_manager() {
    let mut moto = start_moto().await;
    let full = create_secret(
        &moto,
        "wxshop-full",
        &json!({
            "WX_APPSECRET": APPSECRET, "WXPAY_API_KEY": API_KEY, "SESSION_SECRET": SESSION_SECRET,
            "WX_PUSH_TOKEN": PUSH_TOKEN, "WX_PUSH_AES_KEY": "", "WXPAY_CERT_P12_BASE64": ""
        }),
    )
    .await;
    let partial = create_secret(
        &moto,
        "wxshop-partial",
        &json!({"WX_APPSECRET": APPSECRET, "WXPAY_API_KEY": "", "SESSION_SECRET": SESSION_SECRET, "WX_PUSH_TOKEN": PUSH_TOKEN}),
    )
    .await;
    let env = |arn: &str| -> Vec<(&'static str, String)> {
        let secret_keys = [
            "WX_APPSECRET",
            "WXPAY_API_KEY",
            "SESSION_SECRET",
            "WX_PUSH_TOKEN",
        ];
        let mut env: Vec<(&'static str, String)> = valid_config()
            .into_iter()
            .filter(|(k, _)| !secret_keys.contains(k))
            .collect();
        env.push(("WXSHOP_SECRET_ARN", arn.to_owned()));
        env.push(("AWS_ENDPOINT_URL_SECRETS_MANAGER", moto.url.clone()));
        env.push(("AWS_ACCESS_KEY_ID", "test".into()));
        env.push(("AWS_SECRET_ACCESS_KEY", "test".into()));
        env
    };

    // Every key in the secret: the function starts and serves.
    let mut api = RuntimeApi::start(vec![post_json("/fn/queryOrder", "{}")]).await;
    let f = FunctionProcess::spawn("query-order", &api, &env(&full));
    let outcome = api.next_outcome().await;
    let log = f.stop().await;
    let (_, r) = response_of(outcome);
    assert_eq!(r["statusCode"], 401, "{r}");
    check_logs(&log, "queryOrder");

    // An empty field in the secret counts as unset and is named at cold start.
    let mut api = RuntimeApi::start(vec![post_json("/fn/queryOrder", "{}")]).await;
    let f = FunctionProcess::spawn("query-order", &api, &env(&partial));
    let outcome = api.next_outcome().await;
    let log = f.stop().await;
    match outcome {
        Outcome::InitError { body, .. } => {
            let msg = body["errorMessage"].as_str().unwrap();
            assert!(msg.contains("WXPAY_API_KEY"), "{msg}");
            assert!(!msg.contains("WX_APPSECRET"), "{msg}");
        }
        other => panic!("expected /init/error, got {other:?}"),
    }
    for secret in [SESSION_SECRET, APPSECRET] {
        assert!(!log.contains(secret), "a secret reached the logs");
    }
    let _ = moto.child.start_kill();
    let _ = moto.child.wait().await;
}

/// GIVEN a Secrets Manager endpoint that accepts the connection and never answers WHEN a
/// function cold-starts THEN it reports `/init/error` by itself, naming the secret, the
/// endpoint and what to check, well within payCallback's 5 s timeout — it used to wait as long
/// as the timeout itself, and Lambda would only have said "Task timed out".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_secrets_manager_fails_the_cold_start_in_time_and_says_why() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket); // accepted, never read, never answered
        }
    });
    let arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:wxshop-stalled";
    let mut env: Vec<(&'static str, String)> = valid_config()
        .into_iter()
        .filter(|(k, _)| *k != "WX_APPSECRET")
        .collect();
    env.push(("WXSHOP_SECRET_ARN", arn.into()));
    env.push(("AWS_ENDPOINT_URL_SECRETS_MANAGER", format!("http://{addr}")));
    env.push(("AWS_ACCESS_KEY_ID", "test".into()));
    env.push(("AWS_SECRET_ACCESS_KEY", "test".into()));
    let _ = binaries(); // built before the clock starts

    let mut api = RuntimeApi::start(vec![post_json("/fn/queryOrder", "{}")]).await;
    let started = std::time::Instant::now();
    let f = FunctionProcess::spawn("pay-callback", &api, &env);
    let outcome = api.next_outcome().await;
    let took = started.elapsed();
    let log = f.stop().await;
    silent.abort();
    let Outcome::InitError { body, .. } = outcome else {
        panic!("expected /init/error, got {outcome:?}; log: {log}");
    };
    assert!(
        took < Duration::from_secs(4),
        "the cold start took {took:?} to give up (payCallback's timeout is 5 s): {body}"
    );
    let msg = body["errorMessage"].as_str().unwrap();
    for needle in [
        "WXSHOP_SECRET_ARN",
        arn,
        "GetSecretValue",
        &addr.to_string(),
        "no answer",
        "VPC",
    ] {
        assert!(msg.contains(needle), "{needle:?} in {msg}");
    }
}
