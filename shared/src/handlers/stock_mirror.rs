//! Stock mirror: WeChat's trading component learns the stock orders take and give back.
//!
//! WeChat shows a listed SKU's `stock_num` on product cards and in Channels live rooms, and a
//! SKU at 0 cannot be listed in a live room (WECHAT_SHOP.md, the SPU table). The merchant's
//! stock edits reach WeChat as they are made (`catalog_sync`'s `set_stock`/`upsert`, through
//! `spu/update_without_audit`); before this module the stock orders take (`unifiedOrder`) and
//! give back (an unpaid order closed, units back after a refund) never did, so a product sold
//! out here still showed stock there (users tapped it, and `unifiedOrder` refused: sold out).
//!
//! **What is mirrored:** every change of an approved SKU's stock of a product WeChat knows
//! and lists ([`mirrored`]: approved, uploaded, listed; the component on), coalesced — not
//! only crossings of 0: WeChat's card shows the number, and a number that is only right at 0
//! is still wrong. WeChat's rate limits on `update_without_audit` are not documented, so
//! calls are bounded instead of one per order:
//! - **One entry per product** ([`entry_id`]): the write that changes the stock adds
//!   ([`add_to`]), in the same batch, a [`Task::StockMirror`] if none is pending — a crash
//!   cannot lose it, and a second change while one is waiting adds nothing (only the entry
//!   written again as it is, on its version, so a worker that claimed it meanwhile makes the
//!   write read again).
//! - **The task reads the product's stock when it runs** ([`mirror`]) and sends every
//!   approved SKU's current `stock_num`: whatever changed before it ran goes in one call.
//! - **A change while it runs is not lost, and not sent at once**: the change's write bumps
//!   the leased entry's version, so the worker's completion conflicts; the worker
//!   ([`run_claimed`]) then keeps its lease, and after holding the product's mirror for
//!   [`SPACING_MS`] since its last call, sends again. So one product gets at most one call per
//!   [`SPACING_MS`] however many orders take it, and the last number reaches WeChat within
//!   about [`SPACING_MS`] of the last change. That hold is only where a drain runs its page's
//!   tasks side by side (`wxlocal`, the schedule: [`Pace::Spaced`]); a DynamoDB stream batch
//!   runs its items one after another, so there the mirror completes at once and a change made
//!   during its call puts the entry back as a new one, which the stream's next batch (its 1 s
//!   batching window apart) sends ([`Pace::Requeue`]) — held there, it delayed every task
//!   behind it in the batch.
//!
//! A WeChat failure is retried by the outbox like any task. A product since delisted, gone,
//! no longer approved or never uploaded (or the component off) gets nothing: the task is done
//! with nothing sent. WeChat no longer having the product (9401002) is logged and done: the
//! merchant's next stock edit or upsert uploads it again (`catalog_sync`). Paying does not
//! change stock (the order took it at `unifiedOrder`), so `payCallback` adds nothing.

use super::catalog_sync::{PRODUCT_NEVER_APPROVED, PRODUCT_NOT_FOUND};
use super::common::component_on;
use super::order_sync::{DrainReport, TaskError, LEASE_MS};
use crate::app::App;
use crate::domain::{AuditStatus, Listing, Product, ProductId};
use crate::outbox::{self, Claimed, OutboxEntry, Task};
use crate::shop::catalog::{SkuWithoutAudit, SpuUpdateWithoutAudit};
use crate::shop::types::ProductKey;
use crate::store::repo::{self, Batch};
use crate::store::{Expect, StoreError, Write};

/// The least time between two stock calls for one product, and how long a worker holds the
/// product's mirror after a call: the changes made meanwhile go in the next call.
pub const SPACING_MS: u64 = 1_000;

/// How many calls in a row one worker makes for a product that keeps changing before it lets
/// the entry go (due at once, for the next drain or schedule). The drain's page waits for its
/// tasks, so this bounds how long a product in a rush holds the other tasks of that page (a
/// payment's sync): about this many seconds.
const MAX_ROUNDS: usize = 3;

