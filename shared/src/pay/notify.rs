//! Payment notifications (`notify_url`): parse, verify, type — and build genuine ones for the
//! local sandbox.
//!
//! The order of checks is the point of this module. The body is hostile until the signature
//! says otherwise (fake "paid" notifications are the classic v2 fraud), so: hardened XML
//! decode → `return_code` → a `sign` that must be present and must verify over *every*
//! received field (algorithm from `sign_type`, else from the signature's length) → only then
//! a typed view. Checking that the notification is for *our* merchant and that `total_fee`
//! equals the stored order stays with the caller, who knows both ([`PaymentNotification::check_merchant`]
//! helps with the first).
//!
//! This is the hot path of issue 8 (docs/PERFORMANCE.md, "Notification hot path"), so the
//! fields are never copied: [`flat::scan`] borrows them from the body (same verdicts and
//! errors as [`xml::decode`]), the signature is computed over those borrowed, sorted fields,
//! and the typed view copies only what it keeps. Instead of a second owned field map the
//! notification keeps the verified body (one copy) and decodes it again on the rare path that
//! wants every field ([`PaymentNotification::fields`]: evidence of a double payment).

use super::flat::{self, Flat};
use super::sign::{self, Fields, SignType, VerifyError};
use super::types::{compact_time_value, fen_value, missing, FieldError};
use super::xml::{self, XmlError};
use crate::domain::{Fen, IdError, OpenId, OutTradeNo};
use std::borrow::Cow;

