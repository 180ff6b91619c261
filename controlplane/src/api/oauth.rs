//! `/oauth/authorize` and `/oauth/exchange`: adding a Claude or ChatGPT
//! subscription by hand — the operator opens the authorize link, signs in,
//! pastes the code back, and the account is created with its tokens. The
//! PKCE verifier travels sealed inside `state`, so any control-plane replica
//! can finish a flow another one started.
use std::collections::BTreeMap;

use aiproxy_shared::domain::AccountKind;
use aiproxy_shared::http::{Payload, base64url_encode, call_json};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{ApiError, ApiResult, ApiState, AuthUser, JsonBody};
use crate::oauth::{
    CLAUDE_CLIENT_ID, CLAUDE_REDIRECT_URI, OPENAI_CLIENT_ID, random_bytes, take_tokens,
};

/// How long a started flow can be finished.
const FLOW_TTL_MINUTES: i64 = 30;
/// Where ChatGPT sends the code for Codex CLI's client: nothing listens
/// there, so the browser shows an error page whose address holds the code.
const OPENAI_REDIRECT_URI: &str = "http://localhost:1455/auth/callback";
const CLAUDE_SCOPES: &str =
    "org:create_api_key user:profile user:inference user:sessions:claude_code";
const OPENAI_SCOPES: &str = "openid profile email offline_access";
const EXCHANGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Claude,
    Openai,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizeRequest {
    provider: Provider,
}

/// What `state` carries, sealed.
#[derive(Serialize, Deserialize)]
struct Flow {
    provider: Provider,
    verifier: String,
    expires_at: i64,
}

pub async fn authorize(
    State(state): State<ApiState>,
    auth: AuthUser,
    JsonBody(req): JsonBody<AuthorizeRequest>,
) -> ApiResult<Json<Value>> {
    auth.require_admin()?;
    let verifier = base64url_encode(&random_bytes::<32>());
    let challenge = base64url_encode(&Sha256::digest(verifier.as_bytes()));
    let expires_at = Utc::now() + chrono::Duration::minutes(FLOW_TTL_MINUTES);
    let flow = Flow {
        provider: req.provider,
        verifier,
        expires_at: expires_at.timestamp(),
    };
    let sealed = state
        .sealer
        .seal(&serde_json::to_vec(&flow).expect("flow serializes"));
    // Hex after the version prefix: safe in a URL and in Claude's `code#state`.
    let ticket = sealed
        .split_once(':')
        .map_or(sealed.as_str(), |(_, h)| h)
        .to_string();
    let endpoints = &state.oauth_endpoints;
    let (base, params): (String, Vec<(&str, &str)>) = match req.provider {
        Provider::Claude => (
            format!(
                "{}/oauth/authorize",
                endpoints.claude_web_url.trim_end_matches('/')
            ),
            vec![
                ("code", "true"),
                ("client_id", CLAUDE_CLIENT_ID),
                ("response_type", "code"),
                ("redirect_uri", CLAUDE_REDIRECT_URI),
                ("scope", CLAUDE_SCOPES),
                ("code_challenge", &challenge),
                ("code_challenge_method", "S256"),
                ("state", &ticket),
            ],
        ),
        Provider::Openai => (
            openai_authorize_url(&endpoints.openai_token_url),
            vec![
                ("response_type", "code"),
                ("client_id", OPENAI_CLIENT_ID),
                ("redirect_uri", OPENAI_REDIRECT_URI),
                ("scope", OPENAI_SCOPES),
                ("code_challenge", &challenge),
                ("code_challenge_method", "S256"),
                ("id_token_add_organizations", "true"),
                ("codex_cli_simplified_flow", "true"),
                ("state", &ticket),
            ],
        ),
    };
    let query: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    Ok(Json(json!({
        "authorize_url": format!("{base}?{}", query.join("&")),
        "state": ticket,
        "expires_at": expires_at,
    })))
}