/// The outbox id of a product's stock mirror: one entry per product at a time.
pub fn entry_id(product_id: &ProductId) -> String {
    format!("stock-mirror-{product_id}")
}

/// Whether WeChat shows this product's stock: approved, uploaded and listed.
pub fn mirrored(p: &Product) -> bool {
    p.audit == AuditStatus::Approved && p.wx_product_id.is_some() && p.listing == Listing::Listed
}

/// Whether going from `before` to `after` changed stock WeChat shows.
fn changes_mirrored_stock(before: &Product, after: &Product) -> bool {
    mirrored(after)
        && after
            .skus
            .iter()
            .any(|s| before.sku(&s.sku_id).map(|b| b.stock) != Some(s.stock))
}

/// Adds to `batch` (the write that changes `before` into `after`) what makes WeChat learn the
/// new stock: a [`Task::StockMirror`] for the product if none is waiting; a version bump of
/// one that exists (waiting: a worker claiming it meanwhile makes this write conflict; held by
/// a worker: its completion then conflicts and it sends again); a dead one back in the queue.
pub async fn add_to(
    app: &App,
    batch: &mut Batch,
    before: &Product,
    after: &Product,
) -> Result<(), StoreError> {
    if !component_on(app) || !changes_mirrored_stock(before, after) {
        return Ok(());
    }
    let id = entry_id(&after.product_id);
    let now = app.clock.now_ms();
    match outbox::get(app.store.as_ref(), &id).await? {
        None => {
            batch.enqueue(OutboxEntry {
                id,
                ..OutboxEntry::new(
                    Task::StockMirror {
                        product_id: after.product_id.clone(),
                    },
                    now,
                )
            });
        }
        Some(current) if current.entry.is_dead() => {
            let mut next = current.entry;
            next.dead_at_ms = None;
            next.attempts = 0;
            next.due_at_ms = now;
            batch.push(Write::put(
                outbox::to_record(&next, current.version + 1)?,
                Expect::Version(current.version),
            ));
        }
        Some(current) => {
            // Waiting, never claimed: it will read this stock — unless a worker claims it before
            // this batch commits, which the version condition catches (the batch conflicts and
            // reads again). Claimed (running, or waiting to retry): it may have read the stock
            // already; the bump makes its completion conflict, so it sends again. Written as a
            // put of the same entry, not a bare condition: every function that changes stock
            // may put items, and a ConditionCheckItem would need its own grant in each
            // (infra_permissions caught queryOrder's and auditCallback's missing).
            batch.push(Write::put(
                outbox::to_record(&current.entry, current.version + 1)?,
                Expect::Version(current.version),
            ));
        }
    }
    Ok(())
}

/// Outbox: `spu/update_without_audit` with the current stock of every approved SKU of
/// `product_id`, if WeChat shows it; nothing otherwise.
pub async fn mirror(app: &App, product_id: &ProductId) -> Result<(), TaskError> {
    if !component_on(app) {
        return Ok(());
    }
    let Some(p) = repo::get_product(app.store.as_ref(), product_id).await? else {
        tracing::info!(product_id = %product_id, "stock mirror: the product is gone; nothing sent");
        return Ok(());
    };
    let p = p.value;
    if !mirrored(&p) || p.skus.is_empty() {
        tracing::info!(product_id = %product_id, "stock mirror: WeChat does not list the product; nothing sent");
        return Ok(());
    }
    let req = SpuUpdateWithoutAudit {
        key: ProductKey::Out(product_id.to_string()),
        path: None,
        skus: p
            .skus
            .iter()
            .map(|s| SkuWithoutAudit {
                out_sku_id: s.sku_id.to_string(),
                stock_num: Some(i64::from(s.stock)),
                ..Default::default()
            })
            .collect(),
    };
    match app.wx.spu_update_without_audit(&req).await {
        Ok(_) => {
            tracing::info!(product_id = %product_id, "stock mirrored to WeChat");
            Ok(())
        }
        Err(e)
            if matches!(
                e.errcode(),
                Some(PRODUCT_NOT_FOUND | PRODUCT_NEVER_APPROVED)
            ) =>
        {
            tracing::warn!(product_id = %product_id, error = %e, "stock mirror: WeChat holds no approved product; nothing sent (the merchant's next upsert or stock edit uploads it again)");
            Ok(())
        }
        Err(e) => Err(super::shop_orders::task_error(e)),
    }
}

