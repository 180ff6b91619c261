//! Adding a Claude or ChatGPT subscription by hand: the operator opens the
//! authorize link, signs in, pastes the code back, and the account is
//! created with its tokens. The PKCE verifier travels sealed inside `state`,
//! so any control-plane replica can finish a flow another one started.
use std::collections::BTreeMap;

use aiproxy_shared::domain::AccountKind;
use aiproxy_shared::http::{Payload, base64url_encode, call_json, form_decode, form_encode};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::accounts::{AccountView, CreateAccount};
use super::{Actor, ServiceError, ServiceResult, Services};
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

/// Whose subscription: Claude (Claude Code's client) or ChatGPT (Codex CLI's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Claude,
    Openai,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthorizeRequest {
    pub provider: Provider,
}

/// A started sign-in: open `authorize_url`, then send the code with `state`
/// to the exchange before `expires_at`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuthorizeStarted {
    pub authorize_url: String,
    pub state: String,
    pub expires_at: DateTime<Utc>,
}

/// What `state` carries, sealed.
#[derive(Serialize, Deserialize)]
struct Flow {
    provider: Provider,
    verifier: String,
    expires_at: i64,
}

impl Services {
    pub async fn start_sign_in(
        &self,
        actor: &Actor,
        req: AuthorizeRequest,
    ) -> ServiceResult<AuthorizeStarted> {
        actor.require_admin()?;
        let verifier = base64url_encode(&random_bytes::<32>());
        let challenge = base64url_encode(&Sha256::digest(verifier.as_bytes()));
        let expires_at = Utc::now() + chrono::Duration::minutes(FLOW_TTL_MINUTES);
        let flow = Flow {
            provider: req.provider,
            verifier,
            expires_at: expires_at.timestamp(),
        };
        let plain = serde_json::to_vec(&flow).map_err(|e| ServiceError::Internal(e.to_string()))?;
        let sealed = self.sealer.seal(&plain);
        // Hex after the version prefix: safe in a URL and in Claude's `code#state`.
        let ticket = sealed
            .split_once(':')
            .map_or(sealed.as_str(), |(_, h)| h)
            .to_string();
        let endpoints = &self.oauth_endpoints;
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
            .map(|(k, v)| format!("{k}={}", form_encode(v)))
            .collect();
        Ok(AuthorizeStarted {
            authorize_url: format!("{base}?{}", query.join("&")),
            state: ticket,
            expires_at,
        })
    }
}

/// `https://auth.openai.com/oauth/token` → `…/oauth/authorize`.
fn openai_authorize_url(token_url: &str) -> String {
    match token_url.strip_suffix("/token") {
        Some(base) => format!("{base}/authorize"),
        None => "https://auth.openai.com/oauth/authorize".into(),
    }
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExchangeRequest {
    /// The `state` the sign-in started with.
    pub state: String,
    /// What the person pasted: the code, Claude's `code#state`, or the
    /// whole callback address.
    pub code: String,
    /// The new account's name.
    pub name: String,
    #[serde(default)]
    pub priority: Option<i32>,
    #[serde(default)]
    pub max_concurrency: Option<i32>,
    #[serde(default)]
    pub proxy_url: Option<String>,
}

impl Services {
    /// Trades a pasted code for tokens and adds the account they open.
    pub async fn finish_sign_in(
        &self,
        actor: &Actor,
        req: ExchangeRequest,
    ) -> ServiceResult<AccountView> {
        actor.require_admin()?;
        let expired = || {
            ServiceError::BadRequest("this sign-in has expired or is not ours: start again".into())
        };
        let plain = self
            .sealer
            .open(&format!("v1:{}", req.state.trim()))
            .map_err(|_| expired())?;
        let flow: Flow = serde_json::from_slice(&plain).map_err(|_| expired())?;
        if flow.expires_at < Utc::now().timestamp() {
            return Err(expired());
        }
        let (code, pasted_state) = extract_code(&req.code).ok_or_else(|| {
            ServiceError::BadRequest("no authorization code in what was pasted".into())
        })?;
        if pasted_state.is_some_and(|s| s != req.state.trim()) {
            return Err(ServiceError::BadRequest(
                "the pasted code belongs to another sign-in: start again".into(),
            ));
        }
        let endpoints = &self.oauth_endpoints;
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
        .map_err(|e| ServiceError::Unavailable(format!("token endpoint: {e}")))?;
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
            return Err(ServiceError::BadRequest(format!(
                "the code was refused ({}): {why}",
                reply.status
            )));
        };
        let mut credentials = BTreeMap::new();
        take_tokens(&mut credentials, access, &answer, Utc::now().timestamp());
        let mut create = CreateAccount::new(req.name, kind, credentials);
        create.proxy_url = req.proxy_url;
        if let Some(p) = req.priority {
            create.priority = p;
        }
        if let Some(c) = req.max_concurrency {
            create.max_concurrency = c;
        }
        let created = self.create_account(actor, create).await?;
        tracing::info!(provider = ?flow.provider, account = created.account.id, "subscription added through the sign-in flow");
        Ok(created)
    }
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
                Some(("code", v)) => code = Some(form_decode(v)),
                Some(("state", v)) => state = Some(form_decode(v)),
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
