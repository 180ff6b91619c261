//! The all-in-one on SQLite and the in-memory state store, as `cargo run` starts it.
use std::time::{Duration, Instant};

use aiproxy_tests::client::Http;
use aiproxy_tests::harness::{ADMIN_PASSWORD, Admin, Process, wait_ready};
use aiproxy_tests::mock::{MockUpstream, USAGE, sse_events};
use http_body_util::BodyExt;
use serde_json::{Value, json};

pub struct Embedded {
    pub process: Process,
    pub http: Http,
    pub admin: Admin,
    pub proxy: String,
    _dir: tempfile::TempDir,
}

pub async fn start() -> Embedded {
    start_with(&[]).await
}

impl Embedded {
    /// The all-in-one's data directory (SQLite, keys, the management token).
    pub fn data_dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// A new user with one API key; returns the plaintext key.
    pub async fn user_key(&self, username: &str) -> String {
        let user = self.admin.create_user(username).await;
        self.admin
            .create_key(user["id"].as_i64().expect("user id"), "k")
            .await
            .1
    }
}

/// The all-in-one with extra environment variables.
pub async fn start_with(extra: &[(&str, String)]) -> Embedded {
    start_in(tempfile::tempdir().unwrap(), extra).await
}

impl Embedded {
    /// Stops the process; its data directory, to start it again in.
    pub async fn stop(self) -> tempfile::TempDir {
        self.process.stop().await;
        self._dir
    }

    /// Stops the process and starts it again on the same data directory.
    pub async fn restart(self, extra: &[(&str, String)]) -> Embedded {
        self.process.stop().await;
        start_in(self._dir, extra).await
    }
}

pub async fn start_in(dir: tempfile::TempDir, extra: &[(&str, String)]) -> Embedded {
    let mut env = vec![
        ("AIPROXY_DATA_DIR", dir.path().display().to_string()),
        ("AIPROXY_ADMIN_PASSWORD", ADMIN_PASSWORD.to_string()),
        ("AIPROXY_PROXY_LISTEN", "127.0.0.1:0".to_string()),
        ("AIPROXY_ADMIN_LISTEN", "127.0.0.1:0".to_string()),
        ("AIPROXY_GRPC_LISTEN", "127.0.0.1:0".to_string()),
    ];
    env.extend(extra.iter().cloned());
    let process = Process::spawn(
        &crate::bin(),
        &[],
        &env,
        &["admin", "grpc", "metrics", "proxy"],
        dir.path().join("aiproxy.log"),
    )
    .await;
    let http = Http::default();
    let proxy = process.url("proxy");
    wait_ready(&http, &format!("{proxy}/readyz"), Duration::from_secs(30)).await;
    let admin = Admin::login(&http, &process.url("admin"), "admin", ADMIN_PASSWORD).await;
    Embedded {
        process,
        http,
        admin,
        proxy,
        _dir: dir,
    }
}

/// A request as the official Python SDK sends it.
fn sdk_headers(key: &str) -> Vec<(&'static str, String)> {
    vec![
        ("x-api-key", key.to_string()),
        ("anthropic-version", "2023-06-01".to_string()),
        ("user-agent", "Anthropic/Python 0.69.0".to_string()),
        ("x-stainless-lang", "python".to_string()),
        ("x-stainless-package-version", "0.69.0".to_string()),
        ("accept", "application/json".to_string()),
    ]
}

fn refs<'a>(h: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    h.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn message_body(model: &str, stream: bool) -> Value {
    json!({"model": model, "max_tokens": 64, "stream": stream, "messages": [{"role": "user", "content": "Hello"}]})
}

/// Waits until `request_id` appears in request logs and returns it.
pub async fn logged(admin: &Admin, request_id: &str) -> Value {
    admin
        .wait_for_log(request_id, Duration::from_secs(10))
        .await
}

