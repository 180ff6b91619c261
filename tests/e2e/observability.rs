//! What an operator sees: the metrics a known set of requests leaves.
use std::time::Duration;

use aiproxy_tests::harness::eventually;
use aiproxy_tests::mock::{MockUpstream, USAGE};
use aiproxy_tests::prometheus::{Sample, parse, value};

use crate::embedded::start_with;
use crate::scheduling::plain_body;

/// Sends a plain message with `key` until it is served (the key reaches
/// the relay with a snapshot); the answer.
async fn until_served(e: &crate::embedded::Embedded, key: &str) -> aiproxy_tests::client::Reply {
    let url = format!("{}/v1/messages", e.proxy);
    eventually("the key is served", Duration::from_secs(10), async || {
        let reply = e
            .http
            .send("POST", &url, &[("x-api-key", key)], Some(&plain_body("hi")))
            .await;
        if reply.status == 200 {
            Ok(reply)
        } else {
            Err(reply.text())
        }
    })
    .await
}

async fn scrape(e: &crate::embedded::Embedded) -> (String, Vec<Sample>) {
    let reply = e
        .http
        .send(
            "GET",
            &format!("{}/metrics", e.process.url("metrics")),
            &[],
            None,
        )
        .await;
    assert_eq!(reply.status, 200);
    assert!(
        reply.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text"),
    );
    let text = reply.text();
    (text.clone(), parse(&text))
}

