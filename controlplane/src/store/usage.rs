//! Usage ingestion (idempotent, one transaction per batch) and request-log queries.
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::QueryBuilder;

use std::collections::{BTreeMap, HashMap, HashSet};

use aiproxy_shared::billing::Periods;
use aiproxy_shared::pricing::TokenUsage;
use chrono::{FixedOffset, NaiveDate};

use super::db::{Dialect, Usd, impl_from_row, with_pool};
use super::packages::{Package, SELECT_PACKAGES};
use super::{Store, StoreResult};

/// One relayed request, as the data plane reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRow {
    pub request_id: String,
    pub user_id: i64,
    pub api_key_id: i64,
    pub account_id: Option<i64>,
    pub node_id: String,
    pub model: String,
    pub platform: String,
    pub endpoint: String,
    pub status_code: i32,
    pub tokens: TokenUsage,
    pub upstream_cost: Decimal,
    pub cost: Decimal,
    pub price_version: i64,
    pub duration_ms: i32,
    pub ttfb_ms: i32,
    pub stream: bool,
    pub session_hash: String,
    pub error_class: String,
    pub usage_source: String,
    pub created_at: DateTime<Utc>,
    /// The package the node admitted the request against; `None` when the
    /// key bills on its own or the user has no packages.
    pub package_id: Option<i64>,
    /// The upstream's own id for the request; empty when it named none.
    pub upstream_request_id: String,
}

/// A token count as the database holds it.
fn count(tokens: u64) -> i64 {
    i64::try_from(tokens).unwrap_or(i64::MAX)
}

