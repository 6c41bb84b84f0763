//! Secondary-merchant funds (`/api/shop/funds/*`, WECHAT_SHOP.md §14): balance, order
//! flows, bank account, withdrawals with the admin's QR confirmation, and the bank lookups
//! the bank account is built from (a small directory of banks, cities and branches).
//!
//! Why modelled at all: in fund_type=1 mode WeChat, not the merchant, holds the money. Paid
//! orders sit in `pending_amount` until settled (`/_control/settle`, which also pushes
//! `open_product_order_settle`), only `available_amount` can be withdrawn, one withdrawal a
//! day (9700101 for the second), and a withdrawal only proceeds once the admin scans its QR
//! code (`/_control/funds/qrcode`) — within [`QR_TTL_MS`] of its issue, after which the code
//! expires and the withdrawal closes. The `funds` function is tested against these rules.
//!
//! Every money movement is booked as a flow (`scanorderflow`/`getorderflow`), as WeChat
//! does: a fund_type=1 payment (订单 收入, `request_no` = `out_order_id`), a refund (售后
//! 支出, `request_no` = WeChat's `aftersale_id`; UNVERIFIED whose after-sale number WeChat
//! writes), a confirmed withdrawal (提现 支出, `out_request_no`) and its return (提现退回).
//! `/_control/funds/flow` ([`control_flow`]) makes WeChat lose a flow, misreport its amount,
//! book it later (after midnight: listed under the next day) or book one for an order never
//! made, for the funds reconciliation's tests.

use super::deliver::push_event;
use super::kept::{Kept, KeptLog};
use super::shop::{int_of, str_of};
use super::{random_alnum, random_digits, Sandbox, State, WxErr, WxResult};
use serde_json::{json, Value};
use wxshop::time::{beijing_date, beijing_datetime};

/// Documented: more than one withdrawal in a day; no data; bad parameter.
pub const E_WITHDRAW_TWICE: i64 = 9_700_101;
pub const E_NO_DATA: i64 = 9_710_001;
pub const E_PARAM: i64 = 400;
/// Chosen: the amount exceeds `available_amount`.
pub const E_BALANCE: i64 = 9_700_102;
/// Documented for `qrcode/get`: ticket expired / invalid.
pub const E_QR_EXPIRED: i64 = 60_220;
pub const E_QR_INVALID: i64 = 60_208;

/// How long a QR code ticket (`submitwithdraw`, `qrcode/gen`) can be scanned and confirmed,
/// on the sandbox's clock: past it, unconfirmed, it expires ([`expire_qrcodes`]). UNVERIFIED:
/// WeChat documents the expired state (`qrcode/check` status 3) and error (`qrcode/get`
/// 60220) but no lifetime (WECHAT_SHOP.md §14.2); 10 minutes is a guess in the range of
/// WeChat's other confirmation codes. Move the clock (`/_control/clock`) to meet it.
pub const QR_TTL_MS: i64 = 10 * 60_000;

/// A 1×1 PNG: the QR image the admin would scan.
const QR_PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Flow {
    pub id: String,
    pub time_ms: i64,
    /// `交易`, `退款`, `提现`.
    pub kind: String,
    pub income: bool,
    pub amount: i64,
    pub balance: i64,
    /// `订单`, `售后`, `提现`.
    pub busi_type: String,
    pub request_no: String,
}

/// A withdrawal's `status`: waits for the admin's QR code, then the bank transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WithdrawStatus {
    Init,
    BeforeScanQrcode,
    AfterScanQrcode,
    /// Confirmed; the bank transfer completes a moment later.
    CreateSuccess,
    Success,
    /// The admin cancelled or the code expired: the amount is available again.
    Close,
    /// The bank refused the transfer (set by `/_control/funds/withdraw` only): the amount is
    /// available again (UNVERIFIED, as WeChat Pay's e-commerce withdrawals say of a failure).
    Fail,
    /// The bank returned the transfer (set by `/_control/funds/withdraw` only): the amount is
    /// available again (UNVERIFIED).
    Refund,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Withdraw {
    pub out_request_no: String,
    pub amount: i64,
    pub create_ms: i64,
    pub update_ms: i64,
    pub status: WithdrawStatus,
    pub reason: String,
    pub remark: String,
    pub bank_memo: String,
    pub qrcode_ticket: String,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct QrCode {
    pub status: i64,
    pub withdraw: Option<String>,
    /// When it was issued (sandbox clock); it expires [`QR_TTL_MS`] later. Absent from the
    /// state files of an older wxlocal: such a ticket never expires by itself.
    #[serde(default)]
    pub created_ms: Option<i64>,
}

#[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct FundsState {
    pub available: i64,
    pub pending: i64,
    pub flows: KeptLog<Flow>,
    pub bank: Option<Value>,
    pub bank_changes: Kept<String, u32>,
    pub withdraws: Kept<String, Withdraw>,
    pub qrcodes: Kept<String, QrCode>,
    pub settled: Kept<String, String>,
    /// What `getorderflow` and `scanorderflow` make of the flows of a `request_no`, set with
    /// `/_control/funds/flow`: a test's knob (a flow WeChat never booked, an amount written
    /// wrong), not kept across restarts. At most [`MAX_FLOW_FAULTS`].
    #[serde(skip)]
    pub flow_faults: std::collections::BTreeMap<String, FlowFault>,
    /// Open QR code tickets by the moment they expire ([`expire_qrcodes`]). Not kept: rebuilt
    /// from the QR codes at start ([`resume`]); one confirmed, cancelled or expired meanwhile
    /// is passed over when its time comes.
    #[serde(skip)]
    pub qr_expiring: std::collections::BTreeSet<(i64, String)>,
}

