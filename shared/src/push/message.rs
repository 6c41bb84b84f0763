//! A push request → a verified [`PushMessage`], and the reverse for the sandbox.
//!
//! The body format is not configured here: WeChat sends XML or JSON depending on a console
//! setting that can change at any time (§9.1), so each body (the envelope and, in safe mode,
//! the decrypted message) is read according to its first non-space byte, `<` or `{`.

use super::crypto::{decrypt, encrypt_payload, PushConfig};
use super::signature::{check_timestamp, digest_eq, msg_signature, PushQuery};
use super::tree::{cdata, json_depth, parse_xml};
use super::{PushError, MAX_BODY, MAX_DEPTH};
use serde_json::{Map, Value};

/// The wire format of a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Xml,
    Json,
}

impl Format {
    /// `<` → XML, `{` → JSON, judged on the first byte that is not whitespace (or a BOM).
    pub fn detect(body: &[u8]) -> Result<Format, PushError> {
        let body = body.strip_prefix("\u{feff}".as_bytes()).unwrap_or(body);
        match body.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'<') => Ok(Format::Xml),
            Some(b'{') => Ok(Format::Json),
            Some(_) => Err(PushError::UnknownFormat),
            None => Err(PushError::Empty),
        }
    }
}

/// One verified push message: the common header and the whole message as JSON (XML flattened
/// so that both formats look alike; numbers from XML are strings).
#[derive(Debug, Clone, PartialEq)]
pub struct PushMessage {
    /// Format of the message itself (in safe mode, of the decrypted plaintext).
    pub format: Format,
    /// Whether it arrived encrypted (safe or compatible mode).
    pub encrypted: bool,
    /// The mini program's original id, `gh_…`.
    pub to_user_name: String,
    /// The sender: a fixed WeChat-team openid for platform events.
    pub from_user_name: String,
    /// Unix seconds.
    pub create_time: u64,
    /// `event` for every shop event.
    pub msg_type: String,
    /// The `Event` name, when `MsgType` is `event`.
    pub event: Option<String>,
    /// Every field of the message, header included.
    pub raw: Map<String, Value>,
}

impl PushMessage {
    /// The typed event (see [`super::events`]).
    pub fn event(&self) -> Result<super::PushEvent, super::EventError> {
        super::PushEvent::from_message(self)
    }
}

/// Verifies and reads a `POST` push: checks `timestamp`, then in plaintext mode `signature`,
/// in safe mode (`encrypt_type=aes`) `msg_signature` over `Encrypt` (and `signature` when
/// present), decrypts, checks the appid, and parses the message. Without a key, a
/// compatible-mode push (`encrypt_type=aes`, the message in the clear beside `Encrypt`) is
/// read as a plaintext-mode one.
pub fn parse(query: &PushQuery, body: &[u8], cfg: &PushConfig) -> Result<PushMessage, PushError> {
    check_size(body)?;
    if cfg.token.is_empty() {
        return Err(PushError::EmptyToken);
    }
    let (timestamp, nonce) = query.timestamp_nonce()?;
    match PushQuery::get(&query.encrypt_type) {
        None | Some("raw") => {
            // With an EncodingAESKey configured we are in safe mode: the body must be
            // authenticated by `msg_signature`. The plain `signature` covers only token,
            // timestamp and nonce, so a plaintext body under it could be anything.
            query.check_signature(&cfg.token)?;
            let message = read_message(body, false)?;
            if cfg.aes_key.is_some() {
                return Err(PushError::MissingParam("msg_signature"));
            }
            Ok(message)
        }
        Some("aes") if cfg.aes_key.is_none() => {
            // Compatible mode carries the message in the clear beside `Encrypt`. Without a key
            // it is read as the plaintext-mode push it also is (`signature` and, over the
            // `Encrypt` it cannot read, `msg_signature` checked; the handler holds it to one
            // body near its time, as every plaintext push: neither signature covers the clear
            // fields), so the console can go to compatible mode before WX_PUSH_AES_KEY reaches
            // every instance and no push is refused on the way to safe mode. The unreadable
            // `Encrypt` is not kept. A safe-mode envelope (ciphertext only) needs the key.
            query.check_signature(&cfg.token)?;
            let envelope = read_object(body)?;
            signed_encrypt(query, &cfg.token, (timestamp, nonce), &envelope)?;
            let mut message = read_message(body, false).map_err(|e| match e {
                PushError::MissingField(_) => PushError::NoAesKey,
                e => e,
            })?;
            message.raw.remove("Encrypt");
            Ok(message)
        }
        Some("aes") => {
            if PushQuery::get(&query.signature).is_some() {
                query.check_signature(&cfg.token)?;
            }
            let envelope = read_object(body)?;
            let encrypt = signed_encrypt(query, &cfg.token, (timestamp, nonce), &envelope)?;
            let plain = decrypt(cfg, encrypt)?;
            read_message(&plain, true)
        }
        Some(other) => Err(PushError::UnsupportedEncryptType(
            other.chars().take(16).collect(),
        )),
    }
}

/// The `Encrypt` value of an `encrypt_type=aes` envelope, once `msg_signature` over it (with
/// token, timestamp and nonce) verified — before anything decrypts or trusts it.
fn signed_encrypt<'a>(
    query: &PushQuery,
    token: &str,
    (timestamp, nonce): (&str, &str),
    envelope: &'a Map<String, Value>,
) -> Result<&'a str, PushError> {
    let given =
        PushQuery::get(&query.msg_signature).ok_or(PushError::MissingParam("msg_signature"))?;
    let encrypt = match envelope.get("Encrypt") {
        Some(Value::String(s)) if !s.is_empty() => s.as_str(),
        _ => return Err(PushError::MissingEncrypt),
    };
    if !digest_eq(&msg_signature(token, timestamp, nonce, encrypt), given) {
        return Err(PushError::BadMsgSignature);
    }
    Ok(encrypt)
}

