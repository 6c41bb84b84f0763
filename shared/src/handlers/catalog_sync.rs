//! `catalogSync`: the shop the mini program reads (`/fn/catalogSync`, a session required: the
//! products on sale, in their public shape, read only) and, for the merchant
//! (`/admin/catalogSync`), the catalog and the trading-component onboarding. Products are
//! stored here with their price, stock and WeChat audit state; with the component on they are
//! uploaded (`shop/spu/add|update`) and become orderable only when approved and listed. As at
//! WeChat, an edit of an approved product is a draft under audit ([`Product::edit`]) while the
//! approved version sells on; what WeChat does not review (prices and stock of approved SKUs)
//! goes through `spu/update_without_audit`, and a repeat uploads nothing. A submission is
//! stored before WeChat hears of it, so a quick verdict finds it, and one that fails is
//! recorded as not submitted. With the component off, a product is ours alone and sellable as
//! soon as it is listed.
//!
//! Onboarding, categories, images and qualification audits go to WeChat as they are (a
//! fixed list of `shop/*` paths), so the merchant drives every access task from one place.
//! The exception is `shop/img/upload`, which WeChat takes as multipart form fields: its JSON
//! fields are sent through [`crate::shop::WxClient::img_upload`].
//!
//! A product WeChat refuses for want of its category's qualification (1000005) waits for it
//! ([`Product::waiting_for`]) and is submitted again once the category is approved. Nothing may
//! leave it waiting for an approval WeChat already gave:
//! - *The race.* WeChat's approval can be recorded (its push, the schedule's read of
//!   `shop/audit/result`, a 1050003 answer) between WeChat's refusal of the product and our
//!   write of `waiting_for`. Each approval writes, in this order, (M) the category's approval
//!   ([`note_category_approved`], with its time) and then (T) the outbox task that scans the
//!   catalog for the products waiting for it ([`category_verdict`]). The refusal writes (W)
//!   `waiting_for` and then (R) reads M ([`approved_meanwhile`]): an approval recorded since
//!   the submission began submits the product again. Either R comes after M — the product is
//!   submitted again — or R comes before M, and then W came before T's scan, which finds the
//!   product waiting. (R is a consistent read; T's scan reads an index, eventually consistent
//!   in DynamoDB: the schedule's daily resubmission, below, is the backstop for a scan that
//!   missed a write made a moment before it.)
//! - *An audit applied for outside wxshop* (WeChat's console): its approval push names no
//!   category we know, so every product waiting for a category is submitted again once;
//!   WeChat's answer decides, and one refused again (1000005) goes on waiting. Each product is
//!   submitted at most once per approval (`resubmitted/{approval}/{product}` in the kv space),
//!   however many tasks name it, so a refusal cannot loop.
//! - *No push at all* (an approval in the console never pushed, or lost): the schedule
//!   submits again each product waiting for a category for a day since its last refusal
//!   ([`sweep_waiting`]), at most [`WAITING_SWEEP_MAX`] a run, reading the products not on
//!   sale in turn ([`WAITING_SWEEP_READS`] a run, on from where the last run stopped), so
//!   every one is seen however large the catalog.

use super::common::{authenticate, component_on};
use super::shop_orders::wx_error;
use crate::app::App;
use crate::domain::{
    AuditStatus, Content, ContentChange, Fen, Listing, Product, ProductId, Sku, SkuId, WaitingFor,
    NO_BRAND, WX_TITLE_CHARS,
};
use crate::http::{json, parse_json, ApiError, Request, Response};
use crate::shop::catalog::{SkuWithoutAudit, Spu, SpuSku, SpuUpdateWithoutAudit, SpuWriteResult};
use crate::shop::types::ProductKey;
use crate::shop::WxError;
use crate::store::repo::{self, Batch, Versioned};
use crate::store::StoreError;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};
use std::sync::atomic::Ordering;

#[derive(Deserialize)]
struct SkuInput {
    sku_id: String,
    price: i64,
    #[serde(default)]
    market_price: Option<i64>,
    stock: u32,
}

#[derive(Deserialize)]
struct ProductInput {
    product_id: String,
    title: String,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    head_img: Vec<String>,
    #[serde(default)]
    third_cat_id: u64,
    /// Missing: no brand ([`NO_BRAND`]).
    #[serde(default)]
    brand_id: Option<u64>,
    /// The product's qualification images, for a category that requires them
    /// (`product_qualification_type` 1 in `shop/cat/get`).
    #[serde(default)]
    qualification_pics: Vec<String>,
    skus: Vec<SkuInput>,
}

#[derive(Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
enum Action {
    /// Create or update a product (and upload it for audit when the component is on).
    Upsert {
        product: ProductInput,
    },
    Listing {
        product_id: String,
    },
    Delisting {
        product_id: String,
    },
    SetStock {
        product_id: String,
        sku_id: String,
        stock: u32,
    },
    Get {
        product_id: String,
    },
    /// A page of products (100); `next` is the previous page's `next`, until it is null.
    Products {
        #[serde(default)]
        next: Option<String>,
    },
    /// Pass-through of an onboarding / category / qualification call.
    Wechat {
        api: String,
        #[serde(default)]
        body: serde_json::Value,
    },
}

/// `errcode` for "product not found" (WECHAT_SHOP.md §11, 9401002).
pub(super) const PRODUCT_NOT_FOUND: i64 = 9401002;

/// `errcode` for "product under audit, do not resubmit; use `del_audit`" (§11, 1000002).
const PRODUCT_UNDER_AUDIT: i64 = 1000002;

/// `errcode` for "product never approved, no online data" (§11, 1000003): `spu/listing` of a
/// product WeChat has not approved yet.
pub(super) const PRODUCT_NEVER_APPROVED: i64 = 1000003;

/// 409 `NOT_APPROVED`: WeChat lists only a product it approved once; what to do depends on
/// where its audit stands here.
fn not_approved_yet(p: &Product) -> ApiError {
    let what = match p.draft_audit() {
        AuditStatus::Auditing => "it is under WeChat's audit: list it once approved",
        AuditStatus::Rejected => {
            "WeChat rejected it (see reject_reason): fix it, upsert it \
             again, and list it once approved"
        }
        AuditStatus::Draft | AuditStatus::Approved => {
            "it is not at WeChat's audit (see \
             submit_error): upsert it again, and list it once approved"
        }
    };
    ApiError::conflict(
        "NOT_APPROVED",
        format!(
            "{} cannot be listed: WeChat has never approved it; {what}",
            p.product_id
        ),
    )
}

/// `errcode` for "product id already exists, call `update`" (§11, 1000012).
const PRODUCT_EXISTS: i64 = 1000012;

/// `errcode` for "category needs special qualification, use `audit_category`" (§11, 1000005).
const CATEGORY_UNQUALIFIED: i64 = 1000005;

/// `errcode` for "product uses a brand not authorised, use `audit_brand`" (§11, 1000006).
const BRAND_UNAUTHORISED: i64 = 1000006;

/// `errcode` for "category already approved" (`shop/audit/audit_category`, §2.4, §11 1050003).
const CATEGORY_ALREADY_APPROVED: i64 = 1050003;

/// What a refusal of a product's submission says it waits for ([`Product::waiting_for`]):
/// the category's qualification (1000005) or an authorised brand (1000006).
fn refused_for_want_of(e: &WxError, next: &Content) -> Option<WaitingFor> {
    match e.errcode()? {
        CATEGORY_UNQUALIFIED => Some(WaitingFor::Category(next.third_cat_id)),
        BRAND_UNAUTHORISED => Some(WaitingFor::Brand(next.brand_id)),
        _ => None,
    }
}

/// The `shop/*` calls the merchant may make through `wechat`.
const PASS_THROUGH: &[&str] = &[
    "shop/register/apply",
    "shop/register/check",
    "shop/register/finish_access_info",
    "shop/register/apply_scene",
    "shop/account/get_category_list",
    "shop/account/get_brand_list",
    "shop/account/update_info",
    "shop/account/get_info",
    "shop/cat/get",
    IMG_UPLOAD,
    "shop/audit/audit_brand",
    "shop/audit/audit_category",
    "shop/audit/result",
    "shop/audit/get_miniapp_certificate",
    "shop/spu/get",
    "shop/spu/get_list",
    DEL_AUDIT,
];

/// Withdraws a submission from audit (the product back to `edit_status` 1 at WeChat).
const DEL_AUDIT: &str = "shop/spu/del_audit";

/// The product of ours a `del_audit` body names: by `out_product_id`, or by WeChat's
/// `product_id` (WeChat takes either, WECHAT_SHOP.md §0 and §3), which WeChat's own record
/// (`spu/get`) turns into ours. Read before the withdrawal is sent, so a failure to read it
/// changes nothing anywhere. `None`: nothing of ours (WeChat does not know that id either,
/// or its `out_product_id` is not one we could have given).
async fn withdrawn_product(
    app: &App,
    body: &serde_json::Value,
) -> Result<Option<ProductId>, ApiError> {
    if let Some(out) = body
        .get("out_product_id")
        .and_then(serde_json::Value::as_str)
    {
        return Ok(ProductId::parse(out.to_owned()).ok());
    }
    let wx_id = match body.get("product_id") {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    let Some(wx_id) = wx_id else {
        return Ok(None); // WeChat refuses the call for want of an id
    };
    match app.wx.spu_get(&ProductKey::Id(wx_id), false).await {
        Ok(spu) => Ok(ProductId::parse(spu.out_product_id).ok()),
        Err(e) if e.errcode() == Some(PRODUCT_NOT_FOUND) => Ok(None),
        Err(e) => {
            let e = wx_error(e);
            Err(ApiError::new(
                e.status,
                e.code,
                format!(
                    "nothing was withdrawn: WeChat's product {wx_id} could not be read to find \
                     ours ({}); call again, or name it by out_product_id",
                    e.message
                ),
            ))
        }
    }
}

/// A `del_audit` WeChat took for our product `id`: the submission we hold as under audit is
/// no longer at WeChat, so it becomes a draft not submitted (the next upsert submits it)
/// instead of waiting for a verdict that will never come. Named by WeChat's `product_id`, it
/// used to be missed: the product stayed under audit here for good, and an upsert of the
/// same version uploaded nothing.
async fn audit_withdrawn(app: &App, id: &ProductId) -> Result<(), ApiError> {
    super::common::update_product(app, id, |p| {
        if p.draft_audit() == AuditStatus::Auditing {
            p.draft_not_submitted("review withdrawn (shop/spu/del_audit)".into());
        }
        Ok(())
    })
    .await?;
    Ok(())
}

/// The one pass-through WeChat takes as multipart form fields, not JSON.
const IMG_UPLOAD: &str = "shop/img/upload";

/// `wechat` `shop/img/upload` body: WeChat's fields, as JSON.
#[derive(Deserialize)]
struct ImgUploadInput {
    resp_type: u8,
    upload_type: u8,
    #[serde(default)]
    img_url: Option<String>,
}

/// `shop/img/upload` by URL (`upload_type` 1), sent as WeChat takes it (multipart form
/// fields) → `{"img_info": {media_id, temp_img_url, pay_media_id}}`.
async fn img_upload(app: &App, body: serde_json::Value) -> Result<Response, ApiError> {
    use crate::shop::catalog::{ImgRespType, ImgSource, ImgUpload};
    let input: ImgUploadInput = serde_json::from_value(body).map_err(|e| {
        ApiError::bad_request(
            "BAD_IMG_UPLOAD",
            format!("{IMG_UPLOAD} takes {{resp_type, upload_type: 1, img_url}}: {e}"),
        )
    })?;
    let resp_type = match input.resp_type {
        0 => ImgRespType::MediaId,
        1 => ImgRespType::Url,
        2 => ImgRespType::PayMediaId,
        n => {
            return Err(ApiError::bad_request(
                "BAD_IMG_UPLOAD",
                format!(
                    "resp_type must be 0 (media_id), 1 (temp_img_url) or 2 (pay_media_id), not {n}"
                ),
            ))
        }
    };
    let url = match (input.upload_type, input.img_url) {
        (1, Some(u)) if !u.trim().is_empty() => u.trim().to_owned(),
        (1, _) => {
            return Err(ApiError::bad_request(
                "BAD_IMG_UPLOAD",
                "upload_type 1 needs img_url, the image's http(s) URL",
            ))
        }
        (n, _) => {
            return Err(ApiError::bad_request(
                "BAD_IMG_UPLOAD",
                format!(
                    "upload_type must be 1 (by img_url), not {n}: image bytes cannot travel \
                     in this JSON API; put the image at a URL WeChat can fetch"
                ),
            ))
        }
    };
    let info = app
        .wx
        .img_upload(&ImgUpload {
            resp_type,
            source: ImgSource::Url(url),
        })
        .await
        .map_err(wx_error)?;
    Ok(json(&serde_json::json!({ "img_info": info })))
}

// ---------------------------------------------------------------- qualification audits

/// The qualification audits opened through `wechat` (`shop/audit/audit_category`,
/// `shop/audit/audit_brand`), one event each, keyed by WeChat's `audit_id`: a category's
/// verdict push names only the `audit_id` (WECHAT_SHOP.md §8.2), so this is what ties it to
/// its category. The merchant reads them with orderSync `events`.
pub const QUALIFICATION_AUDIT_EVENTS: &str = "qualification_audit";

/// WeChat's verdicts on those audits (pushed), one event each, keyed `{audit_id}/{status}`:
/// the category or brand, APPROVED or REJECTED, the reject reason, an approved brand's new
/// `brand_id`, and what to do next.
pub const QUALIFICATION_VERDICT_EVENTS: &str = "qualification_verdict";

/// The longest `audit_id` kept (WeChat's are about two dozen characters).
const AUDIT_ID_MAX: usize = 128;

/// A brand or a category qualification audit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QualificationKind {
    Brand,
    Category,
}

