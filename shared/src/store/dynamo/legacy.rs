//! Moving index entries out of the partitions they were written to before the indexes were
//! sharded, and then no longer reading those partitions ([`Store::migrate_index`]).
//!
//! Why: every sharded listing also reads its legacy partition (`"{kind}#{status}"`,
//! `"product#all"`), since items written before the sharding stay there until written again —
//! and records in an end state (completed orders, refunded after-sales, dead outbox entries)
//! are never written again. So the schedule moves them, a page at a time, and once every legacy
//! partition has been found empty on passes at least [`SETTLE_MS`] apart, one after another,
//! it records so in `kv` ([`MARK_KEY`]): processes started after that no longer query them.
//!
//! Safety, in order of what could lose a record from a listing:
//! - A move is a `PutItem` of the item exactly as read with its index keys sharded, on the
//!   condition that the item still holds the version, the write token and the legacy key it
//!   was read with: a write made meanwhile (by this binary: sharded; by one from before the
//!   sharding still running during a deploy: a legacy key again) is never overwritten, and
//!   what it wrote is looked at by the next pass.
//! - The mark names the listings it covers; a listing not named keeps reading its legacy
//!   partition. It is read once per process (cached), absent or unreadable meaning "read them".
//! - It is written only when the passes over every partition found nothing live during at
//!   least [`SETTLE_MS`] (30 minutes: far past the longest function timeout, 60 s, and a stack
//!   update), each pass starting within [`MAX_GAP_MS`] of the last one's end: by then no
//!   function of a release from before the sharding is still running. Deploying such a
//!   release again after the mark would lose its writes from listings: `docs/STORAGE.md`
//!   ("Migration") says what to do first.

use super::{
    from_item, gsi_pk, now_secs, s, DynamoStore, Gsi, Item, SkRange, TTL_ATTRIBUTE, VERSION,
    WRITE_TOKEN,
};
use crate::store::{kv, Expect, Index, IndexMigration, Kind, Record, Store, StoreError, Write};
use crate::time::Deadline;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::AttributeValue;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

/// The `kv` entry naming the listings whose legacy partitions were verified empty (a JSON
/// array of [`listing_name`]s). No expiry.
pub const MARK_KEY: &str = "store/legacy_index_migrated";
/// The `kv` entry of the migration's progress ([`State`]).
pub const STATE_KEY: &str = "store/legacy_index";
/// How long the progress is kept between runs; lost, a pass starts again.
const STATE_TTL_SECS: i64 = 30 * 86_400;
/// Entries read from a legacy partition per `Query`.
const PAGE: usize = 100;
/// Moves under way at once: ≤ ~400 writes a second on a legacy partition (each move deletes
/// its entry there) at DynamoDB's ~10 ms a write, well under a partition's ~1,000.
const MOVES_AT_ONCE: usize = 4;
/// How long the legacy partitions must have been found empty, pass after pass, before the
/// mark: from the start of the first such pass to the start of the last.
pub const SETTLE_MS: i64 = 30 * 60_000;
/// The longest time between the end of one empty pass and the start of the next for them to
/// count as one streak (the schedule runs every 5 minutes; a longer gap means the schedule —
/// and maybe this release — was not running).
pub const MAX_GAP_MS: i64 = 15 * 60_000;

/// A listing's name in the mark: its index and legacy partition, e.g. `gsi2:order#PAID`.
pub(super) fn listing_name(gsi: Gsi, legacy_partition: &str) -> String {
    format!("{}:{legacy_partition}", gsi.name())
}

/// The listings named in the mark (empty when there is none or it does not read).
pub(super) async fn read_mark(
    store: &DynamoStore,
) -> Result<(Option<u64>, HashSet<String>), StoreError> {
    let Some(entry) = kv::get(store, MARK_KEY).await? else {
        return Ok((None, HashSet::new()));
    };
    match serde_json::from_str::<Vec<String>>(&entry.value) {
        Ok(names) => Ok((Some(entry.version), names.into_iter().collect())),
        Err(e) => {
            tracing::warn!(key = MARK_KEY, error = %e, "unreadable legacy-index mark; legacy partitions are read");
            Ok((Some(entry.version), HashSet::new()))
        }
    }
}

/// The progress of the migration, kept in `kv` between runs.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct State {
    /// The pass under way: the listing it is at ([`listing_name`]) and the index sort key of
    /// the last entry it looked at there. `None`: no pass under way.
    #[serde(default)]
    at: Option<String>,
    #[serde(default)]
    after: Option<String>,
    #[serde(default)]
    pass_started_ms: i64,
    /// Live entries the pass under way found in legacy partitions (moved or not).
    #[serde(default)]
    pass_found: u64,
    /// The start of the first of the passes in a row that found nothing, and the end of the
    /// last of them.
    #[serde(default)]
    clean_since_ms: Option<i64>,
    #[serde(default)]
    clean_until_ms: Option<i64>,
}

