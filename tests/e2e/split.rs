//! The split deployment: `aiproxy controlplane` (on MariaDB when
//! `AIPROXY_TEST_MYSQL_URL` is set, else SQLite) with two `aiproxy dataplane` processes.
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aiproxy_tests::client::Http;
use aiproxy_tests::harness::{ADMIN_PASSWORD, Admin, Process, wait_ready};
use aiproxy_tests::mock::MockUpstream;
use serde_json::{Value, json};
use sqlx::Connection;

const SECRET_KEY: &str = "split-test-secret-key-0123456789abcdef";
pub(crate) const NODE_TOKEN: &str = "split-test-node-token-0123456789";
/// The management token (`aiproxy ctl`), distinct from the node token.
pub(crate) const ADMIN_TOKEN: &str = "split-test-admin-token-0123456789";

/// A database for one test run; a MySQL one is dropped afterwards.
pub(crate) struct TestDatabase {
    pub url: String,
    mysql: Option<(String, String)>,
}

impl TestDatabase {
    /// `tag` keeps the databases of tests running at once apart.
    pub async fn new(dir: &std::path::Path, tag: &str) -> TestDatabase {
        let Some(admin_url) = std::env::var("AIPROXY_TEST_MYSQL_URL")
            .ok()
            .filter(|s| !s.is_empty())
        else {
            return TestDatabase {
                url: format!("sqlite://{}", dir.join("controlplane.db").display()),
                mysql: None,
            };
        };
        let name = format!("aiproxy_e2e_{tag}_{}", std::process::id());
        let mut conn = sqlx::MySqlConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| {
                panic!("AIPROXY_TEST_MYSQL_URL is set but MySQL is unreachable: {e}")
            });
        sqlx::raw_sql(&format!(
            "DROP DATABASE IF EXISTS `{name}`; CREATE DATABASE `{name}`"
        ))
        .execute(&mut conn)
        .await
        .unwrap();
        let base = admin_url
            .rsplit_once('/')
            .map(|(b, _)| b)
            .unwrap_or(&admin_url);
        TestDatabase {
            url: format!("{base}/{name}"),
            mysql: Some((admin_url, name)),
        }
    }

    pub async fn drop(self) {
        if let Some((admin_url, name)) = self.mysql {
            let mut conn = sqlx::MySqlConnection::connect(&admin_url).await.unwrap();
            sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS `{name}`"))
                .execute(&mut conn)
                .await
                .unwrap();
        }
    }
}

pub(crate) async fn controlplane(
    db: &str,
    dir: &std::path::Path,
    grpc: &str,
    extra: &[(&str, String)],
) -> Process {
    let mut env = vec![
        ("AIPROXY_DATABASE_URL", db.to_string()),
        ("AIPROXY_DATA_DIR", dir.display().to_string()),
        ("AIPROXY_SECRET_KEY", SECRET_KEY.to_string()),
        ("AIPROXY_NODE_TOKEN", NODE_TOKEN.to_string()),
        ("AIPROXY_ADMIN_TOKEN", ADMIN_TOKEN.to_string()),
        ("AIPROXY_ADMIN_PASSWORD", ADMIN_PASSWORD.to_string()),
        ("AIPROXY_ADMIN_LISTEN", "127.0.0.1:0".to_string()),
        ("AIPROXY_GRPC_LISTEN", grpc.to_string()),
    ];
    env.extend(extra.iter().cloned());
    Process::spawn(
        &crate::bin(),
        &["controlplane"],
        &env,
        &["admin", "grpc"],
        dir.join("controlplane.log"),
    )
    .await
}

pub(crate) async fn dataplane(
    grpc: SocketAddr,
    dir: &std::path::Path,
    node_id: &str,
    token: &str,
    extra: &[(&str, String)],
) -> Process {
    let dir = dir.join(node_id);
    std::fs::create_dir_all(&dir).unwrap();
    let mut env = vec![
        ("AIPROXY_CONTROLPLANE_URL", format!("http://{grpc}")),
        ("AIPROXY_NODE_TOKEN", token.to_string()),
        ("AIPROXY_NODE_ID", node_id.to_string()),
        ("AIPROXY_DATA_DIR", dir.display().to_string()),
        ("AIPROXY_PROXY_LISTEN", "127.0.0.1:0".to_string()),
    ];
    env.extend(extra.iter().cloned());
    Process::spawn(
        &crate::bin(),
        &["dataplane"],
        &env,
        &["proxy"],
        dir.join("dataplane.log"),
    )
    .await
}

fn request() -> Value {
    json!({"model": "claude-sonnet-4-5", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]})
}

/// Polls every node until each answers `status`; returns how many answers were 200.
async fn until_all(
    http: &Http,
    nodes: &[&Process],
    key: &str,
    status: u16,
    limit: Duration,
) -> i64 {
    let started = Instant::now();
    let mut served = 0;
    for node in nodes {
        let url = format!("{}/v1/messages", node.url("proxy"));
        let left = limit.saturating_sub(started.elapsed());
        aiproxy_tests::harness::eventually(&format!("{url} answers {status}"), left, async || {
            let reply = http
                .send("POST", &url, &[("x-api-key", key)], Some(&request()))
                .await;
            served += i64::from(reply.status == 200);
            if reply.status == status {
                Ok(())
            } else {
                Err(format!("{}: {}", reply.status, reply.text()))
            }
        })
        .await;
    }
    served
}

