//! Identifiers, parsed once at the edge and trusted afterwards.

use rand::Rng;
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what}: {why}")]
pub struct IdError {
    pub what: &'static str,
    pub why: &'static str,
}

macro_rules! string_id {
    ($(#[$m:meta])* $name:ident, $what:literal, $check:expr) => {
        $(#[$m])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
        #[serde(try_from = "String")]
        pub struct $name(String);

        /// As the string it is, borrowed (`into = "String"` would clone it on every encode).
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl $name {
            pub fn parse(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                let check: fn(&str) -> Result<(), &'static str> = $check;
                check(&s).map_err(|why| IdError { what: $what, why })?;
                Ok(Self(s))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }
        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

/// The bytes an id may hold: ASCII letters and digits, and `extra`. A table, so checking an
/// id read back from the store costs one lookup a byte.
const fn allowed(extra: &[u8]) -> [bool; 256] {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        table[extra[i] as usize] = true;
        i += 1;
    }
    table
}

const OUT_TRADE_NO_BYTES: [bool; 256] = allowed(b"_-|*");
const OUT_REFUND_NO_BYTES: [bool; 256] = allowed(b"_-|*@");
const OUR_ID_BYTES: [bool; 256] = allowed(b"_-");

/// Checks `s` against an id's length and bytes; refused, the error is `rule`, the id's whole
/// form ("must be 1–64 characters, …"), so the caller reads what to send instead of only
/// what was wrong ("too long", "a character outside the allowed set" named no set).
fn charset(
    s: &str,
    min: usize,
    max: usize,
    allowed: &[bool; 256],
    rule: &'static str,
) -> Result<(), &'static str> {
    if s.len() < min || s.len() > max || !s.bytes().all(|b| allowed[usize::from(b)]) {
        return Err(rule);
    }
    Ok(())
}

const OUR_ID_RULE: &str = "must be 1–64 characters, each a letter, digit, `_` or `-`";

string_id!(
    /// Merchant order number: 6–32 chars of `[0-9A-Za-z_-|*]`, unique per merchant.
    OutTradeNo, "out_trade_no", |s| charset(
        s,
        6,
        32,
        &OUT_TRADE_NO_BYTES,
        "must be 6–32 characters, each a letter, digit, `_`, `-`, `|` or `*`"
    )
);
string_id!(
    /// Merchant refund number: ≤64 chars of `[0-9A-Za-z_-|*@]`.
    OutRefundNo, "out_refund_no", |s| charset(
        s,
        1,
        64,
        &OUT_REFUND_NO_BYTES,
        "must be 1–64 characters, each a letter, digit, `_`, `-`, `|`, `*` or `@`"
    )
);
string_id!(
    /// A user's openid under our mini program (or `sub_openid` in provider mode).
    OpenId, "openid", |s| charset(
        s,
        1,
        128,
        &OUR_ID_BYTES,
        "must be 1–128 characters, each a letter, digit, `_` or `-`"
    )
);
string_id!(
    /// Our product (SPU) id, `out_product_id` in the trading component.
    ProductId, "product id", |s| charset(s, 1, 64, &OUR_ID_BYTES, OUR_ID_RULE)
);
string_id!(
    /// Our SKU id, `out_sku_id` in the trading component.
    SkuId, "sku id", |s| charset(s, 1, 64, &OUR_ID_BYTES, OUR_ID_RULE)
);
string_id!(
    /// Our after-sale id, `out_aftersale_id` in the trading component.
    AfterSaleId, "after-sale id", |s| charset(s, 1, 64, &OUR_ID_BYTES, OUR_ID_RULE)
);

const ALNUM: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// `len` random characters of `[0-9A-Za-z]`, for nonces and id suffixes.
pub fn random_alnum(len: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| ALNUM[rng.gen_range(0..ALNUM.len())] as char)
        .collect()
}

impl OutTradeNo {
    /// A fresh order number: `WX` + Beijing-time `yyyyMMddHHmmss` + 12 random characters
    /// (28 chars), sortable by time and unguessable.
    pub fn generate(now_ms: i64) -> Self {
        Self(format!(
            "WX{}{}",
            crate::time::beijing_compact(now_ms),
            random_alnum(12)
        ))
    }
}

impl OutRefundNo {
    pub fn generate(now_ms: i64) -> Self {
        Self(format!(
            "RF{}{}",
            crate::time::beijing_compact(now_ms),
            random_alnum(12)
        ))
    }
}

impl AfterSaleId {
    /// The after-sale an application with an idempotency key makes: the same user, order and
    /// key always name the same after-sale, so a repeated application (a double tap, a retry
    /// after a lost answer) finds it instead of opening a second one.
    pub fn for_request(openid: &super::OpenId, order: &super::OutTradeNo, key: &str) -> Self {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for part in [openid.as_str(), order.as_str(), key] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        Self(format!("ASK{}", &hex::encode(h.finalize())[..40]))
    }

    /// The after-sale a merchant's own refund with an idempotency key makes (`aftersaleSync`
    /// admin `refund`): the same order and key always name the same refund. Apart from every
    /// user's application (`ASM`, another hash input).
    pub fn for_merchant_refund(order: &super::OutTradeNo, key: &str) -> Self {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for part in ["merchant refund", order.as_str(), key] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        Self(format!("ASM{}", &hex::encode(h.finalize())[..40]))
    }

    pub fn generate(now_ms: i64) -> Self {
        Self(format!(
            "AS{}{}",
            crate::time::beijing_compact(now_ms),
            random_alnum(10)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_application_key_names_one_aftersale_per_user_and_order() {
        let alice = OpenId::parse("oUpF8uMEb4qRXf22hE3X68TekukE").unwrap();
        let bob = OpenId::parse("oUpF8uMEb4qRXf22hE3X68Tekuk0").unwrap();
        let no = OutTradeNo::parse("WX20261205120000abcdefghijkl").unwrap();
        let other = OutTradeNo::parse("WX20261205120000abcdefghijkm").unwrap();
        let a = AfterSaleId::for_request(&alice, &no, "tap-1");
        assert_eq!(a, AfterSaleId::for_request(&alice, &no, "tap-1"));
        assert_ne!(a, AfterSaleId::for_request(&alice, &no, "tap-2"));
        assert_ne!(a, AfterSaleId::for_request(&bob, &no, "tap-1"));
        assert_ne!(a, AfterSaleId::for_request(&alice, &other, "tap-1"));
        assert!(AfterSaleId::parse(a.as_str()).is_ok(), "{a}");
    }

    #[test]
    fn out_trade_no_rules() {
        assert!(OutTradeNo::parse("1409811653").is_ok());
        assert!(OutTradeNo::parse("abc").is_err());
        assert!(OutTradeNo::parse("a".repeat(33)).is_err());
        assert!(OutTradeNo::parse("order 123").is_err());
        assert!(OutTradeNo::parse("order@123").is_err());
        let g = OutTradeNo::generate(0);
        assert_eq!(g.as_str().len(), 28);
        assert!(OutTradeNo::parse(g.as_str()).is_ok());
        assert!(OutRefundNo::parse("r@1").is_ok());
    }

    /// Ids are stored as the plain strings they are, as before ids were written borrowed.
    #[test]
    fn ids_are_stored_as_plain_strings() {
        let no = OutTradeNo::parse("WX20261205120000abc-|*_").unwrap();
        assert_eq!(
            serde_json::to_string(&no).unwrap(),
            "\"WX20261205120000abc-|*_\""
        );
        let back: OutTradeNo = serde_json::from_str("\"WX20261205120000abc-|*_\"").unwrap();
        assert_eq!(back, no);
        assert!(OutRefundNo::parse("r@1").is_ok() && OpenId::parse("o@1").is_err());
        assert!(OutTradeNo::parse("abcdef\u{e9}").is_err(), "non-ASCII");
    }

    #[test]
    fn serde_refuses_invalid_ids() {
        assert!(serde_json::from_str::<OutTradeNo>("\"bad id!\"").is_err());
        assert!(serde_json::from_str::<OpenId>("\"oUpF8uMEb4qRXf22hE3X68TekukE\"").is_ok());
    }
}
