#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! Secondary-merchant mode (`WX_FUND_TYPE=1`) end to end over HTTP: WeChat collects the money
//! (`shop/order/add` fund_type=1 + `getpaymentparams`, the pay and settle events), the balance
//! moves from pending to available, and the merchant withdraws through `POST /admin/funds`
//! with the admin's QR confirmation. Bad input is refused clearly and changes nothing.

use serde_json::{json, Value};
use std::time::Duration;
use wxlocal::gateway::Running;

#[path = "reliability_support.rs"]
mod support;
use support::eventually_in_300_polls as eventually;
use wxshop::domain::OutTradeNo;
use wxshop::handlers::funds::{get_withdrawal, list_withdrawals};

async fn stack() -> Running {
    support::stack_with(&[("WX_FUND_TYPE", "1")]).await
}

type Client<'a> = support::InProcess<'a>;

impl Client<'_> {
    async fn funds(&self, body: Value) -> (u16, Value) {
        self.admin("/admin/funds", &body).await
    }
    async fn funds_ok(&self, body: Value) -> Value {
        let (s, v) = self.funds(body.clone()).await;
        assert_eq!(s, 200, "{body} → {v}");
        v
    }
    async fn balance(&self) -> (i64, i64) {
        let b = self.funds_ok(json!({"action": "balance"})).await;
        (
            b["available_fen"].as_i64().unwrap(),
            b["pending_fen"].as_i64().unwrap(),
        )
    }
}

fn account() -> Value {
    json!({"bank_account_type": "ACCOUNT_TYPE_BUSINESS", "account_bank": "招商银行",
           "bank_address_code": "440300", "account_number": "6225880112345678"})
}

/// Orders 2 × tea as a fund_type=1 order, pays it through WeChat and lets WeChat settle it.
/// Returns the order number and its total.
async fn buy_pay_settle(c: &Client<'_>) -> (String, i64) {
    let (token, _) = c.login("alice").await;
    let order = c.order_tea(&token, 2).await;
    let no = order["out_trade_no"].as_str().unwrap().to_owned();
    let total = order["total_fee"].as_i64().unwrap();
    assert_eq!(total, 2 * 1990);
    assert_eq!(order["fund_type"], 1);
    // The payment parameters come from shop/order/getpaymentparams, not WeChat Pay.
    assert!(order["payment"]["package"]
        .as_str()
        .unwrap()
        .starts_with("prepay_id="));
    assert!(!order["payment"]["paySign"].as_str().unwrap().is_empty());
    let added = c.r.sandbox.calls("shop/order/add");
    assert!(
        added
            .iter()
            .any(|a| a.to_string().contains(&no) && a.to_string().contains("\"fund_type\":1")),
        "shop/order/add with fund_type 1: {added:?}"
    );
    assert!(c.calls("shop/order/getpaymentparams") >= 1);
    assert_eq!(c.calls("pay/unifiedorder"), 0, "no WeChat Pay prepay");

    // The user pays in WeChat: open_product_order_pay lands, the order reads PAID.
    c.pay_in_wechat(&token, &no).await;
    assert_eq!(
        c.balance().await,
        (0, total),
        "paid money awaits settlement"
    );
    assert_eq!(c.calls("shop/order/pay"), 0, "fund_type=1 syncs no payment");

    // WeChat settles: open_product_order_settle lands, the balance becomes withdrawable.
    c.control("settle", &json!({"out_order_id": no})).await;
    let out = OutTradeNo::parse(no.clone()).unwrap();
    eventually("the order to be settled", || async {
        wxshop::store::repo::get_order(c.r.app.store.as_ref(), &out)
            .await
            .unwrap()
            .is_some_and(|o| o.value.settled_at_ms.is_some())
    })
    .await;
    assert_eq!(c.balance().await, (total, 0), "settled money is available");
    (no, total)
}

#[tokio::test]
async fn fund_type_1_purchase_settles_and_is_withdrawn() {
    let r = stack().await;
    let c = Client::new(&r);
    assert_eq!(c.balance().await, (0, 0));
    let (no, total) = buy_pay_settle(&c).await;

    // The order's money shows in today's flows, in fen, and by id.
    let flows = c.funds_ok(json!({"action": "flows"})).await;
    let income = flows["flows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["request_no"] == no.as_str())
        .unwrap_or_else(|| panic!("no flow for {no}: {flows}"))
        .clone();
    assert_eq!(income["amount_fen"], total);
    assert_eq!(income["direction"], "income");
    let one = c
        .funds_ok(json!({"action": "flow", "flow_id": income["flow_id"]}))
        .await;
    assert_eq!(one["flow"]["amount_fen"], total);

    // Bank account: none yet, then set, shown masked.
    let none = c.funds_ok(json!({"action": "bank_account"})).await;
    assert!(none["account"].is_null(), "{none}");
    let set = c
        .funds_ok(json!({"action": "set_bank_account", "account": account()}))
        .await;
    assert_eq!(set["account"]["account_number_masked"], "****5678");
    let shown = c.funds_ok(json!({"action": "bank_account"})).await;
    assert_eq!(shown["account"]["account_bank"], "招商银行");
    assert!(!shown.to_string().contains("6225880112345678"), "{shown}");

    // Withdraw part of it: a QR code PNG for the admin, and a stored record.
    let w = c
        .funds_ok(json!({"action": "withdraw", "amount_fen": 1000, "remark": "payout"}))
        .await;
    let ticket = w["qrcode_ticket"].as_str().unwrap().to_owned();
    let id = w["withdrawal"]["withdraw_id"].as_str().unwrap().to_owned();
    assert!(
        w["qrcode_png_base64"]
            .as_str()
            .unwrap()
            .starts_with("iVBORw0KGgo"),
        "a base64 PNG: {w}"
    );
    assert!(w["qrcode_png_base64"].as_str().unwrap().len() > 200);
    assert_eq!(w["withdrawal"]["amount_fen"], 1000);
    // The same request again (its answer lost on the way, say): WeChat refuses a second
    // withdrawal today, and the caller gets the pending one's QR code back, not a refusal.
    let again = c
        .funds_ok(json!({"action": "withdraw", "amount_fen": 1000, "remark": "payout"}))
        .await;
    assert_eq!(again["resumed"], true, "{again}");
    assert_eq!(again["withdrawal"]["withdraw_id"], id.as_str());
    assert_eq!(again["qrcode_ticket"], ticket.as_str());
    assert!(again["qrcode_png_base64"].is_string(), "{again}");
    assert_eq!(w["recorded"], true);
    let (_, stored) = get_withdrawal(r.app.store.as_ref(), &id)
        .await
        .unwrap()
        .expect("withdrawal recorded");
    assert_eq!(stored.amount.get(), 1000);
    assert_eq!(stored.qrcode_ticket.as_deref(), Some(ticket.as_str()));
    assert_eq!(c.balance().await, (total - 1000, 0));

    let waiting = c
        .funds_ok(json!({"action": "withdraw_status", "qrcode_ticket": ticket}))
        .await;
    assert_eq!(waiting["qrcode"]["status"], 0, "{waiting}");
    assert_eq!(waiting["withdrawal"]["status"], "BEFORE_SCAN_QRCODE");

    // The admin scans and confirms; the bank transfer completes.
    c.control(
        "funds/qrcode",
        &json!({"qrcode_ticket": ticket, "status": 4}),
    )
    .await;
    c.control(
        "funds/qrcode",
        &json!({"qrcode_ticket": ticket, "status": 1}),
    )
    .await;
    eventually("the withdrawal to succeed", || async {
        let s = c
            .funds_ok(json!({"action": "withdraw_status", "withdraw_id": id}))
            .await;
        s["withdrawal"]["status"] == "SUCCESS"
    })
    .await;
    let by_ticket = c
        .funds_ok(json!({"action": "withdraw_status", "qrcode_ticket": ticket}))
        .await;
    assert_eq!(by_ticket["qrcode"]["confirmed"], true);
    assert_eq!(by_ticket["withdrawal"]["withdraw_id"], id.as_str());
    // withdraw_notify events (1 issued, 2 verified, 3 success) land on the record.
    eventually("withdraw_notify to be recorded", || async {
        let (_, w) = get_withdrawal(r.app.store.as_ref(), &id)
            .await
            .unwrap()
            .unwrap();
        w.status == "SUCCESS" && w.events.contains(&3)
    })
    .await;

    // A second withdrawal the same day: WeChat's 9700101, surfaced clearly; nothing stored.
    let (s, again) = c
        .funds(json!({"action": "withdraw", "amount_fen": 500}))
        .await;
    assert_eq!(s, 409, "{again}");
    assert_eq!(again["code"], "WITHDRAWAL_DAILY_LIMIT");
    assert!(again["message"]
        .as_str()
        .unwrap()
        .contains("one withdrawal a day"));
    assert_eq!(c.balance().await, (total - 1000, 0));
    assert_eq!(
        list_withdrawals(r.app.store.as_ref(), 100)
            .await
            .unwrap()
            .len(),
        1
    );

    let history = c.funds_ok(json!({"action": "withdrawals"})).await;
    assert_eq!(history["total"], 1, "{history}");
    assert_eq!(history["withdrawals"][0]["withdraw_id"], id.as_str());
    assert_eq!(history["withdrawals"][0]["status"], "SUCCESS");
    assert_eq!(history["withdrawals"][0]["amount_fen"], 1000);
}

#[tokio::test]
async fn bad_funds_input_is_refused_and_changes_nothing() {
    let r = stack().await;
    let c = Client::new(&r);
    let (_, total) = buy_pay_settle(&c).await;
    let balance = c.balance().await;
    assert_eq!(balance, (total, 0));
    let stored = || async { list_withdrawals(r.app.store.as_ref(), 100).await.unwrap() };

    // No bank account yet: WeChat's refusal says what to do.
    let (s, v) = c
        .funds(json!({"action": "withdraw", "amount_fen": 100}))
        .await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["code"], "NO_BANK_ACCOUNT");
    c.funds_ok(json!({"action": "set_bank_account", "account": account()}))
        .await;
    let submits = c.calls("shop/funds/submitwithdraw");

    // Negative, zero, fractional, missing: 400 before anything is asked.
    for amount in [json!(-100), json!(0), json!(1.5), json!("100"), Value::Null] {
        let (s, v) = c
            .funds(json!({"action": "withdraw", "amount_fen": amount}))
            .await;
        assert_eq!(s, 400, "{amount}: {v}");
        assert_eq!(v["code"], "BAD_AMOUNT", "{v}");
    }
    // Over the available balance: 409 without calling submitwithdraw.
    let (s, v) = c
        .funds(json!({"action": "withdraw", "amount_fen": total + 1}))
        .await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["code"], "INSUFFICIENT_BALANCE");
    assert!(v["message"].as_str().unwrap().contains(&total.to_string()));
    assert_eq!(c.calls("shop/funds/submitwithdraw"), submits);

    // Malformed bank accounts: 400 naming what to fix; WeChat not asked; account unchanged.
    let sets = c.calls("shop/funds/setbankaccount");
    let mut letters = account();
    letters["account_number"] = json!("6225-8801-1234");
    let mut short = account();
    short["account_number"] = json!("1234");
    let mut kind = account();
    kind["bank_account_type"] = json!("SAVINGS");
    let mut city = account();
    city["bank_address_code"] = json!("44");
    let mut nameless = account();
    nameless["account_bank"] = json!("");
    for (bad, needle) in [
        (letters, "account_number"),
        (short, "8–30 digits"),
        (kind, "bank_account_type"),
        (city, "bank_address_code"),
        (nameless, "account_bank"),
        (json!("6225880112345678"), "object"),
    ] {
        let (s, v) = c
            .funds(json!({"action": "set_bank_account", "account": bad}))
            .await;
        assert_eq!(s, 400, "{v}");
        assert_eq!(v["code"], "BAD_BANK_ACCOUNT");
        assert!(v["message"].as_str().unwrap().contains(needle), "{v}");
    }
    assert_eq!(c.calls("shop/funds/setbankaccount"), sets);
    let shown = c.funds_ok(json!({"action": "bank_account"})).await;
    assert_eq!(shown["account"]["account_number_masked"], "****5678");

    // Unknown flow id: 404; a malformed one: 400.
    let (s, v) = c
        .funds(json!({"action": "flow", "flow_id": "20990101000000000000"}))
        .await;
    assert_eq!(s, 404, "{v}");
    assert_eq!(v["code"], "FLOW_NOT_FOUND");
    let (s, v) = c
        .funds(json!({"action": "flow", "flow_id": "../etc"}))
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["code"], "BAD_FLOW_ID");
    // Unknown withdrawal and ticket: 404.
    let (s, v) = c
        .funds(json!({"action": "withdraw_status", "withdraw_id": "2099010100000"}))
        .await;
    assert_eq!(s, 404, "{v}");
    assert_eq!(v["code"], "WITHDRAWAL_NOT_FOUND");
    let (s, v) = c
        .funds(json!({"action": "withdraw_status", "qrcode_ticket": "qr_nope"}))
        .await;
    assert_eq!(s, 404, "{v}");
    assert_eq!(v["code"], "QRCODE_NOT_FOUND");
    // Bad paging and dates.
    let (s, _) = c.funds(json!({"action": "flows", "page_size": 1000})).await;
    assert_eq!(s, 400);
    let (s, _) = c
        .funds(json!({"action": "flows", "date": "2024-01-01"}))
        .await;
    assert_eq!(s, 400);

    // Nothing changed.
    assert_eq!(c.balance().await, balance);
    assert!(stored().await.is_empty());
    let history = c.funds_ok(json!({"action": "withdrawals"})).await;
    assert_eq!(history["total"], 0, "{history}");
}

