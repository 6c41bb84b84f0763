//! Typed shop events (WECHAT_SHOP.md §8.2, §14.5) derived from a verified [`PushMessage`].
//!
//! WeChat's typing is loose: XML carries every number as text, JSON sometimes as a number and
//! sometimes as a string, and ids exceed 2^53. So fields are read leniently from the JSON view
//! of the message — ids as `u64` from a number or a decimal string, an empty value as absent,
//! text from a string or a number — and strictly otherwise: a present id that is not a
//! non-negative integer is an [`EventError`], never a silent zero.
//!
//! Events this code does not know (and shop events it does not act on, such as sharer or
//! shipping-management notices) become [`PushEvent::Unknown`] with the whole message kept, so
//! they can be recorded and acknowledged without losing anything.

use super::message::PushMessage;
use crate::domain::Fen;
use serde_json::{Map, Value};
use sha1::{Digest, Sha1};

/// The header every event shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventHead {
    /// The mini program's original id, `gh_…`.
    pub to_user_name: String,
    /// A fixed WeChat-team openid.
    pub from_user_name: String,
    /// Unix seconds.
    pub create_time: u64,
}

/// A verdict from an audit whose `status` codes differ per audit kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditVerdict {
    Approved,
    Rejected,
    /// Any other status (in review, or a code not documented).
    Other(i64),
}

/// `open_product_spu_audit` → `OpenProductSpuAudit`. `status` 4 approved, 3 rejected (the
/// SPU's `edit_status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpuAudit {
    pub out_product_id: String,
    pub product_id: Option<u64>,
    pub status: i64,
    pub reject_reason: String,
    /// Newer documentation adds the listing status.
    pub spu_status: Option<i64>,
}

impl SpuAudit {
    pub fn verdict(&self) -> AuditVerdict {
        match self.status {
            4 => AuditVerdict::Approved,
            3 => AuditVerdict::Rejected,
            s => AuditVerdict::Other(s),
        }
    }
}

/// `open_product_spu_status_update` → `OpenProductSpuStatusUpdate` (newer) or
/// `OpenProductSpuAudit` (older). `status` 13 = delisted by the platform, 5 = restored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpuStatusUpdate {
    pub out_product_id: String,
    pub product_id: Option<u64>,
    pub status: i64,
    /// `reason` (newer) or `reject_reason` (older).
    pub reason: String,
}

/// `open_product_brand_audit` / `open_product_category_audit` → `QualificationAuditResult`.
/// `status` 1 approved, 9 rejected; `audit_type` 1 brand, 2 category.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QualificationAudit {
    /// As returned by `shop/audit/audit_brand|audit_category`.
    pub audit_id: String,
    pub status: i64,
    pub audit_type: Option<i64>,
    pub reject_reason: String,
    /// Brand audits only.
    pub brand_id: Option<u64>,
}

impl QualificationAudit {
    pub fn verdict(&self) -> AuditVerdict {
        match self.status {
            1 => AuditVerdict::Approved,
            9 => AuditVerdict::Rejected,
            s => AuditVerdict::Other(s),
        }
    }
}

/// `open_product_scene_group_audit` → `SceneGroupAudit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SceneGroupAudit {
    pub group_id: Option<u64>,
    pub name: String,
    pub reason: String,
    /// `scene_group_ext_list` (a repeated element in XML).
    pub ext_list: Vec<SceneGroupExt>,
}

/// One scene: `ext_id` 1 customer service/after-sales, 2 e-commerce platform; `status`
/// 0 reviewing, 1 passed, 2 failed, 3 not audited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SceneGroupExt {
    pub ext_id: i64,
    pub status: i64,
    pub name: String,
}

/// `open_product_account_register` → `OpenProductAccountRegister`: 2 = component enabled,
/// 10 = access cancelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRegister {
    pub status: i64,
}

