//! Merchant API v2 (`/mch/...`): unifiedorder, orderquery, closeorder, refund, refundquery,
//! downloadbill — checked and answered the way `api.mch.weixin.qq.com` does.
//!
//! Why so strict: each check here is one a real merchant has failed in production
//! (WECHAT_PAY_V2.md §2, §5, §8): a bad or wrong-type signature is `return_code FAIL
//! 签名错误`, a retried `unifiedorder` with changed parameters is `OUT_TRADE_NO_USED`, an
//! openid sent with an appid it was not issued under is `PARAM_ERROR`, a
//! refund over the paid amount is refused, a second refund of one order within a minute is
//! `FREQUENCY_LIMITED`, provider mode without `sub_mch_id` is refused.
//! Replies are signed with the request's sign type so clients must verify them.
//!
//! A `prepay_id` lives 2 hours ([`PREPAY_TTL_MS`]); then WeChat forgets it, and so does the
//! sandbox: its index entry is pruned when a new one is issued, at most once a minute of the
//! sandbox's clock (every order used to add one for ever). The order keeps its `prepay_id`,
//! as WeChat keeps the order. A forgotten one is still refused as expired, not as never
//! issued: it ends in a tag made with the sandbox's key, as tokens do ([`super::platform`]).
//! Where it is used after that, the answer is the one an expired but remembered one got: the
//! cashier (`/_control/pay`) refuses it as expired (409), whatever its order's state;
//! `shop/order/add` takes it, as it took an expired one before (what WeChat's trading
//! component checks of a `prepay_id` is UNVERIFIED, WECHAT_SHOP.md). An untagged one, read
//! from an older wxlocal's state file, is never pruned (forgotten, it would read as never
//! issued); no new ones are made.

use super::deliver::{self, Job, Kind, Outgoing};
use super::kept::Kept;
use super::platform::Key;
use super::{random_alnum, random_digits, Sandbox, SandboxConfig};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use wxshop::pay::sign::{sign as sign_fields, sign_in_place, Fields, SignType};
use wxshop::pay::xml;
use wxshop::time::{beijing_compact, beijing_date, beijing_datetime, parse_beijing_compact};

/// WeChat Pay takes successive refunds of one order at least a minute apart (§2.5); sooner,
/// a new refund is `FREQUENCY_LIMITED` (a retry of an accepted one is not: it is the same
/// refund). The default of [`SandboxConfig::refund_interval_ms`].
pub const REFUND_INTERVAL_MS: i64 = 60_000;

/// A `prepay_id` lives 2 hours (unifiedorder's reply field `prepay_id`: "有效期为2小时"); past
/// that WeChat's cashier will not take it, whatever `time_expire` says.
pub const PREPAY_TTL_MS: i64 = 7_200_000;

/// Expired `prepay_id`s are pruned at most this often (sandbox clock), as tokens are.
const PRUNE_EVERY_MS: i64 = 60_000;

/// A `prepay_id`: `wx`, the 14-digit Beijing time it was issued, 10 random characters and a
/// 10-digit tag ([`super::platform::PlatformState::key`]): 36 characters, as WeChat's
/// (`wx2017033010242291fcfe0db70013231072`).
const PREPAY_LEN: usize = 36;
const PREPAY_TAG: usize = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TradeState {
    NotPay,
    Success,
    Refund,
    Closed,
}

impl TradeState {
    pub fn as_str(self) -> &'static str {
        match self {
            TradeState::NotPay => "NOTPAY",
            TradeState::Success => "SUCCESS",
            TradeState::Refund => "REFUND",
            TradeState::Closed => "CLOSED",
        }
    }
    fn desc(self) -> &'static str {
        match self {
            TradeState::NotPay => "订单未支付",
            TradeState::Success => "支付成功",
            TradeState::Refund => "订单发生过退款",
            TradeState::Closed => "订单已关闭",
        }
    }
    pub(crate) fn is_paid(self) -> bool {
        matches!(self, TradeState::Success | TradeState::Refund)
    }
}

/// One WeChat Pay order as the sandbox remembers it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct PayOrder {
    pub out_trade_no: String,
    /// The request minus `sign` and `nonce_str`: what "identical parameters" compares.
    pub params: Fields,
    pub sign_type: SignType,
    pub prepay_id: String,
    pub total_fee: i64,
    pub openid: Option<String>,
    pub sub_openid: Option<String>,
    pub trade_type: String,
    pub notify_url: String,
    pub state: TradeState,
    pub transaction_id: Option<String>,
    pub time_end: Option<String>,
    pub created_ms: i64,
    pub paid_ms: Option<i64>,
    pub expire_ms: Option<i64>,
    /// Sum of accepted refunds.
    pub refunded: i64,
    /// When the last refund of this order was accepted (sandbox clock): the next one with
    /// another `out_refund_no` waits [`SandboxConfig::refund_interval_ms`].
    pub last_refund_ms: Option<i64>,
}

impl PayOrder {
    pub fn summary(&self) -> Value {
        json!({"out_trade_no": self.out_trade_no, "total_fee": self.total_fee,
               "trade_state": self.state.as_str(), "transaction_id": self.transaction_id,
               "prepay_id": self.prepay_id, "refunded": self.refunded,
               "sign_type": self.sign_type.as_str()})
    }
    fn param(&self, k: &str) -> Option<&str> {
        self.params
            .get(k)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }
}

/// A refund's `refund_status`: `PROCESSING` when accepted, then one of the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RefundStatus {
    Processing,
    Success,
    /// Closed: the money did not leave, the order is refundable again.
    #[serde(rename = "REFUNDCLOSE")]
    RefundClose,
    /// Abnormal: the money left the merchant and waits at WeChat to be redirected by hand.
    Change,
}

impl RefundStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RefundStatus::Processing => "PROCESSING",
            RefundStatus::Success => "SUCCESS",
            RefundStatus::RefundClose => "REFUNDCLOSE",
            RefundStatus::Change => "CHANGE",
        }
    }
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Refund {
    pub out_refund_no: String,
    pub refund_id: String,
    pub out_trade_no: String,
    pub transaction_id: String,
    pub total_fee: i64,
    pub refund_fee: i64,
    pub notify_url: Option<String>,
    /// `PROCESSING` until it succeeds shortly after being accepted.
    pub status: RefundStatus,
    pub created_ms: i64,
    pub success_ms: Option<i64>,
    pub refund_account: String,
    /// Made by a person in the merchant platform ([`merchant_refunds`]), not asked for with
    /// `secapi/pay/refund`: its notification says `refund_request_source` `VENDOR_PLATFORM`.
    #[serde(default)]
    pub by_hand: bool,
}

impl Refund {
    pub fn summary(&self) -> Value {
        json!({"out_refund_no": self.out_refund_no, "refund_id": self.refund_id,
               "out_trade_no": self.out_trade_no, "refund_fee": self.refund_fee,
               "refund_status": self.status.as_str()})
    }
}

