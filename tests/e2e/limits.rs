//! Streams that end badly and requests that are too big: client
//! disconnects, silent upstreams, oversized bodies.
use std::time::{Duration, Instant};

use aiproxy_tests::mock::{MockUpstream, USAGE};
use http_body_util::BodyExt;
use serde_json::{Value, json};

use crate::embedded::{Embedded, logged, start_with, wait_for_status};

fn stream_body() -> Value {
    json!({"model": "claude-sonnet-4-5", "max_tokens": 8, "stream": true, "messages": [{"role": "user", "content": "hi"}]})
}

/// A key of a new user `user` that the relay already serves, and the
/// Messages URL.
async fn ready_key(e: &Embedded, user: &str) -> (String, String) {
    let key = e.user_key(user).await;
    let url = format!("{}/v1/messages", e.proxy);
    let plain = json!({"model": "claude-sonnet-4-5", "messages": []});
    wait_for_status(&e.http, &url, &[("x-api-key", &key)], &plain, 200).await;
    (key, url)
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    aiproxy_tests::harness::eventually(what, Duration::from_secs(10), async || {
        if check() {
            Ok(())
        } else {
            Err("not yet".into())
        }
    })
    .await
}

#[tokio::test]
async fn a_client_that_leaves_cancels_the_upstream_and_is_still_billed() {
    let mock = MockUpstream::start().await;
    let e = start_with(&[]).await;
    e.admin
        .create_account("slow", &mock.url(), "mock-slow")
        .await;
    let (key, url) = ready_key(&e, "leaver").await;

    let mut resp = e
        .http
        .stream(&url, &[("x-api-key", &key)], &stream_body())
        .await;
    assert_eq!(resp.status(), 200);
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let first = resp
        .body_mut()
        .frame()
        .await
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains("message_start"));
    drop(resp);

    until("the upstream stream to be cancelled", || {
        mock.cancelled_streams() == 1
    })
    .await;
    let row = logged(&e.admin, &request_id).await;
    assert_eq!(
        row["input_tokens"], USAGE.input,
        "input counted from message_start: {row}"
    );
    assert_eq!(row["cache_read_tokens"], USAGE.cache_read);
    assert_eq!(row["usage_source"], "missing");
    assert_eq!(row["error_class"], "client_disconnected");
    e.process.stop().await;
}

#[tokio::test]
async fn slow_but_steady_streams_are_not_cut_off() {
    let mock = MockUpstream::start().await;
    let e = start_with(&[("AIPROXY_IDLE_TIMEOUT", "1".to_string())]).await;
    e.admin
        .create_account("steady", &mock.url(), "mock-steady")
        .await;
    let (key, url) = ready_key(&e, "patient").await;

    // 600 ms between events, several seconds in all: never a second of silence.
    let started = Instant::now();
    let mut resp = e
        .http
        .stream(&url, &[("x-api-key", &key)], &stream_body())
        .await;
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let mut body = Vec::new();
    while let Some(frame) = resp.body_mut().frame().await {
        let frame = frame.expect("the stream is not cut off");
        if let Ok(data) = frame.into_data() {
            body.extend_from_slice(&data);
        }
    }
    assert!(started.elapsed() > Duration::from_secs(2));
    assert!(String::from_utf8_lossy(&body).contains("message_stop"));
    let row = logged(&e.admin, &request_id).await;
    assert_eq!(row["error_class"], "", "{row}");
    assert_eq!(row["usage_source"], "reported");
    e.process.stop().await;
}

#[tokio::test]
async fn silent_upstreams_are_cut_off_and_big_bodies_refused() {
    let mock = MockUpstream::start().await;
    let e = start_with(&[
        ("AIPROXY_IDLE_TIMEOUT", "1".to_string()),
        ("AIPROXY_MAX_BODY_BYTES", "4096".to_string()),
    ])
    .await;
    e.admin
        .create_account("slow", &mock.url(), "mock-slow")
        .await;
    e.admin
        .expect(
            "POST",
            "/accounts",
            Some(json!({"name": "oai", "type": "openai", "base_url": mock.url(), "credentials": {"api_key": "k"}})),
            201,
        )
        .await;
    let (key, url) = ready_key(&e, "waiter").await;

    // The mock pauses two seconds mid-stream; after one second of silence the relay gives up.
    let mut resp = e
        .http
        .stream(&url, &[("x-api-key", &key)], &stream_body())
        .await;
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let mut failed = false;
    while let Some(frame) = resp.body_mut().frame().await {
        if frame.is_err() {
            failed = true;
            break;
        }
    }
    assert!(failed, "the client sees the stream break, not a clean end");

    let row = logged(&e.admin, &request_id).await;
    assert_eq!(row["error_class"], "upstream_idle_timeout");
    assert_eq!(row["usage_source"], "missing");
    until("the upstream stream to be cancelled", || {
        mock.cancelled_streams() == 1
    })
    .await;

    // Oversized bodies: 413 in the caller's shape.
    let big = "x".repeat(5000);
    let reply = e
        .http
        .send(
            "POST",
            &url,
            &[("x-api-key", &key)],
            Some(&json!({"model": "claude-sonnet-4-5", "messages": [big]})),
        )
        .await;
    assert_eq!(reply.status, 413);
    assert_eq!(reply.json()["error"]["type"], "invalid_request_error");
    let auth = format!("Bearer {key}");
    let reply = e
        .http
        .send(
            "POST",
            &format!("{}/v1/chat/completions", e.proxy),
            &[("authorization", &auth)],
            Some(&json!({"model": "gpt-4o", "messages": [big]})),
        )
        .await;
    assert_eq!(reply.status, 413);
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("larger than 4096 bytes")
    );
    e.process.stop().await;
}

