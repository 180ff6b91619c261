//! OAuth accounts: refreshing access tokens before they expire or when a
//! node reports one refused, one refresh at a time per account (refresh
//! tokens rotate), persisted atomically and pushed in the next snapshot.
use aiproxy_shared::sync::LockExt;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aiproxy_shared::config::OAuthSettings;
use aiproxy_shared::domain::{AccountKind, AccountStatus};
use aiproxy_shared::http::{HttpClient, Payload, base64url_encode, call_json, jwt_claims};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::crypto::Sealer;
use crate::store::{AccountPatch, Store, StoreError};

/// Client id of Claude Code's OAuth application.
pub const CLAUDE_CLIENT_ID: &str = "9d1c250a-e61b-44d9-88ed-5944d1962f5e";
/// Client id of Codex CLI's OAuth application.
pub const OPENAI_CLIENT_ID: &str = "app_EMoamEEZ73f0CkXaXp7hrann";
/// Gemini CLI's OAuth application. Google issues installed applications a
/// client secret that is public by design; Gemini CLI ships these two.
pub const GEMINI_CLIENT_ID: &str =
    "681255809395-oo8ft2oprdrnp9e3aqf6av3hmdib135j.apps.googleusercontent.com";
pub const GEMINI_CLIENT_SECRET: &str = "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";
/// Tokens expiring within this many seconds are refreshed.
const REFRESH_MARGIN_SECS: i64 = 300;
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const ONBOARD_POLLS: usize = 10;
const ONBOARD_POLL_INTERVAL: Duration = Duration::from_secs(2);

pub type Credentials = BTreeMap<String, String>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Refreshed,
    /// Nothing to do: the token is fresh, or was refreshed meanwhile.
    StillFresh,
    /// A token without a refresh token (e.g. a setup token) cannot be refreshed.
    NoRefreshToken,
}

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("account {0} is not an OAuth account")]
    NotOAuth(i64),
    #[error("credentials unreadable: {0}")]
    Credentials(String),
    #[error("token endpoint refused the refresh ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("token endpoint unavailable: {0}")]
    Unavailable(String),
}

/// Where claude.ai sends the authorization code for Claude Code's client.
pub(crate) const CLAUDE_REDIRECT_URI: &str = "https://platform.claude.com/oauth/code/callback";

/// Fills what can be derived from the tokens: `expires_at` from the access
/// token's `exp`, and for ChatGPT accounts `account_id` from the id token.
pub fn complete_credentials(kind: AccountKind, creds: &mut Credentials) {
    if !creds.contains_key("expires_at") {
        let exp = creds
            .get("access_token")
            .and_then(|t| jwt_claims(t))
            .and_then(|c| c.get("exp").and_then(Value::as_i64));
        if let Some(exp) = exp {
            creds.insert("expires_at".into(), exp.to_string());
        }
    }
    if kind == AccountKind::OpenAiResponses && !creds.contains_key("account_id") {
        let id = ["id_token", "access_token"].iter().find_map(|field| {
            let claims = jwt_claims(creds.get(*field)?)?;
            claims
                .pointer("/https:~1~1api.openai.com~1auth/chatgpt_account_id")?
                .as_str()
                .map(str::to_string)
        });
        if let Some(id) = id {
            creds.insert("account_id".into(), id);
        }
    }
}

#[derive(Clone)]
pub struct Refresher {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    sealer: Sealer,
    http: HttpClient,
    endpoints: OAuthSettings,
    locks: Mutex<HashMap<i64, Arc<tokio::sync::Mutex<()>>>>,
}

impl Refresher {
    pub fn new(store: Store, sealer: Sealer, endpoints: OAuthSettings) -> Self {
        let http = aiproxy_shared::http::client(Duration::from_secs(10));
        Self {
            inner: Arc::new(Inner {
                store,
                sealer,
                http,
                endpoints,
                locks: Mutex::default(),
            }),
        }
    }

