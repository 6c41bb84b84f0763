//! The push signatures: `signature` over (token, timestamp, nonce) on every request, and
//! `msg_signature` over (token, timestamp, nonce, Encrypt) in safe mode (§9.2, §9.3).
//!
//! Both sort the strings byte-wise, concatenate them without separators and take the lowercase
//! hex SHA-1. The comparison is constant-time and case-insensitive (as SKIT's), so a timing
//! probe learns nothing about the expected value.

use super::PushError;
use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

/// The query string WeChat puts on every push request. Parameters are kept as sent; empty
/// values count as absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct PushQuery {
    #[serde(default)]
    pub signature: Option<String>,
    #[serde(default)]
    pub timestamp: Option<String>,
    #[serde(default)]
    pub nonce: Option<String>,
    /// URL verification only: echoed back on success.
    #[serde(default)]
    pub echostr: Option<String>,
    /// `aes` in compatible and safe mode; absent (or `raw`) in plaintext mode.
    #[serde(default)]
    pub encrypt_type: Option<String>,
    #[serde(default)]
    pub msg_signature: Option<String>,
    /// Sometimes sent for user-originated messages; never trusted for anything.
    #[serde(default)]
    pub openid: Option<String>,
}

impl PushQuery {
    /// Parses a raw query string (`a=1&b=2`, percent-encoded). The first occurrence of a
    /// parameter wins; unknown parameters are ignored.
    pub fn from_query_str(query: &str) -> Self {
        let mut q = PushQuery::default();
        for (k, v) in url::form_urlencoded::parse(query.trim_start_matches('?').as_bytes()) {
            let slot = match k.as_ref() {
                "signature" => &mut q.signature,
                "timestamp" => &mut q.timestamp,
                "nonce" => &mut q.nonce,
                "echostr" => &mut q.echostr,
                "encrypt_type" => &mut q.encrypt_type,
                "msg_signature" => &mut q.msg_signature,
                "openid" => &mut q.openid,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(v.into_owned());
            }
        }
        q
    }

    /// The query a genuine plaintext-mode push (or URL verification, with `echostr` set
    /// afterwards) carries. For the sandbox and tests.
    pub fn signed(token: &str, timestamp: &str, nonce: &str) -> Self {
        PushQuery {
            signature: Some(sign(token, timestamp, nonce)),
            timestamp: Some(timestamp.to_owned()),
            nonce: Some(nonce.to_owned()),
            ..PushQuery::default()
        }
    }

    /// The query a genuine safe-mode push carries.
    pub fn signed_aes(token: &str, timestamp: &str, nonce: &str, msg_signature: &str) -> Self {
        PushQuery {
            encrypt_type: Some("aes".into()),
            msg_signature: Some(msg_signature.to_owned()),
            ..PushQuery::signed(token, timestamp, nonce)
        }
    }

    /// Serialises the present parameters, percent-encoded, without a leading `?`.
    pub fn to_query_string(&self) -> String {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        let pairs = [
            ("signature", &self.signature),
            ("timestamp", &self.timestamp),
            ("nonce", &self.nonce),
            ("echostr", &self.echostr),
            ("encrypt_type", &self.encrypt_type),
            ("msg_signature", &self.msg_signature),
            ("openid", &self.openid),
        ];
        for (k, v) in pairs {
            if let Some(v) = v {
                s.append_pair(k, v);
            }
        }
        s.finish()
    }

    /// What binds a verified plaintext-mode push to its time: `timestamp` (epoch seconds) and
    /// `signature`. In plaintext mode the signature covers only token, timestamp and nonce —
    /// not the body — so the handler allows it for one body, and only close to its time.
    /// The signature comes normalised the way verification reads it (trimmed, lowercase), so
    /// every spelling that verifies is the same signature. `None` unless both are present
    /// and the timestamp is decimal.
    pub fn plaintext_binding(&self) -> Option<(i64, String)> {
        Some((
            self.timestamp_secs()?,
            normalise_digest(Self::get(&self.signature)?),
        ))
    }

    /// `timestamp` as epoch seconds: `None` when absent, not decimal, or beyond `i64`.
    /// Both signatures cover it, so once one verified it is WeChat's time of sending.
    pub fn timestamp_secs(&self) -> Option<i64> {
        let ts = Self::get(&self.timestamp)?;
        check_timestamp(ts).ok()?;
        ts.parse().ok()
    }

