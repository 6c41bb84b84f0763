//! After-sales: the current `shop/ecaftersale/*` family (user-initiated, WeChat-managed) and
//! the legacy `shop/aftersale/*` family (merchant-pushed records). Their status enums differ
//! (15–19 mean different things), so each family keeps its status as a plain number here and
//! `domain::aftersale` maps it; nothing is shared between the two on purpose.
//!
//! EC times (`create_time`, `update_time`, list bounds) are Unix milliseconds and sometimes
//! arrive as strings; ids exceed 2^53.

use super::client::WxClient;
use super::error::WxError;
use super::serde_num;
use super::types::{AddressInfo, AfterSaleKey, KeyOnly, KeyOpenid, MediaItem, OrderKey};
use crate::domain::Fen;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

/// `ecaftersale/add` body.
#[derive(Clone, Debug, Serialize)]
pub struct EcAfterSaleAddRequest {
    #[serde(flatten)]
    pub order: OrderKey,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out_aftersale_id: Option<String>,
    pub openid: String,
    /// 1 refund only, 2 return + refund.
    #[serde(rename = "type")]
    pub kind: i64,
    pub product_info: EcProductInfo,
    /// Refund amount.
    pub orderamt: Fen,
    pub refund_reason: String,
    /// 1 wrong selection … 12 others.
    pub refund_reason_type: i64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub media_list: Vec<MediaItem>,
}

/// The single product line of an EC after-sale (an object, not an array).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct EcProductInfo {
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "serde_num::opt_u64"
    )]
    pub product_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out_product_id: Option<String>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "serde_num::opt_u64"
    )]
    pub sku_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out_sku_id: Option<String>,
    #[serde(deserialize_with = "serde_num::i64_or_string")]
    pub product_cnt: i64,
}