    /// Refreshes tokens that are about to expire (a background job).
    /// Refreshes every OAuth token close to expiring; whether all went well.
    pub async fn refresh_due(&self) -> bool {
        let accounts = match self.inner.store.list_accounts().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list accounts for token refresh");
                return false;
            }
        };
        let mut all_well = true;
        for account in accounts {
            if !account.kind.is_oauth()
                || !account.enabled
                || account.status != AccountStatus::Valid
            {
                continue;
            }
            match self.refresh(account.id, None).await {
                Ok(Outcome::Refreshed) => {
                    tracing::info!(account_id = account.id, "access token refreshed")
                }
                Ok(_) => {}
                Err(e) => {
                    all_well = false;
                    tracing::warn!(account_id = account.id, error = %e, "access token refresh failed")
                }
            }
        }
        all_well
    }

    /// Refreshes `id` if its token expires soon, or, with `refused`, if the
    /// refused token (by sha256) is still the current one.
    pub async fn refresh(
        &self,
        id: i64,
        refused: Option<[u8; 32]>,
    ) -> Result<Outcome, RefreshError> {
        let lock = {
            let mut locks = self.inner.locks.locked();
            locks.entry(id).or_default().clone()
        };
        let _serial = lock.lock().await;
        let name = format!("aiproxy-oauth-refresh-{id}");
        let work = async {
            if self.exchange_session_key_locked(id).await? {
                return Ok(Outcome::Refreshed);
            }
            let outcome = self.refresh_locked(id, refused).await?;
            self.discover_project_locked(id).await?;
            Ok(outcome)
        };
        self.inner.store.with_named_lock(&name, work).await?
    }

    /// A claude.ai `sessionKey` account without OAuth tokens gets them the way
    /// a browser would: pick the organization that can chat, authorize Claude
    /// Code's client for it with PKCE, and exchange the code. Returns whether
    /// it exchanged; afterwards the account refreshes like `claude-oauth`.
    async fn exchange_session_key_locked(&self, id: i64) -> Result<bool, RefreshError> {
        let store = &self.inner.store;
        let account = store.get_account(id).await?;
        if account.kind != AccountKind::ClaudeSessionKey {
            return Ok(false);
        }
        let mut creds = self.open(&account.credentials_sealed)?;
        if creds.get("access_token").is_some_and(|t| !t.is_empty()) {
            return Ok(false);
        }
        let session_key = creds.get("session_key").cloned().unwrap_or_default();
        let web = self
            .inner
            .endpoints
            .claude_web_url
            .trim_end_matches('/')
            .to_string();
        let cookie = format!("sessionKey={session_key}");
        let browser = [
            ("cookie", cookie.as_str()),
            ("accept", "application/json"),
            ("origin", web.as_str()),
        ];
        let http = &self.inner.http;

        let orgs = call_json(
            http,
            http::Method::GET,
            &format!("{web}/api/organizations"),
            &browser,
            Payload::Empty,
            CALL_TIMEOUT,
        )
        .await
        .map_err(|e| RefreshError::Unavailable(e.to_string()))?;
        if matches!(orgs.status, 401 | 403) {
            return self
                .session_key_refused(id, "organizations", orgs.status)
                .await;
        }
        let organization = orgs
            .json()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter(|o| {
                o.get("capabilities")
                    .and_then(Value::as_array)
                    .is_some_and(|c| c.iter().any(|c| c == "chat"))
            })
            .max_by_key(|o| {
                o.get("capabilities")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len)
            })
            .and_then(|o| o.get("uuid").and_then(Value::as_str).map(str::to_string))
            .ok_or_else(|| {
                RefreshError::Unavailable("no claude.ai organization that can chat".into())
            })?;

        let verifier = base64url_encode(&random_bytes::<32>());
        let challenge = base64url_encode(&Sha256::digest(verifier.as_bytes()));
        let state = base64url_encode(&random_bytes::<32>());
        let authorize = json!({
            "response_type": "code",
            "client_id": CLAUDE_CLIENT_ID,
            "organization_uuid": organization,
            "redirect_uri": CLAUDE_REDIRECT_URI,
            "scope": "user:profile user:inference",
            "state": state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        });
        let url = format!("{web}/v1/oauth/{organization}/authorize");
        let granted = call_json(
            http,
            http::Method::POST,
            &url,
            &browser,
            Payload::Json(&authorize),
            CALL_TIMEOUT,
        )
        .await
        .map_err(|e| RefreshError::Unavailable(e.to_string()))?;
        if matches!(granted.status, 401 | 403) {
            return self
                .session_key_refused(id, "authorize", granted.status)
                .await;
        }
        let redirect = granted.json().and_then(|v| {
            v.get("redirect_uri")
                .and_then(Value::as_str)
                .map(str::to_string)
        });
        let code = redirect
            .as_deref()
            .and_then(|r| r.split_once('?'))
            .and_then(|(_, q)| q.split('&').find_map(|p| p.strip_prefix("code=")))
            .map(str::to_string)
            .ok_or_else(|| {
                RefreshError::Unavailable(format!(
                    "authorize answered {} without a code",
                    granted.status
                ))
            })?;

        let exchange = json!({
            "grant_type": "authorization_code",
            "code": code,
            "client_id": CLAUDE_CLIENT_ID,
            "redirect_uri": CLAUDE_REDIRECT_URI,
            "code_verifier": verifier,
            "state": state,
        });
        let token_url = creds
            .get("token_url")
            .cloned()
            .unwrap_or_else(|| self.inner.endpoints.claude_token_url.clone());
        let headers = [("accept", "application/json")];
        let tokens = call_json(
            http,
            http::Method::POST,
            &token_url,
            &headers,
            Payload::Json(&exchange),
            CALL_TIMEOUT,
        )
        .await
        .map_err(|e| RefreshError::Unavailable(format!("{token_url}: {e}")))?;
        let answer = tokens.json().unwrap_or(Value::Null);
        let Some(access) = answer
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|_| tokens.status == 200)
        else {
            return Err(RefreshError::Unavailable(format!(
                "code exchange answered {}",
                tokens.status
            )));
        };
        let now = chrono::Utc::now().timestamp();
        take_tokens(&mut creds, access, &answer, now);
        creds.insert("organization_uuid".into(), organization);
        self.save(id, &creds).await?;
        tracing::info!(account_id = id, "sessionKey exchanged for OAuth tokens");
        Ok(true)
    }

    /// claude.ai refused the sessionKey: flag the account for the operator.
    async fn session_key_refused(
        &self,
        id: i64,
        step: &str,
        status: u16,
    ) -> Result<bool, RefreshError> {
        self.flag_invalid(
            id,
            format!("sessionKey refused by claude.ai {step} ({status})"),
        )
        .await?;
        Err(RefreshError::Refused {
            status,
            message: format!("claude.ai {step} refused the sessionKey"),
        })
    }

    /// A Gemini (Code Assist) account calls with a Google Cloud project:
    /// find it with `loadCodeAssist`, or set one up with `onboardUser` for an
    /// account that has none yet, and keep it as `project_id`.
    async fn discover_project_locked(&self, id: i64) -> Result<(), RefreshError> {
        let store = &self.inner.store;
        let account = store.get_account(id).await?;
        if account.kind != AccountKind::GeminiOauth {
            return Ok(());
        }
        let mut creds = self.open(&account.credentials_sealed)?;
        if creds.get("project_id").is_some_and(|p| !p.is_empty()) {
            return Ok(());
        }
        let Some(token) = creds.get("access_token").cloned() else {
            return Ok(());
        };
        let base = account
            .base_url
            .clone()
            .unwrap_or_else(|| AccountKind::GeminiOauth.default_base_url().to_string());
        let bearer = format!("Bearer {token}");
        let headers = [
            ("authorization", bearer.as_str()),
            ("accept", "application/json"),
        ];
        let metadata = json!({"ideType": "IDE_UNSPECIFIED", "platform": "PLATFORM_UNSPECIFIED", "pluginType": "GEMINI"});
        let call = |method: &'static str, body: Value| {
            let url = format!("{base}/v1internal:{method}");
            let http = self.inner.http.clone();
            async move {
                let reply = call_json(
                    &http,
                    http::Method::POST,
                    &url,
                    &headers,
                    Payload::Json(&body),
                    CALL_TIMEOUT,
                )
                .await
                .map_err(|e| RefreshError::Unavailable(e.to_string()))?;
                match reply.json() {
                    Some(v) if reply.status == 200 => Ok(v),
                    _ => Err(RefreshError::Unavailable(format!(
                        "{method} answered {}",
                        reply.status
                    ))),
                }
            }
        };
        let loaded = call("loadCodeAssist", json!({"metadata": metadata})).await?;
        let mut project = loaded
            .get("cloudaicompanionProject")
            .and_then(Value::as_str)
            .map(str::to_string);
        if project.is_none() {
            let tier = loaded
                .get("allowedTiers")
                .and_then(Value::as_array)
                .and_then(|tiers| {
                    tiers
                        .iter()
                        .find(|t| t.get("isDefault").and_then(Value::as_bool) == Some(true))
                })
                .and_then(|t| t.get("id").and_then(Value::as_str))
                .unwrap_or("free-tier")
                .to_string();
            // Onboarding is a long-running operation; asking again reports its state.
            for _ in 0..ONBOARD_POLLS {
                let op = call("onboardUser", json!({"tierId": tier, "metadata": metadata})).await?;
                if op.get("done").and_then(Value::as_bool) == Some(true) {
                    project = op
                        .pointer("/response/cloudaicompanionProject/id")
                        .and_then(Value::as_str)
                        .map(str::to_string);
                    break;
                }
                tokio::time::sleep(ONBOARD_POLL_INTERVAL).await;
            }
        }
        let Some(project) = project else {
            return Err(RefreshError::Unavailable(
                "Code Assist gave no project for this account".into(),
            ));
        };
        tracing::info!(account_id = id, project = %project, "Code Assist project found");
        creds.insert("project_id".into(), project);
        self.save(id, &creds).await?;
        Ok(())
    }

    /// Stores new credentials and pushes them to the nodes.
    async fn save(&self, id: i64, creds: &Credentials) -> Result<(), RefreshError> {
        let sealed = self.inner.sealer.seal(
            serde_json::Value::from_iter(creds.clone())
                .to_string()
                .as_bytes(),
        );
        let patch = AccountPatch {
            credentials_sealed: Some(sealed),
            ..Default::default()
        };
        self.inner.store.update_account(id, &patch).await?;
        Ok(())
    }

    /// Takes the account out of scheduling, saying why, for the operator.
    async fn flag_invalid(&self, id: i64, reason: String) -> Result<(), RefreshError> {
        let patch = AccountPatch {
            status: Some(AccountStatus::Invalid),
            disabled_reason: Some(Some(reason)),
            ..Default::default()
        };
        self.inner.store.update_account(id, &patch).await?;
        Ok(())
    }

    fn open(&self, sealed: &str) -> Result<Credentials, RefreshError> {
        let plain = self
            .inner
            .sealer
            .open(sealed)
            .map_err(|e| RefreshError::Credentials(e.to_string()))?;
        serde_json::from_slice(&plain).map_err(|e| RefreshError::Credentials(e.to_string()))
    }

    async fn refresh_locked(
        &self,
        id: i64,
        refused: Option<[u8; 32]>,
    ) -> Result<Outcome, RefreshError> {
        let store = &self.inner.store;
        let account = store.get_account(id).await?;
        let kind = Some(account.kind)
            .filter(|k| k.is_oauth())
            .ok_or(RefreshError::NotOAuth(id))?;
        let mut creds = self.open(&account.credentials_sealed)?;
        let current = creds.get("access_token").cloned().unwrap_or_default();
        let now = chrono::Utc::now().timestamp();
        let expires_at = creds.get("expires_at").and_then(|v| v.parse::<i64>().ok());
        let due = match refused {
            Some(hash) => <[u8; 32]>::from(Sha256::digest(current.as_bytes())) == hash,
            None => expires_at.is_some_and(|t| t <= now + REFRESH_MARGIN_SECS),
        };
        if !due {
            return Ok(Outcome::StillFresh);
        }
        let Some(refresh_token) = creds
            .get("refresh_token")
            .filter(|t| !t.is_empty())
            .cloned()
        else {
            return Ok(Outcome::NoRefreshToken);
        };
        let client_id = creds
            .get("client_id")
            .cloned()
            .unwrap_or_else(|| GEMINI_CLIENT_ID.to_string());
        let client_secret = creds
            .get("client_secret")
            .cloned()
            .unwrap_or_else(|| GEMINI_CLIENT_SECRET.to_string());
        let json_body = match kind {
            AccountKind::OpenAiResponses => json!({
                "client_id": OPENAI_CLIENT_ID,
                "grant_type": "refresh_token",
                "refresh_token": refresh_token,
                "scope": "openid profile email",
            }),
            _ => {
                json!({"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": CLAUDE_CLIENT_ID})
            }
        };
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.as_str()),
            ("client_id", client_id.as_str()),
            ("client_secret", client_secret.as_str()),
        ];
        let endpoints = &self.inner.endpoints;
        let (default_url, payload) = match kind {
            AccountKind::GeminiOauth => (&endpoints.google_token_url, Payload::Form(&form)),
            AccountKind::OpenAiResponses => {
                (&endpoints.openai_token_url, Payload::Json(&json_body))
            }
            _ => (&endpoints.claude_token_url, Payload::Json(&json_body)),
        };
        let url = creds
            .get("token_url")
            .cloned()
            .unwrap_or_else(|| default_url.clone());
        let reply = call_json(
            &self.inner.http,
            http::Method::POST,
            &url,
            &[("accept", "application/json")],
            payload,
            CALL_TIMEOUT,
        )
        .await
        .map_err(|e| RefreshError::Unavailable(format!("{url}: {e}")))?;
        let answer = reply.json().unwrap_or(Value::Null);
        let access = answer
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty());
        let Some(access) = access.filter(|_| reply.status == 200) else {
            let message = answer
                .pointer("/error_description")
                .or_else(|| answer.pointer("/error/message"))
                .or_else(|| answer.pointer("/error"))
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string())
                })
                .unwrap_or_else(|| {
                    String::from_utf8_lossy(&reply.body)
                        .chars()
                        .take(200)
                        .collect()
                });
            if matches!(reply.status, 400 | 401 | 403) {
                // The refresh token is dead: the operator must re-authorize.
                self.flag_invalid(
                    id,
                    format!("OAuth refresh refused ({}): {message}", reply.status),
                )
                .await?;
                return Err(RefreshError::Refused {
                    status: reply.status,
                    message,
                });
            }
            return Err(RefreshError::Unavailable(format!(
                "status {}: {message}",
                reply.status
            )));
        };
        take_tokens(&mut creds, access, &answer, now);
        complete_credentials(kind, &mut creds);
        self.save(id, &creds).await?;
        Ok(Outcome::Refreshed)
    }
}

