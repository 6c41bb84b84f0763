//! `queryOrder`: the caller's orders. For an unpaid order WeChat Pay is asked directly
//! (`pay/orderquery`), so a paid order reads paid even before its notification lands — and
//! that payment is recorded through the same path as a notification. Also: close an unpaid
//! order, and confirm receipt of a shipped one.

use super::common::{authenticate, close_and_release, own_order, record_payment, transition_order};
use crate::app::App;
use crate::domain::{FundType, Order, OrderStatus};
use crate::http::{json, parse_json, ApiError, Request, Response};
use crate::outbox::Task;
use crate::shop::order::is_cancelled;
use crate::store::repo;
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct QueryOrderRequest {
    #[serde(default)]
    out_trade_no: Option<String>,
    /// `close` an unpaid order; `confirm` receipt of a shipped one.
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    cursor: Option<String>,
}

/// An order as the mini program sees it.
#[derive(Serialize)]
pub struct OrderView<'a> {
    pub out_trade_no: &'a str,
    pub status: OrderStatus,
    /// What the user pays, in fen: the items plus `freight`.
    pub total_fee: i64,
    /// The freight part of `total_fee`, in fen (0: no freight is charged yet).
    pub freight: i64,
    pub refunded_fee: i64,
    pub items: Vec<ItemView<'a>>,
    pub created_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paid_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transaction_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<&'a crate::domain::Delivery>,
    /// When the merchant shipped it (epoch ms); absent until shipped, and on orders shipped
    /// before the time was kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shipped_at_ms: Option<i64>,
    pub fund_type: u8,
    /// fund_type=1: when WeChat settled the order into the shop's funds account.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settled_at: Option<i64>,
}

#[derive(Serialize)]
pub struct ItemView<'a> {
    pub product_id: &'a str,
    pub sku_id: &'a str,
    pub title: &'a str,
    pub unit_price: i64,
    pub quantity: u32,
}

pub fn view(o: &Order) -> OrderView<'_> {
    OrderView {
        out_trade_no: o.out_trade_no.as_str(),
        status: o.status,
        total_fee: o.total.get(),
        freight: o.freight.get(),
        refunded_fee: o.refunded.get(),
        items: o
            .items
            .iter()
            .map(|i| ItemView {
                product_id: i.product_id.as_str(),
                sku_id: i.sku_id.as_str(),
                title: &i.title,
                unit_price: i.unit_price.get(),
                quantity: i.quantity,
            })
            .collect(),
        created_at: o.created_at_ms,
        paid_at: o.paid_at_ms,
        transaction_id: o.transaction_id.as_deref(),
        delivery: o.delivery.as_ref(),
        shipped_at_ms: o.shipped_at_ms,
        fund_type: o.fund_type.code(),
        settled_at: o.settled_at_ms,
    }
}

pub async fn handle(app: &App, req: Request) -> Result<Response, ApiError> {
    let openid = authenticate(app, &req)?;
    let body: QueryOrderRequest = parse_json(&req)?;
    let Some(no) = body.out_trade_no else {
        if body.action.is_some() {
            return Err(ApiError::bad_request(
                "BAD_REQUEST",
                "`action` needs `out_trade_no`",
            ));
        }
        let limit = body.limit.unwrap_or(20).clamp(1, 100);
        let (orders, next) =
            repo::orders_of(app.store.as_ref(), &openid, limit, body.cursor.clone()).await?;
        let views: Vec<OrderView<'_>> = orders.iter().map(view).collect();
        return Ok(json(&serde_json::json!({ "orders": views, "next": next })));
    };
    let order = own_order(app, &openid, &no).await?.value;
    let order = match body.action.as_deref() {
        None => refresh_unpaid(app, order).await?,
        Some("close") => close(app, order).await?,
        Some("confirm") => confirm_receipt(app, order).await?,
        Some(other) => {
            return Err(ApiError::bad_request(
                "BAD_ACTION",
                format!("unknown action `{other}`; use close or confirm"),
            ))
        }
    };
    Ok(json(&serde_json::json!({ "order": view(&order) })))
}

