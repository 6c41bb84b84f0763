//! `orderSync`: carries out the outbox — `shop/order/pay`, `shop/delivery/send`,
//! `shop/delivery/recieve`, after-sale syncs, refunds, closes, stock back and stock mirrors
//! (`spu/update_without_audit`) — with retry, back-off and
//! dead letters; a schedule re-drives anything stuck, reconciles unpaid orders with
//! `pay/orderquery`, refunds whose notification never came with `pay/refundquery` and
//! receipts WeChat confirmed whose push never came with `shop/order/get`;
//! merchants ship, re-sync and replay dead letters through `POST /admin/orderSync`.
//!
//! Triggers: DynamoDB stream (new outbox entries, [`on_outbox_records`]), the schedule
//! ([`on_schedule`]), and HTTP ([`handle`]). `wxlocal` runs [`drain`] in a loop instead of the
//! stream.
//!
//! The schedule runs inside a Lambda timeout (60 s) with work that has no natural bound (a
//! backlog of outbox entries, hundreds of unpaid orders to ask WeChat about, each call up to
//! `WX_HTTP_TIMEOUT_MS`). Cut off by the timeout, a run reported an error (the errors alarm
//! every 5 minutes), EventBridge's retries of the failed invocation doubled the load, and the
//! phases after the slow one never ran. So it works against a [`Deadline`] — the invocation's,
//! less [`SCHEDULE_MARGIN`] — in [`Phase`]s that each stop cleanly when it passes and say so.

use super::common::{close_and_release, with_retries, Attempt};
use crate::app::App;
use crate::domain::{Change, Delivery, OrderStatus, OutTradeNo};
use crate::http::{json, parse_json, ApiError, Request, Response};
use crate::outbox::{self, Claimed, OutboxEntry, Task};
use crate::store::repo::{self, Batch};
use crate::store::rotation::Next;
use crate::time::Deadline;
use serde::Deserialize;
use std::time::Duration;

/// How long a worker holds an entry before another may take it over.
pub const LEASE_MS: i64 = 60_000;

/// What running one task came to.
#[derive(Debug)]
pub enum TaskError {
    /// Try again later (network, WeChat busy, token).
    Retry(String),
    /// Try again, but not sooner than this many ms from now: WeChat said when (a refund of
    /// the same order within a minute of the last is FREQUENCY_LIMITED). The usual back-off
    /// would spend attempts on refusals, which WeChat counts against the merchant.
    RetryAfter(String, i64),
    /// Will never work as it is (bad data, WeChat refuses): dead letter.
    Permanent(String),
}

impl std::fmt::Display for TaskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TaskError::Retry(m) => write!(f, "retryable: {m}"),
            TaskError::RetryAfter(m, ms) => write!(f, "retryable in {ms} ms: {m}"),
            TaskError::Permanent(m) => write!(f, "permanent: {m}"),
        }
    }
}

impl From<crate::store::StoreError> for TaskError {
    fn from(e: crate::store::StoreError) -> Self {
        TaskError::Retry(e.to_string())
    }
}

impl From<ApiError> for TaskError {
    fn from(e: ApiError) -> Self {
        if e.status.is_server_error() {
            TaskError::Retry(e.to_string())
        } else {
            TaskError::Permanent(e.to_string())
        }
    }
}

/// Counts of one drain.
#[derive(Debug, Default, Clone, Copy, serde::Serialize, PartialEq, Eq)]
pub struct DrainReport {
    pub done: usize,
    pub retried: usize,
    pub dead: usize,
}

/// Runs one claimed entry and settles it (complete, retry or dead-letter). `Ok(Some(due))`:
/// the task ran and its entry stays in the queue, due then, to run again (a stock mirror
/// cooling off: [`super::stock_mirror`]).
pub async fn run_claimed(
    app: &App,
    claimed: Claimed,
    report: &mut DrainReport,
) -> Result<Option<i64>, crate::store::StoreError> {
    if let Task::StockMirror { .. } = &claimed.entry.task {
        return super::stock_mirror::run(app, claimed, report).await;
    }
    let task = claimed.entry.task.clone();
    match run_task(app, &task).await {
        Ok(()) => {
            report.done += 1;
            outbox::complete(app.store.as_ref(), &claimed).await?;
        }
        Err(e) => settle_failure(app, &claimed, e, report).await?,
    }
    Ok(None)
}

/// Settles a claimed entry whose task failed: a retry with back-off, or a dead letter.
pub(super) async fn settle_failure(
    app: &App,
    claimed: &Claimed,
    error: TaskError,
    report: &mut DrainReport,
) -> Result<(), crate::store::StoreError> {
    let task = &claimed.entry.task;
    let now = app.clock.now_ms();
    match error {
        e @ (TaskError::Retry(_) | TaskError::RetryAfter(..)) => {
            let (msg, not_before_ms) = match e {
                TaskError::RetryAfter(msg, ms) => (msg, ms),
                TaskError::Retry(msg) | TaskError::Permanent(msg) => (msg, 0),
            };
            tracing::warn!(task = task.name(), id = %claimed.entry.id, attempts = claimed.entry.attempts, error = %msg, "outbox task failed; will retry");
            match outbox::retry(app.store.as_ref(), claimed, &msg, now, not_before_ms).await? {
                outbox::RetryOutcome::Dead => {
                    tracing::error!(task = task.name(), id = %claimed.entry.id, attempts = claimed.entry.attempts, error = %msg, "outbox task out of attempts; dead-lettered");
                    dead_lettered(app, report, now);
                }
                _ => report.retried += 1,
            }
            Ok(())
        }
        TaskError::Permanent(msg) => {
            outbox::dead(app.store.as_ref(), claimed, &msg, now).await?;
            tracing::error!(task = task.name(), id = %claimed.entry.id, error = %msg, "outbox task failed permanently; dead-lettered");
            dead_lettered(app, report, now);
            Ok(())
        }
    }
}

/// An entry was just written as a dead letter. It is settled (the stream batch succeeds, so
/// nothing reaches the SQS dead-letter queue), and it needs a person: a refund or a delivery
/// WeChat refused stays undone until someone fixes and replays it. So it is counted as the
/// `OutboxDeadLetters` metric, which `OutboxDeadLetterAlarm` (infra/template.yaml) watches.
fn dead_lettered(app: &App, report: &mut DrainReport, now_ms: i64) {
    report.dead += 1;
    app.metrics
        .count(crate::metrics::OUTBOX_DEAD_LETTERS, 1, now_ms);
}

/// Pages in a row, each of whose listed entries was leased or done already (a lagging
/// index), that a drain reads past before it leaves the rest to the next drain. Bounds the
/// wasted claims (one failed conditional write each) at 8 × 25.
const MAX_LOST_PAGES: usize = 8;

/// Claims and runs due entries until none are due or `max` were run.
pub async fn drain(app: &App, max: usize) -> Result<DrainReport, crate::store::StoreError> {
    drain_until(app, max, None)
        .await
        .map(|(report, _finished)| report)
}

/// [`drain`] that starts no round of entries once `deadline` has passed. `true` with the
/// report when nothing due was left; `false` when it stopped at the deadline or at `max`.
pub async fn drain_until(
    app: &App,
    max: usize,
    deadline: Option<Deadline>,
) -> Result<(DrainReport, bool), crate::store::StoreError> {
    let mut report = DrainReport::default();
    let mut ran = 0;
    // Each round reads the index from its start (entries that became due meanwhile come
    // first); only past a page whose every claim was lost does it read on.
    let mut cursor = None;
    let mut lost_pages = 0;
    loop {
        if ran >= max || deadline.is_some_and(Deadline::passed) {
            return Ok((report, false));
        }
        let page = outbox::claim_due_page(
            app.store.as_ref(),
            app.clock.now_ms(),
            LEASE_MS,
            25.min(max - ran),
            cursor.take(),
        )
        .await?;
        if page.claimed.is_empty() {
            match page.next {
                // DynamoDB's status index lags: it still listed entries already leased or
                // done, and every claim lost. Entries may be due further on: read on (a
                // bounded number of pages in a row) instead of ending the drain.
                Some(next) if page.listed > 0 => {
                    if lost_pages == MAX_LOST_PAGES {
                        tracing::warn!(
                            pages = lost_pages,
                            "outbox drain: every listed entry was taken already; the next drain goes on"
                        );
                        return Ok((report, false));
                    }
                    lost_pages += 1;
                    cursor = Some(next);
                    continue;
                }
                _ => return Ok((report, true)),
            }
        }
        lost_pages = 0;
        let batch = page.claimed;
        ran += batch.len();
        let results = futures::future::join_all(batch.into_iter().map(|c| async {
            let mut r = DrainReport::default();
            // An entry that stays due later (a stock mirror cooling off) is the next drain's.
            let outcome = run_claimed(app, c, &mut r).await;
            (outcome, r)
        }))
        .await;
        for (outcome, r) in results {
            report.done += r.done;
            report.retried += r.retried;
            report.dead += r.dead;
            if let Err(e) = outcome {
                // Lost the lease or the store failed: the entry comes back by itself.
                tracing::warn!(error = %e, "could not settle an outbox entry");
            }
        }
    }
}

