//! The notification fast path: a scanner for the one shape WeChat posts —
//! `<xml><k>v</k>…</xml>`, values as text or CDATA — that borrows every field from the body.
//!
//! Why it exists: decoding a payment notification with the general reader ([`super::xml`],
//! quick-xml's event loop, an owned `String` per name and value, a `BTreeMap` insert per
//! field) was ~70 % of the instructions of verify+parse, and its allocations most of the
//! rest (docs/PERFORMANCE.md, "Notification hot path"). Here a field is a `&str` name and a
//! `Cow<str>` value that is borrowed unless an entity or character reference had to be
//! replaced (or a value is split across text and CDATA); the fields sit in one `Vec`, sorted
//! once by name — the order the signature needs.
//!
//! Why it is safe: the scanner only *accepts*. It takes the shapes it knows (the root tag
//! exactly, ASCII field names, text with the five predefined entities and character
//! references resolved exactly as quick-xml does, CDATA, ASCII whitespace between elements)
//! and, on anything else — a declaration, a comment, attributes, a DOCTYPE, a duplicate, bad
//! UTF-8, too many fields, a malformed tag — hands the whole body to the hardened
//! [`super::xml::decode_root`], the reference implementation, whose verdict and error are
//! returned unchanged. So it refuses exactly what the reference refuses, with the same
//! [`XmlError`], and what it accepts the reference accepts with the same fields: the property
//! `tests` below checks with proptest and `fuzz/fuzz_targets/flat_scan_diff.rs` on arbitrary
//! bytes.

use super::sign::Fields;
use super::xml::{self, XmlError, MAX_BODY, MAX_FIELDS};
use std::borrow::Cow;
use std::cmp::Ordering;

/// The fields of one flat message, sorted by name (bytes, as `BTreeMap` and signing sort),
/// names unique. Borrowed from the body on the fast path; owned when the reference decoder
/// had to decide.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Flat<'a> {
    fields: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

impl<'a> Flat<'a> {
    /// The value of field `name`, if present (empty values included).
    ///
    /// A linear scan that compares lengths first: names of a message differ in length far
    /// more often than in their first bytes (`return_code`/`result_code`,
    /// `total_fee`/`trade_type`), so this calls `memcmp` about once a lookup, where a binary
    /// search called it four or five times (docs/PERFORMANCE.md, callgrind).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k.len() == name.len() && k.as_ref() == name)
            .map(|(_, v)| v.as_ref())
    }

    /// Name and value of every field, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields.iter().map(|(k, v)| (k.as_ref(), v.as_ref()))
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The fields themselves (name order), to move values out without copying them.
    pub fn into_fields(self) -> Vec<(Cow<'a, str>, Cow<'a, str>)> {
        self.fields
    }

    /// An owned copy, as [`super::xml::decode`] would have returned it.
    pub fn to_fields(&self) -> Fields {
        self.iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn from_fields(fields: Fields) -> Self {
        Flat {
            fields: fields
                .into_iter()
                .map(|(k, v)| (Cow::Owned(k), Cow::Owned(v)))
                .collect(),
        }
    }
}

/// [`super::xml::decode`] without copying: same accepted inputs, same errors, same fields.
pub fn scan(body: &[u8]) -> Result<Flat<'_>, XmlError> {
    scan_root(body, "xml")
}

/// [`super::xml::decode_root`] without copying: same accepted inputs, same errors, same fields.
pub fn scan_root<'a>(body: &'a [u8], root: &'static str) -> Result<Flat<'a>, XmlError> {
    if body.len() > MAX_BODY {
        return Err(XmlError::TooLarge(body.len()));
    }
    match fast(body, root) {
        Some(fields) => Ok(Flat { fields }),
        None => xml::decode_root(body, root).map(Flat::from_fields),
    }
}

type Field<'a> = (Cow<'a, str>, Cow<'a, str>);