/// A qualification audit opened through `wechat`, as kept under
/// [`QUALIFICATION_AUDIT_EVENTS`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct QualificationAuditRecord {
    audit_id: String,
    kind: QualificationKind,
    /// The category's `level3` (category audits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    third_cat_id: Option<u64>,
    /// The brand's `brand_wording` (brand audits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    brand_wording: Option<String>,
    requested_at_ms: i64,
}

/// A number WeChat takes as a number or a numeric string.
fn lenient_u64(v: &serde_json::Value) -> Option<u64> {
    match v {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// What a JSON value is, for a message.
fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "true/false",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// The fields WeChat requires in a pass-through's body, one of each group (WECHAT_SHOP.md §1
/// `finish_access_info`, `apply_scene`; §2.3–2.6; §3 `spu/get`, `del_audit`).
fn required_fields(api: &str) -> &'static [&'static [&'static str]] {
    match api {
        "shop/register/finish_access_info" => &[&["access_info_item"]],
        "shop/register/apply_scene" => &[&["scene_group_id"]],
        "shop/audit/audit_brand" | "shop/audit/audit_category" => &[&["audit_req"]],
        "shop/audit/result" => &[&["audit_id"]],
        "shop/audit/get_miniapp_certificate" => &[&["req_type"]],
        "shop/spu/get" | DEL_AUDIT => &[&["product_id", "out_product_id"]],
        _ => &[],
    }
}

/// 400 `BAD_WECHAT_BODY` for a pass-through body WeChat could not take: not a JSON object
/// (its request fields), or without a field `api` requires — and, for
/// `shop/audit/audit_category`, without the `level3` its verdict is tied to. Such a body
/// used to go to WeChat and come back a 502 `WECHAT_REFUSED` (or, not an object, a 502 from
/// our own client), as if WeChat had refused the merchant's application.
fn check_wechat_body(api: &str, body: &serde_json::Value) -> Result<(), ApiError> {
    let Some(fields) = body.as_object() else {
        return Err(ApiError::bad_request(
            "BAD_WECHAT_BODY",
            format!(
                "`body` of {api} must be a JSON object of WeChat's request fields, not {}",
                json_kind(body)
            ),
        ));
    };
    for group in required_fields(api) {
        if !group
            .iter()
            .any(|f| fields.get(*f).is_some_and(|v| !v.is_null()))
        {
            return Err(ApiError::bad_request(
                "BAD_WECHAT_BODY",
                format!(
                    "{api} needs `{}` in `body` (WeChat requires it)",
                    group.join("` or `")
                ),
            ));
        }
    }
    if api == "shop/audit/audit_category"
        && lenient_u64(&body["audit_req"]["category_info"]["level3"]).is_none()
    {
        return Err(ApiError::bad_request(
            "BAD_WECHAT_BODY",
            "shop/audit/audit_category needs `audit_req.category_info.level3`, the level-3 \
             category (a number from shop/cat/get)",
        ));
    }
    Ok(())
}

/// Keeps a qualification audit WeChat just opened (`audit_id` from its `reply`), so that
/// its verdict can be tied to its category or brand ([`on_qualification_verdict`]). Other
/// pass-throughs: nothing.
async fn record_qualification_audit(
    app: &App,
    api: &str,
    body: &serde_json::Value,
    reply: &serde_json::Value,
) -> Result<(), StoreError> {
    let kind = match api {
        "shop/audit/audit_category" => QualificationKind::Category,
        "shop/audit/audit_brand" => QualificationKind::Brand,
        _ => return Ok(()),
    };
    let audit_id = match reply.get("audit_id") {
        Some(serde_json::Value::String(s)) => s.trim().to_owned(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => String::new(),
    };
    if audit_id.is_empty() || audit_id.len() > AUDIT_ID_MAX {
        tracing::warn!(
            api,
            "WeChat's answer has no usable audit_id; the audit is not recorded"
        );
        return Ok(());
    }
    let req = &body["audit_req"];
    let now = app.clock.now_ms();
    let record = QualificationAuditRecord {
        audit_id: audit_id.clone(),
        kind,
        third_cat_id: lenient_u64(&req["category_info"]["level3"]),
        brand_wording: req["brand_info"]["brand_wording"]
            .as_str()
            .map(str::to_owned),
        requested_at_ms: now,
    };
    let body = serde_json::to_string(&record).map_err(|e| StoreError::Backend(e.to_string()))?;
    let event = repo::EventRecord::new(QUALIFICATION_AUDIT_EVENTS, audit_id, now, body);
    repo::record_event(app.store.as_ref(), &event).await?;
    Ok(())
}

/// `open_product_category_audit` / `open_product_brand_audit`: WeChat's verdict on a
/// qualification audit (status 1 approved, 9 rejected; WECHAT_SHOP.md §8.2). For an audit
/// opened through `wechat` (recorded: [`record_qualification_audit`]) the verdict is kept as
/// a [`QUALIFICATION_VERDICT_EVENTS`] event and, for a category, a [`Task::CategoryVerdict`]
/// is enqueued in the same write — the products waiting for the category are many perhaps,
/// and each a WeChat call: the outbox submits them again (approved) or tells them why not
/// (rejected). The push is acknowledged once both are stored; its retries change nothing more.
/// An audit not recorded here (opened elsewhere, or a forged id), or a status that is no
/// verdict: acknowledged and logged, nothing changed.
///
/// A brand's approval gives the brand a new `brand_id` (in the push): products refused for
/// their brand are not submitted again unchanged — the event names the new `brand_id`, with
/// which the merchant upserts them.
pub async fn on_qualification_verdict(
    app: &App,
    pushed_as: QualificationKind,
    body: &crate::push::QualificationAudit,
) -> Result<(), ApiError> {
    let approved = match body.status {
        1 => true,
        9 => false,
        status => {
            tracing::info!(audit_id = %body.audit_id, status, "qualification audit push with no verdict; nothing to do");
            return Ok(());
        }
    };
    let store = app.store.as_ref();
    let found = if body.audit_id.is_empty() || body.audit_id.len() > AUDIT_ID_MAX {
        None
    } else {
        repo::get_event(store, QUALIFICATION_AUDIT_EVENTS, &body.audit_id).await?
    };
    let Some(found) = found else {
        return on_unknown_verdict(app, pushed_as, body, approved).await;
    };
    let audit: QualificationAuditRecord = match serde_json::from_str(&found.value.body) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(audit_id = %body.audit_id, error = %e, "recorded qualification audit unreadable; verdict acknowledged, nothing changed");
            return Ok(());
        }
    };
    if audit.kind != pushed_as {
        tracing::warn!(audit_id = %body.audit_id, recorded = ?audit.kind, pushed = ?pushed_as, "qualification verdict pushed as another kind of audit than recorded; applied as recorded");
    }
    let what_to_do = match (audit.kind, approved) {
        (QualificationKind::Category, true) => format!(
            "none: the products waiting for category {} (waiting_for.category) are submitted \
             to WeChat's audit again by themselves",
            audit.third_cat_id.unwrap_or_default()
        ),
        (QualificationKind::Category, false) => format!(
            "fix what reject_reason says and apply again (catalogSync wechat \
             shop/audit/audit_category); the products waiting for category {} are submitted \
             again once it is approved",
            audit.third_cat_id.unwrap_or_default()
        ),
        (QualificationKind::Brand, true) => format!(
            "upsert the products refused for their brand (waiting_for.brand) with brand_id {}: \
             WeChat gave the approved brand this new id",
            body.brand_id
                .map_or("(not in the push: shop/audit/result)".to_owned(), |b| b
                    .to_string())
        ),
        (QualificationKind::Brand, false) => "fix what reject_reason says and apply again \
             (catalogSync wechat shop/audit/audit_brand)"
            .to_owned(),
    };
    let verdict = serde_json::json!({
        "audit_id": audit.audit_id,
        "kind": audit.kind,
        "status": if approved { "APPROVED" } else { "REJECTED" },
        "third_cat_id": audit.third_cat_id,
        "brand_wording": audit.brand_wording,
        "brand_id": body.brand_id,
        "reject_reason": body.reject_reason,
        "what_to_do": what_to_do,
    });
    let now = app.clock.now_ms();
    let mut batch = Batch::new();
    batch.record_event(&repo::EventRecord::new(
        QUALIFICATION_VERDICT_EVENTS,
        format!("{}/{}", audit.audit_id, body.status),
        now,
        verdict.to_string(),
    ));
    if let (QualificationKind::Category, Some(third_cat_id)) = (audit.kind, audit.third_cat_id) {
        if approved {
            // Before the task that scans for the waiting products (see the module doc).
            note_category_approved(app, Some(third_cat_id), &audit.audit_id, now).await?;
        }
        batch.enqueue(crate::outbox::OutboxEntry::new(
            crate::outbox::Task::CategoryVerdict {
                audit_id: audit.audit_id.clone(),
                third_cat_id: Some(third_cat_id),
                approved,
                reject_reason: body.reject_reason.clone(),
            },
            now,
        ));
    }
    match batch.commit(store).await {
        Ok(()) => {
            tracing::info!(audit_id = %audit.audit_id, kind = ?audit.kind, approved, "qualification audit verdict recorded");
            Ok(())
        }
        // Recorded already (a retry of the push, a second push of the same verdict).
        Err(e) if e.is_conflict() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A verdict pushed on an audit not recorded here: applied for outside wxshop (WeChat's
/// console, or before wxshop was deployed). It is kept as a [`QUALIFICATION_VERDICT_EVENTS`]
/// event (keyed `{audit_id}/{status}`, so a repeat of the push changes nothing more). A
/// category's approval names no category (WECHAT_SHOP.md §8.2): every product waiting for a
/// category is submitted again once ([`Task::CategoryVerdict`] with no category), WeChat's
/// answer deciding. A brand's approval names its new `brand_id`, which the event gives the
/// merchant to upsert the products waiting for that brand with (they are not submitted
/// again: their `brand_id` is the old one).
async fn on_unknown_verdict(
    app: &App,
    kind: QualificationKind,
    body: &crate::push::QualificationAudit,
    approved: bool,
) -> Result<(), ApiError> {
    if body.audit_id.is_empty() || body.audit_id.len() > AUDIT_ID_MAX {
        tracing::warn!(audit_id = %body.audit_id, status = body.status, kind = ?kind, "qualification verdict without a usable audit_id; acknowledged, nothing changed");
        return Ok(());
    }
    let what_to_do = match (kind, approved) {
        (QualificationKind::Category, true) => "none: an audit applied for outside wxshop \
             (WeChat's console), its category not named by WeChat: every product waiting for a \
             category (waiting_for.category) is submitted to WeChat's audit again once; those \
             WeChat still refuses (1000005) go on waiting"
            .to_owned(),
        (QualificationKind::Brand, true) => format!(
            "an audit applied for outside wxshop (WeChat's console) approved brand_id {}: \
             upsert the products of that brand (waiting_for.brand) with it",
            body.brand_id
                .map_or("(not in the push: shop/audit/result)".to_owned(), |b| b
                    .to_string())
        ),
        (_, false) => "an audit applied for outside wxshop (WeChat's console) was rejected: \
             see reject_reason, and apply again"
            .to_owned(),
    };
    let verdict = serde_json::json!({
        "audit_id": body.audit_id,
        "kind": kind,
        "status": if approved { "APPROVED" } else { "REJECTED" },
        "third_cat_id": null,
        "brand_wording": null,
        "brand_id": body.brand_id,
        "reject_reason": body.reject_reason,
        "what_to_do": what_to_do,
        "applied_for": "outside wxshop",
    });
    let now = app.clock.now_ms();
    let mut batch = Batch::new();
    batch.record_event(&repo::EventRecord::new(
        QUALIFICATION_VERDICT_EVENTS,
        format!("{}/{}", body.audit_id, body.status),
        now,
        verdict.to_string(),
    ));
    if (kind, approved) == (QualificationKind::Category, true) {
        note_category_approved(app, None, &body.audit_id, now).await?;
        batch.enqueue(crate::outbox::OutboxEntry::new(
            crate::outbox::Task::CategoryVerdict {
                audit_id: body.audit_id.clone(),
                third_cat_id: None,
                approved: true,
                reject_reason: String::new(),
            },
            now,
        ));
    }
    match batch.commit(app.store.as_ref()).await {
        Ok(()) => {
            tracing::info!(audit_id = %body.audit_id, kind = ?kind, approved, "verdict on a qualification audit applied for outside wxshop (unknown audit_id) recorded");
            Ok(())
        }
        Err(e) if e.is_conflict() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// How long a category's approval is kept for [`approved_meanwhile`] (the race it closes
/// lasts as long as a WeChat call; a day is far more).
const CATEGORY_APPROVAL_KEPT_SECS: i64 = 86_400;

/// Leeway for clocks of different instances: an approval recorded up to this long before a
/// submission began still counts as "since" it ([`approved_meanwhile`]). At most one more
/// submission per approval follows from it.
const CLOCK_LEEWAY_MS: i64 = 60_000;

/// The kv key of the latest approval of level-3 category `c` (`None`: of an audit applied for
/// outside wxshop, whose category WeChat does not name).
fn category_approval_key(c: Option<u64>) -> String {
    match c {
        Some(c) => format!("category-approved/{c}"),
        None => "category-approved/unknown".to_owned(),
    }
}

/// The latest approval recorded of a category (kv [`category_approval_key`]).
#[derive(Debug, Serialize, Deserialize)]
struct CategoryApproval {
    /// The approved audit's `audit_id`, or our name of a 1050003 answer.
    approval: String,
    approved_at_ms: i64,
}

/// Keeps that category `c` was approved at `now` (M in the module doc); written before the
/// task that submits the waiting products again is enqueued.
async fn note_category_approved(
    app: &App,
    c: Option<u64>,
    approval: &str,
    now: i64,
) -> Result<(), StoreError> {
    let value = serde_json::to_string(&CategoryApproval {
        approval: approval.to_owned(),
        approved_at_ms: now,
    })
    .map_err(|e| StoreError::Backend(e.to_string()))?;
    crate::store::kv::put(
        app.store.as_ref(),
        &category_approval_key(c),
        &value,
        app.clock.now_secs() + CATEGORY_APPROVAL_KEPT_SECS,
    )
    .await
}

/// R in the module doc: `id` was just stored waiting for category `c` by a submission begun
/// at `since`. An approval of `c` (or of a category applied for outside wxshop) recorded
/// since then may have found nothing waiting: the product is submitted again (a
/// [`Task::SubmitWaiting`] naming that approval). Whether one was enqueued.
async fn approved_meanwhile(
    app: &App,
    id: &ProductId,
    c: u64,
    since: i64,
) -> Result<bool, StoreError> {
    use crate::outbox::{OutboxEntry, Task};
    for key in [Some(c), None] {
        let Some(e) =
            crate::store::kv::get(app.store.as_ref(), &category_approval_key(key)).await?
        else {
            continue;
        };
        let Ok(a) = serde_json::from_str::<CategoryApproval>(&e.value) else {
            continue;
        };
        if a.approved_at_ms + CLOCK_LEEWAY_MS < since {
            // Approved before this submission: WeChat refused it with the approval in place.
            continue;
        }
        tracing::info!(product_id = %id, third_cat_id = c, approval = %a.approval, "the category was approved while WeChat refused the product; submitting it again");
        let task = Task::SubmitWaiting {
            product_id: id.clone(),
            approval: Some(a.approval),
        };
        crate::outbox::enqueue(
            app.store.as_ref(),
            &OutboxEntry::new(task, app.clock.now_ms()),
        )
        .await?;
        return Ok(true);
    }
    Ok(false)
}

/// `wechat` `shop/audit/audit_category` answered 1050003 (category already approved,
/// WECHAT_SHOP.md §2.4): the category is granted, however it was (WeChat's console, an
/// earlier audit whose verdict never reached us). The products waiting for it are submitted
/// again, as on its approval push. Whether that was arranged.
async fn category_already_approved(app: &App, body: &serde_json::Value) -> bool {
    let Some(level3) = lenient_u64(&body["audit_req"]["category_info"]["level3"]) else {
        return false;
    };
    let now = app.clock.now_ms();
    let approval = format!("1050003/{level3}/{now}");
    let arranged = async {
        note_category_approved(app, Some(level3), &approval, now).await?;
        let task = crate::outbox::Task::CategoryVerdict {
            audit_id: approval.clone(),
            third_cat_id: Some(level3),
            approved: true,
            reject_reason: String::new(),
        };
        crate::outbox::enqueue(
            app.store.as_ref(),
            &crate::outbox::OutboxEntry::new(task, now),
        )
        .await
    };
    match arranged.await {
        Ok(()) => {
            tracing::info!(third_cat_id = level3, "category already approved at WeChat (1050003): its waiting products are submitted again");
            true
        }
        Err(e) => {
            tracing::error!(third_cat_id = level3, error = %e, "category already approved at WeChat (1050003), but its waiting products could not be queued for submission");
            false
        }
    }
}

/// [`Task::CategoryVerdict`]: every product whose draft waits for category `third_cat_id`
/// ([`WaitingFor::Category`]; `None`: for any category — an approval applied for outside
/// wxshop, its category unnamed) is, the audit approved, submitted again (a
/// [`Task::SubmitWaiting`] each, naming the approval, so a slow WeChat delays none of the
/// others and none is submitted twice for it), or, rejected, given the reason as its
/// `submit_error` (it still waits: a new application's approval submits it). The catalog is
/// read a page at a time; a repeat of the task (a lease run out) only enqueues submissions
/// that find nothing left to do.
pub async fn category_verdict(
    app: &App,
    audit_id: &str,
    third_cat_id: Option<u64>,
    approved: bool,
    reject_reason: &str,
) -> Result<(), crate::handlers::order_sync::TaskError> {
    use crate::outbox::{OutboxEntry, Task};
    let store = app.store.as_ref();
    let waits = |p: &Product| {
        let category = match (p.waiting_for, third_cat_id) {
            (Some(WaitingFor::Category(c)), Some(want)) => c == want,
            (Some(WaitingFor::Category(_)), None) => true,
            _ => false,
        };
        category && p.draft_audit() == AuditStatus::Draft
    };
    let named = third_cat_id.map_or("(not named: applied for outside wxshop)".to_owned(), |c| {
        c.to_string()
    });
    let why = format!(
        "WeChat rejected the qualification audit {audit_id} of category {named}: \
         {reject_reason}; apply again (catalogSync wechat shop/audit/audit_category): once \
         approved, this product is submitted again by itself"
    );
    let mut cursor = None;
    let mut found = 0usize;
    loop {
        let (page, unreadable, next) =
            repo::list_products_readable(store, repo::ProductFilter::All, 100, cursor).await?;
        for u in unreadable {
            tracing::error!(product_id = %u.product_id, error = %u.why, "category verdict: stored product unreadable; skipped");
        }
        for p in page.iter().filter(|p| waits(&p.value)) {
            found += 1;
            let id = &p.value.product_id;
            if approved {
                let task = Task::SubmitWaiting {
                    product_id: id.clone(),
                    approval: Some(audit_id.to_owned()),
                };
                crate::outbox::enqueue(store, &OutboxEntry::new(task, app.clock.now_ms())).await?;
            } else if third_cat_id.is_some() {
                super::common::update_product(app, id, |p| {
                    if waits(p) {
                        p.draft_not_submitted(why.clone());
                    }
                    Ok(())
                })
                .await?;
            }
        }
        match next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    tracing::info!(
        audit_id,
        third_cat_id = ?third_cat_id,
        approved,
        products = found,
        "category qualification verdict applied to the products waiting for it"
    );
    Ok(())
}

/// How long a product is submitted at most once for one approval
/// (`resubmitted/{approval}/{product}` in the kv space): far longer than the tasks naming it
/// take to run.
const RESUBMITTED_KEPT_SECS: i64 = 7 * 86_400;

/// [`Task::SubmitWaiting`]: the product's stored draft, still waiting for its category, is
/// submitted for audit as the merchant's upsert of it would ([`submit`]). Refused again, or
/// its answer lost: the product records it (`submit_error`, `waiting_for`), as after an
/// upsert, and the task is done; WeChat unreachable or the product changed meanwhile: the
/// task is retried. A product the merchant upserted meanwhile (no longer waiting): nothing.
/// Named by an `approval`, the product is submitted at most once for it: the first task
/// claims it, the others (a verdict's scan and the refusal's own check both finding it, a
/// repeat of the verdict's task) do nothing — so WeChat refusing it again cannot loop.
pub async fn submit_waiting(
    app: &App,
    id: &ProductId,
    approval: Option<&str>,
) -> Result<(), crate::handlers::order_sync::TaskError> {
    use crate::handlers::order_sync::TaskError;
    if !component_on(app) {
        return Ok(());
    }
    let store = app.store.as_ref();
    let Some(stored) = repo::get_product(store, id).await? else {
        return Ok(());
    };
    let p = &stored.value;
    if !matches!(p.waiting_for, Some(WaitingFor::Category(_)))
        || p.draft_audit() != AuditStatus::Draft
    {
        return Ok(());
    }
    let claim = approval.map(|a| format!("resubmitted/{a}/{id}"));
    if let Some(key) = &claim {
        let until = app.clock.now_secs() + RESUBMITTED_KEPT_SECS;
        if !crate::store::kv::put_if(store, key, "submitted", until, None).await? {
            tracing::debug!(product_id = %id, approval, "already submitted again for this approval");
            return Ok(());
        }
    }
    let next = p.draft();
    let was = p.waiting_for;
    let outcome = match submit(app, Some(&stored), p.clone(), next, app.clock.now_ms()).await {
        Ok(p) => {
            tracing::info!(product_id = %id, audit = ?p.draft_audit(), "submitted again: its category's qualification is approved");
            Ok(())
        }
        Err(e) if e.code == "WECHAT_REFUSED" || e.code == "SUBMISSION_UNCONFIRMED" => {
            let still = repo::get_product(store, id)
                .await
                .ok()
                .flatten()
                .and_then(|p| p.value.waiting_for);
            if still.is_some() && still == was {
                // WeChat still lacks the qualification (an approval of another category):
                // it waits on, as it did.
                tracing::info!(product_id = %id, approval, "submitted again: WeChat still refuses it for its category; it goes on waiting");
            } else {
                tracing::warn!(product_id = %id, error = %e, "submitted again after its category's approval: not taken; the product says why");
            }
            Ok(())
        }
        Err(e) if e.code == "RETRY" => Err(TaskError::Retry(e.to_string())),
        Err(e) => Err(e.into()),
    };
    if let (Err(_), Some(key)) = (&outcome, &claim) {
        // Retried: the claim is the retry's.
        if let Err(e) = crate::store::kv::delete(store, key).await {
            tracing::warn!(product_id = %id, error = %e, "could not release the resubmission claim; the retry finds it taken");
        }
    }
    outcome
}

/// The merchant's 404 for a product id the catalog does not have.
fn no_such_product(id: &ProductId) -> ApiError {
    ApiError::not_found(
        "NO_SUCH_PRODUCT",
        format!(
            "no product {id} in the catalog: check the id against catalogSync products, or \
             create it with upsert"
        ),
    )
}

fn bad(code: &'static str) -> impl Fn(crate::domain::IdError) -> ApiError {
    move |e| ApiError::bad_request(code, e.to_string())
}

/// What WeChat's `spu/add|update` requires of a product (WECHAT_SHOP.md §3, the SPU object),
/// checked before anything is stored: a product it would refuse used to be stored (and, a
/// new one, left unsubmitted) and the upsert answered 502 `WECHAT_REFUSED`.
fn check_for_wechat(
    title: &str,
    head_img: &[String],
    third_cat_id: u64,
    brand_id: u64,
) -> Result<(), ApiError> {
    let chars = title.chars().count();
    if !WX_TITLE_CHARS.contains(&chars) {
        return Err(ApiError::bad_request(
            "BAD_TITLE",
            format!(
                "title must be {}–{} characters (WeChat's limit for a product title); \
                 this one has {chars}",
                WX_TITLE_CHARS.start(),
                WX_TITLE_CHARS.end()
            ),
        ));
    }
    if head_img.is_empty() || head_img.iter().any(|u| u.trim().is_empty()) {
        return Err(ApiError::bad_request(
            "BAD_HEAD_IMG",
            "head_img must list at least one image URL, none blank (WeChat requires a \
             product's main images; upload them with shop/img/upload first)",
        ));
    }
    if third_cat_id == 0 {
        return Err(ApiError::bad_request(
            "BAD_CATEGORY",
            "third_cat_id is required: a level-3 category from shop/cat/get (WeChat requires one)",
        ));
    }
    if brand_id == 0 {
        return Err(ApiError::bad_request(
            "BAD_BRAND",
            format!(
                "brand_id 0 is no brand WeChat knows: omit brand_id (or give {NO_BRAND}) for a \
                 product of no brand, or give a brand WeChat approved (shop/audit/audit_brand)"
            ),
        ));
    }
    Ok(())
}

/// At most this many main images a product (`head_img`). UNVERIFIED: WECHAT_SHOP.md's
/// `shop/spu/add` names no count and no source found gives one; 9 is ours (a product page's
/// usual gallery), with the per-image caps below keeping a product record far below
/// DynamoDB's 400 KB item limit.
pub const MAX_HEAD_IMGS: usize = 9;
/// At most this many qualification images a product (`qualification_pics`). UNVERIFIED:
/// ours, as [`MAX_HEAD_IMGS`].
pub const MAX_QUALIFICATION_PICS: usize = 9;
/// Trading component on: at most this many bytes an image URL. UNVERIFIED: ours (WeChat takes
/// only the URLs of images uploaded to it, `shop/img/upload`, a few hundred bytes each); it
/// refuses inline `data:` images, which WeChat does not take as a product image. 18 images of
/// this size are under 40 KB.
pub const MAX_IMG_URL_BYTES: usize = 2048;
/// Trading component off: at most this many bytes an image, URL or inline `data:` image (the
/// mini program shows either; the catalog has always taken them). Ours: a request body is at
/// most 64 KiB anyway, so one request's images are too, and the product record, which holds
/// one version of them when the component is off, stays far below 400 KB.
pub const MAX_INLINE_IMG_BYTES: usize = 60_000;

/// `urls` (the input's `field`) within the catalog's bounds: at most `max` images, each at
/// most [`MAX_IMG_URL_BYTES`] (`for_wechat`: the trading component is on) or
/// [`MAX_INLINE_IMG_BYTES`]. A product beyond them makes a record DynamoDB may not store (400
/// KB an item) — the product's every later write failing — and WeChat refuses it.
fn check_images(
    field: &str,
    code: &'static str,
    urls: &[String],
    max: usize,
    for_wechat: bool,
) -> Result<(), ApiError> {
    if urls.len() > max {
        return Err(ApiError::bad_request(
            code,
            format!(
                "{field} may list at most {max} images; this one lists {}",
                urls.len()
            ),
        ));
    }
    let (cap, what) = if for_wechat {
        (
            MAX_IMG_URL_BYTES,
            "give the URL of an image uploaded with shop/img/upload, not the image itself",
        )
    } else {
        (MAX_INLINE_IMG_BYTES, "give a smaller image, or its URL")
    };
    if let Some((i, u)) = urls.iter().enumerate().find(|(_, u)| u.len() > cap) {
        return Err(ApiError::bad_request(
            code,
            format!(
                "{field}[{i}] is {} bytes; an image may be at most {cap} bytes here ({what})",
                u.len()
            ),
        ));
    }
    Ok(())
}

/// The merchant's version of a product, checked; `for_wechat`: the trading component is on,
/// so it must also be a product WeChat takes ([`check_for_wechat`]).
fn content_from_input(
    input: ProductInput,
    for_wechat: bool,
) -> Result<(ProductId, Content), ApiError> {
    let product_id = ProductId::parse(input.product_id).map_err(bad("BAD_PRODUCT_ID"))?;
    let title = input.title.trim().to_owned();
    if title.is_empty() || title.chars().count() > *WX_TITLE_CHARS.end() {
        return Err(ApiError::bad_request(
            "BAD_TITLE",
            format!("title must be 1–{} characters", WX_TITLE_CHARS.end()),
        ));
    }
    let brand_id = input.brand_id.unwrap_or(NO_BRAND);
    if for_wechat {
        check_for_wechat(&title, &input.head_img, input.third_cat_id, brand_id)?;
    }
    check_images(
        "head_img",
        "BAD_HEAD_IMG",
        &input.head_img,
        MAX_HEAD_IMGS,
        for_wechat,
    )?;
    check_images(
        "qualification_pics",
        "BAD_QUALIFICATION_PICS",
        &input.qualification_pics,
        MAX_QUALIFICATION_PICS,
        for_wechat,
    )?;
    if input.qualification_pics.iter().any(|u| u.trim().is_empty()) {
        return Err(ApiError::bad_request(
            "BAD_QUALIFICATION_PICS",
            "qualification_pics must not hold a blank image URL (upload each image with \
             shop/img/upload and give its URL)",
        ));
    }
    if input.skus.is_empty() || input.skus.len() > 100 {
        return Err(ApiError::bad_request(
            "BAD_SKUS",
            "a product needs 1–100 skus",
        ));
    }
    let mut skus: Vec<Sku> = Vec::with_capacity(input.skus.len());
    for s in input.skus {
        let sku_id = SkuId::parse(s.sku_id).map_err(bad("BAD_SKU_ID"))?;
        if skus.iter().any(|k| k.sku_id == sku_id) {
            return Err(ApiError::bad_request(
                "BAD_SKUS",
                format!("sku {sku_id} appears twice"),
            ));
        }
        let price =
            Fen::new(s.price).map_err(|e| ApiError::bad_request("BAD_PRICE", e.to_string()))?;
        if price == Fen::ZERO || price > Fen::MAX_PAYMENT {
            return Err(ApiError::bad_request(
                "BAD_PRICE",
                format!(
                    "price must be 1–{} fen (the most one WeChat Pay payment takes)",
                    Fen::MAX_PAYMENT
                ),
            ));
        }
        // The crossed-out price beside the price: the trading component's `market_price` is an
        // `Int` like `sale_price`, so one above it would be refused at WeChat after we stored it.
        let market_price = Fen::new(s.market_price.unwrap_or(s.price))
            .map_err(|e| ApiError::bad_request("BAD_PRICE", format!("market_price: {e}")))?;
        if market_price > Fen::MAX_PAYMENT {
            return Err(ApiError::bad_request(
                "BAD_PRICE",
                format!(
                    "market_price must be 0–{} fen (WeChat holds it to the same limit as price)",
                    Fen::MAX_PAYMENT
                ),
            ));
        }
        skus.push(Sku {
            sku_id,
            price,
            market_price,
            stock: s.stock,
            wx_sku_id: None,
            attrs: Vec::new(),
        });
    }
    Ok((
        product_id,
        Content {
            title,
            path: input.path.unwrap_or_else(|| "pages/product/detail".into()),
            head_img: input.head_img,
            third_cat_id: input.third_cat_id,
            brand_id,
            qualification_pics: input.qualification_pics,
            skus,
        },
    ))
}

fn spu(id: &ProductId, p: &Content) -> Spu {
    Spu {
        out_product_id: Some(id.to_string()),
        title: p.title.clone(),
        path: format!("{}?product_id={}", p.path, id),
        head_img: p.head_img.clone(),
        qualification_pics: p.qualification_pics.clone(),
        third_cat_id: p.third_cat_id,
        brand_id: p.brand_id,
        skus: p
            .skus
            .iter()
            .map(|s| SpuSku {
                out_product_id: id.to_string(),
                out_sku_id: s.sku_id.to_string(),
                thumb_img: p.head_img.first().cloned().unwrap_or_default(),
                sale_price: s.price,
                market_price: s.market_price,
                stock_num: i64::from(s.stock),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

pub async fn handle(app: &App, req: Request) -> Result<Response, ApiError> {
    if req.uri().path().starts_with("/admin/") {
        admin(app, req).await
    } else {
        shop(app, req).await
    }
}

async fn admin(app: &App, req: Request) -> Result<Response, ApiError> {
    match parse_json::<Action>(&req)? {
        Action::Upsert { product } => {
            let p = upsert(app, product).await?;
            Ok(json(&serde_json::json!({ "product": p })))
        }
        Action::Listing { product_id } => {
            let id = ProductId::parse(product_id).map_err(bad("BAD_PRODUCT_ID"))?;
            let p = set_listing(app, &id, Listing::Listed).await?;
            Ok(json(&serde_json::json!({ "product": p })))
        }
        Action::Delisting { product_id } => {
            let id = ProductId::parse(product_id).map_err(bad("BAD_PRODUCT_ID"))?;
            let p = set_listing(app, &id, Listing::Delisted).await?;
            Ok(json(&serde_json::json!({ "product": p })))
        }
        Action::SetStock {
            product_id,
            sku_id,
            stock,
        } => {
            let id = ProductId::parse(product_id).map_err(bad("BAD_PRODUCT_ID"))?;
            let sku = SkuId::parse(sku_id).map_err(bad("BAD_SKU_ID"))?;
            let set = set_stock(app, &id, &sku, stock).await?;
            let mut answer = serde_json::json!({ "product": set.product });
            if set.reuploaded {
                answer["notice"] = serde_json::json!(format!(
                    "WeChat no longer has {id} (deleted there, or a new account): the stock is \
                     stored, {id} is off sale here, and it was uploaded to WeChat again for \
                     audit; list it again once it reads APPROVED"
                ));
            }
            Ok(json(&answer))
        }
        Action::Get { product_id } => {
            let id = ProductId::parse(product_id).map_err(bad("BAD_PRODUCT_ID"))?;
            let p = repo::get_product(app.store.as_ref(), &id)
                .await
                .map_err(|e| unreadable_product(&id, e))?
                .ok_or_else(|| no_such_product(&id))?;
            Ok(json(&serde_json::json!({ "product": p.value })))
        }
        Action::Products { next } => {
            let (found, unreadable, next) = readable_products(app, 100, next).await?;
            let products: Vec<&Product> = found.iter().map(|p| &p.value).collect();
            let mut page = serde_json::json!({ "products": products, "next": next });
            if !unreadable.is_empty() {
                // Shown only when there are some, so the usual page keeps its shape.
                page["unreadable"] = unreadable
                    .iter()
                    .map(|u| serde_json::json!({"product_id": u.product_id, "error": u.why}))
                    .collect();
            }
            Ok(json(&page))
        }
        Action::Wechat { api, body } => {
            let api = api.trim_start_matches('/');
            if !PASS_THROUGH.contains(&api) {
                return Err(ApiError::bad_request(
                    "UNSUPPORTED_API",
                    format!("`{api}` is not one of: {}", PASS_THROUGH.join(", ")),
                ));
            }
            let body = if body.is_null() {
                serde_json::json!({})
            } else {
                body
            };
            check_wechat_body(api, &body)?;
            if api == IMG_UPLOAD {
                return img_upload(app, body).await;
            }
            if api == "shop/cat/get" {
                // ~2 MB, rate-limited by WeChat: the client's hour-long cache answers.
                let list = app.wx.cat_get().await.map_err(wx_error)?;
                return Ok(json(&serde_json::json!({
                    "errcode": 0,
                    "third_cat_list": list.as_ref(),
                })));
            }
            let withdrawn = if api == DEL_AUDIT {
                withdrawn_product(app, &body).await?
            } else {
                None
            };
            let mut reply: serde_json::Value = match app.wx.post_json(api, &body).await {
                Ok(r) => r,
                Err(e)
                    if api == "shop/audit/audit_category"
                        && e.errcode() == Some(CATEGORY_ALREADY_APPROVED) =>
                {
                    let mut err = wx_error(e);
                    if category_already_approved(app, &body).await {
                        err.message.push_str(
                            "; the category is approved: the products waiting for it \
                             (waiting_for.category) are submitted to WeChat's audit again by \
                             themselves",
                        );
                    }
                    return Err(err);
                }
                Err(e) => return Err(wx_error(e)),
            };
            if let Some(id) = withdrawn {
                audit_withdrawn(app, &id).await?;
            }
            if let Err(e) = record_qualification_audit(app, api, &body, &reply).await {
                // WeChat opened the audit: its answer (the audit_id) is the merchant's.
                tracing::error!(api, error = %e, "qualification audit opened at WeChat but not recorded; its verdict will not be tied to it");
                reply["notice"] = serde_json::json!(format!(
                    "WeChat opened the audit, but it could not be recorded here ({e}): its \
                     verdict will not submit waiting products again; once it is approved, \
                     upsert them again"
                ));
            }
            Ok(json(&reply))
        }
    }
}

/// `/fn/catalogSync`: what the mini program may read of the catalog (a session required).
#[derive(Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
enum ShopAction {
    /// A page of the products on sale: `limit` (1–100, default 20) at most, from `cursor`
    /// (the previous page's `next`).
    Products {
        #[serde(default)]
        limit: Option<usize>,
        #[serde(default)]
        cursor: Option<String>,
    },
    /// One product on sale.
    Get { product_id: String },
}

/// Products on a shop page when the caller names no `limit`.
const SHOP_PAGE_DEFAULT: usize = 20;
/// The most products on one shop page.
const SHOP_PAGE_MAX: usize = 100;
/// Store reads one shop page may take to fill itself past products not on sale.
const SHOP_PAGE_READS: usize = 3;

/// The mini program's read of the catalog: only products on sale ([`Product::is_sellable`]),
/// in their public shape ([`ShopProduct`]). Only reads: the merchant's actions are refused
/// like any unknown one, and change nothing.
async fn shop(app: &App, req: Request) -> Result<Response, ApiError> {
    authenticate(app, &req)?;
    match parse_json::<ShopAction>(&req)? {
        ShopAction::Products { limit, cursor } => {
            let limit = limit.unwrap_or(SHOP_PAGE_DEFAULT).clamp(1, SHOP_PAGE_MAX);
            let (products, next) = on_sale(app, limit, cursor).await?;
            Ok(json(&ShopPage {
                products: &products,
                next: next.as_deref(),
            }))
        }
        ShopAction::Get { product_id } => {
            let id = ProductId::parse(product_id).map_err(bad("BAD_PRODUCT_ID"))?;
            let found = match repo::get_product(app.store.as_ref(), &id).await {
                // Not shown in the shop's list either: absent to the user, logged for the
                // merchant (whose `get` names it).
                Err(StoreError::Corrupt { id: key, why, .. }) => {
                    tracing::error!(product_id = %key, error = %why, "stored product unreadable; not shown in the shop");
                    None
                }
                other => other?,
            };
            match found {
                Some(p) if p.value.is_sellable() => Ok(json(&ShopOne {
                    product: ShopProduct(&p.value),
                })),
                // Not on sale reads as absent, as `unifiedOrder` would refuse it.
                _ => Err(ApiError::not_found(
                    "NO_SUCH_PRODUCT",
                    format!(
                        "no product {id} on sale: it was taken off sale or never listed; \
                         reload the shop's products (catalogSync products) and show those"
                    ),
                )),
            }
        }
    }
}

/// A page of every product (`limit` from `cursor`), as [`repo::list_products_readable`] reads
/// it. Products whose stored record cannot be read (another version's, or damaged) are left
/// out of every list, each logged with its key: one such record used to fail every shop page
/// (503) and the merchant's whole list. The merchant's `products` names them; `get` of one
/// answers 500 `PRODUCT_UNREADABLE`.
async fn readable_products(
    app: &App,
    limit: usize,
    cursor: Option<String>,
) -> Result<
    (
        Vec<Versioned<Product>>,
        Vec<repo::UnreadableProduct>,
        Option<String>,
    ),
    StoreError,
> {
    let page =
        repo::list_products_readable(app.store.as_ref(), repo::ProductFilter::All, limit, cursor)
            .await?;
    for u in &page.1 {
        tracing::error!(product_id = %u.product_id, error = %u.why, "stored product unreadable; left out of the list");
    }
    Ok(page)
}

/// The merchant's read of product `id` failed: a record that cannot be read as a product is
/// named as such (500 `PRODUCT_UNREADABLE`: retrying does not help, a person must look);
/// anything else is the store's passing failure.
fn unreadable_product(id: &ProductId, e: StoreError) -> ApiError {
    match e {
        StoreError::Corrupt { why, .. } => {
            tracing::error!(product_id = %id, error = %why, "stored product unreadable");
            ApiError::new(
                http::StatusCode::INTERNAL_SERVER_ERROR,
                "PRODUCT_UNREADABLE",
                format!(
                    "the stored record of product {id} cannot be read ({why}): it was written \
                     by another version of this service, or damaged; it is left out of the \
                     shop until it is repaired in the store"
                ),
            )
        }
        other => other.into(),
    }
}

/// Up to `limit` products on sale from `cursor`, in product-id order, and the cursor of what
/// follows (`None`: nothing does).
///
/// Once every product is indexed by [`repo::ProductIndex`] (the re-indexing's mark,
/// [`on_sale_indexed`]), only the products on sale are read ([`repo::list_on_sale`]): a page is
/// full whatever else the catalog holds. Until then — products stored by a version before the
/// on-sale partitions are not in them, and would be hidden — the listing of every product is
/// read as before ([`on_sale_scanned`]). A cursor says which listing it continues, so a page
/// goes on where the one before it was read.
async fn on_sale(
    app: &App,
    limit: usize,
    cursor: Option<String>,
) -> Result<(Vec<Versioned<Product>>, Option<String>), ApiError> {
    let indexed = match cursor.as_deref() {
        Some(c) => repo::is_on_sale_cursor(c),
        None => on_sale_indexed(app).await?,
    };
    if !indexed {
        return on_sale_scanned(app, limit, cursor).await;
    }
    let (mut found, unreadable, next) = repo::list_on_sale(
        app.store.as_ref(),
        limit,
        cursor.as_deref(),
        SHOP_PAGE_READS,
    )
    .await?;
    for u in &unreadable {
        tracing::error!(product_id = %u.product_id, error = %u.why, "stored product unreadable; left out of the list");
    }
    // Indexed in the same write as its value, so always on sale; kept as the rule.
    found.retain(|p| p.value.is_sellable());
    Ok((found, next))
}

/// Whether every product stored is indexed by [`repo::ProductIndex`]: the re-indexing
/// ([`reindex_step`]) went through the whole catalog and marked it so. One store read until
/// this `App` has seen the mark; none after (the mark is never taken back).
async fn on_sale_indexed(app: &App) -> Result<bool, StoreError> {
    if app.on_sale_indexed.load(Ordering::Relaxed) {
        return Ok(true);
    }
    let state = crate::store::kv::get(app.store.as_ref(), REINDEX_KEY).await?;
    let done = state.is_some_and(|s| s.value == REINDEX_DONE);
    if done {
        app.on_sale_indexed.store(true, Ordering::Relaxed);
    }
    Ok(done)
}

/// [`on_sale`] before the re-indexing is done: the store's listing of every product, products
/// not on sale skipped; each further read asks for exactly the places still empty, so every
/// product read is either shown or skipped and the store's own cursor stays exact. At most
/// [`SHOP_PAGE_READS`] reads: past that the page is returned short, with its `next`.
async fn on_sale_scanned(
    app: &App,
    limit: usize,
    cursor: Option<String>,
) -> Result<(Vec<Versioned<Product>>, Option<String>), ApiError> {
    let (mut found, _, mut next) = readable_products(app, limit, cursor).await?;
    found.retain(|p| p.value.is_sellable());
    let mut reads = 1;
    while found.len() < limit && reads < SHOP_PAGE_READS {
        let Some(cursor) = next.take() else { break };
        let (more, _, after) = readable_products(app, limit - found.len(), Some(cursor)).await?;
        found.extend(more.into_iter().filter(|p| p.value.is_sellable()));
        next = after;
        reads += 1;
    }
    Ok((found, next))
}

/// `{products: [P], next}`.
#[derive(Serialize)]
struct ShopPage<'a> {
    #[serde(serialize_with = "shop_products")]
    products: &'a [Versioned<Product>],
    next: Option<&'a str>,
}

/// `{product: P}`.
#[derive(Serialize)]
struct ShopOne<'a> {
    product: ShopProduct<'a>,
}

fn shop_products<S: Serializer>(ps: &&[Versioned<Product>], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(ps.iter().map(|p| ShopProduct(&p.value)))
}

/// A product on sale as the mini program shows it: `{product_id, title, head_img, skus:
/// [{sku_id, price, market_price, stock, attrs: [{key, value}]}]}`, prices in fen. It is the
/// version `unifiedOrder` sells — the product's own fields, never an edit still under audit —
/// so the price shown is the price charged, and `stock` is what can still be ordered. Nothing
/// of the audit, WeChat's ids or the merchant's bookkeeping is shown.
struct ShopProduct<'a>(&'a Product);

impl Serialize for ShopProduct<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let p = self.0;
        let mut m = s.serialize_struct("Product", 4)?;
        m.serialize_field("product_id", p.product_id.as_str())?;
        m.serialize_field("title", &p.title)?;
        m.serialize_field("head_img", &p.head_img)?;
        m.serialize_field("skus", &ShopSkus(&p.skus))?;
        m.end()
    }
}

struct ShopSkus<'a>(&'a [Sku]);

impl Serialize for ShopSkus<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(ShopSku))
    }
}

struct ShopSku<'a>(&'a Sku);

impl Serialize for ShopSku<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let k = self.0;
        let mut m = s.serialize_struct("Sku", 5)?;
        m.serialize_field("sku_id", k.sku_id.as_str())?;
        m.serialize_field("price", &k.price.get())?;
        m.serialize_field("market_price", &k.market_price.get())?;
        m.serialize_field("stock", &k.stock)?;
        m.serialize_field("attrs", &ShopAttrs(&k.attrs))?;
        m.end()
    }
}

