#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! The funds reconciliation of a secondary-merchant shop (`WX_FUND_TYPE=1`) end to end:
//! `POST /admin/orderSync {action: "reconcile"}` answers a `funds` section beside the bills,
//! and the schedule keeps each mismatch as a `funds_mismatch` event, paged once. The
//! sandbox books a flow for each paid order, refund and withdrawal, as WeChat does;
//! `/_control/funds/flow` makes it lose one, write an amount wrong, book one later (after
//! midnight), or book one for an order we never made.

use serde_json::{json, Value};
use wxlocal::gateway::Running;

#[path = "reliability_support.rs"]
mod support;
use support::eventually_in_300_polls as eventually;
use support::{run_schedule, DAY_MS};

type Client<'a> = support::InProcess<'a>;

impl Client<'_> {
    /// `user` orders `qty` × tea and pays it in WeChat: (token, out_trade_no, total).
    async fn paid(&self, user: &str, qty: u32) -> (String, String, i64) {
        let (token, _) = self.login(user).await;
        let order = self.order_tea(&token, qty).await;
        assert_eq!(order["fund_type"], 1, "{order}");
        let no = order["out_trade_no"].as_str().unwrap().to_owned();
        let total = order["total_fee"].as_i64().unwrap();
        self.pay_in_wechat(&token, &no).await;
        (token, no, total)
    }
    /// The user asks `amount` of order `no` back; the admin approves; WeChat refunds it.
    async fn refunded(&self, token: &str, no: &str, amount: i64) -> String {
        let id = self
            .apply(token, no, json!({"amount": amount, "reason": "dented"}))
            .await;
        self.approve(&id).await;
        self.until_refunded(token, no, &id).await;
        id
    }
    async fn reconcile(&self, body: Value) -> (u16, Value) {
        let mut body = body;
        body["action"] = json!("reconcile");
        self.admin("/admin/orderSync", &body).await
    }
    async fn reconcile_ok(&self, day: &str) -> Value {
        let (s, v) = self.reconcile(json!({"bill_date": day})).await;
        assert_eq!(s, 200, "{v}");
        v
    }
}

async fn stack() -> Running {
    support::stack_with(&[("WX_FUND_TYPE", "1")]).await
}

fn today(r: &Running) -> String {
    wxshop::time::beijing_date(r.app.clock.now_ms())
}

async fn funds_events(r: &Running) -> Vec<wxshop::store::repo::EventRecord> {
    wxshop::store::repo::events_of(r.app.store.as_ref(), "funds_mismatch", 100, None)
        .await
        .unwrap()
        .0
}

/// The one thing `list` (`orders_awaiting_flows`, `aftersales_awaiting_flows`) of the
/// reconcile answer `v` waits for, which it will ask WeChat about again: `field` = `value`.
fn assert_one_awaiting(v: &Value, list: &str, field: &str, value: &str) {
    let waiting = v["funds"][list].as_array().unwrap();
    assert_eq!(waiting.len(), 1, "{v}");
    assert_eq!(waiting[0][field], value, "{v}");
    assert!(
        waiting[0]["problem"]
            .as_str()
            .unwrap()
            .contains("ask again"),
        "{v}"
    );
}

/// A run of the schedule reconciles `day` and keeps its one mismatch (`{day}/{key}`) as a
/// `funds_mismatch` event for a person: that event.
async fn schedule_keeps_one(
    r: &Running,
    day: &str,
    key: &str,
) -> wxshop::store::repo::Versioned<wxshop::store::repo::EventRecord> {
    let report = run_schedule(r).await;
    assert_eq!(report["funds"]["reconciled"], json!([day]), "{report}");
    assert_eq!(report["funds"]["kept"], 1, "{report}");
    wxshop::store::repo::get_event(
        r.app.store.as_ref(),
        "funds_mismatch",
        &format!("{day}/{key}"),
    )
    .await
    .unwrap()
    .expect("a funds_mismatch event for a person")
}

/// `day` reconciled again an hour on, its mark taken away (as a run cut short leaves it):
/// the run keeps nothing more.
async fn reconciled_again_keeps_nothing(c: &Client<'_>, day: &str) {
    wxshop::store::kv::delete(c.r.app.store.as_ref(), "funds_reconcile/last_date")
        .await
        .unwrap();
    c.advance_both(3_600_000).await;
    let report = run_schedule(c.r).await;
    assert_eq!(report["funds"]["reconciled"], json!([day]), "{report}");
    assert_eq!(report["funds"]["kept"], 0, "{report}");
}

fn mismatches(v: &Value) -> &Vec<Value> {
    v["funds"]["mismatches"].as_array().unwrap()
}

