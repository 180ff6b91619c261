//! `users`: operators and their customers, with roles and price rates.
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

use aiproxy_shared::domain::{ActiveStatus, Role};

use super::db::{Usd, impl_from_row, named, readable, with_pool};
use super::{BUMP_VERSION, LastId, Store, StoreError, StoreResult};

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct User {
    pub id: i64,
    pub username: String,
    #[serde(skip)]
    pub password_hash: String,
    pub role: Role,
    pub status: ActiveStatus,
    pub price_rate: Decimal,
    pub email: Option<String>,
    pub max_concurrency: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Bumped by each password change; admin tokens of older generations fail.
    #[serde(skip)]
    pub token_generation: i64,
}

impl_from_row!(User, |r| {
    Ok(User {
        id: r.try_get("id")?,
        username: r.try_get("username")?,
        password_hash: r.try_get("password_hash")?,
        role: named("role", r.try_get("role")?)?,
        status: named("status", r.try_get("status")?)?,
        price_rate: r.try_get::<Usd, _>("price_rate")?.0,
        email: r.try_get("email")?,
        max_concurrency: r.try_get("max_concurrency")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        token_generation: r.try_get("token_generation")?,
    })
});

#[derive(Debug, Clone)]
pub struct NewUser {
    pub username: String,
    pub password_hash: String,
    pub role: Role,
    pub price_rate: Decimal,
    pub email: Option<String>,
    pub max_concurrency: i32,
}

/// Fields an update may change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct UserPatch {
    pub password_hash: Option<String>,
    pub role: Option<Role>,
    pub status: Option<ActiveStatus>,
    pub price_rate: Option<Decimal>,
    pub email: Option<Option<String>>,
    pub max_concurrency: Option<i32>,
}

macro_rules! select_users {
    ($tail:literal) => {
        concat!(
            "SELECT id, username, password_hash, role, status, price_rate, email, max_concurrency, created_at, updated_at, token_generation FROM users",
            $tail
        )
    };
}

/// The one form a user name is matched by, the same on every database:
/// trimmed and in lower case.
pub fn username_key(username: &str) -> String {
    username.trim().to_lowercase()
}

impl Store {
    pub async fn count_users(&self) -> StoreResult<i64> {
        with_pool!(self, p => Ok(sqlx::query_scalar("SELECT COUNT(*) FROM users").fetch_one(p).await?))
    }

    pub async fn create_user(&self, new: &NewUser) -> StoreResult<User> {
        let now = Utc::now();
        let id = with_pool!(self, p => {
            let mut tx = p.begin().await?;
            let done = sqlx::query(
                "INSERT INTO users (username, username_key, password_hash, role, status, price_rate, email, max_concurrency, created_at, updated_at) \
                 VALUES (?, ?, ?, ?, 'active', ?, ?, ?, ?, ?)",
            )
            .bind(&new.username)
            .bind(username_key(&new.username))
            .bind(&new.password_hash)
            .bind(new.role.as_str())
            .bind(Usd(new.price_rate))
            .bind(&new.email)
            .bind(new.max_concurrency)
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::from_write(e, "user"))?;
            sqlx::query(BUMP_VERSION).execute(&mut *tx).await?;
            tx.commit().await?;
            self.signal_change();
            done.last_id()
        });
        self.get_user(id).await
    }

    pub async fn get_user(&self, id: i64) -> StoreResult<User> {
        with_pool!(self, p => sqlx::query_as::<_, User>(select_users!(" WHERE id = ?"))
            .bind(id)
            .fetch_optional(p)
            .await?
            .ok_or(StoreError::NotFound))
    }

    /// The user whose name matches `username` once both are normalised.
    pub async fn find_user_by_name(&self, username: &str) -> StoreResult<Option<User>> {
        with_pool!(self, p => Ok(sqlx::query_as::<_, User>(select_users!(" WHERE username_key = ?"))
            .bind(username_key(username))
            .fetch_optional(p)
            .await?))
    }

    /// Fills in the normalised name of users created before it existed. Two
    /// names that normalise alike (possible on SQLite before) keep the
    /// first; the other is reported and signs in by a name with its id.
    pub async fn backfill_username_keys(&self) -> StoreResult<()> {
        let missing: Vec<(i64, String)> = with_pool!(self, p => sqlx::query_as(
            "SELECT id, username FROM users WHERE username_key IS NULL ORDER BY id",
        )
        .fetch_all(p)
        .await?);
        for (id, name) in missing {
            let key = username_key(&name);
            let taken: Option<i64> = with_pool!(self, p => sqlx::query_scalar(
                "SELECT id FROM users WHERE username_key = ?",
            )
            .bind(&key)
            .fetch_optional(p)
            .await?);
            let key = if taken.is_some() {
                let renamed = format!("{key}#{id}");
                tracing::warn!(user_id = id, sign_in_as = %renamed, "two user names differ only in case or spaces; this one signs in with its id appended");
                renamed
            } else {
                key
            };
            with_pool!(self, p => {
                sqlx::query("UPDATE users SET username_key = ? WHERE id = ?")
                    .bind(&key)
                    .bind(id)
                    .execute(p)
                    .await?;
            });
        }
        Ok(())
    }

    pub async fn list_users(&self) -> StoreResult<Vec<User>> {
        with_pool!(self, p => {
            let rows = sqlx::query(select_users!(" ORDER BY id")).fetch_all(p).await?;
            Ok(readable("users", &rows))
        })
    }

    /// Applies `patch` in one statement: fields it leaves out keep
    /// whatever they hold when it runs, and a new password moves the token
    /// generation on from the stored one.
    pub async fn update_user(&self, id: i64, patch: &UserPatch) -> StoreResult<User> {
        let now = Utc::now();
        with_pool!(self, p => {
            let mut tx = p.begin().await?;
            sqlx::query(
                "UPDATE users SET password_hash = COALESCE(?, password_hash), token_generation = token_generation + ?, \
                 role = COALESCE(?, role), status = COALESCE(?, status), price_rate = COALESCE(?, price_rate), \
                 email = CASE WHEN ? THEN ? ELSE email END, max_concurrency = COALESCE(?, max_concurrency), \
                 updated_at = ? WHERE id = ?",
            )
            .bind(&patch.password_hash)
            .bind(i64::from(patch.password_hash.is_some()))
            .bind(patch.role.map(Role::as_str))
            .bind(patch.status.map(ActiveStatus::as_str))
            .bind(patch.price_rate.map(Usd))
            .bind(patch.email.is_some())
            .bind(patch.email.clone().flatten())
            .bind(patch.max_concurrency)
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            let user = sqlx::query_as::<_, User>(select_users!(" WHERE id = ?"))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NotFound)?;
            sqlx::query(BUMP_VERSION).execute(&mut *tx).await?;
            tx.commit().await?;
            self.signal_change();
            Ok(user)
        })
    }

    /// Deletes a user and their keys and packages; their request logs stay.
    pub async fn delete_user(&self, id: i64) -> StoreResult<()> {
        with_pool!(self, p => {
            let mut tx = p.begin().await?;
            let done = sqlx::query("DELETE FROM users WHERE id = ?").bind(id).execute(&mut *tx).await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound);
            }
            sqlx::query("DELETE FROM api_keys WHERE user_id = ?").bind(id).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM user_packages WHERE user_id = ?").bind(id).execute(&mut *tx).await?;
            sqlx::query(BUMP_VERSION).execute(&mut *tx).await?;
            tx.commit().await?;
            self.signal_change();
        });
        Ok(())
    }
}
