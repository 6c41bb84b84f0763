//! `auditCallback`: message push from the WeChat platform. GET is the console's URL
//! verification; POST carries events (plaintext or safe mode, XML or JSON). Every event is
//! verified, recorded once (replays are no-ops), applied to our state (audit verdicts make
//! products orderable or carry the reason; fund_type=1 payments and settlements; receipt
//! confirmed in WeChat; component orders cancelled or refunded in full in WeChat; after-sale
//! events), and answered `success` — unknown events too, kept raw for later.
//!
//! The order events (`open_product_order_pay|confirm|cancel|refund`) are believed only as
//! WeChat's own record of the order, read back with `shop/order/get`, states it: in plaintext
//! mode a push's signature does not cover its body, and a late push can describe an earlier
//! state. Ids that are not ours, an order we do not have or never put in the trading
//! component, one WeChat says it does not hold: acknowledged, logged, nothing changed. WeChat
//! unreadable: 503, so WeChat pushes again. Then:
//!
//! | event | WeChat's order must read | applied |
//! |---|---|---|
//! | `open_product_order_pay` | paid, our amount (fund_type=1 only) | the payment recorded |
//! | `open_product_order_confirm` | 100 | SHIPPED → RECEIVED |
//! | `open_product_order_settle` | paid, our amount, when ours is not paid yet (fund_type=1) | the payment recorded if it was not, then `settled_at` |
//! | `open_product_order_cancel` | 181 or 250 | an unpaid order closed as the unpaid sweep closes one (stock back, WeChat Pay order closed); a paid one unchanged, kept and paged ([`ORDER_EVENT_MISMATCH_EVENTS`], once with what the payment, shipment, receipt or after-sale sync finds of the same case: [`cancelled_while_paid`]) |
//! | `open_product_order_refund` | 200 | the order's after-sales read back from WeChat now (a refund WeChat made recorded from its after-sale, never from the push); what our refunds — recorded, under way, or failed or held (each paged on its own) — still do not account for kept and paged |
//!
//! WeChat's retries and later pushes of one event change nothing more, and page once.
//!
//! Pushes that are not shop events (customer-service messages users write to the mini
//! program, which WeChat sends to this URL too) and events of unknown types are kept only
//! [`UNACTED_PUSH_KEEP_SECS`]: they carry users' words, nothing here acts on them, and their
//! content is never logged.
//!
//! Nothing is acknowledged before it is stored: a store failure answers 503 so WeChat
//! retries. A push signed with our token that our EncodingAESKey or appid cannot read answers
//! 503 too, with an error log: the settings are ours to fix, and a 4xx would page nobody.
//!
//! A push or URL verification refused as not WeChat's — a signature that does not match our
//! token, a signed `timestamp` more than [`PUSH_WINDOW_SECS`] from our clock, another body
//! under a plaintext signature already used — answers 403, is logged with `security = true`,
//! and is counted as [`crate::metrics::PUSH_REFUSED`], which `PushRefusedAlarm` watches: a
//! 4xx reaches no other alarm, and every push refused this way is one not taken in (a wrong
//! `WX_PUSH_TOKEN`, this host's clock off) or someone posting what WeChat did not send.
//! Requests with no signature at all (a scanner) are refused but not counted.

use super::common::transition_order;
use super::platform_delisting::{self, Via};
use crate::app::App;
use crate::domain::{
    AuditStatus, Change, Fen, FundType, Order, OrderStatus, OutTradeNo, ProductId,
};
use crate::http::{query_params, text, ApiError, Request, Response};
use crate::metrics::PUSH_REFUSED;
use crate::push::{self, PushError, PushEvent, PushQuery};
use crate::shop::error::ERRCODE_ORDER_NOT_FOUND;
use crate::shop::order::OrderInfo;
use crate::shop::types::ProductKey;
use crate::store::kv;
use crate::store::repo::{self, EventRecord};
use http::StatusCode;
use sha2::{Digest, Sha256};

fn push_query(req: &Request) -> PushQuery {
    let params = query_params(req);
    serde_json::to_value(&params)
        .ok()
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default()
}

pub async fn handle(app: &App, req: Request) -> Result<Response, ApiError> {
    let query = push_query(&req);
    if req.method() == http::Method::GET {
        return match push::verify_url(
            &query,
            secrecy::ExposeSecret::expose_secret(&app.config.push_token),
        ) {
            Ok(echo) => {
                refuse_stale_push(app, &query, PushKind::UrlVerification)?;
                spend_url_verification(app, &query).await?;
                Ok(text(StatusCode::OK, echo, "text/plain"))
            }
            Err(e) => {
                count_if_forged(app, &e);
                tracing::warn!(security = true, error = %e, "push URL verification refused");
                Err(ApiError::forbidden("signature does not verify"))
            }
        };
    }
    let msg = push::parse(&query, req.body(), &app.push).map_err(|e| {
        if e.is_misconfiguration() {
            // Signed with our token, yet unreadable here: the push is WeChat's and the fault
            // is our key or appid. 503, a server error: it counts towards the API's 5xx alarm
            // (a 4xx looked like a probe, and every push was lost without a page).
            tracing::error!(error = %e, "push from WeChat unreadable with this stack's settings: check WX_PUSH_AES_KEY (the console's EncodingAESKey) and WX_APPID; every push is refused until then");
            return ApiError::unavailable(e.code(), format!("push refused: {e}"));
        }
        count_if_forged(app, &e);
        tracing::warn!(security = true, error = %e, "push message refused");
        if e.is_unauthenticated() {
            ApiError::forbidden(format!("push refused: {e}"))
        } else {
            ApiError::bad_request(e.code(), format!("push refused: {e}"))
        }
    })?;
    refuse_stale_push(
        app,
        &query,
        PushKind::Push {
            encrypted: msg.encrypted,
        },
    )?;
    if app.push.aes_key.is_none() {
        bind_plaintext_push(app, &query, req.body()).await?;
    }
    let event = match msg.event() {
        Ok(ev) => ev,
        Err(e) => {
            // Verified but not the documented shape: keep it raw, acknowledge.
            tracing::warn!(error = %e, "push event with an unexpected shape; kept raw");
            let key = format!("malformed/{}", hex::encode(Sha256::digest(req.body())));
            let ev = EventRecord::new("push", key, app.clock.now_ms(), readable_body(&msg));
            repo::record_event(app.store.as_ref(), &ev).await?;
            return Ok(text(StatusCode::OK, push::reply_success(), "text/plain"));
        }
    };
    let key = dedupe_key(&event, &query, req.body());
    let body = readable_body(&msg);
    let mut ev = EventRecord::new("push", key.clone(), app.clock.now_ms(), body);
    if matches!(event, PushEvent::Unknown { .. }) {
        // Kept long enough to dedupe WeChat's retries and for a person to look, then dropped.
        ev.expires_at = Some(app.clock.now_secs().saturating_add(UNACTED_PUSH_KEEP_SECS));
    }
    if repo::get_event(app.store.as_ref(), "push", &key)
        .await?
        .is_some()
    {
        tracing::info!(event = event.name(), "push event replayed; already applied");
        return Ok(text(StatusCode::OK, push::reply_success(), "text/plain"));
    }
    apply(app, &event).await?;
    // Recorded after applying: every application is idempotent, so a crash between the two
    // only means a harmless second application when WeChat retries.
    repo::record_event(app.store.as_ref(), &ev).await?;
    tracing::info!(event = event.name(), "push event applied");
    Ok(text(StatusCode::OK, push::reply_success(), "text/plain"))
}

