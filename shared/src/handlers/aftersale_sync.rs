//! `aftersaleSync`: after-sales from both sides. The user (`/fn/aftersaleSync`) applies for a
//! refund (or return and refund), says which parcel the goods went back in, cancels, lists;
//! the merchant (`/admin/aftersaleSync`) approves or rejects — or refunds a paid order on its
//! own (`refund`: an after-sale it opens, approved at once, [`merchant_refund`] — the freight
//! left on an order refunded line by line, a goodwill refund, or a line's refund: claimed as
//! the user's application of it would be, mirrored to the trading component as an approved
//! one, its units back on sale once refunded if the merchant says `restock`). Approving a refund fixes an
//! `out_refund_no` once and queues `secapi/pay/refund`, so every retry asks WeChat for the
//! same refund; the refund notification (`payCallback`) completes it. A secondary-merchant
//! order (`fund_type` 1) is refunded by WeChat, which holds its money: approving it accepts
//! the after-sale there (`ecaftersale/acceptrefund`), and WeChat's report of the refund (the
//! `aftersale_refund_success` event, or the after-sale read back) completes it. A return and refund is
//! approved twice: first the return (with the address the goods go to), then — once the user
//! sent them back — the refund. With the trading component on, each state is mirrored to
//! `shop/ecaftersale/*` through the outbox, and WeChat's copy — read back, never a push body
//! alone — has its say about money: nothing is accepted there on terms the user has since
//! edited, no refund is paid for an after-sale WeChat shows cancelled or closed, a refund
//! WeChat made on its own is recorded, and our own after-sale is never imported back. What
//! the user does in WeChat's order centre arrives as pushes; one lost for good is made up by
//! the schedule reading open after-sales back ([`sweep_wechat_refunds`]) through the same code
//! — an approved refund of a secondary-merchant order too, once its sync task (which reads it
//! back while it lives) has stopped.
//!
//! An order whose `shop/order/add` answer was lost is in the trading component all the same
//! (`Order::at_wechat`): its after-sales are read back and checked before a refund like any
//! other's (WeChat's after-sale is read by its own id or ours, not the order's), and the
//! calls that name the order — the sync, a secondary-merchant approval — learn its id by our
//! number first (`shop_orders::component_id`).
//!
//! An order paid here whose component order WeChat cancelled (a payment after the close:
//! `audit_callback::cancelled_while_paid`, an `order_event_mismatch` event paged once) has no
//! order at WeChat to take its after-sales (`ecaftersale/add` refused, 100000): they are not
//! mirrored, and their syncs end without a dead letter ([`not_at_wechat`]) — the refund of an
//! order whose money we hold goes through WeChat Pay as any other.

use super::common::{authenticate, own_order, with_retries, Attempt};
use super::order_sync::TaskError;
use crate::app::App;
use crate::domain::{
    Address, AfterSale, AfterSaleId, AfterSaleKind, AfterSaleLine, AfterSaleOrigin,
    AfterSaleStatus, Change, Fen, FundType, GoodsReturn, LineAsked, LineError, OutTradeNo,
    ProductId, ReturnWaybill, SkuId,
};
use crate::http::{json, parse_json, ApiError, Request, Response};
use crate::outbox::{OutboxEntry, Task};
use crate::store::repo::{self, Batch, RefundOrigin, RefundRecord, RefundStatus};
use crate::store::rotation::Next;
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
enum UserAction {
    Apply {
        out_trade_no: String,
        /// Fen; defaults to everything still refundable.
        #[serde(default)]
        amount: Option<i64>,
        #[serde(default)]
        reason: String,
        /// `refund` (default) or `return`.
        #[serde(default, rename = "type")]
        kind: Option<String>,
        /// The product line (one of the order's items, by our catalog ids) and how many of
        /// it; required on an order with several items in the trading component.
        #[serde(default)]
        product_id: Option<String>,
        #[serde(default)]
        sku_id: Option<String>,
        /// Default: all of the line that no live after-sale claims yet.
        #[serde(default)]
        quantity: Option<i64>,
        /// One application, however often it is sent (a double tap, a retry after a lost
        /// answer): the same key on the same order answers with the same after-sale.
        #[serde(default)]
        idempotency_key: Option<String>,
    },
    Cancel {
        aftersale_id: String,
    },
    /// Return and refund: the goods went back in this parcel.
    Return {
        aftersale_id: String,
        /// The express company's id in WeChat's list (`shop/delivery/get_company_list`).
        delivery_id: String,
        delivery_name: String,
        waybill_id: String,
    },
    List {
        out_trade_no: String,
    },
}

#[derive(Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
enum AdminAction {
    Approve {
        aftersale_id: String,
        /// Return and refund: where the goods go (default `WX_RETURN_ADDRESS`).
        #[serde(default)]
        return_address: Option<Address>,
        /// The merchant looked at the refunds of the order made by hand in the merchant
        /// platform since this after-sale was applied for, and none of them paid it: approve
        /// (and refund) it all the same. Without it such an approval is refused
        /// (`REFUNDED_BY_HAND`), since it could pay the user twice.
        #[serde(default)]
        confirm_not_refunded_by_hand: bool,
    },
    Reject {
        aftersale_id: String,
        #[serde(default)]
        reason: String,
    },
    /// An abnormal refund (REFUND_ABNORMAL: WeChat Pay's `CHANGE`) a person redirected in the
    /// merchant platform, or paid back another way: REFUNDED. With `out_refund_no`: the refund
    /// made by hand in the merchant platform (recorded `BY_HAND`) that paid this open
    /// after-sale — REFUNDED without a refund of ours, the order's books unchanged.
    MarkRefunded {
        aftersale_id: String,
        #[serde(default)]
        out_refund_no: Option<String>,
    },
    /// The merchant's own refund of a paid order (the freight left over, goodwill, a refund
    /// the user asked for by phone): an after-sale opened by the merchant and approved at once
    /// ([`merchant_refund`]). Its body is read strictly: a field it does not take (a typo of
    /// `product_id`, say) is refused rather than ignored, since ignoring it would refund the
    /// default amount — all that is left.
    Refund(RefundBody),
    List {
        out_trade_no: String,
    },
}

/// The body of the merchant's `refund` (beside `action`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefundBody {
    out_trade_no: String,
    /// Fen; defaults to all the order (or the line named) can still refund less what open
    /// after-sales hold.
    #[serde(default)]
    amount: Option<i64>,
    /// 1–200 characters; WeChat Pay's `refund_desc` gets its first 80 bytes.
    reason: String,
    /// 1–128 characters: the same key on the same order is the same refund.
    idempotency_key: String,
    /// The line refunded (one of the order's items, by our catalog ids), as the user's
    /// `apply` takes it: both or neither.
    #[serde(default)]
    product_id: Option<String>,
    #[serde(default)]
    sku_id: Option<String>,
    /// Default: all of the line that no live after-sale claims yet.
    #[serde(default)]
    quantity: Option<i64>,
    /// With a line: its goods are back in the warehouse, so its units go back on sale once
    /// the refund succeeded, shipped or not. Default: only units never shipped come back.
    #[serde(default)]
    restock: bool,
}

/// The merchant's `refund`, as far as it is read without the order.
struct MerchantRefund<'a> {
    /// Fen, when given.
    amount: Option<i64>,
    reason: &'a str,
    key: &'a str,
    /// The line refunded; none: money only, about no line.
    line: Option<LineAsked>,
    /// The line's units back on sale once refunded.
    restock: bool,
}

#[derive(Serialize)]
struct AfterSaleView<'a> {
    aftersale_id: &'a str,
    out_trade_no: &'a str,
    status: AfterSaleStatus,
    kind: AfterSaleKind,
    /// `USER`, or `MERCHANT` for the merchant's own refund.
    by: AfterSaleOrigin,
    amount: i64,
    reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    out_refund_no: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refund_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reject_reason: Option<&'a str>,
    /// Return and refund: where to send the goods, and the parcel once sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    goods_return: Option<&'a GoodsReturn>,
    /// The product line (`product_id`, `sku_id`, `quantity`), when known.
    #[serde(flatten)]
    line: Option<&'a AfterSaleLine>,
    /// A merchant's refund of a line whose units go back on sale once refunded.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    restock: bool,
}

fn view(a: &AfterSale) -> AfterSaleView<'_> {
    AfterSaleView {
        aftersale_id: a.id.as_str(),
        out_trade_no: a.out_trade_no.as_str(),
        status: a.status,
        kind: a.kind,
        by: a.by,
        amount: a.amount.get(),
        reason: &a.reason,
        out_refund_no: a.out_refund_no.as_ref().map(|n| n.as_str()),
        refund_id: a.refund_id.as_deref(),
        reject_reason: a.reject_reason.as_deref(),
        goods_return: a.goods_return.as_ref(),
        line: a.line.as_ref(),
        restock: a.restock,
    }
}

fn parse_id(id: &str) -> Result<AfterSaleId, ApiError> {
    AfterSaleId::parse(id).map_err(|e| ApiError::bad_request("BAD_AFTERSALE_ID", e.to_string()))
}

pub async fn handle(app: &App, req: Request) -> Result<Response, ApiError> {
    // Boxed: the actions' futures nest deep (retries around decisions around WeChat calls),
    // and unboxed their layout overflowed the compiler's query depth in the functions that
    // await this one (a cold build of `aftersale-sync`'s main failed: "queries overflow the
    // depth limit"). A box each way cuts the nesting for every caller.
    if req.uri().path().starts_with("/admin/") {
        Box::pin(admin(app, req)).await
    } else {
        Box::pin(user(app, req)).await
    }
}

async fn user(app: &App, req: Request) -> Result<Response, ApiError> {
    let openid = authenticate(app, &req)?;
    match parse_json::<UserAction>(&req)? {
        UserAction::Apply {
            out_trade_no,
            amount,
            reason,
            kind,
            product_id,
            sku_id,
            quantity,
            idempotency_key,
        } => {
            let asked = line_asked(product_id, sku_id, quantity)?;
            let order = own_order(app, &openid, &out_trade_no).await?.value;
            let keyed_id = match idempotency_key.as_deref() {
                None => None,
                Some(k) if k.is_empty() || k.len() > 128 => {
                    return Err(ApiError::bad_request(
                        "BAD_IDEMPOTENCY_KEY",
                        "idempotency key must be 1–128 characters",
                    ))
                }
                Some(k) => Some(AfterSaleId::for_request(&openid, &order.out_trade_no, k)),
            };
            let kind = match kind.as_deref() {
                None | Some("refund") => AfterSaleKind::RefundOnly,
                Some("return") => AfterSaleKind::ReturnAndRefund,
                Some(o) => {
                    return Err(ApiError::bad_request(
                        "BAD_TYPE",
                        format!("type `{o}` must be refund or return"),
                    ))
                }
            };
            let reason: String = reason.trim().chars().take(200).collect();
            let reason = if reason.is_empty() {
                "no reason given".to_owned()
            } else {
                reason
            };
            // The amount is held on the order (`refund_claims`), written with the after-sale
            // under the order's version: of two applications at once one commits, the other
            // conflicts, re-reads the order and finds the amount held.
            let aftersale = with_retries(app, || async {
                if let Some(id) = &keyed_id {
                    // The same application again (or its twin, which won the race): its answer.
                    if let Some(existing) = repo::get_aftersale(app.store.as_ref(), id).await? {
                        let same = existing.value.kind == kind
                            && amount.is_none_or(|a| a == existing.value.amount.get())
                            && asked
                                .as_ref()
                                .is_none_or(|l| l.matches(existing.value.line.as_ref()));
                        if !same {
                            return Err(ApiError::new(
                                http::StatusCode::UNPROCESSABLE_ENTITY,
                                "IDEMPOTENCY_KEY_REUSED",
                                "this idempotency key was used for another application; use a new key",
                            ));
                        }
                        return Ok(Attempt::Done(Ok(existing.value)));
                    }
                }
                let order = repo::get_order(app.store.as_ref(), &order.out_trade_no)
                    .await?
                    .ok_or_else(|| ApiError::not_found("ORDER_NOT_FOUND", "order vanished"))?;
                // A refusal stands only on the key and the order as read: the twin of this
                // application (a double tap, a retry after a slow answer) may have committed
                // under this key between the two reads, holding all that was left — and this
                // one would be told NOT_REFUNDABLE (or LINE_ALREADY_CLAIMED) of the very
                // application it made. Decided again, it finds the key's after-sale.
                let decided: Result<Attempt<AfterSale>, ApiError> = async {
                if !order.value.status.is_paid()
                    || order.value.status == crate::domain::OrderStatus::Refunded
                    || order.value.refundable() == Fen::ZERO
                {
                    // Nothing paid, or all of it refunded: that, before which units are left.
                    return Err(nothing_left_to_ask(&order.value));
                }
                let earlier = aftersales_of(app, &order.value).await?;
                let choice = AfterSaleLine::choose(&order.value, asked.as_ref(), &earlier)
                    .map_err(line_error)?;
                let left = left_to_claim(&order.value, &earlier)?;
                // The most this application may ask for: its default.
                let most_now = most_now(&choice, left);
                let amount = match amount {
                    None => most_now,
                    Some(a) => Fen::new(a)
                        .ok()
                        .filter(|a| *a > Fen::ZERO)
                        .ok_or_else(|| {
                            ApiError::bad_request(
                                "BAD_AMOUNT",
                                format!(
                                    "amount {a} must be a whole number of fen of at least 1; \
                                     leave it out to ask for all that is left"
                                ),
                            )
                        })?,
                };
                // An amount that does not fit: what to ask for instead, or, with nothing left
                // (by default: 0 fen), why rather than "… exceeds the 0 fen …".
                let too_much = |why: String| {
                    if most_now == Fen::ZERO {
                        nothing_left_to_ask(&order.value)
                    } else {
                        ApiError::conflict("NOT_REFUNDABLE", ask_at_most(why, most_now))
                    }
                };
                if amount == Fen::ZERO {
                    return Err(too_much(String::new()));
                }
                if let Some(most) = choice.most.filter(|most| amount > *most) {
                    return Err(over_line(amount, most));
                }
                order
                    .value
                    .check_refund(amount)
                    .map_err(|e| match e {
                        crate::domain::TransitionError::RefundTooLarge { .. } => {
                            too_much(e.to_string())
                        }
                        _ => nothing_left_to_ask(&order.value),
                    })?;
                let now = app.clock.now_ms();
                let aftersale = AfterSale {
                    id: keyed_id.clone().unwrap_or_else(|| AfterSaleId::generate(now)),
                    out_trade_no: order.value.out_trade_no.clone(),
                    openid: openid.clone(),
                    kind,
                    amount,
                    reason: reason.clone(),
                    status: AfterSaleStatus::Requested,
                    out_refund_no: None,
                    refund_id: None,
                    wx_aftersale_id: None,
                    wx_add_claimed_until_ms: None,
                    restock: false,
                    reject_reason: None,
                    goods_return: None,
                    line: choice.line.clone(),
                    created_at_ms: now,
                    updated_at_ms: now,
                    refunded_at_ms: None,
                    by: AfterSaleOrigin::User,
                };
                let mut next_order = order.value.clone();
                let held = next_order.claim_refund(&aftersale.id, amount, now);
                if held.is_err() || amount > left {
                    return Err(too_much(format!(
                        "open after-sales already cover this amount: {} fen can still be \
                         asked for",
                        left.get()
                    )));
                }
                let mut batch = Batch::new();
                batch.create_aftersale(&aftersale);
                batch.update_order(&order, &next_order);
                if order.value.at_wechat().component_order {
                    batch.enqueue(OutboxEntry::new(
                        Task::AfterSaleSync {
                            aftersale_id: aftersale.id.clone(),
                        },
                        now,
                    ));
                }
                Ok(Attempt::Commit(batch, aftersale))
                }
                .await;
                refusal_on_reads(decided, |batch| {
                    if let Some(id) = &keyed_id {
                        batch.check_no_aftersale(id);
                    }
                    batch.check_order(&order);
                })
            })
            .await??;
            let amount = aftersale.amount;
            tracing::info!(aftersale_id = %aftersale.id, out_trade_no = %aftersale.out_trade_no, amount = amount.get(), "after-sale requested");
            Ok(json(&serde_json::json!({ "aftersale": view(&aftersale) })))
        }
        UserAction::Cancel { aftersale_id } => {
            let id = parse_id(&aftersale_id)?;
            let a = update(app, &id, Some(&openid), |a, now| {
                a.cancel(now).map_err(|e| e.to_string())
            })
            .await?;
            Ok(json(&serde_json::json!({ "aftersale": view(&a) })))
        }
        UserAction::Return {
            aftersale_id,
            delivery_id,
            delivery_name,
            waybill_id,
        } => {
            let id = parse_id(&aftersale_id)?;
            let field = |name: &'static str, v: String, max: usize| {
                let v = v.trim().to_owned();
                if v.is_empty() || v.chars().count() > max {
                    Err(ApiError::bad_request(
                        "BAD_WAYBILL",
                        format!("{name} must be 1 to {max} characters"),
                    ))
                } else {
                    Ok(v)
                }
            };
            let waybill = ReturnWaybill {
                delivery_id: field("delivery_id", delivery_id, 64)?,
                delivery_name: field("delivery_name", delivery_name, 64)?,
                waybill_id: field("waybill_id", waybill_id, 64)?,
            };
            let a = update(app, &id, Some(&openid), |a, now| {
                a.goods_sent(waybill.clone(), now)
                    .map_err(|e| e.to_string())
            })
            .await?;
            tracing::info!(aftersale_id = %a.id, "goods sent back");
            Ok(json(&serde_json::json!({ "aftersale": view(&a) })))
        }
        UserAction::List { out_trade_no } => {
            let order = own_order(app, &openid, &out_trade_no).await?.value;
            list(app, &order.out_trade_no).await
        }
    }
}

async fn admin(app: &App, req: Request) -> Result<Response, ApiError> {
    match parse_json::<AdminAction>(&req)? {
        AdminAction::Approve {
            aftersale_id,
            return_address,
            confirm_not_refunded_by_hand,
        } => {
            let id = parse_id(&aftersale_id)?;
            let current = repo::get_aftersale(app.store.as_ref(), &id)
                .await?
                .ok_or_else(|| {
                    ApiError::not_found("AFTERSALE_NOT_FOUND", format!("no after-sale {id}"))
                })?;
            let a = if current.value.kind == AfterSaleKind::ReturnAndRefund
                && current.value.status == AfterSaleStatus::Requested
            {
                accept_return(app, &id, return_address).await?
            } else {
                Box::pin(approve(app, current, confirm_not_refunded_by_hand)).await?
            };
            Ok(json(&serde_json::json!({ "aftersale": view(&a) })))
        }
        AdminAction::Reject {
            aftersale_id,
            reason,
        } => {
            let id = parse_id(&aftersale_id)?;
            let reason = if reason.trim().is_empty() {
                "rejected by merchant".to_owned()
            } else {
                reason.chars().take(200).collect()
            };
            let a = update(app, &id, None, |a, now| {
                a.reject(&reason, now).map_err(|e| e.to_string())
            })
            .await?;
            Ok(json(&serde_json::json!({ "aftersale": view(&a) })))
        }
        AdminAction::MarkRefunded {
            aftersale_id,
            out_refund_no,
        } => {
            let id = parse_id(&aftersale_id)?;
            let a = match out_refund_no {
                None => Box::pin(mark_refunded(app, &id)).await?,
                Some(no) => {
                    let no = crate::domain::OutRefundNo::parse(no)
                        .map_err(|e| ApiError::bad_request("BAD_OUT_REFUND_NO", e.to_string()))?;
                    Box::pin(settle_by_refund_made_by_hand(app, &id, &no)).await?
                }
            };
            Ok(json(&serde_json::json!({ "aftersale": view(&a) })))
        }
        AdminAction::Refund(body) => {
            let no = OutTradeNo::parse(body.out_trade_no)
                .map_err(|e| ApiError::bad_request("BAD_OUT_TRADE_NO", e.to_string()))?;
            let line = line_asked(body.product_id, body.sku_id, body.quantity)?;
            if body.restock && line.is_none() {
                return Err(ApiError::bad_request(
                    "BAD_RESTOCK",
                    "restock puts a line's units back on sale: name the line (product_id and \
                     sku_id, and quantity if not all of it), or leave restock out for a refund \
                     of money only",
                ));
            }
            let asked = MerchantRefund {
                amount: body.amount,
                reason: &body.reason,
                key: &body.idempotency_key,
                line,
                restock: body.restock,
            };
            let a = Box::pin(merchant_refund(app, &no, &asked)).await?;
            Ok(json(&serde_json::json!({ "aftersale": view(&a) })))
        }
        AdminAction::List { out_trade_no } => {
            let no = OutTradeNo::parse(out_trade_no)
                .map_err(|e| ApiError::bad_request("BAD_OUT_TRADE_NO", e.to_string()))?;
            list(app, &no).await
        }
    }
}

