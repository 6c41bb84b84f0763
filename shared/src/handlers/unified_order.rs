//! `unifiedOrder`: the caller's cart → a priced order → WeChat Pay prepay (and the trading
//! component order when it is on) → the parameters for `wx.requestPayment` /
//! `wx.requestOrderPayment`.
//!
//! Prices come from the catalog only; the body's items carry ids and quantities, and any
//! price a client sends is ignored. Stock is taken in the same atomic write that creates the
//! order (conditional on each product's version) and given back when the order closes. A
//! retried call with the same idempotency key returns the same order (settled first, as the
//! sweep would, when it expired unpaid or has too little time left to be paid: see `replay`
//! and "Too late to pay" below). The key stands for its first request
//! (cart, address, enter scene): another under it is refused, 422 `IDEMPOTENCY_KEY_REUSED`,
//! naming the order the key holds so the caller can close it (see `key_reused`) — or, while
//! the key's first request is still running, 409 `REQUEST_IN_PROGRESS`, to ask again.
//!
//! # One key, one order number
//!
//! The order number is chosen once per idempotency key, when the key is first claimed, and
//! stored in the claim (its reference, with the client IP WeChat Pay is told), so every attempt
//! under that key works on the same number. A store error on the order-creating write does not
//! say whether the write was applied (a DynamoDB timeout may have written it); the order may
//! then exist and hold stock. Such a failure therefore does not release the key: it is
//! [abandoned](idempotency::abandon), and the retry takes it over at once and resumes (as it
//! does a claim an attempt cut off — its function killed — left in progress, once the claim's
//! window has passed). The order exists: WeChat Pay is asked for it again (`pay/unifiedorder`
//! with the same `out_trade_no` and identical parameters answers with the same prepay order),
//! or, once it has its `prepay_id`, it is answered from the store. Paid meanwhile (in WeChat's
//! order centre, or its notification landed), it is answered as it is, as a repeated key's
//! paid order is: nothing to pay (`payment` empty: see `no_payment`), WeChat not asked for
//! payment parameters, and the key completed with that answer; closed meanwhile, 409
//! `ORDER_CLOSED`, the key completed with that too.
//! Before that it is brought up to date as a repeated key's order is (`brought_up_to_date`):
//! unpaid past its expiry, settled as the sweep would; one WeChat holds to pay (PREPAID) is
//! asked about first, since its notification or push may not have landed (and
//! `getpaymentparams` refuses a paid secondary-merchant order). A secondary-merchant order still CREATED with no component id (the
//! earlier attempt cut off while `shop/order/add` was on its way back, so WeChat may hold it)
//! is read at WeChat by our number before anything is added again (`read_back_lost_add`):
//! `add` replaces only an unpaid order — a paid one is refused, and the order would be closed
//! as a failed prepay though it was paid. Paid there → the payment recorded, answered PAID;
//! waiting for payment → paid as it is (its id learnt, `getpaymentparams`), not added again;
//! cancelled there → closed here, 409 `ORDER_CLOSED`; not there → added; WeChat did not say →
//! nothing added or closed, 503 `ORDER_STATUS_UNKNOWN`, to retry with the same key. A direct
//! (fund_type 0) order still CREATED — cut off after `pay/unifiedorder` or while
//! `shop/order/add` was on its way back — is opened again as it was first: `pay/unifiedorder`
//! under the same number and parameters answers with the same prepay order (never a second
//! one), and `add` replaces a component order still awaiting payment (status 10: a direct
//! order's moves on only through our own payment sync, once we recorded the payment, so it
//! cannot be paid there while ours is CREATED; `read_back_lost_add` is not needed). WeChat Pay
//! answering `ORDERPAID` instead → the payment read back (`pay/orderquery`) and recorded,
//! answered PAID, nothing added or closed (`paid_at_wechat_pay`); WeChat Pay not showing it →
//! 503 `ORDER_STATUS_UNKNOWN`, nothing closed. The order does not exist: it is created under
//! that number. The key is released, so a retry starts afresh under a new number, only when
//! the attempt left nothing behind: it was refused before the order was written (sold out, not
//! for sale, …), or WeChat refused it and the order was closed with its stock given back.
//!
//! # Added late
//!
//! The trading component takes an order only with 15 minutes or more to go (`expire_time`,
//! WECHAT_SHOP.md §5.1). An order added with less left — resumed after an attempt cut off
//! (30 s at least later, often minutes), or any order with `ORDER_TTL_SECS` at its least
//! (900) — is sent with 15 minutes and 30 s
//! ([`component_expiry_floor`](super::shop_orders::component_expiry_floor)). A
//! secondary-merchant order, whose component order is its payment, has its own expiry moved
//! to the same moment first (`extend_expiry`), so the close sweep, a repeated key's settling
//! and the stock it holds follow WeChat's deadline and the user gets the whole time to pay. A
//! direct order's expiry stays: it is WeChat Pay's `time_expire` for the prepay order, which a
//! resumed `pay/unifiedorder` must repeat unchanged, and the order cannot be paid past it; its
//! component order, a mirror, is cancelled by our close when ours expires. Closing the order
//! and telling the user to order again was not chosen: nothing is wrong with it.
//!
//! # Too late to pay
//!
//! A repeated or resumed key's unpaid order whose deadline WeChat holds it to
//! (`deadline_fixed`: a direct order's `time_expire`, which a resumed `pay/unifiedorder` must
//! repeat unchanged; a secondary-merchant order's component `expire_time`, once WeChat holds
//! it) is not handed out for payment with less than [`PAY_MARGIN_MS`] (WeChat Pay's minute and
//! 5 s of slack) left before that deadline as WeChat holds it — sent in whole seconds, so the
//! fraction of a second dropped counts as gone: the user would open the payment sheet and
//! WeChat Pay refuse the payment as the order expired, mid-payment, and a resumed
//! `pay/unifiedorder` with under a minute left is refused outright (`time_expire` too short),
//! which the user would see as a failure (502) rather than "order again". It is settled as an expired one is (`brought_up_to_date` →
//! [`settle_unpaid`](super::order_sync::settle_unpaid)): WeChat asked first whether it was
//! paid (a PREPAID one: WeChat Pay's `orderquery`, or the component's `shop/order/get`) — paid
//! → recorded and answered as paid, never closed; unpaid → closed (reason "too near its expiry
//! to pay"), stock back, closed at WeChat by the close task (`closeorder`, the component order
//! cancelled, as a payment timeout), and the key answered 409 `ORDER_CLOSED`, which the mini
//! program takes as "order again with a new key"; WeChat not answering → nothing closed, 503
//! `ORDER_STATUS_UNKNOWN`, to retry with the same key. A direct order still CREATED (its
//! earlier attempt cut off) is closed without asking, as an expired one is: nobody held its
//! `prepay_id`, and a payment WeChat Pay had all the same is recorded when the close task's
//! `closeorder` answers `ORDERPAID` (a payment after the close). With more than the margin left
//! the key answers as before: the same order and payment parameters. A first attempt is never
//! refused this way (its order has the whole of `ORDER_TTL_SECS`, which is why that is at least
//! 5 minutes: at 60 s a first `pay/unifiedorder` would fall under WeChat Pay's own minute and
//! every repeat within the margin).
//!
//! # What WeChat may hold
//!
//! Whether the order goes through the trading component is decided before the order is
//! written, and the write records what WeChat is to be asked to create for it
//! ([`SentToWechat`]: the prepay order, the component order). A create call whose answer is lost
//! — a timeout, a reset connection, this function killed — may still have made its order at
//! WeChat; we then hold no `prepay_id` or component id, yet the order's close (this call's own
//! when it fails, the user's, or the sweep's when the order expires) closes it at WeChat by our
//! number (`order_sync`'s close task). The failed call closes the order and releases the key,
//! so a retry is a new order under a new number; the old number's prepay order, if WeChat made
//! one, is closed and cannot be paid. Only a retry that resumes (the order survived, see above)
//! asks under the same number, with the same parameters.

