//! The DynamoDB SDK's HTTP client: [`ReqwestHttpClient`] sends the SDK's (already signed)
//! requests with reqwest, so the SDK needs neither its legacy hyper 0.14 client nor a second
//! rustls.
//!
//! Transport failures map to the SDK's [`ConnectorError`] kinds so that its retry policy
//! works as before: timeouts are `timeout`, connect/body/IO failures are `io` (both retried as
//! transient), anything else is `other`.
//!
//! This client bounds only the connect; the attempt and operation timeouts are the SDK's,
//! set where the client is configured (`store::dynamo::DynamoStore::connect`), so a stalled
//! response fails the call instead of holding it until the Lambda timeout.

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use bytes::Bytes;
use std::time::Duration;

/// How long a TCP (+TLS) connect to an AWS endpoint may take, as the SDK's default (3.1 s).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(3100);

/// An [`HttpClient`] for the AWS SDK over one shared [`reqwest::Client`] (connection pool).
#[derive(Clone, Debug)]
pub struct ReqwestHttpClient {
    client: reqwest::Client,
}

impl ReqwestHttpClient {
    /// A client with its own pool (rustls, HTTP/1.1 or HTTP/2 by ALPN).
    pub fn new() -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .build()?;
        Ok(ReqwestHttpClient { client })
    }
}

impl HttpClient for ReqwestHttpClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(ReqwestConnector {
            client: self.client.clone(),
            read_timeout: settings.read_timeout(),
        })
    }
}

/// One operation's connector: the shared client plus the operation's read timeout.
#[derive(Clone, Debug)]
struct ReqwestConnector {
    client: reqwest::Client,
    read_timeout: Option<Duration>,
}

impl HttpConnector for ReqwestConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let built = to_reqwest(&self.client, &request, self.read_timeout);
        let client = self.client.clone();
        HttpConnectorFuture::new(async move {
            let response = client.execute(built?).await.map_err(classify)?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.bytes().await.map_err(classify)?;
            let mut out = http::Response::new(SdkBody::from(body));
            *out.status_mut() = status;
            *out.headers_mut() = headers;
            HttpResponse::try_from(out).map_err(|e| ConnectorError::other(e.into(), None))
        })
    }
}

/// The SDK's request as a reqwest request. Bodies are in memory for every DynamoDB operation;
/// a streaming body is refused rather than silently sent empty.
fn to_reqwest(
    client: &reqwest::Client,
    request: &HttpRequest,
    read_timeout: Option<Duration>,
) -> Result<reqwest::Request, ConnectorError> {
    let method = reqwest::Method::from_bytes(request.method().as_bytes())
        .map_err(|e| ConnectorError::user(e.into()))?;
    let body = request
        .body()
        .bytes()
        .map(Bytes::copy_from_slice)
        .ok_or_else(|| ConnectorError::user("streaming request bodies are not supported".into()))?;
    let mut builder = client.request(method, request.uri());
    for (name, value) in request.headers() {
        // reqwest sets the length from the body; a second header would be a malformed request.
        if !name.eq_ignore_ascii_case("content-length") {
            builder = builder.header(name, value);
        }
    }
    // reqwest has no per-read timeout: the SDK's read timeout (unset by default) bounds the
    // whole exchange instead.
    if let Some(timeout) = read_timeout {
        builder = builder.timeout(timeout);
    }
    builder
        .body(body)
        .build()
        .map_err(|e| ConnectorError::user(e.into()))
}

fn classify(e: reqwest::Error) -> ConnectorError {
    if e.is_timeout() {
        ConnectorError::timeout(e.into())
    } else if e.is_connect() || e.is_body() || e.is_request() || e.is_decode() {
        ConnectorError::io(e.into())
    } else {
        ConnectorError::other(e.into(), None)
    }
}
