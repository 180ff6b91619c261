//! Scheduling on one node with the in-memory state store: sticky sessions,
//! even spreading, concurrency limits with a fair wait, key and account rate
//! limits, suspected bans, and the operator's cache views.
use std::collections::HashMap;
use std::time::{Duration, Instant};

use aiproxy_tests::harness::Admin;
use aiproxy_tests::mock::MockUpstream;
use http_body_util::BodyExt;
use serde_json::{Value, json};

use crate::embedded::{Embedded, start_with, wait_for_status};

/// Claude Code's `metadata.user_id` from 2.1.78 on: a JSON string.
pub fn claude_code_user_id(session: &str) -> String {
    json!({"device_id": "5f0c3a9e8b7d6c5b4a392817", "account_uuid": "", "session_id": session})
        .to_string()
}

pub fn claude_code_body(user_id: &str, text: &str) -> Value {
    json!({"model": "claude-sonnet-4-5", "max_tokens": 8,
           "metadata": {"user_id": user_id},
           "messages": [{"role": "user", "content": text}]})
}

/// A request with no session id: its first message tells conversations apart.
pub fn plain_body(text: &str) -> Value {
    json!({"model": "claude-sonnet-4-5", "max_tokens": 8,
           "messages": [{"role": "user", "content": text}]})
}

/// Upstream keys the mock saw, in order.
pub fn upstream_keys(mock: &MockUpstream) -> Vec<String> {
    mock.received()
        .iter()
        .filter_map(|r| r.headers.get("x-api-key").cloned())
        .collect()
}

