//! Secrets Manager's `GetSecretValue`, the one call a cold start makes to it: a SigV4-signed
//! JSON POST over reqwest, instead of the `aws-sdk-secretsmanager` client and its runtime.
//!
//! Endpoint: `AWS_ENDPOINT_URL_SECRETS_MANAGER` (else `AWS_ENDPOINT_URL`, as the SDKs read
//! them), else `https://secretsmanager.<region>.amazonaws.com` (`.amazonaws.com.cn` in China).
//! Errors are one line naming the service's error code and message, or — when no answer came
//! (transport failure, stalled connection) — the endpoint, the attempts and what to check;
//! they never contain the secret.
//!
//! Bounded in time: each attempt [`ATTEMPT_TIMEOUT`], the whole call [`OPERATION_TIMEOUT`],
//! so a cold start whose secret does not come fails with that reason, in time to report it.

use super::{credentials_from_env, endpoint_from_env, region_from_env};
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use serde_json::Value;
use std::time::{Duration, SystemTime};

const SERVICE: &str = "secretsmanager";
const TARGET: &str = "secretsmanager.GetSecretValue";
const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
/// How long one attempt may take, connect and answer included. Secrets Manager answers in
/// tens of milliseconds; an attempt with no answer after 2 s is a stalled connection or an
/// unreachable endpoint.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the whole call may take, its retries and back-off included: the cold start fails
/// with a reason instead of hanging until the Lambda timeout (payCallback's 5 s the shortest),
/// when Lambda would only say "Task timed out". The DynamoDB client has the same 2 s / 3 s
/// (`store::dynamo::ATTEMPT_TIMEOUT` / `OPERATION_TIMEOUT`).
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(3);
/// Attempts on throttling, 5xx and transport failures (like the SDK's standard retry mode),
/// as many as fit in [`OPERATION_TIMEOUT`].
const ATTEMPTS: u32 = 3;

/// The regional endpoint: `amazonaws.com`, or `amazonaws.com.cn` in the China partition
/// (`cn-north-1`, `cn-northwest-1`), where the other domain does not answer.
fn default_endpoint(region: &str) -> String {
    let suffix = if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    };
    format!("https://{SERVICE}.{region}.{suffix}")
}

/// The `SecretString` of `secret_id` (name or ARN); `Ok(None)` for a binary-only secret.
/// `Err` is a one-line reason, without the secret.
pub async fn get_secret_string(secret_id: &str) -> Result<Option<String>, String> {
    let region = region_from_env().ok_or("no AWS region configured (set AWS_REGION)".to_owned())?;
    let credentials = credentials_from_env().ok_or(
        "no AWS credentials in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)"
            .to_owned(),
    )?;
    let identity: Identity = credentials.into();
    let url = endpoint_from_env("SECRETS_MANAGER").unwrap_or_else(|| default_endpoint(&region));
    get_from(&url, &region, &identity, secret_id).await
}

