//! The SQLite backend against the shared conformance suite (in memory and on a file), plus
//! what only a file can show: data survives reopening, and every acknowledged write survives
//! the process being SIGKILLed mid-stream.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wxshop::store::sqlite::SqliteStore;
use wxshop::store::{conformance, DynStore, Expect, Kind, Record, Store, Write};

/// A fresh path under the system temp dir, removed (with WAL files) on drop.
struct TempDb(PathBuf);

impl TempDb {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "wxshop-{tag}-{}-{}",
            std::process::id(),
            wxshop::domain::random_alnum(8)
        ));
        TempDb(dir.join("store.sqlite"))
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_in_memory() {
    let store: DynStore = Arc::new(SqliteStore::memory().unwrap());
    conformance::run_all(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_on_a_file() {
    let db = TempDb::new("conf");
    let store: DynStore = Arc::new(SqliteStore::open(&db.0).unwrap());
    conformance::run_all(store).await;
}

/// Cases also pass when run in parallel against one store (as against a shared server).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_cases_in_parallel() {
    let store: DynStore = Arc::new(SqliteStore::memory().unwrap());
    let s = || store.clone();
    tokio::join!(
        async { conformance::create_if_absent_race(&s()).await },
        async { conformance::batch_all_or_nothing(&s()).await },
        async { conformance::index_queries(&s()).await },
        async { conformance::cursors_belong_to_their_listing(&s()).await },
        async { conformance::outbox_leases(&s()).await },
        async { conformance::outbox_retry_dead_replay(&s()).await },
        async { conformance::idempotency_states(&s()).await },
        async { conformance::kv_cas(&s()).await },
        async { conformance::repo_round_trip(&s()).await },
        async { conformance::refunds_by_success_recorded(&s()).await },
        async { conformance::rotations(&s()).await },
        async { conformance::product_audit_index(&s()).await },
    );
}

#[tokio::test]
async fn a_file_keeps_its_data_and_settings() {
    let db = TempDb::new("reopen");
    {
        let store = SqliteStore::open(&db.0).unwrap();
        let mut r = Record::new(Kind::Order, "o1", "{}".into());
        r.owner = Some("u".into());
        store
            .write(vec![Write::put(r, Expect::Absent)])
            .await
            .unwrap();
        assert_eq!(store.path(), Some(db.0.as_path()));
    }
    let store = SqliteStore::open(&db.0).unwrap();
    let got = store.get(Kind::Order, "o1").await.unwrap().unwrap();
    assert_eq!(got.owner.as_deref(), Some("u"));
    // WAL mode is a property of the file.
    let conn = rusqlite::Connection::open(&db.0).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn purge_removes_only_expired_records() {
    let store = SqliteStore::memory().unwrap();
    let mut old = Record::new(Kind::Kv, "old", "1".into());
    old.expires_at = Some(1);
    let live = Record::new(Kind::Kv, "live", "1".into());
    store
        .write(vec![
            Write::put(old, Expect::Any),
            Write::put(live, Expect::Any),
        ])
        .await
        .unwrap();
    assert_eq!(store.purge_expired().await.unwrap(), 1);
    assert!(store.get(Kind::Kv, "live").await.unwrap().is_some());
}

/// Two handles on one file (as two processes would have) see each other's writes and still
/// let only one create win.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_connections_on_one_file() {
    let db = TempDb::new("two");
    let a: DynStore = Arc::new(SqliteStore::open(&db.0).unwrap());
    let b: DynStore = Arc::new(SqliteStore::open(&db.0).unwrap());
    let mut tasks = Vec::new();
    for i in 0..32 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let r = Record::new(Kind::Kv, "k", format!("{i}"));
            s.write(vec![Write::put(r, Expect::Absent)]).await.is_ok()
        }));
    }
    let mut wins = 0;
    for t in tasks {
        wins += usize::from(t.await.unwrap());
    }
    assert_eq!(wins, 1);
    let x = a.get(Kind::Kv, "k").await.unwrap().unwrap();
    assert_eq!(b.get(Kind::Kv, "k").await.unwrap(), Some(x));
}

// ---------------------------------------------------------------- group commit
//
// Concurrent `write` calls are committed together (one transaction, a savepoint per call,
// one fsync). What that must not change: each call is atomic and conditional on its own, a
// version is won exactly once, a call that fails undoes only itself, and nothing is visible
// before it is committed.

