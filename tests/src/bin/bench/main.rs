//! The benchmark harness: aiproxy against a direct call and a bare hyper
//! proxy (the floor), measured in one run with the arms interleaved in
//! blocks, printed as markdown tables.
//!
//! `cargo run --release -p aiproxy-tests --bin bench` (builds the release
//! binary first); `--smoke` runs tiny counts (CI); `--aiproxy PATH` uses a
//! given binary; `--out FILE` also writes the tables there; `--control-only`
//! measures only the control plane; `--profile SECONDS` samples the
//! all-in-one under load with `perf` and prints the report; `--load
//! SECONDS` only loads it and prints its CPU per request; with `--split`
//! both measure the data plane fed by a control plane (on Redis when it
//! answers) instead.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]
mod control;
mod litellm;
mod load;
mod procs;
mod servers;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use aiproxy_tests::harness::{ADMIN_PASSWORD, Admin, Process};
use serde_json::json;
use tokio::process::Child;

use crate::load::{Client, Target, percentile};
use crate::servers::{KEY_FAST, KEY_HOLD, KEY_STREAM, STREAM_CHUNKS};

/// How much of everything to run.
#[derive(Clone, Copy)]
struct Plan {
    warmup: usize,
    blocks: usize,
    per_block: usize,
    saturate: usize,
    rates: &'static [u64],
    rate_secs: f64,
    streams: usize,
    held: &'static [usize],
    smoke: bool,
}

const FULL: Plan = Plan {
    warmup: 500,
    blocks: 6,
    per_block: 500,
    saturate: 20_000,
    rates: &[100, 250, 500, 1_000, 2_000, 3_000, 4_000, 6_000, 8_000],
    rate_secs: 2.0,
    streams: 300,
    held: &[1_000, 10_000],
    smoke: false,
};

const SMOKE: Plan = Plan {
    warmup: 20,
    blocks: 2,
    per_block: 20,
    saturate: 200,
    rates: &[200],
    rate_secs: 0.5,
    streams: 5,
    held: &[20],
    smoke: true,
};

/// One thing measured: where it is reached and which processes do its work.
struct Arm {
    name: String,
    fast: Target,
    stream: Target,
    hold: Target,
    /// Processes whose CPU and memory count for this arm (the relay under test).
    pids: Vec<u32>,
    /// Redis whose commands this arm issues, if any.
    redis: Option<String>,
    samples: Vec<u64>,
    /// A peer measured for comparison: lighter load, no memory figures.
    peer: bool,
    _keep: Keep,
}

/// What must stay alive while an arm is measured.
#[allow(dead_code)]
enum Keep {
    Nothing,
    Child(Child),
    Processes(Vec<Process>, tempfile::TempDir),
    PeerProcess(Child, tempfile::TempDir),
}

#[derive(Default)]
struct Row {
    p50: u64,
    p99: u64,
    p999: u64,
    cpu_us: Option<f64>,
    /// Of `cpu_us`, what the SQLite writer threads spent (the all-in-one's
    /// control plane storing usage).
    sqlite_us: Option<f64>,
    max_rate: Option<u64>,
    rate_p99: Vec<(u64, u64, usize)>,
    ttfb_p50: u64,
    ttfb_p99: u64,
    chunks_ok: bool,
    redis_per_request: Option<f64>,
}

fn arg_value(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        match args.first().map(String::as_str) {
            Some("serve-upstream") => {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                println!("listening on {}", listener.local_addr().expect("addr"));
                servers::serve_upstream(listener).await;
            }
            Some("serve-bare") => {
                let target = args
                    .get(1)
                    .expect("target")
                    .parse()
                    .expect("target address");
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                println!("listening on {}", listener.local_addr().expect("addr"));
                servers::serve_bare_proxy(listener, target).await;
            }
            _ => run(&args).await,
        }
    });
}

pub(crate) fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The aiproxy binary to measure: given, or built in release mode now.
fn aiproxy_binary(args: &[String]) -> PathBuf {
    if let Some(path) = arg_value(args, "--aiproxy") {
        return PathBuf::from(path);
    }
    eprintln!("bench: building aiproxy (release)…");
    let status = std::process::Command::new(env!("CARGO"))
        .args(["build", "--release", "--bin", "aiproxy"])
        .current_dir(workspace())
        .status()
        .expect("cargo build");
    assert!(status.success(), "cargo build --release failed");
    workspace().join("target/release/aiproxy")
}