/// A day with a paid order, a refund of part of it and a confirmed withdrawal reconciles
/// clean: the order's income and the after-sale's expense each match what we recorded, the
/// withdrawal is listed (not a mismatch), and the paid order has its flow. Before this, the
/// `reconcile` answer had no `funds` section: nothing compared the funds account with us.
#[tokio::test]
async fn a_clean_fund_type_1_day_reconciles_without_mismatch() {
    let r = stack().await;
    let c = Client::new(&r);
    c.advance_to_china(12, 0).await;
    let (token, no, total) = c.paid("alice", 2).await;
    c.refunded(&token, &no, 1990).await;
    // Settle the rest and withdraw some of it, confirmed by the admin.
    c.control("settle", &json!({"out_order_id": no})).await;
    eventually("the settlement recorded", || async {
        let (_, b) = c.admin("/admin/funds", &json!({"action": "balance"})).await;
        b["available_fen"] == total - 1990
    })
    .await;
    let (s, v) = c
        .admin(
            "/admin/funds",
            &json!({"action": "set_bank_account", "account": {
                "bank_account_type": "ACCOUNT_TYPE_BUSINESS", "account_bank": "招商银行",
                "bank_address_code": "440300", "account_number": "6225880112345678"}}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, w) = c
        .admin(
            "/admin/funds",
            &json!({"action": "withdraw", "amount_fen": 1000}),
        )
        .await;
    assert_eq!(s, 200, "{w}");
    let ticket = w["qrcode_ticket"].as_str().unwrap().to_owned();
    for status in [4, 1] {
        c.control(
            "funds/qrcode",
            &json!({"qrcode_ticket": ticket, "status": status}),
        )
        .await;
    }

    let day = today(&r);
    let v = c.reconcile_ok(&day).await;
    let f = &v["funds"];
    assert_eq!(f["date"], day.as_str(), "{v}");
    assert_eq!(f["flows_checked"], 3, "{v}");
    assert_eq!(f["order_flows_checked"], 1, "{v}");
    assert_eq!(f["aftersale_flows_checked"], 1, "{v}");
    assert_eq!(f["paid_here_checked"], 1, "{v}");
    assert_eq!(f["mismatches"], json!([]), "{v}");
    assert_eq!(f["orders_awaiting_flows"], json!([]), "{v}");
    assert_eq!(f["flows_unchecked"], 0, "{v}");
    let withdrawals = f["withdrawals"].as_array().unwrap();
    assert_eq!(withdrawals.len(), 1, "{v}");
    assert_eq!(withdrawals[0]["amount_fen"], 1000, "{v}");
    assert_eq!(withdrawals[0]["flow_type"], "支出", "{v}");
    // The bills part is as it was.
    assert_eq!(v["bill_date"], day.as_str(), "{v}");
    assert!(c.calls("shop/funds/scanorderflow") >= 1);

    // The schedule, the next morning: reconciled, nothing kept or paged.
    c.advance_to_china(10, 30).await;
    let report = run_schedule(&r).await;
    assert_eq!(report["funds"]["reconciled"], json!([day]), "{report}");
    assert_eq!(report["funds"]["mismatches"], 0, "{report}");
    assert!(funds_events(&r).await.is_empty());
    // Once a day.
    let report = run_schedule(&r).await;
    assert_eq!(report["funds"]["reconciled"], json!([]), "{report}");
}

/// Flows that disagree with us, each found and named: one for an order we never recorded,
/// one whose amount differs from the order's by a fen, a refund of an order of ours made
/// outside our flow (no after-sale of ours refunded it), and amounts no one can read (three
/// decimals, text) — each a mismatch of its own while the other flows are still checked,
/// never a failed run.
#[tokio::test]
async fn flows_that_disagree_are_mismatches() {
    let r = stack().await;
    let c = Client::new(&r);
    c.advance_to_china(12, 0).await;
    let (_, no, total) = c.paid("bob", 2).await;
    let (_, other, _) = c.paid("carol", 1).await;
    let (_, third, _) = c.paid("dave", 1).await;
    c.control(
        "funds/flow",
        &json!({"add": {"request_no": "pay_neverours0001", "amount_fen": 500}}),
    )
    .await;
    c.control(
        "funds/flow",
        &json!({"request_no": no, "amount": format!("{}.{:02}", (total + 1) / 100, (total + 1) % 100)}),
    )
    .await;
    c.control(
        "funds/flow",
        &json!({"add": {"request_no": other, "amount_fen": 300, "busi_type": "售后", "income": false}}),
    )
    .await;
    c.control(
        "funds/flow",
        &json!({"request_no": other, "amount": "19.905"}),
    )
    .await;
    c.control(
        "funds/flow",
        &json!({"request_no": third, "amount": "nineteen"}),
    )
    .await;
    let day = today(&r);
    let v = c.reconcile_ok(&day).await;
    let f = &v["funds"];
    assert_eq!(f["flows_checked"], 5, "{v}");
    assert_eq!(f["aftersale_flows_checked"], 1, "{v}");
    assert_eq!(f["paid_here_checked"], 3, "{v}");
    let m = mismatches(&v);
    assert_eq!(m.len(), 6, "{v}");
    let of = |kind: &str, key: &str, value: &str| {
        m.iter()
            .find(|x| x["kind"] == kind && x[key] == value)
            .unwrap_or_else(|| panic!("no {kind} for {value}: {v}"))
            .clone()
    };
    let unknown = of("order_flow", "request_no", "pay_neverours0001");
    assert!(
        unknown["problem"]
            .as_str()
            .unwrap()
            .contains("no order of ours"),
        "{unknown}"
    );
    let differs = of("order_flow", "out_trade_no", &no);
    assert_eq!(
        differs["problem"],
        format!("amount {} fen in the flow, {total} fen stored", total + 1),
        "{differs}"
    );
    let outside = of("aftersale_flow", "request_no", &other);
    assert!(
        outside["problem"]
            .as_str()
            .unwrap()
            .contains("has no refunded after-sale here"),
        "{outside}"
    );
    let unreadable: Vec<&Value> = m
        .iter()
        .filter(|x| x["kind"] == "unreadable_amount")
        .collect();
    assert_eq!(
        unreadable.len(),
        3,
        "the refund's flow is misreported too: {v}"
    );
    for (n, text) in [(&other, "19.905"), (&third, "nineteen")] {
        let bad = of("unreadable_amount", "request_no", n);
        assert_eq!(bad["amount"], text, "{bad}");
        assert!(
            bad["problem"].as_str().unwrap().contains("not yuan"),
            "{bad}"
        );
    }
    // The orders with an unreadable amount have their flow: not also missing.
    assert_eq!(f["orders_awaiting_flows"], json!([]), "{v}");

    // The schedule the next morning keeps each once and pages once each.
    assert!(funds_events(&r).await.is_empty(), "by hand keeps nothing");
    c.advance_to_china(10, 30).await;
    let report = run_schedule(&r).await;
    assert_eq!(report["funds"]["reconciled"], json!([day]), "{report}");
    assert_eq!(report["funds"]["mismatches"], 6, "{report}");
    assert_eq!(report["funds"]["kept"], 6, "{report}");
    assert_eq!(funds_events(&r).await.len(), 6);
}

/// A fund_type 1 order we recorded paid whose flow WeChat never booked: asked for by hand
/// the same day it is awaiting the day's flows (saying when to ask again); from 10:00 the
/// next day it is missing — and the schedule keeps it as a `funds_mismatch` event and pages
/// a person once, however often it runs.
#[tokio::test]
async fn a_paid_order_without_its_flow_is_missing_and_pages_once() {
    let (metrics, captured) = wxshop::metrics::Metrics::capture("test");
    let r = support::stack_with_metrics(&[("WX_FUND_TYPE", "1")], metrics).await;
    let c = Client::new(&r);
    let paged = || captured.total(wxshop::metrics::MONEY_NEEDS_A_PERSON);
    c.advance_to_china(12, 0).await;
    let (_, kept_no, _) = c.paid("erin", 1).await;
    let (_, no, _) = c.paid("fred", 1).await;
    c.control("funds/flow", &json!({"drop": no})).await;
    let day = today(&r);

    let v = c.reconcile_ok(&day).await;
    assert_eq!(v["funds"]["mismatches"], json!([]), "{v}");
    assert_one_awaiting(&v, "orders_awaiting_flows", "out_trade_no", &no);

    c.advance_to_china(10, 30).await;
    let v = c.reconcile_ok(&day).await;
    let m = mismatches(&v);
    assert_eq!(m.len(), 1, "{v}");
    assert_eq!(m[0]["kind"], "missing_flow", "{v}");
    assert_eq!(m[0]["out_trade_no"], no.as_str(), "{v}");
    assert!(!v.to_string().contains(&format!("\"{kept_no}\"")), "{v}");

    let before = paged();
    let kept = schedule_keeps_one(&r, &day, &format!("missing_flow/{no}")).await;
    assert!(
        kept.value.body.contains("what_to_do"),
        "{}",
        kept.value.body
    );
    assert_eq!(paged() - before, 1, "paged once");
    // The day reconciled again (its mark taken away, as a run cut short leaves it): kept
    // once, paged once.
    reconciled_again_keeps_nothing(&c, &day).await;
    assert_eq!(paged() - before, 1, "still paged once");
}

/// WeChat failing a funds call fails the reconciliation with a clear, retryable error, and
/// the schedule keeps nothing and does not move its mark: the next run, WeChat back, does
/// the day.
#[tokio::test]
async fn a_wechat_error_fails_the_run_and_keeps_nothing() {
    let r = stack().await;
    let c = Client::new(&r);
    c.advance_to_china(12, 0).await;
    let (_, no, _) = c.paid("gina", 1).await;
    c.control("funds/flow", &json!({"drop": no})).await;
    let day = today(&r);
    c.control(
        "faults",
        &json!({"path": "shop/funds/getorderflow", "mode": "errcode", "errcode": -1}),
    )
    .await;
    let (s, v) = c.reconcile(json!({"bill_date": day})).await;
    // Nothing to read while its only flow is dropped: no getorderflow call, the run clean.
    assert_eq!(s, 200, "{v}");
    c.control(
        "funds/flow",
        &json!({"add": {"request_no": "pay_neverours0002", "amount_fen": 100}}),
    )
    .await;
    let (s, v) = c.reconcile(json!({"bill_date": day})).await;
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["code"], "FUNDS_UNAVAILABLE", "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("run the reconciliation again"),
        "{v}"
    );

    c.advance_to_china(10, 30).await;
    let report = run_schedule(&r).await;
    assert!(
        report["failed"]
            .as_array()
            .unwrap()
            .contains(&json!("funds")),
        "{report}"
    );
    assert_eq!(report["funds"]["reconciled"], json!([]), "{report}");
    assert!(funds_events(&r).await.is_empty());

    let resp = c
        .http
        .delete(format!("{}/sandbox/_control/faults", r.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let report = run_schedule(&r).await;
    assert_eq!(report["funds"]["reconciled"], json!([day]), "{report}");
    assert_eq!(report["funds"]["mismatches"], 2, "{report}");
    assert_eq!(funds_events(&r).await.len(), 2);
}

/// Books `n` withdrawal flows of 1 fen today (`W0000`, `W0001`, …): flows that are no
/// order's, to fill a day past what one run reads.
async fn book_withdrawal_flows(c: &Client<'_>, n: usize) {
    for i in 0..n {
        c.control(
            "funds/flow",
            &json!({"add": {"busi_type": "提现", "income": false,
                            "request_no": format!("W{i:04}"), "amount_fen": 1}}),
        )
        .await;
    }
}

/// A day with more flows than one run reads: the first 300 are checked, the rest reported
/// (`flows_unchecked`, `next_from`), and a paid order none of the flows read names is
/// awaiting, not missing; asked from `next_from`, the rest are checked.
#[tokio::test]
async fn a_day_past_the_cap_is_checked_in_part_and_goes_on_by_hand() {
    let r = stack().await;
    let c = Client::new(&r);
    c.advance_to_china(12, 0).await;
    book_withdrawal_flows(&c, 300).await;
    let (_, no, _) = c.paid("hank", 1).await;
    let (_, lost, _) = c.paid("iris", 1).await;
    c.control("funds/flow", &json!({"drop": lost})).await;
    let day = today(&r);
    c.advance_to_china(10, 30).await;
    let v = c.reconcile_ok(&day).await;
    let f = &v["funds"];
    assert_eq!(f["flows_total"], 301, "{f}");
    assert_eq!(f["flows_checked"], 300, "{f}");
    assert_eq!(f["flows_unchecked"], 1, "{f}");
    assert_eq!(f["next_from"], 300, "{f}");
    assert_eq!(f["mismatches"], json!([]), "{f}");
    let awaiting: Vec<&Value> = f["orders_awaiting_flows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["out_trade_no"])
        .collect();
    assert_eq!(awaiting, [&json!(no), &json!(lost)], "{f}");

    // From next_from, the request goes on with what the first one's flows named: its last
    // page checks the other way — the order whose flow WeChat never booked is missing, the
    // one whose flow came first (read by the first request) is not. It used to say only
    // "awaiting" for both, so a busy day checked by hand never showed a missing flow.
    let (s, v) = c
        .reconcile(json!({"bill_date": day, "funds_from": 300}))
        .await;
    assert_eq!(s, 200, "{v}");
    let f = &v["funds"];
    assert_eq!(f["flows_from"], 300, "{f}");
    assert_eq!(f["flows_checked"], 1, "{f}");
    assert_eq!(f["order_flows_checked"], 1, "{f}");
    assert_eq!(f["flows_unchecked"], 0, "{f}");
    let m = mismatches(&v);
    assert_eq!(m.len(), 1, "{v}");
    assert_eq!(m[0]["kind"], "missing_flow", "{v}");
    assert_eq!(m[0]["out_trade_no"], lost.as_str(), "{v}");
    assert_eq!(f["orders_awaiting_flows"], json!([]), "{f}");

    // From a flow no request stopped at, the flows before it are unknown to this one: what
    // none it read names is awaiting, saying how to judge it.
    let (s, v) = c
        .reconcile(json!({"bill_date": day, "funds_from": 200}))
        .await;
    assert_eq!(s, 200, "{v}");
    let f = &v["funds"];
    assert_eq!(f["flows_checked"], 101, "{f}");
    assert_eq!(f["mismatches"], json!([]), "{f}");
    let waiting = f["orders_awaiting_flows"].as_array().unwrap();
    assert_eq!(waiting.len(), 1, "{f}");
    assert_eq!(waiting[0]["out_trade_no"], lost.as_str(), "{f}");
    assert!(
        waiting[0]["problem"]
            .as_str()
            .unwrap()
            .contains("reconcile the day from 0"),
        "{f}"
    );

    let (s, v) = c
        .reconcile(json!({"bill_date": day, "funds_from": 150}))
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["code"], "BAD_FUNDS_FROM", "{v}");
}

/// A shop in direct mode (fund_type 0) is reconciled as before: no `funds` section, no
/// funds call, nothing in the schedule's funds phase.
#[tokio::test]
async fn direct_mode_is_unaffected() {
    let r = support::stack_with(&[]).await;
    let c = Client::new(&r);
    c.advance_to_china(12, 0).await;
    let day = today(&r);
    let v = c.reconcile_ok(&day).await;
    assert!(v.get("funds").is_none(), "{v}");
    assert_eq!(v["bill_date"], day.as_str(), "{v}");
    c.advance_to_china(10, 30).await;
    let report = run_schedule(&r).await;
    assert_eq!(report["funds"]["reconciled"], json!([]), "{report}");
    assert_eq!(c.calls("shop/funds/scanorderflow"), 0);
    assert_eq!(c.calls("shop/funds/getorderflow"), 0);
}

/// A payment WeChat took whose push never reached us (three attempts, each answered 503):
/// the order's income flow names an order we hold unpaid — a mismatch saying so, before the
/// sweep has recorded the payment. Nothing else noticed it the same day.
#[tokio::test]
async fn a_flow_for_an_order_we_hold_unpaid_is_a_lost_payment() {
    let r = stack().await;
    let c = Client::new(&r);
    c.advance_to_china(12, 0).await;
    let (token, _) = c.login("ivan").await;
    let (s, order) = c
        .post(
            "/fn/unifiedOrder",
            Some(&token),
            &json!({"items": [{"product_id": "tea", "sku_id": "tea-250g", "quantity": 1}],
                    "address": {"receiver_name": "Ivan", "detailed_address": "1 Tea Street",
                                "tel_number": "13800000000"}}),
        )
        .await;
    assert_eq!(s, 200, "{order}");
    let no = order["out_trade_no"].as_str().unwrap().to_owned();
    c.pay_in_wechat_every_push_lost(&no).await;

    let v = c.reconcile_ok(&today(&r)).await;
    let m = mismatches(&v);
    assert_eq!(m.len(), 1, "{v}");
    assert_eq!(m[0]["kind"], "order_flow", "{v}");
    assert_eq!(m[0]["out_trade_no"], no.as_str(), "{v}");
    assert!(
        m[0]["problem"]
            .as_str()
            .unwrap()
            .contains("we never recorded it"),
        "{v}"
    );
}

/// A busy day — 350 flows, more than one run reads — goes through the schedule by itself:
/// the first run reads 300 flows, keeps where it stopped (`funds_reconcile/progress`),
/// pages nobody and leaves the mark; the next run reads the rest and, the day's flows all
/// read, finds the order paid here whose flow WeChat never booked (paged once) while the
/// order whose flow came in the last page is not missing; the mark moves only then, and a
/// further run does nothing. The schedule used to read 300, keep a `flows_unchecked` event,
/// page a person and move on: any shop with more than ~300 orders a day was paged every day
/// and its orders never checked the other way.
#[tokio::test]
async fn the_schedule_goes_through_a_busy_day_across_runs() {
    let (metrics, captured) = wxshop::metrics::Metrics::capture("test");
    let r = support::stack_with_metrics(&[("WX_FUND_TYPE", "1")], metrics).await;
    let c = Client::new(&r);
    let paged = || captured.total(wxshop::metrics::MONEY_NEEDS_A_PERSON);
    c.advance_to_china(12, 0).await;
    book_withdrawal_flows(&c, 349).await;
    let (_, kept_no, _) = c.paid("jack", 1).await;
    let (_, no, _) = c.paid("kate", 1).await;
    c.control("funds/flow", &json!({"drop": no})).await;
    let day = today(&r);
    let store = r.app.store.as_ref();
    let mark = || async {
        wxshop::store::kv::get(store, "funds_reconcile/last_date")
            .await
            .unwrap()
            .map(|m| m.value)
    };
    c.advance_to_china(10, 30).await;
    let before = paged();

    let report = run_schedule(&r).await;
    let f = &report["funds"];
    assert_eq!(f["reconciled"], json!([]), "{report}");
    assert_eq!(f["in_progress"], day.as_str(), "{report}");
    assert_eq!(f["next_from"], 300, "{report}");
    assert_eq!(f["flows_checked"], 300, "{report}");
    assert_eq!(f["kept"], 0, "{report}");
    assert_eq!(paged() - before, 0, "nobody paged for a day read in part");
    assert!(funds_events(&r).await.is_empty());
    assert_eq!(
        mark().await,
        None,
        "the mark waits for the day's last flows"
    );

    c.advance_both(5 * 60_000).await;
    let report = run_schedule(&r).await;
    let f = &report["funds"];
    assert_eq!(f["reconciled"], json!([day]), "{report}");
    assert_eq!(f["flows_checked"], 50, "{report}");
    assert_eq!(f["flows_unchecked"], 0, "{report}");
    assert_eq!(f["mismatches"], 1, "{report}");
    assert_eq!(f["kept"], 1, "{report}");
    assert_eq!(paged() - before, 1, "paged once, for the missing flow");
    let events = funds_events(&r).await;
    assert_eq!(events.len(), 1);
    let missing = wxshop::store::repo::get_event(
        store,
        "funds_mismatch",
        &format!("{day}/missing_flow/{no}"),
    )
    .await
    .unwrap()
    .expect("the missing flow kept for a person");
    assert!(
        !missing.value.body.contains(&kept_no),
        "{}",
        missing.value.body
    );
    assert_eq!(mark().await.as_deref(), Some(day.as_str()));
    assert!(wxshop::store::kv::get(store, "funds_reconcile/progress")
        .await
        .unwrap()
        .is_none());

    c.advance_both(5 * 60_000).await;
    let report = run_schedule(&r).await;
    assert_eq!(report["funds"]["reconciled"], json!([]), "{report}");
    assert_eq!(report["funds"]["flows_checked"], 0, "{report}");
    assert_eq!(paged() - before, 1, "still paged once");
}

/// Our after-sale id of an after-sale's WeChat id (the sandbox books a refund's flow under
/// WeChat's `aftersale_id`).
async fn wechat_aftersale_id(r: &Running, id: &str) -> String {
    let id = wxshop::domain::AfterSaleId::parse(id).unwrap();
    wxshop::store::repo::get_aftersale(r.app.store.as_ref(), &id)
        .await
        .unwrap()
        .expect("the after-sale stored")
        .value
        .wx_aftersale_id
        .expect("WeChat's id of it")
        .to_string()
}

/// A refund we recorded (an after-sale of a fund_type 1 order, REFUNDED) whose expense flow
/// WeChat never booked: asked for by hand the same day it is awaiting the day's flows; from
/// 10:00 the next day it is missing (`missing_refund_flow`, naming the after-sale) while the
/// refund whose flow came is not — and the schedule keeps it as a `funds_mismatch` event and
/// pages once, however often the day is reconciled. Refunds used to be checked only from
/// the flows to our records: one we recorded that WeChat never made went unnoticed.
#[tokio::test]
async fn a_refund_we_recorded_without_its_expense_flow_is_missing() {
    let (metrics, captured) = wxshop::metrics::Metrics::capture("test");
    let r = support::stack_with_metrics(&[("WX_FUND_TYPE", "1")], metrics).await;
    let c = Client::new(&r);
    let paged = || captured.total(wxshop::metrics::MONEY_NEEDS_A_PERSON);
    c.advance_to_china(12, 0).await;
    let (token, no, _) = c.paid("lily", 2).await;
    let kept_id = c.refunded(&token, &no, 1990).await;
    let (token, other, _) = c.paid("mona", 1).await;
    let id = c.refunded(&token, &other, 1990).await;
    let wx_id = wechat_aftersale_id(&r, &id).await;
    c.control("funds/flow", &json!({"drop": wx_id})).await;
    let day = today(&r);

    let v = c.reconcile_ok(&day).await;
    let f = &v["funds"];
    assert_eq!(f["refunds_checked"], 2, "{v}");
    assert_eq!(f["mismatches"], json!([]), "{v}");
    assert_one_awaiting(&v, "aftersales_awaiting_flows", "aftersale_id", &id);

    c.advance_to_china(10, 30).await;
    let v = c.reconcile_ok(&day).await;
    let m = mismatches(&v);
    assert_eq!(m.len(), 1, "{v}");
    assert_eq!(m[0]["kind"], "missing_refund_flow", "{v}");
    assert_eq!(m[0]["aftersale_id"], id.as_str(), "{v}");
    assert_eq!(m[0]["out_trade_no"], other.as_str(), "{v}");
    assert!(!v.to_string().contains(&format!("\"{kept_id}\"")), "{v}");

    let before = paged();
    schedule_keeps_one(&r, &day, &format!("missing_refund_flow/{id}")).await;
    assert_eq!(paged() - before, 1, "paged once");
    reconciled_again_keeps_nothing(&c, &day).await;
    assert_eq!(paged() - before, 1, "still paged once");
}

/// A busy day (343 flows) read across the schedule's runs checks refunds the other way at
/// its last page with every after-sale the day's flows named: the refund whose flow the
/// first run read is not missing; the one whose flow WeChat never booked is, found by the
/// run that reads the last flows (nothing kept before).
#[tokio::test]
async fn a_busy_day_checks_its_refunds_at_its_last_page() {
    let r = stack().await;
    let c = Client::new(&r);
    c.advance_to_china(12, 0).await;
    let (token, no, _) = c.paid("nora", 1).await;
    let kept_id = c.refunded(&token, &no, 1990).await;
    let (token, other, _) = c.paid("otto", 1).await;
    let id = c.refunded(&token, &other, 1990).await;
    let wx_id = wechat_aftersale_id(&r, &id).await;
    c.control("funds/flow", &json!({"drop": wx_id})).await;
    book_withdrawal_flows(&c, 340).await;
    let day = today(&r);
    c.advance_to_china(10, 30).await;

    let report = run_schedule(&r).await;
    assert_eq!(report["funds"]["in_progress"], day.as_str(), "{report}");
    assert_eq!(report["funds"]["kept"], 0, "{report}");
    assert!(funds_events(&r).await.is_empty());

    c.advance_both(5 * 60_000).await;
    let report = run_schedule(&r).await;
    assert_eq!(report["funds"]["reconciled"], json!([day]), "{report}");
    assert_eq!(report["funds"]["mismatches"], 1, "{report}");
    assert_eq!(report["funds"]["kept"], 1, "{report}");
    let events = funds_events(&r).await;
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0].key,
        format!("{day}/missing_refund_flow/{id}"),
        "{}",
        events[0].body
    );
    assert!(!events[0].body.contains(&kept_id), "{}", events[0].body);
}

