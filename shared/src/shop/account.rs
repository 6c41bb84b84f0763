//! Onboarding (`shop/register/*`) and shop account settings (`shop/account/*`).
//!
//! Used once per shop by `catalogSync`; the replies are kept loose (`#[serde(default)]`
//! everywhere) because their optional parts come and go between doc revisions.

use super::client::{Data, Empty, WxClient};
use super::error::WxError;
use super::serde_num;
use super::types::AddressInfo;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

/// `register/check` → `data`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RegisterStatus {
    /// 2 = access completed, 3 = banned.
    #[serde(deserialize_with = "serde_num::i64_or_string")]
    pub status: i64,
    pub access_info: AccessInfo,
    pub scene_group_list: Vec<SceneGroup>,
}

impl RegisterStatus {
    pub fn is_complete(&self) -> bool {
        self.status == 2
    }
}

/// Task flags of the onboarding checklist (0/1 each).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AccessInfo {
    pub spu_audit_success: i64,
    pub spu_audit_finished: i64,
    pub pay_order_success: i64,
    pub pay_order_finished: i64,
    pub send_delivery_success: i64,
    pub send_delivery_finished: i64,
    pub add_aftersale_success: i64,
    pub add_aftersale_finished: i64,
    pub ec_order_success: i64,
    pub ec_order_finished: i64,
    pub ec_after_sale_success: i64,
    pub ec_after_sale_finished: i64,
    pub test_api_finished: i64,
    pub deploy_wxa_finished: i64,
    pub open_product_task_finished: i64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SceneGroup {
    #[serde(deserialize_with = "serde_num::i64_or_string")]
    pub group_id: i64,
    pub name: String,
    pub reason: String,
    #[serde(deserialize_with = "serde_num::i64_or_string")]
    pub status: i64,
    pub scene_group_ext_list: Vec<SceneGroupExt>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SceneGroupExt {
    #[serde(deserialize_with = "serde_num::i64_or_string")]
    pub ext_id: i64,
    #[serde(deserialize_with = "serde_num::i64_or_string")]
    pub status: i64,
    pub name: String,
}

/// `account/get_category_list` → `data[]`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AccountCategory {
    #[serde(deserialize_with = "serde_num::u64_or_string")]
    pub third_cat_id: u64,
    pub third_cat_name: String,
    #[serde(deserialize_with = "serde_num::u64_or_string")]
    pub second_cat_id: u64,
    pub second_cat_name: String,
    #[serde(deserialize_with = "serde_num::u64_or_string")]
    pub first_cat_id: u64,
    pub first_cat_name: String,
}

/// `account/get_brand_list` → `data[]`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AccountBrand {
    #[serde(deserialize_with = "serde_num::u64_or_string")]
    pub brand_id: u64,
    pub brand_wording: String,
}

/// `account/update_info` request and `account/get_info` → `data`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AccountInfo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_agent_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_agent_phone: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub service_agent_type: Vec<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_receiving_address: Option<AddressInfo>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ListData<T> {
    data: Vec<T>,
}

impl WxClient {
    /// `shop/register/apply`.
    pub async fn register_apply(&self) -> Result<(), WxError> {
        self.post_json::<_, IgnoredAny>("shop/register/apply", &Empty {})
            .await
            .map(drop)
    }

    /// `shop/register/check`. 1040003 means the mini program has not joined.
    pub async fn register_check(&self) -> Result<RegisterStatus, WxError> {
        self.post_json::<_, Data<RegisterStatus>>("shop/register/check", &Empty {})
            .await
            .map(Data::into_inner)
    }

    /// `shop/register/finish_access_info` (`access_info_item` 6–11, 19, 20).
    pub async fn register_finish_access_info(&self, access_info_item: i64) -> Result<(), WxError> {
        self.post_json::<_, IgnoredAny>(
            "shop/register/finish_access_info",
            &serde_json::json!({ "access_info_item": access_info_item }),
        )
        .await
        .map(drop)
    }

    /// `shop/register/apply_scene` (1 = Channels + Official Account scenes).
    pub async fn register_apply_scene(&self, scene_group_id: i64) -> Result<(), WxError> {
        self.post_json::<_, IgnoredAny>(
            "shop/register/apply_scene",
            &serde_json::json!({ "scene_group_id": scene_group_id }),
        )
        .await
        .map(drop)
    }

    /// `shop/account/get_category_list`: categories the shop may sell in.
    pub async fn account_get_category_list(&self) -> Result<Vec<AccountCategory>, WxError> {
        self.post_json::<_, ListData<AccountCategory>>("shop/account/get_category_list", &Empty {})
            .await
            .map(|l| l.data)
    }

    /// `shop/account/get_brand_list`: brands the shop may use.
    pub async fn account_get_brand_list(&self) -> Result<Vec<AccountBrand>, WxError> {
        self.post_json::<_, ListData<AccountBrand>>("shop/account/get_brand_list", &Empty {})
            .await
            .map(|l| l.data)
    }

    /// `shop/account/update_info`: customer service and the default return address.
    pub async fn account_update_info(&self, info: &AccountInfo) -> Result<(), WxError> {
        self.post_json::<_, IgnoredAny>("shop/account/update_info", info)
            .await
            .map(drop)
    }

    /// `shop/account/get_info`.
    pub async fn account_get_info(&self) -> Result<AccountInfo, WxError> {
        self.post_json::<_, Data<AccountInfo>>("shop/account/get_info", &Empty {})
            .await
            .map(Data::into_inner)
    }
}