struct ShopAttrs<'a>(&'a [(String, String)]);

impl Serialize for ShopAttrs<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Attr<'a> {
            key: &'a str,
            value: &'a str,
        }
        s.collect_seq(self.0.iter().map(|(key, value)| Attr { key, value }))
    }
}

/// What an upsert does at WeChat, from the stored product and the merchant's version.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    /// Nothing: WeChat's draft already is this version (under audit or approved).
    Nothing,
    /// Stock only, of SKUs WeChat never approved: ours alone.
    Local,
    /// Prices or stock of approved SKUs (listed): `spu/update_without_audit`, no audit, on
    /// sale throughout.
    WithoutAudit(Vec<SkuId>),
    /// Something WeChat reviews changed: `spu/add|update`, a new audit.
    Submit,
}

fn plan(cur: Option<&Product>, next: &Content) -> Plan {
    let Some(cur) = cur else {
        return Plan::Submit;
    };
    let online = cur.audit == AuditStatus::Approved && cur.wx_product_id.is_some();
    let draft_audit = cur.draft_audit();
    if cur.audit == AuditStatus::Approved && cur.wx_product_id.is_none() && cur.edit.is_none() {
        // Approved here but unknown to WeChat: stored while the component was off. It goes
        // to WeChat now (as an edit: it sells on here meanwhile), whatever changed — taken for
        // "nothing changed", WeChat would never have it, to list or to take its orders.
        return Plan::Submit;
    }
    match cur.draft().change_to(next) {
        ContentChange::Reviewed => Plan::Submit,
        // A version that never reached WeChat goes there now, whatever changed; so does one
        // not known to have reached it (its answer lost, WeChat unreadable then).
        _ if draft_audit == AuditStatus::Draft => Plan::Submit,
        _ if draft_audit == AuditStatus::Auditing && cur.draft_submit_error().is_some() => {
            Plan::Submit
        }
        ContentChange::Prices(skus) if online && skus.iter().all(|s| cur.sku(s).is_some()) => {
            Plan::WithoutAudit(skus)
        }
        ContentChange::Prices(_) => Plan::Submit,
        ContentChange::Stock(skus) if online => {
            let approved: Vec<SkuId> = skus.into_iter().filter(|s| cur.sku(s).is_some()).collect();
            if approved.is_empty() {
                Plan::Local
            } else {
                Plan::WithoutAudit(approved)
            }
        }
        ContentChange::Stock(_) => Plan::Local,
        // The same version again after a rejection: submit it again (a qualification it
        // lacked may have been approved since).
        ContentChange::None if draft_audit == AuditStatus::Rejected => Plan::Submit,
        ContentChange::None => Plan::Nothing,
    }
}

