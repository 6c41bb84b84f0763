//! `funds` (merchant, secondary-merchant mode, `POST /admin/funds`): the shop's funds account
//! at WeChat — balance, order flows, settlement bank account, withdrawals confirmed by the
//! admin's QR scan, withdrawal history — over the typed `shop/funds/*` client
//! ([`crate::shop::funds`]). Amounts in and out are integer fen (`*_fen`).
//!
//! Everything is checked before WeChat is asked: a withdrawal must be a positive amount within
//! `available_amount` (409 without calling `submitwithdraw` otherwise), a bank account must be
//! well-formed (400 listing what to fix). WeChat's own refusals come back as clear codes
//! (`WITHDRAWAL_DAILY_LIMIT` for 9700101, `FLOW_NOT_FOUND` for 9710001 …).
//!
//! Each withdrawal is recorded (`Kind::Withdrawal`, id = WeChat's `out_request_no`, owner
//! index `withdrawals`, status index = WeChat's status) and kept current from
//! `getwithdrawdetail` (status polling, history) and from the `withdraw_notify` push event
//! ([`on_withdraw_notify`], called by `auditCallback`). Statuses only move forward, and an
//! end (SUCCESS, FAIL, CLOSE) once reached stays — save SUCCESS → REFUND, the bank returning
//! the transfer; a later report of another end is ignored, logged at WARN and kept as a
//! `withdrawal_conflict` event.
//!
//! The QR code: `submitwithdraw` gives a `qrcode_ticket`; `qrcode/get` gives WeChat's image
//! (its format is UNVERIFIED, WECHAT_SHOP.md §14.3). The answer always carries a PNG we render
//! (`qrcode_png_base64`, of the text `qrcode/get` returned if it was text, else of the
//! ticket), plus WeChat's own image untouched (`wechat_qrcode_image_base64`) when it sent one.
//!
//! A lost answer: WeChat allows one withdrawal a day and holds the amount once it has it, so a
//! repeated `withdraw` of today's amount is refused (9700101, or the balance no longer covers
//! it). When it repeats today's withdrawal, which still awaits the QR confirmation, it gets
//! that withdrawal's QR code again (`resumed`) if the ticket reached us and WeChat's
//! `qrcode/check` does not say it expired or was cancelled (then 410 `QRCODE_EXPIRED`: the
//! withdrawal closes, its amount comes back, withdraw again tomorrow); if `submitwithdraw`'s
//! answer itself was lost, the ticket is gone for good — WeChat gives it in no other answer
//! (`getwithdrawdetail` has none; `qrcode/gen` makes a ticket tied to no withdrawal) — and the
//! answer is 409 `WITHDRAWAL_QRCODE_LOST`, naming the withdrawal and what to do: leave it to
//! close when its QR code expires (the amount comes back), and withdraw again the next day.
//! Such a withdrawal reads `qrcode_lost` with that `next` in `withdraw_status` and
//! `withdrawals`. UNVERIFIED: when WeChat closes an unconfirmed withdrawal, and whether a closed
//! one still counts as the day's.
//!
//! A double tap: one `withdraw` request runs at a time (a kv lock, released when it answers,
//! expiring after a minute if its process ended first). Another one meanwhile is answered 409
//! `WITHDRAWAL_IN_PROGRESS`, nothing submitted: repeated a few seconds later, it gets the
//! first's QR code again (`resumed`). It used to reach WeChat, be refused as the day's second
//! withdrawal before the first had recorded its QR ticket, and be told the QR code was lost
//! for good and to withdraw tomorrow.
//!
//! Actions (`{"action": …}`):
//! `balance` · `flows {date?: "yyyyMMdd", page?, page_size?}` · `flow {flow_id}` ·
//! `bank_account` · `set_bank_account {account: {bank_account_type, account_bank,
//! bank_address_code, account_number, bank_branch_id?, bank_name?}}` ·
//! `withdraw {amount_fen, remark?, bank_memo?}` · `withdraw_status {qrcode_ticket | withdraw_id}`
//! · `withdrawals {page?, page_size?}` · the bank lookups `set_bank_account` is built from:
//! `bank_by_number {account_number}` · `banks {key_words?, bank_type?, offset?, limit?}` ·
//! `provinces` · `cities {province_code}` · `branches {bank_code, city_code, offset?, limit?}`.

use super::shop_orders::wx_error;
use crate::app::App;
use crate::domain::Fen;
use crate::http::{json, parse_json, ApiError, Request, Response};
use crate::push::WithdrawNotify;
use crate::shop::funds::{BankAccount, BankAccountStatus, FundsFlow, QrcodeCheck, WithdrawInfo};
use crate::shop::WxError;
use crate::store::{kv, Expect, Index, Kind, Query, Record, Store, StoreError, Write};
use base64::Engine;
use futures::StreamExt;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Documented funds errcodes (WECHAT_SHOP.md §14.2) and the sandbox's chosen balance code.
const E_WITHDRAW_TWICE: i64 = 9_700_101;
const E_BALANCE: i64 = 9_700_102;
const E_NO_DATA: i64 = 9_710_001;
const E_PARAM: i64 = 400;
const E_QR_EXPIRED: i64 = 60_220;
const E_QR_INVALID: i64 = 60_208;

/// Owner-index key of every withdrawal record.
const OWNER: &str = "withdrawals";
const MAX_PAGE_SIZE: u32 = 100;
const MAX_REMARK_CHARS: usize = 50;
const MAX_CONFLICT_RETRIES: usize = 8;
/// Detail calls in flight at once for a page (WeChat rate-limits with 300000).
const CONCURRENT_DETAILS: usize = 8;

#[derive(Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
enum Action {
    Balance,
    Flows {
        #[serde(default)]
        date: Option<String>,
        #[serde(default = "one")]
        page: u32,
        #[serde(default = "twenty")]
        page_size: u32,
    },
    Flow {
        #[serde(default)]
        flow_id: Option<String>,
    },
    BankAccount,
    SetBankAccount {
        #[serde(default)]
        account: Option<Value>,
    },
    Withdraw {
        #[serde(default)]
        amount_fen: Option<Value>,
        #[serde(default)]
        remark: Option<String>,
        #[serde(default)]
        bank_memo: Option<String>,
    },
    WithdrawStatus {
        #[serde(default)]
        qrcode_ticket: Option<String>,
        #[serde(default)]
        withdraw_id: Option<String>,
    },
    Withdrawals {
        #[serde(default = "one")]
        page: u32,
        #[serde(default = "twenty")]
        page_size: u32,
    },
    /// `getbanklist`: banks by name.
    Banks {
        #[serde(default)]
        key_words: Option<String>,
        #[serde(default)]
        bank_type: Option<Value>,
        #[serde(default)]
        offset: Option<Value>,
        #[serde(default)]
        limit: Option<Value>,
    },
    /// `getbankbynum`: the bank of a card number.
    BankByNumber {
        #[serde(default)]
        account_number: Option<Value>,
    },
    /// `getprovince`.
    Provinces,
    /// `getcity`: a province's cities and their `bank_address_code`.
    Cities {
        #[serde(default)]
        province_code: Option<Value>,
    },
    /// `getsubbranch`: a bank's branches in a city.
    Branches {
        #[serde(default)]
        bank_code: Option<Value>,
        #[serde(default)]
        city_code: Option<Value>,
        #[serde(default)]
        offset: Option<Value>,
        #[serde(default)]
        limit: Option<Value>,
    },
}

fn one() -> u32 {
    1
}
fn twenty() -> u32 {
    20
}

pub async fn handle(app: &App, req: Request) -> Result<Response, ApiError> {
    let result = match parse_json::<Action>(&req)? {
        Action::Balance => balance(app).await?,
        Action::Flows {
            date,
            page,
            page_size,
        } => flows(app, date, page, page_size).await?,
        Action::Flow { flow_id } => flow(app, flow_id).await?,
        Action::BankAccount => bank_account(app).await?,
        Action::SetBankAccount { account } => set_bank_account(app, account).await?,
        Action::Withdraw {
            amount_fen,
            remark,
            bank_memo,
        } => withdraw(app, amount_fen, remark, bank_memo).await?,
        Action::WithdrawStatus {
            qrcode_ticket,
            withdraw_id,
        } => withdraw_status(app, qrcode_ticket, withdraw_id).await?,
        Action::Withdrawals { page, page_size } => withdrawals(app, page, page_size).await?,
        Action::Banks {
            key_words,
            bank_type,
            offset,
            limit,
        } => banks(app, key_words, bank_type, offset, limit).await?,
        Action::BankByNumber { account_number } => bank_by_number(app, account_number).await?,
        Action::Provinces => provinces(app).await?,
        Action::Cities { province_code } => cities(app, province_code).await?,
        Action::Branches {
            bank_code,
            city_code,
            offset,
            limit,
        } => branches(app, bank_code, city_code, offset, limit).await?,
    };
    Ok(json(&result))
}

