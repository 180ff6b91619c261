//! The outbound HTTP client both planes use: pooled keep-alive, TCP_NODELAY,
//! TLS with webpki roots, optionally through an HTTP or SOCKS5 proxy, plus a
//! JSON request helper for control-plane calls.
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::{SocksV5, Tunnel};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

pub type HttpClient = Client<HttpsConnector<Connector>, Full<Bytes>>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How connections are made: directly, through an HTTP CONNECT proxy, or
/// through a SOCKS5 proxy.
#[derive(Clone)]
pub enum Connector {
    Direct(HttpConnector),
    Http(Tunnel<HttpConnector>),
    Socks(SocksV5<HttpConnector>),
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Connector::Direct(c) => c.poll_ready(cx).map_err(Into::into),
            Connector::Http(c) => c.poll_ready(cx).map_err(Into::into),
            Connector::Socks(c) => c.poll_ready(cx).map_err(|e| e.to_string().into()),
        }
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        match self {
            Connector::Direct(c) => {
                let f = c.call(dst);
                Box::pin(async move { f.await.map_err(Into::into) })
            }
            Connector::Http(c) => {
                let f = c.call(dst);
                Box::pin(async move { f.await.map_err(Into::into) })
            }
            Connector::Socks(c) => {
                let f = c.call(dst);
                Box::pin(async move { f.await.map_err(|e| e.to_string().into()) })
            }
        }
    }
}

/// Why a proxy URL cannot be used; the URL is quoted with its password masked.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("proxy URL is not valid: {0}")]
    Invalid(String),
    #[error(
        "proxy scheme must be http (CONNECT; upstream traffic stays TLS end to end), socks5 or socks5h"
    )]
    Scheme,
}

/// An account's outbound proxy, checked once: `http://` (CONNECT),
/// `socks5://` or `socks5h://`, a host and a port, optional `user:password@`.
/// `https://` proxies are refused: the proxy password would travel in clear
/// text to a proxy that expects TLS.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ProxyUrl {
    scheme: String,
    host_port: String,
    user: Option<String>,
    password: String,
}

impl std::fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.masked())
    }
}

impl ProxyUrl {
    pub fn parse(url: &str) -> Result<ProxyUrl, ProxyError> {
        let invalid = |why: &str| ProxyError::Invalid(format!("{} ({why})", mask_proxy_url(url)));
        let uri: Uri = url.trim().parse().map_err(|_| invalid("not a URL"))?;
        let authority = uri.authority().ok_or_else(|| invalid("no host"))?;
        let (credentials, host_port) = match authority.as_str().rsplit_once('@') {
            Some((userinfo, hp)) => (Some(userinfo), hp),
            None => (None, authority.as_str()),
        };
        if authority.host().is_empty() {
            return Err(invalid("no host"));
        }
        if authority.port_u16().is_none() {
            return Err(invalid("a port is required"));
        }
        let has_path = !matches!(uri.path(), "" | "/");
        if has_path || uri.query().is_some() {
            return Err(invalid("a proxy URL has no path"));
        }
        let scheme = uri.scheme_str().unwrap_or_default().to_ascii_lowercase();
        if !matches!(scheme.as_str(), "http" | "socks5" | "socks5h") {
            return Err(ProxyError::Scheme);
        }
        let (user, password) = match credentials.map(|c| c.split_once(':').unwrap_or((c, ""))) {
            Some((u, p)) => (Some(percent_decode(u)), percent_decode(p)),
            None => (None, String::new()),
        };
        if user
            .iter()
            .chain(std::iter::once(&password))
            .any(|s| s.chars().any(char::is_control))
        {
            return Err(invalid("control characters in the credentials"));
        }
        Ok(ProxyUrl {
            scheme,
            host_port: host_port.to_string(),
            user,
            password,
        })
    }

    /// The URL with its password replaced, fit for logs and answers.
    pub fn masked(&self) -> String {
        match &self.user {
            Some(user) if self.password.is_empty() => {
                format!("{}://{user}@{}", self.scheme, self.host_port)
            }
            Some(user) => format!("{}://{user}:••••@{}", self.scheme, self.host_port),
            None => format!("{}://{}", self.scheme, self.host_port),
        }
    }
}

/// Any proxy URL, valid or not, with the password in its user info masked.
/// The user info ends at the last `@` (a password may hold `/`, `?`, `#`).
pub fn mask_proxy_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return if url.contains('@') {
            "••••".into()
        } else {
            url.to_string()
        };
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let masked = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:••••"),
                None => userinfo.to_string(),
            };
            format!("{scheme}://{masked}@{host}")
        }
        None => url.to_string(),
    }
}

/// A direct client.
pub fn client(connect_timeout: Duration) -> HttpClient {
    build(Connector::Direct(tcp(connect_timeout)))
}