/// DynamoDB stream: new outbox entries by id. Returns the ids that could not be settled (the
/// stream retries those; everything else is acknowledged).
///
/// The entries run one after another, each a WeChat chain of up to three calls; ten slow ones
/// outlast orderSync's 60 s timeout. Cut off by it, the invocation failed as a whole: the
/// entry under way was killed mid-call (its lease held it for a minute), the batch counted as
/// an error (bisected, retried, and after five tries sent to the dead-letter queue, which
/// pages). So no entry but the first is started once `deadline` has passed (the invocation's
/// less [`SCHEDULE_MARGIN`], what one entry may take): the rest are returned as not settled,
/// and the stream hands them to the next invocation at once. The first always runs, so every
/// invocation makes progress.
///
/// Every WeChat call an entry makes is bounded by the invocation's deadline (`deadline` plus
/// [`SCHEDULE_MARGIN`], [`crate::time::bounded`]): an entry whose chain outlasts the margin
/// has its calls cut (or not sent) before it, fails cleanly and stays due, rather than being
/// killed mid-call by the Lambda timeout.
pub async fn on_outbox_records(app: &App, ids: Vec<String>, deadline: Deadline) -> Vec<String> {
    let calls_by = deadline.later_by(SCHEDULE_MARGIN);
    crate::time::bounded(Some(calls_by), outbox_records_until(app, ids, deadline)).await
}

async fn outbox_records_until(app: &App, ids: Vec<String>, deadline: Deadline) -> Vec<String> {
    let mut failed = Vec::new();
    // Stock mirrors cooling off: followed once the batch's other items have run.
    let mut cooling = Vec::new();
    let mut ids = ids.into_iter();
    let mut started = false;
    while let Some(id) = ids.next() {
        if started && deadline.passed() {
            tracing::warn!(
                left = ids.len() + 1,
                "outbox batch: the invocation's deadline is near; the stream retries the rest"
            );
            failed.push(id);
            failed.extend(ids);
            break;
        }
        started = true;
        let mut report = DrainReport::default();
        let outcome =
            match outbox::claim_one(app.store.as_ref(), &id, app.clock.now_ms(), LEASE_MS).await {
                Ok(Some(c)) => run_claimed(app, c, &mut report).await,
                // Gone, leased by someone else (theirs now), or not due yet: the schedule's —
                // but a stock mirror cooling off (handed over by a batch before) is this one's.
                Ok(None) => super::stock_mirror::cooling(app, &id).await,
                Err(e) => Err(e),
            };
        match outcome {
            Ok(Some(due)) => cooling.push((id, due)),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(id, error = %e, "stream record not settled");
                failed.push(id);
            }
        }
    }
    // The stream wakes for inserts only: a mirror left cooling off (a MODIFY) would wait for
    // the schedule, so this invocation runs it again once due, after every other item.
    super::stock_mirror::follow(app, cooling, deadline).await;
    failed
}

/// How long before the Lambda deadline the schedule (and a stream batch) stops starting work:
/// what an item already
/// started may still take — an outbox task's WeChat chain (a call, a token refresh and the
/// call again, at `WX_HTTP_TIMEOUT_MS` = 4 s each) plus its store writes.
pub const SCHEDULE_MARGIN: Duration = Duration::from_secs(15);

/// The schedule's budget where no Lambda deadline exists (`wxlocal`, which runs it every
/// minute): orderSync's 60 s timeout less [`SCHEDULE_MARGIN`], as in AWS.
pub const LOCAL_SCHEDULE_BUDGET: Duration = Duration::from_secs(45);

/// What an admin sweep may spend: API Gateway stops waiting at 30 s.
const ADMIN_SWEEP_BUDGET: Duration = Duration::from_secs(25);

/// The schedule's phases, in the order they first run. Each checks the deadline before every
/// item it starts (an outbox round, an order to ask WeChat about, a product's audit) and says
/// whether it finished. To add one: a variant here, in [`PHASES`], a field of
/// [`ScheduleReport`] and its arm in [`run_phase`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Due outbox entries (the stream's retry path).
    Drain,
    /// Unpaid orders: ask WeChat, record payments, close the expired.
    Unpaid,
    /// Refunds whose notification never came (`pay/refundquery`).
    Refunds,
    /// After-sales the user opened in WeChat's order centre whose push never came, found by
    /// listing WeChat's (`ecaftersale/get_list`) and imported.
    WechatNewAftersales,
    /// Open after-sales read back from WeChat (`ecaftersale/get`) whose push never came: a
    /// refund WeChat made of a secondary-merchant order (approved here or not), a user's
    /// cancel, edit or return parcel in WeChat's order centre (the name predates all but the
    /// first).
    WechatRefunds,
    /// Component orders we hold SHIPPED whose receipt WeChat confirmed and whose
    /// `open_product_order_confirm` push never came, read back ([`sweep_receipts`]).
    Receipts,
    /// Audit verdicts whose push never came.
    Audits,
    /// Yesterday's WeChat Pay bills reconciled, once a day after 10:00 China time.
    Bill,
    /// Yesterday's funds flows reconciled (fund_type 1 mode), once a day after 10:00 China
    /// time ([`super::funds_reconcile::run_daily`]).
    Funds,
    /// Expired records (SQLite; a no-op on DynamoDB, whose TTL deletes them).
    Purge,
    /// Index entries written before DynamoDB's indexes were sharded, moved to their shard,
    /// until none is left and listings stop reading where they were (`Store::migrate_index`;
    /// a no-op on SQLite).
    LegacyIndex,
}

pub const PHASES: [Phase; 11] = [
    Phase::Drain,
    Phase::Unpaid,
    Phase::Refunds,
    Phase::WechatNewAftersales,
    Phase::WechatRefunds,
    Phase::Receipts,
    Phase::Audits,
    Phase::Bill,
    Phase::Funds,
    Phase::Purge,
    Phase::LegacyIndex,
];

/// One schedule run: what each phase did, and which phases did not get to the end.
#[derive(Debug, Default, serde::Serialize)]
pub struct ScheduleReport {
    pub drained: DrainReport,
    pub swept: SweepReport,
    pub refunds: super::aftersale_sync::RefundSweepReport,
    pub wechat_new_aftersales: super::aftersale_sync::WeChatNewAfterSaleReport,
    pub wechat_refunds: super::aftersale_sync::WeChatRefundSweepReport,
    pub receipts: ReceiptSweepReport,
    pub audits: super::catalog_sync::AuditSweepReport,
    pub bill: super::reconcile::DailyReport,
    pub funds: super::funds_reconcile::DailyReport,
    pub purged: usize,
    pub legacy_index: crate::store::IndexMigration,
    /// Phases stopped (or never started) at the deadline with work possibly left: the next
    /// run (5 minutes on) goes on with them.
    pub unfinished: Vec<Phase>,
    /// Phases that failed (the store, WeChat); logged, and the next run tries again.
    pub failed: Vec<Phase>,
}

/// The schedule: drain what is due, sweep unpaid orders (ask WeChat Pay; close the expired
/// ones and release their stock), settle refunds whose notification never came, import
/// after-sales opened in WeChat whose push never came, record refunds WeChat made on its own
/// whose push never came, record receipts WeChat confirmed whose push never came, apply audit
/// verdicts whose push never came, reconcile yesterday's bills (once a day), purge expired
/// records, move index entries written before the sharding (DynamoDB) — all started before
/// `deadline`.
///
/// No phase starves the ones after it: in a first pass each phase gets an equal share of the
/// time left (a phase that finishes early leaves its time to the next), and what remains then
/// goes, in order, to the phases the first pass cut short. A slow WeChat thus slows the
/// sweep, but the audits and the purge still run, and the run ends before the Lambda timeout.
///
/// Every WeChat call of the run is bounded by the invocation's deadline (`deadline` plus
/// [`SCHEDULE_MARGIN`], [`crate::time::bounded`]): an item started late whose chain outlasts
/// the margin has its calls cut (or not sent) before it and stays due for the next run. (Not
/// by `deadline` itself: an item started just before it would then have no time for a call,
/// and fail — an attempt counted — where it is now handed to the next run untouched.)
pub async fn on_schedule(app: &App, deadline: Deadline) -> serde_json::Value {
    let calls_by = deadline.later_by(SCHEDULE_MARGIN);
    crate::time::bounded(Some(calls_by), schedule_until(app, deadline)).await
}

async fn schedule_until(app: &App, deadline: Deadline) -> serde_json::Value {
    let mut report = ScheduleReport::default();
    let mut cut_short = Vec::new();
    for (i, phase) in PHASES.into_iter().enumerate() {
        let phases_left = u32::try_from(PHASES.len() - i).unwrap_or(1);
        let share = Deadline::after(deadline.remaining() / phases_left).min(deadline);
        if !run_phase(app, phase, share, &mut report).await {
            cut_short.push(phase);
        }
    }
    for phase in cut_short {
        if !run_phase(app, phase, deadline, &mut report).await {
            report.unfinished.push(phase);
        }
    }
    if !report.unfinished.is_empty() {
        tracing::warn!(unfinished = ?report.unfinished, "schedule stopped at its deadline; the next run goes on");
    }
    serde_json::to_value(&report).unwrap_or_default()
}

