//! The embedded backend: one SQLite file (or `:memory:`) holding every record in one table.
//!
//! Why it is shaped so:
//! - **One table, two indexes** — `records(kind, id, …)` with `(kind, owner, sort, id)` and
//!   `(kind, status, sort, id)` mirrors the DynamoDB single-table layout, so the two backends
//!   answer the same queries in the same order and one conformance suite covers both.
//! - **WAL + `synchronous=FULL`** — a write acknowledged to the caller has reached the disk,
//!   so it survives the process being killed (and a power cut); readers never block writers.
//! - **Group commit on one writer thread** — the fsync of a commit costs far more than the
//!   writes in it, so a dedicated thread owns the write connection and takes every queued
//!   [`Store::write`] call at once: one `BEGIN IMMEDIATE` transaction, the calls applied in
//!   order, each atomic on its own (all its conditions are checked before it writes anything,
//!   so a call whose [`Expect`] fails writes nothing and is answered `Conflict` while the
//!   others go on, each seeing the earlier calls' effects: serial order), one `COMMIT`, one
//!   fsync — and only then is every caller answered. A failed commit, or a failing statement,
//!   fails every call of the group. The write lock is taken before the first condition is
//!   read, so checking and applying is one atomic step, even against another process.
//! - **Checkpoints stay on the writer thread** — SQLite's automatic checkpoint (every ~1,000
//!   pages of WAL) runs on the committing connection, i.e. on the writer thread, ~15 % of its
//!   time under payCallback at 256 in flight. A checkpointer thread of its own (after every
//!   group, the writer finishing the last one so the WAL can start over) was tried on 6
//!   December and measured faster on a loaded machine but slower on a quiet one, where its
//!   repeated copies and fsyncs took CPU from the handlers (docs/PERFORMANCE.md, "Log
//!   of full runs", 6 December); it was not kept, nor was a larger writer page cache. A second
//!   one, waiting for 256–1,000 pages of WAL before each checkpoint, was measured the same
//!   day: the checkpoint is ~1 % of the writer's instructions (its cost is in the kernel's
//!   copies and fsyncs), so moving it left the instruction counts unchanged within noise;
//!   it moved some system time off the writer but made its commit fsyncs slower (they met
//!   the checkpointer's), and on a loaded machine was faster in most rounds within a spread
//!   the same code shows against itself: not kept either. Why a keep would need kernel time
//!   measured, or an idle machine: docs/PERFORMANCE.md.
//! - **Reads see committed state only** — on a file they use connections of their own (a WAL
//!   reader sees the last committed transaction, never the group being built), taken from a
//!   small pool and run in place: a point read is a few microseconds and never waits for a
//!   lock (busy timeout 0; if the file is locked, e.g. by another process's recovery, the
//!   read goes to the writer thread, which waits). `:memory:` has one connection only: reads
//!   use it in place when the writer is between groups, else the writer thread runs them
//!   between groups. Queries, which may return many rows, run on the blocking pool.
//! - **Expiry is a filter, not a sweep** — records whose `expires_at` is due are invisible to
//!   every read and count as absent for conditions, exactly like DynamoDB's lazy TTL.
//!   `Store::purge_expired` reclaims their space; the schedule (`orderSync`) calls it.

use super::{now_secs, Expect, Index, Kind, Page, Query, Record, Store, StoreError, Write};
use async_trait::async_trait;
use base64::Engine as _;
use rusqlite::types::{ToSql, ToSqlOutput};
use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, TryLockError};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::oneshot;

/// Most writes one batch may carry (DynamoDB's `TransactWriteItems` limit).
const MAX_BATCH: usize = 100;
/// Largest page a query returns, whatever limit was asked for.
const MAX_PAGE: usize = 1000;
/// How long a writer waits for another process holding the file's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Most idle read connections kept (more are opened when reads overlap, then closed).
const MAX_IDLE_READERS: usize = 8;
/// Most `write` calls committed together (each at most [`MAX_BATCH`] writes).
const MAX_GROUP: usize = 256;