/// The merchant's own refund of paid order `no`: `amount` fen (default: all it can still
/// refund, freight included, less what open after-sales hold), as an after-sale the merchant
/// opened ([`AfterSaleOrigin::Merchant`]: a refund only) approved at once — in one write with
/// its hold on the order, its `out_refund_no`, refund record and refund task, so from there
/// it is any approved after-sale: `secapi/pay/refund`, the notification (or the refund sweep)
/// settles it `REFUNDED` and the order with it, `REFUND_FAILED` / `REFUND_ABNORMAL` and
/// `mark_refunded` as for any. Only an order whose money we hold: a secondary-merchant order's
/// is WeChat's, refunded through an after-sale there. The same key on the same order answers
/// the same refund; another amount, line or `restock` under it is 422.
///
/// Without a line it is money only: no stock back, not mirrored to WeChat's trading component
/// (`ecaftersale/add` needs a product line). With one it claims the line's units as the user's
/// `apply` of that line would ([`AfterSaleLine::choose`]: `LINE_ALREADY_CLAIMED`, the line's
/// bound, the freight with the order's last unclaimed units), its default amount that
/// application's, and on a trading-component order it is mirrored as an approved refund is
/// (the sync task: `ecaftersale/add`, then `acceptrefund`); its units go back on sale once
/// refunded ([`AfterSale::units_back`]) when never shipped, and shipped ones too with
/// `restock`, which needs the whole price of them refunded (else 400 `BAD_RESTOCK`).
async fn merchant_refund(
    app: &App,
    no: &OutTradeNo,
    asked: &MerchantRefund<'_>,
) -> Result<AfterSale, ApiError> {
    let key = asked.key;
    if key.is_empty() || key.chars().count() > 128 {
        return Err(ApiError::bad_request(
            "BAD_IDEMPOTENCY_KEY",
            "idempotency_key must be 1–128 characters",
        ));
    }
    let reason = asked.reason.trim();
    if reason.is_empty() || reason.chars().count() > 200 {
        return Err(ApiError::bad_request(
            "BAD_REASON",
            "reason must be 1–200 characters (the user sees it; WeChat Pay's refund_desc \
             gets its first 80 bytes)",
        ));
    }
    let amount = asked
        .amount
        .map(|a| {
            Fen::new(a).ok().filter(|a| *a > Fen::ZERO).ok_or_else(|| {
                ApiError::bad_request(
                    "BAD_AMOUNT",
                    format!(
                        "amount {a} must be a whole number of fen of at least 1; leave it \
                             out to refund all the order (or the line) can still refund"
                    ),
                )
            })
        })
        .transpose()?;
    let id = AfterSaleId::for_merchant_refund(no, key);
    let refund = with_retries(app, || async {
        if let Some(existing) = repo::get_aftersale(app.store.as_ref(), &id).await? {
            let e = &existing.value;
            let same_line = match &asked.line {
                None => e.line.is_none(),
                Some(l) => l.matches(e.line.as_ref()),
            };
            if amount.is_some_and(|a| a != e.amount) || !same_line || asked.restock != e.restock {
                let line = e.line.as_ref().map_or(String::new(), |l| {
                    format!(
                        ", line {}/{} × {}{}",
                        l.product_id,
                        l.sku_id,
                        l.quantity,
                        if e.restock { ", restocked" } else { "" }
                    )
                });
                return Err(ApiError::new(
                    http::StatusCode::UNPROCESSABLE_ENTITY,
                    "IDEMPOTENCY_KEY_REUSED",
                    format!(
                        "this idempotency key refunded {} fen of order {no}{line} (after-sale \
                         {id}); use a new key for another refund",
                        e.amount.get()
                    ),
                ));
            }
            return Ok(Attempt::Done(Ok(existing.value)));
        }
        let order = repo::get_order(app.store.as_ref(), no)
            .await?
            .ok_or_else(|| ApiError::not_found("ORDER_NOT_FOUND", format!("no order {no}")))?;
        // A refusal stands only on the key and the order as read: the twin of this request
        // (a retry of a click whose answer was slow) may have committed the refund under this
        // key between the two reads, leaving nothing refundable — and this one would say
        // NOT_REFUNDABLE of the very refund it asked for. Decided again, it finds the key's.
        let decided: Result<Attempt<AfterSale>, ApiError> = async {
            if !order.value.status.is_paid() {
                return Err(ApiError::conflict(
                    "ORDER_NOT_PAID",
                    format!(
                        "order {no} is {}: nothing was paid, so nothing can be refunded",
                        order.value.status.as_str()
                    ),
                ));
            }
            if order.value.fund_type == FundType::SecondaryMerchant {
                return Err(ApiError::conflict(
                    "NOT_REFUNDABLE",
                    format!(
                        "order {no} is a secondary-merchant order: WeChat holds its money and \
                     refunds it only through an after-sale in the trading component, so \
                     wxshop cannot refund it through WeChat Pay"
                    ),
                ));
            }
            let earlier = aftersales_of(app, &order.value).await?;
            let left = left_to_claim(&order.value, &earlier)?;
            // The line, as the user's application of it would claim it; nothing refundable left
            // is said first, as there.
            let choice = match &asked.line {
                None => None,
                Some(_) if order.value.refundable() == Fen::ZERO => {
                    return Err(not_refundable_by_merchant(
                        &order.value,
                        &earlier,
                        Fen::ZERO,
                        left,
                    ))
                }
                Some(l) => Some(
                    AfterSaleLine::choose(&order.value, Some(l), &earlier).map_err(line_error)?,
                ),
            };
            let amount =
                amount.unwrap_or_else(|| choice.as_ref().map_or(left, |c| most_now(c, left)));
            if let Some(most) = choice
                .as_ref()
                .and_then(|c| c.most)
                .filter(|most| amount > *most)
            {
                return Err(over_line(amount, most));
            }
            if amount > left || amount == Fen::ZERO {
                return Err(not_refundable_by_merchant(
                    &order.value,
                    &earlier,
                    amount,
                    left,
                ));
            }
            let now = app.clock.now_ms();
            let line = choice.and_then(|c| c.line);
            let mut refund = AfterSale::merchant_refund(
                id.clone(),
                &order.value,
                amount,
                reason.to_owned(),
                line,
                asked.restock,
                now,
            );
            if refund.restock {
                restock_fits(&order.value, &refund)?;
            }
            let mut next_order = order.value.clone();
            next_order
                .claim_refund(&id, amount, now)
                .map_err(|_| not_refundable_by_merchant(&order.value, &earlier, amount, left))?;
            let mut batch = Batch::new();
            queue_wechat_pay_refund(app, &id, &mut refund, &mut batch, now).await?;
            batch.create_aftersale(&refund);
            batch.update_order(&order, &next_order);
            if refund.mirrored_to_wechat() && order.value.at_wechat().component_order {
                // As an approval of the user's after-sale of the line: added at WeChat on the
                // user's behalf, then its refund accepted there.
                batch.enqueue(OutboxEntry::new(
                    Task::AfterSaleSync {
                        aftersale_id: id.clone(),
                    },
                    now,
                ));
            }
            Ok(Attempt::Commit(batch, refund))
        }
        .await;
        refusal_on_reads(decided, |batch| {
            batch.check_no_aftersale(&id);
            batch.check_order(&order);
        })
    })
    .await??;
    tracing::info!(aftersale_id = %refund.id, out_trade_no = %no, amount = refund.amount.get(), restock = refund.restock, "merchant refund; refund queued");
    Ok(refund)
}

/// `decided`, an attempt made on records read, as one whose refusal stands only on those
/// records: a refusal (4xx) is committed as `conditions` (checks of the records it was decided
/// on, writing nothing), so when one of them changed since it was read — another request
/// committed in between — the decision is made again on fresh reads rather than answered from
/// stale ones. Its answer is the attempt's result: the refusal, or what the attempt made.
fn refusal_on_reads<T>(
    decided: Result<Attempt<T>, ApiError>,
    conditions: impl FnOnce(&mut Batch),
) -> Result<Attempt<Result<T, ApiError>>, ApiError> {
    match decided {
        Ok(Attempt::Done(v)) => Ok(Attempt::Done(Ok(v))),
        Ok(Attempt::Commit(batch, v)) => Ok(Attempt::Commit(batch, Ok(v))),
        Err(refusal) if refusal.status.is_client_error() => {
            let mut batch = Batch::new();
            conditions(&mut batch);
            Ok(Attempt::Commit(batch, Err(refusal)))
        }
        Err(e) => Err(e),
    }
}

/// 400 `BAD_RESTOCK` unless `refund` (restocked, of a line) gives back the whole price of its
/// units: the rule that takes units back ([`AfterSale::refunds_whole_units_of`]) — a parcel
/// leaves them out, stock gets them back. Part of it would put units on sale that a parcel
/// still ships.
fn restock_fits(order: &crate::domain::Order, refund: &AfterSale) -> Result<(), ApiError> {
    let Some(line) = &refund.line else {
        return Ok(());
    };
    let whole = order
        .items
        .iter()
        .find(|i| line.is_of(i))
        .is_some_and(|i| refund.refunds_whole_units_of(i));
    if whole {
        return Ok(());
    }
    Err(ApiError::bad_request(
        "BAD_RESTOCK",
        format!(
            "restock puts back units whose whole price is refunded, and {} fen is less than \
             the unit price × {} of {}/{}: refund at least that (or leave amount out), or \
             leave restock out for a refund of money only",
            refund.amount.get(),
            line.quantity,
            line.product_id,
            line.sku_id
        ),
    ))
}

/// The most a new after-sale of `choice` may ask for — its default — beside `left`, what the
/// order can still refund beside its open after-sales.
fn most_now(choice: &crate::domain::LineChoice, left: Fen) -> Fen {
    choice.most.map_or(left, |most| most.min(left))
}

/// 400 `AMOUNT_OVER_LINE`: `amount` is more than the line can still be refunded (`most`).
fn over_line(amount: Fen, most: Fen) -> ApiError {
    ApiError::bad_request(
        "AMOUNT_OVER_LINE",
        format!(
            "amount {} fen is more than this line can still be refunded: at most {} fen (its \
             unit price × the quantity asked, less what live after-sales of the line claim); \
             ask for less, or leave amount out",
            amount.get(),
            most.get()
        ),
    )
}

/// 409 `NOT_REFUNDABLE` for a merchant's refund of `amount` (zero: all that is left, which is
/// nothing) of `order`, which has `left` beside its open after-sales: what it can still
/// refund, and the open after-sales holding the rest.
fn not_refundable_by_merchant(
    order: &crate::domain::Order,
    all: &[AfterSale],
    amount: Fen,
    left: Fen,
) -> ApiError {
    if order.status == crate::domain::OrderStatus::Refunded || order.refundable() == Fen::ZERO {
        return ApiError::conflict(
            "NOT_REFUNDABLE",
            format!(
                "order {} is refunded in full ({} fen): nothing is left to refund",
                order.out_trade_no,
                order.refunded.get()
            ),
        );
    }
    let open: Vec<String> = all
        .iter()
        .filter(|a| is_open(a.status))
        .map(|a| format!("{} ({} fen, {})", a.id, a.amount.get(), a.status.as_str()))
        .collect();
    let asked = if amount == Fen::ZERO {
        "nothing is left to refund".to_owned()
    } else {
        format!("a refund of {} fen does not fit", amount.get())
    };
    ApiError::conflict(
        "NOT_REFUNDABLE",
        format!(
            "{asked}: order {} has {} fen left to refund and open after-sales hold {} fen of \
             it: {}. Refund less, or reject (or have the user cancel) the after-sales not to \
             be paid first",
            order.out_trade_no,
            order.refundable().get(),
            order
                .refundable()
                .checked_sub(left)
                .unwrap_or(Fen::ZERO)
                .get(),
            if open.is_empty() {
                "none".to_owned()
            } else {
                open.join(", ")
            }
        ),
    )
}

/// 409 `NOT_REFUNDABLE` for an application with nothing left to ask for: why (the order not
/// paid or refunded in full already, or open after-sales holding all that is left) and what
/// to do.
fn nothing_left_to_ask(order: &crate::domain::Order) -> ApiError {
    let why = if !order.status.is_paid() {
        format!(
            "order is {}: nothing was paid, so nothing can be refunded",
            order.status.as_str()
        )
    } else if order.status == crate::domain::OrderStatus::Refunded
        || order.refundable() == Fen::ZERO
    {
        format!(
            "order is {}: all {} fen paid was refunded already, nothing is left to ask for",
            order.status.as_str(),
            order.total.get()
        )
    } else {
        format!(
            "nothing is left to ask for: open after-sales hold all of the {} fen the order \
             can still refund; wait for them to end, or cancel one of yours and apply again",
            order.refundable().get()
        )
    };
    ApiError::conflict("NOT_REFUNDABLE", why)
}

/// `why` an amount asked for does not fit, with what to do: ask for at most `most` fen (what
/// this application may still ask for), or leave `amount` out, which asks for just that.
fn ask_at_most(why: impl std::fmt::Display, most: Fen) -> String {
    format!(
        "{why}; ask for at most {} fen, or leave `amount` out to ask for all that is left",
        most.get()
    )
}

/// After-sale states that may still end in a refund.
fn is_open(status: AfterSaleStatus) -> bool {
    matches!(
        status,
        AfterSaleStatus::Requested
            | AfterSaleStatus::AwaitingReturn
            | AfterSaleStatus::Returning
            | AfterSaleStatus::Refunding
            | AfterSaleStatus::RefundFailed
            | AfterSaleStatus::RefundAbnormal
    )
}

/// What open after-sales of `order` ask for without a hold on it (see
/// [`crate::domain::Order::claim_refund`]): recorded before holds existed, or imported from
/// WeChat beyond what was left. Read from the after-sale index, so it is a best effort; the
/// holds are what concurrent writers cannot get past.
async fn open_unheld(app: &App, order: &crate::domain::Order) -> Result<Fen, ApiError> {
    let all = repo::aftersales_of_order(app.store.as_ref(), &order.out_trade_no).await?;
    let all: Vec<AfterSale> = all.into_iter().map(|a| a.value).collect();
    unheld_in(order, &all)
}

/// What `order` can still refund beside its after-sales `all`: what it can claim less what
/// open after-sales that hold nothing on it ask for (recorded before holds existed, or
/// imported from WeChat beyond what was left) — they count too.
fn left_to_claim(order: &crate::domain::Order, all: &[AfterSale]) -> Result<Fen, ApiError> {
    let unheld = unheld_in(order, all)?;
    Ok(order.claimable().checked_sub(unheld).unwrap_or(Fen::ZERO))
}

/// What the open after-sales among `all` that hold nothing on `order` ask for.
fn unheld_in(order: &crate::domain::Order, all: &[AfterSale]) -> Result<Fen, ApiError> {
    let sum = all
        .iter()
        .filter(|a| is_open(a.status) && !order.refund_claims.contains_key(&a.id))
        .map(|a| a.amount.get())
        .sum::<i64>();
    Fen::new(sum).map_err(|e| ApiError::internal(e.to_string()))
}

/// The after-sales of `order`: those the after-sale index lists, and those holding an amount
/// on the order that it does not list yet. The index may lag behind a write (DynamoDB's are
/// eventually consistent); a hold is written with its after-sale under the order's version,
/// so an application that just won a race against this one is read by its id.
async fn aftersales_of(
    app: &App,
    order: &crate::domain::Order,
) -> Result<Vec<AfterSale>, ApiError> {
    let mut all: Vec<AfterSale> =
        repo::aftersales_of_order(app.store.as_ref(), &order.out_trade_no)
            .await?
            .into_iter()
            .map(|a| a.value)
            .collect();
    for id in order.refund_claims.keys() {
        if all.iter().any(|a| &a.id == id) {
            continue;
        }
        if let Some(a) = repo::get_aftersale(app.store.as_ref(), id).await? {
            all.push(a.value);
        }
    }
    Ok(all)
}

/// The line an application names, parsed: both ids or neither; a quantity only with them.
fn line_asked(
    product_id: Option<String>,
    sku_id: Option<String>,
    quantity: Option<i64>,
) -> Result<Option<LineAsked>, ApiError> {
    let quantity = quantity
        .map(|q| {
            u32::try_from(q)
                .ok()
                .and_then(std::num::NonZeroU32::new)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "BAD_QUANTITY",
                        format!("quantity {q} must be a whole number of at least 1"),
                    )
                })
        })
        .transpose()?;
    let (product_id, sku_id) = match (product_id, sku_id) {
        (Some(p), Some(s)) => (p, s),
        (None, None) if quantity.is_none() => return Ok(None),
        _ => {
            return Err(ApiError::bad_request(
                "LINE_INCOMPLETE",
                "a line is named by both product_id and sku_id (as in the order's items); \
                 quantity goes with them",
            ))
        }
    };
    let unknown = |e: crate::domain::IdError| {
        ApiError::bad_request(
            "UNKNOWN_LINE",
            format!("{e}: no line of this order has it; name one of its items"),
        )
    };
    Ok(Some(LineAsked {
        product_id: ProductId::parse(product_id).map_err(unknown)?,
        sku_id: SkuId::parse(sku_id).map_err(unknown)?,
        quantity,
    }))
}

/// An application's line refused: 400, with what to do.
fn line_error(e: LineError) -> ApiError {
    let code = match &e {
        LineError::UnknownLine { .. } => "UNKNOWN_LINE",
        LineError::BadQuantity { .. } => "BAD_QUANTITY",
        LineError::LineRequired { .. } => "LINE_REQUIRED",
        LineError::AlreadyClaimed { .. } => "LINE_ALREADY_CLAIMED",
        LineError::Money(_) => return ApiError::internal(e.to_string()),
    };
    ApiError::bad_request(code, e.to_string())
}

async fn list(app: &App, no: &OutTradeNo) -> Result<Response, ApiError> {
    let all = repo::aftersales_of_order(app.store.as_ref(), no).await?;
    let views: Vec<AfterSaleView<'_>> = all.iter().map(|a| view(&a.value)).collect();
    Ok(json(&serde_json::json!({ "aftersales": views })))
}

/// Applies a transition (with the sync to WeChat queued) under a version condition.
async fn update(
    app: &App,
    id: &AfterSaleId,
    owner: Option<&crate::domain::OpenId>,
    f: impl Fn(&mut AfterSale, i64) -> Result<Change, String>,
) -> Result<AfterSale, ApiError> {
    with_retries(app, || async {
        let current = repo::get_aftersale(app.store.as_ref(), id)
            .await?
            .filter(|a| owner.is_none_or(|o| &a.value.openid == o))
            .ok_or_else(|| {
                ApiError::not_found("AFTERSALE_NOT_FOUND", format!("no after-sale {id}"))
            })?;
        let now = app.clock.now_ms();
        let mut next = current.value.clone();
        if f(&mut next, now).map_err(|e| ApiError::conflict("AFTERSALE_STATE", e))?
            == Change::Unchanged
        {
            return Ok(Attempt::Done(next));
        }
        let mut batch = Batch::new();
        batch.update_aftersale(&current, &next);
        let order = repo::get_order(app.store.as_ref(), &next.out_trade_no).await?;
        if let Some(o) = order.as_ref().filter(|_| !is_open(next.status)) {
            // Closed (cancelled, rejected): what it held on the order is free again.
            let mut next_order = o.value.clone();
            if next_order.release_claim(id, now) == Change::Changed {
                batch.update_order(o, &next_order);
            }
        }
        if order
            .as_ref()
            .is_some_and(|o| o.value.at_wechat().component_order)
        {
            batch.enqueue(OutboxEntry::new(
                Task::AfterSaleSync {
                    aftersale_id: id.clone(),
                },
                now,
            ));
        }
        Ok(Attempt::Commit(batch, next))
    })
    .await
}

/// The first approval of a return and refund: the goods are to come back to `address` (or
/// `WX_RETURN_ADDRESS`); the refund waits until the user has sent them.
async fn accept_return(
    app: &App,
    id: &AfterSaleId,
    address: Option<Address>,
) -> Result<AfterSale, ApiError> {
    let address = address
        .or_else(|| app.config.return_address.clone())
        .ok_or_else(|| {
            ApiError::bad_request(
                "RETURN_ADDRESS_MISSING",
                "a return and refund is approved with the address the goods go back to: pass \
                 return_address {receiver_name, detailed_address, tel_number, province?, city?, \
                 town?} or set WX_RETURN_ADDRESS",
            )
        })?;
    if let Err(why) = address.check() {
        return Err(ApiError::bad_request(
            "BAD_RETURN_ADDRESS",
            format!("return_address: {why}"),
        ));
    }
    let a = update(app, id, None, |a, now| {
        a.accept_return(address.clone(), now)
            .map_err(|e| e.to_string())
    })
    .await?;
    tracing::info!(aftersale_id = %id, "return accepted; waiting for the goods");
    Ok(a)
}

