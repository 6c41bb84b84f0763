//! Orders (`shop/order/*`), the scene-independent part of payment, and delivery
//! (`shop/delivery/*`, with WeChat's `recieve` spelling).
//!
//! `order/add` has two traps handled here: `create_time` must be within 5 seconds of
//! WeChat's clock, so it is stamped at send time unless the caller pins it; and `order_id`
//! exceeds 2^53, so we ask for it as a string (`stringify_64bits_number`) and accept either.

use super::client::{Data, Empty, WxClient};
use super::error::WxError;
use super::serde_num;
use super::types::{AddressInfo, KeyOpenid, OrderKey};
use crate::domain::Fen;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// `order/add` body.
#[derive(Clone, Debug, Default, Serialize)]
pub struct OrderAddRequest {
    /// `yyyy-MM-dd HH:mm:ss` Beijing time; `None` = stamped when the request is sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub create_time: Option<String>,
    pub out_order_id: String,
    pub openid: String,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scene: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out_user_id: Option<String>,
    pub order_detail: OrderDetail,
    pub delivery_detail: DeliveryDetailReq,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address_info: Option<AddressInfo>,
    /// 0 ordinary, 1 secondary-merchant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fund_type: Option<u8>,
    /// Unix seconds, 15 min … 1 day ahead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expire_time: Option<i64>,
    /// Days, 7 … 1095.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aftersale_duration: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_receiving_address: Option<AddressInfo>,
}

/// `order_detail` of a request (and, with more fields filled, of `order/get`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct OrderDetail {
    pub product_infos: Vec<OrderProductInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pay_info: Option<PayInfo>,
    pub price_info: PriceInfo,
    #[serde(skip_serializing)]
    pub delivery_detail: Option<DeliveryDetailInfo>,
    #[serde(skip_serializing)]
    pub promotion_info: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct OrderProductInfo {
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "serde_num::opt_u64"
    )]
    pub product_id: Option<u64>,
    pub out_product_id: String,
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "serde_num::opt_u64"
    )]
    pub sku_id: Option<u64>,
    pub out_sku_id: String,
    #[serde(deserialize_with = "serde_num::i64_or_string")]
    pub product_cnt: i64,
    /// Unit price at order time.
    #[serde(deserialize_with = "serde_num::fen")]
    pub sale_price: Fen,
    /// Total actually paid for this line after discounts.
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "serde_num::opt_fen"
    )]
    pub sku_real_price: Option<Fen>,
    /// Per-unit price after discount allocation (`order/get`).
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "serde_num::opt_fen"
    )]
    pub real_price: Option<Fen>,
    pub path: String,
    pub title: String,
    pub head_img: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PayInfo {
    /// 0 WeChat Pay, 1 cash on delivery, 2 stored-value card.
    #[serde(deserialize_with = "serde_num::i64_or_string")]
    pub pay_method_type: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prepay_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prepay_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transaction_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pay_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pay_method: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PriceInfo {
    #[serde(deserialize_with = "serde_num::fen")]
    pub order_price: Fen,
    #[serde(deserialize_with = "serde_num::fen")]
    pub freight: Fen,
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "serde_num::opt_fen"
    )]
    pub discounted_price: Option<Fen>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "serde_num::opt_fen"
    )]
    pub additional_price: Option<Fen>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub additional_remarks: Option<String>,
}

/// `delivery_detail` of `order/add`: 1 express, 2 none, 3 offline, 4 self-pickup.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DeliveryDetailReq {
    pub delivery_type: i64,
}

/// `order_detail.delivery_detail` of `order/get` (after `delivery/send`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DeliveryDetailInfo {
    #[serde(deserialize_with = "serde_num::i64_or_string")]
    pub delivery_type: i64,
    #[serde(deserialize_with = "serde_num::i64_or_string")]
    pub finish_all_delivery: i64,
    pub delivery_list: Vec<DeliveryParcelInfo>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DeliveryParcelInfo {
    pub delivery_id: String,
    pub waybill_id: String,
}

/// `order/add` → `data`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct OrderAddResult {
    #[serde(deserialize_with = "serde_num::u64_or_string")]
    pub order_id: u64,
    pub out_order_id: String,
    pub ticket: String,
    pub ticket_expire_time: String,
    #[serde(deserialize_with = "serde_num::fen")]
    pub final_price: Fen,
}

