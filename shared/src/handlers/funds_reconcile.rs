//! Reconciliation (对账) of one day's funds flows of a secondary-merchant shop
//! (`WX_FUND_TYPE=1`) with what we recorded.
//!
//! Why: the money of a fund_type 1 order never reaches our WeChat Pay merchant account, so
//! its bills ([`super::reconcile`]) do not list it: WeChat holds it in the shop's funds
//! account, whose day of flows (`shop/funds/scanorderflow` + `getorderflow`, WECHAT_SHOP.md
//! §14) is the only record that shows a payment push that never came, a refund made outside
//! our flow, or money for an order we never recorded.
//!
//! Checks, each within one day (China time, the flows' `date`):
//! * every order income flow (`busi_type` 订单, `flow_type` 收入) names an order of ours
//!   (`request_no`) that we recorded paid, fund_type 1, with exactly the flow's amount — and
//!   only one such flow names it. Which number WeChat writes in `request_no` is UNVERIFIED
//!   (§14.2: "order/after-sale/withdrawal no."): our `out_order_id` (= `out_trade_no`; the
//!   sandbox writes it) or WeChat's `order_id` are both accepted; WeChat's id is matched
//!   against the orders we recorded paid that day (no index by WeChat's id), so an order
//!   paid another day and named by WeChat's id reads as unknown;
//! * every after-sale expense flow (售后, 支出) names an after-sale of ours, of a fund_type 1
//!   order, that we recorded REFUNDED with exactly that amount, once. Whose after-sale
//!   number it names is UNVERIFIED too: ours (`out_aftersale_id`), WeChat's `aftersale_id`
//!   (an imported one by its id; else WeChat's after-sale is read back, `ecaftersale/get`,
//!   to find ours — the sandbox writes WeChat's), or the order's number (then a refunded
//!   after-sale of that order with that amount not matched by another flow);
//! * the other way: every fund_type 1 order we recorded paid that day has its income flow
//!   (`missing_flow`). Read through the status index by creation time (an order is paid
//!   within [`super::reconcile::PAID_AFTER_CREATED_MAX_MS`] of its creation), never a scan of
//!   every order. Until 10:00 China time of the next day (asked for by hand the same day)
//!   such an order is `orders_awaiting_flows`, not missing — the same rule as the bills
//!   (UNVERIFIED when WeChat has booked the whole of a day);
//! * and every after-sale of a fund_type 1 order we recorded REFUNDED that day has its
//!   expense flow (`missing_refund_flow`, naming the after-sale; `aftersales_awaiting_flows`
//!   until 10:00 the next day). Read through the status index, whose REFUNDED listing is
//!   sorted by when we recorded the refund ([`AfterSale::refunded_at_ms`],
//!   [`repo::aftersales_refunded_between`]): never a scan. After-sales refunded before that
//!   time was kept, and abnormal refunds a person settled outside WeChat
//!   ([`AfterSale::refunded_by_hand`]), carry no such time and are not looked for;
//! * midnight: an order paid (or an after-sale recorded refunded) in the last hour of the
//!   day ([`NEXT_DAY_MARGIN_MS`]) whose flow is not among the day's is not missing on its
//!   day — WeChat may have booked the flow after midnight (UNVERIFIED how late) — but
//!   awaiting the next day's flows: the schedule hands it on (kv
//!   `funds_reconcile/next_day/{next day}`, [`NextDay`]) and the next day's run, once it has
//!   read all of that day's flows, finds it among them or reports it missing then (keyed by
//!   that day). The other way round, an order or after-sale of the next day a flow of this
//!   day names (a refund WeChat booked before midnight that we recorded after it) is handed
//!   on as having its flow. Only the next day: one recorded refunded two days or more after
//!   WeChat refunded it (both its pushes lost, found by the sweep) was an `aftersale_flow`
//!   mismatch on the flow's day ("stored as REFUNDING") and reads as missing on the day we
//!   recorded it too — no longer: an expense flow naming an after-sale of ours not recorded
//!   refunded on the flow's day is noted (kv `funds_reconcile/refund_flow/{aftersale_id}`),
//!   and the day we record the refund finds it there (`aftersales_flowed_earlier`), one page
//!   in all. By hand hands on too, once it has read all of a day's flows (it used to hand
//!   nothing on: a day done by hand and the next by the schedule lost the last hour's
//!   orders); a day checked before the day before was does not know what that hands on;
//! * withdrawal flows (提现) are listed (`withdrawals`), and flows of any other kind (a fee,
//!   say) in `other_flows`: neither is a mismatch.
//!
//! Amounts are yuan strings parsed exactly into fen ([`Fen::from_yuan_str`]): an amount with
//! more than two decimals, a sign or anything else is a mismatch of its own
//! (`unreadable_amount`), the other flows still checked.
//!
//! Bounds: the flows are read in pages of [`FLOW_PAGE_SIZE`], at most [`MAX_FLOWS_PER_RUN`]
//! a run (and one `ecaftersale/get` at most per after-sale flow). A day with more is
//! checked in part: `flows_unchecked` says how many were not, `next_from` where to go on
//! (`POST /admin/orderSync {action: "reconcile", bill_date, funds_from: next_from}`), and
//! the orders no flow read names are `orders_awaiting_flows` (only a run that read all of
//! the day's flows can say one is missing). By hand, a day read in part keeps what its flows
//! named (kv `funds_reconcile/by_hand/{date}`, a day), and the request from its `next_from`
//! goes on with it — or with the schedule's progress of the day stopped at the same flow —
//! so the request that reads the last flows checks the other way as a whole day's does; a
//! `funds_from` no request (nor the schedule) stopped at cannot: what none of its flows
//! names is awaiting, saying to reconcile the day from 0. A WeChat error fails the run
//! (`FUNDS_UNAVAILABLE`, retry shortly; `FUNDS_REFUSED`) before anything is kept; a run cut
//! short by its deadline keeps nothing either.
//!
//! The schedule goes through a busy day by itself, across its runs (every 5 minutes): a
//! shop with more than ~300 orders a day has more flows than a run reads, and used to be
//! paged every day (`flows_unchecked`) with its orders never checked the other way. Its kv
//! entry `funds_reconcile/progress` ([`Progress`]) holds the day, `next_from` and what the
//! flows read so far named — the orders (for "only one flow names it" across pages, and the
//! other-way check at the end) and the after-sales (the same "once"). Each run reads up to
//! [`MAX_FLOWS_PER_RUN`] flows from there, keeps their mismatches as events at once (keyed
//! by day and flow: kept once whichever run finds them) and saves the progress with a
//! versioned write; only the run that reads the last page checks the other way
//! (`missing_flow`, `missing_refund_flow`) with every name read, hands on what the next
//! day must check, then moves the mark and deletes the progress. A run cut short or failed
//! saves nothing new: the next reads the same flows again. The saved names are bounded: a
//! day past [`MAX_TRACKED_FLOWS`] flows (or whose progress would pass 200 KB, DynamoDB's
//! item being 400 KB) is checked in part as before — one `flows_unchecked` event, paged
//! once, saying how to go on by hand — and the mark moves on. UNVERIFIED: that WeChat lists a past day's flows in the same order from run to run;
//! a flow listed again across a page boundary would read as a second flow for its order.
//!
//! By hand, `reconcile` (`POST /admin/orderSync`) adds this as its `funds` section when the
//! shop is in fund_type 1 mode — answered even when the bills fail (then `bills_error`
//! beside it, the answer 200: the bills of a fund_type 1 shop list none of its orders).
//! The schedule ([`run_daily`], its own `funds` phase) does yesterday once a day after
//! 10:00 China time (its own mark; missed days, up to a week, first), keeps each mismatch
//! as a `funds_mismatch` event and pages (`MoneyNeedsAPerson`) once per new one, as
//! [`super::reconcile`] does for the bills.

