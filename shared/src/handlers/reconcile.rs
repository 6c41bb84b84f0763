//! Reconciliation (对账) of one day's WeChat Pay bills with what we recorded.
//!
//! Why: a notification that never came, a refund made in the merchant platform, a record
//! changed by hand — each leaves WeChat's books and ours apart, and only the bills show it.
//! Four checks, each within one day (China time, the bill's day):
//! * every payment of the SUCCESS bill is a stored, paid order with its amount and transaction;
//! * every refund of the REFUND bill is a refund record of ours (ours or made by hand, which
//!   are recorded too) of the same order, the same amount, and SUCCESS (or still in flight);
//! * the other way: every direct order we recorded paid that day is in the SUCCESS bill. Read
//!   through the status index by creation time (see [`PAID_AFTER_CREATED_MAX_MS`]), never a
//!   scan of every order;
//! * and every refund whose SUCCESS (as WeChat reported it) we recorded that day is in a
//!   REFUND bill: read through the status index by the time we recorded the success
//!   ([`repo::refunds_recorded_successful_between`]), so one recorded late — its notification
//!   lost, found by refundquery days on — is checked by the day it was recorded, each refund
//!   exactly once; it is looked for in the bill of the day WeChat says it succeeded and of
//!   the day it was asked for (see [`refund_bill_days`]). It is missing only once the bill
//!   of every one of those days has been read: while one is not ready (the day is not over
//!   and past 10:00 of the next, or WeChat answers `Bill Creating`) or WeChat fails to give
//!   it for a reason that passes (`SYSTEMERROR`, a timeout, HTTP 5xx — as a day's own bill:
//!   asked for again 5 minutes on, then hourly; it used to fail the whole day on a timeout or
//!   5xx) it is `refunds_awaiting_bill`, not a mismatch, and the schedule checks the day's
//!   refunds again once that bill is given ([`run_daily`]). A bill of a day past the three months
//!   WeChat keeps bills ([`BILLS_KEPT_DAYS`]) is not asked for: named in
//!   `bills_out_of_reach`, the refund judged by its other bills; a refund whose every bill
//!   is past them cannot be checked at all and is `refunds_out_of_reach` — not a mismatch,
//!   no page: nothing is known to be wrong.
//!
//! A day's bills are final from 10:00 China time of the next day. Asked for by hand before
//! (today, say), what they list is checked as usual, but an order or refund of ours they
//! lack is awaiting them (`payments_awaiting_bill`, `refunds_awaiting_bill`, each saying
//! when to ask again), never missing: WeChat has not issued that day's bill yet. A day
//! past WeChat's three months is refused (`BILL_OUT_OF_REACH`) without asking WeChat. By
//! hand, a day whose own SUCCESS or REFUND bill WeChat is still making (`Bill Creating`) is
//! not reconciled: refused 409 `BILL_NOT_READY`, saying when to ask again (WeChat is up; the
//! bill is not made yet); one WeChat fails to give for a reason that passes (`SYSTEMERROR`,
//! a timeout) is 503 `PAYMENT_UNAVAILABLE` (retry shortly) — by hand the whole day or
//! nothing, as a partial answer would read as the day's.
//!
//! The schedule ([`run_daily`]) treats a day's two own bills apart: the SUCCESS bill's half
//! (every payment of it, and our payments the other way) and the REFUND bill's half (every
//! refund of it, and our refunds the other way) share nothing but the day, so a half is
//! checked once its bill is read even while WeChat is still making, or fails to give, the
//! other — which is asked for again later (after `Bill Creating` an hour on; after a failure
//! that passes 5 minutes on the first time, then hourly) and given up on a week after it
//! should have been ready. Their events have distinct keys (`{day}/payment/…`,
//! `{day}/missing/…`, `{day}/unreadable/SUCCESS/…` against `{day}/refund/…`,
//! `{day}/refund_missing/…`, `{day}/unreadable/REFUND/…`), so no half keeps another's. The
//! half checked has its mismatches kept before the bill still to read is noted (kv
//! `reconcile/days_awaiting_bill`, `{"at", "awaits"}`), and the mark moves past the day only
//! after that: a run cut short between redoes the day (nothing kept twice), and the day is
//! `reconciled` only once both halves were checked. A failure that passes includes an outage
//! of WeChat Pay (a timeout, HTTP 5xx): the bill phase does not fail for it at once — nor at
//! every 5-minute run, as it used to — but once WeChat has failed to give a bill so for
//! [`FAILING_ALARM_AFTER_MS`] (6 hours; since when is kept with the day in the kv entries of
//! the days awaiting a bill) every run fails the phase (`BILLS_FAILING`, counted as
//! `SchedulePhaseFailures`, whose alarm pages) until the bill comes, WeChat still asked
//! hourly only; a day whose bill it keeps from us a week is given up on and paged as well.
//!
//! A bill record that cannot be read is a mismatch of its own and every other record is
//! checked; only a bill whose header or summary cannot be read fails the reconciliation
//! (`PAYMENT_REFUSED`, run again once WeChat's bill is right). It is kept with its line —
//! the payer's openid masked to its first 4 and last 2 characters
//! ([`crate::pay::bill::masked_line`]): a person comparing money needs the order and
//! WeChat's transaction number, not who paid — and named by a digest of the line's bytes,
//! not its line number, so the same line found again in a bill WeChat issued anew is kept
//! once and two different lines never share a name.
//!
//! `POST /admin/orderSync {action: "reconcile"}` runs it for a person; the schedule
//! ([`run_daily`]) reconciles yesterday once a day after 10:00 China time, keeps each
//! mismatch as a `bill_mismatch` event and pages (`MoneyNeedsAPerson`) once per new one —
//! and, for a day an own bill of which WeChat does not give (still being made, or a
//! `SYSTEMERROR`), checks the other's half and asks again later, giving up (a
//! `bill_mismatch` `bill_not_issued`, paged, counted as a mismatch) a week after the bill
//! should have been ready. A refusal that will not pass (a bad signature, our configuration,
//! a bill that does not parse) fails the schedule's run as by hand (`PAYMENT_REFUSED`).

use crate::app::App;
use crate::domain::{FundType, Order, OrderStatus, OutRefundNo, OutTradeNo};
use crate::http::ApiError;
use crate::pay::bill::{Bill, BillRow, BillType, UnreadableRow};
use crate::pay::client::PayError;
use crate::store::kv;
use crate::store::repo::{self, RefundRecord, RefundStatus};
use crate::time::{beijing_day_start_ms, Deadline, BEIJING_OFFSET_MS, DAY_MS, HOUR_MS};
use std::collections::{BTreeMap, BTreeSet, HashSet};

/// Event source of a mismatch the schedule found.
pub const BILL_MISMATCH_EVENTS: &str = "bill_mismatch";

/// The kv mark: the last `bill_date` the schedule reconciled.
const MARK: &str = "reconcile/last_bill_date";
const MARK_TTL_SECS: i64 = 90 * 24 * 3600;

/// The kv entry of the days whose refunds wait for a REFUND bill that was not ready: a JSON
/// object `{bill_date: epoch ms to check again from}`, or `{bill_date: {"at", "failing_since"}}`
/// while WeChat fails to give one of those bills for a reason that passes ([`RefundsAwaited`],
/// [`run_daily`]; a version before reads that form as an entry that does not parse). A handful of days at
/// most: a day leaves it once its bills were read, or [`CATCH_UP_DAYS`] after its bill was
/// ready.
const AWAITING: &str = "reconcile/refunds_awaiting_bill";

/// The kv entry of the days the schedule came to reconcile while WeChat did not give their
/// own SUCCESS or REFUND bill (`Bill Creating`, or a failure that passes): a JSON object
/// `{bill_date: epoch ms to ask again from}` when neither bill was read, `{bill_date: {"at":
/// epoch ms, "awaits": "SUCCESS"|"REFUND"}}` when the other's half was checked already
/// ([`AwaitedDay`], [`run_daily`]). A day leaves it once both halves were checked, or given
/// up on [`CATCH_UP_DAYS`] after its bills should have been ready. (A version before the
/// halves were checked apart reads the second form as an entry that does not parse.)
const DAYS_AWAITING: &str = "reconcile/days_awaiting_bill";

/// The refusal ([`reconcile`], 409) of a day whose own SUCCESS or REFUND bill WeChat is still
/// making (`Bill Creating`): nothing of it was checked; ask again later.
const BILL_NOT_READY: &str = "BILL_NOT_READY";

/// How long after WeChat answered `Bill Creating` that bill is asked for again — a day's own
/// bills and another day's REFUND bill alike; and a bill failing again for a reason that
/// passes ([`TRANSIENT_FIRST_RETRY_MS`]). UNVERIFIED how long WeChat takes to make a bill it is
/// still making: an hour is a guess; the schedule runs every 5 minutes.
const BILL_CREATING_RETRY_MS: i64 = HOUR_MS;

/// How long after a day's own bill (or another day's REFUND bill its refunds are looked for
/// in) first failed for a reason that passes — `SYSTEMERROR`, a timeout, HTTP 5xx
/// ([`PayError::is_retryable`]) — the schedule asks for it again: its next run (every 5
/// minutes) or the one after. Failing again, the day is asked for hourly
/// ([`BILL_CREATING_RETRY_MS`]), as a bill still being made: a failure that lasts is not asked
/// about at every run for a week. UNVERIFIED how long WeChat's `SYSTEMERROR` on
/// `downloadbill` lasts.
const TRANSIENT_FIRST_RETRY_MS: i64 = 5 * 60_000;

/// How long WeChat Pay may go on failing to give a bill for a reason that passes (a day's own
/// bill, or another day's REFUND bill its refunds wait for) before the bill phase counts as
/// failed: from then every schedule run fails the phase (`SchedulePhaseFailures`, whose
/// alarm fires after three 5-minute periods in a row) until WeChat gives the bill, answers
/// `Bill Creating`, or the day is given up on — without asking WeChat more often than
/// hourly. Six hourly attempts: a blip passes unseen, an outage that keeps the day's bills
/// from us pages the same day, not a week on.
const FAILING_ALARM_AFTER_MS: i64 = 6 * HOUR_MS;

/// WeChat Pay serves the bills of the last three months only (WECHAT_PAY_V2.md §2.7).
/// UNVERIFIED how it counts them and what it answers for an older day: a day more than this
/// many days before today (China time) — the shortest three calendar months, February to
/// April — is taken as out of reach and never asked for.
const BILLS_KEPT_DAYS: i64 = 89;