#[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct PayState {
    pub orders: Kept<String, PayOrder>,
    pub refunds: Kept<String, Refund>,
    pub by_txn: Kept<String, String>,
    /// Every `prepay_id` issued and not expired → its `out_trade_no` (`shop/order/add` checks
    /// the one it is given, the cashier pays by it): an index, so neither scans every order,
    /// which made the sandbox slower with each order. Expired ones are pruned
    /// ([`PayState::prune`]).
    pub prepay_ids: Kept<String, String>,
    /// When expired `prepay_id`s are pruned next (not kept: at start, the first issue).
    #[serde(skip)]
    pub(crate) next_prune_ms: i64,
    /// Outcomes for the next accepted refunds instead of `SUCCESS` (`REFUNDCLOSE`, `CHANGE`,
    /// or `PROCESSING`: no outcome yet), set with `/_control/refund_outcome`: a test's knob,
    /// not kept across restarts.
    #[serde(skip)]
    pub refund_outcomes: std::collections::VecDeque<RefundStatus>,
    /// `out_trade_no`s whose bill lines (payment and refunds) carry amounts no parser reads
    /// (`19,90`), set with `/_control/bill`: a test's knob for a garbled bill line, not kept
    /// across restarts.
    #[serde(skip)]
    pub garbled_bill_lines: std::collections::HashSet<String>,
    /// The failures `downloadbill` answers instead of a day's bills (its `return_msg`: `Bill
    /// Creating` while WeChat is still making them, `SYSTEMERROR`, …), by `yyyyMMdd` (both
    /// bill types) or `yyyyMMdd/TYPE` (that bill only: `SUCCESS`, `REFUND`), set with
    /// `/_control/bill` `{"creating": day}` or `{"failing": day, "return_msg"}` — or, for an
    /// outage in front of WeChat Pay, `{"failing": day, "http_status": 503}`: that status, no
    /// bill — and taken back with `{"created": day}`: a test's knob, not kept across restarts.
    #[serde(skip)]
    pub bill_failures: std::collections::HashMap<String, BillFailure>,
}

/// How `downloadbill` fails for a day ([`PayState::bill_failures`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BillFailure {
    /// A `FAIL` answer with this `return_msg` (`Bill Creating`, `SYSTEMERROR`, …).
    Answer(String),
    /// This HTTP status (5xx), no body WeChat Pay would write.
    Http(u16),
}

impl PayState {
    pub fn order_by_txn(&self, txn: &str) -> Option<&PayOrder> {
        self.by_txn.get(txn).and_then(|o| self.orders.get(o))
    }

    /// Forgets the `prepay_id`s past [`PREPAY_TTL_MS`] (issued with their order: its
    /// `created_ms`), at most once per [`PRUNE_EVERY_MS`]. Only tagged ones: an untagged one
    /// (an older wxlocal's) could not be told from one never issued once forgotten.
    fn prune(&mut self, now: i64, key: &Key) {
        if now < self.next_prune_ms {
            return;
        }
        self.next_prune_ms = now + PRUNE_EVERY_MS;
        let orders = &self.orders;
        let expired = |p: &str, no: &str| {
            orders
                .get(no)
                .is_none_or(|o| now.saturating_sub(o.created_ms) > PREPAY_TTL_MS)
                && key.signed(p, PREPAY_LEN, PREPAY_TAG)
        };
        if self.prepay_ids.iter().any(|(p, no)| expired(p, no)) {
            self.prepay_ids.retain(|p, no| !expired(p, no));
        }
    }
}

/// Whether `prepay_id` was issued by this sandbox (since its last reset), remembered or
/// expired and forgotten: what `shop/order/add` takes.
pub(crate) fn prepay_issued(state: &super::State, prepay_id: &str) -> bool {
    state.pay.prepay_ids.contains_key(prepay_id)
        || state.platform.key.signed(prepay_id, PREPAY_LEN, PREPAY_TAG)
}

/// The cashier's refusal of an expired `prepay_id`.
fn prepay_expired(prepay_id: &str) -> String {
    format!("prepay_id {prepay_id} expired (a prepay_id lives 2 hours)")
}

// ---------------------------------------------------------------------------------------------
// Replies

fn xml_response(body: String) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/xml; charset=utf-8")],
        body,
    )
        .into_response()
}

/// `return_code FAIL`: unsigned, only `return_msg` means anything.
fn return_fail(msg: &str) -> Response {
    let mut f = Fields::new();
    f.insert("return_code".into(), "FAIL".into());
    f.insert("return_msg".into(), msg.into());
    xml_response(xml::encode(&f))
}

/// A signed reply: the common fields, `result_code` SUCCESS unless `extra` says otherwise.
fn reply(cfg: &SandboxConfig, req: &Fields, st: SignType, extra: Fields) -> Response {
    let mut f = Fields::new();
    f.insert("return_code".into(), "SUCCESS".into());
    f.insert("return_msg".into(), "OK".into());
    f.insert("appid".into(), cfg.appid.clone());
    f.insert("mch_id".into(), cfg.mch_id.clone());
    for k in ["sub_appid", "sub_mch_id", "device_info"] {
        if let Some(v) = req.get(k).filter(|v| !v.is_empty()) {
            f.insert(k.into(), v.clone());
        }
    }
    f.insert("nonce_str".into(), random_alnum(16));
    f.insert("result_code".into(), "SUCCESS".into());
    f.extend(extra);
    sign_in_place(&mut f, &cfg.api_key, st);
    xml_response(xml::encode(&f))
}

fn biz_fail(cfg: &SandboxConfig, req: &Fields, st: SignType, code: &str, des: &str) -> Response {
    let mut e = Fields::new();
    e.insert("result_code".into(), "FAIL".into());
    e.insert("err_code".into(), code.into());
    e.insert("err_code_des".into(), des.into());
    reply(cfg, req, st, e)
}

/// The answer for an injected `errcode` fault on the request `req`: a business failure
/// signed with the request's `sign_type` (MD5 when absent or unreadable), as WeChat signs
/// every reply, echoing the request's `sub_*` ids like any other reply.
pub fn injected_error(sb: &Sandbox, req: &Fields, err_code: &str) -> Response {
    let cfg = sb.cfg();
    let st = req
        .get("sign_type")
        .and_then(|s| SignType::parse(s))
        .unwrap_or(SignType::Md5);
    biz_fail(
        &cfg,
        req,
        st,
        err_code,
        "系统错误 (sandbox: injected fault)",
    )
}

