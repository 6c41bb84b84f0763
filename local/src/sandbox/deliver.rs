//! Everything the sandbox sends: payment and refund notifications (to the order's
//! `notify_url`) and platform message pushes (to `push_url`).
//!
//! Why a module of its own: delivery is where WeChat's behaviour is least like a function
//! call and where handlers break in production — retries until the exact acknowledgement
//! arrives (`15s,15s,30s,3m,10m,20m,30m,30m,30m,60m,3h,3h,3h,6h,6h`, here × `time_scale`),
//! the same notification from several servers at once, notifications overtaking each other,
//! HMAC notifications without `sign_type`. Each of those is a knob here
//! (`/_control/notifications`), and every attempt is logged for tests: the most recent
//! [`super::SandboxConfig::log_cap`] attempts and pushed events, so a sandbox left running
//! (or under load) does not grow for ever; the acknowledgement counts cover the attempts kept.

use super::Sandbox;
use base64::Engine;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// A delivery to await or spawn.
pub type Job = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// WeChat Pay's retry gaps after the first attempt, in seconds (§3.3).
pub const PAY_SCHEDULE: [f64; 15] = [
    15.0, 15.0, 30.0, 180.0, 600.0, 1200.0, 1800.0, 1800.0, 1800.0, 3600.0, 10800.0, 10800.0,
    10800.0, 21600.0, 21600.0,
];
/// Message push: three attempts in all, 5 s apart (the Official Account rule).
pub const PUSH_SCHEDULE: [f64; 2] = [5.0, 5.0];
/// Longest a reordered notification is held before it goes out anyway (real time).
const HOLD_MS: u64 = 2000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Pay,
    Refund,
    Push,
}

impl Kind {
    fn index(self) -> usize {
        match self {
            Kind::Pay => 0,
            Kind::Refund => 1,
            Kind::Push => 2,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Kind::Pay => "pay",
            Kind::Refund => "refund",
            Kind::Push => "push",
        }
    }
}

/// One message to deliver.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub id: u64,
    pub kind: Kind,
    /// `out_trade_no`, `out_refund_no`, or the pushed event's name.
    pub key: String,
    pub url: String,
    pub body: Vec<u8>,
    pub content_type: &'static str,
}

#[derive(Clone, Debug, Default)]
pub struct Opts {
    /// Extra concurrent copies of every first attempt.
    pub duplicate: usize,
    /// Hold each notification until the next one, then send the later one first.
    pub reorder: bool,
    /// Payment notifications of HMAC orders without `sign_type` (WxJava#1585).
    pub omit_sign_type: bool,
    /// Push events as XML instead of JSON.
    pub push_xml: bool,
}

#[derive(Clone, Debug)]
struct Attempt {
    kind: Kind,
    key: String,
    url: String,
    attempt: usize,
    status: Option<u16>,
    acked: bool,
    at_ms: i64,
    error: Option<String>,
}

#[derive(Default)]
pub struct DeliveryState {
    pub opts: Opts,
    /// The most recent attempts ([`super::SandboxConfig::log_cap`]).
    log: VecDeque<Attempt>,
    /// Acknowledged attempts in `log` per message, by [`Kind::index`] then key, counted as
    /// `log` grows and shrinks: [`Self::acked`] is polled while tests and benchmarks wait, and
    /// a scan of the whole log made each poll slower than the last.
    acked: [HashMap<String, usize>; 3],
    held: Vec<Outgoing>,
    /// The most recent plaintext events pushed (before encryption; as many as `log`).
    pub pushed: VecDeque<Value>,
}

impl DeliveryState {
    pub fn acked(&self, kind: Kind, key: &str) -> usize {
        self.acked[kind.index()].get(key).copied().unwrap_or(0)
    }

