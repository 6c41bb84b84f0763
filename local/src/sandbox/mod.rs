//! The faithful WeChat sandbox: a local stand-in for both WeChat hosts, so the whole shop can
//! be developed and tested without a merchant account.
//!
//! Why "faithful": the code under test is only as good as the peer it is tested against. A
//! mock that accepts anything hides exactly the bugs that cost money in production (wrong
//! signatures, changed parameters on retry, prices that do not match the catalog, an unpaid
//! order marked paid). So the sandbox checks signatures and required fields the way WeChat
//! does, answers with WeChat's error codes, signs its replies, and delivers real signed (or
//! encrypted) notifications on WeChat's retry schedule, compressible with `time_scale`.
//! WeChat's time rules — an access token lives 7200 s, a `prepay_id` 2 hours, refunds of one
//! order are a minute apart, an unpaid component order is cancelled at its `expire_time`, a
//! withdrawal's QR code expires — run on the sandbox's clock, which `/_control/clock` moves.
//! What WeChat does by itself when a deadline passes happens at the sandbox's next request
//! (or clock move) after it ([`Sandbox::expire_due`]).
//!
//! Layout: [`mch`] is the merchant API v2 (`/mch/...`), [`platform`] the access token and
//! login, [`shop`] the trading component (`/api/shop/...`), [`funds`] the secondary-merchant
//! funds APIs, [`deliver`] every outgoing notification (pay, refund, message push) and its
//! retries, [`persist`] the state file that lets the sandbox remember across restarts, as
//! WeChat does, when the store does. This file holds the configuration, the shared state, fault injection, the routes
//! and the `/_control/*` endpoints a test uses to act as the user or as WeChat's staff.
//!
//! A sandbox left running for days, or under a demo's load, stays the same size: what serves
//! only inspection — the call log, the delivery log, the pushed events — keeps its most recent
//! [`SandboxConfig::log_cap`] entries, and what WeChat forgets the sandbox forgets when it
//! expires (tokens and login codes, [`platform`]; `prepay_id`s, [`mch`]), answering a
//! forgotten one as WeChat answers an expired one. Orders, payments, refunds and the rest
//! WeChat keeps stay.
//!
//! Routes are relative to `/sandbox` (the gateway nests them there; [`serve`] does the same).

pub mod deliver;
pub mod funds;
pub mod kept;
pub mod mch;
mod persist;
pub mod platform;
pub mod shop;

use axum::body::Bytes;
use axum::extract::{Path, Query, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::Duration;
use wxshop::time::Clock;

/// How the sandbox behaves; the lead builds it from the same variables as the app.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    pub appid: String,
    pub appsecret: String,
    pub mch_id: String,
    pub api_key: String,
    /// Service-provider mode when set: every merchant call must carry this `sub_mch_id`.
    pub sub_mch_id: Option<String>,
    pub sub_appid: Option<String>,
    /// Where platform events are pushed (our `/callbacks/wechat`); `None` = nowhere.
    pub push_url: Option<String>,
    pub push_token: String,
    /// 43-char EncodingAESKey: events are pushed in safe mode (encrypted) when set.
    pub push_aes_key: Option<String>,
    /// 1.0 = real time; 0.001 compresses WeChat's 15 s retry gap to 15 ms.
    pub time_scale: f64,
    /// Approve products (and brand/category audits) automatically after they are submitted.
    pub auto_audit: bool,
    /// Shortest gap between two refunds of one order, on the sandbox's clock (WeChat's is a
    /// minute, [`mch::REFUND_INTERVAL_MS`]); a new refund sooner is `FREQUENCY_LIMITED`.
    /// `/_control/clock` moves the clock past it; a test that refunds one order twice and is
    /// not about the limit may set 0.
    pub refund_interval_ms: i64,
    /// The refund-result URL set in the merchant platform (our `/callbacks/refund`): where the
    /// notification of a refund a person made there goes ([`mch::merchant_refunds`]). Refunds
    /// asked for through the API go to the `notify_url` they name.
    pub refund_notify_url: Option<String>,
    /// How many entries each inspection log keeps — the call log ([`Sandbox::calls`]), the
    /// delivery log ([`Sandbox::deliveries`]) and the pushed events
    /// ([`Sandbox::pushed_events`]): the most recent ones (default [`LOG_CAP`], at least 1).
    /// They serve tests and `/_control/*` only, and grew for as long as the sandbox ran.
    pub log_cap: usize,
}

/// The default [`SandboxConfig::log_cap`]: far more than a test makes (the largest e2e tests
/// make a few hundred calls), a few megabytes of requests at most.
pub const LOG_CAP: usize = 10_000;

impl Default for SandboxConfig {
    /// The local defaults documented for `wxlocal` (never real credentials).
    fn default() -> Self {
        SandboxConfig {
            appid: "wx0000000000000001".into(),
            appsecret: "local-appsecret-0000000000000001".into(),
            mch_id: "1900000001".into(),
            api_key: "localapikey0000000000000000000001"
                .chars()
                .take(32)
                .collect(),
            sub_mch_id: None,
            sub_appid: None,
            push_url: None,
            push_token: "localpushtoken".into(),
            push_aes_key: None,
            time_scale: 1.0,
            auto_audit: true,
            refund_interval_ms: mch::REFUND_INTERVAL_MS,
            refund_notify_url: None,
            log_cap: LOG_CAP,
        }
    }
}

/// Appends `item` to an inspection log that keeps the `cap` most recent entries (at least
/// one); each entry it drops, oldest first, goes to `dropped`.
pub(crate) fn push_recent<T>(
    log: &mut VecDeque<T>,
    item: T,
    cap: usize,
    mut dropped: impl FnMut(T),
) {
    log.push_back(item);
    while log.len() > cap.max(1) {
        if let Some(old) = log.pop_front() {
            dropped(old);
        }
    }
}

/// An error the platform API answers with: `{"errcode", "errmsg"}` (HTTP 200, as WeChat).
#[derive(Debug, Clone)]
pub struct WxErr {
    pub code: i64,
    pub msg: String,
}

impl WxErr {
    pub fn new(code: i64, msg: impl Into<String>) -> Self {
        WxErr {
            code,
            msg: msg.into(),
        }
    }
    /// WeChat's answer for a body that is not what the API expects.
    pub fn format(what: impl std::fmt::Display) -> Self {
        WxErr::new(47001, format!("data format error hint: {what}"))
    }
    pub fn missing(field: &str) -> Self {
        WxErr::format(format!("missing {field}"))
    }
}

pub type WxResult = Result<Value, WxErr>;

/// Everything the sandbox remembers. Replaced wholesale by `/_control/reset`. With a state
/// file, `seq`, `pay`, `platform`, `shop` and `funds` are kept across restarts, and so is
/// the clock's offset, which lives in [`Inner::clock`] ([`persist`]).
#[derive(Default)]
pub struct State {
    /// Bumped by reset; background tasks of an older epoch stop touching state.
    pub epoch: u64,
    pub seq: u64,
    /// The most recent calls ([`SandboxConfig::log_cap`]): API path and request.
    pub calls: VecDeque<(String, Value)>,
    pub faults: Vec<Fault>,
    pub pay: mch::PayState,
    pub platform: platform::PlatformState,
    pub shop: shop::ShopState,
    pub funds: funds::FundsState,
    pub out: deliver::DeliveryState,
}

