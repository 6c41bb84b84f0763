//! Outbox: every external effect, claimed with a lease, retried with back-off, dead-lettered.
//!
//! Why it is shaped so:
//! - **Written in the same batch as the state change** ([`crate::store::repo::Batch::enqueue`]):
//!   "order is PAID" and "tell WeChat the order is paid" are stored together or not at all,
//!   so no effect is ever forgotten and none is announced for a change that did not happen.
//! - **Entries are ordinary records** (kind `Outbox`): status `pending` with `sort = due_at_ms`,
//!   or `dead` with `sort = dead time`. "What is due" is then one index query on any backend.
//! - **A claim is a lease, taken with a conditional write** that moves `due_at_ms` to
//!   `now + lease`. The leased entry drops out of "due" until the lease runs out, and the
//!   version condition means two workers can never both take it. A worker that dies simply
//!   lets the lease expire; the entry comes back by itself.
//! - **`attempts` counts claims**, not failures, so an entry whose worker keeps crashing still
//!   reaches [`MAX_ATTEMPTS`] and the dead-letter list instead of looping forever.
//! - **Completion and retries are conditional on the leased version**: a worker whose lease
//!   ran out (and was taken over) gets [`StoreError::Conflict`] and must not touch the entry.
//!   Every task must be idempotent on the WeChat side, because a lease can expire mid-call.

use crate::domain::{random_alnum, AfterSaleId, AfterSaleLine, OutTradeNo, ProductId, SkuId};
use crate::store::{Expect, Index, Kind, Query, Record, Store, StoreError, Write};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// After this many claims an entry that fails again is dead-lettered.
pub const MAX_ATTEMPTS: u32 = 12;
/// First retry delay; doubles with each attempt.
pub const BACKOFF_BASE_MS: i64 = 2_000;
/// Longest retry delay.
pub const BACKOFF_MAX_MS: i64 = 15 * 60 * 1000;
/// Longest `last_error` kept (errors are for people; keep records small).
const MAX_ERROR_LEN: usize = 1000;

pub const STATUS_PENDING: &str = "pending";
pub const STATUS_DEAD: &str = "dead";

/// Units in stock by SKU, as a stock mirror last sent them to WeChat.
pub type SentStock = std::collections::BTreeMap<SkuId, u32>;

/// One external effect to perform. Serialised with a `type` tag.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Task {
    /// `shop/order/pay` for a paid order.
    OrderPay { out_trade_no: OutTradeNo },
    /// `shop/delivery/send`.
    DeliverySend { out_trade_no: OutTradeNo },
    /// `shop/delivery/recieve` (WeChat's spelling).
    DeliveryRecieve { out_trade_no: OutTradeNo },
    /// Push an after-sale's state to `shop/ecaftersale/*`.
    AfterSaleSync { aftersale_id: AfterSaleId },
    /// `secapi/pay/refund` for an approved after-sale.
    Refund { aftersale_id: AfterSaleId },
    /// `pay/closeorder` (+ component close) for an unpaid order.
    OrderClose { out_trade_no: OutTradeNo },
    /// Puts back on sale the units a refunded after-sale took back, decided when it was
    /// recorded refunded ([`crate::domain::AfterSale::units_back`]); once per after-sale
    /// (`handlers::stock_back`).
    StockBack {
        aftersale_id: AfterSaleId,
        lines: Vec<AfterSaleLine>,
    },
    /// `spu/update_without_audit` with the current stock of a listed product's approved SKUs,
    /// after orders, closes or refunds changed it; one entry per product at a time
    /// (`handlers::stock_mirror`).
    StockMirror {
        product_id: ProductId,
        /// The stock the entry's last call sent, by SKU: after a call the entry stays, due
        /// [`crate::handlers::stock_mirror::SPACING_MS`] later, and then sends only what
        /// differs from this. `None`: nothing sent yet.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sent: Option<SentStock>,
    },
    /// WeChat's verdict on the qualification audit `audit_id` of level-3 category
    /// `third_cat_id`: approved, each product waiting for it is submitted again (one
    /// [`Task::SubmitWaiting`] each); rejected, each is told why (`handlers::catalog_sync`).
    /// `third_cat_id` `None`: an approval of an audit applied for outside wxshop (WeChat's
    /// console), whose push does not name its category: every product waiting for a category
    /// is submitted again once, WeChat's answer deciding.
    CategoryVerdict {
        audit_id: String,
        third_cat_id: Option<u64>,
        approved: bool,
        #[serde(default)]
        reject_reason: String,
    },
    /// Submits again for audit the stored draft of a product that waited for its category's
    /// qualification, as the merchant's upsert of it would (`handlers::catalog_sync`).
    /// `approval`: the category approval that set it off (an `audit_id`, or our own name for
    /// a 1050003 answer): the product is submitted at most once for it, however many tasks
    /// name it. `None`: the schedule's daily resubmission.
    SubmitWaiting {
        product_id: ProductId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        approval: Option<String>,
    },
    /// Anything else: a named task with its own payload.
    Custom {
        name: String,
        payload: serde_json::Value,
    },
}

