//! Custom CloudWatch metrics, written as Embedded Metric Format (EMF) lines on stdout.
//!
//! Why this shape: in Lambda everything a function prints to stdout reaches CloudWatch Logs,
//! which turns a JSON line carrying an `_aws.CloudWatchMetrics` block into a metric — no SDK
//! client, no `cloudwatch:PutMetricData` permission, no call on the request path. The alarms
//! in `infra/template.yaml` watch what is counted here (`OutboxDeadLetterAlarm` watches
//! [`OUTBOX_DEAD_LETTERS`]; `PayNotifyUnverifiedAlarm` and `PayNotifyUnrecordedAlarm` watch
//! [`PAY_NOTIFY_UNVERIFIED`] and [`PAY_NOTIFY_UNRECORDED`]; `ExpiredOrdersHeldAlarm` watches
//! [`EXPIRED_ORDERS_HELD`]; `SchedulePhaseFailedAlarm` watches [`SCHEDULE_PHASE_FAILURES`]; `MoneyNeedsAPersonAlarm` watches [`MONEY_NEEDS_A_PERSON`] of every
//! function that records payments or refunds; `PushRefusedAlarm` watches [`PUSH_REFUSED`]).
//! payCallback answers every notification with HTTP 200 (a `FAIL` in the XML makes WeChat
//! retry), so Lambda's `Errors` never sees a payment we refused; auditCallback's refused
//! pushes are a 403, which no alarm on errors counts; and the sweep's held orders are no error
//! at all: these counts are the only signal.
//!
//! Only the Lambda entry point turns emission on ([`Metrics::emf`]). An [`crate::app::App`]
//! starts with [`Metrics::off`], so `wxlocal`, the demo and the tests print nothing; a test
//! that wants to see the lines uses [`Metrics::capture`].

use serde_json::json;
use std::io::Write as _;
use std::sync::{Arc, Mutex};

/// The CloudWatch namespace of every wxshop metric.
pub const NAMESPACE: &str = "wxshop";
/// The one dimension: the deployed function's name.
pub const DIMENSION: &str = "Function";
/// Outbox entries dead-lettered (a permanent failure, or retries exhausted).
pub const OUTBOX_DEAD_LETTERS: &str = "OutboxDeadLetters";
/// Payment/refund notifications answered `FAIL` because they did not verify with our keys:
/// the signature does not match `WXPAY_API_KEY`, `req_info` does not decrypt with it, or the
/// notification names another appid/merchant. When every notification fails this way, the
/// key or merchant id of the stack is wrong and no payment is being recorded; a few alone may
/// be forgeries (logged with `security = true`). Junk that is not a signed notification at
/// all (no XML, no `sign`) is not counted.
pub const PAY_NOTIFY_UNVERIFIED: &str = "PayNotifyUnverified";
/// Verified payment/refund notifications for our merchant answered `FAIL` without recording
/// them: the store failed (throttling, access denied, an outage), or the notification does
/// not match our order/refund or does not read as one (kept as evidence). WeChat retries;
/// until one lands, money has moved with no record of it here. Repeats of what is already
/// recorded answer `SUCCESS` and are not counted.
pub const PAY_NOTIFY_UNRECORDED: &str = "PayNotifyUnrecorded";
/// Message pushes (and the console's URL verifications) auditCallback refused with 403 as not
/// WeChat's: a signature that does not match `WX_PUSH_TOKEN` (`signature`, or `msg_signature`
/// in safe mode), a signed `timestamp` more than five minutes from our clock, or, in plaintext
/// mode, another body under a signature already used. When every push is refused this way the
/// token is not the console's or this host's clock is off, and no audit verdict, order event
/// or withdrawal notice is taken in (the schedule's sweeps catch up on some, late); a few
/// alone are someone posting what WeChat did not send (logged with `security = true`).
/// Requests without a signature (a scanner's) are not counted.
pub const PUSH_REFUSED: &str = "PushRefused";
/// Money moved that only a person can put right, newly kept as an event: a second payment for
/// a paid order (`double_payment`: the user paid twice), a refund WeChat took but could not
/// pay into the user's account (`refund_abnormal`, CHANGE: redirect it in the merchant
/// platform; or a secondary-merchant refund WeChat accepted but could not pay, held by the
/// schedule or its push), a SUCCESS for an after-sale another refund had completed (`refund_superseded`:
/// the user may have been refunded twice), a payment for an order closed and sold out
/// meanwhile (`paid_after_close_oversold`) or whose component order stays cancelled at WeChat
/// (`order_event_mismatch`), a refund WeChat Pay closed unpaid (`refund_closed`), a refund
/// made by hand in the merchant platform,
/// recorded on its order but unknown to the trading component (`refund_by_hand`). Each is acknowledged to WeChat (retrying changes
/// nothing), so no `FAIL` count sees it: this is the page. Counted by whichever function
/// learnt it — payCallback from notifications; queryOrder, orderSync and auditCallback from
/// `orderquery`/`refundquery`/`shop/order/get` answers — at most once per event.
pub const MONEY_NEEDS_A_PERSON: &str = "MoneyNeedsAPerson";
/// Schedule phases that failed (the store, WeChat, a bill that does not read): each is logged
/// at ERROR and tried again on the next run, five minutes on, and the invocation itself
/// succeeds — so Lambda's `Errors` never sees a phase that fails run after run (a wrong
/// secret, a bill format WeChat changed, a table denied). `SchedulePhaseFailedAlarm` pages
/// when one fails in three periods in a row; one failing once (WeChat busy) does not page.
pub const SCHEDULE_PHASE_FAILURES: &str = "SchedulePhaseFailures";
/// Expired unpaid orders the sweep kept open because WeChat did not say whether they were
/// paid (the question failed, or WeChat does not know the order). Closing one could release
/// the stock of an order WeChat holds the money for, so it waits — and its stock with it —
/// until WeChat answers; an order counted run after run needs a person to look it up in the
/// merchant platform.
pub const EXPIRED_ORDERS_HELD: &str = "ExpiredOrdersHeld";

