//! Typed values shared by the client, the notifications and the bill: trade and refund
//! states, and the small field readers that turn a verified `Fields` map into typed values.
//!
//! States keep an `Other(String)` arm because WeChat adds states over time; an unknown state
//! must reach the caller (and its logs) rather than fail the whole response.

use super::sign::Fields;
use crate::domain::Fen;

/// `trade_state` of `pay/orderquery`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TradeState {
    /// Paid.
    Success,
    /// Paid, then (partly) refunded.
    Refund,
    /// Not paid yet (not final for JSAPI).
    NotPay,
    Closed,
    /// Micropay only.
    Revoked,
    /// Micropay only: the payer is entering a password.
    UserPaying,
    PayError,
    /// Accepted, being processed (deduction orders).
    Accept,
    Other(String),
}

impl TradeState {
    pub fn parse(s: &str) -> Self {
        match s {
            "SUCCESS" => TradeState::Success,
            "REFUND" => TradeState::Refund,
            "NOTPAY" => TradeState::NotPay,
            "CLOSED" => TradeState::Closed,
            "REVOKED" => TradeState::Revoked,
            "USERPAYING" => TradeState::UserPaying,
            "PAYERROR" => TradeState::PayError,
            "ACCEPT" => TradeState::Accept,
            other => TradeState::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            TradeState::Success => "SUCCESS",
            TradeState::Refund => "REFUND",
            TradeState::NotPay => "NOTPAY",
            TradeState::Closed => "CLOSED",
            TradeState::Revoked => "REVOKED",
            TradeState::UserPaying => "USERPAYING",
            TradeState::PayError => "PAYERROR",
            TradeState::Accept => "ACCEPT",
            TradeState::Other(s) => s,
        }
    }

    /// The money moved: `SUCCESS` or `REFUND` (a refunded order was paid first).
    pub fn is_paid(&self) -> bool {
        matches!(self, TradeState::Success | TradeState::Refund)
    }
}

/// Why amounts WeChat reports paid cannot be an order of ours, whoever reports them (a payment
/// notification, an `orderquery` answer): our orders are priced in fen of CNY (`fee_type` left
/// out means CNY), and the payer cannot have paid more than the total. `None`: they can.
pub fn paid_amounts_problem(
    fee_type: Option<&str>,
    cash_fee: Option<Fen>,
    total_fee: Fen,
) -> Option<&'static str> {
    if fee_type.is_some_and(|t| t != "CNY") {
        Some("paid in another currency than CNY")
    } else if cash_fee.is_some_and(|c| c > total_fee) {
        Some("cash_fee above total_fee")
    } else {
        None
    }
}

impl std::fmt::Display for TradeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `refund_status` of the refund notification and `refund_status_$n` of `pay/refundquery`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RefundStatus {
    Success,
    /// Refund failed (e.g. the user's card was closed); needs manual handling.
    Change,
    RefundClose,
    /// `refundquery` only.
    Processing,
    Other(String),
}

impl RefundStatus {
    pub fn parse(s: &str) -> Self {
        match s {
            "SUCCESS" => RefundStatus::Success,
            "CHANGE" => RefundStatus::Change,
            "REFUNDCLOSE" => RefundStatus::RefundClose,
            "PROCESSING" => RefundStatus::Processing,
            other => RefundStatus::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            RefundStatus::Success => "SUCCESS",
            RefundStatus::Change => "CHANGE",
            RefundStatus::RefundClose => "REFUNDCLOSE",
            RefundStatus::Processing => "PROCESSING",
            RefundStatus::Other(s) => s,
        }
    }
}

impl std::fmt::Display for RefundStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A field that is missing or does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error("field `{0}` is missing")]
    Missing(String),
    #[error("field `{field}` is invalid: {reason}")]
    Invalid { field: String, reason: String },
}

/// Field `k` is absent or empty.
pub(crate) fn missing(k: &str) -> FieldError {
    FieldError::Missing(k.to_owned())
}

/// Field `k`'s value as an amount in fen.
pub(crate) fn fen_value(k: &str, v: &str) -> Result<Fen, FieldError> {
    Fen::parse(v).map_err(|e| invalid(k, e))
}

/// Field `k`'s value, `yyyyMMddHHmmss` Beijing time, as epoch ms.
pub(crate) fn compact_time_value(k: &str, v: &str) -> Result<i64, FieldError> {
    crate::time::parse_beijing_compact(v).ok_or_else(|| invalid(k, "not yyyyMMddHHmmss"))
}

