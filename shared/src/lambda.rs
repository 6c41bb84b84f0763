//! The AWS Lambda entry point every `functions/*` binary calls: [`run`].
//!
//! One cold start does, in order:
//! 1. JSON logs through `tracing` (level from `AWS_LAMBDA_LOG_LEVEL`, else `RUST_LOG`, else
//!    `info`); every line of an invocation carries its `request_id` and `function`. Bodies and
//!    secrets are never logged.
//! 2. The keys: when `WXSHOP_SECRET_ARN` is set, the secret (a JSON object of strings) is read
//!    once with the Secrets Manager API. Configuration then looks every variable up in the
//!    environment first and in the secret second ([`Config::from_lookup`]), so the template
//!    keeps secrets out of the function environment and a developer can still override any of
//!    them locally. (A direct API call was chosen over the Parameters and Secrets extension: no
//!    layer ARN per region in the template, and one fewer process in the sandbox. It is one
//!    SigV4-signed request, [`crate::aws::secrets`], not the SDK client: see "Cold start, size,
//!    memory" in `docs/PERFORMANCE.md`.)
//! 3. [`App`] once — config, store, WeChat clients — with custom metrics switched on
//!    ([`crate::metrics`]: EMF lines on stdout, e.g. `OutboxDeadLetters`). Any failure is
//!    posted to the Runtime API's `/runtime/init/error` (`Runtime.ConfigError`, with the
//!    message listing every problem) and the process exits non-zero, so a misconfigured stack
//!    says what to fix on its first invocation.
//! 4. The invocation loop. HTTP functions take API Gateway HTTP API (payload 2.0) events, read
//!    them as `http` requests ([`to_wx_request`]) and run the binary's own function with
//!    [`handlers::handle_as`] (the routes of [`handlers::find_route`], as `wxlocal` serves them).
//!    `orderSync` takes three shapes in one binary: DynamoDB stream records of
//!    new outbox entries, the EventBridge schedule, and its admin HTTP route.
//!
//! `/admin/*` routes are IAM-authorised by API Gateway before they get here; an admin request
//! whose event carries no IAM authoriser (a route deployed without `Auth`) is refused with
//! 403, and the caller's ARN of every admin call is logged.

use crate::app::{open_store, App, StartupError};
use crate::config::Config;
use crate::handlers::{self, entry, Caller, Function, FunctionEntry, Route};
use crate::http::ApiError;
use crate::time::Clock;
use aws_lambda_events::event::apigw::ApiGatewayV2httpRequest;
use bytes::Bytes;
use lambda_runtime::{Diagnostic, LambdaEvent};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tracing::Instrument;

pub use lambda_runtime::Error;

/// Environment variable naming the Secrets Manager secret with the keys.
pub const SECRET_ARN_VAR: &str = "WXSHOP_SECRET_ARN";

/// Runs the function `F` (`wxshop::lambda::run::<wxshop::handlers::entry::Login>()`) until the
/// Lambda service stops the sandbox. The function is a type, not a value, so that each binary
/// links its own handler only ([`FunctionEntry`]).
///
/// Returns an error (and the binary exits non-zero) only when the cold start fails — after the
/// failure has been reported to the Runtime API — or when the runtime loop itself fails.
pub async fn run<F: LambdaFunction>() -> Result<(), Error> {
    let function = F::FUNCTION;
    init_logging();
    let started = Instant::now();
    let mut app = match start().await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(function = function.name(), error_type = e.error_type, error = %e.message, "cold start failed");
            report_init_error(&e).await;
            return Err(Box::new(e));
        }
    };
    app.metrics = crate::metrics::Metrics::emf(&metrics_function_name(function));
    tracing::info!(
        function = function.name(),
        store = app.store.backend(),
        init_ms = started.elapsed().as_millis() as u64,
        "ready"
    );
    let app = &app;
    // Every function takes its event as JSON. HTTP events are read here as API Gateway's
    // payload 2.0 and turned into requests by [`to_wx_request`] — not by `lambda_http`, whose
    // conversion panics on a query string that is no valid URI (a raw space or quote, which
    // API Gateway passes on as sent), and a panic aborts this process (`panic = "abort"`).
    lambda_runtime::run(lambda_runtime::service_fn(
        move |event: LambdaEvent<Value>| async move {
            let span = invocation_span(function, &event.context.request_id);
            F::lambda_event(app, event.payload, event.context.deadline)
                .instrument(span)
                .await
        },
    ))
    .await
}

