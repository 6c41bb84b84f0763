//! Funds of a secondary-merchant shop (`shop/funds/*`): balance, flows, settlement bank
//! account, withdrawals with the admin's QR confirmation, and the bank lookups.
//!
//! Units differ inside this family: balances and withdrawals are integer fen, but
//! `getorderflow` writes yuan as decimal strings — both become [`Fen`] here, exactly. Bank,
//! branch and city codes arrive as numbers or strings and are kept as `String`.
//! When the client is set up with [`WxClient::with_funds_mchid`] (小程序支付管理服务), every
//! body also carries `biz_type: 1` and `mchid`.

use super::client::WxClient;
use super::error::WxError;
use super::serde_num;
use crate::domain::{BalanceFen, Fen};
use base64::Engine;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FundsBalance {
    /// Withdrawable; below zero when refunds took more than was left.
    #[serde(deserialize_with = "serde_num::balance_fen")]
    pub available_amount: BalanceFen,
    /// Awaiting settlement.
    #[serde(deserialize_with = "serde_num::balance_fen")]
    pub pending_amount: BalanceFen,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct BalanceReply {
    balance_info: FundsBalance,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FundsFlowIds {
    #[serde(deserialize_with = "string_list")]
    pub funds_flow_ids: Vec<String>,
    #[serde(deserialize_with = "serde_num::i64_or_string")]
    pub total_num: i64,
}

/// `getorderflow` → `funds_flow`. Amounts were yuan strings; the direction is `flow_type`
/// (收入 income / 支出 expense), not a sign.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FundsFlow {
    #[serde(deserialize_with = "serde_num::string_or_number")]
    pub funds_flow_id: String,
    /// `yyyy-MM-dd HH:mm:ss` Beijing time.
    pub bookkeeping_time: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub flow_type: String,
    #[serde(deserialize_with = "serde_num::yuan")]
    pub amount: Fen,
    /// The account's balance after this flow (may be below zero).
    #[serde(deserialize_with = "serde_num::balance_yuan")]
    pub balance: BalanceFen,
    pub busi_type: Option<String>,
    #[serde(deserialize_with = "serde_num::opt_string_or_number")]
    pub request_no: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct FlowReply {
    funds_flow: FundsFlow,
}

/// `getorderflow` → `funds_flow` as WeChat wrote it, the amount kept as its text: for the
/// reconciliation ([`crate::handlers::funds_reconcile`]), which reports an amount it cannot
/// read as a mismatch of its own and goes on with the other flows, where [`FundsFlow`]
/// refuses the whole answer.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FundsFlowText {
    #[serde(deserialize_with = "serde_num::string_or_number")]
    pub funds_flow_id: String,
    /// `yyyy-MM-dd HH:mm:ss` Beijing time.
    #[serde(deserialize_with = "serde_num::string_or_number")]
    pub bookkeeping_time: String,
    #[serde(rename = "type", deserialize_with = "serde_num::string_or_number")]
    pub kind: String,
    /// `收入` income, `支出` expense.
    #[serde(deserialize_with = "serde_num::string_or_number")]
    pub flow_type: String,
    /// Yuan, as written (`"19.90"`; a number is kept as its text).
    #[serde(deserialize_with = "serde_num::string_or_number")]
    pub amount: String,
    /// `订单`, `售后`, `提现`.
    #[serde(deserialize_with = "serde_num::opt_string_or_number")]
    pub busi_type: Option<String>,
    #[serde(deserialize_with = "serde_num::opt_string_or_number")]
    pub request_no: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct FlowTextReply {
    funds_flow: FundsFlowText,
}

/// Settlement bank account (`getbankaccount` → `account_info`, `setbankaccount` body).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct BankAccount {
    /// `ACCOUNT_TYPE_BUSINESS` or `ACCOUNT_TYPE_PRIVATE`.
    pub bank_account_type: String,
    pub account_bank: String,
    #[serde(deserialize_with = "serde_num::string_or_number")]
    pub bank_address_code: String,
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "serde_num::opt_string_or_number"
    )]
    pub bank_branch_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bank_name: Option<String>,
    pub account_number: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct BankAccountStatus {
    pub account_info: Option<BankAccount>,
    /// Why binding failed, if it did.
    pub verify_fail_reason: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SubmittedWithdraw {
    #[serde(deserialize_with = "serde_num::string_or_number")]
    pub out_request_no: String,
    pub qrcode_ticket: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct WithdrawIds {
    #[serde(deserialize_with = "string_list")]
    pub out_request_nos: Vec<String>,
    #[serde(deserialize_with = "serde_num::i64_or_string")]
    pub total_num: i64,
}

/// `getwithdrawdetail` → `withdraw_info`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct WithdrawInfo {
    #[serde(deserialize_with = "serde_num::fen")]
    pub amount: Fen,
    /// Unix seconds.
    #[serde(deserialize_with = "serde_num::i64_or_string")]
    pub create_time: i64,
    #[serde(deserialize_with = "serde_num::i64_or_string")]
    pub update_time: i64,
    pub reason: Option<String>,
    pub remark: Option<String>,
    pub bank_memo: Option<String>,
    pub bank_name: Option<String>,
    pub bank_num: Option<String>,
    /// `BEFORE_SCAN_QRCODE`, `AFTER_SCAN_QRCODE`, `CREATE_SUCCESS`, `SUCCESS`, `FAIL`,
    /// `REFUND`, `CLOSE`, `INIT`.
    pub status: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WithdrawReply {
    withdraw_info: WithdrawInfo,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct TicketReply {
    qrcode_ticket: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct QrcodeReply {
    qrcode_buf: String,
}

/// `qrcode/check` reply.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct QrcodeCheck {
    /// 0 not scanned, 1 confirmed, 2 cancelled, 3 expired, 4 scanned.
    #[serde(deserialize_with = "serde_num::i64_or_string")]
    pub status: i64,
    /// 0 non-admin, 1 admin, 2 sub-admin.
    #[serde(deserialize_with = "serde_num::i64_or_string")]
    pub scan_user_type: i64,
    #[serde(deserialize_with = "serde_num::opt_i64")]
    pub self_check_err_code: Option<i64>,
    pub self_check_err_msg: Option<String>,
}

impl QrcodeCheck {
    pub fn is_confirmed(&self) -> bool {
        self.status == 1
    }
}

/// `getbanklist` body.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BankListRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_words: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bank_type: Option<i64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct BankInfo {
    pub account_bank: String,
    #[serde(deserialize_with = "serde_num::string_or_number")]
    pub bank_code: String,
    #[serde(deserialize_with = "serde_num::string_or_number")]
    pub bank_id: String,
    pub bank_name: String,
    #[serde(deserialize_with = "serde_num::opt_i64")]
    pub bank_type: Option<i64>,
    #[serde(deserialize_with = "serde_num::bool_or_int")]
    pub need_branch: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct BankList {
    pub data: Vec<BankInfo>,
    #[serde(deserialize_with = "serde_num::opt_i64")]
    pub total_count: Option<i64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Province {
    #[serde(deserialize_with = "serde_num::string_or_number")]
    pub province_code: String,
    pub province_name: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct City {
    #[serde(deserialize_with = "serde_num::string_or_number")]
    pub city_code: String,
    pub city_name: String,
    #[serde(deserialize_with = "serde_num::string_or_number")]
    pub bank_address_code: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Listed<T> {
    pub data: Vec<T>,
    #[serde(deserialize_with = "serde_num::opt_i64")]
    pub total_count: Option<i64>,
}

/// `getsubbranch` body.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SubBranchRequest {
    pub bank_code: String,
    pub city_code: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SubBranches {
    pub account_bank: String,
    #[serde(deserialize_with = "serde_num::string_or_number")]
    pub account_bank_code: String,
    pub bank_alias: String,
    #[serde(deserialize_with = "serde_num::string_or_number")]
    pub bank_alias_code: String,
    #[serde(deserialize_with = "serde_num::opt_i64")]
    pub count: Option<i64>,
    #[serde(deserialize_with = "serde_num::opt_i64")]
    pub total_count: Option<i64>,
    pub data: Vec<SubBranch>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SubBranch {
    #[serde(deserialize_with = "serde_num::string_or_number")]
    pub branch_id: String,
    pub branch_name: String,
}

/// A list of ids that may be numbers or strings.
fn string_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    struct Item(#[serde(deserialize_with = "serde_num::string_or_number")] String);
    let items: Option<Vec<Item>> = Option::deserialize(d)?;
    Ok(items.unwrap_or_default().into_iter().map(|i| i.0).collect())
}

impl WxClient {
    /// POSTs to `shop/funds/{name}`, adding `biz_type`/`mchid` when configured.
    async fn funds<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        name: &str,
        req: &Req,
    ) -> Result<Resp, WxError> {
        let path = format!("shop/funds/{name}");
        let mut body = serde_json::to_value(req).map_err(|e| WxError::Invalid {
            path: path.clone(),
            why: e.to_string(),
        })?;
        if let (Some(mchid), Some(map)) = (&self.funds_mchid, body.as_object_mut()) {
            map.insert("biz_type".into(), 1.into());
            map.insert("mchid".into(), mchid.as_ref().into());
        }
        self.post_json(&path, &body).await
    }

    /// `shop/funds/getbalance`.
    pub async fn funds_get_balance(&self) -> Result<FundsBalance, WxError> {
        let r: BalanceReply = self.funds("getbalance", &serde_json::json!({})).await?;
        Ok(r.balance_info)
    }

    /// `shop/funds/scanorderflow`: flow ids of one day (`date` = `yyyyMMdd`).
    pub async fn funds_scan_order_flow(
        &self,
        date: &str,
        page_num: u32,
        page_size: u32,
    ) -> Result<FundsFlowIds, WxError> {
        self.funds(
            "scanorderflow",
            &serde_json::json!({ "date": date, "page_num": page_num.max(1), "page_size": page_size }),
        )
        .await
    }

    /// `shop/funds/getorderflow`.
    pub async fn funds_get_order_flow(&self, funds_flow_id: &str) -> Result<FundsFlow, WxError> {
        let r: FlowReply = self
            .funds(
                "getorderflow",
                &serde_json::json!({ "funds_flow_id": funds_flow_id }),
            )
            .await?;
        Ok(r.funds_flow)
    }

    /// `shop/funds/getorderflow`, the amount as WeChat wrote it ([`FundsFlowText`]).
    pub async fn funds_get_order_flow_text(
        &self,
        funds_flow_id: &str,
    ) -> Result<FundsFlowText, WxError> {
        let r: FlowTextReply = self
            .funds(
                "getorderflow",
                &serde_json::json!({ "funds_flow_id": funds_flow_id }),
            )
            .await?;
        Ok(r.funds_flow)
    }

    /// `shop/funds/getbankaccount`.
    pub async fn funds_get_bank_account(&self) -> Result<BankAccountStatus, WxError> {
        self.funds("getbankaccount", &serde_json::json!({})).await
    }

    /// `shop/funds/setbankaccount` (at most 5 changes a day).
    pub async fn funds_set_bank_account(&self, account: &BankAccount) -> Result<(), WxError> {
        self.funds::<_, IgnoredAny>(
            "setbankaccount",
            &serde_json::json!({ "account_info": account }),
        )
        .await
        .map(drop)
    }

    /// `shop/funds/submitwithdraw` (one a day) → `out_request_no` + `qrcode_ticket`.
    pub async fn funds_submit_withdraw(
        &self,
        amount: Fen,
        remark: Option<&str>,
        bank_memo: Option<&str>,
    ) -> Result<SubmittedWithdraw, WxError> {
        #[derive(Serialize)]
        struct Req<'a> {
            amount: Fen,
            #[serde(skip_serializing_if = "Option::is_none")]
            remark: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            bank_memo: Option<&'a str>,
        }
        if amount == Fen::ZERO {
            return Err(WxError::Invalid {
                path: "shop/funds/submitwithdraw".into(),
                why: "amount must be positive".into(),
            });
        }
        self.funds(
            "submitwithdraw",
            &Req {
                amount,
                remark,
                bank_memo,
            },
        )
        .await
    }

    /// `shop/funds/scanwithdraw`.
    pub async fn funds_scan_withdraw(
        &self,
        page_num: u32,
        page_size: u32,
    ) -> Result<WithdrawIds, WxError> {
        self.funds(
            "scanwithdraw",
            &serde_json::json!({ "page_num": page_num.max(1), "page_size": page_size }),
        )
        .await
    }

    /// `shop/funds/getwithdrawdetail`.
    pub async fn funds_get_withdraw_detail(
        &self,
        out_request_no: &str,
    ) -> Result<WithdrawInfo, WxError> {
        let r: WithdrawReply = self
            .funds(
                "getwithdrawdetail",
                &serde_json::json!({ "out_request_no": out_request_no }),
            )
            .await?;
        Ok(r.withdraw_info)
    }

    /// `shop/funds/qrcode/gen` (`identity_type` 1 = admin) → `qrcode_ticket`.
    pub async fn funds_qrcode_gen(&self, identity_type: i64) -> Result<String, WxError> {
        let r: TicketReply = self
            .funds(
                "qrcode/gen",
                &serde_json::json!({ "identity_type": identity_type }),
            )
            .await?;
        Ok(r.qrcode_ticket)
    }

    /// `shop/funds/qrcode/get` → the QR image bytes (decoded from `qrcode_buf`).
    pub async fn funds_qrcode_get(&self, qrcode_ticket: &str) -> Result<Vec<u8>, WxError> {
        const PATH: &str = "shop/funds/qrcode/get";
        let r: QrcodeReply = self
            .funds(
                "qrcode/get",
                &serde_json::json!({ "qrcode_ticket": qrcode_ticket }),
            )
            .await?;
        base64::engine::general_purpose::STANDARD
            .decode(r.qrcode_buf.trim())
            .map_err(|e| WxError::Decode {
                path: PATH.into(),
                why: format!("qrcode_buf is not base64: {e}"),
            })
    }

    /// `shop/funds/qrcode/check`: poll until confirmed (1); 2/3 or 60220 = start again.
    pub async fn funds_qrcode_check(&self, qrcode_ticket: &str) -> Result<QrcodeCheck, WxError> {
        self.funds(
            "qrcode/check",
            &serde_json::json!({ "qrcode_ticket": qrcode_ticket }),
        )
        .await
    }

    /// `shop/funds/getbanklist`.
    pub async fn funds_get_bank_list(&self, req: &BankListRequest) -> Result<BankList, WxError> {
        self.funds("getbanklist", req).await
    }

    /// `shop/funds/getbankbynum`: banks matching a card number.
    pub async fn funds_get_bank_by_num(&self, account_number: &str) -> Result<BankList, WxError> {
        self.funds(
            "getbankbynum",
            &serde_json::json!({ "account_number": account_number }),
        )
        .await
    }

    /// `shop/funds/getprovince`.
    pub async fn funds_get_province(&self) -> Result<Listed<Province>, WxError> {
        self.funds("getprovince", &serde_json::json!({})).await
    }

    /// `shop/funds/getcity`.
    pub async fn funds_get_city(&self, province_code: i64) -> Result<Listed<City>, WxError> {
        self.funds(
            "getcity",
            &serde_json::json!({ "province_code": province_code }),
        )
        .await
    }

    /// `shop/funds/getsubbranch`.
    pub async fn funds_get_sub_branch(
        &self,
        req: &SubBranchRequest,
    ) -> Result<SubBranches, WxError> {
        self.funds("getsubbranch", req).await
    }
}