/// For an unpaid order, asks WeChat what it holds ([`what_wechat_holds`]): paid → recorded,
/// cancelled or closed there → closed here (stock back). A failure to ask is not the caller's
/// problem: they get the stored state.
pub async fn refresh_unpaid(app: &App, order: Order) -> Result<Order, ApiError> {
    if order.status != OrderStatus::Prepaid {
        return Ok(order);
    }
    match what_wechat_holds(app, &order).await {
        Ok(Some(updated)) => Ok(updated),
        Ok(None) => Ok(order),
        Err(e) => {
            tracing::warn!(out_trade_no = %order.out_trade_no, error = %e, "order query failed; showing stored state");
            Ok(order)
        }
    }
}

/// The close reason of an unpaid order WeChat's trading component reads cancelled (181, 250):
/// the user cancelled it in WeChat's order centre, or WeChat did on an unpaid timeout.
pub const CANCELLED_IN_WECHAT: &str = "cancelled in WeChat";

/// The close reason of a direct order WeChat Pay reads closed (`CLOSED`) while ours was still
/// to pay ([`ask_wechat_if_paid`]).
pub const CLOSED_AT_WECHAT_PAY: &str = "closed at WeChat Pay";

/// What WeChat holds for an unpaid (PREPAID) order — the one decision of the three that read
/// it: `queryOrder`'s poll ([`refresh_unpaid`]), the schedule's unpaid sweep and a repeated
/// `unifiedOrder` key (both through
/// [`settle_unpaid`](super::order_sync::settle_unpaid)). `Some(order)` when the stored order
/// changed:
///
/// - paid → the payment recorded, as a notification records it ([`ask_wechat_if_paid`]);
/// - a fund_type=1 order's component order cancelled, or a direct order's WeChat Pay order
///   `CLOSED` → closed here, stock back (the same);
/// - a direct (fund_type 0) order WeChat Pay reads unpaid whose trading-component order WeChat
///   holds (its `wx_order_id` stored) and reads cancelled ([`is_cancelled`]: the user cancelled
///   it in WeChat's order centre, the `open_product_order_cancel` push lost — WeChat does not
///   promise pushes) → closed here with [`CANCELLED_IN_WECHAT`], stock back, its WeChat Pay
///   order (still open: the cancel leaves it payable) closed by the close task
///   (`pay/closeorder`). Left open, ours read "to pay" and held its stock, and the user could
///   still pay it at WeChat Pay's cashier — a payment whose component sync WeChat refuses,
///   money for a person to refund. The component order is read (`shop/order/get`) only then:
///   one read when WeChat Pay reads the order unpaid, none otherwise, none without a
///   `wx_order_id`. That read failing is taken as "not cancelled" (logged): the payment
///   question is answered already, and the next poll or sweep asks again;
/// - else `None`: unpaid, nothing changed.
///
/// `Err` only when WeChat did not say whether the order was paid, or answered something
/// contradicting it ([`ask_wechat_if_paid`]): nothing may be decided then.
///
/// [`is_cancelled`]: crate::shop::order::is_cancelled
pub async fn what_wechat_holds(app: &App, order: &Order) -> Result<Option<Order>, ApiError> {
    if let Some(changed) = ask_wechat_if_paid(app, order).await? {
        return Ok(Some(changed));
    }
    // Not paid, and (a direct order) WeChat Pay's order still open: `ask_wechat_if_paid`
    // answers `None` for a direct order only when `orderquery` reads it unpaid.
    if order.fund_type != FundType::Direct || order.wx_order_id.is_none() {
        return Ok(None);
    }
    match super::shop_orders::component_cancelled(app, order).await {
        Ok(true) => {
            let closed = close_and_release(app, &order.out_trade_no, CANCELLED_IN_WECHAT).await?;
            tracing::info!(out_trade_no = %order.out_trade_no, status = closed.status.as_str(), "a direct order's component order reads cancelled at WeChat (its push not applied): ours closed, its stock given back, its WeChat Pay order closed by the close task");
            Ok(Some(closed))
        }
        Ok(false) => Ok(None),
        Err(e) => {
            tracing::warn!(out_trade_no = %order.out_trade_no, error = %e, "WeChat's component order not read; taken as not cancelled");
            Ok(None)
        }
    }
}

