//! Errors from api.weixin.qq.com, classed so callers know whether to retry.
//!
//! The outbox and the handlers decide what to do with a failure by asking
//! [`WxError::is_retryable`] and [`WxError::retry_after`], never by parsing text. Messages
//! carry the API path, `errcode`, `errmsg` and WeChat's `rid` (what WeChat support asks
//! for) — never a URL, because URLs carry the access token or the AppSecret.

use crate::store::StoreError;
use std::time::Duration;

/// `errcode` values that mean "this access token is not (or no longer) valid".
pub const TOKEN_ERRCODES: [i64; 3] = [40001, 40014, 42001];
/// System busy: retry with back-off.
pub const ERRCODE_BUSY: i64 = -1;
/// Daily API quota reached.
pub const ERRCODE_QUOTA: i64 = 45009;
/// Instantaneous frequency too high.
pub const ERRCODE_TOO_FREQUENT: i64 = 300000;
/// Generic "try again later".
pub const ERRCODE_TRY_LATER: i64 = 990010;
/// "订单不存在" (no such order): documented for `shop/order/getpaymentparams`; WeChat staff's
/// and developers' threads show it from `shop/order/get` and `shop/order/pay` too, for an
/// `out_order_id` WeChat does not hold (or holds under another user). That `shop/order/close`
/// answers the same is UNVERIFIED (assumed; the sandbox does).
pub const ERRCODE_ORDER_NOT_FOUND: i64 = 1_010_011;

#[derive(Debug, thiserror::Error)]
pub enum WxError {
    /// WeChat answered with `errcode != 0`.
    #[error("{path}: errcode {errcode}: {errmsg}")]
    Api {
        errcode: i64,
        errmsg: String,
        /// Request id from `errmsg` ("… rid: 6519…"), for WeChat support.
        rid: Option<String>,
        path: String,
    },
    /// A non-2xx HTTP status.
    #[error("{path}: HTTP {status}")]
    Http { status: u16, path: String },
    #[error("{path}: timed out")]
    Timeout { path: String },
    /// Not sent: too little of the invocation's time was left for it
    /// ([`crate::time::call_timeout`]). Nothing reached WeChat; worth trying again later.
    #[error("{path}: not sent: the invocation's time is nearly up")]
    NotSent { path: String },
    #[error("{path}: cannot connect: {why}")]
    Connect { path: String, why: String },
    /// Any other transport failure (reset connection, bad TLS, body read error).
    #[error("{path}: transport error: {why}")]
    Transport { path: String, why: String },
    /// The reply was not the JSON we expected.
    #[error("{path}: unreadable response: {why}")]
    Decode { path: String, why: String },
    /// The request could not be built (bad id, unencodable body, missing field).
    #[error("invalid request for {path}: {why}")]
    Invalid { path: String, why: String },
    /// The shared token store failed and no token could be obtained.
    #[error("token store: {0}")]
    Store(#[from] StoreError),
}

/// A coarse class of [`WxError`], for `match`ing without remembering codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WxErrorKind {
    /// 40001/40014/42001 that survived the one automatic refresh-and-retry.
    TokenInvalid,
    /// 45009: daily quota. Back off for a long time; reset in the MP console.
    QuotaExceeded,
    /// -1, 300000, 990010: busy or too frequent. Back off briefly.
    Busy,
    /// 5xx, timeouts, connection failures.
    Transport,
    /// Anything else: the request or the state is wrong; retrying will not help.
    Permanent,
}

impl WxError {
    pub fn kind(&self) -> WxErrorKind {
        match self {
            WxError::Api { errcode, .. } => match *errcode {
                c if TOKEN_ERRCODES.contains(&c) => WxErrorKind::TokenInvalid,
                ERRCODE_QUOTA => WxErrorKind::QuotaExceeded,
                ERRCODE_BUSY | ERRCODE_TOO_FREQUENT | ERRCODE_TRY_LATER => WxErrorKind::Busy,
                _ => WxErrorKind::Permanent,
            },
            WxError::Http { status, .. } if *status >= 500 || *status == 429 => {
                WxErrorKind::Transport
            }
            WxError::Http { .. } => WxErrorKind::Permanent,
            WxError::Timeout { .. }
            | WxError::NotSent { .. }
            | WxError::Connect { .. }
            | WxError::Transport { .. } => WxErrorKind::Transport,
            WxError::Store(e) if e.is_conflict() => WxErrorKind::Transport,
            WxError::Store(_) => WxErrorKind::Transport,
            WxError::Decode { .. } | WxError::Invalid { .. } => WxErrorKind::Permanent,
        }
    }

