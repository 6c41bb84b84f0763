//! The HTTP shapes every function shares: requests as `http::Request<Bytes>`, JSON results,
//! and one error shape, `{"code": "SCREAMING_SNAKE", "message": "…"}`, so the mini program
//! (and `miniprogram/wxshop.js`) handles every failure the same way. A few refusals add a field
//! a program needs to act on them (e.g. `out_trade_no` on `unifiedOrder`'s 422
//! `IDEMPOTENCY_KEY_REUSED`: the order the key holds); see [`ApiError::with`].

use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use serde::Serialize;

pub type Request = http::Request<Bytes>;
pub type Response = http::Response<Bytes>;

/// A failure a caller can act on. `message` is for people; `code` is for programs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Fields sent next to `code` and `message` (see [`ApiError::with`]); usually none.
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: serde_json::Map::new(),
        }
    }
    /// The same refusal with one more field in its body, for a program to act on (`code` and
    /// `message` cannot be overwritten: such a name is ignored).
    #[must_use]
    pub fn with(mut self, name: &'static str, value: impl Into<serde_json::Value>) -> Self {
        if name != "code" && name != "message" {
            self.extra.insert(name.to_owned(), value.into());
        }
        self
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "FORBIDDEN", message)
    }
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }
    /// Something on our side or WeChat's failed; retrying later may work.
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", message)
    }

    pub fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct Body<'a> {
            code: &'a str,
            message: &'a str,
            #[serde(flatten)]
            extra: &'a serde_json::Map<String, serde_json::Value>,
        }
        let body = serde_json::to_vec(&Body {
            code: self.code,
            message: &self.message,
            extra: &self.extra,
        })
        .unwrap_or_default();
        with_type(self.status, body.into(), "application/json")
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        if e == crate::store::StoreError::BadCursor {
            // The caller's own input (a `cursor` it altered or made up), not our storage.
            return ApiError::bad_request(
                "BAD_CURSOR",
                "`cursor` is not one this API gave out; start again without it",
            );
        }
        tracing::error!(error = %e, "store error");
        ApiError::unavailable("STORE_UNAVAILABLE", "storage is unavailable; retry shortly")
    }
}

pub fn with_type(status: StatusCode, body: Bytes, content_type: &'static str) -> Response {
    let mut resp = http::Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// 200 with a JSON body.
pub fn json<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => with_type(StatusCode::OK, body.into(), "application/json"),
        Err(e) => ApiError::internal(format!("could not encode the result: {e}")).into_response(),
    }
}

pub fn text(status: StatusCode, body: impl Into<Bytes>, content_type: &'static str) -> Response {
    with_type(status, body.into(), content_type)
}

/// Parses a JSON body into `T`, with an error that says what was wrong.
pub fn parse_json<T: serde::de::DeserializeOwned>(req: &Request) -> Result<T, ApiError> {
    let body: &[u8] = if req.body().is_empty() {
        b"{}"
    } else {
        req.body()
    };
    if body.len() > 64 * 1024 {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "BODY_TOO_LARGE",
            "request body is over 64 KiB",
        ));
    }
    serde_json::from_slice(body).map_err(|e| body_refused(req, &e))
}

/// 400 `BAD_REQUEST` for a body `parse_json` could not read: serde's own detail (the field,
/// the variant or the type it met, and where), then what to do about it in our words, and
/// where the route's body is described.
fn body_refused(req: &Request, e: &serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    let detail = e.to_string();
    // serde's wording, the position it appends aside.
    let what = detail.split(" at line ").next().unwrap_or(&detail);
    let todo = match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            "the body is not JSON: send one JSON object"
        }
        Category::Data if what.starts_with("missing field") => "give it",
        Category::Data if what.starts_with("unknown variant") => "use one of those",
        Category::Data if what.starts_with("unknown field") => {
            "leave it out, or spell it as one of those"
        }
        Category::Data if what.starts_with("invalid") => {
            "give each field the type the route's table shows"
        }
        Category::Data => "fix the body as the route's table shows",
    };
    ApiError::bad_request(
        "BAD_REQUEST",
        format!(
            "the body must be a JSON object of the route's fields; {detail}: {todo} (see \
             docs/API.md, {} {})",
            req.method(),
            req.uri().path()
        ),
    )
}

/// The bearer token of `Authorization`, if any.
pub fn bearer(req: &Request) -> Option<&str> {
    bearer_token(req.headers().get(header::AUTHORIZATION)?.to_str().ok()?)
}

/// The token of an `Authorization` value using the Bearer scheme. Auth schemes are
/// case-insensitive (RFC 9110 §11.1), so `bearer x` and `BEARER x` count; whitespace
/// around the scheme and token is tolerated. Any other scheme, or no token, is `None`.
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once([' ', '\t'])?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Query-string parameters (`?a=1&b=2`), percent-decoded.
pub fn query_params(req: &Request) -> std::collections::HashMap<String, String> {
    req.uri()
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default()
}

/// The address of the connection that reached us, as the entry point saw it: API Gateway's
/// `requestContext` `sourceIp` in Lambda, the TCP peer in `wxlocal`. The entry point puts it
/// in the request's extensions; nothing the caller sends can set it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerIp(pub std::net::IpAddr);

/// Who called an admin route, as the entry point authorised it: the IAM user or role (its ARN)
/// in Lambda, the holder of `ADMIN_TOKEN` in `wxlocal`. Nothing the caller sends can set it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminCaller(pub String);

/// [`AdminCaller`] of `req`, or `"unknown"` where the entry point put none.
pub fn admin_caller(req: &Request) -> String {
    req.extensions()
        .get::<AdminCaller>()
        .map_or_else(|| "unknown".to_owned(), |c| c.0.clone())
}

/// The caller's IP for `spbill_create_ip`: [`PeerIp`], else loopback.
///
/// Not `X-Forwarded-For`: its first hop is whatever the caller wrote there (API Gateway
/// appends the real address after it), so it would let a buyer choose the IP WeChat Pay's
/// risk control sees. Behind a proxy (e.g. CloudFront) this is the proxy's address, which
/// WeChat accepts.
pub fn client_ip(req: &Request) -> String {
    req.extensions()
        .get::<PeerIp>()
        .map_or_else(|| "127.0.0.1".to_owned(), |p| p.0.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // test code: a panic is a failed test
mod tests {
    use super::*;

    /// A refusal's extra field is sent next to `code` and `message`, which it cannot replace.
    #[test]
    fn an_extra_field_goes_into_the_error_body() {
        let e = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "KEY_REUSED", "used")
            .with("out_trade_no", "T1")
            .with("code", "FORGED");
        let resp = e.into_response();
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let body: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"code": "KEY_REUSED", "message": "used", "out_trade_no": "T1"})
        );
        let plain = ApiError::conflict("X", "y").into_response();
        let body: serde_json::Value = serde_json::from_slice(plain.body()).unwrap();
        assert_eq!(body, serde_json::json!({"code": "X", "message": "y"}));
    }
}