fn assert_billed(row: &Value, stream: bool) {
    assert_eq!(row["input_tokens"], USAGE.input);
    assert_eq!(row["output_tokens"], USAGE.output);
    assert_eq!(row["cache_creation_tokens"], USAGE.cache_creation);
    assert_eq!(row["cache_read_tokens"], USAGE.cache_read);
    assert_eq!(row["status_code"], 200);
    assert_eq!(row["stream"], stream);
    assert_eq!(row["usage_source"], "reported");
    // claude-sonnet-4-5: 25×3 + 15×15 + 40×3.75 + 60×6 + 2000×0.30 = 1410 per million.
    assert_eq!(row["upstream_cost"], "0.00141");
    assert_eq!(row["cost"], "0.00141");
}

#[tokio::test]
async fn sdk_requests_relay_and_bill_end_to_end() {
    let mock = MockUpstream::start().await;
    let e = start().await;
    let account = e
        .admin
        .create_account("primary", &mock.url(), "sk-ant-upstream-secret")
        .await;
    let user = e.admin.create_user("alice").await;
    let created = Instant::now();
    let (key_id, key) = e
        .admin
        .create_key(user["id"].as_i64().unwrap(), "laptop")
        .await;
    let headers = sdk_headers(&key);
    let url = format!("{}/v1/messages", e.proxy);

    // A new key works within a second.
    let reply = loop {
        let reply = e
            .http
            .send(
                "POST",
                &url,
                &refs(&headers),
                Some(&message_body("claude-sonnet-4-5", false)),
            )
            .await;
        if reply.status != 401 {
            break reply;
        }
        assert!(
            created.elapsed() < Duration::from_secs(1),
            "new key still rejected after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(reply.status, 200, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["content"][0]["text"], "Hello from the mock.");
    let request_id = reply.headers["x-request-id"].to_str().unwrap().to_string();
    let row = logged(&e.admin, &request_id).await;
    assert_billed(&row, false);
    assert_eq!(row["account_id"], account["id"]);
    assert_eq!(row["api_key_id"], key_id);
    assert_eq!(row["user_id"], user["id"]);
    assert_eq!(row["model"], "claude-sonnet-4-5");

    // The upstream saw the account's key and the SDK's headers, never the client's key.
    let seen = mock.received();
    let last = seen.last().unwrap();
    assert_eq!(last.headers["x-api-key"], "sk-ant-upstream-secret");
    assert_eq!(last.headers["accept-encoding"], "identity");
    assert_eq!(last.headers["x-stainless-lang"], "python");
    assert!(
        !format!("{:?}", last.headers).contains(&key),
        "client key leaked upstream"
    );
    assert_eq!(last.body["messages"][0]["content"], "Hello");

    // Streaming: every event arrives, in order and unchanged.
    let mut resp = e
        .http
        .stream(
            &url,
            &refs(&headers),
            &message_body("claude-sonnet-4-5", true),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let mut streamed = Vec::new();
    while let Some(frame) = resp.body_mut().frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            streamed.extend_from_slice(&data);
        }
    }
    assert_eq!(
        String::from_utf8(streamed).unwrap(),
        sse_events("claude-sonnet-4-5").concat()
    );
    assert_billed(&logged(&e.admin, &request_id).await, true);

    // Key and account totals follow the logs.
    let key_row = e
        .admin
        .expect("GET", &format!("/api-keys/{key_id}"), None, 200)
        .await;
    assert_eq!(key_row["request_count"], 2);
    assert_eq!(key_row["cost_used"], "0.00282");
    let account_row = e
        .admin
        .expect("GET", &format!("/accounts/{}", account["id"]), None, 200)
        .await;
    assert_eq!(account_row["total_cost"], "0.00282");
    e.process.stop().await;
}

#[tokio::test]
async fn bad_keys_and_disabled_keys_are_refused_in_anthropic_shape() {
    let mock = MockUpstream::start().await;
    let e = start().await;
    e.admin
        .create_account("primary", &mock.url(), "sk-ant-upstream")
        .await;
    let user = e.admin.create_user("bob").await;
    let (key_id, key) = e.admin.create_key(user["id"].as_i64().unwrap(), "k").await;
    let url = format!("{}/v1/messages", e.proxy);
    let body = message_body("claude-haiku-4-5", false);

    let reply = e
        .http
        .send(
            "POST",
            &url,
            &[("x-api-key", "sk-aiproxy-unknown")],
            Some(&body),
        )
        .await;
    assert_eq!(reply.status, 401);
    assert!(
        reply.headers.contains_key("x-request-id"),
        "every response carries x-request-id"
    );
    let health = e
        .http
        .send("GET", &format!("{}/healthz", e.proxy), &[], None)
        .await;
    assert!(health.headers.contains_key("x-request-id"));
    assert_eq!(
        reply.json(),
        json!({"type":"error","error":{"type":"authentication_error","message":"invalid api key"}})
    );
    let reply = e.http.send("POST", &url, &[], Some(&body)).await;
    assert_eq!(reply.status, 401);

    // Bearer works as well as x-api-key.
    let bearer = format!("Bearer {key}");
    wait_for_status(&e.http, &url, &[("authorization", &bearer)], &body, 200).await;

    // Malformed JSON is a 400 in the same shape.
    let reply = e
        .http
        .send(
            "POST",
            &url,
            &[("x-api-key", &key)],
            Some(&json!("not an object")),
        )
        .await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"]["type"], "invalid_request_error");

    e.admin
        .expect(
            "PATCH",
            &format!("/api-keys/{key_id}"),
            Some(json!({"status": "disabled"})),
            200,
        )
        .await;
    wait_for_status(&e.http, &url, &[("x-api-key", &key)], &body, 401).await;
    e.admin
        .expect(
            "PATCH",
            &format!("/api-keys/{key_id}"),
            Some(json!({"status": "active"})),
            200,
        )
        .await;
    wait_for_status(&e.http, &url, &[("x-api-key", &key)], &body, 200).await;

    // A key limited to other models is told so.
    e.admin
        .expect(
            "PATCH",
            &format!("/api-keys/{key_id}"),
            Some(json!({"allowed_models": ["claude-opus-4-5"]})),
            200,
        )
        .await;
    let reply = wait_for_status(&e.http, &url, &[("x-api-key", &key)], &body, 403).await;
    assert_eq!(reply.json()["error"]["message"], "model not allowed");
    e.process.stop().await;
}

#[tokio::test]
async fn failover_gzip_and_no_account() {
    let mock = MockUpstream::start().await;
    let e = start().await;
    let key = e.user_key("carol").await;
    let url = format!("{}/v1/messages", e.proxy);
    let headers = [("x-api-key", key.as_str())];

    // No account yet: the seed's message, as a 503.
    let reply = wait_for_status(
        &e.http,
        &url,
        &headers,
        &message_body("claude-sonnet-4-5", false),
        503,
    )
    .await;
    assert_eq!(reply.json()["error"]["message"], "account not available");

    // Failing accounts are tried first (a 429, then an overloaded 529), then
    // the request moves on.
    for (name, priority, api_key) in [("limited", 1, "mock-429"), ("overloaded", 2, "mock-529")] {
        e.admin
            .expect(
                "POST",
                "/accounts",
                Some(json!({"name": name, "type": "claude-api", "base_url": mock.url(), "priority": priority,
                            "credentials": {"api_key": api_key}})),
                201,
            )
            .await;
    }
    let gzip = e
        .admin
        .create_account("gzip", &mock.url(), "mock-gzip")
        .await;
    let reply = wait_for_status(
        &e.http,
        &url,
        &headers,
        &message_body("claude-sonnet-4-5", false),
        200,
    )
    .await;
    assert_eq!(
        reply.json()["content"][0]["text"],
        "Hello from the mock.",
        "gzip body decoded"
    );
    let keys: Vec<String> = mock
        .received()
        .iter()
        .map(|r| r.headers["x-api-key"].clone())
        .collect();
    assert_eq!(
        &keys[keys.len() - 3..],
        ["mock-429", "mock-529", "mock-gzip"]
    );
    let row = logged(&e.admin, reply.headers["x-request-id"].to_str().unwrap()).await;
    assert_eq!(row["account_id"], gzip["id"]);
    assert_eq!(row["input_tokens"], USAGE.input);

    // Streamed gzip without content-encoding reaches the client as plain SSE.
    let reply = e
        .http
        .send(
            "POST",
            &url,
            &headers,
            Some(&message_body("claude-sonnet-4-5", true)),
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), sse_events("claude-sonnet-4-5").concat());

    // The 429 said when to come back (retry-after: 30) and the 529 keeps its
    // account out for a while, so with the gzip account gone none is left:
    // the seed's answer, and neither failing account is called meanwhile.
    e.admin.disable_account(&gzip["id"]).await;
    let reply = wait_for_status(
        &e.http,
        &url,
        &headers,
        &message_body("claude-sonnet-4-5", false),
        503,
    )
    .await;
    assert_eq!(reply.json()["error"]["message"], "account not available");
    let calls = |key: &str| {
        mock.received()
            .iter()
            .filter(|r| r.headers["x-api-key"] == key)
            .count()
    };
    assert_eq!(calls("mock-429"), 1, "not retried before its reset");
    assert_eq!(calls("mock-529"), 1, "not retried while unavailable");

    // The operator sees why, and can put the overloaded account back: its
    // own answer then passes through as it was.
    let unavailable = e.admin.expect("GET", "/cache/unavailable", None, 200).await;
    assert_eq!(
        unavailable["items"][0]["reason"], "overloaded",
        "{unavailable}"
    );
    let limited = e
        .admin
        .expect("GET", "/cache/rate-limited", None, 200)
        .await;
    assert_eq!(limited["items"][0]["name"], "limited", "{limited}");
    assert!(limited["items"][0]["reset_at"].is_string());
    e.admin
        .expect("DELETE", "/cache/unavailable", None, 200)
        .await;
    let reply = wait_for_status(
        &e.http,
        &url,
        &headers,
        &message_body("claude-sonnet-4-5", false),
        529,
    )
    .await;
    assert_eq!(reply.json()["error"]["type"], "overloaded_error");
    assert_eq!(calls("mock-429"), 1);

    // When every usable account is out, the seed's answer.
    let overloaded = e.admin.expect("GET", "/accounts", None, 200).await["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "overloaded")
        .unwrap()["id"]
        .clone();
    e.admin.disable_account(&overloaded).await;
    let reply = wait_for_status(
        &e.http,
        &url,
        &headers,
        &message_body("claude-sonnet-4-5", false),
        503,
    )
    .await;
    assert_eq!(reply.json()["error"]["message"], "account not available");
    e.process.stop().await;
}

#[tokio::test]
async fn admin_api_guards_roles_and_secrets() {
    let e = start().await;
    let http = &e.http;
    let base = format!("{}/api/v1", e.process.url("admin"));
    let reply = http
        .send("GET", &format!("{base}/accounts"), &[], None)
        .await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["error"]["message"], "missing bearer token");
    let reply = http
        .send(
            "GET",
            &format!("{base}/accounts"),
            &[("authorization", "Bearer nonsense")],
            None,
        )
        .await;
    assert_eq!(reply.json()["error"]["message"], "invalid token");
    let reply = http
        .send(
            "POST",
            &format!("{base}/auth/login"),
            &[],
            Some(&json!({"username": "admin", "password": "wrong-password"})),
        )
        .await;
    assert_eq!(reply.status, 401);

    let account = e
        .admin
        .create_account(
            "secret",
            "https://api.anthropic.com",
            "sk-ant-api03-very-secret-value-1234",
        )
        .await;
    let text = account.to_string();
    assert!(!text.contains("very-secret"), "credentials leaked: {text}");
    assert_eq!(account["credentials"]["api_key"], "••••1234");
    let listed = e
        .admin
        .expect("GET", "/accounts", None, 200)
        .await
        .to_string();
    assert!(!listed.contains("very-secret"));
    let reply = e
        .admin
        .call(
            "POST",
            "/accounts",
            Some(json!({"name": "x", "type": "claude-api", "credentials": {}})),
        )
        .await;
    assert_eq!(reply.status, 400);
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("api_key")
    );
    let reply = e
        .admin
        .call(
            "POST",
            "/accounts",
            Some(json!({"name": "x", "type": "nope", "credentials": {}})),
        )
        .await;
    assert_eq!(reply.status, 400);

    // A user sees only their own things.
    let user = e.admin.create_user("dave").await;
    let other = e.admin.create_user("erin").await;
    e.admin
        .create_key(other["id"].as_i64().unwrap(), "erin's")
        .await;
    let dave = Admin::login(http, &e.process.url("admin"), "dave", "user-password-1").await;
    assert_eq!(dave.call("GET", "/accounts", None).await.status, 403);
    assert_eq!(dave.call("GET", "/users", None).await.status, 403);
    let me = dave.expect("GET", "/me", None, 200).await;
    assert_eq!(me["id"], user["id"]);
    assert!(me.get("password_hash").is_none());
    let own = dave
        .expect("POST", "/api-keys", Some(json!({"name": "mine"})), 201)
        .await;
    assert_eq!(own["user_id"], user["id"]);
    let keys = dave.expect("GET", "/api-keys", None, 200).await;
    assert_eq!(keys["total"], 1, "{keys}");
    assert!(
        keys.to_string().find("\"key\"").is_none(),
        "plaintext only at creation"
    );
    let reply = dave
        .call(
            "POST",
            "/api-keys",
            Some(json!({"name": "theirs", "user_id": other["id"]})),
        )
        .await;
    assert_eq!(reply.status, 403);
    for terms in [
        json!({"name": "free", "billing_type": "standalone"}),
        json!({"name": "fast", "rate_limit": 100000}),
        json!({"name": "open", "client_filter": "off"}),
    ] {
        let reply = dave.call("POST", "/api-keys", Some(terms.clone())).await;
        assert_eq!(
            reply.status, 403,
            "a user set their own key's terms: {terms}"
        );
    }
    for path in [
        "/cache/sessions",
        "/cache/concurrency",
        "/cache/unavailable",
        "/cache/rate-limited",
    ] {
        assert_eq!(dave.call("GET", path, None).await.status, 403, "{path}");
        assert_eq!(dave.call("DELETE", path, None).await.status, 403, "{path}");
    }
    for (method, path) in [
        ("GET", "/settings"),
        ("PATCH", "/settings"),
        ("GET", "/audit-logs"),
        ("POST", "/apply"),
        ("POST", "/cache/refresh"),
        ("POST", "/accounts/reset"),
        ("POST", "/accounts/1/test"),
        ("POST", "/accounts/1/enable"),
    ] {
        let body = (method != "GET").then(|| json!({}));
        let status = dave.call(method, path, body).await.status;
        assert_eq!(status, 403, "{method} {path}");
    }

    // A user changes their own password; the tokens issued before stop working.
    let change =
        |current: &str, new: &str| json!({"current_password": current, "new_password": new});
    let reply = dave
        .call(
            "POST",
            "/me/password",
            Some(change("not-mine-123", "dave-new-pass-1")),
        )
        .await;
    assert_eq!(reply.status, 400);
    let reply = dave
        .call(
            "POST",
            "/me/password",
            Some(change("user-password-1", "short")),
        )
        .await;
    assert_eq!(reply.status, 400);
    let changed = dave
        .expect(
            "POST",
            "/me/password",
            Some(change("user-password-1", "dave-new-pass-1")),
            200,
        )
        .await;
    assert_eq!(changed["user"]["id"], user["id"]);
    let reply = dave.call("GET", "/me", None).await;
    assert_eq!(reply.status, 401);
    assert_eq!(
        reply.json()["error"]["message"],
        "password changed since this sign-in; sign in again"
    );
    let fresh = changed["token"].as_str().unwrap().to_string();
    let reply = http
        .send(
            "GET",
            &format!("{base}/me"),
            &[("authorization", &format!("Bearer {fresh}"))],
            None,
        )
        .await;
    assert_eq!(reply.status, 200, "the token handed back works");
    let reply = http
        .send(
            "POST",
            &format!("{base}/auth/login"),
            &[],
            Some(&json!({"username": "dave", "password": "user-password-1"})),
        )
        .await;
    assert_eq!(reply.status, 401, "the old password is gone");
    let dave = Admin::login(http, &e.process.url("admin"), "dave", "dave-new-pass-1").await;
    dave.expect("GET", "/me", None, 200).await;

    // Password guessing: after five wrong passwords, tries for that account
    // from this address wait, even with the right one; others are not held up.
    let login = |username: &str, password: &str| {
        let body = json!({"username": username, "password": password});
        let url = format!("{base}/auth/login");
        async move { http.send("POST", &url, &[], Some(&body)).await }
    };
    for _ in 0..5 {
        assert_eq!(login("erin", "guess-guess-1").await.status, 401);
    }
    let refused = login("erin", "user-password-1").await;
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert_eq!(refused.headers["retry-after"], "30");
    assert!(
        refused.json()["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("too many wrong passwords")
    );
    assert_eq!(login("dave", "dave-new-pass-1").await.status, 200);

    let spec = http
        .send("GET", &format!("{base}/openapi.json"), &[], None)
        .await;
    assert_eq!(spec.status, 200);
    assert_eq!(
        spec.text(),
        include_str!("../../controlplane/openapi.json"),
        "the served document is the committed one"
    );
    assert!(spec.json()["paths"]["/request-logs"].is_object());
    assert!(spec.json()["paths"]["/cache/sessions"]["delete"].is_object());
    e.process.stop().await;
}