/// The schema, and below the statements a payment runs (a two-write call: the order's
/// `LIVE_INDEXED` + `UPDATE_LIVE`, the outbox entry's `LIVE_VERSION` + `UPSERT`): public so
/// that `wxshop-bench sqlite-floor` measures exactly this SQL (docs/PERFORMANCE.md, "The store's floor").
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS records (
    kind       TEXT    NOT NULL,
    id         TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    body       TEXT    NOT NULL,
    owner      TEXT,
    status     TEXT,
    sort       INTEGER NOT NULL,
    expires_at INTEGER,
    PRIMARY KEY (kind, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS records_by_owner  ON records (kind, owner, sort, id);
CREATE INDEX IF NOT EXISTS records_by_status ON records (kind, status, sort, id);
";

const COLUMNS: &str = "kind, id, version, body, owner, status, sort, expires_at";
pub const GET: &str = "SELECT version, body, owner, status, sort, expires_at FROM records
                    WHERE kind = ?1 AND id = ?2 AND (expires_at IS NULL OR expires_at > ?3)";
pub const LIVE_VERSION: &str = "SELECT version FROM records WHERE kind = ?1 AND id = ?2
                              AND (expires_at IS NULL OR expires_at > ?3)";
pub const UPSERT: &str = "INSERT OR REPLACE INTO records
                        (kind, id, version, body, owner, status, sort, expires_at)
                      VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";
/// A put that holds only when no live record has the key (an expired one is replaced).
pub const PUT_IF_ABSENT: &str = "INSERT INTO records
                               (kind, id, version, body, owner, status, sort, expires_at)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                             ON CONFLICT (kind, id) DO UPDATE SET
                               version = excluded.version, body = excluded.body,
                               owner = excluded.owner, status = excluded.status,
                               sort = excluded.sort, expires_at = excluded.expires_at
                             WHERE records.expires_at IS NOT NULL AND records.expires_at <= ?9";
/// A put that holds only when the live record has version `?9`.
pub const PUT_IF_VERSION: &str = "UPDATE records SET
                                version = ?3, body = ?4, owner = ?5, status = ?6, sort = ?7,
                                expires_at = ?8
                              WHERE kind = ?1 AND id = ?2 AND version = ?9
                                AND (expires_at IS NULL OR expires_at > ?10)";
/// The live record's version, and whether its indexed columns equal the put's (`?4`–`?6`:
/// owner, status, sort), so that the put can leave unchanged index entries alone.
pub const LIVE_INDEXED: &str = "SELECT version, owner IS ?4, status IS ?5, sort = ?6 FROM records
                              WHERE kind = ?1 AND id = ?2
                                AND (expires_at IS NULL OR expires_at > ?3)";
/// In-place updates of a record known to be live, by which indexed columns change (bit 0
/// owner, bit 1 status, bit 2 sort): SQLite rewrites the entries of exactly the indexes whose
/// columns a `SET` names, so an order's transition (owner and sort unchanged) moves only its
/// status entry and a product's stock change touches no index (docs/STORAGE.md).
pub const UPDATE_LIVE: [&str; 8] = [
    "UPDATE records SET version = ?3, body = ?4, expires_at = ?8 WHERE kind = ?1 AND id = ?2",
    "UPDATE records SET version = ?3, body = ?4, expires_at = ?8, owner = ?5
     WHERE kind = ?1 AND id = ?2",
    "UPDATE records SET version = ?3, body = ?4, expires_at = ?8, status = ?6
     WHERE kind = ?1 AND id = ?2",
    "UPDATE records SET version = ?3, body = ?4, expires_at = ?8, owner = ?5, status = ?6
     WHERE kind = ?1 AND id = ?2",
    "UPDATE records SET version = ?3, body = ?4, expires_at = ?8, sort = ?7
     WHERE kind = ?1 AND id = ?2",
    "UPDATE records SET version = ?3, body = ?4, expires_at = ?8, owner = ?5, sort = ?7
     WHERE kind = ?1 AND id = ?2",
    "UPDATE records SET version = ?3, body = ?4, expires_at = ?8, status = ?6, sort = ?7
     WHERE kind = ?1 AND id = ?2",
    "UPDATE records SET version = ?3, body = ?4, expires_at = ?8, owner = ?5, status = ?6,
       sort = ?7 WHERE kind = ?1 AND id = ?2",
];
const DELETE: &str = "DELETE FROM records WHERE kind = ?1 AND id = ?2";
const PURGE: &str = "DELETE FROM records WHERE expires_at IS NOT NULL AND expires_at <= ?1";

/// [`Store`] on an embedded SQLite database. Cheap to clone (shares the writer thread and
/// the read connections); the writer thread ends when the last clone is dropped.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// To the writer thread. `None` only while dropping.
    jobs: Option<mpsc::Sender<Job>>,
    writer: Option<JoinHandle<()>>,
    readers: Readers,
    /// `None` for an in-memory database.
    path: Option<PathBuf>,
}

/// Where reads run.
enum Readers {
    /// A file: read connections of their own, idle ones kept here.
    File(Mutex<Vec<Connection>>),
    /// `:memory:`: the writer's connection (a second one would be another database), locked
    /// by the writer thread from `BEGIN` to `COMMIT` so reads never see a group being built.
    Memory(Arc<Mutex<Connection>>),
}

/// What the writer thread is asked to do.
enum Job {
    /// One `Store::write` call, committed with whatever else is queued.
    Write(Call),
    /// Runs on the writer connection between groups (outside any transaction).
    Direct(DirectFn),
}

type DirectFn = Box<dyn FnOnce(&mut Connection) + Send>;

struct Call {
    writes: Vec<Write>,
    now: i64,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel ends the writer loop once it has answered what it holds.
        drop(self.jobs.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

fn backend_err(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(format!("sqlite: {e}"))
}

fn to_i64(v: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Backend(format!("{what} {v} is out of range")))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves no transaction open that matters: the writer
    // rolls back anything it cannot finish, and reads hold none.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Why a read did not answer: the file was locked (try elsewhere), or a real failure.
enum ReadError {
    Busy,
    Fail(StoreError),
}

impl From<StoreError> for ReadError {
    fn from(e: StoreError) -> Self {
        ReadError::Fail(e)
    }
}

impl From<rusqlite::Error> for ReadError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => ReadError::Busy,
            _ => ReadError::Fail(backend_err(e)),
        }
    }
}

impl From<ReadError> for StoreError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Busy => StoreError::Backend("sqlite: database is locked".into()),
            ReadError::Fail(e) => e,
        }
    }
}

type ReadResult<T> = Result<T, ReadError>;