/// `order/pay` body. `action_type`: 1 paid, 2 failed, 3 user cancelled, 4 timeout,
/// 5 merchant cancelled, 10 other.
#[derive(Clone, Debug, Serialize)]
pub struct OrderPayRequest {
    #[serde(flatten)]
    pub key: OrderKey,
    pub openid: String,
    pub action_type: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action_remark: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transaction_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pay_time: Option<String>,
}

/// Whether a component order's `status` ([`OrderInfo::status`]) is cancelled — never paid,
/// and no longer payable: 181, an unpaid timeout (seen in one code base only, UNVERIFIED), or
/// 250, cancelled by the user in WeChat's order centre, by the merchant, or on an unpaid
/// timeout (WECHAT_SHOP.md §5.3). Numerically past every step of a paid order, yet none of
/// them happened. (200, every item through after-sales, is not: only a paid order gets there.)
pub const fn is_cancelled(status: i64) -> bool {
    matches!(status, 181 | 250)
}

/// An order as `order/get` / `order/get_list` return it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct OrderInfo {
    #[serde(deserialize_with = "serde_num::u64_or_string")]
    pub order_id: u64,
    pub out_order_id: String,
    pub openid: Option<String>,
    /// 10 unpaid, 11 cashier done (unpaid still), 20 paid, 21 partly shipped, 30 shipped,
    /// 100 done, 200 every item through after-sales, 181/250 cancelled ([`is_cancelled`];
    /// WECHAT_SHOP.md §5.3).
    #[serde(deserialize_with = "serde_num::i64_or_string")]
    pub status: i64,
    pub path: String,
    pub create_time: Option<String>,
    pub update_time: Option<String>,
    #[serde(deserialize_with = "serde_num::opt_i64")]
    pub fund_type: Option<i64>,
    #[serde(deserialize_with = "serde_num::opt_i64")]
    pub scene: Option<i64>,
    pub order_detail: OrderDetail,
    pub address_info: Option<AddressInfo>,
    pub default_receiving_address: Option<AddressInfo>,
}

/// `order/get_list` body.
#[derive(Clone, Debug, Serialize)]
pub struct OrderListRequest {
    pub page: u32,
    pub page_size: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sort_order: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_create_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_create_time: Option<String>,
}