/// Why a notification was not accepted. Messages never include the API key or the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotifyError {
    #[error("notification XML refused: {0}")]
    Xml(#[from] XmlError),
    /// `return_code` is not `SUCCESS`: a communication-level message with nothing to act on.
    #[error("notification return_code is `{code}`: {msg}")]
    ReturnFail { code: String, msg: String },
    #[error("notification signature refused: {0}")]
    Sign(#[from] VerifyError),
    #[error("notification field refused: {0}")]
    Field(#[from] FieldError),
    #[error("notification id refused: {0}")]
    Id(#[from] IdError),
    #[error("notification is for another merchant: `{field}` is `{got}`")]
    WrongMerchant { field: &'static str, got: String },
    #[error("req_info is not valid base64")]
    Base64,
    #[error("req_info does not decrypt with our key (bad length or padding)")]
    Decrypt,
    #[error("decrypted req_info refused: {0}")]
    InnerXml(XmlError),
    /// A refund notification whose `req_info` decrypted under our key — WeChat's, for us — and
    /// read as XML, but a field inside does not read as a refund (`error`: a
    /// [`NotifyError::Field`] or [`NotifyError::Id`]). `fields` are the decrypted ones, kept as
    /// evidence: money may have moved.
    #[error("decrypted refund notification does not read: {error}")]
    RefundFields {
        error: Box<NotifyError>,
        fields: Box<Fields>,
    },
}

/// A verified payment notification, borrowing its text from the body it was parsed from.
///
/// Values are `Cow`s: borrowed from the body unless the XML had to be unescaped (an entity,
/// a value split across text and CDATA, or a body only the reference decoder accepts), so
/// the hot path copies nothing but `out_trade_no` (docs/PERFORMANCE.md, "Notification hot
/// path"). [`PaymentNotification::into_owned`] detaches it from the body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentNotification<'a> {
    pub appid: Cow<'a, str>,
    pub mch_id: Cow<'a, str>,
    pub sub_appid: Option<Cow<'a, str>>,
    pub sub_mch_id: Option<Cow<'a, str>>,
    /// The payer under `appid` (direct mode always; provider mode when WeChat sends it).
    pub openid: Option<Cow<'a, str>>,
    /// The payer under `sub_appid` (provider mode).
    pub sub_openid: Option<Cow<'a, str>>,
    pub out_trade_no: OutTradeNo,
    pub transaction_id: Cow<'a, str>,
    /// The order amount; compare it with the stored order.
    pub total_fee: Fen,
    /// What the payer paid in cash (lower than `total_fee` when coupons apply).
    pub cash_fee: Option<Fen>,
    /// `CNY` when WeChat omits it.
    pub fee_type: Cow<'a, str>,
    /// `result_code == SUCCESS`.
    pub success: bool,
    pub err_code: Option<Cow<'a, str>>,
    pub err_code_des: Option<Cow<'a, str>>,
    pub trade_type: Option<Cow<'a, str>>,
    pub bank_type: Option<Cow<'a, str>>,
    pub time_end_ms: Option<i64>,
    pub attach: Option<Cow<'a, str>>,
    /// The algorithm the notification was signed with.
    pub sign_type: SignType,
    /// The body as received and verified.
    body: Cow<'a, [u8]>,
}

fn owned(c: Cow<'_, str>) -> Cow<'static, str> {
    Cow::Owned(c.into_owned())
}

fn owned_opt(c: Option<Cow<'_, str>>) -> Option<Cow<'static, str>> {
    c.map(owned)
}

impl PaymentNotification<'_> {
    /// The payer's openid under the mini program the user logged into: `sub_openid` when
    /// present (provider mode), else `openid`.
    pub fn payer_openid(&self) -> Option<&str> {
        self.sub_openid.as_deref().or(self.openid.as_deref())
    }

    /// The body as received; its signature verified.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Every received field, as verified (decoded again from [`Self::body`]: an owned map
    /// per notification is what made the hot path slow, and only rare paths need it).
    pub fn fields(&self) -> Fields {
        // The body decoded once already; decoding is deterministic.
        xml::decode(&self.body).unwrap_or_default()
    }

    /// The same notification, owning its text (to keep it beyond the request body).
    pub fn into_owned(self) -> PaymentNotification<'static> {
        PaymentNotification {
            appid: owned(self.appid),
            mch_id: owned(self.mch_id),
            sub_appid: owned_opt(self.sub_appid),
            sub_mch_id: owned_opt(self.sub_mch_id),
            openid: owned_opt(self.openid),
            sub_openid: owned_opt(self.sub_openid),
            out_trade_no: self.out_trade_no,
            transaction_id: owned(self.transaction_id),
            total_fee: self.total_fee,
            cash_fee: self.cash_fee,
            fee_type: owned(self.fee_type),
            success: self.success,
            err_code: owned_opt(self.err_code),
            err_code_des: owned_opt(self.err_code_des),
            trade_type: owned_opt(self.trade_type),
            bank_type: owned_opt(self.bank_type),
            time_end_ms: self.time_end_ms,
            attach: owned_opt(self.attach),
            sign_type: self.sign_type,
            body: Cow::Owned(self.body.into_owned()),
        }
    }

    /// Refuses a notification addressed to another merchant or app. `sub_*` are compared
    /// when configured (provider mode), and must then be present.
    pub fn check_merchant(
        &self,
        appid: &str,
        mch_id: &str,
        sub_appid: Option<&str>,
        sub_mch_id: Option<&str>,
    ) -> Result<(), NotifyError> {
        check_merchant_ids(
            [
                Some(self.appid.as_ref()),
                Some(self.mch_id.as_ref()),
                self.sub_appid.as_deref(),
                self.sub_mch_id.as_deref(),
            ],
            [Some(appid), Some(mch_id), sub_appid, sub_mch_id],
        )
    }
}

/// Compares the ids a notification is addressed to — `appid`, `mch_id`, `sub_appid`,
/// `sub_mch_id` as received, empty counted as absent — with ours (`None`: not configured,
/// and then the notification must not name one either).
pub(crate) fn check_merchant_ids(
    got: [Option<&str>; 4],
    want: [Option<&str>; 4],
) -> Result<(), NotifyError> {
    const NAMES: [&str; 4] = ["appid", "mch_id", "sub_appid", "sub_mch_id"];
    for ((field, got), want) in NAMES.into_iter().zip(got).zip(want) {
        // A sub-merchant's notification where we have none configured (direct mode) is not
        // ours either.
        if want.is_some_and(|w| got != Some(w))
            || (want.is_none() && got.is_some_and(|g| !g.is_empty()))
        {
            return Err(NotifyError::WrongMerchant {
                field,
                got: got.unwrap_or("").chars().take(64).collect(),
            });
        }
    }
    Ok(())
}

/// Decodes the body (borrowed fields) and checks `return_code`: the part every notification
/// shares.
pub(crate) fn decode_checked(body: &[u8]) -> Result<Flat<'_>, NotifyError> {
    let fields = flat::scan(body)?;
    let code = fields.get("return_code").unwrap_or("");
    if code != "SUCCESS" {
        return Err(NotifyError::ReturnFail {
            code: code.chars().take(32).collect(),
            msg: fields
                .get("return_msg")
                .map(|m| m.chars().take(128).collect())
                .unwrap_or_default(),
        });
    }
    Ok(fields)
}

/// Parses and verifies a payment notification body. Nothing in it is believed before the
/// signature verifies.
pub fn parse_payment_notification<'a>(
    body: &'a [u8],
    api_key: &str,
) -> Result<PaymentNotification<'a>, NotifyError> {
    let fields = decode_checked(body)?;
    let sign_type = sign::verify_sorted(
        fields.iter(),
        fields.get("sign"),
        fields.get("sign_type"),
        api_key,
    )?;
    // Verified: take the values the typed view keeps out of the fields in one pass (a
    // `match` on the name per field instead of a lookup per typed field), moving them.
    let mut v = PaymentFields::default();
    for (name, value) in fields.into_fields() {
        if value.is_empty() {
            continue; // empty counts as absent, as WeChat signs it
        }
        let slot = match name.as_ref() {
            "appid" => &mut v.appid,
            "mch_id" => &mut v.mch_id,
            "sub_appid" => &mut v.sub_appid,
            "sub_mch_id" => &mut v.sub_mch_id,
            "openid" => &mut v.openid,
            "sub_openid" => &mut v.sub_openid,
            "out_trade_no" => &mut v.out_trade_no,
            "transaction_id" => &mut v.transaction_id,
            "total_fee" => &mut v.total_fee,
            "cash_fee" => &mut v.cash_fee,
            "fee_type" => &mut v.fee_type,
            "result_code" => &mut v.result_code,
            "err_code" => &mut v.err_code,
            "err_code_des" => &mut v.err_code_des,
            "trade_type" => &mut v.trade_type,
            "bank_type" => &mut v.bank_type,
            "time_end" => &mut v.time_end,
            "attach" => &mut v.attach,
            _ => continue,
        };
        *slot = Some(value);
    }
    let req = |f: Option<Cow<'a, str>>, name: &str| f.ok_or_else(|| missing(name));
    let appid = req(v.appid, "appid")?;
    let mch_id = req(v.mch_id, "mch_id")?;
    let out_trade_no = OutTradeNo::parse(req(v.out_trade_no, "out_trade_no")?.as_ref())?;
    let transaction_id = req(v.transaction_id, "transaction_id")?;
    let total_fee = fen_value("total_fee", &req(v.total_fee, "total_fee")?)?;
    let cash_fee = v.cash_fee.map(|c| fen_value("cash_fee", &c)).transpose()?;
    let time_end_ms = v
        .time_end
        .map(|t| compact_time_value("time_end", &t))
        .transpose()?;
    Ok(PaymentNotification {
        appid,
        mch_id,
        sub_appid: v.sub_appid,
        sub_mch_id: v.sub_mch_id,
        openid: v.openid,
        sub_openid: v.sub_openid,
        out_trade_no,
        transaction_id,
        total_fee,
        cash_fee,
        fee_type: v.fee_type.unwrap_or(Cow::Borrowed("CNY")),
        success: v.result_code.as_deref() == Some("SUCCESS"),
        err_code: v.err_code,
        err_code_des: v.err_code_des,
        trade_type: v.trade_type,
        bank_type: v.bank_type,
        time_end_ms,
        attach: v.attach,
        sign_type,
        body: Cow::Borrowed(body),
    })
}

