//! The typed layer every handler uses: domain values in, domain values out, over any
//! [`Store`].
//!
//! Why it is shaped so:
//! - **Reads return [`Versioned`]**, and every update in a [`Batch`] is conditional on that
//!   version and writes `version + 1`. A handler therefore cannot overwrite a change it has
//!   not seen: load → call the domain method → `update_*` → `commit`, and on
//!   [`StoreError::Conflict`] reload and try again (or report the race).
//! - **One [`Batch`] per state change** collects the transition and its outbox entries (and an
//!   event's dedupe record) so they are written all-or-nothing.
//! - **Each builder method adds exactly one write and returns its index**, so the index in
//!   `StoreError::Conflict { index }` can be matched against what the caller added (e.g. "the
//!   event record already existed" vs "the order moved under us").
//! - **Record layout is fixed here, once** (which index carries what), so the backends stay
//!   generic and the layout is the same on SQLite and DynamoDB.

use super::rotation::{ListingTurn, Rotation};
use super::{Expect, Index, Kind, Query, Record, Store, StoreError, Write};
use crate::domain::{
    AfterSale, AfterSaleId, AfterSaleStatus, AuditStatus, Fen, OpenId, Order, OrderStatus,
    OutRefundNo, OutTradeNo, Product, ProductId,
};
use crate::outbox::{self, OutboxEntry};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// A value as read, with the record version a conditional update must name.
#[derive(Clone, Debug, PartialEq)]
pub struct Versioned<T> {
    pub value: T,
    pub version: u64,
}

impl<T> Versioned<T> {
    /// The value as it will be stored after an update of this one commits.
    pub fn updated(&self, value: T) -> Versioned<T> {
        Versioned {
            value,
            version: self.version + 1,
        }
    }
}

/// A record as the value it holds, with its version.
pub fn versioned<T: DeserializeOwned>(rec: &Record) -> Result<Versioned<T>, StoreError> {
    Ok(Versioned {
        value: rec.decode()?,
        version: rec.version,
    })
}

async fn get_typed<T: DeserializeOwned>(
    store: &dyn Store,
    kind: Kind,
    id: &str,
) -> Result<Option<Versioned<T>>, StoreError> {
    store
        .get(kind, id)
        .await?
        .as_ref()
        .map(versioned)
        .transpose()
}

// ---------------------------------------------------------------- orders

/// Orders: id = out_trade_no, owner = openid, status = status, sort = created_at_ms.
pub fn order_record(o: &Order, version: u64) -> Result<Record, StoreError> {
    let mut rec = Record::new(Kind::Order, o.out_trade_no.as_str(), Record::encode(o)?);
    rec.version = version;
    rec.owner = Some(o.openid.as_str().to_owned());
    rec.status = Some(o.status.as_str().to_owned());
    rec.sort = o.created_at_ms;
    Ok(rec)
}

pub async fn get_order(
    store: &dyn Store,
    out_trade_no: &OutTradeNo,
) -> Result<Option<Versioned<Order>>, StoreError> {
    get_typed(store, Kind::Order, out_trade_no.as_str()).await
}

/// A user's orders, newest first, `limit` at a time.
pub async fn orders_of(
    store: &dyn Store,
    openid: &OpenId,
    limit: usize,
    cursor: Option<String>,
) -> Result<(Vec<Order>, Option<String>), StoreError> {
    newest_of_owner(store, Kind::Order, openid.as_str(), limit, cursor).await
}

/// Records of `kind` under `owner`, newest first (the owner index's sort), `limit` at a time.
async fn newest_of_owner<T: DeserializeOwned>(
    store: &dyn Store,
    kind: Kind,
    owner: &str,
    limit: usize,
    cursor: Option<String>,
) -> Result<(Vec<T>, Option<String>), StoreError> {
    let mut q = Query::new(kind, Index::Owner(owner.to_owned()));
    q.descending = true;
    q.limit = limit.max(1);
    q.cursor = cursor;
    let page = store.query(q).await?;
    let values = page
        .records
        .iter()
        .map(Record::decode)
        .collect::<Result<Vec<T>, _>>()?;
    Ok((values, page.next))
}

/// A turn (see [`Rotation`]) through the orders in `status` created before
/// `created_before_ms`, oldest first from where the last run named `name` stopped.
pub async fn order_rotation(
    store: &dyn Store,
    name: &str,
    status: OrderStatus,
    created_before_ms: i64,
) -> Result<Rotation, StoreError> {
    Rotation::resume(
        store,
        name,
        Kind::Order,
        status.as_str(),
        None,
        Some(created_before_ms.saturating_sub(1)),
    )
    .await
}

/// One page of the orders in `status` created within `[from_ms, to_ms]` (the status index,
/// ordered by creation), oldest first: what a reconciliation of one day reads instead of
/// every order.
pub async fn orders_created_between(
    store: &dyn Store,
    status: OrderStatus,
    from_ms: i64,
    to_ms: i64,
    cursor: Option<String>,
) -> Result<(Vec<Order>, Option<String>), StoreError> {
    let mut q = Query::new(Kind::Order, Index::Status(status.as_str().to_owned()));
    q.sort_min = Some(from_ms);
    q.sort_max = Some(to_ms);
    q.limit = 100;
    q.cursor = cursor;
    let page = store.query(q).await?;
    let orders = page
        .records
        .iter()
        .map(Record::decode)
        .collect::<Result<Vec<Order>, _>>()?;
    Ok((orders, page.next))
}

// ---------------------------------------------------------------- index listings