#[tokio::test]
async fn a_cancelled_qr_code_closes_the_withdrawal_and_returns_the_money() {
    let r = stack().await;
    let c = Client::new(&r);
    let (_, total) = buy_pay_settle(&c).await;
    c.funds_ok(json!({"action": "set_bank_account", "account": account()}))
        .await;
    let w = c
        .funds_ok(json!({"action": "withdraw", "amount_fen": total}))
        .await;
    let ticket = w["qrcode_ticket"].as_str().unwrap().to_owned();
    let id = w["withdrawal"]["withdraw_id"].as_str().unwrap().to_owned();
    assert_eq!(c.balance().await, (0, 0));
    c.control(
        "funds/qrcode",
        &json!({"qrcode_ticket": ticket, "status": 2}),
    )
    .await;
    // withdraw_notify (4) updates the record from WeChat's detail, without polling.
    eventually("the record to read CLOSE", || async {
        let (_, w) = get_withdrawal(r.app.store.as_ref(), &id)
            .await
            .unwrap()
            .unwrap();
        w.status == "CLOSE" && w.events.contains(&4)
    })
    .await;
    let s = c
        .funds_ok(json!({"action": "withdraw_status", "qrcode_ticket": ticket}))
        .await;
    assert_eq!(s["qrcode"]["status"], 2);
    assert!(s["withdrawal"]["reason"].is_string(), "{s}");
    assert_eq!(
        c.balance().await,
        (total, 0),
        "a closed withdrawal gives it back"
    );
}

/// WeChat closes a withdrawal whose QR code expired unscanned (sandbox
/// `/_control/funds/withdraw` CLOSE, which WeChat's record then says and `withdraw_notify` 4
/// reports): the amount is available again — once, however often the close is reported — its
/// QR code reads expired, and the next day the whole balance is withdrawn again and confirmed.
/// (The control changed the record but not the balance: the money stayed held for ever, and
/// a withdrawal of the whole balance was refused as over it.)
#[tokio::test]
async fn a_withdrawal_closed_by_wechat_gives_the_amount_back_once() {
    let r = stack().await;
    let c = Client::new(&r);
    let (_, total) = buy_pay_settle(&c).await;
    c.funds_ok(json!({"action": "set_bank_account", "account": account()}))
        .await;
    let w = c
        .funds_ok(json!({"action": "withdraw", "amount_fen": total}))
        .await;
    let ticket = w["qrcode_ticket"].as_str().unwrap().to_owned();
    let id = w["withdrawal"]["withdraw_id"].as_str().unwrap().to_owned();
    assert_eq!(c.balance().await, (0, 0));
    for _ in 0..2 {
        c.control(
            "funds/withdraw",
            &json!({"out_request_no": id, "status": "CLOSE", "reason": "二维码已过期"}),
        )
        .await;
    }
    eventually("the record to read CLOSE", || async {
        let (_, w) = get_withdrawal(r.app.store.as_ref(), &id)
            .await
            .unwrap()
            .unwrap();
        w.status == "CLOSE" && w.events.contains(&4)
    })
    .await;
    assert_eq!(c.balance().await, (total, 0), "given back, once");
    let s = c
        .funds_ok(json!({"action": "withdraw_status", "qrcode_ticket": ticket}))
        .await;
    assert_eq!(s["qrcode"]["status"], 3, "the QR code expired: {s}");
    assert_eq!(s["withdrawal"]["status"], "CLOSE", "{s}");

    // The next day (one withdrawal a day, at WeChat and here): all of it again.
    r.sandbox.clock().advance(24 * 3600 * 1000);
    r.app.clock.advance(24 * 3600 * 1000);
    let w = c
        .funds_ok(json!({"action": "withdraw", "amount_fen": total}))
        .await;
    let ticket = w["qrcode_ticket"].as_str().unwrap().to_owned();
    let id = w["withdrawal"]["withdraw_id"].as_str().unwrap().to_owned();
    assert_eq!(c.balance().await, (0, 0));
    for status in [4, 1] {
        c.control(
            "funds/qrcode",
            &json!({"qrcode_ticket": ticket, "status": status}),
        )
        .await;
    }
    eventually("the withdrawal to succeed", || async {
        let (_, w) = get_withdrawal(r.app.store.as_ref(), &id)
            .await
            .unwrap()
            .unwrap();
        w.status == "SUCCESS"
    })
    .await;
    assert_eq!(c.balance().await, (0, 0));
}

/// GIVEN a withdrawal whose QR code the admin never confirms WHEN WeChat's clock passes the
/// code's lifetime (10 minutes in the sandbox, UNVERIFIED) THEN WeChat closes it by itself:
/// the withdrawal asked for again — while our record still says it awaits the scan, the
/// `withdraw_notify` that closed it not applied here (WeChat's detail unreadable for it) —
/// is answered 410 `QRCODE_EXPIRED` saying what happened and what to do, not the dead QR code;
/// `withdraw_status` says the code expired (3, with what to do) and the withdrawal CLOSE; and
/// the whole amount is available again. The sandbox's codes used to stay scannable for ever,
/// and the repeated request handed back the dead code as `resumed`.
#[tokio::test]
async fn an_unconfirmed_qr_code_expires_and_the_withdrawal_says_so() {
    let r = stack().await;
    let c = Client::new(&r);
    let (_, total) = buy_pay_settle(&c).await;
    c.funds_ok(json!({"action": "set_bank_account", "account": account()}))
        .await;
    let w = c
        .funds_ok(json!({"action": "withdraw", "amount_fen": total}))
        .await;
    let ticket = w["qrcode_ticket"].as_str().unwrap().to_owned();
    let id = w["withdrawal"]["withdraw_id"].as_str().unwrap().to_owned();
    assert_eq!(c.balance().await, (0, 0));
    // The sandbox's own `withdraw_notify` (event 1) answered first: the fault below is for
    // the close's.
    eventually(
        "the withdrawal's first withdraw_notify answered",
        || async {
            r.sandbox
                .deliveries()
                .iter()
                .any(|d| d["kind"] == "push" && d["key"] == "withdraw_notify" && d["acked"] == true)
        },
    )
    .await;
    let stored = || async {
        get_withdrawal(r.app.store.as_ref(), &id)
            .await
            .unwrap()
            .unwrap()
            .1
    };

    // Both clocks move (pushes are taken only close to our time). Still good a minute
    // before its lifetime ends.
    r.app.clock.advance(9 * 60_000);
    c.control("clock", &json!({"advance_ms": 9 * 60_000})).await;
    let check = r.app.wx.funds_qrcode_check(&ticket).await.unwrap();
    assert_eq!(check.status, 0, "not expired yet");

    // It expires: WeChat closes the withdrawal and pushes withdraw_notify 4, which our
    // handler notes without a status (WeChat's detail unreadable for it).
    c.control(
        "faults",
        &json!({"path": "shop/funds/getwithdrawdetail", "mode": "errcode",
                "errcode": 9_710_001, "count": 1}),
    )
    .await;
    r.app.clock.advance(2 * 60_000);
    c.control("clock", &json!({"advance_ms": 2 * 60_000})).await;
    eventually("the close's withdraw_notify noted", || async {
        stored().await.events.contains(&4)
    })
    .await;
    assert_eq!(
        stored().await.status,
        "BEFORE_SCAN_QRCODE",
        "not applied here"
    );
    assert_eq!(
        c.balance().await,
        (total, 0),
        "the amount is available again"
    );

    // The same withdrawal asked for again: its QR code can no longer be confirmed.
    let (s, v) = c
        .funds(json!({"action": "withdraw", "amount_fen": total}))
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (410, Some("QRCODE_EXPIRED")),
        "{v}"
    );
    let message = v["message"].as_str().unwrap();
    for needle in [id.as_str(), "expired", "available again", "tomorrow"] {
        assert!(message.contains(needle), "{needle} not in {message}");
    }
    assert_eq!(stored().await.status, "CLOSE", "read again from WeChat");

    let s = c
        .funds_ok(json!({"action": "withdraw_status", "qrcode_ticket": ticket}))
        .await;
    assert_eq!(s["qrcode"]["status"], 3, "{s}");
    assert!(
        s["qrcode"]["status_text"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{s}"
    );
    assert_eq!(s["qrcode"]["confirmed"], false, "{s}");
    assert_eq!(s["withdrawal"]["status"], "CLOSE", "{s}");
    let got = r.app.wx.funds_qrcode_get(&ticket).await;
    assert_eq!(
        got.err().and_then(|e| e.errcode()),
        Some(60_220),
        "qrcode/get: ticket expired"
    );
    assert_eq!(c.balance().await, (total, 0));
}