/// `open_product_order_pay` → `order_info`.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderPay {
    pub order_id: Option<u64>,
    pub out_order_id: String,
    pub transaction_id: String,
    /// `yyyy-MM-dd HH:mm:ss` as sent.
    pub pay_time: String,
    pub amount: Option<Fen>,
    pub payer_amount: Option<Fen>,
    pub sp_openid: String,
    /// Kept as sent (coupon details are informational).
    pub promotion_detail_info: Option<Value>,
}

/// `open_product_order_settle` → `order_info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderSettle {
    pub order_id: Option<u64>,
    pub out_order_id: String,
    pub settle_no: String,
    pub amount: Option<Fen>,
    /// As sent (text or a number rendered as text).
    pub settle_time: String,
}

/// The ids an order notice carries (`open_product_order_cancel|confirm|refund`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRef {
    pub order_id: Option<u64>,
    pub out_order_id: String,
}

/// Which after-sale event (§8.2); all carry [`AfterSaleInfo`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AfterSaleEventKind {
    /// `aftersale_new_order`: the user applied.
    NewOrder,
    /// `aftersale_update_order`: the user changed the request.
    UpdateOrder,
    /// `aftersale_user_cancel`
    UserCancel,
    /// `aftersale_refund_success`
    RefundSuccess,
    /// `aftersale_wait_merchant_confirm_receipt`: goods shipped back.
    WaitMerchantConfirmReceipt,
    /// `aftersale_wait_merchant_offline_refund`: the online refund failed.
    WaitMerchantOfflineRefund,
    /// `aftersale_merchant_handle_refund_overdue`
    MerchantHandleRefundOverdue,
    /// `aftersale_merchant_handle_return_overdue`
    MerchantHandleReturnOverdue,
    /// `aftersale_merchant_confirm_receipt_overdue`
    MerchantConfirmReceiptOverdue,
    /// `aftersale_user_upload_return_info_overdue`
    UserUploadReturnInfoOverdue,
    /// `aftersale_user_modify_return_info`
    UserModifyReturnInfo,
    /// `aftersale_user_confirm_refund_certificate`
    UserConfirmRefundCertificate,
    /// `aftersale_user_apply_platform_judge_overdue`
    UserApplyPlatformJudgeOverdue,
    /// `aftersale_complaint_update_order_state`
    ComplaintUpdateOrderState,
    /// Another `aftersale_*` event carrying `aftersale_info` (named as sent).
    Other(String),
}

const AFTERSALE_EVENTS: [(&str, AfterSaleEventKind); 14] = [
    ("aftersale_new_order", AfterSaleEventKind::NewOrder),
    ("aftersale_update_order", AfterSaleEventKind::UpdateOrder),
    ("aftersale_user_cancel", AfterSaleEventKind::UserCancel),
    (
        "aftersale_refund_success",
        AfterSaleEventKind::RefundSuccess,
    ),
    (
        "aftersale_wait_merchant_confirm_receipt",
        AfterSaleEventKind::WaitMerchantConfirmReceipt,
    ),
    (
        "aftersale_wait_merchant_offline_refund",
        AfterSaleEventKind::WaitMerchantOfflineRefund,
    ),
    (
        "aftersale_merchant_handle_refund_overdue",
        AfterSaleEventKind::MerchantHandleRefundOverdue,
    ),
    (
        "aftersale_merchant_handle_return_overdue",
        AfterSaleEventKind::MerchantHandleReturnOverdue,
    ),
    (
        "aftersale_merchant_confirm_receipt_overdue",
        AfterSaleEventKind::MerchantConfirmReceiptOverdue,
    ),
    (
        "aftersale_user_upload_return_info_overdue",
        AfterSaleEventKind::UserUploadReturnInfoOverdue,
    ),
    (
        "aftersale_user_modify_return_info",
        AfterSaleEventKind::UserModifyReturnInfo,
    ),
    (
        "aftersale_user_confirm_refund_certificate",
        AfterSaleEventKind::UserConfirmRefundCertificate,
    ),
    (
        "aftersale_user_apply_platform_judge_overdue",
        AfterSaleEventKind::UserApplyPlatformJudgeOverdue,
    ),
    (
        "aftersale_complaint_update_order_state",
        AfterSaleEventKind::ComplaintUpdateOrderState,
    ),
];

