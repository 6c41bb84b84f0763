//! Configuration from the environment — the same variables in Lambda and in `wxlocal`.
//!
//! Start-up reads everything once and reports *every* problem in one message, so a
//! misconfigured deployment fails its first cold start with a list to fix, not one error at
//! a time. Secrets are `SecretString`s: they cannot be printed by accident.

use crate::domain::FundType;
use crate::pay::SignType;
use secrecy::{ExposeSecret, SecretString};
use std::fmt;

pub const DEFAULT_PAY_BASE_URL: &str = "https://api.mch.weixin.qq.com";
pub const DEFAULT_API_BASE_URL: &str = "https://api.weixin.qq.com";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreConfig {
    /// SQLite file (WAL).
    Sqlite(String),
    /// SQLite `:memory:` — throwaway.
    Memory,
    /// DynamoDB table, optionally at a custom endpoint (local servers).
    Dynamo {
        table: String,
        endpoint: Option<String>,
    },
}

impl StoreConfig {
    /// `sqlite:PATH`, `memory`, `dynamodb:TABLE` (endpoint from `DYNAMODB_ENDPOINT`).
    pub fn parse(s: &str, endpoint: Option<String>) -> Result<Self, String> {
        if s == "memory" {
            Ok(StoreConfig::Memory)
        } else if let Some(p) = s.strip_prefix("sqlite:") {
            if p.is_empty() {
                Err("STORE=sqlite: needs a path, e.g. sqlite:.wxlocal/wxshop.db".into())
            } else {
                Ok(StoreConfig::Sqlite(p.to_owned()))
            }
        } else if let Some(t) = s.strip_prefix("dynamodb:") {
            if t.is_empty() {
                Err("STORE=dynamodb: needs a table name, e.g. dynamodb:wxshop".into())
            } else {
                Ok(StoreConfig::Dynamo {
                    table: t.to_owned(),
                    endpoint,
                })
            }
        } else {
            Err(format!(
                "STORE=`{s}` is not one of sqlite:PATH, memory, dynamodb:TABLE"
            ))
        }
    }
}

/// When orders are uploaded to the trading component (`shop/order/add`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TradingComponent {
    /// Never (a plain WeChat Pay shop).
    Off,
    /// Every order.
    Always,
    /// When the user's enter scene needs it: the mini program's `wx.checkBeforeAddOrder`
    /// verdict (`require_order`), or without it `shop/scene/check`.
    SceneCheck,
}

impl TradingComponent {
    /// The `WX_TRADING_COMPONENT` value that selects it.
    pub fn as_str(self) -> &'static str {
        match self {
            TradingComponent::Off => "off",
            TradingComponent::Always => "always",
            TradingComponent::SceneCheck => "scene",
        }
    }
}

/// Which access-token API to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenMode {
    Stable,
    Classic,
}

/// API client certificate for `secapi/pay/refund`.
#[derive(Clone)]
pub enum ClientCert {
    /// PKCS#12 bytes (from base64) and its password (default: mch_id).
    Pkcs12 {
        der: Vec<u8>,
        password: SecretString,
    },
    /// PEM certificate chain and private key.
    Pem { cert: String, key: SecretString },
}

