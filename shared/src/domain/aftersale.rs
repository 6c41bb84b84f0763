//! After-sales: a user's request to get money (and maybe goods) back, with its own machine.
//!
//! ```text
//! REQUESTED ─approve→ REFUNDING ─refund ok→ REFUNDED ←──────────────────────┐
//!     │  └─reject→ REJECTED          ├─refund failed→ REFUND_FAILED ─approve→ REFUNDING
//!     └─cancel→ CANCELLED            └─refund abnormal→ REFUND_ABNORMAL ─refund ok / by hand┘
//! ```
//!
//! REFUND_FAILED: the money did not leave (WeChat refused or closed the refund); approving
//! again asks anew. REFUND_ABNORMAL (WeChat Pay's `CHANGE`): WeChat took the refund but could
//! not pay it into the user's account (card closed or frozen); the money waits at WeChat
//! until a person redirects it in the merchant platform. It is never asked for again — that
//! would pay the user twice — and its amount stays held on the order; a person records the
//! outcome (or a later `SUCCESS` notification does).
//!
//! Who pays the money back depends on who holds it (the order's [`FundType`]): for an
//! ordinary order we ask WeChat Pay (`secapi/pay/refund`) under an `out_refund_no` fixed at
//! the first approval; for a secondary-merchant order WeChat holds the money and refunds it
//! itself when the merchant accepts the after-sale there (`ecaftersale/acceptrefund`), so no
//! refund number of ours exists.
//!
//! A return and refund first gets the goods back: the merchant accepts the return, giving
//! the address; the user sends the parcel and says with which waybill; once it is there the
//! merchant approves the refund, and from REFUNDING on it is as above.
//!
//! ```text
//! REQUESTED ─accept_return→ AWAITING_RETURN ─goods_sent→ RETURNING ─approve→ REFUNDING …
//!     │                         └─cancel→ CANCELLED         └─reject→ REJECTED
//!     └─reject→ REJECTED, cancel→ CANCELLED
//! ```

use super::{Address, AfterSaleId, Fen, FundType, OpenId, OutRefundNo, OutTradeNo};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AfterSaleStatus {
    Requested,
    Cancelled,
    Rejected,
    /// Return and refund: the merchant accepted the return; the user is to send the goods.
    AwaitingReturn,
    /// Return and refund: the user sent the goods back (waybill known); the merchant is to
    /// confirm they arrived by approving the refund.
    Returning,
    Refunding,
    /// The money did not leave: approving again asks anew.
    RefundFailed,
    /// WeChat took the refund but could not pay it back (`CHANGE`); it waits at WeChat for a
    /// person. Never refunded again by us.
    RefundAbnormal,
    Refunded,
}

impl AfterSaleStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AfterSaleStatus::Requested => "REQUESTED",
            AfterSaleStatus::Cancelled => "CANCELLED",
            AfterSaleStatus::Rejected => "REJECTED",
            AfterSaleStatus::AwaitingReturn => "AWAITING_RETURN",
            AfterSaleStatus::Returning => "RETURNING",
            AfterSaleStatus::Refunding => "REFUNDING",
            AfterSaleStatus::RefundFailed => "REFUND_FAILED",
            AfterSaleStatus::RefundAbnormal => "REFUND_ABNORMAL",
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
    /// Return and refund only, once the merchant accepted the return.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goods_return: Option<GoodsReturn>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// The goods' way back: where to (the merchant's `address_info` of `ecaftersale/acceptreturn`)
/// and, once the user sent them, the parcel (`ecaftersale/uploadreturninfo`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoodsReturn {
    pub address: Address,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waybill: Option<ReturnWaybill>,
}

