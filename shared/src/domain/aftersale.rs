//! After-sales: a user's request to get money (and maybe goods) back, with its own machine —
//! or the merchant's own refund of a paid order ([`AfterSaleOrigin::Merchant`]), which starts
//! at REFUNDING and goes on from there as any approved refund.
//!
//! ```text
//! REQUESTED ─approve→ REFUNDING ─refund ok→ REFUNDED ←──────────────────────┐
//!     │  └─reject→ REJECTED          ├─refund failed→ REFUND_FAILED ─approve→ REFUNDING
//!     │                              │                   └─paid another way (by hand)─┤
//!     └─cancel→ CANCELLED            └─refund abnormal→ REFUND_ABNORMAL ─refund ok / by hand┘
//! ```
//!
//! REFUND_FAILED: the money did not leave (WeChat refused or closed the refund); approving
//! again asks anew. Some refusals are for good — the user's WeChat account is closed
//! (`USER_ACCOUNT_ABNORMAL`), the payment is over a year old (`TRADE_OVERDUE`): WeChat Pay
//! cannot refund online and a person pays the user another way (WECHAT_PAY_V2.md §5), then
//! records it ([`AfterSale::refunded_by_hand`]). REFUND_ABNORMAL (WeChat Pay's `CHANGE`):
//! WeChat took the refund but could not pay it into the user's account (card closed or
//! frozen); the money waits at WeChat until a person redirects it in the merchant platform.
//! It is never asked for again — that would pay the user twice — and its amount stays held
//! on the order; a person records the outcome (or a later `SUCCESS` notification does).
//!
//! A refund a person made by hand in the merchant platform may have paid an open after-sale
//! (REQUESTED, AWAITING_RETURN, RETURNING, REFUND_FAILED): a person records that, and it goes
//! to REFUNDED at that refund's amount with no refund of ours (`settled_by_refund_made_by_hand`).
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
//! WeChat's after-sale is about one product line of the order (`ecaftersale/add`'s
//! `product_info` is one object), so ours records which: [`AfterSaleLine`], chosen when the
//! user applies by [`AfterSaleLine::choose`].
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
//!   closed before our refund was ever asked for; AWAITING_RETURN → CANCELLED, when WeChat
//!   closed a return whose goods never came.
//! - `refunded_by_wechat`: any state → REFUNDED. WeChat refunded a secondary-merchant order on
//!   its own (the merchant let the deadline pass, or the platform ruled for the user after a
//!   rejection): the money left, whatever ours said.

use super::{
    Address, AfterSaleId, Fen, FundType, MoneyError, OpenId, Order, OrderItem, OutRefundNo,
    OutTradeNo, ProductId, SkuId,
};
use serde::{Deserialize, Serialize};
use std::num::NonZeroU32;

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
    /// Every status, for what must look through all of them.
    pub const ALL: [AfterSaleStatus; 9] = [
        AfterSaleStatus::Requested,
        AfterSaleStatus::Cancelled,
        AfterSaleStatus::Rejected,
        AfterSaleStatus::AwaitingReturn,
        AfterSaleStatus::Returning,
        AfterSaleStatus::Refunding,
        AfterSaleStatus::RefundFailed,
        AfterSaleStatus::RefundAbnormal,
        AfterSaleStatus::Refunded,
    ];

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

    /// What an after-sale in this status waits for and which actions it allows (the user's
    /// and the merchant's `aftersaleSync`), for a caller refused one that it does not.
    pub fn allows(self) -> &'static str {
        match self {
            AfterSaleStatus::Requested => {
                "It waits for the merchant: the user may `cancel` it; the merchant may \
                 `approve` it (a return and refund: accept the return) or `reject` it"
            }
            AfterSaleStatus::AwaitingReturn => {
                "It waits for the goods: the user sends them back (`return`, with the parcel) \
                 or may `cancel` it"
            }
            AfterSaleStatus::Returning => {
                "The goods are on their way back: the merchant may `approve` the refund once \
                 they arrived, or `reject` it"
            }
            AfterSaleStatus::Refunding => {
                "Its refund is under way: nothing to do but wait until it reads REFUNDED (or \
                 REFUND_FAILED)"
            }
            AfterSaleStatus::RefundFailed => {
                "Its refund failed and no money left: the merchant may `approve` it again to \
                 ask anew, or `mark_refunded` if the user was paid another way"
            }
            AfterSaleStatus::RefundAbnormal => {
                "WeChat took its refund but could not pay it out; it waits at WeChat for a \
                 person: the merchant may `mark_refunded` once the user was paid"
            }
            AfterSaleStatus::Refunded => "It is refunded: nothing more can be done to it",
            AfterSaleStatus::Cancelled | AfterSaleStatus::Rejected => {
                "It is closed: nothing more can be done to it; the user may `apply` anew"
            }
        }
    }

    /// Still stands as a claim on the goods it names: anything but rejected or cancelled
    /// (a refunded after-sale took its line's money for good).
    pub fn is_live(self) -> bool {
        !matches!(self, AfterSaleStatus::Rejected | AfterSaleStatus::Cancelled)
    }
}

/// Who opened an after-sale.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AfterSaleOrigin {
    /// The user applied (in the mini program, or in WeChat's order centre).
    #[default]
    User,
    /// The merchant refunded part or all of a paid order on its own (`aftersaleSync` admin
    /// `refund`: the freight left over, a goodwill or price-adjustment refund, a refund the
    /// user asked for by phone): a refund only, approved when made
    /// ([`AfterSale::merchant_refund`]). About no line, it takes no units back and is not
    /// mirrored to WeChat's trading component, whose `ecaftersale/add` needs a product line —
    /// as a refund made by hand in the merchant platform is not. About a line, it claims that
    /// line's units as a user's after-sale would and is mirrored as one; its units go back on
    /// sale if never shipped, or shipped and the merchant said they came back
    /// ([`AfterSale::restock`]).
    Merchant,
}