impl fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientCert::Pkcs12 { der, .. } => write!(f, "ClientCert::Pkcs12({} bytes)", der.len()),
            ClientCert::Pem { .. } => write!(f, "ClientCert::Pem"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub appid: String,
    pub appsecret: SecretString,
    pub mch_id: String,
    pub api_key: SecretString,
    pub sign_type: SignType,
    /// Service-provider mode: the sub-merchant and its mini program.
    pub sub_mch_id: Option<String>,
    pub sub_appid: Option<String>,
    pub push_token: SecretString,
    /// 43-character EncodingAESKey; `None` = plaintext push mode.
    pub push_aes_key: Option<SecretString>,
    pub session_secret: SecretString,
    pub session_ttl_secs: i64,
    pub pay_base_url: String,
    pub api_base_url: String,
    pub store: StoreConfig,
    /// Where WeChat Pay posts payment notifications (our `/callbacks/pay`).
    pub notify_url: String,
    /// Where WeChat Pay posts refund notifications (our `/callbacks/refund`).
    pub refund_notify_url: String,
    pub trading_component: TradingComponent,
    pub fund_type: FundType,
    pub token_mode: TokenMode,
    pub client_cert: Option<ClientCert>,
    /// `wxlocal` only: bearer token for `/admin/*` (in AWS, IAM guards them).
    pub admin_token: Option<SecretString>,
    /// Unpaid orders close after this many seconds.
    pub order_ttl_secs: i64,
    /// Mini-program page that shows an order (trading component `path`).
    pub order_path: String,
    /// HTTP timeout for calls to WeChat, ms.
    pub http_timeout_ms: u64,
    /// Where users send goods back (return and refund), unless the approval names another.
    pub return_address: Option<crate::domain::Address>,
}