/// Sets the stock of `next`'s SKUs, and the prices of those in `repriced`, wherever the
/// product has them: on sale and in a pending edit.
fn apply_skus(p: &mut Product, next: &Content, repriced: &[SkuId]) {
    let edit_skus = p.edit.as_mut().map(|e| &mut e.content.skus);
    let targets = p.skus.iter_mut().chain(edit_skus.into_iter().flatten());
    for s in targets {
        if let Some(n) = next.skus.iter().find(|n| n.sku_id == s.sku_id) {
            s.stock = n.stock;
            if repriced.contains(&s.sku_id) {
                s.price = n.price;
                s.market_price = n.market_price;
            }
        }
    }
}

/// Keeps the SKU ids WeChat assigned.
fn record_wx_ids(p: &mut Product, result: &SpuWriteResult) {
    p.wx_product_id = Some(result.product_id);
    let edit_skus = p.edit.as_mut().map(|e| &mut e.content.skus);
    for s in p.skus.iter_mut().chain(edit_skus.into_iter().flatten()) {
        if let Some(ids) = result
            .skus
            .iter()
            .find(|k| k.out_sku_id == s.sku_id.as_str())
        {
            s.wx_sku_id = Some(ids.sku_id);
        }
    }
}

async fn upsert(app: &App, input: ProductInput) -> Result<Product, ApiError> {
    let (id, next) = content_from_input(input, component_on(app))?;
    let existing = repo::get_product(app.store.as_ref(), &id).await?;
    let now = app.clock.now_ms();
    let cur = existing.as_ref().map(|p| &p.value);
    let mut product = match cur {
        Some(p) => p.clone(),
        None => Product::new(id.clone(), next.clone(), now),
    };
    if !component_on(app) {
        // Ours alone: sellable as it is.
        product.set_content(next);
        product.audit = AuditStatus::Approved;
        product.reject_reason = None;
        product.edit = None;
    } else {
        match plan(cur, &next) {
            Plan::Nothing => return Ok(product),
            Plan::Local => apply_skus(&mut product, &next, &[]),
            Plan::WithoutAudit(skus) => {
                // Only what the merchant reprices now: a price that differs only from the
                // version on sale is a pending edit's, not on sale until its verdict.
                let repriced = product.draft().repriced_in(&next);
                match without_audit(app, &id, &next, &skus, &repriced).await {
                    Ok(()) => {
                        // WeChat sells at these prices now: ours follows, over whatever changed
                        // here meanwhile (an order taking stock). A write conditional on the
                        // product as read before the call answered 409 after WeChat had
                        // changed: the shop showed and charged the old price, which WeChat's
                        // `order/add` refused, until the merchant repeated the upsert.
                        return modify(app, &id, |p| {
                            apply_skus(p, &next, &repriced);
                            Ok(())
                        })
                        .await;
                    }
                    Err(e) if e.errcode() == Some(PRODUCT_NOT_FOUND) => {
                        // WeChat lost the product (deleted in the console, a fresh sandbox): its
                        // approval went with it. Upload this version as a new product.
                        tracing::warn!(product_id = %id, "WeChat lost the approved product; uploading it again");
                        product.forget_wechat();
                        return submit(app, existing.as_ref(), product, next, now).await;
                    }
                    Err(e) => return Err(wx_error(e)),
                }
            }
            Plan::Submit => return submit(app, existing.as_ref(), product, next, now).await,
        }
    }
    if cur == Some(&product) {
        return Ok(product);
    }
    product.updated_at_ms = now;
    write(app, existing.as_ref(), &product).await?;
    Ok(product)
}

