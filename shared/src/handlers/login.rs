//! `login`: `{code}` from `wx.login` → `sns/jscode2session` → openid → a signed session
//! token. The `session_key` stays on the server (it is not even stored: nothing here needs
//! to decrypt user data).

use crate::app::App;
use crate::domain::OpenId;
use crate::http::{json, parse_json, ApiError, Request, Response};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct LoginRequest {
    #[serde(default)]
    code: String,
}

#[derive(Serialize)]
struct LoginResult {
    token: String,
    /// Epoch seconds.
    expires_at: i64,
    openid: String,
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
    let session = app.wx.code2session(code).await.map_err(|e| {
        if e.is_retryable() {
            ApiError::unavailable(
                "WECHAT_UNAVAILABLE",
                format!("WeChat login is unavailable: {e}"),
            )
        } else {
            ApiError::bad_request(
                "INVALID_CODE",
                format!("WeChat refused the login code ({e}); call wx.login again"),
            )
        }
    })?;
    let openid = OpenId::parse(session.openid.clone())
        .map_err(|e| ApiError::unavailable("WECHAT_BAD_REPLY", e.to_string()))?;
    let now = app.clock.now_secs();
    let ttl = app.config.session_ttl_secs;
    let token = app.sessions.issue(&openid, now, ttl);
    tracing::info!(openid = %openid, "login");
    Ok(json(&LoginResult {
        token,
        expires_at: now + ttl,
        openid: openid.to_string(),
    }))
}
