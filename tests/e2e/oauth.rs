//! OAuth accounts: tokens refreshed when refused or about to expire, and
//! ChatGPT (Codex) accounts serving `/v1/responses`.
use std::time::Duration;

use aiproxy_tests::mock::{
    CHATGPT_ACCOUNT_ID, CODE_ASSIST_PROJECT, MockUpstream, Recorded, USAGE, gemini_events,
    responses_events, unsigned_jwt,
};
use serde_json::{Value, json};

use crate::embedded::{Embedded, logged, start_with};

async fn setup() -> (Embedded, MockUpstream, String) {
    let mock = MockUpstream::start().await;
    let e = start_with(&[
        (
            "AIPROXY_CLAUDE_TOKEN_URL",
            format!("{}/v1/oauth/token", mock.url()),
        ),
        (
            "AIPROXY_OPENAI_TOKEN_URL",
            format!("{}/oauth/token", mock.url()),
        ),
        ("AIPROXY_GOOGLE_TOKEN_URL", format!("{}/token", mock.url())),
        ("AIPROXY_CLAUDE_WEB_URL", mock.url()),
    ])
    .await;
    let key = e.user_key("oauth-user").await;
    (e, mock, key)
}

fn token_calls(mock: &MockUpstream, path: &str) -> Vec<Recorded> {
    mock.received()
        .into_iter()
        .filter(|r| r.path_and_query == path)
        .collect()
}

async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    aiproxy_tests::harness::eventually(what, Duration::from_secs(10), async || {
        check().await.ok_or_else(|| "not yet".to_string())
    })
    .await
}

#[tokio::test]
async fn a_refused_token_is_refreshed_once_and_then_used() {
    let (e, mock, key) = setup().await;
    let account = e
        .admin
        .expect(
            "POST",
            "/accounts",
            Some(
                json!({"name": "max", "type": "claude-oauth", "base_url": mock.url(),
                        "credentials": {"access_token": "expired-token", "refresh_token": "r1"}}),
            ),
            201,
        )
        .await;
    let url = format!("{}/v1/messages", e.proxy);
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]});
    let reply = eventually("a successful request after the refresh", async || {
        let reply = e
            .http
            .send("POST", &url, &[("x-api-key", &key)], Some(&body))
            .await;
        (reply.status == 200).then_some(reply)
    })
    .await;
    let row = logged(&e.admin, reply.headers["x-request-id"].to_str().unwrap()).await;
    assert_eq!(row["input_tokens"], USAGE.input);

    let calls = token_calls(&mock, "/v1/oauth/token");
    assert_eq!(
        calls.len(),
        1,
        "one refresh however many nodes or requests saw the 401"
    );
    assert_eq!(calls[0].body["grant_type"], "refresh_token");
    assert_eq!(calls[0].body["refresh_token"], "r1");
    assert_eq!(
        calls[0].body["client_id"],
        "9d1c250a-e61b-44d9-88ed-5944d1962f5e"
    );
    let inference: Vec<Recorded> = mock
        .received()
        .into_iter()
        .filter(|r| r.path_and_query == "/v1/messages")
        .collect();
    assert_eq!(
        inference.last().unwrap().headers["authorization"],
        "Bearer fresh-r1"
    );

    // The rotated refresh token was stored: the next refresh uses it.
    let view = e
        .admin
        .expect("GET", &format!("/accounts/{}", account["id"]), None, 200)
        .await;
    assert_eq!(view["status"], "valid");
    assert!(
        !view.to_string().contains("r1-rotated"),
        "tokens never shown"
    );
    e.process.stop().await;
}