/// Where a [`Reader`] looks fields up: the owned map, or the borrowed fields of the
/// notification fast path ([`super::flat::Flat`]).
pub(crate) trait Lookup {
    fn lookup(&self, k: &str) -> Option<&str>;
}

impl Lookup for Fields {
    fn lookup(&self, k: &str) -> Option<&str> {
        self.get(k).map(String::as_str)
    }
}

impl Lookup for super::flat::Flat<'_> {
    fn lookup(&self, k: &str) -> Option<&str> {
        self.get(k)
    }
}

/// Readers over a verified field map. Empty values count as absent (WeChat signs and sends
/// empty elements as if absent).
pub(crate) struct Reader<'a, F: Lookup + ?Sized = Fields>(pub &'a F);

impl<'a, F: Lookup + ?Sized> Reader<'a, F> {
    pub fn opt(&self, k: &str) -> Option<&'a str> {
        self.0.lookup(k).filter(|v| !v.is_empty())
    }

    pub fn opt_string(&self, k: &str) -> Option<String> {
        self.opt(k).map(str::to_owned)
    }

    pub fn req(&self, k: &str) -> Result<&'a str, FieldError> {
        self.opt(k).ok_or_else(|| missing(k))
    }

    pub fn req_string(&self, k: &str) -> Result<String, FieldError> {
        self.req(k).map(str::to_owned)
    }

    pub fn fen(&self, k: &str) -> Result<Fen, FieldError> {
        fen_value(k, self.req(k)?)
    }

    pub fn opt_fen(&self, k: &str) -> Result<Option<Fen>, FieldError> {
        self.opt(k).map(|v| fen_value(k, v)).transpose()
    }

    /// `yyyyMMddHHmmss` Beijing time → epoch ms.
    pub fn opt_compact_time(&self, k: &str) -> Result<Option<i64>, FieldError> {
        self.opt(k).map(|v| compact_time_value(k, v)).transpose()
    }

    /// `yyyy-MM-dd HH:mm:ss` Beijing time → epoch ms.
    pub fn opt_datetime(&self, k: &str) -> Result<Option<i64>, FieldError> {
        match self.opt(k) {
            None => Ok(None),
            Some(v) => crate::time::parse_beijing_datetime(v)
                .map(Some)
                .ok_or_else(|| invalid(k, "not yyyy-MM-dd HH:mm:ss")),
        }
    }

    pub fn opt_u32(&self, k: &str) -> Result<Option<u32>, FieldError> {
        match self.opt(k) {
            None => Ok(None),
            Some(v) => v
                .parse::<u32>()
                .map(Some)
                .map_err(|_| invalid(k, "not a small whole number")),
        }
    }
}

pub(crate) fn invalid(field: &str, reason: impl std::fmt::Display) -> FieldError {
    FieldError::Invalid {
        field: field.to_owned(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_keep_unknowns() {
        for s in [
            "SUCCESS",
            "REFUND",
            "NOTPAY",
            "CLOSED",
            "REVOKED",
            "USERPAYING",
            "PAYERROR",
            "ACCEPT",
        ] {
            assert_eq!(TradeState::parse(s).as_str(), s);
        }
        assert_eq!(TradeState::parse("NEW"), TradeState::Other("NEW".into()));
        assert!(TradeState::Refund.is_paid());
        assert!(!TradeState::NotPay.is_paid());
        for s in ["SUCCESS", "CHANGE", "REFUNDCLOSE", "PROCESSING"] {
            assert_eq!(RefundStatus::parse(s).as_str(), s);
        }
        assert_eq!(RefundStatus::parse("X"), RefundStatus::Other("X".into()));
    }

    #[test]
    fn reader_treats_empty_as_absent() {
        let mut f = Fields::new();
        f.insert("a".into(), String::new());
        f.insert("fee".into(), "12".into());
        f.insert("bad".into(), "1.5".into());
        let r = Reader(&f);
        assert_eq!(r.opt("a"), None);
        assert!(matches!(r.req("a"), Err(FieldError::Missing(_))));
        assert_eq!(r.fen("fee"), Ok(Fen::new(12).unwrap()));
        assert!(matches!(r.fen("bad"), Err(FieldError::Invalid { .. })));
    }
}
