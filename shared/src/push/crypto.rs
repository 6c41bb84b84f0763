//! Safe-mode encryption (§9.3): AES-256-CBC, key from the 43-character EncodingAESKey,
//! IV = the key's first 16 bytes, PKCS#7 padding over a **32-byte** block (so `NoPadding` in
//! the cipher and the padding done by hand), plaintext =
//! `random[16] || be_u32(len) || msg || appid`.
//!
//! Decryption is strict where WxJava is lenient: a pad byte outside 1..=32, padding bytes that
//! disagree, a length field that overruns, or an appid that is not ours are each refused with
//! their own error. Callers verify `msg_signature` before calling [`decrypt`], so these errors
//! are no padding oracle.

use super::PushError;
use aes::Aes256;
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use std::fmt;

/// PKCS#7 block size used by WeChat's message encryption (not AES's 16).
const PAD_BLOCK: usize = 32;

/// The EncodingAESKey is 43 random characters: its last character carries 2 bits beyond the
/// 256-bit key, which WeChat does not keep zero, so those bits must be ignored (as Java's
/// decoders do); with or without the `=`.
const KEY_ENGINE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// What a push endpoint needs to know: our appid, the push Token and, in safe mode, the AES
/// key. `Debug` prints neither the token nor the key.
#[derive(Clone, PartialEq, Eq)]
pub struct PushConfig {
    /// The mini program's AppID; the decrypted plaintext must end with it.
    pub appid: String,
    /// The Token from the message push settings.
    pub token: String,
    /// The decoded EncodingAESKey; `None` = plaintext mode only.
    pub aes_key: Option<[u8; 32]>,
}

impl fmt::Debug for PushConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushConfig")
            .field("appid", &self.appid)
            .field("token", &"<redacted>")
            .field("aes_key", &self.aes_key.map(|_| "<redacted>"))
            .finish()
    }
}

impl PushConfig {
    /// `encoding_aes_key` is the 43-character EncodingAESKey as shown in the console.
    pub fn new(
        appid: impl Into<String>,
        token: impl Into<String>,
        encoding_aes_key: Option<&str>,
    ) -> Result<Self, PushError> {
        let appid = appid.into();
        let token = token.into();
        if appid.is_empty() {
            return Err(PushError::EmptyAppId);
        }
        if token.is_empty() {
            return Err(PushError::EmptyToken);
        }
        let aes_key = encoding_aes_key
            .filter(|k| !k.trim().is_empty())
            .map(decode_aes_key)
            .transpose()?;
        Ok(PushConfig {
            appid,
            token,
            aes_key,
        })
    }

    /// From the process configuration (`WX_APPID`, `WX_PUSH_TOKEN`, `WX_PUSH_AES_KEY`).
    pub fn from_config(cfg: &crate::config::Config) -> Result<Self, PushError> {
        use secrecy::ExposeSecret;
        PushConfig::new(
            cfg.appid.clone(),
            cfg.push_token.expose_secret(),
            cfg.push_aes_key.as_ref().map(|k| k.expose_secret()),
        )
    }

    fn key(&self) -> Result<&[u8; 32], PushError> {
        self.aes_key.as_ref().ok_or(PushError::NoAesKey)
    }
}

/// Decodes a 43-character EncodingAESKey (`[A-Za-z0-9+/]`, an optional trailing `=`) into the
/// 32-byte AES key.
pub fn decode_aes_key(encoding_aes_key: &str) -> Result<[u8; 32], PushError> {
    let k = encoding_aes_key.trim();
    let k = k.strip_suffix('=').unwrap_or(k);
    if k.len() != 43
        || !k
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
    {
        return Err(PushError::BadAesKey);
    }
    let bytes = KEY_ENGINE.decode(k).map_err(|_| PushError::BadAesKey)?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| PushError::BadAesKey)
}

/// Decrypts a base64 `Encrypt` value and returns the message, after checking the padding, the
/// length field and that the trailing appid is `cfg.appid`. Verify `msg_signature` first.
pub fn decrypt(cfg: &PushConfig, encrypt: &str) -> Result<Vec<u8>, PushError> {
    let key = cfg.key()?;
    let mut buf = STANDARD
        .decode(encrypt.trim())
        .map_err(|_| PushError::BadBase64)?;
    if buf.is_empty() || buf.len() % 16 != 0 {
        return Err(PushError::BadCiphertextLength(buf.len()));
    }
    let iv = iv_of(key);
    let cipher_len = buf.len();
    let plain = cbc::Decryptor::<Aes256>::new(key.into(), (&iv).into())
        .decrypt_padded_mut::<NoPadding>(&mut buf)
        .map_err(|_| PushError::BadCiphertextLength(cipher_len))?;

    let content = strip_pkcs7(plain)?;
    if content.len() < 20 {
        return Err(PushError::BadMessageLength);
    }
    let len_bytes: [u8; 4] = [content[16], content[17], content[18], content[19]];
    let msg_len = u32::from_be_bytes(len_bytes) as usize;
    let rest = &content[20..];
    if msg_len > rest.len() {
        return Err(PushError::BadMessageLength);
    }
    let (msg, appid) = rest.split_at(msg_len);
    if appid != cfg.appid.as_bytes() {
        let got: String = String::from_utf8_lossy(appid).chars().take(64).collect();
        return Err(PushError::WrongAppId { got });
    }
    Ok(msg.to_vec())
}

