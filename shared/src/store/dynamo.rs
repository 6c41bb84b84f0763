//! The DynamoDB backend of [`Store`] (production).
//!
//! # Single-table design
//!
//! Every record of every [`Kind`] is one item of one table (see `docs/STORAGE.md`):
//!
//! | attribute | type | content |
//! |---|---|---|
//! | `pk` | S | table hash key, `"{kind}#{id}"` — kinds never collide |
//! | `kind`, `id` | S | the parts of the key, so items decode without parsing `pk` |
//! | `v` | N | [`Record::version`]; every conditional update tests it |
//! | `body` | S | the JSON body owned by the layer above |
//! | `sort` | N | [`Record::sort`], kept even when the record is in no index |
//! | `gsi1pk`, `gsi1sk` | S, S | index `gsi1` (by owner): `"{kind}#{owner}"` (products: `"product#all#{shard}"`), only when `owner` is set |
//! | `gsi2pk`, `gsi2sk` | S, S | index `gsi2` (by status): `"{kind}#{status}#{shard}"`, only when `status` is set |
//! | `ttl` | N | [`Record::expires_at`] (epoch seconds), the table's TTL attribute |
//! | `wt` | S | the write token of the `write` call that wrote the item (not part of [`Record`]) |
//!
//! The GSI sort keys are strings `"{sortkey:020}#{id}"` where `sortkey` is `sort` with its sign
//! bit flipped (`sort as u64 ^ 1 << 63`): that maps `i64` onto `u64` preserving order, so negative
//! sorts order correctly, and 20 zero-padded digits hold any `u64`. Comparing those strings
//! byte-wise — as DynamoDB does — orders by (`sort`, `id`), the order the [`Store`] contract
//! promises. A numeric sort key would leave ties between equal `sort`s in no defined order, and
//! pagination over such ties would be unreliable.
//!
//! Sparse indexes: an item without `owner` has no `gsi1*` attributes and is absent from `gsi1`.
//!
//! Sharded index keys: one GSI partition takes ~1,000 writes a second and a throttled GSI
//! throttles the table, so the status index (and the products' shared owner) spreads each key
//! over [`SHARDS`] partitions by a stable hash of the id ([`shard_of`]). A query reads them all
//! and the legacy unsharded partition (items written before, until written again) at once and
//! merges them by the sort key, which orders by (`sort`, `id`) in every partition alike. The
//! schedule moves what is left in legacy partitions and, once they are verified empty, marks
//! them so; listings then skip them (`legacy`, [`Store::migrate_index`]).
//!
//! # Semantics
//!
//! - `get` is a strongly consistent `GetItem`. Expired items (`ttl <= now`) are treated as
//!   absent: DynamoDB deletes TTL-expired items lazily (typically within days), and moto never.
//! - `write` of one item is a conditional `PutItem`/`DeleteItem` (a lone `Check` is a one-item
//!   transaction); several are one `TransactWriteItems` (at most 100). [`Expect`] becomes a
//!   condition expression that also treats an expired item as absent. The first item whose
//!   cancellation reason is `ConditionalCheckFailed` becomes [`StoreError::Conflict`]; a
//!   transaction cancelled only by `TransactionConflict` (a concurrent write to one of its
//!   items; nothing written), like a single `PutItem`/`DeleteItem` refused with
//!   `TransactionConflictException` (its item is in a transaction under way), is sent again
//!   after a short random backoff, up to 4 attempts; any other failure is
//!   [`StoreError::Backend`].
//! - Throttling (no capacity right now: an on-demand table scaling up, a provisioned one over
//!   its capacity; nothing written, so sending again is safe). A transaction cancelled with a
//!   capacity reason (`ThrottlingError`, `ProvisionedThroughputExceeded`, alone or beside
//!   `TransactionConflict`) — which the SDK never retries — is sent again after a longer
//!   jittered backoff (50/100/200/400 ms plus up to as much again), up to 5 attempts, counted
//!   apart from contention's: at most 1.5 s of waiting, under [`OPERATION_TIMEOUT`]. A
//!   `ConditionalCheckFailed` anywhere still decides (`Conflict`); throttling that outlasts the
//!   attempts is `Backend` saying "throttled", never `Conflict`. A conditional delete (its
//!   retries are ours, below) throttled is sent again the same way, and a throttled attempt
//!   never counts as one that may have deleted the item. Other single-item requests
//!   (`PutItem`, `GetItem`, `Query`) keep the SDK's standard retry mode (3 attempts, the
//!   throttled ones after up to 1 s then 2 s): that already fills the 3 s operation timeout,
//!   and more attempts would only be cut by it, reporting "timed out" instead of "throttled".
//!   When its attempts are spent the error is `Backend("dynamodb {op}: throttled: {code}: …")`.
//! - A write the SDK retried after DynamoDB applied it (the answer was lost) fails its condition
//!   on our own write. That is success, not a conflict: a put (or transaction) whose item
//!   carries this call's write token, or a delete whose item is gone after more than one
//!   attempt (see `condition_failed`). Transactions also carry the SDK's automatic
//!   `ClientRequestToken`, which makes their retries idempotent in AWS.
//! - `query` reads `gsi1`/`gsi2`. **GSI reads are eventually consistent** in AWS: a record can
//!   show up late or show a stale status. Callers that act on what a query returned (the outbox
//!   claiming due entries, sweeps) must re-check with a conditional write on the version they
//!   saw — which they do anyway, since every state change is a conditional write. Expired records
//!   are dropped client-side, so a DynamoDB page may yield fewer records than requested; the
//!   query reads on until it has `limit` records or the listing is exhausted. The cursor is the
//!   base64 (URL-safe) JSON of the index key of the last record returned (with the listing's
//!   unsharded hash key), checked against the query it is used with; the next page reads every
//!   partition from after its sort key.

mod legacy;

pub use legacy::{
    MARK_KEY as LEGACY_INDEX_MARK, MAX_GAP_MS as LEGACY_INDEX_MAX_GAP_MS,
    SETTLE_MS as LEGACY_INDEX_SETTLE_MS,
};

use super::{
    now_secs, Expect, Index, IndexMigration, Kind, Page, Query, Record, Store, StoreError, Write,
};
use async_trait::async_trait;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, ConditionCheck, Delete, GlobalSecondaryIndex,
    KeySchemaElement, KeyType, Projection, ProjectionType, Put,
    ReturnValuesOnConditionCheckFailure, ScalarAttributeType, StreamSpecification, StreamViewType,
    TableStatus, TimeToLiveSpecification, TransactWriteItem,
};
use aws_sdk_dynamodb::Client;
use aws_smithy_types::error::display::DisplayErrorContext;
use base64::Engine as _;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;

/// Table hash key.
const PK: &str = "pk";
const KIND: &str = "kind";
const ID: &str = "id";
const VERSION: &str = "v";
const BODY: &str = "body";
const SORT: &str = "sort";
/// The table's TTL attribute (epoch seconds).
pub const TTL_ATTRIBUTE: &str = "ttl";
/// Index by owner.
pub const GSI_OWNER: &str = "gsi1";
/// Index by status.
pub const GSI_STATUS: &str = "gsi2";
const GSI1_PK: &str = "gsi1pk";
const GSI1_SK: &str = "gsi1sk";
const GSI2_PK: &str = "gsi2pk";
const GSI2_SK: &str = "gsi2sk";
/// The token of the `write` call that wrote the item (random, one per call): how a write
/// whose condition failed on the SDK's retry recognises its own earlier attempt (below).
const WRITE_TOKEN: &str = "wt";
/// Length of a write token: 20 alphanumerics, ~119 bits.
const WRITE_TOKEN_LEN: usize = 20;

/// Largest batch `TransactWriteItems` accepts.
const MAX_BATCH: usize = 100;
/// Largest page asked of DynamoDB in one `Query` call.
const MAX_QUERY_PAGE: usize = 1000;

/// Partitions a sharded index key is spread over: `"{kind}#{key}#{shard}"`, `shard` in
/// `0..SHARDS` ([`shard_of`] the record's id). One GSI partition takes about 1,000 writes a
/// second, and a throttled GSI throttles the table's writes; 8 partitions give each status
/// ~8,000 writes/s, for 9 `Query` calls (8 shards and the legacy partition, until `legacy`
/// marks it empty) per page of a
/// listing that only background work and the admin read (`docs/STORAGE.md`, "Sharded index
/// keys"). May be raised, never lowered: a query reads shards `0..SHARDS`, so entries written
/// under a smaller count are still read (and decoded: see [`unshard`]).
pub const SHARDS: u32 = 8;

type Item = HashMap<String, AttributeValue>;

/// [`Store`] on one DynamoDB table. Cheap to clone (the SDK client is shared).
#[derive(Clone, Debug)]
pub struct DynamoStore {
    client: Client,
    /// The same client with the SDK's automatic retries off, for conditional deletes: they
    /// leave nothing to recognise an earlier attempt by, so `write_one` retries them itself and knows whether an attempt before the last may have applied.
    /// (Counting the SDK's attempts with a per-request interceptor instead cost 110 KB of
    /// binary size: the SDK's customised-operation path is generic per operation.)
    client_once: Client,
    table: String,
    /// The listings whose legacy partitions the mark says are empty, read at the first
    /// sharded query of the process and kept ([`DynamoStore::legacy_done`]).
    legacy_done: std::sync::Arc<tokio::sync::OnceCell<legacy::Marked>>,
}

/// Attempts of a conditional delete (ours, the SDK's retries being off for it).
const DELETE_ATTEMPTS: u32 = 3;

/// How long one DynamoDB request may take, connect included. DynamoDB answers in
/// milliseconds; a response that has not come after 2 s is a stalled connection or an outage,
/// and waiting on it only spends the function's timeout. The SDK then retries (a timed-out
/// write may have been applied: see `condition_failed`).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one operation may take, its retries included. Without it a stalled response
/// waited for the Lambda timeout: payCallback (5 s) died without answering WeChat or counting
/// the failure. 3 s leaves every function — payCallback's 5 s the shortest — time to fail
/// cleanly (answer `FAIL`, count it, release a claim) after one stalled call.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(3);

/// A client like `client` that makes each request once.
fn without_retries(client: &Client) -> Client {
    Client::from_conf(
        client
            .config()
            .to_builder()
            .retry_config(aws_smithy_types::retry::RetryConfig::disabled())
            .build(),
    )
}

