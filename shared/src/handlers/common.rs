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

/// How many times a read-modify-write is retried when another writer got there first. A hot
/// product (every checkout writes its stock) sees a conflict per concurrent buyer; with the
/// jittered waits below, 16 rounds span up to ~0.7 s, enough for tens of concurrent buyers
/// (tests/tests/reliability_storms.rs).
pub const MAX_CONFLICT_RETRIES: usize = 16;

/// How many in-process turn locks there are (see [`take_turns`]); keys share them by hash.
const TURNS: usize = 64;
static TURN_LOCKS: [tokio::sync::Mutex<()>; TURNS] =
    [const { tokio::sync::Mutex::const_new(()) }; TURNS];

/// Turns, in arrival order, at the read-modify-write of hot records (a product's stock:
/// every checkout of it writes it). Optimistic concurrency lets only one of N concurrent
/// writers of a record win each commit; the others re-read and try again, and with many
/// buyers of one product an unlucky one can lose every round ([`MAX_CONFLICT_RETRIES`]).
/// Waiting for a turn in this process instead (a fair, FIFO lock) leaves conflicts only
/// between processes (Lambda containers), where the retries still apply. Keys hash onto
/// [`TURNS`] locks, taken in ascending order, so memory is bounded and there is no deadlock;
/// two keys on one lock just take turns. Hold the guards until the write has committed.
pub async fn take_turns<'k>(
    keys: impl IntoIterator<Item = &'k str>,
) -> Vec<tokio::sync::MutexGuard<'static, ()>> {
    let mut slots: Vec<usize> = keys
        .into_iter()
        .map(|k| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            std::hash::Hash::hash(k, &mut h);
            (std::hash::Hasher::finish(&h) % TURNS as u64) as usize
        })
        .collect();
    slots.sort_unstable();
    slots.dedup();
    let mut guards = Vec::with_capacity(slots.len());
    for slot in slots {
        guards.push(TURN_LOCKS[slot].lock().await);
    }
    guards
}

/// What one attempt of a read-modify-write decided.
pub enum Attempt<T> {
    /// Nothing to write (already in the wanted state, or nothing to do): finished.
    Done(T),
    /// Write this batch (its writes carry version conditions); `T` is the result if it lands.
    Commit(Batch, T),
}

/// The one optimistic-concurrency loop: read, decide, write conditionally; when another
/// writer got there first (a version conflict), read again and decide again.
pub async fn with_retries<T, E, F, Fut>(app: &App, mut attempt: F) -> Result<T, E>
where
    E: From<StoreError>,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Attempt<T>, E>>,
{
    for round in 0..MAX_CONFLICT_RETRIES {
        match attempt().await? {
            Attempt::Done(v) => return Ok(v),
            Attempt::Commit(batch, v) => match batch.commit(app.store.as_ref()).await {
                Ok(()) => return Ok(v),
                // Writers that collided would collide again if they all re-read at once
                // (16 concurrent checkouts of one product exhausted the retries): wait a
                // random, growing moment (≤ 1, 2, 4 … 64 ms) so they spread out.
                Err(e) if e.is_conflict() => {
                    let cap = 1u64 << round.min(6);
                    let wait = rand::Rng::gen_range(&mut rand::thread_rng(), 0..=cap);
                    tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
                    continue;
                }
                Err(e) => return Err(e.into()),
            },
        }
    }
    Err(StoreError::Backend("records kept changing under concurrent writers; retry".into()).into())
}

/// Applies `change` to an order (with an optional outbox task for the new state) under a
/// version condition, retrying on conflicts. `Unchanged` writes nothing.
pub async fn transition_order(
    app: &App,
    no: &OutTradeNo,
    change: impl Fn(&mut Order, i64) -> Result<Change, ApiError>,
    task: impl Fn(&Order) -> Option<Task>,
) -> Result<Order, ApiError> {
    with_retries(app, || async {
        let current = repo::get_order(app.store.as_ref(), no)
            .await?
            .ok_or_else(|| ApiError::not_found("ORDER_NOT_FOUND", format!("no order {no}")))?;
        let now = app.clock.now_ms();
        let mut next = current.value.clone();
        if change(&mut next, now)? == Change::Unchanged {
            return Ok(Attempt::Done(next));
        }
        let mut batch = Batch::new();
        batch.update_order(&current, &next);
        if let Some(t) = task(&next) {
            batch.enqueue(OutboxEntry::new(t, now));
        }
        Ok(Attempt::Commit(batch, next))
    })
    .await
}

