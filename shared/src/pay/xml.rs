//! The flat `<xml>` messages of WeChat Pay v2 (and the `<root>` inside refund `req_info`).
//!
//! Input is hostile until proven otherwise (CVE-2018-13439 was an XXE in WeChat's own SDK):
//! any DOCTYPE or entity declaration is refused, as are bodies over the size cap, nesting
//! below the root's children, duplicate fields, and non-UTF-8 bytes. Output wraps free text in
//! CDATA.

use super::sign::Fields;
use quick_xml::events::{BytesCData, BytesEnd, BytesStart, BytesText, Event};
use quick_xml::Reader;

/// Largest v2 message we accept. Real notifications are ~1 KiB; coupon-heavy ones ~4 KiB.
pub const MAX_BODY: usize = 64 * 1024;
/// Most fields in one message (coupon `_$n` fields can add a few dozen).
pub const MAX_FIELDS: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    #[error("body is {0} bytes; at most {MAX_BODY} accepted")]
    TooLarge(usize),
    #[error("body is empty")]
    Empty,
    #[error("body is not UTF-8")]
    NotUtf8,
    #[error("DOCTYPE and entity declarations are refused")]
    Doctype,
    #[error("root element must be <{expected}>")]
    WrongRoot { expected: &'static str },
    #[error("elements nested below the root's children are refused")]
    TooDeep,
    #[error("field `{0}` appears twice")]
    Duplicate(String),
    #[error("more than {MAX_FIELDS} fields")]
    TooManyFields,
    #[error("malformed XML: {0}")]
    Malformed(String),
}

/// Parses a flat `<xml>` message into its fields.
pub fn decode(body: &[u8]) -> Result<Fields, XmlError> {
    decode_root(body, "xml")
}

/// Parses a flat message whose root element is `root`.
pub fn decode_root(body: &[u8], root: &'static str) -> Result<Fields, XmlError> {
    if body.len() > MAX_BODY {
        return Err(XmlError::TooLarge(body.len()));
    }
    let text = std::str::from_utf8(body).map_err(|_| XmlError::NotUtf8)?;
    if text.trim().is_empty() {
        return Err(XmlError::Empty);
    }
    let mut reader = Reader::from_str(text);
    reader.config_mut().trim_text(false);
    reader.config_mut().check_end_names = true;

    let mut fields = Fields::new();
    let mut depth = 0usize;
    let mut seen_root = false;
    let mut current: Option<String> = None;
    let mut value = String::new();
    let malformed = |e: quick_xml::Error| XmlError::Malformed(e.to_string());

    loop {
        match reader.read_event().map_err(malformed)? {
            Event::DocType(_) => return Err(XmlError::Doctype),
            Event::Decl(_) | Event::Comment(_) => {}
            Event::PI(_) => return Err(XmlError::Malformed("processing instruction".into())),
            Event::Start(e) => {
                depth += 1;
                match depth {
                    1 => {
                        if seen_root || e.name().as_ref() != root.as_bytes() {
                            return Err(XmlError::WrongRoot { expected: root });
                        }
                        seen_root = true;
                    }
                    2 => {
                        current = Some(field_name(e.name().as_ref())?);
                        value.clear();
                    }
                    _ => return Err(XmlError::TooDeep),
                }
            }
            Event::Empty(e) => match depth {
                0 => {
                    if e.name().as_ref() != root.as_bytes() || seen_root {
                        return Err(XmlError::WrongRoot { expected: root });
                    }
                    seen_root = true;
                }
                1 => {
                    let name = field_name(e.name().as_ref())?;
                    insert(&mut fields, name, String::new())?;
                }
                _ => return Err(XmlError::TooDeep),
            },
            Event::Text(t) => {
                if depth == 2 {
                    let s = t.unescape().map_err(malformed)?;
                    value.push_str(&s);
                } else if !t.iter().all(u8::is_ascii_whitespace) {
                    return Err(XmlError::Malformed("text outside fields".into()));
                }
            }
            Event::CData(c) => {
                if depth != 2 {
                    return Err(XmlError::Malformed("CDATA outside fields".into()));
                }
                let s = std::str::from_utf8(&c).map_err(|_| XmlError::NotUtf8)?;
                value.push_str(s);
            }
            Event::End(_) => {
                if depth == 2 {
                    if let Some(name) = current.take() {
                        insert(&mut fields, name, std::mem::take(&mut value))?;
                    }
                }
                depth = depth.saturating_sub(1);
            }
            Event::Eof => break,
        }
    }
    if !seen_root || depth != 0 {
        return Err(XmlError::WrongRoot { expected: root });
    }
    Ok(fields)
}