impl State {
    /// A fresh number for ids (monotonic within an epoch).
    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }
}

pub(crate) struct Inner {
    cfg: RwLock<SandboxConfig>,
    pub(crate) clock: Clock,
    pub(crate) http: reqwest::Client,
    /// The receivers' URLs (notifications, pushes) parsed once, not at every attempt.
    pub(crate) urls: wxshop::urls::ParsedUrls,
    st: Mutex<State>,
    /// Where the state is kept, for a sandbox opened with [`Sandbox::with_state_file`].
    persist: Option<Arc<persist::Persist>>,
}

impl Drop for Inner {
    /// The last changes, if the writer had not saved them yet (everything, after a failed
    /// write: [`Sandbox::flush`]); then the writer stops.
    fn drop(&mut self) {
        if let Some(p) = &self.persist {
            if p.retry_now() || p.behind() {
                let clock_offset_ms = self.clock.offset_ms();
                let st = self.st.get_mut().unwrap_or_else(|e| e.into_inner());
                p.save(|| Some((st, clock_offset_ms)));
            }
            p.close();
        }
    }
}

/// The state lock, held. A mutable borrow counts as a change: with a state file, the change
/// is queued for the writer when the guard drops, still under the lock.
pub(crate) struct StGuard<'a> {
    guard: MutexGuard<'a, State>,
    persist: Option<&'a persist::Persist>,
    changed: bool,
}

impl std::ops::Deref for StGuard<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.guard
    }
}

impl std::ops::DerefMut for StGuard<'_> {
    fn deref_mut(&mut self) -> &mut State {
        self.changed = true;
        &mut self.guard
    }
}

impl Drop for StGuard<'_> {
    fn drop(&mut self) {
        if let (true, Some(p)) = (self.changed, self.persist) {
            p.touch();
        }
    }
}

/// The sandbox. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Sandbox {
    pub(crate) inner: Arc<Inner>,
}

impl Sandbox {
    pub fn new(cfg: SandboxConfig) -> Sandbox {
        Sandbox::with_clock(cfg, Clock::default())
    }

    /// Shares a clock with the app, so `Clock::advance` moves both (token expiry, 5-s rule).
    pub fn with_clock(cfg: SandboxConfig, clock: Clock) -> Sandbox {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        Sandbox {
            inner: Arc::new(Inner {
                cfg: RwLock::new(cfg),
                clock,
                http,
                urls: wxshop::urls::ParsedUrls::new(),
                st: Mutex::new(State::default()),
                persist: None,
            }),
        }
    }

    /// A sandbox that keeps its state in `path` (a JSON snapshot, created if absent, and a
    /// journal beside it, `.journal` for `.json`): what an earlier
    /// sandbox left there is read back, and every change is saved before the sandbox answers
    /// or notifies anyone ([`persist`]). Work that was under way when it stopped resumes:
    /// automatic audits, refunds being processed, bank transfers of confirmed withdrawals.
    /// Needs a Tokio runtime (its writer is a task).
    pub fn with_state_file(
        cfg: SandboxConfig,
        clock: Clock,
        path: &std::path::Path,
    ) -> Result<Sandbox, String> {
        let (mut state, clock_offset_ms, batch) = match persist::load(path)? {
            Some(k) => (k.state, k.clock_offset_ms, k.batch),
            None => (State::default(), clock.offset_ms(), 0),
        };
        // The sandbox's time resumes where it was moved to before the restart.
        clock.advance(clock_offset_ms - clock.offset_ms());
        // Written at once: from now on the files exist beside the store they belong to.
        let p = Arc::new(persist::Persist::create(
            path,
            &mut state,
            clock_offset_ms,
            batch,
        )?);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        let sb = Sandbox {
            inner: Arc::new(Inner {
                cfg: RwLock::new(cfg),
                clock,
                http,
                urls: wxshop::urls::ParsedUrls::new(),
                st: Mutex::new(state),
                persist: Some(p.clone()),
            }),
        };
        spawn_writer(Arc::downgrade(&sb.inner), p);
        sb.resume();
        Ok(sb)
    }

    /// The file the state is kept in, if any.
    pub fn state_file(&self) -> Option<&std::path::Path> {
        self.inner.persist.as_deref().map(|p| p.path.as_path())
    }

    /// Returns once every change made so far is in the state file (at once without one).
    pub async fn saved(&self) {
        if let Some(p) = &self.inner.persist {
            p.saved().await;
        }
    }

    /// As [`Sandbox::saved`]; and after a write to the state file failed (a full disk), whose
    /// full snapshot is retried 1 to 30 s apart (or after as many changes again as the
    /// journal's threshold), tries it now (`serve` stopping: the disk may have room again).
    pub async fn flush(&self) {
        if let Some(p) = &self.inner.persist {
            p.retry_now();
            p.saved().await;
        }
    }

    /// `out_product_id` → WeChat's `product_id` of every product not deleted.
    pub fn product_ids(&self) -> std::collections::BTreeMap<String, u64> {
        self.st()
            .shop
            .products
            .values()
            .filter(|p| !p.deleted)
            .map(|p| (p.out_product_id.clone(), p.product_id))
            .collect()
    }

    /// Restarts what a stopped sandbox left under way (timers do not survive a process).
    fn resume(&self) {
        shop::resume(self);
        mch::resume(self);
        funds::resume(self);
    }

    /// A snapshot of the configuration.
    pub fn cfg(&self) -> SandboxConfig {
        match self.inner.cfg.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Where events go; for stacks that learn their own address only after binding.
    pub fn set_push_url(&self, url: Option<String>) {
        match self.inner.cfg.write() {
            Ok(mut c) => c.push_url = url,
            Err(p) => p.into_inner().push_url = url,
        }
    }

    pub fn set_auto_audit(&self, on: bool) {
        match self.inner.cfg.write() {
            Ok(mut c) => c.auto_audit = on,
            Err(p) => p.into_inner().auto_audit = on,
        }
    }

    /// See [`SandboxConfig::log_cap`] (0 counts as 1); longer logs are cut at their next entry.
    pub fn set_log_cap(&self, cap: usize) {
        let cap = cap.max(1);
        match self.inner.cfg.write() {
            Ok(mut c) => c.log_cap = cap,
            Err(p) => p.into_inner().log_cap = cap,
        }
    }

    /// [`SandboxConfig::log_cap`], without copying the configuration.
    pub(crate) fn log_cap(&self) -> usize {
        match self.inner.cfg.read() {
            Ok(c) => c.log_cap,
            Err(p) => p.into_inner().log_cap,
        }
    }

    /// See [`SandboxConfig::refund_interval_ms`] (negative counts as 0).
    pub fn set_refund_interval_ms(&self, ms: i64) {
        let ms = ms.max(0);
        match self.inner.cfg.write() {
            Ok(mut c) => c.refund_interval_ms = ms,
            Err(p) => p.into_inner().refund_interval_ms = ms,
        }
    }

    /// The sandbox's clock. Move it with [`Sandbox::advance_clock`], which a state file keeps
    /// at once; a move made here directly is kept with the next change.
    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    /// Moves the sandbox's clock by `ms` (`/_control/clock`). With a state file the move is
    /// kept: what the sandbox stamps from now on is in the moved time, and after a restart
    /// its time must not jump back behind it.
    pub fn advance_clock(&self, ms: i64) {
        let mut st = self.st();
        // Under the state lock and counted as a change: the next snapshot has the offset.
        st.changed = true;
        self.inner.clock.advance(ms);
    }

    pub fn now_ms(&self) -> i64 {
        self.inner.clock.now_ms()
    }

    /// Does what WeChat does by itself once its clock passes a deadline: an unpaid component
    /// order past its `expire_time` is cancelled and `open_product_order_cancel` pushed
    /// ([`shop::expire_unpaid`]); a funds QR code past its lifetime expires, closing the
    /// withdrawal it was for ([`funds::expire_qrcodes`]). The sandbox runs it before every
    /// request it answers and right after `/_control/clock` moves the clock, so it happens at
    /// a moment a test chooses, never behind its back; a test that moves a shared clock
    /// ([`Sandbox::clock`]) directly may call it. Costs a look at two index entries when
    /// nothing is due.
    pub fn expire_due(&self) {
        shop::expire_unpaid(self);
        funds::expire_qrcodes(self);
    }

    /// The state lock. Never held across an `.await`.
    pub(crate) fn st(&self) -> StGuard<'_> {
        let guard = match self.inner.st.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        StGuard {
            guard,
            persist: self.inner.persist.as_deref(),
            changed: false,
        }
    }

