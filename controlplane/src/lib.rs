//! aiproxy control plane: owns the database, the admin API, the snapshot
//! publisher and usage ingestion, and serves data-plane nodes over gRPC.
#![forbid(unsafe_code)]

pub mod api;
pub mod console;
pub mod crypto;
pub mod grpc;
pub mod health;
pub mod jobs;
pub mod manage;
pub mod metrics;
pub mod oauth;
pub mod publisher;
pub mod reseal;
pub mod service;
pub mod settings;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use aiproxy_shared::config::Secret;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::crypto::{JwtKeys, Sealer, hash_password};
use crate::publisher::Publisher;
use crate::store::{NewUser, Store, StoreError};

/// What the control plane needs to start.
#[derive(Clone)]
pub struct Settings {
    pub database_url: String,
    /// Most connections to the database (0: the backend's default).
    pub database_pool_size: u32,
    pub secret_key: Secret,
    pub node_token: Secret,
    /// Also admitted while data planes move to a new node token.
    pub node_token_previous: Option<Secret>,
    /// Admin-scoped token of the management gRPC service.
    pub admin_token: Secret,
    /// Declarative configuration to apply at start (see `POST /api/v1/apply`).
    pub apply_document: Option<serde_json::Value>,
    pub admin_password: Option<Secret>,
    pub jwt_expire_hours: u64,
    pub admin_listen: SocketAddr,
    /// Connection limits of the admin port.
    pub admin_limits: aiproxy_shared::serve::Limits,
    /// Proxies whose `X-Forwarded-For` names the client on the admin port.
    pub trusted_proxies: Vec<aiproxy_shared::net::Cidr>,
    /// Password checks running at once.
    pub max_password_checks: usize,
    pub grpc_listen: SocketAddr,
    /// Defaults of the runtime settings (`/api/v1/settings` overrides them).
    pub setting_defaults: settings::Defaults,
    pub oauth: aiproxy_shared::config::OAuthSettings,
    /// The scheduling state the data planes share (Redis, or the embedded
    /// data plane's memory).
    pub state: std::sync::Arc<dyn aiproxy_shared::state::StateStore>,
    /// The zone package periods reset in and daily usage is counted in.
    pub billing_tz: chrono::FixedOffset,
    /// Certificate chain and key (PEM) the gRPC port serves TLS with.
    pub grpc_tls: Option<GrpcTls>,
    /// Counters and histograms the control plane's work updates.
    pub metrics: std::sync::Arc<metrics::Metrics>,
}

/// The gRPC port's TLS identity, as PEM.
#[derive(Clone)]
pub struct GrpcTls {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot create the admin user: {0}")]
    Bootstrap(String),
    #[error("the declarative configuration was not applied: {0}")]
    Apply(String),
    #[error("gRPC TLS: {0}")]
    Tls(String),
}

/// A running control plane.
pub struct ControlPlane {
    pub admin_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub store: Store,
    /// What it holds, for the metrics listener to read at each scrape.
    pub holdings: metrics::Holdings,
}

/// Connects and migrates the database only (`aiproxy migrate`).
pub async fn migrate(database_url: &str, pool_size: u32) -> Result<Store, StartError> {
    let store = Store::connect_sized(database_url, pool_size).await?;
    store.migrate().await?;
    store.backfill_username_keys().await?;
    store.seed_prices_if_empty().await?;
    Ok(store)
}