#[tokio::test]
async fn the_metrics_count_what_was_relayed_and_refused() {
    let mock = MockUpstream::start().await;
    let e = start_with(&[]).await;
    e.admin
        .create_account("counted", &mock.url(), "sk-ant-upstream")
        .await;
    let key = e.user_key("counted").await;
    let url = format!("{}/v1/messages", e.proxy);
    let send = async |key: &str| {
        e.http
            .send("POST", &url, &[("x-api-key", key)], Some(&plain_body("hi")))
            .await
    };
    until_served(&e, &key).await;
    let (_, before) = scrape(&e).await;
    let served = |s: &[Sample]| {
        value(
            s,
            "aiproxy_requests_total",
            &[
                ("endpoint", "/v1/messages"),
                ("platform", "anthropic"),
                ("status_class", "2xx"),
                ("error_class", ""),
            ],
        )
        .unwrap_or(0.0)
    };
    let input = |s: &[Sample]| {
        value(
            s,
            "aiproxy_tokens_total",
            &[("kind", "input"), ("model", "claude-sonnet-4-5")],
        )
        .unwrap_or(0.0)
    };
    for _ in 0..3 {
        assert_eq!(send(&key).await.status, 200);
    }
    let mut request_ids = Vec::new();
    for _ in 0..2 {
        let refused = send("sk-aiproxy-not-a-key").await;
        assert_eq!(refused.status, 401);
        request_ids.push(
            refused.headers["x-request-id"]
                .to_str()
                .unwrap()
                .to_string(),
        );
    }

    let (text, after) = scrape(&e).await;
    assert_eq!(served(&after) - served(&before), 3.0, "{text}");
    assert_eq!(
        input(&after) - input(&before),
        3.0 * USAGE.input as f64,
        "{text}"
    );
    let refused = |s: &[Sample]| {
        value(
            s,
            "aiproxy_requests_total",
            &[("status_class", "4xx"), ("error_class", "invalid_api_key")],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(refused(&after) - refused(&before), 2.0, "{text}");
    let timed = value(
        &after,
        "aiproxy_request_duration_seconds_count",
        &[("endpoint", "/v1/messages")],
    )
    .unwrap();
    assert_eq!(
        timed,
        served(&after) + refused(&after),
        "every request is timed once"
    );
    assert_eq!(
        value(
            &after,
            "aiproxy_upstream_first_byte_seconds_count",
            &[("platform", "anthropic")]
        ),
        Some(served(&after)),
        "{text}"
    );
    assert_eq!(
        value(
            &after,
            "aiproxy_accounts",
            &[("account_type", "claude-api"), ("state", "usable")]
        ),
        Some(1.0),
        "{text}"
    );
    assert!(value(&after, "aiproxy_snapshot_version", &[]).unwrap() >= 1.0);
    assert_eq!(
        value(&after, "aiproxy_leases_in_use", &[]),
        Some(0.0),
        "all given back"
    );
    assert_eq!(value(&after, "aiproxy_requests_waiting", &[]), Some(0.0));
    assert!(
        value(
            &after,
            "aiproxy_state_store_call_seconds_count",
            &[("call", "schedule")]
        )
        .unwrap()
            >= 3.0,
        "{text}"
    );
    assert_eq!(
        value(&after, "aiproxy_state_store_fallback", &[]),
        Some(0.0)
    );
    assert!(
        value(&after, "aiproxy_usage_journal_pending_bytes", &[]).is_some(),
        "{text}"
    );
    assert!(value(&after, "aiproxy_control_plane_silence_seconds", &[]).unwrap() < 60.0);
    // No label carries a key, a user or a request.
    for secret in [key.as_str(), "sk-aiproxy-not-a-key", "counted"]
        .into_iter()
        .chain(request_ids.iter().map(String::as_str))
    {
        assert!(!text.contains(secret), "the scrape names {secret}");
    }
    // The control plane's side, in the same scrape.
    let (text, cp) = eventually(
        "usage reaches the control plane",
        Duration::from_secs(10),
        async || {
            let (text, samples) = scrape(&e).await;
            let ingested = value(&samples, "aiproxy_usage_records_ingested_total", &[]);
            (ingested >= Some(served(&samples)))
                .then_some((text.clone(), samples))
                .ok_or(text)
        },
    )
    .await;
    assert!(value(&cp, "aiproxy_usage_ingestion_lag_seconds_count", &[]).unwrap() >= 3.0);
    assert_eq!(value(&cp, "aiproxy_nodes", &[]), Some(1.0), "{text}");
    assert!(value(&cp, "aiproxy_node_snapshot_version", &[]).unwrap() >= 1.0);
    assert!(value(&cp, "aiproxy_snapshot_size_bytes", &[]).unwrap() > 0.0);
    assert!(value(&cp, "aiproxy_snapshot_build_seconds_count", &[]).unwrap() >= 1.0);
    assert!(value(&cp, "aiproxy_database_connections", &[("state", "idle")]).is_some());
    assert_eq!(
        value(
            &cp,
            "aiproxy_admin_requests_total",
            &[
                ("route", "/api/v1/accounts"),
                ("method", "POST"),
                ("status_class", "2xx")
            ]
        ),
        Some(1.0),
        "{text}"
    );
    let jobs = eventually(
        "a background job runs",
        Duration::from_secs(10),
        async || {
            let (text, samples) = scrape(&e).await;
            value(
                &samples,
                "aiproxy_job_runs_total",
                &[("job", "rate_limit_recovery"), ("outcome", "ok")],
            )
            .ok_or(text)
        },
    )
    .await;
    assert!(jobs >= 1.0);

    // The metrics port serves metrics only.
    let other = e
        .http
        .send("GET", &format!("{}/", e.process.url("metrics")), &[], None)
        .await;
    assert_eq!(other.status, 404);
    e.process.stop().await;
}

/// The JSON log lines of `e`'s process so far.
fn log_lines(e: &crate::embedded::Embedded) -> Vec<serde_json::Value> {
    std::fs::read_to_string(e.data_dir().join("aiproxy.log"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test]
async fn each_request_leaves_one_access_line_and_its_warnings_name_it() {
    let mock = MockUpstream::start().await;
    let e = start_with(&[("AIPROXY_LOG_FORMAT", "json".into())]).await;
    e.admin
        .create_account_with(crate::scheduling::account(
            "broken",
            &mock,
            "mock-500",
            serde_json::json!({}),
        ))
        .await;
    let good = e
        .admin
        .create_account_with(crate::scheduling::account(
            "good",
            &mock,
            "sk-ant-good",
            serde_json::json!({}),
        ))
        .await;
    let user = e.admin.create_user("logged").await;
    let (key_id, key) = e.admin.create_key(user["id"].as_i64().unwrap(), "k").await;
    let url = format!("{}/v1/messages", e.proxy);
    let send = async |key: &str| {
        e.http
            .send("POST", &url, &[("x-api-key", key)], Some(&plain_body("hi")))
            .await
    };
    until_served(&e, &key).await;
    let mut served = Vec::new();
    for _ in 0..6 {
        let reply = send(&key).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        served.push(reply.headers["x-request-id"].to_str().unwrap().to_string());
    }
    let refused = send("sk-aiproxy-not-a-key").await;
    let refused_id = refused.headers["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();

    let lines = eventually(
        "the lines are written",
        Duration::from_secs(5),
        async || {
            let lines = log_lines(&e);
            let access = lines
                .iter()
                .filter(|l| l["target"] == "aiproxy::access")
                .count();
            (access > served.len())
                .then_some(lines)
                .ok_or(format!("{access} access lines"))
        },
    )
    .await;
    let access = |id: &str| -> Vec<&serde_json::Value> {
        lines
            .iter()
            .filter(|l| l["target"] == "aiproxy::access" && l["request_id"] == id)
            .collect()
    };
    for id in &served {
        let found = access(id);
        assert_eq!(found.len(), 1, "one line for {id}: {found:?}");
        let line = found[0];
        assert_eq!(line["status"], 200);
        assert_eq!(line["key_id"], key_id);
        assert_eq!(line["user_id"], user["id"]);
        assert_eq!(line["account_id"], good["id"]);
        assert_eq!(line["model"], "claude-sonnet-4-5");
        assert_eq!(line["input_tokens"], USAGE.input);
        assert!(
            line["duration_ms"].is_u64() && line["first_byte_ms"].is_u64(),
            "{line}"
        );
    }
    let line = access(&refused_id);
    assert_eq!(line.len(), 1);
    assert_eq!(line[0]["status"], 401);
    assert_eq!(line[0]["error_class"], "invalid_api_key");
    // Every warning about a failed-over request names it.
    let failovers: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["message"] == "upstream refused; trying another account")
        .collect();
    assert!(
        !failovers.is_empty(),
        "no request met the broken account first"
    );
    for warning in failovers {
        let id = warning["request_id"].as_str().unwrap_or_default();
        assert!(
            served.iter().any(|s| s == id) || !access(id).is_empty(),
            "a failover warning names no request: {warning}"
        );
    }

    // Switched off, requests leave no line.
    let e = e
        .restart(&[
            ("AIPROXY_LOG_FORMAT", "json".into()),
            ("AIPROXY_ACCESS_LOG", "false".into()),
        ])
        .await;
    let url = format!("{}/v1/messages", e.proxy);
    eventually(
        "served after the restart",
        Duration::from_secs(10),
        async || {
            let reply = e
                .http
                .send(
                    "POST",
                    &url,
                    &[("x-api-key", &key)],
                    Some(&plain_body("hi")),
                )
                .await;
            (reply.status == 200).then_some(()).ok_or(reply.text())
        },
    )
    .await;
    assert!(
        !log_lines(&e)
            .iter()
            .any(|l| l["target"] == "aiproxy::access"),
        "access lines with the access log off"
    );
    e.process.stop().await;
}

/// The names a scrape can have: each family's samples, by its type.
fn sample_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (family, kind) = rest.split_once(' ').unwrap();
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            _ => &[""],
        };
        for suffix in suffixes {
            names.insert(format!("{family}{suffix}"));
        }
    }
    names
}

/// Every `aiproxy_…` metric the dashboard and the alert rules query.
fn queried_names() -> std::collections::BTreeSet<String> {
    let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/observability"));
    let mut names = std::collections::BTreeSet::new();
    for file in ["grafana-dashboard.json", "alerts.yaml"] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("aiproxy_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            names.insert(name);
        }
    }
    names
}