impl DynamoStore {
    /// A store on `table`, configured from the environment as Lambda sets it (see
    /// [`crate::aws`]): region from `AWS_REGION` (or `AWS_DEFAULT_REGION`), credentials from
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`, endpoint override
    /// from `AWS_ENDPOINT_URL_DYNAMODB` (or `AWS_ENDPOINT_URL`). Requests go through
    /// [`crate::aws::http::ReqwestHttpClient`].
    ///
    /// With `endpoint` (a local DynamoDB-compatible server such as moto), requests go there;
    /// unless the environment sets them, the region is `us-east-1` and the credentials are a
    /// dummy static pair (local servers accept any signature).
    pub async fn connect(table: &str, endpoint: Option<&str>) -> Result<DynamoStore, StoreError> {
        use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
        if table.is_empty() {
            return Err(StoreError::Backend("dynamodb: empty table name".into()));
        }
        let local = endpoint.is_some();
        let region = crate::aws::region_from_env()
            .or_else(|| local.then(|| "us-east-1".to_owned()))
            .ok_or_else(|| {
                StoreError::Backend("dynamodb: no AWS region configured (set AWS_REGION)".into())
            })?;
        let credentials =
            match crate::aws::credentials_from_env() {
                Some(c) => c,
                None if local => Credentials::new(
                    "wxshop-local",
                    "wxshop-local",
                    None,
                    None,
                    "wxshop-local-static",
                ),
                None => return Err(StoreError::Backend(
                    "dynamodb: no AWS credentials in the environment (set AWS_ACCESS_KEY_ID and \
                     AWS_SECRET_ACCESS_KEY)"
                        .into(),
                )),
            };
        let http = crate::aws::http::ReqwestHttpClient::new().map_err(|e| {
            StoreError::Backend(format!("dynamodb: cannot build the HTTP client: {e}"))
        })?;
        let mut config = aws_sdk_dynamodb::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region))
            .credentials_provider(credentials)
            .http_client(http)
            .timeout_config(
                aws_smithy_types::timeout::TimeoutConfig::builder()
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .operation_timeout(OPERATION_TIMEOUT)
                    .build(),
            );
        if let Some(url) = endpoint
            .map(str::to_owned)
            .or_else(|| crate::aws::endpoint_from_env("DYNAMODB"))
        {
            config = config.endpoint_url(url);
        }
        let client = Client::from_conf(config.build());
        Ok(DynamoStore {
            client_once: without_retries(&client),
            client,
            table: table.to_string(),
            legacy_done: Default::default(),
        })
    }

    /// A store over an already configured client.
    pub fn from_client(client: Client, table: impl Into<String>) -> Self {
        DynamoStore {
            client_once: without_retries(&client),
            client,
            table: table.into(),
            legacy_done: Default::default(),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Creates the table as production has it (for tests and local servers; in AWS the SAM
    /// template creates it): on-demand billing, `gsi1`/`gsi2` projecting all attributes, a
    /// stream of new images (feeding `orderSync`), TTL on `ttl`. An existing table is kept; TTL
    /// is (re-)enabled either way. Waits until the table is active.
    pub async fn create_table(&self) -> Result<(), StoreError> {
        let s = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(build_err)
        };
        let key = |name: &str, key_type: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(key_type)
                .build()
                .map_err(build_err)
        };
        let gsi = |name: &str, hash: &str, range: &str| -> Result<_, StoreError> {
            GlobalSecondaryIndex::builder()
                .index_name(name)
                .key_schema(key(hash, KeyType::Hash)?)
                .key_schema(key(range, KeyType::Range)?)
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::All)
                        .build(),
                )
                .build()
                .map_err(build_err)
        };
        let created = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(s(PK)?)
            .attribute_definitions(s(GSI1_PK)?)
            .attribute_definitions(s(GSI1_SK)?)
            .attribute_definitions(s(GSI2_PK)?)
            .attribute_definitions(s(GSI2_SK)?)
            .key_schema(key(PK, KeyType::Hash)?)
            .global_secondary_indexes(gsi(GSI_OWNER, GSI1_PK, GSI1_SK)?)
            .global_secondary_indexes(gsi(GSI_STATUS, GSI2_PK, GSI2_SK)?)
            .stream_specification(
                StreamSpecification::builder()
                    .stream_enabled(true)
                    .stream_view_type(StreamViewType::NewImage)
                    .build()
                    .map_err(build_err)?,
            )
            .send()
            .await;
        match created {
            Ok(_) => {}
            Err(e) if e.code() == Some("ResourceInUseException") => {}
            Err(e) => return Err(sdk_err("CreateTable", &e)),
        }
        self.wait_active().await?;
        let ttl = self
            .client
            .update_time_to_live()
            .table_name(&self.table)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .enabled(true)
                    .attribute_name(TTL_ATTRIBUTE)
                    .build()
                    .map_err(build_err)?,
            )
            .send()
            .await;
        match ttl {
            Ok(_) => Ok(()),
            // Already enabled on an existing table.
            Err(e) if e.message().is_some_and(|m| m.contains("already enabled")) => Ok(()),
            Err(e) => Err(sdk_err("UpdateTimeToLive", &e)),
        }
    }

    /// Deletes the table (tests).
    pub async fn delete_table(&self) -> Result<(), StoreError> {
        self.client
            .delete_table()
            .table_name(&self.table)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| sdk_err("DeleteTable", &e))
    }

    async fn wait_active(&self) -> Result<(), StoreError> {
        for _ in 0..120 {
            let out = self
                .client
                .describe_table()
                .table_name(&self.table)
                .send()
                .await
                .map_err(|e| sdk_err("DescribeTable", &e))?;
            if out.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(StoreError::Backend(format!(
            "dynamodb: table {} did not become active",
            self.table
        )))
    }

    async fn write_one(&self, write: Write, now: i64, token: &str) -> Result<(), StoreError> {
        match write {
            Write::Put { record, expect } => {
                let cond = Condition::of(expect, now);
                let item = written_item(&record, token);
                let mut req = self
                    .client
                    .put_item()
                    .table_name(&self.table)
                    .set_item(Some(item));
                if let Some(c) = cond {
                    req = req
                        .condition_expression(c.expression)
                        .set_expression_attribute_names(Some(c.names))
                        .set_expression_attribute_values(Some(c.values))
                        .return_values_on_condition_check_failure(
                            ReturnValuesOnConditionCheckFailure::AllOld,
                        );
                }
                let mut attempt = 1;
                loop {
                    let Err(e) = req.clone().send().await else {
                        return Ok(());
                    };
                    match e.as_service_error() {
                        Some(PutItemError::ConditionalCheckFailedException(failed)) => {
                            return condition_failed(Refused::Put(failed.item()), token)
                        }
                        // The item is in a transaction under way: refused, nothing written.
                        Some(PutItemError::TransactionConflictException(_))
                            if attempt < CONTENTION_ATTEMPTS =>
                        {
                            contended("PutItem", attempt).await;
                            attempt += 1;
                        }
                        _ => return Err(sdk_err("PutItem", &e)),
                    }
                }
            }
            Write::Delete { kind, id, expect } => {
                let cond = Condition::of(expect, now);
                let mut req = self
                    .client
                    .delete_item()
                    .table_name(&self.table)
                    .key(PK, s(pk(kind, &id)));
                if let Some(c) = cond {
                    req = req
                        .condition_expression(c.expression)
                        .set_expression_attribute_names(Some(c.names))
                        .set_expression_attribute_values(Some(c.values))
                        .return_values_on_condition_check_failure(
                            ReturnValuesOnConditionCheckFailure::AllOld,
                        );
                }
                // Attempts that went out, and those refused for contention or for capacity
                // (never applied: they do not count as attempts that may have deleted the
                // item, nor against `DELETE_ATTEMPTS`).
                let mut attempt = 0;
                let mut contended_attempts = 0;
                let mut throttled_attempts = 0;
                loop {
                    let refused_attempts = contended_attempts + throttled_attempts;
                    attempt += 1;
                    let sent = self
                        .client_once
                        .delete_item()
                        .set_table_name(req.get_table_name().clone())
                        .set_key(req.get_key().clone())
                        .set_condition_expression(req.get_condition_expression().clone())
                        .set_expression_attribute_names(
                            req.get_expression_attribute_names().clone(),
                        )
                        .set_expression_attribute_values(
                            req.get_expression_attribute_values().clone(),
                        )
                        .set_return_values_on_condition_check_failure(
                            req.get_return_values_on_condition_check_failure().clone(),
                        )
                        .send()
                        .await;
                    match sent {
                        Ok(_) => return Ok(()),
                        Err(e) => match e.as_service_error() {
                            Some(DeleteItemError::ConditionalCheckFailedException(failed)) => {
                                return condition_failed(
                                    Refused::Delete(failed.item(), attempt - refused_attempts),
                                    token,
                                )
                            }
                            Some(DeleteItemError::TransactionConflictException(_))
                                if contended_attempts + 1 < CONTENTION_ATTEMPTS =>
                            {
                                contended_attempts += 1;
                                contended("DeleteItem", contended_attempts).await;
                            }
                            // Throttled: refused, nothing deleted. The SDK would wait up to
                            // 1 s, 2 s before its retries; ours wait as a throttled
                            // transaction's do (a 25 ms pause used to be all it got).
                            _ if is_throttling(&e)
                                && throttled_attempts + 1 < THROTTLE_ATTEMPTS =>
                            {
                                throttled_attempts += 1;
                                throttled("DeleteItem", throttled_attempts).await;
                            }
                            _ if is_throttling(&e) => return Err(sdk_err("DeleteItem", &e)),
                            _ if attempt - refused_attempts < DELETE_ATTEMPTS && may_retry(&e) => {
                                tokio::time::sleep(Duration::from_millis(25 * u64::from(attempt)))
                                    .await;
                            }
                            _ => return Err(sdk_err("DeleteItem", &e)),
                        },
                    }
                }
            }
            // There is no stand-alone condition check outside a transaction.
            check @ Write::Check { .. } => self.transact(vec![check], now, token).await,
        }
    }

    /// One `TransactWriteItems`. The SDK gives each call a `ClientRequestToken` of its own
    /// (`aws-sdk-dynamodb` fills it in once per operation, before its retry loop), so in AWS a
    /// retry of a transaction that was applied succeeds without writing again; the write token
    /// on the items covers the same case where the token is not honoured (moto) or has expired.
    async fn transact(&self, writes: Vec<Write>, now: i64, token: &str) -> Result<(), StoreError> {
        let mut items = Vec::with_capacity(writes.len());
        for write in writes {
            items.push(self.transact_item(write, now, token)?);
        }
        // Cancellations for contention and for capacity, counted apart: each has its own
        // bound, so the attempts are at most `CONTENTION_ATTEMPTS + THROTTLE_ATTEMPTS - 1`.
        let mut contended_attempts = 1;
        let mut throttled_attempts = 1;
        loop {
            let Err(e) = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .send()
                .await
            else {
                return Ok(());
            };
            let cancellation = match e.as_service_error() {
                Some(TransactWriteItemsError::TransactionCanceledException(tc)) => {
                    tc.cancellation_reasons()
                }
                _ => &[],
            };
            let reasons: Vec<Option<&str>> = cancellation.iter().map(|r| r.code()).collect();
            match cancelled_by(&reasons) {
                Cancelled::Condition(index) => {
                    let items = cancellation.iter().map(|r| r.item()).collect();
                    return condition_failed(Refused::Transaction { items, index }, token);
                }
                Cancelled::Contention if contended_attempts < CONTENTION_ATTEMPTS => {
                    tracing::debug!(
                        attempt = contended_attempts,
                        "transaction cancelled by contention; retrying"
                    );
                    tokio::time::sleep(contention_backoff(contended_attempts)).await;
                    contended_attempts += 1;
                }
                Cancelled::Throttled if throttled_attempts < THROTTLE_ATTEMPTS => {
                    throttled("TransactWriteItems", throttled_attempts).await;
                    throttled_attempts += 1;
                }
                Cancelled::Throttled => {
                    return Err(StoreError::Backend(format!(
                        "dynamodb TransactWriteItems: throttled: cancelled for capacity \
                         ({}) {THROTTLE_ATTEMPTS} times in a row; nothing was written",
                        reasons
                            .iter()
                            .map(|r| r.unwrap_or("None"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )))
                }
                _ => return Err(sdk_err("TransactWriteItems", &e)),
            }
        }
    }

    fn transact_item(
        &self,
        write: Write,
        now: i64,
        token: &str,
    ) -> Result<TransactWriteItem, StoreError> {
        Ok(match write {
            Write::Put { record, expect } => {
                let mut b = Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(written_item(&record, token)));
                if let Some(c) = Condition::of(expect, now) {
                    b = b
                        .condition_expression(c.expression)
                        .set_expression_attribute_names(Some(c.names))
                        .set_expression_attribute_values(Some(c.values))
                        .return_values_on_condition_check_failure(
                            ReturnValuesOnConditionCheckFailure::AllOld,
                        );
                }
                TransactWriteItem::builder()
                    .put(b.build().map_err(build_err)?)
                    .build()
            }
            Write::Delete { kind, id, expect } => {
                let mut b = Delete::builder()
                    .table_name(&self.table)
                    .key(PK, s(pk(kind, &id)));
                if let Some(c) = Condition::of(expect, now) {
                    b = b
                        .condition_expression(c.expression)
                        .set_expression_attribute_names(Some(c.names))
                        .set_expression_attribute_values(Some(c.values));
                }
                TransactWriteItem::builder()
                    .delete(b.build().map_err(build_err)?)
                    .build()
            }
            Write::Check { kind, id, expect } => {
                // A check must carry a condition; `Any` holds for every item, present or not.
                let c = Condition::of(expect, now).unwrap_or_else(Condition::always);
                let b = ConditionCheck::builder()
                    .table_name(&self.table)
                    .key(PK, s(pk(kind, &id)))
                    .condition_expression(c.expression)
                    .set_expression_attribute_names(Some(c.names))
                    .set_expression_attribute_values(if c.values.is_empty() {
                        None
                    } else {
                        Some(c.values)
                    });
                TransactWriteItem::builder()
                    .condition_check(b.build().map_err(build_err)?)
                    .build()
            }
        })
    }
}

impl DynamoStore {
    /// The listings (`legacy::listing_name`) whose legacy partitions no longer need reading:
    /// those the mark names (`kv` [`LEGACY_INDEX_MARK`], written by [`Store::migrate_index`]),
    /// read once per process — a mark written later takes effect at the next cold start. No
    /// mark, or one that cannot be read (it is read again next time), names none: every
    /// legacy partition is read, as before the migration.
    async fn legacy_done(&self) -> legacy::Marked {
        let read = self
            .legacy_done
            .get_or_try_init(|| async {
                legacy::read_mark(self)
                    .await
                    .map(|(_, names)| std::sync::Arc::new(names))
            })
            .await;
        match read {
            Ok(names) => names.clone(),
            Err(e) => {
                tracing::warn!(error = %e, "legacy-index mark not read; legacy partitions are read");
                legacy::Marked::default()
            }
        }
    }

    /// One `Query` of one index partition: at most `ask` entries within `range`, from `start`
    /// (DynamoDB's `LastEvaluatedKey` of the previous call on it); the entries and where to
    /// read on (`None`: the partition is read to its end).
    async fn query_partition(
        &self,
        gsi: Gsi,
        range: &SkRange,
        partition: &str,
        start: Option<Item>,
        ask: usize,
        descending: bool,
    ) -> Result<(Vec<Item>, Option<Item>), StoreError> {
        let mut names = HashMap::from([("#pk".to_string(), gsi.pk_attr().to_string())]);
        let mut values = HashMap::from([(":pk".to_string(), s(partition))]);
        let mut key_cond = "#pk = :pk".to_string();
        let bound = |(_, inclusive): &(String, bool), le: &'static str, lt: &'static str| {
            if *inclusive {
                le
            } else {
                lt
            }
        };
        match (&range.lower, &range.upper) {
            // Both ends inclusive; an exclusive end's own entry is dropped by `contains`.
            (Some(lo), Some(hi)) => {
                key_cond.push_str(" AND #sk BETWEEN :lo AND :hi");
                values.insert(":lo".into(), s(lo.0.clone()));
                values.insert(":hi".into(), s(hi.0.clone()));
            }
            (Some(lo), None) => {
                key_cond.push_str(&format!(" AND #sk {} :lo", bound(lo, ">=", ">")));
                values.insert(":lo".into(), s(lo.0.clone()));
            }
            (None, Some(hi)) => {
                key_cond.push_str(&format!(" AND #sk {} :hi", bound(hi, "<=", "<")));
                values.insert(":hi".into(), s(hi.0.clone()));
            }
            (None, None) => {}
        }
        if key_cond.contains("#sk") {
            names.insert("#sk".into(), gsi.sk_attr().to_string());
        }
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(gsi.name())
            .key_condition_expression(key_cond)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .scan_index_forward(!descending)
            .limit(i32::try_from(ask.max(1)).unwrap_or(i32::MAX))
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| sdk_err("Query", &e))?;
        let next = out.last_evaluated_key().filter(|k| !k.is_empty()).cloned();
        Ok((out.items().to_vec(), next))
    }
}

/// One index partition being read by a query: its entries read and not yet merged, in the
/// query's order, with their index sort keys.
struct Source {
    partition: String,
    /// The legacy partition of a sharded listing (it may still hold the whole listing).
    legacy: bool,
    buf: VecDeque<(String, Record)>,
    /// DynamoDB's `LastEvaluatedKey`: where the next read of the partition starts.
    start: Option<Item>,
    /// Read at least once.
    read: bool,
    /// Read to its end.
    done: bool,
}

/// The index sort keys a query covers: each end the string and whether it is included. The
/// sort bounds (inclusive) and the cursor (the key of the last entry returned, excluded)
/// become one range, the same for every partition of the listing.
#[derive(Debug)]
struct SkRange {
    lower: Option<(String, bool)>,
    upper: Option<(String, bool)>,
}

impl SkRange {
    /// `None` when nothing can lie in it.
    fn of(query: &Query, after: Option<String>) -> Option<SkRange> {
        // ">= {lo}" includes every id at `lo`, and "< {hi}$" ('$' sorts right after '#')
        // includes every id at `hi`.
        let mut range = SkRange {
            lower: query.sort_min.map(|lo| (sort_prefix(lo), true)),
            upper: query
                .sort_max
                .map(|hi| (format!("{}$", sort_prefix(hi)), false)),
        };
        if let Some(after) = after {
            let past = Some((after, false));
            if query.descending {
                range.upper = tighter(range.upper, past, std::cmp::Ordering::Less);
            } else {
                range.lower = tighter(range.lower, past, std::cmp::Ordering::Greater);
            }
        }
        if let (Some((lo, lo_in)), Some((hi, hi_in))) = (&range.lower, &range.upper) {
            if lo > hi || (lo == hi && !(*lo_in && *hi_in)) {
                return None;
            }
        }
        Some(range)
    }

    fn contains(&self, sk: &str) -> bool {
        let above = match &self.lower {
            Some((lo, true)) => sk >= lo.as_str(),
            Some((lo, false)) => sk > lo.as_str(),
            None => true,
        };
        let below = match &self.upper {
            Some((hi, true)) => sk <= hi.as_str(),
            Some((hi, false)) => sk < hi.as_str(),
            None => true,
        };
        above && below
    }
}

/// Of two ends on the same side, the one that lets less in: further `towards` the middle, or,
/// at the same string, the exclusive one.
fn tighter(
    a: Option<(String, bool)>,
    b: Option<(String, bool)>,
    towards: std::cmp::Ordering,
) -> Option<(String, bool)> {
    match (a, b) {
        (Some(a), Some(b)) => Some(match a.0.cmp(&b.0) {
            std::cmp::Ordering::Equal => (a.0, a.1 && b.1),
            o if o == towards => a,
            _ => b,
        }),
        (a, b) => a.or(b),
    }
}

#[async_trait]
impl Store for DynamoStore {
    async fn get(&self, kind: Kind, id: &str) -> Result<Option<Record>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, s(pk(kind, id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_err("GetItem", &e))?;
        let Some(item) = out.item() else {
            return Ok(None);
        };
        let record = from_item(kind, item)?;
        if record.is_expired(now_secs()) {
            return Ok(None);
        }
        Ok(Some(record))
    }

    async fn write(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        if writes.len() > MAX_BATCH {
            return Err(StoreError::TooLarge(writes.len()));
        }
        let mut keys = HashSet::new();
        for w in &writes {
            let (kind, id) = match w {
                Write::Put { record, .. } => (record.kind, record.id.as_str()),
                Write::Delete { kind, id, .. } | Write::Check { kind, id, .. } => {
                    (*kind, id.as_str())
                }
            };
            if !keys.insert(pk(kind, id)) {
                return Err(StoreError::Backend(format!(
                    "dynamodb: batch writes {} {id} more than once",
                    kind.as_str()
                )));
            }
        }
        let now = now_secs();
        let token = crate::domain::random_alnum(WRITE_TOKEN_LEN);
        let mut writes = writes;
        match writes.len() {
            0 => Ok(()),
            1 => match writes.pop() {
                Some(w) => self.write_one(w, now, &token).await,
                None => Ok(()),
            },
            _ => self.transact(writes, now, &token).await,
        }
    }

    async fn query(&self, query: Query) -> Result<Page, StoreError> {
        let (gsi, key) = match &query.index {
            Index::Owner(owner) => (Gsi::Owner, owner),
            Index::Status(status) => (Gsi::Status, status),
        };
        let listing = gsi_pk(query.kind, key);
        let after = match &query.cursor {
            Some(c) => Some(decode_cursor(c, gsi.pk_attr(), gsi.sk_attr(), &listing)?),
            None => None,
        };
        if query.limit == 0 {
            return Ok(Page::default());
        }
        let Some(range) = SkRange::of(&query, after) else {
            return Ok(Page::default());
        };
        // A sharded listing is read from every shard and from the legacy partition (entries
        // written before the index was sharded, until they are written again or moved by
        // `migrate_index`) — unless the mark says that partition was verified empty.
        let partitions: Vec<String> = if gsi.sharded(query.kind) {
            let legacy_left = !self
                .legacy_done()
                .await
                .contains(&legacy::listing_name(gsi, &listing));
            (0..SHARDS)
                .map(|shard| format!("{listing}#{shard}"))
                .chain(legacy_left.then(|| listing.clone()))
                .collect()
        } else {
            vec![listing.clone()]
        };
        let sharded = gsi.sharded(query.kind);
        let mut sources: Vec<Source> = partitions
            .into_iter()
            .map(|partition| Source {
                legacy: sharded && partition == listing,
                partition,
                buf: VecDeque::new(),
                start: None,
                read: false,
                done: false,
            })
            .collect();

        let now = now_secs();
        let mut records: Vec<Record> = Vec::new();
        let mut more = false;
        let mut last_sk: Option<String> = None;
        loop {
            // Every partition whose entries read so far are used up, and that has more, is
            // read on before the next comparison — all of them at once.
            let dry: Vec<usize> = (0..sources.len())
                .filter(|&i| sources[i].buf.is_empty() && !sources[i].done)
                .collect();
            if !dry.is_empty() {
                // Asking for what is still missing (one more than the page, to tell whether
                // anything follows) can't take too little; a shard's first ask is its share.
                let missing = query.limit + 1 - records.len();
                let reads = dry.iter().map(|&i| {
                    let source = &sources[i];
                    let ask = if source.read || !sharded || source.legacy {
                        missing
                    } else {
                        let share = missing.div_ceil(SHARDS as usize);
                        (share + share / 2 + 1).min(missing)
                    };
                    self.query_partition(
                        gsi,
                        &range,
                        &source.partition,
                        source.start.clone(),
                        ask.min(MAX_QUERY_PAGE),
                        query.descending,
                    )
                });
                let pages = futures::future::try_join_all(reads).await?;
                for (i, (items, start)) in dry.into_iter().zip(pages) {
                    let source = &mut sources[i];
                    for item in &items {
                        let record = from_item(query.kind, item)?;
                        source
                            .buf
                            .push_back((gsi_sk(record.sort, &record.id), record));
                    }
                    source.read = true;
                    source.done = start.is_none();
                    source.start = start;
                }
                continue;
            }
            // The next entry in the listing's order: the least (greatest, descending) head.
            let heads = sources
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.buf.front().map(|(sk, _)| (i, sk)));
            let best = if query.descending {
                heads.max_by(|a, b| a.1.cmp(b.1))
            } else {
                heads.min_by(|a, b| a.1.cmp(b.1))
            };
            let Some((best, _)) = best else { break };
            let Some((sk, record)) = sources[best].buf.pop_front() else {
                break;
            };
            // The same entry twice: a record just moved between partitions, both entries
            // still visible (GSIs are updated asynchronously).
            if last_sk.as_deref() == Some(sk.as_str()) {
                continue;
            }
            let listed = match gsi {
                Gsi::Owner => record.owner.as_deref(),
                Gsi::Status => record.status.as_deref(),
            };
            let keep = range.contains(&sk)
                && !record.is_expired(now)
                // A legacy partition's name can be a shard of another key ("A#3" vs "A", 3).
                && listed == Some(key.as_str());
            last_sk = Some(sk);
            if !keep {
                continue;
            }
            if records.len() == query.limit {
                more = true;
                break;
            }
            records.push(record);
        }
        let next = match (more, records.last()) {
            (true, Some(last)) => Some(encode_cursor(last, gsi.pk_attr(), gsi.sk_attr(), &listing)),
            _ => None,
        };
        Ok(Page { records, next })
    }

    async fn migrate_index(
        &self,
        listings: &[(Kind, Index)],
        now_ms: i64,
        deadline: crate::time::Deadline,
    ) -> Result<(IndexMigration, bool), StoreError> {
        legacy::step(self, listings, now_ms, deadline).await
    }

    fn backend(&self) -> &'static str {
        "dynamodb"
    }
}

/// A condition expression with exactly the names and values it uses (DynamoDB rejects unused
/// ones, and moto answers HTTP 500 to undefined `#names`).
struct Condition {
    expression: String,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl Condition {
    fn of(expect: Expect, now: i64) -> Option<Condition> {
        match expect {
            Expect::Any => None,
            Expect::Absent => Some(Condition {
                expression: "attribute_not_exists(#pk) OR #ttl <= :now".into(),
                names: HashMap::from([
                    ("#pk".into(), PK.into()),
                    ("#ttl".into(), TTL_ATTRIBUTE.into()),
                ]),
                values: HashMap::from([(":now".into(), n(now))]),
            }),
            Expect::Version(v) => Some(Condition {
                expression: "#v = :v AND (attribute_not_exists(#ttl) OR #ttl > :now)".into(),
                names: HashMap::from([
                    ("#v".into(), VERSION.into()),
                    ("#ttl".into(), TTL_ATTRIBUTE.into()),
                ]),
                values: HashMap::from([(":v".into(), n(v)), (":now".into(), n(now))]),
            }),
        }
    }

    /// True for every item, present or not (for a `Check` with [`Expect::Any`]).
    fn always() -> Condition {
        Condition {
            expression: "attribute_not_exists(#pk) OR attribute_exists(#pk)".into(),
            names: HashMap::from([("#pk".into(), PK.into())]),
            values: HashMap::new(),
        }
    }
}

fn pk(kind: Kind, id: &str) -> String {
    format!("{}#{id}", kind.as_str())
}

/// The listing's name, `"{kind}#{key}"`: the index partition of an unsharded index, and the
/// legacy partition of a sharded one (entries written before it was sharded).
fn gsi_pk(kind: Kind, key: &str) -> String {
    format!("{}#{key}", kind.as_str())
}

/// One of the two indexes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gsi {
    Owner,
    Status,
}

impl Gsi {
    fn name(self) -> &'static str {
        match self {
            Gsi::Owner => GSI_OWNER,
            Gsi::Status => GSI_STATUS,
        }
    }