/// Every listing a record is written under whose entries DynamoDB spreads over shards: each
/// status of each kind indexed by status, and the products' owner. What
/// [`Store::migrate_index`] moves out of the partitions written before the sharding and,
/// once they are empty, stops reading (a listing not named here keeps reading its own).
///
/// Left out: withdrawals' statuses (WeChat's strings, an open set; no code lists
/// withdrawals by status, so their pre-sharding partitions are never read anyway), and
/// idempotency records (no longer indexed; they expire).
pub fn index_listings() -> Vec<(Kind, Index)> {
    let status = |kind: Kind, s: &str| (kind, Index::Status(s.to_owned()));
    let mut listings = vec![(Kind::Product, Index::Owner(PRODUCTS_OWNER.to_owned()))];
    listings.extend(
        OrderStatus::ALL
            .iter()
            .map(|s| status(Kind::Order, s.as_str())),
    );
    listings.extend(
        AfterSaleStatus::ALL
            .iter()
            .map(|s| status(Kind::AfterSale, s.as_str())),
    );
    listings.extend(
        ProductIndex::ALL
            .iter()
            .map(|i| status(Kind::Product, i.as_str())),
    );
    listings.extend(
        RefundStatus::ALL
            .iter()
            .map(|s| status(Kind::Refund, s.as_str())),
    );
    listings.extend(
        [outbox::STATUS_PENDING, outbox::STATUS_DEAD]
            .iter()
            .map(|s| status(Kind::Outbox, s)),
    );
    listings
}

/// Whether any order was created before `before_ms` (one status-index read of at most one
/// record per status): whether the store can have anything of the days before then.
pub async fn any_order_created_before(
    store: &dyn Store,
    before_ms: i64,
) -> Result<bool, StoreError> {
    for status in OrderStatus::ALL {
        let mut q = Query::new(Kind::Order, Index::Status(status.as_str().to_owned()));
        q.sort_max = Some(before_ms.saturating_sub(1));
        q.limit = 1;
        if !store.query(q).await?.records.is_empty() {
            return Ok(true);
        }
    }
    Ok(false)
}

// ---------------------------------------------------------------- products

/// Every product is listed under this owner, so "all products" is one index query.
pub const PRODUCTS_OWNER: &str = "all";

/// Where a product is on the status index: what the two listings that read it need. The
/// audit sweep reads [`ProductIndex::UNDER_AUDIT`] (a verdict can be owed for those); the
/// shop reads [`ProductIndex::ON_SALE`], in product-id order, and never a product not on sale
/// (a catalog accumulates drafts, delisted, refused and platform-delisted products, and the
/// shop used to read them all to skip them).
///
/// The partition is computed from the product in the same write that stores it
/// ([`product_record`]), so it can never disagree with the value: no separate write to lose.
/// [`Product::is_sellable`] depends only on the product's own audit and listing (not on stock
/// or a clock), so an index on it does not go stale; stock is shown as it is on read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProductIndex {
    /// Not on sale, nothing of it under audit: by its own audit.
    Draft,
    Approved,
    Rejected,
    /// Not on sale; its own first version (or a submission) under audit at WeChat.
    Auditing,
    /// On sale ([`Product::is_sellable`]), nothing of it under audit.
    OnSale,
    /// On sale, and an edit of it under audit at WeChat (it sells as approved meanwhile).
    OnSaleAuditing,
}

impl ProductIndex {
    /// Every partition a product can be indexed under.
    pub const ALL: [ProductIndex; 6] = [
        ProductIndex::Draft,
        ProductIndex::Approved,
        ProductIndex::Rejected,
        ProductIndex::Auditing,
        ProductIndex::OnSale,
        ProductIndex::OnSaleAuditing,
    ];
    /// The products a verdict can be owed for (the audit sweep's listing).
    pub const UNDER_AUDIT: [ProductIndex; 2] =
        [ProductIndex::Auditing, ProductIndex::OnSaleAuditing];
    /// The products on sale (the shop's listing).
    pub const ON_SALE: [ProductIndex; 2] = [ProductIndex::OnSale, ProductIndex::OnSaleAuditing];

    pub fn as_str(self) -> &'static str {
        match self {
            ProductIndex::Draft => "DRAFT",
            ProductIndex::Approved => "APPROVED",
            ProductIndex::Rejected => "REJECTED",
            ProductIndex::Auditing => "AUDITING",
            ProductIndex::OnSale => "ON_SALE",
            ProductIndex::OnSaleAuditing => "ON_SALE_AUDITING",
        }
    }

    /// Where `p` is indexed: AUDITING-like while anything of it is under audit at WeChat — its
    /// own first version, or an edit of the approved product, whose own status stays APPROVED
    /// (it sells on meanwhile) — split by whether it is on sale; else ON_SALE when on sale,
    /// else its own audit.
    pub fn of(p: &Product) -> ProductIndex {
        let under_audit = p.draft_audit() == AuditStatus::Auditing;
        match (p.is_sellable(), under_audit) {
            (true, true) => ProductIndex::OnSaleAuditing,
            (true, false) => ProductIndex::OnSale,
            (false, true) => ProductIndex::Auditing,
            (false, false) => match p.audit {
                AuditStatus::Draft => ProductIndex::Draft,
                AuditStatus::Auditing => ProductIndex::Auditing,
                AuditStatus::Approved => ProductIndex::Approved,
                AuditStatus::Rejected => ProductIndex::Rejected,
            },
        }
    }
}

/// Products: id = product_id, owner = "all", status = [`ProductIndex::of`], sort = 0 (so
/// every listing is ordered by product id, stable while products change).
fn product_record(p: &Product, version: u64) -> Result<Record, StoreError> {
    let mut rec = Record::new(Kind::Product, p.product_id.as_str(), Record::encode(p)?);
    rec.version = version;
    rec.owner = Some(PRODUCTS_OWNER.to_owned());
    rec.status = Some(ProductIndex::of(p).as_str().to_owned());
    rec.sort = 0;
    Ok(rec)
}

