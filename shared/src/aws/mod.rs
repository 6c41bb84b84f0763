//! What the Lambda binaries need of AWS, without `aws-config` or a second HTTP stack.
//!
//! Lambda hands a function everything in its environment: the role's credentials in
//! `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN` and the region in
//! `AWS_REGION`. Reading those directly (instead of `aws-config`'s provider chain, which also
//! drags in the STS client, profile files and IMDS) and sending every AWS request through the
//! reqwest client the WeChat clients already use ([`http::ReqwestHttpClient`]) keeps the
//! binaries to one HTTP/TLS stack — see "Cold start, size, memory" in `docs/PERFORMANCE.md`.
//!
//! - [`http`]: the DynamoDB SDK's HTTP client, over reqwest.
//! - [`secrets`]: the one Secrets Manager call made at cold start, signed with SigV4.

#[cfg(feature = "dynamodb")]
pub mod http;
#[cfg(feature = "lambda")]
pub mod secrets;

use aws_credential_types::Credentials;

/// Where the credentials came from (shown by the SDK in debug output, never the secret).
const PROVIDER_NAME: &str = "wxshop-environment";

/// A non-empty environment variable.
pub(crate) fn env(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// `AWS_REGION`, else `AWS_DEFAULT_REGION`.
pub fn region_from_env() -> Option<String> {
    env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION"))
}

/// The credentials Lambda puts in the environment (session token optional), or `None` when
/// the key id or the secret key is missing.
pub fn credentials_from_env() -> Option<Credentials> {
    let id = env("AWS_ACCESS_KEY_ID")?;
    let secret = env("AWS_SECRET_ACCESS_KEY")?;
    Some(Credentials::new(
        id,
        secret,
        env("AWS_SESSION_TOKEN"),
        None,
        PROVIDER_NAME,
    ))
}

/// The endpoint override for a service, as the SDKs read it: `AWS_ENDPOINT_URL_<SERVICE>`
/// (e.g. `DYNAMODB`, `SECRETS_MANAGER`), else `AWS_ENDPOINT_URL`.
pub fn endpoint_from_env(service: &str) -> Option<String> {
    env(&format!("AWS_ENDPOINT_URL_{service}")).or_else(|| env("AWS_ENDPOINT_URL"))
}