    fn pk_attr(self) -> &'static str {
        match self {
            Gsi::Owner => GSI1_PK,
            Gsi::Status => GSI2_PK,
        }
    }

    fn sk_attr(self) -> &'static str {
        match self {
            Gsi::Owner => GSI1_SK,
            Gsi::Status => GSI2_SK,
        }
    }

    /// Whether `kind`'s entries in this index are spread over [`SHARDS`] partitions. The
    /// status index always: every order of a status, every pending outbox entry, shares its
    /// key. The owner index only for products: their owner is the constant `"all"`
    /// (`repo::PRODUCTS_OWNER`) and every checkout rewrites its product (stock), so that one
    /// key takes a write per checkout of the whole shop. Other owners are a buyer, an order
    /// or an outbox entry's subject — a handful of records each — or the merchant's
    /// withdrawals, written a few times a day by a person: one partition, one `Query`.
    fn sharded(self, kind: Kind) -> bool {
        match self {
            Gsi::Status => true,
            Gsi::Owner => kind == Kind::Product,
        }
    }

    /// The index partition `kind`'s record `id` under `key` is written to.
    fn partition(self, kind: Kind, key: &str, id: &str) -> String {
        if self.sharded(kind) {
            format!("{}#{key}#{}", kind.as_str(), shard_of(id))
        } else {
            gsi_pk(kind, key)
        }
    }
}