#[tokio::test]
async fn a_dead_refresh_token_flags_the_account() {
    let (e, mock, key) = setup().await;
    let account = e
        .admin
        .expect(
            "POST",
            "/accounts",
            Some(
                json!({"name": "revoked", "type": "claude-oauth", "base_url": mock.url(),
                        "credentials": {"access_token": "expired-token", "refresh_token": "dead"}}),
            ),
            201,
        )
        .await;
    let url = format!("{}/v1/messages", e.proxy);
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": []});
    // The upstream's own 401 reaches the client while the refresh fails...
    eventually("the upstream's 401", async || {
        let reply = e
            .http
            .send("POST", &url, &[("x-api-key", &key)], Some(&body))
            .await;
        (reply.status == 401 && reply.json()["error"]["message"] == "mock authentication_error")
            .then_some(())
    })
    .await;
    // ...and the operator sees why the account stopped.
    let path = format!("/accounts/{}", account["id"]);
    let view: Value = eventually("the account to be flagged", async || {
        let view = e.admin.expect("GET", &path, None, 200).await;
        (view["status"] == "invalid").then_some(view)
    })
    .await;
    assert!(
        view["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("OAuth refresh refused (400)"),
        "{view}"
    );
    // An invalid account is no longer scheduled.
    crate::embedded::wait_for_status(&e.http, &url, &[("x-api-key", &key)], &body, 503).await;
    e.process.stop().await;
}

#[tokio::test]
async fn codex_accounts_refresh_ahead_of_expiry_and_serve_responses() {
    let (e, mock, key) = setup().await;
    let soon = chrono::Utc::now().timestamp() + 60;
    let access = unsigned_jwt(&json!({"exp": soon}));
    e.admin
        .expect(
            "POST",
            "/accounts",
            Some(json!({"name": "chatgpt", "type": "openai-responses", "base_url": format!("{}/backend-api/codex", mock.url()),
                        "credentials": {"access_token": access, "refresh_token": "c1"}})),
            201,
        )
        .await;
    // Expiring within five minutes: refreshed without waiting for a failure.
    let call = eventually("the ahead-of-expiry refresh", async || {
        token_calls(&mock, "/oauth/token").pop()
    })
    .await;
    assert_eq!(call.body["client_id"], "app_EMoamEEZ73f0CkXaXp7hrann");
    assert_eq!(call.body["refresh_token"], "c1");

    let url = format!("{}/v1/responses", e.proxy);
    let auth = format!("Bearer {key}");
    let headers = [("authorization", auth.as_str()), ("session_id", "sess-1")];
    let body = json!({"model": "gpt-5-codex", "input": "hi", "instructions": "be brief"});
    let reply = eventually("a folded Responses answer", async || {
        let reply = e.http.send("POST", &url, &headers, Some(&body)).await;
        let seen = mock
            .received()
            .into_iter()
            .rfind(|r| r.path_and_query == "/backend-api/codex/responses");
        (reply.status == 200
            && seen.is_some_and(|r| r.headers["authorization"] == "Bearer fresh-c1"))
        .then_some(reply)
    })
    .await;
    let answer = reply.json();
    assert_eq!(answer["object"], "response");
    assert_eq!(
        answer["output"][0]["content"][0]["text"],
        "Hello from the mock."
    );
    let row = logged(&e.admin, reply.headers["x-request-id"].to_str().unwrap()).await;
    assert_eq!(row["output_tokens"], USAGE.output);
    assert_eq!(row["cache_read_tokens"], USAGE.cache_read);
    assert_eq!(row["stream"], false);

    let upstream = mock
        .received()
        .into_iter()
        .rfind(|r| r.path_and_query == "/backend-api/codex/responses")
        .unwrap();
    assert_eq!(upstream.headers["chatgpt-account-id"], CHATGPT_ACCOUNT_ID);
    assert_eq!(upstream.headers["originator"], "codex_cli_rs");
    assert_eq!(upstream.headers["session_id"], "sess-1");
    assert_eq!(upstream.body["stream"], true);
    assert_eq!(upstream.body["store"], false);
    assert!(!format!("{:?}", upstream.headers).contains(&key));

    let streamed = e
        .http
        .send(
            "POST",
            &url,
            &headers,
            Some(&json!({"model": "gpt-5-codex", "input": "hi", "stream": true})),
        )
        .await;
    assert_eq!(streamed.text(), responses_events("gpt-5-codex").concat());
    e.process.stop().await;
}

#[tokio::test]
async fn gemini_code_assist_accounts_find_their_project_and_unwrap_answers() {
    let (e, mock, key) = setup().await;
    let soon = (chrono::Utc::now().timestamp() + 60).to_string();
    let account = e
        .admin
        .expect(
            "POST",
            "/accounts",
            Some(json!({"name": "google", "type": "gemini-oauth", "base_url": mock.url(),
                        "credentials": {"access_token": "expired-token", "refresh_token": "g1", "expires_at": soon}})),
            201,
        )
        .await;
    // Refreshed with Gemini CLI's client, then onboarded to a Code Assist project.
    let call = eventually("the Google token refresh", async || {
        token_calls(&mock, "/token").pop()
    })
    .await;
    assert_eq!(call.body["grant_type"], "refresh_token");
    assert_eq!(call.body["refresh_token"], "g1");
    assert_eq!(
        call.body["client_id"],
        "681255809395-oo8ft2oprdrnp9e3aqf6av3hmdib135j.apps.googleusercontent.com"
    );
    assert!(
        call.body["client_secret"]
            .as_str()
            .is_some_and(|s| s.starts_with("GOCSPX-"))
    );

    let base = format!("{}/v1beta/models/gemini-2.5-flash", e.proxy);
    let headers = [("x-goog-api-key", key.as_str())];
    let body = json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]});
    let reply = eventually("a Code Assist answer", async || {
        let reply = e
            .http
            .send(
                "POST",
                &format!("{base}:generateContent"),
                &headers,
                Some(&body),
            )
            .await;
        (reply.status == 200).then_some(reply)
    })
    .await;
    let answer = reply.json();
    assert!(
        answer.get("response").is_none(),
        "Code Assist wrapping removed: {answer}"
    );
    assert_eq!(
        answer["candidates"][0]["content"]["parts"][0]["text"],
        " from the mock."
    );
    let row = logged(&e.admin, reply.headers["x-request-id"].to_str().unwrap()).await;
    assert_eq!(row["cost"], "0.000105");
    assert_eq!(row["account_id"], account["id"]);

    let upstream = mock
        .received()
        .into_iter()
        .rfind(|r| r.path_and_query == "/v1internal:generateContent")
        .unwrap();
    assert_eq!(upstream.headers["authorization"], "Bearer fresh-g1");
    assert_eq!(upstream.body["project"], CODE_ASSIST_PROJECT);
    assert_eq!(upstream.body["model"], "gemini-2.5-flash");
    assert_eq!(
        upstream.body["request"]["contents"][0]["parts"][0]["text"],
        "hi"
    );

    let streamed = e
        .http
        .send(
            "POST",
            &format!("{base}:streamGenerateContent?alt=sse"),
            &headers,
            Some(&body),
        )
        .await;
    assert_eq!(streamed.status, 200);
    assert_eq!(streamed.text(), gemini_events("gemini-2.5-flash").concat());
    let row = logged(&e.admin, streamed.headers["x-request-id"].to_str().unwrap()).await;
    assert_eq!(row["output_tokens"], USAGE.output);
    let counted = e
        .http
        .send(
            "POST",
            &format!("{base}:countTokens"),
            &headers,
            Some(&body),
        )
        .await;
    assert_eq!(counted.json(), json!({"totalTokens": 42}));
    e.process.stop().await;
}

