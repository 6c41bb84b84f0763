#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! Each function run with the DynamoDB permissions infra/template.yaml gives it, and no more.
//!
//! In AWS a store call the function's role does not allow fails with `AccessDeniedException`
//! — only there: wxlocal, SQLite and moto check no IAM. [`AsDeployed`] wraps the stack's store
//! and refuses, as IAM would, every call that needs a DynamoDB action the function's policy
//! lacks, mapping store calls to actions as `shared/src/store/dynamo.rs` makes them: `get` is
//! `GetItem`, `query` is `Query` on an index, a lone put or delete is `PutItem`/`DeleteItem`,
//! and a batch (or a lone check) is one `TransactWriteItems`, which IAM authorises per item:
//! `PutItem`, `DeleteItem`, `ConditionCheckItem` (AWS, "Using IAM with DynamoDB transactions":
//! <https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/transaction-apis-iam.html>).
//!
//! The function under test is handed that store directly, as its Lambda would run; everything
//! around it (the orders, the payments) goes through the stack as usual.

#[path = "reliability_support.rs"]
mod support;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::{json, Value};
use serde_yaml::Value as Yaml;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;
use wxlocal::gateway::Running;
use wxshop::app::App;
use wxshop::handlers::order_sync::{on_outbox_records, on_schedule, LOCAL_SCHEDULE_BUDGET};
use wxshop::handlers::Function;
use wxshop::store::{DynStore, Expect, Kind, Page, Query, Record, Store, StoreError, Write};

const WAIT: Duration = Duration::from_secs(20);

// ------------------------------------------------------------------ the template's grants

/// A plain string, or a short-tag's argument shown as `!Tag value` (as tests/tests/infra.rs).
fn text(v: &Yaml) -> String {
    match v {
        Yaml::String(s) => s.clone(),
        Yaml::Tagged(t) => format!("{} {}", t.tag, text(&t.value)),
        other => format!("{other:?}"),
    }
}

/// The DynamoDB actions the template allows the function built from `binary`: on the table,
/// and on its indexes.
fn granted(binary: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/template.yaml");
    let template: Yaml =
        serde_yaml::from_str(&std::fs::read_to_string(path).expect("read the template"))
            .expect("template is YAML");
    let function = template["Resources"]
        .as_mapping()
        .expect("Resources")
        .values()
        .find(|r| {
            r["Type"].as_str() == Some("AWS::Serverless::Function")
                && r["Metadata"]["BuildProperties"]["Binary"].as_str() == Some(binary)
        })
        .unwrap_or_else(|| panic!("no function built from {binary}"));
    let (mut table, mut indexes) = (BTreeSet::new(), BTreeSet::new());
    for policy in function["Properties"]["Policies"]
        .as_sequence()
        .expect("Policies")
    {
        let Some(statements) = policy["Statement"].as_sequence() else {
            continue;
        };
        for st in statements
            .iter()
            .filter(|s| s["Effect"].as_str() == Some("Allow"))
        {
            let actions: Vec<String> = match &st["Action"] {
                Yaml::Sequence(a) => a.iter().map(text).collect(),
                one => vec![text(one)],
            };
            match text(&st["Resource"]).as_str() {
                "!GetAtt Table.Arn" => table.extend(actions),
                "!Sub ${Table.Arn}/index/*" => indexes.extend(actions),
                _ => {}
            }
        }
    }
    (table, indexes)
}

// ------------------------------------------------------------------ IAM, as AWS applies it

/// The stack's store as the function `binary` reaches DynamoDB in AWS: a call whose actions
/// its role lacks fails as `AccessDeniedException` does (`StoreError::Backend`, nothing
/// done), and is noted in `denied`.
struct AsDeployed {
    inner: DynStore,
    binary: &'static str,
    table: BTreeSet<String>,
    indexes: BTreeSet<String>,
    denied: Mutex<Vec<String>>,
    /// Every action the function's calls needed (granted or not), for the report.
    used: Mutex<BTreeSet<String>>,
    /// The table's stream: ids of the outbox entries this function inserted ([`Deployed`]).
    stream: Arc<Mutex<Vec<String>>>,
}

impl AsDeployed {
    fn wrap(r: &Running, binary: &'static str) -> Arc<AsDeployed> {
        AsDeployed::on(r.app.store.clone(), binary, Arc::default())
    }

    fn on(inner: DynStore, binary: &'static str, stream: Arc<Mutex<Vec<String>>>) -> Arc<Self> {
        let (table, indexes) = granted(binary);
        Arc::new(AsDeployed {
            inner,
            binary,
            table,
            indexes,
            denied: Mutex::new(Vec::new()),
            used: Mutex::new(BTreeSet::new()),
            stream,
        })
    }

