//! Catalog side of the trading component: categories (`shop/cat/get`, cached an hour
//! because the reply is ~2 MB and rate-limited), image upload, brand/category qualification
//! audits, SPUs, and the scene check.

use super::client::{Data, Empty, WxClient};
use super::error::WxError;
use super::serde_num;
use super::types::{KeyOnly, ProductKey};
use crate::domain::Fen;
use bytes::Bytes;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// How long a `cat/get` result is reused.
pub const CATEGORY_CACHE_SECS: i64 = 3600;

/// `brand_id` for products without a brand.
pub const NO_BRAND_ID: u64 = 2_100_000_000;

// ---------------------------------------------------------------- categories

/// One leaf of `cat/get`'s `third_cat_list`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ThirdCategory {
    #[serde(deserialize_with = "serde_num::u64_or_string")]
    pub third_cat_id: u64,
    pub third_cat_name: String,
    pub qualification: String,
    /// 0 not needed, 1 mandatory, 2 optional.
    #[serde(deserialize_with = "serde_num::i64_or_string")]
    pub qualification_type: i64,
    pub product_qualification: String,
    #[serde(deserialize_with = "serde_num::i64_or_string")]
    pub product_qualification_type: i64,
    #[serde(deserialize_with = "serde_num::u64_or_string")]
    pub first_cat_id: u64,
    pub first_cat_name: String,
    #[serde(deserialize_with = "serde_num::u64_or_string")]
    pub second_cat_id: u64,
    pub second_cat_name: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct CatGetReply {
    third_cat_list: Vec<ThirdCategory>,
}

// ---------------------------------------------------------------- images

/// What `img/upload` should return.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImgRespType {
    /// `media_id` (brand/category applications only).
    MediaId = 0,
    /// `temp_img_url`, a WeChat-hosted link.
    Url = 1,
    /// `pay_media_id` for WeChat Pay.
    PayMediaId = 2,
}

/// The image to upload.
#[derive(Clone, Debug)]
pub enum ImgSource {
    /// WeChat fetches it (`upload_type=1`).
    Url(String),
    /// We send the bytes (`upload_type=0`, form field `media`).
    Bytes { bytes: Bytes, filename: String },
}

#[derive(Clone, Debug)]
pub struct ImgUpload {
    pub resp_type: ImgRespType,
    pub source: ImgSource,
}

/// `img/upload` → `img_info`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ImgInfo {
    pub media_id: Option<String>,
    pub temp_img_url: Option<String>,
    pub pay_media_id: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ImgReply {
    img_info: ImgInfo,
}

/// Images above this are refused by WeChat; refused here before uploading.
pub const MAX_IMAGE_BYTES: usize = 2 * 1024 * 1024;

// ---------------------------------------------------------------- audits