    /// A parameter, with empty values treated as absent.
    pub(crate) fn get(v: &Option<String>) -> Option<&str> {
        v.as_deref().filter(|s| !s.is_empty())
    }

    /// `timestamp` and `nonce`, both required, the timestamp decimal.
    pub(crate) fn timestamp_nonce(&self) -> Result<(&str, &str), PushError> {
        let ts = Self::get(&self.timestamp).ok_or(PushError::MissingParam("timestamp"))?;
        check_timestamp(ts)?;
        let nonce = Self::get(&self.nonce).ok_or(PushError::MissingParam("nonce"))?;
        Ok((ts, nonce))
    }

    /// Checks `signature` against our token.
    pub(crate) fn check_signature(&self, token: &str) -> Result<(), PushError> {
        let (ts, nonce) = self.timestamp_nonce()?;
        let given = Self::get(&self.signature).ok_or(PushError::MissingParam("signature"))?;
        if digest_eq(&sign(token, ts, nonce), given) {
            Ok(())
        } else {
            Err(PushError::BadSignature)
        }
    }
}

/// `signature` for a token, timestamp and nonce: hex(sha1(sorted concatenation)).
pub fn sign(token: &str, timestamp: &str, nonce: &str) -> String {
    sha1_sorted(&mut [token, timestamp, nonce])
}

/// `msg_signature` of a safe-mode push: hex(sha1(sorted token, timestamp, nonce, Encrypt)).
pub fn msg_signature(token: &str, timestamp: &str, nonce: &str, encrypt: &str) -> String {
    sha1_sorted(&mut [token, timestamp, nonce, encrypt])
}

/// URL verification (the `GET` the console sends when the push URL is saved): checks
/// `signature` and returns `echostr`, to be sent back verbatim as the whole body.
pub fn verify_url(query: &PushQuery, token: &str) -> Result<String, PushError> {
    if token.is_empty() {
        return Err(PushError::EmptyToken);
    }
    query.check_signature(token)?;
    PushQuery::get(&query.echostr)
        .map(str::to_owned)
        .ok_or(PushError::MissingParam("echostr"))
}

fn sha1_sorted(parts: &mut [&str]) -> String {
    parts.sort_unstable();
    let mut h = Sha1::new();
    for p in parts.iter() {
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

/// A received hex digest as [`digest_eq`] compares it: trimmed, lowercase.
fn normalise_digest(given: &str) -> String {
    given.trim().to_ascii_lowercase()
}

/// Constant-time, case-insensitive comparison of an expected lowercase hex digest.
pub(crate) fn digest_eq(expected: &str, given: &str) -> bool {
    let given = normalise_digest(given);
    bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

/// WeChat's timestamps are unix seconds in decimal; anything else is not from WeChat.
pub(crate) fn check_timestamp(ts: &str) -> Result<(), PushError> {
    if !ts.is_empty() && ts.len() <= 20 && ts.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(PushError::BadTimestamp)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn sorts_bytewise_before_hashing() {
        // sha1("1409304348" + "pamtest" + "xxxxxx") — digits sort before letters.
        let mut h = Sha1::new();
        h.update(b"1409304348pamtestxxxxxx");
        assert_eq!(
            sign("pamtest", "1409304348", "xxxxxx"),
            hex::encode(h.finalize())
        );
        assert_eq!(sign("b", "a", "c"), sign("c", "b", "a"));
    }

    #[test]
    fn compares_case_insensitively() {
        let s = sign("t", "1", "n");
        assert!(digest_eq(&s, &s.to_ascii_uppercase()));
        assert!(!digest_eq(&s, &s[1..]));
    }

    #[test]
    fn query_round_trips() {
        let mut q = PushQuery::signed_aes("tok", "1700000000", "n o", "abc");
        q.echostr = Some("e&=".into());
        assert_eq!(PushQuery::from_query_str(&q.to_query_string()), q);
        let first = PushQuery::from_query_str("?nonce=a&nonce=b");
        assert_eq!(first.nonce.as_deref(), Some("a"));
    }
}