/// Products stored before they were indexed by [`ProductIndex::of`] (an approved product
/// with an edit under audit was indexed APPROVED, where the audit sweep does not read; before
/// the on-sale partitions, a product on sale was indexed APPROVED or AUDITING, where the shop
/// does not read):
/// from `cursor`, `limit` products of the full listing are read and those indexed otherwise
/// than they are now written again, as they are. `(rewritten, next)`; `next` is `None` at the
/// end of the listing. Products are never deleted, so a `next` kept between runs stays good.
pub async fn reindex_products(
    store: &dyn Store,
    limit: usize,
    cursor: Option<String>,
) -> Result<(usize, Option<String>), StoreError> {
    let mut q = Query::new(Kind::Product, Index::Owner(PRODUCTS_OWNER.to_owned()));
    q.limit = limit.max(1);
    q.cursor = cursor;
    let page = store.query(q).await?;
    let mut rewritten = 0;
    for rec in &page.records {
        let Ok(p) = versioned::<Product>(rec) else {
            continue; // unreadable: nothing to index it by
        };
        if rec.status.as_deref() == Some(ProductIndex::of(&p.value).as_str()) {
            continue;
        }
        let mut batch = Batch::new();
        batch.update_product(&p, &p.value);
        match batch.commit(store).await {
            Ok(()) => rewritten += 1,
            // Written meanwhile, and so indexed as it is now.
            Err(e) if e.is_conflict() => {}
            Err(e) => return Err(e),
        }
    }
    Ok((rewritten, page.next))
}

pub async fn get_product(
    store: &dyn Store,
    product_id: &ProductId,
) -> Result<Option<Versioned<Product>>, StoreError> {
    get_typed(store, Kind::Product, product_id.as_str()).await
}

/// A turn (see [`ListingTurn`]) through the products indexed under each of `indexes` in
/// turn, by product id, from where the last run named `name` stopped. Products all have
/// sort 0 (listed by id), so a [`Rotation`] (whose place is a sort) would read them all
/// from the start each run; a [`ListingTurn`] keeps the store's cursor instead.
pub async fn product_turn(
    store: &dyn Store,
    name: &str,
    indexes: &[ProductIndex],
) -> Result<ListingTurn, StoreError> {
    let statuses: Vec<&str> = indexes.iter().map(|i| i.as_str()).collect();
    ListingTurn::resume(store, name, Kind::Product, &statuses).await
}

/// Which products [`list_products`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProductFilter {
    All,
    /// Those indexed under this partition of the status index ([`ProductIndex::of`]).
    Index(ProductIndex),
}

/// One page of the store's product records under `filter`, as stored.
async fn product_page(
    store: &dyn Store,
    filter: ProductFilter,
    limit: usize,
    cursor: Option<String>,
) -> Result<crate::store::Page, StoreError> {
    let index = match filter {
        ProductFilter::All => Index::Owner(PRODUCTS_OWNER.to_owned()),
        ProductFilter::Index(i) => Index::Status(i.as_str().to_owned()),
    };
    let mut q = Query::new(Kind::Product, index);
    q.limit = limit.max(1);
    q.cursor = cursor;
    store.query(q).await
}

/// Products by id, `limit` at a time.
pub async fn list_products(
    store: &dyn Store,
    filter: ProductFilter,
    limit: usize,
    cursor: Option<String>,
) -> Result<(Vec<Versioned<Product>>, Option<String>), StoreError> {
    let page = product_page(store, filter, limit, cursor).await?;
    let products = page
        .records
        .iter()
        .map(versioned)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((products, page.next))
}

/// A stored product that cannot be read as one (written by another version of this code,
/// or damaged): its key and why, for the merchant and the logs. Products hold nothing secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnreadableProduct {
    pub product_id: String,
    pub why: String,
}

/// Products read, the records that could not be read as products (named apart), and the
/// cursor of what follows (`None`: nothing does).
pub type ReadableProducts = (
    Vec<Versioned<Product>>,
    Vec<UnreadableProduct>,
    Option<String>,
);

/// [`list_products`], except that a record that cannot be read as a product does not fail the
/// page: it is left out of the products and named in the second list. The cursor is the
/// store's, so a page still ends where the store's page did.
pub async fn list_products_readable(
    store: &dyn Store,
    filter: ProductFilter,
    limit: usize,
    cursor: Option<String>,
) -> Result<ReadableProducts, StoreError> {
    let page = product_page(store, filter, limit, cursor).await?;
    let mut unreadable = Vec::new();
    let products = readable(&page.records, &mut unreadable);
    Ok((products, unreadable, page.next))
}

/// The records that read as products; the others named in `unreadable`.
fn readable(
    records: &[Record],
    unreadable: &mut Vec<UnreadableProduct>,
) -> Vec<Versioned<Product>> {
    let mut products = Vec::with_capacity(records.len());
    for rec in records {
        match versioned::<Product>(rec) {
            Ok(p) => products.push(p),
            Err(e) => unreadable.push(UnreadableProduct {
                product_id: rec.id.clone(),
                why: e.to_string(),
            }),
        }
    }
    products
}

// ---------------------------------------------------------------- the shop's listing

/// What a cursor of [`list_on_sale`] starts with (the store's own cursors are URL-safe base64,
/// which has no `.`): a caller can tell it from a cursor of the full listing.
const ON_SALE_CURSOR: &str = "s.";

/// Where [`list_on_sale`] stands: the last product id given out, and the store's cursor of
/// the ON_SALE partition to read on from (its products up to `after` are skipped: a page can
/// end inside what one store read returned).
#[derive(Serialize, Deserialize)]
struct OnSaleCursor {
    after: Option<String>,
    from: Option<String>,
}

/// Whether `cursor` was given out by [`list_on_sale`].
pub fn is_on_sale_cursor(cursor: &str) -> bool {
    cursor.starts_with(ON_SALE_CURSOR)
}

