//! `payCallback`: WeChat Pay's payment (`/callbacks/pay`) and refund (`/callbacks/refund`)
//! notifications.
//!
//! The rules (WECHAT_PAY_V2.md §3.4): verify the signature (payments) or decrypt (refunds)
//! before believing anything; check appid/mch_id (and sub_* in provider mode); check the
//! amount against the stored order; apply the transition and its outbox entry in one
//! conditional write; only then answer `SUCCESS`. Repeats answer `SUCCESS` and change nothing.
//! Forged, foreign or mismatched messages answer `FAIL`, change nothing, and are logged as
//! security events. `FAIL` for our own transient failures makes WeChat retry.
//!
//! A refund's outcome is applied by [`settle_refund`], whoever reports it: the notification
//! here, or — when that never came — a signed `pay/refundquery` answer the schedule asked for
//! ([`super::aftersale_sync::sweep_refunds`]). One path, so both get the same checks and the
//! same single write.
//!
//! Every answer is HTTP 200, so Lambda's `Errors` metric never sees a refused notification:
//! each `FAIL` that means "a payment is not being recorded" is counted as a custom metric
//! ([`crate::metrics::PAY_NOTIFY_UNVERIFIED`]: our key or merchant id does not match;
//! [`crate::metrics::PAY_NOTIFY_UNRECORDED`]: verified yet not recorded — the store failed or
//! it does not match our records), and the template alarms on both. What is acknowledged yet
//! needs a person — money moved that only a person can put right: a second payment for a paid
//! order, a refund WeChat could not pay out (`CHANGE`), a `SUCCESS` or `CHANGE` for an
//! after-sale another refund completed, a refund made by hand in the merchant platform — is
//! kept as an event and counted once as [`crate::metrics::MONEY_NEEDS_A_PERSON`], which pages
//! too. So is an after-sale's refund WeChat closed (`REFUNDCLOSE`, a [`REFUND_CLOSED_EVENTS`]
//! event): the user is still owed the money, and only the merchant's approval again sends it.
//!
//! A refund notification for a refund we never asked for (a person refunded in the WeChat Pay
//! merchant platform) is recorded on its order when it is a `SUCCESS` of one of our payments
//! that fits in what is left ([`made_by_hand`]): the money went back, so the books and the
//! order's shippability follow it; anything else about it stays a mismatch.

use super::common::{
    keep_evidence, page_a_person, record_payment, with_retries, Attempt, PaymentError,
    PaymentOutcome,
};
use crate::app::App;
use crate::domain::{AfterSaleId, AfterSaleStatus, Change, Fen, OutRefundNo, OutTradeNo};
use crate::http::{text, Request, Response};
use crate::metrics::{PAY_NOTIFY_UNRECORDED, PAY_NOTIFY_UNVERIFIED};
use crate::outbox::{OutboxEntry, Task};
use crate::pay::notify::{
    check_merchant_ids, parse_payment_notification, reply_fail, reply_success, NotifyError,
};
use crate::pay::sign::VerifyError;
use crate::pay::types::RefundStatus as WxRefundStatus;
use crate::store::repo::{self, Batch, RefundOrigin, RefundStatus};
use http::StatusCode;

fn xml(body: String) -> Response {
    text(StatusCode::OK, body, "application/xml")
}

fn success() -> Response {
    xml(reply_success().to_owned())
}

/// Refused: WeChat will retry, a forger learns nothing useful.
fn refused(reason: &str) -> Response {
    xml(reply_fail(reason))
}

/// Refused, and counted as `metric` for the alarms (see the module doc).
fn refused_counted(app: &App, metric: &str, reason: &str) -> Response {
    app.metrics.count(metric, 1, app.clock.now_ms());
    refused(reason)
}

/// Refused because it does not verify: counted when our key or merchant id is what failed
/// (a signature that does not match, `req_info` that does not decrypt, another merchant),
/// not for bodies that are no signed notification at all (junk from a scanner).
fn unverified(app: &App, e: &NotifyError, reason: &str) -> Response {
    let ours = matches!(
        e,
        NotifyError::Sign(VerifyError::Mismatch)
            | NotifyError::Decrypt
            | NotifyError::InnerXml(_)
            | NotifyError::WrongMerchant { .. }
    );
    if ours {
        refused_counted(app, PAY_NOTIFY_UNVERIFIED, reason)
    } else {
        refused(reason)
    }
}

/// Verified and ours, yet not recorded: WeChat retries; counted for the alarm.
fn unrecorded(app: &App, reason: &str) -> Response {
    refused_counted(app, PAY_NOTIFY_UNRECORDED, reason)
}

pub async fn handle(app: &App, req: Request) -> Response {
    if req.uri().path().ends_with("/refund") {
        refund(app, req).await
    } else {
        payment(app, req).await
    }
}

async fn payment(app: &App, req: Request) -> Response {
    let cfg = &app.config;
    let n = match parse_payment_notification(req.body(), cfg.api_key()) {
        Ok(n) => n,
        // The fields are typed only once the signature verified: these are ours to read.
        Err(e @ (NotifyError::Field(_) | NotifyError::Id(_))) => {
            return unreadable_payment(app, req.body(), &e).await;
        }
        Err(e) => {
            tracing::warn!(security = true, error = %e, "payment notification refused");
            return unverified(app, &e, "invalid notification");
        }
    };
    if let Err(e) = n.check_merchant(
        &cfg.appid,
        &cfg.mch_id,
        cfg.sub_appid.as_deref(),
        cfg.sub_mch_id.as_deref(),
    ) {
        tracing::warn!(security = true, out_trade_no = %n.out_trade_no, error = %e, "payment notification for another merchant");
        return unverified(app, &e, "wrong merchant");
    }
    if crate::pay::types::paid_amounts_problem(Some(&n.fee_type), n.cash_fee, n.total_fee).is_some()
    {
        // Our orders are priced in fen of CNY, and the payer cannot pay more than the total.
        // Signed by WeChat for our merchant: money may have moved, so it is kept as evidence
        // (what PayNotifyUnrecorded's runbook looks for), not only logged.
        tracing::warn!(security = true, out_trade_no = %n.out_trade_no, fee_type = %n.fee_type, "payment notification in another currency or with cash_fee above total_fee");
        let evidence = crate::pay::xml::encode(&n.fields());
        let _ = keep_evidence(app, "payment_mismatch", n.transaction_id.as_ref(), evidence).await;
        return unrecorded(app, "order mismatch");
    }
    if !n.success {
        // A failed payment: nothing to record; the order stays payable.
        tracing::info!(out_trade_no = %n.out_trade_no, err_code = ?n.err_code, "payment failed notification");
        return success();
    }
    let paid_at = n.time_end_ms.unwrap_or_else(|| app.clock.now_ms());
    match record_payment(
        app,
        &n.out_trade_no,
        &n.transaction_id,
        n.total_fee,
        paid_at,
    )
    .await
    {
        Ok(PaymentOutcome::Recorded(_)) | Ok(PaymentOutcome::AlreadyRecorded(_)) => success(),
        Err(PaymentError::Store(e)) => {
            tracing::error!(out_trade_no = %n.out_trade_no, error = %e, "could not store payment; WeChat will retry");
            unrecorded(app, "temporarily unavailable")
        }
        Err(PaymentError::Transition(crate::domain::TransitionError::OtherTransaction {
            existing,
        })) => {
            // Paid twice. The second payment is real money: acknowledge (WeChat cannot fix
            // it by retrying) and keep the evidence for a refund by a person.
            tracing::error!(security = true, out_trade_no = %n.out_trade_no, existing, transaction_id = %n.transaction_id, "second payment for a paid order");
            let evidence = crate::pay::xml::encode(&n.fields());
            match keep_evidence(app, "double_payment", n.transaction_id.as_ref(), evidence).await {
                Ok(first) => {
                    if first {
                        page_a_person(app);
                    }
                    success()
                }
                Err(_) => unrecorded(app, "temporarily unavailable"),
            }
        }
        Err(e) => {
            tracing::warn!(security = true, out_trade_no = %n.out_trade_no, error = %e, "payment notification does not match the order");
            // Verified (signed by WeChat, our merchant) yet not applicable: money may have
            // moved, so the notification is kept as evidence, not only logged.
            let evidence = crate::pay::xml::encode(&n.fields());
            let _ =
                keep_evidence(app, "payment_mismatch", n.transaction_id.as_ref(), evidence).await;
            unrecorded(app, "order mismatch")
        }
    }
}