/// Reads a plaintext message without any verification — for bodies that were verified some
/// other way (tests, the sandbox, a replay from our own store).
pub fn decode_message(body: &[u8]) -> Result<PushMessage, PushError> {
    check_size(body)?;
    read_message(body, false)
}

/// Reads a push body we stored after verifying it on arrival (`auditCallback` keeps the body
/// as received): a safe-mode envelope is decrypted (its `msg_signature` was checked then, and
/// the query that carried it is not kept), a plaintext message is read as it is.
pub fn decode_stored(body: &[u8], cfg: &PushConfig) -> Result<PushMessage, PushError> {
    let envelope = read_object(body)?;
    match envelope.get("Encrypt") {
        Some(Value::String(encrypt)) if !encrypt.is_empty() => {
            let plain = decrypt(cfg, encrypt)?;
            read_message(&plain, true)
        }
        _ => read_message(body, false),
    }
}

/// Encrypts a message as a genuine safe-mode push: returns the envelope body (XML or JSON, the
/// same format as `msg`) and its `msg_signature`. Query: `PushQuery::signed_aes`.
pub fn encrypt(
    cfg: &PushConfig,
    msg: &str,
    timestamp: &str,
    nonce: &str,
) -> Result<(String, String), PushError> {
    check_timestamp(timestamp)?;
    let message = decode_message(msg.as_bytes())?;
    let encrypted = encrypt_payload(cfg, msg.as_bytes())?;
    let signature = msg_signature(&cfg.token, timestamp, nonce, &encrypted);
    let envelope = match message.format {
        Format::Xml => format!(
            "<xml><ToUserName>{}</ToUserName><Encrypt>{}</Encrypt></xml>",
            cdata(&message.to_user_name),
            cdata(&encrypted)
        ),
        Format::Json => {
            serde_json::json!({"ToUserName": message.to_user_name, "Encrypt": encrypted})
                .to_string()
        }
    };
    Ok((envelope, signature))
}

/// Encrypts a structured passive reply (only `open_product_receive_coupon` needs one) in the
/// format of `msg`: `Encrypt`, `MsgSignature`, `TimeStamp`, `Nonce` (§9.3).
pub fn encrypt_reply(
    cfg: &PushConfig,
    msg: &str,
    timestamp: &str,
    nonce: &str,
) -> Result<String, PushError> {
    check_timestamp(timestamp)?;
    let format = Format::detect(msg.as_bytes())?;
    let encrypted = encrypt_payload(cfg, msg.as_bytes())?;
    let signature = msg_signature(&cfg.token, timestamp, nonce, &encrypted);
    Ok(match format {
        Format::Xml => format!(
            "<xml><Encrypt>{}</Encrypt><MsgSignature>{}</MsgSignature><TimeStamp>{}</TimeStamp><Nonce>{}</Nonce></xml>",
            cdata(&encrypted),
            cdata(&signature),
            timestamp,
            cdata(nonce)
        ),
        Format::Json => serde_json::json!({
            "Encrypt": encrypted, "MsgSignature": signature, "TimeStamp": timestamp, "Nonce": nonce
        })
        .to_string(),
    })
}

fn check_size(body: &[u8]) -> Result<(), PushError> {
    if body.len() > MAX_BODY {
        return Err(PushError::TooLarge {
            len: body.len(),
            max: MAX_BODY,
        });
    }
    Ok(())
}

/// A body (envelope or message) as a JSON object, whatever its format.
fn read_object(body: &[u8]) -> Result<Map<String, Value>, PushError> {
    check_size(body)?;
    match Format::detect(body)? {
        Format::Xml => parse_xml(body),
        Format::Json => {
            let text = std::str::from_utf8(body).map_err(|_| PushError::NotUtf8)?;
            let text = text.trim_start_matches('\u{feff}');
            let value: Value = serde_json::from_str(text).map_err(|e| {
                if e.to_string().contains("recursion limit") {
                    PushError::TooDeep(MAX_DEPTH)
                } else {
                    PushError::MalformedJson(e.to_string())
                }
            })?;
            if json_depth(&value) > MAX_DEPTH {
                return Err(PushError::TooDeep(MAX_DEPTH));
            }
            match value {
                Value::Object(m) => Ok(m),
                _ => Err(PushError::MalformedJson("not an object".into())),
            }
        }
    }
}

fn read_message(body: &[u8], encrypted: bool) -> Result<PushMessage, PushError> {
    let format = Format::detect(body)?;
    let raw = read_object(body)?;
    let text = |k: &'static str| -> Result<String, PushError> {
        match raw.get(k) {
            Some(Value::String(s)) => Ok(s.clone()),
            _ => Err(PushError::MissingField(k)),
        }
    };
    let create_time = match raw.get("CreateTime") {
        Some(Value::Number(n)) => n.as_u64().ok_or(PushError::BadCreateTime)?,
        Some(Value::String(s)) => s.trim().parse().map_err(|_| PushError::BadCreateTime)?,
        _ => return Err(PushError::MissingField("CreateTime")),
    };
    let event = match raw.get("Event") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(PushError::MissingField("Event")),
    };
    Ok(PushMessage {
        format,
        encrypted,
        to_user_name: text("ToUserName")?,
        from_user_name: text("FromUserName")?,
        create_time,
        msg_type: text("MsgType")?,
        event,
        raw,
    })
}
