//! The shop's own model: money, ids, orders, products, after-sales, each with the rules that
//! keep it valid. No I/O here; handlers load, call a method, and store the result.

pub mod aftersale;
pub mod ids;
pub mod money;
pub mod order;
pub mod product;

pub use aftersale::{
    AfterSale, AfterSaleKind, AfterSaleLine, AfterSaleOrigin, AfterSaleStatus,
    AfterSaleTransitionError, GoodsReturn, LineAsked, LineChoice, LineError, ReturnWaybill,
};
pub use ids::{
    random_alnum, AfterSaleId, IdError, OpenId, OutRefundNo, OutTradeNo, ProductId, SkuId,
};
pub use money::{BalanceFen, Fen, MoneyError};
pub use order::{
    Address, Change, Delivery, FundType, Order, OrderItem, OrderStatus, SentToWechat,
    TransitionError,
};
pub use product::{
    AuditStatus, Content, ContentChange, Edit, Listing, Product, SellError, Sku, WaitingFor,
    NO_BRAND, WX_TITLE_CHARS,
};
