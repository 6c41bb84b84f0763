//! A small TTL key-value space with compare-and-set, for values every instance shares — above
//! all the WeChat access token, which must be refreshed by one instance at a time (a refresh
//! invalidates the previous token after a grace period).
//!
//! Why it is shaped so: the version of each entry is the CAS token. A refresher reads the
//! entry, fetches a new token and writes it with [`put_if`] naming the version it read; if
//! another instance got there first the write loses (`Ok(false)`) and the refresher uses the
//! winner's value instead of overwriting it. Expired entries are invisible and count as absent.

use super::{Expect, Kind, Record, Store, StoreError, Write};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvEntry {
    pub value: String,
    /// The CAS token for [`put_if`].
    pub version: u64,
    /// Epoch seconds after which the entry no longer exists.
    pub expires_at: i64,
}

pub async fn get(store: &dyn Store, key: &str) -> Result<Option<KvEntry>, StoreError> {
    let Some(rec) = store.get(Kind::Kv, key).await? else {
        return Ok(None);
    };
    let value: String = rec.decode()?;
    Ok(Some(KvEntry {
        value,
        version: rec.version,
        expires_at: rec.expires_at.unwrap_or(i64::MAX),
    }))
}

/// Writes `value` if the live entry still has version `expected` (`None`: if there is no live
/// entry). `Ok(false)` when another writer won.
pub async fn put_if(
    store: &dyn Store,
    key: &str,
    value: &str,
    expires_at_secs: i64,
    expected: Option<u64>,
) -> Result<bool, StoreError> {
    let mut rec = Record::new(Kind::Kv, key, Record::encode(&value)?);
    rec.expires_at = Some(expires_at_secs);
    let expect = match expected {
        None => Expect::Absent,
        Some(v) => {
            rec.version = v + 1;
            Expect::Version(v)
        }
    };
    match store.write(vec![Write::put(rec, expect)]).await {
        Ok(()) => Ok(true),
        Err(StoreError::Conflict { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Writes `value` whatever is there (a fact that a later one replaces, not a lock).
pub async fn put(
    store: &dyn Store,
    key: &str,
    value: &str,
    expires_at_secs: i64,
) -> Result<(), StoreError> {
    let mut rec = Record::new(Kind::Kv, key, Record::encode(&value)?);
    rec.expires_at = Some(expires_at_secs);
    store.write(vec![Write::put(rec, Expect::Any)]).await
}

/// Deletes the entry whatever its version.
pub async fn delete(store: &dyn Store, key: &str) -> Result<(), StoreError> {
    store
        .write(vec![Write::Delete {
            kind: Kind::Kv,
            id: key.to_owned(),
            expect: Expect::Any,
        }])
        .await
}

/// Deletes the entry only if it is still at `version` (e.g. drop a token WeChat rejected
/// without dropping a fresher one). `Ok(false)` if it changed or is gone.
pub async fn delete_if(store: &dyn Store, key: &str, version: u64) -> Result<bool, StoreError> {
    match store
        .write(vec![Write::Delete {
            kind: Kind::Kv,
            id: key.to_owned(),
            expect: Expect::Version(version),
        }])
        .await
    {
        Ok(()) => Ok(true),
        Err(StoreError::Conflict { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}