/// How a function's Lambda takes its event (`deadline_ms`: the invocation's deadline, epoch
/// ms): an API Gateway HTTP event, except for `orderSync`, which also takes its schedule and
/// the outbox stream.
///
/// A method of each function's type, not a branch on [`FunctionEntry::FUNCTION`]: with the
/// branch (on a constant) every binary still carried orderSync's whole schedule — the sweeps,
/// both reconciliations, the relay — because the never-taken branch's state stayed in the
/// invocation's future, and its code with it (docs/PERFORMANCE.md, "The schedule in every
/// binary").
pub trait LambdaFunction: FunctionEntry + Sized {
    fn lambda_event(
        app: &App,
        payload: Value,
        deadline_ms: u64,
    ) -> impl std::future::Future<Output = Result<Value, InvocationError>> + Send {
        crate::time::bounded(
            Some(invocation_deadline(deadline_ms)),
            http_function_event::<Self>(app, payload),
        )
    }
}

/// The invocation's deadline (`deadline_ms`, epoch ms from the Runtime API) as the bound of
/// every WeChat and WeChat Pay call made for it ([`crate::time::bounded`]): a call's timeout
/// ends [`crate::time::CALL_RESERVE`] before it, and one with too little left is not sent, so
/// a chain of calls longer than the function's Timeout fails cleanly (503, retried) instead
/// of being killed mid-call.
pub fn invocation_deadline(deadline_ms: u64) -> crate::time::Deadline {
    crate::time::Deadline::from_epoch_ms(deadline_ms, Duration::ZERO)
}

impl LambdaFunction for entry::Login {}
impl LambdaFunction for entry::UnifiedOrder {}
impl LambdaFunction for entry::QueryOrder {}
/// payCallback makes no outside calls: its invocations get no deadline (no work added).
impl LambdaFunction for entry::PayCallback {
    fn lambda_event(
        app: &App,
        payload: Value,
        _deadline_ms: u64,
    ) -> impl std::future::Future<Output = Result<Value, InvocationError>> + Send {
        http_function_event::<Self>(app, payload)
    }
}
impl LambdaFunction for entry::AuditCallback {}
impl LambdaFunction for entry::AftersaleSync {}
impl LambdaFunction for entry::CatalogSync {}
impl LambdaFunction for entry::Funds {}
impl LambdaFunction for entry::OrderSync {
    fn lambda_event(
        app: &App,
        payload: Value,
        deadline_ms: u64,
    ) -> impl std::future::Future<Output = Result<Value, InvocationError>> + Send {
        order_sync_event::<Self>(app, payload, deadline_ms)
    }
}

/// An API Gateway HTTP API (payload 2.0) event for `function`: request → handler → response.
async fn http_function_event<F: FunctionEntry>(
    app: &App,
    payload: Value,
) -> Result<Value, InvocationError> {
    let event: ApiGatewayV2httpRequest = serde_json::from_value(payload)
        .map_err(|e| InvocationError::BadHttpEvent(e.to_string()))?;
    Ok(api_gateway_v2_response(http_event::<F>(app, event).await))
}

/// The `Function` dimension of the custom metrics: the deployed name Lambda gives the process
/// (`AWS_LAMBDA_FUNCTION_NAME`, e.g. `wxshop-OrderSyncFunction-1A2B`), so the alarms of one
/// stack never count another stack's dead letters; the function's own name outside Lambda.
fn metrics_function_name(function: Function) -> String {
    std::env::var("AWS_LAMBDA_FUNCTION_NAME")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| function.name().to_owned())
}

fn invocation_span(function: Function, request_id: &str) -> tracing::Span {
    tracing::info_span!("invocation", request_id = %request_id, function = function.name())
}

// ------------------------------------------------------------------ logging

/// JSON lines on stdout (CloudWatch reads them as structured logs). A second call is a no-op.
///
/// The level is `AWS_LAMBDA_LOG_LEVEL`, else `RUST_LOG`, else `info`, parsed as
/// `tracing_subscriber::filter::Targets` (`level` or `target=level,…` directives — the
/// `env-filter` syntax without span/field filters, and without its regex engine in the
/// binary); an unparsable value means `info`.
fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let level = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .ok()
        .filter(|v| !v.trim().is_empty())
        // Lambda's levels are TRACE..FATAL; tracing has no FATAL.
        .map(|v| match v.trim().to_ascii_lowercase().as_str() {
            "fatal" => "error".to_owned(),
            other => other.to_owned(),
        })
        .or_else(|| {
            std::env::var("RUST_LOG")
                .ok()
                .filter(|v| !v.trim().is_empty())
        })
        .unwrap_or_else(|| "info".to_owned());
    let filter = log_filter(&level);
    let _ = tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .with_target(false)
        .with_writer(std::io::stdout)
        .finish()
        .with(filter)
        .try_init();
}