/// Asks WeChat whether an unpaid order was paid and records the payment if so: WeChat Pay's
/// `orderquery`, or for fund_type=1 (WeChat collects) the component's `shop/order/get`, since
/// a notification or push may be late or lost. `Some(order)` when the stored order changed.
/// An answer that contradicts our order is an error (logged as a security event): nothing may
/// be decided on it — the sweep, for one, must not close the order.
///
/// A fund_type=1 order WeChat reads cancelled (181, 250: the user cancelled it in WeChat's
/// order centre, or WeChat on an unpaid timeout) is closed here, its stock given back
/// (`Some`, CLOSED), as the `open_product_order_cancel` push closes it — that push may never
/// come (WeChat does not guarantee pushes). Its component order is the payment, so a
/// cancelled one can never be paid: left open, it read PREPAID ("to pay") to the user and
/// held its stock until its own expiry, every read and sweep taking the cancel only as "not
/// paid". The close's outbox task closes nothing more at WeChat (cancelled already) and
/// still records a payment WeChat reports instead, as after any close.
///
/// A direct (fund_type 0) order whose WeChat Pay order reads `CLOSED` (or `REVOKED`) — final
/// there (WECHAT_PAY_V2.md §2.3): it can no longer be paid, and a `pay/unifiedorder` under its
/// number is refused `ORDERCLOSED` — is closed here too, its stock given back (`Some`,
/// CLOSED): left PREPAID it held its stock to its expiry and a repeated key handed out payment
/// parameters the cashier refuses. Reason [`CLOSED_AT_WECHAT_PAY`] (or
/// [`EXPIRED_UNPAID`](super::order_sync::EXPIRED_UNPAID) once past its expiry, as the sweep
/// would have closed it).
///
/// A direct order's component order is not read here: the callers that close the order
/// anyway (the user's close, the cancel push, the sweep past its expiry) need only the payment
/// answer; [`what_wechat_holds`] reads it for the rest.
pub async fn ask_wechat_if_paid(app: &App, order: &Order) -> Result<Option<Order>, ApiError> {
    match order.fund_type {
        FundType::Direct => {
            use super::pay_orders::{query_payment, PayQuery};
            match query_payment(app, order).await? {
                PayQuery::Recorded(paid) => Ok(Some(*paid)),
                PayQuery::Unpaid => Ok(None),
                PayQuery::Closed => {
                    let reason = if order.expires_at_ms <= app.clock.now_ms() {
                        super::order_sync::EXPIRED_UNPAID
                    } else {
                        CLOSED_AT_WECHAT_PAY
                    };
                    let closed = close_and_release(app, &order.out_trade_no, reason).await?;
                    tracing::info!(out_trade_no = %order.out_trade_no, status = closed.status.as_str(), "WeChat Pay reads the order closed: ours closed, its stock given back");
                    Ok(Some(closed))
                }
            }
        }
        // The stored id stands for "WeChat holds it" here: a fund_type=1 order is PREPAID
        // (the only status asked about) only once `shop/order/add` answered, its id stored in
        // the same write. One whose answer was lost stays CREATED; its close
        // (`shop/order/close` by our number) finds a payment made meanwhile, and a resumed
        // key reads it by our number (`shop_orders::read_back_lost_add`).
        FundType::SecondaryMerchant if order.wx_order_id.is_some() => {
            use super::shop_orders::{query_component_payment, ComponentPayment};
            match query_component_payment(app, order, None).await? {
                ComponentPayment::Recorded(o) => Ok(Some(*o)),
                ComponentPayment::Unpaid { status } if is_cancelled(status) => {
                    let closed =
                        close_and_release(app, &order.out_trade_no, CANCELLED_IN_WECHAT).await?;
                    tracing::info!(out_trade_no = %order.out_trade_no, status = closed.status.as_str(), "WeChat's order reads cancelled (its push not applied): ours closed, its stock given back");
                    Ok(Some(closed))
                }
                ComponentPayment::Unpaid { .. } => Ok(None),
                ComponentPayment::Refused(why) => {
                    tracing::warn!(security = true, out_trade_no = %order.out_trade_no, why, "WeChat's order contradicts ours; not recorded");
                    Err(ApiError::conflict("WECHAT_ORDER_MISMATCH", why))
                }
            }
        }
        FundType::SecondaryMerchant => Ok(None),
    }
}