/// Writes `product` over `prev` (conditional on its version) or creates it.
async fn write(
    app: &App,
    prev: Option<&Versioned<Product>>,
    product: &Product,
) -> Result<(), ApiError> {
    let mut batch = Batch::new();
    match prev {
        None => {
            batch.create_product(product);
        }
        Some(prev) => {
            batch.update_product(prev, product);
        }
    }
    batch.commit(app.store.as_ref()).await.map_err(|e| {
        if e.is_conflict() {
            ApiError::conflict("RETRY", "the product changed meanwhile; retry")
        } else {
            e.into()
        }
    })
}

/// Submits `next` for audit. The submission is stored *before* WeChat hears of it: WeChat
/// can push its verdict before it answers (a quick audit, a slow answer), and that verdict
/// must find the submission it decides, not the version before it.
async fn submit(
    app: &App,
    prev: Option<&Versioned<Product>>,
    mut product: Product,
    next: Content,
    now: i64,
) -> Result<Product, ApiError> {
    let id = product.product_id.clone();
    let known_wx_id = product.wx_product_id;
    let known = known_wx_id.is_some();
    let was_waiting = product.waiting_for;
    product.submit_draft(next.clone());
    product.updated_at_ms = now;
    write(app, prev, &product).await?;
    let outcome = match upload(app, &id, known, &spu(&id, &next)).await {
        Err(e) if e.answer_lost() => read_back(app, &id, known_wx_id, &next, e).await,
        Ok(result) => Submitted::Taken {
            result,
            decided: false,
        },
        Err(e) => Submitted::Failed(e),
    };
    let ours = |p: &Product| {
        p.draft_audit() == AuditStatus::Auditing
            && p.draft().change_to(&next) == ContentChange::None
    };
    let stored = match &outcome {
        Submitted::Taken { result, .. } => {
            modify(app, &id, |p| {
                if result.readded && ours(p) {
                    // WeChat lost the product and its approval: this version is a first one.
                    p.forget_wechat();
                    p.submit_draft(next.clone());
                }
                record_wx_ids(p, result);
                Ok(())
            })
            .await?
        }
        Submitted::Failed(e) => {
            // Nothing of it is under audit at WeChat (an audit withdrawn to make room for it
            // included): say so, unless a later upsert has replaced this submission meanwhile.
            // The next upsert submits it.
            // Refused for want of a qualification: the product waits for it (and, for its
            // category's, is submitted again once WeChat approves it). A failure that says
            // nothing about qualifications (WeChat unreachable) leaves what it waited for.
            let why = e.to_string();
            let wanting = refused_for_want_of(e, &next);
            if wanting.is_some() {
                // The merchant's to act on (the product says so), not the operator's.
                tracing::info!(product_id = %id, error = %e, "submission refused for want of a qualification; the draft stays DRAFT, waiting for it");
            } else {
                tracing::warn!(product_id = %id, error = %e, "submission failed; the draft stays DRAFT");
            }
            let waiting = match wanting {
                Some(w) => Some(w),
                None if e.is_retryable() => was_waiting,
                None => None,
            };
            let stored = modify(app, &id, |p| {
                if ours(p) {
                    p.draft_not_submitted(why.clone());
                    p.waiting_for = waiting;
                }
                Ok(())
            })
            .await?;
            if let (Some(WaitingFor::Category(c)), Some(WaitingFor::Category(now_waiting))) =
                (wanting, stored.waiting_for)
            {
                // WeChat may have approved the category since it refused the product, its
                // verdict finding nothing waiting (the module doc): look.
                if c == now_waiting && stored.draft_audit() == AuditStatus::Draft {
                    if let Err(e) = approved_meanwhile(app, &id, c, now).await {
                        tracing::warn!(product_id = %id, error = %e, "could not look for an approval of its category since the refusal; the schedule submits it again in a day");
                    }
                }
            }
            stored
        }
        Submitted::Unconfirmed { why } => {
            // Kept under audit, so WeChat's verdict is applied once WeChat has it (its push,
            // or the audit sweep's read past the grace period); an upsert of the same
            // version sends it again meanwhile.
            tracing::warn!(product_id = %id, why = %why, "submission's answer lost and WeChat unreadable; kept AUDITING, unconfirmed");
            modify(app, &id, |p| {
                if ours(p) {
                    p.draft_unconfirmed(why.clone());
                }
                Ok(())
            })
            .await?
        }
    };
    match outcome {
        Submitted::Taken { decided: true, .. } => {
            // Decided before we heard back: applied now, as its push would (which may have
            // come and found nothing to apply yet); failing that, the push or the sweep.
            use super::audit_callback::apply_wechat_verdict;
            if let Err(e) = apply_wechat_verdict(app, &id, "", None).await {
                tracing::warn!(product_id = %id, error = %e, "verdict read back with the submission not applied; its push or the audit sweep applies it");
                return Ok(stored);
            }
            Ok(repo::get_product(app.store.as_ref(), &id)
                .await?
                .map_or(stored, |p| p.value))
        }
        Submitted::Taken { .. } => Ok(stored),
        Submitted::Failed(e) => Err(wx_error(e)),
        Submitted::Unconfirmed { why } => Err(ApiError::unavailable(
            "SUBMISSION_UNCONFIRMED",
            format!(
                "{id} was sent to WeChat for audit but its answer was lost, and WeChat could \
                 not be asked whether it took it ({why}): it reads AUDITING, and WeChat's \
                 verdict is applied once WeChat has it (the schedule asks WeChat after 10 \
                 minutes); upsert the same version again to send it again"
            ),
        )),
    }
}