use crate::app::App;
use crate::domain::{AfterSale, AfterSaleId, AfterSaleStatus, Fen, FundType, Order, OutTradeNo};
use crate::http::ApiError;
use crate::shop::funds::FundsFlowText;
use crate::shop::{AfterSaleKey, WxError};
use crate::store::{kv, repo};
use crate::time::{beijing_day_start_ms, Deadline, BEIJING_OFFSET_MS, DAY_MS, HOUR_MS};
use std::collections::{HashMap, HashSet};

/// Event source of a funds mismatch the schedule found.
pub const FUNDS_MISMATCH_EVENTS: &str = "funds_mismatch";

/// `scanorderflow` takes pages of at most 100 ids (WECHAT_SHOP.md §14.1).
pub const FLOW_PAGE_SIZE: usize = 100;

/// The most flows one run reads (`getorderflow` calls): a whole number of pages, small
/// enough for the schedule's share of a Lambda run and an admin request's 25 s.
pub const MAX_FLOWS_PER_RUN: usize = 300;

/// The kv mark: the last `date` the schedule reconciled the funds of.
const MARK: &str = "funds_reconcile/last_date";
const MARK_TTL_SECS: i64 = 90 * 24 * 3600;

/// The kv entry of a day the schedule reads across runs ([`Progress`]).
const PROGRESS: &str = "funds_reconcile/progress";
/// A day's progress outlives the week the schedule goes back for missed days.
const PROGRESS_TTL_SECS: i64 = (CATCH_UP_DAYS + 1) * 24 * 3600;

/// The most flows of a day the schedule goes through across runs: past it the day is
/// checked in part, as by hand (one `flows_unchecked` event, a person pages on). Each flow
/// read names at most one order (≤ 32 characters) or after-sale (≤ 64) kept in
/// [`Progress`]: 5,000 of our order numbers (28 characters) are ~170 KB, well under
/// DynamoDB's 400 KB item.
pub const MAX_TRACKED_FLOWS: usize = 5_000;
/// The largest [`Progress`] kept (its JSON): past it (long after-sale numbers) the day is
/// checked in part as past [`MAX_TRACKED_FLOWS`].
const PROGRESS_MAX_BYTES: usize = 200_000;

/// Days the schedule goes back to do ones it missed (as the bills: a week).
const CATCH_UP_DAYS: i64 = 7;

/// The kv entry (`{NEXT_DAY}{yyyyMMdd}`) of what the day before hands on to that day
/// ([`NextDay`]), written by the schedule once it has read all of the day before's flows.
const NEXT_DAY: &str = "funds_reconcile/next_day/";

/// The kv entry (`{FLOW_BEFORE}{aftersale_id}`) of an after-sale an expense flow named before
/// we recorded it refunded that day (WeChat refunded it, both its pushes lost): `{"date",
/// "funds_flow_id"}`, so the day we record the refund finds its flow was on that earlier day
/// (checked there) instead of reading it as missing and paging a second time.
const FLOW_BEFORE: &str = "funds_reconcile/refund_flow/";

/// The kv entry (`{BY_HAND}{yyyyMMdd}`) of a day read by hand in part: what its flows named
/// ([`Progress`]), for the request that goes on from its `next_from`. A day.
const BY_HAND: &str = "funds_reconcile/by_hand/";
const BY_HAND_TTL_SECS: i64 = 24 * 3600;

/// An order paid (or an after-sale recorded refunded) this close to the end of its day whose
/// flow is not among the day's is looked for among the next day's flows before it is
/// missing: WeChat may book it after midnight. UNVERIFIED how long after a payment or refund
/// WeChat books its flow: an hour is a guess.
pub const NEXT_DAY_MARGIN_MS: i64 = HOUR_MS;

/// The most orders (and, apart, after-sales) handed on to the next day ([`NextDay`]): past
/// it, one of the day's last hour without a flow is missing on its day, as before.
const MAX_CARRIED: usize = 1_000;

/// A day's flows are taken as complete from 10:00 China time of the next day, as its bills
/// are (UNVERIFIED for the funds account).
const READY_HOUR: i64 = 10;

/// In [`Run`]'s seen maps: named by a flow of the day before ([`NextDay`]).
const DAY_BEFORE: &str = "(the day before)";

const ORDER: &str = "订单";
const AFTERSALE: &str = "售后";
const WITHDRAWAL: &str = "提现";
const INCOME: &str = "收入";
const EXPENSE: &str = "支出";

/// A flow (or an order or after-sale of ours) that does not match.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FlowMismatch {
    /// `order_flow`, `aftersale_flow`, `unreadable_amount`, `missing_flow` (an order of ours
    /// without its income flow) or `missing_refund_flow` (an after-sale of ours recorded
    /// refunded without its expense flow).
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub funds_flow_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_no: Option<String>,
    /// The amount as WeChat wrote it (yuan).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out_trade_no: Option<String>,
    /// Our after-sale (`missing_refund_flow`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aftersale_id: Option<String>,
    pub problem: String,
}

/// A flow listed, not checked against a record of ours (a withdrawal, a fee).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FlowView {
    pub funds_flow_id: String,
    pub bookkeeping_time: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub flow_type: String,
    pub busi_type: Option<String>,
    pub request_no: Option<String>,
    /// `None` when the amount could not be read (then also an `unreadable_amount`).
    pub amount_fen: Option<i64>,
}

/// What a funds reconciliation of one day found.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FundsReconciliation {
    pub date: String,
    /// The day's flows as WeChat counts them (`total_num`).
    pub flows_total: usize,
    /// The first flow read (0, or the `funds_from` asked for).
    pub flows_from: usize,
    pub flows_checked: usize,
    pub order_flows_checked: usize,
    pub aftersale_flows_checked: usize,
    /// Our fund_type 1 orders recorded paid that day, looked for among the flows.
    pub paid_here_checked: usize,
    /// Our after-sales of fund_type 1 orders recorded REFUNDED that day, looked for among the
    /// flows (their expense flow).
    pub refunds_checked: usize,
    /// Orders and after-sales of the day before, of its last hour ([`NEXT_DAY_MARGIN_MS`]),
    /// whose flow was not among its flows: looked for among this day's ([`NextDay`]).
    pub carried_checked: usize,
    pub mismatches: Vec<FlowMismatch>,
    pub withdrawals: Vec<FlowView>,
    pub other_flows: Vec<FlowView>,
    /// Our orders paid that day no flow read names while that says nothing yet: the day's
    /// flows not all read (`flows_unchecked`), or the day not over (before 10:00 China time
    /// the next day). Not mismatches; each `problem` says when to ask again.
    pub orders_awaiting_flows: Vec<FlowMismatch>,
    /// Our after-sales recorded refunded that day no flow read names, while that says
    /// nothing yet (as `orders_awaiting_flows`).
    pub aftersales_awaiting_flows: Vec<FlowMismatch>,
    /// Our after-sales recorded refunded that day whose expense flow a day before named
    /// (`refund_flow_earlier`: WeChat refunded them before we recorded it, both pushes
    /// lost): checked with that day's flows — an `aftersale_flow` mismatch there, "stored as
    /// …" — so not missing here. Not mismatches.
    pub aftersales_flowed_earlier: Vec<FlowMismatch>,
    /// Flows of the day past this run's cap ([`MAX_FLOWS_PER_RUN`]), not read.
    pub flows_unchecked: usize,
    /// Where to go on (`funds_from`) when `flows_unchecked` > 0.
    pub next_from: Option<usize>,
}

impl FundsReconciliation {
    pub fn mismatch_count(&self) -> usize {
        self.mismatches.len()
    }
}

fn ready_at_ms(start_ms: i64) -> i64 {
    start_ms + DAY_MS + READY_HOUR * HOUR_MS
}

