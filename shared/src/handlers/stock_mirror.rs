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
//!   written again as it is, on its version, so a worker that claimed it meanwhile sees its
//!   next write conflict and reads again).
//! - **The task reads the product's stock when it runs** ([`run`]) and sends every approved
//!   SKU's current `stock_num`: whatever changed before it ran goes in one call.
//! - **Cooling off is the entry's, not the worker's.** After a call the entry is not deleted:
//!   it is written back, in one write conditioned on the version the worker holds (read again
//!   if a change bumped it meanwhile), due [`SPACING_MS`] later and carrying the stock it
//!   sent (`sent`, by SKU). When it runs again it calls WeChat only if the stock now differs
//!   from `sent`, and is deleted when it does not — a deletion conditioned on the version it
//!   claimed, so a change made meanwhile (which bumps that version) makes it fail and the
//!   entry stays, due at once. So one product gets at most one call per [`SPACING_MS`],
//!   however many orders take it, and the last number reaches WeChat about [`SPACING_MS`]
//!   after the last change. No worker waits: a drain's page (`wxlocal`, the schedule) ends
//!   as soon as its tasks have run (before, a held mirror delayed every task of its page —
//!   a payment's sync — by one to three seconds), and nothing is deleted and added again (as
//!   a DynamoDB stream batch did before, where a crash between the two lost the send).
//!
//! **Who runs an entry cooling off.** The DynamoDB stream wakes `orderSync` for *inserts*
//! only (`infra/template.yaml`'s filter, and [`crate::lambda::outbox_records`]); writing the
//! entry back is a MODIFY, and an entry the stream hands over before it is due is skipped by
//! `claim_one`. Left there, it would wait for the 5-minute schedule: WeChat's number minutes
//! behind. So the stream's invocation follows up what it left cooling ([`follow`]): after
//! every other item of its batch (none of them waits for it), it waits until the entry is
//! due (at most [`SPACING_MS`]) and runs it again — a product still changing gets one call
//! a second. One whose stock did not change since its call (an order alone) is deleted at
//! once instead ([`done_if_unchanged`]): its next change adds a new entry, which the stream's
//! next batch runs, its batching window (1 s) apart — so the invocation waits for nothing
//! then. After
//! [`FOLLOW_ROUNDS`] of them (or near the invocation's deadline) it hands the entry over to
//! the stream's next batch ([`hand_off`]): deleted and added again, still carrying `sent` and
//! its due time — a new stream record, which that batch follows the same way. That is the
//! only delete-then-add left: DynamoDB refuses two writes of one item in one transaction
//! (the store's conformance: "the same key twice in one batch is refused"), so it cannot be
//! made atomic; a crash between the two loses the send until the product's next change, and
//! it only happens to a product that changed in each of the last [`FOLLOW_ROUNDS`] seconds
//! (a rush, whose next order sends it). Bounding the rounds bounds how long one product in a
//! rush delays the stream's next batch (a payment's sync): about [`FOLLOW_ROUNDS`] seconds.
//! In `wxlocal` the relay drains every 100 ms, so an entry cooling off runs once due. The
//! schedule's drain (the retry path in AWS) follows nothing: what it leaves cooling waits
//! for the next drain.
//!
//! A WeChat failure is retried by the outbox like any task (keeping `sent`). A product since
//! delisted, gone, no longer approved or never uploaded (or the component off) gets nothing:
//! the task is done with nothing sent. **WeChat no longer having the product** (9401002):
//! `catalog_sync`'s `set_stock` uploads it again for audit and takes it off sale here, but a
//! task must not change a product's audit state behind the merchant's back, so the mirror
//! sends nothing more and records a [`PRODUCT_LOST_EVENTS`] event (`/admin/orderSync`
//! `events`) naming the product and what to do: the merchant's next `set_stock` or `upsert`
//! uploads it again (an order's stock change alone never does). Paying does not change stock
//! (the order took it at `unifiedOrder`), so `payCallback` adds nothing — except a payment
//! after a close, which takes the stock again and adds the mirror like any change.