#[tokio::test]
async fn claude_session_keys_are_exchanged_for_oauth_tokens() {
    let (e, mock, key) = setup().await;
    let good = e
        .admin
        .expect(
            "POST",
            "/accounts",
            Some(
                json!({"name": "web", "type": "claude-session-key", "base_url": mock.url(),
                        "credentials": {"session_key": aiproxy_tests::mock::GOOD_SESSION_KEY}}),
            ),
            201,
        )
        .await;
    let url = format!("{}/v1/messages", e.proxy);
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]});
    eventually("a request served by the exchanged token", async || {
        let reply = e
            .http
            .send("POST", &url, &[("x-api-key", &key)], Some(&body))
            .await;
        (reply.status == 200).then_some(())
    })
    .await;
    let exchange = token_calls(&mock, "/v1/oauth/token").pop().unwrap();
    assert_eq!(exchange.body["grant_type"], "authorization_code");
    assert_eq!(
        exchange.body["redirect_uri"],
        "https://platform.claude.com/oauth/code/callback"
    );
    let upstream = mock
        .received()
        .into_iter()
        .rfind(|r| r.path_and_query == "/v1/messages")
        .unwrap();
    assert_eq!(upstream.headers["authorization"], "Bearer from-session");
    assert!(upstream.headers["anthropic-beta"].contains("oauth-2025-04-20"));
    let view = e
        .admin
        .expect("GET", &format!("/accounts/{}", good["id"]), None, 200)
        .await;
    assert_eq!(view["status"], "valid");
    assert!(!view.to_string().contains("from-session"));

    // A session claude.ai no longer accepts flags the account.
    let bad = e
        .admin
        .expect(
            "POST",
            "/accounts",
            Some(
                json!({"name": "stale", "type": "claude-session-key", "base_url": mock.url(),
                        "credentials": {"session_key": "sk-ant-sid01-expired"}}),
            ),
            201,
        )
        .await;
    let path = format!("/accounts/{}", bad["id"]);
    let view: Value = eventually("the stale session to be flagged", async || {
        let view = e.admin.expect("GET", &path, None, 200).await;
        (view["status"] == "invalid").then_some(view)
    })
    .await;
    assert_eq!(
        view["disabled_reason"],
        "sessionKey refused by claude.ai organizations (403)"
    );
    e.process.stop().await;
}