    /// `d` seconds of WeChat time in real time.
    pub(crate) fn scaled(&self, secs: f64) -> Duration {
        let scale = self.cfg().time_scale;
        let s = secs * scale;
        if s.is_finite() && s > 0.0 {
            Duration::from_secs_f64(s)
        } else {
            Duration::ZERO
        }
    }

    /// Requests received by APIs whose path ends with `path_suffix` (e.g. `shop/order/pay`,
    /// `pay/unifiedorder`): the JSON body, or the XML fields / query as a JSON object. Among
    /// the most recent [`SandboxConfig::log_cap`] calls only, oldest first.
    pub fn calls(&self, path_suffix: &str) -> Vec<Value> {
        let suffix = path_suffix.trim_start_matches('/');
        self.st()
            .calls
            .iter()
            .filter(|(p, _)| p.ends_with(suffix))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Payment notifications for `out_trade_no` that our endpoint acknowledged with
    /// `return_code` SUCCESS (duplicates count; failed attempts do not), among the attempts
    /// the delivery log still holds ([`SandboxConfig::log_cap`]).
    pub fn notifications_delivered(&self, out_trade_no: &str) -> usize {
        self.st().out.acked(deliver::Kind::Pay, out_trade_no)
    }

    /// Refund notifications for `out_refund_no` that were acknowledged (as above).
    pub fn refund_notifications_delivered(&self, out_refund_no: &str) -> usize {
        self.st().out.acked(deliver::Kind::Refund, out_refund_no)
    }

    /// The most recent delivery attempts (pay, refund, push; [`SandboxConfig::log_cap`]),
    /// oldest first.
    pub fn deliveries(&self) -> Vec<Value> {
        self.st().out.log_json()
    }

    /// The most recent events pushed to `push_url` ([`SandboxConfig::log_cap`]; the plaintext
    /// event, before any encryption), oldest first.
    pub fn pushed_events(&self) -> Vec<Value> {
        self.st().out.pushed.iter().cloned().collect()
    }

    /// Forgets everything; background deliveries of the old state stop.
    pub fn reset(&self) {
        let mut st = self.st();
        if let Some(p) = self.inner.persist.as_deref() {
            // The fresh maps cannot say what they lost: the next batch writes them whole.
            p.replace_all();
        }
        let epoch = st.epoch + 1;
        *st = State::default();
        st.epoch = epoch;
    }

    /// The routes, relative to `/sandbox`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/mch/{*path}", only(post(mch_route), "POST"))
            .route("/api/cgi-bin/token", only(get(token_route), "GET"))
            .route(
                "/api/cgi-bin/stable_token",
                only(post(stable_token_route), "POST"),
            )
            .route("/api/sns/jscode2session", only(get(jscode_route), "GET"))
            .route("/api/shop/{*path}", only(post(shop_route), "POST"))
            .route("/_control/pay", only(post(control_pay), "POST"))
            .route("/_control/login", only(post(control_login), "POST"))
            .route("/_control/audit", only(post(control_audit), "POST"))
            .route(
                "/_control/platform_delist",
                only(post(control_platform_delist), "POST"),
            )
            .route(
                "/_control/tokens/expire",
                only(post(control_expire_tokens), "POST"),
            )
            .route(
                "/_control/expire_tokens",
                only(post(control_expire_tokens), "POST"),
            )
            .route("/_control/settle", only(post(control_settle), "POST"))
            .route("/_control/aftersale", only(post(control_aftersale), "POST"))
            .route("/_control/order", only(post(control_order), "POST"))
            .route(
                "/_control/refund_outcome",
                only(post(control_refund_outcome), "POST"),
            )
            .route("/_control/bill", only(post(control_bill), "POST"))
            .route(
                "/_control/merchant_refund",
                only(post(control_merchant_refund), "POST"),
            )
            .route("/_control/funds/qrcode", only(post(control_qrcode), "POST"))
            .route(
                "/_control/funds/withdraw",
                only(post(control_withdraw), "POST"),
            )
            .route("/_control/funds/flow", only(post(control_flow), "POST"))
            .route(
                "/_control/faults",
                only(
                    post(control_faults_add)
                        .delete(control_faults_clear)
                        .get(control_faults_list),
                    "POST, DELETE or GET",
                ),
            )
            .route(
                "/_control/notifications",
                only(
                    post(control_notifications).get(control_notifications_log),
                    "POST or GET",
                ),
            )
            .route("/_control/clock", only(post(control_clock), "POST"))
            .route("/_control/reset", only(post(control_reset), "POST"))
            .route("/_control/calls", only(get(control_calls), "GET"))
            .route("/_control/state", only(get(control_state), "GET"))
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                answer_when_saved,
            ))
            .with_state(self.clone())
    }

    /// Records the call and applies any matching fault, then answers: with the fault's answer
    /// instead of the API's, or with the API's (`apply`), or — a `lost` fault — runs the API
    /// and loses its answer (HTTP 500), as when WeChat applied a call whose reply never came.
    async fn answer(
        &self,
        path: &str,
        record: Value,
        xml: bool,
        apply: impl FnOnce() -> Response,
    ) -> Response {
        if let Some(r) = self.intercept(path, record, xml).await {
            return r;
        }
        if self.take_after(path, FaultMode::Lost).is_some() {
            drop(apply());
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                "sandbox: injected fault: the call was applied, its answer lost",
            )
                .into_response();
        }
        if let Some(f) = self.take_after(path, FaultMode::Slow) {
            let answer = apply();
            tokio::time::sleep(Duration::from_millis(f.delay_ms.unwrap_or(1000))).await;
            return answer;
        }
        apply()
    }

    /// Takes a matching fault of a mode applied with the call (`lost`, `slow`), if one is due.
    fn take_after(&self, path: &str, mode: FaultMode) -> Option<Fault> {
        let mut st = self.st();
        take_fault_where(&mut st.faults, path, |f| f.mode == mode)
    }

    /// Records the call and applies any matching fault other than `lost` (which
    /// [`Sandbox::answer`] applies). `Some` = answer with this instead.
    async fn intercept(&self, path: &str, record: Value, xml: bool) -> Option<Response> {
        let cap = self.log_cap();
        let (hit, request) = {
            let mut st = self.st();
            push_recent(&mut st.calls, (path.to_owned(), record), cap, drop);
            let hit = take_fault_where(&mut st.faults, path, |f| {
                !matches!(f.mode, FaultMode::Lost | FaultMode::Slow)
            });
            // A merchant-API error reply is signed like the request (its `sign_type`) and
            // echoes its ids, as WeChat's own error replies are: read them only when needed.
            let request = match &hit {
                Some(f) if xml && f.mode == FaultMode::Errcode => {
                    st.calls.back().map(|(_, v)| mch::fields_of(v))
                }
                _ => None,
            };
            (hit, request)
        };
        let fault = hit?;
        match fault.mode {
            FaultMode::Delay => {
                tokio::time::sleep(Duration::from_millis(fault.delay_ms.unwrap_or(1000))).await;
                None
            }
            FaultMode::Lost | FaultMode::Slow => None,
            FaultMode::Http500 => Some(
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "sandbox: injected HTTP 500",
                )
                    .into_response(),
            ),
            FaultMode::Garbled => Some(
                (
                    StatusCode::OK,
                    [(axum::http::header::CONTENT_TYPE, "text/html")],
                    "<html><body>sandbox: injected garbled answer</body></html>",
                )
                    .into_response(),
            ),
            FaultMode::Errcode => {
                if xml {
                    Some(mch::injected_error(
                        self,
                        &request.unwrap_or_default(),
                        fault.err_code.as_deref().unwrap_or("SYSTEMERROR"),
                    ))
                } else {
                    Some(wx_json(Err(WxErr::new(
                        fault.errcode.unwrap_or(-1),
                        "system error (sandbox: injected fault)",
                    ))))
                }
            }
        }
    }
}

