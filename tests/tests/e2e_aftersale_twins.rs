#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! After-sale verdicts made on stale reads, driven deterministically: request B runs on a copy
//! of the app whose store holds B's read of the order (`support::HoldsOnce`) until request A — the
//! same key's twin, or WeChat Pay's refund notification — has committed. What the merchant or
//! user sees: B's answer names what A made (as a repeated key does) rather than "not
//! refundable" of its own refund, WeChat Pay asked once, `refunded_fee` counted once.

use serde_json::{json, Value};
use std::time::Duration;
use wxlocal::gateway::Running;
use wxshop::store::Kind;

#[path = "reliability_support.rs"]
mod support;
use support::{
    eventually, refunds_asked, spawn_post, stack_with, tea_refund_notification, HoldsOnce,
    InProcess, StoreCall,
};

/// Long enough for a loaded machine.
const WAIT: Duration = Duration::from_secs(30);
/// The tea's price.
const TEA: i64 = 1990;

/// A stack without the trading component (WeChat Pay only), taking refunds at once.
async fn pay_stack() -> Running {
    let r = stack_with(&[("WX_TRADING_COMPONENT", "off")]).await;
    r.sandbox.set_refund_interval_ms(0);
    r
}

/// `user` buys one tea and pays; returns once PAID: (token, out_trade_no, transaction id).
async fn paid(c: &InProcess<'_>, user: &str) -> (String, String, String) {
    let (token, _) = c.login(user).await;
    let order = c.order_tea(&token, 1).await;
    let no = order["out_trade_no"].as_str().unwrap().to_owned();
    let txid = c.pay_at_sandbox(&no).await;
    eventually("the order PAID", WAIT, || async {
        c.status(&token, &no).await["status"] == "PAID"
    })
    .await;
    (token, no, txid)
}

/// `body` POSTed to `path` (bearer `token`) through `app`, in-process: (status, answer).
async fn call(app: wxshop::app::App, path: &str, token: &str, body: Value) -> (u16, Value) {
    let resp = spawn_post(app, path, Some(token), body.to_string())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let v = serde_json::from_slice(resp.body()).unwrap_or(Value::Null);
    (status, v)
}

/// Runs `b` on a copy of the app whose store holds B's order read; once B is held there, runs
/// `a` to its end, then lets B go on: (A's answer, B's answer).
async fn b_held_while_a_commits<FA, FB>(
    r: &Running,
    a: impl FnOnce() -> FA,
    b: impl FnOnce(wxshop::app::App) -> FB,
) -> ((u16, Value), (u16, Value))
where
    FA: std::future::Future<Output = (u16, Value)>,
    FB: std::future::Future<Output = (u16, Value)> + Send + 'static,
{
    b_held_at_while_a_commits(Kind::Order, r, a, b).await
}

/// As [`b_held_while_a_commits`], B held at its first read of a `holds` record after its read
/// of the after-sale.
async fn b_held_at_while_a_commits<FA, FB>(
    holds: Kind,
    r: &Running,
    a: impl FnOnce() -> FA,
    b: impl FnOnce(wxshop::app::App) -> FB,
) -> ((u16, Value), (u16, Value))
where
    FA: std::future::Future<Output = (u16, Value)>,
    FB: std::future::Future<Output = (u16, Value)> + Send + 'static,
{
    // B is held before its first read of a `holds` record that follows a read of an
    // after-sale (the key's, or the one acted on): stopped between its reads.
    let mut aftersale_read = false;
    let gate = HoldsOnce::before(r.app.store.clone(), move |call| match call {
        StoreCall::Get(Kind::AfterSale, _) => {
            aftersale_read = true;
            false
        }
        StoreCall::Get(kind, _) => kind == holds && aftersale_read,
        StoreCall::Query(_) => false,
    });
    let mut app = r.app.clone();
    app.store = gate.clone();
    let b = tokio::spawn(b(app));
    gate.wait_reached().await;
    let a = a().await;
    gate.let_go();
    let b = tokio::time::timeout(WAIT, b).await.unwrap().unwrap();
    (a, b)
}

fn id_of(answer: &Value) -> String {
    answer["aftersale"]["aftersale_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no after-sale in {answer}"))
        .to_owned()
}