/// The request fields of a recorded merchant call (its string values; the record of a body
/// that did not decode has none).
pub fn fields_of(record: &Value) -> Fields {
    record
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

fn fields(pairs: &[(&str, String)]) -> Fields {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Common checks

/// Parses, checks the common fields, merchant identity, signature and provider mode.
fn common(
    cfg: &SandboxConfig,
    body: &[u8],
    bill: bool,
) -> Result<(Fields, SignType), Box<Response>> {
    let fail = |msg: &str, code: &str| -> Box<Response> {
        Box::new(if bill {
            bill_fail(msg, code)
        } else {
            return_fail(msg)
        })
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(fail("post数据为空", "20003"));
    }
    let f = xml::decode(body).map_err(|_| fail("XML格式错误", "20003"))?;
    for k in ["appid", "mch_id", "nonce_str", "sign"] {
        if f.get(k).is_none_or(|v| v.is_empty()) {
            let msg = if bill {
                "missing parameter".to_owned()
            } else {
                format!("缺少参数{k}")
            };
            return Err(fail(&msg, "20003"));
        }
    }
    let st = match f.get("sign_type").map(String::as_str) {
        None | Some("") => SignType::Md5,
        Some(s) => match SignType::parse(s) {
            Some(t) => t,
            None => return Err(fail("sign_type参数格式错误", "20003")),
        },
    };
    if f.get("nonce_str").is_some_and(|n| n.chars().count() > 32) {
        return Err(fail("nonce_str参数长度有误", "20003"));
    }
    if f.get("mch_id") != Some(&cfg.mch_id) {
        return Err(fail("商户号mch_id不存在", "20003"));
    }
    if f.get("appid") != Some(&cfg.appid) {
        return Err(fail("appid和mch_id不匹配", "20003"));
    }
    let expected = sign_fields(&f, &cfg.api_key, st);
    let got = f.get("sign").map(String::as_str).unwrap_or_default();
    if !subtle_eq(expected.as_bytes(), got.as_bytes()) {
        let msg = if bill { "SIGN ERROR" } else { "签名错误" };
        return Err(fail(msg, "20001"));
    }
    let req_sub = f.get("sub_mch_id").filter(|v| !v.is_empty());
    let provider_problem = match (&cfg.sub_mch_id, req_sub) {
        (Some(_), None) => Some("受理机构必须传入sub_mch_id"),
        (Some(want), Some(got)) if want != got => Some("特约子商户商户号未授权服务商的产品权限"),
        (None, Some(_)) => Some("非受理机构请勿传入sub_mch_id"),
        _ => None,
    };
    if let Some(m) = provider_problem {
        return Err(fail(m, "20003"));
    }
    if let (Some(want), Some(got)) = (&cfg.sub_appid, f.get("sub_appid").filter(|v| !v.is_empty()))
    {
        if want != got {
            return Err(fail("sub_mch_id与sub_appid不匹配", "20003"));
        }
    }
    Ok((f, st))
}

fn subtle_eq(a: &[u8], b: &[u8]) -> bool {
    // Constant time over equal lengths; lengths are not secret.
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn get<'a>(f: &'a Fields, k: &str) -> Option<&'a str> {
    f.get(k).map(String::as_str).filter(|v| !v.is_empty())
}

fn valid_no(s: &str, min: usize, max: usize, extra: &[char]) -> bool {
    let n = s.chars().count();
    n >= min
        && n <= max
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-|*".contains(c) || extra.contains(&c))
}

/// A positive whole number of fen written as digits only (no sign, no decimals), within the
/// `Int` WeChat Pay's amount fields are.
fn fen(s: &str) -> Option<i64> {
    if s.is_empty() || s.len() > 12 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse()
        .ok()
        .filter(|n| (1..=i64::from(i32::MAX)).contains(n))
}

/// `notify_url`: http(s), ≤256, reachable shape, no query string.
fn check_notify_url(u: &str) -> Result<(), &'static str> {
    if u.len() > 256 {
        return Err("notify_url参数长度有误");
    }
    let parsed = url::Url::parse(u).map_err(|_| "notify_url参数格式错误")?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err("notify_url参数格式错误");
    }
    if parsed.query().is_some() || u.contains('?') {
        return Err("notify_url参数格式错误: 回调地址不能携带参数");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Dispatch

pub fn handle(sb: &Sandbox, path: &str, body: &[u8]) -> Response {
    let cfg = sb.cfg();
    let api = path.trim_start_matches("mch/");
    let bill = api == "pay/downloadbill";
    let known = matches!(
        api,
        "pay/unifiedorder"
            | "pay/orderquery"
            | "pay/closeorder"
            | "secapi/pay/refund"
            | "pay/refundquery"
            | "pay/downloadbill"
    );
    if !known {
        return (StatusCode::NOT_FOUND, "sandbox: no such merchant API").into_response();
    }
    let (f, st) = match common(&cfg, body, bill) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    match api {
        "pay/unifiedorder" => unifiedorder(sb, &cfg, &f, st),
        "pay/orderquery" => orderquery(sb, &cfg, &f, st),
        "pay/closeorder" => closeorder(sb, &cfg, &f, st),
        "secapi/pay/refund" => refund(sb, &cfg, &f, st),
        "pay/refundquery" => refundquery(sb, &cfg, &f, st),
        _ => downloadbill(sb, &cfg, &f),
    }
}

// ---------------------------------------------------------------------------------------------
// unifiedorder

fn unifiedorder(sb: &Sandbox, cfg: &SandboxConfig, f: &Fields, st: SignType) -> Response {
    for k in [
        "body",
        "out_trade_no",
        "total_fee",
        "spbill_create_ip",
        "notify_url",
        "trade_type",
    ] {
        if get(f, k).is_none() {
            return biz_fail(cfg, f, st, "LACK_PARAMS", &format!("缺少参数{k}"));
        }
    }
    let out_trade_no = get(f, "out_trade_no").unwrap_or_default();
    if !valid_no(out_trade_no, 6, 32, &[]) {
        return return_fail("out_trade_no参数格式错误");
    }
    let Some(total_fee) = get(f, "total_fee").and_then(fen) else {
        return return_fail("invalid total_fee");
    };
    let limits = [
        ("body", 127),
        ("attach", 127),
        ("detail", 6000),
        ("device_info", 32),
        ("goods_tag", 32),
        ("scene_info", 256),
        ("product_id", 32),
    ];
    // WeChat counts UTF-8 bytes, not characters: 43 Chinese characters overflow `body`.
    for (k, max) in limits {
        if get(f, k).is_some_and(|v| v.len() > max) {
            return return_fail(&format!("{k}参数长度有误"));
        }
    }
    let ip = get(f, "spbill_create_ip").unwrap_or_default();
    if ip.len() > 64 || ip.parse::<std::net::IpAddr>().is_err() {
        return return_fail("spbill_create_ip参数格式错误");
    }
    if let Err(m) = check_notify_url(get(f, "notify_url").unwrap_or_default()) {
        return return_fail(m);
    }
    let trade_type = get(f, "trade_type").unwrap_or_default();
    if !matches!(trade_type, "JSAPI" | "NATIVE" | "APP" | "MWEB") {
        return return_fail("trade_type参数格式错误");
    }
    if get(f, "fee_type").is_some_and(|v| v != "CNY") {
        return biz_fail(cfg, f, st, "PARAM_ERROR", "fee_type只支持CNY");
    }
    if get(f, "limit_pay").is_some_and(|v| v != "no_credit") {
        return return_fail("limit_pay参数格式错误");
    }
    let openid = get(f, "openid").map(str::to_owned);
    let sub_openid = get(f, "sub_openid").map(str::to_owned);
    if trade_type == "JSAPI" {
        if cfg.sub_mch_id.is_none() && openid.is_none() {
            return biz_fail(
                cfg,
                f,
                st,
                "PARAM_ERROR",
                "trade_type=JSAPI时（即JSAPI支付），openid为必填参数",
            );
        }
        if cfg.sub_mch_id.is_some() && openid.is_none() && sub_openid.is_none() {
            return biz_fail(
                cfg,
                f,
                st,
                "PARAM_ERROR",
                "trade_type=JSAPI时（即JSAPI支付），openid和sub_openid必须传一个",
            );
        }
        if sub_openid.is_some() && get(f, "sub_appid").is_none() {
            return biz_fail(cfg, f, st, "PARAM_ERROR", "sub_openid需与sub_appid一起传入");
        }
    }
    for k in ["openid", "sub_openid"] {
        if get(f, k).is_some_and(|v| v.len() > 128) {
            return return_fail(&format!("{k}参数长度有误"));
        }
    }
    let now = sb.now_ms();
    let mut expire_ms = None;
    for k in ["time_start", "time_expire"] {
        if let Some(v) = get(f, k) {
            let Some(ms) = parse_beijing_compact(v) else {
                return return_fail(&format!("{k}参数格式错误"));
            };
            if k == "time_expire" {
                if ms < now + 60_000 {
                    return biz_fail(
                        cfg,
                        f,
                        st,
                        "INVALID_REQUEST",
                        "time_expire时间过短，至少1分钟",
                    );
                }
                expire_ms = Some(ms);
            }
        }
    }

    let mut params = f.clone();
    params.remove("sign");
    params.remove("nonce_str");

    let mut state = sb.st();
    if let Some((code, des)) = openid_problem(cfg, f, &state.platform) {
        drop(state);
        return biz_fail(cfg, f, st, code, des);
    }
    if let Some(o) = state.pay.orders.get(out_trade_no) {
        if o.state.is_paid() {
            return biz_fail(cfg, f, st, "ORDERPAID", "该订单已支付");
        }
        if o.state == TradeState::Closed {
            return biz_fail(cfg, f, st, "ORDERCLOSED", "该订单已关");
        }
        if o.params != params {
            return biz_fail(cfg, f, st, "OUT_TRADE_NO_USED", "商户订单号重复");
        }
        let prepay_id = o.prepay_id.clone();
        drop(state);
        return reply(
            cfg,
            f,
            st,
            fields(&[
                ("prepay_id", prepay_id),
                ("trade_type", trade_type.to_owned()),
            ]),
        );
    }
    let prepay_id = state.platform.key.sign(
        format!(
            "wx{}{}",
            beijing_compact(now),
            random_alnum(PREPAY_LEN - 16 - PREPAY_TAG).to_ascii_lowercase()
        ),
        PREPAY_TAG,
    );
    let super::State { pay, platform, .. } = &mut *state;
    pay.prune(now, &platform.key);
    pay.prepay_ids
        .insert(prepay_id.clone(), out_trade_no.to_owned());
    state.pay.orders.insert(
        out_trade_no.to_owned(),
        PayOrder {
            out_trade_no: out_trade_no.to_owned(),
            params,
            sign_type: st,
            prepay_id: prepay_id.clone(),
            total_fee,
            openid,
            sub_openid,
            trade_type: trade_type.to_owned(),
            notify_url: get(f, "notify_url").unwrap_or_default().to_owned(),
            state: TradeState::NotPay,
            transaction_id: None,
            time_end: None,
            created_ms: now,
            paid_ms: None,
            expire_ms,
            refunded: 0,
            last_refund_ms: None,
        },
    );
    drop(state);
    let mut extra = fields(&[
        ("prepay_id", prepay_id.clone()),
        ("trade_type", trade_type.to_owned()),
    ]);
    if trade_type == "NATIVE" {
        extra.insert(
            "code_url".into(),
            format!("weixin://wxpay/bizpayurl?pr={}", random_alnum(7)),
        );
    }
    reply(cfg, f, st, extra)
}

/// An openid is a user under one appid (§2.9): `openid` must be under `appid`, `sub_openid`
/// under `sub_appid`, and in provider mode only one of the two is sent. The pairing is
/// checked for openids the sandbox issued (`jscode2session`); one it never issued (made up
/// by a test) it cannot place, and takes.
fn openid_problem(
    cfg: &SandboxConfig,
    f: &Fields,
    platform: &super::platform::PlatformState,
) -> Option<(&'static str, &'static str)> {
    let openid = get(f, "openid");
    let sub_openid = get(f, "sub_openid");
    if cfg.sub_mch_id.is_some() && openid.is_some() && sub_openid.is_some() {
        return Some(("PARAM_ERROR", "openid和sub_openid只能传一个"));
    }
    let foreign = |id: Option<&str>, appid: Option<&str>| {
        id.and_then(|id| platform.issued_under(id))
            .is_some_and(|under| Some(under) != appid)
    };
    if foreign(openid, get(f, "appid")) {
        return Some(("PARAM_ERROR", "appid和openid不匹配"));
    }
    if foreign(sub_openid, get(f, "sub_appid")) {
        return Some(("PARAM_ERROR", "sub_appid和sub_openid不匹配"));
    }
    None
}

// ---------------------------------------------------------------------------------------------
// orderquery / closeorder

fn find_order<'a>(state: &'a PayState, f: &Fields) -> Option<&'a PayOrder> {
    match get(f, "transaction_id") {
        Some(t) => state.order_by_txn(t),
        None => get(f, "out_trade_no").and_then(|o| state.orders.get(o)),
    }
}

