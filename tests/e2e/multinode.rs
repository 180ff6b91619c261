//! Two data planes sharing Redis behave as one: sessions, concurrency,
//! rate limits and leases are honoured by every node. Runs when
//! `AIPROXY_TEST_REDIS_URL` is set (CI sets it).
use std::collections::HashSet;
use std::time::{Duration, Instant};

use aiproxy_tests::client::{Http, Reply};
use aiproxy_tests::harness::{ADMIN_PASSWORD, Admin, Process, wait_ready};
use aiproxy_tests::mock::MockUpstream;
use http_body_util::BodyExt;
use serde_json::{Value, json};

use crate::scheduling::{
    account, claude_code_body, claude_code_user_id, plain_body, spread, upstream_keys,
};
use crate::split::{NODE_TOKEN, TestDatabase, controlplane, dataplane};

async fn send(http: &Http, node: &Process, key: &str, body: &Value) -> Reply {
    http.send(
        "POST",
        &format!("{}/v1/messages", node.url("proxy")),
        &[("x-api-key", key)],
        Some(body),
    )
    .await
}

fn calls(mock: &MockUpstream, key: &str) -> usize {
    upstream_keys(mock).iter().filter(|k| *k == key).count()
}

/// Sends distinct requests through `node` until it has served one and
/// `done` holds (401 and 503 while the key and accounts reach the node).
async fn until(what: &str, http: &Http, node: &Process, key: &str, mut done: impl FnMut() -> bool) {
    let mut served = false;
    let mut i = 0;
    aiproxy_tests::harness::eventually(what, Duration::from_secs(15), async || {
        let reply = send(http, node, key, &plain_body(&format!("{what} {i}"))).await;
        assert!(
            [200, 401, 503].contains(&reply.status),
            "{what}: {}",
            reply.text()
        );
        served |= reply.status == 200;
        i += 1;
        if served && done() {
            Ok(())
        } else {
            Err(format!("last answer {}", reply.status))
        }
    })
    .await
}

