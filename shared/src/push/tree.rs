//! A hardened XML reader that turns a push message into the JSON shape WeChat uses for the same
//! message in JSON format, so one typed layer serves both.
//!
//! Mapping: the `<xml>` root becomes an object; an element with child elements becomes an
//! object; a leaf becomes a string (text and CDATA, numbers too); a repeated element becomes an
//! array (a single occurrence stays an object/string — the typed layer accepts one or many);
//! attributes are ignored. Refused: DOCTYPE (and so any entity declaration), undefined entity
//! references, processing instructions, text mixed with child elements, more than one root,
//! non-UTF-8 bytes, bodies over [`MAX_BODY`] and nesting deeper than [`MAX_DEPTH`].

use super::{PushError, MAX_BODY, MAX_DEPTH};
use quick_xml::events::Event;
use quick_xml::Reader;
use serde_json::{Map, Value};

/// An element being read: its children so far and its text pieces (`true` = CDATA).
struct Frame {
    name: String,
    children: Map<String, Value>,
    text: Vec<(bool, String)>,
}

impl Frame {
    fn new(name: String) -> Self {
        Frame {
            name,
            children: Map::new(),
            text: Vec::new(),
        }
    }

    /// The element's value. Whitespace-only text around CDATA or children is layout, not data.
    fn finish(self) -> Result<(String, Value), PushError> {
        let has_cdata = self.text.iter().any(|(cdata, _)| *cdata);
        let meaningful = |(cdata, s): &(bool, String)| *cdata || !s.trim().is_empty();
        if !self.children.is_empty() {
            if self.text.iter().any(meaningful) {
                return Err(PushError::MalformedXml(format!(
                    "<{}> mixes text and elements",
                    self.name
                )));
            }
            return Ok((self.name, Value::Object(self.children)));
        }
        let text: String = self
            .text
            .into_iter()
            .filter(|p| !has_cdata || meaningful(p))
            .map(|(_, s)| s)
            .collect();
        Ok((self.name, Value::String(text)))
    }

    fn add_child(&mut self, name: String, value: Value) {
        match self.children.get_mut(&name) {
            None => {
                self.children.insert(name, value);
            }
            Some(Value::Array(items)) => items.push(value),
            Some(existing) => {
                let first = existing.take();
                *existing = Value::Array(vec![first, value]);
            }
        }
    }
}

fn malformed(e: impl std::fmt::Display) -> PushError {
    PushError::MalformedXml(e.to_string())
}

fn element_name(raw: &[u8]) -> Result<String, PushError> {
    std::str::from_utf8(raw)
        .map(str::to_owned)
        .map_err(|_| PushError::NotUtf8)
}

