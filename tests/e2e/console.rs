//! The admin console: served by the all-in-one on the admin port, and driven
//! in a real browser (Debian's Chromium, headless, through playwright-core)
//! by `tests/web/console.mjs`, which saves screenshots of every page under
//! `target/console-screenshots`.
use std::path::{Path, PathBuf};
use std::process::Stdio;

use aiproxy_tests::harness::ADMIN_PASSWORD;
use aiproxy_tests::mock::MockUpstream;

use crate::embedded::start_with;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test]
async fn the_console_is_served_with_its_routes_and_headers() {
    let e = start_with(&[]).await;
    let admin = e.process.url("admin");
    let index = e.http.send("GET", &format!("{admin}/"), &[], None).await;
    assert_eq!(index.status, 200);
    assert!(
        index.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        index.headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'self'")
    );
    assert_eq!(index.headers["x-frame-options"], "DENY");
    let html = index.text();
    assert!(
        html.contains("<div id=\"app\">"),
        "the built console: {html}"
    );
    // The app's own routes get the app; API misses stay API errors.
    let route = e
        .http
        .send("GET", &format!("{admin}/accounts"), &[], None)
        .await;
    assert_eq!(route.status, 200);
    assert_eq!(route.text(), html);
    let api = e
        .http
        .send("GET", &format!("{admin}/api/v1/nope"), &[], None)
        .await;
    assert_eq!(api.status, 404);
    assert_eq!(api.json()["error"]["code"], "not_found");
    let missing = e
        .http
        .send("GET", &format!("{admin}/assets/nope.js"), &[], None)
        .await;
    assert_eq!(missing.status, 404);
    // Hashed assets are cached for good and sent compressed when accepted.
    let script = html
        .split("src=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("a script in index.html");
    let gz = e
        .http
        .send(
            "GET",
            &format!("{admin}{script}"),
            &[("accept-encoding", "gzip, br")],
            None,
        )
        .await;
    assert_eq!(gz.status, 200);
    assert_eq!(gz.headers["content-encoding"], "gzip");
    assert!(
        gz.headers["cache-control"]
            .to_str()
            .unwrap()
            .contains("immutable")
    );
    let plain = e
        .http
        .send("GET", &format!("{admin}{script}"), &[], None)
        .await;
    assert!(plain.headers.get("content-encoding").is_none());
    assert!(
        plain.body.len() > gz.body.len(),
        "decompressed for clients without gzip"
    );
    e.process.stop().await;
}

/// Chromium, and the test's node modules; None (with the reason) when the
/// browser tests cannot run here and were not required.
fn browser_ready() -> Option<PathBuf> {
    let required = std::env::var("AIPROXY_TEST_BROWSER").is_ok_and(|v| !v.is_empty() && v != "0");
    let chromium =
        PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    let web = repo().join("tests/web");
    let problem = if !chromium.exists() {
        Some(format!(
            "{} is missing (apt-get install -y chromium)",
            chromium.display()
        ))
    } else if !web.join("node_modules/playwright-core").exists() {
        let installed = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&web)
            .stdout(Stdio::null())
            .status();
        match installed {
            Ok(s) if s.success() => None,
            Ok(s) => Some(format!("npm ci in tests/web failed ({s})")),
            Err(e) => Some(format!("npm is not available: {e}")),
        }
    } else {
        None
    };
    match problem {
        None => Some(chromium),
        Some(why) if required => {
            panic!("AIPROXY_TEST_BROWSER is set but the browser tests cannot run: {why}")
        }
        Some(why) => {
            eprintln!(
                "console browser test not run: {why}; set AIPROXY_TEST_BROWSER=1 to require it"
            );
            None
        }
    }
}

#[tokio::test]
async fn an_operator_and_a_user_work_through_the_console_in_a_browser() {
    let Some(chromium) = browser_ready() else {
        return;
    };
    let mock = MockUpstream::start().await;
    let e = start_with(&[]).await;
    let shots = repo().join("target/console-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    let out = tokio::process::Command::new("node")
        .arg(repo().join("tests/web/console.mjs"))
        .current_dir(repo().join("tests/web"))
        .env("ADMIN_URL", e.process.url("admin"))
        .env("PROXY_URL", &e.proxy)
        .env("MOCK_URL", mock.url())
        .env("ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("SCREENSHOTS", &shots)
        .env("CHROMIUM", &chromium)
        .output()
        .await
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser run failed (screenshots so far in {}):\n{stdout}\n{stderr}\n--- aiproxy log ---\n{}",
        shots.display(),
        tail(&e.process.log_text(), 40)
    );
    println!("{stdout}");
    assert!(Path::new(&shots).join("01-login.png").exists());
    e.process.stop().await;
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