/// A payment notification whose signature verified with our key but whose fields do not read
/// as a payment (a `time_end` or amount in another format, an `out_trade_no` that is not
/// one of ours): unless it names another merchant or reports a failed payment, it is ours
/// and money may have moved, so it is counted and kept as evidence like any other we cannot
/// apply — not dropped as junk.
async fn unreadable_payment(app: &App, body: &[u8], e: &NotifyError) -> Response {
    let cfg = &app.config;
    // The body decoded once already (the signature was checked over these fields).
    let fields = crate::pay::xml::decode(body).unwrap_or_default();
    let get = |k: &str| fields.get(k).map(String::as_str).filter(|v| !v.is_empty());
    if let Err(wrong) = check_merchant_ids(
        [
            get("appid"),
            get("mch_id"),
            get("sub_appid"),
            get("sub_mch_id"),
        ],
        [
            Some(cfg.appid.as_str()),
            Some(cfg.mch_id.as_str()),
            cfg.sub_appid.as_deref(),
            cfg.sub_mch_id.as_deref(),
        ],
    ) {
        tracing::warn!(security = true, error = %wrong, "payment notification for another merchant");
        return unverified(app, &wrong, "wrong merchant");
    }
    if get("result_code") != Some("SUCCESS") {
        // A failed payment (which need not carry a transaction): nothing to record, as for
        // a readable one.
        tracing::info!(out_trade_no = get("out_trade_no").unwrap_or(""), error = %e, "payment failed notification");
        return success();
    }
    let key = get("transaction_id")
        .or(get("out_trade_no"))
        .or(get("sign"))
        .unwrap_or("unknown")
        .to_owned();
    tracing::error!(security = true, error = %e, out_trade_no = get("out_trade_no").unwrap_or(""), transaction_id = %key, "signed payment notification we cannot read: not recorded, kept for a person");
    let _ = keep_evidence(
        app,
        "payment_mismatch",
        key,
        crate::pay::xml::encode(&fields),
    )
    .await;
    unrecorded(app, "invalid notification")
}

async fn refund(app: &App, req: Request) -> Response {
    let cfg = &app.config;
    let n = match app.refund_key.parse_notification(req.body()) {
        Ok(n) => n,
        // Decrypted under our key, yet its fields do not read: ours to look at.
        Err(NotifyError::RefundFields { error, fields }) => {
            return unreadable_refund(app, req.body(), &error, &fields).await;
        }
        Err(e) => {
            tracing::warn!(security = true, error = %e, "refund notification refused");
            return unverified(app, &e, "invalid notification");
        }
    };
    if let Err(e) = n.check_merchant(
        &cfg.appid,
        &cfg.mch_id,
        cfg.sub_appid.as_deref(),
        cfg.sub_mch_id.as_deref(),
    ) {
        tracing::warn!(security = true, error = %e, "refund notification for another merchant");
        return unverified(app, &e, "wrong merchant");
    }
    match settle_refund(app, &RefundReport::from(&n), ReportedBy::Notification).await {
        Ok(_) => success(),
        // Signed by WeChat yet not ours to apply (kept as evidence): WeChat retries, and
        // after its last retry the evidence is what a person has.
        Err(RefundApplyError::Mismatch(_)) => unrecorded(app, "refund mismatch"),
        Err(RefundApplyError::Unavailable(why)) => {
            tracing::error!(out_refund_no = %n.out_refund_no, why, "could not store refund; WeChat will retry");
            unrecorded(app, "temporarily unavailable")
        }
    }
}

/// A refund notification whose `req_info` decrypted under our key (so WeChat sent it) but
/// whose fields inside do not read as a refund (an amount or time in another format, an
/// `out_trade_no` that is no id of ours): unless its outer ids name another merchant, it is
/// counted as `PayNotifyUnrecorded` and kept as `refund_mismatch` evidence — money may have
/// moved — as an unreadable payment is ([`unreadable_payment`]). It used to be refused as
/// junk: counted nowhere, kept nowhere.
async fn unreadable_refund(
    app: &App,
    body: &[u8],
    e: &NotifyError,
    inner: &crate::pay::sign::Fields,
) -> Response {
    let cfg = &app.config;
    // The body decoded once already (req_info was read from it).
    let outer = crate::pay::xml::decode(body).unwrap_or_default();
    let field = |f: &crate::pay::sign::Fields, k: &str| -> Option<String> {
        f.get(k).filter(|v| !v.is_empty()).cloned()
    };
    let [appid, mch_id, sub_appid, sub_mch_id] =
        ["appid", "mch_id", "sub_appid", "sub_mch_id"].map(|k| field(&outer, k));
    if let Err(wrong) = crate::pay::refund_notify::check_refund_merchant(
        [
            appid.as_deref(),
            mch_id.as_deref(),
            sub_appid.as_deref(),
            sub_mch_id.as_deref(),
        ],
        [cfg.appid.as_str(), cfg.mch_id.as_str()],
        cfg.sub_appid.as_deref(),
        cfg.sub_mch_id.as_deref(),
    ) {
        tracing::warn!(security = true, error = %wrong, "refund notification for another merchant");
        return unverified(app, &wrong, "wrong merchant");
    }
    let key = ["out_refund_no", "refund_id", "out_trade_no"]
        .into_iter()
        .find_map(|k| field(inner, k))
        .unwrap_or_else(|| "unknown".to_owned());
    tracing::error!(security = true, error = %e, out_refund_no = %key, "refund notification we cannot read: not recorded, kept for a person");
    let mut evidence = serde_json::Map::new();
    for (k, v) in inner {
        evidence.insert(k.clone(), v.clone().into());
    }
    evidence.insert("why".into(), e.to_string().into());
    evidence.insert(
        "reported_by".into(),
        ReportedBy::Notification.as_str().into(),
    );
    let _ = keep_evidence(
        app,
        "refund_mismatch",
        format!("unreadable/{key}"),
        serde_json::Value::Object(evidence).to_string(),
    )
    .await;
    unrecorded(app, "invalid notification")
}

/// A refund's state as WeChat reported it: in the refund notification (authenticated by its
/// encryption), or in a signed `pay/refundquery` answer the schedule asked for when no
/// notification came ([`super::aftersale_sync::sweep_refunds`]). Both are settled by
/// [`settle_refund`]: the same checks, the same one write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RefundReport {
    pub out_trade_no: OutTradeNo,
    pub out_refund_no: OutRefundNo,
    pub transaction_id: String,
    pub refund_id: String,
    /// The order's total.
    pub total_fee: Fen,
    pub refund_fee: Fen,
    pub status: WxRefundStatus,
    /// `success_time` / `refund_success_time_$n`, for the evidence.
    pub success_time_ms: Option<i64>,
    /// `refund_recv_accout` (sic) / `refund_recv_accout_$n`: where the money went.
    pub recv_account: Option<String>,
    /// `refund_request_source` (notification only): `API`, or `VENDOR_PLATFORM` for a refund
    /// a person made in the merchant platform.
    pub request_source: Option<String>,
}

