//! Mini-program login sessions.
//!
//! After `login` exchanges `wx.login()`'s code for an openid, the mini program gets a
//! compact signed token: `base64url(payload) "." base64url(HMAC-SHA256(key, payload_b64))`,
//! payload `{"sub": openid, "iat": secs, "exp": secs, "jti": random}`. It is stateless so
//! any Lambda container can verify it without a store read, and the user's openid comes
//! only from a verified token, never from a request body.
//!
//! - The HMAC key is derived from `SESSION_SECRET` with a fixed label, so the secret is
//!   never used raw and other uses of it cannot collide with session tokens.
//! - The signature is checked (in constant time) *before* the payload is parsed: nothing an
//!   attacker writes is interpreted unless we signed it.
//! - WeChat's `session_key` is not in the token and never leaves the server.
//! - No appid in the token, on purpose: a deployment serves one mini program, and an openid
//!   is WeChat's name for a user *of one appid* (another mini program's users have other
//!   openids). A token verifies only where `SESSION_SECRET` is the same; even there, one made
//!   for another mini program names nobody of ours — it reads no order of our users, and WeChat
//!   Pay refuses its openid with our appid. An appid in the token would add nothing to that;
//!   what a shared secret does risk is that whoever holds it can mint a token for any openid,
//!   appid or not: each stack gets its own secret (docs/DEPLOY.md).
//! - No server-side logout: the mini program forgets its token (`shop.logout()`), which stays
//!   valid until `exp`. Rotating `SESSION_SECRET` ends every session (docs/DEPLOY.md). To stop
//!   one user the merchant blocks their openid instead (`handlers::user_blocks`): verifying a
//!   token still reads no store, but `login` and `unifiedOrder` each read the block (one point
//!   read) and refuse a blocked user — a token they already hold still reads their orders and
//!   after-sales, on purpose.
//! - The *current* `SESSION_TTL_SECS` also bounds every token: one is refused once `iat` plus
//!   that TTL has passed, even if its own `exp` (set under a longer TTL) is later. Lowering the
//!   TTL (e.g. after an incident) thus shortens sessions already issued; raising it never
//!   lengthens one past its `exp`.
//! - A token issued in the future (`iat` more than [`MAX_CLOCK_SKEW_SECS`] ahead of now) is
//!   refused: we never issue one, so it was minted by whoever holds the secret (or a host with
//!   a wrong clock), and an `iat` ahead would also stretch the TTL bound above past the
//!   token's age. The allowance covers clocks of Lambda hosts differing by a little.

use crate::domain::OpenId;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::fmt;

type HmacSha256 = Hmac<Sha256>;

/// Tokens longer than this are refused before any work.
const MAX_TOKEN_LEN: usize = 1024;
const KEY_LABEL: &[u8] = b"wxshop/session/v1";
/// How far ahead of our clock a token's `iat` may be: hosts' clocks differ by a little.
pub const MAX_CLOCK_SKEW_SECS: i64 = 60;

/// A verified session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub openid: OpenId,
    /// Epoch seconds.
    pub expires_at: i64,
    /// Epoch seconds.
    pub issued_at: i64,
    /// Random token id (for logs and, if ever needed, revocation lists).
    pub id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("session expired")]
    Expired,
    #[error("session token signature is invalid")]
    BadSignature,
    #[error("session token is malformed")]
    Malformed,
    #[error("session token is issued in the future")]
    IssuedInFuture,
}

#[derive(Serialize, Deserialize)]
struct Payload {
    sub: String,
    iat: i64,
    exp: i64,
    jti: String,
}

/// Issues and verifies session tokens with a key derived from `SESSION_SECRET`.
#[derive(Clone)]
pub struct SessionKeys {
    /// HMAC keyed with the derived key; cloned for each use.
    mac: HmacSha256,
}

impl fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionKeys(<redacted>)")
    }
}

impl SessionKeys {
    pub fn new(secret: &SecretString) -> Self {
        // HMAC accepts keys of any length, so `new_from_slice` never fails; the fallbacks
        // only keep this free of panic paths.
        let keyed = |k: &[u8]| {
            HmacSha256::new_from_slice(k).unwrap_or_else(|_| HmacSha256::new(&Default::default()))
        };
        let mut derive = keyed(secret.expose_secret().as_bytes());
        derive.update(KEY_LABEL);
        let key = derive.finalize().into_bytes();
        SessionKeys { mac: keyed(&key) }
    }

