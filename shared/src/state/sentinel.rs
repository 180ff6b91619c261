//! Redis behind Sentinel: `redis+sentinel://` URLs, and a connection that
//! asks the sentinels for the master again when the one it used fails or
//! has been demoted.
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{Cmd, ConnectionAddr, ErrorKind, Pipeline, RedisError, RedisFuture, Value};

use crate::sync::LockExt;

/// The least time between two lookups of the master.
const LOOKUP_EVERY: Duration = Duration::from_secs(1);

/// A parsed `redis+sentinel://[user:password@]host:port[,host:port…]/master[/db]`
/// (`rediss+sentinel://` for TLS to the sentinels and the master). The
/// credentials and database are the master's; `sentinel_username` and
/// `sentinel_password` query parameters authenticate to the sentinels.
#[derive(Debug, PartialEq, Eq)]
pub struct SentinelUrl {
    pub tls: bool,
    pub sentinels: Vec<(String, u16)>,
    pub master: String,
    pub db: i64,
    pub username: Option<String>,
    pub password: Option<String>,
    pub sentinel_username: Option<String>,
    pub sentinel_password: Option<String>,
}

/// Whether `url` names Redis through Sentinel.
pub fn is_sentinel_url(url: &str) -> bool {
    url.starts_with("redis+sentinel://") || url.starts_with("rediss+sentinel://")
}

fn decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent escape in {text:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{text:?} is not UTF-8"))
}

impl SentinelUrl {
    pub fn parse(url: &str) -> Result<SentinelUrl, String> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("rediss+sentinel://") {
            (true, rest)
        } else {
            return Err(
                "a Sentinel URL starts with redis+sentinel:// or rediss+sentinel://".into(),
            );
        };
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(info) => {
                let (user, password) = info.split_once(':').unwrap_or((info, ""));
                let user = Some(decode(user)?).filter(|u| !u.is_empty());
                let password = Some(decode(password)?).filter(|p| !p.is_empty());
                (user, password)
            }
        };
        let mut sentinels = Vec::new();
        for host in hosts.split(',').filter(|h| !h.is_empty()) {
            let (name, port) = match host.rsplit_once(':') {
                Some((name, port)) if !name.ends_with(']') || host.starts_with('[') => {
                    let port = port
                        .parse::<u16>()
                        .map_err(|_| format!("bad sentinel port in {host:?}"))?;
                    (name, port)
                }
                _ => (host, 26379),
            };
            let name = name.trim_start_matches('[').trim_end_matches(']');
            if name.is_empty() {
                return Err(format!("empty sentinel host in {host:?}"));
            }
            sentinels.push((name.to_string(), port));
        }
        if sentinels.is_empty() {
            return Err("a Sentinel URL names at least one sentinel".into());
        }
        let mut segments = path.split('/').filter(|s| !s.is_empty());
        let master = decode(
            segments
                .next()
                .ok_or("a Sentinel URL names the master after the hosts: …/mymaster")?,
        )?;
        let db = match segments.next() {
            Some(db) => db
                .parse::<i64>()
                .map_err(|_| format!("bad database number {db:?}"))?,
            None => 0,
        };
        if segments.next().is_some() {
            return Err("a Sentinel URL's path is /master or /master/db".into());
        }
        let mut parsed = SentinelUrl {
            tls,
            sentinels,
            master,
            db,
            username,
            password,
            sentinel_username: None,
            sentinel_password: None,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = Some(decode(value)?).filter(|v| !v.is_empty());
            match key {
                "sentinel_username" => parsed.sentinel_username = value,
                "sentinel_password" => parsed.sentinel_password = value,
                other => return Err(format!("unknown Sentinel URL parameter {other:?}")),
            }
        }
        Ok(parsed)
    }

    /// The client that asks the sentinels for the master.
    pub fn client(&self, ca: Option<Vec<u8>>) -> Result<SentinelClient, RedisError> {
        let addrs = self.sentinels.iter().map(|(host, port)| {
            if self.tls {
                ConnectionAddr::TcpTls {
                    host: host.clone(),
                    port: *port,
                    insecure: false,
                    tls_params: None,
                }
            } else {
                ConnectionAddr::Tcp(host.clone(), *port)
            }
        });
        let mut builder =
            SentinelClientBuilder::new(addrs, &self.master, SentinelServerType::Master)?
                .set_client_to_redis_db(self.db);
        if let Some(user) = &self.username {
            builder = builder.set_client_to_redis_username(user);
        }
        if let Some(password) = &self.password {
            builder = builder.set_client_to_redis_password(password);
        }
        if let Some(user) = &self.sentinel_username {
            builder = builder.set_client_to_sentinel_username(user);
        }
        if let Some(password) = &self.sentinel_password {
            builder = builder.set_client_to_sentinel_password(password);
        }
        if self.tls {
            builder = builder
                .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
            if let Some(ca) = ca {
                let certificates = || redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                };
                builder = builder
                    .set_client_to_redis_certificates(certificates())
                    .set_client_to_sentinel_certificates(certificates());
            }
        }
        builder.build()
    }
}