/// GIVEN a paid tea (1,990)
/// WHEN the merchant's refund of all of it is sent twice under one key (a retry of a click
/// whose answer was slow), the retry having read the key (nothing yet) before the first
/// committed and the order after
/// THEN both answers are 200 and name the same after-sale, WeChat Pay is asked for one
/// refund, and the order's `refunded_fee` is 1,990.
///
/// It used to answer the retry 409 `NOT_REFUNDABLE` ("refunded in full … nothing is left")
/// for the very refund made under its key: a merchant told so may refund by hand — twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_merchant_refund_sent_twice_under_one_key_answers_one_refund() {
    let r = pay_stack().await;
    let c = InProcess::new(&r);
    let (token, no, _) = paid(&c, "twin-refund").await;
    let body = json!({"action": "refund", "out_trade_no": no, "reason": "goodwill",
                      "idempotency_key": "click-1"});
    let admin = c.admin_token.clone();
    let ((sa, va), (sb, vb)) =
        b_held_while_a_commits(&r, || c.admin("/admin/aftersaleSync", &body), {
            let body = body.clone();
            move |app| async move { call(app, "/admin/aftersaleSync", &admin, body).await }
        })
        .await;
    assert_eq!((sa, sb), (200, 200), "A: {va}\nB: {vb}");
    assert_eq!(id_of(&va), id_of(&vb));
    eventually("the refund settled", WAIT, || async {
        c.status(&token, &no).await["refunded_fee"] == json!(TEA)
    })
    .await;
    assert_eq!(refunds_asked(&r, &no).len(), 1, "WeChat Pay asked once");
    assert_eq!(c.admin_aftersales(&no).await.len(), 1);
    assert_eq!(c.status(&token, &no).await["refunded_fee"], json!(TEA));
}

/// GIVEN a paid tea
/// WHEN the user's application (all of it, key `tap-1`) is sent twice — a double tap — the
/// second having read the key before the first committed and the order after
/// THEN both answers are 200 and name the same after-sale; the order has one after-sale.
///
/// It used to answer the second 409 `NOT_REFUNDABLE` ("open after-sales hold all of the
/// 1990 fen") of the user's own application.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_application_sent_twice_under_one_key_answers_one_aftersale() {
    let r = pay_stack().await;
    let c = InProcess::new(&r);
    let (token, no, _) = paid(&c, "twin-apply").await;
    let body = json!({"action": "apply", "out_trade_no": no, "reason": "not wanted",
                      "idempotency_key": "tap-1"});
    let ((sa, va), (sb, vb)) =
        b_held_while_a_commits(&r, || c.post("/fn/aftersaleSync", Some(&token), &body), {
            let body = body.clone();
            let token = token.clone();
            move |app| async move { call(app, "/fn/aftersaleSync", &token, body).await }
        })
        .await;
    assert_eq!((sa, sb), (200, 200), "A: {va}\nB: {vb}");
    assert_eq!(id_of(&va), id_of(&vb));
    assert_eq!(c.admin_aftersales(&no).await.len(), 1);
}