/// How a worker follows a stock change made while its mirror ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pace {
    /// Hold the entry [`SPACING_MS`] after each call and send again if the stock changed, up
    /// to [`MAX_ROUNDS`] calls: where tasks run side by side (a drain's page: `wxlocal`, the
    /// schedule), so the hold delays no other task's run — only the page's end, by about a
    /// second (up to [`MAX_ROUNDS`] for a product that keeps changing).
    Spaced,
    /// No hold: complete at once, and if the stock changed during the call, put the entry back
    /// as a new one — a new stream record, sent by the stream's next batch (its batching
    /// window, 1 s, apart). For the DynamoDB stream's batches, whose items run one after
    /// another: a held mirror there delayed every task behind it (a payment's sync, a refund)
    /// by a second or more for each mirror in the batch (up to ten of them), and by a round
    /// more for each change during the hold.
    Requeue,
}

/// What follows a successful call for `claimed` (a [`Task::StockMirror`]), by `pace`. Spaced:
/// the entry is held for [`SPACING_MS`], then completed; if the stock changed meanwhile (the
/// completion conflicts with the change's bump, and the entry is still this worker's), it is
/// leased again and the current stock sent, up to [`MAX_ROUNDS`] times. Requeue: completed at
/// once, or put back as a new entry ([`requeue`]).
pub async fn after_call(
    app: &App,
    product_id: &ProductId,
    mut claimed: Claimed,
    report: &mut DrainReport,
    pace: Pace,
) -> Result<(), StoreError> {
    let store = app.store.as_ref();
    if pace == Pace::Requeue {
        return match outbox::complete(store, &claimed).await {
            Err(StoreError::Conflict { .. }) => requeue(app, &claimed).await,
            other => other,
        };
    }
    for round in 0..MAX_ROUNDS {
        tokio::time::sleep(std::time::Duration::from_millis(SPACING_MS)).await;
        match outbox::complete(store, &claimed).await {
            Err(StoreError::Conflict { .. }) => {}
            other => return other,
        }
        let last = round + 1 == MAX_ROUNDS;
        let Some(relet) = lease_again(app, &claimed, last).await? else {
            return Ok(());
        };
        if last {
            tracing::info!(product_id = %product_id, "stock mirror: still changing; the next drain sends the rest");
            return Ok(());
        }
        claimed = relet;
        match mirror(app, product_id).await {
            Ok(()) => report.done += 1,
            Err(e) => return super::order_sync::settle_failure(app, &claimed, e, report).await,
        }
    }
    Ok(())
}

/// Whether `current` (the entry as stored now) is still the one this worker claimed: not dead,
/// not claimed again since (a stock change only bumps its version).
fn still_ours(current: &Claimed, claimed: &Claimed) -> bool {
    !current.entry.is_dead()
        && current.entry.attempts == claimed.entry.attempts
        && current.entry.due_at_ms == claimed.entry.due_at_ms
}