/// How a submission (`spu/add|update`) went at WeChat.
enum Submitted {
    /// WeChat has it: its answer, or what `spu/get` read back when the answer was lost
    /// (`decided`: WeChat's verdict on it was in already).
    Taken {
        result: SpuWriteResult,
        decided: bool,
    },
    /// WeChat refused it (an errcode), the call was never sent, or WeChat, read back after the
    /// answer was lost, does not have it: nothing of it is under audit there.
    Failed(WxError),
    /// The answer was lost and WeChat could not be asked: it may or may not be under audit.
    Unconfirmed { why: String },
}

/// The answer to the submission of `next` was `lost`: WeChat's draft is read (`spu/get`,
/// `need_edit_spu=1`) to learn whether WeChat took it — the same check the audit push makes
/// ([`super::audit_callback::audited_is_ours`]). It used to be marked not submitted on any
/// error: when WeChat had taken it, its approval (push and sweep) found a DRAFT and was
/// ignored, and the product never went on sale (or the edit never took effect).
async fn read_back(
    app: &App,
    id: &ProductId,
    known: Option<u64>,
    next: &Content,
    lost: WxError,
) -> Submitted {
    let draft = match app.wx.spu_get(&ProductKey::Out(id.to_string()), true).await {
        Ok(d) => d,
        Err(e) if e.errcode() == Some(PRODUCT_NOT_FOUND) => {
            tracing::warn!(product_id = %id, error = %lost, "submission's answer lost; WeChat does not have the product");
            return Submitted::Failed(lost);
        }
        Err(e) => {
            return Submitted::Unconfirmed {
                why: format!("{lost}; then {e}"),
            }
        }
    };
    // 1: being edited, not submitted (WeChat's draft is not under audit).
    let submitted = matches!(draft.edit_status, 2..=4);
    if !submitted || !super::audit_callback::audited_is_ours(&draft, next) {
        tracing::warn!(product_id = %id, edit_status = draft.edit_status, error = %lost, "submission's answer lost; WeChat's draft is not it");
        return Submitted::Failed(lost);
    }
    tracing::info!(product_id = %id, edit_status = draft.edit_status, "submission's answer lost; WeChat has it (read back)");
    let result = SpuWriteResult {
        product_id: draft.product_id,
        out_product_id: draft.out_product_id.clone(),
        skus: draft
            .skus
            .iter()
            .filter_map(|k| {
                Some(crate::shop::catalog::SkuIds {
                    sku_id: k.sku_id?,
                    out_sku_id: k.out_sku_id.clone(),
                })
            })
            .collect(),
        // Uploaded as known and now under another WeChat id: WeChat had lost it and it was
        // added again (`upload`), its old approval gone.
        readded: known.is_some_and(|k| draft.product_id != 0 && draft.product_id != k),
        ..Default::default()
    };
    Submitted::Taken {
        result,
        decided: matches!(draft.edit_status, 3 | 4),
    }
}

/// `spu/update_without_audit`: the stock of approved SKUs, and the prices of those
/// `repriced`, effective at once. A SKU's price is sent only when the merchant changes it:
/// sent, it goes on sale at WeChat, and the price of a pending edit is not on sale yet.
async fn without_audit(
    app: &App,
    id: &ProductId,
    next: &Content,
    skus: &[SkuId],
    repriced: &[SkuId],
) -> Result<(), WxError> {
    let req = SpuUpdateWithoutAudit {
        key: ProductKey::Out(id.to_string()),
        path: None,
        skus: next
            .skus
            .iter()
            .filter(|s| skus.contains(&s.sku_id))
            .map(|s| SkuWithoutAudit {
                out_sku_id: s.sku_id.to_string(),
                sale_price: repriced.contains(&s.sku_id).then_some(s.price),
                market_price: repriced.contains(&s.sku_id).then_some(s.market_price),
                stock_num: Some(i64::from(s.stock)),
                ..Default::default()
            })
            .collect(),
    };
    app.wx.spu_update_without_audit(&req).await.map(drop)
}

/// Uploads `product` for audit: `spu/add` for a product WeChat does not know yet, `spu/update`
/// otherwise. What we store can be behind WeChat, so each mismatch is repaired here rather
/// than refused forever:
/// - WeChat lost a product we uploaded (deleted in the console, a fresh sandbox): add it again;
/// - WeChat already has a product we never stored (an earlier upsert whose store write
///   failed after `spu/add` succeeded, or a second environment on the same account): update it;
/// - the product is still under audit (an edit before the verdict): withdraw that audit and
///   submit this version, the one the merchant means.
async fn upload(
    app: &App,
    id: &ProductId,
    known: bool,
    spu: &Spu,
) -> Result<SpuWriteResult, WxError> {
    let first = if known {
        app.wx.spu_update(spu).await
    } else {
        app.wx.spu_add(spu).await
    };
    match first {
        Err(e) if e.errcode() == Some(PRODUCT_NOT_FOUND) && known => {
            tracing::warn!(product_id = %id, "WeChat lost the product; uploading it again");
            app.wx.spu_add(spu).await.map(|mut r| {
                r.readded = true;
                r
            })
        }
        Err(e) if e.errcode() == Some(PRODUCT_EXISTS) => {
            tracing::info!(product_id = %id, "WeChat already has the product; updating it");
            resubmit(app, id, spu).await
        }
        Err(e) if e.errcode() == Some(PRODUCT_UNDER_AUDIT) => {
            withdraw_then_update(app, id, spu).await
        }
        other => other,
    }
}

