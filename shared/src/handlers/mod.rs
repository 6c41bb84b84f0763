//! The functions. Each module is one deployed function: an async fn over `&App` and an HTTP
//! request (or the event that triggers it). The Lambda binaries (`crate::lambda`) and
//! `wxlocal`'s gateway both dispatch through [`handle`] using [`ROUTES`], the one routing
//! table (the SAM template is tested against it).

pub mod aftersale_sync;
pub mod audit_callback;
pub mod catalog_sync;
pub mod common;
pub mod funds;
pub mod login;
pub mod order_sync;
pub mod pay_callback;
pub mod pay_orders;
pub mod query_order;
pub mod shop_orders;
pub mod unified_order;

use crate::app::App;
use crate::http::{ApiError, Request, Response};

/// A deployed function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Function {
    Login,
    UnifiedOrder,
    QueryOrder,
    PayCallback,
    OrderSync,
    AuditCallback,
    AftersaleSync,
    CatalogSync,
    Funds,
}

impl Function {
    pub const ALL: [Function; 9] = [
        Function::Login,
        Function::UnifiedOrder,
        Function::QueryOrder,
        Function::PayCallback,
        Function::OrderSync,
        Function::AuditCallback,
        Function::AftersaleSync,
        Function::CatalogSync,
        Function::Funds,
    ];

    /// The function's name as the mini program calls it.
    pub fn name(self) -> &'static str {
        match self {
            Function::Login => "login",
            Function::UnifiedOrder => "unifiedOrder",
            Function::QueryOrder => "queryOrder",
            Function::PayCallback => "payCallback",
            Function::OrderSync => "orderSync",
            Function::AuditCallback => "auditCallback",
            Function::AftersaleSync => "aftersaleSync",
            Function::CatalogSync => "catalogSync",
            Function::Funds => "funds",
        }
    }

    /// The binary (and `functions/<dir>`) name.
    pub fn binary(self) -> &'static str {
        match self {
            Function::Login => "login",
            Function::UnifiedOrder => "unified-order",
            Function::QueryOrder => "query-order",
            Function::PayCallback => "pay-callback",
            Function::OrderSync => "order-sync",
            Function::AuditCallback => "audit-callback",
            Function::AftersaleSync => "aftersale-sync",
            Function::CatalogSync => "catalog-sync",
            Function::Funds => "funds",
        }
    }
}

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// The mini program; a session token is required (except `login`).
    MiniProgram,
    /// WeChat Pay or the WeChat platform; the message itself is verified.
    WeChat,
    /// Merchant staff or systems: IAM in AWS, `ADMIN_TOKEN` in `wxlocal`.
    Admin,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub function: Function,
    pub caller: Caller,
}

const fn route(
    method: &'static str,
    path: &'static str,
    function: Function,
    caller: Caller,
) -> Route {
    Route {
        method,
        path,
        function,
        caller,
    }
}

/// Every HTTP route, in one place (contract: ARCHITECTURE.md, Functions).
pub static ROUTES: &[Route] = &[
    route("POST", "/fn/login", Function::Login, Caller::MiniProgram),
    route(
        "POST",
        "/fn/unifiedOrder",
        Function::UnifiedOrder,
        Caller::MiniProgram,
    ),
    route(
        "POST",
        "/fn/queryOrder",
        Function::QueryOrder,
        Caller::MiniProgram,
    ),
    route(
        "POST",
        "/fn/aftersaleSync",
        Function::AftersaleSync,
        Caller::MiniProgram,
    ),
    route(
        "POST",
        "/callbacks/pay",
        Function::PayCallback,
        Caller::WeChat,
    ),
    route(
        "POST",
        "/callbacks/refund",
        Function::PayCallback,
        Caller::WeChat,
    ),
    route(
        "GET",
        "/callbacks/wechat",
        Function::AuditCallback,
        Caller::WeChat,
    ),
    route(
        "POST",
        "/callbacks/wechat",
        Function::AuditCallback,
        Caller::WeChat,
    ),
    route(
        "POST",
        "/admin/orderSync",
        Function::OrderSync,
        Caller::Admin,
    ),
    route(
        "POST",
        "/admin/aftersaleSync",
        Function::AftersaleSync,
        Caller::Admin,
    ),
    route(
        "POST",
        "/admin/catalogSync",
        Function::CatalogSync,
        Caller::Admin,
    ),
    route("POST", "/admin/funds", Function::Funds, Caller::Admin),
];

/// The route for a method and path, if any.
pub fn find_route(method: &str, path: &str) -> Option<&'static Route> {
    ROUTES.iter().find(|r| r.method == method && r.path == path)
}

/// Runs `function` for an HTTP request whose route has been matched (and, for admin routes,
/// authorised by the caller of this function: IAM in AWS, the gateway locally).
pub async fn handle(app: &App, route: &Route, req: Request) -> Response {
    let result: Result<Response, ApiError> = match route.function {
        Function::Login => login::handle(app, req).await,
        Function::UnifiedOrder => unified_order::handle(app, req).await,
        Function::QueryOrder => query_order::handle(app, req).await,
        Function::PayCallback => Ok(pay_callback::handle(app, req).await),
        Function::OrderSync => order_sync::handle(app, req).await,
        Function::AuditCallback => audit_callback::handle(app, req).await,
        Function::AftersaleSync => aftersale_sync::handle(app, req).await,
        Function::CatalogSync => catalog_sync::handle(app, req).await,
        Function::Funds => funds::handle(app, req).await,
    };
    result.unwrap_or_else(|e| {
        if e.status.is_server_error() {
            tracing::error!(function = route.function.name(), code = e.code, message = %e.message, "request failed");
        } else {
            tracing::info!(function = route.function.name(), code = e.code, message = %e.message, "request refused");
        }
        e.into_response()
    })
}