/// The entry `claimed` named, changed since by a stock change (see [`add_to`]), deleted and
/// added again due now: a new entry, so a new stream record. Nothing if it is not this
/// worker's any more; a change that added its own entry in between is that entry. (A crash
/// between the two writes loses this one send: the product's next stock change sends it.)
async fn requeue(app: &App, claimed: &Claimed) -> Result<(), StoreError> {
    let store = app.store.as_ref();
    for _ in 0..5 {
        let Some(current) = outbox::get(store, &claimed.entry.id).await? else {
            return Ok(());
        };
        if !still_ours(&current, claimed) {
            return Ok(());
        }
        match outbox::complete(store, &current).await {
            Ok(()) => {}
            // Bumped again meanwhile: read it again.
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
        let fresh = OutboxEntry {
            id: claimed.entry.id.clone(),
            ..OutboxEntry::new(claimed.entry.task.clone(), app.clock.now_ms())
        };
        return match outbox::enqueue(store, &fresh).await {
            Err(StoreError::Conflict { .. }) => Ok(()),
            other => other,
        };
    }
    Ok(())
}

/// The entry `claimed` named, changed since by a stock change (see [`add_to`]), leased again
/// by this worker — or, `last`, put back in the queue due now. `None` if it is not this
/// worker's any more (gone, or taken over after the lease ran out).
async fn lease_again(
    app: &App,
    claimed: &Claimed,
    last: bool,
) -> Result<Option<Claimed>, StoreError> {
    let store = app.store.as_ref();
    let mut tries = 0;
    loop {
        let Some(current) = outbox::get(store, &claimed.entry.id).await? else {
            return Ok(None);
        };
        if !still_ours(&current, claimed) {
            return Ok(None);
        }
        let now = app.clock.now_ms();
        let mut next = current.entry.clone();
        // The call succeeded: the attempts count the failures to come, not the rounds.
        (next.attempts, next.due_at_ms) = if last {
            (0, now)
        } else {
            (1, now.saturating_add(LEASE_MS))
        };
        let version = current.version + 1;
        let write = Write::put(
            outbox::to_record(&next, version)?,
            Expect::Version(current.version),
        );
        match store.write(vec![write]).await {
            Ok(()) => {
                return Ok(Some(Claimed {
                    entry: next,
                    version,
                }))
            }
            // Another change bumped it again meanwhile: read it again.
            Err(StoreError::Conflict { .. }) if tries < 5 => tries += 1,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::sqlite::SqliteStore;
    use std::sync::Arc;

    /// A tea mirror entry enqueued and claimed by this worker, as a stream item claims it.
    async fn claimed(app: &App) -> Claimed {
        let tea = ProductId::parse("tea").unwrap();
        let now = app.clock.now_ms();
        let entry = OutboxEntry {
            id: entry_id(&tea),
            ..OutboxEntry::new(Task::StockMirror { product_id: tea }, now)
        };
        outbox::enqueue(app.store.as_ref(), &entry).await.unwrap();
        outbox::claim_one(app.store.as_ref(), &entry.id, now, LEASE_MS)
            .await
            .unwrap()
            .unwrap()
    }

    /// What `add_to` does to an entry a worker holds: its version bumped.
    async fn bump(app: &App, c: &Claimed) {
        let current = outbox::get(app.store.as_ref(), &c.entry.id)
            .await
            .unwrap()
            .unwrap();
        app.store
            .write(vec![Write::put(
                outbox::to_record(&current.entry, current.version + 1).unwrap(),
                Expect::Version(current.version),
            )])
            .await
            .unwrap();
    }

    /// In a stream batch (items one after another) a mirror is not held: with no change while
    /// it ran its entry is gone; with one, the entry is there again as a new one (version 1,
    /// never claimed, due now) — a new stream record, so the stream's next batch sends the
    /// change. Held (`Spaced`), the worker slept a second or more first, and every item behind
    /// it in the batch waited.
    #[tokio::test]
    async fn in_a_stream_batch_a_change_during_the_call_comes_back_as_a_new_entry() {
        let app = App::for_tests(Arc::new(SqliteStore::memory().unwrap()));
        let tea = ProductId::parse("tea").unwrap();
        let mut report = DrainReport::default();

        let c = claimed(&app).await;
        after_call(&app, &tea, c, &mut report, Pace::Requeue)
            .await
            .unwrap();
        assert!(outbox::get(app.store.as_ref(), &entry_id(&tea))
            .await
            .unwrap()
            .is_none());

        let c = claimed(&app).await;
        assert!(c.version > 1, "claimed: a new version");
        bump(&app, &c).await;
        after_call(&app, &tea, c, &mut report, Pace::Requeue)
            .await
            .unwrap();
        let again = outbox::get(app.store.as_ref(), &entry_id(&tea))
            .await
            .unwrap()
            .expect("a change during the call is sent again");
        assert_eq!(
            (again.version, again.entry.attempts),
            (1, 0),
            "a new entry, never claimed"
        );
        assert!(again.entry.due_at_ms <= app.clock.now_ms());
    }
}