#[tokio::test]
async fn two_nodes_share_sessions_limits_and_leases() {
    let Some(redis) = std::env::var("AIPROXY_TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        eprintln!("AIPROXY_TEST_REDIS_URL unset: multi-node scheduling not run");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::new(dir.path(), "multinode").await;
    let mock = MockUpstream::start().await;
    let http = Http::default();
    let shared = vec![
        ("AIPROXY_REDIS_URL", redis.clone()),
        (
            "AIPROXY_REDIS_NAMESPACE",
            format!("aiproxy-e2e-{}", std::process::id()),
        ),
    ];
    let cp = controlplane(&db.url, dir.path(), "127.0.0.1:0", &shared).await;
    let grpc = cp.addrs["grpc"];
    let mut node_env = shared.clone();
    node_env.push(("AIPROXY_CONCURRENCY_TTL", "3".to_string()));
    node_env.push(("AIPROXY_WAIT_TIMEOUT", "0".to_string()));
    let dp1 = dataplane(grpc, dir.path(), "dp1", NODE_TOKEN, &node_env).await;
    let dp2 = dataplane(grpc, dir.path(), "dp2", NODE_TOKEN, &node_env).await;
    for dp in [&dp1, &dp2] {
        wait_ready(
            &http,
            &format!("{}/readyz", dp.url("proxy")),
            Duration::from_secs(30),
        )
        .await;
    }
    let admin = Admin::login(&http, &cp.url("admin"), "admin", ADMIN_PASSWORD).await;
    let user = admin.create_user("cluster").await;
    let user_id = user["id"].as_i64().unwrap();
    // One key per scenario, each with accounts reserved for it.
    let mut keys = Vec::new();
    for name in ["spread", "limits", "ratelimit", "crash"] {
        keys.push(admin.create_key(user_id, name).await);
    }
    let bound = |i: usize| json!({"bound_api_key_ids": [keys[i].0]});

    // 1. A Claude Code session stays on one account whichever node serves
    //    it, and distinct conversations spread evenly over both nodes.
    let key = keys[0].1.clone();
    for i in 1..=3 {
        admin
            .create_account_with(account(
                &format!("even-{i}"),
                &mock,
                &format!("even-{i}"),
                bound(0),
            ))
            .await;
    }
    for node in [&dp1, &dp2] {
        until("all three accounts serve", &http, node, &key, || {
            ["even-1", "even-2", "even-3"]
                .iter()
                .all(|k| calls(&mock, k) > 0)
        })
        .await;
    }
    let before = mock.received().len();
    let user_id_field = claude_code_user_id("7d3e9b1a-2c4f-4e6a-9b8c-1d2e3f4a5b6c");
    for turn in 0..10 {
        let node = if turn % 2 == 0 { &dp1 } else { &dp2 };
        let reply = send(
            &http,
            node,
            &key,
            &claude_code_body(&user_id_field, &format!("turn {turn}")),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    let used: HashSet<String> = upstream_keys(&mock)[before..].iter().cloned().collect();
    assert_eq!(
        used.len(),
        1,
        "one session, one account on both nodes: {used:?}"
    );

    let urls = [
        format!("{}/v1/messages", dp1.url("proxy")),
        format!("{}/v1/messages", dp2.url("proxy")),
    ];
    let counts = spread(&http, &mock, &urls, &key, 600, 6).await;
    assert_eq!(counts.values().sum::<usize>(), 600);
    for (account, n) in &counts {
        assert!(
            (180..=220).contains(n),
            "{account} served {n} of 600: {counts:?}"
        );
    }

    // 2. One request at a time per account, counted across nodes: two
    //    parallel streams, one on each node, hold both accounts.
    let key = keys[1].1.clone();
    let mut slow_ids = Vec::new();
    for i in 1..=2 {
        let mut extra = bound(1);
        extra["max_concurrency"] = json!(1);
        let a = admin
            .create_account_with(account(&format!("single-{i}"), &mock, "mock-slow", extra))
            .await;
        slow_ids.push(a["id"].clone());
    }
    for node in [&dp1, &dp2] {
        until("the single-slot accounts serve", &http, node, &key, || {
            calls(&mock, "mock-slow") >= 2
        })
        .await;
    }
    // Leases go back after an answer is sent, off its path: wait until the
    // warm-up requests' slots are free in the shared state.
    aiproxy_tests::harness::eventually(
        "the single slots are free",
        Duration::from_secs(5),
        async || {
            let load = admin.expect("GET", "/cache/concurrency", None, 200).await;
            let busy = load["accounts"].as_array().into_iter().flatten().any(|a| {
                slow_ids.contains(&a["account_id"]) && a["in_use"].as_i64().unwrap_or(0) > 0
            });
            if busy { Err(load.to_string()) } else { Ok(()) }
        },
    )
    .await;
    let stream = |text: &str| {
        let mut body = plain_body(text);
        body["stream"] = json!(true);
        body
    };
    let mut on_dp1 = http
        .stream(
            &format!("{}/v1/messages", dp1.url("proxy")),
            &[("x-api-key", &key)],
            &stream("p1"),
        )
        .await;
    assert_eq!(on_dp1.status().as_u16(), 200);
    // The other slot, from the other node (a node that saw it taken during
    // the warm-up may take a moment to see it free).
    let mut on_dp2 = aiproxy_tests::harness::eventually(
        "the second slot serves from the other node",
        Duration::from_secs(5),
        async || {
            let reply = http
                .stream(
                    &format!("{}/v1/messages", dp2.url("proxy")),
                    &[("x-api-key", &key)],
                    &stream("p2"),
                )
                .await;
            if reply.status() == 200 {
                Ok(reply)
            } else {
                Err(format!("{}", reply.status()))
            }
        },
    )
    .await;
    on_dp1.body_mut().frame().await.unwrap().unwrap();
    on_dp2.body_mut().frame().await.unwrap().unwrap();
    let in_use = admin.expect("GET", "/cache/concurrency", None, 200).await;
    let busy: Vec<&Value> = in_use["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| slow_ids.contains(&a["account_id"]))
        .collect();
    assert_eq!(busy.len(), 2, "both accounts hold one stream: {in_use}");
    let third = send(&http, &dp1, &key, &plain_body("p3")).await;
    assert_eq!(third.status, 503, "every slot is taken: {}", third.text());
    drop((on_dp1, on_dp2));

    // 3. A 429 with a unified reset moves the request to the backup at once,
    //    and every node leaves the account alone until the reset.
    let key = keys[2].1.clone();
    // The backup first, so any snapshot with the limited account has it too.
    let mut second = bound(2);
    second["priority"] = json!(2);
    admin
        .create_account_with(account("backup", &mock, "cluster-backup", second))
        .await;
    let mut first = bound(2);
    first["priority"] = json!(1);
    admin
        .create_account_with(account("limited", &mock, "mock-429-in-3", first))
        .await;
    until("the limited account is tried", &http, &dp1, &key, || {
        calls(&mock, "mock-429-in-3") > 0
    })
    .await;
    let limited_at = Instant::now();
    assert_eq!(calls(&mock, "mock-429-in-3"), 1);
    assert!(calls(&mock, "cluster-backup") >= 1, "served by the backup");
    for node in [&dp2, &dp1, &dp2] {
        let reply = send(&http, node, &key, &plain_body("after the 429")).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    assert!(limited_at.elapsed() < Duration::from_secs(3));
    assert_eq!(
        calls(&mock, "mock-429-in-3"),
        1,
        "no node calls it before the reset"
    );
    tokio::time::sleep(
        Duration::from_secs(3).saturating_sub(limited_at.elapsed()) + Duration::from_millis(300),
    )
    .await;
    assert_eq!(
        send(&http, &dp2, &key, &plain_body("later")).await.status,
        200
    );
    assert_eq!(calls(&mock, "mock-429-in-3"), 2, "back after its reset");

    // 4. A node killed mid-request never gives its lease back: the slot
    //    returns after concurrency_ttl (3 s here) all the same.
    let key = keys[3].1.clone();
    let mut extra = bound(3);
    extra["max_concurrency"] = json!(1);
    admin
        .create_account_with(account("crash", &mock, "mock-slow", extra))
        .await;
    let slow_before = calls(&mock, "mock-slow");
    for node in [&dp1, &dp2] {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let reply = send(&http, node, &key, &plain_body("crash warm-up")).await;
            if reply.status == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "{}", reply.text());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(calls(&mock, "mock-slow") >= slow_before + 2);
    let mut doomed = http
        .stream(
            &format!("{}/v1/messages", dp1.url("proxy")),
            &[("x-api-key", &key)],
            &stream("doomed"),
        )
        .await;
    assert_eq!(doomed.status(), 200);
    doomed.body_mut().frame().await.unwrap().unwrap();
    dp1.kill().await;
    let killed_at = Instant::now();
    let reply = send(&http, &dp2, &key, &plain_body("while the lease lingers")).await;
    assert_eq!(
        reply.status,
        503,
        "the dead node's lease still counts: {}",
        reply.text()
    );
    loop {
        let reply = send(&http, &dp2, &key, &plain_body("after the lease lapsed")).await;
        if reply.status == 200 {
            break;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(8),
            "the dead node's slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        killed_at.elapsed() >= Duration::from_secs(1),
        "not before the lease lapsed"
    );

    admin.expect("DELETE", "/cache/sessions", None, 200).await;
    admin
        .expect("DELETE", "/cache/concurrency", None, 200)
        .await;
    admin
        .expect("DELETE", "/cache/unavailable", None, 200)
        .await;
    admin
        .expect("DELETE", "/cache/rate-limited", None, 200)
        .await;
    dp2.stop().await;
    cp.stop().await;
    db.drop().await;
}
