//! Upstream requests per account kind: where they go, which credential they
//! carry, and which client headers may come along.
use aiproxy_shared::http::json_bytes;
use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use http_body_util::Full;

use aiproxy_shared::domain::AccountKind;

use crate::errors::RelayError;
use crate::routes::Endpoint;
use crate::snapshot::AccountEntry;

const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";
/// Beta flag every Claude OAuth (subscription) request must carry.
const OAUTH_BETA: &str = "oauth-2025-04-20";

/// A client request, ready to be sent to any account that serves it.
pub struct Outgoing<'a> {
    pub endpoint: &'a Endpoint,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: Bytes,
    /// The request's id, for what is logged about it.
    pub request_id: &'a str,
}

/// The upstream request for `account`.
pub fn build(
    account: &AccountEntry,
    out: &Outgoing<'_>,
) -> Result<Request<Full<Bytes>>, RelayError> {
    let (url, allowed): (String, fn(&HeaderName) -> bool) = match (account.kind, out.endpoint) {
        (
            AccountKind::ClaudeApi | AccountKind::ClaudeOauth | AccountKind::ClaudeSessionKey,
            Endpoint::AnthropicMessages | Endpoint::AnthropicCountTokens,
        ) => (
            with_query(
                format!("{}{}", account.base_url, out.endpoint.name()),
                out.query,
            ),
            anthropic_header,
        ),
        (AccountKind::OpenAiResponses, Endpoint::OpenAiResponses) => {
            (format!("{}/responses", account.base_url), codex_header)
        }
        (
            AccountKind::GeminiOauth,
            Endpoint::GeminiGenerate { .. } | Endpoint::GeminiCountTokens { .. },
        ) => (
            format!(
                "{}/v1internal:{}",
                account.base_url,
                gemini_action(out.endpoint)
            ),
            gemini_header,
        ),
        (AccountKind::OpenAi, Endpoint::OpenAiChat | Endpoint::OpenAiResponses) => (
            join_v1(&account.base_url, out.endpoint.name()),
            openai_header,
        ),
        (
            AccountKind::GeminiApi,
            Endpoint::GeminiGenerate { model, .. } | Endpoint::GeminiCountTokens { model },
        ) => (
            format!(
                "{}/v1beta/models/{model}:{}",
                account.base_url,
                gemini_action(out.endpoint)
            ),
            gemini_header,
        ),
        (kind, endpoint) => {
            return Err(RelayError::upstream(format!(
                "{} accounts do not serve {}",
                kind.as_str(),
                endpoint.name()
            )));
        }
    };
    let uri: Uri = url
        .parse()
        .map_err(|_| RelayError::upstream("account base_url is not a valid URL"))?;
    let body = match account.kind {
        AccountKind::OpenAiResponses => codex_body(&out.body)?,
        AccountKind::GeminiOauth => code_assist_body(account, out)?,
        _ => out.body.clone(),
    };
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = uri;
    let headers = req.headers_mut();
    for (name, value) in out.headers {
        if allowed(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    headers
        .entry(header::CONTENT_TYPE)
        .or_insert(HeaderValue::from_static("application/json"));
    let missing =
        |what: &str| RelayError::upstream(format!("account {} has no {what}", account.id));
    match account.kind {
        AccountKind::ClaudeApi => {
            headers.insert(
                "x-api-key",
                account.api_key.clone().ok_or_else(|| missing("api_key"))?,
            );
            headers
                .entry("anthropic-version")
                .or_insert(HeaderValue::from_static(DEFAULT_ANTHROPIC_VERSION));
        }
        AccountKind::ClaudeOauth | AccountKind::ClaudeSessionKey => {
            let bearer = account
                .bearer
                .clone()
                .ok_or_else(|| missing("access_token"))?;
            headers.insert(header::AUTHORIZATION, bearer);
            headers
                .entry("anthropic-version")
                .or_insert(HeaderValue::from_static(DEFAULT_ANTHROPIC_VERSION));
            let betas = merge_betas(out.headers, OAUTH_BETA);
            headers.insert(
                "anthropic-beta",
                HeaderValue::from_str(&betas)
                    .map_err(|_| RelayError::bad_request("invalid anthropic-beta header"))?,
            );
        }
        AccountKind::OpenAi => {
            let key = account.api_key.as_ref().ok_or_else(|| missing("api_key"))?;
            let bearer =
                HeaderValue::from_str(&format!("Bearer {}", key.to_str().unwrap_or_default()))
                    .map_err(|_| missing("usable api_key"))?;
            headers.insert(header::AUTHORIZATION, bearer);
        }
        AccountKind::GeminiApi => {
            headers.insert(
                "x-goog-api-key",
                account.api_key.clone().ok_or_else(|| missing("api_key"))?,
            );
        }
        AccountKind::GeminiOauth => {
            headers.insert(
                header::AUTHORIZATION,
                account
                    .bearer
                    .clone()
                    .ok_or_else(|| missing("access_token"))?,
            );
        }
        AccountKind::OpenAiResponses => {
            headers.insert(
                header::AUTHORIZATION,
                account
                    .bearer
                    .clone()
                    .ok_or_else(|| missing("access_token"))?,
            );
            headers.insert(
                header::ACCEPT,
                HeaderValue::from_static("text/event-stream"),
            );
            headers
                .entry("originator")
                .or_insert(HeaderValue::from_static("codex_cli_rs"));
        }
    }
    for (name, value) in &account.extra_headers {
        headers.insert(name.clone(), value.clone());
    }
    Ok(req)
}

/// ChatGPT's Codex backend only streams and never stores: the request says so,
/// whatever the client asked (a non-streaming client gets the stream folded).
fn codex_body(body: &Bytes) -> Result<Bytes, RelayError> {
    let mut v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| RelayError::bad_request(format!("invalid JSON body: {e}")))?;
    let obj = v
        .as_object_mut()
        .ok_or_else(|| RelayError::bad_request("request body must be a JSON object"))?;
    obj.insert("stream".into(), serde_json::Value::Bool(true));
    obj.insert("store".into(), serde_json::Value::Bool(false));
    Ok(json_bytes(&v))
}

/// Code Assist wraps the Gemini request: `{model, project, user_prompt_id,
/// request}` to generate, `{request: {model: "models/…", contents}}` to count.
fn code_assist_body(account: &AccountEntry, out: &Outgoing<'_>) -> Result<Bytes, RelayError> {
    let request: serde_json::Value = serde_json::from_slice(&out.body)
        .map_err(|e| RelayError::bad_request(format!("invalid JSON body: {e}")))?;
    let wrapped = match out.endpoint {
        Endpoint::GeminiCountTokens { model } => serde_json::json!({
            "request": { "model": format!("models/{model}"), "contents": request.get("contents").cloned().unwrap_or_default() },
        }),
        Endpoint::GeminiGenerate { model, .. } => {
            let project = account.project.as_deref().ok_or_else(|| {
                RelayError::upstream(format!(
                    "account {} has no Code Assist project yet",
                    account.id
                ))
            })?;
            serde_json::json!({
                "model": model,
                "project": project,
                "user_prompt_id": uuid::Uuid::now_v7().to_string(),
                "request": request,
            })
        }
        _ => {
            return Err(RelayError::upstream(
                "Code Assist accounts serve only Gemini endpoints",
            ));
        }
    };
    Ok(json_bytes(&wrapped))
}

/// The Gemini method (and stream flag) an endpoint calls.
fn gemini_action(endpoint: &Endpoint) -> &'static str {
    match endpoint {
        Endpoint::GeminiGenerate { stream: true, .. } => "streamGenerateContent?alt=sse",
        Endpoint::GeminiCountTokens { .. } => "countTokens",
        _ => "generateContent",
    }
}