pub(crate) fn taskset() -> Option<PathBuf> {
    let path = PathBuf::from("/usr/bin/taskset");
    path.exists().then_some(path)
}

/// Spawns aiproxy (pinned to `cpu` when taskset is there).
async fn spawn_aiproxy(
    bin: &std::path::Path,
    args: &[&str],
    env: &[(&str, String)],
    listeners: &[&str],
    log: PathBuf,
    cpu: usize,
) -> Process {
    match taskset() {
        Some(ts) => {
            let cpu = cpu.to_string();
            let bin = bin.display().to_string();
            let mut full: Vec<&str> = vec!["-c", &cpu, &bin];
            full.extend_from_slice(args);
            Process::spawn(&ts, &full, env, listeners, log).await
        }
        None => Process::spawn(bin, args, env, listeners, log).await,
    }
}

/// Users, keys and dedicated accounts for the three upstream behaviours.
async fn provision(admin: &Admin, upstream: &str) -> [String; 3] {
    let user = admin.create_user("bench").await;
    let user_id = user["id"].as_i64().expect("user id");
    let mut keys = Vec::new();
    for (name, upstream_key) in [
        ("fast", KEY_FAST),
        ("stream", KEY_STREAM),
        ("hold", KEY_HOLD),
    ] {
        let (id, key) = admin.create_key(user_id, name).await;
        admin
            .create_account_with(
                json!({"name": name, "type": "claude-api", "base_url": upstream,
                "credentials": {"api_key": upstream_key}, "bound_api_key_ids": [id]}),
            )
            .await;
        keys.push(key);
    }
    [keys[0].clone(), keys[1].clone(), keys[2].clone()]
}