impl AfterSaleEventKind {
    /// The `Event` name.
    pub fn name(&self) -> &str {
        match self {
            AfterSaleEventKind::Other(name) => name,
            kind => AFTERSALE_EVENTS
                .iter()
                .find(|(_, k)| k == kind)
                .map(|(n, _)| *n)
                .unwrap_or("aftersale"),
        }
    }

    fn from_name(event: &str) -> Option<Self> {
        if let Some((_, k)) = AFTERSALE_EVENTS.iter().find(|(n, _)| *n == event) {
            return Some(k.clone());
        }
        event
            .starts_with("aftersale_")
            .then(|| AfterSaleEventKind::Other(event.to_owned()))
    }
}

/// `aftersale_*` → `aftersale_info`. `aftersale_new_order` carries the order ids, the others
/// `out_aftersale_id` (which may be an empty string for user-initiated after-sales).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AfterSaleInfo {
    pub aftersale_id: Option<u64>,
    pub out_aftersale_id: String,
    pub order_id: Option<u64>,
    pub out_order_id: String,
}

/// `complaint_notify` → `complaint_info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Complaint {
    pub complaint_order_id: String,
    pub state: Option<i64>,
    pub event: Option<i64>,
}

/// `open_product_receive_coupon` (flat). **Needs a structured passive reply** (`ret_code`,
/// `ret_msg`, `out_coupon_id`, `out_user_coupon_id`, `request_id`), not `success`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiveCoupon {
    pub out_coupon_id: String,
    pub request_id: String,
}

/// `withdraw_notify` → `withdraw_info` (§14.5). `event` is an undocumented enum (probably
/// 1 QR issued, 2 scan verified, 3 success, 4 failure — UNVERIFIED); confirm with
/// `shop/funds/getwithdrawdetail`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WithdrawNotify {
    /// Documented as a number; kept as text.
    pub out_request_no: String,
    pub event: Option<i64>,
}

/// A shop event, typed. Each variant keeps the common [`EventHead`].
#[derive(Debug, Clone, PartialEq)]
pub enum PushEvent {
    /// `open_product_spu_audit`
    SpuAudit { head: EventHead, body: SpuAudit },
    /// `open_product_spu_status_update`
    SpuStatusUpdate {
        head: EventHead,
        body: SpuStatusUpdate,
    },
    /// `open_product_brand_audit`
    BrandAudit {
        head: EventHead,
        body: QualificationAudit,
    },
    /// `open_product_category_audit`
    CategoryAudit {
        head: EventHead,
        body: QualificationAudit,
    },
    /// `open_product_scene_group_audit`
    SceneGroupAudit {
        head: EventHead,
        body: SceneGroupAudit,
    },
    /// `open_product_account_register`
    AccountRegister {
        head: EventHead,
        body: AccountRegister,
    },
    /// `open_product_order_pay`
    OrderPay { head: EventHead, body: OrderPay },
    /// `open_product_order_settle`
    OrderSettle { head: EventHead, body: OrderSettle },
    /// `open_product_order_cancel`
    OrderCancel { head: EventHead, body: OrderRef },
    /// `open_product_order_confirm`
    OrderConfirm { head: EventHead, body: OrderRef },
    /// `open_product_order_refund`
    OrderRefund { head: EventHead, body: OrderRef },
    /// `aftersale_*`
    AfterSale {
        head: EventHead,
        kind: AfterSaleEventKind,
        body: AfterSaleInfo,
    },
    /// `complaint_notify`
    Complaint { head: EventHead, body: Complaint },
    /// `open_product_receive_coupon`
    ReceiveCoupon {
        head: EventHead,
        body: ReceiveCoupon,
    },
    /// `withdraw_notify`
    WithdrawNotify {
        head: EventHead,
        body: WithdrawNotify,
    },
    /// Anything else (or a non-event message; then `event` is `msgtype:<MsgType>`), kept whole.
    Unknown {
        head: EventHead,
        event: String,
        raw: Value,
    },
}

