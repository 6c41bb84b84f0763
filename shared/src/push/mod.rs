//! Message push from the WeChat platform: URL verification, signatures, safe mode, typed events.
//!
//! The platform pushes product/brand/category audit verdicts, order and after-sale events and
//! funds notices to one URL (`/callbacks/wechat`). Anyone on the internet can post to that URL,
//! so nothing in a push is believed until it is verified:
//!
//! 1. `GET` — [`verify_url`]: `signature` = sha1 of the sorted `token`, `timestamp`, `nonce`;
//!    on a match the handler answers with `echostr` (WECHAT_SHOP.md §9.2).
//! 2. `POST` — [`parse`]: in plaintext mode the same `signature` is checked; in safe mode
//!    (`encrypt_type=aes`) `msg_signature` is checked over the `Encrypt` value *before* the
//!    AES-256-CBC decryption, and the appid inside the plaintext must be ours (§9.3). With no
//!    key configured, a compatible-mode push (`encrypt_type=aes`, the message in the clear
//!    beside `Encrypt`) is read as the plaintext-mode push it also is: the console can be
//!    moved to compatible mode before the key is deployed, and no push is lost on the way.
//! 3. The message (XML or JSON, chosen by its first byte) becomes a [`PushMessage`]: the common
//!    header plus the whole body as JSON (XML is flattened to JSON so both formats look alike),
//!    and [`PushMessage::event`] derives the typed [`PushEvent`].
//! 4. The handler records the event idempotently under [`PushEvent::dedupe_key`] — the
//!    platform redelivers — and answers [`reply_success`].
//!
//! XML is hostile input (CVE-2018-13439 was an XXE in WeChat's own SDK). `crate::pay::xml`
//! only reads flat messages, while events nest (`order_info`, `promotion_detail_info`) and
//! repeat elements (`scene_group_ext_list`), so `tree` holds a small tree parser with the same
//! rules: DOCTYPE refused, body capped at [`MAX_BODY`], nesting capped at [`MAX_DEPTH`].
//!
//! [`encrypt`], [`encrypt_reply`] and [`sign`] exist so the local WeChat sandbox and the tests
//! produce genuine pushes with the very code that checks them. The AES key and the token are
//! never formatted: [`PushConfig`]'s `Debug` redacts them and no error carries them.

mod crypto;
pub mod events;
mod message;
mod signature;
mod tree;

pub use crypto::{decode_aes_key, decrypt, encrypt_payload, encrypt_payload_with, PushConfig};
pub use events::{
    AccountRegister, AfterSaleEventKind, AfterSaleInfo, AuditVerdict, Complaint, EventError,
    EventHead, OrderPay, OrderRef, OrderSettle, PushEvent, QualificationAudit, ReceiveCoupon,
    SceneGroupAudit, SceneGroupExt, SpuAudit, SpuStatusUpdate, WithdrawNotify,
};
pub use message::{
    decode_message, decode_stored, encrypt, encrypt_reply, parse, Format, PushMessage,
};
pub use signature::{msg_signature, sign, verify_url, PushQuery};

/// Largest push body (envelope or decrypted message) accepted. Real events are ~1 KiB; an
/// order with a long promotion list a few KiB.
pub const MAX_BODY: usize = 256 * 1024;
/// Deepest nesting accepted, counting the root element/object as 1 (JSON arrays count too).
/// The deepest documented event (`order_info.promotion_detail_info…goods_detail`) needs 6.
pub const MAX_DEPTH: usize = 8;

/// The reply that stops the platform's retries for every shop event (§9.4). Send it with
/// HTTP 200 only after the event is durably recorded.
pub fn reply_success() -> &'static str {
    "success"
}