/// Where metric lines go.
#[derive(Clone, Default)]
pub struct Metrics(Sink);

#[derive(Clone, Default)]
enum Sink {
    #[default]
    Off,
    Stdout {
        function: Arc<str>,
    },
    Capture {
        function: Arc<str>,
        lines: Arc<Mutex<Vec<String>>>,
    },
}

/// The lines a [`Metrics::capture`] sink kept.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<String>>>);

impl Captured {
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The sum of `metric` over every line kept: what CloudWatch would count.
    pub fn total(&self, metric: &str) -> u64 {
        self.lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v[metric].as_u64())
            .sum()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Sink::Off => write!(f, "Metrics::Off"),
            Sink::Stdout { function } => write!(f, "Metrics::Emf({function})"),
            Sink::Capture { function, .. } => write!(f, "Metrics::Capture({function})"),
        }
    }
}

impl Metrics {
    /// Nothing is emitted (`wxlocal`, tests).
    pub fn off() -> Self {
        Metrics(Sink::Off)
    }

    /// EMF lines on stdout, with `function` as the `Function` dimension (Lambda).
    pub fn emf(function: &str) -> Self {
        Metrics(Sink::Stdout {
            function: function.into(),
        })
    }

    /// Keeps the lines instead of printing them (tests).
    pub fn capture(function: &str) -> (Self, Captured) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        (
            Metrics(Sink::Capture {
                function: function.into(),
                lines: lines.clone(),
            }),
            Captured(lines),
        )
    }

    /// Adds `value` to the count `metric` at `timestamp_ms`.
    pub fn count(&self, metric: &str, value: u64, timestamp_ms: i64) {
        match &self.0 {
            Sink::Off => {}
            Sink::Stdout { function } => {
                let mut line = emf_count_line(function, metric, value, timestamp_ms);
                line.push('\n');
                // One write of the whole line under the lock: it never interleaves with the
                // JSON log lines `tracing` writes to the same stdout.
                let mut out = std::io::stdout().lock();
                if out
                    .write_all(line.as_bytes())
                    .and_then(|()| out.flush())
                    .is_err()
                {
                    tracing::error!(metric, value, "could not write a metric line to stdout");
                }
            }
            Sink::Capture { function, lines } => {
                let line = emf_count_line(function, metric, value, timestamp_ms);
                lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        }
    }
}