fn with_query(url: String, query: Option<&str>) -> String {
    match query {
        Some(q) => format!("{url}?{q}"),
        None => url,
    }
}

/// `base` + `path` where both may say `/v1` (OpenAI-compatible base URLs
/// are often given as `https://host/v1`).
fn join_v1(base: &str, path: &str) -> String {
    match (base.strip_suffix("/v1"), path.strip_prefix("/v1")) {
        (Some(_), Some(rest)) => format!("{base}{rest}"),
        _ => format!("{base}{path}"),
    }
}

/// The client's `anthropic-beta` flags with `required` added once.
fn merge_betas(client: &HeaderMap, required: &str) -> String {
    let mut betas: Vec<&str> = client
        .get_all("anthropic-beta")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .collect();
    if !betas.contains(&required) {
        betas.insert(0, required);
    }
    betas.join(",")
}

/// Client headers an Anthropic upstream may see. Credentials, cookies,
/// forwarding and hop-by-hop headers are never among them.
fn anthropic_header(name: &HeaderName) -> bool {
    let n = name.as_str();
    matches!(
        n,
        "anthropic-version"
            | "anthropic-beta"
            | "content-type"
            | "accept"
            | "user-agent"
            | "x-app"
            | "anthropic-dangerous-direct-browser-access"
    ) || n.starts_with("x-stainless-")
}

fn openai_header(name: &HeaderName) -> bool {
    let n = name.as_str();
    matches!(n, "content-type" | "accept" | "user-agent" | "openai-beta")
        || n.starts_with("x-stainless-")
}

