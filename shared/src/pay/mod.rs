//! WeChat Pay merchant API v2 (XML): signatures, the XML codec, the client, notifications.

pub mod sign;
pub mod xml;

pub use sign::{sign, sign_in_place, verify, Fields, SignType, VerifyError};
pub use xml::XmlError;
