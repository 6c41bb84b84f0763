//! Property tests of the domain state machines: random sequences of events (including
//! repeats, out-of-order and hostile ones) never take an order or an after-sale to an illegal
//! state. Every step is checked against the invariants and against the list of legal edges.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use wxshop::domain::{
    AfterSale, AfterSaleId, AfterSaleKind, AfterSaleStatus, Change, Delivery, Fen, FundType,
    OpenId, Order, OrderItem, OrderStatus, OutTradeNo, ProductId, SkuId,
};

// ---------------------------------------------------------------- orders

#[derive(Clone, Debug)]
enum OrderEvent {
    Prepay(u8),
    Pay(u8),
    Close,
    Ship(u8),
    Receive,
    Complete,
    Refund(i64),
    Settle,
}

fn order_event(total: i64) -> impl Strategy<Value = OrderEvent> {
    prop_oneof![
        (0u8..3).prop_map(OrderEvent::Prepay),
        (0u8..3).prop_map(OrderEvent::Pay),
        Just(OrderEvent::Close),
        (0u8..2).prop_map(OrderEvent::Ship),
        Just(OrderEvent::Receive),
        Just(OrderEvent::Complete),
        (0..=total + 2).prop_map(OrderEvent::Refund),
        Just(OrderEvent::Settle),
    ]
}

fn new_order(total: i64) -> Order {
    Order {
        out_trade_no: OutTradeNo::parse("WX20240101000000prop").unwrap(),
        openid: OpenId::parse("o_prop").unwrap(),
        items: vec![OrderItem {
            product_id: ProductId::parse("p1").unwrap(),
            sku_id: SkuId::parse("s1").unwrap(),
            title: "Tea".into(),
            head_img: String::new(),
            unit_price: Fen::new(total).unwrap(),
            quantity: 1,
        }],
        total: Fen::new(total).unwrap(),
        freight: Fen::ZERO,
        status: OrderStatus::Created,
        fund_type: FundType::Direct,
        prepay_id: None,
        prepay_at_ms: None,
        transaction_id: None,
        paid_at_ms: None,
        wx_order_id: None,
        sent_to_wechat: Default::default(),
        ticket: None,
        scene: None,
        trace_id: None,
        delivery: None,
        shipped_at_ms: None,
        address: None,
        refunded: Fen::ZERO,
        refund_claims: Default::default(),
        refunds_by_hand: Default::default(),
        aftersales: Default::default(),
        settled_at_ms: None,
        close_reason: None,
        created_at_ms: 0,
        updated_at_ms: 0,
        expires_at_ms: 1_800_000,
    }
}

/// The status is the fulfilment; the refunded amount sits beside it. A partial refund is
/// therefore no edge at all (the status stays, only `refunded` grows), so a partly refunded
/// order still ships and is still received; refunding what is left is the one refund edge
/// (→ REFUNDED). Nothing enters PARTIALLY_REFUNDED any more: records written while it
/// replaced the fulfilment status leave it the way they would have gone — ship (no waybill
/// yet), receive (a waybill), or the rest refunded.
fn order_edge_allowed(from: OrderStatus, to: OrderStatus) -> bool {
    use OrderStatus::*;
    from == to
        || matches!(
            (from, to),
            (Created, Prepaid)
                | (Created, Paid)
                | (Prepaid, Paid)
                | (Created, Closed)
                | (Prepaid, Closed)
                // A payment that raced the close wins: the money moved.
                | (Closed, Paid)
                | (Paid, Shipped)
                | (Shipped, Received)
                | (Received, Completed)
                | (Paid | Shipped | Received | Completed | PartiallyRefunded, Refunded)
                // Legacy records only.
                | (PartiallyRefunded, Shipped)
                | (PartiallyRefunded, Received)
        )
}

/// A record as an earlier version wrote it after a partial refund: PARTIALLY_REFUNDED, paid,
/// part refunded, shipped or not.
fn legacy_partially_refunded(total: i64, shipped: bool) -> Order {
    let mut o = new_order(total);
    o.status = OrderStatus::PartiallyRefunded;
    o.transaction_id = Some("txn0".into());
    o.paid_at_ms = Some(0);
    o.refunded = Fen::new(total / 2).unwrap();
    if shipped {
        o.delivery = Some(Delivery {
            delivery_id: "SF".into(),
            waybill_id: "w0".into(),
        });
    }
    o
}

