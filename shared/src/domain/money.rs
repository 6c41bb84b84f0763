//! Money is an integer number of fen (1/100 CNY) from the catalog to WeChat and back.
//! No floats anywhere: WeChat Pay, the trading component and our store all speak fen.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A non-negative amount of money in fen.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(try_from = "i64", into = "i64")]
pub struct Fen(i64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("amount must not be negative (got {0} fen)")]
    Negative(i64),
    #[error("amount overflows")]
    Overflow,
    #[error("`{0}` is not an integer number of fen")]
    NotInteger(String),
}

impl Fen {
    pub const ZERO: Fen = Fen(0);

    /// The most one payment can be: WeChat Pay v2's `total_fee` is an `Int` (32-bit; the
    /// trading component's prices too), so a larger amount is refused there, after the order
    /// is made. Prices and order totals are held to it here, before anything is made.
    pub const MAX_PAYMENT: Fen = Fen(i32::MAX as i64);

    pub fn new(fen: i64) -> Result<Self, MoneyError> {
        if fen < 0 {
            Err(MoneyError::Negative(fen))
        } else {
            Ok(Fen(fen))
        }
    }

    pub const fn get(self) -> i64 {
        self.0
    }

    pub fn checked_add(self, other: Fen) -> Result<Fen, MoneyError> {
        self.0
            .checked_add(other.0)
            .map(Fen)
            .ok_or(MoneyError::Overflow)
    }

    pub fn checked_sub(self, other: Fen) -> Option<Fen> {
        self.0.checked_sub(other.0).filter(|v| *v >= 0).map(Fen)
    }

    pub fn checked_mul(self, qty: u32) -> Result<Fen, MoneyError> {
        self.0
            .checked_mul(i64::from(qty))
            .map(Fen)
            .ok_or(MoneyError::Overflow)
    }

    /// Parses a decimal string of fen as WeChat sends it (`"100"`), refusing signs, spaces
    /// and fractions.
    pub fn parse(s: &str) -> Result<Self, MoneyError> {
        if s.is_empty() || s.len() > 18 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(MoneyError::NotInteger(s.chars().take(32).collect()));
        }
        s.parse::<i64>()
            .map(Fen)
            .map_err(|_| MoneyError::NotInteger(s.to_owned()))
    }

    /// Yuan with two decimals, for people and for bills (`"12.34"`).
    pub fn to_yuan_string(self) -> String {
        format!("{}.{:02}", self.0 / 100, self.0 % 100)
    }

    /// Parses a yuan amount with at most two decimals (`"12.3"`, `"0.01"`) into fen, as bills
    /// and the funds APIs write them. Exact: no float is involved.
    pub fn from_yuan_str(s: &str) -> Result<Self, MoneyError> {
        let bad = || MoneyError::NotInteger(s.chars().take(32).collect());
        let s = s.trim();
        let (int, frac) = match s.split_once('.') {
            Some((i, f)) => (i, f),
            None => (s, ""),
        };
        if int.is_empty()
            || frac.len() > 2
            || !int.bytes().all(|b| b.is_ascii_digit())
            || !frac.bytes().all(|b| b.is_ascii_digit())
            || int.len() > 15
        {
            return Err(bad());
        }
        let yuan: i64 = int.parse().map_err(|_| bad())?;
        let mut cents: i64 = if frac.is_empty() {
            0
        } else {
            frac.parse().map_err(|_| bad())?
        };
        if frac.len() == 1 {
            cents *= 10;
        }
        yuan.checked_mul(100)
            .and_then(|v| v.checked_add(cents))
            .map(Fen)
            .ok_or(MoneyError::Overflow)
    }
}

impl TryFrom<i64> for Fen {
    type Error = MoneyError;
    fn try_from(v: i64) -> Result<Self, Self::Error> {
        Fen::new(v)
    }
}

impl From<Fen> for i64 {
    fn from(f: Fen) -> i64 {
        f.0
    }
}

impl fmt::Display for Fen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An account balance in fen, which may be below zero: a secondary merchant's funds account
/// goes negative when a refund is taken from money already withdrawn. Not an amount anyone
/// may be charged or paid; only [`Fen`] is that.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct BalanceFen(pub i64);

impl BalanceFen {
    pub const fn get(self) -> i64 {
        self.0
    }

    /// Whether `amount` can be taken from this balance without going below zero.
    pub fn covers(self, amount: Fen) -> bool {
        self.0 >= amount.get()
    }
}

impl fmt::Display for BalanceFen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fen_strictly() {
        assert_eq!(Fen::parse("100"), Ok(Fen(100)));
        assert!(Fen::parse("-1").is_err());
        assert!(Fen::parse("1.5").is_err());
        assert!(Fen::parse("").is_err());
        assert!(Fen::parse(" 1").is_err());
        assert!(Fen::new(-5).is_err());
    }

    #[test]
    fn yuan_round_trip_is_exact() {
        assert_eq!(Fen::from_yuan_str("12.34"), Ok(Fen(1234)));
        assert_eq!(Fen::from_yuan_str("0.1"), Ok(Fen(10)));
        assert_eq!(Fen::from_yuan_str("3"), Ok(Fen(300)));
        assert!(Fen::from_yuan_str("1.234").is_err());
        assert!(Fen::from_yuan_str("-1.00").is_err());
        assert_eq!(Fen(1234).to_yuan_string(), "12.34");
        assert_eq!(Fen(5).to_yuan_string(), "0.05");
    }

    #[test]
    fn arithmetic_refuses_negative_and_overflow() {
        assert_eq!(Fen(5).checked_sub(Fen(6)), None);
        assert!(Fen(i64::MAX).checked_add(Fen(1)).is_err());
        assert!(Fen(i64::MAX / 2).checked_mul(3).is_err());
    }
}