/// The openid a notification/query reports: the one the order carried, or (provider mode
/// with only `sub_openid`) a stable openid under the provider's appid.
fn openid_of(o: &PayOrder) -> String {
    match (&o.openid, &o.sub_openid) {
        (Some(x), _) => x.clone(),
        (None, Some(s)) => super::platform::openid_for(&format!("provider:{s}")),
        (None, None) => String::new(),
    }
}

fn paid_fields(o: &PayOrder) -> Fields {
    let mut e = fields(&[
        ("out_trade_no", o.out_trade_no.clone()),
        ("openid", openid_of(o)),
        ("is_subscribe", "N".into()),
        ("trade_type", o.trade_type.clone()),
        ("bank_type", "OTHERS".into()),
        ("total_fee", o.total_fee.to_string()),
        ("fee_type", "CNY".into()),
        ("cash_fee", o.total_fee.to_string()),
        (
            "transaction_id",
            o.transaction_id.clone().unwrap_or_default(),
        ),
        ("time_end", o.time_end.clone().unwrap_or_default()),
    ]);
    if let Some(s) = &o.sub_openid {
        e.insert("sub_openid".into(), s.clone());
        e.insert("sub_is_subscribe".into(), "N".into());
    }
    if let Some(a) = o.param("attach") {
        e.insert("attach".into(), a.to_owned());
    }
    e
}

fn orderquery(sb: &Sandbox, cfg: &SandboxConfig, f: &Fields, st: SignType) -> Response {
    if get(f, "transaction_id").is_none() && get(f, "out_trade_no").is_none() {
        return biz_fail(
            cfg,
            f,
            st,
            "LACK_PARAMS",
            "transaction_id和out_trade_no必须填写一个",
        );
    }
    let state = sb.st();
    let Some(o) = find_order(&state.pay, f).cloned() else {
        drop(state);
        return biz_fail(cfg, f, st, "ORDERNOTEXIST", "order not exist");
    };
    drop(state);
    let mut e = if o.state.is_paid() {
        paid_fields(&o)
    } else {
        let mut e = fields(&[
            ("out_trade_no", o.out_trade_no.clone()),
            ("total_fee", o.total_fee.to_string()),
            ("trade_type", o.trade_type.clone()),
        ]);
        if let Some(a) = o.param("attach") {
            e.insert("attach".into(), a.to_owned());
        }
        e
    };
    e.insert("trade_state".into(), o.state.as_str().into());
    e.insert("trade_state_desc".into(), o.state.desc().into());
    reply(cfg, f, st, e)
}

fn closeorder(sb: &Sandbox, cfg: &SandboxConfig, f: &Fields, st: SignType) -> Response {
    let Some(no) = get(f, "out_trade_no") else {
        return biz_fail(cfg, f, st, "LACK_PARAMS", "缺少参数out_trade_no");
    };
    let mut state = sb.st();
    let Some(o) = state.pay.orders.get_mut(no) else {
        drop(state);
        return biz_fail(cfg, f, st, "ORDERNOTEXIST", "订单不存在");
    };
    let r = match o.state {
        s if s.is_paid() => Err(("ORDERPAID", "订单已支付，不能发起关单")),
        TradeState::Closed => Err(("ORDERCLOSED", "订单已关闭，无法重复关闭")),
        _ => {
            o.state = TradeState::Closed;
            Ok(())
        }
    };
    drop(state);
    match r {
        Ok(()) => reply(cfg, f, st, fields(&[("result_msg", "OK".into())])),
        Err((c, d)) => biz_fail(cfg, f, st, c, d),
    }
}

// ---------------------------------------------------------------------------------------------
// The user pays (control)