/// A known event whose body does not have the documented shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("event `{event}`: body element `{element}` is missing or not an object")]
    MissingBody {
        event: String,
        element: &'static str,
    },
    #[error("event `{event}`: field `{field}` is missing")]
    MissingField { event: String, field: &'static str },
    #[error("event `{event}`: field `{field}` {problem}")]
    BadField {
        event: String,
        field: &'static str,
        problem: &'static str,
    },
}

/// Lenient typed access to one object of the message, with the event name for errors.
struct Body<'a> {
    event: &'a str,
    map: &'a Map<String, Value>,
}

impl<'a> Body<'a> {
    fn of(
        event: &'a str,
        raw: &'a Map<String, Value>,
        elements: &[&'static str],
    ) -> Result<Self, EventError> {
        for el in elements {
            if let Some(Value::Object(map)) = raw.get(*el) {
                return Ok(Body { event, map });
            }
        }
        Err(EventError::MissingBody {
            event: event.to_owned(),
            element: elements.first().copied().unwrap_or(""),
        })
    }

    fn bad(&self, field: &'static str, problem: &'static str) -> EventError {
        EventError::BadField {
            event: self.event.to_owned(),
            field,
            problem,
        }
    }

    /// Present and non-empty, as a value.
    fn value(&self, field: &str) -> Option<&'a Value> {
        match self.map.get(field) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.trim().is_empty() => None,
            Some(v) => Some(v),
        }
    }

    /// Text: a string as is, a number rendered; absent → "".
    fn text(&self, field: &'static str) -> Result<String, EventError> {
        match self.map.get(field) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Number(n)) => Ok(n.to_string()),
            Some(_) => Err(self.bad(field, "is not text")),
        }
    }

    /// The first of several alternative names that is present.
    fn text_any(&self, fields: &[&'static str]) -> Result<String, EventError> {
        for f in fields {
            let t = self.text(f)?;
            if !t.is_empty() {
                return Ok(t);
            }
        }
        Ok(String::new())
    }

    fn opt_u64(&self, field: &'static str) -> Result<Option<u64>, EventError> {
        match self.value(field) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .map(Some)
                .ok_or_else(|| self.bad(field, "is not a non-negative integer")),
            Some(Value::String(s)) => s
                .trim()
                .parse::<u64>()
                .map(Some)
                .map_err(|_| self.bad(field, "is not a non-negative integer")),
            Some(_) => Err(self.bad(field, "is not a number")),
        }
    }

    fn opt_i64(&self, field: &'static str) -> Result<Option<i64>, EventError> {
        match self.value(field) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| self.bad(field, "is not an integer")),
            Some(Value::String(s)) => s
                .trim()
                .parse::<i64>()
                .map(Some)
                .map_err(|_| self.bad(field, "is not an integer")),
            Some(_) => Err(self.bad(field, "is not a number")),
        }
    }

    fn i64(&self, field: &'static str) -> Result<i64, EventError> {
        self.opt_i64(field)?
            .ok_or_else(|| EventError::MissingField {
                event: self.event.to_owned(),
                field,
            })
    }

    fn opt_fen(&self, field: &'static str) -> Result<Option<Fen>, EventError> {
        self.opt_i64(field)?
            .map(|v| Fen::new(v).map_err(|_| self.bad(field, "is a negative amount")))
            .transpose()
    }

    /// An object or array-of-objects field as a list (XML repeats elements, JSON uses arrays).
    fn list(&self, field: &'static str) -> Result<Vec<Body<'a>>, EventError> {
        let event = self.event;
        let one = |v: &'a Value| match v {
            Value::Object(map) => Ok(Body { event, map }),
            _ => Err(self.bad(field, "is not an object")),
        };
        match self.map.get(field) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(Vec::new()),
            Some(Value::Array(items)) => items.iter().map(one).collect(),
            Some(v) => Ok(vec![one(v)?]),
        }
    }
}