/// Approval: REFUNDING, in one write with what makes the money go back. For an order whose
/// money we hold: a fixed `out_refund_no`, its refund record and the refund task
/// (`secapi/pay/refund`). For a secondary-merchant order WeChat holds the money: the sync
/// task accepts the refund at WeChat (`ecaftersale/acceptrefund`), WeChat refunds, and its
/// report (the `aftersale_refund_success` event, or the after-sale read back by the sync)
/// completes ours — our merchant account has no payment to refund from. Such an order whose
/// `shop/order/add` answer was lost learns its component order's id first
/// ([`secondary_at_wechat`]) — once nothing else refuses the approval, so a refusal that does
/// not turn on WeChat asks it nothing.
///
/// `current` is the after-sale as the caller read it: the first attempt uses it, and reads
/// its order once; only a retry (a concurrent writer won) reads them again — or learning the
/// component order's id, which writes the order, re-reads that.
async fn approve(
    app: &App,
    current: repo::Versioned<AfterSale>,
    confirm_not_refunded_by_hand: bool,
) -> Result<AfterSale, ApiError> {
    let id = &current.value.id.clone();
    let mut first = Some(current);
    let approved = with_retries::<Result<AfterSale, ApiError>, ApiError, _, _>(app, || {
        let known = first.take();
        async move {
            let current = match known {
                Some(a) => a,
                None => repo::get_aftersale(app.store.as_ref(), id)
                    .await?
                    .ok_or_else(|| {
                        ApiError::not_found("AFTERSALE_NOT_FOUND", format!("no after-sale {id}"))
                    })?,
            };
            let mut order = repo::get_order(app.store.as_ref(), &current.value.out_trade_no)
                .await?
                .ok_or_else(|| ApiError::not_found("ORDER_NOT_FOUND", "order vanished"))?;
            // The refunds made by hand read, as read: a refusal stands on them too.
            let mut by_hand_read: Vec<repo::Versioned<RefundRecord>> = Vec::new();
            // A refusal stands only on the after-sale, order and refunds made by hand as read:
            // the after-sale, read first, may have moved on before the order was read — a
            // twin approval (a double click) whose refund WeChat Pay paid meanwhile, another
            // merchant's approval confirming no refund by hand paid it, a cancel — and the
            // order read after it would refuse an approval that was made (NOT_REFUNDABLE of a
            // refund that went fine; REFUNDED_BY_HAND of an approved one, inviting a
            // settlement by hand that pays twice). Decided again, it answers the after-sale
            // as it stands.
            let decided: Result<Attempt<AfterSale>, ApiError> = async {
                let fund_type = order.value.fund_type;
                let now = app.clock.now_ms();
                let mut next = current.value.clone();
                if next
                    .approve(fund_type, now)
                    .map_err(|e| ApiError::conflict("AFTERSALE_STATE", e.to_string()))?
                    == Change::Unchanged
                {
                    return Ok(Attempt::Done(next));
                }
                // Refunds a person made in the merchant platform: one since this application
                // may have been this after-sale's money — approving would pay it twice. A
                // person says which.
                if order.value.refunded > Fen::ZERO {
                    by_hand_read = unlinked_refunds_by_hand(app, &order.value).await?;
                }
                let by_hand: Vec<RefundRecord> =
                    by_hand_read.iter().map(|r| r.value.clone()).collect();
                let since: Vec<&RefundRecord> = by_hand
                    .iter()
                    .filter(|r| r.created_at_ms >= current.value.created_at_ms)
                    .collect();
                if !since.is_empty() && !confirm_not_refunded_by_hand {
                    return Err(refunded_by_hand_error(id, &since));
                }
                // Held on the order since the application; one recorded without a hold takes
                // it now. Either way it must fit in what is left beside the other open
                // after-sales' holds, which a refund made by hand may have left holding more
                // than that.
                let amount = next.amount;
                let fits = |o: &crate::domain::Order| {
                    o.check_fits(id, amount)
                        .map_err(|e| not_fitting_error(o, id, amount, &by_hand, e))
                };
                fits(&order.value)?;
                // Nothing here refuses it: only now is WeChat asked, if it must be. The id it
                // answers is stored on the order (a version-checked write): read it again.
                if fund_type == FundType::SecondaryMerchant && order.value.wx_order_id.is_none() {
                    secondary_at_wechat(app, &order.value).await?;
                    order = repo::get_order(app.store.as_ref(), &current.value.out_trade_no)
                        .await?
                        .ok_or_else(|| ApiError::not_found("ORDER_NOT_FOUND", "order vanished"))?;
                    fits(&order.value)?;
                }
                let mut next_order = order.value.clone();
                let held = next_order
                    .claim_refund(id, next.amount, now)
                    .map_err(|e| not_fitting_error(&order.value, id, next.amount, &by_hand, e))?;
                let mut batch = Batch::new();
                if fund_type == FundType::Direct {
                    queue_wechat_pay_refund(app, id, &mut next, &mut batch, now).await?;
                }
                // After the refund number is settled (a renumbering changes the after-sale).
                batch.update_aftersale(&current, &next);
                if held == Change::Changed {
                    batch.update_order(&order, &next_order);
                } else {
                    batch.check_order(&order);
                }
                if order.value.at_wechat().component_order {
                    batch.enqueue(OutboxEntry::new(
                        Task::AfterSaleSync {
                            aftersale_id: id.clone(),
                        },
                        now,
                    ));
                }
                Ok(Attempt::Commit(batch, next))
            }
            .await;
            refusal_on_reads(decided, |batch| {
                batch.check_aftersale(&current);
                batch.check_order(&order);
                for r in &by_hand_read {
                    batch.check_refund(r);
                }
            })
        }
    })
    .await??;
    tracing::info!(aftersale_id = %id, status = approved.status.as_str(), "after-sale approved; refund queued");
    Ok(approved)
}

/// A secondary-merchant order is refunded by WeChat, which holds its money, through its
/// component order. One whose `shop/order/add` answer was lost holds no id for it though WeChat
/// may hold the order: the id is learnt by our number first
/// ([`component_id`](super::shop_orders::component_id), stored on the order). Refused (409
/// `NOT_AT_WECHAT`) only when WeChat was never asked to make the order (WeChat is not asked
/// then), or answers that it holds none; 503 when WeChat could not be asked, or a late `add`
/// may still land.
async fn secondary_at_wechat(app: &App, order: &crate::domain::Order) -> Result<(), ApiError> {
    if order.fund_type != FundType::SecondaryMerchant || order.wx_order_id.is_some() {
        return Ok(());
    }
    let no = &order.out_trade_no;
    if !order.at_wechat().component_order {
        return Err(ApiError::conflict(
            "NOT_AT_WECHAT",
            format!(
                "a secondary-merchant order is refunded by WeChat, but order {no} was never \
                 sent to WeChat's trading component, so WeChat holds none of its money: reject \
                 this after-sale and settle with the user another way"
            ),
        ));
    }
    match super::shop_orders::component_id(app, order).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(ApiError::conflict(
            "NOT_AT_WECHAT",
            format!(
                "a secondary-merchant order is refunded by WeChat, but WeChat answers that it \
                 holds no order {no} (shop/order/get by our number: 1010011), so it has none of \
                 its money to refund: reject this after-sale and settle with the user another \
                 way (the order is kept as a component_order_missing event)"
            ),
        )),
        Err(TaskError::RetryAfter(why, ms)) => Err(ApiError::unavailable(
            "WECHAT_UNAVAILABLE",
            format!(
                "{why}; approve again in {} s (order {no})",
                (ms.saturating_add(999) / 1000).max(1)
            ),
        )),
        Err(TaskError::Retry(why)) => Err(ApiError::unavailable(
            "WECHAT_UNAVAILABLE",
            format!(
                "could not learn WeChat's id for order {no}, whose shop/order/add answer was \
                 lost ({why}); approve again shortly"
            ),
        )),
        Err(TaskError::Permanent(why)) => Err(ApiError::new(
            http::StatusCode::BAD_GATEWAY,
            "WECHAT_REFUSED",
            format!(
                "WeChat's component order for order {no} could not be used ({why}); nothing \
                 was approved: look at the order in the trading component before approving"
            ),
        )),
    }
}

/// A person settled by hand a refund of ours that did not reach the user: the after-sale
/// REFUNDED and the order's refunded amount, with the amount's hold given back, in one write.
///
/// - An abnormal refund (REFUND_ABNORMAL: WeChat Pay holds the money) a person redirected:
///   its refund record SUCCESS too, so a later SUCCESS notification for it is a repeat.
/// - A failed one (REFUND_FAILED: WeChat Pay refused the refund — for good, say, the user's
///   account closed — or closed it) a person paid another way: its refund record stays
///   FAILED, WeChat Pay having moved nothing under it, so a SUCCESS WeChat might still report
///   for it is not taken as this payment but kept for a person as a second one
///   (`refund_superseded`). Refused while the record says WeChat Pay may still be paying it.
///   REFUND_FAILED used to be refused here (and by `reject`): approving again, which asks
///   WeChat Pay anew, was the only way on, so a refund it refuses for good held the order's
///   amount for ever, the order still shippable and the user told their refund failed.
///
/// Its refusals stand only on the records read (the after-sale, then its order and refund
/// record): WeChat Pay's notification (or the refund sweep) recording the refund paid between
/// those reads used to get the merchant "not refundable" (the order's amount refunded
/// meanwhile) or "wait for its outcome" (the record SUCCESS meanwhile) for a refund that was
/// paid — a refusal is committed as checks of those records, and made again on fresh reads
/// when one changed: the after-sale REFUNDED, said as such.
async fn mark_refunded(app: &App, id: &AfterSaleId) -> Result<AfterSale, ApiError> {
    let done = with_retries::<Result<AfterSale, ApiError>, ApiError, _, _>(app, || async {
        let current = repo::get_aftersale(app.store.as_ref(), id)
            .await?
            .ok_or_else(|| {
                ApiError::not_found("AFTERSALE_NOT_FOUND", format!("no after-sale {id}"))
            })?;
        let now = app.clock.now_ms();
        let mut next = current.value.clone();
        let refunded_already = current.value.status == AfterSaleStatus::Refunded;
        match next.refunded_by_hand(now) {
            Ok(Change::Unchanged) => return Ok(Attempt::Done(Ok(next))),
            Ok(Change::Changed) => {}
            // Decided on this one read: nothing else to hold it to.
            Err(_) if refunded_already => {
                return Err(ApiError::conflict(
                    "AFTERSALE_STATE",
                    format!(
                        "after-sale {id} is REFUNDED already{}: nothing to record",
                        current
                            .value
                            .refund_id
                            .as_deref()
                            .map_or(String::new(), |r| format!(
                                " (WeChat Pay's refund {r} paid it)"
                            ))
                    ),
                ))
            }
            Err(e) => return Err(ApiError::conflict("AFTERSALE_STATE", e.to_string())),
        }
        let order = repo::get_order(app.store.as_ref(), &next.out_trade_no)
            .await?
            .ok_or_else(|| ApiError::not_found("ORDER_NOT_FOUND", "order vanished"))?;
        let mut batch = Batch::new();
        let mut next_order = order.value.clone();
        if let Err(e) = next_order.refund_aftersale(id, next.amount, now) {
            // On the after-sale and order as read (see above).
            batch.check_aftersale(&current);
            batch.check_order(&order);
            return Ok(Attempt::Commit(
                batch,
                Err(ApiError::conflict("NOT_REFUNDABLE", e.to_string())),
            ));
        }
        if let Some(no) = &next.out_refund_no {
            if let Some(r) = repo::get_refund(app.store.as_ref(), no).await? {
                match current.value.status {
                    AfterSaleStatus::RefundAbnormal => {
                        let mut nr = r.value.clone();
                        nr.status = RefundStatus::Success;
                        nr.updated_at_ms = now;
                        batch.update_refund(&r, &nr);
                    }
                    // REFUND_FAILED: WeChat Pay moved nothing under this number (refused or
                    // closed), as long as the record says so.
                    // On the after-sale and record as read (see above).
                    _ if r.value.status != RefundStatus::Failed => {
                        let mut checks = Batch::new();
                        checks.check_aftersale(&current);
                        checks.check_refund(&r);
                        return Ok(Attempt::Commit(
                            checks,
                            Err(ApiError::conflict(
                                "AFTERSALE_STATE",
                                format!(
                                    "refund {no} of after-sale {id} is {} at WeChat Pay, which \
                                     may still pay it: wait for its outcome",
                                    r.value.status.as_str()
                                ),
                            )),
                        ));
                    }
                    _ => {}
                }
            }
        }
        batch.update_aftersale(&current, &next);
        batch.update_order(&order, &next_order);
        if let Some(e) = super::stock_back::due(&order.value, &next, now) {
            batch.enqueue(e);
        }
        Ok(Attempt::Commit(batch, Ok(next)))
    })
    .await??;
    tracing::info!(aftersale_id = %id, "refund settled by hand; after-sale refunded");
    Ok(done)
}

/// The refunds of `order` made by hand in the merchant platform (recorded `BY_HAND` by
/// `payCallback`) that no after-sale was settled with yet ([`settle_by_refund_made_by_hand`]).
/// Exact: those the order lists ([`Order::refunds_by_hand`], written with each) are read by
/// key — a strongly consistent read, so one recorded a moment ago is seen even while the
/// store's index of the order's refunds (DynamoDB: a GSI, eventually consistent) does not
/// list it yet. The index adds those recorded before orders listed them.
///
/// [`Order::refunds_by_hand`]: crate::domain::Order::refunds_by_hand
async fn unlinked_refunds_by_hand(
    app: &App,
    order: &crate::domain::Order,
) -> Result<Vec<repo::Versioned<RefundRecord>>, ApiError> {
    let store = app.store.as_ref();
    let mut all: Vec<repo::Versioned<RefundRecord>> =
        Vec::with_capacity(order.refunds_by_hand.len());
    for no in &order.refunds_by_hand {
        if let Some(r) = repo::get_refund(store, no).await? {
            all.push(r);
        }
    }
    for r in repo::refunds_of_order(store, &order.out_trade_no).await? {
        if !order.refunds_by_hand.contains(&r.value.out_refund_no) {
            all.push(r);
        }
    }
    all.sort_by_key(|r| r.value.created_at_ms);
    Ok(all
        .into_iter()
        .filter(|r| {
            let r = &r.value;
            r.origin == RefundOrigin::ByHand
                && r.status == RefundStatus::Success
                && r.aftersale_id.is_none()
        })
        .collect())
}