/// [`get_secret_string`] at `url`, within [`OPERATION_TIMEOUT`].
async fn get_from(
    url: &str,
    region: &str,
    identity: &Identity,
    secret_id: &str,
) -> Result<Option<String>, String> {
    let deadline = tokio::time::Instant::now() + OPERATION_TIMEOUT;
    let body = serde_json::json!({ "SecretId": secret_id }).to_string();
    let client = reqwest::Client::builder()
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;

    let mut last = String::new();
    // Whether the last attempt got no answer at all (rather than an error answer).
    let mut unanswered = false;
    // Whether the attempts stopped for want of time rather than of attempts.
    let mut out_of_time = false;
    let mut attempts = 0;
    while attempts < ATTEMPTS {
        if attempts > 0 {
            let pause = Duration::from_millis(50 << attempts);
            if deadline.saturating_duration_since(tokio::time::Instant::now()) <= pause {
                out_of_time = true;
                break;
            }
            tokio::time::sleep(pause).await;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            out_of_time = true;
            break;
        }
        attempts += 1;
        let limit = left.min(ATTEMPT_TIMEOUT);
        let attempt = attempt(&client, identity, region, url, &body);
        let (status, text) = match tokio::time::timeout(limit, attempt).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(AttemptError::Fatal(why))) => return Err(why),
            Ok(Err(AttemptError::Transport(why))) => {
                (last, unanswered) = (why, true);
                continue;
            }
            Err(_) => {
                let ms = limit.as_millis();
                (last, unanswered) = (format!("no answer within {ms} ms"), true);
                continue;
            }
        };
        if status.is_success() {
            let value: Value = serde_json::from_str(&text)
                .map_err(|_| "Secrets Manager answered with invalid JSON".to_owned())?;
            return Ok(value
                .get("SecretString")
                .and_then(Value::as_str)
                .map(str::to_owned));
        }
        let (code, message) = service_error(&text);
        (last, unanswered) = (
            format!("{code}: {message} (HTTP {})", status.as_u16()),
            false,
        );
        let retryable = status.is_server_error()
            || status.as_u16() == 429
            || code.contains("Throttling")
            || code.contains("TooManyRequests");
        if !retryable {
            return Err(last);
        }
    }
    if !unanswered {
        return Err(last); // Secrets Manager's own error, as it answered it
    }
    let within = if out_of_time {
        format!(" within {} s", OPERATION_TIMEOUT.as_secs())
    } else {
        String::new()
    };
    Err(format!(
        "GetSecretValue at {url} got no answer{within} ({attempts} attempt(s); the last: \
         {last}): check that the function can reach Secrets Manager (in a VPC: a NAT gateway \
         or a Secrets Manager VPC endpoint) and, if set, AWS_ENDPOINT_URL_SECRETS_MANAGER or \
         AWS_ENDPOINT_URL"
    ))
}

/// Why an attempt got no answer to read.
enum AttemptError {
    /// Worth another attempt (the connection failed or broke).
    Transport(String),
    /// Would fail again the same way.
    Fatal(String),
}

/// One signed `GetSecretValue`: the answer's status and body.
async fn attempt(
    client: &reqwest::Client,
    identity: &Identity,
    region: &str,
    url: &str,
    body: &str,
) -> Result<(reqwest::StatusCode, String), AttemptError> {
    let headers = [("content-type", CONTENT_TYPE), ("x-amz-target", TARGET)];
    let signed = sign_headers(identity, region, url, &headers, body.as_bytes())
        .map_err(AttemptError::Fatal)?;
    let mut request = client.post(url).body(body.to_owned());
    for (name, value) in headers
        .iter()
        .copied()
        .chain(signed.iter().map(|(n, v)| (n.as_str(), v.as_str())))
    {
        request = request.header(name, value);
    }
    let response = request.send().await.map_err(|e| {
        AttemptError::Transport(format!("cannot reach Secrets Manager at {url}: {e}"))
    })?;
    let status = response.status();
    let text = response.text().await.map_err(|e| {
        AttemptError::Transport(format!("cannot read the Secrets Manager response: {e}"))
    })?;
    Ok((status, text))
}

/// The SigV4 headers (`authorization`, `x-amz-date`, `x-amz-security-token`) for the POST.
fn sign_headers(
    identity: &Identity,
    region: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Vec<(String, String)>, String> {
    let params = v4::SigningParams::builder()
        .identity(identity)
        .region(region)
        .name(SERVICE)
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| format!("cannot sign the request: {e}"))?
        .into();
    let signable = SignableRequest::new(
        "POST",
        url,
        headers.iter().copied(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| format!("cannot sign the request: {e}"))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| format!("cannot sign the request: {e}"))?
        .into_parts();
    Ok(instructions
        .headers()
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect())
}