/// The key a push is recorded under, so that WeChat's retries of it act once.
/// [`PushEvent::dedupe_key`] names the event by its ids and `CreateTime`. An after-sale event
/// names only the after-sale, no status or amount, so two edits of one request in the same
/// second are the same message byte for byte, and the second was dropped as a retry of the
/// first until the schedule's sweep found it. What tells two such pushes apart is their
/// delivery: a retry is the same request again (timestamp, nonce and body), while another
/// push has its own nonce (and, in safe mode, its own random prefix inside `Encrypt`). So an
/// after-sale event's key adds a digest of the three. Should WeChat re-sign a retry (its
/// retries' parameters are UNVERIFIED), it is applied once more: harmless, as an after-sale
/// event is applied from WeChat's after-sale read back, idempotently.
fn dedupe_key(event: &PushEvent, query: &PushQuery, body: &[u8]) -> String {
    let key = event.dedupe_key();
    if !matches!(event, PushEvent::AfterSale { .. }) {
        return key;
    }
    let mut delivery = Sha256::new();
    for part in [&query.timestamp, &query.nonce] {
        delivery.update(PushQuery::get(part).unwrap_or_default().as_bytes());
        delivery.update([0]);
    }
    delivery.update(body);
    format!("{key}:{}", hex::encode(&delivery.finalize()[..8]))
}

/// How long a push we do not act on (a user's message, an event of an unknown type) is kept:
/// 30 days. WeChat retries a push within seconds, so its dedupe holds well within this.
pub const UNACTED_PUSH_KEEP_SECS: i64 = 30 * 24 * 3600;

/// What is kept of a push for the merchant: the message as read (in safe mode, decrypted),
/// as JSON — not the request body, which in safe mode is only ciphertext.
fn readable_body(msg: &push::PushMessage) -> String {
    serde_json::to_string(&msg.raw).unwrap_or_default()
}

/// How far a push's signed `timestamp` may be from our clock, either way, in every mode, and
/// the console's URL verification's too. WeChat stamps a push as it sends it and, by the
/// Official Account rule, retries an unanswered one three times 5 s apart (WECHAT_SHOP.md
/// §9.5; for shop events UNVERIFIED, as is whether a retry keeps the first timestamp): five
/// minutes cannot drop those retries, and a push lost anyway is recovered by the schedule's
/// sweeps. The console verifies the URL as the merchant saves the settings (§9.2), so a
/// verification is as fresh as a push (UNVERIFIED that the console stamps it with the time
/// it sends it; a refused one shows as a failure in the console, and saving again sends a
/// fresh one).
const PUSH_WINDOW_SECS: i64 = 300;

/// What [`refuse_stale_push`] refuses: a push (POST) or the console's URL verification (GET).
#[derive(Clone, Copy, Debug)]
enum PushKind {
    Push { encrypted: bool },
    UrlVerification,
}

/// Refuses a verified push or URL verification whose signed `timestamp` is more than
/// [`PUSH_WINDOW_SECS`] from now. In safe mode `msg_signature` covers the body, yet a push
/// recorded once (a proxy's log, a captured request) would otherwise act again whenever it is
/// posted after its dedupe record is gone, or after a change of dedupe key; in plaintext mode
/// see [`bind_plaintext_push`]. The signature does not cover a verification's `echostr`, so a
/// verification URL seen once would otherwise make this endpoint echo any text of anyone's
/// choosing, for ever, as if it were WeChat's challenge (and write a store record each time).
/// Answered 403 like any refused push (never `success`, never the `echostr`: the request is
/// not taken in), logged as a security event and counted as [`PUSH_REFUSED`].
fn refuse_stale_push(app: &App, query: &PushQuery, kind: PushKind) -> Result<(), ApiError> {
    let now = app.clock.now_secs();
    let timestamp = query.timestamp_secs();
    if timestamp.is_some_and(|t| now.abs_diff(t) <= PUSH_WINDOW_SECS.unsigned_abs()) {
        return Ok(());
    }
    count_refused(app);
    let (what, next) = match kind {
        PushKind::Push { encrypted } => {
            tracing::warn!(
                security = true,
                timestamp = ?timestamp,
                encrypted,
                "push outside its time window refused"
            );
            ("push", "pushes are accepted only close to their time")
        }
        PushKind::UrlVerification => {
            tracing::warn!(
                security = true,
                timestamp = ?timestamp,
                "push URL verification outside its time window refused"
            );
            (
                "push URL verification",
                "a verification is accepted only close to its time: save the message push \
                 settings in the console again",
            )
        }
    };
    Err(ApiError::forbidden(format!(
        "{what} refused: its timestamp is more than {PUSH_WINDOW_SECS} s from now \
         ({next}; check this host's clock)"
    )))
}

/// Counts a push or URL verification refused as not WeChat's ([`PUSH_REFUSED`]).
fn count_refused(app: &App) {
    app.metrics.count(PUSH_REFUSED, 1, app.clock.now_ms());
}