/// The same withdrawal asked for again after its answer was lost on our side (the merchant's
/// tool timed out after WeChat took it and we recorded it), for the whole balance: WeChat now
/// holds the amount, so the balance no longer covers it — and the caller gets the pending
/// withdrawal's QR code back (`resumed`), not `INSUFFICIENT_BALANCE`. Only a request for part
/// of the balance used to be resumed; one for all of it was refused as over the balance.
#[tokio::test]
async fn a_repeated_withdrawal_of_the_whole_balance_gets_its_qr_code_again() {
    let r = stack().await;
    let c = Client::new(&r);
    let (_, total) = buy_pay_settle(&c).await;
    c.funds_ok(json!({"action": "set_bank_account", "account": account()}))
        .await;
    let w = c
        .funds_ok(json!({"action": "withdraw", "amount_fen": total}))
        .await;
    let ticket = w["qrcode_ticket"].as_str().unwrap().to_owned();
    let id = w["withdrawal"]["withdraw_id"].as_str().unwrap().to_owned();
    assert_eq!(c.balance().await, (0, 0));
    let again = c
        .funds_ok(json!({"action": "withdraw", "amount_fen": total}))
        .await;
    assert_eq!(again["resumed"], true, "{again}");
    assert_eq!(again["withdrawal"]["withdraw_id"], id.as_str());
    assert_eq!(again["qrcode_ticket"], ticket.as_str());
    assert!(again["qrcode_png_base64"].is_string(), "{again}");
    assert_eq!(c.calls("shop/funds/submitwithdraw"), 1, "submitted once");
    // Another amount repeats nothing: over the balance, as before.
    let (s, v) = c
        .funds(json!({"action": "withdraw", "amount_fen": total - 1}))
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (409, Some("INSUFFICIENT_BALANCE")),
        "{v}"
    );
}

/// `submitwithdraw`'s answer lost on its way to us (a timeout, a reset): WeChat made the
/// withdrawal and holds the amount, but its QR ticket — which WeChat gives in that answer
/// only, not in `getwithdrawdetail` — never arrived. GIVEN that, for the whole balance (the
/// repeat then finds the balance short) and for part of it (the repeat meets WeChat's one a
/// day), THEN the repeated request answers 409 `WITHDRAWAL_QRCODE_LOST` naming WeChat's
/// withdrawal and saying what to do (let it close unconfirmed, withdraw again tomorrow), the
/// withdrawal is recorded, and reading it (`withdraw_status`, `withdrawals`) says the same
/// (`qrcode_lost`, `next`) until it closes. These used to answer `INSUFFICIENT_BALANCE` and
/// `WITHDRAWAL_DAILY_LIMIT`, and the withdrawal read as an ordinary one with no QR code.
#[tokio::test]
async fn a_withdrawal_whose_submit_answer_was_lost_says_what_to_do() {
    for whole in [true, false] {
        let r = stack().await;
        let c = Client::new(&r);
        let (_, total) = buy_pay_settle(&c).await;
        c.funds_ok(json!({"action": "set_bank_account", "account": account()}))
            .await;
        let amount = if whole { total } else { 1000 };
        c.control(
            "faults",
            &json!({"path": "shop/funds/submitwithdraw", "mode": "lost", "count": 1}),
        )
        .await;
        let (s, v) = c
            .funds(json!({"action": "withdraw", "amount_fen": amount}))
            .await;
        assert_eq!(s, 503, "whole={whole}: the answer was lost: {v}");
        // WeChat made it all the same.
        let held = r.app.wx.funds_scan_withdraw(1, 10).await.unwrap();
        assert_eq!(held.out_request_nos.len(), 1);
        let id = held.out_request_nos[0].clone();
        assert_eq!(c.balance().await, (total - amount, 0));

        let (s, v) = c
            .funds(json!({"action": "withdraw", "amount_fen": amount}))
            .await;
        assert_eq!(s, 409, "whole={whole}: {v}");
        assert_eq!(v["code"], "WITHDRAWAL_QRCODE_LOST", "whole={whole}: {v}");
        let message = v["message"].as_str().unwrap();
        for needle in [id.as_str(), "tomorrow", "withdraw_status"] {
            assert!(message.contains(needle), "{needle} not in {message}");
        }
        assert_eq!(
            c.calls("shop/funds/submitwithdraw"),
            1 + usize::from(!whole)
        );
        let (_, stored) = get_withdrawal(r.app.store.as_ref(), &id)
            .await
            .unwrap()
            .expect("the withdrawal is recorded");
        assert_eq!(stored.amount.get(), amount);
        assert_eq!(stored.qrcode_ticket, None);

        let status = c
            .funds_ok(json!({"action": "withdraw_status", "withdraw_id": id}))
            .await;
        let w = &status["withdrawal"];
        assert_eq!(w["status"], "BEFORE_SCAN_QRCODE", "{status}");
        assert_eq!(w["qrcode_lost"], true, "{status}");
        assert!(w["next"].as_str().unwrap().contains("tomorrow"), "{status}");
        let history = c.funds_ok(json!({"action": "withdrawals"})).await;
        assert_eq!(history["withdrawals"][0]["qrcode_lost"], true, "{history}");

        // Once WeChat closes it, it reads as closed, nothing left to do.
        c.control(
            "funds/withdraw",
            &json!({"out_request_no": id, "status": "CLOSE"}),
        )
        .await;
        let status = c
            .funds_ok(json!({"action": "withdraw_status", "withdraw_id": id}))
            .await;
        assert_eq!(status["withdrawal"]["status"], "CLOSE", "{status}");
        assert!(status["withdrawal"]["qrcode_lost"].is_null(), "{status}");
    }
}

#[tokio::test]
async fn a_withdrawal_started_elsewhere_is_recorded_from_withdraw_notify() {
    let r = stack().await;
    let c = Client::new(&r);
    let (_, total) = buy_pay_settle(&c).await;
    c.funds_ok(json!({"action": "set_bank_account", "account": account()}))
        .await;
    // Started outside this back end (say, in the MP admin console): only the events tell us.
    let submitted = r
        .app
        .wx
        .funds_submit_withdraw(wxshop::domain::Fen::new(700).unwrap(), None, None)
        .await
        .unwrap();
    let id = submitted.out_request_no.clone();
    eventually("withdraw_notify to create the record", || async {
        get_withdrawal(r.app.store.as_ref(), &id)
            .await
            .unwrap()
            .is_some_and(|(_, w)| w.amount.get() == 700 && w.events.contains(&1))
    })
    .await;
    c.control(
        "funds/qrcode",
        &json!({"qrcode_ticket": submitted.qrcode_ticket, "status": 1}),
    )
    .await;
    eventually("the record to read SUCCESS", || async {
        let (_, w) = get_withdrawal(r.app.store.as_ref(), &id)
            .await
            .unwrap()
            .unwrap();
        w.status == "SUCCESS" && w.events.contains(&2) && w.events.contains(&3)
    })
    .await;
    assert_eq!(c.balance().await, (total - 700, 0));
    let history = c.funds_ok(json!({"action": "withdrawals"})).await;
    assert_eq!(history["withdrawals"][0]["withdraw_id"], id.as_str());
}

#[tokio::test]
async fn empty_account_and_unknown_actions() {
    let r = stack().await;
    let c = Client::new(&r);
    let history = c.funds_ok(json!({"action": "withdrawals"})).await;
    assert_eq!(history["withdrawals"], json!([]));
    let flows = c.funds_ok(json!({"action": "flows"})).await;
    assert_eq!(flows["flows"], json!([]));
    let (s, v) = c.funds(json!({"action": "nope"})).await;
    assert_eq!(s, 400, "{v}");
    // Admin only.
    let (s, _) = c
        .post("/admin/funds", None, &json!({"action": "balance"}))
        .await;
    assert_eq!(s, 401);
}