// ---------------------------------------------------------------------------------------
// Errors

/// WeChat's refusal of a funds call, as a code the merchant's tool can act on.
fn funds_error(e: WxError) -> ApiError {
    let msg = e.to_string();
    match e.errcode() {
        Some(E_WITHDRAW_TWICE) => ApiError::conflict(
            "WITHDRAWAL_DAILY_LIMIT",
            format!(
                "WeChat allows one withdrawal a day and one was already made today (Beijing time); try again tomorrow. An earlier attempt whose answer never arrived counts too: action withdrawals lists it ({msg})"
            ),
        ),
        Some(E_BALANCE) => ApiError::conflict(
            "INSUFFICIENT_BALANCE",
            format!("WeChat says the amount exceeds the available balance ({msg})"),
        ),
        Some(E_PARAM) => ApiError::bad_request(
            "WECHAT_REJECTED_PARAMETERS",
            format!("WeChat refused the parameters: {msg}"),
        ),
        Some(E_QR_INVALID) => ApiError::not_found(
            "QRCODE_NOT_FOUND",
            format!("WeChat does not know this qrcode_ticket ({msg})"),
        ),
        Some(E_QR_EXPIRED) => ApiError::new(
            StatusCode::GONE,
            "QRCODE_EXPIRED",
            format!(
                "the QR code expired before the admin confirmed it: its withdrawal closes and \
                 the amount is available again; withdraw again (one withdrawal a day, Beijing \
                 time: tomorrow if one was made today) ({msg})"
            ),
        ),
        _ => wx_error(e),
    }
}

fn is_no_data(e: &WxError) -> bool {
    e.errcode() == Some(E_NO_DATA)
}

// ---------------------------------------------------------------------------------------
// Balance and flows

#[derive(Serialize)]
struct BalanceView {
    available_fen: i64,
    pending_fen: i64,
    total_fen: i64,
}

async fn balance(app: &App) -> Result<Value, ApiError> {
    let b = app.wx.funds_get_balance().await.map_err(funds_error)?;
    let view = BalanceView {
        available_fen: b.available_amount.get(),
        pending_fen: b.pending_amount.get(),
        total_fen: b
            .available_amount
            .get()
            .saturating_add(b.pending_amount.get()),
    };
    to_value(&view)
}

/// One funds flow, amounts in fen (WeChat wrote yuan strings).
#[derive(Serialize)]
struct FlowView {
    flow_id: String,
    bookkeeping_time: String,
    /// 交易 / 手续费 / 退款 / 提现 …, as WeChat wrote it.
    kind: String,
    /// `income`, `expense`, or WeChat's text if it is neither 收入 nor 支出.
    direction: String,
    amount_fen: i64,
    balance_fen: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    busi_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_no: Option<String>,
}

impl From<FundsFlow> for FlowView {
    fn from(f: FundsFlow) -> Self {
        let direction = match f.flow_type.as_str() {
            "收入" => "income".to_owned(),
            "支出" => "expense".to_owned(),
            other => other.to_owned(),
        };
        FlowView {
            flow_id: f.funds_flow_id,
            bookkeeping_time: f.bookkeeping_time,
            kind: f.kind,
            direction,
            amount_fen: f.amount.get(),
            balance_fen: f.balance.get(),
            busi_type: f.busi_type,
            request_no: f.request_no,
        }
    }
}

fn check_page(page: u32, page_size: u32) -> Result<(), ApiError> {
    if page == 0 || page_size == 0 || page_size > MAX_PAGE_SIZE {
        return Err(ApiError::bad_request(
            "BAD_PAGE",
            format!("page must be ≥ 1 and page_size 1–{MAX_PAGE_SIZE}"),
        ));
    }
    Ok(())
}

fn check_date(date: &str) -> Result<(), ApiError> {
    let ok = date.len() == 8
        && date.bytes().all(|b| b.is_ascii_digit())
        && chrono::NaiveDate::parse_from_str(date, "%Y%m%d").is_ok();
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "BAD_DATE",
            "date must be a calendar day written yyyyMMdd (Beijing time), e.g. 20240131",
        ))
    }
}

async fn flows(
    app: &App,
    date: Option<String>,
    page: u32,
    page_size: u32,
) -> Result<Value, ApiError> {
    check_page(page, page_size)?;
    let date = date.unwrap_or_else(|| crate::time::beijing_date(app.clock.now_ms()));
    check_date(&date)?;
    let ids = match app.wx.funds_scan_order_flow(&date, page, page_size).await {
        Ok(ids) => ids,
        Err(e) if is_no_data(&e) => Default::default(),
        Err(e) => return Err(funds_error(e)),
    };
    let calls: Vec<_> = ids
        .funds_flow_ids
        .iter()
        .map(|id| app.wx.funds_get_order_flow(id))
        .collect();
    let details: Vec<_> = futures::stream::iter(calls)
        .buffered(CONCURRENT_DETAILS)
        .collect()
        .await;
    let mut flows = Vec::with_capacity(details.len());
    for (id, d) in ids.funds_flow_ids.iter().zip(details) {
        match d {
            Ok(f) => flows.push(to_value(&FlowView::from(f))?),
            // Listed a moment ago: report the one that failed, keep the page.
            Err(e) => flows.push(json!({"flow_id": id, "error": e.to_string()})),
        }
    }
    Ok(json!({
        "date": date,
        "page": page,
        "page_size": page_size,
        "total": ids.total_num,
        "flows": flows,
    }))
}

fn check_id(what: &'static str, code: &'static str, id: &str) -> Result<(), ApiError> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(ApiError::bad_request(
            code,
            format!("{what} must be 1–64 letters, digits, _ or -"),
        ));
    }
    Ok(())
}

async fn flow(app: &App, flow_id: Option<String>) -> Result<Value, ApiError> {
    let flow_id = flow_id.unwrap_or_default();
    check_id("flow_id", "BAD_FLOW_ID", &flow_id)?;
    match app.wx.funds_get_order_flow(&flow_id).await {
        Ok(f) => Ok(json!({ "flow": FlowView::from(f) })),
        Err(e) if is_no_data(&e) => Err(ApiError::not_found(
            "FLOW_NOT_FOUND",
            format!("WeChat has no funds flow {flow_id}; list them with action `flows`"),
        )),
        Err(e) => Err(funds_error(e)),
    }
}

// ---------------------------------------------------------------------------------------
// Bank account

const ACCOUNT_TYPES: [&str; 2] = ["ACCOUNT_TYPE_BUSINESS", "ACCOUNT_TYPE_PRIVATE"];
const OTHER_BANK: &str = "其他银行";
const ACCOUNT_FIELDS: [&str; 6] = [
    "bank_account_type",
    "account_bank",
    "bank_address_code",
    "account_number",
    "bank_branch_id",
    "bank_name",
];

/// The account as shown back: the number masked to its last four digits.
fn account_view(a: &BankAccount) -> Value {
    let digits = a.account_number.chars().count();
    let tail: String = a
        .account_number
        .chars()
        .skip(digits.saturating_sub(4))
        .collect();
    json!({
        "bank_account_type": a.bank_account_type,
        "account_bank": a.account_bank,
        "bank_address_code": a.bank_address_code,
        "bank_branch_id": a.bank_branch_id,
        "bank_name": a.bank_name,
        "account_number_masked": format!("****{tail}"),
    })
}

fn status_view(s: &BankAccountStatus) -> Value {
    json!({
        "account": s.account_info.as_ref().map(account_view),
        "verify_fail_reason": s.verify_fail_reason.as_deref().filter(|r| !r.is_empty()),
    })
}

async fn bank_account(app: &App) -> Result<Value, ApiError> {
    match app.wx.funds_get_bank_account().await {
        Ok(s) => Ok(status_view(&s)),
        Err(e) if is_no_data(&e) => Ok(json!({ "account": null, "verify_fail_reason": null })),
        Err(e) => Err(funds_error(e)),
    }
}