impl From<&crate::pay::refund_notify::RefundNotification> for RefundReport {
    fn from(n: &crate::pay::refund_notify::RefundNotification) -> Self {
        RefundReport {
            out_trade_no: n.out_trade_no.clone(),
            out_refund_no: n.out_refund_no.clone(),
            transaction_id: n.transaction_id.clone(),
            refund_id: n.refund_id.clone(),
            total_fee: n.total_fee,
            refund_fee: n.refund_fee,
            status: n.refund_status.clone(),
            success_time_ms: n.success_time_ms,
            recv_account: n.refund_recv_account.clone(),
            request_source: n.refund_request_source.clone(),
        }
    }
}

/// Who told us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReportedBy {
    Notification,
    /// `pay/refundquery`, asked by the schedule: the notification never came.
    Query,
}

impl ReportedBy {
    fn as_str(self) -> &'static str {
        match self {
            ReportedBy::Notification => "notification",
            ReportedBy::Query => "refundquery",
        }
    }
}

/// What a report came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Settled {
    /// Recorded: refund record, after-sale and (SUCCESS) order, in one write.
    Applied,
    /// Nothing to change: a repeat, or no outcome yet (`PROCESSING`).
    Unchanged,
    /// The after-sale was refunded already, by another refund (an earlier number closed and
    /// issued again, or a person): nothing recorded, kept as evidence — an after-sale's
    /// money is counted once.
    Superseded,
}

pub(crate) enum RefundApplyError {
    /// Not ours to apply (unknown refund, other amounts, another payment); kept as evidence.
    Mismatch(String),
    Unavailable(String),
}

impl From<crate::store::StoreError> for RefundApplyError {
    fn from(e: crate::store::StoreError) -> Self {
        RefundApplyError::Unavailable(e.to_string())
    }
}

/// Settles a refund report: [`apply_refund`], and evidence for a person of what could not
/// be applied although money may have moved.
pub(crate) async fn settle_refund(
    app: &App,
    n: &RefundReport,
    by: ReportedBy,
) -> Result<Settled, RefundApplyError> {
    let summary = || {
        serde_json::json!({"out_refund_no": n.out_refund_no.as_str(),
            "out_trade_no": n.out_trade_no.as_str(), "refund_id": n.refund_id,
            "refund_fee": n.refund_fee.get(), "status": n.status.as_str(),
            "success_time_ms": n.success_time_ms, "recv_account": n.recv_account,
            "reported_by": by.as_str()})
    };
    match apply_refund(app, n, by).await {
        Ok(Applied::Recorded) => {
            tracing::info!(out_refund_no = %n.out_refund_no, status = %n.status, refund_fee = n.refund_fee.get(), reported_by = by.as_str(), "refund recorded");
            if matches!(
                n.status,
                WxRefundStatus::Change | WxRefundStatus::RefundClose
            ) {
                // Held (REFUND_ABNORMAL): the money waits at WeChat to be redirected by hand.
                // Closed (REFUND_FAILED): the user is owed it until the merchant approves again.
                // Each kept as its event in the write that recorded it: a repeat changes
                // nothing and comes here no more, so this pages once.
                page_a_person(app);
            }
            Ok(Settled::Applied)
        }
        Ok(Applied::Nothing) => Ok(Settled::Unchanged),
        Ok(Applied::ByHand { refunded_in_full }) => {
            // Recorded with its `refund_by_hand` event, in the write that created the refund
            // record: a repeat finds the record and comes here no more, so this pages once.
            tracing::error!(out_refund_no = %n.out_refund_no, out_trade_no = %n.out_trade_no, refund_id = %n.refund_id, refund_fee = n.refund_fee.get(), request_source = n.request_source.as_deref().unwrap_or(""), refunded_in_full, "refund made outside wxshop (merchant platform): recorded on the order; the trading component's after-sale side does not know of it");
            page_a_person(app);
            Ok(Settled::Applied)
        }
        Ok(Applied::ByHandHeld) => {
            // Kept as its `refund_abnormal` event in the write that decided it: a repeat finds
            // the event and comes here no more, so this pages once.
            tracing::error!(out_refund_no = %n.out_refund_no, out_trade_no = %n.out_trade_no, refund_id = %n.refund_id, refund_fee = n.refund_fee.get(), "refund made outside wxshop that WeChat could not pay out (CHANGE): the money waits at WeChat; redirect it in the merchant platform");
            page_a_person(app);
            Ok(Settled::Applied)
        }
        Ok(Applied::AlreadyRefunded {
            aftersale_id,
            settled_by,
        }) => {
            // A SUCCESS means the money went back a second time: a person recovers it. A
            // CHANGE means it left the merchant a second time and waits at WeChat to be
            // redirected: a person gets it back (it used to be a warning only, paging nobody,
            // though a person is all that moves it).
            let moved = matches!(n.status, WxRefundStatus::Success | WxRefundStatus::Change);
            if moved {
                tracing::error!(out_refund_no = %n.out_refund_no, refund_id = %n.refund_id, status = %n.status, aftersale_id = %aftersale_id, settled_by = settled_by.as_deref().unwrap_or("by hand"), "refund SUCCESS or CHANGE for an after-sale refunded already by another refund: not counted again; the money left a second time (paid to the user, or waiting at WeChat)");
            } else {
                tracing::warn!(out_refund_no = %n.out_refund_no, status = %n.status, aftersale_id = %aftersale_id, "refund outcome for an after-sale refunded already by another refund: nothing changes");
            }
            let mut body = summary();
            body["aftersale_id"] = aftersale_id.as_str().into();
            body["aftersale_refunded_by"] = settled_by.into();
            body["what_to_do"] = "the after-sale's money is counted once, from the refund that \
                completed it; if WeChat paid this refund too, recover the difference from the \
                user; if it holds it (CHANGE), have it returned to the merchant"
                .into();
            let key = format!("{}/{}/{}", n.out_refund_no, n.refund_id, n.status);
            let first = keep_evidence(app, "refund_superseded", key, body.to_string()).await?;
            if first && moved {
                page_a_person(app);
            }
            Ok(Settled::Superseded)
        }
        Ok(Applied::Refused(why)) | Err(RefundApplyError::Mismatch(why)) => {
            tracing::warn!(security = true, out_refund_no = %n.out_refund_no, why, reported_by = by.as_str(), "refund report does not match our refund");
            let mut body = summary();
            body["why"] = why.clone().into();
            let key = format!("{}/{}", n.out_refund_no, n.refund_id);
            let _ = keep_evidence(app, "refund_mismatch", key, body.to_string()).await;
            Err(RefundApplyError::Mismatch(why))
        }
        Err(e) => Err(e),
    }
}

/// What [`apply_refund`] did.
enum Applied {
    Recorded,
    Nothing,
    /// A refund we never asked for, recorded on its order ([`made_by_hand`]).
    ByHand {
        refunded_in_full: bool,
    },
    /// A refund we never asked for that WeChat could not pay out (`CHANGE`), kept as a
    /// `refund_abnormal` event; the order's books do not change ([`made_by_hand`]).
    ByHandHeld,
    AlreadyRefunded {
        aftersale_id: AfterSaleId,
        /// The WeChat refund that completed it (`None`: a person did).
        settled_by: Option<String>,
    },
    /// Not ours to apply ([`RefundApplyError::Mismatch`]), on the records as they still stand
    /// ([`refused_as_read`]).
    Refused(String),
}

/// A verdict that a report is not ours to apply — kept as `refund_mismatch`, answered `FAIL`,
/// counted as unrecorded — made on the records read, and so committed as `conditions` on them
/// only: that each is still at the version read (or still absent). A read another report made
/// stale — a copy of this notification, or the other outcome of one refund, recording it
/// between this report's reads — fails the condition, and the report reads again and decides
/// again: it finds the refund recorded (a repeat, acknowledged), not "beyond what the order has
/// left" or an after-sale in a state it cannot move from. It used to be returned on the reads
/// as they were, with no condition.
fn refused_as_read(
    conditions: Batch,
    why: impl Into<String>,
) -> Result<Attempt<Applied>, RefundApplyError> {
    Ok(Attempt::Commit(conditions, Applied::Refused(why.into())))
}