/// What the paying user hands WeChat's cashier: the `prepay_id` (in `wx.requestPayment`'s
/// `package`), or — for tests that know only our order — its `out_trade_no`.
#[derive(Clone, Copy, Debug)]
pub enum Cashier<'a> {
    OutTradeNo(&'a str),
    PrepayId(&'a str),
}

/// Marks the order paid as if the user confirmed in WeChat, and prepares its notification.
/// Refused as WeChat's cashier refuses it: a `prepay_id` older than [`PREPAY_TTL_MS`]
/// (remembered or forgotten, whatever its order's state), an order paid already (no second
/// payment), a closed one, one past its `time_expire`, one whose `prepay_id` expired.
pub fn user_pays(sb: &Sandbox, by: Cashier<'_>) -> Result<(Value, Option<Job>), String> {
    let cfg = sb.cfg();
    let now = sb.now_ms();
    let mut state = sb.st();
    let omit_sign_type = state.out.opts.omit_sign_type;
    let out_trade_no = match by {
        Cashier::OutTradeNo(no) => no.to_owned(),
        Cashier::PrepayId(p) => match state.pay.prepay_ids.get(p) {
            Some(no) => no.clone(),
            None if state.platform.key.signed(p, PREPAY_LEN, PREPAY_TAG) => {
                return Err(prepay_expired(p))
            }
            None => return Err(format!("no such prepay_id {p}")),
        },
    };
    let id = state.next_seq();
    let Some(o) = state.pay.orders.get_mut(&out_trade_no) else {
        return Err(format!("no WeChat Pay order {out_trade_no}"));
    };
    let prepay_expires = o.created_ms.saturating_add(PREPAY_TTL_MS);
    if let Cashier::PrepayId(p) = by {
        // As if already forgotten: the answer does not depend on when pruning ran.
        if now > prepay_expires {
            return Err(prepay_expired(p));
        }
    }
    match o.state {
        TradeState::NotPay => {}
        TradeState::Success | TradeState::Refund => {
            return Err(format!(
                "order {out_trade_no} is paid already ({}): no second payment",
                o.state.as_str()
            ))
        }
        TradeState::Closed => return Err(format!("order {out_trade_no} is closed (CLOSED)")),
    }
    if o.expire_ms.is_some_and(|e| now > e) {
        return Err(format!("order {out_trade_no} expired (time_expire passed)"));
    }
    if now > prepay_expires {
        return Err(format!(
            "prepay_id {} of order {out_trade_no} expired (a prepay_id lives 2 hours)",
            o.prepay_id
        ));
    }
    let txn = format!("4200{}{}", &beijing_date(now), random_digits(16));
    o.state = TradeState::Success;
    o.transaction_id = Some(txn.clone());
    o.time_end = Some(beijing_compact(now));
    o.paid_ms = Some(now);
    let o = o.clone();
    state.pay.by_txn.insert(txn.clone(), o.out_trade_no.clone());
    drop(state);

    let mut n = paid_fields(&o);
    n.insert("return_code".into(), "SUCCESS".into());
    n.insert("return_msg".into(), "OK".into());
    n.insert("result_code".into(), "SUCCESS".into());
    n.insert("appid".into(), cfg.appid.clone());
    n.insert("mch_id".into(), cfg.mch_id.clone());
    for k in ["sub_appid", "sub_mch_id", "device_info"] {
        if let Some(v) = o.param(k) {
            n.insert(k.into(), v.to_owned());
        }
    }
    n.insert("nonce_str".into(), random_alnum(32));
    if omit_sign_type {
        // As seen in the wild (WxJava#1585): an HMAC signature and no `sign_type` field.
        let s = sign_fields(&n, &cfg.api_key, o.sign_type);
        n.insert("sign".into(), s);
    } else {
        sign_in_place(&mut n, &cfg.api_key, o.sign_type);
    }
    let out = Outgoing {
        id,
        kind: Kind::Pay,
        key: o.out_trade_no.clone(),
        url: o.notify_url.clone(),
        body: xml::encode(&n).into_bytes(),
        content_type: "text/xml; charset=utf-8",
    };
    let job = deliver::enqueue(sb, out);
    Ok((
        json!({"out_trade_no": o.out_trade_no, "transaction_id": txn,
               "time_end": o.time_end, "total_fee": o.total_fee}),
        job,
    ))
}

// ---------------------------------------------------------------------------------------------
// refund / refundquery

fn refund(sb: &Sandbox, cfg: &SandboxConfig, f: &Fields, st: SignType) -> Response {
    if get(f, "transaction_id").is_none() && get(f, "out_trade_no").is_none() {
        return biz_fail(
            cfg,
            f,
            st,
            "LACK_PARAMS",
            "transaction_id和out_trade_no必须填写一个",
        );
    }
    for k in ["out_refund_no", "total_fee", "refund_fee"] {
        if get(f, k).is_none() {
            return biz_fail(cfg, f, st, "LACK_PARAMS", &format!("缺少参数{k}"));
        }
    }
    let out_refund_no = get(f, "out_refund_no").unwrap_or_default();
    if !valid_no(out_refund_no, 1, 64, &['@']) {
        return return_fail("out_refund_no参数格式错误");
    }
    let Some(total_fee) = get(f, "total_fee").and_then(fen) else {
        return return_fail("invalid total_fee");
    };
    let Some(refund_fee) = get(f, "refund_fee").and_then(fen) else {
        return return_fail("invalid refund_fee");
    };
    if let Some(u) = get(f, "notify_url") {
        if let Err(m) = check_notify_url(u) {
            return return_fail(m);
        }
    }
    if get(f, "refund_desc").is_some_and(|d| d.len() > 80) {
        return return_fail("refund_desc参数长度有误");
    }
    let refund_account = get(f, "refund_account")
        .unwrap_or("REFUND_SOURCE_UNSETTLED_FUNDS")
        .to_owned();
    if !matches!(
        refund_account.as_str(),
        "REFUND_SOURCE_UNSETTLED_FUNDS" | "REFUND_SOURCE_RECHARGE_FUNDS"
    ) {
        return return_fail("refund_account参数格式错误");
    }
    let now = sb.now_ms();
    let state = sb.st();
    let Some(o) = find_order(&state.pay, f).cloned() else {
        drop(state);
        return biz_fail(cfg, f, st, "ORDERNOTEXIST", "订单不存在");
    };
    if let Some(t) = get(f, "out_trade_no") {
        if t != o.out_trade_no {
            drop(state);
            return biz_fail(
                cfg,
                f,
                st,
                "PARAM_ERROR",
                "transaction_id与out_trade_no不匹配",
            );
        }
    }
    let accepted = |r: &Refund| {
        fields(&[
            ("transaction_id", r.transaction_id.clone()),
            ("out_trade_no", r.out_trade_no.clone()),
            ("out_refund_no", r.out_refund_no.clone()),
            ("refund_id", r.refund_id.clone()),
            ("refund_fee", r.refund_fee.to_string()),
            ("settlement_refund_fee", r.refund_fee.to_string()),
            ("total_fee", r.total_fee.to_string()),
            ("settlement_total_fee", r.total_fee.to_string()),
            ("fee_type", "CNY".into()),
            ("cash_fee", r.total_fee.to_string()),
            ("cash_fee_type", "CNY".into()),
            ("cash_refund_fee", r.refund_fee.to_string()),
            ("coupon_refund_fee", "0".into()),
            ("coupon_refund_count", "0".into()),
            ("refund_channel", String::new()),
        ])
    };
    if let Some(r) = state.pay.refunds.get(out_refund_no).cloned() {
        drop(state);
        // Retrying with the same out_refund_no is how WeChat wants failures handled.
        if r.out_trade_no == o.out_trade_no
            && r.total_fee == total_fee
            && r.refund_fee == refund_fee
        {
            return reply(cfg, f, st, accepted(&r));
        }
        return biz_fail(
            cfg,
            f,
            st,
            "PARAM_ERROR",
            "订单金额或退款金额与之前请求不一致，请核实后再试",
        );
    }
    let fail = if !o.state.is_paid() {
        Some(("TRADE_STATE_ERROR", "订单状态错误，订单未支付或已关闭"))
    } else if total_fee != o.total_fee {
        Some((
            "PARAM_ERROR",
            "订单金额或退款金额与之前请求不一致，请核实后再试",
        ))
    } else if refund_fee > o.total_fee {
        Some(("PARAM_ERROR", "退款金额大于支付金额"))
    } else if o.refunded + refund_fee > o.total_fee {
        Some(("ERROR", "累计退款金额大于支付金额"))
    } else if o
        .last_refund_ms
        .is_some_and(|t| now.saturating_sub(t) < cfg.refund_interval_ms)
    {
        // Checked after what is wrong with the request itself, so a refund that can never
        // be taken is refused for that, not sent back to wait a minute.
        Some(("FREQUENCY_LIMITED", "单笔订单请求频率过高,请于1分钟后重试"))
    } else if state
        .pay
        .refunds
        .values()
        .filter(|r| r.out_trade_no == o.out_trade_no)
        .count()
        >= 50
    {
        Some(("ERROR", "退款次数超过限制（50次）"))
    } else {
        None
    };
    if let Some((c, d)) = fail {
        drop(state);
        return biz_fail(cfg, f, st, c, d);
    }
    let r = Refund {
        out_refund_no: out_refund_no.to_owned(),
        refund_id: format!("5030{}{}", beijing_date(now), random_digits(17)),
        out_trade_no: o.out_trade_no.clone(),
        transaction_id: o.transaction_id.clone().unwrap_or_default(),
        total_fee,
        refund_fee,
        notify_url: get(f, "notify_url").map(str::to_owned),
        status: RefundStatus::Processing,
        created_ms: now,
        success_ms: None,
        refund_account,
        by_hand: false,
    };
    take_refund(sb, state, &r, now);
    reply(cfg, f, st, accepted(&r))
}

/// A person refunds `refund_fee` of paid order `out_trade_no` in the merchant platform
/// (交易中心 → 退款管理), not through our API: WeChat numbers the refund itself — its
/// `out_refund_no` is its `refund_id` here (the format WeChat gives a refund made there is
/// UNVERIFIED) — and once it has gone through, its notification, with `refund_request_source`
/// `VENDOR_PLATFORM`, goes to the refund-result URL set in the merchant platform
/// ([`SandboxConfig::refund_notify_url`]; none set: no notification). Refused as
/// `secapi/pay/refund` refuses: an unpaid order, nothing to refund, more than is left.
pub fn merchant_refunds(
    sb: &Sandbox,
    out_trade_no: &str,
    refund_fee: i64,
) -> Result<Value, String> {
    let cfg = sb.cfg();
    let now = sb.now_ms();
    let state = sb.st();
    let Some(o) = state.pay.orders.get(out_trade_no).cloned() else {
        return Err(format!("no WeChat Pay order {out_trade_no}"));
    };
    if !o.state.is_paid() {
        return Err(format!(
            "order {out_trade_no} is not paid ({})",
            o.state.as_str()
        ));
    }
    if refund_fee <= 0 || o.refunded + refund_fee > o.total_fee {
        return Err(format!(
            "refund_fee {refund_fee}: {} of {} fen is left to refund",
            o.total_fee - o.refunded,
            o.total_fee
        ));
    }
    let refund_id = format!("5030{}{}", beijing_date(now), random_digits(17));
    let r = Refund {
        out_refund_no: refund_id.clone(),
        refund_id,
        out_trade_no: o.out_trade_no.clone(),
        transaction_id: o.transaction_id.clone().unwrap_or_default(),
        total_fee: o.total_fee,
        refund_fee,
        notify_url: cfg.refund_notify_url.clone(),
        status: RefundStatus::Processing,
        created_ms: now,
        success_ms: None,
        refund_account: "REFUND_SOURCE_UNSETTLED_FUNDS".into(),
        by_hand: true,
    };
    take_refund(sb, state, &r, now);
    Ok(r.summary())
}

/// Takes refund `r` (PROCESSING): kept, its order's refunded amount grown (and the minute
/// between refunds started), and completed a moment later as WeChat does.
fn take_refund(sb: &Sandbox, mut state: super::StGuard<'_>, r: &Refund, now: i64) {
    state.pay.refunds.insert(r.out_refund_no.clone(), r.clone());
    if let Some(ord) = state.pay.orders.get_mut(&r.out_trade_no) {
        ord.refunded += r.refund_fee;
        ord.last_refund_ms = Some(now);
    }
    let epoch = state.epoch;
    drop(state);
    tokio::spawn(complete_refund(sb.clone(), r.out_refund_no.clone(), epoch));
}

/// After a restart: refunds accepted but not yet processed are processed now.
pub(crate) fn resume(sb: &Sandbox) {
    let (epoch, processing): (u64, Vec<String>) = {
        let st = sb.st();
        let processing = st
            .pay
            .refunds
            .values()
            .filter(|r| r.status == RefundStatus::Processing)
            .map(|r| r.out_refund_no.clone())
            .collect();
        (st.epoch, processing)
    };
    for no in processing {
        tokio::spawn(complete_refund(sb.clone(), no, epoch));
    }
}

/// The refund succeeds a moment after it was accepted; then its notification goes out.
async fn complete_refund(sb: Sandbox, out_refund_no: String, epoch: u64) {
    tokio::time::sleep(sb.scaled(1.0)).await;
    let cfg = sb.cfg();
    let now = sb.now_ms();
    let (r, order, id) = {
        let mut state = sb.st();
        if state.epoch != epoch {
            return;
        }
        let id = state.next_seq();
        let status = state.pay.refunds.get(&out_refund_no).map(|r| r.status);
        if status != Some(RefundStatus::Processing) {
            return; // gone with a reset, or processed already
        }
        let outcome = state
            .pay
            .refund_outcomes
            .pop_front()
            .unwrap_or(RefundStatus::Success);
        let Some(r) = state.pay.refunds.get_mut(&out_refund_no) else {
            return;
        };
        if outcome == RefundStatus::Processing {
            // Still on its way (a refund to a bank card takes days): `refundquery` says
            // PROCESSING, and no notification goes out until there is an outcome.
            return;
        }
        r.status = outcome;
        let ok = outcome == RefundStatus::Success;
        r.success_ms = ok.then_some(now);
        let r = r.clone();
        let order = state.pay.orders.get_mut(&r.out_trade_no).map(|o| {
            if ok {
                o.state = TradeState::Refund;
            } else if outcome == RefundStatus::RefundClose {
                // The money did not leave: refundable again.
                o.refunded -= r.refund_fee;
            }
            // CHANGE: the money left the merchant and waits at WeChat to be redirected by
            // hand (the user's card was closed or frozen); it stays refunded.
            o.clone()
        });
        (r, order, id)
    };
    let Some(url) = r.notify_url.clone() else {
        return;
    };
    let mut inner = fields(&[
        ("out_refund_no", r.out_refund_no.clone()),
        ("out_trade_no", r.out_trade_no.clone()),
        ("refund_account", r.refund_account.clone()),
        ("refund_fee", r.refund_fee.to_string()),
        ("refund_id", r.refund_id.clone()),
        ("refund_recv_accout", "支付用户零钱".into()),
        (
            "refund_request_source",
            if r.by_hand { "VENDOR_PLATFORM" } else { "API" }.into(),
        ),
        ("refund_status", r.status.as_str().into()),
        ("settlement_refund_fee", r.refund_fee.to_string()),
        ("settlement_total_fee", r.total_fee.to_string()),
        (
            "success_time",
            r.success_ms.map(beijing_datetime).unwrap_or_default(),
        ),
        ("total_fee", r.total_fee.to_string()),
        ("transaction_id", r.transaction_id.clone()),
    ]);
    if r.success_ms.is_none() {
        inner.remove("success_time"); // sent on SUCCESS only
    }
    let req_info =
        deliver::encrypt_req_info(&cfg.api_key, xml::encode_root(&inner, "root").as_bytes());
    let mut outer = fields(&[
        ("return_code", "SUCCESS".into()),
        ("appid", cfg.appid.clone()),
        ("mch_id", cfg.mch_id.clone()),
        ("nonce_str", random_alnum(32)),
        ("req_info", req_info),
    ]);
    if let Some(o) = &order {
        for k in ["sub_appid", "sub_mch_id"] {
            if let Some(v) = o.param(k) {
                outer.insert(k.into(), v.to_owned());
            }
        }
    }
    let out = Outgoing {
        id,
        kind: Kind::Refund,
        key: r.out_refund_no.clone(),
        url,
        body: xml::encode(&outer).into_bytes(),
        content_type: "text/xml; charset=utf-8",
    };
    if let Some(job) = deliver::enqueue(&sb, out) {
        job.await;
    }
}

fn refundquery(sb: &Sandbox, cfg: &SandboxConfig, f: &Fields, st: SignType) -> Response {
    let state = sb.st();
    let refunds: Vec<Refund> = if let Some(id) = get(f, "refund_id") {
        state
            .pay
            .refunds
            .values()
            .filter(|r| r.refund_id == id)
            .cloned()
            .collect()
    } else if let Some(no) = get(f, "out_refund_no") {
        state.pay.refunds.get(no).cloned().into_iter().collect()
    } else if let Some(t) = get(f, "transaction_id") {
        let mut v: Vec<Refund> = state
            .pay
            .refunds
            .values()
            .filter(|r| r.transaction_id == t)
            .cloned()
            .collect();
        v.sort_by_key(|r| r.created_ms);
        v
    } else if let Some(o) = get(f, "out_trade_no") {
        let mut v: Vec<Refund> = state
            .pay
            .refunds
            .values()
            .filter(|r| r.out_trade_no == o)
            .cloned()
            .collect();
        v.sort_by_key(|r| r.created_ms);
        v
    } else {
        drop(state);
        return biz_fail(
            cfg,
            f,
            st,
            "LACK_PARAMS",
            "refund_id、out_refund_no、transaction_id、out_trade_no必须填写一个",
        );
    };
    let order = refunds
        .first()
        .and_then(|r| state.pay.orders.get(&r.out_trade_no))
        .cloned();
    drop(state);
    let (Some(first), Some(order)) = (refunds.first(), order) else {
        return biz_fail(cfg, f, st, "REFUNDNOTEXIST", "not exist");
    };
    let offset = match get(f, "offset") {
        None => 0,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if n < refunds.len() => n,
            _ => return biz_fail(cfg, f, st, "PARAM_ERROR", "offset超过退款笔数"),
        },
    };
    let page: Vec<&Refund> = refunds.iter().skip(offset).take(10).collect();
    let mut e = fields(&[
        ("transaction_id", first.transaction_id.clone()),
        ("out_trade_no", first.out_trade_no.clone()),
        ("total_fee", order.total_fee.to_string()),
        ("settlement_total_fee", order.total_fee.to_string()),
        ("fee_type", "CNY".into()),
        ("cash_fee", order.total_fee.to_string()),
        ("total_refund_count", refunds.len().to_string()),
        ("refund_count", page.len().to_string()),
    ]);
    for (i, r) in page.iter().enumerate() {
        let mut put = |k: &str, v: String| {
            e.insert(format!("{k}_{i}"), v);
        };
        put("out_refund_no", r.out_refund_no.clone());
        put("refund_id", r.refund_id.clone());
        put("refund_channel", "ORIGINAL".into());
        put("refund_fee", r.refund_fee.to_string());
        put("settlement_refund_fee", r.refund_fee.to_string());
        put("refund_status", r.status.as_str().into());
        put("refund_account", r.refund_account.clone());
        put("refund_recv_accout", "支付用户零钱".into());
        if let Some(ms) = r.success_ms {
            put("refund_success_time", beijing_datetime(ms));
        }
    }
    reply(cfg, f, st, e)
}