/// Every problem found, one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration is incomplete or invalid:\n{}", .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads variables through `get` (tests and `wxlocal` pass their own).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let mut required = |k: &str, hint: &str| -> String {
            get(k).unwrap_or_else(|| {
                problems.push(format!("{k} is not set ({hint})"));
                String::new()
            })
        };
        let appid = required("WX_APPID", "the mini program's AppID, wx…");
        let appsecret = required("WX_APPSECRET", "the mini program's AppSecret");
        let mch_id = required("WXPAY_MCH_ID", "the WeChat Pay merchant id");
        let api_key = required(
            "WXPAY_API_KEY",
            "the 32-character APIv2 key from the merchant platform",
        );
        let session_secret = required(
            "SESSION_SECRET",
            "at least 32 random characters to sign session tokens",
        );
        let push_token = required(
            "WX_PUSH_TOKEN",
            "the Token set in the mini program's message push settings",
        );
        let notify_url = required("WXPAY_NOTIFY_URL", "public URL of /callbacks/pay");

        if !api_key.is_empty() && api_key.len() != 32 {
            problems.push(format!(
                "WXPAY_API_KEY must be 32 characters (has {})",
                api_key.len()
            ));
        }
        if !session_secret.is_empty() && session_secret.len() < 32 {
            problems.push("SESSION_SECRET must be at least 32 characters".into());
        }
        let sign_type = match get("WXPAY_SIGN_TYPE").as_deref() {
            None => SignType::Md5,
            Some(s) => SignType::parse(s).unwrap_or_else(|| {
                problems.push(format!("WXPAY_SIGN_TYPE=`{s}` must be MD5 or HMAC-SHA256"));
                SignType::Md5
            }),
        };
        let push_aes_key = get("WX_PUSH_AES_KEY");
        if let Some(k) = &push_aes_key {
            if k.len() != 43 {
                problems.push(format!(
                    "WX_PUSH_AES_KEY must be the 43-character EncodingAESKey (has {})",
                    k.len()
                ));
            }
        }
        let sub_mch_id = get("WXPAY_SUB_MCH_ID");
        let sub_appid = get("WXPAY_SUB_APPID");
        if sub_appid.is_some() && sub_mch_id.is_none() {
            problems.push("WXPAY_SUB_APPID is set but WXPAY_SUB_MCH_ID is not (service-provider mode needs both)".into());
        }
        let store = match StoreConfig::parse(
            &get("STORE").unwrap_or_else(|| "memory".into()),
            get("DYNAMODB_ENDPOINT"),
        ) {
            Ok(s) => s,
            Err(p) => {
                problems.push(p);
                StoreConfig::Memory
            }
        };
        let trading_component = match get("WX_TRADING_COMPONENT").as_deref() {
            None | Some("off") => TradingComponent::Off,
            Some("always") => TradingComponent::Always,
            Some("scene") => TradingComponent::SceneCheck,
            Some(o) => {
                problems.push(format!(
                    "WX_TRADING_COMPONENT=`{o}` must be off, always or scene"
                ));
                TradingComponent::Off
            }
        };
        let fund_type = match get("WX_FUND_TYPE").as_deref() {
            None | Some("0") => FundType::Direct,
            Some("1") => FundType::SecondaryMerchant,
            Some(o) => {
                problems.push(format!("WX_FUND_TYPE=`{o}` must be 0 or 1"));
                FundType::Direct
            }
        };
        if fund_type == FundType::SecondaryMerchant && trading_component == TradingComponent::Off {
            problems.push(
                "WX_FUND_TYPE=1 needs the trading component (WX_TRADING_COMPONENT=always)".into(),
            );
        }
        let return_address = match get("WX_RETURN_ADDRESS") {
            None => None,
            Some(raw) => match serde_json::from_str::<crate::domain::Address>(&raw) {
                Ok(a) => match a.check() {
                    Ok(()) => Some(a),
                    Err(why) => {
                        problems.push(format!("WX_RETURN_ADDRESS: {why}"));
                        None
                    }
                },
                Err(e) => {
                    problems.push(format!(
                        "WX_RETURN_ADDRESS must be JSON like {{\"receiver_name\":\"…\",\"detailed_address\":\"…\",\"tel_number\":\"…\"}}: {e}"
                    ));
                    None
                }
            },
        };
        let token_mode = match get("WX_TOKEN_MODE").as_deref() {
            None | Some("stable") => TokenMode::Stable,
            Some("classic") => TokenMode::Classic,
            Some(o) => {
                problems.push(format!("WX_TOKEN_MODE=`{o}` must be stable or classic"));
                TokenMode::Stable
            }
        };
        let client_cert = match (
            get("WXPAY_CERT_P12_BASE64"),
            get("WXPAY_CERT_PEM"),
            get("WXPAY_KEY_PEM"),
        ) {
            (Some(p12), _, _) => {
                use base64::Engine;
                match base64::engine::general_purpose::STANDARD.decode(p12.trim()) {
                    Ok(der) => Some(ClientCert::Pkcs12 {
                        der,
                        password: get("WXPAY_CERT_P12_PASSWORD")
                            .unwrap_or_else(|| mch_id.clone())
                            .into(),
                    }),
                    Err(_) => {
                        problems.push("WXPAY_CERT_P12_BASE64 is not valid base64".into());
                        None
                    }
                }
            }
            (None, Some(cert), Some(key)) => Some(ClientCert::Pem {
                cert,
                key: key.into(),
            }),
            (None, Some(_), None) | (None, None, Some(_)) => {
                problems.push("WXPAY_CERT_PEM and WXPAY_KEY_PEM must be set together".into());
                None
            }
            (None, None, None) => None,
        };
        let num = |k: &str, default: i64, problems: &mut Vec<String>| -> i64 {
            match get(k) {
                None => default,
                Some(v) => v.parse().unwrap_or_else(|_| {
                    problems.push(format!("{k}=`{v}` is not a whole number"));
                    default
                }),
            }
        };
        let session_ttl_secs = num("SESSION_TTL_SECS", 7 * 24 * 3600, &mut problems);
        // A token is valid until it expires (nothing revokes one short of a new
        // SESSION_SECRET), so its life is bounded: ≤ 0 would refuse every token issued, and a
        // huge one would never expire.
        if !(300..=30 * 24 * 3600).contains(&session_ttl_secs) {
            problems.push(format!(
                "SESSION_TTL_SECS={session_ttl_secs} must be 300–2592000 (5 minutes to 30 days)"
            ));
        }
        let order_ttl_secs = num("ORDER_TTL_SECS", 30 * 60, &mut problems);
        // An unpaid order is offered for payment with one prepay_id, which WeChat Pay honours
        // for 2 hours (WECHAT_PAY_V2.md §4); the trading component's `shop/order/add` takes an
        // `expire_time` 15 minutes to 1 day ahead. Without it, at least 5 minutes: WeChat Pay
        // wants `time_expire` a minute or more after the request (sent whole seconds, after the
        // order is written), and a key repeated with a minute and 5 s or less left (as WeChat
        // holds the deadline, in whole seconds) is closed rather than paid
        // (`unified_order::PAY_MARGIN_MS`), so 60 s could not be paid at all; 5 minutes leaves
        // nearly 4 to pay in after the margin.
        let min_order_ttl = if trading_component == TradingComponent::Off {
            5 * 60
        } else {
            15 * 60
        };
        if !(min_order_ttl..=2 * 3600).contains(&order_ttl_secs) {
            problems.push(format!(
                "ORDER_TTL_SECS={order_ttl_secs} must be {min_order_ttl}–7200: WeChat Pay's prepay_id \
                 lives 2 hours{}",
                if min_order_ttl > 5 * 60 {
                    ", and the trading component wants an order open at least 15 minutes"
                } else {
                    ", and an order needs minutes to be paid in (WeChat Pay wants a minute at least)"
                }
            ));
        }
        let http_timeout_ms = num("WX_HTTP_TIMEOUT_MS", 5000, &mut problems);
        // 0 or a few ms would time out every WeChat call; over a minute outlasts every
        // function's Lambda timeout.
        if !(100..=60_000).contains(&http_timeout_ms) {
            problems.push(format!(
                "WX_HTTP_TIMEOUT_MS={http_timeout_ms} must be 100–60000 (milliseconds per WeChat call)"
            ));
        }
        let http_timeout_ms = http_timeout_ms.clamp(100, 60_000) as u64;
        let url = |k: &str, default: &str, problems: &mut Vec<String>| -> String {
            let v = get(k).unwrap_or_else(|| default.to_owned());
            if url::Url::parse(&v).is_err() {
                problems.push(format!("{k}=`{v}` is not a URL"));
            }
            v.trim_end_matches('/').to_owned()
        };
        let pay_base_url = url("WXPAY_BASE_URL", DEFAULT_PAY_BASE_URL, &mut problems);
        let api_base_url = url("WX_API_BASE_URL", DEFAULT_API_BASE_URL, &mut problems);
        if !notify_url.is_empty() {
            if url::Url::parse(&notify_url).is_err() {
                problems.push(format!("WXPAY_NOTIFY_URL=`{notify_url}` is not a URL"));
            } else if notify_url.contains('?') {
                problems
                    .push("WXPAY_NOTIFY_URL must not have a query string (WeChat drops it)".into());
            }
        }
        let refund_notify_url = get("WXPAY_REFUND_NOTIFY_URL").unwrap_or_else(|| {
            notify_url
                .strip_suffix("/pay")
                .map(|b| format!("{b}/refund"))
                .unwrap_or_else(|| notify_url.clone())
        });

        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        Ok(Config {
            appid,
            appsecret: appsecret.into(),
            mch_id,
            api_key: api_key.into(),
            sign_type,
            sub_mch_id,
            sub_appid,
            push_token: push_token.into(),
            push_aes_key: push_aes_key.map(Into::into),
            session_secret: session_secret.into(),
            session_ttl_secs,
            pay_base_url,
            api_base_url,
            store,
            notify_url,
            refund_notify_url,
            trading_component,
            fund_type,
            token_mode,
            client_cert,
            admin_token: get("ADMIN_TOKEN").map(Into::into),
            order_ttl_secs,
            order_path: get("WX_ORDER_PATH").unwrap_or_else(|| "pages/order/detail".into()),
            http_timeout_ms,
            return_address,
        })
    }

    /// The appid a user's openid belongs to: `sub_appid` in provider mode.
    pub fn user_appid(&self) -> &str {
        self.sub_appid.as_deref().unwrap_or(&self.appid)
    }

    pub fn is_provider_mode(&self) -> bool {
        self.sub_mch_id.is_some()
    }

    pub fn api_key(&self) -> &str {
        self.api_key.expose_secret()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Every variable a start needs, with valid values.
    const COMPLETE: [(&str, &str); 7] = [
        ("WX_APPID", "wx1"),
        ("WX_APPSECRET", "appsecret-value"),
        ("WXPAY_MCH_ID", "1900000109"),
        ("WXPAY_API_KEY", "192006250b4c09247ec02edce69f6a2d"),
        ("SESSION_SECRET", "0123456789abcdef0123456789abcdef"),
        ("WX_PUSH_TOKEN", "tok"),
        ("WXPAY_NOTIFY_URL", "https://x.example/callbacks/pay"),
    ];

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn an_order_lives_no_longer_than_its_prepay_id() {
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut vars = COMPLETE.to_vec();
            vars.extend_from_slice(extra);
            Config::from_lookup(env(&vars))
        };
        assert!(with(&[("ORDER_TTL_SECS", "7200")]).is_ok());
        assert!(with(&[("ORDER_TTL_SECS", "300")]).is_ok());
        let err = with(&[("ORDER_TTL_SECS", "60")]).unwrap_err().to_string();
        assert!(
            err.contains("ORDER_TTL_SECS=60 must be 300–7200") && err.contains("a minute"),
            "{err}"
        );
        let err = with(&[("ORDER_TTL_SECS", "86400")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ORDER_TTL_SECS=86400") && err.contains("2 hours"),
            "{err}"
        );
        let err = with(&[
            ("ORDER_TTL_SECS", "300"),
            ("WX_TRADING_COMPONENT", "always"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("15 minutes"), "{err}");
        assert!(with(&[
            ("ORDER_TTL_SECS", "900"),
            ("WX_TRADING_COMPONENT", "always")
        ])
        .is_ok());
    }

    #[test]
    fn a_session_lives_between_five_minutes_and_thirty_days() {
        let with = |ttl: &'static str| {
            let mut vars = COMPLETE.to_vec();
            vars.push(("SESSION_TTL_SECS", ttl));
            Config::from_lookup(env(&vars))
        };
        assert!(with("300").is_ok());
        assert!(with("2592000").is_ok());
        for bad in ["0", "-1", "299", "1000000000000"] {
            let err = with(bad).unwrap_err().to_string();
            assert!(err.contains("SESSION_TTL_SECS"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_wechat_call_may_take_a_tenth_of_a_second_to_a_minute() {
        let with = |ms: &'static str| {
            let mut vars = COMPLETE.to_vec();
            vars.push(("WX_HTTP_TIMEOUT_MS", ms));
            Config::from_lookup(env(&vars))
        };
        assert_eq!(with("100").map(|c| c.http_timeout_ms).ok(), Some(100));
        assert_eq!(with("60000").map(|c| c.http_timeout_ms).ok(), Some(60_000));
        // 0 used to become 1 ms, and every call to WeChat timed out.
        for bad in ["0", "-5", "99", "600000"] {
            let err = with(bad).unwrap_err().to_string();
            assert!(
                err.contains("WX_HTTP_TIMEOUT_MS") && err.contains("100–60000"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn lists_every_problem_at_once() {
        let err = Config::from_lookup(env(&[("WXPAY_SIGN_TYPE", "SHA1")])).unwrap_err();
        let text = err.to_string();
        for k in [
            "WX_APPID",
            "WX_APPSECRET",
            "WXPAY_MCH_ID",
            "WXPAY_API_KEY",
            "SESSION_SECRET",
            "WX_PUSH_TOKEN",
            "WXPAY_NOTIFY_URL",
            "WXPAY_SIGN_TYPE",
        ] {
            assert!(text.contains(k), "{k} missing from: {text}");
        }
    }

    #[test]
    fn complete_config_parses_and_hides_secrets() {
        let cfg = Config::from_lookup(env(&[
            COMPLETE.as_slice(),
            &[("STORE", "sqlite:/tmp/x.db")],
        ]
        .concat()))
        .unwrap();
        assert_eq!(cfg.refund_notify_url, "https://x.example/callbacks/refund");
        assert_eq!(cfg.store, StoreConfig::Sqlite("/tmp/x.db".into()));
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("192006250b4c09247ec02edce69f6a2d"));
        assert!(!dbg.contains("appsecret-value"));
    }
}
