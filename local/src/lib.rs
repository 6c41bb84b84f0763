//! `wxlocal`: the whole wxshop stack on one machine — the gateway over the same handlers the
//! Lambda functions run, a faithful WeChat sandbox, and a demo that walks a purchase.

pub mod demo;
pub mod gateway;
pub mod lock;
pub mod sandbox;