use super::catalog_sync::{PRODUCT_NEVER_APPROVED, PRODUCT_NOT_FOUND};
use super::common::component_on;
use super::order_sync::{DrainReport, TaskError, LEASE_MS};
use crate::app::App;
use crate::domain::{AuditStatus, Listing, Product, ProductId};
use crate::outbox::{self, Claimed, OutboxEntry, SentStock, Task};
use crate::shop::catalog::{SkuWithoutAudit, SpuUpdateWithoutAudit};
use crate::shop::types::ProductKey;
use crate::store::repo::{self, Batch, EventRecord};
use crate::store::{Expect, StoreError, Write};
use crate::time::Deadline;

/// The least time between two stock calls for one product: after a call its entry is due
/// again this much later, and the changes made meanwhile go in that next call.
pub const SPACING_MS: i64 = 1_000;

/// How many times one stream invocation runs again, once due, a mirror it left cooling off,
/// before it hands the entry over to the stream's next batch ([`follow`]). Bounds how long
/// one product in a rush delays the end of an invocation (and so the stream's next batch):
/// about this many seconds.
pub const FOLLOW_ROUNDS: usize = 3;

/// Events of products WeChat no longer has (9401002) when their stock was mirrored: the
/// merchant's next `set_stock` or `upsert` uploads them again. Key: product id and time.
pub const PRODUCT_LOST_EVENTS: &str = "stock_mirror_product_lost";

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
/// one that exists (waiting or cooling off: a worker claiming it meanwhile makes this write
/// conflict; held by a worker: its next write then conflicts, and the entry stays); a dead one
/// back in the queue.
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
                        sent: None,
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
            // Waiting or cooling off, not claimed: it will read this stock when due — unless a
            // worker claims it before this batch commits, which the version condition catches
            // (the batch conflicts and reads again). Claimed (running, or waiting to retry): it
            // may have read the stock already; the bump makes its next write conflict, so the
            // entry stays and runs again. Written as a put of the same entry, not a bare
            // condition: every function that changes stock may put items, and a
            // ConditionCheckItem would need its own grant in each (infra_permissions caught
            // queryOrder's and auditCallback's missing).
            batch.push(Write::put(
                outbox::to_record(&current.entry, current.version + 1)?,
                Expect::Version(current.version),
            ));
        }
    }
    Ok(())
}

/// What one run of a mirror came to.
#[derive(Debug, PartialEq)]
enum Mirrored {
    /// `spu/update_without_audit` took this stock.
    Sent(SentStock),
    /// Nothing to send: the stock is what was sent last, or WeChat does not show the product.
    Nothing,
}

/// The stock of `p`'s SKUs, as a mirror sends it.
fn stock_of(p: &Product) -> SentStock {
    p.skus.iter().map(|s| (s.sku_id.clone(), s.stock)).collect()
}

/// `spu/update_without_audit` with the current stock of every approved SKU of `product_id`,
/// if WeChat shows it and it differs from `last` (what the entry sent last; `None`: send).
async fn mirror(
    app: &App,
    product_id: &ProductId,
    last: Option<&SentStock>,
) -> Result<Mirrored, TaskError> {
    if !component_on(app) {
        return Ok(Mirrored::Nothing);
    }
    let Some(p) = repo::get_product(app.store.as_ref(), product_id).await? else {
        tracing::info!(product_id = %product_id, "stock mirror: the product is gone; nothing sent");
        return Ok(Mirrored::Nothing);
    };
    let p = p.value;
    if !mirrored(&p) || p.skus.is_empty() {
        tracing::info!(product_id = %product_id, "stock mirror: WeChat does not list the product; nothing sent");
        return Ok(Mirrored::Nothing);
    }
    let stock = stock_of(&p);
    if last == Some(&stock) {
        return Ok(Mirrored::Nothing);
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
            Ok(Mirrored::Sent(stock))
        }
        Err(e) if e.errcode() == Some(PRODUCT_NOT_FOUND) => {
            lost_at_wechat(app, product_id, &e.to_string()).await?;
            Ok(Mirrored::Nothing)
        }
        Err(e) if e.errcode() == Some(PRODUCT_NEVER_APPROVED) => {
            tracing::warn!(product_id = %product_id, error = %e, "stock mirror: WeChat holds no approved product; nothing sent");
            Ok(Mirrored::Nothing)
        }
        Err(e) => Err(super::shop_orders::task_error(e)),
    }
}

