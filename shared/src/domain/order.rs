//! The order and its status machine. Every change of status is a method that returns the
//! change or a typed error; the store persists it with a condition on the previous version,
//! so two writers can never both move an order.
//!
//! ```text
//! CREATED ─prepay→ PREPAID ─pay→ PAID ─ship→ SHIPPED ─receive→ RECEIVED ─complete→ COMPLETED
//!    │                │            │          │            │               │
//!    └──close──────→ CLOSED        └─────── refund of what is left ────────┴──→ REFUNDED
//! ```
//! The status is the fulfilment; the money that went back is `refunded`, beside it. A partial
//! refund (one of two items) changes only `refunded`: the order stays PAID / SHIPPED / … so the
//! rest is still shipped and its receipt confirmed. Refunding what is left makes it REFUNDED
//! (final). `PAID` with `fund_type = 1` additionally records settlement (`settled_at`).
//!
//! COMPLETED: [`Order::complete`] exists, but nothing calls it — no completion rule (the
//! after-sale window running out, say) is implemented, so RECEIVED is the last fulfilment
//! status an order reaches today.
//!
//! PARTIALLY_REFUNDED is no longer entered; records written while a partial refund replaced
//! the fulfilment status still read, and leave it the way they would have gone: ship when no
//! waybill was recorded yet, confirm receipt when one was, refund to REFUNDED.

use super::{AfterSaleId, Fen, OpenId, OutRefundNo, OutTradeNo, ProductId, SkuId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    /// Priced and stored; WeChat Pay not asked yet.
    Created,
    /// `prepay_id` obtained; waiting for the user to pay.
    Prepaid,
    /// Payment confirmed (notification or order query).
    Paid,
    Shipped,
    Received,
    Completed,
    /// Closed unpaid (user, merchant or expiry). Final.
    Closed,
    /// Legacy: some of the paid amount went back to the user, written by versions that let a
    /// partial refund replace the fulfilment status. No longer entered (a partial refund keeps
    /// the status; see the module doc); such records may still ship, confirm receipt and be
    /// refunded.
    PartiallyRefunded,
    /// Everything paid went back. Final.
    Refunded,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 9] = [
        OrderStatus::Created,
        OrderStatus::Prepaid,
        OrderStatus::Paid,
        OrderStatus::Shipped,
        OrderStatus::Received,
        OrderStatus::Completed,
        OrderStatus::Closed,
        OrderStatus::PartiallyRefunded,
        OrderStatus::Refunded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Created => "CREATED",
            OrderStatus::Prepaid => "PREPAID",
            OrderStatus::Paid => "PAID",
            OrderStatus::Shipped => "SHIPPED",
            OrderStatus::Received => "RECEIVED",
            OrderStatus::Completed => "COMPLETED",
            OrderStatus::Closed => "CLOSED",
            OrderStatus::PartiallyRefunded => "PARTIALLY_REFUNDED",
            OrderStatus::Refunded => "REFUNDED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Money has been received for this order (it may since have been refunded in part).
    pub fn is_paid(self) -> bool {
        matches!(
            self,
            OrderStatus::Paid
                | OrderStatus::Shipped
                | OrderStatus::Received
                | OrderStatus::Completed
                | OrderStatus::PartiallyRefunded
                | OrderStatus::Refunded
        )
    }

    pub fn is_unpaid_open(self) -> bool {
        matches!(self, OrderStatus::Created | OrderStatus::Prepaid)
    }
}

/// Which way the money flows (trading component `fund_type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum FundType {
    /// Ordinary: the buyer pays our merchant account through WeChat Pay v2.
    #[default]
    Direct,
    /// Secondary merchant: WeChat collects, settles into the shop's funds account.
    SecondaryMerchant,
}