fn codex_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "content-type"
            | "user-agent"
            | "openai-beta"
            | "session_id"
            | "conversation_id"
            | "version"
            | "originator"
    )
}

fn gemini_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "content-type" | "accept" | "user-agent" | "x-goog-api-client"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(kind: AccountKind, base: &str) -> AccountEntry {
        AccountEntry {
            base_url: base.into(),
            api_key: Some(HeaderValue::from_static("upstream-key")),
            bearer: Some(HeaderValue::from_static("Bearer upstream-token")),
            extra_headers: vec![(
                HeaderName::from_static("chatgpt-account-id"),
                HeaderValue::from_static("acc-1"),
            )],
            ..AccountEntry::for_tests(kind)
        }
    }

    fn client_headers() -> HeaderMap {
        let mut client = HeaderMap::new();
        for (k, v) in [
            ("x-api-key", "sk-aiproxy-client"),
            ("authorization", "Bearer sk-aiproxy-client"),
            ("x-goog-api-key", "sk-aiproxy-client"),
            ("cookie", "a=b"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
            ("accept-encoding", "gzip, br"),
            ("connection", "keep-alive"),
            (
                "anthropic-beta",
                "prompt-caching-2024-07-31, oauth-2025-04-20",
            ),
            ("x-stainless-lang", "python"),
            ("user-agent", "claude-cli/2.1.0 (external, cli)"),
        ] {
            client.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        client
    }

    fn send(
        kind: AccountKind,
        base: &str,
        endpoint: Endpoint,
        query: Option<&str>,
    ) -> Request<Full<Bytes>> {
        let headers = client_headers();
        build(
            &account(kind, base),
            &Outgoing {
                request_id: "r",
                endpoint: &endpoint,
                query,
                headers: &headers,
                body: Bytes::new(),
            },
        )
        .unwrap()
    }

    fn assert_no_client_secrets(req: &Request<Full<Bytes>>) {
        let h = req.headers();
        assert!(
            !format!("{h:?}").contains("sk-aiproxy-client"),
            "client key forwarded: {h:?}"
        );
        for gone in ["cookie", "x-forwarded-for", "x-real-ip", "connection"] {
            assert!(!h.contains_key(gone), "{gone} was forwarded");
        }
        assert_eq!(h["accept-encoding"], "identity");
    }

    #[test]
    fn claude_api_key_account() {
        let req = send(
            AccountKind::ClaudeApi,
            "http://up",
            Endpoint::AnthropicMessages,
            Some("beta=true"),
        );
        assert_eq!(req.uri(), "http://up/v1/messages?beta=true");
        assert_eq!(req.headers()["x-api-key"], "upstream-key");
        assert_eq!(req.headers()["x-stainless-lang"], "python");
        assert!(!req.headers().contains_key("authorization"));
        assert_no_client_secrets(&req);
        let req = send(
            AccountKind::ClaudeApi,
            "http://up",
            Endpoint::AnthropicCountTokens,
            None,
        );
        assert_eq!(req.uri(), "http://up/v1/messages/count_tokens");
    }

    #[test]
    fn claude_oauth_account_uses_bearer_and_the_oauth_beta() {
        let req = send(
            AccountKind::ClaudeOauth,
            "http://up",
            Endpoint::AnthropicMessages,
            None,
        );
        assert_eq!(req.headers()["authorization"], "Bearer upstream-token");
        assert!(!req.headers().contains_key("x-api-key"));
        assert_eq!(
            req.headers()["anthropic-beta"],
            "prompt-caching-2024-07-31,oauth-2025-04-20"
        );
        assert_no_client_secrets(&req);
        let mut plain = HeaderMap::new();
        plain.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
        assert_eq!(merge_betas(&plain, OAUTH_BETA), "oauth-2025-04-20");
    }

    #[test]
    fn openai_accounts_join_v1_once() {
        let req = send(
            AccountKind::OpenAi,
            "https://api.openai.com",
            Endpoint::OpenAiChat,
            None,
        );
        assert_eq!(req.uri(), "https://api.openai.com/v1/chat/completions");
        assert_eq!(req.headers()["authorization"], "Bearer upstream-key");
        assert_no_client_secrets(&req);
        let req = send(
            AccountKind::OpenAi,
            "https://gw.example/v1",
            Endpoint::OpenAiResponses,
            None,
        );
        assert_eq!(req.uri(), "https://gw.example/v1/responses");
    }

    #[test]
    fn codex_account_streams_never_stores_and_names_the_account() {
        let headers = client_headers();
        let endpoint = Endpoint::OpenAiResponses;
        let body = Bytes::from_static(
            br#"{"model":"gpt-5-codex","input":"hi","stream":false,"store":true}"#,
        );
        let out = Outgoing {
            request_id: "r",
            endpoint: &endpoint,
            query: None,
            headers: &headers,
            body,
        };
        let req = build(
            &account(
                AccountKind::OpenAiResponses,
                "https://chatgpt.com/backend-api/codex",
            ),
            &out,
        )
        .unwrap();
        assert_eq!(req.uri(), "https://chatgpt.com/backend-api/codex/responses");
        assert_eq!(req.headers()["authorization"], "Bearer upstream-token");
        assert_eq!(req.headers()["chatgpt-account-id"], "acc-1");
        assert_eq!(req.headers()["originator"], "codex_cli_rs");
        assert_eq!(req.headers()["accept"], "text/event-stream");
        assert_no_client_secrets(&req);
        let sent = codex_body(&out.body).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&sent).unwrap();
        assert_eq!(
            (v["stream"].as_bool(), v["store"].as_bool()),
            (Some(true), Some(false))
        );
    }

    #[test]
    fn code_assist_account_wraps_the_request() {
        let headers = client_headers();
        let mut acc = account(
            AccountKind::GeminiOauth,
            "https://cloudcode-pa.googleapis.com",
        );
        acc.project = Some("proj-1".into());
        let body = Bytes::from_static(br#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#);
        let endpoint = Endpoint::GeminiGenerate {
            model: "gemini-2.5-pro".into(),
            stream: true,
        };
        let out = Outgoing {
            request_id: "r",
            endpoint: &endpoint,
            query: Some("alt=sse&key=sk-aiproxy-client"),
            headers: &headers,
            body: body.clone(),
        };
        let req = build(&acc, &out).unwrap();
        assert_eq!(
            req.uri(),
            "https://cloudcode-pa.googleapis.com/v1internal:streamGenerateContent?alt=sse"
        );
        assert_eq!(req.headers()["authorization"], "Bearer upstream-token");
        assert_no_client_secrets(&req);
        let sent: serde_json::Value =
            serde_json::from_slice(&code_assist_body(&acc, &out).unwrap()).unwrap();
        assert_eq!(sent["model"], "gemini-2.5-pro");
        assert_eq!(sent["project"], "proj-1");
        assert_eq!(sent["request"]["contents"][0]["parts"][0]["text"], "hi");
        let count = Endpoint::GeminiCountTokens {
            model: "gemini-2.5-pro".into(),
        };
        let out = Outgoing {
            request_id: "r",
            endpoint: &count,
            query: None,
            headers: &headers,
            body,
        };
        let sent: serde_json::Value =
            serde_json::from_slice(&code_assist_body(&acc, &out).unwrap()).unwrap();
        assert_eq!(sent["request"]["model"], "models/gemini-2.5-pro");
        // Without a project the account cannot generate yet.
        acc.project = None;
        let out = Outgoing {
            request_id: "r",
            endpoint: &endpoint,
            query: None,
            headers: &headers,
            body: Bytes::from_static(b"{}"),
        };
        assert!(build(&acc, &out).is_err());
    }

    #[test]
    fn gemini_api_key_account() {
        let endpoint = Endpoint::GeminiGenerate {
            model: "gemini-2.5-pro".into(),
            stream: true,
        };
        let req = send(
            AccountKind::GeminiApi,
            "https://g",
            endpoint,
            Some("key=sk-aiproxy-client"),
        );
        assert_eq!(
            req.uri(),
            "https://g/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
        );
        assert_eq!(req.headers()["x-goog-api-key"], "upstream-key");
        assert_no_client_secrets(&req);
    }

    #[test]
    fn every_served_kind_has_an_adapter() {
        let endpoints = [
            Endpoint::AnthropicMessages,
            Endpoint::AnthropicCountTokens,
            Endpoint::OpenAiChat,
            Endpoint::OpenAiResponses,
            Endpoint::GeminiGenerate {
                model: "m".into(),
                stream: true,
            },
            Endpoint::GeminiCountTokens { model: "m".into() },
        ];
        for endpoint in &endpoints {
            for kind in endpoint.kinds() {
                assert_eq!(kind.platform(), endpoint.platform());
                let account = AccountEntry {
                    project: Some("p".into()),
                    ..AccountEntry::for_tests(*kind)
                };
                let headers = http::HeaderMap::new();
                let out = Outgoing {
                    request_id: "r",
                    endpoint,
                    query: None,
                    headers: &headers,
                    body: bytes::Bytes::from_static(b"{}"),
                };
                assert!(
                    build(&account, &out).is_ok(),
                    "{kind:?} cannot serve {endpoint:?}"
                );
            }
        }
    }
}
