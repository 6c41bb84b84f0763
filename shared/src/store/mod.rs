//! Durable storage behind one seam.
//!
//! The backends implement a deliberately small, generic [`Store`]: versioned records of a
//! [`Kind`], written in all-or-nothing batches where each write carries its own condition
//! ([`Expect`]), plus two secondary indexes (by owner and by status, each ordered by `sort`).
//! Everything the functions need — orders, products, after-sales, idempotency records, the
//! outbox with leases, the TTL key-value space, the sweeps' places in an index — is built on
//! that in [`repo`], [`idempotency`], [`kv`], [`rotation`] and [`crate::outbox`], once, for
//! every backend. This keeps the backends small enough
//! to be obviously right, and the one conformance suite ([`conformance`]) proves they agree.
//!
//! Records with `expires_at` in the past are invisible to reads and may be overwritten by an
//! [`Expect::Absent`] write (DynamoDB's TTL deletes lazily; SQLite never does by itself).

pub mod conformance;
#[cfg(feature = "dynamodb")]
pub mod dynamo;
pub mod idempotency;
pub mod kv;
pub mod repo;
pub mod rotation;
#[cfg(feature = "sqlite")]
pub mod sqlite;

use async_trait::async_trait;
use serde::{de::DeserializeOwned, Serialize};
use std::sync::Arc;

/// What a record is. Part of every key, so kinds never collide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Order,
    Product,
    AfterSale,
    Outbox,
    Idempotency,
    Kv,
    /// Platform events and notifications as received, for audit and replay.
    Event,
    /// Refund records keyed by `out_refund_no`.
    Refund,
    /// Funds withdrawals (secondary-merchant mode).
    Withdrawal,
    /// Users the merchant blocked from logging in and ordering, keyed by openid.
    BlockedUser,
}

impl Kind {
    pub const ALL: [Kind; 10] = [
        Kind::Order,
        Kind::Product,
        Kind::AfterSale,
        Kind::Outbox,
        Kind::Idempotency,
        Kind::Kv,
        Kind::Event,
        Kind::Refund,
        Kind::Withdrawal,
        Kind::BlockedUser,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Order => "order",
            Kind::Product => "product",
            Kind::AfterSale => "aftersale",
            Kind::Outbox => "outbox",
            Kind::Idempotency => "idem",
            Kind::Kv => "kv",
            Kind::Event => "event",
            Kind::Refund => "refund",
            Kind::Withdrawal => "withdrawal",
            Kind::BlockedUser => "blocked_user",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// The buffer [`Record::encode`] starts with: an order with one item is ~450–750 bytes.
const ENCODE_CAPACITY: usize = 1024;

/// One stored item. `body` is JSON owned by the layer above.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub kind: Kind,
    pub id: String,
    /// 1 for a new record; each conditional update writes `previous + 1`.
    pub version: u64,
    pub body: String,
    /// Index 1 key (e.g. the openid owning an order).
    pub owner: Option<String>,
    /// Index 2 key (e.g. order status, outbox state).
    pub status: Option<String>,
    /// Order within both indexes (e.g. created time, or due time for the outbox), ms.
    pub sort: i64,
    /// Epoch seconds after which the record no longer exists.
    pub expires_at: Option<i64>,
}

impl Record {
    pub fn new(kind: Kind, id: impl Into<String>, body: String) -> Self {
        Record {
            kind,
            id: id.into(),
            version: 1,
            body,
            owner: None,
            status: None,
            sort: 0,
            expires_at: None,
        }
    }

    pub fn is_expired(&self, now_secs: i64) -> bool {
        self.expires_at.is_some_and(|t| t <= now_secs)
    }

    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, StoreError> {
        serde_json::from_str(&self.body).map_err(|e| StoreError::Corrupt {
            kind: self.kind,
            id: self.id.clone(),
            why: e.to_string(),
        })
    }