/// Refund outcome → refund record, order (refunded amount) and after-sale, atomically, plus
/// the after-sale sync to the trading component. The order gains an after-sale's amount
/// only as the after-sale becomes REFUNDED, so two refunds of one after-sale (a closed
/// number whose late SUCCESS arrives after the new number's) count its money once.
async fn apply_refund(
    app: &App,
    n: &RefundReport,
    by: ReportedBy,
) -> Result<Applied, RefundApplyError> {
    with_retries(app, || async {
        let Some(refund) = repo::get_refund(app.store.as_ref(), &n.out_refund_no).await? else {
            return made_by_hand(app, n, by).await;
        };
        // What this report's verdicts are read from: a refusal stands only on them as read.
        let mut read = Batch::new();
        read.check_refund(&refund);
        if refund.value.out_trade_no != n.out_trade_no || refund.value.amount != n.refund_fee {
            return refused_as_read(read, "order or amount differs");
        }
        let Some(order) = repo::get_order(app.store.as_ref(), &n.out_trade_no).await? else {
            return refused_as_read(read, "unknown order");
        };
        read.check_order(&order);
        if order.value.total != n.total_fee {
            return refused_as_read(read, "order total differs");
        }
        if order
            .value
            .transaction_id
            .as_deref()
            .is_some_and(|t| t != n.transaction_id)
        {
            return refused_as_read(read, "the refund is of another payment than the order's");
        }
        // Only SUCCESS, CHANGE and REFUNDCLOSE are outcomes; anything else changes nothing.
        let outcome = match &n.status {
            WxRefundStatus::Success => RefundStatus::Success,
            // The money did not leave.
            WxRefundStatus::RefundClose => RefundStatus::Failed,
            // WeChat took it but could not pay it into the user's account (card closed or
            // frozen): it waits at WeChat for the merchant to redirect it by hand.
            WxRefundStatus::Change => RefundStatus::Abnormal,
            other => {
                tracing::warn!(out_refund_no = %n.out_refund_no, status = ?other, reported_by = by.as_str(), "refund report without an outcome: nothing changes");
                return Ok(Attempt::Done(Applied::Nothing));
            }
        };
        match (refund.value.status, outcome) {
            (RefundStatus::Success, _) => return Ok(Attempt::Done(Applied::Nothing)), // a repeat
            (from, to) if from == to => return Ok(Attempt::Done(Applied::Nothing)),   // a repeat
            // Closed after it was taken as abnormal: the money still waits at WeChat, and
            // only a person knows where it went; the record stays abnormal.
            (RefundStatus::Abnormal, RefundStatus::Failed) => {
                tracing::warn!(out_refund_no = %n.out_refund_no, "REFUNDCLOSE for a refund WeChat held as abnormal: left for a person");
                return Ok(Attempt::Done(Applied::Nothing));
            }
            // SUCCESS for a refund we took as failed: the money went back after all (WeChat
            // refused our request yet refunded, or a closed refund's retry succeeded) — the
            // record follows the money, unless it names another WeChat refund. CHANGE for
            // it: the money left after all, and waits at WeChat.
            (RefundStatus::Failed, RefundStatus::Success | RefundStatus::Abnormal)
                if refund
                    .value
                    .refund_id
                    .as_deref()
                    .is_some_and(|id| id != n.refund_id) =>
            {
                return refused_as_read(
                    read,
                    "an outcome for another WeChat refund than the one that failed",
                );
            }
            _ => {}
        }
        // A refund made by hand names no after-sale; it is recorded SUCCESS at once, so
        // only its repeats come this far (above), and change nothing.
        let Some(aftersale_id) = refund.value.aftersale_id.as_ref() else {
            return Ok(Attempt::Done(Applied::Nothing));
        };
        let aftersale = repo::get_aftersale(app.store.as_ref(), aftersale_id).await?;
        match &aftersale {
            Some(a) => read.check_aftersale(a),
            None => read.check_no_aftersale(aftersale_id),
        };
        if let Some(a) = aftersale
            .as_ref()
            .filter(|a| a.value.status == AfterSaleStatus::Refunded)
        {
            // Refunded already by another refund of it (this record is not the SUCCESS one):
            // its money is on the order once; this report changes nothing. Decided only on the
            // refund record as it still stands: read before the after-sale, it may be stale —
            // a copy of this report, or the refund sweep, recording this very refund between
            // the two reads — and this report would be taken for a second refund (kept as
            // `refund_superseded`, a person paged to recover money paid once). A condition on
            // the record's version makes such a read retry, and find the refund recorded.
            let mut batch = Batch::new();
            batch.check_refund(&refund);
            return Ok(Attempt::Commit(
                batch,
                Applied::AlreadyRefunded {
                    aftersale_id: a.value.id.clone(),
                    settled_by: a.value.refund_id.clone(),
                },
            ));
        }
        if refund.value.status == RefundStatus::Failed {
            tracing::warn!(out_refund_no = %n.out_refund_no, status = %n.status, "refund recorded as failed left at WeChat: recording it");
        }
        let now = app.clock.now_ms();
        let mut batch = Batch::new();
        let mut next_refund = refund.value.clone();
        next_refund.refund_id = Some(n.refund_id.clone());
        next_refund.updated_at_ms = now;
        next_refund.status = outcome;
        if outcome == RefundStatus::Success {
            // Places it among the refunds recorded successful today, for reconciliation.
            next_refund.succeeded_at_ms = n.success_time_ms;
            next_refund.success_recorded_at_ms = Some(now);
        }
        batch.update_refund(&refund, &next_refund);
        let mut refunds_order = aftersale.is_none() && outcome == RefundStatus::Success;
        if outcome == RefundStatus::Abnormal {
            // For the merchant: the refund must be redirected by hand in the merchant
            // platform; the after-sale is held (REFUND_ABNORMAL) and its amount stays held
            // on the order until a person records the outcome.
            tracing::error!(out_refund_no = %n.out_refund_no, refund_id = %n.refund_id, aftersale_id = %aftersale_id, "refund abnormal (CHANGE): WeChat holds the money; redirect it in the merchant platform, then mark the after-sale refunded");
            let body = serde_json::json!({"out_refund_no": n.out_refund_no.as_str(),
                "out_trade_no": n.out_trade_no.as_str(), "refund_id": n.refund_id,
                "refund_fee": n.refund_fee.get(), "aftersale_id": aftersale_id.as_str(),
                "what_to_do": "redirect the refund in the WeChat Pay merchant platform (交易中心 → 退款管理), then POST /admin/aftersaleSync {action: mark_refunded}"});
            batch.record_event(&repo::EventRecord::new(
                "refund_abnormal",
                n.out_refund_no.as_str(),
                now,
                body.to_string(),
            ));
        }
        if outcome == RefundStatus::Failed {
            // For the merchant: the money did not leave, and nothing sends it again until the
            // after-sale (REFUND_FAILED) is approved again.
            tracing::error!(out_refund_no = %n.out_refund_no, aftersale_id = %aftersale_id, "refund closed by WeChat (REFUNDCLOSE): nothing was refunded; approve the after-sale again");
            let body = serde_json::json!({"out_refund_no": n.out_refund_no.as_str(),
                "out_trade_no": n.out_trade_no.as_str(), "refund_id": n.refund_id,
                "refund_fee": n.refund_fee.get(), "aftersale_id": aftersale_id.as_str(),
                "what_to_do": "WeChat Pay closed this refund without paying it: approve the \
                    after-sale again (POST /admin/aftersaleSync {action: approve}), which \
                    refunds it under a new out_refund_no"});
            batch.record_event(&repo::EventRecord::new(
                REFUND_CLOSED_EVENTS,
                n.out_refund_no.as_str(),
                now,
                body.to_string(),
            ));
        }
        if let Some(a) = &aftersale {
            let mut next_a = a.value.clone();
            // The after-sale in a state this outcome cannot move it from: a REFUNDCLOSE finding it
            // REFUND_ABNORMAL, say. Read after the refund record, it may be a CHANGE of this very
            // refund recorded between the two reads — which, read again, leaves this REFUNDCLOSE
            // nothing to change (see above) — so the refusal is conditional too.
            let moved = match outcome {
                RefundStatus::Success => next_a.refunded(Some(n.refund_id.clone()), now),
                RefundStatus::Abnormal => next_a.refund_abnormal(now),
                _ => next_a.refund_failed(now),
            };
            let changed = match moved {
                Ok(changed) => changed,
                Err(e) => return refused_as_read(read, e.to_string()),
            };
            if changed == Change::Changed {
                refunds_order = next_a.status == AfterSaleStatus::Refunded;
                batch.update_aftersale(a, &next_a);
                // Its units back on sale, if it took them back (once: only this change to
                // REFUNDED adds the task).
                if let Some(e) = super::stock_back::due(&order.value, &next_a, now) {
                    batch.enqueue(e);
                }
                if order.value.at_wechat().component_order && next_a.mirrored_to_wechat() {
                    batch.enqueue(OutboxEntry::new(
                        Task::AfterSaleSync {
                            aftersale_id: next_a.id.clone(),
                        },
                        now,
                    ));
                }
            }
        }
        if refunds_order {
            let mut next_order = order.value.clone();
            if let Err(e) = next_order.refund_aftersale(aftersale_id, n.refund_fee, now) {
                return refused_as_read(read, e.to_string());
            }
            batch.update_order(&order, &next_order);
        }
        if by == ReportedBy::Query {
            // The notification never came (a wrong notify URL, or our refusals outlasted
            // WeChat's retries): worth a look at why, so it is kept.
            tracing::warn!(out_refund_no = %n.out_refund_no, status = %n.status, aftersale_id = %aftersale_id, "refund settled by the schedule's refundquery: its notification never came");
            let mut body = serde_json::json!({"out_refund_no": n.out_refund_no.as_str(),
                "out_trade_no": n.out_trade_no.as_str(), "refund_id": n.refund_id,
                "refund_fee": n.refund_fee.get(), "status": n.status.as_str(),
                "success_time_ms": n.success_time_ms, "recv_account": n.recv_account,
                "aftersale_id": aftersale_id.as_str()});
            body["what_to_check"] = "refund notifications are not arriving: check \
                WXPAY_REFUND_NOTIFY_URL and /callbacks/refund's logs"
                .into();
            batch.record_event(&repo::EventRecord::new(
                "refund_settled_by_sweep",
                format!("{}/{}", n.out_refund_no, n.status),
                now,
                body.to_string(),
            ));
        }
        Ok(Attempt::Commit(batch, Applied::Recorded))
    })
    .await
}