impl AfterSaleOrigin {
    pub fn is_user(&self) -> bool {
        *self == AfterSaleOrigin::User
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
    /// The product line it is about. `None`: the whole order — recorded before lines were,
    /// or an order with several items that is not in the trading component (nothing is
    /// mirrored to WeChat, which alone needs a line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<AfterSaleLine>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// When we recorded it REFUNDED (our clock; set by every move to REFUNDED but a person's
    /// record of an abnormal refund paid outside WeChat, [`AfterSale::refunded_by_hand`]). It
    /// places a refunded after-sale in the status index ([`crate::store::repo`]), so the
    /// funds reconciliation finds the after-sales recorded refunded on a day. `None` until
    /// then, for those a person settled so, and for after-sales refunded before this was
    /// kept (none of them is looked for among the funds flows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refunded_at_ms: Option<i64>,
    /// Who opened it: the user, or the merchant refunding on its own. Absent (the user) on
    /// after-sales recorded before merchants could.
    #[serde(default, skip_serializing_if = "AfterSaleOrigin::is_user")]
    pub by: AfterSaleOrigin,
    /// A merchant's refund of a line whose goods are back in the warehouse (a return taken
    /// by phone): its units go back on sale once it is refunded ([`AfterSale::units_back`]),
    /// shipped or not. Without it only a line never shipped comes back (as any after-sale's).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub restock: bool,
}

/// One item of the order an after-sale is about — by our catalog ids, WeChat's
/// `out_product_id` / `out_sku_id` — and how many of it (`product_cnt`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AfterSaleLine {
    pub product_id: ProductId,
    pub sku_id: SkuId,
    pub quantity: u32,
}

/// The line a user names when applying: which item, and how many of it (default: all of it
/// that no live after-sale claims yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineAsked {
    pub product_id: ProductId,
    pub sku_id: SkuId,
    pub quantity: Option<NonZeroU32>,
}

impl LineAsked {
    /// Whether `line`, recorded for an application, is what this one asks for (a repeated
    /// application must name the same line, and the same quantity if it names one).
    pub fn matches(&self, line: Option<&AfterSaleLine>) -> bool {
        line.is_some_and(|l| {
            l.product_id == self.product_id
                && l.sku_id == self.sku_id
                && self.quantity.is_none_or(|q| q.get() == l.quantity)
        })
    }
}

/// What a new after-sale of an order is about, and the most it may ask for on that line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineChoice {
    /// `None`: the whole order (several items, not in the trading component, none named).
    pub line: Option<AfterSaleLine>,
    /// The value of the quantity asked (unit price × quantity), on an order with several
    /// items never more than the line's value less what live after-sales of the line claim.
    /// `None` (the order's last unclaimed units — all that is left of an only item among them
    /// — or the whole order): only the order's own bound (what it can still refund, freight
    /// included) applies.
    pub most: Option<Fen>,
}

/// Why an application cannot be about the line it names (or names none).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error(
        "product_id `{product_id}` with sku_id `{sku_id}` is not a line of this order; name \
         one of its items"
    )]
    UnknownLine {
        product_id: ProductId,
        sku_id: SkuId,
    },
    #[error(
        "quantity {asked} is more than the {ordered} ordered on this line; ask for 1 to {ordered}"
    )]
    BadQuantity { asked: u32, ordered: u32 },
    #[error(
        "this order has several items and its after-sale goes to WeChat per product line: \
         name the line with product_id and sku_id (one of: {lines}), and quantity if not all of it"
    )]
    LineRequired { lines: String },
    #[error("{}", already_claimed(*ordered, *left))]
    AlreadyClaimed { ordered: u32, left: u32 },
    #[error("{0}")]
    Money(#[from] MoneyError),
}

/// [`LineError::AlreadyClaimed`]'s message: what is left of the line, and what to do.
fn already_claimed(ordered: u32, left: u32) -> String {
    if left == 0 {
        format!(
            "all {ordered} ordered on this line are under after-sales already (open or \
             refunded): nothing of it is left to ask for; to ask again, cancel an open \
             after-sale of the line first"
        )
    } else {
        format!(
            "{left} of the {ordered} ordered on this line are not under an after-sale already; \
             ask for at most {left} (or leave quantity out), or cancel an after-sale of the \
             line first"
        )
    }
}

impl AfterSaleLine {
    /// Whether this is the line of `item`.
    pub fn is_of(&self, item: &OrderItem) -> bool {
        self.product_id == item.product_id && self.sku_id == item.sku_id
    }