/// Every request first meets what the clock made due ([`Sandbox::expire_due`]): an order
/// read after its `expire_time` reads cancelled, as at WeChat. Every answer waits until what
/// was done before it is in the state file: the caller may write down what it learnt, and the
/// sandbox must still know it after a crash.
async fn answer_when_saved(
    AxState(sb): AxState<Sandbox>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    sb.expire_due();
    let resp = next.run(req).await;
    sb.saved().await;
    resp
}

/// `m`, whose methods are `allowed`, answering any other method 405 with a body that says
/// which to use, in the gateway's error shape (`{code, message}`, as `wxlocal`'s gateway
/// answers a wrong method on /fn and /admin paths): axum's own 405 has an empty body. axum
/// still adds the `Allow` header. The sandbox is mounted at `/sandbox` (`bind`, the gateway).
/// UNVERIFIED what WeChat answers a wrong method (its APIs are POST, `token` and
/// `jscode2session` GET; no WECHAT_*.md section covers it): only the body is ours, the status
/// stays 405.
fn only(
    m: axum::routing::MethodRouter<Sandbox>,
    allowed: &'static str,
) -> axum::routing::MethodRouter<Sandbox> {
    m.fallback(
        move |method: axum::http::Method, uri: axum::http::Uri| async move {
            let message = format!(
                "{method} is not allowed on /sandbox{}; use {allowed} (docs/SANDBOX.md)",
                uri.path()
            );
            (
                StatusCode::METHOD_NOT_ALLOWED,
                Json(json!({"code": "METHOD_NOT_ALLOWED", "message": message})),
            )
        },
    )
}

/// The writer of a sandbox with a state file: one batch at a time, covering every change
/// made before it was taken. Ends with the sandbox.
fn spawn_writer(inner: Weak<Inner>, p: Arc<persist::Persist>) {
    tokio::spawn(async move {
        loop {
            p.next_change().await;
            if inner.strong_count() == 0 {
                return;
            }
            let (w, weak) = (p.clone(), inner.clone());
            let batch = tokio::task::spawn_blocking(move || {
                // Kept alive for the batch; if it was the last, the sandbox drops after it.
                let inner = weak.upgrade();
                w.save(|| {
                    let inner = inner.as_ref()?;
                    let st = inner.st.lock().unwrap_or_else(|e| e.into_inner());
                    Some((st, inner.clock.offset_ms()))
                });
            });
            if batch.await.is_err() {
                return;
            }
        }
    });
}

/// Runs the sandbox alone (`wxlocal sandbox`), mounted at `/sandbox` like in the gateway.
pub async fn serve(addr: SocketAddr, cfg: SandboxConfig) -> std::io::Result<()> {
    let running = bind(addr, cfg).await?;
    tracing::info!(addr = %running.addr, "WeChat sandbox listening under /sandbox");
    running
        .handle
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?
}

/// A sandbox bound to a socket and serving in the background (tests bind `127.0.0.1:0`).
pub struct Running {
    pub addr: SocketAddr,
    pub sandbox: Sandbox,
    pub handle: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// `http://127.0.0.1:PORT/sandbox`.
    pub fn base_url(&self) -> String {
        format!("http://{}/sandbox", self.addr)
    }
}

/// Binds `addr` and serves the sandbox under `/sandbox` in a background task.
pub async fn bind(addr: SocketAddr, cfg: SandboxConfig) -> std::io::Result<Running> {
    let sandbox = Sandbox::new(cfg);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let app = Router::new().nest("/sandbox", sandbox.router());
    let handle = tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(Running {
        addr,
        sandbox,
        handle,
    })
}

// ---------------------------------------------------------------------------------------------
// Faults

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultMode {
    Errcode,
    Http500,
    Delay,
    /// The call is applied, then its answer is lost (HTTP 500): a retry meets what the
    /// first call did.
    Lost,
    /// The call is applied at once and answered `delay_ms` later (a slow way back): what the
    /// call set off (an audit verdict, a notification) can reach the caller before the answer.
    Slow,
    /// HTTP 200 with a body that is not the API's (an HTML page, as a proxy in the way may
    /// answer): the caller cannot tell what happened.
    Garbled,
}

/// One injected failure: which calls (`path` suffix or `*`), how, and how often. Unknown
/// fields are refused: a misspelt `count` would otherwise leave a fault on every call for as
/// long as the sandbox runs ([`Fault::check`]).
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    pub path: String,
    pub mode: FaultMode,
    /// Platform API errcode (default -1, "system busy").
    #[serde(default)]
    pub errcode: Option<i64>,
    /// Merchant API `err_code` (default `SYSTEMERROR`), answered as a business failure
    /// signed with the request's `sign_type`.
    #[serde(default)]
    pub err_code: Option<String>,
    /// Probability per matching call.
    #[serde(default)]
    pub rate: Option<f64>,
    /// Fail exactly the next `count` matching calls.
    #[serde(default)]
    pub count: Option<u64>,
    #[serde(default)]
    pub delay_ms: Option<u64>,
}

/// The most faults set at once (`/_control/faults`), the largest `count` and `delay_ms` one
/// takes: far more than a test needs, small enough that a typo cannot fail calls for ever or
/// hold one for hours.
pub const MAX_FAULTS: usize = 100;
pub const MAX_FAULT_COUNT: u64 = 10_000;
pub const MAX_FAULT_DELAY_MS: u64 = 60_000;

