//! The embedded backend: one SQLite file (or `:memory:`) holding every record in one table.
//!
//! Why it is shaped so:
//! - **One table, two indexes** — `records(kind, id, …)` with `(kind, owner, sort, id)` and
//!   `(kind, status, sort, id)` mirrors the DynamoDB single-table layout, so the two backends
//!   answer the same queries in the same order and one conformance suite covers both.
//! - **`BEGIN IMMEDIATE` per batch** — the write lock is taken before the first condition is
//!   read, so checking every [`Expect`] and applying the writes is one atomic step, even
//!   against another process using the same file. A failed condition rolls everything back.
//! - **WAL + `synchronous=FULL`** — a write acknowledged to the caller has reached the disk,
//!   so it survives the process being killed (and a power cut); readers never block writers.
//! - **One connection behind a `std::sync::Mutex`, used from `spawn_blocking`** — SQLite calls
//!   block, so they never run on the async worker threads; the mutex serialises them, which
//!   is what SQLite would do with its own write lock anyway, and keeps the code trivially safe
//!   under many concurrent tasks.
//! - **Expiry is a filter, not a sweep** — records whose `expires_at` is due are invisible to
//!   every read and count as absent for conditions, exactly like DynamoDB's lazy TTL.
//!   [`SqliteStore::purge_expired`] reclaims their space when someone wants it to.

use super::{now_secs, Expect, Index, Kind, Page, Query, Record, Store, StoreError, Write};
use async_trait::async_trait;
use base64::Engine as _;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Most writes one batch may carry (DynamoDB's `TransactWriteItems` limit).
const MAX_BATCH: usize = 100;
/// Largest page a query returns, whatever limit was asked for.
const MAX_PAGE: usize = 1000;
/// How long a writer waits for another process holding the file's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

const SCHEMA: &str = "
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

/// [`Store`] on an embedded SQLite database. Cheap to clone (shares one connection).
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Mutex<Connection>,
    /// `None` for an in-memory database.
    path: Option<PathBuf>,
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
        Self::init(conn, Some(path.to_path_buf()))
    }

    /// A private in-memory database (for unit tests and `--store memory`).
    pub fn memory() -> Result<Self, StoreError> {
        let conn = Connection::open_in_memory().map_err(backend_err)?;
        Self::init(conn, None)
    }

    fn init(conn: Connection, path: Option<PathBuf>) -> Result<Self, StoreError> {
        conn.execute_batch(SCHEMA).map_err(backend_err)?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                conn: Mutex::new(conn),
                path,
            }),
        })
    }

    /// The database file, or `None` in memory.
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// Deletes records whose expiry is due (they are already invisible). Returns how many.
    pub async fn purge_expired(&self) -> Result<usize, StoreError> {
        let now = now_secs();
        self.run(move |conn| {
            conn.execute(
                "DELETE FROM records WHERE expires_at IS NOT NULL AND expires_at <= ?1",
                params![now],
            )
            .map_err(backend_err)
        })
        .await
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock leaves no open transaction behind (rusqlite's
            // `Transaction` rolls back on drop), so the connection is still good to use.
            let mut conn = inner
                .conn
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("sqlite task failed: {e}")))?
    }
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

