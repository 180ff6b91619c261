//! `user_packages`: subscriptions (USD per day, week and month) and quota
//! packages (a USD total), with what each has used.
use aiproxy_shared::billing::{PackageKind, PackageState, PackageUsage, Periods};
use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

use aiproxy_shared::domain::ActiveStatus;

use super::db::{Usd, impl_from_row, list_from_column, list_to_column, named, readable, with_pool};
use super::{BUMP_VERSION, LastId, Store, StoreError, StoreResult};

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Package {
    pub id: i64,
    pub user_id: i64,
    pub name: String,
    /// `subscription` or `quota`.
    #[serde(rename = "type")]
    pub kind: PackageKind,
    pub status: ActiveStatus,
    pub daily_quota: Option<Decimal>,
    pub weekly_quota: Option<Decimal>,
    pub monthly_quota: Option<Decimal>,
    pub daily_used: Decimal,
    pub weekly_used: Decimal,
    pub monthly_used: Decimal,
    pub quota_total: Option<Decimal>,
    pub quota_used: Decimal,
    /// The day, ISO week (`YYYYWW`) and month (`YYYY-MM`) the used figures count.
    pub last_reset_day: Option<NaiveDate>,
    pub last_reset_week: Option<i32>,
    pub last_reset_month: Option<String>,
    pub allowed_models: Vec<String>,
    pub starts_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    /// When an operator last reset its usage.
    pub usage_reset_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl_from_row!(Package, |r| {
    Ok(Package {
        id: r.try_get("id")?,
        user_id: r.try_get("user_id")?,
        name: r.try_get("name")?,
        kind: named("type", r.try_get("type")?)?,
        status: named("status", r.try_get("status")?)?,
        daily_quota: r.try_get::<Option<Usd>, _>("daily_quota")?.map(|u| u.0),
        weekly_quota: r.try_get::<Option<Usd>, _>("weekly_quota")?.map(|u| u.0),
        monthly_quota: r.try_get::<Option<Usd>, _>("monthly_quota")?.map(|u| u.0),
        daily_used: r.try_get::<Usd, _>("daily_used")?.0,
        weekly_used: r.try_get::<Usd, _>("weekly_used")?.0,
        monthly_used: r.try_get::<Usd, _>("monthly_used")?.0,
        quota_total: r.try_get::<Option<Usd>, _>("quota_total")?.map(|u| u.0),
        quota_used: r.try_get::<Usd, _>("quota_used")?.0,
        last_reset_day: r.try_get("last_reset_day")?,
        last_reset_week: r.try_get("last_reset_week")?,
        last_reset_month: r.try_get("last_reset_month")?,
        allowed_models: list_from_column(r.try_get("allowed_models")?),
        starts_at: r.try_get("starts_at")?,
        expires_at: r.try_get("expires_at")?,
        usage_reset_at: r.try_get("usage_reset_at")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
});

impl Package {
    /// Limits and usage as the billing rules read them.
    pub fn state(&self) -> PackageState {
        let ms = |t: Option<DateTime<Utc>>| t.map_or(0, |t| t.timestamp_millis());
        PackageState {
            id: self.id,
            kind: self.kind,
            active: self.status == ActiveStatus::Active,
            starts_at_ms: ms(self.starts_at),
            expires_at_ms: ms(self.expires_at),
            allowed_models: self.allowed_models.clone(),
            daily_quota: self.daily_quota,
            weekly_quota: self.weekly_quota,
            monthly_quota: self.monthly_quota,
            usage: self.usage(),
            quota_total: self.quota_total,
        }
    }

    pub fn usage(&self) -> PackageUsage {
        PackageUsage {
            daily_used: self.daily_used,
            weekly_used: self.weekly_used,
            monthly_used: self.monthly_used,
            day: self.last_reset_day,
            week: self.last_reset_week,
            month: self
                .last_reset_month
                .as_deref()
                .and_then(Periods::parse_month_label),
            quota_used: self.quota_used,
        }
    }
}

/// A package as created; usage starts at zero.
#[derive(Debug, Clone)]
pub struct NewPackage {
    pub user_id: i64,
    pub name: String,
    pub kind: PackageKind,
    pub daily_quota: Option<Decimal>,
    pub weekly_quota: Option<Decimal>,
    pub monthly_quota: Option<Decimal>,
    pub quota_total: Option<Decimal>,
    pub allowed_models: Vec<String>,
    pub starts_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Fields an update may change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct PackagePatch {
    pub name: Option<String>,
    pub status: Option<ActiveStatus>,
    pub daily_quota: Option<Option<Decimal>>,
    pub weekly_quota: Option<Option<Decimal>>,
    pub monthly_quota: Option<Option<Decimal>>,
    pub quota_total: Option<Option<Decimal>>,
    pub allowed_models: Option<Vec<String>>,
    pub starts_at: Option<Option<DateTime<Utc>>>,
    pub expires_at: Option<Option<DateTime<Utc>>>,
}

pub(crate) const SELECT_PACKAGES: &str = "SELECT id, user_id, name, type, status, daily_quota, weekly_quota, monthly_quota, \
     daily_used, weekly_used, monthly_used, quota_total, quota_used, last_reset_day, last_reset_week, last_reset_month, \
     allowed_models, starts_at, expires_at, usage_reset_at, created_at, updated_at FROM user_packages";

fn usd(v: Option<Decimal>) -> Option<Usd> {
    v.map(Usd)
}

impl Store {
    pub async fn create_package(&self, new: &NewPackage) -> StoreResult<Package> {
        let now = Utc::now();
        let id = with_pool!(self, p => {
            let mut tx = p.begin().await?;
            let done = sqlx::query(
                "INSERT INTO user_packages (user_id, name, type, status, daily_quota, weekly_quota, monthly_quota, quota_total, \
                 allowed_models, starts_at, expires_at, created_at, updated_at, usage_updated_at) \
                 VALUES (?, ?, ?, 'active', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(new.user_id)
            .bind(&new.name)
            .bind(new.kind.as_str())
            .bind(usd(new.daily_quota))
            .bind(usd(new.weekly_quota))
            .bind(usd(new.monthly_quota))
            .bind(usd(new.quota_total))
            .bind(list_to_column(&new.allowed_models))
            .bind(new.starts_at)
            .bind(new.expires_at)
            .bind(now)
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query(BUMP_VERSION).execute(&mut *tx).await?;
            tx.commit().await?;
            self.signal_change();
            done.last_id()
        });
        self.get_package(id).await
    }

    pub async fn get_package(&self, id: i64) -> StoreResult<Package> {
        with_pool!(self, p => sqlx::query_as::<_, Package>(&format!("{SELECT_PACKAGES} WHERE id = ?"))
            .bind(id)
            .fetch_optional(p)
            .await?
            .ok_or(StoreError::NotFound))
    }

    /// One user's packages, or everyone's.
    pub async fn list_packages(&self, user_id: Option<i64>) -> StoreResult<Vec<Package>> {
        with_pool!(self, p => {
            let rows = match user_id {
                Some(u) => sqlx::query(&format!("{SELECT_PACKAGES} WHERE user_id = ? ORDER BY id"))
                    .bind(u)
                    .fetch_all(p)
                    .await?,
                None => sqlx::query(&format!("{SELECT_PACKAGES} ORDER BY id")).fetch_all(p).await?,
            };
            Ok(readable("packages", &rows))
        })
    }

    /// Packages whose usage changed at or after `since` (for pushes to nodes).
    pub async fn packages_used_since(&self, since: DateTime<Utc>) -> StoreResult<Vec<Package>> {
        with_pool!(self, p => Ok(sqlx::query_as::<_, Package>(&format!(
            "{SELECT_PACKAGES} WHERE usage_updated_at >= ? ORDER BY id"
        ))
        .bind(since)
        .fetch_all(p)
        .await?))
    }

    /// Applies `patch` in one statement: fields it leaves out keep
    /// whatever they hold when it runs.
    pub async fn update_package(&self, id: i64, patch: &PackagePatch) -> StoreResult<Package> {
        let now = Utc::now();
        with_pool!(self, p => {
            let mut tx = p.begin().await?;
            sqlx::query(
                "UPDATE user_packages SET name = COALESCE(?, name), status = COALESCE(?, status), \
                 daily_quota = CASE WHEN ? THEN ? ELSE daily_quota END, \
                 weekly_quota = CASE WHEN ? THEN ? ELSE weekly_quota END, \
                 monthly_quota = CASE WHEN ? THEN ? ELSE monthly_quota END, \
                 quota_total = CASE WHEN ? THEN ? ELSE quota_total END, \
                 allowed_models = CASE WHEN ? THEN ? ELSE allowed_models END, \
                 starts_at = CASE WHEN ? THEN ? ELSE starts_at END, \
                 expires_at = CASE WHEN ? THEN ? ELSE expires_at END, updated_at = ? WHERE id = ?",
            )
            .bind(&patch.name)
            .bind(patch.status.map(ActiveStatus::as_str))
            .bind(patch.daily_quota.is_some())
            .bind(usd(patch.daily_quota.flatten()))
            .bind(patch.weekly_quota.is_some())
            .bind(usd(patch.weekly_quota.flatten()))
            .bind(patch.monthly_quota.is_some())
            .bind(usd(patch.monthly_quota.flatten()))
            .bind(patch.quota_total.is_some())
            .bind(usd(patch.quota_total.flatten()))
            .bind(patch.allowed_models.is_some())
            .bind(patch.allowed_models.as_deref().and_then(list_to_column))
            .bind(patch.starts_at.is_some())
            .bind(patch.starts_at.flatten())
            .bind(patch.expires_at.is_some())
            .bind(patch.expires_at.flatten())
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            let package = sqlx::query_as::<_, Package>(&format!("{SELECT_PACKAGES} WHERE id = ?"))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NotFound)?;
            sqlx::query(BUMP_VERSION).execute(&mut *tx).await?;
            tx.commit().await?;
            self.signal_change();
            Ok(package)
        })
    }

    pub async fn delete_package(&self, id: i64) -> StoreResult<()> {
        self.delete_by_id("DELETE FROM user_packages WHERE id = ?", id)
            .await
    }

    /// Zeroes the usage of one package, or of all a user's (the seed's reset
    /// recipe as one call). Returns how many packages were reset.
    pub async fn reset_package_usage(
        &self,
        package_id: Option<i64>,
        user_id: Option<i64>,
    ) -> StoreResult<u64> {
        let now = Utc::now();
        let (column, id) = match (package_id, user_id) {
            (Some(id), _) => ("id", id),
            (None, Some(user)) => ("user_id", user),
            (None, None) => return Ok(0),
        };
        with_pool!(self, p => {
            let mut tx = p.begin().await?;
            let done = sqlx::query(&format!(
                "UPDATE user_packages SET daily_used = 0, weekly_used = 0, monthly_used = 0, quota_used = 0, \
                 usage_reset_at = ?, usage_updated_at = ?, updated_at = ? WHERE {column} = ?"
            ))
            .bind(now)
            .bind(now)
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            sqlx::query(BUMP_VERSION).execute(&mut *tx).await?;
            tx.commit().await?;
            self.signal_change();
            Ok(done.rows_affected())
        })
    }
}