    /// `Err` for the first of `actions` (on the table, or on an index) not granted.
    fn allow(&self, op: &str, actions: &[&str], on_index: bool) -> Result<(), StoreError> {
        let granted = if on_index { &self.indexes } else { &self.table };
        self.used.lock().unwrap().extend(
            actions
                .iter()
                .map(|a| format!("{a}{}", if on_index { " (index)" } else { "" })),
        );
        match actions
            .iter()
            .find(|a| !granted.contains(&format!("dynamodb:{a}")))
        {
            None => Ok(()),
            Some(missing) => {
                self.denied
                    .lock()
                    .unwrap()
                    .push(format!("{op} needs {missing}"));
                Err(StoreError::Backend(format!(
                    "dynamodb {op}: AccessDeniedException: the role of {} is not authorized \
                     to perform: dynamodb:{missing}",
                    self.binary
                )))
            }
        }
    }

    fn denied(&self) -> Vec<String> {
        self.denied.lock().unwrap().clone()
    }
}

/// The IAM action of one write inside `TransactWriteItems` (or alone).
fn action_of(w: &Write) -> &'static str {
    match w {
        Write::Put { .. } => "PutItem",
        Write::Delete { .. } => "DeleteItem",
        Write::Check { .. } => "ConditionCheckItem",
    }
}

#[async_trait]
impl Store for AsDeployed {
    async fn get(&self, kind: Kind, id: &str) -> Result<Option<Record>, StoreError> {
        self.allow("GetItem", &["GetItem"], false)?;
        self.inner.get(kind, id).await
    }

    async fn write(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        let actions: Vec<&str> = writes.iter().map(action_of).collect();
        let op = match writes.as_slice() {
            [Write::Put { .. }] => "PutItem",
            [Write::Delete { .. }] => "DeleteItem",
            _ => "TransactWriteItems",
        };
        self.allow(op, &actions, false)?;
        // What the table's stream will carry to orderSync: new outbox entries (INSERT; the
        // event source's filter drops every other record and every MODIFY).
        let inserted: Vec<String> = writes
            .iter()
            .filter_map(|w| match w {
                Write::Put { record, expect }
                    if record.kind == Kind::Outbox
                        && (*expect == Expect::Absent || record.version == 1) =>
                {
                    Some(record.id.clone())
                }
                _ => None,
            })
            .collect();
        self.inner.write(writes).await?;
        self.stream.lock().unwrap().extend(inserted);
        Ok(())
    }

    async fn query(&self, query: Query) -> Result<Page, StoreError> {
        self.allow("Query", &["Query"], true)?;
        self.inner.query(query).await
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
}

/// `method path` with `body` run by its function on `store`, as that function's Lambda would
/// run it: (status, body as text).
async fn call_as_deployed(
    r: &Running,
    store: Arc<AsDeployed>,
    path: &str,
    headers: &[(&str, &str)],
    body: String,
) -> (u16, String) {
    let mut app = r.app.clone();
    app.store = store;
    let route = wxshop::handlers::find_route("POST", path).expect("a route");
    let mut req = http::Request::builder().method("POST").uri(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Bytes::from(body)).unwrap();
    let resp = tokio::time::timeout(WAIT, wxshop::handlers::handle(&app, route, req))
        .await
        .expect("the function answers in time");
    let status = resp.status().as_u16();
    (status, String::from_utf8_lossy(resp.body()).into_owned())
}

// ------------------------------------------------------------------ payCallback

/// A refund made by hand in the WeChat Pay merchant platform that WeChat could not pay out
/// (`CHANGE`: the user's card closed; the money waits at WeChat for a person to redirect it).
/// payCallback keeps it once as a `refund_abnormal` event — written with a check that the
/// order is still as read, one `TransactWriteItems` with a `ConditionCheck` — and acknowledges
/// it. Without `dynamodb:ConditionCheckItem` on payCallback's role that write was refused in
/// AWS: every notification answered `FAIL`, WeChat retrying for a day, no event for anyone to
/// act on, the money left unredirected.
#[tokio::test]
async fn pay_callback_keeps_an_abnormal_refund_made_by_hand_as_deployed() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (token, _) = c.login("iam-change").await;
    let order = c.order_tea(&token, 1).await;
    let no = order["out_trade_no"].as_str().unwrap().to_owned();
    c.pay_at_sandbox(&no).await;
    eventually("PAID", WAIT, || async {
        c.status(&token, &no).await["status"] == "PAID"
    })
    .await;
    let paid = c.status(&token, &no).await;
    let txid = paid["transaction_id"].as_str().unwrap().to_owned();