/// `spu/update`, withdrawing a pending audit first if WeChat asks for that.
async fn resubmit(app: &App, id: &ProductId, spu: &Spu) -> Result<SpuWriteResult, WxError> {
    match app.wx.spu_update(spu).await {
        Err(e) if e.errcode() == Some(PRODUCT_UNDER_AUDIT) => {
            withdraw_then_update(app, id, spu).await
        }
        other => other,
    }
}

async fn withdraw_then_update(
    app: &App,
    id: &ProductId,
    spu: &Spu,
) -> Result<SpuWriteResult, WxError> {
    tracing::info!(product_id = %id, "product under audit; withdrawing that audit to submit this version");
    app.wx
        .spu_del_audit(&ProductKey::Out(id.to_string()))
        .await?;
    app.wx.spu_update(spu).await
}

/// What `set_stock` did: the product as stored, and `reuploaded` when WeChat had lost it and
/// it went to WeChat's audit again.
struct StockSet {
    product: Product,
    reuploaded: bool,
}

/// Sets a SKU's stock. WeChat shows an approved SKU's stock (`stock_num`; a Channels live
/// room refuses to list one at 0), so it hears of it first (`spu/update_without_audit`, no
/// audit); the stock of a SKU it never approved travels with that SKU's next submission.
///
/// WeChat no longer having the product (9401002: deleted in the console, a fresh account) is
/// handled as `upsert` handles it: its approval went with it, so it is off sale here
/// ([`Product::forget_wechat`]) and its version, with this stock, is uploaded again for audit
/// (listed again once approved). That answered a bare 502 and stored nothing, while the shop
/// went on selling a product WeChat no longer had, whose orders WeChat's `order/add` refuses.
async fn set_stock(
    app: &App,
    id: &ProductId,
    sku: &SkuId,
    stock: u32,
) -> Result<StockSet, ApiError> {
    let stored = repo::get_product(app.store.as_ref(), id)
        .await?
        .ok_or_else(|| no_such_product(id))?;
    let p = &stored.value;
    let online = p.audit == AuditStatus::Approved && p.wx_product_id.is_some();
    if component_on(app) && online && p.sku(sku).is_some() {
        let req = SpuUpdateWithoutAudit {
            key: ProductKey::Out(id.to_string()),
            path: None,
            skus: vec![SkuWithoutAudit {
                out_sku_id: sku.to_string(),
                stock_num: Some(i64::from(stock)),
                ..Default::default()
            }],
        };
        match app.wx.spu_update_without_audit(&req).await {
            Ok(_) => {}
            Err(e) if e.errcode() == Some(PRODUCT_NOT_FOUND) => {
                tracing::warn!(product_id = %id, "WeChat lost the approved product; uploading it again with the new stock");
                let mut product = p.clone();
                product.forget_wechat();
                let mut next = product.content();
                let mut found = false;
                for s in next.skus.iter_mut().filter(|s| &s.sku_id == sku) {
                    s.stock = stock;
                    found = true;
                }
                if !found {
                    // Only in the approved version, which went with WeChat's copy: the
                    // pending edit that is uploaded now has no such SKU.
                    return Err(ApiError::not_found(
                        "NO_SUCH_SKU",
                        format!(
                            "no sku {sku} in the version of {id} to upload again: WeChat no \
                             longer has {id}; upsert it with its SKUs"
                        ),
                    ));
                }
                let now = app.clock.now_ms();
                let product = submit(app, Some(&stored), product, next, now).await?;
                return Ok(StockSet {
                    product,
                    reuploaded: true,
                });
            }
            Err(e) => return Err(wx_error(e)),
        }
    }
    let product = modify(app, id, |p| {
        let edit_skus = p.edit.as_mut().map(|e| &mut e.content.skus);
        let mut found = false;
        for s in p.skus.iter_mut().chain(edit_skus.into_iter().flatten()) {
            if &s.sku_id == sku {
                s.stock = stock;
                found = true;
            }
        }
        if found {
            Ok(())
        } else {
            Err(ApiError::not_found("NO_SUCH_SKU", format!("no sku {sku}")))
        }
    })
    .await?;
    Ok(StockSet {
        product,
        reuploaded: false,
    })
}

/// Listing asks WeChat first: a product goes on sale here only once WeChat lists it.
/// Delisting stops sales here first, whatever WeChat answers: every order is placed through
/// `unifiedOrder`, so a product delisted here cannot be bought even while WeChat still shows
/// it; WeChat's refusal or silence is then reported, and the same call again delists it there.
async fn set_listing(app: &App, id: &ProductId, listing: Listing) -> Result<Product, ApiError> {
    let key = ProductKey::Out(id.to_string());
    if listing == Listing::Delisted {
        let product = modify(app, id, |p| {
            p.listing = Listing::Delisted;
            // The merchant's own now: no platform restore lists it again.
            p.delisted_by_platform = false;
            Ok(())
        })
        .await?;
        if component_on(app) {
            if let Err(e) = app.wx.spu_delisting(&key).await {
                let e = wx_error(e);
                tracing::warn!(product_id = %id, error = %e, "delisted here; WeChat's delisting failed");
                return Err(ApiError::new(
                    e.status,
                    e.code,
                    format!(
                        "{id} is no longer sold here, but WeChat still lists it ({}); delist again to retry at WeChat",
                        e.message
                    ),
                ));
            }
        }
        return Ok(product);
    }
    if component_on(app) {
        // Ours first: an id we do not have is the caller's mistake (404), not WeChat's refusal.
        let product = repo::get_product(app.store.as_ref(), id)
            .await?
            .ok_or_else(|| no_such_product(id))?
            .value;
        match app.wx.spu_listing(&key).await {
            Ok(()) => {}
            Err(e) if e.errcode() == Some(PRODUCT_NEVER_APPROVED) => {
                return Err(not_approved_yet(&product));
            }
            Err(e) if e.errcode() == Some(PRODUCT_NOT_FOUND) => {
                return Err(ApiError::conflict(
                    "NOT_APPROVED",
                    format!(
                        "{id} cannot be listed: WeChat does not have it (stored while the \
                         trading component was off, or deleted at WeChat); upsert it again, \
                         which uploads it for audit, and list it once approved"
                    ),
                ));
            }
            Err(e) => return Err(wx_error(e)),
        }
    }
    modify(app, id, |p| {
        p.listing = listing;
        p.delisted_by_platform = false;
        Ok(())
    })
    .await
}

async fn modify(
    app: &App,
    id: &ProductId,
    f: impl Fn(&mut Product) -> Result<(), ApiError>,
) -> Result<Product, ApiError> {
    super::common::update_product(app, id, f)
        .await?
        .ok_or_else(|| no_such_product(id))
}

/// How long a submission waits for its audit push before the schedule asks WeChat itself;
/// also how long one WeChat had no verdict for waits to be asked again.
const AUDIT_PUSH_GRACE_MS: i64 = 10 * 60_000;
/// At most this many products are asked about per run (one `spu/get` each).
const AUDIT_SWEEP_MAX: usize = 50;
/// Products of the full listing re-indexed per run until all are (see
/// [`repo::reindex_products`]).
const REINDEX_PAGE: usize = 100;
/// Where the re-indexing of products stored by an earlier version stands: a listing cursor,
/// [`REINDEX_DONE`], or [`REINDEX_DONE_BEFORE_ON_SALE`]. (Its name is from the first
/// re-indexing, which it goes on with.)
const REINDEX_KEY: &str = "migration/product-audit-index";
/// Every product is indexed by [`repo::ProductIndex`]: the shop reads the on-sale partitions.
const REINDEX_DONE: &str = "done:on-sale";
/// The mark of the re-indexing before the on-sale partitions (the audit sweep's only): the
/// catalog is re-indexed again, from its start.
const REINDEX_DONE_BEFORE_ON_SALE: &str = "done";

#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct AuditSweepReport {
    /// Products read from the index of those under audit.
    pub checked: usize,
    pub asked: usize,
    pub decided: usize,
    /// Submissions WeChat reads as not under audit (withdrawn there): drafts again here.
    /// Shown only when there were some.
    #[serde(skip_serializing_if = "is_zero")]
    pub withdrawn: usize,
    /// Products stored before the index followed their drafts, indexed again.
    pub reindexed: usize,
    /// Products WeChat lists as delisted by its platform (status 13) that were on sale here,
    /// their push lost: delisted here ([`super::platform_delisting`]). Shown only when there
    /// were some.
    #[serde(skip_serializing_if = "is_zero")]
    pub platform_delisted: usize,
    /// Products held delisted by the platform that WeChat lists again (5), their push lost:
    /// on sale again. Shown only when there were some.
    #[serde(skip_serializing_if = "is_zero")]
    pub platform_restored: usize,
    /// Records under audit that cannot be read as products (written by another version, or
    /// damaged), skipped and logged. Shown only when there were some.
    #[serde(skip_serializing_if = "is_zero")]
    pub unreadable: usize,
    /// Brand and category qualification verdicts whose push never came, read with
    /// `shop/audit/result` and applied. Shown only when there were some.
    #[serde(skip_serializing_if = "is_zero")]
    pub qualification_verdicts: usize,
    /// Products waiting for their category's qualification for a day, submitted again
    /// ([`sweep_waiting`]). Shown only when there were some.
    #[serde(skip_serializing_if = "is_zero")]
    pub waiting_resubmitted: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Verdicts whose push never came. WeChat does not promise to deliver message pushes