/// WeChat makes the bills from 09:00 and says to fetch them after 10:00 China time
/// (WECHAT_PAY_V2.md §2.7).
const BILLS_READY_HOUR: i64 = 10;

/// The longest an order can be paid after it was created: WeChat Pay takes no payment after
/// the order's `time_expire` (our `expires_at_ms`), which config keeps within 2 h of its
/// creation (`ORDER_TTL_SECS` ≤ 7200); an hour more for WeChat's clock against ours. So the
/// orders paid on a day were all created from this long before it until its end.
pub(super) const PAID_AFTER_CREATED_MAX_MS: i64 = 3 * HOUR_MS;

/// One of a day's own bills: the SUCCESS bill, read for the payments' half of the day's
/// reconciliation, or the REFUND bill, for the refunds' half. The schedule checks each half
/// once its bill is read, whether or not WeChat gave the other ([`run_daily`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
enum OwnBill {
    Success,
    Refund,
}

impl OwnBill {
    const BOTH: [OwnBill; 2] = [OwnBill::Success, OwnBill::Refund];

    fn bill_type(self) -> BillType {
        match self {
            OwnBill::Success => BillType::Success,
            OwnBill::Refund => BillType::Refund,
        }
    }

    fn as_str(self) -> &'static str {
        self.bill_type().as_str()
    }
}

/// A day's own bill WeChat did not give now but may later: still making it (`Bill
/// Creating`), or a failure that passes ([`PayError::is_retryable`]: `SYSTEMERROR`, a
/// timeout, HTTP 5xx). A refusal that will not pass (a bad signature, our configuration, a
/// bill that does not parse) is never one: it fails the reconciliation ([`pay_error`]).
struct NotRead {
    bill: OwnBill,
    error: PayError,
}

/// Whether WeChat answered that it is still making the bill (`Bill Creating`).
fn bill_creating(e: &PayError) -> bool {
    matches!(e, PayError::BillUnavailable { msg, .. } if msg.eq_ignore_ascii_case("Bill Creating"))
}

/// What WeChat answered for a bill, for a person: `Bill Creating`, `SYSTEMERROR`, a
/// timeout, …
fn bill_answer(e: &PayError) -> String {
    match e {
        PayError::BillUnavailable { msg, .. } => msg.clone(),
        e => e.to_string(),
    }
}

impl NotRead {
    fn creating(&self) -> bool {
        bill_creating(&self.error)
    }

    /// What WeChat answered, for a person: `Bill Creating`, `SYSTEMERROR`, a timeout, …
    fn answer(&self) -> String {
        bill_answer(&self.error)
    }

    /// The answer to a reconciliation by hand: 409 [`BILL_NOT_READY`] while WeChat is still
    /// making the bill — not a 503: WeChat is up, the bill is not made yet — saying when to
    /// ask again ([`BILL_CREATING_RETRY_MS`]; `ask_again_at`, China time, and
    /// `ask_again_at_ms`); a failure that passes is [`pay_error`]'s 503 (retry shortly).
    fn refusal(self, bill_date: &str, now: i64) -> ApiError {
        if !self.creating() {
            return pay_error(self.error);
        }
        let at = now + BILL_CREATING_RETRY_MS;
        let at_text = crate::time::beijing_datetime(at);
        ApiError::conflict(
            BILL_NOT_READY,
            format!(
                "WeChat Pay is still making the {} bill of {bill_date} (it answered \
                 `Bill Creating`): nothing of that day was checked; ask again after \
                 {at_text} China time. The schedule asks again by itself every hour for \
                 the days it reconciles, and tells a person if the bill has not come a \
                 week after it should have",
                self.bill.as_str()
            ),
        )
        .with("ask_again_at", at_text)
        .with("ask_again_at_ms", at)
    }
}

/// A day noted in [`AWAITING`]: when to check its refunds again (epoch ms), and — when a
/// REFUND bill they wait for was not given for a reason that passes (`SYSTEMERROR`, a
/// timeout, HTTP 5xx) — since when WeChat has failed so (epoch ms).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
enum RefundsAwaited {
    /// A bare number, as every day was noted before failures were told apart.
    At(i64),
    Failing {
        at: i64,
        failing_since: i64,
    },
}

impl RefundsAwaited {
    fn new(at: i64, failing_since: Option<i64>) -> Self {
        match failing_since {
            Some(failing_since) => RefundsAwaited::Failing { at, failing_since },
            None => RefundsAwaited::At(at),
        }
    }

    fn at(self) -> i64 {
        match self {
            RefundsAwaited::At(at) | RefundsAwaited::Failing { at, .. } => at,
        }
    }

    fn failing_since(self) -> Option<i64> {
        match self {
            RefundsAwaited::At(_) => None,
            RefundsAwaited::Failing { failing_since, .. } => Some(failing_since),
        }
    }
}

/// A day noted in [`DAYS_AWAITING`]: when to ask WeChat again (epoch ms), which of its
/// own bills are still to be read, and — while WeChat fails to give one for a reason that
/// passes — since when it has failed so (epoch ms; [`FAILING_ALARM_AFTER_MS`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
enum AwaitedDay {
    /// Both, WeChat not failing: nothing of the day was checked yet. A bare number, as every
    /// day was noted before the halves were checked apart: an entry written then reads the
    /// same.
    Whole(i64),
    /// `awaits`: this one only (the other's half was checked and its mismatches kept);
    /// `None`, both. `failing_since`: WeChat fails to give it (a version before this was
    /// kept ignores it; one before the halves were apart reads this form as an entry that
    /// does not parse).
    Noted {
        at: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        awaits: Option<OwnBill>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        failing_since: Option<i64>,
    },
}

impl AwaitedDay {
    fn new(at: i64, bills: &[OwnBill], failing_since: Option<i64>) -> Self {
        match (bills, failing_since) {
            ([one], _) => AwaitedDay::Noted {
                at,
                awaits: Some(*one),
                failing_since,
            },
            (_, None) => AwaitedDay::Whole(at),
            (_, Some(_)) => AwaitedDay::Noted {
                at,
                awaits: None,
                failing_since,
            },
        }
    }

    fn at(self) -> i64 {
        match self {
            AwaitedDay::Whole(at) | AwaitedDay::Noted { at, .. } => at,
        }
    }

    fn with_at(self, at: i64) -> Self {
        match self {
            AwaitedDay::Whole(_) => AwaitedDay::Whole(at),
            AwaitedDay::Noted {
                awaits,
                failing_since,
                ..
            } => AwaitedDay::Noted {
                at,
                awaits,
                failing_since,
            },
        }
    }

    fn bills(self) -> Vec<OwnBill> {
        match self {
            AwaitedDay::Noted {
                awaits: Some(one), ..
            } => vec![one],
            _ => OwnBill::BOTH.to_vec(),
        }
    }

    fn failing_since(self) -> Option<i64> {
        match self {
            AwaitedDay::Whole(_) => None,
            AwaitedDay::Noted { failing_since, .. } => failing_since,
        }
    }
}

/// A payment that does not match.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PaymentMismatch {
    pub out_trade_no: String,
    pub problem: String,
}

/// A refund of the REFUND bill that does not match.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RefundMismatch {
    pub out_refund_no: Option<String>,
    pub refund_id: Option<String>,
    pub out_trade_no: Option<String>,
    pub problem: String,
}

/// A record line of a bill that could not be read, so was not checked.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct UnreadableBillRow {
    /// `SUCCESS` or `REFUND`: the bill it is a line of.
    pub bill_type: &'static str,
    #[serde(flatten)]
    pub row: UnreadableRow,
}

/// What a reconciliation found. `checked`/`mismatches` are the SUCCESS bill's rows, as
/// before refunds were reconciled.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Reconciliation {
    pub bill_date: String,
    pub checked: usize,
    pub mismatches: Vec<PaymentMismatch>,
    pub refunds_checked: usize,
    pub refund_mismatches: Vec<RefundMismatch>,
    /// Our direct orders paid that day, looked for in the SUCCESS bill.
    pub paid_here_checked: usize,
    pub missing_from_bill: Vec<PaymentMismatch>,
    /// Our refunds recorded successful that day, looked for in the REFUND bill(s).
    pub our_refunds_checked: usize,
    pub refunds_missing_from_bill: Vec<RefundMismatch>,
    /// Bill lines that could not be read (each a mismatch: a person reads it).
    pub unreadable_rows: Vec<UnreadableBillRow>,
    /// Our refunds recorded successful that day that no REFUND bill read lists while the
    /// bill of another day that may list them is not ready yet: not mismatches (yet). The
    /// schedule checks them again once it is; by hand, ask again then.
    pub refunds_awaiting_bill: Vec<RefundMismatch>,
    /// Our direct orders paid that day that the SUCCESS bill does not list while that bill
    /// is not final (asked for by hand before 10:00 China time of the next day: WeChat has
    /// not issued the day's bill yet): not mismatches (yet) — ask again once it is final,
    /// as each one's `problem` says.
    pub payments_awaiting_bill: Vec<PaymentMismatch>,
    /// REFUND bills (`yyyyMMdd`) a refund of that day would be looked for in that are past
    /// the three months WeChat Pay keeps bills: not asked for; the refund is judged by the
    /// other bills, and one none of them lists is missing.
    pub bills_out_of_reach: Vec<String>,
    /// Our refunds recorded successful that day whose every REFUND bill
    /// ([`refund_bill_days`]) is past the three months WeChat Pay keeps bills: no bill that
    /// could list them can be read, so they are not checked — not mismatches (nothing is
    /// known to be wrong), nor waiting (no bill will come).
    pub refunds_out_of_reach: Vec<RefundMismatch>,
    /// When the first bill of `refunds_awaiting_bill` may be ready (epoch ms).
    #[serde(skip)]
    pub recheck_at_ms: Option<i64>,
    /// The REFUND bills (`yyyyMMdd`) a refund of that day was looked for in that WeChat
    /// failed to give for a reason that passes, and what it answered: their refunds are in
    /// `refunds_awaiting_bill`, the schedule's report names them in `transient_failures`.
    #[serde(skip)]
    pub refund_bills_failing: BTreeMap<String, String>,
}

impl Reconciliation {
    pub fn mismatch_count(&self) -> usize {
        self.mismatches.len()
            + self.refund_mismatches.len()
            + self.missing_from_bill.len()
            + self.refunds_missing_from_bill.len()
            + self.unreadable_rows.len()
    }
}

/// 00:00 China time of `bill_date` (`yyyyMMdd`) as epoch ms.
/// From when `bill_date`'s bills are complete: 10:00 China time the next day
/// (WECHAT_PAY_V2.md §2.7). `None` for a date that is not one.
fn bill_ready_at_ms(bill_date: &str) -> Option<i64> {
    beijing_day_start_ms(bill_date).map(|start| start + DAY_MS + BILLS_READY_HOUR * HOUR_MS)
}

