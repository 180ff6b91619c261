//! The control plane's side: usage records ingested per second into SQLite
//! and MariaDB, and the snapshot of a big deployment (10,000 accounts,
//! 100,000 keys) built, applied, and held by a data plane.
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use aiproxy_controlplane::crypto::Sealer;
use aiproxy_controlplane::publisher::Publisher;
use aiproxy_controlplane::store::{NewAccount, NewApiKey, NewUser, Store, UsageRow};
use rust_decimal::Decimal;

const BATCH: usize = 500;
const SECRET: &str = "bench-secret-key-0123456789abcdef0123";

async fn seeded(store: &Store) -> (i64, i64, i64) {
    let user = store
        .create_user(&NewUser {
            username: "ingest".into(),
            password_hash: "x".into(),
            role: aiproxy_shared::domain::Role::User,
            price_rate: Decimal::ONE,
            email: None,
            max_concurrency: 0,
        })
        .await
        .expect("user");
    let key = store
        .create_api_key(&NewApiKey {
            user_id: user.id,
            name: "k".into(),
            key_hash: "ab".repeat(32),
            key_prefix: "sk-aiproxy-bench".into(),
            billing_type: aiproxy_shared::domain::BillingType::Package,
            cost_limit: None,
            rate_limit: 0,
            allowed_models: Vec::new(),
            max_concurrency: 0,
            client_filter: None,
            allowed_clients: Vec::new(),
            expires_at: None,
        })
        .await
        .expect("key");
    let account = store
        .create_account(&NewAccount {
            name: "a".into(),
            kind: aiproxy_shared::domain::AccountKind::ClaudeApi,
            credentials_sealed: Sealer::new(SECRET).seal(br#"{"api_key":"k"}"#),
            base_url: None,
            proxy_sealed: None,
            priority: 1,
            max_concurrency: 0,
            weight: 1,
            bound_api_key_ids: Vec::new(),
            bound_user_ids: Vec::new(),
            enabled: true,
        })
        .await
        .expect("account");
    (user.id, key.id, account.id)
}

/// Records per second through `Store::ingest_usage`, in batches as nodes send them.
async fn ingestion(store: &Store, records: usize) -> f64 {
    store.migrate().await.expect("migrate");
    let (user, key, account) = seeded(store).await;
    let now = chrono::Utc::now();
    let rows: Vec<UsageRow> = (0..records)
        .map(|i| UsageRow {
            request_id: format!("bench-{i:012}"),
            user_id: user,
            api_key_id: key,
            account_id: Some(account),
            node_id: "bench".into(),
            model: "claude-sonnet-4-5".into(),
            platform: "anthropic".into(),
            endpoint: "/v1/messages".into(),
            status_code: 200,
            tokens: aiproxy_shared::pricing::TokenUsage {
                input: 25,
                output: 15,
                cache_creation: 100,
                cache_creation_1h: 60,
                cache_read: 2000,
            },
            upstream_cost: Decimal::new(141, 5),
            cost: Decimal::new(141, 5),
            price_version: 1,
            duration_ms: 10,
            ttfb_ms: 2,
            stream: false,
            session_hash: String::new(),
            error_class: String::new(),
            usage_source: "reported".into(),
            created_at: now,
            package_id: None,
            upstream_request_id: String::new(),
        })
        .collect();
    let tz = chrono::FixedOffset::east_opt(0).expect("UTC");
    let started = Instant::now();
    for batch in rows.chunks(BATCH) {
        store.ingest_usage(batch, tz).await.expect("ingest");
    }
    records as f64 / started.elapsed().as_secs_f64()
}

/// A MariaDB database for the run, when one answers.
async fn mariadb() -> Option<(String, String)> {
    let admin = std::env::var("AIPROXY_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
    use sqlx::Connection;
    let mut conn = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::MySqlConnection::connect(&admin),
    )
    .await
    .ok()?
    .ok()?;
    let name = format!("aiproxy_bench_{}", std::process::id());
    sqlx::raw_sql(&format!(
        "DROP DATABASE IF EXISTS `{name}`; CREATE DATABASE `{name}`"
    ))
    .execute(&mut conn)
    .await
    .ok()?;
    let base = admin
        .rsplit_once('/')
        .map(|(b, _)| b)
        .unwrap_or(&admin)
        .to_string();
    Some((format!("{base}/{name}"), admin))
}

async fn drop_mariadb(admin: &str, url: &str) {
    use sqlx::Connection;
    if let (Ok(mut conn), Some((_, name))) = (
        sqlx::MySqlConnection::connect(admin).await,
        url.rsplit_once('/'),
    ) {
        let _ = sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS `{name}`"))
            .execute(&mut conn)
            .await;
    }
}

/// Fills a migrated SQLite database with `accounts` accounts and `keys` keys.
async fn fill(path: &std::path::Path, accounts: usize, keys: usize) {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("sqlite");
    let sealed = Sealer::new(SECRET).seal(br#"{"api_key":"sk-ant-bench"}"#);
    let now = chrono::Utc::now();
    let mut tx = conn.begin().await.expect("tx");
    sqlx::query("INSERT INTO users (username, password_hash, role, status, price_rate, created_at, updated_at) VALUES ('many', 'x', 'user', 'active', 10000000000, ?, ?)")
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await
        .expect("user");
    let user: i64 = sqlx::query_scalar("SELECT MAX(id) FROM users")
        .fetch_one(&mut *tx)
        .await
        .expect("id");
    for i in 0..accounts {
        sqlx::query("INSERT INTO accounts (name, type, enabled, status, credentials, priority, created_at, updated_at) VALUES (?, 'claude-api', 1, 'valid', ?, ?, ?, ?)")
            .bind(format!("account-{i}"))
            .bind(&sealed)
            .bind((i % 5) as i64)
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await
            .expect("account");
    }
    for i in 0..keys {
        sqlx::query("INSERT INTO api_keys (user_id, name, key_hash, key_prefix, created_at, updated_at) VALUES (?, ?, ?, 'sk-aiproxy-bench', ?, ?)")
            .bind(user)
            .bind(format!("key-{i}"))
            .bind(format!("{i:064x}"))
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await
            .expect("key");
    }
    sqlx::query("UPDATE snapshot_version SET version = version + 1 WHERE id = 1")
        .execute(&mut *tx)
        .await
        .expect("version");
    tx.commit().await.expect("commit");
}

pub async fn run(smoke: bool, bin: &std::path::Path) -> String {
    let mut out = String::new();
    let records = if smoke { 1_000 } else { 50_000 };
    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite = Store::connect(&format!(
        "sqlite://{}",
        dir.path().join("ingest.db").display()
    ))
    .await
    .expect("sqlite");
    let sqlite_rate = ingestion(&sqlite, records).await;
    let maria_rate = match mariadb().await {
        Some((url, admin)) => {
            let store = Store::connect(&url).await.expect("mariadb");
            let rate = ingestion(&store, records).await;
            store.close().await;
            drop_mariadb(&admin, &url).await;
            format!("{rate:.0}")
        }
        None => "not run (no MariaDB)".into(),
    };
    let _ = writeln!(out, "### Control plane\n");
    let _ = writeln!(out, "| measure | value |\n|---|---|");
    let _ = writeln!(
        out,
        "| usage records ingested per second, SQLite ({records} in batches of {BATCH}) | {sqlite_rate:.0} |"
    );
    let _ = writeln!(
        out,
        "| usage records ingested per second, MariaDB ({records} in batches of {BATCH}) | {maria_rate} |"
    );

    let (accounts, keys) = if smoke {
        (100, 1_000)
    } else {
        (10_000, 100_000)
    };
    let db = dir.path().join("big.db");
    let store = Store::connect(&format!("sqlite://{}", db.display()))
        .await
        .expect("sqlite");
    store.migrate().await.expect("migrate");
    fill(&db, accounts, keys).await;
    let publisher = Publisher::new(
        store.clone(),
        Sealer::new(SECRET),
        Default::default(),
        0,
        Default::default(),
    );
    let started = Instant::now();
    publisher.refresh().await.expect("build");
    let build = started.elapsed();
    let snapshot = publisher.subscribe().borrow().clone().expect("snapshot");
    let wire = prost::Message::encoded_len(&*snapshot);
    let owned = (*snapshot).clone();
    // What the snapshot's settings go over on a node.
    let configured = aiproxy_dataplane::settings::Effective::configured(
        Duration::from_secs(600),
        &aiproxy_dataplane::scheduler::SchedulerSettings {
            lease_ttl: Duration::from_secs(300),
            session_ttl: Duration::from_secs(3600),
            wait_timeout: Duration::from_secs(30),
            unavailable_cap: Duration::from_secs(300),
        },
    );
    let started = Instant::now();
    let (applied, problems) = aiproxy_dataplane::snapshot::Snapshot::from_proto(owned, &configured);
    assert!(problems.is_empty(), "{problems:?}");
    let apply = started.elapsed();
    assert_eq!(applied.keys.len(), keys);
    store.close().await;
    let rss = data_plane_rss(bin, &db, dir.path(), accounts).await;
    let _ = writeln!(
        out,
        "| snapshot of {accounts} accounts + {keys} keys: built (store → protobuf) | {} ms |",
        build.as_millis()
    );
    let _ = writeln!(
        out,
        "| … applied by a data plane (validated and indexed) | {} ms |",
        apply.as_millis()
    );
    let _ = writeln!(
        out,
        "| … size on the wire | {:.1} MiB |",
        wire as f64 / (1 << 20) as f64
    );
    let _ = writeln!(out, "| … data-plane RSS holding it | {rss} |");
    out
}

/// RSS of a real data plane fed that database by a real control plane.
async fn data_plane_rss(
    bin: &std::path::Path,
    db: &std::path::Path,
    dir: &std::path::Path,
    accounts: usize,
) -> String {
    use aiproxy_tests::harness::Process;
    let token = "bench-node-token-0123456789abcdef".to_string();
    let cp = Process::spawn(
        bin,
        &["controlplane"],
        &[
            ("AIPROXY_DATABASE_URL", format!("sqlite://{}", db.display())),
            ("AIPROXY_DATA_DIR", dir.display().to_string()),
            ("AIPROXY_ADMIN_LISTEN", "127.0.0.1:0".into()),
            ("AIPROXY_GRPC_LISTEN", "127.0.0.1:0".into()),
            ("AIPROXY_SECRET_KEY", SECRET.into()),
            ("AIPROXY_NODE_TOKEN", token.clone()),
            ("AIPROXY_ADMIN_PASSWORD", "bench-admin-password".into()),
        ],
        &["admin", "grpc"],
        dir.join("big-cp.log"),
    )
    .await;
    let dp_dir = dir.join("big-dp");
    std::fs::create_dir_all(&dp_dir).expect("dir");
    let dp = Process::spawn(
        bin,
        &["dataplane"],
        &[
            ("AIPROXY_CONTROLPLANE_URL", cp.url("grpc")),
            ("AIPROXY_NODE_TOKEN", token),
            ("AIPROXY_DATA_DIR", dp_dir.display().to_string()),
            ("AIPROXY_PROXY_LISTEN", "127.0.0.1:0".into()),
            ("AIPROXY_LOG_FORMAT", "json".into()),
        ],
        &["proxy"],
        dp_dir.join("dp.log"),
    )
    .await;
    let wanted = format!("\"accounts\":{accounts}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dp
        .log_text()
        .lines()
        .any(|l| l.contains("snapshot applied") && l.contains(&wanted))
    {
        if Instant::now() > deadline {
            return "not measured (snapshot not applied in 60 s)".into();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = crate::procs::rss_kib(dp.pid());
    dp.kill().await;
    cp.kill().await;
    format!("{:.0} MiB", rss as f64 / 1024.0)
}
