//! The loss test: under load through two data planes, the control plane is
//! killed and restarted, then one data plane; every request a client was
//! served appears in `request_logs` exactly once, and the books balance.
//! On MariaDB when `AIPROXY_TEST_MYSQL_URL` is set, else SQLite.
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use aiproxy_tests::client::Http;
use aiproxy_tests::harness::{ADMIN_PASSWORD, Admin, wait_ready};
use aiproxy_tests::mock::MockUpstream;
use serde_json::json;

use crate::scheduling::{account, plain_body};
use crate::split::{ADMIN_TOKEN, NODE_TOKEN, TestDatabase, controlplane, dataplane};

const WORKERS: usize = 4;

/// Every request id in `request_logs`, through the admin API.
async fn logged_ids(admin: &Admin) -> Vec<String> {
    let mut ids = Vec::new();
    for page in 1.. {
        let logs = admin
            .expect(
                "GET",
                &format!("/request-logs?page_size=500&page={page}"),
                None,
                200,
            )
            .await;
        let items = logs["items"].as_array().unwrap();
        if items.is_empty() {
            return ids;
        }
        ids.extend(
            items
                .iter()
                .map(|r| r["request_id"].as_str().unwrap().to_string()),
        );
    }
    ids
}

#[tokio::test]
async fn nothing_served_is_lost_when_planes_die_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::new(dir.path(), "loss").await;
    let mock = MockUpstream::start().await;
    let http = Http::default();
    let cp = controlplane(&db.url, dir.path(), "127.0.0.1:0", &[]).await;
    let grpc = cp.addrs["grpc"];
    let dp1 = dataplane(grpc, dir.path(), "dp1", NODE_TOKEN, &[]).await;
    let dp2 = dataplane(grpc, dir.path(), "dp2", NODE_TOKEN, &[]).await;
    let admin = Admin::login(&http, &cp.url("admin"), "admin", ADMIN_PASSWORD).await;
    admin
        .create_account_with(account("steady", &mock, "steady", json!({})))
        .await;
    let user = admin.create_user("loaded").await;
    let user_id = user["id"].as_i64().unwrap();
    admin
        .expect(
            "POST",
            &format!("/users/{user_id}/packages"),
            Some(json!({"name": "plenty", "type": "quota", "quota_total": "1000"})),
            201,
        )
        .await;
    let (_, key) = admin.create_key(user_id, "load").await;
    let urls = Arc::new(RwLock::new(vec![
        format!("{}/v1/messages", dp1.url("proxy")),
        format!("{}/v1/messages", dp2.url("proxy")),
    ]));
    let start_urls = urls.read().unwrap().clone();
    for url in &start_urls {
        let deadline = Instant::now() + Duration::from_secs(10);
        while http
            .send(
                "POST",
                url,
                &[("x-api-key", &key)],
                Some(&plain_body("ready")),
            )
            .await
            .status
            != 200
        {
            assert!(Instant::now() < deadline, "{url} never served");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // Load: every 200 a client got, by request id.
    let served = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..WORKERS {
        let (http, urls, served, stop, key) = (
            http.clone(),
            urls.clone(),
            served.clone(),
            stop.clone(),
            key.clone(),
        );
        workers.spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let url = urls.read().unwrap()[(w + i) % 2].clone();
                let reply = http
                    .try_send(
                        "POST",
                        &url,
                        &[("x-api-key", &key)],
                        Some(&plain_body(&format!("{w}-{i}"))),
                    )
                    .await;
                if let Some(reply) = reply.ok().filter(|r| r.status == 200) {
                    let id = reply.headers["x-request-id"].to_str().unwrap().to_string();
                    served.lock().unwrap().push(id);
                } else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        });
    }
    let count = || served.lock().unwrap().len();
    let until = |n: usize| {
        let served = served.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while served.lock().unwrap().len() < n {
                assert!(Instant::now() < deadline, "load stalled below {n}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };

    until(100).await;
    // The control plane dies; nodes keep serving and journal the usage.
    cp.kill().await;
    let at_kill = count();
    until(at_kill + 100).await;
    // Long enough for several usage batches to fail and stay journaled.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let cp = controlplane(&db.url, dir.path(), &grpc.to_string(), &[]).await;
    until(count() + 100).await;
    // A data plane dies mid-traffic and comes back with its journal.
    // Killed less than a batch interval after its last requests: those are
    // only in its journal.
    dp1.kill().await;
    until(count() + 100).await;
    let dp1 = dataplane(grpc, dir.path(), "dp1", NODE_TOKEN, &[]).await;
    wait_ready(
        &http,
        &format!("{}/readyz", dp1.url("proxy")),
        Duration::from_secs(30),
    )
    .await;
    urls.write().unwrap()[0] = format!("{}/v1/messages", dp1.url("proxy"));
    until(count() + 100).await;
    stop.store(true, Ordering::Relaxed);
    while let Some(done) = workers.join_next().await {
        done.unwrap();
    }
    let served: Vec<String> = served.lock().unwrap().clone();
    assert!(served.len() >= 500, "{} served", served.len());

    // Every served request is billed exactly once (request_id is unique, so
    // "once" is "present"), and nothing else slipped in.
    let admin = Admin::login(&http, &cp.url("admin"), "admin", ADMIN_PASSWORD).await;
    let wanted: HashSet<&String> = served.iter().collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let logged = loop {
        let ids = logged_ids(&admin).await;
        let have: HashSet<&String> = ids.iter().collect();
        if wanted.iter().all(|id| have.contains(id)) {
            break ids;
        }
        let missing = wanted.iter().filter(|id| !have.contains(*id)).count();
        assert!(
            Instant::now() < deadline,
            "{missing} of {} served requests never reached request_logs",
            served.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "loss test: {} served, {} logged, control plane killed after {at_kill}",
        served.len(),
        logged.len()
    );
    let distinct: HashSet<&String> = logged.iter().collect();
    assert_eq!(distinct.len(), logged.len(), "a request logged twice");
    // The warm-ups, plus requests a node finished as it was killed.
    assert!(
        logged.len() <= served.len() + 2 + WORKERS,
        "{} logged for {} served",
        logged.len(),
        served.len()
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let report = admin.expect("GET", "/usage/consistency", None, 200).await;
        if report["clean"] == true {
            assert!(report["request_logs"].as_u64().unwrap() >= served.len() as u64);
            break;
        }
        assert!(Instant::now() < deadline, "books never balanced: {report}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The same check from the command line.
    let ctl = tokio::process::Command::new(crate::bin())
        .args(["ctl", "consistency", "--json"])
        .env("AIPROXY_CONTROLPLANE_URL", format!("http://{grpc}"))
        .env("AIPROXY_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .await
        .unwrap();
    assert!(
        ctl.status.success(),
        "{}",
        String::from_utf8_lossy(&ctl.stderr)
    );
    let out: serde_json::Value = serde_json::from_slice(&ctl.stdout).unwrap();
    assert_eq!(out["clean"], true);
    assert!(out["request_logs"].as_u64().unwrap() >= served.len() as u64);
    let refused = tokio::process::Command::new(crate::bin())
        .args(["ctl", "consistency"])
        .env("AIPROXY_CONTROLPLANE_URL", format!("http://{grpc}"))
        .env("AIPROXY_ADMIN_TOKEN", NODE_TOKEN)
        .output()
        .await
        .unwrap();
    assert!(
        !refused.status.success(),
        "a node token grants no management"
    );
    dp1.stop().await;
    dp2.stop().await;
    cp.stop().await;
    db.drop().await;
}

/// A data plane killed with SIGKILL while the control plane is away, and
/// replaced by a node of another name on the same spool volume (a pod
/// rescheduled under a new name): every request it served is billed, under
/// the name of the node that served it.
#[tokio::test]
async fn a_killed_node_s_usage_is_replayed_by_its_differently_named_replacement() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::new(dir.path(), "adopt").await;
    let mock = MockUpstream::start().await;
    let http = Http::default();
    let cp = controlplane(&db.url, dir.path(), "127.0.0.1:0", &[]).await;
    let grpc = cp.addrs["grpc"];
    let volume = dir.path().join("volume");
    let on_volume = [("AIPROXY_DATA_DIR", volume.display().to_string())];
    let old = dataplane(grpc, dir.path(), "dp-7f9c", NODE_TOKEN, &on_volume).await;
    let admin = Admin::login(&http, &cp.url("admin"), "admin", ADMIN_PASSWORD).await;
    admin
        .create_account_with(account("steady", &mock, "steady", json!({})))
        .await;
    let user = admin.create_user("moved").await;
    let (_, key) = admin.create_key(user["id"].as_i64().unwrap(), "k").await;
    let url = format!("{}/v1/messages", old.url("proxy"));
    let send = |text: String| {
        let (http, url, key) = (http.clone(), url.clone(), key.clone());
        async move {
            http.send(
                "POST",
                &url,
                &[("x-api-key", &key)],
                Some(&plain_body(&text)),
            )
            .await
        }
    };
    aiproxy_tests::harness::eventually("the node serves", Duration::from_secs(10), async || {
        let reply = send("ready".into()).await;
        (reply.status == 200)
            .then_some(())
            .ok_or(format!("{}", reply.status))
    })
    .await;

    // With the control plane gone, what the node serves stays in its journal.
    cp.kill().await;
    let mut served = Vec::new();
    for i in 0..20 {
        let reply = send(format!("journaled {i}")).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        served.push(reply.headers["x-request-id"].to_str().unwrap().to_string());
    }
    old.kill().await;

    let cp = controlplane(&db.url, dir.path(), &grpc.to_string(), &[]).await;
    let new = dataplane(grpc, dir.path(), "dp-2b41", NODE_TOKEN, &on_volume).await;
    let admin = Admin::login(&http, &cp.url("admin"), "admin", ADMIN_PASSWORD).await;
    for id in &served {
        let row = admin.wait_for_log(id, Duration::from_secs(30)).await;
        assert_eq!(
            row["node_id"], "dp-7f9c",
            "billed to the node that served it"
        );
    }
    new.stop().await;
    cp.stop().await;
    db.drop().await;
}
