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
//!   of the canonical request is stored and compared.
//! - **A failed handler deletes its record** ([`release`]) so the caller may retry.

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
}

/// The outcome of [`claim`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The caller owns the key: run the handler, then [`complete`] or [`release`].
    New,
    /// Already done: answer with this response (JSON) again.
    Completed(String),
    /// Another invocation is running it now: refuse (e.g. HTTP 409), the client retries.
    InProgress,
    /// The key was used for a different request.
    PayloadMismatch,
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
    let mut rec = Record::new(Kind::Idempotency, key, Record::encode(body)?);
    rec.version = version;
    rec.status = Some(
        match body.status {
            Status::Inprogress => "INPROGRESS",
            Status::Completed => "COMPLETED",
        }
        .to_owned(),
    );
    rec.expires_at = Some(expires_at);
    Ok(rec)
}

/// Claims `key` for a request with `payload_hash`. The record lives `ttl_secs` from `now_ms`;
/// an in-progress claim may be taken over after `in_progress_ms` (set it to the handler's
/// timeout).
pub async fn claim(
    store: &dyn Store,
    key: &str,
    payload_hash: &str,
    now_ms: i64,
    in_progress_ms: i64,
    ttl_secs: i64,
) -> Result<Claim, StoreError> {
    let body = IdemBody {
        status: Status::Inprogress,
        validation: payload_hash.to_owned(),
        in_progress_expiry_ms: now_ms.saturating_add(in_progress_ms),
        data: None,
    };
    let expires_at = now_ms.div_euclid(1000).saturating_add(ttl_secs);
    for _ in 0..CLAIM_ROUNDS {
        let (expect, version) = match store.get(Kind::Idempotency, key).await? {
            None => (Expect::Absent, 1),
            Some(rec) => {
                let existing: IdemBody = rec.decode()?;
                let abandoned = existing.status == Status::Inprogress
                    && existing.in_progress_expiry_ms < now_ms;
                if !abandoned {
                    return Ok(if existing.validation != payload_hash {
                        Claim::PayloadMismatch
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
            Ok(()) => return Ok(Claim::New),
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

/// The handler failed: forget the in-progress claim so the request can be retried. A
/// completed record is left alone.
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