/// At most this many `request_no`s have a [`FlowFault`] at once.
pub const MAX_FLOW_FAULTS: usize = 100;

/// How the flows of one `request_no` are misreported ([`FundsState::flow_faults`]).
#[derive(Clone, Debug, Default)]
pub struct FlowFault {
    /// Not listed by `scanorderflow`, `getorderflow` answers no data: WeChat never booked it.
    pub dropped: bool,
    /// `getorderflow` writes this as the `amount`, whatever the flow's (a different amount,
    /// or text no parser reads).
    pub amount_text: Option<String>,
    /// Booked this long after the money moved (ms): listed by `scanorderflow` under the day
    /// of that later time, and `getorderflow` says it was booked then — a flow of a payment
    /// just before midnight that WeChat books after it.
    pub booked_after_ms: i64,
}

impl FlowFault {
    /// When WeChat booked `f` (its day is the one `scanorderflow` lists it under).
    fn booked_at(fault: Option<&FlowFault>, f: &Flow) -> i64 {
        f.time_ms + fault.map_or(0, |x| x.booked_after_ms)
    }
}

fn flow(
    st: &mut State,
    kind: &'static str,
    income: bool,
    amount: i64,
    busi: &'static str,
    no: &str,
    now: i64,
) {
    let id = format!("{}{}", beijing_date(now), random_digits(12));
    let f = &mut st.funds;
    f.flows.push(Flow {
        id,
        time_ms: now,
        kind: kind.to_owned(),
        income,
        amount,
        balance: f.available + f.pending,
        busi_type: busi.to_owned(),
        request_no: no.to_owned(),
    });
}

/// A fund_type=1 order was paid: its amount awaits settlement.
pub fn on_paid(st: &mut State, out_order_id: &str, amount: i64, now: i64) {
    st.funds.pending += amount;
    flow(st, "交易", true, amount, "订单", out_order_id, now);
}

/// An after-sale refunded part of a fund_type=1 order: the expense is booked under the
/// after-sale's number (`aftersale_id`, WeChat's): WECHAT_SHOP.md §14.2 names `request_no`
/// the "order/after-sale/withdrawal no." — whose after-sale number (WeChat's or the
/// merchant's `out_aftersale_id`) is UNVERIFIED; this sandbox writes WeChat's.
pub fn on_refund(st: &mut State, out_order_id: &str, aftersale_id: &str, amount: i64, now: i64) {
    if st.funds.settled.contains_key(out_order_id) {
        st.funds.available -= amount;
    } else {
        st.funds.pending -= amount;
    }
    flow(st, "退款", false, amount, "售后", aftersale_id, now);
}

/// `/_control/funds/flow`: `{"drop": request_no}` — WeChat never booked that number's
/// flows (not listed, no data); `{"request_no", "amount"}` — `getorderflow` writes
/// `amount` (a string: a different amount, or junk) for them; `{"request_no",
/// "book_after_ms"}` — WeChat books them that long (0..=2 days) after the money moved, so a
/// flow of a payment just before midnight is listed under the next day; `{"add": {"request_no",
/// "amount_fen", "busi_type"?, "income"?}}` books a flow now (an order we never made, say;
/// `订单` income by default). Strings of at most 64 characters, amounts 1..=10^10 fen, at
/// most [`MAX_FLOW_FAULTS`] numbers misreported at once.
pub fn control_flow(sb: &Sandbox, v: &Value) -> Result<Value, String> {
    const MAX_LEN: usize = 64;
    let short = |s: &str| !s.is_empty() && s.chars().count() <= MAX_LEN;
    let now = sb.now_ms();
    let mut st = sb.st();
    if let Some(add) = v.get("add") {
        let no = add
            .get("request_no")
            .and_then(Value::as_str)
            .filter(|s| short(s));
        let amount = add
            .get("amount_fen")
            .and_then(Value::as_i64)
            .filter(|a| (1..=10_000_000_000).contains(a));
        let busi = match add
            .get("busi_type")
            .and_then(Value::as_str)
            .unwrap_or("订单")
        {
            "订单" => "订单",
            "售后" => "售后",
            "提现" => "提现",
            _ => return Err("busi_type is 订单, 售后 or 提现".into()),
        };
        let income = add.get("income").and_then(Value::as_bool).unwrap_or(true);
        let (Some(no), Some(amount)) = (no, amount) else {
            return Err(format!(
                "add needs request_no (1..={MAX_LEN} characters) and amount_fen (1..=10^10)"
            ));
        };
        let kind = match (busi, income) {
            ("订单", _) => "交易",
            ("售后", _) => "退款",
            (_, true) => "提现退回",
            _ => "提现",
        };
        if income {
            st.funds.pending += amount;
        } else {
            st.funds.pending -= amount;
        }
        flow(&mut st, kind, income, amount, busi, no, now);
        let id = st.funds.flows.last().map(|f| f.id.clone());
        return Ok(json!({"funds_flow_id": id}));
    }
    let dropped = v.get("drop").and_then(Value::as_str);
    let Some(no) = dropped.or_else(|| v.get("request_no").and_then(Value::as_str)) else {
        return Err("give drop: a request_no; request_no and amount (a string); or add".into());
    };
    let amount = v.get("amount").and_then(Value::as_str);
    let later = match v.get("book_after_ms") {
        None => None,
        Some(ms) => match ms.as_i64().filter(|ms| (0..=2 * 86_400_000).contains(ms)) {
            Some(ms) => Some(ms),
            None => return Err("book_after_ms is 0..=172800000 (two days)".into()),
        },
    };
    if !short(no) || amount.is_some_and(|a| a.chars().count() > MAX_LEN) {
        return Err(format!(
            "request_no and amount are at most {MAX_LEN} characters"
        ));
    }
    if dropped.is_none() && amount.is_none() && later.is_none() {
        return Err(
            "amount: the text getorderflow is to write; or book_after_ms: how much later it \
             books them"
                .into(),
        );
    }
    let faults = &mut st.funds.flow_faults;
    if !faults.contains_key(no) && faults.len() >= MAX_FLOW_FAULTS {
        return Err(format!(
            "at most {MAX_FLOW_FAULTS} request_nos misreported at once"
        ));
    }
    let fault = faults.entry(no.to_owned()).or_default();
    if dropped.is_some() {
        fault.dropped = true;
    }
    if let Some(text) = amount {
        fault.amount_text = Some(text.to_owned());
    }
    if let Some(ms) = later {
        fault.booked_after_ms = ms;
    }
    Ok(json!({"request_no": no, "misreported": faults.len()}))
}