fn wx_fail(e: WxError) -> ApiError {
    if e.is_retryable() {
        ApiError::unavailable(
            "FUNDS_UNAVAILABLE",
            format!(
                "WeChat did not give the day's funds flows ({e}); nothing was kept: run the \
                 reconciliation again shortly"
            ),
        )
    } else {
        ApiError::new(
            http::StatusCode::BAD_GATEWAY,
            "FUNDS_REFUSED",
            format!(
                "WeChat refused a funds flow call ({e}); nothing was kept: check the shop's \
                 funds access (WX_FUND_TYPE=1, its secondary-merchant account) and run it again"
            ),
        )
    }
}

/// Parses a yuan amount as WeChat writes it (`"19.90"`) into fen, exactly.
fn parse_amount(text: &str) -> Result<Fen, String> {
    Fen::from_yuan_str(text.trim()).map_err(|_| {
        let shown: String = text.chars().take(32).collect();
        format!("amount `{shown}` is not yuan with at most two decimals")
    })
}

/// The fund_type 1 orders we recorded paid on the day starting at `start_ms`
/// ([`super::reconcile::each_paid_on_day`]). `None` when `deadline` passed first.
async fn paid_on_day(
    app: &App,
    start_ms: i64,
    deadline: Deadline,
) -> Result<Option<Vec<Order>>, ApiError> {
    let mut out = Vec::new();
    let complete = super::reconcile::each_paid_on_day(
        app,
        FundType::SecondaryMerchant,
        start_ms,
        deadline,
        |o| out.push(o),
    )
    .await?;
    Ok(complete.then_some(out))
}

/// The after-sales of fund_type 1 orders we recorded REFUNDED on the day starting at
/// `start_ms`: the status index by the time they were refunded
/// ([`repo::aftersales_refunded_between`]), never a scan; each one's order read once. `None`
/// when `deadline` passed first.
async fn refunded_on_day(
    app: &App,
    start_ms: i64,
    deadline: Deadline,
) -> Result<Option<Vec<AfterSale>>, ApiError> {
    let store = app.store.as_ref();
    let mut fund_type_of: HashMap<String, bool> = HashMap::new();
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        if deadline.passed() {
            return Ok(None);
        }
        let (page, next) =
            repo::aftersales_refunded_between(store, start_ms, start_ms + DAY_MS - 1, cursor)
                .await?;
        for a in page {
            let no = a.out_trade_no.as_str().to_owned();
            let ours = match fund_type_of.get(&no) {
                Some(f) => *f,
                None => {
                    let f = repo::get_order(store, &a.out_trade_no)
                        .await?
                        .is_some_and(|o| o.value.fund_type == FundType::SecondaryMerchant);
                    fund_type_of.insert(no, f);
                    f
                }
            };
            if ours {
                out.push(a);
            }
        }
        match next {
            Some(n) => cursor = Some(n),
            None => return Ok(Some(out)),
        }
    }
}

/// One run's state: the day's orders of ours, and what the flows read so far claimed.
struct Run<'a> {
    app: &'a App,
    /// The day's start (epoch ms).
    start_ms: i64,
    day_orders: Vec<Order>,
    /// `day_orders` by our number and by WeChat's order id (both as text).
    day_index: HashMap<String, usize>,
    /// Orders named by an income flow: `out_trade_no` → the flow's id (empty: a flow read
    /// by an earlier run of the day, [`Progress`]).
    orders_seen: HashMap<String, String>,
    /// After-sales matched by an expense flow: after-sale id → the flow's id (as above).
    aftersales_seen: HashMap<String, String>,
    /// Orders paid, and after-sales recorded refunded, on the next day that this day's flows
    /// named: they have their flow ([`NextDay`]).
    next_day_orders: Vec<String>,
    next_day_aftersales: Vec<String>,
    /// After-sales an expense flow of the day named that we had not recorded refunded that
    /// day (not yet, or on another day), with the flow's id: kept in `{FLOW_BEFORE}…`.
    flows_before_refund: Vec<(String, String)>,
    out: FundsReconciliation,
}