fn apply_order(o: &mut Order, ev: &OrderEvent, now: i64) -> Result<Change, String> {
    let e = |r: Result<Change, wxshop::domain::TransitionError>| r.map_err(|e| e.to_string());
    match ev {
        OrderEvent::Prepay(n) => e(o.prepay(format!("prepay{n}"), now)),
        OrderEvent::Pay(n) => e(o.pay(&format!("txn{n}"), now, now)),
        OrderEvent::Close => e(o.close("test", now)),
        OrderEvent::Ship(n) => e(o.ship(
            Delivery {
                delivery_id: "SF".into(),
                waybill_id: format!("w{n}"),
            },
            now,
        )),
        OrderEvent::Receive => e(o.receive(now)),
        OrderEvent::Complete => e(o.complete(now)),
        OrderEvent::Refund(a) => e(o.refund(Fen::new(*a).unwrap(), now)),
        OrderEvent::Settle => e(o.settle(now)),
    }
}

fn check_order_invariants(o: &Order) -> Result<(), TestCaseError> {
    prop_assert!(o.refunded <= o.total, "refunded more than paid: {o:?}");
    if o.status.is_paid() {
        prop_assert!(
            o.transaction_id.is_some(),
            "paid without a transaction: {o:?}"
        );
        prop_assert!(o.paid_at_ms.is_some());
        prop_assert!(
            o.close_reason.is_none(),
            "paid order carries a close reason"
        );
    } else {
        prop_assert_eq!(o.refunded, Fen::ZERO, "refund on an unpaid order");
        prop_assert!(o.settled_at_ms.is_none(), "settled while unpaid");
    }
    match o.status {
        OrderStatus::Refunded => prop_assert_eq!(o.refunded, o.total),
        OrderStatus::PartiallyRefunded => {
            prop_assert!(o.refunded > Fen::ZERO && o.refunded < o.total)
        }
        // Paid and not (yet) fully refunded: any part may have gone back.
        s if s.is_paid() => prop_assert!(o.refunded < o.total),
        _ => prop_assert_eq!(o.refunded, Fen::ZERO),
    }
    if matches!(
        o.status,
        OrderStatus::Shipped | OrderStatus::Received | OrderStatus::Completed
    ) {
        prop_assert!(o.delivery.is_some(), "shipped without a waybill");
    }
    if o.status == OrderStatus::Closed {
        prop_assert!(o.close_reason.is_some());
        prop_assert!(o.transaction_id.is_none());
    }
    if o.status == OrderStatus::Prepaid {
        prop_assert!(o.prepay_id.is_some());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn orders_never_reach_an_illegal_state(
        (total, events) in (1i64..10_000).prop_flat_map(|t| {
            (Just(t), prop::collection::vec(order_event(t), 0..40))
        }),
        // 0: a new order; 1, 2: a legacy PARTIALLY_REFUNDED record, not shipped / shipped.
        start in 0u8..3,
    ) {
        let mut o = match start {
            0 => new_order(total),
            _ if total < 2 => new_order(total),
            n => legacy_partially_refunded(total, n == 2),
        };
        let mut first_txn: Option<String> = None;
        let mut ever_shipped = false;
        for (step, ev) in events.iter().enumerate() {
            let now = step as i64 + 1;
            let before = o.clone();
            let result = apply_order(&mut o, ev, now);
            match &result {
                Err(_) => prop_assert_eq!(&o, &before, "a refused event changed the order"),
                Ok(Change::Unchanged) => {
                    prop_assert_eq!(&o, &before, "`Unchanged` changed the order")
                }
                Ok(Change::Changed) => {
                    prop_assert!(o.updated_at_ms == now, "change not stamped");
                }
            }
            prop_assert!(
                order_edge_allowed(before.status, o.status),
                "{:?} -> {:?} on {:?}", before.status, o.status, ev
            );
            // Once paid, the transaction never changes.
            if let Some(t) = &first_txn {
                prop_assert_eq!(o.transaction_id.as_ref(), Some(t), "transaction id changed");
            } else if o.transaction_id.is_some() {
                first_txn = o.transaction_id.clone();
            }
            // The refunded amount only grows, by what was asked.
            prop_assert!(o.refunded >= before.refunded);
            if let (OrderEvent::Refund(a), Ok(_)) = (ev, &result) {
                prop_assert_eq!(o.refunded.get(), before.refunded.get() + a);
            }
            // Closed never ships; a shipped order never closes.
            if before.status == OrderStatus::Closed {
                prop_assert!(matches!(o.status, OrderStatus::Closed | OrderStatus::Paid));
            }
            ever_shipped |= o.status == OrderStatus::Shipped;
            if ever_shipped {
                prop_assert_ne!(o.status, OrderStatus::Closed);
            }
            // Settlement is permanent.
            if before.settled_at_ms.is_some() {
                prop_assert_eq!(o.settled_at_ms, before.settled_at_ms);
            }
            check_order_invariants(&o)?;
        }
    }

    /// The same event delivered twice in a row (a duplicate notification) is harmless: the
    /// second delivery changes nothing, or is refused without changing anything.
    #[test]
    fn duplicate_events_are_harmless(
        (total, events) in (1i64..10_000).prop_flat_map(|t| {
            (Just(t), prop::collection::vec(order_event(t), 0..30))
        })
    ) {
        let mut o = new_order(total);
        for (step, ev) in events.iter().enumerate() {
            let now = step as i64 + 1;
            let _ = apply_order(&mut o, ev, now);
            if matches!(ev, OrderEvent::Refund(_)) {
                continue; // refund idempotency is per out_refund_no, kept by the caller
            }
            let after_first = o.clone();
            let second = apply_order(&mut o, ev, now + 1000);
            prop_assert!(!matches!(second, Ok(Change::Changed)), "{ev:?} applied twice");
            prop_assert_eq!(&o, &after_first);
        }
    }
}

// ---------------------------------------------------------------- after-sales

#[derive(Clone, Debug)]
enum AfterSaleEvent {
    Cancel,
    Reject,
    Approve,
    Refunded(Option<u8>),
    RefundFailed,
    /// WeChat Pay's `CHANGE`: taken, not paid back, held for a person.
    RefundAbnormal,
    RefundedByHand,
    AcceptReturn,
    /// The user's parcel: one of two waybills.
    GoodsSent(u8),
}

fn aftersale_event() -> impl Strategy<Value = AfterSaleEvent> {
    prop_oneof![
        Just(AfterSaleEvent::Cancel),
        Just(AfterSaleEvent::Reject),
        Just(AfterSaleEvent::Approve),
        prop::option::of(0u8..3).prop_map(AfterSaleEvent::Refunded),
        Just(AfterSaleEvent::RefundFailed),
        Just(AfterSaleEvent::RefundAbnormal),
        Just(AfterSaleEvent::RefundedByHand),
        Just(AfterSaleEvent::AcceptReturn),
        (0u8..2).prop_map(AfterSaleEvent::GoodsSent),
    ]
}

fn waybill(n: u8) -> wxshop::domain::ReturnWaybill {
    wxshop::domain::ReturnWaybill {
        delivery_id: "SF".into(),
        delivery_name: "SF Express".into(),
        waybill_id: format!("SF{n}"),
    }
}

fn new_aftersale(kind: AfterSaleKind) -> AfterSale {
    AfterSale {
        id: AfterSaleId::parse("AS1").unwrap(),
        out_trade_no: OutTradeNo::parse("WX20240101000000prop").unwrap(),
        openid: OpenId::parse("o_prop").unwrap(),
        kind,
        amount: Fen::new(50).unwrap(),
        reason: "broken".into(),
        status: AfterSaleStatus::Requested,
        out_refund_no: None,
        refund_id: None,
        wx_aftersale_id: None,
        wx_add_claimed_until_ms: None,
        restock: false,
        reject_reason: None,
        goods_return: None,
        line: None,
        created_at_ms: 0,
        updated_at_ms: 0,
        refunded_at_ms: None,
        by: Default::default(),
    }
}

fn aftersale_edge_allowed(from: AfterSaleStatus, to: AfterSaleStatus) -> bool {
    use AfterSaleStatus::*;
    from == to
        || matches!(
            (from, to),
            (Requested, Cancelled)
                | (Requested, Rejected)
                | (Requested, Refunding)
                | (Requested, AwaitingReturn)
                | (AwaitingReturn, Returning)
                | (AwaitingReturn, Cancelled)
                | (Returning, Refunding)
                | (Returning, Rejected)
                | (Refunding, Refunded)
                | (Refunding, RefundFailed)
                | (RefundFailed, Refunding)
                | (RefundFailed, Refunded)
                // The money is at WeChat: only a person (or WeChat's SUCCESS) ends it.
                | (Refunding | RefundFailed, RefundAbnormal)
                | (RefundAbnormal, Refunded)
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn aftersales_never_reach_an_illegal_state(
        returns in any::<bool>(),
        secondary_merchant in any::<bool>(),
        events in prop::collection::vec(aftersale_event(), 0..30)
    ) {
        let fund_type = if secondary_merchant { FundType::SecondaryMerchant } else { FundType::Direct };
        let kind = if returns { AfterSaleKind::ReturnAndRefund } else { AfterSaleKind::RefundOnly };
        let mut a = new_aftersale(kind);
        let mut refund_no = None;
        for (step, ev) in events.iter().enumerate() {
            let now = step as i64 + 1;
            let before = a.clone();
            let result = match ev {
                AfterSaleEvent::Cancel => a.cancel(now),
                AfterSaleEvent::Reject => a.reject("no", now),
                AfterSaleEvent::Approve => a.approve(fund_type, now),
                AfterSaleEvent::Refunded(id) => a.refunded(id.map(|n| format!("r{n}")), now),
                AfterSaleEvent::RefundFailed => a.refund_failed(now),
                AfterSaleEvent::RefundAbnormal => a.refund_abnormal(now),
                AfterSaleEvent::RefundedByHand => a.refunded_by_hand(now),
                AfterSaleEvent::AcceptReturn => a.accept_return(
                    wxshop::domain::Address {
                        receiver_name: "Returns".into(),
                        detailed_address: "8 Warehouse Road".into(),
                        tel_number: "021".into(),
                        ..Default::default()
                    },
                    now,
                ),
                AfterSaleEvent::GoodsSent(n) => a.goods_sent(waybill(*n), now),
            };
            match result {
                Err(_) | Ok(Change::Unchanged) => prop_assert_eq!(&a, &before),
                Ok(Change::Changed) => prop_assert_eq!(a.updated_at_ms, now),
            }
            prop_assert!(
                aftersale_edge_allowed(before.status, a.status),
                "{:?} -> {:?} on {:?}", before.status, a.status, ev
            );
            // The refund number is fixed at first approval and never changes: every retry
            // of the refund uses the same one, so WeChat refunds at most once.
            match (&refund_no, &a.out_refund_no) {
                (Some(n), got) => prop_assert_eq!(got.as_ref(), Some(n)),
                (None, Some(n)) => refund_no = Some(n.clone()),
                (None, None) => {}
            }
            // Only a refund we ask WeChat Pay for has a number of ours; WeChat refunds a
            // secondary-merchant order under its own.
            match fund_type {
                FundType::Direct if matches!(
                    a.status,
                    AfterSaleStatus::Refunding
                        | AfterSaleStatus::Refunded
                        | AfterSaleStatus::RefundFailed
                        | AfterSaleStatus::RefundAbnormal
                ) => prop_assert!(a.out_refund_no.is_some(), "refunding without a refund number"),
                FundType::SecondaryMerchant => {
                    prop_assert!(a.out_refund_no.is_none(), "a number of ours for WeChat's refund")
                }
                FundType::Direct => {}
            }
            if matches!(a.status, AfterSaleStatus::Cancelled | AfterSaleStatus::Rejected) {
                prop_assert!(a.out_refund_no.is_none(), "a refused after-sale got a refund number");
            }
            if a.status == AfterSaleStatus::Rejected {
                prop_assert!(a.reject_reason.is_some());
            }
            // A refund only never waits for goods; a return and refund is refunded only
            // once the goods were sent back, and its parcel, once known, never changes.
            match a.kind {
                AfterSaleKind::RefundOnly => prop_assert!(a.goods_return.is_none()),
                AfterSaleKind::ReturnAndRefund => {
                    if matches!(
                        a.status,
                        AfterSaleStatus::Refunding | AfterSaleStatus::Refunded | AfterSaleStatus::RefundFailed
                    ) {
                        prop_assert!(
                            a.goods_return.as_ref().is_some_and(|g| g.waybill.is_some()),
                            "refunding a return before the goods were sent back"
                        );
                    }
                    if let Some(w) = before.goods_return.as_ref().and_then(|g| g.waybill.as_ref()) {
                        prop_assert_eq!(
                            a.goods_return.as_ref().and_then(|g| g.waybill.as_ref()),
                            Some(w)
                        );
                    }
                }
            }
            // An abnormal refund is never asked for again: it stays held (same number) until
            // it is recorded refunded.
            if before.status == AfterSaleStatus::RefundAbnormal {
                prop_assert!(matches!(
                    a.status,
                    AfterSaleStatus::RefundAbnormal | AfterSaleStatus::Refunded
                ));
                prop_assert_eq!(&a.out_refund_no, &before.out_refund_no);
            }
            // Money never moves back once refunded: Refunded is final.
            if before.status == AfterSaleStatus::Refunded {
                prop_assert_eq!(a.status, AfterSaleStatus::Refunded);
            }
            if before.refund_id.is_some() {
                prop_assert!(a.refund_id.is_some());
            }
        }
    }
}
