//! The optional peer: LiteLLM's proxy from PyPI in a venv under `target/`,
//! pointed at the same upstream. Skipped, with the reason, when it cannot be
//! installed or started.
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

const VERSION: &str = "litellm[proxy]==1.106.12";
pub const MASTER_KEY: &str = "sk-bench-master";

fn venv() -> PathBuf {
    crate::workspace().join("target/litellm-venv")
}

/// The venv's `litellm`, installing it on first use.
fn install() -> Result<PathBuf, String> {
    let bin = venv().join("bin/litellm");
    if bin.exists() {
        return Ok(bin);
    }
    eprintln!("bench: installing {VERSION} into {} …", venv().display());
    let ok = std::process::Command::new("python3")
        .args(["-m", "venv"])
        .arg(venv())
        .status()
        .map_err(|e| format!("python3: {e}"))?
        .success();
    if !ok {
        return Err("python3 -m venv failed".into());
    }
    let pip = std::process::Command::new(venv().join("bin/pip"))
        .args(["install", "-q", VERSION])
        .output()
        .map_err(|e| format!("pip: {e}"))?;
    if !pip.status.success() {
        return Err(format!(
            "pip install {VERSION} failed: {}",
            String::from_utf8_lossy(&pip.stderr)
                .lines()
                .last()
                .unwrap_or_default()
        ));
    }
    Ok(bin)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Starts LiteLLM on CPU 1 in front of `upstream`; its URL, process, and the
/// directory holding its config.
pub async fn start(upstream: &str, dir: &Path) -> Result<(String, Child), String> {
    let bin = install()?;
    let config = dir.join("litellm.yaml");
    std::fs::write(
        &config,
        format!(
            "model_list:\n  - model_name: claude-sonnet-4-5\n    litellm_params:\n      model: anthropic/claude-sonnet-4-5\n      api_base: {upstream}\n      api_key: {}\ngeneral_settings:\n  master_key: {MASTER_KEY}\n",
            crate::servers::KEY_FAST
        ),
    )
    .map_err(|e| e.to_string())?;
    let port = free_port();
    let mut cmd = match crate::taskset() {
        Some(ts) => {
            let mut c = Command::new(ts);
            c.args(["-c", "1"]).arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    cmd.arg("--config")
        .arg(&config)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--num_workers",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("litellm.log")).map_err(|e| e.to_string())?)
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(|e| format!("litellm: {e}"))?;
    let url = format!("http://127.0.0.1:{port}");
    for _ in 0..120 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok((url, child));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err("litellm did not start listening within 60 s".into())
}
