#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! Store faults on the money path: a write whose outcome the store could not report. A
//! DynamoDB timeout may come after the write was applied, so `StoreError::Backend` means "may
//! or may not have happened"; a retry of the same `unifiedOrder` (same idempotency key) must
//! then find what the first attempt made — one order, stock taken once — never make a second.
//!
//! The faulty store wraps the stack's own (`LosesAnswers`) and is handed to `unifiedOrder`
//! directly, as one Lambda container whose store call timed out; the client's retry goes
//! through the gateway to the healthy store, as it would reach another container.

#[path = "reliability_support.rs"]
mod support;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::*;
use wxlocal::gateway::Running;
use wxshop::store::{DynStore, Expect, Kind, Page, Query, Record, Store, StoreError, Write};

/// A store that fails the next `count` writes `matching` picks with `Backend` — after applying
/// them (`applied`: the answer was lost) or without (the write failed).
struct LosesAnswers {
    inner: DynStore,
    matching: fn(&[Write]) -> bool,
    applied: bool,
    count: AtomicUsize,
}

impl LosesAnswers {
    fn wrap(r: &Running, matching: fn(&[Write]) -> bool, applied: bool, count: usize) -> DynStore {
        Arc::new(LosesAnswers {
            inner: r.app.store.clone(),
            matching,
            applied,
            count: AtomicUsize::new(count),
        })
    }
}

#[async_trait]
impl Store for LosesAnswers {
    async fn get(&self, kind: Kind, id: &str) -> Result<Option<Record>, StoreError> {
        self.inner.get(kind, id).await
    }

    async fn write(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        let hit = (self.matching)(&writes)
            && self
                .count
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        if !hit {
            return self.inner.write(writes).await;
        }
        if self.applied {
            self.inner.write(writes).await?;
        }
        Err(StoreError::Backend(
            "dynamodb PutItem: timed out (injected)".into(),
        ))
    }

    async fn query(&self, query: Query) -> Result<Page, StoreError> {
        self.inner.query(query).await
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
}

/// The write that creates an order (and takes its stock).
fn creates_an_order(writes: &[Write]) -> bool {
    writes.iter().any(|w| {
        matches!(w, Write::Put { record, expect: Expect::Absent } if record.kind == Kind::Order)
    })
}

/// A write that changes an existing order (saving PREPAID, closing it).
fn updates_an_order(writes: &[Write]) -> bool {
    writes.iter().any(|w| {
        matches!(w, Write::Put { record, expect: Expect::Version(_) } if record.kind == Kind::Order)
    })
}

/// The write that records an idempotency key's result.
fn completes_a_key(writes: &[Write]) -> bool {
    writes.iter().any(|w| {
        matches!(w, Write::Put { record, .. }
            if record.kind == Kind::Idempotency && record.body.contains(r#""status":"COMPLETED""#))
    })
}

fn order_body(key: &str) -> Value {
    json!({"items": [{"product_id": "tea", "sku_id": "tea-250g", "quantity": 2}],
        "address": {"receiver_name": "A", "detailed_address": "1 Road", "tel_number": "13800000000"},
        "idempotency_key": key})
}

/// `unifiedOrder` run on `store`, as a container whose store misbehaves would run it.
async fn order_on(r: &Running, store: DynStore, token: &str, body: &Value) -> (u16, Value) {
    let mut app = r.app.clone();
    app.store = store;
    let route = wxshop::handlers::find_route("POST", "/fn/unifiedOrder").unwrap();
    let req = http::Request::builder()
        .method("POST")
        .uri("/fn/unifiedOrder")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Bytes::from(body.to_string()))
        .unwrap();
    let resp = wxshop::handlers::handle(&app, route, req).await;
    let status = resp.status().as_u16();
    (status, serde_json::from_slice(resp.body()).unwrap())
}

async fn orders(c: &Client, token: &str) -> Vec<Value> {
    let (s, list) = c.post("/fn/queryOrder", Some(token), &json!({})).await;
    assert_eq!(s, 200, "{list}");
    list["orders"].as_array().unwrap().clone()
}

/// The order write is applied but reported failed (503): the order exists and holds its
/// stock. The client's retry with the same key gets that order — created once, stock taken
/// once, one WeChat Pay order — where it used to release the key and make a second order
/// under a new number (the first one holding its stock until the sweep closed it).
#[tokio::test]
async fn an_order_written_but_reported_failed_is_resumed_by_the_retry() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (token, _) = c.login("lost-order-write").await;
    let before = c.stock().await;
    let body = order_body("tap-lost-1");

    let faulty = LosesAnswers::wrap(&r, creates_an_order, true, 1);
    let (s, v) = order_on(&r, faulty, &token, &body).await;
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["code"], "STORE_UNAVAILABLE");
    // The fault is what it claims: the first attempt's order is there, holding stock.
    let made = orders(&c, &token).await;
    assert_eq!(made.len(), 1, "{made:?}");
    assert_eq!(made[0]["status"], "CREATED");
    assert_eq!(c.stock().await, before - 2);