/// Repeats the request until it gets `status` (config reaches the relay
/// asynchronously), for at most two seconds.
pub async fn wait_for_status(
    http: &Http,
    url: &str,
    headers: &[(&str, &str)],
    body: &Value,
    status: u16,
) -> aiproxy_tests::client::Reply {
    wait_for_status_within(http, url, headers, body, status, Duration::from_secs(2)).await
}

/// [`wait_for_status`] for at most `within`.
pub async fn wait_for_status_within(
    http: &Http,
    url: &str,
    headers: &[(&str, &str)],
    body: &Value,
    status: u16,
    within: Duration,
) -> aiproxy_tests::client::Reply {
    aiproxy_tests::harness::eventually(&format!("{url} answers {status}"), within, async || {
        let reply = http.send("POST", url, headers, Some(body)).await;
        if reply.status == status {
            Ok(reply)
        } else {
            Err(format!("{}: {}", reply.status, reply.text()))
        }
    })
    .await
}

#[test]
fn the_version_names_the_commit_it_was_built_from() {
    let out = std::process::Command::new(crate::bin())
        .arg("--version")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let prefix = format!("aiproxy {} (", env!("CARGO_PKG_VERSION"));
    assert!(text.starts_with(&prefix) && text.ends_with(')'), "{text}");
    let commit = &text[prefix.len()..text.len() - 1];
    assert!(
        commit == "unknown"
            || (commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{text}"
    );
    // Built by this test run from this checkout: the commit is HEAD's.
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output();
    if std::env::var_os("AIPROXY_TEST_BIN").is_none()
        && let Ok(head) = head
        && head.status.success()
    {
        assert_eq!(commit, String::from_utf8_lossy(&head.stdout).trim());
    }
}

#[tokio::test]
async fn probe_exits_by_the_answer_it_gets() {
    let e = start().await;
    let probe = |url: String| async move {
        tokio::process::Command::new(crate::bin())
            .args(["probe", &url, "--timeout", "5"])
            .env_clear()
            .output()
            .await
            .unwrap()
    };
    let ready = probe(format!("{}/readyz", e.proxy)).await;
    assert!(ready.status.success(), "{ready:?}");
    let missing = probe(format!("{}/no-such-path", e.proxy)).await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("404"),
        "{missing:?}"
    );
    e.process.stop().await;
    let down = probe(format!("{}/readyz", e.proxy)).await;
    assert_eq!(down.status.code(), Some(1));
}