    fn mac(&self) -> HmacSha256 {
        self.mac.clone()
    }

    /// A token for `openid`, valid from `now_secs` for `ttl_secs`.
    pub fn issue(&self, openid: &OpenId, now_secs: i64, ttl_secs: i64) -> String {
        let payload = Payload {
            sub: openid.as_str().to_owned(),
            iat: now_secs,
            exp: now_secs.saturating_add(ttl_secs),
            jti: crate::domain::random_alnum(16),
        };
        // Serialising a struct of strings and integers cannot fail.
        let json = serde_json::to_vec(&payload).unwrap_or_default();
        let body = B64.encode(json);
        let mut mac = self.mac();
        mac.update(body.as_bytes());
        let sig = B64.encode(mac.finalize().into_bytes());
        format!("{body}.{sig}")
    }

    /// Checks signature, then shape, then time: `iat` not ahead of now by more than
    /// [`MAX_CLOCK_SKEW_SECS`], then expiry: the token's own `exp`, and `iat` plus `ttl_secs`
    /// (the TTL configured now, which may be shorter than when it was issued).
    pub fn verify(
        &self,
        token: &str,
        now_secs: i64,
        ttl_secs: i64,
    ) -> Result<Session, SessionError> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(SessionError::Malformed);
        }
        let (body, sig) = token.split_once('.').ok_or(SessionError::Malformed)?;
        if body.is_empty() || sig.contains('.') {
            return Err(SessionError::Malformed);
        }
        let sig = B64.decode(sig).map_err(|_| SessionError::Malformed)?;
        let mut mac = self.mac();
        mac.update(body.as_bytes());
        mac.verify_slice(&sig)
            .map_err(|_| SessionError::BadSignature)?;
        let json = B64.decode(body).map_err(|_| SessionError::Malformed)?;
        let p: Payload = serde_json::from_slice(&json).map_err(|_| SessionError::Malformed)?;
        let openid = OpenId::parse(p.sub).map_err(|_| SessionError::Malformed)?;
        if p.exp <= p.iat {
            return Err(SessionError::Malformed);
        }
        if p.iat > now_secs.saturating_add(MAX_CLOCK_SKEW_SECS) {
            return Err(SessionError::IssuedInFuture);
        }
        let expires_at = p.exp.min(p.iat.saturating_add(ttl_secs));
        if now_secs >= expires_at {
            return Err(SessionError::Expired);
        }
        Ok(Session {
            openid,
            expires_at,
            issued_at: p.iat,
            id: p.jti,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(s: &str) -> SessionKeys {
        SessionKeys::new(&SecretString::from(s.to_owned()))
    }

    #[test]
    fn round_trip_and_expiry() {
        let k = keys("0123456789abcdef0123456789abcdef");
        let oid = OpenId::parse("oUpF8uMEb4qRXf22hE3X68TekukE").unwrap();
        let t = k.issue(&oid, 1000, 60);
        let s = k.verify(&t, 1059, 60).unwrap();
        assert_eq!(s.openid, oid);
        assert_eq!(s.expires_at, 1060);
        assert_eq!(k.verify(&t, 1060, 60), Err(SessionError::Expired));
        // A longer TTL now does not lengthen it; a shorter one shortens it.
        assert_eq!(k.verify(&t, 1060, 3600), Err(SessionError::Expired));
        assert_eq!(k.verify(&t, 1029, 30).map(|s| s.expires_at), Ok(1030));
        assert_eq!(k.verify(&t, 1030, 30), Err(SessionError::Expired));
    }

    #[test]
    fn issued_in_the_future_is_refused_beyond_the_skew() {
        let k = keys("0123456789abcdef0123456789abcdef");
        let oid = OpenId::parse("oUpF8uMEb4qRXf22hE3X68TekukE").unwrap();
        let t = k.issue(&oid, 1000 + MAX_CLOCK_SKEW_SECS, 3600);
        assert!(k.verify(&t, 1000, 3600).is_ok(), "within the skew");
        let t = k.issue(&oid, 1001 + MAX_CLOCK_SKEW_SECS, 3600);
        assert_eq!(k.verify(&t, 1000, 3600), Err(SessionError::IssuedInFuture));
    }
}