/// 64-bit FNV-1a of `bytes`, then MurmurHash3's 64-bit finaliser (`fmix64`): both fixed by
/// their definitions (the constants below), so the same on every platform and in every
/// release — unlike std's `DefaultHasher`/`RandomState`, which may change between Rust
/// releases (and is seeded at random per process). The shard of every stored index entry
/// depends on it: changing it would scatter listings. The finaliser is needed: FNV-1a alone
/// barely mixes its last bytes into the bits a small modulus keeps (its low `k` bits depend
/// only on the low `k` bits of each byte; its upper half put ids that differ in their last
/// characters — `sp-07`, `sp-08`, … — all into one of 8 shards).
pub fn stable_hash(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = bytes
        .iter()
        .fold(OFFSET_BASIS, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME));
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The shard (`0..SHARDS`) of record `id`.
pub fn shard_of(id: &str) -> u32 {
    (stable_hash(id.as_bytes()) % u64::from(SHARDS)) as u32
}

/// The key of a sharded index partition: `"{key}#{shard}"` without its shard, or as it is when
/// it carries none (a legacy entry, written before the index was sharded). Any shard number
/// below [`SHARDS`] is taken, not only the id's, so that raising `SHARDS` keeps older entries
/// readable. A legacy key that itself ends in `#` and such a number would be misread; none
/// exists (every status written before was an enum name or WeChat's upper-case code, and the
/// products' owner is `"all"`).
fn unshard(key: &str) -> &str {
    match key.rsplit_once('#') {
        Some((key, shard))
            if shard
                .parse::<u32>()
                .is_ok_and(|n| n < SHARDS && n.to_string() == shard) =>
        {
            key
        }
        _ => key,
    }
}

/// `sort` as 20 digits that order like the `i64` (sign bit flipped).
fn sort_prefix(sort: i64) -> String {
    format!("{:020}", (sort as u64) ^ (1u64 << 63))
}