impl PushEvent {
    /// Derives the typed event from a verified message.
    pub fn from_message(msg: &PushMessage) -> Result<PushEvent, EventError> {
        let head = EventHead {
            to_user_name: msg.to_user_name.clone(),
            from_user_name: msg.from_user_name.clone(),
            create_time: msg.create_time,
        };
        let raw = &msg.raw;
        let event = match (&msg.event, msg.msg_type.as_str()) {
            (Some(e), "event") => e.as_str(),
            _ => {
                return Ok(PushEvent::Unknown {
                    head,
                    event: format!("msgtype:{}", msg.msg_type),
                    raw: Value::Object(raw.clone()),
                })
            }
        };
        Ok(match event {
            "open_product_spu_audit" => {
                let b = Body::of(event, raw, &["OpenProductSpuAudit"])?;
                PushEvent::SpuAudit {
                    head,
                    body: SpuAudit {
                        out_product_id: b.text("out_product_id")?,
                        product_id: b.opt_u64("product_id")?,
                        status: b.i64("status")?,
                        reject_reason: b.text("reject_reason")?,
                        spu_status: b.opt_i64("spu_status")?,
                    },
                }
            }
            "open_product_spu_status_update" => {
                let b = Body::of(
                    event,
                    raw,
                    &["OpenProductSpuStatusUpdate", "OpenProductSpuAudit"],
                )?;
                PushEvent::SpuStatusUpdate {
                    head,
                    body: SpuStatusUpdate {
                        out_product_id: b.text("out_product_id")?,
                        product_id: b.opt_u64("product_id")?,
                        status: b.i64("status")?,
                        reason: b.text_any(&["reason", "reject_reason"])?,
                    },
                }
            }
            "open_product_brand_audit" | "open_product_category_audit" => {
                let b = Body::of(event, raw, &["QualificationAuditResult"])?;
                let body = QualificationAudit {
                    audit_id: b.text("audit_id")?,
                    status: b.i64("status")?,
                    audit_type: b.opt_i64("audit_type")?,
                    reject_reason: b.text("reject_reason")?,
                    brand_id: b.opt_u64("brand_id")?,
                };
                if event == "open_product_brand_audit" {
                    PushEvent::BrandAudit { head, body }
                } else {
                    PushEvent::CategoryAudit { head, body }
                }
            }
            "open_product_scene_group_audit" => {
                let b = Body::of(event, raw, &["SceneGroupAudit"])?;
                let ext_list = b
                    .list("scene_group_ext_list")?
                    .iter()
                    .map(|e| {
                        Ok(SceneGroupExt {
                            ext_id: e.i64("ext_id")?,
                            status: e.i64("status")?,
                            name: e.text("name")?,
                        })
                    })
                    .collect::<Result<Vec<_>, EventError>>()?;
                PushEvent::SceneGroupAudit {
                    head,
                    body: SceneGroupAudit {
                        group_id: b.opt_u64("group_id")?,
                        name: b.text("name")?,
                        reason: b.text("reason")?,
                        ext_list,
                    },
                }
            }
            "open_product_account_register" => {
                let b = Body::of(event, raw, &["OpenProductAccountRegister"])?;
                PushEvent::AccountRegister {
                    head,
                    body: AccountRegister {
                        status: b.i64("status")?,
                    },
                }
            }
            "open_product_order_pay" => {
                let b = Body::of(event, raw, &["order_info"])?;
                PushEvent::OrderPay {
                    head,
                    body: OrderPay {
                        order_id: b.opt_u64("order_id")?,
                        out_order_id: b.text("out_order_id")?,
                        transaction_id: b.text("transaction_id")?,
                        pay_time: b.text("pay_time")?,
                        amount: b.opt_fen("amount")?,
                        payer_amount: b.opt_fen("payer_amount")?,
                        sp_openid: b.text("sp_openid")?,
                        promotion_detail_info: b.value("promotion_detail_info").cloned(),
                    },
                }
            }
            "open_product_order_settle" => {
                let b = Body::of(event, raw, &["order_info"])?;
                PushEvent::OrderSettle {
                    head,
                    body: OrderSettle {
                        order_id: b.opt_u64("order_id")?,
                        out_order_id: b.text("out_order_id")?,
                        settle_no: b.text("settle_no")?,
                        amount: b.opt_fen("amount")?,
                        settle_time: b.text("settle_time")?,
                    },
                }
            }
            "open_product_order_cancel"
            | "open_product_order_confirm"
            | "open_product_order_refund" => {
                let b = Body::of(event, raw, &["order_info"])?;
                let body = OrderRef {
                    order_id: b.opt_u64("order_id")?,
                    out_order_id: b.text("out_order_id")?,
                };
                match event {
                    "open_product_order_cancel" => PushEvent::OrderCancel { head, body },
                    "open_product_order_confirm" => PushEvent::OrderConfirm { head, body },
                    _ => PushEvent::OrderRefund { head, body },
                }
            }
            "complaint_notify" => {
                let b = Body::of(event, raw, &["complaint_info"])?;
                PushEvent::Complaint {
                    head,
                    body: Complaint {
                        complaint_order_id: b.text("complaint_order_id")?,
                        state: b.opt_i64("state")?,
                        event: b.opt_i64("event")?,
                    },
                }
            }
            "open_product_receive_coupon" => {
                let b = Body { event, map: raw };
                PushEvent::ReceiveCoupon {
                    head,
                    body: ReceiveCoupon {
                        out_coupon_id: b.text("out_coupon_id")?,
                        request_id: b.text("request_id")?,
                    },
                }
            }
            "withdraw_notify" => {
                let b = Body::of(event, raw, &["withdraw_info"])?;
                PushEvent::WithdrawNotify {
                    head,
                    body: WithdrawNotify {
                        out_request_no: b.text("out_request_no")?,
                        event: b.opt_i64("event")?,
                    },
                }
            }
            other => match AfterSaleEventKind::from_name(other) {
                // Named after-sale events must carry `aftersale_info`; an unnamed
                // `aftersale_*` one is typed only when it does.
                Some(kind)
                    if !matches!(kind, AfterSaleEventKind::Other(_))
                        || raw.contains_key("aftersale_info") =>
                {
                    let b = Body::of(event, raw, &["aftersale_info"])?;
                    PushEvent::AfterSale {
                        head,
                        kind,
                        body: AfterSaleInfo {
                            aftersale_id: b.opt_u64("aftersale_id")?,
                            out_aftersale_id: b.text("out_aftersale_id")?,
                            order_id: b.opt_u64("order_id")?,
                            out_order_id: b.text("out_order_id")?,
                        },
                    }
                }
                _ => PushEvent::Unknown {
                    head,
                    event: other.to_owned(),
                    raw: Value::Object(raw.clone()),
                },
            },
        })
    }

