//! Vocabulary of the relay: platforms, account kinds and their credentials.
use serde::{Deserialize, Serialize};

/// The API family a client speaks and an upstream serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Anthropic,
    OpenAi,
    Gemini,
}

impl Platform {
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Anthropic => "anthropic",
            Platform::OpenAi => "openai",
            Platform::Gemini => "gemini",
        }
    }
}

crate::named_enum! {
    /// The kind of an upstream account, as stored in `accounts.type`.
    pub enum AccountKind refused "type must be one of claude-api, claude-oauth, claude-session-key, openai, openai-responses, gemini-api, gemini-oauth" {
        ClaudeApi = "claude-api",
        ClaudeOauth = "claude-oauth",
        ClaudeSessionKey = "claude-session-key",
        OpenAi = "openai",
        OpenAiResponses = "openai-responses",
        GeminiApi = "gemini-api",
        GeminiOauth = "gemini-oauth",
    }
}

crate::named_enum! {
    /// What an admin-API user may do: everything, or their own keys, usage and logs.
    pub enum Role refused "role must be admin or user" {
        Admin = "admin",
        User = "user",
    }
}

crate::named_enum! {
    /// Whether a user, key or package is in force.
    pub enum ActiveStatus refused "status must be active or disabled" {
        Active = "active",
        Disabled = "disabled",
    }
}

crate::named_enum! {
    /// An account's standing with its upstream.
    pub enum AccountStatus refused "status must be valid, invalid or banned" {
        Valid = "valid",
        Invalid = "invalid",
        Banned = "banned",
    }
}

crate::named_enum! {
    /// What an account's last health check found.
    pub enum HealthStatus refused "health_status must be unchecked, ok, failed or unknown" {
        /// Never checked.
        Unchecked = "unchecked",
        Ok = "ok",
        /// The upstream refused the credentials.
        Failed = "failed",
        /// The check could not tell (network, 5xx).
        Unknown = "unknown",
    }
}

crate::named_enum! {
    /// What a key's requests are charged to.
    pub enum BillingType refused "billing_type must be package or standalone" {
        /// The user's packages (and the key's own cost limit, if set).
        Package = "package",
        /// Only the key's own cost limit.
        Standalone = "standalone",
    }
}

crate::named_enum! {
    /// How strictly a key's requests must look like a known client program.
    pub enum FilterMode refused "client_filter must be off, simple or strict (or null to follow the settings)" {
        Off = "off",
        Simple = "simple",
        Strict = "strict",
    }
}

crate::named_enum! {
    /// A client program the client filter knows.
    pub enum ClientName refused "allowed_clients entries must be claude-code, codex-cli or gemini-cli" {
        ClaudeCode = "claude-code",
        CodexCli = "codex-cli",
        GeminiCli = "gemini-cli",
    }
}

impl AccountKind {
    /// Accounts that call upstreams with OAuth access tokens, which the
    /// control plane refreshes (a session key is exchanged for them).
    pub fn is_oauth(self) -> bool {
        matches!(
            self,
            AccountKind::ClaudeOauth
                | AccountKind::ClaudeSessionKey
                | AccountKind::OpenAiResponses
                | AccountKind::GeminiOauth
        )
    }

    pub fn platform(self) -> Platform {
        match self {
            AccountKind::ClaudeApi | AccountKind::ClaudeOauth | AccountKind::ClaudeSessionKey => {
                Platform::Anthropic
            }
            AccountKind::OpenAi | AccountKind::OpenAiResponses => Platform::OpenAi,
            AccountKind::GeminiApi | AccountKind::GeminiOauth => Platform::Gemini,
        }
    }

    /// Upstream base URL used when an account sets none.
    pub fn default_base_url(self) -> &'static str {
        match self {
            AccountKind::ClaudeApi | AccountKind::ClaudeOauth | AccountKind::ClaudeSessionKey => {
                "https://api.anthropic.com"
            }
            AccountKind::OpenAi => "https://api.openai.com",
            AccountKind::OpenAiResponses => "https://chatgpt.com/backend-api/codex",
            AccountKind::GeminiApi => "https://generativelanguage.googleapis.com",
            AccountKind::GeminiOauth => "https://cloudcode-pa.googleapis.com",
        }
    }

    /// Credential fields an account of this kind must carry.
    pub fn required_credentials(self) -> &'static [&'static str] {
        match self {
            AccountKind::ClaudeApi | AccountKind::OpenAi | AccountKind::GeminiApi => &["api_key"],
            AccountKind::ClaudeOauth | AccountKind::OpenAiResponses | AccountKind::GeminiOauth => {
                &["access_token"]
            }
            AccountKind::ClaudeSessionKey => &["session_key"],
        }
    }
}

/// Credential fields some upstream call carries in a header (trimmed).
pub const HEADER_CREDENTIALS: [&str; 4] = ["api_key", "access_token", "account_id", "session_key"];

/// Why a credential value cannot be used, naming the field but never the value.
pub fn credential_problem(field: &str, value: &str) -> Option<String> {
    let value = value.trim();
    if HEADER_CREDENTIALS.contains(&field) {
        // Printable ASCII: what every upstream reads the same way.
        if !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Some(format!(
                "credentials.{field} is not a valid header value: it must be printable ASCII without line breaks"
            ));
        }
    } else if value.chars().any(char::is_control) {
        return Some(format!(
            "credentials.{field} contains control characters (a line break?)"
        ));
    }
    None
}

/// The first problem of any credential of an account.
pub fn credentials_problem<'a>(
    creds: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Option<String> {
    creds
        .into_iter()
        .find_map(|(field, value)| credential_problem(field, value))
}

/// Why an account cannot be sent to data planes: a credential or its proxy
/// URL they could not use. Never quotes a secret.
pub fn account_problem<'a>(
    creds: impl IntoIterator<Item = (&'a String, &'a String)>,
    proxy_url: Option<&str>,
) -> Option<String> {
    credentials_problem(creds).or_else(|| {
        proxy_url
            .and_then(|url| crate::http::ProxyUrl::parse(url).err())
            .map(|e| format!("proxy_url: {e}"))
    })
}

/// Whether the usage in a record came from the upstream or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UsageSource {
    /// The upstream reported the counts.
    Reported,
    /// Counts were estimated locally.
    Estimated,
    /// No counts are known (e.g. the stream was cut before usage arrived).
    Missing,
}

impl UsageSource {
    pub fn as_str(self) -> &'static str {
        match self {
            UsageSource::Reported => "reported",
            UsageSource::Estimated => "estimated",
            UsageSource::Missing => "missing",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_names() {
        for &kind in AccountKind::ALL {
            assert_eq!(AccountKind::parse(kind.as_str()), Some(kind));
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
        }
        assert_eq!(AccountKind::parse("claude"), None);
    }

    #[test]
    fn credentials_that_cannot_be_sent_are_named_without_their_value() {
        assert_eq!(credential_problem("api_key", "  sk-ant-123 \n"), None);
        for bad in ["sk-ant\n123", "sk-\u{e9}t\u{e9}", "a\rb", "x\u{0}"] {
            let problem = credential_problem("api_key", bad).expect(bad);
            assert!(problem.starts_with("credentials.api_key"), "{problem}");
            assert!(!problem.contains("sk-"));
        }
        assert!(credential_problem("access_token", "t\nx").is_some());
        assert_eq!(credential_problem("refresh_token", "r\u{e9}fresh"), None);
        assert!(credential_problem("refresh_token", "r\nx").is_some());
    }
}
