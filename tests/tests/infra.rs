//! The SAM template (infra/template.yaml) against the code: cfn-lint passes, the HTTP API's
//! routes are exactly `wxshop::handlers::ROUTES` (with IAM on the admin routes and on nothing
//! else), every function is built from its own binary on arm64/provided.al2023, and the
//! orderSync wiring (stream filter, partial batch failures, DLQ, schedule) is in place.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_yaml::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use wxshop::handlers::{Caller, Function, ROUTES};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn template() -> Value {
    let text = std::fs::read_to_string(root().join("infra/template.yaml")).expect("read template");
    serde_yaml::from_str(&text).expect("template is YAML (short tags included)")
}

/// A plain string, or the argument of `!Ref`/`!Sub` & co. shown as `!Tag value`.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Tagged(t) => format!("{} {}", t.tag, text(&t.value)),
        other => format!("{other:?}"),
    }
}

fn functions(t: &Value) -> Vec<(String, &Value)> {
    t["Resources"]
        .as_mapping()
        .expect("Resources")
        .iter()
        .filter(|(_, r)| r["Type"].as_str() == Some("AWS::Serverless::Function"))
        .map(|(k, r)| (k.as_str().expect("logical id").to_owned(), r))
        .collect()
}

fn binary_of(resource: &Value) -> String {
    resource["Metadata"]["BuildProperties"]["Binary"]
        .as_str()
        .expect("Metadata.BuildProperties.Binary")
        .to_owned()
}

#[test]
fn cfn_lint_passes() {
    let out = Command::new("bash")
        .arg(root().join("scripts/cfn-lint.sh"))
        .current_dir(root())
        .output()
        .expect("run scripts/cfn-lint.sh");
    assert!(
        out.status.success(),
        "scripts/cfn-lint.sh failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn http_api_routes_are_exactly_the_routing_table() {
    let t = template();
    // (method, path, binary, iam)
    let mut in_template = BTreeSet::new();
    for (id, f) in functions(&t) {
        let binary = binary_of(f);
        let Some(events) = f["Properties"]["Events"].as_mapping() else {
            continue;
        };
        for (name, ev) in events {
            if ev["Type"].as_str() != Some("HttpApi") {
                continue;
            }
            let p = &ev["Properties"];
            assert_eq!(
                text(&p["ApiId"]),
                "!Ref Api",
                "{id}.{name:?} must attach to Api"
            );
            let auth = p["Auth"]["Authorizer"].as_str().unwrap_or("NONE");
            assert!(
                auth == "AWS_IAM" || auth == "NONE",
                "{id}.{name:?}: unexpected authorizer {auth}"
            );
            let added = in_template.insert((
                p["Method"].as_str().expect("Method").to_uppercase(),
                p["Path"].as_str().expect("Path").to_owned(),
                binary.clone(),
                auth == "AWS_IAM",
            ));
            assert!(added, "{id}.{name:?} duplicates a route");
        }
    }
    let in_code: BTreeSet<_> = ROUTES
        .iter()
        .map(|r| {
            (
                r.method.to_owned(),
                r.path.to_owned(),
                r.function.binary().to_owned(),
                r.caller == Caller::Admin,
            )
        })
        .collect();
    let missing: Vec<_> = in_code.difference(&in_template).collect();
    let extra: Vec<_> = in_template.difference(&in_code).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "template routes differ from ROUTES\n  missing from the template: {missing:?}\n  not in ROUTES: {extra:?}"
    );
    assert!(
        t["Resources"]["Api"]["Properties"]["Auth"]["EnableIamAuthorizer"].as_bool() == Some(true),
        "Api needs Auth.EnableIamAuthorizer for the admin routes"
    );
}