/// Counts a refusal by [`push::parse`] or [`push::verify_url`] when the request carried a
/// signature that does not match our token: a forgery, or our `WX_PUSH_TOKEN` is not the
/// console's. A request without a signature, or with a query no sender of WeChat's would
/// write, is a scanner's and is not counted; our own settings at fault answer 503, which the
/// API's 5xx alarm counts.
fn count_if_forged(app: &App, e: &PushError) {
    if matches!(e, PushError::BadSignature | PushError::BadMsgSignature) {
        count_refused(app);
    }
}

/// Plaintext mode only. A push's `signature` covers token, timestamp and nonce but not the
/// body, so anyone who once saw a signed push URL (a proxy's log, say) could post any body
/// under it. A signed URL is therefore honoured only within [`PUSH_WINDOW_SECS`] of its
/// timestamp ([`refuse_stale_push`]), and only for the first body it came with (a hash of it
/// is kept until the window ends): WeChat's redelivery of the same body passes, another body
/// under a used signature is refused. The signature is keyed as verification reads it
/// (trimmed, lowercase): another spelling of a used signature is the same signature. Safe
/// mode needs none of this: `msg_signature` covers the body.
async fn bind_plaintext_push(app: &App, query: &PushQuery, body: &[u8]) -> Result<(), ApiError> {
    let Some((timestamp, signature)) = query.plaintext_binding() else {
        return Err(ApiError::forbidden("push refused: no signature"));
    };
    let key = format!("push-signature/{signature}");
    let digest = hex::encode(Sha256::digest(body));
    let store = app.store.as_ref();
    let mut bound = kv::get(store, &key).await?;
    if bound.is_none()
        && !kv::put_if(store, &key, &digest, timestamp + PUSH_WINDOW_SECS + 1, None).await?
    {
        // Another delivery under this signature was bound meanwhile.
        bound = kv::get(store, &key).await?;
    }
    match bound {
        Some(e) if e.value != digest => {
            count_refused(app);
            tracing::warn!(
                security = true,
                "plaintext push: another body under a signature already used; refused"
            );
            Err(ApiError::forbidden(
                "push refused: this signature was already used for another message",
            ))
        }
        _ => Ok(()),
    }
}

/// What a signature used by the console's URL verification is bound to: no body hashes to it,
/// so every push posted under that signature is refused.
const URL_VERIFICATION: &str = "url-verification";

/// The console's URL verification (GET) is signed exactly as a plaintext push's URL is, so a
/// seen verification URL would otherwise carry one body of anyone's choosing (see
/// [`bind_plaintext_push`]). Its signature is spent here for the push window. Not echoing
/// before that is stored: the console shows the failure and the merchant saves again.
async fn spend_url_verification(app: &App, query: &PushQuery) -> Result<(), ApiError> {
    let Some((timestamp, signature)) = query.plaintext_binding() else {
        return Ok(());
    };
    let until = timestamp.max(app.clock.now_secs()) + PUSH_WINDOW_SECS + 1;
    let key = format!("push-signature/{signature}");
    kv::put_if(app.store.as_ref(), &key, URL_VERIFICATION, until, None).await?;
    Ok(())
}

async fn apply(app: &App, event: &PushEvent) -> Result<(), ApiError> {
    match event {
        PushEvent::SpuAudit { body, .. } => on_spu_audit(app, body).await,
        PushEvent::SpuStatusUpdate { body, .. } => on_spu_status(app, body).await,
        PushEvent::OrderPay { body, .. } => on_order_pay(app, body).await,
        PushEvent::OrderSettle { body, .. } => on_order_settle(app, body).await,
        PushEvent::AfterSale { kind, body, .. } => {
            super::aftersale_sync::on_wechat_event(app, kind, body).await
        }
        PushEvent::WithdrawNotify { body, .. } => super::funds::on_withdraw_notify(app, body).await,
        PushEvent::OrderConfirm { body, .. } => on_order_confirm(app, body).await,
        PushEvent::OrderCancel { body, .. } => on_order_cancel(app, body).await,
        PushEvent::OrderRefund { body, .. } => on_order_refund(app, body).await,
        PushEvent::CategoryAudit { body, .. } => {
            use super::catalog_sync::{on_qualification_verdict, QualificationKind};
            on_qualification_verdict(app, QualificationKind::Category, body).await
        }
        PushEvent::BrandAudit { body, .. } => {
            use super::catalog_sync::{on_qualification_verdict, QualificationKind};
            on_qualification_verdict(app, QualificationKind::Brand, body).await
        }
        // Scene/account verdicts and the rest are recorded (for the merchant to read) and
        // acknowledged.
        _ => Ok(()),
    }
}

/// `open_product_spu_status_update`: the platform delisted a product (13) or restored it (5).
/// A delisting stops sales here at once, whoever says so: the safe direction. A restore puts
/// the product on sale only when WeChat's own record of it (`spu/get`) reads listed: the push
/// alone is not proof (in plaintext mode its signature does not cover the body), and a late
/// push can describe an earlier state — the product re-listed on its word alone sold what
/// the merchant had taken off sale. Only a product the platform's delisting took off sale
/// here is put back: one the merchant delisted stays delisted
/// ([`crate::domain::Product::restore_by_platform`]). Both are read back when the push is
/// lost ([`super::platform_delisting`]).
async fn on_spu_status(app: &App, body: &push::SpuStatusUpdate) -> Result<(), ApiError> {
    let Ok(id) = ProductId::parse(body.out_product_id.clone()) else {
        return Ok(());
    };
    match body.status {
        13 => {
            let found = platform_delisting::delist(app, &id, Via::Push).await?;
            not_stored_yet(&id, found)
        }
        5 => {
            let key = ProductKey::Out(id.to_string());
            let online = match app.wx.spu_get(&key, false).await {
                Ok(p) => p,
                Err(e) if e.errcode() == Some(super::catalog_sync::PRODUCT_NOT_FOUND) => {
                    tracing::warn!(security = true, out_product_id = %id, "listed push for a product WeChat does not have; ignored");
                    return Ok(());
                }
                Err(e) => {
                    return Err(ApiError::unavailable(
                        "WECHAT_UNAVAILABLE",
                        format!(
                            "could not read product {id} from WeChat ({e}); push the event again"
                        ),
                    ))
                }
            };
            if online.status != platform_delisting::STATUS_LISTED {
                tracing::warn!(security = true, out_product_id = %id, wx_status = online.status, "listed push, but WeChat's product is not listed; nothing applied");
                return Ok(());
            }
            let found = platform_delisting::restore(app, &id, Via::Push).await?;
            not_stored_yet(&id, found)
        }
        _ => Ok(()),
    }
}

