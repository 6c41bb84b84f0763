//! Idempotent handlers, with the semantics of AWS Lambda Powertools' idempotency utility.
//!
//! Why it is shaped so:
//! - **One record per idempotency key** (kind `Idempotency`): status `INPROGRESS` or
//!   `COMPLETED`, the hash of the request it was claimed for, the in-progress expiry (ms) and,
//!   once completed, the response. The record's `expires_at` is its TTL (epoch seconds).
//! - **Claiming is a conditional write**, as Powertools' `attribute_not_exists(id) OR expired
//!   OR (INPROGRESS AND in_progress_expiry < now)`: exactly one concurrent caller gets
//!   [`Claim::New`]. A live in-progress duplicate is refused ([`Claim::InProgress`]), not
//!   waited on; one whose handler died (in-progress expiry passed) can be taken over.
//! - **A key reused with another request is refused** ([`Claim::PayloadMismatch`]): the hash
//!   of the canonical request is stored and compared. The refusal carries the key's reference,
//!   so the caller can say what the key holds, and whether the key's first request may still
//!   be running (its claim live): what it holds may not be made yet.
//! - **A claim carries a reference** chosen once, at the first claim of a key (e.g. the
//!   order number a `unifiedOrder` will create), and kept when an abandoned claim is taken
//!   over: a retry works on what the earlier attempt may have begun instead of starting a
//!   second one. An abandoned claim is taken over only by the same request; another request
//!   under that key is [`Claim::PayloadMismatch`].
//! - **Out of the indexes.** Nothing lists idempotency records — they are read by key — so
//!   they carry no `status` or `owner`. With a status every record sat in one partition of
//!   DynamoDB's status index (`idem#INPROGRESS`, then `idem#COMPLETED`), and each order's
//!   claim and completion wrote there too: two index writes per order into one partition,
//!   whose throughput (about 1,000 writes a second) throttles the table's own writes once
//!   it is reached — a cap on orders a second that no scaling lifts.
//! - **A failed handler either deletes its record or abandons it.** [`release`] when it
//!   wrote nothing that a retry must find: the next claim starts afresh, with a new
//!   reference. [`abandon`] when it may have written (a store error whose write may have
//!   been applied, a result it could not record): the record and its reference stay, and a
//!   retry takes it over at once and resumes.

use super::{Expect, Kind, Record, Store, StoreError, Write};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How many times a claim re-reads after losing a race before reporting `InProgress`.
const CLAIM_ROUNDS: usize = 4;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum Status {
    Inprogress,
    Completed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct IdemBody {
    status: Status,
    /// Hex sha256 of the canonical request.
    validation: String,
    /// Epoch ms after which an in-progress claim may be taken over.
    in_progress_expiry_ms: i64,
    /// The response (JSON) once completed.
    #[serde(default)]
    data: Option<String>,
    /// What the first claim chose for this key (see [`claim`]); absent in records written
    /// before references existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reference: Option<String>,
}

/// The outcome of [`claim`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The caller owns the key: run the handler with `reference`, then [`complete`],
    /// [`release`] or [`abandon`]. `reference` is the one this claim offered, or — when an
    /// earlier claim of the same request was taken over — the one that claim stored: then an
    /// earlier attempt may have begun with it, and the handler resumes from it.
    New { reference: String },
    /// Already done: answer with this response (JSON) again.
    Completed(String),
    /// Another invocation is running it now: refuse (e.g. HTTP 409), the client retries.
    InProgress,
    /// The key was used for a different request: the reference its first claim chose (absent
    /// in records written before references existed), so the caller can say what the key
    /// holds (e.g. the order it made). `running`: that request's claim is live in progress —
    /// it may still be making what the reference names (e.g. the order not written yet).
    PayloadMismatch {
        reference: Option<String>,
        running: bool,
    },
}

