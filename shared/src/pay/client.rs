//! `PayClient`: the merchant API v2 calls a mini-program shop makes — unifiedorder,
//! orderquery, closeorder, refund (client certificate), refundquery, downloadbill.
//!
//! Every call goes through one pipeline so no call can skip a step: common fields (`appid`,
//! `mch_id`, `sub_*` in provider mode, `nonce_str`, `sign_type` when HMAC) → sign → POST →
//! capped body → hardened XML decode → `return_code` (FAIL = `PayError::Return`, never
//! retryable) → `sign` verified over every received field (→ `PayError::BadSignature`) →
//! echoed merchant ids checked → `result_code` (FAIL = `PayError::Business`, retryable per
//! WECHAT_PAY_V2.md §5) → typed view that keeps the raw `fields`. Bills are the documented
//! exception: unsigned text, parsed in `bill.rs`.
//!
//! Transport failures are classified for the outbox: timeouts, connect errors and HTTP 5xx
//! are retryable. The API key lives in a `SecretString` and is never formatted into an error
//! or a log line; reqwest errors are stripped of their URL.

use super::bill::{parse_bill, Bill, BillError, BillType};
use super::jsapi::{payment_params, PaymentParams};
use super::sign::{self, Fields, SignType};
use super::types::{FieldError, Reader, RefundStatus, TradeState};
use super::xml;
use crate::config::{ClientCert, Config};
use crate::domain::{random_alnum, Fen, OpenId, OutRefundNo, OutTradeNo};
use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;
use std::time::Duration;

/// Largest bill we download (a busy merchant's daily ALL bill is a few MiB).
pub const MAX_BILL_BYTES: usize = 32 * 1024 * 1024;

/// Everything the client needs. Build it from [`Config`] with [`PayConfig::from_config`].
#[derive(Clone, Debug)]
pub struct PayConfig {
    /// `https://api.mch.weixin.qq.com`, or the sandbox (`…/sandbox/mch`). No trailing slash needed.
    pub base_url: String,
    /// Direct mode: the mini program. Provider mode: the provider's appid.
    pub appid: String,
    /// Direct mode: the merchant. Provider mode: the provider's mch_id.
    pub mch_id: String,
    pub api_key: SecretString,
    pub sign_type: SignType,
    /// Provider mode: the sub-merchant's mini program (users' openids are under it).
    pub sub_appid: Option<String>,
    /// Provider mode: the sub-merchant.
    pub sub_mch_id: Option<String>,
    /// For `secapi/pay/refund`. `None` sends refunds without one (fine for the local sandbox).
    pub client_cert: Option<ClientCert>,
    /// Whole-request timeout.
    pub timeout: Duration,
}

impl PayConfig {
    pub fn from_config(c: &Config) -> Self {
        PayConfig {
            base_url: c.pay_base_url.clone(),
            appid: c.appid.clone(),
            mch_id: c.mch_id.clone(),
            api_key: c.api_key.clone(),
            sign_type: c.sign_type,
            sub_appid: c.sub_appid.clone(),
            sub_mch_id: c.sub_mch_id.clone(),
            client_cert: c.client_cert.clone(),
            timeout: Duration::from_millis(c.http_timeout_ms.max(1)),
        }
    }
}

