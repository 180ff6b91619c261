//! Every endpoint with every account kind that serves it, streaming and not.
use aiproxy_tests::mock::{MockUpstream, USAGE, chat_events, gemini_events, responses_events};
use serde_json::{Value, json};

use crate::embedded::{Embedded, logged, start, wait_for_status};

async fn setup() -> (Embedded, MockUpstream, String) {
    let mock = MockUpstream::start().await;
    let e = start().await;
    for (name, kind, creds) in [
        (
            "claude-oauth",
            "claude-oauth",
            json!({"access_token": "sk-ant-oat01-upstream", "refresh_token": "r"}),
        ),
        ("openai", "openai", json!({"api_key": "sk-openai-upstream"})),
        (
            "gemini",
            "gemini-api",
            json!({"api_key": "gemini-upstream"}),
        ),
    ] {
        e.admin
            .expect("POST", "/accounts", Some(json!({"name": name, "type": kind, "base_url": mock.url(), "credentials": creds})), 201)
            .await;
    }
    let key = e.user_key("plato").await;
    (e, mock, key)
}

fn assert_tokens(row: &Value, output: u64, cost: &str) {
    assert_eq!(row["input_tokens"], USAGE.input, "{row}");
    assert_eq!(row["cache_read_tokens"], USAGE.cache_read, "{row}");
    assert_eq!(row["output_tokens"], output, "{row}");
    assert_eq!(row["usage_source"], "reported", "{row}");
    assert_eq!(row["cost"], cost, "{row}");
}

fn request_id(reply: &aiproxy_tests::client::Reply) -> String {
    reply.headers["x-request-id"].to_str().unwrap().to_string()
}

#[tokio::test]
async fn openai_chat_completions_and_responses() {
    let (e, mock, key) = setup().await;
    let bearer = format!("Bearer {key}");
    let headers = [("authorization", bearer.as_str())];
    let chat = format!("{}/v1/chat/completions", e.proxy);
    let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]});
    let reply = wait_for_status(&e.http, &chat, &headers, &body, 200).await;
    assert_eq!(
        reply.json()["choices"][0]["message"]["content"],
        "Hello from the mock."
    );
    // 25×2.5 + 15×10 + 2000×1.25 = 2712.5 per million
    assert_tokens(
        &logged(&e.admin, &request_id(&reply)).await,
        USAGE.output,
        "0.0027125",
    );
    let seen = mock.received();
    let last = seen.last().unwrap();
    assert_eq!(last.headers["authorization"], "Bearer sk-openai-upstream");
    assert!(!format!("{:?}", last.headers).contains(&key));

    // A stream the client did not ask usage for is still billed; the client
    // gets every chunk, plus the usage chunk it can ignore.
    let reply = e
        .http
        .send(
            "POST",
            &chat,
            &headers,
            Some(&json!({"model": "gpt-4o", "stream": true, "messages": []})),
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), chat_events("gpt-4o", true).concat());
    assert_eq!(
        mock.received().last().unwrap().body["stream_options"]["include_usage"],
        true
    );
    assert_tokens(
        &logged(&e.admin, &request_id(&reply)).await,
        USAGE.output,
        "0.0027125",
    );

    // Responses, at /v1/responses and /responses.
    let body = json!({"model": "gpt-5", "input": "hi"});
    let reply = e
        .http
        .send(
            "POST",
            &format!("{}/v1/responses", e.proxy),
            &headers,
            Some(&body),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.json()["output"][0]["content"][0]["text"],
        "Hello from the mock."
    );
    // 25×1.25 + 15×10 + 2000×0.125 = 431.25 per million
    assert_tokens(
        &logged(&e.admin, &request_id(&reply)).await,
        USAGE.output,
        "0.00043125",
    );
    let reply = e
        .http
        .send(
            "POST",
            &format!("{}/responses", e.proxy),
            &headers,
            Some(&json!({"model": "gpt-5", "input": "hi", "stream": true})),
        )
        .await;
    assert_eq!(reply.text(), responses_events("gpt-5").concat());
    let row = logged(&e.admin, &request_id(&reply)).await;
    assert_tokens(&row, USAGE.output, "0.00043125");
    assert_eq!(row["endpoint"], "/v1/responses");
    assert_eq!(
        mock.received().last().unwrap().path_and_query,
        "/v1/responses"
    );

    // Errors come back in OpenAI's shape.
    let reply = e
        .http
        .send(
            "POST",
            &chat,
            &[("authorization", "Bearer sk-aiproxy-nope")],
            Some(&body),
        )
        .await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["error"]["message"], "invalid api key");
    let reply = e
        .http
        .send("POST", &chat, &headers, Some(&json!({"messages": []})))
        .await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"]["type"], "invalid_request_error");
    e.process.stop().await;
}

