//! `wxlocal demo`: the whole story on one machine, checked step by step. A merchant onboards
//! and lists a product (approved by an audit event), a user logs in, orders, pays; the
//! notification lands, the order syncs to the trading component, the merchant ships, the user
//! confirms, asks for a refund, the merchant approves, the refund notification lands and the
//! after-sale syncs. With `--fund-type 1` (secondary merchant) WeChat collects the money
//! instead: the pay event lands, WeChat makes the refund when the merchant accepts the
//! after-sale, the rest settles into the shop's funds account, and the merchant withdraws to
//! the bank with the admin's QR confirmation. Every step's effect is checked through the same
//! HTTP entry points users have; the exit code says whether all of them held.

use crate::gateway::{start, Options, Running};
use serde_json::{json, Value};
use std::time::Duration;

struct Demo {
    r: Running,
    http: reqwest::Client,
    step: usize,
}

impl Demo {
    fn say(&mut self, title: &str, detail: String) {
        self.step += 1;
        println!("  {:>2}. {title:<44} {detail}", self.step);
    }

    async fn post(
        &self,
        path: &str,
        bearer: Option<&str>,
        body: Value,
    ) -> Result<(u16, Value), String> {
        let mut req = self
            .http
            .post(format!("{}{path}", self.r.base_url))
            .json(&body);
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| format!("POST {path}: {e}"))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value))
    }

    async fn ok(&self, path: &str, bearer: Option<&str>, body: Value) -> Result<Value, String> {
        let (status, v) = self.post(path, bearer, body).await?;
        if status != 200 {
            return Err(format!("POST {path} answered {status}: {v}"));
        }
        Ok(v)
    }

    async fn admin(&self, path: &str, body: Value) -> Result<Value, String> {
        let token = self.r.admin_token.clone();
        self.ok(path, Some(&token), body).await
    }

    /// Polls `check` (bounded) until it yields a value.
    async fn wait_for<T, F, Fut>(&self, what: &str, mut check: F) -> Result<T, String>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>, String>>,
    {
        for _ in 0..200 {
            if let Some(v) = check().await? {
                return Ok(v);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err(format!("timed out waiting for {what}"))
    }

    fn calls_for(&self, api: &str, field: &str, value: &str) -> usize {
        self.r
            .sandbox
            .calls(api)
            .iter()
            .filter(|c| {
                c.get("body")
                    .and_then(|b| b.get(field))
                    .or_else(|| c.get(field))
                    .and_then(Value::as_str)
                    == Some(value)
                    || c.to_string().contains(value)
            })
            .count()
    }
}

fn yuan(fen: i64) -> String {
    format!("¥{}.{:02}", fen / 100, fen % 100)
}

pub async fn run(fund_type: &str) -> Result<(), String> {
    if fund_type != "0" && fund_type != "1" {
        return Err("--fund-type must be 0 or 1".into());
    }
    println!("wxshop demo — every step runs through the real handlers and the WeChat sandbox\n");
    let mut overrides = std::collections::HashMap::new();
    overrides.insert("WX_FUND_TYPE".to_owned(), fund_type.to_owned());
    let r = start(Options {
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        store: Some("memory".into()),
        seed: false,
        time_scale: 0.001,
        overrides,
        use_env: false,
        relay_every: Duration::from_millis(20),
        schedule_every: Some(Duration::from_secs(60)),
        metrics: Default::default(),
    })
    .await?;
    let mut d = Demo {
        r,
        http: reqwest::Client::new(),
        step: 0,
    };
    let result = story(&mut d, fund_type == "1").await;
    match &result {
        Ok(()) => println!("\nall {} steps checked out.", d.step),
        Err(e) => println!("\nFAILED at step {}: {e}", d.step + 1),
    }
    result
}

async fn story(d: &mut Demo, secondary: bool) -> Result<(), String> {
    println!("merchant");
    let check = d
        .admin(
            "/admin/catalogSync",
            json!({"action": "wechat", "api": "shop/register/apply"}),
        )
        .await?;
    d.say(
        "joins the trading component",
        format!("register/apply errcode {}", check["errcode"]),
    );
    crate::gateway::seed(&d.r).await?;
    let p = d
        .admin(
            "/admin/catalogSync",
            json!({"action": "get", "product_id": "tea"}),
        )
        .await?;
    if p["product"]["audit"] != "APPROVED" || p["product"]["listing"] != "LISTED" {
        return Err(format!("product not approved and listed: {}", p["product"]));
    }
    d.say(
        "lists `tea` (audit approved by event)",
        format!(
            "wx product_id {} · {} · stock 1000",
            p["product"]["wx_product_id"],
            yuan(1990)
        ),
    );

    println!("user");
    let code = d
        .ok("/sandbox/_control/login", None, json!({"user": "alice"}))
        .await?;
    let code = code["code"].as_str().ok_or("no code minted")?.to_owned();
    let login = d.ok("/fn/login", None, json!({"code": code})).await?;
    let token = login["token"]
        .as_str()
        .ok_or("login gave no token")?
        .to_owned();
    d.say(
        "logs in (wx.login → jscode2session)",
        format!("openid {}", login["openid"].as_str().unwrap_or("?")),
    );
    let shop = d
        .ok(
            "/fn/catalogSync",
            Some(&token),
            json!({"action": "products"}),
        )
        .await?;
    let shown = shop["products"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["product_id"] == "tea"))
        .ok_or_else(|| format!("the shop does not show tea: {shop}"))?;
    let price = shown["skus"][0]["price"].as_i64().unwrap_or(0);
    if price != 1990 {
        return Err(format!(
            "the shop shows tea at {price} fen, expected 1990 (the catalog's price)"
        ));
    }
    d.say(
        "opens the shop (catalogSync products)",
        format!(
            "tea · {} · stock {}",
            yuan(price),
            shown["skus"][0]["stock"]
        ),
    );

    let order = d
        .ok("/fn/unifiedOrder", Some(&token), json!({"address": {"receiver_name": "Alice", "detailed_address": "1 Tea Street, Hangzhou", "tel_number": "13800000000"}, "items": [{"product_id": "tea", "sku_id": "tea-250g", "quantity": 2, "price": 1}], "scene": 1177, "idempotency_key": "demo-1"}))
        .await?;
    let no = order["out_trade_no"]
        .as_str()
        .ok_or("no out_trade_no")?
        .to_owned();
    let total = order["total_fee"].as_i64().unwrap_or(0);
    if total != 3980 {
        return Err(format!("order total {total} fen, expected 3980 (2 × 1990 from the catalog; the client's price is ignored)"));
    }
    let again = d
        .ok("/fn/unifiedOrder", Some(&token), json!({"address": {"receiver_name": "Alice", "detailed_address": "1 Tea Street, Hangzhou", "tel_number": "13800000000"}, "items": [{"product_id": "tea", "sku_id": "tea-250g", "quantity": 2}], "scene": 1177, "idempotency_key": "demo-1"}))
        .await?;
    if again["out_trade_no"] != order["out_trade_no"] {
        return Err("a retried unifiedOrder with the same key created a second order".into());
    }
    d.say(
        "orders 2 × tea (priced from the catalog)",
        format!("{no} · {} · retry gives the same order", yuan(total)),
    );
    if !secondary
        && order["payment"]["paySign"]
            .as_str()
            .is_none_or(str::is_empty)
    {
        return Err(format!("no paySign in {}", order["payment"]));
    }
    d.say(
        if secondary {
            "gets wx.requestOrderPayment parameters"
        } else {
            "gets wx.requestPayment parameters"
        },
        format!(
            "package {} · ticket {}",
            order["payment"]["package"].as_str().unwrap_or("?"),
            order["ticket"].as_str().map(|_| "yes").unwrap_or("no")
        ),
    );

    let pay_body = if secondary {
        json!({"out_order_id": no})
    } else {
        json!({"out_trade_no": no})
    };
    d.ok("/sandbox/_control/pay", None, pay_body).await?;
    let paid = d
        .wait_for("the order to read PAID", || async {
            let v = d
                .ok("/fn/queryOrder", Some(&token), json!({"out_trade_no": no}))
                .await?;
            Ok((v["order"]["status"] == "PAID").then_some(v))
        })
        .await?;
    d.say(
        if secondary {
            "pays; pay event lands (fund_type=1)"
        } else {
            "pays; signed notification lands"
        },
        format!(
            "PAID · transaction {}",
            paid["order"]["transaction_id"].as_str().unwrap_or("?")
        ),
    );
    if !secondary {
        d.wait_for("the payment notification to be acknowledged", || async {
            Ok((d.r.sandbox.notifications_delivered(&no) > 0).then_some(()))
        })
        .await?;
        d.wait_for("shop/order/pay at WeChat", || async {
            Ok((d.calls_for("shop/order/pay", "out_order_id", &no) > 0).then_some(()))
        })
        .await?;
        d.say(
            "order synced to the trading component",
            "shop/order/pay (action 1) sent".into(),
        );
    }

    println!("merchant");
    d.admin("/admin/orderSync", json!({"action": "ship", "out_trade_no": no, "delivery_id": "SF", "waybill_id": "SF1234567890"})).await?;
    d.wait_for("shop/delivery/send at WeChat", || async {
        Ok((d.calls_for("shop/delivery/send", "out_order_id", &no) > 0).then_some(()))
    })
    .await?;
    d.say(
        "ships with SF Express",
        "SHIPPED · shop/delivery/send synced".into(),
    );

    println!("user");
    let received = d
        .ok(
            "/fn/queryOrder",
            Some(&token),
            json!({"out_trade_no": no, "action": "confirm"}),
        )
        .await?;
    if received["order"]["status"] != "RECEIVED" {
        return Err(format!(
            "after confirming, the order reads {}",
            received["order"]["status"]
        ));
    }
    d.wait_for("shop/delivery/recieve at WeChat", || async {
        Ok((d.calls_for("shop/delivery/recieve", "out_order_id", &no) > 0).then_some(()))
    })
    .await?;
    d.say(
        "confirms receipt",
        "RECEIVED · shop/delivery/recieve synced".into(),
    );

    if secondary {
        return funds_story(d, &token, &no, total).await;
    }
    let applied = d
        .ok("/fn/aftersaleSync", Some(&token), json!({"action": "apply", "out_trade_no": no, "amount": 1990, "reason": "one tin arrived dented"}))
        .await?;
    let aftersale_id = applied["aftersale"]["aftersale_id"]
        .as_str()
        .ok_or("no aftersale_id")?
        .to_owned();
    d.say(
        "asks for a refund of one tin",
        format!("{aftersale_id} · {}", yuan(1990)),
    );

    println!("merchant");
    d.admin(
        "/admin/aftersaleSync",
        json!({"action": "approve", "aftersale_id": aftersale_id}),
    )
    .await?;
    let refunded = d
        .wait_for("the refund notification", || async {
            let v = d
                .ok("/fn/queryOrder", Some(&token), json!({"out_trade_no": no}))
                .await?;
            Ok((v["order"]["refunded_fee"].as_i64() == Some(1990)).then_some(v))
        })
        .await?;
    d.say(
        "approves; encrypted refund notification lands",
        format!(
            "refunded {} · order {}",
            yuan(refunded["order"]["refunded_fee"].as_i64().unwrap_or(0)),
            refunded["order"]["status"].as_str().unwrap_or("?")
        ),
    );
    let list = d
        .ok(
            "/fn/aftersaleSync",
            Some(&token),
            json!({"action": "list", "out_trade_no": no}),
        )
        .await?;
    if list["aftersales"][0]["status"] != "REFUNDED" {
        return Err(format!(
            "after-sale reads {}",
            list["aftersales"][0]["status"]
        ));
    }
    d.wait_for("ecaftersale/add and acceptrefund at WeChat", || async {
        Ok((!d.r.sandbox.calls("shop/ecaftersale/add").is_empty()
            && !d
                .r
                .sandbox
                .calls("shop/ecaftersale/acceptrefund")
                .is_empty())
        .then_some(()))
    })
    .await?;
    d.say(
        "after-sale synced",
        "REFUNDED · ecaftersale add → acceptrefund".into(),
    );

    println!(
        "\nsummary: order {no} · paid {} · refunded {} · {} notifications acknowledged",
        yuan(total),
        yuan(1990),
        d.r.sandbox.notifications_delivered(&no)
    );
    Ok(())
}