/// A client whose connections go through `proxy`.
pub fn client_via(proxy: &ProxyUrl, connect_timeout: Duration) -> HttpClient {
    #[allow(
        clippy::expect_used,
        reason = "host_port was parsed as a URI authority"
    )]
    let target = format!("http://{}", proxy.host_port)
        .parse::<Uri>()
        .expect("a parsed authority makes a URI");
    let connector = if proxy.scheme == "http" {
        let mut tunnel = Tunnel::new(target, tcp(connect_timeout));
        if let Some(user) = &proxy.user {
            let basic = format!(
                "Basic {}",
                base64_encode(format!("{user}:{}", proxy.password).as_bytes())
            );
            if let Ok(value) = http::HeaderValue::from_str(&basic) {
                tunnel = tunnel.with_auth(value);
            }
        }
        Connector::Http(tunnel)
    } else {
        let mut socks =
            SocksV5::new(target, tcp(connect_timeout)).local_dns(proxy.scheme == "socks5");
        if let Some(user) = &proxy.user {
            socks = socks.with_auth(user.clone(), proxy.password.clone());
        }
        Connector::Socks(socks)
    };
    build(connector)
}

fn tcp(connect_timeout: Duration) -> HttpConnector {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    http
}

fn build(connector: Connector) -> HttpClient {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(connector);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .build(https)
}

/// Form-urlencodes one name or value.
pub fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Decodes one form-urlencoded name or value (`+` is a space); a broken
/// escape stays as written.
pub fn form_decode(s: &str) -> String {
    percent_decode(&s.replace('+', " "))
}

/// Decodes `%XX` escapes; a broken escape stays as written.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unpadded base64url (JWT segments, PKCE).
pub fn base64url_encode(bytes: &[u8]) -> String {
    base64_encode(bytes)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

/// Standard base64 with padding (for `Proxy-Authorization: Basic`).
pub fn base64_encode(bytes: &[u8]) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
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

/// A request body for [`call_json`].
pub enum Payload<'a> {
    Empty,
    Json(&'a serde_json::Value),
    /// `application/x-www-form-urlencoded`.
    Form(&'a [(&'a str, &'a str)]),
}

/// Appends `value` as JSON to `out`. Writing a `Value` into memory cannot
/// fail (its keys are strings), so there is no error to handle.
pub fn write_json(out: &mut Vec<u8>, value: &serde_json::Value) {
    #[allow(clippy::expect_used, reason = "a Value always serialises")]
    serde_json::to_writer(out, value).expect("a Value serialises");
}

/// `value` as a JSON body.
pub fn json_bytes(value: &serde_json::Value) -> Bytes {
    let mut out = Vec::new();
    write_json(&mut out, value);
    Bytes::from(out)
}

/// Sends `method url` with `headers` and `payload`, reads the whole answer
/// (at most 4 MiB), within `timeout`.
pub async fn call_json(
    client: &HttpClient,
    method: http::Method,
    url: &str,
    headers: &[(&str, &str)],
    payload: Payload<'_>,
    timeout: Duration,
) -> Result<JsonReply, CallError> {
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let bytes = match payload {
        Payload::Json(v) => {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
            json_bytes(v)
        }
        Payload::Form(fields) => {
            req = req.header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            );
            let encoded: Vec<String> = fields
                .iter()
                .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
                .collect();
            Bytes::from(encoded.join("&"))
        }
        Payload::Empty => Bytes::new(),
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
    fn base64_and_percent_decoding() {
        assert_eq!(base64_encode(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64_encode(b"a"), "YQ==");
        assert_eq!(base64_encode(b"ab"), "YWI=");
        assert_eq!(base64url_encode(&[0xfb, 0xff]), "-_8");
        assert_eq!(percent_decode("p%40ss"), "p@ss");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(form_encode("a b/c=d"), "a+b%2Fc%3Dd");
        assert_eq!(form_decode("a+b%2Fc%3Dd%2B"), "a b/c=d+");
    }

    #[test]
    fn proxy_urls_are_checked_and_never_quoted_with_their_password() {
        assert!(ProxyUrl::parse("http://127.0.0.1:3128").is_ok());
        let socks = ProxyUrl::parse("socks5h://u:p%40ss@127.0.0.1:1080").unwrap();
        assert_eq!(socks.masked(), "socks5h://u:••••@127.0.0.1:1080");
        assert_eq!(format!("{socks:?}"), "socks5h://u:••••@127.0.0.1:1080");
        assert!(matches!(
            ProxyUrl::parse("ftp://127.0.0.1:21"),
            Err(ProxyError::Scheme)
        ));
        assert!(matches!(
            ProxyUrl::parse("https://u:secret@proxy.example:443"),
            Err(ProxyError::Scheme)
        ));
        for bad in [
            "http://user:hunter2@proxy.example",
            "not a url",
            "http://user:hunter2@proxy.example:3128/path",
            "http://:3128",
        ] {
            let e = ProxyUrl::parse(bad).unwrap_err().to_string();
            assert!(!e.contains("hunter2"), "{e}");
        }
        assert_eq!(
            mask_proxy_url("http://user:hunter2@proxy.example"),
            "http://user:••••@proxy.example"
        );
        assert_eq!(mask_proxy_url("socks5://h:1080"), "socks5://h:1080");
        for raw in [
            "http://u:pa/ss@h:3128",
            "http://u:pa?ss#x@h:3128",
            "http://u:p@ss@h:3128",
        ] {
            let masked = mask_proxy_url(raw);
            assert!(!masked.contains("ss"), "{raw} → {masked}");
            let e = ProxyUrl::parse(raw)
                .map(|_| String::new())
                .unwrap_or_else(|e| e.to_string());
            assert!(!e.contains("pa"), "{e}");
        }
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