async fn close(app: &App, order: Order) -> Result<Order, ApiError> {
    if order.status.is_paid() {
        return Err(ApiError::conflict(
            "ORDER_PAID",
            "the order is paid; ask for a refund instead",
        ));
    }
    // Paid at the last second? Then it is paid, not closed. One WeChat could not say about is
    // not closed at all, as the schedule's sweep does not close it (`settle_unpaid`): closed on
    // what we hold, a payment made meanwhile would still be recorded (`pay/closeorder` answers
    // ORDERPAID) — but the client may already have made and paid a new order in its place (the
    // mini program's `buy` closes the order a reused key holds, then orders afresh), and the
    // user would have paid twice.
    let order = if order.status == OrderStatus::Prepaid {
        match ask_wechat_if_paid(app, &order).await {
            Ok(updated) => updated.unwrap_or(order),
            Err(e) => {
                tracing::warn!(out_trade_no = %order.out_trade_no, error = %e, "close: WeChat did not say whether the order was paid; not closed");
                return Err(super::order_sync::status_unknown(
                    e,
                    format!(
                        "WeChat Pay could not say whether order {} was paid, so it was not \
                         closed (it may have been paid); retry shortly",
                        order.out_trade_no
                    ),
                ));
            }
        }
    } else {
        order
    };
    if order.status.is_paid() {
        return Err(ApiError::conflict(
            "ORDER_PAID",
            "the order was just paid; ask for a refund instead",
        ));
    }
    close_and_release(app, &order.out_trade_no, "closed by user").await
}

async fn confirm_receipt(app: &App, order: Order) -> Result<Order, ApiError> {
    transition_order(
        app,
        &order.out_trade_no,
        |o, now| o.receive(now).map_err(|e| receipt_refused(o, e)),
        |o| {
            o.at_wechat()
                .component_order
                .then(|| Task::DeliveryRecieve {
                    out_trade_no: o.out_trade_no.clone(),
                })
        },
    )
    .await
}

/// Why the user's `confirm` of `order` is refused (`e`, from [`Order::receive`]): an order
/// refunded in full — shipped or not — is 409 `ORDER_REFUNDED`, saying so; anything else not
/// shipped is 409 `ORDER_NOT_SHIPPED`.
fn receipt_refused(order: &Order, e: crate::domain::TransitionError) -> ApiError {
    if order.status == OrderStatus::Refunded {
        return ApiError::conflict(
            "ORDER_REFUNDED",
            format!(
                "{e}: the order was refunded in full ({} fen went back to the user), so there \
                 is no receipt to confirm",
                order.refunded.get()
            ),
        );
    }
    let what_to_do = match order.status {
        OrderStatus::Created | OrderStatus::Prepaid => "it is not paid yet; pay it first",
        OrderStatus::Closed => "it was closed unpaid, so nothing will be shipped",
        OrderStatus::Completed => "it is complete; there is nothing left to confirm",
        _ => "confirm receipt once the merchant has shipped it",
    };
    ApiError::conflict(
        "ORDER_NOT_SHIPPED",
        format!(
            "order {} is {}, not shipped, so its receipt cannot be confirmed: {what_to_do}",
            order.out_trade_no,
            order.status.as_str()
        ),
    )
}

/// Records a confirmed payment, mapping its failure for HTTP callers.
pub async fn record(
    app: &App,
    order: &Order,
    transaction_id: &str,
    total: crate::domain::Fen,
    paid_at_ms: i64,
) -> Result<Order, ApiError> {
    use super::common::PaymentOutcome;
    match record_payment(app, &order.out_trade_no, transaction_id, total, paid_at_ms).await? {
        PaymentOutcome::Recorded(o) | PaymentOutcome::AlreadyRecorded(o) => Ok(o),
    }
}