/// A string field, or a number written as its decimal digits (codes arrive both ways).
fn text_field(a: &serde_json::Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match a.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim().to_owned())),
        Some(Value::Number(n)) if n.is_u64() => Ok(Some(n.to_string())),
        Some(_) => Err(format!("{key} must be a string")),
    }
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Parses and checks a settlement account, listing every problem at once.
pub fn parse_bank_account(v: Option<&Value>) -> Result<BankAccount, Vec<String>> {
    let Some(a) = v.and_then(Value::as_object) else {
        return Err(vec![
            "account must be an object {bank_account_type, account_bank, bank_address_code, account_number, bank_branch_id?, bank_name?}".into(),
        ]);
    };
    let mut problems = Vec::new();
    for k in a.keys() {
        if !ACCOUNT_FIELDS.contains(&k.as_str()) {
            problems.push(format!(
                "unknown field {k} (expected one of {})",
                ACCOUNT_FIELDS.join(", ")
            ));
        }
    }
    let mut field = |key: &str| match text_field(a, key) {
        Ok(v) => v,
        Err(p) => {
            problems.push(p);
            None
        }
    };
    let kind = field("bank_account_type");
    let bank = field("account_bank");
    let code = field("bank_address_code");
    let number = field("account_number");
    let branch = field("bank_branch_id");
    let name = field("bank_name");
    if matches!(a.get("account_number"), Some(Value::Number(_))) {
        problems.push(
            "account_number must be a string of digits (a JSON number loses leading zeros)".into(),
        );
    }
    match kind.as_deref() {
        Some(k) if ACCOUNT_TYPES.contains(&k) => {}
        Some(k) => problems.push(format!(
            "bank_account_type {k:?} must be ACCOUNT_TYPE_BUSINESS (corporate) or ACCOUNT_TYPE_PRIVATE (personal card)"
        )),
        None => problems.push(
            "bank_account_type is required: ACCOUNT_TYPE_BUSINESS or ACCOUNT_TYPE_PRIVATE".into(),
        ),
    }
    match bank.as_deref() {
        Some(b) if !b.is_empty() && b.chars().count() <= 128 => {}
        _ => problems.push(
            "account_bank is required: the account_bank that action bank_by_number or banks gives (≤128 characters)".into(),
        ),
    }
    match code.as_deref() {
        Some(c) if c.len() == 6 && all_digits(c) => {}
        _ => problems.push(
            "bank_address_code must be the 6-digit bank_address_code of the account's city (action cities)".into(),
        ),
    }
    match number.as_deref() {
        Some(n) if all_digits(n) && (8..=30).contains(&n.len()) => {}
        Some(n) if !all_digits(n) => {
            problems.push("account_number must contain digits only (no spaces or dashes)".into())
        }
        Some(n) => problems.push(format!(
            "account_number must be 8–30 digits (got {})",
            n.len()
        )),
        None => problems.push("account_number is required".into()),
    }
    if let Some(b) = branch.as_deref() {
        if !all_digits(b) || b.len() > 32 {
            problems
                .push("bank_branch_id must be digits (a branch_id from action branches)".into());
        }
    }
    if let Some(n) = name.as_deref() {
        if n.is_empty() || n.chars().count() > 128 {
            problems.push("bank_name must be the branch's full name (1–128 characters)".into());
        }
    }
    if bank.as_deref() == Some(OTHER_BANK) && branch.is_none() && name.is_none() {
        problems.push(format!(
            "account_bank {OTHER_BANK} needs bank_branch_id or bank_name (branch_id or branch_name from action branches)"
        ));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(BankAccount {
        bank_account_type: kind.unwrap_or_default(),
        account_bank: bank.unwrap_or_default(),
        bank_address_code: code.unwrap_or_default(),
        bank_branch_id: branch,
        bank_name: name,
        account_number: number.unwrap_or_default(),
    })
}

async fn set_bank_account(app: &App, account: Option<Value>) -> Result<Value, ApiError> {
    let account = parse_bank_account(account.as_ref()).map_err(|problems| {
        ApiError::bad_request(
            "BAD_BANK_ACCOUNT",
            format!("fix the bank account: {}", problems.join("; ")),
        )
    })?;
    app.wx
        .funds_set_bank_account(&account)
        .await
        .map_err(|e| match e.errcode() {
            Some(E_PARAM) => ApiError::bad_request(
                "BANK_ACCOUNT_REFUSED",
                format!("WeChat refused the bank account (at most 5 changes a day; it must match the shop's legal entity): {e}"),
            ),
            _ => funds_error(e),
        })?;
    tracing::info!(account_bank = %account.account_bank, "settlement bank account set");
    // Binding can fail later on WeChat's side; show what it holds now.
    match app.wx.funds_get_bank_account().await {
        Ok(s) => Ok(status_view(&s)),
        Err(e) => {
            tracing::warn!(error = %e, "bank account set, but could not be read back");
            Ok(json!({ "account": account_view(&account), "verify_fail_reason": null }))
        }
    }
}

// ---------------------------------------------------------------------------------------
// Bank lookups: what `set_bank_account` is built from
//
// `bank_by_number` (or `banks`) → `account_bank`, `bank_code`, `need_branch`; `provinces` →
// `cities {province_code}` → `bank_address_code`, `city_code`; when the bank needs a branch,
// `branches {bank_code, city_code}` → `branch_id` (`bank_branch_id`), `branch_name`
// (`bank_name`). Codes are accepted as strings or numbers, as WeChat writes them both ways.

const MAX_LOOKUP_LIMIT: u32 = 100;
const MAX_KEY_WORDS_CHARS: usize = 64;

/// A positive whole number given as a JSON number or a string of digits.
fn positive_code(
    v: Option<&Value>,
    name: &str,
    code: &'static str,
    hint: &str,
) -> Result<i64, ApiError> {
    let value = match v {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) if all_digits(s.trim()) => s.trim().parse().ok(),
        _ => None,
    };
    value.filter(|c| *c > 0).ok_or_else(|| {
        ApiError::bad_request(
            code,
            format!("{name} is required: a positive number ({hint})"),
        )
    })
}

/// Optional `offset` (≥ 0) and `limit` (1–100) of a lookup page.
fn lookup_page(
    offset: Option<&Value>,
    limit: Option<&Value>,
) -> Result<(Option<u32>, Option<u32>), ApiError> {
    let bad = || {
        ApiError::bad_request(
            "BAD_PAGE",
            format!("offset must be a whole number ≥ 0 and limit 1–{MAX_LOOKUP_LIMIT}"),
        )
    };
    let num = |v: Option<&Value>| -> Result<Option<u32>, ApiError> {
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(Some)
                .ok_or_else(bad),
            Some(_) => Err(bad()),
        }
    };
    let offset = num(offset)?;
    let limit = num(limit)?;
    if limit.is_some_and(|l| l == 0 || l > MAX_LOOKUP_LIMIT) {
        return Err(bad());
    }
    Ok((offset, limit))
}

/// No data from a lookup means an empty list.
fn or_empty<T: Default>(r: Result<T, WxError>) -> Result<T, ApiError> {
    match r {
        Ok(v) => Ok(v),
        Err(e) if is_no_data(&e) => Ok(T::default()),
        Err(e) => Err(funds_error(e)),
    }
}

async fn banks(
    app: &App,
    key_words: Option<String>,
    bank_type: Option<Value>,
    offset: Option<Value>,
    limit: Option<Value>,
) -> Result<Value, ApiError> {
    let (offset, limit) = lookup_page(offset.as_ref(), limit.as_ref())?;
    let key_words = key_words
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty());
    if key_words
        .as_ref()
        .is_some_and(|k| k.chars().count() > MAX_KEY_WORDS_CHARS)
    {
        return Err(ApiError::bad_request(
            "BAD_KEY_WORDS",
            format!("key_words is part of a bank's name (≤{MAX_KEY_WORDS_CHARS} characters)"),
        ));
    }
    let bank_type = match bank_type {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if matches!(n.as_i64(), Some(1 | 2)) => n.as_i64(),
        Some(_) => {
            return Err(ApiError::bad_request(
                "BAD_BANK_TYPE",
                "bank_type must be 1 or 2 (WeChat's documents disagree on which is personal and which corporate; leave it out to list both)",
            ))
        }
    };
    let req = crate::shop::funds::BankListRequest {
        offset,
        limit,
        key_words,
        bank_type,
    };
    let list = or_empty(app.wx.funds_get_bank_list(&req).await)?;
    let total = list.total_count.unwrap_or(list.data.len() as i64);
    Ok(json!({ "banks": list.data, "total": total }))
}

async fn bank_by_number(app: &App, account_number: Option<Value>) -> Result<Value, ApiError> {
    let number = match &account_number {
        Some(Value::String(s)) => s.trim().to_owned(),
        Some(Value::Number(_)) => {
            return Err(ApiError::bad_request(
                "BAD_ACCOUNT_NUMBER",
                "account_number must be a string of digits (a JSON number loses leading zeros)",
            ))
        }
        _ => String::new(),
    };
    if !all_digits(&number) || !(8..=30).contains(&number.len()) {
        return Err(ApiError::bad_request(
            "BAD_ACCOUNT_NUMBER",
            "account_number is required: the card or account number, 8–30 digits without spaces",
        ));
    }
    let list = or_empty(app.wx.funds_get_bank_by_num(&number).await)?;
    if list.data.is_empty() {
        return Err(ApiError::not_found(
            "BANK_NOT_FOUND",
            "WeChat knows no bank for this account number; find it by name with action banks {key_words}",
        ));
    }
    let total = list.total_count.unwrap_or(list.data.len() as i64);
    Ok(json!({ "banks": list.data, "total": total }))
}