/// A forged `open_product_order_pay` push — in plaintext mode the signature covers the token,
/// timestamp and nonce, not the body, so any body can ride on a signature once seen — for an
/// order nobody paid: acknowledged, kept as evidence, and the order stays unpaid, because
/// WeChat's own record of the order (`shop/order/get`) does not say paid.
#[tokio::test]
async fn a_forged_order_pay_push_does_not_pay_the_order() {
    let r = stack().await;
    let c = Client::new(&r);
    let (token, _) = c.login("mallory").await;
    let order = c.order_tea(&token, 1).await;
    let no = order["out_trade_no"].as_str().unwrap().to_owned();
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let query = wxshop::push::PushQuery::signed("localpushtoken", &ts, "n1").to_query_string();
    let forged = json!({"ToUserName": "gh_x", "FromUserName": "oX", "CreateTime": ts.parse::<i64>().unwrap(),
        "MsgType": "event", "Event": "open_product_order_pay",
        "order_info": {"out_order_id": no, "transaction_id": "4200000000000000forged", "pay_time": ""}});
    let resp = c
        .http
        .post(format!("{}/callbacks/wechat?{query}", r.base_url))
        .body(forged.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    assert!(
        status == 503 || (status == 200 && text == "success"),
        "{status} {text}"
    );
    let (_, q) = c
        .post("/fn/queryOrder", Some(&token), &json!({"out_trade_no": no}))
        .await;
    assert_ne!(q["order"]["status"], "PAID", "{q}");
    let stored = wxshop::store::repo::get_order(
        r.app.store.as_ref(),
        &OutTradeNo::parse(no.clone()).unwrap(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(!stored.value.status.is_paid(), "{:?}", stored.value.status);
}

/// The user paid (WeChat collected) but the pay push never got through — every attempt met
/// `shop/order/get` failing, and WeChat gives up after three. When the order's time is up,
/// the sweep asks WeChat before closing it: the payment is recorded, not the order closed
/// and its stock released while WeChat holds the money (the sweep used to close it).
#[tokio::test]
async fn a_paid_order_whose_pay_push_was_lost_is_recorded_by_the_sweep() {
    let r = stack().await;
    let c = Client::new(&r);
    let (token, _) = c.login("lostpush").await;
    let order = c.order_tea(&token, 1).await;
    let no = order["out_trade_no"].as_str().unwrap().to_owned();
    c.pay_in_wechat_every_push_lost(&no).await;
    let out = OutTradeNo::parse(no.clone()).unwrap();
    let stored = wxshop::store::repo::get_order(r.app.store.as_ref(), &out)
        .await
        .unwrap()
        .unwrap();
    assert!(!stored.value.status.is_paid(), "{:?}", stored.value.status);
    // The order's time runs out; the schedule's sweep comes by.
    r.app.clock.advance(16 * 60_000);
    let token_admin = r.admin_token.clone();
    let (s, v) = c
        .post(
            "/admin/orderSync",
            Some(&token_admin),
            &json!({"action": "sweep"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let stored = wxshop::store::repo::get_order(r.app.store.as_ref(), &out)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.value.status,
        wxshop::domain::OrderStatus::Paid,
        "{v}"
    );
    assert!(stored.value.transaction_id.is_some());
}

/// The user closes an unpaid fund_type=1 order: it is closed at WeChat with `shop/order/close`
/// (so it can no longer be paid there), never with `shop/order/pay`, which WeChat refuses for
/// these orders (and whose refusal was taken as done, leaving the order payable at WeChat).
#[tokio::test]
async fn closing_a_fund_type_1_order_closes_it_at_wechat() {
    let r = stack().await;
    let c = Client::new(&r);
    let (token, _) = c.login("closer").await;
    let order = c.order_tea(&token, 1).await;
    let no = order["out_trade_no"].as_str().unwrap().to_owned();
    let (s, v) = c
        .post(
            "/fn/queryOrder",
            Some(&token),
            &json!({"out_trade_no": no, "action": "close"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["order"]["status"], "CLOSED");
    eventually("shop/order/close at WeChat", || async {
        r.sandbox
            .calls("shop/order/close")
            .iter()
            .any(|call| call["out_order_id"] == no.as_str())
    })
    .await;
    assert_eq!(c.calls("shop/order/pay"), 0, "no order/pay for fund_type=1");
    // WeChat no longer lets the user pay it.
    let (s, v) = c
        .post("/sandbox/_control/pay", None, &json!({"out_order_id": no}))
        .await;
    assert_ne!(s, 200, "a closed order cannot be paid at WeChat: {v}");
}

/// A refund of a secondary-merchant order: WeChat holds the money, so approving the user's
/// after-sale accepts it at WeChat (`ecaftersale/acceptrefund`), WeChat refunds from the
/// shop's funds and says so, and ours is REFUNDED with the order's refunded amount — WeChat
/// Pay (`secapi/pay/refund`, where our merchant account has no such payment) is never asked.
/// A second after-sale on the same order then goes the same way.
#[tokio::test]
async fn fund_type_1_refund_is_made_by_wechat_on_acceptance() {
    let r = stack().await;
    let c = Client::new(&r);
    let (no, total) = buy_pay_settle(&c).await;
    let (token, _) = c.login("alice").await;
    let admin = r.admin_token.clone();
    let out = OutTradeNo::parse(no.clone()).unwrap();

    for (round, amount) in [(1, 1990), (2, total - 1990)] {
        let (s, applied) = c
            .post(
                "/fn/aftersaleSync",
                Some(&token),
                &json!({"action": "apply", "out_trade_no": no, "amount": amount, "reason": "dented",
                        "product_id": "tea", "sku_id": "tea-250g", "quantity": 1}),
            )
            .await;
        assert_eq!(s, 200, "apply {round}: {applied}");
        let id = applied["aftersale"]["aftersale_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let (s, approved) = c
            .post(
                "/admin/aftersaleSync",
                Some(&admin),
                &json!({"action": "approve", "aftersale_id": id}),
            )
            .await;
        assert_eq!(s, 200, "approve {round}: {approved}");
        assert_eq!(approved["aftersale"]["status"], "REFUNDING", "{approved}");
        assert!(
            approved["aftersale"]["out_refund_no"].is_null(),
            "WeChat refunds under its own number: {approved}"
        );
        c.until_refunded(&token, &no, &id).await;
    }
    let (_, q) = c
        .post("/fn/queryOrder", Some(&token), &json!({"out_trade_no": no}))
        .await;
    assert_eq!(q["order"]["refunded_fee"], total, "{q}");
    assert_eq!(q["order"]["status"], "REFUNDED", "{q}");
    let stored = wxshop::store::repo::get_order(r.app.store.as_ref(), &out)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.value.refunded.get(), total);
    assert_eq!(c.calls("secapi/pay/refund"), 0, "WeChat Pay is never asked");
    assert!(c.calls("shop/ecaftersale/acceptrefund") >= 2);
    assert_eq!(c.balance().await, (0, 0), "refunded from the shop's funds");
    // Nothing left for a person: no task failed.
    let (dead, _) = wxshop::outbox::list_dead(r.app.store.as_ref(), 100, None)
        .await
        .unwrap();
    assert!(dead.is_empty(), "{dead:?}");
}

/// A `withdraw_notify` whose withdrawal WeChat's own detail cannot confirm changes no status:
/// a plaintext-mode push body is not signed, and the event numbers are unverified. WeChat out
/// of reach: 503, so it pushes again; WeChat without such a detail: noted, status kept. (The
/// event alone used to mark the withdrawal SUCCESS.)
#[tokio::test]
async fn a_withdraw_notify_wechat_cannot_confirm_changes_no_status() {
    let r = stack().await;
    let c = Client::new(&r);
    buy_pay_settle(&c).await;
    c.funds_ok(json!({"action": "set_bank_account", "account": account()}))
        .await;
    let w = c
        .funds_ok(json!({"action": "withdraw", "amount_fen": 1000, "remark": "payout"}))
        .await;
    let id = w["withdrawal"]["withdraw_id"].as_str().unwrap().to_owned();
    let status = || async {
        get_withdrawal(r.app.store.as_ref(), &id)
            .await
            .unwrap()
            .unwrap()
            .1
            .status
    };
    let before = status().await;
    assert_eq!(before, "BEFORE_SCAN_QRCODE");
    // The sandbox pushes its own `withdraw_notify` (event 1) for the new withdrawal, in the
    // background, and our answer to it asks `getwithdrawdetail`. Armed before that push is
    // answered, the one-shot fault below was sometimes spent on it, and our push then got a
    // real answer (a flake under load): wait for it first.
    eventually(
        "the sandbox's own withdraw_notify to be answered",
        || async {
            r.sandbox
                .deliveries()
                .iter()
                .any(|d| d["kind"] == "push" && d["key"] == "withdraw_notify" && d["acked"] == true)
        },
    )
    .await;
    let push = |nonce: &'static str| {
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            .to_string();
        let query = wxshop::push::PushQuery::signed("localpushtoken", &ts, nonce).to_query_string();
        let body = json!({"ToUserName": "gh_x", "FromUserName": "oX",
            "CreateTime": ts.parse::<i64>().unwrap(), "MsgType": "event", "Event": "withdraw_notify",
            "withdraw_info": {"out_request_no": id, "event": 3}});
        c.http
            .post(format!("{}/callbacks/wechat?{query}", r.base_url))
            .body(body.to_string())
            .send()
    };
    for (errcode, nonce, answer) in [(-1, "wn1", 503), (9_710_001, "wn2", 200)] {
        c.control(
            "faults",
            &json!({"path": "shop/funds/getwithdrawdetail", "mode": "errcode",
                    "errcode": errcode, "count": 1}),
        )
        .await;
        let resp = push(nonce).await.unwrap();
        assert_eq!(resp.status().as_u16(), answer, "errcode {errcode}");
        assert_eq!(status().await, before, "errcode {errcode}");
    }
}

/// A refund taken from money already withdrawn leaves the account below zero. The balance
/// shows it, the flows show it with its sign, and a withdrawal is refused as such (both used
/// to answer 502: a negative amount was unreadable, and a flow's balance lost its sign).
#[tokio::test]
async fn a_balance_below_zero_is_shown_and_withdraws_nothing() {
    let r = stack().await;
    let c = Client::new(&r);
    let (no, total) = buy_pay_settle(&c).await;
    c.funds_ok(json!({"action": "set_bank_account", "account": account()}))
        .await;
    c.funds_ok(json!({"action": "withdraw", "amount_fen": total, "remark": "all"}))
        .await;
    assert_eq!(c.balance().await, (0, 0));

    let (token, _) = c.login("alice").await;
    let (s, applied) = c
        .post(
            "/fn/aftersaleSync",
            Some(&token),
            &json!({"action": "apply", "out_trade_no": no, "amount": 1990, "reason": "dented"}),
        )
        .await;
    assert_eq!(s, 200, "{applied}");
    let id = applied["aftersale"]["aftersale_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let admin = r.admin_token.clone();
    let (s, approved) = c
        .post(
            "/admin/aftersaleSync",
            Some(&admin),
            &json!({"action": "approve", "aftersale_id": id}),
        )
        .await;
    assert_eq!(s, 200, "{approved}");
    eventually("the refund to leave the account below zero", || async {
        c.funds(json!({"action": "balance"})).await.1["available_fen"] == -1990
    })
    .await;
    assert_eq!(c.balance().await, (-1990, 0));

    let flows = c.funds_ok(json!({"action": "flows"})).await;
    assert!(
        flows["flows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["balance_fen"] == -1990),
        "a flow that left the balance at -19.90 yuan: {flows}"
    );
    let (s, v) = c
        .funds(json!({"action": "withdraw", "amount_fen": 1, "remark": "more"}))
        .await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["code"], "INSUFFICIENT_BALANCE", "{v}");
}

/// WeChat accepts a secondary-merchant refund but cannot pay it (its after-sale at 16,
/// `aftersale_wait_merchant_offline_refund`): ours is held as REFUND_ABNORMAL for a person,
/// not left REFUNDING with a dead-lettered task; the amount stays held on the order; the
/// merchant refunds the user another way and records it with `mark_refunded`. A person is
/// paged once (`MoneyNeedsAPerson`) and told what to do (a `refund_abnormal` event), however
/// often WeChat's state is read again.
#[tokio::test]
async fn a_refund_wechat_could_not_pay_is_held_for_a_person() {
    let (metrics, captured) = wxshop::metrics::Metrics::capture("test");
    let r = support::stack_with_metrics(&[("WX_FUND_TYPE", "1")], metrics).await;
    let c = Client::new(&r);
    let (no, total) = buy_pay_settle(&c).await;
    let (token, _) = c.login("alice").await;
    let admin = r.admin_token.clone();
    c.control("refund_outcome", &json!({"status": "PLATFORM_REFUND_FAIL"}))
        .await;
    let (s, applied) = c
        .post(
            "/fn/aftersaleSync",
            Some(&token),
            &json!({"action": "apply", "out_trade_no": no, "amount": total, "reason": "broken"}),
        )
        .await;
    assert_eq!(s, 200, "{applied}");
    let id = applied["aftersale"]["aftersale_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, approved) = c
        .post(
            "/admin/aftersaleSync",
            Some(&admin),
            &json!({"action": "approve", "aftersale_id": id}),
        )
        .await;
    assert_eq!(s, 200, "{approved}");
    let status = || async {
        let (_, v) = c
            .post(
                "/fn/aftersaleSync",
                Some(&token),
                &json!({"action": "list", "out_trade_no": no}),
            )
            .await;
        v["aftersales"][0]["status"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    eventually("the after-sale to be held as REFUND_ABNORMAL", || async {
        status().await == "REFUND_ABNORMAL"
    })
    .await;
    let (dead, _) = wxshop::outbox::list_dead(r.app.store.as_ref(), 100, None)
        .await
        .unwrap();
    assert!(dead.is_empty(), "held, not dead-lettered: {dead:?}");
    // The event and the page follow the hold, in a write of their own: the after-sale can
    // read REFUND_ABNORMAL a moment before they are there (reading the event at once raced
    // the task on a loaded host). Waited for, so that the sweep below reads WeChat again
    // after them.
    support::eventually(
        "the refund_abnormal event kept and a person paged",
        Duration::from_secs(20),
        || async {
            let kept = wxshop::store::repo::get_event(r.app.store.as_ref(), "refund_abnormal", &id)
                .await
                .unwrap();
            kept.is_some() && captured.total(wxshop::metrics::MONEY_NEEDS_A_PERSON) >= 1
        },
    )
    .await;
    // The schedule reads WeChat's after-sale again: still one page, one event.
    let (s, v) = c
        .post(
            "/admin/orderSync",
            Some(&admin),
            &json!({"action": "sweep_refunds"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let kept = wxshop::store::repo::get_event(r.app.store.as_ref(), "refund_abnormal", &id)
        .await
        .unwrap()
        .expect("a refund_abnormal event for a person");
    assert!(
        kept.value.body.contains("mark_refunded"),
        "{}",
        kept.value.body
    );
    let paged = captured.total(wxshop::metrics::MONEY_NEEDS_A_PERSON);
    assert_eq!(paged, 1, "paged once");
    // The money is still the shop's; a second application finds nothing left to claim: both
    // teas are under the held after-sale (it was 409 NOT_REFUNDABLE, the amount held, before
    // an only item's units were counted).
    assert_eq!(c.balance().await, (total, 0));
    let (s, v) = c
        .post(
            "/fn/aftersaleSync",
            Some(&token),
            &json!({"action": "apply", "out_trade_no": no, "amount": 1, "reason": "again",
                    "idempotency_key": "again"}),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (400, Some("LINE_ALREADY_CLAIMED")),
        "the held teas are not claimable again: {v}"
    );
    // Refunded by hand, recorded.
    let (s, v) = c
        .post(
            "/admin/aftersaleSync",
            Some(&admin),
            &json!({"action": "mark_refunded", "aftersale_id": id}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(status().await, "REFUNDED");
    let (_, q) = c
        .post("/fn/queryOrder", Some(&token), &json!({"out_trade_no": no}))
        .await;
    assert_eq!(q["order"]["refunded_fee"], total, "{q}");
}

/// The settlement account is built from WeChat's lookups, as the merchant would: the card
/// number names the bank (a small one: 其他银行, `need_branch`), the province and city give
/// `bank_address_code`, the bank and city give the branch; `set_bank_account` takes exactly
/// what the lookups answered and `bank_account` shows it.
#[tokio::test]
async fn a_bank_account_is_set_from_the_lookups() {
    let r = stack().await;
    let c = Client::new(&r);
    let card = "6223220012345678";

    let found = c
        .funds_ok(json!({"action": "bank_by_number", "account_number": card}))
        .await;
    let bank = found["banks"][0].clone();
    assert_eq!(found["total"], 1, "{found}");
    assert_eq!(bank["account_bank"], "其他银行", "{found}");
    assert_eq!(bank["need_branch"], true, "{found}");
    let bank_code = bank["bank_code"].as_str().unwrap().to_owned();
    // The same bank by name.
    let by_name = c
        .funds_ok(json!({"action": "banks", "key_words": "农村商业"}))
        .await;
    assert!(
        by_name["banks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["bank_code"] == bank_code.as_str()),
        "{by_name}"
    );

    let provinces = c.funds_ok(json!({"action": "provinces"})).await;
    let guangdong = provinces["provinces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["province_name"] == "广东省")
        .unwrap_or_else(|| panic!("{provinces}"))
        .clone();
    let cities = c
        .funds_ok(json!({"action": "cities", "province_code": guangdong["province_code"]}))
        .await;
    let shenzhen = cities["cities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["city_name"] == "深圳市")
        .unwrap_or_else(|| panic!("{cities}"))
        .clone();

    let branches = c
        .funds_ok(json!({"action": "branches", "bank_code": bank_code,
                         "city_code": shenzhen["city_code"]}))
        .await;
    assert_eq!(branches["account_bank"], "其他银行", "{branches}");
    let branch = branches["branches"][0].clone();
    assert!(branches["total"].as_i64().unwrap() >= 1, "{branches}");
    // Paging: one at a time.
    let first = c
        .funds_ok(json!({"action": "branches", "bank_code": bank_code,
                         "city_code": shenzhen["city_code"], "offset": 0, "limit": 1}))
        .await;
    assert_eq!(first["branches"].as_array().unwrap().len(), 1, "{first}");

    let account = json!({
        "bank_account_type": "ACCOUNT_TYPE_BUSINESS",
        "account_bank": bank["account_bank"],
        "bank_address_code": shenzhen["bank_address_code"],
        "bank_branch_id": branch["branch_id"],
        "bank_name": branch["branch_name"],
        "account_number": card,
    });
    c.funds_ok(json!({"action": "set_bank_account", "account": account}))
        .await;
    let shown = c.funds_ok(json!({"action": "bank_account"})).await;
    let a = &shown["account"];
    assert_eq!(a["account_bank"], "其他银行", "{shown}");
    assert_eq!(
        a["bank_address_code"], shenzhen["bank_address_code"],
        "{shown}"
    );
    assert_eq!(a["bank_branch_id"], branch["branch_id"], "{shown}");
    assert_eq!(a["bank_name"], branch["branch_name"], "{shown}");
    assert_eq!(a["account_number_masked"], "****5678", "{shown}");
    assert!(shown["verify_fail_reason"].is_null(), "{shown}");

    // A branch of another city is refused by WeChat (the sandbox checks it as WeChat would).
    let mut elsewhere = account.clone();
    elsewhere["bank_address_code"] = json!("110000");
    let (s, v) = c
        .funds(json!({"action": "set_bank_account", "account": elsewhere}))
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["code"], "BANK_ACCOUNT_REFUSED", "{v}");
}

#[tokio::test]
async fn bad_bank_lookups_are_refused_before_wechat_is_asked() {
    let r = stack().await;
    let c = Client::new(&r);
    let asked = || {
        [
            "shop/funds/getbanklist",
            "shop/funds/getbankbynum",
            "shop/funds/getcity",
            "shop/funds/getsubbranch",
        ]
        .iter()
        .map(|p| c.calls(p))
        .sum::<usize>()
    };
    for (body, code) in [
        (json!({"action": "bank_by_number"}), "BAD_ACCOUNT_NUMBER"),
        (
            json!({"action": "bank_by_number", "account_number": "6223 2200 1234"}),
            "BAD_ACCOUNT_NUMBER",
        ),
        (
            json!({"action": "bank_by_number", "account_number": 6223220012345678_u64}),
            "BAD_ACCOUNT_NUMBER",
        ),
        (json!({"action": "cities"}), "BAD_PROVINCE_CODE"),
        (
            json!({"action": "cities", "province_code": "广东"}),
            "BAD_PROVINCE_CODE",
        ),
        (
            json!({"action": "cities", "province_code": -44}),
            "BAD_PROVINCE_CODE",
        ),
        (
            json!({"action": "branches", "city_code": 584}),
            "BAD_BANK_CODE",
        ),
        (
            json!({"action": "branches", "bank_code": "1099"}),
            "BAD_CITY_CODE",
        ),
        (
            json!({"action": "branches", "bank_code": "10 99", "city_code": 584}),
            "BAD_BANK_CODE",
        ),
        (
            json!({"action": "branches", "bank_code": "1099", "city_code": 584, "limit": 0}),
            "BAD_PAGE",
        ),
        (json!({"action": "banks", "limit": 1000}), "BAD_PAGE"),
        (json!({"action": "banks", "offset": -1}), "BAD_PAGE"),
        (json!({"action": "banks", "bank_type": 3}), "BAD_BANK_TYPE"),
    ] {
        let (s, v) = c.funds(body.clone()).await;
        assert_eq!(s, 400, "{body}: {v}");
        assert_eq!(v["code"], code, "{body}: {v}");
        assert!(!v["message"].as_str().unwrap().is_empty());
    }
    assert_eq!(asked(), 0, "WeChat was asked about bad input");

    // A card no bank issues: 404 pointing at the search by name.
    let (s, v) = c
        .funds(json!({"action": "bank_by_number", "account_number": "9999990000000000"}))
        .await;
    assert_eq!(s, 404, "{v}");
    assert_eq!(v["code"], "BANK_NOT_FOUND");
    assert!(v["message"].as_str().unwrap().contains("banks"), "{v}");
    // A province without cities, a bank without branches there: empty lists.
    let none = c
        .funds_ok(json!({"action": "cities", "province_code": 99}))
        .await;
    assert_eq!(none["cities"], json!([]), "{none}");
    assert_eq!(none["total"], 0);
}

/// A withdrawal's end, once reached, stays. SUCCESS, FAIL and CLOSE shared one rank, so a
/// later report of another end — WeChat's detail read by `withdraw_status`, or the detail a
/// `withdraw_notify` push makes us read — turned a SUCCESS into a FAIL, or a FAIL into a
/// SUCCESS. Now the first end is kept and the contradicting report is kept as a
/// `withdrawal_conflict` event for a person; the bank returning a transfer that had succeeded
/// (SUCCESS → REFUND) still moves it.
#[tokio::test]
async fn a_withdrawals_end_is_not_undone_by_a_later_report() {
    let r = stack().await;
    let c = Client::new(&r);
    buy_pay_settle(&c).await;
    c.funds_ok(json!({"action": "set_bank_account", "account": account()}))
        .await;
    let stored = |id: String| {
        let r = &r;
        async move {
            get_withdrawal(r.app.store.as_ref(), &id)
                .await
                .unwrap()
                .unwrap()
                .1
        }
    };
    let status_now = |id: String| {
        let c = &c;
        async move {
            c.funds_ok(json!({"action": "withdraw_status", "withdraw_id": id}))
                .await["withdrawal"]["status"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let conflict = |id: &str, reported: &str| {
        let key = format!("{id}/{reported}");
        let r = &r;
        async move {
            wxshop::store::repo::get_event(r.app.store.as_ref(), "withdrawal_conflict", &key)
                .await
                .unwrap()
                .is_some()
        }
    };

    // SUCCESS first; then WeChat reports FAIL (detail and withdraw_notify 4).
    let w = c
        .funds_ok(json!({"action": "withdraw", "amount_fen": 1000}))
        .await;
    let ticket = w["qrcode_ticket"].as_str().unwrap().to_owned();
    let id = w["withdrawal"]["withdraw_id"].as_str().unwrap().to_owned();
    for status in [4, 1] {
        c.control(
            "funds/qrcode",
            &json!({"qrcode_ticket": ticket, "status": status}),
        )
        .await;
    }
    eventually("the withdrawal to succeed", || async {
        let w = stored(id.clone()).await;
        w.status == "SUCCESS" && w.events.contains(&3)
    })
    .await;
    c.control(
        "funds/withdraw",
        &json!({"out_request_no": id, "status": "FAIL", "reason": "银行卡异常"}),
    )
    .await;
    eventually("the FAIL push to be taken", || async {
        stored(id.clone()).await.events.contains(&4)
    })
    .await;
    assert_eq!(stored(id.clone()).await.status, "SUCCESS");
    assert_eq!(status_now(id.clone()).await, "SUCCESS");
    assert_eq!(
        stored(id.clone()).await.reason,
        None,
        "FAIL's reason not taken"
    );
    assert!(conflict(&id, "FAIL").await, "the contradiction is kept");
    // The bank returns the transfer: that end follows SUCCESS.
    c.control(
        "funds/withdraw",
        &json!({"out_request_no": id, "status": "REFUND"}),
    )
    .await;
    assert_eq!(status_now(id.clone()).await, "REFUND");

    // FAIL first (the next day, at WeChat and here: one withdrawal a day); then WeChat
    // reports SUCCESS.
    r.sandbox.clock().advance(24 * 3600 * 1000);
    r.app.clock.advance(24 * 3600 * 1000);
    let w = c
        .funds_ok(json!({"action": "withdraw", "amount_fen": 700}))
        .await;
    let id = w["withdrawal"]["withdraw_id"].as_str().unwrap().to_owned();
    c.control(
        "funds/withdraw",
        &json!({"out_request_no": id, "status": "FAIL", "reason": "银行卡异常"}),
    )
    .await;
    eventually("the withdrawal to fail", || async {
        stored(id.clone()).await.status == "FAIL"
    })
    .await;
    c.control(
        "funds/withdraw",
        &json!({"out_request_no": id, "status": "SUCCESS"}),
    )
    .await;
    eventually("the SUCCESS push to be taken", || async {
        stored(id.clone()).await.events.contains(&3)
    })
    .await;
    assert_eq!(stored(id.clone()).await.status, "FAIL");
    assert_eq!(status_now(id.clone()).await, "FAIL");
    assert!(conflict(&id, "SUCCESS").await, "the contradiction is kept");
}

/// WeChat's after-sale `wx_id` as WeChat has it now.
async fn wx_aftersale(r: &Running, wx_id: u64) -> wxshop::shop::aftersale::EcAfterSaleOrder {
    r.app
        .wx
        .ecaftersale_get(&wxshop::shop::types::AfterSaleKey::Id(wx_id))
        .await
        .unwrap()
}

/// Ours `id` as stored, once WeChat's id is stored with it: (ours, WeChat's id).
async fn added_at_wechat(r: &Running, id: &str) -> (wxshop::domain::AfterSale, u64) {
    let id = wxshop::domain::AfterSaleId::parse(id.to_owned()).unwrap();
    // Up to 20 s (was 300 polls of the store, ~6 s: short for a loaded host).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        let stored = wxshop::store::repo::get_aftersale(r.app.store.as_ref(), &id)
            .await
            .unwrap()
            .map(|a| a.value);
        if let Some(a) = stored {
            if let Some(wx) = a.wx_aftersale_id {
                return (a, wx);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for after-sale {id} to be added at WeChat");
}

impl Client<'_> {
    async fn admin_aftersale(&self, action: &str, id: &str) -> Value {
        let (s, v) = self
            .admin(
                "/admin/aftersaleSync",
                &json!({"action": action, "aftersale_id": id}),
            )
            .await;
        assert_eq!(s, 200, "{action}: {v}");
        v
    }
    async fn aftersale(&self, no: &str, id: &str) -> Value {
        self.admin_aftersales(no)
            .await
            .into_iter()
            .find(|a| a["aftersale_id"] == id)
            .unwrap_or(Value::Null)
    }
    async fn order_status(&self, no: &str) -> Value {
        let out = OutTradeNo::parse(no.to_owned()).unwrap();
        let o = wxshop::store::repo::get_order(self.r.app.store.as_ref(), &out)
            .await
            .unwrap()
            .unwrap()
            .value;
        json!({"status": o.status, "refunded": o.refunded.get()})
    }
    /// The merchant's `aftersale_wechat` events.
    async fn aftersale_events(&self) -> Vec<Value> {
        let (s, v) = self
            .admin(
                "/admin/orderSync",
                &json!({"action": "events", "source": "aftersale_wechat"}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v["events"].as_array().cloned().unwrap_or_default()
    }
}

/// WeChat refunds a secondary-merchant after-sale on its own — the platform rules for the user
/// after the merchant rejected it, or refunds one whose request never reached us (its push
/// lost); the sandbox's `platform_refund` moves it to 13 and pushes `aftersale_refund_success`.
/// The money left, so it is recorded: ours REFUNDED from REJECTED, the unknown one imported
/// REFUNDED, the order's refunded amount grown by WeChat's amount (the order REFUNDED once all
/// of it went back, so it no longer ships), and the merchant told. A refund beyond what the
/// order had left is not recorded but told. These used to be logged only: the order kept
/// its refunded amount at 0 and stayed shippable.
#[tokio::test]
async fn a_refund_wechat_made_on_its_own_is_recorded() {
    let r = stack().await;
    let c = Client::new(&r);
    let (no, total) = buy_pay_settle(&c).await;
    let (token, _) = c.login("alice").await;

    // Rejected here; the platform rules for the user.
    let rejected = c
        .apply(&token, &no, json!({"amount": 1990, "reason": "dented"}))
        .await;
    let (_, wx_rejected) = added_at_wechat(&r, &rejected).await;
    c.admin_aftersale("reject", &rejected).await;
    eventually("the rejection mirrored", || async {
        wx_aftersale(&r, wx_rejected).await.status == 4
    })
    .await;
    c.control(
        "aftersale",
        &json!({"action": "platform_refund", "aftersale_id": wx_rejected}),
    )
    .await;
    eventually("the rejected after-sale REFUNDED", || async {
        c.aftersale(&no, &rejected).await["status"] == "REFUNDED"
    })
    .await;
    assert_eq!(
        c.order_status(&no).await,
        json!({"status": "PAID", "refunded": 1990})
    );

    // A request whose push never reached us, refunded by WeChat: imported as REFUNDED.
    let opened = c
        .control(
            "aftersale",
            &json!({"action": "apply", "out_order_id": no, "orderamt": total - 1990, "push": false}),
        )
        .await;
    let wx_unknown = opened["aftersale_id"].as_u64().unwrap();
    assert_eq!(c.admin_aftersales(&no).await.len(), 1, "its push was lost");
    c.control(
        "aftersale",
        &json!({"action": "platform_refund", "aftersale_id": wx_unknown}),
    )
    .await;
    let imported = format!("WXAS{wx_unknown}");
    eventually("the unknown after-sale imported REFUNDED", || async {
        let a = c.aftersale(&no, &imported).await;
        a["status"] == "REFUNDED" && a["amount"] == total - 1990
    })
    .await;
    assert_eq!(
        c.order_status(&no).await,
        json!({"status": "REFUNDED", "refunded": total})
    );
    // The merchant's notice is kept just after the refund's own write, by whichever of the
    // after-sale push and the order's full-refund push (`open_product_order_refund`, which
    // reads the order's after-sales back) recorded it: wait for it as for the status.
    for wx in [wx_rejected, wx_unknown] {
        eventually("the merchant told of WeChat's refund", || async {
            c.aftersale_events()
                .await
                .iter()
                .any(|e| e["key"] == format!("refunded/{wx}"))
        })
        .await;
    }

    // Beyond what was paid: a second order, refunded in full here, then WeChat also refunds
    // the request the merchant had rejected. Not recorded (the books would exceed the
    // payment); told.
    let (no2, total2) = buy_pay_settle(&c).await;
    let first = c
        .apply(
            &token,
            &no2,
            json!({"amount": total2, "reason": "all of it"}),
        )
        .await;
    let (_, wx_first) = added_at_wechat(&r, &first).await;
    c.admin_aftersale("reject", &first).await;
    eventually("the rejection mirrored", || async {
        wx_aftersale(&r, wx_first).await.status == 4
    })
    .await;
    let second = c
        .apply(
            &token,
            &no2,
            json!({"amount": total2, "reason": "all of it, again"}),
        )
        .await;
    c.admin_aftersale("approve", &second).await;
    eventually("the second REFUNDED", || async {
        c.aftersale(&no2, &second).await["status"] == "REFUNDED"
    })
    .await;
    c.control(
        "aftersale",
        &json!({"action": "platform_refund", "aftersale_id": wx_first}),
    )
    .await;
    eventually("the excess told", || async {
        c.aftersale_events()
            .await
            .iter()
            .any(|e| e["key"] == format!("exceeds/{wx_first}"))
    })
    .await;
    assert_eq!(c.aftersale(&no2, &first).await["status"], "REJECTED");
    assert_eq!(
        c.order_status(&no2).await,
        json!({"status": "REFUNDED", "refunded": total2})
    );
}

/// WeChat refunds two secondary-merchant after-sales on its own — one the merchant never
/// decided (ours REQUESTED: the merchant let the deadline pass), one the merchant rejected
/// (the platform ruled for the user) — and both `aftersale_refund_success` pushes are lost.
/// Within the grace period the schedule leaves them to the pushes; after it, the schedule
/// reads WeChat's after-sales back and records both refunds as the pushes would have: ours
/// REFUNDED, the order's refunded amount all of it (REFUNDED, so it no longer ships), the
/// merchant told; a later run has nothing left to ask about. Nothing read those back: ours
/// stayed REQUESTED and REJECTED, the order's refunded amount 0 and the order shippable.
#[tokio::test]
async fn a_refund_wechat_made_whose_push_was_lost_is_recorded_by_the_schedule() {
    let r = stack().await;
    let c = Client::new(&r);
    let (no, total) = buy_pay_settle(&c).await;
    let (token, _) = c.login("alice").await;
    let undecided = c
        .apply(
            &token,
            &no,
            json!({"amount": 1990, "reason": "never arrived",
                   "product_id": "tea", "sku_id": "tea-250g", "quantity": 1}),
        )
        .await;
    let (_, wx_undecided) = added_at_wechat(&r, &undecided).await;
    let rejected = c
        .apply(
            &token,
            &no,
            json!({"amount": total - 1990, "reason": "dented"}),
        )
        .await;
    let (_, wx_rejected) = added_at_wechat(&r, &rejected).await;
    c.admin_aftersale("reject", &rejected).await;
    eventually("the rejection mirrored", || async {
        wx_aftersale(&r, wx_rejected).await.status == 4
    })
    .await;
    for wx in [wx_undecided, wx_rejected] {
        c.control(
            "aftersale",
            &json!({"action": "platform_refund", "aftersale_id": wx, "push": false}),
        )
        .await;
    }
    let schedule = || support::run_schedule(&r);
    let early = schedule().await;
    assert_eq!(c.aftersale(&no, &undecided).await["status"], "REQUESTED");

    r.app.clock.advance(11 * 60_000);
    let report = schedule().await;
    assert_eq!(
        c.order_status(&no).await,
        json!({"status": "REFUNDED", "refunded": total}),
        "{report}"
    );
    assert_eq!(c.aftersale(&no, &undecided).await["status"], "REFUNDED");
    assert_eq!(c.aftersale(&no, &rejected).await["status"], "REFUNDED");
    assert_eq!(
        report["wechat_refunds"],
        json!({"checked": 2, "asked": 2, "recorded": 2, "cancelled": 0, "adopted": 0, "returned": 0, "failed": 0,
            "closed": 0, "held": 0, "not_at_wechat": 0}),
        "{report}"
    );
    assert_eq!(
        early["wechat_refunds"]["asked"], 0,
        "within the grace: {early}"
    );
    let events = c.aftersale_events().await;
    for wx in [wx_undecided, wx_rejected] {
        assert!(
            events.iter().any(|e| e["key"] == format!("refunded/{wx}")),
            "the merchant is told of {wx}: {events:?}"
        );
    }
    let report = schedule().await;
    assert_eq!(report["wechat_refunds"]["recorded"], 0, "{report}");
    assert_eq!(
        c.order_status(&no).await,
        json!({"status": "REFUNDED", "refunded": total})
    );
}

/// A refund the merchant approved of a secondary-merchant order, which WeChat is slow to pay
/// (its after-sale at 15, the platform paying: sandbox `refund_outcome` `PLATFORM_REFUNDING`,
/// as a refund to a bank card takes days). The after-sale's sync task reads it back, WeChat
/// still refunding, until its retries run out: dead-lettered. WeChat then finishes the refund
/// and both its pushes (`aftersale_refund_success`, `open_product_order_refund`) are lost.
/// Within an hour of the approval the schedule leaves the after-sale to its task; after that
/// its `wechat_refunds` phase reads it back and records the refund: REFUNDED, the order's
/// refunded amount all of it. Run again, then the late pushes, record nothing more (nothing
/// beyond the order's amount kept for the merchant, the order's refunded amount unchanged).
/// Nothing read it back once the task was dead: ours stayed REFUNDING, the order's refunded
/// amount 0 and the order shippable, with only the dead letter to tell.
#[tokio::test]
async fn an_approved_refund_wechat_paid_after_its_sync_gave_up_is_recorded_by_the_schedule() {
    let r = stack().await;
    let c = Client::new(&r);
    let (no, total) = buy_pay_settle(&c).await;
    let (token, _) = c.login("alice").await;
    c.control("refund_outcome", &json!({"status": "PLATFORM_REFUNDING"}))
        .await;
    let id = c
        .apply(
            &token,
            &no,
            json!({"amount": total, "reason": "never arrived"}),
        )
        .await;
    let (_, wx) = added_at_wechat(&r, &id).await;
    c.admin_aftersale("approve", &id).await;
    eventually("WeChat paying the refund", || async {
        wx_aftersale(&r, wx).await.status == 15
    })
    .await;
    let schedule = || support::run_schedule(&r);
    let asked_about = || {
        r.sandbox
            .calls("shop/ecaftersale/get")
            .into_iter()
            .filter(|call| call["aftersale_id"] == wx)
            .count()
    };
    // Past the grace of pushes, within the task's life: left to the task.
    r.app.clock.advance(11 * 60_000);
    let early = schedule().await;
    assert_eq!(early["wechat_refunds"]["asked"], 0, "{early}");

    // WeChat still refunding at every try: the task's retries run out.
    let sync_dead = || async {
        let (dead, _) = wxshop::outbox::list_dead(r.app.store.as_ref(), 100, None)
            .await
            .unwrap();
        dead.iter()
            .any(|d| matches!(d.task, wxshop::outbox::Task::AfterSaleSync { .. }))
    };
    for _ in 0..40 {
        if sync_dead().await {
            break;
        }
        r.app.clock.advance(16 * 60_000);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(sync_dead().await, "the sync task dead-lettered");
    c.control(
        "aftersale",
        &json!({"action": "platform_refund", "aftersale_id": wx, "push": false}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(c.aftersale(&no, &id).await["status"], "REFUNDING");
    assert_eq!(
        c.order_status(&no).await,
        json!({"status": "PAID", "refunded": 0})
    );

    let before = asked_about();
    let report = schedule().await;
    assert_eq!(
        c.aftersale(&no, &id).await["status"],
        "REFUNDED",
        "{report}"
    );
    assert_eq!(
        c.order_status(&no).await,
        json!({"status": "REFUNDED", "refunded": total}),
        "{report}"
    );
    assert_eq!(report["wechat_refunds"]["recorded"], 1, "{report}");
    assert_eq!(report["wechat_refunds"]["asked"], 1, "{report}");
    assert_eq!(asked_about(), before + 1, "one ecaftersale/get: {report}");

    // Once: another run, then the lost pushes arriving late, record nothing more.
    let again = schedule().await;
    assert_eq!(again["wechat_refunds"]["recorded"], 0, "{again}");
    let second = r.app.clock.now_secs();
    for (event, body, nonce) in [
        (
            "aftersale_refund_success",
            json!({"aftersale_info": {"aftersale_id": wx, "out_aftersale_id": id}}),
            "late-aftersale",
        ),
        (
            "open_product_order_refund",
            json!({"order_info": {"out_order_id": no}}),
            "late-order",
        ),
    ] {
        let mut msg = json!({"ToUserName": "gh_x", "FromUserName": "oWeChatTeam",
            "CreateTime": second, "MsgType": "event", "Event": event});
        for (k, v) in body.as_object().unwrap() {
            msg[k] = v.clone();
        }
        let query = wxshop::push::PushQuery::signed("localpushtoken", &second.to_string(), nonce)
            .to_query_string();
        let resp = c
            .http
            .post(format!("{}/callbacks/wechat?{query}", r.base_url))
            .body(msg.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{event}");
    }
    assert_eq!(c.aftersale(&no, &id).await["status"], "REFUNDED");
    assert_eq!(
        c.order_status(&no).await,
        json!({"status": "REFUNDED", "refunded": total})
    );
    let events = c.aftersale_events().await;
    assert!(
        !events
            .iter()
            .any(|e| e["key"].as_str().is_some_and(|k| k.starts_with("exceeds/"))),
        "nothing recorded twice: {events:?}"
    );
}

/// A refund the merchant approved of a secondary-merchant order whose acceptance never
/// reached WeChat (`ecaftersale/acceptrefund` refused: the sync task dead-lettered), which the
/// user then cancels in WeChat's order centre, the push lost. An hour after the approval the
/// schedule's `wechat_refunds` phase reads it back and closes ours as the task would have:
/// CANCELLED (`closed` 1), the merchant told (`closed/{id}`), its amount no longer held — the
/// user may apply for it again. It used to stay REFUNDING, the amount held for good.
#[tokio::test]
async fn an_approved_refund_cancelled_at_wechat_after_its_sync_gave_up_is_closed_by_the_schedule() {
    let r = stack().await;
    let c = Client::new(&r);
    let (no, total) = buy_pay_settle(&c).await;
    let (token, _) = c.login("alice").await;
    let id = c
        .apply(
            &token,
            &no,
            json!({"amount": total, "reason": "never arrived"}),
        )
        .await;
    let (_, wx) = added_at_wechat(&r, &id).await;
    c.control(
        "faults",
        &json!({"path": "shop/ecaftersale/acceptrefund", "mode": "errcode", "errcode": 100000,
                "count": 1}),
    )
    .await;
    c.admin_aftersale("approve", &id).await;
    eventually("the sync task dead-lettered", || async {
        let (dead, _) = wxshop::outbox::list_dead(r.app.store.as_ref(), 100, None)
            .await
            .unwrap();
        dead.iter()
            .any(|d| matches!(d.task, wxshop::outbox::Task::AfterSaleSync { .. }))
    })
    .await;
    c.control(
        "aftersale",
        &json!({"action": "cancel", "aftersale_id": wx, "push": false}),
    )
    .await;
    assert_eq!(wx_aftersale(&r, wx).await.status, 1);

    r.app.clock.advance(61 * 60_000);
    let report = support::run_schedule(&r).await;
    assert_eq!(
        c.aftersale(&no, &id).await["status"],
        "CANCELLED",
        "{report}"
    );
    assert_eq!(report["wechat_refunds"]["closed"], 1, "{report}");
    assert_eq!(
        c.order_status(&no).await,
        json!({"status": "PAID", "refunded": 0})
    );
    let events = c.aftersale_events().await;
    assert!(
        events.iter().any(|e| e["key"] == format!("closed/{id}")),
        "the merchant is told: {events:?}"
    );
    // Its amount is free again.
    c.apply(&token, &no, json!({"amount": total, "reason": "again"}))
        .await;
}

/// A secondary-merchant after-sale the user opened in WeChat's order centre, then refunded
/// by WeChat on its own (the merchant let the deadline pass), with both its pushes lost
/// (`aftersale_new_order` and `aftersale_refund_success`). Nothing of ours names it, so no
/// read-back could find it: the money left while the order showed nothing refunded and still
/// shipped. After the grace the schedule lists WeChat's after-sales, finds it and records the
/// refund as the push would have: imported REFUNDED, the order REFUNDED, the merchant told.
#[tokio::test]
async fn a_refund_wechat_made_of_a_request_we_never_heard_of_is_recorded_by_the_schedule() {
    let r = stack().await;
    let c = Client::new(&r);
    let (no, total) = buy_pay_settle(&c).await;
    let opened = c
        .control(
            "aftersale",
            &json!({"action": "apply", "out_order_id": no, "orderamt": total, "push": false}),
        )
        .await;
    let wx = opened["aftersale_id"].as_u64().unwrap();
    c.control(
        "aftersale",
        &json!({"action": "platform_refund", "aftersale_id": wx, "push": false}),
    )
    .await;
    let schedule = || support::run_schedule(&r);
    let early = schedule().await;
    assert_eq!(c.admin_aftersales(&no).await.len(), 0, "{early}");

    r.app.clock.advance(11 * 60_000);
    let report = schedule().await;
    let imported = format!("WXAS{wx}");
    let a = c.aftersale(&no, &imported).await;
    assert_eq!(a["status"], "REFUNDED", "{a} {report}");
    assert_eq!(report["wechat_new_aftersales"]["recorded"], 1, "{report}");
    assert_eq!(a["amount"], total, "{a}");
    assert_eq!(
        c.order_status(&no).await,
        json!({"status": "REFUNDED", "refunded": total})
    );
    assert!(
        c.aftersale_events()
            .await
            .iter()
            .any(|e| e["key"] == format!("refunded/{wx}")),
        "the merchant is told"
    );
    let later = schedule().await;
    assert_eq!(later["wechat_new_aftersales"]["recorded"], 0, "{later}");
}

/// The user edits their secondary-merchant after-sale in WeChat's order centre (30 → all of
/// it) and the merchant approves what they saw. `acceptrefund` names no amount: WeChat would
/// refund its own. So before accepting, the sync reads WeChat's after-sale back; it differs,
/// so nothing is accepted — ours takes WeChat's amount and goes back to the merchant, who is
/// told — and approving again refunds that amount, recorded as such. With the
/// `aftersale_update_order` push delivered, ours shows the new amount before any approval.
/// `acceptrefund` used to be called unchecked: WeChat refunded 3980 while our books said 1990.
#[tokio::test]
async fn an_aftersale_edited_in_wechat_is_not_accepted_on_the_old_terms() {
    let r = stack().await;
    let c = Client::new(&r);
    let (no, total) = buy_pay_settle(&c).await;
    let (token, _) = c.login("alice").await;
    let id = c
        .apply(&token, &no, json!({"amount": 1990, "reason": "dented"}))
        .await;
    let (ours, wx_id) = added_at_wechat(&r, &id).await;
    // The user's edit, straight to WeChat (`ecaftersale/update`); no push.
    r.app
        .wx
        .ecaftersale_update(&wxshop::shop::aftersale::EcAfterSaleUpdateRequest {
            key: wxshop::shop::types::AfterSaleKey::Id(wx_id),
            openid: ours.openid.to_string(),
            kind: None,
            orderamt: Some(wxshop::domain::Fen::new(total).unwrap()),
            refund_reason: Some("all of it".into()),
            refund_reason_type: None,
            media_list: Vec::new(),
        })
        .await
        .unwrap();
    let approved = c.admin_aftersale("approve", &id).await;
    assert_eq!(approved["aftersale"]["status"], "REFUNDING");
    eventually("ours back with the merchant on WeChat's amount", || async {
        let a = c.aftersale(&no, &id).await;
        a["status"] == "REQUESTED" && a["amount"] == total
    })
    .await;
    let accepts = |wx: u64| {
        r.sandbox
            .calls("shop/ecaftersale/acceptrefund")
            .iter()
            .filter(|v| v["aftersale_id"] == wx)
            .count()
    };
    assert_eq!(accepts(wx_id), 0, "not accepted on terms nobody approved");
    assert_eq!(wx_aftersale(&r, wx_id).await.status, 2);
    assert_eq!(c.balance().await, (total, 0), "nothing refunded");
    // The merchant is told in a write after the after-sale's: ours can read REQUESTED a
    // moment before the event is there (checking at once raced the sync on a loaded host).
    support::eventually(
        "the merchant told of WeChat's terms",
        Duration::from_secs(20),
        || async {
            c.aftersale_events().await.iter().any(|e| {
                e["key"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("terms/{wx_id}/"))
            })
        },
    )
    .await;
    // Approved again, on WeChat's amount: refunded and recorded at that amount.
    c.admin_aftersale("approve", &id).await;
    eventually("REFUNDED", || async {
        c.aftersale(&no, &id).await["status"] == "REFUNDED"
    })
    .await;
    assert_eq!(accepts(wx_id), 1);
    assert_eq!(
        c.order_status(&no).await,
        json!({"status": "REFUNDED", "refunded": total})
    );

    // With the edit's push (`aftersale_update_order`): ours shows it before anyone approves.
    let (no2, total2) = buy_pay_settle(&c).await;
    let id2 = c
        .apply(&token, &no2, json!({"amount": 1990, "reason": "dented"}))
        .await;
    let (_, wx2) = added_at_wechat(&r, &id2).await;
    c.control(
        "aftersale",
        &json!({"action": "update", "aftersale_id": wx2, "orderamt": total2, "reason": "all of it"}),
    )
    .await;
    eventually("ours on WeChat's amount before approval", || async {
        let a = c.aftersale(&no2, &id2).await;
        a["status"] == "REQUESTED" && a["amount"] == total2 && a["reason"] == "all of it"
    })
    .await;
    c.admin_aftersale("approve", &id2).await;
    eventually("REFUNDED", || async {
        c.aftersale(&no2, &id2).await["status"] == "REFUNDED"
    })
    .await;
    assert_eq!(accepts(wx2), 1);
    assert_eq!(
        c.order_status(&no2).await,
        json!({"status": "REFUNDED", "refunded": total2})
    );
}

/// The user edits their after-sale twice within one second. The two `aftersale_update_order`
/// pushes have the same body byte for byte (the event names only the after-sale), yet each is
/// its own push, with its own nonce. GIVEN the first applied THEN the second acts too: ours
/// shows the second edit at once. A byte-identical redelivery of it acts once (WeChat's
/// after-sale is not read again). The second push used to be dropped as a redelivery of the
/// first (the same event, after-sale and second), and ours kept the first edit until the
/// schedule's sweep read WeChat's after-sale.
#[tokio::test]
async fn two_edits_of_an_aftersale_in_one_second_both_act() {
    let r = stack().await;
    let c = Client::new(&r);
    let (no, total) = buy_pay_settle(&c).await;
    let (token, _) = c.login("alice").await;
    let id = c
        .apply(&token, &no, json!({"amount": 1990, "reason": "dented"}))
        .await;
    let (ours, wx_id) = added_at_wechat(&r, &id).await;
    // The user's edits, straight to WeChat (`ecaftersale/update`): the pushes are ours to send.
    let edit = |amount: i64, reason: &str| {
        let req = wxshop::shop::aftersale::EcAfterSaleUpdateRequest {
            key: wxshop::shop::types::AfterSaleKey::Id(wx_id),
            openid: ours.openid.to_string(),
            kind: None,
            orderamt: Some(wxshop::domain::Fen::new(amount).unwrap()),
            refund_reason: Some(reason.to_owned()),
            refund_reason_type: None,
            media_list: Vec::new(),
        };
        let r = &r;
        async move { r.app.wx.ecaftersale_update(&req).await.map(drop) }
    };
    let second = r.app.clock.now_secs();
    let msg = json!({"ToUserName": "gh_x", "FromUserName": "oWeChatTeam", "CreateTime": second,
        "MsgType": "event", "Event": "aftersale_update_order",
        "aftersale_info": {"aftersale_id": wx_id, "out_aftersale_id": id}})
    .to_string();
    let push = |nonce: &'static str| {
        let query = wxshop::push::PushQuery::signed("localpushtoken", &second.to_string(), nonce)
            .to_query_string();
        let (http, url, body) = (
            c.http.clone(),
            format!("{}/callbacks/wechat?{query}", r.base_url),
            msg.clone(),
        );
        async move {
            let resp = http.post(url).body(body).send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    let reads = || r.sandbox.calls("shop/ecaftersale/get").len();
    let terms = || async {
        let a = c.aftersale(&no, &id).await;
        (a["amount"].as_i64().unwrap(), a["reason"].clone())
    };

    edit(3000, "first edit").await.unwrap();
    assert_eq!(push("n-first").await, (200, "success".to_owned()));
    assert_eq!(terms().await, (3000, json!("first edit")));

    edit(total, "second edit").await.unwrap();
    let before = reads();
    assert_eq!(push("n-second").await, (200, "success".to_owned()));
    assert_eq!(
        terms().await,
        (total, json!("second edit")),
        "the second push of the same second acted"
    );
    assert!(reads() > before, "WeChat's after-sale was read for it");

    // WeChat's redelivery of the second push, byte for byte: acknowledged, not acted on again.
    let before = reads();
    assert_eq!(push("n-second").await, (200, "success".to_owned()));
    assert_eq!(reads(), before, "a redelivery acts once");
    assert_eq!(terms().await, (total, json!("second edit")));
}