/// `out_refund_no` (amount fen), … of refunds made by hand, for a message.
fn list_refunds(refunds: &[&RefundRecord]) -> String {
    refunds
        .iter()
        .map(|r| format!("{} ({} fen)", r.out_refund_no, r.amount.get()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// 409 `REFUNDED_BY_HAND`: the order was refunded by hand since after-sale `id` was applied
/// for, and that refund may have been this after-sale's.
fn refunded_by_hand_error(id: &AfterSaleId, since: &[&RefundRecord]) -> ApiError {
    let first = since.first().map_or("", |r| r.out_refund_no.as_str());
    ApiError::conflict(
        "REFUNDED_BY_HAND",
        format!(
            "not approved: since after-sale {id} was applied for, its order was refunded by hand \
             in the WeChat Pay merchant platform ({}), and that may have been this after-sale's \
             money — approving would pay the user again. If it was, record it with \
             {{\"action\": \"mark_refunded\", \"aftersale_id\": \"{id}\", \"out_refund_no\": \
             \"{first}\"}} (nothing is paid again); if it was not, approve again with \
             \"confirm_not_refunded_by_hand\": true",
            list_refunds(since)
        ),
    )
}

/// 409 `NOT_REFUNDABLE` for an approval of `amount` that does not fit ([`Order::check_fits`]),
/// saying what holds the rest and what to do.
///
/// [`Order::check_fits`]: crate::domain::Order::check_fits
fn not_fitting_error(
    order: &crate::domain::Order,
    id: &AfterSaleId,
    amount: Fen,
    by_hand: &[RefundRecord],
    e: crate::domain::TransitionError,
) -> ApiError {
    let others: Vec<String> = order
        .refund_claims
        .iter()
        .filter(|(k, _)| *k != id)
        .map(|(k, v)| format!("{k} ({} fen)", v.get()))
        .collect();
    if !order.status.is_paid() || order.status == crate::domain::OrderStatus::Refunded {
        let mut msg = e.to_string();
        if !by_hand.is_empty() {
            msg.push_str(&format!(
                "; refunded by hand in the merchant platform: {}. If one of those paid this \
                 after-sale, record it with mark_refunded {{aftersale_id, out_refund_no}}; \
                 otherwise reject it",
                list_refunds(&by_hand.iter().collect::<Vec<_>>())
            ));
        }
        return ApiError::conflict("NOT_REFUNDABLE", msg);
    }
    let mut msg = format!(
        "after-sale {id} asks for {} fen, but the order has {} fen left to refund and other \
         open after-sales hold {} fen of it: {}",
        amount.get(),
        order.refundable().get(),
        order.claimed_by_others(id).get(),
        if others.is_empty() {
            "none".to_owned()
        } else {
            others.join(", ")
        },
    );
    if !by_hand.is_empty() {
        msg.push_str(&format!(
            ". Refunded by hand in the merchant platform, not through an after-sale: {}",
            list_refunds(&by_hand.iter().collect::<Vec<_>>())
        ));
    }
    msg.push_str(
        ". Reject (or have the user cancel) the after-sales that are paid already or not to \
         be paid — record one a refund made by hand paid with mark_refunded {aftersale_id, \
         out_refund_no} — then approve again",
    );
    ApiError::conflict("NOT_REFUNDABLE", msg)
}

/// A refund made by hand in the merchant platform (`no`, recorded `BY_HAND` on the order when
/// its notification came) paid open after-sale `id`: the after-sale REFUNDED at that refund's
/// amount, its hold on the order given back, and the refund record naming it — so it settles
/// no other — in one write. The order's refunded amount already counts the refund and does
/// not change: nothing is paid again. With the trading component WeChat's after-sale is told
/// it was refunded (the sync; not a return whose return was never accepted). The same call
/// again answers the after-sale as it is.
async fn settle_by_refund_made_by_hand(
    app: &App,
    id: &AfterSaleId,
    no: &crate::domain::OutRefundNo,
) -> Result<AfterSale, ApiError> {
    let refused = |code: &'static str, msg: String| Err(ApiError::conflict(code, msg));
    let done = with_retries::<Result<AfterSale, ApiError>, ApiError, _, _>(app, || async {
        let current = repo::get_aftersale(app.store.as_ref(), id)
            .await?
            .ok_or_else(|| {
                ApiError::not_found("AFTERSALE_NOT_FOUND", format!("no after-sale {id}"))
            })?;
        let refund = repo::get_refund(app.store.as_ref(), no)
            .await?
            .ok_or_else(|| {
                ApiError::not_found(
                    "REFUND_NOT_FOUND",
                    format!(
                        "no refund {no} is recorded; a refund made by hand is recorded when its \
                         notification comes (its out_refund_no is in the refund_by_hand event)"
                    ),
                )
            })?;
        if refund.value.aftersale_id.as_ref() == Some(id) {
            // A repeat: the after-sale as it stands. A twin of this call may have settled it
            // between the two reads — the after-sale read first is then the one before
            // (REQUESTED, not REFUNDED): answered only if it is still as read, else read again.
            let mut still = Batch::new();
            still.check_aftersale(&current);
            return Ok(Attempt::Commit(still, Ok(current.value)));
        }
        // Its refusals stand only on the after-sale and the refund as read (as
        // [`refusal_on_reads`] says): the after-sale, read first, may have moved on since.
        let decided: Result<Attempt<AfterSale>, ApiError> = async {
            if refund.value.origin != RefundOrigin::ByHand
                || refund.value.status != RefundStatus::Success
            {
                return refused(
                    "NOT_A_REFUND_BY_HAND",
                    format!(
                        "refund {no} is not a completed refund made by hand in the merchant \
                         platform; only those settle an after-sale this way"
                    ),
                );
            }
            if refund.value.out_trade_no != current.value.out_trade_no {
                return refused(
                    "REFUND_OF_ANOTHER_ORDER",
                    format!(
                        "refund {no} is of order {}, after-sale {id} of order {}",
                        refund.value.out_trade_no, current.value.out_trade_no
                    ),
                );
            }
            if let Some(other) = &refund.value.aftersale_id {
                return refused(
                    "REFUND_ALREADY_SETTLES_ANOTHER",
                    format!("refund {no} already settled after-sale {other}"),
                );
            }
            if refund.value.amount > current.value.amount {
                return refused(
                    "REFUND_LARGER_THAN_AFTERSALE",
                    format!(
                        "refund {no} paid {} fen, more than the {} fen after-sale {id} asks \
                         for: it was not (only) this after-sale's money; reject the after-sale \
                         if it is paid",
                        refund.value.amount.get(),
                        current.value.amount.get()
                    ),
                );
            }
            let now = app.clock.now_ms();
            let mut next = current.value.clone();
            next.settled_by_refund_made_by_hand(
                refund.value.amount,
                refund.value.refund_id.clone(),
                now,
            )
            .map_err(|e| ApiError::conflict("AFTERSALE_STATE", e.to_string()))?;
            let order = repo::get_order(app.store.as_ref(), &next.out_trade_no)
                .await?
                .ok_or_else(|| ApiError::not_found("ORDER_NOT_FOUND", "order vanished"))?;
            let mut next_order = order.value.clone();
            let mut batch = Batch::new();
            if next_order.release_claim(id, now) == Change::Changed {
                batch.update_order(&order, &next_order);
            } else {
                batch.check_order(&order);
            }
            let mut nr = refund.value.clone();
            nr.aftersale_id = Some(id.clone());
            nr.updated_at_ms = now;
            batch.update_refund(&refund, &nr);
            batch.update_aftersale(&current, &next);
            if let Some(e) = super::stock_back::due(&order.value, &next, now) {
                batch.enqueue(e);
            }
            // WeChat's after-sale is told it was refunded (`acceptrefund`: an order whose money
            // we hold, so WeChat moves none) — except a return whose return was never accepted,
            // which WeChat's return steps cannot take without an address: reconciled there by
            // hand, as the `refund_by_hand` event says.
            let mirrored = next.kind == AfterSaleKind::RefundOnly || next.goods_return.is_some();
            if order.value.at_wechat().component_order && mirrored {
                batch.enqueue(OutboxEntry::new(
                    Task::AfterSaleSync {
                        aftersale_id: id.clone(),
                    },
                    now,
                ));
            }
            Ok(Attempt::Commit(batch, next))
        }
        .await;
        refusal_on_reads(decided, |batch| {
            batch.check_aftersale(&current);
            batch.check_refund(&refund);
        })
    })
    .await??;
    tracing::info!(aftersale_id = %id, out_refund_no = %no, amount = done.amount.get(), "after-sale settled by a refund made by hand; nothing paid again");
    Ok(done)
}

/// The refund of an approved after-sale of an order we hold the money of: its record under
/// the after-sale's `out_refund_no` (a fresh number if WeChat closed the last one) and the
/// `secapi/pay/refund` task, added to `batch`.
async fn queue_wechat_pay_refund(
    app: &App,
    id: &AfterSaleId,
    next: &mut AfterSale,
    batch: &mut Batch,
    now: i64,
) -> Result<(), ApiError> {
    let Some(out_refund_no) = next.out_refund_no.clone() else {
        return Err(ApiError::internal("approval did not fix a refund number"));
    };
    let new_refund = match repo::get_refund(app.store.as_ref(), &out_refund_no).await? {
        None => Some(out_refund_no),
        Some(r) if r.value.status == RefundStatus::Abnormal => {
            // WeChat took that refund and holds it for the merchant (CHANGE): asking again
            // would pay the user twice.
            return Err(ApiError::conflict(
                "REFUND_ABNORMAL",
                format!(
                    "refund {out_refund_no} waits at WeChat to be redirected by hand in the \
                     merchant platform; record that with mark_refunded"
                ),
            ));
        }
        Some(r) if r.value.status == RefundStatus::Failed && r.value.refund_id.is_some() => {
            // WeChat created that refund and closed it (the refund notification said
            // REFUNDCLOSE or CHANGE): the old number would only return it. A new one; the
            // failed refund stays on record.
            let fresh = next
                .renumber_refund(now)
                .map_err(|e| ApiError::internal(e.to_string()))?;
            tracing::info!(aftersale_id = %id, old = %out_refund_no, new = %fresh, "approved again after WeChat closed the refund: a new refund number");
            Some(fresh)
        }
        Some(r) => {
            // Approved again after WeChat refused to take the refund at all (nothing was
            // created under the number): same number, pending again, as WeChat asks.
            let mut nr = r.value.clone();
            nr.status = RefundStatus::Pending;
            nr.updated_at_ms = now;
            batch.update_refund(&r, &nr);
            None
        }
    };
    if let Some(no) = new_refund {
        batch.create_refund(&RefundRecord::new(
            no,
            next.out_trade_no.clone(),
            id.clone(),
            next.amount,
            now,
        ));
    }
    batch.enqueue(OutboxEntry::new(
        Task::Refund {
            aftersale_id: id.clone(),
        },
        now,
    ));
    Ok(())
}

/// Outbox task: `secapi/pay/refund` for an approved after-sale (same `out_refund_no` on
/// every retry). The outcome arrives as a refund notification.
pub async fn issue_refund(app: &App, id: &AfterSaleId) -> Result<(), TaskError> {
    let a = repo::get_aftersale(app.store.as_ref(), id)
        .await?
        .ok_or_else(|| TaskError::Permanent(format!("no after-sale {id}")))?;
    if a.value.status != AfterSaleStatus::Refunding {
        return Ok(()); // refunded, or no longer wanted
    }
    let order = repo::get_order(app.store.as_ref(), &a.value.out_trade_no)
        .await?
        .ok_or_else(|| TaskError::Permanent("order vanished".into()))?;
    if order.value.fund_type == FundType::SecondaryMerchant {
        // WeChat holds this order's money and refunds it when the after-sale is accepted
        // there; our merchant account has no payment to refund (a task queued before the
        // approval knew that).
        tracing::warn!(aftersale_id = %id, "refund task for a secondary-merchant order: WeChat refunds it; nothing to ask WeChat Pay");
        return Ok(());
    }
    let Some(out_refund_no) = a.value.out_refund_no.clone() else {
        return Err(TaskError::Permanent(
            "approved after-sale without a refund number".into(),
        ));
    };
    let refund = repo::get_refund(app.store.as_ref(), &out_refund_no)
        .await?
        .ok_or_else(|| TaskError::Permanent(format!("no refund record {out_refund_no}")))?;
    if refund.value.status != RefundStatus::Pending {
        return Ok(());
    }
    // Any order WeChat was asked to make a component order of, its id stored or not (an
    // `add` answer lost): WeChat's after-sale is read by its own key, not the order's.
    // (A merchant's own refund about no line has no copy at WeChat to ask.)
    if order.value.at_wechat().component_order && a.value.mirrored_to_wechat() {
        match standing_at_wechat(app, &a.value).await? {
            (Standing::Open, _) => {}
            (Standing::Unclear, status) => {
                return Err(TaskError::Permanent(format!(
                    "after-sale {id}: WeChat's after-sale is at status {status}, neither open \
                     nor closed; not refunding it on a guess"
                )))
            }
            (Standing::Closed, status) => {
                if !refund_taken(app, &out_refund_no).await? {
                    close_as_wechat_did(app, id, status, Some(&out_refund_no)).await?;
                    return Ok(());
                }
                // Taken by an earlier attempt whose answer was lost: the money is moving.
                // Asked again under the same number, so that it is tracked to its end.
                tracing::error!(aftersale_id = %id, wx_status = status, out_refund_no = %out_refund_no, "the after-sale was cancelled or closed at WeChat, but WeChat Pay already took its refund; following it");
            }
        }
    }
    match super::pay_orders::refund(
        app,
        &order.value,
        &out_refund_no,
        a.value.amount,
        &a.value.reason,
    )
    .await
    {
        Ok(()) => {
            // Re-read on a conflict: a notification that beat us moved it on (fine), but the
            // schedule noting that it asked about it did not.
            with_retries::<_, TaskError, _, _>(app, || async {
                let Some(refund) = repo::get_refund(app.store.as_ref(), &out_refund_no).await?
                else {
                    return Ok(Attempt::Done(()));
                };
                if refund.value.status != RefundStatus::Pending {
                    return Ok(Attempt::Done(()));
                }
                let mut next = refund.value.clone();
                next.status = RefundStatus::Processing;
                next.updated_at_ms = app.clock.now_ms();
                let mut batch = Batch::new();
                batch.update_refund(&refund, &next);
                Ok(Attempt::Commit(batch, ()))
            })
            .await
        }
        Err(TaskError::Permanent(msg)) => {
            // WeChat will not refund: the after-sale shows it, a person decides. Recorded
            // whatever else changed the after-sale meanwhile (its sync to the trading
            // component writes it too): a lost race must not turn into a second request.
            with_retries::<_, TaskError, _, _>(app, || async {
                let Some(a) = repo::get_aftersale(app.store.as_ref(), id).await? else {
                    return Ok(Attempt::Done(()));
                };
                let Some(refund) = repo::get_refund(app.store.as_ref(), &out_refund_no).await?
                else {
                    return Ok(Attempt::Done(()));
                };
                if refund.value.status != RefundStatus::Pending
                    || a.value.out_refund_no.as_ref() != Some(&out_refund_no)
                {
                    return Ok(Attempt::Done(())); // a notification or a person moved it on
                }
                let now = app.clock.now_ms();
                let mut na = a.value.clone();
                let _ = na.refund_failed(now);
                let mut nr = refund.value.clone();
                nr.status = RefundStatus::Failed;
                nr.updated_at_ms = now;
                let mut batch = Batch::new();
                batch.update_aftersale(&a, &na);
                batch.update_refund(&refund, &nr);
                Ok(Attempt::Commit(batch, ()))
            })
            .await?;
            // The dead letter says what the merchant can do about it.
            Err(TaskError::Permanent(format!(
                "{msg}; after-sale {id} reads REFUND_FAILED (unless its refund moved on \
                 meanwhile): approve it again once the cause is \
                 fixed, or — if WeChat Pay cannot refund it online (USER_ACCOUNT_ABNORMAL, \
                 TRADE_OVERDUE) — pay the user back another way and record it with \
                 /admin/aftersaleSync {{action: mark_refunded}}"
            )))
        }
        Err(e) => Err(e),
    }
}

/// How long an issued refund waits for its notification before the schedule asks WeChat
/// (`refundquery`); also how long one WeChat said is still processing waits to be asked again.
const REFUND_NOTIFY_GRACE_MS: i64 = 10 * 60_000;
/// At most this many refunds are asked about per run (one `refundquery` each).
const REFUND_SWEEP_MAX: usize = 50;
/// At most this many REFUNDING after-sales are read per run (public so tests can build a
/// backlog longer than one run reads).
pub const REFUND_SWEEP_READ: usize = 500;

#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct RefundSweepReport {
    /// REFUNDING after-sales read (each once a turn; see [`sweep_refunds`]).
    pub checked: usize,
    /// Asked about with `refundquery`.
    pub asked: usize,
    /// Settled from WeChat's answer: their notification never came.
    pub settled: usize,
    /// Still processing at WeChat, or not known to it yet: asked again on a later turn, once
    /// the grace has passed again.
    pub pending: usize,
    /// The question or its answer failed (or did not match ours): asked again on a later
    /// turn, once the grace has passed again.
    pub failed: usize,
}

/// Refunds whose notification never came. WeChat Pay reports a refund's outcome only by its
/// notification or `refundquery` (WECHAT_PAY_V2.md §5), and a notification can be lost for
/// good — a wrong `WXPAY_REFUND_NOTIFY_URL`, or our `FAIL` answers outlasting WeChat's
/// retries — which left the after-sale REFUNDING, its amount held and `refunded_fee` short,
/// with nobody told. On each schedule run, refunds of after-sales REFUNDING for longer than
/// [`REFUND_NOTIFY_GRACE_MS`] (WeChat Pay refunds we issued; WeChat refunds a fund_type=1
/// order itself, and [`sync_to_wechat`] reads those back) not heard of (nor asked about)
/// within that grace either are asked about by their `out_refund_no`, and WeChat's answer is
/// applied exactly as its notification would have been
/// ([`super::pay_callback::settle_refund`]): SUCCESS refunded, CHANGE held for a person,
/// REFUNDCLOSE failed. `PROCESSING`, or a question that fails, leaves it for a later turn.
///
/// The REFUNDING after-sales are taken in turn ([`Rotation`](crate::store::rotation::Rotation)):
/// in creation order from right after the one the last run looked at, round to the start, at
/// most [`REFUND_SWEEP_READ`] read and [`REFUND_SWEEP_MAX`] asked about a run. Each run used
/// to read the 500 oldest and ask the least recently heard of among them, so 500 that never
/// settle — fund_type=1 ones WeChat refunds, refunds processing for days, ones just asked —
/// kept every later one from ever being read: its lost notification never made up for. Now
/// every REFUNDING after-sale is read once a turn, and a turn takes at most one run per
/// [`REFUND_SWEEP_MAX`] of them (a run stops only at a bound, the turn's end, or the
/// deadline), however many never settle. The order asked in is the turn's, not "least
/// recently heard of first": that is safe because each one is asked at most once a turn and
/// not again within the grace of its last question, so a refund WeChat keeps processing
/// costs one question a turn and cannot crowd out the rest.
///
/// No after-sale is read once `deadline` has passed: `false` with the report then, and the
/// next run goes on from there (each `refundquery` can take the client's whole timeout, so 50
/// of them used to run the schedule past orderSync's Lambda timeout, and the phases after
/// this one never ran). A store error ends the run with it; the after-sale being read then
/// waits for the next turn.
pub async fn sweep_refunds(
    app: &App,
    deadline: crate::time::Deadline,
) -> Result<(RefundSweepReport, bool), ApiError> {
    let mut report = RefundSweepReport::default();
    let store = app.store.as_ref();
    let now = app.clock.now_ms();
    let due_before = now - REFUND_NOTIFY_GRACE_MS;
    let mut turn = repo::aftersale_rotation(
        store,
        "refunds",
        AfterSaleStatus::Refunding,
        None,
        due_before,
    )
    .await?;
    // Whether the run got through its share; checked before each read, so every after-sale
    // handed out by the turn is handled.
    let outcome: Result<bool, ApiError> = loop {
        if report.checked == REFUND_SWEEP_READ || report.asked == REFUND_SWEEP_MAX {
            break Ok(true);
        }
        let rec = match turn.next_before(store, deadline).await {
            Ok(Next::Record(rec)) => rec,
            Ok(Next::Stop { finished }) => break Ok(finished),
            Err(e) => break Err(e.into()),
        };
        report.checked += 1;
        let a = match repo::versioned::<AfterSale>(&rec) {
            Ok(a) => a.value,
            Err(e) => {
                tracing::error!(id = rec.id, error = %e, "refund sweep: unreadable after-sale; skipped");
                continue;
            }
        };
        let Some(no) = a.out_refund_no.as_ref() else {
            continue; // refunded by WeChat (fund_type=1): no refund of ours to ask about
        };
        let refund = match repo::get_refund(store, no).await {
            Ok(Some(refund)) => refund,
            Ok(None) => continue,
            Err(e) => break Err(e.into()),
        };
        if refund.value.last_seen_ms() > due_before {
            continue; // heard of (or asked) within the grace: next turn
        }
        match ask_about_refund(app, &a, &refund).await {
            SweepOutcome::Skipped => continue,
            SweepOutcome::Settled => report.settled += 1,
            SweepOutcome::Pending => report.pending += 1,
            SweepOutcome::Failed => report.failed += 1,
            SweepOutcome::Moved => {}
        }
        report.asked += 1;
    };
    turn.save(store, app.clock.now_secs()).await;
    let finished = outcome?;
    if report.settled > 0 {
        tracing::warn!(
            settled = report.settled,
            "refund sweep settled refunds whose notification never came"
        );
    }
    Ok((report, finished))
}

/// What asking WeChat about one refund came to.
enum SweepOutcome {
    /// Not a WeChat Pay refund of ours: not asked.
    Skipped,
    Settled,
    /// Settled meanwhile by its notification (or the after-sale refunded by another refund).
    Moved,
    Pending,
    Failed,
}

/// `refundquery` for `a`'s refund, and its answer applied as the notification would be.
async fn ask_about_refund(
    app: &App,
    a: &AfterSale,
    refund: &repo::Versioned<RefundRecord>,
) -> SweepOutcome {
    use super::pay_callback::{settle_refund, RefundApplyError, ReportedBy, Settled};
    use crate::pay::types::RefundStatus as Wx;
    let no = &refund.value.out_refund_no;
    match repo::get_order(app.store.as_ref(), &a.out_trade_no).await {
        Ok(Some(o)) if o.value.fund_type == FundType::Direct => {}
        Ok(_) => return SweepOutcome::Skipped,
        Err(e) => {
            tracing::warn!(out_refund_no = %no, error = %e, "refund sweep: order unreadable; next run");
            return SweepOutcome::Failed;
        }
    }
    let answer = app
        .pay
        .refund_query(crate::pay::client::RefundRef::OutRefundNo(no.clone()))
        .await;
    let outcome = match answer {
        Err(e) => {
            tracing::warn!(out_refund_no = %no, aftersale_id = %a.id, refund = refund.value.status.as_str(), error = %e, "refund sweep: refundquery failed; asked again next time");
            SweepOutcome::Failed
        }
        Ok(resp) => match refund_report(&resp, no) {
            None => {
                tracing::warn!(security = true, out_refund_no = %no, "refund sweep: refundquery answered without this refund or its order's fields; asked again next time");
                SweepOutcome::Failed
            }
            Some(r) if !matches!(r.status, Wx::Success | Wx::Change | Wx::RefundClose) => {
                tracing::info!(out_refund_no = %no, status = %r.status, "refund sweep: WeChat is still processing the refund");
                SweepOutcome::Pending
            }
            Some(r) => match settle_refund(app, &r, ReportedBy::Query).await {
                Ok(Settled::Applied) => return SweepOutcome::Settled,
                Ok(Settled::Superseded) => return SweepOutcome::Moved,
                // A repeat: our record has this outcome, yet the after-sale is REFUNDING.
                Ok(Settled::Unchanged) => SweepOutcome::Moved,
                // Kept as evidence and logged.
                Err(RefundApplyError::Mismatch(_)) => SweepOutcome::Failed,
                Err(RefundApplyError::Unavailable(why)) => {
                    tracing::warn!(out_refund_no = %no, why, "refund sweep: could not store WeChat's answer; next run");
                    return SweepOutcome::Failed;
                }
            },
        },
    };
    // Not settled: it waits another grace period, and the others get their turn.
    let mut next = refund.value.clone();
    next.checked_at_ms = Some(app.clock.now_ms());
    let mut batch = Batch::new();
    batch.update_refund(refund, &next);
    match batch.commit(app.store.as_ref()).await {
        Ok(()) => {}
        // It moved meanwhile (the refund task, a notification): heard of, then.
        Err(e) if e.is_conflict() => {}
        Err(e) => {
            tracing::warn!(out_refund_no = %no, error = %e, "refund sweep: could not note the question");
        }
    }
    outcome
}

/// Our refund `no` in a `refundquery` answer, with its order's fields, as a report; `None`
/// if the answer lacks it or them.
fn refund_report(
    resp: &crate::pay::client::RefundQueryResponse,
    no: &crate::domain::OutRefundNo,
) -> Option<super::pay_callback::RefundReport> {
    let r = resp
        .refunds
        .iter()
        .find(|r| r.out_refund_no == no.as_str())?;
    Some(super::pay_callback::RefundReport {
        out_trade_no: OutTradeNo::parse(resp.out_trade_no.as_deref()?).ok()?,
        out_refund_no: no.clone(),
        transaction_id: resp.transaction_id.clone()?,
        refund_id: r.refund_id.clone(),
        total_fee: resp.total_fee?,
        refund_fee: r.refund_fee,
        status: r.refund_status.clone(),
        success_time_ms: r.success_time_ms,
        recv_account: r.refund_recv_account.clone(),
        request_source: None,
    })
}

/// How long an after-sale waits, after its last change, before the schedule asks WeChat
/// whether it refunded it (its push may still come).
const WECHAT_REFUND_GRACE_MS: i64 = 10 * 60_000;
/// After-sales read per status per run, and of those asked about (one `ecaftersale/get`
/// each): bounded per status, so no status crowds out the others.
const WECHAT_REFUND_SWEEP_READ: usize = 100;
const WECHAT_REFUND_SWEEP_ASK: usize = 10;
/// How long after its application a rejected after-sale is still asked about: WeChat's
/// platform may rule for the user after the merchant's rejection (its arbitration window is
/// UNVERIFIED; a month is taken as a generous bound).
const WECHAT_REFUND_REJECTED_WINDOW_MS: i64 = 30 * 24 * 3600 * 1000;
/// How long an approved after-sale of a secondary-merchant order (REFUNDING: WeChat pays its
/// refund) waits, after its last change, before the schedule reads it back. Until then its
/// sync task ([`sync_to_wechat`]) reads WeChat's after-sale itself, again and again while
/// WeChat is still refunding (`Pending` is a retry), and its retries — the outbox's
/// [`MAX_ATTEMPTS`](crate::outbox::MAX_ATTEMPTS) claims, back-off from 2 s doubling to 15 min,
/// ±20 % — span under 57 minutes: past an hour the task has stopped (dead-lettered), and
/// nothing else would read it. Reading one sooner would be harmless (what is applied is
/// idempotent against the task and a late push) but would only repeat the task's own
/// `ecaftersale/get`, taking questions from the after-sales that need them.
const WECHAT_REFUNDING_GRACE_MS: i64 = 60 * 60_000;

#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct WeChatRefundSweepReport {
    /// After-sales read.
    pub checked: usize,
    /// Of component orders (REJECTED ones: secondary-merchant orders only), asked about with
    /// `ecaftersale/get`.
    pub asked: usize,
    /// Refunds WeChat made (secondary-merchant orders) recorded now: their push never came.
    pub recorded: usize,
    /// Cancelled by the user at WeChat, cancelled here now: their push never came.
    pub cancelled: usize,
    /// Edited by the user at WeChat while awaiting the merchant, WeChat's terms taken now.
    pub adopted: usize,
    /// Return parcels the user entered at WeChat, recorded here now (RETURNING).
    pub returned: usize,
    /// Approved here (REFUNDING, a secondary-merchant order), cancelled or closed at WeChat
    /// before its refund — or a return awaiting its goods (AWAITING_RETURN) that WeChat
    /// closed: CANCELLED now, nothing refunded, the merchant told.
    pub closed: usize,
    /// Approved here (REFUNDING, a secondary-merchant order) and accepted at WeChat, which
    /// could not pay it (16, 18): held as REFUND_ABNORMAL now, a person paged.
    pub held: usize,
    /// The question failed (or its answer could not be stored): asked again next turn.
    pub failed: usize,
    /// Of paid orders whose `shop/order/add` answer was lost and that WeChat answers it never
    /// made (`shop/order/get` by our number: 1010011, kept as a `component_order_missing`
    /// event), or whose component order WeChat cancelled while ours is paid (a payment after
    /// the close, kept as an `order_event_mismatch` event): not asked about — WeChat holds no
    /// after-sale of theirs, so `ecaftersale/get` could only fail.
    pub not_at_wechat: usize,
}

/// What WeChat holds of an order, as far as the sweep is concerned (see [`component_of`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Component {
    /// WeChat was never asked to make its component order (or the order is gone).
    None,
    /// WeChat holds none that takes after-sales: asked, its answer lost, and it made none (a
    /// `component_order_missing` event), or it cancelled the order while ours is paid (an
    /// `order_event_mismatch` event: [`super::audit_callback::known_cancelled_while_paid`]).
    Missing,
    /// WeChat holds its component order (its id stored), or may (its `add` answer lost and
    /// nothing says otherwise yet).
    Held { secondary: bool },
}

/// What WeChat holds of order `no`: one store read for the order, one for its
/// paid-while-cancelled event, and — only for one whose `shop/order/add` answer was lost (no
/// id stored) — one for its `component_order_missing` event.
pub(super) async fn component_of(
    app: &App,
    no: &OutTradeNo,
) -> Result<Component, crate::store::StoreError> {
    let store = app.store.as_ref();
    let Some(order) = repo::get_order(store, no).await? else {
        return Ok(Component::None);
    };
    let order = order.value;
    if !order.at_wechat().component_order {
        return Ok(Component::None);
    }
    if order.wx_order_id.is_none()
        && repo::get_event(
            store,
            super::shop_orders::COMPONENT_ORDER_MISSING_EVENTS,
            no.as_str(),
        )
        .await?
        .is_some()
    {
        tracing::info!(out_trade_no = %no, "sweep: WeChat never made this paid order's component order (component_order_missing): WeChat is not asked about it or its after-sales");
        return Ok(Component::Missing);
    }
    if super::audit_callback::known_cancelled_while_paid(app, no).await? {
        tracing::info!(out_trade_no = %no, "sweep: WeChat cancelled this order while ours is paid (order_event_mismatch): WeChat is not asked about it or its after-sales");
        return Ok(Component::Missing);
    }
    Ok(Component::Held {
        secondary: order.fund_type == FundType::SecondaryMerchant,
    })
}

/// What reading one after-sale back from WeChat came to (see [`sweep_wechat_refunds`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Applied {
    Nothing,
    Recorded,
    Cancelled,
    Adopted,
    Returned,
    Closed,
    Held,
}