    /// The common header.
    pub fn head(&self) -> &EventHead {
        use PushEvent::*;
        match self {
            SpuAudit { head, .. }
            | SpuStatusUpdate { head, .. }
            | BrandAudit { head, .. }
            | CategoryAudit { head, .. }
            | SceneGroupAudit { head, .. }
            | AccountRegister { head, .. }
            | OrderPay { head, .. }
            | OrderSettle { head, .. }
            | OrderCancel { head, .. }
            | OrderConfirm { head, .. }
            | OrderRefund { head, .. }
            | AfterSale { head, .. }
            | Complaint { head, .. }
            | ReceiveCoupon { head, .. }
            | WithdrawNotify { head, .. }
            | Unknown { head, .. } => head,
        }
    }

    /// The `Event` name as WeChat sent it.
    pub fn name(&self) -> &str {
        use PushEvent::*;
        match self {
            SpuAudit { .. } => "open_product_spu_audit",
            SpuStatusUpdate { .. } => "open_product_spu_status_update",
            BrandAudit { .. } => "open_product_brand_audit",
            CategoryAudit { .. } => "open_product_category_audit",
            SceneGroupAudit { .. } => "open_product_scene_group_audit",
            AccountRegister { .. } => "open_product_account_register",
            OrderPay { .. } => "open_product_order_pay",
            OrderSettle { .. } => "open_product_order_settle",
            OrderCancel { .. } => "open_product_order_cancel",
            OrderConfirm { .. } => "open_product_order_confirm",
            OrderRefund { .. } => "open_product_order_refund",
            AfterSale { kind, .. } => kind.name(),
            Complaint { .. } => "complaint_notify",
            ReceiveCoupon { .. } => "open_product_receive_coupon",
            WithdrawNotify { .. } => "withdraw_notify",
            Unknown { event, .. } => event,
        }
    }

