//! `PayClient` against a local axum stand-in for WeChat Pay on 127.0.0.1:0 that checks each
//! request's signature and fields and answers signed XML: success, each err_code family,
//! return_code FAIL, bad response signatures, HTTP 500, timeouts, bills.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::IntoResponse;
use secrecy::SecretString;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wxshop::config::ClientCert;
use wxshop::domain::{Fen, OpenId, OutRefundNo, OutTradeNo};
use wxshop::pay::xml;
use wxshop::pay::*;

const KEY: &str = "192006250b4c09247ec02edce69f6a2d";
const APPID: &str = "wxd930ea5d5a258f4f";
const MCH: &str = "10000100";

// A throwaway self-signed EC certificate (CN=1900000109) and its PKCS#12 forms: `legacy` is
// what the merchant platform issues (RC2-40 certificate bag, 3DES key bag, SHA-1 MAC),
// `modern` is OpenSSL 3's default (PBES2/AES-256). Password: 1900000109.
const CERT_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBvzCCAWWgAwIBAgIUaQeRDr94+CqyaCkI9YZEhCz37G0wCgYIKoZIzj0EAwIw\nNDETMBEGA1UEAwwKMTkwMDAwMDEwOTEdMBsGA1UECgwUd3hzaG9wIHRlc3QgbWVy\nY2hhbnQwIBcNMjYxMTIzMTk0MjA0WhgPMjEyNjEwMzAxOTQyMDRaMDQxEzARBgNV\nBAMMCjE5MDAwMDAxMDkxHTAbBgNVBAoMFHd4c2hvcCB0ZXN0IG1lcmNoYW50MFkw\nEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEszdrd1G1mT+t1WomcEbdvKh5ZcZl45M5\nwaUosC/oGmSIu5/ByR7rhfUW73+r3x++//8nNLHHihF9+7iTHje+/qNTMFEwHQYD\nVR0OBBYEFO/+EiQznt8kNOFvBKSh6OJzBXRCMB8GA1UdIwQYMBaAFO/+EiQznt8k\nNOFvBKSh6OJzBXRCMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIh\nAJ0zDivvHc5W1uNLreJ5ke9o7kvOsXjmiGrz2jg033XSAiAbhEq5RVGdRCuz64cT\ny2NiH7WfIyZ9Pu6rnrGGiOk8mA==\n-----END CERTIFICATE-----\n";
const KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgWhl6cLwRf2PBmfHH\nSdvYPIPP08wTIpxYXXVFr9dnt6mhRANCAASzN2t3UbWZP63VaiZwRt28qHllxmXj\nkznBpSiwL+gaZIi7n8HJHuuF9Rbvf6vfH77//yc0sceKEX37uJMeN77+\n-----END PRIVATE KEY-----\n";
const LEGACY_P12_B64: &str = "MIIDwgIBAzCCA4gGCSqGSIb3DQEHAaCCA3kEggN1MIIDcTCCAmcGCSqGSIb3DQEHBqCCAlgwggJUAgEAMIICTQYJKoZIhvcNAQcBMBwGCiqGSIb3DQEMAQYwDgQI3jVdAocFFG4CAggAgIICIJpaKkemnsh4E9Yxuy9mqCb54uNTYW11/lEwyl/ed6xvvWQDhbr4/QHq9L+odtz6MM4ExDjsjX+CWeT9+OxRU+FArVv/uMk7+mNAREr3xECGViPY8fccCO7Qeh7UEqWiK+skm7mclMtc6h3R66tBT3aLPYnltTux4+YNHG/IU6P/+Vn2Al5EW2hkjYAIZWq9LX/uOIedfjI5H6W5X6fDStqPtKbP3As/wJRnswoobjQLOdU5p/j9+LYPg3wk0dDXLW2HTAo8E7vfp2LXq/lkmuNkpjes/YpL3EwL60fAZpenPn9JJU9HJG78oMruVo/6sbt5EGcthkQ8E1/1X0SY+YBgrq4+FjLwQiub3J3sAp+dZPgsj6vc+1AlzbJZvW6dNbowushPo+6TwzvBaZT3KdMSvUbNsBpO34uc3ARQHru53gW0e0IrlSOi3x0cApLqbIHcekv6u7qWQEEhgwTyvEn5yQP/Bw1+Qv8QRNhheN7JZDWckp8h/Avqia3v/MzcghNfTFB29zBxV1ky73shiIUowFyPXeHJuGQ2kgf6+qmVwO5On2WNLlHEnrzMhTY1nYVpniQLNhtE648k9DYpIRBNmiKAUnS/Rr76BdFeDBX9KcBABEoFWaOgBTMq1vkWUFJDODifRS4pBUST9BoDSRaBapNrptcprD84tHj5vG0hONWLSgnijjNfXDTZTZg1lCM5BZznK0oveDQuXqQVWnYwggECBgkqhkiG9w0BBwGggfQEgfEwge4wgesGCyqGSIb3DQEMCgECoIG0MIGxMBwGCiqGSIb3DQEMAQMwDgQIZIGw0GpHe1ECAggABIGQIuQuUxTYcjp9jQVsGljSiiVVpdA214g5P9Vnmm+RIOLiAAGHA+D0m8gEHrrr+V5+8ecolbfw3XxDQBgC6o+0sAdstfYGftiEEkZMvv7yaELeYUScSZ2/gEHzw1Z/tOL9fH/Xane4oUWb8LlaTp4Rf3zCncAvy8eWK8hwdMVQx69IjNXzbts2pDi1ylSrAmmQMSUwIwYJKoZIhvcNAQkVMRYEFHuFHvXkSDtdP9iMAq8yNHq1GDwvMDEwITAJBgUrDgMCGgUABBTw16hXkskKCghNIWSqQ1zu4aZVAgQIazfSlkGVoPICAggA";
const MODERN_P12_B64: &str = "MIIETAIBAzCCBAIGCSqGSIb3DQEHAaCCA/MEggPvMIID6zCCAqIGCSqGSIb3DQEHBqCCApMwggKPAgEAMIICiAYJKoZIhvcNAQcBMFcGCSqGSIb3DQEFDTBKMCkGCSqGSIb3DQEFDDAcBAj/pJGp5JNqFgICCAAwDAYIKoZIhvcNAgkFADAdBglghkgBZQMEASoEEOU/Hk220PNsd9kuhOsTI7CAggIgvRhPDxEGFfQ6ga+L4h629YQzt4eJhPw2MUqCfASw1iP/eZfk2xgSb5ypePnJBYXKsoIe4fgL06eHPXvBqqa25LGEKO2NXcqMy9lQruVyU308+rAFUi8XY3XlvE8OCJ5ZYbenETpEtXU8WZvHnJUwaYIzDntaSiBbvDK0jBIzq1A97us+OEh4+dNDPUooyufVs+Mc2jWVxpBBEe7p67xHTm8Y4VqQUjHN7bR1nqFrQ3NREZv9dP++NE0QoZ4IFTju55/xz/fKskFFshN5ZYxlqVWhLMLWhfEljdk5/ut+99vNCctkqbGhqqcvHgTA4RJ+AERuzyN6uTDOlJl+jIwSqwNItVgMH9k/0CCdWFspay1oGwo8UO1xboABs3KsCMPvwMvnzCT4fubIfy43NoR519jxtNj8RRF3oEU/wvqCfZqwhvNF23VEwwCxV1uFwYfDpDtXhkgfOHKAKfCGnGEx+UzsltjVETElteB1oSsoTwQ3Jzv0bPSvd2hbLftPwJlTVxTQ1JxeM1lBhcmJizD0qLm22iA5fS80x6KGfDcwzcoFiK+pklam0y03NS+AGpNzujZ4eL+Oiy3aadXwVV+wBBmOk7rG512cpFB01Sld7JhozwKZM/oofL8wvedsaF9cMA31cUWw4RheWiyVi3FBGmE7iZArU8L0qzvDO7T3Rv6bzfKyFBxTArG3XWwHKIaa4IE+YtqVpTHSXoSgVFEL6jCCAUEGCSqGSIb3DQEHAaCCATIEggEuMIIBKjCCASYGCyqGSIb3DQEMCgECoIHvMIHsMFcGCSqGSIb3DQEFDTBKMCkGCSqGSIb3DQEFDDAcBAhd5KnR0iSItgICCAAwDAYIKoZIhvcNAgkFADAdBglghkgBZQMEASoEEF9jRikh3NwsNFKeNhjunEsEgZDh/DEhQSSLGQhNYbeHlGusjLv7HUOIXLwATmZEQcLZFh+odRM1UCIDaKaA+h+oM57eXWvte7vAwa8aIRA3OIaeHPQphvb6PqVxbwt455a+zMT6nS0pcN74JD7Tl7JrW2+9np8cb97PQ6yh07JCTHds4h4IdIb3hoADqGCOXhQUz7e6LlynClKlPYyq8WyH7CgxJTAjBgkqhkiG9w0BCRUxFgQUe4Ue9eRIO10/2IwCrzI0erUYPC8wQTAxMA0GCWCGSAFlAwQCAQUABCD+1GwQoexvPR2kkPNlQ5nlj63tpBZolVsDHR8cMvQ0OwQIvMG4EYDt2bMCAggA";

