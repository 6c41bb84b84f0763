//! The one conformance suite every [`Store`] backend must pass, written once.
//!
//! Why it is shaped so:
//! - **Compiled always** (not `cfg(test)`), so each backend's integration tests call
//!   [`run_all`] (or single cases) against a live instance: `:memory:`, a file, a local
//!   DynamoDB-compatible server.
//! - **Cases assert and panic**, like tests; a failure names the case and the expectation.
//! - **Every case uses its own random ids** and only looks at its own records, so cases can
//!   run in parallel against one shared server. Queries over global partitions (the outbox's
//!   `pending`, order statuses) use times far in the past (around 2001) so they never touch a
//!   live system's records, and the outbox cases are serialised within a process by a lock
//!   because claiming is global by nature.
//! - **It tests the layers above the seam too** (repo, outbox, idempotency, kv): they are
//!   backend-independent code, but they lean on exact condition and index semantics, which
//!   is precisely what differs between backends.

// A test suite: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::idempotency::{self, Claim};
use super::repo::{
    self, Batch, EventRecord, ProductFilter, ProductIndex, RefundRecord, RefundStatus,
};
use super::rotation::Rotation;
use super::{kv, DynStore, Expect, Index, Kind, Page, Query, Record, StoreError, Write};
use crate::domain::{
    random_alnum, AfterSale, AfterSaleId, AfterSaleKind, AfterSaleStatus, AuditStatus, Edit, Fen,
    FundType, Listing, OpenId, Order, OrderItem, OrderStatus, OutRefundNo, OutTradeNo, Product,
    ProductId, Sku, SkuId,
};
use crate::outbox::{self, Claimed, OutboxEntry, RetryOutcome, Task, MAX_ATTEMPTS};
use rand::Rng;
use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

/// Runs every case, one after the other.
pub async fn run_all(store: DynStore) {
    create_if_absent_race(&store).await;
    conditional_updates(&store).await;
    batch_all_or_nothing(&store).await;
    check_writes(&store).await;
    deletes(&store).await;
    index_queries(&store).await;
    cursors_belong_to_their_listing(&store).await;
    batched_updates_move_index_entries(&store).await;
    ttl_expiry(&store).await;
    outbox_leases(&store).await;
    outbox_retry_dead_replay(&store).await;
    idempotency_states(&store).await;
    kv_cas(&store).await;
    repo_round_trip(&store).await;
    refunds_by_success_recorded(&store).await;
    aftersales_by_refunded_at(&store).await;
    rotations(&store).await;
    product_audit_index(&store).await;
    product_on_sale_index(&store).await;
    user_blocks(&store).await;
}

// ---------------------------------------------------------------- helpers