/// Libraries that log raw requests and responses below `info` — the runtime logs each event
/// (session tokens, notification XML), the AWS SDK DynamoDB bodies (the cached WeChat access
/// token), the HTTP stacks headers. A level below `info` (`AWS_LAMBDA_LOG_LEVEL=TRACE` in the
/// template's `LogLevel`) is for our code; these stay at `info` at most, unless a directive
/// names them.
const CHATTY_LIBRARIES: [&str; 11] = [
    "lambda_runtime",
    "lambda_runtime_api_client",
    "lambda_http",
    "aws_smithy_runtime",
    "aws_smithy_runtime_api",
    "aws_smithy_http",
    "aws_sdk_dynamodb",
    "hyper",
    "hyper_util",
    "reqwest",
    "h2",
];

/// The log filter for `level` (see [`init_logging`]).
fn log_filter(level: &str) -> tracing_subscriber::filter::Targets {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    let mut filter = level
        .trim()
        .parse::<Targets>()
        .unwrap_or_else(|_| Targets::new().with_default(LevelFilter::INFO));
    let cap = filter
        .default_level()
        .unwrap_or(LevelFilter::OFF)
        .min(LevelFilter::INFO);
    for library in CHATTY_LIBRARIES {
        let named = level
            .split(',')
            .any(|d| d.trim().split('=').next() == Some(library));
        if !named {
            filter = filter.with_target(library, cap);
        }
    }
    filter
}

// ------------------------------------------------------------------ cold start

/// Why a cold start failed. `error_type` is what the Runtime API and CloudWatch show.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct InitError {
    /// `ConfigError` (configuration or secret) or `StartupError` (store, clients).
    pub error_type: &'static str,
    /// Every problem, one per line; names variables, never their secret values.
    pub message: String,
}

impl InitError {
    fn config(message: impl Into<String>) -> Self {
        InitError {
            error_type: "ConfigError",
            message: message.into(),
        }
    }
}

impl From<StartupError> for InitError {
    fn from(e: StartupError) -> Self {
        match e {
            StartupError::Config(c) => InitError::config(c.to_string()),
            other => InitError {
                error_type: "StartupError",
                message: other.to_string(),
            },
        }
    }
}

impl From<InitError> for Diagnostic {
    fn from(e: InitError) -> Self {
        Diagnostic {
            error_type: e.error_type.to_owned(),
            error_message: e.message,
        }
    }
}

/// Builds the [`App`]: secret (if any) → config → store → clients.
pub async fn start() -> Result<App, InitError> {
    let secret = match std::env::var(SECRET_ARN_VAR)
        .ok()
        .filter(|v| !v.trim().is_empty())
    {
        Some(arn) => read_secret(arn.trim()).await?,
        None => HashMap::new(),
    };
    let config = Config::from_lookup(|k| lookup(k, &secret)).map_err(StartupError::from)?;
    let store = open_store(&config.store)
        .await
        .map_err(StartupError::from)?;
    Ok(App::new(config, store, Clock::default())?)
}

/// The environment first (non-empty values only), then the secret.
fn lookup(key: &str, secret: &HashMap<String, String>) -> Option<String> {
    std::env::var(key)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .or_else(|| secret.get(key).cloned())
}

/// Reads the secret's JSON object. Numbers and booleans become their text; other values are
/// refused by key name (their content is never echoed).
async fn read_secret(arn: &str) -> Result<HashMap<String, String>, InitError> {
    let text = crate::aws::secrets::get_secret_string(arn)
        .await
        .map_err(|why| {
            InitError::config(format!(
                "cannot read the secret {SECRET_ARN_VAR}={arn}: {why}"
            ))
        })?
        .ok_or_else(|| {
            InitError::config(format!(
                "the secret {arn} has no SecretString (binary secrets are not supported)"
            ))
        })?;
    parse_secret(&text).map_err(|why| InitError::config(format!("the secret {arn} {why}")))
}

