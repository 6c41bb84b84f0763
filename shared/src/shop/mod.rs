//! WeChat platform (api.weixin.qq.com): access token, login, trading component client.
//!
//! - [`token`]: the access token, cached per container and shared across containers through
//!   the store (compare-and-set), refreshed ahead of expiry, never stampeded.
//! - [`client`]: [`WxClient`] — `post_json` with the envelope, one token retry, classed
//!   errors ([`error`]); `code2session`.
//! - API families with their typed requests/replies: [`account`] (register + account),
//!   [`catalog`] (categories, images, audits, SPUs, scene check), [`order`] (orders,
//!   delivery), [`aftersale`] (EC and legacy), [`funds`] (secondary-merchant funds).
//! - [`serde_num`]: ids beyond 2^53 and numbers that arrive as strings; yuan → fen.

pub mod account;
pub mod aftersale;
pub mod catalog;
pub mod client;
pub mod error;
pub mod funds;
pub mod order;
pub mod serde_num;
pub mod token;
pub mod types;

pub use client::{Code2Session, WxClient, WxClientConfig};
pub use error::{WxError, WxErrorKind};
pub use token::{AccessToken, TokenManager};
pub use types::{AddressInfo, AfterSaleKey, MediaItem, OrderKey, ProductKey};
