//! `WxClient`: the one way this crate talks to api.weixin.qq.com.
//!
//! Every trading-component call goes through [`WxClient::post_json`]: it adds the access
//! token as a query parameter, parses the `errcode`/`errmsg` envelope *before* the payload
//! (so an error reply never half-decodes into a success type), and on a token error
//! (40001/40014/42001) refreshes once and retries once. Everything else is returned as a
//! classed [`WxError`]; back-off is the caller's (outbox's) business, because only the
//! caller knows whether the operation may be repeated.
//!
//! The API families live next to their types in sibling modules (`account`, `catalog`,
//! `order`, `aftersale`, `funds`), each adding methods to `WxClient`.

use super::error::{rid_from_errmsg, WxError};
use super::token::{AccessToken, TokenManager};
use crate::config::{Config, TokenMode};
use crate::domain::OpenId;
use crate::store::DynStore;
use crate::time::Clock;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Everything `WxClient` needs to know.
#[derive(Clone)]
pub struct WxClientConfig {
    /// `https://api.weixin.qq.com` (or the sandbox's `/sandbox/api`), no trailing slash needed.
    pub api_base_url: String,
    pub appid: String,
    pub secret: SecretString,
    pub token_mode: TokenMode,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl fmt::Debug for WxClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WxClientConfig")
            .field("api_base_url", &self.api_base_url)
            .field("appid", &self.appid)
            .field("token_mode", &self.token_mode)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Result of `sns/jscode2session`. `session_key` stays on the server.
#[derive(Clone)]
pub struct Code2Session {
    pub openid: OpenId,
    pub unionid: Option<String>,
    pub session_key: SecretString,
}

impl fmt::Debug for Code2Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Code2Session")
            .field("openid", &self.openid)
            .field("unionid", &self.unionid)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    pub(crate) http: reqwest::Client,
    pub(crate) base: String,
    /// `{base}/{path}` parsed once per path ([`WxClient::url`]).
    pub(crate) urls: crate::urls::ParsedUrls,
    pub(crate) appid: String,
    pub(crate) secret: SecretString,
    pub(crate) token: TokenManager,
    pub(crate) clock: Clock,
    /// `WX_HTTP_TIMEOUT_MS`: each call's timeout, less when the invocation's deadline is
    /// nearer ([`call_timeout`]).
    pub(crate) timeout: Duration,
    /// `shop/cat/get` result and when it was fetched (epoch seconds).
    pub(crate) categories:
        tokio::sync::Mutex<Option<(i64, Arc<Vec<super::catalog::ThirdCategory>>)>>,
    /// `shop/delivery/get_company_list` result and when it was fetched (epoch seconds).
    pub(crate) companies:
        tokio::sync::Mutex<Option<(i64, Arc<Vec<super::order::DeliveryCompany>>)>>,
}

/// Client for api.weixin.qq.com. Cheap to clone; clones share the token and caches.
#[derive(Clone)]
pub struct WxClient {
    pub(crate) inner: Arc<Inner>,
    /// `mchid` added (with `biz_type: 1`) to funds requests for 小程序支付管理服务.
    pub(crate) funds_mchid: Option<Arc<str>>,
}

impl fmt::Debug for WxClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WxClient")
            .field("base", &self.inner.base)
            .field("appid", &self.inner.appid)
            .finish_non_exhaustive()
    }
}

/// A payload that sits under `data` in the reply.
#[derive(Deserialize)]
pub(crate) struct Data<T> {
    #[serde(default)]
    pub(crate) data: Option<T>,
}

impl<T: Default> Data<T> {
    pub(crate) fn into_inner(self) -> T {
        self.data.unwrap_or_default()
    }
}

/// An empty request body `{}`.
#[derive(Serialize)]
pub(crate) struct Empty {}

impl WxClient {
    pub fn new(cfg: WxClientConfig, store: DynStore) -> Result<Self, WxError> {
        Self::new_with_clock(cfg, store, Clock::default())
    }