impl FundType {
    pub fn code(self) -> u8 {
        match self {
            FundType::Direct => 0,
            FundType::SecondaryMerchant => 1,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderItem {
    pub product_id: ProductId,
    pub sku_id: SkuId,
    pub title: String,
    pub head_img: String,
    /// Unit price from the catalog at order time.
    pub unit_price: Fen,
    pub quantity: u32,
}

impl OrderItem {
    pub fn line_total(&self) -> Result<Fen, super::MoneyError> {
        self.unit_price.checked_mul(self.quantity)
    }
}

/// Where the goods go (the trading component needs it for express delivery).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    pub receiver_name: String,
    pub detailed_address: String,
    pub tel_number: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub province: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub town: Option<String>,
}

impl Address {
    /// Required parts present and of sane length.
    pub fn is_valid(&self) -> bool {
        self.check().is_ok()
    }

    /// What is wrong with the address, naming the part and its limit, so that the caller can
    /// tell an empty part from one too long (both used to read "needs receiver_name, …"). The
    /// optional parts are bounded too (64 characters): they go to WeChat with the order and
    /// are kept with it, and were unbounded.
    pub fn check(&self) -> Result<(), String> {
        let required = [
            ("receiver_name", self.receiver_name.as_str(), 64),
            ("detailed_address", self.detailed_address.as_str(), 256),
            ("tel_number", self.tel_number.as_str(), 32),
        ];
        for (name, value, max) in required {
            if value.trim().is_empty() {
                return Err(format!("{name} is required"));
            }
            if value.chars().count() > max {
                return Err(format!("{name} is longer than {max} characters"));
            }
        }
        let optional = [
            ("province", &self.province),
            ("city", &self.city),
            ("town", &self.town),
        ];
        for (name, value) in optional {
            if value.as_deref().is_some_and(|v| v.chars().count() > 64) {
                return Err(format!("{name} is longer than 64 characters"));
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub delivery_id: String,
    pub waybill_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub out_trade_no: OutTradeNo,
    pub openid: OpenId,
    pub items: Vec<OrderItem>,
    /// What the user pays: sum of item lines plus freight.
    pub total: Fen,
    #[serde(default)]
    pub freight: Fen,
    pub status: OrderStatus,
    #[serde(default)]
    pub fund_type: FundType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepay_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepay_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paid_at_ms: Option<i64>,
    /// Trading component order id (beyond 2^53: kept as u64, never f64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wx_order_id: Option<u64>,
    /// What WeChat was (or is to be) asked to create for this order; see [`SentToWechat`].
    #[serde(default, skip_serializing_if = "SentToWechat::is_nothing")]
    pub sent_to_wechat: SentToWechat,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scene: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,
    /// When the order was shipped (PAID → SHIPPED; a waybill corrected later keeps it). `None`
    /// on orders not shipped, and on those shipped before it was kept: see
    /// [`Order::shipped_since_ms`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shipped_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Address>,
    #[serde(default)]
    pub refunded: Fen,
    /// What each open after-sale asks for, held against the refundable amount from the
    /// application until it is refunded or closed: written with the order, under its version,
    /// so concurrent applications cannot together ask for more than is left.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub refund_claims: BTreeMap<AfterSaleId, Fen>,
    /// The refunds made by hand in the merchant platform recorded on this order, by their
    /// `out_refund_no`, written with each ([`Order::refund_by_hand`]): read by key, one is seen
    /// the moment it is recorded, where the store's index of an order's refunds may lag behind
    /// (DynamoDB's are eventually consistent). Orders refunded by hand before this was kept list
    /// none; those refunds are found through the index, long since caught up.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refunds_by_hand: Vec<OutRefundNo>,
    /// The after-sales of this order, by id, in the order they were recorded on it: each that
    /// held an amount on it ([`Order::claim_refund`]) or was refunded against it
    /// ([`Order::refund_aftersale`]), kept after its hold is given back. Read by key, an
    /// after-sale refunded a moment ago is seen as refunded, where the store's index of an
    /// order's after-sales may lag behind (DynamoDB's are eventually consistent). Orders whose
    /// after-sales were recorded before this was kept list none (or some); those are found
    /// through the index, long since caught up.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aftersales: Vec<AfterSaleId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settled_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close_reason: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// Unpaid orders close (and release stock) after this time.
    pub expires_at_ms: i64,
}

/// The create calls an order makes at WeChat, all under our `out_trade_no`: recorded in the
/// write that creates the order, before anything is sent. A call whose answer never came back
/// (a timeout, a reset connection, the function killed) may still have created its order at
/// WeChat although we never learnt its id; closing our order must close that one too, found by
/// our number. Closing one WeChat never made is harmless (`ORDERNOTEXIST`; 1010011 in the
/// trading component).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentToWechat {
    /// `pay/unifiedorder` (a WeChat Pay prepay order).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pay_order: bool,
    /// `shop/order/add` (a trading component order, `out_order_id` = our number).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub component_order: bool,
}

impl SentToWechat {
    pub fn is_nothing(&self) -> bool {
        !self.pay_order && !self.component_order
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// `from` as the API writes it (`PAID`, not `Paid`): callers pass this on to users.
    #[error("order is {}; cannot {action}", from.as_str())]
    NotAllowed {
        from: OrderStatus,
        action: &'static str,
    },
    #[error("order was already paid with a different transaction ({existing})")]
    OtherTransaction { existing: String },
    #[error("refund of {requested} fen exceeds the {refundable} fen still refundable")]
    RefundTooLarge { requested: Fen, refundable: Fen },
}

/// Whether a transition changed anything: a repeat of an applied event is `Unchanged`, which
/// callers treat as success (replays and duplicate notifications are harmless).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Changed,
    Unchanged,
}

impl Order {
    fn not_allowed(&self, action: &'static str) -> TransitionError {
        TransitionError::NotAllowed {
            from: self.status,
            action,
        }
    }

    /// What WeChat may hold for this order: what it was asked to create, and what it answered
    /// with an id for. (Orders stored before `sent_to_wechat` was recorded count by their ids
    /// alone.)
    pub fn at_wechat(&self) -> SentToWechat {
        SentToWechat {
            pay_order: self.sent_to_wechat.pay_order
                || (self.fund_type == FundType::Direct && self.prepay_id.is_some()),
            component_order: self.sent_to_wechat.component_order || self.wx_order_id.is_some(),
        }
    }

    /// CREATED → PREPAID with the WeChat Pay prepay id. Re-prepaying an unpaid order (a new
    /// prepay id after two hours) keeps it PREPAID.
    pub fn prepay(&mut self, prepay_id: String, now_ms: i64) -> Result<Change, TransitionError> {
        match self.status {
            OrderStatus::Created | OrderStatus::Prepaid => {
                if self.prepay_id.as_deref() == Some(prepay_id.as_str()) {
                    return Ok(Change::Unchanged);
                }
                self.status = OrderStatus::Prepaid;
                self.prepay_id = Some(prepay_id);
                self.prepay_at_ms = Some(now_ms);
                self.updated_at_ms = now_ms;
                Ok(Change::Changed)
            }
            _ => Err(self.not_allowed("prepay")),
        }
    }

    /// Whether [`Order::pay`] of `transaction_id` would change nothing (this payment is on the
    /// order already), without copying the order to find out; its error for another payment.
    pub fn payment_recorded(&self, transaction_id: &str) -> Result<bool, TransitionError> {
        if !self.status.is_paid() {
            return Ok(false);
        }
        match self.transaction_id.as_deref() {
            Some(t) if t == transaction_id => Ok(true),
            Some(t) => Err(TransitionError::OtherTransaction {
                existing: t.to_owned(),
            }),
            None => Err(self.not_allowed("pay")),
        }
    }

    /// CREATED/PREPAID → PAID. The same transaction again is `Unchanged`; a different one is
    /// an error (two payments for one order must be looked at by a person). A CLOSED order
    /// that WeChat says was paid is paid: the money moved, and the close lost the race.
    pub fn pay(
        &mut self,
        transaction_id: &str,
        paid_at_ms: i64,
        now_ms: i64,
    ) -> Result<Change, TransitionError> {
        if self.payment_recorded(transaction_id)? {
            return Ok(Change::Unchanged);
        }
        match self.status {
            OrderStatus::Created | OrderStatus::Prepaid | OrderStatus::Closed => {
                self.status = OrderStatus::Paid;
                self.transaction_id = Some(transaction_id.to_owned());
                self.paid_at_ms = Some(paid_at_ms);
                self.close_reason = None;
                self.updated_at_ms = now_ms;
                Ok(Change::Changed)
            }
            _ => Err(self.not_allowed("pay")),
        }
    }

    /// CREATED/PREPAID → CLOSED.
    pub fn close(&mut self, reason: &str, now_ms: i64) -> Result<Change, TransitionError> {
        match self.status {
            OrderStatus::Closed => Ok(Change::Unchanged),
            OrderStatus::Created | OrderStatus::Prepaid => {
                self.status = OrderStatus::Closed;
                self.close_reason = Some(reason.to_owned());
                self.updated_at_ms = now_ms;
                Ok(Change::Changed)
            }
            _ => Err(self.not_allowed("close")),
        }
    }

    /// PAID → SHIPPED, also after a partial refund (a legacy PARTIALLY_REFUNDED order not
    /// shipped yet ships the same way); the time is kept as [`Order::shipped_at_ms`]. The same
    /// shipment again is `Unchanged` on a shipped order, and also once the user confirmed its
    /// receipt (RECEIVED, COMPLETED): a merchant's tool repeating a `ship` whose answer it
    /// lost finds it done, whenever it repeats it.
    pub fn ship(&mut self, delivery: Delivery, now_ms: i64) -> Result<Change, TransitionError> {
        match self.status {
            OrderStatus::Shipped | OrderStatus::Received | OrderStatus::Completed
                if self.delivery.as_ref() == Some(&delivery) =>
            {
                Ok(Change::Unchanged)
            }
            OrderStatus::PartiallyRefunded if self.delivery.is_some() => {
                if self.delivery.as_ref() == Some(&delivery) {
                    Ok(Change::Unchanged)
                } else {
                    Err(self.not_allowed("ship again"))
                }
            }
            OrderStatus::Paid | OrderStatus::PartiallyRefunded => {
                self.status = OrderStatus::Shipped;
                self.delivery = Some(delivery);
                self.shipped_at_ms = Some(now_ms);
                self.updated_at_ms = now_ms;
                Ok(Change::Changed)
            }
            _ => Err(self.not_allowed("ship")),
        }
    }

    /// When the order counts as shipped since: [`Order::shipped_at_ms`], or for an order
    /// shipped before that was kept its last change (`updated_at_ms`, which the shipment set,
    /// and which a later change only moves on).
    pub fn shipped_since_ms(&self) -> i64 {
        self.shipped_at_ms.unwrap_or(self.updated_at_ms)
    }

    /// A shipped order's waybill replaced (the status stays): the courier or waybill entered
    /// was wrong. Whether that may still happen — WeChat has not accepted the shipment yet —
    /// is the caller's to know; the same waybill again is `Unchanged`. A RECEIVED order too:
    /// the user confirms receipt from what our order shows (SHIPPED) when the parcel comes,
    /// which may be before the merchant fixes a shipment WeChat refused — refused then, the
    /// correction could never reach WeChat, whose order stayed unshipped for good.
    pub fn correct_shipment(
        &mut self,
        delivery: Delivery,
        now_ms: i64,
    ) -> Result<Change, TransitionError> {
        match self.status {
            OrderStatus::Shipped | OrderStatus::Received | OrderStatus::PartiallyRefunded
                if self.delivery.is_some() =>
            {
                if self.delivery.as_ref() == Some(&delivery) {
                    return Ok(Change::Unchanged);
                }
                self.delivery = Some(delivery);
                self.updated_at_ms = now_ms;
                Ok(Change::Changed)
            }
            _ => Err(self.not_allowed("correct the shipment")),
        }
    }

    /// SHIPPED → RECEIVED, also after a partial refund (a legacy PARTIALLY_REFUNDED order
    /// with a waybill is received the same way).
    pub fn receive(&mut self, now_ms: i64) -> Result<Change, TransitionError> {
        match self.status {
            OrderStatus::Received => Ok(Change::Unchanged),
            OrderStatus::PartiallyRefunded if self.delivery.is_none() => {
                Err(self.not_allowed("confirm receipt before shipping"))
            }
            OrderStatus::Shipped | OrderStatus::PartiallyRefunded => {
                self.status = OrderStatus::Received;
                self.updated_at_ms = now_ms;
                Ok(Change::Changed)
            }
            _ => Err(self.not_allowed("confirm receipt")),
        }
    }

    /// RECEIVED → COMPLETED (meant for when the after-sale window is over; not called by
    /// any handler yet).
    pub fn complete(&mut self, now_ms: i64) -> Result<Change, TransitionError> {
        match self.status {
            OrderStatus::Completed => Ok(Change::Unchanged),
            OrderStatus::Received => {
                self.status = OrderStatus::Completed;
                self.updated_at_ms = now_ms;
                Ok(Change::Changed)
            }
            _ => Err(self.not_allowed("complete")),
        }
    }

    /// Money still refundable.
    pub fn refundable(&self) -> Fen {
        self.total.checked_sub(self.refunded).unwrap_or(Fen::ZERO)
    }

    /// What open after-sales hold ([`Order::claim_refund`]).
    pub fn claimed(&self) -> Fen {
        self.refund_claims.values().fold(Fen::ZERO, |sum, a| {
            sum.checked_add(*a).unwrap_or(self.total)
        })
    }

    /// What a new after-sale may still ask for: refundable, less what open ones hold.
    pub fn claimable(&self) -> Fen {
        self.refundable()
            .checked_sub(self.claimed())
            .unwrap_or(Fen::ZERO)
    }

    /// Holds `amount` for after-sale `id` until it is refunded or closed
    /// ([`Order::release_claim`]): refused if the order cannot be refunded or open
    /// after-sales already hold what is left. The same claim again is `Unchanged`.
    pub fn claim_refund(
        &mut self,
        id: &AfterSaleId,
        amount: Fen,
        now_ms: i64,
    ) -> Result<Change, TransitionError> {
        if self.refund_claims.get(id) == Some(&amount) {
            return Ok(Change::Unchanged);
        }
        self.check_fits(id, amount)?;
        self.refund_claims.insert(id.clone(), amount);
        self.list_aftersale(id);
        self.updated_at_ms = now_ms;
        Ok(Change::Changed)
    }

    /// What open after-sales other than `id` hold.
    pub fn claimed_by_others(&self, id: &AfterSaleId) -> Fen {
        self.refund_claims
            .iter()
            .filter(|(k, _)| *k != id)
            .fold(Fen::ZERO, |sum, (_, a)| {
                sum.checked_add(*a).unwrap_or(self.total)
            })
    }

    /// Checks that after-sale `id` may have `amount` refunded now: the order can refund it,
    /// and it fits in what is left once what the other open after-sales hold is set aside —
    /// whether or not `id` holds it already. A hold alone is not proof: a refund made outside
    /// wxshop (the merchant platform) shrinks what is left without touching the holds, which
    /// may then add up to more than is left; approving each on its own hold would ask WeChat
    /// for more than the order has left.
    pub fn check_fits(&self, id: &AfterSaleId, amount: Fen) -> Result<(), TransitionError> {
        self.check_refund(amount)?;
        let left = self
            .refundable()
            .checked_sub(self.claimed_by_others(id))
            .unwrap_or(Fen::ZERO);
        if amount > left {
            return Err(TransitionError::RefundTooLarge {
                requested: amount,
                refundable: left,
            });
        }
        Ok(())
    }

    /// Gives back what after-sale `id` held (it was refunded, cancelled or rejected).
    /// `Unchanged` if it held nothing.
    pub fn release_claim(&mut self, id: &AfterSaleId, now_ms: i64) -> Change {
        if self.refund_claims.remove(id).is_some() {
            self.updated_at_ms = now_ms;
            Change::Changed
        } else {
            Change::Unchanged
        }
    }

    /// Records the refund of after-sale `id` (`amount`): the refund, and its claim given back.
    pub fn refund_aftersale(
        &mut self,
        id: &AfterSaleId,
        amount: Fen,
        now_ms: i64,
    ) -> Result<Change, TransitionError> {
        self.refund(amount, now_ms)?;
        self.release_claim(id, now_ms);
        self.list_aftersale(id);
        Ok(Change::Changed)
    }

    /// Lists after-sale `id` in [`Order::aftersales`] (once).
    fn list_aftersale(&mut self, id: &AfterSaleId) {
        if !self.aftersales.contains(id) {
            self.aftersales.push(id.clone());
        }
    }

    /// Checks that `amount` may be refunded now (used before asking WeChat).
    pub fn check_refund(&self, amount: Fen) -> Result<(), TransitionError> {
        if !self.status.is_paid() || self.status == OrderStatus::Refunded {
            return Err(self.not_allowed("refund"));
        }
        if amount == Fen::ZERO || amount > self.refundable() {
            return Err(TransitionError::RefundTooLarge {
                requested: amount,
                refundable: self.refundable(),
            });
        }
        Ok(())
    }

    /// Records a successful refund of `amount`: REFUNDED when nothing is left, otherwise the
    /// status (the fulfilment) stays as it is. Idempotency per refund is the caller's (keyed
    /// by `out_refund_no`).
    pub fn refund(&mut self, amount: Fen, now_ms: i64) -> Result<Change, TransitionError> {
        self.check_refund(amount)?;
        self.refunded =
            self.refunded
                .checked_add(amount)
                .map_err(|_| TransitionError::RefundTooLarge {
                    requested: amount,
                    refundable: self.refundable(),
                })?;
        if self.refundable() == Fen::ZERO {
            self.status = OrderStatus::Refunded;
        }
        self.updated_at_ms = now_ms;
        Ok(Change::Changed)
    }

    /// A refund made by hand in the merchant platform (`no`, recorded with this change): refunded
    /// as [`Order::refund`], and listed in [`Order::refunds_by_hand`]. Once: `no` already listed
    /// is that refund again (a copy of its notification), counted already — unchanged, whatever
    /// is left.
    pub fn refund_by_hand(
        &mut self,
        no: &OutRefundNo,
        amount: Fen,
        now_ms: i64,
    ) -> Result<Change, TransitionError> {
        if self.refunds_by_hand.contains(no) {
            return Ok(Change::Unchanged);
        }
        self.refund(amount, now_ms)?;
        self.refunds_by_hand.push(no.clone());
        Ok(Change::Changed)
    }

    /// fund_type=1: WeChat settled the order into the shop's funds account.
    pub fn settle(&mut self, now_ms: i64) -> Result<Change, TransitionError> {
        if self.settled_at_ms.is_some() {
            return Ok(Change::Unchanged);
        }
        if !self.status.is_paid() {
            return Err(self.not_allowed("settle"));
        }
        self.settled_at_ms = Some(now_ms);
        self.updated_at_ms = now_ms;
        Ok(Change::Changed)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample_order(total: i64) -> Order {
        Order {
            out_trade_no: OutTradeNo::parse("WX20240101000000abc").unwrap(),
            openid: OpenId::parse("o_user_1").unwrap(),
            items: vec![OrderItem {
                product_id: ProductId::parse("p1").unwrap(),
                sku_id: SkuId::parse("s1").unwrap(),
                title: "Tea".into(),
                head_img: String::new(),
                unit_price: Fen::new(total).unwrap(),
                quantity: 1,
            }],
            total: Fen::new(total).unwrap(),
            freight: Fen::ZERO,
            status: OrderStatus::Created,
            fund_type: FundType::Direct,
            prepay_id: None,
            prepay_at_ms: None,
            transaction_id: None,
            paid_at_ms: None,
            wx_order_id: None,
            sent_to_wechat: SentToWechat::default(),
            ticket: None,
            scene: None,
            trace_id: None,
            delivery: None,
            shipped_at_ms: None,
            address: None,
            refunded: Fen::ZERO,
            refund_claims: BTreeMap::new(),
            refunds_by_hand: Vec::new(),
            aftersales: Vec::new(),
            settled_at_ms: None,
            close_reason: None,
            created_at_ms: 0,
            updated_at_ms: 0,
            expires_at_ms: 0,
        }
    }

    /// The order names every after-sale that held an amount on it or was refunded against
    /// it, once each, after its hold is given back too — and names none until then (an
    /// order's record reads and writes as before).
    #[test]
    fn the_order_names_its_after_sales_past_their_holds() {
        let mut o = sample_order(300);
        o.status = OrderStatus::Paid;
        assert!(!serde_json::to_string(&o).unwrap().contains("aftersales"));
        let a = AfterSaleId::generate(1);
        let b = AfterSaleId::generate(2);
        o.claim_refund(&a, Fen::new(100).unwrap(), 1).unwrap();
        o.claim_refund(&b, Fen::new(100).unwrap(), 1).unwrap();
        o.release_claim(&b, 2);
        o.refund_aftersale(&a, Fen::new(100).unwrap(), 3).unwrap();
        assert_eq!(o.aftersales, vec![a.clone(), b.clone()]);
        assert!(o.refund_claims.is_empty());
        // Refunded without a hold (imported from WeChat beyond what was left): named too.
        let c = AfterSaleId::generate(3);
        o.refund_aftersale(&c, Fen::new(50).unwrap(), 4).unwrap();
        assert_eq!(o.aftersales, vec![a, b, c]);
    }

    /// What WeChat may hold: what it was asked to create, or an id it answered with (orders
    /// stored before `sent_to_wechat` was recorded); and nothing recorded reads and writes as
    /// before.
    #[test]
    fn what_wechat_may_hold_counts_the_asked_and_the_answered() {
        let mut o = sample_order(100);
        assert!(o.at_wechat().is_nothing());
        assert!(!serde_json::to_string(&o)
            .unwrap()
            .contains("sent_to_wechat"));
        o.sent_to_wechat.pay_order = true;
        assert_eq!(
            o.at_wechat(),
            SentToWechat {
                pay_order: true,
                component_order: false
            }
        );
        let json = serde_json::to_string(&o).unwrap();
        let back: Order = serde_json::from_str(&json).unwrap();
        assert_eq!(back.sent_to_wechat, o.sent_to_wechat, "{json}");
        let mut legacy = sample_order(100);
        legacy.prepay_id = Some("p".into());
        legacy.wx_order_id = Some(7);
        assert_eq!(
            legacy.at_wechat(),
            SentToWechat {
                pay_order: true,
                component_order: true
            }
        );
        legacy.fund_type = FundType::SecondaryMerchant;
        assert!(
            !legacy.at_wechat().pay_order,
            "WeChat collects: no prepay order of ours"
        );
    }

    /// What payCallback asks before it copies an order: the same answer `pay` gives.
    #[test]
    fn payment_recorded_agrees_with_pay() {
        let mut o = sample_order(100);
        assert_eq!(o.payment_recorded("t1"), Ok(false));
        assert_eq!(o.pay("t1", 2, 2), Ok(Change::Changed));
        assert_eq!(o.payment_recorded("t1"), Ok(true));
        assert_eq!(o.pay("t1", 2, 3), Ok(Change::Unchanged));
        assert_eq!(o.payment_recorded("t2"), o.pay("t2", 2, 3).map(|_| true));
        o.transaction_id = None;
        assert!(o.payment_recorded("t1").is_err(), "paid without a payment");
    }

    #[test]
    fn happy_path_and_repeats() {
        let mut o = sample_order(100);
        assert_eq!(o.prepay("p".into(), 1), Ok(Change::Changed));
        assert_eq!(o.pay("t1", 2, 2), Ok(Change::Changed));
        assert_eq!(o.pay("t1", 2, 3), Ok(Change::Unchanged));
        assert!(matches!(
            o.pay("t2", 2, 3),
            Err(TransitionError::OtherTransaction { .. })
        ));
        assert!(o.close("x", 4).is_err());
        let d = Delivery {
            delivery_id: "SF".into(),
            waybill_id: "1".into(),
        };
        assert_eq!(o.ship(d.clone(), 5), Ok(Change::Changed));
        assert_eq!(o.shipped_at_ms, Some(5));
        assert_eq!(o.ship(d.clone(), 6), Ok(Change::Unchanged));
        assert_eq!(o.receive(6), Ok(Change::Changed));
        // The same shipment repeated after the receipt is done already; another is not.
        assert_eq!(o.ship(d.clone(), 7), Ok(Change::Unchanged));
        let other = Delivery {
            waybill_id: "2".into(),
            ..d
        };
        assert!(o.ship(other, 7).is_err(), "shipped once already");
        assert_eq!(
            (o.shipped_at_ms, o.shipped_since_ms()),
            (Some(5), 5),
            "a later change keeps when it shipped"
        );
        assert_eq!(o.refund(Fen::new(40).unwrap(), 7), Ok(Change::Changed));
        assert_eq!(
            o.status,
            OrderStatus::Received,
            "a partial refund keeps the fulfilment"
        );
        assert_eq!(o.refunded, Fen::new(40).unwrap());
        assert!(o.refund(Fen::new(61).unwrap(), 8).is_err());
        assert_eq!(o.refund(Fen::new(60).unwrap(), 8), Ok(Change::Changed));
        assert_eq!(o.status, OrderStatus::Refunded);
        assert!(o.refund(Fen::new(1).unwrap(), 9).is_err());
    }

    /// Stored orders leave out what is not set (every read and write of an order handles
    /// its JSON; DynamoDB bills by item size), and records written before, with explicit
    /// `null`s, still read as the same order.
    #[test]
    fn records_omit_unset_fields_and_old_records_still_read() {
        let mut o = sample_order(100);
        o.address = Some(Address {
            receiver_name: "Li".into(),
            detailed_address: "1 Road".into(),
            tel_number: "1".into(),
            ..Address::default()
        });
        let json = serde_json::to_string(&o).unwrap();
        assert!(!json.contains("null"), "{json}");
        assert!(
            !json.contains("prepay_id") && !json.contains("province"),
            "{json}"
        );
        let mut old: serde_json::Value = serde_json::from_str(&json).unwrap();
        for k in [
            "prepay_id",
            "transaction_id",
            "paid_at_ms",
            "wx_order_id",
            "delivery",
        ] {
            old[k] = serde_json::Value::Null;
        }
        old["address"]["city"] = serde_json::Value::Null;
        assert_eq!(serde_json::from_value::<Order>(old).unwrap(), o);
        assert_eq!(serde_json::from_str::<Order>(&json).unwrap(), o);
    }

    /// One of two items refunded before shipping: the rest still ships and its receipt is
    /// still confirmed; refunding what is left then makes the order REFUNDED.
    #[test]
    fn a_partially_refunded_order_still_ships_and_is_received() {
        let d = Delivery {
            delivery_id: "SF".into(),
            waybill_id: "1".into(),
        };
        let mut o = sample_order(100);
        o.pay("t", 1, 1).unwrap();
        assert_eq!(o.refund(Fen::new(50).unwrap(), 2), Ok(Change::Changed));
        assert_eq!(o.status, OrderStatus::Paid);
        assert_eq!(o.ship(d.clone(), 3), Ok(Change::Changed));
        assert_eq!(o.status, OrderStatus::Shipped);
        assert_eq!(o.refund(Fen::new(10).unwrap(), 4), Ok(Change::Changed));
        assert_eq!(o.status, OrderStatus::Shipped);
        assert_eq!(o.receive(5), Ok(Change::Changed));
        assert_eq!(o.status, OrderStatus::Received);
        assert_eq!(o.complete(6), Ok(Change::Changed));
        assert_eq!(o.refund(Fen::new(40).unwrap(), 7), Ok(Change::Changed));
        assert_eq!(o.status, OrderStatus::Refunded);
        assert!(o.ship(d, 8).is_err());
    }

    /// Records written when a partial refund replaced the status (PARTIALLY_REFUNDED) go on
    /// the way they would have: ship if no waybill yet, confirm receipt if there is one.
    #[test]
    fn legacy_partially_refunded_orders_ship_and_are_received() {
        let d = Delivery {
            delivery_id: "SF".into(),
            waybill_id: "1".into(),
        };
        let mut o = sample_order(100);
        o.pay("t", 1, 1).unwrap();
        o.refunded = Fen::new(30).unwrap();
        o.status = OrderStatus::PartiallyRefunded;
        assert!(o.receive(2).is_err(), "not shipped yet");
        assert_eq!(o.ship(d.clone(), 3), Ok(Change::Changed));
        assert_eq!(o.status, OrderStatus::Shipped);

        let mut shipped = sample_order(100);
        shipped.pay("t", 1, 1).unwrap();
        shipped.ship(d.clone(), 2).unwrap();
        shipped.refunded = Fen::new(30).unwrap();
        shipped.status = OrderStatus::PartiallyRefunded;
        assert_eq!(shipped.ship(d.clone(), 3), Ok(Change::Unchanged));
        let other = Delivery {
            waybill_id: "2".into(),
            ..d
        };
        assert!(shipped.ship(other, 3).is_err(), "shipped once already");
        assert_eq!(shipped.receive(4), Ok(Change::Changed));
        assert_eq!(shipped.status, OrderStatus::Received);
        assert_eq!(
            shipped.refund(Fen::new(70).unwrap(), 5),
            Ok(Change::Changed)
        );
        assert_eq!(shipped.status, OrderStatus::Refunded);
    }

    /// Open after-sales together never hold more than is refundable; a refunded or closed
    /// one gives its hold back.
    #[test]
    fn claims_never_exceed_what_is_refundable() {
        let a = AfterSaleId::parse("AS1").unwrap();
        let b = AfterSaleId::parse("AS2").unwrap();
        let fen = |n| Fen::new(n).unwrap();
        let mut o = sample_order(100);
        assert!(o.claim_refund(&a, fen(10), 1).is_err(), "unpaid");
        o.pay("t", 1, 1).unwrap();
        assert_eq!(o.claim_refund(&a, fen(100), 2), Ok(Change::Changed));
        assert_eq!(o.claim_refund(&a, fen(100), 3), Ok(Change::Unchanged));
        assert_eq!(
            o.claim_refund(&b, fen(1), 3),
            Err(TransitionError::RefundTooLarge {
                requested: fen(1),
                refundable: Fen::ZERO
            })
        );
        assert_eq!(o.claimable(), Fen::ZERO);
        // A changed amount of the same after-sale is checked against the others only.
        assert_eq!(o.claim_refund(&a, fen(60), 4), Ok(Change::Changed));
        assert_eq!(o.claim_refund(&b, fen(40), 5), Ok(Change::Changed));
        assert_eq!(o.refund_aftersale(&a, fen(60), 6), Ok(Change::Changed));
        assert_eq!((o.refunded, o.claimed()), (fen(60), fen(40)));
        assert!(o.claim_refund(&a, fen(1), 7).is_err(), "b holds the rest");
        assert_eq!(o.release_claim(&b, 8), Change::Changed);
        assert_eq!(o.release_claim(&b, 9), Change::Unchanged);
        assert_eq!(o.claimable(), fen(40));
        let json = serde_json::to_string(&o).unwrap();
        assert!(!json.contains("refund_claims"), "{json}");
    }

    /// After a refund made outside wxshop (by hand) the holds may add up to more than is
    /// left: each still holds its amount, but one fits only beside what the others hold.
    #[test]
    fn a_hold_fits_only_beside_the_others_after_a_refund_by_hand() {
        let a = AfterSaleId::parse("AS1").unwrap();
        let b = AfterSaleId::parse("AS2").unwrap();
        let fen = |n| Fen::new(n).unwrap();
        let mut o = sample_order(100);
        o.pay("t", 1, 1).unwrap();
        o.claim_refund(&a, fen(50), 2).unwrap();
        o.claim_refund(&b, fen(50), 2).unwrap();
        assert_eq!(o.check_fits(&a, fen(50)), Ok(()));
        o.refund(fen(50), 3).unwrap(); // by hand: no hold released
        assert_eq!(o.claim_refund(&a, fen(50), 4), Ok(Change::Unchanged));
        assert_eq!(
            o.check_fits(&a, fen(50)),
            Err(TransitionError::RefundTooLarge {
                requested: fen(50),
                refundable: Fen::ZERO
            })
        );
        o.release_claim(&b, 5);
        assert_eq!(o.check_fits(&a, fen(50)), Ok(()));
        assert!(o.check_fits(&a, fen(51)).is_err());
    }

    /// A waybill is corrected only on a shipped (or received) order; the status stays.
    #[test]
    fn only_a_shipped_order_has_its_waybill_corrected() {
        let d = |w: &str| Delivery {
            delivery_id: "SF".into(),
            waybill_id: w.into(),
        };
        let mut o = sample_order(100);
        o.pay("t", 1, 1).unwrap();
        assert!(o.correct_shipment(d("1"), 2).is_err(), "not shipped yet");
        o.ship(d("1"), 3).unwrap();
        assert_eq!(o.correct_shipment(d("1"), 4), Ok(Change::Unchanged));
        assert_eq!(o.correct_shipment(d("2"), 5), Ok(Change::Changed));
        assert_eq!(
            (o.status, o.delivery.clone()),
            (OrderStatus::Shipped, Some(d("2")))
        );
        // Received (the user confirmed from what we showed) while WeChat may still lack the
        // shipment: corrected, still RECEIVED. Refunded in full: nothing is owed, no change.
        o.receive(6).unwrap();
        assert_eq!(o.correct_shipment(d("3"), 7), Ok(Change::Changed));
        assert_eq!(
            (o.status, o.delivery.clone()),
            (OrderStatus::Received, Some(d("3")))
        );
        o.refund(Fen::new(100).unwrap(), 8).unwrap();
        assert!(o.correct_shipment(d("4"), 9).is_err(), "refunded in full");
    }

    #[test]
    fn unpaid_order_cannot_ship_or_refund() {
        let mut o = sample_order(100);
        assert!(o.ship(Delivery::default(), 1).is_err());
        assert!(o.refund(Fen::new(1).unwrap(), 1).is_err());
        assert_eq!(o.close("user", 1), Ok(Change::Changed));
        assert_eq!(o.close("user", 2), Ok(Change::Unchanged));
        // A payment that raced the close still wins: the money moved.
        assert_eq!(o.pay("t", 3, 3), Ok(Change::Changed));
    }

    /// A refund made by hand is refunded and listed on the order, once: the same refund again
    /// changes nothing; another beyond what is left is refused and changes nothing.
    #[test]
    fn a_refund_made_by_hand_is_listed_on_the_order() {
        let mut o = sample_order(100);
        o.pay("t", 1, 1).unwrap();
        let no = OutRefundNo::parse("50300000012024010100000000001").unwrap();
        let other = OutRefundNo::parse("50300000012024010100000000002").unwrap();
        let fen = |n| Fen::new(n).unwrap();
        assert_eq!(o.refund_by_hand(&no, fen(30), 2), Ok(Change::Changed));
        assert_eq!(
            (o.refunded, o.refunds_by_hand.clone()),
            (fen(30), vec![no.clone()])
        );
        let before = o.clone();
        assert_eq!(o.refund_by_hand(&no, fen(30), 3), Ok(Change::Unchanged));
        assert_eq!(o, before, "the same refund again is counted once");
        assert!(o.refund_by_hand(&other, fen(71), 3).is_err());
        assert_eq!(o, before);
        let json = serde_json::to_value(&o).unwrap();
        assert_eq!(json["refunds_by_hand"], serde_json::json!([no.as_str()]));
    }
}