/// Sends `total` distinct conversations with `workers` clients, worker `w`
/// through `urls[w % urls.len()]`; how many each upstream key served.
pub async fn spread(
    http: &aiproxy_tests::client::Http,
    mock: &MockUpstream,
    urls: &[String],
    key: &str,
    total: usize,
    workers: usize,
) -> HashMap<String, usize> {
    let before = mock.received().len();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..workers {
        let (http, url, key) = (
            http.clone(),
            urls[worker % urls.len()].clone(),
            key.to_string(),
        );
        tasks.spawn(async move {
            for i in (worker..total).step_by(workers) {
                let reply = http
                    .send(
                        "POST",
                        &url,
                        &[("x-api-key", &key)],
                        Some(&plain_body(&format!("conversation {i}"))),
                    )
                    .await;
                assert_eq!(reply.status, 200, "{}", reply.text());
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for k in &upstream_keys(mock)[before..] {
        *counts.entry(k.clone()).or_default() += 1;
    }
    counts
}

pub fn account(name: &str, mock: &MockUpstream, upstream_key: &str, extra: Value) -> Value {
    let mut body = json!({"name": name, "type": "claude-api", "base_url": mock.url(),
                          "credentials": {"api_key": upstream_key}});
    for (k, v) in extra.as_object().expect("object") {
        body[k] = v.clone();
    }
    body
}

/// A new user with one key created with `settings` (rate_limit, max_concurrency…).
async fn key_with(admin: &Admin, username: &str, settings: Value) -> (i64, String) {
    let user = admin.create_user(username).await;
    let mut body = json!({"user_id": user["id"], "name": "k"});
    for (k, v) in settings.as_object().expect("object") {
        body[k] = v.clone();
    }
    let key = admin.expect("POST", "/api-keys", Some(body), 201).await;
    (
        key["id"].as_i64().expect("id"),
        key["key"].as_str().expect("plaintext").to_string(),
    )
}

async fn post(e: &Embedded, key: &str, body: &Value) -> aiproxy_tests::client::Reply {
    e.http
        .send(
            "POST",
            &format!("{}/v1/messages", e.proxy),
            &[("x-api-key", key)],
            Some(body),
        )
        .await
}

#[tokio::test]
async fn sessions_stick_and_load_spreads_evenly() {
    let mock = MockUpstream::start().await;
    let e = start_with(&[]).await;
    for i in 1..=3 {
        e.admin
            .create_account_with(account(
                &format!("even-{i}"),
                &mock,
                &format!("even-{i}"),
                json!({}),
            ))
            .await;
    }
    let reply = e
        .admin
        .call(
            "POST",
            "/accounts",
            Some(account("heavy", &mock, "x", json!({"weight": 0}))),
        )
        .await;
    assert_eq!(reply.status, 400, "weights run from 1 to 1000");
    let (key_id, key) = key_with(&e.admin, "spreader", json!({})).await;
    wait_for_status(
        &e.http,
        &format!("{}/v1/messages", e.proxy),
        &[("x-api-key", &key)],
        &plain_body("warm-up"),
        200,
    )
    .await;
    // Every account is in the snapshot once all three have served.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen: std::collections::HashSet<String> = upstream_keys(&mock).into_iter().collect();
        if seen.len() == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "accounts never all served: {seen:?}"
        );
        assert_eq!(
            post(&e, &key, &plain_body(&format!("w{}", seen.len())))
                .await
                .status,
            200
        );
    }

    // A Claude Code session stays on one account, in both user_id formats.
    let old_format = "user_9f2c4e6a8b0d1f3e5a7c9b1d3f5e7a9c1b3d5f7e9a1c3b5d7f9e1a3c5b7d9f1e_account__session_6c1f9a2e-3b4d-4e5f-8a7b-9c0d1e2f3a4b";
    for user_id in [
        claude_code_user_id("0b7c1e52-7d1f-4a39-9a57-3c0e2f6a1d11"),
        old_format.to_string(),
    ] {
        let before = mock.received().len();
        for turn in 0..12 {
            let reply = post(
                &e,
                &key,
                &claude_code_body(&user_id, &format!("turn {turn}")),
            )
            .await;
            assert_eq!(reply.status, 200, "{}", reply.text());
        }
        let used: std::collections::HashSet<String> =
            upstream_keys(&mock)[before..].iter().cloned().collect();
        assert_eq!(used.len(), 1, "one session, one account: {used:?}");
    }
    let sessions = e
        .admin
        .expect(
            "GET",
            &format!("/cache/sessions?key_id={key_id}"),
            None,
            200,
        )
        .await;
    let items = sessions["items"].as_array().unwrap();
    assert!(items.len() >= 2, "{sessions}");
    assert!(
        items
            .iter()
            .all(|s| s["ttl_seconds"].as_i64().unwrap() > 3500)
    );

    // Distinct conversations spread evenly: 1,000 over 3 accounts, ±10 %.
    let urls = [format!("{}/v1/messages", e.proxy)];
    let counts = spread(&e.http, &mock, &urls, &key, 1000, 8).await;
    assert_eq!(counts.values().sum::<usize>(), 1000);
    for (account, n) in &counts {
        assert!(
            (300..=367).contains(n),
            "{account} served {n} of 1000: {counts:?}"
        );
    }

    // The operator clears the key's sessions.
    let cleared = e
        .admin
        .expect(
            "DELETE",
            &format!("/cache/sessions?key_id={key_id}"),
            None,
            200,
        )
        .await;
    assert!(cleared["cleared"].as_u64().unwrap() >= 2);
    let sessions = e
        .admin
        .expect(
            "GET",
            &format!("/cache/sessions?key_id={key_id}"),
            None,
            200,
        )
        .await;
    assert_eq!(sessions["total"], 0);
    e.process.stop().await;
}

#[tokio::test]
async fn concurrency_limits_and_a_fair_wait() {
    let mock = MockUpstream::start().await;
    let e = start_with(&[("AIPROXY_WAIT_TIMEOUT", "10".to_string())]).await;
    for i in 1..=2 {
        e.admin
            .create_account_with(account(
                &format!("one-at-a-time-{i}"),
                &mock,
                "mock-slow",
                json!({"max_concurrency": 1}),
            ))
            .await;
    }
    let (_, key) = key_with(&e.admin, "parallel", json!({})).await;
    let url = format!("{}/v1/messages", e.proxy);
    wait_for_status(
        &e.http,
        &url,
        &[("x-api-key", &key)],
        &plain_body("warm-up"),
        200,
    )
    .await;

    // Two streams at once: one per account (each allows one).
    let stream = |text: &str| {
        let mut body = plain_body(text);
        body["stream"] = json!(true);
        body
    };
    let mut first = e
        .http
        .stream(&url, &[("x-api-key", &key)], &stream("a"))
        .await;
    let mut second = e
        .http
        .stream(&url, &[("x-api-key", &key)], &stream("b"))
        .await;
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    first.body_mut().frame().await.unwrap().unwrap();
    second.body_mut().frame().await.unwrap().unwrap();
    let in_use = e.admin.expect("GET", "/cache/concurrency", None, 200).await;
    let accounts = in_use["accounts"].as_array().unwrap();
    assert_eq!(accounts.len(), 2, "both accounts busy: {in_use}");
    assert!(
        accounts
            .iter()
            .all(|a| a["in_use"] == 1 && a["max_concurrency"] == 1)
    );
    assert_eq!(in_use["users"][0]["in_use"], 2);

    // A third waits its turn, then is served when a stream ends.
    let started = Instant::now();
    let third = tokio::spawn({
        let http = e.http.clone();
        let url = url.clone();
        let key = key.clone();
        async move {
            http.send("POST", &url, &[("x-api-key", &key)], Some(&plain_body("c")))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!third.is_finished(), "no slot was free");
    let first_rest = first.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&first_rest).contains("message_stop"));
    let third = third.await.unwrap();
    assert_eq!(
        third.status,
        200,
        "{}\n{}",
        third.text(),
        e.process.log_text()
    );
    assert!(started.elapsed() >= Duration::from_millis(500));
    drop(second);

    // Every slot is given back once the responses end.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let in_use = e.admin.expect("GET", "/cache/concurrency", None, 200).await;
        if in_use["accounts"].as_array().unwrap().is_empty()
            && in_use["users"].as_array().unwrap().is_empty()
        {
            break;
        }
        assert!(Instant::now() < deadline, "leases leaked: {in_use}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A key limited to one request in flight gets a 429 for the second.
    let (_, single) = key_with(&e.admin, "single", json!({"max_concurrency": 1})).await;
    wait_for_status(
        &e.http,
        &url,
        &[("x-api-key", &single)],
        &plain_body("ready"),
        200,
    )
    .await;
    let mut held = e
        .http
        .stream(&url, &[("x-api-key", &single)], &stream("d"))
        .await;
    assert_eq!(held.status(), 200);
    held.body_mut().frame().await.unwrap().unwrap();
    let reply = post(&e, &single, &plain_body("e")).await;
    assert_eq!(reply.status, 429, "{}", reply.text());
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("concurrency limit exceeded")
    );
    assert_eq!(reply.json()["error"]["type"], "rate_limit_error");
    e.process.stop().await;
}

#[tokio::test]
async fn key_rate_limits_answer_429_with_retry_after() {
    let mock = MockUpstream::start().await;
    let e = start_with(&[]).await;
    e.admin
        .create_account_with(account("any", &mock, "k", json!({})))
        .await;
    let (_, key) = key_with(&e.admin, "hasty", json!({"rate_limit": 3})).await;
    let url = format!("{}/v1/messages", e.proxy);
    wait_for_status(&e.http, &url, &[("x-api-key", &key)], &plain_body("1"), 200).await;
    let mut statuses = Vec::new();
    let mut limited = None;
    for i in 0..4 {
        let reply = post(&e, &key, &plain_body(&i.to_string())).await;
        statuses.push(reply.status);
        if reply.status == 429 {
            limited = Some(reply);
        }
    }
    assert_eq!(
        statuses,
        [200, 200, 429, 429],
        "3 per minute, one spent warming up"
    );
    let limited = limited.unwrap();
    assert_eq!(limited.json()["error"]["message"], "rate limit exceeded");
    let retry_after: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((50..=60).contains(&retry_after), "{retry_after}");
    // The same limit in an OpenAI-shaped answer.
    let reply = e
        .http
        .send(
            "POST",
            &format!("{}/v1/chat/completions", e.proxy),
            &[("authorization", &format!("Bearer {key}"))],
            Some(&json!({"model": "gpt-4o", "messages": []})),
        )
        .await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.json()["error"]["message"], "rate limit exceeded");
    assert_eq!(reply.json()["error"]["code"], "rate_limited");
    e.process.stop().await;
}

#[tokio::test]
async fn rate_limited_accounts_step_aside_until_their_reset() {
    let mock = MockUpstream::start().await;
    let e = start_with(&[]).await;
    let limited = e
        .admin
        .create_account_with(account(
            "soon-back",
            &mock,
            "mock-429-in-3",
            json!({"priority": 1}),
        ))
        .await;
    e.admin
        .create_account_with(account("backup", &mock, "backup", json!({"priority": 2})))
        .await;
    let (_, key) = key_with(&e.admin, "steady", json!({})).await;
    let calls = |k: &str| upstream_keys(&mock).iter().filter(|x| *x == k).count();

    // The 429 moves the request to the backup within the same request.
    let deadline = Instant::now() + Duration::from_secs(10);
    while calls("mock-429-in-3") == 0 {
        assert!(
            Instant::now() < deadline,
            "the limited account was never tried"
        );
        let reply = post(&e, &key, &plain_body("x")).await;
        assert!([200, 401, 503].contains(&reply.status), "{}", reply.text());
    }
    assert_eq!(
        calls("backup"),
        1,
        "served by the backup in the same request"
    );
    let limited_id = limited["id"].as_i64().unwrap();
    // Persisted on the account and shown in the cache view.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let a = e
            .admin
            .expect("GET", &format!("/accounts/{limited_id}"), None, 200)
            .await;
        if a["rate_limit_reset_at"].is_string() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rate_limit_reset_at never stored: {a}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let view = e
        .admin
        .expect("GET", "/cache/rate-limited", None, 200)
        .await;
    assert_eq!(view["items"][0]["account_id"], limited_id, "{view}");

    // Until the reset, it is not called at all.
    for i in 0..5 {
        assert_eq!(
            post(&e, &key, &plain_body(&format!("y{i}"))).await.status,
            200
        );
    }
    assert_eq!(calls("mock-429-in-3"), 1);

    // After it, the account is tried again by itself.
    tokio::time::sleep(Duration::from_millis(3_200)).await;
    assert_eq!(post(&e, &key, &plain_body("z")).await.status, 200);
    assert_eq!(calls("mock-429-in-3"), 2, "back after its reset");

    // An operator can lift a limit by hand: the account is tried at once.
    // (First let the second 429's report land, so it cannot undo the clearing.)
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let a = e
            .admin
            .expect("GET", &format!("/accounts/{limited_id}"), None, 200)
            .await;
        let reset = a["rate_limit_reset_at"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        if reset.is_some_and(|t| t > chrono::Utc::now()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the second limit was never stored"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    e.admin
        .expect(
            "DELETE",
            &format!("/cache/rate-limited?account_id={limited_id}"),
            None,
            200,
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut turn = 0;
    while calls("mock-429-in-3") < 3 {
        turn += 1;
        assert!(
            Instant::now() < deadline,
            "the cleared account was not tried again\n{}",
            e.process.log_text()
        );
        // A new conversation each time: an old one sticks to the backup.
        let fresh = plain_body(&format!("after clearing {turn}"));
        assert_eq!(post(&e, &key, &fresh).await.status, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    e.process.stop().await;
}

#[tokio::test]
async fn oauth_permission_errors_flag_a_likely_ban() {
    let mock = MockUpstream::start().await;
    let e = start_with(&[]).await;
    let far = (chrono::Utc::now().timestamp() + 86_400).to_string();
    let banned = e
        .admin
        .create_account_with(json!({"name": "banned", "type": "claude-oauth", "base_url": mock.url(), "priority": 1,
            "credentials": {"access_token": "mock-403-banned", "refresh_token": "r", "expires_at": far}}))
        .await;
    e.admin
        .create_account_with(account("healthy", &mock, "healthy", json!({"priority": 2})))
        .await;
    let (_, key) = key_with(&e.admin, "innocent", json!({})).await;
    let url = format!("{}/v1/messages", e.proxy);
    wait_for_status(
        &e.http,
        &url,
        &[("x-api-key", &key)],
        &plain_body("hi"),
        200,
    )
    .await;
    let id = banned["id"].as_i64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let a = e
            .admin
            .expect("GET", &format!("/accounts/{id}"), None, 200)
            .await;
        if a["status"] == "banned" {
            assert!(
                a["disabled_reason"]
                    .as_str()
                    .unwrap()
                    .contains("permission_error"),
                "{a}"
            );
            break;
        }
        // Traffic reaches the banned account only while it is unknown.
        assert_eq!(post(&e, &key, &plain_body("again")).await.status, 200);
        assert!(Instant::now() < deadline, "never flagged: {a}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tried = mock
        .received()
        .iter()
        .filter(|r| {
            r.headers
                .get("authorization")
                .is_some_and(|a| a.ends_with("mock-403-banned"))
        })
        .count();
    assert_eq!(
        tried, 1,
        "not retried while unavailable, then out of service"
    );
    e.process.stop().await;
}