/// `{"__type": "…#Code", "message": "…"}` → (code, message); the body is otherwise not echoed.
fn service_error(text: &str) -> (String, String) {
    let value: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let code = value
        .get("__type")
        .and_then(Value::as_str)
        .map(|t| t.rsplit('#').next().unwrap_or(t).to_owned())
        .unwrap_or_else(|| "UnknownError".to_owned());
    let message = value
        .get("message")
        .or_else(|| value.get("Message"))
        .and_then(Value::as_str)
        .unwrap_or("no message")
        .to_owned();
    (code, message)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_default_endpoint_follows_the_partition() {
        assert_eq!(
            super::default_endpoint("ap-east-1"),
            "https://secretsmanager.ap-east-1.amazonaws.com"
        );
        assert_eq!(
            super::default_endpoint("cn-north-1"),
            "https://secretsmanager.cn-north-1.amazonaws.com.cn"
        );
        assert_eq!(
            super::default_endpoint("cn-northwest-1"),
            "https://secretsmanager.cn-northwest-1.amazonaws.com.cn"
        );
    }

    use super::*;

    #[test]
    fn service_errors_name_code_and_message() {
        let (code, message) = service_error(
            r#"{"__type":"com.amazonaws.secretsmanager#ResourceNotFoundException","Message":"Secrets Manager can't find the specified secret."}"#,
        );
        assert_eq!(code, "ResourceNotFoundException");
        assert_eq!(message, "Secrets Manager can't find the specified secret.");
        assert_eq!(service_error("<html>").0, "UnknownError");
    }

    /// An endpoint that accepts connections and never answers; with `headers`, it reads the
    /// request and answers the status line and headers of a 200, and never the body.
    async fn stalled(headers: bool) -> (String, tokio::task::JoinHandle<()>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut socket, _)) = listener.accept().await {
                if headers {
                    let mut request = [0u8; 4096];
                    let _ = socket.read(&mut request).await;
                    let _ = socket
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{")
                        .await;
                }
                held.push(socket); // never (fully) answered
            }
        });
        (format!("http://{addr}"), task)
    }

    /// GIVEN a Secrets Manager endpoint that accepts the connection and never answers (or
    /// answers the headers and never the body) WHEN a cold start reads the secret THEN it fails
    /// within the operation timeout, saying what got no answer and what to check — not after
    /// the Lambda timeout (payCallback's is 5 s), nor after 3 attempts of 5 s each.
    #[tokio::test]
    async fn a_stalled_secrets_manager_fails_within_the_operation_timeout() {
        let identity: Identity =
            aws_credential_types::Credentials::new("AKID", "SECRET", None, None, "t").into();
        for headers in [false, true] {
            let (url, server) = stalled(headers).await;
            let started = std::time::Instant::now();
            let outcome = tokio::time::timeout(
                Duration::from_secs(20),
                get_from(&url, "us-east-1", &identity, "arn:aws:secretsmanager:x"),
            )
            .await;
            let took = started.elapsed();
            server.abort();
            let err = outcome
                .expect("the read gave up by itself")
                .expect_err("no secret without an answer");
            assert!(
                took < OPERATION_TIMEOUT + Duration::from_millis(500),
                "headers {headers}: took {took:?}"
            );
            for needle in [
                url.as_str(),
                "GetSecretValue",
                "no answer within 3 s",
                "VPC",
            ] {
                assert!(
                    err.contains(needle),
                    "headers {headers}: {needle:?} in {err}"
                );
            }
        }
    }

    #[test]
    fn signing_adds_authorization_and_date() {
        let identity: Identity = aws_credential_types::Credentials::new(
            "AKID",
            "SECRET",
            Some("TOKEN".into()),
            None,
            "t",
        )
        .into();
        let headers = [("content-type", CONTENT_TYPE), ("x-amz-target", TARGET)];
        let signed = sign_headers(
            &identity,
            "us-east-1",
            "https://secretsmanager.us-east-1.amazonaws.com",
            &headers,
            b"{}",
        )
        .unwrap();
        let names: Vec<&str> = signed.iter().map(|(n, _)| n.as_str()).collect();
        assert!(names.contains(&"authorization"), "{names:?}");
        assert!(names.contains(&"x-amz-date"), "{names:?}");
        assert!(names.contains(&"x-amz-security-token"), "{names:?}");
        let auth = &signed.iter().find(|(n, _)| n == "authorization").unwrap().1;
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AKID/"),
            "{auth}"
        );
        assert!(
            auth.contains("/us-east-1/secretsmanager/aws4_request"),
            "{auth}"
        );
    }
}
