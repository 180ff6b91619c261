//! The outbound HTTP client both planes use: pooled keep-alive, TCP_NODELAY,
//! TLS with webpki roots, plus a JSON request helper for control-plane calls.
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

pub fn client(connect_timeout: Duration) -> HttpClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .build(https)
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("invalid URL {0}")]
    Url(String),
    #[error("request failed: {0}")]
    Transport(String),
    #[error("timed out")]
    Timeout,
}

/// A whole response: status and body.
#[derive(Debug)]
pub struct JsonReply {
    pub status: u16,
    pub body: Bytes,
}

impl JsonReply {
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// Sends `method url` with `headers` and an optional JSON body, reads the
/// whole answer (at most 4 MiB), within `timeout`.
pub async fn call_json(
    client: &HttpClient,
    method: http::Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<JsonReply, CallError> {
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let bytes = match body {
        Some(v) => {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
            Bytes::from(serde_json::to_vec(v).expect("JSON serializes"))
        }
        None => Bytes::new(),
    };
    req = req.header(http::header::ACCEPT_ENCODING, "identity");
    let req = req
        .body(Full::new(bytes))
        .map_err(|_| CallError::Url(url.to_string()))?;
    let work = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| CallError::Transport(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = http_body_util::Limited::new(resp.into_body(), 4 << 20)
            .collect()
            .await
            .map_err(|e| CallError::Transport(e.to_string()))?
            .to_bytes();
        Ok(JsonReply { status, body })
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| CallError::Timeout)?
}

/// Decodes unpadded or padded base64url (as in JWT segments).
pub fn base64url_decode(input: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in input.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// The payload of a JWT, unverified: for reading claims of tokens this
/// process did not issue and does not trust for authorization.
pub fn jwt_claims(token: &str) -> Option<serde_json::Value> {
    let payload = token.split('.').nth(1)?;
    serde_json::from_slice(&base64url_decode(payload)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_round_trips_known_values() {
        assert_eq!(base64url_decode("aGVsbG8").unwrap(), b"hello");
        assert_eq!(base64url_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64url_decode("_-8").unwrap(), [0xff, 0xef]);
        assert!(base64url_decode("a*b").is_none());
    }

    #[test]
    fn jwt_payload_claims() {
        // {"alg":"none"} . {"https://api.openai.com/auth":{"chatgpt_account_id":"acc-1"},"exp":2000000000}
        let token = "eyJhbGciOiJub25lIn0.eyJodHRwczovL2FwaS5vcGVuYWkuY29tL2F1dGgiOnsiY2hhdGdwdF9hY2NvdW50X2lkIjoiYWNjLTEifSwiZXhwIjoyMDAwMDAwMDAwfQ.";
        let claims = jwt_claims(token).unwrap();
        assert_eq!(
            claims["https://api.openai.com/auth"]["chatgpt_account_id"],
            "acc-1"
        );
        assert_eq!(claims["exp"], 2_000_000_000u64);
        assert!(jwt_claims("not-a-jwt").is_none());
    }
}