/// WeChat answered 9401002 for a product we hold as uploaded and approved: recorded for the
/// merchant ([`PRODUCT_LOST_EVENTS`]). Not uploaded again from here: that puts the product
/// back in audit (as `set_stock` does when the merchant asks), which a task must not do
/// behind the merchant's back.
async fn lost_at_wechat(app: &App, product_id: &ProductId, error: &str) -> Result<(), StoreError> {
    tracing::warn!(product_id = %product_id, error, "stock mirror: WeChat no longer has the product; recorded for the merchant");
    let now = app.clock.now_ms();
    let body = serde_json::json!({
        "product_id": product_id,
        "error": error,
        "what_to_do": "WeChat no longer has this product, so it shows none of its stock: \
                       catalogSync set_stock or upsert uploads it again (for audit; it is off \
                       sale until approved)",
    });
    repo::record_event(
        app.store.as_ref(),
        &EventRecord::new(
            PRODUCT_LOST_EVENTS,
            format!("{product_id}-{now}"),
            now,
            body.to_string(),
        ),
    )
    .await
    .map(|_new| ())
}

/// A stock mirror run outside the outbox's bookkeeping (no `sent` to compare with): sends the
/// current stock if WeChat shows the product.
pub async fn send_now(app: &App, product_id: &ProductId) -> Result<(), TaskError> {
    mirror(app, product_id, None).await.map(|_| ())
}

/// Runs `claimed` (a [`Task::StockMirror`]) and settles it. `Ok(Some(due))`: the entry stays,
/// due then (it sent, and cools off; or a change came while it ran); `Ok(None)`: it is gone,
/// or retried or dead-lettered after a failure, or no longer this worker's.
pub async fn run(
    app: &App,
    claimed: Claimed,
    report: &mut DrainReport,
) -> Result<Option<i64>, StoreError> {
    let Task::StockMirror { product_id, sent } = &claimed.entry.task else {
        return Ok(None);
    };
    match mirror(app, product_id, sent.as_ref()).await {
        Ok(Mirrored::Sent(stock)) => {
            report.done += 1;
            let due = app.clock.now_ms().saturating_add(SPACING_MS);
            write_back(app, &claimed, Some(stock), due).await
        }
        Ok(Mirrored::Nothing) => {
            report.done += 1;
            match outbox::complete(app.store.as_ref(), &claimed).await {
                Ok(()) => Ok(None),
                // A change bumped it while it ran: it runs again, now (no call was made).
                Err(StoreError::Conflict { .. }) => {
                    write_back(app, &claimed, sent.clone(), app.clock.now_ms()).await
                }
                Err(e) => Err(e),
            }
        }
        Err(e) => super::order_sync::settle_failure(app, &claimed, e, report)
            .await
            .map(|()| None),
    }
}

/// Whether `current` (the entry as stored now) is still the one this worker claimed: not dead,
/// not claimed again since (a stock change only bumps its version).
fn still_ours(current: &Claimed, claimed: &Claimed) -> bool {
    !current.entry.is_dead()
        && current.entry.attempts == claimed.entry.attempts
        && current.entry.due_at_ms == claimed.entry.due_at_ms
}