/// The event source of refunds made outside wxshop, recorded on their order.
pub const REFUND_BY_HAND_EVENTS: &str = "refund_by_hand";

/// The event source of after-sales' refunds WeChat Pay closed unpaid (`REFUNDCLOSE`; keyed
/// by `out_refund_no`): the after-sale reads REFUND_FAILED until the merchant approves again.
pub const REFUND_CLOSED_EVENTS: &str = "refund_closed";

/// A refund notification for an `out_refund_no` we have no record of: no after-sale of ours
/// asked for it — a person refunded in the WeChat Pay merchant platform
/// (`refund_request_source` `VENDOR_PLATFORM`, WeChat's own refund number), or another system
/// holding our API key did. The money went back whatever our books say, so a `SUCCESS` of one
/// of our paid orders, naming its payment and total, is recorded in one conditional write: a
/// refund record ([`RefundOrigin::ByHand`], keyed by its `out_refund_no`: a repeat finds it
/// and changes nothing), the order's refunded amount grown by it — REFUNDED, and so no longer
/// shippable, once nothing is left; what after-sales may still ask for shrinks with it — and
/// a `refund_by_hand` event for a person: the trading component's after-sale side does not
/// know of this refund, and WeChat's APIs offer no call that tells it (WECHAT_SHOP.md §5, §7).
///
/// A `CHANGE` of such an order (WeChat could not pay the refund out; the money waits there for
/// a person to redirect it) does not refund the order: it is kept once as a `refund_abnormal`
/// event, keyed by its `out_refund_no`, pages a person, and is acknowledged — as for a `CHANGE`
/// of our own refunds. Answering `FAIL` only made WeChat retry for a day, changing nothing.
///
/// Everything else stays a mismatch for a person (kept as evidence, `FAIL`): an order we do
/// not have or whose total or payment differ, a refund beyond what the order has left — each
/// only while no refund record of it appeared and the order is as read ([`refused_as_read`]):
/// a copy of the notification that recorded it meanwhile makes this one a repeat.
/// `PROCESSING` and `REFUNDCLOSE` moved no money: acknowledged, nothing recorded.
/// `refundquery` asks about our own refunds only: an answer without a record stays a mismatch.
async fn made_by_hand(
    app: &App,
    n: &RefundReport,
    by: ReportedBy,
) -> Result<Attempt<Applied>, RefundApplyError> {
    // Its verdicts stand only on the records as read ([`refused_as_read`]): still no refund
    // record (a copy of this notification recording it after our read finds it, read again: a
    // repeat), the order still at the version read.
    let mut read = Batch::new();
    read.check_no_refund(&n.out_refund_no);
    if by != ReportedBy::Notification {
        return refused_as_read(read, "unknown out_refund_no");
    }
    let Some(order) = repo::get_order(app.store.as_ref(), &n.out_trade_no).await? else {
        return refused_as_read(read, "unknown out_refund_no, of an order we do not have");
    };
    read.check_order(&order);
    if order.value.fund_type != crate::domain::FundType::Direct
        || !order.value.status.is_paid()
        || order.value.transaction_id.as_deref() != Some(n.transaction_id.as_str())
    {
        return refused_as_read(read, "unknown out_refund_no, of a payment we did not take");
    }
    if order.value.total != n.total_fee {
        return refused_as_read(read, "unknown out_refund_no, and the order total differs");
    }
    match &n.status {
        WxRefundStatus::Success => {}
        WxRefundStatus::Processing | WxRefundStatus::RefundClose => {
            tracing::warn!(out_refund_no = %n.out_refund_no, out_trade_no = %n.out_trade_no, status = %n.status, "refund made outside wxshop without an outcome, or closed: no money moved; nothing recorded");
            return Ok(Attempt::Done(Applied::Nothing));
        }
        WxRefundStatus::Change => return held_by_hand(app, n, &order).await,
        _ => return refused_as_read(read, "unknown out_refund_no, and no SUCCESS"),
    }
    let now = app.clock.now_ms();
    let mut next_order = order.value.clone();
    if let Err(e) = next_order.refund_by_hand(&n.out_refund_no, n.refund_fee, now) {
        // Read after a copy of this notification recorded it (the record read before), the
        // order has this refund counted already: conditional, so the copy reads again and
        // finds the record.
        return refused_as_read(
            read,
            format!("unknown out_refund_no, beyond what the order has left: {e}"),
        );
    }
    let refunded_in_full = next_order.status == crate::domain::OrderStatus::Refunded;
    let record = repo::RefundRecord {
        out_refund_no: n.out_refund_no.clone(),
        out_trade_no: n.out_trade_no.clone(),
        aftersale_id: None,
        amount: n.refund_fee,
        status: RefundStatus::Success,
        refund_id: Some(n.refund_id.clone()),
        origin: RefundOrigin::ByHand,
        request_source: n.request_source.clone(),
        succeeded_at_ms: n.success_time_ms,
        success_recorded_at_ms: Some(now),
        created_at_ms: now,
        updated_at_ms: now,
        checked_at_ms: None,
    };
    let what_to_do = if refunded_in_full {
        "refunded outside wxshop: the order is REFUNDED and no longer ships"
    } else {
        "refunded outside wxshop in part: the order's refundable amount shrank; the rest still ships"
    };
    let body = serde_json::json!({"out_refund_no": n.out_refund_no.as_str(),
        "out_trade_no": n.out_trade_no.as_str(), "refund_id": n.refund_id,
        "refund_fee": n.refund_fee.get(), "success_time_ms": n.success_time_ms,
        "recv_account": n.recv_account, "request_source": n.request_source,
        "order_refunded": next_order.refunded.get(), "order_status": next_order.status.as_str(),
        "open_aftersales_hold": next_order.claimed().get(),
        "what_to_do": format!("{what_to_do}. WeChat's trading component has no after-sale for \
            this refund: if the order is in it, reconcile it there by hand. If this refund paid an \
            open after-sale, record it with POST /admin/aftersaleSync {{action: mark_refunded, \
            aftersale_id, out_refund_no}} (approving it would pay again); if open after-sales \
            hold more than is left, reject or cancel them")});
    let mut batch = Batch::new();
    batch.create_refund(&record);
    batch.update_order(&order, &next_order);
    batch.record_event(&repo::EventRecord::new(
        REFUND_BY_HAND_EVENTS,
        n.out_refund_no.as_str(),
        now,
        body.to_string(),
    ));
    Ok(Attempt::Commit(batch, Applied::ByHand { refunded_in_full }))
}