/// Whether WeChat Pay still serves `bill_date`'s bills at `now_ms`: not more than
/// [`BILLS_KEPT_DAYS`] before today (China time).
fn bill_in_reach(bill_date: &str, now_ms: i64) -> bool {
    beijing_day_start_ms(bill_date).is_some_and(|d| d >= earliest_bill_day_ms(now_ms))
}

/// The start of the oldest day whose bills WeChat Pay still serves at `now_ms`:
/// [`BILLS_KEPT_DAYS`] before today (China time).
fn earliest_bill_day_ms(now_ms: i64) -> i64 {
    beijing_day_start_ms(&crate::time::beijing_date(now_ms)).unwrap_or(now_ms)
        - BILLS_KEPT_DAYS * DAY_MS
}

/// When the refunds of `bill_date` stop waiting for a bill: a week ([`CATCH_UP_DAYS`]) after
/// its own bills were ready. A refund no bill read lists is missing then, even if the bill
/// of another of its days never came (or is of a day WeChat gave wrong, far ahead).
fn give_up_at_ms(bill_date: &str) -> Option<i64> {
    bill_ready_at_ms(bill_date).map(|ready| ready + CATCH_UP_DAYS * DAY_MS)
}

/// The REFUND bills read in one reconciliation, by day (`yyyyMMdd`), and the days whose
/// REFUND bill is not complete yet, with when to ask again (epoch ms). A day may be in
/// both: a bill downloaded before it was ready lists what it lists, but what it lacks may
/// still come. And the days past the three months WeChat keeps bills: never asked for.
/// A day's REFUND bill WeChat failed to give for a reason that passes is in `not_ready` too
/// (when to ask again) and in `failing` (what WeChat answered).
struct RefundBills {
    read: BTreeMap<String, Bill>,
    not_ready: BTreeMap<String, i64>,
    failing: BTreeMap<String, String>,
    out_of_reach: BTreeSet<String>,
    /// How long after a failure that passes the bill is asked for again: 5 minutes the first
    /// time ([`TRANSIENT_FIRST_RETRY_MS`]), an hour when it failed before
    /// ([`BILL_CREATING_RETRY_MS`]), as a day's own bill.
    failure_retry_ms: i64,
}

impl RefundBills {
    /// No bill read yet; a bill failing for a passing reason is asked for again
    /// `failure_retry_ms` on.
    fn new(failure_retry_ms: i64) -> Self {
        RefundBills {
            read: BTreeMap::new(),
            not_ready: BTreeMap::new(),
            failing: BTreeMap::new(),
            out_of_reach: BTreeSet::new(),
            failure_retry_ms,
        }
    }

    /// Reads `day`'s REFUND bill unless it was read already or is not ready: by the clock
    /// (no request then), or by WeChat's answer — `Bill Creating` (asked again an hour on),
    /// or a failure that passes (`SYSTEMERROR`, a timeout, HTTP 5xx: [`PayError::is_retryable`];
    /// asked again [`RefundBills::failure_retry_ms`] on), as a day's own bills — nor out of
    /// WeChat's reach ([`BILLS_KEPT_DAYS`]: no request). A refusal that will not pass fails
    /// the reconciliation, as the day's own bills do.
    async fn fetch(&mut self, app: &App, day: &str) -> Result<(), ApiError> {
        if self.read.contains_key(day)
            || self.not_ready.contains_key(day)
            || self.out_of_reach.contains(day)
        {
            return Ok(());
        }
        let now = app.clock.now_ms();
        if !bill_in_reach(day, now) {
            tracing::warn!(
                bill_date = day,
                "REFUND bill past the three months WeChat Pay keeps: not asked for"
            );
            self.out_of_reach.insert(day.to_owned());
            return Ok(());
        }
        let ready_at = bill_ready_at_ms(day).unwrap_or(i64::MAX);
        if now < ready_at {
            self.not_ready.insert(day.to_owned(), ready_at);
            return Ok(());
        }
        match app.pay.download_bill(day, BillType::Refund).await {
            Ok(bill) => {
                self.read.insert(day.to_owned(), bill);
            }
            Err(e) if bill_creating(&e) => {
                tracing::warn!(
                    bill_date = day,
                    "REFUND bill not ready: its refunds are checked again later"
                );
                self.not_ready
                    .insert(day.to_owned(), now + BILL_CREATING_RETRY_MS);
            }
            Err(e) if e.is_retryable() => {
                let answer = bill_answer(&e);
                tracing::warn!(bill_date = day, answer = %answer, "WeChat Pay did not give the REFUND bill now: its refunds are checked again later");
                self.not_ready
                    .insert(day.to_owned(), now + self.failure_retry_ms);
                self.failing.insert(day.to_owned(), answer);
            }
            Err(e) => return Err(pay_error(e)),
        }
        Ok(())
    }
}

fn pay_error(e: crate::pay::client::PayError) -> ApiError {
    if e.is_retryable() {
        ApiError::unavailable(
            "PAYMENT_UNAVAILABLE",
            format!("WeChat Pay did not give the bill ({e}); retry shortly"),
        )
    } else {
        ApiError::new(
            http::StatusCode::BAD_GATEWAY,
            "PAYMENT_REFUSED",
            format!("WeChat Pay refused the bill: {e}"),
        )
    }
}

/// `bill_date`'s own bill `bill`. `No Bill Exist` (a day without trades) comes back as an
/// empty bill. `Ok(Err(_))`: WeChat did not give it now but may later ([`NotRead`]: still
/// making it, or a failure that passes); any other failure is [`pay_error`]'s refusal.
async fn own_bill(
    app: &App,
    bill_date: &str,
    bill: OwnBill,
) -> Result<Result<Bill, NotRead>, ApiError> {
    match app.pay.download_bill(bill_date, bill.bill_type()).await {
        Ok(read) => Ok(Ok(read)),
        Err(error) if error.is_retryable() => {
            let not_read = NotRead { bill, error };
            tracing::warn!(
                bill_date,
                bill_type = bill.as_str(),
                answer = %not_read.answer(),
                "WeChat Pay did not give the day's bill now: not checked yet"
            );
            Ok(Err(not_read))
        }
        Err(e) => Err(pay_error(e)),
    }
}

/// 400 `BAD_BILL_DATE` at `now_ms`, for a `bill_date` that is not a China-time `yyyyMMdd`:
/// an example (yesterday, the latest day whose bills are final) and the oldest day WeChat Pay
/// still serves bills of.
pub(super) fn bad_bill_date(now_ms: i64) -> ApiError {
    let yesterday = crate::time::beijing_date(now_ms - DAY_MS);
    let earliest = crate::time::beijing_date(earliest_bill_day_ms(now_ms));
    ApiError::bad_request(
        "BAD_BILL_DATE",
        format!(
            "bill_date must be a China-time day written yyyyMMdd, e.g. {yesterday} (yesterday, \
             whose bills are final after 10:00 China time today); WeChat Pay serves the bills \
             of {earliest} and later"
        ),
    )
}

/// The start of `bill_date` (epoch ms) if it can be reconciled at `now`: 400
/// `BAD_BILL_DATE` for a date that is not one, 400 `BILL_OUT_OF_REACH` for a day past the
/// three months WeChat keeps bills (WeChat not asked).
fn day_in_reach(bill_date: &str, now: i64) -> Result<i64, ApiError> {
    let Some(start_ms) = beijing_day_start_ms(bill_date) else {
        return Err(bad_bill_date(now));
    };
    if !bill_in_reach(bill_date, now) {
        let earliest = crate::time::beijing_date(earliest_bill_day_ms(now));
        return Err(ApiError::bad_request(
            "BILL_OUT_OF_REACH",
            format!(
                "WeChat Pay serves the bills of the last three months only: {bill_date} is \
                 older (ask for {earliest} or later); compare that day with a bill \
                 downloaded while it was served"
            ),
        ));
    }
    Ok(start_ms)
}

/// Reconciles `bill_date` (`yyyyMMdd`), by hand. `Ok(None)` when `deadline` passed before the
/// end (nothing is kept; run it again). A day past the three months WeChat keeps bills is
/// refused (400 `BILL_OUT_OF_REACH`) without asking WeChat; one whose SUCCESS or REFUND bill
/// WeChat is still making, 409 [`BILL_NOT_READY`], or does not give for a reason that passes,
/// 503 `PAYMENT_UNAVAILABLE` ([`NotRead::refusal`]): by hand the whole day or nothing. A day
/// whose bills are not final yet (before 10:00 China time of the next day) is read for what
/// its bills list, and what they lack awaits them (`payments_awaiting_bill`,
/// `refunds_awaiting_bill`) instead of being missing.
pub async fn reconcile(
    app: &App,
    bill_date: &str,
    deadline: Deadline,
) -> Result<Option<Reconciliation>, ApiError> {
    let now = app.clock.now_ms();
    let start_ms = day_in_reach(bill_date, now)?;
    let success = own_bill(app, bill_date, OwnBill::Success)
        .await?
        .map_err(|n| n.refusal(bill_date, now))?;
    let refunds = own_bill(app, bill_date, OwnBill::Refund)
        .await?
        .map_err(|n| n.refusal(bill_date, now))?;
    check_halves(
        app,
        bill_date,
        start_ms,
        Some(&success),
        Some(refunds),
        deadline,
    )
    .await
}

