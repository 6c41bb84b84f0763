//! The trade bill of `pay/downloadbill`: a CSV-like text table, parsed by header name.
//!
//! Shape (WeChat's own, not RFC 4180): optional UTF-8 BOM; a header line; one line per
//! record where every field starts with a backtick (so records split on `` ,` `` and commas
//! inside values survive); blank lines anywhere; then a summary header and one summary line.
//! Columns differ between `ALL`, `SUCCESS` and `REFUND` bills and change over time, so
//! nothing is read by position. Amounts are yuan with two decimals and become exact [`Fen`];
//! the fee column (5 decimals, negative on refunds) and the rate stay text.
//!
//! A record that cannot be read (its field count differs from the header's, an amount or the
//! time is not one) does not fail the bill: it is kept as an [`UnreadableRow`] with its raw
//! text — the payer's openid masked ([`UnreadableRow::raw`]) — and a digest of its bytes, so
//! every other record of the day is still checked and the bad one goes to a person.
//! Only a bill whose header or summary cannot be read fails as a whole ([`BillError`]).

use crate::domain::{Fen, MoneyError};
use std::collections::BTreeMap;

/// Which records a bill holds (`bill_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BillType {
    #[default]
    All,
    Success,
    Refund,
    RechargeRefund,
}

impl BillType {
    pub fn as_str(self) -> &'static str {
        match self {
            BillType::All => "ALL",
            BillType::Success => "SUCCESS",
            BillType::Refund => "REFUND",
            BillType::RechargeRefund => "RECHARGE_REFUND",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BillError {
    #[error("bill is empty")]
    Empty,
    #[error("bill has no summary lines")]
    NoSummary,
    #[error("bill line {line}: {got} fields, header has {want}")]
    FieldCount {
        line: usize,
        got: usize,
        want: usize,
    },
    #[error("bill line {line}, column `{column}`: {source}")]
    Amount {
        line: usize,
        column: String,
        source: MoneyError,
    },
    #[error("bill line {line} is not a record (no leading backtick)")]
    NotARecord { line: usize },
    #[error("bill summary: `{0}` is not a count")]
    Count(String),
    #[error("bill line {line}, column `{column}`: `{value}` is not a time")]
    Time {
        line: usize,
        column: String,
        value: String,
    },
}

/// The longest raw text an [`UnreadableRow`] keeps (a bill line is a few hundred bytes).
const RAW_MAX_CHARS: usize = 1000;

/// A record line that could not be read. The bill is unsigned text without keys or
/// signatures, so its line holds no secret; it is kept (cut at 1000 characters) for the
/// person who compares it with the merchant platform — but the payer's openid (用户标识) is
/// personal data that person does not need (the order and WeChat's transaction number find
/// the payment), so it is masked first ([`mask_openid`], [`masked_line`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct UnreadableRow {
    /// 1-based line number in the bill's text: where it was in this copy of the bill only
    /// (a bill WeChat issues again may put it elsewhere) — [`UnreadableRow::digest`] is what
    /// names the line.
    pub line: usize,
    /// Why it could not be read.
    pub problem: String,
    /// 商户订单号 / 商户退款单号 when the line split into the header's columns, so the record
    /// it stands for is known (`None` when it did not).
    pub out_trade_no: Option<String>,
    pub out_refund_no: Option<String>,
    /// The line as read, its openid masked ([`masked_line`]).
    pub raw: String,
    /// The first 32 hex digits of the SHA-256 of the line's bytes as read (before masking,
    /// without its line break): the same line has it in every copy of the bill, wherever it
    /// stands; two different lines do not share it.
    pub digest: String,
}

/// Characters of a masked openid kept at its start and at its end.
const MASK_KEEP_START: usize = 4;
const MASK_KEEP_END: usize = 2;
/// Values shorter than this are masked whole (keeping 6 characters of them would leave
/// most of one).
const MASK_MIN_CHARS: usize = 12;

/// A payer's openid as kept: its first 4 and last 2 characters around `…`
/// (`oUpF8uMuAJO_M2pxb1Q9zNjWeS6o` → `oUpF…6o`) — enough to tell two apart on a screen,
/// not enough to find the person; a value shorter than 12 characters becomes `…`; an empty
/// one stays empty.
pub fn mask_openid(v: &str) -> String {
    let n = v.chars().count();
    if n == 0 {
        return String::new();
    }
    if n < MASK_MIN_CHARS {
        return "…".to_owned();
    }
    let start: String = v.chars().take(MASK_KEEP_START).collect();
    let end: String = v.chars().skip(n - MASK_KEEP_END).collect();
    format!("{start}…{end}")
}

/// Whether a header column holds a user's openid (用户标识, and any 子…用户标识 a bill may add).
fn is_openid_column(name: &str) -> bool {
    name.contains("用户标识")
}

/// Shortest run of `[A-Za-z0-9_-]` starting with `o` taken for an openid in a line that did
/// not split into the header's columns. An openid is `o` and 27 base64url characters
/// (observed for mini-program and official-account openids; UNVERIFIED that every one is);
/// our order and refund numbers start with `WX`/`RF`, WeChat's numbers are digits.
const OPENID_LIKE_MIN_CHARS: usize = 20;

/// `line` with the payer's openid masked ([`mask_openid`]). A line that split into the
/// header's columns (`cells`, as many as `header`) has its openid column masked, whatever
/// its value looks like. In one that did not, no column is known: every run of letters,
/// digits, `-` and `_` of 20 or more characters that starts with `o` is masked instead
/// (too much at worst — a value that only looks like an openid).
pub fn masked_line(line: &str, header: &[String], cells: &[String]) -> String {
    if line.starts_with('`') && cells.len() == header.len() {
        let masked: Vec<String> = header
            .iter()
            .zip(cells)
            .map(|(name, cell)| {
                if is_openid_column(name) {
                    mask_openid(cell)
                } else {
                    cell.clone()
                }
            })
            .collect();
        return format!("`{}", masked.join(",`"));
    }
    let is_token = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    let mut out = String::with_capacity(line.len());
    let mut token = String::new();
    let flush = |token: &mut String, out: &mut String| {
        if token.starts_with('o') && token.chars().count() >= OPENID_LIKE_MIN_CHARS {
            out.push_str(&mask_openid(token));
        } else {
            out.push_str(token);
        }
        token.clear();
    };
    for c in line.chars() {
        if is_token(c) {
            token.push(c);
        } else {
            flush(&mut token, &mut out);
            out.push(c);
        }
    }
    flush(&mut token, &mut out);
    out
}

/// [`UnreadableRow::digest`] of `line`.
fn line_digest(line: &str) -> String {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(line.as_bytes());
    hex::encode(hash)[..32].to_owned()
}

/// One record of the bill. Typed columns are `None` when the bill type has no such column
/// or the cell is empty; `columns` holds every cell by its header name.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct BillRow {
    /// 交易时间 (Beijing `yyyy-MM-dd HH:mm:ss`) as epoch ms.
    pub trade_time_ms: Option<i64>,
    /// 公众账号ID
    pub appid: Option<String>,
    /// 商户号
    pub mch_id: Option<String>,
    /// 特约商户号 / 子商户号 (`0` for direct merchants)
    pub sub_mch_id: Option<String>,
    /// 微信订单号
    pub transaction_id: Option<String>,
    /// 商户订单号
    pub out_trade_no: Option<String>,
    /// 用户标识
    pub openid: Option<String>,
    /// 交易类型
    pub trade_type: Option<String>,
    /// 交易状态 (SUCCESS, REFUND, …)
    pub trade_state: Option<String>,
    /// 货币种类
    pub fee_type: Option<String>,
    /// 应结订单金额
    pub settlement_total_fee: Option<Fen>,
    /// 代金券金额
    pub coupon_fee: Option<Fen>,
    /// 微信退款单号 (`0` when none)
    pub refund_id: Option<String>,
    /// 商户退款单号 (`0` when none)
    pub out_refund_no: Option<String>,
    /// 退款金额
    pub refund_fee: Option<Fen>,
    /// 充值券退款金额
    pub coupon_refund_fee: Option<Fen>,
    /// 退款状态
    pub refund_status: Option<String>,
    /// 商品名称
    pub body: Option<String>,
    /// 商户数据包
    pub attach: Option<String>,
    /// 手续费, yuan with 5 decimals, negative on refunds — text on purpose.
    pub service_fee: Option<String>,
    /// 费率, e.g. `0.60%`.
    pub rate: Option<String>,
    /// 订单金额
    pub total_fee: Option<Fen>,
    /// 申请退款金额
    pub requested_refund_fee: Option<Fen>,
    /// Every cell by header name.
    pub columns: BTreeMap<String, String>,
}