    /// Logs an attempt, keeping the `cap` most recent; an acknowledgement dropped with its
    /// attempt no longer counts (a message none of whose kept attempts was acknowledged is
    /// forgotten).
    fn record(&mut self, a: Attempt, cap: usize) {
        if a.acked {
            *self.acked[a.kind.index()].entry(a.key.clone()).or_default() += 1;
        }
        let acked = &mut self.acked;
        super::push_recent(&mut self.log, a, cap, |old| {
            if !old.acked {
                return;
            }
            let counts = &mut acked[old.kind.index()];
            if let Some(n) = counts.get_mut(&old.key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counts.remove(&old.key);
                }
            }
        });
    }

    pub fn log_json(&self) -> Vec<Value> {
        self.log
            .iter()
            .map(|a| {
                json!({"kind": a.kind.as_str(), "key": a.key, "url": a.url, "attempt": a.attempt,
                       "status": a.status, "acked": a.acked, "at_ms": a.at_ms, "error": a.error})
            })
            .collect()
    }
}

/// Queues `out`. Returns the job that makes the first attempt and keeps retrying (the caller
/// awaits or spawns it), or `None` when reordering holds the message back.
pub fn enqueue(sb: &Sandbox, out: Outgoing) -> Option<Job> {
    let id = out.id;
    let (epoch, release) = {
        let mut st = sb.st();
        let epoch = st.epoch;
        if !st.out.opts.reorder {
            (epoch, Some(vec![out]))
        } else {
            st.out.held.push(out);
            if st.out.held.len() >= 2 {
                let mut all = std::mem::take(&mut st.out.held);
                all.reverse();
                (epoch, Some(all))
            } else {
                (epoch, None)
            }
        }
    };
    match release {
        Some(list) => Some(run_list(sb.clone(), list, epoch)),
        None => {
            // Never hold forever: release after HOLD_MS if nothing came to overtake it.
            let sb2 = sb.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(HOLD_MS)).await;
                let still = {
                    let mut st = sb2.st();
                    if st.epoch != epoch {
                        None
                    } else {
                        let pos = st.out.held.iter().position(|o| o.id == id);
                        pos.map(|p| st.out.held.remove(p))
                    }
                };
                if let Some(o) = still {
                    run_list(sb2, vec![o], epoch).await;
                }
            });
            None
        }
    }
}

/// Sends whatever reordering holds back, newest first.
pub fn flush_held(sb: &Sandbox) {
    let (epoch, mut list) = {
        let mut st = sb.st();
        (st.epoch, std::mem::take(&mut st.out.held))
    };
    if list.is_empty() {
        return;
    }
    list.reverse();
    tokio::spawn(run_list(sb.clone(), list, epoch));
}

/// First attempts in list order (so the order is observable), then each retries on its own.
fn run_list(sb: Sandbox, list: Vec<Outgoing>, epoch: u64) -> Job {
    Box::pin(async move {
        for out in list {
            let acked = first_attempt(&sb, &out, epoch).await;
            if !acked {
                tokio::spawn(retry(sb.clone(), out, epoch));
            }
        }
    })
}

fn schedule(kind: Kind) -> &'static [f64] {
    match kind {
        Kind::Pay | Kind::Refund => &PAY_SCHEDULE,
        Kind::Push => &PUSH_SCHEDULE,
    }
}

async fn first_attempt(sb: &Sandbox, out: &Outgoing, epoch: u64) -> bool {
    let copies = 1 + sb.st().out.opts.duplicate;
    let sends = (0..copies).map(|_| attempt(sb, out, 0, epoch));
    futures::future::join_all(sends)
        .await
        .into_iter()
        .any(|a| a)
}

async fn retry(sb: Sandbox, out: Outgoing, epoch: u64) {
    for (i, gap) in schedule(out.kind).iter().enumerate() {
        tokio::time::sleep(sb.scaled(*gap)).await;
        if sb.st().epoch != epoch {
            return;
        }
        if attempt(&sb, &out, i + 1, epoch).await {
            return;
        }
    }
}