async fn provinces(app: &App) -> Result<Value, ApiError> {
    let list = or_empty(app.wx.funds_get_province().await)?;
    let total = list.total_count.unwrap_or(list.data.len() as i64);
    Ok(json!({ "provinces": list.data, "total": total }))
}

async fn cities(app: &App, province_code: Option<Value>) -> Result<Value, ApiError> {
    let province = positive_code(
        province_code.as_ref(),
        "province_code",
        "BAD_PROVINCE_CODE",
        "a province_code from action provinces",
    )?;
    let list = or_empty(app.wx.funds_get_city(province).await)?;
    let total = list.total_count.unwrap_or(list.data.len() as i64);
    Ok(json!({ "cities": list.data, "total": total }))
}

async fn branches(
    app: &App,
    bank_code: Option<Value>,
    city_code: Option<Value>,
    offset: Option<Value>,
    limit: Option<Value>,
) -> Result<Value, ApiError> {
    let bank_code = match &bank_code {
        Some(Value::String(s)) => s.trim().to_owned(),
        Some(Value::Number(n)) if n.is_u64() => n.to_string(),
        _ => String::new(),
    };
    if bank_code.is_empty()
        || bank_code.len() > 32
        || !bank_code.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(ApiError::bad_request(
            "BAD_BANK_CODE",
            "bank_code is required: the bank_code from action bank_by_number or banks",
        ));
    }
    let city_code = positive_code(
        city_code.as_ref(),
        "city_code",
        "BAD_CITY_CODE",
        "the city_code from action cities, not its bank_address_code",
    )?;
    let (offset, limit) = lookup_page(offset.as_ref(), limit.as_ref())?;
    let req = crate::shop::funds::SubBranchRequest {
        bank_code,
        city_code,
        offset,
        limit,
    };
    let b = or_empty(app.wx.funds_get_sub_branch(&req).await)?;
    let total = b.total_count.unwrap_or(b.data.len() as i64);
    Ok(json!({
        "account_bank": b.account_bank,
        "account_bank_code": b.account_bank_code,
        "bank_alias": b.bank_alias,
        "bank_alias_code": b.bank_alias_code,
        "branches": b.data,
        "total": total,
    }))
}

// ---------------------------------------------------------------------------------------
// Withdrawals: the stored record

/// A withdrawal as we keep it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Withdrawal {
    /// WeChat's `out_request_no`.
    pub withdraw_id: String,
    pub amount: Fen,
    /// WeChat's `withdraw_info.status` (`BEFORE_SCAN_QRCODE` … `SUCCESS`), or `UNKNOWN`.
    pub status: String,
    #[serde(default)]
    pub qrcode_ticket: Option<String>,
    #[serde(default)]
    pub remark: Option<String>,
    #[serde(default)]
    pub bank_memo: Option<String>,
    /// Why it failed or was closed, as WeChat says.
    #[serde(default)]
    pub reason: Option<String>,
    /// `withdraw_notify` events seen, in arrival order.
    #[serde(default)]
    pub events: Vec<i64>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// Where a withdrawal ends: SUCCESS (the bank took it), FAIL, CLOSE (not confirmed), or
/// REFUND (the bank returned a transfer that had succeeded).
fn is_final(s: &str) -> bool {
    matches!(s, "SUCCESS" | "FAIL" | "CLOSE" | "REFUND")
}

/// What a reported status does to the stored one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StatusMove {
    Same,
    /// Further along: taken.
    Forward,
    /// Behind what we have (an older detail arriving late): ignored.
    Stale,
    /// Another end than the one reached: ignored, and told (a WARN and a
    /// `withdrawal_conflict` event), since one of the two reports is wrong about money.
    Conflict,
}

/// A status only moves forward, and an end, once reached, stays — save SUCCESS → REFUND,
/// the bank returning the transfer. SUCCESS, FAIL and CLOSE used to share one rank, so a late
/// report could turn a SUCCESS into a FAIL and back.
fn status_move(from: &str, to: &str) -> StatusMove {
    if from == to {
        StatusMove::Same
    } else if from == "SUCCESS" && to == "REFUND" {
        StatusMove::Forward
    } else if from == "REFUND" && to == "SUCCESS" {
        StatusMove::Stale // the transfer succeeded before the bank returned it
    } else if is_final(from) {
        if is_final(to) {
            StatusMove::Conflict
        } else {
            StatusMove::Stale
        }
    } else if status_rank(to) >= status_rank(from) {
        StatusMove::Forward
    } else {
        StatusMove::Stale
    }
}

/// How far along a status is.
fn status_rank(s: &str) -> u8 {
    match s {
        "UNKNOWN" => 0,
        "INIT" => 1,
        "BEFORE_SCAN_QRCODE" => 2,
        "AFTER_SCAN_QRCODE" => 3,
        "CREATE_SUCCESS" => 4,
        "SUCCESS" | "FAIL" | "CLOSE" => 5,
        // The bank returned a successful transfer.
        "REFUND" => 6,
        _ => 1,
    }
}

impl Withdrawal {
    fn from_detail(withdraw_id: &str, d: &WithdrawInfo, now_ms: i64) -> Self {
        Withdrawal {
            withdraw_id: withdraw_id.to_owned(),
            amount: d.amount,
            status: d.status.clone(),
            qrcode_ticket: None,
            remark: d.remark.clone().filter(|r| !r.is_empty()),
            bank_memo: d.bank_memo.clone().filter(|r| !r.is_empty()),
            reason: d.reason.clone().filter(|r| !r.is_empty()),
            events: Vec::new(),
            created_at_ms: if d.create_time > 0 {
                d.create_time.saturating_mul(1000)
            } else {
                now_ms
            },
            updated_at_ms: now_ms,
        }
    }

    /// Takes WeChat's newer view, never moving the status back nor away from an end
    /// ([`status_move`]). Returns whether it changed.
    fn apply_detail(&mut self, d: &WithdrawInfo, now_ms: i64) -> bool {
        let before = self.clone();
        if status_move(&self.status, &d.status) == StatusMove::Forward {
            self.status = d.status.clone();
            if let Some(r) = d.reason.as_ref().filter(|r| !r.is_empty()) {
                self.reason = Some(r.clone());
            }
        }
        if self.amount == Fen::ZERO {
            self.amount = d.amount;
        }
        let changed = *self != before;
        if changed {
            self.updated_at_ms = now_ms;
        }
        changed
    }
}

fn to_record(w: &Withdrawal, version: u64) -> Result<Record, StoreError> {
    let mut r = Record::new(Kind::Withdrawal, w.withdraw_id.clone(), Record::encode(w)?);
    r.version = version;
    r.owner = Some(OWNER.to_owned());
    r.status = Some(w.status.clone());
    r.sort = w.created_at_ms;
    Ok(r)
}

/// The pointer from a QR ticket to its withdrawal (not in any index).
fn ticket_key(ticket: &str) -> String {
    format!("qrcode:{ticket}")
}

/// A stored withdrawal and its version.
pub async fn get_withdrawal(
    store: &dyn Store,
    withdraw_id: &str,
) -> Result<Option<(u64, Withdrawal)>, StoreError> {
    match store.get(Kind::Withdrawal, withdraw_id).await? {
        Some(r) => Ok(Some((r.version, r.decode()?))),
        None => Ok(None),
    }
}

/// Stored withdrawals, newest first.
pub async fn list_withdrawals(
    store: &dyn Store,
    limit: usize,
) -> Result<Vec<Withdrawal>, StoreError> {
    let mut q = Query::new(Kind::Withdrawal, Index::Owner(OWNER.to_owned()));
    q.descending = true;
    q.limit = limit;
    let page = store.query(q).await?;
    page.records.iter().map(Record::decode).collect()
}

async fn withdrawal_for_ticket(
    store: &dyn Store,
    ticket: &str,
) -> Result<Option<String>, StoreError> {
    #[derive(Deserialize)]
    struct Pointer {
        withdraw_id: String,
    }
    match store.get(Kind::Withdrawal, &ticket_key(ticket)).await? {
        Some(r) => Ok(Some(r.decode::<Pointer>()?.withdraw_id)),
        None => Ok(None),
    }
}