/// fund_type=1: WeChat holds the money. A refund is made by WeChat from the shop's funds
/// when the merchant accepts the after-sale; the rest settles into the funds account, and
/// the merchant withdraws it to the bank with the admin's QR confirmation.
async fn funds_story(d: &mut Demo, token: &str, no: &str, paid: i64) -> Result<(), String> {
    let refund = 1990;
    let applied = d
        .ok("/fn/aftersaleSync", Some(token), json!({"action": "apply", "out_trade_no": no, "amount": refund, "reason": "one tin arrived dented"}))
        .await?;
    let aftersale_id = applied["aftersale"]["aftersale_id"]
        .as_str()
        .ok_or("no aftersale_id")?
        .to_owned();
    d.say(
        "asks for a refund of one tin",
        format!("{aftersale_id} · {}", yuan(refund)),
    );
    println!("merchant");
    d.admin(
        "/admin/aftersaleSync",
        json!({"action": "approve", "aftersale_id": aftersale_id}),
    )
    .await?;
    let refunded = d
        .wait_for("WeChat's refund (aftersale_refund_success)", || async {
            let v = d
                .ok("/fn/queryOrder", Some(token), json!({"out_trade_no": no}))
                .await?;
            Ok((v["order"]["refunded_fee"].as_i64() == Some(refund)).then_some(v))
        })
        .await?;
    let list = d
        .ok(
            "/fn/aftersaleSync",
            Some(token),
            json!({"action": "list", "out_trade_no": no}),
        )
        .await?;
    if list["aftersales"][0]["status"] != "REFUNDED" {
        return Err(format!(
            "after-sale reads {}",
            list["aftersales"][0]["status"]
        ));
    }
    if !d.r.sandbox.calls("secapi/pay/refund").is_empty() {
        return Err("a secondary-merchant refund went to WeChat Pay".into());
    }
    d.say(
        "approves; WeChat refunds from the funds",
        format!(
            "ecaftersale/acceptrefund · refunded {} · after-sale REFUNDED",
            yuan(refunded["order"]["refunded_fee"].as_i64().unwrap_or(0))
        ),
    );
    let total = paid - refund;

    println!("WeChat");
    let before = d
        .admin("/admin/funds", json!({"action": "balance"}))
        .await?;
    if before["pending_fen"].as_i64() != Some(total) {
        return Err(format!("before settlement the balance reads {before}"));
    }
    d.ok(
        "/sandbox/_control/settle",
        None,
        json!({"out_order_id": no}),
    )
    .await?;
    let balance = d
        .wait_for("settlement into the funds account", || async {
            let b = d
                .admin("/admin/funds", json!({"action": "balance"}))
                .await?;
            Ok((b["available_fen"].as_i64() == Some(total)).then_some(b))
        })
        .await?;
    let out_trade_no =
        wxshop::domain::OutTradeNo::parse(no.to_owned()).map_err(|e| e.to_string())?;
    d.wait_for("the settle event on our order", || async {
        let o = wxshop::store::repo::get_order(d.r.app.store.as_ref(), &out_trade_no)
            .await
            .map_err(|e| e.to_string())?;
        Ok(o.and_then(|o| o.value.settled_at_ms))
    })
    .await?;
    d.say(
        "settles the order (order_settle event)",
        format!(
            "pending {} → available {}",
            yuan(before["pending_fen"].as_i64().unwrap_or(0)),
            yuan(balance["available_fen"].as_i64().unwrap_or(0))
        ),
    );

    println!("merchant");
    let flows = d.admin("/admin/funds", json!({"action": "flows"})).await?;
    let income = flows["flows"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["request_no"] == no))
        .ok_or_else(|| format!("no funds flow for {no} in {flows}"))?;
    d.say(
        "reads today's funds flows",
        format!(
            "{} flow(s) · {} {} {}",
            flows["total"],
            income["kind"].as_str().unwrap_or("?"),
            income["direction"].as_str().unwrap_or("?"),
            yuan(income["amount_fen"].as_i64().unwrap_or(0))
        ),
    );

    let account = json!({"bank_account_type": "ACCOUNT_TYPE_BUSINESS", "account_bank": "招商银行",
        "bank_address_code": "440300", "account_number": "6225880112345678"});
    let mut bad = account.clone();
    bad["account_number"] = json!("6225-8801");
    let (status, refused) = d
        .post(
            "/admin/funds",
            Some(&d.r.admin_token.clone()),
            json!({"action": "set_bank_account", "account": bad}),
        )
        .await?;
    if status != 400 || refused["code"] != "BAD_BANK_ACCOUNT" {
        return Err(format!("a malformed account answered {status}: {refused}"));
    }
    let set = d
        .admin(
            "/admin/funds",
            json!({"action": "set_bank_account", "account": account}),
        )
        .await?;
    d.say(
        "sets the settlement bank account",
        format!(
            "{} {} · a malformed number was refused (400)",
            set["account"]["account_bank"].as_str().unwrap_or("?"),
            set["account"]["account_number_masked"]
                .as_str()
                .unwrap_or("?")
        ),
    );

    let amount = total / 2;
    let w = d
        .admin(
            "/admin/funds",
            json!({"action": "withdraw", "amount_fen": amount, "remark": "demo payout"}),
        )
        .await?;
    let ticket = w["qrcode_ticket"]
        .as_str()
        .ok_or("withdraw gave no qrcode_ticket")?
        .to_owned();
    let withdraw_id = w["withdrawal"]["withdraw_id"]
        .as_str()
        .ok_or("withdraw gave no withdraw_id")?
        .to_owned();
    let png = w["qrcode_png_base64"]
        .as_str()
        .ok_or("withdraw gave no QR code PNG")?;
    let png = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, png)
        .map_err(|e| format!("QR code is not base64: {e}"))?;
    if !png.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Err("the QR code is not a PNG".into());
    }
    d.say(
        &format!("withdraws {} to the bank", yuan(amount)),
        format!(
            "{withdraw_id} · {} · QR code PNG {} bytes",
            w["withdrawal"]["status"].as_str().unwrap_or("?"),
            png.len()
        ),
    );

    println!("shop admin");
    d.ok(
        "/sandbox/_control/funds/qrcode",
        None,
        json!({"qrcode_ticket": ticket, "status": 4}),
    )
    .await?;
    d.ok(
        "/sandbox/_control/funds/qrcode",
        None,
        json!({"qrcode_ticket": ticket, "status": 1}),
    )
    .await?;
    let done = d
        .wait_for("the withdrawal to succeed", || async {
            let s = d
                .admin(
                    "/admin/funds",
                    json!({"action": "withdraw_status", "qrcode_ticket": ticket}),
                )
                .await?;
            Ok((s["withdrawal"]["status"] == "SUCCESS").then_some(s))
        })
        .await?;
    d.say(
        "scans the QR code in WeChat and confirms",
        format!(
            "QR {} · withdrawal {}",
            done["qrcode"]["status_text"].as_str().unwrap_or("?"),
            done["withdrawal"]["status"].as_str().unwrap_or("?")
        ),
    );

    println!("merchant");
    let recorded = d
        .wait_for("withdraw_notify events on the record", || async {
            let h = d
                .admin("/admin/funds", json!({"action": "withdrawals"}))
                .await?;
            let w = h["withdrawals"]
                .as_array()
                .and_then(|l| l.iter().find(|w| w["withdraw_id"] == withdraw_id.as_str()))
                .cloned();
            Ok(w.filter(|w| {
                w["events"]
                    .as_array()
                    .is_some_and(|e| e.contains(&json!(3)))
            }))
        })
        .await?;
    let (status, again) = d
        .post(
            "/admin/funds",
            Some(&d.r.admin_token.clone()),
            json!({"action": "withdraw", "amount_fen": 1}),
        )
        .await?;
    if status != 409 || again["code"] != "WITHDRAWAL_DAILY_LIMIT" {
        return Err(format!(
            "a second withdrawal the same day answered {status}: {again}"
        ));
    }
    let after = d
        .admin("/admin/funds", json!({"action": "balance"}))
        .await?;
    if after["available_fen"].as_i64() != Some(total - amount) {
        return Err(format!("after withdrawing, the balance reads {after}"));
    }
    d.say(
        "history, and a second withdrawal today",
        format!(
            "events {} recorded · second refused (WITHDRAWAL_DAILY_LIMIT) · {} left",
            recorded["events"],
            yuan(total - amount)
        ),
    );
    println!(
        "\nsummary: order {no} · paid {} · refunded {} · settled · withdrew {} ({withdraw_id})",
        yuan(paid),
        yuan(refund),
        yuan(amount)
    );
    Ok(())
}