use super::common::{
    authenticate, close_and_release_opened, component_on, take_turns, with_retries, Attempt,
    OpenedAtWechat,
};
use super::order_sync::Settled;
use super::pay_orders::Prepay;
use super::platform_delisting;
use crate::app::App;
use crate::config::TradingComponent;
use crate::domain::{
    Address, Fen, FundType, OpenId, Order, OrderItem, OrderStatus, OutTradeNo, Product, ProductId,
    SellError, SentToWechat, SkuId,
};
use crate::http::{client_ip, json, parse_json, ApiError, Request, Response};
use crate::store::idempotency::{self, Claim};
use crate::store::repo::{self, Batch, Versioned};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const MAX_LINES: usize = 20;
const MAX_QUANTITY: u32 = 99;
/// The longest product image (bytes) an order line keeps. The line's image is only ever sent
/// to the trading component (`shop/order/add`), which takes WeChat's own images
/// (`shop/img/upload`'s URLs, ~100–200 bytes); a longer one is an inline `data:` image of a
/// product the component never saw, shown nowhere from the order. Copied whole into every
/// line, 20 lines of a 60 KB image made an order over DynamoDB's 400 KB item limit: on AWS the
/// order was refused 503 `STORE_UNAVAILABLE` ("retry shortly") however often the user retried,
/// while SQLite took it.
const MAX_LINE_IMAGE_BYTES: usize = 2048;
/// An in-progress record older than this is presumed dead: unifiedOrder's Lambda timeout (28 s,
/// infra/template.yaml; tests/tests/infra.rs keeps it below 30 s) is shorter.
const IN_PROGRESS_MS: i64 = 30_000;
/// How long a completed call's result is replayed for a repeated key.
const IDEMPOTENCY_TTL_SECS: i64 = 24 * 3600;

#[derive(Deserialize, Serialize, Clone, Debug)]
pub struct CartLine {
    pub product_id: String,
    pub sku_id: String,
    pub quantity: u32,
}

#[derive(Deserialize)]
struct UnifiedOrderRequest {
    #[serde(default)]
    items: Vec<CartLine>,
    /// Enter scene of the mini program (`wx.getEnterOptionsSync().scene`).
    #[serde(default)]
    scene: Option<u32>,
    #[serde(default)]
    idempotency_key: Option<String>,
    /// Delivery address; required when the order goes through the trading component.
    #[serde(default)]
    address: Option<Address>,
    /// `traceId` from the mini program's `wx.checkBeforeAddOrder`, for `shop/order/add`
    /// (attribution of Channels sales). Not part of the request an idempotency key names.
    #[serde(default)]
    trace_id: Option<String>,
    /// `requireOrder` (0 or 1) from the same pre-order check: whether the user's scene needs
    /// a trading-component order. With `WX_TRADING_COMPONENT=scene` it decides, instead of
    /// asking the deprecated `shop/scene/check` (see [`needs_component`]). Not part of the
    /// request an idempotency key names.
    #[serde(default)]
    require_order: Option<u8>,
}

/// Where an order comes from: the mini program's scene and its pre-order check's trace id
/// and verdict.
#[derive(Clone, Debug, Default)]
struct Origin {
    scene: Option<u32>,
    trace_id: Option<String>,
    require_order: Option<bool>,
}

/// `requireOrder` as `wx.checkBeforeAddOrder` gives it: 0 or 1.
fn check_require_order(r: Option<u8>) -> Result<Option<bool>, ApiError> {
    match r {
        None => Ok(None),
        Some(0) => Ok(Some(false)),
        Some(1) => Ok(Some(true)),
        Some(_) => Err(ApiError::bad_request(
            "BAD_REQUIRE_ORDER",
            "`require_order` must be the requireOrder wx.checkBeforeAddOrder gave: 0 or 1",
        )),
    }
}

/// A trace id as `wx.checkBeforeAddOrder` gives it: printable ASCII, 1–128 characters.
fn check_trace_id(t: Option<String>) -> Result<Option<String>, ApiError> {
    match t {
        None => Ok(None),
        Some(t) if t.is_empty() => Ok(None),
        Some(t) if t.len() <= 128 && t.bytes().all(|b| b.is_ascii_graphic()) => Ok(Some(t)),
        Some(_) => Err(ApiError::bad_request(
            "BAD_TRACE_ID",
            "`trace_id` must be the traceId wx.checkBeforeAddOrder gave (printable, ≤128 characters)",
        )),
    }
}

/// The result (contract: ARCHITECTURE.md). `payment` spreads into `wx.requestPayment`.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct UnifiedOrderResult {
    pub out_trade_no: String,
    /// What the user pays, in fen: the items plus `freight`.
    pub total_fee: i64,
    /// The freight part of `total_fee`, in fen (0: no freight is charged yet). Results stored
    /// before it was answered read 0 and are answered with the order's own (see `replay`).
    #[serde(default)]
    pub freight: i64,
    pub status: OrderStatus,
    pub fund_type: u8,
    pub payment: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ticket: Option<String>,
    #[serde(rename = "orderInfo", skip_serializing_if = "Option::is_none", default)]
    pub order_info: Option<serde_json::Value>,
}

pub async fn handle(app: &App, req: Request) -> Result<Response, ApiError> {
    let openid = authenticate(app, &req)?;
    // A blocked user orders nothing, a repeated key included (see `user_blocks`).
    super::user_blocks::refuse_blocked(app, &openid).await?;
    let body: UnifiedOrderRequest = parse_json(&req)?;
    let lines = validate_cart(&body.items)?;

    let key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(body.idempotency_key.clone());
    let address = body.address.clone();
    let origin = Origin {
        scene: body.scene,
        trace_id: check_trace_id(body.trace_id.clone())?,
        require_order: check_require_order(body.require_order)?,
    };
    let ip = client_ip(&req);
    if let Some(a) = &address {
        if let Err(why) = a.check() {
            return Err(ApiError::bad_request(
                "BAD_ADDRESS",
                format!("address: {why}"),
            ));
        }
    }
    // An order that certainly goes through the trading component needs an address: refused
    // before anything is made (with `scene` and no pre-order check's verdict, only the scene
    // check can tell; see `plan_at_wechat`).
    if address.is_none()
        && (app.config.trading_component == TradingComponent::Always
            || app.config.fund_type == FundType::SecondaryMerchant
            || (app.config.trading_component == TradingComponent::SceneCheck
                && origin.require_order == Some(true)))
    {
        return Err(super::shop_orders::address_required());
    }
    let Some(key) = key else {
        let attempt = Reservation {
            out_trade_no: OutTradeNo::generate(app.clock.now_ms()),
            ip,
        };
        let result = place(app, &attempt, false, &openid, &lines, &origin, address)
            .await
            .map_err(|f| f.error)?;
        return answer(&result);
    };
    if key.is_empty() || key.len() > 128 {
        return Err(ApiError::bad_request(
            "BAD_IDEMPOTENCY_KEY",
            "idempotency key must be 1–128 characters",
        ));
    }
    let record_key = format!("unifiedOrder:{openid}:{key}");
    let fingerprint = Fingerprint::of(&lines, body.scene, body.address.as_ref());
    let now = app.clock.now_ms();
    let offered = Reservation {
        out_trade_no: OutTradeNo::generate(now),
        ip,
    };
    let offered_json =
        serde_json::to_string(&offered).map_err(|e| ApiError::internal(e.to_string()))?;
    let reference =
        match claim_key(
            app.store.as_ref(),
            &record_key,
            &fingerprint,
            &offered_json,
            now,
        )
        .await?
        {
            Claim::Completed(stored) => return replay(app, &stored).await,
            Claim::InProgress => {
                return Err(ApiError::conflict(
                    "REQUEST_IN_PROGRESS",
                    "the same order request is being processed; retry in a moment",
                ))
            }
            // The key's first request may still be making its order: a caller told its number
            // now could close it before it exists (ORDER_NOT_FOUND) and the order would then stay
            // open until it expired. It hears that the key is busy, and asks again.
            Claim::PayloadMismatch {
                running: true,
                reference: _,
            } => return Err(ApiError::conflict(
                "REQUEST_IN_PROGRESS",
                "this idempotency key's first request (another cart, address or enter scene) is \
                 still being processed; retry in a moment",
            )),
            Claim::PayloadMismatch {
                reference,
                running: false,
            } => return Err(key_reused(reference.as_deref())),
            Claim::New { reference } => reference,
        };
    // Taken over from an earlier attempt under this key: it may have begun the order.
    let resumed = reference != offered_json;
    let reservation: Reservation = if resumed {
        serde_json::from_str(&reference)
            .map_err(|e| ApiError::internal(format!("stored reservation unreadable: {e}")))?
    } else {
        offered
    };
    let placed = place(
        app,
        &reservation,
        resumed,
        &openid,
        &lines,
        &origin,
        address,
    )
    .await;
    let failure = match placed {
        Ok(result) => {
            let stored =
                serde_json::to_string(&result).map_err(|e| ApiError::internal(e.to_string()))?;
            match idempotency::complete(app.store.as_ref(), &record_key, &stored).await {
                // A resumed order closed meanwhile is completed too, with the result that
                // answers it: repeats replay 409 `ORDER_CLOSED` without resuming again.
                Ok(()) => return answer(&result),
                // The order is made but its result is not recorded: a retry resumes it.
                Err(e) => PlaceError {
                    error: e.into(),
                    left: Left::Order,
                },
            }
        }
        Err(f) => f,
    };
    let settled = match failure.left {
        // A retry may start afresh, under a new order number.
        Left::Nothing => idempotency::release(app.store.as_ref(), &record_key).await,
        // A retry must find what this attempt may have made: it takes the key over at once
        // and resumes under the same number.
        Left::Order => idempotency::abandon(app.store.as_ref(), &record_key).await,
    };
    if let Err(e) = settled {
        // The claim then stays in progress until it expires, and is taken over after that.
        tracing::warn!(error = %e, "could not release or abandon the idempotency record");
    }
    Err(failure.error)
}