#[tokio::test]
async fn controlplane_with_two_dataplanes() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::new(dir.path(), "split").await;
    let mock = MockUpstream::start().await;
    let http = Http::default();

    let cp = controlplane(&db.url, dir.path(), "127.0.0.1:0", &[]).await;
    let grpc = cp.addrs["grpc"];
    let dp1 = dataplane(grpc, dir.path(), "dp1", NODE_TOKEN, &[]).await;
    let dp2 = dataplane(grpc, dir.path(), "dp2", NODE_TOKEN, &[]).await;
    for dp in [&dp1, &dp2] {
        wait_ready(
            &http,
            &format!("{}/readyz", dp.url("proxy")),
            Duration::from_secs(30),
        )
        .await;
    }

    let admin = Admin::login(&http, &cp.url("admin"), "admin", ADMIN_PASSWORD).await;
    admin.create_account("a", &mock.url(), "sk-ant-split").await;
    let user = admin.create_user("frank").await;
    let (key_id, key) = admin.create_key(user["id"].as_i64().unwrap(), "k").await;

    // A key made through the API works on both nodes...
    let mut served = until_all(&http, &[&dp1, &dp2], &key, 200, Duration::from_secs(2)).await;
    for (dp, node) in [(&dp1, "dp1"), (&dp2, "dp2")] {
        let reply = http
            .send(
                "POST",
                &format!("{}/v1/messages", dp.url("proxy")),
                &[("x-api-key", &key)],
                Some(&request()),
            )
            .await;
        assert_eq!(reply.status, 200);
        served += 1;
        let row = admin
            .wait_for_log(
                reply.headers["x-request-id"].to_str().unwrap(),
                Duration::from_secs(10),
            )
            .await;
        assert_eq!(row["node_id"], node);
        assert_eq!(row["input_tokens"], aiproxy_tests::mock::USAGE.input);
    }

    // ...and once disabled, fails on both within two seconds.
    admin
        .expect(
            "PATCH",
            &format!("/api-keys/{key_id}"),
            Some(json!({"status": "disabled"})),
            200,
        )
        .await;
    served += until_all(&http, &[&dp1, &dp2], &key, 401, Duration::from_secs(2)).await;
    admin
        .expect(
            "PATCH",
            &format!("/api-keys/{key_id}"),
            Some(json!({"status": "active"})),
            200,
        )
        .await;
    served += until_all(&http, &[&dp1, &dp2], &key, 200, Duration::from_secs(2)).await;

    // A node with the wrong token gets no snapshot, so it never serves.
    let rogue = dataplane(
        grpc,
        dir.path(),
        "rogue",
        "wrong-token-0123456789abcdef",
        &[],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        http.send("GET", &format!("{}/readyz", rogue.url("proxy")), &[], None)
            .await
            .status,
        503
    );
    rogue.kill().await;

    // The control plane goes away: nodes keep serving from their snapshot
    // and spool the usage, which arrives once it is back.
    cp.kill().await;
    let reply = http
        .send(
            "POST",
            &format!("{}/v1/messages", dp1.url("proxy")),
            &[("x-api-key", &key)],
            Some(&request()),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    served += 1;
    let served_while_down = reply.headers["x-request-id"].to_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let cp = controlplane(&db.url, dir.path(), &grpc.to_string(), &[]).await;
    let admin = Admin::login(&http, &cp.url("admin"), "admin", ADMIN_PASSWORD).await;
    let row = admin
        .wait_for_log(&served_while_down, Duration::from_secs(20))
        .await;
    assert_eq!(row["node_id"], "dp1");
    // dp2's journal replays on its own retry schedule, up to its backoff
    // after dp1's: wait for every request, then make sure none counts twice.
    let count = async || {
        admin
            .expect("GET", &format!("/api-keys/{key_id}"), None, 200)
            .await["request_count"]
            .as_i64()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while count().await < served && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        count().await,
        served,
        "every served request billed exactly once"
    );

    dp1.stop().await;
    dp2.stop().await;
    cp.stop().await;
    db.drop().await;
}

#[tokio::test]
async fn split_planes_refuse_to_start_without_shared_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(crate::bin())
        .arg("controlplane")
        .env_remove("AIPROXY_SECRET_KEY")
        .env("AIPROXY_DATA_DIR", dir.path())
        .env("AIPROXY_NODE_TOKEN", NODE_TOKEN)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("AIPROXY_SECRET_KEY is not set"));
    let out = tokio::process::Command::new(crate::bin())
        .arg("dataplane")
        .env("AIPROXY_DATA_DIR", dir.path())
        .env("AIPROXY_NODE_TOKEN", NODE_TOKEN)
        .env_remove("AIPROXY_CONTROLPLANE_URL")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("AIPROXY_CONTROLPLANE_URL"));
}