/// The summary line.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct BillSummary {
    /// 总交易单数
    pub count: u64,
    /// 应结订单总金额
    pub settlement_total_fee: Option<Fen>,
    /// 退款总金额
    pub refund_fee: Option<Fen>,
    /// 充值券退款总金额
    pub coupon_refund_fee: Option<Fen>,
    /// 手续费总金额 (text: 5 decimals)
    pub service_fee: Option<String>,
    /// 订单总金额
    pub total_fee: Option<Fen>,
    /// 申请退款总金额
    pub requested_refund_fee: Option<Fen>,
    pub columns: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Bill {
    pub header: Vec<String>,
    pub rows: Vec<BillRow>,
    /// Record lines that could not be read; [`Bill::rows`] holds every other one.
    pub unreadable: Vec<UnreadableRow>,
    pub summary: BillSummary,
}

impl Bill {
    /// The bill of a day without trades (`No Bill Exist`).
    pub fn empty() -> Self {
        Bill::default()
    }
}

fn header_cells(line: &str) -> Vec<String> {
    line.split(',').map(|c| c.trim().to_owned()).collect()
}

fn value_cells(line: &str) -> Vec<String> {
    let line = line.strip_prefix('`').unwrap_or(line);
    line.split(",`").map(str::to_owned).collect()
}

