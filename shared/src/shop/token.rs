//! The access token for api.weixin.qq.com, shared by every Lambda container.
//!
//! Why it is built this way:
//! - Many containers run at once, and `cgi-bin/token` invalidates the previous token on each
//!   call, so tokens are kept in the store's TTL key-value space ([`crate::store::kv`], key
//!   `access_token:{appid}`, value the token, TTL its expiry) and written with
//!   compare-and-set: the first container to refresh publishes, the others adopt.
//! - Inside one container a tokio mutex makes sure only one refresh is in flight; callers
//!   queue behind it and then find the fresh token in memory (no stampede on WeChat).
//! - Tokens are refreshed [`REFRESH_MARGIN_SECS`] before they expire, so a call never starts
//!   with a token about to die; if WeChat is unreachable, a token that is not yet expired is
//!   still used.
//! - When an API answers 40001/40014/42001, [`TokenManager::refresh_after_rejection`] drops
//!   the token only if it is still the one that failed (another caller may already have
//!   replaced it), fetches again, and with `stable_token` escalates to `force_refresh` only
//!   if WeChat hands back the very token it just rejected.
//!
//! The token itself is a [`SecretString`]; it never appears in logs, errors or `Debug`.

use super::client::decode_reply;
use super::error::WxError;
use crate::config::TokenMode;
use crate::store::{kv, DynStore, Kind, StoreError};
use crate::time::Clock;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::fmt;
use std::sync::Mutex as StdMutex;

/// Refresh this long before `expires_at` (WeChat tokens live 7200 s).
pub const REFRESH_MARGIN_SECS: i64 = 300;

const STABLE_PATH: &str = "cgi-bin/stable_token";
const CLASSIC_PATH: &str = "cgi-bin/token";

/// An access token and when it expires (epoch seconds).
#[derive(Clone)]
pub struct AccessToken {
    value: SecretString,
    expires_at: i64,
    /// Seconds the token was issued for (`expires_in`), to size the refresh margin.
    lifetime: i64,
}

impl AccessToken {
    pub fn new(value: impl Into<String>, expires_at: i64) -> Self {
        AccessToken {
            value: SecretString::from(value.into()),
            expires_at,
            lifetime: 7200,
        }
    }

    fn with_lifetime(mut self, lifetime: i64) -> Self {
        if lifetime > 0 {
            self.lifetime = lifetime;
        }
        self
    }

    /// The token text, for the `access_token` query parameter only.
    pub fn expose(&self) -> &str {
        self.value.expose_secret()
    }

    pub fn expires_at(&self) -> i64 {
        self.expires_at
    }

    /// Usable now and not within the refresh margin.
    fn is_fresh(&self, now: i64) -> bool {
        now + self.margin() < self.expires_at
    }

    /// Not expired yet (may be inside the refresh margin).
    fn is_alive(&self, now: i64) -> bool {
        now < self.expires_at
    }

    /// 5 minutes, or half the lifetime of an unusually short-lived token.
    fn margin(&self) -> i64 {
        REFRESH_MARGIN_SECS.min(self.lifetime / 2)
    }

    fn same(&self, other: &str) -> bool {
        self.expose() == other
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccessToken(<redacted>, expires_at={})", self.expires_at)
    }
}

/// Obtains, caches and shares the access token for one appid.
pub struct TokenManager {
    http: reqwest::Client,
    base: String,
    appid: String,
    secret: SecretString,
    mode: TokenMode,
    store: DynStore,
    clock: Clock,
    /// `WX_HTTP_TIMEOUT_MS`, bounded per call by the invocation's deadline.
    timeout: std::time::Duration,
    cached: StdMutex<Option<AccessToken>>,
    refresh: tokio::sync::Mutex<()>,
}

