#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! Secrets never reach the logs: the whole demo (`wxlocal demo`, local defaults) and a
//! `wxlocal serve` in safe push mode with its own secrets are run with `RUST_LOG=debug`, and
//! everything they print (stdout and stderr) is searched for every secret value, session
//! tokens and WeChat `session_key`s.

#[path = "reliability_support.rs"]
mod support;

use serde_json::json;
use std::time::Duration;
use support::*;
use wxlocal::gateway::LOCAL_DEFAULTS;

const SECRET_KEYS: &[&str] = &[
    "WX_APPSECRET",
    "WXPAY_API_KEY",
    "SESSION_SECRET",
    "WX_PUSH_TOKEN",
    "WX_PUSH_AES_KEY",
    "ADMIN_TOKEN",
];

fn assert_clean(what: &str, log: &str, secrets: &[(&str, String)], tokens: &[String]) {
    assert!(log.len() > 1000, "{what}: suspiciously little was logged");
    for (name, value) in secrets {
        assert!(
            !log.contains(value.as_str()),
            "{what}: {name} appears in the log"
        );
    }
    for t in tokens {
        assert!(
            !log.contains(t.as_str()),
            "{what}: a session token appears in the log"
        );
        let sig = t.rsplit('.').next().unwrap();
        assert!(
            !log.contains(sig),
            "{what}: a session token's signature appears"
        );
    }
    // Session tokens start with base64 of `{"sub"`.
    assert!(
        !log.contains("eyJzdWIi"),
        "{what}: something like a session token"
    );
    // A `session_key` value from jscode2session: the name may appear, a value may not.
    for (i, _) in log.match_indices("session_key") {
        let after: String = log[i + "session_key".len()..].chars().take(40).collect();
        let run = after
            .split(|ch: char| !(ch.is_ascii_alphanumeric() || "+/=".contains(ch)))
            .map(str::len)
            .max()
            .unwrap_or(0);
        assert!(run < 16, "{what}: a session_key value is logged: …{after}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs() {
    let bin = wxlocal_bin();
    // 1. The demo with the local defaults.
    let out = std::process::Command::new(&bin)
        .arg("demo")
        .env("RUST_LOG", "debug")
        .output()
        .expect("wxlocal demo runs");
    let demo_log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the demo failed:\n{demo_log}");
    let defaults: Vec<(&str, String)> = LOCAL_DEFAULTS
        .iter()
        .filter(|(k, _)| SECRET_KEYS.contains(k))
        .map(|(k, v)| (*k, (*v).to_owned()))
        .collect();
    assert_clean("demo", &demo_log, &defaults, &[]);

    // 2. `serve` in safe push mode with its own secrets, through a purchase.
    let own: Vec<(&str, String)> = vec![
        ("WX_APPSECRET", "appsecret-SENTINEL-7f3a9c2e1b5d".into()),
        ("WXPAY_API_KEY", "apikeySENTINEL0000000000000000x9".into()),
        (
            "SESSION_SECRET",
            "session-secret-SENTINEL-4e8b1d7c9a2f6e3b".into(),
        ),
        ("WX_PUSH_TOKEN", "pushtokenSENTINEL5c1e".into()),
        (
            "WX_PUSH_AES_KEY",
            "SENTINELabcdefghijklmnopqrstuvwxyz01234567A".into(),
        ),
        ("ADMIN_TOKEN", "admin-token-SENTINEL-9d2c".into()),
    ];
    let dir = temp_dir("secrets");
    let log = dir.join("serve.log");
    let mut env: Vec<(&str, &str)> = own.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.push(("RUST_LOG", "debug"));
    env.push(("STORE", "memory"));
    let (mut child, base) = spawn_serve(&bin, "memory", true, &env, &log);
    let c = Client::at(&base, "admin-token-SENTINEL-9d2c");
    let (token, _) = c.login("secretive").await;
    let (s, v) = c.order(&token, 1, None).await;
    assert_eq!(s, 200, "{v}");
    let no = v["out_trade_no"].as_str().unwrap().to_owned();
    c.pay_at_sandbox(&no).await;
    eventually("PAID and synced", Duration::from_secs(20), || async {
        c.order_pay_calls().await.contains_key(&no)
    })
    .await;
    // A refused admin call and a refused token, so refusals are logged too.
    let (s, _) = c
        .post(
            "/admin/orderSync",
            Some(&format!("{token}x")),
            &json!({"action": "drain"}),
        )
        .await;
    assert_eq!(s, 401);
    let (s, _) = c
        .post("/fn/queryOrder", Some(&format!("{token}x")), &json!({}))
        .await;
    assert_eq!(s, 401);
    tokio::time::sleep(Duration::from_millis(300)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let serve_log = std::fs::read_to_string(&log).unwrap();
    assert_clean("serve", &serve_log, &own, std::slice::from_ref(&token));
    eprintln!(
        "FIGURES secrets: demo log {} bytes, serve log {} bytes, {} secret values + session tokens + session_key searched, 0 found",
        demo_log.len(),
        serve_log.len(),
        defaults.len() + own.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