/// Encrypts a message for `cfg.appid` with fresh random bytes; returns the base64 `Encrypt`.
pub fn encrypt_payload(cfg: &PushConfig, msg: &[u8]) -> Result<String, PushError> {
    encrypt_payload_with(cfg, rand::random::<[u8; 16]>(), msg)
}

/// [`encrypt_payload`] with the 16 leading bytes given (for known-answer tests).
pub fn encrypt_payload_with(
    cfg: &PushConfig,
    random: [u8; 16],
    msg: &[u8],
) -> Result<String, PushError> {
    let key = cfg.key()?;
    let len = u32::try_from(msg.len()).map_err(|_| PushError::TooLarge {
        len: msg.len(),
        max: u32::MAX as usize,
    })?;
    let mut buf = Vec::with_capacity(20 + msg.len() + cfg.appid.len() + PAD_BLOCK);
    buf.extend_from_slice(&random);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(msg);
    buf.extend_from_slice(cfg.appid.as_bytes());
    let pad = PAD_BLOCK - buf.len() % PAD_BLOCK; // 1..=32
    buf.resize(buf.len() + pad, pad as u8);
    let iv = iv_of(key);
    let cipher = cbc::Encryptor::<Aes256>::new(key.into(), (&iv).into())
        .encrypt_padded_vec_mut::<NoPadding>(&buf);
    Ok(STANDARD.encode(cipher))
}

/// The IV is the key's first 16 bytes.
fn iv_of(key: &[u8; 32]) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv.copy_from_slice(&key[..16]);
    iv
}

/// Removes PKCS#7 padding defined over 32-byte blocks.
fn strip_pkcs7(plain: &[u8]) -> Result<&[u8], PushError> {
    let pad = *plain.last().ok_or(PushError::BadMessageLength)?;
    if pad == 0 || pad as usize > PAD_BLOCK {
        return Err(PushError::BadPaddingValue(pad));
    }
    let pad = pad as usize;
    if pad > plain.len() {
        return Err(PushError::InconsistentPadding);
    }
    let (content, padding) = plain.split_at(plain.len() - pad);
    if padding.iter().any(|&b| b as usize != pad) {
        return Err(PushError::InconsistentPadding);
    }
    Ok(content)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    fn cfg() -> PushConfig {
        PushConfig::new(
            "wxb11529c136998cb6",
            "pamtest",
            Some("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"),
        )
        .unwrap()
    }

    /// Known answer from WeChat's own SDK tests (WxCryptUtilTest): random
    /// "aaaabbbbccccdddd", message "我是中文abcd123". The key's last character has non-zero
    /// trailing bits, so this also proves the lenient key decoding.
    #[test]
    fn matches_wechat_sdk_known_answer() {
        let expected = "jn1L23DB+6ELqJ+6bruv21Y6MD7KeIfP82D6gU39rmkgczbWwt5+3bnyg5K55bgVtVzd832WzZGMhkP72vVOfg==";
        let got = encrypt_payload_with(&cfg(), *b"aaaabbbbccccdddd", "我是中文abcd123".as_bytes())
            .unwrap();
        assert_eq!(got, expected);
        assert_eq!(
            decrypt(&cfg(), expected).unwrap(),
            "我是中文abcd123".as_bytes()
        );
    }

    #[test]
    fn padding_is_strict() {
        assert_eq!(strip_pkcs7(&[1, 2, 0]), Err(PushError::BadPaddingValue(0)));
        assert_eq!(strip_pkcs7(&[33; 40]), Err(PushError::BadPaddingValue(33)));
        assert_eq!(
            strip_pkcs7(&[1, 3, 2, 3]),
            Err(PushError::InconsistentPadding)
        );
        assert_eq!(strip_pkcs7(&[9, 2, 2]), Ok(&[9u8][..]));
        assert_eq!(strip_pkcs7(&[32; 32]), Ok(&[][..]));
    }

    #[test]
    fn key_must_be_43_chars() {
        assert_eq!(decode_aes_key("short"), Err(PushError::BadAesKey));
        assert_eq!(
            decode_aes_key("abcdefghijklmnopqrstuvwxyz0123456789ABCDEF!"),
            Err(PushError::BadAesKey)
        );
        let k = decode_aes_key("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG").unwrap();
        assert_eq!(
            decode_aes_key("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG=").unwrap(),
            k
        );
    }

    #[test]
    fn debug_redacts_secrets() {
        let s = format!("{:?}", cfg());
        assert!(!s.contains("pamtest"));
        assert!(s.contains("wxb11529c136998cb6"));
        assert!(s.contains("<redacted>"));
    }
}