#[tokio::test]
async fn gemini_generate_stream_and_count() {
    let (e, mock, key) = setup().await;
    let base = format!("{}/v1beta/models/gemini-2.5-flash", e.proxy);
    let body = json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]});
    let headers = [("x-goog-api-key", key.as_str())];
    let reply = wait_for_status(
        &e.http,
        &format!("{base}:generateContent"),
        &headers,
        &body,
        200,
    )
    .await;
    assert_eq!(
        reply.json()["candidates"][0]["content"]["parts"][0]["text"],
        " from the mock."
    );
    // 25×0.30 + 15×2.50 + 2000×0.03 = 105 per million; thoughts are output.
    let row = logged(&e.admin, &request_id(&reply)).await;
    assert_tokens(&row, USAGE.output, "0.000105");
    assert_eq!(row["platform"], "gemini");
    let last = mock.received().pop().unwrap();
    assert_eq!(last.headers["x-goog-api-key"], "gemini-upstream");

    // Streaming with the key in the query, as the Gemini SDKs may send it.
    let url = format!("{base}:streamGenerateContent?alt=sse&key={key}");
    let reply = e.http.send("POST", &url, &[], Some(&body)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), gemini_events("gemini-2.5-flash").concat());
    assert_tokens(
        &logged(&e.admin, &request_id(&reply)).await,
        USAGE.output,
        "0.000105",
    );
    let last = mock.received().pop().unwrap();
    assert_eq!(
        last.path_and_query,
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    );

    // countTokens is relayed but not billed.
    let reply = e
        .http
        .send(
            "POST",
            &format!("{base}:countTokens"),
            &headers,
            Some(&body),
        )
        .await;
    assert_eq!(reply.json()["totalTokens"], 42);

    // Errors in Google's shape.
    let reply = e
        .http
        .send(
            "POST",
            &format!("{base}:generateContent"),
            &[("x-goog-api-key", "bad")],
            Some(&body),
        )
        .await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["error"]["status"], "UNAUTHENTICATED");

    let models = e
        .http
        .send("GET", &format!("{}/v1beta/models", e.proxy), &headers, None)
        .await
        .json();
    let names: Vec<&str> = models["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"models/gemini-2.5-flash"), "{names:?}");
    assert!(names.iter().all(|n| n.starts_with("models/gemini")));
    e.process.stop().await;
}