/// What went wrong talking to WeChat Pay. Never contains the API key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PayError {
    #[error("pay client configuration: {0}")]
    Config(String),
    #[error("client certificate: {0}")]
    Certificate(String),
    /// We refused to send it (a bug or bad input upstream); not retryable.
    #[error("invalid pay request: {0}")]
    InvalidRequest(String),
    /// `return_code=FAIL`: signature, format or configuration problem. Not retryable.
    #[error("WeChat Pay refused the request: {msg}")]
    Return { msg: String },
    /// `result_code=FAIL` with `err_code`.
    #[error("WeChat Pay business error {code}: {description}")]
    Business {
        code: String,
        description: String,
        retryable: bool,
    },
    /// The response's `sign` is missing or does not verify: nothing in it is believed.
    #[error("WeChat Pay response signature does not verify")]
    BadSignature,
    /// The response echoes another merchant's ids.
    #[error("WeChat Pay response is for another merchant (`{0}` differs)")]
    WrongMerchant(&'static str),
    #[error("HTTP {status} from WeChat Pay")]
    Http { status: u16 },
    #[error("WeChat Pay did not answer in time")]
    Timeout,
    /// Not sent: too little of the invocation's time was left for the call
    /// ([`crate::time::call_timeout`]). Nothing reached WeChat Pay, unlike a
    /// [`PayError::Timeout`] (which a call cut mid-flight by that deadline is too).
    #[error("not sent to WeChat Pay: the invocation's time is nearly up")]
    NotSent,
    #[error("could not connect to WeChat Pay: {0}")]
    Connect(String),
    /// The connection broke mid-exchange.
    #[error("transport error talking to WeChat Pay: {0}")]
    Transport(String),
    #[error("WeChat Pay response is not a valid v2 message: {0}")]
    Decode(String),
    #[error("WeChat Pay response field: {0}")]
    Field(#[from] FieldError),
    /// `downloadbill` answered with an error other than "No Bill Exist".
    #[error("bill not available: {msg}")]
    BillUnavailable {
        msg: String,
        error_code: Option<String>,
        retryable: bool,
    },
    #[error("bill does not parse: {0}")]
    Bill(#[from] BillError),
}

impl PayError {
    /// Whether sending the *same* request again may succeed (retry with identical
    /// parameters: same `out_trade_no`, same `out_refund_no`).
    pub fn is_retryable(&self) -> bool {
        match self {
            PayError::Business { retryable, .. } | PayError::BillUnavailable { retryable, .. } => {
                *retryable
            }
            PayError::Http { status } => *status >= 500 || *status == 429,
            PayError::Timeout
            | PayError::NotSent
            | PayError::Connect(_)
            | PayError::Transport(_) => true,
            _ => false,
        }
    }

    /// WeChat's `err_code` for business errors (`ORDERPAID`, `SYSTEMERROR`, …).
    pub fn err_code(&self) -> Option<&str> {
        match self {
            PayError::Business { code, .. } => Some(code),
            PayError::BillUnavailable { error_code, .. } => error_code.as_deref(),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Api {
    UnifiedOrder,
    OrderQuery,
    CloseOrder,
    Refund,
    RefundQuery,
    DownloadBill,
}

impl Api {
    fn path(self) -> &'static str {
        match self {
            Api::UnifiedOrder => "pay/unifiedorder",
            Api::OrderQuery => "pay/orderquery",
            Api::CloseOrder => "pay/closeorder",
            Api::Refund => "secapi/pay/refund",
            Api::RefundQuery => "pay/refundquery",
            Api::DownloadBill => "pay/downloadbill",
        }
    }

    /// WECHAT_PAY_V2.md §5: transient errors worth the same request again.
    fn retryable(self, code: &str) -> bool {
        match code {
            "SYSTEMERROR" | "BIZERR_NEED_RETRY" | "FREQUENCY_LIMITED" => true,
            // For refunds: the merchant's balance; it fills up. For payments: the payer's.
            "NOTENOUGH" => self == Api::Refund,
            _ => false,
        }
    }
}

/// `pay/unifiedorder` for a mini program (`trade_type=JSAPI`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnifiedOrderRequest {
    /// `<store>-<goods>`, at most [`MAX_BODY_BYTES`] UTF-8 bytes (fit it with
    /// [`truncate_bytes`]).
    pub body: String,
    pub out_trade_no: OutTradeNo,
    pub total_fee: Fen,
    pub spbill_create_ip: String,
    /// No query string (WeChat drops it).
    pub notify_url: String,
    /// The payer under the mini program: sent as `openid` (direct) or `sub_openid` (provider).
    pub openid: OpenId,
    /// Epoch ms, sent as Beijing `yyyyMMddHHmmss`.
    pub time_start: Option<i64>,
    /// Epoch ms, sent as Beijing `yyyyMMddHHmmss`. Only honoured on the first call.
    pub time_expire: Option<i64>,
    /// Echoed in the query and the notification; at most [`MAX_ATTACH_BYTES`] UTF-8 bytes.
    pub attach: Option<String>,
    /// JSON goods detail, at most [`MAX_DETAIL_BYTES`] UTF-8 bytes.
    pub detail: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnifiedOrderResponse {
    pub prepay_id: String,
    pub trade_type: String,
    pub fields: Fields,
}

/// Which order to query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OrderRef {
    OutTradeNo(OutTradeNo),
    TransactionId(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderQueryResponse {
    pub trade_state: TradeState,
    pub trade_state_desc: Option<String>,
    pub out_trade_no: Option<String>,
    pub transaction_id: Option<String>,
    pub total_fee: Option<Fen>,
    pub cash_fee: Option<Fen>,
    pub time_end_ms: Option<i64>,
    pub openid: Option<String>,
    pub sub_openid: Option<String>,
    pub attach: Option<String>,
    pub fields: Fields,
}

/// `secapi/pay/refund`. Retry a failed refund with the *same* `out_refund_no`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundRequest {
    pub out_trade_no: OutTradeNo,
    pub out_refund_no: OutRefundNo,
    /// The order's total.
    pub total_fee: Fen,
    pub refund_fee: Fen,
    /// At most [`MAX_REFUND_DESC_BYTES`] UTF-8 bytes; shown to the user.
    pub refund_desc: Option<String>,
    /// Overrides the platform's refund notification URL.
    pub notify_url: Option<String>,
}

/// A refund *accepted*; its outcome comes from the notification or `refund_query`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundResponse {
    pub transaction_id: Option<String>,
    pub out_trade_no: Option<String>,
    pub out_refund_no: Option<String>,
    pub refund_id: String,
    pub refund_fee: Option<Fen>,
    pub total_fee: Option<Fen>,
    pub fields: Fields,
}

/// Which refund(s) to query; WeChat's priority is the order of the variants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefundRef {
    RefundId(String),
    OutRefundNo(OutRefundNo),
    TransactionId(String),
    OutTradeNo(OutTradeNo),
}

/// One refund of a `refundquery` answer (the indexed `_$n` fields).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundRecord {
    pub out_refund_no: String,
    pub refund_id: String,
    pub refund_fee: Fen,
    pub settlement_refund_fee: Option<Fen>,
    pub refund_status: RefundStatus,
    pub refund_channel: Option<String>,
    pub refund_account: Option<String>,
    /// `refund_recv_accout_$n` (sic).
    pub refund_recv_account: Option<String>,
    pub success_time_ms: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundQueryResponse {
    pub out_trade_no: Option<String>,
    pub transaction_id: Option<String>,
    pub total_fee: Option<Fen>,
    /// All refunds of the order (page through with `refund_query_page` beyond 10).
    pub total_refund_count: Option<u32>,
    pub refunds: Vec<RefundRecord>,
    pub fields: Fields,
}

/// The WeChat Pay v2 client. Cheap to clone (shares its connection pools).
#[derive(Clone)]
pub struct PayClient {
    cfg: Arc<PayConfig>,
    http: reqwest::Client,
    /// With the client certificate when one is configured (refunds).
    secure: reqwest::Client,
    /// Each API's URL parsed once, not by reqwest at every call.
    urls: Arc<crate::urls::ParsedUrls>,
}

impl std::fmt::Debug for PayClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayClient")
            .field("base_url", &self.cfg.base_url)
            .field("mch_id", &self.cfg.mch_id)
            .field("client_cert", &self.cfg.client_cert.is_some())
            .finish()
    }
}

fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The client certificate as PEM (key first, then the chain), whatever form it came in.
fn identity_pem(cert: &ClientCert) -> Result<String, PayError> {
    match cert {
        ClientCert::Pem { cert, key } => Ok(format!("{}\n{}\n", key.expose_secret(), cert)),
        ClientCert::Pkcs12 { der, password } => {
            let store = p12_keystore::KeyStore::from_pkcs12(der, password.expose_secret())
                .map_err(|e| {
                    PayError::Certificate(format!(
                        "PKCS#12 does not open (wrong password or not PKCS#12): {e}"
                    ))
                })?;
            let (_, chain) = store.private_key_chain().ok_or_else(|| {
                PayError::Certificate("PKCS#12 holds no private key with a certificate".into())
            })?;
            let mut pem = pem_block("PRIVATE KEY", chain.key());
            for c in chain.chain() {
                pem.push_str(&pem_block("CERTIFICATE", c.as_der()));
            }
            Ok(pem)
        }
    }
}

fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s.chars().take(300).collect()
}

fn transport(e: reqwest::Error) -> PayError {
    let e = e.without_url();
    if e.is_timeout() {
        PayError::Timeout
    } else if e.is_connect() {
        PayError::Connect(describe(&e))
    } else {
        PayError::Transport(describe(&e))
    }
}