/// Parses an `<xml>…</xml>` push message into a JSON object.
pub(crate) fn parse_xml(body: &[u8]) -> Result<Map<String, Value>, PushError> {
    if body.len() > MAX_BODY {
        return Err(PushError::TooLarge {
            len: body.len(),
            max: MAX_BODY,
        });
    }
    let text = std::str::from_utf8(body).map_err(|_| PushError::NotUtf8)?;
    let text = text.trim_start_matches('\u{feff}');
    if text.trim().is_empty() {
        return Err(PushError::Empty);
    }
    let mut reader = Reader::from_str(text);
    reader.config_mut().trim_text(false);
    reader.config_mut().check_end_names = true;
    reader.config_mut().expand_empty_elements = false;

    let mut stack: Vec<Frame> = Vec::new();
    let mut root: Option<Map<String, Value>> = None;

    loop {
        match reader.read_event().map_err(malformed)? {
            Event::DocType(_) => return Err(PushError::Doctype),
            Event::Decl(_) | Event::Comment(_) => {}
            Event::PI(_) => return Err(malformed("processing instructions are refused")),
            Event::Start(e) => {
                let name = element_name(e.name().as_ref())?;
                open(&stack, &root, &name)?;
                stack.push(Frame::new(name));
            }
            Event::Empty(e) => {
                let name = element_name(e.name().as_ref())?;
                open(&stack, &root, &name)?;
                match stack.last_mut() {
                    Some(parent) => parent.add_child(name, Value::String(String::new())),
                    None => root = Some(Map::new()),
                }
            }
            Event::Text(t) => {
                let s = t.unescape().map_err(malformed)?;
                match stack.last_mut() {
                    Some(top) => top.text.push((false, s.into_owned())),
                    None if s.trim().is_empty() => {}
                    None => return Err(malformed("text outside the root element")),
                }
            }
            Event::CData(c) => {
                let s = std::str::from_utf8(&c).map_err(|_| PushError::NotUtf8)?;
                match stack.last_mut() {
                    Some(top) => top.text.push((true, s.to_owned())),
                    None => return Err(malformed("CDATA outside the root element")),
                }
            }
            Event::End(_) => {
                let frame = stack.pop().ok_or_else(|| malformed("unbalanced end tag"))?;
                let (name, value) = frame.finish()?;
                match stack.last_mut() {
                    Some(parent) => parent.add_child(name, value),
                    None => {
                        root = Some(match value {
                            Value::Object(m) => m,
                            // `<xml></xml>` or `<xml>text</xml>`: no fields.
                            _ => Map::new(),
                        })
                    }
                }
            }
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(malformed("unclosed element"));
    }
    root.ok_or_else(|| malformed("no root element"))
}

/// Checks an element may open here: one `<xml>` root, depth within the cap.
fn open(stack: &[Frame], root: &Option<Map<String, Value>>, name: &str) -> Result<(), PushError> {
    if stack.is_empty() {
        if root.is_some() {
            return Err(malformed("more than one root element"));
        }
        if name != "xml" {
            return Err(malformed(format!("root element is <{name}>, not <xml>")));
        }
    }
    if stack.len() + 1 > MAX_DEPTH {
        return Err(PushError::TooDeep(MAX_DEPTH));
    }
    Ok(())
}

/// Depth of a JSON value: scalars 0, each object or array one level.
pub(crate) fn json_depth(v: &Value) -> usize {
    match v {
        Value::Object(m) => 1 + m.values().map(json_depth).max().unwrap_or(0),
        Value::Array(a) => 1 + a.iter().map(json_depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Writes `s` as XML character data: CDATA, or escaped text if it contains `]]>`.
pub(crate) fn cdata(s: &str) -> String {
    if s.contains("]]>") {
        quick_xml::escape::escape(s).into_owned()
    } else {
        format!("<![CDATA[{s}]]>")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn flattens_like_the_json_format() {
        let xml = br#"<xml>
  <ToUserName><![CDATA[gh_1]]></ToUserName>
  <CreateTime>17</CreateTime>
  <SceneGroupAudit>
    <group_id>7</group_id>
    <scene_group_ext_list><ext_id>1</ext_id><status>1</status></scene_group_ext_list>
    <scene_group_ext_list><ext_id>2</ext_id><status>2</status></scene_group_ext_list>
  </SceneGroupAudit>
  <Empty/><Blank></Blank><Amp>a &amp; b</Amp>
</xml>"#;
        let v = Value::Object(parse_xml(xml).unwrap());
        assert_eq!(
            v,
            json!({"ToUserName":"gh_1","CreateTime":"17",
                   "SceneGroupAudit":{"group_id":"7","scene_group_ext_list":[
                       {"ext_id":"1","status":"1"},{"ext_id":"2","status":"2"}]},
                   "Empty":"","Blank":"","Amp":"a & b"})
        );
    }

    #[test]
    fn refuses_hostile_shapes() {
        assert_eq!(
            parse_xml(br#"<!DOCTYPE x [<!ENTITY e "boom">]><xml><a>&e;</a></xml>"#),
            Err(PushError::Doctype)
        );
        assert!(matches!(
            parse_xml(b"<xml><a>&e;</a></xml>"),
            Err(PushError::MalformedXml(_))
        ));
        assert!(matches!(
            parse_xml(b"<xml><a>x<b/></a></xml>"),
            Err(PushError::MalformedXml(_))
        ));
        assert!(matches!(
            parse_xml(b"<xml></xml><xml></xml>"),
            Err(PushError::MalformedXml(_))
        ));
        assert!(matches!(
            parse_xml(b"<root></root>"),
            Err(PushError::MalformedXml(_))
        ));
        assert!(matches!(
            parse_xml(b"<xml><a>"),
            Err(PushError::MalformedXml(_))
        ));
        let deep = format!(
            "<xml>{}{}</xml>",
            "<a>".repeat(MAX_DEPTH),
            "</a>".repeat(MAX_DEPTH)
        );
        assert_eq!(
            parse_xml(deep.as_bytes()),
            Err(PushError::TooDeep(MAX_DEPTH))
        );
        let ok = format!(
            "<xml>{}{}</xml>",
            "<a>".repeat(MAX_DEPTH - 1),
            "</a>".repeat(MAX_DEPTH - 1)
        );
        assert!(parse_xml(ok.as_bytes()).is_ok());
    }

    #[test]
    fn cdata_escapes_terminator() {
        assert_eq!(cdata("a<b"), "<![CDATA[a<b]]>");
        assert_eq!(cdata("x]]>y"), "x]]&gt;y");
    }
}
