//! A merchant blocking one user (an openid): for abuse — coupon farming, fraudulent orders,
//! chargebacks. Sessions are stateless signed tokens (`crate::session`): without this, the only
//! way to stop one user was to rotate `SESSION_SECRET`, which ends every session.
//!
//! # What a block stops, and what it does not
//!
//! - `login` refuses a blocked user, 403 `USER_BLOCKED`, no token issued. WeChat's
//!   `jscode2session` is asked first all the same: only its answer says who the code is.
//! - `unifiedOrder` refuses a blocked user's every call, 403 `USER_BLOCKED`, before anything is
//!   claimed, held (stock) or sent to WeChat — a token issued before the block included. A
//!   repeated idempotency key of an order made before the block is refused too, on purpose: its
//!   replay may resume the order (`pay/unifiedorder`, `shop/order/add` sent again) or hand out
//!   its payment parameters again, which is ordering. The order itself is not touched: the user
//!   reads it (`queryOrder`), an unpaid one is closed by the sweep when it expires (stock
//!   back), and one paid meanwhile with payment parameters handed out before the block is
//!   recorded by `payCallback` as any payment is.
//! - Nothing else checks: `queryOrder` (reads, confirming receipt, closing an unpaid order),
//!   `aftersaleSync` (applying for and following after-sales of paid orders: a block must never
//!   trap a user's money) and `catalogSync` (browsing) work for a blocked user; `payCallback`
//!   is untouched (a payment is WeChat's word, always recorded).
//!
//! # Cost
//!
//! One point read of the user's block in `login` and `unifiedOrder` ([`refuse_blocked`]),
//! none elsewhere. `login` lets a user in when that read fails (logged): `unifiedOrder` checks
//! again before any order, so a store outage stops no login it need not, and orders no one
//! blocked. `unifiedOrder` refuses (503) when it cannot read: it needs the store anyway.
//!
//! # The merchant's actions
//!
//! On `POST /admin/orderSync` (the admin function that already holds the store's write and
//! index permissions and the merchant's event list; the public `login` function gets only the
//! one `GetItem` it needs): `block_user {openid, reason}`, `unblock_user {openid}`,
//! `blocked_users {cursor?, limit?}`. A block or unblock is written together with a
//! [`USER_BLOCK_EVENTS`] event (who: the admin caller — the IAM identity in AWS, `ADMIN_TOKEN`
//! in wxlocal —, when, why), listed by `{"action": "events"}`.
//!
//! A block and an unblock at once: an unblock lifts only the block it read (its delete is
//! conditioned on that block's version), so a block written meanwhile — the user blocked again
//! by another admin, or blocked anew after another unblock — stays, and the unblock answers
//! 409 `BLOCK_CHANGED`. A block writes over the version it read and reads again on a conflict:
//! it always stands. Every block is listed under one index key ([`repo::BLOCKED_USERS_OWNER`]):
//! blocks are a merchant's handful, so `blocked_users` is one query, newest first; it would
//! only matter at thousands of blocks a second (one DynamoDB partition's write rate), which no
//! merchant's hand makes. Nothing a user sees depends on it: `login` and `unifiedOrder` read
//! the block by openid, never the index.

use crate::app::App;
use crate::domain::OpenId;
use crate::http::{admin_caller, ApiError};
use crate::store::repo::{self, Batch, EventRecord, UserBlock};
use crate::store::StoreError;
use serde_json::{json, Value};

/// The event source of blocks and unblocks.
pub const USER_BLOCK_EVENTS: &str = "user_block";

/// How many times `block_user` writes over a block changed under it before it gives up (503).
const WRITE_ATTEMPTS: usize = 5;

/// How long a block's reason may be (characters); longer is cut.
const MAX_REASON_CHARS: usize = 200;

/// What a blocked user can still do, as `block_user` answers it.
const STILL_ALLOWED: [&str; 5] = [
    "read their orders (queryOrder)",
    "confirm receipt of their orders",
    "apply for and follow after-sales (refunds) of orders already paid",
    "browse the catalog (catalogSync)",
    "have a payment of an order made before the block recorded (payCallback)",
];

/// The refusal of a blocked user.
fn blocked() -> ApiError {
    ApiError::new(
        http::StatusCode::FORBIDDEN,
        "USER_BLOCKED",
        "this account is blocked from ordering by the shop; your orders and after-sales \
         remain available",
    )
}

/// `Err(403 USER_BLOCKED)` when the merchant blocked `openid`: one point read.
pub async fn refuse_blocked(app: &App, openid: &OpenId) -> Result<(), ApiError> {
    match repo::get_user_block(app.store.as_ref(), openid).await? {
        Some(b) => {
            tracing::info!(openid = %openid, reason = %b.reason, "blocked user refused");
            Err(blocked())
        }
        None => Ok(()),
    }
}

/// [`refuse_blocked`] for `login`: a store that cannot be read lets the user in (logged), since
/// `unifiedOrder` checks again before any order.
pub async fn refuse_blocked_at_login(app: &App, openid: &OpenId) -> Result<(), ApiError> {
    match repo::get_user_block(app.store.as_ref(), openid).await {
        Ok(Some(b)) => {
            tracing::info!(openid = %openid, reason = %b.reason, "blocked user's login refused");
            Err(blocked())
        }
        Ok(None) => Ok(()),
        Err(e) => {
            tracing::warn!(
                error = %e,
                openid = %openid,
                "could not read whether the user is blocked; login goes ahead (unifiedOrder \
                 checks again)"
            );
            Ok(())
        }
    }
}