/// Checks the halves of `bill_date` (starting at `start_ms`) whose own bill is given: the
/// payments' with the SUCCESS bill, the refunds' with the REFUND bill (and the REFUND bills
/// of the other days its refunds may be in). `Ok(None)` when `deadline` passed first.
async fn check_halves(
    app: &App,
    bill_date: &str,
    start_ms: i64,
    success: Option<&Bill>,
    refunds: Option<Bill>,
    deadline: Deadline,
) -> Result<Option<Reconciliation>, ApiError> {
    let final_at = bill_ready_at_ms(bill_date).filter(|t| app.clock.now_ms() < *t);
    let mut out = Reconciliation {
        bill_date: bill_date.to_owned(),
        ..Reconciliation::default()
    };
    for (bill, bill_type) in [
        (success, BillType::Success),
        (refunds.as_ref(), BillType::Refund),
    ] {
        for row in bill.iter().flat_map(|b| b.unreadable.iter()) {
            tracing::error!(bill_date, bill_type = bill_type.as_str(), line = row.line, problem = %row.problem, "bill line unreadable");
            out.unreadable_rows.push(UnreadableBillRow {
                bill_type: bill_type.as_str(),
                row: row.clone(),
            });
        }
    }
    for row in success.iter().flat_map(|b| b.rows.iter()) {
        if deadline.passed() {
            return Ok(None);
        }
        let Some(no) = row.out_trade_no.as_deref() else {
            continue;
        };
        out.checked += 1;
        if let Some(problem) = payment_problem(app, row, no).await? {
            tracing::error!(bill_date, out_trade_no = no, problem = %problem, "bill mismatch");
            out.mismatches.push(PaymentMismatch {
                out_trade_no: no.to_owned(),
                problem,
            });
        }
    }
    for row in refunds.iter().flat_map(|b| b.rows.iter()) {
        if deadline.passed() {
            return Ok(None);
        }
        out.refunds_checked += 1;
        if let Some(problem) = refund_problem(app, row).await? {
            tracing::error!(bill_date, out_refund_no = ?row.out_refund_no, problem = %problem, "refund bill mismatch");
            out.refund_mismatches.push(RefundMismatch {
                out_refund_no: row.out_refund_no.clone(),
                refund_id: row.refund_id.clone(),
                out_trade_no: row.out_trade_no.clone(),
                problem,
            });
        }
    }
    if let Some(success) = success {
        if !missing_from_bill(app, success, start_ms, final_at, deadline, &mut out).await? {
            return Ok(None);
        }
    }
    if let Some(refunds) = refunds {
        let mut refund_bills = RefundBills::new(TRANSIENT_FIRST_RETRY_MS);
        // Asked for by hand before it was ready: what it lists counts, what it lacks may come.
        if let Some(ready_at) = final_at {
            refund_bills
                .not_ready
                .insert(bill_date.to_owned(), ready_at);
        }
        refund_bills.read.insert(bill_date.to_owned(), refunds);
        if !refunds_missing_from_bill(app, &mut refund_bills, start_ms, deadline, false, &mut out)
            .await?
        {
            return Ok(None);
        }
    }
    Ok(Some(out))
}

/// The refunds of `bill_date` waiting for a bill ([`Reconciliation::refunds_awaiting_bill`])
/// checked again: only our refunds recorded successful that day against the REFUND bills
/// (the rest of the day was reconciled already). `give_up`: a bill still not ready is taken
/// as read, so a refund no bill read lists is missing. `Ok(None)` when `deadline` passed.
async fn recheck_refunds(
    app: &App,
    bill_date: &str,
    deadline: Deadline,
    give_up: bool,
    failure_retry_ms: i64,
) -> Result<Option<Reconciliation>, ApiError> {
    let Some(start_ms) = beijing_day_start_ms(bill_date) else {
        return Err(bad_bill_date(app.clock.now_ms()));
    };
    let mut out = Reconciliation {
        bill_date: bill_date.to_owned(),
        ..Reconciliation::default()
    };
    let mut bills = RefundBills::new(failure_retry_ms);
    if !refunds_missing_from_bill(app, &mut bills, start_ms, deadline, give_up, &mut out).await? {
        return Ok(None);
    }
    Ok(Some(out))
}

async fn payment_problem(app: &App, row: &BillRow, no: &str) -> Result<Option<String>, ApiError> {
    let stored = match OutTradeNo::parse(no) {
        Ok(n) => repo::get_order(app.store.as_ref(), &n).await?,
        Err(_) => None,
    };
    Ok(match stored {
        None => Some("not in our store".to_owned()),
        Some(o) if !o.value.status.is_paid() => Some(format!("stored as {:?}", o.value.status)),
        Some(o) if row.total_fee.is_some_and(|t| t != o.value.total) => Some(format!(
            "amount {} in bill, {} stored",
            row.total_fee.map(|f| f.get()).unwrap_or(0),
            o.value.total
        )),
        Some(o)
            if row.transaction_id.is_some()
                && o.value.transaction_id.as_deref() != row.transaction_id.as_deref() =>
        {
            Some("transaction id differs".to_owned())
        }
        Some(_) => None,
    })
}

/// `0` stands for "none" in the bill's id columns.
fn present(v: Option<&str>) -> Option<&str> {
    v.map(str::trim).filter(|s| !s.is_empty() && *s != "0")
}

async fn refund_problem(app: &App, row: &BillRow) -> Result<Option<String>, ApiError> {
    let Some(no) = present(row.out_refund_no.as_deref()) else {
        return Ok(Some("no out_refund_no in the bill".to_owned()));
    };
    let Ok(no) = OutRefundNo::parse(no) else {
        return Ok(Some(
            "out_refund_no is not one we could have made".to_owned(),
        ));
    };
    let Some(stored) = repo::get_refund(app.store.as_ref(), &no).await? else {
        return Ok(Some("not in our store".to_owned()));
    };
    let r = stored.value;
    if present(row.out_trade_no.as_deref()) != Some(r.out_trade_no.as_str()) {
        return Ok(Some(format!(
            "of order {} in bill, of {} stored",
            row.out_trade_no.as_deref().unwrap_or("(none)"),
            r.out_trade_no
        )));
    }
    match row.refund_fee {
        Some(fee) if fee == r.amount => {}
        fee => {
            return Ok(Some(format!(
                "amount differs: {} in bill, {} stored",
                fee.map(|f| f.get().to_string())
                    .unwrap_or_else(|| "none".into()),
                r.amount
            )))
        }
    }
    // What the bill says happened, against what we recorded: one still in flight here is
    // its notification not come yet (the sweep asks); a settled one must agree.
    let bill_status = row.refund_status.as_deref().unwrap_or("SUCCESS");
    let agrees = match r.status {
        RefundStatus::Pending | RefundStatus::Processing => true,
        RefundStatus::Success => bill_status == "SUCCESS" || bill_status == "PROCESSING",
        RefundStatus::Abnormal => bill_status == "CHANGE",
        RefundStatus::Failed => bill_status == "REFUNDCLOSE",
    };
    if !agrees {
        return Ok(Some(format!(
            "{bill_status} in bill, stored as {}",
            r.status.as_str()
        )));
    }
    if let (Some(bill_id), Some(ours)) = (present(row.refund_id.as_deref()), r.refund_id.as_deref())
    {
        if bill_id != ours {
            return Ok(Some("refund id differs".to_owned()));
        }
    }
    Ok(None)
}

/// Our direct orders paid on the day starting at `start_ms` that the SUCCESS bill lacks:
/// missing, or — the bill not final until `final_at` (epoch ms) — awaiting it. Orders of
/// WeChat's collecting (fund_type 1) are not in our merchant's bill. `false` when
/// `deadline` passed first.
async fn missing_from_bill(
    app: &App,
    success: &Bill,
    start_ms: i64,
    final_at: Option<i64>,
    deadline: Deadline,
    out: &mut Reconciliation,
) -> Result<bool, ApiError> {
    // A line that could not be read still names its order when it split into columns: that
    // order is reported once, as the unreadable line.
    let billed: HashSet<&str> = success
        .rows
        .iter()
        .filter_map(|r| r.out_trade_no.as_deref())
        .chain(
            success
                .unreadable
                .iter()
                .filter_map(|u| u.out_trade_no.as_deref()),
        )
        .collect();
    let complete = each_paid_on_day(app, FundType::Direct, start_ms, deadline, |o| {
        out.paid_here_checked += 1;
        if billed.contains(o.out_trade_no.as_str()) {
            return;
        }
        let out_trade_no = o.out_trade_no.as_str().to_owned();
        if let Some(at) = final_at {
            let problem = format!(
                "not in the SUCCESS bill of {} so far: WeChat Pay issues it complete from {} \
                 China time; ask again then",
                out.bill_date,
                crate::time::beijing_datetime(at)
            );
            out.payments_awaiting_bill.push(PaymentMismatch {
                out_trade_no,
                problem,
            });
            return;
        }
        tracing::error!(bill_date = %out.bill_date, out_trade_no = %o.out_trade_no, "paid here, not in the bill");
        out.missing_from_bill.push(PaymentMismatch {
            out_trade_no,
            problem: "paid here, not in the bill".to_owned(),
        });
    })
    .await?;
    Ok(complete)
}

