//! Refund notifications: the outer `<xml>` carries no `sign`; the facts are in `req_info`,
//! AES-256-ECB encrypted with key = the ASCII of lowercase hex `md5(api_key)`.
//!
//! Authenticity comes only from that encryption, so decryption is strict: standard base64,
//! whole 16-byte blocks, exact PKCS#7 padding with 16-byte blocks (wechatpy's 32-byte padding
//! is refused, as WeChat never sends it), then the same hardened XML decoder with a `<root>`
//! element. ECB has no integrity check, so callers must still match `out_refund_no`, amounts
//! and merchant ids against their own records. [`encrypt_req_info`] lets the sandbox produce
//! the real thing.
//!
//! Like payments, this is a hot path (docs/PERFORMANCE.md): both XML layers are scanned with
//! borrowed fields ([`super::flat`]), `req_info` is base64-decoded into one buffer and
//! decrypted in place, and the notification keeps the two bodies (the outer one as received,
//! the decrypted `<root>`) rather than two owned field maps, decoding them again only when
//! asked ([`RefundNotification::outer`], [`RefundNotification::fields`]).

use super::flat;
use super::notify::{check_merchant_ids, decode_checked, NotifyError};
use super::sign::Fields;
use super::types::{Reader, RefundStatus};
use super::xml;
use crate::domain::{Fen, OutRefundNo, OutTradeNo};
use aes::cipher::crypto_common::InnerInit;
use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, KeyInit};
use base64::Engine;
use md5::{Digest, Md5};

type Dec = ecb::Decryptor<aes::Aes256Dec>;
type Enc = ecb::Encryptor<aes::Aes256>;

/// A decrypted, typed refund notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundNotification {
    pub appid: String,
    pub mch_id: String,
    pub sub_appid: Option<String>,
    pub sub_mch_id: Option<String>,
    pub out_trade_no: OutTradeNo,
    pub out_refund_no: OutRefundNo,
    pub transaction_id: String,
    pub refund_id: String,
    pub total_fee: Fen,
    pub refund_fee: Fen,
    pub settlement_total_fee: Option<Fen>,
    pub settlement_refund_fee: Option<Fen>,
    pub refund_status: RefundStatus,
    /// `success_time` (Beijing `yyyy-MM-dd HH:mm:ss`) as epoch ms; present on SUCCESS.
    pub success_time_ms: Option<i64>,
    pub refund_account: Option<String>,
    /// `refund_recv_accout` (sic): where the money went, e.g. "支付用户零钱".
    pub refund_recv_account: Option<String>,
    pub refund_request_source: Option<String>,
    /// The outer body as received (`req_info` still encrypted).
    outer_body: Box<[u8]>,
    /// The decrypted `<root>` XML.
    plaintext: Vec<u8>,
}

impl RefundNotification {
    /// Refuses a notification addressed to another merchant or app (outer fields). In
    /// provider mode `sub_mch_id` must be ours; `sub_appid` must be ours when it is sent, but
    /// may be left out: WeChat's provider refund notification marks it optional (否), and
    /// these outer fields are not signed anyway — the notification is WeChat's because
    /// `req_info` decrypts under our key — so requiring it refused genuine refunds (and
    /// raised the unverified-notification alarm on each) without refusing any forgery.
    pub fn check_merchant(
        &self,
        appid: &str,
        mch_id: &str,
        sub_appid: Option<&str>,
        sub_mch_id: Option<&str>,
    ) -> Result<(), NotifyError> {
        check_refund_merchant(
            [
                Some(&self.appid),
                Some(&self.mch_id),
                self.sub_appid.as_deref(),
                self.sub_mch_id.as_deref(),
            ],
            [appid, mch_id],
            sub_appid,
            sub_mch_id,
        )
    }

    /// The outer message's fields without `req_info` (the ciphertext is no use to anyone
    /// downstream). Decoded again from the body: only rare paths need every field.
    pub fn outer(&self) -> Fields {
        // The body decoded once already; decoding is deterministic.
        let mut outer = xml::decode(&self.outer_body).unwrap_or_default();
        outer.remove("req_info");
        outer
    }

    /// The decrypted `<root>` fields, decoded again from the plaintext.
    pub fn fields(&self) -> Fields {
        xml::decode_root(&self.plaintext, "root").unwrap_or_default()
    }
}