/// Longest `body` WeChat takes, in UTF-8 bytes: String(128) in the field table, 127 on the
/// current merchant page and in WeChat's own error text ("大于最大值 127").
pub const MAX_BODY_BYTES: usize = 127;
/// Longest `attach`, in UTF-8 bytes.
pub const MAX_ATTACH_BYTES: usize = 127;
/// Longest `detail`, in UTF-8 bytes.
pub const MAX_DETAIL_BYTES: usize = 6000;
/// Longest `refund_desc`, in UTF-8 bytes.
pub const MAX_REFUND_DESC_BYTES: usize = 80;

/// WeChat Pay counts a field's length in UTF-8 bytes, not characters: a CJK character is 3.
fn check_len(what: &str, v: &str, max: usize) -> Result<(), PayError> {
    if v.len() > max {
        return Err(PayError::InvalidRequest(format!(
            "{what} is longer than {max} bytes (UTF-8; a Chinese character takes 3)"
        )));
    }
    Ok(())
}

/// The longest prefix of `s` within `max` UTF-8 bytes that ends on a character boundary:
/// how to fit free text (goods names, refund reasons) into a WeChat Pay field.
pub fn truncate_bytes(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl PayClient {
    pub fn new(cfg: PayConfig) -> Result<PayClient, PayError> {
        let mut problems = Vec::new();
        if url::Url::parse(&cfg.base_url).is_err() {
            problems.push("base_url is not a URL".to_owned());
        }
        if cfg.appid.is_empty() {
            problems.push("appid is empty".into());
        }
        if cfg.mch_id.is_empty() {
            problems.push("mch_id is empty".into());
        }
        if cfg.api_key.expose_secret().is_empty() {
            problems.push("api_key is empty".into());
        }
        if cfg.sub_appid.is_some() && cfg.sub_mch_id.is_none() {
            problems.push("sub_appid is set without sub_mch_id".into());
        }
        if !problems.is_empty() {
            return Err(PayError::Config(problems.join("; ")));
        }
        let builder = || {
            reqwest::Client::builder()
                .timeout(cfg.timeout)
                .connect_timeout(cfg.timeout.min(Duration::from_secs(5)))
                .user_agent(concat!("wxshop/", env!("CARGO_PKG_VERSION")))
        };
        let http = builder()
            .build()
            .map_err(|e| PayError::Config(format!("HTTP client: {}", describe(&e))))?;
        let secure = match &cfg.client_cert {
            None => http.clone(),
            Some(cert) => {
                let pem = identity_pem(cert)?;
                let identity = reqwest::Identity::from_pem(pem.as_bytes()).map_err(|e| {
                    PayError::Certificate(format!(
                        "not a usable key and certificate: {}",
                        describe(&e)
                    ))
                })?;
                builder().identity(identity).build().map_err(|e| {
                    PayError::Certificate(format!(
                        "not a usable key and certificate: {}",
                        describe(&e)
                    ))
                })?
            }
        };
        Ok(PayClient {
            cfg: Arc::new(cfg),
            http,
            secure,
            urls: Arc::default(),
        })
    }

    pub fn from_config(config: &Config) -> Result<PayClient, PayError> {
        PayClient::new(PayConfig::from_config(config))
    }

    pub fn config(&self) -> &PayConfig {
        &self.cfg
    }

    /// The appid users' openids and `paySign` belong to: `sub_appid` in provider mode.
    pub fn user_appid(&self) -> &str {
        self.cfg.sub_appid.as_deref().unwrap_or(&self.cfg.appid)
    }

    /// `wx.requestPayment` parameters for a prepay_id, signed for the right appid.
    pub fn payment_params(&self, prepay_id: &str, now_secs: i64) -> PaymentParams {
        payment_params(
            self.user_appid(),
            prepay_id,
            self.cfg.api_key.expose_secret(),
            self.cfg.sign_type,
            now_secs,
        )
    }

    fn common_fields(&self) -> Fields {
        let mut f = Fields::new();
        f.insert("appid".into(), self.cfg.appid.clone());
        f.insert("mch_id".into(), self.cfg.mch_id.clone());
        if let Some(s) = &self.cfg.sub_appid {
            f.insert("sub_appid".into(), s.clone());
        }
        if let Some(s) = &self.cfg.sub_mch_id {
            f.insert("sub_mch_id".into(), s.clone());
        }
        f.insert("nonce_str".into(), random_alnum(32));
        f
    }

    async fn post(&self, api: Api, fields: Fields, cap: usize) -> Result<Vec<u8>, PayError> {
        let mut all = self.common_fields();
        all.extend(fields);
        let body = sign::signed_xml(all, self.cfg.api_key.expose_secret(), self.cfg.sign_type);
        let url = format!("{}/{}", self.cfg.base_url.trim_end_matches('/'), api.path());
        let client = if api == Api::Refund {
            &self.secure
        } else {
            &self.http
        };
        let timeout = match crate::time::call_timeout(self.cfg.timeout) {
            crate::time::CallBudget::Send(t) => t,
            crate::time::CallBudget::NoTime => {
                tracing::warn!(
                    api = api.path(),
                    "not sent: the invocation's deadline is too near"
                );
                return Err(PayError::NotSent);
            }
        };
        // A URL that does not parse goes to reqwest as text, which refuses it as before.
        let req = match self.urls.parse(&url) {
            Ok(parsed) => client.post(parsed),
            Err(_) => client.post(url),
        };
        let mut resp = req
            .timeout(timeout)
            .header(http::header::CONTENT_TYPE, "text/xml; charset=utf-8")
            .body(body)
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status();
        if !status.is_success() {
            tracing::warn!(
                api = api.path(),
                status = status.as_u16(),
                "WeChat Pay HTTP error"
            );
            return Err(PayError::Http {
                status: status.as_u16(),
            });
        }
        let mut buf = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            if buf.len() + chunk.len() > cap {
                return Err(PayError::Decode(format!("response exceeds {cap} bytes")));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf)
    }

    /// Decode → return_code → sign → merchant ids → result_code.
    fn check(&self, api: Api, body: &[u8]) -> Result<Fields, PayError> {
        let fields = xml::decode(body).map_err(|e| PayError::Decode(e.to_string()))?;
        let r = Reader(&fields);
        if r.opt("return_code") != Some("SUCCESS") {
            let msg: String = r
                .opt("return_msg")
                .unwrap_or("")
                .chars()
                .take(200)
                .collect();
            tracing::warn!(api = api.path(), return_msg = %msg, "WeChat Pay return_code FAIL");
            return Err(PayError::Return { msg });
        }
        if let Err(e) = sign::verify(&fields, self.cfg.api_key.expose_secret()) {
            tracing::warn!(api = api.path(), reason = %e, "WeChat Pay response signature refused");
            return Err(PayError::BadSignature);
        }
        // WeChat echoes appid and mch_id in every reply whose return_code is SUCCESS (§2.2):
        // a signed reply without them, or with others, is not about our merchant.
        for (k, want) in [("appid", &self.cfg.appid), ("mch_id", &self.cfg.mch_id)] {
            if r.opt(k) != Some(want.as_str()) {
                tracing::warn!(
                    api = api.path(),
                    field = k,
                    "WeChat Pay reply for another merchant (or without its id) refused"
                );
                return Err(PayError::WrongMerchant(k));
            }
        }
        if let (Some(got), Some(want)) = (r.opt("sub_mch_id"), self.cfg.sub_mch_id.as_deref()) {
            if got != want {
                return Err(PayError::WrongMerchant("sub_mch_id"));
            }
        }
        if r.opt("result_code") != Some("SUCCESS") {
            let code = r.opt("err_code").unwrap_or("UNKNOWN").to_owned();
            let description = r
                .opt("err_code_des")
                .or(r.opt("result_msg"))
                .unwrap_or("")
                .chars()
                .take(200)
                .collect();
            let retryable = api.retryable(&code);
            tracing::info!(api = api.path(), err_code = %code, retryable, "WeChat Pay business error");
            return Err(PayError::Business {
                code,
                description,
                retryable,
            });
        }
        Ok(fields)
    }

    async fn call(&self, api: Api, fields: Fields) -> Result<Fields, PayError> {
        // One byte over the decoder's cap so an oversize body reports as such.
        let body = self.post(api, fields, xml::MAX_BODY + 1).await?;
        self.check(api, &body)
    }

    pub async fn unified_order(
        &self,
        req: &UnifiedOrderRequest,
    ) -> Result<UnifiedOrderResponse, PayError> {
        if req.body.trim().is_empty() {
            return Err(PayError::InvalidRequest("body is empty".into()));
        }
        check_len("body", &req.body, MAX_BODY_BYTES)?;
        if req.total_fee.get() < 1 {
            return Err(PayError::InvalidRequest(
                "total_fee must be at least 1 fen".into(),
            ));
        }
        if req.spbill_create_ip.is_empty() {
            return Err(PayError::InvalidRequest("spbill_create_ip is empty".into()));
        }
        check_len("spbill_create_ip", &req.spbill_create_ip, 64)?;
        if req.notify_url.is_empty() || req.notify_url.contains('?') {
            return Err(PayError::InvalidRequest(
                "notify_url must be set and have no query string".into(),
            ));
        }
        check_len("notify_url", &req.notify_url, 256)?;
        let mut f = Fields::new();
        f.insert("body".into(), req.body.clone());
        f.insert("out_trade_no".into(), req.out_trade_no.to_string());
        f.insert("total_fee".into(), req.total_fee.to_string());
        f.insert("spbill_create_ip".into(), req.spbill_create_ip.clone());
        f.insert("notify_url".into(), req.notify_url.clone());
        f.insert("trade_type".into(), "JSAPI".into());
        let openid_key = if self.cfg.sub_appid.is_some() {
            "sub_openid"
        } else {
            "openid"
        };
        f.insert(openid_key.into(), req.openid.to_string());
        if let Some(ms) = req.time_start {
            f.insert("time_start".into(), crate::time::beijing_compact(ms));
        }
        if let Some(ms) = req.time_expire {
            f.insert("time_expire".into(), crate::time::beijing_compact(ms));
        }
        if let Some(a) = &req.attach {
            check_len("attach", a, MAX_ATTACH_BYTES)?;
            f.insert("attach".into(), a.clone());
        }
        if let Some(d) = &req.detail {
            check_len("detail", d, MAX_DETAIL_BYTES)?;
            f.insert("detail".into(), d.clone());
        }
        let fields = self.call(Api::UnifiedOrder, f).await?;
        let r = Reader(&fields);
        let prepay_id = r.req_string("prepay_id")?;
        let trade_type = r.opt("trade_type").unwrap_or("JSAPI").to_owned();
        Ok(UnifiedOrderResponse {
            prepay_id,
            trade_type,
            fields,
        })
    }

    pub async fn order_query(&self, by: OrderRef) -> Result<OrderQueryResponse, PayError> {
        let mut f = Fields::new();
        match by {
            OrderRef::OutTradeNo(n) => f.insert("out_trade_no".into(), n.into()),
            OrderRef::TransactionId(t) => f.insert("transaction_id".into(), t),
        };
        let fields = self.call(Api::OrderQuery, f).await?;
        let r = Reader(&fields);
        let resp = OrderQueryResponse {
            trade_state: TradeState::parse(r.req("trade_state")?),
            trade_state_desc: r.opt_string("trade_state_desc"),
            out_trade_no: r.opt_string("out_trade_no"),
            transaction_id: r.opt_string("transaction_id"),
            total_fee: r.opt_fen("total_fee")?,
            cash_fee: r.opt_fen("cash_fee")?,
            time_end_ms: r.opt_compact_time("time_end")?,
            openid: r.opt_string("openid"),
            sub_openid: r.opt_string("sub_openid"),
            attach: r.opt_string("attach"),
            fields: Fields::new(),
        };
        Ok(OrderQueryResponse { fields, ..resp })
    }

    /// `pay/closeorder`. `ORDERPAID` comes back as a business error: treat the order as paid.
    pub async fn close_order(&self, out_trade_no: &OutTradeNo) -> Result<Fields, PayError> {
        let mut f = Fields::new();
        f.insert("out_trade_no".into(), out_trade_no.to_string());
        self.call(Api::CloseOrder, f).await
    }

    pub async fn refund(&self, req: &RefundRequest) -> Result<RefundResponse, PayError> {
        if req.refund_fee.get() < 1 || req.refund_fee > req.total_fee {
            return Err(PayError::InvalidRequest(
                "refund_fee must be between 1 fen and total_fee".into(),
            ));
        }
        let mut f = Fields::new();
        f.insert("out_trade_no".into(), req.out_trade_no.to_string());
        f.insert("out_refund_no".into(), req.out_refund_no.to_string());
        f.insert("total_fee".into(), req.total_fee.to_string());
        f.insert("refund_fee".into(), req.refund_fee.to_string());
        if let Some(d) = &req.refund_desc {
            check_len("refund_desc", d, MAX_REFUND_DESC_BYTES)?;
            f.insert("refund_desc".into(), d.clone());
        }
        if let Some(u) = &req.notify_url {
            check_len("notify_url", u, 256)?;
            f.insert("notify_url".into(), u.clone());
        }
        if self.cfg.client_cert.is_none() {
            tracing::debug!("refund sent without a client certificate (none configured)");
        }
        let fields = self.call(Api::Refund, f).await?;
        let r = Reader(&fields);
        let resp = RefundResponse {
            transaction_id: r.opt_string("transaction_id"),
            out_trade_no: r.opt_string("out_trade_no"),
            out_refund_no: r.opt_string("out_refund_no"),
            refund_id: r.req_string("refund_id")?,
            refund_fee: r.opt_fen("refund_fee")?,
            total_fee: r.opt_fen("total_fee")?,
            fields: Fields::new(),
        };
        Ok(RefundResponse { fields, ..resp })
    }

    pub async fn refund_query(&self, by: RefundRef) -> Result<RefundQueryResponse, PayError> {
        self.refund_query_page(by, None).await
    }

    /// `pay/refundquery` with `offset` (orders with more than 10 refunds).
    pub async fn refund_query_page(
        &self,
        by: RefundRef,
        offset: Option<u32>,
    ) -> Result<RefundQueryResponse, PayError> {
        let mut f = Fields::new();
        match by {
            RefundRef::RefundId(v) => f.insert("refund_id".into(), v),
            RefundRef::OutRefundNo(v) => f.insert("out_refund_no".into(), v.into()),
            RefundRef::TransactionId(v) => f.insert("transaction_id".into(), v),
            RefundRef::OutTradeNo(v) => f.insert("out_trade_no".into(), v.into()),
        };
        if let Some(o) = offset {
            f.insert("offset".into(), o.to_string());
        }
        let fields = self.call(Api::RefundQuery, f).await?;
        let refunds = refund_records(&fields)?;
        let r = Reader(&fields);
        let resp = RefundQueryResponse {
            out_trade_no: r.opt_string("out_trade_no"),
            transaction_id: r.opt_string("transaction_id"),
            total_fee: r.opt_fen("total_fee")?,
            total_refund_count: r.opt_u32("total_refund_count")?,
            refunds,
            fields: Fields::new(),
        };
        Ok(RefundQueryResponse { fields, ..resp })
    }

    /// `pay/downloadbill` for one Beijing-time day (`yyyyMMdd`). "No Bill Exist" is an
    /// empty bill; "Bill Creating" is a retryable `BillUnavailable`.
    pub async fn download_bill(
        &self,
        bill_date: &str,
        bill_type: BillType,
    ) -> Result<Bill, PayError> {
        if bill_date.len() != 8 || !bill_date.bytes().all(|b| b.is_ascii_digit()) {
            return Err(PayError::InvalidRequest(
                "bill_date must be yyyyMMdd".into(),
            ));
        }
        let mut f = Fields::new();
        f.insert("bill_date".into(), bill_date.to_owned());
        f.insert("bill_type".into(), bill_type.as_str().to_owned());
        let body = self.post(Api::DownloadBill, f, MAX_BILL_BYTES).await?;
        let text =
            std::str::from_utf8(&body).map_err(|_| PayError::Decode("bill is not UTF-8".into()))?;
        let start = text.trim_start_matches('\u{feff}').trim_start();
        if start.starts_with('<') {
            return match bill_error(start.as_bytes()) {
                BillOutcome::Empty => Ok(Bill::empty()),
                BillOutcome::Error(e) => Err(e),
            };
        }
        Ok(parse_bill(text)?)
    }
}

enum BillOutcome {
    Empty,
    Error(PayError),
}

/// An XML answer from downloadbill is always a failure (the bill itself is text).
fn bill_error(xml_body: &[u8]) -> BillOutcome {
    let fields = match xml::decode(xml_body) {
        Ok(f) => f,
        Err(e) => return BillOutcome::Error(PayError::Decode(e.to_string())),
    };
    let r = Reader(&fields);
    let msg = r.opt("return_msg").unwrap_or("").trim();
    if msg.eq_ignore_ascii_case("No Bill Exist") {
        return BillOutcome::Empty;
    }
    let retryable = msg.eq_ignore_ascii_case("Bill Creating") || msg == "SYSTEMERROR";
    BillOutcome::Error(PayError::BillUnavailable {
        msg: msg.chars().take(200).collect(),
        error_code: r.opt_string("error_code").or(r.opt_string("err_code")),
        retryable,
    })
}

/// The indexed `_$n` refunds of a refundquery answer.
fn refund_records(fields: &Fields) -> Result<Vec<RefundRecord>, FieldError> {
    let r = Reader(fields);
    let count = match r.opt_u32("refund_count")? {
        Some(n) => n,
        // Not sent: count the indexed records present.
        None => (0..)
            .take_while(|n| r.opt(&format!("out_refund_no_{n}")).is_some())
            .count() as u32,
    };
    if count > 100 {
        return Err(super::types::invalid("refund_count", "more than 100"));
    }
    (0..count)
        .map(|n| {
            let k = |base: &str| format!("{base}_{n}");
            Ok(RefundRecord {
                out_refund_no: r.req_string(&k("out_refund_no"))?,
                refund_id: r.req_string(&k("refund_id"))?,
                refund_fee: r.fen(&k("refund_fee"))?,
                settlement_refund_fee: r.opt_fen(&k("settlement_refund_fee"))?,
                refund_status: RefundStatus::parse(r.req(&k("refund_status"))?),
                refund_channel: r.opt_string(&k("refund_channel")),
                refund_account: r.opt_string(&k("refund_account")),
                refund_recv_account: r.opt_string(&k("refund_recv_accout")),
                success_time_ms: r.opt_datetime(&k("refund_success_time"))?,
            })
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn retryability_follows_the_error_table() {
        assert!(Api::UnifiedOrder.retryable("SYSTEMERROR"));
        assert!(Api::Refund.retryable("BIZERR_NEED_RETRY"));
        assert!(Api::Refund.retryable("FREQUENCY_LIMITED"));
        assert!(Api::Refund.retryable("NOTENOUGH"));
        assert!(!Api::UnifiedOrder.retryable("NOTENOUGH"));
        assert!(!Api::UnifiedOrder.retryable("ORDERPAID"));
        assert!(!Api::Refund.retryable("INVALID_REQ_TOO_MUCH"));
        assert!(PayError::Timeout.is_retryable());
        assert!(PayError::NotSent.is_retryable());
        assert!(PayError::Http { status: 502 }.is_retryable());
        assert!(!PayError::Http { status: 404 }.is_retryable());
        assert!(!PayError::Return {
            msg: "签名错误".into()
        }
        .is_retryable());
        assert!(!PayError::BadSignature.is_retryable());
        let e = PayError::Business {
            code: "ORDERPAID".into(),
            description: String::new(),
            retryable: false,
        };
        assert_eq!(e.err_code(), Some("ORDERPAID"));
    }

    #[test]
    fn refund_records_read_indexed_fields() {
        let mut f = Fields::new();
        for (k, v) in [
            ("refund_count", "2"),
            ("out_refund_no_0", "R1"),
            ("refund_id_0", "5001"),
            ("refund_fee_0", "10"),
            ("refund_status_0", "SUCCESS"),
            ("refund_success_time_0", "2016-07-25 15:26:26"),
            ("out_refund_no_1", "R2"),
            ("refund_id_1", "5002"),
            ("refund_fee_1", "20"),
            ("refund_status_1", "PROCESSING"),
        ] {
            f.insert(k.into(), v.into());
        }
        let recs = refund_records(&f).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[1].refund_status, RefundStatus::Processing);
        assert!(recs[0].success_time_ms.is_some());
        f.remove("refund_count");
        assert_eq!(refund_records(&f).unwrap().len(), 2);
        f.insert("refund_count".into(), "3".into());
        assert!(refund_records(&f).is_err());
    }

    #[test]
    fn pem_blocks_wrap_at_64() {
        let pem = pem_block("CERTIFICATE", &[0u8; 100]);
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(pem.lines().all(|l| l.len() <= 64));
    }
}
