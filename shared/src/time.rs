//! Clocks and WeChat's time formats. WeChat writes times in Beijing time (UTC+8) whatever
//! the server's zone; everything here formats from epoch milliseconds explicitly.

use chrono::{DateTime, FixedOffset, NaiveDateTime, TimeZone, Utc};

const BEIJING_SECS: i32 = 8 * 3600;

const BEIJING: FixedOffset = match FixedOffset::east_opt(BEIJING_SECS) {
    Some(offset) => offset,
    None => panic!("UTC+8 is a valid offset"),
};

fn beijing() -> FixedOffset {
    BEIJING
}

fn at(ms: i64) -> DateTime<FixedOffset> {
    let utc = DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default();
    utc.with_timezone(&beijing())
}

/// A deadline `ms` as WeChat holds it once we send it in whole seconds (WeChat Pay's
/// `time_expire`, [`beijing_compact`]; a component order's `expire_time`, seconds): the
/// fraction of a second dropped, as both formats drop it.
pub fn whole_second(ms: i64) -> i64 {
    ms.div_euclid(1000).saturating_mul(1000)
}

/// `yyyyMMddHHmmss` in Beijing time (`time_start`, `time_expire`, `time_end`).
pub fn beijing_compact(ms: i64) -> String {
    at(ms).format("%Y%m%d%H%M%S").to_string()
}

/// `yyyy-MM-dd HH:mm:ss` in Beijing time (trading component, refund `success_time`).
pub fn beijing_datetime(ms: i64) -> String {
    at(ms).format("%Y-%m-%d %H:%M:%S").to_string()
}

/// `yyyyMMdd` in Beijing time (`bill_date`).
pub fn beijing_date(ms: i64) -> String {
    at(ms).format("%Y%m%d").to_string()
}

pub const HOUR_MS: i64 = 3_600_000;
pub const DAY_MS: i64 = 24 * HOUR_MS;
/// China time is UTC+8 all year (no daylight saving): a China-time day is
/// `[start, start + DAY_MS)` with `start ≡ -BEIJING_OFFSET_MS (mod DAY_MS)`.
pub const BEIJING_OFFSET_MS: i64 = BEIJING_SECS as i64 * 1000;

/// The start (epoch ms) of the China-time day `yyyyMMdd` (a bill's or the funds flows'
/// `date`); `None` unless it is 8 digits naming a date.
pub fn beijing_day_start_ms(date: &str) -> Option<i64> {
    if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    parse_beijing_compact(&format!("{date}000000"))
}

/// Parses `yyyyMMddHHmmss` (Beijing time) into epoch milliseconds.
pub fn parse_beijing_compact(s: &str) -> Option<i64> {
    // `time_end` of every payment notification: 14 digits of an ordinary date and time are
    // read directly (chrono's format parser was ~6 % of verify+parse); anything else — leap
    // seconds, other lengths, out-of-range parts — gets chrono's verdict.
    let naive = match compact_digits(s) {
        Some(n) => n,
        None => NaiveDateTime::parse_from_str(s, "%Y%m%d%H%M%S").ok()?,
    };
    beijing()
        .from_local_datetime(&naive)
        .single()
        .map(|d| d.timestamp_millis())
}

/// `yyyyMMddHHmmss` of 14 ASCII digits naming a valid date and a time without a leap second.
fn compact_digits(s: &str) -> Option<NaiveDateTime> {
    let b = s.as_bytes();
    if b.len() != 14 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = |from: usize, len: usize| {
        b[from..from + len]
            .iter()
            .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'))
    };
    let year = i32::try_from(n(0, 4)).ok()?;
    chrono::NaiveDate::from_ymd_opt(year, n(4, 2), n(6, 2))?.and_hms_opt(
        n(8, 2),
        n(10, 2),
        n(12, 2),
    )
}

/// `yyyy-MM-dd HH:mm:ss` of ASCII digits and exactly those separators, naming a valid date
/// and a time without a leap second: the digits, read as [`compact_digits`] does.
fn dashed_digits(s: &str) -> Option<NaiveDateTime> {
    const DIGITS: [usize; 14] = [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18];
    let b = s.as_bytes();
    if b.len() != 19 || [b[4], b[7], b[10], b[13], b[16]] != *b"-- ::" {
        return None;
    }
    let mut compact = [0u8; 14];
    for (d, &i) in compact.iter_mut().zip(&DIGITS) {
        *d = b[i];
    }
    compact_digits(std::str::from_utf8(&compact).ok()?)
}

