//! `api.weixin.qq.com` credentials: `cgi-bin/token`, `cgi-bin/stable_token`, the
//! `access_token` check in front of every `shop/*` call, and `sns/jscode2session`.
//!
//! Why faithful here: token handling is where serverless shops break first (each classic
//! `token` call invalidates the previous one; expired tokens must be refreshed once and the
//! call retried). The sandbox keeps tokens for 7200 s on its clock, answers 40001/42001 as
//! WeChat does, and `/_control/tokens/expire` expires them all at once. Login codes are
//! single-use when minted and last 5 minutes (after that 40029, as WeChat's); any other
//! well-formed code logs in as a stable user derived from the code, so command-line tools
//! need not mint first.
//!
//! Expired tokens and codes are forgotten (pruned when a new one is issued, at most once a
//! minute of the sandbox's clock): every login and token call used to add an entry for ever,
//! so a long-running stack or a benchmark grew its memory and its state file without bound.
//! A forgotten one must still be refused as WeChat refuses an expired one (42001, 40029), not
//! as one never issued (40001) or, for a code, taken for an unminted tool code: so each token
//! and minted code ends in a tag made with the sandbox's own key ([`PlatformState::key`]),
//! and one that carries a good tag but is no longer remembered was issued here and expired.
//!
//! An openid is a user *under one appid*: the same user has another openid under another
//! app. So the openid `jscode2session` issues depends on the appid asking (the mini program:
//! `appid`, or `sub_appid` in provider mode), and the sandbox remembers which appid it issued
//! each one to — the merchant API refuses an openid sent with another app's id, as WeChat
//! Pay does (`mch.rs`).

use super::kept::Kept;
use super::{md5_hex, random_alnum, Sandbox, WxErr, WxResult};
use base64::Engine;
use serde_json::{json, Value};
use std::collections::HashMap;

pub const TOKEN_TTL_MS: i64 = 7_200_000;
/// How long a login code lasts (WeChat: 5 minutes, single use; an expired one is 40029).
pub const CODE_TTL_MS: i64 = 300_000;
/// Expired tokens and codes are pruned at most this often (sandbox clock), so an issue does
/// not scan every entry each time; nothing expired outlives its expiry by more than this.
const PRUNE_EVERY_MS: i64 = 60_000;
/// How long the previous classic token keeps working after a refresh.
const OVERLAP_MS: i64 = 300_000;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Token {
    expires_ms: i64,
    /// Made invalid (not expired) by a newer token: 40001 rather than 42001.
    revoked: bool,
}

/// A minted login code: whose, whether used, and when minted (sandbox clock).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(from = "CodeRepr")]
pub(crate) struct Code {
    user: String,
    used: bool,
    minted_ms: i64,
}

/// A code as written: `[user, used]` by a wxlocal that did not expire codes (read as minted
/// long ago: expired, and pruned at the next mint), or the struct.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum CodeRepr {
    Now {
        user: String,
        used: bool,
        minted_ms: i64,
    },
    Old(String, bool),
}

impl From<CodeRepr> for Code {
    fn from(r: CodeRepr) -> Code {
        match r {
            CodeRepr::Now {
                user,
                used,
                minted_ms,
            } => Code {
                user,
                used,
                minted_ms,
            },
            CodeRepr::Old(user, used) => Code {
                user,
                used,
                minted_ms: 0,
            },
        }
    }
}

#[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct PlatformState {
    pub(crate) tokens: Kept<String, Token>,
    pub(crate) classic: Option<String>,
    pub(crate) stable: Option<String>,
    /// Minted login codes, until they expire.
    pub(crate) codes: Kept<String, Code>,
    /// Every openid `jscode2session` issued → the appid it was issued under.
    pub(crate) issued: Kept<String, String>,
    /// Tags the tokens, codes and `prepay_id`s ([`super::mch`]) issued here, so a forgotten
    /// (expired) one is told from one never issued. Kept with the state: after a restart its
    /// tokens still read as its own. A file without one (an older wxlocal's) gets a new key;
    /// its tokens are all remembered.
    #[serde(default = "new_key")]
    pub(crate) key: Key,
    /// When expired tokens and codes are pruned next (not kept: at start, the first issue).
    #[serde(skip)]
    pub(crate) next_prune_ms: i64,
}

/// See [`PlatformState::key`]; a fresh state (or `/_control/reset`) has a new one, so what
/// was issued before a reset reads as never issued (40001), as before.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub(crate) struct Key(String);

impl Default for Key {
    fn default() -> Key {
        new_key()
    }
}

fn new_key() -> Key {
    Key(random_alnum(32))
}

impl Key {
    /// The tag of `body`: `len` hex digits of MD5 over the key and the body.
    fn tag(&self, body: &str, len: usize) -> String {
        let mut t = md5_hex(format!("{}:{body}", self.0).as_bytes());
        t.truncate(len);
        t
    }

    /// `body` followed by its tag.
    pub(crate) fn sign(&self, body: String, len: usize) -> String {
        let tag = self.tag(&body, len);
        body + &tag
    }