    /// The line a new after-sale of `order` is about, given what the user `asked` and the
    /// order's `earlier` after-sales:
    /// - a line named must be one of the order's items, its quantity 1 to what was ordered;
    /// - none named on an order with one item: that item, all of it that no live after-sale
    ///   claims yet (as if named without a quantity);
    /// - none named on an order with several: refused if the order is in the trading
    ///   component (WeChat was asked to make it there — its id may have been lost and is
    ///   learnt later — so the after-sale is mirrored to WeChat, which takes one line per
    ///   after-sale); otherwise the whole order, without a line.
    ///
    /// On an order with several items a line is also bounded by what live after-sales of it
    /// already claim, in goods and in money ([`LineChoice::most`]) — except the claim of the
    /// order's last unclaimed units (after it, every unit of every line is under a live or
    /// refunded after-sale), which keeps the order's own bound (freight included) so the
    /// freight can be given back. An order's only item is bounded the same way: all that is
    /// left of it is the order's last unclaimed units (the order's own bound, freight
    /// included); part of it is worth its unit price × quantity.
    pub fn choose(
        order: &Order,
        asked: Option<&LineAsked>,
        earlier: &[AfterSale],
    ) -> Result<LineChoice, LineError> {
        let Some(asked) = asked else {
            return match order.items.as_slice() {
                [only] => Self::of_item(order, only, None, earlier),
                [_, _, ..] if order.at_wechat().component_order => Err(LineError::LineRequired {
                    lines: order
                        .items
                        .iter()
                        .map(|i| format!("{}/{}", i.product_id, i.sku_id))
                        .collect::<Vec<_>>()
                        .join(", "),
                }),
                _ => Ok(LineChoice {
                    line: None,
                    most: None,
                }),
            };
        };
        let item = order
            .items
            .iter()
            .find(|i| i.product_id == asked.product_id && i.sku_id == asked.sku_id)
            .ok_or_else(|| LineError::UnknownLine {
                product_id: asked.product_id.clone(),
                sku_id: asked.sku_id.clone(),
            })?;
        if let Some(q) = asked.quantity.filter(|q| q.get() > item.quantity) {
            return Err(LineError::BadQuantity {
                asked: q.get(),
                ordered: item.quantity,
            });
        }
        Self::of_item(order, item, asked.quantity, earlier)
    }

    /// `quantity` of `item`: by default all not yet under a live after-sale, bounded by what
    /// those already claim of the line — or, for the order's last unclaimed units, by the
    /// order's own bound only (freight included). An order's only item is no exception: its
    /// earlier after-sales claim its units as a named line's do, so no line on it is that line
    /// with the default quantity (all of it that is left; none left: `AlreadyClaimed`), and
    /// all that is left of it is the order's last unclaimed units.
    fn of_item(
        order: &Order,
        item: &OrderItem,
        quantity: Option<NonZeroU32>,
        earlier: &[AfterSale],
    ) -> Result<LineChoice, LineError> {
        let (mut taken, mut claimed) = (0u32, Fen::ZERO);
        for a in earlier.iter().filter(|a| a.status.is_live()) {
            if let Some(l) = a.line.as_ref().filter(|l| l.is_of(item)) {
                taken = taken.saturating_add(l.quantity);
                claimed = claimed.checked_add(a.amount)?;
            }
        }
        let left_value = item.line_total()?.checked_sub(claimed).unwrap_or(Fen::ZERO);
        let left = item.quantity.saturating_sub(taken);
        let quantity = quantity.map_or(left, NonZeroU32::get);
        if left == 0 || quantity > left || left_value == Fen::ZERO {
            return Err(LineError::AlreadyClaimed {
                ordered: item.quantity,
                left: if left_value == Fen::ZERO { 0 } else { left },
            });
        }
        let line = AfterSaleLine {
            quantity,
            ..AfterSaleLine::whole(item)
        };
        if quantity == left && Self::all_else_claimed(order, item, earlier) {
            // The last unclaimed units of the order: the order's own bound (freight
            // included), as an only item's, so an order refunded line by line can give all
            // its money back. Decided now: an earlier after-sale rejected or cancelled later
            // does not change what this one was accepted for.
            return Ok(LineChoice {
                line: Some(line),
                most: None,
            });
        }
        let value = item.unit_price.checked_mul(quantity)?;
        Ok(LineChoice {
            line: Some(line),
            most: Some(value.min(left_value)),
        })
    }

    /// Whether every unit of every item of `order` but `item` is claimed by a live (not
    /// rejected or cancelled; refunded ones included) after-sale among `earlier` that names
    /// its line. After-sales of the whole order without a line claim no units.
    fn all_else_claimed(order: &Order, item: &OrderItem, earlier: &[AfterSale]) -> bool {
        order
            .items
            .iter()
            .filter(|i| !std::ptr::eq(*i, item))
            .all(|other| {
                let taken = earlier
                    .iter()
                    .filter(|a| a.status.is_live())
                    .filter_map(|a| a.line.as_ref().filter(|l| l.is_of(other)))
                    .fold(0u32, |sum, l| sum.saturating_add(l.quantity));
                taken >= other.quantity
            })
    }

    /// All of `item`.
    pub fn whole(item: &OrderItem) -> Self {
        AfterSaleLine {
            product_id: item.product_id.clone(),
            sku_id: item.sku_id.clone(),
            quantity: item.quantity,
        }
    }