/// What the user did in WeChat's own order centre, and what WeChat did on its own, whose push
/// never came (our callback down longer than WeChat's retries). Nothing else reads those
/// back: the sync task reads WeChat's after-sale only once the merchant approves, and
/// [`sweep_refunds`] asks WeChat Pay about our own refunds only. So a refund WeChat made of a
/// secondary-merchant order left ours REQUESTED, AWAITING_RETURN, RETURNING or REJECTED with
/// the order's refunded amount short (a fully refunded order still shippable); a request the
/// user cancelled there stayed open here, its amount held on the order; an edit left ours on
/// the old terms; a return parcel entered there was never seen by the merchant — for good.
/// Likewise a refund the merchant approved of a secondary-merchant order (REFUNDING: WeChat
/// pays it) whose pushes were both lost: its sync task reads WeChat's after-sale back only
/// while the task lives, so one WeChat was still refunding when the task dead-lettered stayed
/// REFUNDING, the order's refunded amount short, with only the dead letter to tell.
///
/// Each run, after-sales in those states (rejected ones for [`WECHAT_REFUND_REJECTED_WINDOW_MS`]
/// after their application) unchanged for [`WECHAT_REFUND_GRACE_MS`] — and REFUNDING ones
/// unchanged for [`WECHAT_REFUNDING_GRACE_MS`], past their sync task's retries — are taken in
/// turn ([`Rotation`](crate::store::rotation::Rotation): on from where the last run stopped, so
/// after-sales WeChat never answers about do not starve the rest), at most
/// [`WECHAT_REFUND_SWEEP_READ`] read and [`WECHAT_REFUND_SWEEP_ASK`] asked about per state.
/// Those of orders in the trading component (REJECTED and REFUNDING ones: secondary-merchant
/// orders only — the only ones WeChat may still refund, or refunds; an approved refund of an
/// order whose money we hold is WeChat Pay's, asked about by [`sweep_refunds`], never here)
/// have WeChat's after-sale read, and what it shows is applied by the code the lost push (or
/// the sync task) would have run ([`wechat_state_of`]): a refund done recorded (`recorded`;
/// once — a late push, the task replayed or another run finds it recorded), a user cancel
/// applied (`cancelled`), other terms awaiting the merchant adopted (`adopted`), a return
/// waybill recorded (`returned`), an approved one cancelled or closed at WeChat before its
/// refund CANCELLED (`closed`), one WeChat accepted and could not pay held as REFUND_ABNORMAL
/// for a person (`held`); one WeChat is still refunding (or whose acceptance never reached
/// WeChat: the dead letter's replay sends it) is asked again next turn. Those of a paid order
/// WeChat never made a component order of (its `add` answer lost, then `shop/order/get` by
/// our number: 1010011, kept as a `component_order_missing` event), or of a paid order whose
/// component order WeChat cancelled (a payment after the close, kept as an
/// `order_event_mismatch` event), are not asked about (`not_at_wechat`): WeChat holds none of
/// its after-sales, and each `ecaftersale/get` could only fail, run after run. No question is
/// started once `deadline` has passed: `false` with the report then. (The phase keeps its
/// name, `wechat_refunds`, which the schedule and the admin API use.)
pub async fn sweep_wechat_refunds(
    app: &App,
    deadline: crate::time::Deadline,
) -> Result<(WeChatRefundSweepReport, bool), ApiError> {
    let mut report = WeChatRefundSweepReport::default();
    if !super::common::component_on(app) {
        return Ok((report, true));
    }
    let store = app.store.as_ref();
    let now = app.clock.now_ms();
    let quiet_since = now - WECHAT_REFUND_GRACE_MS;
    // Per run: of an order, whether WeChat holds (or may hold) its component order, and
    // whether it is a secondary-merchant one.
    let mut component = std::collections::HashMap::new();
    for status in [
        AfterSaleStatus::Requested,
        AfterSaleStatus::AwaitingReturn,
        AfterSaleStatus::Returning,
        AfterSaleStatus::Rejected,
        AfterSaleStatus::Refunding,
    ] {
        let from =
            (status == AfterSaleStatus::Rejected).then(|| now - WECHAT_REFUND_REJECTED_WINDOW_MS);
        let quiet_since = if status == AfterSaleStatus::Refunding {
            now - WECHAT_REFUNDING_GRACE_MS
        } else {
            quiet_since
        };
        let name = format!("wechat_refunds/{}", status.as_str());
        let mut turn = repo::aftersale_rotation(store, &name, status, from, quiet_since).await?;
        let (mut read, mut asked) = (0, 0);
        let outcome: Result<bool, ApiError> = loop {
            if read == WECHAT_REFUND_SWEEP_READ || asked == WECHAT_REFUND_SWEEP_ASK {
                break Ok(true);
            }
            let rec = match turn.next_before(store, deadline).await {
                Ok(Next::Record(rec)) => rec,
                Ok(Next::Stop { finished }) => break Ok(finished),
                Err(e) => break Err(e.into()),
            };
            read += 1;
            report.checked += 1;
            let a = match repo::versioned::<AfterSale>(&rec) {
                Ok(a) => a.value,
                Err(e) => {
                    tracing::error!(id = rec.id, error = %e, "WeChat after-sale sweep: unreadable after-sale; skipped");
                    continue;
                }
            };
            if a.updated_at_ms > quiet_since || !a.mirrored_to_wechat() {
                continue;
            }
            let held = match component.get(&a.out_trade_no) {
                Some(known) => *known,
                None => match component_of(app, &a.out_trade_no).await {
                    Ok(known) => {
                        component.insert(a.out_trade_no.clone(), known);
                        known
                    }
                    Err(e) => break Err(e.into()),
                },
            };
            let secondary = match held {
                Component::Held { secondary } => secondary,
                Component::None => continue,
                Component::Missing => {
                    report.not_at_wechat += 1;
                    continue;
                }
            };
            // Only WeChat may still refund a rejected one, and only WeChat refunds an approved
            // one, of a secondary-merchant order; an approved refund of ours is WeChat Pay's,
            // asked about by `sweep_refunds`.
            if matches!(
                status,
                AfterSaleStatus::Rejected | AfterSaleStatus::Refunding
            ) && !secondary
            {
                continue;
            }
            asked += 1;
            report.asked += 1;
            match wechat_state_of(app, &a, secondary).await {
                Ok(Applied::Nothing) => {}
                Ok(Applied::Recorded) => report.recorded += 1,
                Ok(Applied::Cancelled) => report.cancelled += 1,
                Ok(Applied::Adopted) => report.adopted += 1,
                Ok(Applied::Returned) => report.returned += 1,
                Ok(Applied::Closed) => report.closed += 1,
                Ok(Applied::Held) => report.held += 1,
                Err(e) => {
                    report.failed += 1;
                    tracing::warn!(aftersale_id = %a.id, error = %e, "WeChat after-sale sweep: WeChat's after-sale not read; next turn");
                }
            }
        };
        turn.save(store, app.clock.now_secs()).await;
        if !outcome? {
            return Ok((report, false));
        }
    }
    if report.not_at_wechat > 0 {
        tracing::info!(
            not_at_wechat = report.not_at_wechat,
            "WeChat after-sale sweep: after-sales of paid orders WeChat never made a component \
             order of, or cancelled while paid here (component_order_missing, \
             order_event_mismatch events), not asked about: WeChat holds none of theirs"
        );
    }
    if report.recorded
        + report.cancelled
        + report.adopted
        + report.returned
        + report.closed
        + report.held
        > 0
    {
        tracing::warn!(
            recorded = report.recorded,
            cancelled = report.cancelled,
            adopted = report.adopted,
            returned = report.returned,
            closed = report.closed,
            held = report.held,
            "WeChat after-sale sweep applied what WeChat shows: those pushes never came"
        );
    }
    Ok((report, true))
}

/// How far back the first run looks for after-sales opened in WeChat (there is no mark yet):
/// a request the merchant has not answered waits for days there, so a week covers those a
/// deploy or an outage could have missed.
const WECHAT_NEW_AFTERSALES_LOOKBACK_MS: i64 = 7 * 24 * 3600 * 1000;
/// `ecaftersale/get_list` pages per run (50 after-sales each, WeChat's most) and after-sales
/// we do not know read with `ecaftersale/get` per run.
const WECHAT_NEW_AFTERSALES_PAGES: usize = 10;
const WECHAT_NEW_AFTERSALES_ASK: usize = 20;
const WECHAT_LIST_LIMIT: u32 = 50;
/// The longest creation-time window listed at once: a week back is taken a day at a time, so
/// the after-sales of ours looked up for a window stay a day's worth.
const WECHAT_NEW_AFTERSALES_WINDOW_MS: i64 = 24 * 3600 * 1000;
/// How much earlier than WeChat's creation time ours may have been made: ours is stored
/// before `ecaftersale/add` is called, which retries for hours at most.
const WECHAT_ADD_SLACK_MS: i64 = 24 * 3600 * 1000;
/// The [`kv`](crate::store::kv) entry that keeps where the listing got to, and how long it
/// lasts unused (then the next run starts [`WECHAT_NEW_AFTERSALES_LOOKBACK_MS`] back again).
const WECHAT_NEW_AFTERSALES_MARK: &str = "mark/wechat_new_aftersales";
const WECHAT_NEW_AFTERSALES_MARK_TTL_SECS: i64 = 30 * 24 * 3600;

/// Where [`sweep_wechat_new_aftersales`] got to: the creation-time window being listed
/// (`end` fixed once listing it began, so its pages do not shift under new after-sales) and
/// how many of its after-sales were handled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct ListingMark {
    begin_ms: i64,
    #[serde(default)]
    end_ms: Option<i64>,
    #[serde(default)]
    offset: u32,
}

#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct WeChatNewAfterSaleReport {
    /// After-sales WeChat listed (created in the window, past the grace).
    pub listed: usize,
    /// Of those, not known here: read with `ecaftersale/get`.
    pub asked: usize,
    /// Opened by the user in WeChat's order centre, their push lost: imported (REQUESTED).
    pub imported: usize,
    /// Refunded by WeChat already (secondary-merchant orders), their pushes lost: recorded.
    pub recorded: usize,
    /// Cancelled or closed at WeChat before we learnt of them: nothing to do.
    pub ignored: usize,
    /// The listing or a read failed (or its outcome could not be stored): the next run
    /// goes on from the same place.
    pub failed: usize,
}

/// After-sales the user opened in WeChat's own order centre whose `aftersale_new_order` push
/// never came (our callback down longer than WeChat's retries). Everything else that reads
/// WeChat's after-sales back ([`sweep_wechat_refunds`], the approval's check) starts from ours,
/// so such a request was never seen here: the merchant could not decide it (WeChat counts the
/// merchant overdue), its amount was not held against the order, and — for a
/// secondary-merchant order that WeChat then refunded on its own, its
/// `aftersale_refund_success` push lost too — the money left without our books showing it.
///
/// Each run lists WeChat's after-sales by creation time (`ecaftersale/get_list`), from where
/// the last run got to (a week back the first time, a day at a time) up to
/// [`WECHAT_REFUND_GRACE_MS`] ago — younger ones are left to their push. WeChat lists its ids
/// only: those of ours made in the window are read from the store once per window, so ours
/// cost no call. One not known here is read
/// (`ecaftersale/get`, at most [`WECHAT_NEW_AFTERSALES_ASK`] a run) and handled as its push
/// would have been: imported REQUESTED so the merchant decides it (`imported`), or, already
/// refunded by WeChat, recorded as the `aftersale_refund_success` push would
/// (`recorded`); one cancelled or closed there is left alone (`ignored`). At most [`WECHAT_NEW_AFTERSALES_PAGES`] pages a run, none started once `deadline`
/// has passed: `false` with the report then, and the next run resumes at the same place
/// (the window's end is kept, so its pages do not shift).
pub async fn sweep_wechat_new_aftersales(
    app: &App,
    deadline: crate::time::Deadline,
) -> Result<(WeChatNewAfterSaleReport, bool), ApiError> {
    let mut report = WeChatNewAfterSaleReport::default();
    if !super::common::component_on(app) {
        return Ok((report, true));
    }
    let store = app.store.as_ref();
    let now = app.clock.now_ms();
    let saved = crate::store::kv::get(store, WECHAT_NEW_AFTERSALES_MARK).await?;
    let start = match &saved {
        Some(entry) => serde_json::from_str::<ListingMark>(&entry.value).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "WeChat new after-sale sweep: unreadable mark; listing from a week back");
            ListingMark::default()
        }),
        None => ListingMark::default(),
    };
    let mut mark = if start.begin_ms == 0 {
        ListingMark {
            begin_ms: now - WECHAT_NEW_AFTERSALES_LOOKBACK_MS,
            ..ListingMark::default()
        }
    } else {
        start
    };
    let mut pages = 0;
    // WeChat's ids of ours made in the window: WeChat lists its ids only, and those need no
    // call. Read once per window, when first needed.
    let mut ours_in_window: Option<std::collections::HashSet<u64>> = None;
    let finished: Result<bool, ApiError> = 'window: loop {
        let end = *mark.end_ms.get_or_insert(
            (now - WECHAT_REFUND_GRACE_MS).min(
                mark.begin_ms
                    .saturating_add(WECHAT_NEW_AFTERSALES_WINDOW_MS - 1),
            ),
        );
        if end < mark.begin_ms {
            mark.end_ms = None;
            break Ok(true);
        }
        if pages == WECHAT_NEW_AFTERSALES_PAGES || deadline.passed() {
            break Ok(false);
        }
        pages += 1;
        let req = crate::shop::aftersale::EcAfterSaleListRequest {
            begin_create_time: Some(mark.begin_ms),
            end_create_time: Some(end),
            offset: mark.offset,
            limit: WECHAT_LIST_LIMIT,
            ..Default::default()
        };
        let page = match app.wx.ecaftersale_get_list(&req).await {
            Ok(page) => page,
            Err(e) => {
                report.failed += 1;
                tracing::warn!(error = %e, "WeChat new after-sale sweep: WeChat did not list its after-sales; next run");
                break Ok(true);
            }
        };
        for listed in &page.after_sales_orders {
            if report.asked == WECHAT_NEW_AFTERSALES_ASK || deadline.passed() {
                break 'window Ok(false);
            }
            report.listed += 1;
            if ours_in_window.is_none() {
                match wechat_ids_of_ours(store, mark.begin_ms - WECHAT_ADD_SLACK_MS, end).await {
                    Ok(ids) => ours_in_window = Some(ids),
                    Err(e) => break 'window Err(e.into()),
                }
            }
            if listed
                .aftersale_id
                .is_some_and(|id| ours_in_window.as_ref().is_some_and(|o| o.contains(&id)))
            {
                mark.offset += 1;
                continue;
            }
            match new_at_wechat(app, listed, &mut report).await {
                Ok(()) => mark.offset += 1,
                Err(e) => {
                    report.failed += 1;
                    tracing::warn!(wx_aftersale_id = ?listed.aftersale_id, error = %e, "WeChat new after-sale sweep: not handled; next run");
                    break 'window Ok(false);
                }
            }
        }
        if !page.has_more || page.after_sales_orders.is_empty() {
            // The window is done: the next begins right after it, its end fixed then.
            mark = ListingMark {
                begin_ms: end + 1,
                end_ms: None,
                offset: 0,
            };
            ours_in_window = None;
        }
    };
    if saved.is_none() || mark != start {
        let value = serde_json::to_string(&mark).unwrap_or_default();
        let until = app.clock.now_secs() + WECHAT_NEW_AFTERSALES_MARK_TTL_SECS;
        let saved_version = saved.as_ref().map(|e| e.version);
        match crate::store::kv::put_if(
            store,
            WECHAT_NEW_AFTERSALES_MARK,
            &value,
            until,
            saved_version,
        )
        .await
        {
            // Another run moved the mark meanwhile: either place will do (importing is
            // idempotent).
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "WeChat new after-sale sweep: where it got to not kept; the next run lists the same again");
            }
        }
    }
    if report.imported + report.recorded > 0 {
        tracing::warn!(
            imported = report.imported,
            recorded = report.recorded,
            "WeChat new after-sale sweep found after-sales opened in WeChat whose push never came"
        );
    }
    finished.map(|f| (report, f))
}

/// WeChat's ids of our after-sales made between `from_ms` and `to_ms` (by our creation time,
/// every status — but a REFUNDED one is listed by when it was refunded
/// ([`repo::aftersales_refunded_between`]'s order): one made in the window and refunded after
/// it is not among these, and is found among ours by its ids instead (`ours_by_ids`, store
/// reads, no call to WeChat)).
async fn wechat_ids_of_ours(
    store: &dyn crate::store::Store,
    from_ms: i64,
    to_ms: i64,
) -> Result<std::collections::HashSet<u64>, crate::store::StoreError> {
    use crate::store::{Index, Kind, Query};
    let mut ids = std::collections::HashSet::new();
    for status in AfterSaleStatus::ALL {
        let mut q = Query::new(Kind::AfterSale, Index::Status(status.as_str().to_owned()));
        q.sort_min = Some(from_ms);
        q.sort_max = Some(to_ms);
        loop {
            let page = store.query(q.clone()).await?;
            for rec in &page.records {
                match repo::versioned::<AfterSale>(rec) {
                    Ok(a) => ids.extend(a.value.wx_aftersale_id),
                    // Unreadable: its WeChat id, if any, is then read from WeChat instead.
                    Err(e) => tracing::warn!(id = rec.id, error = %e, "unreadable after-sale"),
                }
            }
            match page.next {
                Some(next) => q.cursor = Some(next),
                None => break,
            }
        }
    }
    Ok(ids)
}

/// One after-sale WeChat listed: nothing if ours already; else read and handled as its lost
/// push would have been (see [`sweep_wechat_new_aftersales`]).
async fn new_at_wechat(
    app: &App,
    listed: &crate::shop::aftersale::EcAfterSaleRef,
    report: &mut WeChatNewAfterSaleReport,
) -> Result<(), ApiError> {
    let store = app.store.as_ref();
    let Some(wx_id) = listed.aftersale_id else {
        return Ok(());
    };
    if ours_by_ids(store, listed.out_aftersale_id.as_deref(), wx_id)
        .await?
        .is_some()
    {
        return Ok(());
    }
    report.asked += 1;
    let wx = app
        .wx
        .ecaftersale_get(&crate::shop::types::AfterSaleKey::Id(wx_id))
        .await
        .map_err(super::shop_orders::wx_error)?;
    let id = match find_ours(app, &wx).await? {
        Ours::Known(_) | Ours::Conflicting => return Ok(()),
        Ours::Unknown => imported_id(wx_id)?,
    };
    if WeChatRefund::of(wx.status) == WeChatRefund::Done {
        if record_wechat_refund(app, &id, &wx).await? {
            report.recorded += 1;
            tracing::warn!(wx_aftersale_id = wx_id, "a refund WeChat made of an after-sale we never heard of was found by the sweep (both its pushes were lost)");
        }
        return Ok(());
    }
    if Standing::of(wx.status) == Standing::Closed {
        report.ignored += 1;
        return Ok(());
    }
    if import_new(app, &wx, "").await? {
        report.imported += 1;
        tracing::warn!(aftersale_id = %id, wx_status = wx.status, "an after-sale opened in WeChat whose push never came was imported by the sweep");
    }
    Ok(())
}

/// WeChat's after-sale of ours `a` (read back: by WeChat's id, or ours if the id was never
/// stored), and what it shows applied as its push would have: a refund it made of a
/// secondary-merchant order recorded ([`record_wechat_refund`]); a user cancel
/// ([`cancel_as_user_did`]); other type or amount while it waits for the merchant and ours
/// is REQUESTED ([`adopt_wechat_terms`]; a reason-only edit is left to its push or the
/// approval's read-back: no money turns on it); a return waybill while ours awaits the return
/// ([`parcel_as_user_sent`]), or that return closed there ([`return_closed_at_wechat`]); ours
/// approved (REFUNDING) of a secondary-merchant order and not
/// refunded there, as its sync task would have ([`approved_at_wechat`]).
async fn wechat_state_of(app: &App, a: &AfterSale, secondary: bool) -> Result<Applied, ApiError> {
    let key = match a.wx_aftersale_id {
        Some(wx) => crate::shop::types::AfterSaleKey::Id(wx),
        None => crate::shop::types::AfterSaleKey::Out(a.id.to_string()),
    };
    let wx = match app.wx.ecaftersale_get(&key).await {
        Ok(wx) => wx,
        // Looked up by our id and refused: WeChat does not have it (never added), so nothing
        // happened to it there.
        Err(e @ crate::shop::WxError::Api { .. })
            if a.wx_aftersale_id.is_none() && e.kind() == crate::shop::WxErrorKind::Permanent =>
        {
            return Ok(Applied::Nothing);
        }
        Err(e) => return Err(super::shop_orders::wx_error(e)),
    };
    if secondary && WeChatRefund::of(wx.status) == WeChatRefund::Done {
        let recorded = record_wechat_refund(app, &a.id, &wx).await?;
        if recorded {
            tracing::warn!(aftersale_id = %a.id, wx_aftersale_id = wx.aftersale_id, was = a.status.as_str(), "a refund WeChat made was found by the sweep (its push never came)");
        }
        return Ok(if recorded {
            Applied::Recorded
        } else {
            Applied::Nothing
        });
    }
    let applied = match a.status {
        AfterSaleStatus::Requested
        | AfterSaleStatus::AwaitingReturn
        | AfterSaleStatus::Returning
            if wx.status == WX_USER_CANCELLED =>
        {
            cancel_as_user_did(app, &a.id)
                .await?
                .then_some(Applied::Cancelled)
        }
        AfterSaleStatus::Requested
            if wx.status == WX_AWAITING_MERCHANT
                && (kind_of(wx.kind) != Some(a.kind) || wx.orderamt != a.amount) =>
        {
            (adopt_wechat_terms(app, &a.id, &wx).await? == Terms::Taken).then_some(Applied::Adopted)
        }
        AfterSaleStatus::AwaitingReturn if Standing::of(wx.status) == Standing::Closed => {
            return_closed_at_wechat(app, &a.id, wx.status)
                .await?
                .then_some(Applied::Closed)
        }
        AfterSaleStatus::AwaitingReturn => parcel_as_user_sent(app, &a.id, wx)
            .await?
            .then_some(Applied::Returned),
        AfterSaleStatus::Refunding if secondary => {
            approved_at_wechat(app, &a.id, wx.status).await?
        }
        _ => None,
    };
    if let Some(what) = applied {
        tracing::warn!(aftersale_id = %a.id, was = a.status.as_str(), applied = ?what, "the sweep applied what WeChat's after-sale shows (its push never came)");
    }
    Ok(applied.unwrap_or(Applied::Nothing))
}