/// Runs `phase` until it is done or `deadline` passes, adding to `report`. `false` when it
/// stopped at the deadline (or never started); a failure is logged, recorded in
/// `report.failed`, and counts as done for this run.
async fn run_phase(
    app: &App,
    phase: Phase,
    deadline: Deadline,
    report: &mut ScheduleReport,
) -> bool {
    if deadline.passed() {
        return false;
    }
    let outcome: Result<bool, String> = match phase {
        Phase::Drain => drain_until(app, 500, Some(deadline))
            .await
            .map(|(r, finished)| {
                report.drained.done += r.done;
                report.drained.retried += r.retried;
                report.drained.dead += r.dead;
                finished
            })
            .map_err(|e| e.to_string()),
        Phase::Unpaid => sweep_unpaid(app, deadline)
            .await
            .map(|(r, finished)| {
                report.swept.checked += r.checked;
                report.swept.paid += r.paid;
                report.swept.closed += r.closed;
                report.swept.unanswered += r.unanswered;
                report.swept.held += r.held;
                report.swept.failed += r.failed;
                finished
            })
            .map_err(|e| e.to_string()),
        // At most 50 `refundquery` calls a run, none started past the deadline.
        Phase::Refunds => super::aftersale_sync::sweep_refunds(app, deadline)
            .await
            .map(|(r, finished)| {
                report.refunds.checked += r.checked;
                report.refunds.asked += r.asked;
                report.refunds.settled += r.settled;
                report.refunds.pending += r.pending;
                report.refunds.failed += r.failed;
                finished
            })
            .map_err(|e| e.to_string()),
        Phase::WechatNewAftersales => {
            super::aftersale_sync::sweep_wechat_new_aftersales(app, deadline)
                .await
                .map(|(r, finished)| {
                    let sum = &mut report.wechat_new_aftersales;
                    sum.listed += r.listed;
                    sum.asked += r.asked;
                    sum.imported += r.imported;
                    sum.recorded += r.recorded;
                    sum.ignored += r.ignored;
                    sum.failed += r.failed;
                    finished
                })
                .map_err(|e| e.to_string())
        }
        Phase::WechatRefunds => super::aftersale_sync::sweep_wechat_refunds(app, deadline)
            .await
            .map(|(r, finished)| {
                report.wechat_refunds.checked += r.checked;
                report.wechat_refunds.asked += r.asked;
                report.wechat_refunds.recorded += r.recorded;
                report.wechat_refunds.cancelled += r.cancelled;
                report.wechat_refunds.adopted += r.adopted;
                report.wechat_refunds.returned += r.returned;
                report.wechat_refunds.failed += r.failed;
                report.wechat_refunds.closed += r.closed;
                report.wechat_refunds.held += r.held;
                report.wechat_refunds.not_at_wechat += r.not_at_wechat;
                finished
            })
            .map_err(|e| e.to_string()),
        Phase::Receipts => sweep_receipts(app, deadline)
            .await
            .map(|(r, finished)| {
                let sum = &mut report.receipts;
                sum.checked += r.checked;
                sum.asked += r.asked;
                sum.received += r.received;
                sum.unanswered += r.unanswered;
                sum.not_at_wechat += r.not_at_wechat;
                sum.not_applied += r.not_applied;
                finished
            })
            .map_err(|e| e.to_string()),
        Phase::Audits => super::catalog_sync::sweep_audits(app, deadline)
            .await
            .map(|(r, finished)| {
                report.audits.checked += r.checked;
                report.audits.asked += r.asked;
                report.audits.decided += r.decided;
                report.audits.reindexed += r.reindexed;
                report.audits.withdrawn += r.withdrawn;
                report.audits.platform_delisted += r.platform_delisted;
                report.audits.platform_restored += r.platform_restored;
                report.audits.unreadable += r.unreadable;
                report.audits.qualification_verdicts += r.qualification_verdicts;
                report.audits.waiting_resubmitted += r.waiting_resubmitted;
                finished
            })
            .map_err(|e| e.to_string()),
        Phase::Bill => super::reconcile::run_daily(app, deadline, &mut report.bill)
            .await
            .map_err(|e| e.to_string()),
        Phase::Funds => super::funds_reconcile::run_daily(app, deadline, &mut report.funds)
            .await
            .map_err(|e| e.to_string()),
        // Expired records (sessions, idempotency keys, replay guards) are invisible already;
        // on SQLite this reclaims their space, on DynamoDB TTL does it and this is a no-op.
        Phase::Purge => app
            .store
            .purge_expired()
            .await
            .map(|n| {
                report.purged += n;
                true
            })
            .map_err(|e| e.to_string()),
        // A page of entries at a time, none started past the deadline; progress kept in kv.
        Phase::LegacyIndex => app
            .store
            .migrate_index(&repo::index_listings(), app.clock.now_ms(), deadline)
            .await
            .map(|(r, finished)| {
                let sum = &mut report.legacy_index;
                sum.found += r.found;
                sum.moved += r.moved;
                sum.passes += r.passes;
                sum.migrated |= r.migrated;
                finished
            })
            .map_err(|e| e.to_string()),
    };
    outcome.unwrap_or_else(|error| {
        tracing::error!(phase = ?phase, error, "schedule phase failed");
        // The run itself succeeds: this count is what pages when a phase keeps failing.
        app.metrics.count(
            crate::metrics::SCHEDULE_PHASE_FAILURES,
            1,
            app.clock.now_ms(),
        );
        report.failed.push(phase);
        true
    })
}

#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct SweepReport {
    /// Unpaid orders looked at.
    pub checked: usize,
    /// Found paid (their notification or push had not come).
    pub paid: usize,
    /// Expired, closed and their stock put back.
    pub closed: usize,
    /// Orders WeChat was asked about without an answer (the call failed, or WeChat does not
    /// know the order): asked again on the sweep's next turn.
    pub unanswered: usize,
    /// Expired orders of those: kept open, their stock taken, since they may have been paid
    /// (counted as the `ExpiredOrdersHeld` metric).
    pub held: usize,
    /// Orders whose handling failed here (the store): looked at again on the next turn.
    pub failed: usize,
}

/// Unpaid orders looked at per status per run: one `orderquery` (or `shop/order/get`) each.
const UNPAID_SWEEP_MAX: usize = 200;

/// Unpaid orders older than a minute: paid ones are recorded, expired ones closed. Before an
/// order is closed WeChat is asked whether it was paid — WeChat Pay's `orderquery`, or for
/// fund_type=1 (WeChat collects) the component's `shop/order/get` — since a notification or
/// push may never have arrived. An expired order WeChat does not answer for is not closed (it
/// may have been paid): it is held, said in a WARN, counted in the report and as the
/// `ExpiredOrdersHeld` metric, and asked about again on the sweep's next turn.
///
/// Each status is swept as a [`Rotation`](crate::store::rotation::Rotation): a run goes on
/// after the last order the previous run looked at, to the newest, then round from the
/// oldest, at most [`UNPAID_SWEEP_MAX`] a run. It used to take the 200 oldest every run, so
/// 200 orders WeChat never answers for kept every newer order — expired ones whose stock
/// should go back among them — from being looked at, for good. CREATED orders (nothing to
/// ask) go first. No order is started once `deadline` has passed: `false` with the report
/// then, and the next run goes on from there.
pub async fn sweep_unpaid(app: &App, deadline: Deadline) -> Result<(SweepReport, bool), ApiError> {
    let mut report = SweepReport::default();
    let now = app.clock.now_ms();
    let store = app.store.as_ref();
    let mut finished = true;
    for status in [OrderStatus::Created, OrderStatus::Prepaid] {
        let name = format!("unpaid/{}", status.as_str());
        let mut turn = repo::order_rotation(store, &name, status, now - 60_000).await?;
        let mut looked = 0;
        let outcome = loop {
            if looked == UNPAID_SWEEP_MAX {
                break Ok(true);
            }
            let rec = match turn.next_before(store, deadline).await {
                Ok(Next::Record(rec)) => rec,
                Ok(Next::Stop { finished }) => break Ok(finished),
                Err(e) => break Err(e),
            };
            looked += 1;
            report.checked += 1;
            match repo::versioned::<crate::domain::Order>(&rec) {
                Ok(order) => sweep_order(app, order.value, now, &mut report).await,
                Err(e) => {
                    tracing::error!(id = rec.id, error = %e, "sweep: unreadable order; skipped");
                    report.failed += 1;
                }
            }
        };
        turn.save(store, app.clock.now_secs()).await;
        if !outcome? {
            finished = false;
            break;
        }
    }
    if report.held > 0 {
        tracing::warn!(
            held = report.held,
            "sweep: expired orders kept open because WeChat did not say whether they were paid"
        );
        app.metrics.count(
            crate::metrics::EXPIRED_ORDERS_HELD,
            u64::try_from(report.held).unwrap_or(u64::MAX),
            app.clock.now_ms(),
        );
    }
    Ok((report, finished))
}

