//! Money through the relay: exact costs (long-context tier included),
//! packages that stop users with the seed's messages, bounded overshoot under
//! parallel load, usage totals, CSV export, prices and the consistency check.
use std::time::{Duration, Instant};

use aiproxy_tests::harness::Admin;
use aiproxy_tests::mock::MockUpstream;
use serde_json::{Value, json};

use crate::embedded::{Embedded, logged, start_with, wait_for_status};
use crate::scheduling::{account, plain_body};

/// The mock's usage (25 in, 15 out, 40 + 60 cache writes at 5 min / 1 h, 2000
/// cache reads) at claude-sonnet-4-5's prices: 75 + 225 + 150 + 360 + 600 per million.
const SONNET_COST: &str = "0.00141";
/// `mock-long`'s 250,000 input tokens put the request in the long-context
/// tier, every token at its price: 1,500,000 + 337.5 + 300 + 720 + 1,200 per million.
const LONG_COST: &str = "1.5025575";

async fn key_for(admin: &Admin, user_id: i64) -> (i64, String) {
    admin.create_key(user_id, "billing").await
}

async fn post(e: &Embedded, key: &str, text: &str) -> aiproxy_tests::client::Reply {
    e.http
        .send(
            "POST",
            &format!("{}/v1/messages", e.proxy),
            &[("x-api-key", key)],
            Some(&plain_body(text)),
        )
        .await
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    aiproxy_tests::harness::eventually(what, Duration::from_secs(10), async || {
        if check().await {
            Ok(())
        } else {
            Err("not yet".into())
        }
    })
    .await
}