/// Hex sha256 of `canonical` (the request as canonical bytes).
pub fn payload_hash(canonical: &[u8]) -> String {
    hex::encode(Sha256::digest(canonical))
}

/// `value` as canonical JSON: object keys sorted, no insignificant whitespace, so equal
/// requests hash equally whatever order their fields arrived in.
pub fn canonical_json(value: &serde_json::Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String(k.clone()).to_string());
                out.push(':');
                if let Some(v) = map.get(k) {
                    write_canonical(v, out);
                }
            }
            out.push('}');
        }
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// [`payload_hash`] of [`canonical_json`].
pub fn json_hash(value: &serde_json::Value) -> String {
    payload_hash(canonical_json(value).as_bytes())
}

fn record(key: &str, body: &IdemBody, version: u64, expires_at: i64) -> Result<Record, StoreError> {
    // No `status` or `owner`: kept out of the indexes (see the module docs).
    let mut rec = Record::new(Kind::Idempotency, key, Record::encode(body)?);
    rec.version = version;
    rec.expires_at = Some(expires_at);
    Ok(rec)
}

/// Claims `key` for a request with `payload_hash`, offering `reference` (see [`Claim::New`]).
/// The record lives `ttl_secs` from `now_ms`; an in-progress claim may be taken over after
/// `in_progress_ms` (set it to the handler's timeout), or at once once [`abandon`]ed.
pub async fn claim(
    store: &dyn Store,
    key: &str,
    payload_hash: &str,
    reference: &str,
    now_ms: i64,
    in_progress_ms: i64,
    ttl_secs: i64,
) -> Result<Claim, StoreError> {
    let mut body = IdemBody {
        status: Status::Inprogress,
        validation: payload_hash.to_owned(),
        in_progress_expiry_ms: now_ms.saturating_add(in_progress_ms),
        data: None,
        reference: Some(reference.to_owned()),
    };
    let expires_at = now_ms.div_euclid(1000).saturating_add(ttl_secs);
    for _ in 0..CLAIM_ROUNDS {
        body.reference = Some(reference.to_owned());
        let (expect, version) = match store.get(Kind::Idempotency, key).await? {
            None => (Expect::Absent, 1),
            Some(rec) => {
                let existing: IdemBody = rec.decode()?;
                let abandoned = existing.status == Status::Inprogress
                    && existing.in_progress_expiry_ms < now_ms;
                if abandoned && existing.reference.is_some() {
                    // What the abandoned attempt began under its reference belongs to its
                    // request: only the same request may resume it.
                    if existing.validation != payload_hash {
                        return Ok(Claim::PayloadMismatch {
                            reference: existing.reference,
                            running: false,
                        });
                    }
                    body.reference = existing.reference;
                } else if !abandoned {
                    return Ok(if existing.validation != payload_hash {
                        Claim::PayloadMismatch {
                            reference: existing.reference,
                            running: existing.status == Status::Inprogress,
                        }
                    } else {
                        match existing.status {
                            Status::Completed => {
                                Claim::Completed(existing.data.unwrap_or_default())
                            }
                            Status::Inprogress => Claim::InProgress,
                        }
                    });
                }
                (Expect::Version(rec.version), rec.version + 1)
            }
        };
        match store
            .write(vec![Write::put(
                record(key, &body, version, expires_at)?,
                expect,
            )])
            .await
        {
            Ok(()) => {
                return Ok(Claim::New {
                    reference: body.reference.unwrap_or_default(),
                })
            }
            // Someone else wrote it between our read and write: look again.
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(Claim::InProgress)
}

/// Records the handler's response for `key`, so duplicates get it back. If the record is gone
/// (expired or released meanwhile) there is nothing to complete and this is a no-op.
pub async fn complete(store: &dyn Store, key: &str, response_json: &str) -> Result<(), StoreError> {
    for _ in 0..CLAIM_ROUNDS {
        let Some(rec) = store.get(Kind::Idempotency, key).await? else {
            tracing::warn!(key, "idempotency record vanished before completion");
            return Ok(());
        };
        let mut body: IdemBody = rec.decode()?;
        body.status = Status::Completed;
        body.data = Some(response_json.to_owned());
        let expires_at = rec.expires_at.unwrap_or(i64::MAX);
        match store
            .write(vec![Write::put(
                record(key, &body, rec.version + 1, expires_at)?,
                Expect::Version(rec.version),
            )])
            .await
        {
            Ok(()) => return Ok(()),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Conflict { index: 0 })
}

/// The handler failed having written nothing a retry must find: forget the in-progress claim
/// (and its reference) so the request can be retried afresh. A completed record is left
/// alone.
pub async fn release(store: &dyn Store, key: &str) -> Result<(), StoreError> {
    let Some(rec) = store.get(Kind::Idempotency, key).await? else {
        return Ok(());
    };
    let body: IdemBody = rec.decode()?;
    if body.status != Status::Inprogress {
        return Ok(());
    }
    match store
        .write(vec![Write::Delete {
            kind: Kind::Idempotency,
            id: key.to_owned(),
            expect: Expect::Version(rec.version),
        }])
        .await
    {
        // Changed meanwhile (completed or taken over): theirs now, leave it.
        Ok(()) | Err(StoreError::Conflict { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The handler failed after it may have written (its store write failed without saying
/// whether it was applied, or its result could not be recorded): keep the in-progress claim
/// with its reference, but let the next claim of the same request take it over at once —
/// rather than after the in-progress expiry — and resume from the reference. A completed
/// record is left alone.
pub async fn abandon(store: &dyn Store, key: &str) -> Result<(), StoreError> {
    let Some(rec) = store.get(Kind::Idempotency, key).await? else {
        return Ok(());
    };
    let mut body: IdemBody = rec.decode()?;
    if body.status != Status::Inprogress {
        return Ok(());
    }
    body.in_progress_expiry_ms = i64::MIN;
    let expires_at = rec.expires_at.unwrap_or(i64::MAX);
    match store
        .write(vec![Write::put(
            record(key, &body, rec.version + 1, expires_at)?,
            Expect::Version(rec.version),
        )])
        .await
    {
        // Changed meanwhile (completed or taken over): theirs now, leave it.
        Ok(()) | Err(StoreError::Conflict { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Claimed and completed, a record names no status or owner, so it is in no index.
    #[tokio::test]
    async fn records_stay_out_of_the_indexes() {
        let store = crate::store::sqlite::SqliteStore::memory().unwrap();
        let now = crate::time::Clock::default().now_ms();
        let claimed = claim(&store, "k1", "h", "ORDER1", now, 30_000, 3_600)
            .await
            .unwrap();
        assert!(matches!(claimed, Claim::New { .. }), "{claimed:?}");
        let rec = store.get(Kind::Idempotency, "k1").await.unwrap().unwrap();
        assert_eq!((rec.status, rec.owner), (None, None));
        complete(&store, "k1", "{}").await.unwrap();
        let rec = store.get(Kind::Idempotency, "k1").await.unwrap().unwrap();
        assert_eq!((&rec.status, &rec.owner), (&None, &None));
        let body: IdemBody = rec.decode().unwrap();
        assert!(body.status == Status::Completed);
    }

    #[test]
    fn canonical_json_sorts_keys() {
        let a = serde_json::json!({"b": 1, "a": [ {"y": "é", "x": null} ]});
        assert_eq!(canonical_json(&a), r#"{"a":[{"x":null,"y":"é"}],"b":1}"#);
        let b: serde_json::Value =
            serde_json::from_str(r#"{ "a":[{"x":null,"y":"é"}], "b":1 }"#).unwrap();
        assert_eq!(json_hash(&a), json_hash(&b));
        assert_eq!(json_hash(&a).len(), 64);
    }
}