impl Default for OrderListRequest {
    fn default() -> Self {
        OrderListRequest {
            page: 1,
            page_size: 100,
            sort_order: None,
            start_create_time: None,
            end_create_time: None,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct OrderList {
    pub orders: Vec<OrderInfo>,
    #[serde(deserialize_with = "serde_num::i64_or_string")]
    pub total_num: i64,
}

/// `order/getpaymentparams` → `payment_params`, ready for `wx.requestOrderPayment`.
/// `timeStamp` arrives as a number; it is kept as the string the JS API wants.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PaymentParams {
    #[serde(rename = "timeStamp", deserialize_with = "serde_num::string_or_number")]
    pub time_stamp: String,
    #[serde(rename = "nonceStr")]
    pub nonce_str: String,
    pub package: String,
    #[serde(rename = "paySign")]
    pub pay_sign: String,
    #[serde(rename = "signType")]
    pub sign_type: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PaymentParamsReply {
    payment_params: PaymentParams,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct OrderGetReply {
    order: OrderInfo,
}

// ---------------------------------------------------------------- delivery

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DeliveryCompany {
    pub delivery_id: String,
    pub delivery_name: String,
}

/// How long a `delivery/get_company_list` result is reused.
pub const COMPANY_CACHE_SECS: i64 = 3600;

#[derive(Deserialize, Default)]
#[serde(default)]
struct CompanyListReply {
    company_list: Vec<DeliveryCompany>,
}

/// `delivery/send` body.
#[derive(Clone, Debug, Serialize)]
pub struct DeliverySendRequest {
    #[serde(flatten)]
    pub key: OrderKey,
    pub openid: String,
    /// 0 = more parcels follow, 1 = everything shipped.
    pub finish_all_delivery: u8,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub delivery_list: Vec<DeliveryParcel>,
    /// Required when `finish_all_delivery` is 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ship_done_time: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct DeliveryParcel {
    /// From `delivery/get_company_list`, or `"OTHERS"`.
    pub delivery_id: String,
    pub waybill_id: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub product_info_list: Vec<DeliveryProduct>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct DeliveryProduct {
    pub out_product_id: String,
    pub out_sku_id: String,
    pub product_cnt: i64,
}

impl WxClient {
    /// `shop/order/add`. Stamps `create_time` now unless set; asks for 64-bit ids as strings.
    pub async fn order_add(&self, req: &OrderAddRequest) -> Result<OrderAddResult, WxError> {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(flatten)]
            req: &'a OrderAddRequest,
            #[serde(skip_serializing_if = "Option::is_none")]
            create_time: Option<String>,
            stringify_64bits_number: bool,
        }
        let stamp = req
            .create_time
            .is_none()
            .then(|| crate::time::beijing_datetime(self.inner.clock.now_ms()));
        let r: Data<OrderAddResult> = self
            .post_json(
                "shop/order/add",
                &Wire {
                    req,
                    create_time: stamp,
                    stringify_64bits_number: true,
                },
            )
            .await?;
        let r = r.into_inner();
        if r.order_id == 0 {
            return Err(WxError::Decode {
                path: "shop/order/add".into(),
                why: "no order_id".into(),
            });
        }
        Ok(r)
    }

    /// `shop/order/pay`: sync the payment result (not for `fund_type=1` orders).
    pub async fn order_pay(&self, req: &OrderPayRequest) -> Result<(), WxError> {
        self.post_json::<_, IgnoredAny>("shop/order/pay", req)
            .await
            .map(drop)
    }

    /// `shop/order/get`.
    pub async fn order_get(&self, key: &OrderKey, openid: &str) -> Result<OrderInfo, WxError> {
        let r: OrderGetReply = self
            .post_json("shop/order/get", &KeyOpenid { key, openid })
            .await?;
        Ok(r.order)
    }

    /// `shop/order/get_list`.
    pub async fn order_get_list(&self, req: &OrderListRequest) -> Result<OrderList, WxError> {
        self.post_json("shop/order/get_list", req).await
    }

    /// `shop/order/getpaymentparams` (secondary-merchant orders; call at each cashier open).
    pub async fn order_get_payment_params(
        &self,
        key: &OrderKey,
        openid: &str,
    ) -> Result<PaymentParams, WxError> {
        let r: PaymentParamsReply = self
            .post_json("shop/order/getpaymentparams", &KeyOpenid { key, openid })
            .await?;
        Ok(r.payment_params)
    }

    /// `shop/order/close`.
    pub async fn order_close(&self, key: &OrderKey, openid: &str) -> Result<(), WxError> {
        self.post_json::<_, IgnoredAny>("shop/order/close", &KeyOpenid { key, openid })
            .await
            .map(drop)
    }

    /// `shop/delivery/get_company_list`.
    pub async fn delivery_get_company_list(&self) -> Result<Vec<DeliveryCompany>, WxError> {
        let r: CompanyListReply = self
            .post_json("shop/delivery/get_company_list", &Empty {})
            .await?;
        Ok(r.company_list)
    }

    /// `shop/delivery/get_company_list` from an in-memory cache of [`COMPANY_CACHE_SECS`]
    /// (the list changes rarely; every shipment is checked against it). `max_age_secs`
    /// shortens the reuse, e.g. to look again when an id is missing from a cached list.
    pub async fn delivery_companies_cached(
        &self,
        max_age_secs: i64,
    ) -> Result<Arc<Vec<DeliveryCompany>>, WxError> {
        let mut cache = self.inner.companies.lock().await;
        let now = self.inner.clock.now_secs();
        if let Some((at, list)) = cache.as_ref() {
            if now - *at < max_age_secs.min(COMPANY_CACHE_SECS) {
                return Ok(list.clone());
            }
        }
        let list = Arc::new(self.delivery_get_company_list().await?);
        *cache = Some((now, list.clone()));
        Ok(list)
    }

    /// `shop/delivery/send`.
    pub async fn delivery_send(&self, req: &DeliverySendRequest) -> Result<(), WxError> {
        self.post_json::<_, IgnoredAny>("shop/delivery/send", req)
            .await
            .map(drop)
    }

    /// `shop/delivery/recieve` (sic — WeChat's path): the buyer received the goods.
    pub async fn delivery_recieve(&self, key: &OrderKey, openid: &str) -> Result<(), WxError> {
        self.post_json::<_, IgnoredAny>("shop/delivery/recieve", &KeyOpenid { key, openid })
            .await
            .map(drop)
    }
}