impl Task {
    /// A short name for logs and metrics.
    pub fn name(&self) -> &str {
        match self {
            Task::OrderPay { .. } => "order_pay",
            Task::DeliverySend { .. } => "delivery_send",
            Task::DeliveryRecieve { .. } => "delivery_recieve",
            Task::AfterSaleSync { .. } => "aftersale_sync",
            Task::Refund { .. } => "refund",
            Task::OrderClose { .. } => "order_close",
            Task::StockBack { .. } => "stock_back",
            Task::StockMirror { .. } => "stock_mirror",
            Task::CategoryVerdict { .. } => "category_verdict",
            Task::SubmitWaiting { .. } => "submit_waiting",
            Task::Custom { name, .. } => name,
        }
    }

    /// What the task is about (`order:<out_trade_no>`, `aftersale:<id>`), stored as the
    /// record's owner so an order's pending effects can be found.
    pub fn subject(&self) -> String {
        match self {
            Task::OrderPay { out_trade_no }
            | Task::DeliverySend { out_trade_no }
            | Task::DeliveryRecieve { out_trade_no }
            | Task::OrderClose { out_trade_no } => format!("order:{out_trade_no}"),
            Task::AfterSaleSync { aftersale_id } | Task::Refund { aftersale_id } => {
                format!("aftersale:{aftersale_id}")
            }
            Task::StockBack { aftersale_id, .. } => format!("stock:{aftersale_id}"),
            Task::StockMirror { product_id, .. } | Task::SubmitWaiting { product_id, .. } => {
                format!("product:{product_id}")
            }
            Task::CategoryVerdict { third_cat_id, .. } => match third_cat_id {
                Some(c) => format!("category:{c}"),
                None => "category:any".to_owned(),
            },
            Task::Custom { name, .. } => format!("custom:{name}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// Time-ordered and unique: `{created_ms:013}-{12 random}`.
    pub id: String,
    pub task: Task,
    /// How many times the entry has been claimed.
    #[serde(default)]
    pub attempts: u32,
    /// Not to be claimed before this time (also the end of the current lease).
    pub due_at_ms: i64,
    #[serde(default)]
    pub last_error: Option<String>,
    pub created_at_ms: i64,
    /// When it was dead-lettered.
    #[serde(default)]
    pub dead_at_ms: Option<i64>,
}

impl OutboxEntry {
    /// A new entry, due now.
    pub fn new(task: Task, now_ms: i64) -> Self {
        OutboxEntry {
            id: format!("{:013}-{}", now_ms.max(0), random_alnum(12)),
            task,
            attempts: 0,
            due_at_ms: now_ms,
            last_error: None,
            created_at_ms: now_ms,
            dead_at_ms: None,
        }
    }

    /// A new entry that is not due before `due_at_ms` (e.g. closing an unpaid order later).
    pub fn due_at(task: Task, now_ms: i64, due_at_ms: i64) -> Self {
        OutboxEntry {
            due_at_ms,
            ..OutboxEntry::new(task, now_ms)
        }
    }

    pub fn is_dead(&self) -> bool {
        self.dead_at_ms.is_some()
    }
}

/// An entry this worker holds a lease on: `version` is the record version the lease wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct Claimed {
    pub entry: OutboxEntry,
    pub version: u64,
}

/// What [`retry`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryOutcome {
    Scheduled { due_at_ms: i64 },
    Dead,
}

/// The stored record for `entry` at `version` (pending or dead, by `dead_at_ms`).
pub fn to_record(entry: &OutboxEntry, version: u64) -> Result<Record, StoreError> {
    let mut rec = Record::new(Kind::Outbox, entry.id.clone(), Record::encode(entry)?);
    rec.version = version;
    rec.owner = Some(entry.task.subject());
    match entry.dead_at_ms {
        Some(t) => {
            rec.status = Some(STATUS_DEAD.to_owned());
            rec.sort = t;
        }
        None => {
            rec.status = Some(STATUS_PENDING.to_owned());
            rec.sort = entry.due_at_ms;
        }
    }
    Ok(rec)
}

/// The write that adds `entry` (fails with a conflict if its id exists).
pub fn enqueue_write(entry: &OutboxEntry) -> Result<Write, StoreError> {
    Ok(Write::put(to_record(entry, 1)?, Expect::Absent))
}

/// Adds `entry` on its own (not tied to a state change).
pub async fn enqueue(store: &dyn Store, entry: &OutboxEntry) -> Result<(), StoreError> {
    store.write(vec![enqueue_write(entry)?]).await
}

/// Reads one entry, pending or dead.
pub async fn get(store: &dyn Store, id: &str) -> Result<Option<Claimed>, StoreError> {
    match store.get(Kind::Outbox, id).await? {
        Some(rec) => Ok(Some(Claimed {
            entry: rec.decode()?,
            version: rec.version,
        })),
        None => Ok(None),
    }
}

fn truncate(error: &str) -> String {
    if error.len() <= MAX_ERROR_LEN {
        return error.to_owned();
    }
    let mut end = MAX_ERROR_LEN;
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &error[..end])
}