// ---------------------------------------------------------------------------------------------
// downloadbill (§2.7: backtick CSV in yuan; unsigned; XML only on failure)

fn bill_fail(msg: &str, code: &str) -> Response {
    let mut f = Fields::new();
    f.insert("return_code".into(), "FAIL".into());
    f.insert("return_msg".into(), msg.into());
    f.insert("error_code".into(), code.into());
    xml_response(xml::encode(&f))
}

fn yuan(fen: i64) -> String {
    let sign = if fen < 0 { "-" } else { "" };
    let a = fen.abs();
    format!("{sign}{}.{:02}", a / 100, a % 100)
}

/// Fee at 0.6%, in yuan with 5 decimals: fen × 0.00006 yuan = fen × 6 hundred-thousandths.
fn fee5(fen: i64) -> String {
    let units = fen * 6;
    let sign = if units < 0 { "-" } else { "" };
    let a = units.abs();
    format!("{sign}{}.{:05}", a / 100_000, a % 100_000)
}

struct BillRow {
    time_ms: i64,
    order: PayOrder,
    refund: Option<Refund>,
}

const ALL_COLUMNS: [&str; 27] = [
    "交易时间",
    "公众账号ID",
    "商户号",
    "特约商户号",
    "设备号",
    "微信订单号",
    "商户订单号",
    "用户标识",
    "交易类型",
    "交易状态",
    "付款银行",
    "货币种类",
    "应结订单金额",
    "代金券金额",
    "微信退款单号",
    "商户退款单号",
    "退款金额",
    "充值券退款金额",
    "退款类型",
    "退款状态",
    "商品名称",
    "商户数据包",
    "手续费",
    "费率",
    "订单金额",
    "申请退款金额",
    "费率备注",
];
const SUCCESS_COLUMNS: [&str; 20] = [
    "交易时间",
    "公众账号ID",
    "商户号",
    "特约商户号",
    "设备号",
    "微信订单号",
    "商户订单号",
    "用户标识",
    "交易类型",
    "交易状态",
    "付款银行",
    "货币种类",
    "应结订单金额",
    "代金券金额",
    "商品名称",
    "商户数据包",
    "手续费",
    "费率",
    "订单金额",
    "费率备注",
];
const REFUND_COLUMNS: [&str; 29] = [
    "交易时间",
    "公众账号ID",
    "商户号",
    "特约商户号",
    "设备号",
    "微信订单号",
    "商户订单号",
    "用户标识",
    "交易类型",
    "交易状态",
    "付款银行",
    "货币种类",
    "应结订单金额",
    "代金券金额",
    "退款申请时间",
    "退款成功时间",
    "微信退款单号",
    "商户退款单号",
    "退款金额",
    "充值券退款金额",
    "退款类型",
    "退款状态",
    "商品名称",
    "商户数据包",
    "手续费",
    "费率",
    "订单金额",
    "申请退款金额",
    "费率备注",
];