/// One legacy partition to empty.
struct Target {
    kind: Kind,
    gsi: Gsi,
    /// The status (or owner) of the listing.
    key: String,
    /// The legacy partition, `"{kind}#{key}"`.
    partition: String,
    name: String,
}

impl Target {
    /// `None` for a listing that is not sharded (it has no legacy partition).
    fn of(kind: Kind, index: &Index) -> Option<Target> {
        let (gsi, key) = match index {
            Index::Owner(owner) => (Gsi::Owner, owner),
            Index::Status(status) => (Gsi::Status, status),
        };
        if !gsi.sharded(kind) {
            return None;
        }
        let partition = gsi_pk(kind, key);
        Some(Target {
            kind,
            gsi,
            key: key.clone(),
            name: listing_name(gsi, &partition),
            partition,
        })
    }
}

/// One step: see [`Store::migrate_index`] and the module doc.
pub(super) async fn step(
    store: &DynamoStore,
    listings: &[(Kind, Index)],
    now_ms: i64,
    deadline: Deadline,
) -> Result<(IndexMigration, bool), StoreError> {
    let mut report = IndexMigration::default();
    let (mark_version, marked) = read_mark(store).await?;
    let mut seen = HashSet::new();
    let targets: Vec<Target> = listings
        .iter()
        .filter_map(|(kind, index)| Target::of(*kind, index))
        .filter(|t| !marked.contains(&t.name) && seen.insert(t.name.clone()))
        .collect();
    if targets.is_empty() {
        report.migrated = true;
        return Ok((report, true));
    }
    let (mut state_version, mut state) = match kv::get(store, STATE_KEY).await? {
        Some(entry) => (
            Some(entry.version),
            serde_json::from_str::<State>(&entry.value).unwrap_or_else(|e| {
                tracing::warn!(key = STATE_KEY, error = %e, "unreadable legacy-index progress; a pass starts again");
                State::default()
            }),
        ),
        None => (None, State::default()),
    };
    let mut at = match state
        .at
        .as_ref()
        .and_then(|name| targets.iter().position(|t| &t.name == name))
    {
        Some(at) => at,
        None => {
            // A new pass (or the listings changed under the one under way: start again).
            state.at = None;
            state.after = None;
            state.pass_started_ms = now_ms;
            state.pass_found = 0;
            0
        }
    };
    loop {
        if deadline.passed() {
            save(store, &mut state_version, &state).await?;
            return Ok((report, false));
        }
        let target = &targets[at];
        state.at = Some(target.name.clone());
        let range = SkRange {
            lower: state.after.clone().map(|after| (after, false)),
            upper: None,
        };
        let (items, more) = store
            .query_partition(target.gsi, &range, &target.partition, None, PAGE, false)
            .await?;
        let now = now_secs();
        let mut live = Vec::new();
        for item in items {
            match from_item(target.kind, &item) {
                Ok(record) => {
                    state.after = Some(super::gsi_sk(record.sort, &record.id));
                    let listed = match target.gsi {
                        Gsi::Owner => record.owner.as_deref(),
                        Gsi::Status => record.status.as_deref(),
                    };
                    // Expired: invisible to listings, and TTL deletes it. Another key: a shard
                    // of another listing whose name looks like this legacy partition.
                    if !record.is_expired(now) && listed == Some(target.key.as_str()) {
                        live.push((record, item));
                    }
                }
                Err(e) => {
                    // Stays where it is, so the partition is not empty: no mark while it is.
                    tracing::error!(partition = target.partition, error = %e, "legacy index entry unreadable; left in place");
                    state.pass_found += 1;
                    report.found += 1;
                    if let Some(AttributeValue::S(sk)) = item.get(target.gsi.sk_attr()) {
                        state.after = Some(sk.clone());
                    }
                }
            }
        }
        state.pass_found += live.len() as u64;
        report.found += live.len();
        let moves = futures::stream::iter(live)
            .map(|(record, item)| move_entry(store, target, record, item))
            .buffer_unordered(MOVES_AT_ONCE)
            .collect::<Vec<_>>()
            .await;
        for moved in moves {
            if moved? {
                report.moved += 1;
            }
        }
        if more.is_none() {
            at += 1;
            state.after = None;
        }
        if at == targets.len() {
            report.passes += 1;
            let clean = state.pass_found == 0;
            let started = state.pass_started_ms;
            tracing::info!(
                found = state.pass_found,
                "legacy index: a pass over every legacy partition ended"
            );
            let mut mark = false;
            if clean {
                let since = match (state.clean_since_ms, state.clean_until_ms) {
                    (Some(since), Some(until)) if started - until <= MAX_GAP_MS => since,
                    _ => started,
                };
                state.clean_since_ms = Some(since);
                state.clean_until_ms = Some(now_ms);
                mark = started - since >= SETTLE_MS;
            } else {
                state.clean_since_ms = None;
                state.clean_until_ms = None;
            }
            state.at = None;
            state.after = None;
            if mark {
                let mut names: BTreeSet<String> = marked.iter().cloned().collect();
                names.extend(targets.iter().map(|t| t.name.clone()));
                if write_mark(store, mark_version, &names).await? {
                    tracing::info!(listings = names.len(), "legacy index partitions verified empty; marked (listings stop reading them from the next cold start)");
                    report.migrated = true;
                    let _ = kv::delete(store, STATE_KEY).await;
                    return Ok((report, true));
                }
            }
            save(store, &mut state_version, &state).await?;
            return Ok((report, true));
        }
        if !save(store, &mut state_version, &state).await? {
            // Another run is at it (two schedule runs at once): leave it to that one.
            return Ok((report, true));
        }
    }
}