/// Creates or updates one withdrawal under optimistic concurrency. `f` gets the stored value
/// (if any) and returns the value to store, or `None` to leave it as it is.
async fn upsert(
    store: &dyn Store,
    withdraw_id: &str,
    f: impl Fn(Option<Withdrawal>) -> Option<Withdrawal>,
) -> Result<Option<Withdrawal>, StoreError> {
    for _ in 0..MAX_CONFLICT_RETRIES {
        let current = get_withdrawal(store, withdraw_id).await?;
        let (expect, version, old) = match current {
            Some((v, w)) => (Expect::Version(v), v + 1, Some(w)),
            None => (Expect::Absent, 1, None),
        };
        let Some(next) = f(old.clone()) else {
            return Ok(old);
        };
        if old.as_ref() == Some(&next) {
            return Ok(old);
        }
        match store
            .write(vec![Write::put(to_record(&next, version)?, expect)])
            .await
        {
            Ok(()) => return Ok(Some(next)),
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Backend(
        "withdrawal record kept changing under concurrent writers; retry".into(),
    ))
}

/// The withdrawal as the merchant sees it. One that awaits the admin's QR confirmation
/// without a QR ticket here (`submitwithdraw`'s answer was lost, or it was started elsewhere)
/// says so, and what to do (`qrcode_lost`, `next`).
fn withdrawal_view(w: &Withdrawal) -> Value {
    let mut view = json!({
        "withdraw_id": w.withdraw_id,
        "amount_fen": w.amount.get(),
        "status": w.status,
        "qrcode_ticket": w.qrcode_ticket,
        "remark": w.remark,
        "bank_memo": w.bank_memo,
        "reason": w.reason,
        "events": w.events,
        "created_at": w.created_at_ms,
        "updated_at": w.updated_at_ms,
    });
    if awaits_qr(&w.status) && w.qrcode_ticket.is_none() {
        view["qrcode_lost"] = json!(true);
        view["next"] = json!(qrcode_lost(&w.withdraw_id, w.amount));
    }
    view
}

// ---------------------------------------------------------------------------------------
// Withdrawals: actions

fn parse_amount(v: Option<&Value>) -> Result<Fen, ApiError> {
    let bad = |why: &str| {
        ApiError::bad_request(
            "BAD_AMOUNT",
            format!("amount_fen {why}: give a positive whole number of fen, e.g. 1000 for ¥10.00"),
        )
    };
    let v = v.ok_or_else(|| bad("is required"))?;
    let n = v
        .as_i64()
        .ok_or_else(|| bad(&format!("is {v}, not an integer")))?;
    if n <= 0 {
        return Err(bad(&format!("is {n}")));
    }
    Fen::new(n).map_err(|e| bad(&e.to_string()))
}

fn check_note(field: &str, v: Option<String>) -> Result<Option<String>, ApiError> {
    match v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()) {
        Some(s) if s.chars().count() > MAX_REMARK_CHARS => Err(ApiError::bad_request(
            "BAD_REMARK",
            format!("{field} must be at most {MAX_REMARK_CHARS} characters"),
        )),
        other => Ok(other),
    }
}

async fn withdraw(
    app: &App,
    amount: Option<Value>,
    remark: Option<String>,
    bank_memo: Option<String>,
) -> Result<Value, ApiError> {
    let amount = parse_amount(amount.as_ref())?;
    let remark = check_note("remark", remark)?;
    let bank_memo = check_note("bank_memo", bank_memo)?;
    let lock = take_withdraw_lock(app, amount).await?;
    let answer = withdraw_once(app, amount, remark, bank_memo).await;
    if let Err(e) = release_withdraw_lock(app, &lock).await {
        tracing::warn!(error = %e, "could not release the withdrawal lock; it expires by itself");
    }
    answer
}