    /// The line of `order` that WeChat's `product_info` names by our ids, if it is one with
    /// a count it could have (an after-sale the user opened in WeChat's order centre).
    pub fn of_wechat(
        order: &Order,
        out_product_id: &str,
        out_sku_id: &str,
        cnt: i64,
    ) -> Option<Self> {
        let item = order
            .items
            .iter()
            .find(|i| i.product_id.as_str() == out_product_id && i.sku_id.as_str() == out_sku_id)?;
        let quantity = u32::try_from(cnt)
            .ok()
            .filter(|q| (1..=item.quantity).contains(q))?;
        Some(AfterSaleLine {
            quantity,
            ..AfterSaleLine::whole(item)
        })
    }
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

/// A transition its status does not allow. Said to callers as is (409 `AFTERSALE_STATE`):
/// the status as the API writes it (`REQUESTED`, not `Requested`), what that status allows,
/// and to read it again, for it may have moved on since the caller last looked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "after-sale is {}: cannot {action}. {}; read it again (`list`) to see where it stands",
    from.as_str(),
    from.allows()
)]
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

    /// The merchant's own refund of `amount` of `order` (an order whose money we hold), for
    /// `reason`, about `line` (or none: money only), its units back on sale once refunded
    /// when `restock`: a refund only, approved at once — REFUNDING under a fresh
    /// `out_refund_no`, from where it goes on as any approved after-sale.
    pub fn merchant_refund(
        id: AfterSaleId,
        order: &Order,
        amount: Fen,
        reason: String,
        line: Option<AfterSaleLine>,
        restock: bool,
        now_ms: i64,
    ) -> Self {
        AfterSale {
            id,
            out_trade_no: order.out_trade_no.clone(),
            openid: order.openid.clone(),
            kind: AfterSaleKind::RefundOnly,
            amount,
            reason,
            status: AfterSaleStatus::Refunding,
            out_refund_no: Some(OutRefundNo::generate(now_ms)),
            refund_id: None,
            wx_aftersale_id: None,
            wx_add_claimed_until_ms: None,
            reject_reason: None,
            goods_return: None,
            restock: restock && line.is_some(),
            line,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
            refunded_at_ms: None,
            by: AfterSaleOrigin::Merchant,
        }
    }

    /// Whether it has a copy in WeChat's trading component (when its order does): the user's,
    /// and a merchant's own refund of a line (`ecaftersale/add` takes one line); not a
    /// merchant's refund about no line.
    pub fn mirrored_to_wechat(&self) -> bool {
        self.by.is_user() || self.line.is_some()
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
                self.refunded_at_ms = Some(now_ms);
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
        self.refunded_at_ms = Some(now_ms);
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
    /// approved after-sale was ever asked for: nothing is refunded, CANCELLED. Also a return
    /// WeChat closed while it waited for the goods (AWAITING_RETURN; WeChat's 7, the user
    /// never sent them in time): nobody here could close it — the merchant rejects only before
    /// accepting the return or once the goods came back — and it held its amount for good.
    pub fn closed_at_wechat(
        &mut self,
        now_ms: i64,
    ) -> Result<super::Change, AfterSaleTransitionError> {
        match self.status {
            AfterSaleStatus::Cancelled => Ok(super::Change::Unchanged),
            AfterSaleStatus::Refunding | AfterSaleStatus::AwaitingReturn => {
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
    /// way), or paid the user another way after WeChat Pay refused or closed the refund
    /// (REFUND_FAILED: some refusals are for good, WECHAT_PAY_V2.md §5 — a closed user
    /// account, a payment over a year old — and approving again only asks for the refund
    /// WeChat refuses): REFUNDED. Only a refund of ours that failed or is held is settled so;
    /// one in flight (REFUNDING) may still be paid by WeChat Pay. REFUND_FAILED used to be a
    /// dead end: nothing but approving again took it anywhere, so such an after-sale held
    /// its amount on the order for good, the order still shippable, although the user had
    /// been paid.
    pub fn refunded_by_hand(
        &mut self,
        now_ms: i64,
    ) -> Result<super::Change, AfterSaleTransitionError> {
        match self.status {
            AfterSaleStatus::RefundAbnormal | AfterSaleStatus::RefundFailed => {
                let changed = self.refunded(None, now_ms);
                // Paid outside WeChat's flows: not looked for among the funds flows (as a
                // refund marked refunded by hand is not among the bills).
                self.refunded_at_ms = None;
                changed
            }
            _ => Err(self.err(
                "record a refund made by hand (only a refund that failed or is held at WeChat \
                 is)",
            )),
        }
    }

    /// A refund a person made outside wxshop (the WeChat Pay merchant platform) paid this
    /// after-sale: REFUNDED at that refund's `amount` — what the user got, at most what was
    /// asked for — with no refund of ours. Only while no refund of ours is in flight or held:
    /// REQUESTED, AWAITING_RETURN, RETURNING, REFUND_FAILED. A REFUNDING one may still be paid
    /// by WeChat Pay (settle it first); an abnormal one waits at WeChat
    /// ([`AfterSale::refunded_by_hand`]).
    pub fn settled_by_refund_made_by_hand(
        &mut self,
        amount: Fen,
        refund_id: Option<String>,
        now_ms: i64,
    ) -> Result<super::Change, AfterSaleTransitionError> {
        match self.status {
            AfterSaleStatus::Requested
            | AfterSaleStatus::AwaitingReturn
            | AfterSaleStatus::Returning
            | AfterSaleStatus::RefundFailed
                if amount <= self.amount && amount > Fen::ZERO =>
            {
                self.status = AfterSaleStatus::Refunded;
                self.amount = amount;
                self.refund_id = refund_id;
                self.updated_at_ms = now_ms;
                self.refunded_at_ms = Some(now_ms);
                Ok(super::Change::Changed)
            }
            AfterSaleStatus::Requested
            | AfterSaleStatus::AwaitingReturn
            | AfterSaleStatus::Returning
            | AfterSaleStatus::RefundFailed => Err(self
                .err("be settled by a refund made by hand for more than it asks (or for nothing)")),
            _ => Err(self.err(
                "be settled by a refund made by hand (only an open after-sale with no refund \
                 of ours in flight or held is)",
            )),
        }
    }

    /// Whether this after-sale gave back the whole price of its line's quantity of `item`
    /// (`unit_price` × quantity, or more: freight on top): those units are taken back — out of
    /// the parcel (`shop_orders::parcel_contents`), back on sale when still in the warehouse
    /// ([`AfterSale::units_back`]). One of part of it (a price adjustment, a dented box) takes
    /// nothing back though its line names them, nor does one without a line. Its status is
    /// the caller's to check.
    pub fn refunds_whole_units_of(&self, item: &OrderItem) -> bool {
        self.line.as_ref().is_some_and(|l| {
            l.is_of(item)
                && item
                    .unit_price
                    .checked_mul(l.quantity)
                    .is_ok_and(|whole| self.amount >= whole)
        })
    }

    /// The units this after-sale, once REFUNDED, puts back on sale (none before): what it
    /// refunded in full — the whole price of its quantity, as a parcel leaves out the units
    /// an after-sale took back (`shop_orders::parcel_contents`) — of goods still in the
    /// warehouse:
    /// - the order was never shipped (any kind of after-sale: the units never left), or
    /// - a return and refund whose goods came back (the user sent them, with a waybill, and
    ///   the refund followed).
    ///
    /// A refund only after shipping (the user keeps or lost the goods), part of a line's
    /// price (a price adjustment, a dented box), the freight alone: nothing. An after-sale of
    /// the whole order without a line (several items, not in the trading component) puts back
    /// every item when it refunded every item's whole price.
    ///
    /// A merchant's own refund ([`AfterSaleOrigin::Merchant`]) of no line is money, not units:
    /// nothing. Of a line, by the same rule: its units if never shipped (the refund took them
    /// out of the parcel, so they are in the warehouse), or if the merchant says they came
    /// back ([`Self::restock`]).
    pub fn units_back(&self, order: &Order) -> Vec<AfterSaleLine> {
        if self.status != AfterSaleStatus::Refunded {
            return Vec::new();
        }
        let never_shipped = order.delivery.is_none() && order.shipped_at_ms.is_none();
        let in_warehouse = match self.by {
            // A line's units not yet shipped are in the warehouse whatever the merchant
            // said (the refund took them out of the parcel); shipped ones only if it said
            // they came back. A refund of no line claims no units: money only.
            AfterSaleOrigin::Merchant => self.restock || (self.line.is_some() && never_shipped),
            AfterSaleOrigin::User => {
                let goods_came_back = self.kind == AfterSaleKind::ReturnAndRefund
                    && self
                        .goods_return
                        .as_ref()
                        .is_some_and(|g| g.waybill.is_some());
                never_shipped || goods_came_back
            }
        };
        if !in_warehouse {
            return Vec::new();
        }
        match &self.line {
            Some(l) => {
                let taken = order
                    .items
                    .iter()
                    .find(|i| l.is_of(i))
                    .filter(|i| l.quantity > 0 && l.quantity <= i.quantity)
                    .is_some_and(|i| self.refunds_whole_units_of(i));
                if taken {
                    vec![l.clone()]
                } else {
                    Vec::new()
                }
            }
            None => {
                let all = order
                    .items
                    .iter()
                    .try_fold(Fen::ZERO, |sum, i| sum.checked_add(i.line_total()?));
                match all {
                    Ok(all) if self.amount >= all && !order.items.is_empty() => {
                        order.items.iter().map(AfterSaleLine::whole).collect()
                    }
                    _ => Vec::new(),
                }
            }
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
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::order::tests::sample_order;
    use super::*;
    use crate::domain::Change;

    /// Paid, in the trading component: 2 × A at 300 and 3 × B at 500.
    fn two_lines() -> Order {
        let mut o = sample_order(2100);
        let a = o.items[0].clone();
        o.items = vec![
            OrderItem {
                product_id: ProductId::parse("A").unwrap(),
                sku_id: SkuId::parse("a1").unwrap(),
                unit_price: Fen::new(300).unwrap(),
                quantity: 2,
                ..a.clone()
            },
            OrderItem {
                product_id: ProductId::parse("B").unwrap(),
                sku_id: SkuId::parse("b1").unwrap(),
                unit_price: Fen::new(500).unwrap(),
                quantity: 3,
                ..a
            },
        ];
        o.wx_order_id = Some(1);
        o
    }

    fn asked(p: &str, s: &str, q: Option<u32>) -> LineAsked {
        LineAsked {
            product_id: ProductId::parse(p).unwrap(),
            sku_id: SkuId::parse(s).unwrap(),
            quantity: q.and_then(NonZeroU32::new),
        }
    }

    fn earlier(line: AfterSaleLine, amount: i64, status: AfterSaleStatus) -> AfterSale {
        AfterSale {
            id: AfterSaleId::parse("AS0").unwrap(),
            out_trade_no: OutTradeNo::parse("WX20240101000000abc").unwrap(),
            openid: OpenId::parse("o_user_1").unwrap(),
            kind: AfterSaleKind::RefundOnly,
            amount: Fen::new(amount).unwrap(),
            reason: "x".into(),
            status,
            out_refund_no: None,
            refund_id: None,
            wx_aftersale_id: None,
            wx_add_claimed_until_ms: None,
            restock: false,
            reject_reason: None,
            goods_return: None,
            line: Some(line),
            created_at_ms: 0,
            updated_at_ms: 0,
            refunded_at_ms: None,
            by: Default::default(),
        }
    }

    #[test]
    fn a_named_line_is_bounded_by_its_value_and_what_is_claimed_of_it() {
        let o = two_lines();
        let b1 = AfterSaleLine::choose(&o, Some(&asked("B", "b1", Some(1))), &[]).unwrap();
        let line = b1.line.clone().unwrap();
        assert_eq!((line.product_id.as_str(), line.quantity), ("B", 1));
        assert_eq!(b1.most, Some(Fen::new(500).unwrap()));
        // One B under a live after-sale: the default is the two left; a rejected one frees it.
        let taken = [earlier(line.clone(), 500, AfterSaleStatus::Refunded)];
        let rest = AfterSaleLine::choose(&o, Some(&asked("B", "b1", None)), &taken).unwrap();
        assert_eq!(rest.line.unwrap().quantity, 2);
        assert_eq!(rest.most, Some(Fen::new(1000).unwrap()));
        assert_eq!(
            AfterSaleLine::choose(&o, Some(&asked("B", "b1", Some(3))), &taken),
            Err(LineError::AlreadyClaimed {
                ordered: 3,
                left: 2
            })
        );
        let freed = [earlier(line.clone(), 500, AfterSaleStatus::Rejected)];
        let all = AfterSaleLine::choose(&o, Some(&asked("B", "b1", None)), &freed).unwrap();
        assert_eq!(all.line.unwrap().quantity, 3);
        // Every B claimed: refused.
        let whole = [earlier(
            AfterSaleLine {
                quantity: 3,
                ..line
            },
            1500,
            AfterSaleStatus::Requested,
        )];
        assert!(matches!(
            AfterSaleLine::choose(&o, Some(&asked("B", "b1", Some(1))), &whole),
            Err(LineError::AlreadyClaimed { left: 0, .. })
        ));
        // A's line is untouched by B's after-sales: part of it is worth its units. (All of
        // it would be the order's last unclaimed units: see the test below.)
        let a = AfterSaleLine::choose(&o, Some(&asked("A", "a1", Some(1))), &whole).unwrap();
        assert_eq!(a.most, Some(Fen::new(300).unwrap()));
    }

    #[test]
    fn the_last_unclaimed_units_of_an_order_keep_its_own_bound() {
        let o = two_lines();
        let b = |q, amount, status| {
            earlier(
                AfterSaleLine {
                    product_id: ProductId::parse("B").unwrap(),
                    sku_id: SkuId::parse("b1").unwrap(),
                    quantity: q,
                },
                amount,
                status,
            )
        };
        // Every B under a live or refunded after-sale: all of A is the last units.
        let claimed = [
            b(1, 500, AfterSaleStatus::Refunded),
            b(2, 1000, AfterSaleStatus::Requested),
        ];
        for ask in [None, Some(2)] {
            let last = AfterSaleLine::choose(&o, Some(&asked("A", "a1", ask)), &claimed).unwrap();
            assert_eq!((last.line.unwrap().quantity, last.most), (2, None));
        }
        // Part of A leaves a unit unclaimed: its line's bound.
        let part = AfterSaleLine::choose(&o, Some(&asked("A", "a1", Some(1))), &claimed).unwrap();
        assert_eq!(part.most, Some(Fen::new(300).unwrap()));
        // One A claimed already: the other is the last unit.
        let mut one_a = claimed.to_vec();
        let a1 = AfterSaleLine::choose(&o, Some(&asked("A", "a1", Some(1))), &[]).unwrap();
        one_a.push(earlier(a1.line.unwrap(), 300, AfterSaleStatus::Refunding));
        let last = AfterSaleLine::choose(&o, Some(&asked("A", "a1", None)), &one_a).unwrap();
        assert_eq!((last.line.unwrap().quantity, last.most), (1, None));
        // A B rejected or cancelled frees its units: A is bounded by its line again.
        for freed in [AfterSaleStatus::Rejected, AfterSaleStatus::Cancelled] {
            let claims = [b(1, 500, AfterSaleStatus::Refunded), b(2, 1000, freed)];
            let a = AfterSaleLine::choose(&o, Some(&asked("A", "a1", None)), &claims).unwrap();
            assert_eq!(a.most, Some(Fen::new(600).unwrap()));
        }
        // Nothing claimed yet: the first line keeps its line's bound.
        let first = AfterSaleLine::choose(&o, Some(&asked("A", "a1", None)), &[]).unwrap();
        assert_eq!(first.most, Some(Fen::new(600).unwrap()));
    }

    #[test]
    fn a_line_must_be_of_the_order_and_of_a_quantity_it_has() {
        let o = two_lines();
        assert!(matches!(
            AfterSaleLine::choose(&o, Some(&asked("A", "b1", None)), &[]),
            Err(LineError::UnknownLine { .. })
        ));
        assert_eq!(
            AfterSaleLine::choose(&o, Some(&asked("A", "a1", Some(3))), &[]),
            Err(LineError::BadQuantity {
                asked: 3,
                ordered: 2
            })
        );
    }

    #[test]
    fn no_line_is_the_only_item_or_required_where_wechat_needs_one() {
        let mut o = two_lines();
        let err = AfterSaleLine::choose(&o, None, &[]).unwrap_err();
        assert!(err.to_string().contains("A/a1, B/b1"), "{err}");
        o.wx_order_id = None;
        assert_eq!(
            AfterSaleLine::choose(&o, None, &[]),
            Ok(LineChoice {
                line: None,
                most: None
            })
        );
        // One item: all of it, bounded by the order only (freight included), as before.
        let single = sample_order(100);
        let c = AfterSaleLine::choose(&single, None, &[]).unwrap();
        assert_eq!(c.line, Some(AfterSaleLine::whole(&single.items[0])));
        assert_eq!(c.most, None);
    }

    #[test]
    fn part_of_an_only_item_is_worth_its_units_and_all_that_is_left_keeps_the_freight() {
        // 3 × 500 and freight: one cup back is worth 500, not the whole order.
        let mut o = sample_order(1510);
        o.items[0].unit_price = Fen::new(500).unwrap();
        o.items[0].quantity = 3;
        o.freight = Fen::new(10).unwrap();
        let (p, s) = (o.items[0].product_id.clone(), o.items[0].sku_id.clone());
        let ask = |q| asked(p.as_str(), s.as_str(), q);
        let one = AfterSaleLine::choose(&o, Some(&ask(Some(1))), &[]).unwrap();
        assert_eq!(one.most, Some(Fen::new(500).unwrap()));
        assert_eq!(one.line.clone().unwrap().quantity, 1);
        // One cup under a live after-sale: no line is the two left, as the line named without
        // a quantity is — the last unclaimed units, so the order's bound (freight included).
        let taken = [earlier(
            one.line.clone().unwrap(),
            500,
            AfterSaleStatus::Requested,
        )];
        for c in [
            AfterSaleLine::choose(&o, None, &taken).unwrap(),
            AfterSaleLine::choose(&o, Some(&ask(None)), &taken).unwrap(),
            AfterSaleLine::choose(&o, Some(&ask(Some(2))), &taken).unwrap(),
        ] {
            assert_eq!((c.line.unwrap().quantity, c.most), (2, None));
        }
        // Part of what is left is worth its units; more than is left is refused.
        let part = AfterSaleLine::choose(&o, Some(&ask(Some(1))), &taken).unwrap();
        assert_eq!(part.most, Some(Fen::new(500).unwrap()));
        assert_eq!(
            AfterSaleLine::choose(&o, Some(&ask(Some(3))), &taken),
            Err(LineError::AlreadyClaimed {
                ordered: 3,
                left: 2
            })
        );
        // Every cup claimed (a refunded after-sale still claims its units): nothing is left,
        // with or without the line named; a rejected one frees its units again.
        let all = [
            earlier(one.line.clone().unwrap(), 500, AfterSaleStatus::Refunded),
            earlier(
                AfterSaleLine {
                    quantity: 2,
                    ..one.line.clone().unwrap()
                },
                1010,
                AfterSaleStatus::Requested,
            ),
        ];
        for asked in [None, Some(ask(None))] {
            assert_eq!(
                AfterSaleLine::choose(&o, asked.as_ref(), &all),
                Err(LineError::AlreadyClaimed {
                    ordered: 3,
                    left: 0
                })
            );
        }
        let freed = [earlier(one.line.unwrap(), 500, AfterSaleStatus::Rejected)];
        let c = AfterSaleLine::choose(&o, None, &freed).unwrap();
        assert_eq!((c.line.unwrap().quantity, c.most), (3, None));
    }

    // After-sales and WeChat's own moves.

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
            restock: false,
            reject_reason: None,
            goods_return: None,
            line: None,
            created_at_ms: 0,
            updated_at_ms: 0,
            refunded_at_ms: None,
            by: Default::default(),
        }
    }

    fn fen(v: i64) -> Fen {
        Fen::new(v).unwrap()
    }

    #[test]
    fn units_come_back_for_the_whole_price_of_goods_still_in_the_warehouse() {
        let a1 = || AfterSaleLine {
            product_id: ProductId::parse("A").unwrap(),
            sku_id: SkuId::parse("a1").unwrap(),
            quantity: 2,
        };
        let b1 = |q| AfterSaleLine {
            product_id: ProductId::parse("B").unwrap(),
            sku_id: SkuId::parse("b1").unwrap(),
            quantity: q,
        };
        let refunded = |kind, line: AfterSaleLine, amount| {
            let mut a = earlier(line, amount, AfterSaleStatus::Refunded);
            a.kind = kind;
            a
        };
        let paid = two_lines();
        let mut shipped = two_lines();
        shipped.delivery = Some(crate::domain::Delivery {
            delivery_id: "SF".into(),
            waybill_id: "SF1".into(),
        });
        shipped.shipped_at_ms = Some(1);
        let only = AfterSaleKind::RefundOnly;
        let ret = AfterSaleKind::ReturnAndRefund;

        // Not shipped: the whole price of the quantity (freight too, or more) brings it back.
        assert_eq!(refunded(only, a1(), 600).units_back(&paid), vec![a1()]);
        assert_eq!(refunded(only, b1(2), 1000).units_back(&paid), vec![b1(2)]);
        assert_eq!(refunded(only, b1(1), 700).units_back(&paid), vec![b1(1)]);
        assert_eq!(refunded(ret, b1(1), 500).units_back(&paid), vec![b1(1)]);
        // Part of it (a price adjustment), or freight alone: nothing.
        assert!(refunded(only, a1(), 599).units_back(&paid).is_empty());
        assert!(refunded(only, b1(3), 10).units_back(&paid).is_empty());
        // Only once refunded: applied, approved, failed, cancelled give nothing.
        for st in AfterSaleStatus::ALL {
            if st != AfterSaleStatus::Refunded {
                assert!(
                    earlier(a1(), 600, st).units_back(&paid).is_empty(),
                    "{st:?}"
                );
            }
        }
        // Shipped: a refund only leaves the goods with the user.
        assert!(refunded(only, a1(), 600).units_back(&shipped).is_empty());
        // A return whose goods came back brings them back; one never sent does not.
        let mut back = refunded(ret, b1(3), 1500);
        assert!(back.units_back(&shipped).is_empty());
        back.goods_return = Some(GoodsReturn {
            address: crate::domain::Address::default(),
            waybill: Some(ReturnWaybill {
                delivery_id: "SF".into(),
                delivery_name: "顺丰".into(),
                waybill_id: "SF2".into(),
            }),
        });
        assert_eq!(back.units_back(&shipped), vec![b1(3)]);
        back.amount = fen(1499);
        assert!(back.units_back(&shipped).is_empty());
        // A line the order does not have, or more of it than was ordered: nothing.
        assert!(refunded(only, b1(4), 9999).units_back(&paid).is_empty());
        // The whole order without a line: every item, when every item's price went back.
        let mut whole = refunded(only, a1(), 2100);
        whole.line = None;
        assert_eq!(whole.units_back(&paid), vec![a1(), b1(3)]);
        whole.amount = fen(2099);
        assert!(whole.units_back(&paid).is_empty());
        // The merchant's own refund of all of it, never shipped: money, not units.
        let mut by_merchant = AfterSale::merchant_refund(
            AfterSaleId::generate(0),
            &paid,
            paid.total,
            "goodwill".into(),
            None,
            true,
            1,
        );
        assert_eq!(
            (by_merchant.status, by_merchant.line.as_ref()),
            (AfterSaleStatus::Refunding, None)
        );
        assert!(!by_merchant.restock, "no line, nothing to restock");
        assert!(by_merchant.out_refund_no.is_some() && !by_merchant.mirrored_to_wechat());
        by_merchant.refunded(Some("r1".into()), 2).unwrap();
        assert!(by_merchant.units_back(&paid).is_empty());
        // Of a line: mirrored; its units back once refunded: never shipped (in the warehouse
        // whatever the merchant said), or restocked.
        for order in [&paid, &shipped] {
            for restock in [false, true] {
                let mut line = AfterSale::merchant_refund(
                    AfterSaleId::generate(0),
                    order,
                    fen(1500),
                    "taken back by phone".into(),
                    Some(b1(3)),
                    restock,
                    1,
                );
                assert!(line.mirrored_to_wechat());
                assert!(line.units_back(order).is_empty(), "not before the refund");
                line.refunded(Some("r2".into()), 2).unwrap();
                // Never shipped: in the warehouse, restock or not; shipped: only if restocked.
                let back = restock || std::ptr::eq(order, &paid);
                let want = if back { vec![b1(3)] } else { Vec::new() };
                assert_eq!(line.units_back(order), want, "restock {restock}");
            }
        }
    }

    #[test]
    fn all_names_every_status() {
        // A status added to the enum and not to ALL fails to compile here first.
        for s in AfterSaleStatus::ALL {
            match s {
                AfterSaleStatus::Requested
                | AfterSaleStatus::Cancelled
                | AfterSaleStatus::Rejected
                | AfterSaleStatus::AwaitingReturn
                | AfterSaleStatus::Returning
                | AfterSaleStatus::Refunding
                | AfterSaleStatus::RefundFailed
                | AfterSaleStatus::RefundAbnormal
                | AfterSaleStatus::Refunded => {}
            }
        }
        let names: std::collections::BTreeSet<_> =
            AfterSaleStatus::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(names.len(), AfterSaleStatus::ALL.len());
    }

    #[test]
    fn a_refused_transition_names_the_status_as_the_api_writes_it_and_what_it_allows() {
        let mut a = sample(AfterSaleKind::RefundOnly, AfterSaleStatus::Refunding);
        let msg = a.cancel(0).unwrap_err().to_string();
        assert!(
            msg.starts_with("after-sale is REFUNDING: cannot cancel."),
            "{msg}"
        );
        assert!(msg.contains("wait until it reads REFUNDED"), "{msg}");
        assert!(msg.contains("read it again"), "{msg}");
        assert!(!msg.contains("Refunding;"), "{msg}");
        for s in AfterSaleStatus::ALL {
            assert!(!s.allows().is_empty(), "{s:?}");
        }
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
    fn a_refund_made_by_hand_settles_only_an_open_aftersale_with_no_refund_in_flight() {
        use AfterSaleStatus::*;
        for from in [Requested, AwaitingReturn, Returning, RefundFailed] {
            let mut a = sample(AfterSaleKind::RefundOnly, from);
            assert!(a.settled_by_refund_made_by_hand(fen(31), None, 1).is_err());
            assert_eq!(
                a.settled_by_refund_made_by_hand(fen(20), Some("r".into()), 1),
                Ok(Change::Changed),
                "{from:?}"
            );
            assert_eq!((a.status, a.amount), (Refunded, fen(20)));
        }
        for from in [Refunding, RefundAbnormal, Refunded, Rejected, Cancelled] {
            let mut a = sample(AfterSaleKind::RefundOnly, from);
            assert!(
                a.settled_by_refund_made_by_hand(fen(30), None, 1).is_err(),
                "{from:?}"
            );
        }
    }

    #[test]
    fn only_an_unpaid_approval_or_an_unsent_return_closes_as_wechat_did() {
        use AfterSaleStatus::*;
        let mut a = sample(AfterSaleKind::RefundOnly, Refunding);
        assert_eq!(a.closed_at_wechat(1), Ok(Change::Changed));
        assert_eq!(a.status, Cancelled);
        assert_eq!(a.closed_at_wechat(2), Ok(Change::Unchanged));
        for from in [Refunded, RefundAbnormal, Requested, Returning, RefundFailed] {
            assert!(sample(AfterSaleKind::RefundOnly, from)
                .closed_at_wechat(1)
                .is_err());
        }
        // A return WeChat closed while it waited for the goods.
        let mut a = sample(AfterSaleKind::ReturnAndRefund, AwaitingReturn);
        assert_eq!(a.closed_at_wechat(3), Ok(Change::Changed));
        assert_eq!((a.status, a.updated_at_ms), (Cancelled, 3));
    }
}