/// 422 `IDEMPOTENCY_KEY_REUSED`: the key was claimed for another request (cart, address or
/// enter scene), and keeps standing for that one — never answered with its order for this
/// request, never a second order under it. The answer names the order the key holds
/// (`out_trade_no`, from the claim's reservation; the key is the caller's own, scoped to their
/// openid): a client that reused the key to pay that order, and finds the request changed
/// (the user came back through another enter scene), can close it — the user's own close,
/// `queryOrder` `close`, which answers 409 `ORDER_PAID` if it was paid meanwhile — rather than
/// leave it holding its stock until it expires, and order again with a new key. The number
/// says nothing of whether the order was made: the first attempt may have been refused (then
/// `ORDER_NOT_FOUND`). It is not given while that attempt's claim is live — it may not have
/// written the order yet, and a close before the write would leave the order open until it
/// expired: the answer is then 409 `REQUEST_IN_PROGRESS`, which clients retry with the same
/// key (for an attempt cut off, until its claim's window has passed).
fn key_reused(reference: Option<&str>) -> ApiError {
    let held = reference
        .and_then(|r| serde_json::from_str::<Reservation>(r).ok())
        .map(|r| r.out_trade_no);
    let refusal = |message: String| {
        ApiError::new(
            http::StatusCode::UNPROCESSABLE_ENTITY,
            "IDEMPOTENCY_KEY_REUSED",
            message,
        )
    };
    match held {
        Some(no) => refusal(format!(
            "this idempotency key was used for a different cart, address or enter scene, and \
             holds order {no} (`out_trade_no`): close that order (queryOrder with action \
             close) unless it is still to be paid as it was, and order with a new key"
        ))
        .with("out_trade_no", no.as_str()),
        None => refusal(
            "this idempotency key was used for a different cart, address or enter scene; \
             order with a new key"
                .to_owned(),
        ),
    }
}

/// A repeated key whose call completed: the stored result, with its order as it is now. A
/// closed order can no longer be paid with the stored payment parameters, so the key is spent
/// (409 `ORDER_CLOSED`; a new purchase takes a new key). A resumed key whose order was closed
/// is completed with a result naming it CLOSED, answered the same way.
///
/// An unpaid order past its `expires_at_ms` — or with [`PAY_MARGIN_MS`] or less left to pay
/// in — is settled here as the sweep would, before answering (`brought_up_to_date`, as a
/// resumed key's order is): its prepay order has expired at WeChat too (or will while the
/// user pays), and the stored parameters would only fail in the cashier again and again until
/// the sweep (every 5 minutes) closed it. WeChat is asked whether it was paid: paid → the
/// payment is recorded and the order answered paid (with an empty `payment`: see below); not
/// paid → closed,
/// stock back, closed at WeChat, and 409 `ORDER_CLOSED`. When WeChat does not say, the order
/// is not closed (it may have been paid) and the answer is 503 `ORDER_STATUS_UNKNOWN`, which
/// the client retries with the same key: the stored parameters would open a cashier that
/// cannot pay, and a status read before WeChat answered might be wrong either way.
///
/// A PREPAID order is asked about at WeChat even with time left, as `queryOrder` and the
/// unpaid sweep ask (`settle_unpaid`): the user may have paid it, or cancelled it in WeChat's
/// order centre, and the notification or push about it been lost (WeChat does not promise
/// them), and its stored payment parameters would only fail in the cashier — or, paid, make a
/// client that trusts the answer show "unpaid". A secondary-merchant (fund_type 1) order is
/// read with `shop/order/get`; a direct (fund_type 0) one with WeChat Pay's `pay/orderquery`,
/// and — only when that reads it unpaid and the order is in the trading component — its
/// component order with `shop/order/get` (the user's cancel there leaves the WeChat Pay order
/// open). Paid → the payment recorded (as the notification records it: the payment sync
/// queued once), answered PAID; cancelled at WeChat, or its WeChat Pay order `CLOSED` → closed
/// here, stock back (and a WeChat Pay order still open closed by the close task), 409
/// `ORDER_CLOSED`; waiting for payment → the stored parameters. WeChat not answering → the
/// stored parameters, nothing closed, as a resumed key's order is (`place`): a 503 would stop
/// the user paying an order that is most likely payable, over one failed read; the parameters
/// can pay nothing WeChat would not take (it refuses to pay a paid order, or a closed one), so
/// at worst the cashier fails once, as before. Only a repeated key pays for the read; a first
/// call never makes it.
///
/// An answer whose order is no longer to pay (PAID or later) carries an empty `payment`, never
/// the stored parameters: a client that sees parameters may open the cashier again for an order
/// paid already.
async fn replay(app: &App, stored: &str) -> Result<Response, ApiError> {
    let mut result: UnifiedOrderResult = serde_json::from_str(stored)
        .map_err(|e| ApiError::internal(format!("stored result unreadable: {e}")))?;
    let Ok(no) = OutTradeNo::parse(result.out_trade_no.clone()) else {
        return answer(&result);
    };
    let Some(order) = repo::get_order(app.store.as_ref(), &no).await? else {
        return answer(&result);
    };
    // The user may have paid it (or cancelled it in WeChat's order centre) and the
    // notification or push not landed, so WeChat is asked first.
    let order = brought_up_to_date(app, order.value).await?;
    result.status = order.status;
    if order.status != OrderStatus::Prepaid {
        // Nothing to pay: a paid order's parameters would only open a cashier WeChat refuses.
        result.payment = no_payment();
    }
    // The amounts as the order states them (a result stored before `freight` was answered
    // has none).
    result.total_fee = order.total.get();
    result.freight = order.freight.get();
    answer(&result)
}

/// WeChat Pay's least `time_expire`: 1 minute after the request (WECHAT_PAY_V2.md §2.2 and §4,
/// "recommended ≥1 minute"; the local sandbox refuses less with `time_expire时间过短，至少1分钟`,
/// as WeChat Pay is reported to — UNVERIFIED whether it refuses a repeated call for an order it
/// already holds). WeChat deems a minute enough to pay in.
pub const WECHAT_PAY_LEAST_EXPIRY_MS: i64 = 60_000;

/// The least time a key's unpaid order must have left before its deadline — as WeChat holds
/// it: sent in whole seconds, the fraction dropped ([`deadline_at_wechat`]) — to be handed out
/// for payment again: WeChat Pay's own least ([`WECHAT_PAY_LEAST_EXPIRY_MS`]) and 5 s of slack
/// for the clock difference between us and WeChat and the time the request takes to get
/// there. A resumed `pay/unifiedorder` with less than WeChat's minute is refused outright
/// (`PAYMENT_REFUSED`, where 409 `ORDER_CLOSED` — order again — was due), and a margin under
/// it would hand out payment sheets that WeChat Pay refuses as the order expires while the
/// user is paying; one much above it would close orders a user could still pay.
pub const PAY_MARGIN_MS: i64 = WECHAT_PAY_LEAST_EXPIRY_MS + 5_000;

/// `order`'s deadline as WeChat holds it: its `expires_at_ms` sent in whole seconds (a direct
/// order's `time_expire`, a secondary-merchant one's component `expire_time`), the fraction of
/// a second dropped.
fn deadline_at_wechat(order: &Order) -> i64 {
    crate::time::whole_second(order.expires_at_ms)
}

/// The margin (ms before `expires_at_ms`, as [`settle_unpaid`](super::order_sync::settle_unpaid)
/// counts it) within which a key's unpaid order is too late to pay: [`PAY_MARGIN_MS`] before
/// its deadline as WeChat holds it ([`deadline_at_wechat`]) for one WeChat holds to its
/// deadline ([`deadline_fixed`]), else none (it is given the whole time instead).
fn pay_margin_ms(order: &Order) -> i64 {
    if !deadline_fixed(order) {
        return 0;
    }
    let dropped = order
        .expires_at_ms
        .saturating_sub(deadline_at_wechat(order));
    PAY_MARGIN_MS.saturating_add(dropped)
}