/// `sam build` runs `cargo lambda build --release --arm64 --bin <name>` at the workspace root,
/// and DEPLOY.md's "all nine" has no `-p` either: what cargo selects then must be the
/// functions alone, or feature unification with `wxlocal` puts SQLite in every Lambda binary
/// (it did, until the workspace named its `default-members`).
#[test]
fn a_build_at_the_root_selects_the_functions_without_sqlite() {
    let out = Command::new(env!("CARGO"))
        .current_dir(root())
        .args([
            "tree", "--edges", "normal", "--prefix", "none", "--depth", "0",
        ])
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let selected: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let functions: BTreeSet<String> = Function::ALL
        .iter()
        .map(|f| f.binary().to_owned())
        .collect();
    assert_eq!(
        selected, functions,
        "the root selects exactly the functions"
    );
    let out = Command::new(env!("CARGO"))
        .current_dir(root())
        .args(["tree", "-i", "rusqlite"])
        .output()
        .expect("run cargo tree");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("did not match any packages"),
        "SQLite is in the Lambda build: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// CloudFormation regenerates a secret's value when its `GenerateSecretString` changes: a
/// stack update would wipe the merchant's keys and rotate `SESSION_SECRET` (docs/DEPLOY.md §4).
#[test]
fn the_generated_secret_is_pinned() {
    let t = template();
    let g = &t["Resources"]["Secrets"]["Properties"]["GenerateSecretString"];
    let fields: Value =
        serde_yaml::from_str(g["SecretStringTemplate"].as_str().expect("template string"))
            .expect("SecretStringTemplate is JSON");
    let names: BTreeSet<&str> = fields
        .as_mapping()
        .expect("an object")
        .keys()
        .filter_map(Value::as_str)
        .collect();
    let pinned = BTreeSet::from([
        "WX_APPSECRET",
        "WXPAY_API_KEY",
        "WX_PUSH_TOKEN",
        "WX_PUSH_AES_KEY",
        "WXPAY_CERT_P12_BASE64",
        "WXPAY_CERT_P12_PASSWORD",
    ]);
    let why = "changing GenerateSecretString regenerates the secret of a deployed stack, \
               wiping the merchant's keys (docs/DEPLOY.md §4): add fields with put-secret-value";
    assert_eq!(names, pinned, "{why}");
    assert_eq!(
        g["GenerateStringKey"].as_str(),
        Some("SESSION_SECRET"),
        "{why}"
    );
    assert_eq!(g["PasswordLength"].as_u64(), Some(64), "{why}");
    assert_eq!(g["ExcludePunctuation"].as_bool(), Some(true), "{why}");
    assert_eq!(
        t["Resources"]["Secrets"]["DeletionPolicy"].as_str(),
        Some("Retain")
    );
}

/// What stops a function's wait for its longest chain of outside calls.
#[derive(Clone, Copy, Debug)]
enum Bound {
    /// The Timeout must cover the chain, and may be at most this many seconds: API Gateway's
    /// HTTP API waits 30 s for a route's integration (29), WeChat Pay 5 s for payCallback's
    /// reply, and unifiedOrder's idempotency claim lasts 30 s (28, its store writes after).
    Timeout { ceiling_s: u64 },
    /// The handler bounds itself with a `Deadline` (orderSync's schedule and stream batches):
    /// it starts no item in the last `SCHEDULE_MARGIN` of the invocation, and every WeChat call
    /// of an item ends `CALL_RESERVE` before the invocation's deadline (`wxshop::time::bounded`),
    /// so an item started late whose chain outlasts the margin is cut cleanly and stays due;
    /// the reserve is left for the store writes after it. The Timeout is the schedule's budget
    /// plus the margin.
    ItemWithinScheduleMargin,
}

/// One binary's longest chain of outside calls made one after another in one request, counted
/// from its handlers (shared/src/handlers/): WeChat API and WeChat Pay calls, the access-token
/// fetch and the one refresh-and-retry of a rejected token; calls made at once (join_all)
/// count once; calls that go through the outbox do not count (orderSync makes them).
struct Chain {
    binary: &'static str,
    calls: u64,
    why: &'static str,
    bound: Bound,
}

/// API Gateway's HTTP API: 30 s for the integration; the function must end before.
const BEHIND_HTTP_API: Bound = Bound::Timeout { ceiling_s: 29 };

const CHAINS: &[Chain] = &[
    Chain {
        binary: "login",
        calls: 1,
        why: "sns/jscode2session (no access token)",
        bound: BEHIND_HTTP_API,
    },
    Chain {
        binary: "unified-order",
        calls: 7,
        why: "token, shop/scene/check, refresh of the rejected token, the check again, \
              pay/unifiedorder, shop/order/add refused, product/spu/get of its products at once \
              (platform_delisting::refused_as_delisted)",
        bound: Bound::Timeout { ceiling_s: 28 },
    },
    Chain {
        binary: "query-order",
        calls: 5,
        why: "a direct unpaid order: pay/orderquery reads it unpaid, then token, \
              shop/order/get, refresh, shop/order/get again (query_order::what_wechat_holds); \
              a fund_type=1 one: 4 (token, get, refresh, get); its close goes to the outbox",
        bound: BEHIND_HTTP_API,
    },
    Chain {
        binary: "pay-callback",
        calls: 0,
        why: "payment and refund notifications: the store only, no outside call inline",
        bound: Bound::Timeout { ceiling_s: 5 },
    },
    Chain {
        binary: "order-sync",
        calls: 10,
        why: "one outbox item, AfterSaleSync of a return and refund none of whose steps WeChat \
              mirrors yet: token, ecaftersale/get refused for the token, refresh, get, \
              acceptreturn, get, uploadreturninfo, get, acceptrefund, get \
              (shop_orders::return_steps); OrderClose: 6 (pay/closeorder, token, \
              shop/order/pay, refresh, pay again, shop/order/get)",
        bound: Bound::ItemWithinScheduleMargin,
    },
    Chain {
        binary: "audit-callback",
        calls: 6,
        why: "open_product_order_refund of an order with one after-sale: token, \
              shop/order/get, refresh, get again, ecaftersale/get_list, ecaftersale/get \
              (aftersale_sync::catch_up_order: one more get per after-sale); the cancel push: 5 \
              (4 + pay/orderquery or shop/order/get)",
        bound: BEHIND_HTTP_API,
    },
    Chain {
        binary: "aftersale-sync",
        calls: 4,
        why: "approve an after-sale of a fund_type=1 order whose component id was never stored: \
              token, shop/order/get, refresh, get again (shop_orders::component_id); the refund \
              itself goes to the outbox",
        bound: BEHIND_HTTP_API,
    },
    Chain {
        binary: "catalog-sync",
        calls: 9,
        why: "upsert: token, spu/add refused for the token, refresh, spu/add (exists), \
              spu/update (under audit), spu/del_audit, spu/update (answer lost), spu/get \
              (read_back), spu/get (apply_wechat_verdict)",
        bound: BEHIND_HTTP_API,
    },
    Chain {
        binary: "funds",
        calls: 7,
        why: "withdraw refused as a second one today, resumed from the store: token, \
              getbalance, refresh, getbalance, submitwithdraw, qrcode/check, qrcode/get; with \
              no stored withdrawal: scanwithdraw twice and getwithdrawdetail per listed id more",
        bound: BEHIND_HTTP_API,
    },
];

/// Chains no Timeout can cover (reported): the Timeout sits at its ceiling. They are no longer
/// killed mid-call when they run long: every WeChat call is bounded by the invocation's
/// deadline less `CALL_RESERVE` (`wxshop::time::bounded`, set from the Lambda context's
/// deadline), and one with too little time left is not sent, so such a request is cut cleanly
/// — the call in flight timed out (answer lost) or not sent — and the handler's failure path
/// (503, the key released or abandoned, the stock back) runs in the reserve. The caller
/// retries. orderSync is not here: an item's chain may outlast `SCHEDULE_MARGIN` (an
/// after-sale return synced step by step, ten calls), but its calls end `CALL_RESERVE` before
/// the invocation's deadline, so the item is cut cleanly and stays due.
const CANNOT_FIT: &[&str] = &["unified-order", "catalog-sync", "funds"];

/// What the store needs after a chain of calls: a handful of operations, each bounded at 3 s
/// but normally milliseconds.
const STORE_MS: u64 = 2000;

/// A function that calls WeChat several times in a row should outlast the chain: killed by
/// its timeout, it would leave its work half done (an idempotency claim in progress, an event
/// unrecorded) where a clean failure would have said "retry". Each call may take
/// `WX_HTTP_TIMEOUT_MS`; `STORE_MS` more for the store. Where no Timeout can hold the chain
/// (`CANNOT_FIT`), the invocation's deadline cuts it cleanly instead (see there).
#[test]
fn timeouts_cover_the_longest_chain_of_wechat_calls() {
    use wxshop::handlers::order_sync::{LOCAL_SCHEDULE_BUDGET, SCHEDULE_MARGIN};
    let t = template();
    let per_call_ms: u64 =
        text(&t["Globals"]["Function"]["Environment"]["Variables"]["WX_HTTP_TIMEOUT_MS"])
            .parse()
            .expect("WX_HTTP_TIMEOUT_MS");
    let counted: BTreeSet<&str> = CHAINS.iter().map(|c| c.binary).collect();
    let binaries: BTreeSet<&str> = Function::ALL.iter().map(|f| f.binary()).collect();
    assert_eq!(counted, binaries, "every binary's chain is counted once");
    assert_eq!(
        counted.len(),
        CHAINS.len(),
        "every binary's chain is counted once"
    );
    // The deadline's clamp leaves the store its time after the last call, and lets at least
    // one call be sent in every function's Timeout.
    assert!(
        wxshop::time::CALL_RESERVE.as_millis() >= u128::from(STORE_MS),
        "CALL_RESERVE {:?} < the store's {STORE_MS} ms",
        wxshop::time::CALL_RESERVE
    );
    let mut cannot_fit = Vec::new();
    for c in CHAINS {
        let (id, f) = functions(&t)
            .into_iter()
            .find(|(_, f)| binary_of(f) == c.binary)
            .expect(c.binary);
        let timeout_ms = f["Properties"]["Timeout"].as_u64().expect("Timeout") * 1000;
        let needed_ms = c.calls * per_call_ms + STORE_MS;
        if c.calls > 0 {
            let least = wxshop::time::CALL_RESERVE + wxshop::time::MIN_CALL_TIME;
            assert!(
                u128::from(timeout_ms) > least.as_millis(),
                "{id}: Timeout {timeout_ms} ms leaves no call sent under the deadline's clamp"
            );
        }
        let why = format!(
            "{id}: {} calls × {per_call_ms} ms + 2 s = {needed_ms} ms ({})",
            c.calls, c.why
        );
        match c.bound {
            Bound::Timeout { ceiling_s } => {
                let ceiling_ms = ceiling_s * 1000;
                assert!(
                    timeout_ms <= ceiling_ms,
                    "{id}: Timeout {timeout_ms} ms over its ceiling {ceiling_ms} ms"
                );
                if needed_ms <= ceiling_ms {
                    assert!(timeout_ms >= needed_ms, "Timeout {timeout_ms} ms < {why}");
                } else {
                    assert_eq!(
                        timeout_ms, ceiling_ms,
                        "{why} cannot fit: the Timeout is at least at its ceiling"
                    );
                    cannot_fit.push(c.binary);
                }
            }
            Bound::ItemWithinScheduleMargin => {
                let budget = LOCAL_SCHEDULE_BUDGET + SCHEDULE_MARGIN;
                assert_eq!(
                    u128::from(timeout_ms),
                    budget.as_millis(),
                    "{id}: Timeout = LOCAL_SCHEDULE_BUDGET + SCHEDULE_MARGIN, as the schedule \
                     run by wxlocal assumes"
                );
                // An item's calls end `CALL_RESERVE` before the invocation's deadline (cut
                // cleanly past it, checked above to cover the store): the margin need not hold
                // the item's whole chain (`needed_ms`, more than the margin: a late item is
                // retried), only let an item started at its edge send a call.
                let least = wxshop::time::CALL_RESERVE + wxshop::time::MIN_CALL_TIME;
                assert!(
                    SCHEDULE_MARGIN > least,
                    "{id}: an item started at the margin could send no call ({why})"
                );
            }
        }
    }
    assert_eq!(
        cannot_fit, CANNOT_FIT,
        "chains that no Timeout (or SCHEDULE_MARGIN) covers changed: update CANNOT_FIT, the \
         template's comments and docs/DEPLOY.md §6"
    );
}

#[test]
fn one_function_per_binary_on_arm64_al2023() {
    let t = template();
    let g = &t["Globals"]["Function"];
    assert_eq!(g["Runtime"].as_str(), Some("provided.al2023"));
    assert_eq!(g["Handler"].as_str(), Some("bootstrap"));
    assert_eq!(g["Architectures"][0].as_str(), Some("arm64"));
    assert_eq!(g["CodeUri"].as_str(), Some(".."));
    let mut binaries = BTreeSet::new();
    for (id, f) in functions(&t) {
        assert_eq!(
            f["Metadata"]["BuildMethod"].as_str(),
            Some("rust-cargolambda"),
            "{id}"
        );
        let mem = f["Properties"]["MemorySize"].as_u64().unwrap_or(128);
        assert!((128..=256).contains(&mem), "{id}: MemorySize {mem}");
        let binary = binary_of(f);
        assert!(
            root()
                .join("functions")
                .join(&binary)
                .join("Cargo.toml")
                .exists(),
            "{id}: no functions/{binary}"
        );
        assert!(binaries.insert(binary), "{id}: binary used twice");
    }
    let expected: BTreeSet<String> = Function::ALL
        .iter()
        .map(|f| f.binary().to_owned())
        .collect();
    assert_eq!(binaries, expected);
    let pay = functions(&t)
        .into_iter()
        .find(|(_, f)| binary_of(f) == "pay-callback")
        .expect("pay-callback")
        .1;
    let timeout = pay["Properties"]["Timeout"]
        .as_u64()
        .expect("payCallback Timeout");
    assert!(
        timeout <= 5,
        "WeChat Pay waits 5 s; payCallback Timeout is {timeout}"
    );
}

#[test]
fn environment_has_no_secrets_and_names_the_secret() {
    let t = template();
    let vars = t["Globals"]["Function"]["Environment"]["Variables"]
        .as_mapping()
        .expect("Globals env");
    let names: BTreeSet<&str> = vars.keys().filter_map(Value::as_str).collect();
    for secret in [
        "WX_APPSECRET",
        "WXPAY_API_KEY",
        "SESSION_SECRET",
        "WX_PUSH_TOKEN",
        "WX_PUSH_AES_KEY",
        "WXPAY_CERT_P12_BASE64",
        "WXPAY_CERT_P12_PASSWORD",
    ] {
        assert!(
            !names.contains(secret),
            "{secret} must come from the secret, not the environment"
        );
    }
    for required in [
        "WXSHOP_SECRET_ARN",
        "STORE",
        "WX_APPID",
        "WXPAY_MCH_ID",
        "WXPAY_NOTIFY_URL",
    ] {
        assert!(
            names.contains(required),
            "{required} missing from the environment"
        );
    }
    assert_eq!(
        text(&vars[&Value::from("WXSHOP_SECRET_ARN")]),
        "!Ref Secrets"
    );
    assert!(text(&vars[&Value::from("STORE")]).contains("dynamodb:${Table}"));
    assert!(text(&vars[&Value::from("WXPAY_NOTIFY_URL")]).ends_with("/callbacks/pay"));
    // Every function may read that secret and nothing else.
    for (id, f) in functions(&t) {
        let policies = f["Properties"]["Policies"].as_sequence().expect("Policies");
        let secret_reads: Vec<_> = policies
            .iter()
            .filter_map(|p| p.get("AWSSecretsManagerGetSecretValuePolicy"))
            .collect();
        assert_eq!(secret_reads.len(), 1, "{id}");
        assert_eq!(text(&secret_reads[0]["SecretArn"]), "!Ref Secrets", "{id}");
    }
}

#[test]
fn table_and_order_sync_wiring() {
    let t = template();
    let table = &t["Resources"]["Table"];
    assert_eq!(table["DeletionPolicy"].as_str(), Some("Retain"));
    assert_eq!(table["UpdateReplacePolicy"].as_str(), Some("Retain"));
    let p = &table["Properties"];
    assert_eq!(p["BillingMode"].as_str(), Some("PAY_PER_REQUEST"));
    assert_eq!(
        p["TimeToLiveSpecification"]["AttributeName"].as_str(),
        Some("ttl")
    );
    assert_eq!(
        p["StreamSpecification"]["StreamViewType"].as_str(),
        Some("NEW_IMAGE")
    );
    assert_eq!(
        p["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"].as_bool(),
        Some(true)
    );
    assert_eq!(p["KeySchema"][0]["AttributeName"].as_str(), Some("pk"));
    let gsis: Vec<&str> = p["GlobalSecondaryIndexes"]
        .as_sequence()
        .expect("GSIs")
        .iter()
        .filter_map(|g| g["IndexName"].as_str())
        .collect();
    assert_eq!(gsis, ["gsi1", "gsi2"]);

    let order_sync = functions(&t)
        .into_iter()
        .find(|(_, f)| binary_of(f) == "order-sync")
        .expect("order-sync")
        .1;
    let events = &order_sync["Properties"]["Events"];
    let stream = &events["Outbox"]["Properties"];
    assert_eq!(events["Outbox"]["Type"].as_str(), Some("DynamoDB"));
    assert_eq!(text(&stream["Stream"]), "!GetAtt Table.StreamArn");
    assert_eq!(stream["BisectBatchOnFunctionError"].as_bool(), Some(true));
    assert!(stream["MaximumRetryAttempts"].as_u64().is_some());
    assert_eq!(
        stream["FunctionResponseTypes"][0].as_str(),
        Some("ReportBatchItemFailures")
    );
    assert_eq!(
        text(&stream["DestinationConfig"]["OnFailure"]["Destination"]),
        "!GetAtt DeadLetterQueue.Arn"
    );
    let pattern: serde_json::Value = serde_json::from_str(
        stream["FilterCriteria"]["Filters"][0]["Pattern"]
            .as_str()
            .expect("filter pattern"),
    )
    .expect("filter pattern is JSON");
    assert_eq!(pattern["eventName"][0], "INSERT");
    assert_eq!(
        pattern["dynamodb"]["Keys"]["pk"]["S"][0]["prefix"],
        "outbox#"
    );
    assert_eq!(events["Sweep"]["Type"].as_str(), Some("Schedule"));
    assert_eq!(
        events["Sweep"]["Properties"]["Schedule"].as_str(),
        Some("rate(5 minutes)")
    );
}

fn alarms(t: &Value) -> Vec<(String, &Value)> {
    t["Resources"]
        .as_mapping()
        .expect("Resources")
        .iter()
        .filter(|(_, r)| r["Type"].as_str() == Some("AWS::CloudWatch::Alarm"))
        .map(|(k, r)| (k.as_str().expect("logical id").to_owned(), r))
        .collect()
}

/// The one alarm on `namespace`/`metric` with the single dimension `dimension` = `value`:
/// a sum over at most five minutes, at least `threshold`, quiet without data, and with the
/// same actions as `DeadLetterAlarm` (the SNS topic when an e-mail is given).
fn assert_alarm(
    t: &Value,
    namespace: &str,
    metric: &str,
    dimension: &str,
    value: &str,
    threshold: u64,
) {
    let alarms = alarms(t);
    let watching: Vec<&(String, &Value)> = alarms
        .iter()
        .filter(|(_, a)| {
            a["Properties"]["MetricName"].as_str() == Some(metric)
                && a["Properties"]["Namespace"].as_str() == Some(namespace)
        })
        .collect();
    assert_eq!(watching.len(), 1, "one alarm on {namespace}/{metric}");
    let (id, alarm) = watching[0];
    let p = &alarm["Properties"];
    let dims = p["Dimensions"].as_sequence().expect("Dimensions");
    assert_eq!(dims.len(), 1, "{id}: the metric has one dimension");
    assert_eq!(dims[0]["Name"].as_str(), Some(dimension), "{id}");
    assert_eq!(text(&dims[0]["Value"]), value, "{id}");
    assert_eq!(p["Statistic"].as_str(), Some("Sum"), "{id}");
    assert!(
        p["Period"].as_u64().is_some_and(|s| s <= 300),
        "{id}: Period"
    );
    assert_eq!(p["Threshold"].as_u64(), Some(threshold), "{id}: Threshold");
    assert_eq!(
        p["ComparisonOperator"].as_str(),
        Some("GreaterThanOrEqualToThreshold"),
        "{id}"
    );
    assert_eq!(p["TreatMissingData"].as_str(), Some("notBreaching"), "{id}");
    let (_, existing) = alarms
        .iter()
        .find(|(k, _)| k == "DeadLetterAlarm")
        .expect("DeadLetterAlarm");
    assert_eq!(
        format!("{:?}", p["AlarmActions"]),
        format!("{:?}", existing["Properties"]["AlarmActions"]),
        "{id}: same actions as DeadLetterAlarm"
    );
}

/// A dead-lettered outbox entry is acknowledged, so it never reaches the SQS dead-letter
/// queue: the alarm that tells a person watches the `OutboxDeadLetters` EMF metric orderSync
/// prints (`wxshop::metrics`), on this stack's orderSync, with the same actions as the others.
#[test]
fn dead_lettered_outbox_entries_raise_an_alarm() {
    use wxshop::metrics::{DIMENSION, NAMESPACE, OUTBOX_DEAD_LETTERS};
    let t = template();
    assert_alarm(
        &t,
        NAMESPACE,
        OUTBOX_DEAD_LETTERS,
        DIMENSION,
        "!Ref OrderSyncFunction",
        1,
    );
}

/// An expired order the sweep keeps open because WeChat did not say whether it was paid is no
/// error anywhere: the `ExpiredOrdersHeld` count orderSync prints has an alarm on this stack's
/// orderSync.
#[test]
fn expired_orders_held_by_the_sweep_raise_an_alarm() {
    use wxshop::metrics::{DIMENSION, EXPIRED_ORDERS_HELD, NAMESPACE};
    let t = template();
    assert_alarm(
        &t,
        NAMESPACE,
        EXPIRED_ORDERS_HELD,
        DIMENSION,
        "!Ref OrderSyncFunction",
        1,
    );
}

/// A schedule phase that fails run after run (a denied table, WeChat refusing our
/// credentials, a bill that does not read) is only logged — the invocation succeeds — so its
/// count has an alarm.
#[test]
fn schedule_phases_failing_run_after_run_raise_an_alarm() {
    use wxshop::metrics::{DIMENSION, NAMESPACE, SCHEDULE_PHASE_FAILURES};
    let t = template();
    assert_alarm(
        &t,
        NAMESPACE,
        SCHEDULE_PHASE_FAILURES,
        DIMENSION,
        "!Ref OrderSyncFunction",
        1,
    );
}

/// payCallback answers every notification with HTTP 200, so Lambda's `Errors` never sees a
/// payment it refused (a wrong WXPAY_API_KEY, DynamoDB throttled or denied): the refusals it
/// counts (`wxshop::metrics`) each have an alarm that pages at the first one, and the HTTP
/// API's server errors (`AWS/ApiGateway` `5xx` by `ApiId`, the HTTP API metric) have one.
#[test]
fn refused_payment_notifications_and_server_errors_raise_alarms() {
    use wxshop::metrics::{DIMENSION, NAMESPACE, PAY_NOTIFY_UNRECORDED, PAY_NOTIFY_UNVERIFIED};
    let t = template();
    for metric in [PAY_NOTIFY_UNVERIFIED, PAY_NOTIFY_UNRECORDED] {
        assert_alarm(
            &t,
            NAMESPACE,
            metric,
            DIMENSION,
            "!Ref PayCallbackFunction",
            1,
        );
    }
    assert_alarm(&t, "AWS/ApiGateway", "5xx", "ApiId", "!Ref Api", 5);
}

/// auditCallback refuses a push that is not WeChat's (its signature, its time, another body
/// under a used signature) with a 403, which no `Errors` or `5xx` alarm counts: the refusals
/// it counts (`PushRefused`) have an alarm on this stack's auditCallback, paging at the first
/// one, as payCallback's refusals do.
#[test]
fn refused_pushes_raise_an_alarm() {
    use wxshop::metrics::{DIMENSION, NAMESPACE, PUSH_REFUSED};
    let t = template();
    assert_alarm(
        &t,
        NAMESPACE,
        PUSH_REFUSED,
        DIMENSION,
        "!Ref AuditCallbackFunction",
        1,
    );
}

/// Money moved that a person must put right is acknowledged to WeChat (a double payment, a
/// refund WeChat could not pay out, …), so no refusal count sees it: its own count
/// (`MoneyNeedsAPerson`) has one alarm over every function that records payments or refunds,
/// paging at the first one, with the same actions as the others.
#[test]
fn money_that_needs_a_person_raises_an_alarm() {
    use wxshop::metrics::{DIMENSION, MONEY_NEEDS_A_PERSON, NAMESPACE};
    let t = template();
    let alarms = alarms(&t);
    let watching: Vec<&(String, &Value)> = alarms
        .iter()
        .filter(|(_, a)| format!("{:?}", a["Properties"]["Metrics"]).contains(MONEY_NEEDS_A_PERSON))
        .collect();
    assert_eq!(watching.len(), 1, "one alarm on {MONEY_NEEDS_A_PERSON}");
    let (id, alarm) = watching[0];
    let p = &alarm["Properties"];
    let metrics = p["Metrics"].as_sequence().expect("Metrics");
    let total: Vec<&Value> = metrics
        .iter()
        .filter(|m| m["ReturnData"].as_bool() == Some(true))
        .collect();
    assert_eq!(total.len(), 1, "{id}: one expression returns data");
    assert_eq!(
        total[0]["Expression"].as_str(),
        Some("SUM(METRICS())"),
        "{id}"
    );
    let mut functions = Vec::new();
    for m in metrics
        .iter()
        .filter(|m| m["ReturnData"].as_bool() == Some(false))
    {
        let stat = &m["MetricStat"];
        assert_eq!(stat["Stat"].as_str(), Some("Sum"), "{id}");
        assert!(
            stat["Period"].as_u64().is_some_and(|s| s <= 300),
            "{id}: Period"
        );
        let metric = &stat["Metric"];
        assert_eq!(metric["Namespace"].as_str(), Some(NAMESPACE), "{id}");
        assert_eq!(
            metric["MetricName"].as_str(),
            Some(MONEY_NEEDS_A_PERSON),
            "{id}"
        );
        let dims = metric["Dimensions"].as_sequence().expect("Dimensions");
        assert_eq!(dims.len(), 1, "{id}: the metric has one dimension");
        assert_eq!(dims[0]["Name"].as_str(), Some(DIMENSION), "{id}");
        functions.push(text(&dims[0]["Value"]));
    }
    functions.sort();
    assert_eq!(
        functions,
        [
            "!Ref AuditCallbackFunction",
            "!Ref OrderSyncFunction",
            "!Ref PayCallbackFunction",
            "!Ref QueryOrderFunction",
        ],
        "{id}: every function that records payments or refunds"
    );
    assert_eq!(p["Threshold"].as_u64(), Some(1), "{id}: Threshold");
    assert_eq!(
        p["ComparisonOperator"].as_str(),
        Some("GreaterThanOrEqualToThreshold"),
        "{id}"
    );
    assert_eq!(p["TreatMissingData"].as_str(), Some("notBreaching"), "{id}");
    let (_, existing) = alarms
        .iter()
        .find(|(k, _)| k == "DeadLetterAlarm")
        .expect("DeadLetterAlarm");
    assert_eq!(
        format!("{:?}", p["AlarmActions"]),
        format!("{:?}", existing["Properties"]["AlarmActions"]),
        "{id}: same actions as DeadLetterAlarm"
    );
}

/// Configuration the code reads with a default is a template parameter with that same
/// default, wired into every function's environment: a merchant can change it at deploy time
/// and gets the code's behaviour when they do not.
#[test]
fn tunable_settings_are_parameters_with_the_codes_defaults() {
    let t = template();
    let vars = t["Globals"]["Function"]["Environment"]["Variables"]
        .as_mapping()
        .expect("Globals env");
    let defaults = wxshop::config::Config::from_lookup(|k| {
        let v = match k {
            "WX_APPID" => "wx0000000000000001",
            "WX_APPSECRET" => "appsecret",
            "WXPAY_MCH_ID" => "1900000001",
            "WXPAY_API_KEY" => "localapikey000000000000000000001",
            "SESSION_SECRET" => "0123456789abcdef0123456789abcdef",
            "WX_PUSH_TOKEN" => "token",
            "WXPAY_NOTIFY_URL" => "https://shop.example.com/callbacks/pay",
            _ => return None,
        };
        Some(v.to_owned())
    })
    .expect("a minimal configuration");
    for (var, parameter, default) in [
        (
            "ORDER_TTL_SECS",
            "OrderTtlSecs",
            defaults.order_ttl_secs.to_string(),
        ),
        (
            "SESSION_TTL_SECS",
            "SessionTtlSecs",
            defaults.session_ttl_secs.to_string(),
        ),
        ("WX_ORDER_PATH", "WxOrderPath", defaults.order_path.clone()),
    ] {
        let value = vars
            .get(Value::from(var))
            .unwrap_or_else(|| panic!("{var} is not in the functions' environment"));
        assert_eq!(
            text(value),
            format!("!Ref {parameter}"),
            "{var} comes from the {parameter} parameter"
        );
        assert_eq!(
            text(&t["Parameters"][parameter]["Default"]),
            default,
            "{parameter}'s default is the code's"
        );
    }
}

/// Each function may do to the table what its code does through the store and nothing more
/// (no `DynamoDBCrudPolicy`: no Scan, BatchWriteItem, BatchGetItem, UpdateItem): item actions
/// on the table, Query on its indexes only. login reads one item (whether the merchant blocked
/// the user) and nothing else.
#[test]
fn table_permissions_are_what_each_function_uses() {
    let t = template();
    let item_actions = |binary: &str| -> BTreeSet<&'static str> {
        let mut a = BTreeSet::from(["dynamodb:GetItem", "dynamodb:PutItem"]);
        match binary {
            "login" => return BTreeSet::from(["dynamodb:GetItem"]),
            // A finished outbox entry; a released idempotency claim; a released withdrawal
            // lock.
            "order-sync" | "unified-order" | "funds" => {
                a.insert("dynamodb:DeleteItem");
            }
            // Approving an after-sale checks the order's version in its transaction; so does
            // keeping a CHANGE of a refund made by hand (tests/tests/infra_permissions.rs).
            "aftersale-sync" | "pay-callback" => {
                a.insert("dynamodb:ConditionCheckItem");
            }
            _ => {}
        }
        a
    };
    for (id, f) in functions(&t) {
        let binary = binary_of(f);
        let policies = f["Properties"]["Policies"].as_sequence().expect("Policies");
        let mut on_table = BTreeSet::new();
        let mut on_indexes = BTreeSet::new();
        for p in policies {
            let Some(map) = p.as_mapping() else {
                panic!("{id}: a managed policy by name: {p:?}");
            };
            for name in map.keys().filter_map(Value::as_str) {
                assert!(
                    !name.starts_with("DynamoDB"),
                    "{id}: {name} grants more than the store uses"
                );
            }
            let Some(statements) = p["Statement"].as_sequence() else {
                continue;
            };
            for st in statements {
                assert_eq!(st["Effect"].as_str(), Some("Allow"), "{id}");
                let actions: Vec<String> = match &st["Action"] {
                    Value::Sequence(a) => a.iter().map(text).collect(),
                    one => vec![text(one)],
                };
                let resource = text(&st["Resource"]);
                for action in actions {
                    assert!(!action.contains('*'), "{id}: wildcard action {action}");
                    match resource.as_str() {
                        "!GetAtt Table.Arn" => on_table.insert(action),
                        "!Sub ${Table.Arn}/index/*" => on_indexes.insert(action),
                        other => panic!("{id}: {action} on {other}"),
                    };
                }
            }
        }
        let want_table: BTreeSet<String> = item_actions(&binary)
            .into_iter()
            .map(str::to_owned)
            .collect();
        assert_eq!(on_table, want_table, "{id}: actions on the table");
        let want_indexes: BTreeSet<String> = if binary == "login" {
            BTreeSet::new()
        } else {
            BTreeSet::from(["dynamodb:Query".to_owned()])
        };
        assert_eq!(on_indexes, want_indexes, "{id}: actions on the indexes");
        for forbidden in [
            "dynamodb:Scan",
            "dynamodb:BatchWriteItem",
            "dynamodb:BatchGetItem",
            "dynamodb:UpdateItem",
        ] {
            assert!(
                !on_table.contains(forbidden) && !on_indexes.contains(forbidden),
                "{id}: {forbidden} is used by no function"
            );
        }
    }
}