impl Run<'_> {
    fn mismatch(
        &mut self,
        kind: &'static str,
        f: &FundsFlowText,
        out_trade_no: Option<String>,
        problem: String,
    ) {
        tracing::error!(date = %self.out.date, funds_flow_id = %f.funds_flow_id, kind, problem = %problem, "funds flow mismatch");
        self.out.mismatches.push(FlowMismatch {
            kind,
            funds_flow_id: Some(f.funds_flow_id.clone()),
            request_no: f.request_no.clone(),
            amount: Some(f.amount.clone()),
            out_trade_no,
            problem,
            ..FlowMismatch::default()
        });
    }

    /// The order an income flow's `request_no` names: one paid that day by our number or
    /// WeChat's id, else any of ours by our number.
    async fn order_named(&self, no: &str) -> Result<Option<Order>, ApiError> {
        let today = self.day_index.get(no).and_then(|i| self.day_orders.get(*i));
        if let Some(o) = today {
            return Ok(Some(o.clone()));
        }
        let Ok(n) = OutTradeNo::parse(no) else {
            return Ok(None);
        };
        Ok(repo::get_order(self.app.store.as_ref(), &n)
            .await?
            .map(|v| v.value))
    }

    async fn check_order_income(
        &mut self,
        f: &FundsFlowText,
        amount: Result<Fen, String>,
    ) -> Result<(), ApiError> {
        self.out.order_flows_checked += 1;
        let no = f.request_no.as_deref().map(str::trim).unwrap_or("");
        let order = if no.is_empty() {
            None
        } else {
            self.order_named(no).await?
        };
        let Some(o) = order else {
            let problem = if no.is_empty() {
                "an order income flow naming no order (no request_no)".to_owned()
            } else {
                format!(
                    "request_no {no} is no order of ours: not one of our order numbers, nor \
                     WeChat's order id of one we recorded paid this day"
                )
            };
            self.mismatch("order_flow", f, None, problem);
            return Ok(());
        };
        let ours = o.out_trade_no.as_str().to_owned();
        if let Some(other) = self
            .orders_seen
            .insert(ours.clone(), f.funds_flow_id.clone())
        {
            self.mismatch(
                "order_flow",
                f,
                Some(ours),
                format!(
                    "a second income flow for this order (the first: {})",
                    Self::earlier(&other)
                ),
            );
            return Ok(());
        }
        if o.paid_at_ms.is_some_and(|t| self.of_next_day(t)) {
            self.next_day_orders.push(ours.clone());
        }
        let Ok(amount) = amount else {
            // Reported as `unreadable_amount` already; the order has its flow.
            return Ok(());
        };
        let problem = if o.fund_type != FundType::SecondaryMerchant {
            Some("a direct (fund_type 0) order here: its money went to our WeChat Pay account, not the funds account".to_owned())
        } else if !o.status.is_paid() {
            Some(format!(
                "stored as {}: WeChat took its payment and we never recorded it (a lost \
                 payment push?)",
                o.status.as_str()
            ))
        } else if amount != o.total {
            Some(format!(
                "amount {} fen in the flow, {} fen stored",
                amount.get(),
                o.total.get()
            ))
        } else {
            None
        };
        if let Some(p) = problem {
            self.mismatch("order_flow", f, Some(ours), p);
        }
        Ok(())
    }

    /// The after-sale of ours an expense flow's `request_no` names (see the module doc).
    /// `Err(problem)` when it names none.
    async fn aftersale_named(
        &mut self,
        no: &str,
        amount: Option<Fen>,
    ) -> Result<Result<AfterSale, String>, ApiError> {
        let store = self.app.store.as_ref();
        if let Ok(id) = AfterSaleId::parse(no) {
            if let Some(a) = repo::get_aftersale(store, &id).await? {
                return Ok(Ok(a.value));
            }
        }
        if let Ok(wx_id) = no.parse::<u64>() {
            if let Ok(id) = AfterSaleId::parse(format!("WXAS{wx_id}")) {
                if let Some(a) = repo::get_aftersale(store, &id).await? {
                    return Ok(Ok(a.value));
                }
            }
            let wx = match self.app.wx.ecaftersale_get(&AfterSaleKey::Id(wx_id)).await {
                Ok(wx) => Some(wx),
                Err(e) if e.is_retryable() => return Err(wx_fail(e)),
                Err(e) => {
                    tracing::warn!(request_no = no, error = %e, "no after-sale at WeChat by this id");
                    None
                }
            };
            if let Some(wx) = wx {
                if let Some(id) = wx
                    .out_aftersale_id
                    .as_deref()
                    .and_then(|s| AfterSaleId::parse(s).ok())
                {
                    if let Some(a) = repo::get_aftersale(store, &id).await? {
                        return Ok(Ok(a.value));
                    }
                }
                if let Some(order) = wx
                    .out_order_id
                    .as_deref()
                    .and_then(|s| OutTradeNo::parse(s).ok())
                {
                    let of_order = repo::aftersales_of_order(store, &order).await?;
                    if let Some(a) = of_order
                        .into_iter()
                        .find(|a| a.value.wx_aftersale_id == Some(wx_id))
                    {
                        return Ok(Ok(a.value));
                    }
                    return Ok(Err(format!(
                        "WeChat's after-sale {wx_id} of order {order} is not recorded here \
                         (a refund made outside our flow?)"
                    )));
                }
            }
        }
        if let Ok(order) = OutTradeNo::parse(no) {
            if repo::get_order(store, &order).await?.is_some() {
                let of_order = repo::aftersales_of_order(store, &order).await?;
                let unmatched = |a: &AfterSale| !self.aftersales_seen.contains_key(a.id.as_str());
                let refunded: Vec<AfterSale> = of_order
                    .into_iter()
                    .map(|a| a.value)
                    .filter(|a| a.status == AfterSaleStatus::Refunded && unmatched(a))
                    .collect();
                let same = refunded.iter().find(|a| Some(a.amount) == amount);
                return Ok(match same.or(refunded.first()) {
                    Some(a) => Ok(a.clone()),
                    None => Err(format!(
                        "order {order} has no refunded after-sale here this flow could be (a \
                         refund made outside our flow, or not recorded yet?)"
                    )),
                });
            }
        }
        Ok(Err(format!(
            "request_no {no} is no after-sale or order of ours"
        )))
    }

    async fn check_aftersale_expense(
        &mut self,
        f: &FundsFlowText,
        amount: Result<Fen, String>,
    ) -> Result<(), ApiError> {
        self.out.aftersale_flows_checked += 1;
        let no = f
            .request_no
            .as_deref()
            .map(str::trim)
            .unwrap_or("")
            .to_owned();
        if no.is_empty() {
            self.mismatch(
                "aftersale_flow",
                f,
                None,
                "an after-sale expense flow naming no after-sale (no request_no)".into(),
            );
            return Ok(());
        }
        let a = match self
            .aftersale_named(&no, amount.as_ref().ok().copied())
            .await?
        {
            Ok(a) => a,
            Err(problem) => {
                self.mismatch("aftersale_flow", f, None, problem);
                return Ok(());
            }
        };
        let ours = Some(a.out_trade_no.as_str().to_owned());
        if let Some(other) = self
            .aftersales_seen
            .insert(a.id.as_str().to_owned(), f.funds_flow_id.clone())
        {
            self.mismatch(
                "aftersale_flow",
                f,
                ours,
                format!(
                    "a second expense flow for after-sale {} (the first: {})",
                    a.id,
                    Self::earlier(&other)
                ),
            );
            return Ok(());
        }
        if a.refunded_at_ms.is_some_and(|t| self.of_next_day(t)) {
            self.next_day_aftersales.push(a.id.as_str().to_owned());
        }
        let end = self.start_ms + DAY_MS;
        if !a
            .refunded_at_ms
            .is_some_and(|t| (self.start_ms..end).contains(&t))
        {
            self.flows_before_refund
                .push((a.id.as_str().to_owned(), f.funds_flow_id.clone()));
        }
        let Ok(amount) = amount else {
            return Ok(());
        };
        let order = repo::get_order(self.app.store.as_ref(), &a.out_trade_no).await?;
        let problem = if order
            .as_ref()
            .is_none_or(|o| o.value.fund_type != FundType::SecondaryMerchant)
        {
            Some(format!(
                "after-sale {} is of an order here that is not fund_type 1",
                a.id
            ))
        } else if a.status != AfterSaleStatus::Refunded {
            Some(format!(
                "after-sale {} is stored as {}: WeChat refunded it and we have not recorded \
                 the refund",
                a.id,
                a.status.as_str()
            ))
        } else if amount != a.amount {
            Some(format!(
                "after-sale {}: amount {} fen in the flow, {} fen refunded here",
                a.id,
                amount.get(),
                a.amount.get()
            ))
        } else {
            None
        };
        if let Some(p) = problem {
            self.mismatch("aftersale_flow", f, ours, p);
        }
        Ok(())
    }

    /// Whether `at_ms` falls within the next day (China time).
    fn of_next_day(&self, at_ms: i64) -> bool {
        let end = self.start_ms + DAY_MS;
        (end..end + DAY_MS).contains(&at_ms)
    }

    fn earlier(flow_id: &str) -> &str {
        if flow_id.is_empty() {
            "read by an earlier run of the day"
        } else if flow_id == DAY_BEFORE {
            "a flow of the day before"
        } else {
            flow_id
        }
    }

    async fn check(&mut self, f: FundsFlowText) -> Result<(), ApiError> {
        self.out.flows_checked += 1;
        let amount = parse_amount(&f.amount);
        if let Err(problem) = &amount {
            self.mismatch("unreadable_amount", &f, None, problem.clone());
        }
        let busi = f.busi_type.as_deref().map(str::trim);
        let direction = f.flow_type.trim();
        match (busi, direction) {
            (Some(ORDER), INCOME) => self.check_order_income(&f, amount).await?,
            (Some(AFTERSALE), EXPENSE) => self.check_aftersale_expense(&f, amount).await?,
            (b, _) => {
                let view = FlowView {
                    funds_flow_id: f.funds_flow_id.clone(),
                    bookkeeping_time: f.bookkeeping_time.clone(),
                    kind: f.kind.clone(),
                    flow_type: f.flow_type.clone(),
                    busi_type: f.busi_type.clone(),
                    request_no: f.request_no.clone(),
                    amount_fen: amount.ok().map(Fen::get),
                };
                if b == Some(WITHDRAWAL) {
                    self.out.withdrawals.push(view);
                } else {
                    self.out.other_flows.push(view);
                }
            }
        }
        Ok(())
    }
}

/// Reconciles the funds flows of `date` (`yyyyMMdd`) from flow `from` (a multiple of
/// [`FLOW_PAGE_SIZE`]; 0 for the whole day). `Ok(None)` when `deadline` passed first
/// (nothing is kept; run it again). A WeChat error fails it (`FUNDS_UNAVAILABLE`, retry
/// shortly; `FUNDS_REFUSED`).
pub async fn reconcile_funds(
    app: &App,
    date: &str,
    from: usize,
    deadline: Deadline,
) -> Result<Option<FundsReconciliation>, ApiError> {
    Ok(reconcile_part(app, date, from, None, deadline)
        .await?
        .map(|(found, _, _)| found))
}