/// What one run of [`sweep_receipts`] did.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct ReceiptSweepReport {
    /// SHIPPED orders read (created over [`RECEIPT_SWEEP_AGE_MS`] ago).
    pub checked: usize,
    /// Of those, component orders shipped over [`RECEIPT_SWEEP_AGE_MS`] ago whose
    /// WeChat order was read back (`shop/order/get`).
    pub asked: usize,
    /// WeChat's order read completed (100): ours RECEIVED now, as the lost push would have.
    pub received: usize,
    /// WeChat's order could not be read (or the receipt could not be stored): asked again on
    /// a later turn.
    pub unanswered: usize,
    /// Component orders WeChat holds none of that takes a receipt (it never made it:
    /// `component_order_missing`; it cancelled it while ours is paid: `order_event_mismatch`),
    /// or that WeChat answers it does not hold (1010011): not asked, or nothing applied.
    pub not_at_wechat: usize,
    /// WeChat's order completed but ours could not take the receipt (changed meanwhile): kept
    /// as an `order_confirm_not_applied` event.
    pub not_applied: usize,
}

/// How long a component order stays SHIPPED, unchanged, before the schedule reads its receipt
/// back from WeChat: a day. The `open_product_order_confirm` push comes within seconds of the
/// receipt (WeChat's retries within about 15 s), so a day leaves it to the push with a wide
/// margin, spares the questions about orders still on their way (most of those SHIPPED), and
/// leaves a receipt whose push was lost for good unrecorded for about a day at most. "Shipped
/// a day ago" is read as created and shipped over a day ago: the status index is ordered by
/// creation, which bounds the read, and the shipment is [`Order::shipped_since_ms`] — when it
/// happened, so a later change of the order (an after-sale applied for and withdrawn, a
/// settlement) does not put the read-back off; for an order shipped before that was kept, its
/// last change (`updated_at_ms`, which the shipment set).
///
/// [`Order::shipped_since_ms`]: crate::domain::Order::shipped_since_ms
pub const RECEIPT_SWEEP_AGE_MS: i64 = 24 * 3_600_000;
/// SHIPPED orders read per run, and of those asked about (one `shop/order/get` each): every
/// SHIPPED order is read in turn, so the questions a day are bounded (10 a run, 2,880 a day at
/// the 5-minute schedule) however many orders are on their way, within WeChat's daily quota.
const RECEIPT_SWEEP_READ: usize = 100;
const RECEIPT_SWEEP_ASK: usize = 10;

/// Receipts WeChat confirmed — the user in WeChat's order centre, or WeChat itself when the
/// confirmation period ran out — whose `open_product_order_confirm` push never came (WeChat
/// does not guarantee pushes): nothing else reads a shipped order back, so ours stayed SHIPPED
/// for good. Component orders we hold SHIPPED, created and shipped over
/// [`RECEIPT_SWEEP_AGE_MS`] ago, are taken in turn ([`Rotation`](crate::store::rotation::Rotation)
/// of the status index, kept as kv `rotation/receipts/SHIPPED`: on from where the last run
/// stopped), at most [`RECEIPT_SWEEP_READ`] read and [`RECEIPT_SWEEP_ASK`] asked about a run.
/// WeChat's order is read (`shop/order/get` by our number) and, where it reads 100, the push's
/// own code records the receipt ([`record_wechat_receipt`](super::audit_callback)): RECEIVED.
/// Orders not in the trading component are not asked about (nor those WeChat holds none of
/// that takes a receipt: `not_at_wechat`); WeChat unreadable leaves the order to a later turn
/// (`unanswered`). No question is started once `deadline` has passed: `false` with the report
/// then. (Legacy PARTIALLY_REFUNDED records are not read: no current code writes that status.)
pub async fn sweep_receipts(
    app: &App,
    deadline: Deadline,
) -> Result<(ReceiptSweepReport, bool), ApiError> {
    use super::aftersale_sync::{component_of, Component};
    use super::audit_callback::{record_wechat_receipt, WeChatReceipt};
    let mut report = ReceiptSweepReport::default();
    if !super::common::component_on(app) {
        return Ok((report, true));
    }
    let store = app.store.as_ref();
    let shipped_before = app.clock.now_ms() - RECEIPT_SWEEP_AGE_MS;
    let name = format!("receipts/{}", OrderStatus::Shipped.as_str());
    let mut turn = repo::order_rotation(store, &name, OrderStatus::Shipped, shipped_before).await?;
    let outcome: Result<bool, ApiError> = loop {
        if report.checked == RECEIPT_SWEEP_READ || report.asked == RECEIPT_SWEEP_ASK {
            break Ok(true);
        }
        let rec = match turn.next_before(store, deadline).await {
            Ok(Next::Record(rec)) => rec,
            Ok(Next::Stop { finished }) => break Ok(finished),
            Err(e) => break Err(e.into()),
        };
        report.checked += 1;
        let order = match repo::versioned::<crate::domain::Order>(&rec) {
            Ok(o) => o.value,
            Err(e) => {
                tracing::error!(id = rec.id, error = %e, "receipt sweep: unreadable order; skipped");
                continue;
            }
        };
        if order.status != OrderStatus::Shipped
            || order.shipped_since_ms() > shipped_before
            || !order.at_wechat().component_order
        {
            continue;
        }
        let no = order.out_trade_no.clone();
        match component_of(app, &no).await {
            Ok(Component::Held { .. }) => {}
            Ok(Component::None) => continue,
            Ok(Component::Missing) => {
                report.not_at_wechat += 1;
                continue;
            }
            Err(e) => break Err(e.into()),
        }
        report.asked += 1;
        let key = crate::shop::types::OrderKey::Out(no.to_string());
        let wx = match app.wx.order_get(&key, order.openid.as_str()).await {
            Ok(wx) => wx,
            Err(e) if e.errcode() == Some(crate::shop::error::ERRCODE_ORDER_NOT_FOUND) => {
                tracing::warn!(out_trade_no = %no, "receipt sweep: WeChat does not hold this shipped order's component order; nothing to read");
                report.not_at_wechat += 1;
                continue;
            }
            Err(e) => {
                tracing::warn!(out_trade_no = %no, error = %e, "receipt sweep: WeChat's order not read; next turn");
                report.unanswered += 1;
                continue;
            }
        };
        match record_wechat_receipt(app, &no, wx.status).await {
            Ok(WeChatReceipt::Recorded) => report.received += 1,
            Ok(WeChatReceipt::NotCompleted) => {}
            Ok(WeChatReceipt::NotApplied) => report.not_applied += 1,
            Err(e) => {
                tracing::warn!(out_trade_no = %no, error = %e, "receipt sweep: the receipt WeChat holds was not stored; next turn");
                report.unanswered += 1;
            }
        }
    };
    turn.save(store, app.clock.now_secs()).await;
    let finished = outcome?;
    if report.received > 0 {
        tracing::warn!(
            received = report.received,
            "receipt sweep: receipts WeChat confirmed recorded; their pushes never came"
        );
    }
    Ok((report, finished))
}

/// One unpaid order of the sweep: [settled](settle_unpaid). Whatever fails is logged and
/// counted; the sweep goes on with the next.
async fn sweep_order(app: &App, order: crate::domain::Order, now: i64, report: &mut SweepReport) {
    let no = order.out_trade_no.clone();
    let expires_at_ms = order.expires_at_ms;
    match settle_unpaid(app, order, now, 0).await {
        Ok(Settled::Paid(_)) => report.paid += 1,
        Ok(Settled::Open) => {}
        Ok(Settled::Closed(closed)) => {
            if closed.status == OrderStatus::Closed {
                report.closed += 1;
            } // else paid or closed meanwhile
        }
        Ok(Settled::Unanswered { error, expired }) => {
            report.unanswered += 1;
            if expired {
                report.held += 1;
                tracing::warn!(out_trade_no = %no, expired_at_ms = expires_at_ms, error = %error, "sweep: expired order not closed: WeChat did not say whether it was paid; asked again next turn");
            } else {
                tracing::warn!(out_trade_no = %no, error = %error, "sweep: order query failed");
            }
        }
        Err(e) => {
            report.failed += 1;
            tracing::warn!(out_trade_no = %no, error = %e, "sweep: could not close an expired order; next turn");
        }
    }
}

/// What [`settle_unpaid`] came to.
#[derive(Debug)]
pub enum Settled {
    /// WeChat says it was paid: the payment is recorded; the order as recorded.
    Paid(crate::domain::Order),
    /// Not paid (or nothing to ask) and not expired: left open.
    Open,
    /// Expired (or within the margin asked for) and not paid, or found cancelled at WeChat
    /// (a fund_type=1 order's component order; a direct order's component order, or its
    /// WeChat Pay order closed): closed, its stock given back, and its close at WeChat
    /// queued — or, when it was closed or paid meanwhile, the order as it is now.
    Closed(crate::domain::Order),
    /// WeChat did not say whether it was paid (no answer, or one nothing may be decided on):
    /// nothing changed. An expired order (`expired`: or one within the margin) is not closed,
    /// since it may have been paid.
    Unanswered { error: ApiError, expired: bool },
}

