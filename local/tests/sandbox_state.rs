//! A sandbox with a state file remembers across restarts, as WeChat does: a second sandbox
//! opened on the file knows the first one's orders, prepay ids, refunds, products and tokens,
//! and finishes what the first left under way (a refund being processed, a product waiting
//! for its automatic audit). An unreadable file is refused, naming it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sandbox_util;

use axum::Router;
use sandbox_util::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use wxlocal::sandbox::{Sandbox, SandboxConfig};
use wxshop::pay::sign::SignType;
use wxshop::time::Clock;

/// A sandbox on `path`, served under `/sandbox` on 127.0.0.1:0: (sandbox, base URL).
async fn open(cfg: SandboxConfig, path: &Path) -> (Sandbox, String) {
    let sb = Sandbox::with_state_file(cfg, Clock::default(), path).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().nest("/sandbox", sb.router());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (sb, format!("http://{addr}/sandbox"))
}

fn temp_file(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("wxlocal-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("wxshop.db-sandbox.json")
}

#[tokio::test]
async fn a_second_sandbox_on_the_file_knows_and_finishes_what_the_first_did() {
    let path = temp_file("state");
    let recv = Receiver::start(200, PAY_OK).await;
    let notify = format!("{}/callbacks/pay", recv.url);
    let refund_notify = format!("{}/callbacks/refund", recv.url);

    // The first sandbox: slow (a refund would take ~17 minutes to be processed) and without
    // automatic audits, so both are still under way when it is left.
    let mut slow = cfg();
    slow.time_scale = 1000.0;
    slow.auto_audit = false;
    let (_first, base) = open(slow, &path).await;
    let placed = mch(
        &base,
        "pay/unifiedorder",
        order_fields("KEEP000001", "1000", &notify),
        SignType::Md5,
    )
    .await;
    let prepay_id = placed["prepay_id"].clone();
    mch(
        &base,
        "pay/unifiedorder",
        order_fields("KEEP000002", "500", &notify),
        SignType::Md5,
    )
    .await;
    post_json(
        &format!("{base}/_control/pay"),
        json!({"out_trade_no": "KEEP000001"}),
    )
    .await;
    let r = mch(
        &base,
        "secapi/pay/refund",
        fields(&[
            ("out_trade_no", "KEEP000001"),
            ("out_refund_no", "KEEPR1"),
            ("total_fee", "1000"),
            ("refund_fee", "400"),
            ("notify_url", &refund_notify),
        ]),
        SignType::Md5,
    )
    .await;
    assert_eq!(r["result_code"], "SUCCESS", "{r:?}");
    let tok = token(&base).await;
    let added = shop(&base, &tok, "spu/add", spu("tea", 1990)).await;
    assert_eq!(added["errcode"], 0, "{added}");
    let product_id = added["data"]["product_id"].clone();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "owner-only: it holds tokens");
    }

    // The second sandbox on the same file, at the usual speed and auditing by itself.
    let (second, base) = open(cfg(), &path).await;
    assert_eq!(second.state_file(), Some(path.as_path()));
    let q = mch(
        &base,
        "pay/orderquery",
        fields(&[("out_trade_no", "KEEP000001")]),
        SignType::Md5,
    )
    .await;
    // Paid — or REFUND: the refund left under way resumes at the usual speed as this sandbox
    // opens, and on a loaded machine may be done before this query (it failed so once in CI).
    assert!(
        matches!(q["trade_state"].as_str(), "SUCCESS" | "REFUND"),
        "the paid order is known: {q:?}"
    );
    assert_eq!(q["total_fee"], "1000", "{q:?}");
    // The cashier still knows the unpaid order's prepay id… and the paid one's.
    let unpaid = mch(
        &base,
        "pay/orderquery",
        fields(&[("out_trade_no", "KEEP000002")]),
        SignType::Md5,
    )
    .await;
    assert_eq!(unpaid["trade_state"], "NOTPAY", "{unpaid:?}");
    let again = post_json(
        &format!("{base}/_control/pay"),
        json!({"prepay_id": prepay_id}),
    )
    .await;
    assert!(
        again["error"].as_str().unwrap().contains("paid already"),
        "{again}"
    );
    // The token issued before still works.
    let list = shop(
        &base,
        &tok,
        "spu/get",
        json!({"out_product_id": "tea", "need_edit_spu": 1}),
    )
    .await;
    assert_eq!(list["errcode"], 0, "{list}");
    assert_eq!(list["spu"]["product_id"], product_id);
    // What was under way finishes: the refund, with its notification, and the audit.
    wait_for("the refund to be processed", 5000, || {
        second.refund_notifications_delivered("KEEPR1") == 1
    })
    .await;
    let rq = mch(
        &base,
        "pay/refundquery",
        fields(&[("out_refund_no", "KEEPR1")]),
        SignType::Md5,
    )
    .await;
    assert_eq!(rq["refund_status_0"], "SUCCESS", "{rq:?}");
    let mut approved = false;
    for _ in 0..200 {
        let spu = shop(
            &base,
            &tok,
            "spu/get",
            json!({"out_product_id": "tea", "need_edit_spu": 1}),
        )
        .await;
        if spu["spu"]["edit_status"] == 4 {
            approved = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(approved, "the audit left under way was decided");
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[tokio::test]
async fn an_unreadable_state_file_is_refused_naming_it() {
    for (tag, content) in [
        ("garbage", "{not json".to_owned()),
        ("format", json!({"format": 999}).to_string()),
    ] {
        let path = temp_file(tag);
        std::fs::write(&path, &content).unwrap();
        let err = match Sandbox::with_state_file(cfg(), Clock::default(), &path) {
            Ok(_) => panic!("{tag}: opened"),
            Err(e) => e,
        };
        assert!(err.contains(&path.display().to_string()), "{tag}: {err}");
        if tag == "format" {
            assert!(err.contains("format 999"), "{err}");
        }
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            content,
            "{tag}: left as it was"
        );
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}

/// The journal beside the state file at `path` (`wxshop.db-sandbox.journal`).
fn journal_of(path: &Path) -> PathBuf {
    path.with_extension("journal")
}

/// What a crash at this moment leaves on disk: the state file and its journal, copied as they
/// are into a new directory while the sandbox goes on running (nothing flushed on the way
/// out). Returns the copy's state file.
fn crash_image(path: &Path, tag: &str) -> PathBuf {
    let copy = temp_file(tag);
    std::fs::copy(path, &copy).unwrap();
    if journal_of(path).exists() {
        std::fs::copy(journal_of(path), journal_of(&copy)).unwrap();
    }
    copy
}

async fn unified(base: &str, no: &str, notify: &str) -> wxshop::pay::sign::Fields {
    let r = mch(
        base,
        "pay/unifiedorder",
        order_fields(no, "1000", notify),
        SignType::Md5,
    )
    .await;
    assert_eq!(r["result_code"], "SUCCESS", "{r:?}");
    r
}

async fn pay(base: &str, no: &str) {
    let r = post_json(&format!("{base}/_control/pay"), json!({"out_trade_no": no})).await;
    assert!(r.get("error").is_none(), "{r}");
}

async fn order_state(base: &str, no: &str) -> String {
    let q = mch(
        base,
        "pay/orderquery",
        fields(&[("out_trade_no", no)]),
        SignType::Md5,
    )
    .await;
    q.get("trade_state")
        .or_else(|| q.get("err_code"))
        .cloned()
        .unwrap_or_default()
}

/// Orders, payments, refunds, logins, tokens, products and a clock move; the process then
/// "crashes" (its files are taken as they are, nothing flushed on the way out). A sandbox on
/// what was left knows all of it; a journal whose last append was cut short still reads (that
/// line was never acknowledged); a journal damaged in the middle stops the start, naming it.
#[tokio::test]
async fn after_a_crash_the_sandbox_knows_everything_it_answered() {
    let path = temp_file("crash");
    let recv = Receiver::start(200, PAY_OK).await;
    let notify = format!("{}/callbacks/pay", recv.url);
    let refund_notify = format!("{}/callbacks/refund", recv.url);
    let mut c = cfg();
    c.auto_audit = false;
    c.refund_interval_ms = 0;
    let (first, base) = open(c.clone(), &path).await;

    for i in 0..30 {
        unified(&base, &format!("CRASH{i:05}"), &notify).await;
    }
    for i in 0..20 {
        pay(&base, &format!("CRASH{i:05}")).await;
    }
    for i in 0..8 {
        let r = mch(
            &base,
            "secapi/pay/refund",
            fields(&[
                ("out_trade_no", &format!("CRASH{i:05}")),
                ("out_refund_no", &format!("CRASHR{i}")),
                ("total_fee", "1000"),
                ("refund_fee", "300"),
                ("notify_url", &refund_notify),
            ]),
            SignType::Md5,
        )
        .await;
        assert_eq!(r["result_code"], "SUCCESS", "{r:?}");
    }
    let mut used_codes = Vec::new();
    for u in ["ann", "bob", "cy"] {
        let code = post_json(&format!("{base}/_control/login"), json!({"user": u})).await["code"]
            .as_str()
            .unwrap()
            .to_owned();
        let s = get_json(format!(
            "{base}/api/sns/jscode2session?appid={APPID}&secret={SECRET}&js_code={code}&grant_type=authorization_code"
        ))
        .await;
        assert!(s["openid"].is_string(), "{s}");
        used_codes.push(code);
    }
    let tok = token(&base).await;
    for p in ["tea", "cup", "pot"] {
        let added = shop(&base, &tok, "spu/add", spu(p, 1990)).await;
        assert_eq!(added["errcode"], 0, "{added}");
    }
    let approved = post_json(
        &format!("{base}/_control/audit"),
        json!({"out_product_id": "tea"}),
    )
    .await;
    assert!(approved.get("error").is_none(), "{approved}");
    post_json(
        &format!("{base}/_control/clock"),
        json!({"advance_ms": 3_600_000}),
    )
    .await;
    wait_for("the refunds to be processed", 10_000, || {
        (0..8).all(|i| first.refund_notifications_delivered(&format!("CRASHR{i}")) == 1)
    })
    .await;
    first.saved().await;
    let before = get_json(format!("{base}/_control/state")).await;
    assert_eq!(before["refunds"].as_array().unwrap().len(), 8);

    let image = crash_image(&path, "crash-image");
    let torn = crash_image(&path, "crash-torn");
    let damaged = crash_image(&path, "crash-damaged");
    assert!(
        std::fs::metadata(journal_of(&image)).unwrap().len() > 0,
        "the changes are in the journal"
    );

    let (second, base2) = open(c.clone(), &image).await;
    assert_eq!(
        get_json(format!("{base2}/_control/state")).await,
        before,
        "orders, refunds, products and balances after the crash"
    );
    assert_eq!(order_state(&base2, "CRASH00025").await, "NOTPAY");
    assert_eq!(order_state(&base2, "CRASH00003").await, "REFUND");
    for code in &used_codes {
        let s = get_json(format!(
            "{base2}/api/sns/jscode2session?appid={APPID}&secret={SECRET}&js_code={code}&grant_type=authorization_code"
        ))
        .await;
        // Used, and an hour later also expired (5 min): refused, never a second login.
        assert_eq!(s["errcode"], 40029, "a used code stays refused: {s}");
    }
    let spu = shop(
        &base2,
        &tok,
        "spu/get",
        json!({"out_product_id": "tea", "need_edit_spu": 1}),
    )
    .await;
    assert_eq!(spu["errcode"], 0, "the token still works: {spu}");
    assert_eq!(spu["spu"]["edit_status"], 4, "the approval is kept: {spu}");
    let moved = second.now_ms() - wxshop::time::Clock::default().now_ms();
    assert!(
        moved >= 3_600_000 - 60_000,
        "the clock stays moved: {moved}"
    );

    // Cut short while appending: the unfinished last line is ignored.
    let mut j = std::fs::OpenOptions::new()
        .append(true)
        .open(journal_of(&torn))
        .unwrap();
    std::io::Write::write_all(&mut j, br#"{"batch":999999,"scalars":{"seq":1,"cl"#).unwrap();
    drop(j);
    let (_third, base3) = open(c.clone(), &torn).await;
    assert_eq!(get_json(format!("{base3}/_control/state")).await, before);

    // Damaged in the middle: refused, naming the journal, left as it was.
    let jd = journal_of(&damaged);
    let mut bytes = b"{\"batch\":1,\"scal\n".to_vec();
    bytes.extend(std::fs::read(&jd).unwrap());
    std::fs::write(&jd, &bytes).unwrap();
    let err = match Sandbox::with_state_file(c, Clock::default(), &damaged) {
        Ok(_) => panic!("opened with a damaged journal"),
        Err(e) => e,
    };
    assert!(err.contains(&jd.display().to_string()), "{err}");
    assert!(err.contains("line 1"), "{err}");
    assert_eq!(std::fs::read(&jd).unwrap(), bytes, "left as it was");

    for p in [&path, &image, &torn, &damaged] {
        let _ = std::fs::remove_dir_all(p.parent().unwrap());
    }
}

/// `/_control/reset` forgets everything and writes a full snapshot; a crash before the journal
/// was emptied leaves the lines written before the reset beside it. They are older than the
/// snapshot and must not bring back what was reset.
#[tokio::test]
async fn journal_lines_older_than_the_snapshot_are_not_replayed() {
    let path = temp_file("reset");
    let (first, base) = open(cfg(), &path).await;
    unified(&base, "OLD0000001", "http://127.0.0.1:9/pay").await;
    first.saved().await;
    let before_reset = std::fs::read(journal_of(&path)).unwrap();
    assert!(!before_reset.is_empty());
    post_json(&format!("{base}/_control/reset"), json!({})).await;
    unified(&base, "NEW0000001", "http://127.0.0.1:9/pay").await;
    first.saved().await;

    // The snapshot written by the reset, and the journal as it was before it.
    let image = crash_image(&path, "reset-image");
    std::fs::write(journal_of(&image), &before_reset).unwrap();
    let (_second, base2) = open(cfg(), &image).await;
    assert_eq!(order_state(&base2, "OLD0000001").await, "ORDERNOTEXIST");

    // And the whole journal after it is replayed: the order made after the reset is known.
    let (_third, base3) = open(cfg(), &crash_image(&path, "reset-after")).await;
    assert_eq!(order_state(&base3, "OLD0000001").await, "ORDERNOTEXIST");
    assert_eq!(order_state(&base3, "NEW0000001").await, "NOTPAY");
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
    let _ = std::fs::remove_dir_all(image.parent().unwrap());
}

/// What one more order writes to disk does not grow with what the sandbox remembers: after
/// 300 paid orders (and a restart, so they are all in the snapshot) one more order appends a
/// few KB to the journal and leaves the snapshot alone. (It used to rewrite the whole state
/// for every change: each purchase cost the size of everything, a dev store got 13× slower.)
#[tokio::test]
async fn one_more_order_writes_what_changed_not_everything() {
    use futures::StreamExt;
    let path = temp_file("growth");
    let recv = Receiver::start(200, PAY_OK).await;
    let notify = format!("{}/callbacks/pay", recv.url);
    let (first, base) = open(cfg(), &path).await;
    futures::stream::iter(0..300)
        .for_each_concurrent(16, |i| {
            let (base, notify) = (base.clone(), notify.clone());
            async move {
                let no = format!("GROW{i:06}");
                unified(&base, &no, &notify).await;
                pay(&base, &no).await;
            }
        })
        .await;
    first.saved().await;

    // Restarted on what the first left (a copy, so the first's writer never meets it).
    let image = crash_image(&path, "growth-image");
    let (second, base) = open(cfg(), &image).await;
    second.saved().await;
    let snapshot = std::fs::read(&image).unwrap();
    let journal_len = |p: &Path| std::fs::metadata(journal_of(p)).map_or(0, |m| m.len());
    let journal_before = journal_len(&image);

    unified(&base, "GROW999999", &notify).await;
    pay(&base, "GROW999999").await;
    wait_for("the notification", 5000, || {
        second.notifications_delivered("GROW999999") == 1
    })
    .await;
    second.saved().await;
    assert_eq!(order_state(&base, "GROW999999").await, "SUCCESS");

    let snapshot_after = std::fs::read(&image).unwrap();
    let rewritten = if snapshot_after == snapshot {
        0
    } else {
        snapshot_after.len() as u64
    };
    let written = rewritten + journal_len(&image).saturating_sub(journal_before);
    assert!(
        snapshot.len() > 200_000,
        "300 orders make a large state: {} bytes",
        snapshot.len()
    );
    assert!(
        written < 8_192 && written * 30 < snapshot.len() as u64,
        "one more order wrote {written} bytes (snapshot rewritten: {rewritten}), the state \
         is {} bytes",
        snapshot.len()
    );
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
    let _ = std::fs::remove_dir_all(image.parent().unwrap());
}

/// Tokens and login codes expire (7200 s, 5 min) and are then forgotten: a long-running stack
/// that keeps issuing them, its clock moving past their expiry, keeps a state of the same size
/// (it used to grow by every token and code, in memory and in the state file). A forgotten
/// token is still refused as expired (42001), also after a restart, and a forgotten code as
/// invalid (40029); a token still valid stays valid while others are pruned.
#[tokio::test]
async fn expired_tokens_and_codes_are_refused_and_forgotten() {
    let path = temp_file("tokens");
    let (first, base) = open(cfg(), &path).await;
    let classic = |base: String| async move {
        let v = get_json(format!(
            "{base}/api/cgi-bin/token?grant_type=client_credential&appid={APPID}&secret={SECRET}"
        ))
        .await;
        v["access_token"].as_str().unwrap().to_owned()
    };
    let forced = |base: String| async move {
        let v = post_json(
            format!("{base}/api/cgi-bin/stable_token"),
            json!({"grant_type": "client_credential", "appid": APPID, "secret": SECRET,
                   "force_refresh": true}),
        )
        .await;
        v["access_token"].as_str().unwrap().to_owned()
    };
    let mint = |base: String| async move {
        post_json(format!("{base}/_control/login"), json!({"user": "ann"})).await["code"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let login = |base: String, code: String| async move {
        get_json(format!(
            "{base}/api/sns/jscode2session?appid={APPID}&secret={SECRET}&js_code={code}&grant_type=authorization_code"
        ))
        .await
    };
    let advance = |base: String, ms: i64| async move {
        post_json(format!("{base}/_control/clock"), json!({"advance_ms": ms})).await;
    };
    // The size of the kept state: what a sandbox started on a copy of the files writes as its
    // snapshot.
    let kept_size = |tag: &'static str| {
        let image = crash_image(&path, tag);
        let sb = Sandbox::with_state_file(cfg(), Clock::default(), &image).unwrap();
        drop(sb);
        let n = std::fs::metadata(&image).unwrap().len();
        let _ = std::fs::remove_dir_all(image.parent().unwrap());
        n
    };

    let first_token = classic(base.clone()).await;
    assert_eq!(
        shop(&base, &first_token, "cat/get", json!({})).await["errcode"],
        0
    );
    let unused_code = mint(base.clone()).await;
    let used_code = mint(base.clone()).await;
    assert_eq!(login(base.clone(), used_code.clone()).await["errcode"], 0);
    let mut sizes = Vec::new();
    for round in 0..30 {
        for _ in 0..5 {
            classic(base.clone()).await;
            forced(base.clone()).await;
            let code = mint(base.clone()).await;
            assert_eq!(login(base.clone(), code).await["errcode"], 0);
            mint(base.clone()).await;
        }
        // Past every expiry (and the pruning interval).
        advance(base.clone(), 7_200_000 + 120_000).await;
        if round == 2 || round == 29 {
            first.saved().await;
            tokio::task::yield_now().await;
            sizes.push(kept_size("tokens-size"));
        }
    }
    // One more issue prunes what the last move expired.
    let live = token(&base).await;
    first.saved().await;
    sizes.push(kept_size("tokens-size"));
    assert!(
        sizes[2] <= sizes[0] && sizes[1] <= sizes[0] + 1024,
        "the kept state stays the same size: {sizes:?} bytes after 3, 30 rounds and a prune"
    );

    let expired = shop(&base, &first_token, "cat/get", json!({})).await;
    assert_eq!(expired["errcode"], 42001, "an expired token: {expired}");
    assert_eq!(
        login(base.clone(), unused_code.clone()).await["errcode"],
        40029
    );
    assert_eq!(
        login(base.clone(), used_code.clone()).await["errcode"],
        40029
    );
    assert_eq!(
        shop(&base, "90_madeup", "cat/get", json!({})).await["errcode"],
        40001
    );

    // A token still valid stays valid while the expired ones are pruned around it.
    advance(base.clone(), 7_000_000).await;
    classic(base.clone()).await;
    mint(base.clone()).await;
    assert_eq!(shop(&base, &live, "cat/get", json!({})).await["errcode"], 0);

    // After a restart the forgotten token is still one of the sandbox's, expired.
    first.saved().await;
    let (_second, base2) = open(cfg(), &crash_image(&path, "tokens-restart")).await;
    assert_eq!(
        shop(&base2, &first_token, "cat/get", json!({})).await["errcode"],
        42001
    );
    assert_eq!(
        shop(&base2, &live, "cat/get", json!({})).await["errcode"],
        0
    );
    assert_eq!(login(base2.clone(), unused_code).await["errcode"], 40029);
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

/// Past 1 MiB of journal the sandbox folds it into a new snapshot while it goes on answering;
/// a sandbox started on what was left after it knows exactly what the first knew.
#[tokio::test]
async fn after_a_compaction_a_restart_knows_the_same() {
    use futures::StreamExt;
    let path = temp_file("compaction");
    let recv = Receiver::start(200, PAY_OK).await;
    let notify = format!("{}/callbacks/pay", recv.url);
    let (first, base) = open(cfg(), &path).await;
    let initial = std::fs::read(&path).unwrap();
    let mut n = 0;
    while std::fs::read(&path).unwrap() == initial {
        assert!(n < 5000, "no compaction after {n} orders");
        futures::stream::iter(n..n + 100)
            .for_each_concurrent(16, |i| {
                let (base, notify) = (base.clone(), notify.clone());
                async move {
                    let no = format!("FOLD{i:06}");
                    unified(&base, &no, &notify).await;
                    pay(&base, &no).await;
                }
            })
            .await;
        n += 100;
    }
    // One more answer: it waits for its line, which the compaction's journal swap holds back,
    // so the files are a finished pair (and the line is in the new journal).
    unified(&base, "FOLDLAST01", &notify).await;
    first.saved().await;
    let before = get_json(format!("{base}/_control/state")).await;
    let journal = std::fs::metadata(journal_of(&path)).unwrap().len();
    assert!(journal < 1 << 20, "the journal was folded: {journal} bytes");

    let (_second, base2) = open(cfg(), &crash_image(&path, "compaction-image")).await;
    assert_eq!(get_json(format!("{base2}/_control/state")).await, before);
    assert_eq!(order_state(&base2, "FOLDLAST01").await, "NOTPAY");
    assert_eq!(order_state(&base2, "FOLD000000").await, "SUCCESS");
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

/// GIVEN an unpaid component order with an `expire_time` and an open funds QR code, left by a
/// sandbox WHEN a sandbox opened on its file (a restart) has its clock moved past both
/// deadlines THEN the order is cancelled (181, `open_product_order_cancel` pushed) and the
/// code expired (3): the deadlines are rebuilt from the kept orders and codes, not lost with
/// the process that set them.
#[tokio::test]
async fn deadlines_still_fall_after_a_restart() {
    let path = temp_file("deadlines");
    let openid = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o";
    let (first, base) = open(cfg(), &path).await;
    let tok = token(&base).await;
    assert_eq!(
        shop(&base, &tok, "spu/add", spu("tea", 1990)).await["errcode"],
        0
    );
    wait_for("the automatic audit", 3000, || {
        first
            .pushed_events()
            .iter()
            .any(|e| e["Event"] == "open_product_spu_audit")
    })
    .await;
    assert_eq!(
        shop(&base, &tok, "spu/listing", json!({"out_product_id": "tea"})).await["errcode"],
        0
    );
    let now = first.now_ms();
    let mut body = order_add_body(now, "EXPR1", openid, "tea", 1990, 1, None);
    body["expire_time"] = json!((now + 16 * 60_000) / 1000);
    assert_eq!(shop(&base, &tok, "order/add", body).await["errcode"], 0);
    let gen = shop(&base, &tok, "funds/qrcode/gen", json!({"identity_type": 1})).await;
    let ticket = gen["qrcode_ticket"].as_str().unwrap().to_owned();

    let (second, base) = open(cfg(), &path).await;
    post_json(
        format!("{base}/_control/clock"),
        json!({"advance_ms": 17 * 60_000}),
    )
    .await;
    let got = shop(
        &base,
        &tok,
        "order/get",
        json!({"out_order_id": "EXPR1", "openid": openid}),
    )
    .await;
    assert_eq!(got["order"]["status"], 181, "{got}");
    assert!(second.pushed_events().iter().any(|e| {
        e["Event"] == "open_product_order_cancel" && e["order_info"]["out_order_id"] == "EXPR1"
    }));
    let check = shop(
        &base,
        &tok,
        "funds/qrcode/check",
        json!({"qrcode_ticket": ticket}),
    )
    .await;
    assert_eq!(check["status"], 3, "{check}");
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}