/// What the schedule keeps of a day it reads across runs (kv [`PROGRESS`]; by hand, kv
/// `{BY_HAND}{date}`): where the next run goes on, and what the flows read so far named —
/// the orders (for "only one flow names it" and, after the last page, the other way: paid
/// here, no flow) and the after-sales (the same "once", the other way — refunded here, no
/// flow — and which of an order's refunded after-sales a flow naming the order can still
/// be); and of those, the ones of the next day ([`NextDay`]). Names only, not the flows'
/// ids: a second flow naming one reads "the first: read by an earlier run of the day".
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Progress {
    date: String,
    next_from: usize,
    orders: Vec<String>,
    aftersales: Vec<String>,
    #[serde(default)]
    orders_next_day: Vec<String>,
    #[serde(default)]
    aftersales_next_day: Vec<String>,
}

/// What a day whose flows were all read hands on to the next (kv `{NEXT_DAY}{next date}`,
/// written by the schedule): the orders paid, and after-sales recorded refunded, in its
/// last hour ([`NEXT_DAY_MARGIN_MS`]) that no flow of it names — WeChat may have booked
/// their flow after midnight: the next day's flows must name them, else they are missing
/// then — and the orders and after-sales of the next day its flows named (WeChat booked
/// their flow before we recorded them: a refund recorded after midnight, say), which have
/// their flow. Bounded by [`MAX_CARRIED`] a list.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct NextDay {
    orders: Vec<String>,
    aftersales: Vec<String>,
    orders_seen: Vec<String>,
    aftersales_seen: Vec<String>,
}

impl NextDay {
    fn is_empty(&self) -> bool {
        self.orders.is_empty()
            && self.aftersales.is_empty()
            && self.orders_seen.is_empty()
            && self.aftersales_seen.is_empty()
    }
}

/// What the day before handed on to `date` ([`NextDay`]): empty when nothing was (the
/// schedule has not read all of it, or nothing was left), or it does not parse.
async fn handed_on(app: &App, date: &str) -> Result<NextDay, ApiError> {
    let entry = kv::get(app.store.as_ref(), &format!("{NEXT_DAY}{date}")).await?;
    Ok(entry
        .and_then(|e| serde_json::from_str(&e.value).ok())
        .unwrap_or_default())
}

/// Hands `next` on to the day after `date` ([`NextDay`]); written over whatever a run of
/// `date` wrote before, by hand or by the schedule (the same day read again writes the same;
/// read later, what its flows say now — an empty `next` too, once something was handed).
async fn hand_on(app: &App, date: &str, next: &NextDay) -> Result<(), ApiError> {
    let Some(start) = beijing_day_start_ms(date) else {
        return Ok(());
    };
    let key = format!("{NEXT_DAY}{}", crate::time::beijing_date(start + DAY_MS));
    let store = app.store.as_ref();
    let text = serde_json::to_string(next).map_err(|e| ApiError::internal(e.to_string()))?;
    let until = app.clock.now_secs() + PROGRESS_TTL_SECS;
    let before = kv::get(store, &key).await?;
    // Nothing to hand on and nothing handed before; or the same as before.
    if (next.is_empty() && before.is_none()) || before.as_ref().is_some_and(|b| b.value == text) {
        return Ok(());
    }
    if !kv::put_if(store, &key, &text, until, before.map(|b| b.version)).await? {
        return Err(ApiError::unavailable(
            "RECONCILE_BUSY",
            format!(
                "what {date} hands on to the next day ({key}) changed under this run; the next \
                 run writes it again"
            ),
        ));
    }
    Ok(())
}

/// Notes that an expense flow (`flow`) of `date` named `aftersale` before we recorded it
/// refunded that day ([`FLOW_BEFORE`]); the earliest such day is kept.
async fn note_flow_before(
    app: &App,
    aftersale: &str,
    date: &str,
    flow: &str,
) -> Result<(), ApiError> {
    let store = app.store.as_ref();
    let key = format!("{FLOW_BEFORE}{aftersale}");
    let text = serde_json::json!({"date": date, "funds_flow_id": flow}).to_string();
    let before = kv::get(store, &key).await?;
    if let Some(b) = &before {
        if b.value == text || noted_before(b, date).is_some() {
            return Ok(());
        }
    }
    let until = app.clock.now_secs() + MARK_TTL_SECS;
    // Lost to another run meanwhile: it noted the same flow.
    kv::put_if(store, &key, &text, until, before.map(|b| b.version)).await?;
    Ok(())
}

/// The day before `date` (and the flow) an expense flow named `aftersale` before we recorded
/// it refunded ([`FLOW_BEFORE`]), if one did.
async fn flow_before(
    app: &App,
    aftersale: &str,
    date: &str,
) -> Result<Option<(String, String)>, ApiError> {
    let key = format!("{FLOW_BEFORE}{aftersale}");
    Ok(kv::get(app.store.as_ref(), &key)
        .await?
        .and_then(|entry| noted_before(&entry, date)))
}

/// The day and flow a [`FLOW_BEFORE`] entry notes, if that day is before `date`.
fn noted_before(entry: &kv::KvEntry, date: &str) -> Option<(String, String)> {
    let v: serde_json::Value = serde_json::from_str(&entry.value).unwrap_or_default();
    let on = v["date"].as_str().unwrap_or_default().to_owned();
    let flow = v["funds_flow_id"].as_str().unwrap_or_default().to_owned();
    // `yyyyMMdd` orders as text.
    (!on.is_empty() && on.as_str() < date).then_some((on, flow))
}

/// Why an order or after-sale of ours that no flow read names is not (yet) missing — or
/// that it is (`Missing`).
enum Unmatched {
    /// Not all of the day's flows were read.
    NotAllRead,
    /// Of the day's last hour: looked for among the next day's flows.
    NextDay,
    /// The day's flows are not complete yet (before 10:00 China time of the next day).
    NotReady,
    Missing,
}