/// Starts the admin API, the gRPC service and the publisher; they stop when
/// `cancel` fires, and `tracker` waits for them to drain.
pub async fn start(
    settings: Settings,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> Result<ControlPlane, StartError> {
    let store = migrate(&settings.database_url, settings.database_pool_size).await?;
    bootstrap_admin(&store, settings.admin_password.as_ref()).await?;

    let sealer = Sealer::new(settings.secret_key.expose());
    seal_what_earlier_versions_kept_in_clear(&store, &sealer).await?;
    let jwt = JwtKeys::new(settings.secret_key.expose(), settings.jwt_expire_hours);
    let publisher = Publisher::new(
        store.clone(),
        sealer.clone(),
        settings.setting_defaults.clone(),
        settings.billing_tz.local_minus_utc(),
        settings.metrics.clone(),
    );
    publisher.refresh().await?;
    tracker.spawn(publisher.clone().run(cancel.clone()));
    tracker.spawn(publisher.clone().run_usage(cancel.clone()));

    let admin = TcpListener::bind(settings.admin_listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: settings.admin_listen,
            source,
        })?;
    let grpc = TcpListener::bind(settings.grpc_listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: settings.grpc_listen,
            source,
        })?;
    let admin_addr = admin.local_addr().map_err(|source| StartError::Bind {
        addr: settings.admin_listen,
        source,
    })?;
    let grpc_addr = grpc.local_addr().map_err(|source| StartError::Bind {
        addr: settings.grpc_listen,
        source,
    })?;

    let refresher = oauth::Refresher::new(store.clone(), sealer.clone(), settings.oauth.clone());
    let health = health::HealthChecker::new(
        store.clone(),
        sealer.clone(),
        refresher.clone(),
        settings.oauth.clone(),
        settings.setting_defaults.clone(),
    );
    let jobs = jobs::Jobs {
        store: store.clone(),
        publisher: publisher.clone(),
        health: health.clone(),
        refresher: refresher.clone(),
        defaults: settings.setting_defaults.clone(),
        billing_tz: settings.billing_tz,
        metrics: settings.metrics.clone(),
    };
    let nodes = grpc::NodeRegistry::default();
    let services = service::Services {
        password_throttle: Default::default(),
        login_gate: service::throttle::LoginGate::new(settings.max_password_checks),
        nodes: nodes.clone(),
        store: store.clone(),
        sealer: sealer.clone(),
        jwt,
        publisher: publisher.clone(),
        refresher: refresher.clone(),
        health: health.clone(),
        state: settings.state.clone(),
        billing_tz: settings.billing_tz,
        setting_defaults: settings.setting_defaults.clone(),
        oauth_endpoints: settings.oauth.clone(),
        tasks: tracker.clone(),
        metrics: settings.metrics.clone(),
    };
    if let Some(document) = &settings.apply_document {
        // One replica at a time, so two starting together create nothing twice.
        let report = store
            .with_named_lock(
                "aiproxy-apply-file",
                manage::apply_at_start(&services, document),
            )
            .await?
            .map_err(StartError::Apply)?;
        tracing::info!(
            items = report.applied,
            "declarative configuration applied at start"
        );
    }
    // After the start-up file, so the first sweep already sees its settings.
    jobs.spawn(cancel.clone(), tracker);
    let manage =
        manage::ManageApi::new(services.clone(), settings.admin_token.expose().to_string())
            .into_server();
    let app = api::router(services.clone());
    let admin_cancel = cancel.clone();
    let admin_limits = settings.admin_limits.clone();
    let trusted = std::sync::Arc::new(settings.trusted_proxies.clone());
    tracker.spawn(async move {
        let drain = aiproxy_shared::serve::serve(
            admin,
            admin_limits,
            move |peer| admin_service(app.clone(), peer, trusted.clone()),
            admin_cancel,
        )
        .await;
        drain
            .finish(ADMIN_GRACE, |left| {
                tracing::warn!(
                    connections = left,
                    "admin requests still running at shutdown; cut"
                )
            })
            .await;
    });

    let node_api = grpc::NodeApi::new(services, cancel.clone());
    let service = node_api.into_server(
        std::iter::once(&settings.node_token)
            .chain(&settings.node_token_previous)
            .map(|t| t.expose().to_string())
            .collect(),
    );
    let mut server = tonic::transport::Server::builder();
    match &settings.grpc_tls {
        Some(tls) => {
            let identity = tonic::transport::Identity::from_pem(&tls.cert_pem, &tls.key_pem);
            server = server
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .map_err(|e| StartError::Tls(e.to_string()))?;
        }
        None if !grpc_addr.ip().is_loopback() => tracing::warn!(
            addr = %grpc_addr,
            "the gRPC port carries upstream credentials without TLS: keep it on a private network or set AIPROXY_GRPC_TLS_CERT and AIPROXY_GRPC_TLS_KEY"
        ),
        None => {}
    }
    let grpc_cancel = cancel.clone();
    tracker.spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc);
        let served = server
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(Duration::from_secs(20)))
            .add_service(service)
            .add_service(manage)
            .serve_with_incoming_shutdown(incoming, grpc_cancel.clone().cancelled_owned());
        // Watch streams end when shutdown begins; calls still running get a
        // grace, then the server is dropped with them.
        tokio::pin!(served);
        let result = tokio::select! {
            result = &mut served => Some(result),
            _ = async {
                grpc_cancel.cancelled().await;
                tokio::time::sleep(GRPC_GRACE).await;
            } => None,
        };
        match result {
            Some(Err(e)) => tracing::error!(error = %e, "gRPC server failed"),
            None => tracing::warn!("gRPC calls still running at shutdown; cut"),
            Some(Ok(())) => {}
        }
    });

    Ok(ControlPlane {
        admin_addr,
        grpc_addr,
        holdings: metrics::Holdings {
            nodes,
            store: store.clone(),
        },
        store,
    })
}

