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
        async { conformance::outbox_leases(&s()).await },
        async { conformance::outbox_retry_dead_replay(&s()).await },
        async { conformance::idempotency_states(&s()).await },
        async { conformance::kv_cas(&s()).await },
        async { conformance::repo_round_trip(&s()).await },
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
