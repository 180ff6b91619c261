//! Packages: users' subscriptions (daily, weekly, monthly USD) and quota
//! packages (a USD total), and resetting what they have used.
use aiproxy_shared::billing::PackageKind;
use aiproxy_shared::domain::ActiveStatus;
use aiproxy_shared::money::Money;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Actor, ServiceError, ServiceResult, Services, check_models, double_option};
use crate::store::{NewPackage, Package, PackagePatch};

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePackage {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: PackageKind,
    pub daily_quota: Option<Money>,
    pub weekly_quota: Option<Money>,
    pub monthly_quota: Option<Money>,
    pub quota_total: Option<Money>,
    /// Models the package pays for; empty pays for every model.
    #[serde(default)]
    pub allowed_models: Vec<String>,
    pub starts_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Fields to change; a field left out stays as it is, `null` clears it.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdatePackage {
    pub name: Option<String>,
    pub status: Option<ActiveStatus>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Money>)]
    pub daily_quota: Option<Option<Money>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Money>)]
    pub weekly_quota: Option<Option<Money>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Money>)]
    pub monthly_quota: Option<Option<Money>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Money>)]
    pub quota_total: Option<Option<Money>>,
    pub allowed_models: Option<Vec<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub starts_at: Option<Option<DateTime<Utc>>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub expires_at: Option<Option<DateTime<Utc>>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PackageList {
    pub items: Vec<Package>,
    pub total: usize,
}

/// How many things a bulk operation touched.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResetCount {
    pub reset: u64,
}

/// Filters of the package listing.
#[derive(Debug, Default)]
pub struct PackageFilter {
    pub user_id: Option<i64>,
    pub status: Option<ActiveStatus>,
    pub kind: Option<PackageKind>,
}

fn amount(field: &str, v: Option<Money>) -> ServiceResult<Option<Decimal>> {
    match v {
        Some(m) if m.is_negative() => Err(ServiceError::BadRequest(format!(
            "{field} must not be negative"
        ))),
        other => Ok(other.map(Into::into)),
    }
}

fn amount_patch(field: &str, v: Option<Option<Money>>) -> ServiceResult<Option<Option<Decimal>>> {
    v.map(|v| amount(field, v)).transpose()
}

/// A package must be able to limit something.
fn check_shape(kind: PackageKind, limits: [Option<Decimal>; 4]) -> ServiceResult<()> {
    let [daily, weekly, monthly, total] = limits;
    match kind {
        PackageKind::Subscription if daily.is_none() && weekly.is_none() && monthly.is_none() => {
            Err(ServiceError::BadRequest(
                "a subscription needs daily_quota, weekly_quota or monthly_quota".into(),
            ))
        }
        PackageKind::Quota if total.is_none() => Err(ServiceError::BadRequest(
            "a quota package needs quota_total".into(),
        )),
        _ => Ok(()),
    }
}

impl Services {
    /// A package the caller may see: any for admins, their own for users.
    async fn visible_package(&self, actor: &Actor, id: i64) -> ServiceResult<Package> {
        let package = self.store.get_package(id).await?;
        if !actor.is_admin() && Some(package.user_id) != actor.user_id() {
            return Err(ServiceError::NotFound("not found"));
        }
        Ok(package)
    }

    /// Every user's packages for an admin (filtered), a user's own otherwise.
    pub async fn list_packages(
        &self,
        actor: &Actor,
        filter: PackageFilter,
    ) -> ServiceResult<PackageList> {
        let items: Vec<Package> = self
            .store
            .list_packages(actor.listing_scope(filter.user_id))
            .await?
            .into_iter()
            .filter(|p| filter.status.is_none_or(|s| p.status == s))
            .filter(|p| filter.kind.is_none_or(|k| p.kind == k))
            .collect();
        Ok(PackageList {
            total: items.len(),
            items,
        })
    }