/// Whether a key's unpaid `order` is, at `now`, too late to be handed out for payment (or
/// past its expiry): settled as the sweep would rather than answered (see
/// [`brought_up_to_date`]).
fn too_late_to_pay(order: &Order, now: i64) -> bool {
    order.status.is_unpaid_open() && order.expires_at_ms <= now.saturating_add(pay_margin_ms(order))
}

/// Whether WeChat holds `order` to its `expires_at_ms`, so that it cannot be paid past it and
/// the deadline cannot move: a direct order's is WeChat Pay's `time_expire`, which a resumed
/// `pay/unifiedorder` must repeat unchanged (and an earlier attempt may have sent); a
/// secondary-merchant order's is its component order's `expire_time` once WeChat holds it (its
/// id known). One not added yet has its expiry moved before it is (`extend_expiry`): it
/// is given the whole time to pay instead.
fn deadline_fixed(order: &Order) -> bool {
    match order.fund_type {
        FundType::Direct => true,
        FundType::SecondaryMerchant => order.wx_order_id.is_some(),
    }
}

/// A key's order brought up to date before it is answered, by a completed key's `replay` and
/// a resumed key's `place`. One unpaid and past its `expires_at_ms` — or with less than
/// [`PAY_MARGIN_MS`] left while WeChat holds it to that deadline ([`deadline_fixed`],
/// [`too_late_to_pay`]): its
/// payment parameters would open a payment sheet WeChat refuses as the order expires — is
/// settled as the sweep would ([`settle_unpaid`](super::order_sync::settle_unpaid)): paid at
/// WeChat → recorded, the order as paid; not paid → closed (stock back, closed at WeChat, the
/// key answered 409 `ORDER_CLOSED`: order again with a new key); WeChat did not say → not
/// closed (it may have been paid), 503 `ORDER_STATUS_UNKNOWN`, to retry with the same key.
/// WeChat is asked about an open PREPAID one too — paid → recorded; held cancelled or closed
/// there → closed here (see [`settle_unpaid`](super::order_sync::settle_unpaid)); one it
/// cannot say about is then left as it is.
async fn brought_up_to_date(app: &App, order: Order) -> Result<Order, ApiError> {
    let now = app.clock.now_ms();
    let margin_ms = pay_margin_ms(&order);
    let due = too_late_to_pay(&order, now);
    let ask = due || order.status == OrderStatus::Prepaid;
    if !ask {
        return Ok(order);
    }
    let no = order.out_trade_no.clone();
    match super::order_sync::settle_unpaid(app, order.clone(), now, margin_ms).await? {
        Settled::Paid(o) | Settled::Closed(o) => Ok(o),
        Settled::Open => Ok(order),
        Settled::Unanswered {
            error,
            expired: false,
        } => {
            tracing::warn!(out_trade_no = %no, error = %error, "unifiedOrder: WeChat did not say whether a resumed key's order was paid; answered as it is");
            Ok(order)
        }
        Settled::Unanswered {
            error,
            expired: true,
        } => {
            tracing::warn!(out_trade_no = %no, error = %error, "unifiedOrder: a key's order expired (or has too little time left to pay) and WeChat did not say whether it was paid; not closed");
            Err(super::order_sync::status_unknown(
                error,
                format!(
                    "the order this idempotency key made ({no}) expired or has too little \
                     time left to be paid, and WeChat could not say whether it was paid, so it \
                     was not closed; retry shortly with the same key"
                ),
            ))
        }
    }
}

/// Whether `order` is a secondary-merchant order an earlier attempt may have been cut off in
/// while `shop/order/add` was on its way back: still CREATED, its component order planned, and
/// no id of it stored (the id is stored with PREPAID, in the same write).
fn lost_add(order: &Order) -> bool {
    order.fund_type == FundType::SecondaryMerchant
        && order.status == OrderStatus::Created
        && order.wx_order_id.is_none()
        && order.at_wechat().component_order
}

/// A resumed [`lost_add`] order, as WeChat's order under its number says, read before
/// anything is added again ([`read_back_lost_add`](super::shop_orders::read_back_lost_add)):
/// paid there → the payment recorded, the order as paid; waiting for payment → the order with
/// WeChat's id in hand (not stored yet), which `prepay` pays as it is instead of adding it
/// again; cancelled there → closed here (stock back), answered 409 `ORDER_CLOSED`; not there
/// → as it was, and added. WeChat did not say → nothing closed or added, 503
/// `ORDER_STATUS_UNKNOWN`, to retry with the same key; its order contradicts ours → 409
/// `WECHAT_ORDER_MISMATCH` (a security event), nothing closed either.
async fn read_back_lost_add(app: &App, order: Order) -> Result<Order, ApiError> {
    use super::shop_orders::LostAdd;
    let no = order.out_trade_no.clone();
    let read = super::shop_orders::read_back_lost_add(app, &order)
        .await
        .map_err(|error| {
            tracing::warn!(out_trade_no = %no, error = %error, "unifiedOrder: WeChat did not say what it holds of a resumed key's order; not added again");
            super::order_sync::status_unknown(
                error,
                format!(
                    "WeChat could not say whether it holds the order this idempotency key \
                     made ({no}) or whether it was paid, so it was neither added again nor \
                     closed; retry shortly with the same key"
                ),
            )
        })?;
    match read {
        LostAdd::Absent => Ok(order),
        LostAdd::Pending(id) => {
            tracing::info!(out_trade_no = %no, wx_order_id = id, "a resumed key's component order is at WeChat, waiting for payment: paid as it is");
            let mut order = order;
            order.wx_order_id = Some(id);
            Ok(order)
        }
        LostAdd::Paid(paid) => {
            tracing::info!(out_trade_no = %no, "a resumed key's component order was paid at WeChat: payment recorded");
            Ok(*paid)
        }
        LostAdd::Cancelled(id) => {
            let opened = OpenedAtWechat {
                prepay_id: None,
                wx_order_id: Some(id),
            };
            close_and_release_opened(app, &no, "cancelled at WeChat", &opened).await
        }
        LostAdd::Refused(why) => {
            tracing::warn!(security = true, out_trade_no = %no, why, "WeChat's order contradicts ours; not recorded");
            Err(ApiError::conflict("WECHAT_ORDER_MISMATCH", why))
        }
    }
}

/// A key's result as the caller gets it: 409 `ORDER_CLOSED` for an order closed unpaid — its
/// payment parameters can no longer pay it, so the key is spent and a new purchase takes a
/// new key — else the result.
fn answer(result: &UnifiedOrderResult) -> Result<Response, ApiError> {
    if result.status == OrderStatus::Closed {
        return Err(ApiError::conflict(
            "ORDER_CLOSED",
            format!(
                "the order this idempotency key made ({}) was closed unpaid; buy again with a \
                 new key",
                result.out_trade_no
            ),
        ));
    }
    Ok(json(result))
}

/// What an idempotency key stands for at WeChat Pay, chosen at its first claim and kept in the
/// claim (its reference): the order number, and the client IP sent as `spbill_create_ip` —
/// `pay/unifiedorder` called again for an `out_trade_no` answers with the same prepay order
/// only if every parameter is the same (a changed one is `OUT_TRADE_NO_USED`), and a retry may
/// come from another address.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct Reservation {
    out_trade_no: OutTradeNo,
    ip: String,
}

/// What a failed attempt left behind under its order number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Left {
    /// Nothing that holds stock or could be paid: refused before the order was written, or
    /// closed with its stock given back.
    Nothing,
    /// An order, or perhaps one (a store write that failed may have been applied).
    Order,
}

struct PlaceError {
    error: ApiError,
    left: Left,
}

impl PlaceError {
    fn left_order(error: ApiError) -> Self {
        PlaceError {
            error,
            left: Left::Order,
        }
    }
}

struct Line {
    product_id: ProductId,
    sku_id: SkuId,
    quantity: u32,
}