fn tls_fixture(name: &str) -> String {
    format!(
        "{}/tests/fixtures/grpc-tls/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[tokio::test]
async fn the_grpc_link_runs_over_tls_and_refuses_what_it_cannot_verify() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::new(dir.path(), "tls").await;
    let http = Http::default();
    let cp = controlplane(
        &db.url,
        dir.path(),
        "127.0.0.1:0",
        &[
            ("AIPROXY_GRPC_TLS_CERT", tls_fixture("server.pem")),
            ("AIPROXY_GRPC_TLS_KEY", tls_fixture("server.key")),
        ],
    )
    .await;
    let port = cp.addrs["grpc"].port();
    let https = format!("https://localhost:{port}");

    // A node that trusts the private CA gets its snapshot over TLS.
    let trusting = dataplane(
        cp.addrs["grpc"],
        dir.path(),
        "trusting",
        NODE_TOKEN,
        &[
            ("AIPROXY_CONTROLPLANE_URL", https.clone()),
            ("AIPROXY_GRPC_CA", tls_fixture("ca.pem")),
        ],
    )
    .await;
    wait_ready(
        &http,
        &format!("{}/readyz", trusting.url("proxy")),
        Duration::from_secs(30),
    )
    .await;

    // Nodes that cannot verify the certificate, or speak plain gRPC to the
    // TLS port, never get a snapshot.
    let untrusting = dataplane(
        cp.addrs["grpc"],
        dir.path(),
        "untrusting",
        NODE_TOKEN,
        &[("AIPROXY_CONTROLPLANE_URL", https.clone())],
    )
    .await;
    let plain = dataplane(cp.addrs["grpc"], dir.path(), "plain", NODE_TOKEN, &[]).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for node in [&untrusting, &plain] {
        let status = http
            .send("GET", &format!("{}/readyz", node.url("proxy")), &[], None)
            .await
            .status;
        assert_eq!(status, 503);
    }

    // `aiproxy ctl` reaches the control plane the same way.
    let out = tokio::process::Command::new(crate::bin())
        .args(["ctl", "--json", "nodes"])
        .env("AIPROXY_DATA_DIR", dir.path())
        .env("AIPROXY_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("AIPROXY_CONTROLPLANE_URL", &https)
        .env("AIPROXY_GRPC_CA", tls_fixture("ca.pem"))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let nodes: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<&str> = nodes["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["node_id"].as_str())
        .collect();
    assert_eq!(ids, ["trusting"], "{nodes}");

    for node in [trusting, untrusting, plain] {
        node.kill().await;
    }
    cp.stop().await;
    db.drop().await;

    // Half a TLS setup, or TLS on the all-in-one, is refused at start.
    for (command, env) in [
        (
            &["controlplane"][..],
            vec![("AIPROXY_GRPC_TLS_CERT", tls_fixture("server.pem"))],
        ),
        (
            &[][..],
            vec![
                ("AIPROXY_GRPC_TLS_CERT", tls_fixture("server.pem")),
                ("AIPROXY_GRPC_TLS_KEY", tls_fixture("server.key")),
            ],
        ),
    ] {
        let out = tokio::process::Command::new(crate::bin())
            .args(command)
            .env("AIPROXY_DATA_DIR", dir.path())
            .envs(env)
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{command:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("AIPROXY_GRPC_TLS_CERT"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Rotating the node token without a stop: the control plane admits the new
/// token and the previous one, so nodes move over one by one; any other
/// token still gets nothing.
#[tokio::test]
async fn a_node_token_rotates_with_both_tokens_admitted_meanwhile() {
    const NEW_TOKEN: &str = "split-test-node-token-rotated-987";
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::new(dir.path(), "rotate").await;
    let http = Http::default();
    let cp = controlplane(
        &db.url,
        dir.path(),
        "127.0.0.1:0",
        &[
            ("AIPROXY_NODE_TOKEN", NEW_TOKEN.to_string()),
            ("AIPROXY_NODE_TOKEN_PREVIOUS", NODE_TOKEN.to_string()),
        ],
    )
    .await;
    let grpc = cp.addrs["grpc"];
    let moved = dataplane(grpc, dir.path(), "moved", NEW_TOKEN, &[]).await;
    let waiting = dataplane(grpc, dir.path(), "waiting", NODE_TOKEN, &[]).await;
    for dp in [&moved, &waiting] {
        wait_ready(
            &http,
            &format!("{}/readyz", dp.url("proxy")),
            Duration::from_secs(30),
        )
        .await;
    }
    let rogue = dataplane(grpc, dir.path(), "rogue", "neither-token-0123456789", &[]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        http.send("GET", &format!("{}/readyz", rogue.url("proxy")), &[], None)
            .await
            .status,
        503
    );
    for dp in [moved, waiting, rogue] {
        dp.kill().await;
    }
    cp.stop().await;
    db.drop().await;
}