    /// As [`WxClient::new`], with a clock that tests (and the sandbox) can move.
    pub fn new_with_clock(
        cfg: WxClientConfig,
        store: DynStore,
        clock: Clock,
    ) -> Result<Self, WxError> {
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(3)))
            .build()
            .map_err(|e| WxError::Invalid {
                path: String::new(),
                why: format!("HTTP client: {}", e.without_url()),
            })?;
        let base = cfg.api_base_url.trim_end_matches('/').to_owned();
        let token = TokenManager::new(
            http.clone(),
            base.clone(),
            cfg.appid.clone(),
            cfg.secret.clone(),
            cfg.token_mode,
            store,
            clock.clone(),
            cfg.timeout,
        );
        Ok(WxClient {
            inner: Arc::new(Inner {
                http,
                base,
                urls: crate::urls::ParsedUrls::new(),
                appid: cfg.appid,
                secret: cfg.secret,
                token,
                clock,
                timeout: cfg.timeout,
                categories: tokio::sync::Mutex::new(None),
                companies: tokio::sync::Mutex::new(None),
            }),
            funds_mchid: None,
        })
    }

    /// From the process configuration. The appid is the mini program's (`sub_appid` in
    /// service-provider mode), whose AppSecret is `WX_APPSECRET`.
    pub fn from_config(cfg: &Config, store: DynStore) -> Result<Self, WxError> {
        Self::from_config_with_clock(cfg, store, Clock::default())
    }

    /// As [`WxClient::from_config`], sharing the app's clock: `order/add`'s `create_time`
    /// and token expiry then follow the same time as everything else (the sandbox's time
    /// knob moves both).
    pub fn from_config_with_clock(
        cfg: &Config,
        store: DynStore,
        clock: Clock,
    ) -> Result<Self, WxError> {
        Self::new_with_clock(
            WxClientConfig {
                api_base_url: cfg.api_base_url.clone(),
                appid: cfg.user_appid().to_owned(),
                secret: cfg.appsecret.clone(),
                token_mode: cfg.token_mode,
                timeout: Duration::from_millis(cfg.http_timeout_ms),
            },
            store,
            clock,
        )
    }

    /// Funds calls for 小程序支付管理服务 carry `biz_type: 1` and this `mchid`.
    pub fn with_funds_mchid(mut self, mchid: impl Into<String>) -> Self {
        self.funds_mchid = Some(Arc::from(mchid.into()));
        self
    }

    pub fn appid(&self) -> &str {
        &self.inner.appid
    }

    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    /// The shared token manager (scheduled refreshers and diagnostics use it).
    pub fn tokens(&self) -> &TokenManager {
        &self.inner.token
    }

    /// A currently valid access token.
    pub async fn access_token(&self) -> Result<AccessToken, WxError> {
        self.inner.token.access_token().await
    }

    /// POSTs `req` as JSON to `{base}/{path}?access_token=…` and decodes the reply.
    pub async fn post_json<Req, Resp>(&self, path: &str, req: &Req) -> Result<Resp, WxError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let path = path.trim_start_matches('/');
        let body = serde_json::to_vec(req).map_err(|e| WxError::Invalid {
            path: path.to_owned(),
            why: e.to_string(),
        })?;
        let body = bytes::Bytes::from(body);
        let http = &self.inner.http;
        self.with_token(path, |url| {
            http.post(url)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
        })
        .await
    }

    /// Sends a request built by `make` with a valid token; on a token error refreshes once
    /// and retries once.
    pub(crate) async fn with_token<Resp, F>(&self, path: &str, make: F) -> Result<Resp, WxError>
    where
        Resp: DeserializeOwned,
        F: Fn(url::Url) -> reqwest::RequestBuilder,
    {
        let token = self.inner.token.access_token().await?;
        match self.send_once(path, &token, &make).await {
            Err(e) if e.is_token_error() => {
                tracing::info!(
                    path,
                    errcode = e.errcode(),
                    "access token rejected; refreshing and retrying once"
                );
                let fresh = self.inner.token.refresh_after_rejection(&token).await?;
                self.send_once(path, &fresh, &make).await
            }
            other => other,
        }
    }

    async fn send_once<Resp, F>(
        &self,
        path: &str,
        token: &AccessToken,
        make: &F,
    ) -> Result<Resp, WxError>
    where
        Resp: DeserializeOwned,
        F: Fn(url::Url) -> reqwest::RequestBuilder,
    {
        let mut url = self.url(path)?;
        url.query_pairs_mut()
            .append_pair("access_token", token.expose());
        let timeout = call_timeout(path, self.inner.timeout)?;
        let resp = make(url)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| WxError::from_reqwest(path, e))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| WxError::from_reqwest(path, e))?;
        decode_reply(path, status, &bytes)
    }

    pub(crate) fn url(&self, path: &str) -> Result<url::Url, WxError> {
        let text = format!("{}/{}", self.inner.base, path);
        self.inner.urls.parse(&text).map_err(|e| WxError::Invalid {
            path: path.to_owned(),
            why: format!("bad URL: {e}"),
        })
    }

    /// `sns/jscode2session`: the `code` from `wx.login()` → openid (+ unionid, session_key).
    pub async fn code2session(&self, js_code: &str) -> Result<Code2Session, WxError> {
        const PATH: &str = "sns/jscode2session";
        #[derive(Deserialize)]
        struct Reply {
            #[serde(default)]
            openid: String,
            #[serde(default)]
            unionid: Option<String>,
            #[serde(default)]
            session_key: String,
        }
        if js_code.is_empty() || js_code.len() > 256 {
            return Err(WxError::Invalid {
                path: PATH.into(),
                why: "js_code must be 1..=256 characters".into(),
            });
        }
        let url = self.url(PATH)?;
        let timeout = call_timeout(PATH, self.inner.timeout)?;
        let resp = self
            .inner
            .http
            .get(url)
            .timeout(timeout)
            .query(&[
                ("appid", self.inner.appid.as_str()),
                ("secret", self.inner.secret.expose_secret()),
                ("js_code", js_code),
                ("grant_type", "authorization_code"),
            ])
            .send()
            .await
            .map_err(|e| WxError::from_reqwest(PATH, e))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| WxError::from_reqwest(PATH, e))?;
        let reply: Reply = decode_reply(PATH, status, &bytes)?;
        let openid = OpenId::parse(reply.openid).map_err(|e| WxError::Decode {
            path: PATH.into(),
            why: e.to_string(),
        })?;
        if reply.session_key.is_empty() {
            return Err(WxError::Decode {
                path: PATH.into(),
                why: "no session_key".into(),
            });
        }
        Ok(Code2Session {
            openid,
            unionid: reply.unionid.filter(|u| !u.is_empty()),
            session_key: SecretString::from(reply.session_key),
        })
    }
}

