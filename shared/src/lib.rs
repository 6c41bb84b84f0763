//! `wxshop` — a WeChat Mini Program shop back end: WeChat Pay v2, the trading component,
//! message push, durable state. Every Lambda function and `wxlocal` run this same code.
//!
//! Modules: one per outside party (`pay`, `shop`, `push`), one per concern (`domain`, `store`,
//! `outbox`, `session`, `config`, `time`, `metrics`, `urls`), and `handlers` with one module per
//! function.

pub mod app;
#[cfg(any(feature = "dynamodb", feature = "lambda"))]
pub mod aws;
pub mod config;
pub mod domain;
pub mod handlers;
pub mod http;
#[cfg(feature = "lambda")]
pub mod lambda;
pub mod metrics;
pub mod outbox;
pub mod pay;
pub mod push;
pub mod session;
pub mod shop;
pub mod store;
pub mod time;
pub mod urls;