/// An order paid just before midnight whose income flow WeChat booked just after it (the
/// sandbox books it 5 minutes later: listed under the next day) is not missing on its day:
/// by hand and in the schedule it awaits the next day's flows, nobody paged; the schedule's
/// run of the next day finds its flow there. An order of the same minute whose flow never
/// came is missing then — once, keyed by the next day. Such an order used to read as
/// missing on its day, paging a person for nothing.
#[tokio::test]
async fn a_flow_booked_after_midnight_is_looked_for_on_the_next_day() {
    let (metrics, captured) = wxshop::metrics::Metrics::capture("test");
    let r = support::stack_with_metrics(&[("WX_FUND_TYPE", "1")], metrics).await;
    let c = Client::new(&r);
    let paged = || captured.total(wxshop::metrics::MONEY_NEEDS_A_PERSON);
    c.advance_to_china(23, 58).await;
    let (_, late, _) = c.paid("olga", 1).await;
    let (_, lost, _) = c.paid("paul", 1).await;
    let day = today(&r);
    c.control(
        "funds/flow",
        &json!({"request_no": late, "book_after_ms": 5 * 60_000}),
    )
    .await;
    c.control("funds/flow", &json!({"drop": lost})).await;
    c.advance_to_china(10, 30).await;
    let next = today(&r);
    assert_ne!(next, day);

    let v = c.reconcile_ok(&day).await;
    let f = &v["funds"];
    assert_eq!(f["mismatches"], json!([]), "{v}");
    let waiting = f["orders_awaiting_flows"].as_array().unwrap();
    assert_eq!(waiting.len(), 2, "{v}");
    for w in waiting {
        assert!(
            w["problem"].as_str().unwrap().contains(&next),
            "the next day named: {w}"
        );
    }
    let v = c.reconcile_ok(&next).await;
    assert_eq!(v["funds"]["flows_checked"], 1, "{v}");

    let before = paged();
    let report = run_schedule(&r).await;
    assert_eq!(report["funds"]["reconciled"], json!([day]), "{report}");
    assert_eq!(report["funds"]["kept"], 0, "{report}");
    assert_eq!(
        paged() - before,
        0,
        "nobody paged for a flow booked after midnight"
    );

    c.advance_both(DAY_MS).await;
    let report = run_schedule(&r).await;
    assert_eq!(report["funds"]["reconciled"], json!([next]), "{report}");
    assert_eq!(report["funds"]["kept"], 1, "{report}");
    assert_eq!(
        paged() - before,
        1,
        "paged once, for the flow that never came"
    );
    let events = funds_events(&r).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].key, format!("{next}/missing_flow/{lost}"));
    assert!(!events[0].body.contains(&late), "{}", events[0].body);
    // By hand, the next day (the schedule having done the day before) says the same.
    let v = c.reconcile_ok(&next).await;
    assert_eq!(v["funds"]["carried_checked"], 2, "{v}");
    let m = mismatches(&v);
    assert_eq!(m.len(), 1, "{v}");
    assert_eq!(m[0]["out_trade_no"], lost.as_str(), "{v}");
}

