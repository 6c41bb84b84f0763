//! `wxlocal serve` takes its configuration from the environment like Lambda does: every
//! variable `Config` reads, over the local defaults; `Options::overrides` still win. The only
//! test in this binary, because it sets the process environment.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use wxlocal::gateway::{start, Options};
use wxshop::config::{StoreConfig, TokenMode};

#[tokio::test]
async fn the_gateway_takes_every_variable_from_the_environment() {
    let return_address = r#"{"receiver_name":"Returns desk","detailed_address":"1 Dock Road","tel_number":"02000000000","city":"Shenzhen"}"#;
    for (k, v) in [
        ("WX_RETURN_ADDRESS", return_address),
        ("WX_TOKEN_MODE", "classic"),
        ("SESSION_TTL_SECS", "3600"),
        ("WX_HTTP_TIMEOUT_MS", "1234"),
        ("WX_ORDER_PATH", "pages/orders/show"),
        (
            "WXPAY_REFUND_NOTIFY_URL",
            "https://shop.example.com/callbacks/refund",
        ),
        // Pointed away from the sandbox on purpose: honoured (and warned about).
        ("WXPAY_BASE_URL", "http://127.0.0.1:9/elsewhere"),
        // Overridden below: the override wins.
        ("ORDER_TTL_SECS", "1000"),
        // `--store` wins over the environment.
        ("STORE", "sqlite:/nonexistent/dir/never.db"),
    ] {
        std::env::set_var(k, v);
    }
    let r = start(Options {
        addr: "127.0.0.1:0".parse().unwrap(),
        store: Some("memory".into()),
        overrides: HashMap::from([("ORDER_TTL_SECS".to_owned(), "900".to_owned())]),
        use_env: true,
        ..Default::default()
    })
    .await
    .expect("stack starts");
    let c = &r.app.config;

    let a = c
        .return_address
        .as_ref()
        .expect("WX_RETURN_ADDRESS is used");
    assert_eq!(a.receiver_name, "Returns desk");
    assert_eq!(a.city.as_deref(), Some("Shenzhen"));
    assert_eq!(c.token_mode, TokenMode::Classic);
    assert_eq!(c.session_ttl_secs, 3600);
    assert_eq!(c.http_timeout_ms, 1234);
    assert_eq!(c.order_path, "pages/orders/show");
    assert_eq!(
        c.refund_notify_url,
        "https://shop.example.com/callbacks/refund"
    );
    assert_eq!(c.pay_base_url, "http://127.0.0.1:9/elsewhere");
    // Unset: the running gateway's sandbox and callbacks.
    assert_eq!(c.api_base_url, format!("{}/sandbox/api", r.base_url));
    assert_eq!(c.notify_url, format!("{}/callbacks/pay", r.base_url));
    assert_eq!(c.order_ttl_secs, 900, "overrides win over the environment");
    assert_eq!(c.store, StoreConfig::Memory, "--store wins over STORE");
    r.stop();
}