fn validate_cart(items: &[CartLine]) -> Result<Vec<Line>, ApiError> {
    if items.is_empty() || items.len() > MAX_LINES {
        return Err(ApiError::bad_request(
            "BAD_CART",
            format!("`items` must have 1–{MAX_LINES} lines"),
        ));
    }
    let mut lines: Vec<Line> = Vec::with_capacity(items.len());
    for it in items {
        let product_id = ProductId::parse(it.product_id.clone())
            .map_err(|e| ApiError::bad_request("BAD_CART", e.to_string()))?;
        let sku_id = SkuId::parse(it.sku_id.clone())
            .map_err(|e| ApiError::bad_request("BAD_CART", e.to_string()))?;
        if it.quantity == 0 || it.quantity > MAX_QUANTITY {
            return Err(ApiError::bad_request(
                "BAD_CART",
                format!("quantity must be 1–{MAX_QUANTITY}"),
            ));
        }
        if lines
            .iter()
            .any(|l| l.product_id == product_id && l.sku_id == sku_id)
        {
            return Err(ApiError::bad_request(
                "BAD_CART",
                format!("sku {sku_id} appears twice; send one line with the total quantity"),
            ));
        }
        lines.push(Line {
            product_id,
            sku_id,
            quantity: it.quantity,
        });
    }
    Ok(lines)
}

/// What an idempotency key stands for: the cart, the scene and the delivery address — a
/// retry under the same key with another address is another request (422), never the first
/// order replayed with the old address. The cart is a set of lines (one per SKU: see
/// `validate_cart`), so it is fingerprinted in a canonical order — by product, then SKU — and
/// a retry whose client rebuilt the cart in another order is the same request.
struct Fingerprint {
    /// The lines sorted: what a key is claimed with.
    canonical: String,
    /// The lines as sent, as keys were fingerprinted before the lines were sorted: a record
    /// claimed then (they live [`IDEMPOTENCY_TTL_SECS`]) still matches its own request sent
    /// again in the same order. `None` when the lines came sorted (a cart of one line always):
    /// it would be `canonical`, so neither sort nor second hash is made.
    as_sent: Option<String>,
}

impl Fingerprint {
    fn of(lines: &[Line], scene: Option<u32>, address: Option<&Address>) -> Self {
        fn order(l: &Line) -> (&str, &str) {
            (l.product_id.as_str(), l.sku_id.as_str())
        }
        if lines.is_sorted_by(|a, b| order(a) <= order(b)) {
            return Fingerprint {
                canonical: payload_hash(lines.iter(), scene, address),
                as_sent: None,
            };
        }
        let mut sorted: Vec<&Line> = lines.iter().collect();
        sorted.sort_by(|a, b| order(a).cmp(&order(b)));
        Fingerprint {
            canonical: payload_hash(sorted.iter().copied(), scene, address),
            as_sent: Some(payload_hash(lines.iter(), scene, address)),
        }
    }
}

/// Claims `record_key` for the request `fingerprint` names: with its canonical hash, and —
/// when the key was claimed for another request by that and the lines came unsorted — with the
/// hash of the lines as sent, which a record claimed before the lines were sorted holds. The
/// second claim is only asked when the first found a mismatch (which changes nothing), so a
/// key is never claimed twice; a mismatch both ways is the key reused.
async fn claim_key(
    store: &dyn crate::store::Store,
    record_key: &str,
    fingerprint: &Fingerprint,
    offered: &str,
    now: i64,
) -> Result<Claim, ApiError> {
    let hashes =
        std::iter::once(fingerprint.canonical.as_str()).chain(fingerprint.as_sent.as_deref());
    let mut claimed = Claim::InProgress;
    for hash in hashes {
        claimed = idempotency::claim(
            store,
            record_key,
            hash,
            offered,
            now,
            IN_PROGRESS_MS,
            IDEMPOTENCY_TTL_SECS,
        )
        .await?;
        if !matches!(claimed, Claim::PayloadMismatch { .. }) {
            break;
        }
    }
    Ok(claimed)
}

/// The hash of a request: its lines in the order given, the scene and the address.
fn payload_hash<'a>(
    lines: impl Iterator<Item = &'a Line>,
    scene: Option<u32>,
    address: Option<&Address>,
) -> String {
    let mut h = Sha256::new();
    for l in lines {
        h.update(l.product_id.as_str().as_bytes());
        h.update([0]);
        h.update(l.sku_id.as_str().as_bytes());
        h.update([0]);
        h.update(l.quantity.to_be_bytes());
    }
    h.update(scene.unwrap_or(0).to_be_bytes());
    if let Some(a) = address {
        // Field by field, each with its length, so no two addresses hash alike.
        for part in [
            a.receiver_name.as_str(),
            a.detailed_address.as_str(),
            a.tel_number.as_str(),
            a.province.as_deref().unwrap_or(""),
            a.city.as_deref().unwrap_or(""),
            a.town.as_deref().unwrap_or(""),
        ] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
    }
    hex::encode(h.finalize())
}

fn sell_error(e: SellError) -> ApiError {
    match e {
        SellError::SoldOut { .. } => ApiError::conflict("SOLD_OUT", e.to_string()),
        SellError::NoSuchSku(..) => ApiError::not_found("NO_SUCH_SKU", e.to_string()),
        SellError::NotApproved(_) | SellError::NotListed(_) => {
            ApiError::conflict("NOT_FOR_SALE", e.to_string())
        }
    }
}

/// Prices the cart from the catalog, takes the stock and creates the order `no`, atomically,
/// with what it is to be at WeChat (`sent`) — or, when an earlier attempt already made order
/// `no`, returns that one (stock taken once). The flag says which: `true` when it was made now.
#[allow(clippy::too_many_arguments)]
async fn create_priced_order(
    app: &App,
    no: &OutTradeNo,
    resumed: bool,
    openid: &OpenId,
    lines: &[Line],
    origin: &Origin,
    address: Option<Address>,
    sent: SentToWechat,
) -> Result<(Order, bool), ApiError> {
    // Buyers of the same product in this process take turns (see `take_turns`): without
    // them, concurrent checkouts of one product conflict on its stock and an unlucky one
    // can exhaust the retries. The turns are held until the write has committed.
    let _turns = take_turns(lines.iter().map(|l| l.product_id.as_str())).await;
    let first_round = std::sync::atomic::AtomicBool::new(true);
    // A conflict means someone bought from the same product meanwhile (another process):
    // price and reserve again.
    with_retries(app, || async {
        // Order `no` may exist when an earlier attempt under this key made it, or when the
        // order's own condition (`Absent`) is what conflicted; a fresh number on its first
        // round cannot, and is not looked up.
        let fresh = !resumed && first_round.swap(false, std::sync::atomic::Ordering::Relaxed);
        if !fresh {
            if let Some(existing) = repo::get_order(app.store.as_ref(), no).await? {
                if &existing.value.openid != openid {
                    return Err(ApiError::internal(format!(
                        "order {no} belongs to another user"
                    )));
                }
                return Ok(Attempt::Done((existing.value, false)));
            }
        }
        let mut products: Vec<(Versioned<Product>, Product)> = Vec::new();
        for l in lines {
            if products
                .iter()
                .any(|(p, _)| p.value.product_id == l.product_id)
            {
                continue;
            }
            let p = repo::get_product(app.store.as_ref(), &l.product_id)
                .await?
                .ok_or_else(|| {
                    ApiError::not_found(
                        "NO_SUCH_PRODUCT",
                        format!(
                            "no product {} in the shop: it was removed or never existed; \
                             reload the shop's products (catalogSync products) and order one \
                             of those",
                            l.product_id
                        ),
                    )
                })?;
            let copy = p.value.clone();
            products.push((p, copy));
        }
        let mut items = Vec::with_capacity(lines.len());
        let mut total = Fen::ZERO;
        for l in lines {
            let Some((_, product)) = products
                .iter_mut()
                .find(|(p, _)| p.value.product_id == l.product_id)
            else {
                continue;
            };
            let unit_price = product.reserve(&l.sku_id, l.quantity).map_err(sell_error)?;
            let item = OrderItem {
                product_id: l.product_id.clone(),
                sku_id: l.sku_id.clone(),
                title: product.title.clone(),
                head_img: product
                    .head_img
                    .first()
                    .filter(|url| url.len() <= MAX_LINE_IMAGE_BYTES)
                    .cloned()
                    .unwrap_or_default(),
                unit_price,
                quantity: l.quantity,
            };
            // Catalog prices are bounded (`Fen::MAX_PAYMENT`), so 20 lines of 99 cannot
            // overflow; an older record priced past the bound still never wraps.
            total = total
                .checked_add(
                    item.line_total()
                        .map_err(|e| ApiError::bad_request("ORDER_TOO_LARGE", e.to_string()))?,
                )
                .map_err(|e| ApiError::bad_request("ORDER_TOO_LARGE", e.to_string()))?;
            items.push(item);
        }
        if total == Fen::ZERO {
            return Err(ApiError::bad_request(
                "BAD_CART",
                "the order total is zero; WeChat Pay needs at least 1 fen",
            ));
        }
        if total > Fen::MAX_PAYMENT {
            return Err(ApiError::bad_request(
                "ORDER_TOO_LARGE",
                format!(
                    "the order total ({total} fen) is more than one WeChat Pay payment takes ({} fen); order fewer",
                    Fen::MAX_PAYMENT
                ),
            ));
        }
        let now = app.clock.now_ms();
        let order = Order {
            out_trade_no: no.clone(),
            openid: openid.clone(),
            items,
            total,
            freight: Fen::ZERO,
            status: OrderStatus::Created,
            fund_type: app.config.fund_type,
            prepay_id: None,
            prepay_at_ms: None,
            transaction_id: None,
            paid_at_ms: None,
            wx_order_id: None,
            sent_to_wechat: sent,
            ticket: None,
            scene: origin.scene,
            trace_id: origin.trace_id.clone(),
            delivery: None,
            shipped_at_ms: None,
            address: address.clone(),
            refunded: Fen::ZERO,
            refund_claims: Default::default(),
            refunds_by_hand: Default::default(),
            aftersales: Default::default(),
            settled_at_ms: None,
            close_reason: None,
            created_at_ms: now,
            updated_at_ms: now,
            expires_at_ms: now + app.config.order_ttl_secs * 1000,
        };
        let mut batch = Batch::new();
        batch.create_order(&order);
        for (before, after) in &products {
            batch.update_product(before, after);
            super::stock_mirror::add_to(app, &mut batch, &before.value, after).await?;
        }
        Ok(Attempt::Commit(batch, (order, true)))
    })
    .await
}