/// Changes a product under a version condition, retrying on conflicts. A change that leaves
/// the product as it was writes nothing.
pub async fn update_product(
    app: &App,
    id: &crate::domain::ProductId,
    change: impl Fn(&mut crate::domain::Product) -> Result<(), ApiError>,
) -> Result<Option<crate::domain::Product>, ApiError> {
    with_retries(app, || async {
        let Some(current) = repo::get_product(app.store.as_ref(), id).await? else {
            return Ok(Attempt::Done(None));
        };
        let mut next = current.value.clone();
        change(&mut next)?;
        if next == current.value {
            return Ok(Attempt::Done(Some(next)));
        }
        next.updated_at_ms = app.clock.now_ms();
        let mut batch = Batch::new();
        batch.update_product(&current, &next);
        Ok(Attempt::Commit(batch, Some(next)))
    })
    .await
}

/// The caller's openid, from the verified session token only — never from the body.
pub fn authenticate(app: &App, req: &Request) -> Result<OpenId, ApiError> {
    let token = bearer(req).ok_or_else(|| {
        ApiError::unauthenticated(
            "missing session token: call login first and send Authorization: Bearer <token>",
        )
    })?;
    app.sessions
        .verify(token, app.clock.now_secs(), app.config.session_ttl_secs)
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
    let (outcome, oversold) = with_retries(app, || async {
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
        let was_closed = current.value.status == crate::domain::OrderStatus::Closed;
        // A repeat (WeChat notifies until it is answered) is told apart before the order is
        // copied for the transition.
        if current.value.payment_recorded(transaction_id)? {
            let order = current.value;
            return Ok(Attempt::Done((PaymentOutcome::AlreadyRecorded(order), false)));
        }
        let mut next = current.value.clone();
        // Not a repeat (above), so this changes the order.
        next.pay(transaction_id, paid_at_ms, now)?;
        let mut oversold = false;
        let mut batch = Batch::new();
        batch.update_order(&current, &next);
        if was_closed {
            // Paid after we closed it (the payment raced the close): the money is real, so
            // the order is paid — and its stock, given back at the close, is taken again.
            // What is no longer there is an oversell, kept as an event for a person.
            let short = take_stock_back(app, &mut batch, &next).await?;
            if short.is_empty() {
                tracing::warn!(out_trade_no = %no, "paid after it was closed: stock taken again");
            } else {
                tracing::error!(security = true, out_trade_no = %no, short = ?short, "paid after it was closed and sold out meanwhile: refund or deliver by hand");
                oversold = true;
                batch.record_event(&repo::EventRecord::new(
                    "paid_after_close_oversold",
                    no.as_str(),
                    now,
                    serde_json::json!({"out_trade_no": no.as_str(), "transaction_id": transaction_id,
                                       "short": short}).to_string(),
                ));
            }
        }
        if component_on(app) && next.fund_type == FundType::Direct {
            batch.enqueue(OutboxEntry::new(
                Task::OrderPay {
                    out_trade_no: no.clone(),
                },
                now,
            ));
        }
        Ok(Attempt::Commit(batch, (PaymentOutcome::Recorded(next), oversold)))
    })
    .await?;
    if oversold {
        page_a_person(app);
    }
    if let PaymentOutcome::Recorded(_) = outcome {
        tracing::info!(out_trade_no = %no, transaction_id, total_fee = total_fee.get(), "payment recorded");
    }
    Ok(outcome)
}

/// Counts [`crate::metrics::MONEY_NEEDS_A_PERSON`] once: money moved that a person must put
/// right was just kept as an event (its first record, not a repeat). The event is acknowledged
/// to WeChat, so this count is what pages.
pub fn page_a_person(app: &App) {
    app.metrics
        .count(crate::metrics::MONEY_NEEDS_A_PERSON, 1, app.clock.now_ms());
}

/// Keeps `body` as evidence for a person (an event `source`/`key`, received now): what was
/// refused or could not be applied although money may have moved.
pub async fn keep_evidence(
    app: &App,
    source: &str,
    key: impl Into<String>,
    body: impl Into<String>,
) -> Result<bool, StoreError> {
    let ev = repo::EventRecord::new(source, key, app.clock.now_ms(), body);
    repo::record_event(app.store.as_ref(), &ev).await
}