/// `{"KEY": "value", …}` → map. Errors name keys only.
pub fn parse_secret(text: &str) -> Result<HashMap<String, String>, String> {
    let object: serde_json::Map<String, Value> = match serde_json::from_str(text) {
        Ok(Value::Object(o)) => o,
        _ => return Err("is not a JSON object of strings".to_owned()),
    };
    let mut values = HashMap::with_capacity(object.len());
    let mut bad = Vec::new();
    for (k, v) in object {
        match v {
            Value::String(s) => {
                values.insert(k, s);
            }
            Value::Number(n) => {
                values.insert(k, n.to_string());
            }
            Value::Bool(b) => {
                values.insert(k, b.to_string());
            }
            Value::Null => {}
            _ => bad.push(k),
        }
    }
    if bad.is_empty() {
        Ok(values)
    } else {
        bad.sort();
        Err(format!(
            "has values that are not strings: {}",
            bad.join(", ")
        ))
    }
}

/// Tells the Lambda service why the sandbox cannot start (best effort: the exit follows).
async fn report_init_error(e: &InitError) {
    let Some(api) = std::env::var("AWS_LAMBDA_RUNTIME_API")
        .ok()
        .filter(|v| !v.is_empty())
    else {
        return;
    };
    let url = format!("http://{api}/2018-06-01/runtime/init/error");
    let body = json!({ "errorMessage": e.message, "errorType": e.error_type });
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
    {
        Ok(c) => c,
        Err(err) => {
            tracing::error!(error = %err, "cannot report the init error");
            return;
        }
    };
    let sent = client
        .post(url)
        .header(
            "Lambda-Runtime-Function-Error-Type",
            format!("Runtime.{}", e.error_type),
        )
        .json(&body)
        .send()
        .await;
    if let Err(err) = sent {
        tracing::error!(error = %err, "cannot report the init error");
    }
}

// ------------------------------------------------------------------ HTTP

/// An invocation that could not be handled at all (unknown event shape). HTTP failures are
/// not errors here: they are responses with `{"code", "message"}`.
#[derive(Debug, thiserror::Error)]
pub enum InvocationError {
    #[error("{0}")]
    UnknownEvent(String),
    #[error("invalid API Gateway event: {0}")]
    BadHttpEvent(String),
}

impl From<InvocationError> for Diagnostic {
    fn from(e: InvocationError) -> Self {
        let error_type = match e {
            InvocationError::UnknownEvent(_) => "UnknownEvent",
            InvocationError::BadHttpEvent(_) => "BadHttpEvent",
        };
        Diagnostic {
            error_type: error_type.to_owned(),
            error_message: e.to_string(),
        }
    }
}

/// One API Gateway request: route → handler → response. Never fails.
async fn http_event<F: FunctionEntry>(
    app: &App,
    req: ApiGatewayV2httpRequest,
) -> crate::http::Response {
    let started = Instant::now();
    let method = req.request_context.http.method.as_str().to_owned();
    let (route, req) = match to_wx_request(F::FUNCTION, req) {
        Ok(found) => found,
        Err(resp) => {
            tracing::info!(%method, status = resp.status().as_u16(), "no such route");
            return *resp;
        }
    };
    let resp = handlers::handle_as::<F>(app, req).await;
    tracing::info!(
        %method,
        path = route.path,
        status = resp.status().as_u16(),
        ms = started.elapsed().as_millis() as u64,
        "request"
    );
    resp
}

