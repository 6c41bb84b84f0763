//! Lenient number decoding for WeChat payloads.
//!
//! WeChat ids (`order_id`, `product_id`, `aftersale_id`) exceed 2^53, and the same field
//! arrives as a JSON number in one API and as a numeric string in another (or in the same
//! API with `stringify_64bits_number`). Money in the funds API arrives as yuan strings. These
//! helpers accept every shape seen, never go through `f64` for integers, and are used with
//! `#[serde(deserialize_with = "…")]` (plus `#[serde(default)]` for the optional ones).
//! Serialisation is left to the normal `Serialize` impls: we always *send* numbers.

use crate::domain::{BalanceFen, Fen};
use serde::de::{self, Deserializer, Visitor};
use std::fmt;

/// What one JSON scalar held, before it is narrowed to the target type.
enum Scalar {
    U(u64),
    I(i64),
    F(f64),
    S(String),
    Null,
    B(bool),
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number or a numeric string")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
        Ok(Scalar::U(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar::I(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
        Ok(Scalar::F(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::S(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar, E> {
        Ok(Scalar::S(v))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
        Ok(Scalar::B(v))
    }
    fn visit_none<E: de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar::Null)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Scalar, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

fn scalar<'de, D: Deserializer<'de>>(d: D) -> Result<Scalar, D::Error> {
    d.deserialize_any(ScalarVisitor)
}

fn to_u64<E: de::Error>(s: Scalar) -> Result<Option<u64>, E> {
    match s {
        Scalar::U(v) => Ok(Some(v)),
        Scalar::I(v) => u64::try_from(v)
            .map(Some)
            .map_err(|_| E::custom(format!("{v} is negative"))),
        Scalar::S(s) if s.trim().is_empty() => Ok(None),
        Scalar::S(s) => s
            .trim()
            .parse::<u64>()
            .map(Some)
            .map_err(|_| E::custom(format!("`{}` is not an unsigned integer", clip(&s)))),
        Scalar::Null => Ok(None),
        Scalar::F(v) => Err(E::custom(format!("{v} is not an integer id"))),
        Scalar::B(_) => Err(E::custom("boolean where an integer was expected")),
    }
}

fn to_i64<E: de::Error>(s: Scalar) -> Result<Option<i64>, E> {
    match s {
        Scalar::I(v) => Ok(Some(v)),
        Scalar::U(v) => i64::try_from(v)
            .map(Some)
            .map_err(|_| E::custom(format!("{v} overflows i64"))),
        Scalar::S(s) if s.trim().is_empty() => Ok(None),
        Scalar::S(s) => s
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| E::custom(format!("`{}` is not an integer", clip(&s)))),
        Scalar::Null => Ok(None),
        Scalar::F(v) if v.fract() == 0.0 && v.abs() < 9.0e15 => Ok(Some(v as i64)),
        Scalar::F(v) => Err(E::custom(format!("{v} is not an integer"))),
        Scalar::B(b) => Ok(Some(i64::from(b))),
    }
}

fn clip(s: &str) -> String {
    s.chars().take(32).collect()
}

/// `u64` from a number or a numeric string. Absent/empty/null is an error here; use
/// [`opt_u64`] (or `#[serde(default)]` with this) for optional fields.
pub fn u64_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    to_u64(scalar(d)?)?.ok_or_else(|| de::Error::custom("missing integer"))
}

/// `Option<u64>` from a number, a numeric string, `""` or `null`.
pub fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    to_u64(scalar(d)?)
}

/// `i64` from a number or a numeric string.
pub fn i64_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    to_i64(scalar(d)?)?.ok_or_else(|| de::Error::custom("missing integer"))
}

/// `Option<i64>` from a number, a numeric string, `""` or `null`.
pub fn opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    to_i64(scalar(d)?)
}

/// A `String` id that may arrive as a number (`bank_id`, `city_code`, `out_request_no`).
pub fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(opt_string_or_number(d)?.unwrap_or_default())
}

/// `Option<String>` from a string, a number or `null`.
pub fn opt_string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match scalar(d)? {
        Scalar::S(s) => Some(s),
        Scalar::U(v) => Some(v.to_string()),
        Scalar::I(v) => Some(v.to_string()),
        Scalar::F(v) => Some(v.to_string()),
        Scalar::B(b) => Some(b.to_string()),
        Scalar::Null => None,
    })
}

/// `bool` from `true`/`false`, `0`/`1` or `"0"`/`"1"`/`"true"`/`"false"`.
pub fn bool_or_int<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    match scalar(d)? {
        Scalar::B(b) => Ok(b),
        Scalar::Null => Ok(false),
        Scalar::S(s) if s == "true" => Ok(true),
        Scalar::S(s) if s == "false" => Ok(false),
        other => Ok(to_i64::<D::Error>(other)?.unwrap_or(0) != 0),
    }
}

/// [`Fen`] from an integer number of fen, as a number or a numeric string.
pub fn fen<'de, D: Deserializer<'de>>(d: D) -> Result<Fen, D::Error> {
    Ok(opt_fen(d)?.unwrap_or_default())
}

/// `Option<Fen>` from integer fen as a number, a numeric string, `""` or `null`.
pub fn opt_fen<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Fen>, D::Error> {
    match to_i64::<D::Error>(scalar(d)?)? {
        None => Ok(None),
        Some(v) => Fen::new(v).map(Some).map_err(de::Error::custom),
    }
}