/// A fresh prefix for one case's ids.
fn prefix() -> String {
    format!("cf{}", random_alnum(10))
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A time around 2001 (ms) for global partitions, random so concurrent runs rarely meet.
fn past_base_ms() -> i64 {
    1_000_000_000_000 + rand::thread_rng().gen_range(0..1_000_000_000)
}

fn rec(kind: Kind, id: &str, body: &str) -> Record {
    Record::new(
        kind,
        id,
        serde_json::Value::String(body.to_owned()).to_string(),
    )
}

fn put(r: Record, expect: Expect) -> Write {
    Write::put(r, expect)
}

fn del(kind: Kind, id: &str, expect: Expect) -> Write {
    Write::Delete {
        kind,
        id: id.to_owned(),
        expect,
    }
}

fn check(kind: Kind, id: &str, expect: Expect) -> Write {
    Write::Check {
        kind,
        id: id.to_owned(),
        expect,
    }
}

async fn must_write(store: &DynStore, writes: Vec<Write>, what: &str) {
    if let Err(e) = store.write(writes).await {
        panic!("[{}] {what}: expected Ok, got {e:?}", store.backend());
    }
}

async fn must_conflict(store: &DynStore, writes: Vec<Write>, index: usize, what: &str) {
    match store.write(writes).await {
        Err(StoreError::Conflict { index: i }) if i == index => {}
        other => panic!(
            "[{}] {what}: expected Conflict {{ index: {index} }}, got {other:?}",
            store.backend()
        ),
    }
}

async fn get(store: &DynStore, kind: Kind, id: &str) -> Option<Record> {
    store.get(kind, id).await.expect("get")
}

/// Pages through a query with `page` records at a time; returns the ids in order.
async fn collect_ids(store: &DynStore, mut q: Query, page: usize) -> Vec<String> {
    q.limit = page;
    let mut ids = Vec::new();
    for _ in 0..1000 {
        let Page { records, next } = store.query(q.clone()).await.expect("query");
        assert!(
            records.len() <= page,
            "[{}] page of {} records for limit {page}",
            store.backend(),
            records.len()
        );
        for r in &records {
            assert_eq!(r.kind, q.kind, "query returned another kind");
        }
        ids.extend(records.into_iter().map(|r| r.id));
        match next {
            Some(c) => q.cursor = Some(c),
            None => return ids,
        }
    }
    panic!("query never ended");
}

// ---------------------------------------------------------------- records

/// N=32 tasks create the same key at once: exactly one wins, the others get `Conflict`.
/// Then 16 tasks update the winner from the same version: again exactly one wins.
pub async fn create_if_absent_race(store: &DynStore) {
    let id = format!("{}-race", prefix());
    let mut tasks = Vec::new();
    for i in 0..32 {
        let s = store.clone();
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            let r = rec(Kind::Kv, &id, &format!("w{i}"));
            s.write(vec![put(r, Expect::Absent)]).await.map(|()| i)
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        match t.await.expect("task") {
            Ok(i) => winners.push(i),
            Err(e) => assert_eq!(e, StoreError::Conflict { index: 0 }, "loser's error"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one create wins: {winners:?}");
    let got = get(store, Kind::Kv, &id).await.expect("winner stored");
    assert_eq!(got.body, format!("\"w{}\"", winners[0]));
    assert_eq!(got.version, 1);

    let mut tasks = Vec::new();
    for i in 0..16 {
        let s = store.clone();
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            let mut r = rec(Kind::Kv, &id, &format!("u{i}"));
            r.version = 2;
            s.write(vec![put(r, Expect::Version(1))]).await.map(|()| i)
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        match t.await.expect("task") {
            Ok(i) => winners.push(i),
            Err(e) => assert_eq!(e, StoreError::Conflict { index: 0 }, "loser's error"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one update wins: {winners:?}");
    let got = get(store, Kind::Kv, &id).await.expect("stored");
    assert_eq!((got.version, got.body), (2, format!("\"u{}\"", winners[0])));
}

/// Records round-trip exactly; `Version` conditions reject stale versions; `Absent` rejects
/// live records; `Any` overwrites.
pub async fn conditional_updates(store: &DynStore) {
    let p = prefix();
    let id = format!("{p}-cond");
    let mut r = rec(Kind::Order, &id, "one");
    r.owner = Some(format!("{p}-owner"));
    r.status = Some("S".into());
    r.sort = -42;
    r.expires_at = Some(now_secs() + 86_400);
    assert_eq!(get(store, Kind::Order, &id).await, None);
    must_write(store, vec![put(r.clone(), Expect::Absent)], "create").await;
    assert_eq!(
        get(store, Kind::Order, &id).await,
        Some(r.clone()),
        "round trip"
    );
    // The same id under another kind is another record.
    assert_eq!(
        get(store, Kind::Product, &id).await,
        None,
        "kinds never collide"
    );

    must_conflict(
        store,
        vec![put(r.clone(), Expect::Absent)],
        0,
        "create twice",
    )
    .await;

    let mut r2 = rec(Kind::Order, &id, "two");
    r2.version = 2;
    must_write(
        store,
        vec![put(r2.clone(), Expect::Version(1))],
        "update v1",
    )
    .await;
    assert_eq!(get(store, Kind::Order, &id).await, Some(r2.clone()));
    must_conflict(
        store,
        vec![put(r2.clone(), Expect::Version(1))],
        0,
        "stale v1",
    )
    .await;
    must_conflict(
        store,
        vec![put(r2.clone(), Expect::Version(3))],
        0,
        "future v3",
    )
    .await;

    let missing = format!("{p}-missing");
    let mut m = rec(Kind::Order, &missing, "x");
    m.version = 2;
    must_conflict(
        store,
        vec![put(m, Expect::Version(1))],
        0,
        "update of missing",
    )
    .await;
    assert_eq!(get(store, Kind::Order, &missing).await, None);

    let mut r3 = rec(Kind::Order, &id, "three");
    r3.version = 7;
    must_write(store, vec![put(r3.clone(), Expect::Any)], "unconditional").await;
    assert_eq!(get(store, Kind::Order, &id).await, Some(r3));
}

/// A batch applies every write or none; the conflict index names the failing write.
pub async fn batch_all_or_nothing(store: &DynStore) {
    let p = prefix();
    let [a, b, c, d, e] = ["a", "b", "c", "d", "e"].map(|s| format!("{p}-{s}"));

    // Conflict in the last write leaves the first ones unwritten.
    let mut cv = rec(Kind::Kv, &c, "c");
    cv.version = 10;
    must_conflict(
        store,
        vec![
            put(rec(Kind::Kv, &a, "a"), Expect::Absent),
            put(rec(Kind::Event, &b, "b"), Expect::Absent),
            put(cv, Expect::Version(9)),
        ],
        2,
        "last write fails",
    )
    .await;
    assert_eq!(
        get(store, Kind::Kv, &a).await,
        None,
        "first write rolled back"
    );
    assert_eq!(
        get(store, Kind::Event, &b).await,
        None,
        "second write rolled back"
    );

    // Conflict in the middle.
    must_write(
        store,
        vec![put(rec(Kind::Kv, &d, "d"), Expect::Absent)],
        "d",
    )
    .await;
    must_conflict(
        store,
        vec![
            put(rec(Kind::Kv, &e, "e"), Expect::Absent),
            put(rec(Kind::Kv, &d, "d again"), Expect::Absent),
            del(Kind::Kv, &a, Expect::Any),
        ],
        1,
        "middle write fails",
    )
    .await;
    assert_eq!(get(store, Kind::Kv, &e).await, None);
    assert_eq!(
        get(store, Kind::Kv, &d).await.map(|r| r.body),
        Some("\"d\"".into())
    );

    // All succeed together: puts, an update, a delete, across kinds (same id, other kind).
    let mut d2 = rec(Kind::Kv, &d, "d2");
    d2.version = 2;
    must_write(
        store,
        vec![
            put(rec(Kind::Kv, &a, "a"), Expect::Absent),
            put(rec(Kind::Event, &a, "a-event"), Expect::Absent),
            put(d2, Expect::Version(1)),
            del(Kind::Kv, &e, Expect::Any),
        ],
        "mixed batch",
    )
    .await;
    assert!(get(store, Kind::Kv, &a).await.is_some());
    assert_eq!(
        get(store, Kind::Event, &a).await.map(|r| r.body),
        Some("\"a-event\"".into())
    );
    assert_eq!(get(store, Kind::Kv, &d).await.map(|r| r.version), Some(2));

    // Too large: nothing written.
    let many: Vec<Write> = (0..101)
        .map(|i| put(rec(Kind::Kv, &format!("{p}-many{i}"), "m"), Expect::Absent))
        .collect();
    assert_eq!(store.write(many).await, Err(StoreError::TooLarge(101)));
    assert_eq!(get(store, Kind::Kv, &format!("{p}-many0")).await, None);

    // 100 is fine.
    let hundred: Vec<Write> = (0..100)
        .map(|i| put(rec(Kind::Kv, &format!("{p}-h{i}"), "h"), Expect::Absent))
        .collect();
    must_write(store, hundred, "100 writes").await;
    assert!(get(store, Kind::Kv, &format!("{p}-h99")).await.is_some());

    // The same key twice in one batch is refused and writes nothing.
    let dup = format!("{p}-dup");
    let r = store
        .write(vec![
            put(rec(Kind::Kv, &dup, "1"), Expect::Any),
            put(rec(Kind::Kv, &dup, "2"), Expect::Any),
        ])
        .await;
    assert!(r.is_err(), "duplicate key in a batch must be refused");
    assert_eq!(get(store, Kind::Kv, &dup).await, None);

    // An empty batch is a no-op.
    must_write(store, vec![], "empty batch").await;
}

/// `Check` writes are conditions only: they gate the batch and write nothing.
pub async fn check_writes(store: &DynStore) {
    let p = prefix();
    let [a, b, c, m] = ["a", "b", "c", "m"].map(|s| format!("{p}-{s}"));
    must_write(
        store,
        vec![put(rec(Kind::Order, &a, "a"), Expect::Absent)],
        "a",
    )
    .await;

    must_write(
        store,
        vec![
            check(Kind::Order, &a, Expect::Version(1)),
            put(rec(Kind::Kv, &b, "b"), Expect::Absent),
        ],
        "check holds",
    )
    .await;
    assert!(get(store, Kind::Kv, &b).await.is_some());
    assert_eq!(
        get(store, Kind::Order, &a)
            .await
            .map(|r| (r.version, r.body)),
        Some((1, "\"a\"".into())),
        "a check writes nothing"
    );

    must_conflict(
        store,
        vec![
            put(rec(Kind::Kv, &c, "c"), Expect::Absent),
            check(Kind::Order, &a, Expect::Version(2)),
        ],
        1,
        "check fails",
    )
    .await;
    assert_eq!(get(store, Kind::Kv, &c).await, None);

    must_write(
        store,
        vec![check(Kind::Order, &m, Expect::Absent)],
        "absent holds",
    )
    .await;
    assert_eq!(
        get(store, Kind::Order, &m).await,
        None,
        "check created nothing"
    );
    must_conflict(
        store,
        vec![check(Kind::Order, &a, Expect::Absent)],
        0,
        "absent",
    )
    .await;
    must_conflict(
        store,
        vec![check(Kind::Order, &m, Expect::Version(1))],
        0,
        "missing",
    )
    .await;
    must_write(
        store,
        vec![check(Kind::Order, &a, Expect::Version(1))],
        "lone check",
    )
    .await;
}

/// Deletes honour their condition and free the key for a new create.
pub async fn deletes(store: &DynStore) {
    let p = prefix();
    let id = format!("{p}-del");
    let mut r = rec(Kind::AfterSale, &id, "x");
    r.owner = Some(format!("{p}-owner"));
    must_write(store, vec![put(r.clone(), Expect::Absent)], "create").await;
    must_conflict(
        store,
        vec![del(Kind::AfterSale, &id, Expect::Version(2))],
        0,
        "stale",
    )
    .await;
    must_conflict(
        store,
        vec![del(Kind::AfterSale, &id, Expect::Absent)],
        0,
        "live",
    )
    .await;
    assert!(
        get(store, Kind::AfterSale, &id).await.is_some(),
        "still there"
    );
    must_write(
        store,
        vec![del(Kind::AfterSale, &id, Expect::Version(1))],
        "delete",
    )
    .await;
    assert_eq!(get(store, Kind::AfterSale, &id).await, None);
    let q = Query::new(Kind::AfterSale, Index::Owner(format!("{p}-owner")));
    assert!(
        store.query(q).await.unwrap().records.is_empty(),
        "gone from index"
    );
    must_write(
        store,
        vec![del(Kind::AfterSale, &id, Expect::Any)],
        "delete missing",
    )
    .await;
    must_conflict(
        store,
        vec![del(Kind::AfterSale, &id, Expect::Version(1))],
        0,
        "gone",
    )
    .await;
    must_write(store, vec![put(r, Expect::Absent)], "re-create").await;
    assert_eq!(
        get(store, Kind::AfterSale, &id).await.map(|r| r.version),
        Some(1)
    );
}

/// A versioned put inside a multi-write call, changing any combination of owner, status and
/// sort (to and from none): reads and both indexes show the new values only, in the new
/// order; an expiry set by the put hides the record. (SQLite updates such a put in place,
/// naming in its `SET` only the indexed columns that change.)
pub async fn batched_updates_move_index_entries(store: &DynStore) {
    let p = prefix();
    let owners = [Some(format!("{p}-oa")), Some(format!("{p}-ob")), None];
    let statuses = [Some(format!("{p}-sa")), Some(format!("{p}-sb")), None];
    let by_owner = |o: &str| Query::new(Kind::Order, Index::Owner(o.to_owned()));
    let by_status = |s: &str| Query::new(Kind::Order, Index::Status(s.to_owned()));
    // A neighbour in the same partitions, sorted between the record's two sort values.
    let mut n = rec(Kind::Order, &format!("{p}-n"), "n");
    n.owner = owners[0].clone();
    n.status = statuses[0].clone();
    n.sort = 50;
    must_write(store, vec![put(n.clone(), Expect::Absent)], "neighbour").await;
    let mut case = 0;
    for change in 0..8u8 {
        for to_none in [false, true] {
            case += 1;
            let id = format!("{p}-r{case}");
            let mut r = rec(Kind::Order, &id, "before");
            r.owner = owners[0].clone();
            r.status = statuses[0].clone();
            r.sort = 10;
            must_write(store, vec![put(r.clone(), Expect::Absent)], "create").await;
            let mut next = rec(Kind::Order, &id, "after");
            next.version = 2;
            let other = if to_none { 2 } else { 1 };
            next.owner = owners[if change & 1 != 0 { other } else { 0 }].clone();
            next.status = statuses[if change & 2 != 0 { other } else { 0 }].clone();
            next.sort = if change & 4 != 0 { 90 } else { 10 };
            let side = rec(Kind::Kv, &format!("{id}-side"), "side");
            must_write(
                store,
                vec![
                    put(next.clone(), Expect::Version(1)),
                    put(side, Expect::Absent),
                ],
                &format!("update {change:03b} (to none: {to_none})"),
            )
            .await;
            assert_eq!(get(store, Kind::Order, &id).await, Some(next.clone()));
            for o in owners.iter().flatten() {
                let ids = collect_ids(store, by_owner(o), 100).await;
                let want = next.owner.as_deref() == Some(o.as_str());
                assert_eq!(
                    ids.contains(&id),
                    want,
                    "[{}] owner {o}, case {change:03b}/{to_none}: {ids:?}",
                    store.backend()
                );
                if want && o == owners[0].as_deref().unwrap_or_default() {
                    let at = ids.iter().position(|x| *x == id);
                    let at_n = ids.iter().position(|x| *x == n.id);
                    assert_eq!(
                        at < at_n,
                        next.sort < n.sort,
                        "[{}] sort order {ids:?}",
                        store.backend()
                    );
                }
            }
            for s in statuses.iter().flatten() {
                let ids = collect_ids(store, by_status(s), 100).await;
                let want = next.status.as_deref() == Some(s.as_str());
                assert_eq!(
                    ids.contains(&id),
                    want,
                    "[{}] status {s}, case {change:03b}/{to_none}: {ids:?}",
                    store.backend()
                );
            }
            // Retire it: an expiry set by a batched versioned put (nothing indexed changes).
            let mut gone = next.clone();
            gone.version = 3;
            gone.expires_at = Some(now_secs() - 1);
            must_write(
                store,
                vec![
                    put(gone, Expect::Version(2)),
                    check(Kind::Kv, &format!("{id}-side"), Expect::Version(1)),
                ],
                "expire",
            )
            .await;
            assert_eq!(
                get(store, Kind::Order, &id).await,
                None,
                "expired by the put"
            );
        }
    }
    let ids = collect_ids(
        store,
        by_owner(owners[0].as_deref().unwrap_or_default()),
        100,
    )
    .await;
    assert_eq!(
        ids,
        vec![n.id.clone()],
        "[{}] only the neighbour is left",
        store.backend()
    );
}

/// Expired records are invisible, count as absent, and can be overwritten by a create.
pub async fn ttl_expiry(store: &DynStore) {
    let p = prefix();
    let owner = format!("{p}-owner");
    let gone = format!("{p}-gone");
    let mut r = rec(Kind::Kv, &gone, "old");
    r.owner = Some(owner.clone());
    r.status = Some(format!("{p}-st"));
    r.expires_at = Some(now_secs() - 10);
    must_write(store, vec![put(r.clone(), Expect::Any)], "expired put").await;
    assert_eq!(
        get(store, Kind::Kv, &gone).await,
        None,
        "expired is invisible"
    );
    let q = Query::new(Kind::Kv, Index::Owner(owner.clone()));
    assert!(store.query(q.clone()).await.unwrap().records.is_empty());
    let qs = Query::new(Kind::Kv, Index::Status(format!("{p}-st")));
    assert!(store.query(qs).await.unwrap().records.is_empty());
    let mut r2 = r.clone();
    r2.version = 2;
    must_conflict(
        store,
        vec![put(r2, Expect::Version(1))],
        0,
        "update expired",
    )
    .await;
    must_conflict(
        store,
        vec![check(Kind::Kv, &gone, Expect::Version(1))],
        0,
        "check",
    )
    .await;
    must_conflict(
        store,
        vec![del(Kind::Kv, &gone, Expect::Version(1))],
        0,
        "delete",
    )
    .await;
    must_write(
        store,
        vec![check(Kind::Kv, &gone, Expect::Absent)],
        "absent",
    )
    .await;
    let mut fresh = rec(Kind::Kv, &gone, "new");
    fresh.owner = Some(owner.clone());
    must_write(
        store,
        vec![put(fresh.clone(), Expect::Absent)],
        "create over expired",
    )
    .await;
    assert_eq!(get(store, Kind::Kv, &gone).await, Some(fresh));

    // A record that expires while we watch.
    let soon = format!("{p}-soon");
    let mut s = rec(Kind::Kv, &soon, "soon");
    s.owner = Some(owner.clone());
    let expires = now_secs() + 2;
    s.expires_at = Some(expires);
    must_write(store, vec![put(s.clone(), Expect::Absent)], "short-lived").await;
    assert_eq!(
        get(store, Kind::Kv, &soon).await,
        Some(s),
        "live before expiry"
    );
    let ids = collect_ids(store, q.clone(), 10).await;
    assert!(ids.contains(&soon));
    while now_secs() < expires {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        get(store, Kind::Kv, &soon).await,
        None,
        "invisible once due"
    );
    let ids = collect_ids(store, q, 10).await;
    assert_eq!(ids, vec![gone], "expired left the index");
}

/// Index queries: only the asked kind and key, live records, ordered by (sort, id) both
/// ways, inclusive sort bounds, cursor paging without gaps or repeats.
pub async fn index_queries(store: &DynStore) {
    let p = prefix();
    let owner = format!("{p}-o");
    let (s1, s2, s3) = (format!("{p}-s1"), format!("{p}-s2"), format!("{p}-s3"));
    let sorts: [i64; 8] = [5, 1, 3, 3, 3, 9, -2, i64::MAX];
    let mut writes = Vec::new();
    for (i, sort) in sorts.iter().enumerate() {
        let mut r = rec(Kind::Order, &format!("{p}-r{i}"), "x");
        r.owner = Some(owner.clone());
        r.status = Some(if i % 2 == 0 { s1.clone() } else { s2.clone() });
        r.sort = *sort;
        writes.push(put(r, Expect::Absent));
    }
    // Noise: other kind, same owner; expired; no owner; other owner.
    let mut other_kind = rec(Kind::Refund, &format!("{p}-k"), "x");
    other_kind.owner = Some(owner.clone());
    other_kind.status = Some(s1.clone());
    let mut expired = rec(Kind::Order, &format!("{p}-exp"), "x");
    expired.owner = Some(owner.clone());
    expired.status = Some(s1.clone());
    expired.expires_at = Some(now_secs() - 5);
    let mut no_owner = rec(Kind::Order, &format!("{p}-none"), "x");
    no_owner.sort = 4;
    let mut other_owner = rec(Kind::Order, &format!("{p}-oo"), "x");
    other_owner.owner = Some(format!("{owner}x"));
    writes.extend([
        put(other_kind, Expect::Absent),
        put(expired, Expect::Any),
        put(no_owner, Expect::Absent),
        put(other_owner, Expect::Absent),
    ]);
    must_write(store, writes, "seed").await;

    let mut expected: Vec<(i64, String)> = sorts
        .iter()
        .enumerate()
        .map(|(i, s)| (*s, format!("{p}-r{i}")))
        .collect();
    expected.sort();
    let asc: Vec<String> = expected.iter().map(|(_, id)| id.clone()).collect();
    let desc: Vec<String> = asc.iter().rev().cloned().collect();

    let q = Query::new(Kind::Order, Index::Owner(owner.clone()));
    for page in [1, 2, 3, 8, 50] {
        assert_eq!(
            collect_ids(store, q.clone(), page).await,
            asc,
            "asc page {page}"
        );
        let mut qd = q.clone();
        qd.descending = true;
        assert_eq!(collect_ids(store, qd, page).await, desc, "desc page {page}");
    }
    // Limit above the count: one page, no cursor.
    let mut big = q.clone();
    big.limit = 50;
    let page = store.query(big).await.unwrap();
    assert_eq!(page.records.len(), 8);
    assert_eq!(page.next, None, "nothing can follow");
    assert!(
        page.records.iter().all(|r| r.body == "\"x\""),
        "full records"
    );
    // Limit 0: nothing.
    let mut zero = q.clone();
    zero.limit = 0;
    assert!(store.query(zero).await.unwrap().records.is_empty());

    // Bounds are inclusive.
    let within = |lo: i64, hi: i64| -> Vec<String> {
        expected
            .iter()
            .filter(|(s, _)| *s >= lo && *s <= hi)
            .map(|(_, id)| id.clone())
            .collect()
    };
    let mut qb = q.clone();
    qb.sort_min = Some(3);
    qb.sort_max = Some(5);
    assert_eq!(collect_ids(store, qb.clone(), 2).await, within(3, 5));
    qb.descending = true;
    let mut rev = within(3, 5);
    rev.reverse();
    assert_eq!(collect_ids(store, qb, 1).await, rev);
    let mut qmin = q.clone();
    qmin.sort_min = Some(4);
    assert_eq!(collect_ids(store, qmin, 2).await, within(4, i64::MAX));
    let mut qmax = q.clone();
    qmax.sort_max = Some(3);
    qmax.descending = true;
    let mut rev = within(i64::MIN, 3);
    rev.reverse();
    assert_eq!(collect_ids(store, qmax, 2).await, rev);
    let mut empty = q.clone();
    empty.sort_min = Some(6);
    empty.sort_max = Some(8);
    assert!(collect_ids(store, empty, 2).await.is_empty());

    // Status index.
    let qs1 = Query::new(Kind::Order, Index::Status(s1.clone()));
    let even: Vec<String> = expected
        .iter()
        .filter(|(_, id)| {
            let n: usize = id.rsplit('r').next().unwrap().parse().unwrap();
            n % 2 == 0
        })
        .map(|(_, id)| id.clone())
        .collect();
    assert_eq!(collect_ids(store, qs1.clone(), 2).await, even);

    // A cursor keeps its place when a record is added before it.
    let mut first = q.clone();
    first.limit = 3;
    let page1 = store.query(first.clone()).await.unwrap();
    let mut early = rec(Kind::Order, &format!("{p}-early"), "x");
    early.owner = Some(owner.clone());
    early.sort = -100;
    must_write(store, vec![put(early, Expect::Absent)], "early").await;
    first.cursor = page1.next.clone();
    let rest = collect_ids(store, first, 3).await;
    let mut seen: Vec<String> = page1.records.into_iter().map(|r| r.id).collect();
    seen.extend(rest);
    assert_eq!(seen, asc, "no gaps or repeats across pages");

    // A status change moves the record between status partitions.
    let r0 = get(store, Kind::Order, &format!("{p}-r0")).await.unwrap();
    let mut moved = r0.clone();
    moved.version = 2;
    moved.status = Some(s3.clone());
    must_write(store, vec![put(moved, Expect::Version(1))], "move").await;
    let after = collect_ids(store, qs1, 10).await;
    assert!(!after.contains(&r0.id), "left its old status");
    let qs3 = Query::new(Kind::Order, Index::Status(s3));
    assert_eq!(collect_ids(store, qs3, 10).await, vec![r0.id]);

    // Garbage cursors are refused.
    let mut bad = q;
    bad.cursor = Some("!!not a cursor!!".into());
    assert_eq!(store.query(bad).await, Err(StoreError::BadCursor));
}

/// A cursor pages the listing that gave it out, and only that one: passed to a query on
/// another key, the other index, or another kind, it is refused with `BadCursor` — DynamoDB's
/// cursor names its index partition and cannot mean anything elsewhere, and SQLite's used to
/// be a bare (sort, id) that any listing took as a place (the merchant's `events` paging a
/// source with another source's `next` silently skipped events instead of `BAD_CURSOR`).
/// The same listing takes it in either direction.
pub async fn cursors_belong_to_their_listing(store: &DynStore) {
    let p = prefix();
    let (a, b) = (format!("{p}-a"), format!("{p}-b"));
    let mut writes = Vec::new();
    for i in 0..3 {
        for (owner, tag) in [(&a, "a"), (&b, "b")] {
            let mut r = rec(Kind::Order, &format!("{p}-{tag}{i}"), "x");
            r.owner = Some(owner.clone());
            r.status = Some(a.clone());
            r.sort = i;
            writes.push(put(r, Expect::Absent));
        }
    }
    let mut refund = rec(Kind::Refund, &format!("{p}-r"), "x");
    refund.owner = Some(a.clone());
    refund.status = Some(a.clone());
    writes.push(put(refund, Expect::Absent));
    must_write(store, writes, "seed").await;

    let mut of_a = Query::new(Kind::Order, Index::Owner(a.clone()));
    of_a.limit = 1;
    let cursor = store.query(of_a.clone()).await.unwrap().next;
    assert!(cursor.is_some(), "[{}] a first page of 1", store.backend());
    let elsewhere = [
        (
            "another owner",
            Query::new(Kind::Order, Index::Owner(b.clone())),
        ),
        (
            "the status index, same key",
            Query::new(Kind::Order, Index::Status(a.clone())),
        ),
        (
            "another kind, same owner",
            Query::new(Kind::Refund, Index::Owner(a.clone())),
        ),
    ];
    for (what, mut q) in elsewhere {
        q.cursor = cursor.clone();
        let got = store.query(q).await.map(|page| page.records.len());
        assert_eq!(
            got,
            Err(StoreError::BadCursor),
            "[{}] a cursor of owner {a}'s orders used on {what}",
            store.backend()
        );
    }
    // Its own listing takes it, both ways.
    let mut on = of_a.clone();
    on.cursor = cursor.clone();
    on.limit = 10;
    let ids: Vec<String> = store
        .query(on.clone())
        .await
        .unwrap()
        .records
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, vec![format!("{p}-a1"), format!("{p}-a2")]);
    on.descending = true;
    assert!(store.query(on).await.unwrap().records.is_empty());
}

// ---------------------------------------------------------------- outbox

/// Claiming from the outbox is global; cases that claim run one at a time per process.
static OUTBOX_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn custom(p: &str, n: usize) -> Task {
    Task::Custom {
        name: format!("{p}-{n}"),
        payload: serde_json::json!({"n": n}),
    }
}

fn mine(claimed: Vec<Claimed>, ids: &HashSet<String>) -> Vec<Claimed> {
    claimed
        .into_iter()
        .filter(|c| ids.contains(&c.entry.id))
        .collect()
}

/// Enqueues `n` entries due at `due`, at most eight a transaction: the claims are what is
/// checked, and moto (one request at a time) took longer than the DynamoDB store's 3 s
/// operation timeout over one transaction of 24 on a loaded host (1 of 3 loaded runs).
async fn enqueue_n(store: &DynStore, p: &str, n: usize, due: i64) -> HashSet<String> {
    let mut ids = HashSet::new();
    let mut b = Batch::new();
    for i in 0..n {
        let e = OutboxEntry::new(custom(p, i), due);
        ids.insert(e.id.clone());
        b.enqueue(e);
        if b.len() == 8 {
            std::mem::take(&mut b)
                .commit(store.as_ref())
                .await
                .expect("enqueue");
        }
    }
    b.commit(store.as_ref()).await.expect("enqueue");
    ids
}

/// Leases exclude each other, expire, and completion needs the current lease.
pub async fn outbox_leases(store: &DynStore) {
    let _guard = OUTBOX_LOCK.lock().await;
    let s = store.as_ref();
    let p = prefix();
    let t = past_base_ms();
    let lease = 10_000;

    let ids = enqueue_n(store, &p, 5, t).await;
    assert!(mine(outbox::claim_due(s, t - 1, lease, 100).await.unwrap(), &ids).is_empty());
    let (a, b) = tokio::join!(
        {
            let st = store.clone();
            tokio::spawn(async move { outbox::claim_due(st.as_ref(), t, lease, 100).await })
        },
        {
            let st = store.clone();
            tokio::spawn(async move { outbox::claim_due(st.as_ref(), t, lease, 100).await })
        }
    );
    let a = mine(a.unwrap().unwrap(), &ids);
    let b = mine(b.unwrap().unwrap(), &ids);
    let got_a: BTreeSet<&String> = a.iter().map(|c| &c.entry.id).collect();
    let got_b: BTreeSet<&String> = b.iter().map(|c| &c.entry.id).collect();
    assert!(got_a.is_disjoint(&got_b), "two workers got the same entry");
    assert_eq!(got_a.len() + got_b.len(), 5, "every due entry was claimed");
    let first: Vec<Claimed> = a.into_iter().chain(b).collect();
    for c in &first {
        assert_eq!(c.entry.attempts, 1);
        assert_eq!(c.entry.due_at_ms, t + lease, "leased until");
    }

    // Leased: invisible to other claimers until the lease runs out.
    assert!(mine(
        outbox::claim_due(s, t + lease - 1, lease, 100)
            .await
            .unwrap(),
        &ids
    )
    .is_empty());
    let one = &first[0].entry.id;
    assert_eq!(outbox::claim_one(s, one, t + 1, lease).await.unwrap(), None);

    // Expired lease: claimable again, by one worker.
    let second = mine(
        outbox::claim_due(s, t + lease, lease, 100).await.unwrap(),
        &ids,
    );
    assert_eq!(second.len(), 5, "expired leases come back");
    assert!(second.iter().all(|c| c.entry.attempts == 2));

    // The old holder lost its lease: it cannot complete.
    assert_eq!(
        outbox::complete(s, &first[0]).await,
        Err(StoreError::Conflict { index: 0 })
    );
    for c in &second {
        outbox::complete(s, c).await.unwrap();
        assert_eq!(
            outbox::get(s, &c.entry.id).await.unwrap(),
            None,
            "completed"
        );
    }

    // Many workers, many entries: each entry exactly once. (Four workers: eight at once kept
    // moto — one request at a time — past the store's 3 s operation timeout on a loaded host,
    // a PutItem timed out in a full test run at load 9.)
    let t2 = t + 1_000_000;
    let ids = enqueue_n(store, &p, 16, t2).await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let st = store.clone();
        tasks.push(tokio::spawn(async move {
            outbox::claim_due(st.as_ref(), t2, lease, 100).await
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(mine(task.await.unwrap().unwrap(), &ids));
    }
    let distinct: HashSet<&String> = all.iter().map(|c| &c.entry.id).collect();
    assert_eq!(all.len(), 16, "no entry claimed twice");
    assert_eq!(distinct.len(), 16, "every entry claimed");
    for c in &all {
        outbox::complete(s, c).await.unwrap();
    }

    // claim_one: not before due, once, and one winner among many.
    let t3 = t + 2_000_000;
    let e = OutboxEntry::new(custom(&p, 99), t3);
    outbox::enqueue(s, &e).await.unwrap();
    assert_eq!(
        outbox::claim_one(s, &e.id, t3 - 1, lease).await.unwrap(),
        None
    );
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let st = store.clone();
        let id = e.id.clone();
        tasks.push(tokio::spawn(async move {
            outbox::claim_one(st.as_ref(), &id, t3, lease).await
        }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        if let Some(c) = task.await.unwrap().unwrap() {
            winners.push(c);
        }
    }
    assert_eq!(winners.len(), 1, "claim_one has one winner");
    assert_eq!(winners[0].entry.task, e.task);
    outbox::complete(s, &winners[0]).await.unwrap();
    assert_eq!(
        outbox::claim_one(s, &e.id, t3, lease).await.unwrap(),
        None,
        "gone"
    );

    // An entry whose workers kept dying is dead-lettered by the next claim.
    let mut worn = OutboxEntry::new(custom(&p, 100), t3);
    worn.attempts = MAX_ATTEMPTS;
    outbox::enqueue(s, &worn).await.unwrap();
    let ids: HashSet<String> = [worn.id.clone()].into();
    assert!(mine(outbox::claim_due(s, t3, lease, 100).await.unwrap(), &ids).is_empty());
    let now = outbox::get(s, &worn.id).await.unwrap().unwrap();
    assert!(now.entry.is_dead(), "worn-out entry is dead");
    assert!(outbox::dead(s, &now, "cleanup", t3).await.is_ok());
}

/// Retries back off, exhaust into the dead-letter list, and replay brings them back.
pub async fn outbox_retry_dead_replay(store: &DynStore) {
    let _guard = OUTBOX_LOCK.lock().await;
    let s = store.as_ref();
    let p = prefix();
    let t = past_base_ms();
    let lease = 30_000;

    let e = OutboxEntry::new(custom(&p, 0), t);
    outbox::enqueue(s, &e).await.unwrap();
    let c1 = outbox::claim_one(s, &e.id, t, lease)
        .await
        .unwrap()
        .unwrap();
    let RetryOutcome::Scheduled { due_at_ms } = outbox::retry(s, &c1, "boom", t, 0).await.unwrap()
    else {
        panic!("first retry must be scheduled");
    };
    assert!(
        (t + 1_600..=t + 2_400).contains(&due_at_ms),
        "2 s ± 20 %: {}",
        due_at_ms - t
    );
    assert_eq!(
        outbox::retry(s, &c1, "again", t, 0).await,
        Err(StoreError::Conflict { index: 0 }),
        "a retried claim is spent"
    );
    let ids: HashSet<String> = [e.id.clone()].into();
    assert!(mine(
        outbox::claim_due(s, due_at_ms - 1, lease, 100)
            .await
            .unwrap(),
        &ids
    )
    .is_empty());
    let c2 = mine(
        outbox::claim_due(s, due_at_ms, lease, 100).await.unwrap(),
        &ids,
    );
    assert_eq!(c2.len(), 1, "due again after back-off");
    assert_eq!(c2[0].entry.attempts, 2);
    assert_eq!(c2[0].entry.last_error.as_deref(), Some("boom"));

    // Keep failing until dead: exactly MAX_ATTEMPTS claims.
    let mut claim = c2.into_iter().next().unwrap();
    let mut now = due_at_ms;
    let mut last_delay = 0;
    while let RetryOutcome::Scheduled { due_at_ms } =
        outbox::retry(s, &claim, "still failing", now, 0)
            .await
            .unwrap()
    {
        let delay = due_at_ms - now;
        assert!(delay <= outbox::BACKOFF_MAX_MS, "capped");
        assert!(
            delay * 5 >= last_delay * 3,
            "does not shrink: {last_delay} → {delay}"
        );
        last_delay = delay;
        now = due_at_ms;
        claim = outbox::claim_one(s, &e.id, now, lease)
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(claim.entry.attempts, MAX_ATTEMPTS);
    assert_eq!(
        outbox::claim_one(s, &e.id, now + 10_000_000, lease)
            .await
            .unwrap(),
        None
    );
    assert!(mine(
        outbox::claim_due(s, now + 10_000_000, lease, 100)
            .await
            .unwrap(),
        &ids
    )
    .is_empty());
    let dead = outbox::get(s, &e.id).await.unwrap().unwrap();
    assert_eq!(dead.entry.dead_at_ms, Some(now));
    assert_eq!(dead.entry.last_error.as_deref(), Some("still failing"));

    // A permanent failure goes straight to the dead letters; newest dead first.
    let e2 = OutboxEntry::new(custom(&p, 1), t);
    outbox::enqueue(s, &e2).await.unwrap();
    let c = outbox::claim_one(s, &e2.id, t, lease)
        .await
        .unwrap()
        .unwrap();
    outbox::dead(s, &c, "permanent: bad request", now + 1)
        .await
        .unwrap();
    let mut listed = Vec::new();
    let mut cursor = None;
    loop {
        let (page, next) = outbox::list_dead(s, 2, cursor).await.unwrap();
        listed.extend(page.into_iter().filter(|x| x.id == e.id || x.id == e2.id));
        match next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    let order: Vec<&str> = listed.iter().map(|x| x.id.as_str()).collect();
    assert_eq!(
        order,
        vec![e2.id.as_str(), e.id.as_str()],
        "newest dead first"
    );
    assert_eq!(
        listed[0].last_error.as_deref(),
        Some("permanent: bad request")
    );

    // Replay: pending again, attempts reset, due at once.
    let t_replay = now + 5;
    assert!(outbox::replay_dead(s, &e.id, t_replay).await.unwrap());
    let back = outbox::get(s, &e.id).await.unwrap().unwrap().entry;
    assert!(!back.is_dead());
    assert_eq!((back.attempts, back.due_at_ms), (0, t_replay));
    assert!(
        !outbox::replay_dead(s, &e.id, t_replay).await.unwrap(),
        "not dead now"
    );
    assert!(!outbox::replay_dead(s, &format!("{p}-nope"), t_replay)
        .await
        .unwrap());
    let again = outbox::claim_one(s, &e.id, t_replay, lease)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.entry.attempts, 1);
    let subject = again.entry.task.subject();
    assert!(outbox::pending_for(s, &subject, 10)
        .await
        .unwrap()
        .iter()
        .any(|x| x.id == e.id));
    outbox::complete(s, &again).await.unwrap();
    // Tidy the other dead entry away.
    assert!(outbox::replay_dead(s, &e2.id, t_replay).await.unwrap());
    let c = outbox::claim_one(s, &e2.id, t_replay, lease)
        .await
        .unwrap()
        .unwrap();
    outbox::complete(s, &c).await.unwrap();
}

// ---------------------------------------------------------------- idempotency, kv

/// Powertools states: new, in progress (refused), completed (replayed), payload mismatch,
/// released, taken over after the in-progress expiry, gone after the TTL, one racer wins —
/// plus the claim's reference: kept when an abandoned or dead claim is taken over by the same
/// request (never by another), fresh after a release.
pub async fn idempotency_states(store: &DynStore) {
    let s = store.as_ref();
    let p = prefix();
    let h1 = idempotency::payload_hash(b"request one");
    let h2 = idempotency::payload_hash(b"request two");
    let now = now_ms();
    let k = format!("{p}-k");
    let claim =
        |key: String, h: String, reference: &'static str, at: i64, in_progress: i64, ttl: i64| {
            let st = store.clone();
            async move {
                idempotency::claim(st.as_ref(), &key, &h, reference, at, in_progress, ttl)
                    .await
                    .unwrap()
            }
        };
    let new = |reference: &str| Claim::New {
        reference: reference.to_owned(),
    };

    assert_eq!(
        claim(k.clone(), h1.clone(), "r1", now, 60_000, 3600).await,
        new("r1")
    );
    assert_eq!(
        claim(k.clone(), h1.clone(), "r2", now, 60_000, 3600).await,
        Claim::InProgress
    );
    assert_eq!(
        claim(k.clone(), h2.clone(), "r2", now, 60_000, 3600).await,
        Claim::PayloadMismatch {
            reference: Some("r1".into()),
            running: true
        }
    );
    idempotency::complete(s, &k, r#"{"ok":1}"#).await.unwrap();
    assert_eq!(
        claim(k.clone(), h1.clone(), "r2", now + 1, 60_000, 3600).await,
        Claim::Completed(r#"{"ok":1}"#.into())
    );
    assert_eq!(
        claim(k.clone(), h2.clone(), "r2", now + 1, 60_000, 3600).await,
        Claim::PayloadMismatch {
            reference: Some("r1".into()),
            running: false
        }
    );
    // A completed record outlives the in-progress window.
    assert_eq!(
        claim(k.clone(), h1.clone(), "r2", now + 120_000, 60_000, 3600).await,
        Claim::Completed(r#"{"ok":1}"#.into())
    );
    idempotency::release(s, &k).await.unwrap();
    idempotency::abandon(s, &k).await.unwrap();
    assert!(matches!(
        claim(k.clone(), h1.clone(), "r2", now + 2, 60_000, 3600).await,
        Claim::Completed(_)
    ));

    // Released after a failure: claimable again, by another request too, with a new
    // reference.
    let k2 = format!("{p}-k2");
    assert_eq!(
        claim(k2.clone(), h1.clone(), "r1", now, 60_000, 3600).await,
        new("r1")
    );
    idempotency::release(s, &k2).await.unwrap();
    assert_eq!(
        claim(k2.clone(), h2.clone(), "r2", now, 60_000, 3600).await,
        new("r2")
    );

    // A dead handler's claim is taken over after the in-progress expiry, keeping its
    // reference.
    let k3 = format!("{p}-k3");
    assert_eq!(
        claim(k3.clone(), h1.clone(), "r1", now, 1_000, 3600).await,
        new("r1")
    );
    assert_eq!(
        claim(k3.clone(), h1.clone(), "r2", now + 500, 1_000, 3600).await,
        Claim::InProgress
    );
    assert_eq!(
        claim(k3.clone(), h1.clone(), "r2", now + 1_500, 1_000, 3600).await,
        new("r1")
    );
    assert_eq!(
        claim(k3.clone(), h1.clone(), "r3", now + 1_600, 1_000, 3600).await,
        Claim::InProgress
    );
    // Another request may not take it over: what the first began is the first's.
    assert_eq!(
        claim(k3.clone(), h2.clone(), "r3", now + 3_000, 1_000, 3600).await,
        Claim::PayloadMismatch {
            reference: Some("r1".into()),
            running: false
        }
    );

    // Abandoned (the handler may have written): taken over at once, reference kept, and
    // only by the same request.
    let k6 = format!("{p}-k6");
    assert_eq!(
        claim(k6.clone(), h1.clone(), "r1", now, 60_000, 3600).await,
        new("r1")
    );
    idempotency::abandon(s, &k6).await.unwrap();
    assert_eq!(
        claim(k6.clone(), h2.clone(), "r2", now + 1, 60_000, 3600).await,
        Claim::PayloadMismatch {
            reference: Some("r1".into()),
            running: false
        }
    );
    assert_eq!(
        claim(k6.clone(), h1.clone(), "r2", now + 1, 60_000, 3600).await,
        new("r1")
    );
    assert_eq!(
        claim(k6.clone(), h1.clone(), "r3", now + 2, 60_000, 3600).await,
        Claim::InProgress,
        "taken over: live again"
    );
    idempotency::complete(s, &k6, "{}").await.unwrap();
    idempotency::abandon(s, &k6).await.unwrap();
    assert_eq!(
        claim(k6.clone(), h1.clone(), "r3", now + 3, 60_000, 3600).await,
        Claim::Completed("{}".into()),
        "a completed record is not abandoned"
    );

    // Past its TTL the record is gone.
    let k4 = format!("{p}-k4");
    let old = now - 7_200_000;
    assert_eq!(
        claim(k4.clone(), h1.clone(), "r1", old, 60_000, 3600).await,
        new("r1")
    );
    assert_eq!(
        claim(k4.clone(), h2.clone(), "r2", old, 60_000, 3600).await,
        new("r2")
    );
    idempotency::complete(s, &k4, "{}").await.unwrap();

    // Concurrent duplicates: one runs, the rest are refused.
    let k5 = format!("{p}-k5");
    let mut tasks = Vec::new();
    for _ in 0..16 {
        tasks.push(tokio::spawn(claim(
            k5.clone(),
            h1.clone(),
            "r1",
            now,
            60_000,
            3600,
        )));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    assert_eq!(outcomes.iter().filter(|c| **c == new("r1")).count(), 1);
    assert!(outcomes
        .iter()
        .all(|c| *c == new("r1") || *c == Claim::InProgress));
}

/// TTL key-value with compare-and-set.
pub async fn kv_cas(store: &DynStore) {
    let s = store.as_ref();
    let p = prefix();
    let k = format!("{p}-token");
    let later = now_secs() + 7200;
    assert_eq!(kv::get(s, &k).await.unwrap(), None);
    assert!(kv::put_if(s, &k, "t1", later, None).await.unwrap());
    assert!(
        !kv::put_if(s, &k, "t1b", later, None).await.unwrap(),
        "exists"
    );
    let e = kv::get(s, &k).await.unwrap().unwrap();
    assert_eq!(
        (e.value.as_str(), e.version, e.expires_at),
        ("t1", 1, later)
    );
    assert!(kv::put_if(s, &k, "t2", later, Some(1)).await.unwrap());
    assert!(
        !kv::put_if(s, &k, "t2b", later, Some(1)).await.unwrap(),
        "stale"
    );
    assert_eq!(kv::get(s, &k).await.unwrap().unwrap().value, "t2");

    let mut tasks = Vec::new();
    for i in 0..16 {
        let st = store.clone();
        let k = k.clone();
        tasks.push(tokio::spawn(async move {
            kv::put_if(st.as_ref(), &k, &format!("r{i}"), later, Some(2))
                .await
                .unwrap()
                .then_some(i)
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        winners.extend(t.await.unwrap());
    }
    assert_eq!(winners.len(), 1, "one refresher wins");
    let e = kv::get(s, &k).await.unwrap().unwrap();
    assert_eq!((e.value, e.version), (format!("r{}", winners[0]), 3));

    assert!(!kv::delete_if(s, &k, 2).await.unwrap());
    assert!(kv::delete_if(s, &k, 3).await.unwrap());
    assert_eq!(kv::get(s, &k).await.unwrap(), None);

    // Expired entries are absent.
    let k2 = format!("{p}-old");
    assert!(kv::put_if(s, &k2, "old", now_secs() - 1, None)
        .await
        .unwrap());
    assert_eq!(kv::get(s, &k2).await.unwrap(), None);
    assert!(!kv::put_if(s, &k2, "x", later, Some(1)).await.unwrap());
    assert!(kv::put_if(s, &k2, "new", later, None).await.unwrap());
    assert_eq!(kv::get(s, &k2).await.unwrap().unwrap().value, "new");
    kv::delete(s, &k2).await.unwrap();
    kv::delete(s, &k2).await.unwrap();
    assert_eq!(kv::get(s, &k2).await.unwrap(), None);
}

// ---------------------------------------------------------------- repo

fn order(no: &OutTradeNo, openid: &OpenId, created: i64) -> Order {
    Order {
        out_trade_no: no.clone(),
        openid: openid.clone(),
        items: vec![OrderItem {
            product_id: ProductId::parse("p1").unwrap(),
            sku_id: SkuId::parse("s1").unwrap(),
            title: "Tea".into(),
            head_img: String::new(),
            unit_price: Fen::new(100).unwrap(),
            quantity: 1,
        }],
        total: Fen::new(100).unwrap(),
        freight: Fen::ZERO,
        status: OrderStatus::Created,
        fund_type: FundType::Direct,
        prepay_id: None,
        prepay_at_ms: None,
        transaction_id: None,
        paid_at_ms: None,
        wx_order_id: Some(u64::MAX - 1),
        sent_to_wechat: Default::default(),
        ticket: None,
        scene: None,
        trace_id: None,
        delivery: None,
        shipped_at_ms: None,
        address: None,
        refunded: Fen::ZERO,
        refund_claims: Default::default(),
        refunds_by_hand: Default::default(),
        aftersales: Default::default(),
        settled_at_ms: None,
        close_reason: None,
        created_at_ms: created,
        updated_at_ms: created,
        expires_at_ms: created + 1_800_000,
    }
}

fn product(id: &ProductId, audit: AuditStatus) -> Product {
    Product {
        product_id: id.clone(),
        title: "Tea".into(),
        path: String::new(),
        head_img: vec![],
        third_cat_id: 1,
        brand_id: 2,
        qualification_pics: vec![],
        skus: vec![Sku {
            sku_id: SkuId::parse("s1").unwrap(),
            price: Fen::new(100).unwrap(),
            market_price: Fen::ZERO,
            stock: 10,
            wx_sku_id: None,
            attrs: vec![],
        }],
        audit,
        reject_reason: None,
        listing: Listing::Listed,
        wx_product_id: None,
        updated_at_ms: 0,
        submit_error: None,
        edit: None,
        audit_asked_at_ms: None,
        delisted_by_platform: false,
        waiting_for: None,
    }
}

/// Refunds whose reported SUCCESS was recorded within a time window, through the status
/// index (what a day's reconciliation reads): a refund moves from its creation time to its
/// success time as it succeeds; one marked successful without the time (by a person, or
/// before it was kept) is in the partition by creation but not listed; paging keeps order.
pub async fn refunds_by_success_recorded(store: &DynStore) {
    let s = store.as_ref();
    let p = prefix();
    let t = past_base_ms();
    let day = 86_400_000;
    let no = |i: usize| OutRefundNo::parse(format!("RF{p}{i}")).unwrap();
    let order = OutTradeNo::parse(format!("CF{p}")).unwrap();
    let new = |i: usize, created: i64| {
        RefundRecord::new(
            no(i),
            order.clone(),
            AfterSaleId::parse(format!("{p}a{i}")).unwrap(),
            Fen::new(100).unwrap(),
            created,
        )
    };
    // 0: created the day before, succeeds in the window; 1: created in the window, still
    // processing; 2: succeeds after the window; 3: marked successful without the time,
    // created in the window; 4..=6: succeed in the window, to page through.
    let mut b = Batch::new();
    for (i, created) in [(0, t - day), (1, t + 5), (2, t), (3, t + 6)] {
        b.create_refund(&new(i, created));
    }
    for i in 4..=6 {
        b.create_refund(&new(i, t - 2 * day));
    }
    b.commit(s).await.unwrap();
    let succeed = |i: usize, at: Option<i64>| async move {
        let v = repo::get_refund(s, &no(i)).await.unwrap().unwrap();
        let mut next = v.value.clone();
        next.status = RefundStatus::Success;
        next.succeeded_at_ms = at.map(|a| a - 1000);
        next.success_recorded_at_ms = at;
        let mut b = Batch::new();
        b.update_refund(&v, &next);
        b.commit(s).await.unwrap();
    };
    succeed(0, Some(t + 10)).await;
    succeed(2, Some(t + day)).await;
    succeed(3, None).await;
    for i in 4..=6 {
        succeed(i, Some(t + 20 + i as i64)).await;
    }
    let mut listed = Vec::new();
    let mut cursor = None;
    loop {
        let (page, next) = repo::refunds_recorded_successful_between(s, t, t + day - 1, cursor)
            .await
            .unwrap();
        listed.extend(
            page.into_iter()
                .filter(|r| r.out_trade_no == order)
                .map(|r| r.out_refund_no),
        );
        match next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    assert_eq!(
        listed,
        vec![no(0), no(4), no(5), no(6)],
        "by success recorded"
    );
    // The owner index still has them all.
    assert_eq!(repo::refunds_of_order(s, &order).await.unwrap().len(), 7);
}

/// After-sales recorded REFUNDED within a time window, through the status index (what a
/// day's funds reconciliation reads): an after-sale moves from its creation time to the time
/// it was refunded as it is; one REFUNDED without that time (written before it was kept) is
/// in the partition by creation but not listed; paging keeps order; the owner index still
/// has them all.
pub async fn aftersales_by_refunded_at(store: &DynStore) {
    let s = store.as_ref();
    let p = prefix();
    let t = past_base_ms();
    let day = 86_400_000;
    let order = OutTradeNo::parse(format!("CA{p}")).unwrap();
    let id = |i: usize| AfterSaleId::parse(format!("{p}r{i}")).unwrap();
    let new = |i: usize, created: i64| AfterSale {
        id: id(i),
        out_trade_no: order.clone(),
        openid: OpenId::parse("o_conformance").unwrap(),
        kind: AfterSaleKind::RefundOnly,
        amount: Fen::new(10).unwrap(),
        reason: "x".into(),
        status: AfterSaleStatus::Requested,
        out_refund_no: None,
        refund_id: None,
        wx_aftersale_id: None,
        wx_add_claimed_until_ms: None,
        restock: false,
        reject_reason: None,
        goods_return: None,
        line: None,
        created_at_ms: created,
        updated_at_ms: created,
        refunded_at_ms: None,
        by: Default::default(),
    };
    // 0: created the day before, refunded in the window; 1: created in the window, still
    // requested; 2: refunded after the window; 3: REFUNDED without the time, created in the
    // window; 4..=6: refunded in the window, to page through.
    let mut b = Batch::new();
    for (i, created) in [
        (0, t - day),
        (1, t + 5),
        (2, t),
        (4, t - 3),
        (5, t - 2),
        (6, t - 1),
    ] {
        b.create_aftersale(&new(i, created));
    }
    let mut old = new(3, t + 6);
    old.status = AfterSaleStatus::Refunded;
    b.create_aftersale(&old);
    b.commit(s).await.unwrap();
    let refund = |i: usize, at: i64| async move {
        let v = repo::get_aftersale(s, &id(i)).await.unwrap().unwrap();
        let mut next = v.value.clone();
        let _ = next.refunded_by_wechat(None, at);
        let mut b = Batch::new();
        b.update_aftersale(&v, &next);
        b.commit(s).await.unwrap();
    };
    refund(0, t + 10).await;
    refund(2, t + day).await;
    for i in 4..=6 {
        refund(i, t + 20 + i as i64).await;
    }
    let mut listed = Vec::new();
    let mut cursor = None;
    loop {
        let (page, next) = repo::aftersales_refunded_between(s, t, t + day - 1, cursor)
            .await
            .unwrap();
        listed.extend(
            page.into_iter()
                .filter(|a| a.out_trade_no == order)
                .map(|a| a.id),
        );
        match next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    assert_eq!(listed, vec![id(0), id(4), id(5), id(6)], "by refunded at");
    assert_eq!(repo::aftersales_of_order(s, &order).await.unwrap().len(), 7);
}

/// The typed layer over this backend: orders, products, after-sales, refunds, events, and
/// batches that tie a transition to its outbox entry.
pub async fn repo_round_trip(store: &DynStore) {
    let s = store.as_ref();
    let p = prefix();
    let t = past_base_ms();
    let openid = OpenId::parse(format!("o{p}")).unwrap();
    let nos: Vec<OutTradeNo> = (0..3)
        .map(|i| OutTradeNo::parse(format!("CF{p}{i}")).unwrap())
        .collect();
    let mut b = Batch::new();
    for (i, no) in nos.iter().enumerate() {
        assert_eq!(b.create_order(&order(no, &openid, t + i as i64)), i);
    }
    b.commit(s).await.unwrap();
    let mut b = Batch::new();
    b.create_order(&order(&nos[0], &openid, t));
    assert_eq!(b.commit(s).await, Err(StoreError::Conflict { index: 0 }));
    assert!(repo::any_order_created_before(s, t + 1).await.unwrap());

    // Newest first, paged.
    let (page1, next) = repo::orders_of(s, &openid, 2, None).await.unwrap();
    let got: Vec<&OutTradeNo> = page1.iter().map(|o| &o.out_trade_no).collect();
    assert_eq!(got, vec![&nos[2], &nos[1]]);
    let (page2, next) = repo::orders_of(s, &openid, 2, next).await.unwrap();
    assert_eq!(page2.len(), 1);
    assert_eq!(page2[0].out_trade_no, nos[0]);
    assert_eq!(next, None);
    assert_eq!(page2[0].wx_order_id, Some(u64::MAX - 1), "u64 ids survive");

    // Update + outbox entry in one batch.
    let v1 = repo::get_order(s, &nos[0]).await.unwrap().unwrap();
    assert_eq!(v1.version, 1);
    let mut o = v1.value.clone();
    o.prepay("prepay-1".into(), t + 10).unwrap();
    let entry = OutboxEntry::new(
        Task::OrderClose {
            out_trade_no: nos[0].clone(),
        },
        t,
    );
    let mut b = Batch::new();
    assert_eq!(b.update_order(&v1, &o), 0);
    assert_eq!(b.enqueue(entry.clone()), 1);
    b.commit(s).await.unwrap();
    let v2 = repo::get_order(s, &nos[0]).await.unwrap().unwrap();
    assert_eq!(v2, v1.updated(o.clone()));
    assert!(outbox::get(s, &entry.id).await.unwrap().is_some());

    // A stale update fails, and its outbox entry is not written.
    let mut stale = v1.value.clone();
    stale.close("user", t + 11).unwrap();
    let lost = OutboxEntry::new(
        Task::OrderPay {
            out_trade_no: nos[0].clone(),
        },
        t,
    );
    let mut b = Batch::new();
    b.enqueue(lost.clone());
    b.update_order(&v1, &stale);
    assert_eq!(b.commit(s).await, Err(StoreError::Conflict { index: 1 }));
    assert!(outbox::get(s, &lost.id).await.unwrap().is_none());
    assert_eq!(repo::get_order(s, &nos[0]).await.unwrap().unwrap(), v2);

    // Changing the key in an update is refused before anything is written.
    let mut renamed = o.clone();
    renamed.out_trade_no = nos[1].clone();
    let mut b = Batch::new();
    b.update_order(&v2, &renamed);
    assert!(matches!(b.commit(s).await, Err(StoreError::Backend(_))));

    // Sweeps (a fresh turn, as `sweep_unpaid` takes): by status, created before a time,
    // oldest first; an expired record is not handed out.
    let mut gone = o.clone();
    gone.out_trade_no = OutTradeNo::parse(format!("CF{p}x")).unwrap();
    let mut gone = repo::order_record(&gone, 1).unwrap();
    gone.expires_at = Some(now_secs() - 10);
    must_write(store, vec![put(gone, Expect::Any)], "expired order").await;
    let gone = OutTradeNo::parse(format!("CF{p}x")).unwrap();
    let mut mine = nos.clone();
    mine.push(gone);
    let prepaid = swept(s, OrderStatus::Prepaid, t + 1, &mine).await;
    assert_eq!(prepaid, vec![nos[0].clone()], "expired hidden");
    let before = swept(s, OrderStatus::Prepaid, t, &mine).await;
    assert!(before.is_empty(), "strictly before: {before:?}");
    let created = swept(s, OrderStatus::Created, t + 3, &mine).await;
    assert_eq!(
        created,
        vec![nos[1].clone(), nos[2].clone()],
        "oldest first, status moved"
    );

    // Events: recorded once; a replay's batch writes nothing.
    let ev = EventRecord::new("pay", format!("{p}-txn"), t, "<xml/>");
    assert!(repo::record_event(s, &ev).await.unwrap());
    assert!(
        !repo::record_event(s, &ev).await.unwrap(),
        "replay recognised"
    );
    assert_eq!(
        repo::get_event(s, "pay", &ev.key)
            .await
            .unwrap()
            .unwrap()
            .value,
        ev
    );
    let mut paid = v2.value.clone();
    paid.pay("txn", t + 20, t + 20).unwrap();
    let mut b = Batch::new();
    assert_eq!(b.record_event(&ev), 0);
    b.update_order(&v2, &paid);
    assert_eq!(b.commit(s).await, Err(StoreError::Conflict { index: 0 }));
    assert_eq!(
        repo::get_order(s, &nos[0]).await.unwrap().unwrap().version,
        2
    );

    // Products: all, by audit; an audit change moves it.
    let pids: Vec<ProductId> = (0..3)
        .map(|i| ProductId::parse(format!("{p}p{i}")).unwrap())
        .collect();
    let mut b = Batch::new();
    for (i, pid) in pids.iter().enumerate() {
        let audit = if i == 0 {
            AuditStatus::Approved
        } else {
            AuditStatus::Auditing
        };
        b.create_product(&product(pid, audit));
    }
    b.commit(s).await.unwrap();
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let (page, next) = repo::list_products(s, ProductFilter::All, 2, cursor)
            .await
            .unwrap();
        all.extend(
            page.into_iter()
                .map(|v| v.value.product_id)
                .filter(|id| pids.contains(id)),
        );
        match next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    assert_eq!(all, pids, "all products by id");
    let vp = repo::get_product(s, &pids[1]).await.unwrap().unwrap();
    let mut approved = vp.value.clone();
    approved.audit = AuditStatus::Approved;
    let mut b = Batch::new();
    b.check_order(&v2);
    b.update_product(&vp, &approved);
    b.commit(s).await.unwrap();
    // Approved and listed: on sale (the index's APPROVED is for approved products not on sale).
    let (list, _) = repo::list_products(s, ProductFilter::Index(ProductIndex::OnSale), 1000, None)
        .await
        .unwrap();
    let approved_ids: Vec<&ProductId> = list
        .iter()
        .map(|v| &v.value.product_id)
        .filter(|id| pids.contains(id))
        .collect();
    assert_eq!(approved_ids, vec![&pids[0], &pids[1]]);
    let mut b = Batch::new();
    b.check_product(&vp);
    assert_eq!(b.commit(s).await, Err(StoreError::Conflict { index: 0 }));

    // After-sales of an order, and refunds.
    let as_ids: Vec<AfterSaleId> = (0..2)
        .map(|i| AfterSaleId::parse(format!("{p}a{i}")).unwrap())
        .collect();
    let mut b = Batch::new();
    for (i, id) in as_ids.iter().enumerate() {
        b.create_aftersale(&AfterSale {
            id: id.clone(),
            out_trade_no: nos[0].clone(),
            openid: openid.clone(),
            kind: AfterSaleKind::RefundOnly,
            amount: Fen::new(50).unwrap(),
            reason: "broken".into(),
            status: AfterSaleStatus::Requested,
            out_refund_no: None,
            refund_id: None,
            wx_aftersale_id: None,
            wx_add_claimed_until_ms: None,
            restock: false,
            reject_reason: None,
            goods_return: None,
            line: None,
            created_at_ms: t + i as i64,
            updated_at_ms: t,
            refunded_at_ms: None,
            by: Default::default(),
        });
    }
    b.commit(s).await.unwrap();
    let list = repo::aftersales_of_order(s, &nos[0]).await.unwrap();
    let got: Vec<&AfterSaleId> = list.iter().map(|v| &v.value.id).collect();
    assert_eq!(got, vec![&as_ids[0], &as_ids[1]]);
    let va = repo::get_aftersale(s, &as_ids[0]).await.unwrap().unwrap();
    let mut approved = va.value.clone();
    approved.approve(FundType::Direct, t + 30).unwrap();
    let refund_no = approved.out_refund_no.clone().unwrap();
    let refund = RefundRecord::new(
        refund_no.clone(),
        nos[0].clone(),
        as_ids[0].clone(),
        approved.amount,
        t + 30,
    );
    let mut b = Batch::new();
    b.update_aftersale(&va, &approved);
    b.create_refund(&refund);
    b.enqueue(OutboxEntry::new(
        Task::Refund {
            aftersale_id: as_ids[0].clone(),
        },
        t,
    ));
    b.commit(s).await.unwrap();
    let vr = repo::get_refund(s, &refund_no).await.unwrap().unwrap();
    assert_eq!(vr.value, refund);
    let mut done = refund.clone();
    done.status = RefundStatus::Success;
    done.refund_id = Some("50000000".into());
    let mut b = Batch::new();
    b.update_refund(&vr, &done);
    b.commit(s).await.unwrap();
    let refunds = repo::refunds_of_order(s, &nos[0]).await.unwrap();
    assert_eq!(refunds.len(), 1);
    assert_eq!((refunds[0].version, &refunds[0].value), (2, &done));
    assert!(
        repo::get_refund(s, &OutRefundNo::parse(format!("{p}x")).unwrap())
            .await
            .unwrap()
            .is_none()
    );

    // Tidy the outbox entries this case left pending (they would be due in 2001).
    let _guard = OUTBOX_LOCK.lock().await;
    for subject in [
        Task::OrderClose {
            out_trade_no: nos[0].clone(),
        }
        .subject(),
        Task::Refund {
            aftersale_id: as_ids[0].clone(),
        }
        .subject(),
    ] {
        for e in outbox::pending_for(s, &subject, 10).await.unwrap() {
            if let Some(c) = outbox::claim_one(s, &e.id, e.due_at_ms, 1000)
                .await
                .unwrap()
            {
                outbox::complete(s, &c).await.unwrap();
            }
        }
    }
}

/// Of `mine`, the orders a fresh turn (`repo::order_rotation`, as the unpaid sweep takes)
/// through `status` created before `before_ms` hands out, in its order.
async fn swept(
    s: &dyn super::Store,
    status: OrderStatus,
    before_ms: i64,
    mine: &[OutTradeNo],
) -> Vec<OutTradeNo> {
    let name = format!("cf/{}", prefix());
    let mut turn = repo::order_rotation(s, &name, status, before_ms)
        .await
        .unwrap();
    let mut got = Vec::new();
    // Only the ids: other cases' records may share the index.
    while let Some(rec) = turn.next(s).await.unwrap() {
        if let Some(no) = mine.iter().find(|n| n.as_str() == rec.id) {
            got.push(no.clone());
        }
    }
    got
}

// ---------------------------------------------------------------- rotation

/// Up to `n` ids of one run of the turn `name` through `status` (sort ≤ `sort_max`), its
/// place saved after.
async fn turn(
    s: &dyn super::Store,
    name: &str,
    status: &str,
    sort_max: Option<i64>,
    n: usize,
) -> Vec<String> {
    let mut t = Rotation::resume(s, name, Kind::Order, status, None, sort_max)
        .await
        .unwrap();
    let mut ids = Vec::new();
    while ids.len() < n {
        match t.next(s).await.unwrap() {
            Some(r) => ids.push(r.id),
            None => break,
        }
    }
    t.save(s, now_secs()).await;
    ids
}

/// A sweep's turn through a status index: each run goes on after the record the last run
/// handled last — read past ties at that place — to the end, then round from the start up
/// to the place, each record once a run; the place holds when its record has left the index
/// (the position is in the index's order, not a store cursor), and sort bounds apply.
pub async fn rotations(store: &DynStore) {
    let s = store.as_ref();
    let p = prefix();
    let status = format!("R{p}");
    let name = format!("cf/{p}");
    let t = past_base_ms();
    let ids: Vec<String> = (0..5).map(|i| format!("{p}{i}")).collect();
    // Sorts t, t+1, t+1 (a tie), t+2, t+3.
    let sorts = [t, t + 1, t + 1, t + 2, t + 3];
    let mut writes = Vec::new();
    for (id, sort) in ids.iter().zip(sorts) {
        let mut r = rec(Kind::Order, id, "x");
        r.status = Some(status.clone());
        r.sort = sort;
        writes.push(put(r, Expect::Absent));
    }
    must_write(store, writes, "rotation records").await;
    let want = |idx: &[usize]| idx.iter().map(|&i| ids[i].clone()).collect::<Vec<_>>();

    assert_eq!(turn(s, &name, &status, None, 2).await, want(&[0, 1]));
    assert_eq!(
        turn(s, &name, &status, None, 2).await,
        want(&[2, 3]),
        "after the place, its tie included"
    );
    assert_eq!(
        turn(s, &name, &status, None, 10).await,
        want(&[4, 0, 1, 2, 3]),
        "to the end, then round to the place: each once"
    );
    // The place (3) leaves the index: the next run goes on after where it was.
    must_write(
        store,
        vec![del(Kind::Order, &ids[3], Expect::Any)],
        "the place leaves",
    )
    .await;
    assert_eq!(turn(s, &name, &status, None, 1).await, want(&[4]));
    assert_eq!(
        turn(s, &name, &status, None, 10).await,
        want(&[0, 1, 2, 4]),
        "round from the start up to the place, 4, included; 3 is gone"
    );
    // Bounds: nothing past `sort_max`, and a place past the bounds starts from the start.
    assert_eq!(
        turn(s, &name, &status, Some(t + 1), 10).await,
        want(&[0, 1, 2]),
        "within the bounds"
    );
    let other = format!("cf/{p}/other");
    assert_eq!(
        turn(s, &other, &status, None, 10).await,
        want(&[0, 1, 2, 4]),
        "a turn of its own, from the start"
    );
    assert_eq!(turn(s, &other, &status, Some(t), 10).await, want(&[0]));
}

// ---------------------------------------------------------------- product audit index

/// Whether product `id` is listed under `index`.
async fn listed_under(s: &dyn super::Store, index: ProductIndex, id: &ProductId) -> bool {
    let mut cursor = None;
    loop {
        let (page, next) = repo::list_products(s, ProductFilter::Index(index), 100, cursor)
            .await
            .unwrap();
        if page.iter().any(|p| &p.value.product_id == id) {
            return true;
        }
        match next {
            Some(n) => cursor = Some(n),
            None => return false,
        }
    }
}

/// Whether the audit sweep's listing ([`ProductIndex::UNDER_AUDIT`]) holds `id`.
async fn under_audit(s: &dyn super::Store, id: &ProductId) -> bool {
    for index in ProductIndex::UNDER_AUDIT {
        if listed_under(s, index, id).await {
            return true;
        }
    }
    false
}

/// The ids [`repo::list_on_sale`] gives, `limit` a page, of those starting with `p`.
async fn on_sale_ids(s: &dyn super::Store, p: &str, limit: usize) -> Vec<String> {
    let (mut ids, mut cursor) = (Vec::new(), None::<String>);
    loop {
        let (page, _, next) = repo::list_on_sale(s, limit, cursor.as_deref(), 3)
            .await
            .unwrap();
        assert!(page.len() <= limit);
        ids.extend(
            page.into_iter()
                .map(|v| v.value.product_id.as_str().to_owned())
                .filter(|id| id.starts_with(p)),
        );
        match next {
            Some(n) => cursor = Some(n),
            None => return ids,
        }
    }
}

/// Re-indexes the whole listing (a page of 2 at a time): how many were written again.
async fn reindex_all(s: &dyn super::Store) -> usize {
    let (mut total, mut cursor) = (0, None);
    loop {
        let (n, next) = repo::reindex_products(s, 2, cursor).await.unwrap();
        total += n;
        match next {
            Some(c) => cursor = Some(c),
            None => return total,
        }
    }
}

/// Products are indexed by the audit a verdict can be owed for: an approved product whose
/// edit is under audit is listed as AUDITING (its own status stays APPROVED), and under
/// APPROVED again once the edit is decided. One stored before the index followed drafts
/// (indexed by its own status) is indexed again by `reindex_products`, once.
pub async fn product_audit_index(store: &DynStore) {
    let s = store.as_ref();
    let p = prefix();
    let edited = |id: &ProductId| {
        let mut prod = product(id, AuditStatus::Approved);
        prod.edit = Some(Edit {
            content: prod.content(),
            audit: AuditStatus::Auditing,
            reject_reason: None,
            submit_error: None,
        });
        prod
    };
    let id = ProductId::parse(format!("{p}e")).unwrap();
    let mut b = Batch::new();
    b.create_product(&edited(&id));
    b.commit(s).await.unwrap();
    assert!(under_audit(s, &id).await);
    assert!(!listed_under(s, ProductIndex::OnSale, &id).await);
    let v = repo::get_product(s, &id).await.unwrap().unwrap();
    assert_eq!(v.value.audit, AuditStatus::Approved, "its own status");
    let mut decided = v.value.clone();
    decided.edit = None;
    let mut b = Batch::new();
    b.update_product(&v, &decided);
    b.commit(s).await.unwrap();
    assert!(listed_under(s, ProductIndex::OnSale, &id).await);
    assert!(!under_audit(s, &id).await);

    // Stored as before: indexed by the product's own status.
    let old = ProductId::parse(format!("{p}o")).unwrap();
    let mut r = Record::new(
        Kind::Product,
        old.as_str(),
        Record::encode(&edited(&old)).unwrap(),
    );
    r.owner = Some(repo::PRODUCTS_OWNER.to_owned());
    r.status = Some("APPROVED".into());
    must_write(
        store,
        vec![put(r, Expect::Absent)],
        "a product as stored before",
    )
    .await;
    assert!(!under_audit(s, &old).await);
    assert!(reindex_all(s).await >= 1);
    assert!(under_audit(s, &old).await);
    let v = repo::get_product(s, &old).await.unwrap().unwrap();
    assert_eq!(v.version, 2);
    assert_eq!(v.value, edited(&old), "written again as it was");
    reindex_all(s).await;
    assert_eq!(
        repo::get_product(s, &old).await.unwrap().unwrap().version,
        2,
        "indexed as it is: not written again"
    );
}

/// Products on sale have a listing of their own: ON_SALE (ON_SALE_AUDITING while an edit of
/// one is under audit), set and cleared by the write that changes the product — delisted,
/// refused, delisted by the platform it leaves, listed again it comes back — read by
/// `list_on_sale` in product-id order across both, pages of any size, each product once. A
/// product stored before the partitions (under APPROVED) is not there until
/// `reindex_products` writes it again.
pub async fn product_on_sale_index(store: &DynStore) {
    let s = store.as_ref();
    let p = prefix();
    let id = |i: usize| ProductId::parse(format!("{p}{i:02}")).unwrap();
    let mut b = Batch::new();
    for i in 0..12 {
        let mut prod = product(&id(i), AuditStatus::Approved);
        match i % 4 {
            0 => {}
            1 => prod.listing = Listing::Delisted,
            2 => prod.audit = AuditStatus::Draft,
            _ => {
                prod.edit = Some(Edit {
                    content: prod.content(),
                    audit: AuditStatus::Auditing,
                    reject_reason: None,
                    submit_error: None,
                })
            }
        }
        b.create_product(&prod);
    }
    b.commit(s).await.unwrap();
    let want: Vec<String> = [0, 3, 4, 7, 8, 11]
        .iter()
        .map(|i| id(*i).as_str().to_owned())
        .collect();
    for limit in [1, 2, 3, 5, 100] {
        assert_eq!(on_sale_ids(s, &p, limit).await, want, "pages of {limit}");
    }
    assert!(listed_under(s, ProductIndex::OnSaleAuditing, &id(3)).await);
    assert!(
        under_audit(s, &id(3)).await,
        "the sweep still finds its edit"
    );
    assert!(listed_under(s, ProductIndex::Approved, &id(1)).await);

    // Off sale and back, by the product's own writes.
    let change = |f: fn(&mut Product)| {
        let id0 = id(0);
        async move {
            let v = repo::get_product(s, &id0).await.unwrap().unwrap();
            let mut next = v.value.clone();
            f(&mut next);
            let mut b = Batch::new();
            b.update_product(&v, &next);
            b.commit(s).await.unwrap();
        }
    };
    let first = id(0).as_str().to_owned();
    change(|p| p.listing = Listing::Delisted).await;
    assert!(!on_sale_ids(s, &p, 100).await.contains(&first), "delisted");
    change(|p| p.listing = Listing::Listed).await;
    assert!(on_sale_ids(s, &p, 100).await.contains(&first), "listed");
    change(|p| p.audit = AuditStatus::Rejected).await;
    assert!(!on_sale_ids(s, &p, 100).await.contains(&first), "refused");
    change(|p| p.audit = AuditStatus::Approved).await;
    change(|p| {
        p.delist_by_platform();
    })
    .await;
    assert!(!on_sale_ids(s, &p, 100).await.contains(&first), "platform");
    change(|p| {
        p.restore_by_platform();
    })
    .await;
    assert_eq!(on_sale_ids(s, &p, 2).await, want, "all back");

    // Stored as before: under APPROVED, listed and approved.
    let old = ProductId::parse(format!("{p}05x")).unwrap();
    let mut r = Record::new(
        Kind::Product,
        old.as_str(),
        Record::encode(&product(&old, AuditStatus::Approved)).unwrap(),
    );
    r.owner = Some(repo::PRODUCTS_OWNER.to_owned());
    r.status = Some("APPROVED".into());
    must_write(store, vec![put(r, Expect::Absent)], "a product as before").await;
    assert_eq!(
        on_sale_ids(s, &p, 100).await,
        want,
        "not in the partition yet"
    );
    assert!(reindex_all(s).await >= 1);
    let mut with_old = want.clone();
    with_old.insert(3, old.as_str().to_owned());
    assert_eq!(on_sale_ids(s, &p, 2).await, with_old, "indexed again");
}

/// The blocks listed whose openid starts `o{p}`, paging through the listing 2 at a time.
async fn our_blocks(s: &dyn super::Store, p: &str) -> Vec<repo::UserBlock> {
    let mut seen = Vec::new();
    let mut cursor = None;
    for _ in 0..10_000 {
        let (page, next) = repo::user_blocks(s, 2, cursor).await.unwrap();
        seen.extend(
            page.into_iter()
                .filter(|b| b.openid.as_str().starts_with(&format!("o{p}"))),
        );
        match next {
            Some(n) => cursor = Some(n),
            None => return seen,
        }
    }
    panic!("user_blocks: the listing never ended");
}

/// Blocked users: a point read by openid, the listing newest block first (paged), blocking
/// again replaces the block, unblocking deletes it (and unblocking nobody is no error).
pub async fn user_blocks(store: &DynStore) {
    let s = store.as_ref();
    let p = prefix();
    let t = past_base_ms();
    let block = |i: usize, at: i64, reason: &str| repo::UserBlock {
        openid: OpenId::parse(format!("o{p}u{i}")).unwrap(),
        reason: reason.to_owned(),
        blocked_by: "conformance".to_owned(),
        blocked_at_ms: at,
    };
    let nobody = OpenId::parse(format!("o{p}u9")).unwrap();
    assert_eq!(repo::get_user_block(s, &nobody).await.unwrap(), None);
    for (i, at) in [(0, t), (1, t + 2), (2, t + 1)] {
        let mut b = Batch::new();
        b.put_user_block(&block(i, at, "first"));
        b.commit(s).await.unwrap();
    }
    assert_eq!(
        repo::get_user_block(s, &block(0, t, "").openid)
            .await
            .unwrap(),
        Some(block(0, t, "first"))
    );
    let listed: Vec<String> = our_blocks(s, &p)
        .await
        .iter()
        .map(|b| b.openid.to_string())
        .collect();
    assert_eq!(
        listed,
        [1, 2, 0].map(|i| format!("o{p}u{i}")),
        "user_blocks: newest block first, paged"
    );
    // Blocking again replaces the block (reason, time), still one entry.
    let mut b = Batch::new();
    b.put_user_block(&block(0, t + 3, "again"));
    b.commit(s).await.unwrap();
    assert_eq!(
        repo::get_user_block(s, &block(0, t, "").openid)
            .await
            .unwrap(),
        Some(block(0, t + 3, "again"))
    );
    let listed = our_blocks(s, &p).await;
    assert_eq!(listed.len(), 3, "user_blocks: a block again is one entry");
    assert_eq!(listed[0], block(0, t + 3, "again"));
    // Unblocking deletes; unblocking nobody is no error.
    let mut b = Batch::new();
    b.delete_user_block(&block(0, t, "").openid);
    b.delete_user_block(&nobody);
    b.commit(s).await.unwrap();
    assert_eq!(
        repo::get_user_block(s, &block(0, t, "").openid)
            .await
            .unwrap(),
        None
    );
    assert_eq!(our_blocks(s, &p).await.len(), 2);
    let mut b = Batch::new();
    b.delete_user_block(&block(1, t, "").openid);
    b.delete_user_block(&block(2, t, "").openid);
    b.commit(s).await.unwrap();
    assert!(our_blocks(s, &p).await.is_empty());
}