/// Hands `visit` each order of `fund_type` we recorded paid within the China-time day
/// starting at `start_ms`, once: read through the status index by creation time (an order is
/// paid within [`PAID_AFTER_CREATED_MAX_MS`] of its creation), never a scan of every order.
/// The bills' and the funds flows' other-way checks both walk it. `false` when `deadline`
/// passed first.
///
/// Once, even when the order moves on while the walk runs: the paid statuses are walked one
/// after another ([`OrderStatus::ALL`]'s order, the way orders move: PAID, SHIPPED, RECEIVED,
/// COMPLETED, …, REFUNDED), so an order shipped (or received, or refunded) after the walk of
/// its old status read it and before the walk of its new one would be read again there —
/// counted twice in `paid_here_checked`, and, were it missing, reported twice.
pub(super) async fn each_paid_on_day(
    app: &App,
    fund_type: FundType,
    start_ms: i64,
    deadline: Deadline,
    mut visit: impl FnMut(Order),
) -> Result<bool, ApiError> {
    let end_ms = start_ms + DAY_MS;
    let mut visited: HashSet<String> = HashSet::new();
    for status in OrderStatus::ALL.into_iter().filter(|s| s.is_paid()) {
        let mut cursor = None;
        loop {
            if deadline.passed() {
                return Ok(false);
            }
            let (orders, next) = repo::orders_created_between(
                app.store.as_ref(),
                status,
                start_ms - PAID_AFTER_CREATED_MAX_MS,
                end_ms - 1,
                cursor,
            )
            .await?;
            orders
                .into_iter()
                .filter(|o| {
                    o.fund_type == fund_type
                        && o.paid_at_ms
                            .is_some_and(|t| (start_ms..end_ms).contains(&t))
                        && visited.insert(o.out_trade_no.as_str().to_owned())
                })
                .for_each(&mut visit);
            match next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
    }
    Ok(true)
}

/// The days (`yyyyMMdd`, China time) whose REFUND bill may list `r`: the day WeChat says it
/// succeeded (the day we recorded it when WeChat gave no time) and the day it was asked for
/// (our record's creation). UNVERIFIED which of the two WeChat's REFUND bill files a refund
/// under (the sandbox: the day it succeeded); looking in both keeps a refund that crossed
/// midnight from paging a person for nothing. The day it succeeded may be after the day
/// reconciled (WeChat's clock a little ahead of ours at midnight): its bill is then not
/// ready when that day is reconciled, and the refund waits for it.
fn refund_bill_days(r: &RefundRecord) -> BTreeSet<String> {
    let succeeded = r.succeeded_at_ms.or(r.success_recorded_at_ms);
    [succeeded, Some(r.created_at_ms)]
        .into_iter()
        .flatten()
        .map(crate::time::beijing_date)
        .collect()
}

/// Whether `bill` lists refund `r` (by our number, or WeChat's), a line it could not read
/// included (that line is reported on its own).
fn lists_refund(bill: &Bill, r: &RefundRecord) -> bool {
    let ours = r.out_refund_no.as_str();
    bill.rows.iter().any(|row| {
        present(row.out_refund_no.as_deref()) == Some(ours)
            || r.refund_id
                .as_deref()
                .is_some_and(|id| present(row.refund_id.as_deref()) == Some(id))
    }) || bill
        .unreadable
        .iter()
        .any(|u| present(u.out_refund_no.as_deref()) == Some(ours))
}

/// Our refunds recorded successful on the day starting at `start_ms` that no REFUND bill
/// of theirs lists: missing once the bill of each of their days ([`refund_bill_days`]) was
/// read, else (one not ready yet) awaiting it — unless `give_up`, when a bill not ready is
/// taken as read. A bill past WeChat's three months is neither: not asked for, it is left
/// out (and named in `bills_out_of_reach`), so a refund no other bill lists is missing, not
/// waiting for a bill that will never come; one whose every bill is past them is
/// `refunds_out_of_reach` (not checked, not a mismatch). `bills` holds the REFUND bills by
/// day; another day's is downloaded once when a refund needs it. `false` when `deadline`
/// passed first.
async fn refunds_missing_from_bill(
    app: &App,
    bills: &mut RefundBills,
    start_ms: i64,
    deadline: Deadline,
    give_up: bool,
    out: &mut Reconciliation,
) -> Result<bool, ApiError> {
    let mut cursor = None;
    loop {
        if deadline.passed() {
            return Ok(false);
        }
        let (refunds, next) = repo::refunds_recorded_successful_between(
            app.store.as_ref(),
            start_ms,
            start_ms + DAY_MS - 1,
            cursor,
        )
        .await?;
        for r in &refunds {
            out.our_refunds_checked += 1;
            let days = refund_bill_days(r);
            let mut listed = false;
            for day in &days {
                bills.fetch(app, day).await?;
                listed |= bills.read.get(day).is_some_and(|b| lists_refund(b, r));
            }
            if listed {
                continue;
            }
            let (gone, days): (Vec<&str>, Vec<&str>) = days
                .iter()
                .map(String::as_str)
                .partition(|d| bills.out_of_reach.contains(*d));
            let (unread, read): (Vec<&str>, Vec<&str>) = days
                .into_iter()
                .partition(|d| bills.not_ready.contains_key(*d));
            // Of those not read: the ones WeChat failed to give, and what it answered.
            let failed: Vec<(&str, &str)> = unread
                .iter()
                .filter_map(|d| bills.failing.get(*d).map(|a| (*d, a.as_str())))
                .collect();
            let unready: Vec<&str> = unread
                .iter()
                .copied()
                .filter(|d| !bills.failing.contains_key(*d))
                .collect();
            let gone_note = if gone.is_empty() {
                String::new()
            } else {
                format!(
                    "; the REFUND bill of {} is past the three months WeChat Pay keeps \
                     bills: not checked",
                    gone.join(" or ")
                )
            };
            let mismatch = |problem: String| RefundMismatch {
                out_refund_no: Some(r.out_refund_no.as_str().to_owned()),
                refund_id: r.refund_id.clone(),
                out_trade_no: Some(r.out_trade_no.as_str().to_owned()),
                problem,
            };
            if read.is_empty() && unread.is_empty() {
                // Every bill that could list it is past WeChat's reach: nothing to check it
                // against, and nothing known to be wrong.
                let problem = format!("successful here{gone_note}");
                tracing::warn!(bill_date = %out.bill_date, out_refund_no = %r.out_refund_no, problem = %problem, "refund not checked: its bills are out of reach");
                out.refunds_out_of_reach.push(mismatch(problem));
                continue;
            }
            if unread.is_empty() || give_up {
                let mut problem = "successful here".to_owned();
                if !read.is_empty() {
                    problem += &format!(", not in the REFUND bill of {}", read.join(" or "));
                }
                if !unready.is_empty() {
                    problem += &format!(
                        "; the REFUND bill of {} was still not ready {CATCH_UP_DAYS} days on",
                        unready.join(" or ")
                    );
                }
                for (d, answer) in &failed {
                    problem += &format!(
                        "; WeChat Pay still did not give the REFUND bill of {d} ({answer}) \
                         {CATCH_UP_DAYS} days on"
                    );
                }
                problem += &gone_note;
                tracing::error!(bill_date = %out.bill_date, out_refund_no = %r.out_refund_no, problem = %problem, "refund bill mismatch");
                out.refunds_missing_from_bill.push(mismatch(problem));
            } else {
                let mut problem = String::new();
                if !read.is_empty() {
                    problem += &format!("not in the REFUND bill of {}; ", read.join(" or "));
                }
                let mut waits = Vec::new();
                if !unready.is_empty() {
                    waits.push(format!(
                        "the REFUND bill of {} is not ready yet: checked again once it is",
                        unready.join(" or ")
                    ));
                }
                for (d, answer) in &failed {
                    waits.push(format!(
                        "WeChat Pay did not give the REFUND bill of {d} ({answer}): asked for \
                         again later"
                    ));
                }
                problem += &waits.join("; ");
                problem += &gone_note;
                tracing::info!(bill_date = %out.bill_date, out_refund_no = %r.out_refund_no, problem = %problem, "refund waits for a REFUND bill");
                let at = unread
                    .iter()
                    .filter_map(|d| bills.not_ready.get(*d).copied())
                    .min();
                out.recheck_at_ms = out.recheck_at_ms.into_iter().chain(at).min();
                out.refunds_awaiting_bill.push(mismatch(problem));
            }
        }
        match next {
            Some(n) => cursor = Some(n),
            None => {
                out.bills_out_of_reach = bills.out_of_reach.iter().cloned().collect();
                out.refund_bills_failing = bills.failing.clone();
                return Ok(true);
            }
        }
    }
}

/// What the schedule's bill phase did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct DailyReport {
    /// The days (`yyyyMMdd`) reconciled in this run, oldest first.
    pub reconciled: Vec<String>,
    /// Mismatches found in this run — a day given up on (`days_given_up`) included: each is a
    /// `bill_mismatch` event for a person (kept once: one found again is not kept again).
    pub mismatches: usize,
    /// Mismatches kept as new `bill_mismatch` events (and paged).
    pub kept: usize,
    /// Days whose refunds waiting for a REFUND bill were checked again in this run.
    pub rechecked: Vec<String>,
    /// Refunds left waiting for a REFUND bill that is not ready yet (of the days reconciled
    /// or checked again in this run).
    pub awaiting: usize,
    /// REFUND bills (`yyyyMMdd`) a refund was to be looked for in that are past the three
    /// months WeChat Pay keeps bills: skipped, not asked for (the refund judged by its other
    /// bills; one none lists is a mismatch).
    pub bills_out_of_reach: Vec<String>,
    /// Refunds (`out_refund_no`) whose every REFUND bill is past those three months: not
    /// checked, not paged ([`Reconciliation::refunds_out_of_reach`]).
    pub refunds_out_of_reach: Vec<String>,
    /// Days (`yyyyMMdd`) whose own SUCCESS or REFUND bill WeChat did not give (still making
    /// it, `Bill Creating`, or a failure that passes, `transient_failures`): not reconciled
    /// yet — the half of the other bill, if read, checked — noted in
    /// `reconcile/days_awaiting_bill` and asked for again later; not a failure.
    pub days_awaiting_bill: Vec<String>,
    /// Days one of whose own bills was read and its half checked in this run (its
    /// mismatches counted and kept) while WeChat did not give the other: `yyyyMMdd SUCCESS`
    /// (the payments checked) or `yyyyMMdd REFUND` (the refunds). The day stays in
    /// `days_awaiting_bill` for the other bill, and is `reconciled` once that is checked too.
    pub checked_in_part: Vec<String>,
    /// A day's own bills — or another day's REFUND bill a day's refunds are looked for in
    /// (`yyyyMMdd REFUND`, that bill's day; its refunds then wait, `awaiting`) — WeChat Pay
    /// failed to give in this run for a reason that passes: `yyyyMMdd TYPE: what it answered`
    /// (`SYSTEMERROR`, a timeout, HTTP 5xx). Not a failed phase at first: the day awaits the
    /// bill (`days_awaiting_bill`), asked for again 5 minutes on the first time, then hourly,
    /// and given up on as one still being made — a failed phase once WeChat has failed so for
    /// 6 hours (`failing_too_long`).
    pub transient_failures: Vec<String>,
    /// Bills WeChat Pay has failed to give for a reason that passes for 6 hours or more
    /// ([`FAILING_ALARM_AFTER_MS`]), as of WeChat's last answer: `yyyyMMdd TYPE bill, failing
    /// since …`, or the REFUND bills a day's refunds wait for. While any is named the phase
    /// fails (`BILLS_FAILING`, counted as `SchedulePhaseFailures`) at every run, WeChat still
    /// asked hourly only.
    pub failing_too_long: Vec<String>,
    /// Days an own bill of which WeChat had still not given a week after it should have been
    /// ready: given up on, that bill's half not reconciled, a `bill_mismatch` event
    /// (`bill_not_issued`) kept and paged, and counted in `mismatches`.
    pub days_given_up: Vec<String>,
}

/// Days the schedule goes back to reconcile ones it missed (WeChat Pay down all of a day's
/// runs after 10:00, the schedule off): a week. Older ones are left to a person
/// (`reconcile` by hand; WeChat keeps bills three months).
const CATCH_UP_DAYS: i64 = 7;