/// What the stand-in answers.
struct Reply {
    status: u16,
    body: String,
    delay: Duration,
}

type Handler = dyn Fn(&str, &Fields) -> Reply + Send + Sync;

struct Mock {
    handler: Box<Handler>,
    seen: Mutex<Vec<(String, Fields)>>,
}

struct Server {
    base: String,
    state: Arc<Mock>,
}

impl Server {
    fn seen(&self) -> Vec<(String, Fields)> {
        self.state.seen.lock().unwrap().clone()
    }
    fn last(&self) -> (String, Fields) {
        self.seen().last().cloned().expect("a request")
    }
}

async fn route(State(m): State<Arc<Mock>>, uri: Uri, body: Bytes) -> impl IntoResponse {
    let path = uri.path().trim_start_matches('/').to_owned();
    let fields = match xml::decode(&body) {
        Ok(f) => f,
        Err(_) => return (StatusCode::OK, ret_fail("XML格式错误").body),
    };
    // Like WeChat: a request whose signature does not verify gets return_code FAIL.
    if verify(&fields, KEY).is_err() {
        return (StatusCode::OK, ret_fail("签名错误").body);
    }
    m.seen.lock().unwrap().push((path.clone(), fields.clone()));
    let reply = (m.handler)(&path, &fields);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    (StatusCode::from_u16(reply.status).unwrap(), reply.body)
}