/// `open_product_spu_audit`. The push says which product; what was decided is read from
/// WeChat's draft (`spu/get`, `need_edit_spu=1`: `edit_status` 4 approved, 3 rejected,
/// WECHAT_SHOP.md §3), because the push alone is not proof: in plaintext mode its signature
/// does not cover the body, and a late or replayed push can concern an earlier submission.
/// The verdict applies only to a submission we hold as under audit, and only when WeChat's
/// draft is that submission ([`audited_is_ours`]); an approved product's online version is
/// never taken away by it. An approval of an earlier submission puts that one on sale (it is
/// WeChat's online version now) and leaves ours under audit as the edit.
async fn on_spu_audit(app: &App, body: &push::SpuAudit) -> Result<(), ApiError> {
    let Ok(id) = ProductId::parse(body.out_product_id.clone()) else {
        return Ok(());
    };
    apply_wechat_verdict(app, &id, &body.reject_reason, None)
        .await
        .map(|_| ())
}

/// What WeChat's draft said of a submission we hold as under audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DraftRead {
    /// Still under audit, or nothing of ours to apply.
    Undecided,
    /// Approved or rejected: applied.
    Decided,
    /// Not under audit at WeChat (its review withdrawn there): ours is a draft not submitted.
    Withdrawn,
}

/// `edit_status` of a draft being edited: not submitted, or its review withdrawn
/// (`del_audit` returns a product to it; WECHAT_SHOP.md §3).
const EDIT_STATUS_EDITING: i64 = 1;