impl SqliteStore {
    /// Opens (creating if needed, with its parent directory) a database file in WAL mode with
    /// `synchronous=FULL`: once [`Store::write`] returns `Ok`, the write survives a crash.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Backend(format!("sqlite: cannot create {}: {e}", dir.display()))
            })?;
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI,
        )
        .map_err(backend_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(backend_err)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(backend_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Backend(format!(
                "sqlite: {} refused WAL mode (got {mode})",
                path.display()
            )));
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(backend_err)?;
        Self::start(conn, Some(path.to_path_buf()))
    }

    /// A private in-memory database (for unit tests and `--store memory`).
    pub fn memory() -> Result<Self, StoreError> {
        let conn = Connection::open_in_memory().map_err(backend_err)?;
        Self::start(conn, None)
    }

    /// Creates the schema and starts the writer thread on `conn`.
    fn start(conn: Connection, path: Option<PathBuf>) -> Result<Self, StoreError> {
        conn.execute_batch(SCHEMA).map_err(backend_err)?;
        let conn = Arc::new(Mutex::new(conn));
        let readers = match &path {
            Some(_) => Readers::File(Mutex::new(Vec::new())),
            None => Readers::Memory(Arc::clone(&conn)),
        };
        let (jobs, queue) = mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(&conn, &queue))
            .map_err(|e| StoreError::Backend(format!("sqlite: cannot start the writer: {e}")))?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                jobs: Some(jobs),
                writer: Some(writer),
                readers,
                path,
            }),
        })
    }

    /// The database file, or `None` in memory.
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    fn send(&self, job: Job) -> Result<(), StoreError> {
        self.inner
            .jobs
            .as_ref()
            .and_then(|jobs| jobs.send(job).ok())
            .ok_or_else(|| StoreError::Backend("sqlite: the writer thread has stopped".into()))
    }

    /// Runs `f` on the writer connection between groups.
    async fn on_writer<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> ReadResult<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.send(Job::Direct(Box::new(move |conn| {
            let _ = reply.send(f(conn).map_err(StoreError::from));
        })))?;
        answer.await.map_err(|_| {
            StoreError::Backend("sqlite: the writer thread stopped before answering".into())
        })?
    }

    /// A read on committed state, in place (see the module notes).
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> ReadResult<T> + Send + 'static,
    {
        match &self.inner.readers {
            Readers::File(idle) => match read_file(idle, self.path(), &f) {
                Err(ReadError::Busy) => {} // the file is locked: the writer thread waits
                done => return done.map_err(StoreError::from),
            },
            Readers::Memory(conn) => match conn.try_lock() {
                Ok(c) => return f(&c).map_err(StoreError::from),
                Err(TryLockError::Poisoned(p)) => {
                    return f(&p.into_inner()).map_err(StoreError::from)
                }
                Err(TryLockError::WouldBlock) => {} // a group is being built: after it
            },
        }
        self.on_writer(move |conn| f(conn)).await
    }

    /// A read that may return many rows: on the blocking pool for a file.
    async fn read_blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> ReadResult<T> + Send + Sync + 'static,
    {
        if matches!(self.inner.readers, Readers::Memory(_)) {
            return self.read(f).await;
        }
        let inner = Arc::clone(&self.inner);
        let f = Arc::new(f);
        let g = Arc::clone(&f);
        let out = tokio::task::spawn_blocking(move || match &inner.readers {
            Readers::File(idle) => read_file(idle, inner.path.as_deref(), g.as_ref()),
            Readers::Memory(_) => Err(ReadError::Busy),
        })
        .await
        .map_err(|e| StoreError::Backend(format!("sqlite read task failed: {e}")))?;
        match out {
            Err(ReadError::Busy) => self.on_writer(move |conn| f(conn)).await,
            done => done.map_err(StoreError::from),
        }
    }
}

/// Runs `f` on an idle read connection of the file (opening one if none is idle); the
/// connection goes back to the pool unless it failed or the pool is full.
fn read_file<T>(
    idle: &Mutex<Vec<Connection>>,
    path: Option<&Path>,
    f: &dyn Fn(&Connection) -> ReadResult<T>,
) -> ReadResult<T> {
    let pooled = lock(idle).pop();
    let conn = match (pooled, path) {
        (Some(c), _) => c,
        (None, Some(path)) => open_reader(path)?,
        (None, None) => return Err(ReadError::Busy),
    };
    let out = f(&conn);
    if out.is_ok() {
        let mut idle = lock(idle);
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
    }
    out
}

/// A read connection: never writes, never waits for a lock (the caller falls back to the
/// writer thread, which does).
fn open_reader(path: &Path) -> ReadResult<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    conn.busy_timeout(Duration::ZERO)?;
    conn.pragma_update(None, "query_only", true)?;
    Ok(conn)
}

/// The writer thread: takes every queued job, runs the direct ones, commits the writes as
/// one group, then answers. Ends when every sender is gone.
fn writer_loop(conn: &Mutex<Connection>, queue: &mpsc::Receiver<Job>) {
    let mut calls: Vec<Call> = Vec::new();
    let mut direct: Vec<DirectFn> = Vec::new();
    while let Ok(first) = queue.recv() {
        let mut job = Some(first);
        while let Some(j) = job.take() {
            match j {
                Job::Write(call) => calls.push(call),
                Job::Direct(f) => direct.push(f),
            }
            if calls.len() < MAX_GROUP {
                job = queue.try_recv().ok();
            }
        }
        let results = {
            let mut c = lock(conn);
            for f in direct.drain(..) {
                f(&mut c);
            }
            if calls.is_empty() {
                Vec::new()
            } else {
                commit_group(&mut c, &calls)
            }
        };
        for (call, result) in calls.drain(..).zip(results) {
            let _ = call.reply.send(result);
        }
    }
}

