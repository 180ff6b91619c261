//! Configuration: defaults, then an optional TOML file, then `AIPROXY_*` env vars.
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Exit code for bad configuration (EX_USAGE).
pub const EXIT_CONFIG: i32 = 64;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value for {name}: {message}")]
    Env { name: &'static str, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// A secret string whose Debug output never shows it.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub grpc: SocketAddr,
    /// Where `GET /metrics` is served: an address, `off`, or unset for the
    /// role's default (see [`Config::metrics_listen`]).
    pub metrics: Option<String>,
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            proxy: ([0, 0, 0, 0], 8080).into(),
            admin: ([0, 0, 0, 0], 8090).into(),
            grpc: ([127, 0, 0, 1], 9090).into(),
            metrics: None,
        }
    }
}

/// Relay settings (the seed's `proxy.*`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxySettings {
    /// Seconds to wait for the upstream's response and first byte (the seed's `proxy.timeout`).
    pub timeout: u64,
    /// Seconds a response may go without a byte before it is cut off.
    pub idle_timeout: u64,
    /// Seconds to open a connection to an upstream (or its proxy).
    pub connect_timeout: u64,
    /// Accounts tried for one request before giving up.
    pub max_attempts: u64,
    /// Largest request body accepted, bytes.
    pub max_body_bytes: usize,
    /// Undelivered usage a data plane keeps on disk before refusing requests, bytes.
    pub journal_max_bytes: u64,
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            timeout: 600,
            idle_timeout: 300,
            connect_timeout: 10,
            max_attempts: 3,
            max_body_bytes: 32 * 1024 * 1024,
            journal_max_bytes: 1 << 30,
        }
    }
}

/// How the listening ports treat connections, and how a data plane stops.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Connections open at once on the proxy port; more are answered 503.
    pub max_connections: usize,
    /// The same for the admin port.
    pub admin_max_connections: usize,
    /// Seconds a client has to send a request's headers, from their first byte.
    pub header_read_timeout: u64,
    /// Seconds a connection may sit with no request before it is closed.
    pub keepalive_timeout: u64,
    /// Seconds a client has to send a request's body.
    pub body_read_timeout: u64,
    /// Request-body bytes a data plane holds at once; more are refused (503).
    pub max_body_bytes_in_flight: usize,
    /// Seconds a data plane keeps accepting after shutdown begins, while
    /// `/readyz` already fails; unset means 5 for `aiproxy dataplane` and 0
    /// for the all-in-one (which has no load balancer to tell).
    pub drain_delay: Option<u64>,
    /// Seconds requests in flight then get before they are cut.
    pub drain_grace: u64,
    /// A data plane's `/readyz` fails after this many seconds without a word
    /// from the control plane (a snapshot, spending or its 5 s heartbeat);
    /// 0: never, so nodes keep serving through a control-plane outage.
    pub max_snapshot_age: u64,
    /// Reverse proxies (addresses or ranges) whose `X-Forwarded-For` names
    /// the client on the admin port; from anyone else it is ignored.
    pub trusted_proxies: Vec<String>,
    /// Password checks (argon2, about 19 MiB each) running at once; sign-ins
    /// beyond are answered 503 at once.
    pub max_password_checks: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            admin_max_connections: 1_024,
            header_read_timeout: 30,
            keepalive_timeout: 75,
            body_read_timeout: 60,
            max_body_bytes_in_flight: 256 << 20,
            drain_delay: None,
            drain_grace: 30,
            max_snapshot_age: 0,
            trusted_proxies: Vec::new(),
            max_password_checks: 4,
        }
    }
}

/// TTLs of cross-node state, seconds (the seed's cache settings).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSettings {
    /// A sticky session's binding lives this long after its last request.
    pub session_ttl: u64,
    /// A concurrency lease lapses this long after its node last renewed it
    /// (nodes renew theirs; a crashed node's slots come back after this).
    pub concurrency_ttl: u64,
    /// Upper bound of any unavailable mark (each error class has its own, shorter TTL).
    pub unavailable_ttl: u64,
    /// Longest wait for a slot when every usable account is full.
    pub wait_timeout: u64,
    /// Longest wait for one Redis call before falling back to node-local state, ms.
    pub redis_timeout_ms: u64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            session_ttl: 3600,
            concurrency_ttl: 600,
            unavailable_ttl: 300,
            wait_timeout: 10,
            redis_timeout_ms: 250,
        }
    }
}