/// [`reconcile_funds`], going on from `earlier` (the flows before `from` read by earlier
/// runs: then a run that reads to the end has read all of the day's); also what the flows
/// read so far (`earlier`'s and this run's) named, for the next run, and — all of the day's
/// flows read — what the day hands on to the next ([`NextDay`]).
async fn reconcile_part(
    app: &App,
    date: &str,
    from: usize,
    earlier: Option<&Progress>,
    deadline: Deadline,
) -> Result<Option<(FundsReconciliation, Progress, Option<NextDay>)>, ApiError> {
    let Some(start_ms) = beijing_day_start_ms(date) else {
        return Err(super::reconcile::bad_bill_date(app.clock.now_ms()));
    };
    if from % FLOW_PAGE_SIZE != 0 || from > 1_000_000 {
        return Err(ApiError::bad_request(
            "BAD_FUNDS_FROM",
            format!(
                "funds_from is a multiple of {FLOW_PAGE_SIZE} up to 1000000: the next_from an \
                 earlier reconciliation of the day answered"
            ),
        ));
    }
    let Some(day_orders) = paid_on_day(app, start_ms, deadline).await? else {
        return Ok(None);
    };
    let carried = handed_on(app, date).await?;
    let mut day_index = HashMap::new();
    for (i, o) in day_orders.iter().enumerate() {
        day_index.insert(o.out_trade_no.as_str().to_owned(), i);
        if let Some(id) = o.wx_order_id {
            day_index.entry(id.to_string()).or_insert(i);
        }
    }
    let named = |names: Option<&Vec<String>>, before: &[String]| -> HashMap<String, String> {
        let mut seen: HashMap<String, String> = names
            .into_iter()
            .flatten()
            .map(|n| (n.clone(), String::new()))
            .collect();
        seen.extend(before.iter().map(|n| (n.clone(), DAY_BEFORE.to_owned())));
        seen
    };
    let mut run = Run {
        app,
        start_ms,
        day_orders,
        day_index,
        orders_seen: named(earlier.map(|p| &p.orders), carried.orders_seen.as_slice()),
        aftersales_seen: named(
            earlier.map(|p| &p.aftersales),
            carried.aftersales_seen.as_slice(),
        ),
        next_day_orders: earlier
            .map(|p| p.orders_next_day.clone())
            .unwrap_or_default(),
        next_day_aftersales: earlier
            .map(|p| p.aftersales_next_day.clone())
            .unwrap_or_default(),
        flows_before_refund: Vec::new(),
        out: FundsReconciliation {
            date: date.to_owned(),
            flows_from: from,
            ..FundsReconciliation::default()
        },
    };
    let mut ids_seen: HashSet<String> = HashSet::new();
    let mut next = from;
    let page_size = u32::try_from(FLOW_PAGE_SIZE).unwrap_or(100);
    loop {
        if next - from >= MAX_FLOWS_PER_RUN {
            break;
        }
        if deadline.passed() {
            return Ok(None);
        }
        let page_num = u32::try_from(next / FLOW_PAGE_SIZE + 1).unwrap_or(u32::MAX);
        let page = app
            .wx
            .funds_scan_order_flow(date, page_num, page_size)
            .await
            .map_err(wx_fail)?;
        run.out.flows_total = usize::try_from(page.total_num).unwrap_or(0);
        for id in page.funds_flow_ids.iter().take(FLOW_PAGE_SIZE) {
            if !ids_seen.insert(id.clone()) {
                continue;
            }
            if deadline.passed() {
                return Ok(None);
            }
            let flow = app
                .wx
                .funds_get_order_flow_text(id)
                .await
                .map_err(wx_fail)?;
            run.check(flow).await?;
        }
        if page.funds_flow_ids.is_empty() {
            // Nothing past here, whatever `total_num` said: the listing is read to its end.
            run.out.flows_total = run.out.flows_total.min(next);
            break;
        }
        next += FLOW_PAGE_SIZE;
        if next >= run.out.flows_total {
            break;
        }
    }
    let total = run.out.flows_total;
    if next < total {
        run.out.flows_unchecked = total - next;
        run.out.next_from = Some(next);
    }
    for (aftersale, flow) in &run.flows_before_refund {
        note_flow_before(app, aftersale, date, flow).await?;
    }
    let Some(day_refunds) = refunded_on_day(app, start_ms, deadline).await? else {
        return Ok(None);
    };
    let now = app.clock.now_ms();
    let ready_at = ready_at_ms(start_ms);
    let end_ms = start_ms + DAY_MS;
    let next_date = crate::time::beijing_date(end_ms);
    let prev_date = crate::time::beijing_date(start_ms - DAY_MS);
    let all_read = (from == 0 || earlier.is_some()) && run.out.next_from.is_none();
    let Run {
        day_orders,
        orders_seen,
        aftersales_seen,
        next_day_orders,
        next_day_aftersales,
        mut out,
        ..
    } = run;
    let mut hand = NextDay::default();
    // Why one no flow read names is not missing (yet); `late`: of the day's last hour.
    let verdict = |late: bool, handed: usize| {
        if !all_read {
            Unmatched::NotAllRead
        } else if late && handed < MAX_CARRIED {
            Unmatched::NextDay
        } else if now < ready_at {
            Unmatched::NotReady
        } else {
            Unmatched::Missing
        }
    };
    let not_all_read = format!(
        "{} of the day's flows were not read{}",
        total.saturating_sub(out.flows_checked),
        match out.next_from {
            Some(n) =>
                format!(" (go on from {n}): reconcile the rest (funds_from) before judging it"),
            None => format!(
                ": the flows before {from} were read by another request whose names this one \
                 does not have (only the request that answered next_from {from} keeps them, \
                 for a day): reconcile the day from 0 to judge it"
            ),
        }
    );
    let on_next_day = format!(
        "WeChat may have booked its flow after midnight: it is looked for among the flows of \
         {next_date} when that day is reconciled (by hand or by the schedule)"
    );
    let not_ready = format!(
        "the day's flows are taken as complete from {} China time; ask again then",
        crate::time::beijing_datetime(ready_at)
    );
    for o in &day_orders {
        out.paid_here_checked += 1;
        let no = o.out_trade_no.as_str();
        if orders_seen.contains_key(no) {
            continue;
        }
        let mut m = FlowMismatch {
            kind: "missing_flow",
            out_trade_no: Some(no.to_owned()),
            ..FlowMismatch::default()
        };
        let late = o
            .paid_at_ms
            .is_some_and(|t| t >= end_ms - NEXT_DAY_MARGIN_MS);
        let problem = match verdict(late, hand.orders.len()) {
            Unmatched::NotAllRead => format!("no income flow among those read; {not_all_read}"),
            Unmatched::NextDay => {
                hand.orders.push(no.to_owned());
                format!(
                    "paid in the last hour of the day, no income flow among its flows: \
                     {on_next_day}"
                )
            }
            Unmatched::NotReady => {
                format!("no income flow in the funds account so far: {not_ready}")
            }
            Unmatched::Missing => {
                tracing::error!(date, out_trade_no = %o.out_trade_no, "paid here, no funds flow");
                m.problem = format!(
                    "recorded paid here at {} China time, {} fen: no income flow for it in the \
                     day's funds flows",
                    o.paid_at_ms
                        .map(crate::time::beijing_datetime)
                        .unwrap_or_default(),
                    o.total.get()
                );
                out.mismatches.push(m);
                continue;
            }
        };
        m.problem = problem;
        out.orders_awaiting_flows.push(m);
    }
    for a in &day_refunds {
        out.refunds_checked += 1;
        if aftersales_seen.contains_key(a.id.as_str()) {
            continue;
        }
        if let Some((on, flow)) = flow_before(app, a.id.as_str(), date).await? {
            out.aftersales_flowed_earlier.push(FlowMismatch {
                kind: "refund_flow_earlier",
                funds_flow_id: Some(flow.clone()),
                out_trade_no: Some(a.out_trade_no.as_str().to_owned()),
                aftersale_id: Some(a.id.as_str().to_owned()),
                problem: format!(
                    "its expense flow {flow} was booked on {on}, before we recorded the \
                     refund: checked with that day's flows, not missing here"
                ),
                ..FlowMismatch::default()
            });
            continue;
        }
        let mut m = FlowMismatch {
            kind: "missing_refund_flow",
            out_trade_no: Some(a.out_trade_no.as_str().to_owned()),
            aftersale_id: Some(a.id.as_str().to_owned()),
            ..FlowMismatch::default()
        };
        let late = a
            .refunded_at_ms
            .is_some_and(|t| t >= end_ms - NEXT_DAY_MARGIN_MS);
        let problem = match verdict(late, hand.aftersales.len()) {
            Unmatched::NotAllRead => format!("no expense flow among those read; {not_all_read}"),
            Unmatched::NextDay => {
                hand.aftersales.push(a.id.as_str().to_owned());
                format!(
                    "refunded in the last hour of the day, no expense flow among its flows: \
                     {on_next_day}"
                )
            }
            Unmatched::NotReady => {
                format!("no expense flow in the funds account so far: {not_ready}")
            }
            Unmatched::Missing => {
                tracing::error!(date, aftersale_id = %a.id, "refunded here, no funds flow");
                m.problem = format!(
                    "recorded refunded here at {} China time, {} fen: no after-sale expense flow \
                     for it in the day's funds flows (a refund WeChat never made, or booked \
                     under a number we do not read as this after-sale's?)",
                    a.refunded_at_ms
                        .map(crate::time::beijing_datetime)
                        .unwrap_or_default(),
                    a.amount.get()
                );
                out.mismatches.push(m);
                continue;
            }
        };
        m.problem = problem;
        out.aftersales_awaiting_flows.push(m);
    }
    // The day before's last hour, handed on: this day's flows must name them.
    let carried_orders = carried.orders.iter().map(|n| (n, false));
    let carried_aftersales = carried.aftersales.iter().map(|n| (n, true));
    for (name, is_aftersale) in carried_orders.chain(carried_aftersales) {
        out.carried_checked += 1;
        let seen = if is_aftersale {
            &aftersales_seen
        } else {
            &orders_seen
        };
        if seen.contains_key(name) {
            continue;
        }
        let (kind, what, flow) = if is_aftersale {
            ("missing_refund_flow", "refunded", "expense")
        } else {
            ("missing_flow", "paid", "income")
        };
        let mut m = FlowMismatch {
            kind,
            ..FlowMismatch::default()
        };
        if is_aftersale {
            m.aftersale_id = Some(name.clone());
        } else {
            m.out_trade_no = Some(name.clone());
        }
        let problem = match verdict(false, 0) {
            Unmatched::NotAllRead => Some(format!(
                "recorded {what} in the last hour of {prev_date}, no {flow} flow among that \
                 day's nor among this day's read; {not_all_read}"
            )),
            Unmatched::NotReady => Some(format!(
                "recorded {what} in the last hour of {prev_date}, no {flow} flow among that \
                 day's, nor this day's so far: {not_ready}"
            )),
            Unmatched::NextDay | Unmatched::Missing => None,
        };
        match problem {
            Some(p) => {
                m.problem = p;
                if is_aftersale {
                    out.aftersales_awaiting_flows.push(m);
                } else {
                    out.orders_awaiting_flows.push(m);
                }
            }
            None => {
                tracing::error!(date, name = %name, kind, "recorded here, no funds flow on its day nor the next");
                m.problem = format!(
                    "recorded {what} here in the last hour of {prev_date}: no {flow} flow for it \
                     in the funds flows of {prev_date} nor of {date}"
                );
                out.mismatches.push(m);
            }
        }
    }
    hand.orders_seen = next_day_orders.clone();
    hand.aftersales_seen = next_day_aftersales.clone();
    hand.orders_seen.truncate(MAX_CARRIED);
    hand.aftersales_seen.truncate(MAX_CARRIED);
    let seen = Progress {
        date: date.to_owned(),
        next_from: out.next_from.unwrap_or(total),
        orders: orders_seen.into_keys().collect(),
        aftersales: aftersales_seen.into_keys().collect(),
        orders_next_day: next_day_orders,
        aftersales_next_day: next_day_aftersales,
    };
    Ok(Some((out, seen, all_read.then_some(hand))))
}

