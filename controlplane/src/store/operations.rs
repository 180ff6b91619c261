//! `system_configs`, `audit_logs` and `leader_leases`: runtime settings, the
//! record of admin changes, and the lease that picks which control-plane
//! replica runs the background jobs.
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::db::{Dialect, impl_from_row, with_pool};
use super::{BUMP_VERSION, Store, StoreError, StoreResult};

const UPSERT_CONFIG: Dialect = Dialect {
    mysql: "INSERT INTO system_configs (`key`, value, updated_at) VALUES (?, ?, ?) \
            ON DUPLICATE KEY UPDATE value = VALUES(value), updated_at = VALUES(updated_at)",
    sqlite: "INSERT INTO system_configs (`key`, value, updated_at) VALUES (?, ?, ?) \
             ON CONFLICT(`key`) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
};

/// Internal `system_configs` row: request logs before this instant were
/// deleted past their retention (the consistency check then leaves out
/// what they covered).
pub const PURGED_BEFORE_KEY: &str = "request_logs_purged_before";

/// One admin change.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    /// User id of the actor; 0 for the management token and background jobs.
    pub actor_id: i64,
    pub actor: String,
    /// HTTP method of the change, or the job's verb (e.g. `DISABLE`).
    pub action: String,
    pub target: String,
    pub status: i32,
    /// The request body with secrets masked.
    pub detail: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl_from_row!(AuditEntry, |r| {
    Ok(AuditEntry {
        id: r.try_get("id")?,
        actor_id: r.try_get("actor_id")?,
        actor: r.try_get("actor")?,
        action: r.try_get("action")?,
        target: r.try_get("target")?,
        status: r.try_get("status")?,
        detail: r.try_get("detail")?,
        created_at: r.try_get("created_at")?,
    })
});

/// An audit entry to write.
#[derive(Debug, Clone)]
pub struct NewAudit<'a> {
    pub actor_id: i64,
    pub actor: &'a str,
    pub action: &'a str,
    pub target: &'a str,
    pub status: u16,
    pub detail: Option<&'a str>,
}

/// Which audit entries to read, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub actor: Option<String>,
    /// Entries whose target starts with this.
    pub target_prefix: Option<String>,
    pub before_id: Option<i64>,
    pub limit: u32,
}

impl Store {
    /// Every stored setting, by key.
    pub async fn system_configs(&self) -> StoreResult<BTreeMap<String, String>> {
        with_pool!(self, p => {
            let rows: Vec<(String, String)> = sqlx::query_as("SELECT `key`, value FROM system_configs")
                .fetch_all(p)
                .await?;
            Ok(rows.into_iter().collect())
        })
    }

    /// Stores `set` and removes `unset` (back to their defaults) in one
    /// transaction that also bumps the snapshot version.
    pub async fn save_system_configs(
        &self,
        set: &BTreeMap<String, String>,
        unset: &[String],
    ) -> StoreResult<()> {
        let upsert = UPSERT_CONFIG.pick(self);
        let now = Utc::now();
        with_pool!(self, p => {
            let mut tx = p.begin().await?;
            for (key, value) in set {
                sqlx::query(upsert).bind(key).bind(value).bind(now).execute(&mut *tx).await?;
            }
            for key in unset {
                sqlx::query("DELETE FROM system_configs WHERE `key` = ?").bind(key).execute(&mut *tx).await?;
            }
            sqlx::query(BUMP_VERSION).execute(&mut *tx).await?;
            tx.commit().await?;
            self.signal_change();
            Ok(())
        })
    }