fn zip(
    header: &[String],
    cells: Vec<String>,
    line: usize,
) -> Result<BTreeMap<String, String>, BillError> {
    if cells.len() != header.len() {
        return Err(BillError::FieldCount {
            line,
            got: cells.len(),
            want: header.len(),
        });
    }
    Ok(header.iter().cloned().zip(cells).collect())
}

struct Cols<'a> {
    map: &'a BTreeMap<String, String>,
    line: usize,
}

impl Cols<'_> {
    fn text(&self, names: &[&str]) -> Option<String> {
        names
            .iter()
            .find_map(|n| self.map.get(*n))
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    }

    fn fen(&self, name: &str) -> Result<Option<Fen>, BillError> {
        match self.text(&[name]) {
            None => Ok(None),
            Some(v) => Fen::from_yuan_str(&v)
                .map(Some)
                .map_err(|source| BillError::Amount {
                    line: self.line,
                    column: name.to_owned(),
                    source,
                }),
        }
    }
}

/// One record line's typed columns (`columns` left empty for the caller to fill).
fn parse_row(columns: &BTreeMap<String, String>, line: usize) -> Result<BillRow, BillError> {
    let c = Cols { map: columns, line };
    let trade_time_ms = match c.text(&["交易时间"]) {
        None => None,
        Some(t) => {
            Some(
                crate::time::parse_beijing_datetime(&t).ok_or_else(|| BillError::Time {
                    line,
                    column: "交易时间".to_owned(),
                    value: t.chars().take(40).collect(),
                })?,
            )
        }
    };
    Ok(BillRow {
        trade_time_ms,
        appid: c.text(&["公众账号ID"]),
        mch_id: c.text(&["商户号"]),
        sub_mch_id: c.text(&["特约商户号", "子商户号"]),
        transaction_id: c.text(&["微信订单号"]),
        out_trade_no: c.text(&["商户订单号"]),
        openid: c.text(&["用户标识"]),
        trade_type: c.text(&["交易类型"]),
        trade_state: c.text(&["交易状态"]),
        fee_type: c.text(&["货币种类"]),
        settlement_total_fee: c.fen("应结订单金额")?,
        coupon_fee: c.fen("代金券金额")?,
        refund_id: c.text(&["微信退款单号"]),
        out_refund_no: c.text(&["商户退款单号"]),
        refund_fee: c.fen("退款金额")?,
        coupon_refund_fee: c.fen("充值券退款金额")?,
        refund_status: c.text(&["退款状态"]),
        body: c.text(&["商品名称"]),
        attach: c.text(&["商户数据包"]),
        service_fee: c.text(&["手续费"]),
        rate: c.text(&["费率"]),
        total_fee: c.fen("订单金额")?,
        requested_refund_fee: c.fen("申请退款金额")?,
        columns: BTreeMap::new(),
    })
}