fn encode_on_sale_cursor(after: Option<String>, from: Option<String>) -> String {
    use base64::Engine;
    let json = serde_json::to_vec(&OnSaleCursor { after, from }).unwrap_or_default();
    format!(
        "{ON_SALE_CURSOR}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    )
}

fn decode_on_sale_cursor(cursor: &str) -> Result<OnSaleCursor, StoreError> {
    use base64::Engine;
    let raw = cursor
        .strip_prefix(ON_SALE_CURSOR)
        .ok_or(StoreError::BadCursor)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(raw)
        .map_err(|_| StoreError::BadCursor)?;
    serde_json::from_slice(&json).map_err(|_| StoreError::BadCursor)
}

/// Reads one page of `index`'s products, readable ones apart from the others.
async fn indexed_page(
    store: &dyn Store,
    index: ProductIndex,
    limit: usize,
    cursor: Option<String>,
    unreadable: &mut Vec<UnreadableProduct>,
) -> Result<(Vec<Versioned<Product>>, Option<String>, Option<String>), StoreError> {
    let page = product_page(store, ProductFilter::Index(index), limit, cursor).await?;
    let last = page.records.last().map(|r| r.id.clone());
    Ok((readable(&page.records, unreadable), last, page.next))
}

/// Up to `limit` products on sale after `cursor` (one of this function's), in product-id
/// order, read from the ON_SALE partitions only ([`ProductIndex::ON_SALE`]) — never a product
/// not on sale — with records that cannot be read as products named apart, and the cursor of
/// what follows (`None`: nothing does).
///
/// ON_SALE is read page by page (at most `reads` reads of it); ON_SALE_AUDITING (products on
/// sale with an edit under audit at WeChat: few, for the time of an audit) is read whole and
/// merged in by id. A page can end inside a store read (when those merged in fill it): its
/// cursor then keeps that read's start and the last id given out, and the next page skips up
/// to it.
pub async fn list_on_sale(
    store: &dyn Store,
    limit: usize,
    cursor: Option<&str>,
    reads: usize,
) -> Result<ReadableProducts, StoreError> {
    let limit = limit.max(1);
    let OnSaleCursor {
        mut after,
        mut from,
    } = match cursor {
        Some(c) => decode_on_sale_cursor(c)?,
        None => OnSaleCursor {
            after: None,
            from: None,
        },
    };
    let past = |after: &Option<String>, id: &str| after.as_deref().is_none_or(|a| id > a);
    let mut unreadable = Vec::new();
    let mut editing = std::collections::VecDeque::new();
    let mut edit_cursor = None;
    loop {
        let (page, _, next) = indexed_page(
            store,
            ProductIndex::OnSaleAuditing,
            100,
            edit_cursor,
            &mut unreadable,
        )
        .await?;
        editing.extend(
            page.into_iter()
                .filter(|p| past(&after, p.value.product_id.as_str())),
        );
        match next {
            Some(n) => edit_cursor = Some(n),
            None => break,
        }
    }
    let mut found: Vec<Versioned<Product>> = Vec::with_capacity(limit);
    let mut read = 0;
    loop {
        let room = limit - found.len();
        let (page, last, next) = indexed_page(
            store,
            ProductIndex::OnSale,
            room,
            from.clone(),
            &mut unreadable,
        )
        .await?;
        read += 1;
        let mut batch: Vec<Versioned<Product>> = page
            .into_iter()
            .filter(|p| past(&after, p.value.product_id.as_str()))
            .collect();
        // Those under an edit's audit up to where this read reached (all, at its end).
        while let Some(e) = editing.front() {
            let id = e.value.product_id.as_str();
            let within = match (&next, &last) {
                (None, _) => true,
                (Some(_), Some(last)) => id <= last.as_str(),
                (Some(_), None) => false,
            };
            match (within, editing.pop_front()) {
                (true, Some(e)) => batch.push(e),
                (false, Some(e)) => {
                    editing.push_front(e);
                    break;
                }
                (_, None) => break,
            }
        }
        batch.sort_by(|a, b| a.value.product_id.as_str().cmp(b.value.product_id.as_str()));
        // Moved between the partitions between two reads: given once.
        batch.dedup_by(|a, b| a.value.product_id == b.value.product_id);
        if batch.len() > room {
            batch.truncate(room);
            after = batch.last().map(|p| p.value.product_id.as_str().to_owned());
            found.extend(batch);
            // The rest of this read is read again, from the same place.
            return Ok((found, unreadable, Some(encode_on_sale_cursor(after, from))));
        }
        found.extend(batch);
        if let Some(p) = found.last() {
            after = Some(p.value.product_id.as_str().to_owned());
        }
        let Some(next) = next else {
            // The end of ON_SALE: every one under an edit's audit was merged in above.
            return Ok((found, unreadable, None));
        };
        from = Some(next);
        if found.len() >= limit || read >= reads.max(1) {
            return Ok((found, unreadable, Some(encode_on_sale_cursor(after, from))));
        }
    }
}

// ---------------------------------------------------------------- after-sales

/// After-sales: id = after-sale id, owner = out_trade_no, status = status, sort = created —
/// except a REFUNDED one that carries when we recorded it so
/// ([`AfterSale::refunded_at_ms`]), sorted by that: the status index's REFUNDED partition is
/// then in the order after-sales became refunded here, which is what the funds
/// reconciliation of a day reads ([`aftersales_refunded_between`]). (Nothing walks that
/// partition by creation; one that reads every status by creation misses a refunded one
/// created in its window and refunded after it.)
fn aftersale_record(a: &AfterSale, version: u64) -> Result<Record, StoreError> {
    let mut rec = Record::new(Kind::AfterSale, a.id.as_str(), Record::encode(a)?);
    rec.version = version;
    rec.owner = Some(a.out_trade_no.as_str().to_owned());
    rec.status = Some(a.status.as_str().to_owned());
    rec.sort = match (a.status, a.refunded_at_ms) {
        (AfterSaleStatus::Refunded, Some(at)) => at,
        _ => a.created_at_ms,
    };
    Ok(rec)
}

pub async fn get_aftersale(
    store: &dyn Store,
    id: &AfterSaleId,
) -> Result<Option<Versioned<AfterSale>>, StoreError> {
    get_typed(store, Kind::AfterSale, id.as_str()).await
}

/// An order's after-sales, oldest first (at most 100; an order never has that many).
pub async fn aftersales_of_order(
    store: &dyn Store,
    out_trade_no: &OutTradeNo,
) -> Result<Vec<Versioned<AfterSale>>, StoreError> {
    let mut q = Query::new(
        Kind::AfterSale,
        Index::Owner(out_trade_no.as_str().to_owned()),
    );
    q.limit = 100;
    let page = store.query(q).await?;
    page.records.iter().map(versioned).collect()
}

/// One page of the after-sales we recorded REFUNDED within `[from_ms, to_ms]`
/// ([`AfterSale::refunded_at_ms`]), in that order: the status index's REFUNDED partition,
/// filtered to the records that carry the time (the partition also holds, by creation time,
/// the ones refunded before the time was kept).
pub async fn aftersales_refunded_between(
    store: &dyn Store,
    from_ms: i64,
    to_ms: i64,
    cursor: Option<String>,
) -> Result<(Vec<AfterSale>, Option<String>), StoreError> {
    let mut q = Query::new(
        Kind::AfterSale,
        Index::Status(AfterSaleStatus::Refunded.as_str().to_owned()),
    );
    q.sort_min = Some(from_ms);
    q.sort_max = Some(to_ms);
    q.limit = 100;
    q.cursor = cursor;
    let page = store.query(q).await?;
    let mut out = Vec::with_capacity(page.records.len());
    for rec in &page.records {
        let a: AfterSale = rec.decode()?;
        if a.refunded_at_ms
            .is_some_and(|t| (from_ms..=to_ms).contains(&t))
        {
            out.push(a);
        }
    }
    Ok((out, page.next))
}

/// A turn (see [`Rotation`]) through the after-sales in `status` created from
/// `created_from_ms` (if given) and before `created_before_ms`, from where the last run named
/// `name` stopped.
pub async fn aftersale_rotation(
    store: &dyn Store,
    name: &str,
    status: AfterSaleStatus,
    created_from_ms: Option<i64>,
    created_before_ms: i64,
) -> Result<Rotation, StoreError> {
    Rotation::resume(
        store,
        name,
        Kind::AfterSale,
        status.as_str(),
        created_from_ms,
        Some(created_before_ms.saturating_sub(1)),
    )
    .await
}

// ---------------------------------------------------------------- refunds

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RefundStatus {
    /// Recorded; `secapi/pay/refund` not accepted yet.
    Pending,
    /// WeChat accepted the refund; waiting for the refund notification.
    Processing,
    Success,
    /// `REFUNDCLOSE` (or refused): the money did not leave.
    Failed,
    /// `CHANGE`: WeChat took the refund but could not pay it into the user's account; it
    /// waits at WeChat for the merchant to redirect it. Never asked for again.
    Abnormal,
}

impl RefundStatus {
    pub const ALL: [RefundStatus; 5] = [
        RefundStatus::Pending,
        RefundStatus::Processing,
        RefundStatus::Success,
        RefundStatus::Failed,
        RefundStatus::Abnormal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RefundStatus::Pending => "PENDING",
            RefundStatus::Processing => "PROCESSING",
            RefundStatus::Success => "SUCCESS",
            RefundStatus::Failed => "FAILED",
            RefundStatus::Abnormal => "ABNORMAL",
        }
    }
}