/// Ours `id`, approved (REFUNDING) of a secondary-merchant order, read back from WeChat not
/// refunded (status `wx_status`): what its sync task would have done with it. Still refunding
/// there, or still waiting for the merchant's acceptance (its task dead-lettered before
/// `acceptrefund`: the dead letter's replay sends it): nothing. Cancelled or closed there:
/// CANCELLED as [`close_as_wechat_did`] has it. Accepted and not paid (16, 18): held as
/// REFUND_ABNORMAL for a person ([`hold_failed_platform_refund`]). A status that says none of
/// these is left to the task's dead letter, for a person.
async fn approved_at_wechat(
    app: &App,
    id: &AfterSaleId,
    wx_status: i64,
) -> Result<Option<Applied>, ApiError> {
    Ok(match WeChatRefund::of(wx_status) {
        WeChatRefund::Done | WeChatRefund::Pending => None,
        WeChatRefund::Failed => hold_failed_platform_refund(app, id, wx_status)
            .await?
            .then_some(Applied::Held),
        WeChatRefund::Refused if Standing::of(wx_status) == Standing::Closed => {
            close_as_wechat_did(app, id, wx_status, None)
                .await?
                .then_some(Applied::Closed)
        }
        WeChatRefund::Refused => None,
    })
}

/// What [`catch_up_order`] came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaughtUp {
    /// After-sales whose WeChat state was applied now (imported, refund recorded, cancel,
    /// terms, parcel): pushes that never came.
    pub applied: usize,
    /// What our after-sales approved and not refunded ask for: REFUNDING (refunds under way,
    /// which their notification, the refund task or [`sweep_refunds`] complete), and
    /// REFUND_FAILED or REFUND_ABNORMAL — our refunds that did not reach the user, each of
    /// which paged a person already when it got there (REFUND_ABNORMAL: a `refund_abnormal`
    /// event, from `CHANGE` or a platform refund WeChat could not pay; REFUND_FAILED: a
    /// `refund_closed` event from `REFUNDCLOSE`, or the refund task's dead letter when WeChat
    /// Pay refused it). WeChat's order reads refunded in full once our approval is mirrored,
    /// whatever became of the money, so these account for it too: a full-refund push does not
    /// page about them again.
    pub in_flight: Fen,
}

/// How many pages of one order's after-sales [`catch_up_order`] lists (50 each): an order
/// has one after-sale per line or so, so this bounds a list that never ends, nothing more.
const ORDER_CATCH_UP_PAGES: u32 = 4;

/// The schedule's after-sale sweeps for one order, now and without their grace period:
/// what the pushes about its after-sales would have told us, read back from WeChat. Called
/// when WeChat says the order went back in full (`open_product_order_refund`, whose body
/// names no after-sale and no amount), so that a refund WeChat made is recorded from
/// WeChat's after-sale, never from that push:
///
/// 1. WeChat's after-sales of the order (`ecaftersale/get_list` by our number) that we do
///    not hold are handled as [`sweep_wechat_new_aftersales`] handles them ([`new_at_wechat`]:
///    a refund WeChat made recorded, a request imported);
/// 2. ours that may have moved there are read back as [`sweep_wechat_refunds`] reads them
///    ([`wechat_state_of`]), REFUNDING ones of a secondary-merchant order too (WeChat pays
///    those).
///
/// Our own WeChat Pay refunds under way are not asked about here: WeChat's order reads 200
/// as soon as our approval is mirrored (`ecaftersale/acceptrefund`), before WeChat Pay has
/// paid, so they are the common case, not a lost push; their notification, or
/// [`sweep_refunds`] after its grace, settles them, and they count as
/// [`CaughtUp::in_flight`] — as do those that failed or are held (REFUND_FAILED,
/// REFUND_ABNORMAL), which paged a person on their own. Each step is the sweeps' own code,
/// idempotent, so a push repeated or a sweep running meanwhile records nothing twice. `Err`
/// when WeChat's after-sales could not be read: the caller answers 503 and WeChat pushes
/// again.
pub(super) async fn catch_up_order(app: &App, no: &OutTradeNo) -> Result<CaughtUp, ApiError> {
    let store = app.store.as_ref();
    let order = repo::get_order(store, no)
        .await?
        .ok_or_else(|| ApiError::not_found("ORDER_NOT_FOUND", format!("no order {no}")))?
        .value;
    let secondary = order.fund_type == FundType::SecondaryMerchant;
    let mut applied = 0;
    let mut news = WeChatNewAfterSaleReport::default();
    for page in 0..ORDER_CATCH_UP_PAGES {
        let req = crate::shop::aftersale::EcAfterSaleListRequest {
            out_order_id: Some(no.to_string()),
            offset: page * WECHAT_LIST_LIMIT,
            limit: WECHAT_LIST_LIMIT,
            ..Default::default()
        };
        let listed = app
            .wx
            .ecaftersale_get_list(&req)
            .await
            .map_err(super::shop_orders::wx_error)?;
        for one in &listed.after_sales_orders {
            new_at_wechat(app, one, &mut news).await?;
        }
        if !listed.has_more || listed.after_sales_orders.is_empty() {
            break;
        }
    }
    applied += news.imported + news.recorded;
    let ours = aftersales_of(app, &order).await?;
    for a in &ours {
        let read_back = match a.status {
            AfterSaleStatus::Requested
            | AfterSaleStatus::AwaitingReturn
            | AfterSaleStatus::Returning => true,
            AfterSaleStatus::Rejected | AfterSaleStatus::Refunding => secondary,
            _ => false,
        };
        if read_back && wechat_state_of(app, a, secondary).await? != Applied::Nothing {
            applied += 1;
        }
    }
    // Read again only when something was applied: otherwise nothing of ours moved.
    let ours = if applied > 0 {
        aftersales_of(app, &order).await?
    } else {
        ours
    };
    let in_flight = ours
        .iter()
        .filter(|a| {
            matches!(
                a.status,
                AfterSaleStatus::Refunding
                    | AfterSaleStatus::RefundFailed
                    | AfterSaleStatus::RefundAbnormal
            )
        })
        .map(|a| a.amount.get())
        .sum::<i64>();
    Ok(CaughtUp {
        applied,
        in_flight: Fen::new(in_flight).map_err(|e| ApiError::internal(e.to_string()))?,
    })
}

/// How long a sync task's claim on adding an after-sale at WeChat holds: past the WeChat
/// client's timeout (5 s by default) and its retry, so a claim outlives the call it guards.
const ADD_CLAIM_MS: i64 = 20_000;

/// Outbox task: mirror the after-sale's state to `shop/ecaftersale/*`. An approved refund of
/// a secondary-merchant order is then read back: accepting it made WeChat refund it, and
/// what WeChat says completes ours (the `aftersale_refund_success` event does the same; the
/// first to see it records it).
pub async fn sync_to_wechat(app: &App, id: &AfterSaleId) -> Result<(), TaskError> {
    let a = repo::get_aftersale(app.store.as_ref(), id)
        .await?
        .ok_or_else(|| TaskError::Permanent(format!("no after-sale {id}")))?;
    if !a.value.mirrored_to_wechat() {
        // A merchant's own refund about no line: WeChat's `ecaftersale/add` takes one product
        // line. Not sent, as a refund made by hand in the merchant platform is not.
        return Ok(());
    }
    let mut order = repo::get_order(app.store.as_ref(), &a.value.out_trade_no)
        .await?
        .ok_or_else(|| TaskError::Permanent("order vanished".into()))?;
    // The component order's id, learnt by our number if its `add` answer was lost; none at
    // WeChat: nothing to mirror the after-sale to.
    if order.value.wx_order_id.is_none() {
        if super::shop_orders::component_id(app, &order.value)
            .await?
            .is_none()
        {
            return Ok(());
        }
        // Stored just now: read again, so later writes are checked against that version.
        order = repo::get_order(app.store.as_ref(), &a.value.out_trade_no)
            .await?
            .ok_or_else(|| TaskError::Permanent("order vanished".into()))?;
    }
    let (a, wx_id) = match a.value.wx_aftersale_id {
        Some(wx) => (a.value, wx),
        // WeChat's component order is cancelled while ours is paid (a payment after the
        // close, kept for a person): WeChat takes no after-sale of it.
        None if super::audit_callback::known_cancelled_while_paid(
            app,
            &order.value.out_trade_no,
        )
        .await? =>
        {
            return not_at_wechat(app, &order.value, &a.value).await;
        }
        None => {
            let ours = a.value.clone();
            match add_at_wechat(app, &order.value, a).await? {
                Some(added) => added,
                None => return not_at_wechat(app, &order.value, &ours).await,
            }
        }
    };
    if !before_accepting(app, &order.value, &a, wx_id).await? {
        return Ok(());
    }
    super::shop_orders::aftersale_state(app, &order.value, &a, wx_id).await?;
    if order.value.fund_type != FundType::SecondaryMerchant
        || a.status != AfterSaleStatus::Refunding
    {
        return Ok(());
    }
    let wx = app
        .wx
        .ecaftersale_get(&crate::shop::types::AfterSaleKey::Id(wx_id))
        .await
        .map_err(wx_task_error)?;
    match WeChatRefund::of(wx.status) {
        WeChatRefund::Done => record_wechat_refund(app, id, &wx)
            .await
            .map(drop)
            .map_err(TaskError::from),
        WeChatRefund::Pending => Err(TaskError::Retry(format!(
            "after-sale {id}: WeChat is still refunding (its status {})",
            wx.status
        ))),
        WeChatRefund::Failed => hold_failed_platform_refund(app, id, wx.status)
            .await
            .map(drop)
            .map_err(TaskError::from),
        WeChatRefund::Refused => Err(TaskError::Permanent(format!(
            "after-sale {id} is approved here but WeChat's is at status {} and will not be \
             refunded",
            wx.status
        ))),
    }
}

/// After-sale `a` of an order whose component order WeChat cancelled while ours is paid (a
/// payment that came after the order was closed: an `order_event_mismatch` event, paged once
/// when it was found, says so and what to do): WeChat takes no after-sale of a cancelled
/// order, so there is nothing to mirror and the sync ends here — no dead letter, no page of
/// its own. For an order whose money we hold that is all: the refund goes through WeChat Pay
/// as any other ([`issue_refund`]). A secondary-merchant order's refund is WeChat's to pay
/// through the after-sale, which cannot be: an approved one (REFUNDING) is held as
/// REFUND_ABNORMAL with a `refund_abnormal` event and a page
/// ([`hold_failed_platform_refund`], `wx_status` the order's), for a person to refund another
/// way and record with `mark_refunded`.
async fn not_at_wechat(
    app: &App,
    order: &crate::domain::Order,
    a: &AfterSale,
) -> Result<(), TaskError> {
    tracing::info!(aftersale_id = %a.id, out_trade_no = %order.out_trade_no, status = a.status.as_str(), "after-sale not mirrored at WeChat: its component order is cancelled there while ours is paid (order_event_mismatch)");
    if order.fund_type == FundType::SecondaryMerchant && a.status == AfterSaleStatus::Refunding {
        let wx_status = match app
            .wx
            .order_get(
                &crate::shop::types::OrderKey::Out(order.out_trade_no.to_string()),
                order.openid.as_str(),
            )
            .await
        {
            Ok(info) => info.status,
            Err(e) => return Err(wx_task_error(e)),
        };
        hold_failed_platform_refund(app, &a.id, wx_status).await?;
    }
    Ok(())
}

/// Before WeChat is told the merchant accepts (`acceptreturn`; `acceptrefund`, which makes
/// WeChat refund a secondary-merchant order — its amount, not ours): WeChat's after-sale, read
/// back now, must still be what the merchant approved, and still open. Neither call names an
/// amount, and the user may have edited the request in WeChat's order centre (its
/// `aftersale_update_order` push not applied yet, or lost), or cancelled it there. `false`:
/// nothing is to be accepted now —
///
/// - other terms while it waits for the merchant there: ours takes them and goes back to the
///   merchant ([`adopt_wechat_terms`]). Not for an approved refund of an order whose money we
///   hold: our refund of our amount is under way already, and WeChat's acceptance moves none;
/// - cancelled or closed there while ours is REFUNDING: a secondary-merchant order's is
///   CANCELLED (WeChat will not refund it); for an order whose money we hold the refund task
///   decides ([`issue_refund`]: only it knows whether the refund was asked for), so the sync
///   waits for that.
///
/// The user could still edit between this read and the acceptance; the refund WeChat then
/// reports is recorded at its amount, with an event ([`record_wechat_refund`]).
async fn before_accepting(
    app: &App,
    order: &crate::domain::Order,
    a: &AfterSale,
    wx_id: u64,
) -> Result<bool, TaskError> {
    if !matches!(
        a.status,
        AfterSaleStatus::AwaitingReturn | AfterSaleStatus::Returning | AfterSaleStatus::Refunding
    ) {
        return Ok(true);
    }
    let wx = app
        .wx
        .ecaftersale_get(&crate::shop::types::AfterSaleKey::Id(wx_id))
        .await
        .map_err(wx_task_error)?;
    let ours_refunding = a.status == AfterSaleStatus::Refunding;
    let secondary = order.fund_type == FundType::SecondaryMerchant;
    let awaiting = match a.status {
        // The return not accepted there yet (`acceptreturn` to come).
        AfterSaleStatus::AwaitingReturn | AfterSaleStatus::Returning => {
            wx.status == WX_AWAITING_MERCHANT
        }
        // 12: the merchant is overdue, and may still accept.
        _ => matches!(
            wx.status,
            WX_AWAITING_MERCHANT | WX_AWAITING_RECEIPT | WX_MERCHANT_OVERDUE
        ),
    };
    if awaiting {
        if (ours_refunding && !secondary)
            || (kind_of(wx.kind) == Some(a.kind) && wx.orderamt == a.amount)
        {
            return Ok(true);
        }
        tracing::warn!(aftersale_id = %a.id, ours = a.amount.get(), wechat = wx.orderamt.get(), ours_type = a.kind.code(), wechat_type = wx.kind, "WeChat's after-sale is not what the merchant approved: not accepting it");
        adopt_wechat_terms(app, &a.id, &wx).await?;
        return Ok(false);
    }
    if ours_refunding && Standing::of(wx.status) == Standing::Closed {
        if !secondary {
            return Err(TaskError::Retry(format!(
                "after-sale {} is closed at WeChat (status {}); the refund task settles it first",
                a.id, wx.status
            )));
        }
        close_as_wechat_did(app, &a.id, wx.status, None).await?;
        return Ok(false);
    }
    Ok(true)
}

/// Ours `id`, approved (REFUNDING), was cancelled or closed at WeChat (`wx_status`) before
/// any refund of it was asked for: CANCELLED, its hold on the order given back and — an order
/// whose money we hold — its refund record (under `out_refund_no`, still PENDING: WeChat Pay
/// took nothing under it) FAILED. Nothing is mirrored: WeChat's is closed already. The
/// merchant is told (an `aftersale_wechat` event, a WARN log): they approved a refund that
/// will not be made. `true` when ours was closed now.
async fn close_as_wechat_did(
    app: &App,
    id: &AfterSaleId,
    wx_status: i64,
    out_refund_no: Option<&crate::domain::OutRefundNo>,
) -> Result<bool, ApiError> {
    let closed = with_retries::<_, ApiError, _, _>(app, || async {
        let Some(a) = repo::get_aftersale(app.store.as_ref(), id).await? else {
            return Ok(Attempt::Done(false));
        };
        if a.value.status != AfterSaleStatus::Refunding
            || a.value.out_refund_no.as_ref() != out_refund_no
        {
            return Ok(Attempt::Done(false)); // moved on, or renumbered, meanwhile
        }
        let now = app.clock.now_ms();
        let mut next = a.value.clone();
        if next.closed_at_wechat(now).is_err() {
            return Ok(Attempt::Done(false));
        }
        let mut batch = Batch::new();
        if let Some(no) = out_refund_no {
            if let Some(r) = repo::get_refund(app.store.as_ref(), no).await? {
                if r.value.status != RefundStatus::Pending {
                    return Ok(Attempt::Done(false)); // WeChat Pay has it: not ours to close
                }
                let mut nr = r.value.clone();
                nr.status = RefundStatus::Failed;
                nr.updated_at_ms = now;
                batch.update_refund(&r, &nr);
            }
        }
        batch.update_aftersale(&a, &next);
        if let Some(o) = repo::get_order(app.store.as_ref(), &a.value.out_trade_no).await? {
            let mut next_order = o.value.clone();
            if next_order.release_claim(id, now) == Change::Changed {
                batch.update_order(&o, &next_order);
            }
        }
        Ok(Attempt::Commit(batch, true))
    })
    .await?;
    if closed {
        tracing::warn!(aftersale_id = %id, wx_status, "the approved after-sale was cancelled or closed at WeChat before its refund: CANCELLED, nothing refunded");
        tell_merchant(
            app,
            format!("closed/{id}"),
            serde_json::json!({
                "what": "approved, but cancelled or closed at WeChat before the refund; nothing refunded",
                "aftersale_id": id.as_str(), "wx_status": wx_status,
            }),
        )
        .await;
    }
    Ok(closed)
}

/// An approved refund of an order in the trading component (WeChat was asked to make its
/// component order, whether or not its id reached us), before WeChat Pay is asked: is
/// WeChat's after-sale still open? The user may have cancelled it in WeChat's order centre
/// (and the merchant approved before the `aftersale_user_cancel` push was applied). Read by
/// the id we stored, else by ours: an after-sale WeChat does not have (its add is still
/// queued) cannot have been cancelled there — refused lookups by our id mean "not there", as
/// in `aftersale_find_or_add` (WeChat's errcode for it is UNVERIFIED). A failed read is a
/// retry, a status that says neither open nor closed is for a person: never refunded on a
/// guess.
async fn standing_at_wechat(app: &App, a: &AfterSale) -> Result<(Standing, i64), TaskError> {
    let key = match a.wx_aftersale_id {
        Some(wx) => crate::shop::types::AfterSaleKey::Id(wx),
        None => crate::shop::types::AfterSaleKey::Out(a.id.to_string()),
    };
    match app.wx.ecaftersale_get(&key).await {
        Ok(wx) => Ok((Standing::of(wx.status), wx.status)),
        Err(e @ crate::shop::WxError::Api { .. })
            if a.wx_aftersale_id.is_none() && e.kind() == crate::shop::WxErrorKind::Permanent =>
        {
            Ok((Standing::Open, 0))
        }
        Err(e) => Err(wx_task_error(e)),
    }
}

/// Whether WeChat Pay has a refund under `no` — asked before an approved refund is dropped:
/// an earlier attempt may have been taken with its answer lost.
async fn refund_taken(app: &App, no: &crate::domain::OutRefundNo) -> Result<bool, TaskError> {
    match app
        .pay
        .refund_query(crate::pay::RefundRef::OutRefundNo(no.clone()))
        .await
    {
        Ok(r) if !r.refunds.is_empty() => Ok(true),
        Ok(_) => Err(TaskError::Retry(format!(
            "refundquery for {no} answered without refunds"
        ))),
        Err(crate::pay::PayError::Business { code, .. }) if code == "REFUNDNOTEXIST" => Ok(false),
        Err(e) => Err(TaskError::Retry(format!("refundquery for {no}: {e}"))),
    }
}

/// Secondary-merchant order: WeChat accepted the refund but could not pay it (its after-sale
/// at 16 or 18; `aftersale_wait_merchant_offline_refund`). The money is still with the shop,
/// and WeChat will not try again: ours is held as REFUND_ABNORMAL for a person, who refunds
/// the user another way and records it with `mark_refunded`. The amount stays held on the
/// order meanwhile. (It used to stay REFUNDING, with only a dead-lettered task to tell.)
/// `true` when ours was held now.
async fn hold_failed_platform_refund(
    app: &App,
    id: &AfterSaleId,
    wx_status: i64,
) -> Result<bool, ApiError> {
    let held = update(app, id, None, |a, now| {
        a.refund_abnormal(now).map_err(|e| e.to_string())
    })
    .await;
    match held {
        Ok(a) => {
            tracing::error!(aftersale_id = %id, wx_status, "WeChat could not pay the refund of this after-sale: refund the user another way, then record it with mark_refunded");
            // As a refund WeChat Pay could not pay out (CHANGE, pay_callback): a
            // `refund_abnormal` event for a person, and a page the first time it is kept —
            // the after-sale waits on a person, and nothing else would tell one. Kept after
            // the hold (a crash in between keeps it on the next report: this runs again).
            let body = serde_json::json!({"aftersale_id": id.as_str(),
                "out_trade_no": a.out_trade_no.as_str(), "amount": a.amount.get(),
                "wx_aftersale_status": wx_status,
                "what_to_do": "WeChat could not pay this secondary-merchant refund: refund the user another way, then POST /admin/aftersaleSync {action: mark_refunded}"});
            if super::common::keep_evidence(app, "refund_abnormal", id.as_str(), body.to_string())
                .await?
            {
                super::common::page_a_person(app);
            }
            Ok(true)
        }
        Err(e) if e.status.is_server_error() => Err(e),
        // Already refunded, or gone: nothing to hold.
        Err(e) => {
            tracing::warn!(aftersale_id = %id, error = %e, "failed platform refund not applied");
            Ok(false)
        }
    }
}

