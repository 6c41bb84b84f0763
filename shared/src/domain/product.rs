//! Products (SPU) and SKUs as the shop sells them, with the trading component's audit and
//! listing state. Only an approved, listed product with stock can be ordered.

use super::{Fen, ProductId, SkuId};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuditStatus {
    /// Not sent to WeChat yet.
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