async fn until_serving(client: &Client, t: &Target) {
    for _ in 0..600 {
        if client.one(t, load::body(false)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} never served", t.url);
}

fn targets(url: &str, keys: &[String; 3]) -> (Target, Target, Target) {
    let t = |key: &str| Target {
        url: url.to_string(),
        key: key.to_string(),
    };
    (t(&keys[0]), t(&keys[1]), t(&keys[2]))
}

/// aiproxy as `cargo run` starts it (in-memory state, SQLite), pinned to
/// CPU 1, provisioned against `upstream`; its keys for the three behaviours.
async fn start_all_in_one(
    bin: &std::path::Path,
    upstream: &str,
    extra: &[(&'static str, &str)],
) -> (Process, tempfile::TempDir, [String; 3]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut env = vec![
        ("AIPROXY_DATA_DIR", dir.path().display().to_string()),
        ("AIPROXY_ADMIN_PASSWORD", ADMIN_PASSWORD.to_string()),
        ("AIPROXY_PROXY_LISTEN", "127.0.0.1:0".to_string()),
        ("AIPROXY_ADMIN_LISTEN", "127.0.0.1:0".to_string()),
        ("AIPROXY_GRPC_LISTEN", "127.0.0.1:0".to_string()),
        ("AIPROXY_LOG_FORMAT", "json".to_string()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    let p = spawn_aiproxy(
        bin,
        &[],
        &env,
        &["admin", "grpc", "proxy"],
        dir.path().join("aiproxy.log"),
        1,
    )
    .await;
    let admin = Admin::login(
        &aiproxy_tests::client::Http::default(),
        &p.url("admin"),
        "admin",
        ADMIN_PASSWORD,
    )
    .await;
    let keys = provision(&admin, upstream).await;
    (p, dir, keys)
}

/// `--profile SECONDS`: the all-in-one under saturation (16 in flight) for
/// that long while `perf record -g` samples it; the flat report goes to
/// stdout and the samples stay in `target/bench-perf.data`.
async fn profile(bin: &std::path::Path, secs: u64, record: bool, split: bool) {
    let (_upstream, up_port) = procs::spawn_helper(&["serve-upstream".into()], Some(0)).await;
    let upstream = format!("http://127.0.0.1:{up_port}");
    let (p, _cp, _dir, keys) = if split {
        let (dp, cp, dir, keys) = start_split(bin, &upstream, redis_reachable().await).await;
        (dp, Some(cp), dir, keys)
    } else {
        let (p, dir, keys) = start_all_in_one(bin, &upstream, &[]).await;
        (p, None, dir, keys)
    };
    let (fast, _, hold) = targets(&p.url("proxy"), &keys);
    let client = Client::new();
    until_serving(&client, &fast).await;
    client.sequential(&fast, 2_000).await;
    if !record {
        let idle = procs::rss_kib(p.pid());
        let streams = Client::new();
        let held = streams.hold(&hold, 2_000).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let rss = procs::rss_kib(p.pid());
        eprintln!(
            "bench: idle rss {} MiB; {:.1} KiB per idle stream (2000 open)",
            idle / 1024,
            rss.saturating_sub(idle) as f64 / 2_000.0
        );
        drop((held, streams));
    }
    let data = workspace().join("target/bench-perf.data");
    let perf = record.then(|| {
        std::process::Command::new("perf")
            .args(["record", "-F", "999", "--call-graph", "dwarf,32768", "-o"])
            .arg(&data)
            .args(["-p", &p.pid().to_string(), "--", "sleep", &secs.to_string()])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("perf (apt-get install linux-perf)")
    });
    let load = {
        let client = client.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let mut served = 0;
            while started.elapsed() < Duration::from_secs(secs) {
                client.saturate(&fast, 16, 5_000).await;
                served += 5_000;
            }
            served
        })
    };
    let before = procs::cpu_us_by_thread(p.pid());
    let served = load.await.expect("load");
    let after = procs::cpu_us_by_thread(p.pid());
    let per_request = |us: u64| us as f64 / served as f64;
    let total: u64 = after.values().sum::<u64>() - before.values().sum::<u64>();
    eprintln!(
        "bench: {served} requests, {:.1} µs CPU each, rss {} MiB",
        per_request(total),
        procs::rss_kib(p.pid()) / 1024
    );
    for (thread, us) in &after {
        let spent = us - before.get(thread).copied().unwrap_or(0);
        if spent > 0 {
            eprintln!("bench:   {thread}: {:.1} µs", per_request(spent));
        }
    }
    let Some(mut perf) = perf else { return };
    tokio::task::spawn_blocking(move || perf.wait())
        .await
        .expect("join")
        .expect("perf");
    let status = std::process::Command::new("perf")
        .args([
            "report",
            "--no-children",
            "-g",
            "none",
            "--percent-limit",
            "0.5",
        ])
        .args(["--stdio", "-i"])
        .arg(&data)
        .status()
        .expect("perf report");
    assert!(status.success());
}

/// `--quick N`: a fast comparison of direct, floor and all-in-one: added
/// latency of 10·N plain requests and time to first byte of N streams per
/// arm, interleaved in blocks.
async fn quick(bin: &std::path::Path, n: usize) {
    let (_upstream, up_port) = procs::spawn_helper(&["serve-upstream".into()], Some(0)).await;
    let upstream = format!("http://127.0.0.1:{up_port}");
    let (_bare, bare_port) = procs::spawn_helper(
        &["serve-bare".into(), format!("127.0.0.1:{up_port}")],
        Some(1),
    )
    .await;
    let (p, _dir, keys) = start_all_in_one(bin, &upstream, &[]).await;
    let (fast, stream, _) = targets(&p.url("proxy"), &keys);
    let direct_at = |key: &str| Target {
        url: upstream.clone(),
        key: key.into(),
    };
    let bare_at = |key: &str| Target {
        url: format!("http://127.0.0.1:{bare_port}"),
        key: key.into(),
    };
    let client = Client::new();
    until_serving(&client, &fast).await;
    let arms = [
        ("direct", direct_at(KEY_FAST), direct_at(KEY_STREAM)),
        ("floor", bare_at(KEY_FAST), bare_at(KEY_STREAM)),
        ("all-in-one", fast, stream),
    ];
    for (_, plain, _) in &arms {
        client.sequential(plain, 1_000).await;
    }
    let mut plain = vec![Vec::new(); arms.len()];
    let mut first = vec![Vec::new(); arms.len()];
    for _ in 0..n.div_ceil(50) {
        for (i, (_, p, s)) in arms.iter().enumerate() {
            plain[i].extend(client.sequential(p, 500).await);
            for _ in 0..50 {
                first[i].push(client.stream_once(s).await.expect("stream").0);
            }
        }
    }
    let mut base = None;
    for (((name, _, _), mut p), mut f) in arms.iter().zip(plain).zip(first) {
        p.sort_unstable();
        f.sort_unstable();
        let at = |s: &[u64], q| percentile(s, q) as f64 / 1000.0;
        let (p50, p99, f50, f99) = (at(&p, 50.0), at(&p, 99.0), at(&f, 50.0), at(&f, 99.0));
        let (b50, b99, bf50, bf99) = *base.get_or_insert((p50, p99, f50, f99));
        eprintln!(
            "bench: {name}: plain p50 {p50:.1} (+{:.1}) p99 {p99:.1} (+{:.1}) µs; stream first byte p50 {f50:.1} (+{:.1}) p99 {f99:.1} (+{:.1}) µs",
            p50 - b50,
            p99 - b99,
            f50 - bf50,
            f99 - bf99
        );
    }
}

/// `aiproxy dataplane` (pinned to CPU 1) fed by `aiproxy controlplane`
/// (CPU 0), on Redis when `redis`, provisioned against `upstream`.
async fn start_split(
    bin: &std::path::Path,
    upstream: &str,
    redis: bool,
) -> (Process, Process, tempfile::TempDir, [String; 3]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = "bench-node-token-0123456789abcdef".to_string();
    let mut cp_env = vec![
        ("AIPROXY_DATA_DIR", dir.path().display().to_string()),
        ("AIPROXY_ADMIN_PASSWORD", ADMIN_PASSWORD.to_string()),
        ("AIPROXY_ADMIN_LISTEN", "127.0.0.1:0".to_string()),
        ("AIPROXY_GRPC_LISTEN", "127.0.0.1:0".to_string()),
        (
            "AIPROXY_SECRET_KEY",
            "bench-secret-key-0123456789abcdef0123".to_string(),
        ),
        ("AIPROXY_NODE_TOKEN", token.clone()),
        ("AIPROXY_LOG_FORMAT", "json".to_string()),
    ];
    if redis {
        cp_env.push(("AIPROXY_REDIS_URL", "redis://127.0.0.1:6379/".to_string()));
        cp_env.push((
            "AIPROXY_REDIS_NAMESPACE",
            format!("aiproxy-bench-{}", std::process::id()),
        ));
    }
    let cp = spawn_aiproxy(
        bin,
        &["controlplane"],
        &cp_env,
        &["admin", "grpc"],
        dir.path().join("cp.log"),
        0,
    )
    .await;
    let dp_dir = dir.path().join("dp");
    std::fs::create_dir_all(&dp_dir).expect("dp dir");
    let mut dp_env = vec![
        ("AIPROXY_DATA_DIR", dp_dir.display().to_string()),
        ("AIPROXY_CONTROLPLANE_URL", cp.url("grpc")),
        ("AIPROXY_NODE_TOKEN", token),
        ("AIPROXY_NODE_ID", "bench-dp".to_string()),
        ("AIPROXY_PROXY_LISTEN", "127.0.0.1:0".to_string()),
        ("AIPROXY_LOG_FORMAT", "json".to_string()),
    ];
    if redis {
        dp_env.push(("AIPROXY_REDIS_URL", "redis://127.0.0.1:6379/".to_string()));
        dp_env.push((
            "AIPROXY_REDIS_NAMESPACE",
            format!("aiproxy-bench-{}", std::process::id()),
        ));
    }
    let dp = spawn_aiproxy(
        bin,
        &["dataplane"],
        &dp_env,
        &["proxy"],
        dp_dir.join("dp.log"),
        1,
    )
    .await;
    let admin = Admin::login(
        &aiproxy_tests::client::Http::default(),
        &cp.url("admin"),
        "admin",
        ADMIN_PASSWORD,
    )
    .await;
    let keys = provision(&admin, upstream).await;
    (dp, cp, dir, keys)
}

async fn redis_reachable() -> bool {
    tokio::time::timeout(
        Duration::from_millis(300),
        tokio::net::TcpStream::connect("127.0.0.1:6379"),
    )
    .await
    .is_ok_and(|c| c.is_ok())
}

async fn run(args: &[String]) {
    let plan = if args.iter().any(|a| a == "--smoke") {
        SMOKE
    } else {
        FULL
    };
    let bin = aiproxy_binary(args);
    if let Some(secs) = arg_value(args, "--profile") {
        let split = args.iter().any(|a| a == "--split");
        profile(&bin, secs.parse().expect("--profile SECONDS"), true, split).await;
        return;
    }
    if let Some(n) = arg_value(args, "--quick") {
        quick(&bin, n.parse().expect("--quick N")).await;
        return;
    }
    if let Some(secs) = arg_value(args, "--load") {
        let split = args.iter().any(|a| a == "--split");
        profile(&bin, secs.parse().expect("--load SECONDS"), false, split).await;
        return;
    }
    if args.iter().any(|a| a == "--control-only") {
        println!("{}", control::run(plan.smoke, &bin).await);
        return;
    }
    let client = Client::new();
    let (_upstream, up_port) = procs::spawn_helper(&["serve-upstream".into()], Some(0)).await;
    let upstream = format!("http://127.0.0.1:{up_port}");
    let (bare, bare_port) = procs::spawn_helper(
        &["serve-bare".into(), format!("127.0.0.1:{up_port}")],
        Some(1),
    )
    .await;

    let direct_keys = [
        KEY_FAST.to_string(),
        KEY_STREAM.to_string(),
        KEY_HOLD.to_string(),
    ];
    let mut arms = Vec::new();
    let (f, s, h) = targets(&upstream, &direct_keys);
    arms.push(Arm {
        name: "direct".into(),
        fast: f,
        stream: s,
        hold: h,
        pids: vec![],
        redis: None,
        samples: vec![],
        peer: false,
        _keep: Keep::Nothing,
    });
    let (f, s, h) = targets(&format!("http://127.0.0.1:{bare_port}"), &direct_keys);
    let bare_pid = bare.id().expect("bare pid");
    arms.push(Arm {
        name: "bare hyper proxy (floor)".into(),
        fast: f,
        stream: s,
        hold: h,
        pids: vec![bare_pid],
        redis: None,
        samples: vec![],
        peer: false,
        _keep: Keep::Child(bare),
    });

    // aiproxy all-in-one, in-memory state.
    let (p, dir, keys) = start_all_in_one(&bin, &upstream, &[]).await;
    let (f, s, h) = targets(&p.url("proxy"), &keys);
    let pid = p.pid();
    arms.push(Arm {
        name: "aiproxy all-in-one (memory)".into(),
        fast: f,
        stream: s,
        hold: h,
        pids: vec![pid],
        redis: None,
        samples: vec![],
        peer: false,
        _keep: Keep::Processes(vec![p], dir),
    });

    // The same without metrics and access log: what observing costs.
    let quiet = [
        ("AIPROXY_METRICS_LISTEN", "off"),
        ("AIPROXY_ACCESS_LOG", "false"),
    ];
    let (p, dir, keys) = start_all_in_one(&bin, &upstream, &quiet).await;
    let (f, s, h) = targets(&p.url("proxy"), &keys);
    let pid = p.pid();
    arms.push(Arm {
        name: "aiproxy all-in-one, no metrics or access log".into(),
        fast: f,
        stream: s,
        hold: h,
        pids: vec![pid],
        redis: None,
        samples: vec![],
        peer: false,
        _keep: Keep::Processes(vec![p], dir),
    });

    // aiproxy data plane + control plane, with Redis when it is there.
    let redis = redis_reachable().await;
    let (dp, cp, dir, keys) = start_split(&bin, &upstream, redis).await;
    let (f, s, h) = targets(&dp.url("proxy"), &keys);
    let dp_pid = dp.pid();
    let name = if redis {
        "aiproxy data plane + Redis"
    } else {
        "aiproxy data plane (no Redis here)"
    };
    arms.push(Arm {
        name: name.into(),
        fast: f,
        stream: s,
        hold: h,
        pids: vec![dp_pid],
        redis: redis.then(|| "127.0.0.1:6379".to_string()),
        samples: vec![],
        peer: false,
        _keep: Keep::Processes(vec![dp, cp], dir),
    });

    // The optional peer.
    let mut peer_note = String::new();
    if plan.smoke {
        peer_note = "LiteLLM: not run in the smoke run.".into();
    } else {
        let dir = tempfile::tempdir().expect("tempdir");
        match litellm::start(&upstream, dir.path()).await {
            Ok((url, child)) => {
                let pid = child.id().expect("litellm pid");
                let key = litellm::MASTER_KEY.to_string();
                let (f, s, h) = targets(&url, &[key.clone(), key.clone(), key]);
                arms.push(Arm {
                    name: "LiteLLM proxy 1.106.12 (peer)".into(),
                    fast: f,
                    stream: s,
                    hold: h,
                    pids: vec![pid],
                    redis: None,
                    samples: vec![],
                    peer: true,
                    _keep: Keep::PeerProcess(child, dir),
                });
            }
            Err(e) => peer_note = format!("LiteLLM: skipped ({e})."),
        }
    }

    for arm in &arms {
        until_serving(&client, &arm.fast).await;
        client.sequential(&arm.fast, plan.warmup).await;
    }
    // Idle memory of each relay once warm, before the load phases.
    let warm_rss: Vec<u64> = arms
        .iter()
        .map(|a| a.pids.first().map_or(0, |p| procs::rss_kib(*p)))
        .collect();

    // Latency at concurrency 1, arms interleaved block by block.
    let mut rows: Vec<Row> = arms.iter().map(|_| Row::default()).collect();
    let mut redis_delta = vec![(0u64, 0u64); arms.len()];
    for _ in 0..plan.blocks {
        for (i, arm) in arms.iter_mut().enumerate() {
            let before = match &arm.redis {
                Some(r) => procs::redis_calls(r).await,
                None => None,
            };
            let samples = client.sequential(&arm.fast, plan.per_block).await;
            if let (Some(b), Some(r)) = (before, &arm.redis)
                && let Some(after) = procs::redis_calls(r).await
            {
                redis_delta[i].0 += after.saturating_sub(b);
                redis_delta[i].1 += samples.len() as u64;
            }
            arm.samples.extend(samples);
        }
    }
    for (i, arm) in arms.iter_mut().enumerate() {
        arm.samples.sort_unstable();
        rows[i].p50 = percentile(&arm.samples, 50.0);
        rows[i].p99 = percentile(&arm.samples, 99.0);
        rows[i].p999 = percentile(&arm.samples, 99.9);
        if redis_delta[i].1 > 0 {
            rows[i].redis_per_request = Some(redis_delta[i].0 as f64 / redis_delta[i].1 as f64);
        }
    }

    // CPU per request at saturation.
    for (i, arm) in arms.iter().enumerate() {
        if arm.pids.is_empty() {
            continue;
        }
        let before: u64 = arm.pids.iter().map(|p| procs::cpu_us(*p)).sum();
        let sqlite_before = sqlite_writer_us(&arm.pids);
        let total = if arm.peer {
            plan.saturate / 10
        } else {
            plan.saturate
        };
        client.saturate(&arm.fast, 16, total).await;
        let after: u64 = arm.pids.iter().map(|p| procs::cpu_us(*p)).sum();
        rows[i].cpu_us = Some((after - before) as f64 / total as f64);
        let sqlite = sqlite_writer_us(&arm.pids).saturating_sub(sqlite_before);
        rows[i].sqlite_us = (sqlite > 0).then(|| sqlite as f64 / total as f64);
    }

    // Fixed request rates (open loop).
    for (i, arm) in arms.iter().enumerate() {
        for &rate in plan.rates {
            let (mut lat, errors) = client
                .open_loop(&arm.fast, rate, Duration::from_secs_f64(plan.rate_secs))
                .await;
            lat.sort_unstable();
            let p99 = percentile(&lat, 99.0);
            rows[i].rate_p99.push((rate, p99, errors));
            if errors == 0 && p99 < 5_000_000 {
                rows[i].max_rate = Some(rate);
            } else if arm.peer {
                // A peer past its limit only builds a backlog from here on.
                break;
            }
        }
    }

    // Streaming: time to first byte, and every chunk as its own chunk; the
    // arms interleaved in blocks like the latency samples.
    let mut ttfb = vec![Vec::new(); arms.len()];
    let mut ok = vec![true; arms.len()];
    let mut failed = vec![false; arms.len()];
    for _ in 0..plan.blocks {
        for (i, arm) in arms.iter().enumerate() {
            for _ in 0..plan.streams / plan.blocks {
                if failed[i] {
                    break;
                }
                match client.stream_once(&arm.stream).await {
                    Ok((t, chunks)) => {
                        ttfb[i].push(t);
                        ok[i] &= chunks == STREAM_CHUNKS;
                    }
                    Err(e) if arm.peer => {
                        eprintln!("bench: {} stream failed: {e}", arm.name);
                        (ok[i], failed[i]) = (false, true);
                    }
                    Err(e) => panic!("{} stream: {e}", arm.name),
                }
            }
        }
    }
    for (i, mut t) in ttfb.into_iter().enumerate() {
        t.sort_unstable();
        rows[i].ttfb_p50 = percentile(&t, 50.0);
        rows[i].ttfb_p99 = percentile(&t, 99.0);
        rows[i].chunks_ok = ok[i];
    }

    // Memory of the relay processes: idle, then per held-open stream.
    // The earlier phases' keep-alive connections are closed first, so they
    // hold neither descriptors nor memory in the relay.
    drop(client);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut memory = String::new();
    for (arm, warm) in arms
        .iter()
        .zip(&warm_rss)
        .filter(|(a, _)| !a.pids.is_empty() && !a.peer)
    {
        let pid = arm.pids[0];
        let idle = procs::rss_kib(pid);
        let mut cells = vec![
            format!("{} MiB", warm / 1024),
            format!("{} MiB", idle / 1024),
        ];
        for &n in plan.held {
            // Each held stream takes two descriptors in the relay (client and
            // upstream side) and one here; leave room for everything else,
            // and stay under the connection cap the relay fits under the
            // same limit (it keeps 256 descriptors and its admin port's 1,024).
            let room = procs::fd_limit(std::process::id())
                .min(procs::fd_limit(pid))
                .saturating_sub(procs::open_fds(pid) + 1_400)
                / 2;
            let n = n.min(room);
            let client = Client::new();
            let held = client.hold(&arm.hold, n).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let rss = procs::rss_kib(pid);
            cells.push(format!(
                "{:.1} KiB ({n})",
                rss.saturating_sub(idle) as f64 / n as f64
            ));
            drop(held);
            drop(client);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let _ = writeln!(memory, "| {} | {} |", arm.name, cells.join(" | "));
    }

    let control = control::run(plan.smoke, &bin).await;
    let mut report = report(&arms, &rows, &memory, plan, &control);
    // What metrics and the access log cost: the all-in-one with and without.
    let cpu_of = |name: &str| {
        arms.iter()
            .zip(&rows)
            .find(|(a, _)| a.name == name)
            .and_then(|(_, r)| r.cpu_us)
    };
    if let (Some(on), Some(off)) = (
        cpu_of("aiproxy all-in-one (memory)"),
        cpu_of("aiproxy all-in-one, no metrics or access log"),
    ) {
        let _ = writeln!(
            report,
            "\nMetrics and access log: {on:.1} µs of CPU per request with them, {off:.1} µs without ({:+.1} µs).",
            on - off
        );
    }
    // aiproxy's figure is its lower arm's; the floor is not aiproxy.
    let ours = arms
        .iter()
        .zip(&rows)
        .filter(|(a, _)| a.name.starts_with("aiproxy"))
        .map(|(_, r)| r.max_rate)
        .min()
        .flatten();
    let theirs = arms
        .iter()
        .zip(&rows)
        .filter(|(a, _)| a.peer)
        .filter_map(|(_, r)| r.max_rate)
        .max();
    match (ours, theirs) {
        (Some(ours), Some(theirs)) => {
            let _ = writeln!(
                report,
                "\nHighest rate with p99 < 5 ms: aiproxy ≥ {ours}/s, LiteLLM ≥ {theirs}/s ({:.0} ×, bounded by the rates tried).",
                ours as f64 / theirs as f64
            );
        }
        (Some(ours), None) if peer_note.is_empty() => {
            let _ = writeln!(
                report,
                "\nHighest rate with p99 < 5 ms: aiproxy ≥ {ours}/s; LiteLLM stayed under 5 ms at none of the rates tried (the lowest is {}/s).",
                plan.rates[0]
            );
        }
        _ => {}
    }
    if !peer_note.is_empty() {
        let _ = writeln!(report, "\n{peer_note}");
    }
    println!("{report}");
    if let Some(out) = arg_value(args, "--out") {
        std::fs::write(&out, &report).expect("write report");
    }
}

/// CPU time of the SQLite writer threads of `pids`, in microseconds.
fn sqlite_writer_us(pids: &[u32]) -> u64 {
    pids.iter()
        .flat_map(|p| procs::cpu_us_by_thread(*p))
        .filter(|(thread, _)| thread.starts_with("sqlx-sqlite"))
        .map(|(_, us)| us)
        .sum()
}

fn us(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1000.0)
}

fn report(arms: &[Arm], rows: &[Row], memory: &str, plan: Plan, control: &str) -> String {
    let mut out = String::new();
    let direct = &rows[0];
    let floor = &rows[1];
    let added = |r: &Row| {
        (
            r.p50.saturating_sub(direct.p50),
            r.p99.saturating_sub(direct.p99),
            r.p999.saturating_sub(direct.p999),
        )
    };
    let (fa50, fa99, _) = added(floor);
    let _ = writeln!(
        out,
        "### Latency at concurrency 1 ({} requests per arm, {} interleaved blocks)\n",
        plan.blocks * plan.per_block,
        plan.blocks
    );
    let _ = writeln!(
        out,
        "| arm | p50 µs | p99 µs | p99.9 µs | added p50 µs | added p99 µs | added p99.9 µs | added p50 ÷ floor | added p99 ÷ floor | CPU µs/request | of which SQLite writes |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|");
    for (arm, r) in arms.iter().zip(rows) {
        let (a50, a99, a999) = added(r);
        let ratio = |a: u64, f: u64| {
            if f == 0 {
                "–".to_string()
            } else {
                format!("{:.2}", a as f64 / f as f64)
            }
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            arm.name,
            us(r.p50),
            us(r.p99),
            us(r.p999),
            us(a50),
            us(a99),
            us(a999),
            ratio(a50, fa50),
            ratio(a99, fa99),
            r.cpu_us
                .map(|c| format!("{c:.1}"))
                .unwrap_or_else(|| "–".into()),
            r.sqlite_us
                .map(|c| format!("{c:.1}"))
                .unwrap_or_else(|| "–".into())
        );
    }
    let _ = writeln!(
        out,
        "\n### Fixed request rates (open loop, {} s each): p99 µs (errors)\n",
        plan.rate_secs
    );
    let _ = write!(out, "| arm |");
    for rate in plan.rates {
        let _ = write!(out, " {rate}/s |");
    }
    let _ = writeln!(out, " highest rate with p99 < 5 ms |");
    let _ = writeln!(out, "|---|{}---|", "---|".repeat(plan.rates.len()));
    for (arm, r) in arms.iter().zip(rows) {
        let _ = write!(out, "| {} |", arm.name);
        for (_, p99, errors) in &r.rate_p99 {
            let _ = write!(out, " {} ({errors}) |", us(*p99));
        }
        // A peer stops at its first rate over the limit.
        for _ in r.rate_p99.len()..plan.rates.len() {
            let _ = write!(out, " – |");
        }
        let _ = writeln!(
            out,
            " {} |",
            r.max_rate
                .map(|m| format!("≥ {m}/s"))
                .unwrap_or_else(|| "–".into())
        );
    }
    let _ = writeln!(
        out,
        "\n### Streaming ({} streams of {STREAM_CHUNKS} events 5 ms apart, {} interleaved blocks)\n",
        plan.streams / plan.blocks * plan.blocks,
        plan.blocks
    );
    let _ = writeln!(
        out,
        "| arm | time to first byte p50 µs | p99 µs | added p50 µs | added p99 µs | every chunk arrived as sent | Redis round trips per request |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for (arm, r) in arms.iter().zip(rows) {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            arm.name,
            us(r.ttfb_p50),
            us(r.ttfb_p99),
            us(r.ttfb_p50.saturating_sub(direct.ttfb_p50)),
            us(r.ttfb_p99.saturating_sub(direct.ttfb_p99)),
            if r.chunks_ok { "yes" } else { "NO" },
            r.redis_per_request
                .map(|x| format!("{x:.2}"))
                .unwrap_or_else(|| "–".into())
        );
    }
    let _ = writeln!(out, "\n### Memory of the relay process (RSS)\n");
    let _ = write!(
        out,
        "| arm | idle, warmed up | idle, after the load phases |"
    );
    for n in plan.held {
        let _ = write!(out, " per idle stream, {n} open |");
    }
    let _ = writeln!(out, "\n|---|---|---|{}", "---|".repeat(plan.held.len()));
    out.push_str(memory);
    out.push('\n');
    out.push_str(control);
    out
}