/// (WECHAT_SHOP.md: poll `spu/get`), and one lost `open_product_spu_audit` left a product under
/// audit, unsellable, for good. On each schedule run, submissions under audit for longer than
/// [`AUDIT_PUSH_GRACE_MS`] have WeChat's draft read and its verdict applied, exactly as the
/// push would have.
///
/// Only products under audit are read: the store indexes a product as AUDITING while its own
/// version or an edit of it is under audit (an edit keeps the approved product's own status;
/// the sweep used to read the whole catalog every run to find those). Of them, those heard of
/// least recently are asked first, at most [`AUDIT_SWEEP_MAX`] a run, and one WeChat has no
/// verdict for (or cannot find) waits another grace period (`audit_asked_at_ms`): the sweep
/// used to ask about the first 50 in listing order every run, so 50 drafts WeChat never
/// decides kept every other from being asked. No product is asked about once `deadline` has
/// passed: `false` with the report then (the next run goes on). First, platform delistings
/// and restores whose push never came are read back ([`super::platform_delisting::sweep`]).
pub async fn sweep_audits(
    app: &App,
    deadline: crate::time::Deadline,
) -> Result<(AuditSweepReport, bool), ApiError> {
    // Also with the component off: the shop reads the on-sale partitions once it is done.
    let mut report = AuditSweepReport {
        reindexed: reindex_step(app).await?,
        ..AuditSweepReport::default()
    };
    if !component_on(app) {
        return Ok((report, true));
    }
    // Platform delistings and restores whose push never came; a failure to read WeChat's list
    // is logged, and leaves the audits to sweep.
    match super::platform_delisting::sweep(app, deadline).await {
        Ok((platform, finished)) => {
            report.platform_delisted = platform.delisted;
            report.platform_restored = platform.restored;
            if !finished {
                return Ok((report, false));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "platform delisting sweep failed; the next run tries again");
        }
    }
    let now = app.clock.now_ms();
    let due_before = now - AUDIT_PUSH_GRACE_MS;
    let mut due = Vec::new();
    for index in repo::ProductIndex::UNDER_AUDIT {
        let mut cursor = None;
        loop {
            if deadline.passed() {
                return Ok((report, false));
            }
            // A record that cannot be read as a product is skipped, named in the log: it used
            // to fail the sweep at its page every run, no verdict found for any product.
            let (page, unreadable, next) = repo::list_products_readable(
                app.store.as_ref(),
                repo::ProductFilter::Index(index),
                100,
                cursor,
            )
            .await?;
            for u in unreadable {
                tracing::error!(product_id = %u.product_id, error = %u.why, "audit sweep: stored product unreadable; skipped");
                report.unreadable += 1;
            }
            for p in page {
                report.checked += 1;
                let p = p.value;
                // The index can lag behind a verdict just applied.
                if p.draft_audit() == AuditStatus::Auditing && p.audit_last_seen_ms() <= due_before
                {
                    due.push((p.audit_last_seen_ms(), p.product_id));
                }
            }
            match next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
    }
    due.sort();
    for (_, id) in due.into_iter().take(AUDIT_SWEEP_MAX) {
        if deadline.passed() {
            return Ok((report, false));
        }
        report.asked += 1;
        use super::audit_callback::{apply_wechat_verdict, DraftRead};
        match apply_wechat_verdict(app, &id, "", Some(due_before)).await {
            Ok(DraftRead::Decided) => {
                report.decided += 1;
                tracing::info!(product_id = %id, "audit verdict found by the sweep (its push never came)");
                continue;
            }
            Ok(DraftRead::Withdrawn) => {
                report.withdrawn += 1;
                continue;
            }
            Ok(DraftRead::Undecided) => {}
            Err(e) => {
                tracing::warn!(product_id = %id, error = %e, "audit sweep: WeChat not asked successfully; asked again after the grace period");
            }
        }
        note_audit_asked(app, &id, now).await;
    }
    if !deadline.passed() {
        match sweep_qualification_audits(app, deadline, due_before).await {
            Ok(n) => report.qualification_verdicts = n,
            Err(e) => {
                tracing::warn!(error = %e, "qualification audit sweep failed; the next run tries again");
            }
        }
    }
    if !deadline.passed() {
        match sweep_waiting(app, deadline).await {
            Ok(n) => report.waiting_resubmitted = n,
            Err(e) => {
                tracing::warn!(error = %e, "waiting products sweep failed; the next run tries again");
            }
        }
    }
    Ok((report, true))
}

/// How long a product waits for its category's qualification (since its last refusal) before
/// the schedule submits it again by itself.
pub const WAITING_RESUBMIT_MS: i64 = 86_400_000;
/// At most this many waiting products are submitted again per schedule run.
pub const WAITING_SWEEP_MAX: usize = 10;
/// At most this many products not on sale are read per run to find them: a turn through
/// them all takes a run per this many (at the 5-minute schedule, 28,800 products a day).
pub const WAITING_SWEEP_READS: usize = 100;
/// The turn's name: its place is kept as kv `rotation/waiting/unlisted`.
const WAITING_TURN: &str = "waiting/unlisted";

/// Products waiting for a category's qualification whose approval never reached us: applied
/// for in WeChat's console (no audit of ours for the schedule to ask about) and its push lost
/// or never sent, or a verdict's scan that missed the product (the module doc). The products
/// not on sale (`DRAFT`, `APPROVED`, `REJECTED` indexes) are read in turn
/// ([`ListingTurn`](crate::store::rotation::ListingTurn), kv `rotation/waiting/unlisted`: each
/// run goes on from where the last one stopped, and round to the start after the last
/// index), at most [`WAITING_SWEEP_READS`] a run. Those waiting for a category, unchanged for
/// [`WAITING_RESUBMIT_MS`], are submitted again (a [`Task::SubmitWaiting`] each, the least
/// recently changed of a page first, at most [`WAITING_SWEEP_MAX`] a run, each at most once a
/// day: kv `waiting-resubmit/{product}`); a page with more due than that is read again by
/// the next run, so none is passed by. WeChat's answer decides: refused again (1000005) it
/// goes on waiting, its refusal a change that puts its next turn a day later. How many were
/// queued.
///
/// It used to read the first 500 products not on sale on every run: in a larger catalog a
/// product waiting after them was never submitted again (it stayed DRAFT for good), and every
/// run read 500 products for nothing.
async fn sweep_waiting(app: &App, deadline: crate::time::Deadline) -> Result<usize, ApiError> {
    let store = app.store.as_ref();
    let mut turn = repo::product_turn(
        store,
        WAITING_TURN,
        &[
            repo::ProductIndex::Draft,
            repo::ProductIndex::Approved,
            repo::ProductIndex::Rejected,
        ],
    )
    .await?;
    let swept = sweep_waiting_turn(app, deadline, &mut turn).await;
    turn.save(store, app.clock.now_secs()).await;
    swept
}

/// [`sweep_waiting`]'s run through `turn`, which it leaves where the next run should start.
async fn sweep_waiting_turn(
    app: &App,
    deadline: crate::time::Deadline,
    turn: &mut crate::store::rotation::ListingTurn,
) -> Result<usize, ApiError> {
    use crate::outbox::{OutboxEntry, Task};
    let store = app.store.as_ref();
    let now = app.clock.now_ms();
    let due_before = now - WAITING_RESUBMIT_MS;
    let (mut read, mut queued) = (0, 0);
    while read < WAITING_SWEEP_READS && queued < WAITING_SWEEP_MAX && !deadline.passed() {
        let Some(records) = turn.page(store, WAITING_SWEEP_READS - read).await? else {
            break; // round the catalog: the next run starts over
        };
        read += records.len();
        let mut due = Vec::new();
        for rec in &records {
            let Ok(p) = repo::versioned::<Product>(rec) else {
                continue; // unreadable: the catalog's listing names it to the merchant
            };
            let p = p.value;
            if matches!(p.waiting_for, Some(WaitingFor::Category(_)))
                && p.draft_audit() == AuditStatus::Draft
                && p.updated_at_ms <= due_before
            {
                due.push((p.updated_at_ms, p.product_id));
            }
        }
        due.sort();
        let mut handled = true;
        for (_, id) in due {
            if queued >= WAITING_SWEEP_MAX || deadline.passed() {
                handled = false;
                break;
            }
            let key = format!("waiting-resubmit/{id}");
            let until = app.clock.now_secs() + WAITING_RESUBMIT_MS / 1000;
            if !crate::store::kv::put_if(store, &key, "queued", until, None).await? {
                continue; // queued within the day
            }
            let task = Task::SubmitWaiting {
                product_id: id.clone(),
                approval: None,
            };
            crate::outbox::enqueue(store, &OutboxEntry::new(task, now)).await?;
            tracing::info!(product_id = %id, "waiting for its category's qualification for a day: submitted again (an approval may not have reached us)");
            queued += 1;
        }
        if !handled {
            break; // the rest of this page's due products: the next run reads it again
        }
        turn.advance();
    }
    Ok(queued)
}

/// At most this many qualification audits are asked about per schedule run.
const QUALIFICATION_SWEEP_MAX: usize = 10;

/// Qualification verdicts whose push never came: the audits recorded through `wechat` (the
/// newest 100) that have no verdict yet and were applied for more than the push grace period
/// ago are asked about (`shop/audit/result`, WECHAT_SHOP.md §2.5), each at most once a grace
/// period, [`QUALIFICATION_SWEEP_MAX`] a run; a verdict found is applied as its push would
/// have been ([`on_qualification_verdict`]). How many were found.
async fn sweep_qualification_audits(
    app: &App,
    deadline: crate::time::Deadline,
    due_before: i64,
) -> Result<usize, ApiError> {
    let store = app.store.as_ref();
    let (audits, _) = repo::events_of(store, QUALIFICATION_AUDIT_EVENTS, 100, None).await?;
    let (mut asked, mut decided) = (0, 0);
    for e in audits {
        if asked >= QUALIFICATION_SWEEP_MAX || deadline.passed() {
            break;
        }
        if e.received_at_ms > due_before {
            continue;
        }
        let Ok(audit) = serde_json::from_str::<QualificationAuditRecord>(&e.body) else {
            continue;
        };
        let id = &audit.audit_id;
        let mut known = false;
        for status in [1, 9] {
            let key = format!("{id}/{status}");
            known |= repo::get_event(store, QUALIFICATION_VERDICT_EVENTS, &key)
                .await?
                .is_some();
        }
        if known {
            continue;
        }
        let until = app.clock.now_secs() + AUDIT_PUSH_GRACE_MS / 1000;
        let key = format!("qualification-audit-asked/{id}");
        if !crate::store::kv::put_if(store, &key, "asked", until, None).await? {
            continue; // asked within the grace period
        }
        asked += 1;
        let answer: serde_json::Value = match app
            .wx
            .post_json("shop/audit/result", &serde_json::json!({ "audit_id": id }))
            .await
        {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(audit_id = %id, error = %e, "qualification audit sweep: shop/audit/result failed; asked again after the grace period");
                continue;
            }
        };
        let data = &answer["data"];
        let Some(status) = data["status"]
            .as_i64()
            .or_else(|| data["status"].as_str().and_then(|s| s.trim().parse().ok()))
        else {
            continue;
        };
        if status != 1 && status != 9 {
            continue;
        }
        let verdict = crate::push::QualificationAudit {
            audit_id: id.clone(),
            status,
            audit_type: None,
            reject_reason: data["reject_reason"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            brand_id: lenient_u64(&data["brand_id"]),
        };
        on_qualification_verdict(app, audit.kind, &verdict).await?;
        tracing::info!(audit_id = %id, status, "qualification audit verdict found by the sweep (its push never came)");
        decided += 1;
    }
    Ok(decided)
}

/// Keeps that WeChat was asked about `id`'s audit at `now` without a verdict, so it waits its
/// turn again. Lost to a concurrent change (which is news of the product anyway) or to a
/// failing store, it is logged only: the product is then asked again next run.
async fn note_audit_asked(app: &App, id: &ProductId, now: i64) {
    let noted = async {
        let Some(p) = repo::get_product(app.store.as_ref(), id).await? else {
            return Ok(());
        };
        if p.value.draft_audit() != AuditStatus::Auditing {
            return Ok(());
        }
        let mut next = p.value.clone();
        next.audit_asked_at_ms = Some(now);
        let mut batch = Batch::new();
        batch.update_product(&p, &next);
        match batch.commit(app.store.as_ref()).await {
            Err(e) if e.is_conflict() => Ok(()),
            other => other,
        }
    };
    if let Err(e) = noted.await {
        tracing::warn!(product_id = %id, error = %e, "audit sweep: could not note the question");
    }
}

/// One page of the re-indexing of products stored by an earlier version (an approved product
/// with an edit under audit was indexed APPROVED, where the sweep no longer looks; a product
/// on sale was indexed APPROVED or AUDITING, where the shop does not look), until the listing
/// is done once and marked [`REINDEX_DONE`] — from then on the shop reads only the products on
/// sale — after that a single read a run. Returns how many were indexed again.
async fn reindex_step(app: &App) -> Result<usize, ApiError> {
    let store = app.store.as_ref();
    let state = crate::store::kv::get(store, REINDEX_KEY).await?;
    let cursor = match state.as_ref().map(|s| s.value.as_str()) {
        Some(REINDEX_DONE) => return Ok(0),
        Some(REINDEX_DONE_BEFORE_ON_SALE) => None,
        Some(c) => Some(c.to_owned()),
        None => None,
    };
    let (rewritten, next) = match repo::reindex_products(store, REINDEX_PAGE, cursor).await {
        // A cursor this store no longer takes (SQLite's named no listing before): the listing
        // again from the start — re-indexing writes only what is indexed wrongly.
        Err(crate::store::StoreError::BadCursor) => {
            repo::reindex_products(store, REINDEX_PAGE, None).await?
        }
        other => other?,
    };
    if rewritten > 0 {
        tracing::info!(
            rewritten,
            "products stored by an earlier version indexed again (audit and on-sale partitions)"
        );
    }
    let value = next.as_deref().unwrap_or(REINDEX_DONE);
    // Kept for good (a century); lost to a concurrent run, which went on from the same place.
    let until = app.clock.now_secs() + 100 * 365 * 24 * 3600;
    crate::store::kv::put_if(store, REINDEX_KEY, value, until, state.map(|s| s.version)).await?;
    Ok(rewritten)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::domain::Edit;

    fn sku(id: &str, price: i64, market: i64, stock: u32) -> Sku {
        Sku {
            sku_id: SkuId::parse(id).unwrap(),
            price: Fen::new(price).unwrap(),
            market_price: Fen::new(market).unwrap(),
            stock,
            wx_sku_id: Some(77),
            attrs: vec![("weight".into(), "250 g".into())],
        }
    }

    /// The shop shows exactly the public fields of the version on sale: with an edit under
    /// audit, the approved title and prices (what `reserve` charges), never the draft's, and
    /// nothing of the audit, WeChat's ids or the merchant's bookkeeping.
    #[test]
    fn the_shop_shape_is_the_version_on_sale_and_nothing_internal() {
        let content = Content {
            title: "Tea".into(),
            path: "pages/product/detail".into(),
            head_img: vec!["https://img/tea.jpg".into()],
            third_cat_id: 6153,
            brand_id: 2100000000,
            qualification_pics: vec![],
            skus: vec![sku("tea-250g", 1990, 2590, 12)],
        };
        let mut p = Product::new(ProductId::parse("tea").unwrap(), content.clone(), 5);
        p.audit = AuditStatus::Approved;
        p.listing = Listing::Listed;
        p.wx_product_id = Some(99);
        p.reject_reason = Some("old".into());
        p.submit_error = Some("old".into());
        p.edit = Some(Edit {
            content: Content {
                title: "Tea, spring".into(),
                skus: vec![sku("tea-250g", 2500, 2590, 12)],
                ..content
            },
            audit: AuditStatus::Auditing,
            reject_reason: None,
            submit_error: None,
        });
        let shown = serde_json::to_value(ShopProduct(&p)).unwrap();
        assert_eq!(
            shown,
            serde_json::json!({"product_id": "tea", "title": "Tea",
                "head_img": ["https://img/tea.jpg"],
                "skus": [{"sku_id": "tea-250g", "price": 1990, "market_price": 2590,
                    "stock": 12, "attrs": [{"key": "weight", "value": "250 g"}]}]})
        );
        let charged = p.reserve(&SkuId::parse("tea-250g").unwrap(), 1).unwrap();
        assert_eq!(shown["skus"][0]["price"], charged.get());
    }
}
