//! The DynamoDB store against a real DynamoDB-compatible server: moto's, started here on
//! 127.0.0.1 at a free port (`scripts/ensure-moto.sh` installs it when missing) and killed when
//! the test ends. If moto cannot be started the test fails — it never skips.
//!
//!     cargo test -p wxshop --test store_dynamo
#![cfg(feature = "dynamodb")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wxshop::store::dynamo::DynamoStore;
use wxshop::store::{Expect, Index, Kind, Query, Record, Store, StoreError, Write};

/// moto's server process; killed on drop (also when a test panics).
struct Moto {
    child: Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python() -> String {
    std::env::var("WXSHOP_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn ensure_moto() {
    let importable = |py: &str| {
        Command::new(py)
            .args(["-c", "import moto.server, flask"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if importable(&python()) {
        return;
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/ensure-moto.sh");
    let out = Command::new("bash").arg(&script).output();
    match out {
        Ok(o) if o.status.success() && importable(&python()) => {}
        Ok(o) => panic!(
            "moto is not installed and {} failed: {}{}\n\
             install it with `pip install 'moto[server]'` (or set WXSHOP_PYTHON)",
            script.display(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("cannot run {}: {e}", script.display()),
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// `python -m moto.server`, serving one request at a time (`threaded=False`).
const MOTO_ONE_AT_A_TIME: &str = "import sys
from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple
run_simple(sys.argv[1], int(sys.argv[2]), DomainDispatcherApplication(create_backend_app), threaded=False)
";

/// Starts moto's server and waits until it answers.
fn start_moto() -> Moto {
    ensure_moto();
    let mut last_error = String::new();
    for _attempt in 0..3 {
        let port = free_port();
        // moto's own `moto.server` serves on many threads, and its conditional writes check,
        // then write, unlocked: two concurrent conditional puts can both win, which real
        // DynamoDB never lets happen, and the suite's "one winner" checks then fail at random.
        // One request at a time makes its conditions as atomic as DynamoDB's.
        let child = Command::new(python())
            .args(["-c", MOTO_ONE_AT_A_TIME, "127.0.0.1", &port.to_string()])
            .env("MOTO_PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => panic!("cannot start moto's server with `{}`: {e}", python()),
        };
        let mut moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = moto.child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = moto.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                last_error = format!("moto exited with {status}: {err}");
                break;
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                // moto logs every request to stderr; don't let the pipe fill up.
                moto.child.stderr.take();
                return moto;
            }
            if Instant::now() > deadline {
                panic!("moto did not start listening on 127.0.0.1:{port} within 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    panic!("could not start moto's server: {last_error}");
}

fn table_name(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("wxshop-test-{tag}-{}-{nanos}", std::process::id())
}

async fn new_store(moto: &Moto, tag: &str) -> DynamoStore {
    let store = DynamoStore::connect(&table_name(tag), Some(&moto.endpoint))
        .await
        .unwrap();
    store.create_table().await.unwrap();
    store
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn rec(kind: Kind, id: &str, version: u64) -> Record {
    let mut r = Record::new(kind, id, format!("{{\"id\":\"{id}\",\"v\":{version}}}"));
    r.version = version;
    r
}

fn indexed(kind: Kind, id: &str, owner: &str, status: &str, sort: i64) -> Record {
    let mut r = rec(kind, id, 1);
    r.owner = Some(owner.into());
    r.status = Some(status.into());
    r.sort = sort;
    r
}

fn ids(records: &[Record]) -> Vec<&str> {
    records.iter().map(|r| r.id.as_str()).collect()
}

/// The one suite every backend passes (`wxshop::store::conformance`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_against_moto() {
    let moto = start_moto();
    let store = new_store(&moto, "conformance").await;
    wxshop::store::conformance::run_all(Arc::new(store)).await;
}

/// What only the DynamoDB backend has: the table's shape, odd ids, backend errors — plus
/// direct checks of get/write/query/conflicts/TTL that name DynamoDB's edge cases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamo_specifics_against_moto() {
    let moto = start_moto();

    // The table as production has it: GSIs, stream, TTL.
    let store = new_store(&moto, "direct").await;
    let desc = store
        .client()
        .describe_table()
        .table_name(store.table())
        .send()
        .await
        .unwrap();
    let table = desc.table().unwrap();
    assert_eq!(table.global_secondary_indexes().len(), 2);
    assert!(table
        .stream_specification()
        .is_some_and(|s| s.stream_enabled()));
    let ttl = store
        .client()
        .describe_time_to_live()
        .table_name(store.table())
        .send()
        .await
        .unwrap();
    assert_eq!(
        ttl.time_to_live_description()
            .and_then(|d| d.attribute_name()),
        Some("ttl")
    );
    // Creating it again is harmless.
    store.create_table().await.unwrap();

    direct::get_and_put(&store).await;
    direct::versions_and_deletes(&store).await;
    direct::batches(&store).await;
    direct::expiry(&store).await;
    direct::queries(&store).await;
    direct::concurrent_claims(Arc::new(store.clone())).await;

    // Failures of the backend itself are Backend errors without secrets.
    let missing = DynamoStore::connect("no-such-table", Some(&moto.endpoint))
        .await
        .unwrap();
    match missing.get(Kind::Order, "x").await {
        Err(StoreError::Backend(msg)) => {
            assert!(msg.contains("ResourceNotFound"), "{msg}");
            assert!(!msg.contains("wxshop-local"), "{msg}");
        }
        other => panic!("expected a backend error, got {other:?}"),
    }
    assert_eq!(missing.backend(), "dynamodb");
}

mod direct {
    use super::*;

    pub async fn get_and_put(store: &DynamoStore) {
        assert_eq!(store.get(Kind::Order, "o1").await.unwrap(), None);
        let mut r = indexed(Kind::Order, "o1", "openid-1", "CREATED", 1_700_000_000_000);
        r.expires_at = Some(now() + 3600);
        store
            .write(vec![Write::put(r.clone(), Expect::Absent)])
            .await
            .unwrap();
        assert_eq!(store.get(Kind::Order, "o1").await.unwrap(), Some(r.clone()));
        // Same id, other kind: a different record.
        assert_eq!(store.get(Kind::Product, "o1").await.unwrap(), None);
        // Absent on a live record conflicts.
        assert_eq!(
            store
                .write(vec![Write::put(r.clone(), Expect::Absent)])
                .await,
            Err(StoreError::Conflict { index: 0 })
        );
        // Any overwrites, dropping attributes the new record lacks.
        let plain = rec(Kind::Order, "o1", 7);
        store
            .write(vec![Write::put(plain.clone(), Expect::Any)])
            .await
            .unwrap();
        assert_eq!(store.get(Kind::Order, "o1").await.unwrap(), Some(plain));
        // Ids with the separator and non-ASCII text survive.
        let odd = rec(Kind::Kv, "a#b/商品 ✓", 1);
        store
            .write(vec![Write::put(odd.clone(), Expect::Absent)])
            .await
            .unwrap();
        assert_eq!(store.get(Kind::Kv, "a#b/商品 ✓").await.unwrap(), Some(odd));
        // Empty batch is a no-op.
        store.write(vec![]).await.unwrap();
    }

    pub async fn versions_and_deletes(store: &DynamoStore) {
        let r1 = rec(Kind::AfterSale, "as1", 1);
        store
            .write(vec![Write::put(r1, Expect::Absent)])
            .await
            .unwrap();
        let r2 = rec(Kind::AfterSale, "as1", 2);
        store
            .write(vec![Write::put(r2.clone(), Expect::Version(1))])
            .await
            .unwrap();
        // A stale version conflicts and changes nothing.
        assert_eq!(
            store
                .write(vec![Write::put(
                    rec(Kind::AfterSale, "as1", 2),
                    Expect::Version(1)
                )])
                .await,
            Err(StoreError::Conflict { index: 0 })
        );
        // Version on a missing record conflicts.
        assert_eq!(
            store
                .write(vec![Write::put(
                    rec(Kind::AfterSale, "nope", 2),
                    Expect::Version(1)
                )])
                .await,
            Err(StoreError::Conflict { index: 0 })
        );
        assert_eq!(store.get(Kind::AfterSale, "as1").await.unwrap(), Some(r2));
        let del = |expect| Write::Delete {
            kind: Kind::AfterSale,
            id: "as1".into(),
            expect,
        };
        assert_eq!(
            store.write(vec![del(Expect::Version(1))]).await,
            Err(StoreError::Conflict { index: 0 })
        );
        assert_eq!(
            store.write(vec![del(Expect::Absent)]).await,
            Err(StoreError::Conflict { index: 0 })
        );
        store.write(vec![del(Expect::Version(2))]).await.unwrap();
        assert_eq!(store.get(Kind::AfterSale, "as1").await.unwrap(), None);
        // Deleting what is not there: fine unconditionally, a conflict on a version.
        store.write(vec![del(Expect::Any)]).await.unwrap();
        assert_eq!(
            store.write(vec![del(Expect::Version(2))]).await,
            Err(StoreError::Conflict { index: 0 })
        );
        // A lone check.
        let check = |id: &str, expect| Write::Check {
            kind: Kind::AfterSale,
            id: id.into(),
            expect,
        };
        store
            .write(vec![check("as1", Expect::Absent)])
            .await
            .unwrap();
        store.write(vec![check("as1", Expect::Any)]).await.unwrap();
        assert_eq!(
            store.write(vec![check("as1", Expect::Version(1))]).await,
            Err(StoreError::Conflict { index: 0 })
        );
    }

    pub async fn batches(store: &DynamoStore) {
        let order = rec(Kind::Order, "b-order", 1);
        store
            .write(vec![Write::put(order, Expect::Absent)])
            .await
            .unwrap();
        // Transition + outbox entry, atomically.
        let paid = rec(Kind::Order, "b-order", 2);
        let outbox = rec(Kind::Outbox, "b-order:pay", 1);
        store
            .write(vec![
                Write::put(paid.clone(), Expect::Version(1)),
                Write::put(outbox.clone(), Expect::Absent),
                Write::Check {
                    kind: Kind::Product,
                    id: "nothing".into(),
                    expect: Expect::Any,
                },
            ])
            .await
            .unwrap();
        assert_eq!(store.get(Kind::Order, "b-order").await.unwrap(), Some(paid));
        assert_eq!(
            store.get(Kind::Outbox, "b-order:pay").await.unwrap(),
            Some(outbox)
        );
        // The first failing condition is reported, by index; nothing is written.
        let res = store
            .write(vec![
                Write::put(rec(Kind::Event, "b-new", 1), Expect::Absent),
                Write::put(rec(Kind::Product, "b-prod", 1), Expect::Absent),
                Write::Check {
                    kind: Kind::Order,
                    id: "b-order".into(),
                    expect: Expect::Version(1),
                },
                Write::put(rec(Kind::Outbox, "b-order:pay", 1), Expect::Absent),
            ])
            .await;
        assert_eq!(res, Err(StoreError::Conflict { index: 2 }));
        assert_eq!(store.get(Kind::Event, "b-new").await.unwrap(), None);
        assert_eq!(store.get(Kind::Product, "b-prod").await.unwrap(), None);
        assert_eq!(
            store
                .get(Kind::Order, "b-order")
                .await
                .unwrap()
                .unwrap()
                .version,
            2
        );
        let res = store
            .write(vec![
                Write::Delete {
                    kind: Kind::Outbox,
                    id: "b-order:pay".into(),
                    expect: Expect::Version(1),
                },
                Write::put(rec(Kind::Order, "b-order", 3), Expect::Version(1)),
            ])
            .await;
        assert_eq!(res, Err(StoreError::Conflict { index: 1 }));
        assert!(store
            .get(Kind::Outbox, "b-order:pay")
            .await
            .unwrap()
            .is_some());
        // 100 writes is the limit.
        let many: Vec<Write> = (0..100)
            .map(|i| Write::put(rec(Kind::Event, &format!("many-{i}"), 1), Expect::Absent))
            .collect();
        store.write(many).await.unwrap();
        assert!(store.get(Kind::Event, "many-99").await.unwrap().is_some());
        let too_many: Vec<Write> = (0..101)
            .map(|i| Write::put(rec(Kind::Event, &format!("more-{i}"), 1), Expect::Any))
            .collect();
        assert_eq!(store.write(too_many).await, Err(StoreError::TooLarge(101)));
    }

    pub async fn expiry(store: &DynamoStore) {
        let mut old = rec(Kind::Idempotency, "idem-1", 4);
        old.expires_at = Some(now() - 10);
        old.owner = Some("o".into());
        old.status = Some("DONE".into());
        store
            .write(vec![Write::put(old, Expect::Any)])
            .await
            .unwrap();
        // Invisible to reads and queries...
        assert_eq!(store.get(Kind::Idempotency, "idem-1").await.unwrap(), None);
        let page = store
            .query(Query::new(Kind::Idempotency, Index::Owner("o".into())))
            .await
            .unwrap();
        assert!(page.records.is_empty() && page.next.is_none());
        // ...not there for a version condition...
        for write in [
            Write::put(rec(Kind::Idempotency, "idem-1", 5), Expect::Version(4)),
            Write::Delete {
                kind: Kind::Idempotency,
                id: "idem-1".into(),
                expect: Expect::Version(4),
            },
            Write::Check {
                kind: Kind::Idempotency,
                id: "idem-1".into(),
                expect: Expect::Version(4),
            },
        ] {
            assert_eq!(
                store.write(vec![write]).await,
                Err(StoreError::Conflict { index: 0 })
            );
        }
        // ...and absent for a create, alone or in a batch.
        store
            .write(vec![Write::Check {
                kind: Kind::Idempotency,
                id: "idem-1".into(),
                expect: Expect::Absent,
            }])
            .await
            .unwrap();
        let mut fresh = rec(Kind::Idempotency, "idem-1", 1);
        fresh.expires_at = Some(now() + 60);
        store
            .write(vec![
                Write::put(fresh.clone(), Expect::Absent),
                Write::put(rec(Kind::Kv, "idem-side", 1), Expect::Absent),
            ])
            .await
            .unwrap();
        assert_eq!(
            store.get(Kind::Idempotency, "idem-1").await.unwrap(),
            Some(fresh)
        );
    }

    pub async fn queries(store: &DynamoStore) {
        let records = [
            indexed(Kind::Order, "q-c", "alice", "PAID", 5),
            indexed(Kind::Order, "q-a", "alice", "PAID", 5),
            indexed(Kind::Order, "q-b", "alice", "CREATED", -3),
            indexed(Kind::Order, "q-d", "alice", "PAID", i64::MIN),
            indexed(Kind::Order, "q-e", "alice", "PAID", i64::MAX),
            indexed(Kind::Order, "q-f", "alice", "PAID", 0),
            indexed(Kind::Order, "q-g", "bob", "PAID", 1),
            // Same owner, other kind: never mixed in.
            indexed(Kind::AfterSale, "q-h", "alice", "PAID", 2),
        ];
        let mut expired = indexed(Kind::Order, "q-x", "alice", "PAID", 1);
        expired.expires_at = Some(now() - 1);
        let mut writes: Vec<Write> = records
            .iter()
            .map(|r| Write::put(r.clone(), Expect::Absent))
            .collect();
        writes.push(Write::put(expired, Expect::Any));
        store.write(writes).await.unwrap();

        let q = |index: Index| Query::new(Kind::Order, index);
        let alice = store.query(q(Index::Owner("alice".into()))).await.unwrap();
        assert_eq!(
            ids(&alice.records),
            ["q-d", "q-b", "q-f", "q-a", "q-c", "q-e"]
        );
        assert_eq!(alice.next, None);
        assert_eq!(alice.records[1], records[2]);

        let mut desc = q(Index::Status("PAID".into()));
        desc.descending = true;
        let paid = store.query(desc).await.unwrap();
        assert_eq!(
            ids(&paid.records),
            ["q-e", "q-c", "q-a", "q-g", "q-f", "q-d"]
        );

        // Inclusive bounds, ties at both ends included.
        let mut bounded = q(Index::Owner("alice".into()));
        bounded.sort_min = Some(-3);
        bounded.sort_max = Some(5);
        let page = store.query(bounded.clone()).await.unwrap();
        assert_eq!(ids(&page.records), ["q-b", "q-f", "q-a", "q-c"]);
        bounded.sort_max = None;
        bounded.sort_min = Some(0);
        let page = store.query(bounded.clone()).await.unwrap();
        assert_eq!(ids(&page.records), ["q-f", "q-a", "q-c", "q-e"]);
        bounded.sort_min = None;
        bounded.sort_max = Some(0);
        bounded.descending = true;
        let page = store.query(bounded).await.unwrap();
        assert_eq!(ids(&page.records), ["q-f", "q-b", "q-d"]);

        // Pages of 2 through the cursor, the expired record skipped, ties split across pages.
        for descending in [false, true] {
            let mut query = q(Index::Status("PAID".into()));
            query.limit = 2;
            query.descending = descending;
            let mut seen = Vec::new();
            let mut pages = 0;
            loop {
                let page = store.query(query.clone()).await.unwrap();
                pages += 1;
                assert!(page.records.len() <= 2);
                seen.extend(page.records.iter().map(|r| r.id.clone()));
                match page.next {
                    Some(c) => query.cursor = Some(c),
                    None => break,
                }
            }
            let mut want = vec!["q-d", "q-f", "q-g", "q-a", "q-c", "q-e"];
            if descending {
                want.reverse();
            }
            assert_eq!(seen, want);
            assert_eq!(pages, 3);
        }

        // Limit 1 with the next live record behind an expired one.
        let mut one = q(Index::Status("PAID".into()));
        one.sort_min = Some(0);
        one.limit = 1;
        let page = store.query(one.clone()).await.unwrap();
        assert_eq!(ids(&page.records), ["q-f"]);
        one.cursor = page.next;
        let page = store.query(one).await.unwrap();
        assert_eq!(ids(&page.records), ["q-g"]);

        assert!(store
            .query(q(Index::Owner("nobody".into())))
            .await
            .unwrap()
            .records
            .is_empty());

        // Cursors are opaque and bound to their query.
        let mut bad = q(Index::Owner("alice".into()));
        bad.cursor = Some("garbage!".into());
        assert_eq!(store.query(bad).await, Err(StoreError::BadCursor));
        let mut first = q(Index::Owner("alice".into()));
        first.limit = 1;
        let cursor = store.query(first).await.unwrap().next.unwrap();
        let mut other = q(Index::Owner("bob".into()));
        other.cursor = Some(cursor);
        assert_eq!(store.query(other).await, Err(StoreError::BadCursor));

        // A status change moves the record between status partitions.
        let mut shipped = records[0].clone();
        shipped.version = 2;
        shipped.status = Some("SHIPPED".into());
        store
            .write(vec![Write::put(shipped, Expect::Version(1))])
            .await
            .unwrap();
        let page = store
            .query(q(Index::Status("SHIPPED".into())))
            .await
            .unwrap();
        assert_eq!(ids(&page.records), ["q-c"]);
        let page = store.query(q(Index::Status("PAID".into()))).await.unwrap();
        assert!(!ids(&page.records).contains(&"q-c"));
    }

    /// Concurrent creates of one key: exactly one wins, the others see a conflict.
    pub async fn concurrent_claims(store: Arc<DynamoStore>) {
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .write(vec![Write::put(
                            rec(Kind::Outbox, "claim", i),
                            Expect::Absent,
                        )])
                        .await
                })
            })
            .collect();
        let mut wins = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(()) => wins += 1,
                Err(e) => assert_eq!(e, StoreError::Conflict { index: 0 }),
            }
        }
        assert_eq!(wins, 1);
    }
}

/// The status index (and the products' owner index) is spread over `SHARDS` partitions, so
/// that no status takes every write of a flash sale in one GSI partition (~1,000 writes/s,
/// and a throttled GSI throttles the table); listings merge the shards and the partition of
/// items written before, in exact (`sort`, `id`) order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_listings_are_sharded_against_moto() {
    let moto = start_moto();
    let store = new_store(&moto, "shards").await;
    sharding::spread(&store).await;
    sharding::pages_with_ties(&store).await;
    sharding::legacy_entries(&store).await;
    sharding::cursors(&store).await;
}

/// Entries written before the sharding are moved to their shard by the schedule's step,
/// which never overwrites a write made meanwhile; once the legacy partitions have stayed empty
/// long enough the mark is written and listings (in processes started after it) stop reading
/// them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_legacy_index_is_migrated_and_then_no_longer_read_against_moto() {
    let moto = start_moto();
    let store = new_store(&moto, "legacy").await;
    sharding::migration(&moto, &store).await;
}

mod sharding {
    use super::*;
    use aws_sdk_dynamodb::types::AttributeValue;
    use std::collections::{BTreeSet, HashMap};
    use wxshop::store::dynamo::{shard_of, SHARDS};

    type Item = HashMap<String, AttributeValue>;

    fn string(item: &Item, name: &str) -> Option<String> {
        match item.get(name) {
            Some(AttributeValue::S(v)) => Some(v.clone()),
            _ => None,
        }
    }

    /// Every item of the table as stored (one `Scan`; the tables here are small).
    async fn raw_items(store: &DynamoStore) -> Vec<Item> {
        let out = store
            .client()
            .scan()
            .table_name(store.table())
            .send()
            .await
            .unwrap();
        assert!(out.last_evaluated_key().is_none(), "one page");
        out.items().to_vec()
    }

    async fn raw_item(store: &DynamoStore, kind: Kind, id: &str) -> Item {
        let out = store
            .client()
            .get_item()
            .table_name(store.table())
            .key("pk", AttributeValue::S(format!("{}#{id}", kind.as_str())))
            .consistent_read(true)
            .send()
            .await
            .unwrap();
        out.item().cloned().unwrap()
    }

    /// Every record of `query`'s listing, page by page; and how many pages it took.
    async fn all_pages(store: &DynamoStore, mut query: Query) -> (Vec<String>, usize) {
        let mut seen = Vec::new();
        let mut pages = 0;
        loop {
            let page = store.query(query.clone()).await.unwrap();
            pages += 1;
            assert!(page.records.len() <= query.limit);
            seen.extend(page.records.iter().map(|r| r.id.clone()));
            match page.next {
                Some(c) => query.cursor = Some(c),
                None => return (seen, pages),
            }
        }
    }

    /// (a) Many records of one status land in several index partitions, each the record's
    /// shard of that status; the products' shared owner too; a buyer's orders stay in one.
    pub async fn spread(store: &DynamoStore) {
        let mut writes: Vec<Write> = (0..40)
            .map(|i| {
                let r = indexed(Kind::Order, &format!("sp-{i:02}"), "buyer-1", "PREPAID", i);
                Write::put(r, Expect::Absent)
            })
            .collect();
        for i in 0..8 {
            let r = indexed(Kind::Product, &format!("sp-p{i}"), "all", "APPROVED", 0);
            writes.push(Write::put(r, Expect::Absent));
        }
        store.write(writes).await.unwrap();

        let items = raw_items(store).await;
        let mut status_partitions = BTreeSet::new();
        let mut product_partitions = BTreeSet::new();
        for item in &items {
            let id = string(item, "id").unwrap();
            let gsi1 = string(item, "gsi1pk").unwrap();
            let gsi2 = string(item, "gsi2pk").unwrap();
            if id.starts_with("sp-p") {
                assert_eq!(gsi1, format!("product#all#{}", shard_of(&id)));
                assert_eq!(gsi2, format!("product#APPROVED#{}", shard_of(&id)));
                product_partitions.insert(gsi1);
            } else if id.starts_with("sp-") {
                assert_eq!(gsi2, format!("order#PREPAID#{}", shard_of(&id)));
                assert_eq!(gsi1, "order#buyer-1", "a buyer's orders are not sharded");
                status_partitions.insert(gsi2);
            }
        }
        assert!(
            status_partitions.len() >= SHARDS as usize - 1,
            "40 orders of one status in {} partitions: {status_partitions:?}",
            status_partitions.len()
        );
        assert!(product_partitions.len() > 1, "{product_partitions:?}");

        // Read back whole, in order, through both indexes.
        let (ids, _) = all_pages(
            store,
            Query::new(Kind::Order, Index::Status("PREPAID".into())),
        )
        .await;
        let want: Vec<String> = (0..40).map(|i| format!("sp-{i:02}")).collect();
        assert_eq!(ids, want);
        let (ids, _) =
            all_pages(store, Query::new(Kind::Product, Index::Owner("all".into()))).await;
        assert_eq!(ids, (0..8).map(|i| format!("sp-p{i}")).collect::<Vec<_>>());
        let got = store.get(Kind::Order, "sp-07").await.unwrap().unwrap();
        assert_eq!(got.status.as_deref(), Some("PREPAID"));
        assert_eq!(got.owner.as_deref(), Some("buyer-1"));
    }

    /// (b) Paging a sharded status with many ties on `sort`, small pages, both directions,
    /// with and without bounds: every record once, in exact (`sort`, `id`) order, expired and
    /// other-status records left out.
    pub async fn pages_with_ties(store: &DynamoStore) {
        let mut records: Vec<Record> = (0..30)
            .map(|i| {
                // Ids not in sort order, five records per `sort`.
                let id = format!("tie-{:02}", (i * 7) % 30);
                indexed(
                    Kind::Outbox,
                    &id,
                    "subject",
                    "PENDING",
                    i64::from(i % 6) - 2,
                )
            })
            .collect();
        let mut expired = indexed(Kind::Outbox, "tie-exp", "subject", "PENDING", 0);
        expired.expires_at = Some(now() - 1);
        let other = indexed(Kind::Outbox, "tie-dead", "subject", "DEAD", 0);
        let writes: Vec<Write> = records
            .iter()
            .chain([&expired, &other])
            .map(|r| Write::put(r.clone(), Expect::Any))
            .collect();
        store.write(writes).await.unwrap();
        records.sort_by(|a, b| (a.sort, &a.id).cmp(&(b.sort, &b.id)));

        for descending in [false, true] {
            let mut query = Query::new(Kind::Outbox, Index::Status("PENDING".into()));
            query.limit = 4;
            query.descending = descending;
            let (seen, pages) = all_pages(store, query.clone()).await;
            let mut want: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
            if descending {
                want.reverse();
            }
            assert_eq!(seen, want, "descending: {descending}");
            assert_eq!(pages, 8, "30 records in pages of 4");

            // Bounds (inclusive, ties at both ends) with the cursor inside them.
            query.sort_min = Some(-1);
            query.sort_max = Some(1);
            query.limit = 3;
            let (seen, _) = all_pages(store, query).await;
            let mut want: Vec<String> = records
                .iter()
                .filter(|r| (-1..=1).contains(&r.sort))
                .map(|r| r.id.clone())
                .collect();
            if descending {
                want.reverse();
            }
            assert_eq!(seen.len(), 15);
            assert_eq!(seen, want, "bounded, descending: {descending}");
        }
    }

    /// (c) An item written before the index was sharded (its key without a shard) is still
    /// listed, in its place; written again, it moves to its shard.
    pub async fn legacy_entries(store: &DynamoStore) {
        let fresh: Vec<Record> = ["lg-a", "lg-c", "lg-e"]
            .iter()
            .map(|id| indexed(Kind::AfterSale, id, "order-1", "REFUNDING", 10))
            .collect();
        let writes = fresh
            .iter()
            .map(|r| Write::put(r.clone(), Expect::Absent))
            .collect();
        store.write(writes).await.unwrap();
        // As the code before sharding wrote it.
        let mut legacy = indexed(Kind::AfterSale, "lg-b", "order-1", "REFUNDING", 10);
        let sk = |sort: i64, id: &str| format!("{:020}#{id}", (sort as u64) ^ (1u64 << 63));
        let s = |v: &str| AttributeValue::S(v.to_owned());
        store
            .client()
            .put_item()
            .table_name(store.table())
            .item("pk", s("aftersale#lg-b"))
            .item("kind", s("aftersale"))
            .item("id", s("lg-b"))
            .item("v", AttributeValue::N("1".into()))
            .item("body", s(&legacy.body))
            .item("sort", AttributeValue::N("10".into()))
            .item("gsi1pk", s("aftersale#order-1"))
            .item("gsi1sk", s(&sk(10, "lg-b")))
            .item("gsi2pk", s("aftersale#REFUNDING"))
            .item("gsi2sk", s(&sk(10, "lg-b")))
            .send()
            .await
            .unwrap();
        assert_eq!(
            store.get(Kind::AfterSale, "lg-b").await.unwrap(),
            Some(legacy.clone())
        );

        for descending in [false, true] {
            let mut query = Query::new(Kind::AfterSale, Index::Status("REFUNDING".into()));
            query.limit = 1;
            query.descending = descending;
            let (seen, _) = all_pages(store, query).await;
            let mut want = ["lg-a", "lg-b", "lg-c", "lg-e"];
            if descending {
                want.reverse();
            }
            assert_eq!(seen, want, "descending: {descending}");
        }

        legacy.version = 2;
        store
            .write(vec![Write::put(legacy.clone(), Expect::Version(1))])
            .await
            .unwrap();
        let item = raw_item(store, Kind::AfterSale, "lg-b").await;
        assert_eq!(
            string(&item, "gsi2pk"),
            Some(format!("aftersale#REFUNDING#{}", shard_of("lg-b")))
        );
        let (seen, _) = all_pages(
            store,
            Query::new(Kind::AfterSale, Index::Status("REFUNDING".into())),
        )
        .await;
        assert_eq!(seen, ["lg-a", "lg-b", "lg-c", "lg-e"], "listed once, moved");
        assert_eq!(
            store.get(Kind::AfterSale, "lg-b").await.unwrap(),
            Some(legacy)
        );
    }

    /// (d) A cursor belongs to its listing: another status, the other index, another kind
    /// refuse it.
    pub async fn cursors(store: &DynamoStore) {
        let mut first = Query::new(Kind::Order, Index::Status("PREPAID".into()));
        first.limit = 1;
        let cursor = store.query(first.clone()).await.unwrap().next;
        assert!(cursor.is_some());
        for other in [
            Query::new(Kind::Order, Index::Status("PAID".into())),
            Query::new(Kind::Order, Index::Owner("PREPAID".into())),
            Query::new(Kind::AfterSale, Index::Status("PREPAID".into())),
        ] {
            let mut other = other;
            other.cursor = cursor.clone();
            assert_eq!(
                store.query(other.clone()).await,
                Err(StoreError::BadCursor),
                "{other:?}"
            );
        }
        first.cursor = cursor;
        let page = store.query(first).await.unwrap();
        assert_eq!(ids(&page.records), ["sp-01"]);
    }

    /// An item as a release from before the sharding wrote it: index keys without a shard
    /// (`"{kind}#{owner}"`, `"{kind}#{status}"`), and `wt` only if given.
    fn legacy_item(r: &Record, wt: Option<&str>) -> Item {
        let sk = format!("{:020}#{}", (r.sort as u64) ^ (1u64 << 63), r.id);
        let s = |v: &str| AttributeValue::S(v.to_owned());
        let kind = r.kind.as_str();
        let mut item = HashMap::from([
            ("pk".to_owned(), s(&format!("{kind}#{}", r.id))),
            ("kind".to_owned(), s(kind)),
            ("id".to_owned(), s(&r.id)),
            ("v".to_owned(), AttributeValue::N(r.version.to_string())),
            ("body".to_owned(), s(&r.body)),
            ("sort".to_owned(), AttributeValue::N(r.sort.to_string())),
        ]);
        if let Some(owner) = &r.owner {
            item.insert("gsi1pk".into(), s(&format!("{kind}#{owner}")));
            item.insert("gsi1sk".into(), s(&sk));
        }
        if let Some(status) = &r.status {
            item.insert("gsi2pk".into(), s(&format!("{kind}#{status}")));
            item.insert("gsi2sk".into(), s(&sk));
        }
        if let Some(t) = r.expires_at {
            item.insert("ttl".into(), AttributeValue::N(t.to_string()));
        }
        if let Some(wt) = wt {
            item.insert("wt".into(), s(wt));
        }
        item
    }

    async fn put_raw(store: &DynamoStore, item: Item) {
        store
            .client()
            .put_item()
            .table_name(store.table())
            .set_item(Some(item))
            .send()
            .await
            .unwrap();
    }

    /// The ids of the entries in one index partition, as stored (no store logic).
    async fn partition_ids(store: &DynamoStore, index: &str, partition: &str) -> Vec<String> {
        let out = store
            .client()
            .query()
            .table_name(store.table())
            .index_name(index)
            .key_condition_expression("#pk = :pk")
            .expression_attribute_names("#pk", if index == "gsi1" { "gsi1pk" } else { "gsi2pk" })
            .expression_attribute_values(":pk", AttributeValue::S(partition.to_owned()))
            .send()
            .await
            .unwrap();
        out.items().iter().filter_map(|i| string(i, "id")).collect()
    }

    /// The partitions the `Query` requests sent through `proxy` named.
    fn queried(proxy: &super::lossy::Proxy) -> Vec<String> {
        proxy
            .sent("Query")
            .iter()
            .filter_map(|b| {
                b["ExpressionAttributeValues"][":pk"]["S"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect()
    }

    /// (e) The migration of legacy entries, and the end of the legacy reads.
    pub async fn migration(moto: &super::Moto, direct: &DynamoStore) {
        // The mark's key (`docs/STORAGE.md`, "Migration").
        const LEGACY_INDEX_MARK: &str = "store/legacy_index_migrated";
        use wxshop::store::repo::index_listings;
        use wxshop::time::Deadline;

        // Orders in an end state written before the sharding (more than a page of the
        // migration), one of them expired; others written since; products with both index
        // keys unsharded (and a write token); dead outbox entries.
        let completed: Vec<Record> = (0..130)
            .map(|i| {
                indexed(
                    Kind::Order,
                    &format!("mg-{i:03}"),
                    "buyer-m",
                    "COMPLETED",
                    i,
                )
            })
            .collect();
        for (i, r) in completed.iter().enumerate() {
            if i % 10 == 3 {
                direct
                    .write(vec![Write::put(r.clone(), Expect::Absent)])
                    .await
                    .unwrap();
            } else {
                put_raw(direct, legacy_item(r, None)).await;
            }
        }
        let mut expired = indexed(Kind::Order, "mg-expired", "buyer-m", "COMPLETED", 5);
        expired.expires_at = Some(now() - 10);
        put_raw(direct, legacy_item(&expired, None)).await;
        let products: Vec<Record> = (0..5)
            .map(|i| indexed(Kind::Product, &format!("mg-p{i}"), "all", "APPROVED", 0))
            .collect();
        for r in &products {
            put_raw(direct, legacy_item(r, Some("oldtoken0123456789ab"))).await;
        }
        let dead: Vec<Record> = (0..3)
            .map(|i| {
                indexed(
                    Kind::Outbox,
                    &format!("mg-d{i}"),
                    "subject-m",
                    "dead",
                    100 + i,
                )
            })
            .collect();
        for r in &dead {
            put_raw(direct, legacy_item(r, None)).await;
        }
        let want_orders: Vec<String> = completed.iter().map(|r| r.id.clone()).collect();
        let want_products: Vec<String> = products.iter().map(|r| r.id.clone()).collect();
        let completed_q = Query::new(Kind::Order, Index::Status("COMPLETED".into()));
        let products_q = Query::new(Kind::Product, Index::Owner("all".into()));
        let dead_q = Query::new(Kind::Outbox, Index::Status("dead".into()));

        // A process that started before the mark (its listing reads the mark: none yet).
        let proxy = super::lossy::Proxy::start(&moto.endpoint).await;
        let before = DynamoStore::connect(direct.table(), Some(&proxy.endpoint))
            .await
            .unwrap();
        let mut page_of_10 = completed_q.clone();
        page_of_10.limit = 10;
        assert_eq!(all_pages(&before, page_of_10.clone()).await.0, want_orders);

        // Between the migration's read of the COMPLETED partition and its moves, a release from
        // before the sharding (still running during the deploy) writes mg-000 again: version 2,
        // its legacy key. The move of version 1 must not overwrite it.
        let mut rewritten = completed[0].clone();
        rewritten.version = 2;
        rewritten.body = "{\"written\":\"by an old binary meanwhile\"}".into();
        let item: serde_json::Map<String, serde_json::Value> =
            legacy_item(&rewritten, Some("oldbinary0123456789a"))
                .into_iter()
                .map(|(k, v)| {
                    let v = match v {
                        AttributeValue::S(s) => serde_json::json!({ "S": s }),
                        AttributeValue::N(n) => serde_json::json!({ "N": n }),
                        other => panic!("{other:?}"),
                    };
                    (k, v)
                })
                .collect();
        proxy.after_query_of(
            "order#COMPLETED",
            "PutItem",
            serde_json::json!({"TableName": direct.table(), "Item": item}),
        );

        let listings = index_listings();
        let step = |at_min: i64| {
            let listings = listings.clone();
            let before = before.clone();
            async move {
                let t0 = 1_800_000_000_000i64;
                before
                    .migrate_index(
                        &listings,
                        t0 + at_min * 60_000,
                        Deadline::after(Duration::from_secs(60)),
                    )
                    .await
                    .unwrap()
            }
        };

        // The first pass moves everything it read but the entry written meanwhile.
        let (first, finished) = step(0).await;
        assert!(finished && !first.migrated, "{first:?}");
        assert_eq!(first.passes, 1, "{first:?}");
        let legacy_orders = 130 - 13;
        assert_eq!(first.found, legacy_orders + 5 + 3, "{first:?}");
        assert_eq!(first.moved, legacy_orders - 1 + 5 + 3, "{first:?}");
        let kept = direct.get(Kind::Order, "mg-000").await.unwrap().unwrap();
        assert_eq!(
            kept, rewritten,
            "the write made meanwhile is not overwritten"
        );
        assert_eq!(
            partition_ids(direct, "gsi2", "order#COMPLETED").await,
            ["mg-000", "mg-expired"]
        );
        // The next pass moves it.
        let (second, _) = step(5).await;
        assert_eq!(
            (second.found, second.moved, second.migrated),
            (1, 1, false),
            "{second:?}"
        );
        let raw = raw_item(direct, Kind::Order, "mg-000").await;
        assert_eq!(
            string(&raw, "gsi2pk"),
            Some(format!("order#COMPLETED#{}", shard_of("mg-000")))
        );
        assert_eq!(
            direct.get(Kind::Order, "mg-000").await.unwrap(),
            Some(rewritten.clone())
        );

        // Empty from now on; the mark needs empty passes 30 minutes apart, one after another.
        let (clean, _) = step(10).await;
        assert_eq!((clean.found, clean.passes, clean.migrated), (0, 1, false));
        // 20 minutes without a pass (the schedule, maybe this release, was not running):
        // the streak starts again, although 30 minutes have gone by since the first empty one.
        assert!(!step(30).await.0.migrated);
        assert!(!step(45).await.0.migrated);
        let (done, _) = step(60).await;
        assert!(done.migrated, "{done:?}");
        assert!(step(65).await.0.migrated, "stays done");

        // Every legacy partition is empty (but for the expired entry TTL deletes), the mark
        // names the listings.
        assert_eq!(
            partition_ids(direct, "gsi2", "order#COMPLETED").await,
            ["mg-expired"]
        );
        assert!(partition_ids(direct, "gsi2", "product#APPROVED")
            .await
            .is_empty());
        assert!(partition_ids(direct, "gsi1", "product#all")
            .await
            .is_empty());
        assert!(partition_ids(direct, "gsi2", "outbox#dead")
            .await
            .is_empty());
        let mark = wxshop::store::kv::get(direct, LEGACY_INDEX_MARK)
            .await
            .unwrap()
            .unwrap();
        let named: Vec<String> = serde_json::from_str(&mark.value).unwrap();
        for want in [
            "gsi2:order#COMPLETED",
            "gsi1:product#all",
            "gsi2:outbox#dead",
            "gsi2:product#APPROVED",
        ] {
            assert!(named.iter().any(|n| n == want), "{want} in {named:?}");
        }

        // A process started after the mark lists everything, in order, without reading the
        // legacy partitions.
        let proxy_after = super::lossy::Proxy::start(&moto.endpoint).await;
        let after = DynamoStore::connect(direct.table(), Some(&proxy_after.endpoint))
            .await
            .unwrap();
        assert_eq!(all_pages(&after, page_of_10.clone()).await.0, want_orders);
        assert_eq!(all_pages(&after, products_q.clone()).await.0, want_products);
        assert_eq!(
            all_pages(&after, dead_q.clone()).await.0,
            ["mg-d0", "mg-d1", "mg-d2"]
        );
        let partitions = queried(&proxy_after);
        assert!(partitions.contains(&format!("order#COMPLETED#{}", shard_of("mg-001"))));
        for legacy in ["order#COMPLETED", "product#all", "outbox#dead"] {
            assert!(
                !partitions.iter().any(|p| p == legacy),
                "{legacy} read: {partitions:?}"
            );
        }
        // The documented trade-off: an entry written with a legacy key after the mark (only a
        // release from before the sharding does that) is not listed by such a process; one
        // started before the mark still reads the legacy partitions.
        let late = indexed(Kind::Order, "mg-late", "buyer-m", "COMPLETED", 500);
        put_raw(direct, legacy_item(&late, None)).await;
        let listed = all_pages(&after, completed_q.clone()).await.0;
        assert!(!listed.iter().any(|id| id == "mg-late"));
        let listed = all_pages(&before, completed_q.clone()).await.0;
        assert_eq!(listed.last().map(String::as_str), Some("mg-late"));
    }
}

/// A proxy in front of moto that can lose answers: it forwards every request, and for the
/// next `n` requests of a chosen operation it throws moto's answer away and replies HTTP 500
/// instead — as when DynamoDB applied a write and its answer never arrived. The SDK retries
/// a 500 (standard retry mode, up to 3 attempts). It keeps every request body it forwarded.
mod lossy {
    use axum::body::Body;
    use axum::extract::{Request, State};
    use axum::response::Response;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Log {
        lose: HashMap<String, usize>,
        sent: Vec<(String, serde_json::Value)>,
        /// After the next `Query` of this index partition is answered upstream and before
        /// its answer is passed on: this request (operation, body), sent upstream.
        inject: Option<(String, String, serde_json::Value)>,
    }

    #[derive(Clone)]
    struct Shared {
        log: Arc<Mutex<Log>>,
        http: reqwest::Client,
        upstream: String,
    }

    pub struct Proxy {
        pub endpoint: String,
        log: Arc<Mutex<Log>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Proxy {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl Proxy {
        pub async fn start(upstream: &str) -> Proxy {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let endpoint = format!("http://{}", listener.local_addr().unwrap());
            let log = Arc::new(Mutex::new(Log::default()));
            let shared = Shared {
                log: log.clone(),
                http: reqwest::Client::new(),
                upstream: upstream.to_owned(),
            };
            let app = axum::Router::new().fallback(forward).with_state(shared);
            let task = tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            Proxy {
                endpoint,
                log,
                task,
            }
        }

        /// Loses the answers of the next `n` requests of `operation` (e.g. `PutItem`).
        pub fn lose(&self, operation: &str, n: usize) {
            self.log
                .lock()
                .unwrap()
                .lose
                .insert(operation.to_owned(), n);
        }

        /// Once the next `Query` of index partition `partition` has been answered (and
        /// before its answer goes on), sends `operation` with `body` upstream: a write made
        /// between a caller's read and its write.
        pub fn after_query_of(&self, partition: &str, operation: &str, body: serde_json::Value) {
            self.log.lock().unwrap().inject =
                Some((partition.to_owned(), operation.to_owned(), body));
        }

        /// The bodies of the `operation` requests forwarded so far, oldest first.
        pub fn sent(&self, operation: &str) -> Vec<serde_json::Value> {
            self.log
                .lock()
                .unwrap()
                .sent
                .iter()
                .filter(|(op, _)| op == operation)
                .map(|(_, body)| body.clone())
                .collect()
        }
    }

    async fn forward(State(st): State<Shared>, req: Request) -> Response {
        let (parts, body) = req.into_parts();
        let body = axum::body::to_bytes(body, 16 << 20).await.unwrap();
        let operation = parts
            .headers
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .and_then(|t| t.rsplit('.').next())
            .unwrap_or("")
            .to_owned();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut upstream = st
            .http
            .request(parts.method.clone(), format!("{}{path}", st.upstream));
        for (name, value) in &parts.headers {
            if name != http::header::HOST && name != http::header::CONTENT_LENGTH {
                upstream = upstream.header(name, value);
            }
        }
        let answer = upstream.body(body.clone()).send().await.unwrap();
        let status = answer.status();
        let content_type = answer.headers().get(http::header::CONTENT_TYPE).cloned();
        let answer = answer.bytes().await.unwrap();
        let injected = {
            let mut log = st.log.lock().unwrap();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let partition = json["ExpressionAttributeValues"][":pk"]["S"].as_str();
            match &log.inject {
                Some((p, _, _)) if operation == "Query" && Some(p.as_str()) == partition => {
                    log.inject.take()
                }
                _ => None,
            }
        };
        if let Some((_, op, json)) = injected {
            // The trigger's headers (moto takes the region from its signature, which it
            // does not check), another operation.
            let mut request = st.http.post(format!("{}/", st.upstream));
            for (name, value) in &parts.headers {
                if name != http::header::HOST
                    && name != http::header::CONTENT_LENGTH
                    && name.as_str() != "x-amz-target"
                {
                    request = request.header(name, value);
                }
            }
            let out = request
                .header("x-amz-target", format!("DynamoDB_20120810.{op}"))
                .body(json.to_string())
                .send()
                .await
                .unwrap();
            let status = out.status();
            let text = out.text().await.unwrap();
            assert!(status.is_success(), "injected {op}: {status} {text}");
        }
        let lost = {
            let mut log = st.log.lock().unwrap();
            log.sent.push((
                operation.clone(),
                serde_json::from_slice(&body).unwrap_or_default(),
            ));
            match log.lose.get_mut(&operation) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    true
                }
                _ => false,
            }
        };
        if lost {
            let mut r = Response::new(Body::from(
                r#"{"__type":"com.amazonaws.dynamodb.v20120810#InternalServerError","message":"the answer was lost (test proxy)"}"#,
            ));
            *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/x-amz-json-1.0"),
            );
            return r;
        }
        let mut resp = Response::new(Body::from(answer));
        *resp.status_mut() = status;
        if let Some(ct) = content_type {
            resp.headers_mut().insert(http::header::CONTENT_TYPE, ct);
        }
        resp
    }
}

/// A write DynamoDB applied whose answer was lost: the SDK retries it, and the retry's
/// condition fails on our own write. That is success, not `Conflict` (which told a claim's
/// owner "in progress" and hid a lease from the worker that took it) — while a real conflict
/// whose answer was lost stays a conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_answer_was_lost_is_not_reported_as_a_conflict() {
    use wxshop::store::idempotency::{self, Claim};
    let moto = start_moto();
    let direct = new_store(&moto, "lossy").await;
    let proxy = lossy::Proxy::start(&moto.endpoint).await;
    let store = DynamoStore::connect(direct.table(), Some(&proxy.endpoint))
        .await
        .unwrap();
    let conflict = Err(StoreError::Conflict { index: 0 });

    // A put creating a record.
    proxy.lose("PutItem", 1);
    let r1 = rec(Kind::Order, "lost-1", 1);
    assert_eq!(
        store
            .write(vec![Write::put(r1.clone(), Expect::Absent)])
            .await,
        Ok(())
    );
    assert_eq!(proxy.sent("PutItem").len(), 2, "the SDK sent it again");
    assert_eq!(store.get(Kind::Order, "lost-1").await.unwrap(), Some(r1));
    // A versioned update.
    proxy.lose("PutItem", 1);
    let r2 = rec(Kind::Order, "lost-1", 2);
    assert_eq!(
        store
            .write(vec![Write::put(r2.clone(), Expect::Version(1))])
            .await,
        Ok(())
    );
    // A real conflict whose answer was lost: still a conflict, nothing written.
    proxy.lose("PutItem", 1);
    let stale = Record::new(Kind::Order, "lost-1", "{\"stale\":true}".into());
    assert_eq!(
        store
            .write(vec![Write::put(stale, Expect::Version(1))])
            .await,
        conflict
    );
    assert_eq!(store.get(Kind::Order, "lost-1").await.unwrap(), Some(r2));
    // A versioned delete.
    let delete = || {
        vec![Write::Delete {
            kind: Kind::Order,
            id: "lost-1".into(),
            expect: Expect::Version(2),
        }]
    };
    proxy.lose("DeleteItem", 1);
    assert_eq!(store.write(delete()).await, Ok(()));
    assert_eq!(store.get(Kind::Order, "lost-1").await.unwrap(), None);
    // Answered at once, deleting what is gone is a conflict, as on every backend.
    assert_eq!(store.write(delete()).await, conflict);

    // A transaction. The SDK sends the same ClientRequestToken on its retry (in AWS the
    // retry of an applied transaction then succeeds without writing); moto ignores the token
    // and cancels the retry on our own items, which carry our write token.
    proxy.lose("TransactWriteItems", 1);
    let a = rec(Kind::Order, "lost-tx-a", 1);
    let b = rec(Kind::Outbox, "lost-tx-b", 1);
    assert_eq!(
        store
            .write(vec![
                Write::put(a.clone(), Expect::Absent),
                Write::put(b.clone(), Expect::Absent),
            ])
            .await,
        Ok(())
    );
    let tokens: Vec<String> = proxy
        .sent("TransactWriteItems")
        .iter()
        .map(|body| body["ClientRequestToken"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(tokens.len(), 2, "{tokens:?}");
    assert!(
        !tokens[0].is_empty() && tokens[0] == tokens[1],
        "one token for both attempts: {tokens:?}"
    );
    assert_eq!(store.get(Kind::Order, "lost-tx-a").await.unwrap(), Some(a));
    assert_eq!(store.get(Kind::Outbox, "lost-tx-b").await.unwrap(), Some(b));
    // A transaction that really conflicts, answer lost: still a conflict.
    proxy.lose("TransactWriteItems", 1);
    assert_eq!(
        store
            .write(vec![
                Write::put(rec(Kind::Order, "lost-tx-c", 1), Expect::Absent),
                Write::put(rec(Kind::Outbox, "lost-tx-b", 1), Expect::Absent),
            ])
            .await,
        Err(StoreError::Conflict { index: 1 })
    );
    assert_eq!(store.get(Kind::Order, "lost-tx-c").await.unwrap(), None);

    // What it meant upstairs: an idempotency claim whose answer was lost is its caller's
    // (it used to answer the owner "in progress"), and so is an outbox lease.
    let now_ms = chrono::Utc::now().timestamp_millis();
    proxy.lose("PutItem", 1);
    let hash = idempotency::payload_hash(b"cart");
    assert_eq!(
        idempotency::claim(&store, "lost-claim", &hash, "ref-1", now_ms, 30_000, 3600)
            .await
            .unwrap(),
        Claim::New {
            reference: "ref-1".into()
        }
    );
    let entry = wxshop::outbox::OutboxEntry::new(
        wxshop::outbox::Task::OrderPay {
            out_trade_no: wxshop::domain::OutTradeNo::parse("WX20261205120000abcdefghijkl")
                .unwrap(),
        },
        now_ms,
    );
    wxshop::outbox::enqueue(&store, &entry).await.unwrap();
    proxy.lose("PutItem", 1);
    let leased = wxshop::outbox::claim_one(&store, &entry.id, now_ms, 60_000)
        .await
        .unwrap();
    assert!(leased.is_some(), "the lease is the worker's");
}