/// Money settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BillingSettings {
    /// Zone package periods reset in and daily usage is counted in: `UTC`
    /// or a fixed offset such as `+08:00`.
    pub timezone: String,
}

impl Default for BillingSettings {
    fn default() -> Self {
        Self {
            timezone: "UTC".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtSettings {
    pub expire_hours: u64,
}

impl Default for JwtSettings {
    fn default() -> Self {
        Self { expire_hours: 24 }
    }
}

/// Token endpoints of OAuth accounts; an account's `token_url` credential overrides them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OAuthSettings {
    pub claude_token_url: String,
    /// claude.ai, where session-key accounts are exchanged for OAuth tokens.
    pub claude_web_url: String,
    pub openai_token_url: String,
    pub google_token_url: String,
}

impl Default for OAuthSettings {
    fn default() -> Self {
        Self {
            claude_token_url: "https://platform.claude.com/v1/oauth/token".into(),
            claude_web_url: "https://claude.ai".into(),
            openai_token_url: "https://auth.openai.com/oauth/token".into(),
            google_token_url: "https://oauth2.googleapis.com/token".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub data_dir: PathBuf,
    /// `sqlite://…` or `mysql://…`; unset means SQLite in `data_dir`.
    pub database_url: Option<Secret>,
    /// Connections the control plane keeps to its database at most
    /// (0: 16 on MySQL, 8 on SQLite). Each replica holds its own pool.
    pub database_pool_size: u32,
    /// Unset means the in-memory state store. `rediss://` speaks TLS.
    pub redis_url: Option<Secret>,
    /// PEM CA that signed a `rediss://` server's certificate, trusted
    /// instead of the public roots (a private or managed Redis's CA).
    pub redis_ca: Option<PathBuf>,
    /// Prefix of every Redis key, so deployments can share one Redis.
    pub redis_namespace: String,
    /// Encrypts credentials at rest and signs JWTs.
    pub secret_key: Option<Secret>,
    /// Shared secret between the planes.
    pub node_token: Option<Secret>,
    /// A control plane also admits this token while data planes move to a
    /// new `node_token` (rotation without a stop).
    pub node_token_previous: Option<Secret>,
    /// Password of the `admin` user created on first start.
    pub admin_password: Option<Secret>,
    /// Admin-scoped token of the management gRPC service (`aiproxy ctl`);
    /// unset means one generated into `data_dir/admin.token`.
    pub admin_token: Option<Secret>,
    /// Declarative configuration applied at control-plane start
    /// (the format of `aiproxy ctl apply`).
    pub apply_file: Option<PathBuf>,
    /// gRPC address of the control plane, for a data plane.
    pub controlplane_url: Option<String>,
    /// PEM certificate chain and key the control plane's gRPC port serves
    /// TLS with (split deployments; both or neither).
    pub grpc_tls_cert: Option<PathBuf>,
    pub grpc_tls_key: Option<PathBuf>,
    /// PEM CA a data plane or `aiproxy ctl` trusts for an `https://`
    /// control-plane URL, besides the public roots.
    pub grpc_ca: Option<PathBuf>,
    /// Name of this data-plane node; defaults to the host name (set it when
    /// several data planes share a host).
    pub node_id: Option<String>,
    pub log_format: LogFormat,
    /// One `aiproxy::access` line per request on the relay's endpoints.
    pub access_log: bool,
    pub listen: Listen,
    pub proxy: ProxySettings,
    pub server: ServerSettings,
    pub cache: CacheSettings,
    pub billing: BillingSettings,
    pub jwt: JwtSettings,
    pub oauth: OAuthSettings,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            database_url: None,
            database_pool_size: 0,
            redis_url: None,
            redis_ca: None,
            redis_namespace: "aiproxy".into(),
            secret_key: None,
            node_token: None,
            node_token_previous: None,
            admin_password: None,
            admin_token: None,
            apply_file: None,
            controlplane_url: None,
            grpc_tls_cert: None,
            grpc_tls_key: None,
            grpc_ca: None,
            node_id: None,
            log_format: LogFormat::Text,
            access_log: true,
            listen: Listen::default(),
            proxy: ProxySettings::default(),
            server: ServerSettings::default(),
            cache: CacheSettings::default(),
            billing: BillingSettings::default(),
            jwt: JwtSettings::default(),
            oauth: OAuthSettings::default(),
        }
    }
}

/// Longest accepted `node_id`, in characters (the width of `request_logs.node_id`).
pub const MAX_NODE_ID: usize = 128;

/// The metrics port of the all-in-one and the control plane; a data plane
/// takes the next, so both fit on one host.
pub const METRICS_PORT: u16 = 9464;

/// Shortest `server.max_snapshot_age` accepted (two heartbeats), seconds.
pub const MIN_SNAPSHOT_AGE: u64 = 10;

/// Shortest accepted `secret_key`, in bytes.
pub const MIN_SECRET_KEY_LEN: usize = 32;

impl Config {
    /// Where metrics are served: `listen.metrics`, or `0.0.0.0:<default_port>`
    /// when unset; `None` when it is `off`.
    pub fn metrics_listen(&self, default_port: u16) -> Result<Option<SocketAddr>, ConfigError> {
        match self.listen.metrics.as_deref().map(str::trim) {
            None | Some("") => Ok(Some(([0, 0, 0, 0], default_port).into())),
            Some("off") => Ok(None),
            Some(addr) => addr.parse().map(Some).map_err(|e| {
                ConfigError::Invalid(format!(
                    "AIPROXY_METRICS_LISTEN must be an address such as 0.0.0.0:9464, or off: {e}"
                ))
            }),
        }
    }

    /// The billing zone (validated at load).
    pub fn billing_tz(&self) -> chrono::FixedOffset {
        crate::billing::parse_timezone(&self.billing.timezone)
            .unwrap_or_else(|| chrono::Offset::fix(&chrono::Utc))
    }

    /// Defaults, then `file` if given, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_from(file, |name| std::env::var(name).ok())
    }

    /// As [`Config::load`], with the environment supplied by `env`.
    pub fn load_from(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: path.to_owned(),
                    message: e.to_string(),
                })?
            }
            None => Config::default(),
        };
        config.apply_env(env)?;
        config.validate()?;
        Ok(config)
    }

    fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let get = |name: &str| env(name).filter(|v| !v.is_empty());
        if let Some(v) = get("AIPROXY_DATA_DIR") {
            self.data_dir = PathBuf::from(v);
        }
        // A secret comes from its variable or, as Docker and Kubernetes
        // secrets are mounted, from the file `<NAME>_FILE` names.
        let secret = |name: &str| -> Result<Option<Secret>, ConfigError> {
            let file_var = format!("{name}_FILE");
            match (get(name), get(&file_var)) {
                (Some(_), Some(_)) => Err(ConfigError::Invalid(format!(
                    "set {name} or {file_var}, not both"
                ))),
                (Some(v), None) => Ok(Some(Secret::new(v))),
                (None, Some(path)) => {
                    let text = std::fs::read_to_string(&path).map_err(|e| {
                        ConfigError::Invalid(format!("{file_var}: cannot read {path}: {e}"))
                    })?;
                    let value = text.trim_end_matches(['\n', '\r']);
                    if value.is_empty() {
                        return Err(ConfigError::Invalid(format!("{file_var}: {path} is empty")));
                    }
                    Ok(Some(Secret::new(value)))
                }
                (None, None) => Ok(None),
            }
        };
        if let Some(v) = secret("AIPROXY_DATABASE_URL")? {
            self.database_url = Some(v);
        }
        if let Some(v) = secret("AIPROXY_REDIS_URL")? {
            self.redis_url = Some(v);
        }
        if let Some(v) = get("AIPROXY_REDIS_NAMESPACE") {
            self.redis_namespace = v;
        }
        parse_env(
            &get,
            "AIPROXY_DATABASE_POOL_SIZE",
            &mut self.database_pool_size,
        )?;
        if let Some(v) = secret("AIPROXY_SECRET_KEY")? {
            self.secret_key = Some(v);
        }
        if let Some(v) = secret("AIPROXY_NODE_TOKEN")? {
            self.node_token = Some(v);
        }
        if let Some(v) = secret("AIPROXY_NODE_TOKEN_PREVIOUS")? {
            self.node_token_previous = Some(v);
        }
        if let Some(v) = secret("AIPROXY_ADMIN_PASSWORD")? {
            self.admin_password = Some(v);
        }
        if let Some(v) = secret("AIPROXY_ADMIN_TOKEN")? {
            self.admin_token = Some(v);
        }
        if let Some(v) = get("AIPROXY_APPLY_FILE") {
            self.apply_file = Some(PathBuf::from(v));
        }
        if let Some(v) = get("AIPROXY_CONTROLPLANE_URL") {
            self.controlplane_url = Some(v);
        }
        if let Some(v) = get("AIPROXY_GRPC_TLS_CERT") {
            self.grpc_tls_cert = Some(PathBuf::from(v));
        }
        if let Some(v) = get("AIPROXY_GRPC_TLS_KEY") {
            self.grpc_tls_key = Some(PathBuf::from(v));
        }
        if let Some(v) = get("AIPROXY_REDIS_CA") {
            self.redis_ca = Some(PathBuf::from(v));
        }
        if let Some(v) = get("AIPROXY_GRPC_CA") {
            self.grpc_ca = Some(PathBuf::from(v));
        }
        if let Some(v) = get("AIPROXY_NODE_ID") {
            self.node_id = Some(v);
        }
        if let Some(v) = get("AIPROXY_LOG_FORMAT") {
            self.log_format = match v.as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                _ => return Err(env_error("AIPROXY_LOG_FORMAT", "expected text or json")),
            };
        }
        parse_env(&get, "AIPROXY_ACCESS_LOG", &mut self.access_log)?;
        parse_env(&get, "AIPROXY_PROXY_LISTEN", &mut self.listen.proxy)?;
        parse_env(&get, "AIPROXY_ADMIN_LISTEN", &mut self.listen.admin)?;
        parse_env(&get, "AIPROXY_GRPC_LISTEN", &mut self.listen.grpc)?;
        if let Some(v) = get("AIPROXY_METRICS_LISTEN") {
            self.listen.metrics = Some(v.trim().to_string());
        }
        parse_env(&get, "AIPROXY_PROXY_TIMEOUT", &mut self.proxy.timeout)?;
        parse_env(
            &get,
            "AIPROXY_MAX_BODY_BYTES",
            &mut self.proxy.max_body_bytes,
        )?;
        parse_env(&get, "AIPROXY_IDLE_TIMEOUT", &mut self.proxy.idle_timeout)?;
        parse_env(
            &get,
            "AIPROXY_CONNECT_TIMEOUT",
            &mut self.proxy.connect_timeout,
        )?;
        parse_env(&get, "AIPROXY_MAX_ATTEMPTS", &mut self.proxy.max_attempts)?;
        parse_env(
            &get,
            "AIPROXY_JOURNAL_MAX_BYTES",
            &mut self.proxy.journal_max_bytes,
        )?;
        let server = &mut self.server;
        parse_env(&get, "AIPROXY_MAX_CONNECTIONS", &mut server.max_connections)?;
        parse_env(
            &get,
            "AIPROXY_ADMIN_MAX_CONNECTIONS",
            &mut server.admin_max_connections,
        )?;
        parse_env(
            &get,
            "AIPROXY_HEADER_READ_TIMEOUT",
            &mut server.header_read_timeout,
        )?;
        parse_env(
            &get,
            "AIPROXY_KEEPALIVE_TIMEOUT",
            &mut server.keepalive_timeout,
        )?;
        parse_env(
            &get,
            "AIPROXY_BODY_READ_TIMEOUT",
            &mut server.body_read_timeout,
        )?;
        parse_env(
            &get,
            "AIPROXY_MAX_BODY_BYTES_IN_FLIGHT",
            &mut server.max_body_bytes_in_flight,
        )?;
        if let Some(v) = get("AIPROXY_DRAIN_DELAY") {
            server.drain_delay = Some(v.trim().parse().map_err(|e: std::num::ParseIntError| {
                env_error("AIPROXY_DRAIN_DELAY", e.to_string())
            })?);
        }
        parse_env(&get, "AIPROXY_DRAIN_GRACE", &mut server.drain_grace)?;
        parse_env(
            &get,
            "AIPROXY_MAX_SNAPSHOT_AGE",
            &mut server.max_snapshot_age,
        )?;
        if let Some(v) = get("AIPROXY_TRUSTED_PROXIES") {
            server.trusted_proxies = v
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
        }
        parse_env(
            &get,
            "AIPROXY_MAX_PASSWORD_CHECKS",
            &mut server.max_password_checks,
        )?;
        parse_env(&get, "AIPROXY_SESSION_TTL", &mut self.cache.session_ttl)?;
        parse_env(
            &get,
            "AIPROXY_CONCURRENCY_TTL",
            &mut self.cache.concurrency_ttl,
        )?;
        parse_env(
            &get,
            "AIPROXY_UNAVAILABLE_TTL",
            &mut self.cache.unavailable_ttl,
        )?;
        parse_env(&get, "AIPROXY_WAIT_TIMEOUT", &mut self.cache.wait_timeout)?;
        parse_env(
            &get,
            "AIPROXY_REDIS_TIMEOUT_MS",
            &mut self.cache.redis_timeout_ms,
        )?;
        if let Some(v) = get("AIPROXY_BILLING_TIMEZONE") {
            self.billing.timezone = v;
        }
        parse_env(&get, "AIPROXY_JWT_EXPIRE_HOURS", &mut self.jwt.expire_hours)?;
        parse_env(
            &get,
            "AIPROXY_CLAUDE_TOKEN_URL",
            &mut self.oauth.claude_token_url,
        )?;
        parse_env(
            &get,
            "AIPROXY_OPENAI_TOKEN_URL",
            &mut self.oauth.openai_token_url,
        )?;
        parse_env(
            &get,
            "AIPROXY_GOOGLE_TOKEN_URL",
            &mut self.oauth.google_token_url,
        )?;
        parse_env(
            &get,
            "AIPROXY_CLAUDE_WEB_URL",
            &mut self.oauth.claude_web_url,
        )?;
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.database_pool_size > 1000 {
            return Err(ConfigError::Invalid(
                "database_pool_size must be at most 1000".into(),
            ));
        }
        if let Some(url) = &self.database_url {
            let url = url.expose();
            if !url.starts_with("sqlite:")
                && !url.starts_with("mysql://")
                && !url.starts_with("mariadb://")
            {
                return Err(ConfigError::Invalid(
                    "AIPROXY_DATABASE_URL must start with sqlite:// or mysql://".into(),
                ));
            }
        }
        if let Some(key) = &self.secret_key
            && key.expose().len() < MIN_SECRET_KEY_LEN
        {
            return Err(ConfigError::Invalid(format!(
                "AIPROXY_SECRET_KEY must be at least {MIN_SECRET_KEY_LEN} characters"
            )));
        }
        if let Some(token) = &self.node_token
            && token.expose().len() < 16
        {
            return Err(ConfigError::Invalid(
                "AIPROXY_NODE_TOKEN must be at least 16 characters".into(),
            ));
        }
        if let Some(token) = &self.node_token_previous {
            if token.expose().len() < 16 {
                return Err(ConfigError::Invalid(
                    "AIPROXY_NODE_TOKEN_PREVIOUS must be at least 16 characters".into(),
                ));
            }
            if self.node_token.is_none() {
                return Err(ConfigError::Invalid(
                    "AIPROXY_NODE_TOKEN_PREVIOUS is accepted beside AIPROXY_NODE_TOKEN: set both"
                        .into(),
                ));
            }
        }
        if let Some(token) = &self.admin_token {
            if token.expose().len() < 16 {
                return Err(ConfigError::Invalid(
                    "AIPROXY_ADMIN_TOKEN must be at least 16 characters".into(),
                ));
            }
            if [&self.node_token, &self.node_token_previous]
                .into_iter()
                .flatten()
                .any(|n| n.expose() == token.expose())
            {
                return Err(ConfigError::Invalid(
                    "AIPROXY_ADMIN_TOKEN must differ from AIPROXY_NODE_TOKEN: data planes must not hold management rights".into(),
                ));
            }
        }
        if let Some(node) = &self.node_id
            && (node.trim().is_empty() || node.chars().count() > MAX_NODE_ID)
        {
            return Err(ConfigError::Invalid(format!(
                "AIPROXY_NODE_ID must be 1 to {MAX_NODE_ID} characters"
            )));
        }
        self.metrics_listen(METRICS_PORT)?;
        if (1..MIN_SNAPSHOT_AGE).contains(&self.server.max_snapshot_age) {
            return Err(ConfigError::Invalid(format!(
                "server.max_snapshot_age must be 0 (never) or at least {MIN_SNAPSHOT_AGE} seconds: the control plane's heartbeat comes every 5"
            )));
        }
        if self.grpc_tls_cert.is_some() != self.grpc_tls_key.is_some() {
            return Err(ConfigError::Invalid(
                "AIPROXY_GRPC_TLS_CERT and AIPROXY_GRPC_TLS_KEY go together: set both or neither"
                    .into(),
            ));
        }
        self.trusted_proxies()?;
        if self.proxy.max_body_bytes > self.server.max_body_bytes_in_flight {
            return Err(ConfigError::Invalid(format!(
                "proxy.max_body_bytes ({}) must not exceed server.max_body_bytes_in_flight ({}): such bodies could never be read",
                self.proxy.max_body_bytes, self.server.max_body_bytes_in_flight
            )));
        }
        if crate::billing::parse_timezone(&self.billing.timezone).is_none() {
            return Err(ConfigError::Invalid(format!(
                "billing.timezone must be UTC or an offset such as +08:00, not {:?}",
                self.billing.timezone
            )));
        }
        for (name, value) in [
            ("proxy.timeout", self.proxy.timeout),
            ("proxy.idle_timeout", self.proxy.idle_timeout),
            ("proxy.connect_timeout", self.proxy.connect_timeout),
            ("proxy.max_attempts", self.proxy.max_attempts),
            ("cache.session_ttl", self.cache.session_ttl),
            ("cache.concurrency_ttl", self.cache.concurrency_ttl),
            ("cache.unavailable_ttl", self.cache.unavailable_ttl),
            ("cache.redis_timeout_ms", self.cache.redis_timeout_ms),
            ("jwt.expire_hours", self.jwt.expire_hours),
            (
                "server.header_read_timeout",
                self.server.header_read_timeout,
            ),
            ("server.keepalive_timeout", self.server.keepalive_timeout),
            ("server.body_read_timeout", self.server.body_read_timeout),
            ("server.max_connections", self.server.max_connections as u64),
            (
                "server.admin_max_connections",
                self.server.admin_max_connections as u64,
            ),
            (
                "server.max_body_bytes_in_flight",
                self.server.max_body_bytes_in_flight as u64,
            ),
            (
                "server.max_password_checks",
                self.server.max_password_checks as u64,
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid(format!(
                    "{name} must be greater than 0"
                )));
            }
        }
        Ok(())
    }

    /// The database URL, defaulting to SQLite in the data directory.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.expose().to_string(),
            None => format!("sqlite://{}", self.data_dir.join("aiproxy.db").display()),
        }
    }

    pub fn proxy_timeout(&self) -> Duration {
        Duration::from_secs(self.proxy.timeout)
    }

    /// The reverse proxies whose `X-Forwarded-For` is believed.
    pub fn trusted_proxies(&self) -> Result<Vec<crate::net::Cidr>, ConfigError> {
        crate::net::parse_ranges(&self.server.trusted_proxies.join(","))
            .map_err(|e| ConfigError::Invalid(format!("server.trusted_proxies: {e}")))
    }

    /// Connection limits of a port allowing `max_connections`.
    pub fn limits(&self, max_connections: usize) -> crate::serve::Limits {
        crate::serve::Limits {
            max_connections,
            header_read_timeout: Duration::from_secs(self.server.header_read_timeout),
            keepalive_timeout: Duration::from_secs(self.server.keepalive_timeout),
        }
    }

    /// A required secret, with the error a split deployment shows when it is missing.
    /// The contents of a PEM file named in the configuration.
    pub fn read_pem(path: &Path) -> Result<Vec<u8>, ConfigError> {
        std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })
    }

    pub fn require<'a>(
        value: &'a Option<Secret>,
        env_name: &str,
        role: &str,
    ) -> Result<&'a Secret, ConfigError> {
        value.as_ref().ok_or_else(|| {
            ConfigError::Invalid(format!(
                "{env_name} is not set: `aiproxy {role}` needs it (the all-in-one generates one, a split deployment must share it between the planes)"
            ))
        })
    }
}