    pub async fn record_audit(&self, entry: &NewAudit<'_>) -> StoreResult<()> {
        with_pool!(self, p => {
            sqlx::query(
                "INSERT INTO audit_logs (actor_id, actor, action, target, status, detail, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(entry.actor_id)
            .bind(entry.actor)
            .bind(entry.action)
            .bind(entry.target)
            .bind(entry.status as i32)
            .bind(entry.detail)
            .bind(Utc::now())
            .execute(p)
            .await?;
            Ok(())
        })
    }

    /// Audit details that mention `needle`, to rewrite them.
    pub async fn audit_details_containing(&self, needle: &str) -> StoreResult<Vec<(i64, String)>> {
        with_pool!(self, p => Ok(sqlx::query_as(
            "SELECT id, detail FROM audit_logs WHERE detail LIKE ? ORDER BY id",
        )
        .bind(format!("%{needle}%"))
        .fetch_all(p)
        .await?))
    }

    pub async fn set_audit_detail(&self, id: i64, detail: &str) -> StoreResult<()> {
        with_pool!(self, p => {
            sqlx::query("UPDATE audit_logs SET detail = ? WHERE id = ?")
                .bind(detail)
                .bind(id)
                .execute(p)
                .await?;
        });
        Ok(())
    }

    pub async fn list_audit(&self, filter: &AuditFilter) -> StoreResult<Vec<AuditEntry>> {
        let mut sql = String::from(
            "SELECT id, actor_id, actor, action, target, status, detail, created_at FROM audit_logs WHERE 1 = 1",
        );
        if filter.actor.is_some() {
            sql.push_str(" AND actor = ?");
        }
        if filter.target_prefix.is_some() {
            sql.push_str(" AND target LIKE ? ESCAPE '!'");
        }
        if filter.before_id.is_some() {
            sql.push_str(" AND id < ?");
        }
        sql.push_str(" ORDER BY id DESC LIMIT ?");
        let prefix = filter.target_prefix.as_ref().map(|t| {
            format!(
                "{}%",
                t.replace('!', "!!").replace('%', "!%").replace('_', "!_")
            )
        });
        with_pool!(self, p => {
            let mut q = sqlx::query_as::<_, AuditEntry>(&sql);
            if let Some(actor) = &filter.actor {
                q = q.bind(actor);
            }
            if let Some(prefix) = &prefix {
                q = q.bind(prefix);
            }
            if let Some(before) = filter.before_id {
                q = q.bind(before);
            }
            Ok(q.bind(filter.limit.clamp(1, 1000) as i64).fetch_all(p).await?)
        })
    }

    /// Takes or renews the lease `name` for `holder` until `ttl` from now;
    /// returns whether `holder` holds it. Another holder's lease is taken
    /// only once it has lapsed. Times are the database's, so replicas whose
    /// clocks disagree still agree on when a lease lapses.
    pub async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> StoreResult<bool> {
        let now = self.database_now().await?;
        let until = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::seconds(15));
        with_pool!(self, p => {
            let renewed = sqlx::query(
                "UPDATE leader_leases SET holder = ?, expires_at = ? WHERE name = ? AND (holder = ? OR expires_at < ?)",
            )
            .bind(holder)
            .bind(until)
            .bind(name)
            .bind(holder)
            .bind(now)
            .execute(p)
            .await?;
            if renewed.rows_affected() > 0 {
                return Ok(true);
            }
            let taken = sqlx::query("INSERT INTO leader_leases (name, holder, expires_at) VALUES (?, ?, ?)")
                .bind(name)
                .bind(holder)
                .bind(until)
                .execute(p)
                .await;
            match taken.map_err(|e| StoreError::from_write(e, "lease")) {
                Ok(_) => Ok(true),
                Err(StoreError::Conflict(_)) => Ok(false),
                Err(e) => Err(e),
            }
        })
    }

    /// The database server's clock (MySQL); SQLite's is this host's.
    async fn database_now(&self) -> StoreResult<DateTime<Utc>> {
        match &self.pool {
            super::db::Pool::MySql(p) => Ok(sqlx::query_scalar("SELECT UTC_TIMESTAMP(3)")
                .fetch_one(p)
                .await?),
            super::db::Pool::Sqlite(_) => Ok(Utc::now()),
        }
    }

    /// Gives the lease up at shutdown, so another replica need not wait it out.
    pub async fn release_lease(&self, name: &str, holder: &str) -> StoreResult<()> {
        with_pool!(self, p => {
            sqlx::query("DELETE FROM leader_leases WHERE name = ? AND holder = ?")
                .bind(name)
                .bind(holder)
                .execute(p)
                .await?;
            Ok(())
        })
    }

    /// Deletes request logs older than `before` in batches of `batch` rows
    /// (so a purge never holds long locks), then records the cut for the
    /// consistency check; returns how many went.
    pub async fn purge_request_logs(&self, before: DateTime<Utc>, batch: u32) -> StoreResult<u64> {
        // The cut is recorded first (never moving back), so a purge that
        // stops half way leaves the consistency check knowing it.
        let has_old: Option<i64> = with_pool!(self, p => sqlx::query_scalar(
            "SELECT id FROM request_logs WHERE created_at < ? LIMIT 1",
        )
        .bind(before)
        .fetch_optional(p)
        .await?);
        if has_old.is_none() {
            return Ok(0);
        }
        let recorded = self
            .system_configs()
            .await?
            .get(PURGED_BEFORE_KEY)
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc));
        if recorded.is_none_or(|r| r < before) {
            let upsert = UPSERT_CONFIG.pick(self);
            with_pool!(self, p => {
                sqlx::query(upsert)
                    .bind(PURGED_BEFORE_KEY)
                    .bind(before.to_rfc3339())
                    .bind(Utc::now())
                    .execute(p)
                    .await?;
            });
        }
        let mut purged = 0;
        loop {
            let n = self.purge_batch(before, batch).await?;
            if n == 0 {
                break;
            }
            purged += n;
        }
        Ok(purged)
    }

    async fn purge_batch(&self, before: DateTime<Utc>, batch: u32) -> StoreResult<u64> {
        with_pool!(self, p => {
            let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM request_logs WHERE created_at < ? ORDER BY id LIMIT ?")
                .bind(before)
                .bind(batch as i64)
                .fetch_all(p)
                .await?;
            if ids.is_empty() {
                return Ok(0);
            }
            let marks = vec!["?"; ids.len()].join(", ");
            let sql = format!("DELETE FROM request_logs WHERE id IN ({marks})");
            let mut q = sqlx::query(&sql);
            for id in &ids {
                q = q.bind(id);
            }
            Ok(q.execute(p).await?.rows_affected())
        })
    }
}

impl Store {
    /// Bumps the snapshot version with no other change, so every replica
    /// rebuilds and every data plane reloads; returns the new version.
    pub async fn bump_snapshot_version(&self) -> StoreResult<u64> {
        with_pool!(self, p => {
            sqlx::query(BUMP_VERSION).execute(p).await?;
            self.signal_change();
        });
        self.snapshot_version().await
    }
}