/// The non-empty values [`parse_payment_notification`] reads, by name.
#[derive(Default)]
struct PaymentFields<'a> {
    appid: Option<Cow<'a, str>>,
    mch_id: Option<Cow<'a, str>>,
    sub_appid: Option<Cow<'a, str>>,
    sub_mch_id: Option<Cow<'a, str>>,
    openid: Option<Cow<'a, str>>,
    sub_openid: Option<Cow<'a, str>>,
    out_trade_no: Option<Cow<'a, str>>,
    transaction_id: Option<Cow<'a, str>>,
    total_fee: Option<Cow<'a, str>>,
    cash_fee: Option<Cow<'a, str>>,
    fee_type: Option<Cow<'a, str>>,
    result_code: Option<Cow<'a, str>>,
    err_code: Option<Cow<'a, str>>,
    err_code_des: Option<Cow<'a, str>>,
    trade_type: Option<Cow<'a, str>>,
    bank_type: Option<Cow<'a, str>>,
    time_end: Option<Cow<'a, str>>,
    attach: Option<Cow<'a, str>>,
}

/// The reply that stops WeChat's retries. Send it only after the state change is durable.
pub fn reply_success() -> &'static str {
    "<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>"
}

/// A `FAIL` reply: WeChat will retry. For transient trouble on our side only.
pub fn reply_fail(msg: &str) -> String {
    let mut f = Fields::new();
    f.insert("return_code".into(), "FAIL".into());
    f.insert("return_msg".into(), msg.into());
    xml::encode(&f)
}