async fn serve(handler: impl Fn(&str, &Fields) -> Reply + Send + Sync + 'static) -> Server {
    let state = Arc::new(Mock {
        handler: Box::new(handler),
        seen: Mutex::new(Vec::new()),
    });
    let app = axum::Router::new()
        .fallback(route)
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Server {
        base: format!("http://{addr}"),
        state,
    }
}

fn base_fields(pairs: &[(&str, &str)]) -> Fields {
    let mut f = Fields::new();
    f.insert("return_code".into(), "SUCCESS".into());
    f.insert("return_msg".into(), "OK".into());
    f.insert("appid".into(), APPID.into());
    f.insert("mch_id".into(), MCH.into());
    for (k, v) in pairs {
        f.insert((*k).into(), (*v).into());
    }
    f
}

/// A signed business success with extra fields.
fn ok(pairs: &[(&str, &str)]) -> Reply {
    let mut f = base_fields(pairs);
    f.insert("result_code".into(), "SUCCESS".into());
    reply(signed_xml(f, KEY, SignType::Md5))
}

/// A signed business failure.
fn biz_fail(code: &str) -> Reply {
    let mut f = base_fields(&[]);
    f.insert("result_code".into(), "FAIL".into());
    f.insert("err_code".into(), code.into());
    f.insert("err_code_des".into(), format!("{code} happened"));
    reply(signed_xml(f, KEY, SignType::Md5))
}

fn ret_fail(msg: &str) -> Reply {
    let mut f = Fields::new();
    f.insert("return_code".into(), "FAIL".into());
    f.insert("return_msg".into(), msg.into());
    reply(xml::encode(&f))
}

fn reply(body: String) -> Reply {
    Reply {
        status: 200,
        body,
        delay: Duration::ZERO,
    }
}

fn config(base: &str) -> PayConfig {
    PayConfig {
        base_url: base.to_owned(),
        appid: APPID.into(),
        mch_id: MCH.into(),
        api_key: SecretString::from(KEY),
        sign_type: SignType::Md5,
        sub_appid: None,
        sub_mch_id: None,
        client_cert: None,
        timeout: Duration::from_secs(5),
    }
}

fn client(base: &str) -> PayClient {
    PayClient::new(config(base)).unwrap()
}

