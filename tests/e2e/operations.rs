//! Operations end to end: health checks that disable bad credentials and a
//! reset that brings them back, the strict client filter on recorded client
//! requests, settings reaching the relay, every everyday operation through
//! `aiproxy ctl`, declarative apply, and background jobs moving between
//! control-plane replicas.
use std::time::{Duration, Instant};

use aiproxy_tests::harness::{Admin, eventually};
use aiproxy_tests::mock::MockUpstream;
use aiproxy_tests::proxies::TestProxy;
use serde_json::{Value, json};

use crate::embedded::{Embedded, start_with};
use crate::split::{TestDatabase, controlplane};

/// Polls `GET path` until `done` holds for its body.
async fn wait_until(
    admin: &Admin,
    path: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    eventually(
        &format!("GET {path} satisfies the check"),
        within,
        async || {
            let v = admin.expect("GET", path, None, 200).await;
            if done(&v) { Ok(v) } else { Err(v.to_string()) }
        },
    )
    .await
}

/// A decimal amount (sent as a string) that is zero.
fn is_zero(v: &Value) -> bool {
    v.as_str()
        .and_then(|s| s.parse::<f64>().ok())
        .is_some_and(|f| f == 0.0)
}

fn account_named<'a>(list: &'a Value, name: &str) -> &'a Value {
    list["items"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == name))
        .unwrap_or_else(|| panic!("no account {name} in {list}"))
}