/// One POST; logs it; true when the receiver acknowledged as WeChat requires. Sent once what
/// it announces is in the state file, if the sandbox keeps one: the receiver writes it down.
async fn attempt(sb: &Sandbox, out: &Outgoing, n: usize, epoch: u64) -> bool {
    sb.saved().await;
    // A URL that does not parse goes to reqwest as text, which refuses it as before.
    let req = match sb.inner.urls.parse(&out.url) {
        Ok(url) => sb.inner.http.post(url),
        Err(_) => sb.inner.http.post(&out.url),
    };
    let res = req
        .header("content-type", out.content_type)
        .body(out.body.clone())
        .send()
        .await;
    let (status, acked, error) = match res {
        Ok(r) => {
            let status = r.status().as_u16();
            let body = r.bytes().await.unwrap_or_default();
            let acked = status == 200 && is_ack(out.kind, &body);
            (Some(status), acked, None)
        }
        Err(e) => (None, false, Some(e.to_string())),
    };
    let cap = sb.log_cap();
    let mut st = sb.st();
    if st.epoch != epoch {
        return true; // the state it belonged to is gone: stop retrying
    }
    let at_ms = sb.now_ms();
    st.out.record(
        Attempt {
            kind: out.kind,
            key: out.key.clone(),
            url: out.url.clone(),
            attempt: n,
            status,
            acked,
            at_ms,
            error,
        },
        cap,
    );
    acked
}