fn order_request() -> UnifiedOrderRequest {
    UnifiedOrderRequest {
        body: "茶店-龙井 <礼盒>".into(),
        out_trade_no: OutTradeNo::parse("WX20140903131540abcdefabcdef").unwrap(),
        total_fee: Fen::new(2999).unwrap(),
        spbill_create_ip: "127.0.0.1".into(),
        notify_url: "https://shop.example/callbacks/pay".into(),
        openid: OpenId::parse("oUpF8uMEb4qRXf22hE3X68TekukE").unwrap(),
        time_start: Some(1_409_721_340_000),
        time_expire: Some(1_409_721_340_000 + 30 * 60 * 1000),
        attach: Some("a=1&b=2".into()),
        detail: Some(r#"{"goods_detail":[{"goods_id":"sku1","quantity":1,"price":2999}]}"#.into()),
    }
}

#[tokio::test]
async fn unified_order_direct_mode() {
    let srv = serve(|path, f| {
        assert_eq!(path, "pay/unifiedorder");
        assert_eq!(f["trade_type"], "JSAPI");
        ok(&[
            ("prepay_id", "wx201410272009395522657a690389285100"),
            ("trade_type", "JSAPI"),
        ])
    })
    .await;
    let c = client(&srv.base);
    let resp = c.unified_order(&order_request()).await.unwrap();
    assert_eq!(resp.prepay_id, "wx201410272009395522657a690389285100");
    assert_eq!(resp.trade_type, "JSAPI");
    assert_eq!(resp.fields["result_code"], "SUCCESS");

    let (_, f) = srv.last();
    assert_eq!(f["appid"], APPID);
    assert_eq!(f["mch_id"], MCH);
    assert_eq!(f["body"], "茶店-龙井 <礼盒>");
    assert_eq!(f["out_trade_no"], "WX20140903131540abcdefabcdef");
    assert_eq!(f["total_fee"], "2999");
    assert_eq!(f["spbill_create_ip"], "127.0.0.1");
    assert_eq!(f["notify_url"], "https://shop.example/callbacks/pay");
    assert_eq!(f["openid"], "oUpF8uMEb4qRXf22hE3X68TekukE");
    assert_eq!(f["time_start"], "20140903131540");
    assert_eq!(f["time_expire"], "20140903134540");
    assert_eq!(f["attach"], "a=1&b=2");
    assert!(f["detail"].contains("goods_detail"));
    assert_eq!(f["nonce_str"].len(), 32);
    assert_eq!(f["sign"].len(), 32);
    for absent in ["sub_openid", "sub_appid", "sub_mch_id", "sign_type"] {
        assert!(!f.contains_key(absent), "{absent} must not be sent");
    }

    // wx.requestPayment parameters for that prepay_id.
    let p = c.payment_params(&resp.prepay_id, 1_490_840_662);
    assert_eq!(p.package, format!("prepay_id={}", resp.prepay_id));
    assert_eq!(
        p.pay_sign,
        pay_sign(
            APPID,
            &p.time_stamp,
            &p.nonce_str,
            &p.package,
            SignType::Md5,
            KEY
        )
    );
}

#[tokio::test]
async fn provider_mode_and_hmac() {
    let srv = serve(|_, f| {
        let mut r = base_fields(&[
            ("result_code", "SUCCESS"),
            ("prepay_id", "wx2"),
            ("trade_type", "JSAPI"),
            ("sub_appid", "wxsub"),
            ("sub_mch_id", "1900000109"),
        ]);
        r.insert("nonce_str".into(), f["nonce_str"].clone());
        reply(signed_xml(r, KEY, SignType::HmacSha256))
    })
    .await;
    let mut cfg = config(&srv.base);
    cfg.sign_type = SignType::HmacSha256;
    cfg.sub_appid = Some("wxsub".into());
    cfg.sub_mch_id = Some("1900000109".into());
    let c = PayClient::new(cfg).unwrap();
    let resp = c.unified_order(&order_request()).await.unwrap();
    assert_eq!(resp.prepay_id, "wx2");
    let (_, f) = srv.last();
    assert_eq!(f["sub_appid"], "wxsub");
    assert_eq!(f["sub_mch_id"], "1900000109");
    assert_eq!(f["sub_openid"], "oUpF8uMEb4qRXf22hE3X68TekukE");
    assert!(!f.contains_key("openid"));
    assert_eq!(f["sign_type"], "HMAC-SHA256");
    assert_eq!(f["sign"].len(), 64);
    // paySign is computed for sub_appid, the mini program the user is in.
    assert_eq!(c.user_appid(), "wxsub");
    let p = c.payment_params("wx2", 1);
    assert_eq!(p.sign_type, SignType::HmacSha256);
    assert_eq!(
        p.pay_sign,
        pay_sign(
            "wxsub",
            "1",
            &p.nonce_str,
            "prepay_id=wx2",
            SignType::HmacSha256,
            KEY
        )
    );
}

#[tokio::test]
async fn err_code_families_and_retryability() {
    // The stand-in answers with the err_code carried in the request's order/refund number.
    let srv = serve(|path, f| {
        let code = match path {
            "pay/unifiedorder" => f["out_trade_no"].trim_start_matches("CODE_").to_owned(),
            "pay/orderquery" | "pay/closeorder" => {
                f["out_trade_no"].trim_start_matches("CODE_").to_owned()
            }
            "secapi/pay/refund" => f["out_refund_no"].trim_start_matches("CODE_").to_owned(),
            "pay/refundquery" => f["out_refund_no"].trim_start_matches("CODE_").to_owned(),
            _ => "UNEXPECTED".into(),
        };
        biz_fail(&code)
    })
    .await;
    let c = client(&srv.base);
    let otn = |code: &str| OutTradeNo::parse(format!("CODE_{code}")).unwrap();
    let orn = |code: &str| OutRefundNo::parse(format!("CODE_{code}")).unwrap();

    for (code, retry) in [
        ("SYSTEMERROR", true),
        ("ORDERPAID", false),
        ("ORDERCLOSED", false),
        ("OUT_TRADE_NO_USED", false),
        // What some merchants see instead of OUT_TRADE_NO_USED for a reused out_trade_no
        // (err_code_des 商户订单号重复): refused alike, not retried.
        ("INVALID_REQUEST", false),
        ("NOTENOUGH", false),
        ("APPID_MCHID_NOT_MATCH", false),
        ("LACK_PARAMS", false),
    ] {
        let mut req = order_request();
        req.out_trade_no = otn(code);
        let e = c.unified_order(&req).await.unwrap_err();
        assert_eq!(e.err_code(), Some(code));
        assert_eq!(e.is_retryable(), retry, "unifiedorder {code}");
        assert!(
            matches!(e, PayError::Business { ref description, .. } if description == &format!("{code} happened"))
        );
    }
    for (code, retry) in [("ORDERNOTEXIST", false), ("SYSTEMERROR", true)] {
        let e = c
            .order_query(OrderRef::OutTradeNo(otn(code)))
            .await
            .unwrap_err();
        assert_eq!(
            (e.err_code(), e.is_retryable()),
            (Some(code), retry),
            "orderquery"
        );
    }
    for (code, retry) in [
        ("ORDERPAID", false),
        ("ORDERCLOSED", false),
        ("SYSTEMERROR", true),
    ] {
        let e = c.close_order(&otn(code)).await.unwrap_err();
        assert_eq!(
            (e.err_code(), e.is_retryable()),
            (Some(code), retry),
            "closeorder"
        );
    }
    for (code, retry) in [
        ("SYSTEMERROR", true),
        ("BIZERR_NEED_RETRY", true),
        ("FREQUENCY_LIMITED", true),
        ("NOTENOUGH", true),
        ("INVALID_REQ_TOO_MUCH", false),
        ("TRADE_OVERDUE", false),
        ("USER_ACCOUNT_ABNORMAL", false),
        ("ERROR", false),
        ("PARAM_ERROR", false),
    ] {
        let req = RefundRequest {
            out_trade_no: otn("ANY"),
            out_refund_no: orn(code),
            total_fee: Fen::new(100).unwrap(),
            refund_fee: Fen::new(100).unwrap(),
            refund_desc: None,
            notify_url: None,
        };
        let e = c.refund(&req).await.unwrap_err();
        assert_eq!(
            (e.err_code(), e.is_retryable()),
            (Some(code), retry),
            "refund {code}"
        );
    }
    for (code, retry) in [("REFUNDNOTEXIST", false), ("SYSTEMERROR", true)] {
        let e = c
            .refund_query(RefundRef::OutRefundNo(orn(code)))
            .await
            .unwrap_err();
        assert_eq!(
            (e.err_code(), e.is_retryable()),
            (Some(code), retry),
            "refundquery"
        );
    }
}

#[tokio::test]
async fn return_code_fail_is_not_retryable() {
    let srv = serve(|_, _| ret_fail("受理机构必须传入sub_mch_id")).await;
    let e = client(&srv.base)
        .unified_order(&order_request())
        .await
        .unwrap_err();
    assert_eq!(
        e,
        PayError::Return {
            msg: "受理机构必须传入sub_mch_id".into()
        }
    );
    assert!(!e.is_retryable());
    assert_eq!(e.err_code(), None);

    // And a request signed with the wrong key is refused by the stand-in the same way.
    let srv = serve(|_, _| ok(&[("prepay_id", "x")])).await;
    let mut cfg = config(&srv.base);
    cfg.api_key = SecretString::from("0123456789abcdef0123456789abcdef");
    let e = PayClient::new(cfg)
        .unwrap()
        .unified_order(&order_request())
        .await
        .unwrap_err();
    assert_eq!(
        e,
        PayError::Return {
            msg: "签名错误".into()
        }
    );
    assert!(!e.to_string().contains("0123456789abcdef0123456789abcdef"));
}

#[tokio::test]
async fn bad_response_signatures_are_refused() {
    let forged = |_: &str, _: &Fields| {
        let mut f = base_fields(&[("result_code", "SUCCESS"), ("prepay_id", "evil")]);
        f.insert("nonce_str".into(), "n".into());
        reply(signed_xml(
            f,
            "another-key-another-key-another-k",
            SignType::Md5,
        ))
    };
    let unsigned = |_: &str, _: &Fields| {
        reply(xml::encode(&base_fields(&[
            ("result_code", "SUCCESS"),
            ("prepay_id", "evil"),
        ])))
    };
    let tampered = |_: &str, _: &Fields| {
        let mut f = base_fields(&[("result_code", "SUCCESS"), ("prepay_id", "good")]);
        sign_in_place(&mut f, KEY, SignType::Md5);
        f.insert("prepay_id".into(), "evil".into());
        reply(xml::encode(&f))
    };
    let wrong_len = |_: &str, _: &Fields| {
        let mut f = base_fields(&[("result_code", "SUCCESS"), ("prepay_id", "evil")]);
        f.insert("sign".into(), "ABC".into());
        reply(xml::encode(&f))
    };
    // A business FAIL must be signed too before its err_code is believed.
    let unsigned_fail = |_: &str, _: &Fields| {
        reply(xml::encode(&base_fields(&[
            ("result_code", "FAIL"),
            ("err_code", "ORDERPAID"),
        ])))
    };
    for (name, h) in [
        (
            "forged",
            Box::new(forged) as Box<dyn Fn(&str, &Fields) -> Reply + Send + Sync>,
        ),
        ("unsigned", Box::new(unsigned)),
        ("tampered", Box::new(tampered)),
        ("wrong length", Box::new(wrong_len)),
        ("unsigned fail", Box::new(unsigned_fail)),
    ] {
        let srv = serve(h).await;
        let e = client(&srv.base)
            .unified_order(&order_request())
            .await
            .unwrap_err();
        assert_eq!(e, PayError::BadSignature, "{name}");
        assert!(!e.is_retryable());
    }
}

/// What `unified_order` answers to a signed SUCCESS reply changed by `edit`.
async fn unified_order_refusal(edit: impl Fn(&mut Fields) + Send + Sync + 'static) -> PayError {
    let srv = serve(move |_, _| {
        let mut f = base_fields(&[("result_code", "SUCCESS"), ("prepay_id", "x")]);
        edit(&mut f);
        reply(signed_xml(f, KEY, SignType::Md5))
    })
    .await;
    client(&srv.base)
        .unified_order(&order_request())
        .await
        .unwrap_err()
}

#[tokio::test]
async fn response_for_another_merchant_is_refused() {
    let e = unified_order_refusal(|f| {
        f.insert("mch_id".into(), "99999999".into());
    })
    .await;
    assert_eq!(e, PayError::WrongMerchant("mch_id"));
}

/// WeChat echoes appid and mch_id in every SUCCESS reply: a signed reply without them is not
/// known to be about our merchant and is refused like a foreign one.
#[tokio::test]
async fn response_without_the_merchant_ids_is_refused() {
    for missing in ["appid", "mch_id"] {
        let e = unified_order_refusal(move |f| {
            f.remove(missing);
        })
        .await;
        assert_eq!(e, PayError::WrongMerchant(missing), "{missing}");
    }
}

#[tokio::test]
async fn http_errors_timeouts_and_connect_failures() {
    let srv = serve(|_, _| Reply {
        status: 500,
        body: "oops".into(),
        delay: Duration::ZERO,
    })
    .await;
    let e = client(&srv.base)
        .order_query(OrderRef::TransactionId("42".into()))
        .await
        .unwrap_err();
    assert_eq!(e, PayError::Http { status: 500 });
    assert!(e.is_retryable());

    let srv = serve(|_, _| Reply {
        status: 404,
        body: String::new(),
        delay: Duration::ZERO,
    })
    .await;
    let e = client(&srv.base)
        .order_query(OrderRef::TransactionId("42".into()))
        .await
        .unwrap_err();
    assert_eq!(e, PayError::Http { status: 404 });
    assert!(!e.is_retryable());

    let srv = serve(|_, _| Reply {
        delay: Duration::from_secs(3),
        ..ok(&[("trade_state", "SUCCESS")])
    })
    .await;
    let mut cfg = config(&srv.base);
    cfg.timeout = Duration::from_millis(300);
    let started = std::time::Instant::now();
    let e = PayClient::new(cfg)
        .unwrap()
        .order_query(OrderRef::TransactionId("42".into()))
        .await
        .unwrap_err();
    assert_eq!(e, PayError::Timeout);
    assert!(e.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(2));

    // Nothing listening: a retryable connect error.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let e = client(&format!("http://127.0.0.1:{port}"))
        .close_order(&OutTradeNo::parse("1409811653").unwrap())
        .await
        .unwrap_err();
    assert!(matches!(e, PayError::Connect(_)), "{e:?}");
    assert!(e.is_retryable());

    // A body that is not XML.
    let srv = serve(|_, _| reply("<html>gateway</html>".into())).await;
    let e = client(&srv.base)
        .order_query(OrderRef::TransactionId("42".into()))
        .await
        .unwrap_err();
    assert!(matches!(e, PayError::Decode(_)), "{e:?}");
}

#[tokio::test]
async fn order_query_close_refund_and_refund_query() {
    let srv = serve(|path, f| match path {
        "pay/orderquery" => ok(&[
            ("trade_state", "SUCCESS"),
            ("trade_state_desc", "支付成功"),
            (
                "out_trade_no",
                f.get("out_trade_no")
                    .map(String::as_str)
                    .unwrap_or("1409811653"),
            ),
            ("transaction_id", "1008450740201411110005820873"),
            ("total_fee", "2999"),
            ("cash_fee", "2999"),
            ("time_end", "20140903131540"),
            ("openid", "oUpF8uMEb4qRXf22hE3X68TekukE"),
            ("coupon_fee_0", "1"),
        ]),
        "pay/closeorder" => ok(&[("result_msg", "OK")]),
        "secapi/pay/refund" => ok(&[
            ("transaction_id", "1008450740201411110005820873"),
            ("out_trade_no", "1409811653"),
            ("out_refund_no", &f["out_refund_no"]),
            ("refund_id", "2008450740201411110000174436"),
            ("refund_fee", &f["refund_fee"]),
            ("total_fee", &f["total_fee"]),
        ]),
        "pay/refundquery" => ok(&[
            ("total_refund_count", "2"),
            ("refund_count", "2"),
            ("total_fee", "2999"),
            ("out_refund_no_0", "RF1"),
            ("refund_id_0", "5001"),
            ("refund_fee_0", "1000"),
            ("settlement_refund_fee_0", "1000"),
            ("refund_status_0", "SUCCESS"),
            ("refund_recv_accout_0", "支付用户的零钱"),
            ("refund_success_time_0", "2016-07-25 15:26:26"),
            ("out_refund_no_1", "RF2"),
            ("refund_id_1", "5002"),
            ("refund_fee_1", "500"),
            ("refund_status_1", "PROCESSING"),
        ]),
        _ => ret_fail("unknown path"),
    })
    .await;
    let c = client(&srv.base);
    let otn = OutTradeNo::parse("1409811653").unwrap();

    let q = c
        .order_query(OrderRef::OutTradeNo(otn.clone()))
        .await
        .unwrap();
    assert_eq!(q.trade_state, TradeState::Success);
    assert_eq!(q.total_fee, Some(Fen::new(2999).unwrap()));
    assert_eq!(q.time_end_ms, Some(1_409_721_340_000));
    assert_eq!(q.openid.as_deref(), Some("oUpF8uMEb4qRXf22hE3X68TekukE"));
    assert_eq!(q.fields["coupon_fee_0"], "1");
    assert_eq!(srv.last().1["out_trade_no"], "1409811653");

    c.order_query(OrderRef::TransactionId("4200".into()))
        .await
        .unwrap();
    let (_, f) = srv.last();
    assert_eq!(f["transaction_id"], "4200");
    assert!(!f.contains_key("out_trade_no"));

    c.close_order(&otn).await.unwrap();
    assert_eq!(srv.last().0, "pay/closeorder");

    let req = RefundRequest {
        out_trade_no: otn.clone(),
        out_refund_no: OutRefundNo::parse("RF20240101abc").unwrap(),
        total_fee: Fen::new(2999).unwrap(),
        refund_fee: Fen::new(1000).unwrap(),
        refund_desc: Some("七天无理由".into()),
        notify_url: Some("https://shop.example/callbacks/refund".into()),
    };
    let r = c.refund(&req).await.unwrap();
    assert_eq!(r.refund_id, "2008450740201411110000174436");
    assert_eq!(r.refund_fee, Some(Fen::new(1000).unwrap()));
    let (path, f) = srv.last();
    assert_eq!(path, "secapi/pay/refund");
    assert_eq!(f["out_refund_no"], "RF20240101abc");
    assert_eq!(f["total_fee"], "2999");
    assert_eq!(f["refund_fee"], "1000");
    assert_eq!(f["refund_desc"], "七天无理由");
    assert_eq!(f["notify_url"], "https://shop.example/callbacks/refund");

    // Refunding more than the order is refused before anything is sent.
    let before = srv.seen().len();
    let too_much = RefundRequest {
        refund_fee: Fen::new(3000).unwrap(),
        ..req.clone()
    };
    assert!(matches!(
        c.refund(&too_much).await,
        Err(PayError::InvalidRequest(_))
    ));
    assert_eq!(srv.seen().len(), before);

    let rq = c.refund_query(RefundRef::OutTradeNo(otn)).await.unwrap();
    assert_eq!(rq.total_refund_count, Some(2));
    assert_eq!(rq.refunds.len(), 2);
    assert_eq!(rq.refunds[0].out_refund_no, "RF1");
    assert_eq!(rq.refunds[0].refund_status, RefundStatus::Success);
    assert_eq!(
        rq.refunds[0].success_time_ms,
        wxshop::time::parse_beijing_datetime("2016-07-25 15:26:26")
    );
    assert_eq!(rq.refunds[1].refund_fee, Fen::new(500).unwrap());
    assert_eq!(rq.refunds[1].refund_status, RefundStatus::Processing);
    assert_eq!(srv.last().1["out_trade_no"], "1409811653");
}

/// WeChat counts field lengths in UTF-8 bytes: a `body` of 43 Chinese characters (129 bytes)
/// or a `refund_desc` of 27 (81 bytes) is refused before anything is sent — WeChat would
/// answer return_code FAIL — while 42 (126 bytes) goes out whole. `truncate_bytes` fits text
/// on a character boundary.
#[tokio::test]
async fn field_lengths_count_utf8_bytes() {
    let srv = serve(|path, f| match path {
        "pay/unifiedorder" => ok(&[("prepay_id", "wx2014"), ("trade_type", "JSAPI")]),
        _ => ok(&[
            ("out_refund_no", &f["out_refund_no"]),
            ("refund_id", "2008450740201411110000174436"),
        ]),
    })
    .await;
    let c = client(&srv.base);
    let fits = "茶".repeat(42);
    let order = |body: &str, attach: Option<String>| UnifiedOrderRequest {
        body: body.to_owned(),
        attach,
        ..order_request()
    };
    c.unified_order(&order(&fits, None)).await.unwrap();
    assert_eq!(srv.last().1["body"], fits);
    let before = srv.seen().len();
    for req in [
        order(&"茶".repeat(43), None),
        order("tea", Some("茶".repeat(43))),
    ] {
        let e = c.unified_order(&req).await.unwrap_err();
        assert!(
            matches!(&e, PayError::InvalidRequest(m) if m.contains("bytes")),
            "{e:?}"
        );
        assert!(!e.is_retryable());
    }
    let refund = RefundRequest {
        out_trade_no: OutTradeNo::parse("1409811653").unwrap(),
        out_refund_no: OutRefundNo::parse("RF20240101abc").unwrap(),
        total_fee: Fen::new(2999).unwrap(),
        refund_fee: Fen::new(1000).unwrap(),
        refund_desc: Some("坏".repeat(27)),
        notify_url: None,
    };
    assert!(matches!(
        c.refund(&refund).await,
        Err(PayError::InvalidRequest(_))
    ));
    assert_eq!(srv.seen().len(), before, "nothing over-long was sent");

    let reason = "坏".repeat(27);
    let cut = truncate_bytes(&reason, MAX_REFUND_DESC_BYTES);
    assert_eq!(
        cut,
        "坏".repeat(26),
        "78 bytes: the 27th character does not fit whole"
    );
    c.refund(&RefundRequest {
        refund_desc: Some(cut.to_owned()),
        ..refund
    })
    .await
    .unwrap();
    assert_eq!(srv.last().1["refund_desc"], cut);
    assert_eq!(truncate_bytes("tea", 2), "te");
    assert_eq!(truncate_bytes("茶", 2), "");
}

const BILL: &str = "\u{feff}交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注\r\n`2026-09-24 10:00:00,`wxd930ea5d5a258f4f,`10000100,`0,`,`4200001,`WX1,`o1,`JSAPI,`SUCCESS,`OTHERS,`CNY,`29.99,`0.00,`0,`0,`0.00,`0.00,`,`,`茶店-龙井,`a=1,`0.18000,`0.60%,`29.99,`0.00,`\r\n`2026-09-24 11:00:00,`wxd930ea5d5a258f4f,`10000100,`0,`,`4200001,`WX1,`o1,`JSAPI,`REFUND,`OTHERS,`CNY,`0.00,`0.00,`5001,`RF1,`10.00,`0.00,`ORIGINAL,`SUCCESS,`茶店-龙井,`a=1,`-0.06000,`0.60%,`0.00,`10.00,`\r\n总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额\r\n`2,`29.99,`10.00,`0.00,`0.12000,`29.99,`10.00\r\n";

#[tokio::test]
async fn download_bill_csv_and_errors() {
    let srv = serve(|path, f| {
        assert_eq!(path, "pay/downloadbill");
        match f["bill_date"].as_str() {
            // The bill itself is unsigned text.
            "20260924" => reply(BILL.into()),
            "20260925" => reply(
                "<xml><return_code><![CDATA[FAIL]]></return_code><return_msg><![CDATA[No Bill Exist]]></return_msg><error_code><![CDATA[20002]]></error_code></xml>".into(),
            ),
            "20260926" => reply(
                "<xml><return_code><![CDATA[FAIL]]></return_code><return_msg><![CDATA[Bill Creating]]></return_msg><error_code><![CDATA[20002]]></error_code></xml>".into(),
            ),
            _ => reply(
                "\n<xml><return_code>FAIL</return_code><return_msg>invalid bill_type</return_msg><error_code>20001</error_code></xml>".into(),
            ),
        }
    })
    .await;
    let c = client(&srv.base);
    let bill = c.download_bill("20260924", BillType::All).await.unwrap();
    let (_, f) = srv.last();
    assert_eq!(f["bill_type"], "ALL");
    assert_eq!(bill.rows.len(), 2);
    assert_eq!(bill.rows[0].out_trade_no.as_deref(), Some("WX1"));
    assert_eq!(bill.rows[0].total_fee, Some(Fen::new(2999).unwrap()));
    assert_eq!(bill.rows[0].body.as_deref(), Some("茶店-龙井"));
    assert_eq!(bill.rows[1].refund_fee, Some(Fen::new(1000).unwrap()));
    assert_eq!(bill.rows[1].trade_state.as_deref(), Some("REFUND"));
    assert_eq!(bill.summary.count, 2);
    assert_eq!(bill.summary.refund_fee, Some(Fen::new(1000).unwrap()));

    let empty = c
        .download_bill("20260925", BillType::Success)
        .await
        .unwrap();
    assert!(empty.rows.is_empty());
    assert_eq!(srv.last().1["bill_type"], "SUCCESS");

    let e = c
        .download_bill("20260926", BillType::All)
        .await
        .unwrap_err();
    assert!(matches!(e, PayError::BillUnavailable { ref msg, .. } if msg == "Bill Creating"));
    assert!(e.is_retryable());

    let e = c
        .download_bill("20260927", BillType::RechargeRefund)
        .await
        .unwrap_err();
    assert!(matches!(e, PayError::BillUnavailable { ref msg, .. } if msg == "invalid bill_type"));
    assert!(!e.is_retryable());
    assert_eq!(e.err_code(), Some("20001"));

    assert!(matches!(
        c.download_bill("2026-09-24", BillType::All).await,
        Err(PayError::InvalidRequest(_))
    ));
}

#[test]
fn config_validation_and_no_secrets_in_debug() {
    let mut cfg = config("not a url");
    cfg.mch_id.clear();
    let e = PayClient::new(cfg).unwrap_err();
    assert!(matches!(e, PayError::Config(ref m) if m.contains("base_url") && m.contains("mch_id")));
    let c = client("http://127.0.0.1:1");
    assert!(!format!("{c:?}").contains(KEY));
    assert!(!format!("{:?}", c.config()).contains(KEY));
}

#[test]
fn client_certificates_load() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let with = |cert: ClientCert| {
        let mut cfg = config("https://api.mch.weixin.qq.com");
        cfg.client_cert = Some(cert);
        PayClient::new(cfg)
    };
    with(ClientCert::Pem {
        cert: CERT_PEM.into(),
        key: SecretString::from(KEY_PEM),
    })
    .unwrap();
    for p12 in [LEGACY_P12_B64, MODERN_P12_B64] {
        let der = b64.decode(p12).unwrap();
        with(ClientCert::Pkcs12 {
            der: der.clone(),
            password: SecretString::from("1900000109"),
        })
        .unwrap();
        let e = with(ClientCert::Pkcs12 {
            der,
            password: SecretString::from("wrong-password"),
        })
        .unwrap_err();
        assert!(matches!(e, PayError::Certificate(_)), "{e:?}");
        assert!(!e.to_string().contains("wrong-password"));
    }
    let e = with(ClientCert::Pkcs12 {
        der: b"not a p12".to_vec(),
        password: SecretString::from("x"),
    })
    .unwrap_err();
    assert!(matches!(e, PayError::Certificate(_)));
    let e = with(ClientCert::Pem {
        cert: "garbage".into(),
        key: SecretString::from("garbage"),
    })
    .unwrap_err();
    assert!(matches!(e, PayError::Certificate(_)));
}

#[tokio::test]
async fn refund_without_certificate_in_local_mode() {
    // The sandbox accepts refunds without a certificate; the client sends them.
    let srv = serve(|_, f| ok(&[("refund_id", "1"), ("out_refund_no", &f["out_refund_no"])])).await;
    let r = client(&srv.base)
        .refund(&RefundRequest {
            out_trade_no: OutTradeNo::parse("1409811653").unwrap(),
            out_refund_no: OutRefundNo::parse("RF1").unwrap(),
            total_fee: Fen::new(1).unwrap(),
            refund_fee: Fen::new(1).unwrap(),
            refund_desc: None,
            notify_url: None,
        })
        .await
        .unwrap();
    assert_eq!(r.refund_id, "1");
}