    let (s, retried) = c.post("/fn/unifiedOrder", Some(&token), &body).await;
    assert_eq!(s, 200, "{retried}");
    let listed = orders(&c, &token).await;
    assert_eq!(listed.len(), 1, "one order for one key: {listed:?}");
    assert_eq!(listed[0]["out_trade_no"], retried["out_trade_no"]);
    assert_eq!(listed[0]["status"], "PREPAID");
    assert_eq!(c.stock().await, before - 2, "stock taken once");
    let prepays = r.sandbox.calls("pay/unifiedorder");
    assert_eq!(prepays.len(), 1, "{prepays:?}");
    assert_eq!(prepays[0]["out_trade_no"], retried["out_trade_no"]);

    // And the key now replays that order.
    let (s, again) = c.post("/fn/unifiedOrder", Some(&token), &body).await;
    assert_eq!(s, 200, "{again}");
    assert_eq!(again["out_trade_no"], retried["out_trade_no"]);
}

/// The order is made and prepaid but its result cannot be recorded under the key (the
/// completing write fails): the retry answers with that order and its prepay order — not
/// 409 REQUEST_IN_PROGRESS for half a minute and then a second order.
#[tokio::test]
async fn an_order_whose_result_was_not_recorded_is_answered_again() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (token, _) = c.login("lost-completion").await;
    let before = c.stock().await;
    let body = order_body("tap-lost-2");

    let faulty = LosesAnswers::wrap(&r, completes_a_key, false, 1);
    let (s, v) = order_on(&r, faulty, &token, &body).await;
    assert_eq!(s, 503, "{v}");

    let (s, retried) = c.post("/fn/unifiedOrder", Some(&token), &body).await;
    assert_eq!(s, 200, "{retried}");
    let listed = orders(&c, &token).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["out_trade_no"], retried["out_trade_no"]);
    assert_eq!(c.stock().await, before - 2);
    let prepays = r.sandbox.calls("pay/unifiedorder");
    assert_eq!(prepays.len(), 1, "answered from the store: {prepays:?}");
    assert!(retried["payment"]["package"]
        .as_str()
        .unwrap()
        .starts_with("prepay_id="));
    assert!(retried["ticket"].is_string(), "{retried}");
}

