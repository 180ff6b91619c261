//! The official Python SDKs against the all-in-one, from a venv the test makes.
use std::path::{Path, PathBuf};
use std::time::Duration;

use aiproxy_tests::client::Http;
use aiproxy_tests::harness::{ADMIN_PASSWORD, Admin, Process, wait_ready};
use aiproxy_tests::mock::MockUpstream;
use serde_json::Value;

/// A venv under `target/` with `tests/sdk/requirements.txt` installed, made once.
fn sdk_python() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = root.join("target").join("sdk-venv");
    let python = venv.join("bin").join("python");
    let requirements = root.join("tests/sdk/requirements.txt");
    let stamp = venv.join("requirements.installed");
    let wanted = std::fs::read_to_string(&requirements).expect("requirements.txt");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return python;
    }
    let run = |cmd: &mut std::process::Command| {
        let out = cmd.output().unwrap_or_else(|e| {
            panic!("cannot run {cmd:?}: {e} (python3 with venv is needed for the SDK tests)")
        });
        assert!(
            out.status.success(),
            "{cmd:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(std::process::Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(&venv));
    run(std::process::Command::new(&python)
        .args(["-m", "pip", "install", "-q", "-r"])
        .arg(&requirements));
    std::fs::write(&stamp, wanted).unwrap();
    python
}

#[tokio::test]
async fn official_anthropic_sdk_streams_and_not() {
    let python = tokio::task::spawn_blocking(sdk_python).await.unwrap();
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("AIPROXY_DATA_DIR", dir.path().display().to_string()),
        ("AIPROXY_ADMIN_PASSWORD", ADMIN_PASSWORD.to_string()),
        ("AIPROXY_PROXY_LISTEN", "127.0.0.1:0".to_string()),
        ("AIPROXY_ADMIN_LISTEN", "127.0.0.1:0".to_string()),
        ("AIPROXY_GRPC_LISTEN", "127.0.0.1:0".to_string()),
    ];
    let process = Process::spawn(
        &crate::bin(),
        &[],
        &env,
        &["admin", "proxy"],
        dir.path().join("aiproxy.log"),
    )
    .await;
    let http = Http::default();
    wait_ready(
        &http,
        &format!("{}/readyz", process.url("proxy")),
        Duration::from_secs(30),
    )
    .await;
    let admin = Admin::login(&http, &process.url("admin"), "admin", ADMIN_PASSWORD).await;
    admin.create_account("a", &mock.url(), "sk-ant-sdk").await;
    let user = admin.create_user("sdk-user").await;
    let (_, key) = admin.create_key(user["id"].as_i64().unwrap(), "sdk").await;
    crate::embedded::wait_for_status(
        &http,
        &format!("{}/v1/messages", process.url("proxy")),
        &[("x-api-key", &key)],
        &serde_json::json!({"model": "claude-sonnet-4-5", "max_tokens": 1, "messages": []}),
        200,
    )
    .await;

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/anthropic_sdk.py");
    let out = tokio::process::Command::new(&python)
        .arg(&script)
        .env("AIPROXY_URL", process.url("proxy"))
        .env("AIPROXY_KEY", &key)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "SDK script failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let checks: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let by = |name: &str| {
        checks
            .iter()
            .find(|c| c["check"] == name)
            .unwrap_or_else(|| panic!("no {name} check"))
    };
    assert_eq!(by("create")["text"], "Hello from the mock.");
    assert_eq!(
        by("create")["input_tokens"],
        aiproxy_tests::mock::USAGE.input
    );
    assert_eq!(
        by("stream")["chunks"],
        serde_json::json!(["Hello", " from the mock."])
    );
    assert_eq!(
        by("stream")["output_tokens"],
        aiproxy_tests::mock::USAGE.output
    );
    assert_eq!(by("bad_key")["status"], 401);
    assert_eq!(by("bad_key")["message"], "invalid api key");
    process.stop().await;
}
