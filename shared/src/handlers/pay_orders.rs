//! Our orders in WeChat Pay's terms: the one place that maps `Order` to `pay/unifiedorder`,
//! `pay/orderquery`, `pay/closeorder` and `secapi/pay/refund` (the daily bills are
//! [`super::reconcile`]'s), and maps
//! `PayError` to what callers do next (retry later, or stop).

use super::order_sync::TaskError;
use crate::app::App;
use crate::domain::{Fen, Order, OutRefundNo};
use crate::http::ApiError;
use crate::pay::client::{
    truncate_bytes, OrderRef, PayError, RefundRequest, UnifiedOrderRequest, MAX_BODY_BYTES,
    MAX_REFUND_DESC_BYTES,
};
use crate::pay::types::TradeState;

fn task_error(e: PayError) -> TaskError {
    if e.is_retryable() {
        TaskError::Retry(e.to_string())
    } else {
        TaskError::Permanent(e.to_string())
    }
}

/// For `secapi/pay/refund`: a reply we cannot read or believe (bad signature, not decodable,
/// for another merchant, SUCCESS without `refund_id`) comes after WeChat may have accepted
/// the refund, so its outcome is unknown, never a refusal. Asking again under the same
/// `out_refund_no` is safe (WeChat answers with the refund it already has) and tells us.
/// WeChat Pay takes one refund of an order a minute (WECHAT_PAY_V2.md §2.5).
const REFUND_INTERVAL_MS: i64 = 60_000;

fn refund_task_error(e: PayError) -> TaskError {
    if e.err_code() == Some("FREQUENCY_LIMITED") {
        return TaskError::RetryAfter(
            format!("{e}; asking again in a minute under the same out_refund_no"),
            REFUND_INTERVAL_MS,
        );
    }
    match e {
        PayError::BadSignature
        | PayError::Decode(_)
        | PayError::Field(_)
        | PayError::WrongMerchant(_) => TaskError::Retry(format!(
            "refund outcome unknown ({e}); asking again under the same out_refund_no"
        )),
        e => task_error(e),
    }
}

fn api_error(e: PayError) -> ApiError {
    if e.is_retryable() {
        ApiError::unavailable(
            "PAYMENT_UNAVAILABLE",
            format!("WeChat Pay is unavailable ({e}); retry shortly"),
        )
    } else {
        ApiError::new(
            http::StatusCode::BAD_GATEWAY,
            "PAYMENT_REFUSED",
            format!("WeChat Pay refused the order: {e}"),
        )
    }
}

/// `<shop>-<goods>` within [`MAX_BODY_BYTES`]: WeChat counts UTF-8 bytes, so a long Chinese
/// title is cut (on a character boundary), keeping the "+N" of a multi-item order.
fn body_text(order: &Order) -> String {
    const SHOP: &str = "wxshop-";
    let first = order
        .items
        .first()
        .map(|i| i.title.as_str())
        .unwrap_or("order");
    let more = if order.items.len() > 1 {
        format!(" +{}", order.items.len() - 1)
    } else {
        String::new()
    };
    let room = MAX_BODY_BYTES.saturating_sub(SHOP.len() + more.len());
    format!("{SHOP}{}{more}", truncate_bytes(first, room))
}

/// What `pay/unifiedorder` answered for an order.
#[derive(Debug)]
pub enum Prepay {
    /// WeChat Pay holds the order to pay: its prepay id (asked again with the same
    /// `out_trade_no` and parameters, the same prepay order's).
    Opened(String),
    /// `ORDERPAID`: WeChat Pay holds the order paid already (WECHAT_PAY_V2.md §5: mark it paid
    /// once `orderquery` confirms). Nothing to open — and the order must not be closed as a
    /// failed prepay.
    Paid,
}

/// `pay/unifiedorder` → prepay_id, or [`Prepay::Paid`].
pub async fn unified_order(app: &App, order: &Order, ip: &str) -> Result<Prepay, ApiError> {
    let req = UnifiedOrderRequest {
        body: body_text(order),
        out_trade_no: order.out_trade_no.clone(),
        total_fee: order.total,
        spbill_create_ip: ip.to_owned(),
        notify_url: app.config.notify_url.clone(),
        openid: order.openid.clone(),
        time_start: Some(order.created_at_ms),
        time_expire: Some(order.expires_at_ms),
        attach: None,
        detail: None,
    };
    match app.pay.unified_order(&req).await {
        Ok(r) => Ok(Prepay::Opened(r.prepay_id)),
        Err(e) if e.err_code() == Some("ORDERPAID") => Ok(Prepay::Paid),
        Err(e) => Err(api_error(e)),
    }
}

/// Asks WeChat Pay about an unpaid order; records the payment if it was paid (after checking
/// the amount). `Some(order)` when the stored order changed.
pub async fn query_and_record(app: &App, order: &Order) -> Result<Option<Order>, ApiError> {
    Ok(match query_payment(app, order).await? {
        PayQuery::Recorded(paid) => Some(*paid),
        PayQuery::Closed | PayQuery::Unpaid => None,
    })
}

