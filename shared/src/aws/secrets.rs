//! Secrets Manager's `GetSecretValue`, the one call a cold start makes to it: a SigV4-signed
//! JSON POST over reqwest, instead of the `aws-sdk-secretsmanager` client and its runtime.
//!
//! Endpoint: `AWS_ENDPOINT_URL_SECRETS_MANAGER` (else `AWS_ENDPOINT_URL`, as the SDKs read
//! them), else `https://secretsmanager.<region>.amazonaws.com` (`.amazonaws.com.cn` in China). Errors are one line naming the
//! service's error code and message (or the transport failure); they never contain the secret.

use super::{credentials_from_env, endpoint_from_env, region_from_env};
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use serde_json::Value;
use std::time::{Duration, SystemTime};

const SERVICE: &str = "secretsmanager";
const TARGET: &str = "secretsmanager.GetSecretValue";
const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
/// The whole call, retries included: a cold start must fail visibly rather than hang.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts on throttling, 5xx and transport failures (like the SDK's standard retry mode).
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
    let body = serde_json::json!({ "SecretId": secret_id }).to_string();
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;

    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
        }
        let headers = [("content-type", CONTENT_TYPE), ("x-amz-target", TARGET)];
        let signed = sign_headers(&identity, &region, &url, &headers, body.as_bytes())?;
        let mut request = client.post(&url).body(body.clone());
        for (name, value) in headers
            .iter()
            .copied()
            .chain(signed.iter().map(|(n, v)| (n.as_str(), v.as_str())))
        {
            request = request.header(name, value);
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                last = format!("cannot reach Secrets Manager at {url}: {e}");
                if e.is_timeout() {
                    break;
                }
                continue;
            }
        };
        let status = response.status();
        let text = match response.text().await {
            Ok(t) => t,
            Err(e) => {
                last = format!("cannot read the Secrets Manager response: {e}");
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
        last = format!("{code}: {message} (HTTP {})", status.as_u16());
        let retryable = status.is_server_error()
            || status.as_u16() == 429
            || code.contains("Throttling")
            || code.contains("TooManyRequests");
        if !retryable {
            break;
        }
    }
    Err(last)
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