/// Who asked WeChat Pay for a refund.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RefundOrigin {
    /// wxshop, for an after-sale (`secapi/pay/refund`). Every record written before origins
    /// were kept is one of these.
    #[default]
    Wxshop,
    /// Made outside wxshop — by a person in the WeChat Pay merchant platform
    /// (`refund_request_source` `VENDOR_PLATFORM`) or by another system holding our API key —
    /// and learnt from its refund notification: no after-sale of ours asked for it
    /// ([`crate::handlers::pay_callback`]).
    ByHand,
}

impl RefundOrigin {
    pub fn is_wxshop(&self) -> bool {
        *self == RefundOrigin::Wxshop
    }
}

/// One refund, keyed by `out_refund_no` (fixed by the after-sale for all retries; WeChat's
/// for a refund made by hand).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundRecord {
    pub out_refund_no: OutRefundNo,
    pub out_trade_no: OutTradeNo,
    /// The after-sale it refunds; `None` only for a refund made by hand
    /// ([`RefundOrigin::ByHand`]) until a person records the after-sale it paid
    /// (`mark_refunded` with its `out_refund_no`), which it then names so it settles no other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aftersale_id: Option<AfterSaleId>,
    pub amount: Fen,
    pub status: RefundStatus,
    #[serde(default)]
    pub refund_id: Option<String>,
    #[serde(default, skip_serializing_if = "RefundOrigin::is_wxshop")]
    pub origin: RefundOrigin,
    /// WeChat's `refund_request_source` (`VENDOR_PLATFORM`, `API`), for a refund made by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_source: Option<String>,
    /// When WeChat says the money went back (`success_time` of the refund notification or
    /// `refund_success_time` of refundquery), when it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub succeeded_at_ms: Option<i64>,
    /// When we recorded the SUCCESS WeChat reported (notification or refundquery); `None`
    /// for one not (yet) successful, one a person marked refunded, and records written
    /// before this was kept. It places a successful refund in the status index, so
    /// reconciliation finds the refunds recorded successful on a day
    /// ([`refunds_recorded_successful_between`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_recorded_at_ms: Option<i64>,
    #[serde(default)]
    pub created_at_ms: i64,
    #[serde(default)]
    pub updated_at_ms: i64,
    /// When the schedule last asked WeChat about it (`refundquery`) and it was not settled:
    /// it waits its turn again, so refunds WeChat keeps processing for days do not crowd
    /// out the others ([`crate::handlers::aftersale_sync::sweep_refunds`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked_at_ms: Option<i64>,
}

