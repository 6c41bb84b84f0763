//! Push event decoding and trading-component replies on arbitrary bytes (JSON or XML).
//!
//! Properties: `decode_message` + `PushMessage::event()` (and the event's `dedupe_key`,
//! `name`, `head`) never panic, and a message's typed event does not depend on how its
//! header was read; deserialising the `shop/*` reply types never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wxshop::push::decode_message;
use wxshop::shop::{account, aftersale, catalog, funds, order};

fn reply<T: serde::de::DeserializeOwned + std::fmt::Debug>(data: &[u8]) {
    if let Ok(v) = serde_json::from_slice::<T>(data) {
        let _ = format!("{v:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = decode_message(data) {
        if let Ok(ev) = msg.event() {
            let key = ev.dedupe_key();
            assert!(!key.is_empty());
            assert_eq!(ev.head().create_time, msg.create_time);
            let _ = (ev.name(), ev.needs_structured_reply());
            // Deterministic: the same message gives the same event and key.
            let again = msg.event();
            assert_eq!(again.as_ref().map(|e| e.dedupe_key()), Ok(key));
        }
    }

    reply::<order::OrderAddResult>(data);
    reply::<order::OrderInfo>(data);
    reply::<order::OrderList>(data);
    reply::<order::OrderDetail>(data);
    reply::<order::PaymentParams>(data);
    reply::<order::DeliveryCompany>(data);
    reply::<aftersale::EcAfterSaleOrder>(data);
    reply::<aftersale::EcAfterSaleList>(data);
    reply::<aftersale::LegacyAfterSaleInfo>(data);
    reply::<catalog::SpuInfo>(data);
    reply::<catalog::SpuList>(data);
    reply::<catalog::SpuWriteResult>(data);
    reply::<catalog::AuditResult>(data);
    reply::<catalog::ImgInfo>(data);
    reply::<catalog::ThirdCategory>(data);
    reply::<catalog::SceneCheck>(data);
    reply::<account::AccountInfo>(data);
    reply::<account::RegisterStatus>(data);
    reply::<funds::FundsBalance>(data);
    reply::<funds::FundsFlow>(data);
    reply::<funds::FundsFlowIds>(data);
    reply::<funds::WithdrawInfo>(data);
    reply::<funds::BankList>(data);
    reply::<funds::SubBranches>(data);
    reply::<funds::QrcodeCheck>(data);
    reply::<funds::BankAccountStatus>(data);
});
