//! Hostile input, bad values and broken disks, against the real binary:
//! each test is a fault that once took something down or lost usage.
use std::time::{Duration, Instant};

use aiproxy_tests::harness::Admin;
use aiproxy_tests::mock::MockUpstream;
use serde_json::{Value, json};
use sqlx::Connection;

use crate::embedded::{Embedded, start, start_with};
use crate::scheduling::plain_body;

/// The all-in-one's SQLite database, opened beside the running process.
async fn database(e: &Embedded) -> sqlx::SqliteConnection {
    let url = format!("sqlite://{}", e.data_dir().join("aiproxy.db").display());
    sqlx::SqliteConnection::connect(&url).await.unwrap()
}

/// Makes the control plane rebuild and publish the snapshot after a change
/// written straight into the database.
async fn bump(db: &mut sqlx::SqliteConnection) {
    sqlx::query("UPDATE snapshot_version SET version = version + 1 WHERE id = 1")
        .execute(&mut *db)
        .await
        .unwrap();
}

/// Posts `body` with `key` until the answer is `status` (the relay applies
/// changes asynchronously), for at most ten seconds.
async fn until_status(e: &Embedded, key: &str, status: u16) -> aiproxy_tests::client::Reply {
    let url = format!("{}/v1/messages", e.proxy);
    crate::embedded::wait_for_status_within(
        &e.http,
        &url,
        &[("x-api-key", key)],
        &plain_body("hi"),
        status,
        Duration::from_secs(10),
    )
    .await
}

async fn user_with_key(admin: &Admin, name: &str) -> (i64, i64, String) {
    let user = admin.create_user(name).await;
    let user_id = user["id"].as_i64().unwrap();
    let (key_id, key) = admin.create_key(user_id, name).await;
    (user_id, key_id, key)
}