/// Parses `yyyy-MM-dd HH:mm:ss` (Beijing time) into epoch milliseconds.
pub fn parse_beijing_datetime(s: &str) -> Option<i64> {
    // A refund notification's `success_time`: read directly, as `time_end` is (chrono's format
    // parser was ~9 % of a refund's verify+parse); anything else gets chrono's verdict.
    let naive = match dashed_digits(s) {
        Some(n) => n,
        None => NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").ok()?,
    };
    beijing()
        .from_local_datetime(&naive)
        .single()
        .map(|d| d.timestamp_millis())
}

/// The time source. Handlers take it from `App` so tests and the sandbox can move time.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    offset_ms: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

impl Clock {
    pub fn now_ms(&self) -> i64 {
        Utc::now().timestamp_millis() + self.offset_ms.load(std::sync::atomic::Ordering::Relaxed)
    }
    pub fn now_secs(&self) -> i64 {
        self.now_ms() / 1000
    }
    /// Moves this clock (and its clones) forward; for tests and the sandbox's time knob.
    pub fn advance(&self, ms: i64) {
        self.offset_ms
            .fetch_add(ms, std::sync::atomic::Ordering::Relaxed);
    }
    /// How far this clock has been moved from real time, in ms (what the sandbox keeps in
    /// its state file, so its time does not jump back on a restart).
    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A moment in wall time (monotonic, so not moved by [`Clock::advance`]) by which work must
/// stop starting: a Lambda invocation's deadline less a margin, or a fixed budget. The
/// Lambda timeout is real time whatever the app's clock says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline(std::time::Instant);

impl Deadline {
    /// `budget` from now.
    pub fn after(budget: std::time::Duration) -> Self {
        Deadline(std::time::Instant::now() + budget)
    }

    /// `epoch_ms` (milliseconds since the Unix epoch, as the Lambda Runtime API gives an
    /// invocation's deadline) less `margin`; now if that has passed.
    pub fn from_epoch_ms(epoch_ms: u64, margin: std::time::Duration) -> Self {
        let now_ms = u64::try_from(Utc::now().timestamp_millis()).unwrap_or(0);
        let left = std::time::Duration::from_millis(epoch_ms.saturating_sub(now_ms));
        Deadline::after(left.saturating_sub(margin))
    }

    /// What is left of it (zero once passed).
    pub fn remaining(self) -> std::time::Duration {
        self.0.saturating_duration_since(std::time::Instant::now())
    }

    pub fn passed(self) -> bool {
        self.remaining().is_zero()
    }

    /// `by` later than this one.
    pub fn later_by(self, by: std::time::Duration) -> Self {
        Deadline(self.0 + by)
    }
}

/// What an outside call leaves for the store writes that follow it: a call's timeout ends
/// this long before the invocation's deadline ([`call_timeout`]).
/// 2 s: what `tests/tests/infra.rs` allows for the store after a function's chain of calls (a
/// handful of operations, normally milliseconds each).
pub const CALL_RESERVE: std::time::Duration = std::time::Duration::from_millis(2_000);

/// The least time worth sending an outside call with: with less left (after
/// [`CALL_RESERVE`]) the call is not sent at all ([`CallBudget::NoTime`]).
pub const MIN_CALL_TIME: std::time::Duration = std::time::Duration::from_millis(300);

/// How long one outside call (WeChat, WeChat Pay) may take, given the invocation's deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallBudget {
    /// Send it, with this whole-request timeout.
    Send(std::time::Duration),
    /// Do not send it: too little of the invocation is left. Nothing reached WeChat, so the
    /// failure is "not sent", never "answer lost".
    NoTime,
}

/// The clamp: `configured` (`WX_HTTP_TIMEOUT_MS`), but ending [`CALL_RESERVE`] before the
/// deadline that is `remaining` away; [`CallBudget::NoTime`] when that leaves less than
/// [`MIN_CALL_TIME`]. `None` (no deadline: unit tests, tools) → `configured`.
pub fn clamp_call_timeout(
    configured: std::time::Duration,
    remaining: Option<std::time::Duration>,
) -> CallBudget {
    let Some(remaining) = remaining else {
        return CallBudget::Send(configured);
    };
    let usable = remaining.saturating_sub(CALL_RESERVE);
    if usable < MIN_CALL_TIME {
        return CallBudget::NoTime;
    }
    CallBudget::Send(configured.min(usable))
}

tokio::task_local! {
    /// The deadline of the invocation (or orderSync batch) this task runs for.
    static INVOCATION_DEADLINE: Deadline;
}