/// The `funds` section of `reconcile` by hand: `None` when the shop is not in fund_type 1
/// mode (nothing to add), else the day's funds reconciliation from `from` (`Ok(Some(None))`
/// when `deadline` passed first). A day read in part keeps what its flows named (kv
/// `{BY_HAND}{date}`, a day; bounded as the schedule's progress): the request from its
/// `next_from` goes on with it — or with the schedule's progress of the day, if that stopped
/// at the same flow — so the one that reads the last flows checks the other way (paid or
/// refunded here, no flow) as a whole day's reconciliation does. A `funds_from` with neither
/// (another next_from, or kept no more) cannot: what no flow it read names is awaiting, not
/// missing. By hand keeps no event; once
/// it has read all of the day's flows it hands on to the next day what the schedule would
/// ([`NextDay`], kv `funds_reconcile/next_day/{next date}`), so a day reconciled by hand —
/// one past the week the schedule goes back, say — and the next by the schedule behave as
/// two days of the schedule.
pub async fn for_admin(
    app: &App,
    date: &str,
    from: Option<usize>,
    deadline: Deadline,
) -> Result<Option<Option<FundsReconciliation>>, ApiError> {
    if app.config.fund_type != FundType::SecondaryMerchant {
        return Ok(None);
    }
    let from = from.unwrap_or(0);
    let store = app.store.as_ref();
    let key = format!("{BY_HAND}{date}");
    let mine = kv::get(store, &key).await?;
    let earlier = if from == 0 {
        None
    } else {
        let schedule = kv::get(store, PROGRESS).await?;
        let found = [mine.as_ref(), schedule.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|e| serde_json::from_str::<Progress>(&e.value).ok())
            .find(|p| p.date == date && p.next_from == from);
        found
    };
    let Some((found, seen, hand)) =
        reconcile_part(app, date, from, earlier.as_ref(), deadline).await?
    else {
        return Ok(Some(None));
    };
    // All of the day's flows read: what the next day must check, as the schedule hands on.
    if let Some(hand) = hand {
        hand_on(app, date, &hand).await?;
    }
    if found.next_from.is_some() && found.flows_total <= MAX_TRACKED_FLOWS {
        let text = serde_json::to_string(&seen).map_err(|e| ApiError::internal(e.to_string()))?;
        if text.len() <= PROGRESS_MAX_BYTES {
            let until = app.clock.now_secs() + BY_HAND_TTL_SECS;
            // Lost to another request of the day meanwhile: it keeps its own names.
            if !kv::put_if(store, &key, &text, until, mine.map(|m| m.version)).await? {
                tracing::info!(date, "another request kept the day's names first");
            }
        }
    }
    Ok(Some(Some(found)))
}

/// What the schedule's funds phase did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct DailyReport {
    /// The days (`yyyyMMdd`) whose funds were reconciled in this run, oldest first (a day
    /// read across runs: by the run that read its last flows).
    pub reconciled: Vec<String>,
    /// The day whose flows this run read in part, the next run going on from `next_from`
    /// (kv `funds_reconcile/progress`); nothing of it paged but the mismatches of the flows
    /// read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_progress: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_from: Option<usize>,
    pub flows_checked: usize,
    pub mismatches: usize,
    /// Mismatches (and days checked in part) kept as new `funds_mismatch` events, and paged.
    pub kept: usize,
    /// Orders and after-sales awaiting flows not read (a day past [`MAX_TRACKED_FLOWS`]).
    pub awaiting: usize,
    /// Flows of the days reconciled past [`MAX_TRACKED_FLOWS`], not read: a person goes on
    /// by hand.
    pub flows_unchecked: usize,
}

const WHAT_TO_DO: &str = "WeChat's funds account and our records disagree: compare the flow \
(POST /admin/funds {action: flow, flow_id}) with the order or after-sale here \
(POST /fn/queryOrder), put right whichever is wrong, and note it; nothing was changed \
automatically";

/// (key, body) of an event per mismatch (keyed by day and flow, or after-sale, or order),
/// and one for a day checked in part unless `going_on` (the schedule reads the rest itself).
fn mismatch_events(r: &FundsReconciliation, going_on: bool) -> Vec<(String, String)> {
    let d = &r.date;
    let mut out = Vec::new();
    for m in &r.mismatches {
        let id = m
            .funds_flow_id
            .clone()
            .or_else(|| m.aftersale_id.clone())
            .or_else(|| m.out_trade_no.clone())
            .unwrap_or_default();
        let body = serde_json::json!({
            "date": d, "kind": m.kind, "detail": m, "what_to_do": WHAT_TO_DO,
        });
        out.push((format!("{d}/{}/{id}", m.kind), body.to_string()));
    }
    if let Some(next) = r.next_from.filter(|_| !going_on) {
        let body = serde_json::json!({
            "date": d, "kind": "flows_unchecked", "flows_total": r.flows_total,
            "flows_unchecked": r.flows_unchecked,
            "what_to_do": format!(
                "the day has more funds flows than the schedule goes through \
                 ({MAX_TRACKED_FLOWS}): reconcile the rest by hand, POST /admin/orderSync {{\"action\": \
                 \"reconcile\", \"bill_date\": \"{d}\", \"funds_from\": {next}}} and on \
                 with each next_from"
            ),
        });
        out.push((format!("{d}/flows_unchecked"), body.to_string()));
    }
    out
}