    pub async fn user_packages(&self, actor: &Actor, user_id: i64) -> ServiceResult<PackageList> {
        actor.require_self_or_admin(user_id)?;
        let items = self.store.list_packages(Some(user_id)).await?;
        Ok(PackageList {
            total: items.len(),
            items,
        })
    }

    pub async fn get_package(&self, actor: &Actor, id: i64) -> ServiceResult<Package> {
        self.visible_package(actor, id).await
    }

    pub async fn create_package(
        &self,
        actor: &Actor,
        user_id: i64,
        req: CreatePackage,
    ) -> ServiceResult<Package> {
        actor.require_admin()?;
        self.store.get_user(user_id).await?;
        if req.name.trim().is_empty() || req.name.len() > 128 {
            return Err(ServiceError::BadRequest(
                "name must be 1 to 128 characters".into(),
            ));
        }
        check_models(&req.allowed_models)?;
        let new = NewPackage {
            user_id,
            name: req.name.trim().to_string(),
            kind: req.kind,
            daily_quota: amount("daily_quota", req.daily_quota)?,
            weekly_quota: amount("weekly_quota", req.weekly_quota)?,
            monthly_quota: amount("monthly_quota", req.monthly_quota)?,
            quota_total: amount("quota_total", req.quota_total)?,
            allowed_models: req.allowed_models,
            starts_at: req.starts_at,
            expires_at: req.expires_at,
        };
        check_shape(
            req.kind,
            [
                new.daily_quota,
                new.weekly_quota,
                new.monthly_quota,
                new.quota_total,
            ],
        )?;
        let package = self.store.create_package(&new).await?;
        tracing::info!(package_id = package.id, user_id, "package created");
        Ok(package)
    }

    pub async fn update_package(
        &self,
        actor: &Actor,
        id: i64,
        req: UpdatePackage,
    ) -> ServiceResult<Package> {
        actor.require_admin()?;
        let current = self.store.get_package(id).await?;
        if let Some(models) = &req.allowed_models {
            check_models(models)?;
        }
        let patch = PackagePatch {
            name: req.name.map(|n| n.trim().to_string()),
            status: req.status,
            daily_quota: amount_patch("daily_quota", req.daily_quota)?,
            weekly_quota: amount_patch("weekly_quota", req.weekly_quota)?,
            monthly_quota: amount_patch("monthly_quota", req.monthly_quota)?,
            quota_total: amount_patch("quota_total", req.quota_total)?,
            allowed_models: req.allowed_models,
            starts_at: req.starts_at,
            expires_at: req.expires_at,
        };
        check_shape(
            current.kind,
            [
                patch.daily_quota.unwrap_or(current.daily_quota),
                patch.weekly_quota.unwrap_or(current.weekly_quota),
                patch.monthly_quota.unwrap_or(current.monthly_quota),
                patch.quota_total.unwrap_or(current.quota_total),
            ],
        )?;
        Ok(self.store.update_package(id, &patch).await?)
    }

    pub async fn delete_package(&self, actor: &Actor, id: i64) -> ServiceResult<()> {
        actor.require_admin()?;
        Ok(self.store.delete_package(id).await?)
    }

    /// Zeroes one package's usage (periods and quota).
    pub async fn reset_package(&self, actor: &Actor, id: i64) -> ServiceResult<Package> {
        actor.require_admin()?;
        self.store.reset_package_usage(Some(id), None).await?;
        tracing::info!(package_id = id, by = %actor.name(), "package usage reset");
        Ok(self.store.get_package(id).await?)
    }

    /// Zeroes the usage of every package of a user (the seed's reset recipe).
    pub async fn reset_user_packages(
        &self,
        actor: &Actor,
        user_id: i64,
    ) -> ServiceResult<ResetCount> {
        actor.require_admin()?;
        let reset = self.store.reset_package_usage(None, Some(user_id)).await?;
        tracing::info!(user_id, reset, by = %actor.name(), "package usage reset");
        Ok(ResetCount { reset })
    }
}