/// Applies the verdict WeChat's draft of `id` carries (`spu/get`, `need_edit_spu=1`) to the
/// submission we hold as under audit; nothing when WeChat has not decided. `pushed_reason` is
/// the push's reject reason, used when the draft carries none. Called for an audit push and
/// by the schedule's [`super::catalog_sync::sweep_audits`], for verdicts whose push never came.
///
/// `submitted_before` (the sweep's): a submission we last touched before then, whose draft
/// WeChat reads as being edited (`edit_status` 1), is not under audit at WeChat — its review
/// was withdrawn there (the console, another tool) or it never arrived — so it becomes a
/// draft not submitted, which the next upsert submits again. It used to be taken as
/// undecided: the product stayed AUDITING for good and an upsert of the same version uploaded
/// nothing. A push never does this: a submission on its way to WeChat reads as editing too.
pub(super) async fn apply_wechat_verdict(
    app: &App,
    id: &ProductId,
    pushed_reason: &str,
    submitted_before: Option<i64>,
) -> Result<DraftRead, ApiError> {
    let key = ProductKey::Out(id.to_string());
    let draft = match app.wx.spu_get(&key, true).await {
        Ok(d) => d,
        Err(e) if e.errcode() == Some(super::catalog_sync::PRODUCT_NOT_FOUND) => {
            tracing::warn!(security = true, out_product_id = %id, "audit event for a product WeChat does not have; ignored");
            return Ok(DraftRead::Undecided);
        }
        Err(e) => {
            tracing::warn!(out_product_id = %id, error = %e, "audit event: WeChat's draft unreadable; not acknowledged");
            return Err(ApiError::unavailable(
                "WECHAT_UNAVAILABLE",
                format!("could not read product {id} from WeChat ({e}); push the event again"),
            ));
        }
    };
    let wx_product_id = Some(draft.product_id).filter(|n| *n != 0);
    let reason = draft
        .audit_info
        .as_ref()
        .and_then(|a| a.reject_reason.clone())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| pushed_reason.to_owned());
    let edit_status = draft.edit_status;
    if !matches!(edit_status, 3 | 4) {
        tracing::info!(out_product_id = %id, edit_status, "audit event, but WeChat's draft is not decided (a later submission?); nothing to apply");
    }
    let applied = std::sync::atomic::AtomicBool::new(false);
    let withdrawn = std::sync::atomic::AtomicBool::new(false);
    update_product(app, id, |p| {
        applied.store(false, std::sync::atomic::Ordering::Relaxed);
        withdrawn.store(false, std::sync::atomic::Ordering::Relaxed);
        if p.draft_audit() != AuditStatus::Auditing {
            return;
        }
        if edit_status == EDIT_STATUS_EDITING
            && submitted_before.is_some_and(|t| p.audit_last_seen_ms() <= t)
        {
            tracing::warn!(out_product_id = %id, "WeChat's draft is not under audit (review withdrawn there); ours is a draft again");
            p.draft_not_submitted(
                "review withdrawn at WeChat: its draft is not under audit (edit_status 1); \
                 upsert it again to submit it"
                    .into(),
            );
            withdrawn.store(true, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        if !audited_is_ours(&draft, &p.draft()) {
            tracing::warn!(
                out_product_id = %id,
                edit_status,
                "audit verdict on an earlier submission than ours; ours waits for its own"
            );
            if edit_status == 4 {
                if let Some(approved) = wechat_version(&draft, &p.draft()) {
                    p.approve_earlier(approved);
                }
            }
            return;
        }
        applied.store(
            matches!(edit_status, 3 | 4),
            std::sync::atomic::Ordering::Relaxed,
        );
        match edit_status {
            4 => {
                p.approve_draft();
                if wx_product_id.is_some() {
                    p.wx_product_id = wx_product_id;
                }
            }
            3 => p.reject_draft(reason.clone()),
            _ => {}
        }
    })
    .await
    .map(|()| {
        if withdrawn.load(std::sync::atomic::Ordering::Relaxed) {
            DraftRead::Withdrawn
        } else if applied.load(std::sync::atomic::Ordering::Relaxed) {
            DraftRead::Decided
        } else {
            DraftRead::Undecided
        }
    })
}

/// WeChat's draft as our [`Content`], SKUs' attributes taken from `ours` (stock is set by
/// [`crate::domain::Product::approve_earlier`]); `None` if a SKU id is not one we could
/// have sent.
fn wechat_version(
    wx: &crate::shop::catalog::SpuInfo,
    ours: &crate::domain::Content,
) -> Option<crate::domain::Content> {
    let mut skus = Vec::with_capacity(wx.skus.len());
    for w in &wx.skus {
        let sku_id = crate::domain::SkuId::parse(w.out_sku_id.clone()).ok()?;
        let attrs = ours
            .skus
            .iter()
            .find(|k| k.sku_id == sku_id)
            .map(|k| k.attrs.clone())
            .unwrap_or_default();
        skus.push(crate::domain::Sku {
            sku_id,
            price: w.sale_price,
            market_price: w.market_price,
            stock: 0,
            wx_sku_id: w.sku_id,
            attrs,
        });
    }
    // We upload `path?product_id=…` (catalog_sync::spu): the stored path is what precedes it.
    let path = wx.path.split('?').next().unwrap_or_default().to_owned();
    Some(crate::domain::Content {
        title: wx.title.clone(),
        path,
        head_img: wx.head_img.clone(),
        third_cat_id: wx.third_cat_id,
        brand_id: wx.brand_id,
        qualification_pics: wx.qualification_pics.clone(),
        skus,
    })
}

/// Whether WeChat's draft (`spu/get`, `need_edit_spu=1`) is the version we hold as under audit: the
/// same title (but for surrounding blanks, which WeChat may trim) and the same SKUs at the same
/// sale prices. WeChat's draft is the last submission *WeChat received*; ours is stored before it
/// is sent, so a verdict on the one before (decided while ours was on its way) reads WeChat's draft
/// as that earlier version, and applied to ours it put on sale a version nobody audited — one
/// WeChat then rejected stayed on sale. Such a verdict is not ours: ours waits for its own push (or
/// the sweep). A draft read without a title or SKUs is taken as ours (UNVERIFIED that WeChat's
/// draft always carries them; the sandbox's does).
pub(super) fn audited_is_ours(
    wx: &crate::shop::catalog::SpuInfo,
    ours: &crate::domain::Content,
) -> bool {
    if wx.title.is_empty() || wx.skus.is_empty() {
        return true;
    }
    wx.title.trim() == ours.title.trim()
        && wx.skus.len() == ours.skus.len()
        && ours.skus.iter().all(|s| {
            wx.skus
                .iter()
                .any(|w| w.out_sku_id == s.sku_id.as_str() && w.sale_price == s.price)
        })
}

async fn update_product(
    app: &App,
    id: &ProductId,
    f: impl Fn(&mut crate::domain::Product),
) -> Result<(), ApiError> {
    let found = super::common::update_product(app, id, |p| {
        f(p);
        Ok(())
    })
    .await?;
    not_stored_yet(id, found)
}

/// An event about product `id` applied, `found` what the store held (`None`: nothing).
fn not_stored_yet<T>(id: &ProductId, found: Option<T>) -> Result<(), ApiError> {
    if found.is_none() {
        // catalogSync uploads a product (`spu/add`) before it stores it, so a quick verdict
        // (the sandbox audits in milliseconds) can overtake the store write. Acknowledged and
        // recorded, it would be lost and the product left `AUDITING` for good; unanswered, it
        // is pushed again (three attempts, 5 s apart), by when the product is stored.
        tracing::warn!(out_product_id = %id, "audit event for a product we do not have (yet); not acknowledged");
        return Err(ApiError::unavailable(
            "PRODUCT_NOT_STORED",
            format!("no product {id} here (yet); push the event again"),
        ));
    }
    Ok(())
}

/// `open_product_order_pay`: for fund_type=1, WeChat collected the money and this event is the
/// payment notification. The event alone is not proof — in plaintext push mode its signature
/// covers the token, timestamp and nonce, not the body, so a body can be replayed under any
/// signature once seen — so the payment is recorded only as WeChat's own record of the order
/// (`shop/order/get`) states it: paid, our amount, its transaction id. Orders WeChat Pay
/// collects itself are recorded from their signed payment notification only.
async fn on_order_pay(app: &App, body: &push::OrderPay) -> Result<(), ApiError> {
    let Ok(no) = OutTradeNo::parse(body.out_order_id.clone()) else {
        return Ok(());
    };
    let Some(order) = repo::get_order(app.store.as_ref(), &no).await? else {
        tracing::warn!(security = true, out_order_id = %no, "order pay event for an unknown order");
        return Ok(());
    };
    let order = order.value;
    if order.fund_type != FundType::SecondaryMerchant {
        return not_recorded(
            app,
            &no,
            "the order is paid through WeChat Pay, whose notification records it".into(),
        )
        .await;
    }
    let push = Some((body.transaction_id.as_str(), body.pay_time.as_str()));
    record_component_payment(app, &order, push)
        .await
        .map(|_| ())
}

/// A fund_type=1 order's payment recorded as WeChat's own order, read back
/// (`shop/order/get`), states it: `true` once recorded (now or before). Not paid there yet
/// (10, 11): 503, so WeChat pushes again. Closed unpaid there, or a record that contradicts
/// ours: `false`, kept as evidence ([`not_recorded`]). For the pay push and for a settlement
/// that arrives before it.
async fn record_component_payment(
    app: &App,
    order: &Order,
    push: Option<(&str, &str)>,
) -> Result<bool, ApiError> {
    use super::shop_orders::{query_component_payment, ComponentPayment};
    let no = &order.out_trade_no;
    let why = match query_component_payment(app, order, push).await? {
        ComponentPayment::Recorded(_) => return Ok(true),
        ComponentPayment::Unpaid { status: 10 | 11 } => {
            return Err(ApiError::unavailable(
                "NOT_PAID_AT_WECHAT",
                format!("WeChat's order {no} still reads unpaid; retry"),
            ))
        }
        ComponentPayment::Unpaid { status } => {
            format!("WeChat's order is in status {status} (closed unpaid)")
        }
        ComponentPayment::Refused(why) => why,
    };
    not_recorded(app, no, why).await?;
    Ok(false)
}

/// `open_product_order_settle`: WeChat settled a fund_type=1 order into the shop's funds
/// account. WeChat settles only what was paid, so an order that does not read paid here yet
/// (its pay push still being handled, delayed or lost) is first asked about as the pay push
/// would be: `shop/order/get` read back and the payment recorded, then the settlement. The
/// settlement used to be acknowledged and dropped in that case, so the order's money never
/// read withdrawable here. WeChat's order still reading unpaid: 503, so WeChat pushes again.
/// A payment WeChat's record does not bear out (closed unpaid there, another amount): kept as
/// evidence as for the pay push, acknowledged, nothing settled.
async fn on_order_settle(app: &App, body: &push::OrderSettle) -> Result<(), ApiError> {
    let Ok(no) = OutTradeNo::parse(body.out_order_id.clone()) else {
        return Ok(());
    };
    let Some(order) = repo::get_order(app.store.as_ref(), &no).await? else {
        return Ok(());
    };
    let order = order.value;
    if order.fund_type == FundType::SecondaryMerchant
        && !order.status.is_paid()
        && !record_component_payment(app, &order, None).await?
    {
        return Ok(());
    }
    transition_order(
        app,
        &no,
        |o, now| {
            o.settle(now).or_else(|e| {
                tracing::warn!(out_order_id = %o.out_trade_no, error = %e, "settle event for an unpaid order");
                Ok(Change::Unchanged)
            })
        },
        |_| None,
    )
    .await
    .map(|_| ())
}

/// An order pay event we do not record: a security warning, and the event kept as evidence
/// (acknowledged: WeChat's retries would say the same).
async fn not_recorded(app: &App, no: &OutTradeNo, why: String) -> Result<(), ApiError> {
    tracing::warn!(security = true, out_order_id = %no, why, "order pay event not recorded");
    let evidence = serde_json::json!({"out_order_id": no.as_str(), "why": why}).to_string();
    let key = format!("{no}/{}", app.clock.now_ms());
    super::common::keep_evidence(app, "order_pay_refused", key, evidence).await?;
    Ok(())
}

/// `open_product_order_confirm`: the user confirmed receipt in WeChat's order centre (or
/// WeChat confirmed it when the confirmation period ran out), which the merchant hears of
/// only here. As with the payment push, the body alone is not proof (plaintext mode does not
/// sign it), so receipt is recorded only as WeChat's order, read back with `shop/order/get`,
/// states it: status 100 (completed, WECHAT_SHOP.md §5.3), by [`record_wechat_receipt`] — the
/// same code the schedule's `receipts` phase runs for a push that never came.
async fn on_order_confirm(app: &App, body: &push::OrderRef) -> Result<(), ApiError> {
    let Some((no, _, wx)) =
        order_as_wechat_holds_it(app, body, "open_product_order_confirm").await?
    else {
        return Ok(());
    };
    if record_wechat_receipt(app, &no, wx.status).await? == WeChatReceipt::NotCompleted {
        tracing::warn!(security = true, out_order_id = %no, wx_status = wx.status, "receipt event, but WeChat's order is not completed; nothing recorded");
    }
    Ok(())
}

/// What [`record_wechat_receipt`] came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WeChatReceipt {
    /// WeChat's order is completed: ours is RECEIVED (now, or it was already).
    Recorded,
    /// WeChat's order is not completed (not 100): nothing changed.
    NotCompleted,
    /// WeChat's order is completed but ours cannot take the receipt (not shipped, refunded):
    /// kept as an `order_confirm_not_applied` event for a person, nothing changed.
    NotApplied,
}