/// The attempt dies between WeChat Pay and the store: `pay/unifiedorder` opened the prepay
/// order, but neither saving PREPAID nor closing the order could be written. The retry — from
/// another address, as a phone changing networks — resumes the order: it asks WeChat Pay again
/// under the same `out_trade_no` with the same parameters (the first attempt's client IP
/// included; a changed one would be OUT_TRADE_NO_USED) and gets the same prepay order.
#[tokio::test]
async fn an_order_left_unsaved_after_prepay_is_resumed_with_the_same_parameters() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (token, _) = c.login("lost-prepay-save").await;
    let before = c.stock().await;
    let body = order_body("tap-lost-3");

    let faulty = LosesAnswers::wrap(&r, updates_an_order, false, 2);
    let (s, v) = order_on(&r, faulty, &token, &body).await;
    assert_eq!(s, 503, "{v}");
    let made = orders(&c, &token).await;
    assert_eq!(made.len(), 1, "{made:?}");
    assert_eq!(made[0]["status"], "CREATED", "neither prepaid nor closed");

    let resp = c
        .http
        .post(format!("{}/fn/unifiedOrder", c.base))
        .bearer_auth(&token)
        .header("x-forwarded-for", "203.0.113.7")
        .json(&body)
        .send()
        .await
        .unwrap();
    let s = resp.status().as_u16();
    let retried: Value = resp.json().await.unwrap();
    assert_eq!(s, 200, "{retried}");
    let listed = orders(&c, &token).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["out_trade_no"], made[0]["out_trade_no"]);
    assert_eq!(listed[0]["status"], "PREPAID");
    assert_eq!(c.stock().await, before - 2);
    let prepays = r.sandbox.calls("pay/unifiedorder");
    assert_eq!(prepays.len(), 2, "{prepays:?}");
    assert!(prepays
        .iter()
        .all(|p| p["out_trade_no"] == made[0]["out_trade_no"]));
    for p in &prepays {
        assert_eq!(
            p["spbill_create_ip"], "127.0.0.1",
            "the first attempt's: {p}"
        );
    }
}

/// What did not survive is not resumed: WeChat refuses the order, it is closed with its stock
/// back, and the key is released — the retry with the same key is a new order under a new
/// number (the closed one cannot be paid any more).
#[tokio::test]
async fn a_refused_and_closed_order_leaves_the_key_free_for_a_new_one() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (token, _) = c.login("refused-then-retried").await;
    let before = c.stock().await;
    let body = order_body("tap-refused");
    c.fault(json!({"path": "shop/order/add", "mode": "errcode", "errcode": 47001, "count": 1}))
        .await;
    let (s, v) = c.post("/fn/unifiedOrder", Some(&token), &body).await;
    assert!(s >= 400, "{s} {v}");
    let first = orders(&c, &token).await;
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0]["status"], "CLOSED");
    assert_eq!(c.stock().await, before);

    let (s, retried) = c.post("/fn/unifiedOrder", Some(&token), &body).await;
    assert_eq!(s, 200, "{retried}");
    assert_ne!(retried["out_trade_no"], first[0]["out_trade_no"]);
    assert_eq!(c.stock().await, before - 2);
}

/// A store that refuses every call: what a function whose role has no DynamoDB permission
/// would meet (`AccessDeniedException`).
struct NoTable;

#[async_trait]
impl Store for NoTable {
    async fn get(&self, _: Kind, _: &str) -> Result<Option<Record>, StoreError> {
        Err(StoreError::Backend(
            "AccessDeniedException (no table access)".into(),
        ))
    }
    async fn write(&self, _: Vec<Write>) -> Result<(), StoreError> {
        Err(StoreError::Backend(
            "AccessDeniedException (no table access)".into(),
        ))
    }
    async fn query(&self, _: Query) -> Result<Page, StoreError> {
        Err(StoreError::Backend(
            "AccessDeniedException (no table access)".into(),
        ))
    }
    fn backend(&self) -> &'static str {
        "no-table"
    }
}

/// login's role in infra/template.yaml has no DynamoDB permission (least privilege): a
/// login runs on a whole app whose store refuses everything — `jscode2session` at the
/// sandbox, a signed token — and the token works on the real stack.
#[tokio::test]
async fn login_needs_no_table() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let app = wxshop::app::App::new(
        (*r.app.config).clone(),
        Arc::new(NoTable),
        r.app.clock.clone(),
    )
    .unwrap();
    let (_, code) = c
        .post(
            "/sandbox/_control/login",
            None,
            &json!({"user": "no-table"}),
        )
        .await;
    let route = wxshop::handlers::find_route("POST", "/fn/login").unwrap();
    let req = http::Request::builder()
        .method("POST")
        .uri("/fn/login")
        .header("content-type", "application/json")
        .body(Bytes::from(json!({"code": code["code"]}).to_string()))
        .unwrap();
    let resp = wxshop::handlers::handle(&app, route, req).await;
    let v: Value = serde_json::from_slice(resp.body()).unwrap();
    assert_eq!(resp.status().as_u16(), 200, "{v}");
    let token = v["token"].as_str().unwrap();
    assert_eq!(orders(&c, token).await.len(), 0, "the token is a session");
    r.stop();
}