/// What the sandbox needs to produce a genuine, signed payment notification.
#[derive(Clone, Debug)]
pub struct PaymentNotificationSpec {
    pub appid: String,
    pub mch_id: String,
    pub sub_appid: Option<String>,
    pub sub_mch_id: Option<String>,
    /// The payer; sent as `sub_openid` when `sub_appid` is set, else as `openid`.
    pub openid: OpenId,
    pub out_trade_no: OutTradeNo,
    pub transaction_id: String,
    pub total_fee: Fen,
    pub time_end_ms: i64,
    pub attach: Option<String>,
    pub sign_type: SignType,
    /// Leave `sign_type` out even for HMAC, as real HMAC notifications sometimes do.
    pub omit_sign_type: bool,
}

/// The unsigned fields of a successful JSAPI payment notification.
pub fn payment_notification_fields(spec: &PaymentNotificationSpec) -> Fields {
    let mut f = Fields::new();
    let mut put = |k: &str, v: &str| {
        f.insert(k.to_owned(), v.to_owned());
    };
    put("return_code", "SUCCESS");
    put("result_code", "SUCCESS");
    put("appid", &spec.appid);
    put("mch_id", &spec.mch_id);
    put("nonce_str", &crate::domain::random_alnum(32));
    if let Some(s) = &spec.sub_mch_id {
        put("sub_mch_id", s);
    }
    match &spec.sub_appid {
        Some(s) => {
            put("sub_appid", s);
            put("sub_openid", spec.openid.as_str());
            put("sub_is_subscribe", "N");
        }
        None => put("openid", spec.openid.as_str()),
    }
    put("is_subscribe", "N");
    put("trade_type", "JSAPI");
    put("bank_type", "OTHERS");
    let fee = spec.total_fee.to_string();
    put("total_fee", &fee);
    put("cash_fee", &fee);
    put("fee_type", "CNY");
    put("transaction_id", &spec.transaction_id);
    put("out_trade_no", spec.out_trade_no.as_str());
    put("time_end", &crate::time::beijing_compact(spec.time_end_ms));
    if let Some(a) = &spec.attach {
        put("attach", a);
    }
    f
}