/// Receipt of component order `no` as WeChat's own order, read back (`shop/order/get`), states
/// it (`wx_status`): at 100 (completed) ours takes the transition the user's own confirmation
/// takes (`queryOrder` `confirm`: SHIPPED → RECEIVED), without its `delivery/recieve` task —
/// WeChat has the receipt already. Run for the `open_product_order_confirm` push
/// ([`on_order_confirm`]) and by the schedule for one that never came
/// ([`super::order_sync::sweep_receipts`]). An order of ours that is not shipped (or already
/// refunded): WeChat's receipt is kept for a person (`order_confirm_not_applied`). `Err` only
/// when the store fails.
pub(super) async fn record_wechat_receipt(
    app: &App,
    no: &OutTradeNo,
    wx_status: i64,
) -> Result<WeChatReceipt, ApiError> {
    if wx_status != 100 {
        return Ok(WeChatReceipt::NotCompleted);
    }
    let received = transition_order(
        app,
        no,
        |o, now| {
            o.receive(now)
                .map_err(|e| ApiError::conflict("ORDER_NOT_SHIPPED", e.to_string()))
        },
        |_| None,
    )
    .await;
    match received {
        Ok(_) => {
            tracing::info!(out_order_id = %no, "receipt confirmed in WeChat recorded");
            Ok(WeChatReceipt::Recorded)
        }
        // Ours is not shipped (or already refunded): WeChat's receipt is kept for a person,
        // acknowledged — its retries would say the same.
        Err(e) if e.status == StatusCode::CONFLICT => {
            tracing::warn!(out_order_id = %no, error = %e, "receipt confirmed in WeChat does not apply to our order; kept");
            let evidence =
                serde_json::json!({"out_order_id": no.as_str(), "why": e.to_string()}).to_string();
            let key = format!("{no}/{}", app.clock.now_ms());
            super::common::keep_evidence(app, "order_confirm_not_applied", key, evidence).await?;
            Ok(WeChatReceipt::NotApplied)
        }
        Err(e) => Err(e),
    }
}