/// [`made_by_hand`]'s `CHANGE`: a `refund_abnormal` event, once, while the order is still as
/// read; the order itself does not change (no money left the merchant's hands).
async fn held_by_hand(
    app: &App,
    n: &RefundReport,
    order: &repo::Versioned<crate::domain::Order>,
) -> Result<Attempt<Applied>, RefundApplyError> {
    let key = n.out_refund_no.as_str();
    if repo::get_event(app.store.as_ref(), "refund_abnormal", key)
        .await?
        .is_some()
    {
        return Ok(Attempt::Done(Applied::Nothing));
    }
    let body = serde_json::json!({"out_refund_no": key,
        "out_trade_no": n.out_trade_no.as_str(), "refund_id": n.refund_id,
        "refund_fee": n.refund_fee.get(), "recv_account": n.recv_account,
        "request_source": n.request_source, "made_by_hand": true,
        "what_to_do": "a refund made outside wxshop (merchant platform) that WeChat could not \
            pay out: redirect it in the WeChat Pay merchant platform (交易中心 → 退款管理). \
            wxshop's books for the order are unchanged"});
    let mut batch = Batch::new();
    batch.check_order(order);
    batch.record_event(&repo::EventRecord::new(
        "refund_abnormal",
        key,
        app.clock.now_ms(),
        body.to_string(),
    ));
    Ok(Attempt::Commit(batch, Applied::ByHandHeld))
}