#[tokio::test]
async fn claude_oauth_accounts_and_token_counting() {
    let (e, mock, key) = setup().await;
    let url = format!("{}/v1/messages?beta=true", e.proxy);
    let headers = [
        ("x-api-key", key.as_str()),
        ("anthropic-version", "2023-06-01"),
        (
            "anthropic-beta",
            "claude-code-20250219,interleaved-thinking-2025-05-14",
        ),
    ];
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]});
    let reply = wait_for_status(&e.http, &url, &headers, &body, 200).await;
    let row = logged(&e.admin, &request_id(&reply)).await;
    assert_eq!(row["cost"], "0.00141");
    let last = mock.received().pop().unwrap();
    assert_eq!(last.path_and_query, "/v1/messages?beta=true");
    assert_eq!(
        last.headers["authorization"],
        "Bearer sk-ant-oat01-upstream"
    );
    assert!(
        !last.headers.contains_key("x-api-key"),
        "OAuth accounts send no x-api-key"
    );
    assert_eq!(
        last.headers["anthropic-beta"],
        "oauth-2025-04-20,claude-code-20250219,interleaved-thinking-2025-05-14"
    );

    let before = e.admin.expect("GET", "/request-logs", None, 200).await["total"]
        .as_i64()
        .unwrap();
    let reply = e
        .http
        .send(
            "POST",
            &format!("{}/v1/messages/count_tokens", e.proxy),
            &headers,
            Some(&body),
        )
        .await;
    assert_eq!(reply.json(), json!({"input_tokens": 42}));
    // Token counting is not billed: no new request log.
    let reply = e.http.send("POST", &url, &headers, Some(&body)).await;
    logged(&e.admin, &request_id(&reply)).await;
    let after = e.admin.expect("GET", "/request-logs", None, 200).await["total"]
        .as_i64()
        .unwrap();
    assert_eq!(after, before + 1);

    // The models this key may use, in Anthropic's shape when asked by an Anthropic client.
    let models = e
        .http
        .send("GET", &format!("{}/v1/models", e.proxy), &headers, None)
        .await
        .json();
    assert_eq!(models["data"][0]["type"], "model");
    let openai_style = e
        .http
        .send(
            "GET",
            &format!("{}/v1/models", e.proxy),
            &[("authorization", &format!("Bearer {key}"))],
            None,
        )
        .await
        .json();
    assert_eq!(openai_style["object"], "list");
    e.process.stop().await;
}

#[tokio::test]
async fn rate_limit_signals_reach_the_client_unchanged() {
    use aiproxy_tests::mock::RESET_AT;
    let mock = MockUpstream::start().await;
    let e = crate::embedded::start().await;
    for (name, kind, priority, creds) in [
        ("claude", "claude-api", 1, json!({"api_key": "mock-429"})),
        ("openai", "openai", 1, json!({"api_key": "mock-429"})),
        (
            "codex",
            "openai-responses",
            2,
            json!({"access_token": "mock-429", "account_id": "acc"}),
        ),
        ("gemini", "gemini-api", 1, json!({"api_key": "mock-429"})),
    ] {
        let base_url = if kind == "openai-responses" {
            format!("{}/backend-api/codex", mock.url())
        } else {
            mock.url()
        };
        e.admin
            .expect(
                "POST",
                "/accounts",
                Some(json!({"name": name, "type": kind, "base_url": base_url, "priority": priority, "credentials": creds})),
                201,
            )
            .await;
    }
    let key = e.user_key("limited").await;
    let auth = format!("Bearer {key}");
    let headers = [("authorization", auth.as_str())];

    let claude = wait_for_status(
        &e.http,
        &format!("{}/v1/messages", e.proxy),
        &headers,
        &json!({"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": []}),
        429,
    )
    .await;
    assert_eq!(
        claude.headers["anthropic-ratelimit-unified-reset"],
        RESET_AT.to_string().as_str()
    );
    assert_eq!(claude.headers["retry-after"], "30");

    let chat = e
        .http
        .send(
            "POST",
            &format!("{}/v1/chat/completions", e.proxy),
            &headers,
            Some(&json!({"model": "gpt-4o", "messages": []})),
        )
        .await;
    assert_eq!(chat.status, 429);
    assert_eq!(chat.headers["x-ratelimit-reset-requests"], "6m0s");

    let codex = e
        .http
        .send(
            "POST",
            &format!("{}/v1/responses", e.proxy),
            &headers,
            Some(&json!({"model": "gpt-5-codex", "input": "hi"})),
        )
        .await;
    assert_eq!(codex.status, 429);
    assert_eq!(codex.json()["error"]["type"], "usage_limit_reached");
    assert_eq!(codex.json()["error"]["resets_at"], RESET_AT);
    assert_eq!(
        codex.headers["x-codex-primary-reset-at"],
        RESET_AT.to_string().as_str()
    );

    let gemini = e
        .http
        .send(
            "POST",
            &format!("{}/v1beta/models/gemini-2.5-pro:generateContent", e.proxy),
            &headers,
            Some(&json!({"contents": []})),
        )
        .await;
    assert_eq!(gemini.status, 429);
    assert_eq!(gemini.json()["error"]["details"][0]["retryDelay"], "58s");
    e.process.stop().await;
}
