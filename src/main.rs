//! The `aiproxy` binary: all-in-one by default, or one plane of a split deployment.
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use aiproxy_shared::config::{Config, ConfigError, EXIT_CONFIG, METRICS_PORT, Secret};
use aiproxy_shared::state::{MemoryStore, RedisStore, Resilient, StateStore};
use clap::{Parser, Subcommand};

mod ctl;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The release and the commit it was built from.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("AIPROXY_COMMIT"), ")");

#[derive(Parser)]
#[command(
    name = "aiproxy",
    version = VERSION,
    about = "Relay for AI APIs: share a pool of upstream accounts among your users"
)]
struct Cli {
    /// TOML configuration file; AIPROXY_* environment variables override it.
    #[arg(long, global = true, env = "AIPROXY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Top>,
}

#[derive(Subcommand)]
enum Top {
    #[command(flatten)]
    Run(Command),
    /// Exit 0 when `URL` answers 2xx within the timeout, else 1 (a
    /// container health check that needs no shell tools).
    Probe {
        #[arg(default_value = "http://127.0.0.1:8080/readyz")]
        url: String,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Control plane only: database, admin API, gRPC for data planes.
    Controlplane,
    /// Data plane only: the relay, fed by a control plane.
    Dataplane,
    /// Apply database migrations and exit.
    Migrate,
    /// Seal every stored credential again under the current secret key
    /// (`AIPROXY_SECRET_KEY`, or the all-in-one's `data_dir/secret.key`),
    /// opening it with the previous one; run while no control plane is up.
    Reseal {
        /// File holding the previous secret key.
        #[arg(long)]
        previous_key_file: PathBuf,
    },
    /// Operate a running control plane over its management gRPC
    /// (`AIPROXY_CONTROLPLANE_URL`, `AIPROXY_ADMIN_TOKEN` or the token in
    /// the data directory).
    Ctl {
        /// Print JSON instead of a table.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: ctl::CtlCommand,
    },
}

/// mimalloc (without transparent huge pages, which would round every idle
/// arena up to 2 MiB resident): a relay allocates and frees small buffers on
/// every request, and glibc's malloc spends more CPU on that and fragments
/// under many open streams.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match cli.command {
        // Needs no configuration: it runs beside a server, in its container.
        Some(Top::Probe { url, timeout }) => return probe(&url, Duration::from_secs(timeout)),
        Some(Top::Run(command)) => Some(command),
        None => None,
    };
    let mut config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => return config_error(e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("aiproxy: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let service = match command {
        Some(Command::Controlplane) => "aiproxy-controlplane",
        Some(Command::Dataplane) => "aiproxy-dataplane",
        _ => "aiproxy",
    };
    // The trace exporter's client runs on the runtime, which outlives it.
    let _telemetry = {
        let _inside = runtime.enter();
        match aiproxy_shared::telemetry::init(config.log_format, service) {
            Ok(telemetry) => telemetry,
            Err(e) => return config_error(ConfigError::Invalid(e)),
        }
    };
    if !matches!(
        command,
        Some(Command::Ctl { .. } | Command::Migrate | Command::Reseal { .. })
    ) {
        fit_connection_limits(&mut config, command.as_ref());
    }
    let result = match command {
        None => all_in_one(config, &runtime),
        Some(command) => runtime.block_on(async {
            match command {
                Command::Controlplane => controlplane(config).await,
                Command::Dataplane => dataplane(config).await,
                Command::Migrate => migrate(config).await,
                Command::Reseal { previous_key_file } => reseal(config, &previous_key_file).await,
                Command::Ctl { json, command } => ctl::run(config, json, command).await,
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(e)) => config_error(e),
        Err(Failure::Run(e)) => {
            eprintln!("aiproxy: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit of open files to the hard one, then fits the
/// connection caps under it (a proxy connection may hold an upstream one
/// too), so running out of descriptors is a refused connection, never a
/// stalled accept.
fn fit_connection_limits(config: &mut Config, command: Option<&Command>) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if let (Some(current), Some(hard)) = (limit.current, limit.maximum)
        && current < hard
    {
        limit.current = Some(hard);
        if setrlimit(Resource::Nofile, limit).is_err() {
            limit = getrlimit(Resource::Nofile);
        }
    }
    let Some(files) = limit.current else {
        return;
    };
    let files = usize::try_from(files).unwrap_or(usize::MAX);
    // Database, Redis, gRPC, journal and the like.
    let room = files.saturating_sub(256.min(files / 4));
    let server = &mut config.server;
    let (proxy, admin) = match command {
        Some(Command::Controlplane) => (0, server.admin_max_connections),
        Some(Command::Dataplane) => (server.max_connections, 0),
        _ => (server.max_connections, server.admin_max_connections),
    };
    if 2 * proxy + admin <= room {
        return;
    }
    let admin_fit = admin.min(room / 4).max(1);
    let proxy_fit = (room.saturating_sub(admin_fit) / 2).max(1);
    tracing::warn!(
        open_files = files,
        max_connections = proxy_fit.min(proxy),
        admin_max_connections = admin_fit,
        "the open-file limit is low: connection limits lowered to fit it (raise `ulimit -n`)"
    );
    server.max_connections = server.max_connections.min(proxy_fit);
    server.admin_max_connections = server.admin_max_connections.min(admin_fit);
}

/// An error and its causes on one line, each said once: many errors
/// already include their source's message in their own.
fn describe(e: &anyhow::Error) -> String {
    let mut said = String::new();
    for cause in e.chain() {
        let message = cause.to_string();
        if said.contains(&message) {
            continue;
        }
        if !said.is_empty() {
            said.push_str(": ");
        }
        said.push_str(&message);
    }
    said
}

enum Failure {
    Config(ConfigError),
    Run(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Run(e.into())
    }
}

fn config_error(e: ConfigError) -> ExitCode {
    eprintln!("aiproxy: configuration error: {e}");
    ExitCode::from(EXIT_CONFIG as u8)
}

/// Redis when configured (with a node-local fallback while it is away),
/// else this process's memory.
fn state_store(config: &Config) -> Result<Arc<dyn StateStore>, Failure> {
    let Some(url) = &config.redis_url else {
        return Ok(Arc::new(MemoryStore::default()));
    };
    let ca = config
        .redis_ca
        .as_deref()
        .map(Config::read_pem)
        .transpose()
        .map_err(Failure::Config)?;
    let redis = RedisStore::open(
        url.expose(),
        ca,
        &config.redis_namespace,
        Duration::from_millis(config.cache.redis_timeout_ms),
    )
    .map_err(|e| Failure::Config(ConfigError::Invalid(format!("AIPROXY_REDIS_URL: {e}"))))?;
    Ok(Arc::new(Resilient::new(redis)))
}

fn controlplane_settings(
    config: &Config,
    secret_key: Secret,
    node_token: Secret,
    state: Arc<dyn StateStore>,
    metrics: Arc<aiproxy_controlplane::metrics::Metrics>,
) -> Result<aiproxy_controlplane::Settings, Failure> {
    let admin_token = match &config.admin_token {
        Some(t) => t.clone(),
        None => load_or_create_secret(
            &config.data_dir.join(ctl::ADMIN_TOKEN_FILE),
            "management token",
        )?,
    };
    let apply_document = match &config.apply_file {
        Some(path) => Some(ctl::read_document(path, &|name| std::env::var(name).ok())?),
        None => None,
    };
    Ok(aiproxy_controlplane::Settings {
        metrics,
        admin_token,
        apply_document,
        database_url: config.database_url(),
        database_pool_size: config.database_pool_size,
        secret_key,
        node_token,
        node_token_previous: config.node_token_previous.clone(),
        admin_password: config.admin_password.clone(),
        jwt_expire_hours: config.jwt.expire_hours,
        admin_listen: config.listen.admin,
        admin_limits: config.limits(config.server.admin_max_connections),
        trusted_proxies: config.trusted_proxies().map_err(Failure::Config)?,
        max_password_checks: config.server.max_password_checks,
        grpc_listen: config.listen.grpc,
        grpc_tls: match (&config.grpc_tls_cert, &config.grpc_tls_key) {
            (Some(cert), Some(key)) => Some(aiproxy_controlplane::GrpcTls {
                cert_pem: Config::read_pem(cert).map_err(Failure::Config)?,
                key_pem: Config::read_pem(key).map_err(Failure::Config)?,
            }),
            _ => None,
        },
        setting_defaults: aiproxy_controlplane::settings::Defaults {
            request_timeout_secs: config.proxy.timeout,
            session_ttl_secs: config.cache.session_ttl,
            concurrency_ttl_secs: config.cache.concurrency_ttl,
            unavailable_ttl_secs: config.cache.unavailable_ttl,
            wait_timeout_secs: config.cache.wait_timeout,
        },
        oauth: config.oauth.clone(),
        state,
        billing_tz: config.billing_tz(),
    })
}

fn dataplane_settings(
    config: &Config,
    controlplane_url: String,
    controlplane_ca: Option<Vec<u8>>,
    node_token: Secret,
    state: Arc<dyn StateStore>,
    default_drain_delay: u64,
    metrics: Arc<aiproxy_dataplane::metrics::Metrics>,
) -> aiproxy_dataplane::Settings {
    let server = &config.server;
    aiproxy_dataplane::Settings {
        max_body_bytes_in_flight: server.max_body_bytes_in_flight,
        body_read_timeout: Duration::from_secs(server.body_read_timeout),
        server: aiproxy_dataplane::server::ServerSettings {
            limits: config.limits(server.max_connections),
            drain_delay: Duration::from_secs(server.drain_delay.unwrap_or(default_drain_delay)),
            drain_grace: Duration::from_secs(server.drain_grace),
            max_snapshot_age: (server.max_snapshot_age > 0)
                .then(|| Duration::from_secs(server.max_snapshot_age)),
        },
        controlplane_url,
        controlplane_ca,
        node_token,
        node_id: config.node_id.clone().unwrap_or_else(default_node_id),
        proxy_listen: config.listen.proxy,
        spool_dir: config.data_dir.join("spool"),
        journal_max_bytes: config.proxy.journal_max_bytes,
        proxy_timeout: config.proxy_timeout(),
        idle_timeout: Duration::from_secs(config.proxy.idle_timeout),
        connect_timeout: Duration::from_secs(config.proxy.connect_timeout),
        max_attempts: config.proxy.max_attempts as usize,
        max_body_bytes: config.proxy.max_body_bytes,
        scheduling: aiproxy_dataplane::scheduler::SchedulerSettings {
            lease_ttl: Duration::from_secs(config.cache.concurrency_ttl),
            session_ttl: Duration::from_secs(config.cache.session_ttl),
            wait_timeout: Duration::from_secs(config.cache.wait_timeout),
            unavailable_cap: Duration::from_secs(config.cache.unavailable_ttl),
        },
        state,
        metrics,
        access_log: config.access_log,
        build: VERSION.to_string(),
    }
}

/// Both planes in one process, each on its own runtime: the control plane's
/// batches (usage ingestion, snapshots) run on threads of lower priority, so
/// the kernel preempts them for requests instead of queueing requests
/// behind them on a shared worker.
fn all_in_one(config: Config, runtime: &tokio::runtime::Runtime) -> Result<(), Failure> {
    if config.grpc_tls_cert.is_some() {
        return Err(Failure::Config(ConfigError::Invalid(
            "AIPROXY_GRPC_TLS_CERT is for `aiproxy controlplane`: the all-in-one's gRPC link never leaves this host".into(),
        )));
    }
    ensure_dir(&config.data_dir)?;
    let secret_key = match &config.secret_key {
        Some(k) => k.clone(),
        None => load_or_create_secret(&config.data_dir.join("secret.key"), "secret key")?,
    };
    // Both planes live in this process, so a fresh token per start is enough.
    let node_token = config
        .node_token
        .clone()
        .unwrap_or_else(|| Secret::new(aiproxy_shared::keys::random_hex(32)));

    // One store for both planes: the admin views see what the relay does.
    // Its connection is driven by the data plane's runtime; the control
    // plane's runtime calls it through the same handle.
    let state = {
        let _entered = runtime.enter();
        state_store(&config)?
    };
    let control = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("aiproxy-control")
        .on_thread_start(background_priority)
        .enable_all()
        .build()?;
    let cp_cancel = CancellationToken::new();
    let cp_tasks = TaskTracker::new();
    // Started on a control worker, not this thread, so the threads it
    // starts (SQLite's writer among them) inherit the lower priority.
    let mut registry = metrics_registry();
    let cp_metrics = Arc::new(aiproxy_controlplane::metrics::Metrics::default());
    cp_metrics.register(&mut registry);
    let settings = controlplane_settings(
        &config,
        secret_key,
        node_token.clone(),
        state.clone(),
        cp_metrics,
    )?;
    let (cancel, tracker) = (cp_cancel.clone(), cp_tasks.clone());
    let cp =
        control
            .block_on(control.spawn(async move {
                aiproxy_controlplane::start(settings, cancel, &tracker).await
            }))
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
    announce("admin", cp.admin_addr);
    announce("grpc", cp.grpc_addr);
    registry.register_collector(Box::new(cp.holdings.clone()));

    let served = runtime.block_on(async {
        let dp_cancel = CancellationToken::new();
        let dp_tasks = TaskTracker::new();
        let url = format!("http://{}", loopback_if_unspecified(cp.grpc_addr));
        let metrics_at = config
            .metrics_listen(METRICS_PORT)
            .map_err(Failure::Config)?;
        let metrics = Arc::new(dataplane_metrics(metrics_at));
        metrics.register(&mut registry);
        let dp = aiproxy_dataplane::start(
            dataplane_settings(&config, url, None, node_token, state, 0, metrics),
            dp_cancel.clone(),
            &dp_tasks,
        )
        .await?;
        registry.register_collector(Box::new(dp.holdings));
        serve_metrics(metrics_at, registry, &dp_cancel, &dp_tasks).await?;
        announce("proxy", dp.proxy_addr);

        aiproxy_shared::shutdown::signal().await;
        tracing::info!("shutting down: draining the data plane, then the control plane");
        dp_cancel.cancel();
        dp_tasks.close();
        dp_tasks.wait().await;
        Ok::<_, Failure>(())
    });
    cp_cancel.cancel();
    cp_tasks.close();
    control.block_on(async {
        cp_tasks.wait().await;
        cp.store.close().await;
    });
    served
}

/// Lowers the calling thread's scheduling priority (Linux nice values are
/// per thread, and threads it starts inherit it, SQLite's writer included).
fn background_priority() {
    if let Err(e) = rustix::process::setpriority_process(None, BACKGROUND_NICE) {
        tracing::debug!(error = %e, "could not lower the control plane's priority");
    }
}

/// Seconds `aiproxy dataplane` keeps accepting after SIGTERM while its
/// readiness fails, unless `server.drain_delay` says otherwise.
const DATAPLANE_DRAIN_DELAY: u64 = 5;

/// Nice value of the all-in-one's control-plane threads.
const BACKGROUND_NICE: i32 = 5;

async fn controlplane(config: Config) -> Result<(), Failure> {
    let secret_key = Config::require(&config.secret_key, "AIPROXY_SECRET_KEY", "controlplane")
        .map_err(Failure::Config)?
        .clone();
    let node_token = Config::require(&config.node_token, "AIPROXY_NODE_TOKEN", "controlplane")
        .map_err(Failure::Config)?
        .clone();
    // The data dir holds SQLite (when used) and the generated management token.
    ensure_dir(&config.data_dir)?;
    if config.redis_url.is_none() {
        tracing::warn!(
            "AIPROXY_REDIS_URL is not set: data planes keep their scheduling state to themselves and the cache views here stay empty"
        );
    }
    let state = state_store(&config)?;
    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();
    let mut registry = metrics_registry();
    let metrics = Arc::new(aiproxy_controlplane::metrics::Metrics::default());
    metrics.register(&mut registry);
    let cp = aiproxy_controlplane::start(
        controlplane_settings(&config, secret_key, node_token, state, metrics)?,
        cancel.clone(),
        &tasks,
    )
    .await?;
    announce("admin", cp.admin_addr);
    announce("grpc", cp.grpc_addr);
    registry.register_collector(Box::new(cp.holdings.clone()));
    let metrics_at = config
        .metrics_listen(METRICS_PORT)
        .map_err(Failure::Config)?;
    serve_metrics(metrics_at, registry, &cancel, &tasks).await?;
    aiproxy_shared::shutdown::signal().await;
    cancel.cancel();
    tasks.close();
    tasks.wait().await;
    cp.store.close().await;
    Ok(())
}

async fn dataplane(config: Config) -> Result<(), Failure> {
    let node_token = Config::require(&config.node_token, "AIPROXY_NODE_TOKEN", "dataplane")
        .map_err(Failure::Config)?
        .clone();
    let url = config.controlplane_url.clone().ok_or_else(|| {
        Failure::Config(ConfigError::Invalid(
            "AIPROXY_CONTROLPLANE_URL is not set: `aiproxy dataplane` needs the control plane's gRPC address (e.g. http://10.0.0.5:9090)".into(),
        ))
    })?;
    ensure_dir(&config.data_dir)?;
    if config.redis_url.is_none() {
        tracing::warn!(
            "AIPROXY_REDIS_URL is not set: stickiness, concurrency and rate limits are this node's alone"
        );
    }
    let ca = config
        .grpc_ca
        .as_deref()
        .map(Config::read_pem)
        .transpose()
        .map_err(Failure::Config)?;
    let state = state_store(&config)?;
    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();
    let mut registry = metrics_registry();
    let metrics_at = config
        .metrics_listen(METRICS_PORT + 1)
        .map_err(Failure::Config)?;
    let metrics = Arc::new(dataplane_metrics(metrics_at));
    metrics.register(&mut registry);
    let dp = aiproxy_dataplane::start(
        dataplane_settings(
            &config,
            url,
            ca,
            node_token,
            state,
            DATAPLANE_DRAIN_DELAY,
            metrics,
        ),
        cancel.clone(),
        &tasks,
    )
    .await?;
    registry.register_collector(Box::new(dp.holdings));
    serve_metrics(metrics_at, registry, &cancel, &tasks).await?;
    announce("proxy", dp.proxy_addr);
    aiproxy_shared::shutdown::signal().await;
    cancel.cancel();
    tasks.close();
    tasks.wait().await;
    Ok(())
}

async fn migrate(config: Config) -> Result<(), Failure> {
    if config.database_url.is_none() {
        ensure_dir(&config.data_dir)?;
    }
    let store =
        aiproxy_controlplane::migrate(&config.database_url(), config.database_pool_size).await?;
    store.close().await;
    println!("aiproxy: migrations applied");
    Ok(())
}

async fn reseal(config: Config, previous_key_file: &Path) -> Result<(), Failure> {
    use aiproxy_controlplane::crypto::Sealer;
    // A key that is missing or unreadable is a configuration mistake.
    let read_key = |path: &Path| -> Result<String, Failure> {
        match read_secret(path, "secret key") {
            Ok(Some(key)) => Ok(key.expose().to_string()),
            Ok(None) => Err(Failure::Config(ConfigError::Invalid(format!(
                "{} does not exist",
                path.display()
            )))),
            Err(e) => Err(Failure::Config(ConfigError::Invalid(e.to_string()))),
        }
    };
    let current = match &config.secret_key {
        Some(key) => key.expose().to_string(),
        None => read_key(&config.data_dir.join("secret.key"))?,
    };
    let previous = read_key(previous_key_file)?;
    if previous == current {
        return Err(Failure::Config(ConfigError::Invalid(
            "the previous secret key is the current one: set the new key first".into(),
        )));
    }
    let store =
        aiproxy_controlplane::migrate(&config.database_url(), config.database_pool_size).await?;
    let done = aiproxy_controlplane::reseal::reseal(
        &store,
        &Sealer::new(&previous),
        &Sealer::new(&current),
    )
    .await;
    store.close().await;
    let done = done?;
    println!(
        "aiproxy: {} accounts sealed under the current key, {} already were, {} left as they are",
        done.moved.len(),
        done.current.len(),
        done.failed.len()
    );
    if done.failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::Run(anyhow::anyhow!(
            "accounts {:?} could not be sealed again (see above)",
            done.failed
        )))
    }
}

/// The relay's metrics, recording nothing when no listener serves them.
fn dataplane_metrics(at: Option<SocketAddr>) -> aiproxy_dataplane::metrics::Metrics {
    match at {
        Some(_) => aiproxy_dataplane::metrics::Metrics::default(),
        None => aiproxy_dataplane::metrics::Metrics::off(),
    }
}

/// Every metric's name starts `aiproxy_`.
fn metrics_registry() -> prometheus_client::registry::Registry {
    prometheus_client::registry::Registry::with_prefix("aiproxy")
}

/// Serves `registry` at `at` until `cancel`; nothing when metrics are off.
async fn serve_metrics(
    at: Option<SocketAddr>,
    registry: prometheus_client::registry::Registry,
    cancel: &CancellationToken,
    tasks: &TaskTracker,
) -> Result<(), Failure> {
    let Some(addr) = at else {
        return Ok(());
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for metrics on {addr}: {e}"))?;
    announce("metrics", listener.local_addr()?);
    tasks.spawn(aiproxy_shared::metrics::serve(
        listener,
        Arc::new(registry),
        cancel.clone(),
    ));
    Ok(())
}

/// One stdout line per listener, which scripts and tests read.
fn announce(what: &str, addr: SocketAddr) {
    println!("aiproxy: {what} listening on {addr}");
}

fn loopback_if_unspecified(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
    } else {
        addr
    }
}

fn default_node_id() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into())
}

/// The data directory holds secrets, the database and the usage journal:
/// it is made (or narrowed to) 0700.
fn ensure_dir(dir: &Path) -> anyhow::Result<()> {
    aiproxy_shared::fs::private_dir(dir)
        .map_err(|e| anyhow::anyhow!("cannot create data directory {}: {e}", dir.display()))
}

/// A secret kept in a file, trimmed; `None` when the file does not exist.
fn read_secret(path: &Path, what: &str) -> anyhow::Result<Option<Secret>> {
    match std::fs::read_to_string(path) {
        Ok(s) if s.trim().len() >= aiproxy_shared::config::MIN_SECRET_KEY_LEN => {
            Ok(Some(Secret::new(s.trim())))
        }
        Ok(_) => anyhow::bail!("{} is too short to be a {what}", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
    }
}

/// A secret read from the data dir, or created there with mode 0600.
fn load_or_create_secret(path: &Path, what: &str) -> anyhow::Result<Secret> {
    if let Some(secret) = read_secret(path, what)? {
        return Ok(secret);
    }
    let key = aiproxy_shared::keys::random_hex(32);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
    std::io::Write::write_all(&mut file, key.as_bytes())?;
    file.sync_all()?;
    if what == "secret key" {
        tracing::info!(path = %path.display(), "generated a new secret key; back it up, credentials cannot be read without it");
    } else {
        tracing::info!(path = %path.display(), "generated a new {what}");
    }
    Ok(Secret::new(key))
}

/// `aiproxy probe`: one GET, its status decides the exit code.
fn probe(url: &str, timeout: Duration) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("probe: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
        let request = http::Request::get(uri)
            .body(http_body_util::Full::default())
            .map_err(|e| e.to_string())?;
        let client = aiproxy_shared::http::client(timeout);
        let response = tokio::time::timeout(timeout, client.request(request))
            .await
            .map_err(|_| format!("{url}: no answer within {}s", timeout.as_secs()))?
            .map_err(|e| format!("{url}: {e}"))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("{url}: {status}"))
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("probe: {why}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_error_chain_says_each_cause_once() {
        let inner = std::io::Error::other("access denied");
        let e = anyhow::Error::new(inner)
            .context("database error: access denied")
            .context("database");
        assert_eq!(
            super::describe(&e),
            "database: database error: access denied"
        );
    }
}