/// Finds this function's route for the request and turns API Gateway's event into the
/// `http::Request<Bytes>` the handlers take: URI = route path + query string (made URI-safe,
/// see [`uri_safe_query`]) whatever the stage, body base64-decoded, API Gateway's `sourceIp`
/// as [`crate::http::PeerIp`].
fn to_wx_request(
    function: Function,
    event: ApiGatewayV2httpRequest,
) -> Result<(&'static Route, crate::http::Request), Box<crate::http::Response>> {
    let ctx = event.request_context;
    let method = ctx.http.method;
    let iam_caller = ctx
        .authorizer
        .as_ref()
        .and_then(|a| a.iam.as_ref())
        .map(|iam| {
            iam.user_arn
                .clone()
                .or_else(|| iam.caller_id.clone())
                .unwrap_or_default()
        });
    let raw = event
        .raw_path
        .filter(|p| !p.is_empty())
        .or(ctx.http.path)
        .unwrap_or_default();
    let path = strip_stage(&raw, ctx.stage.as_deref());
    let refuse = |e: ApiError| Box::new(e.into_response());
    let route = handlers::find_route(method.as_str(), path)
        .filter(|r| r.function == function)
        .ok_or_else(|| {
            refuse(ApiError::not_found(
                "NO_SUCH_ROUTE",
                format!("{method} {path} is not served by {}", function.name()),
            ))
        })?;
    if route.caller == Caller::Admin {
        // API Gateway checks the IAM signature of admin routes (infra/template.yaml). Checked
        // again here, so a route added without `Auth` (a function URL, a catch-all) cannot
        // reach refunds and withdrawals unsigned; and who called is logged.
        match &iam_caller {
            Some(who) => tracing::info!(admin = %who, path, "admin call"),
            None => {
                tracing::warn!(
                    security = true,
                    path,
                    "admin route reached without API Gateway's IAM authorisation"
                );
                return Err(refuse(ApiError::forbidden(
                    "admin routes need an IAM-signed request through API Gateway (SigV4)",
                )));
            }
        }
    }
    let query = event.raw_query_string.unwrap_or_default();
    let target = if query.is_empty() {
        route.path.to_owned()
    } else {
        let query = uri_safe_query(&query).unwrap_or(query);
        format!("{}?{query}", route.path)
    };
    let uri: http::Uri = target.parse().map_err(|_| {
        refuse(ApiError::bad_request(
            "BAD_QUERY",
            "the query string is not a URI's",
        ))
    })?;
    let body = match event.body {
        None => Bytes::new(),
        Some(b) if event.is_base64_encoded => {
            use base64::Engine as _;
            Bytes::from(
                base64::engine::general_purpose::STANDARD
                    .decode(b.as_bytes())
                    .map_err(|_| {
                        refuse(ApiError::bad_request("BAD_BODY", "the body is not base64"))
                    })?,
            )
        }
        Some(b) => Bytes::from(b),
    };
    let mut req = http::Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.headers_mut() = event.headers;
    if let Some(cookies) = event.cookies.filter(|c| !c.is_empty()) {
        if let Ok(v) = http::HeaderValue::from_str(&cookies.join("; ")) {
            req.headers_mut().insert(http::header::COOKIE, v);
        }
    }
    // Who called an admin route (checked above), for what it records.
    if let (Caller::Admin, Some(who)) = (route.caller, iam_caller) {
        req.extensions_mut().insert(crate::http::AdminCaller(who));
    }
    // API Gateway's word for the caller's address, never a header the caller wrote.
    if let Some(ip) = ctx.http.source_ip.and_then(|s| s.parse().ok()) {
        req.extensions_mut().insert(crate::http::PeerIp(ip));
    }
    Ok((route, req))
}

/// `/prod/fn/login` with stage `prod` → `/fn/login`; the `$default` stage has no prefix.
pub fn strip_stage<'a>(path: &'a str, stage: Option<&str>) -> &'a str {
    match stage {
        Some(s) if !s.is_empty() && s != "$default" => path
            .strip_prefix('/')
            .and_then(|p| p.strip_prefix(s))
            .filter(|rest| rest.starts_with('/'))
            .unwrap_or(path),
        _ => path,
    }
}

/// `query` with the characters a URI may not hold raw (controls, space, `"`, `<`, `>`, DEL)
/// percent-encoded, or `None` when it has none. Decoding gives the same values, so the
/// handlers read what the caller sent.
fn uri_safe_query(query: &str) -> Option<String> {
    let unsafe_byte = |b: u8| b <= b' ' || b == 0x7f || matches!(b, b'"' | b'<' | b'>');
    if !query.bytes().any(unsafe_byte) {
        return None;
    }
    let mut out = String::with_capacity(query.len() + 8);
    for c in query.chars() {
        if c.is_ascii() && unsafe_byte(c as u8) {
            out.push_str(&format!("%{:02X}", c as u8));
        } else {
            out.push(c);
        }
    }
    Some(out)
}

// ------------------------------------------------------------------ orderSync

/// The three event shapes `orderSync` is invoked with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventShape {
    /// DynamoDB stream records (outbox inserts).
    Stream,
    /// EventBridge schedule.
    Schedule,
    /// API Gateway HTTP API (payload 2.0).
    Http,
}

/// Tells the shapes apart from the JSON alone.
pub fn event_shape(event: &Value) -> Option<EventShape> {
    if let Some(records) = event.get("Records").and_then(Value::as_array) {
        if records
            .iter()
            .all(|r| r.get("eventSource").and_then(Value::as_str) == Some("aws:dynamodb"))
        {
            return Some(EventShape::Stream);
        }
        return None;
    }
    if event.get("source").and_then(Value::as_str) == Some("aws.events")
        || event.get("detail-type").is_some()
    {
        return Some(EventShape::Schedule);
    }
    if event
        .pointer("/requestContext/http")
        .is_some_and(Value::is_object)
    {
        return Some(EventShape::Http);
    }
    None
}

