//! Products (SPU) and SKUs as the shop sells them, with the trading component's audit and
//! listing state. Only an approved, listed product with stock can be ordered.
//!
//! WeChat keeps two versions of a product: the *online* one, approved and on sale, and the
//! *draft* that `spu/update` writes and submits for audit. An edit of an approved product does
//! not take it off sale: the online version sells on until the draft is approved, and stays if
//! the draft is rejected. Here the product's own fields are the version that sells (for a
//! product never approved, the version submitted), and [`Product::edit`] holds an edit of an
//! approved product that is not online yet.

use super::{Fen, ProductId, SkuId};
use serde::{Deserialize, Serialize};

/// WeChat's `brand_id` for a product of no brand (WECHAT_SHOP.md §2.3, §3: `brand_id` is an
/// approved brand, or this).
pub const NO_BRAND: u64 = 2_100_000_000;

/// The shortest and longest product title WeChat takes, in characters (WECHAT_SHOP.md §3,
/// `title`: 3–60 chars).
pub const WX_TITLE_CHARS: std::ops::RangeInclusive<usize> = 3..=60;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuditStatus {
    /// Not (successfully) sent to WeChat yet.
    #[default]
    Draft,
    /// `spu/add` or `spu/update` accepted; waiting for the audit event.
    Auditing,
    Approved,
    Rejected,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Listing {
    #[default]
    Delisted,
    Listed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sku {
    pub sku_id: SkuId,
    /// Sale price in fen: the only price an order ever uses.
    pub price: Fen,
    #[serde(default)]
    pub market_price: Fen,
    /// Units available to sell (reserved units are already taken off).
    pub stock: u32,
    #[serde(default)]
    pub wx_sku_id: Option<u64>,
    #[serde(default)]
    pub attrs: Vec<(String, String)>,
}

impl Sku {
    /// Whether `other` asks another sale or market price.
    fn price_differs(&self, other: &Sku) -> bool {
        self.price != other.price || self.market_price != other.market_price
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    pub product_id: ProductId,
    pub title: String,
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub head_img: Vec<String>,
    #[serde(default)]
    pub third_cat_id: u64,
    #[serde(default)]
    pub brand_id: u64,
    /// The product's qualification images (`qualification_pics`), which WeChat requires of a
    /// category whose `product_qualification_type` is 1 (WECHAT_SHOP.md §2.1, §3).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub qualification_pics: Vec<String>,
    pub skus: Vec<Sku>,
    #[serde(default)]
    pub audit: AuditStatus,
    #[serde(default)]
    pub reject_reason: Option<String>,
    #[serde(default)]
    pub listing: Listing,
    #[serde(default)]
    pub wx_product_id: Option<u64>,
    #[serde(default)]
    pub updated_at_ms: i64,
    /// Why the product's own version, `DRAFT`, is not at WeChat: its submission failed. On a
    /// version `AUDITING`: its submission's answer was lost and WeChat could not be asked
    /// whether it took it ([`Product::draft_unconfirmed`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submit_error: Option<String>,
    /// An edit of the approved product that is not online yet; the product sells as approved
    /// (its own fields) meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edit: Option<Edit>,
    /// When the schedule last asked WeChat for the verdict on what is under audit and got
    /// none: it waits its turn again, so drafts WeChat never decides (or cannot find) do not
    /// crowd out the others (`catalog_sync::sweep_audits`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_asked_at_ms: Option<i64>,
    /// WeChat's platform holds the product off sale (`spu` status 13: risk control or a
    /// violation, WECHAT_SHOP.md §3), as its push, an order it refused or the schedule's
    /// read-back showed: the product is `DELISTED` here for that reason, and WeChat's restore
    /// (status 5) lists it again ([`Product::restore_by_platform`]). Never set on a product
    /// the merchant delisted: their delisting is theirs to lift.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delisted_by_platform: bool,
    /// What WeChat must approve before the draft can go to its audit: its submission was
    /// refused for want of it (1000005: the category's qualification; 1000006: the brand).
    /// Set with the draft's `submit_error`, cleared when a draft is submitted again. A product
    /// waiting for its category is submitted again by itself once WeChat approves the
    /// category's qualification audit (`catalog_sync::on_qualification_verdict`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<WaitingFor>,
}

/// What a product's draft waits for at WeChat ([`Product::waiting_for`]); as JSON
/// `{"category": third_cat_id}` or `{"brand": brand_id}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitingFor {
    /// The level-3 category's qualification (`shop/audit/audit_category`), WECHAT_SHOP.md §2.4.
    Category(u64),
    /// An authorised brand (`shop/audit/audit_brand`, §2.3): its approval gives a *new*
    /// `brand_id`, which the merchant upserts the product with.
    Brand(u64),
}

/// What WeChat reviews of a product (everything but stock, which is ours alone).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Content {
    pub title: String,
    pub path: String,
    pub head_img: Vec<String>,
    pub third_cat_id: u64,
    pub brand_id: u64,
    /// See [`Product::qualification_pics`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub qualification_pics: Vec<String>,
    pub skus: Vec<Sku>,
}

/// An approved product's edit that is not online yet (WeChat's draft).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edit {
    #[serde(flatten)]
    pub content: Content,
    /// `AUDITING` (submitted), `REJECTED` (`reject_reason` says why) or `DRAFT` (not
    /// submitted).
    pub audit: AuditStatus,
    #[serde(default)]
    pub reject_reason: Option<String>,
    /// Why the edit, `DRAFT`, is not at WeChat: its submission failed (`AUDITING`: not known
    /// to be at WeChat, as for the product's own `submit_error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submit_error: Option<String>,
}

