//! Types shared by several API families: the either-or identifiers and addresses.
//!
//! WeChat accepts its own id (`order_id`, a u64 beyond 2^53) **or** ours (`out_order_id`)
//! on most calls. The key enums make "exactly one of" a type, and flatten into the request
//! body as the single right field.

use super::serde_num;
use serde::{Deserialize, Serialize};

/// `order_id` (WeChat's) or `out_order_id` (ours). Flattens into a request body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum OrderKey {
    #[serde(rename = "order_id")]
    Id(u64),
    #[serde(rename = "out_order_id")]
    Out(String),
}

/// `product_id` (WeChat's) or `out_product_id` (ours).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum ProductKey {
    #[serde(rename = "product_id")]
    Id(u64),
    #[serde(rename = "out_product_id")]
    Out(String),
}

/// `aftersale_id` (WeChat's) or `out_aftersale_id` (ours).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum AfterSaleKey {
    #[serde(rename = "aftersale_id")]
    Id(u64),
    #[serde(rename = "out_aftersale_id")]
    Out(String),
}

/// A postal address (`address_info`, `default_receiving_address`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AddressInfo {
    pub receiver_name: String,
    pub detailed_address: String,
    pub tel_number: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub province: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub town: Option<String>,
}

/// Evidence attached to an after-sale (`media_list[]`). `type` 1 = image.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MediaItem {
    #[serde(rename = "type", deserialize_with = "serde_num::i64_or_string")]
    pub kind: i64,
    pub url: String,
    pub thumb_url: String,
}

/// `{openid}` plus a key, the body of many order/after-sale calls.
#[derive(Serialize)]
pub(crate) struct KeyOpenid<'a, K: Serialize> {
    #[serde(flatten)]
    pub(crate) key: &'a K,
    pub(crate) openid: &'a str,
}

/// Just a key.
#[derive(Serialize)]
pub(crate) struct KeyOnly<'a, K: Serialize> {
    #[serde(flatten)]
    pub(crate) key: &'a K,
}
