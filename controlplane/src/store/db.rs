//! Connection pools, migrations, the USD column type and the backend dispatch macro.
use std::borrow::Cow;
use std::str::FromStr;
use std::time::Duration;

use futures_util::future::BoxFuture;
use rust_decimal::Decimal;
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::mysql::{MySql, MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Decode, Encode, Type};

use super::StoreResult;

/// Which database a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    MySql,
    Sqlite,
}

#[derive(Clone)]
pub(crate) enum Pool {
    MySql(MySqlPool),
    Sqlite(SqlitePool),
}

/// The control plane's database.
#[derive(Clone)]
pub struct Store {
    pub(crate) pool: Pool,
    /// Ingestion batches run one at a time in this process (package usage is
    /// read, charged and written back; MySQL also locks the rows for other replicas).
    pub(crate) ingest_lock: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// Notified after every commit that moves the snapshot version.
    pub(crate) changes: std::sync::Arc<tokio::sync::Notify>,
}

/// Runs `$body` with `$p` bound to the concrete pool; the body is compiled
/// once per backend, so queries shared by both are written once.
macro_rules! with_pool {
    ($store:expr, $p:ident => $body:expr) => {
        match &$store.pool {
            $crate::store::db::Pool::MySql($p) => $body,
            $crate::store::db::Pool::Sqlite($p) => $body,
        }
    };
}
pub(crate) use with_pool;

/// SQL that differs between the backends.
pub(crate) struct Dialect {
    pub mysql: &'static str,
    pub sqlite: &'static str,
}

impl Dialect {
    pub(crate) fn pick(&self, store: &Store) -> &'static str {
        match store.pool {
            Pool::MySql(_) => self.mysql,
            Pool::Sqlite(_) => self.sqlite,
        }
    }
}

/// Implements `FromRow` for both backends from one body.
macro_rules! impl_from_row {
    ($ty:ty, |$row:ident| $body:block) => {
        impl<'r> sqlx::FromRow<'r, sqlx::mysql::MySqlRow> for $ty {
            fn from_row($row: &'r sqlx::mysql::MySqlRow) -> sqlx::Result<Self> {
                #[allow(unused_imports)]
                use sqlx::Row as _;
                $body
            }
        }
        impl<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow> for $ty {
            fn from_row($row: &'r sqlx::sqlite::SqliteRow) -> sqlx::Result<Self> {
                #[allow(unused_imports)]
                use sqlx::Row as _;
                $body
            }
        }
    };
}
pub(crate) use impl_from_row;

/// A column holding one of an enum's names, e.g. a status.
pub(crate) fn named<T>(column: &str, value: String) -> sqlx::Result<T>
where
    T: std::str::FromStr<Err = &'static str>,
{
    value.parse().map_err(|why| sqlx::Error::ColumnDecode {
        index: column.to_string(),
        source: format!("{value:?}: {why}").into(),
    })
}

/// A column holding a list of an enum's names.
pub(crate) fn named_list<T>(column: &str, value: Option<String>) -> sqlx::Result<Vec<T>>
where
    T: std::str::FromStr<Err = &'static str>,
{
    list_from_column::<String>(value)
        .into_iter()
        .map(|v| named(column, v))
        .collect()
}

/// Decodes each row of a listing on its own: a row whose value no longer
/// reads (a hand edit, a restore from an older version) is logged by id and
/// left out, so it is never served and never stops the rest.
pub(crate) fn readable<'r, R, T>(table: &str, rows: &'r [R]) -> Vec<T>
where
    R: sqlx::Row,
    T: sqlx::FromRow<'r, R>,
    i64: Type<R::Database> + Decode<'r, R::Database>,
    &'static str: sqlx::ColumnIndex<R>,
{
    rows.iter()
        .filter_map(|row| match T::from_row(row) {
            Ok(value) => Some(value),
            Err(error) => {
                let id = row.try_get::<i64, _>("id").unwrap_or_default();
                tracing::error!(table, id, %error, "row left out: a value does not read");
                None
            }
        })
        .collect()
}

impl Store {
    /// Connects to `url` (`mysql://…` or `sqlite://…`), creating a SQLite file if needed.
    pub async fn connect(url: &str) -> StoreResult<Store> {
        Store::connect_sized(url, 0).await
    }

