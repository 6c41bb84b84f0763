//! WeChat Pay merchant API v2 (XML): signatures, the XML codec, the client, notifications,
//! `wx.requestPayment` parameters and bills.
//!
//! Layout: `sign` and `xml` are the protocol core every other module builds on; `client`
//! makes the outbound calls; `notify` and `refund_notify` take the inbound ones; `jsapi`
//! signs what the mini program needs; `bill` parses trade bills; `types` holds the states
//! and field readers they share. The sandbox in `wxlocal` uses the same signers and builders
//! so its messages are genuine.

pub mod bill;
pub mod client;
pub mod flat;
pub mod jsapi;
pub mod notify;
pub mod refund_notify;
pub mod sign;
pub mod types;
pub mod xml;

pub use bill::{parse_bill, Bill, BillError, BillRow, BillSummary, BillType};
pub use client::{
    truncate_bytes, OrderQueryResponse, OrderRef, PayClient, PayConfig, PayError,
    RefundQueryResponse, RefundRecord, RefundRef, RefundRequest, RefundResponse,
    UnifiedOrderRequest, UnifiedOrderResponse, MAX_ATTACH_BYTES, MAX_BODY_BYTES, MAX_DETAIL_BYTES,
    MAX_REFUND_DESC_BYTES,
};
pub use jsapi::{pay_sign, payment_params, payment_params_with_nonce, PaymentParams};
pub use notify::{
    build_payment_notification, parse_payment_notification, payment_notification_fields,
    reply_fail, reply_success, NotifyError, PaymentNotification, PaymentNotificationSpec,
};
pub use refund_notify::{
    build_refund_notification, decrypt_req_info, encrypt_req_info, parse_refund_notification,
    RefundKey, RefundNotification, RefundNotificationSpec,
};
pub use sign::{sign, sign_in_place, signed_xml, verify, Fields, SignType, VerifyError};
pub use types::{FieldError, RefundStatus, TradeState};
pub use xml::XmlError;