    /// Whether the call may have been applied at WeChat all the same: its answer was lost on
    /// the way back (a timeout, a dropped connection, a gateway's 5xx, a reply that is not
    /// WeChat's). WeChat's own refusal carries an errcode; a call that could not connect, or
    /// could not be made, never reached it.
    pub fn answer_lost(&self) -> bool {
        matches!(
            self,
            WxError::Timeout { .. }
                | WxError::Transport { .. }
                | WxError::Http { .. }
                | WxError::Decode { .. }
        )
    }

    /// Worth trying again later (the outbox keeps it; a handler may answer "try again").
    /// A token error that survived the automatic retry counts as retryable: the next
    /// attempt fetches a new token.
    pub fn is_retryable(&self) -> bool {
        !matches!(self.kind(), WxErrorKind::Permanent)
    }

    /// How long to wait before the next attempt, when retrying makes sense. Callers with
    /// their own exponential back-off should wait at least this long.
    pub fn retry_after(&self) -> Option<Duration> {
        match self.kind() {
            WxErrorKind::Permanent => None,
            // The quota is daily; hammering it only burns the reset budget.
            WxErrorKind::QuotaExceeded => Some(Duration::from_secs(15 * 60)),
            WxErrorKind::Busy => Some(Duration::from_secs(1)),
            WxErrorKind::Transport => Some(Duration::from_secs(2)),
            WxErrorKind::TokenInvalid => Some(Duration::from_secs(5)),
        }
    }

    pub fn errcode(&self) -> Option<i64> {
        match self {
            WxError::Api { errcode, .. } => Some(*errcode),
            _ => None,
        }
    }

    pub fn rid(&self) -> Option<&str> {
        match self {
            WxError::Api { rid, .. } => rid.as_deref(),
            _ => None,
        }
    }

    pub fn is_token_error(&self) -> bool {
        self.kind() == WxErrorKind::TokenInvalid
    }

    /// Builds the error from a reqwest failure without its URL (which holds secrets).
    pub(crate) fn from_reqwest(path: &str, e: reqwest::Error) -> Self {
        let path = path.to_owned();
        let timeout = e.is_timeout();
        let connect = e.is_connect();
        let why = e.without_url().to_string();
        if timeout {
            WxError::Timeout { path }
        } else if connect {
            WxError::Connect { path, why }
        } else {
            WxError::Transport { path, why }
        }
    }
}

/// Pulls `rid` out of an `errmsg` such as `"invalid credential rid: 6519ab12-1e6a1f1b-7b0e"`.
pub fn rid_from_errmsg(errmsg: &str) -> Option<String> {
    let at = errmsg.rfind("rid:")?;
    let rest = errmsg[at + 4..].trim_start();
    let rid: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    (!rid.is_empty()).then_some(rid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: i64) -> WxError {
        WxError::Api {
            errcode: code,
            errmsg: "x".into(),
            rid: None,
            path: "shop/order/add".into(),
        }
    }

    #[test]
    fn a_call_not_sent_for_want_of_time_is_retryable_but_not_answer_lost() {
        let not_sent = WxError::NotSent {
            path: "shop/order/add".into(),
        };
        assert_eq!(not_sent.kind(), WxErrorKind::Transport);
        assert!(not_sent.is_retryable());
        assert!(!not_sent.answer_lost(), "nothing reached WeChat");
        // Cut mid-flight by the deadline: a timeout, which may have been applied.
        let cut = WxError::Timeout {
            path: "shop/order/add".into(),
        };
        assert!(cut.is_retryable());
        assert!(cut.answer_lost());
    }

    #[test]
    fn classes() {
        assert_eq!(api(45009).kind(), WxErrorKind::QuotaExceeded);
        assert!(api(45009).is_retryable());
        assert!(api(45009).retry_after().unwrap() >= Duration::from_secs(60));
        assert_eq!(api(-1).kind(), WxErrorKind::Busy);
        assert!(api(-1).is_retryable());
        assert!(!api(1010005).is_retryable());
        assert_eq!(api(1010005).retry_after(), None);
        assert_eq!(api(42001).kind(), WxErrorKind::TokenInvalid);
        let http = WxError::Http {
            status: 502,
            path: "p".into(),
        };
        assert!(http.is_retryable());
        let http = WxError::Http {
            status: 404,
            path: "p".into(),
        };
        assert!(!http.is_retryable());
    }

    #[test]
    fn rid_extraction() {
        assert_eq!(
            rid_from_errmsg(
                "invalid credential, access_token is invalid rid: 6519ab12-1e6a1f1b-7b0e2f3c"
            ),
            Some("6519ab12-1e6a1f1b-7b0e2f3c".into())
        );
        assert_eq!(rid_from_errmsg("ok"), None);
        assert_eq!(rid_from_errmsg("hint: [x] rid:"), None);
    }
}