/// Runs `fut` with `deadline` bounding every outside call it makes ([`call_timeout`]). Nested,
/// the earlier of the two deadlines holds. `None`: `fut` as it is (no new bound).
pub async fn bounded<F: std::future::Future>(deadline: Option<Deadline>, fut: F) -> F::Output {
    let Some(deadline) = deadline else {
        return fut.await;
    };
    let deadline = match current_deadline() {
        Some(outer) => outer.min(deadline),
        None => deadline,
    };
    INVOCATION_DEADLINE.scope(deadline, fut).await
}

/// The deadline set by [`bounded`] around this task, if any.
pub fn current_deadline() -> Option<Deadline> {
    INVOCATION_DEADLINE.try_with(|d| *d).ok()
}

/// [`clamp_call_timeout`] against the current task's deadline ([`bounded`]).
pub fn call_timeout(configured: std::time::Duration) -> CallBudget {
    clamp_call_timeout(configured, current_deadline().map(Deadline::remaining))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_china_day_starts_at_16_00_utc_the_day_before() {
        // 2026-12-06 00:00 China time = 2026-12-05 16:00 UTC.
        assert_eq!(beijing_day_start_ms("20261206"), Some(1_796_486_400_000));
        let start = beijing_day_start_ms("20261206").unwrap_or_default();
        assert_eq!((start + BEIJING_OFFSET_MS).rem_euclid(DAY_MS), 0);
        assert_eq!(beijing_date(start), "20261206");
        assert_eq!(beijing_date(start - 1), "20261205");
        for bad in [
            "2026120",
            "202612061",
            "2026-12-",
            "20261332",
            "20261206\n",
            "",
        ] {
            assert_eq!(beijing_day_start_ms(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn whole_second_is_what_time_expire_says() {
        for ms in [
            1_796_486_400_000,
            1_796_486_400_001,
            1_796_486_400_999,
            1_796_486_401_000,
            1_796_486_459_500,
        ] {
            assert_eq!(
                parse_beijing_compact(&beijing_compact(ms)),
                Some(whole_second(ms)),
                "{ms}"
            );
            assert_eq!(whole_second(ms) / 1000, ms / 1000, "{ms}");
        }
    }

    #[test]
    fn a_call_timeout_is_clamped_to_the_deadline_less_the_reserve() {
        use std::time::Duration;
        let four = Duration::from_secs(4);
        let ms = Duration::from_millis;
        assert_eq!(CALL_RESERVE, ms(2_000));
        assert_eq!(MIN_CALL_TIME, ms(300));
        // No deadline: the configured timeout, as before.
        assert_eq!(clamp_call_timeout(four, None), CallBudget::Send(four));
        // Plenty left: the configured timeout.
        assert_eq!(
            clamp_call_timeout(four, Some(ms(20_000))),
            CallBudget::Send(four)
        );
        assert_eq!(
            clamp_call_timeout(four, Some(ms(6_000))),
            CallBudget::Send(four)
        );
        // Less left: what is left less the reserve.
        assert_eq!(
            clamp_call_timeout(four, Some(ms(5_999))),
            CallBudget::Send(ms(3_999))
        );
        assert_eq!(
            clamp_call_timeout(four, Some(ms(2_500))),
            CallBudget::Send(ms(500))
        );
        assert_eq!(
            clamp_call_timeout(four, Some(ms(2_300))),
            CallBudget::Send(ms(300))
        );
        // Under the minimum after the reserve: not sent.
        assert_eq!(
            clamp_call_timeout(four, Some(ms(2_299))),
            CallBudget::NoTime
        );
        assert_eq!(
            clamp_call_timeout(four, Some(ms(1_000))),
            CallBudget::NoTime
        );
        assert_eq!(
            clamp_call_timeout(four, Some(Duration::ZERO)),
            CallBudget::NoTime
        );
        // A configured timeout shorter than what is left stays.
        assert_eq!(
            clamp_call_timeout(ms(200), Some(ms(60_000))),
            CallBudget::Send(ms(200))
        );
    }

    #[tokio::test]
    async fn the_deadline_holds_within_its_task_and_the_earlier_one_wins() {
        use std::time::Duration;
        let four = Duration::from_secs(4);
        assert_eq!(call_timeout(four), CallBudget::Send(four));
        let near = Deadline::after(Duration::from_millis(500));
        let far = Deadline::after(Duration::from_secs(60));
        let inner = bounded(Some(near), async {
            let nested = bounded(Some(far), async { call_timeout(four) }).await;
            (call_timeout(four), nested)
        })
        .await;
        assert_eq!(inner, (CallBudget::NoTime, CallBudget::NoTime));
        let outer = bounded(Some(far), async { call_timeout(four) }).await;
        assert_eq!(outer, CallBudget::Send(four));
        assert_eq!(
            bounded(None, async { call_timeout(four) }).await,
            CallBudget::Send(four)
        );
        assert_eq!(current_deadline(), None);
    }

    #[test]
    fn a_deadline_from_the_runtime_api_keeps_the_margin() {
        use std::time::Duration;
        let now_ms = u64::try_from(Utc::now().timestamp_millis()).unwrap_or(0);
        let d = Deadline::from_epoch_ms(now_ms + 60_000, Duration::from_secs(15));
        let left = d.remaining();
        assert!(left <= Duration::from_secs(45), "{left:?}");
        assert!(left > Duration::from_secs(44), "{left:?}");
        // Less time left than the margin: passed already.
        assert!(Deadline::from_epoch_ms(now_ms + 5_000, Duration::from_secs(15)).passed());
        assert!(Deadline::from_epoch_ms(0, Duration::ZERO).passed());
        assert!(!Deadline::after(Duration::from_secs(5)).passed());
    }

    /// 20,000 pseudo-random (year, month, day, hour, minute, second), each part a little past
    /// its range (month 0–13, day 0–32, hour 0–24, minute 0–60, second 0–61), formatted.
    fn spread(seed: u64, format: impl Fn([u64; 6]) -> String) -> Vec<String> {
        let mut x = seed;
        (0..20_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                format([
                    1900 + x % 200,
                    x % 14,
                    (x >> 8) % 33,
                    (x >> 16) % 25,
                    (x >> 24) % 61,
                    (x >> 32) % 62,
                ])
            })
            .collect()
    }

    #[test]
    fn compact_fast_path_agrees_with_chrono() {
        let chrono_only = |s: &str| NaiveDateTime::parse_from_str(s, "%Y%m%d%H%M%S").ok();
        let mut cases: Vec<String> = [
            "20140903131540",
            "00000101000000",
            "99991231235959",
            "20240229120000",
            "20230229120000",
            "20141303131540",
            "20140900131540",
            "20140932131540",
            "20140903241540",
            "20140903136040",
            "20140903131560",
            "20140903131561",
            "2014090313154",
            "201409031315400",
            "2014090313154a",
        ]
        .map(String::from)
        .to_vec();
        // A spread of digit strings, valid and not.
        cases.extend(spread(0x9E37_79B9_7F4A_7C15, |[y, m, d, h, mi, sec]| {
            format!("{y:04}{m:02}{d:02}{h:02}{mi:02}{sec:02}")
        }));
        for s in &cases {
            if let Some(fast) = compact_digits(s) {
                assert_eq!(Some(fast), chrono_only(s), "{s}");
            }
        }
        assert!(compact_digits("20140903131540").is_some());
    }

    #[test]
    fn dashed_fast_path_agrees_with_chrono() {
        let chrono_only = |s: &str| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").ok();
        let mut cases: Vec<String> = [
            "2014-09-03 13:15:40",
            "0000-01-01 00:00:00",
            "9999-12-31 23:59:59",
            "2024-02-29 12:00:00",
            "2023-02-29 12:00:00",
            "2014-13-03 13:15:40",
            "2014-09-03 24:15:40",
            "2014-09-03 13:15:60",
            "2014-09-03T13:15:40",
            "2014/09/03 13:15:40",
            "2014-09-03 13:15:4",
            "2014-09-03 13:15:400",
            "2014-9-03 13:15:40",
            "2014-09-03 13:1a:40",
            "+2014-09-03 13:15:40",
        ]
        .map(String::from)
        .to_vec();
        cases.extend(spread(0x2545_F491_4F6C_DD1D, |[y, m, d, h, mi, sec]| {
            format!("{y:04}-{m:02}-{d:02} {h:02}:{mi:02}:{sec:02}")
        }));
        let mut fast_ones = 0;
        for s in &cases {
            if let Some(fast) = dashed_digits(s) {
                fast_ones += 1;
                assert_eq!(Some(fast), chrono_only(s), "{s}");
            }
        }
        assert!(fast_ones > 1000, "the fast path takes ordinary times");
        assert!(dashed_digits("2014-09-03 13:15:40").is_some());
    }

    #[test]
    fn formats_in_beijing_time() {
        // 2014-09-03 05:15:40 UTC = 13:15:40 in Beijing.
        let ms = 1_409_721_340_000;
        assert_eq!(beijing_compact(ms), "20140903131540");
        assert_eq!(beijing_datetime(ms), "2014-09-03 13:15:40");
        assert_eq!(beijing_date(ms), "20140903");
        assert_eq!(parse_beijing_compact("20140903131540"), Some(ms));
        assert_eq!(parse_beijing_datetime("2014-09-03 13:15:40"), Some(ms));
        assert_eq!(parse_beijing_compact("2014"), None);
    }
}
