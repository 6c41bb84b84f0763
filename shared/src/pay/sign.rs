//! APIv2 signatures: MD5 or HMAC-SHA256 over the sorted, non-empty fields plus `&key=`.
//!
//! Always over the raw field map as received — never a typed struct, which drops fields
//! WeChat adds over time and breaks verification (gopay#45, WxJava#266/#1407).

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;
use std::collections::BTreeMap;
use subtle::ConstantTimeEq;

/// The flat field map of one v2 message. `BTreeMap` sorts keys by bytes, as signing needs.
pub type Fields = BTreeMap<String, String>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum SignType {
    #[default]
    #[serde(rename = "MD5")]
    Md5,
    #[serde(rename = "HMAC-SHA256")]
    HmacSha256,
}

impl SignType {
    pub fn as_str(self) -> &'static str {
        match self {
            SignType::Md5 => "MD5",
            SignType::HmacSha256 => "HMAC-SHA256",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "MD5" => Some(SignType::Md5),
            "HMAC-SHA256" => Some(SignType::HmacSha256),
            _ => None,
        }
    }

    fn hex_len(self) -> usize {
        match self {
            SignType::Md5 => 32,
            SignType::HmacSha256 => 64,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("message has no sign")]
    MissingSign,
    #[error("sign is empty")]
    EmptySign,
    #[error("unknown sign_type `{0}`")]
    UnknownSignType(String),
    #[error("sign has {0} characters; expected 32 (MD5) or 64 (HMAC-SHA256)")]
    BadLength(usize),
    #[error("sign does not match")]
    Mismatch,
}

/// Feeds `k=v&…&key=KEY` (fields in byte-sorted key order; `sign` and empty values skipped)
/// to `update` in pieces of up to 1 KiB, gathered in a stack buffer.
fn canonical<'a, I>(fields: I, key: &str, mut update: impl FnMut(&[u8]))
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    const CHUNK: usize = 1024;
    let mut buf = [0u8; CHUNK];
    let mut len = 0;
    let pairs = fields
        .into_iter()
        .filter(|(k, v)| *k != "sign" && !v.is_empty())
        .map(|(k, v)| (k.as_bytes(), b'=', v.as_bytes(), b'&'));
    let last = std::iter::once((&b"key"[..], b'=', key.as_bytes(), 0));
    for (k, eq, v, amp) in pairs.chain(last) {
        let need = k.len() + v.len() + 2;
        if len + need > CHUNK {
            update(&buf[..len]);
            len = 0;
            if need > CHUNK {
                update(k);
                update(&[eq]);
                update(v);
                if amp != 0 {
                    update(&[amp]);
                }
                continue;
            }
        }
        copy_short(&mut buf[len..len + k.len()], k);
        len += k.len();
        buf[len] = eq;
        len += 1;
        copy_short(&mut buf[len..len + v.len()], v);
        len += v.len();
        if amp != 0 {
            buf[len] = amp;
            len += 1;
        }
    }
    update(&buf[..len]);
}

/// `dst.copy_from_slice(src)` without a `memcpy` call for up to 32 bytes (names and most
/// values of a message): the first and the last 16, 8 or 4 bytes, overlapping.
#[inline(always)]
fn copy_short(dst: &mut [u8], src: &[u8]) {
    fn ends<const N: usize>(dst: &mut [u8], src: &[u8]) {
        if let (Some(d), Some(s)) = (dst.first_chunk_mut::<N>(), src.first_chunk::<N>()) {
            *d = *s;
        }
        if let (Some(d), Some(s)) = (dst.last_chunk_mut::<N>(), src.last_chunk::<N>()) {
            *d = *s;
        }
    }
    match src.len() {
        n if n != dst.len() || n > 32 => dst.copy_from_slice(src),
        16.. => ends::<16>(dst, src),
        8.. => ends::<8>(dst, src),
        4.. => ends::<4>(dst, src),
        _ => {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = *s;
            }
        }
    }
}