/// The answer to a caller whose order was left as it was because WeChat did not say whether
/// it was paid ([`Settled::Unanswered`], or the same question asked elsewhere): WeChat Pay
/// unavailable is 503 `ORDER_STATUS_UNKNOWN` with `message` (what was not done; retry
/// shortly); any other refusal (a signed answer contradicting the order, …) is kept as it is.
pub fn status_unknown(error: ApiError, message: String) -> ApiError {
    if error.status == http::StatusCode::SERVICE_UNAVAILABLE {
        ApiError::unavailable("ORDER_STATUS_UNKNOWN", message)
    } else {
        error
    }
}

/// Settles an unpaid order as the sweep does: one WeChat holds to pay (PREPAID) is asked
/// whether it was paid ([`ask_wechat_if_paid`](super::query_order::ask_wechat_if_paid)) and
/// a payment recorded; one expired (`expires_at_ms` ≤ `now`) and not paid is closed
/// ([`close_and_release`]). One not expired is asked what WeChat holds
/// ([`what_wechat_holds`](super::query_order::what_wechat_holds), as `queryOrder` asks), and
/// closed too when WeChat holds it cancelled: a fund_type=1 order's component order, a direct
/// order's WeChat Pay order `CLOSED`, or a direct order's component order cancelled in
/// WeChat's order centre (read only when WeChat Pay reads it unpaid, one `shop/order/get`) —
/// its WeChat Pay order, still open, closed by the close task (`pay/closeorder`) so it can no
/// longer be paid. Also used by `unifiedOrder` for a repeated or resumed key whose
/// order expired before the sweep came to it, or has less than `margin_ms` left (closed the
/// same way: too near its expiry to be paid — the sweep's margin is 0), and for a resumed
/// key's secondary-merchant order before its payment parameters are asked for. `Err` only when
/// the close failed (the store).
pub async fn settle_unpaid(
    app: &App,
    order: crate::domain::Order,
    now: i64,
    margin_ms: i64,
) -> Result<Settled, ApiError> {
    let expired = order.expires_at_ms <= now.saturating_add(margin_ms);
    if order.status == OrderStatus::Prepaid {
        // Expired (or within the margin), it is closed below unless paid: only the payment
        // is asked about then, not a direct order's component order.
        let asked = if expired {
            super::query_order::ask_wechat_if_paid(app, &order).await
        } else {
            super::query_order::what_wechat_holds(app, &order).await
        };
        match asked {
            Ok(Some(updated)) if updated.status.is_paid() => return Ok(Settled::Paid(updated)),
            // Cancelled or closed at WeChat (its push lost): closed there and then, stock
            // back (see `what_wechat_holds`).
            Ok(Some(updated)) if updated.status == OrderStatus::Closed => {
                return Ok(Settled::Closed(updated))
            }
            Ok(_) => {}
            Err(error) => return Ok(Settled::Unanswered { error, expired }),
        }
    }
    if !expired {
        return Ok(Settled::Open);
    }
    let reason = if order.expires_at_ms <= now {
        EXPIRED_UNPAID
    } else {
        TOO_NEAR_EXPIRY
    };
    close_and_release(app, &order.out_trade_no, reason)
        .await
        .map(Settled::Closed)
}

/// The close reason of an order closed unpaid at its expiry.
pub const EXPIRED_UNPAID: &str = "expired unpaid";
/// The close reason of an order closed unpaid with less left than a payment needs
/// ([`settle_unpaid`]'s margin): to WeChat's trading component a payment timeout, as
/// [`EXPIRED_UNPAID`] is.
pub const TOO_NEAR_EXPIRY: &str = "too near its expiry to pay";

/// Performs one task against WeChat. Each is idempotent there (or made so here), because a
/// lease can run out mid-call and another worker may repeat it.
pub async fn run_task(app: &App, task: &Task) -> Result<(), TaskError> {
    match task {
        Task::OrderPay { out_trade_no } => {
            super::shop_orders::sync_payment(app, out_trade_no).await
        }
        Task::DeliverySend { out_trade_no } => {
            super::shop_orders::sync_delivery(app, out_trade_no).await
        }
        Task::DeliveryRecieve { out_trade_no } => {
            super::shop_orders::sync_receipt(app, out_trade_no).await
        }
        Task::AfterSaleSync { aftersale_id } => {
            super::aftersale_sync::sync_to_wechat(app, aftersale_id).await
        }
        Task::Refund { aftersale_id } => {
            super::aftersale_sync::issue_refund(app, aftersale_id).await
        }
        Task::OrderClose { out_trade_no } => close_at_wechat(app, out_trade_no).await,
        Task::StockBack {
            aftersale_id,
            lines,
        } => super::stock_back::put_back(app, aftersale_id, lines).await,
        Task::StockMirror { product_id, .. } => {
            super::stock_mirror::send_now(app, product_id).await
        }
        Task::CategoryVerdict {
            audit_id,
            third_cat_id,
            approved,
            reject_reason,
        } => {
            super::catalog_sync::category_verdict(
                app,
                audit_id,
                *third_cat_id,
                *approved,
                reject_reason,
            )
            .await
        }
        Task::SubmitWaiting {
            product_id,
            approval,
        } => super::catalog_sync::submit_waiting(app, product_id, approval.as_deref()).await,
        Task::Custom { name, .. } => Err(TaskError::Permanent(format!(
            "no runner for custom task `{name}`"
        ))),
    }
}

/// `pay/closeorder` (and the component order) for an order we closed. If WeChat says it was
/// paid meanwhile, the payment is recorded: the money moved, so the order is paid. Whatever
/// WeChat was asked to create is closed by our number, whether or not its answer reached us
/// ([`crate::domain::SentToWechat`]); one WeChat never made is closed already
/// ([`absent_at_wechat`]).
async fn close_at_wechat(app: &App, no: &OutTradeNo) -> Result<(), TaskError> {
    let order = super::shop_orders::load(app, no).await?;
    let at_wechat = order.at_wechat();
    if order.fund_type == crate::domain::FundType::Direct && at_wechat.pay_order {
        super::pay_orders::close(app, &order).await?;
    }
    if !at_wechat.component_order {
        return Ok(());
    }
    // `pay/closeorder` may have found the order paid and recorded it: the component order
    // of a paid order must not be cancelled, so this reads the order again.
    let order = super::shop_orders::load(app, no).await?;
    if order.status == OrderStatus::Closed {
        super::shop_orders::sync_cancel(app, &order).await?;
    }
    Ok(())
}

/// How long after an order is made a create call for it may still land at WeChat: the calls
/// are made within unifiedOrder's run (28 s at most), but one whose answer we gave up on may be
/// processed later. WeChat Pay also asks for no `closeorder` within 5 minutes of creating.
pub const CREATE_SETTLE_MS: i64 = 5 * 60_000;

/// WeChat says it holds no order under our number (`what`: the API's name for it). For an
/// order it answered us an id for, or one made longer than [`CREATE_SETTLE_MS`] ago, that is
/// final: nothing there to close or sync. An order we hold no id for may still be on its way
/// there (its create call timed out on our side only): asked again once it has settled, so a
/// create that lands late is still closed.
pub(super) fn absent_at_wechat(
    app: &App,
    order: &crate::domain::Order,
    id_known: bool,
    what: &str,
) -> Result<(), TaskError> {
    let settles_at = order.created_at_ms.saturating_add(CREATE_SETTLE_MS);
    let now = app.clock.now_ms();
    if id_known || now >= settles_at {
        tracing::info!(out_trade_no = %order.out_trade_no, what, "WeChat holds no such order: nothing to close or sync there");
        return Ok(());
    }
    Err(TaskError::RetryAfter(
        format!("WeChat holds no {what} under our number yet; asking again once a late create would have landed"),
        settles_at - now,
    ))
}

#[derive(Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
enum AdminAction {
    /// Ship a paid order (`delivery_id` from `companies`, or `OTHERS`), or correct the
    /// waybill of one whose shipment WeChat has not accepted yet.
    Ship {
        out_trade_no: String,
        delivery_id: String,
        waybill_id: String,
    },
    /// Courier companies the trading component knows.
    Companies,
    /// Queue `shop/order/pay` again for a paid order.
    Resync {
        out_trade_no: String,
    },
    /// Run due outbox entries now.
    Drain,
    /// Sweep unpaid orders now.
    Sweep,
    /// Ask WeChat Pay now about refunds whose notification has not come after the grace
    /// period, as the schedule does.
    SweepRefunds,
    DeadLetters {
        #[serde(default)]
        cursor: Option<String>,
    },
    Replay {
        id: String,
    },
    /// Compare a day's WeChat Pay bills (payments and refunds) with stored orders and
    /// refunds, both ways where cheap ([`super::reconcile`]); in fund_type 1 mode also the
    /// day's funds flows, from flow `funds_from` (default 0), as `funds`
    /// ([`super::funds_reconcile`]) — answered even when the bills fail (then 200 with
    /// `bills_error: {status, code, message, …}`, the error the bills alone would have
    /// answered, in place of the bills' fields; a funds failure is the answer's error, as
    /// before).
    Reconcile {
        bill_date: String,
        #[serde(default)]
        funds_from: Option<usize>,
    },
    /// Recorded events, newest first: one `source` paged with `cursor`, or (no `source`) the
    /// newest of every source in [`EVENT_SOURCES`] together.
    Events {
        #[serde(default)]
        source: Option<String>,
        #[serde(default)]
        cursor: Option<String>,
        #[serde(default)]
        limit: Option<usize>,
    },
    /// Block a user (`login` and `unifiedOrder` refuse them; see `user_blocks`).
    BlockUser {
        #[serde(default)]
        openid: String,
        #[serde(default)]
        reason: String,
    },
    /// Lift a user's block.
    UnblockUser {
        #[serde(default)]
        openid: String,
    },
    /// The blocked users, newest block first.
    BlockedUsers {
        #[serde(default)]
        cursor: Option<String>,
        #[serde(default)]
        limit: Option<usize>,
    },
}

