//! Stock back on refunds: the units a refunded after-sale took back go on sale again.
//!
//! Which units is the domain's rule ([`AfterSale::units_back`]): the whole price of a
//! quantity refunded, for goods never shipped or returned. It is decided once, when the
//! after-sale is recorded REFUNDED: every write that records it ([`due`]) adds in the same
//! transaction a [`Task::StockBack`] naming the units, so a crash after the refund cannot lose
//! them, and a repeated refund report (a replayed notification, the refund sweep, a push read
//! back) finds the after-sale REFUNDED already and adds none. The task ([`put_back`]) adds the
//! units to their products and records a `stock_back` event keyed by the after-sale in one
//! conditional transaction: a task run twice (a lease that ran out, a crash before the entry
//! was deleted) finds the event and adds nothing again.
//!
//! The units go where closing an unpaid order puts them (`Product::release`, the version on
//! sale), and, as there, the same write adds the product's stock mirror
//! ([`super::stock_mirror`]): WeChat's `stock_num` of a listed product follows shortly after.
//! A product or SKU removed since gets nothing; the event and a WARN log say so.

use super::common::{with_retries, Attempt};
use super::order_sync::TaskError;
use crate::app::App;
use crate::domain::{AfterSale, AfterSaleId, AfterSaleLine, Order};
use crate::outbox::{OutboxEntry, Task};
use crate::store::repo::{self, Batch, EventRecord};

/// The event source of units put back on sale, one event per after-sale (keyed by its id):
/// also what makes the task run once.
pub const STOCK_BACK_EVENTS: &str = "stock_back";

/// The task that puts back what `aftersale`, recorded REFUNDED now on `order` (as it stood
/// when the refund was recorded: whether it was shipped), took back — `None` if nothing. To be
/// written in the batch that records it refunded, and only when that batch changes it to
/// REFUNDED.
pub fn due(order: &Order, aftersale: &AfterSale, now_ms: i64) -> Option<OutboxEntry> {
    let lines = aftersale.units_back(order);
    if lines.is_empty() {
        return None;
    }
    Some(OutboxEntry::new(
        Task::StockBack {
            aftersale_id: aftersale.id.clone(),
            lines,
        },
        now_ms,
    ))
}

/// Outbox: adds `lines`, refunded by after-sale `id`, back to their products' stock, once.
pub async fn put_back(
    app: &App,
    id: &AfterSaleId,
    lines: &[AfterSaleLine],
) -> Result<(), TaskError> {
    let done = with_retries::<_, TaskError, _, _>(app, || async {
        let store = app.store.as_ref();
        if repo::get_event(store, STOCK_BACK_EVENTS, id.as_str())
            .await?
            .is_some()
        {
            return Ok(Attempt::Done(None));
        }
        let now = app.clock.now_ms();
        let mut batch = Batch::new();
        let (mut back, mut missing) = (Vec::new(), Vec::new());
        let mut seen = Vec::new();
        for line in lines {
            if seen.contains(&&line.product_id) {
                continue;
            }
            seen.push(&line.product_id);
            let of_product = lines.iter().filter(|l| l.product_id == line.product_id);
            let Some(p) = repo::get_product(store, &line.product_id).await? else {
                missing.extend(of_product.cloned());
                continue;
            };
            let mut np = p.value.clone();
            for l in of_product {
                if np.sku(&l.sku_id).is_some() {
                    np.release(&l.sku_id, l.quantity);
                    back.push(l.clone());
                } else {
                    missing.push(l.clone());
                }
            }
            if np != p.value {
                // As closing an unpaid order does: the stock only (no audit clock moved).
                batch.update_product(&p, &np);
                super::stock_mirror::add_to(app, &mut batch, &p.value, &np).await?;
            }
        }
        let body = serde_json::json!({
            "aftersale_id": id.as_str(),
            "back": back,
            "missing": missing,
        });
        batch.record_event(&EventRecord::new(
            STOCK_BACK_EVENTS,
            id.as_str(),
            now,
            body.to_string(),
        ));
        Ok(Attempt::Commit(batch, Some((back, missing))))
    })
    .await?;
    if let Some((back, missing)) = done {
        for l in &back {
            tracing::info!(aftersale_id = %id, product_id = %l.product_id, sku_id = %l.sku_id, quantity = l.quantity, "refunded units back on sale");
        }
        for l in &missing {
            tracing::warn!(aftersale_id = %id, product_id = %l.product_id, sku_id = %l.sku_id, quantity = l.quantity, "refunded units not put back: the product or SKU is gone");
        }
    }
    Ok(())
}