/// The entry `claimed` named written back, due at `due`, carrying `sent`, its attempts reset
/// (the run succeeded): one write conditioned on its version, read again when a stock change
/// bumped it meanwhile. `Some(due)` once written; `None` if it is not this worker's any more.
async fn write_back(
    app: &App,
    claimed: &Claimed,
    sent: Option<SentStock>,
    due: i64,
) -> Result<Option<i64>, StoreError> {
    let store = app.store.as_ref();
    let mut current = claimed.clone();
    for _ in 0..5 {
        let mut next = current.entry.clone();
        if let Task::StockMirror { sent: s, .. } = &mut next.task {
            s.clone_from(&sent);
        }
        (next.attempts, next.due_at_ms, next.last_error) = (0, due, None);
        let write = Write::put(
            outbox::to_record(&next, current.version + 1)?,
            Expect::Version(current.version),
        );
        match store.write(vec![write]).await {
            Ok(()) => return Ok(Some(due)),
            // A change bumped it: read it again.
            Err(StoreError::Conflict { .. }) => {}
            Err(e) => return Err(e),
        }
        match outbox::get(store, &claimed.entry.id).await? {
            Some(now) if still_ours(&now, claimed) => current = now,
            _ => return Ok(None),
        }
    }
    // Still bumped after five reads: its lease runs out and it runs again then.
    tracing::warn!(id = %claimed.entry.id, "stock mirror: could not write the entry back; it runs again when its lease ends");
    Ok(None)
}

/// For a stream batch: whether `id` is a stock mirror cooling off (pending, not yet due, due
/// within about [`SPACING_MS`]), and when it is due — an entry [`hand_off`] added again, which
/// the batch follows ([`follow`]) rather than leaving it to the schedule.
pub async fn cooling(app: &App, id: &str) -> Result<Option<i64>, StoreError> {
    if !id.starts_with("stock-mirror-") {
        return Ok(None);
    }
    let Some(c) = outbox::get(app.store.as_ref(), id).await? else {
        return Ok(None);
    };
    let now = app.clock.now_ms();
    let soon = c.entry.due_at_ms > now && c.entry.due_at_ms <= now.saturating_add(SPACING_MS);
    let is_mirror = matches!(c.entry.task, Task::StockMirror { .. });
    Ok((is_mirror && !c.entry.is_dead() && soon).then_some(c.entry.due_at_ms))
}

/// For a stream invocation, after every other item of its batch: the mirrors it left cooling
/// off (`(entry id, due)`), each run again once due, up to [`FOLLOW_ROUNDS`] times, then —
/// still cooling off — handed over to the stream's next batch ([`hand_off`]). Stops following
/// once `deadline` passes (handing over what is left).
pub async fn follow(app: &App, mut waiting: Vec<(String, i64)>, deadline: Deadline) {
    let mut report = DrainReport::default();
    // First, what nothing changed since its call is done now: the invocation (and with it
    // the stream's next batch, a payment's sync) does not wait a second for it.
    let mut changed = Vec::with_capacity(waiting.len());
    for (id, due) in waiting {
        match done_if_unchanged(app, &id).await {
            Ok(true) => {}
            Ok(false) => changed.push((id, due)),
            Err(e) => {
                tracing::warn!(id, error = %e, "stock mirror: could not read whether it changed; followed");
                changed.push((id, due));
            }
        }
    }
    waiting = changed;
    for round in 0..=FOLLOW_ROUNDS {
        if waiting.is_empty() {
            return;
        }
        waiting.sort_by_key(|(_, due)| *due);
        let mut again = Vec::new();
        for (id, due) in waiting {
            if round == FOLLOW_ROUNDS || deadline.passed() {
                if let Err(e) = hand_off(app, &id).await {
                    tracing::warn!(id, error = %e, "stock mirror: not handed over; the schedule runs it");
                }
                continue;
            }
            let wait = due.saturating_sub(app.clock.now_ms()).clamp(0, SPACING_MS);
            tokio::time::sleep(std::time::Duration::from_millis(wait.unsigned_abs())).await;
            let claimed =
                outbox::claim_one(app.store.as_ref(), &id, app.clock.now_ms(), LEASE_MS).await;
            let outcome = match claimed {
                Ok(Some(c)) => run(app, c, &mut report).await,
                Ok(None) => Ok(None), // gone, or another worker's
                Err(e) => Err(e),
            };
            match outcome {
                Ok(Some(next)) => again.push((id, next)),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(id, error = %e, "stock mirror: follow-up not settled; its lease runs out and the schedule runs it");
                }
            }
        }
        waiting = again;
    }
}