/// WeChat's notifications and pushes can have concurrency reserved so a checkout rush does not
/// throttle them — only when the operator asks (`CallbackReservedConcurrency`, default 0): a new
/// account's quota is often too small to reserve anything, and a stack that reserved by default
/// would fail to deploy there.
#[test]
fn callbacks_reserve_concurrency_only_when_asked() {
    let t = template();
    let p = &t["Parameters"]["CallbackReservedConcurrency"];
    assert_eq!(text(&p["Type"]), "Number");
    assert_eq!(text(&p["Default"]), "0", "nothing reserved by default");
    let condition = format!("{:?}", t["Conditions"]["ReservesCallbackConcurrency"]);
    for part in [
        "!Not",
        "!Equals",
        "CallbackReservedConcurrency",
        "String(\"0\")",
    ] {
        assert!(condition.contains(part), "reserve unless 0: {condition}");
    }
    for (name, resource) in functions(&t) {
        let reserved = &resource["Properties"]["ReservedConcurrentExecutions"];
        if name == "PayCallbackFunction" || name == "AuditCallbackFunction" {
            let reserved = format!("{reserved:?}");
            for part in [
                "ReservesCallbackConcurrency",
                "CallbackReservedConcurrency",
                "AWS::NoValue",
            ] {
                assert!(
                    reserved.contains(part),
                    "{name} reserves via {part}: {reserved}"
                );
            }
        } else {
            assert!(reserved.is_null(), "{name} reserves nothing: {reserved:?}");
        }
    }
}