/// `deadline_ms`: the invocation's deadline from the Runtime API (epoch ms); the schedule and a
/// stream batch stop starting work [`handlers::order_sync::SCHEDULE_MARGIN`] before it.
async fn order_sync_event<F: FunctionEntry>(
    app: &App,
    payload: Value,
    deadline_ms: u64,
) -> Result<Value, InvocationError> {
    match event_shape(&payload) {
        Some(EventShape::Stream) => {
            let deadline = crate::time::Deadline::from_epoch_ms(
                deadline_ms,
                handlers::order_sync::SCHEDULE_MARGIN,
            );
            Ok(stream_event(app, &payload, deadline).await)
        }
        Some(EventShape::Schedule) => {
            let started = Instant::now();
            let deadline = crate::time::Deadline::from_epoch_ms(
                deadline_ms,
                handlers::order_sync::SCHEDULE_MARGIN,
            );
            let result = handlers::order_sync::on_schedule(app, deadline).await;
            tracing::info!(ms = started.elapsed().as_millis() as u64, "schedule");
            Ok(result)
        }
        Some(EventShape::Http) => {
            crate::time::bounded(
                Some(invocation_deadline(deadline_ms)),
                http_function_event::<F>(app, payload),
            )
            .await
        }
        None => Err(InvocationError::UnknownEvent(
            "orderSync handles DynamoDB stream records, EventBridge schedules and API Gateway HTTP API events".to_owned(),
        )),
    }
}

/// The outbox entries of a stream batch: (entry id, sequence number), in order. Records that
/// are not outbox inserts are skipped (the event source's filter already drops them).
pub fn outbox_records(event: &Value) -> Vec<(String, String)> {
    let Some(records) = event.get("Records").and_then(Value::as_array) else {
        return Vec::new();
    };
    records
        .iter()
        .filter(|r| r.get("eventName").and_then(Value::as_str) == Some("INSERT"))
        .filter_map(|r| {
            let id = r
                .pointer("/dynamodb/Keys/pk/S")?
                .as_str()?
                .strip_prefix("outbox#")?;
            let seq = r.pointer("/dynamodb/SequenceNumber")?.as_str()?;
            Some((id.to_owned(), seq.to_owned()))
        })
        .filter(|(id, _)| !id.is_empty())
        .collect()
}

/// Runs the outbox entries and reports the failed ones — and those not started before
/// `deadline` — by sequence number, so Lambda retries only those (`ReportBatchItemFailures`).
async fn stream_event(app: &App, event: &Value, deadline: crate::time::Deadline) -> Value {
    let started = Instant::now();
    let records = outbox_records(event);
    let ids: Vec<String> = records.iter().map(|(id, _)| id.clone()).collect();
    let failed = if ids.is_empty() {
        Vec::new()
    } else {
        handlers::order_sync::on_outbox_records(app, ids, deadline).await
    };
    let failures: Vec<Value> = records
        .iter()
        .filter(|(id, _)| failed.contains(id))
        .map(|(_, seq)| json!({ "itemIdentifier": seq }))
        .collect();
    tracing::info!(
        records = records.len(),
        failed = failures.len(),
        ms = started.elapsed().as_millis() as u64,
        "outbox batch"
    );
    json!({ "batchItemFailures": failures })
}