/// In fund_type 1 mode a failing `downloadbill` (WeChat Pay answering 500) no longer hides
/// the funds flows: `reconcile` answers 200 with the bills' error in `bills_error` and the
/// `funds` section — here the paid order whose flow never came. It used to fail whole
/// (503) with the bills, the funds section never reached.
#[tokio::test]
async fn failing_bills_do_not_hide_the_funds_section() {
    let r = stack().await;
    let c = Client::new(&r);
    c.advance_to_china(12, 0).await;
    let (_, no, _) = c.paid("rita", 1).await;
    c.control("funds/flow", &json!({"drop": no})).await;
    let day = today(&r);
    c.advance_to_china(10, 30).await;
    c.control(
        "faults",
        &json!({"path": "pay/downloadbill", "mode": "http500"}),
    )
    .await;
    let (s, v) = c.reconcile(json!({"bill_date": day})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["bills_error"]["status"], 503, "{v}");
    assert_eq!(v["bills_error"]["code"], "PAYMENT_UNAVAILABLE", "{v}");
    assert!(v.get("checked").is_none(), "no bill fields: {v}");
    let m = mismatches(&v);
    assert_eq!(m.len(), 1, "{v}");
    assert_eq!(m[0]["kind"], "missing_flow", "{v}");
    assert_eq!(m[0]["out_trade_no"], no.as_str(), "{v}");
}