/// Deletes the lock if it is still the one `mine` took (not another request's, taken after
/// it expired).
async fn release_withdraw_lock(app: &App, mine: &str) -> Result<(), StoreError> {
    let store = app.store.as_ref();
    match kv::get(store, WITHDRAW_LOCK).await? {
        Some(held) if held.value == mine => {
            kv::delete_if(store, WITHDRAW_LOCK, held.version).await?;
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The kv entry held while a `withdraw` request is under way ([`take_withdraw_lock`]).
const WITHDRAW_LOCK: &str = "funds/withdraw_in_flight";
/// How long a lock its request never released (the process ended mid-request) holds: longer
/// than a request runs.
const WITHDRAW_LOCK_SECS: i64 = 60;

/// One `withdraw` request at a time. A second one while the first waits for WeChat's answer
/// to `submitwithdraw` (a double tap, or a tool retrying early) would meet WeChat's refusal
/// of a second withdrawal that day before the first had recorded the QR ticket, and was told
/// the QR code was lost for good and to withdraw tomorrow — while the first request's answer
/// carried that QR code. It is told instead to repeat shortly (409 `WITHDRAWAL_IN_PROGRESS`):
/// once the first has answered, the repeat gets the same QR code again (`resumed`). The lock's
/// value, unique to this request, to release it.
async fn take_withdraw_lock(app: &App, amount: Fen) -> Result<String, ApiError> {
    let until = app.clock.now_secs() + WITHDRAW_LOCK_SECS;
    let value = json!({"amount_fen": amount.get(), "since_ms": app.clock.now_ms(),
        "request": rand::random::<u64>()})
    .to_string();
    if kv::put_if(app.store.as_ref(), WITHDRAW_LOCK, &value, until, None).await? {
        return Ok(value);
    }
    Err(ApiError::conflict(
        "WITHDRAWAL_IN_PROGRESS",
        "another withdraw request is under way (a double tap, or a retry sent while the \
         first still waits for WeChat): its answer carries the withdrawal's QR code. Nothing \
         new was submitted. Repeat this request in a few seconds (a minute at most, if that \
         request was cut off): if WeChat took its withdrawal, the repeat answers its QR code \
         again",
    ))
}

/// [`withdraw`] under its lock.
async fn withdraw_once(
    app: &App,
    amount: Fen,
    remark: Option<String>,
    bank_memo: Option<String>,
) -> Result<Value, ApiError> {
    let balance = app.wx.funds_get_balance().await.map_err(funds_error)?;
    if !balance.available_amount.covers(amount) {
        // A retry of a submission WeChat took: the amount is held by that withdrawal now.
        if let Some(today) = todays_withdrawal(app, amount).await? {
            return Ok(today);
        }
        return Err(ApiError::conflict(
            "INSUFFICIENT_BALANCE",
            format!(
                "{amount} fen requested but only {} fen is available to withdraw ({} fen still awaits settlement)",
                balance.available_amount, balance.pending_amount
            ),
        ));
    }
    let submitted = app
        .wx
        .funds_submit_withdraw(amount, remark.as_deref(), bank_memo.as_deref())
        .await;
    let submitted = match submitted {
        Ok(s) => s,
        Err(e) if is_no_data(&e) => {
            return Err(ApiError::conflict(
                "NO_BANK_ACCOUNT",
                format!("set the settlement bank account first (action set_bank_account): {e}"),
            ))
        }
        Err(e) if matches!(e.errcode(), Some(E_WITHDRAW_TWICE | E_BALANCE)) => {
            // A retry of today's submission whose answer the caller never got gets that
            // withdrawal's QR code again, or is told why it cannot.
            return match todays_withdrawal(app, amount).await? {
                Some(today) => Ok(today),
                None => Err(funds_error(e)),
            };
        }
        Err(e) => return Err(funds_error(e)),
    };
    let id = submitted.out_request_no.clone();
    let ticket = submitted.qrcode_ticket.clone();
    tracing::info!(withdraw_id = %id, amount = amount.get(), "withdrawal submitted; awaiting the admin's QR confirmation");

    // WeChat holds the withdrawal now: a store failure must not hide the QR code. A later
    // `withdraw_status`, `withdrawals` or `withdraw_notify` records it.
    let now = app.clock.now_ms();
    let recorded = record_submitted(
        app.store.as_ref(),
        &id,
        amount,
        &ticket,
        &remark,
        &bank_memo,
        now,
    )
    .await;
    let (recorded, view) = match recorded {
        Ok(w) => (true, withdrawal_view(&w)),
        Err(e) => {
            tracing::error!(withdraw_id = %id, error = %e, "withdrawal submitted but not recorded");
            let w = Withdrawal {
                withdraw_id: id.clone(),
                amount,
                status: "BEFORE_SCAN_QRCODE".into(),
                qrcode_ticket: Some(ticket.clone()),
                remark,
                bank_memo,
                reason: None,
                events: Vec::new(),
                created_at_ms: now,
                updated_at_ms: now,
            };
            (false, withdrawal_view(&w))
        }
    };

    Ok(submitted_answer(app, &id, view, recorded, ticket).await)
}

/// Whether `w` is a withdrawal of `amount` made today (Beijing time) that still awaits the
/// admin's QR confirmation.
fn awaits_qr_today(w: &Withdrawal, amount: Fen, today: &str) -> bool {
    w.amount == amount
        && awaits_qr(&w.status)
        && crate::time::beijing_date(w.created_at_ms) == today
}

/// A status in which the withdrawal waits for the admin to scan its QR code.
fn awaits_qr(status: &str) -> bool {
    matches!(status, "INIT" | "BEFORE_SCAN_QRCODE")
}

/// Today's (Beijing time) stored withdrawal of `amount` that still awaits the admin's QR
/// confirmation, with its ticket.
async fn pending_today(app: &App, amount: Fen) -> Option<Withdrawal> {
    let today = crate::time::beijing_date(app.clock.now_ms());
    let recent = list_withdrawals(app.store.as_ref(), 5).await.ok()?;
    recent
        .into_iter()
        .find(|w| awaits_qr_today(w, amount, &today) && w.qrcode_ticket.is_some())
}

/// What a withdrawal request of `amount` that WeChat refused (one a day, or the amount no
/// longer available) gets when it repeats today's submission — the caller never got that
/// submission's answer, or we never did. `None` when it repeats nothing: the refusal stands.
///
/// - The withdrawal is stored with its QR ticket (our answer was lost after it was recorded):
///   its QR code again, `resumed`.
/// - WeChat holds a withdrawal of `amount` from today awaiting the QR confirmation, without
///   a ticket here (`submitwithdraw`'s answer was lost on its way to us; the `withdraw_notify`
///   push or `withdrawals` may have recorded it since, from `getwithdrawdetail`): 409
///   `WITHDRAWAL_QRCODE_LOST`, saying what to do. WeChat gives a withdrawal's `qrcode_ticket`
///   only in `submitwithdraw`'s answer — `getwithdrawdetail` has none (WECHAT_SHOP.md §14.2;
///   SKIT's model agrees), `qrcode/gen` makes a ticket tied to no withdrawal (what it confirms
///   is UNVERIFIED) — so nothing here can show that QR code again.
///
/// WeChat's list is read only when the store has no resumable withdrawal, and only its first
/// and last page of [`TODAY_SCAN_PAGE`] (the order `scanwithdraw` lists in is UNVERIFIED;
/// one withdrawal a day puts today's at one end). A list WeChat does not give leaves the
/// refusal as it was.
async fn todays_withdrawal(app: &App, amount: Fen) -> Result<Option<Value>, ApiError> {
    if let Some(w) = pending_today(app, amount).await {
        return resumed(app, &w).await.map(Some);
    }
    let today = crate::time::beijing_date(app.clock.now_ms());
    let Some(w) = wechat_withdrawal_today(app, amount, &today).await else {
        return Ok(None);
    };
    if w.qrcode_ticket.is_some() {
        return resumed(app, &w).await.map(Some);
    }
    tracing::warn!(withdraw_id = %w.withdraw_id, amount = amount.get(), "today's withdrawal of this amount awaits its QR confirmation, but its QR ticket was never received");
    Err(ApiError::conflict(
        "WITHDRAWAL_QRCODE_LOST",
        qrcode_lost(&w.withdraw_id, w.amount),
    ))
}

/// Page size of the reads of WeChat's withdrawal list by [`todays_withdrawal`].
const TODAY_SCAN_PAGE: u32 = 10;

/// WeChat's withdrawal of `amount` made `today` that awaits the QR confirmation, recorded (as
/// `withdrawals` records them). Withdrawals stored as made on another day are not asked about
/// again; `None` on any failure to read.
async fn wechat_withdrawal_today(app: &App, amount: Fen, today: &str) -> Option<Withdrawal> {
    let first = match app.wx.funds_scan_withdraw(1, TODAY_SCAN_PAGE).await {
        Ok(ids) => ids,
        Err(e) => {
            if !is_no_data(&e) {
                tracing::warn!(error = %e, "could not list WeChat's withdrawals to find today's");
            }
            return None;
        }
    };
    let mut ids = first.out_request_nos;
    let last = u32::try_from(first.total_num.max(0))
        .unwrap_or(u32::MAX)
        .div_ceil(TODAY_SCAN_PAGE);
    if last > 1 {
        match app.wx.funds_scan_withdraw(last, TODAY_SCAN_PAGE).await {
            Ok(more) => ids.extend(more.out_request_nos),
            Err(e) => {
                tracing::warn!(error = %e, "could not read the last page of WeChat's withdrawals")
            }
        }
    }
    for id in ids {
        let stored = get_withdrawal(app.store.as_ref(), &id).await.ok().flatten();
        if stored.is_some_and(|(_, w)| crate::time::beijing_date(w.created_at_ms) != today) {
            continue;
        }
        match refresh(app, &id).await {
            Ok(w) if awaits_qr_today(&w, amount, today) => return Some(w),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(withdraw_id = %id, error = %e, "could not read a withdrawal of WeChat's list")
            }
        }
    }
    None
}

/// The answer to a repeated request: the stored withdrawal's QR code again — unless WeChat
/// says the code can no longer be confirmed (`qrcode/check` 2 cancelled, 3 expired, or
/// `60220`): then 410 `QRCODE_EXPIRED`, saying that the withdrawal closes with its amount
/// available again and what to do, and the withdrawal is read again so `withdraw_status`
/// shows it. Our record may still say it awaits the scan when the `withdraw_notify` that
/// closed it was lost; it used to hand back the dead QR code as `resumed`. A check that
/// fails otherwise leaves the answer as it was (the QR code again).
async fn resumed(app: &App, w: &Withdrawal) -> Result<Value, ApiError> {
    let ticket = w.qrcode_ticket.clone().unwrap_or_default();
    let dead = match app.wx.funds_qrcode_check(&ticket).await {
        Ok(c) => matches!(c.status, 2 | 3),
        Err(e) => {
            let expired = e.errcode() == Some(E_QR_EXPIRED);
            if !expired {
                tracing::warn!(withdraw_id = %w.withdraw_id, error = %e, "qrcode/check failed; answering the QR code again unchecked");
            }
            expired
        }
    };
    if dead {
        tracing::info!(withdraw_id = %w.withdraw_id, "today's withdrawal of this amount can no longer be confirmed: its QR code expired or was cancelled");
        if let Err(e) = refresh(app, &w.withdraw_id).await {
            tracing::warn!(withdraw_id = %w.withdraw_id, error = %e, "could not read the closed withdrawal again");
        }
        return Err(qrcode_dead(&w.withdraw_id, w.amount));
    }
    tracing::info!(withdraw_id = %w.withdraw_id, "today's withdrawal of this amount awaits confirmation; answering its QR code again");
    let mut out = submitted_answer(app, &w.withdraw_id, withdrawal_view(w), true, ticket).await;
    out["resumed"] = json!(true);
    Ok(out)
}

/// 410 `QRCODE_EXPIRED` for withdrawal `id`, whose QR code can no longer be confirmed.
fn qrcode_dead(id: &str, amount: Fen) -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        "QRCODE_EXPIRED",
        format!(
            "withdrawal {id} of {amount} fen was not confirmed: its QR code expired (or the \
             admin cancelled it) before the admin confirmed it in WeChat. WeChat closes the \
             withdrawal (status CLOSE) and the amount is available again (action balance). \
             WeChat allows one withdrawal a day (Beijing time) and this one counted: withdraw \
             again tomorrow, and have the admin scan and confirm the new QR code promptly"
        ),
    )
}

/// What to do about a withdrawal that awaits the admin's QR confirmation, but whose QR ticket
/// never reached us (see [`todays_withdrawal`]). That it closes when its QR code expires,
/// giving the amount back, is what `qrcode/check`'s "expired" (3) and the sandbox say; when
/// WeChat closes it, and whether the MP admin console can confirm it, is UNVERIFIED.
fn qrcode_lost(withdraw_id: &str, amount: Fen) -> String {
    format!(
        "WeChat holds withdrawal {withdraw_id} of {amount} fen awaiting the admin's QR \
         confirmation, but no QR code for it is known here: WeChat gives a withdrawal's QR \
         code only in the answer to submitwithdraw, and that answer never arrived (unless the \
         withdrawal was started outside this back end, which showed its QR code). It cannot \
         be confirmed from here. Leave it: unconfirmed, it closes (status CLOSE) once its QR \
         code expires, and the amount is available again (follow it with action \
         withdraw_status {{withdraw_id}}). WeChat allows one withdrawal a day (Beijing time): \
         withdraw again tomorrow"
    )
}