fn env_error(name: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Env {
        name,
        message: message.into(),
    }
}

fn parse_env<T: std::str::FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    target: &mut T,
) -> Result<(), ConfigError>
where
    T::Err: fmt::Display,
{
    if let Some(v) = get(name) {
        *target = v
            .trim()
            .parse()
            .map_err(|e: T::Err| env_error(name, e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn load(file: Option<&str>, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir =
            std::env::temp_dir().join(format!("aiproxy-config-{}", crate::keys::random_hex(6)));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        if let Some(text) = file {
            std::fs::write(&path, text).unwrap();
        }
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let result = Config::load_from(file.map(|_| path.as_path()), |k| env.get(k).cloned());
        std::fs::remove_dir_all(&dir).ok();
        result
    }

    #[test]
    fn defaults_match_the_documentation() {
        let c = load(None, &[]).unwrap();
        assert_eq!(c.listen.proxy.to_string(), "0.0.0.0:8080");
        assert_eq!(c.listen.admin.to_string(), "0.0.0.0:8090");
        assert_eq!(c.listen.grpc.to_string(), "127.0.0.1:9090");
        assert_eq!(c.database_url(), "sqlite://./data/aiproxy.db");
        assert_eq!(c.database_pool_size, 0);
        assert!(c.redis_url.is_none());
        let sized = load(None, &[("AIPROXY_DATABASE_POOL_SIZE", "40")]).unwrap();
        assert_eq!(sized.database_pool_size, 40);
        assert!(load(None, &[("AIPROXY_DATABASE_POOL_SIZE", "5000")]).is_err());
    }

    #[test]
    fn env_overrides_file_overrides_defaults() {
        let file = "data_dir = \"/srv/aiproxy\"\n[proxy]\ntimeout = 30\n[jwt]\nexpire_hours = 8\n";
        let c = load(
            Some(file),
            &[
                ("AIPROXY_PROXY_TIMEOUT", "45"),
                ("AIPROXY_PROXY_LISTEN", "127.0.0.1:1234"),
            ],
        )
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/srv/aiproxy"));
        assert_eq!(c.proxy.timeout, 45);
        assert_eq!(c.proxy.idle_timeout, 300);
        assert_eq!(c.jwt.expire_hours, 8);
        assert_eq!(c.listen.proxy.to_string(), "127.0.0.1:1234");
    }

    #[test]
    fn a_previous_node_token_goes_with_a_current_one() {
        let old = ("AIPROXY_NODE_TOKEN_PREVIOUS", "old-node-token-0123456789");
        let err = load(None, &[old]).unwrap_err();
        assert!(err.to_string().contains("set both"), "{err}");
        let c = load(
            None,
            &[old, ("AIPROXY_NODE_TOKEN", "new-node-token-0123456789")],
        )
        .unwrap();
        assert_eq!(
            c.node_token_previous.as_ref().map(Secret::expose),
            Some("old-node-token-0123456789")
        );
        let err = load(
            None,
            &[
                old,
                ("AIPROXY_NODE_TOKEN", "new-node-token-0123456789"),
                ("AIPROXY_ADMIN_TOKEN", "old-node-token-0123456789"),
            ],
        )
        .unwrap_err();
        assert!(err.to_string().contains("must differ"), "{err}");
    }

    #[test]
    fn a_snapshot_age_limit_outlasts_two_heartbeats() {
        assert_eq!(load(None, &[]).unwrap().server.max_snapshot_age, 0);
        let err = load(None, &[("AIPROXY_MAX_SNAPSHOT_AGE", "5")]).unwrap_err();
        assert!(err.to_string().contains("max_snapshot_age"), "{err}");
        let c = load(None, &[("AIPROXY_MAX_SNAPSHOT_AGE", "10")]).unwrap();
        assert_eq!(c.server.max_snapshot_age, 10);
    }

    #[test]
    fn metrics_listen_on_the_role_port_an_address_or_not_at_all() {
        let c = load(None, &[]).unwrap();
        assert_eq!(
            c.metrics_listen(9465).unwrap(),
            Some(([0, 0, 0, 0], 9465).into())
        );
        let c = load(None, &[("AIPROXY_METRICS_LISTEN", "127.0.0.1:0")]).unwrap();
        assert_eq!(
            c.metrics_listen(9465).unwrap(),
            Some(([127, 0, 0, 1], 0).into())
        );
        let c = load(None, &[("AIPROXY_METRICS_LISTEN", "off")]).unwrap();
        assert_eq!(c.metrics_listen(9465).unwrap(), None);
        assert!(load(None, &[("AIPROXY_METRICS_LISTEN", "nowhere")]).is_err());
    }

    #[test]
    fn a_node_id_fits_the_request_logs() {
        let long = "n".repeat(MAX_NODE_ID + 1);
        let err = load(None, &[("AIPROXY_NODE_ID", &long)]).unwrap_err();
        assert!(err.to_string().contains("AIPROXY_NODE_ID"), "{err}");
        assert!(load(None, &[("AIPROXY_NODE_ID", " ")]).is_err());
        let fits = "n".repeat(MAX_NODE_ID);
        assert!(load(None, &[("AIPROXY_NODE_ID", &fits)]).is_ok());
    }

    #[test]
    fn grpc_tls_needs_both_halves() {
        let file = "grpc_tls_cert = \"/etc/aiproxy/grpc.pem\"\n";
        let err = load(Some(file), &[]).unwrap_err();
        assert!(err.to_string().contains("AIPROXY_GRPC_TLS_KEY"), "{err}");
        let c = load(
            Some(file),
            &[
                ("AIPROXY_GRPC_TLS_KEY", "/etc/aiproxy/grpc.key"),
                ("AIPROXY_GRPC_CA", "/etc/aiproxy/ca.pem"),
            ],
        )
        .unwrap();
        assert_eq!(c.grpc_tls_key, Some(PathBuf::from("/etc/aiproxy/grpc.key")));
        assert_eq!(c.grpc_ca, Some(PathBuf::from("/etc/aiproxy/ca.pem")));
    }

    #[test]
    fn unknown_file_keys_and_bad_values_are_rejected() {
        assert!(matches!(
            load(Some("nonsense = 1\n"), &[]),
            Err(ConfigError::Parse { .. })
        ));
        let err = load(None, &[("AIPROXY_SESSION_TTL", "soon")]).unwrap_err();
        assert!(err.to_string().contains("AIPROXY_SESSION_TTL"));
        assert!(load(None, &[("AIPROXY_SECRET_KEY", "short")]).is_err());
        assert!(load(None, &[("AIPROXY_DATABASE_URL", "postgres://x")]).is_err());
        assert!(load(None, &[("AIPROXY_ADMIN_TOKEN", "short")]).is_err());
        let same = "the-same-token-for-both-planes";
        let err = load(
            None,
            &[("AIPROXY_ADMIN_TOKEN", same), ("AIPROXY_NODE_TOKEN", same)],
        )
        .unwrap_err();
        assert!(err.to_string().contains("must differ"), "{err}");
    }

    #[test]
    fn the_shipped_example_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/aiproxy.example.toml");
        let c = Config::load_from(Some(&path), |_| None).unwrap();
        assert_eq!(c.proxy.idle_timeout, 300);
        assert_eq!(c.log_format, LogFormat::Json);
    }

    #[test]
    fn secrets_never_print() {
        let c = load(
            None,
            &[(
                "AIPROXY_SECRET_KEY",
                "0123456789abcdef0123456789abcdef-very-secret",
            )],
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("very-secret"));
    }

    #[test]
    fn secrets_come_from_files_when_named_by_file_variables() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("secret_key");
        std::fs::write(&key, "k".repeat(40) + "\n").unwrap();
        let path = key.display().to_string();
        let config = load(None, &[("AIPROXY_SECRET_KEY_FILE", path.as_str())]).unwrap();
        assert_eq!(
            config.secret_key.as_ref().map(Secret::expose),
            Some("k".repeat(40).as_str())
        );

        let both = load(
            None,
            &[
                ("AIPROXY_SECRET_KEY", &"k".repeat(40)),
                ("AIPROXY_SECRET_KEY_FILE", path.as_str()),
            ],
        )
        .unwrap_err();
        assert!(both.to_string().contains("not both"), "{both}");

        let missing = dir.path().join("absent").display().to_string();
        let err = load(None, &[("AIPROXY_NODE_TOKEN_FILE", missing.as_str())]).unwrap_err();
        assert!(err.to_string().contains("AIPROXY_NODE_TOKEN_FILE"), "{err}");

        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let empty = empty.display().to_string();
        let err = load(None, &[("AIPROXY_ADMIN_TOKEN_FILE", empty.as_str())]).unwrap_err();
        assert!(err.to_string().contains("is empty"), "{err}");
    }
}
