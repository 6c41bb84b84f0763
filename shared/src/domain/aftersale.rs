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
//!
//! With the trading component WeChat has its own copy of the after-sale, and three of its
//! moves reach ours as transitions of their own, each only once WeChat's after-sale, read
//! back, shows it:
//!
//! - `take_wechat_terms`: the user changed amount, type or reason in WeChat's order centre
//!   while the request still waits for the merchant there. Ours takes them and waits for the
//!   merchant again (REQUESTED, or RETURNING once the goods were sent back) — also from an approval
//!   WeChat has not acted on yet (AWAITING_RETURN; REFUNDING of a secondary-merchant order,
//!   whose money moves only when WeChat accepts): the merchant approved other terms.
//! - `closed_at_wechat`: REFUNDING → CANCELLED, when WeChat's after-sale was cancelled or
//!   closed before our refund was ever asked for.
//! - `refunded_by_wechat`: any state → REFUNDED. WeChat refunded a secondary-merchant order on
//!   its own (the merchant let the deadline pass, or the platform ruled for the user after a
//!   rejection): the money left, whatever ours said.

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

    /// WeChat (secondary-merchant orders: it holds the money) refunded this after-sale, as its
    /// after-sale read back states (13/14). Recorded from every state, not only after an
    /// approval: WeChat refunds on its own when the merchant lets a deadline pass or the
    /// platform rules for the user after a rejection, and the money has left either way.
    pub fn refunded_by_wechat(&mut self, refund_id: Option<String>, now_ms: i64) -> super::Change {
        if self.status == AfterSaleStatus::Refunded {
            return super::Change::Unchanged;
        }
        self.status = AfterSaleStatus::Refunded;
        if refund_id.is_some() {
            self.refund_id = refund_id;
        }
        self.updated_at_ms = now_ms;
        super::Change::Changed
    }

    /// WeChat's after-sale, still waiting for the merchant there, asks for other terms (the
    /// user edited it in WeChat's order centre): ours takes them and waits for the merchant
    /// again. From REQUESTED and RETURNING; and from an approval WeChat has not acted on — AWAITING_RETURN
    /// (the return not accepted there yet) and, for a secondary-merchant order, REFUNDING
    /// (the money moves only when WeChat accepts) — since the merchant approved other terms.
    /// With the goods already back (a return and refund with a waybill) it waits at RETURNING.
    /// The same terms while REQUESTED change nothing.
    pub fn take_wechat_terms(
        &mut self,
        kind: AfterSaleKind,
        amount: super::Fen,
        reason: &str,
        fund_type: FundType,
        now_ms: i64,
    ) -> Result<super::Change, AfterSaleTransitionError> {
        let reopen = match self.status {
            // Waiting for the merchant already (RETURNING: to approve the refund once the
            // goods are there).
            AfterSaleStatus::Requested | AfterSaleStatus::Returning => false,
            AfterSaleStatus::AwaitingReturn => true,
            AfterSaleStatus::Refunding if fund_type == FundType::SecondaryMerchant => true,
            _ => return Err(self.err("take WeChat's changed request")),
        };
        if !reopen && self.kind == kind && self.amount == amount && self.reason == reason {
            return Ok(super::Change::Unchanged);
        }
        self.kind = kind;
        self.amount = amount;
        self.reason = reason.to_owned();
        let goods_back = self
            .goods_return
            .as_ref()
            .is_some_and(|g| g.waybill.is_some());
        self.status = if kind == AfterSaleKind::ReturnAndRefund && goods_back {
            AfterSaleStatus::Returning
        } else {
            self.goods_return = None;
            AfterSaleStatus::Requested
        };
        self.updated_at_ms = now_ms;
        Ok(super::Change::Changed)
    }

    /// WeChat's after-sale was cancelled by the user, or closed, before our refund of this
    /// approved after-sale was ever asked for: nothing is refunded, CANCELLED.
    pub fn closed_at_wechat(
        &mut self,
        now_ms: i64,
    ) -> Result<super::Change, AfterSaleTransitionError> {
        match self.status {
            AfterSaleStatus::Cancelled => Ok(super::Change::Unchanged),
            AfterSaleStatus::Refunding => {
                self.status = AfterSaleStatus::Cancelled;
                self.updated_at_ms = now_ms;
                Ok(super::Change::Changed)
            }
            _ => Err(self.err("close as WeChat did")),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Change, Fen};

    fn sample(kind: AfterSaleKind, status: AfterSaleStatus) -> AfterSale {
        AfterSale {
            id: AfterSaleId::generate(0),
            out_trade_no: OutTradeNo::parse("WX20240101000000abc").unwrap(),
            openid: OpenId::parse("o_user_1").unwrap(),
            kind,
            amount: Fen::new(30).unwrap(),
            reason: "dented".into(),
            status,
            out_refund_no: None,
            refund_id: None,
            wx_aftersale_id: Some(1),
            wx_add_claimed_until_ms: None,
            reject_reason: None,
            goods_return: None,
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    fn fen(v: i64) -> Fen {
        Fen::new(v).unwrap()
    }

    #[test]
    fn wechat_refunds_are_recorded_from_every_state_once() {
        use AfterSaleStatus::*;
        for from in [
            Requested,
            Rejected,
            Cancelled,
            AwaitingReturn,
            Returning,
            Refunding,
            RefundFailed,
            RefundAbnormal,
        ] {
            let mut a = sample(AfterSaleKind::RefundOnly, from);
            assert_eq!(
                a.refunded_by_wechat(Some("r1".into()), 5),
                Change::Changed,
                "{from:?}"
            );
            assert_eq!(a.status, Refunded);
            assert_eq!(a.refund_id.as_deref(), Some("r1"));
            assert_eq!(a.refunded_by_wechat(None, 6), Change::Unchanged);
            assert_eq!(a.refund_id.as_deref(), Some("r1"));
        }
    }

    #[test]
    fn wechat_terms_are_taken_only_before_wechat_accepts() {
        use AfterSaleStatus::*;
        let sm = FundType::SecondaryMerchant;
        let mut a = sample(AfterSaleKind::RefundOnly, Requested);
        assert_eq!(
            a.take_wechat_terms(AfterSaleKind::RefundOnly, fen(30), "dented", sm, 1),
            Ok(Change::Unchanged)
        );
        assert_eq!(
            a.take_wechat_terms(AfterSaleKind::RefundOnly, fen(100), "broken", sm, 1),
            Ok(Change::Changed)
        );
        assert_eq!(
            (a.status, a.amount, a.reason.as_str()),
            (Requested, fen(100), "broken")
        );
        // An approval WeChat has not acted on goes back to the merchant.
        let mut a = sample(AfterSaleKind::RefundOnly, Refunding);
        assert_eq!(
            a.take_wechat_terms(AfterSaleKind::RefundOnly, fen(30), "dented", sm, 1),
            Ok(Change::Changed)
        );
        assert_eq!(a.status, Requested);
        // Our own refund was already asked for: not from REFUNDING of an ordinary order.
        let mut a = sample(AfterSaleKind::RefundOnly, Refunding);
        assert!(a
            .take_wechat_terms(
                AfterSaleKind::RefundOnly,
                fen(100),
                "x",
                FundType::Direct,
                1
            )
            .is_err());
        // The goods came back: the refund waits for the merchant again at RETURNING.
        let mut a = sample(AfterSaleKind::ReturnAndRefund, Refunding);
        a.goods_return = Some(GoodsReturn {
            address: Address {
                receiver_name: "A".into(),
                detailed_address: "1 Road".into(),
                tel_number: "1".into(),
                province: None,
                city: None,
                town: None,
            },
            waybill: Some(ReturnWaybill {
                delivery_id: "SF".into(),
                delivery_name: "SF".into(),
                waybill_id: "1".into(),
            }),
        });
        assert_eq!(
            a.take_wechat_terms(AfterSaleKind::ReturnAndRefund, fen(20), "x", sm, 1),
            Ok(Change::Changed)
        );
        assert_eq!(a.status, Returning);
        for from in [Refunded, Rejected, Cancelled, RefundFailed, RefundAbnormal] {
            let mut a = sample(AfterSaleKind::RefundOnly, from);
            assert!(
                a.take_wechat_terms(AfterSaleKind::RefundOnly, fen(1), "x", sm, 1)
                    .is_err(),
                "{from:?}"
            );
        }
    }

    #[test]
    fn only_an_unpaid_approval_closes_as_wechat_did() {
        use AfterSaleStatus::*;
        let mut a = sample(AfterSaleKind::RefundOnly, Refunding);
        assert_eq!(a.closed_at_wechat(1), Ok(Change::Changed));
        assert_eq!(a.status, Cancelled);
        assert_eq!(a.closed_at_wechat(2), Ok(Change::Unchanged));
        for from in [Refunded, RefundAbnormal, Requested] {
            assert!(sample(AfterSaleKind::RefundOnly, from)
                .closed_at_wechat(1)
                .is_err());
        }
    }
}