/// An HTTP response as API Gateway's payload 2.0 takes it from a function: a textual body
/// (`text/*`, JSON, XML) that is UTF-8 as text, anything else base64; every header that is
/// text.
fn api_gateway_v2_response(resp: crate::http::Response) -> Value {
    use base64::Engine as _;
    let (parts, body) = resp.into_parts();
    let mut headers = serde_json::Map::new();
    for (name, value) in &parts.headers {
        if let Ok(v) = value.to_str() {
            headers.insert(name.as_str().to_owned(), Value::String(v.to_owned()));
        }
    }
    let textual = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("text/") || t.contains("json") || t.contains("xml"));
    let (body, base64) = match std::str::from_utf8(&body) {
        Ok(text) if textual => (text.to_owned(), false),
        _ => (
            base64::engine::general_purpose::STANDARD.encode(&body),
            true,
        ),
    };
    json!({
        "statusCode": parts.status.as_u16(),
        "headers": headers,
        "body": body,
        "isBase64Encoded": base64,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn trace_logging_leaves_the_libraries_that_log_raw_events_at_info() {
        use tracing::Level;
        let f = super::log_filter("trace");
        assert!(f.would_enable("wxshop::handlers", &Level::TRACE));
        assert!(!f.would_enable("lambda_runtime::layers::api_response", &Level::TRACE));
        assert!(!f.would_enable("aws_smithy_runtime::client", &Level::DEBUG));
        assert!(f.would_enable("lambda_runtime", &Level::INFO));
        // A quieter level stays quieter; a library named on purpose gets what was asked.
        let f = super::log_filter("error");
        assert!(!f.would_enable("lambda_runtime", &Level::INFO));
        assert!(f.would_enable("lambda_runtime", &Level::ERROR));
        let f = super::log_filter("info,hyper=trace");
        assert!(f.would_enable("hyper::proto", &Level::TRACE));
        assert!(!f.would_enable("reqwest::connect", &Level::DEBUG));
    }

    use super::*;

    #[test]
    fn strips_a_named_stage_only() {
        assert_eq!(strip_stage("/prod/fn/login", Some("prod")), "/fn/login");
        assert_eq!(strip_stage("/fn/login", Some("prod")), "/fn/login");
        assert_eq!(
            strip_stage("/production/fn/login", Some("prod")),
            "/production/fn/login"
        );
        assert_eq!(strip_stage("/fn/login", Some("$default")), "/fn/login");
        assert_eq!(strip_stage("/fn/login", None), "/fn/login");
    }

    #[test]
    fn the_client_ip_is_api_gateways_source_ip_not_a_forwarded_header() {
        let event = json!({
            "version": "2.0", "routeKey": "POST /fn/unifiedOrder", "rawPath": "/fn/unifiedOrder",
            "rawQueryString": "",
            "headers": {"content-type": "application/json", "x-forwarded-for": "8.8.8.8, 203.0.113.7"},
            "requestContext": {"http": {"method": "POST", "path": "/fn/unifiedOrder",
                                        "protocol": "HTTP/1.1", "sourceIp": "203.0.113.7"},
                               "stage": "$default", "requestId": "r1",
                               "routeKey": "POST /fn/unifiedOrder", "accountId": "1",
                               "apiId": "a", "domainName": "d", "domainPrefix": "d",
                               "time": "t", "timeEpoch": 0},
            "body": "{}", "isBase64Encoded": false
        });
        let request: ApiGatewayV2httpRequest = serde_json::from_value(event).unwrap();
        let (_, req) = to_wx_request(Function::UnifiedOrder, request).unwrap();
        assert_eq!(crate::http::client_ip(&req), "203.0.113.7");
    }

    #[test]
    fn an_admin_route_without_iam_authorisation_is_refused() {
        let event = |authorizer: Value| {
            let mut e = json!({
                "version": "2.0", "routeKey": "POST /admin/funds", "rawPath": "/admin/funds",
                "rawQueryString": "", "headers": {"content-type": "application/json"},
                "requestContext": {"http": {"method": "POST", "path": "/admin/funds",
                                            "protocol": "HTTP/1.1", "sourceIp": "203.0.113.7"},
                                   "stage": "$default", "requestId": "r1",
                                   "routeKey": "POST /admin/funds", "accountId": "1",
                                   "apiId": "a", "domainName": "d", "domainPrefix": "d",
                                   "time": "t", "timeEpoch": 0},
                "body": "{}", "isBase64Encoded": false
            });
            if !authorizer.is_null() {
                e["requestContext"]["authorizer"] = authorizer;
            }
            let request: ApiGatewayV2httpRequest = serde_json::from_value(e).unwrap();
            to_wx_request(Function::Funds, request)
        };
        let refused = event(Value::Null).err().unwrap();
        assert_eq!(refused.status().as_u16(), 403);
        let signed = event(json!({"iam": {"accessKey": "AKIA", "accountId": "1",
                                          "callerId": "AID", "userArn": "arn:aws:iam::1:user/ops",
                                          "userId": "AID"}}));
        assert!(signed.is_ok());
    }

    #[test]
    fn any_query_string_makes_a_request() {
        let mut queries: Vec<String> = (0u8..128).map(|b| format!("a={}", b as char)).collect();
        queries.extend(["a=b c&d=\"x\"", "q=<script>", "a=é ü", ""].map(str::to_owned));
        for q in queries {
            let event = json!({
                "version": "2.0", "routeKey": "POST /fn/login", "rawPath": "/fn/login",
                "rawQueryString": q, "headers": {"host": "shop.example.com"},
                "requestContext": {"http": {"method": "POST", "path": "/fn/login",
                                            "protocol": "HTTP/1.1", "sourceIp": "1.2.3.4"},
                                   "stage": "$default", "requestId": "r", "routeKey": "x",
                                   "accountId": "1", "apiId": "a", "domainName": "d",
                                   "domainPrefix": "d", "time": "t", "timeEpoch": 0},
                "body": "{}", "isBase64Encoded": false
            });
            let request: ApiGatewayV2httpRequest = serde_json::from_value(event).unwrap();
            let built = std::panic::catch_unwind(|| to_wx_request(Function::Login, request));
            let (_, req) = built
                .unwrap_or_else(|_| panic!("{q:?} panicked"))
                .unwrap_or_else(|_| panic!("{q:?} refused"));
            if q == "a=b c&d=\"x\"" {
                let params: std::collections::HashMap<String, String> =
                    url::form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes())
                        .into_owned()
                        .collect();
                assert_eq!(
                    params.get("a").map(String::as_str),
                    Some("b c"),
                    "{params:?}"
                );
                assert_eq!(params.get("d").map(String::as_str), Some("\"x\""));
            }
        }
    }

    #[test]
    fn text_answers_go_as_text_and_anything_else_as_base64() {
        let answer = |ct: &str, body: &'static [u8]| {
            let mut r = http::Response::new(Bytes::from_static(body));
            r.headers_mut()
                .insert(http::header::CONTENT_TYPE, ct.parse().unwrap());
            api_gateway_v2_response(r)
        };
        let xml = answer(
            "application/xml",
            b"<xml><return_code>SUCCESS</return_code></xml>",
        );
        assert_eq!(xml["isBase64Encoded"], false);
        assert_eq!(xml["body"], "<xml><return_code>SUCCESS</return_code></xml>");
        assert_eq!(xml["headers"]["content-type"], "application/xml");
        let png = answer("image/png", b"\x89PNG\r\n");
        assert_eq!(png["isBase64Encoded"], true);
        assert_eq!(png["body"], "iVBORw0K");
    }

    #[test]
    fn tells_event_shapes_apart() {
        let stream = json!({"Records": [{"eventSource": "aws:dynamodb", "eventName": "INSERT"}]});
        let schedule =
            json!({"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}});
        let http = json!({"version": "2.0", "rawPath": "/admin/orderSync", "requestContext": {"http": {"method": "POST"}}});
        let sqs = json!({"Records": [{"eventSource": "aws:sqs"}]});
        assert_eq!(event_shape(&stream), Some(EventShape::Stream));
        assert_eq!(event_shape(&schedule), Some(EventShape::Schedule));
        assert_eq!(event_shape(&http), Some(EventShape::Http));
        assert_eq!(event_shape(&sqs), None);
        assert_eq!(event_shape(&json!({})), None);
    }

    #[test]
    fn picks_outbox_inserts_with_their_sequence_numbers() {
        let event = json!({"Records": [
            {"eventSource": "aws:dynamodb", "eventName": "INSERT",
             "dynamodb": {"Keys": {"pk": {"S": "outbox#a1"}}, "SequenceNumber": "100"}},
            {"eventSource": "aws:dynamodb", "eventName": "MODIFY",
             "dynamodb": {"Keys": {"pk": {"S": "outbox#a2"}}, "SequenceNumber": "101"}},
            {"eventSource": "aws:dynamodb", "eventName": "INSERT",
             "dynamodb": {"Keys": {"pk": {"S": "order#o1"}}, "SequenceNumber": "102"}},
            {"eventSource": "aws:dynamodb", "eventName": "INSERT",
             "dynamodb": {"Keys": {"pk": {"S": "outbox#b2"}}, "SequenceNumber": "103"}}
        ]});
        assert_eq!(
            outbox_records(&event),
            vec![
                ("a1".to_owned(), "100".to_owned()),
                ("b2".to_owned(), "103".to_owned())
            ]
        );
    }

    #[test]
    fn secret_values_become_strings_and_errors_name_keys_only() {
        let m = parse_secret(r#"{"A": "x", "B": 3, "C": null}"#).unwrap();
        assert_eq!(m.get("A").map(String::as_str), Some("x"));
        assert_eq!(m.get("B").map(String::as_str), Some("3"));
        assert!(!m.contains_key("C"));
        let e = parse_secret(r#"{"K": {"nested": "topsecret"}}"#).unwrap_err();
        assert!(e.contains('K') && !e.contains("topsecret"), "{e}");
        assert!(parse_secret("not json topsecret")
            .unwrap_err()
            .find("topsecret")
            .is_none());
    }
}