/// Rewrites after-sale `id` as `status`, recorded refunded at `refunded_at_ms`: how the
/// record reads while a refund WeChat made has not reached us (both its pushes lost), and
/// once it has.
async fn set_aftersale(
    r: &Running,
    id: &str,
    status: wxshop::domain::AfterSaleStatus,
    refunded_at_ms: Option<i64>,
) {
    let store = r.app.store.as_ref();
    let id = wxshop::domain::AfterSaleId::parse(id).unwrap();
    let rec = wxshop::store::repo::get_aftersale(store, &id)
        .await
        .unwrap()
        .unwrap();
    let mut next = rec.value.clone();
    next.status = status;
    next.refunded_at_ms = refunded_at_ms;
    let mut b = wxshop::store::repo::Batch::new();
    b.update_aftersale(&rec, &next);
    b.commit(store).await.unwrap();
}

/// A refund WeChat made whose pushes were both lost, recorded here two days later (WeChat's
/// after-sale unreadable until then, so the schedule could not read it back sooner): the day
/// of its expense flow names it an `aftersale_flow` mismatch ("stored as REFUNDING"), paged
/// once; the day we record the refund finds its flow was on that earlier day
/// (`aftersales_flowed_earlier`, kv `funds_reconcile/refund_flow/{aftersale_id}`), not
/// `missing_refund_flow` — one page in all. It used to read as missing on the day we
/// recorded it too: a second page for the same refund.
#[tokio::test]
async fn a_refund_recorded_days_after_its_flow_pages_once() {
    use wxshop::domain::AfterSaleStatus;
    let (metrics, captured) = wxshop::metrics::Metrics::capture("test");
    let r = support::stack_with_metrics(&[("WX_FUND_TYPE", "1")], metrics).await;
    let c = Client::new(&r);
    let paged = || captured.total(wxshop::metrics::MONEY_NEEDS_A_PERSON);
    c.advance_to_china(12, 0).await;
    let (token, no, _) = c.paid("nora", 2).await;
    let id = c.refunded(&token, &no, 1990).await;
    // (What the refund left in the outbox done first.)
    c.advance_both(5 * 60_000).await;
    run_schedule(&r).await;
    // Here it still reads as being refunded: WeChat's pushes never came, and the schedule's
    // read-back of REFUNDING after-sales (`wechat_refunds`, the first to call
    // `ecaftersale/get` in a run) finds WeChat busy on each run until then, so it cannot
    // record it sooner.
    set_aftersale(&r, &id, AfterSaleStatus::Refunding, None).await;
    let busy =
        json!({"path": "shop/ecaftersale/get", "mode": "errcode", "errcode": -1, "count": 1});
    let busy_once = || c.control("faults", &busy);
    let day = today(&r);
    let before = paged();

    c.advance_to_china(10, 30).await;
    busy_once().await;
    let report = run_schedule(&r).await;
    assert_eq!(report["funds"]["reconciled"], json!([day]), "{report}");
    assert_eq!(report["funds"]["kept"], 1, "{report}");
    let events = funds_events(&r).await;
    assert_eq!(events.len(), 1);
    assert!(
        events[0].key.starts_with(&format!("{day}/aftersale_flow/"))
            && events[0].body.contains("stored as REFUNDING"),
        "{} {}",
        events[0].key,
        events[0].body
    );
    assert_eq!(paged() - before, 1);

    // Two days after WeChat refunded it, the refund is found and recorded here.
    c.advance_both(DAY_MS + 90 * 60_000).await;
    busy_once().await;
    run_schedule(&r).await;
    set_aftersale(
        &r,
        &id,
        AfterSaleStatus::Refunded,
        Some(r.app.clock.now_ms()),
    )
    .await;
    let recorded = today(&r);
    c.advance_to_china(10, 30).await;
    let v = c.reconcile_ok(&recorded).await;
    let f = &v["funds"];
    assert_eq!(f["refunds_checked"], 1, "{v}");
    assert_eq!(f["mismatches"], json!([]), "{v}");
    assert_eq!(f["aftersales_awaiting_flows"], json!([]), "{v}");
    let earlier = f["aftersales_flowed_earlier"].as_array().unwrap();
    assert_eq!(earlier.len(), 1, "{v}");
    assert_eq!(earlier[0]["aftersale_id"], id.as_str(), "{v}");
    assert!(
        earlier[0]["problem"]
            .as_str()
            .unwrap()
            .contains(&format!("was booked on {day}")),
        "{v}"
    );
    let report = run_schedule(&r).await;
    assert_eq!(report["funds"]["reconciled"], json!([recorded]), "{report}");
    assert_eq!(report["funds"]["kept"], 0, "{report}");
    assert_eq!(funds_events(&r).await.len(), 1);
    assert_eq!(paged() - before, 1, "one page for the one refund");
}