#[tokio::test]
async fn accounts_reach_their_upstream_through_their_proxy() {
    use aiproxy_tests::proxies::TestProxy;
    let mock = MockUpstream::start().await;
    let http_proxy = TestProxy::http_connect().await;
    let socks_proxy = TestProxy::socks5().await;
    let e = start_with(&[]).await;
    let key = e.user_key("proxied").await;
    let via_http = e
        .admin
        .expect(
            "POST",
            "/accounts",
            Some(json!({"name": "via-http", "type": "claude-api", "base_url": mock.url(),
                        "proxy_url": format!("http://alice:s%40cret@{}", http_proxy.addr), "credentials": {"api_key": "k1"}})),
            201,
        )
        .await;
    let url = format!("{}/v1/messages", e.proxy);
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": []});
    wait_for_status(&e.http, &url, &[("x-api-key", &key)], &body, 200).await;
    assert_eq!(http_proxy.targets(), vec![mock.addr.to_string()]);
    // alice:s@cret
    assert_eq!(
        http_proxy.credentials(),
        vec![Some("Basic YWxpY2U6c0BjcmV0".to_string())]
    );

    // Switch the account to a SOCKS5 proxy.
    let patch = json!({"proxy_url": format!("socks5://{}", socks_proxy.addr)});
    e.admin
        .expect(
            "PATCH",
            &format!("/accounts/{}", via_http["id"]),
            Some(patch),
            200,
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while socks_proxy.targets().is_empty() {
        let reply = e
            .http
            .send("POST", &url, &[("x-api-key", &key)], Some(&body))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert!(
            Instant::now() < deadline,
            "no request went through the SOCKS5 proxy"
        );
    }
    assert_eq!(socks_proxy.targets()[0], mock.addr.to_string());
    e.process.stop().await;
}

#[tokio::test]
async fn slow_first_bytes_fail_over_then_time_out() {
    let slow = MockUpstream::with_latency(Duration::from_secs(3)).await;
    let fast = MockUpstream::start().await;
    let e = start_with(&[
        ("AIPROXY_PROXY_TIMEOUT", "1".to_string()),
        ("AIPROXY_UNAVAILABLE_TTL", "1".to_string()),
    ])
    .await;
    e.admin
        .expect(
            "POST",
            "/accounts",
            Some(json!({"name": "slow", "type": "claude-api", "base_url": slow.url(), "priority": 1, "credentials": {"api_key": "k"}})),
            201,
        )
        .await;
    let quick = e
        .admin
        .expect(
            "POST",
            "/accounts",
            Some(json!({"name": "fast", "type": "claude-api", "base_url": fast.url(), "priority": 2, "credentials": {"api_key": "k"}})),
            201,
        )
        .await;
    let key = e.user_key("patient").await;
    let url = format!("{}/v1/messages", e.proxy);
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": []});

    // The slow account misses the first-byte deadline; the fast one answers.
    let reply = wait_for_status(&e.http, &url, &[("x-api-key", &key)], &body, 200).await;
    let row = logged(&e.admin, reply.headers["x-request-id"].to_str().unwrap()).await;
    assert_eq!(row["account_id"], quick["id"]);
    assert!(
        !slow.received().is_empty(),
        "the slow account was tried first"
    );

    // With only the slow account left, the caller gets a 504 in its own
    // shape (once the mark its timeout earned has lapsed).
    e.admin.disable_account(&quick["id"]).await;
    let reply = wait_for_status(&e.http, &url, &[("x-api-key", &key)], &body, 504).await;
    assert_eq!(reply.json()["error"]["message"], "upstream timed out");
    e.process.stop().await;
}

#[tokio::test]
async fn streams_cut_short_are_recorded_as_incomplete() {
    let mock = MockUpstream::start().await;
    let e = start_with(&[]).await;
    e.admin.create_account("cut", &mock.url(), "mock-cut").await;
    let (key, url) = ready_key(&e, "cutter").await;
    let reply = e
        .http
        .send("POST", &url, &[("x-api-key", &key)], Some(&stream_body()))
        .await;
    assert_eq!(reply.status, 200);
    assert!(reply.text().contains("message_start") && !reply.text().contains("message_stop"));
    let row = logged(&e.admin, reply.headers["x-request-id"].to_str().unwrap()).await;
    assert_eq!(
        row["usage_source"], "missing",
        "counts of a cut stream are not final: {row}"
    );
    assert_eq!(row["error_class"], "upstream_incomplete");
    assert_eq!(
        row["input_tokens"], USAGE.input,
        "what was seen is still recorded"
    );
    e.process.stop().await;
}

#[tokio::test]
async fn failover_stops_after_the_configured_attempts() {
    let mock = MockUpstream::start().await;
    // Failed accounts stay out of picks for at most a second here.
    let e = start_with(&[
        ("AIPROXY_MAX_ATTEMPTS", "2".to_string()),
        ("AIPROXY_UNAVAILABLE_TTL", "1".to_string()),
    ])
    .await;
    for name in ["a", "b", "c"] {
        e.admin.create_account(name, &mock.url(), "mock-500").await;
    }
    let key = e.user_key("unlucky").await;
    let url = format!("{}/v1/messages", e.proxy);
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": []});
    wait_for_status(&e.http, &url, &[("x-api-key", &key)], &body, 500).await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let before = mock.received().len();
    let reply = e
        .http
        .send("POST", &url, &[("x-api-key", &key)], Some(&body))
        .await;
    assert_eq!(reply.status, 500);
    assert_eq!(
        mock.received().len() - before,
        2,
        "two accounts tried, not three"
    );
    e.process.stop().await;
}