/// Version of the live record under (kind, id), if any.
fn live_version(
    conn: &Connection,
    kind: Kind,
    id: &str,
    now: i64,
) -> Result<Option<u64>, StoreError> {
    let v: Option<i64> = conn
        .query_row(
            "SELECT version FROM records WHERE kind = ?1 AND id = ?2
               AND (expires_at IS NULL OR expires_at > ?3)",
            params![kind.as_str(), id, now],
            |r| r.get(0),
        )
        .optional()
        .map_err(backend_err)?;
    Ok(v.map(|v| u64::try_from(v).unwrap_or(0)))
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

fn apply_batch(conn: &mut Connection, writes: &[Write], now: i64) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(backend_err)?;
    for (index, w) in writes.iter().enumerate() {
        let (kind, id) = key_of(w);
        let expect = match w {
            Write::Put { expect, .. }
            | Write::Delete { expect, .. }
            | Write::Check { expect, .. } => *expect,
        };
        if !holds(expect, live_version(&tx, kind, id, now)?) {
            // Dropping `tx` rolls back whatever earlier writes of this batch did.
            return Err(StoreError::Conflict { index });
        }
        match w {
            Write::Put { record, .. } => {
                tx.execute(
                    "INSERT OR REPLACE INTO records
                        (kind, id, version, body, owner, status, sort, expires_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![
                        record.kind.as_str(),
                        record.id,
                        to_i64(record.version, "version")?,
                        record.body,
                        record.owner,
                        record.status,
                        record.sort,
                        record.expires_at,
                    ],
                )
                .map_err(backend_err)?;
            }
            Write::Delete { kind, id, .. } => {
                tx.execute(
                    "DELETE FROM records WHERE kind = ?1 AND id = ?2",
                    params![kind.as_str(), id],
                )
                .map_err(backend_err)?;
            }
            Write::Check { .. } => {}
        }
    }
    tx.commit().map_err(backend_err)
}

/// Cursor = the (sort, id) of the last record returned, opaque to callers.
fn encode_cursor(sort: i64, id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{sort}:{id}"))
}

fn decode_cursor(cursor: &str) -> Result<(i64, String), StoreError> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| StoreError::BadCursor)?;
    let text = String::from_utf8(raw).map_err(|_| StoreError::BadCursor)?;
    let (sort, id) = text.split_once(':').ok_or(StoreError::BadCursor)?;
    let sort = sort.parse::<i64>().map_err(|_| StoreError::BadCursor)?;
    Ok((sort, id.to_owned()))
}

fn run_query(conn: &Connection, q: &Query, now: i64) -> Result<Page, StoreError> {
    let (column, key) = match &q.index {
        Index::Owner(o) => ("owner", o.as_str()),
        Index::Status(s) => ("status", s.as_str()),
    };
    let after = q.cursor.as_deref().map(decode_cursor).transpose()?;
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
    let mut stmt = conn.prepare_cached(&sql).map_err(backend_err)?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(args), row_to_record)
        .map_err(backend_err)?;
    let mut records = Vec::with_capacity(limit.min(64));
    let mut more = false;
    for row in rows {
        let rec = finish_record(row.map_err(backend_err)?)?;
        if records.len() == limit {
            more = true;
            break;
        }
        records.push(rec);
    }
    let next = if more {
        records.last().map(|r| encode_cursor(r.sort, &r.id))
    } else {
        None
    };
    Ok(Page { records, next })
}

#[async_trait]
impl Store for SqliteStore {
    async fn get(&self, kind: Kind, id: &str) -> Result<Option<Record>, StoreError> {
        let id = id.to_owned();
        let now = now_secs();
        self.run(move |conn| {
            let row = conn
                .query_row(
                    &format!(
                        "SELECT {COLUMNS} FROM records WHERE kind = ?1 AND id = ?2
                           AND (expires_at IS NULL OR expires_at > ?3)"
                    ),
                    params![kind.as_str(), id, now],
                    row_to_record,
                )
                .optional()
                .map_err(backend_err)?;
            row.map(finish_record).transpose()
        })
        .await
    }

    async fn write(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        if writes.len() > MAX_BATCH {
            return Err(StoreError::TooLarge(writes.len()));
        }
        let mut keys = HashSet::with_capacity(writes.len());
        for w in &writes {
            let (kind, id) = key_of(w);
            if !keys.insert((kind, id)) {
                return Err(StoreError::Backend(format!(
                    "batch writes {kind:?} {id} more than once"
                )));
            }
        }
        let now = now_secs();
        self.run(move |conn| apply_batch(conn, &writes, now)).await
    }

    async fn query(&self, query: Query) -> Result<Page, StoreError> {
        let now = now_secs();
        self.run(move |conn| run_query(conn, &query, now)).await
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
        let c = encode_cursor(-5, "a:b");
        assert_eq!(decode_cursor(&c).unwrap(), (-5, "a:b".to_owned()));
        assert_eq!(decode_cursor("!!"), Err(StoreError::BadCursor));
        assert_eq!(
            decode_cursor(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("x")),
            Err(StoreError::BadCursor)
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
}
