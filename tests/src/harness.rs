//! Runs the real `aiproxy` binary on ports chosen by the OS, and drives its admin API.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::client::{Http, Reply};

/// The admin password every harness-started control plane gets.
pub const ADMIN_PASSWORD: &str = "test-admin-password";

/// A running `aiproxy` process; killed when dropped.
pub struct Process {
    child: Child,
    pub addrs: HashMap<String, SocketAddr>,
    pub log: PathBuf,
}

impl Process {
    /// Starts `bin args` with `env` (and no other `AIPROXY_*` variables), and
    /// waits for each of `listeners` (`admin`, `grpc`, `proxy`) to be announced.
    pub async fn spawn(
        bin: &Path,
        args: &[&str],
        env: &[(&str, String)],
        listeners: &[&str],
        log: PathBuf,
    ) -> Process {
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        for (k, _) in std::env::vars() {
            if k.starts_with("AIPROXY_") {
                cmd.env_remove(k);
            }
        }
        // Processes of parallel tests must not share the metrics port.
        cmd.env("AIPROXY_METRICS_LISTEN", "127.0.0.1:0");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.env("RUST_LOG", "info,aiproxy_dataplane=debug");
        let log_file = std::fs::File::create(&log).expect("create log file");
        cmd.stderr(Stdio::from(log_file));
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut addrs = HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while listeners.iter().any(|l| !addrs.contains_key(*l)) {
            let line = tokio::time::timeout_at(deadline.into(), lines.next_line()).await;
            match line {
                Ok(Ok(Some(line))) => {
                    if let Some(rest) = line.strip_prefix("aiproxy: ")
                        && let Some((what, addr)) = rest.split_once(" listening on ")
                    {
                        addrs.insert(what.to_string(), addr.parse().expect("announced address"));
                    }
                }
                _ => {
                    let _ = child.start_kill();
                    panic!(
                        "aiproxy did not start; log:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            }
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Process { child, addrs, log }
    }

    /// The process id, for reading its CPU time and memory.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running process")
    }

    pub fn url(&self, listener: &str) -> String {
        format!("http://{}", self.addrs[listener])
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait for a clean exit.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .await;
        }
        let status = tokio::time::timeout(Duration::from_secs(40), self.child.wait()).await;
        assert!(
            matches!(status, Ok(Ok(s)) if s.success()),
            "aiproxy did not stop cleanly: {status:?}\n{}",
            self.log_text()
        );
    }

    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Runs `check` every 20 ms until it succeeds, for at most `within`, and
/// returns what it found; otherwise panics with `what` and the last miss.
/// Changes reach the relay asynchronously, so tests wait for them this way.
pub async fn eventually<T>(
    what: &str,
    within: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        match check().await {
            Ok(found) => return found,
            Err(miss) => assert!(
                Instant::now() < deadline,
                "{what}: not within {within:?}; last: {miss}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `url` until it answers 200, or panics after `timeout`.
pub async fn wait_ready(http: &Http, url: &str, timeout: Duration) {
    eventually(&format!("{url} ready"), timeout, async || {
        let status = http.send("GET", url, &[], None).await.status;
        if status == 200 {
            Ok(())
        } else {
            Err(format!("status {status}"))
        }
    })
    .await
}

/// A logged-in admin-API session.
pub struct Admin {
    pub http: Http,
    pub base: String,
    token: String,
}

impl Admin {
    /// The bearer token this session sends.
    pub fn token(&self) -> &str {
        &self.token
    }

    pub async fn login(http: &Http, admin_url: &str, username: &str, password: &str) -> Admin {
        let base = format!("{admin_url}/api/v1");
        let reply = http
            .send(
                "POST",
                &format!("{base}/auth/login"),
                &[],
                Some(&json!({"username": username, "password": password})),
            )
            .await;
        assert_eq!(reply.status, 200, "login failed: {}", reply.text());
        let token = reply.json()["token"].as_str().expect("token").to_string();
        Admin {
            http: http.clone(),
            base,
            token,
        }
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        let auth = format!("Bearer {}", self.token);
        self.http
            .send(
                method,
                &format!("{}{path}", self.base),
                &[("authorization", &auth)],
                body.as_ref(),
            )
            .await
    }

    /// Calls and asserts the expected status; returns the JSON body.
    pub async fn expect(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        status: u16,
    ) -> Value {
        let reply = self.call(method, path, body).await;
        assert_eq!(reply.status, status, "{method} {path}: {}", reply.text());
        if reply.body.is_empty() {
            Value::Null
        } else {
            reply.json()
        }
    }

    /// Waits up to `within` for `request_id` to reach request logs and returns its row.
    pub async fn wait_for_log(&self, request_id: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let logs = self
                .expect("GET", "/request-logs?page_size=500", None, 200)
                .await;
            let items = logs["items"].as_array().expect("items");
            if let Some(row) = items.iter().find(|r| r["request_id"] == request_id) {
                return row.clone();
            }
            assert!(
                Instant::now() < deadline,
                "request {request_id} not in request_logs after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Takes an account out of scheduling (`PATCH {"enabled": false}`).
    pub async fn disable_account(&self, id: &Value) {
        self.expect(
            "PATCH",
            &format!("/accounts/{id}"),
            Some(json!({"enabled": false})),
            200,
        )
        .await;
    }

    pub async fn create_account(&self, name: &str, base_url: &str, api_key: &str) -> Value {
        self.expect(
            "POST",
            "/accounts",
            Some(json!({"name": name, "type": "claude-api", "base_url": base_url, "credentials": {"api_key": api_key}})),
            201,
        )
        .await
    }

    /// Creates an account from a full request body (priority, limits, bindings).
    pub async fn create_account_with(&self, body: Value) -> Value {
        self.expect("POST", "/accounts", Some(body), 201).await
    }

    pub async fn create_user(&self, username: &str) -> Value {
        self.expect(
            "POST",
            "/users",
            Some(json!({"username": username, "password": "user-password-1"})),
            201,
        )
        .await
    }

    /// Creates a key and returns (id, plaintext).
    pub async fn create_key(&self, user_id: i64, name: &str) -> (i64, String) {
        let key = self
            .expect(
                "POST",
                "/api-keys",
                Some(json!({"user_id": user_id, "name": name})),
                201,
            )
            .await;
        (
            key["id"].as_i64().expect("id"),
            key["key"].as_str().expect("plaintext key").to_string(),
        )
    }
}