/// Conditionally replaces the entry at `version` with `next` (written as `version + 1`).
async fn replace(
    store: &dyn Store,
    version: u64,
    next: &OutboxEntry,
) -> Result<Claimed, StoreError> {
    let new_version = version + 1;
    store
        .write(vec![Write::put(
            to_record(next, new_version)?,
            Expect::Version(version),
        )])
        .await?;
    Ok(Claimed {
        entry: next.clone(),
        version: new_version,
    })
}

/// Takes a lease on a pending, due entry read at `version`. `Ok(None)` if another worker
/// won the race. An entry that has used up its attempts (its workers kept dying) is
/// dead-lettered instead.
async fn take(
    store: &dyn Store,
    entry: OutboxEntry,
    version: u64,
    now_ms: i64,
    lease_ms: i64,
) -> Result<Option<Claimed>, StoreError> {
    let mut next = entry;
    if next.attempts >= MAX_ATTEMPTS {
        next.dead_at_ms = Some(now_ms);
        next.last_error = Some(match next.last_error.take() {
            Some(e) => truncate(&format!("lease expired after the last attempt; {e}")),
            None => "lease expired after the last attempt".to_owned(),
        });
        return match replace(store, version, &next).await {
            Ok(_) | Err(StoreError::Conflict { .. }) => Ok(None),
            Err(e) => Err(e),
        };
    }
    next.attempts += 1;
    next.due_at_ms = now_ms.saturating_add(lease_ms.max(1));
    match replace(store, version, &next).await {
        Ok(c) => Ok(Some(c)),
        Err(StoreError::Conflict { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Leases up to `limit` pending entries due at `now_ms`, oldest due first. Each returned entry
/// is this caller's alone until `now_ms + lease_ms`. An error after some entries were taken
/// returns those (their leases simply expire if the caller drops them).
pub async fn claim_due(
    store: &dyn Store,
    now_ms: i64,
    lease_ms: i64,
    limit: usize,
) -> Result<Vec<Claimed>, StoreError> {
    claim_due_page(store, now_ms, lease_ms, limit, None)
        .await
        .map(|page| page.claimed)
}

/// One page of due entries as [`claim_due_page`] went through it.
#[derive(Debug, Default)]
pub struct DuePage {
    /// The entries this caller leased.
    pub claimed: Vec<Claimed>,
    /// How many entries the index listed on the page. On DynamoDB the status index is
    /// eventually consistent: it can list entries already leased or done, whose claims all
    /// lose — a page of `listed > 0` with nothing `claimed` says nothing about the next page.
    pub listed: usize,
    /// Where the next page of due entries starts (`None`: the index is exhausted, or the
    /// claims stopped early and the page should be read again).
    pub next: Option<String>,
}

/// [`claim_due`] on the page of the index that starts at `cursor` (from [`DuePage::next`]).
pub async fn claim_due_page(
    store: &dyn Store,
    now_ms: i64,
    lease_ms: i64,
    limit: usize,
    cursor: Option<String>,
) -> Result<DuePage, StoreError> {
    let mut query = Query::new(Kind::Outbox, Index::Status(STATUS_PENDING.to_owned()));
    query.sort_max = Some(now_ms);
    query.limit = limit.max(1);
    query.cursor = cursor;
    let page = store.query(query).await?;
    let mut due = DuePage {
        claimed: Vec::new(),
        listed: page.records.len(),
        next: page.next,
    };
    for rec in page.records {
        if due.claimed.len() >= limit {
            break;
        }
        let entry: OutboxEntry = match rec.decode() {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(id = %rec.id, error = %e, "skipping unreadable outbox entry");
                continue;
            }
        };
        match take(store, entry, rec.version, now_ms, lease_ms).await {
            Ok(Some(c)) => due.claimed.push(c),
            Ok(None) => {}
            Err(e) if due.claimed.is_empty() => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "outbox claim stopped early");
                due.next = None;
                break;
            }
        }
    }
    Ok(due)
}

/// Leases one specific entry (e.g. handed over by a DynamoDB stream). `Ok(None)` if it is
/// absent, dead, not yet due, leased by someone else, or another worker won the race; the
/// scheduled [`claim_due`] sweep picks up whatever is due later.
pub async fn claim_one(
    store: &dyn Store,
    id: &str,
    now_ms: i64,
    lease_ms: i64,
) -> Result<Option<Claimed>, StoreError> {
    let Some(current) = get(store, id).await? else {
        return Ok(None);
    };
    if current.entry.is_dead() || current.entry.due_at_ms > now_ms {
        return Ok(None);
    }
    take(store, current.entry, current.version, now_ms, lease_ms).await
}

/// Done: deletes the entry. [`StoreError::Conflict`] if the lease was lost to another worker.
pub async fn complete(store: &dyn Store, claimed: &Claimed) -> Result<(), StoreError> {
    store
        .write(vec![Write::Delete {
            kind: Kind::Outbox,
            id: claimed.entry.id.clone(),
            expect: Expect::Version(claimed.version),
        }])
        .await
}

/// The retry delay after `attempts` claims, before jitter: 2 s · 2^(attempts−1), at most
/// 15 min.
pub fn backoff_ms(attempts: u32) -> i64 {
    let exp = attempts.saturating_sub(1).min(30);
    BACKOFF_BASE_MS
        .saturating_mul(1_i64 << exp)
        .min(BACKOFF_MAX_MS)
}

/// [`backoff_ms`] with ±20 % jitter (still at most 15 min), so retries of many entries that
/// failed together spread out.
pub fn backoff_with_jitter_ms(attempts: u32) -> i64 {
    let base = backoff_ms(attempts);
    let spread = base / 5;
    let jitter = if spread > 0 {
        rand::thread_rng().gen_range(-spread..=spread)
    } else {
        0
    };
    (base + jitter).clamp(1, BACKOFF_MAX_MS)
}

/// A retryable failure: schedules the next attempt with back-off, but not sooner than
/// `not_before_ms` from now (0: the back-off alone), or dead-letters the entry once it has had
/// [`MAX_ATTEMPTS`]. Conflict if the lease was lost.
pub async fn retry(
    store: &dyn Store,
    claimed: &Claimed,
    error: &str,
    now_ms: i64,
    not_before_ms: i64,
) -> Result<RetryOutcome, StoreError> {
    let mut next = claimed.entry.clone();
    next.last_error = Some(truncate(error));
    if next.attempts >= MAX_ATTEMPTS {
        next.dead_at_ms = Some(now_ms);
        replace(store, claimed.version, &next).await?;
        return Ok(RetryOutcome::Dead);
    }
    let due_at_ms = now_ms.saturating_add(backoff_with_jitter_ms(next.attempts).max(not_before_ms));
    next.due_at_ms = due_at_ms;
    replace(store, claimed.version, &next).await?;
    Ok(RetryOutcome::Scheduled { due_at_ms })
}

/// A permanent failure: dead-letters the entry now. Conflict if the lease was lost.
pub async fn dead(
    store: &dyn Store,
    claimed: &Claimed,
    error: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    let mut next = claimed.entry.clone();
    next.last_error = Some(truncate(error));
    next.dead_at_ms = Some(now_ms);
    replace(store, claimed.version, &next).await?;
    Ok(())
}

/// Dead-lettered entries, most recently dead first, with a cursor for the next page.
pub async fn list_dead(
    store: &dyn Store,
    limit: usize,
    cursor: Option<String>,
) -> Result<(Vec<OutboxEntry>, Option<String>), StoreError> {
    let mut query = Query::new(Kind::Outbox, Index::Status(STATUS_DEAD.to_owned()));
    query.descending = true;
    query.limit = limit.max(1);
    query.cursor = cursor;
    let page = store.query(query).await?;
    let entries = page
        .records
        .iter()
        .map(Record::decode)
        .collect::<Result<Vec<OutboxEntry>, _>>()?;
    Ok((entries, page.next))
}

/// Pending entries about one subject (see [`Task::subject`]), soonest due first.
pub async fn pending_for(
    store: &dyn Store,
    subject: &str,
    limit: usize,
) -> Result<Vec<OutboxEntry>, StoreError> {
    let mut query = Query::new(Kind::Outbox, Index::Owner(subject.to_owned()));
    query.limit = limit.max(1);
    let page = store.query(query).await?;
    let mut out = Vec::new();
    for rec in page.records {
        let entry: OutboxEntry = rec.decode()?;
        if !entry.is_dead() {
            out.push(entry);
        }
    }
    Ok(out)
}

/// Every entry about one subject (see [`Task::subject`]), pending and dead, with the version
/// a conditional write must name; soonest due first.
pub async fn entries_for(
    store: &dyn Store,
    subject: &str,
    limit: usize,
) -> Result<Vec<Claimed>, StoreError> {
    let mut query = Query::new(Kind::Outbox, Index::Owner(subject.to_owned()));
    query.limit = limit.max(1);
    let page = store.query(query).await?;
    page.records
        .iter()
        .map(|rec| {
            Ok(Claimed {
                entry: rec.decode()?,
                version: rec.version,
            })
        })
        .collect()
}

/// The write that puts `current` (pending or dead, read at its version) back in the queue,
/// due now with its attempts reset and its last error kept — for a task whose input was
/// corrected, so that it runs again rather than a second copy of it. A conflict if it changed
/// since it was read (a worker leased or settled it).
pub fn requeue_write(current: &Claimed, now_ms: i64) -> Result<Write, StoreError> {
    let mut next = current.entry.clone();
    next.dead_at_ms = None;
    next.attempts = 0;
    next.due_at_ms = now_ms;
    Ok(Write::put(
        to_record(&next, current.version + 1)?,
        Expect::Version(current.version),
    ))
}

/// Puts a dead entry back in the queue, due now, with its attempts reset. `Ok(false)` if no
/// dead entry has this id. Conflict if it changed meanwhile.
pub async fn replay_dead(store: &dyn Store, id: &str, now_ms: i64) -> Result<bool, StoreError> {
    let Some(current) = get(store, id).await? else {
        return Ok(false);
    };
    if !current.entry.is_dead() {
        return Ok(false);
    }
    let mut next = current.entry;
    next.dead_at_ms = None;
    next.attempts = 0;
    next.due_at_ms = now_ms;
    replace(store, current.version, &next).await?;
    Ok(true)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff_ms(1), 2_000);
        assert_eq!(backoff_ms(2), 4_000);
        assert_eq!(backoff_ms(5), 32_000);
        assert_eq!(backoff_ms(20), BACKOFF_MAX_MS);
        assert_eq!(backoff_ms(u32::MAX), BACKOFF_MAX_MS);
        for a in 0..40 {
            let j = backoff_with_jitter_ms(a);
            let b = backoff_ms(a);
            assert!(
                j >= b - b / 5 && j <= (b + b / 5).min(BACKOFF_MAX_MS),
                "{a}: {j}"
            );
        }
    }

    #[test]
    fn task_serialises_with_a_tag() {
        let t = Task::OrderPay {
            out_trade_no: OutTradeNo::parse("WX123456").unwrap(),
        };
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type": "order_pay", "out_trade_no": "WX123456"})
        );
        let back: Task = serde_json::from_value(json).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn ids_are_time_ordered_and_unique() {
        let a = OutboxEntry::new(
            Task::Custom {
                name: "x".into(),
                payload: serde_json::Value::Null,
            },
            5,
        );
        let b = OutboxEntry::new(
            Task::Custom {
                name: "x".into(),
                payload: serde_json::Value::Null,
            },
            6,
        );
        assert!(a.id < b.id);
        assert_ne!(a.id, OutboxEntry::new(a.task.clone(), 5).id);
    }
}
