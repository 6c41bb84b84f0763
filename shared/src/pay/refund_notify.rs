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
use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, KeyInit};
use base64::Engine;
use md5::{Digest, Md5};

type Dec = ecb::Decryptor<aes::Aes256>;
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
    /// Refuses a notification addressed to another merchant or app (outer fields).
    pub fn check_merchant(
        &self,
        appid: &str,
        mch_id: &str,
        sub_appid: Option<&str>,
        sub_mch_id: Option<&str>,
    ) -> Result<(), NotifyError> {
        check_merchant_ids(
            [
                Some(&self.appid),
                Some(&self.mch_id),
                self.sub_appid.as_deref(),
                self.sub_mch_id.as_deref(),
            ],
            [Some(appid), Some(mch_id), sub_appid, sub_mch_id],
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

/// The AES-256 key: the 32 ASCII bytes of lowercase hex md5(api_key).
fn aes_key(api_key: &str) -> [u8; 32] {
    let digest = Md5::digest(api_key.as_bytes());
    let mut key = [0u8; 32];
    // hex of 16 bytes is exactly 32 ASCII bytes.
    let _ = hex::encode_to_slice(digest, &mut key);
    key
}

/// Decrypts `req_info` to its plaintext bytes (the `<root>` XML): one buffer, decrypted in
/// place.
pub fn decrypt_req_info(req_info: &str, api_key: &str) -> Result<Vec<u8>, NotifyError> {
    let engine = base64::engine::general_purpose::STANDARD;
    // Whitespace is invalid base64, so a body with none decodes on the first try; only one
    // with line breaks is compacted first (same result, no scan of every body).
    let mut data = match engine.decode(req_info) {
        Ok(d) => d,
        Err(_) => {
            let compact: Vec<u8> = req_info
                .bytes()
                .filter(|c| !c.is_ascii_whitespace())
                .collect();
            engine.decode(compact).map_err(|_| NotifyError::Base64)?
        }
    };
    if data.is_empty() || data.len() % 16 != 0 {
        return Err(NotifyError::Decrypt);
    }
    let key = aes_key(api_key);
    let len = Dec::new(&key.into())
        .decrypt_padded_mut::<Pkcs7>(&mut data)
        .map_err(|_| NotifyError::Decrypt)?
        .len();
    data.truncate(len);
    Ok(data)
}

/// Encrypts a `<root>` plaintext as WeChat does (standard 16-byte PKCS#7), base64.
pub fn encrypt_req_info(plaintext: &str, api_key: &str) -> String {
    let key = aes_key(api_key);
    let ct = Enc::new(&key.into()).encrypt_padded_vec_mut::<Pkcs7>(plaintext.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(ct)
}

/// Parses a refund notification body: outer XML, `return_code`, decrypt, inner XML, types.
pub fn parse_refund_notification(
    body: &[u8],
    api_key: &str,
) -> Result<RefundNotification, NotifyError> {
    let outer = decode_checked(body)?;
    let r = Reader(&outer);
    let appid = r.req_string("appid")?;
    let mch_id = r.req_string("mch_id")?;
    let sub_appid = r.opt_string("sub_appid");
    let sub_mch_id = r.opt_string("sub_mch_id");
    let plaintext = decrypt_req_info(r.req("req_info")?, api_key)?;
    let inner = flat::scan_root(&plaintext, "root").map_err(NotifyError::InnerXml)?;
    let i = Reader(&inner);
    Ok(RefundNotification {
        appid,
        mch_id,
        sub_appid,
        sub_mch_id,
        out_trade_no: OutTradeNo::parse(i.req("out_trade_no")?)?,
        out_refund_no: OutRefundNo::parse(i.req("out_refund_no")?)?,
        transaction_id: i.req_string("transaction_id")?,
        refund_id: i.req_string("refund_id")?,
        total_fee: i.fen("total_fee")?,
        refund_fee: i.fen("refund_fee")?,
        settlement_total_fee: i.opt_fen("settlement_total_fee")?,
        settlement_refund_fee: i.opt_fen("settlement_refund_fee")?,
        refund_status: RefundStatus::parse(i.req("refund_status")?),
        success_time_ms: i.opt_datetime("success_time")?,
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

    #[test]
    fn built_notification_parses_back() {
        let spec = RefundNotificationSpec {
            appid: "wx1".into(),
            mch_id: "10000100".into(),
            sub_appid: None,
            sub_mch_id: Some("1900000109".into()),
            out_trade_no: OutTradeNo::parse("1409811653").unwrap(),
            out_refund_no: OutRefundNo::parse("R1409811653").unwrap(),
            transaction_id: "4200000215201811190261405420".into(),
            refund_id: "50000408942018111907145868882".into(),
            total_fee: Fen::new(100).unwrap(),
            refund_fee: Fen::new(40).unwrap(),
            refund_status: RefundStatus::Success,
            success_time_ms: Some(1_409_721_340_000),
        };
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
}