fn exec(conn: &Connection, sql: &str) -> Result<(), StoreError> {
    conn.prepare_cached(sql)
        .and_then(|mut s| s.execute([]))
        .map(drop)
        .map_err(backend_err)
}

/// Commits `calls` as one transaction, in order, each atomic on its own (see
/// [`apply_call`]). Returns one result per call; nothing is answered before the commit is
/// durable. A failed commit, or any failing statement (disk full, I/O error: the group is
/// rolled back rather than leave a call half-applied), fails every call of the group.
fn commit_group(conn: &mut Connection, calls: &[Call]) -> Vec<Result<(), StoreError>> {
    let all_fail = |why: String| vec![Err(StoreError::Backend(why)); calls.len()];
    if let Err(e) = exec(conn, "BEGIN IMMEDIATE") {
        return all_fail(format!("{e}; nothing was written"));
    }
    let mut results = Vec::with_capacity(calls.len());
    for call in calls {
        match apply_call(conn, &call.writes, call.now) {
            Ok(held) => results.push(held),
            Err(e) => {
                if !conn.is_autocommit() {
                    let _ = exec(conn, "ROLLBACK");
                }
                return all_fail(format!(
                    "{e}; the group was rolled back, nothing was written"
                ));
            }
        }
    }
    if let Err(e) = exec(conn, "COMMIT") {
        if !conn.is_autocommit() {
            let _ = exec(conn, "ROLLBACK");
        }
        return all_fail(format!("commit failed, nothing was written: {e}"));
    }
    results
}

/// One call, atomic without a savepoint: a call names each key at most once, so none of its
/// writes changes another's condition, and every condition is checked before anything is
/// written — a call that conflicts writes nothing, and later calls see exactly the earlier
/// calls' effects. (A savepoint per call would make SQLite copy every page a call touches
/// into a sub-journal, ~14 % of the writer's instructions on the payCallback path.)
/// `Ok(Err(Conflict))`: the call's condition failed; `Err`: a statement failed (the caller
/// rolls the group back).
fn apply_call(
    conn: &Connection,
    writes: &[Write],
    now: i64,
) -> Result<Result<(), StoreError>, StoreError> {
    if let [Write::Put { record, expect }] = writes {
        // A lone put is one statement, its condition in its `WHERE`.
        return Ok(match put(conn, record, *expect, now)? {
            true => Ok(()),
            false => Err(StoreError::Conflict { index: 0 }),
        });
    }
    // Which indexed columns each put changes, learnt while checking its condition (bit 0
    // owner, 1 status, 2 sort); `None`: not known to be live, written as an upsert.
    let mut changes: [Option<u8>; MAX_BATCH] = [None; MAX_BATCH];
    for (index, w) in writes.iter().enumerate() {
        match w {
            Write::Put {
                record,
                expect: expect @ Expect::Version(_),
            } => {
                let live = live_indexed(conn, record, now)?;
                if !holds(*expect, live.map(|(v, _)| v)) {
                    return Ok(Err(StoreError::Conflict { index }));
                }
                if let Some(slot) = changes.get_mut(index) {
                    *slot = live.map(|(_, c)| c);
                }
            }
            _ => {
                let (kind, id) = key_of(w);
                let expect = match w {
                    Write::Put { expect, .. }
                    | Write::Delete { expect, .. }
                    | Write::Check { expect, .. } => *expect,
                };
                if expect != Expect::Any && !holds(expect, live_version(conn, kind, id, now)?) {
                    return Ok(Err(StoreError::Conflict { index }));
                }
            }
        }
    }
    for (index, w) in writes.iter().enumerate() {
        match w {
            Write::Put { record, .. } => match changes.get(index).copied().flatten() {
                Some(changed) => update_live(conn, record, changed)?,
                None => {
                    put(conn, record, Expect::Any, now)?;
                }
            },
            Write::Delete { kind, id, .. } => {
                conn.prepare_cached(DELETE)
                    .and_then(|mut s| s.execute(params![kind.as_str(), id]))
                    .map_err(backend_err)?;
            }
            Write::Check { .. } => {}
        }
    }
    Ok(Ok(()))
}

fn holds(expect: Expect, live: Option<u64>) -> bool {
    match expect {
        Expect::Any => true,
        Expect::Absent => live.is_none(),
        Expect::Version(v) => live == Some(v),
    }
}

fn key_of(w: &Write) -> (Kind, &str) {
    match w {
        Write::Put { record, .. } => (record.kind, record.id.as_str()),
        Write::Delete { kind, id, .. } | Write::Check { kind, id, .. } => (*kind, id.as_str()),
    }
}

