//! Persistence on MySQL or SQLite: one API, one place per backend for dialect differences.
mod accounts;
mod api_keys;
mod db;
mod operations;
mod packages;
mod prices;
mod reports;
mod usage;
mod users;

pub use accounts::{
    Account, AccountPatch, HealthEffect, HealthOutcome, NewAccount, OAuthUsage, UsageWindow,
};
pub use api_keys::{ApiKey, ApiKeyPatch, NewApiKey};
pub use db::{Backend, Store};
pub use operations::{AuditEntry, AuditFilter, NewAudit};
pub use packages::{NewPackage, Package, PackagePatch};
pub use prices::{PriceRow, PriceVersion, shipped_prices};
pub use reports::{ConsistencyReport, GroupBy, RerateReport, RerateScope, UsageTotals};
pub use usage::{DailyUsage, IngestOutcome, RequestLog, RequestLogFilter, UsageRow};
pub use users::{NewUser, User, UserPatch, username_key};

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored value is corrupt: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Maps unique-key violations to `Conflict`.
    pub(crate) fn from_write(err: sqlx::Error, what: &str) -> StoreError {
        if let sqlx::Error::Database(db) = &err
            && db.is_unique_violation()
        {
            return StoreError::Conflict(format!("{what} already exists"));
        }
        StoreError::Database(err)
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests;

/// Bumps the snapshot version; run in the same transaction as the change.
pub(crate) const BUMP_VERSION: &str =
    "UPDATE snapshot_version SET version = version + 1 WHERE id = 1";

impl Store {
    /// Deletes one row with `sql` (a `DELETE … WHERE id = ?`) and bumps the
    /// snapshot version in the same transaction.
    pub(crate) async fn delete_by_id(&self, sql: &'static str, id: i64) -> StoreResult<()> {
        db::with_pool!(self, p => {
            let mut tx = p.begin().await?;
            let done = sqlx::query(sql).bind(id).execute(&mut *tx).await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound);
            }
            sqlx::query(BUMP_VERSION).execute(&mut *tx).await?;
            tx.commit().await?;
        });
        self.signal_change();
        Ok(())
    }

    /// Says a change that moves the snapshot version was committed: the
    /// publisher of this process rebuilds now rather than at its next poll
    /// (other control planes see it at theirs).
    pub(crate) fn signal_change(&self) {
        self.changes.notify_one();
    }

    /// Woken after each committed change that moves the snapshot version.
    pub fn changes(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.changes.clone()
    }
}

/// Id of the row an INSERT created, on either backend.
pub(crate) trait LastId {
    fn last_id(&self) -> i64;
}

impl LastId for sqlx::mysql::MySqlQueryResult {
    fn last_id(&self) -> i64 {
        self.last_insert_id() as i64
    }
}

impl LastId for sqlx::sqlite::SqliteQueryResult {
    fn last_id(&self) -> i64 {
        self.last_insert_rowid()
    }
}
