//! WeChat's platform taking a product off sale on its own — risk control, a violation: `spu`
//! status 13, "delisted by platform" (WECHAT_SHOP.md §3) — and putting it back (5).
//!
//! Its push, `open_product_spu_status_update` (§8), is what told us, and WeChat does not
//! promise to deliver pushes (§0: poll the `get` APIs). One lost left the product on sale here
//! for good: users saw it and ordered it, and WeChat refused every order of it at
//! `shop/order/add` — a bare 502 to the user, nothing to the merchant. So it is read back:
//!
//! - when `shop/order/add` refuses an order ([`refused_as_delisted`]): the order's products
//!   are read at WeChat (`spu/get`), and those WeChat holds delisted by the platform are
//!   delisted here, the order answered 409 `NOT_FOR_SALE` (it is closed, stock back, its key
//!   released, as every refused order is). Only on a refusal: an order that goes through
//!   costs no extra call;
//! - by the schedule ([`sweep`], with the audit sweep): WeChat's list of products delisted by
//!   the platform (`spu/get_list` status 13, at most [`LIST_PAGES`] pages a run) delists
//!   those still listed here; and our products held delisted by the platform are read at
//!   WeChat in turn (`spu/get`, at most about [`RESTORE_ASKS`] a run), those WeChat lists
//!   again (5) put back on sale — the restore push may be lost too.
//!
//! Each delisting or restore that changes a product here, however learnt (the push
//! included), is recorded in the same write as a [`PLATFORM_DELISTING_EVENTS`] event: the
//! merchant's one place to see what WeChat's platform did.
//!
//! A product the merchant delisted is theirs: the platform's delisting does not mark it
//! ([`Product::delist_by_platform`]) and no restore lists it ([`Product::restore_by_platform`]).

use super::common::{component_on, update_product, with_retries, Attempt};
use super::shop_orders::wx_error;
use crate::app::App;
use crate::domain::{Order, Product, ProductId};
use crate::http::ApiError;
use crate::shop::catalog::SpuListRequest;
use crate::shop::types::ProductKey;
use crate::store::kv;
use crate::store::repo::{self, Batch, EventRecord};

/// `spu` status: listed (on shelf).
pub const STATUS_LISTED: i64 = 5;
/// `spu` status: delisted by the merchant.
pub const STATUS_DELISTED_BY_MERCHANT: i64 = 11;
/// `spu` status: delisted by the platform (violation, risk control).
pub const STATUS_DELISTED_BY_PLATFORM: i64 = 13;

/// Pages of WeChat's platform-delisted products read a run (100 each).
const LIST_PAGES: u32 = 3;
/// WeChat's page size for `spu/get_list` (its most).
const LIST_PAGE_SIZE: u32 = 100;
/// Our products held delisted by the platform asked about a run (one `spu/get` each); a page
/// of [`SCAN_PAGE`] already started is finished, so a run asks fewer than this plus a page.
const RESTORE_ASKS: usize = 20;
/// Products of our catalog read per store query by the restore scan.
const SCAN_PAGE: usize = 20;
/// Products of our catalog the restore scan reads a run at most.
const SCAN_MAX: usize = 200;
/// Where the restore scan of our catalog stands: a store cursor, or "" for the start.
const SCAN_KEY: &str = "rotation/platform-delisted";
/// Products read at WeChat after one `shop/order/add` refusal, at most (a cart has 20 lines).
const REFUSAL_READS: usize = 20;

/// The event source of WeChat's platform taking a product off sale here (status 13) or
/// putting it back (5), one event each time it changed something here, whichever way it was
/// learnt: `{product_id, status, via}` (`via`: `push`, `order_refused`, `schedule`). The
/// merchant's one place to see it: the delisting itself comes with no answer to anyone.
pub const PLATFORM_DELISTING_EVENTS: &str = "platform_delisting";

/// How a platform delisting or restore was learnt, as its event says.
#[derive(Clone, Copy, Debug)]
pub enum Via {
    /// `open_product_spu_status_update`.
    Push,
    /// `shop/order/add` refused an order, and `spu/get` read the product delisted.
    OrderRefused,
    /// The schedule's read-back (`spu/get_list`, `spu/get`).
    Schedule,
}

impl Via {
    fn as_str(self) -> &'static str {
        match self {
            Via::Push => "push",
            Via::OrderRefused => "order_refused",
            Via::Schedule => "schedule",
        }
    }
}

