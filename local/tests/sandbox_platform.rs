//! Access tokens and login against the sandbox over real HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sandbox_util;

use sandbox_util::*;
use serde_json::json;

#[tokio::test]
async fn tokens_are_checked_and_expire() {
    let sb = start(cfg()).await;
    let base = sb.base_url();
    let st = |body| post_json(format!("{base}/api/cgi-bin/stable_token"), body);

    let bad_secret =
        st(json!({"grant_type": "client_credential", "appid": APPID, "secret": "nope"})).await;
    assert_eq!(bad_secret["errcode"], 40125);
    let bad_app =
        st(json!({"grant_type": "client_credential", "appid": "wxnope", "secret": SECRET})).await;
    assert_eq!(bad_app["errcode"], 40013);

    let a = token(&base).await;
    let b = token(&base).await;
    assert_eq!(a, b, "stable_token returns the same token while valid");
    let forced = st(json!({"grant_type": "client_credential", "appid": APPID, "secret": SECRET, "force_refresh": true})).await;
    assert_ne!(forced["access_token"], a);
    assert_eq!(forced["expires_in"], 7200);

    let classic = get_json(&format!(
        "{base}/api/cgi-bin/token?grant_type=client_credential&appid={APPID}&secret={SECRET}"
    ))
    .await;
    let c = classic["access_token"].as_str().unwrap().to_owned();
    assert_eq!(classic["expires_in"], 7200);

    let ok = shop(&base, &c, "cat/get", json!({})).await;
    assert_eq!(ok["errcode"], 0);
    assert!(ok["third_cat_list"].as_array().unwrap().len() >= 5);
    let invalid = shop(&base, "garbage", "cat/get", json!({})).await;
    assert_eq!(invalid["errcode"], 40001);
    let missing = post_json(&format!("{base}/api/shop/cat/get"), json!({})).await;
    assert_eq!(missing["errcode"], 41001);

    post_json(&format!("{base}/_control/tokens/expire"), json!({})).await;
    let expired = shop(&base, &c, "cat/get", json!({})).await;
    assert_eq!(expired["errcode"], 42001);
    // A fresh stable token works again.
    let fresh = token(&base).await;
    assert_ne!(fresh, a);
    assert_eq!(
        shop(&base, &fresh, "cat/get", json!({})).await["errcode"],
        0
    );
}

#[tokio::test]
async fn jscode2session_codes() {
    let sb = start(cfg()).await;
    let base = sb.base_url();
    let login = |code: &str| {
        get_json(format!(
            "{base}/api/sns/jscode2session?appid={APPID}&secret={SECRET}&js_code={code}&grant_type=authorization_code"
        ))
    };
    let m1 = post_json(&format!("{base}/_control/login"), json!({"user": "alice"})).await;
    let m2 = post_json(&format!("{base}/_control/login"), json!({"user": "alice"})).await;
    let m3 = post_json(&format!("{base}/_control/login"), json!({"user": "bob"})).await;
    let a1 = login(m1["code"].as_str().unwrap()).await;
    let a2 = login(m2["code"].as_str().unwrap()).await;
    let b = login(m3["code"].as_str().unwrap()).await;
    assert_eq!(a1["errcode"], 0);
    assert_eq!(a1["openid"], a2["openid"], "stable per user");
    assert_eq!(a1["openid"], m1["openid"]);
    assert_ne!(a1["openid"], b["openid"]);
    assert!(a1["session_key"].is_string());
    assert_eq!(a1["openid"].as_str().unwrap().len(), 28);

    let reused = login(m1["code"].as_str().unwrap()).await;
    assert_eq!(reused["errcode"], 40163);

    let t1 = login("toolcode123").await;
    let t2 = login("toolcode123").await;
    assert_eq!(t1["errcode"], 0);
    assert_eq!(
        t1["openid"], t2["openid"],
        "unminted codes map to a stable openid"
    );
    assert_ne!(t1["openid"], a1["openid"]);

    assert_eq!(login("").await["errcode"], 40029);
    let wrong = get_json(&format!(
        "{base}/api/sns/jscode2session?appid={APPID}&secret=bad&js_code=x1&grant_type=authorization_code"
    ))
    .await;
    assert_eq!(wrong["errcode"], 40125);
    assert_eq!(sb.sandbox.calls("sns/jscode2session").len(), 8);
}