/// Makes the order `reservation` names and its payment, or resumes what an earlier attempt
/// under the same idempotency key began (`resumed`).
async fn place(
    app: &App,
    reservation: &Reservation,
    resumed: bool,
    openid: &OpenId,
    lines: &[Line],
    origin: &Origin,
    address: Option<Address>,
) -> Result<UnifiedOrderResult, PlaceError> {
    let no = &reservation.out_trade_no;
    // Decided before the order is written, and written with it: a create call whose answer is
    // lost may still have made its order at WeChat, and the close must know to close it there.
    // A resumed order made by an earlier attempt keeps the plan it was written with: WeChat is
    // not asked (the scene check) again for an order already planned.
    let planned = if resumed {
        repo::get_order(app.store.as_ref(), no)
            .await
            .map_err(|e| PlaceError::left_order(e.into()))?
            .map(|o| o.value.sent_to_wechat)
            .filter(|p| !p.is_nothing())
    } else {
        None
    };
    let plan = match planned {
        Some(plan) => plan,
        None => plan_at_wechat(app, origin, address.is_some())
            .await
            .map_err(|error| PlaceError {
                // A resumed order may exist (and hold stock): a retry must find it.
                left: if resumed { Left::Order } else { Left::Nothing },
                error,
            })?,
    };
    let (order, made_now) =
        create_priced_order(app, no, resumed, openid, lines, origin, address, plan)
            .await
            .map_err(|error| PlaceError {
                // A refusal (sold out, not for sale, …) comes before the write; a store failure
                // may come from the write itself, which may have been applied.
                left: if error.status.is_server_error() {
                    Left::Order
                } else {
                    Left::Nothing
                },
                error,
            })?;
    // An order an earlier attempt made is brought up to date first, as a completed key's is
    // (`replay`): past its expiry (or too near it to be paid) and unpaid, it is settled as the
    // sweep would — never handed the payment parameters of a prepay order expired, or about to
    // expire, at WeChat too. A secondary-merchant
    // order WeChat holds is asked about even before then: `getpaymentparams` refuses a paid
    // one, and its payment notification may not have landed; one whose `shop/order/add` answer
    // was lost is read at WeChat by our number first, and never added again if WeChat has it.
    let order = if made_now {
        order
    } else {
        let order = if lost_add(&order) {
            read_back_lost_add(app, order)
                .await
                .map_err(PlaceError::left_order)?
        } else {
            order
        };
        brought_up_to_date(app, order)
            .await
            .map_err(PlaceError::left_order)?
    };
    match order.status {
        OrderStatus::Created => {}
        // An earlier attempt got this far: answer from the store, without asking WeChat
        // (nor overwriting the component order) again.
        OrderStatus::Closed => {
            // Answered 409 `ORDER_CLOSED` (see `answer`), and the key completed with it:
            // repeats replay it without resuming again. Nothing is lost by completing — the
            // replay reads the order too, so one paid after all (a payment after the close)
            // is answered PAID from the completed key as it would be on resuming.
            let component = order.wx_order_id.is_some();
            return Ok(result_of(&order, serde_json::json!({}), component));
        }
        _ => {
            // Paid meanwhile (in WeChat's order centre, or its notification landed while the
            // earlier attempt was cut off): answered as it is, as a repeated key's is, with
            // nothing to pay — WeChat is never asked for a paid order's payment parameters
            // (it refuses them), and its prepay id may never have been stored. The key is
            // completed with this answer.
            let payment = if order.status.is_paid() {
                no_payment()
            } else {
                stored_payment(app, &order)
                    .await
                    .map_err(PlaceError::left_order)?
            };
            // Past CREATED with the component planned means `shop/order/add` answered and its
            // id was stored with the prepay; a paid order whose answer was lost has none.
            let component = order.wx_order_id.is_some();
            return Ok(result_of(&order, payment, component));
        }
    }
    if made_now {
        tracing::info!(out_trade_no = %no, total_fee = order.total.get(), "order created");
    } else {
        tracing::info!(out_trade_no = %no, "resuming the order an earlier attempt under the same idempotency key made");
    }
    // A resumed order goes on as it was planned when it was made (orders stored before plans
    // were recorded: as planned now).
    let plan = if order.sent_to_wechat.is_nothing() {
        plan
    } else {
        order.sent_to_wechat
    };
    let mut opened = OpenedAtWechat::default();
    match prepay(app, order, plan, &reservation.ip, &mut opened).await {
        Ok(Prepared::Opened(r)) => Ok(r),
        // Never closed: the money moved. Answered as a resumed key's paid order is.
        Ok(Prepared::PaidAtWechatPay) => {
            let paid = paid_at_wechat_pay(app, no)
                .await
                .map_err(PlaceError::left_order)?;
            Ok(result_of(&paid, no_payment(), paid.wx_order_id.is_some()))
        }
        Err(error) => {
            // Nothing was paid: close the order and give the stock back — and close what
            // WeChat already opened for it (a prepay order, a component order).
            let left = match close_and_release_opened(app, no, "prepay failed", &opened).await {
                Ok(closed) if closed.status == OrderStatus::Closed => Left::Nothing,
                Ok(_) => Left::Order,
                Err(close) => {
                    tracing::error!(out_trade_no = %no, error = %close, "could not close the failed order; the sweep will");
                    Left::Order
                }
            };
            Err(PlaceError { error, left })
        }
    }
}

/// A resumed order WeChat Pay answered `ORDERPAID` for when `pay/unifiedorder` was asked again
/// under its number: its payment, read back with `pay/orderquery` (amount checked), is
/// recorded and the order returned PAID — no `shop/order/add` is sent (WeChat refuses to
/// replace a paid order) and nothing is closed. WeChat Pay not answering, or not showing the
/// payment yet: 503 `ORDER_STATUS_UNKNOWN`, nothing closed (the order is paid), the key left
/// to resume; a signed answer that contradicts the order: 409 `WECHAT_ORDER_MISMATCH`, kept
/// as evidence where it was read.
///
/// A fund_type 0 order whose answers were lost cannot have been paid by its user in practice
/// (nobody outside this function held its `prepay_id`, which `wx.requestPayment` needs signed
/// by us); this keeps a payment WeChat Pay reports all the same from being closed as a failed
/// prepay and its key released for a second order.
async fn paid_at_wechat_pay(app: &App, no: &OutTradeNo) -> Result<Order, ApiError> {
    let order = repo::get_order(app.store.as_ref(), no)
        .await?
        .ok_or_else(|| ApiError::internal(format!("order {no} vanished")))?
        .value;
    let unknown = || {
        format!(
            "WeChat Pay says the order this idempotency key made ({no}) is paid, but could not \
             show the payment yet; nothing was closed: retry shortly with the same key"
        )
    };
    let recorded = super::pay_orders::query_and_record(app, &order)
        .await
        .map_err(|e| super::order_sync::status_unknown(e, unknown()))?;
    match recorded {
        Some(paid) if paid.status.is_paid() => {
            tracing::warn!(out_trade_no = %no, "a resumed key's order was paid at WeChat Pay (ORDERPAID): payment recorded, not added or closed");
            Ok(paid)
        }
        _ => Err(ApiError::unavailable("ORDER_STATUS_UNKNOWN", unknown())),
    }
}