/// The timeout of one call to `path`: `configured`, bounded by the invocation's deadline
/// ([`crate::time::call_timeout`]); [`WxError::NotSent`] when too little is left to send it.
pub(crate) fn call_timeout(path: &str, configured: Duration) -> Result<Duration, WxError> {
    match crate::time::call_timeout(configured) {
        crate::time::CallBudget::Send(t) => Ok(t),
        crate::time::CallBudget::NoTime => {
            tracing::warn!(path, "not sent: the invocation's deadline is too near");
            Err(WxError::NotSent {
                path: path.to_owned(),
            })
        }
    }
}

/// Decodes a WeChat reply: envelope first (`errcode != 0` is an error whatever the HTTP
/// status), then the HTTP status, then the payload.
pub(crate) fn decode_reply<T: DeserializeOwned>(
    path: &str,
    status: reqwest::StatusCode,
    body: &[u8],
) -> Result<T, WxError> {
    #[derive(Deserialize)]
    struct Envelope {
        #[serde(default, deserialize_with = "super::serde_num::opt_i64")]
        errcode: Option<i64>,
        #[serde(default)]
        errmsg: Option<String>,
    }
    let envelope = serde_json::from_slice::<Envelope>(body);
    if let Ok(Envelope {
        errcode: Some(errcode),
        errmsg,
    }) = &envelope
    {
        if *errcode != 0 {
            let errmsg = errmsg.clone().unwrap_or_default();
            let rid = rid_from_errmsg(&errmsg);
            tracing::warn!(path, errcode, rid = rid.as_deref(), errmsg = %errmsg, "WeChat API error");
            return Err(WxError::Api {
                errcode: *errcode,
                errmsg,
                rid,
                path: path.to_owned(),
            });
        }
    }
    if !status.is_success() {
        tracing::warn!(path, status = status.as_u16(), "WeChat API HTTP error");
        return Err(WxError::Http {
            status: status.as_u16(),
            path: path.to_owned(),
        });
    }
    if let Err(e) = envelope {
        return Err(WxError::Decode {
            path: path.to_owned(),
            why: format!("not a JSON object: {e}"),
        });
    }
    serde_json::from_slice(body).map_err(|e| WxError::Decode {
        path: path.to_owned(),
        why: e.to_string(),
    })
}