#[tokio::test]
async fn one_unusable_row_never_stops_the_fleet() {
    let mock = MockUpstream::start().await;
    let e = start().await;
    // The API names the field and keeps the value out of its answer.
    for (field, value) in [
        ("api_key", "sk-ant-pasted\nwith-a-newline"),
        ("api_key", "sk-ant-\u{2014}smart-dash"),
    ] {
        let reply = e
            .admin
            .call(
                "POST",
                "/accounts",
                Some(
                    json!({"name": "bad", "type": "claude-api", "base_url": mock.url(),
                    "credentials": {field: value}}),
                ),
            )
            .await;
        assert_eq!(reply.status, 400, "{}", reply.text());
        let message = reply.json()["error"].to_string();
        assert!(message.contains("credentials.api_key"), "{message}");
        assert!(
            !message.contains("pasted") && !message.contains("smart"),
            "{message}"
        );
    }
    let good = e
        .admin
        .create_account("good", &mock.url(), "sk-ant-good")
        .await;
    let odd = e
        .admin
        .create_account("odd", &mock.url(), "sk-ant-odd")
        .await;
    let (_, first_id, first) = user_with_key(&e.admin, "first").await;
    until_status(&e, &first, 200).await;

    // A credential with a newline lands in the database behind the API's
    // back (an old version, a restore, a hand edit).
    let mut db = database(&e).await;
    let secret = std::fs::read_to_string(e.data_dir().join("secret.key")).unwrap();
    let sealer = aiproxy_controlplane::crypto::Sealer::new(secret.trim());
    let sealed = sealer.seal(br#"{"api_key":"sk-ant-odd\nsecond-line"}"#);
    sqlx::query("UPDATE accounts SET credentials = ? WHERE id = ?")
        .bind(&sealed)
        .bind(odd["id"].as_i64().unwrap())
        .execute(&mut db)
        .await
        .unwrap();
    bump(&mut db).await;

    // Snapshots keep flowing: a new key works, a disabled one stops.
    let (_, _, second) = user_with_key(&e.admin, "second").await;
    until_status(&e, &second, 200).await;
    e.admin
        .expect(
            "PATCH",
            &format!("/api-keys/{first_id}"),
            Some(json!({"status": "disabled"})),
            200,
        )
        .await;
    until_status(&e, &first, 401).await;
    // Every request went to the good account; the odd one says why it is out.
    let accounts = e.admin.expect("GET", "/accounts", None, 200).await;
    let row = |id: &Value| {
        accounts["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| &a["id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(row(&good["id"])["publish_error"], Value::Null);
    let problem = row(&odd["id"])["publish_error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(problem.contains("credentials.api_key"), "{problem}");
    assert!(
        mock.received()
            .iter()
            .all(|r| r.headers.get("x-api-key").map(String::as_str) == Some("sk-ant-good")),
        "the odd account was never called"
    );

    // A row the node itself cannot read (a client filter edited by hand)
    // is fenced off alone and reported by the node.
    let (_, third_id, third) = user_with_key(&e.admin, "third").await;
    until_status(&e, &third, 200).await;
    sqlx::query("UPDATE api_keys SET client_filter = 'loose' WHERE id = ?")
        .bind(third_id)
        .execute(&mut db)
        .await
        .unwrap();
    bump(&mut db).await;
    let refused = until_status(&e, &third, 403).await;
    assert!(
        refused.text().contains("client not allowed"),
        "{}",
        refused.text()
    );
    until_status(&e, &second, 200).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let nodes = e.admin.expect("GET", "/nodes", None, 200).await;
        let dropped = nodes["items"][0]["dropped"].to_string();
        if dropped.contains(&format!("api key {third_id}")) {
            assert!(dropped.contains("loose"), "{dropped}");
            break;
        }
        assert!(Instant::now() < deadline, "never reported: {nodes}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = e.process.log_text();
    assert!(!log.contains("second-line"), "a credential reached the log");
    e.process.stop().await;
}

#[tokio::test]
async fn a_non_ascii_credential_is_masked_by_characters_and_never_logged() {
    let mock = MockUpstream::start().await;
    let e = start().await;
    let secret = "ключ-к-апи-который-длинный-и-секретный";
    let account = e
        .admin
        .create_account_with(
            json!({"name": "cyrillic", "type": "claude-api", "base_url": mock.url(),
            "credentials": {"api_key": "sk-ant-plain", "note": secret}}),
        )
        .await;
    assert_eq!(account["credentials"]["note"], "••••тный");
    let listed = e.admin.expect("GET", "/accounts", None, 200).await;
    assert_eq!(listed["items"][0]["credentials"]["note"], "••••тный");
    assert!(!listed.to_string().contains("секрет"));
    assert!(!e.process.log_text().contains("секрет"));
    e.process.stop().await;
}

/// Keys under `prefix` in the Redis at `url`, by a plain RESP `KEYS` call.
async fn redis_keys(url: &str, prefix: &str) -> usize {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let addr = url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let pattern = format!("{prefix}*");
    let command = format!("*2\r\n$4\r\nKEYS\r\n${}\r\n{pattern}\r\n", pattern.len());
    conn.write_all(command.as_bytes()).await.unwrap();
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    reader.read_line(&mut line).await.unwrap();
    line.trim()
        .strip_prefix('*')
        .unwrap_or_else(|| panic!("unexpected Redis reply {line:?}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn the_all_in_one_runs_on_redis() {
    let Some(redis) = std::env::var("AIPROXY_TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        eprintln!("AIPROXY_TEST_REDIS_URL is not set: the all-in-one on Redis is not tested");
        return;
    };
    let namespace = format!("aiproxy-e2e-aio-{}", std::process::id());
    let mock = MockUpstream::start().await;
    let e = start_with(&[
        ("AIPROXY_REDIS_URL", redis.clone()),
        ("AIPROXY_REDIS_NAMESPACE", namespace.clone()),
    ])
    .await;
    e.admin.create_account("one", &mock.url(), "sk-ant-1").await;
    let (_, _, key) = user_with_key(&e.admin, "redis-user").await;
    until_status(&e, &key, 200).await;
    // A session binding is written where every node would see it.
    let body = crate::scheduling::claude_code_body(
        &crate::scheduling::claude_code_user_id("5d0e7f0a-2d7b-4b0e-9d55-1f0e6a3b9c21"),
        "hello",
    );
    let reply = e
        .http
        .send(
            "POST",
            &format!("{}/v1/messages", e.proxy),
            &[("x-api-key", &key)],
            Some(&body),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis_keys(&redis, &namespace).await == 0 {
        assert!(Instant::now() < deadline, "nothing was written to Redis");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    e.process.stop().await;
}

#[cfg(unix)]
#[tokio::test]
async fn the_data_directory_and_what_it_holds_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let mock = MockUpstream::start().await;
    let e = start().await;
    e.admin.create_account("one", &mock.url(), "sk-ant-1").await;
    let (user_id, _, key) = user_with_key(&e.admin, "private").await;
    until_status(&e, &key, 200).await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = e.data_dir();
    assert_eq!(mode(dir), 0o700);
    assert_eq!(mode(&dir.join("spool")), 0o700);
    for file in ["aiproxy.db", "secret.key"] {
        assert_eq!(mode(&dir.join(file)), 0o600, "{file}");
    }
    for entry in std::fs::read_dir(dir.join("spool")).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
    // An operator-supplied key is listed with no more than a generated one shows.
    let created = e
        .admin
        .expect(
            "POST",
            "/api-keys",
            Some(json!({"user_id": user_id, "name": "own", "key": "operator-chosen-secret-0001"})),
            201,
        )
        .await;
    assert_eq!(created["key_prefix"], "oper");
    let listed = e.admin.expect("GET", "/api-keys", None, 200).await;
    assert!(!listed.to_string().contains("operator-chosen"));
    e.process.stop().await;
}

/// A tmpfs of `size` mounted on `dir` for the test's life (root only).
struct SmallDisk {
    dir: std::path::PathBuf,
}

impl SmallDisk {
    /// `None` when this process may not mount (not root): said, not failed.
    fn mount(dir: &std::path::Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(dir).unwrap();
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status();
        match status {
            Ok(s) if s.success() => Some(SmallDisk {
                dir: dir.to_path_buf(),
            }),
            _ if !running_as_root() => {
                eprintln!(
                    "not root: cannot mount a small filesystem; the full-disk test does not run"
                );
                None
            }
            other => panic!("mount tmpfs on {}: {other:?}", dir.display()),
        }
    }

    /// Writes a file until the filesystem is full.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.dir.join("filler")).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }

    fn free(&self) {
        std::fs::remove_file(self.dir.join("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

#[tokio::test]
async fn a_full_disk_stops_serving_until_usage_can_be_kept_and_loses_nothing() {
    use crate::split::{NODE_TOKEN, TestDatabase, controlplane, dataplane};
    use aiproxy_tests::harness::{ADMIN_PASSWORD, wait_ready};

    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::mount(&dir.path().join("dp1").join("spool"), "256k") else {
        return;
    };
    let db = TestDatabase::new(dir.path(), "fulldisk").await;
    let mock = MockUpstream::start().await;
    let http = aiproxy_tests::client::Http::default();
    let cp = controlplane(&db.url, dir.path(), "127.0.0.1:0", &[]).await;
    let grpc = cp.addrs["grpc"];
    let dp = dataplane(grpc, dir.path(), "dp1", NODE_TOKEN, &[]).await;
    wait_ready(
        &http,
        &format!("{}/readyz", dp.url("proxy")),
        Duration::from_secs(30),
    )
    .await;
    let admin = Admin::login(&http, &cp.url("admin"), "admin", ADMIN_PASSWORD).await;
    admin.create_account("one", &mock.url(), "sk-ant-1").await;
    let (_, _, key) = user_with_key(&admin, "disk").await;
    let url = format!("{}/v1/messages", dp.url("proxy"));
    let send = || {
        let (http, url, key) = (http.clone(), url.clone(), key.clone());
        async move {
            http.send(
                "POST",
                &url,
                &[("x-api-key", &key), ("anthropic-version", "2023-06-01")],
                Some(&plain_body("hi")),
            )
            .await
        }
    };
    let mut served = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = send().await;
        if reply.status == 200 {
            served.push(reply.headers["x-request-id"].to_str().unwrap().to_string());
            break;
        }
        assert!(Instant::now() < deadline, "never served: {}", reply.text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The control plane goes away: usage can only be kept on disk.
    cp.kill().await;
    for _ in 0..10 {
        let reply = send().await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        served.push(reply.headers["x-request-id"].to_str().unwrap().to_string());
    }
    disk.fill();
    // Records still fit in the journal's last page, then the disk refuses a
    // write: from then on requests are refused in the caller's shape.
    let mut refused = 0;
    for _ in 0..100 {
        let reply = send().await;
        match reply.status {
            200 if refused == 0 => {
                served.push(reply.headers["x-request-id"].to_str().unwrap().to_string())
            }
            503 => {
                let body = reply.json();
                assert_eq!(body["type"], "error", "{body}");
                assert_eq!(body["error"]["type"], "overloaded_error", "{body}");
                let message = body["error"]["message"].as_str().unwrap();
                assert!(
                    message.starts_with("usage journal unavailable"),
                    "{message}"
                );
                refused += 1;
                if refused == 5 {
                    break;
                }
            }
            other => panic!(
                "unexpected {other} after {refused} refusals: {}",
                reply.text()
            ),
        }
    }
    assert_eq!(refused, 5, "a full disk never stopped serving");
    // The load balancer is told too.
    let ready = http
        .send("GET", &format!("{}/readyz", dp.url("proxy")), &[], None)
        .await;
    assert_eq!(ready.status, 503);
    assert!(
        ready.text().contains("usage journal unavailable"),
        "{}",
        ready.text()
    );

    // Room again: serving resumes by itself.
    disk.free();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let reply = send().await;
        if reply.status == 200 {
            served.push(reply.headers["x-request-id"].to_str().unwrap().to_string());
            break;
        }
        assert_eq!(reply.status, 503, "{}", reply.text());
        assert!(Instant::now() < deadline, "serving never resumed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The control plane returns; every request a client was served is billed.
    let cp = controlplane(&db.url, dir.path(), &grpc.to_string(), &[]).await;
    let admin = Admin::login(&http, &cp.url("admin"), "admin", ADMIN_PASSWORD).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let logs = admin
            .expect("GET", "/request-logs?page_size=500", None, 200)
            .await;
        let logged: Vec<&str> = logs["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["request_id"].as_str())
            .collect();
        let missing: Vec<&String> = served
            .iter()
            .filter(|id| !logged.contains(&id.as_str()))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} served requests never billed: {missing:?}\n{}",
            missing.len(),
            served.len(),
            dp.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    dp.stop().await;
    cp.stop().await;
    db.drop().await;
    drop(disk);
}

/// Peak resident memory of a process, in MiB (`VmHWM`).
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024
}

/// Reads until the peer closes; `None` if it is still open after `within`.
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok().map(|_| got)
}

/// `/healthz`'s status, or 0 when the node does not answer within two
/// seconds (a stalled accept loop must fail a test, not hang it).
async fn healthz(http: &aiproxy_tests::client::Http, base: &str) -> u16 {
    let url = format!("{base}/healthz");
    let asked = http.try_send("GET", &url, &[], None);
    match tokio::time::timeout(Duration::from_secs(2), asked).await {
        Ok(Ok(reply)) => reply.status,
        _ => 0,
    }
}

/// Opens `n` connections at once, then sorts them: refused (the peer
/// answered and closed within `within`, or refused the connection) or
/// held. A connection that cannot even be opened within two seconds (the
/// node's accept queue is full: it stalls) fails the test.
async fn open_many(
    addr: std::net::SocketAddr,
    n: usize,
    within: Duration,
) -> (Vec<tokio::net::TcpStream>, Vec<Vec<u8>>) {
    let mut opened = Vec::new();
    let mut refused = Vec::new();
    for i in 0..n {
        let connect = tokio::net::TcpStream::connect(addr);
        match tokio::time::timeout(Duration::from_secs(2), connect).await {
            Ok(Ok(c)) => opened.push(c),
            Ok(Err(_)) => refused.push(Vec::new()),
            Err(_) => panic!("connection {i} stalled: the node stopped accepting"),
        }
    }
    let checks = opened.into_iter().map(|mut c| async move {
        let answer = closed_within(&mut c, within).await;
        (c, answer)
    });
    let mut held = Vec::new();
    for (c, answer) in futures_join_all(checks).await {
        match answer {
            Some(answer) => refused.push(answer),
            None => held.push(c),
        }
    }
    (held, refused)
}

/// Runs the futures side by side and collects their outputs in order.
async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn slow_idle_and_surplus_connections_are_closed_on_both_ports() {
    use tokio::io::AsyncWriteExt;
    let e = start_with(&[
        ("AIPROXY_HEADER_READ_TIMEOUT", "1".into()),
        ("AIPROXY_KEEPALIVE_TIMEOUT", "2".into()),
        ("AIPROXY_MAX_CONNECTIONS", "16".into()),
    ])
    .await;
    for port in ["proxy", "admin"] {
        let addr = e.process.addrs[port];
        // Headers that never finish: closed once the header deadline passes.
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        assert!(
            closed_within(&mut slow, Duration::from_secs(10))
                .await
                .is_some(),
            "{port}: half-sent headers kept the connection open"
        );
        // A kept-alive connection with nothing more to ask: closed when idle.
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let answer = closed_within(&mut idle, Duration::from_secs(15))
            .await
            .unwrap_or_else(|| panic!("{port}: an idle connection stayed open"));
        assert!(answer.starts_with(b"HTTP/1.1 "), "{port}: {answer:?}");
    }
    // The proxy port holds 16 connections; the rest are refused at once.
    let (held, refused) = open_many(e.process.addrs["proxy"], 40, Duration::from_millis(500)).await;
    assert!(held.len() <= 16, "{} connections held", held.len());
    assert!(refused.len() >= 24, "{} refused", refused.len());
    for answer in &refused {
        let text = String::from_utf8_lossy(answer);
        assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    }
    // Once they go idle and are closed, the port serves again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    while healthz(&e.http, &e.proxy).await != 200 {
        assert!(Instant::now() < deadline, "the proxy port never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    e.process.stop().await;
}

#[tokio::test]
async fn a_connection_flood_under_a_low_file_limit_is_refused_not_stalled() {
    use aiproxy_tests::harness::{ADMIN_PASSWORD, Process, wait_ready};
    if std::process::Command::new("prlimit")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("prlimit is missing (util-linux): the file-limit test does not run");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("AIPROXY_DATA_DIR", dir.path().display().to_string()),
        ("AIPROXY_ADMIN_PASSWORD", ADMIN_PASSWORD.to_string()),
        ("AIPROXY_PROXY_LISTEN", "127.0.0.1:0".to_string()),
        ("AIPROXY_ADMIN_LISTEN", "127.0.0.1:0".to_string()),
        ("AIPROXY_GRPC_LISTEN", "127.0.0.1:0".to_string()),
        ("AIPROXY_KEEPALIVE_TIMEOUT", "2".to_string()),
    ];
    let bin = crate::bin().display().to_string();
    let process = Process::spawn(
        std::path::Path::new("prlimit"),
        &["--nofile=256:256", &bin],
        &env,
        &["admin", "grpc", "proxy"],
        dir.path().join("aiproxy.log"),
    )
    .await;
    let http = aiproxy_tests::client::Http::default();
    let proxy = process.url("proxy");
    wait_ready(&http, &format!("{proxy}/readyz"), Duration::from_secs(30)).await;
    // Far more connections than descriptors: each is held or refused
    // promptly, none left hanging.
    let (held, refused) = open_many(process.addrs["proxy"], 400, Duration::from_millis(500)).await;
    let refused = refused.len();
    assert!(refused > 0, "nothing refused with 256 descriptors");
    assert!(held.len() < 256, "{} held", held.len());
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(15);
    while healthz(&http, &proxy).await != 200 {
        assert!(Instant::now() < deadline, "the node never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = process.log_text();
    let spins = log.matches("Too many open files").count();
    assert!(spins < 5, "accept failed {spins} times:\n{log}");
    process.stop().await;
}

#[tokio::test]
async fn bodies_refused_by_their_key_are_never_read() {
    let mock = MockUpstream::start().await;
    let e = start_with(&[(
        "AIPROXY_MAX_BODY_BYTES_IN_FLIGHT",
        (64u64 << 20).to_string(),
    )])
    .await;
    e.admin
        .create_account("slow", &mock.url(), "mock-endless")
        .await;
    let user = e.admin.create_user("bulky").await;
    let user_id = user["id"].as_i64().unwrap();
    let key = e
        .admin
        .expect(
            "POST",
            "/api-keys",
            Some(json!({"user_id": user_id, "name": "one-at-a-time", "max_concurrency": 1})),
            201,
        )
        .await;
    let key = key["key"].as_str().unwrap().to_string();
    let url = format!("{}/v1/messages", e.proxy);
    // One long stream holds the key's only slot.
    let deadline = Instant::now() + Duration::from_secs(10);
    let holder = loop {
        let holder = e
            .http
            .stream(
                &url,
                &[("x-api-key", &key)],
                &json!({"model": "claude-sonnet-4-5", "max_tokens": 8, "stream": true,
                    "messages": [{"role": "user", "content": "hold"}]}),
            )
            .await;
        if holder.status() == 200 {
            break holder;
        }
        assert!(Instant::now() < deadline, "{}", holder.status());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let before = peak_rss_mib(e.process.pid());
    // 40 requests of 24 MB each arrive at once for the same key.
    let big = json!({"model": "claude-sonnet-4-5", "max_tokens": 8,
        "messages": [{"role": "user", "content": "x".repeat(24 << 20)}]});
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let (http, url, key, big) = (e.http.clone(), url.clone(), key.clone(), big.clone());
        senders.spawn(async move {
            http.try_send("POST", &url, &[("x-api-key", &key)], Some(&big))
                .await
                .map(|r| r.status)
        });
    }
    let mut statuses = Vec::new();
    while let Some(done) = senders.join_next().await {
        statuses.push(done.unwrap());
    }
    assert!(
        statuses.iter().all(|s| matches!(s, Ok(429) | Err(_))),
        "{statuses:?}"
    );
    let after = peak_rss_mib(e.process.pid());
    assert!(
        after < before + 100,
        "peak memory went from {before} MiB to {after} MiB"
    );
    drop(holder);
    e.process.stop().await;
}

#[tokio::test]
async fn a_decompression_bomb_is_refused_without_inflating_it() {
    let mock = MockUpstream::start().await;
    let e = start().await;
    e.admin
        .create_account("bomb", &mock.url(), "mock-bomb")
        .await;
    let key = e.user_key("bombed").await;
    let before = peak_rss_mib(e.process.pid());
    let reply = until_status(&e, &key, 502).await;
    assert!(
        reply.text().contains("could not be decoded"),
        "{}",
        reply.text()
    );
    let after = peak_rss_mib(e.process.pid());
    assert!(
        after < before + 100,
        "peak memory went from {before} MiB to {after} MiB"
    );
    e.process.stop().await;
}

#[tokio::test]
async fn the_control_plane_stops_promptly_and_nodes_serve_on_unless_told_otherwise() {
    use crate::split::{NODE_TOKEN, TestDatabase, controlplane, dataplane};
    use aiproxy_tests::harness::wait_ready;
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::new(dir.path(), "cpstop").await;
    let http = aiproxy_tests::client::Http::default();
    let cp = controlplane(&db.url, dir.path(), "127.0.0.1:0", &[]).await;
    let grpc = cp.addrs["grpc"];
    let mut nodes = Vec::new();
    // The third node wants word from the control plane every 10 s.
    for (name, age) in [("n1", "0"), ("n2", "0"), ("strict", "10")] {
        let limit = [("AIPROXY_MAX_SNAPSHOT_AGE", age.to_string())];
        let dp = dataplane(grpc, dir.path(), name, NODE_TOKEN, &limit).await;
        wait_ready(
            &http,
            &format!("{}/readyz", dp.url("proxy")),
            Duration::from_secs(30),
        )
        .await;
        nodes.push(dp);
    }
    let started = Instant::now();
    cp.stop().await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "the control plane took {took:?} to stop"
    );
    // The nodes keep serving from their snapshot while it is away, but for
    // the one with an age limit, once it passes.
    let readyz = |dp: &aiproxy_tests::harness::Process| format!("{}/readyz", dp.url("proxy"));
    let said = aiproxy_tests::harness::eventually(
        "the strict node notices the silence",
        Duration::from_secs(20),
        async || {
            let reply = http.send("GET", &readyz(&nodes[2]), &[], None).await;
            (reply.status == 503)
                .then(|| reply.text())
                .ok_or(reply.text())
        },
    )
    .await;
    assert!(said.contains("no word from the control plane"), "{said}");
    for dp in &nodes[..2] {
        let reply = http.send("GET", &readyz(dp), &[], None).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    // Back, the control plane's word makes it ready again.
    let cp = controlplane(&db.url, dir.path(), &grpc.to_string(), &[]).await;
    wait_ready(&http, &readyz(&nodes[2]), Duration::from_secs(30)).await;
    cp.stop().await;
    for dp in nodes {
        dp.stop().await;
    }
    db.drop().await;
}

#[tokio::test]
async fn a_draining_node_fails_readiness_keeps_accepting_then_cuts_and_bills_the_stream() {
    use crate::split::{NODE_TOKEN, TestDatabase, controlplane, dataplane};
    use aiproxy_tests::harness::{ADMIN_PASSWORD, wait_ready};
    use http_body_util::BodyExt;
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::new(dir.path(), "drain").await;
    let mock = MockUpstream::start().await;
    let http = aiproxy_tests::client::Http::default();
    let cp = controlplane(&db.url, dir.path(), "127.0.0.1:0", &[]).await;
    let dp = dataplane(
        cp.addrs["grpc"],
        dir.path(),
        "draining",
        NODE_TOKEN,
        &[
            ("AIPROXY_DRAIN_DELAY", "2".into()),
            ("AIPROXY_DRAIN_GRACE", "2".into()),
        ],
    )
    .await;
    let proxy = dp.url("proxy");
    wait_ready(&http, &format!("{proxy}/readyz"), Duration::from_secs(30)).await;
    let admin = Admin::login(&http, &cp.url("admin"), "admin", ADMIN_PASSWORD).await;
    admin
        .create_account("endless", &mock.url(), "mock-endless")
        .await;
    let (_, _, key) = user_with_key(&admin, "streamer").await;
    let url = format!("{proxy}/v1/messages");
    let stream_body = json!({"model": "claude-sonnet-4-5", "max_tokens": 8, "stream": true,
        "messages": [{"role": "user", "content": "go on"}]});
    let deadline = Instant::now() + Duration::from_secs(10);
    let response = loop {
        let response = http
            .stream(&url, &[("x-api-key", &key)], &stream_body)
            .await;
        if response.status() == 200 {
            break response;
        }
        assert!(Instant::now() < deadline, "{}", response.status());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.is_data());
    // The stream keeps flowing while the node drains.
    let reader = tokio::spawn(async move {
        let mut bytes = 0;
        while let Some(Ok(frame)) = body.frame().await {
            bytes += frame.data_ref().map_or(0, |d| d.len());
        }
        bytes
    });

    let pid = dp.pid();
    let terminated = Instant::now();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    // Readiness fails at once, while requests are still accepted.
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let ready = http
            .send("GET", &format!("{proxy}/readyz"), &[], None)
            .await;
        if ready.status == 503 {
            assert!(ready.text().contains("draining"), "{}", ready.text());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "readiness still {}",
            ready.status
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let healthz = aiproxy_tests::client::Http::default()
        .send("GET", &format!("{proxy}/healthz"), &[], None)
        .await;
    assert_eq!(
        healthz.status, 200,
        "a new connection during the drain delay"
    );
    assert!(terminated.elapsed() < Duration::from_secs(2));
    // The stream is cut once delay and grace are over; the node exits.
    let streamed = tokio::time::timeout(Duration::from_secs(20), reader)
        .await
        .expect("the stream was never cut")
        .unwrap();
    assert!(streamed > 0);
    assert!(
        terminated.elapsed() >= Duration::from_secs(3),
        "cut after {:?}",
        terminated.elapsed()
    );
    dp.stop().await;
    // Its usage reached the control plane before it exited, as `shutdown`.
    let row = admin
        .wait_for_log(&request_id, Duration::from_secs(5))
        .await;
    assert_eq!(row["error_class"], "shutdown", "{row}");
    assert_eq!(
        row["input_tokens"],
        aiproxy_tests::mock::USAGE.input,
        "{row}"
    );
    cp.stop().await;
    db.drop().await;
}

/// A login as `name`, as if forwarded for `client` by a trusted proxy.
async fn login_from(
    http: &aiproxy_tests::client::Http,
    admin_url: &str,
    client: &str,
    name: &str,
    password: &str,
) -> aiproxy_tests::client::Reply {
    http.send(
        "POST",
        &format!("{admin_url}/api/v1/auth/login"),
        &[("x-forwarded-for", client)],
        Some(&json!({"username": name, "password": password})),
    )
    .await
}

#[tokio::test]
async fn a_login_flood_keeps_memory_flat_and_counts_addresses_behind_a_trusted_proxy() {
    use aiproxy_tests::harness::ADMIN_PASSWORD;
    let e = start_with(&[
        ("AIPROXY_TRUSTED_PROXIES", "127.0.0.1".into()),
        ("AIPROXY_MAX_PASSWORD_CHECKS", "2".into()),
    ])
    .await;
    let admin_url = e.process.url("admin");
    let before = peak_rss_mib(e.process.pid());
    // 400 sign-ins at once, random names, from 400 addresses.
    let mut flood = tokio::task::JoinSet::new();
    for i in 0..400 {
        let (http, url) = (e.http.clone(), admin_url.clone());
        flood.spawn(async move {
            let client = format!("198.18.{}.{}", i / 250, i % 250 + 1);
            login_from(
                &http,
                &url,
                &client,
                &format!("nobody-{i}"),
                "wrong-password",
            )
            .await
            .status
        });
    }
    let mut statuses = std::collections::BTreeMap::<u16, u32>::new();
    while let Some(done) = flood.join_next().await {
        *statuses.entry(done.unwrap()).or_default() += 1;
    }
    assert!(
        statuses.keys().all(|s| matches!(s, 401 | 503)),
        "{statuses:?}"
    );
    assert!(statuses.get(&503).copied().unwrap_or(0) > 0, "{statuses:?}");
    let after = peak_rss_mib(e.process.pid());
    assert!(
        after < before + 150,
        "peak memory went from {before} MiB to {after} MiB: {statuses:?}"
    );

    // One address guessing names is held up after 20 wrong passwords,
    // before any hashing.
    let mut refused_at = None;
    for i in 0..25 {
        let reply = login_from(
            &e.http,
            &admin_url,
            "203.0.113.50",
            &format!("guess-{i}"),
            "x",
        )
        .await;
        if reply.status == 429 {
            assert!(reply.headers.contains_key("retry-after"));
            refused_at = Some(i);
            break;
        }
        assert_eq!(reply.status, 401, "{}", reply.text());
    }
    assert_eq!(refused_at, Some(20));
    // Another client behind the same proxy is not.
    let ok = login_from(&e.http, &admin_url, "198.51.100.1", "admin", ADMIN_PASSWORD).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    e.process.stop().await;
}

#[tokio::test]
async fn one_account_has_one_lockout_however_its_name_is_spelled() {
    use crate::split::{TestDatabase, controlplane};
    use aiproxy_tests::harness::ADMIN_PASSWORD;
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::new(dir.path(), "names").await;
    let cp = controlplane(&db.url, dir.path(), "127.0.0.1:0", &[]).await;
    let http = aiproxy_tests::client::Http::default();
    let url = format!("{}/api/v1/auth/login", cp.url("admin"));
    let login = |name: &'static str, password: &'static str| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            http.send(
                "POST",
                &url,
                &[],
                Some(&json!({"username": name, "password": password})),
            )
            .await
        }
    };
    // Any spelling of the name signs in to the one account.
    for name in ["admin", "ADMIN    ", " Admin"] {
        let reply = login(name, ADMIN_PASSWORD).await;
        assert_eq!(reply.status, 200, "{name:?}: {}", reply.text());
        assert_eq!(reply.json()["user"]["username"], "admin");
    }
    // Five wrong guesses, each spelled differently, lock the account for
    // this address, whatever the next spelling.
    for name in ["admin", "ADMIN", "Admin", "admin  ", "aDmIn"] {
        assert_eq!(login(name, "wrong-password").await.status, 401, "{name:?}");
    }
    for name in ["ADMIN    ", "admin"] {
        let reply = login(name, ADMIN_PASSWORD).await;
        assert_eq!(reply.status, 429, "{name:?}: {}", reply.text());
    }
    cp.stop().await;
    db.drop().await;
}

#[tokio::test]
async fn proxy_passwords_are_sealed_masked_and_checked_like_the_relay_checks_them() {
    let mock = MockUpstream::start().await;
    let e = start().await;
    let secret_proxy = "http://relay-user:hunter2-proxy-pass@127.0.0.1:3128";
    for (url, why) in [
        (
            "http://relay-user:hunter2-proxy-pass@127.0.0.1",
            "a port is required",
        ),
        (
            "https://relay-user:hunter2-proxy-pass@127.0.0.1:443",
            "proxy scheme",
        ),
        (
            "http://relay-user:hunter2-proxy-pass@127.0.0.1:3128/path",
            "no path",
        ),
    ] {
        let reply = e
            .admin
            .call(
                "POST",
                "/accounts",
                Some(
                    json!({"name": "p", "type": "claude-api", "base_url": mock.url(),
                    "proxy_url": url, "credentials": {"api_key": "sk-ant-1"}}),
                ),
            )
            .await;
        assert_eq!(reply.status, 400, "{url}: {}", reply.text());
        assert!(reply.text().contains(why), "{url}: {}", reply.text());
        assert!(!reply.text().contains("hunter2"), "{}", reply.text());
    }
    let account = e
        .admin
        .create_account_with(
            json!({"name": "proxied", "type": "claude-api", "base_url": mock.url(),
            "proxy_url": secret_proxy, "credentials": {"api_key": "sk-ant-1"}}),
        )
        .await;
    assert_eq!(
        account["proxy_url"],
        "http://relay-user:••••@127.0.0.1:3128"
    );
    let id = account["id"].as_i64().unwrap();
    e.admin
        .expect(
            "PATCH",
            &format!("/accounts/{id}"),
            Some(json!({"proxy_url": secret_proxy.replace("3128", "3129")})),
            200,
        )
        .await;
    let listed = e.admin.expect("GET", "/accounts", None, 200).await;
    let audit = e.admin.expect("GET", "/audit-logs", None, 200).await;
    for (what, text) in [
        ("accounts", listed.to_string()),
        ("audit", audit.to_string()),
    ] {
        assert!(!text.contains("hunter2"), "{what}: {text}");
    }
    assert!(audit.to_string().contains("relay-user:••••@"), "{audit}");
    let mut db = database(&e).await;
    let stored: String = sqlx::query_scalar("SELECT proxy_url FROM accounts WHERE id = ?")
        .bind(id)
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert!(stored.starts_with("v1:"), "stored in clear: {stored}");

    // A URL an earlier version stored in clear, and wrote to the audit
    // log, is sealed and masked at the next start.
    sqlx::query("UPDATE accounts SET proxy_url = ? WHERE id = ?")
        .bind(secret_proxy)
        .bind(id)
        .execute(&mut db)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_logs SET detail = ? WHERE id = (SELECT MIN(id) FROM audit_logs)")
        .bind(json!({"proxy_url": secret_proxy}).to_string())
        .execute(&mut db)
        .await
        .unwrap();
    drop(db);
    let e = e.restart(&[]).await;
    let mut db = database(&e).await;
    let stored: String = sqlx::query_scalar("SELECT proxy_url FROM accounts WHERE id = ?")
        .bind(id)
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert!(stored.starts_with("v1:"), "still in clear: {stored}");
    let details: Vec<Option<String>> = sqlx::query_scalar("SELECT detail FROM audit_logs")
        .fetch_all(&mut db)
        .await
        .unwrap();
    assert!(
        details.iter().flatten().all(|d| !d.contains("hunter2")),
        "{details:?}"
    );
    let account = e
        .admin
        .expect("GET", &format!("/accounts/{id}"), None, 200)
        .await;
    assert_eq!(
        account["proxy_url"],
        "http://relay-user:••••@127.0.0.1:3128"
    );
    assert!(!e.process.log_text().contains("hunter2"));
    e.process.stop().await;
}

#[tokio::test]
async fn users_keep_out_of_operator_business() {
    let mock = MockUpstream::start().await;
    let e = start().await;
    e.admin.create_account("one", &mock.url(), "sk-ant-1").await;
    let user = e.admin.create_user("customer").await;
    let user_id = user["id"].as_i64().unwrap();
    let (key_id, key) = e.admin.create_key(user_id, "theirs").await;
    let served = until_status(&e, &key, 200).await;
    let request_id = served.headers["x-request-id"].to_str().unwrap().to_string();
    e.admin
        .wait_for_log(&request_id, Duration::from_secs(10))
        .await;
    let customer = Admin::login(
        &e.http,
        &e.process.url("admin"),
        "customer",
        "user-password-1",
    )
    .await;

    // What they pay, and nothing about the pool.
    let logs = customer.expect("GET", "/request-logs", None, 200).await;
    let row = &logs["items"][0];
    assert_eq!(row["request_id"], request_id.as_str());
    assert!(row["cost"].is_string());
    for hidden in ["upstream_cost", "account_id", "node_id"] {
        assert!(row.get(hidden).is_none(), "{hidden} shown: {row}");
    }
    let usage = customer
        .expect("GET", "/usage?group_by=model", None, 200)
        .await;
    assert!(usage["items"][0].get("upstream_cost").is_none(), "{usage}");
    let csv = customer.call("GET", "/request-logs/export", None).await;
    let header = csv.text().lines().next().unwrap().to_string();
    assert!(
        !header.contains("upstream_cost") && !header.contains("node_id"),
        "{header}"
    );
    // The operator still sees everything.
    let theirs = e.admin.expect("GET", "/request-logs", None, 200).await;
    assert!(theirs["items"][0]["upstream_cost"].is_string());

    // An administrator's disable holds against the owner.
    let path = format!("/api-keys/{key_id}");
    e.admin
        .expect("PATCH", &path, Some(json!({"status": "disabled"})), 200)
        .await;
    let refused = customer
        .call("PATCH", &path, Some(json!({"status": "active"})))
        .await;
    assert_eq!(refused.status, 403, "{}", refused.text());
    until_status(&e, &key, 401).await;
    let listed = customer.expect("GET", "/api-keys", None, 200).await;
    assert_eq!(listed["items"][0]["disabled_by_admin"], true);
    e.admin
        .expect("PATCH", &path, Some(json!({"status": "active"})), 200)
        .await;
    // The owner's own disable is theirs to lift.
    customer
        .expect("PATCH", &path, Some(json!({"status": "disabled"})), 200)
        .await;
    customer
        .expect("PATCH", &path, Some(json!({"status": "active"})), 200)
        .await;
    until_status(&e, &key, 200).await;
    e.process.stop().await;
}

/// A node whose journal is full (its control plane away too long) refuses
/// requests and says so on `/readyz`, so the load balancer moves away; once
/// the journal drains, it is ready again.
#[tokio::test]
async fn a_full_journal_fails_readiness_until_it_drains() {
    use crate::split::{NODE_TOKEN, TestDatabase, controlplane, dataplane};
    use aiproxy_tests::harness::{ADMIN_PASSWORD, wait_ready};
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::new(dir.path(), "journalfull").await;
    let mock = MockUpstream::start().await;
    let http = aiproxy_tests::client::Http::default();
    let cp = controlplane(&db.url, dir.path(), "127.0.0.1:0", &[]).await;
    let grpc = cp.addrs["grpc"];
    let small = [("AIPROXY_JOURNAL_MAX_BYTES", "4096".to_string())];
    let dp = dataplane(grpc, dir.path(), "small", NODE_TOKEN, &small).await;
    let readyz = format!("{}/readyz", dp.url("proxy"));
    wait_ready(&http, &readyz, Duration::from_secs(30)).await;
    let admin = Admin::login(&http, &cp.url("admin"), "admin", ADMIN_PASSWORD).await;
    admin.create_account("one", &mock.url(), "sk-ant-1").await;
    let (_, _, key) = user_with_key(&admin, "journal").await;
    let url = format!("{}/v1/messages", dp.url("proxy"));
    let send = || {
        let (http, url, key) = (http.clone(), url.clone(), key.clone());
        async move {
            http.send(
                "POST",
                &url,
                &[("x-api-key", &key), ("anthropic-version", "2023-06-01")],
                Some(&plain_body("hi")),
            )
            .await
        }
    };
    aiproxy_tests::harness::eventually("the key is served", Duration::from_secs(10), async || {
        let reply = send().await;
        (reply.status == 200).then_some(()).ok_or(reply.text())
    })
    .await;

    cp.kill().await;
    let refused = aiproxy_tests::harness::eventually(
        "the journal fills",
        Duration::from_secs(30),
        async || {
            let reply = send().await;
            (reply.status == 503)
                .then(|| reply.text())
                .ok_or(reply.text())
        },
    )
    .await;
    assert!(refused.contains("usage journal full"), "{refused}");
    let ready = http.send("GET", &readyz, &[], None).await;
    assert_eq!(ready.status, 503);
    assert!(
        ready.text().contains("usage journal full"),
        "{}",
        ready.text()
    );

    let cp = controlplane(&db.url, dir.path(), &grpc.to_string(), &[]).await;
    wait_ready(&http, &readyz, Duration::from_secs(30)).await;
    assert_eq!(send().await.status, 200);
    dp.stop().await;
    cp.stop().await;
    db.drop().await;
}