/// The user's parcel back to the merchant: the express company (WeChat's `delivery_id`, e.g.
/// `SF`, and its name) and the waybill number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReturnWaybill {
    pub delivery_id: String,
    pub delivery_name: String,
    pub waybill_id: String,
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
            // Before the goods are on their way back the user may still change their mind.
            AfterSaleStatus::Requested | AfterSaleStatus::AwaitingReturn => {
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
            // A returned parcel may be refused too (not what was sold, damaged): WeChat
            // allows a rejection while it waits for the merchant's receipt.
            AfterSaleStatus::Requested | AfterSaleStatus::Returning => {
                self.status = AfterSaleStatus::Rejected;
                self.reject_reason = Some(reason.to_owned());
                self.updated_at_ms = now_ms;
                Ok(super::Change::Changed)
            }
            _ => Err(self.err("reject")),
        }
    }

    /// Merchant approves the refund: REFUNDING. For an order whose money we hold
    /// ([`FundType::Direct`]) with a refund number fixed once for all retries; WeChat refunds
    /// a secondary-merchant order itself, under its own number. A return and refund only once
    /// the goods were sent back (RETURNING).
    pub fn approve(
        &mut self,
        fund_type: FundType,
        now_ms: i64,
    ) -> Result<super::Change, AfterSaleTransitionError> {
        let ready = match self.kind {
            AfterSaleKind::RefundOnly => self.status == AfterSaleStatus::Requested,
            AfterSaleKind::ReturnAndRefund => self.status == AfterSaleStatus::Returning,
        };
        match self.status {
            AfterSaleStatus::Refunding | AfterSaleStatus::Refunded => Ok(super::Change::Unchanged),
            AfterSaleStatus::RefundFailed => self.start_refund(fund_type, now_ms),
            AfterSaleStatus::RefundAbnormal => {
                Err(self
                    .err("approve again: WeChat holds the refund for the merchant to redirect it"))
            }
            _ if ready => self.start_refund(fund_type, now_ms),
            AfterSaleStatus::Requested | AfterSaleStatus::AwaitingReturn => {
                Err(self.err("refund before the goods were sent back"))
            }
            _ => Err(self.err("approve")),
        }
    }

    fn start_refund(
        &mut self,
        fund_type: FundType,
        now_ms: i64,
    ) -> Result<super::Change, AfterSaleTransitionError> {
        if fund_type == FundType::Direct && self.out_refund_no.is_none() {
            self.out_refund_no = Some(OutRefundNo::generate(now_ms));
        }
        self.status = AfterSaleStatus::Refunding;
        self.updated_at_ms = now_ms;
        Ok(super::Change::Changed)
    }

    /// Merchant accepts a return and refund: the user is to send the goods to `address`.
    pub fn accept_return(
        &mut self,
        address: Address,
        now_ms: i64,
    ) -> Result<super::Change, AfterSaleTransitionError> {
        if self.kind != AfterSaleKind::ReturnAndRefund {
            return Err(self.err("accept a return (it is a refund only)"));
        }
        match self.status {
            AfterSaleStatus::AwaitingReturn | AfterSaleStatus::Returning => {
                Ok(super::Change::Unchanged)
            }
            AfterSaleStatus::Requested => {
                self.status = AfterSaleStatus::AwaitingReturn;
                self.goods_return = Some(GoodsReturn {
                    address,
                    waybill: None,
                });
                self.updated_at_ms = now_ms;
                Ok(super::Change::Changed)
            }
            _ => Err(self.err("accept a return")),
        }
    }

    /// The user sent the goods back with `waybill`. The same waybill again changes nothing;
    /// another one, once sent, is refused.
    pub fn goods_sent(
        &mut self,
        waybill: ReturnWaybill,
        now_ms: i64,
    ) -> Result<super::Change, AfterSaleTransitionError> {
        if self.status == AfterSaleStatus::AwaitingReturn {
            if let Some(g) = self.goods_return.as_mut() {
                g.waybill = Some(waybill);
                self.status = AfterSaleStatus::Returning;
                self.updated_at_ms = now_ms;
                return Ok(super::Change::Changed);
            }
        }
        if self.goods_return.as_ref().and_then(|g| g.waybill.as_ref()) == Some(&waybill) {
            Ok(super::Change::Unchanged)
        } else {
            Err(self.err("record the goods sent back"))
        }
    }

    /// A fresh refund number for an approved after-sale whose previous refund WeChat created
    /// and then closed (`REFUNDCLOSE`): asking again under the old number would only return
    /// that closed refund. (An abnormal refund, `CHANGE`, is never asked for again.)
    pub fn renumber_refund(
        &mut self,
        now_ms: i64,
    ) -> Result<OutRefundNo, AfterSaleTransitionError> {
        match self.status {
            AfterSaleStatus::Refunding if self.out_refund_no.is_some() => {
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
            AfterSaleStatus::Refunding
            | AfterSaleStatus::RefundFailed
            | AfterSaleStatus::RefundAbnormal => {
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

    /// WeChat took the refund but could not pay it back (`CHANGE`). Also after a failure was
    /// recorded: the money is at WeChat after all.
    pub fn refund_abnormal(
        &mut self,
        now_ms: i64,
    ) -> Result<super::Change, AfterSaleTransitionError> {
        match self.status {
            AfterSaleStatus::RefundAbnormal => Ok(super::Change::Unchanged),
            AfterSaleStatus::Refunding | AfterSaleStatus::RefundFailed => {
                self.status = AfterSaleStatus::RefundAbnormal;
                self.updated_at_ms = now_ms;
                Ok(super::Change::Changed)
            }
            _ => Err(self.err("record an abnormal refund")),
        }
    }

    /// A person redirected an abnormal refund (merchant platform, or paid the user another
    /// way): REFUNDED. Only an abnormal refund is settled by hand.
    pub fn refunded_by_hand(
        &mut self,
        now_ms: i64,
    ) -> Result<super::Change, AfterSaleTransitionError> {
        match self.status {
            AfterSaleStatus::RefundAbnormal => self.refunded(None, now_ms),
            _ => Err(self.err("record a refund made by hand (only an abnormal refund is)")),
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