fn cell(cfg: &SandboxConfig, row: &BillRow, col: &str, garbled: bool) -> String {
    let o = &row.order;
    if garbled
        && matches!(
            col,
            "应结订单金额" | "订单金额" | "退款金额" | "申请退款金额"
        )
    {
        return "19,90".into();
    }
    let r = row.refund.as_ref();
    let refund_fee = r.map(|r| r.refund_fee).unwrap_or(0);
    match col {
        "交易时间" => beijing_datetime(row.time_ms),
        "公众账号ID" => cfg.appid.clone(),
        "商户号" => cfg.mch_id.clone(),
        "特约商户号" => cfg.sub_mch_id.clone().unwrap_or_else(|| "0".into()),
        "设备号" => o.param("device_info").unwrap_or_default().to_owned(),
        "微信订单号" => o.transaction_id.clone().unwrap_or_default(),
        "商户订单号" => o.out_trade_no.clone(),
        "用户标识" => openid_of(o),
        "交易类型" => o.trade_type.clone(),
        "交易状态" => if r.is_some() { "REFUND" } else { "SUCCESS" }.into(),
        "付款银行" => "OTHERS".into(),
        "货币种类" => "CNY".into(),
        "应结订单金额" | "订单金额" => yuan(if r.is_some() { 0 } else { o.total_fee }),
        "代金券金额" | "充值券退款金额" => "0.00".into(),
        "退款申请时间" => r
            .map(|r| beijing_datetime(r.created_ms))
            .unwrap_or_default(),
        "退款成功时间" => r
            .and_then(|r| r.success_ms)
            .map(beijing_datetime)
            .unwrap_or_default(),
        "微信退款单号" => r.map(|r| r.refund_id.clone()).unwrap_or_else(|| "0".into()),
        "商户退款单号" => r
            .map(|r| r.out_refund_no.clone())
            .unwrap_or_else(|| "0".into()),
        "退款金额" | "申请退款金额" => yuan(refund_fee),
        "退款类型" => if r.is_some() { "ORIGINAL" } else { "" }.into(),
        "退款状态" => r.map(|r| r.status.as_str().to_owned()).unwrap_or_default(),
        "商品名称" => o.param("body").unwrap_or_default().to_owned(),
        "商户数据包" => o.param("attach").unwrap_or_default().to_owned(),
        "手续费" => fee5(if r.is_some() {
            -refund_fee
        } else {
            o.total_fee
        }),
        "费率" => "0.60%".into(),
        _ => String::new(),
    }
}