/// A signed payment notification body, as WeChat would post it.
pub fn build_payment_notification(spec: &PaymentNotificationSpec, api_key: &str) -> String {
    let mut f = payment_notification_fields(spec);
    if spec.omit_sign_type {
        let s = sign::sign(&f, api_key, spec.sign_type);
        f.insert("sign".into(), s);
        xml::encode(&f)
    } else {
        sign::signed_xml(f, api_key, spec.sign_type)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const KEY: &str = "192006250b4c09247ec02edce69f6a2d";

    fn spec(sign_type: SignType, omit: bool, sub: bool) -> PaymentNotificationSpec {
        PaymentNotificationSpec {
            appid: "wx2421b1c4370ec43b".into(),
            mch_id: "10000100".into(),
            sub_appid: sub.then(|| "wxsub".to_owned()),
            sub_mch_id: sub.then(|| "1900000109".to_owned()),
            openid: OpenId::parse("oUpF8uMEb4qRXf22hE3X68TekukE").unwrap(),
            out_trade_no: OutTradeNo::parse("1409811653").unwrap(),
            transaction_id: "1004400740201409030005092168".into(),
            total_fee: Fen::new(101).unwrap(),
            time_end_ms: 1_409_721_340_000,
            attach: Some("a&b<c>".into()),
            sign_type,
            omit_sign_type: omit,
        }
    }

    #[test]
    fn built_notifications_parse_back() {
        for (st, omit, sub) in [
            (SignType::Md5, false, false),
            (SignType::HmacSha256, false, true),
            (SignType::HmacSha256, true, false),
        ] {
            let body = build_payment_notification(&spec(st, omit, sub), KEY);
            let n = parse_payment_notification(body.as_bytes(), KEY).unwrap();
            assert_eq!(n.sign_type, st);
            assert!(n.success);
            assert_eq!(n.total_fee.get(), 101);
            assert_eq!(n.time_end_ms, Some(1_409_721_340_000));
            assert_eq!(n.attach.as_deref(), Some("a&b<c>"));
            assert_eq!(n.payer_openid(), Some("oUpF8uMEb4qRXf22hE3X68TekukE"));
            assert_eq!(
                n.fields().contains_key("sign_type"),
                st == SignType::HmacSha256 && !omit
            );
            if sub {
                assert!(n
                    .check_merchant(
                        "wx2421b1c4370ec43b",
                        "10000100",
                        Some("wxsub"),
                        Some("1900000109")
                    )
                    .is_ok());
            } else {
                assert!(n
                    .check_merchant("wx2421b1c4370ec43b", "10000100", None, None)
                    .is_ok());
                assert!(matches!(
                    n.check_merchant("wx2421b1c4370ec43b", "10000101", None, None),
                    Err(NotifyError::WrongMerchant {
                        field: "mch_id",
                        ..
                    })
                ));
                assert!(n
                    .check_merchant("wx2421b1c4370ec43b", "10000100", None, Some("1"))
                    .is_err());
            }
        }
    }

    #[test]
    fn notifications_borrow_the_body_and_can_outlive_it() {
        let built = build_payment_notification(&spec(SignType::Md5, false, false), KEY);
        // The same value as escaped text instead of CDATA (the signature covers values).
        let body = built.replace("<![CDATA[a&b<c>]]>", "a&amp;b&lt;c&gt;");
        assert_ne!(body, built);
        let n = parse_payment_notification(body.as_bytes(), KEY).unwrap();
        // CDATA and plain text are borrowed from the body; an unescaped value is owned.
        assert!(matches!(n.transaction_id, Cow::Borrowed(_)));
        assert!(matches!(n.attach, Some(Cow::Owned(_))));
        let kept = n.into_owned();
        drop(body);
        assert_eq!(kept.attach.as_deref(), Some("a&b<c>"));
        assert_eq!(kept.transaction_id, "1004400740201409030005092168");
        assert_eq!(kept.out_trade_no.as_str(), "1409811653");
        assert_eq!(
            kept.fields().get("total_fee").map(String::as_str),
            Some("101")
        );
    }

    #[test]
    fn replies() {
        assert_eq!(
            reply_success(),
            "<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>"
        );
        let f = xml::decode(reply_fail("db <down>").as_bytes()).unwrap();
        assert_eq!(f["return_code"], "FAIL");
        assert_eq!(f["return_msg"], "db <down>");
    }

    #[test]
    fn return_fail_is_typed_and_unsigned_is_refused() {
        let body = b"<xml><return_code>FAIL</return_code><return_msg>bad</return_msg></xml>";
        assert!(matches!(
            parse_payment_notification(body, KEY),
            Err(NotifyError::ReturnFail { .. })
        ));
        let mut f = payment_notification_fields(&spec(SignType::Md5, false, false));
        let body = xml::encode(&f);
        assert_eq!(
            parse_payment_notification(body.as_bytes(), KEY),
            Err(NotifyError::Sign(VerifyError::MissingSign))
        );
        sign::sign_in_place(&mut f, KEY, SignType::Md5);
        f.insert("total_fee".into(), "1".into());
        assert_eq!(
            parse_payment_notification(xml::encode(&f).as_bytes(), KEY),
            Err(NotifyError::Sign(VerifyError::Mismatch))
        );
    }
}
