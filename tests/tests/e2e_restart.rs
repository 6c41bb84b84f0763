#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! `wxlocal serve` stopped and started again on the same SQLite store, as a developer does
//! with the README's quick start. WeChat does not forget what our store refers to, so the
//! sandbox must not either: a second `serve --seed` starts, orders of the seeded product are
//! taken, and an order made before the restart is paid (with the prepay id issued then),
//! shipped and refunded after it. When the store and the sandbox's state do not belong
//! together (one file deleted), the start stops and says which files and what to do.
//!
//! The child is killed (SIGKILL), never asked to stop: what it acknowledged must already be
//! on disk. Each restart reuses the port, as `serve`'s default address does: WeChat keeps the
//! `notify_url` an order was created with.

#[path = "reliability_support.rs"]
mod support;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;
use support::*;

const ADMIN: &str = "local-admin-token";
const WAIT: Duration = Duration::from_secs(20);

fn store_of(dir: &Path) -> String {
    format!("sqlite:{}", dir.join("wxshop.db").display())
}

/// The sandbox's state file beside the store (the name users find in `.wxlocal/`).
fn state_file_of(dir: &Path) -> PathBuf {
    dir.join("wxshop.db-sandbox.json")
}

/// A `wxlocal serve` child, killed (SIGKILL) and reaped when dropped: by [`stop`], or when a
/// test fails part way, so a failed run leaves no server behind.
struct Serving(Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `wxlocal serve` on `dir`'s store at `addr`, with the sandbox's clock 100× faster.
fn serve(bin: &Path, dir: &Path, addr: &str, seed: bool) -> (Serving, Client) {
    let store = store_of(dir);
    let mut args = vec![
        "serve",
        "--addr",
        addr,
        "--store",
        &store,
        "--time-scale",
        "0.01",
    ];
    if seed {
        args.push("--seed");
    }
    let (child, base) = spawn_wxlocal(bin, &args, &[], &dir.join("wxlocal.log"));
    (Serving(child), Client::at(&base, ADMIN))
}

fn stop(child: Serving) {
    drop(child);
}

async fn reads_paid(c: &Client, token: &str, no: &str) {
    eventually(&format!("{no} to read PAID"), WAIT, || async {
        c.status(token, no).await["status"] == "PAID"
    })
    .await;
}

/// The trading component's status of our order `no`, as the sandbox has it.
async fn wx_order_status(c: &Client, no: &str) -> Option<i64> {
    let (s, v) = c.get("/sandbox/_control/state").await;
    assert_eq!(s, 200, "{v}");
    v["shop_orders"]
        .as_array()?
        .iter()
        .find(|o| o["out_order_id"] == no)
        .and_then(|o| o["status"].as_i64())
}

async fn user_order(c: &Client, token: &str) -> Value {
    let (s, v) = c.order(token, 1, None).await;
    assert_eq!(s, 200, "unifiedOrder: {v}");
    v
}

async fn no_dead_letters(c: &Client) {
    let dead = c.dead_letters().await;
    assert!(dead.is_empty(), "{dead:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_serve_carries_on_with_what_it_did_before() {
    let bin = wxlocal_bin();
    let dir = temp_dir("restart");

    // First run: one order paid (and synced to the trading component), one only placed.
    let (child, c) = serve(&bin, &dir, "127.0.0.1:0", true);
    let addr = c.base.trim_start_matches("http://").to_owned();
    let (ada, _) = c.login("ada").await;
    let a = user_order(&c, &ada).await;
    let no_a = a["out_trade_no"].as_str().unwrap().to_owned();
    c.pay_at_sandbox(&no_a).await;
    reads_paid(&c, &ada, &no_a).await;
    eventually(
        "the payment of A to reach the trading component",
        WAIT,
        || async { wx_order_status(&c, &no_a).await == Some(20) },
    )
    .await;
    let (bo, _) = c.login("bo").await;
    let b = user_order(&c, &bo).await;
    let no_b = b["out_trade_no"].as_str().unwrap().to_owned();
    let package_b = b["payment"]["package"].as_str().unwrap().to_owned();
    stop(child);

    // Second run, seeded again (the README's quick start, run twice).
    let (child, c) = serve(&bin, &dir, &addr, true);
    // B pays with the prepay id WeChat Pay issued before the restart.
    let (s, v) = c
        .post(
            "/sandbox/_control/pay",
            None,
            &json!({"package": package_b, "wait": true}),
        )
        .await;
    assert_eq!(s, 200, "the cashier knows B's prepay id: {v}");
    reads_paid(&c, &bo, &no_b).await;
    eventually(
        "the payment of B to reach the trading component",
        WAIT,
        || async { wx_order_status(&c, &no_b).await == Some(20) },
    )
    .await;
    // A, paid before the restart, ships and is refunded after it.
    let (s, v) = c
        .admin(
            "/admin/orderSync",
            &json!({"action": "ship", "out_trade_no": no_a, "delivery_id": "SF", "waybill_id": "SF1"}),
        )
        .await;
    assert_eq!(s, 200, "ship: {v}");
    eventually("A to be shipped at WeChat", WAIT, || async {
        wx_order_status(&c, &no_a).await == Some(30)
    })
    .await;
    let (s, v) = c
        .post(
            "/fn/aftersaleSync",
            Some(&ada),
            &json!({"action": "apply", "out_trade_no": no_a, "amount": 1990, "reason": "arrived broken"}),
        )
        .await;
    assert_eq!(s, 200, "apply: {v}");
    let id = v["aftersale"]["aftersale_id"].as_str().unwrap().to_owned();
    let (s, v) = c
        .admin(
            "/admin/aftersaleSync",
            &json!({"action": "approve", "aftersale_id": id}),
        )
        .await;
    assert_eq!(s, 200, "approve: {v}");
    eventually("A's refund", WAIT, || async {
        let (_, v) = c
            .post(
                "/fn/aftersaleSync",
                Some(&ada),
                &json!({"action": "list", "out_trade_no": no_a}),
            )
            .await;
        v["aftersales"][0]["status"] == "REFUNDED"
    })
    .await;
    assert_eq!(c.status(&ada, &no_a).await["refunded_fee"], 1990);
    // And a new purchase.
    let (cy, _) = c.login("cy").await;
    let no_c = user_order(&c, &cy).await["out_trade_no"]
        .as_str()
        .unwrap()
        .to_owned();
    c.pay_at_sandbox(&no_c).await;
    reads_paid(&c, &cy, &no_c).await;
    no_dead_letters(&c).await;
    stop(child);

    // Third run, not seeded: the seeded product still sells.
    let (child, c) = serve(&bin, &dir, &addr, false);
    let no_d = user_order(&c, &ada).await["out_trade_no"]
        .as_str()
        .unwrap()
        .to_owned();
    c.pay_at_sandbox(&no_d).await;
    reads_paid(&c, &ada, &no_d).await;
    eventually(
        "the payment of D to reach the trading component",
        WAIT,
        || async { wx_order_status(&c, &no_d).await == Some(20) },
    )
    .await;
    assert_eq!(c.status(&ada, &no_a).await["refunded_fee"], 1990);
    no_dead_letters(&c).await;
    stop(child);
    assert!(
        state_file_of(&dir).is_file(),
        "the sandbox's state is kept beside the store"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_without_its_sandbox_state_stops_the_start_and_says_what_to_do() {
    let bin = wxlocal_bin();
    let dir = temp_dir("restart-pair");
    let (child, _) = serve(&bin, &dir, "127.0.0.1:0", true);
    stop(child);
    let state = state_file_of(&dir);
    let _ = std::fs::remove_file(&state);

    let store = store_of(&dir);
    for seed in [true, false] {
        let mut args = vec!["serve", "--addr", "127.0.0.1:0", "--store", &store];
        if seed {
            args.push("--seed");
        }
        let (ok, stderr) = run_wxlocal(&bin, &args, &[], Duration::from_secs(60));
        assert!(
            !ok,
            "started with a store whose sandbox state is gone: {stderr}"
        );
        for needle in [
            store.trim_start_matches("sqlite:").to_owned(),
            state.display().to_string(),
            "tea".to_owned(),
            "rm -r .wxlocal".to_owned(),
            "--store memory".to_owned(),
        ] {
            assert!(
                stderr.contains(&needle),
                "the error names {needle:?}: {stderr}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The other way round is no disagreement: WeChat may know products our store does not (the
/// store deleted to start afresh); seeding adopts the one it finds there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_state_without_its_store_is_adopted() {
    let bin = wxlocal_bin();
    let dir = temp_dir("restart-adopt");
    let (child, _) = serve(&bin, &dir, "127.0.0.1:0", true);
    stop(child);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", dir.join("wxshop.db").display()));
    }
    let (child, c) = serve(&bin, &dir, "127.0.0.1:0", true);
    let (ada, _) = c.login("ada").await;
    let no = user_order(&c, &ada).await["out_trade_no"]
        .as_str()
        .unwrap()
        .to_owned();
    c.pay_at_sandbox(&no).await;
    reads_paid(&c, &ada, &no).await;
    stop(child);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two `serve`s on one store would each overwrite the other's sandbox state. The second
/// refuses to start and says which process holds the store and what to do; the first goes on
/// serving; once it is gone — killed, so it never got to clean up — the store starts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_serve_on_the_same_store_refuses_to_start_and_names_the_first() {
    let bin = wxlocal_bin();
    let dir = temp_dir("restart-lock");
    let (first, c) = serve(&bin, &dir, "127.0.0.1:0", true);
    let first_pid = first.0.id().to_string();
    let store = store_of(&dir);

    let (ok, stderr) = run_wxlocal(
        &bin,
        &["serve", "--addr", "127.0.0.1:0", "--store", &store],
        &[],
        Duration::from_secs(30),
    );
    assert!(!ok, "a second serve started on the same store: {stderr}");
    for needle in [
        store.trim_start_matches("sqlite:").to_owned(),
        "in use".to_owned(),
        format!("pid {first_pid}"),
        c.base.clone(),
        format!("kill {first_pid}"),
        dir.join("wxshop.db-wxlocal.lock").display().to_string(),
        "--store memory".to_owned(),
    ] {
        assert!(
            stderr.contains(&needle),
            "the refusal names {needle:?}: {stderr}"
        );
    }

    // Started again as it was (same address, same store): the port is taken, and the
    // refusal still names the process holding the store, not only the port.
    let same_addr = c.base.trim_start_matches("http://").to_owned();
    let (ok, stderr) = run_wxlocal(
        &bin,
        &["serve", "--addr", &same_addr, "--store", &store],
        &[],
        Duration::from_secs(30),
    );
    assert!(!ok, "a second serve started on the same address: {stderr}");
    for needle in [
        same_addr.clone(),
        "in use".to_owned(),
        format!("pid {first_pid}"),
        format!("kill {first_pid}"),
    ] {
        assert!(
            stderr.contains(&needle),
            "the refusal on the same address names {needle:?}: {stderr}"
        );
    }

    // The first still serves, its sandbox state intact.
    let (ada, _) = c.login("ada").await;
    let no = user_order(&c, &ada).await["out_trade_no"]
        .as_str()
        .unwrap()
        .to_owned();
    c.pay_at_sandbox(&no).await;
    reads_paid(&c, &ada, &no).await;
    stop(first);

    // Killed, it released the store: the next serve starts and knows the order.
    let (next, c) = serve(&bin, &dir, "127.0.0.1:0", false);
    reads_paid(&c, &ada, &no).await;
    stop(next);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Applies for a refund of `amount` fen of one tea of `no` (its line, quantity 1: the other
/// teas are left for a later application) as its buyer and approves it as the merchant;
/// returns the after-sale's id.
async fn refund_part(c: &Client, token: &str, no: &str, amount: i64) -> String {
    let (s, v) = c
        .post(
            "/fn/aftersaleSync",
            Some(token),
            &json!({"action": "apply", "out_trade_no": no, "amount": amount, "reason": "one dented",
                    "product_id": "tea", "sku_id": "tea-250g", "quantity": 1}),
        )
        .await;
    assert_eq!(s, 200, "apply: {v}");
    let id = v["aftersale"]["aftersale_id"].as_str().unwrap().to_owned();
    let (s, v) = c
        .admin(
            "/admin/aftersaleSync",
            &json!({"action": "approve", "aftersale_id": id}),
        )
        .await;
    assert_eq!(s, 200, "approve: {v}");
    id
}

async fn refunded(c: &Client, token: &str, no: &str, id: &str) {
    eventually(&format!("after-sale {id} to be refunded"), WAIT, || async {
        let (_, v) = c
            .post(
                "/fn/aftersaleSync",
                Some(token),
                &json!({"action": "list", "out_trade_no": no}),
            )
            .await;
        v["aftersales"].as_array().is_some_and(|a| {
            a.iter()
                .any(|a| a["aftersale_id"] == id && a["status"] == "REFUNDED")
        })
    })
    .await;
}

/// The sandbox's clock, moved with `/_control/clock` by `ms`: its `now_ms`.
async fn move_clock(c: &Client, ms: i64) -> i64 {
    let (s, v) = c
        .post("/sandbox/_control/clock", None, &json!({"advance_ms": ms}))
        .await;
    assert_eq!(s, 200, "{v}");
    v["now_ms"].as_i64().unwrap()
}

/// A developer moves the sandbox's time (a day on, to see what a day later does) and a refund
/// is stamped in that time; after a restart the sandbox's time is still moved. It used to
/// jump back a day: the refund then lay a day in the future, and WeChat Pay's one refund of
/// an order a minute refused every further refund of that order for a day, however far the
/// developer moved the clock past the minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_clock_stays_where_it_was_moved_across_a_restart() {
    const DAY_MS: i64 = 24 * 3600 * 1000;
    let bin = wxlocal_bin();
    let dir = temp_dir("restart-clock");
    let (child, c) = serve(&bin, &dir, "127.0.0.1:0", true);
    let addr = c.base.trim_start_matches("http://").to_owned();
    let (ada, _) = c.login("ada").await;
    // Two teas: one partial refund each (an after-sale claims the units it names).
    let (s, order) = c.order(&ada, 2, None).await;
    assert_eq!(s, 200, "unifiedOrder: {order}");
    let no = order["out_trade_no"].as_str().unwrap().to_owned();
    c.pay_at_sandbox(&no).await;
    reads_paid(&c, &ada, &no).await;
    eventually(
        "the payment to reach the trading component",
        WAIT,
        || async { wx_order_status(&c, &no).await == Some(20) },
    )
    .await;
    let moved = move_clock(&c, DAY_MS).await;
    let first = refund_part(&c, &ada, &no, 500).await;
    refunded(&c, &ada, &no, &first).await;
    stop(child);

    let (child, c) = serve(&bin, &dir, &addr, false);
    // Past the minute WeChat Pay keeps between two refunds of one order.
    let now = move_clock(&c, 2 * 60 * 1000).await;
    let second = refund_part(&c, &ada, &no, 500).await;
    refunded(&c, &ada, &no, &second).await;
    assert_eq!(c.status(&ada, &no).await["refunded_fee"], 1000);
    assert!(
        now >= moved + 2 * 60 * 1000,
        "the sandbox's time went back across the restart: {now} < {moved} + 2 min"
    );
    no_dead_letters(&c).await;
    stop(child);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Ctrl-C during `serve`: the order being placed is still answered, the process exits 0
/// saying it stopped, and after a restart the same idempotency key gets that order at once —
/// not 30 s of `REQUEST_IN_PROGRESS` for a request cut off half done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_finishes_the_requests_under_way_and_exits_cleanly() {
    let bin = wxlocal_bin();
    let dir = temp_dir("restart-ctrl-c");
    let (mut first, c) = serve(&bin, &dir, "127.0.0.1:0", true);
    let (ada, _) = c.login("ada").await;
    // WeChat Pay slow to answer: the order is under way when Ctrl-C comes.
    c.fault(json!({"path": "pay/unifiedorder", "mode": "delay", "delay_ms": 2500, "count": 1}))
        .await;
    let body = json!({"items": [{"product_id": "tea", "sku_id": "tea-250g", "quantity": 1}],
        "address": {"receiver_name": "A", "detailed_address": "1 Road", "tel_number": "13800000000"},
        "idempotency_key": "ctrl-c-1"});
    let placing = tokio::spawn({
        let (http, url, ada, body) = (
            c.http.clone(),
            format!("{}/fn/unifiedOrder", c.base),
            ada.clone(),
            body.clone(),
        );
        async move {
            let resp = http.post(url).bearer_auth(ada).json(&body).send().await;
            match resp {
                Ok(r) => Ok((r.status().as_u16(), r.text().await.unwrap_or_default())),
                Err(e) => Err(e.to_string()),
            }
        }
    });
    // Ctrl-C once the order is under way (WeChat Pay has it, and answers 2.5 s later), not
    // after a fixed pause: on a loaded host the request may not have arrived 800 ms on, and a
    // server told to stop before it arrives rightly refuses it.
    support::eventually(
        "the order under way at WeChat Pay",
        Duration::from_secs(20),
        || async {
            let (s, v) = c.get("/sandbox/_control/calls?path=pay/unifiedorder").await;
            s == 200 && v["calls"].as_array().is_some_and(|a| !a.is_empty())
        },
    )
    .await;
    let pid = first.0.id().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(sent.success());

    let answer = placing.await.unwrap();
    let (status, text) = answer.unwrap_or_else(|e| panic!("the order under way was cut off: {e}"));
    assert_eq!(status, 200, "{text}");
    let placed: Value = serde_json::from_str(&text).unwrap();
    let no = placed["out_trade_no"].as_str().unwrap().to_owned();

    let deadline = std::time::Instant::now() + WAIT;
    let exit = loop {
        if let Some(s) = first.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running {WAIT:?} after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = std::fs::read_to_string(dir.join("wxlocal.log")).unwrap_or_default();
    assert_eq!(
        exit.code(),
        Some(0),
        "exit after Ctrl-C: {exit:?}; log: {log}"
    );
    assert!(log.contains("wxlocal: stopped"), "says it stopped: {log}");
    assert!(
        log.contains("state is saved"),
        "says its state is kept: {log}"
    );
    stop(first);

    let (next, c) = serve(&bin, &dir, "127.0.0.1:0", false);
    let (s, again) = c.post("/fn/unifiedOrder", Some(&ada), &body).await;
    assert_eq!(s, 200, "the same key after the restart: {again}");
    assert_eq!(
        again["out_trade_no"],
        no.as_str(),
        "the same order: {again}"
    );
    stop(next);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `serve --store memory` keeps nothing: asked to stop, it must not say the sandbox's state is
/// saved (it used to, and a developer then looked for it after the restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_store_stopped_says_its_state_is_forgotten() {
    let bin = wxlocal_bin();
    let dir = temp_dir("restart-memory-stop");
    let log_path = dir.join("wxlocal.log");
    let (child, _) = spawn_wxlocal(
        &bin,
        &["serve", "--addr", "127.0.0.1:0", "--store", "memory"],
        &[],
        &log_path,
    );
    let mut first = Serving(child);
    let pid = first.0.id().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    let deadline = std::time::Instant::now() + WAIT;
    let exit = loop {
        if let Some(s) = first.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running {WAIT:?} after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert_eq!(
        exit.code(),
        Some(0),
        "exit after Ctrl-C: {exit:?}; log: {log}"
    );
    assert!(
        log.contains("state is forgotten (--store memory)") && !log.contains("is saved"),
        "says nothing is kept: {log}"
    );
    stop(first);
}