/// `https://auth.openai.com/oauth/token` → `…/oauth/authorize`.
fn openai_authorize_url(token_url: &str) -> String {
    match token_url.strip_suffix("/token") {
        Some(base) => format!("{base}/authorize"),
        None => "https://auth.openai.com/oauth/authorize".into(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeRequest {
    state: String,
    /// What the person pasted: the code, Claude's `code#state`, or the
    /// whole callback address.
    code: String,
    name: String,
    #[serde(default)]
    priority: Option<i32>,
    #[serde(default)]
    max_concurrency: Option<i32>,
    #[serde(default)]
    proxy_url: Option<String>,
}

pub async fn exchange(
    State(state): State<ApiState>,
    auth: AuthUser,
    JsonBody(req): JsonBody<ExchangeRequest>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    auth.require_admin()?;
    let expired =
        || ApiError::BadRequest("this sign-in has expired or is not ours: start again".into());
    let plain = state
        .sealer
        .open(&format!("v1:{}", req.state.trim()))
        .map_err(|_| expired())?;
    let flow: Flow = serde_json::from_slice(&plain).map_err(|_| expired())?;
    if flow.expires_at < Utc::now().timestamp() {
        return Err(expired());
    }
    let (code, pasted_state) = extract_code(&req.code)
        .ok_or_else(|| ApiError::BadRequest("no authorization code in what was pasted".into()))?;
    if pasted_state.is_some_and(|s| s != req.state.trim()) {
        return Err(ApiError::BadRequest(
            "the pasted code belongs to another sign-in: start again".into(),
        ));
    }
    let endpoints = &state.oauth_endpoints;
    let http = aiproxy_shared::http::client(std::time::Duration::from_secs(10));
    let (token_url, kind) = match flow.provider {
        Provider::Claude => (&endpoints.claude_token_url, AccountKind::ClaudeOauth),
        Provider::Openai => (&endpoints.openai_token_url, AccountKind::OpenAiResponses),
    };
    let claude_body = json!({
        "grant_type": "authorization_code",
        "code": code,
        "state": req.state.trim(),
        "client_id": CLAUDE_CLIENT_ID,
        "redirect_uri": CLAUDE_REDIRECT_URI,
        "code_verifier": flow.verifier,
    });
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", OPENAI_REDIRECT_URI),
        ("client_id", OPENAI_CLIENT_ID),
        ("code_verifier", flow.verifier.as_str()),
    ];
    let payload = match flow.provider {
        Provider::Claude => Payload::Json(&claude_body),
        Provider::Openai => Payload::Form(&form),
    };
    let reply = call_json(
        &http,
        http::Method::POST,
        token_url,
        &[("accept", "application/json")],
        payload,
        EXCHANGE_TIMEOUT,
    )
    .await
    .map_err(|e| ApiError::Unavailable(format!("token endpoint: {e}")))?;
    let answer = reply.json().unwrap_or(Value::Null);
    let Some(access) = answer
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|_| reply.status == 200)
    else {
        let why = answer
            .pointer("/error_description")
            .or_else(|| answer.pointer("/error/message"))
            .or_else(|| answer.pointer("/error"))
            .and_then(Value::as_str)
            .unwrap_or("no access token");
        return Err(ApiError::BadRequest(format!(
            "the code was refused ({}): {why}",
            reply.status
        )));
    };
    let mut credentials = BTreeMap::new();
    take_tokens(&mut credentials, access, &answer, Utc::now().timestamp());
    let mut body = json!({
        "name": req.name,
        "type": kind.as_str(),
        "credentials": credentials,
    });
    if let Some(p) = req.priority {
        body["priority"] = json!(p);
    }
    if let Some(c) = req.max_concurrency {
        body["max_concurrency"] = json!(c);
    }
    if let Some(proxy) = req.proxy_url {
        body["proxy_url"] = json!(proxy);
    }
    let create = serde_json::from_value(body).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let created = super::accounts::create(State(state.clone()), auth, JsonBody(create)).await?;
    tracing::info!(provider = ?flow.provider, account = %created.1["id"], "subscription added through the sign-in flow");
    Ok(created)
}

/// The code (and the state, when given) in a pasted code, `code#state`, or
/// callback address `…?code=…&state=…`.
pub fn extract_code(pasted: &str) -> Option<(String, Option<String>)> {
    let pasted = pasted.trim();
    if let Some((_, query)) = pasted.split_once('?') {
        let mut code = None;
        let mut state = None;
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("code", v)) => code = Some(decode(v)),
                Some(("state", v)) => state = Some(decode(v)),
                _ => {}
            }
        }
        return code.filter(|c| !c.is_empty()).map(|c| (c, state));
    }
    let (code, state) = match pasted.split_once('#') {
        Some((c, s)) => (c, Some(s.to_string())),
        None => (pasted, None),
    };
    (!code.is_empty()).then(|| (code.to_string(), state))
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(())
            {
                Ok(b) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                Err(_) => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_read_from_whatever_was_pasted() {
        assert_eq!(
            extract_code(" abc#st1 "),
            Some(("abc".into(), Some("st1".into())))
        );
        assert_eq!(extract_code("abc"), Some(("abc".into(), None)));
        assert_eq!(
            extract_code("http://localhost:1455/auth/callback?code=a%2Fb&scope=x&state=s"),
            Some(("a/b".into(), Some("s".into())))
        );
        assert_eq!(
            extract_code("http://localhost:1455/auth/callback?error=denied"),
            None
        );
        assert_eq!(extract_code("  "), None);
        assert_eq!(
            extract_code("x?code=%a\u{e9}z").map(|c| c.0),
            Some("%a\u{e9}z".into()),
            "a broken escape stays as pasted"
        );
        assert_eq!(
            openai_authorize_url("https://auth.openai.com/oauth/token"),
            "https://auth.openai.com/oauth/authorize"
        );
    }
}