    /// Whether `s` is a body of `total` chars (tag included) with a good tag.
    pub(crate) fn signed(&self, s: &str, total: usize, len: usize) -> bool {
        s.len() == total
            && s.is_char_boundary(total - len)
            && self.tag(&s[..total - len], len) == s[total - len..]
    }
}

/// Token: `90_` + 114 random + a 16-digit tag (133 chars, like WeChat's ~150 of base64-ish).
const TOKEN_LEN: usize = 133;
const TOKEN_TAG: usize = 16;
/// Minted code: `0` + 21 random + a 10-digit tag (32 chars, like WeChat's).
const CODE_LEN: usize = 32;
const CODE_TAG: usize = 10;

impl PlatformState {
    /// Forgets expired tokens and codes, at most once per [`PRUNE_EVERY_MS`]. What is
    /// forgotten is still refused as expired ([`PlatformState::key`]).
    fn prune(&mut self, now: i64) {
        if now < self.next_prune_ms {
            return;
        }
        self.next_prune_ms = now + PRUNE_EVERY_MS;
        if self.tokens.values().any(|t| t.expires_ms <= now) {
            self.tokens.retain(|_, t| t.expires_ms > now);
        }
        if self
            .codes
            .values()
            .any(|c| c.minted_ms + CODE_TTL_MS <= now)
        {
            self.codes.retain(|_, c| c.minted_ms + CODE_TTL_MS > now);
        }
    }
}

impl PlatformState {
    /// The appid the sandbox issued `openid` under; `None` for one it never issued (made up
    /// by a test or tool, or issued before a reset), which it cannot place.
    pub fn issued_under(&self, openid: &str) -> Option<&str> {
        self.issued.get(openid).map(String::as_str)
    }
}

/// A stable, openid-shaped id (28 chars, starting with `o`) for `seed`.
pub fn openid_for(seed: &str) -> String {
    let a = md5_hex(format!("openid:{seed}").as_bytes());
    let b = md5_hex(format!("openid2:{seed}").as_bytes());
    let raw = hex::decode(format!("{a}{b}")).unwrap_or_default();
    let s = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    format!("o{}", &s[..27.min(s.len())])
}

/// The openid of sandbox user `user` under `appid`.
fn openid_under(appid: &str, user: &str) -> String {
    openid_for(&format!("{appid}:user:{user}"))
}

/// The openid of sandbox user `user` in the mini program (`sub_appid` in provider mode, else
/// `appid`): what a `/_control/login` code resolves to there.
pub fn user_openid(sb: &Sandbox, user: &str) -> String {
    let cfg = sb.cfg();
    openid_under(cfg.sub_appid.as_deref().unwrap_or(&cfg.appid), user)
}

fn check_app(sb: &Sandbox, appid: Option<&String>, secret: Option<&String>) -> Result<(), WxErr> {
    let cfg = sb.cfg();
    let appid = appid.map(String::as_str).unwrap_or_default();
    let secret = secret.map(String::as_str).unwrap_or_default();
    if appid.is_empty() {
        return Err(WxErr::new(41002, "appid missing"));
    }
    if appid != cfg.appid && Some(appid) != cfg.sub_appid.as_deref() {
        return Err(WxErr::new(40013, "invalid appid"));
    }
    if secret.is_empty() {
        return Err(WxErr::new(41004, "appsecret missing"));
    }
    if secret != cfg.appsecret {
        return Err(WxErr::new(40125, "invalid appsecret"));
    }
    Ok(())
}

fn new_token(key: &Key) -> String {
    key.sign(
        format!("90_{}", random_alnum(TOKEN_LEN - TOKEN_TAG - 3)),
        TOKEN_TAG,
    )
}

fn revoke_soon(st: &mut PlatformState, old: Option<String>, now: i64) {
    if let Some(t) = old.and_then(|o| st.tokens.get_mut(&o)) {
        t.expires_ms = t.expires_ms.min(now + OVERLAP_MS);
    }
}

/// `GET cgi-bin/token`: a new token every call; the previous one lasts 5 more minutes.
pub fn token(sb: &Sandbox, q: &HashMap<String, String>) -> WxResult {
    if q.get("grant_type").map(String::as_str) != Some("client_credential") {
        return Err(WxErr::new(40002, "invalid grant_type"));
    }
    check_app(sb, q.get("appid"), q.get("secret"))?;
    let now = sb.now_ms();
    let mut st = sb.st();
    let p = &mut st.platform;
    p.prune(now);
    let t = new_token(&p.key);
    let old = p.classic.replace(t.clone());
    revoke_soon(p, old, now);
    p.tokens.insert(
        t.clone(),
        Token {
            expires_ms: now + TOKEN_TTL_MS,
            revoked: false,
        },
    );
    Ok(json!({"access_token": t, "expires_in": 7200}))
}

