//! `funds` (merchant, secondary-merchant mode): the shop's funds account at WeChat —
//! balance, order flows, bank account, withdrawals confirmed by QR code — over
//! `shop/funds/*`. Amounts in and out are integer fen; a withdrawal is checked against the
//! balance before WeChat is asked, and recorded.

use super::shop_orders::wx_error;
use crate::app::App;
use crate::http::{json, parse_json, ApiError, Request, Response};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
enum Action {
    Balance,
    Flows {
        #[serde(default = "one")]
        page: u32,
        #[serde(default = "twenty")]
        page_size: u32,
        #[serde(default)]
        start_time: Option<i64>,
        #[serde(default)]
        end_time: Option<i64>,
    },
    Flow {
        flow_id: String,
    },
    BankAccount,
    SetBankAccount {
        account: serde_json::Value,
    },
    Withdraw {
        amount: i64,
        #[serde(default)]
        remark: String,
    },
    Withdrawals {
        #[serde(default = "one")]
        page: u32,
        #[serde(default = "twenty")]
        page_size: u32,
    },
    Withdrawal {
        withdraw_id: String,
    },
    QrcodeCheck {
        qrcode_ticket: String,
    },
}

fn one() -> u32 {
    1
}
fn twenty() -> u32 {
    20
}

async fn call(
    app: &App,
    path: &str,
    body: serde_json::Value,
) -> Result<serde_json::Value, ApiError> {
    app.wx.post_json(path, &body).await.map_err(wx_error)
}

pub async fn handle(app: &App, req: Request) -> Result<Response, ApiError> {
    let result = match parse_json::<Action>(&req)? {
        Action::Balance => call(app, "shop/funds/getbalance", json!({})).await?,
        Action::Flows {
            page,
            page_size,
            start_time,
            end_time,
        } => {
            if page == 0 || page_size == 0 || page_size > 100 {
                return Err(ApiError::bad_request(
                    "BAD_PAGE",
                    "page ≥ 1 and page_size 1–100",
                ));
            }
            let mut body = json!({ "page_num": page, "page_size": page_size });
            if let Some(s) = start_time {
                body["start_create_time"] = json!(s);
            }
            if let Some(e) = end_time {
                body["end_create_time"] = json!(e);
            }
            call(app, "shop/funds/scanorderflow", body).await?
        }
        Action::Flow { flow_id } => {
            if flow_id.is_empty()
                || flow_id.len() > 64
                || !flow_id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(ApiError::bad_request(
                    "BAD_FLOW_ID",
                    "flow_id must be 1–64 letters, digits, _ or -",
                ));
            }
            call(
                app,
                "shop/funds/getorderflow",
                json!({ "flow_id": flow_id }),
            )
            .await?
        }
        Action::BankAccount => call(app, "shop/funds/getbankaccount", json!({})).await?,
        Action::SetBankAccount { account } => {
            let number = account
                .get("account_number")
                .and_then(|v| v.as_str())
                .unwrap_or("");
            let name = account
                .get("account_name")
                .and_then(|v| v.as_str())
                .unwrap_or("");
            if number.len() < 8
                || number.len() > 32
                || !number.bytes().all(|b| b.is_ascii_digit())
                || name.trim().is_empty()
            {
                return Err(ApiError::bad_request(
                    "BAD_BANK_ACCOUNT",
                    "account.account_number must be 8–32 digits and account.account_name is required",
                ));
            }
            call(
                app,
                "shop/funds/setbankaccount",
                json!({ "account_info": account }),
            )
            .await?
        }
        Action::Withdraw { amount, remark } => {
            if amount <= 0 {
                return Err(ApiError::bad_request(
                    "BAD_AMOUNT",
                    "amount must be a positive number of fen",
                ));
            }
            let balance = call(app, "shop/funds/getbalance", json!({})).await?;
            let available = balance
                .get("avail_amount")
                .and_then(|v| {
                    v.as_i64()
                        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                })
                .unwrap_or(0);
            if amount > available {
                return Err(ApiError::conflict(
                    "INSUFFICIENT_BALANCE",
                    format!("{amount} fen requested, {available} fen available"),
                ));
            }
            call(
                app,
                "shop/funds/submitwithdraw",
                json!({ "amount": amount, "remark": remark.chars().take(50).collect::<String>() }),
            )
            .await?
        }
        Action::Withdrawals { page, page_size } => {
            call(
                app,
                "shop/funds/scanwithdraw",
                json!({ "page_num": page, "page_size": page_size }),
            )
            .await?
        }
        Action::Withdrawal { withdraw_id } => {
            call(
                app,
                "shop/funds/getwithdrawdetail",
                json!({ "withdraw_id": withdraw_id }),
            )
            .await?
        }
        Action::QrcodeCheck { qrcode_ticket } => {
            call(
                app,
                "shop/funds/qrcode/check",
                json!({ "qrcode_ticket": qrcode_ticket }),
            )
            .await?
        }
    };
    Ok(json(&result))
}