/// The schedule's funds reconciliation (fund_type 1 mode only): after 10:00 China time,
/// each day since its mark up to yesterday (at most [`CATCH_UP_DAYS`] back; without a mark,
/// yesterday — or none, when the store holds no order before today), oldest first; each
/// mismatch kept as a `funds_mismatch` event and paged once; the mark moved after a day's
/// events were kept. A day with more flows than a run reads ([`MAX_FLOWS_PER_RUN`]) is read
/// across runs: each run reads the next flows from its kv [`Progress`], keeps their
/// mismatches at once and saves where it stopped and what they named (a versioned write);
/// the run that reads the last flows checks the other way (paid or refunded here, no flow)
/// with every name read, hands on to the next day what it must check ([`NextDay`]), moves
/// the mark and drops the progress. A day past [`MAX_TRACKED_FLOWS`] is
/// checked in part (one `flows_unchecked` event, paged). A day cut short by `deadline`
/// (`false`) or failed keeps no progress: the next run reads the same flows again (their
/// events kept once: by day and flow).
pub async fn run_daily(
    app: &App,
    deadline: Deadline,
    report: &mut DailyReport,
) -> Result<bool, ApiError> {
    if app.config.fund_type != FundType::SecondaryMerchant {
        return Ok(true);
    }
    let now = app.clock.now_ms();
    if (now + BEIJING_OFFSET_MS).rem_euclid(DAY_MS) < READY_HOUR * HOUR_MS {
        return Ok(true);
    }
    let store = app.store.as_ref();
    let yesterday = crate::time::beijing_date(now - DAY_MS);
    let earliest = crate::time::beijing_date(now - CATCH_UP_DAYS * DAY_MS);
    let today_start = beijing_day_start_ms(&crate::time::beijing_date(now)).unwrap_or(now);
    loop {
        let mark = kv::get(store, MARK).await?;
        if mark.is_none() && !repo::any_order_created_before(store, today_start).await? {
            let until = app.clock.now_secs() + MARK_TTL_SECS;
            kv::put_if(store, MARK, &yesterday, until, None).await?;
            return Ok(true);
        }
        let day = match mark.as_ref().and_then(|m| beijing_day_start_ms(&m.value)) {
            Some(done) => crate::time::beijing_date(done + DAY_MS).max(earliest.clone()),
            None => yesterday.clone(),
        };
        if day > yesterday {
            return Ok(true);
        }
        let progress = kv::get(store, PROGRESS).await?;
        // Another day's progress (its day done meanwhile, or past the week) is overwritten.
        let earlier = progress
            .as_ref()
            .and_then(|p| serde_json::from_str::<Progress>(&p.value).ok())
            .filter(|p| p.date == day);
        let from = earlier.as_ref().map_or(0, |p| p.next_from);
        let Some((found, seen, hand)) =
            reconcile_part(app, &day, from, earlier.as_ref(), deadline).await?
        else {
            return Ok(false);
        };
        let going_on = found
            .next_from
            .filter(|_| found.flows_total <= MAX_TRACKED_FLOWS)
            .and_then(|_| serde_json::to_string(&seen).ok())
            .filter(|text| text.len() <= PROGRESS_MAX_BYTES);
        report.flows_checked += found.flows_checked;
        report.mismatches += found.mismatch_count();
        if going_on.is_none() {
            report.reconciled.push(day.clone());
            report.awaiting +=
                found.orders_awaiting_flows.len() + found.aftersales_awaiting_flows.len();
            report.flows_unchecked += found.flows_unchecked;
        }
        for (key, body) in mismatch_events(&found, going_on.is_some()) {
            if super::common::keep_evidence(app, FUNDS_MISMATCH_EVENTS, key, body).await? {
                report.kept += 1;
                super::common::page_a_person(app);
            }
        }
        if found.mismatch_count() > 0 {
            tracing::error!(date = %day, mismatches = found.mismatch_count(), "funds reconciliation found mismatches");
        }
        if let Some(text) = going_on {
            // The rest of the day is the next run's: this one has read its share.
            let until = app.clock.now_secs() + PROGRESS_TTL_SECS;
            kv::put_if(store, PROGRESS, &text, until, progress.map(|p| p.version)).await?;
            tracing::info!(date = %day, flows = found.flows_checked, next_from = seen.next_from, "funds reconciliation goes on next run");
            report.in_progress = Some(day);
            report.next_from = Some(seen.next_from);
            return Ok(true);
        }
        if found.mismatch_count() == 0 {
            tracing::info!(date = %day, flows = found.flows_checked, "funds reconciliation clean");
        }
        // Before the mark moves past the day: a run cut short here writes it again.
        if let Some(hand) = hand {
            hand_on(app, &day, &hand).await?;
        }
        let until = app.clock.now_secs() + MARK_TTL_SECS;
        if !kv::put_if(store, MARK, &day, until, mark.map(|m| m.version)).await? {
            return Ok(true);
        }
        if let Some(p) = progress {
            kv::delete_if(store, PROGRESS, p.version).await?;
        }
        if deadline.passed() {
            return Ok(day == yesterday);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Yuan strings become fen exactly; more than two decimals, a sign, a comma, an
    /// exponent or nothing at all is refused (a mismatch), never a panic or a rounding.
    #[test]
    fn amounts_are_parsed_exactly_or_refused() {
        assert_eq!(parse_amount("19.90").unwrap().get(), 1990);
        assert_eq!(parse_amount("0.01").unwrap().get(), 1);
        assert_eq!(parse_amount(" 7 ").unwrap().get(), 700);
        assert_eq!(parse_amount("0.1").unwrap().get(), 10);
        for bad in [
            "19.905",
            "-1.00",
            "+1",
            "19,90",
            "1e3",
            "",
            "abc",
            "１９.９０",
            "1.2.3",
            "99999999999999999999",
        ] {
            let e = parse_amount(bad).unwrap_err();
            assert!(e.contains("not yuan"), "{bad}: {e}");
        }
    }

    /// The progress of a day at [`MAX_TRACKED_FLOWS`], each flow naming one of our order
    /// numbers, fits the bound kept — and, written as a kv string, stays well under
    /// DynamoDB's 400 KB item.
    #[test]
    fn the_progress_of_the_largest_day_tracked_fits_an_item() {
        let p = Progress {
            date: "20260925".into(),
            next_from: MAX_TRACKED_FLOWS,
            orders: (0..MAX_TRACKED_FLOWS)
                .map(|i| {
                    OutTradeNo::generate(1_790_000_000_000 + i64::try_from(i).unwrap())
                        .as_str()
                        .to_owned()
                })
                .collect(),
            aftersales: vec![],
            ..Progress::default()
        };
        let text = serde_json::to_string(&p).unwrap();
        assert!(text.len() <= PROGRESS_MAX_BYTES, "{}", text.len());
        let as_stored = serde_json::to_string(&text).unwrap();
        assert!(as_stored.len() < 300_000, "{}", as_stored.len());
        assert_eq!(serde_json::from_str::<Progress>(&text).unwrap(), p);
    }

    /// A day the schedule goes on with keeps no `flows_unchecked` event (nobody paged for
    /// it); one past the bound does, saying where to go on by hand.
    #[test]
    fn a_day_going_on_keeps_no_flows_unchecked_event() {
        let r = FundsReconciliation {
            date: "20260925".into(),
            flows_total: 350,
            flows_checked: 300,
            flows_unchecked: 50,
            next_from: Some(300),
            ..FundsReconciliation::default()
        };
        assert!(mismatch_events(&r, true).is_empty());
        let kept = mismatch_events(&r, false);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].0, "20260925/flows_unchecked");
        assert!(
            kept[0].1.contains("\\\"funds_from\\\": 300"),
            "{}",
            kept[0].1
        );
    }
}