#[tokio::test]
async fn the_dashboard_and_alerts_query_only_metrics_that_exist() {
    let mock = MockUpstream::start().await;
    let e = start_with(&[]).await;
    // A failing account tried first, so failovers are counted too.
    e.admin
        .create_account("broken", &mock.url(), "mock-500")
        .await;
    e.admin
        .create_account("one", &mock.url(), "sk-ant-one")
        .await;
    let key = e.user_key("scraped").await;
    let url = format!("{}/v1/messages", e.proxy);
    let text = eventually(
        "a request fails over",
        Duration::from_secs(20),
        async || {
            let reply = e
                .http
                .send(
                    "POST",
                    &url,
                    &[("x-api-key", &key)],
                    Some(&plain_body("hi")),
                )
                .await;
            let (text, samples) = scrape(&e).await;
            (reply.status == 200 && value(&samples, "aiproxy_failovers_total", &[]).is_some())
                .then_some(text)
                .ok_or(reply.text())
        },
    )
    .await;
    // The failing account is marked, and the gauge says so within a read.
    eventually(
        "the account shows as unavailable",
        Duration::from_secs(25),
        async || {
            let (text, samples) = scrape(&e).await;
            (value(
                &samples,
                "aiproxy_accounts",
                &[("account_type", "claude-api"), ("state", "unavailable")],
            ) == Some(1.0))
            .then_some(())
            .ok_or(text)
        },
    )
    .await;
    let exported = sample_names(&text);
    let queried = queried_names();
    assert!(queried.len() >= 15, "{queried:?}");
    let missing: Vec<&String> = queried.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "queried but never exported: {missing:?}\n{text}"
    );
    e.process.stop().await;
}