    /// Like [`Store::connect`] with at most `pool_size` connections (0: 16
    /// on MySQL, 8 on SQLite).
    pub async fn connect_sized(url: &str, pool_size: u32) -> StoreResult<Store> {
        let size = |default: u32| if pool_size == 0 { default } else { pool_size };
        let pool = if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?;
            // Created 0600 before SQLite opens it; its WAL and shared-memory
            // files take the database file's mode.
            let file = options.get_filename();
            if !file.as_os_str().is_empty() && file != std::path::Path::new(":memory:") {
                aiproxy_shared::fs::ensure_private_file(file).map_err(sqlx::Error::Io)?;
            }
            let options = options
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(false);
            Pool::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(size(8))
                    .connect_with(options)
                    .await?,
            )
        } else {
            let url = url.replacen("mariadb://", "mysql://", 1);
            let options = MySqlConnectOptions::from_str(&url)?
                .charset("utf8mb4")
                .timezone(Some("+00:00".into()));
            let host = options.get_host().to_string();
            let pool = MySqlPoolOptions::new()
                .max_connections(size(16))
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options)
                .await?;
            warn_if_plaintext(&pool, &host).await?;
            Pool::MySql(pool)
        };
        Ok(Store {
            pool,
            ingest_lock: Default::default(),
            changes: Default::default(),
        })
    }

    /// Connections of the pool, and how many of them are idle.
    pub fn pool_use(&self) -> (u32, u32) {
        let idle = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        match &self.pool {
            Pool::MySql(p) => (p.size(), idle(p.num_idle())),
            Pool::Sqlite(p) => (p.size(), idle(p.num_idle())),
        }
    }

    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::MySql(_) => Backend::MySql,
            Pool::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// Applies pending forward-only migrations (locked on MySQL, so replicas can race).
    pub async fn migrate(&self) -> StoreResult<()> {
        match &self.pool {
            Pool::MySql(p) => {
                Migrator::new(Embedded(MYSQL_MIGRATIONS))
                    .await?
                    .run(p)
                    .await?
            }
            Pool::Sqlite(p) => {
                Migrator::new(Embedded(SQLITE_MIGRATIONS))
                    .await?
                    .run(p)
                    .await?
            }
        }
        Ok(())
    }

    /// Why the store cannot serve, if it cannot: the database does not
    /// answer, or a migration this build knows is not applied.
    pub async fn unready(&self) -> Option<String> {
        let embedded: Vec<i64> = match self.pool {
            Pool::MySql(_) => MYSQL_MIGRATIONS.iter().map(|m| m.0).collect(),
            Pool::Sqlite(_) => SQLITE_MIGRATIONS.iter().map(|m| m.0).collect(),
        };
        let applied: Result<Vec<i64>, sqlx::Error> = with_pool!(self, p => {
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success = 1")
                .fetch_all(p)
                .await
        });
        match applied {
            Err(e) => Some(format!("database: {e}")),
            Ok(applied) => {
                let missing: Vec<String> = embedded
                    .iter()
                    .filter(|v| !applied.contains(v))
                    .map(ToString::to_string)
                    .collect();
                (!missing.is_empty())
                    .then(|| format!("migrations not applied: {}", missing.join(", ")))
            }
        }
    }

    pub async fn close(&self) {
        with_pool!(self, p => p.close().await)
    }
}

type EmbeddedMigration = (i64, &'static str, &'static str);