/// Writes `record` if `expect` holds; `false` (nothing written) if it does not. A
/// conditional put is one statement whose `WHERE` is the condition (no row changed = it did
/// not hold): one B-tree search instead of a read and a write, and an update in place keeps
/// the index entries that did not change.
fn put(conn: &Connection, record: &Record, expect: Expect, now: i64) -> Result<bool, StoreError> {
    let version = to_i64(record.version, "version")?;
    let [kind, id, v, body, owner, status, sort, expires_at] = columns(record, &version);
    let changed = match expect {
        Expect::Any => conn
            .prepare_cached(UPSERT)
            .and_then(|mut s| s.execute(columns(record, &version))),
        Expect::Absent => conn.prepare_cached(PUT_IF_ABSENT).and_then(|mut s| {
            s.execute([kind, id, v, body, owner, status, sort, expires_at, &now])
        }),
        Expect::Version(expected) => {
            let Ok(expected) = i64::try_from(expected) else {
                return Ok(false); // no stored version is that large
            };
            conn.prepare_cached(PUT_IF_VERSION).and_then(|mut s| {
                s.execute([
                    kind, id, v, body, owner, status, sort, expires_at, &expected, &now,
                ])
            })
        }
    }
    .map_err(backend_err)?;
    Ok(changed == 1)
}

/// A record's columns in `COLUMNS` order with `version` (the `?1`–`?8` of every statement
/// that writes a record).
pub fn columns<'a>(r: &'a Record, version: &'a i64) -> [&'a dyn ToSql; 8] {
    [
        &r.kind,
        &r.id,
        version,
        &r.body,
        &r.owner,
        &r.status,
        &r.sort,
        &r.expires_at,
    ]
}

impl ToSql for Kind {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

/// The live record under `record`'s key, if any: its version, and which of the indexed
/// columns `record` changes (bit 0 owner, 1 status, 2 sort).
fn live_indexed(
    conn: &Connection,
    record: &Record,
    now: i64,
) -> Result<Option<(u64, u8)>, StoreError> {
    let r = record;
    conn.prepare_cached(LIVE_INDEXED)
        .and_then(|mut s| {
            s.query_row(
                params![r.kind.as_str(), r.id, now, r.owner, r.status, r.sort],
                |row| {
                    let version: i64 = row.get(0)?;
                    let same = |i: usize| row.get::<_, Option<bool>>(i).map(|b| b == Some(true));
                    let changed =
                        u8::from(!same(1)?) | u8::from(!same(2)?) << 1 | u8::from(!same(3)?) << 2;
                    Ok((u64::try_from(version).unwrap_or(0), changed))
                },
            )
            .optional()
        })
        .map_err(backend_err)
}

/// Rewrites a record known to be live in place, setting the indexed columns in `changed`
/// only ([`UPDATE_LIVE`]).
fn update_live(conn: &Connection, record: &Record, changed: u8) -> Result<(), StoreError> {
    let r = record;
    let version = to_i64(r.version, "version")?;
    let sql = UPDATE_LIVE
        .get(usize::from(changed))
        .copied()
        .unwrap_or(UPDATE_LIVE[7]);
    let n = conn
        .prepare_cached(sql)
        .and_then(|mut s| s.execute(columns(r, &version)))
        .map_err(backend_err)?;
    if n == 1 {
        Ok(())
    } else {
        // Its condition was checked in this transaction: the row cannot have gone.
        Err(StoreError::Backend(format!(
            "sqlite: {} {} vanished between its check and its write",
            r.kind.as_str(),
            r.id
        )))
    }
}

/// Version of the live record under (kind, id), if any.
fn live_version(
    conn: &Connection,
    kind: Kind,
    id: &str,
    now: i64,
) -> Result<Option<u64>, StoreError> {
    let v: Option<i64> = conn
        .prepare_cached(LIVE_VERSION)
        .and_then(|mut s| {
            s.query_row(params![kind.as_str(), id, now], |r| r.get(0))
                .optional()
        })
        .map_err(backend_err)?;
    Ok(v.map(|v| u64::try_from(v).unwrap_or(0)))
}

fn row_to_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<(String, Record)> {
    let kind: String = row.get(0)?;
    let version: i64 = row.get(2)?;
    Ok((
        kind,
        Record {
            kind: Kind::Order, // replaced by the caller after parsing `kind`
            id: row.get(1)?,
            version: u64::try_from(version).unwrap_or(0),
            body: row.get(3)?,
            owner: row.get(4)?,
            status: row.get(5)?,
            sort: row.get(6)?,
            expires_at: row.get(7)?,
        },
    ))
}

fn finish_record((kind, mut rec): (String, Record)) -> Result<Record, StoreError> {
    rec.kind = Kind::parse(&kind).ok_or_else(|| StoreError::Corrupt {
        kind: Kind::Kv,
        id: rec.id.clone(),
        why: format!("unknown kind `{kind}`"),
    })?;
    Ok(rec)
}

/// The live record under (kind, id).
fn get_record(conn: &Connection, kind: Kind, id: &str, now: i64) -> ReadResult<Option<Record>> {
    let mut stmt = conn.prepare_cached(GET)?;
    let row = stmt
        .query_row(params![kind.as_str(), id, now], |row| {
            let version: i64 = row.get(0)?;
            Ok(Record {
                kind,
                id: id.to_owned(),
                version: u64::try_from(version).unwrap_or(0),
                body: row.get(1)?,
                owner: row.get(2)?,
                status: row.get(3)?,
                sort: row.get(4)?,
                expires_at: row.get(5)?,
            })
        })
        .optional()?;
    Ok(row)
}

/// The listing a query reads: its kind, index and key. A cursor names it, so that one given
/// out by one listing is refused by every other, as DynamoDB's (which names its index
/// partition) is: a bare (sort, id) was taken by any listing as a place in it.
fn listing(q: &Query) -> (&'static str, &'static str, &str) {
    match &q.index {
        Index::Owner(o) => (q.kind.as_str(), "owner", o.as_str()),
        Index::Status(s) => (q.kind.as_str(), "status", s.as_str()),
    }
}

/// Cursor = the listing and the (sort, id) of the last record returned, opaque to callers:
/// URL-safe base64 of the JSON `[kind, index, key, sort, id]`.
fn encode_cursor(q: &Query, sort: i64, id: &str) -> String {
    let (kind, index, key) = listing(q);
    let json = serde_json::json!([kind, index, key, sort, id]).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

/// The (sort, id) in `cursor`, if it was given out by `q`'s listing.
fn decode_cursor(q: &Query, cursor: &str) -> Result<(i64, String), StoreError> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| StoreError::BadCursor)?;
    let (kind, index, key, sort, id): (String, String, String, i64, String) =
        serde_json::from_slice(&raw).map_err(|_| StoreError::BadCursor)?;
    if (kind.as_str(), index.as_str(), key.as_str()) != listing(q) {
        return Err(StoreError::BadCursor);
    }
    Ok((sort, id))
}