/// The master as last found, and how to find it again. Nothing is looked
/// up until the first call, so a Redis that is down at start is retried on use.
pub struct Failover {
    current: RwLock<Option<ConnectionManager>>,
    sentinels: tokio::sync::Mutex<SentinelClient>,
    config: ConnectionManagerConfig,
    looked_up: std::sync::Mutex<Option<Instant>>,
    timeout: Duration,
    db: i64,
}

impl Failover {
    pub fn new(
        sentinels: SentinelClient,
        config: ConnectionManagerConfig,
        timeout: Duration,
        db: i64,
    ) -> Arc<Failover> {
        Arc::new(Failover {
            current: RwLock::new(None),
            sentinels: tokio::sync::Mutex::new(sentinels),
            config,
            looked_up: std::sync::Mutex::new(None),
            timeout,
            db,
        })
    }

    fn current(&self) -> Option<ConnectionManager> {
        #[allow(clippy::unwrap_used, reason = "no code panics while holding it")]
        self.current.read().unwrap().clone()
    }

    /// A connection to the master as now known.
    pub fn connection(self: &Arc<Self>) -> FollowingConnection {
        FollowingConnection {
            manager: self.current(),
            failover: self.clone(),
        }
    }

    /// Asks the sentinels for the master, at most once a second, one
    /// caller at a time (the others go on with what is known).
    async fn look_up(&self) {
        let Ok(mut sentinels) = self.sentinels.try_lock() else {
            return;
        };
        {
            let mut last = self.looked_up.locked();
            if last.is_some_and(|at| at.elapsed() < LOOKUP_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        let found = tokio::time::timeout(self.timeout * 4, sentinels.async_get_client()).await;
        let client = match found {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "no sentinel named a Redis master");
                return;
            }
            Err(_) => {
                tracing::warn!("no sentinel answered in time");
                return;
            }
        };
        let addr = client.get_connection_info().addr().to_string();
        match ConnectionManager::new_lazy_with_config(client, self.config.clone()) {
            Ok(manager) => {
                #[allow(clippy::unwrap_used, reason = "no code panics while holding it")]
                let mut current = self.current.write().unwrap();
                *current = Some(manager);
                tracing::info!(master = %addr, "following the Redis master the sentinels name");
            }
            Err(e) => tracing::warn!(error = %e, "cannot connect to the Redis master"),
        }
    }
}

/// Whether an error may mean the master moved: it is gone, or it answers
/// as a replica now.
fn master_may_have_moved(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.kind() == ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
}

/// A connection to the master that, when a call fails in a way a failover
/// explains, has the master looked up again for the calls that follow.
#[derive(Clone)]
pub struct FollowingConnection {
    manager: Option<ConnectionManager>,
    failover: Arc<Failover>,
}

impl FollowingConnection {
    /// The master's connection, looked up first if none is known yet.
    async fn manager(&mut self) -> Result<&mut ConnectionManager, RedisError> {
        if self.manager.is_none() {
            self.failover.look_up().await;
            self.manager = self.failover.current();
        }
        self.manager
            .as_mut()
            .ok_or_else(|| RedisError::from((ErrorKind::Io, "no Redis master known yet")))
    }
}

impl ConnectionLike for FollowingConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let reply = self.manager().await?.req_packed_command(cmd).await;
            if let Err(e) = &reply
                && master_may_have_moved(e)
            {
                self.failover.look_up().await;
            }
            reply
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let reply = self
                .manager()
                .await?
                .req_packed_commands(pipeline, offset, count)
                .await;
            if let Err(e) = &reply
                && master_may_have_moved(e)
            {
                self.failover.look_up().await;
            }
            reply
        })
    }

    fn get_db(&self) -> i64 {
        self.failover.db
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_name_their_hosts_master_and_credentials() {
        let url = SentinelUrl::parse(
            "rediss+sentinel://app:p%40ss@10.0.0.1:26379,[fd00::2]:26380,s3/mymaster/2?sentinel_password=sp",
        )
        .unwrap();
        assert_eq!(
            url,
            SentinelUrl {
                tls: true,
                sentinels: vec![
                    ("10.0.0.1".into(), 26379),
                    ("fd00::2".into(), 26380),
                    ("s3".into(), 26379)
                ],
                master: "mymaster".into(),
                db: 2,
                username: Some("app".into()),
                password: Some("p@ss".into()),
                sentinel_username: None,
                sentinel_password: Some("sp".into()),
            }
        );
        let plain = SentinelUrl::parse("redis+sentinel://s1:5000/m").unwrap();
        assert!(!plain.tls);
        assert_eq!(plain.db, 0);
        assert_eq!(plain.password, None);
        for bad in [
            "redis://s1/m",
            "redis+sentinel://s1:26379",
            "redis+sentinel:///m",
            "redis+sentinel://s1:port/m",
            "redis+sentinel://s1/m/x",
            "redis+sentinel://s1/m?password=x",
        ] {
            assert!(SentinelUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
