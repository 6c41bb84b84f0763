//! What several functions share: who the caller is, and the one way a payment is recorded
//! (notification, order query and the reconciliation sweep all end here, so a payment is
//! applied exactly once whichever path sees it first).

use crate::app::App;
use crate::config::TradingComponent;
use crate::domain::{Change, Fen, FundType, OpenId, Order, OutTradeNo, TransitionError};
use crate::http::{bearer, ApiError, Request};
use crate::outbox::{OutboxEntry, Task};
use crate::store::repo::{self, Batch, Versioned};
use crate::store::StoreError;

/// How many times a read-modify-write is retried when another writer got there first.
pub const MAX_CONFLICT_RETRIES: usize = 8;

/// The caller's openid, from the verified session token only — never from the body.
pub fn authenticate(app: &App, req: &Request) -> Result<OpenId, ApiError> {
    let token = bearer(req).ok_or_else(|| {
        ApiError::unauthenticated(
            "missing session token: call login first and send Authorization: Bearer <token>",
        )
    })?;
    app.sessions
        .verify(token, app.clock.now_secs())
        .map(|s| s.openid)
        .map_err(|e| {
            ApiError::unauthenticated(format!("session token refused ({e}); log in again"))
        })
}

/// Loads an order the caller owns. Someone else's order reads as absent (no existence leak).
pub async fn own_order(app: &App, openid: &OpenId, no: &str) -> Result<Versioned<Order>, ApiError> {
    let no = OutTradeNo::parse(no)
        .map_err(|e| ApiError::bad_request("BAD_OUT_TRADE_NO", e.to_string()))?;
    match repo::get_order(app.store.as_ref(), &no).await? {
        Some(o) if &o.value.openid == openid => Ok(o),
        _ => Err(ApiError::not_found(
            "ORDER_NOT_FOUND",
            format!("no order {no} for this user"),
        )),
    }
}

/// Whether orders of this shop are mirrored in the trading component.
pub fn component_on(app: &App) -> bool {
    app.config.trading_component != TradingComponent::Off
}

/// What a confirmed payment did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentOutcome {
    /// PREPAID → PAID now.
    Recorded(Order),
    /// It had already been recorded (a duplicate or a replay).
    AlreadyRecorded(Order),
}

#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    #[error("no order {0}")]
    UnknownOrder(OutTradeNo),
    #[error("amount {got} fen does not match the order's {expected} fen")]
    AmountMismatch { expected: Fen, got: Fen },
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Records a payment WeChat confirmed: amount checked against the stored order, transition
/// and the `shop/order/pay` outbox entry in one conditional write. Safe to call any number of
/// times, concurrently, from any path.
pub async fn record_payment(
    app: &App,
    no: &OutTradeNo,
    transaction_id: &str,
    total_fee: Fen,
    paid_at_ms: i64,
) -> Result<PaymentOutcome, PaymentError> {
    for _ in 0..MAX_CONFLICT_RETRIES {
        let current = repo::get_order(app.store.as_ref(), no)
            .await?
            .ok_or_else(|| PaymentError::UnknownOrder(no.clone()))?;
        if current.value.total != total_fee {
            return Err(PaymentError::AmountMismatch {
                expected: current.value.total,
                got: total_fee,
            });
        }
        let now = app.clock.now_ms();
        let mut next = current.value.clone();
        match next.pay(transaction_id, paid_at_ms, now)? {
            Change::Unchanged => return Ok(PaymentOutcome::AlreadyRecorded(next)),
            Change::Changed => {}
        }
        let mut batch = Batch::new();
        batch.update_order(&current, &next);
        if component_on(app) && next.fund_type == FundType::Direct {
            batch.enqueue(OutboxEntry::new(
                Task::OrderPay {
                    out_trade_no: no.clone(),
                },
                now,
            ));
        }
        match batch.commit(app.store.as_ref()).await {
            Ok(()) => {
                tracing::info!(out_trade_no = %no, transaction_id, total_fee = total_fee.get(), "payment recorded");
                return Ok(PaymentOutcome::Recorded(next));
            }
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(PaymentError::Store(StoreError::Backend(
        "order kept changing; retry".into(),
    )))
}

/// Closes an unpaid order and puts its stock back, atomically. Returns the closed order, or
/// the order unchanged if it was not open (e.g. paid meanwhile).
pub async fn close_and_release(
    app: &App,
    no: &OutTradeNo,
    reason: &str,
) -> Result<Order, ApiError> {
    for _ in 0..MAX_CONFLICT_RETRIES {
        let current = repo::get_order(app.store.as_ref(), no)
            .await?
            .ok_or_else(|| ApiError::not_found("ORDER_NOT_FOUND", format!("no order {no}")))?;
        if !current.value.status.is_unpaid_open() {
            return Ok(current.value);
        }
        let now = app.clock.now_ms();
        let mut next = current.value.clone();
        next.close(reason, now)
            .map_err(|e| ApiError::conflict("ORDER_NOT_OPEN", e.to_string()))?;
        let mut batch = Batch::new();
        batch.update_order(&current, &next);
        // Stock goes back to each product (one update per product, conditional on version).
        let mut products: Vec<Versioned<crate::domain::Product>> = Vec::new();
        for item in &next.items {
            if !products
                .iter()
                .any(|p| p.value.product_id == item.product_id)
            {
                if let Some(p) = repo::get_product(app.store.as_ref(), &item.product_id).await? {
                    products.push(p);
                }
            }
        }
        for p in &products {
            let mut np = p.value.clone();
            let pid = np.product_id.clone();
            for item in next.items.iter().filter(|i| i.product_id == pid) {
                np.release(&item.sku_id, item.quantity);
            }
            batch.update_product(p, &np);
        }
        // Tell WeChat Pay (and the trading component) the order is closed, later and with
        // retries; if the user paid meanwhile, that task finds out and records the payment.
        if next.prepay_id.is_some() || next.wx_order_id.is_some() {
            batch.enqueue(OutboxEntry::new(
                Task::OrderClose {
                    out_trade_no: no.clone(),
                },
                now,
            ));
        }
        match batch.commit(app.store.as_ref()).await {
            Ok(()) => {
                tracing::info!(out_trade_no = %no, reason, "order closed, stock released");
                return Ok(next);
            }
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::unavailable("BUSY", "order kept changing; retry"))
}

impl From<PaymentError> for ApiError {
    fn from(e: PaymentError) -> Self {
        match e {
            PaymentError::Store(s) => s.into(),
            PaymentError::UnknownOrder(_) => ApiError::not_found("ORDER_NOT_FOUND", e.to_string()),
            other => ApiError::conflict("PAYMENT_MISMATCH", other.to_string()),
        }
    }
}