fn run_query(conn: &Connection, q: &Query, now: i64) -> ReadResult<Page> {
    let (column, key) = match &q.index {
        Index::Owner(o) => ("owner", o.as_str()),
        Index::Status(s) => ("status", s.as_str()),
    };
    let after = q
        .cursor
        .as_deref()
        .map(|c| decode_cursor(q, c))
        .transpose()?;
    if q.limit == 0 {
        return Ok(Page::default());
    }
    let limit = q.limit.min(MAX_PAGE);
    let (cmp, order) = if q.descending {
        ("<", "DESC")
    } else {
        (">", "ASC")
    };
    let mut args: Vec<rusqlite::types::Value> = vec![
        q.kind.as_str().to_owned().into(),
        key.to_owned().into(),
        q.sort_min.unwrap_or(i64::MIN).into(),
        q.sort_max.unwrap_or(i64::MAX).into(),
        now.into(),
        i64::try_from(limit + 1).unwrap_or(i64::MAX).into(),
    ];
    let after_clause = match after {
        Some((sort, id)) => {
            args.push(sort.into());
            args.push(id.into());
            format!("AND (sort, id) {cmp} (?7, ?8)")
        }
        None => String::new(),
    };
    let sql = format!(
        "SELECT {COLUMNS} FROM records
          WHERE kind = ?1 AND {column} = ?2
            AND sort >= ?3 AND sort <= ?4
            AND (expires_at IS NULL OR expires_at > ?5)
            {after_clause}
          ORDER BY sort {order}, id {order}
          LIMIT ?6"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), row_to_record)?;
    let mut records = Vec::with_capacity(limit.min(64));
    let mut more = false;
    for row in rows {
        let rec = finish_record(row?)?;
        if records.len() == limit {
            more = true;
            break;
        }
        records.push(rec);
    }
    let next = if more {
        records.last().map(|r| encode_cursor(q, r.sort, &r.id))
    } else {
        None
    };
    Ok(Page { records, next })
}

#[async_trait]
impl Store for SqliteStore {
    async fn purge_expired(&self) -> Result<usize, StoreError> {
        let now = now_secs();
        self.on_writer(move |conn| {
            conn.prepare_cached(PURGE)?
                .execute(params![now])
                .map_err(ReadError::from)
        })
        .await
    }

    async fn get(&self, kind: Kind, id: &str) -> Result<Option<Record>, StoreError> {
        let id = id.to_owned();
        let now = now_secs();
        self.read(move |conn| get_record(conn, kind, &id, now))
            .await
    }

    async fn write(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        if writes.len() > MAX_BATCH {
            return Err(StoreError::TooLarge(writes.len()));
        }
        for (i, w) in writes.iter().enumerate() {
            let key = key_of(w);
            if writes[..i].iter().any(|earlier| key_of(earlier) == key) {
                let (kind, id) = key;
                return Err(StoreError::Backend(format!(
                    "batch writes {kind:?} {id} more than once"
                )));
            }
        }
        // Checked here, so a statement in the group can fail only for SQLite's own reasons.
        for w in &writes {
            if let Write::Put { record, .. } = w {
                to_i64(record.version, "version")?;
            }
        }
        let (reply, answer) = oneshot::channel();
        self.send(Job::Write(Call {
            writes,
            now: now_secs(),
            reply,
        }))?;
        answer.await.map_err(|_| {
            StoreError::Backend(
                "sqlite: the writer thread stopped before answering; the write may or may not \
                 have happened"
                    .into(),
            )
        })?
    }

    async fn query(&self, query: Query) -> Result<Page, StoreError> {
        let now = now_secs();
        self.read_blocking(move |conn| run_query(conn, &query, now))
            .await
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trip() {
        let q = Query::new(Kind::Order, Index::Owner("o:1".into()));
        let c = encode_cursor(&q, -5, "a:b");
        assert_eq!(decode_cursor(&q, &c).unwrap(), (-5, "a:b".to_owned()));
        assert_eq!(decode_cursor(&q, "!!"), Err(StoreError::BadCursor));
        let b64 = |t: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(t);
        assert_eq!(decode_cursor(&q, &b64("x")), Err(StoreError::BadCursor));
        // The format before cursors named their listing: a place in any listing.
        assert_eq!(
            decode_cursor(&q, &b64("-5:a:b")),
            Err(StoreError::BadCursor)
        );
        for other in [
            Query::new(Kind::Order, Index::Owner("o:2".into())),
            Query::new(Kind::Order, Index::Status("o:1".into())),
            Query::new(Kind::Refund, Index::Owner("o:1".into())),
        ] {
            assert_eq!(decode_cursor(&other, &c), Err(StoreError::BadCursor));
        }
    }

    /// The SQLite we link is built as `.cargo/config.toml` asks (`LIBSQLITE3_FLAGS`): without
    /// the global page-cache group and its mutex, which every connection of the store queued
    /// on (docs/PERFORMANCE.md, "SQLite's global mutexes"). A build that lost the setting (a
    /// config moved, another libsqlite3-sys build script) fails here, not only in a benchmark.
    #[test]
    fn sqlite_is_built_without_the_global_page_cache_mutex() {
        let conn = Connection::open_in_memory().unwrap();
        let mut st = conn.prepare("PRAGMA compile_options").unwrap();
        let opts: Vec<String> = st
            .query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(opts.iter().any(|o| o == "THREADSAFE=1"), "{opts:?}");
        assert!(
            !opts.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"),
            "SQLite built with ENABLE_MEMORY_MANAGEMENT: {opts:?}"
        );
        assert!(
            opts.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
            "SQLite built with memory statistics: {opts:?}"
        );
    }

    #[tokio::test]
    async fn conditions_and_rollback() {
        let s = SqliteStore::memory().unwrap();
        let r = Record::new(Kind::Kv, "a", "1".into());
        s.write(vec![Write::put(r.clone(), Expect::Absent)])
            .await
            .unwrap();
        let err = s
            .write(vec![
                Write::put(Record::new(Kind::Kv, "b", "2".into()), Expect::Absent),
                Write::put(r, Expect::Absent),
            ])
            .await
            .unwrap_err();
        assert_eq!(err, StoreError::Conflict { index: 1 });
        assert!(s.get(Kind::Kv, "b").await.unwrap().is_none());
    }

    fn call(writes: Vec<Write>) -> (Call, oneshot::Receiver<Result<(), StoreError>>) {
        let (reply, answer) = oneshot::channel();
        let now = now_secs();
        (Call { writes, now, reply }, answer)
    }

    fn put(id: &str, expect: Expect) -> Write {
        Write::put(Record::new(Kind::Kv, id, format!("\"{id}\"")), expect)
    }

    fn exists(conn: &Connection, id: &str) -> bool {
        get_record(conn, Kind::Kv, id, now_secs())
            .map_err(StoreError::from)
            .unwrap()
            .is_some()
    }

    /// One group, in order: each call sees the earlier calls' effects, and the one whose
    /// condition fails is undone alone.
    #[test]
    fn a_group_runs_calls_in_order_and_undoes_only_the_failing_one() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        let mut a_v2 = Record::new(Kind::Kv, "a", "2".into());
        a_v2.version = 2;
        let calls = vec![
            call(vec![put("a", Expect::Absent)]).0,
            // Writes b, then fails on a (written by the call before it): b is undone too.
            call(vec![put("b", Expect::Absent), put("a", Expect::Absent)]).0,
            // Sees a at version 1 (the first call's, not committed yet) and updates it.
            call(vec![
                Write::put(a_v2, Expect::Version(1)),
                put("c", Expect::Absent),
            ])
            .0,
        ];
        let results = commit_group(&mut conn, &calls);
        assert_eq!(
            results,
            vec![Ok(()), Err(StoreError::Conflict { index: 1 }), Ok(())]
        );
        assert!(exists(&conn, "a") && exists(&conn, "c"));
        assert!(!exists(&conn, "b"));
        let a = get_record(&conn, Kind::Kv, "a", now_secs())
            .map_err(StoreError::from)
            .unwrap()
            .unwrap();
        assert_eq!(a.version, 2);
        assert!(conn.is_autocommit(), "the group's transaction is closed");
    }

    /// A connection whose COMMIT fails whenever a record `poison` was written (a deferred
    /// foreign key SQLite checks only at COMMIT).
    fn poisoned_connection() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        conn.execute_batch(
            "PRAGMA foreign_keys = ON;
             CREATE TABLE parent (id TEXT PRIMARY KEY);
             CREATE TABLE child (pid TEXT REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED);
             CREATE TRIGGER poison AFTER INSERT ON records WHEN NEW.id = 'poison'
             BEGIN INSERT INTO child VALUES ('nobody'); END;
             CREATE TRIGGER bad BEFORE INSERT ON records WHEN NEW.id = 'bad'
             BEGIN SELECT RAISE(ABORT, 'bad record'); END;",
        )
        .unwrap();
        conn
    }

    /// The commit fails: every call of the group fails, none of their writes is kept, and
    /// the connection takes the next group.
    #[test]
    fn a_failed_commit_fails_every_call_of_the_group() {
        let mut conn = poisoned_connection();
        let calls = vec![
            call(vec![put("x", Expect::Absent)]).0,
            call(vec![put("poison", Expect::Absent)]).0,
            call(vec![put("y", Expect::Absent)]).0,
            call(vec![put("x", Expect::Absent)]).0, // a conflict, failed by the commit too
        ];
        let results = commit_group(&mut conn, &calls);
        assert_eq!(results.len(), 4);
        for r in &results {
            assert!(
                matches!(r, Err(StoreError::Backend(m)) if m.contains("commit failed")),
                "{r:?}"
            );
        }
        assert!(!exists(&conn, "x") && !exists(&conn, "y") && !exists(&conn, "poison"));
        assert!(conn.is_autocommit());
        let next = vec![call(vec![put("x", Expect::Absent)]).0];
        assert_eq!(commit_group(&mut conn, &next), vec![Ok(())]);
        assert!(exists(&conn, "x"));
    }

    /// A statement fails in the middle of a call (after its first write): the group is
    /// rolled back and every call fails, so no call is ever half-applied.
    #[test]
    fn a_failing_statement_fails_the_group() {
        let mut conn = poisoned_connection();
        let calls = vec![
            call(vec![put("x", Expect::Absent)]).0,
            call(vec![put("y", Expect::Absent), put("bad", Expect::Any)]).0,
            call(vec![put("z", Expect::Absent)]).0,
        ];
        for r in commit_group(&mut conn, &calls) {
            assert!(
                matches!(&r, Err(StoreError::Backend(m)) if m.contains("rolled back")),
                "{r:?}"
            );
        }
        for id in ["x", "y", "bad", "z"] {
            assert!(!exists(&conn, id), "{id} was kept");
        }
        assert!(conn.is_autocommit());
    }

    /// Through the store: the failing call is answered with an error, nothing of it is
    /// readable, and the writer thread goes on serving.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_store_survives_a_failed_commit() {
        let s = SqliteStore::start(poisoned_connection(), None).unwrap();
        let err = s
            .write(vec![put("poison", Expect::Absent)])
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
        assert!(s.get(Kind::Kv, "poison").await.unwrap().is_none());
        s.write(vec![put("fine", Expect::Absent)]).await.unwrap();
        assert!(s.get(Kind::Kv, "fine").await.unwrap().is_some());
    }

    fn temp_db(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "wxshop-sqlite-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("store.db")
    }

    fn wal_bytes(db: &Path) -> u64 {
        std::fs::metadata(format!("{}-wal", db.display()))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// Writes `n` records of ~1 KiB, 32 calls in flight (so they commit in groups).
    async fn write_many(s: &SqliteStore, from: usize, n: usize) {
        let body = format!("\"{}\"", "x".repeat(1000));
        let mut next = from;
        while next < from + n {
            let mut calls = Vec::new();
            for i in next..(next + 32).min(from + n) {
                let s = s.clone();
                let r = Record::new(Kind::Kv, format!("k{i:06}"), body.clone());
                calls.push(tokio::spawn(async move {
                    s.write(vec![Write::put(r, Expect::Absent)]).await
                }));
            }
            next += calls.len();
            for c in calls {
                c.await.unwrap().unwrap();
            }
        }
    }

    /// A store on a file commits with `synchronous=FULL` (an acknowledged write is on disk)
    /// and its writer connection checkpoints the WAL itself (nothing else does; see the
    /// module notes).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_writer_commits_with_synchronous_full_and_checkpoints() {
        let db = temp_db("pragmas");
        let s = SqliteStore::open(&db).unwrap();
        let (auto, sync) = s
            .on_writer(|c| {
                let auto: i64 = c.query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))?;
                let sync: i64 = c.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
                Ok((auto, sync))
            })
            .await
            .unwrap();
        assert!(auto > 0, "the writer would never checkpoint: {auto}");
        assert_eq!(sync, 2, "commits must be synchronous=FULL");
        drop(s);
        let _ = std::fs::remove_dir_all(db.parent().unwrap());
    }

    /// Under sustained writes the WAL file stays near the checkpoint's threshold (~1,000
    /// pages of 4 KiB) instead of growing with everything written: the records reach the
    /// database and the WAL starts over.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_stays_bounded_under_sustained_writes() {
        let db = temp_db("bounded");
        let s = SqliteStore::open(&db).unwrap();
        write_many(&s, 0, 12_000).await; // ~12 MB of records
        let wal = wal_bytes(&db);
        let db_bytes = std::fs::metadata(&db).unwrap().len();
        assert!(
            db_bytes > 8_000_000,
            "the records did not reach the database: {db_bytes} bytes"
        );
        assert!(wal < 8_000_000, "the WAL grew to {wal} bytes");
        for i in [0, 5999, 11_999] {
            assert!(s
                .get(Kind::Kv, &format!("k{i:06}"))
                .await
                .unwrap()
                .is_some());
        }
        drop(s);
        let _ = std::fs::remove_dir_all(db.parent().unwrap());
    }

    /// In memory, a read while the writer holds the connection (a group being built) waits
    /// for the group's end and sees only what it committed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[allow(clippy::await_holding_lock)] // the point: the lock is held as a group would hold it
    async fn memory_reads_wait_for_the_group_and_see_only_its_commit() {
        let s = SqliteStore::memory().unwrap();
        let Readers::Memory(shared) = &s.inner.readers else {
            panic!("memory store without the shared connection");
        };
        let guard = shared.lock().unwrap();
        guard
            .execute_batch(
                "BEGIN IMMEDIATE;
                 INSERT INTO records (kind, id, version, body, sort) VALUES ('kv', 'u', 1, '1', 0);",
            )
            .unwrap();
        let s2 = s.clone();
        let read = tokio::spawn(async move { s2.get(Kind::Kv, "u").await });
        tokio::task::yield_now().await;
        guard.execute_batch("ROLLBACK").unwrap();
        drop(guard);
        assert_eq!(read.await.unwrap(), Ok(None));
    }
}