#[tokio::test]
async fn a_request_log_keeps_the_upstreams_id_and_either_id_finds_it() {
    let mock = MockUpstream::start().await;
    let e = start_with(&[]).await;
    e.admin
        .create_account("quoted", &mock.url(), "sk-ant-q")
        .await;
    let key = e.user_key("quoting").await;
    let reply = until_served(&e, &key).await;
    let ours = reply.headers["x-request-id"].to_str().unwrap().to_string();
    let row = e.admin.wait_for_log(&ours, Duration::from_secs(10)).await;
    let theirs = row["upstream_request_id"].as_str().unwrap().to_string();
    assert!(theirs.starts_with("req_mock_"), "{row}");
    for id in [&ours, &theirs] {
        let page = e
            .admin
            .expect("GET", &format!("/request-logs?request_id={id}"), None, 200)
            .await;
        assert_eq!(page["total"], 1, "{id}: {page}");
        assert_eq!(page["items"][0]["request_id"], ours.as_str());
    }
    let none = e
        .admin
        .expect("GET", "/request-logs?request_id=req_unknown", None, 200)
        .await;
    assert_eq!(none["total"], 0);
    e.process.stop().await;
}

#[tokio::test]
async fn traces_go_to_the_otlp_collector_and_continue_the_clients_trace() {
    let collector = aiproxy_tests::otlp::Collector::start().await;
    let mock = MockUpstream::start().await;
    let e = start_with(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
    ])
    .await;
    e.admin
        .create_account("traced", &mock.url(), "sk-ant-t")
        .await;
    let key = e.user_key("traced").await;
    let url = format!("{}/v1/messages", e.proxy);
    until_served(&e, &key).await;
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let reply = e
        .http
        .send(
            "POST",
            &url,
            &[
                ("x-api-key", &key),
                (
                    "traceparent",
                    &format!("00-{client_trace}-{client_span}-01"),
                ),
            ],
            Some(&plain_body("traced")),
        )
        .await;
    assert_eq!(reply.status, 200);
    let request_id = reply.headers["x-request-id"].to_str().unwrap().to_string();

    let spans = eventually("the spans arrive", Duration::from_secs(20), async || {
        let spans = collector.spans();
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        let have = |n: &str| names.contains(&n);
        (spans
            .iter()
            .any(|s| s.trace_id == client_trace && s.name == "relay")
            && have("ingest_usage")
            && have("build_snapshot")
            && have("admin"))
        .then_some(spans.clone())
        .ok_or(format!("{names:?}"))
    })
    .await;
    let relay = spans
        .iter()
        .find(|s| s.trace_id == client_trace && s.name == "relay")
        .unwrap();
    assert_eq!(
        relay.parent_span_id, client_span,
        "the client's trace goes on"
    );
    assert_eq!(relay.service, "aiproxy");
    assert_eq!(relay.attribute("request_id"), Some(request_id.as_str()));
    assert_eq!(relay.attribute("model"), Some("claude-sonnet-4-5"));
    assert_eq!(relay.attribute("status"), Some("200"));
    assert_eq!(relay.attribute("input_tokens"), Some("25"));
    assert!(relay.attribute("key_id").is_some() && relay.attribute("account_id").is_some());
    for child in ["schedule", "attempt"] {
        assert!(
            spans
                .iter()
                .any(|s| s.name == child && s.parent_span_id == relay.span_id),
            "no {child} span under the request's"
        );
    }
    let admin = spans.iter().find(|s| s.name == "admin").unwrap();
    assert!(admin.attribute("route").is_some(), "{admin:?}");
    e.process.stop().await;
}

#[tokio::test]
async fn each_node_reports_its_build_snapshot_age_load_and_backlog() {
    let e = start_with(&[]).await;
    let version = std::process::Command::new(crate::bin())
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
    let node = eventually("the node reports", Duration::from_secs(15), async || {
        let nodes = e.admin.expect("GET", "/nodes", None, 200).await;
        let node = nodes["items"][0].clone();
        (!node["report"].is_null())
            .then_some(node)
            .ok_or(nodes.to_string())
    })
    .await;
    let report = &node["report"];
    assert!(
        version.ends_with(report["build"].as_str().unwrap()),
        "{version} vs {report}"
    );
    assert!(
        report["snapshot_age_ms"].as_u64().unwrap() < 60_000,
        "{report}"
    );
    assert_eq!(report["requests_in_flight"], 0);
    assert_eq!(report["requests_waiting"], 0);
    assert!(report["journal_pending_bytes"].is_u64(), "{report}");
    assert!(node["applied_version"].as_u64().unwrap() >= 1, "{node}");
    e.process.stop().await;
}