/// For a refund event of a secondary-merchant order's after-sale: ours and WeChat's after-sale
/// as read back now. The event's body is not proof (in plaintext push mode the signature does
/// not cover it); WeChat's after-sale is. `None`: not ours, not known to WeChat, or not a
/// secondary-merchant order (WeChat does not refund those).
async fn wechat_refund_of(
    app: &App,
    ours: Option<AfterSaleId>,
    info: &crate::push::AfterSaleInfo,
) -> Result<Option<(AfterSaleId, crate::shop::aftersale::EcAfterSaleOrder)>, ApiError> {
    let Some(id) = ours else { return Ok(None) };
    let Some(a) = repo::get_aftersale(app.store.as_ref(), &id).await? else {
        return Ok(None);
    };
    let Some(wx_id) = a.value.wx_aftersale_id.or(info.aftersale_id) else {
        return Ok(None);
    };
    let fund_type = repo::get_order(app.store.as_ref(), &a.value.out_trade_no)
        .await?
        .map(|o| o.value.fund_type);
    if fund_type != Some(FundType::SecondaryMerchant) {
        return Ok(None);
    }
    let wx = app
        .wx
        .ecaftersale_get(&crate::shop::types::AfterSaleKey::Id(wx_id))
        .await
        .map_err(super::shop_orders::wx_error)?;
    Ok(Some((id, wx)))
}

/// EC after-sale `status` 1: the user cancelled it (WECHAT_SHOP.md §7.3).
const WX_USER_CANCELLED: i64 = 1;
/// EC after-sale `status` 2: waiting for the merchant (the only state the user may edit it in).
const WX_AWAITING_MERCHANT: i64 = 2;
/// EC after-sale `status` 8: a return's goods are on their way back; the merchant is to
/// accept the refund.
const WX_AWAITING_RECEIPT: i64 = 8;
/// EC after-sale `status` 12: the merchant let the refund deadline pass.
const WX_MERCHANT_OVERDUE: i64 = 12;

/// Whether WeChat's after-sale, by its EC `status`, still stands (§7.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Standing {
    /// Waiting for the merchant or the user (2, 6, 8, 12, 17), or accepted (13–15).
    Open,
    /// 1 cancelled by the user; 4, 5 rejected; 7, 19 closed: no refund is wanted any more.
    Closed,
    /// 0, 16, 18 or a status we do not know: neither, for a person.
    Unclear,
}

impl Standing {
    fn of(status: i64) -> Self {
        match status {
            2 | 6 | 8 | 12 | 13 | 14 | 15 | 17 => Standing::Open,
            1 | 4 | 5 | 7 | 19 => Standing::Closed,
            _ => Standing::Unclear,
        }
    }
}

/// What became of WeChat's changed request (see [`adopt_wechat_terms`]).
#[derive(Debug, PartialEq, Eq)]
enum Terms {
    /// Ours has them already, or no longer waits for the merchant: nothing changed.
    Unchanged,
    /// Ours took them (and waits for the merchant again, if it was approved).
    Taken,
    /// The order cannot hold them (`why`): ours kept its own, waiting for the merchant again
    /// if it was approved, and a person is told.
    Held(String),
}

/// WeChat's after-sale `wx` (read back, still waiting for the merchant there) asks for other
/// terms than ours `id` — the user edited amount, type or reason in WeChat's order centre.
/// Ours takes them, its hold on the order moved to the new amount, while it waits for the
/// merchant; an approval WeChat has not acted on (AWAITING_RETURN, or REFUNDING of a
/// secondary-merchant order) goes back to the merchant, who approved other terms. Terms the
/// order cannot hold (beyond what other open after-sales leave, or a type we do not know) are
/// not taken: ours keeps its own, back with the merchant all the same — accepting at WeChat
/// would refund WeChat's amount — and a person is told (an `aftersale_wechat` event and an
/// ERROR log): the merchant rejects it, or the user changes it again.
async fn adopt_wechat_terms(
    app: &App,
    id: &AfterSaleId,
    wx: &crate::shop::aftersale::EcAfterSaleOrder,
) -> Result<Terms, ApiError> {
    let kind = kind_of(wx.kind);
    let reason = reason_of(wx);
    let (outcome, was) = with_retries::<_, ApiError, _, _>(app, || async {
        let Some(a) = repo::get_aftersale(app.store.as_ref(), id).await? else {
            return Ok(Attempt::Done((Terms::Unchanged, None)));
        };
        let Some(order) = repo::get_order(app.store.as_ref(), &a.value.out_trade_no).await? else {
            return Ok(Attempt::Done((Terms::Unchanged, None)));
        };
        let now = app.clock.now_ms();
        let mut next_order = order.value.clone();
        let fits = match kind {
            None => Err(format!("WeChat's after-sale type {} is not one we know", wx.kind)),
            Some(_) => next_order
                .claim_refund(id, wx.orderamt, now)
                .map_err(|e| format!("{e} (other open after-sales of the order hold the rest)")),
        };
        let mut next = a.value.clone();
        let taken = match (&fits, kind) {
            (Ok(_), Some(k)) => next.take_wechat_terms(k, wx.orderamt, &reason, order.value.fund_type, now),
            _ => {
                let (k, amount, r) = (a.value.kind, a.value.amount, a.value.reason.clone());
                next.take_wechat_terms(k, amount, &r, order.value.fund_type, now)
            }
        };
        let changed = match taken {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(aftersale_id = %id, error = %e, "WeChat's changed request not taken: ours no longer waits for the merchant");
                return Ok(Attempt::Done((Terms::Unchanged, None)));
            }
        };
        let outcome = match fits {
            Ok(_) if changed == Change::Changed => Terms::Taken,
            Ok(_) => Terms::Unchanged,
            Err(why) => Terms::Held(why),
        };
        let mut batch = Batch::new();
        if changed == Change::Changed {
            batch.update_aftersale(&a, &next);
        }
        if outcome == Terms::Taken && next_order != order.value {
            batch.update_order(&order, &next_order);
        }
        if batch.is_empty() {
            return Ok(Attempt::Done((outcome, Some(a.value))));
        }
        Ok(Attempt::Commit(batch, (outcome, Some(a.value))))
    })
    .await?;
    let Some(was) = was else {
        return Ok(outcome);
    };
    let body = serde_json::json!({
        "aftersale_id": id.as_str(), "wx_aftersale_id": wx.aftersale_id,
        "out_order_id": was.out_trade_no.as_str(), "was": was.status.as_str(),
        "our_amount": was.amount.get(), "our_type": was.kind.code(),
        "wechat_amount": wx.orderamt.get(), "wechat_type": wx.kind,
    });
    let key = format!(
        "terms/{}/{}/{}",
        wx.aftersale_id, wx.update_time, was.updated_at_ms
    );
    match &outcome {
        Terms::Unchanged => {}
        Terms::Taken => {
            tracing::warn!(aftersale_id = %id, was = was.status.as_str(), ours = was.amount.get(), wechat = wx.orderamt.get(), "the user changed the request in WeChat: ours takes WeChat's terms and waits for the merchant");
            let mut body = body;
            body["what"] = serde_json::json!(
                "the user changed the request in WeChat; approve it again on these terms"
            );
            tell_merchant(app, key, body).await;
        }
        Terms::Held(why) => {
            tracing::error!(aftersale_id = %id, was = was.status.as_str(), ours = was.amount.get(), wechat = wx.orderamt.get(), why = %why, "the user changed the request in WeChat to terms the order cannot hold: not accepted at WeChat; reject it, or wait for the user to change it");
            let mut body = body;
            body["what"] = serde_json::json!("the user changed the request in WeChat to terms the order cannot hold; not accepted");
            body["why"] = serde_json::json!(why);
            tell_merchant(app, key, body).await;
        }
    }
    Ok(outcome)
}

/// Where WeChat's refund of an accepted after-sale stands, from its EC after-sale `status`
/// (WECHAT_SHOP.md §7.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WeChatRefund {
    /// 13 refund done, 14 return and refund done: the money went back.
    Done,
    /// Not yet: 15 the platform refunding, or still waiting for the acceptance (2, 8, 12).
    Pending,
    /// 16 the platform's refund failed, 18 the payout failed and support closed the case:
    /// the money did not go back and WeChat will not try again.
    Failed,
    /// Cancelled, rejected or closed at WeChat (1, 4, 5, 7, 19, …): no refund is coming.
    Refused,
}

impl WeChatRefund {
    fn of(status: i64) -> Self {
        match status {
            13 | 14 => WeChatRefund::Done,
            2 | 6 | 8 | 12 | 15 | 17 => WeChatRefund::Pending,
            16 | 18 => WeChatRefund::Failed,
            _ => WeChatRefund::Refused,
        }
    }
}

fn wx_task_error(e: crate::shop::WxError) -> TaskError {
    if e.is_retryable() {
        TaskError::Retry(e.to_string())
    } else {
        TaskError::Permanent(e.to_string())
    }
}

/// Secondary-merchant order: WeChat refunded the after-sale (`wx`, as read from
/// `ecaftersale/get`, status 13 or 14): ours `id` REFUNDED and the order's refunded amount
/// grown by what WeChat refunded (its `orderamt`), in one write. A repeat changes nothing.
/// Orders whose money we hold are completed only by their signed refund notification.
///
/// The money has left whatever ours said, so it is recorded from every state — after the
/// merchant's approval, but also on WeChat's own (the merchant let a deadline pass, the
/// platform ruled for the user after a rejection) — and an after-sale we never heard of (its
/// new-request push lost) is imported as REFUNDED under [`imported_id`]. Anything but the
/// approved amount after an approval is told to the merchant (an `aftersale_wechat` event
/// and a WARN log). A refund beyond what the order has left to refund is not recorded (that
/// would corrupt the order's books): an event and an ERROR log, for a person. `true` when the
/// refund was written to our books now.
async fn record_wechat_refund(
    app: &App,
    id: &AfterSaleId,
    wx: &crate::shop::aftersale::EcAfterSaleOrder,
) -> Result<bool, ApiError> {
    let refund_id = wx
        .refund_pay_detail
        .as_ref()
        .and_then(|d| d.refund_id.clone())
        .filter(|r| !r.trim().is_empty());
    let amount = wx.orderamt;
    let imported = imported_id(wx.aftersale_id)?;
    let recorded = with_retries::<_, ApiError, _, _>(app, || async {
        let current = repo::get_aftersale(app.store.as_ref(), id).await?;
        let no = match &current {
            Some(a) => {
                let same = a.value.wx_aftersale_id == Some(wx.aftersale_id)
                    || wx.out_aftersale_id.as_deref() == Some(a.value.id.as_str());
                if !same {
                    tracing::warn!(security = true, aftersale_id = %id, wx_aftersale_id = wx.aftersale_id, "WeChat's refunded after-sale is not this one; nothing recorded");
                    return Ok(Attempt::Done(WeChatRefundRecord::Nothing));
                }
                a.value.out_trade_no.clone()
            }
            None if *id == imported => match wx
                .out_order_id
                .clone()
                .and_then(|o| OutTradeNo::parse(o).ok())
            {
                Some(no) => no,
                None => return Ok(Attempt::Done(WeChatRefundRecord::Nothing)),
            },
            None => return Ok(Attempt::Done(WeChatRefundRecord::Nothing)),
        };
        let Some(order) = repo::get_order(app.store.as_ref(), &no).await? else {
            tracing::warn!(aftersale_id = %id, out_order_id = %no, "WeChat refunded an after-sale of an order we do not have; nothing recorded");
            return Ok(Attempt::Done(WeChatRefundRecord::Nothing));
        };
        if order.value.fund_type != FundType::SecondaryMerchant {
            return Ok(Attempt::Done(WeChatRefundRecord::Nothing));
        }
        let now = app.clock.now_ms();
        let mut next_order = order.value.clone();
        let mut batch = Batch::new();
        let what = match &current {
            Some(a) => {
                let mut next = a.value.clone();
                if next.refunded_by_wechat(refund_id.clone(), now) == Change::Unchanged {
                    return Ok(Attempt::Done(WeChatRefundRecord::Nothing));
                }
                if next_order.refund_aftersale(id, amount, now).is_err() {
                    // Only on reads a condition covers: the after-sale, read first, may be
                    // stale — another report of this refund (its other push, the sync task's
                    // or the schedule's read-back) recording it between the two reads — and
                    // the merchant would be told WeChat refunded beyond the order. A stale
                    // read retries, and finds it recorded.
                    batch.check_aftersale(a);
                    batch.check_order(&order);
                    return Ok(Attempt::Commit(
                        batch,
                        WeChatRefundRecord::Exceeds {
                            refundable: order.value.refundable(),
                        },
                    ));
                }
                next.amount = amount;
                batch.update_aftersale(a, &next);
                if let Some(e) = super::stock_back::due(&order.value, &next, now) {
                    batch.enqueue(e);
                }
                let approved = matches!(
                    a.value.status,
                    AfterSaleStatus::Refunding
                        | AfterSaleStatus::RefundFailed
                        | AfterSaleStatus::RefundAbnormal
                );
                if approved && a.value.amount == amount {
                    WeChatRefundRecord::Approved
                } else {
                    WeChatRefundRecord::OnItsOwn {
                        from: a.value.status,
                        ours: a.value.amount,
                    }
                }
            }
            None => {
                if next_order.refund(amount, now).is_err() {
                    // As above: another report may have imported it since it was read absent.
                    batch.check_no_aftersale(id);
                    batch.check_order(&order);
                    return Ok(Attempt::Commit(
                        batch,
                        WeChatRefundRecord::Exceeds {
                            refundable: order.value.refundable(),
                        },
                    ));
                }
                let refunded_there = AfterSale {
                    id: id.clone(),
                    out_trade_no: no.clone(),
                    openid: order.value.openid.clone(),
                    kind: kind_of(wx.kind).unwrap_or(AfterSaleKind::RefundOnly),
                    amount,
                    reason: reason_of(wx),
                    status: AfterSaleStatus::Refunded,
                    out_refund_no: None,
                    refund_id: refund_id.clone(),
                    wx_aftersale_id: Some(wx.aftersale_id),
                    wx_add_claimed_until_ms: None,
                    restock: false,
                    reject_reason: None,
                    goods_return: None,
                    line: wechat_line(&order.value, wx),
                    created_at_ms: now,
                    updated_at_ms: now,
                    refunded_at_ms: Some(now),
                    by: AfterSaleOrigin::User,
                };
                batch.create_aftersale(&refunded_there);
                if let Some(e) = super::stock_back::due(&order.value, &refunded_there, now) {
                    batch.enqueue(e);
                }
                WeChatRefundRecord::Imported
            }
        };
        batch.update_order(&order, &next_order);
        Ok(Attempt::Commit(batch, what))
    })
    .await?;
    let written = matches!(
        recorded,
        WeChatRefundRecord::Approved
            | WeChatRefundRecord::OnItsOwn { .. }
            | WeChatRefundRecord::Imported
    );
    let refund_id = refund_id.as_deref().unwrap_or("");
    let note = |what: &str| {
        serde_json::json!({
            "what": what, "aftersale_id": id.as_str(), "wx_aftersale_id": wx.aftersale_id,
            "out_order_id": wx.out_order_id, "wechat_amount": amount.get(), "refund_id": refund_id,
        })
    };
    match recorded {
        WeChatRefundRecord::Nothing => {}
        WeChatRefundRecord::Approved => {
            tracing::info!(aftersale_id = %id, refund_id, "after-sale refunded by WeChat (secondary merchant)");
        }
        WeChatRefundRecord::OnItsOwn { from, ours } => {
            tracing::warn!(aftersale_id = %id, from = from.as_str(), ours = ours.get(), wechat = amount.get(), refund_id, "WeChat refunded this after-sale on its own (not as approved here): recorded as REFUNDED with WeChat's amount");
            let mut body = note("refunded by WeChat on its own");
            body["was"] = serde_json::json!(from.as_str());
            body["our_amount"] = serde_json::json!(ours.get());
            tell_merchant(app, format!("refunded/{}", wx.aftersale_id), body).await;
        }
        WeChatRefundRecord::Imported => {
            tracing::warn!(aftersale_id = %id, wechat = amount.get(), refund_id, "WeChat refunded an after-sale we never heard of: imported as REFUNDED");
            tell_merchant(
                app,
                format!("refunded/{}", wx.aftersale_id),
                note("refunded by WeChat; the request never reached us"),
            )
            .await;
        }
        WeChatRefundRecord::Exceeds { refundable } => {
            tracing::error!(aftersale_id = %id, wechat = amount.get(), refundable = refundable.get(), "WeChat says it refunded more than this order had left to refund: not recorded; check the order and WeChat's after-sales by hand");
            let mut body = note("refunded by WeChat beyond what the order had left; not recorded");
            body["refundable"] = serde_json::json!(refundable.get());
            tell_merchant(app, format!("exceeds/{}", wx.aftersale_id), body).await;
        }
    }
    Ok(written)
}

/// What [`record_wechat_refund`] did.
enum WeChatRefundRecord {
    /// Recorded already, not ours, or not an order WeChat refunds.
    Nothing,
    /// The merchant's approval, completed at its amount.
    Approved,
    /// Recorded, though ours was at `from` (not approved) or asked for `ours`.
    OnItsOwn { from: AfterSaleStatus, ours: Fen },
    /// An after-sale we never heard of, imported as REFUNDED.
    Imported,
    /// More than the order has left to refund (`refundable`): not recorded.
    Exceeds { refundable: Fen },
}

/// The event source of what WeChat did to an after-sale that a person should know (listed by
/// `/admin/orderSync {"action": "events"}`).
pub const WECHAT_AFTERSALE_EVENTS: &str = "aftersale_wechat";

/// Keeps `body` as an [`WECHAT_AFTERSALE_EVENTS`] event under `key` (once). Told after the
/// state it describes is written; a failure to keep it is logged, the state stands.
async fn tell_merchant(app: &App, key: String, body: serde_json::Value) {
    if let Err(e) =
        super::common::keep_evidence(app, WECHAT_AFTERSALE_EVENTS, key, body.to_string()).await
    {
        tracing::error!(error = %e, event = %body, "could not keep an after-sale event for the merchant");
    }
}

/// Our after-sale kind for WeChat's `type` (1 refund only, 2 return and refund).
fn kind_of(wx_type: i64) -> Option<AfterSaleKind> {
    match wx_type {
        1 => Some(AfterSaleKind::RefundOnly),
        2 => Some(AfterSaleKind::ReturnAndRefund),
        _ => None,
    }
}

/// WeChat's refund reason as ours keeps it (≤ 200 characters, never empty).
fn reason_of(wx: &crate::shop::aftersale::EcAfterSaleOrder) -> String {
    let r: String = wx.refund_reason.trim().chars().take(200).collect();
    if r.is_empty() {
        "requested in WeChat".into()
    } else {
        r
    }
}

/// Adds the after-sale at WeChat (or adopts the one WeChat has under our id) and stores
/// WeChat's id: the after-sale as it is now, and that id. `None`: WeChat refused it because
/// its component order is cancelled while ours is paid (see [`not_at_wechat`]). One task at a
/// time does it — apply and approve each queue a sync, and the two may run together — by a
/// claim written conditionally first; a task that finds a live claim retries later.
async fn add_at_wechat(
    app: &App,
    order: &crate::domain::Order,
    a: repo::Versioned<AfterSale>,
) -> Result<Option<(AfterSale, u64)>, TaskError> {
    let id = a.value.id.clone();
    let now = app.clock.now_ms();
    if let Some(until) = a.value.wx_add_claimed_until_ms.filter(|t| *t > now) {
        return Err(TaskError::Retry(format!(
            "after-sale {id} is being added at WeChat by another task (claim until {until})"
        )));
    }
    let mut claimed = a.value.clone();
    claimed.wx_add_claimed_until_ms = Some(now + ADD_CLAIM_MS);
    let mut batch = Batch::new();
    batch.update_aftersale(&a, &claimed);
    batch
        .commit(app.store.as_ref())
        .await
        .map_err(|e| TaskError::Retry(format!("claiming the add: {e}")))?;
    let found = super::shop_orders::aftersale_find_or_add(app, order, &claimed).await;
    // Record the outcome whatever changed meanwhile (an approval, say): WeChat's id, and the
    // claim released either way, so that a retry after a failed add need not wait for it.
    let wx = match found {
        Ok(super::shop_orders::AfterSaleAdded::Id(id)) => Some(id),
        _ => None,
    };
    let stored = with_retries::<_, TaskError, _, _>(app, || async {
        let current = repo::get_aftersale(app.store.as_ref(), &id)
            .await?
            .ok_or_else(|| TaskError::Permanent(format!("no after-sale {id}")))?;
        let mut next = current.value.clone();
        if next.wx_aftersale_id.is_none() {
            next.wx_aftersale_id = wx;
        }
        next.wx_add_claimed_until_ms = None;
        if next == current.value {
            return Ok(Attempt::Done(next));
        }
        let mut batch = Batch::new();
        batch.update_aftersale(&current, &next);
        Ok(Attempt::Commit(batch, next))
    })
    .await?;
    if let super::shop_orders::AfterSaleAdded::OrderCancelled { .. } = found? {
        return Ok(None);
    }
    let wx_id = stored
        .wx_aftersale_id
        .ok_or_else(|| TaskError::Retry(format!("after-sale {id}: WeChat's id was not kept")))?;
    Ok(Some((stored, wx_id)))
}

/// Our id for an after-sale the user opened in WeChat's own order centre.
fn imported_id(wx_id: u64) -> Result<AfterSaleId, ApiError> {
    AfterSaleId::parse(format!("WXAS{wx_id}")).map_err(|e| ApiError::internal(e.to_string()))
}