/// The schedule's daily reconciliation: once bills are ready (10:00 China time), yesterday's,
/// once — the last day done is kept as a kv mark, written after the day's events, so a run
/// cut short or failed is done again by the next (its events are kept once: by day and id).
/// Days missed since the mark (at most [`CATCH_UP_DAYS`]) are done first, oldest first.
/// Without a mark (the schedule's first run on this store), yesterday is reconciled only if
/// the store holds an order created before today: a new store (a first deploy, a fresh
/// wxlocal) has nothing of the days before it to compare with a bill, so the mark is put at
/// yesterday and the first day reconciled is the first day it was in use.
///
/// A day with refunds waiting for a REFUND bill not ready yet
/// ([`Reconciliation::refunds_awaiting_bill`]) is noted in the kv entry
/// `reconcile/refunds_awaiting_bill` with when that bill will be ready (before the mark
/// moves past it); each run after 10:00 checks the refunds of every noted day that is due
/// again (`recheck_refunds`): one still in no bill once all its days' bills were read is
/// missing (kept and paged like any mismatch), and the day leaves the entry once none waits.
/// A bill still not ready a week (`CATCH_UP_DAYS`) after it should have been is given up
/// on: its refunds no bill read lists are missing, the bill that never came named. A bill
/// WeChat answered `Bill Creating` for is asked again an hour on ([`BILL_CREATING_RETRY_MS`],
/// UNVERIFIED), one out of WeChat's reach never (the report's `bills_out_of_reach`; a refund
/// whose every bill is out of reach, `refunds_out_of_reach`: not checked, not paged).
///
/// A day whose own SUCCESS or REFUND bill WeChat does not give — still making it (`Bill
/// Creating`), or a failure that passes (`SYSTEMERROR`, a timeout, HTTP 5xx:
/// [`PayError::is_retryable`]) — is not a failed run. The half of the day whose bill was read
/// is checked now and its mismatches kept (the payments with the SUCCESS bill, the refunds
/// with the REFUND bill: they share no event key, so neither is kept twice); the day is then
/// noted in the kv entry `reconcile/days_awaiting_bill` with the bill still to read and when
/// to ask again — after `Bill Creating` an hour on ([`BILL_CREATING_RETRY_MS`]), after a
/// first failure that passes 5 minutes on ([`TRANSIENT_FIRST_RETRY_MS`]), hourly after
/// that; never at every 5-minute run (UNVERIFIED how long WeChat answers either after 10:00;
/// the sandbox does while told to, `/_control/bill {"creating"|"failing": day, "bill_type"?}`)
/// — and only then does the mark move past it: the days after it are not held up, and the
/// day is never taken as done before both halves were checked. The report names it in
/// `days_awaiting_bill` at every run while it waits (`checked_in_part`: the half checked,
/// `transient_failures`: WeChat's passing failures). Each run after 10:00 asks again for the
/// noted bills that are due, first, checking each half once its bill comes (the day
/// `reconciled` once both were). A bill still not given a week (`CATCH_UP_DAYS`) after it
/// should have been ready is given up on — a `bill_mismatch` event `{day}/bill_not_issued`
/// naming the bill and WeChat's answer and saying what to do, paged once, counted in the
/// report's `mismatches` and `days_given_up` — and never asked for again. A refusal that
/// will not pass (a bad signature, our configuration, a bill that does not parse) still fails
/// the run (`PAYMENT_REFUSED`): the next run asks again, the mark waiting.
/// `false` when `deadline` passed first.
pub async fn run_daily(
    app: &App,
    deadline: Deadline,
    report: &mut DailyReport,
) -> Result<bool, ApiError> {
    let now = app.clock.now_ms();
    let china_ms_of_day = (now + BEIJING_OFFSET_MS).rem_euclid(DAY_MS);
    let done = china_ms_of_day < BILLS_READY_HOUR * HOUR_MS
        || (reconcile_days(app, deadline, report).await?
            && recheck_awaiting(app, deadline, report).await?);
    if done {
        failing_too_long(app, report).await?;
    }
    Ok(done)
}

/// The bill phase's failure once WeChat Pay has failed to give a bill for a reason that
/// passes for [`FAILING_ALARM_AFTER_MS`] or more: those bills named in the report's
/// `failing_too_long` and a 503 `BILLS_FAILING` saying what to do, which the schedule counts
/// as `SchedulePhaseFailures`. Read from the kv entries of the days awaiting a bill, at every
/// run — before 10:00 China time too: the outage is as WeChat last answered until the run
/// that asks again.
async fn failing_too_long(app: &App, report: &mut DailyReport) -> Result<(), ApiError> {
    let now = app.clock.now_ms();
    let long = |since: i64| now - since >= FAILING_ALARM_AFTER_MS;
    let mut failing = Vec::new();
    let (days, _) = read_awaiting::<AwaitedDay>(app, DAYS_AWAITING).await?;
    for (day, noted) in days {
        if let Some(since) = noted.failing_since().filter(|s| long(*s)) {
            let bills: Vec<&str> = noted.bills().iter().map(|b| b.as_str()).collect();
            failing.push(format!(
                "{day} {} bill, failing since {} China time",
                bills.join(" and "),
                crate::time::beijing_datetime(since)
            ));
        }
    }
    let (refunds, _) = read_awaiting::<RefundsAwaited>(app, AWAITING).await?;
    for (day, noted) in refunds {
        if let Some(since) = noted.failing_since().filter(|s| long(*s)) {
            failing.push(format!(
                "a REFUND bill the refunds of {day} wait for, failing since {} China time",
                crate::time::beijing_datetime(since)
            ));
        }
    }
    if failing.is_empty() {
        return Ok(());
    }
    tracing::error!(bills = ?failing, "WeChat Pay has failed to give bills for hours");
    report.failing_too_long = failing.clone();
    Err(ApiError::unavailable(
        "BILLS_FAILING",
        format!(
            "WeChat Pay has failed to give bills for a reason that passes (SYSTEMERROR, a \
             timeout, HTTP 5xx) for {} hours or more: {}. The schedule asks again hourly and \
             checks each day once its bill comes (the days after are not held up); see \
             whether WeChat Pay's downloadbill is down (its status, our network to it). A \
             bill still not given a week after it should have been ready is given up on and \
             paged (bill_not_issued)",
            FAILING_ALARM_AFTER_MS / HOUR_MS,
            failing.join("; ")
        ),
    ))
}

/// Keeps `found`'s mismatches as `bill_mismatch` events, paging once per new one.
async fn keep_mismatches(
    app: &App,
    found: &Reconciliation,
    report: &mut DailyReport,
) -> Result<(), ApiError> {
    report.mismatches += found.mismatch_count();
    report.awaiting += found.refunds_awaiting_bill.len();
    for (day, answer) in &found.refund_bills_failing {
        let failure = format!("{day} REFUND: {answer}");
        if !report.transient_failures.contains(&failure) {
            report.transient_failures.push(failure);
        }
    }
    for day in &found.bills_out_of_reach {
        if !report.bills_out_of_reach.contains(day) {
            report.bills_out_of_reach.push(day.clone());
        }
    }
    report.refunds_out_of_reach.extend(
        found
            .refunds_out_of_reach
            .iter()
            .filter_map(|m| m.out_refund_no.clone()),
    );
    for (key, body) in mismatch_events(found) {
        if super::common::keep_evidence(app, BILL_MISMATCH_EVENTS, key, body).await? {
            report.kept += 1;
            super::common::page_a_person(app);
        }
    }
    Ok(())
}

/// [`run_daily`]'s days: the ones awaiting their own bill that are due
/// ([`reconcile_awaited_days`]), then the ones since the mark, oldest first. A day an own bill
/// of which WeChat does not give is noted in [`DAYS_AWAITING`] ([`settle_day`]) and the mark
/// moves past it.
async fn reconcile_days(
    app: &App,
    deadline: Deadline,
    report: &mut DailyReport,
) -> Result<bool, ApiError> {
    if !reconcile_awaited_days(app, deadline, report).await? {
        return Ok(false);
    }
    let now = app.clock.now_ms();
    let yesterday = crate::time::beijing_date(now - DAY_MS);
    let earliest = crate::time::beijing_date(now - CATCH_UP_DAYS * DAY_MS);
    let store = app.store.as_ref();
    let today_start = beijing_day_start_ms(&crate::time::beijing_date(now)).unwrap_or(now);
    loop {
        let mark = kv::get(store, MARK).await?;
        if mark.is_none() && !repo::any_order_created_before(store, today_start).await? {
            tracing::info!(from = %crate::time::beijing_date(now), "no order before today in this store: reconciliation starts with today's bills");
            let until = app.clock.now_secs() + MARK_TTL_SECS;
            kv::put_if(store, MARK, &yesterday, until, None).await?;
            return Ok(true);
        }
        // `yyyyMMdd` orders as text.
        let day = match mark.as_ref().and_then(|m| beijing_day_start_ms(&m.value)) {
            Some(done) => crate::time::beijing_date(done + DAY_MS).max(earliest.clone()),
            None => yesterday.clone(),
        };
        if day > yesterday {
            return Ok(true);
        }
        // A bill not given is noted before the mark moves past the day: a run cut short in
        // between does the day again.
        match look_at_day(app, &day, &OwnBill::BOTH, deadline).await? {
            Some(look) => settle_day(app, &day, look, None, report).await?,
            None => return Ok(false),
        }
        let until = app.clock.now_secs() + MARK_TTL_SECS;
        if !kv::put_if(store, MARK, &day, until, mark.map(|m| m.version)).await? {
            // Another run moved the mark meanwhile: it is reconciling; leave the rest to it.
            return Ok(true);
        }
        if deadline.passed() {
            return Ok(day == yesterday);
        }
    }
}

/// What the schedule found of a day: the halves whose own bill was read, checked (`found`;
/// `read`: those bills), and the day's own bills WeChat did not give now.
struct DayLook {
    found: Reconciliation,
    read: Vec<OwnBill>,
    not_read: Vec<NotRead>,
}

/// The schedule's look at `bill_date`: each of its own bills in `bills` asked for, and the
/// half of each one WeChat gives checked ([`check_halves`]), whether or not it gave the
/// other. `Ok(None)` when `deadline` passed first (nothing kept).
async fn look_at_day(
    app: &App,
    bill_date: &str,
    bills: &[OwnBill],
    deadline: Deadline,
) -> Result<Option<DayLook>, ApiError> {
    let start_ms = day_in_reach(bill_date, app.clock.now_ms())?;
    let (mut success, mut refunds) = (None, None);
    let (mut read, mut not_read) = (Vec::new(), Vec::new());
    for &bill in bills {
        match own_bill(app, bill_date, bill).await? {
            Ok(given) => {
                read.push(bill);
                match bill {
                    OwnBill::Success => success = Some(given),
                    OwnBill::Refund => refunds = Some(given),
                }
            }
            Err(n) => not_read.push(n),
        }
    }
    let found = check_halves(
        app,
        bill_date,
        start_ms,
        success.as_ref(),
        refunds,
        deadline,
    )
    .await?;
    Ok(found.map(|found| DayLook {
        found,
        read,
        not_read,
    }))
}