impl fmt::Debug for TokenManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenManager")
            .field("appid", &self.appid)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl TokenManager {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        http: reqwest::Client,
        base: impl Into<String>,
        appid: impl Into<String>,
        secret: SecretString,
        mode: TokenMode,
        store: DynStore,
        clock: Clock,
        timeout: std::time::Duration,
    ) -> Self {
        TokenManager {
            http,
            base: base.into().trim_end_matches('/').to_owned(),
            appid: appid.into(),
            secret,
            mode,
            store,
            clock,
            timeout,
            cached: StdMutex::new(None),
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    /// The store key shared by every container of this appid.
    pub fn store_key(&self) -> String {
        format!("access_token:{}", self.appid)
    }

    /// A token that is valid for at least the refresh margin.
    pub async fn access_token(&self) -> Result<AccessToken, WxError> {
        if let Some(t) = self.cached_fresh() {
            return Ok(t);
        }
        let _one_refresh = self.refresh.lock().await;
        // Whoever held the lock before us may have refreshed already.
        if let Some(t) = self.cached_fresh() {
            return Ok(t);
        }
        self.obtain(None).await
    }

    /// `failed` was rejected by WeChat (40001/40014/42001): get a different one. If another
    /// caller already replaced it, that replacement is returned without asking WeChat.
    pub async fn refresh_after_rejection(
        &self,
        failed: &AccessToken,
    ) -> Result<AccessToken, WxError> {
        let _one_refresh = self.refresh.lock().await;
        if let Some(t) = self.cached_fresh() {
            if !t.same(failed.expose()) {
                return Ok(t);
            }
        }
        self.forget_if(failed);
        self.obtain(Some(failed.expose())).await
    }

    fn cached_fresh(&self) -> Option<AccessToken> {
        let now = self.clock.now_secs();
        let guard = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().filter(|t| t.is_fresh(now)).cloned()
    }

    fn remember(&self, t: &AccessToken) {
        let mut guard = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        *guard = Some(t.clone());
    }

    fn forget_if(&self, failed: &AccessToken) {
        let mut guard = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if guard.as_ref().is_some_and(|t| t.same(failed.expose())) {
            *guard = None;
        }
    }

    /// Store first, then WeChat. Called with the refresh lock held.
    async fn obtain(&self, rejected: Option<&str>) -> Result<AccessToken, WxError> {
        let now = self.clock.now_secs();
        let usable = |t: &AccessToken| rejected.is_none_or(|r| !t.same(r));
        let (version, stored) = self.load().await;
        if let Some(t) = stored.as_ref().filter(|t| t.is_fresh(now) && usable(t)) {
            self.remember(t);
            return Ok(t.clone());
        }
        let fetched = match self.fetch(false).await {
            Ok(t) => t,
            Err(e) => {
                // WeChat is unreachable or refuses: a token that has not expired still works.
                if let Some(t) = stored.filter(|t| t.is_alive(now) && usable(t)) {
                    tracing::warn!(error = %e, "access token refresh failed; using the unexpired one");
                    self.remember(&t);
                    return Ok(t);
                }
                return Err(e);
            }
        };
        let fetched = match rejected {
            // stable_token in normal mode hands back the current token; if that is the one
            // WeChat just rejected, only force mode gets a new one.
            Some(r) if fetched.same(r) && self.mode == TokenMode::Stable => {
                tracing::info!("stable_token returned the rejected token; forcing a refresh");
                self.fetch(true).await?
            }
            _ => fetched,
        };
        let token = self.publish(fetched, version, rejected).await;
        self.remember(&token);
        Ok(token)
    }

    /// The entry version (if any) and the stored token (if readable).
    async fn load(&self) -> (Option<u64>, Option<AccessToken>) {
        match kv::get(self.store.as_ref(), &self.store_key()).await {
            Ok(Some(e)) => {
                let token = (!e.value.is_empty()).then(|| AccessToken::new(e.value, e.expires_at));
                (Some(e.version), token)
            }
            Ok(None) => (None, None),
            Err(StoreError::Corrupt { .. }) => {
                // Unreadable entry: overwrite it with a fresh token.
                match self.store.get(Kind::Kv, &self.store_key()).await {
                    Ok(Some(rec)) => (Some(rec.version), None),
                    _ => (None, None),
                }
            }
            Err(e) => {
                // The store is a cache here; WeChat remains the source of truth.
                tracing::warn!(error = %e, "token store unreadable; fetching from WeChat");
                (None, None)
            }
        }
    }

    /// Compare-and-set `fetched` into the store. If another container won the race with a
    /// good token, use theirs (stable tokens are the same anyway); with classic tokens the
    /// newest fetch is the valid one, so ours overwrites.
    async fn publish(
        &self,
        fetched: AccessToken,
        mut version: Option<u64>,
        rejected: Option<&str>,
    ) -> AccessToken {
        let key = self.store_key();
        for _ in 0..3 {
            match kv::put_if(
                self.store.as_ref(),
                &key,
                fetched.expose(),
                fetched.expires_at,
                version,
            )
            .await
            {
                Ok(true) => return fetched,
                Ok(false) => {
                    let (v, theirs) = self.load().await;
                    let now = self.clock.now_secs();
                    if let Some(t) = theirs {
                        let good = t.is_fresh(now) && rejected.is_none_or(|r| !t.same(r));
                        if t.same(fetched.expose()) || (good && self.mode == TokenMode::Stable) {
                            return t;
                        }
                    }
                    version = v;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not share the access token through the store");
                    return fetched;
                }
            }
        }
        fetched
    }

    /// Asks WeChat for a token.
    async fn fetch(&self, force_refresh: bool) -> Result<AccessToken, WxError> {
        #[derive(Deserialize)]
        struct Reply {
            access_token: String,
            #[serde(deserialize_with = "super::serde_num::i64_or_string")]
            expires_in: i64,
        }
        let (path, req) = match self.mode {
            TokenMode::Stable => {
                let body = serde_json::json!({
                    "grant_type": "client_credential",
                    "appid": self.appid,
                    "secret": self.secret.expose_secret(),
                    "force_refresh": force_refresh,
                });
                (
                    STABLE_PATH,
                    self.http
                        .post(format!("{}/{STABLE_PATH}", self.base))
                        .json(&body),
                )
            }
            TokenMode::Classic => (
                CLASSIC_PATH,
                self.http
                    .get(format!("{}/{CLASSIC_PATH}", self.base))
                    .query(&[
                        ("grant_type", "client_credential"),
                        ("appid", self.appid.as_str()),
                        ("secret", self.secret.expose_secret()),
                    ]),
            ),
        };
        let timeout = super::client::call_timeout(path, self.timeout)?;
        let started = self.clock.now_secs();
        let resp = req
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| WxError::from_reqwest(path, e))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| WxError::from_reqwest(path, e))?;
        let reply: Reply = decode_reply(path, status, &bytes)?;
        if reply.access_token.is_empty() || reply.expires_in <= 0 {
            return Err(WxError::Decode {
                path: path.into(),
                why: "empty access_token or expires_in".into(),
            });
        }
        tracing::info!(
            path,
            expires_in = reply.expires_in,
            force_refresh,
            "access token obtained"
        );
        Ok(
            AccessToken::new(reply.access_token, started + reply.expires_in)
                .with_lifetime(reply.expires_in),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_uses_the_margin() {
        let t = AccessToken::new("SECRETTOKEN", 10_000);
        assert!(t.is_fresh(10_000 - 301));
        assert!(!t.is_fresh(10_000 - 299));
        assert!(t.is_alive(10_000 - 1));
        assert!(!t.is_alive(10_000));
        // A 60-second token is refreshed after 30 s, not immediately.
        let short = AccessToken::new("y", 1060).with_lifetime(60);
        assert!(short.is_fresh(1000));
        assert!(!short.is_fresh(1031));
        assert!(!format!("{t:?}").contains("SECRETTOKEN"));
    }
}