/// `audit/audit_brand` body: `{"audit_req": …}`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AuditBrandRequest {
    pub audit_req: AuditBrandReq,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct AuditBrandReq {
    pub license: Vec<String>,
    pub brand_info: BrandInfo,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scene_group_list: Vec<i64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct BrandInfo {
    pub brand_audit_type: i64,
    pub trademark_type: String,
    pub brand_management_type: i64,
    pub commodity_origin_type: i64,
    pub brand_wording: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sale_authorization: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trademark_registration_certificate: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trademark_change_certificate: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trademark_registrant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trademark_registrant_nu: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trademark_authorization_period: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trademark_registration_application: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trademark_applicant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trademark_application_time: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub imported_goods_form: Vec<String>,
}

/// `audit/audit_category` body: `{"audit_req": …}`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AuditCategoryRequest {
    pub audit_req: AuditCategoryReq,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct AuditCategoryReq {
    pub license: Vec<String>,
    pub category_info: CategoryInfo,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scene_group_list: Vec<i64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct CategoryInfo {
    pub level1: u64,
    pub level2: u64,
    pub level3: u64,
    pub certificate: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AuditIdReply {
    #[serde(deserialize_with = "serde_num::opt_string_or_number")]
    audit_id: Option<String>,
}

/// `audit/result` → `data`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AuditResult {
    /// 0 in review, 1 approved, 9 rejected.
    #[serde(deserialize_with = "serde_num::i64_or_string")]
    pub status: i64,
    #[serde(deserialize_with = "serde_num::opt_u64")]
    pub brand_id: Option<u64>,
    pub reject_reason: String,
}

/// `audit/get_miniapp_certificate` reply.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MiniappCertificate {
    pub category_info_list: Vec<MiniappCategoryCert>,
    pub brand_info: Option<MiniappBrandCert>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MiniappCategoryCert {
    #[serde(deserialize_with = "serde_num::u64_or_string")]
    pub first_category_id: u64,
    pub first_category_name: String,
    #[serde(deserialize_with = "serde_num::u64_or_string")]
    pub second_category_id: u64,
    pub second_category_name: String,
    pub certificate_url: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MiniappBrandCert {
    pub brand_wording: String,
    pub sale_authorization: Vec<String>,
    pub trademark_registration_certificate: Vec<String>,
}

// ---------------------------------------------------------------- SPUs

/// SPU for `spu/add` (set `out_product_id`) and `spu/update` (either id).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Spu {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out_product_id: Option<String>,
    pub title: String,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direct_path: Option<String>,
    pub head_img: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub qualification_pics: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub desc_info: Option<DescInfo>,
    pub third_cat_id: u64,
    pub brand_id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info_version: Option<String>,
    pub skus: Vec<SpuSku>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scene_group_list: Vec<i64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DescInfo {
    pub desc: String,
    pub imgs: Vec<String>,
}

/// A SKU in an SPU request.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SpuSku {
    pub out_product_id: String,
    pub out_sku_id: String,
    pub thumb_img: String,
    pub sale_price: Fen,
    pub market_price: Fen,
    pub stock_num: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sku_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub barcode: Option<String>,
    pub sku_attrs: Vec<SkuAttr>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SkuAttr {
    pub attr_key: String,
    pub attr_value: String,
}

/// `spu/add` and `spu/update` → `data`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SpuWriteResult {
    #[serde(deserialize_with = "serde_num::u64_or_string")]
    pub product_id: u64,
    pub out_product_id: String,
    pub create_time: Option<String>,
    pub update_time: Option<String>,
    pub skus: Vec<SkuIds>,
    /// Ours, not WeChat's: the product was added again because WeChat had lost it.
    #[serde(skip)]
    pub readded: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SkuIds {
    #[serde(deserialize_with = "serde_num::u64_or_string")]
    pub sku_id: u64,
    pub out_sku_id: String,
}

/// `spu/update_without_audit` body (already approved SKUs only).
#[derive(Clone, Debug, Serialize)]
pub struct SpuUpdateWithoutAudit {
    #[serde(flatten)]
    pub key: ProductKey,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skus: Vec<SkuWithoutAudit>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct SkuWithoutAudit {
    pub out_sku_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sale_price: Option<Fen>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub market_price: Option<Fen>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stock_num: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub barcode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sku_code: Option<String>,
}

/// An SPU as `spu/get` / `spu/get_list` return it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SpuInfo {
    #[serde(deserialize_with = "serde_num::u64_or_string")]
    pub product_id: u64,
    pub out_product_id: String,
    pub title: String,
    pub path: String,
    pub direct_path: Option<String>,
    pub head_img: Vec<String>,
    pub qualification_pics: Vec<String>,
    pub desc_info: Option<DescInfo>,
    #[serde(deserialize_with = "serde_num::u64_or_string")]
    pub third_cat_id: u64,
    #[serde(deserialize_with = "serde_num::u64_or_string")]
    pub brand_id: u64,
    pub info_version: Option<String>,
    /// 0 initial, 5 listed, 11 delisted by merchant, 13 delisted by platform.
    #[serde(deserialize_with = "serde_num::i64_or_string")]
    pub status: i64,
    /// 0 initial, 1 editing, 2 under audit, 3 audit failed, 4 audit succeeded.
    #[serde(deserialize_with = "serde_num::i64_or_string")]
    pub edit_status: i64,
    pub audit_info: Option<SpuAuditInfo>,
    pub create_time: Option<String>,
    pub update_time: Option<String>,
    pub skus: Vec<SkuInfo>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SpuAuditInfo {
    pub submit_time: Option<String>,
    pub audit_time: Option<String>,
    pub reject_reason: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SkuInfo {
    #[serde(deserialize_with = "serde_num::opt_u64")]
    pub sku_id: Option<u64>,
    pub out_product_id: String,
    pub out_sku_id: String,
    pub thumb_img: String,
    #[serde(deserialize_with = "serde_num::fen")]
    pub sale_price: Fen,
    #[serde(deserialize_with = "serde_num::fen")]
    pub market_price: Fen,
    #[serde(deserialize_with = "serde_num::i64_or_string")]
    pub stock_num: i64,
    pub sku_code: Option<String>,
    pub barcode: Option<String>,
    pub sku_attrs: Vec<SkuAttr>,
}

/// `spu/get_list` body.
#[derive(Clone, Debug, Serialize)]
pub struct SpuListRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_create_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_create_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_update_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_update_time: Option<String>,
    pub page: u32,
    pub page_size: u32,
    /// 0 = online data, 1 = draft.
    pub need_edit_spu: u8,
}

impl Default for SpuListRequest {
    fn default() -> Self {
        SpuListRequest {
            status: None,
            start_create_time: None,
            end_create_time: None,
            start_update_time: None,
            end_update_time: None,
            page: 1,
            page_size: 100,
            need_edit_spu: 0,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SpuList {
    #[serde(deserialize_with = "serde_num::i64_or_string")]
    pub total_num: i64,
    pub spus: Vec<SpuInfo>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct SpuGetReply {
    spu: SpuInfo,
}

// ---------------------------------------------------------------- scene

/// `scene/check` reply.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SceneCheck {
    /// 1 = this scene must use `order/add` + `wx.requestOrderPayment`.
    #[serde(deserialize_with = "serde_num::i64_or_string")]
    pub is_matched: i64,
    #[serde(rename = "requiredFundType", deserialize_with = "serde_num::opt_i64")]
    pub required_fund_type: Option<i64>,
}

impl SceneCheck {
    pub fn matched(&self) -> bool {
        self.is_matched == 1
    }
}

impl WxClient {
    /// `shop/cat/get`, from a one-hour in-memory cache when possible.
    pub async fn cat_get(&self) -> Result<Arc<Vec<ThirdCategory>>, WxError> {
        let mut cache = self.inner.categories.lock().await;
        let now = self.inner.clock.now_secs();
        if let Some((at, list)) = cache.as_ref() {
            if now - *at < CATEGORY_CACHE_SECS {
                return Ok(list.clone());
            }
        }
        let reply: CatGetReply = self.post_json("shop/cat/get", &Empty {}).await?;
        let list = Arc::new(reply.third_cat_list);
        *cache = Some((now, list.clone()));
        Ok(list)
    }

    /// `shop/img/upload` (multipart). Size is checked before sending.
    pub async fn img_upload(&self, req: &ImgUpload) -> Result<ImgInfo, WxError> {
        const PATH: &str = "shop/img/upload";
        if let ImgSource::Bytes { bytes, .. } = &req.source {
            if bytes.is_empty() || bytes.len() > MAX_IMAGE_BYTES {
                return Err(WxError::Invalid {
                    path: PATH.into(),
                    why: format!("image must be 1..=2 MiB (is {} bytes)", bytes.len()),
                });
            }
        }
        let resp_type = (req.resp_type as u8).to_string();
        let http = &self.inner.http;
        let reply: ImgReply = self
            .with_token(PATH, |url| {
                let form = reqwest::multipart::Form::new().text("resp_type", resp_type.clone());
                let form = match &req.source {
                    ImgSource::Url(u) => form.text("upload_type", "1").text("img_url", u.clone()),
                    ImgSource::Bytes { bytes, filename } => form.text("upload_type", "0").part(
                        "media",
                        reqwest::multipart::Part::stream_with_length(
                            bytes.clone(),
                            bytes.len() as u64,
                        )
                        .file_name(filename.clone()),
                    ),
                };
                http.post(url).multipart(form)
            })
            .await?;
        Ok(reply.img_info)
    }

    /// `shop/audit/audit_brand` → `audit_id`.
    pub async fn audit_brand(&self, req: &AuditBrandRequest) -> Result<String, WxError> {
        let r: AuditIdReply = self.post_json("shop/audit/audit_brand", req).await?;
        audit_id("shop/audit/audit_brand", r)
    }

    /// `shop/audit/audit_category` → `audit_id`. 1050003 = already approved.
    pub async fn audit_category(&self, req: &AuditCategoryRequest) -> Result<String, WxError> {
        let r: AuditIdReply = self.post_json("shop/audit/audit_category", req).await?;
        audit_id("shop/audit/audit_category", r)
    }

    /// `shop/audit/result`.
    pub async fn audit_result(&self, audit_id: &str) -> Result<AuditResult, WxError> {
        self.post_json::<_, Data<AuditResult>>(
            "shop/audit/result",
            &serde_json::json!({ "audit_id": audit_id }),
        )
        .await
        .map(Data::into_inner)
    }

    /// `shop/audit/get_miniapp_certificate` (`req_type` 1 = category, 2 = brand).
    pub async fn get_miniapp_certificate(
        &self,
        req_type: i64,
    ) -> Result<MiniappCertificate, WxError> {
        self.post_json(
            "shop/audit/get_miniapp_certificate",
            &serde_json::json!({ "req_type": req_type }),
        )
        .await
    }

    /// `shop/spu/add`.
    pub async fn spu_add(&self, spu: &Spu) -> Result<SpuWriteResult, WxError> {
        self.post_json::<_, Data<SpuWriteResult>>("shop/spu/add", spu)
            .await
            .map(Data::into_inner)
    }

    /// `shop/spu/update` (goes through audit again).
    pub async fn spu_update(&self, spu: &Spu) -> Result<SpuWriteResult, WxError> {
        self.post_json::<_, Data<SpuWriteResult>>("shop/spu/update", spu)
            .await
            .map(Data::into_inner)
    }

    /// `shop/spu/update_without_audit` (price/stock of approved SKUs).
    pub async fn spu_update_without_audit(
        &self,
        req: &SpuUpdateWithoutAudit,
    ) -> Result<SpuWriteResult, WxError> {
        self.post_json::<_, Data<SpuWriteResult>>("shop/spu/update_without_audit", req)
            .await
            .map(Data::into_inner)
    }

    /// `shop/spu/del` (logical, irreversible).
    pub async fn spu_del(&self, key: &ProductKey) -> Result<(), WxError> {
        self.product_op("shop/spu/del", key).await
    }

    /// `shop/spu/del_audit`: withdraw a pending audit.
    pub async fn spu_del_audit(&self, key: &ProductKey) -> Result<(), WxError> {
        self.product_op("shop/spu/del_audit", key).await
    }

    /// `shop/spu/listing`: put on shelf.
    pub async fn spu_listing(&self, key: &ProductKey) -> Result<(), WxError> {
        self.product_op("shop/spu/listing", key).await
    }

    /// `shop/spu/delisting`: take off shelf.
    pub async fn spu_delisting(&self, key: &ProductKey) -> Result<(), WxError> {
        self.product_op("shop/spu/delisting", key).await
    }

    async fn product_op(&self, path: &str, key: &ProductKey) -> Result<(), WxError> {
        self.post_json::<_, IgnoredAny>(path, &KeyOnly { key })
            .await
            .map(drop)
    }

    /// `shop/spu/get`; `draft` = the draft (`need_edit_spu=1`) instead of online data.
    pub async fn spu_get(&self, key: &ProductKey, draft: bool) -> Result<SpuInfo, WxError> {
        #[derive(Serialize)]
        struct Req<'a> {
            #[serde(flatten)]
            key: &'a ProductKey,
            need_edit_spu: u8,
        }
        let r: SpuGetReply = self
            .post_json(
                "shop/spu/get",
                &Req {
                    key,
                    need_edit_spu: u8::from(draft),
                },
            )
            .await?;
        Ok(r.spu)
    }

    /// `shop/spu/get_list`.
    pub async fn spu_get_list(&self, req: &SpuListRequest) -> Result<SpuList, WxError> {
        self.post_json("shop/spu/get_list", req).await
    }

    /// `shop/scene/check` (deprecated in favour of `wx.checkBeforeAddOrder`, still served).
    pub async fn scene_check(&self, scene: i64) -> Result<SceneCheck, WxError> {
        self.post_json("shop/scene/check", &serde_json::json!({ "scene": scene }))
            .await
    }
}

fn audit_id(path: &str, r: AuditIdReply) -> Result<String, WxError> {
    r.audit_id
        .filter(|s| !s.is_empty())
        .ok_or_else(|| WxError::Decode {
            path: path.into(),
            why: "no audit_id".into(),
        })
}