/// `/_control/settle`: the order's money becomes withdrawable; `open_product_order_settle`.
pub fn settle(sb: &Sandbox, out_order_id: &str) -> Result<Value, String> {
    let now = sb.now_ms();
    let body = {
        let mut st = sb.st();
        let Some(o) = st.shop.orders.get(out_order_id) else {
            return Err(format!("no shop order {out_order_id}"));
        };
        if o.fund_type != 1 {
            return Err(format!("order {out_order_id} is not fund_type=1"));
        }
        if !matches!(o.status, 20 | 21 | 30 | 100 | 200) {
            return Err(format!(
                "order {out_order_id} is not paid (status {})",
                o.status
            ));
        }
        if st.funds.settled.contains_key(out_order_id) {
            return Err(format!("order {out_order_id} is already settled"));
        }
        let (order_id, amount) = (o.order_id, o.order_price - o.refunded);
        let settle_no = format!("S{}{}", beijing_date(now), random_digits(12));
        st.funds.pending -= amount;
        st.funds.available += amount;
        st.funds
            .settled
            .insert(out_order_id.to_owned(), settle_no.clone());
        if let Some(o) = st.shop.orders.get_mut(out_order_id) {
            o.settled = true;
        }
        json!({"order_id": order_id, "out_order_id": out_order_id, "settle_no": settle_no,
               "amount": amount, "settle_time": beijing_datetime(now)})
    };
    push_event(sb, "open_product_order_settle", "order_info", body.clone());
    Ok(body)
}

fn yuan(fen: i64) -> String {
    let sign = if fen < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", fen.abs() / 100, fen.abs() % 100)
}

fn page(v: &Value) -> Result<(usize, usize), WxErr> {
    let n = int_of(v, "page_num").ok_or_else(|| WxErr::new(E_PARAM, "page_num required"))?;
    let size = int_of(v, "page_size").ok_or_else(|| WxErr::new(E_PARAM, "page_size required"))?;
    if n < 1 || !(1..=100).contains(&size) {
        return Err(WxErr::new(E_PARAM, "page_num ≥ 1, page_size 1..100"));
    }
    Ok((((n - 1) * size) as usize, size as usize))
}