/// 64 tasks race to move one record through versions 1 → 2 → …: every version has exactly
/// one winner, and each winner reads its own write back at once.
async fn one_winner_per_version(store: DynStore) {
    let id = format!("race-{}", wxshop::domain::random_alnum(8));
    store
        .write(vec![Write::put(
            Record::new(Kind::Kv, id.clone(), "start".into()),
            Expect::Absent,
        )])
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for t in 0..64 {
        let (store, id) = (store.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            let mut won = Vec::new();
            for _ in 0..10 {
                let cur = store.get(Kind::Kv, &id).await.unwrap().unwrap();
                let mut next = cur.clone();
                next.version = cur.version + 1;
                next.body = format!("task {t} wrote version {}", next.version);
                match store
                    .write(vec![Write::put(next.clone(), Expect::Version(cur.version))])
                    .await
                {
                    Ok(()) => {
                        // Acknowledged, so visible to this task's next read (or a later one).
                        let seen = store.get(Kind::Kv, &id).await.unwrap().unwrap();
                        assert!(seen.version >= next.version);
                        won.push((next.version, next.body));
                    }
                    Err(e) => assert!(e.is_conflict(), "{e}"),
                }
            }
            won
        }));
    }
    let mut won = Vec::new();
    for t in tasks {
        won.extend(t.await.unwrap());
    }
    won.sort();
    let versions: Vec<u64> = won.iter().map(|(v, _)| *v).collect();
    let expected: Vec<u64> = (2..2 + versions.len() as u64).collect();
    assert_eq!(
        versions, expected,
        "each version won exactly once, none skipped"
    );
    let last = store.get(Kind::Kv, &id).await.unwrap().unwrap();
    assert_eq!(last.version, 1 + won.len() as u64);
    assert_eq!(Some(&last.body), won.last().map(|(_, b)| b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_one_winner_per_version_in_memory() {
    one_winner_per_version(Arc::new(SqliteStore::memory().unwrap())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_one_winner_per_version_on_a_file() {
    let db = TempDb::new("winner");
    one_winner_per_version(Arc::new(SqliteStore::open(&db.0).unwrap())).await;
}

/// Many calls in flight at once, every other one failing on its last write: the failing
/// ones leave nothing behind, the others land whole, and readers polling all along never
/// see a failed call's first write or half of a successful call.
async fn failing_calls_undo_only_themselves(store: DynStore) {
    let p = format!("grp-{}", wxshop::domain::random_alnum(8));
    let taken = Record::new(Kind::Kv, format!("{p}-taken"), "x".into());
    store
        .write(vec![Write::put(taken.clone(), Expect::Absent)])
        .await
        .unwrap();
    const N: usize = 200;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..4 {
        let (store, p, done) = (store.clone(), p.clone(), done.clone());
        readers.push(tokio::spawn(async move {
            let mut looks = 0usize;
            while !done.load(std::sync::atomic::Ordering::Relaxed) || looks < N {
                let i = looks % N;
                let a = store.get(Kind::Event, &format!("{p}-{i}")).await.unwrap();
                if i % 2 == 1 {
                    assert!(a.is_none(), "a failed call's write became visible");
                } else if a.is_some() {
                    // The call's second write is part of the same commit.
                    let b = store.get(Kind::Outbox, &format!("{p}-{i}")).await.unwrap();
                    assert!(b.is_some(), "half of a call became visible");
                }
                looks += 1;
                tokio::task::yield_now().await;
            }
        }));
    }
    let mut writers = Vec::new();
    for i in 0..N {
        let (store, p, taken) = (store.clone(), p.clone(), taken.clone());
        writers.push(tokio::spawn(async move {
            let mut w = vec![
                Write::put(
                    Record::new(Kind::Event, format!("{p}-{i}"), "a".into()),
                    Expect::Absent,
                ),
                Write::put(
                    Record::new(Kind::Outbox, format!("{p}-{i}"), "b".into()),
                    Expect::Absent,
                ),
            ];
            if i % 2 == 1 {
                // Fails: the record exists. Index 2 of this call, whatever the group holds.
                w.push(Write::put(taken, Expect::Absent));
            }
            (i, store.write(w).await)
        }));
    }
    for w in writers {
        let (i, result) = w.await.unwrap();
        if i % 2 == 1 {
            assert_eq!(
                result,
                Err(wxshop::store::StoreError::Conflict { index: 2 })
            );
        } else {
            assert_eq!(result, Ok(()));
        }
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        r.await.unwrap();
    }
    for i in 0..N {
        let a = store.get(Kind::Event, &format!("{p}-{i}")).await.unwrap();
        let b = store.get(Kind::Outbox, &format!("{p}-{i}")).await.unwrap();
        assert_eq!(a.is_some(), i % 2 == 0, "call {i}");
        assert_eq!(b.is_some(), i % 2 == 0, "call {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_failing_calls_undo_only_themselves_in_memory() {
    failing_calls_undo_only_themselves(Arc::new(SqliteStore::memory().unwrap())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_failing_calls_undo_only_themselves_on_a_file() {
    let db = TempDb::new("undo");
    failing_calls_undo_only_themselves(Arc::new(SqliteStore::open(&db.0).unwrap())).await;
}

/// Another process holding the file's write lock with an uncommitted change: reads go on
/// and do not see it; a write waits for the lock, then applies on top of what committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_never_see_another_writers_uncommitted_change() {
    let db = TempDb::new("uncommitted");
    let store = SqliteStore::open(&db.0).unwrap();
    store
        .write(vec![Write::put(
            Record::new(Kind::Kv, "k", "committed".into()),
            Expect::Absent,
        )])
        .await
        .unwrap();
    let other = rusqlite::Connection::open(&db.0).unwrap();
    other
        .execute_batch(
            "BEGIN IMMEDIATE;
             UPDATE records SET body = 'uncommitted', version = 2 WHERE kind = 'kv' AND id = 'k';
             INSERT INTO records (kind, id, version, body, sort) VALUES ('kv', 'new', 1, 'x', 0);",
        )
        .unwrap();
    let k = store.get(Kind::Kv, "k").await.unwrap().unwrap();
    assert_eq!((k.version, k.body.as_str()), (1, "committed"));
    assert!(store.get(Kind::Kv, "new").await.unwrap().is_none());
    // A write now has to wait for the other's lock; it is then checked against what
    // actually committed (the other process rolls back).
    let s2 = store.clone();
    let write = tokio::spawn(async move {
        let mut next = Record::new(Kind::Kv, "k", "ours".into());
        next.version = 2;
        s2.write(vec![Write::put(next, Expect::Version(1))]).await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    other.execute_batch("ROLLBACK").unwrap();
    write.await.unwrap().unwrap();
    let k = store.get(Kind::Kv, "k").await.unwrap().unwrap();
    assert_eq!((k.version, k.body.as_str()), (2, "ours"));
    assert!(store.get(Kind::Kv, "new").await.unwrap().is_none());
}

const CHILD_ENV: &str = "WXSHOP_CRASH_CHILD_DB";

/// Child half of the crash test: does nothing unless started by the parent.
#[tokio::test]
async fn crash_child_writer() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = SqliteStore::open(&path).unwrap();
    for i in 0u64.. {
        // Two records per batch: after the crash, both exist or neither.
        let id = format!("rec{i:08}");
        let a = Record::new(Kind::Event, id.clone(), format!("{{\"i\":{i}}}"));
        let b = Record::new(Kind::Outbox, id.clone(), format!("{{\"i\":{i}}}"));
        store
            .write(vec![
                Write::put(a, Expect::Absent),
                Write::put(b, Expect::Absent),
            ])
            .await
            .unwrap();
        // Only now is the write acknowledged.
        println!("ACK {id}");
    }
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let db = TempDb::new("crash");
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "crash_child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &db.0)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut acked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    // Let it write a while, then kill it without warning in the middle of its loop.
    // A random stopping point, so the kill lands at different phases of a write.
    let target = 200 + (std::process::id() as usize % 200);
    while acked.len() < target && Instant::now() < deadline {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(id) = line.strip_prefix("ACK ") {
                    acked.push(id.to_owned());
                }
            }
            _ => break,
        }
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    // Acknowledgements already in the pipe count too.
    for line in lines.map_while(Result::ok) {
        if let Some(id) = line.strip_prefix("ACK ") {
            acked.push(id.to_owned());
        }
    }
    assert!(
        acked.len() >= target,
        "child wrote only {} records",
        acked.len()
    );
    eprintln!("child acknowledged {} writes before SIGKILL", acked.len());

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = SqliteStore::open(&db.0).unwrap();
        for id in &acked {
            assert!(
                store.get(Kind::Event, id).await.unwrap().is_some(),
                "acknowledged {id} lost"
            );
            assert!(store.get(Kind::Outbox, id).await.unwrap().is_some());
        }
        // Whatever was not acknowledged is whole or absent, never half a batch.
        let next = format!("rec{:08}", acked.len());
        assert_eq!(
            store.get(Kind::Event, &next).await.unwrap().is_some(),
            store.get(Kind::Outbox, &next).await.unwrap().is_some()
        );
    });
}