/// `POST cgi-bin/stable_token`: the same token while valid; `force_refresh` makes a new one.
pub fn stable_token(sb: &Sandbox, v: &Value) -> WxResult {
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    if s("grant_type").as_deref() != Some("client_credential") {
        return Err(WxErr::new(40002, "invalid grant_type"));
    }
    check_app(sb, s("appid").as_ref(), s("secret").as_ref())?;
    let force = v
        .get("force_refresh")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let now = sb.now_ms();
    let mut st = sb.st();
    let p = &mut st.platform;
    if !force {
        if let Some(cur) = &p.stable {
            if let Some(t) = p.tokens.get(cur) {
                if !t.revoked && t.expires_ms > now {
                    return Ok(
                        json!({"access_token": cur, "expires_in": (t.expires_ms - now) / 1000}),
                    );
                }
            }
        }
    }
    p.prune(now);
    let t = new_token(&p.key);
    let old = p.stable.replace(t.clone());
    revoke_soon(p, old, now);
    p.tokens.insert(
        t.clone(),
        Token {
            expires_ms: now + TOKEN_TTL_MS,
            revoked: false,
        },
    );
    Ok(json!({"access_token": t, "expires_in": 7200}))
}

/// The `access_token` query parameter of a platform call.
pub fn check_access_token(sb: &Sandbox, token: Option<&String>) -> Result<(), WxErr> {
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Err(WxErr::new(41001, "access_token missing"));
    };
    let now = sb.now_ms();
    let st = sb.st();
    let p = &st.platform;
    match p.tokens.get(token) {
        // Issued here and forgotten: only expired ones are.
        None if p.key.signed(token, TOKEN_LEN, TOKEN_TAG) => {
            Err(WxErr::new(42001, "access_token expired"))
        }
        None => Err(WxErr::new(
            40001,
            "invalid credential, access_token is invalid or not latest",
        )),
        Some(t) if t.revoked => Err(WxErr::new(
            40001,
            "invalid credential, access_token is invalid or not latest",
        )),
        Some(t) if t.expires_ms <= now => Err(WxErr::new(42001, "access_token expired")),
        Some(_) => Ok(()),
    }
}

/// Expires every token (they answer 42001 from now on). Returns how many.
pub fn expire_all(sb: &Sandbox) -> usize {
    let now = sb.now_ms();
    let mut st = sb.st();
    let mut n = 0;
    for t in st.platform.tokens.values_mut() {
        if t.expires_ms > now {
            t.expires_ms = now;
            n += 1;
        }
    }
    n
}

/// `POST /_control/login {"user"}`: a single-use code for that user.
pub fn mint_code(sb: &Sandbox, user: &str) -> Value {
    let openid = user_openid(sb, user);
    let now = sb.now_ms();
    let mut st = sb.st();
    let p = &mut st.platform;
    p.prune(now);
    let code = p.key.sign(
        format!("0{}", random_alnum(CODE_LEN - CODE_TAG - 1)),
        CODE_TAG,
    );
    p.codes.insert(
        code.clone(),
        Code {
            user: user.to_owned(),
            used: false,
            minted_ms: now,
        },
    );
    json!({"code": code, "openid": openid, "user": user})
}

fn well_formed(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= 128
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `GET sns/jscode2session`.
pub fn jscode2session(sb: &Sandbox, q: &HashMap<String, String>) -> WxResult {
    check_app(sb, q.get("appid"), q.get("secret"))?;
    if q.get("grant_type").map(String::as_str) != Some("authorization_code") {
        return Err(WxErr::new(40002, "invalid grant_type"));
    }
    let code = q.get("js_code").map(String::as_str).unwrap_or_default();
    if !well_formed(code) {
        return Err(WxErr::new(40029, "invalid code"));
    }
    // check_app let only our appid or sub_appid through: the openid is the user's under it.
    let appid = q.get("appid").map(String::as_str).unwrap_or_default();
    let now = sb.now_ms();
    let mut st = sb.st();
    let p = &mut st.platform;
    let expired = Err(WxErr::new(40029, "invalid code"));
    let openid = match p.codes.get(code) {
        Some(c) if c.minted_ms + CODE_TTL_MS <= now => return expired,
        Some(c) if c.used => return Err(WxErr::new(40163, "code been used")),
        Some(_) => match p.codes.get_mut(code) {
            Some(c) => {
                c.used = true;
                openid_under(appid, &c.user)
            }
            None => return expired,
        },
        // Minted here and forgotten: only expired ones are.
        None if p.key.signed(code, CODE_LEN, CODE_TAG) => return expired,
        None => openid_for(&format!("{appid}:code:{code}")),
    };
    st.platform.issued.insert(openid.clone(), appid.to_owned());
    let session_key = base64::engine::general_purpose::STANDARD.encode(random_alnum(16));
    Ok(json!({"openid": openid, "session_key": session_key}))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn openids_look_like_wechat_ones() {
        let a = openid_for("x");
        assert_eq!(a.len(), 28);
        assert!(a.starts_with('o'));
        assert_eq!(a, openid_for("x"));
        assert_ne!(a, openid_for("y"));
    }
}