/// The sources events are recorded under: `push` (every message-push event as received —
/// brand, category and scene audit verdicts among them) and the evidence kept for a person.
pub const EVENT_SOURCES: [&str; 24] = [
    "push",
    "double_payment",
    "payment_mismatch",
    "refund_mismatch",
    "refund_abnormal",
    super::pay_callback::REFUND_CLOSED_EVENTS,
    "refund_settled_by_sweep",
    "refund_superseded",
    super::pay_callback::REFUND_BY_HAND_EVENTS,
    "withdrawal_conflict",
    "paid_after_close_oversold",
    "order_pay_refused",
    "order_confirm_not_applied",
    super::audit_callback::ORDER_EVENT_MISMATCH_EVENTS,
    super::aftersale_sync::WECHAT_AFTERSALE_EVENTS,
    super::reconcile::BILL_MISMATCH_EVENTS,
    super::funds_reconcile::FUNDS_MISMATCH_EVENTS,
    super::shop_orders::COMPONENT_ORDER_MISSING_EVENTS,
    super::stock_back::STOCK_BACK_EVENTS,
    super::platform_delisting::PLATFORM_DELISTING_EVENTS,
    super::user_blocks::USER_BLOCK_EVENTS,
    super::catalog_sync::QUALIFICATION_AUDIT_EVENTS,
    super::catalog_sync::QUALIFICATION_VERDICT_EVENTS,
    super::stock_mirror::PRODUCT_LOST_EVENTS,
];

/// `events`: one source is a page of the store's index of that source (by time received);
/// the sources together have no index of their own, so without `source` the newest `limit`
/// of each are merged and no cursor is offered — page by source.
async fn list_events(
    app: &App,
    source: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
) -> Result<serde_json::Value, ApiError> {
    let limit = limit.unwrap_or(50).clamp(1, 100);
    if let Some(source) = source {
        // A source nothing writes reads as no events: a misspelt one (`refunds_closed`)
        // answered 200 with an empty page, as if nothing needed a person.
        if !EVENT_SOURCES.contains(&source.as_str()) {
            return Err(ApiError::bad_request(
                "BAD_SOURCE",
                format!(
                    "no events are kept under that `source`: give one of {}, or leave it out \
                     for the newest of every source",
                    EVENT_SOURCES.join(", ")
                ),
            ));
        }
        let (events, next) = repo::events_of(app.store.as_ref(), &source, limit, cursor)
            .await
            .map_err(|e| match e {
                crate::store::StoreError::BadCursor => ApiError::bad_request(
                    "BAD_CURSOR",
                    "`cursor` must be a `next` this action answered for the same source",
                ),
                other => other.into(),
            })?;
        let views: Vec<_> = events.iter().map(|e| event_view(app, e)).collect();
        return Ok(serde_json::json!({ "events": views, "next": next }));
    }
    if cursor.is_some() {
        return Err(ApiError::bad_request(
            "SOURCE_REQUIRED",
            format!(
                "a `cursor` pages one source: give `source` (one of {})",
                EVENT_SOURCES.join(", ")
            ),
        ));
    }
    let mut all = Vec::new();
    for source in EVENT_SOURCES {
        let (events, _) = repo::events_of(app.store.as_ref(), source, limit, None).await?;
        all.extend(events);
    }
    all.sort_by_key(|e| std::cmp::Reverse(e.received_at_ms));
    all.truncate(limit);
    let views: Vec<_> = all.iter().map(|e| event_view(app, e)).collect();
    Ok(serde_json::json!({ "events": views, "next": null, "sources": EVENT_SOURCES }))
}

/// An event as the merchant reads it: a push decrypted (safe mode) and parsed, whatever its
/// wire format; a payment notification kept as evidence by its fields; other evidence as the
/// JSON it was kept as.
fn event_view(app: &App, e: &repo::EventRecord) -> serde_json::Value {
    let mut v = serde_json::json!({
        "source": e.source, "key": e.key, "received_at": e.received_at_ms,
    });
    if e.source == "push" {
        match crate::push::decode_stored(e.body.as_bytes(), &app.push) {
            Ok(m) => {
                v["event"] = serde_json::json!(m.event);
                v["body"] = serde_json::Value::Object(m.raw);
            }
            Err(err) => {
                v["body"] = serde_json::Value::String(e.body.clone());
                v["unreadable"] = serde_json::Value::String(err.to_string());
            }
        }
    } else if e.body.trim_start().starts_with('<') {
        // A WeChat Pay notification kept as evidence (signed XML): its fields.
        v["body"] = match crate::pay::xml::decode(e.body.as_bytes()) {
            Ok(fields) => serde_json::json!(fields),
            Err(_) => serde_json::Value::String(e.body.clone()),
        };
    } else {
        v["body"] = serde_json::from_str(&e.body)
            .unwrap_or_else(|_| serde_json::Value::String(e.body.clone()));
    }
    v
}

pub async fn handle(app: &App, req: Request) -> Result<Response, ApiError> {
    let action: AdminAction = parse_json(&req)?;
    let now = app.clock.now_ms();
    match action {
        AdminAction::Ship {
            out_trade_no,
            delivery_id,
            waybill_id,
        } => {
            let no = OutTradeNo::parse(out_trade_no)
                .map_err(|e| ApiError::bad_request("BAD_OUT_TRADE_NO", e.to_string()))?;
            if delivery_id.trim().is_empty()
                || waybill_id.trim().is_empty()
                || delivery_id.len() > 64
                || waybill_id.len() > 64
            {
                return Err(ApiError::bad_request(
                    "BAD_DELIVERY",
                    "delivery_id and waybill_id are required (≤64 characters)",
                ));
            }
            let order = ship(
                app,
                &no,
                Delivery {
                    delivery_id,
                    waybill_id,
                },
            )
            .await?;
            Ok(json(
                &serde_json::json!({ "order": super::query_order::view(&order) }),
            ))
        }
        AdminAction::Companies => {
            let companies = super::shop_orders::companies(app).await?;
            Ok(json(&serde_json::json!({ "companies": companies })))
        }
        AdminAction::Resync { out_trade_no } => {
            let no = OutTradeNo::parse(out_trade_no)
                .map_err(|e| ApiError::bad_request("BAD_OUT_TRADE_NO", e.to_string()))?;
            let order = repo::get_order(app.store.as_ref(), &no)
                .await?
                .ok_or_else(|| ApiError::not_found("ORDER_NOT_FOUND", format!("no order {no}")))?;
            if !order.value.status.is_paid() {
                return Err(ApiError::conflict(
                    "ORDER_NOT_PAID",
                    "only paid orders are synced",
                ));
            }
            let entry = OutboxEntry::new(Task::OrderPay { out_trade_no: no }, now);
            let id = entry.id.clone();
            outbox::enqueue(app.store.as_ref(), &entry).await?;
            Ok(json(&serde_json::json!({ "queued": id })))
        }
        AdminAction::Drain => Ok(json(&drain(app, 1000).await?)),
        AdminAction::Sweep => {
            let (report, finished) = sweep_unpaid(app, Deadline::after(ADMIN_SWEEP_BUDGET)).await?;
            let mut body = serde_json::to_value(report).unwrap_or_default();
            body["finished"] = finished.into();
            Ok(json(&body))
        }
        AdminAction::SweepRefunds => {
            let (report, finished) =
                super::aftersale_sync::sweep_refunds(app, Deadline::after(ADMIN_SWEEP_BUDGET))
                    .await?;
            let mut body = serde_json::to_value(report).unwrap_or_default();
            body["finished"] = finished.into();
            Ok(json(&body))
        }
        AdminAction::DeadLetters { cursor } => {
            let (entries, next) = outbox::list_dead(app.store.as_ref(), 50, cursor).await?;
            Ok(json(
                &serde_json::json!({ "dead_letters": entries, "next": next }),
            ))
        }
        AdminAction::Replay { id } => {
            if outbox::replay_dead(app.store.as_ref(), &id, now).await? {
                Ok(json(&serde_json::json!({ "replayed": id })))
            } else {
                Err(ApiError::not_found(
                    "NO_SUCH_DEAD_LETTER",
                    format!("no dead letter {id}"),
                ))
            }
        }
        AdminAction::Reconcile {
            bill_date,
            funds_from,
        } => {
            let deadline = Deadline::after(ADMIN_SWEEP_BUDGET);
            let unfinished = || {
                ApiError::unavailable(
                    "RECONCILE_UNFINISHED",
                    "the bills (and, in fund_type 1 mode, the funds flows) did not fit in this \
                     request's time; ask again",
                )
            };
            let funds_mode = app.config.fund_type == crate::domain::FundType::SecondaryMerchant;
            let mut body = match super::reconcile::reconcile(app, &bill_date, deadline).await {
                Ok(Some(found)) => serde_json::to_value(&found).unwrap_or_default(),
                Ok(None) => return Err(unfinished()),
                // A fund_type 1 shop's money is in its funds account, not the bills: the funds
                // section is answered whatever the bills did, their failure beside it.
                Err(e) if funds_mode && e.code != "BAD_BILL_DATE" => {
                    tracing::warn!(bill_date = %bill_date, code = e.code, error = %e.message, "the bills could not be reconciled; the funds flows are answered anyway");
                    let mut failed = serde_json::Map::new();
                    failed.insert("status".into(), e.status.as_u16().into());
                    failed.insert("code".into(), e.code.into());
                    failed.insert("message".into(), e.message.into());
                    failed.extend(e.extra);
                    serde_json::json!({ "bill_date": bill_date, "bills_error": failed })
                }
                Err(e) => return Err(e),
            };
            match super::funds_reconcile::for_admin(app, &bill_date, funds_from, deadline).await? {
                Some(Some(funds)) => {
                    body["funds"] = serde_json::to_value(&funds).unwrap_or_default()
                }
                Some(None) => return Err(unfinished()),
                None => {}
            }
            Ok(json(&body))
        }
        AdminAction::Events {
            source,
            cursor,
            limit,
        } => Ok(json(&list_events(app, source, cursor, limit).await?)),
        AdminAction::BlockUser { openid, reason } => Ok(json(
            &super::user_blocks::block(app, &req, openid, reason).await?,
        )),
        AdminAction::UnblockUser { openid } => {
            Ok(json(&super::user_blocks::unblock(app, &req, openid).await?))
        }
        AdminAction::BlockedUsers { cursor, limit } => {
            Ok(json(&super::user_blocks::list(app, cursor, limit).await?))
        }
    }
}