/// Applies `change` (a platform delisting or restore: whether it changed anything) to product
/// `id`, and records a [`PLATFORM_DELISTING_EVENTS`] event in the same write when it did.
/// Whether it changed anything; `None`: no such product here.
async fn apply(
    app: &App,
    id: &ProductId,
    status: i64,
    via: Via,
    change: fn(&mut Product) -> bool,
) -> Result<Option<bool>, ApiError> {
    with_retries(app, || async {
        let Some(current) = repo::get_product(app.store.as_ref(), id).await? else {
            return Ok(Attempt::Done(None));
        };
        let mut next = current.value.clone();
        if !change(&mut next) {
            return Ok(Attempt::Done(Some(false)));
        }
        let now = app.clock.now_ms();
        next.updated_at_ms = now;
        let mut batch = Batch::new();
        batch.update_product(&current, &next);
        let body = serde_json::json!({
            "product_id": id.as_str(),
            "status": status,
            "via": via.as_str(),
        });
        batch.record_event(&EventRecord::new(
            PLATFORM_DELISTING_EVENTS,
            format!("{id}:{now}"),
            now,
            body.to_string(),
        ));
        Ok(Attempt::Commit(batch, Some(true)))
    })
    .await
}

/// Marks `id` delisted by WeChat's platform here (see [`Product::delist_by_platform`]):
/// whether it was listed and now is not (an event recorded then); `None`: no such product.
pub(super) async fn delist(app: &App, id: &ProductId, via: Via) -> Result<Option<bool>, ApiError> {
    apply(
        app,
        id,
        STATUS_DELISTED_BY_PLATFORM,
        via,
        Product::delist_by_platform,
    )
    .await
}

/// Puts `id` back on sale after WeChat's platform restored it, as WeChat's own record reads
/// (see [`Product::restore_by_platform`]): whether it was held delisted by the platform and
/// now is on sale (an event recorded then); `None`: no such product. A product the
/// merchant delisted: nothing.
pub(super) async fn restore(app: &App, id: &ProductId, via: Via) -> Result<Option<bool>, ApiError> {
    apply(app, id, STATUS_LISTED, via, Product::restore_by_platform).await
}

/// After WeChat's `shop/order/add` refused `order` for good: its products are read at WeChat
/// (`spu/get`, online version), and each WeChat holds delisted by the platform (13) is
/// delisted here. Those products (empty: the refusal is something else, or WeChat could not
/// be read — the refusal then stands as it was).
pub(super) async fn refused_as_delisted(app: &App, order: &Order) -> Vec<ProductId> {
    let mut ids: Vec<&ProductId> = Vec::new();
    for item in &order.items {
        if !ids.contains(&&item.product_id) {
            ids.push(&item.product_id);
        }
    }
    // Read at once, not one after another: the user is waiting, and a slow WeChat would
    // otherwise cost a timeout per product inside unifiedOrder's budget.
    let ids: Vec<&ProductId> = ids.into_iter().take(REFUSAL_READS).collect();
    let keys: Vec<ProductKey> = ids
        .iter()
        .map(|id| ProductKey::Out(id.to_string()))
        .collect();
    let reads = futures::future::join_all(keys.iter().map(|k| app.wx.spu_get(k, false))).await;
    let mut delisted = Vec::new();
    for (id, read) in ids.into_iter().zip(reads) {
        match read {
            Ok(spu) if spu.status == STATUS_DELISTED_BY_PLATFORM => {
                if let Err(e) = delist(app, id, Via::OrderRefused).await {
                    tracing::warn!(product_id = %id, error = %e, "delisted by WeChat's platform; not recorded here");
                }
                tracing::warn!(product_id = %id, "WeChat refused an order: the product is delisted by WeChat's platform (its push never came); delisted here");
                delisted.push(id.clone());
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(product_id = %id, error = %e, "order refused by WeChat; its product could not be read back");
            }
        }
    }
    delisted
}

/// 409 `NOT_FOR_SALE` for an order WeChat refused because of `delisted`.
pub(super) fn not_for_sale(delisted: &[ProductId]) -> ApiError {
    let names: Vec<&str> = delisted.iter().map(ProductId::as_str).collect();
    ApiError::conflict(
        "NOT_FOR_SALE",
        format!(
            "{} is no longer for sale: WeChat's platform took it off sale",
            names.join(", ")
        ),
    )
}

/// What [`sweep`] did, counted in the audit sweep's report.
#[derive(Debug, Default, Clone, Copy)]
pub struct PlatformSweep {
    /// Products WeChat lists as delisted by the platform that were on sale here: delisted.
    pub delisted: usize,
    /// Products held delisted by the platform that WeChat lists again: back on sale.
    pub restored: usize,
}