/// Acts on what the schedule found of `day` ([`look_at_day`]); `noted`: whether it came
/// from [`DAYS_AWAITING`]. First the mismatches of the halves checked are kept
/// ([`keep_found`]); then a day with every own bill read is `reconciled` (and out of the
/// entry), and one with a bill WeChat did not give is noted in the entry for that bill only —
/// asked for again an hour on, or 5 minutes on after a first failure that passes
/// ([`TRANSIENT_FIRST_RETRY_MS`]) — or, a week after its bills should have been ready, given
/// up on ([`bill_never_came`]). In that order: a run cut short in between does the day again
/// (its events keyed, nothing is kept twice), and no half is taken as checked before it was.
async fn settle_day(
    app: &App,
    day: &str,
    look: DayLook,
    noted: Option<AwaitedDay>,
    report: &mut DailyReport,
) -> Result<(), ApiError> {
    let DayLook {
        found,
        read,
        not_read,
    } = look;
    keep_found(app, day, &found, report).await?;
    if not_read.is_empty() {
        report.reconciled.push(day.to_owned());
        return note_day_awaiting(app, day, None).await;
    }
    if !read.is_empty() {
        report
            .checked_in_part
            .extend(read.iter().map(|b| format!("{day} {}", b.as_str())));
    }
    report.transient_failures.extend(
        not_read
            .iter()
            .filter(|n| !n.creating())
            .map(|n| format!("{day} {}: {}", n.bill.as_str(), n.answer())),
    );
    let now = app.clock.now_ms();
    if give_up_at_ms(day).is_none_or(|g| now >= g) {
        bill_never_came(app, day, &not_read, report).await?;
        return note_day_awaiting(app, day, None).await;
    }
    let wait = if noted.is_some() || not_read.iter().any(NotRead::creating) {
        BILL_CREATING_RETRY_MS
    } else {
        TRANSIENT_FIRST_RETRY_MS
    };
    // Since when WeChat fails to give a bill of the day (kept while it goes on failing).
    let failing = not_read.iter().any(|n| !n.creating());
    let since = failing.then(|| noted.and_then(AwaitedDay::failing_since).unwrap_or(now));
    let bills: Vec<OwnBill> = not_read.iter().map(|n| n.bill).collect();
    let next = AwaitedDay::new(now + wait, &bills, since);
    note_day_awaiting(app, day, Some(next)).await?;
    awaits_its_bill(report, day);
    Ok(())
}

/// What the schedule checked of `day`: its mismatches kept ([`keep_mismatches`]), and the
/// day noted in [`AWAITING`] if refunds of it wait for a bill.
async fn keep_found(
    app: &App,
    day: &str,
    found: &Reconciliation,
    report: &mut DailyReport,
) -> Result<(), ApiError> {
    keep_mismatches(app, found, report).await?;
    if let Some(at) = found.recheck_at_ms {
        let failing = !found.refund_bills_failing.is_empty();
        note_refunds_awaiting(app, day, Some(at), failing).await?;
    }
    if found.mismatch_count() > 0 {
        tracing::error!(bill_date = %day, mismatches = found.mismatch_count(), "daily reconciliation found mismatches");
    } else {
        tracing::info!(bill_date = %day, checked = found.checked, refunds_checked = found.refunds_checked, "daily reconciliation clean");
    }
    Ok(())
}

/// Names `day` in the report's `days_awaiting_bill` (once).
fn awaits_its_bill(report: &mut DailyReport, day: &str) {
    if !report.days_awaiting_bill.iter().any(|d| d == day) {
        report.days_awaiting_bill.push(day.to_owned());
    }
}

