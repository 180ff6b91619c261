//! The official Python SDKs against the all-in-one, from a venv the test makes.
use std::path::{Path, PathBuf};

use aiproxy_tests::mock::MockUpstream;
use aiproxy_tests::mock::USAGE;
use serde_json::{Value, json};

/// The SDKs' venv (`tests/sdk/requirements.txt`).
fn sdk_python() -> PathBuf {
    crate::python::venv("sdk-venv", "tests/sdk/requirements.txt").join("bin/python")
}

/// Runs one of `tests/sdk/*.py` and returns its JSON lines by check name.
async fn run_script(python: &Path, script: &str, url: &str, key: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sdk")
        .join(script);
    let out = tokio::process::Command::new(python)
        .arg(&path)
        .env("AIPROXY_URL", url)
        .env("AIPROXY_KEY", key)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{script} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn check<'a>(checks: &'a [Value], name: &str) -> &'a Value {
    checks
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no {name} check in {checks:?}"))
}

#[tokio::test]
async fn official_sdks_against_the_relay() {
    let python = tokio::task::spawn_blocking(sdk_python).await.unwrap();
    let mock = MockUpstream::start().await;
    let e = crate::embedded::start().await;
    let (http, admin, proxy) = (&e.http, &e.admin, e.proxy.clone());
    for (kind, creds) in [
        ("claude-api", json!({"api_key": "sk-ant-sdk"})),
        ("openai", json!({"api_key": "sk-openai-sdk"})),
        ("gemini-api", json!({"api_key": "gemini-sdk"})),
    ] {
        admin
            .expect("POST", "/accounts", Some(json!({"name": kind, "type": kind, "base_url": mock.url(), "credentials": creds})), 201)
            .await;
    }
    let user = admin.create_user("sdk-user").await;
    let (_, key) = admin.create_key(user["id"].as_i64().unwrap(), "sdk").await;
    crate::embedded::wait_for_status(
        http,
        &format!("{proxy}/v1/messages"),
        &[("x-api-key", &key)],
        &json!({"model": "claude-sonnet-4-5", "max_tokens": 1, "messages": []}),
        200,
    )
    .await;

    let anthropic = run_script(&python, "anthropic_sdk.py", &proxy, &key).await;
    assert_eq!(check(&anthropic, "create")["text"], "Hello from the mock.");
    assert_eq!(check(&anthropic, "create")["input_tokens"], USAGE.input);
    assert_eq!(
        check(&anthropic, "stream")["chunks"],
        json!(["Hello", " from the mock."])
    );
    assert_eq!(check(&anthropic, "stream")["output_tokens"], USAGE.output);
    assert_eq!(check(&anthropic, "bad_key")["status"], 401);
    assert_eq!(check(&anthropic, "bad_key")["message"], "invalid api key");

    let openai = run_script(&python, "openai_sdk.py", &proxy, &key).await;
    assert_eq!(check(&openai, "chat")["text"], "Hello from the mock.");
    assert_eq!(
        check(&openai, "chat")["prompt_tokens"],
        USAGE.input + USAGE.cache_read
    );
    assert_eq!(
        check(&openai, "chat_stream")["chunks"],
        json!(["Hello", " from the mock."])
    );
    assert_eq!(check(&openai, "responses")["text"], "Hello from the mock.");
    assert_eq!(check(&openai, "responses")["output_tokens"], USAGE.output);
    assert_eq!(
        check(&openai, "responses_stream")["chunks"],
        json!(["Hello", " from the mock."])
    );
    assert!(
        check(&openai, "models")["ids"]
            .as_array()
            .unwrap()
            .contains(&json!("gpt-4o"))
    );
    assert_eq!(check(&openai, "bad_key")["status"], 401);
    assert_eq!(check(&openai, "bad_key")["message"], "invalid api key");

    let genai = run_script(&python, "genai_sdk.py", &proxy, &key).await;
    assert_eq!(check(&genai, "generate")["text"], " from the mock.");
    assert_eq!(
        check(&genai, "generate")["thoughts"],
        aiproxy_tests::mock::GEMINI_THOUGHTS
    );
    assert_eq!(
        check(&genai, "stream")["chunks"],
        json!(["Hello", " from the mock."])
    );
    assert_eq!(check(&genai, "count")["total"], 42);
    assert_eq!(check(&genai, "bad_key")["status"], 401);
    assert_eq!(check(&genai, "bad_key")["message"], "invalid api key");
    e.process.stop().await;
}