/// The payment parameters of an order WeChat Pay already holds (`PREPAID` or later).
async fn stored_payment(app: &App, order: &Order) -> Result<serde_json::Value, ApiError> {
    if order.fund_type == FundType::SecondaryMerchant {
        let params = super::shop_orders::payment_params(app, order).await?;
        return serde_json::to_value(&params).map_err(|e| ApiError::internal(e.to_string()));
    }
    let prepay_id = order.prepay_id.as_deref().ok_or_else(|| {
        ApiError::internal(format!("order {} has no prepay_id", order.out_trade_no))
    })?;
    jsapi_payment(app, prepay_id)
}

/// `payment` for an order with nothing to pay (paid already): an empty object, no payment
/// parameters — a client that sees parameters may open the cashier for an order paid already,
/// which WeChat refuses (or the user reads as "pay again"). The field stays: clients (the mini
/// program's `wxshop.js` among them) take a result without one as malformed; they open no
/// cashier for a paid status.
fn no_payment() -> serde_json::Value {
    serde_json::json!({})
}

/// `wx.requestPayment`'s parameters for `prepay_id`, signed now.
fn jsapi_payment(app: &App, prepay_id: &str) -> Result<serde_json::Value, ApiError> {
    let params = crate::pay::jsapi::payment_params(
        app.config.user_appid(),
        prepay_id,
        app.config.api_key(),
        app.config.sign_type,
        app.clock.now_secs(),
    );
    serde_json::to_value(&params).map_err(|e| ApiError::internal(e.to_string()))
}

fn result_of(order: &Order, payment: serde_json::Value, component: bool) -> UnifiedOrderResult {
    let order_info = component.then(|| {
        serde_json::json!({
            "out_order_id": order.out_trade_no.as_str(),
            "order_id": order.wx_order_id.map(|i| i.to_string()),
        })
    });
    UnifiedOrderResult {
        out_trade_no: order.out_trade_no.to_string(),
        total_fee: order.total.get(),
        freight: order.freight.get(),
        status: order.status,
        fund_type: order.fund_type.code(),
        payment,
        ticket: order.ticket.clone(),
        order_info,
    }
}

/// Whether this order goes through the trading component. With `scene`, the mini program's
/// pre-order check (`wx.checkBeforeAddOrder`'s `requireOrder`) decides when it was sent: it
/// is what WeChat tells developers to use now that `shop/scene/check` is "to be abandoned"
/// (WECHAT_SHOP.md §4), and it is the user's own scene it speaks for — a client that lies
/// about it only makes its own payment fail at WeChat (a scene that needs an order refuses a
/// plain `wx.requestPayment`) or its order go through the component. Without it (an older
/// base library or client), the server asks `shop/scene/check` as before.
async fn needs_component(app: &App, origin: &Origin) -> Result<bool, ApiError> {
    match app.config.trading_component {
        TradingComponent::Off => Ok(false),
        TradingComponent::Always => Ok(true),
        TradingComponent::SceneCheck if origin.require_order.is_some() => {
            Ok(origin.require_order == Some(true))
        }
        TradingComponent::SceneCheck => match origin.scene {
            None => Ok(false),
            Some(scene) => app
                .wx
                .scene_check(i64::from(scene))
                .await
                .map(|c| c.matched())
                .map_err(|e| {
                    if e.is_retryable() {
                        return ApiError::unavailable(
                            "WECHAT_UNAVAILABLE",
                            format!("scene check failed: {e}"),
                        );
                    }
                    // Not the buyer's to retry: no permission, or the API retired (WeChat
                    // marks `scene/check` "to be abandoned"). Every order with a scene fails
                    // until the operator picks a mode that does not ask.
                    tracing::error!(error = %e, "WeChat refused shop/scene/check: set WX_TRADING_COMPONENT to always or off");
                    ApiError::new(
                        http::StatusCode::BAD_GATEWAY,
                        "SCENE_CHECK_REFUSED",
                        "this shop cannot take orders from this scene right now; the shop's settings need attention",
                    )
                }),
        },
    }
}

/// What an order is to be at WeChat: a WeChat Pay prepay order (ours to collect), a trading
/// component order, or both. Refused when the component order would need an address there is
/// not: before anything is made.
async fn plan_at_wechat(
    app: &App,
    origin: &Origin,
    has_address: bool,
) -> Result<SentToWechat, ApiError> {
    let fund_type = app.config.fund_type;
    let component = fund_type == FundType::SecondaryMerchant
        || (component_on(app) && needs_component(app, origin).await?);
    if component && !has_address {
        return Err(super::shop_orders::address_required());
    }
    Ok(SentToWechat {
        pay_order: fund_type == FundType::Direct,
        component_order: component,
    })
}

/// What [`prepay`] came to.
enum Prepared {
    /// Opened at WeChat and stored PREPAID: the answer.
    Opened(UnifiedOrderResult),
    /// WeChat Pay answered `ORDERPAID` for the order (a resumed one: see
    /// [`paid_at_wechat_pay`]): nothing opened, nothing stored.
    PaidAtWechatPay,
}

/// Opens `order` at WeChat as `plan` says. `opened` collects the ids WeChat answered with, for
/// the close if a later step fails.
async fn prepay(
    app: &App,
    mut order: Order,
    plan: SentToWechat,
    ip: &str,
    opened: &mut OpenedAtWechat,
) -> Result<Prepared, ApiError> {
    let now = app.clock.now_ms();
    let use_component = plan.component_order;
    if use_component && order.address.is_none() {
        // Before WeChat Pay opens anything: the component order needs the address.
        return Err(super::shop_orders::address_required());
    }

    let payment = if order.fund_type == FundType::SecondaryMerchant {
        // WeChat collects the money: the component order is the payment. A resumed order's,
        // which WeChat made though its answer was lost (`read_back_lost_add`), is paid as it
        // is, never added again.
        if let Some(id) = order.wx_order_id {
            opened.wx_order_id = Some(id);
        } else {
            // WeChat wants 15 minutes at least; the component order is the payment, so ours
            // is made to last as long first (see `extend_expiry`).
            let floor = super::shop_orders::component_expiry_floor(now);
            if order.expires_at_ms < floor {
                order.expires_at_ms = extend_expiry(app, &order.out_trade_no, floor).await?;
            }
            let added = add_to_component(app, &order, None).await?;
            opened.wx_order_id = Some(added.order_id);
            order.wx_order_id = Some(added.order_id);
            order.ticket = Some(added.ticket.clone());
        }
        let params = super::shop_orders::payment_params(app, &order).await?;
        order
            .prepay(
                params.package.trim_start_matches("prepay_id=").to_owned(),
                now,
            )
            .map_err(|e| ApiError::conflict("ORDER_NOT_OPEN", e.to_string()))?;
        serde_json::to_value(&params).map_err(|e| ApiError::internal(e.to_string()))?
    } else {
        // Asked again for a resumed order, WeChat Pay answers with the same prepay order
        // (same number and parameters), or ORDERPAID; the component order `add` then replaces
        // is one still awaiting payment (10): it moves on only through our own payment sync.
        let prepay_id = match super::pay_orders::unified_order(app, &order, ip).await? {
            Prepay::Opened(id) => id,
            Prepay::Paid => return Ok(Prepared::PaidAtWechatPay),
        };
        opened.prepay_id = Some(prepay_id.clone());
        if use_component {
            let added = add_to_component(app, &order, Some(&prepay_id)).await?;
            opened.wx_order_id = Some(added.order_id);
            order.wx_order_id = Some(added.order_id);
            order.ticket = Some(added.ticket);
        }
        order
            .prepay(prepay_id.clone(), now)
            .map_err(|e| ApiError::conflict("ORDER_NOT_OPEN", e.to_string()))?;
        jsapi_payment(app, &prepay_id)?
    };

    // Store PREPAID with the ids; conditional on the version we created.
    let saved = save_prepaid(app, &order).await?;
    Ok(Prepared::Opened(result_of(&saved, payment, use_component)))
}