/// The fast path. `None` means "not a shape this scanner vouches for", never "refused".
fn fast<'a>(body: &'a [u8], root: &str) -> Option<Vec<Field<'a>>> {
    let text = std::str::from_utf8(body).ok()?;
    let b = text.as_bytes();
    let mut i = skip_ws(b, 0);
    i = expect_tag(b, i, b"<", root.as_bytes())?;
    // 21 fields (1,008 bytes) stay within malloc's per-thread cache; WeChat's payment
    // notifications have 15–22, and the vector grows for more.
    let mut out: Vec<Field<'a>> = Vec::with_capacity(21);
    // WeChat sends the fields in name order with `sign` last: kept aside, the others need
    // one comparison each to confirm their order (no sort), and `sign` goes in its place at
    // the end with one insert.
    let mut sign: Option<Field<'a>> = None;
    let mut in_order = true;
    loop {
        i = skip_ws(b, i);
        if b.get(i..i + 2)? == b"</" {
            i = expect_tag(b, i, b"</", root.as_bytes())?;
            if skip_ws(b, i) != b.len() {
                return None;
            }
            break;
        }
        if b.get(i) != Some(&b'<') {
            return None;
        }
        let start = i + 1;
        i = name_end(b, start);
        let first = *b.get(start)?;
        if i == start || first.is_ascii_digit() || first == b'-' || first == b'.' {
            return None;
        }
        // ASCII bytes only so far: `start` and `i` are char boundaries.
        let name = text.get(start..i)?;
        let value = match b.get(i..)? {
            [b'>', ..] => {
                let (value, end) = value(text, i + 1, name.as_bytes())?;
                i = end;
                value
            }
            [b'/', b'>', ..] => {
                i += 2;
                Cow::Borrowed("")
            }
            _ => return None,
        };
        if name == "sign" {
            if sign.replace((Cow::Borrowed(name), value)).is_some() {
                return None; // a duplicate: the reference decides
            }
        } else {
            if let Some((prev, _)) = out.last() {
                in_order &= name_cmp(prev, name) == Ordering::Less;
            }
            out.push((Cow::Borrowed(name), value));
        }
        if out.len() + usize::from(sign.is_some()) > MAX_FIELDS {
            return None;
        }
    }
    if !in_order && !sort_unique(&mut out) {
        return None;
    }
    if let Some(sign) = sign {
        let at = out.partition_point(|(k, _)| name_cmp(k, "sign") == Ordering::Less);
        out.insert(at, sign);
    }
    Some(out)
}

/// Sorts fields by name; false on a duplicate name. Only for fields that did not arrive in
/// name order (WeChat's do, once `sign` is set aside), so an insertion sort: fields out of
/// place by a few positions move a few places.
fn sort_unique(fields: &mut [Field<'_>]) -> bool {
    for i in 1..fields.len() {
        let mut j = i;
        while j > 0 {
            match name_cmp(&fields[j - 1].0, &fields[j].0) {
                Ordering::Less => break,
                Ordering::Equal => return false,
                Ordering::Greater => fields.swap(j - 1, j),
            }
            j -= 1;
        }
    }
    true
}

/// Byte order of names (as `BTreeMap` and signing sort), deciding on the first four bytes
/// read as one big-endian number when both names have them (most comparisons end there,
/// without a call to `memcmp`; docs/PERFORMANCE.md, callgrind).
#[inline(always)]
fn name_cmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if let (Some(x), Some(y)) = (a.first_chunk::<4>(), b.first_chunk::<4>()) {
        let (x, y) = (u32::from_be_bytes(*x), u32::from_be_bytes(*y));
        if x != y {
            return x.cmp(&y);
        }
        return a[4..].cmp(&b[4..]);
    }
    a.cmp(b)
}