#[tokio::test]
async fn packages_stop_users_with_the_seed_messages() {
    let mock = MockUpstream::start().await;
    let e = start_with(&[("AIPROXY_BILLING_TIMEZONE", "+08:00".to_string())]).await;
    e.admin
        .create_account_with(account("billed", &mock, "billed", json!({})))
        .await;
    let user = e.admin.create_user("payer").await;
    let user_id = user["id"].as_i64().unwrap();
    let (_, key) = key_for(&e.admin, user_id).await;
    let url = format!("{}/v1/messages", e.proxy);

    // No package at all: unmetered, and billed to the last digit.
    let reply = wait_for_status(
        &e.http,
        &url,
        &[("x-api-key", &key)],
        &plain_body("free"),
        200,
    )
    .await;
    let row = logged(&e.admin, reply.headers["x-request-id"].to_str().unwrap()).await;
    assert_eq!(row["cost"], SONNET_COST);
    assert_eq!(row["upstream_cost"], SONNET_COST);

    // A package for another model only: "model not allowed".
    let path = format!("/users/{user_id}/packages");
    e.admin
        .expect(
            "POST",
            &path,
            Some(json!({"name": "haiku only", "type": "quota", "quota_total": "5", "allowed_models": ["claude-haiku-4-5"]})),
            201,
        )
        .await;
    let reply = wait_for_status(&e.http, &url, &[("x-api-key", &key)], &plain_body("x"), 403).await;
    assert_eq!(reply.json()["error"]["message"], "model not allowed");
    assert_eq!(reply.json()["error"]["type"], "permission_error");

    // A subscription allowing two requests a day: the third is refused.
    let sub = e
        .admin
        .expect(
            "POST",
            &path,
            Some(json!({"name": "daily", "type": "subscription", "daily_quota": "0.00282", "monthly_quota": "10"})),
            201,
        )
        .await;
    // Everyone's packages for an admin, filtered; a user's own for them.
    let other = e.admin.create_user("bystander").await;
    let other_id = other["id"].as_i64().unwrap();
    e.admin
        .expect(
            "POST",
            &format!("/users/{other_id}/packages"),
            Some(json!({"name": "theirs", "type": "quota", "quota_total": "1"})),
            201,
        )
        .await;
    let names = |list: Value| -> Vec<String> {
        let items = list["items"].as_array().unwrap();
        assert_eq!(list["total"], items.len(), "{list}");
        items
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect()
    };
    let all = e.admin.expect("GET", "/packages", None, 200).await;
    assert_eq!(names(all), ["haiku only", "daily", "theirs"]);
    let subs = e
        .admin
        .expect("GET", "/packages?type=subscription", None, 200)
        .await;
    assert_eq!(names(subs), ["daily"]);
    let theirs = e
        .admin
        .expect(
            "GET",
            &format!("/packages?user_id={other_id}&status=active"),
            None,
            200,
        )
        .await;
    assert_eq!(names(theirs), ["theirs"]);
    let payer = Admin::login(&e.http, &e.process.url("admin"), "payer", "user-password-1").await;
    let own = payer
        .expect("GET", &format!("/packages?user_id={other_id}"), None, 200)
        .await;
    assert_eq!(
        names(own),
        ["haiku only", "daily"],
        "a user sees only their own"
    );
    let by_day = e
        .admin
        .expect("GET", "/usage?group_by=day", None, 200)
        .await;
    assert_eq!(by_day["billing_timezone"], "+08:00");

    wait_for_status(
        &e.http,
        &url,
        &[("x-api-key", &key)],
        &plain_body("first"),
        200,
    )
    .await;
    assert_eq!(post(&e, &key, "second").await.status, 200);
    let third = post(&e, &key, "third").await;
    assert_eq!(third.status, 403, "{}", third.text());
    assert_eq!(third.json()["error"]["message"], "daily limit exceeded");
    let sub_id = sub["id"].as_i64().unwrap();
    eventually("both charges to reach the package", async || {
        let p = e
            .admin
            .expect("GET", &format!("/packages/{sub_id}"), None, 200)
            .await;
        p["daily_used"] == "0.00282"
    })
    .await;
    let p = e
        .admin
        .expect("GET", &format!("/packages/{sub_id}"), None, 200)
        .await;
    assert_eq!(p["monthly_used"], "0.00282");
    assert_eq!(p["last_reset_month"].as_str().unwrap().len(), 7);

    // A quota package is drawn on once the subscription is used up; then it too runs out.
    let top_up = e
        .admin
        .expect(
            "POST",
            &path,
            Some(json!({"name": "top-up", "type": "quota", "quota_total": "0.00141"})),
            201,
        )
        .await;
    wait_for_status(
        &e.http,
        &url,
        &[("x-api-key", &key)],
        &plain_body("fourth"),
        200,
    )
    .await;
    let fifth = post(&e, &key, "fifth").await;
    assert_eq!(fifth.status, 403);
    assert_eq!(
        fifth.json()["error"]["message"],
        "daily limit exceeded",
        "the first package in draw order names the refusal"
    );
    let top_up_id = top_up["id"].as_i64().unwrap();
    eventually("the top-up to be charged", async || {
        let p = e
            .admin
            .expect("GET", &format!("/packages/{top_up_id}"), None, 200)
            .await;
        p["quota_used"] == "0.00141"
    })
    .await;

    // The operator's reset (the seed's SQL recipe as one call) lets the user back in.
    let reset = e
        .admin
        .expect(
            "POST",
            &format!("/users/{user_id}/packages/reset"),
            None,
            200,
        )
        .await;
    assert_eq!(reset["reset"], 3);
    wait_for_status(
        &e.http,
        &url,
        &[("x-api-key", &key)],
        &plain_body("sixth"),
        200,
    )
    .await;

    // A long prompt costs the long-context tier, every token of it.
    let long_user = e.admin.create_user("long").await;
    let (_, long_key) = key_for(&e.admin, long_user["id"].as_i64().unwrap()).await;
    e.admin
        .create_account_with(account(
            "long",
            &mock,
            "mock-long",
            json!({"bound_user_ids": [long_user["id"]]}),
        ))
        .await;
    // Until the binding reaches the relay a shared account may serve it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let row = loop {
        let reply = wait_for_status(
            &e.http,
            &url,
            &[("x-api-key", &long_key)],
            &plain_body("long"),
            200,
        )
        .await;
        let row = logged(&e.admin, reply.headers["x-request-id"].to_str().unwrap()).await;
        if row["input_tokens"] == 250_000 || Instant::now() > deadline {
            break row;
        }
    };
    assert_eq!(row["input_tokens"], 250_000);
    assert_eq!(row["cost"], LONG_COST);
    let sonnet = e.admin.expect("GET", "/prices", None, 200).await["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["model"] == "claude-sonnet-4-5")
        .cloned()
        .unwrap();
    assert_eq!(row["price_version"], sonnet["version"]);

    // Totals, CSV, and the books balance.
    let totals = e
        .admin
        .expect(
            "GET",
            &format!("/usage?group_by=user&user_id={user_id}"),
            None,
            200,
        )
        .await;
    let requests = totals["items"][0]["requests"].as_u64().unwrap();
    assert!(requests >= 5, "{totals}");
    let csv = e
        .admin
        .call(
            "GET",
            &format!("/request-logs/export?user_id={user_id}"),
            None,
        )
        .await;
    assert_eq!(csv.status, 200);
    assert_eq!(csv.headers["content-type"], "text/csv; charset=utf-8");
    let text = csv.text();
    assert!(text.starts_with("request_id,created_at,user_id"));
    assert_eq!(
        text.lines().count() as u64,
        1 + requests,
        "a header and every logged request (refusals are not relayed):\n{text}"
    );
    eventually("ingestion to settle", async || {
        let report = e.admin.expect("GET", "/usage/consistency", None, 200).await;
        report["clean"] == true
    })
    .await;
    e.process.stop().await;
}