pub fn handle(sb: &Sandbox, name: &str, v: &Value) -> WxResult {
    match name {
        "getbalance" => {
            let st = sb.st();
            Ok(
                json!({"balance_info": {"available_amount": st.funds.available,
                                       "pending_amount": st.funds.pending}}),
            )
        }
        "scanorderflow" => {
            let date = str_of(v, "date").ok_or_else(|| WxErr::new(E_PARAM, "date required"))?;
            if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
                return Err(WxErr::new(E_PARAM, "date must be yyyyMMdd"));
            }
            let (skip, size) = page(v)?;
            let st = sb.st();
            let ids: Vec<&String> = st
                .funds
                .flows
                .iter()
                .filter(|f| {
                    let fault = st.funds.flow_faults.get(&f.request_no);
                    !fault.is_some_and(|x| x.dropped)
                        && beijing_date(FlowFault::booked_at(fault, f)) == date
                })
                .map(|f| &f.id)
                .collect();
            let total = ids.len();
            let ids: Vec<&&String> = ids.iter().skip(skip).take(size).collect();
            Ok(json!({"funds_flow_ids": ids, "total_num": total}))
        }
        "getorderflow" => {
            let id = str_of(v, "funds_flow_id")
                .or_else(|| str_of(v, "funds_flow_no"))
                .ok_or_else(|| WxErr::new(E_PARAM, "funds_flow_id required"))?;
            let st = sb.st();
            let f = st
                .funds
                .flows
                .iter()
                .find(|f| f.id == id)
                .ok_or_else(|| WxErr::new(E_NO_DATA, "no data"))?;
            let fault = st.funds.flow_faults.get(&f.request_no);
            if fault.is_some_and(|x| x.dropped) {
                return Err(WxErr::new(E_NO_DATA, "no data"));
            }
            let amount = fault
                .and_then(|x| x.amount_text.clone())
                .unwrap_or_else(|| yuan(f.amount));
            let booked = FlowFault::booked_at(fault, f);
            Ok(json!({"funds_flow": {
                "funds_flow_id": f.id, "bookkeeping_time": beijing_datetime(booked),
                "type": f.kind, "flow_type": if f.income { "收入" } else { "支出" },
                "amount": amount, "balance": yuan(f.balance),
                "busi_type": f.busi_type, "request_no": f.request_no}}))
        }
        "getbankaccount" => {
            let st = sb.st();
            match &st.funds.bank {
                Some(a) => Ok(json!({"account_info": a, "verify_fail_reason": ""})),
                None => Err(WxErr::new(E_NO_DATA, "no bank account set")),
            }
        }
        "setbankaccount" => set_bank_account(sb, v),
        "submitwithdraw" => submit_withdraw(sb, v),
        "scanwithdraw" => {
            let (skip, size) = page(v)?;
            let st = sb.st();
            let mut all: Vec<&Withdraw> = st.funds.withdraws.values().collect();
            all.sort_by_key(|w| std::cmp::Reverse(w.create_ms));
            let nos: Vec<&String> = all
                .iter()
                .skip(skip)
                .take(size)
                .map(|w| &w.out_request_no)
                .collect();
            Ok(json!({"out_request_nos": nos, "total_num": all.len()}))
        }
        "getwithdrawdetail" => {
            let no = str_of(v, "out_request_no")
                .ok_or_else(|| WxErr::new(E_PARAM, "out_request_no required"))?;
            let st = sb.st();
            let w = st
                .funds
                .withdraws
                .get(no)
                .ok_or_else(|| WxErr::new(E_NO_DATA, "no data"))?;
            let bank = st.funds.bank.clone().unwrap_or(json!({}));
            let num = bank
                .get("account_number")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let masked = format!("****{}", &num[num.len().saturating_sub(4)..]);
            Ok(json!({"withdraw_info": {
                "amount": w.amount, "create_time": w.create_ms / 1000,
                "update_time": w.update_ms / 1000, "reason": w.reason, "remark": w.remark,
                "bank_memo": w.bank_memo,
                "bank_name": bank.get("account_bank").cloned().unwrap_or(json!("")),
                "bank_num": masked, "status": w.status}}))
        }
        "qrcode/gen" => {
            if int_of(v, "identity_type") != Some(1) {
                return Err(WxErr::new(E_PARAM, "identity_type must be 1 (admin)"));
            }
            let t = new_ticket(&mut sb.st(), None, sb.now_ms());
            Ok(json!({"qrcode_ticket": t}))
        }
        "qrcode/get" => {
            let t = str_of(v, "qrcode_ticket")
                .ok_or_else(|| WxErr::new(E_PARAM, "qrcode_ticket required"))?;
            if t.len() > 256 {
                return Err(WxErr::new(-2, "token too long"));
            }
            let st = sb.st();
            match st.funds.qrcodes.get(t) {
                None => Err(WxErr::new(E_QR_INVALID, "invalid ticket")),
                Some(q) if q.status == 3 => Err(WxErr::new(E_QR_EXPIRED, "ticket expired")),
                Some(_) => Ok(json!({"qrcode_buf": QR_PNG})),
            }
        }
        "qrcode/check" => {
            let t = str_of(v, "qrcode_ticket")
                .ok_or_else(|| WxErr::new(E_PARAM, "qrcode_ticket required"))?;
            let st = sb.st();
            let q = st
                .funds
                .qrcodes
                .get(t)
                .ok_or_else(|| WxErr::new(E_QR_INVALID, "invalid ticket"))?;
            Ok(json!({"status": q.status,
                      "scan_user_type": if matches!(q.status, 1 | 4) { 1 } else { 0 },
                      "self_check_err_code": 0, "self_check_err_msg": ""}))
        }
        "getbanklist" => bank_list(v),
        "getbankbynum" => bank_by_number(v),
        "getprovince" => {
            let data: Vec<Value> = PROVINCES
                .iter()
                .map(|(code, name)| json!({"province_code": code, "province_name": name}))
                .collect();
            Ok(json!({"total_count": data.len(), "data": data}))
        }
        "getcity" => {
            let province = int_of(v, "province_code")
                .ok_or_else(|| WxErr::new(E_PARAM, "province_code required"))?;
            let data: Vec<Value> = CITIES
                .iter()
                .filter(|c| c.province_code == province)
                .map(|c| {
                    json!({"city_code": c.city_code, "city_name": c.name,
                                "bank_address_code": c.bank_address_code})
                })
                .collect();
            Ok(json!({"total_count": data.len(), "data": data}))
        }
        "getsubbranch" => sub_branches(v),
        _ => Err(WxErr::new(40066, "invalid url")),
    }
}

// ---------------------------------------------------------------------------------------
// Bank lookups (`getbanklist`, `getbankbynum`, `getprovince`, `getcity`, `getsubbranch`): a
// small directory shaped like WeChat's. A bank WeChat lists under its own name needs no
// branch; a smaller one is `account_bank: 其他银行` with its real name in `bank_name` and
// `need_branch: true`, and the account then names a branch (`setbankaccount` checks it).

struct Bank {
    account_bank: &'static str,
    bank_code: &'static str,
    bank_id: &'static str,
    bank_name: &'static str,
    /// 1 personal, 2 corporate (as the request doc has it; UNVERIFIED, WECHAT_SHOP.md §14.2).
    bank_type: i64,
    need_branch: bool,
    /// Card-number prefixes (BINs) `getbankbynum` recognises.
    bins: &'static [&'static str],
}

const OTHER_BANK: &str = "其他银行";

const BANKS: &[Bank] = &[
    Bank {
        account_bank: "招商银行",
        bank_code: "1001",
        bank_id: "1001",
        bank_name: "招商银行",
        bank_type: 1,
        need_branch: false,
        bins: &["622588", "621483"],
    },
    Bank {
        account_bank: "中国工商银行",
        bank_code: "1002",
        bank_id: "1002",
        bank_name: "中国工商银行",
        bank_type: 1,
        need_branch: false,
        bins: &["622202", "621226"],
    },
    Bank {
        account_bank: OTHER_BANK,
        bank_code: "1099",
        bank_id: "1099",
        bank_name: "深圳农村商业银行",
        bank_type: 1,
        need_branch: true,
        bins: &["622322", "623035"],
    },
];

const PROVINCES: &[(i64, &str)] = &[(11, "北京市"), (44, "广东省")];

struct City {
    province_code: i64,
    city_code: i64,
    name: &'static str,
    bank_address_code: &'static str,
}