fn gsi_sk(sort: i64, id: &str) -> String {
    format!("{}#{id}", sort_prefix(sort))
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn to_item(r: &Record) -> Item {
    let mut item = HashMap::from([
        (PK.to_string(), s(pk(r.kind, &r.id))),
        (KIND.to_string(), s(r.kind.as_str())),
        (ID.to_string(), s(r.id.clone())),
        (VERSION.to_string(), n(r.version)),
        (BODY.to_string(), s(r.body.clone())),
        (SORT.to_string(), n(r.sort)),
    ]);
    for (gsi, key) in [(Gsi::Owner, &r.owner), (Gsi::Status, &r.status)] {
        if let Some(key) = key {
            item.insert(gsi.pk_attr().into(), s(gsi.partition(r.kind, key, &r.id)));
            item.insert(gsi.sk_attr().into(), s(gsi_sk(r.sort, &r.id)));
        }
    }
    if let Some(t) = r.expires_at {
        item.insert(TTL_ATTRIBUTE.into(), n(t));
    }
    item
}

/// The item a `write` call with `token` puts: the record and the call's write token.
fn written_item(r: &Record, token: &str) -> Item {
    let mut item = to_item(r);
    item.insert(WRITE_TOKEN.into(), s(token));
    item
}

fn from_item(kind: Kind, item: &Item) -> Result<Record, StoreError> {
    let id = match item.get(ID) {
        Some(AttributeValue::S(id)) => id.clone(),
        _ => {
            let id = match item.get(PK) {
                Some(AttributeValue::S(pk)) => pk.clone(),
                _ => String::new(),
            };
            return Err(corrupt(kind, &id, "missing id"));
        }
    };
    let bad = |why: &str| corrupt(kind, &id, why);
    let str_attr = |name: &str| match item.get(name) {
        Some(AttributeValue::S(v)) => Ok(Some(v.as_str())),
        None => Ok(None),
        Some(_) => Err(bad(&format!("{name} is not a string"))),
    };
    let num_attr = |name: &str| match item.get(name) {
        Some(AttributeValue::N(v)) => v
            .parse::<i64>()
            .map(Some)
            .map_err(|_| bad(&format!("{name} is not an integer"))),
        None => Ok(None),
        Some(_) => Err(bad(&format!("{name} is not a number"))),
    };
    if str_attr(KIND)? != Some(kind.as_str()) {
        return Err(bad("kind does not match"));
    }
    let version = match item.get(VERSION) {
        Some(AttributeValue::N(v)) => v.parse::<u64>().map_err(|_| bad("bad version"))?,
        _ => return Err(bad("missing version")),
    };
    let body = str_attr(BODY)?
        .ok_or_else(|| bad("missing body"))?
        .to_string();
    let prefix = format!("{}#", kind.as_str());
    let key = |gsi: Gsi| -> Result<Option<String>, StoreError> {
        let name = gsi.pk_attr();
        match str_attr(name)? {
            None => Ok(None),
            Some(v) => {
                let key = v
                    .strip_prefix(&prefix)
                    .ok_or_else(|| bad(&format!("{name} has the wrong kind")))?;
                let key = if gsi.sharded(kind) { unshard(key) } else { key };
                Ok(Some(key.to_string()))
            }
        }
    };
    Ok(Record {
        kind,
        owner: key(Gsi::Owner)?,
        status: key(Gsi::Status)?,
        version,
        body,
        sort: num_attr(SORT)?.unwrap_or(0),
        expires_at: num_attr(TTL_ATTRIBUTE)?,
        id,
    })
}

fn corrupt(kind: Kind, id: &str, why: &str) -> StoreError {
    StoreError::Corrupt {
        kind,
        id: id.to_string(),
        why: why.to_string(),
    }
}

fn encode_cursor(last: &Record, pk_attr: &str, sk_attr: &str, partition: &str) -> String {
    let key = BTreeMap::from([
        (PK, pk(last.kind, &last.id)),
        (pk_attr, partition.to_string()),
        (sk_attr, gsi_sk(last.sort, &last.id)),
    ]);
    let json = serde_json::to_vec(&key).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

/// The index sort key of the last record a page returned, if `cursor` was made by a query of
/// the same listing (`partition`, its unsharded name). The cursor keeps the shape it had
/// before the indexes were sharded — the exclusive start key of the listing's one partition —
/// so cursors given out before (the product re-indexing keeps one between runs) stay good.
fn decode_cursor(
    cursor: &str,
    pk_attr: &str,
    sk_attr: &str,
    partition: &str,
) -> Result<String, StoreError> {
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| StoreError::BadCursor)?;
    let key: BTreeMap<String, String> =
        serde_json::from_slice(&json).map_err(|_| StoreError::BadCursor)?;
    let valid = key.len() == 3
        && key.get(pk_attr).map(String::as_str) == Some(partition)
        && key.get(PK).is_some_and(|v| !v.is_empty())
        && key.get(sk_attr).is_some_and(|v| v.len() > 21);
    match key.get(sk_attr) {
        Some(sk) if valid => Ok(sk.clone()),
        _ => Err(StoreError::BadCursor),
    }
}

fn build_err(e: aws_smithy_types::error::operation::BuildError) -> StoreError {
    StoreError::Backend(format!("dynamodb: request: {e}"))
}

/// Attempts of a transaction cancelled by contention alone (below).
const CONTENTION_ATTEMPTS: u32 = 4;

/// Why DynamoDB cancelled a transaction, from its cancellation reasons (one per item, in
/// order; `None`/"None" for the items that were not the cause).
#[derive(Debug, PartialEq, Eq)]
enum Cancelled {
    /// Item `index`'s condition failed: [`StoreError::Conflict`].
    Condition(usize),
    /// Only `TransactionConflict`: another transaction or write touched one of the items at
    /// the same moment. Nothing was written, and AWS's advice is to retry with backoff — the
    /// same race on SQLite is a `Conflict` that the callers' retry loops absorb, so here it is
    /// retried in place (it used to reach the buyer as a 503).
    Contention,
    /// A capacity reason ([`CAPACITY_REASONS`]: the table or an index is throttled — an
    /// on-demand table scaling up under a flash sale, a provisioned one over its capacity),
    /// possibly beside `TransactionConflict`. Nothing was written, and the SDK does not retry
    /// a cancelled transaction whatever the reason, so it used to be `Backend` at once: a 503
    /// to the buyer, an unacknowledged payment notification, an outbox entry left for the
    /// next sweep. It is sent again after a longer backoff than contention's
    /// ([`throttle_backoff`]): capacity takes time to come.
    Throttled,
    /// Anything else (validation, item collection size, an unknown code, no reasons at all):
    /// [`StoreError::Backend`].
    Other,
}

/// Cancellation reasons that mean "not enough capacity right now", as DynamoDB documents
/// them for `TransactWriteItems` (`TransactionCanceledException`, `CancellationReasons`):
/// `ProvisionedThroughputExceeded` (a provisioned table or GSI over its capacity) and
/// `ThrottlingError` (an on-demand table or GSI while DynamoDB scales it: "please try again
/// shortly"). The other documented codes — `None`, `ConditionalCheckFailed`,
/// `ItemCollectionSizeLimitExceeded`, `TransactionConflict`, `ValidationError` — are not.
const CAPACITY_REASONS: &[&str] = &["ThrottlingError", "ProvisionedThroughputExceeded"];

/// Why a transaction was cancelled. A failed condition decides wherever it is (the verdict
/// would be the same on any retry); then a reason that no retry can fix; then capacity
/// (which also covers contention beside it: the longer wait serves both); then contention.
fn cancelled_by(reasons: &[Option<&str>]) -> Cancelled {
    if let Some(index) = reasons
        .iter()
        .position(|r| *r == Some("ConditionalCheckFailed"))
    {
        return Cancelled::Condition(index);
    }
    let mut contention = false;
    let mut capacity = false;
    for r in reasons {
        match r {
            None | Some("None") => {}
            Some("TransactionConflict") => contention = true,
            Some(code) if CAPACITY_REASONS.contains(code) => capacity = true,
            Some(_) => return Cancelled::Other,
        }
    }
    if capacity {
        Cancelled::Throttled
    } else if contention {
        Cancelled::Contention
    } else {
        Cancelled::Other
    }
}

/// Attempts of a transaction (or of a conditional delete, whose retries are ours) refused
/// for capacity (below).
const THROTTLE_ATTEMPTS: u32 = 5;

async fn throttled(op: &str, attempt: u32) {
    tracing::warn!(op, attempt, "throttled by DynamoDB (capacity); retrying");
    tokio::time::sleep(throttle_backoff(attempt)).await;
}

/// 50, 100, 200, 400 ms, each with up to as much again at random (equal jitter, as
/// [`contention_backoff`], so that the writers throttled together spread out): 0.75–1.5 s
/// over the 5 attempts. Longer than contention's — capacity needs time to come, a concurrent
/// transaction only to finish — and bounded so that a throttled write stays within its
/// request's budget: the sum stays under [`OPERATION_TIMEOUT`], what one stalled call may
/// cost, so payCallback (5 s) still answers in time.
fn throttle_backoff(attempt: u32) -> Duration {
    let base = 25u64 << attempt.min(6);
    Duration::from_millis(base + rand::random::<u64>() % base)
}

/// Error codes of a whole request refused for capacity (`PutItem`, `DeleteItem`, `GetItem`,
/// `Query`, or a `TransactWriteItems` refused before it started). The SDK classes them as
/// throttling (`aws-runtime` `THROTTLING_ERRORS`) and retries them itself, except on the
/// delete client, whose retries are ours.
const THROTTLING_CODES: &[&str] = &[
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
];

fn is_throttling<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> bool {
    matches!(err, SdkError::ServiceError(ctx) if ctx.err().code().is_some_and(|c| THROTTLING_CODES.contains(&c)))
}

/// A single-item `PutItem`/`DeleteItem` refused with `TransactionConflictException`: the item
/// is part of a transaction under way (another container's checkout taking the same product's
/// stock). Nothing was written, and the SDK does not retry it (it is in neither its throttling
/// nor its transient list), so it used to become `Backend` — a 503 to the buyer, an outbox
/// entry left for the next sweep. It is the transaction path's [`Cancelled::Contention`] on one
/// item, and is retried in place the same way, with the same condition: once the transaction
/// is over the condition decides — it holds and the write lands, or it fails and the caller
/// gets [`StoreError::Conflict`] and re-reads, as for any version race. Not `Conflict` at once:
/// that says "the condition did not hold", and an `Absent` claim (an idempotency key, a lease)
/// would read it as "someone else holds it". Contention outlasting the attempts is `Backend`.
async fn contended(op: &str, attempt: u32) {
    tracing::debug!(
        op,
        attempt,
        "write refused by a transaction under way; retrying"
    );
    tokio::time::sleep(contention_backoff(attempt)).await;
}

/// 20, 40, 80 ms, each with up to as much again at random, so that two writers that collided
/// do not collide again.
fn contention_backoff(attempt: u32) -> Duration {
    let base = 10u64 << attempt.min(6);
    Duration::from_millis(base + rand::random::<u64>() % base)
}

/// A write DynamoDB refused because a condition failed, with what the item(s) held at that
/// moment (`ReturnValuesOnConditionCheckFailure = ALL_OLD`).
#[derive(Debug)]
enum Refused<'a> {
    /// A lone `PutItem`.
    Put(Option<&'a Item>),
    /// A lone `DeleteItem`, and how many attempts of it went out that may have been applied
    /// (this one included; not those refused for contention).
    Delete(Option<&'a Item>, u32),
    /// A `TransactWriteItems`: each item as its cancellation reason returned it (only items
    /// whose own condition failed come back), and the first whose condition failed.
    Transaction {
        items: Vec<Option<&'a Item>>,
        index: usize,
    },
}

/// Whether a refused write was in fact applied — by an earlier attempt of the same call — or
/// is a real [`StoreError::Conflict`].
///
/// The SDK retries a request whose answer it did not get (a timeout, a 5xx, a dropped
/// connection) although DynamoDB may have applied it; the retry then meets our own write and
/// its condition fails (`Absent`: the item exists; `Version(n)`: it is at `n + 1`). Reporting
/// that as a conflict told a writer that won that it lost: an idempotency claim answered its
/// own owner 409 `REQUEST_IN_PROGRESS` for 30 s, an outbox lease was taken without the worker
/// knowing. So:
/// - a put is ours when the item carries our write token ([`WRITE_TOKEN`], one per `write`
///   call, so no other writer's item can carry it). A transaction likewise when any of its
///   items does: a transaction is all or nothing;
/// - a delete leaves nothing to recognise: it counts as ours when the item is gone and the SDK
///   made more than one attempt — the record is gone either way, and only a second deleter
///   that held the same version (none does: versions are won once) could have been first;
/// - anything else is a conflict.
///
/// Left as a conflict: our write applied and then overwritten by another writer before the
/// retry arrived (the token is gone) — rare, and the caller re-reads and decides again.
fn condition_failed(refused: Refused<'_>, token: &str) -> Result<(), StoreError> {
    let holds_ours = |item: Option<&Item>| matches!(item.and_then(|i| i.get(WRITE_TOKEN)), Some(AttributeValue::S(t)) if t == token);
    let (ours, index) = match refused {
        Refused::Put(item) => (holds_ours(item), 0),
        Refused::Delete(item, attempts) => (item.is_none() && attempts > 1, 0),
        Refused::Transaction { items, index } => (items.into_iter().any(holds_ours), index),
    };
    if ours {
        tracing::debug!("a retried write found its own earlier attempt applied");
        Ok(())
    } else {
        Err(StoreError::Conflict { index })
    }
}

/// Whether a failed request is worth sending again: it timed out, never got an answer, or
/// DynamoDB answered that it was busy or failed inside (5xx, throttling). A request that timed
/// out or got no answer may have been applied.
fn may_retry<E: ProvideErrorMetadata>(
    err: &SdkError<E, aws_smithy_runtime_api::client::orchestrator::HttpResponse>,
) -> bool {
    match err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(ctx) => {
            ctx.raw().status().as_u16() >= 500
                || ctx
                    .err()
                    .code()
                    .is_some_and(|c| c == "InternalServerError" || THROTTLING_CODES.contains(&c))
        }
        _ => false,
    }
}

/// A [`StoreError::Backend`] naming the operation and DynamoDB's error code and message. Never
/// includes the request (credentials, item contents).
fn sdk_err<E, R>(op: &str, err: &SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let detail = match err {
        // The SDK's (or, for deletes, our) attempts all throttled: say so first, so that the
        // log and the admin read "throttled" and not an opaque exception name.
        SdkError::ServiceError(_) if is_throttling(err) => format!(
            "throttled: {}: {}",
            err.code().unwrap_or("unknown error"),
            err.message().unwrap_or("no message")
        ),
        SdkError::ServiceError(_) => format!(
            "{}: {}",
            err.code().unwrap_or("unknown error"),
            err.message().unwrap_or("no message")
        ),
        SdkError::TimeoutError(_) => "timed out".to_string(),
        SdkError::DispatchFailure(_) | SdkError::ConstructionFailure(_) => {
            DisplayErrorContext(err).to_string()
        }
        _ => "unreadable response".to_string(),
    };
    StoreError::Backend(format!("dynamodb {op}: {detail}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    /// What the scripted endpoint answers to one request.
    #[derive(Clone, Copy, Debug)]
    enum Reply {
        /// HTTP 200, `{}`.
        Ok,
        /// An error: HTTP status and the error's `__type` (without its namespace).
        Error(u16, &'static str),
        /// HTTP 400 `TransactionCanceledException` with these cancellation reason codes, one
        /// per item of the transaction, shaped as DynamoDB's JSON protocol shapes them.
        Cancelled(&'static [&'static str]),
    }

    impl Reply {
        fn status(self) -> u16 {
            match self {
                Reply::Ok => 200,
                Reply::Error(status, _) => status,
                Reply::Cancelled(_) => 400,
            }
        }

        fn body(self) -> String {
            const NS: &str = "com.amazonaws.dynamodb.v20120810";
            match self {
                Reply::Ok => "{}".to_owned(),
                Reply::Error(_, t) => {
                    serde_json::json!({"__type": format!("{NS}#{t}"), "message": "injected"})
                        .to_string()
                }
                Reply::Cancelled(codes) => {
                    let reasons: Vec<serde_json::Value> = codes
                        .iter()
                        .map(|code| match *code {
                            "None" => serde_json::json!({"Code": "None"}),
                            "ThrottlingError" => serde_json::json!({
                                "Code": "ThrottlingError",
                                "Message": "Throughput exceeds the current capacity of your \
                                            table or index. DynamoDB is automatically scaling \
                                            your table or index so please try again shortly."
                            }),
                            code => serde_json::json!({"Code": code, "Message": "injected"}),
                        })
                        .collect();
                    serde_json::json!({
                        "__type": format!("{NS}#TransactionCanceledException"),
                        "message": format!(
                            "Transaction cancelled, please refer cancellation reasons for \
                             specific reasons [{}]",
                            codes.join(", ")
                        ),
                        "CancellationReasons": reasons,
                    })
                    .to_string()
                }
            }
        }
    }

    /// A DynamoDB endpoint that answers each request with the next of `script`, the last one
    /// again once it runs out; and how many requests it got.
    async fn scripted_dynamodb(
        script: &[Reply],
    ) -> (
        super::DynamoStore,
        std::sync::Arc<std::sync::atomic::AtomicUsize>,
        tokio::task::JoinHandle<()>,
    ) {
        let (endpoint, seen, server) = scripted_endpoint(script).await;
        let store = super::DynamoStore::connect("wxshop-test", Some(&endpoint))
            .await
            .unwrap();
        (store, seen, server)
    }

    /// The scripted endpoint alone (its URL), for a store built over another client.
    async fn scripted_endpoint(
        script: &[Reply],
    ) -> (
        String,
        std::sync::Arc<std::sync::atomic::AtomicUsize>,
        tokio::task::JoinHandle<()>,
    ) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let script: Arc<Vec<Reply>> = Arc::new(script.to_vec());
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        let router = axum::Router::new().fallback(move || {
            let script = script.clone();
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                let reply = script[n.min(script.len() - 1)];
                (
                    axum::http::StatusCode::from_u16(reply.status()).unwrap(),
                    [("content-type", "application/x-amz-json-1.0")],
                    reply.body(),
                )
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        (format!("http://{addr}"), seen, server)
    }

    const IN_TRANSACTION: Reply = Reply::Error(400, "TransactionConflictException");
    const CONDITION_FAILED: Reply = Reply::Error(400, "ConditionalCheckFailedException");
    const OK: Reply = Reply::Ok;

    fn put() -> crate::store::Write {
        let record = crate::store::Record::new(crate::store::Kind::Product, "tea", "{}".into());
        crate::store::Write::put(record, crate::store::Expect::Version(1))
    }

    fn delete() -> crate::store::Write {
        crate::store::Write::Delete {
            kind: crate::store::Kind::Outbox,
            id: "e1".into(),
            expect: crate::store::Expect::Version(3),
        }
    }

    /// GIVEN a single-item write whose item is in another container's transaction (DynamoDB:
    /// `TransactionConflictException`, not retried by the SDK) WHEN the store writes THEN it
    /// sends it again and succeeds — it used to be `Backend`, a 503 to the buyer.
    #[tokio::test]
    async fn a_single_write_refused_by_a_transaction_under_way_is_sent_again() {
        use crate::store::Store;
        use std::sync::atomic::Ordering;
        for write in [put(), delete()] {
            let (store, seen, server) = scripted_dynamodb(&[IN_TRANSACTION, OK]).await;
            store.write(vec![write.clone()]).await.unwrap();
            assert_eq!(seen.load(Ordering::SeqCst), 2, "{write:?}");
            server.abort();
        }
    }

    /// Contention is not a verdict on the condition: after it, the condition decides. A put
    /// whose version moved meanwhile is a `Conflict` (the caller re-reads); a delete refused
    /// for contention was never applied, so finding the item gone afterwards is someone
    /// else's delete — a `Conflict`, not our own earlier attempt. Contention that outlasts
    /// the attempts is `Backend`, never `Conflict` ("the condition did not hold").
    #[tokio::test]
    async fn after_contention_the_condition_decides() {
        use crate::store::{Store, StoreError};
        use std::sync::atomic::Ordering;
        for write in [put(), delete()] {
            let (store, _, server) = scripted_dynamodb(&[IN_TRANSACTION, CONDITION_FAILED]).await;
            let got = store.write(vec![write.clone()]).await;
            assert_eq!(got, Err(StoreError::Conflict { index: 0 }), "{write:?}");
            server.abort();

            let (store, seen, server) = scripted_dynamodb(&[IN_TRANSACTION]).await;
            let got = store.write(vec![write.clone()]).await;
            assert!(
                matches!(&got, Err(StoreError::Backend(m)) if m.contains("TransactionConflict")),
                "{write:?}: {got:?}"
            );
            assert_eq!(
                seen.load(Ordering::SeqCst),
                super::CONTENTION_ATTEMPTS as usize,
                "{write:?}"
            );
            server.abort();
        }
    }

    /// Two writes: one `TransactWriteItems` of two items (a put of product `tea`, a delete
    /// of outbox entry `e1`), as a checkout or a payment's bookkeeping writes.
    fn two_writes() -> Vec<crate::store::Write> {
        vec![put(), delete()]
    }

    const THROTTLED: Reply = Reply::Cancelled(&["ThrottlingError", "None"]);

    /// GIVEN a transaction cancelled because the table (or an index) is throttled — an
    /// on-demand table scaling up under a flash sale: `TransactionCanceledException` with
    /// `ThrottlingError` (or `ProvisionedThroughputExceeded`, or throttling beside a
    /// `TransactionConflict`), which the SDK never retries WHEN the store writes THEN it sends
    /// the transaction again and the write succeeds. It used to be `Backend` at the first
    /// cancellation: a 503 to the buyer, an unacknowledged payment notification.
    #[tokio::test]
    async fn a_transaction_cancelled_for_throttling_is_sent_again() {
        use crate::store::Store;
        use std::sync::atomic::Ordering;
        let cancelled: [&'static [&'static str]; 3] = [
            &["ThrottlingError", "None"],
            &["None", "ProvisionedThroughputExceeded"],
            &["ThrottlingError", "TransactionConflict"],
        ];
        for reasons in cancelled {
            let (store, seen, server) =
                scripted_dynamodb(&[Reply::Cancelled(reasons), Reply::Cancelled(reasons), OK])
                    .await;
            let got = store.write(two_writes()).await;
            assert_eq!(got, Ok(()), "{reasons:?}");
            assert_eq!(seen.load(Ordering::SeqCst), 3, "{reasons:?}");
            server.abort();
        }
        // A lone check is a one-item transaction: the same.
        let (store, seen, server) =
            scripted_dynamodb(&[Reply::Cancelled(&["ThrottlingError"]), OK]).await;
        let check = crate::store::Write::Check {
            kind: crate::store::Kind::Product,
            id: "tea".into(),
            expect: crate::store::Expect::Version(1),
        };
        assert_eq!(store.write(vec![check]).await, Ok(()));
        assert_eq!(seen.load(Ordering::SeqCst), 2);
        server.abort();
    }

    /// Throttling that does not let up is a `Backend` error saying "throttled" — never
    /// `Conflict`, which callers read as "the condition did not hold" — after a bounded number
    /// of attempts that all fit in the time one stalled call may take.
    #[tokio::test]
    async fn a_transaction_throttled_throughout_fails_as_throttled_within_its_budget() {
        use crate::store::{Store, StoreError};
        use std::sync::atomic::Ordering;
        let (store, seen, server) = scripted_dynamodb(&[THROTTLED]).await;
        let started = std::time::Instant::now();
        let got = store.write(two_writes()).await;
        let took = started.elapsed();
        server.abort();
        assert!(
            matches!(&got, Err(StoreError::Backend(m)) if m.contains("throttled") && m.contains("ThrottlingError")),
            "{got:?}"
        );
        assert_eq!(
            seen.load(Ordering::SeqCst),
            super::THROTTLE_ATTEMPTS as usize
        );
        assert!(took < super::OPERATION_TIMEOUT, "took {took:?}");
    }

    /// A failed condition decides, whatever else cancelled the transaction, and also when it
    /// comes after throttling: `Conflict` naming the item, so the caller re-reads (a sold-out
    /// product, a version raced) — throttling is not sent again once the verdict is in.
    #[tokio::test]
    async fn a_failed_condition_beside_throttling_is_a_conflict() {
        use crate::store::{Store, StoreError};
        use std::sync::atomic::Ordering;
        let (store, seen, server) = scripted_dynamodb(&[Reply::Cancelled(&[
            "ThrottlingError",
            "ConditionalCheckFailed",
        ])])
        .await;
        assert_eq!(
            store.write(two_writes()).await,
            Err(StoreError::Conflict { index: 1 })
        );
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        server.abort();

        let (store, seen, server) = scripted_dynamodb(&[
            THROTTLED,
            Reply::Cancelled(&["ConditionalCheckFailed", "None"]),
        ])
        .await;
        assert_eq!(
            store.write(two_writes()).await,
            Err(StoreError::Conflict { index: 0 })
        );
        assert_eq!(seen.load(Ordering::SeqCst), 2);
        server.abort();
    }

    /// A conditional delete (outbox entries, leases; our retries, the SDK's are off for it)
    /// throttled is sent again after the throttling backoff, and a throttled attempt — refused,
    /// nothing deleted — never counts as one that may have deleted the item: finding it gone
    /// afterwards is someone else's delete, a `Conflict`. It used to be taken for our own
    /// earlier attempt and reported as done.
    #[tokio::test]
    async fn a_throttled_delete_is_sent_again_and_never_taken_for_an_applied_one() {
        use crate::store::{Store, StoreError};
        use std::sync::atomic::Ordering;
        const THROTTLED_DELETE: Reply = Reply::Error(400, "ThrottlingException");
        let (store, seen, server) =
            scripted_dynamodb(&[THROTTLED_DELETE, THROTTLED_DELETE, OK]).await;
        assert_eq!(store.write(vec![delete()]).await, Ok(()));
        assert_eq!(seen.load(Ordering::SeqCst), 3);
        server.abort();

        let (store, _, server) = scripted_dynamodb(&[THROTTLED_DELETE, CONDITION_FAILED]).await;
        assert_eq!(
            store.write(vec![delete()]).await,
            Err(StoreError::Conflict { index: 0 })
        );
        server.abort();

        let (store, seen, server) = scripted_dynamodb(&[THROTTLED_DELETE]).await;
        let got = store.write(vec![delete()]).await;
        server.abort();
        assert!(
            matches!(&got, Err(StoreError::Backend(m)) if m.contains("throttled: ThrottlingException")),
            "{got:?}"
        );
        assert_eq!(
            seen.load(Ordering::SeqCst),
            super::THROTTLE_ATTEMPTS as usize
        );
    }

    /// Single-item requests other than deletes (`PutItem`, `GetItem`, `Query`) are retried
    /// by the SDK's standard mode when throttled (3 attempts, jittered backoff from 1 s — here
    /// from 1 ms, on a client built like the store's); once its attempts are spent the error
    /// is a `Backend` that says "throttled", not an opaque exception name.
    #[tokio::test]
    async fn a_single_write_throttled_past_the_sdk_retries_says_throttled() {
        use crate::store::{Kind, Store, StoreError};
        use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
        use std::sync::atomic::Ordering;
        let (endpoint, seen, server) =
            scripted_endpoint(&[Reply::Error(400, "ProvisionedThroughputExceededException")]).await;
        let config = aws_sdk_dynamodb::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("k", "s", None, None, "test"))
            .http_client(crate::aws::http::ReqwestHttpClient::new().unwrap())
            .endpoint_url(endpoint)
            .retry_config(
                aws_smithy_types::retry::RetryConfig::standard()
                    .with_initial_backoff(std::time::Duration::from_millis(1)),
            )
            .build();
        let store = super::DynamoStore::from_client(
            aws_sdk_dynamodb::Client::from_conf(config),
            "wxshop-test",
        );
        let got = store.write(vec![put()]).await;
        assert!(
            matches!(&got, Err(StoreError::Backend(m))
                if m.starts_with("dynamodb PutItem: throttled: ProvisionedThroughputExceeded")),
            "{got:?}"
        );
        assert_eq!(
            seen.load(Ordering::SeqCst),
            3,
            "the SDK's standard attempts"
        );
        let got = store.get(Kind::Order, "x").await;
        assert!(
            matches!(&got, Err(StoreError::Backend(m)) if m.starts_with("dynamodb GetItem: throttled:")),
            "{got:?}"
        );
        server.abort();
    }

    /// GIVEN a DynamoDB endpoint that accepts the connection and never answers (a stalled
    /// response) WHEN the store reads THEN it fails within the operation timeout instead of
    /// waiting for the Lambda timeout (payCallback's is 5 s).
    #[tokio::test]
    async fn a_stalled_dynamodb_fails_within_the_operation_timeout() {
        use super::{DynamoStore, OPERATION_TIMEOUT};
        use crate::store::{Kind, Store, StoreError};
        use std::time::{Duration, Instant};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket); // accepted, never read, never answered
            }
        });
        let store = DynamoStore::connect("wxshop-test", Some(&format!("http://{addr}")))
            .await
            .unwrap();
        let started = Instant::now();
        let outcome =
            tokio::time::timeout(Duration::from_secs(10), store.get(Kind::Order, "x")).await;
        let took = started.elapsed();
        silent.abort();
        let result = outcome.expect("the read gave up by itself, not after 10 s");
        assert!(matches!(result, Err(StoreError::Backend(_))), "{result:?}");
        assert!(
            took < OPERATION_TIMEOUT + Duration::from_millis(500),
            "took {took:?}"
        );
    }

    #[test]
    fn a_transaction_cancelled_by_contention_alone_is_retried_not_reported_as_a_failure() {
        use super::{cancelled_by, Cancelled};
        let c = |r: &[Option<&str>]| cancelled_by(r);
        assert_eq!(
            c(&[Some("None"), Some("TransactionConflict")]),
            Cancelled::Contention
        );
        assert_eq!(
            c(&[None, Some("TransactionConflict")]),
            Cancelled::Contention
        );
        // A failed condition decides, wherever it is.
        assert_eq!(
            c(&[Some("TransactionConflict"), Some("ConditionalCheckFailed")]),
            Cancelled::Condition(1)
        );
        assert_eq!(
            c(&[Some("ConditionalCheckFailed"), Some("None")]),
            Cancelled::Condition(0)
        );
        // Capacity (throttling) is retried, with or without contention beside it…
        assert_eq!(
            c(&[Some("TransactionConflict"), Some("ThrottlingError")]),
            Cancelled::Throttled
        );
        assert_eq!(
            c(&[Some("None"), Some("ProvisionedThroughputExceeded")]),
            Cancelled::Throttled
        );
        // …but a failed condition still decides.
        assert_eq!(
            c(&[Some("ThrottlingError"), Some("ConditionalCheckFailed")]),
            Cancelled::Condition(1)
        );
        // Anything else is not ours to retry, also beside throttling.
        assert_eq!(
            c(&[Some("ThrottlingError"), Some("ValidationError")]),
            Cancelled::Other
        );
        assert_eq!(
            c(&[Some("ItemCollectionSizeLimitExceeded")]),
            Cancelled::Other
        );
        assert_eq!(c(&[Some("ValidationError")]), Cancelled::Other);
        assert_eq!(c(&[]), Cancelled::Other);
        assert_eq!(c(&[Some("None")]), Cancelled::Other);
        for attempt in 1..super::CONTENTION_ATTEMPTS {
            let d = super::contention_backoff(attempt);
            let base = 10u64 << attempt;
            assert!(d.as_millis() >= u128::from(base) && d.as_millis() < u128::from(2 * base));
        }
    }

    /// Throttling waits longer than contention (capacity takes time to come), and all its
    /// waits together stay well inside the time one stalled call may take.
    #[test]
    fn throttling_backs_off_longer_than_contention_and_within_the_budget() {
        let mut most = std::time::Duration::ZERO;
        for attempt in 1..super::THROTTLE_ATTEMPTS {
            let base = 25u64 << attempt;
            let d = super::throttle_backoff(attempt);
            assert!(d.as_millis() >= u128::from(base) && d.as_millis() < u128::from(2 * base));
            assert!(base >= 2 * (10u64 << attempt), "longer than contention's");
            most += std::time::Duration::from_millis(2 * base);
        }
        assert!(most <= super::OPERATION_TIMEOUT / 2, "{most:?}");
    }

    use super::*;

    #[test]
    fn sort_keys_order_like_sort_then_id() {
        let keys = [
            (i64::MIN, "a"),
            (-5, "b"),
            (-5, "c"),
            (-1, "a"),
            (0, "a"),
            (0, "ab"),
            (0, "b"),
            (7, "a"),
            (i64::MAX, "z"),
        ];
        let strings: Vec<String> = keys.iter().map(|(s, id)| gsi_sk(*s, id)).collect();
        let mut sorted = strings.clone();
        sorted.sort();
        assert_eq!(strings, sorted);
        assert!(strings.iter().all(|k| k.len() > 21));
        // Bounds: every id at the bound is inside, nothing at the neighbours.
        assert!(gsi_sk(0, "zzz") < format!("{}$", sort_prefix(0)));
        assert!(gsi_sk(1, "") > format!("{}$", sort_prefix(0)));
        assert!(gsi_sk(0, "") >= sort_prefix(0));
        assert!(gsi_sk(-1, "zzz") < sort_prefix(0));
    }

    #[test]
    fn items_round_trip() {
        let mut r = Record::new(Kind::Order, "o#1", "{\"a\":1}".into());
        r.version = 3;
        r.owner = Some("openid#x".into());
        r.status = Some("PAID".into());
        r.sort = -42;
        r.expires_at = Some(1_800_000_000);
        assert_eq!(from_item(Kind::Order, &to_item(&r)).unwrap(), r);
        let bare = Record::new(Kind::Kv, "k", "null".into());
        let item = to_item(&bare);
        assert!(!item.contains_key(GSI1_PK) && !item.contains_key(TTL_ATTRIBUTE));
        assert_eq!(from_item(Kind::Kv, &item).unwrap(), bare);
        assert!(matches!(
            from_item(Kind::Order, &item),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_refused_write_is_ours_only_when_the_item_shows_our_earlier_attempt() {
        let mut r = Record::new(Kind::Idempotency, "k", "{}".into());
        r.version = 2;
        let ours = written_item(&r, "tokenA");
        let theirs = written_item(&r, "tokenB");
        // The written item round-trips; the token is not part of the record.
        assert_eq!(from_item(Kind::Idempotency, &ours).unwrap(), r);
        let legacy = to_item(&r);
        let conflict = |index| Err(StoreError::Conflict { index });

        // A put: ours only if the item carries this call's token.
        assert_eq!(
            condition_failed(Refused::Put(Some(&ours)), "tokenA"),
            Ok(())
        );
        assert_eq!(
            condition_failed(Refused::Put(Some(&theirs)), "tokenA"),
            conflict(0)
        );
        assert_eq!(
            condition_failed(Refused::Put(Some(&legacy)), "tokenA"),
            conflict(0),
            "an item written without a token is someone else's"
        );
        assert_eq!(condition_failed(Refused::Put(None), "tokenA"), conflict(0));
        let mut not_a_string = ours.clone();
        not_a_string.insert(WRITE_TOKEN.into(), n(1));
        assert_eq!(
            condition_failed(Refused::Put(Some(&not_a_string)), "1"),
            conflict(0)
        );

        // A delete: gone after a retry is ours; gone at the first attempt, or still there,
        // is a conflict.
        assert_eq!(condition_failed(Refused::Delete(None, 2), "tokenA"), Ok(()));
        assert_eq!(
            condition_failed(Refused::Delete(None, 1), "tokenA"),
            conflict(0)
        );
        assert_eq!(
            condition_failed(Refused::Delete(Some(&ours), 3), "tokenA"),
            conflict(0)
        );

        // A transaction: all or nothing, so one item carrying our token proves it applied.
        fn tx(items: Vec<Option<&Item>>, index: usize) -> Refused<'_> {
            Refused::Transaction { items, index }
        }
        assert_eq!(
            condition_failed(tx(vec![None, Some(&ours), Some(&ours)], 1), "tokenA"),
            Ok(())
        );
        assert_eq!(
            condition_failed(tx(vec![None, Some(&theirs)], 1), "tokenA"),
            conflict(1)
        );
        assert_eq!(
            condition_failed(tx(vec![Some(&theirs), Some(&ours)], 0), "tokenB"),
            Ok(())
        );
        assert_eq!(condition_failed(tx(vec![], 0), "tokenA"), conflict(0));
    }

    /// The shard of every stored index entry depends on the hash: it must never change.
    #[test]
    fn the_shard_hash_is_pinned() {
        // FNV-1a's published 64-bit vectors, through MurmurHash3's fmix64.
        fn fnv1a(bytes: &[u8]) -> u64 {
            bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
                (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
            })
        }
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(stable_hash(b""), 0xefd0_1f60_ba99_2926);
        assert_eq!(stable_hash(b"foobar"), 0x2c22_1949_22d1_672b);
        let shards: Vec<u32> = ["WX20261205120000abcdefghijkl", "e1", "tea", "lg-b"]
            .iter()
            .map(|id| shard_of(id))
            .collect();
        assert_eq!(shards, [6, 7, 1, 7]);
        // Ids differing only in their last characters spread over every shard.
        let used: HashSet<u32> = (0..40).map(|i| shard_of(&format!("sp-{i:02}"))).collect();
        assert_eq!(used.len(), SHARDS as usize);
    }

    #[test]
    fn sharded_keys_decode_to_the_key_written() {
        assert_eq!(unshard("PAID#3"), "PAID");
        assert_eq!(unshard("PAID"), "PAID", "a legacy entry");
        assert_eq!(unshard("A#B#0"), "A#B");
        assert_eq!(unshard("PAID#03"), "PAID#03", "not a shard number");
        assert_eq!(unshard(&format!("PAID#{SHARDS}")), format!("PAID#{SHARDS}"));
        // Sharded: the status everywhere, the owner of products; a buyer's id never.
        let mut r = Record::new(Kind::Product, "p#1", "{}".into());
        r.owner = Some("all".into());
        r.status = Some("AUDIT#ING".into());
        let item = to_item(&r);
        let shard = shard_of("p#1");
        assert_eq!(item[GSI1_PK], s(format!("product#all#{shard}")));
        assert_eq!(item[GSI2_PK], s(format!("product#AUDIT#ING#{shard}")));
        assert_eq!(from_item(Kind::Product, &item).unwrap(), r);
        let mut o = Record::new(Kind::Order, "o1", "{}".into());
        o.owner = Some("openid#7".into());
        let item = to_item(&o);
        assert_eq!(item[GSI1_PK], s("order#openid#7"));
        assert_eq!(from_item(Kind::Order, &item).unwrap(), o);
        // An item written before sharding reads as it was written.
        let mut legacy = to_item(&r);
        legacy.insert(GSI1_PK.into(), s("product#all"));
        legacy.insert(GSI2_PK.into(), s("product#AUDITING"));
        let read = from_item(Kind::Product, &legacy).unwrap();
        assert_eq!(read.owner.as_deref(), Some("all"));
        assert_eq!(read.status.as_deref(), Some("AUDITING"));
    }

    #[test]
    fn bounds_and_cursor_make_one_range() {
        let mut q = Query::new(Kind::Order, Index::Status("PAID".into()));
        let at = |sort, id| gsi_sk(sort, id);
        // The cursor is excluded, the bounds included with every id at them.
        q.sort_min = Some(0);
        q.sort_max = Some(5);
        let r = SkRange::of(&q, Some(at(2, "b"))).unwrap();
        assert!(!r.contains(&at(2, "b")) && r.contains(&at(2, "c")) && r.contains(&at(5, "zz")));
        assert!(!r.contains(&at(2, "a")) && !r.contains(&at(6, "")));
        q.descending = true;
        let r = SkRange::of(&q, Some(at(2, "b"))).unwrap();
        assert!(r.contains(&at(2, "a")) && r.contains(&at(0, "")) && !r.contains(&at(2, "b")));
        assert!(!r.contains(&at(-1, "z")));
        // A cursor outside the bounds: the bounds decide, or nothing is left.
        q.descending = false;
        let r = SkRange::of(&q, Some(at(-7, "x"))).unwrap();
        assert!(r.contains(&at(0, "")));
        let r = SkRange::of(&q, Some(at(5, "m"))).unwrap();
        assert!(r.contains(&at(5, "n")) && !r.contains(&at(5, "a")));
        assert!(SkRange::of(&q, Some(at(9, "a"))).is_none());
        q.sort_min = Some(6);
        assert!(SkRange::of(&q, None).is_none(), "min above max");
    }

    #[test]
    fn cursors_are_checked() {
        let mut r = Record::new(Kind::Outbox, "e1", "{}".into());
        r.status = Some("DUE".into());
        let c = encode_cursor(&r, GSI2_PK, GSI2_SK, "outbox#DUE");
        assert!(decode_cursor(&c, GSI2_PK, GSI2_SK, "outbox#DUE").is_ok());
        assert_eq!(
            decode_cursor(&c, GSI2_PK, GSI2_SK, "outbox#DONE"),
            Err(StoreError::BadCursor)
        );
        assert_eq!(
            decode_cursor(&c, GSI1_PK, GSI1_SK, "outbox#DUE"),
            Err(StoreError::BadCursor)
        );
        assert_eq!(
            decode_cursor("not base64!", GSI2_PK, GSI2_SK, "outbox#DUE"),
            Err(StoreError::BadCursor)
        );
    }
}
