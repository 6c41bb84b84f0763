//! After-sales: a user's request to get money (and maybe goods) back, with its own machine.
//!
//! ```text
//! REQUESTED ─approve→ REFUNDING ─refund ok→ REFUNDED
//!     │  └─reject→ REJECTED          └─refund failed→ REFUND_FAILED ─approve→ REFUNDING
//!     └─cancel→ CANCELLED
//! ```

use super::{AfterSaleId, Fen, OpenId, OutRefundNo, OutTradeNo};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AfterSaleStatus {
    Requested,
    Cancelled,
    Rejected,
    Refunding,
    RefundFailed,
    Refunded,
}

impl AfterSaleStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AfterSaleStatus::Requested => "REQUESTED",
            AfterSaleStatus::Cancelled => "CANCELLED",
            AfterSaleStatus::Rejected => "REJECTED",
            AfterSaleStatus::Refunding => "REFUNDING",
            AfterSaleStatus::RefundFailed => "REFUND_FAILED",
            AfterSaleStatus::Refunded => "REFUNDED",
        }
    }
}

/// `type` in `shop/ecaftersale/add`: 1 refund only, 2 return and refund.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AfterSaleKind {
    RefundOnly,
    ReturnAndRefund,
}

impl AfterSaleKind {
    pub fn code(self) -> u8 {
        match self {
            AfterSaleKind::RefundOnly => 1,
            AfterSaleKind::ReturnAndRefund => 2,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AfterSale {
    pub id: AfterSaleId,
    pub out_trade_no: OutTradeNo,
    pub openid: OpenId,
    pub kind: AfterSaleKind,
    pub amount: Fen,
    pub reason: String,
    pub status: AfterSaleStatus,
    /// Fixed when first approved, so every retry of the refund uses the same number.
    #[serde(default)]
    pub out_refund_no: Option<OutRefundNo>,
    #[serde(default)]
    pub refund_id: Option<String>,
    #[serde(default)]
    pub wx_aftersale_id: Option<u64>,
    /// While one sync task adds the after-sale at WeChat (`ecaftersale/add`), until when the
    /// others wait: two adds at once could open two after-sales there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wx_add_claimed_until_ms: Option<i64>,
    #[serde(default)]
    pub reject_reason: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("after-sale is {from:?}; cannot {action}")]
pub struct AfterSaleTransitionError {
    pub from: AfterSaleStatus,
    pub action: &'static str,
}

impl AfterSale {
    fn err(&self, action: &'static str) -> AfterSaleTransitionError {
        AfterSaleTransitionError {
            from: self.status,
            action,
        }
    }

    pub fn cancel(&mut self, now_ms: i64) -> Result<super::Change, AfterSaleTransitionError> {
        match self.status {
            AfterSaleStatus::Cancelled => Ok(super::Change::Unchanged),
            AfterSaleStatus::Requested => {
                self.status = AfterSaleStatus::Cancelled;
                self.updated_at_ms = now_ms;
                Ok(super::Change::Changed)
            }
            _ => Err(self.err("cancel")),
        }
    }

    pub fn reject(
        &mut self,
        reason: &str,
        now_ms: i64,
    ) -> Result<super::Change, AfterSaleTransitionError> {
        match self.status {
            AfterSaleStatus::Rejected => Ok(super::Change::Unchanged),
            AfterSaleStatus::Requested => {
                self.status = AfterSaleStatus::Rejected;
                self.reject_reason = Some(reason.to_owned());
                self.updated_at_ms = now_ms;
                Ok(super::Change::Changed)
            }
            _ => Err(self.err("reject")),
        }
    }

    /// Merchant approves: REFUNDING, with a refund number fixed once for all retries.
    pub fn approve(&mut self, now_ms: i64) -> Result<super::Change, AfterSaleTransitionError> {
        match self.status {
            AfterSaleStatus::Refunding | AfterSaleStatus::Refunded => Ok(super::Change::Unchanged),
            AfterSaleStatus::Requested | AfterSaleStatus::RefundFailed => {
                if self.out_refund_no.is_none() {
                    self.out_refund_no = Some(OutRefundNo::generate(now_ms));
                }
                self.status = AfterSaleStatus::Refunding;
                self.updated_at_ms = now_ms;
                Ok(super::Change::Changed)
            }
            _ => Err(self.err("approve")),
        }
    }

    /// A fresh refund number for an approved after-sale whose previous refund WeChat created
    /// and then closed (`REFUNDCLOSE`, `CHANGE`): asking again under the old number would only
    /// return that closed refund.
    pub fn renumber_refund(
        &mut self,
        now_ms: i64,
    ) -> Result<OutRefundNo, AfterSaleTransitionError> {
        match self.status {
            AfterSaleStatus::Refunding => {
                let no = OutRefundNo::generate(now_ms);
                self.out_refund_no = Some(no.clone());
                self.updated_at_ms = now_ms;
                Ok(no)
            }
            _ => Err(self.err("renumber the refund")),
        }
    }

    pub fn refunded(
        &mut self,
        refund_id: Option<String>,
        now_ms: i64,
    ) -> Result<super::Change, AfterSaleTransitionError> {
        match self.status {
            AfterSaleStatus::Refunded => Ok(super::Change::Unchanged),
            AfterSaleStatus::Refunding | AfterSaleStatus::RefundFailed => {
                self.status = AfterSaleStatus::Refunded;
                if refund_id.is_some() {
                    self.refund_id = refund_id;
                }
                self.updated_at_ms = now_ms;
                Ok(super::Change::Changed)
            }
            _ => Err(self.err("record refund")),
        }
    }

    pub fn refund_failed(
        &mut self,
        now_ms: i64,
    ) -> Result<super::Change, AfterSaleTransitionError> {
        match self.status {
            AfterSaleStatus::RefundFailed => Ok(super::Change::Unchanged),
            AfterSaleStatus::Refunding => {
                self.status = AfterSaleStatus::RefundFailed;
                self.updated_at_ms = now_ms;
                Ok(super::Change::Changed)
            }
            _ => Err(self.err("record refund failure")),
        }
    }
}
