//! The parameters `wx.requestPayment` needs after `pay/unifiedorder`.
//!
//! `paySign` is a fresh v2 signature over exactly five camelCase keys
//! (`appId, nonceStr, package, signType, timeStamp`) — never the `sign` that unifiedorder
//! returned. It is computed here, server side, so the API key never reaches the client.
//! The result serialises exactly as `{"timeStamp","nonceStr","package","signType","paySign"}`
//! and is spread straight into `wx.requestPayment` (and the `payment` field of our
//! `unifiedOrder` function).
//!
//! **Provider mode:** pass `sub_appid` (the mini program the user is in) as `appid`, not the
//! provider's appid — signing with the provider appid is the top cause of "支付验证签名失败"
//! (WxJava#555, easywechat#2306).

use super::sign::{sign_sorted, SignType};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentParams {
    /// Seconds since the epoch, as a string (WeChat wants a string).
    pub time_stamp: String,
    pub nonce_str: String,
    /// `prepay_id=<prepay_id>`.
    pub package: String,
    pub sign_type: SignType,
    pub pay_sign: String,
}

/// `paySign` over the five keys, in the byte order signing needs.
pub fn pay_sign(
    appid: &str,
    time_stamp: &str,
    nonce_str: &str,
    package: &str,
    sign_type: SignType,
    api_key: &str,
) -> String {
    // Sorted by bytes: appId < nonceStr < package < signType < timeStamp.
    sign_sorted(
        [
            ("appId", appid),
            ("nonceStr", nonce_str),
            ("package", package),
            ("signType", sign_type.as_str()),
            ("timeStamp", time_stamp),
        ],
        api_key,
        sign_type,
    )
}

/// The `wx.requestPayment` parameters with a fresh random nonce.
pub fn payment_params(
    appid: &str,
    prepay_id: &str,
    api_key: &str,
    sign_type: SignType,
    now_secs: i64,
) -> PaymentParams {
    payment_params_with_nonce(
        appid,
        prepay_id,
        api_key,
        sign_type,
        now_secs,
        &crate::domain::random_alnum(32),
    )
}

/// As [`payment_params`] with a given nonce (deterministic, for tests and vectors).
pub fn payment_params_with_nonce(
    appid: &str,
    prepay_id: &str,
    api_key: &str,
    sign_type: SignType,
    now_secs: i64,
    nonce_str: &str,
) -> PaymentParams {
    let time_stamp = now_secs.to_string();
    let package = format!("prepay_id={prepay_id}");
    let pay_sign = pay_sign(appid, &time_stamp, nonce_str, &package, sign_type, api_key);
    PaymentParams {
        time_stamp,
        nonce_str: nonce_str.to_owned(),
        package,
        sign_type,
        pay_sign,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn official_pay_sign_example() {
        let p = payment_params_with_nonce(
            "wxd678efh567hg6787",
            "wx2017033010242291fcfe0db70013231072",
            "qazwsxedcrfvtgbyhnujmikolp111111",
            SignType::Md5,
            1_490_840_662,
            "5K8264ILTKCH16CQ2502SI8ZNMTM67VS",
        );
        assert_eq!(p.pay_sign, "22D9B4E54AB1950F51E0649E8810ACD6");
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(
            json,
            r#"{"timeStamp":"1490840662","nonceStr":"5K8264ILTKCH16CQ2502SI8ZNMTM67VS","package":"prepay_id=wx2017033010242291fcfe0db70013231072","signType":"MD5","paySign":"22D9B4E54AB1950F51E0649E8810ACD6"}"#
        );
        let random = payment_params("wx1", "p", "k", SignType::HmacSha256, 1);
        assert_eq!(random.nonce_str.len(), 32);
        assert_eq!(random.pay_sign.len(), 64);
    }
}