#[tokio::test]
async fn parallel_requests_overshoot_a_quota_by_at_most_what_is_in_flight() {
    let mock = MockUpstream::start().await;
    let e = start_with(&[]).await;
    e.admin
        .create_account_with(account("busy", &mock, "busy", json!({})))
        .await;
    let user = e.admin.create_user("racer").await;
    let user_id = user["id"].as_i64().unwrap();
    // Room for 20 requests. The key comes after the package, so a snapshot
    // that has the key has the package too.
    let package = e
        .admin
        .expect(
            "POST",
            &format!("/users/{user_id}/packages"),
            Some(json!({"name": "twenty", "type": "quota", "quota_total": "0.0282"})),
            201,
        )
        .await;
    let (_, key) = key_for(&e.admin, user_id).await;
    let url = format!("{}/v1/messages", e.proxy);
    wait_for_status(
        &e.http,
        &url,
        &[("x-api-key", &key)],
        &plain_body("warm"),
        200,
    )
    .await;
    const WORKERS: usize = 6;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..WORKERS {
        let (http, url, key) = (e.http.clone(), url.clone(), key.clone());
        tasks.spawn(async move {
            let mut served = 0;
            for i in 0.. {
                let reply = http
                    .send(
                        "POST",
                        &url,
                        &[("x-api-key", &key)],
                        Some(&plain_body(&format!("{w}-{i}"))),
                    )
                    .await;
                match reply.status {
                    200 => served += 1,
                    403 => {
                        assert_eq!(reply.json()["error"]["message"], "quota exceeded");
                        return served;
                    }
                    other => panic!("unexpected {other}: {}", reply.text()),
                }
            }
            served
        });
    }
    let mut served = 1;
    while let Some(n) = tasks.join_next().await {
        served += n.unwrap();
    }
    assert!(served >= 20, "the quota allows 20, {served} served");
    assert!(
        served <= 20 + WORKERS,
        "{served} served: more than the requests in flight when it ran out"
    );
    let id = package["id"].as_i64().unwrap();
    let expected = (rust_decimal::Decimal::from(served as i64)
        * "0.00141".parse::<rust_decimal::Decimal>().unwrap())
    .normalize()
    .to_string();
    eventually("every served request to be charged", async || {
        let p: Value = e
            .admin
            .expect("GET", &format!("/packages/{id}"), None, 200)
            .await;
        p["quota_used"] == expected.as_str()
    })
    .await;
    let report = e.admin.expect("GET", "/usage/consistency", None, 200).await;
    assert_eq!(report["clean"], true, "{report}");
    e.process.stop().await;
}