/// Adds to `batch` the stock updates that take `order`'s items again (one conditional update
/// per product); returns the `product/sku` lines that could not be taken.
async fn take_stock_back(
    app: &App,
    batch: &mut Batch,
    order: &Order,
) -> Result<Vec<String>, PaymentError> {
    let mut short = Vec::new();
    let mut seen: Vec<&crate::domain::ProductId> = Vec::new();
    for item in &order.items {
        if seen.contains(&&item.product_id) {
            continue;
        }
        seen.push(&item.product_id);
        let Some(p) = repo::get_product(app.store.as_ref(), &item.product_id).await? else {
            short.push(format!("{}/*", item.product_id));
            continue;
        };
        let mut np = p.value.clone();
        for line in order
            .items
            .iter()
            .filter(|i| i.product_id == item.product_id)
        {
            if !np.take_back(&line.sku_id, line.quantity) {
                short.push(format!("{}/{}", line.product_id, line.sku_id));
            }
        }
        batch.update_product(&p, &np);
        super::stock_mirror::add_to(app, batch, &p.value, &np).await?;
    }
    Ok(short)
}

/// Closes an unpaid order and puts its stock back, atomically. Returns the closed order, or
/// the order unchanged if it was not open (e.g. paid meanwhile).
pub async fn close_and_release(
    app: &App,
    no: &OutTradeNo,
    reason: &str,
) -> Result<Order, ApiError> {
    close_and_release_opened(app, no, reason, &OpenedAtWechat::default()).await
}

/// What WeChat already holds for an order we have not stored yet: a `unifiedOrder` that
/// failed after `pay/unifiedorder` or `shop/order/add` succeeded.
#[derive(Debug, Default, Clone)]
pub struct OpenedAtWechat {
    pub prepay_id: Option<String>,
    pub wx_order_id: Option<u64>,
}

/// [`close_and_release`] of an order WeChat may hold more of than we stored: the ids are
/// kept on the closed order so that the close task closes them at WeChat too.
pub async fn close_and_release_opened(
    app: &App,
    no: &OutTradeNo,
    reason: &str,
    opened: &OpenedAtWechat,
) -> Result<Order, ApiError> {
    let (order, closed) = with_retries::<_, ApiError, _, _>(app, || async {
        let current = repo::get_order(app.store.as_ref(), no)
            .await?
            .ok_or_else(|| ApiError::not_found("ORDER_NOT_FOUND", format!("no order {no}")))?;
        if current.value.status == crate::domain::OrderStatus::Closed {
            // Closed meanwhile (the user, the sweep) while `unifiedOrder` was opening it at
            // WeChat: the close knew of nothing to close there. What was opened since is kept
            // on the closed order and closed at WeChat now, or it stays open (and payable).
            let mut next = current.value.clone();
            if next.prepay_id.is_none() {
                next.prepay_id.clone_from(&opened.prepay_id);
            }
            if next.wx_order_id.is_none() {
                next.wx_order_id = opened.wx_order_id;
            }
            if next == current.value {
                return Ok(Attempt::Done((current.value, false)));
            }
            let now = app.clock.now_ms();
            next.updated_at_ms = now;
            tracing::warn!(out_trade_no = %no, "closed while WeChat was opening it: closing what WeChat opened");
            let mut batch = Batch::new();
            batch.update_order(&current, &next);
            batch.enqueue(OutboxEntry::new(
                Task::OrderClose {
                    out_trade_no: no.clone(),
                },
                now,
            ));
            return Ok(Attempt::Commit(batch, (next, false)));
        }
        if !current.value.status.is_unpaid_open() {
            return Ok(Attempt::Done((current.value, false)));
        }
        let now = app.clock.now_ms();
        let mut next = current.value.clone();
        next.close(reason, now)
            .map_err(|e| ApiError::conflict("ORDER_NOT_OPEN", e.to_string()))?;
        if next.prepay_id.is_none() {
            next.prepay_id.clone_from(&opened.prepay_id);
        }
        if next.wx_order_id.is_none() {
            next.wx_order_id = opened.wx_order_id;
        }
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
            super::stock_mirror::add_to(app, &mut batch, &p.value, &np).await?;
        }
        // Tell WeChat Pay (and the trading component) the order is closed, later and with
        // retries; if the user paid meanwhile, that task finds out and records the payment.
        // Whatever WeChat was asked to create counts, answered or not: an answer lost on the
        // way back leaves an order there that we hold no id for.
        if !next.at_wechat().is_nothing() {
            batch.enqueue(OutboxEntry::new(
                Task::OrderClose {
                    out_trade_no: no.clone(),
                },
                now,
            ));
        }
        Ok(Attempt::Commit(batch, (next, true)))
    })
    .await?;
    if closed {
        tracing::info!(out_trade_no = %no, reason, "order closed, stock released");
    }
    Ok(order)
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