/// Saves the progress if nobody else did meanwhile; `false` if another run did.
async fn save(
    store: &DynamoStore,
    version: &mut Option<u64>,
    state: &State,
) -> Result<bool, StoreError> {
    let value = serde_json::to_string(state)
        .map_err(|e| StoreError::Backend(format!("encode legacy-index progress: {e}")))?;
    let expires = now_secs() + STATE_TTL_SECS;
    if kv::put_if(store, STATE_KEY, &value, expires, *version).await? {
        *version = Some(version.map_or(1, |v| v + 1));
        Ok(true)
    } else {
        Ok(false)
    }
}

/// Writes the mark naming `names` (no expiry), if it is still at `version`.
async fn write_mark(
    store: &DynamoStore,
    version: Option<u64>,
    names: &BTreeSet<String>,
) -> Result<bool, StoreError> {
    let value = serde_json::to_string(names)
        .map_err(|e| StoreError::Backend(format!("encode legacy-index mark: {e}")))?;
    let mut record = Record::new(Kind::Kv, MARK_KEY, Record::encode(&value)?);
    let expect = match version {
        None => Expect::Absent,
        Some(v) => {
            record.version = v + 1;
            Expect::Version(v)
        }
    };
    match store.write(vec![Write::put(record, expect)]).await {
        Ok(()) => Ok(true),
        Err(StoreError::Conflict { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Puts `item` (`record` as read from `target`'s legacy partition) back with its index keys
/// sharded, unless it changed since it was read: `true` when moved, `false` when it had
/// changed (the next pass looks at what it became).
async fn move_entry(
    store: &DynamoStore,
    target: &Target,
    record: Record,
    item: Item,
) -> Result<bool, StoreError> {
    let mut moved = item.clone();
    for (gsi, key) in [(Gsi::Owner, &record.owner), (Gsi::Status, &record.status)] {
        if let Some(key) = key {
            if gsi.sharded(record.kind) {
                moved.insert(
                    gsi.pk_attr().into(),
                    s(gsi.partition(record.kind, key, &record.id)),
                );
            }
        }
    }
    let mut names = HashMap::from([
        ("#g".to_string(), target.gsi.pk_attr().to_string()),
        ("#v".to_string(), VERSION.to_string()),
        ("#wt".to_string(), WRITE_TOKEN.to_string()),
    ]);
    let mut values = HashMap::from([(":g".to_string(), s(target.partition.clone()))]);
    let mut condition = "#g = :g".to_string();
    match item.get(VERSION) {
        Some(v) => {
            condition.push_str(" AND #v = :v");
            values.insert(":v".into(), v.clone());
        }
        None => return Ok(false),
    }
    // The write that made the item: its token, or none (written before tokens existed).
    match item.get(WRITE_TOKEN) {
        Some(token) => {
            condition.push_str(" AND #wt = :wt");
            values.insert(":wt".into(), token.clone());
        }
        None => condition.push_str(" AND attribute_not_exists(#wt)"),
    }
    // Not brought back to life if it expired meanwhile (TTL would delete it anyway).
    if item.contains_key(TTL_ATTRIBUTE) {
        condition.push_str(" AND #ttl > :now");
        names.insert("#ttl".into(), TTL_ATTRIBUTE.into());
        values.insert(":now".into(), super::n(now_secs()));
    }
    let sent = store
        .client
        .put_item()
        .table_name(&store.table)
        .set_item(Some(moved))
        .condition_expression(condition)
        .set_expression_attribute_names(Some(names))
        .set_expression_attribute_values(Some(values))
        .send()
        .await;
    match sent {
        Ok(_) => Ok(true),
        Err(e)
            if matches!(
                e.code(),
                Some("ConditionalCheckFailedException" | "TransactionConflictException")
            ) =>
        {
            tracing::debug!(
                kind = record.kind.as_str(),
                id = record.id,
                "legacy index entry changed meanwhile; the next pass looks again"
            );
            Ok(false)
        }
        Err(e) => Err(super::sdk_err("PutItem", &e)),
    }
}

/// The listings of the mark, as a process read it once (see `DynamoStore::legacy_done`).
pub(super) type Marked = Arc<HashSet<String>>;