/// A field's element name, which must be an XML name (quick-xml reads `<a</>` as an element
/// named `a<`, which would not survive re-encoding): ASCII letters, digits, `_ - . :` or any
/// non-ASCII character, not starting with a digit, `-` or `.`.
fn field_name(raw: &[u8]) -> Result<String, XmlError> {
    // Fast path for the ASCII names WeChat sends (same rule, bytes instead of chars); anything
    // else takes the general path below.
    let ascii_ok = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':');
    if raw
        .first()
        .is_some_and(|b| !b.is_ascii_digit() && !matches!(b, b'-' | b'.'))
        && raw.iter().all(ascii_ok)
    {
        if let Ok(name) = std::str::from_utf8(raw) {
            return Ok(name.to_owned());
        }
    }
    let name = std::str::from_utf8(raw).map_err(|_| XmlError::NotUtf8)?;
    let ok_char =
        |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':') || !c.is_ascii();
    let ok_first = name
        .chars()
        .next()
        .is_some_and(|c| !c.is_ascii_digit() && c != '-' && c != '.');
    if !ok_first || !name.chars().all(ok_char) {
        return Err(XmlError::Malformed(format!(
            "`{}` is not a field name",
            name.escape_debug().take(64).collect::<String>()
        )));
    }
    Ok(name.to_owned())
}

fn insert(fields: &mut Fields, name: String, value: String) -> Result<(), XmlError> {
    if fields.len() >= MAX_FIELDS {
        return Err(XmlError::TooManyFields);
    }
    // One search, not two (`contains_key` + `insert`).
    match fields.entry(name) {
        std::collections::btree_map::Entry::Occupied(e) => {
            Err(XmlError::Duplicate(e.key().clone()))
        }
        std::collections::btree_map::Entry::Vacant(e) => {
            e.insert(value);
            Ok(())
        }
    }
}

/// Serialises fields as `<xml>` with every value in CDATA (numbers too: WeChat accepts both,
/// and one rule leaves no room for an unescaped `<` in free text).
pub fn encode(fields: &Fields) -> String {
    encode_root(fields, "xml")
}

pub fn encode_root(fields: &Fields, root: &str) -> String {
    let mut w = quick_xml::Writer::new(Vec::with_capacity(64 + fields.len() * 48));
    // Writing to a Vec cannot fail.
    let _ = w.write_event(Event::Start(BytesStart::new(root)));
    for (k, v) in fields {
        let _ = w.write_event(Event::Start(BytesStart::new(k.as_str())));
        if v.contains("]]>") {
            let _ = w.write_event(Event::Text(BytesText::new(v)));
        } else {
            let _ = w.write_event(Event::CData(BytesCData::new(v.as_str())));
        }
        let _ = w.write_event(Event::End(BytesEnd::new(k.as_str())));
    }
    let _ = w.write_event(Event::End(BytesEnd::new(root)));
    String::from_utf8(w.into_inner()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_every_field() {
        let mut f = Fields::new();
        f.insert("body".into(), "茶 <tea> & ]]> more".into());
        f.insert("total_fee".into(), "1".into());
        f.insert("unknown_new_field".into(), "x".into());
        let xml = encode(&f);
        assert_eq!(decode(xml.as_bytes()), Ok(f));
    }

    #[test]
    fn refuses_hostile_input() {
        let xxe = br#"<?xml version="1.0"?><!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><xml><a>&xxe;</a></xml>"#;
        assert_eq!(decode(xxe), Err(XmlError::Doctype));
        assert_eq!(
            decode(&vec![b' '; MAX_BODY + 1]),
            Err(XmlError::TooLarge(MAX_BODY + 1))
        );
        assert_eq!(
            decode(b"<xml><a><b>1</b></a></xml>"),
            Err(XmlError::TooDeep)
        );
        assert_eq!(decode(b"<xml><a>\xff</a></xml>"), Err(XmlError::NotUtf8));
        assert_eq!(
            decode(b"<other><a>1</a></other>"),
            Err(XmlError::WrongRoot { expected: "xml" })
        );
        assert_eq!(
            decode(b"<xml><a>1</a><a>2</a></xml>"),
            Err(XmlError::Duplicate("a".into()))
        );
        assert!(matches!(
            decode(b"<xml><a>&foo;</a></xml>"),
            Err(XmlError::Malformed(_))
        ));
        assert!(matches!(
            decode(b"<xml><a>1</b></xml>"),
            Err(XmlError::Malformed(_))
        ));
        assert_eq!(decode(b""), Err(XmlError::Empty));
    }

    /// Found by `cargo fuzz run` (xml_decode, notify_verify): `<a</>` was read as a field named `a<`, which
    /// `encode` then wrote as a tag that does not read back.
    #[test]
    fn refuses_field_names_that_are_not_xml_names() {
        for body in [
            &b"<xml><<//></xml>"[..],
            b"<xml><],.**\x02<//></xml>",
            b"<xml><a</></xml>",
            b"<xml><a<>1</a<></xml>",
            b"<xml><1a>1</1a></xml>",
            b"<xml><-a/></xml>",
            b"<xml><a&b>1</a&b></xml>",
        ] {
            assert!(
                matches!(decode(body), Err(XmlError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        let mut f = Fields::new();
        for name in ["coupon_fee_0", "a.b-c", "ns:x", "_x", "字段"] {
            f.insert(name.into(), "v".into());
        }
        assert_eq!(decode(encode(&f).as_bytes()), Ok(f));
    }
}