/// The reverse of a flow booked after midnight: WeChat refunds (and books the expense flow)
/// just before midnight, we record the refund just after (our clock ahead of WeChat's). The
/// flow's day names an after-sale of the next day and hands it on as having its flow; the
/// next day, where we recorded it, it is not missing — nobody paged, by hand or by the
/// schedule.
#[tokio::test]
async fn a_refund_flow_booked_before_midnight_and_recorded_after_is_not_missing() {
    let (metrics, captured) = wxshop::metrics::Metrics::capture("test");
    let r = support::stack_with_metrics(&[("WX_FUND_TYPE", "1")], metrics).await;
    let c = Client::new(&r);
    let paged = || captured.total(wxshop::metrics::MONEY_NEEDS_A_PERSON);
    c.advance_to_china(23, 30).await;
    let (token, no, _) = c.paid("owen", 2).await;
    let day = today(&r);
    // Our clock 40 minutes ahead of WeChat's: past midnight here, not there.
    r.app.clock.advance(40 * 60_000);
    let id = c.refunded(&token, &no, 1990).await;
    let next = today(&r);
    assert_ne!(next, day, "recorded after midnight here");
    let before = paged();

    c.advance_to_china(10, 30).await;
    let report = run_schedule(&r).await;
    assert_eq!(report["funds"]["reconciled"], json!([day]), "{report}");
    assert_eq!(report["funds"]["kept"], 0, "{report}");
    c.advance_both(DAY_MS).await;
    let report = run_schedule(&r).await;
    assert_eq!(report["funds"]["reconciled"], json!([next]), "{report}");
    assert_eq!(report["funds"]["mismatches"], 0, "{report}");
    assert_eq!(report["funds"]["kept"], 0, "{report}");
    let v = c.reconcile_ok(&next).await;
    let f = &v["funds"];
    assert_eq!(f["refunds_checked"], 1, "{v}");
    assert_eq!(f["mismatches"], json!([]), "{v}");
    assert_eq!(f["aftersales_awaiting_flows"], json!([]), "{v}");
    assert!(!v.to_string().contains("missing_refund_flow"), "{v} {id}");
    assert!(funds_events(&r).await.is_empty());
    assert_eq!(paged() - before, 0, "nobody paged");
}