fn parse_openid(openid: String) -> Result<OpenId, ApiError> {
    OpenId::parse(openid).map_err(|e| ApiError::bad_request("BAD_OPENID", e.to_string()))
}

fn view(b: &UserBlock) -> Value {
    json!({
        "openid": b.openid.as_str(),
        "reason": b.reason,
        "blocked_by": b.blocked_by,
        "blocked_at": b.blocked_at_ms,
    })
}

/// The block and its event, in one write.
/// Events never expire: they are the merchant's record of who blocked whom, when and why.
async fn write_with_event(
    app: &App,
    mut batch: Batch,
    openid: &OpenId,
    event: Value,
) -> Result<(), StoreError> {
    let now = app.clock.now_ms();
    let key = format!("{openid}/{now}/{}", crate::domain::random_alnum(6));
    batch.record_event(&EventRecord::new(
        USER_BLOCK_EVENTS,
        key,
        now,
        event.to_string(),
    ));
    batch.commit(app.store.as_ref()).await
}

/// `block_user`: blocks `openid` (again: the reason and time replaced).
pub async fn block(
    app: &App,
    req: &crate::http::Request,
    openid: String,
    reason: String,
) -> Result<Value, ApiError> {
    let openid = parse_openid(openid)?;
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(ApiError::bad_request(
            "REASON_REQUIRED",
            "`reason` is required: why the user is blocked (kept with the block)",
        ));
    }
    let block = UserBlock {
        openid,
        reason: reason.chars().take(MAX_REASON_CHARS).collect(),
        blocked_by: admin_caller(req),
        blocked_at_ms: app.clock.now_ms(),
    };
    // Written over the block read, one version on, so an unblock that read the block before
    // this write fails instead of lifting it; a conflict (a block or unblock at once) reads
    // again and blocks over that: the block, the later action, stands.
    let mut attempts = 0;
    loop {
        attempts += 1;
        let prev = repo::get_user_block_versioned(app.store.as_ref(), &block.openid).await?;
        let mut batch = Batch::new();
        batch.block_user_as_read(prev.as_ref(), &block);
        let written = write_with_event(
            app,
            batch,
            &block.openid,
            json!({
                "action": "block", "openid": block.openid.as_str(), "reason": block.reason,
                "by": block.blocked_by, "at": block.blocked_at_ms,
            }),
        )
        .await;
        match written {
            Ok(()) => break,
            Err(StoreError::Conflict { .. }) if attempts < WRITE_ATTEMPTS => continue,
            Err(e) => return Err(e.into()),
        }
    }
    tracing::warn!(
        openid = %block.openid, reason = %block.reason, by = %block.blocked_by,
        "user blocked by the merchant"
    );
    Ok(json!({
        "blocked": view(&block),
        "refused": ["login", "unifiedOrder (new orders; a repeated key too)"],
        "still_allowed": STILL_ALLOWED,
    }))
}

/// `unblock_user`: lifts the block of `openid`; `was_blocked` says whether there was one.
pub async fn unblock(
    app: &App,
    req: &crate::http::Request,
    openid: String,
) -> Result<Value, ApiError> {
    let openid = parse_openid(openid)?;
    let Some(was) = repo::get_user_block_versioned(app.store.as_ref(), &openid).await? else {
        return Ok(json!({ "openid": openid.as_str(), "was_blocked": false }));
    };
    let by = admin_caller(req);
    // The delete is conditioned on the block read: a block written after that read (the user
    // blocked again, by another admin or a retried call) is not lifted with it.
    let mut batch = Batch::new();
    batch.unblock_user_as_read(&was);
    let written = write_with_event(
        app,
        batch,
        &openid,
        json!({
            "action": "unblock", "openid": openid.as_str(), "by": by,
            "at": app.clock.now_ms(),
            "was": view(&was.value),
        }),
    )
    .await;
    match written {
        Ok(()) => {}
        Err(StoreError::Conflict { .. }) => {
            return match repo::get_user_block(app.store.as_ref(), &openid).await? {
                // Lifted meanwhile by another unblock (which recorded its event): done.
                None => Ok(json!({ "openid": openid.as_str(), "was_blocked": false })),
                Some(now) => Err(ApiError::conflict(
                    "BLOCK_CHANGED",
                    format!(
                        "the user was blocked again while this unblock ran (reason: {}, by {}); \
                         nothing was lifted: read `blocked_users` and unblock again if meant",
                        now.reason, now.blocked_by
                    ),
                )),
            };
        }
        Err(e) => return Err(e.into()),
    }
    tracing::warn!(openid = %openid, by = %by, "user unblocked by the merchant");
    Ok(json!({ "openid": openid.as_str(), "was_blocked": true }))
}

/// `blocked_users`: the blocks, newest first, `limit` (1–100, default 50) a page.
pub async fn list(
    app: &App,
    cursor: Option<String>,
    limit: Option<usize>,
) -> Result<Value, ApiError> {
    let limit = limit.unwrap_or(50).clamp(1, 100);
    let (blocks, next) = repo::user_blocks(app.store.as_ref(), limit, cursor)
        .await
        .map_err(|e| match e {
            StoreError::BadCursor => ApiError::bad_request(
                "BAD_CURSOR",
                "`cursor` must be a `next` this action answered",
            ),
            other => other.into(),
        })?;
    let views: Vec<Value> = blocks.iter().map(view).collect();
    Ok(json!({ "blocked_users": views, "next": next }))
}