/// Ships a paid order, or corrects the waybill of a shipped one that WeChat has not accepted
/// yet. For an order in the trading component the courier must be one WeChat knows
/// (`shop/delivery/get_company_list`, or `OTHERS`), checked before anything changes:
/// `delivery/send` refuses any other id, and WeChat does not take a parcel twice.
///
/// A correction is allowed while the order's `shop/delivery/send` task is still queued or
/// dead-lettered (WeChat refused it, or has not been reached): the waybill is replaced and
/// that same task re-queued, due now, in one write — never a second send beside it. Once
/// the task has succeeded it is gone, and the shipment stands. An order whose receipt the user
/// confirmed meanwhile is corrected the same way (its receipt sync, if dead-lettered waiting
/// for the shipment, queued again with the send). A send that was tried already
/// may have landed unheard (its answer lost): WeChat's order is read back first, and a
/// shipment it holds under another waybill refuses the correction (409, naming it), so our
/// order keeps showing the parcel WeChat's order centre shows.
///
/// An order every item of which was refunded through after-sales while something (the
/// freight) is left to refund is still PAID, but a parcel would hold nothing: its shipment is
/// refused (409 `NOTHING_TO_SHIP`), nothing stored or sent.
async fn ship(
    app: &App,
    no: &OutTradeNo,
    delivery: Delivery,
) -> Result<crate::domain::Order, ApiError> {
    let order = repo::get_order(app.store.as_ref(), no)
        .await?
        .ok_or_else(|| ApiError::not_found("ORDER_NOT_FOUND", format!("no order {no}")))?;
    // By what was asked of WeChat, not only the id it answered: a component order whose
    // `shop/order/add` answer was lost is shipped there too (its id learnt by our number).
    if order.value.at_wechat().component_order {
        super::shop_orders::check_delivery_id(app, &delivery.delivery_id).await?;
    }
    let subject = Task::DeliverySend {
        out_trade_no: no.clone(),
    }
    .subject();
    let (order, corrected) = with_retries(app, || async {
        let current = repo::get_order(app.store.as_ref(), no)
            .await?
            .ok_or_else(|| ApiError::not_found("ORDER_NOT_FOUND", format!("no order {no}")))?;
        let now = app.clock.now_ms();
        let mut next = current.value.clone();
        let refused = match next.ship(delivery.clone(), now) {
            Ok(Change::Unchanged) => return Ok(Attempt::Done((next, false))),
            Ok(Change::Changed) => {
                // Every item refunded through after-sales, the freight not: still PAID, but a
                // parcel would hold nothing. (A refund committed after this read changes the
                // order, so this write conflicts and the check runs again.)
                let contents =
                    super::shop_orders::parcel_contents(app.store.as_ref(), &current.value).await?;
                if contents.is_empty() {
                    return Err(ApiError::conflict(
                        "NOTHING_TO_SHIP",
                        super::shop_orders::nothing_to_ship(&current.value),
                    ));
                }
                let mut batch = Batch::new();
                batch.update_order(&current, &next);
                if next.at_wechat().component_order {
                    batch.enqueue(OutboxEntry::new(
                        Task::DeliverySend {
                            out_trade_no: no.clone(),
                        },
                        now,
                    ));
                }
                return Ok(Attempt::Commit(batch, (next, false)));
            }
            Err(e) => e,
        };
        // Shipped already, with another waybill: a correction, if WeChat has not taken the
        // shipment yet (its send task still queued or dead).
        let (sends, receipts): (Vec<_>, Vec<_>) =
            outbox::entries_for(app.store.as_ref(), &subject, 20)
                .await?
                .into_iter()
                .filter(|c| {
                    matches!(
                        c.entry.task,
                        Task::DeliverySend { .. } | Task::DeliveryRecieve { .. }
                    )
                })
                .partition(|c| matches!(c.entry.task, Task::DeliverySend { .. }));
        if current.value.delivery.is_none() || sends.is_empty() {
            let why = match &current.value.delivery {
                // Everything paid went back (an after-sale, or a refund made by hand in the
                // merchant platform): no goods are owed.
                None if current.value.status == crate::domain::OrderStatus::Refunded => format!(
                    "{refused}: the order was refunded in full ({} fen went back to the user), \
                     so there is nothing to ship",
                    current.value.refunded.get()
                ),
                Some(d) if current.value.at_wechat().component_order => format!(
                    "{refused}: WeChat accepted the shipment with {} {} already, and a shipment \
                     it accepted cannot be changed",
                    d.delivery_id, d.waybill_id
                ),
                _ => refused.to_string(),
            };
            return Err(ApiError::conflict("ORDER_NOT_SHIPPABLE", why));
        }
        let change = next
            .correct_shipment(delivery.clone(), now)
            .map_err(|e| ApiError::conflict("ORDER_NOT_SHIPPABLE", e.to_string()))?;
        if change == Change::Unchanged {
            return Ok(Attempt::Done((next, false)));
        }
        // A send that was tried may have landed although its answer never reached us (a
        // timeout, a lost reply, the function cut off): it then waits for its retry, or lies
        // dead, while WeChat holds the old waybill, which it will not replace. Corrected here
        // regardless, our order (the mini program) showed one parcel and WeChat's order centre
        // another, for good, and the re-sent send was dead-lettered. So WeChat is asked first.
        if current.value.at_wechat().component_order && sends.iter().any(|s| s.entry.attempts > 0) {
            if let Some(held) = super::shop_orders::shipment_at_wechat(app, &current.value).await? {
                if !held.contains(&delivery) {
                    return Err(ApiError::conflict(
                        "ORDER_NOT_SHIPPABLE",
                        taken_unheard(&current.value, &held),
                    ));
                }
            }
        }
        let mut batch = Batch::new();
        batch.update_order(&current, &next);
        for send in &sends {
            batch.push(outbox::requeue_write(send, now)?);
        }
        // A RECEIVED order's receipt sync waited for the shipment WeChat refused, and may have
        // run out of attempts: queued again too, to follow the corrected send (one still
        // pending retries by itself).
        for receipt in receipts.iter().filter(|c| c.entry.is_dead()) {
            batch.push(outbox::requeue_write(receipt, now)?);
        }
        Ok(Attempt::Commit(batch, (next, true)))
    })
    .await?;
    if corrected {
        tracing::warn!(out_trade_no = %no, "shipment corrected before WeChat accepted it; delivery/send queued again");
    } else {
        tracing::info!(out_trade_no = %no, "order shipped");
    }
    Ok(order)
}