/// The days noted in [`DAYS_AWAITING`] that are due, their bills still to read asked for
/// again ([`look_at_day`]) and what came of it acted on ([`settle_day`]): a half checked once
/// its bill comes, the day reconciled once both were, one still not given noted again an
/// hour on until [`give_up_at_ms`] — a week after its bills should have been ready — and
/// then given up on. A day that can no longer be asked for (not a date, past WeChat's three
/// months) leaves the entry. `false` when `deadline` passed first.
async fn reconcile_awaited_days(
    app: &App,
    deadline: Deadline,
    report: &mut DailyReport,
) -> Result<bool, ApiError> {
    let now = app.clock.now_ms();
    let (days, _) = read_awaiting::<AwaitedDay>(app, DAYS_AWAITING).await?;
    for (day, noted) in days {
        if noted.at() > now {
            awaits_its_bill(report, &day);
            continue;
        }
        if deadline.passed() {
            return Ok(false);
        }
        match look_at_day(app, &day, &noted.bills(), deadline).await {
            Ok(Some(look)) => settle_day(app, &day, look, Some(noted), report).await?,
            Ok(None) => return Ok(false),
            Err(e) if e.code == "BAD_BILL_DATE" || e.code == "BILL_OUT_OF_REACH" => {
                tracing::error!(bill_date = %day, error = %e, "a day awaiting its bill cannot be asked for: left out");
                note_day_awaiting(app, &day, None).await?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// `day`'s own bills in `not_read` still not given a week after they should have been ready:
/// kept as a `bill_mismatch` event for a person (`{day}/bill_not_issued`: one a day, whichever
/// bill), paged once, counted in the report's `mismatches`.
async fn bill_never_came(
    app: &App,
    day: &str,
    not_read: &[NotRead],
    report: &mut DailyReport,
) -> Result<(), ApiError> {
    let bills: Vec<OwnBill> = not_read.iter().map(|n| n.bill).collect();
    let answers: BTreeSet<String> = not_read
        .iter()
        .map(|n| format!("`{}`", n.answer()))
        .collect();
    let answers = answers.into_iter().collect::<Vec<_>>().join(" and ");
    // What to call the bills not given, the records they hold, the half checked, and the
    // pronouns for them.
    let (named, records, checked, [it, they, were]) = match bills.as_slice() {
        [OwnBill::Success] => (
            "SUCCESS bill",
            "orders",
            "; its REFUND bill was read and its refunds checked",
            ["it", "it", "was"],
        ),
        [OwnBill::Refund] => (
            "REFUND bill",
            "refunds",
            "; its SUCCESS bill was read and its payments checked",
            ["it", "it", "was"],
        ),
        _ => (
            "SUCCESS and REFUND bills",
            "orders and refunds",
            "",
            ["them", "they", "were"],
        ),
    };
    tracing::error!(bill_date = %day, bills = named, answers = %answers, "WeChat Pay still does not give the day's bill a week on: given up, not reconciled");
    report.days_given_up.push(day.to_owned());
    report.mismatches += 1;
    let body = serde_json::json!({
        "bill_date": day,
        "kind": "bill_not_issued",
        "detail": format!(
            "WeChat Pay still answered {answers} for the {named} of {day} {CATCH_UP_DAYS} \
             days after {they} should have been ready: our {records} of that day were not \
             checked against {it}{checked}, and the schedule no longer asks"
        ),
        "what_to_do": format!(
            "download that day's {named} in the merchant platform and compare {it} with our \
             {records} by hand, or reconcile the day (POST /admin/orderSync {{action: \
             reconcile, bill_date}}) once WeChat Pay gives {it}; ask WeChat Pay why {they} \
             {were} not given"
        ),
    });
    let key = format!("{day}/bill_not_issued");
    if super::common::keep_evidence(app, BILL_MISMATCH_EVENTS, key, body.to_string()).await? {
        report.kept += 1;
        super::common::page_a_person(app);
    }
    Ok(())
}

/// The days noted in the kv entry `key` ([`AWAITING`]: `{bill_date: check again from, epoch
/// ms}`; [`DAYS_AWAITING`]: `{bill_date: AwaitedDay}`) and the entry's version. An entry that
/// does not parse (nothing of ours writes one) is read as empty and overwritten.
async fn read_awaiting<T: serde::de::DeserializeOwned>(
    app: &App,
    key: &str,
) -> Result<(BTreeMap<String, T>, Option<u64>), ApiError> {
    let Some(entry) = kv::get(app.store.as_ref(), key).await? else {
        return Ok((BTreeMap::new(), None));
    };
    let days = serde_json::from_str(&entry.value).unwrap_or_else(|e| {
        tracing::error!(key, error = %e, "the days awaiting a bill do not parse: starting afresh");
        BTreeMap::new()
    });
    Ok((days, Some(entry.version)))
}

/// `at`, or when `bill_date` is given up on if sooner: a day is checked again by then at the
/// latest.
fn by_give_up(bill_date: &str, at: i64) -> i64 {
    give_up_at_ms(bill_date).map_or(at, |g| at.min(g))
}

/// Notes `bill_date` in [`AWAITING`] to have its refunds checked again from `at` (epoch ms),
/// or (`None`) takes it out. `failing`: a bill they wait for was not given for a reason
/// that passes — noted with since when (kept from the entry if it failed before).
async fn note_refunds_awaiting(
    app: &App,
    bill_date: &str,
    at: Option<i64>,
    failing: bool,
) -> Result<(), ApiError> {
    let now = app.clock.now_ms();
    let at = at.map(|at| by_give_up(bill_date, at));
    note_awaiting(
        app,
        AWAITING,
        bill_date,
        |before: Option<&RefundsAwaited>| {
            at.map(|at| {
                let since = failing.then(|| before.and_then(|b| b.failing_since()).unwrap_or(now));
                RefundsAwaited::new(at, since)
            })
        },
    )
    .await
}

/// Notes `bill_date` in [`DAYS_AWAITING`] as `noted` (its own bills still to read, and when to
/// ask again), or (`None`) takes it out.
async fn note_day_awaiting(
    app: &App,
    bill_date: &str,
    noted: Option<AwaitedDay>,
) -> Result<(), ApiError> {
    let noted = noted.map(|n| n.with_at(by_give_up(bill_date, n.at())));
    note_awaiting(app, DAYS_AWAITING, bill_date, |_: Option<&AwaitedDay>| {
        noted
    })
    .await
}

/// Notes `bill_date` in the kv entry `key` as `update` makes it from what is noted now, or
/// (`None`) takes it out. Read, change, write if unchanged meanwhile — a few times, as runs
/// may overlap.
async fn note_awaiting<T>(
    app: &App,
    key: &str,
    bill_date: &str,
    update: impl Fn(Option<&T>) -> Option<T>,
) -> Result<(), ApiError>
where
    T: serde::Serialize + serde::de::DeserializeOwned + Clone + PartialEq,
{
    const ATTEMPTS: usize = 5;
    for _ in 0..ATTEMPTS {
        let (mut days, version) = read_awaiting::<T>(app, key).await?;
        let before = days.clone();
        match update(days.get(bill_date)) {
            Some(n) => days.insert(bill_date.to_owned(), n),
            None => days.remove(bill_date),
        };
        if days == before {
            return Ok(());
        }
        let value = serde_json::to_string(&days).map_err(|e| ApiError::internal(e.to_string()))?;
        let until = app.clock.now_secs() + MARK_TTL_SECS;
        if kv::put_if(app.store.as_ref(), key, &value, until, version).await? {
            return Ok(());
        }
    }
    Err(ApiError::unavailable(
        "RECONCILE_BUSY",
        format!("the days awaiting a bill ({key}) kept changing under this run; the next run notes them"),
    ))
}

/// The days noted in [`AWAITING`] that are due, their refunds checked again
/// ([`recheck_refunds`]). `false` when `deadline` passed first.
async fn recheck_awaiting(
    app: &App,
    deadline: Deadline,
    report: &mut DailyReport,
) -> Result<bool, ApiError> {
    let now = app.clock.now_ms();
    let (days, _) = read_awaiting::<RefundsAwaited>(app, AWAITING).await?;
    for (day, noted) in days {
        if noted.at() > now {
            continue;
        }
        if deadline.passed() {
            return Ok(false);
        }
        let give_up = give_up_at_ms(&day).is_none_or(|g| now >= g);
        // A bill that failed for a passing reason before is asked for hourly after that.
        let retry = if noted.failing_since().is_some() {
            BILL_CREATING_RETRY_MS
        } else {
            TRANSIENT_FIRST_RETRY_MS
        };
        let found = match recheck_refunds(app, &day, deadline, give_up, retry).await {
            Ok(Some(found)) => found,
            Ok(None) => return Ok(false),
            // A day noted by mistake cannot be checked: not a reason to keep it.
            Err(e) if e.code == "BAD_BILL_DATE" => {
                note_refunds_awaiting(app, &day, None, false).await?;
                continue;
            }
            Err(e) => return Err(e),
        };
        report.rechecked.push(day.clone());
        keep_mismatches(app, &found, report).await?;
        let failing = !found.refund_bills_failing.is_empty();
        note_refunds_awaiting(app, &day, found.recheck_at_ms, failing).await?;
    }
    Ok(true)
}

const WHAT_TO_DO: &str = "WeChat Pay's bill and our records disagree: compare the order or \
refund in the merchant platform with ours (POST /fn/queryOrder, the after-sale), put right \
whichever is wrong, and note it; nothing was changed automatically";

/// (key, body) of an event per mismatch; the key names the day and the record (an
/// unreadable line: its bill type and the digest of its bytes), so a day reconciled twice
/// keeps each once.
fn mismatch_events(r: &Reconciliation) -> Vec<(String, String)> {
    let d = &r.bill_date;
    let mut out = Vec::new();
    let mut push = |key: String, kind: &str, detail: serde_json::Value| {
        let body = serde_json::json!({
            "bill_date": d, "kind": kind, "detail": detail, "what_to_do": WHAT_TO_DO,
        });
        out.push((key, body.to_string()));
    };
    for m in &r.mismatches {
        push(
            format!("{d}/payment/{}", m.out_trade_no),
            "payment",
            serde_json::json!(m),
        );
    }
    for (i, m) in r.refund_mismatches.iter().enumerate() {
        let id = m
            .out_refund_no
            .clone()
            .or_else(|| m.refund_id.clone())
            .unwrap_or_else(|| format!("row{i}"));
        push(format!("{d}/refund/{id}"), "refund", serde_json::json!(m));
    }
    for m in &r.missing_from_bill {
        push(
            format!("{d}/missing/{}", m.out_trade_no),
            "missing_from_bill",
            serde_json::json!(m),
        );
    }
    for m in &r.refunds_missing_from_bill {
        let id = m.out_refund_no.as_deref().unwrap_or("(none)");
        push(
            format!("{d}/refund_missing/{id}"),
            "refund_missing_from_bill",
            serde_json::json!(m),
        );
    }
    // By the line's digest, not its number: a line found again where it moved to in a bill
    // WeChat issued anew is the same event, and a different line never takes its name. The
    // same line twice in one bill is two events (`~2`, …).
    let mut seen: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for u in &r.unreadable_rows {
        let n = seen
            .entry((u.bill_type, u.row.digest.as_str()))
            .or_default();
        *n += 1;
        let again = if *n > 1 {
            format!("~{n}")
        } else {
            String::new()
        };
        push(
            format!("{d}/unreadable/{}/{}{again}", u.bill_type, u.row.digest),
            "unreadable_bill_row",
            serde_json::json!(u),
        );
    }
    out
}

#[cfg(all(test, feature = "sqlite"))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;
    use std::sync::Arc;

    fn app() -> App {
        App::for_tests(Arc::new(SqliteStore::memory().unwrap()))
    }

    fn row(out_refund_no: Option<&str>) -> BillRow {
        BillRow {
            out_trade_no: Some("pay_1".into()),
            refund_id: Some("500001".into()),
            out_refund_no: out_refund_no.map(str::to_owned),
            refund_fee: crate::domain::Fen::new(100).ok(),
            refund_status: Some("SUCCESS".into()),
            ..BillRow::default()
        }
    }

    /// A REFUND bill row without a merchant refund number (WeChat writes `0`, or nothing),
    /// or with one we could never have made, is a mismatch to report — never an error that
    /// stops the reconciliation of the other rows.
    #[tokio::test]
    async fn a_refund_row_without_a_readable_out_refund_no_is_a_mismatch() {
        let app = app();
        for (no, want) in [
            (None, "no out_refund_no in the bill"),
            (Some("0"), "no out_refund_no in the bill"),
            (Some(" "), "no out_refund_no in the bill"),
            (
                Some("not ours!"),
                "out_refund_no is not one we could have made",
            ),
            (Some("RF_unknown"), "not in our store"),
        ] {
            let problem = refund_problem(&app, &row(no)).await.unwrap();
            assert_eq!(problem.as_deref(), Some(want), "{no:?}");
        }
    }

    /// The bill days of a refund are China days (UTC+8): one WeChat says succeeded at 23:59
    /// China time (15:59 UTC) is in that day's bill, not the next; one asked for the day
    /// before may be in that day's; one WeChat says succeeded just after midnight is in the
    /// next day's, even if we recorded it before (that bill is not ready yet then: the
    /// refund waits for it — it used to be looked for in the day reconciled instead, and
    /// reported missing).
    #[test]
    fn a_refund_is_looked_for_in_the_bills_of_its_china_days() {
        let at = |s: &str| crate::time::parse_beijing_datetime(s).unwrap();
        let mut r = repo::RefundRecord::new(
            OutRefundNo::parse("RF_00000001").unwrap(),
            OutTradeNo::parse("pay_00000001").unwrap(),
            crate::domain::AfterSaleId::parse("as1").unwrap(),
            crate::domain::Fen::new(100).unwrap(),
            at("2026-09-24 23:50:00"),
        );
        r.status = RefundStatus::Success;
        r.succeeded_at_ms = Some(at("2026-09-25 23:59:59"));
        r.success_recorded_at_ms = Some(at("2026-09-26 00:00:01"));
        let days =
            |r: &repo::RefundRecord| -> Vec<String> { refund_bill_days(r).into_iter().collect() };
        assert_eq!(days(&r), ["20260924", "20260925"]);
        // WeChat gave no time: the day we recorded it.
        r.succeeded_at_ms = None;
        assert_eq!(days(&r), ["20260924", "20260926"]);
        // WeChat's clock a little ahead at midnight: the day it says.
        r.succeeded_at_ms = Some(at("2026-09-27 00:00:02"));
        assert_eq!(days(&r), ["20260924", "20260927"]);
        // That day's bills are complete from 10:00 China time the next day.
        assert_eq!(
            bill_ready_at_ms("20260927"),
            Some(at("2026-09-28 10:00:00"))
        );
    }

    /// WeChat serves three months of bills: a day 89 days before today (China time) is
    /// asked for, one 90 days before is not (the shortest three calendar months are 89
    /// days), whatever the hour.
    #[test]
    fn a_bill_older_than_three_months_is_out_of_reach() {
        let at = |s: &str| crate::time::parse_beijing_datetime(s).unwrap();
        for now in [at("2026-05-01 00:00:00"), at("2026-05-01 23:59:59")] {
            assert!(bill_in_reach("20260201", now));
            assert!(!bill_in_reach("20260131", now));
            assert!(bill_in_reach("20260501", now));
        }
    }

    /// `reconcile/days_awaiting_bill` as an earlier version wrote it (`{day: epoch ms}`) reads
    /// as days awaiting both their bills; a day with one half checked is written as
    /// `{"at", "awaits"}` and reads back the same.
    #[test]
    fn a_day_noted_before_the_halves_were_apart_awaits_both_bills() {
        let old: BTreeMap<String, AwaitedDay> =
            serde_json::from_str(r#"{"20260925": 1790000000000}"#).unwrap();
        assert_eq!(old["20260925"], AwaitedDay::Whole(1_790_000_000_000));
        assert_eq!(old["20260925"].bills(), OwnBill::BOTH);
        let one = AwaitedDay::new(5, &[OwnBill::Refund], None);
        let text = serde_json::to_string(&one).unwrap();
        assert_eq!(text, r#"{"at":5,"awaits":"REFUND"}"#);
        assert_eq!(serde_json::from_str::<AwaitedDay>(&text).unwrap(), one);
        assert_eq!(one.with_at(7).bills(), [OwnBill::Refund]);
        assert_eq!(
            AwaitedDay::new(5, &OwnBill::BOTH, None),
            AwaitedDay::Whole(5)
        );
        // WeChat failing: since when, for one bill or both.
        let both = AwaitedDay::new(5, &OwnBill::BOTH, Some(3));
        let text = serde_json::to_string(&both).unwrap();
        assert_eq!(text, r#"{"at":5,"failing_since":3}"#);
        let back = serde_json::from_str::<AwaitedDay>(&text).unwrap();
        assert_eq!(back, both);
        assert_eq!(back.bills(), OwnBill::BOTH);
        assert_eq!(back.with_at(9).failing_since(), Some(3));
    }

    #[test]
    fn a_day_starts_at_midnight_china_time() {
        assert_eq!(
            beijing_day_start_ms("20260925"),
            crate::time::parse_beijing_datetime("2026-09-25 00:00:00")
        );
        assert_eq!(
            crate::time::beijing_date(beijing_day_start_ms("20260925").unwrap() + DAY_MS - 1),
            "20260925"
        );
    }
}