const MYSQL_MIGRATIONS: &[EmbeddedMigration] = &[
    (
        1,
        "init",
        include_str!("../../../migrations/mysql/0001_init.sql"),
    ),
    (
        2,
        "scheduling",
        include_str!("../../../migrations/mysql/0002_scheduling.sql"),
    ),
    (
        3,
        "billing",
        include_str!("../../../migrations/mysql/0003_billing.sql"),
    ),
    (
        4,
        "operations",
        include_str!("../../../migrations/mysql/0004_operations.sql"),
    ),
    (
        5,
        "sessions",
        include_str!("../../../migrations/mysql/0005_sessions.sql"),
    ),
    (
        6,
        "hardening",
        include_str!("../../../migrations/mysql/0006_hardening.sql"),
    ),
    (
        7,
        "observability",
        include_str!("../../../migrations/mysql/0007_observability.sql"),
    ),
];
const SQLITE_MIGRATIONS: &[EmbeddedMigration] = &[
    (
        1,
        "init",
        include_str!("../../../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "scheduling",
        include_str!("../../../migrations/sqlite/0002_scheduling.sql"),
    ),
    (
        3,
        "billing",
        include_str!("../../../migrations/sqlite/0003_billing.sql"),
    ),
    (
        4,
        "operations",
        include_str!("../../../migrations/sqlite/0004_operations.sql"),
    ),
    (
        5,
        "sessions",
        include_str!("../../../migrations/sqlite/0005_sessions.sql"),
    ),
    (
        6,
        "hardening",
        include_str!("../../../migrations/sqlite/0006_hardening.sql"),
    ),
    (
        7,
        "observability",
        include_str!("../../../migrations/sqlite/0007_observability.sql"),
    ),
];

/// Migrations compiled into the binary, so it needs no files at run time.
#[derive(Debug)]
struct Embedded(&'static [EmbeddedMigration]);

impl<'s> MigrationSource<'s> for Embedded {
    fn resolve(self) -> BoxFuture<'s, Result<Vec<Migration>, BoxDynError>> {
        Box::pin(async move {
            Ok(self
                .0
                .iter()
                .map(|(version, name, sql)| {
                    Migration::new(
                        *version,
                        Cow::Borrowed(*name),
                        MigrationType::Simple,
                        Cow::Borrowed(*sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

/// A USD amount (or rate) as stored: DECIMAL(20,10) on MySQL, INTEGER units
/// of 1e-10 on SQLite, so sums and increments are exact on both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Usd(pub Decimal);

pub(crate) const SQLITE_SCALE: u32 = 10;

impl Usd {
    fn to_units(self) -> Result<i64, BoxDynError> {
        let mut d = self.0;
        d.rescale(SQLITE_SCALE);
        i64::try_from(d.mantissa()).map_err(|_| "amount out of range".into())
    }
}

impl Type<MySql> for Usd {
    fn type_info() -> sqlx::mysql::MySqlTypeInfo {
        <Decimal as Type<MySql>>::type_info()
    }
    fn compatible(ty: &sqlx::mysql::MySqlTypeInfo) -> bool {
        <Decimal as Type<MySql>>::compatible(ty)
    }
}

impl<'q> Encode<'q, MySql> for Usd {
    fn encode_by_ref(&self, buf: &mut Vec<u8>) -> Result<IsNull, BoxDynError> {
        <Decimal as Encode<MySql>>::encode_by_ref(&self.0, buf)
    }
}

impl<'r> Decode<'r, MySql> for Usd {
    fn decode(value: sqlx::mysql::MySqlValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(Usd(<Decimal as Decode<MySql>>::decode(value)?.normalize()))
    }
}

impl Type<Sqlite> for Usd {
    fn type_info() -> sqlx::sqlite::SqliteTypeInfo {
        <i64 as Type<Sqlite>>::type_info()
    }
    fn compatible(ty: &sqlx::sqlite::SqliteTypeInfo) -> bool {
        <i64 as Type<Sqlite>>::compatible(ty)
    }
}

impl<'q> Encode<'q, Sqlite> for Usd {
    fn encode_by_ref(
        &self,
        buf: &mut Vec<sqlx::sqlite::SqliteArgumentValue<'q>>,
    ) -> Result<IsNull, BoxDynError> {
        let units = self.to_units()?;
        <i64 as Encode<Sqlite>>::encode_by_ref(&units, buf)
    }
}

impl<'r> Decode<'r, Sqlite> for Usd {
    fn decode(value: sqlx::sqlite::SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        let units = <i64 as Decode<Sqlite>>::decode(value)?;
        Ok(Usd(Decimal::new(units, SQLITE_SCALE).normalize()))
    }
}

/// JSON array column (`allowed_models`, bound ids); NULL means none.
pub(crate) fn list_to_column<T: serde::Serialize>(items: &[T]) -> Option<String> {
    #[allow(
        clippy::expect_used,
        reason = "the lists hold numbers and strings, which always serialise"
    )]
    (!items.is_empty()).then(|| serde_json::to_string(items).expect("lists serialize"))
}

pub(crate) fn list_from_column<T: serde::de::DeserializeOwned>(column: Option<String>) -> Vec<T> {
    column
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default()
}

impl Store {
    /// Current version of the data the snapshot carries.
    pub async fn snapshot_version(&self) -> StoreResult<u64> {
        let v: i64 = with_pool!(self, p => sqlx::query_scalar("SELECT version FROM snapshot_version WHERE id = 1")
            .fetch_one(p)
            .await?);
        Ok(v as u64)
    }
}

impl Store {
    /// Runs `work` while holding a lock named `name` across every control
    /// plane sharing this database (MySQL `GET_LOCK`). SQLite serves a single
    /// process, whose callers serialize in memory.
    pub async fn with_named_lock<T, F>(&self, name: &str, work: F) -> StoreResult<T>
    where
        F: std::future::Future<Output = T>,
    {
        match &self.pool {
            Pool::Sqlite(_) => Ok(work.await),
            Pool::MySql(p) => {
                let mut conn = p.acquire().await?;
                // If `work` is cancelled the session ends with the connection,
                // and MySQL releases the lock with it.
                conn.close_on_drop();
                let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, 60)")
                    .bind(name)
                    .fetch_one(&mut *conn)
                    .await?;
                if got != Some(1) {
                    return Err(super::StoreError::Conflict(format!("lock {name} is busy")));
                }
                let out = work.await;
                sqlx::query("DO RELEASE_LOCK(?)")
                    .bind(name)
                    .execute(&mut *conn)
                    .await?;
                Ok(out)
            }
        }
    }
}

/// Without `ssl-mode` a MySQL URL falls back to plaintext when the server
/// offers no TLS: said out loud when the database is not on this host.
async fn warn_if_plaintext(pool: &sqlx::MySqlPool, host: &str) -> Result<(), sqlx::Error> {
    let local = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    let cipher: Option<(String, String)> = sqlx::query_as("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        .fetch_optional(pool)
        .await?;
    let cipher = cipher.map(|(_, value)| value).unwrap_or_default();
    if cipher.is_empty() {
        if !local {
            tracing::warn!(
                host,
                "the database connection is not encrypted: add ?ssl-mode=verify_identity (with ssl-ca=/path/ca.pem for a private CA) to AIPROXY_DATABASE_URL"
            );
        }
    } else {
        tracing::info!(host, cipher, "database connection encrypted");
    }
    Ok(())
}