/// [`RefundNotification::check_merchant`] over the outer ids as sent (`appid`, `mch_id`,
/// `sub_appid`, `sub_mch_id`), for a notification whose inner fields did not read
/// ([`NotifyError::RefundFields`]).
pub fn check_refund_merchant(
    sent: [Option<&str>; 4],
    [appid, mch_id]: [&str; 2],
    sub_appid: Option<&str>,
    sub_mch_id: Option<&str>,
) -> Result<(), NotifyError> {
    let [sent_appid, sent_mch_id, sent_sub_appid, sent_sub_mch_id] = sent;
    let sent_sub_appid = sent_sub_appid.filter(|s| !s.is_empty());
    check_merchant_ids(
        [
            sent_appid,
            sent_mch_id,
            sent_sub_appid.or(sub_appid),
            sent_sub_mch_id,
        ],
        [Some(appid), Some(mch_id), sub_appid, sub_mch_id],
    )
}

/// The AES-256 key: the 32 ASCII bytes of lowercase hex md5(api_key).
fn aes_key(api_key: &str) -> [u8; 32] {
    let digest = Md5::digest(api_key.as_bytes());
    let mut key = [0u8; 32];
    // hex of 16 bytes is exactly 32 ASCII bytes.
    let _ = hex::encode_to_slice(digest, &mut key);
    key
}

/// The key refund notifications are decrypted with — AES-256 keyed with the 32 ASCII bytes of
/// lowercase hex `md5(api_key)` — with its key schedule. Derived once (`App` holds one) rather
/// than per notification: the MD5 and the key expansion were a tenth of a refund's
/// instructions (docs/PERFORMANCE.md).
#[derive(Clone)]
pub struct RefundKey(aes::Aes256Dec);

impl RefundKey {
    pub fn new(api_key: &str) -> Self {
        RefundKey(aes::Aes256Dec::new(&aes_key(api_key).into()))
    }

    /// Decrypts `req_info` to its plaintext bytes (the `<root>` XML): one buffer, decrypted
    /// in place.
    pub fn decrypt_req_info(&self, req_info: &str) -> Result<Vec<u8>, NotifyError> {
        let mut data = decode_base64(req_info)?;
        if data.is_empty() || data.len() % 16 != 0 {
            return Err(NotifyError::Decrypt);
        }
        let len = Dec::inner_init(self.0.clone())
            .decrypt_padded_mut::<Pkcs7>(&mut data)
            .map_err(|_| NotifyError::Decrypt)?
            .len();
        data.truncate(len);
        Ok(data)
    }

    /// [`parse_refund_notification`] with this key.
    pub fn parse_notification(&self, body: &[u8]) -> Result<RefundNotification, NotifyError> {
        parse_with(body, self)
    }
}

impl std::fmt::Debug for RefundKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefundKey(<redacted>)")
    }
}

/// Standard base64 (padded, canonical): SIMD first; what it refuses goes to the `base64`
/// crate, after removing whitespace (invalid base64, so only a body with line breaks is
/// compacted), whose verdict stands. Both are strict in the same way (a differential test).
fn decode_base64(text: &str) -> Result<Vec<u8>, NotifyError> {
    if let Ok(d) = base64_simd::STANDARD.decode_to_vec(text) {
        return Ok(d);
    }
    let compact: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|_| NotifyError::Base64)
}

/// Decrypts `req_info` to its plaintext bytes (the `<root>` XML). Derives the key on every
/// call; a server keeps a [`RefundKey`].
pub fn decrypt_req_info(req_info: &str, api_key: &str) -> Result<Vec<u8>, NotifyError> {
    RefundKey::new(api_key).decrypt_req_info(req_info)
}