/// An order push's order, ours and WeChat's own record of it (`shop/order/get` by our
/// number), for the order events (`event`: the push's name) that act only on what WeChat's
/// record states. `None` when there is nothing to act on — an `out_order_id` that is not one
/// of ours in form, an order we do not have, one we never put in the trading component, one
/// WeChat says it does not hold (1010011), or another `order_id` than WeChat's: logged as a
/// security event and acknowledged, since WeChat's retries would say the same. WeChat
/// unreadable answers 503, so WeChat pushes the event again.
async fn order_as_wechat_holds_it(
    app: &App,
    body: &push::OrderRef,
    event: &'static str,
) -> Result<Option<(OutTradeNo, Order, OrderInfo)>, ApiError> {
    let Ok(no) = OutTradeNo::parse(body.out_order_id.clone()) else {
        tracing::warn!(
            security = true,
            event,
            "order event with an out_order_id that is not ours; ignored"
        );
        return Ok(None);
    };
    let Some(order) = repo::get_order(app.store.as_ref(), &no).await? else {
        tracing::warn!(security = true, event, out_order_id = %no, "order event for an unknown order; ignored");
        return Ok(None);
    };
    let order = order.value;
    if !order.at_wechat().component_order {
        tracing::warn!(security = true, event, out_order_id = %no, "order event for an order not in the trading component; ignored");
        return Ok(None);
    }
    let key = crate::shop::types::OrderKey::Out(no.to_string());
    let wx = match app.wx.order_get(&key, order.openid.as_str()).await {
        Ok(wx) => wx,
        Err(e) if e.errcode() == Some(ERRCODE_ORDER_NOT_FOUND) => {
            tracing::warn!(security = true, event, out_order_id = %no, "order event for an order WeChat does not hold; ignored");
            return Ok(None);
        }
        Err(e) => {
            return Err(ApiError::unavailable(
                "WECHAT_UNAVAILABLE",
                format!("cannot read order {no} with shop/order/get ({e}); push the event again"),
            ))
        }
    };
    if body.order_id.is_some_and(|id| id != 0 && id != wx.order_id) {
        tracing::warn!(security = true, event, out_order_id = %no, pushed_order_id = ?body.order_id, wx_order_id = wx.order_id, "order event naming another WeChat order than ours; ignored");
        return Ok(None);
    }
    Ok(Some((no, order, wx)))
}

/// Where the order events keep what WeChat's order says and ours cannot follow, for a person
/// (paged once per order and event): a cancel of an order we hold paid, a full refund our
/// refunds do not account for.
pub const ORDER_EVENT_MISMATCH_EVENTS: &str = "order_event_mismatch";

/// Keeps `body` about order `no` under [`ORDER_EVENT_MISMATCH_EVENTS`] (key: the order and the
/// event, so WeChat's retries and later pushes of it page once) and pages a person the first
/// time.
async fn keep_and_page(
    app: &App,
    no: &OutTradeNo,
    event: &str,
    body: serde_json::Value,
) -> Result<(), ApiError> {
    let key = format!("{no}/{event}");
    if super::common::keep_evidence(app, ORDER_EVENT_MISMATCH_EVENTS, key, body.to_string()).await?
    {
        super::common::page_a_person(app);
    }
    Ok(())
}

/// `open_product_order_cancel`: WeChat cancelled the component order — the user in WeChat's
/// order centre, WeChat on an unpaid timeout, or our own close (`shop/order/close`, the
/// cancel of `shop/order/pay`) coming back. Believed only as `shop/order/get` states it (181
/// or 250, WECHAT_SHOP.md §5.3): the body alone is not proof, and a late push can describe an
/// earlier state. Then, by our order:
///
/// - unpaid (CREATED, PREPAID): closed as the user's close and the unpaid sweep close one —
///   a PREPAID order's payment is asked of WeChat first (`ask_wechat_if_paid`; unanswered:
///   503, WeChat pushes again), then [`close_and_release`](super::common::close_and_release):
///   its stock back on sale, its WeChat Pay order closed by the outbox, which records a
///   payment made meanwhile instead;
/// - paid (or just found paid): nothing changes — the money is real, and only a person can
///   tell a refund from a delivery — kept as an [`ORDER_EVENT_MISMATCH_EVENTS`] event and paged;
/// - closed already: nothing (our own close, a retry).
///
/// WeChat's order not cancelled: nothing, logged as a security event.
async fn on_order_cancel(app: &App, body: &push::OrderRef) -> Result<(), ApiError> {
    const EVENT: &str = "open_product_order_cancel";
    let Some((no, order, wx)) = order_as_wechat_holds_it(app, body, EVENT).await? else {
        return Ok(());
    };
    if !crate::shop::order::is_cancelled(wx.status) {
        tracing::warn!(security = true, out_order_id = %no, wx_status = wx.status, "cancel event, but WeChat's order is not cancelled; nothing changed");
        return Ok(());
    }
    if order.status == OrderStatus::Closed {
        tracing::info!(out_order_id = %no, "cancel event for an order closed here already");
        return Ok(());
    }
    let order = if order.status == OrderStatus::Prepaid {
        match super::query_order::ask_wechat_if_paid(app, &order).await {
            Ok(updated) => updated.unwrap_or(order),
            Err(e) if e.status == StatusCode::SERVICE_UNAVAILABLE => {
                return Err(ApiError::unavailable(
                    "ORDER_STATUS_UNKNOWN",
                    format!(
                        "WeChat Pay could not say whether order {no} was paid, so it was not \
                         closed; push the event again"
                    ),
                ));
            }
            // A signed answer that contradicts the order (logged where it was read): nothing
            // is closed on it, as the sweep closes nothing then.
            Err(e) => {
                tracing::warn!(security = true, out_order_id = %no, error = %e, "cancel event: WeChat Pay's answer about the payment contradicts the order; not closed");
                return Ok(());
            }
        }
    } else {
        order
    };
    if order.status == OrderStatus::Closed {
        // Asking found WeChat's order cancelled and closed ours already (`ask_wechat_if_paid`).
        tracing::info!(out_order_id = %no, wx_status = wx.status, "cancel event: WeChat's order is cancelled; ours closed, its stock given back");
        return Ok(());
    }
    if order.status.is_unpaid_open() {
        let closed =
            super::common::close_and_release(app, &no, super::query_order::CANCELLED_IN_WECHAT)
                .await?;
        tracing::info!(out_order_id = %no, status = closed.status.as_str(), wx_status = wx.status, "cancel event: WeChat's order is cancelled; ours closed, its stock given back");
        return Ok(());
    }
    tracing::error!(security = true, out_order_id = %no, status = order.status.as_str(), wx_status = wx.status, "cancel event: WeChat's order is cancelled but ours is paid; nothing changed, a person must look");
    cancelled_while_paid(app, &order, wx.status, "the open_product_order_cancel push").await
}