impl RefundRecord {
    /// A new `Pending` refund.
    pub fn new(
        out_refund_no: OutRefundNo,
        out_trade_no: OutTradeNo,
        aftersale_id: AfterSaleId,
        amount: Fen,
        now_ms: i64,
    ) -> Self {
        RefundRecord {
            out_refund_no,
            out_trade_no,
            aftersale_id: Some(aftersale_id),
            amount,
            status: RefundStatus::Pending,
            refund_id: None,
            origin: RefundOrigin::Wxshop,
            request_source: None,
            succeeded_at_ms: None,
            success_recorded_at_ms: None,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
            checked_at_ms: None,
        }
    }

    /// The last time anything was heard or asked of this refund.
    pub fn last_seen_ms(&self) -> i64 {
        self.updated_at_ms.max(self.checked_at_ms.unwrap_or(0))
    }
}

/// Refunds: id = out_refund_no, owner = out_trade_no, status = status, sort = created —
/// except a SUCCESS WeChat reported, sorted by when we recorded it
/// ([`RefundRecord::success_recorded_at_ms`]): the refunds of the status index's SUCCESS
/// partition are then in the order they became successful here, which is what a
/// reconciliation of a day reads. (Nothing walks that partition by creation.)
fn refund_record(r: &RefundRecord, version: u64) -> Result<Record, StoreError> {
    let mut rec = Record::new(Kind::Refund, r.out_refund_no.as_str(), Record::encode(r)?);
    rec.version = version;
    rec.owner = Some(r.out_trade_no.as_str().to_owned());
    rec.status = Some(r.status.as_str().to_owned());
    rec.sort = match (r.status, r.success_recorded_at_ms) {
        (RefundStatus::Success, Some(at)) => at,
        _ => r.created_at_ms,
    };
    Ok(rec)
}

pub async fn get_refund(
    store: &dyn Store,
    out_refund_no: &OutRefundNo,
) -> Result<Option<Versioned<RefundRecord>>, StoreError> {
    get_typed(store, Kind::Refund, out_refund_no.as_str()).await
}

/// One page of the refunds whose SUCCESS (as WeChat reported it) we recorded within
/// `[from_ms, to_ms]`, in that order: the status index's SUCCESS partition, filtered to the
/// records that carry the time (the partition also holds, by creation time, the ones a
/// person marked refunded and ones recorded before the time was kept).
pub async fn refunds_recorded_successful_between(
    store: &dyn Store,
    from_ms: i64,
    to_ms: i64,
    cursor: Option<String>,
) -> Result<(Vec<RefundRecord>, Option<String>), StoreError> {
    let mut q = Query::new(
        Kind::Refund,
        Index::Status(RefundStatus::Success.as_str().to_owned()),
    );
    q.sort_min = Some(from_ms);
    q.sort_max = Some(to_ms);
    q.limit = 100;
    q.cursor = cursor;
    let page = store.query(q).await?;
    let mut refunds = Vec::with_capacity(page.records.len());
    for rec in &page.records {
        let r: RefundRecord = rec.decode()?;
        if r.success_recorded_at_ms
            .is_some_and(|t| (from_ms..=to_ms).contains(&t))
        {
            refunds.push(r);
        }
    }
    Ok((refunds, page.next))
}

/// An order's refunds (at most 100), in the owner index's order: by creation, a SUCCESS
/// WeChat reported by when it was recorded.
pub async fn refunds_of_order(
    store: &dyn Store,
    out_trade_no: &OutTradeNo,
) -> Result<Vec<Versioned<RefundRecord>>, StoreError> {
    let mut q = Query::new(Kind::Refund, Index::Owner(out_trade_no.as_str().to_owned()));
    q.limit = 100;
    let page = store.query(q).await?;
    page.records.iter().map(versioned).collect()
}

// ---------------------------------------------------------------- events

/// An inbound push or notification as received, stored once per dedupe key so a replay is
/// recognised (the create fails with a conflict on its write).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Who sent it: `pay`, `refund`, `push`, …
    pub source: String,
    /// The sender's identity for the event (e.g. `transaction_id`, `FromUserName+CreateTime`).
    pub key: String,
    pub received_at_ms: i64,
    /// The verified body as received (or a summary of it).
    pub body: String,
    /// Epoch seconds after which the record (and its dedupe) is dropped; `None` keeps it.
    #[serde(default)]
    pub expires_at: Option<i64>,
}

impl EventRecord {
    pub fn new(
        source: impl Into<String>,
        key: impl Into<String>,
        received_at_ms: i64,
        body: impl Into<String>,
    ) -> Self {
        EventRecord {
            source: source.into(),
            key: key.into(),
            received_at_ms,
            body: body.into(),
            expires_at: None,
        }
    }

    /// The record id: `{source}/{key}`, so sources never share dedupe keys.
    pub fn dedupe_id(source: &str, key: &str) -> String {
        format!("{source}/{key}")
    }
}

/// Events: id = `{source}/{key}`, owner = source, sort = received_at_ms.
fn event_record(e: &EventRecord, version: u64) -> Result<Record, StoreError> {
    let mut rec = Record::new(
        Kind::Event,
        EventRecord::dedupe_id(&e.source, &e.key),
        Record::encode(e)?,
    );
    rec.version = version;
    rec.owner = Some(e.source.clone());
    rec.sort = e.received_at_ms;
    rec.expires_at = e.expires_at;
    Ok(rec)
}