/// The write that records a message-push event.
fn records_a_push(writes: &[Write]) -> bool {
    writes.iter().any(|w| {
        matches!(w, Write::Put { record, .. }
            if record.kind == Kind::Event && record.id.starts_with("push/"))
    })
}

/// A message push whose record the store failed to write (or wrote, but could not say so) is
/// not acknowledged: 503, so WeChat pushes again; its redelivery — through the healthy store,
/// as another container — is acknowledged `success`, and the event is kept once.
#[tokio::test]
async fn a_push_is_not_acknowledged_before_it_is_recorded() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    for (applied, audit_id) in [(false, "AUD-LOST"), (true, "AUD-UNSAID")] {
        let ts = r.app.clock.now_secs();
        let msg = json!({"ToUserName": "gh_abc", "FromUserName": "o_wechat", "CreateTime": ts,
            "MsgType": "event", "Event": "open_product_brand_audit",
            "QualificationAuditResult": {"audit_id": audit_id, "status": 1, "audit_type": 1,
                                          "reject_reason": "", "brand_id": 2100000555u64}})
        .to_string();
        let query = wxshop::push::PushQuery::signed("localpushtoken", &ts.to_string(), audit_id)
            .to_query_string();
        let path = format!("/callbacks/wechat?{query}");
        let mut app = r.app.clone();
        app.store = LosesAnswers::wrap(&r, records_a_push, applied, 1);
        let route = wxshop::handlers::find_route("POST", "/callbacks/wechat").unwrap();
        let req = http::Request::builder()
            .method("POST")
            .uri(&path)
            .body(Bytes::from(msg.clone()))
            .unwrap();
        let resp = wxshop::handlers::handle(&app, route, req).await;
        let body = String::from_utf8_lossy(resp.body()).into_owned();
        assert_eq!(resp.status().as_u16(), 503, "applied={applied}: {body}");
        assert_ne!(body, "success");
        // WeChat's redelivery.
        let (s, t) = c.raw(&path, msg).await;
        assert_eq!((s, t.as_str()), (200, "success"), "applied={applied}");
        let (s, v) = c
            .admin(
                "/admin/orderSync",
                &json!({"action": "events", "source": "push"}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        let kept = v["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["body"]["QualificationAuditResult"]["audit_id"] == audit_id)
            .count();
        assert_eq!(kept, 1, "applied={applied}: {v}");
    }
}

/// `/admin/aftersaleSync` run on `store`, as a container whose store behaves so would run it.
async fn aftersale_admin_on(r: &Running, store: DynStore, body: &Value) -> (u16, Value) {
    let mut app = r.app.clone();
    app.store = store;
    let route = wxshop::handlers::find_route("POST", "/admin/aftersaleSync").unwrap();
    let req = http::Request::builder()
        .method("POST")
        .uri("/admin/aftersaleSync")
        .header("authorization", format!("Bearer {}", r.admin_token))
        .header("content-type", "application/json")
        .body(Bytes::from(body.to_string()))
        .unwrap();
    let resp = wxshop::handlers::handle(&app, route, req).await;
    let status = resp.status().as_u16();
    (status, serde_json::from_slice(resp.body()).unwrap())
}

/// A paid order of two tins (3980 fen, WeChat Pay collects) and the user's application for a
/// refund of one (1990): (session token, order number, after-sale id).
async fn paid_with_an_aftersale(c: &Client, user: &str) -> (String, String, String) {
    let (token, _) = c.login(user).await;
    let (s, v) = c.order(&token, 2, None).await;
    assert_eq!(s, 200, "{v}");
    let no = v["out_trade_no"].as_str().unwrap().to_owned();
    c.pay_at_sandbox(&no).await;
    eventually("the order PAID", Duration::from_secs(10), || async {
        c.status(&token, &no).await["status"] == "PAID"
    })
    .await;
    let (s, v) = c
        .post(
            "/fn/aftersaleSync",
            Some(&token),
            &json!({"action": "apply", "out_trade_no": no, "amount": 1990, "reason": "one tin dented"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let id = v["aftersale"]["aftersale_id"].as_str().unwrap().to_owned();
    (token, no, id)
}

/// The stack's store, counting the records read by key, by kind.
struct CountsReads {
    inner: DynStore,
    reads: std::sync::Mutex<std::collections::HashMap<&'static str, usize>>,
}

impl CountsReads {
    fn reads(&self, kind: Kind) -> usize {
        self.reads
            .lock()
            .unwrap()
            .get(kind.as_str())
            .copied()
            .unwrap_or(0)
    }
}

#[async_trait]
impl Store for CountsReads {
    async fn get(&self, kind: Kind, id: &str) -> Result<Option<Record>, StoreError> {
        *self.reads.lock().unwrap().entry(kind.as_str()).or_insert(0) += 1;
        self.inner.get(kind, id).await
    }
    async fn write(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        self.inner.write(writes).await
    }
    async fn query(&self, query: Query) -> Result<Page, StoreError> {
        self.inner.query(query).await
    }
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
}

/// The merchant approves a refund of an order whose money we hold: one read of the
/// after-sale and one of its order, then the write. The approval used to read the after-sale
/// three times and the order twice — to choose between a return and a refund, to see whether
/// a secondary-merchant order's component id must be learnt first, and for the write — each
/// a DynamoDB read billed and waited for on every approval.
#[tokio::test]
async fn an_approval_reads_its_aftersale_and_order_once() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (token, no, id) = paid_with_an_aftersale(&c, "approve-reads-once").await;

    let counting = Arc::new(CountsReads {
        inner: r.app.store.clone(),
        reads: Default::default(),
    });
    let (s, v) = aftersale_admin_on(
        &r,
        counting.clone(),
        &json!({"action": "approve", "aftersale_id": id}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["aftersale"]["status"], "REFUNDING", "{v}");
    assert_eq!(counting.reads(Kind::AfterSale), 1, "the after-sale, once");
    assert_eq!(counting.reads(Kind::Order), 1, "its order, once");
    eventually("the refund paid", Duration::from_secs(10), || async {
        c.status(&token, &no).await["refunded_fee"] == 1990
    })
    .await;
}

/// A store whose index of each order's refunds lags behind, as a DynamoDB GSI may for a
/// moment after a write: it does not list the refunds `hidden` yet. Reads by key (strongly
/// consistent `GetItem`) see everything.
struct LaggingRefundIndex {
    inner: DynStore,
    hidden: Vec<String>,
}

#[async_trait]
impl Store for LaggingRefundIndex {
    async fn get(&self, kind: Kind, id: &str) -> Result<Option<Record>, StoreError> {
        self.inner.get(kind, id).await
    }
    async fn write(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        self.inner.write(writes).await
    }
    async fn query(&self, query: Query) -> Result<Page, StoreError> {
        let refunds = query.kind == Kind::Refund;
        let mut page = self.inner.query(query).await?;
        if refunds {
            page.records.retain(|rec| !self.hidden.contains(&rec.id));
        }
        Ok(page)
    }
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
}

/// A tin is refunded by hand in the merchant platform and the merchant, a moment later,
/// approves the user's after-sale for it — while the store's index of the order's refunds
/// does not list that refund yet (DynamoDB's are eventually consistent). The approval is
/// refused all the same (409 `REFUNDED_BY_HAND`, naming the refund) and WeChat Pay is asked
/// for nothing: the order lists its refunds made by hand, and the approval reads those by key.
/// It used to read them through the index only, found none, and refunded the tin again.
#[tokio::test]
async fn a_refund_made_by_hand_a_moment_ago_is_seen_though_the_index_lags() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (token, no, id) = paid_with_an_aftersale(&c, "by-hand-lagging-index").await;
    let v = c
        .control(
            "merchant_refund",
            &json!({"out_trade_no": no, "refund_fee": 1990}),
        )
        .await;
    let by_hand = v["out_refund_no"].as_str().unwrap().to_owned();
    eventually(
        "the refund made by hand recorded",
        Duration::from_secs(10),
        || async { c.status(&token, &no).await["refunded_fee"] == 1990 },
    )
    .await;

    let lagging = Arc::new(LaggingRefundIndex {
        inner: r.app.store.clone(),
        hidden: vec![by_hand.clone()],
    });
    let (s, v) = aftersale_admin_on(
        &r,
        lagging,
        &json!({"action": "approve", "aftersale_id": id}),
    )
    .await;
    assert_eq!(s, 409, "approving could pay the tin twice: {v}");
    assert_eq!(v["code"], "REFUNDED_BY_HAND", "{v}");
    assert!(v["message"].as_str().unwrap().contains(&by_hand), "{v}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = r
        .sandbox
        .calls("secapi/pay/refund")
        .into_iter()
        .filter(|call| call["out_trade_no"] == no.as_str())
        .count();
    assert_eq!(asked, 0, "WeChat Pay asked for nothing");
    assert_eq!(c.status(&token, &no).await["refunded_fee"], 1990);
}

/// The sandbox's component order for our number: its status, and the `expire_time` (ms) of
/// the last `shop/order/add` WeChat took for it.
async fn component_order(r: &Running, c: &Client, no: &str) -> (i64, i64) {
    let (_, st) = c.get("/sandbox/_control/state").await;
    let status = st["shop_orders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["out_order_id"] == no)
        .and_then(|o| o["status"].as_i64())
        .unwrap_or(0);
    let expire = r
        .sandbox
        .calls("shop/order/add")
        .into_iter()
        .rev()
        .find(|a| a["out_order_id"] == no)
        .and_then(|a| a["expire_time"].as_i64())
        .unwrap_or(0);
    (status, expire * 1000)
}

/// Our stored order `no`.
async fn stored(r: &Running, no: &str) -> wxshop::domain::Order {
    let no = wxshop::domain::OutTradeNo::parse(no.to_owned()).unwrap();
    wxshop::store::repo::get_order(r.app.store.as_ref(), &no)
        .await
        .unwrap()
        .unwrap()
        .value
}

/// Both clocks (ours and WeChat's, whose `create_time` check allows 5 s between them) moved
/// by `ms`.
fn both_clocks(r: &Running, ms: i64) {
    r.app.clock.advance(ms);
    r.sandbox.clock().advance(ms);
}

/// The order-creating write applied but answered 503, and the client's retry with the same key
/// comes 5 minutes later (the order, ORDER_TTL_SECS 900, has 10 minutes left), so the
/// component order is first added at WeChat now — which takes no `expire_time` less than 15
/// minutes ahead (the sandbox enforces it). Secondary-merchant mode, where the component order
/// is the payment: our order's expiry is moved to 15 minutes (and a little) from now before the
/// add, WeChat's `expire_time` is the same, the retry is 200 PREPAID; past the first expiry
/// the sweep leaves it open, WeChat has not cancelled it, and the user pays it. The add used
/// to carry the order's 10 minutes: refused, the order closed as a failed prepay, 502.
#[tokio::test]
async fn a_secondary_merchant_order_added_late_gets_the_fifteen_minutes_wechat_wants() {
    let r = stack_with(&[("WX_FUND_TYPE", "1")]).await;
    let c = Client::new(&r);
    let (token, _) = c.login("late-add-secondary").await;
    let body = order_body("tap-late-add-1");
    let faulty = LosesAnswers::wrap(&r, creates_an_order, true, 1);
    let (s, v) = order_on(&r, faulty, &token, &body).await;
    assert_eq!(s, 503, "{v}");
    let no = orders(&c, &token).await[0]["out_trade_no"]
        .as_str()
        .unwrap()
        .to_owned();
    let first_expiry = stored(&r, &no).await.expires_at_ms;

    both_clocks(&r, 5 * 60_000);
    let (s, v) = c.post("/fn/unifiedOrder", Some(&token), &body).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "PREPAID", "{v}");
    assert_eq!(v["out_trade_no"], no.as_str(), "{v}");
    let ours = stored(&r, &no).await;
    let now = r.app.clock.now_ms();
    assert!(
        ours.expires_at_ms >= now + 15 * 60_000,
        "our expiry moved to 15 minutes ahead: {} (first {first_expiry}, now {now})",
        ours.expires_at_ms
    );
    let (status, wx_expiry) = component_order(&r, &c, &no).await;
    assert_eq!(status, 10);
    assert_eq!(
        wx_expiry / 1000,
        ours.expires_at_ms / 1000,
        "WeChat's order ends with ours"
    );

    // Past the first expiry: the sweep leaves it open, WeChat has not cancelled it.
    both_clocks(&r, 11 * 60_000);
    let (s, v) = c
        .admin("/admin/orderSync", &json!({"action": "sweep"}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(c.status(&token, &no).await["status"], "PREPAID");
    let (s, v) = c
        .post(
            "/sandbox/_control/pay",
            None,
            &json!({"out_order_id": no, "wait": true}),
        )
        .await;
    assert_eq!(s, 200, "the user can still pay: {v}");
    eventually("the payment recorded", Duration::from_secs(10), || async {
        c.status(&token, &no).await["status"] == "PAID"
    })
    .await;
    let dead = c.dead_letters().await;
    assert!(dead.is_empty(), "{dead:?}");
}

/// As above in direct mode (we collect through WeChat Pay; the component order mirrors the
/// payment): the retry 5 minutes late opens the WeChat Pay order with the order's own expiry
/// (10 minutes left, its `time_expire`; ours unchanged) and adds the component order with an
/// `expire_time` 15 minutes (and a little) ahead, which WeChat takes: 200 PREPAID. Past our
/// expiry the sweep closes ours as usual — stock back, the WeChat Pay order closed, the
/// component order cancelled there (250). The add used to carry the 10 minutes: refused, 502.
#[tokio::test]
async fn a_direct_order_added_late_sends_wechat_fifteen_minutes_and_keeps_its_own_expiry() {
    let r = stack_with(&[]).await;
    let c = Client::new(&r);
    let (token, _) = c.login("late-add-direct").await;
    let before = c.stock().await;
    let body = order_body("tap-late-add-0");
    let faulty = LosesAnswers::wrap(&r, creates_an_order, true, 1);
    let (s, v) = order_on(&r, faulty, &token, &body).await;
    assert_eq!(s, 503, "{v}");
    let no = orders(&c, &token).await[0]["out_trade_no"]
        .as_str()
        .unwrap()
        .to_owned();
    let first_expiry = stored(&r, &no).await.expires_at_ms;

    both_clocks(&r, 5 * 60_000);
    let (s, v) = c.post("/fn/unifiedOrder", Some(&token), &body).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "PREPAID", "{v}");
    assert_eq!(
        stored(&r, &no).await.expires_at_ms,
        first_expiry,
        "ours is WeChat Pay's time_expire: unchanged"
    );
    let (status, wx_expiry) = component_order(&r, &c, &no).await;
    assert_eq!(status, 10);
    assert!(
        wx_expiry >= r.sandbox.now_ms() + 15 * 60_000 - 5_000,
        "WeChat's expire_time at least 15 minutes ahead: {wx_expiry}"
    );

    both_clocks(&r, 11 * 60_000);
    let (s, v) = c
        .admin("/admin/orderSync", &json!({"action": "sweep"}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(c.status(&token, &no).await["status"], "CLOSED");
    assert_eq!(c.stock().await, before, "stock back");
    eventually(
        "the component order cancelled at WeChat",
        Duration::from_secs(10),
        || async { component_order(&r, &c, &no).await.0 == 250 },
    )
    .await;
    let dead = c.dead_letters().await;
    assert!(dead.is_empty(), "{dead:?}");
}