/// How one version of a product differs from another, as far as WeChat is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContentChange {
    /// Nothing, stock included.
    None,
    /// Only the stock of some SKUs (listed).
    Stock(Vec<SkuId>),
    /// Only prices (and maybe stock) of some SKUs (listed): `spu/update_without_audit` can
    /// carry it for SKUs WeChat approved.
    Prices(Vec<SkuId>),
    /// Something WeChat reviews: a new audit.
    Reviewed,
}

impl Content {
    /// The SKUs whose price (sale or market) `next` changes from `self`'s.
    pub fn repriced_in(&self, next: &Content) -> Vec<SkuId> {
        next.skus
            .iter()
            .filter(|n| {
                self.skus
                    .iter()
                    .any(|s| s.sku_id == n.sku_id && s.price_differs(n))
            })
            .map(|n| n.sku_id.clone())
            .collect()
    }

    /// What changes from `self` to `next`.
    pub fn change_to(&self, next: &Content) -> ContentChange {
        let same_skus = self.skus.len() == next.skus.len()
            && self
                .skus
                .iter()
                .zip(&next.skus)
                .all(|(a, b)| a.sku_id == b.sku_id && a.attrs == b.attrs);
        if self.title != next.title
            || self.path != next.path
            || self.head_img != next.head_img
            || self.third_cat_id != next.third_cat_id
            || self.brand_id != next.brand_id
            || self.qualification_pics != next.qualification_pics
            || !same_skus
        {
            return ContentChange::Reviewed;
        }
        let repriced = !self.repriced_in(next).is_empty();
        let changed: Vec<SkuId> = self
            .skus
            .iter()
            .zip(&next.skus)
            .filter(|(a, b)| a.price_differs(b) || a.stock != b.stock)
            .map(|(_, b)| b.sku_id.clone())
            .collect();
        if repriced {
            ContentChange::Prices(changed)
        } else if !changed.is_empty() {
            ContentChange::Stock(changed)
        } else {
            ContentChange::None
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SellError {
    #[error("product {0} is not approved by WeChat's audit")]
    NotApproved(ProductId),
    #[error("product {0} is not listed")]
    NotListed(ProductId),
    #[error("product {0} has no sku {1}")]
    NoSuchSku(ProductId, SkuId),
    #[error("sku {sku} of product {product} has {available} left, {wanted} wanted")]
    SoldOut {
        product: ProductId,
        sku: SkuId,
        available: u32,
        wanted: u32,
    },
}

impl Product {
    /// A product WeChat has not seen: `content` is what will be submitted.
    pub fn new(product_id: ProductId, content: Content, now: i64) -> Product {
        let mut p = Product {
            product_id,
            title: String::new(),
            path: String::new(),
            head_img: Vec::new(),
            third_cat_id: 0,
            brand_id: 0,
            qualification_pics: Vec::new(),
            skus: Vec::new(),
            audit: AuditStatus::Draft,
            reject_reason: None,
            listing: Listing::Delisted,
            wx_product_id: None,
            updated_at_ms: now,
            submit_error: None,
            edit: None,
            audit_asked_at_ms: None,
            delisted_by_platform: false,
            waiting_for: None,
        };
        p.set_content(content);
        p
    }

    /// The product's own version: what sells once approved.
    pub fn content(&self) -> Content {
        Content {
            title: self.title.clone(),
            path: self.path.clone(),
            head_img: self.head_img.clone(),
            third_cat_id: self.third_cat_id,
            brand_id: self.brand_id,
            qualification_pics: self.qualification_pics.clone(),
            skus: self.skus.clone(),
        }
    }

    /// Replaces the product's own version (WeChat ids of SKUs kept).
    pub fn set_content(&mut self, c: Content) {
        let mut skus = c.skus;
        for s in &mut skus {
            if s.wx_sku_id.is_none() {
                s.wx_sku_id = self.sku(&s.sku_id).and_then(|k| k.wx_sku_id);
            }
        }
        self.title = c.title;
        self.path = c.path;
        self.head_img = c.head_img;
        self.third_cat_id = c.third_cat_id;
        self.brand_id = c.brand_id;
        self.qualification_pics = c.qualification_pics;
        self.skus = skus;
    }

    /// The version WeChat holds as the draft: the pending edit, else the product's own.
    pub fn draft(&self) -> Content {
        match &self.edit {
            Some(e) => e.content.clone(),
            None => self.content(),
        }
    }

    /// The audit state of [`Product::draft`].
    pub fn draft_audit(&self) -> AuditStatus {
        self.edit.as_ref().map_or(self.audit, |e| e.audit)
    }

    /// WeChat's platform took the product off sale (status 13): a listed product is delisted
    /// here, marked as the platform's doing. One already delisted — the merchant's own
    /// delisting — stays as it is, theirs. Whether anything changed.
    pub fn delist_by_platform(&mut self) -> bool {
        if self.listing != Listing::Listed {
            return false;
        }
        self.listing = Listing::Delisted;
        self.delisted_by_platform = true;
        true
    }

    /// WeChat's platform put the product back on sale (status 5, as WeChat's own record reads
    /// it): one it had delisted here is listed again. A product the merchant delisted stays
    /// delisted. Whether anything changed.
    pub fn restore_by_platform(&mut self) -> bool {
        if !self.delisted_by_platform {
            return false;
        }
        self.delisted_by_platform = false;
        self.listing = Listing::Listed;
        true
    }

    /// The last time anything was done to the product or asked of WeChat about its audit.
    pub fn audit_last_seen_ms(&self) -> i64 {
        self.updated_at_ms.max(self.audit_asked_at_ms.unwrap_or(0))
    }

    /// The draft is being submitted for audit (the edit of an approved product, else the
    /// product's own version).
    pub fn submit_draft(&mut self, next: Content) {
        self.waiting_for = None;
        if self.audit == AuditStatus::Approved {
            // Stock is not reviewed: it applies to the version on sale now.
            for s in &mut self.skus {
                if let Some(n) = next.skus.iter().find(|n| n.sku_id == s.sku_id) {
                    s.stock = n.stock;
                }
            }
            self.edit = Some(Edit {
                content: next,
                audit: AuditStatus::Auditing,
                reject_reason: None,
                submit_error: None,
            });
        } else {
            self.set_content(next);
            self.audit = AuditStatus::Auditing;
            self.reject_reason = None;
            self.submit_error = None;
        }
    }

    /// The draft's submission failed (`why`): nothing of it is under audit at WeChat (a
    /// pending audit may have been withdrawn to make room for it). It stays `DRAFT`, and the
    /// next upsert submits it.
    pub fn draft_not_submitted(&mut self, why: String) {
        match &mut self.edit {
            Some(e) => {
                e.audit = AuditStatus::Draft;
                e.submit_error = Some(why);
            }
            None => {
                self.audit = AuditStatus::Draft;
                self.submit_error = Some(why);
            }
        }
    }

    /// The draft's submission may have reached WeChat or not (`why`: its answer was lost, and
    /// WeChat could not be asked): it stays `AUDITING`, so WeChat's verdict on it (its push,
    /// the audit sweep) is applied once WeChat has it, and `why` is kept as its
    /// `submit_error`, so an upsert of the same version sends it again.
    pub fn draft_unconfirmed(&mut self, why: String) {
        match &mut self.edit {
            Some(e) => e.submit_error = Some(why),
            None => self.submit_error = Some(why),
        }
    }

    /// Why the draft is not (or not known to be) at WeChat, if it is not.
    pub fn draft_submit_error(&self) -> Option<&str> {
        match &self.edit {
            Some(e) => e.submit_error.as_deref(),
            None => self.submit_error.as_deref(),
        }
    }

    /// WeChat no longer has the product (deleted there, a fresh account): its approval,
    /// listing and any edit went with it; what is stored becomes a version not yet submitted.
    pub fn forget_wechat(&mut self) {
        if let Some(e) = self.edit.take() {
            self.set_content(e.content);
        }
        self.listing = Listing::Delisted;
        self.audit = AuditStatus::Draft;
        self.reject_reason = None;
        self.wx_product_id = None;
    }

    /// The draft was approved: an approved product's edit goes online (the stock of SKUs
    /// that were on sale stays as orders left it), a first version becomes approved.
    pub fn approve_draft(&mut self) {
        if let Some(edit) = self.edit.take() {
            let mut next = edit.content;
            for s in &mut next.skus {
                if let Some(live) = self.sku(&s.sku_id) {
                    s.stock = live.stock;
                }
            }
            self.set_content(next);
        }
        self.audit = AuditStatus::Approved;
        self.reject_reason = None;
        self.submit_error = None;
    }

    /// WeChat approved `approved`, a submission before the draft we hold as under audit (ours
    /// was on its way to WeChat when it was decided): that version is on sale at WeChat, so it
    /// sells here (the stock of SKUs on sale stays as orders left it), and ours stays under
    /// audit as the edit, waiting for its own verdict.
    pub fn approve_earlier(&mut self, mut approved: Content) {
        let ours = self.draft();
        let unconfirmed = self.draft_submit_error().map(str::to_owned);
        for s in &mut approved.skus {
            s.stock = self
                .sku(&s.sku_id)
                .or_else(|| ours.skus.iter().find(|k| k.sku_id == s.sku_id))
                .map_or(0, |k| k.stock);
        }
        self.set_content(approved);
        self.audit = AuditStatus::Approved;
        self.reject_reason = None;
        self.submit_error = None;
        self.edit = Some(Edit {
            content: ours,
            audit: AuditStatus::Auditing,
            reject_reason: None,
            submit_error: unconfirmed,
        });
    }

    /// The draft was rejected: an approved product keeps selling its approved version and
    /// the edit carries the reason; a first version is rejected.
    pub fn reject_draft(&mut self, reason: String) {
        match &mut self.edit {
            Some(e) => {
                e.audit = AuditStatus::Rejected;
                e.reject_reason = Some(reason);
                e.submit_error = None;
            }
            None if self.audit == AuditStatus::Approved => {
                // Nothing of ours was under audit: the online version stands.
            }
            None => {
                self.audit = AuditStatus::Rejected;
                self.reject_reason = Some(reason);
                self.submit_error = None;
            }
        }
    }

    pub fn sku(&self, sku_id: &SkuId) -> Option<&Sku> {
        self.skus.iter().find(|s| &s.sku_id == sku_id)
    }

    pub fn is_sellable(&self) -> bool {
        self.audit == AuditStatus::Approved && self.listing == Listing::Listed
    }

    /// Takes `qty` units of `sku_id` off the stock, returning the unit price to charge.
    pub fn reserve(&mut self, sku_id: &SkuId, qty: u32) -> Result<Fen, SellError> {
        if self.audit != AuditStatus::Approved {
            return Err(SellError::NotApproved(self.product_id.clone()));
        }
        if self.listing != Listing::Listed {
            return Err(SellError::NotListed(self.product_id.clone()));
        }
        let pid = self.product_id.clone();
        let sku = self
            .skus
            .iter_mut()
            .find(|s| &s.sku_id == sku_id)
            .ok_or_else(|| SellError::NoSuchSku(pid.clone(), sku_id.clone()))?;
        if qty == 0 || sku.stock < qty {
            return Err(SellError::SoldOut {
                product: pid,
                sku: sku_id.clone(),
                available: sku.stock,
                wanted: qty,
            });
        }
        sku.stock -= qty;
        Ok(sku.price)
    }

    /// Puts units back (order closed or expired unpaid).
    /// Takes `qty` of a SKU back whatever the product's audit or listing (an order closed
    /// unpaid, then paid after all, had given it back); `false` if that much is no longer
    /// there (nothing taken).
    pub fn take_back(&mut self, sku_id: &SkuId, qty: u32) -> bool {
        match self.skus.iter_mut().find(|s| &s.sku_id == sku_id) {
            Some(sku) if sku.stock >= qty => {
                sku.stock -= qty;
                true
            }
            _ => false,
        }
    }

    pub fn release(&mut self, sku_id: &SkuId, qty: u32) {
        if let Some(sku) = self.skus.iter_mut().find(|s| &s.sku_id == sku_id) {
            sku.stock = sku.stock.saturating_add(qty);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sku(id: &str, price: i64, stock: u32) -> Sku {
        Sku {
            sku_id: SkuId::parse(id).unwrap(),
            price: Fen::new(price).unwrap(),
            market_price: Fen::new(price).unwrap(),
            stock,
            wx_sku_id: None,
            attrs: vec![],
        }
    }

    fn content(title: &str, skus: Vec<Sku>) -> Content {
        Content {
            title: title.into(),
            path: "p".into(),
            head_img: vec![],
            third_cat_id: 1,
            brand_id: 2,
            qualification_pics: vec![],
            skus,
        }
    }

    #[test]
    fn a_change_is_classified_by_what_wechat_reviews() {
        let a = content("Tea", vec![sku("s1", 100, 5), sku("s2", 200, 5)]);
        assert_eq!(a.change_to(&a), ContentChange::None);
        let stock = content("Tea", vec![sku("s1", 100, 9), sku("s2", 200, 5)]);
        assert_eq!(
            a.change_to(&stock),
            ContentChange::Stock(vec![SkuId::parse("s1").unwrap()])
        );
        let price = content("Tea", vec![sku("s1", 100, 5), sku("s2", 250, 5)]);
        assert_eq!(
            a.change_to(&price),
            ContentChange::Prices(vec![SkuId::parse("s2").unwrap()])
        );
        let title = content("Green tea", vec![sku("s1", 100, 5), sku("s2", 200, 5)]);
        assert_eq!(a.change_to(&title), ContentChange::Reviewed);
        let new_sku = content("Tea", vec![sku("s1", 100, 5)]);
        assert_eq!(a.change_to(&new_sku), ContentChange::Reviewed);
    }

    #[test]
    fn an_approved_edit_goes_on_sale_keeping_the_stock_orders_left() {
        let id = ProductId::parse("tea").unwrap();
        let mut p = Product::new(id, content("Tea", vec![sku("s1", 100, 5)]), 0);
        p.approve_draft();
        p.listing = Listing::Listed;
        p.edit = Some(Edit {
            content: content("Green tea", vec![sku("s1", 120, 5), sku("s2", 300, 7)]),
            audit: AuditStatus::Auditing,
            reject_reason: None,
            submit_error: None,
        });
        let s1 = SkuId::parse("s1").unwrap();
        assert_eq!(p.reserve(&s1, 2), Ok(Fen::new(100).unwrap()));
        p.reject_draft("no".into());
        assert_eq!(p.audit, AuditStatus::Approved);
        assert_eq!(p.title, "Tea");
        p.approve_draft();
        assert!(p.edit.is_none());
        assert_eq!(p.title, "Green tea");
        assert_eq!(p.reserve(&s1, 1), Ok(Fen::new(120).unwrap()));
        assert_eq!(p.sku(&s1).unwrap().stock, 2);
        assert_eq!(p.sku(&SkuId::parse("s2").unwrap()).unwrap().stock, 7);
    }
}