    let out_refund_no = "50300000000000000000000000123";
    let cfg = &r.app.config;
    let body = {
        use wxshop::domain::{Fen, OutRefundNo, OutTradeNo};
        use wxshop::pay::refund_notify::{build_refund_notification, RefundNotificationSpec};
        build_refund_notification(
            &RefundNotificationSpec {
                appid: cfg.appid.clone(),
                mch_id: cfg.mch_id.clone(),
                sub_appid: None,
                sub_mch_id: None,
                out_trade_no: OutTradeNo::parse(no.as_str()).unwrap(),
                out_refund_no: OutRefundNo::parse(out_refund_no).unwrap(),
                transaction_id: txid,
                refund_id: out_refund_no.into(),
                total_fee: Fen::new(1990).unwrap(),
                refund_fee: Fen::new(1990).unwrap(),
                success_time_ms: None,
                refund_status: wxshop::pay::types::RefundStatus::Change,
            },
            cfg.api_key(),
        )
    };
    let store = AsDeployed::wrap(&r, "pay-callback");
    let (status, reply) = call_as_deployed(
        &r,
        store.clone(),
        "/callbacks/refund",
        &[("content-type", "text/xml")],
        body,
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        return_code(&reply),
        "SUCCESS",
        "acknowledged, not FAIL for a day: {reply} (denied: {:?})",
        store.denied()
    );
    assert_eq!(store.denied(), Vec::<String>::new());
    let kept =
        wxshop::store::repo::get_event(r.app.store.as_ref(), "refund_abnormal", out_refund_no)
            .await
            .unwrap();
    assert!(kept.is_some(), "a refund_abnormal event for a person");
    // No money left the merchant's hands: the order is as it was.
    let after = c.status(&token, &no).await;
    assert_eq!(after["status"], "PAID", "{after}");
    assert_eq!(after["refunded_fee"], 0, "{after}");
}

// ------------------------------------------------------------------ funds

async fn funds_as_deployed(r: &Running, store: &Arc<AsDeployed>, body: Value) -> (u16, Value) {
    let (status, text) = call_as_deployed(
        r,
        store.clone(),
        "/admin/funds",
        &[("content-type", "application/json")],
        body.to_string(),
    )
    .await;
    (status, serde_json::from_str(&text).unwrap())
}

/// A withdraw request holds a lock (a kv entry) while it waits for WeChat and deletes it when
/// done, so a repeat — its answer lost on the way, a second tap — is answered with the
/// pending withdrawal's QR code again. Without `dynamodb:DeleteItem` on the funds function's
/// role the lock was never released in AWS (only a warning logged): for a minute after any
/// withdraw request, even a refused one, every withdraw answered 409 WITHDRAWAL_IN_PROGRESS
/// ("another withdraw request is under way") though none was.
#[tokio::test]
async fn a_withdrawal_repeated_at_once_is_answered_as_deployed() {
    let r = stack_with(&[("WX_FUND_TYPE", "1")]).await;
    let c = InProcess::new(&r);
    let (token, _) = c.login("iam-funds").await;
    let order = c.order_tea(&token, 2).await;
    let no = order["out_trade_no"].as_str().unwrap().to_owned();
    c.pay_in_wechat(&token, &no).await;
    c.control("settle", &json!({"out_order_id": no})).await;
    let out = wxshop::domain::OutTradeNo::parse(no.clone()).unwrap();
    eventually("the order settled", WAIT, || async {
        wxshop::store::repo::get_order(r.app.store.as_ref(), &out)
            .await
            .unwrap()
            .is_some_and(|o| o.value.settled_at_ms.is_some())
    })
    .await;

    let store = AsDeployed::wrap(&r, "funds");
    // Refused (no bank account yet): the lock goes with the answer.
    let withdraw = json!({"action": "withdraw", "amount_fen": 1000, "remark": "payout"});
    let (s, v) = funds_as_deployed(&r, &store, withdraw.clone()).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (409, Some("NO_BANK_ACCOUNT")),
        "{v}"
    );
    let account = json!({"bank_account_type": "ACCOUNT_TYPE_BUSINESS",
        "account_bank": "招商银行", "bank_address_code": "440300",
        "account_number": "6225880112345678"});
    let (s, v) = funds_as_deployed(
        &r,
        &store,
        json!({"action": "set_bank_account", "account": account}),
    )
    .await;
    assert_eq!(s, 200, "{v}");

    let (s, first) = funds_as_deployed(&r, &store, withdraw.clone()).await;
    assert_eq!(
        s, 200,
        "the merchant withdraws right after fixing the account: {first}"
    );
    let id = first["withdrawal"]["withdraw_id"].clone();
    // The same request again at once: the pending withdrawal's QR code, not a refusal.
    let (s, again) = funds_as_deployed(&r, &store, withdraw).await;
    assert_eq!(s, 200, "{again}");
    assert_eq!(again["resumed"], true, "{again}");
    assert_eq!(again["withdrawal"]["withdraw_id"], id, "{again}");
    assert_eq!(store.denied(), Vec::<String>::new());
    let stored = wxshop::handlers::funds::list_withdrawals(r.app.store.as_ref(), 100)
        .await
        .unwrap();
    assert_eq!(stored.len(), 1, "one withdrawal: {stored:?}");
}

// ------------------------------------------------------------------ orderSync