impl Fault {
    /// Why the control endpoint refuses this fault, naming the allowed range; `None` if it
    /// takes it.
    fn check(&self) -> Option<String> {
        if self.path.trim_start_matches('/').is_empty() {
            return Some("path: an API path suffix (e.g. pay/orderquery) or *".into());
        }
        if let Some(n) = self.count {
            if !(1..=MAX_FAULT_COUNT).contains(&n) {
                return Some(format!(
                    "count must be within 1..={MAX_FAULT_COUNT}, got {n}"
                ));
            }
        }
        if let Some(r) = self.rate {
            if !(0.0..=1.0).contains(&r) {
                return Some(format!("rate must be within 0.0..=1.0, got {r}"));
            }
        }
        if self.count.is_some() && self.rate.is_some() {
            return Some("give count or rate, not both".into());
        }
        if let Some(ms) = self.delay_ms {
            if ms > MAX_FAULT_DELAY_MS {
                return Some(format!(
                    "delay_ms must be within 0..={MAX_FAULT_DELAY_MS}, got {ms}"
                ));
            }
            if !matches!(self.mode, FaultMode::Delay | FaultMode::Slow) {
                return Some("delay_ms is for the delay and slow modes".into());
            }
        }
        if self.errcode == Some(0) {
            return Some("errcode must not be 0 (0 is WeChat's success)".into());
        }
        if let Some(c) = &self.err_code {
            if c.is_empty() || c.len() > 32 || !c.bytes().all(|b| b.is_ascii_graphic()) {
                return Some(
                    "err_code must be 1..=32 printable ASCII characters (e.g. SYSTEMERROR)".into(),
                );
            }
        }
        None
    }
}

fn fault_matches(f: &Fault, path: &str) -> bool {
    let p = f.path.trim_start_matches('/');
    p == "*" || path == p || path.ends_with(&format!("/{p}"))
}

fn take_fault_where(
    faults: &mut Vec<Fault>,
    path: &str,
    which: impl Fn(&Fault) -> bool,
) -> Option<Fault> {
    let idx = faults.iter().position(|f| {
        if !which(f) || !fault_matches(f, path) {
            return false;
        }
        match (f.count, f.rate) {
            (Some(n), _) => n > 0,
            (None, Some(r)) => rand::random::<f64>() < r,
            (None, None) => true,
        }
    })?;
    let f = faults[idx].clone();
    if let Some(n) = f.count {
        if n <= 1 {
            faults.remove(idx);
        } else {
            faults[idx].count = Some(n - 1);
        }
    }
    Some(f)
}

// ---------------------------------------------------------------------------------------------
// Helpers shared by the modules

/// The platform API's JSON answer: the payload plus `errcode: 0, errmsg: "ok"`, or the error.
pub(crate) fn wx_json(r: WxResult) -> Response {
    let v = match r {
        Ok(Value::Object(mut m)) => {
            m.insert("errcode".into(), json!(0));
            m.insert("errmsg".into(), json!("ok"));
            Value::Object(m)
        }
        Ok(_) => json!({"errcode": 0, "errmsg": "ok"}),
        Err(e) => json!({"errcode": e.code, "errmsg": e.msg}),
    };
    Json(v).into_response()
}

fn control_err(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({"error": msg.into()}))).into_response()
}

/// Why a control call was refused: its body (400: a field missing or of the wrong type, an
/// unknown action), or the sandbox's state, which does not allow it now (409).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlError {
    Malformed(String),
    Conflict(String),
}

impl ControlError {
    pub fn malformed(msg: impl Into<String>) -> Self {
        ControlError::Malformed(msg.into())
    }

    fn into_response(self) -> Response {
        match self {
            ControlError::Malformed(m) => control_err(StatusCode::BAD_REQUEST, m),
            ControlError::Conflict(m) => control_err(StatusCode::CONFLICT, m),
        }
    }
}

/// A refusal written as plain text is the state's (409); a malformed body says so
/// ([`ControlError::malformed`]).
impl From<String> for ControlError {
    fn from(m: String) -> Self {
        ControlError::Conflict(m)
    }
}

impl From<&str> for ControlError {
    fn from(m: &str) -> Self {
        ControlError::Conflict(m.to_owned())
    }
}

fn parse_json_body(body: &Bytes) -> Result<Value, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))
}

/// Lowercase hex MD5.
pub(crate) fn md5_hex(data: &[u8]) -> String {
    use md5::{Digest, Md5};
    hex::encode(Md5::digest(data))
}

/// A random string of `[A-Za-z0-9]`.
pub(crate) fn random_alnum(n: usize) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..n)
        .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
        .collect()
}

/// A random string of decimal digits.
pub(crate) fn random_digits(n: usize) -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..n)
        .map(|_| char::from(b'0' + rng.gen_range(0..10u8)))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// API routes

async fn mch_route(
    AxState(sb): AxState<Sandbox>,
    Path(path): Path<String>,
    body: Bytes,
) -> Response {
    let path = format!("mch/{path}");
    let record = match wxshop::pay::xml::decode(&body) {
        Ok(f) => json!(f),
        Err(_) => json!({"_raw": String::from_utf8_lossy(&body)}),
    };
    sb.answer(&path, record, true, || mch::handle(&sb, &path, &body))
        .await
}

async fn token_route(
    AxState(sb): AxState<Sandbox>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    sb.answer("api/cgi-bin/token", json!(q), false, || {
        wx_json(platform::token(&sb, &q))
    })
    .await
}

async fn stable_token_route(AxState(sb): AxState<Sandbox>, body: Bytes) -> Response {
    let v = match parse_json_body(&body) {
        Ok(v) => v,
        Err(_) => {
            let _ = sb
                .intercept("api/cgi-bin/stable_token", json!({}), false)
                .await;
            return wx_json(Err(WxErr::new(47001, "data format error")));
        }
    };
    sb.answer("api/cgi-bin/stable_token", v.clone(), false, || {
        wx_json(platform::stable_token(&sb, &v))
    })
    .await
}

async fn jscode_route(
    AxState(sb): AxState<Sandbox>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    sb.answer("api/sns/jscode2session", json!(q), false, || {
        wx_json(platform::jscode2session(&sb, &q))
    })
    .await
}