/// Ours of an after-sale WeChat has, if we have one.
enum Ours {
    Known(AfterSaleId),
    Unknown,
    /// Named as ours, but ours is WeChat's other after-sale or another order's: nothing done.
    Conflicting,
}

/// Ours of WeChat's after-sale `wx` (read back from `ecaftersale/get`, so believed): the one
/// it names as its `out_aftersale_id` — ours, added by `ecaftersale/add`, even before we
/// stored WeChat's id from the add's answer — the one imported under [`imported_id`], or one
/// of the order's that stored WeChat's id. `aftersale_new_order` carries no
/// `out_aftersale_id`, and WeChat may push it for our own add too (UNVERIFIED): our request
/// must never be imported a second time, which would hold and refund its amount twice.
async fn find_ours(
    app: &App,
    wx: &crate::shop::aftersale::EcAfterSaleOrder,
) -> Result<Ours, ApiError> {
    let store = app.store.as_ref();
    let order_no = wx
        .out_order_id
        .clone()
        .and_then(|o| OutTradeNo::parse(o).ok());
    let mut found = ours_by_ids(store, wx.out_aftersale_id.as_deref(), wx.aftersale_id).await?;
    if found.is_none() {
        if let Some(no) = &order_no {
            found = repo::aftersales_of_order(store, no)
                .await?
                .into_iter()
                .find(|a| a.value.wx_aftersale_id == Some(wx.aftersale_id));
        }
    }
    let Some(a) = found else {
        return Ok(Ours::Unknown);
    };
    let other_wx = a
        .value
        .wx_aftersale_id
        .is_some_and(|w| w != wx.aftersale_id);
    let other_order = order_no.is_some_and(|no| no != a.value.out_trade_no);
    if other_wx || other_order {
        tracing::warn!(security = true, aftersale_id = %a.value.id, wx_aftersale_id = wx.aftersale_id, ours_wx = ?a.value.wx_aftersale_id, "WeChat's after-sale names ours, but ours is another after-sale there or of another order; nothing done");
        return Ok(Ours::Conflicting);
    }
    Ok(Ours::Known(a.value.id))
}

/// Ours by the ids WeChat gives of its after-sale `wx_id`: the one it names as its
/// `out_aftersale_id`, else the one imported under [`imported_id`].
async fn ours_by_ids(
    store: &dyn crate::store::Store,
    out_aftersale_id: Option<&str>,
    wx_id: u64,
) -> Result<Option<crate::store::repo::Versioned<AfterSale>>, ApiError> {
    let named = out_aftersale_id
        .filter(|o| !o.trim().is_empty())
        .and_then(|o| AfterSaleId::parse(o.to_owned()).ok());
    for id in named.into_iter().chain([imported_id(wx_id)?]) {
        if let Some(a) = repo::get_aftersale(store, &id).await? {
            return Ok(Some(a));
        }
    }
    Ok(None)
}

/// WeChat's after-sale an event is about, read back: by the id stored for ours, else the
/// event's. The event's body itself is not believed (in plaintext push mode the signature does
/// not cover it). `None`: the event names none.
async fn read_wechat_aftersale(
    app: &App,
    ours: Option<&AfterSaleId>,
    info: &crate::push::AfterSaleInfo,
) -> Result<Option<crate::shop::aftersale::EcAfterSaleOrder>, ApiError> {
    let stored = match ours {
        Some(id) => repo::get_aftersale(app.store.as_ref(), id)
            .await?
            .and_then(|a| a.value.wx_aftersale_id),
        None => None,
    };
    let Some(wx_id) = stored.or(info.aftersale_id) else {
        return Ok(None);
    };
    app.wx
        .ecaftersale_get(&crate::shop::types::AfterSaleKey::Id(wx_id))
        .await
        .map(Some)
        .map_err(super::shop_orders::wx_error)
}

/// Whether WeChat's after-sale `wx` (read back) is ours `id`, as [`find_ours`] reads WeChat's
/// record — not as a push body pairs them: in plaintext push mode the body is not signed, and
/// one naming ours beside another after-sale of WeChat's would apply that one's cancellation
/// or return parcel (a parcel that never left for ours, then refunded) to ours.
async fn wechat_names(
    app: &App,
    wx: &crate::shop::aftersale::EcAfterSaleOrder,
    id: &AfterSaleId,
) -> Result<bool, ApiError> {
    let named = matches!(find_ours(app, wx).await?, Ours::Known(ref k) if k == id);
    if !named {
        tracing::warn!(security = true, aftersale_id = %id, wx_aftersale_id = wx.aftersale_id, "after-sale event pairs ours with an after-sale of WeChat's that is not ours; nothing changed");
    }
    Ok(named)
}

/// A request WeChat has: ours adopted (WeChat's id stored, if it was not yet), or — opened by
/// the user in WeChat's order centre — imported so the merchant sees and decides it here.
async fn import_from_wechat(
    app: &App,
    wx: &crate::shop::aftersale::EcAfterSaleOrder,
    pushed_out_order_id: &str,
) -> Result<(), ApiError> {
    match find_ours(app, wx).await? {
        Ours::Known(id) => adopt_wechat_id(app, &id, wx.aftersale_id).await,
        Ours::Conflicting => Ok(()),
        Ours::Unknown => import_new(app, wx, pushed_out_order_id).await.map(drop),
    }
}

/// Ours `id` is WeChat's after-sale `wx_id`: the id stored if it was not (the new-request push
/// came before the answer of our `ecaftersale/add` was stored). Nothing imported.
async fn adopt_wechat_id(app: &App, id: &AfterSaleId, wx_id: u64) -> Result<(), ApiError> {
    let adopted = with_retries::<_, ApiError, _, _>(app, || async {
        let Some(a) = repo::get_aftersale(app.store.as_ref(), id).await? else {
            return Ok(Attempt::Done(false));
        };
        if a.value.wx_aftersale_id.is_some() {
            return Ok(Attempt::Done(false));
        }
        let mut next = a.value.clone();
        next.wx_aftersale_id = Some(wx_id);
        let mut batch = Batch::new();
        batch.update_aftersale(&a, &next);
        Ok(Attempt::Commit(batch, true))
    })
    .await?;
    tracing::info!(aftersale_id = %id, wx_aftersale_id = wx_id, adopted, "WeChat's new after-sale is ours; not imported");
    Ok(())
}

/// The order's line WeChat's after-sale is about, if it names one of the order's items.
fn wechat_line(
    order: &crate::domain::Order,
    wx: &crate::shop::aftersale::EcAfterSaleOrder,
) -> Option<AfterSaleLine> {
    AfterSaleLine::of_wechat(
        order,
        wx.product_info
            .out_product_id
            .as_deref()
            .unwrap_or_default(),
        wx.product_info.out_sku_id.as_deref().unwrap_or_default(),
        wx.product_info.product_cnt,
    )
}

/// Imports WeChat's after-sale `wx`, which is not ours (see [`find_ours`]), as REQUESTED under
/// [`imported_id`]. `true` when this call imported it (not when it was imported already, or
/// its order is not one we have).
async fn import_new(
    app: &App,
    wx: &crate::shop::aftersale::EcAfterSaleOrder,
    pushed_out_order_id: &str,
) -> Result<bool, ApiError> {
    let wx_id = wx.aftersale_id;
    let id = imported_id(wx_id)?;
    if wx
        .out_aftersale_id
        .as_deref()
        .is_some_and(|o| !o.trim().is_empty())
    {
        tracing::warn!(wx_aftersale_id = wx_id, out_aftersale_id = ?wx.out_aftersale_id, "WeChat's after-sale names a merchant id we do not have; imported as a new request");
    }
    let Some(out_order_id) = wx
        .out_order_id
        .clone()
        .or_else(|| (!pushed_out_order_id.is_empty()).then(|| pushed_out_order_id.to_owned()))
    else {
        tracing::warn!(
            wx_aftersale_id = wx_id,
            "after-sale for an order we cannot name; recorded only"
        );
        return Ok(false);
    };
    let Ok(no) = OutTradeNo::parse(out_order_id) else {
        return Ok(false);
    };
    // Held on the order like an application here when it fits what is left; beyond that it
    // is recorded without a hold, for the merchant to see and decide (an approval then needs
    // the hold).
    let imported = with_retries::<_, ApiError, _, _>(app, || async {
        if repo::get_aftersale(app.store.as_ref(), &id)
            .await?
            .is_some()
        {
            return Ok(Attempt::Done(None)); // imported concurrently
        }
        let Some(order) = repo::get_order(app.store.as_ref(), &no).await? else {
            tracing::warn!(out_order_id = %no, "after-sale for an order we do not have; recorded only");
            return Ok(Attempt::Done(None));
        };
        let now = app.clock.now_ms();
        let mut aftersale = AfterSale {
            id: id.clone(),
            out_trade_no: no.clone(),
            openid: order.value.openid.clone(),
            kind: kind_of(wx.kind).unwrap_or(AfterSaleKind::RefundOnly),
            amount: wx.orderamt,
            reason: reason_of(wx),
            status: AfterSaleStatus::Requested,
            out_refund_no: None,
            refund_id: None,
            wx_aftersale_id: Some(wx_id),
            wx_add_claimed_until_ms: None,
            restock: false,
            reject_reason: None,
            goods_return: None,
            line: wechat_line(&order.value, wx),
            created_at_ms: now,
            updated_at_ms: now,
            refunded_at_ms: None,
            by: AfterSaleOrigin::User,
        };
        let mut batch = Batch::new();
        let mut next_order = order.value.clone();
        let held = next_order.claim_refund(&id, wx.orderamt, now).is_ok()
            && open_unheld(app, &order.value).await?.get() + wx.orderamt.get()
                <= order.value.claimable().get();
        if held {
            batch.update_order(&order, &next_order);
        } else {
            aftersale.amount = wx.orderamt.min(order.value.refundable());
            tracing::warn!(aftersale_id = %id, asked = wx.orderamt.get(), claimable = order.value.claimable().get(), "after-sale from WeChat asks for more than open after-sales leave; recorded without a hold");
        }
        batch.create_aftersale(&aftersale);
        Ok(Attempt::Commit(batch, Some(aftersale)))
    })
    .await?;
    if let Some(a) = &imported {
        tracing::info!(aftersale_id = %a.id, amount = a.amount.get(), "after-sale imported from WeChat");
    }
    Ok(imported.is_some())
}

/// After-sale events pushed by WeChat (`aftersale_*`), each believed only as WeChat's
/// after-sale, read back from `shop/ecaftersale/get`, states it. A request the user opened in
/// WeChat's order centre is imported so the merchant sees and decides it here (ours, added by
/// us, is recognised and never imported again); the user's edit of a request still waiting
/// for the merchant changes ours to match; a cancellation in WeChat cancels ours; a refund
/// WeChat made (secondary-merchant orders) completes ours — approved here or not. Other
/// events are recorded by the caller and need nothing from us: refunds of orders whose money
/// we hold are completed by the refund notification.
pub async fn on_wechat_event(
    app: &App,
    kind: &crate::push::AfterSaleEventKind,
    info: &crate::push::AfterSaleInfo,
) -> Result<(), ApiError> {
    use crate::push::AfterSaleEventKind as K;
    let ours = if !info.out_aftersale_id.is_empty() {
        AfterSaleId::parse(info.out_aftersale_id.clone()).ok()
    } else {
        info.aftersale_id.map(imported_id).transpose()?
    };
    match kind {
        K::NewOrder => {
            let Some(wx_id) = info.aftersale_id else {
                return Ok(());
            };
            if let Some(id) = &ours {
                if repo::get_aftersale(app.store.as_ref(), id).await?.is_some() {
                    return Ok(()); // ours (we created it) or already imported
                }
            }
            let wx = app
                .wx
                .ecaftersale_get(&crate::shop::types::AfterSaleKey::Id(wx_id))
                .await
                .map_err(super::shop_orders::wx_error)?;
            import_from_wechat(app, &wx, &info.out_order_id).await
        }
        K::UpdateOrder => {
            let Some(wx) = read_wechat_aftersale(app, ours.as_ref(), info).await? else {
                return Ok(());
            };
            match find_ours(app, &wx).await? {
                // Its new-request push never came: imported as it stands now.
                Ours::Unknown => import_new(app, &wx, &info.out_order_id).await.map(drop),
                Ours::Conflicting => Ok(()),
                Ours::Known(id) if wx.status == WX_AWAITING_MERCHANT => {
                    adopt_wechat_terms(app, &id, &wx).await.map(drop)
                }
                Ours::Known(id) => {
                    tracing::info!(aftersale_id = %id, wx_status = wx.status, "after-sale edit event, but WeChat's after-sale no longer waits for the merchant; nothing changed");
                    Ok(())
                }
            }
        }
        K::UserCancel => {
            let Some(id) = ours else { return Ok(()) };
            // Believed only as WeChat's after-sale, read back, states it: in plaintext push
            // mode the signature does not cover the body, which names any after-sale.
            let known = repo::get_aftersale(app.store.as_ref(), &id)
                .await?
                .and_then(|a| a.value.wx_aftersale_id)
                .or(info.aftersale_id);
            let Some(wx_id) = known else { return Ok(()) };
            let wx = app
                .wx
                .ecaftersale_get(&crate::shop::types::AfterSaleKey::Id(wx_id))
                .await
                .map_err(super::shop_orders::wx_error)?;
            if wx.status != WX_USER_CANCELLED {
                tracing::warn!(aftersale_id = %id, wx_status = wx.status, "user cancel event, but WeChat's after-sale is not cancelled; nothing changed");
                return Ok(());
            }
            if !wechat_names(app, &wx, &id).await? {
                return Ok(());
            }
            cancel_as_user_did(app, &id).await.map(drop)
        }
        K::WaitMerchantConfirmReceipt => {
            // The user entered the return parcel in WeChat's own order centre: ours learns it
            // too, so the merchant can approve the refund here — from WeChat's after-sale of
            // ours (its stored id first), never from another one the push body pairs it with.
            let Some(id) = ours else { return Ok(()) };
            let Some(wx) = read_wechat_aftersale(app, Some(&id), info).await? else {
                return Ok(());
            };
            if !wechat_names(app, &wx, &id).await? {
                return Ok(());
            }
            parcel_as_user_sent(app, &id, wx).await.map(drop)
        }
        K::UserUploadReturnInfoOverdue => {
            // The user did not send the goods back in time: WeChat closes the return
            // (UNVERIFIED: that this push means its after-sale is closed, 7). Believed only as
            // WeChat's after-sale of ours, read back, shows it closed.
            let Some(id) = ours else { return Ok(()) };
            let Some(wx) = read_wechat_aftersale(app, Some(&id), info).await? else {
                return Ok(());
            };
            if Standing::of(wx.status) != Standing::Closed || wx.status == WX_USER_CANCELLED {
                tracing::warn!(aftersale_id = %id, wx_status = wx.status, "return overdue event, but WeChat's after-sale is not closed; nothing changed");
                return Ok(());
            }
            if !wechat_names(app, &wx, &id).await? {
                return Ok(());
            }
            return_closed_at_wechat(app, &id, wx.status).await.map(drop)
        }
        K::WaitMerchantOfflineRefund => {
            // Secondary-merchant orders: WeChat's refund failed.
            let Some((id, wx)) = wechat_refund_of(app, ours, info).await? else {
                return Ok(());
            };
            if WeChatRefund::of(wx.status) != WeChatRefund::Failed {
                tracing::warn!(aftersale_id = %id, wx_status = wx.status, "offline refund event, but WeChat's after-sale did not fail its refund; nothing recorded");
                return Ok(());
            }
            hold_failed_platform_refund(app, &id, wx.status)
                .await
                .map(drop)
        }
        K::RefundSuccess => {
            // Secondary-merchant orders: WeChat refunded — what the merchant accepted, or on
            // its own. Orders whose money we hold are completed by their signed refund
            // notification instead; nothing to read for those.
            if let Some(id) = &ours {
                if let Some(a) = repo::get_aftersale(app.store.as_ref(), id).await? {
                    let fund_type = repo::get_order(app.store.as_ref(), &a.value.out_trade_no)
                        .await?
                        .map(|o| o.value.fund_type);
                    if fund_type != Some(FundType::SecondaryMerchant) {
                        return Ok(());
                    }
                }
            }
            let Some(wx) = read_wechat_aftersale(app, ours.as_ref(), info).await? else {
                return Ok(());
            };
            if WeChatRefund::of(wx.status) != WeChatRefund::Done {
                tracing::warn!(wx_aftersale_id = wx.aftersale_id, wx_status = wx.status, "refund success event, but WeChat's after-sale is not refunded; nothing recorded");
                return Ok(());
            }
            let id = match find_ours(app, &wx).await? {
                Ours::Known(id) => id,
                Ours::Unknown => imported_id(wx.aftersale_id)?,
                Ours::Conflicting => return Ok(()),
            };
            record_wechat_refund(app, &id, &wx).await.map(drop)
        }
        _ => Ok(()),
    }
}

/// WeChat's after-sale of ours `id`, read back, shows the user cancelled it (status 1): ours
/// CANCELLED, its hold on the order given back, as the `aftersale_user_cancel` push has it
/// (and the sweep, when that push was lost). `true` when applied; ours past cancelling
/// (refunding) or unknown here changes nothing.
async fn cancel_as_user_did(app: &App, id: &AfterSaleId) -> Result<bool, ApiError> {
    match update(app, id, None, |a, now| {
        a.cancel(now).map_err(|e| e.to_string())
    })
    .await
    {
        Ok(_) => Ok(true),
        Err(e) if e.status.is_server_error() => Err(e),
        // Unknown here, or already past cancelling (refunding): nothing to undo.
        Err(e) => {
            tracing::warn!(aftersale_id = %id, error = %e, "WeChat's user cancel not applied");
            Ok(false)
        }
    }
}

/// Ours `id`, a return accepted and waiting for the goods (AWAITING_RETURN), whose after-sale
/// WeChat closed (`wx_status`, read back: 7 when the user did not send the goods in time, or
/// 19, 4, 5): CANCELLED, its hold on the order given back, the merchant told (an
/// `aftersale_wechat` event, a WARN log). Nobody here could close it otherwise — the merchant
/// rejects only before accepting a return or once the goods came back, and its refund cannot
/// be approved before they are sent — so it held its amount for good, every new application
/// for it refused, and the user was still told to send the goods back. (A user's cancel, 1,
/// is [`cancel_as_user_did`].) `true` when applied; ours in any other state changes nothing.
async fn return_closed_at_wechat(
    app: &App,
    id: &AfterSaleId,
    wx_status: i64,
) -> Result<bool, ApiError> {
    let closed = update(app, id, None, |a, now| match a.status {
        AfterSaleStatus::AwaitingReturn => a.closed_at_wechat(now).map_err(|e| e.to_string()),
        other => Err(format!(
            "after-sale is {}, not awaiting a return",
            other.as_str()
        )),
    })
    .await;
    match closed {
        Ok(a) if a.status == AfterSaleStatus::Cancelled => {
            tracing::warn!(aftersale_id = %id, wx_status, "the return was closed at WeChat before the goods were sent back: CANCELLED, its amount no longer held");
            tell_merchant(
                app,
                format!("return_closed/{id}"),
                serde_json::json!({
                    "what": "the return was closed at WeChat before the goods were sent back \
                        (the user did not send them in time); cancelled here, nothing refunded",
                    "aftersale_id": id.as_str(), "wx_status": wx_status,
                }),
            )
            .await;
            Ok(true)
        }
        Ok(_) => Ok(false),
        Err(e) if e.status.is_server_error() => Err(e),
        Err(e) => {
            tracing::info!(aftersale_id = %id, error = %e, "WeChat closed the return; ours not awaiting it, nothing changed");
            Ok(false)
        }
    }
}

/// The user entered the return parcel in WeChat's own order centre: the waybill WeChat's
/// after-sale `wx` (read back) shows reaches ours `id` (`goods_sent`), so the merchant can
/// approve the refund here — as the `aftersale_wait_merchant_confirm_receipt` push has it
/// (and the sweep, when that push was lost). `true` when applied; no waybill there, or ours
/// not awaiting it, changes nothing.
async fn parcel_as_user_sent(
    app: &App,
    id: &AfterSaleId,
    wx: crate::shop::aftersale::EcAfterSaleOrder,
) -> Result<bool, ApiError> {
    let Some(ri) = wx.return_info.filter(|r| !r.waybill_id.trim().is_empty()) else {
        return Ok(false);
    };
    let waybill = ReturnWaybill {
        delivery_id: ri.delivery_id.chars().take(64).collect(),
        delivery_name: ri.delivery_name.chars().take(64).collect(),
        waybill_id: ri.waybill_id.chars().take(64).collect(),
    };
    match update(app, id, None, |a, now| {
        a.goods_sent(waybill.clone(), now)
            .map_err(|e| e.to_string())
    })
    .await
    {
        Ok(_) => Ok(true),
        Err(e) if e.status.is_server_error() => Err(e),
        Err(e) => {
            tracing::warn!(aftersale_id = %id, error = %e, "WeChat's return parcel not applied");
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::WECHAT_REFUNDING_GRACE_MS;
    use crate::outbox::{backoff_ms, MAX_ATTEMPTS};

    /// The schedule reads back an approved secondary-merchant refund only once its sync task
    /// has stopped retrying: the grace outlasts every retry's back-off, jitter (+20 %) and all.
    #[test]
    fn the_refunding_grace_outlasts_the_sync_tasks_retries() {
        let retries: i64 = (1..MAX_ATTEMPTS).map(backoff_ms).sum();
        assert!(
            retries * 6 / 5 < WECHAT_REFUNDING_GRACE_MS,
            "retries span {retries} ms (+20 %), the grace {WECHAT_REFUNDING_GRACE_MS} ms"
        );
    }
}