/// Why a push was refused. Each failure has its own variant so the handler can tell forgery
/// (signature), misconfiguration (key, appid) and garbage (format) apart; none carries a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    #[error("query parameter `{0}` is missing")]
    MissingParam(&'static str),
    #[error("query parameter `timestamp` must be decimal digits")]
    BadTimestamp,
    #[error("`signature` does not match: the sender does not know WX_PUSH_TOKEN")]
    BadSignature,
    #[error("`msg_signature` does not match the `Encrypt` value: forged or altered push")]
    BadMsgSignature,
    #[error("encrypt_type `{0}` is not supported (only `aes`)")]
    UnsupportedEncryptType(String),
    #[error("a safe-mode push arrived but no EncodingAESKey is configured: set WX_PUSH_AES_KEY")]
    NoAesKey,
    #[error("the EncodingAESKey must be the 43 base64 characters from the message push settings")]
    BadAesKey,
    #[error("the push token is empty: set WX_PUSH_TOKEN")]
    EmptyToken,
    #[error("the appid is empty: set WX_APPID")]
    EmptyAppId,
    #[error("`Encrypt` is not valid base64")]
    BadBase64,
    #[error("ciphertext is {0} bytes; AES-CBC needs a positive multiple of 16")]
    BadCiphertextLength(usize),
    #[error("PKCS#7 pad byte {0} is outside 1..=32: wrong EncodingAESKey?")]
    BadPaddingValue(u8),
    #[error("PKCS#7 padding bytes are inconsistent: wrong EncodingAESKey?")]
    InconsistentPadding,
    #[error("the decrypted message length field does not fit the plaintext")]
    BadMessageLength,
    #[error("the decrypted message is for appid `{got}`, not ours: check WX_APPID")]
    WrongAppId { got: String },
    #[error("body is empty")]
    Empty,
    #[error("body is {len} bytes; at most {max} accepted")]
    TooLarge { len: usize, max: usize },
    #[error("body is neither XML (`<`) nor JSON (`{{`)")]
    UnknownFormat,
    #[error("body is not UTF-8")]
    NotUtf8,
    #[error("DOCTYPE and entity declarations are refused")]
    Doctype,
    #[error("nesting deeper than {0} levels is refused")]
    TooDeep(usize),
    #[error("malformed XML: {0}")]
    MalformedXml(String),
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("the encrypted envelope has no `Encrypt` value")]
    MissingEncrypt,
    #[error("message field `{0}` is missing or not text")]
    MissingField(&'static str),
    #[error("message field `CreateTime` must be a whole number of seconds")]
    BadCreateTime,
}

impl PushError {
    /// The `SCREAMING_SNAKE` code for the `{"code","message"}` error body.
    pub fn code(&self) -> &'static str {
        use PushError::*;
        match self {
            MissingParam(_) | BadTimestamp => "PUSH_BAD_QUERY",
            BadSignature | BadMsgSignature => "PUSH_BAD_SIGNATURE",
            UnsupportedEncryptType(_) => "PUSH_UNSUPPORTED_ENCRYPT_TYPE",
            NoAesKey | BadAesKey | EmptyToken | EmptyAppId => "PUSH_NOT_CONFIGURED",
            BadBase64
            | BadCiphertextLength(_)
            | BadPaddingValue(_)
            | InconsistentPadding
            | BadMessageLength => "PUSH_DECRYPT_FAILED",
            WrongAppId { .. } => "PUSH_WRONG_APPID",
            TooLarge { .. } => "PUSH_TOO_LARGE",
            Empty | UnknownFormat | NotUtf8 | Doctype | TooDeep(_) | MalformedXml(_)
            | MalformedJson(_) | MissingEncrypt | MissingField(_) | BadCreateTime => {
                "PUSH_MALFORMED"
            }
        }
    }

    /// True when the sender could not prove it knows our token: answer 401, log as a probe.
    pub fn is_unauthenticated(&self) -> bool {
        matches!(
            self,
            PushError::BadSignature | PushError::BadMsgSignature | PushError::MissingParam(_)
        )
    }

    /// True when our own configuration is at fault (key, token, appid): page someone. [`parse`]
    /// reports these only for a push signed with our token, and it decrypts only after
    /// `msg_signature` verified, so a push that then does not decrypt (or names another appid)
    /// came from WeChat: our EncodingAESKey (or WX_APPID) is not the console's.
    pub fn is_misconfiguration(&self) -> bool {
        matches!(
            self,
            PushError::NoAesKey
                | PushError::BadAesKey
                | PushError::EmptyToken
                | PushError::EmptyAppId
                | PushError::WrongAppId { .. }
                | PushError::BadBase64
                | PushError::BadCiphertextLength(_)
                | PushError::BadPaddingValue(_)
                | PushError::InconsistentPadding
                | PushError::BadMessageLength
        )
    }
}