async fn shop_route(
    AxState(sb): AxState<Sandbox>,
    Path(path): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let api = format!("shop/{path}");
    let full = format!("api/{api}");
    let is_upload = api == "shop/img/upload";
    let parsed = if is_upload {
        Ok(shop::upload_fields(&headers, &q, &body))
    } else {
        parse_json_body(&body)
    };
    let record = parsed.clone().unwrap_or_else(|_| json!({}));
    sb.answer(&full, record, false, || {
        if let Err(e) = platform::check_access_token(&sb, q.get("access_token")) {
            return wx_json(Err(e));
        }
        let v = match parsed {
            Ok(v) if v.is_object() => v,
            _ => return wx_json(Err(WxErr::new(47001, "data format error"))),
        };
        let r = if let Some(name) = api.strip_prefix("shop/funds/") {
            funds::handle(&sb, name, &v)
        } else {
            shop::handle(&sb, &api, &v, body.len())
        };
        wx_json(r)
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Control routes

/// The user pays (WeChat's cashier): `{"prepay_id"}` (also as `package`, `prepay_id=…`) or
/// `{"out_trade_no"}` for a WeChat Pay order, `{"out_order_id"}` for a fund_type=1 order;
/// `"wait": true` answers after the notification was delivered. 409 for what the cashier
/// refuses (paid already, closed, expired, an unknown or 2-hour-old prepay_id).
async fn control_pay(AxState(sb): AxState<Sandbox>, body: Bytes) -> Response {
    let v = match parse_json_body(&body) {
        Ok(v) => v,
        Err(e) => return control_err(StatusCode::BAD_REQUEST, e),
    };
    let wait = v.get("wait").and_then(Value::as_bool).unwrap_or(false);
    let prepay_id = v
        .get("prepay_id")
        .or_else(|| v.get("package"))
        .and_then(Value::as_str)
        .map(|p| p.trim_start_matches("prepay_id="));
    let r = if let Some(no) = v.get("out_trade_no").and_then(Value::as_str) {
        mch::user_pays(&sb, mch::Cashier::OutTradeNo(no))
    } else if let Some(p) = prepay_id {
        mch::user_pays(&sb, mch::Cashier::PrepayId(p))
    } else if let Some(no) = v.get("out_order_id").and_then(Value::as_str) {
        shop::user_pays_order(&sb, no)
    } else {
        return control_err(
            StatusCode::BAD_REQUEST,
            "give prepay_id or out_trade_no (WeChat Pay order), or out_order_id (fund_type=1 \
             order), a string",
        );
    };
    match r {
        Ok((result, job)) => {
            if let Some(job) = job {
                if wait {
                    job.await;
                } else {
                    tokio::spawn(job);
                }
            }
            Json(result).into_response()
        }
        Err(e) => control_err(StatusCode::CONFLICT, e),
    }
}

/// `{"out_trade_no", "refund_fee"}`: a person refunds that much of the paid order in the
/// merchant platform, not through our API ([`mch::merchant_refunds`]); its notification
/// (`VENDOR_PLATFORM`) follows as WeChat's would. Answers the refund (WeChat's
/// `out_refund_no`), or 409 with why WeChat would refuse it.
async fn control_merchant_refund(AxState(sb): AxState<Sandbox>, body: Bytes) -> Response {
    let v = match parse_json_body(&body) {
        Ok(v) => v,
        Err(e) => return control_err(StatusCode::BAD_REQUEST, e),
    };
    let (Some(no), Some(fee)) = (
        v.get("out_trade_no").and_then(Value::as_str),
        v.get("refund_fee").and_then(Value::as_i64),
    ) else {
        return control_err(
            StatusCode::BAD_REQUEST,
            "give out_trade_no and refund_fee (fen)",
        );
    };
    match mch::merchant_refunds(&sb, no, fee) {
        Ok(refund) => Json(refund).into_response(),
        Err(e) => control_err(StatusCode::CONFLICT, e),
    }
}

async fn control_login(AxState(sb): AxState<Sandbox>, body: Bytes) -> Response {
    let v = match parse_json_body(&body) {
        Ok(v) => v,
        Err(e) => return control_err(StatusCode::BAD_REQUEST, e),
    };
    let user = v.get("user").and_then(Value::as_str).unwrap_or("alice");
    if user.is_empty() {
        return control_err(StatusCode::BAD_REQUEST, "user must not be empty");
    }
    Json(platform::mint_code(&sb, user)).into_response()
}

async fn control_audit(AxState(sb): AxState<Sandbox>, body: Bytes) -> Response {
    let v = match parse_json_body(&body) {
        Ok(v) => v,
        Err(e) => return control_err(StatusCode::BAD_REQUEST, e),
    };
    let approve = v.get("approve").and_then(Value::as_bool).unwrap_or(true);
    let reason = v
        .get("reason")
        .and_then(Value::as_str)
        .unwrap_or(if approve { "" } else { "不符合平台规则" })
        .to_owned();
    let r = if let Some(p) = v.get("out_product_id").and_then(Value::as_str) {
        shop::verdict_spu(&sb, p, approve, &reason)
    } else if let Some(a) = v.get("audit_id").and_then(Value::as_str) {
        let push = v.get("push").and_then(Value::as_bool).unwrap_or(true);
        shop::verdict_qualification(&sb, a, approve, &reason, push)
    } else {
        // The body's fault, not a state that refuses it.
        return control_err(
            StatusCode::BAD_REQUEST,
            "give out_product_id (a product) or audit_id (a brand or category audit), a string",
        );
    };
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => control_err(StatusCode::CONFLICT, e),
    }
}

/// `{"out_product_id", "restore"?, "push"?, "reason"?}`: WeChat's platform takes the product
/// off sale on its own (status 13), or with `"restore": true` puts it back (5), pushing
/// `open_product_spu_status_update` unless `"push": false` ([`shop::platform_delist`]). 400
/// for a body it does not take (an unknown field included), 409 for a product that cannot be
/// delisted or restored so.
async fn control_platform_delist(AxState(sb): AxState<Sandbox>, body: Bytes) -> Response {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Req {
        out_product_id: String,
        #[serde(default)]
        restore: bool,
        #[serde(default = "yes")]
        push: bool,
        #[serde(default)]
        reason: Option<String>,
    }
    fn yes() -> bool {
        true
    }
    let r: Req = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return control_err(
                StatusCode::BAD_REQUEST,
                format!(
                    "{e}: give out_product_id, and optionally restore (bool), push (bool), \
                     reason (string)"
                ),
            )
        }
    };
    let reason = r.reason.as_deref().unwrap_or("违反平台规则");
    match shop::platform_delist(&sb, &r.out_product_id, r.restore, r.push, reason) {
        Ok(v) => Json(v).into_response(),
        Err(e) => control_err(StatusCode::CONFLICT, e),
    }
}

async fn control_expire_tokens(AxState(sb): AxState<Sandbox>) -> Response {
    let n = platform::expire_all(&sb);
    Json(json!({"expired": n})).into_response()
}

async fn control_settle(AxState(sb): AxState<Sandbox>, body: Bytes) -> Response {
    let v = match parse_json_body(&body) {
        Ok(v) => v,
        Err(e) => return control_err(StatusCode::BAD_REQUEST, e),
    };
    let Some(no) = v.get("out_order_id").and_then(Value::as_str) else {
        return control_err(StatusCode::BAD_REQUEST, "give out_order_id");
    };
    match funds::settle(&sb, no) {
        Ok(v) => Json(v).into_response(),
        Err(e) => control_err(StatusCode::CONFLICT, e),
    }
}

/// The most refund outcomes waiting at once (`/_control/refund_outcome`), per kind (WeChat
/// Pay's, the trading component's).
pub const MAX_REFUND_OUTCOMES: u64 = 100;