const CITIES: &[City] = &[
    City {
        province_code: 11,
        city_code: 10,
        name: "北京市",
        bank_address_code: "110000",
    },
    City {
        province_code: 44,
        city_code: 581,
        name: "广州市",
        bank_address_code: "440100",
    },
    City {
        province_code: 44,
        city_code: 584,
        name: "深圳市",
        bank_address_code: "440300",
    },
];

/// (bank_code, city_code, branch_id, branch_name)
const BRANCHES: &[(&str, i64, &str, &str)] = &[
    ("1099", 584, "402584009991", "深圳农村商业银行营业部"),
    ("1099", 584, "402584009992", "深圳农村商业银行福田支行"),
    ("1099", 581, "402581000011", "深圳农村商业银行广州分行"),
    ("1001", 584, "308584000013", "招商银行深圳分行营业部"),
    ("1002", 10, "102100099996", "中国工商银行北京市分行营业部"),
];

fn bank_json(b: &Bank) -> Value {
    json!({"account_bank": b.account_bank, "bank_code": b.bank_code, "bank_id": b.bank_id,
           "bank_name": b.bank_name, "bank_type": b.bank_type, "need_branch": b.need_branch})
}

/// `offset` (default 0) and `limit` (default 20, at most 100).
fn offset_limit(v: &Value) -> Result<(usize, usize), WxErr> {
    let offset = int_of(v, "offset").unwrap_or(0);
    let limit = int_of(v, "limit").unwrap_or(20);
    if offset < 0 || !(1..=100).contains(&limit) {
        return Err(WxErr::new(E_PARAM, "offset ≥ 0, limit 1..100"));
    }
    Ok((offset as usize, limit as usize))
}

/// A code that may arrive as a string or a number.
fn code_of(v: &Value, k: &str) -> Option<String> {
    match v.get(k)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn bank_list(v: &Value) -> WxResult {
    let (offset, limit) = offset_limit(v)?;
    let words = str_of(v, "key_words");
    let kind = int_of(v, "bank_type");
    let matching: Vec<&Bank> = BANKS
        .iter()
        .filter(|b| words.is_none_or(|w| b.bank_name.contains(w) || b.account_bank.contains(w)))
        .filter(|b| kind.is_none_or(|k| b.bank_type == k))
        .collect();
    let data: Vec<Value> = matching
        .iter()
        .skip(offset)
        .take(limit)
        .map(|b| bank_json(b))
        .collect();
    Ok(json!({"total_count": matching.len(), "data": data}))
}

fn bank_by_number(v: &Value) -> WxResult {
    let number = str_of(v, "account_number")
        .ok_or_else(|| WxErr::new(E_PARAM, "account_number required"))?;
    if !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(WxErr::new(E_PARAM, "account_number must be digits"));
    }
    let data: Vec<Value> = BANKS
        .iter()
        .filter(|b| b.bins.iter().any(|bin| number.starts_with(bin)))
        .map(bank_json)
        .collect();
    Ok(json!({"total_count": data.len(), "data": data}))
}

fn sub_branches(v: &Value) -> WxResult {
    let bank_code =
        code_of(v, "bank_code").ok_or_else(|| WxErr::new(E_PARAM, "bank_code required"))?;
    let city_code =
        int_of(v, "city_code").ok_or_else(|| WxErr::new(E_PARAM, "city_code required"))?;
    let (offset, limit) = offset_limit(v)?;
    let bank = BANKS
        .iter()
        .find(|b| b.bank_code == bank_code)
        .ok_or_else(|| WxErr::new(E_PARAM, format!("unknown bank_code {bank_code}")))?;
    let all: Vec<Value> = BRANCHES
        .iter()
        .filter(|(b, c, _, _)| *b == bank_code && *c == city_code)
        .map(|(_, _, id, name)| json!({"branch_id": id, "branch_name": name}))
        .collect();
    let page: Vec<Value> = all.iter().skip(offset).take(limit).cloned().collect();
    Ok(
        json!({"account_bank": bank.account_bank, "account_bank_code": bank.bank_code,
              "bank_alias": bank.bank_name, "bank_alias_code": bank.bank_id,
              "count": page.len(), "total_count": all.len(), "data": page}),
    )
}

fn new_ticket(st: &mut State, withdraw: Option<String>, now: i64) -> String {
    let t = format!("qr_{}", random_alnum(40));
    st.funds.qrcodes.insert(
        t.clone(),
        QrCode {
            status: 0,
            withdraw,
            created_ms: Some(now),
        },
    );
    st.funds.qr_expiring.insert((now + QR_TTL_MS, t.clone()));
    t
}

/// QR codes not confirmed, cancelled or expired within [`QR_TTL_MS`] of being issued expire
/// (status 3) as `/_control/funds/qrcode {"status": 3}` expires one: `qrcode/check` answers
/// 3, `qrcode/get` 60220, and a withdrawal waiting for it closes (CLOSE, its amount available
/// again, `withdraw_notify` event 4). Lazy, like the unpaid timeout of orders
/// ([`super::Sandbox::expire_due`]): before every request and after a clock move. (Tickets
/// used to stay scannable for ever.)
pub(crate) fn expire_qrcodes(sb: &Sandbox) {
    let now = sb.now_ms();
    let due = {
        let mut st = sb.st();
        // Read first: a borrow that changes nothing is not a change to save.
        if st
            .funds
            .qr_expiring
            .first()
            .is_none_or(|(at, _)| *at >= now)
        {
            return;
        }
        let f = &mut st.funds;
        let later = f.qr_expiring.split_off(&(now, String::new()));
        std::mem::replace(&mut f.qr_expiring, later)
    };
    for (_, ticket) in due {
        // Confirmed, cancelled or expired meanwhile: final, refused, nothing to do.
        let _ = set_qrcode_status(sb, &ticket, 3);
    }
}