#[cfg(all(test, feature = "sqlite"))]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::app::App;
    use crate::domain::{Fen, OpenId, OutTradeNo};
    use crate::metrics::{
        Captured, Metrics, MONEY_NEEDS_A_PERSON, PAY_NOTIFY_UNRECORDED, PAY_NOTIFY_UNVERIFIED,
    };
    use crate::pay::notify::{build_payment_notification, PaymentNotificationSpec};
    use crate::pay::sign::SignType;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{Page, Query, Record, Store, StoreError, Write};
    use async_trait::async_trait;
    use bytes::Bytes;
    use std::sync::Arc;

    const API_KEY: &str = App::TEST_API_KEY;

    /// DynamoDB throttling, `AccessDenied` or an outage, as the handlers see it.
    struct Unavailable;

    #[async_trait]
    impl Store for Unavailable {
        async fn get(&self, _: crate::store::Kind, _: &str) -> Result<Option<Record>, StoreError> {
            Err(StoreError::Backend(
                "AccessDeniedException (injected)".into(),
            ))
        }
        async fn write(&self, _: Vec<Write>) -> Result<(), StoreError> {
            Err(StoreError::Backend(
                "AccessDeniedException (injected)".into(),
            ))
        }
        async fn query(&self, _: Query) -> Result<Page, StoreError> {
            Err(StoreError::Backend(
                "AccessDeniedException (injected)".into(),
            ))
        }
        fn backend(&self) -> &'static str {
            "unavailable"
        }
    }

    fn app(store: Arc<dyn Store>) -> (App, Captured) {
        let mut app = App::for_tests(store);
        let (metrics, captured) = Metrics::capture("wxshop-PayCallbackFunction-X");
        app.metrics = metrics;
        (app, captured)
    }

    fn notification(mch_id: &str, key: &str) -> String {
        build_payment_notification(
            &PaymentNotificationSpec {
                appid: "wx0000000000000001".into(),
                mch_id: mch_id.into(),
                sub_appid: None,
                sub_mch_id: None,
                openid: OpenId::parse("oUpF8uMEb4qRXf22hE3X68TekukE").unwrap(),
                out_trade_no: OutTradeNo::parse("WX20240101000000000001").unwrap(),
                transaction_id: "4200000000202401010000000001".into(),
                total_fee: Fen::new(100).unwrap(),
                time_end_ms: 1_704_067_200_000,
                attach: None,
                sign_type: SignType::Md5,
                omit_sign_type: false,
            },
            key,
        )
    }

    /// POSTs `body` to `/callbacks/pay` through the routing table; the reply's XML.
    async fn notify(app: &App, body: String) -> String {
        let route = crate::handlers::find_route("POST", "/callbacks/pay").unwrap();
        let req = http::Request::builder()
            .method("POST")
            .uri("/callbacks/pay")
            .body(Bytes::from(body))
            .unwrap();
        let resp = crate::handlers::handle(app, route, req).await;
        assert_eq!(resp.status(), 200, "WeChat Pay always gets 200");
        String::from_utf8(resp.body().to_vec()).unwrap()
    }

    /// GIVEN the store refuses every call (throttled, AccessDenied) WHEN WeChat Pay notifies a
    /// genuine payment THEN the reply is FAIL (WeChat retries) and one `PayNotifyUnrecorded`
    /// is counted — Lambda's `Errors` cannot see it, so this is what the alarm watches.
    #[tokio::test]
    async fn a_payment_the_store_cannot_record_is_counted() {
        let (app, captured) = app(Arc::new(Unavailable));
        let reply = notify(&app, notification("1900000001", API_KEY)).await;
        assert!(reply.contains("FAIL"), "{reply}");
        assert_eq!(captured.total(PAY_NOTIFY_UNRECORDED), 1);
        assert_eq!(captured.total(PAY_NOTIFY_UNVERIFIED), 0);
    }

    /// GIVEN the stack's WXPAY_API_KEY (or merchant id) differs from WeChat's WHEN a genuine
    /// notification arrives THEN it is refused and counted as `PayNotifyUnverified`; a body
    /// that is no signed notification at all is refused without being counted.
    #[tokio::test]
    async fn a_notification_our_key_does_not_verify_is_counted() {
        let (app, captured) = app(Arc::new(SqliteStore::memory().unwrap()));
        let wrong_key = notify(
            &app,
            notification("1900000001", "anotherkey000000000000000000009"),
        )
        .await;
        assert!(wrong_key.contains("FAIL"), "{wrong_key}");
        let wrong_merchant = notify(&app, notification("1900000777", API_KEY)).await;
        assert!(wrong_merchant.contains("FAIL"), "{wrong_merchant}");
        assert_eq!(captured.total(PAY_NOTIFY_UNVERIFIED), 2);

        let junk = notify(&app, "<xml><a>1</a></xml>".into()).await;
        assert!(junk.contains("FAIL"), "{junk}");
        assert_eq!(
            captured.total(PAY_NOTIFY_UNVERIFIED),
            2,
            "junk is not counted"
        );
        assert_eq!(captured.total(PAY_NOTIFY_UNRECORDED), 0);
    }

    /// POSTs `body` to `path` (a payCallback route); the reply's XML.
    async fn post(app: &App, path: &str, body: String) -> String {
        let route = crate::handlers::find_route("POST", path).unwrap();
        let req = http::Request::builder()
            .method("POST")
            .uri(path)
            .body(Bytes::from(body))
            .unwrap();
        let resp = crate::handlers::handle(app, route, req).await;
        assert_eq!(resp.status(), 200, "WeChat Pay always gets 200");
        String::from_utf8(resp.body().to_vec()).unwrap()
    }

    /// Order WX20240101000000000001 (100 fen), paid with transaction `txid`, stored.
    async fn paid_order(store: &SqliteStore, txid: &str) -> crate::domain::Order {
        let mut o = crate::domain::order::tests::sample_order(100);
        o.out_trade_no = OutTradeNo::parse("WX20240101000000000001").unwrap();
        o.status = crate::domain::OrderStatus::Paid;
        o.transaction_id = Some(txid.into());
        o.paid_at_ms = Some(1);
        let mut b = crate::store::repo::Batch::new();
        b.create_order(&o);
        b.commit(store).await.unwrap();
        o
    }

    /// GIVEN a paid order WHEN WeChat Pay notifies a second, different payment for it (the
    /// user paid twice) THEN it is acknowledged (WeChat cannot undo it by retrying), kept, and
    /// counted once as `MoneyNeedsAPerson` — the acknowledgement hides it from every `FAIL`
    /// count, and it used to page nobody; a repeat of it counts nothing more.
    #[tokio::test]
    async fn a_double_payment_pages_a_person_once() {
        let store = Arc::new(SqliteStore::memory().unwrap());
        let (app, captured) = app(store.clone());
        paid_order(&store, "4200000000202401010000000009").await;
        for _ in 0..2 {
            let reply = notify(&app, notification("1900000001", API_KEY)).await;
            assert!(reply.contains("SUCCESS"), "{reply}");
        }
        assert_eq!(captured.total(MONEY_NEEDS_A_PERSON), 1);
        assert_eq!(captured.total(PAY_NOTIFY_UNRECORDED), 0);
    }

    /// GIVEN a refund under way WHEN its notification says CHANGE (WeChat took the money but
    /// could not pay it into the user's account) THEN it is acknowledged, held for a person
    /// and counted once as `MoneyNeedsAPerson`; a repeat counts nothing more.
    #[tokio::test]
    async fn an_abnormal_refund_pages_a_person_once() {
        use crate::domain::{AfterSale, AfterSaleId, AfterSaleKind, AfterSaleStatus, OutRefundNo};
        use crate::pay::refund_notify::{build_refund_notification, RefundNotificationSpec};
        use crate::pay::types::RefundStatus as Wx;
        use crate::store::repo::{Batch, RefundRecord, RefundStatus};
        let store = Arc::new(SqliteStore::memory().unwrap());
        let (app, captured) = app(store.clone());
        let txid = "4200000000202401010000000001";
        let mut order = paid_order(&store, txid).await;
        let id = AfterSaleId::parse("AS1").unwrap();
        let no = OutRefundNo::parse("R20240101000000000001").unwrap();
        let a = AfterSale {
            id: id.clone(),
            out_trade_no: order.out_trade_no.clone(),
            openid: order.openid.clone(),
            kind: AfterSaleKind::RefundOnly,
            amount: Fen::new(100).unwrap(),
            reason: "broken".into(),
            status: AfterSaleStatus::Refunding,
            out_refund_no: Some(no.clone()),
            refund_id: None,
            wx_aftersale_id: None,
            wx_add_claimed_until_ms: None,
            restock: false,
            reject_reason: None,
            goods_return: None,
            line: None,
            created_at_ms: 1,
            updated_at_ms: 1,
            refunded_at_ms: None,
            by: Default::default(),
        };
        let mut refund = RefundRecord::new(
            no.clone(),
            order.out_trade_no.clone(),
            id.clone(),
            Fen::new(100).unwrap(),
            1,
        );
        refund.status = RefundStatus::Processing;
        let stored = crate::store::repo::get_order(store.as_ref(), &order.out_trade_no)
            .await
            .unwrap()
            .unwrap();
        order.refund_claims.insert(id, Fen::new(100).unwrap());
        let mut b = Batch::new();
        b.update_order(&stored, &order);
        b.create_aftersale(&a);
        b.create_refund(&refund);
        b.commit(store.as_ref()).await.unwrap();
        let change = build_refund_notification(
            &RefundNotificationSpec {
                appid: "wx0000000000000001".into(),
                mch_id: "1900000001".into(),
                sub_appid: None,
                sub_mch_id: None,
                out_trade_no: order.out_trade_no.clone(),
                out_refund_no: no,
                transaction_id: txid.into(),
                refund_id: "50300000000000000000000000001".into(),
                total_fee: Fen::new(100).unwrap(),
                refund_fee: Fen::new(100).unwrap(),
                refund_status: Wx::Change,
                success_time_ms: None,
            },
            API_KEY,
        );
        for _ in 0..2 {
            let reply = post(&app, "/callbacks/refund", change.clone()).await;
            assert!(reply.contains("SUCCESS"), "{reply}");
        }
        assert_eq!(captured.total(MONEY_NEEDS_A_PERSON), 1);
        assert_eq!(captured.total(PAY_NOTIFY_UNRECORDED), 0);
    }

    /// A refund notification for order WX20240101000000000001 (100 fen, paid with `txid`):
    /// `out_refund_no` refunding `fee`.
    fn refund_notice(out_refund_no: &str, txid: &str, fee: i64) -> String {
        refund_notice_as(
            out_refund_no,
            txid,
            fee,
            crate::pay::types::RefundStatus::Success,
        )
    }

    /// [`refund_notice`] with `status` (no success time unless `SUCCESS`).
    fn refund_notice_as(
        out_refund_no: &str,
        txid: &str,
        fee: i64,
        status: crate::pay::types::RefundStatus,
    ) -> String {
        use crate::pay::refund_notify::{build_refund_notification, RefundNotificationSpec};
        let success = status == crate::pay::types::RefundStatus::Success;
        build_refund_notification(
            &RefundNotificationSpec {
                appid: "wx0000000000000001".into(),
                mch_id: "1900000001".into(),
                sub_appid: None,
                sub_mch_id: None,
                out_trade_no: OutTradeNo::parse("WX20240101000000000001").unwrap(),
                out_refund_no: crate::domain::OutRefundNo::parse(out_refund_no).unwrap(),
                transaction_id: txid.into(),
                refund_id: out_refund_no.into(),
                total_fee: Fen::new(100).unwrap(),
                refund_fee: Fen::new(fee).unwrap(),
                refund_status: status,
                success_time_ms: success.then_some(1_704_067_200_000),
            },
            API_KEY,
        )
    }

    /// GIVEN a paid order WHEN a refund made by hand in the merchant platform (a number we
    /// never issued) is notified twice THEN both are acknowledged, the order's refunded amount
    /// grows once, and `MoneyNeedsAPerson` is counted once (the trading component does not
    /// know of the refund); nothing counts as unrecorded. It used to be refused (`FAIL`,
    /// `PayNotifyUnrecorded` on each retry) and the order's books left untouched.
    #[tokio::test]
    async fn a_refund_made_by_hand_is_recorded_and_pages_a_person_once() {
        let store = Arc::new(SqliteStore::memory().unwrap());
        let (app, captured) = app(store.clone());
        let txid = "4200000000202401010000000001";
        let order = paid_order(&store, txid).await;
        let body = refund_notice("50300000000000000000000000077", txid, 40);
        for _ in 0..2 {
            let reply = post(&app, "/callbacks/refund", body.clone()).await;
            assert!(reply.contains("SUCCESS"), "{reply}");
        }
        let stored = crate::store::repo::get_order(store.as_ref(), &order.out_trade_no)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.value.refunded.get(), 40);
        assert_eq!(stored.value.status, crate::domain::OrderStatus::Paid);
        assert_eq!(captured.total(MONEY_NEEDS_A_PERSON), 1);
        assert_eq!(captured.total(PAY_NOTIFY_UNRECORDED), 0);
    }

    /// GIVEN a paid order WHEN a refund made by hand in the merchant platform that WeChat could
    /// not pay out (`CHANGE`) is notified twice THEN both are acknowledged, one
    /// `refund_abnormal` event is kept, `MoneyNeedsAPerson` is counted once and the order's
    /// books do not change; the same notice naming another payment stays a `FAIL`. It used to
    /// be answered `FAIL` on every retry for a day, and nobody was paged.
    #[tokio::test]
    async fn a_refund_made_by_hand_wechat_could_not_pay_is_kept_and_pages_once() {
        use crate::pay::types::RefundStatus as Wx;
        let store = Arc::new(SqliteStore::memory().unwrap());
        let (app, captured) = app(store.clone());
        let txid = "4200000000202401010000000001";
        let order = paid_order(&store, txid).await;
        let no = "50300000000000000000000000078";
        let foreign = refund_notice_as(no, "4200000000202401019999999999", 40, Wx::Change);
        let reply = post(&app, "/callbacks/refund", foreign).await;
        assert!(reply.contains("FAIL"), "another payment: {reply}");
        for _ in 0..2 {
            let reply = post(
                &app,
                "/callbacks/refund",
                refund_notice_as(no, txid, 40, Wx::Change),
            )
            .await;
            assert!(reply.contains("SUCCESS"), "{reply}");
        }
        let kept = crate::store::repo::get_event(store.as_ref(), "refund_abnormal", no)
            .await
            .unwrap()
            .expect("kept for a person");
        assert!(kept.value.body.contains("redirect"), "{}", kept.value.body);
        let stored = crate::store::repo::get_order(store.as_ref(), &order.out_trade_no)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.value.refunded.get(), 0);
        assert_eq!(stored.value.status, crate::domain::OrderStatus::Paid);
        assert_eq!(captured.total(MONEY_NEEDS_A_PERSON), 1);
        assert_eq!(
            captured.total(PAY_NOTIFY_UNRECORDED),
            1,
            "only the other payment's notice is unrecorded"
        );
    }

    /// GIVEN a refund notification whose `req_info` decrypts under our key but whose fields do
    /// not read (`refund_fee` "0.40", `success_time` in another format) WHEN it arrives THEN
    /// it is refused, counted as `PayNotifyUnrecorded` and kept as `refund_mismatch` evidence
    /// with its fields — it used to be refused uncounted and unkept, as junk is; for another
    /// merchant it counts as `PayNotifyUnverified`.
    #[tokio::test]
    async fn a_refund_notification_we_cannot_read_is_counted_and_kept() {
        let store = Arc::new(SqliteStore::memory().unwrap());
        let (app, captured) = app(store.clone());
        let inner = |field: &str, value: &str| {
            let n = refund_notice(
                "50300000000000000000000000078",
                "4200000000000000000000000001",
                40,
            );
            let outer = crate::pay::xml::decode(n.as_bytes()).unwrap();
            let plain =
                crate::pay::refund_notify::decrypt_req_info(&outer["req_info"], API_KEY).unwrap();
            let mut f = crate::pay::xml::decode_root(&plain, "root").unwrap();
            f.insert(field.into(), value.into());
            crate::pay::refund_notify::encrypt_req_info(
                &crate::pay::xml::encode_root(&f, "root"),
                API_KEY,
            )
        };
        let body = |req_info: String, mch_id: &str| {
            let mut outer = crate::pay::sign::Fields::new();
            outer.insert("return_code".into(), "SUCCESS".into());
            outer.insert("appid".into(), "wx0000000000000001".into());
            outer.insert("mch_id".into(), mch_id.into());
            outer.insert("nonce_str".into(), "n".into());
            outer.insert("req_info".into(), req_info);
            crate::pay::xml::encode(&outer)
        };
        for (field, value) in [("refund_fee", "0.40"), ("success_time", "20240101080000")] {
            let reply = post(
                &app,
                "/callbacks/refund",
                body(inner(field, value), "1900000001"),
            )
            .await;
            assert!(reply.contains("FAIL"), "{reply}");
        }
        assert_eq!(captured.total(PAY_NOTIFY_UNRECORDED), 2);
        assert_eq!(captured.total(PAY_NOTIFY_UNVERIFIED), 0);
        let kept = crate::store::repo::get_event(
            store.as_ref(),
            "refund_mismatch",
            "unreadable/50300000000000000000000000078",
        )
        .await
        .unwrap();
        assert!(kept.is_some_and(|e| e.value.body.contains("0.40")));

        let foreign = post(
            &app,
            "/callbacks/refund",
            body(inner("refund_fee", "x"), "1900000777"),
        )
        .await;
        assert!(foreign.contains("FAIL"), "{foreign}");
        assert_eq!(captured.total(PAY_NOTIFY_UNVERIFIED), 1);
        assert_eq!(captured.total(PAY_NOTIFY_UNRECORDED), 2);
    }

    /// `notification` with `field` set to `value`, signed again.
    fn resigned(field: &str, value: &str, mch_id: &str) -> String {
        let mut f = crate::pay::xml::decode(notification(mch_id, API_KEY).as_bytes()).unwrap();
        f.remove("sign");
        f.insert(field.into(), value.into());
        crate::pay::sign::signed_xml(f, API_KEY, SignType::Md5)
    }

    /// GIVEN a notification signed with our key for our merchant whose fields do not read as a
    /// payment (`time_end` in another format) WHEN it arrives THEN it is refused, counted as
    /// `PayNotifyUnrecorded` (it used to count as junk: nothing) and kept as evidence; the same
    /// for another merchant counts as `PayNotifyUnverified`; a failed payment without a
    /// transaction is acknowledged, as any failed payment is.
    #[tokio::test]
    async fn a_signed_notification_we_cannot_read_is_counted_and_kept() {
        let store = Arc::new(SqliteStore::memory().unwrap());
        let (app, captured) = app(store.clone());
        let reply = notify(
            &app,
            resigned("time_end", "2024-01-01 08:00:00", "1900000001"),
        )
        .await;
        assert!(reply.contains("FAIL"), "{reply}");
        assert_eq!(captured.total(PAY_NOTIFY_UNRECORDED), 1);
        assert_eq!(captured.total(PAY_NOTIFY_UNVERIFIED), 0);
        let kept = crate::store::repo::get_event(
            store.as_ref(),
            "payment_mismatch",
            "4200000000202401010000000001",
        )
        .await
        .unwrap();
        assert!(kept.is_some_and(|e| e.value.body.contains("2024-01-01 08:00:00")));

        let foreign = notify(&app, resigned("time_end", "x", "1900000777")).await;
        assert!(foreign.contains("FAIL"), "{foreign}");
        assert_eq!(captured.total(PAY_NOTIFY_UNVERIFIED), 1);

        let mut f =
            crate::pay::xml::decode(notification("1900000001", API_KEY).as_bytes()).unwrap();
        for k in ["sign", "transaction_id", "time_end"] {
            f.remove(k);
        }
        f.insert("result_code".into(), "FAIL".into());
        f.insert("err_code".into(), "NOTENOUGH".into());
        let failed = notify(
            &app,
            crate::pay::sign::signed_xml(f, API_KEY, SignType::Md5),
        )
        .await;
        assert!(failed.contains("SUCCESS"), "{failed}");
        assert_eq!(captured.total(PAY_NOTIFY_UNRECORDED), 1);
    }
}