/// Proxy URLs were stored, and written to the audit log, as they were
/// given, password included: seal the one, mask the other. Idempotent.
async fn seal_what_earlier_versions_kept_in_clear(
    store: &Store,
    sealer: &Sealer,
) -> Result<(), StartError> {
    for account in store.list_accounts().await? {
        if let Some(proxy) = account
            .proxy_sealed
            .as_deref()
            .filter(|p| !sealer.is_sealed(p))
        {
            store
                .reseal_account_proxy(account.id, &sealer.seal(proxy.as_bytes()))
                .await?;
            tracing::info!(account_id = account.id, "proxy URL sealed");
        }
    }
    for (id, detail) in store.audit_details_containing("proxy_url").await? {
        if let Ok(mut value) = serde_json::from_str::<serde_json::Value>(&detail) {
            service::audit::mask(&mut value);
            let masked = value.to_string();
            if masked != detail {
                store.set_audit_detail(id, &masked).await?;
            }
        }
    }
    Ok(())
}

/// How long admin requests and gRPC calls may run on after shutdown begins.
const ADMIN_GRACE: Duration = Duration::from_secs(10);
const GRPC_GRACE: Duration = Duration::from_secs(5);

/// The admin router as one connection's service, with the client's address
/// (the peer, or who a trusted proxy says it forwards) where handlers (the
/// login throttle) read it.
fn admin_service(
    app: axum::Router,
    peer: SocketAddr,
    trusted: std::sync::Arc<Vec<aiproxy_shared::net::Cidr>>,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<axum::body::Body>,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<http::Response<axum::body::Body>, std::convert::Infallible>>
             + Send
             + 'static,
> + Send
+ 'static {
    hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        let client = aiproxy_shared::net::client_ip(peer.ip(), req.headers(), &trusted);
        if client == peer.ip() && req.headers().contains_key("x-forwarded-for") {
            warn_untrusted_forwarding(peer.ip());
        }
        req.extensions_mut().insert(api::auth::ClientIp(client));
        let mut app = app.clone();
        async move { tower_service::Service::call(&mut app, req).await }
    })
}

/// Says once that `X-Forwarded-For` arrives from a peer that is not a
/// trusted proxy: every client behind it then shares its address for the
/// sign-in limits.
fn warn_untrusted_forwarding(peer: std::net::IpAddr) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(%peer, "X-Forwarded-For from a peer not in server.trusted_proxies is ignored: sign-in limits count that peer's address for every client behind it");
    }
}

/// Creates the `admin` user on first start. The password comes from
/// configuration or is generated and printed once.
async fn bootstrap_admin(store: &Store, password: Option<&Secret>) -> Result<(), StartError> {
    if store.count_users().await? > 0 {
        return Ok(());
    }
    let (password, generated) = match password {
        Some(p) => (p.expose().to_string(), false),
        None => (aiproxy_shared::keys::random_hex(12), true),
    };
    let hash = hash_password(&password).map_err(|e| StartError::Bootstrap(e.to_string()))?;
    let created = store
        .create_user(&NewUser {
            username: "admin".into(),
            password_hash: hash,
            role: aiproxy_shared::domain::Role::Admin,
            price_rate: rust_decimal::Decimal::ONE,
            email: None,
            max_concurrency: 0,
        })
        .await;
    match created {
        Ok(_) => {}
        // Another replica created it first.
        Err(StoreError::Conflict(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    if generated {
        println!(
            "aiproxy: created user \"admin\" with password {password} (shown once; set AIPROXY_ADMIN_PASSWORD to choose it)"
        );
    } else {
        println!("aiproxy: created user \"admin\" with the password from AIPROXY_ADMIN_PASSWORD");
    }
    Ok(())
}
