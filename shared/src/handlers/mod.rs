//! The functions. Each module is one deployed function: an async fn over `&App` and an HTTP
//! request (or the event that triggers it). The Lambda binaries (`crate::lambda`) and
//! `wxlocal`'s gateway both dispatch through [`handle_as`] (Lambda: one function per binary, see
//! [`FunctionEntry`]) or [`handle`] (wxlocal: all of them) using [`ROUTES`], the one routing
//! table (the SAM template is tested against it).

pub mod aftersale_sync;
pub mod audit_callback;
pub mod catalog_sync;
pub mod common;
pub mod funds;
pub mod funds_reconcile;
pub mod login;
pub mod order_sync;
pub mod pay_callback;
pub mod pay_orders;
pub mod platform_delisting;
pub mod query_order;
pub mod reconcile;
pub mod shop_orders;
pub mod stock_back;
pub mod stock_mirror;
pub mod unified_order;
pub mod user_blocks;

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
        "/fn/catalogSync",
        Function::CatalogSync,
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
/// authorised by the caller of this function: IAM in AWS, the gateway locally). `wxlocal`
/// serves every function from one process, so it dispatches here at run time; a Lambda binary
/// serves one and calls [`handle_as`] with its own [`entry`] type instead.
pub async fn handle(app: &App, route: &Route, req: Request) -> Response {
    match route.function {
        Function::Login => handle_as::<entry::Login>(app, req).await,
        Function::UnifiedOrder => handle_as::<entry::UnifiedOrder>(app, req).await,
        Function::QueryOrder => handle_as::<entry::QueryOrder>(app, req).await,
        Function::PayCallback => handle_as::<entry::PayCallback>(app, req).await,
        Function::OrderSync => handle_as::<entry::OrderSync>(app, req).await,
        Function::AuditCallback => handle_as::<entry::AuditCallback>(app, req).await,
        Function::AftersaleSync => handle_as::<entry::AftersaleSync>(app, req).await,
        Function::CatalogSync => handle_as::<entry::CatalogSync>(app, req).await,
        Function::Funds => handle_as::<entry::Funds>(app, req).await,
    }
}

/// Runs the function `F` for a request of one of its routes: its answer, or its refusal as
/// the error response (logged as an error when it is ours, as info when it is the caller's).
pub async fn handle_as<F: FunctionEntry>(app: &App, req: Request) -> Response {
    F::handle(app, req).await.unwrap_or_else(|e| {
        let function = F::FUNCTION.name();
        if e.status.is_server_error() {
            tracing::error!(function, code = e.code, message = %e.message, "request failed");
        } else {
            tracing::info!(function, code = e.code, message = %e.message, "request refused");
        }
        e.into_response()
    })
}

/// One function's handler as a type. A Lambda binary runs `lambda::run::<entry::Login>()`,
/// so the compiler sees which function it serves and links that function's code only: every
/// binary used to carry every handler (and the funds QR encoder, the catalog, the after-sale
/// import, …) behind a `match` on a run-time value (docs/PERFORMANCE.md, "One function per
/// binary").
pub trait FunctionEntry {
    const FUNCTION: Function;
    fn handle(
        app: &App,
        req: Request,
    ) -> impl std::future::Future<Output = Result<Response, ApiError>> + Send;
}

/// The [`FunctionEntry`] of each deployed function.
pub mod entry {
    use super::{Function, FunctionEntry};
    use crate::app::App;
    use crate::http::{ApiError, Request, Response};

    macro_rules! entry {
        ($name:ident, $module:ident) => {
            #[doc = concat!("`", stringify!($module), "::handle` as [`Function::", stringify!($name), "`].")]
            pub struct $name;
            impl FunctionEntry for $name {
                const FUNCTION: Function = Function::$name;
                async fn handle(app: &App, req: Request) -> Result<Response, ApiError> {
                    super::$module::handle(app, req).await
                }
            }
        };
    }

    entry!(Login, login);
    entry!(UnifiedOrder, unified_order);
    entry!(QueryOrder, query_order);
    entry!(OrderSync, order_sync);
    entry!(AuditCallback, audit_callback);
    entry!(AftersaleSync, aftersale_sync);
    entry!(CatalogSync, catalog_sync);
    entry!(Funds, funds);

    /// `pay_callback::handle` as [`Function::PayCallback`]: it always answers (WeChat's
    /// `FAIL` is an answer), so it never refuses.
    pub struct PayCallback;
    impl FunctionEntry for PayCallback {
        const FUNCTION: Function = Function::PayCallback;
        async fn handle(app: &App, req: Request) -> Result<Response, ApiError> {
            Ok(super::pay_callback::handle(app, req).await)
        }
    }
}