/// The value of the field opened just before `i`, up to and including `</name>`: text
/// (unescaped) and CDATA sections, concatenated. Returns the value and the index after the
/// end tag.
fn value<'a>(text: &'a str, mut i: usize, name: &[u8]) -> Option<(Cow<'a, str>, usize)> {
    let b = text.as_bytes();
    let mut value: Cow<'a, str> = Cow::Borrowed("");
    loop {
        let rest = b.get(i..)?;
        match rest {
            [b'<', b'/', after @ ..] => {
                let n = name.len();
                if !same_short(after.get(..n)?, name) || after.get(n) != Some(&b'>') {
                    return None;
                }
                return Some((value, i + 3 + n));
            }
            [b'<', ..] => {
                let cdata = rest.strip_prefix(b"<![CDATA[")?;
                let len = cdata_len(cdata)?;
                let s = i + 9;
                append(&mut value, Cow::Borrowed(text.get(s..s + len)?));
                i = s + len + 3;
            }
            _ => {
                let (mut len, found) = find2(rest, b'<', b'&')?;
                if found == b'&' {
                    len += memchr::memchr(b'<', rest.get(len..)?)?;
                    append(&mut value, unescape(text.get(i..i + len)?)?);
                } else {
                    append(&mut value, Cow::Borrowed(text.get(i..i + len)?));
                }
                i += len;
            }
        }
    }
}

/// Where the first `]]>` starts in `b`.
fn cdata_len(b: &[u8]) -> Option<usize> {
    let mut from = 0;
    loop {
        let p = from + find2(b.get(from..)?, b']', b']')?.0; // one byte: both the same
        if b.get(p..p + 3) == Some(b"]]>") {
            return Some(p);
        }
        from = p + 1;
    }
}

/// The first `x` or `y` in `b`: its index and which it is. Eight bytes at a time without a
/// call for the first 32 bytes (a notification's values are short, and there a `memchr`
/// call and its set-up cost more than the search), then `memchr2` for what is left.
#[inline(always)]
fn find2(b: &[u8], x: u8, y: u8) -> Option<(usize, u8)> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let (px, py) = (LO * u64::from(x), LO * u64::from(y));
    let mut i = 0;
    while i < 32 {
        let Some(w) = b.get(i..).and_then(<[u8]>::first_chunk::<8>) else {
            // Fewer than 8 bytes left.
            let p = i + b.get(i..)?.iter().position(|&c| c == x || c == y)?;
            return b.get(p).map(|&c| (p, c));
        };
        let w = u64::from_le_bytes(*w);
        let (a, c) = (w ^ px, w ^ py);
        // A byte of `a` (or `c`) is zero where `w` has `x` (or `y`); the lowest flagged byte
        // is exact (borrows only flag bytes above a real zero).
        let t = (a.wrapping_sub(LO) & !a | c.wrapping_sub(LO) & !c) & HI;
        if t != 0 {
            let p = i + (t.trailing_zeros() / 8) as usize;
            return b.get(p).map(|&c| (p, c));
        }
        i += 8;
    }
    let p = i + memchr::memchr2(x, y, b.get(i..)?)?;
    b.get(p).map(|&c| (p, c))
}

/// `a == b` for slices of the same length, without a `memcmp` call up to 16 bytes (an end
/// tag's name): the first and the last 8 (or 4) bytes, overlapping, as integers.
#[inline(always)]
fn same_short(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    if (8..=16).contains(&n) {
        a.first_chunk::<8>() == b.first_chunk::<8>() && a.last_chunk::<8>() == b.last_chunk::<8>()
    } else if (4..8).contains(&n) {
        a.first_chunk::<4>() == b.first_chunk::<4>() && a.last_chunk::<4>() == b.last_chunk::<4>()
    } else {
        a == b
    }
}

#[inline(always)]
fn append<'a>(value: &mut Cow<'a, str>, chunk: Cow<'a, str>) {
    if value.is_empty() {
        *value = chunk;
    } else if !chunk.is_empty() {
        value.to_mut().push_str(&chunk);
    }
}