/// Encrypts a `<root>` plaintext as WeChat does (standard 16-byte PKCS#7), base64.
pub fn encrypt_req_info(plaintext: &str, api_key: &str) -> String {
    let key = aes_key(api_key);
    let ct = Enc::new(&key.into()).encrypt_padded_vec_mut::<Pkcs7>(plaintext.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(ct)
}

/// Parses a refund notification body: outer XML, `return_code`, decrypt, inner XML, types.
/// Derives the key on every call; a server keeps a [`RefundKey`] and calls
/// [`RefundKey::parse_notification`].
pub fn parse_refund_notification(
    body: &[u8],
    api_key: &str,
) -> Result<RefundNotification, NotifyError> {
    parse_with(body, &RefundKey::new(api_key))
}

fn parse_with(body: &[u8], key: &RefundKey) -> Result<RefundNotification, NotifyError> {
    let outer = decode_checked(body)?;
    let r = Reader(&outer);
    let appid = r.req_string("appid")?;
    let mch_id = r.req_string("mch_id")?;
    let sub_appid = r.opt_string("sub_appid");
    let sub_mch_id = r.opt_string("sub_mch_id");
    let plaintext = key.decrypt_req_info(r.req("req_info")?)?;
    let inner = flat::scan_root(&plaintext, "root").map_err(NotifyError::InnerXml)?;
    let i = Reader(&inner);
    // Decrypted under our key: WeChat's, so a field that does not read is ours to look at,
    // not junk (the caller counts and keeps it).
    let typed = || -> Result<_, NotifyError> {
        Ok((
            OutTradeNo::parse(i.req("out_trade_no")?)?,
            OutRefundNo::parse(i.req("out_refund_no")?)?,
            i.req_string("transaction_id")?,
            i.req_string("refund_id")?,
            (i.fen("total_fee")?, i.fen("refund_fee")?),
            (
                i.opt_fen("settlement_total_fee")?,
                i.opt_fen("settlement_refund_fee")?,
            ),
            RefundStatus::parse(i.req("refund_status")?),
            i.opt_datetime("success_time")?,
        ))
    };
    let (
        out_trade_no,
        out_refund_no,
        transaction_id,
        refund_id,
        (total_fee, refund_fee),
        (settlement_total_fee, settlement_refund_fee),
        refund_status,
        success_time_ms,
    ) = typed().map_err(|error| NotifyError::RefundFields {
        error: Box::new(error),
        fields: Box::new(xml::decode_root(&plaintext, "root").unwrap_or_default()),
    })?;
    Ok(RefundNotification {
        appid,
        mch_id,
        sub_appid,
        sub_mch_id,
        out_trade_no,
        out_refund_no,
        transaction_id,
        refund_id,
        total_fee,
        refund_fee,
        settlement_total_fee,
        settlement_refund_fee,
        refund_status,
        success_time_ms,
        refund_account: i.opt_string("refund_account"),
        refund_recv_account: i.opt_string("refund_recv_accout"),
        refund_request_source: i.opt_string("refund_request_source"),
        outer_body: body.into(),
        // Last: the fields above borrow from it.
        plaintext,
    })
}

/// What the sandbox needs to produce a genuine refund notification.
#[derive(Clone, Debug)]
pub struct RefundNotificationSpec {
    pub appid: String,
    pub mch_id: String,
    pub sub_appid: Option<String>,
    pub sub_mch_id: Option<String>,
    pub out_trade_no: OutTradeNo,
    pub out_refund_no: OutRefundNo,
    pub transaction_id: String,
    pub refund_id: String,
    pub total_fee: Fen,
    pub refund_fee: Fen,
    pub refund_status: RefundStatus,
    pub success_time_ms: Option<i64>,
}

/// A refund notification body, as WeChat would post it.
pub fn build_refund_notification(spec: &RefundNotificationSpec, api_key: &str) -> String {
    let mut inner = Fields::new();
    let mut put = |k: &str, v: String| {
        inner.insert(k.to_owned(), v);
    };
    put("out_trade_no", spec.out_trade_no.to_string());
    put("out_refund_no", spec.out_refund_no.to_string());
    put("transaction_id", spec.transaction_id.clone());
    put("refund_id", spec.refund_id.clone());
    put("total_fee", spec.total_fee.to_string());
    put("settlement_total_fee", spec.total_fee.to_string());
    put("refund_fee", spec.refund_fee.to_string());
    put("settlement_refund_fee", spec.refund_fee.to_string());
    put("refund_status", spec.refund_status.as_str().to_owned());
    if let Some(ms) = spec.success_time_ms {
        put("success_time", crate::time::beijing_datetime(ms));
    }
    put("refund_recv_accout", "支付用户零钱".to_owned());
    put("refund_account", "REFUND_SOURCE_UNSETTLED_FUNDS".to_owned());
    put("refund_request_source", "API".to_owned());
    let plaintext = xml::encode_root(&inner, "root");

    let mut outer = Fields::new();
    outer.insert("return_code".into(), "SUCCESS".into());
    outer.insert("appid".into(), spec.appid.clone());
    outer.insert("mch_id".into(), spec.mch_id.clone());
    if let Some(s) = &spec.sub_appid {
        outer.insert("sub_appid".into(), s.clone());
    }
    if let Some(s) = &spec.sub_mch_id {
        outer.insert("sub_mch_id".into(), s.clone());
    }
    outer.insert("nonce_str".into(), crate::domain::random_alnum(32));
    outer.insert("req_info".into(), encrypt_req_info(&plaintext, api_key));
    xml::encode(&outer)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const KEY: &str = "192006250b4c09247ec02edce69f6a2d";

    #[test]
    fn aes_key_is_ascii_hex_md5() {
        assert_eq!(
            &aes_key("ziR0QKsTUfMOuochC9RfCdmfHECorQAP"),
            b"a1fdc4d1da9fb443b1091d34bcee9493"
        );
    }

    /// A refund of 40 of 100 fen to merchant 10000100 (sub-merchant `sub_mch_id`).
    fn spec(sub_mch_id: Option<&str>) -> RefundNotificationSpec {
        RefundNotificationSpec {
            appid: "wx1".into(),
            mch_id: "10000100".into(),
            sub_appid: None,
            sub_mch_id: sub_mch_id.map(Into::into),
            out_trade_no: OutTradeNo::parse("1409811653").unwrap(),
            out_refund_no: OutRefundNo::parse("R1409811653").unwrap(),
            transaction_id: "4200000215201811190261405420".into(),
            refund_id: "50000408942018111907145868882".into(),
            total_fee: Fen::new(100).unwrap(),
            refund_fee: Fen::new(40).unwrap(),
            refund_status: RefundStatus::Success,
            success_time_ms: Some(1_409_721_340_000),
        }
    }

    #[test]
    fn built_notification_parses_back() {
        let spec = spec(Some("1900000109"));
        let body = build_refund_notification(&spec, KEY);
        let n = parse_refund_notification(body.as_bytes(), KEY).unwrap();
        assert_eq!(n.refund_fee.get(), 40);
        assert_eq!(n.refund_status, RefundStatus::Success);
        assert_eq!(n.success_time_ms, Some(1_409_721_340_000));
        assert_eq!(n.sub_mch_id.as_deref(), Some("1900000109"));
        assert!(!n.outer().contains_key("req_info"));
        assert_eq!(n.outer()["mch_id"], "10000100");
        assert_eq!(n.fields()["refund_fee"], "40");
        assert!(n
            .check_merchant("wx1", "10000100", None, Some("1900000109"))
            .is_ok());
        assert_eq!(
            parse_refund_notification(body.as_bytes(), "another-key-another-key-another-k")
                .map(|_| ()),
            Err(NotifyError::Decrypt)
        );
    }

    /// Provider mode: `sub_mch_id` must be ours; `sub_appid` may be left out, and when sent
    /// must be ours. Direct mode: a notification naming a sub-merchant is not ours.
    #[test]
    fn provider_refunds_may_leave_out_the_sub_appid() {
        let parsed = |sub_appid: Option<&str>, sub_mch_id: Option<&str>| {
            let mut spec = spec(sub_mch_id);
            spec.sub_appid = sub_appid.map(Into::into);
            let body = build_refund_notification(&spec, KEY);
            parse_refund_notification(body.as_bytes(), KEY).unwrap()
        };
        let ours = |n: &RefundNotification| {
            n.check_merchant("wx1", "10000100", Some("wxsub"), Some("1900000109"))
                .map_err(|e| e.to_string())
        };
        assert_eq!(ours(&parsed(None, Some("1900000109"))), Ok(()));
        assert_eq!(ours(&parsed(Some("wxsub"), Some("1900000109"))), Ok(()));
        assert!(ours(&parsed(Some("wxother"), Some("1900000109"))).is_err());
        assert!(ours(&parsed(None, None)).is_err());
        assert!(ours(&parsed(None, Some("1900000999"))).is_err());
        assert!(parsed(Some("wxsub"), None)
            .check_merchant("wx1", "10000100", None, None)
            .is_err());
    }

    #[test]
    fn padding_is_strict() {
        // A block whose padding byte is 0x20 (> 16) must be refused, as must a bad base64.
        let key = aes_key(KEY);
        let mut block = [b'a'; 32];
        block[16..].fill(0x20);
        let mut buf = block.to_vec();
        let ct = Enc::new(&key.into())
            .encrypt_padded_mut::<aes::cipher::block_padding::NoPadding>(&mut buf, 32)
            .unwrap()
            .to_vec();
        let b64 = base64::engine::general_purpose::STANDARD.encode(ct);
        assert_eq!(decrypt_req_info(&b64, KEY), Err(NotifyError::Decrypt));
        assert_eq!(decrypt_req_info("!!!", KEY), Err(NotifyError::Base64));
        assert_eq!(decrypt_req_info("", KEY), Err(NotifyError::Decrypt));
        assert_eq!(decrypt_req_info("AAAA", KEY), Err(NotifyError::Decrypt));
    }

    /// What `decrypt_req_info` decoded before the SIMD decoder: the `base64` crate, and on
    /// failure the same after removing whitespace.
    fn crate_base64(text: &str) -> Option<Vec<u8>> {
        let engine = base64::engine::general_purpose::STANDARD;
        engine.decode(text).ok().or_else(|| {
            let compact: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
            engine.decode(compact).ok()
        })
    }

    #[test]
    fn base64_edges_agree_with_the_crate() {
        for text in [
            "",
            "=",
            "==",
            "AA",
            "AA=",
            "AA==",
            "AAA",
            "AAA=",
            "AAAA",
            "AAB=",
            "AB==",
            "QQ==",
            "QR==",
            "QUI=",
            "QUJ=",
            "QUJD",
            "QUJD\n",
            "QU\nJD",
            " QUJD",
            "QUJD ",
            "QUJD====",
            "QUJDRA==",
            "QUJDRA=",
            "QUJDRA",
            "Q===",
            "QUJD\r\nRA==",
            "QUJ-",
            "QUJ_",
            "QUJ+",
            "QUJ/",
            "QUJDRA==QUJD",
            "\u{e9}QUJD",
            "QUJD\0",
        ] {
            assert_eq!(decode_base64(text).ok(), crate_base64(text), "{text:?}");
        }
        // Longer than the SIMD decoder's blocks, with the same edges at the end.
        let long = base64::engine::general_purpose::STANDARD.encode([7u8; 301]);
        assert_eq!(decode_base64(&long).ok(), crate_base64(&long));
        let wrapped: String = long
            .as_bytes()
            .chunks(76)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join("\r\n");
        assert_eq!(decode_base64(&wrapped).ok(), Some(vec![7u8; 301]));
        let mut bad_tail = long.clone();
        bad_tail.pop();
        bad_tail.push('B'); // non-zero trailing bits before the padding
        let mut t = long[..long.len() - 2].to_owned();
        t.push_str("B=");
        for text in [bad_tail, t] {
            assert_eq!(decode_base64(&text).ok(), crate_base64(&text), "{text:?}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]
        /// The SIMD decoder (with the crate for what it refuses) accepts exactly what the
        /// `base64` crate accepted, with the same bytes: base64-shaped text with padding,
        /// whitespace, URL-safe and foreign characters mixed in, of every length.
        #[test]
        fn base64_agrees_with_the_crate(
            text in "[A-Za-z0-9+/=\\-_ \r\n\t.é]{0,200}",
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            cut in 0usize..4,
        ) {
            proptest::prop_assert_eq!(decode_base64(&text).ok(), crate_base64(&text));
            // Valid encodings, cut short or given a foreign tail.
            let good = base64::engine::general_purpose::STANDARD.encode(&bytes);
            let cut = &good[..good.len().saturating_sub(cut)];
            proptest::prop_assert_eq!(decode_base64(cut).ok(), crate_base64(cut));
            let tail: String = text.chars().take(3).collect();
            let tailed = format!("{good}{tail}");
            proptest::prop_assert_eq!(decode_base64(&tailed).ok(), crate_base64(&tailed));
        }
    }

    #[test]
    fn a_kept_key_parses_like_the_api_key() {
        let spec = spec(None);
        let body = build_refund_notification(&spec, KEY);
        let key = RefundKey::new(KEY);
        let kept = key.parse_notification(body.as_bytes()).unwrap();
        let derived = parse_refund_notification(body.as_bytes(), KEY).unwrap();
        assert_eq!(kept.fields(), derived.fields());
        assert_eq!(kept.refund_fee, derived.refund_fee);
        assert_eq!(
            RefundKey::new("another-key-another-key-another-k")
                .parse_notification(body.as_bytes())
                .map(|_| ()),
            Err(NotifyError::Decrypt)
        );
        // The key is a secret: never printed.
        assert_eq!(format!("{key:?}"), "RefundKey(<redacted>)");
    }
}