/// What WeChat Pay's `orderquery` says of an order we hold unpaid ([`query_payment`]).
#[derive(Debug)]
pub enum PayQuery {
    /// Paid (`SUCCESS`, or `REFUND`: paid, then refunded): the payment recorded (now or
    /// before); the order as recorded.
    Recorded(Box<Order>),
    /// `CLOSED` (or `REVOKED`): final at WeChat Pay (WECHAT_PAY_V2.md §2.3) — the order can
    /// no longer be paid, nothing was.
    Closed,
    /// Not paid yet (`NOTPAY`, or a state nothing is decided on).
    Unpaid,
}

/// [`query_and_record`], telling an order WeChat Pay holds closed (it can no longer be paid)
/// from one still to pay.
pub async fn query_payment(app: &App, order: &Order) -> Result<PayQuery, ApiError> {
    let resp = app
        .pay
        .order_query(OrderRef::OutTradeNo(order.out_trade_no.clone()))
        .await
        .map_err(api_error)?;
    if matches!(resp.trade_state, TradeState::Closed | TradeState::Revoked) {
        return Ok(PayQuery::Closed);
    }
    if resp.trade_state != TradeState::Success && resp.trade_state != TradeState::Refund {
        return Ok(PayQuery::Unpaid);
    }
    let (Some(txid), Some(total)) = (resp.transaction_id.as_deref(), resp.total_fee) else {
        return Err(ApiError::unavailable(
            "WECHAT_BAD_REPLY",
            "paid order query without transaction_id or total_fee",
        ));
    };
    // The same checks as a payment notification's (pay_callback): our orders are priced in
    // fen of CNY (`fee_type` may be left out, meaning CNY), the payer cannot have paid more
    // than the total, and the answer is about the order we asked for. A signed answer that
    // fails them is kept as evidence for a person — money may have moved — and nothing is
    // recorded; callers decide nothing on it (the sweep does not close the order).
    let fee_type = resp.fields.get("fee_type").map(String::as_str);
    let why = if resp
        .out_trade_no
        .as_deref()
        .is_some_and(|n| n != order.out_trade_no.as_str())
    {
        Some("orderquery answered about another out_trade_no")
    } else {
        crate::pay::types::paid_amounts_problem(fee_type, resp.cash_fee, total)
    };
    if let Some(why) = why {
        tracing::warn!(security = true, out_trade_no = %order.out_trade_no, transaction_id = txid, fee_type, why, "orderquery answer does not match the order; not recorded");
        let evidence = crate::pay::xml::encode(&resp.fields);
        super::common::keep_evidence(app, "payment_mismatch", txid, evidence).await?;
        return Err(ApiError::conflict("WECHAT_ORDER_MISMATCH", why));
    }
    let paid_at = resp.time_end_ms.unwrap_or_else(|| app.clock.now_ms());
    super::query_order::record(app, order, txid, total, paid_at)
        .await
        .map(|paid| PayQuery::Recorded(Box::new(paid)))
}

/// `pay/closeorder`; ORDERPAID means the user paid meanwhile, which is then recorded.
/// ORDERNOTEXIST: WeChat Pay never made it (its `unifiedorder` never arrived), or not yet.
pub async fn close(app: &App, order: &Order) -> Result<(), TaskError> {
    match app.pay.close_order(&order.out_trade_no).await {
        Ok(_) => Ok(()),
        Err(e) if e.err_code() == Some("ORDERCLOSED") => Ok(()),
        Err(e) if e.err_code() == Some("ORDERNOTEXIST") => super::order_sync::absent_at_wechat(
            app,
            order,
            order.prepay_id.is_some(),
            "WeChat Pay order",
        ),
        Err(e) if e.err_code() == Some("ORDERPAID") => {
            tracing::warn!(out_trade_no = %order.out_trade_no, "closed order was paid meanwhile; recording the payment");
            query_and_record(app, order)
                .await
                .map(|_| ())
                .map_err(TaskError::from)
        }
        Err(e) => Err(task_error(e)),
    }
}

/// `secapi/pay/refund` with a fixed `out_refund_no` (retries ask for the same refund).
pub async fn refund(
    app: &App,
    order: &Order,
    out_refund_no: &OutRefundNo,
    amount: Fen,
    reason: &str,
) -> Result<(), TaskError> {
    let req = RefundRequest {
        out_trade_no: order.out_trade_no.clone(),
        out_refund_no: out_refund_no.clone(),
        total_fee: order.total,
        refund_fee: amount,
        refund_desc: Some(truncate_bytes(reason, MAX_REFUND_DESC_BYTES).to_owned()),
        notify_url: Some(app.config.refund_notify_url.clone()),
    };
    app.pay
        .refund(&req)
        .await
        .map(|_| ())
        .map_err(refund_task_error)
}