/// Parses the text of a successful `downloadbill` response.
pub fn parse_bill(text: &str) -> Result<Bill, BillError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    // (1-based line number, content) of the non-blank lines.
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
        .filter(|(_, l)| !l.trim().is_empty())
        .collect();
    let Some(((_, header_line), rest)) = lines.split_first() else {
        return Err(BillError::Empty);
    };
    let header = header_cells(header_line.trim_start_matches('\u{feff}'));
    // The last two lines are the summary's header (no backtick) and values; every line
    // between is a record (a record line without its backtick is an unreadable record, not
    // the end of the records).
    let split = rest.len().checked_sub(2).ok_or(BillError::NoSummary)?;
    let (records, summary_part) = rest.split_at(split);
    let [(_, summary_header), (summary_no, summary_values)] = summary_part else {
        return Err(BillError::NoSummary);
    };
    if summary_header.starts_with('`') || !summary_values.starts_with('`') {
        return Err(BillError::NoSummary);
    }

    let mut rows = Vec::with_capacity(records.len());
    let mut unreadable = Vec::new();
    for (no, line) in records {
        let cells = value_cells(line);
        let got = cells.len();
        let count_ok = got == header.len();
        let columns: BTreeMap<String, String> = header.iter().cloned().zip(cells).collect();
        let read = if !line.starts_with('`') {
            Err(BillError::NotARecord { line: *no })
        } else if count_ok {
            parse_row(&columns, *no)
        } else {
            Err(BillError::FieldCount {
                line: *no,
                got,
                want: header.len(),
            })
        };
        match read {
            Ok(row) => rows.push(BillRow { columns, ..row }),
            Err(e) => {
                let c = Cols {
                    map: &columns,
                    line: *no,
                };
                let (out_trade_no, out_refund_no) = if count_ok && line.starts_with('`') {
                    (c.text(&["商户订单号"]), c.text(&["商户退款单号"]))
                } else {
                    (None, None)
                };
                unreadable.push(UnreadableRow {
                    line: *no,
                    problem: e.to_string(),
                    out_trade_no,
                    out_refund_no,
                    // Split again: a line that cannot be read is rare.
                    raw: masked_line(line, &header, &value_cells(line))
                        .chars()
                        .take(RAW_MAX_CHARS)
                        .collect(),
                    digest: line_digest(line),
                });
            }
        }
    }

    let sheader = header_cells(summary_header);
    let scols = zip(&sheader, value_cells(summary_values), *summary_no)?;
    let c = Cols {
        map: &scols,
        line: *summary_no,
    };
    let count_text = c.text(&["总交易单数"]).unwrap_or_else(|| "0".into());
    let summary = BillSummary {
        count: count_text
            .parse()
            .map_err(|_| BillError::Count(count_text.chars().take(20).collect()))?,
        settlement_total_fee: c.fen("应结订单总金额")?,
        refund_fee: c.fen("退款总金额")?,
        coupon_refund_fee: c.fen("充值券退款总金额")?,
        service_fee: c.text(&["手续费总金额"]),
        total_fee: c.fen("订单总金额")?,
        requested_refund_fee: c.fen("申请退款总金额")?,
        columns: BTreeMap::new(),
    };
    Ok(Bill {
        header,
        rows,
        unreadable,
        summary: BillSummary {
            columns: scols,
            ..summary
        },
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const HEADER: &str = "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注";
    const SUMMARY: &str = "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额";

    #[test]
    fn parses_all_bill_with_bom_crlf_and_commas() {
        let text = format!(
            "\u{feff}{HEADER}\r\n`2026-09-24 10:00:00,`wx123,`1900000001,`0,`,`4200001,`pay_w1,`o1,`JSAPI,`SUCCESS,`OTHERS,`CNY,`9.90,`0.00,`0,`0,`0.00,`0.00,`,`,`Tea, green,`,`0.05940,`0.60%,`9.90,`0.00,`\r\n\r\n`2026-09-24 11:00:00,`wx123,`1900000001,`0,`,`4200002,`pay_w2,`o1,`JSAPI,`REFUND,`OTHERS,`CNY,`0.00,`0.00,`500001,`rfd_1,`9.90,`0.00,`ORIGINAL,`SUCCESS,`Lily,`,`-0.05940,`0.60%,`9.90,`9.90,`\r\n{SUMMARY}\r\n`2,`9.90,`9.90,`0.00,`0.00000,`19.80,`9.90\r\n"
        );
        let bill = parse_bill(&text).unwrap();
        assert_eq!(bill.rows.len(), 2);
        let r = &bill.rows[0];
        assert_eq!(r.out_trade_no.as_deref(), Some("pay_w1"));
        assert_eq!(r.settlement_total_fee, Some(Fen::new(990).unwrap()));
        assert_eq!(r.body.as_deref(), Some("Tea, green"));
        assert_eq!(r.service_fee.as_deref(), Some("0.05940"));
        assert_eq!(
            r.trade_time_ms,
            crate::time::parse_beijing_datetime("2026-09-24 10:00:00")
        );
        assert_eq!(bill.rows[1].refund_fee, Some(Fen::new(990).unwrap()));
        assert_eq!(bill.rows[1].out_refund_no.as_deref(), Some("rfd_1"));
        assert_eq!(bill.summary.count, 2);
        assert_eq!(bill.summary.total_fee, Some(Fen::new(1980).unwrap()));
        assert_eq!(bill.summary.service_fee.as_deref(), Some("0.00000"));
    }

    /// The REFUND bill: its own columns (退款申请时间, 退款成功时间 among them), one line per
    /// refund, read by name — what reconciliation checks against our refund records.
    #[test]
    fn parses_refund_bill_rows() {
        const REFUND_HEADER: &str = "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,应结订单金额,代金券金额,退款申请时间,退款成功时间,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注";
        let text = format!(
            "{REFUND_HEADER}\r\n`2026-09-24 11:00:00,`wx123,`1900000001,`0,`,`4200002,`pay_w2,`o1,`JSAPI,`REFUND,`OTHERS,`CNY,`0.00,`0.00,`2026-09-24 10:59:00,`2026-09-24 11:00:00,`500001,`RF_1,`19.90,`0.00,`ORIGINAL,`SUCCESS,`Tea,`,`-0.11940,`0.60%,`0.00,`19.90,`\r\n`2026-09-24 12:00:00,`wx123,`1900000001,`0,`,`4200003,`pay_w3,`o2,`JSAPI,`REFUND,`OTHERS,`CNY,`0.00,`0.00,`2026-09-24 11:59:00,`,`500002,`0,`1.00,`0.00,`ORIGINAL,`CHANGE,`Tea,`,`-0.00600,`0.60%,`0.00,`1.00,`\r\n{SUMMARY}\r\n`2,`0.00,`20.90,`0.00,`-0.12540,`0.00,`20.90\r\n"
        );
        let bill = parse_bill(&text).unwrap();
        assert_eq!(bill.rows.len(), 2);
        let r = &bill.rows[0];
        assert_eq!(r.out_trade_no.as_deref(), Some("pay_w2"));
        assert_eq!(r.refund_id.as_deref(), Some("500001"));
        assert_eq!(r.out_refund_no.as_deref(), Some("RF_1"));
        assert_eq!(r.refund_fee, Some(Fen::new(1990).unwrap()));
        assert_eq!(r.requested_refund_fee, Some(Fen::new(1990).unwrap()));
        assert_eq!(r.refund_status.as_deref(), Some("SUCCESS"));
        assert_eq!(
            r.columns.get("退款成功时间").map(String::as_str),
            Some("2026-09-24 11:00:00")
        );
        // `0` is WeChat's "none": kept as read, for the caller to judge.
        assert_eq!(bill.rows[1].out_refund_no.as_deref(), Some("0"));
        assert_eq!(bill.rows[1].refund_status.as_deref(), Some("CHANGE"));
        assert_eq!(bill.summary.refund_fee, Some(Fen::new(2090).unwrap()));
    }

    #[test]
    fn header_only_bill_and_errors() {
        let empty = format!("{HEADER}\n{SUMMARY}\n`0,`0.00,`0.00,`0.00,`0.00000,`0.00,`0.00\n");
        let bill = parse_bill(&empty).unwrap();
        assert!(bill.rows.is_empty());
        assert_eq!(bill.summary.count, 0);
        assert_eq!(parse_bill(""), Err(BillError::Empty));
        assert_eq!(parse_bill(HEADER), Err(BillError::NoSummary));
        // A summary that cannot be read fails the bill: its totals are not known.
        let bad_summary = format!("{HEADER}\n{SUMMARY}\n`zwei,`0,`0,`0,`0,`0,`0\n");
        assert!(matches!(parse_bill(&bad_summary), Err(BillError::Count(_))));
        let no_values = format!("{HEADER}\n{SUMMARY}\n{SUMMARY}\n");
        assert_eq!(parse_bill(&no_values), Err(BillError::NoSummary));
    }

    /// A record that cannot be read — too few fields, an amount that is not one, a time that
    /// is not one, a line without its backtick — is set aside with its raw text and line;
    /// every other record is read, and the bill is not failed.
    #[test]
    fn unreadable_records_are_set_aside_and_the_rest_read() {
        let good = "`2026-09-24 10:00:00,`wx123,`1900000001,`0,`,`4200001,`pay_w1,`o1,`JSAPI,`SUCCESS,`OTHERS,`CNY,`9.90,`0.00,`0,`0,`0.00,`0.00,`,`,`Tea,`,`0.05940,`0.60%,`9.90,`0.00,`";
        let bad_amount = good
            .replace("pay_w1", "pay_w2")
            .replace("`9.90,`0.00,`", "`9.9.0,`0.00,`");
        let bad_time = good
            .replace("pay_w1", "pay_w3")
            .replace("2026-09-24 10:00:00", "yesterday");
        let short = "`2026-09-24 10:00:00,`wx";
        let no_tick = good
            .replace("pay_w1", "pay_w4")
            .trim_start_matches('`')
            .replacen(",`", ",", 1);
        let text = format!(
            "{HEADER}\r\n{bad_amount}\r\n{good}\r\n{short}\r\n{bad_time}\r\n{no_tick}\r\n{SUMMARY}\r\n`5,`9.90,`0.00,`0.00,`0.05940,`9.90,`0.00\r\n"
        );
        let bill = parse_bill(&text).unwrap();
        let read: Vec<_> = bill
            .rows
            .iter()
            .map(|r| r.out_trade_no.as_deref())
            .collect();
        assert_eq!(read, vec![Some("pay_w1")]);
        assert_eq!(bill.summary.count, 5);
        let bad: Vec<_> = bill
            .unreadable
            .iter()
            .map(|u| (u.line, u.out_trade_no.as_deref()))
            .collect();
        assert_eq!(
            bad,
            vec![
                (2, Some("pay_w2")),
                (4, None),
                (5, Some("pay_w3")),
                (6, None)
            ]
        );
        assert!(
            bill.unreadable[0].problem.contains("订单金额"),
            "{:?}",
            bill.unreadable[0]
        );
        // Its openid (`o1`, too short to keep any of) masked; the rest as read.
        assert_eq!(bill.unreadable[0].raw, bad_amount.replace("`o1,", "`…,"));
        assert!(
            bill.unreadable[1].problem.contains("2 fields"),
            "{:?}",
            bill.unreadable[1]
        );
        assert!(
            bill.unreadable[2].problem.contains("not a time"),
            "{:?}",
            bill.unreadable[2]
        );
        assert!(
            bill.unreadable[3].problem.contains("not a record"),
            "{:?}",
            bill.unreadable[3]
        );
    }

    /// The payer's openid is personal data a person reconciling money does not need: an
    /// unreadable line keeps it as its first 4 and last 2 characters — by its column when the
    /// line split into the header's, by its shape when it did not. The line is named by a
    /// digest of its bytes: the same line has it wherever it stands, another line has another.
    #[test]
    fn an_unreadable_line_keeps_no_openid_and_is_named_by_its_bytes() {
        const OPENID: &str = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o";
        let good = format!("`2026-09-24 10:00:00,`wx123,`1900000001,`0,`,`4200001,`WX20260924100000abcdefabcdef,`{OPENID},`JSAPI,`SUCCESS,`OTHERS,`CNY,`9.90,`0.00,`0,`0,`0.00,`0.00,`,`,`Tea,`,`0.05940,`0.60%,`9.90,`0.00,`");
        let bad_amount = good.replace("`9.90,`0.00,`0,", "`9,90,`0.00,`0,");
        let short = format!("`2026-09-24 10:00:00,`wx,`{OPENID}");
        let bill_of = |lines: &[&str]| {
            let mut text = format!("{HEADER}\r\n");
            for l in lines {
                text += l;
                text += "\r\n";
            }
            text += &format!("{SUMMARY}\r\n`0,`0.00,`0.00,`0.00,`0.00000,`0.00,`0.00\r\n");
            parse_bill(&text).unwrap()
        };
        let bill = bill_of(&[&bad_amount, &short]);
        assert_eq!(bill.unreadable.len(), 2);
        for u in &bill.unreadable {
            assert!(!u.raw.contains(OPENID), "{u:?}");
            assert!(u.raw.contains("`oUpF…6o"), "{u:?}");
        }
        assert_eq!(
            bill.unreadable[0].raw,
            bad_amount.replace(OPENID, "oUpF…6o")
        );
        // Our order number (28 characters too) is no openid.
        assert!(bill.unreadable[0]
            .raw
            .contains("WX20260924100000abcdefabcdef"));
        assert_eq!(bill.unreadable[1].raw, short.replace(OPENID, "oUpF…6o"));

        // Moved down a line (a bill issued anew): the same digest; the other line, another.
        let moved = bill_of(&[&good, &short, &bad_amount]);
        assert_eq!(moved.unreadable[1].line, 4);
        assert_eq!(moved.unreadable[1].digest, bill.unreadable[0].digest);
        assert_eq!(moved.unreadable[0].digest, bill.unreadable[1].digest);
        assert_ne!(bill.unreadable[0].digest, bill.unreadable[1].digest);
        assert_eq!(bill.unreadable[0].digest.len(), 32);

        assert_eq!(mask_openid(OPENID), "oUpF…6o");
        assert_eq!(mask_openid("o1"), "…");
        assert_eq!(mask_openid(""), "");
    }
}