/// GIVEN an approved refund of a tea WeChat Pay could not pay out (CHANGE: REFUND_ABNORMAL)
/// WHEN the merchant records it redirected (`mark_refunded`), having read the after-sale
/// before WeChat's late SUCCESS for the refund was recorded and the order after
/// THEN the merchant is told the after-sale is REFUNDED already (409 `AFTERSALE_STATE`), not
/// that the order has nothing refundable; it is REFUNDED, `refunded_fee` 1,990.
///
/// It used to answer 409 `NOT_REFUNDABLE` ("refund of 1990 fen exceeds …") for an after-sale
/// WeChat had just paid, decided on the after-sale as first read.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mark_refunded_after_a_late_success_says_refunded() {
    let r = pay_stack().await;
    let c = InProcess::new(&r);
    c.control("refund_outcome", &json!({"status": "CHANGE"}))
        .await;
    let (token, no, txid) = paid(&c, "held").await;
    let (s, a) = c
        .post(
            "/fn/aftersaleSync",
            Some(&token),
            &json!({"action": "apply", "out_trade_no": no, "reason": "not wanted"}),
        )
        .await;
    assert_eq!(s, 200, "{a}");
    let id = id_of(&a);
    let (s, v) = c
        .admin(
            "/admin/aftersaleSync",
            &json!({"action": "approve", "aftersale_id": id}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let out_refund_no = v["aftersale"]["out_refund_no"].as_str().unwrap().to_owned();
    eventually("the after-sale REFUND_ABNORMAL", WAIT, || async {
        c.my_aftersale(&token, &no, &id).await["status"] == "REFUND_ABNORMAL"
    })
    .await;
    let (_, st) = c.get("/sandbox/_control/state").await;
    let refund_id = st["refunds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["out_refund_no"] == out_refund_no.as_str())
        .unwrap()["refund_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let notification = tea_refund_notification(
        &r,
        &no,
        &out_refund_no,
        &txid,
        &refund_id,
        TEA,
        wxshop::pay::types::RefundStatus::Success,
    );
    let admin = c.admin_token.clone();
    let mark = json!({"action": "mark_refunded", "aftersale_id": id});
    let ((sn, n), (sm, vm)) = b_held_while_a_commits(
        &r,
        || async {
            let (s, n) = c.raw("/callbacks/refund", notification).await;
            (s, Value::String(n))
        },
        move |app| async move { call(app, "/admin/aftersaleSync", &admin, mark).await },
    )
    .await;
    assert_eq!(sn, 200, "{n}");
    assert_eq!(
        (sm, vm["code"].as_str()),
        (409, Some("AFTERSALE_STATE")),
        "{vm}"
    );
    assert!(
        vm["message"]
            .as_str()
            .unwrap_or_default()
            .contains("REFUNDED"),
        "{vm}"
    );
    assert_eq!(c.my_aftersale(&token, &no, &id).await["status"], "REFUNDED");
    assert_eq!(c.status(&token, &no).await["refunded_fee"], json!(TEA));
}

/// `user`'s paid tea, applied for in full (REQUESTED): (token, out_trade_no, after-sale id).
async fn applied(c: &InProcess<'_>, user: &str) -> (String, String, String) {
    let (token, no, _) = paid(c, user).await;
    let (s, a) = c
        .post(
            "/fn/aftersaleSync",
            Some(&token),
            &json!({"action": "apply", "out_trade_no": no, "reason": "not wanted"}),
        )
        .await;
    assert_eq!(s, 200, "{a}");
    let id = id_of(&a);
    (token, no, id)
}

/// GIVEN a paid tea (1,990) the user asked back in full
/// WHEN the merchant approves it twice (a double click), the second click having read the
/// after-sale (REQUESTED) before the first was approved and WeChat Pay paid its refund, and
/// the order (REFUNDED) after
/// THEN both answers are 200, the second naming the after-sale REFUNDED; WeChat Pay was asked
/// for one refund and `refunded_fee` is 1,990.
///
/// It used to answer the second click 409 `NOT_REFUNDABLE` ("nothing left to refund") of a
/// refund that went fine, decided on the after-sale as first read.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_approval_clicked_twice_answers_the_refund_it_made() {
    let r = pay_stack().await;
    let c = InProcess::new(&r);
    let (token, no, id) = applied(&c, "twin-approve").await;
    let body = json!({"action": "approve", "aftersale_id": id});
    let admin = c.admin_token.clone();
    let ((sa, va), (sb, vb)) = b_held_while_a_commits(
        &r,
        || async {
            let answer = c.admin("/admin/aftersaleSync", &body).await;
            eventually("the refund paid", WAIT, || async {
                c.my_aftersale(&token, &no, &id).await["status"] == "REFUNDED"
            })
            .await;
            answer
        },
        {
            let body = body.clone();
            move |app| async move { call(app, "/admin/aftersaleSync", &admin, body).await }
        },
    )
    .await;
    assert_eq!((sa, sb), (200, 200), "A: {va}\nB: {vb}");
    assert_eq!(vb["aftersale"]["status"], "REFUNDED", "{vb}");
    assert_eq!(refunds_asked(&r, &no).len(), 1, "WeChat Pay asked once");
    assert_eq!(c.status(&token, &no).await["refunded_fee"], json!(TEA));
}

/// A refund of `fee` made by hand in the WeChat Pay merchant platform (sandbox
/// `/_control/merchant_refund`), recorded here once its notification came: `out_refund_no`.
async fn refunded_by_hand(r: &Running, c: &InProcess<'_>, no: &str, fee: i64) -> String {
    let v = c
        .control(
            "merchant_refund",
            &json!({"out_trade_no": no, "refund_fee": fee}),
        )
        .await;
    let by_hand = v["out_refund_no"].as_str().unwrap().to_owned();
    eventually("the refund made by hand recorded", WAIT, || async {
        r.sandbox.refund_notifications_delivered(&by_hand) == 1
    })
    .await;
    by_hand
}

/// GIVEN a paid tea the user asked back in full, then refunded in full by hand in the merchant
/// platform (recorded: `refunded_fee` 1,990)
/// WHEN the merchant records that refund as the after-sale's twice (`mark_refunded` with its
/// `out_refund_no`, a double click), the second having read the after-sale (REQUESTED) before
/// the first settled it and the refund after
/// THEN both answers are 200 and name the after-sale REFUNDED; WeChat Pay is asked nothing and
/// `refunded_fee` stays 1,990.
///
/// It used to answer the second 200 with the after-sale as first read: REQUESTED, as if the
/// refund made by hand had not been recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_settlement_by_hand_clicked_twice_answers_the_aftersale_refunded() {
    let r = pay_stack().await;
    let c = InProcess::new(&r);
    let (token, no, id) = applied(&c, "twin-settle").await;
    let by_hand = refunded_by_hand(&r, &c, &no, TEA).await;
    let body = json!({"action": "mark_refunded", "aftersale_id": id, "out_refund_no": by_hand});
    let admin = c.admin_token.clone();
    let ((sa, va), (sb, vb)) = b_held_at_while_a_commits(
        Kind::Refund,
        &r,
        || c.admin("/admin/aftersaleSync", &body),
        {
            let body = body.clone();
            move |app| async move { call(app, "/admin/aftersaleSync", &admin, body).await }
        },
    )
    .await;
    assert_eq!((sa, sb), (200, 200), "A: {va}\nB: {vb}");
    assert_eq!(va["aftersale"]["status"], "REFUNDED", "{va}");
    assert_eq!(vb["aftersale"]["status"], "REFUNDED", "{vb}");
    assert_eq!(c.my_aftersale(&token, &no, &id).await["status"], "REFUNDED");
    assert!(
        refunds_asked(&r, &no).is_empty(),
        "WeChat Pay asked nothing"
    );
    assert_eq!(c.status(&token, &no).await["refunded_fee"], json!(TEA));
}

