//! `login`: `{code}` from `wx.login` → `sns/jscode2session` → openid → a signed session
//! token. The `session_key` stays on the server (it is not even stored: nothing here needs
//! to decrypt user data).
//!
//! The answer also says which orders this shop makes (`fund_type`, `trading_component`): the
//! mini program holds them against `wx.checkBeforeAddOrder` before it orders, so an order
//! WeChat would not accept in the user's scene is refused before anything is made.
//!
//! A user the merchant blocked (`super::user_blocks`) is refused, 403 `USER_BLOCKED`, after
//! `jscode2session` names them and before a token is issued: one point read of the store.

use crate::app::App;
use crate::domain::OpenId;
use crate::http::{json, parse_json, ApiError, Request, Response};
use crate::shop::WxError;
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct LoginRequest {
    #[serde(default)]
    code: String,
}

#[derive(Serialize)]
struct LoginResult {
    token: String,
    /// Epoch seconds, by the server's clock.
    expires_at: i64,
    /// Epoch seconds, by the server's clock: when the token was issued (its `iat`). The mini
    /// program keeps its own clock's offset from this, and judges `expires_at` by the server's
    /// clock: a phone clock set hours ahead would otherwise find every token expired.
    issued_at: i64,
    openid: String,
    /// The trading component's `fund_type` of every order made here: 0 ordinary (WeChat Pay
    /// to our merchant account), 1 secondary merchant (`WX_FUND_TYPE`).
    fund_type: u8,
    /// When orders go through the trading component: `off`, `always` or `scene`
    /// (`WX_TRADING_COMPONENT`).
    trading_component: &'static str,
}

pub async fn handle(app: &App, req: Request) -> Result<Response, ApiError> {
    let body: LoginRequest = parse_json(&req)?;
    let code = body.code.trim();
    if code.is_empty() || code.len() > 128 {
        return Err(ApiError::bad_request(
            "BAD_CODE",
            "`code` from wx.login is required (1–128 characters)",
        ));
    }
    let session = app
        .wx
        .code2session(code)
        .await
        .map_err(|e| login_error(&e))?;
    let openid = OpenId::parse(session.openid.clone())
        .map_err(|e| ApiError::unavailable("WECHAT_BAD_REPLY", e.to_string()))?;
    // A user the merchant blocked gets no token (WeChat had to be asked: only its answer
    // says who the code is).
    super::user_blocks::refuse_blocked_at_login(app, &openid).await?;
    let now = app.clock.now_secs();
    let ttl = app.config.session_ttl_secs;
    let token = app.sessions.issue(&openid, now, ttl);
    tracing::info!(openid = %openid, "login");
    Ok(json(&LoginResult {
        token,
        expires_at: now.saturating_add(ttl),
        issued_at: now,
        openid: openid.to_string(),
        fund_type: app.config.fund_type.code(),
        trading_component: app.config.trading_component.as_str(),
    }))
}

/// What the mini program is told when `jscode2session` fails. Only a refusal of the code
/// itself is the caller's to fix; WeChat refusing the shop's own appid, AppSecret or server IP
/// is ours: logged as an error for the operator (a rotated AppSecret stops every login), and
/// answered 503 without WeChat's message, which would tell anyone what is wrong with our setup.
///
/// An answer we cannot read (a proxy's or gateway's HTML page with HTTP 200, a cut-off body, no
/// usable openid) is no refusal of anything: 503 `WECHAT_BAD_REPLY`, retry shortly, as
/// docs/API.md says. It used to be taken for a refusal of the shop's settings — 503
/// `LOGIN_UNAVAILABLE` ("the shop's WeChat settings need attention") and an ERROR telling the
/// operator to check `WX_APPID` / `WX_APPSECRET`, which were fine.
fn login_error(e: &WxError) -> ApiError {
    match e.errcode() {
        // Invalid, already used: a new `wx.login` gives a new code.
        Some(40029 | 40163) => {
            return ApiError::bad_request(
                "INVALID_CODE",
                format!("WeChat refused the login code ({e}); call wx.login again"),
            )
        }
        // Per-user rate limit (100 a minute).
        Some(45011) => {
            return ApiError::new(
                http::StatusCode::TOO_MANY_REQUESTS,
                "LOGIN_RATE_LIMITED",
                "too many logins for this user; wait a minute, then call wx.login again",
            )
        }
        Some(40226) => {
            return ApiError::forbidden("WeChat blocks logins of this user (high-risk account)")
        }
        _ => {}
    }
    if let WxError::Invalid { .. } = e {
        return ApiError::bad_request("INVALID_CODE", format!("{e}; call wx.login again"));
    }
    if let WxError::Decode { .. } = e {
        tracing::warn!(error = %e, "jscode2session answered what we cannot read");
        return ApiError::unavailable(
            "WECHAT_BAD_REPLY",
            "WeChat's login answer could not be read; call wx.login again shortly",
        );
    }
    if e.is_retryable() {
        return ApiError::unavailable(
            "WECHAT_UNAVAILABLE",
            format!("WeChat login is unavailable: {e}"),
        );
    }
    tracing::error!(
        error = %e,
        "WeChat refused the shop's login request: check WX_APPID / WX_APPSECRET (and the \
         server IP allow-list) in the mini program's console"
    );
    ApiError::unavailable(
        "LOGIN_UNAVAILABLE",
        "login is unavailable; the shop's WeChat settings need attention",
    )
}
