//! Parsed URLs kept by their text, for HTTP clients that call a few fixed endpoints.
//!
//! Why: reqwest parses a URL given as text (`IntoUrl`) before it sends, and parsing is slow
//! for what it does (~8,000 instructions: the host goes through IDNA even for `127.0.0.1`).
//! A client that calls the same handful of endpoints all day parsed the same few strings
//! again for every request; the whole local stack spent ~8 % of its instructions there
//! (docs/PERFORMANCE.md, "Whole stack"). A [`ParsedUrls`] parses each text once and hands
//! out clones (a copy of the string). The URL reqwest gets is the one `Url::parse` makes of
//! the same text, so nothing about the request changes; reqwest's own two parses inside
//! `send` (its redirect layer's and the response's) remain, they are not ours to skip.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use url::Url;

/// How many distinct texts are kept: the endpoints of one client are a few dozen. Texts past
/// it (a URL that carries an id, say) are parsed every time, as before, so the map stays
/// bounded whatever callers pass.
pub const KEPT: usize = 256;

/// Each URL text parsed once. Shared between the clones of a client (put it behind an `Arc`).
#[derive(Debug, Default)]
pub struct ParsedUrls {
    by_text: Mutex<HashMap<Box<str>, Url>>,
}

impl ParsedUrls {
    pub fn new() -> Self {
        Self::default()
    }

    /// `Url::parse(text)`, from the kept copy when `text` was parsed before. A text that does
    /// not parse is not kept (its error comes back each time).
    pub fn parse(&self, text: &str) -> Result<Url, url::ParseError> {
        let mut kept = self.by_text.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(u) = kept.get(text) {
            return Ok(u.clone());
        }
        let u = Url::parse(text)?;
        if kept.len() < KEPT {
            kept.insert(text.into(), u.clone());
        }
        Ok(u)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn gives_what_parse_gives_and_keeps_a_bounded_number() {
        let p = ParsedUrls::new();
        for text in [
            "http://127.0.0.1:8080/sandbox/pay/unifiedorder",
            "https://api.weixin.qq.com/shop/order/add?x=1#f",
            "HTTP://Example.COM/a/./b/../c d",
        ] {
            assert_eq!(p.parse(text).unwrap(), Url::parse(text).unwrap());
            assert_eq!(p.parse(text).unwrap(), Url::parse(text).unwrap(), "kept");
        }
        assert_eq!(p.parse("not a url"), Url::parse("not a url"));
        for i in 0..KEPT + 10 {
            let text = format!("http://h/{i}");
            assert_eq!(p.parse(&text).unwrap().as_str(), text);
        }
        assert_eq!(p.by_text.lock().unwrap().len(), KEPT);
    }
}