/// Guard: the 5-minute schedule — outbox drain (each finished entry deleted), sweeps,
/// reconciliations, index migration — needs nothing orderSync's role lacks.
#[tokio::test]
async fn the_schedule_runs_as_deployed() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (token, _) = c.login("iam-schedule").await;
    let order = c.order_tea(&token, 1).await;
    let no = order["out_trade_no"].as_str().unwrap().to_owned();
    c.pay_at_sandbox(&no).await;
    eventually("PAID", WAIT, || async {
        c.status(&token, &no).await["status"] == "PAID"
    })
    .await;
    let store = AsDeployed::wrap(&r, "order-sync");
    let mut app = r.app.clone();
    app.store = store.clone();
    let report = tokio::time::timeout(
        WAIT,
        wxshop::handlers::order_sync::on_schedule(
            &app,
            wxshop::time::Deadline::after(wxshop::handlers::order_sync::LOCAL_SCHEDULE_BUDGET),
        ),
    )
    .await
    .expect("the schedule ends in time");
    assert_eq!(store.denied(), Vec::<String>::new(), "{report}");
}

// ------------------------------------------------------------------ the whole stack, as deployed

/// `(method, path)` → the binary of the function the template routes it to (its `HttpApi`
/// events): the function, and so the role, that serves the request in AWS.
fn template_routes() -> HashMap<(String, String), &'static str> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/template.yaml");
    let template: Yaml =
        serde_yaml::from_str(&std::fs::read_to_string(path).expect("read the template"))
            .expect("template is YAML");
    let mut routes = HashMap::new();
    for r in template["Resources"]
        .as_mapping()
        .expect("Resources")
        .values()
    {
        if r["Type"].as_str() != Some("AWS::Serverless::Function") {
            continue;
        }
        let binary = r["Metadata"]["BuildProperties"]["Binary"]
            .as_str()
            .expect("Binary");
        let function = Function::ALL
            .into_iter()
            .find(|f| f.binary() == binary)
            .unwrap_or_else(|| panic!("{binary} is no function of ours"));
        let Some(events) = r["Properties"]["Events"].as_mapping() else {
            continue;
        };
        for e in events
            .values()
            .filter(|e| e["Type"].as_str() == Some("HttpApi"))
        {
            let method = e["Properties"]["Method"].as_str().expect("Method");
            let path = e["Properties"]["Path"].as_str().expect("Path");
            routes.insert((method.to_owned(), path.to_owned()), function.binary());
        }
    }
    routes
}