fn set_bank_account(sb: &Sandbox, v: &Value) -> WxResult {
    let a = v
        .get("account_info")
        .filter(|a| a.is_object())
        .ok_or_else(|| WxErr::new(E_PARAM, "account_info required"))?;
    let kind = str_of(a, "bank_account_type").unwrap_or_default();
    if !matches!(kind, "ACCOUNT_TYPE_BUSINESS" | "ACCOUNT_TYPE_PRIVATE") {
        return Err(WxErr::new(
            E_PARAM,
            "bank_account_type must be ACCOUNT_TYPE_BUSINESS or ACCOUNT_TYPE_PRIVATE",
        ));
    }
    let bank =
        str_of(a, "account_bank").ok_or_else(|| WxErr::new(E_PARAM, "account_bank required"))?;
    let code = str_of(a, "bank_address_code").unwrap_or_default();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(WxErr::new(
            E_PARAM,
            "bank_address_code must be 6 digits (getcity)",
        ));
    }
    if !CITIES.iter().any(|c| c.bank_address_code == code) {
        return Err(WxErr::new(
            E_PARAM,
            format!("bank_address_code {code} is no city's (getcity)"),
        ));
    }
    let num = str_of(a, "account_number").unwrap_or_default();
    if !(8..=30).contains(&num.len()) || !num.bytes().all(|b| b.is_ascii_digit()) {
        return Err(WxErr::new(E_PARAM, "account_number must be 8-30 digits"));
    }
    if !BANKS.iter().any(|b| b.account_bank == bank) {
        return Err(WxErr::new(
            E_PARAM,
            format!("account_bank {bank} is not a bank getbanklist knows"),
        ));
    }
    let branch = code_of(a, "bank_branch_id");
    if bank == OTHER_BANK && branch.is_none() && str_of(a, "bank_name").is_none() {
        return Err(WxErr::new(
            E_PARAM,
            "account_bank 其他银行 needs bank_branch_id or bank_name",
        ));
    }
    if let Some(id) = &branch {
        let city = CITIES.iter().find(|c| c.bank_address_code == code);
        let known = BRANCHES.iter().any(|(b, c, bid, _)| {
            bid == id
                && city.is_some_and(|city| city.city_code == *c)
                && BANKS
                    .iter()
                    .any(|bank_| bank_.bank_code == *b && bank_.account_bank == bank)
        });
        if !known {
            return Err(WxErr::new(
                E_PARAM,
                format!("bank_branch_id {id} is no branch of {bank} in {code} (getsubbranch)"),
            ));
        }
    }
    let today = beijing_date(sb.now_ms());
    let mut st = sb.st();
    let n = st.funds.bank_changes.get_or_insert_with(today, || 0);
    if *n >= 5 {
        return Err(WxErr::new(E_PARAM, "bank account changed 5 times today"));
    }
    *n += 1;
    st.funds.bank = Some(a.clone());
    Ok(json!({}))
}

fn submit_withdraw(sb: &Sandbox, v: &Value) -> WxResult {
    let amount = int_of(v, "amount").ok_or_else(|| WxErr::new(E_PARAM, "amount required"))?;
    if amount < 1 {
        return Err(WxErr::new(E_PARAM, "amount must be ≥ 1 fen"));
    }
    let now = sb.now_ms();
    let today = beijing_date(now);
    let (out_request_no, ticket) = {
        let mut st = sb.st();
        if st.funds.bank.is_none() {
            return Err(WxErr::new(
                E_NO_DATA,
                "no bank account set (setbankaccount)",
            ));
        }
        if st
            .funds
            .withdraws
            .values()
            .any(|w| beijing_date(w.create_ms) == today)
        {
            return Err(WxErr::new(E_WITHDRAW_TWICE, "only one withdrawal a day"));
        }
        if amount > st.funds.available {
            return Err(WxErr::new(
                E_BALANCE,
                format!(
                    "amount {amount} exceeds the available balance {}",
                    st.funds.available
                ),
            ));
        }
        let no = format!("{}{}", today, random_digits(12));
        let ticket = new_ticket(&mut st, Some(no.clone()), now);
        st.funds.available -= amount;
        st.funds.withdraws.insert(
            no.clone(),
            Withdraw {
                out_request_no: no.clone(),
                amount,
                create_ms: now,
                update_ms: now,
                status: WithdrawStatus::BeforeScanQrcode,
                reason: String::new(),
                remark: str_of(v, "remark").unwrap_or_default().to_owned(),
                bank_memo: str_of(v, "bank_memo").unwrap_or_default().to_owned(),
                qrcode_ticket: ticket.clone(),
            },
        );
        (no, ticket)
    };
    push_event(
        sb,
        "withdraw_notify",
        "withdraw_info",
        json!({"out_request_no": out_request_no, "event": 1}),
    );
    Ok(json!({"out_request_no": out_request_no, "qrcode_ticket": ticket}))
}

