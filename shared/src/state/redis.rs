//! The Redis state store: shared by every node; anything that must be atomic
//! runs as one of the versioned Lua scripts in `lua/`.
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};

use super::sentinel::{Failover, FollowingConnection, SentinelUrl, is_sentinel_url};
use super::{
    Filter, Held, InUse, Mark, MarkKind, Outcome, Release, ScheduleRequest, Scope, SessionEntry,
    StateError, StateStore, StoreFuture, StoreResult, Switch, SwitchReason,
};

/// Key layout version; bumped with any incompatible change to the scripts,
/// so nodes of two versions never misread each other's keys.
pub const LAYOUT: &str = "v1";

struct Scripts {
    schedule: Script,
    release: Script,
    renew: Script,
}

/// Where calls go: one Redis, or the master the sentinels name.
#[derive(Clone)]
enum Target {
    Direct(ConnectionManager),
    Sentinel(std::sync::Arc<Failover>),
}

/// One call's connection.
#[derive(Clone)]
enum Conn {
    Direct(ConnectionManager),
    Following(FollowingConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Direct(c) => c.req_packed_command(cmd),
            Conn::Following(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Direct(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Following(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Direct(c) => c.get_db(),
            Conn::Following(c) => c.get_db(),
        }
    }
}

#[derive(Clone)]
pub struct RedisStore {
    target: Target,
    prefix: String,
    scripts: std::sync::Arc<Scripts>,
}

impl From<redis::RedisError> for StateError {
    fn from(e: redis::RedisError) -> Self {
        if e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
        {
            StateError::Unreachable(e.to_string())
        } else {
            StateError::Protocol(e.to_string())
        }
    }
}

fn mark_tag(kind: MarkKind) -> &'static str {
    match kind {
        MarkKind::Unavailable => "u",
        MarkKind::RateLimited => "l",
    }
}

impl RedisStore {
    /// Connects lazily: a Redis that is down at start-up is retried on use.
    /// `namespace` separates deployments (and test runs) sharing one Redis.
    /// A `rediss://` URL speaks TLS, verified against `ca` (PEM) when given,
    /// else the public roots; a `redis+sentinel://` URL follows the master
    /// its sentinels name.
    pub fn open(
        url: &str,
        ca: Option<Vec<u8>>,
        namespace: &str,
        timeout: Duration,
    ) -> StoreResult<Self> {
        let bad = |e: redis::RedisError| StateError::Protocol(format!("bad Redis URL: {e}"));
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        if is_sentinel_url(url) {
            let parsed = SentinelUrl::parse(url)
                .map_err(|e| StateError::Protocol(format!("bad Redis URL: {e}")))?;
            if ca.is_some() && !parsed.tls {
                return Err(StateError::Protocol(
                    "a Redis CA is set but the URL is not rediss+sentinel://".into(),
                ));
            }
            let sentinels = parsed.client(ca).map_err(bad)?;
            let failover = Failover::new(sentinels, config, timeout, parsed.db);
            return Ok(Self::with_target(Target::Sentinel(failover), namespace));
        }
        let client = match ca {
            Some(ca) if url.starts_with("rediss://") => redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca),
                },
            )
            .map_err(bad)?,
            Some(_) => {
                return Err(StateError::Protocol(
                    "a Redis CA is set but the URL is not rediss://".into(),
                ));
            }
            None => redis::Client::open(url).map_err(bad)?,
        };
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self::with_target(Target::Direct(conn), namespace))
    }

    fn with_target(target: Target, namespace: &str) -> Self {
        RedisStore {
            target,
            prefix: format!("{namespace}:{LAYOUT}:"),
            scripts: std::sync::Arc::new(Scripts {
                schedule: Script::new(include_str!("lua/schedule.lua")),
                release: Script::new(include_str!("lua/release.lua")),
                renew: Script::new(include_str!("lua/renew.lua")),
            }),
        }
    }

    fn conn(&self) -> Conn {
        match &self.target {
            Target::Direct(c) => Conn::Direct(c.clone()),
            Target::Sentinel(f) => Conn::Following(f.connection()),
        }
    }

    /// Every key under `pattern` (after the prefix), by SCAN.
    async fn scan(&self, pattern: &str) -> StoreResult<Vec<String>> {
        let mut conn = self.conn();
        let mut cursor: u64 = 0;
        let mut keys = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}{pattern}", self.prefix))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            keys.extend(batch);
            if next == 0 {
                return Ok(keys);
            }
            cursor = next;
        }
    }

    async fn delete(&self, keys: Vec<String>) -> StoreResult<u64> {
        let mut deleted = 0;
        let mut conn = self.conn();
        for chunk in keys.chunks(500) {
            let n: u64 = conn.del(chunk).await?;
            deleted += n;
        }
        Ok(deleted)
    }

    /// The id after `tag` in a key of ours (`<prefix><tag><id>...`).
    fn id_after<'k>(&self, key: &'k str, tag: &str) -> Option<&'k str> {
        key.strip_prefix(&self.prefix)?.strip_prefix(tag)
    }

    async fn do_schedule(&self, r: &ScheduleRequest<'_>) -> StoreResult<Outcome> {
        let mut inv = self.scripts.schedule.prepare_invoke();
        inv.arg(&self.prefix)
            .arg(r.now_ms)
            .arg(r.lease)
            .arg(r.lease_ttl_ms)
            .arg(r.key_id)
            .arg(r.key_rpm)
            .arg(r.key_concurrency)
            .arg(r.user_id)
            .arg(r.user_concurrency)
            .arg(r.session.unwrap_or(""))
            .arg(r.session_ttl_ms)
            .arg(r.queue.unwrap_or(""))
            .arg(r.queue_ttl_ms);
        match &r.retry {
            Some(retry) => {
                inv.arg(retry.account_id);
                match &retry.mark {
                    Some(m) => inv.arg(mark_tag(m.kind)).arg(m.until_ms).arg(&m.reason),
                    None => inv.arg("").arg(0).arg(""),
                };
            }
            None => {
                inv.arg(0).arg("").arg(0).arg("");
            }
        }
        inv.arg(r.random).arg(r.exclude.len());
        for id in r.exclude {
            inv.arg(id);
        }
        for c in r.candidates {
            inv.arg(c.id)
                .arg(c.priority)
                .arg(c.max_concurrency)
                .arg(c.weight);
        }
        let mut conn = self.conn();
        let reply: Vec<String> = inv.invoke_async(&mut conn).await?;
        parse_outcome(&reply)
    }
}