/// quick-xml 0.37's `unescape` (what the reference applies to text), for the five predefined
/// entities and character references; `None` for anything it would refuse or resolve
/// otherwise, so the reference decides.
fn unescape(chunk: &str) -> Option<Cow<'_, str>> {
    let b = chunk.as_bytes();
    let Some(mut amp) = memchr::memchr(b'&', b) else {
        return Some(Cow::Borrowed(chunk));
    };
    let mut out = String::with_capacity(chunk.len());
    let mut last = 0;
    loop {
        // The next `&` or `;` after this `&` must be a `;`.
        let semi = amp + 1 + memchr::memchr2(b'&', b';', b.get(amp + 1..)?)?;
        if b.get(semi) != Some(&b';') {
            return None;
        }
        out.push_str(chunk.get(last..amp)?);
        match chunk.get(amp + 1..semi)? {
            "lt" => out.push('<'),
            "gt" => out.push('>'),
            "amp" => out.push('&'),
            "apos" => out.push('\''),
            "quot" => out.push('"'),
            pat => out.push(char_ref(pat.strip_prefix('#')?)?),
        }
        last = semi + 1;
        match memchr::memchr(b'&', b.get(last..)?) {
            Some(p) => amp = last + p,
            None => break,
        }
    }
    out.push_str(chunk.get(last..)?);
    Some(Cow::Owned(out))
}

/// `&#…;` as quick-xml 0.37 reads it: decimal, or hex after a lowercase `x`; no sign; not 0;
/// a Unicode scalar value.
fn char_ref(num: &str) -> Option<char> {
    let (digits, radix) = match num.strip_prefix('x') {
        Some(hex) => (hex, 16),
        None => (num, 10),
    };
    if matches!(digits.as_bytes().first(), Some(b'+' | b'-')) {
        return None;
    }
    match u32::from_str_radix(digits, radix).ok()? {
        0 => None,
        code => char::from_u32(code),
    }
}