/// The five token columns of a request log row.
pub(crate) fn tokens_of<'r, R>(r: &'r R) -> sqlx::Result<TokenUsage>
where
    R: sqlx::Row,
    i64: sqlx::Type<R::Database> + sqlx::Decode<'r, R::Database>,
    &'static str: sqlx::ColumnIndex<R>,
{
    let column =
        |c: &'static str| -> sqlx::Result<u64> { Ok(r.try_get::<i64, _>(c)?.max(0) as u64) };
    Ok(TokenUsage {
        input: column("input_tokens")?,
        output: column("output_tokens")?,
        cache_creation: column("cache_creation_tokens")?,
        cache_creation_1h: column("cache_creation_1h_tokens")?,
        cache_read: column("cache_read_tokens")?,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct IngestOutcome {
    pub inserted: u32,
    pub duplicates: u32,
}

/// A row of `request_logs` as the admin API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RequestLog {
    pub id: i64,
    pub request_id: String,
    pub user_id: i64,
    pub api_key_id: i64,
    /// Which account and node served it, and what it cost upstream: for
    /// administrators only (absent from a user's own logs).
    #[serde(flatten)]
    pub pool: Option<PoolFields>,
    pub model: String,
    pub platform: String,
    pub endpoint: String,
    pub status_code: i32,
    #[serde(flatten)]
    pub tokens: TokenUsage,
    pub total_tokens: i64,
    /// What the user pays.
    pub cost: Decimal,
    pub price_version: i64,
    pub duration_ms: i32,
    pub ttfb_ms: i32,
    pub stream: bool,
    pub error_class: String,
    pub usage_source: String,
    pub created_at: DateTime<Utc>,
    /// The upstream's own id for the request, to quote to the provider;
    /// empty when it named none.
    pub upstream_request_id: String,
}

/// The operator's side of a request: who served it and what it cost them.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PoolFields {
    pub account_id: Option<i64>,
    pub node_id: String,
    pub upstream_cost: Decimal,
}

impl_from_row!(RequestLog, |r| {
    Ok(RequestLog {
        id: r.try_get("id")?,
        request_id: r.try_get("request_id")?,
        user_id: r.try_get("user_id")?,
        api_key_id: r.try_get("api_key_id")?,
        pool: Some(PoolFields {
            account_id: r.try_get("account_id")?,
            node_id: r.try_get("node_id")?,
            upstream_cost: r.try_get::<Usd, _>("upstream_cost")?.0,
        }),
        model: r.try_get("model")?,
        platform: r.try_get("platform")?,
        endpoint: r.try_get("endpoint")?,
        status_code: r.try_get("status_code")?,
        tokens: tokens_of(r)?,
        total_tokens: r.try_get("total_tokens")?,
        cost: r.try_get::<Usd, _>("cost")?.0,
        price_version: r.try_get("price_version")?,
        duration_ms: r.try_get("duration_ms")?,
        ttfb_ms: r.try_get("ttfb_ms")?,
        stream: r.try_get("stream")?,
        error_class: r.try_get("error_class")?,
        usage_source: r.try_get("usage_source")?,
        created_at: r.try_get("created_at")?,
        upstream_request_id: r.try_get("upstream_request_id")?,
    })
});

/// Filters of `GET /request-logs`; every field is optional.
#[derive(Debug, Clone, Default)]
pub struct RequestLogFilter {
    /// aiproxy's request id or the upstream's.
    pub request_id: Option<String>,
    pub user_id: Option<i64>,
    pub api_key_id: Option<i64>,
    pub account_id: Option<i64>,
    pub model: Option<String>,
    pub status_code: Option<i32>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// 1-based page.
    pub page: u32,
    pub page_size: u32,
}

const UPSERT_DAILY: Dialect = Dialect {
    mysql: "INSERT INTO daily_usages (user_id, date, model, request_count, input_tokens, output_tokens, cache_creation_tokens, \
            cache_read_tokens, total_tokens, upstream_cost, total_cost) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
            ON DUPLICATE KEY UPDATE request_count = request_count + VALUES(request_count), input_tokens = input_tokens + VALUES(input_tokens), \
            output_tokens = output_tokens + VALUES(output_tokens), cache_creation_tokens = cache_creation_tokens + VALUES(cache_creation_tokens), \
            cache_read_tokens = cache_read_tokens + VALUES(cache_read_tokens), total_tokens = total_tokens + VALUES(total_tokens), \
            upstream_cost = upstream_cost + VALUES(upstream_cost), total_cost = total_cost + VALUES(total_cost)",
    sqlite: "INSERT INTO daily_usages (user_id, date, model, request_count, input_tokens, output_tokens, cache_creation_tokens, \
             cache_read_tokens, total_tokens, upstream_cost, total_cost) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT(user_id, date, model) DO UPDATE SET request_count = request_count + excluded.request_count, \
             input_tokens = input_tokens + excluded.input_tokens, output_tokens = output_tokens + excluded.output_tokens, \
             cache_creation_tokens = cache_creation_tokens + excluded.cache_creation_tokens, \
             cache_read_tokens = cache_read_tokens + excluded.cache_read_tokens, total_tokens = total_tokens + excluded.total_tokens, \
             upstream_cost = upstream_cost + excluded.upstream_cost, total_cost = total_cost + excluded.total_cost",
};

const LOG_COLUMNS: &str = "INSERT INTO request_logs (request_id, user_id, api_key_id, account_id, node_id, model, platform, \
     endpoint, status_code, input_tokens, output_tokens, cache_creation_tokens, cache_creation_1h_tokens, cache_read_tokens, \
     total_tokens, upstream_cost, cost, price_version, duration_ms, ttfb_ms, stream, session_hash, error_class, usage_source, \
     created_at, package_id, upstream_request_id) ";

/// Rows per multi-row INSERT (27 values each, well under either backend's limit).
const INSERT_CHUNK: usize = 200;

/// Sums of one group of requests, written with one statement.
#[derive(Default)]
struct Totals {
    requests: i64,
    input: i64,
    output: i64,
    cache_creation: i64,
    cache_read: i64,
    total: i64,
    upstream_cost: Decimal,
    cost: Decimal,
    last: Option<DateTime<Utc>>,
}

impl Totals {
    fn add(&mut self, row: &UsageRow) {
        self.requests += 1;
        self.input += count(row.tokens.input);
        self.output += count(row.tokens.output);
        self.cache_creation += count(row.tokens.cache_creation);
        self.cache_read += count(row.tokens.cache_read);
        self.total += count(row.tokens.total());
        self.upstream_cost += row.upstream_cost;
        self.cost += row.cost;
        self.last = self.last.max(Some(row.created_at));
    }
}

/// Package rows of the users in a batch, read (and on MySQL locked) once.
struct Charges {
    packages: HashMap<i64, Vec<Package>>,
    changed: HashSet<i64>,
}

impl Charges {
    /// The package that pays for `row`: the one the node admitted it
    /// against, if it is still the user's. The node decides, so a request
    /// admitted with no package is never charged to one created later.
    fn payer(&self, row: &UsageRow) -> Option<i64> {
        let id = row.package_id?;
        let owned = self.packages.get(&row.user_id)?.iter().any(|p| p.id == id);
        if !owned {
            tracing::warn!(package_id = id, request_id = %row.request_id, "usage names a package the user no longer has; not charged");
        }
        owned.then_some(id)
    }

    fn charge(&mut self, row: &UsageRow, package_id: i64, tz: FixedOffset) {
        let Some(p) = self
            .packages
            .get_mut(&row.user_id)
            .and_then(|ps| ps.iter_mut().find(|p| p.id == package_id))
        else {
            return;
        };
        let mut usage = p.usage();
        usage.charge(row.cost, Periods::at(row.created_at, tz));
        p.daily_used = usage.daily_used;
        p.weekly_used = usage.weekly_used;
        p.monthly_used = usage.monthly_used;
        p.quota_used = usage.quota_used;
        p.last_reset_day = usage.day;
        p.last_reset_week = usage.week;
        p.last_reset_month = usage.month.map(Periods::month_label);
        self.changed.insert(package_id);
    }
}

impl Store {
    /// Writes a batch of usage rows in one transaction: the request logs,
    /// `daily_usages` (by day in `tz`), the packages charged, the keys and
    /// the accounts. A row whose `request_id` is already stored is skipped
    /// entirely, so a replayed batch never bills twice.
    pub async fn ingest_usage(
        &self,
        rows: &[UsageRow],
        tz: FixedOffset,
    ) -> StoreResult<IngestOutcome> {
        let _serial = self.ingest_lock.lock().await;
        let lock_suffix = match self.backend() {
            super::Backend::MySql => " FOR UPDATE",
            super::Backend::Sqlite => "",
        };
        let upsert_daily = UPSERT_DAILY.pick(self);
        let now = Utc::now();
        with_pool!(self, p => {
            let mut tx = p.begin().await?;
            // Only rows not stored yet (nor repeated within the batch) count.
            let mut existing = HashSet::new();
            for chunk in rows.chunks(INSERT_CHUNK) {
                let mut q = QueryBuilder::new("SELECT request_id FROM request_logs WHERE request_id IN (");
                let mut ids = q.separated(", ");
                for row in chunk {
                    ids.push_bind(row.request_id.as_str());
                }
                q.push(")");
                let found: Vec<String> = q.build_query_scalar().fetch_all(&mut *tx).await?;
                existing.extend(found);
            }
            let mut fresh: Vec<&UsageRow> = Vec::with_capacity(rows.len());
            for row in rows {
                if existing.insert(row.request_id.clone()) {
                    fresh.push(row);
                }
            }
            let outcome = IngestOutcome {
                inserted: fresh.len() as u32,
                duplicates: (rows.len() - fresh.len()) as u32,
            };

            // The packages of users whose requests name one, locked on MySQL.
            let mut charges = Charges { packages: HashMap::new(), changed: HashSet::new() };
            for row in fresh.iter().filter(|r| r.package_id.is_some()) {
                if let std::collections::hash_map::Entry::Vacant(slot) = charges.packages.entry(row.user_id) {
                    let packages = sqlx::query_as::<_, Package>(&format!(
                        "{SELECT_PACKAGES} WHERE user_id = ? ORDER BY id{lock_suffix}"
                    ))
                    .bind(row.user_id)
                    .fetch_all(&mut *tx)
                    .await?;
                    slot.insert(packages);
                }
            }
            let payers: Vec<Option<i64>> = fresh.iter().map(|r| charges.payer(r)).collect();

            for (chunk, payers) in fresh.chunks(INSERT_CHUNK).zip(payers.chunks(INSERT_CHUNK)) {
                let mut q = QueryBuilder::new(LOG_COLUMNS);
                q.push_values(chunk.iter().zip(payers), |mut b, (row, payer)| {
                    b.push_bind(row.request_id.as_str())
                        .push_bind(row.user_id)
                        .push_bind(row.api_key_id)
                        .push_bind(row.account_id)
                        .push_bind(row.node_id.as_str())
                        .push_bind(row.model.as_str())
                        .push_bind(row.platform.as_str())
                        .push_bind(row.endpoint.as_str())
                        .push_bind(row.status_code)
                        .push_bind(count(row.tokens.input))
                        .push_bind(count(row.tokens.output))
                        .push_bind(count(row.tokens.cache_creation))
                        .push_bind(count(row.tokens.cache_creation_1h))
                        .push_bind(count(row.tokens.cache_read))
                        .push_bind(count(row.tokens.total()))
                        .push_bind(Usd(row.upstream_cost))
                        .push_bind(Usd(row.cost))
                        .push_bind(row.price_version)
                        .push_bind(row.duration_ms)
                        .push_bind(row.ttfb_ms)
                        .push_bind(row.stream)
                        .push_bind(row.session_hash.as_str())
                        .push_bind(row.error_class.as_str())
                        .push_bind(row.usage_source.as_str())
                        .push_bind(row.created_at)
                        .push_bind(*payer)
                        .push_bind(row.upstream_request_id.as_str());
                });
                q.build().execute(&mut *tx).await?;
            }

            // Aggregates, one statement per group.
            let mut daily: BTreeMap<(i64, NaiveDate, &str), Totals> = BTreeMap::new();
            let mut keys: BTreeMap<i64, Totals> = BTreeMap::new();
            let mut accounts: BTreeMap<(i64, NaiveDate), Totals> = BTreeMap::new();
            for (row, payer) in fresh.iter().zip(&payers) {
                let day = Periods::at(row.created_at, tz).day;
                daily.entry((row.user_id, day, row.model.as_str())).or_default().add(row);
                keys.entry(row.api_key_id).or_default().add(row);
                if let Some(account) = row.account_id {
                    accounts.entry((account, day)).or_default().add(row);
                }
                if let Some(package_id) = payer {
                    charges.charge(row, *package_id, tz);
                }
            }
            for ((user, day, model), t) in &daily {
                sqlx::query(upsert_daily)
                    .bind(user)
                    .bind(day)
                    .bind(*model)
                    .bind(t.requests)
                    .bind(t.input)
                    .bind(t.output)
                    .bind(t.cache_creation)
                    .bind(t.cache_read)
                    .bind(t.total)
                    .bind(Usd(t.upstream_cost))
                    .bind(Usd(t.cost))
                    .execute(&mut *tx)
                    .await?;
            }
            for (key, t) in &keys {
                sqlx::query(
                    "UPDATE api_keys SET request_count = request_count + ?, cost_used = cost_used + ?, \
                     last_used_at = CASE WHEN last_used_at IS NULL OR last_used_at < ? THEN ? ELSE last_used_at END, \
                     usage_updated_at = ? WHERE id = ?",
                )
                .bind(t.requests)
                .bind(Usd(t.cost))
                .bind(t.last)
                .bind(t.last)
                .bind(now)
                .bind(key)
                .execute(&mut *tx)
                .await?;
            }
            // By day in order, so `daily_requests` counts the latest day.
            for ((account, day), t) in &accounts {
                sqlx::query(
                    "UPDATE accounts SET total_cost = total_cost + ?, \
                     daily_requests = CASE WHEN daily_requests_date = ? THEN daily_requests + ? \
                        WHEN daily_requests_date IS NULL OR daily_requests_date < ? THEN ? ELSE daily_requests END, \
                     daily_requests_date = CASE WHEN daily_requests_date IS NULL OR daily_requests_date < ? THEN ? ELSE daily_requests_date END, \
                     last_used_at = CASE WHEN last_used_at IS NULL OR last_used_at < ? THEN ? ELSE last_used_at END WHERE id = ?",
                )
                .bind(Usd(t.upstream_cost))
                .bind(day)
                .bind(t.requests)
                .bind(day)
                .bind(t.requests)
                .bind(day)
                .bind(day)
                .bind(t.last)
                .bind(t.last)
                .bind(account)
                .execute(&mut *tx)
                .await?;
            }
            for p in charges.packages.values().flatten().filter(|p| charges.changed.contains(&p.id)) {
                sqlx::query(
                    "UPDATE user_packages SET daily_used = ?, weekly_used = ?, monthly_used = ?, quota_used = ?, \
                     last_reset_day = ?, last_reset_week = ?, last_reset_month = ?, usage_updated_at = ? WHERE id = ?",
                )
                .bind(Usd(p.daily_used))
                .bind(Usd(p.weekly_used))
                .bind(Usd(p.monthly_used))
                .bind(Usd(p.quota_used))
                .bind(p.last_reset_day)
                .bind(p.last_reset_week)
                .bind(&p.last_reset_month)
                .bind(now)
                .bind(p.id)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(outcome)
        })
    }

    /// One page of request logs, newest first, and the total matching.
    pub async fn list_request_logs(
        &self,
        f: &RequestLogFilter,
    ) -> StoreResult<(Vec<RequestLog>, i64)> {
        let page_size = f.page_size.clamp(1, 500);
        let offset = i64::from(f.page.max(1) - 1) * i64::from(page_size);
        with_pool!(self, p => {
            let mut count = QueryBuilder::new("SELECT COUNT(*) FROM request_logs WHERE 1 = 1");
            push_filters(&mut count, f);
            let total: i64 = count.build_query_scalar().fetch_one(p).await?;
            let mut select = QueryBuilder::new(
                "SELECT id, request_id, user_id, api_key_id, account_id, node_id, model, platform, endpoint, status_code, \
                 input_tokens, output_tokens, cache_creation_tokens, cache_creation_1h_tokens, cache_read_tokens, total_tokens, \
                 upstream_cost, cost, price_version, duration_ms, ttfb_ms, stream, error_class, usage_source, created_at, \
                 upstream_request_id FROM request_logs WHERE 1 = 1",
            );
            push_filters(&mut select, f);
            select.push(" ORDER BY created_at DESC, id DESC LIMIT ");
            select.push_bind(i64::from(page_size));
            select.push(" OFFSET ");
            select.push_bind(offset);
            let items = select.build_query_as::<RequestLog>().fetch_all(p).await?;
            Ok((items, total))
        })
    }
}

/// Appends the filter's conditions; only static SQL and bound values.
pub(crate) fn push_filters<'a, DB>(q: &mut QueryBuilder<'a, DB>, f: &'a RequestLogFilter)
where
    DB: sqlx::Database,
    i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    i32: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    DateTime<Utc>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    if let Some(v) = &f.request_id {
        q.push(" AND (request_id = ")
            .push_bind(v.as_str())
            .push(" OR upstream_request_id = ")
            .push_bind(v.as_str())
            .push(")");
    }
    if let Some(v) = f.user_id {
        q.push(" AND user_id = ").push_bind(v);
    }
    if let Some(v) = f.api_key_id {
        q.push(" AND api_key_id = ").push_bind(v);
    }
    if let Some(v) = f.account_id {
        q.push(" AND account_id = ").push_bind(v);
    }
    if let Some(v) = &f.model {
        q.push(" AND model = ").push_bind(v.as_str());
    }
    if let Some(v) = f.status_code {
        q.push(" AND status_code = ").push_bind(v);
    }
    if let Some(v) = f.from {
        q.push(" AND created_at >= ").push_bind(v);
    }
    if let Some(v) = f.to {
        q.push(" AND created_at < ").push_bind(v);
    }
}

/// A row of `daily_usages`.
#[derive(Debug, Clone, Serialize)]
pub struct DailyUsage {
    pub user_id: i64,
    pub date: chrono::NaiveDate,
    pub model: String,
    pub request_count: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_creation_tokens: i64,
    pub cache_read_tokens: i64,
    pub total_tokens: i64,
    pub upstream_cost: Decimal,
    pub total_cost: Decimal,
}

impl_from_row!(DailyUsage, |r| {
    Ok(DailyUsage {
        user_id: r.try_get("user_id")?,
        date: r.try_get("date")?,
        model: r.try_get("model")?,
        request_count: r.try_get("request_count")?,
        input_tokens: r.try_get("input_tokens")?,
        output_tokens: r.try_get("output_tokens")?,
        cache_creation_tokens: r.try_get("cache_creation_tokens")?,
        cache_read_tokens: r.try_get("cache_read_tokens")?,
        total_tokens: r.try_get("total_tokens")?,
        upstream_cost: r.try_get::<Usd, _>("upstream_cost")?.0,
        total_cost: r.try_get::<Usd, _>("total_cost")?.0,
    })
});

impl Store {
    /// A user's daily usage rows, newest day first.
    pub async fn daily_usage_for_user(&self, user_id: i64) -> StoreResult<Vec<DailyUsage>> {
        with_pool!(self, p => Ok(sqlx::query_as::<_, DailyUsage>(
            "SELECT user_id, date, model, request_count, input_tokens, output_tokens, cache_creation_tokens, cache_read_tokens, \
             total_tokens, upstream_cost, total_cost FROM daily_usages WHERE user_id = ? ORDER BY date DESC, model",
        )
        .bind(user_id)
        .fetch_all(p)
        .await?))
    }
}