/// `shop/order/add` of `order`. Refused for good (502), the order's products are read back at
/// WeChat ([`platform_delisting::refused_as_delisted`]): one WeChat's platform delisted on
/// its own, whose push never came, is delisted here and the refusal answered 409
/// `NOT_FOR_SALE` — the user is told the product is not for sale, and the next cart with it
/// is refused here, WeChat not asked — instead of a bare 502 on every order of it for good.
/// The caller closes the order either way (stock back, key released).
async fn add_to_component(
    app: &App,
    order: &Order,
    prepay_id: Option<&str>,
) -> Result<crate::shop::order::OrderAddResult, ApiError> {
    match super::shop_orders::add_order(app, order, prepay_id).await {
        Err(e) if e.status == http::StatusCode::BAD_GATEWAY => {
            let delisted = platform_delisting::refused_as_delisted(app, order).await;
            if delisted.is_empty() {
                Err(e)
            } else {
                Err(platform_delisting::not_for_sale(&delisted))
            }
        }
        other => other,
    }
}

/// A secondary-merchant order about to be added at WeChat with less left than the trading
/// component takes (15 minutes and a margin:
/// [`component_expiry_floor`](super::shop_orders::component_expiry_floor)): its expiry is
/// moved to `until` first, in a version-checked write, so that our order — the close sweep, a
/// repeated key's settling, the stock it holds — and WeChat's (whose `expire_time` is the
/// same) end together, and the user gets the full time to pay. Written before the add: an
/// attempt cut off after the add leaves ours no shorter than WeChat's. The order added late is
/// one resumed after an earlier attempt was cut off (30 s at least later), or one of a stack
/// with `ORDER_TTL_SECS` near its least (900). The expiry now; 409 `ORDER_NOT_OPEN` if the
/// order was closed meanwhile.
async fn extend_expiry(app: &App, no: &OutTradeNo, until: i64) -> Result<i64, ApiError> {
    let extended = with_retries(app, || async {
        let current = repo::get_order(app.store.as_ref(), no)
            .await?
            .ok_or_else(|| ApiError::internal(format!("order {no} vanished")))?;
        if current.value.status != OrderStatus::Created {
            return Err(ApiError::conflict(
                "ORDER_NOT_OPEN",
                format!(
                    "order {no} is {} now; it was not added at WeChat",
                    current.value.status.as_str()
                ),
            ));
        }
        if current.value.expires_at_ms >= until {
            return Ok(Attempt::Done(current.value.expires_at_ms));
        }
        let mut next = current.value.clone();
        next.expires_at_ms = until;
        next.updated_at_ms = app.clock.now_ms();
        let mut batch = Batch::new();
        batch.update_order(&current, &next);
        Ok(Attempt::Commit(batch, until))
    })
    .await?;
    tracing::info!(out_trade_no = %no, expires_at_ms = extended, "order's expiry moved to the trading component's least (15 minutes) before adding it at WeChat");
    Ok(extended)
}

async fn save_prepaid(app: &App, prepared: &Order) -> Result<Order, ApiError> {
    with_retries(app, || async {
        let current = repo::get_order(app.store.as_ref(), &prepared.out_trade_no)
            .await?
            .ok_or_else(|| ApiError::internal("order vanished"))?;
        let mut next = current.value.clone();
        if next.status.is_paid() {
            // Paid already (a very quick user): nothing to add.
            return Ok(Attempt::Done(next));
        }
        if let Some(p) = &prepared.prepay_id {
            next.prepay(p.clone(), app.clock.now_ms())
                .map_err(|e| ApiError::conflict("ORDER_NOT_OPEN", e.to_string()))?;
        }
        next.wx_order_id = prepared.wx_order_id;
        next.ticket = prepared.ticket.clone();
        let mut batch = Batch::new();
        batch.update_order(&current, &next);
        Ok(Attempt::Commit(batch, next))
    })
    .await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::domain::order::tests::sample_order;

    /// WeChat Pay's rule for a `time_expire` (the sandbox's too): a minute or more after the
    /// request, by WeChat's clock.
    fn wechat_pay_takes(time_expire_ms: i64, wechat_now_ms: i64) -> bool {
        time_expire_ms >= wechat_now_ms + WECHAT_PAY_LEAST_EXPIRY_MS
    }

    /// Every expiry from 55 s to 70 s ahead, to the millisecond, against `now`s at several
    /// fractions of a second: an order handed out again is one WeChat Pay still takes — the
    /// deadline sent in whole seconds (the fraction dropped), WeChat's clock up to 4.999 s
    /// ahead of ours — and one closed as too late has no more than the margin left as WeChat
    /// holds it. With the margin at WeChat's bare minute and the exact expiry, an order with
    /// 60.5 s left and a deadline at .700 (WeChat reading 59.8 s) was handed out, and a
    /// resumed `pay/unifiedorder` refused (502 `PAYMENT_REFUSED`).
    #[test]
    fn too_late_to_pay_counts_the_deadline_in_whole_seconds_with_slack() {
        let base = 1_796_486_400_000;
        for now in [base, base + 1, base + 300, base + 999] {
            for left in 55_000..=70_000 {
                let mut o = sample_order(100);
                o.status = OrderStatus::Prepaid;
                o.expires_at_ms = now + left;
                let sent = crate::time::whole_second(o.expires_at_ms);
                if too_late_to_pay(&o, now) {
                    assert!(sent - now <= PAY_MARGIN_MS, "{now} {left}");
                } else {
                    for skew in [0, 1_000, 4_999] {
                        assert!(wechat_pay_takes(sent, now + skew), "{now} {left} {skew}");
                    }
                }
            }
        }
        // The case the bare minute let through.
        let mut o = sample_order(100);
        o.status = OrderStatus::Prepaid;
        let now = base + 200;
        o.expires_at_ms = now + 60_500;
        assert!(!wechat_pay_takes(
            crate::time::whole_second(o.expires_at_ms),
            now
        ));
        assert!(too_late_to_pay(&o, now));
        // More than the margin left as WeChat holds it: handed out again.
        o.expires_at_ms = base + 66_000;
        assert!(!too_late_to_pay(&o, base));
        // A secondary-merchant order WeChat does not hold yet gets its whole time (its
        // deadline is moved before it is added); a paid one is never too late.
        let mut o = sample_order(100);
        o.fund_type = FundType::SecondaryMerchant;
        o.expires_at_ms = base + 1;
        assert!(!too_late_to_pay(&o, base));
        o.wx_order_id = Some(1);
        assert!(too_late_to_pay(&o, base));
        o.status = OrderStatus::Paid;
        assert!(!too_late_to_pay(&o, base));
    }

    fn line(product: &str, sku: &str, quantity: u32) -> Line {
        Line {
            product_id: ProductId::parse(product.to_owned()).unwrap(),
            sku_id: SkuId::parse(sku.to_owned()).unwrap(),
            quantity,
        }
    }

    /// A key claimed before the lines were sorted holds the hash of its lines as sent: the
    /// same request sent again in that order still finds its record (the stored answer), and
    /// another cart is still refused.
    #[tokio::test]
    async fn a_key_fingerprinted_before_the_lines_were_sorted_still_matches() {
        let store = crate::store::sqlite::SqliteStore::memory().unwrap();
        let now = crate::time::Clock::default().now_ms();
        let unsorted = [line("tea", "tea-250g", 1), line("cake", "cake-1", 2)];
        let old = Fingerprint::of(&unsorted, None, None);
        let as_sent = old.as_sent.clone().unwrap();
        assert_ne!(as_sent, old.canonical);
        // As the code before the fix claimed it.
        let claimed = idempotency::claim(&store, "k", &as_sent, "R", now, 30_000, 3_600)
            .await
            .unwrap();
        assert!(matches!(claimed, Claim::New { .. }), "{claimed:?}");
        idempotency::complete(&store, "k", "{\"stored\":1}")
            .await
            .unwrap();

        let again = claim_key(&store, "k", &old, "R2", now).await.unwrap();
        assert!(
            matches!(&again, Claim::Completed(s) if s == "{\"stored\":1}"),
            "{again:?}"
        );
        let other = Fingerprint::of(
            &[line("tea", "tea-250g", 2), line("cake", "cake-1", 2)],
            None,
            None,
        );
        let refused = claim_key(&store, "k", &other, "R2", now).await.unwrap();
        assert!(
            matches!(refused, Claim::PayloadMismatch { .. }),
            "{refused:?}"
        );
        // Lines in any order fingerprint alike; a cart of one line as before.
        let swapped = Fingerprint::of(
            &[line("cake", "cake-1", 2), line("tea", "tea-250g", 1)],
            None,
            None,
        );
        assert_eq!(swapped.canonical, old.canonical);
        let one = Fingerprint::of(&[line("tea", "tea-250g", 1)], Some(1001), None);
        assert_eq!(one.as_sent, None);
        assert_eq!(
            one.canonical,
            payload_hash([line("tea", "tea-250g", 1)].iter(), Some(1001), None),
            "a sorted cart's fingerprint is its lines' hash as before"
        );
    }
}
