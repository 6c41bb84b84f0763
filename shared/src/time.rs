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

/// Parses `yyyyMMddHHmmss` (Beijing time) into epoch milliseconds.
pub fn parse_beijing_compact(s: &str) -> Option<i64> {
    let naive = NaiveDateTime::parse_from_str(s, "%Y%m%d%H%M%S").ok()?;
    beijing()
        .from_local_datetime(&naive)
        .single()
        .map(|d| d.timestamp_millis())
}

/// Parses `yyyy-MM-dd HH:mm:ss` (Beijing time) into epoch milliseconds.
pub fn parse_beijing_datetime(s: &str) -> Option<i64> {
    let naive = NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").ok()?;
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
