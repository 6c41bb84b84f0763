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
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;
use wxlocal::gateway::Running;
use wxshop::store::{DynStore, Kind, Page, Query, Record, Store, StoreError, Write};

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
}

impl AsDeployed {
    fn wrap(r: &Running, binary: &'static str) -> Arc<AsDeployed> {
        let (table, indexes) = granted(binary);
        Arc::new(AsDeployed {
            inner: r.app.store.clone(),
            binary,
            table,
            indexes,
            denied: Mutex::new(Vec::new()),
        })
    }

    /// `Err` for the first of `actions` (on the table, or on an index) not granted.
    fn allow(&self, op: &str, actions: &[&str], on_index: bool) -> Result<(), StoreError> {
        let granted = if on_index { &self.indexes } else { &self.table };
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
        self.inner.write(writes).await
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