    /// `value` as the JSON of a record's body. Written into a buffer sized for a whole order
    /// (`serde_json::to_string` starts at 128 bytes and grows it three times for one).
    pub fn encode<T: Serialize>(value: &T) -> Result<String, StoreError> {
        let mut buf = Vec::with_capacity(ENCODE_CAPACITY);
        serde_json::to_writer(&mut buf, value)
            .map_err(|e| StoreError::Backend(format!("encode: {e}")))?;
        String::from_utf8(buf).map_err(|e| StoreError::Backend(format!("encode: {e}")))
    }
}

/// The condition a write needs to succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Unconditional.
    Any,
    /// No live record with this key (absent or expired).
    Absent,
    /// The live record has exactly this version.
    Version(u64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// Write `record` as given (its `version` included) if `expect` holds.
    Put { record: Record, expect: Expect },
    /// Delete if `expect` holds.
    Delete {
        kind: Kind,
        id: String,
        expect: Expect,
    },
    /// Only a condition: the batch fails unless it holds. Writes nothing.
    Check {
        kind: Kind,
        id: String,
        expect: Expect,
    },
}

impl Write {
    pub fn put(record: Record, expect: Expect) -> Self {
        Write::Put { record, expect }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Index {
    Owner(String),
    Status(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    pub kind: Kind,
    pub index: Index,
    /// Inclusive bounds on `sort`.
    pub sort_min: Option<i64>,
    pub sort_max: Option<i64>,
    pub descending: bool,
    pub limit: usize,
    /// From a previous [`Page::next`].
    pub cursor: Option<String>,
}

impl Query {
    pub fn new(kind: Kind, index: Index) -> Self {
        Query {
            kind,
            index,
            sort_min: None,
            sort_max: None,
            descending: false,
            limit: 100,
            cursor: None,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    pub records: Vec<Record>,
    /// Present when more records may follow.
    pub next: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The condition of write number `index` in the batch did not hold; nothing was written.
    #[error("conflict: condition of write {index} failed")]
    Conflict { index: usize },
    #[error("stored {kind:?} {id} is unreadable: {why}")]
    Corrupt { kind: Kind, id: String, why: String },
    #[error("invalid cursor")]
    BadCursor,
    #[error("batch of {0} writes is too large (at most 100)")]
    TooLarge(usize),
    /// The backend failed; the write may or may not have happened (retry reads first).
    #[error("store unavailable: {0}")]
    Backend(String),
}

impl StoreError {
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }
}

/// The storage seam. Implementations: SQLite (`sqlite`), DynamoDB (`dynamo`).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The live record, or `None` if absent or expired. Strongly consistent.
    async fn get(&self, kind: Kind, id: &str) -> Result<Option<Record>, StoreError>;

    /// Applies every write or none. At most 100 writes, each key at most once.
    async fn write(&self, writes: Vec<Write>) -> Result<(), StoreError>;

    /// Live records of `query.kind` on one index, ordered by (`sort`, `id`).
    async fn query(&self, query: Query) -> Result<Page, StoreError>;

    /// Deletes records whose expiry is due (already invisible to reads) and says how many.
    /// The default does nothing: DynamoDB's TTL deletes expired items by itself.
    async fn purge_expired(&self) -> Result<usize, StoreError> {
        Ok(0)
    }

    /// One bounded step of moving index entries out of the partitions they were written to
    /// before DynamoDB's indexes were sharded, for `listings` (every listing records are
    /// written under: [`repo::index_listings`]), none started once `deadline` has passed; `now_ms`
    /// times the verification passes. `true` with the report when the step got to the end
    /// of what it does this run (a pass over the partitions, or nothing left to do).
    ///
    /// Why: a listing reads those partitions as long as anything may be left in them, and
    /// records in an end state are never written again to move by themselves. The DynamoDB
    /// backend moves them and, once they are verified empty, records so and stops reading them
    /// (`docs/STORAGE.md`, "Sharded index keys", "Migration"). The default does nothing and is
    /// done: SQLite's indexes were never sharded.
    async fn migrate_index(
        &self,
        listings: &[(Kind, Index)],
        now_ms: i64,
        deadline: crate::time::Deadline,
    ) -> Result<(IndexMigration, bool), StoreError> {
        let _ = (listings, now_ms, deadline);
        Ok((
            IndexMigration {
                migrated: true,
                ..IndexMigration::default()
            },
            true,
        ))
    }

    /// Backend name for logs (`sqlite`, `dynamodb`).
    fn backend(&self) -> &'static str;
}

/// What [`Store::migrate_index`] did in one step.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct IndexMigration {
    /// Live entries found in the pre-sharding partitions.
    pub found: usize,
    /// Of those, moved to their shard.
    pub moved: usize,
    /// Passes over every pre-sharding partition ended in this step.
    pub passes: usize,
    /// Every listing asked about is verified empty of pre-sharding entries and marked so:
    /// listings stop reading those partitions (in processes started after the mark).
    pub migrated: bool,
}

pub type DynStore = Arc<dyn Store>;

/// Current epoch seconds for TTL filtering in backends.
pub(crate) fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::{Kind, Record};
    use crate::outbox::{OutboxEntry, Task};

    /// A record's body is byte for byte what `serde_json::to_string` wrote before the buffer
    /// was sized, and reads back as the same value: stored records stay readable both ways.
    #[test]
    fn encode_writes_what_to_string_wrote() {
        let mut order = crate::domain::order::tests::sample_order(1990);
        order.pay("4200000000202401010000000001", 2, 3).unwrap();
        let body = Record::encode(&order).unwrap();
        assert_eq!(body, serde_json::to_string(&order).unwrap());
        let back: crate::domain::Order = Record::new(Kind::Order, "x", body).decode().unwrap();
        assert_eq!(back, order);
        let entry = OutboxEntry::new(
            Task::OrderPay {
                out_trade_no: order.out_trade_no.clone(),
            },
            5,
        );
        assert_eq!(
            Record::encode(&entry).unwrap(),
            serde_json::to_string(&entry).unwrap()
        );
    }
}