/// [`Fen`] from a yuan amount (`"12.34"`, `12.34`, `"3"`), exactly. A leading sign is
/// dropped: the funds flow carries its direction in `flow_type`, not in the amount.
pub fn yuan<'de, D: Deserializer<'de>>(d: D) -> Result<Fen, D::Error> {
    Ok(opt_yuan(d)?.unwrap_or_default())
}

/// `Option<Fen>` from a yuan amount; see [`yuan`].
pub fn opt_yuan<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Fen>, D::Error> {
    let text = match scalar(d)? {
        Scalar::Null => return Ok(None),
        Scalar::S(s) if s.trim().is_empty() => return Ok(None),
        Scalar::S(s) => s,
        Scalar::U(v) => v.to_string(),
        Scalar::I(v) => v.to_string(),
        // `Display` of f64 is the shortest text that round-trips, so `12.34` prints as
        // "12.34" and the decimal parse below stays exact.
        Scalar::F(v) => v.to_string(),
        Scalar::B(_) => return Err(de::Error::custom("boolean where an amount was expected")),
    };
    let t = text.trim();
    let t = t.strip_prefix(['-', '+']).unwrap_or(t);
    Fen::from_yuan_str(t).map(Some).map_err(de::Error::custom)
}

/// [`BalanceFen`] from integer fen (number or numeric string), sign kept; `""`/`null` → 0.
pub fn balance_fen<'de, D: Deserializer<'de>>(d: D) -> Result<BalanceFen, D::Error> {
    Ok(BalanceFen(to_i64::<D::Error>(scalar(d)?)?.unwrap_or(0)))
}

/// [`BalanceFen`] from a yuan amount (`"-12.34"`, `12.34`), exactly, sign kept: a balance
/// below zero is a fact to show, not a direction to drop.
pub fn balance_yuan<'de, D: Deserializer<'de>>(d: D) -> Result<BalanceFen, D::Error> {
    let text = match scalar(d)? {
        Scalar::Null => return Ok(BalanceFen(0)),
        Scalar::S(s) if s.trim().is_empty() => return Ok(BalanceFen(0)),
        Scalar::S(s) => s,
        Scalar::U(v) => v.to_string(),
        Scalar::I(v) => v.to_string(),
        Scalar::F(v) => v.to_string(),
        Scalar::B(_) => return Err(de::Error::custom("boolean where an amount was expected")),
    };
    let t = text.trim();
    let (negative, digits) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let fen = Fen::from_yuan_str(digits).map_err(de::Error::custom)?.get();
    Ok(BalanceFen(if negative { -fen } else { fen }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug, Default)]
    #[serde(default)]
    struct T {
        #[serde(deserialize_with = "u64_or_string")]
        id: u64,
        #[serde(deserialize_with = "opt_u64")]
        oid: Option<u64>,
        #[serde(deserialize_with = "i64_or_string")]
        t: i64,
        #[serde(deserialize_with = "string_or_number")]
        s: String,
        #[serde(deserialize_with = "fen")]
        f: Fen,
        #[serde(deserialize_with = "yuan")]
        y: Fen,
        #[serde(deserialize_with = "bool_or_int")]
        b: bool,
    }

    #[test]
    fn a_balance_keeps_its_sign() {
        #[derive(Deserialize)]
        struct B {
            #[serde(deserialize_with = "balance_fen")]
            f: BalanceFen,
            #[serde(deserialize_with = "balance_yuan")]
            y: BalanceFen,
        }
        let b: B = serde_json::from_str(r#"{"f":-1990,"y":"-19.90"}"#).unwrap();
        assert_eq!((b.f.get(), b.y.get()), (-1990, -1990));
        let b: B = serde_json::from_str(r#"{"f":"25","y":0.25}"#).unwrap();
        assert_eq!((b.f.get(), b.y.get()), (25, 25));
        assert!(serde_json::from_str::<B>(r#"{"f":1,"y":"-1.234"}"#).is_err());
    }

    #[test]
    fn accepts_numbers_and_strings_without_losing_precision() {
        let a: T = serde_json::from_str(
            r#"{"id":3302968738502279424,"oid":"23423523452345235","t":"1650876295006","s":1234,"f":"100","y":"12.34","b":1}"#,
        )
        .unwrap();
        assert_eq!(a.id, 3_302_968_738_502_279_424);
        assert_eq!(a.oid, Some(23_423_523_452_345_235));
        assert_eq!(a.t, 1_650_876_295_006);
        assert_eq!(a.s, "1234");
        assert_eq!(a.f.get(), 100);
        assert_eq!(a.y.get(), 1234);
        assert!(a.b);
        let b: T = serde_json::from_str(
            r#"{"id":"3302968738502279424","oid":null,"t":5,"s":"x","f":7,"y":0.1,"b":false}"#,
        )
        .unwrap();
        assert_eq!(b.id, 3_302_968_738_502_279_424);
        assert_eq!(b.oid, None);
        assert_eq!(b.y.get(), 10);
        let c: T = serde_json::from_str("{}").unwrap();
        assert_eq!(c.id, 0);
    }

    #[test]
    fn refuses_garbage() {
        assert!(serde_json::from_str::<T>(r#"{"id":"12x"}"#).is_err());
        assert!(serde_json::from_str::<T>(r#"{"id":1.5}"#).is_err());
        assert!(serde_json::from_str::<T>(r#"{"f":-1}"#).is_err());
        assert!(serde_json::from_str::<T>(r#"{"y":"1.234"}"#).is_err());
        let n: T = serde_json::from_str(r#"{"y":"-3.50"}"#).unwrap();
        assert_eq!(n.y.get(), 350);
    }
}