fn parse_outcome(reply: &[String]) -> StoreResult<Outcome> {
    let bad = || StateError::Protocol(format!("unexpected schedule reply {reply:?}"));
    let int = |i: usize| -> StoreResult<i64> {
        reply.get(i).and_then(|v| v.parse().ok()).ok_or_else(bad)
    };
    Ok(match reply.first().map(String::as_str) {
        Some("picked") => {
            let from = int(2)?;
            let switched = if from == 0 {
                None
            } else {
                let reason = reply
                    .get(3)
                    .and_then(|r| SwitchReason::parse(r))
                    .ok_or_else(bad)?;
                Some(Switch { from, reason })
            };
            Outcome::Picked {
                account_id: int(1)?,
                switched,
            }
        }
        Some("rpm") => Outcome::KeyRateLimited {
            retry_after_ms: int(1)? as u64,
        },
        Some("key_busy") => Outcome::KeyBusy,
        Some("user_busy") => Outcome::UserBusy,
        Some("full") => Outcome::Full,
        Some("none") => Outcome::NoAccount,
        _ => return Err(bad()),
    })
}

impl StateStore for RedisStore {
    fn schedule<'a>(&'a self, req: &'a ScheduleRequest<'a>) -> StoreFuture<'a, Outcome> {
        Box::pin(self.do_schedule(req))
    }

    fn release<'a>(&'a self, end: &'a Release<'a>) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut inv = self.scripts.release.prepare_invoke();
            inv.arg(&self.prefix).arg(end.now_ms);
            match end.held {
                Some(h) => inv
                    .arg(&h.lease)
                    .arg(h.account_id)
                    .arg(h.user_id)
                    .arg(h.key_id),
                None => inv.arg("").arg(0).arg(0).arg(0),
            };
            match (end.held, end.bind) {
                (Some(_), Some(b)) => inv.arg(&b.session).arg(b.account_id).arg(b.ttl_ms.max(1)),
                _ => inv.arg("").arg(0).arg(0),
            };
            match end.mark {
                Some(m) => inv
                    .arg(mark_tag(m.kind))
                    .arg(m.account_id)
                    .arg(m.until_ms)
                    .arg(&m.reason),
                None => inv.arg("").arg(0).arg(0).arg(""),
            };
            let mut conn = self.conn();
            let _: i64 = inv.invoke_async(&mut conn).await?;
            Ok(())
        })
    }

    fn renew<'a>(&'a self, held: &'a [Held], now_ms: i64, ttl_ms: u64) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut conn = self.conn();
            for chunk in held.chunks(1000) {
                let mut inv = self.scripts.renew.prepare_invoke();
                inv.arg(&self.prefix)
                    .arg(now_ms + ttl_ms as i64)
                    .arg(ttl_ms);
                for h in chunk {
                    inv.arg(&h.lease)
                        .arg(h.account_id)
                        .arg(h.user_id)
                        .arg(h.key_id);
                }
                let _: i64 = inv.invoke_async(&mut conn).await?;
            }
            Ok(())
        })
    }

    fn leave_queue<'a>(&'a self, queue: &'a str, lease: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut conn = self.conn();
            let _: () = redis::pipe()
                .zrem(format!("{}q:{queue}", self.prefix), lease)
                .ignore()
                .zrem(format!("{}qd:{queue}", self.prefix), lease)
                .ignore()
                .query_async(&mut conn)
                .await?;
            Ok(())
        })
    }

    fn sessions(&self, key_id: Option<i64>, _now_ms: i64) -> StoreFuture<'_, Vec<SessionEntry>> {
        Box::pin(async move {
            let pattern = match key_id {
                Some(k) => format!("s:{k}:*"),
                None => "s:*".to_string(),
            };
            let keys = self.scan(&pattern).await?;
            let mut out = Vec::with_capacity(keys.len());
            let mut conn = self.conn();
            for chunk in keys.chunks(500) {
                let mut pipe = redis::pipe();
                for k in chunk {
                    pipe.get(k).pttl(k);
                }
                let values: Vec<(Option<i64>, i64)> = pipe.query_async(&mut conn).await?;
                for (k, (account, ttl)) in chunk.iter().zip(values) {
                    let (Some(account), Some((key, session))) = (
                        account,
                        self.id_after(k, "s:").and_then(|rest| rest.split_once(':')),
                    ) else {
                        continue;
                    };
                    let Ok(key) = key.parse() else { continue };
                    if ttl > 0 {
                        out.push(SessionEntry {
                            key_id: key,
                            session: session.to_string(),
                            account_id: account,
                            ttl_ms: ttl,
                        });
                    }
                }
            }
            out.sort_by(|a, b| (a.key_id, &a.session).cmp(&(b.key_id, &b.session)));
            Ok(out)
        })
    }

    fn clear_sessions<'a>(&'a self, filter: &'a Filter) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            let keys = match (filter.id, &filter.session) {
                (Some(k), Some(s)) => vec![format!("{}s:{k}:{s}", self.prefix)],
                (Some(k), None) => self.scan(&format!("s:{k}:*")).await?,
                (None, Some(s)) => self.scan(&format!("s:*:{s}")).await?,
                (None, None) => self.scan("s:*").await?,
            };
            self.delete(keys).await
        })
    }

    fn in_use(&self, now_ms: i64) -> StoreFuture<'_, Vec<InUse>> {
        Box::pin(async move {
            let mut out = Vec::new();
            let mut conn = self.conn();
            for scope in [Scope::Account, Scope::User, Scope::Key] {
                let keys = self.scan(&format!("{}:*", scope.tag())).await?;
                for chunk in keys.chunks(500) {
                    let mut pipe = redis::pipe();
                    for k in chunk {
                        pipe.zcount(k, format!("({now_ms}"), "+inf");
                    }
                    let counts: Vec<u32> = pipe.query_async(&mut conn).await?;
                    for (k, count) in chunk.iter().zip(counts) {
                        let tag = format!("{}:", scope.tag());
                        if let Some(id) = self.id_after(k, &tag).and_then(|i| i.parse().ok())
                            && count > 0
                        {
                            out.push(InUse { scope, id, count });
                        }
                    }
                }
            }
            out.sort_by_key(|u| (u.scope, u.id));
            Ok(out)
        })
    }

    fn clear_in_use(&self, scope: Option<Scope>, id: Option<i64>) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            let mut keys = Vec::new();
            for s in [Scope::Account, Scope::User, Scope::Key] {
                if scope.is_some_and(|x| x != s) {
                    continue;
                }
                match id {
                    Some(id) => keys.push(format!("{}{}:{id}", self.prefix, s.tag())),
                    None => keys.extend(self.scan(&format!("{}:*", s.tag())).await?),
                }
            }
            self.delete(keys).await
        })
    }

    fn marks(&self, now_ms: i64) -> StoreFuture<'_, Vec<Mark>> {
        Box::pin(async move {
            let mut out = Vec::new();
            let mut conn = self.conn();
            for kind in [MarkKind::Unavailable, MarkKind::RateLimited] {
                let tag = format!("{}:", mark_tag(kind));
                let keys = self.scan(&format!("{tag}*")).await?;
                for chunk in keys.chunks(500) {
                    let values: Vec<Option<String>> = conn.mget(chunk).await?;
                    for (k, v) in chunk.iter().zip(values) {
                        let Some(id) = self.id_after(k, &tag).and_then(|i| i.parse().ok()) else {
                            continue;
                        };
                        let Some((until, reason)) = v.as_deref().and_then(|v| v.split_once('|'))
                        else {
                            continue;
                        };
                        let until_ms: i64 = until.parse().unwrap_or(0);
                        if until_ms > now_ms {
                            out.push(Mark {
                                account_id: id,
                                kind,
                                until_ms,
                                reason: reason.to_string(),
                            });
                        }
                    }
                }
            }
            out.sort_by_key(|m| (m.account_id, m.kind.as_str()));
            Ok(out)
        })
    }

    fn clear_marks(&self, kind: Option<MarkKind>, account_id: Option<i64>) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            let mut keys = Vec::new();
            for k in [MarkKind::Unavailable, MarkKind::RateLimited] {
                if kind.is_some_and(|x| x != k) {
                    continue;
                }
                match account_id {
                    Some(id) => keys.push(format!("{}{}:{id}", self.prefix, mark_tag(k))),
                    None => keys.extend(self.scan(&format!("{}:*", mark_tag(k))).await?),
                }
            }
            self.delete(keys).await
        })
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let mut conn = self.conn();
            let _: String = redis::cmd("PING").query_async(&mut conn).await?;
            Ok(())
        })
    }
}