/// `{"status": "REFUNDCLOSE" | "CHANGE", "count": n}`: the next `n` accepted refunds end that
/// way instead of `SUCCESS` (their notification says so). After `REFUNDCLOSE` the money is
/// refundable again; after `CHANGE` it left the merchant and waits at WeChat, as there.
/// `PLATFORM_REFUND_FAIL`, `PLATFORM_REFUNDING`: the next `n` after-sales the trading component
/// accepts (`ecaftersale/acceptrefund`) are not paid (16) or still being paid (15, no push,
/// until `/_control/aftersale` `platform_refund` finishes them). `count` is
/// 1..=[`MAX_REFUND_OUTCOMES`] (default 1), and no more than that many wait at
/// once: beyond, 400 naming the range (it used to be cut to 100 without a word, and any
/// number of calls could queue outcomes without end).
async fn control_refund_outcome(AxState(sb): AxState<Sandbox>, body: Bytes) -> Response {
    let v = match parse_json_body(&body) {
        Ok(v) => v,
        Err(e) => return control_err(StatusCode::BAD_REQUEST, e),
    };
    // `Err(slow)`: the trading component's (`slow`: still paying, else failing).
    let status = match v.get("status").and_then(Value::as_str) {
        Some("REFUNDCLOSE") => Ok(mch::RefundStatus::RefundClose),
        Some("CHANGE") => Ok(mch::RefundStatus::Change),
        Some("PROCESSING") => Ok(mch::RefundStatus::Processing),
        Some("PLATFORM_REFUND_FAIL") => Err(false),
        Some("PLATFORM_REFUNDING") => Err(true),
        _ => {
            return control_err(
                StatusCode::BAD_REQUEST,
                "status: REFUNDCLOSE, CHANGE or PROCESSING (WeChat Pay refunds; PROCESSING \
                 stays so, as a refund to a bank card does for days), PLATFORM_REFUND_FAIL or \
                 PLATFORM_REFUNDING (the trading component's refund of an accepted \
                 after-sale: not paid, or still paying until /_control/aftersale \
                 platform_refund finishes it)",
            )
        }
    };
    let count = match v.get("count") {
        None => 1,
        Some(c) => match c.as_u64().filter(|n| (1..=MAX_REFUND_OUTCOMES).contains(n)) {
            Some(n) => n,
            None => {
                return control_err(
                    StatusCode::BAD_REQUEST,
                    format!("count must be within 1..={MAX_REFUND_OUTCOMES}, got {c}"),
                )
            }
        },
    };
    let mut st = sb.st();
    let pending = match status {
        Ok(_) => st.pay.refund_outcomes.len() as u64,
        Err(false) => st.shop.failing_refunds,
        Err(true) => st.shop.slow_refunds,
    };
    if pending + count > MAX_REFUND_OUTCOMES {
        return control_err(
            StatusCode::BAD_REQUEST,
            format!(
                "at most {MAX_REFUND_OUTCOMES} outcomes wait at once, {pending} already do: \
                 give count ≤ {}",
                MAX_REFUND_OUTCOMES - pending
            ),
        );
    }
    let status = match status {
        Ok(status) => status,
        Err(slow) => {
            let waiting = if slow {
                &mut st.shop.slow_refunds
            } else {
                &mut st.shop.failing_refunds
            };
            *waiting += count;
            let pending = *waiting;
            return Json(json!({"pending_outcomes": pending})).into_response();
        }
    };
    for _ in 0..count {
        st.pay.refund_outcomes.push_back(status);
    }
    Json(json!({"pending_outcomes": st.pay.refund_outcomes.len()})).into_response()
}

/// `{"garble": out_trade_no}`: that order's lines of every bill (its payment, its refunds)
/// carry amounts no parser reads, as a damaged bill would — what reconciliation must report
/// without giving up on the rest of the day. `{"creating": day}`: that day's bills are
/// answered `Bill Creating` (WeChat still making them); `{"failing": day, "return_msg"?}`:
/// answered with that failure (default `SYSTEMERROR`); either with `"bill_type"`
/// (`SUCCESS`, `REFUND`) for that bill only; until `{"created": day}`, which takes back every
/// such answer of the day.
async fn control_bill(AxState(sb): AxState<Sandbox>, body: Bytes) -> Response {
    let v = match parse_json_body(&body) {
        Ok(v) => v,
        Err(e) => return control_err(StatusCode::BAD_REQUEST, e),
    };
    let mut st = sb.st();
    let http_status = match v.get("http_status").map(Value::as_u64) {
        None => None,
        Some(Some(s @ 500..=599)) => u16::try_from(s).ok(),
        Some(_) => {
            return control_err(
                StatusCode::BAD_REQUEST,
                "http_status: a 5xx status (500 to 599) downloadbill answers instead",
            )
        }
    };
    let failing = match (
        v.get("creating").and_then(Value::as_str),
        v.get("failing").and_then(Value::as_str),
    ) {
        (Some(day), _) => Some((day, mch::BillFailure::Answer("Bill Creating".into()))),
        (None, Some(day)) => Some((
            day,
            match http_status {
                Some(status) => mch::BillFailure::Http(status),
                None => mch::BillFailure::Answer(
                    v.get("return_msg")
                        .and_then(Value::as_str)
                        .unwrap_or("SYSTEMERROR")
                        .to_owned(),
                ),
            },
        )),
        (None, None) => None,
    };
    if let Some((day, failure)) = failing {
        let key = match v.get("bill_type").and_then(Value::as_str) {
            None => day.to_owned(),
            Some(t @ ("SUCCESS" | "REFUND")) => format!("{day}/{t}"),
            Some(_) => {
                return control_err(
                    StatusCode::BAD_REQUEST,
                    "bill_type: SUCCESS or REFUND (leave it out for both)",
                )
            }
        };
        st.pay.bill_failures.insert(key, failure);
        return Json(json!({"failing": st.pay.bill_failures.len()})).into_response();
    }
    if let Some(day) = v.get("created").and_then(Value::as_str) {
        st.pay
            .bill_failures
            .retain(|k, _| k.split('/').next() != Some(day));
        return Json(json!({"failing": st.pay.bill_failures.len()})).into_response();
    }
    let Some(no) = v.get("garble").and_then(Value::as_str) else {
        return control_err(
            StatusCode::BAD_REQUEST,
            "garble: an out_trade_no; or creating / failing / created: a yyyyMMdd day",
        );
    };
    st.pay.garbled_bill_lines.insert(no.to_owned());
    Json(json!({"garbled": st.pay.garbled_bill_lines.len()})).into_response()
}