/// `ecaftersale/get` → `after_sales_order`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct EcAfterSaleOrder {
    #[serde(deserialize_with = "serde_num::u64_or_string")]
    pub aftersale_id: u64,
    pub out_aftersale_id: Option<String>,
    #[serde(deserialize_with = "serde_num::u64_or_string")]
    pub order_id: u64,
    pub out_order_id: Option<String>,
    pub openid: String,
    #[serde(rename = "type", deserialize_with = "serde_num::i64_or_string")]
    pub kind: i64,
    /// `AfterSalesState` (EC enum).
    #[serde(deserialize_with = "serde_num::i64_or_string")]
    pub status: i64,
    #[serde(deserialize_with = "serde_num::fen")]
    pub orderamt: Fen,
    #[serde(deserialize_with = "serde_num::i64_or_string")]
    pub refund_reason_type: i64,
    pub refund_reason: String,
    pub product_info: EcProductInfo,
    pub return_info: Option<ReturnInfo>,
    pub media_list: Vec<MediaItem>,
    pub refund_pay_detail: Option<RefundPayDetail>,
    #[serde(deserialize_with = "serde_num::opt_string_or_number")]
    pub return_id: Option<String>,
    /// Unix ms.
    #[serde(deserialize_with = "serde_num::i64_or_string")]
    pub create_time: i64,
    /// Unix ms.
    #[serde(deserialize_with = "serde_num::i64_or_string")]
    pub update_time: i64,
    pub complaint_order_id_list: Vec<serde_json::Value>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ReturnInfo {
    #[serde(deserialize_with = "serde_num::opt_i64")]
    pub order_return_time: Option<i64>,
    pub delivery_id: String,
    pub delivery_name: String,
    pub waybill_id: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RefundPayDetail {
    #[serde(deserialize_with = "serde_num::opt_string_or_number")]
    pub refund_id: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct EcGetReply {
    after_sales_order: EcAfterSaleOrder,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct EcAddReply {
    #[serde(deserialize_with = "serde_num::opt_u64")]
    aftersale_id: Option<u64>,
}

/// `ecaftersale/get_list` body.
#[derive(Clone, Debug, Serialize)]
pub struct EcAfterSaleListRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<i64>,
    /// Unix ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub begin_create_time: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_create_time: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out_order_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub openid: Option<String>,
    pub offset: u32,
    /// At most 50.
    pub limit: u32,
}

impl Default for EcAfterSaleListRequest {
    fn default() -> Self {
        EcAfterSaleListRequest {
            status: None,
            begin_create_time: None,
            end_create_time: None,
            out_order_id: None,
            order_id: None,
            openid: None,
            offset: 0,
            limit: 50,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct EcAfterSaleList {
    pub after_sales_orders: Vec<EcAfterSaleRef>,
    #[serde(deserialize_with = "serde_num::bool_or_int")]
    pub has_more: bool,
}

/// The ids of one after-sale in a list. WeChat's list gives WeChat's ids only, as strings
/// (SKIT's `ShopECAftersaleGetListResponse`: `string[] after_sales_orders`); WxJava models the
/// items as objects with `aftersale_id` and `out_aftersale_id`. Both are read, as is a bare
/// number, so the shape never decides whether the list can be read at all.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EcAfterSaleRef {
    pub aftersale_id: Option<u64>,
    pub out_aftersale_id: Option<String>,
}

impl<'de> Deserialize<'de> for EcAfterSaleRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Listed {
            Id(#[serde(deserialize_with = "serde_num::opt_u64")] Option<u64>),
            Ids {
                #[serde(default, deserialize_with = "serde_num::opt_u64")]
                aftersale_id: Option<u64>,
                #[serde(default)]
                out_aftersale_id: Option<String>,
            },
        }
        Ok(match Listed::deserialize(d)? {
            Listed::Id(aftersale_id) => EcAfterSaleRef {
                aftersale_id,
                out_aftersale_id: None,
            },
            Listed::Ids {
                aftersale_id,
                out_aftersale_id,
            } => EcAfterSaleRef {
                aftersale_id,
                out_aftersale_id,
            },
        })
    }
}

/// `ecaftersale/update` body: the user edits the request.
#[derive(Clone, Debug, Serialize)]
pub struct EcAfterSaleUpdateRequest {
    #[serde(flatten)]
    pub key: AfterSaleKey,
    pub openid: String,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub orderamt: Option<Fen>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refund_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refund_reason_type: Option<i64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub media_list: Vec<MediaItem>,
}

/// `ecaftersale/uploadreturninfo` body: the user's return waybill.
#[derive(Clone, Debug, Serialize)]
pub struct ReturnInfoUpload {
    #[serde(flatten)]
    pub key: AfterSaleKey,
    pub openid: String,
    pub delivery_id: String,
    pub delivery_name: String,
    pub waybill_id: String,
}

// ---------------------------------------------------------------- legacy

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LegacyProductInfo {
    pub out_product_id: String,
    pub out_sku_id: String,
    #[serde(deserialize_with = "serde_num::i64_or_string")]
    pub product_cnt: i64,
}

/// `aftersale/add` body (legacy, merchant-managed).
#[derive(Clone, Debug, Default, Serialize)]
pub struct LegacyAfterSaleAddRequest {
    pub out_order_id: String,
    pub out_aftersale_id: String,
    pub openid: String,
    /// 1 refund only, 2 return + refund, 3 exchange.
    #[serde(rename = "type")]
    pub kind: i64,
    /// `yyyy-MM-dd HH:mm:ss`.
    pub create_time: String,
    /// Legacy status enum.
    pub status: i64,
    pub finish_all_aftersale: u8,
    pub path: String,
    pub refund: Fen,
    pub product_infos: Vec<LegacyProductInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refund_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refund_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub orderamt: Option<Fen>,
}

/// `aftersale/update` body: only the status changes.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LegacyAfterSaleUpdateRequest {
    pub out_order_id: String,
    pub openid: String,
    pub out_aftersale_id: String,
    pub status: i64,
    pub finish_all_aftersale: u8,
}

/// One record of `aftersale/get` → `aftersale_infos[]`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LegacyAfterSaleInfo {
    #[serde(deserialize_with = "serde_num::opt_u64")]
    pub order_id: Option<u64>,
    pub out_order_id: String,
    #[serde(deserialize_with = "serde_num::opt_u64")]
    pub aftersale_id: Option<u64>,
    pub out_aftersale_id: String,
    pub openid: String,
    #[serde(rename = "type", deserialize_with = "serde_num::i64_or_string")]
    pub kind: i64,
    #[serde(deserialize_with = "serde_num::i64_or_string")]
    pub status: i64,
    pub create_time: Option<String>,
    pub path: String,
    #[serde(deserialize_with = "serde_num::fen")]
    pub refund: Fen,
    pub product_infos: Vec<LegacyProductInfo>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct LegacyGetReply {
    aftersale_infos: Vec<LegacyAfterSaleInfo>,
}

impl WxClient {
    /// `shop/ecaftersale/add` → WeChat's `aftersale_id`.
    pub async fn ecaftersale_add(&self, req: &EcAfterSaleAddRequest) -> Result<u64, WxError> {
        const PATH: &str = "shop/ecaftersale/add";
        let r: EcAddReply = self.post_json(PATH, req).await?;
        r.aftersale_id.ok_or_else(|| WxError::Decode {
            path: PATH.into(),
            why: "no aftersale_id".into(),
        })
    }

    /// `shop/ecaftersale/get`.
    pub async fn ecaftersale_get(&self, key: &AfterSaleKey) -> Result<EcAfterSaleOrder, WxError> {
        let r: EcGetReply = self
            .post_json("shop/ecaftersale/get", &KeyOnly { key })
            .await?;
        Ok(r.after_sales_order)
    }

    /// `shop/ecaftersale/get_list`.
    pub async fn ecaftersale_get_list(
        &self,
        req: &EcAfterSaleListRequest,
    ) -> Result<EcAfterSaleList, WxError> {
        self.post_json("shop/ecaftersale/get_list", req).await
    }

    /// `shop/ecaftersale/update`.
    pub async fn ecaftersale_update(&self, req: &EcAfterSaleUpdateRequest) -> Result<(), WxError> {
        self.unit("shop/ecaftersale/update", req).await
    }

    /// `shop/ecaftersale/cancel`: the user withdraws the request.
    pub async fn ecaftersale_cancel(
        &self,
        key: &AfterSaleKey,
        openid: &str,
    ) -> Result<(), WxError> {
        self.unit("shop/ecaftersale/cancel", &KeyOpenid { key, openid })
            .await
    }

    /// `shop/ecaftersale/acceptrefund`: the merchant agrees to refund.
    pub async fn ecaftersale_acceptrefund(&self, key: &AfterSaleKey) -> Result<(), WxError> {
        self.unit("shop/ecaftersale/acceptrefund", &KeyOnly { key })
            .await
    }

    /// `shop/ecaftersale/acceptreturn`: the merchant agrees to a return, giving the address.
    pub async fn ecaftersale_acceptreturn(
        &self,
        key: &AfterSaleKey,
        address_info: &AddressInfo,
    ) -> Result<(), WxError> {
        #[derive(Serialize)]
        struct Req<'a> {
            #[serde(flatten)]
            key: &'a AfterSaleKey,
            address_info: &'a AddressInfo,
        }
        self.unit("shop/ecaftersale/acceptreturn", &Req { key, address_info })
            .await
    }

    /// `shop/ecaftersale/reject`.
    pub async fn ecaftersale_reject(&self, key: &AfterSaleKey) -> Result<(), WxError> {
        self.unit("shop/ecaftersale/reject", &KeyOnly { key }).await
    }

    /// `shop/ecaftersale/uploadreturninfo`.
    pub async fn ecaftersale_uploadreturninfo(
        &self,
        req: &ReturnInfoUpload,
    ) -> Result<(), WxError> {
        self.unit("shop/ecaftersale/uploadreturninfo", req).await
    }

    /// Legacy `shop/aftersale/add` (re-entrant on `out_aftersale_id`).
    pub async fn aftersale_add(&self, req: &LegacyAfterSaleAddRequest) -> Result<(), WxError> {
        self.unit("shop/aftersale/add", req).await
    }

    /// Legacy `shop/aftersale/get`.
    pub async fn aftersale_get(
        &self,
        order: &OrderKey,
        openid: &str,
    ) -> Result<Vec<LegacyAfterSaleInfo>, WxError> {
        let r: LegacyGetReply = self
            .post_json("shop/aftersale/get", &KeyOpenid { key: order, openid })
            .await?;
        Ok(r.aftersale_infos)
    }

    /// Legacy `shop/aftersale/update`.
    pub async fn aftersale_update(
        &self,
        req: &LegacyAfterSaleUpdateRequest,
    ) -> Result<(), WxError> {
        self.unit("shop/aftersale/update", req).await
    }

    async fn unit<Req: Serialize + ?Sized>(&self, path: &str, req: &Req) -> Result<(), WxError> {
        self.post_json::<_, IgnoredAny>(path, req).await.map(drop)
    }
}