/// WeChat's component order reads cancelled (`wx_status` 181 or 250) while ours is paid — a
/// payment that came after the order was closed (ours: its close cancelled the component
/// order; WeChat's: its cancel push closed ours), found by the cancel push or by a sync
/// WeChat refuses for it (`shop/order/pay`, `delivery/send`, `delivery/recieve`,
/// `ecaftersale/add`): kept as an [`ORDER_EVENT_MISMATCH_EVENTS`] event under the
/// cancel's key, so whichever finds it first pages and the other does not. `found_by` says
/// which. WeChat does not document taking a cancelled order back (`shop/order/add` replaces
/// an order "if it exists"; the sandbox refuses anything past 10, and a re-added order's
/// payment would have to be synced to an order WeChat's order centre never showed paid —
/// UNVERIFIED), so it is not added again: the order's shipment, receipt and after-sales
/// cannot be mirrored in the trading component (its after-sales' syncs read this event and
/// ask WeChat nothing: [`known_cancelled_while_paid`]), and a person decides between shipping
/// it here only and refunding it.
pub(super) async fn cancelled_while_paid(
    app: &App,
    order: &Order,
    wx_status: i64,
    found_by: &str,
) -> Result<(), ApiError> {
    const EVENT: &str = "open_product_order_cancel";
    let no = &order.out_trade_no;
    keep_and_page(
        app,
        no,
        EVENT,
        serde_json::json!({
            "out_order_id": no.as_str(), "event": EVENT, "wx_status": wx_status,
            "status": order.status.as_str(), "transaction_id": order.transaction_id,
            "total_fee": order.total.get(), "refunded": order.refunded.get(),
            "found_by": found_by,
            "what_to_do": "WeChat's trading-component order reads cancelled while ours is \
                paid (the payment came after the order was closed): WeChat does not take a \
                cancelled order back, so its shipment, receipt and after-sales are not mirrored \
                there. Check the payment in the WeChat Pay merchant platform, then either ship \
                it (POST /admin/orderSync ship; it ships here only) or refund it in full in the \
                merchant platform (its notification records it here as a refund made by hand)"}),
    )
    .await
}

/// Whether order `no` is known to be paid here while WeChat's component order is cancelled:
/// [`cancelled_while_paid`] kept its event (one store read). Nothing of such an order can be
/// mirrored in the trading component, so its after-sales are not sent there.
pub(super) async fn known_cancelled_while_paid(
    app: &App,
    no: &OutTradeNo,
) -> Result<bool, crate::store::StoreError> {
    let key = format!("{no}/open_product_order_cancel");
    Ok(
        repo::get_event(app.store.as_ref(), ORDER_EVENT_MISMATCH_EVENTS, &key)
            .await?
            .is_some(),
    )
}

/// `open_product_order_refund`: every item of the order went back through after-sales
/// (order fully refunded, per a PHP plugin's comment — UNVERIFIED beyond that). Believed only
/// as `shop/order/get` states it (200), and never a source of amounts: the push names none.
///
/// Our refunds recorded already covering the total: nothing. Otherwise the pushes about the
/// order's after-sales were lost or have not come yet, so what they would have said is read
/// back now ([`catch_up_order`](super::aftersale_sync::catch_up_order): the schedule's
/// after-sale sweeps for this order, without their grace period) — a refund WeChat made of a
/// secondary-merchant order recorded from WeChat's after-sale, a request opened, edited or
/// cancelled there taken in. That is the design because each of those paths already checks
/// WeChat's after-sale against ours and records refunds once whichever path comes first; a
/// record written from this push would be a second, weaker path, and pages alone would call
/// a person to do by hand what those paths do. What is still short after that, beyond our
/// refunds still under way (WeChat's order reads 200 once our approval is mirrored, before
/// WeChat Pay pays: their notification, the refund task or the refund sweep completes them)
/// and those that failed or are held (REFUND_FAILED, REFUND_ABNORMAL: each paged a person
/// when it got there, so they are not paged again here), is money WeChat says went back that
/// our books do not show (a refund made elsewhere, an order we never recorded paid): kept as
/// an [`ORDER_EVENT_MISMATCH_EVENTS`] event and paged. WeChat unreadable: 503, WeChat pushes
/// again.
async fn on_order_refund(app: &App, body: &push::OrderRef) -> Result<(), ApiError> {
    const EVENT: &str = "open_product_order_refund";
    let Some((no, order, wx)) = order_as_wechat_holds_it(app, body, EVENT).await? else {
        return Ok(());
    };
    if wx.status != 200 {
        tracing::warn!(security = true, out_order_id = %no, wx_status = wx.status, "refund event, but WeChat's order is not refunded in full; nothing changed");
        return Ok(());
    }
    if order.status.is_paid() && order.refundable() == Fen::ZERO {
        tracing::info!(out_order_id = %no, "refund event for an order refunded in full here already");
        return Ok(());
    }
    let caught = super::aftersale_sync::catch_up_order(app, &no).await?;
    let Some(order) = repo::get_order(app.store.as_ref(), &no).await? else {
        return Ok(());
    };
    let order = order.value;
    if order.status.is_paid() && order.refundable() == Fen::ZERO {
        tracing::warn!(out_order_id = %no, applied = caught.applied, "refund event: WeChat's after-sales read back account for the refund in full (their pushes never came)");
        return Ok(());
    }
    let short = order.refundable().get() - caught.in_flight.get();
    if order.status.is_paid() && short <= 0 {
        tracing::info!(out_order_id = %no, applied = caught.applied, in_flight = caught.in_flight.get(), "refund event: our refunds under way (or failed, held: paged on their own) cover the rest");
        return Ok(());
    }
    tracing::error!(security = true, out_order_id = %no, status = order.status.as_str(), refunded = order.refunded.get(), in_flight = caught.in_flight.get(), total_fee = order.total.get(), "refund event: WeChat's order is refunded in full, our refunds do not account for it; a person must look");
    keep_and_page(
        app,
        &no,
        EVENT,
        serde_json::json!({
            "out_order_id": no.as_str(), "event": EVENT, "wx_status": wx.status,
            "status": order.status.as_str(), "total_fee": order.total.get(),
            "refunded": order.refunded.get(), "in_flight": caught.in_flight.get(),
            "what_to_do": "WeChat's order reads refunded in full; ours does not: compare the \
                order's after-sales in WeChat (ecaftersale) and the refunds in the merchant \
                platform with aftersaleSync list, and record what was paid (mark_refunded)"}),
    )
    .await
}