pub async fn get_event(
    store: &dyn Store,
    source: &str,
    key: &str,
) -> Result<Option<Versioned<EventRecord>>, StoreError> {
    get_typed(store, Kind::Event, &EventRecord::dedupe_id(source, key)).await
}

/// Events of one source, newest first, `limit` at a time (the owner index, ordered by
/// `received_at_ms`). Events of all sources together have no index of their own.
pub async fn events_of(
    store: &dyn Store,
    source: &str,
    limit: usize,
    cursor: Option<String>,
) -> Result<(Vec<EventRecord>, Option<String>), StoreError> {
    newest_of_owner(store, Kind::Event, source, limit, cursor).await
}

/// Records `event` on its own: `Ok(true)` if new, `Ok(false)` if it was already recorded.
pub async fn record_event(store: &dyn Store, event: &EventRecord) -> Result<bool, StoreError> {
    let mut b = Batch::new();
    b.record_event(event);
    match b.commit(store).await {
        Ok(()) => Ok(true),
        Err(StoreError::Conflict { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

// ---------------------------------------------------------------- blocked users

/// A user the merchant blocked (`/admin/orderSync {"action": "block_user"}`): `login` and
/// `unifiedOrder` refuse them (one point read each, [`get_user_block`]); nothing else reads it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserBlock {
    pub openid: OpenId,
    /// Why, as the merchant wrote it (≤ 200 characters).
    pub reason: String,
    /// Who blocked: the admin caller (IAM user or role in AWS, `ADMIN_TOKEN` in wxlocal).
    pub blocked_by: String,
    pub blocked_at_ms: i64,
}

/// The one owner every block is listed under (blocks are few; one index partition).
pub const BLOCKED_USERS_OWNER: &str = "all";

/// Blocked users: id = openid, owner = [`BLOCKED_USERS_OWNER`], sort = blocked_at_ms.
fn user_block_record(b: &UserBlock) -> Result<Record, StoreError> {
    let mut rec = Record::new(Kind::BlockedUser, b.openid.as_str(), Record::encode(b)?);
    rec.owner = Some(BLOCKED_USERS_OWNER.to_owned());
    rec.sort = b.blocked_at_ms;
    Ok(rec)
}

/// The block of `openid`, if any: one point read.
pub async fn get_user_block(
    store: &dyn Store,
    openid: &OpenId,
) -> Result<Option<UserBlock>, StoreError> {
    Ok(get_typed(store, Kind::BlockedUser, openid.as_str())
        .await?
        .map(|v: Versioned<UserBlock>| v.value))
}

/// The block of `openid` with its version, if any: what a conditional block or unblock
/// ([`Batch::block_user_as_read`], [`Batch::unblock_user_as_read`]) is conditioned on.
pub async fn get_user_block_versioned(
    store: &dyn Store,
    openid: &OpenId,
) -> Result<Option<Versioned<UserBlock>>, StoreError> {
    get_typed(store, Kind::BlockedUser, openid.as_str()).await
}

/// Blocked users, newest block first, `limit` at a time.
pub async fn user_blocks(
    store: &dyn Store,
    limit: usize,
    cursor: Option<String>,
) -> Result<(Vec<UserBlock>, Option<String>), StoreError> {
    newest_of_owner(store, Kind::BlockedUser, BLOCKED_USERS_OWNER, limit, cursor).await
}

// ---------------------------------------------------------------- batch

/// Writes collected for one atomic commit. Every method adds exactly one write and returns
/// its index in the batch (the `index` of a [`StoreError::Conflict`] it causes).
///
/// Encoding errors are kept and reported by [`Batch::commit`], so building stays fluent.
#[derive(Debug, Default)]
pub struct Batch {
    writes: Vec<Write>,
    error: Option<StoreError>,
}

impl Batch {
    pub fn new() -> Self {
        Batch::default()
    }

    pub fn len(&self) -> usize {
        self.writes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// The writes so far (for inspection and tests).
    pub fn writes(&self) -> &[Write] {
        &self.writes
    }

    /// Adds a raw write.
    pub fn push(&mut self, write: Write) -> usize {
        self.writes.push(write);
        self.writes.len() - 1
    }

    fn put(&mut self, record: Result<Record, StoreError>, expect: Expect) -> usize {
        match record {
            Ok(record) => self.push(Write::put(record, expect)),
            Err(e) => {
                self.error.get_or_insert(e);
                // Keep indexes aligned with calls; the batch never commits anyway.
                self.push(Write::Check {
                    kind: Kind::Kv,
                    id: String::new(),
                    expect: Expect::Any,
                })
            }
        }
    }

    fn update<T>(
        &mut self,
        kind: Kind,
        prev: &Versioned<T>,
        prev_id: &str,
        next_id: &str,
        record: impl FnOnce(u64) -> Result<Record, StoreError>,
    ) -> usize {
        if prev_id != next_id {
            self.error.get_or_insert(StoreError::Backend(format!(
                "update of {kind:?} {prev_id} tried to change its id to {next_id}"
            )));
        }
        let rec = record(prev.version + 1);
        self.put(rec, Expect::Version(prev.version))
    }

    /// A new order (fails if the out_trade_no exists).
    pub fn create_order(&mut self, order: &Order) -> usize {
        self.put(order_record(order, 1), Expect::Absent)
    }

    /// `prev` as read, replaced by `next` (fails if the order changed since).
    pub fn update_order(&mut self, prev: &Versioned<Order>, next: &Order) -> usize {
        self.update(
            Kind::Order,
            prev,
            prev.value.out_trade_no.as_str(),
            next.out_trade_no.as_str(),
            |v| order_record(next, v),
        )
    }

    pub fn create_product(&mut self, product: &Product) -> usize {
        self.put(product_record(product, 1), Expect::Absent)
    }

    pub fn update_product(&mut self, prev: &Versioned<Product>, next: &Product) -> usize {
        self.update(
            Kind::Product,
            prev,
            prev.value.product_id.as_str(),
            next.product_id.as_str(),
            |v| product_record(next, v),
        )
    }

    pub fn create_aftersale(&mut self, aftersale: &AfterSale) -> usize {
        self.put(aftersale_record(aftersale, 1), Expect::Absent)
    }

    pub fn update_aftersale(&mut self, prev: &Versioned<AfterSale>, next: &AfterSale) -> usize {
        self.update(
            Kind::AfterSale,
            prev,
            prev.value.id.as_str(),
            next.id.as_str(),
            |v| aftersale_record(next, v),
        )
    }

    pub fn create_refund(&mut self, refund: &RefundRecord) -> usize {
        self.put(refund_record(refund, 1), Expect::Absent)
    }

    pub fn update_refund(&mut self, prev: &Versioned<RefundRecord>, next: &RefundRecord) -> usize {
        self.update(
            Kind::Refund,
            prev,
            prev.value.out_refund_no.as_str(),
            next.out_refund_no.as_str(),
            |v| refund_record(next, v),
        )
    }

    /// Records an event once: a conflict on this write means it is a replay.
    pub fn record_event(&mut self, event: &EventRecord) -> usize {
        self.put(event_record(event, 1), Expect::Absent)
    }

    /// Blocks a user: writes the block whatever was there (blocking again replaces the
    /// reason and time).
    pub fn put_user_block(&mut self, block: &UserBlock) -> usize {
        self.put(user_block_record(block), Expect::Any)
    }

    /// Unblocks a user (nothing to delete is no error).
    pub fn delete_user_block(&mut self, openid: &OpenId) -> usize {
        self.push(Write::Delete {
            kind: Kind::BlockedUser,
            id: openid.as_str().to_owned(),
            expect: Expect::Any,
        })
    }

    /// Adds an outbox entry, written with the rest of the batch.
    pub fn enqueue(&mut self, entry: OutboxEntry) -> usize {
        self.put(outbox::to_record(&entry, 1), Expect::Absent)
    }

    /// Only a condition: the order is still at the version read.
    pub fn check_order(&mut self, order: &Versioned<Order>) -> usize {
        self.push(Write::Check {
            kind: Kind::Order,
            id: order.value.out_trade_no.as_str().to_owned(),
            expect: Expect::Version(order.version),
        })
    }

    /// Only a condition: the after-sale is still at the version read.
    pub fn check_aftersale(&mut self, aftersale: &Versioned<AfterSale>) -> usize {
        self.push(Write::Check {
            kind: Kind::AfterSale,
            id: aftersale.value.id.as_str().to_owned(),
            expect: Expect::Version(aftersale.version),
        })
    }

    /// Only a condition: there is still no after-sale `id`, as read.
    pub fn check_no_aftersale(&mut self, id: &AfterSaleId) -> usize {
        self.push(Write::Check {
            kind: Kind::AfterSale,
            id: id.as_str().to_owned(),
            expect: Expect::Absent,
        })
    }

    /// Only a condition: the refund record is still at the version read.
    pub fn check_refund(&mut self, refund: &Versioned<RefundRecord>) -> usize {
        self.push(Write::Check {
            kind: Kind::Refund,
            id: refund.value.out_refund_no.as_str().to_owned(),
            expect: Expect::Version(refund.version),
        })
    }

    /// Only a condition: there is still no refund record `no`, as read.
    pub fn check_no_refund(&mut self, no: &OutRefundNo) -> usize {
        self.push(Write::Check {
            kind: Kind::Refund,
            id: no.as_str().to_owned(),
            expect: Expect::Absent,
        })
    }

    /// Only a condition: the product is still at the version read.
    pub fn check_product(&mut self, product: &Versioned<Product>) -> usize {
        self.push(Write::Check {
            kind: Kind::Product,
            id: product.value.product_id.as_str().to_owned(),
            expect: Expect::Version(product.version),
        })
    }

    /// Blocks a user over the block read (`None`: none), one version on: fails if a block was
    /// added, changed or lifted since — so an unblock conditioned on the block it read
    /// ([`Batch::unblock_user_as_read`]) never lifts a block written after its read.
    ///
    /// A new block starts at a random version (in `[2^32, 2^32 + 2^52)`: exact in DynamoDB's
    /// numbers, SQLite's integers and JSON), not 1: a block lifted and written again must not
    /// repeat the version an unblock read before the lift, or that unblock's condition would
    /// hold on the new block and lift it.
    pub fn block_user_as_read(
        &mut self,
        prev: Option<&Versioned<UserBlock>>,
        block: &UserBlock,
    ) -> usize {
        let (version, expect) = match prev {
            Some(p) => (p.version + 1, Expect::Version(p.version)),
            None => ((1u64 << 32) + (rand::random::<u64>() >> 12), Expect::Absent),
        };
        let rec = user_block_record(block).map(|mut r| {
            r.version = version;
            r
        });
        self.put(rec, expect)
    }

    /// Lifts the block read, only as read: fails if the user was blocked again (or the block
    /// changed, or was lifted) since.
    pub fn unblock_user_as_read(&mut self, prev: &Versioned<UserBlock>) -> usize {
        self.push(Write::Delete {
            kind: Kind::BlockedUser,
            id: prev.value.openid.as_str().to_owned(),
            expect: Expect::Version(prev.version),
        })
    }

    /// Writes everything or nothing. `Conflict { index }` names the write (as returned by the
    /// method that added it) whose condition failed. An empty batch is a no-op.
    pub async fn commit(self, store: &dyn Store) -> Result<(), StoreError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if self.writes.is_empty() {
            return Ok(());
        }
        store.write(self.writes).await
    }
}