/// A day reconciled by hand (one the schedule did not do: here its first run came two days
/// on, reconciling only the day before it) hands its last hour on as the schedule does
/// (kv `funds_reconcile/next_day/{next day}`): the schedule's run of the next day finds the
/// order whose flow WeChat booked after midnight among that day's flows and reports the one
/// whose flow never came `missing_flow` once. By hand used to hand nothing on, so that order
/// was never reported anywhere, though the by-hand answer said it would be looked for.
#[tokio::test]
async fn a_day_reconciled_by_hand_hands_its_last_hour_on() {
    let (metrics, captured) = wxshop::metrics::Metrics::capture("test");
    let r = support::stack_with_metrics(&[("WX_FUND_TYPE", "1")], metrics).await;
    let c = Client::new(&r);
    let paged = || captured.total(wxshop::metrics::MONEY_NEEDS_A_PERSON);
    c.advance_to_china(23, 58).await;
    let (_, late, _) = c.paid("pia", 1).await;
    let (_, lost, _) = c.paid("quin", 1).await;
    let day = today(&r);
    c.control(
        "funds/flow",
        &json!({"request_no": late, "book_after_ms": 5 * 60_000}),
    )
    .await;
    c.control("funds/flow", &json!({"drop": lost})).await;
    c.advance_to_china(10, 30).await;
    let next = today(&r);

    let v = c.reconcile_ok(&day).await;
    assert_eq!(v["funds"]["mismatches"], json!([]), "{v}");
    assert_eq!(
        v["funds"]["orders_awaiting_flows"].as_array().map(Vec::len),
        Some(2),
        "{v}"
    );
    let handed = wxshop::store::kv::get(
        r.app.store.as_ref(),
        &format!("funds_reconcile/next_day/{next}"),
    )
    .await
    .unwrap()
    .expect("handed on to the next day");
    assert!(handed.value.contains(&lost), "{}", handed.value);

    // The schedule's first run, the day after: it reconciles the day before it only.
    c.advance_both(DAY_MS).await;
    let before = paged();
    let report = run_schedule(&r).await;
    assert_eq!(report["funds"]["reconciled"], json!([next]), "{report}");
    assert_eq!(report["funds"]["kept"], 1, "{report}");
    let events = funds_events(&r).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].key, format!("{next}/missing_flow/{lost}"));
    assert!(!events[0].body.contains(&late), "{}", events[0].body);
    assert_eq!(paged() - before, 1, "paged once");
}