/// Stores what a token endpoint answered: the access token, a rotated
/// refresh token and id token when given, and the new expiry.
pub(crate) fn take_tokens(creds: &mut Credentials, access: &str, answer: &Value, now: i64) {
    creds.insert("access_token".into(), access.to_string());
    for field in ["refresh_token", "id_token"] {
        if let Some(v) = answer
            .get(field)
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
        {
            creds.insert(field.into(), v.to_string());
        }
    }
    creds.remove("expires_at");
    if let Some(secs) = answer.get("expires_in").and_then(Value::as_i64) {
        creds.insert("expires_at".into(), (now + secs).to_string());
    }
}

pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    #[allow(
        clippy::expect_used,
        reason = "without the OS's randomness no state or verifier can be made safely"
    )]
    getrandom::getrandom(&mut buf).expect("operating system RNG unavailable");
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_fields_come_from_the_tokens() {
        // payload: {"https://api.openai.com/auth":{"chatgpt_account_id":"acc-1"},"exp":2000000000}
        let jwt = "eyJhbGciOiJub25lIn0.eyJodHRwczovL2FwaS5vcGVuYWkuY29tL2F1dGgiOnsiY2hhdGdwdF9hY2NvdW50X2lkIjoiYWNjLTEifSwiZXhwIjoyMDAwMDAwMDAwfQ.";
        let mut creds = Credentials::new();
        creds.insert("access_token".into(), jwt.into());
        creds.insert("id_token".into(), jwt.into());
        complete_credentials(AccountKind::OpenAiResponses, &mut creds);
        assert_eq!(creds["account_id"], "acc-1");
        assert_eq!(creds["expires_at"], "2000000000");
        let mut opaque = Credentials::new();
        opaque.insert("access_token".into(), "sk-ant-oat01-opaque".into());
        complete_credentials(AccountKind::ClaudeOauth, &mut opaque);
        assert!(!opaque.contains_key("expires_at"));
    }
}