#[tokio::test]
async fn subscriptions_are_added_by_signing_in_and_pasting_the_code() {
    let (e, mock, key) = setup().await;
    let admin = &e.admin;
    for (provider, pasted, kind) in [
        ("claude", "{code}#{state}", "claude-oauth"),
        (
            "openai",
            "http://localhost:1455/auth/callback?code={code}&scope=openid&state={state}",
            "openai-responses",
        ),
    ] {
        let started = admin
            .expect(
                "POST",
                "/oauth/authorize",
                Some(json!({"provider": provider})),
                200,
            )
            .await;
        let url = started["authorize_url"].as_str().unwrap();
        let state = started["state"].as_str().unwrap();
        assert!(url.contains("code_challenge_method=S256"), "{url}");
        assert!(url.contains(&format!("state={state}")), "{url}");
        // The person opens the link; the mock's page shows the code.
        let path = url.split_once("/oauth/authorize").unwrap().1;
        let page = e
            .http
            .send(
                "GET",
                &format!("{}/oauth/authorize{path}", mock.url()),
                &[],
                None,
            )
            .await
            .json();
        assert_eq!(page["state"], state);
        let code = page["code"].as_str().unwrap();
        let pasted = pasted.replace("{code}", code).replace("{state}", state);
        let wrong = admin
            .call(
                "POST",
                "/oauth/exchange",
                Some(json!({"state": state, "code": format!("{code}#someone-elses-state"), "name": "x"})),
            )
            .await;
        assert_eq!(wrong.status, 400, "{}", wrong.text());
        let account = admin
            .expect(
                "POST",
                "/oauth/exchange",
                Some(json!({"state": state, "code": pasted, "name": format!("{provider} subscription")})),
                201,
            )
            .await;
        assert_eq!(account["type"], kind);
        assert!(
            account["credentials"]["access_token"].is_string(),
            "{account}"
        );
        assert!(
            account["credentials"]["refresh_token"].is_string(),
            "{account}"
        );
        if provider == "openai" {
            assert!(
                account["credentials"]["account_id"].is_string(),
                "the ChatGPT account id comes from the id token"
            );
        }
        let tampered = admin
            .call(
                "POST",
                "/oauth/exchange",
                Some(json!({"state": "00ff", "code": "c", "name": "x"})),
            )
            .await;
        assert_eq!(tampered.status, 400);
    }
    let audit = admin
        .expect(
            "GET",
            "/audit-logs?target=/api/v1/oauth/exchange",
            None,
            200,
        )
        .await;
    assert!(
        !audit.to_string().contains("mock-code"),
        "codes stay out of the audit log"
    );
    drop(key);
    e.process.stop().await;
}