/// `open` + `name` + `>` at `i`; the index after it.
fn expect_tag(b: &[u8], i: usize, open: &[u8], name: &[u8]) -> Option<usize> {
    let rest = b.get(i..)?.strip_prefix(open)?.strip_prefix(name)?;
    (rest.first() == Some(&b'>')).then_some(i + open.len() + name.len() + 1)
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

/// Where the name starting at `i` ends: the first byte that is not a [`NAME_BYTE`]. Eight
/// bytes at a time while they are `a`–`z` or `_` (every name WeChat sends), then byte by byte
/// from the first other byte (the table lookup per byte was ~800 instructions a payment
/// notification; docs/PERFORMANCE.md).
#[inline(always)]
fn name_end(b: &[u8], mut i: usize) -> usize {
    while let Some(w) = b.get(i..).and_then(<[u8]>::first_chunk::<8>) {
        let other = not_lower_or_underscore(u64::from_le_bytes(*w));
        if other != 0 {
            i += (other.trailing_zeros() / 8) as usize;
            break;
        }
        i += 8;
    }
    while b.get(i).is_some_and(|&c| NAME_BYTE[usize::from(c)]) {
        i += 1;
    }
    i
}

/// The high bit of each byte of `w` that is not `a`–`z` or `_`, the others clear. Exact for
/// every byte (no borrow or carry crosses bytes: each sum stays below 0x100).
#[inline(always)]
fn not_lower_or_underscore(w: u64) -> u64 {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let low7 = w & !HI;
    // High bit set where the low 7 bits are ≥ `a` (0x61), and where they are ≥ `{` (0x7b).
    let from_a = low7 + LO * 0x1f;
    let past_z = low7 + LO * 0x05;
    let lower = from_a & !past_z;
    // High bit set where the low 7 bits are not `_` (0x5f).
    let x = low7 ^ (LO * 0x5f);
    let not_underscore = (x + LO * 0x7f) | x;
    let ok = (lower | !not_underscore) & !w; // and the byte itself is ASCII
    !ok & HI
}

/// The ASCII bytes of a field name the reference accepts (its `field_name`: letters, digits,
/// `_ - . :`); names with other characters take the reference path.
const NAME_BYTE: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':');
        c += 1;
    }
    t
};

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The byte loop `name_end` replaces.
    fn name_end_bytewise(b: &[u8], mut i: usize) -> usize {
        while b.get(i).is_some_and(|&c| NAME_BYTE[usize::from(c)]) {
            i += 1;
        }
        i
    }

    #[test]
    fn name_end_finds_the_first_byte_that_ends_a_name() {
        for c in 0..=255u8 {
            let word = u64::from_le_bytes([b'a', b'z', b'_', c, b'm', c, b'q', b'_']);
            let flagged = not_lower_or_underscore(word);
            let expect_ok = c.is_ascii_lowercase() || c == b'_';
            assert_eq!(
                flagged,
                if expect_ok { 0 } else { 0x0000_8000_8000_0000 },
                "{c:#x}"
            );
            for at in 0..12 {
                let mut body = b"abcdefgh_ijklmnop_qrst".to_vec();
                body.insert(at.min(body.len()), c);
                for from in 0..3 {
                    assert_eq!(name_end(&body, from), name_end_bytewise(&body, from));
                }
            }
        }
    }

    /// The property the whole module rests on.
    fn agrees(body: &[u8], root: &'static str) {
        let reference = xml::decode_root(body, root);
        let ours = scan_root(body, root).map(|f| f.to_fields());
        assert_eq!(ours, reference, "{:?}", String::from_utf8_lossy(body));
    }

    fn fast_accepts(body: &str) -> bool {
        fast(body.as_bytes(), "xml").is_some()
    }

    #[test]
    fn the_wechat_shape_takes_the_fast_path_and_borrows() {
        let body = "<xml>\n  <b><![CDATA[茶 <tea>]]></b>\n<a>1</a><c/><d></d></xml>\n";
        assert!(fast_accepts(body));
        let f = scan(body.as_bytes()).unwrap();
        assert_eq!(
            f.iter().collect::<Vec<_>>(),
            [("a", "1"), ("b", "茶 <tea>"), ("c", ""), ("d", "")]
        );
        assert!(f
            .fields
            .iter()
            .all(|(k, v)| matches!((k, v), (Cow::Borrowed(_), Cow::Borrowed(_)))));
        assert_eq!(f.get("b"), Some("茶 <tea>"));
        assert_eq!(f.get("z"), None);
        agrees(body.as_bytes(), "xml");
    }

    #[test]
    fn entities_and_char_refs_resolve_as_the_reference_does() {
        for body in [
            "<xml><a>&lt;&gt;&amp;&apos;&quot;</a></xml>",
            "<xml><a>x&#65;&#x42;y<![CDATA[&lt;]]>&#x1F600;</a></xml>",
            "<xml><a>&#0;</a></xml>",
            "<xml><a>&#X41;</a></xml>",
            "<xml><a>&#x+41;</a></xml>",
            "<xml><a>&#-1;</a></xml>",
            "<xml><a>&#xD800;</a></xml>",
            "<xml><a>&#99999999999;</a></xml>",
            "<xml><a>&lt&gt;</a></xml>",
            "<xml><a>&lt</a></xml>",
            "<xml><a>&nbsp;</a></xml>",
            "<xml><a>&;</a></xml>",
            "<xml><a>;&amp;;</a></xml>",
        ] {
            agrees(body.as_bytes(), "xml");
        }
        assert!(fast_accepts("<xml><a>x&#65;&#x42;y</a></xml>"));
    }

    #[test]
    fn everything_else_gets_the_reference_verdict() {
        for body in [
            &b""[..],
            b"   ",
            b"<xml/>",
            b"<xml></xml>",
            b"<?xml version=\"1.0\"?><xml><a>1</a></xml>",
            b"<xml><!-- c --><a>1</a></xml>",
            b"<xml><a x=\"1\">1</a></xml>",
            b"<xml ><a>1</a></xml>",
            b"<xml><a>1</a ></xml>",
            b"<xml><a>1</a><a>2</a></xml>",
            b"<xml><a>1</a><b>2</b><a>3</a><b>4</b></xml>",
            b"<xml><a><b>1</b></a></xml>",
            b"<xml><a>\xff</a></xml>",
            b"\xef\xbb\xbf<xml><a>1</a></xml>",
            b"<xml><a>1</b></xml>",
            b"<xml><a>1</a></xml><xml></xml>",
            b"<xml><a>1</a></xml>x",
            b"x<xml><a>1</a></xml>",
            b"<xml>x<a>1</a></xml>",
            b"<xml><![CDATA[x]]><a>1</a></xml>",
            b"<xml><a>1</a>",
            b"<xml><a>1",
            b"<xml><a><![CDATA[1</a></xml>",
            b"<xml><1a>1</1a></xml>",
            b"<xml><-a/></xml>",
            b"<xml><a</></xml>",
            b"<xml><\xe5\xad\x97>1</\xe5\xad\x97></xml>",
            b"<other><a>1</a></other>",
            b"<!DOCTYPE x [<!ENTITY e \"v\">]><xml><a>&e;</a></xml>",
            b"<xml><?pi x?><a>1</a></xml>",
            b"<xml><xml>1</xml></xml>",
            b"<xml>\x0c<a>\r\n</a>\t</xml>\x0c",
        ] {
            agrees(body, "xml");
        }
        agrees(b"<root><a>1</a></root>", "root");
        agrees(b"<xml><a>1</a></xml>", "root");
        let many: String = (0..=MAX_FIELDS)
            .map(|i| format!("<f{i}>v</f{i}>"))
            .collect();
        agrees(format!("<xml>{many}</xml>").as_bytes(), "xml");
        let big = format!("<xml><a>{}</a></xml>", "x".repeat(MAX_BODY));
        assert_eq!(scan(big.as_bytes()), Err(XmlError::TooLarge(big.len())));
    }

    /// Pieces a flat document is made of, valid and not.
    fn piece() -> impl Strategy<Value = String> {
        let name = prop_oneof![
            Just("a".to_owned()),
            Just("b".to_owned()),
            Just("sign".to_owned()),
            Just("xml".to_owned()),
            Just("字".to_owned()),
            "[a-z_:.0-9-]{1,4}",
            // End tags compared 4, 8 and 16 bytes at a time.
            "[a-z_]{5,18}",
        ];
        let text = prop_oneof![
            "[a-z0-9 ]{0,6}",
            Just("&lt;&gt;&amp;&apos;&quot;".to_owned()),
            Just("&#65;&#x1F600;".to_owned()),
            "&#x?[0-9a-fA-F+-]{0,7};",
            "&[a-z#]{0,5};?",
            Just("茶]]>".to_owned()),
            "[ \t\r\n\x0c]{1,3}",
            // Past the first 32 bytes the search for `<`, `&` or `]` is `memchr`'s.
            "[a-z\\]&;]{20,70}",
            "[a-z0-9]{25,70}&amp;[a-z]{0,9}",
        ];
        let raw = prop_oneof![
            Just("<".to_owned()),
            Just(">".to_owned()),
            Just("/>".to_owned()),
            Just("</".to_owned()),
            Just("<![CDATA[".to_owned()),
            Just("]]>".to_owned()),
            Just("<!-- c -->".to_owned()),
            Just("<?xml version=\"1.0\"?>".to_owned()),
            Just("<!DOCTYPE x>".to_owned()),
            Just(" x=\"1\"".to_owned()),
            Just("\u{feff}".to_owned()),
        ];
        prop_oneof![
            4 => (name.clone(), text.clone()).prop_map(|(n, t)| format!("<{n}>{t}</{n}>")),
            2 => (name.clone(), text.clone()).prop_map(|(n, t)| format!("<{n}><![CDATA[{t}]]></{n}>")),
            1 => (name.clone(), text.clone(), text.clone())
                .prop_map(|(n, t, u)| format!("<{n}>{t}<![CDATA[{u}]]>{t}</{n}>")),
            1 => name.clone().prop_map(|n| format!("<{n}/>")),
            1 => (name.clone(), name).prop_map(|(n, m)| format!("<{n}>1</{m}>")),
            1 => text,
            1 => raw,
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// `find2` finds the first of its two bytes, at any distance (the word-at-a-time
        /// part, the tail under 8 bytes, and `memchr2` past 32 bytes).
        #[test]
        fn find2_finds_the_first_of_two_bytes(
            hay in prop::collection::vec(prop::sample::select(vec![b'a', b'<', b'&', b']', 0x80, 0xff, 0]), 0..90),
            x in prop::sample::select(vec![b'<', b']', 0xff, 0]),
            y in prop::sample::select(vec![b'&', b']', 0x80]),
        ) {
            let want = hay.iter().position(|&c| c == x || c == y).map(|p| (p, hay[p]));
            prop_assert_eq!(find2(&hay, x, y), want);
        }

        /// `name_end` stops where the byte loop stops, on names of every length with any
        /// byte after (or inside) them.
        #[test]
        fn name_end_is_the_byte_loop(
            body in prop::collection::vec(prop::sample::select(vec![b'a', b'z', b'_', b'`', b'{', b'^', b'A', b'0', b'-', b'.', b':', b'>', b'/', b' ', 0x80, 0xe1, 0xff, 0x00]), 0..40),
            from in 0usize..4,
        ) {
            prop_assert_eq!(name_end(&body, from), name_end_bytewise(&body, from));
        }

        /// `same_short` is `==`, whatever the length.
        #[test]
        fn same_short_is_equality(a in "[ab]{0,20}", b in "[ab]{0,20}") {
            prop_assert_eq!(same_short(a.as_bytes(), b.as_bytes()), a == b);
        }

        /// The name order the sort uses is byte order (as `BTreeMap` and signing sort),
        /// whether the names are shorter than, as long as or longer than its 4-byte prefix.
        #[test]
        fn name_order_is_byte_order(a in "[a-d_]{0,7}", b in "[a-d_]{0,7}") {
            prop_assert_eq!(name_cmp(&a, &b), a.as_bytes().cmp(b.as_bytes()));
            let (a, b) = (format!("sub_{a}"), format!("sub_{b}"));
            prop_assert_eq!(name_cmp(&a, &b), a.as_bytes().cmp(b.as_bytes()));
        }

        /// Documents of the notification shape, with hostile pieces mixed in.
        #[test]
        fn scanner_agrees_with_reference_on_flat_documents(
            pre in prop_oneof![Just(""), Just("\n"), Just("<?xml version=\"1.0\"?>"), Just("x")],
            root in prop_oneof![3 => Just("xml"), 1 => Just("root")],
            pieces in prop::collection::vec(piece(), 0..12),
            post in prop_oneof![Just(""), Just(" \n"), Just("<a/>"), Just("x")],
        ) {
            let body = format!("{pre}<{root}>{}</{root}>{post}", pieces.concat());
            agrees(body.as_bytes(), "xml");
            agrees(body.as_bytes(), "root");
        }

        /// A valid document with one byte changed, inserted or removed.
        #[test]
        fn scanner_agrees_with_reference_on_mutations(
            pieces in prop::collection::vec(piece(), 0..8),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            op in 0u8..3,
        ) {
            let mut body = format!("<xml>{}</xml>", pieces.concat()).into_bytes();
            let i = at.index(body.len());
            match op {
                0 => body[i] = byte,
                1 => body.insert(i, byte),
                _ => { body.remove(i); }
            }
            agrees(&body, "xml");
        }

        /// Valid notification-shaped documents (distinct ASCII names, text, entities,
        /// character references, CDATA, whitespace) take the fast path — so the properties
        /// above are not met by handing everything to the reference.
        #[test]
        fn valid_documents_take_the_fast_path(
            fields in prop::collection::btree_map(
                "[a-z_][a-z0-9_.:-]{0,8}",
                prop_oneof![
                    "[a-zA-Z0-9 ]{0,12}".prop_map(|t| t),
                    "[a-z]{0,3}".prop_map(|t| format!("{t}&lt;&amp;&#65;&#x4e2d;{t}")),
                    "[ -~]{0,12}".prop_map(|t| format!("<![CDATA[{}]]>", t.replace("]]>", ""))),
                ],
                0..20,
            ),
            ws in "[ \t\r\n]{0,2}",
        ) {
            let body: String = fields.iter().map(|(k, v)| format!("{ws}<{k}>{v}</{k}>")).collect();
            let body = format!("{ws}<xml>{body}{ws}</xml>{ws}");
            prop_assert!(fast_accepts(&body), "{body:?}");
            agrees(body.as_bytes(), "xml");
        }

        #[test]
        fn scanner_agrees_with_reference_on_any_bytes(body in prop::collection::vec(any::<u8>(), 0..64)) {
            agrees(&body, "xml");
        }
    }
}