#[tokio::test]
async fn prices_are_edited_imported_and_rerated() {
    let mock = MockUpstream::start().await;
    let e = start_with(&[]).await;
    e.admin
        .create_account_with(account("priced", &mock, "priced", json!({})))
        .await;
    let user = e.admin.create_user("rerated").await;
    let (key_id, key) = key_for(&e.admin, user["id"].as_i64().unwrap()).await;
    let url = format!("{}/v1/messages", e.proxy);
    let started = chrono::Utc::now() - chrono::Duration::seconds(1);

    // A wrong price goes live; requests are billed with it.
    e.admin
        .expect(
            "PUT",
            "/prices/claude-sonnet-4-5",
            Some(
                json!({"input_price": "30", "output_price": "150", "cache_write_5m_price": "3.75",
                        "cache_write_1h_price": "6", "cache_read_price": "0.3"}),
            ),
            200,
        )
        .await;
    let mut served = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while served.len() < 2 {
        let reply = wait_for_status(
            &e.http,
            &url,
            &[("x-api-key", &key)],
            &plain_body(&format!("r{}", served.len())),
            200,
        )
        .await;
        let row = logged(&e.admin, reply.headers["x-request-id"].to_str().unwrap()).await;
        // 25*30 + 15*150 + 150 + 360 + 600 = 4110 per million
        if row["cost"] == "0.00411" {
            served.push(row);
        }
        assert!(
            Instant::now() < deadline,
            "the new price never reached the relay"
        );
    }
    // The fix, then a re-rate of what was billed wrong: dry run first.
    e.admin
        .expect(
            "PUT",
            "/prices/claude-sonnet-4-5",
            Some(json!({"input_price": "3", "output_price": "15", "cache_write_5m_price": "3.75",
                        "cache_write_1h_price": "6", "cache_read_price": "0.3",
                        "long_context_threshold": 200000, "long_input_price": "6", "long_output_price": "22.5",
                        "long_cache_write_5m_price": "7.5", "long_cache_write_1h_price": "12", "long_cache_read_price": "0.6"})),
            200,
        )
        .await;
    let history = e
        .admin
        .expect("GET", "/prices/claude-sonnet-4-5/history", None, 200)
        .await;
    assert_eq!(history["items"][0]["changed_by"], "admin");
    assert!(history["total"].as_u64().unwrap() >= 3);
    let window = json!({"from": started.to_rfc3339(), "to": (chrono::Utc::now() + chrono::Duration::seconds(60)).to_rfc3339()});
    let mut dry = window.clone();
    dry["dry_run"] = json!(true);
    eventually("the served requests to be ingested", async || {
        let report = e
            .admin
            .expect("POST", "/usage/rerate", Some(dry.clone()), 200)
            .await;
        report["requests"].as_i64().unwrap() >= 2
    })
    .await;
    let report = e
        .admin
        .expect("POST", "/usage/rerate", Some(window), 200)
        .await;
    assert_eq!(report["applied"], true);
    assert!(report["changed"].as_i64().unwrap() >= 2, "{report}");
    for row in &served {
        let after = logged(&e.admin, row["request_id"].as_str().unwrap()).await;
        assert_eq!(after["cost"], SONNET_COST);
    }
    let key_row = e
        .admin
        .expect("GET", &format!("/api-keys/{key_id}"), None, 200)
        .await;
    let logs = e
        .admin
        .expect(
            "GET",
            &format!("/request-logs?api_key_id={key_id}&page_size=500"),
            None,
            200,
        )
        .await;
    let sum: rust_decimal::Decimal = logs["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r["cost"]
                .as_str()
                .unwrap()
                .parse::<rust_decimal::Decimal>()
                .unwrap()
        })
        .sum();
    assert_eq!(
        key_row["cost_used"]
            .as_str()
            .unwrap()
            .parse::<rust_decimal::Decimal>()
            .unwrap(),
        sum
    );
    assert_eq!(
        e.admin.expect("GET", "/usage/consistency", None, 200).await["clean"],
        true
    );

    // LiteLLM's price file (larger than other bodies: this one is 2 MB)
    // imports exactly.
    let imported = e
        .admin
        .expect(
            "POST",
            "/prices/import",
            Some(json!({
                "sample_spec": {"input_cost_per_token": 0, "notes": "x".repeat(2_000_000)},
                "my-model": {"input_cost_per_token": 1.25e-06, "output_cost_per_token": 1e-05, "cache_read_input_token_cost": 1.25e-07},
                "embedding-only": {"mode": "embedding"}
            })),
            200,
        )
        .await;
    assert_eq!(
        (imported["imported"].as_u64(), imported["skipped"].as_u64()),
        (Some(1), Some(2))
    );
    let prices = e.admin.expect("GET", "/prices", None, 200).await;
    let mine = prices["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["model"] == "my-model")
        .cloned()
        .unwrap();
    assert_eq!(
        (
            mine["input_price"].as_str(),
            mine["cache_read_price"].as_str()
        ),
        (Some("1.25"), Some("0.125"))
    );
    let reply = e
        .admin
        .call(
            "PUT",
            "/prices/bad",
            Some(json!({"input_price": "-1", "output_price": "1"})),
        )
        .await;
    assert_eq!(reply.status, 400);
    let reply = e
        .admin
        .call(
            "PUT",
            "/prices/unpriced",
            Some(json!({"output_price": "1"})),
        )
        .await;
    assert_eq!(reply.status, 400, "a new model needs both base prices");

    // Changing one price keeps the others.
    let changed = e
        .admin
        .expect(
            "PUT",
            "/prices/my-model",
            Some(json!({"output_price": "12"})),
            200,
        )
        .await;
    assert_eq!(
        (
            changed["input_price"].as_str(),
            changed["output_price"].as_str(),
            changed["cache_read_price"].as_str()
        ),
        (Some("1.25"), Some("12"), Some("0.125"))
    );
    e.process.stop().await;
}