    /// Whether the platform expects a structured reply instead of `success`.
    pub fn needs_structured_reply(&self) -> bool {
        matches!(self, PushEvent::ReceiveCoupon { .. })
    }

    /// A key that is the same for every redelivery of this event and differs between events:
    /// `event:ids…:CreateTime`. Audit-like events include their status so two verdicts in the
    /// same second stay distinct; unknown events use a digest of the whole message.
    pub fn dedupe_key(&self) -> String {
        use PushEvent::*;
        let opt = |v: &Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
        let opt_i = |v: &Option<i64>| v.map(|v| v.to_string()).unwrap_or_default();
        let ids: String = match self {
            SpuAudit { body, .. } => format!(
                "{}:{}:{}",
                body.out_product_id,
                opt(&body.product_id),
                body.status
            ),
            SpuStatusUpdate { body, .. } => format!(
                "{}:{}:{}",
                body.out_product_id,
                opt(&body.product_id),
                body.status
            ),
            BrandAudit { body, .. } | CategoryAudit { body, .. } => {
                format!("{}:{}", body.audit_id, body.status)
            }
            SceneGroupAudit { body, .. } => {
                let exts: Vec<String> = body
                    .ext_list
                    .iter()
                    .map(|e| format!("{}={}", e.ext_id, e.status))
                    .collect();
                format!("{}:{}", opt(&body.group_id), exts.join(","))
            }
            AccountRegister { body, .. } => body.status.to_string(),
            OrderPay { body, .. } => format!(
                "{}:{}:{}",
                opt(&body.order_id),
                body.out_order_id,
                body.transaction_id
            ),
            OrderSettle { body, .. } => format!(
                "{}:{}:{}",
                opt(&body.order_id),
                body.out_order_id,
                body.settle_no
            ),
            OrderCancel { body, .. } | OrderConfirm { body, .. } | OrderRefund { body, .. } => {
                format!("{}:{}", opt(&body.order_id), body.out_order_id)
            }
            AfterSale { body, .. } => format!(
                "{}:{}:{}:{}",
                opt(&body.aftersale_id),
                body.out_aftersale_id,
                opt(&body.order_id),
                body.out_order_id
            ),
            Complaint { body, .. } => format!(
                "{}:{}:{}",
                body.complaint_order_id,
                opt_i(&body.state),
                opt_i(&body.event)
            ),
            ReceiveCoupon { body, .. } => format!("{}:{}", body.out_coupon_id, body.request_id),
            WithdrawNotify { body, .. } => {
                format!("{}:{}", body.out_request_no, opt_i(&body.event))
            }
            Unknown { raw, .. } => {
                let digest = Sha1::digest(raw.to_string().as_bytes());
                hex::encode(&digest[..8])
            }
        };
        format!("{}:{}:{}", self.name(), ids, self.head().create_time)
    }
}