/// The answer to a submitted withdrawal: its view, and the QR code the admin confirms.
async fn submitted_answer(
    app: &App,
    id: &str,
    view: Value,
    recorded: bool,
    ticket: String,
) -> Value {
    let mut out = json!({
        "withdrawal": view,
        "recorded": recorded,
        "qrcode_ticket": ticket,
        "next": "the shop's admin scans the QR code in WeChat and confirms; poll action withdraw_status",
    });
    let (content, wechat_image) = match app.wx.funds_qrcode_get(&ticket).await {
        Ok(bytes) => qr_content(&bytes, &ticket),
        Err(e) => {
            tracing::warn!(withdraw_id = %id, error = %e, "qrcode/get failed; rendering the ticket");
            (ticket.clone(), None)
        }
    };
    match qr_png(&content) {
        Ok(png) => {
            out["qrcode_png_base64"] = json!(base64::engine::general_purpose::STANDARD.encode(png));
            out["qrcode_content"] = json!(content);
        }
        Err(e) => {
            tracing::error!(withdraw_id = %id, error = %e, "could not render the QR code");
            out["qrcode_error"] = json!(e);
        }
    }
    if let Some((mime, bytes)) = wechat_image {
        out["wechat_qrcode_image_base64"] =
            json!(base64::engine::general_purpose::STANDARD.encode(bytes));
        out["wechat_qrcode_image_type"] = json!(mime);
    }
    out
}

async fn record_submitted(
    store: &dyn Store,
    id: &str,
    amount: Fen,
    ticket: &str,
    remark: &Option<String>,
    bank_memo: &Option<String>,
    now: i64,
) -> Result<Withdrawal, StoreError> {
    // `withdraw_notify` may have created it already (from WeChat's detail): merge.
    let stored = upsert(store, id, |old| {
        let mut w = old.unwrap_or_else(|| Withdrawal {
            withdraw_id: id.to_owned(),
            amount,
            status: "BEFORE_SCAN_QRCODE".into(),
            qrcode_ticket: None,
            remark: None,
            bank_memo: None,
            reason: None,
            events: Vec::new(),
            created_at_ms: now,
            updated_at_ms: now,
        });
        w.amount = amount;
        w.qrcode_ticket = Some(ticket.to_owned());
        w.remark.clone_from(remark);
        w.bank_memo.clone_from(bank_memo);
        Some(w)
    })
    .await?
    .ok_or_else(|| StoreError::Backend("withdrawal not written".into()))?;
    let mut pointer = Record::new(
        Kind::Withdrawal,
        ticket_key(ticket),
        Record::encode(&json!({ "withdraw_id": id }))?,
    );
    pointer.sort = now;
    store.write(vec![Write::put(pointer, Expect::Any)]).await?;
    Ok(stored)
}

/// What the PNG should encode, and WeChat's own image if `qrcode/get` sent one.
fn qr_content(bytes: &[u8], ticket: &str) -> (String, Option<(&'static str, Vec<u8>)>) {
    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n";
    const JPEG: &[u8] = b"\xff\xd8\xff";
    if bytes.starts_with(PNG) {
        return (ticket.to_owned(), Some(("image/png", bytes.to_vec())));
    }
    if bytes.starts_with(JPEG) {
        return (ticket.to_owned(), Some(("image/jpeg", bytes.to_vec())));
    }
    match std::str::from_utf8(bytes) {
        Ok(text)
            if !text.trim().is_empty()
                && text.len() <= 1024
                && !text.chars().any(char::is_control) =>
        {
            (text.trim().to_owned(), None)
        }
        _ => (ticket.to_owned(), None),
    }
}

/// Renders `content` as a QR code PNG (8-bit grey, 4-module quiet zone), ready to scan.
pub fn qr_png(content: &str) -> Result<Vec<u8>, String> {
    let code = qrcode::QrCode::with_error_correction_level(content, qrcode::EcLevel::M)
        .map_err(|e| format!("cannot encode {} bytes as a QR code: {e}", content.len()))?;
    let modules = code.width();
    let colors = code.to_colors();
    const QUIET: usize = 4;
    let side_modules = modules + 2 * QUIET;
    let scale = (400 / side_modules).clamp(3, 10);
    let side = side_modules * scale;
    let mut pixels = vec![255u8; side * side];
    for (i, c) in colors.iter().enumerate() {
        if *c != qrcode::Color::Dark {
            continue;
        }
        let (mx, my) = (i % modules + QUIET, i / modules + QUIET);
        for y in my * scale..(my + 1) * scale {
            let row = y * side;
            pixels[row + mx * scale..row + (mx + 1) * scale].fill(0);
        }
    }
    let side32 = u32::try_from(side).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, side32, side32);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().map_err(|e| e.to_string())?;
        w.write_image_data(&pixels).map_err(|e| e.to_string())?;
        w.finish().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

fn qrcode_view(c: &QrcodeCheck) -> Value {
    let text = match c.status {
        0 => "not scanned yet",
        1 => "confirmed by the admin",
        2 => "cancelled by the admin: start a new withdrawal",
        3 => {
            "expired before the admin confirmed it: the withdrawal closes and its amount is \
             available again; withdraw again (one withdrawal a day, Beijing time: tomorrow if \
             one was made today)"
        }
        4 => "scanned, awaiting confirmation",
        _ => "unknown",
    };
    json!({
        "status": c.status,
        "status_text": text,
        "confirmed": c.is_confirmed(),
        "scan_user_type": c.scan_user_type,
        "self_check_err_code": c.self_check_err_code.filter(|c| *c != 0),
        "self_check_err_msg": c.self_check_err_msg.as_deref().filter(|m| !m.is_empty()),
    })
}

fn check_ticket(t: &str) -> Result<(), ApiError> {
    if t.is_empty() || t.len() > 256 || !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::bad_request(
            "BAD_QRCODE_TICKET",
            "qrcode_ticket must be the 1–256 character ticket returned by withdraw",
        ));
    }
    Ok(())
}

/// WeChat's detail of one withdrawal, recorded.
async fn refresh(app: &App, id: &str) -> Result<Withdrawal, ApiError> {
    let detail = match app.wx.funds_get_withdraw_detail(id).await {
        Ok(d) => d,
        Err(e) if is_no_data(&e) => {
            return Err(ApiError::not_found(
                "WITHDRAWAL_NOT_FOUND",
                format!("WeChat has no withdrawal {id}; list them with action `withdrawals`"),
            ))
        }
        Err(e) => return Err(funds_error(e)),
    };
    let now = app.clock.now_ms();
    let stored = upsert(app.store.as_ref(), id, |old| match old {
        Some(mut w) => w.apply_detail(&detail, now).then_some(w),
        None => Some(Withdrawal::from_detail(id, &detail, now)),
    })
    .await?;
    if let Some(w) = &stored {
        note_conflict(app, w, &detail, "getwithdrawdetail").await;
    }
    Ok(stored.unwrap_or_else(|| Withdrawal::from_detail(id, &detail, now)))
}

/// A report of another end than the one the withdrawal reached was ignored: said at WARN and
/// kept as a `withdrawal_conflict` event (once per reported status), since one of the two is
/// wrong about where the money is and a person should look.
async fn note_conflict(app: &App, w: &Withdrawal, d: &WithdrawInfo, via: &str) {
    if status_move(&w.status, &d.status) != StatusMove::Conflict {
        return;
    }
    tracing::warn!(withdraw_id = %w.withdraw_id, kept = %w.status, reported = %d.status, via, "withdrawal reported with another final status than the one recorded; the first is kept");
    let body = json!({"withdraw_id": w.withdraw_id, "kept": w.status, "reported": d.status,
        "reported_reason": d.reason, "amount_fen": w.amount.get(), "via": via,
        "what_to_do": "check the withdrawal in the MP admin console (资金管理) and the bank account"});
    let key = format!("{}/{}", w.withdraw_id, d.status);
    if let Err(e) =
        super::common::keep_evidence(app, "withdrawal_conflict", key, body.to_string()).await
    {
        tracing::warn!(withdraw_id = %w.withdraw_id, error = %e, "could not keep the conflicting withdrawal report");
    }
}

async fn withdraw_status(
    app: &App,
    ticket: Option<String>,
    withdraw_id: Option<String>,
) -> Result<Value, ApiError> {
    let ticket = ticket.filter(|t| !t.is_empty());
    let withdraw_id = withdraw_id.filter(|t| !t.is_empty());
    if ticket.is_none() && withdraw_id.is_none() {
        return Err(ApiError::bad_request(
            "BAD_REQUEST",
            "give qrcode_ticket or withdraw_id (both returned by withdraw)",
        ));
    }
    if let Some(id) = &withdraw_id {
        check_id("withdraw_id", "BAD_WITHDRAW_ID", id)?;
    }
    let mut qrcode = None;
    let mut id = withdraw_id;
    if let Some(t) = &ticket {
        check_ticket(t)?;
        let check = app.wx.funds_qrcode_check(t).await.map_err(funds_error)?;
        qrcode = Some(qrcode_view(&check));
        if id.is_none() {
            id = withdrawal_for_ticket(app.store.as_ref(), t).await?;
        }
    }
    let withdrawal = match &id {
        Some(id) => Some(withdrawal_view(&refresh(app, id).await?)),
        None => None,
    };
    Ok(json!({ "withdrawal": withdrawal, "qrcode": qrcode }))
}

