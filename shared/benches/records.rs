//! Criterion view of the store records on the payCallback hot path (issue 8; figures in
//! docs/PERFORMANCE.md, "payCallback in-process"): the order as `wxshop-bench paycallback`
//! stores it, decoded from its stored JSON (what every handler that reads an order pays) and
//! encoded into its record (every create or update), before and after the payment; the
//! outbox entry of `shop/order/pay` encoded (`outbox::to_record`) and decoded (the relay).
//!
//! `cargo bench -p wxshop --bench records`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use wxshop::domain::{
    Fen, FundType, OpenId, Order, OrderItem, OrderStatus, OutTradeNo, ProductId, SkuId,
};
use wxshop::outbox::{self, OutboxEntry, Task};
use wxshop::store::repo;

const NOW: i64 = 1_764_000_000_000;

/// The order `wxshop-bench paycallback` creates (bench/src/callback.rs), PREPAID.
fn prepaid() -> Order {
    let price = Fen::new(1990).unwrap();
    Order {
        out_trade_no: OutTradeNo::parse(format!("BENCH{NOW}{:07}", 42)).unwrap(),
        openid: OpenId::parse("oUpF8uMEb4qRXf22hE3X68TekukE").unwrap(),
        items: vec![OrderItem {
            product_id: ProductId::parse("tea").unwrap(),
            sku_id: SkuId::parse("tea-250g").unwrap(),
            title: "Longjing green tea 250 g".into(),
            head_img: "https://mmecimage.cn/p/wxlocal/tea.jpg".into(),
            unit_price: price,
            quantity: 1,
        }],
        total: price,
        freight: Fen::ZERO,
        status: OrderStatus::Prepaid,
        fund_type: FundType::Direct,
        prepay_id: Some(format!("wx{NOW}bench")),
        prepay_at_ms: Some(NOW),
        transaction_id: None,
        paid_at_ms: None,
        wx_order_id: Some(3_700_000_000_000_000_000),
        sent_to_wechat: Default::default(),
        ticket: None,
        scene: Some(1177),
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
        created_at_ms: NOW,
        updated_at_ms: NOW,
        expires_at_ms: NOW + 1_800_000,
    }
}

fn records(c: &mut Criterion) {
    let prepaid = prepaid();
    let mut paid = prepaid.clone();
    paid.pay(&format!("42000{NOW}{:09}", 42), NOW + 1, NOW + 2)
        .unwrap();
    let pending = OutboxEntry::new(
        Task::OrderPay {
            out_trade_no: paid.out_trade_no.clone(),
        },
        NOW + 2,
    );

    let mut g = c.benchmark_group("records");
    g.throughput(Throughput::Elements(1));
    for (name, order) in [("prepaid", &prepaid), ("paid", &paid)] {
        let rec = repo::order_record(order, 1).unwrap();
        g.bench_function(format!("order_decode/{name}"), |b| {
            b.iter(|| black_box(&rec).decode::<Order>().unwrap())
        });
        g.bench_function(format!("order_encode/{name}"), |b| {
            b.iter(|| repo::order_record(black_box(order), 2).unwrap())
        });
    }
    let rec = outbox::to_record(&pending, 1).unwrap();
    g.bench_function("outbox_encode", |b| {
        b.iter(|| outbox::to_record(black_box(&pending), 1).unwrap())
    });
    g.bench_function("outbox_decode", |b| {
        b.iter(|| black_box(&rec).decode::<OutboxEntry>().unwrap())
    });
    g.finish();
}

criterion_group!(benches, records);
criterion_main!(benches);