/// `/_control/funds/qrcode`: the admin scans (4), confirms (1), cancels (2), or it expires (3).
pub fn set_qrcode_status(sb: &Sandbox, ticket: &str, status: i64) -> Result<Value, String> {
    if !(0..=4).contains(&status) {
        return Err("status must be 0..=4".into());
    }
    let now = sb.now_ms();
    let (withdraw, event) = {
        let mut st = sb.st();
        let Some(q) = st.funds.qrcodes.get_mut(ticket) else {
            return Err(format!("no qrcode ticket {ticket}"));
        };
        if matches!(q.status, 1..=3) {
            return Err(format!("qrcode already final (status {})", q.status));
        }
        q.status = status;
        let wno = q.withdraw.clone();
        let mut event = None;
        let new_status = match status {
            4 => Some(WithdrawStatus::AfterScanQrcode),
            1 => Some(WithdrawStatus::CreateSuccess),
            2 | 3 => Some(WithdrawStatus::Close),
            _ => None,
        };
        if let (Some(no), Some(s)) = (&wno, new_status) {
            if let Some(held) = st.funds.withdraws.get(no).map(|w| holds_amount(w.status)) {
                move_withdrawal(&mut st, no, s, now)?;
                let amount = st.funds.withdraws.get(no).map_or(0, |w| w.amount);
                if let Some(w) = st.funds.withdraws.get_mut(no) {
                    if s == WithdrawStatus::Close {
                        w.reason = "管理员未确认提现".into();
                    }
                }
                match s {
                    WithdrawStatus::Close => event = Some(4),
                    WithdrawStatus::CreateSuccess => {
                        // Taken out again, the move recorded it.
                        if held {
                            flow(&mut st, "提现", false, amount, "提现", no, now);
                        }
                        event = Some(2);
                    }
                    _ => {}
                }
            }
        }
        (wno, event)
    };
    if let (Some(no), Some(e)) = (&withdraw, event) {
        push_event(
            sb,
            "withdraw_notify",
            "withdraw_info",
            json!({"out_request_no": no, "event": e}),
        );
        if e == 2 {
            let epoch = sb.st().epoch;
            tokio::spawn(complete_transfer(sb.clone(), no.clone(), epoch));
        }
    }
    Ok(json!({"qrcode_ticket": ticket, "status": status, "out_request_no": withdraw}))
}

/// The bank transfer of a confirmed withdrawal completes a moment later.
async fn complete_transfer(sb: Sandbox, no: String, epoch: u64) {
    tokio::time::sleep(sb.scaled(2.0)).await;
    let done = {
        let mut st = sb.st();
        if st.epoch != epoch {
            return;
        }
        let now = sb.now_ms();
        match st.funds.withdraws.get_mut(&no) {
            Some(w) if w.status == WithdrawStatus::CreateSuccess => {
                w.status = WithdrawStatus::Success;
                w.update_ms = now;
                true
            }
            _ => false,
        }
    };
    if done {
        push_event(
            &sb,
            "withdraw_notify",
            "withdraw_info",
            json!({"out_request_no": no, "event": 3}),
        );
    }
}

/// After a restart: transfers of confirmed withdrawals complete, and open QR codes expire
/// when their time comes ([`FundsState::qr_expiring`], rebuilt).
pub(crate) fn resume(sb: &Sandbox) {
    let expiring: std::collections::BTreeSet<(i64, String)> = sb
        .st()
        .funds
        .qrcodes
        .iter()
        .filter(|(_, q)| matches!(q.status, 0 | 4))
        .filter_map(|(t, q)| Some((q.created_ms? + QR_TTL_MS, t.clone())))
        .collect();
    if !expiring.is_empty() {
        let mut st = sb.st();
        st.funds.qr_expiring = expiring;
    }
    let (epoch, confirmed): (u64, Vec<String>) = {
        let st = sb.st();
        let confirmed = st
            .funds
            .withdraws
            .values()
            .filter(|w| w.status == WithdrawStatus::CreateSuccess)
            .map(|w| w.out_request_no.clone())
            .collect();
        (st.epoch, confirmed)
    };
    for no in confirmed {
        tokio::spawn(complete_transfer(sb.clone(), no, epoch));
    }
}

/// Whether a withdrawal in status `s` holds its amount out of `available_amount`: from its
/// submission on, unless it closed (its QR code cancelled or expired unconfirmed), failed, or
/// the bank returned the transfer — then the amount is available again.
fn holds_amount(s: WithdrawStatus) -> bool {
    !matches!(
        s,
        WithdrawStatus::Close | WithdrawStatus::Fail | WithdrawStatus::Refund
    )
}

/// Moves withdrawal `no` to `to` (the state lock held), and its money with it: into one of
/// the ends that give the amount back (CLOSE, FAIL, REFUND) from one that holds it, the amount
/// is available again — once, however often an end is reported — with an income flow
/// (`提现退回`) if its expense flow (`提现`) was recorded, and its QR code, if still open, is
/// expired (WeChat's QR code of a closed withdrawal no longer confirms anything). Back from
/// such an end to one that holds it (a contradicting report), the amount is taken out again,
/// refused when the available balance no longer covers it.
fn move_withdrawal(st: &mut State, no: &str, to: WithdrawStatus, now: i64) -> Result<(), String> {
    let Some(w) = st.funds.withdraws.get(no) else {
        return Err(format!("no withdrawal {no}"));
    };
    let (from, amount, ticket) = (w.status, w.amount, w.qrcode_ticket.clone());
    let given_back = holds_amount(from) && !holds_amount(to);
    let taken_again = !holds_amount(from) && holds_amount(to);
    if taken_again && st.funds.available < amount {
        return Err(format!(
            "withdrawal {no} ({amount} fen) ended with its amount available again, and the \
             available balance now holds only {} fen: it cannot be taken out again (settle an \
             order first, or report another end)",
            st.funds.available
        ));
    }
    if let Some(w) = st.funds.withdraws.get_mut(no) {
        w.status = to;
        w.update_ms = now;
    }
    let sent = st
        .funds
        .flows
        .iter()
        .filter(|f| f.busi_type == "提现" && f.request_no == no)
        .fold(0i64, |n, f| if f.income { n - 1 } else { n + 1 })
        > 0;
    if given_back {
        st.funds.available += amount;
        if sent {
            flow(st, "提现退回", true, amount, "提现", no, now);
        }
        if let Some(q) = st.funds.qrcodes.get_mut(&ticket) {
            if !matches!(q.status, 1..=3) {
                q.status = 3;
            }
        }
    } else if taken_again {
        st.funds.available -= amount;
        if !sent && matches!(to, WithdrawStatus::CreateSuccess | WithdrawStatus::Success) {
            flow(st, "提现", false, amount, "提现", no, now);
        }
    }
    Ok(())
}