async fn control_aftersale(AxState(sb): AxState<Sandbox>, body: Bytes) -> Response {
    let v = match parse_json_body(&body) {
        Ok(v) => v,
        Err(e) => return control_err(StatusCode::BAD_REQUEST, e),
    };
    match shop::user_aftersale(&sb, &v) {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn control_order(AxState(sb): AxState<Sandbox>, body: Bytes) -> Response {
    let v = match parse_json_body(&body) {
        Ok(v) => v,
        Err(e) => return control_err(StatusCode::BAD_REQUEST, e),
    };
    match shop::user_order(&sb, &v) {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn control_qrcode(AxState(sb): AxState<Sandbox>, body: Bytes) -> Response {
    let v = match parse_json_body(&body) {
        Ok(v) => v,
        Err(e) => return control_err(StatusCode::BAD_REQUEST, e),
    };
    let (Some(t), Some(s)) = (
        v.get("qrcode_ticket").and_then(Value::as_str),
        v.get("status").and_then(Value::as_i64),
    ) else {
        return control_err(
            StatusCode::BAD_REQUEST,
            "give qrcode_ticket and status 0..=4",
        );
    };
    match funds::set_qrcode_status(&sb, t, s) {
        Ok(v) => Json(v).into_response(),
        Err(e) => control_err(StatusCode::CONFLICT, e),
    }
}

async fn control_withdraw(AxState(sb): AxState<Sandbox>, body: Bytes) -> Response {
    let v = match parse_json_body(&body) {
        Ok(v) => v,
        Err(e) => return control_err(StatusCode::BAD_REQUEST, e),
    };
    let (Some(no), Some(s)) = (
        v.get("out_request_no").and_then(Value::as_str),
        v.get("status").and_then(Value::as_str),
    ) else {
        return control_err(
            StatusCode::BAD_REQUEST,
            "give out_request_no and status (SUCCESS, FAIL, REFUND, CLOSE, …)",
        );
    };
    let reason = v.get("reason").and_then(Value::as_str);
    match funds::set_withdraw_status(&sb, no, s, reason) {
        Ok(v) => Json(v).into_response(),
        Err(e) => control_err(StatusCode::CONFLICT, e),
    }
}

async fn control_flow(AxState(sb): AxState<Sandbox>, body: Bytes) -> Response {
    let v = match parse_json_body(&body) {
        Ok(v) => v,
        Err(e) => return control_err(StatusCode::BAD_REQUEST, e),
    };
    match funds::control_flow(&sb, &v) {
        Ok(v) => Json(v).into_response(),
        Err(e) => control_err(StatusCode::BAD_REQUEST, e),
    }
}

async fn control_faults_add(AxState(sb): AxState<Sandbox>, body: Bytes) -> Response {
    let f: Fault = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(e) => return control_err(StatusCode::BAD_REQUEST, format!("bad fault: {e}")),
    };
    if let Some(why) = f.check() {
        return control_err(StatusCode::BAD_REQUEST, format!("bad fault: {why}"));
    }
    let mut st = sb.st();
    if st.faults.len() >= MAX_FAULTS {
        return control_err(
            StatusCode::BAD_REQUEST,
            format!(
                "bad fault: at most {MAX_FAULTS} faults at once; clear them with DELETE \
                 /_control/faults"
            ),
        );
    }
    st.faults.push(f);
    Json(json!({"faults": st.faults})).into_response()
}

async fn control_faults_clear(AxState(sb): AxState<Sandbox>) -> Response {
    sb.st().faults.clear();
    Json(json!({"faults": []})).into_response()
}

async fn control_faults_list(AxState(sb): AxState<Sandbox>) -> Response {
    Json(json!({"faults": sb.st().faults})).into_response()
}

/// The most extra copies of each notification (`/_control/notifications` `duplicate`).
pub const MAX_DUPLICATE: u64 = 10;

async fn control_notifications(AxState(sb): AxState<Sandbox>, body: Bytes) -> Response {
    let v = match parse_json_body(&body) {
        Ok(v) => v,
        Err(e) => return control_err(StatusCode::BAD_REQUEST, e),
    };
    let flush = {
        let mut st = sb.st();
        let o = &mut st.out.opts;
        if let Some(d) = v.get("duplicate") {
            match d.as_u64().filter(|n| *n <= MAX_DUPLICATE) {
                Some(n) => o.duplicate = n as usize,
                None => {
                    return control_err(
                        StatusCode::BAD_REQUEST,
                        format!("duplicate must be within 0..={MAX_DUPLICATE}, got {d}"),
                    )
                }
            }
        }
        if let Some(b) = v.get("omit_sign_type").and_then(Value::as_bool) {
            o.omit_sign_type = b;
        }
        if let Some(f) = v.get("push_format").and_then(Value::as_str) {
            o.push_xml = f.eq_ignore_ascii_case("xml");
        }
        let mut flush = v.get("flush").and_then(Value::as_bool).unwrap_or(false);
        if let Some(b) = v.get("reorder").and_then(Value::as_bool) {
            o.reorder = b;
            flush |= !b;
        }
        flush
    };
    if flush {
        deliver::flush_held(&sb);
    }
    let o = sb.st().out.opts.clone();
    Json(
        json!({"duplicate": o.duplicate, "reorder": o.reorder, "omit_sign_type": o.omit_sign_type}),
    )
    .into_response()
}

async fn control_notifications_log(AxState(sb): AxState<Sandbox>) -> Response {
    Json(json!({"deliveries": sb.deliveries(), "pushed": sb.pushed_events()})).into_response()
}

async fn control_clock(AxState(sb): AxState<Sandbox>, body: Bytes) -> Response {
    let v = match parse_json_body(&body) {
        Ok(v) => v,
        Err(e) => return control_err(StatusCode::BAD_REQUEST, e),
    };
    match clock_move(&v, sb.inner.clock.offset_ms()) {
        Ok(Some(ms)) => {
            sb.advance_clock(ms);
            // What the move made due happens now, as WeChat's timers would have fired.
            sb.expire_due();
        }
        Ok(None) => {}
        Err(e) => return control_err(StatusCode::BAD_REQUEST, e),
    }
    Json(json!({"now_ms": sb.now_ms()})).into_response()
}

/// The most `/_control/clock` moves the sandbox's clock in one call, either way: 400 days,
/// past the longest span anything here waits (WeChat Pay keeps bills three months).
const CLOCK_STEP_MAX_MS: i64 = 400 * 86_400_000;
/// The most the sandbox's clock may be away from real time, either way (100 years): far
/// from where its millisecond arithmetic could overflow.
const CLOCK_OFFSET_MAX_MS: i64 = 36_525 * 86_400_000;

/// What a `/_control/clock` body asks: `{}` reads the clock, `{"advance_ms": n}` moves it
/// by a whole number of ms, 1 to 400 days either way (negative moves back), and the total
/// move stays within 100 years. Anything else is refused, naming what is allowed: a move
/// silently ignored (a string, a fraction, a misspelt field) made a test run at the wrong
/// time, and an unbounded one overflowed the clock.
fn clock_move(v: &Value, offset_ms: i64) -> Result<Option<i64>, String> {
    const ALLOWED: &str = "the body is {} or {\"advance_ms\": n}, n a whole number of ms \
        from -34,560,000,000 to 34,560,000,000 (400 days), not 0";
    let Some(fields) = v.as_object() else {
        return Err(format!("not a JSON object: {ALLOWED}"));
    };
    if let Some(other) = fields.keys().find(|k| k.as_str() != "advance_ms") {
        return Err(format!("unknown field {other:?}: {ALLOWED}"));
    }
    let Some(raw) = fields.get("advance_ms") else {
        return Ok(None);
    };
    let ms = raw
        .as_i64()
        .filter(|ms| *ms != 0 && ms.unsigned_abs() <= CLOCK_STEP_MAX_MS.unsigned_abs())
        .ok_or_else(|| format!("advance_ms {raw}: {ALLOWED}"))?;
    match offset_ms.checked_add(ms) {
        Some(total) if total.abs() <= CLOCK_OFFSET_MAX_MS => Ok(Some(ms)),
        _ => Err(format!(
            "advance_ms {ms} would move the sandbox's clock more than 100 years from real \
             time (it is {offset_ms} ms away); a negative advance_ms moves it back"
        )),
    }
}

async fn control_reset(AxState(sb): AxState<Sandbox>) -> Response {
    sb.reset();
    Json(json!({"reset": true})).into_response()
}

async fn control_calls(
    AxState(sb): AxState<Sandbox>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let p = q.get("path").map(String::as_str).unwrap_or("");
    Json(json!({"calls": sb.calls(p)})).into_response()
}

async fn control_state(AxState(sb): AxState<Sandbox>) -> Response {
    let st = sb.st();
    Json(json!({
        "pay_orders": st.pay.orders.values().map(mch::PayOrder::summary).collect::<Vec<_>>(),
        "refunds": st.pay.refunds.values().map(mch::Refund::summary).collect::<Vec<_>>(),
        "shop_orders": st.shop.orders.values().map(|o| o.to_json(true)).collect::<Vec<_>>(),
        "products": st.shop.products.values().map(|p| p.to_json(true)).collect::<Vec<_>>(),
        "balance": {"available_amount": st.funds.available, "pending_amount": st.funds.pending},
    }))
    .into_response()
}