/// GIVEN a paid tea (1,990) the user asked 1,000 back of, then 500 refunded by hand in the
/// merchant platform since (not this after-sale's money)
/// WHEN one merchant approves it confirming no refund by hand paid it
/// (`confirm_not_refunded_by_hand`), and another approves it without — the latter having read
/// the after-sale (REQUESTED) before the first approval and its refund were made, the order and
/// refunds by hand after
/// THEN both answers are 200, the latter naming the after-sale REFUNDED; WeChat Pay was asked
/// for one refund and `refunded_fee` is 1,500.
///
/// It used to answer the latter 409 `REFUNDED_BY_HAND` — "approving would pay the user
/// again; if that refund was this after-sale's, record it with mark_refunded" — of an
/// after-sale already paid through WeChat Pay: a merchant following it would record the
/// refund by hand against it as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_approval_racing_a_confirmed_one_answers_the_refund_made() {
    let r = pay_stack().await;
    let c = InProcess::new(&r);
    let (token, no, _) = paid(&c, "twin-confirm").await;
    let (s, a) = c
        .post(
            "/fn/aftersaleSync",
            Some(&token),
            &json!({"action": "apply", "out_trade_no": no, "reason": "one dented",
                    "amount": 1000}),
        )
        .await;
    assert_eq!(s, 200, "{a}");
    let id = id_of(&a);
    refunded_by_hand(&r, &c, &no, 500).await;
    let confirmed =
        json!({"action": "approve", "aftersale_id": id, "confirm_not_refunded_by_hand": true});
    let plain = json!({"action": "approve", "aftersale_id": id});
    let admin = c.admin_token.clone();
    let ((sa, va), (sb, vb)) = b_held_while_a_commits(
        &r,
        || async {
            let answer = c.admin("/admin/aftersaleSync", &confirmed).await;
            eventually("the refund paid", WAIT, || async {
                c.my_aftersale(&token, &no, &id).await["status"] == "REFUNDED"
            })
            .await;
            answer
        },
        move |app| async move { call(app, "/admin/aftersaleSync", &admin, plain).await },
    )
    .await;
    assert_eq!((sa, sb), (200, 200), "A: {va}\nB: {vb}");
    assert_eq!(vb["aftersale"]["status"], "REFUNDED", "{vb}");
    assert_eq!(refunds_asked(&r, &no).len(), 1, "WeChat Pay asked once");
    assert_eq!(c.status(&token, &no).await["refunded_fee"], json!(1500));
}