/// For a stream invocation: the stock mirror `id`, cooling off after its call, deleted at
/// once when its product's stock is still what that call sent (`true`: nothing left to do).
/// In a stream, spacing needs no cooling-off then: the product's next change adds a new
/// entry, a new stream record, which the next batch runs — its batching window (1 s) apart.
/// The deletion is conditioned on the entry's version, which a change made meanwhile bumps:
/// then `false`, and the entry is followed as before. Not claimed first: a cooling entry is
/// due later, so no other worker holds it.
async fn done_if_unchanged(app: &App, id: &str) -> Result<bool, StoreError> {
    let store = app.store.as_ref();
    let Some(current) = outbox::get(store, id).await? else {
        return Ok(true);
    };
    let Task::StockMirror {
        product_id,
        sent: Some(sent),
    } = &current.entry.task
    else {
        return Ok(false);
    };
    if current.entry.is_dead() || current.entry.attempts > 0 {
        return Ok(false);
    }
    let Some(p) = repo::get_product(store, product_id).await? else {
        return Ok(false);
    };
    if stock_of(&p.value) != *sent {
        return Ok(false);
    }
    match outbox::complete(store, &current).await {
        Ok(()) => Ok(true),
        Err(StoreError::Conflict { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The stock mirror `id`, cooling off and not claimed, deleted and added again as it is
/// (`sent` and due time kept): a new stream record, so the stream's next batch runs it once
/// due. Nothing if it is claimed or gone. Not atomic — DynamoDB refuses two writes of one item
/// in one transaction — so a crash between the two loses the send until the product's next
/// change (see the module doc for why that is rare).
pub async fn hand_off(app: &App, id: &str) -> Result<(), StoreError> {
    let store = app.store.as_ref();
    let Some(current) = outbox::get(store, id).await? else {
        return Ok(());
    };
    let now = app.clock.now_ms();
    let claimed = current.entry.attempts > 0 && current.entry.due_at_ms > now;
    if current.entry.is_dead() || claimed {
        return Ok(());
    }
    match outbox::complete(store, &current).await {
        Ok(()) => {}
        // Bumped or claimed meanwhile: whoever did runs it (a claim), or it is due when it
        // was (a bump), and the schedule runs it.
        Err(StoreError::Conflict { .. }) => return Ok(()),
        Err(e) => return Err(e),
    }
    match outbox::enqueue(store, &current.entry).await {
        // A change added its own entry in between: that one is the product's.
        Err(StoreError::Conflict { .. }) => Ok(()),
        other => other,
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
            ..OutboxEntry::new(
                Task::StockMirror {
                    product_id: tea,
                    sent: None,
                },
                now,
            )
        };
        outbox::enqueue(app.store.as_ref(), &entry).await.unwrap();
        outbox::claim_one(app.store.as_ref(), &entry.id, now, LEASE_MS)
            .await
            .unwrap()
            .unwrap()
    }

    /// What `add_to` does to an entry: its version bumped.
    async fn bump(app: &App, id: &str) {
        let current = outbox::get(app.store.as_ref(), id).await.unwrap().unwrap();
        app.store
            .write(vec![Write::put(
                outbox::to_record(&current.entry, current.version + 1).unwrap(),
                Expect::Version(current.version),
            )])
            .await
            .unwrap();
    }

    /// An entry whose run changed nothing is deleted — unless a change bumped it while it ran:
    /// then it stays (never deleted and added again), due at once, `sent` kept.
    #[tokio::test]
    async fn a_change_while_it_ran_keeps_the_entry() {
        let app = App::for_tests(Arc::new(SqliteStore::memory().unwrap()));
        let mut report = DrainReport::default();
        // The component is off in this app: every run sends nothing.
        let c = claimed(&app).await;
        assert_eq!(run(&app, c, &mut report).await.unwrap(), None);
        let id = entry_id(&ProductId::parse("tea").unwrap());
        assert!(outbox::get(app.store.as_ref(), &id)
            .await
            .unwrap()
            .is_none());

        let c = claimed(&app).await;
        bump(&app, &id).await;
        let due = run(&app, c, &mut report).await.unwrap();
        let again = outbox::get(app.store.as_ref(), &id).await.unwrap().unwrap();
        assert_eq!(due, Some(again.entry.due_at_ms));
        assert!(again.entry.due_at_ms <= app.clock.now_ms());
        assert_eq!(again.entry.attempts, 0);
    }

    /// A tea of `stock` units stored in `app`'s store.
    async fn store_tea(app: &App, stock: u32) {
        let tea: Product = serde_json::from_value(serde_json::json!({
            "product_id": "tea", "title": "Tea",
            "skus": [{"sku_id": "tea-250g", "price": 1990, "stock": stock}],
        }))
        .unwrap();
        let mut b = Batch::new();
        b.create_product(&tea);
        b.commit(app.store.as_ref()).await.unwrap();
    }

    /// In a stream invocation, an entry cooling off after a call whose stock did not change
    /// since is done at once (the invocation does not wait a second for it); one whose stock
    /// changed stays to be followed.
    #[tokio::test]
    async fn a_stream_leaves_no_wait_for_a_stock_that_did_not_change() {
        let sent: SentStock = [(crate::domain::SkuId::parse("tea-250g").unwrap(), 7)].into();
        for (stock, done) in [(7, true), (6, false)] {
            let app = App::for_tests(Arc::new(SqliteStore::memory().unwrap()));
            store_tea(&app, stock).await;
            let c = claimed(&app).await;
            let id = c.entry.id.clone();
            let due = app.clock.now_ms() + SPACING_MS;
            write_back(&app, &c, Some(sent.clone()), due)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                done_if_unchanged(&app, &id).await.unwrap(),
                done,
                "stock {stock}"
            );
            let left = outbox::get(app.store.as_ref(), &id).await.unwrap();
            assert_eq!(left.is_none(), done, "stock {stock}");
        }
    }

    /// Handed over, an entry cooling off is added again as it was — a new record (version 1)
    /// carrying its `sent` and due time; one claimed by a worker is left alone.
    #[tokio::test]
    async fn a_hand_off_adds_the_entry_again_as_it_was() {
        let app = App::for_tests(Arc::new(SqliteStore::memory().unwrap()));
        let c = claimed(&app).await;
        let id = c.entry.id.clone();
        hand_off(&app, &id).await.unwrap();
        assert_eq!(
            outbox::get(app.store.as_ref(), &id).await.unwrap().unwrap(),
            c,
            "claimed: not handed over"
        );
        let sent: SentStock = [(crate::domain::SkuId::parse("tea-250g").unwrap(), 7)].into();
        let due = write_back(
            &app,
            &c,
            Some(sent.clone()),
            app.clock.now_ms() + SPACING_MS,
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(cooling(&app, &id).await.unwrap(), Some(due));
        hand_off(&app, &id).await.unwrap();
        let again = outbox::get(app.store.as_ref(), &id).await.unwrap().unwrap();
        assert_eq!(again.version, 1, "a new record");
        assert_eq!(again.entry.due_at_ms, due);
        assert_eq!(
            again.entry.task,
            Task::StockMirror {
                product_id: ProductId::parse("tea").unwrap(),
                sent: Some(sent)
            }
        );
    }
}