/// Platform delistings and restores whose push never came (see the module docs). `false`
/// with the report when `deadline` passed first (the next run goes on).
pub(super) async fn sweep(
    app: &App,
    deadline: crate::time::Deadline,
) -> Result<(PlatformSweep, bool), ApiError> {
    let mut report = PlatformSweep::default();
    if !component_on(app) {
        return Ok((report, true));
    }
    for page in 1..=LIST_PAGES {
        if deadline.passed() {
            return Ok((report, false));
        }
        let req = SpuListRequest {
            status: Some(STATUS_DELISTED_BY_PLATFORM),
            page,
            page_size: LIST_PAGE_SIZE,
            ..SpuListRequest::default()
        };
        let list = app.wx.spu_get_list(&req).await.map_err(wx_error)?;
        for spu in &list.spus {
            if spu.status != STATUS_DELISTED_BY_PLATFORM {
                continue;
            }
            let Ok(id) = ProductId::parse(spu.out_product_id.clone()) else {
                continue;
            };
            if delist(app, &id, Via::Schedule).await? == Some(true) {
                report.delisted += 1;
                tracing::warn!(product_id = %id, "delisted by WeChat's platform (its push never came): delisted here");
            }
        }
        let read = i64::from(page) * i64::from(LIST_PAGE_SIZE);
        if list.spus.len() < LIST_PAGE_SIZE as usize || read >= list.total_num {
            break;
        }
    }
    let finished = restore_scan(app, deadline, &mut report).await?;
    Ok((report, finished))
}

/// The products of our catalog, in turn from where the last run stopped (kv [`SCAN_KEY`]),
/// [`SCAN_MAX`] a run at most: each held delisted by the platform is read at WeChat and put
/// back on sale when WeChat lists it (5); one WeChat reads delisted by its merchant (11: the
/// console, another tool) is no longer the platform's hold, and stays delisted as the
/// merchant's.
async fn restore_scan(
    app: &App,
    deadline: crate::time::Deadline,
    report: &mut PlatformSweep,
) -> Result<bool, ApiError> {
    let store = app.store.as_ref();
    let saved = kv::get(store, SCAN_KEY).await?;
    let mut cursor = saved
        .as_ref()
        .map(|s| s.value.clone())
        .filter(|c| !c.is_empty());
    let mut read = 0;
    let mut asked = 0;
    let mut finished = true;
    while read < SCAN_MAX && asked < RESTORE_ASKS {
        if deadline.passed() {
            finished = false;
            break;
        }
        let (page, unreadable, next) = match repo::list_products_readable(
            store,
            repo::ProductFilter::All,
            SCAN_PAGE,
            cursor.clone(),
        )
        .await
        {
            // A cursor this store no longer takes: from the start again.
            Err(crate::store::StoreError::BadCursor) if cursor.is_some() => {
                cursor = None;
                continue;
            }
            other => other?,
        };
        // Skipped, named in the log: one such record used to stop the scan at its page for
        // good, no product after it restored.
        for u in &unreadable {
            tracing::error!(product_id = %u.product_id, error = %u.why, "platform restore scan: stored product unreadable; skipped");
        }
        read += (page.len() + unreadable.len()).max(1);
        for p in page {
            let p: Product = p.value;
            if !p.delisted_by_platform {
                continue;
            }
            asked += 1;
            let key = ProductKey::Out(p.product_id.to_string());
            match app.wx.spu_get(&key, false).await {
                Ok(spu) if spu.status == STATUS_LISTED => {
                    if restore(app, &p.product_id, Via::Schedule).await? == Some(true) {
                        report.restored += 1;
                        tracing::info!(product_id = %p.product_id, "restored by WeChat's platform (its push never came): on sale again");
                    }
                }
                Ok(spu) if spu.status == STATUS_DELISTED_BY_MERCHANT => {
                    update_product(app, &p.product_id, |p| {
                        p.delisted_by_platform = false;
                        Ok(())
                    })
                    .await?;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(product_id = %p.product_id, error = %e, "platform restore scan: WeChat not read; asked again next turn");
                }
            }
        }
        cursor = next;
        if cursor.is_none() {
            // The catalog's end: the next run starts again at the start.
            break;
        }
    }
    let until = app.clock.now_secs() + 30 * 24 * 3600;
    let value = cursor.unwrap_or_default();
    // Lost to a concurrent run, which went on from the same place.
    kv::put_if(store, SCAN_KEY, &value, until, saved.map(|s| s.version)).await?;
    Ok(finished)
}