/// One EMF line (without the newline) counting `value` of `metric` for `function`.
///
/// It carries `"level": "ERROR"` and an RFC 3339 `"timestamp"` besides the EMF fields: the
/// template sets the functions' log format to JSON with an application log level, and Lambda's
/// log-level filtering takes a JSON line as INFO when its `level` is missing or invalid *or*
/// when it has no valid RFC 3339 `timestamp` (AWS Lambda developer guide, "Log-level
/// filtering"). At `LogLevel` WARN or ERROR such a line is dropped, and the metric — and the
/// alarm on it — with it. Every metric counted here is something a person must look at.
pub fn emf_count_line(function: &str, metric: &str, value: u64, timestamp_ms: i64) -> String {
    let mut line = json!({
        "_aws": {
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [[DIMENSION]],
                "Metrics": [{ "Name": metric, "Unit": "Count" }],
            }],
        },
        "level": "ERROR",
        "timestamp": rfc3339(timestamp_ms),
        DIMENSION: function,
    });
    if let Some(map) = line.as_object_mut() {
        map.insert(metric.to_owned(), value.into());
    }
    line.to_string()
}

/// `timestamp_ms` as RFC 3339 in UTC with milliseconds (`2023-11-14T22:13:20.000Z`), the
/// form Lambda's log-level filtering accepts; the Unix epoch if out of range.
fn rfc3339(timestamp_ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(timestamp_ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn renders_an_emf_count() {
        let line = emf_count_line(
            "wxshop-OrderSync-1",
            OUTBOX_DEAD_LETTERS,
            1,
            1_700_000_000_000,
        );
        assert!(!line.contains('\n'), "one line: {line}");
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["_aws"]["Timestamp"], 1_700_000_000_000_i64);
        let directive = &v["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "wxshop");
        assert_eq!(directive["Dimensions"], serde_json::json!([["Function"]]));
        assert_eq!(directive["Metrics"][0]["Name"], "OutboxDeadLetters");
        assert_eq!(directive["Metrics"][0]["Unit"], "Count");
        // Every dimension and metric named in the directive is a top-level member.
        assert_eq!(v["Function"], "wxshop-OrderSync-1");
        assert_eq!(v["OutboxDeadLetters"], 1);
        assert_eq!(v["level"], "ERROR");
    }

    /// Lambda's log-level filtering reads a JSON line's `level` only when the line also has a
    /// valid RFC 3339 `timestamp`; otherwise the line is INFO and, at `LogLevel` WARN or
    /// ERROR, dropped with the metric in it. The line carries both, at the metric's instant.
    #[test]
    fn the_line_survives_lambda_log_level_filtering() {
        let line = emf_count_line("f", OUTBOX_DEAD_LETTERS, 1, 1_700_000_000_123);
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "ERROR", "a level Lambda knows: {line}");
        let ts = v["timestamp"]
            .as_str()
            .expect("a top-level string timestamp");
        let parsed = chrono::DateTime::parse_from_rfc3339(ts).expect("RFC 3339");
        assert_eq!(parsed.timestamp_millis(), 1_700_000_000_123);
        assert_eq!(ts, "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn off_keeps_nothing_and_capture_keeps_the_lines() {
        Metrics::off().count(OUTBOX_DEAD_LETTERS, 1, 0);
        let (m, captured) = Metrics::capture("orderSync");
        m.count(OUTBOX_DEAD_LETTERS, 2, 5);
        let lines = captured.lines();
        assert_eq!(lines.len(), 1);
        assert_eq!(
            lines[0],
            emf_count_line("orderSync", OUTBOX_DEAD_LETTERS, 2, 5)
        );
    }
}