/// Why a correction of `order`'s shipment is refused when WeChat's order holds `held` (read
/// back: [`super::shop_orders::shipment_at_wechat`]) though its `delivery/send` answer never
/// reached us: what WeChat shows the user, and that it stays.
fn taken_unheard(order: &crate::domain::Order, held: &[Delivery]) -> String {
    let held = if held.is_empty() {
        "a shipment".to_owned()
    } else {
        held.iter()
            .map(|d| format!("{} {}", d.delivery_id, d.waybill_id))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let ours = order
        .delivery
        .as_ref()
        .map(|d| format!("{} {}", d.delivery_id, d.waybill_id))
        .unwrap_or_default();
    format!(
        "WeChat accepted the shipment of order {} as {held} already (its answer to the \
         delivery/send of {ours} had not reached us yet), and a shipment it accepted cannot be \
         changed: the order keeps it, as WeChat's order centre shows it to the user",
        order.out_trade_no
    )
}

#[cfg(all(test, feature = "sqlite"))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::metrics::{Metrics, OUTBOX_DEAD_LETTERS};
    use crate::store::sqlite::SqliteStore;
    use std::sync::Arc;

    fn app() -> App {
        App::for_tests(Arc::new(SqliteStore::memory().unwrap()))
    }

    /// A store that refuses every call (a table denied, throttled for good).
    struct Denied;

    #[async_trait::async_trait]
    impl crate::store::Store for Denied {
        async fn get(
            &self,
            _: crate::store::Kind,
            _: &str,
        ) -> Result<Option<crate::store::Record>, crate::store::StoreError> {
            Err(crate::store::StoreError::Backend(
                "AccessDenied (injected)".into(),
            ))
        }
        async fn write(&self, _: Vec<crate::store::Write>) -> Result<(), crate::store::StoreError> {
            Err(crate::store::StoreError::Backend(
                "AccessDenied (injected)".into(),
            ))
        }
        async fn query(
            &self,
            _: crate::store::Query,
        ) -> Result<crate::store::Page, crate::store::StoreError> {
            Err(crate::store::StoreError::Backend(
                "AccessDenied (injected)".into(),
            ))
        }
        async fn migrate_index(
            &self,
            _: &[(crate::store::Kind, crate::store::Index)],
            _: i64,
            _: Deadline,
        ) -> Result<(crate::store::IndexMigration, bool), crate::store::StoreError> {
            Err(crate::store::StoreError::Backend(
                "AccessDenied (injected)".into(),
            ))
        }
        fn backend(&self) -> &'static str {
            "denied"
        }
    }

    /// GIVEN a store that refuses every call WHEN the schedule runs THEN the run still answers
    /// (each phase failed, logged, listed in `failed`) and every failed phase is counted as
    /// `SchedulePhaseFailures` — the invocation succeeds, so Lambda's `Errors` alarm never
    /// sees it and this count is what pages.
    #[tokio::test]
    async fn failed_schedule_phases_are_counted() {
        let mut app = app();
        app.store = Arc::new(Denied);
        let (metrics, captured) = Metrics::capture("wxshop-OrderSyncFunction-X");
        app.metrics = metrics;
        let report = on_schedule(&app, Deadline::after(Duration::from_secs(20))).await;
        let failed = report["failed"].as_array().cloned().unwrap_or_default();
        assert!(!failed.is_empty(), "{report}");
        let counted = captured.total(crate::metrics::SCHEDULE_PHASE_FAILURES);
        assert_eq!(counted, failed.len() as u64, "{report}");
        assert!(
            failed.contains(&serde_json::json!("legacy_index")),
            "{report}"
        );
    }

    /// SQLite's indexes were never sharded: the legacy-index phase has nothing to do and says
    /// it is done.
    #[tokio::test]
    async fn the_legacy_index_phase_is_a_no_op_on_sqlite() {
        let app = app();
        let report = on_schedule(&app, Deadline::after(Duration::from_secs(20))).await;
        assert_eq!(report["legacy_index"]["migrated"], true, "{report}");
        assert_eq!(report["legacy_index"]["found"], 0, "{report}");
        let failed = report["failed"].as_array().cloned().unwrap_or_default();
        assert!(
            !failed.contains(&serde_json::json!("legacy_index")),
            "{report}"
        );
    }

    /// A status index that lags, as DynamoDB's GSIs do: it still lists `ghosts` — entries
    /// another worker has leased or finished — whose every claim then loses (their record is
    /// gone or at another version).
    struct LaggingIndex {
        inner: SqliteStore,
        ghosts: std::collections::HashSet<String>,
    }

    #[async_trait::async_trait]
    impl crate::store::Store for LaggingIndex {
        async fn get(
            &self,
            kind: crate::store::Kind,
            id: &str,
        ) -> Result<Option<crate::store::Record>, crate::store::StoreError> {
            if kind == crate::store::Kind::Outbox && self.ghosts.contains(id) {
                return Ok(None);
            }
            self.inner.get(kind, id).await
        }
        async fn write(
            &self,
            writes: Vec<crate::store::Write>,
        ) -> Result<(), crate::store::StoreError> {
            for (index, w) in writes.iter().enumerate() {
                if let crate::store::Write::Put { record, .. } = w {
                    if record.kind == crate::store::Kind::Outbox && self.ghosts.contains(&record.id)
                    {
                        return Err(crate::store::StoreError::Conflict { index });
                    }
                }
            }
            self.inner.write(writes).await
        }
        async fn query(
            &self,
            query: crate::store::Query,
        ) -> Result<crate::store::Page, crate::store::StoreError> {
            self.inner.query(query).await
        }
        fn backend(&self) -> &'static str {
            "lagging"
        }
    }

    /// GIVEN the status index still lists 60 entries other workers already took (three pages
    /// of the drain's 25), before 10 that are really due WHEN the schedule drains THEN it
    /// reads past the pages whose claims all lost and runs the 10. It used to end the drain
    /// at the first such page, leaving due entries for a later run that met the same pages.
    #[tokio::test]
    async fn a_drain_reads_past_entries_a_lagging_index_still_lists() {
        let mut app = app();
        let inner = SqliteStore::memory().unwrap();
        let now = app.clock.now_ms();
        let custom = || Task::Custom {
            name: "unknown".into(),
            payload: serde_json::Value::Null,
        };
        let mut ghosts = std::collections::HashSet::new();
        for i in 0..60 {
            let entry = OutboxEntry::new(custom(), now - 60_000 + i);
            outbox::enqueue(&inner, &entry).await.unwrap();
            ghosts.insert(entry.id);
        }
        for i in 0..10 {
            outbox::enqueue(&inner, &OutboxEntry::new(custom(), now - 1_000 + i))
                .await
                .unwrap();
        }
        app.store = Arc::new(LaggingIndex { inner, ghosts });

        let report = drain(&app, 500).await.unwrap();

        // Every real entry ran (a custom task with no runner is dead-lettered at once).
        assert_eq!(report.dead, 10, "{report:?}");
        let (dead, _) = outbox::list_dead(app.store.as_ref(), 50, None)
            .await
            .unwrap();
        assert_eq!(dead.len(), 10);
    }

    /// GIVEN an outbox entry WeChat can never carry out WHEN orderSync runs it THEN it is
    /// dead-lettered, acknowledged (no error for the stream) and counted as one
    /// `OutboxDeadLetters` EMF line — the only thing an alarm can see of it.
    #[tokio::test]
    async fn a_dead_letter_is_counted_as_a_metric() {
        let mut app = app();
        let (metrics, captured) = Metrics::capture("wxshop-OrderSyncFunction-X");
        app.metrics = metrics;
        let now = app.clock.now_ms();
        let entry = OutboxEntry::new(
            Task::Custom {
                name: "unknown".into(),
                payload: serde_json::Value::Null,
            },
            now,
        );
        outbox::enqueue(app.store.as_ref(), &entry).await.unwrap();

        let budget = Deadline::after(Duration::from_secs(30));
        let failed = on_outbox_records(&app, vec![entry.id.clone()], budget).await;

        assert!(failed.is_empty(), "a dead letter is settled: {failed:?}");
        let (dead, _) = outbox::list_dead(app.store.as_ref(), 10, None)
            .await
            .unwrap();
        assert_eq!(dead.len(), 1);
        let lines = captured.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(v["_aws"]["CloudWatchMetrics"][0]["Namespace"], "wxshop");
        assert_eq!(
            v["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Name"],
            OUTBOX_DEAD_LETTERS
        );
        assert_eq!(v[OUTBOX_DEAD_LETTERS], 1);
        assert_eq!(v["Function"], "wxshop-OrderSyncFunction-X");

        // Running it again finds nothing due (it is dead): nothing more is counted.
        assert!(on_outbox_records(&app, vec![entry.id], budget)
            .await
            .is_empty());
        assert_eq!(captured.lines().len(), 1);
    }

    /// "No such order" from WeChat is final for an order it answered us an id for, or once a
    /// late create would have landed; before that, for one we hold no id for, it is asked
    /// again when the order has settled — a create that timed out on our side only may still
    /// land, and must still be closed.
    #[test]
    fn no_such_order_is_final_only_once_a_late_create_would_have_landed() {
        let app = app();
        let now = app.clock.now_ms();
        let mut order = crate::domain::order::tests::sample_order(100);
        order.created_at_ms = now - 60_000;
        match absent_at_wechat(&app, &order, false, "x") {
            Err(TaskError::RetryAfter(_, ms)) => {
                assert!(
                    (CREATE_SETTLE_MS - 61_000..=CREATE_SETTLE_MS - 60_000).contains(&ms),
                    "{ms}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(
            absent_at_wechat(&app, &order, true, "x").is_ok(),
            "an id WeChat gave us"
        );
        order.created_at_ms = now - CREATE_SETTLE_MS;
        assert!(
            absent_at_wechat(&app, &order, false, "x").is_ok(),
            "settled"
        );
    }
}