/// The raw digest of fields given in byte-sorted key order into `out`; returns its length
/// (16 for MD5, 32 for HMAC-SHA256).
///
/// The canonical string is gathered in a stack buffer and handed to the hash in a few large
/// pieces: feeding MD5/HMAC dozens of 1–30-byte pieces costs more than copying them, and a
/// heap buffer costs an allocation per message (docs/PERFORMANCE.md, callgrind).
fn digest_sorted<'a, I>(fields: I, key: &str, sign_type: SignType, out: &mut [u8; 32]) -> usize
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    match sign_type {
        SignType::Md5 => {
            let mut h = Md5::new();
            canonical(fields, key, |b| h.update(b));
            out[..16].copy_from_slice(&h.finalize());
            16
        }
        SignType::HmacSha256 => {
            // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
            let Ok(mut m) = Hmac::<Sha256>::new_from_slice(key.as_bytes()) else {
                return 0;
            };
            canonical(fields, key, |b| m.update(b));
            out.copy_from_slice(&m.finalize().into_bytes());
            32
        }
    }
}

/// Uppercase hex of `raw` into `out` (which must be twice as long).
fn hex_upper_into(raw: &[u8], out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for (i, b) in raw.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0x0f)];
    }
}

/// `a == b` in constant time: the eight words' differences ORed together, then one
/// constant-time test (`subtle`'s loop over 64 single bytes cost ~10 times as much).
fn same_ct(a: &[u8; 64], b: &[u8; 64]) -> bool {
    let word = |c: &[u8]| c.first_chunk::<8>().map_or(0, |w| u64::from_ne_bytes(*w));
    let diff = a
        .chunks_exact(8)
        .zip(b.chunks_exact(8))
        .fold(0u64, |d, (x, y)| d | (word(x) ^ word(y)));
    bool::from(diff.ct_eq(&0))
}

/// Signs fields given in byte-sorted key order (as a `BTreeMap` iterates).
pub fn sign_sorted<'a, I>(fields: I, key: &str, sign_type: SignType) -> String
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    let mut raw = [0u8; 32];
    let n = digest_sorted(fields, key, sign_type, &mut raw);
    if n == 0 {
        return String::new();
    }
    hex::encode_upper(&raw[..n])
}

/// The signature of `fields` (its own `sign` ignored).
pub fn sign(fields: &Fields, key: &str, sign_type: SignType) -> String {
    sign_sorted(
        fields.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        key,
        sign_type,
    )
}

/// Adds `nonce_str` if missing, `sign_type` when HMAC, and `sign`.
pub fn sign_in_place(fields: &mut Fields, key: &str, sign_type: SignType) {
    if fields.get("nonce_str").is_none_or(String::is_empty) {
        fields.insert("nonce_str".into(), crate::domain::random_alnum(32));
    }
    if sign_type == SignType::HmacSha256 {
        fields.insert("sign_type".into(), sign_type.as_str().into());
    }
    let s = sign(fields, key, sign_type);
    fields.insert("sign".into(), s);
}

/// Signs `fields` (see [`sign_in_place`]) and serialises them as an `<xml>` message — what a
/// request to WeChat, a sandbox reply and a sandbox notification all are.
pub fn signed_xml(mut fields: Fields, key: &str, sign_type: SignType) -> String {
    sign_in_place(&mut fields, key, sign_type);
    super::xml::encode(&fields)
}

/// The algorithm a received message was signed with: `sign_type` if present, else the
/// signature's length (HMAC notifications may come without `sign_type`, WxJava#1585).
pub fn detect_sign_type(fields: &Fields) -> Result<SignType, VerifyError> {
    detect(
        fields.get("sign").map(String::as_str),
        fields.get("sign_type").map(String::as_str),
    )
}

/// [`detect_sign_type`] given the received `sign` and `sign_type` values.
fn detect(sign: Option<&str>, sign_type: Option<&str>) -> Result<SignType, VerifyError> {
    let sign = sign.ok_or(VerifyError::MissingSign)?;
    if sign.is_empty() {
        return Err(VerifyError::EmptySign);
    }
    let by_len = match sign.len() {
        32 => SignType::Md5,
        64 => SignType::HmacSha256,
        n => return Err(VerifyError::BadLength(n)),
    };
    match sign_type.filter(|s| !s.is_empty()) {
        Some(st) => {
            let declared = SignType::parse(st)
                .ok_or_else(|| VerifyError::UnknownSignType(st.chars().take(20).collect()))?;
            if declared.hex_len() != sign.len() {
                return Err(VerifyError::BadLength(sign.len()));
            }
            Ok(declared)
        }
        None => Ok(by_len),
    }
}

/// Verifies a received message over all its non-empty fields, in constant time. A missing
/// or empty `sign` fails; it is never skipped.
pub fn verify(fields: &Fields, key: &str) -> Result<SignType, VerifyError> {
    verify_sorted(
        fields.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        fields.get("sign").map(String::as_str),
        fields.get("sign_type").map(String::as_str),
        key,
    )
}