fn downloadbill(sb: &Sandbox, cfg: &SandboxConfig, f: &Fields) -> Response {
    let Some(date) = get(f, "bill_date") else {
        return bill_fail("missing parameter", "20003");
    };
    if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return bill_fail("data format error", "20003");
    }
    // WeChat serves the last three months of bills (WECHAT_PAY_V2.md §2.7); what it answers
    // for an older day is UNVERIFIED: a failure here, as for a date it cannot read.
    let earliest = chrono::NaiveDate::parse_from_str(&beijing_date(sb.now_ms()), "%Y%m%d")
        .ok()
        .and_then(|today| today.checked_sub_months(chrono::Months::new(3)))
        .map(|d| d.format("%Y%m%d").to_string());
    if earliest.is_some_and(|earliest| date < earliest.as_str()) {
        return bill_fail("invalid bill_date", "20001");
    }
    let bill_type = get(f, "bill_type").unwrap_or("ALL");
    let failure = {
        let st = sb.st();
        let failures = &st.pay.bill_failures;
        failures
            .get(&format!("{date}/{bill_type}"))
            .or_else(|| failures.get(date))
            .cloned()
    };
    match failure {
        // The `error_code` WeChat sends with `Bill Creating` or `SYSTEMERROR` is UNVERIFIED
        // (the client reads `return_msg`).
        Some(BillFailure::Answer(msg)) => return bill_fail(&msg, "20001"),
        Some(BillFailure::Http(status)) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return (status, "bill service unavailable").into_response();
        }
        None => {}
    }
    let columns: &[&str] = match bill_type {
        "ALL" => &ALL_COLUMNS,
        "SUCCESS" => &SUCCESS_COLUMNS,
        "REFUND" => &REFUND_COLUMNS,
        "RECHARGE_REFUND" => &REFUND_COLUMNS,
        _ => return bill_fail("invalid bill_type", "20003"),
    };
    let state = sb.st();
    let mut rows: Vec<BillRow> = Vec::new();
    if matches!(bill_type, "ALL" | "SUCCESS") {
        for o in state.pay.orders.values() {
            if let Some(ms) = o.paid_ms.filter(|ms| beijing_date(*ms) == date) {
                rows.push(BillRow {
                    time_ms: ms,
                    order: o.clone(),
                    refund: None,
                });
            }
        }
    }
    if matches!(bill_type, "ALL" | "REFUND") {
        for r in state.pay.refunds.values() {
            let Some(ms) = r.success_ms.filter(|ms| beijing_date(*ms) == date) else {
                continue;
            };
            if let Some(o) = state.pay.orders.get(&r.out_trade_no) {
                rows.push(BillRow {
                    time_ms: ms,
                    order: o.clone(),
                    refund: Some(r.clone()),
                });
            }
        }
    }
    let garbled = state.pay.garbled_bill_lines.clone();
    drop(state);
    if rows.is_empty() {
        return bill_fail("No Bill Exist", "20002");
    }
    rows.sort_by_key(|r| r.time_ms);
    let mut out = String::new();
    out.push_str(&columns.join(","));
    out.push_str("\r\n");
    let (mut paid, mut refunded, mut fees) = (0i64, 0i64, 0i64);
    for row in &rows {
        let cells: Vec<String> = columns
            .iter()
            .map(|c| {
                let g = garbled.contains(&row.order.out_trade_no);
                format!("`{}", cell(cfg, row, c, g))
            })
            .collect();
        out.push_str(&cells.join(","));
        out.push_str("\r\n");
        match &row.refund {
            Some(r) => {
                refunded += r.refund_fee;
                fees -= r.refund_fee * 6;
            }
            None => {
                paid += row.order.total_fee;
                fees += row.order.total_fee * 6;
            }
        }
    }
    out.push_str("总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额\r\n");
    let fee_total = {
        let sign = if fees < 0 { "-" } else { "" };
        let a = fees.abs();
        format!("{sign}{}.{:05}", a / 100_000, a % 100_000)
    };
    out.push_str(&format!(
        "`{},`{},`{},`0.00,`{},`{},`{}\r\n",
        rows.len(),
        yuan(paid),
        yuan(refunded),
        fee_total,
        yuan(paid),
        yuan(refunded)
    ));
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        out,
    )
        .into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn amounts_in_yuan() {
        assert_eq!(yuan(1), "0.01");
        assert_eq!(yuan(12345), "123.45");
        assert_eq!(fee5(1), "0.00006");
        assert_eq!(fee5(10000), "0.60000");
        assert_eq!(fee5(-100), "-0.00600");
    }

    #[test]
    fn trade_numbers() {
        assert!(valid_no("ORD-20240101_x|*", 6, 32, &[]));
        assert!(!valid_no("abc", 6, 32, &[]));
        assert!(!valid_no("ORD 123456", 6, 32, &[]));
        assert!(!valid_no("ORD@123456", 6, 32, &[]));
        assert!(valid_no("R@1", 1, 64, &['@']));
        assert_eq!(fen("1"), Some(1));
        assert_eq!(fen("0"), None);
        assert_eq!(fen("1.00"), None);
        assert_eq!(fen("-1"), None);
    }

    /// A prepay id is pruned once its 2 hours are over and only then, at most once a minute;
    /// a forgotten one is still known as issued here. An untagged one (an older wxlocal's) is
    /// kept: forgotten, it would read as never issued.
    #[test]
    fn only_expired_prepay_ids_of_this_sandbox_are_pruned() {
        let key = Key::default();
        let mut pay = PayState::default();
        let order = |no: &str, created_ms: i64| PayOrder {
            out_trade_no: no.into(),
            params: Fields::new(),
            sign_type: SignType::Md5,
            prepay_id: String::new(),
            total_fee: 1,
            openid: None,
            sub_openid: None,
            trade_type: "JSAPI".into(),
            notify_url: String::new(),
            state: TradeState::NotPay,
            transaction_id: None,
            time_end: None,
            created_ms,
            paid_ms: None,
            expire_ms: None,
            refunded: 0,
            last_refund_ms: None,
        };
        let tagged = |body: &str| key.sign(format!("wx20240101000000{body}"), PREPAY_TAG);
        let (old, new) = (tagged("oldoldold0"), tagged("newnewnew0"));
        assert_eq!(old.len(), PREPAY_LEN);
        let untagged = "wx20240101000000untaggedprepayid0000".to_owned();
        pay.orders.insert("A".into(), order("A", 0));
        pay.orders.insert("B".into(), order("B", 0));
        pay.orders.insert("C".into(), order("C", 3_600_000));
        pay.prepay_ids.insert(old.clone(), "A".into());
        pay.prepay_ids.insert(untagged.clone(), "B".into());
        pay.prepay_ids.insert(new.clone(), "C".into());

        pay.prune(PREPAY_TTL_MS, &key);
        assert_eq!(pay.prepay_ids.len(), 3, "not expired yet");
        pay.prune(PREPAY_TTL_MS + 1, &key);
        assert_eq!(pay.prepay_ids.len(), 3, "pruned at most once a minute");
        pay.prune(PREPAY_TTL_MS + PRUNE_EVERY_MS, &key);
        assert!(!pay.prepay_ids.contains_key(&old), "expired: forgotten");
        assert!(pay.prepay_ids.contains_key(&new), "valid for an hour more");
        assert!(pay.prepay_ids.contains_key(&untagged), "an older wxlocal's");
        assert_eq!(pay.orders.len(), 3, "orders stay");
        assert!(
            key.signed(&old, PREPAY_LEN, PREPAY_TAG),
            "still known as issued here"
        );
        assert!(!key.signed(&untagged, PREPAY_LEN, PREPAY_TAG));
    }
}