/// A local stack whose every request is served as in AWS: by the function the template routes
/// it to, on a store that allows only what that function's role allows ([`AsDeployed`], one
/// per function, each with an [`App`] of its own as each Lambda has). It stands in front of a
/// wxlocal stack (`r`, whose own gateway then serves nobody): the test's client, WeChat Pay's
/// notifications (`WXPAY_NOTIFY_URL`, `WXPAY_REFUND_NOTIFY_URL`) and the platform's pushes
/// (the sandbox's push URL) all reach `base`; the table's stream (new outbox entries) and
/// the schedule run orderSync on its store. Only seeding the demo catalog, at start, goes
/// through wxlocal's own gateway.
struct Deployed {
    r: Running,
    base: String,
    apps: HashMap<&'static str, App>,
    stores: Vec<Arc<AsDeployed>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Deployed {
    fn drop(&mut self) {
        // A step that failed on the way (a refused call's 503, a wait that timed out) says
        // which calls were refused, if any.
        if std::thread::panicking() {
            eprintln!("calls refused so far: {:#?}", self.denied());
        }
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[derive(Clone)]
struct Front {
    apps: HashMap<&'static str, App>,
    routes: Arc<HashMap<(String, String), &'static str>>,
}

/// One request, as API Gateway hands it to the function the template names for its route.
async fn as_routed(
    axum::extract::State(front): axum::extract::State<Front>,
    req: axum::extract::Request,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (parts, body) = req.into_parts();
    let (method, path) = (
        parts.method.as_str().to_owned(),
        parts.uri.path().to_owned(),
    );
    let Some(binary) = front.routes.get(&(method.clone(), path.clone())).copied() else {
        return (
            http::StatusCode::NOT_FOUND,
            format!("the template routes no function at {method} {path}"),
        )
            .into_response();
    };
    let Some(route) = wxshop::handlers::find_route(&method, &path) else {
        return (
            http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("{method} {path} is in the template, not in ROUTES"),
        )
            .into_response();
    };
    if route.function.binary() != binary {
        return (
            http::StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "{path}: the template runs {binary}, ROUTES {:?}",
                route.function
            ),
        )
            .into_response();
    }
    let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
        return http::StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    let mut req = http::Request::from_parts(parts, bytes);
    req.extensions_mut()
        .insert(wxshop::http::PeerIp([127, 0, 0, 1].into()));
    let app = front.apps[binary].clone();
    // To the end even if the caller hangs up, as Lambda runs it.
    let resp = tokio::spawn(async move { wxshop::handlers::handle(&app, route, req).await })
        .await
        .expect("the handler does not panic");
    let (parts, body) = resp.into_parts();
    axum::response::Response::from_parts(parts, axum::body::Body::from(body))
}

async fn deployed(vars: &[(&str, &str)]) -> Deployed {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut overrides: HashMap<String, String> = [
        ("ORDER_TTL_SECS", "900".to_owned()),
        ("WXPAY_NOTIFY_URL", format!("{base}/callbacks/pay")),
        (
            "WXPAY_REFUND_NOTIFY_URL",
            format!("{base}/callbacks/refund"),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for (k, v) in vars {
        overrides.insert((*k).to_owned(), (*v).to_owned());
    }
    let r = wxlocal::gateway::start(wxlocal::gateway::Options {
        addr: "127.0.0.1:0".parse().unwrap(),
        store: Some("memory".into()),
        seed: true,
        time_scale: 0.001,
        overrides,
        use_env: false,
        // wxlocal's own relay (every function's store) drains once at start, then never:
        // the stream below is orderSync's.
        relay_every: Duration::from_secs(3600),
        schedule_every: None,
        metrics: wxshop::metrics::Metrics::off(),
    })
    .await
    .expect("stack starts");
    r.sandbox
        .set_push_url(Some(format!("{base}/callbacks/wechat")));

    let stream: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut apps = HashMap::new();
    let mut stores = Vec::new();
    for f in Function::ALL {
        let store = AsDeployed::on(r.app.store.clone(), f.binary(), stream.clone());
        let mut app =
            App::new((*r.app.config).clone(), store.clone(), r.app.clock.clone()).unwrap();
        app.metrics = r.app.metrics.clone();
        apps.insert(f.binary(), app);
        stores.push(store);
    }
    let front = Front {
        apps: apps.clone(),
        routes: Arc::new(template_routes()),
    };
    let functions = axum::Router::new().fallback(as_routed).with_state(front);
    let router = axum::Router::new()
        .nest("/sandbox", r.sandbox.router())
        .fallback_service(functions);
    let mut tasks = vec![tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    })];
    // The table's stream → orderSync (batches of 10; a record not settled comes again, five
    // times at most, then the schedule's drain is its way).
    let order_sync = apps["order-sync"].clone();
    tasks.push(tokio::spawn(async move {
        let mut tries: HashMap<String, u32> = HashMap::new();
        loop {
            let batch: Vec<String> = {
                let mut s = stream.lock().unwrap();
                let n = s.len().min(10);
                s.drain(..n).collect()
            };
            if batch.is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            let deadline = wxshop::time::Deadline::after(LOCAL_SCHEDULE_BUDGET);
            let failed = on_outbox_records(&order_sync, batch, deadline).await;
            let mut s = stream.lock().unwrap();
            for id in failed {
                let n = tries.entry(id.clone()).or_default();
                *n += 1;
                if *n <= 5 {
                    s.push(id);
                }
            }
        }
    }));
    // The schedule's outbox drain, oftener than every 5 minutes (wxlocal's relay cadence):
    // entries due later (retries, waits) are run by orderSync too.
    let order_sync = apps["order-sync"].clone();
    tasks.push(tokio::spawn(async move {
        loop {
            let _ = wxshop::handlers::order_sync::drain(&order_sync, 200).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }));
    Deployed {
        r,
        base,
        apps,
        stores,
        tasks,
    }
}

impl Deployed {
    fn client(&self) -> Client {
        Client::at(&self.base, &self.r.admin_token)
    }

    /// The 5-minute schedule, run by orderSync: its report.
    async fn schedule(&self) -> Value {
        on_schedule(
            &self.apps["order-sync"],
            wxshop::time::Deadline::after(LOCAL_SCHEDULE_BUDGET),
        )
        .await
    }

    /// Every call refused, as `function: call needs action`.
    fn denied(&self) -> Vec<String> {
        self.stores
            .iter()
            .flat_map(|s| s.denied().into_iter().map(|d| format!("{}: {d}", s.binary)))
            .collect()
    }

    /// What each function used, beside what its role grants (for the test's output).
    fn usage(&self) -> String {
        self.stores
            .iter()
            .map(|s| {
                format!(
                    "{}: used {:?}; granted {:?} + {:?} on indexes\n",
                    s.binary,
                    s.used.lock().unwrap(),
                    s.table,
                    s.indexes
                )
            })
            .collect()
    }

    fn assert_nothing_denied(&self) {
        let denied = self.denied();
        eprintln!("{}", self.usage());
        assert!(
            denied.is_empty(),
            "calls AWS would refuse (AccessDeniedException) with infra/template.yaml's \
             grants:\n{}\n{}",
            denied.join("\n"),
            self.usage()
        );
    }
}

async fn ok(c: &Client, path: &str, bearer: Option<&str>, body: Value) -> Value {
    let (s, v) = c.post(path, bearer, &body).await;
    assert_eq!(s, 200, "{path} {body}: {v}");
    v
}

/// `user` logs in, orders `qty` tea and pays at WeChat Pay (payCallback takes the
/// notification): (token, openid, out_trade_no, transaction id).
async fn paid(c: &Client, user: &str, qty: u32) -> (String, String, String, String) {
    let (token, openid) = c.login(user).await;
    let no = c.order_tea(&token, qty).await["out_trade_no"]
        .as_str()
        .unwrap()
        .to_owned();
    let txid = c.pay_at_sandbox(&no).await;
    eventually("PAID", WAIT, || async {
        c.status(&token, &no).await["status"] == "PAID"
    })
    .await;
    (token, openid, no, txid)
}

/// A merchant paid directly (fund_type 0, the trading component on): every path of every
/// function — catalog, login, shopfront, orders (a repeated key, a key retried after a failed
/// attempt, one resumed after its attempt was cut off), WeChat Pay's notifications (payment,
/// a duplicate, refunds ours and by hand, SUCCESS and CHANGE), after-sales (apply, approve,
/// reject, cancel, return and refund, mark_refunded), shipping and its correction, receipt,
/// closing, the stream's syncs and the schedule — with each function's role only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_function_runs_its_paths_with_its_grants_only() {
    let d = deployed(&[]).await;
    let c = d.client();
    let r = &d.r;

    // catalogSync (merchant): a product uploaded (the audit verdict pushed to
    // auditCallback), listed, its stock set; the shopfront reads it.
    c.listed_product("cup", "cup-1", 500).await;
    ok(
        &c,
        "/admin/catalogSync",
        None,
        json!({"action": "set_stock", "product_id": "cup", "sku_id": "cup-1", "stock": 50}),
    )
    .await;
    let (token, openid) = c.login("iam-everything").await;
    let shop = ok(
        &c,
        "/fn/catalogSync",
        Some(&token),
        json!({"action": "products"}),
    )
    .await;
    assert!(shop.to_string().contains("cup"), "{shop}");

    // unifiedOrder: a first call, the same key again, a key retried after a failed attempt.
    let (s, first) = c.order(&token, 2, Some("iam-key-1")).await;
    assert_eq!(s, 200, "{first}");
    let (s, again) = c.order(&token, 2, Some("iam-key-1")).await;
    assert_eq!(s, 200, "{again}");
    assert_eq!(again["out_trade_no"], first["out_trade_no"], "{again}");
    c.fault(json!({"path": "pay/unifiedorder", "mode": "http500", "count": 1}))
        .await;
    let (_, _failed) = c.order(&token, 1, Some("iam-key-2")).await;
    let (s, retried) = c.order(&token, 1, Some("iam-key-2")).await;
    assert_eq!(s, 200, "the key released by the failed attempt: {retried}");
    // An attempt cut off (its Lambda timed out) while WeChat Pay was slow; once its claim's
    // window has passed the same key resumes its order.
    c.fault(json!({"path": "pay/unifiedorder", "mode": "delay", "delay_ms": 3000, "count": 1}))
        .await;
    let body = json!({"items": [{"product_id": "tea", "sku_id": "tea-250g", "quantity": 1}],
        "address": {"receiver_name": "A", "detailed_address": "1 Road", "tel_number": "13800000000"},
        "idempotency_key": "iam-key-3"});
    let route = wxshop::handlers::find_route("POST", "/fn/unifiedOrder").unwrap();
    let mut req = http::Request::builder()
        .method("POST")
        .uri("/fn/unifiedOrder")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(bytes::Bytes::from(body.to_string()))
        .unwrap();
    req.extensions_mut()
        .insert(wxshop::http::PeerIp([127, 0, 0, 1].into()));
    let cut = tokio::time::timeout(
        Duration::from_millis(1500),
        wxshop::handlers::handle(&d.apps["unified-order"], route, req),
    )
    .await;
    assert!(cut.is_err(), "the attempt was cut off");
    c.clear_faults().await;
    r.app.clock.advance(31_000);
    c.control("clock", &json!({"advance_ms": 31_000})).await;
    let (s, resumed) = c.order(&token, 1, Some("iam-key-3")).await;
    assert_eq!(s, 200, "{resumed}");

    // payCallback: a payment, then its notification again; queryOrder reads and lists.
    let no = first["out_trade_no"].as_str().unwrap().to_owned();
    let txid = c.pay_at_sandbox(&no).await;
    eventually("PAID", WAIT, || async {
        c.status(&token, &no).await["status"] == "PAID"
    })
    .await;
    let total = first["total_fee"].as_i64().unwrap();
    let (s, reply) = c
        .raw(
            "/callbacks/pay",
            notification(r, &no, &openid, total, &txid),
        )
        .await;
    assert_eq!((s, return_code(&reply)), (200, "SUCCESS"), "{reply}");
    ok(&c, "/fn/queryOrder", Some(&token), json!({})).await;
    eventually("shop/order/pay synced", WAIT, || async {
        r.sandbox
            .calls("shop/order/pay")
            .iter()
            .any(|v| v.to_string().contains(&no))
    })
    .await;

    // aftersaleSync: one tin refunded (the refund through the stream, its SUCCESS through
    // payCallback); another application (the tin left) rejected, a third cancelled by the
    // user.
    let id = c
        .apply(
            &token,
            &no,
            json!({"amount": 1990, "reason": "one tin dented",
                   "product_id": "tea", "sku_id": "tea-250g", "quantity": 1}),
        )
        .await;
    c.approve(&id).await;
    c.until_refunded(&token, &no, &id).await;
    let rejected = c
        .apply(&token, &no, json!({"amount": 100, "reason": "a scratch"}))
        .await;
    ok(
        &c,
        "/admin/aftersaleSync",
        None,
        json!({"action": "reject", "aftersale_id": rejected, "reason": "no scratch seen"}),
    )
    .await;
    let cancelled = c
        .apply(&token, &no, json!({"amount": 100, "reason": "a scratch"}))
        .await;
    ok(
        &c,
        "/fn/aftersaleSync",
        Some(&token),
        json!({"action": "cancel", "aftersale_id": cancelled}),
    )
    .await;

    // orderSync (merchant): shipped, then corrected; the user confirms receipt.
    let ship = |delivery: &str, waybill: &str| json!({"action": "ship", "out_trade_no": no, "delivery_id": delivery, "waybill_id": waybill});
    ok(&c, "/admin/orderSync", None, ship("SF", "SF-TYPO")).await;
    let (s, v) = c.admin("/admin/orderSync", &ship("YTO", "YT0000042")).await;
    assert!(s == 200 || s == 409, "the correction: {v}");
    ok(
        &c,
        "/fn/queryOrder",
        Some(&token),
        json!({"out_trade_no": no, "action": "confirm"}),
    )
    .await;

    // A return and refund: the return accepted, the parcel sent back, then the refund.
    let (token2, _, no2, _) = paid(&c, "iam-return", 1).await;
    let ret = c
        .apply(
            &token2,
            &no2,
            json!({"amount": 1990, "type": "return", "reason": "too big"}),
        )
        .await;
    let address = json!({"receiver_name": "Returns desk", "detailed_address": "8 Warehouse Road",
        "tel_number": "021-5555-0101", "province": "Shanghai", "city": "Shanghai"});
    let v = ok(
        &c,
        "/admin/aftersaleSync",
        None,
        json!({"action": "approve", "aftersale_id": ret, "return_address": address}),
    )
    .await;
    assert_eq!(v["aftersale"]["status"], "AWAITING_RETURN", "{v}");
    let v = ok(
        &c,
        "/fn/aftersaleSync",
        Some(&token2),
        json!({"action": "return", "aftersale_id": ret,
        "delivery_id": "SF", "delivery_name": "顺丰速运", "waybill_id": "SF1234567890"}),
    )
    .await;
    assert_eq!(v["aftersale"]["status"], "RETURNING", "{v}");
    c.approve(&ret).await;
    c.until_refunded(&token2, &no2, &ret).await;

    // A refund WeChat holds (CHANGE) that the merchant then pays by hand: mark_refunded.
    let (token3, _, no3, _) = paid(&c, "iam-held", 1).await;
    c.control("refund_outcome", &json!({"status": "CHANGE"}))
        .await;
    let held = c.apply(&token3, &no3, json!({"reason": "broken"})).await;
    c.approve(&held).await;
    eventually("REFUND_ABNORMAL", WAIT, || async {
        c.my_aftersale(&token3, &no3, &held).await["status"] == "REFUND_ABNORMAL"
    })
    .await;
    let v = ok(
        &c,
        "/admin/aftersaleSync",
        None,
        json!({"action": "mark_refunded", "aftersale_id": held}),
    )
    .await;
    assert_eq!(v["aftersale"]["status"], "REFUNDED", "{v}");

    // Refunds made by hand in the merchant platform: one paid out, one WeChat holds.
    let (token4, _, no4, _) = paid(&c, "iam-by-hand", 2).await;
    let by_hand = c
        .control(
            "merchant_refund",
            &json!({"out_trade_no": no4, "refund_fee": 1990}),
        )
        .await;
    let by_hand = by_hand["out_refund_no"].as_str().unwrap().to_owned();
    eventually("the refund by hand on the books", WAIT, || async {
        c.status(&token4, &no4).await["refunded_fee"] == 1990
    })
    .await;
    c.control("refund_outcome", &json!({"status": "CHANGE"}))
        .await;
    let change = c
        .control(
            "merchant_refund",
            &json!({"out_trade_no": no4, "refund_fee": 1990}),
        )
        .await;
    let change = change["out_refund_no"].as_str().unwrap().to_owned();
    assert_ne!(change, by_hand);
    eventually(
        "the held refund by hand kept for a person",
        WAIT,
        || async {
            wxshop::store::repo::get_event(r.app.store.as_ref(), "refund_abnormal", &change)
                .await
                .unwrap()
                .is_some()
        },
    )
    .await;

    // The merchant's own refund (aftersaleSync admin `refund`), settled by its notification.
    let (token5, _, no5, _) = paid(&c, "iam-merchant-refund", 1).await;
    let v = ok(
        &c,
        "/admin/aftersaleSync",
        None,
        json!({"action": "refund", "out_trade_no": no5, "amount": 300,
               "reason": "goodwill", "idempotency_key": "iam-mr-1"}),
    )
    .await;
    let mr = v["aftersale"]["aftersale_id"].as_str().unwrap().to_owned();
    c.until_refunded(&token5, &no5, &mr).await;

    // queryOrder closes an unpaid order; another is left to expire for the schedule.
    let unpaid = c.order_tea(&token, 1).await;
    ok(
        &c,
        "/fn/queryOrder",
        Some(&token),
        json!({"out_trade_no": unpaid["out_trade_no"], "action": "close"}),
    )
    .await;
    c.order_tea(&token, 1).await;

    // The schedule (orderSync): now, and a day later (expired orders, sweeps, yesterday's
    // reconciliations).
    let report = d.schedule().await;
    eprintln!("schedule: {report}");
    r.app.clock.advance(DAY_MS);
    c.control("clock", &json!({"advance_ms": DAY_MS})).await;
    let report = d.schedule().await;
    eprintln!("schedule a day later: {report}");
    // Admin views of orderSync.
    let _ = c.dead_letters().await;
    d.assert_nothing_denied();
}

/// Secondary-merchant mode (fund_type 1): the trading component's order pushes (pay, settle,
/// cancel, receipt confirmed in WeChat) taken by auditCallback, funds (balance, flows, bank
/// account, a withdrawal asked for twice), an after-sale refunded, the schedule — with each
/// function's role only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secondary_merchant_paths_run_with_their_grants_only() {
    let d = deployed(&[("WX_FUND_TYPE", "1")]).await;
    let c = d.client();
    let r = &d.r;
    let (token, _) = c.login("iam-secondary").await;

    // Paid in WeChat (the pay push), settled (the settle push).
    let no = c.order_tea(&token, 2).await["out_trade_no"]
        .as_str()
        .unwrap()
        .to_owned();
    c.pay_in_wechat(&token, &no).await;
    c.control("settle", &json!({"out_order_id": no})).await;
    let out = wxshop::domain::OutTradeNo::parse(no.clone()).unwrap();
    eventually("the order settled", WAIT, || async {
        wxshop::store::repo::get_order(r.app.store.as_ref(), &out)
            .await
            .unwrap()
            .is_some_and(|o| o.value.settled_at_ms.is_some())
    })
    .await;

    // funds: balance, flows, the bank account, a withdrawal asked for twice.
    ok(&c, "/admin/funds", None, json!({"action": "balance"})).await;
    ok(&c, "/admin/funds", None, json!({"action": "flows"})).await;
    let account = json!({"bank_account_type": "ACCOUNT_TYPE_BUSINESS",
        "account_bank": "招商银行", "bank_address_code": "440300",
        "account_number": "6225880112345678"});
    ok(
        &c,
        "/admin/funds",
        None,
        json!({"action": "set_bank_account", "account": account}),
    )
    .await;
    let withdraw = json!({"action": "withdraw", "amount_fen": 1000, "remark": "payout"});
    let first = ok(&c, "/admin/funds", None, withdraw.clone()).await;
    let again = ok(&c, "/admin/funds", None, withdraw).await;
    assert_eq!(
        again["withdrawal"]["withdraw_id"], first["withdrawal"]["withdraw_id"],
        "{again}"
    );
    ok(&c, "/admin/funds", None, json!({"action": "withdrawals"})).await;

    // An after-sale refunded in fund_type 1.
    let id = c
        .apply(
            &token,
            &no,
            json!({"amount": 1990, "reason": "one tin dented"}),
        )
        .await;
    c.approve(&id).await;
    c.until_refunded(&token, &no, &id).await;

    // Shipped; the receipt confirmed in WeChat (the push).
    ok(
        &c,
        "/admin/orderSync",
        None,
        json!({"action": "ship", "out_trade_no": no, "delivery_id": "SF", "waybill_id": "SF1"}),
    )
    .await;
    eventually("shop/delivery/send", WAIT, || async {
        r.sandbox
            .calls("shop/delivery/send")
            .iter()
            .any(|v| v.to_string().contains(&no))
    })
    .await;
    c.control(
        "order",
        &json!({"action": "confirm_receipt", "out_order_id": no}),
    )
    .await;
    eventually("RECEIVED", WAIT, || async {
        c.status(&token, &no).await["status"] == "RECEIVED"
    })
    .await;

    // An unpaid order cancelled in WeChat (the cancel push).
    let other = c.order_tea(&token, 1).await["out_trade_no"]
        .as_str()
        .unwrap()
        .to_owned();
    c.control("order", &json!({"action": "cancel", "out_order_id": other}))
        .await;
    eventually("CLOSED", WAIT, || async {
        c.status(&token, &other).await["status"] == "CLOSED"
    })
    .await;

    let report = d.schedule().await;
    eprintln!("schedule: {report}");
    r.app.clock.advance(DAY_MS);
    c.control("clock", &json!({"advance_ms": DAY_MS})).await;
    let report = d.schedule().await;
    eprintln!("schedule a day later: {report}");
    d.assert_nothing_denied();
}