fn is_ack(kind: Kind, body: &[u8]) -> bool {
    match kind {
        Kind::Pay | Kind::Refund => wxshop::pay::xml::decode(body)
            .map(|f| f.get("return_code").map(String::as_str) == Some("SUCCESS"))
            .unwrap_or(false),
        Kind::Push => {
            let s = String::from_utf8_lossy(body);
            let t = s.trim();
            t.is_empty() || t == "success"
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Crypto of outgoing messages

/// Refund `req_info`: AES-256-ECB, key = ASCII of lowercase hex md5(api_key), PKCS#7 (16).
pub fn encrypt_req_info(api_key: &str, plaintext: &[u8]) -> String {
    use aes::cipher::{block_padding::Pkcs7, BlockEncryptMut, KeyInit};
    let key = super::md5_hex(api_key.as_bytes());
    match ecb::Encryptor::<aes::Aes256>::new_from_slice(key.as_bytes()) {
        Ok(c) => base64::engine::general_purpose::STANDARD
            .encode(c.encrypt_padded_vec_mut::<Pkcs7>(plaintext)),
        Err(_) => String::new(),
    }
}

/// Decrypts a refund `req_info` (for tests and tools).
pub fn decrypt_req_info(api_key: &str, req_info: &str) -> Option<Vec<u8>> {
    use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, KeyInit};
    let key = super::md5_hex(api_key.as_bytes());
    let ct = base64::engine::general_purpose::STANDARD
        .decode(req_info)
        .ok()?;
    ecb::Decryptor::<aes::Aes256>::new_from_slice(key.as_bytes())
        .ok()?
        .decrypt_padded_vec_mut::<Pkcs7>(&ct)
        .ok()
}

/// Base64 for EncodingAESKey: 43 characters + `=` leave trailing bits set in the last
/// character, which a strict decoder refuses (WeChat's own keys do this).
const KEY_B64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// Message-push safe mode: AES-256-CBC (key = base64(EncodingAESKey + "="), IV = key[..16])
/// over `random16 || be32(len) || msg || appid`, PKCS#7 over 32-byte blocks.
pub fn encrypt_push(encoding_aes_key: &str, appid: &str, msg: &[u8]) -> Option<String> {
    use aes::cipher::{block_padding::NoPadding, BlockEncryptMut, KeyIvInit};
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = KEY_B64
        .decode(encoding_aes_key.trim_end_matches('='))
        .ok()?;
    if key.len() != 32 {
        return None;
    }
    let mut plain = super::random_alnum(16).into_bytes();
    plain.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    plain.extend_from_slice(msg);
    plain.extend_from_slice(appid.as_bytes());
    let pad = 32 - plain.len() % 32;
    plain.extend(std::iter::repeat_n(pad as u8, pad));
    let c = cbc::Encryptor::<aes::Aes256>::new_from_slices(&key, &key[..16]).ok()?;
    Some(b64.encode(c.encrypt_padded_vec_mut::<NoPadding>(&plain)))
}

/// Decrypts a safe-mode `Encrypt` value into (message, appid) (for tests and tools).
pub fn decrypt_push(encoding_aes_key: &str, encrypted: &str) -> Option<(Vec<u8>, String)> {
    use aes::cipher::{block_padding::NoPadding, BlockDecryptMut, KeyIvInit};
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = KEY_B64
        .decode(encoding_aes_key.trim_end_matches('='))
        .ok()?;
    if key.len() != 32 {
        return None;
    }
    let ct = b64.decode(encrypted).ok()?;
    let plain = cbc::Decryptor::<aes::Aes256>::new_from_slices(&key, &key[..16])
        .ok()?
        .decrypt_padded_vec_mut::<NoPadding>(&ct)
        .ok()?;
    let pad = *plain.last()? as usize;
    if pad == 0 || pad > 32 || pad > plain.len() {
        return None;
    }
    let plain = &plain[..plain.len() - pad];
    let len_bytes: [u8; 4] = plain.get(16..20)?.try_into().ok()?;
    let len = u32::from_be_bytes(len_bytes) as usize;
    let msg = plain.get(20..20 + len)?.to_vec();
    let appid = String::from_utf8(plain.get(20 + len..)?.to_vec()).ok()?;
    Some((msg, appid))
}

/// `sha1(sort(parts).concat())`, lowercase hex: the push `signature` / `msg_signature`.
pub fn push_signature(parts: &[&str]) -> String {
    use sha1::{Digest, Sha1};
    let mut v: Vec<&str> = parts.to_vec();
    v.sort_unstable();
    hex::encode(Sha1::digest(v.concat().as_bytes()))
}

// ---------------------------------------------------------------------------------------------
// Message push

/// The mini program's original id (`gh_…`), derived from the appid so it is stable.
pub fn original_id(appid: &str) -> String {
    format!("gh_{}", &super::md5_hex(appid.as_bytes())[..12])
}

/// Pushes one platform event (`Event` = `event`, body under `body_key`) to `push_url`:
/// signed with the push token and encrypted in safe mode. No-op without a `push_url`.
pub fn push_event(sb: &Sandbox, event: &str, body_key: &str, body: Value) {
    let cfg = sb.cfg();
    let now = sb.now_ms();
    let msg = json!({
        "ToUserName": original_id(&cfg.appid),
        "FromUserName": "oWeChatSandboxTeamOpenid000",
        "CreateTime": now / 1000,
        "MsgType": "event",
        "Event": event,
        body_key: body,
    });
    let (id, xml) = {
        let mut st = sb.st();
        super::push_recent(&mut st.out.pushed, msg.clone(), cfg.log_cap, drop);
        (st.next_seq(), st.out.opts.push_xml)
    };
    let Some(url) = cfg.push_url.clone() else {
        return;
    };
    let plain = if xml {
        to_xml(&msg).into_bytes()
    } else {
        msg.to_string().into_bytes()
    };
    let timestamp = (now / 1000).to_string();
    let nonce = super::random_digits(10);
    let signature = push_signature(&[&cfg.push_token, &timestamp, &nonce]);
    let sep = if url.contains('?') { '&' } else { '?' };
    let mut full = format!("{url}{sep}signature={signature}&timestamp={timestamp}&nonce={nonce}");
    let body = match cfg.push_aes_key.as_deref() {
        None => plain,
        Some(key) => {
            let Some(enc) = encrypt_push(key, &cfg.appid, &plain) else {
                tracing::warn!("sandbox: push_aes_key is not a valid EncodingAESKey");
                return;
            };
            let msg_sig = push_signature(&[&cfg.push_token, &timestamp, &nonce, &enc]);
            full.push_str(&format!("&encrypt_type=aes&msg_signature={msg_sig}"));
            let to = original_id(&cfg.appid);
            if xml {
                format!(
                    "<xml><ToUserName><![CDATA[{to}]]></ToUserName><Encrypt><![CDATA[{enc}]]></Encrypt></xml>"
                )
                .into_bytes()
            } else {
                json!({"ToUserName": to, "Encrypt": enc})
                    .to_string()
                    .into_bytes()
            }
        }
    };
    let out = Outgoing {
        id,
        kind: Kind::Push,
        key: event.to_owned(),
        url: full,
        body,
        content_type: if xml {
            "text/xml; charset=utf-8"
        } else {
            "application/json; charset=utf-8"
        },
    };
    if let Some(job) = enqueue(sb, out) {
        tokio::spawn(job);
    }
}

/// The XML data format of message push: nested elements, arrays as repeated elements.
pub fn to_xml(msg: &Value) -> String {
    fn esc_cdata(s: &str) -> String {
        format!("<![CDATA[{}]]>", s.replace("]]>", "]]]]><![CDATA[>"))
    }
    fn elem(out: &mut String, name: &str, v: &Value) {
        match v {
            Value::Array(items) => {
                for i in items {
                    elem(out, name, i);
                }
            }
            Value::Object(m) => {
                out.push_str(&format!("<{name}>"));
                for (k, v) in m {
                    elem(out, k, v);
                }
                out.push_str(&format!("</{name}>"));
            }
            Value::String(s) => out.push_str(&format!("<{name}>{}</{name}>", esc_cdata(s))),
            Value::Null => out.push_str(&format!("<{name}></{name}>")),
            other => out.push_str(&format!("<{name}>{other}</{name}>")),
        }
    }
    let mut out = String::from("<xml>");
    if let Value::Object(m) = msg {
        for (k, v) in m {
            elem(&mut out, k, v);
        }
    }
    out.push_str("</xml>");
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn push_crypto_round_trips() {
        let key = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
        let enc = encrypt_push(key, "wx123", b"{\"a\":1}").unwrap();
        let (msg, appid) = decrypt_push(key, &enc).unwrap();
        assert_eq!(msg, b"{\"a\":1}");
        assert_eq!(appid, "wx123");
    }

    #[test]
    fn req_info_matches_known_key_derivation() {
        // WECHAT_PAY_V2 §3.5: key ziR0… → AES key a1fdc4d1da9fb443b1091d34bcee9493.
        assert_eq!(
            super::super::md5_hex(b"ziR0QKsTUfMOuochC9RfCdmfHECorQAP"),
            "a1fdc4d1da9fb443b1091d34bcee9493"
        );
        let ct = encrypt_req_info("k", b"<root><a>1</a></root>");
        assert_eq!(
            decrypt_req_info("k", &ct).unwrap(),
            b"<root><a>1</a></root>"
        );
    }

    /// The log keeps the most recent attempts; an acknowledgement leaves the counts with its
    /// attempt, and a message with none left is forgotten.
    #[test]
    fn the_log_keeps_the_most_recent_attempts_and_counts_their_acks() {
        let mut d = DeliveryState::default();
        let a = |key: &str, acked: bool| Attempt {
            kind: Kind::Pay,
            key: key.into(),
            url: String::new(),
            attempt: 0,
            status: Some(200),
            acked,
            at_ms: 0,
            error: None,
        };
        d.record(a("A", true), 3);
        d.record(a("A", false), 3);
        d.record(a("B", true), 3);
        assert_eq!(d.acked(Kind::Pay, "A"), 1);
        d.record(a("B", true), 3);
        assert_eq!(d.log.len(), 3);
        assert_eq!(d.acked(Kind::Pay, "A"), 0);
        assert!(!d.acked[Kind::Pay.index()].contains_key("A"), "forgotten");
        assert_eq!(d.acked(Kind::Pay, "B"), 2);
        assert_eq!(d.log_json()[0]["acked"], false, "oldest first");
    }
}