async fn withdrawals(app: &App, page: u32, page_size: u32) -> Result<Value, ApiError> {
    check_page(page, page_size)?;
    let ids = match app.wx.funds_scan_withdraw(page, page_size).await {
        Ok(ids) => ids,
        Err(e) if is_no_data(&e) => Default::default(),
        Err(e) => return Err(funds_error(e)),
    };
    let calls: Vec<_> = ids
        .out_request_nos
        .iter()
        .map(|id| refresh(app, id))
        .collect();
    let refreshed: Vec<_> = futures::stream::iter(calls)
        .buffered(CONCURRENT_DETAILS)
        .collect()
        .await;
    let mut list = Vec::with_capacity(refreshed.len());
    for (id, r) in ids.out_request_nos.iter().zip(refreshed) {
        match r {
            Ok(w) => list.push(withdrawal_view(&w)),
            Err(e) => list.push(json!({"withdraw_id": id, "error": e.message})),
        }
    }
    Ok(json!({
        "page": page,
        "page_size": page_size,
        "total": ids.total_num,
        "withdrawals": list,
    }))
}

// ---------------------------------------------------------------------------------------
// The push event

/// `withdraw_notify` (through `auditCallback`): records the event on the withdrawal and takes
/// WeChat's current detail. A store failure, or WeChat's detail out of reach, is an error
/// (WeChat then pushes again).
pub async fn on_withdraw_notify(app: &App, body: &WithdrawNotify) -> Result<(), ApiError> {
    let id = body.out_request_no.trim();
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        tracing::warn!(out_request_no = %body.out_request_no, "withdraw_notify with an unusable out_request_no");
        return Ok(());
    }
    // A withdrawal's status comes from WeChat's own detail, never from the push alone: in
    // plaintext mode its body is not signed, and the event numbers are UNVERIFIED. WeChat
    // unreachable: 503, so it pushes again; refused: the event is noted, the status kept.
    let detail = match app.wx.funds_get_withdraw_detail(id).await {
        Ok(d) => Some(d),
        Err(e) if e.is_retryable() => {
            return Err(ApiError::unavailable(
                "WECHAT_UNAVAILABLE",
                format!("cannot confirm withdrawal {id} with getwithdrawdetail ({e}); retry"),
            ))
        }
        Err(e) => {
            tracing::warn!(security = true, withdraw_id = %id, error = %e, "withdraw_notify: WeChat has no detail; the event is noted, the status kept");
            None
        }
    };
    let now = app.clock.now_ms();
    let event = body.event;
    let stored = upsert(app.store.as_ref(), id, |old| {
        let mut w = match (old, &detail) {
            (Some(mut w), Some(d)) => {
                w.apply_detail(d, now);
                w
            }
            (Some(w), None) => w,
            (None, Some(d)) => Withdrawal::from_detail(id, d, now),
            // Neither ours nor readable: the raw event stays in the event log.
            (None, None) => return None,
        };
        if let Some(e) = event {
            w.events.push(e);
        }
        w.updated_at_ms = now;
        Some(w)
    })
    .await?;
    if let (Some(w), Some(d)) = (&stored, &detail) {
        note_conflict(app, w, d, "withdraw_notify").await;
    }
    match stored {
        Some(w) => {
            tracing::info!(withdraw_id = %id, event = ?event, status = %w.status, "withdraw_notify recorded")
        }
        None => tracing::warn!(withdraw_id = %id, "withdraw_notify for a withdrawal we cannot see"),
    }
    Ok(())
}

fn to_value<T: Serialize>(v: &T) -> Result<Value, ApiError> {
    serde_json::to_value(v).map_err(|e| ApiError::internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn good() -> Value {
        json!({"bank_account_type": "ACCOUNT_TYPE_BUSINESS", "account_bank": "招商银行",
               "bank_address_code": "440300", "account_number": "6225880112345678"})
    }

    #[test]
    fn a_good_account_parses() {
        let a = parse_bank_account(Some(&good())).unwrap();
        assert_eq!(a.account_number, "6225880112345678");
        assert_eq!(a.bank_address_code, "440300");
        let mut v = good();
        v["bank_address_code"] = json!(440300);
        assert_eq!(
            parse_bank_account(Some(&v)).unwrap().bank_address_code,
            "440300"
        );
    }

    #[test]
    fn every_problem_of_a_bad_account_is_listed() {
        let v = json!({"bank_account_type": "SAVINGS", "account_bank": "",
                       "bank_address_code": "44", "account_number": "12-34", "acount": 1});
        let p = parse_bank_account(Some(&v)).unwrap_err();
        let all = p.join("\n");
        for needle in [
            "unknown field acount",
            "bank_account_type",
            "account_bank",
            "bank_address_code",
            "digits only",
        ] {
            assert!(all.contains(needle), "{needle} missing from {all}");
        }
        assert!(parse_bank_account(None).is_err());
        let mut short = good();
        short["account_number"] = json!("1234");
        assert!(parse_bank_account(Some(&short)).unwrap_err()[0].contains("8–30"));
        let mut numeric = good();
        numeric["account_number"] = json!(6225880112345678u64);
        assert!(parse_bank_account(Some(&numeric)).is_err());
        let mut other = good();
        other["account_bank"] = json!("其他银行");
        assert!(parse_bank_account(Some(&other)).unwrap_err()[0].contains("bank_branch_id"));
        other["bank_branch_id"] = json!("402584009991");
        assert!(parse_bank_account(Some(&other)).is_ok());
    }

    #[test]
    fn amounts_must_be_positive_integers() {
        assert!(parse_amount(Some(&json!(100))).is_ok());
        for bad in [json!(0), json!(-5), json!(1.5), json!("100")] {
            let e = parse_amount(Some(&bad)).unwrap_err();
            assert_eq!(e.code, "BAD_AMOUNT", "{bad}");
        }
        assert_eq!(parse_amount(None).unwrap_err().code, "BAD_AMOUNT");
    }

    #[test]
    fn statuses_never_move_back() {
        let d = |s: &str| WithdrawInfo {
            amount: Fen::new(100).unwrap(),
            status: s.into(),
            ..Default::default()
        };
        let mut w = Withdrawal::from_detail("1", &d("SUCCESS"), 1);
        assert!(!w.apply_detail(&d("BEFORE_SCAN_QRCODE"), 2));
        assert_eq!(w.status, "SUCCESS");
        assert!(w.apply_detail(&d("REFUND"), 3));
        assert_eq!(w.status, "REFUND");
        assert!(!w.apply_detail(&d("SUCCESS"), 4));
        assert_eq!(w.status, "REFUND");
    }

    /// An end, once reached, stays: a later report of another end changes nothing and is a
    /// conflict to tell, whichever came first.
    #[test]
    fn final_statuses_never_change() {
        let d = |s: &str| WithdrawInfo {
            amount: Fen::new(100).unwrap(),
            status: s.into(),
            reason: Some("bank said no".into()),
            ..Default::default()
        };
        for (first, later) in [
            ("SUCCESS", "FAIL"),
            ("FAIL", "SUCCESS"),
            ("CLOSE", "SUCCESS"),
            ("SUCCESS", "CLOSE"),
            ("FAIL", "REFUND"),
        ] {
            let mut w = Withdrawal::from_detail("1", &d(first), 1);
            w.reason = None;
            assert!(!w.apply_detail(&d(later), 2), "{first} → {later}");
            assert_eq!(w.status, first);
            assert_eq!(w.reason, None, "{first} → {later}: its reason is not taken");
            assert_eq!(status_move(first, later), StatusMove::Conflict);
        }
        assert_eq!(status_move("SUCCESS", "CREATE_SUCCESS"), StatusMove::Stale);
        assert_eq!(status_move("CREATE_SUCCESS", "FAIL"), StatusMove::Forward);
    }

    #[test]
    fn the_qr_png_decodes_and_is_square() {
        let png = qr_png("qr_ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcd").unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
        let dec = png::Decoder::new(std::io::Cursor::new(png));
        let reader = dec.read_info().unwrap();
        let info = reader.info();
        assert_eq!(info.width, info.height);
        assert!(info.width >= 21 * 3);
    }

    #[test]
    fn qr_content_prefers_text_and_keeps_images() {
        let (c, img) = qr_content(b"https://example.invalid/q/abc", "t");
        assert_eq!(c, "https://example.invalid/q/abc");
        assert!(img.is_none());
        let (c, img) = qr_content(b"\x89PNG\r\n\x1a\nrest", "t");
        assert_eq!(c, "t");
        assert_eq!(img.unwrap().0, "image/png");
        let (c, _) = qr_content(&[0, 1, 2, 200], "t");
        assert_eq!(c, "t");
    }
}
