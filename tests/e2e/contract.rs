//! The admin API against its own OpenAPI document, by Schemathesis: every
//! documented operation (the router is built from the documented handlers,
//! so that is every route) is called with generated valid and invalid
//! input; no answer may be a 5xx, an undocumented status or a body that
//! breaks the schema, and invalid input must be refused.
use std::time::Duration;

use serde_json::json;

/// Fixed so a run is repeatable; `AIPROXY_CONTRACT_SEED` explores others.
const SEED: &str = "20261205";

#[tokio::test]
async fn the_admin_api_keeps_its_documented_contract() {
    let venv = tokio::task::spawn_blocking(|| {
        crate::python::venv("contract-venv", "tests/contract/requirements.txt")
    })
    .await
    .unwrap();
    let mock = aiproxy_tests::mock::MockUpstream::start().await;
    // Sign-ins finish against the mock, not the real providers.
    let e = crate::embedded::start_with(&[
        (
            "AIPROXY_CLAUDE_TOKEN_URL",
            format!("{}/v1/oauth/token", mock.url()),
        ),
        (
            "AIPROXY_OPENAI_TOKEN_URL",
            format!("{}/oauth/token", mock.url()),
        ),
        (
            "AIPROXY_GOOGLE_TOKEN_URL",
            format!("{}/oauth/token", mock.url()),
        ),
    ])
    .await;
    // Something for the id routes to find.
    let user = e.admin.create_user("contract-user").await;
    let user_id = user["id"].as_i64().unwrap();
    e.admin.create_key(user_id, "contract-key").await;
    e.admin
        .create_account("contract-account", &mock.url(), "sk-ant-contract")
        .await;
    e.admin
        .expect(
            "POST",
            &format!("/users/{user_id}/packages"),
            Some(json!({"name": "monthly", "type": "subscription", "monthly_quota": "10"})),
            201,
        )
        .await;

    let seed = std::env::var("AIPROXY_CONTRACT_SEED").unwrap_or_else(|_| SEED.into());
    let work = tempfile::tempdir().unwrap();
    let base = &e.admin.base;
    let run = tokio::process::Command::new(venv.join("bin/st"))
        .current_dir(work.path())
        .env("NO_COLOR", "1")
        .args(["run", &format!("{base}/openapi.json"), "--url", base])
        .args(["-H", &format!("Authorization: Bearer {}", e.admin.token())])
        // Business rules the schema cannot state (a unique name, not
        // deleting yourself) refuse some valid-looking input; everything
        // else is checked.
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        // Changing the admin's own password would end this session.
        .args(["--exclude-operation-id", "auth_change_password"])
        .args(["--max-examples", "15", "--workers", "1", "--seed", &seed])
        .args(["--generation-database", "none"])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(900), run)
        .await
        .expect("schemathesis finished within 15 minutes")
        .expect("schemathesis runs");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the admin API broke its contract (seed {seed}):\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains("API Operations") && !report.contains("Tested: 0"),
        "nothing was tested:\n{report}"
    );
    let log = e.process.log_text();
    assert!(!log.contains("panicked"), "the control plane panicked");
    e.process.stop().await;
}