/// `/_control/funds/withdraw {"out_request_no", "status", "reason"?}`: what WeChat's record of
/// a withdrawal says from now on (`getwithdrawdetail`), pushed as `withdraw_notify` (3 for
/// SUCCESS, 4 for FAIL and CLOSE; none for the others) — as when the bank fails or returns a
/// transfer (`FAIL`, `REFUND`), when the QR code expires unscanned (`CLOSE`), or when a report
/// contradicts an earlier one. The balance follows the record ([`move_withdrawal`]): CLOSE,
/// FAIL and REFUND give the amount back to `available_amount` once (reporting another of
/// them after one changes nothing); a report taking it back to a status that holds the amount
/// takes it out again (refused, 409, when the available balance no longer covers it).
pub fn set_withdraw_status(
    sb: &Sandbox,
    out_request_no: &str,
    status: &str,
    reason: Option<&str>,
) -> Result<Value, String> {
    const STATUSES: &str = "INIT, BEFORE_SCAN_QRCODE, AFTER_SCAN_QRCODE, CREATE_SUCCESS, \
                            SUCCESS, FAIL, REFUND, CLOSE";
    let Ok(status) = serde_json::from_value::<WithdrawStatus>(json!(status)) else {
        return Err(format!("status must be one of {STATUSES}"));
    };
    let now = sb.now_ms();
    {
        let mut st = sb.st();
        move_withdrawal(&mut st, out_request_no, status, now)?;
        if let (Some(r), Some(w)) = (reason, st.funds.withdraws.get_mut(out_request_no)) {
            w.reason = r.to_owned();
        }
    }
    let event = match status {
        WithdrawStatus::Success => Some(3),
        WithdrawStatus::Fail | WithdrawStatus::Close => Some(4),
        _ => None,
    };
    if let Some(e) = event {
        push_event(
            sb,
            "withdraw_notify",
            "withdraw_info",
            json!({"out_request_no": out_request_no, "event": e}),
        );
    }
    Ok(json!({"out_request_no": out_request_no, "status": status, "event": event}))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A state with `available` fen and withdrawal `W` of 700 fen, submitted (held).
    fn held(available: i64) -> State {
        let mut st = State::default();
        st.funds.available = available;
        st.funds.qrcodes.insert(
            "qr".into(),
            QrCode {
                status: 0,
                withdraw: Some("W".into()),
                created_ms: Some(0),
            },
        );
        st.funds.withdraws.insert(
            "W".into(),
            Withdraw {
                out_request_no: "W".into(),
                amount: 700,
                create_ms: 0,
                update_ms: 0,
                status: WithdrawStatus::BeforeScanQrcode,
                reason: String::new(),
                remark: String::new(),
                bank_memo: String::new(),
                qrcode_ticket: "qr".into(),
            },
        );
        st
    }

    /// CLOSE gives the amount back once, however often an end that gives it back is
    /// reported, and expires the open QR code.
    #[test]
    fn a_closed_withdrawal_gives_its_amount_back_once() {
        let mut st = held(300);
        move_withdrawal(&mut st, "W", WithdrawStatus::Close, 1).unwrap();
        assert_eq!(st.funds.available, 1000);
        assert_eq!(st.funds.qrcodes["qr"].status, 3, "expired");
        for s in [WithdrawStatus::Close, WithdrawStatus::Fail] {
            move_withdrawal(&mut st, "W", s, 2).unwrap();
            assert_eq!(st.funds.available, 1000, "{s:?}");
        }
        assert!(st.funds.flows.is_empty(), "nothing had gone to the bank");
    }

    /// A transfer that failed or came back after it was sent: the amount is available again
    /// with an income flow against its expense; a report taking it out again is refused when
    /// the balance no longer covers it, and changes nothing.
    #[test]
    fn a_failed_transfer_gives_it_back_and_a_contradiction_takes_it_out_again() {
        let mut st = held(0);
        move_withdrawal(&mut st, "W", WithdrawStatus::CreateSuccess, 1).unwrap();
        flow(&mut st, "提现", false, 700, "提现", "W", 1);
        move_withdrawal(&mut st, "W", WithdrawStatus::Success, 2).unwrap();
        move_withdrawal(&mut st, "W", WithdrawStatus::Refund, 3).unwrap();
        assert_eq!(st.funds.available, 700);
        let back = st.funds.flows.last().unwrap();
        assert!(back.income && back.amount == 700 && back.kind == "提现退回");
        move_withdrawal(&mut st, "W", WithdrawStatus::Fail, 4).unwrap();
        assert_eq!(st.funds.available, 700, "once");
        assert_eq!(st.funds.flows.len(), 2);

        move_withdrawal(&mut st, "W", WithdrawStatus::Success, 5).unwrap();
        assert_eq!(st.funds.available, 0, "taken out again");
        assert_eq!(st.funds.flows.len(), 3);
        assert!(!st.funds.flows.last().unwrap().income);

        let mut st = held(0);
        move_withdrawal(&mut st, "W", WithdrawStatus::Fail, 1).unwrap();
        st.funds.available = 500;
        let e = move_withdrawal(&mut st, "W", WithdrawStatus::Success, 2).unwrap_err();
        assert!(e.contains("only 500 fen"), "{e}");
        assert_eq!(st.funds.available, 500);
        assert_eq!(st.funds.withdraws["W"].status, WithdrawStatus::Fail);
    }
}