/// [`verify`] over fields given in byte-sorted key order with unique names (as
/// [`super::flat::Flat`] holds them), plus their `sign` and `sign_type` values.
pub fn verify_sorted<'a, I>(
    fields: I,
    sign: Option<&str>,
    sign_type: Option<&str>,
    key: &str,
) -> Result<SignType, VerifyError>
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    let sign_type = detect(sign, sign_type)?;
    let mut raw = [0u8; 32];
    let n = digest_sorted(fields, key, sign_type, &mut raw);
    let mut expected = [0u8; 64];
    hex_upper_into(&raw[..n], &mut expected[..2 * n]);
    let got = sign.map(str::as_bytes).unwrap_or_default();
    // WeChat sends uppercase hex; accept lowercase too, comparing in constant time (no
    // allocation: `detect` has checked the length).
    let mut got_upper = [0u8; 64];
    if n == 0 || got.len() != 2 * n {
        return Err(VerifyError::Mismatch);
    }
    for (d, s) in got_upper.iter_mut().zip(got) {
        *d = s.to_ascii_uppercase();
    }
    // Both buffers are zero past `2 * n`, so all 64 bytes compare.
    if same_ct(&expected, &got_upper) {
        Ok(sign_type)
    } else {
        Err(VerifyError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Fields {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn short_copies_copy_every_byte() {
        let src: Vec<u8> = (1..=40).collect();
        for n in 0..=40 {
            let mut dst = vec![0u8; n];
            copy_short(&mut dst, &src[..n]);
            assert_eq!(dst, src[..n], "length {n}");
        }
    }

    #[test]
    fn the_constant_time_compare_sees_every_byte() {
        let a = [b'A'; 64];
        assert!(same_ct(&a, &a));
        for i in 0..64 {
            let mut b = a;
            b[i] ^= 1;
            assert!(!same_ct(&a, &b), "byte {i}");
        }
    }

    #[test]
    fn official_example() {
        let f = fields(&[
            ("appid", "wxd930ea5d5a258f4f"),
            ("mch_id", "10000100"),
            ("device_info", "1000"),
            ("body", "test"),
            ("nonce_str", "ibuaiVcKdpRxkhJA"),
        ]);
        let key = "192006250b4c09247ec02edce69f6a2d";
        assert_eq!(
            sign(&f, key, SignType::Md5),
            "9A0A8659F005D6984697E2CA0A9CF3B7"
        );
        assert_eq!(
            sign(&f, key, SignType::HmacSha256),
            "6A9AE1657590FD6257D693A078E1C3E4BB6BA4DC30B23E0EE2496E54170DACD6"
        );
    }

    #[test]
    fn empty_values_and_sign_are_skipped() {
        let key = "k";
        let a = fields(&[("a", "1"), ("b", "")]);
        let b = fields(&[("a", "1"), ("sign", "X")]);
        assert_eq!(sign(&a, key, SignType::Md5), sign(&b, key, SignType::Md5));
    }

    #[test]
    fn verify_requires_sign_and_detects_algorithm() {
        let key = "192006250b4c09247ec02edce69f6a2d";
        let mut f = fields(&[("test1", "test1"), ("test2", "test2")]);
        assert_eq!(verify(&f, key), Err(VerifyError::MissingSign));
        f.insert("sign".into(), String::new());
        assert_eq!(verify(&f, key), Err(VerifyError::EmptySign));
        f.insert(
            "sign".into(),
            "EDAC6D70D2FDF5A2382F8204FC96A1918017E46ACC5297F565ED1A7610ACF659".into(),
        );
        assert_eq!(verify(&f, key), Ok(SignType::HmacSha256));
        f.insert("sign".into(), "1E3A8D73B5A4AEE787C0F68B5DAB8520".into());
        assert_eq!(verify(&f, key), Ok(SignType::Md5));
        f.insert("sign".into(), "1E3A8D73B5A4AEE787C0F68B5DAB852".into());
        assert_eq!(verify(&f, key), Err(VerifyError::BadLength(31)));
        f.insert("sign".into(), "0E3A8D73B5A4AEE787C0F68B5DAB8520".into());
        assert_eq!(verify(&f, key), Err(VerifyError::Mismatch));
    }
}