async fn message(e: &Embedded, key: &str) -> u16 {
    e.http
        .send(
            "POST",
            &format!("{}/v1/messages", e.proxy),
            &[("x-api-key", key), ("anthropic-version", "2023-06-01")],
            Some(&json!({"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]})),
        )
        .await
        .status
}

#[tokio::test]
async fn health_checks_disable_bad_credentials_and_a_reset_brings_them_back() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("aiproxy.yaml");
    std::fs::write(
        &file,
        format!(
            "settings:\n  account_health_check_enabled: true\n  account_health_check_interval: 1\n  account_error_threshold: 2\n\
             accounts:\n\
             \x20 - name: good\n    type: claude-api\n    base_url: {url}\n    credentials: {{api_key: \"${{GOOD_KEY}}\"}}\n\
             \x20 - name: bad\n    type: claude-api\n    base_url: {url}\n    priority: 90\n    credentials: {{api_key: revoked-key}}\n\
             \x20 - name: subscription\n    type: claude-oauth\n    base_url: {url}\n    priority: 90\n    credentials: {{access_token: sk-ant-oat01-good}}\n",
            url = mock.url()
        ),
    )
    .unwrap();
    let e = start_with(&[
        ("AIPROXY_APPLY_FILE", file.display().to_string()),
        ("GOOD_KEY", "good-key".to_string()),
    ])
    .await;
    let admin = &e.admin;

    // The first sweep runs at start: one failure counted, usage stored.
    let deadline = Instant::now() + Duration::from_secs(20);
    let list = loop {
        let v = admin.expect("GET", "/accounts", None, 200).await;
        if v["items"]
            .as_array()
            .is_some_and(|a| a.iter().all(|x| x["health_status"] != "unchecked"))
        {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "not every account was checked at start: {v}\n{}",
            e.process.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let good = account_named(&list, "good");
    assert_eq!(good["health_status"], "ok");
    let bad = account_named(&list, "bad").clone();
    assert_eq!(bad["health_status"], "failed");
    assert_eq!(bad["consecutive_error_count"], 1);
    assert_eq!(
        bad["enabled"], true,
        "one failure is below the threshold of 2"
    );
    let oauth = account_named(&list, "subscription");
    assert_eq!(oauth["health_status"], "ok", "{oauth}");
    assert_eq!(oauth["usage_5h_utilization"], 12.5);
    assert_eq!(oauth["usage_7d_utilization"], 40.0);
    let checks: Vec<_> = mock
        .received()
        .into_iter()
        .map(|r| r.path_and_query)
        .collect();
    assert!(
        checks.iter().any(|p| p.starts_with("/v1/models")),
        "{checks:?}"
    );
    assert!(checks.iter().any(|p| p == "/api/oauth/usage"), "{checks:?}");

    // A second failed check (test now) reaches the threshold.
    let id = &bad["id"];
    let report = admin
        .expect("POST", &format!("/accounts/{id}/test"), None, 200)
        .await;
    assert_eq!(report["status"], "failed");
    assert_eq!(report["http_status"], 401);
    assert_eq!(report["disabled"], true);
    let stored = admin
        .expect("GET", &format!("/accounts/{id}"), None, 200)
        .await;
    assert_eq!(stored["enabled"], false);
    let reason = stored["disabled_reason"].as_str().unwrap();
    assert!(reason.contains("2 consecutive failures"), "{reason}");
    let audit = admin
        .expect("GET", "/audit-logs?actor=health-check", None, 200)
        .await;
    assert_eq!(audit["items"][0]["action"], "DISABLE");

    // The operator fixes the key and resets: back in service, checks pass.
    admin
        .expect(
            "PATCH",
            &format!("/accounts/{id}"),
            Some(json!({"credentials": {"api_key": "good-key"}})),
            200,
        )
        .await;
    let reset = admin
        .expect(
            "POST",
            &format!("/accounts/{id}/reset?enable=true"),
            None,
            200,
        )
        .await;
    assert_eq!(reset["enabled"], true);
    assert_eq!(reset["consecutive_error_count"], 0);
    assert_eq!(reset["disabled_reason"], Value::Null);
    let report = admin
        .expect("POST", &format!("/accounts/{id}/test"), None, 200)
        .await;
    assert_eq!(report["status"], "ok", "{report}");

    // Checks go where the account's traffic goes: through its proxy.
    let proxy = TestProxy::http_connect().await;
    let proxied = admin
        .create_account_with(json!({"name": "proxied", "type": "openai", "base_url": mock.url(),
            "proxy_url": format!("http://{}", proxy.addr), "credentials": {"api_key": "good-key"}, "enabled": false}))
        .await;
    let report = admin
        .expect(
            "POST",
            &format!("/accounts/{}/test", proxied["id"]),
            None,
            200,
        )
        .await;
    assert_eq!(report["status"], "ok", "{report}");
    let upstream = mock.url().replace("http://", "");
    assert_eq!(
        proxy.targets(),
        [upstream],
        "the check went through the proxy"
    );

    // Relayed traffic counts too: a key the upstream refuses, bound to one
    // user. The first refusal marks the account unavailable, so no second
    // one comes soon: with a threshold of 1 it disables the account.
    admin
        .expect(
            "PATCH",
            "/settings",
            Some(json!({"account_error_threshold": 1})),
            200,
        )
        .await;
    let user = admin.create_user("traffic").await;
    let (_, key) = admin.create_key(user["id"].as_i64().unwrap(), "k").await;
    let refused = admin
        .create_account_with(
            json!({"name": "refused", "type": "claude-api", "base_url": mock.url(),
            "credentials": {"api_key": "revoked-key"}, "bound_user_ids": [user["id"]]}),
        )
        .await;
    let rid = &refused["id"];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // Served by the shared accounts until the binding reaches the relay.
        message(&e, &key).await;
        let a = admin
            .expect("GET", &format!("/accounts/{rid}"), None, 200)
            .await;
        if a["enabled"] == false {
            let reason = a["disabled_reason"].as_str().unwrap();
            assert!(
                reason.contains("relayed request") || reason.contains("health check"),
                "{reason}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "relayed 401s never disabled the account: {a}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    e.process.stop().await;
}

/// A recorded client request from `dataplane/tests/fixtures/clients`.
struct Fixture {
    name: &'static str,
    path: String,
    headers: Vec<(String, String)>,
    body: Value,
    strict: bool,
}

fn fixture(name: &'static str) -> Fixture {
    let file = format!(
        "{}/dataplane/tests/fixtures/clients/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let headers = v["headers"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "content-length" | "host" | "accept-encoding"))
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    Fixture {
        name,
        path: v["path"].as_str().unwrap().to_string(),
        headers,
        body: v["body"].clone(),
        strict: v["expect"]["strict"].as_bool().unwrap(),
    }
}

/// Sends a fixture with `key` in place of its recorded credential.
async fn replay(e: &Embedded, f: &Fixture, key: &str) -> (u16, Value) {
    let bearer = format!("Bearer {key}");
    let headers: Vec<(&str, &str)> = f
        .headers
        .iter()
        .map(|(k, v)| match k.as_str() {
            "x-api-key" | "x-goog-api-key" => (k.as_str(), key),
            "authorization" => (k.as_str(), bearer.as_str()),
            _ => (k.as_str(), v.as_str()),
        })
        .collect();
    let reply = e
        .http
        .send(
            "POST",
            &format!("{}{}", e.proxy, f.path),
            &headers,
            Some(&f.body),
        )
        .await;
    let body = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    (reply.status, body)
}

#[tokio::test]
async fn strict_client_filter_admits_claude_code_and_refuses_look_alikes() {
    let mock = MockUpstream::start().await;
    let e = start_with(&[]).await;
    let admin = &e.admin;
    admin
        .create_account("claude", &mock.url(), "good-key")
        .await;
    admin
        .create_account_with(json!({"name": "openai", "type": "openai", "base_url": mock.url(), "credentials": {"api_key": "good-key"}}))
        .await;
    let key = e.user_key("coder").await;
    let curl = fixture("lookalike-curl-faked-ua");
    // No filter by default (once the new key has reached the relay).
    wait_status(&e, &curl, &key, 200).await;

    let changed = Instant::now();
    admin
        .expect(
            "PATCH",
            "/settings",
            Some(json!({"filter_enabled": true, "filter_mode": "strict", "filter_allowed_clients": ["claude-code"]})),
            200,
        )
        .await;
    let refused = loop {
        let (status, body) = replay(&e, &curl, &key).await;
        if status == 403 {
            break body;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(5),
            "the filter never reached the relay"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!(
        "settings change reached the relay in {:?}",
        changed.elapsed()
    );
    assert_eq!(
        refused["type"], "error",
        "Anthropic's error shape: {refused}"
    );
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("client not allowed"), "{message}");

    for name in [
        "claude-code-2.1.x-messages",
        "claude-code-2.0.x-messages",
        "claude-code-2.1.x-title",
        "claude-code-2.1.x-count-tokens",
        "claude-code-2.1.x-quota",
        "claude-code-2.1.x-side-query",
        "lookalike-curl-faked-ua",
        "lookalike-faked-headers-other-prompt",
        "lookalike-malformed-user-id",
        "lookalike-attribution-version-mismatch",
    ] {
        let f = fixture(name);
        let (status, body) = replay(&e, &f, &key).await;
        if f.strict {
            assert_eq!(status, 200, "{} must pass strict mode: {body}", f.name);
        } else {
            assert_eq!(status, 403, "{} must be refused: {body}", f.name);
            let m = body["error"]["message"].as_str().unwrap_or_default();
            assert!(m.starts_with("client not allowed: "), "{}: {m}", f.name);
        }
    }
    // Codex CLI is not in the list; an OpenAI-shaped refusal says so.
    let codex = fixture("codex-cli-responses");
    let (status, body) = replay(&e, &codex, &key).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("client not allowed")
    );
    admin
        .expect(
            "PATCH",
            "/settings",
            Some(json!({"filter_allowed_clients": ["claude-code", "codex-cli"]})),
            200,
        )
        .await;
    wait_status(&e, &codex, &key, 200).await;

    // A key may override the filter: this one admits any client.
    let user = admin.create_user("scripts").await;
    let created = admin
        .expect(
            "POST",
            "/api-keys",
            Some(json!({"user_id": user["id"], "name": "batch", "client_filter": "off"})),
            201,
        )
        .await;
    let open_key = created["key"].as_str().unwrap();
    wait_status(&e, &curl, open_key, 200).await;
    assert_eq!(
        replay(&e, &curl, &key).await.0,
        403,
        "others still filtered"
    );
    e.process.stop().await;
}

/// Replays `f` until it gets `status` (snapshots take a moment to arrive).
async fn wait_status(e: &Embedded, f: &Fixture, key: &str, status: u16) {
    eventually(
        &format!("{} answers {status}", f.name),
        Duration::from_secs(5),
        async || {
            let (got, body) = replay(e, f, key).await;
            if got == status {
                Ok(())
            } else {
                Err(format!("{got}: {body}"))
            }
        },
    )
    .await
}

/// Runs `aiproxy ctl --json args…` against the all-in-one in `dir`.
async fn ctl(e: &Embedded, data_dir: &std::path::Path, args: &[&str]) -> Result<Value, String> {
    let grpc = e.process.url("grpc").replace("http://", "");
    let out = tokio::process::Command::new(crate::bin())
        .arg("ctl")
        .arg("--json")
        .args(args)
        .env("AIPROXY_DATA_DIR", data_dir)
        .env("AIPROXY_GRPC_LISTEN", grpc)
        .env_remove("AIPROXY_ADMIN_TOKEN")
        .output()
        .await
        .unwrap();
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap_or(Value::Null))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test]
async fn every_everyday_operation_works_through_ctl() {
    let mock = MockUpstream::start().await;
    let e = start_with(&[]).await;
    let admin = &e.admin;
    let dir = e.data_dir();
    let account = admin.create_account("main", &mock.url(), "good-key").await;
    let id = account["id"].to_string();
    let user = admin.create_user("alice").await;
    let uid = user["id"].to_string();
    admin
        .expect(
            "POST",
            &format!("/users/{uid}/packages"),
            Some(json!({"name": "credit", "type": "quota", "quota_total": "10"})),
            201,
        )
        .await;
    let (key_id, key) = admin
        .create_key(user["id"].as_i64().unwrap(), "laptop")
        .await;

    let listed = ctl(&e, dir, &["accounts", "list"]).await.unwrap();
    assert_eq!(listed["items"][0]["name"], "main");

    // Enable / disable.
    let off = ctl(&e, dir, &["accounts", "disable", &id]).await.unwrap();
    assert_eq!(off["enabled"], false);
    let on = ctl(&e, dir, &["accounts", "enable", &id]).await.unwrap();
    assert_eq!(on["enabled"], true);
    assert_eq!(on["disabled_reason"], Value::Null);

    // Clear a rate limit.
    admin
        .expect("PATCH", &format!("/accounts/{id}"), Some(json!({"rate_limit_reset_at": "2099-01-01T00:00:00Z", "consecutive_error_count": 4})), 200)
        .await;
    let reset = ctl(&e, dir, &["accounts", "reset", &id]).await.unwrap();
    assert_eq!(reset["rate_limit_reset_at"], Value::Null);
    assert_eq!(reset["consecutive_error_count"], 0);
    let tested = ctl(&e, dir, &["accounts", "test", &id]).await.unwrap();
    assert_eq!(tested["status"], "ok");

    // Traffic: a session and package usage to clear and reset.
    let sent = e
        .http
        .send(
            "POST",
            &format!("{}/v1/messages", e.proxy),
            &[("x-api-key", &key), ("anthropic-version", "2023-06-01")],
            Some(
                &json!({"model": "claude-sonnet-4-5", "max_tokens": 8, "system": "be brief",
                "messages": [{"role": "user", "content": "hi"}]}),
            ),
        )
        .await;
    assert_eq!(sent.status, 200, "{}", sent.text());
    let request_id = sent.headers["x-request-id"].to_str().unwrap().to_string();
    admin
        .wait_for_log(&request_id, Duration::from_secs(10))
        .await;
    wait_until(
        admin,
        &format!("/users/{uid}/packages"),
        Duration::from_secs(10),
        |v| !is_zero(&v["items"][0]["quota_used"]),
    )
    .await;
    let reset = ctl(&e, dir, &["packages", "reset", "--user", &uid])
        .await
        .unwrap();
    assert_eq!(reset["reset"], 1, "{reset}");
    let packages = ctl(&e, dir, &["packages", "list", "--user", &uid])
        .await
        .unwrap();
    assert!(is_zero(&packages["items"][0]["quota_used"]), "{packages}");

    let key_arg = key_id.to_string();
    let sessions = ctl(&e, dir, &["cache", "list", "sessions", "--key", &key_arg])
        .await
        .unwrap();
    assert_eq!(sessions["total"], 1, "{sessions}");
    let cleared = ctl(&e, dir, &["cache", "clear", "sessions", "--key", &key_arg])
        .await
        .unwrap();
    assert_eq!(cleared["cleared"], 1);
    for kind in ["concurrency", "unavailable", "rate-limited"] {
        ctl(&e, dir, &["cache", "list", kind]).await.unwrap();
        ctl(&e, dir, &["cache", "clear", kind]).await.unwrap();
    }

    // Refresh the scheduler, settings, usage, consistency.
    let before = ctl(&e, dir, &["refresh"]).await.unwrap()["version"]
        .as_u64()
        .unwrap();
    let after = ctl(&e, dir, &["refresh"]).await.unwrap()["version"]
        .as_u64()
        .unwrap();
    assert!(after > before);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let nodes = ctl(&e, dir, &["nodes"]).await.unwrap();
        if nodes["items"][0]["current"] == true {
            assert!(nodes["items"][0]["applied_version"].as_u64().unwrap() >= after);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the data plane never applied the refresh: {nodes}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let settings = ctl(
        &e,
        dir,
        &[
            "settings",
            "set",
            "account_error_threshold=3",
            "filter_mode=strict",
        ],
    )
    .await
    .unwrap();
    assert_eq!(settings["settings"]["account_error_threshold"], 3);
    assert_eq!(settings["settings"]["filter_mode"], "strict");
    let err = ctl(&e, dir, &["settings", "set", "account_error_threshold=-1"])
        .await
        .unwrap_err();
    assert!(err.contains("from 0 to 1000"), "{err}");
    let back = ctl(&e, dir, &["settings", "set", "filter_mode="])
        .await
        .unwrap();
    assert_eq!(
        back["settings"]["filter_mode"], "simple",
        "back to the default"
    );
    let usage = ctl(&e, dir, &["usage", "--query", "group_by=user"])
        .await
        .unwrap();
    assert!(
        usage["items"].as_array().is_some_and(|i| !i.is_empty()),
        "{usage}"
    );
    ctl(&e, dir, &["consistency"]).await.unwrap();

    // Declarative apply, twice: the second run creates nothing.
    let file = dir.join("team.yaml");
    std::fs::write(
        &file,
        "users:\n  - username: bob\n    password: \"${BOB_PASSWORD}\"\n    max_concurrency: 2\n    packages:\n      - {name: monthly, type: subscription, monthly_quota: \"50\"}\n    api_keys:\n      - {name: ci, key: \"${BOB_KEY}\", rate_limit: 30}\n\
         accounts:\n  - {name: backup, type: openai, base_url: http://127.0.0.1:9, credentials: {api_key: sk-backup}, priority: 80}\n\
         prices:\n  - {model: house-model, input_price: \"1\", output_price: \"2\"}\n",
    )
    .unwrap();
    let apply = |e: &Embedded| {
        let file = file.clone();
        let grpc = e.process.url("grpc").replace("http://", "");
        async move {
            tokio::process::Command::new(crate::bin())
                .args(["ctl", "--json", "apply", "-f"])
                .arg(&file)
                .env("AIPROXY_DATA_DIR", dir)
                .env("AIPROXY_GRPC_LISTEN", grpc)
                .env("BOB_PASSWORD", "bob-password-123")
                .env("BOB_KEY", "sk-bob-0123456789abcdefghijklmn")
                .output()
                .await
                .unwrap()
        }
    };
    let first = apply(&e).await;
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let first: Value = serde_json::from_slice(&first.stdout).unwrap();
    let actions: Vec<&str> = first["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["updated", "created", "created", "created", "created"],
        "{first}"
    );
    let second: Value = serde_json::from_slice(&apply(&e).await.stdout).unwrap();
    assert!(
        second["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["action"] == "updated"),
        "{second}"
    );
    let users = admin.expect("GET", "/users", None, 200).await;
    assert_eq!(
        users["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|u| u["username"] == "bob")
            .count(),
        1
    );
    let bob_status = e
        .http
        .send(
            "POST",
            &format!("{}/v1/messages", e.proxy),
            &[("x-api-key", "sk-bob-0123456789abcdefghijklmn"), ("anthropic-version", "2023-06-01")],
            Some(&json!({"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]})),
        )
        .await
        .status;
    assert_eq!(bob_status, 200, "the declared key works");
    let missing = tokio::process::Command::new(crate::bin())
        .args(["ctl", "apply", "-f"])
        .arg(&file)
        .env("AIPROXY_DATA_DIR", dir)
        .env("BOB_KEY", "sk-bob-0123456789abcdefghijklmn")
        .env_remove("BOB_PASSWORD")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("BOB_PASSWORD is not set"), "{stderr}");

    // Everything above is in the audit log, secrets masked.
    let audit = ctl(&e, dir, &["audit", "--limit", "200"]).await.unwrap();
    let items = audit["items"].as_array().unwrap();
    assert!(items.iter().any(|i| i["actor"] == "ctl (admin token)"
        && i["target"] == format!("/api/v1/accounts/{id}/disable")));
    assert!(items.iter().any(|i| i["actor"] == "admin"
        && i["action"] == "POST"
        && i["target"] == "/api/v1/accounts"));
    let text = audit.to_string();
    assert!(
        !text.contains("bob-password-123") && !text.contains("sk-bob-0123456789"),
        "secrets leaked into the audit log"
    );

    // The new routes are documented.
    let spec = e
        .http
        .send("GET", &format!("{}/openapi.json", admin.base), &[], None)
        .await
        .json();
    for path in [
        "/settings",
        "/audit-logs",
        "/apply",
        "/cache/refresh",
        "/accounts/{id}/test",
        "/accounts/{id}/reset",
    ] {
        assert!(
            spec["paths"][path].is_object(),
            "{path} missing from openapi.json"
        );
    }

    // An admin's login token works too; a user's is refused.
    let with_token = |token: String| {
        let grpc = e.process.url("grpc").replace("http://", "");
        async move {
            tokio::process::Command::new(crate::bin())
                .args(["ctl", "--json", "settings", "get"])
                .env("AIPROXY_ADMIN_TOKEN", token)
                .env("AIPROXY_GRPC_LISTEN", grpc)
                .output()
                .await
                .unwrap()
        }
    };
    let login = |username: &'static str, password: &'static str| {
        let http = e.http.clone();
        let url = format!("{}/auth/login", admin.base);
        async move {
            http.send(
                "POST",
                &url,
                &[],
                Some(&json!({"username": username, "password": password})),
            )
            .await
            .json()["token"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let as_admin = with_token(login("admin", aiproxy_tests::harness::ADMIN_PASSWORD).await).await;
    assert!(
        as_admin.status.success(),
        "{}",
        String::from_utf8_lossy(&as_admin.stderr)
    );
    let as_user = with_token(login("bob", "bob-password-123").await).await;
    assert!(!as_user.status.success());
    assert!(String::from_utf8_lossy(&as_user.stderr).contains("admin role required"));

    // Tables for people, and refusals for wrong tokens.
    let human = tokio::process::Command::new(crate::bin())
        .args(["ctl", "accounts", "list"])
        .env("AIPROXY_DATA_DIR", dir)
        .env(
            "AIPROXY_GRPC_LISTEN",
            e.process.url("grpc").replace("http://", ""),
        )
        .output()
        .await
        .unwrap();
    let table = String::from_utf8_lossy(&human.stdout);
    assert!(
        table.starts_with("ID") && table.contains("main") && table.contains("backup"),
        "{table}"
    );
    let wrong = tokio::process::Command::new(crate::bin())
        .args(["ctl", "accounts", "list"])
        .env("AIPROXY_ADMIN_TOKEN", "not-the-token-0123456789")
        .env(
            "AIPROXY_GRPC_LISTEN",
            e.process.url("grpc").replace("http://", ""),
        )
        .output()
        .await
        .unwrap();
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("invalid token"));
    e.process.stop().await;
}

#[tokio::test]
async fn background_jobs_run_on_one_control_plane_and_move_when_it_dies() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::new(dir.path(), "jobs").await;
    let (dir1, dir2) = (dir.path().join("cp1"), dir.path().join("cp2"));
    std::fs::create_dir_all(&dir1).unwrap();
    std::fs::create_dir_all(&dir2).unwrap();
    const LEADS: &str = "now runs the background jobs";
    let cp1 = controlplane(&db.url, &dir1, "127.0.0.1:0", &[]).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cp1.log_text().contains(LEADS) {
        assert!(
            Instant::now() < deadline,
            "the first control plane never took the lease"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cp2 = controlplane(&db.url, &dir2, "127.0.0.1:0", &[]).await;
    // Several renewals later, the second still only stands by.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(
        !cp2.log_text().contains(LEADS),
        "two control planes ran the jobs at once"
    );

    let killed = Instant::now();
    cp1.kill().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cp2.log_text().contains(LEADS) {
        assert!(
            Instant::now() < deadline,
            "no control plane took over the jobs"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "jobs moved to the other control plane {:?} after the first was killed",
        killed.elapsed()
    );
    cp2.stop().await;
    db.drop().await;
}

/// `aiproxy reseal` moves every credential and proxy URL to a new secret
/// key: the relay works on the new key, a repeated run changes nothing, and
/// values no key given opens are left alone with a failing exit.
#[tokio::test]
async fn the_secret_key_rotates_by_resealing_every_credential() {
    const OLD: &str = "the-old-secret-key-0123456789abcdef";
    const NEW: &str = "the-new-secret-key-0123456789abcdef";
    let mock = MockUpstream::start().await;
    let e = crate::embedded::start_with(&[("AIPROXY_SECRET_KEY", OLD.into())]).await;
    e.admin
        .create_account("direct", &mock.url(), "sk-ant-kept-across-keys")
        .await;
    let proxied = e
        .admin
        .create_account_with(json!({"name": "proxied", "type": "claude-api",
            "base_url": mock.url(), "enabled": false,
            "proxy_url": "http://relay-user:hunter2@127.0.0.1:3128",
            "credentials": {"api_key": "sk-ant-2"}}))
        .await;
    let key = e.user_key("rotating").await;
    let dir = e.stop().await;

    let reseal = |current: &str, previous: &str| {
        let previous_file = dir.path().join("previous.key");
        std::fs::write(&previous_file, format!("{previous}\n")).unwrap();
        std::process::Command::new(crate::bin())
            .args(["reseal", "--previous-key-file"])
            .arg(&previous_file)
            .env("AIPROXY_DATA_DIR", dir.path())
            .env("AIPROXY_SECRET_KEY", current)
            .output()
            .unwrap()
    };
    let out = reseal(NEW, OLD);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("2 accounts sealed under the current key, 0 already"),
        "{said}"
    );
    // Cut short or repeated, a run is safe: nothing left to move.
    let out = reseal(NEW, OLD);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("0 accounts sealed under the current key, 2 already"),
        "{said}"
    );

    let e = crate::embedded::start_in(dir, &[("AIPROXY_SECRET_KEY", NEW.into())]).await;
    let reply = e
        .http
        .send(
            "POST",
            &format!("{}/v1/messages", e.proxy),
            &[("x-api-key", &key)],
            Some(&crate::scheduling::plain_body("after the rotation")),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        crate::scheduling::upstream_keys(&mock)
            .last()
            .map(String::as_str),
        Some("sk-ant-kept-across-keys")
    );
    let shown = e
        .admin
        .expect("GET", &format!("/accounts/{}", proxied["id"]), None, 200)
        .await;
    assert_eq!(shown["proxy_url"], "http://relay-user:••••@127.0.0.1:3128");
    let dir = e.stop().await;

    // A wrong previous key opens nothing: every account is left as it is.
    let previous_file = dir.path().join("previous.key");
    std::fs::write(&previous_file, "a-key-that-sealed-nothing-0123456789").unwrap();
    let out = std::process::Command::new(crate::bin())
        .args(["reseal", "--previous-key-file"])
        .arg(&previous_file)
        .env("AIPROXY_DATA_DIR", dir.path())
        .env("AIPROXY_SECRET_KEY", "yet-another-secret-key-0123456789abc")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("0 accounts sealed under the current key, 0 already were, 2 left"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The admin port's health endpoints mean something, and nothing outside
/// the console's own pages is answered with the console.
#[tokio::test]
async fn the_admin_port_tells_health_readiness_and_unknown_paths_apart() {
    use sqlx::Connection;
    let e = start_with(&[]).await;
    let admin = e.process.url("admin");
    let get = async |path: &str| {
        e.http
            .send("GET", &format!("{admin}{path}"), &[], None)
            .await
    };
    assert_eq!(get("/healthz").await.status, 200);
    let ready = get("/readyz").await;
    assert_eq!((ready.status, ready.text().as_str()), (200, "ready"));
    for path in ["/metrics", "/favicon.ico", "/nothing/here.js", "/accountsx"] {
        let reply = get(path).await;
        assert_eq!(reply.status, 404, "{path}: {}", reply.text());
        assert!(
            !reply.text().contains("<div id=\"app\""),
            "{path} got the console"
        );
    }
    for path in ["/api", "/api/v2/users", "/api/v1/no-such-thing"] {
        let reply = get(path).await;
        assert_eq!(reply.status, 404, "{path}");
        let body: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(body["error"]["code"], "not_found", "{path}");
    }
    for page in ["/", "/login", "/logs", "/accounts/7"] {
        assert_eq!(get(page).await.status, 200, "{page}");
    }

    // A migration this build expects is missing: not ready, and why.
    let url = format!("sqlite://{}", e.data_dir().join("aiproxy.db").display());
    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let last: i64 = sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
        .fetch_one(&mut db)
        .await
        .unwrap();
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = ?")
        .bind(last)
        .execute(&mut db)
        .await
        .unwrap();
    let ready = get("/readyz").await;
    assert_eq!(ready.status, 503);
    assert_eq!(
        ready.text(),
        format!("not ready: migrations not applied: {last}")
    );
    assert_eq!(
        get("/healthz").await.status,
        200,
        "the process itself is fine"
    );
    e.process.stop().await;
}
