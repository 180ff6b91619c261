//! Reading money back: usage totals by user, key, model, account or day; the
//! consistency check of every aggregate against `request_logs`; and
//! re-rating a time range after a price fix.
use std::collections::{BTreeMap, HashMap};

use aiproxy_shared::billing::{PackageUsage, Periods};
use aiproxy_shared::pricing::{PriceTable, TokenUsage, user_cost};
use chrono::{DateTime, FixedOffset, NaiveDate, Utc};
use futures_util::TryStreamExt;
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::QueryBuilder;

use super::db::{Usd, impl_from_row, with_pool};
use super::packages::Package;
use super::usage::push_filters;
use super::{Backend, RequestLogFilter, Store, StoreResult};

/// What usage totals are grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    User,
    Key,
    Model,
    Account,
    /// By billing day (from `daily_usages`).
    Day,
}

impl GroupBy {
    pub fn parse(s: &str) -> Option<GroupBy> {
        Some(match s {
            "user" => GroupBy::User,
            "key" => GroupBy::Key,
            "model" => GroupBy::Model,
            "account" => GroupBy::Account,
            "day" => GroupBy::Day,
            _ => return None,
        })
    }
}

/// Totals of one group.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct UsageTotals {
    /// The user, key or account id, the model, or the day.
    pub group: String,
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_creation_tokens: i64,
    pub cache_read_tokens: i64,
    pub total_tokens: i64,
    /// What the operator paid: administrators only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_cost: Option<Decimal>,
    pub cost: Decimal,
}

impl_from_row!(UsageTotals, |r| {
    Ok(UsageTotals {
        group: r.try_get("grp")?,
        requests: r.try_get("requests")?,
        input_tokens: r.try_get("input_tokens")?,
        output_tokens: r.try_get("output_tokens")?,
        cache_creation_tokens: r.try_get("cache_creation_tokens")?,
        cache_read_tokens: r.try_get("cache_read_tokens")?,
        total_tokens: r.try_get("total_tokens")?,
        upstream_cost: Some(r.try_get::<Usd, _>("upstream_cost")?.0),
        cost: r.try_get::<Usd, _>("cost")?.0,
    })
});

/// One request log, as the check and re-rating read it.
#[derive(Debug, Clone)]
struct Line {
    id: i64,
    user_id: i64,
    api_key_id: i64,
    account_id: Option<i64>,
    package_id: Option<i64>,
    model: String,
    usage: TokenUsage,
    upstream_cost: Decimal,
    cost: Decimal,
    created_at: DateTime<Utc>,
}

impl_from_row!(Line, |r| {
    Ok(Line {
        id: r.try_get("id")?,
        user_id: r.try_get("user_id")?,
        api_key_id: r.try_get("api_key_id")?,
        account_id: r.try_get("account_id")?,
        package_id: r.try_get("package_id")?,
        model: r.try_get("model")?,
        usage: super::usage::tokens_of(r)?,
        upstream_cost: r.try_get::<Usd, _>("upstream_cost")?.0,
        cost: r.try_get::<Usd, _>("cost")?.0,
        created_at: r.try_get("created_at")?,
    })
});

const SELECT_LINES: &str = "SELECT id, user_id, api_key_id, account_id, package_id, model, input_tokens, output_tokens, \
     cache_creation_tokens, cache_creation_1h_tokens, cache_read_tokens, upstream_cost, cost, created_at FROM request_logs";

/// Sums of a set of requests.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Sums {
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_creation_tokens: i64,
    pub cache_read_tokens: i64,
    pub upstream_cost: Decimal,
    pub cost: Decimal,
}

impl Sums {
    fn add(&mut self, l: &Line) {
        self.requests += 1;
        self.input_tokens += l.usage.input as i64;
        self.output_tokens += l.usage.output as i64;
        self.cache_creation_tokens += l.usage.cache_creation as i64;
        self.cache_read_tokens += l.usage.cache_read as i64;
        self.upstream_cost += l.upstream_cost;
        self.cost += l.cost;
    }
}

/// One aggregate that disagrees with the request logs.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Difference {
    /// `daily_usages`, `api_keys`, `accounts` or `user_packages`.
    pub table: &'static str,
    /// Which row: `user 3 / 2026-11-26 / claude-sonnet-4-5`, `key 7`, …
    pub row: String,
    pub field: &'static str,
    /// From the request logs.
    pub expected: String,
    /// Stored.
    pub actual: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ConsistencyReport {
    pub clean: bool,
    pub request_logs: i64,
    pub differences: Vec<Difference>,
    /// Set once request logs past their retention were deleted: the first
    /// billing day still complete in the logs. Only daily usage from that
    /// day on is compared; lifetime totals (keys, accounts, packages)
    /// include deleted requests and are not.
    pub complete_since: Option<NaiveDate>,
}

/// Which requests a re-rating recomputes.
#[derive(Debug, Clone)]
pub struct RerateScope {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Only this model, when set.
    pub model: Option<String>,
    /// Report only; change nothing.
    pub dry_run: bool,
}

/// Before and after of a re-rating.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct RerateReport {
    pub requests: i64,
    pub changed: i64,
    pub before_upstream_cost: Decimal,
    pub before_cost: Decimal,
    pub after_upstream_cost: Decimal,
    pub after_cost: Decimal,
    pub by_model: BTreeMap<String, RerateModel>,
    pub applied: bool,
}

#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct RerateModel {
    pub requests: i64,
    pub before_cost: Decimal,
    pub after_cost: Decimal,
    /// No price for this model now: left as billed.
    pub unpriced: bool,
}

struct Check<'a> {
    diffs: &'a mut Vec<Difference>,
}

impl Check<'_> {
    fn same<T: PartialEq + ToString>(
        &mut self,
        table: &'static str,
        row: &str,
        field: &'static str,
        expected: T,
        actual: T,
    ) {
        if expected != actual {
            self.diffs.push(Difference {
                table,
                row: row.to_string(),
                field,
                expected: expected.to_string(),
                actual: actual.to_string(),
            });
        }
    }
}

/// Whether a log counts toward a package's current figures.
fn counts_for(p: &Package, l: &Line) -> bool {
    p.usage_reset_at.is_none_or(|reset| l.created_at >= reset)
}

impl Store {
    /// Totals of the requests matching `f`, grouped. Days are billing days
    /// in `tz`, read from `daily_usages` unless `f` narrows to a key, an
    /// account or a status, which only the request logs know.
    pub async fn usage_totals(
        &self,
        f: &RequestLogFilter,
        group: GroupBy,
        tz: FixedOffset,
    ) -> StoreResult<Vec<UsageTotals>> {
        let int = |col: &str| match self.backend() {
            Backend::MySql => format!("CAST(SUM({col}) AS SIGNED) AS {col}"),
            Backend::Sqlite => format!("SUM({col}) AS {col}"),
        };
        let text = |col: &str| match self.backend() {
            Backend::MySql => format!("CAST({col} AS CHAR)"),
            Backend::Sqlite => format!("CAST({col} AS TEXT)"),
        };
        let daily = group == GroupBy::Day
            && f.api_key_id.is_none()
            && f.account_id.is_none()
            && f.status_code.is_none();
        let offset = tz.local_minus_utc();
        let (table, column, requests) = match group {
            GroupBy::User => ("request_logs", text("user_id"), "COUNT(*)".to_string()),
            GroupBy::Key => ("request_logs", text("api_key_id"), "COUNT(*)".to_string()),
            GroupBy::Account => ("request_logs", text("account_id"), "COUNT(*)".to_string()),
            GroupBy::Model => ("request_logs", "model".to_string(), "COUNT(*)".to_string()),
            GroupBy::Day if daily => (
                "daily_usages",
                text("date"),
                int("request_count").replace(" AS request_count", ""),
            ),
            GroupBy::Day => {
                let day = match self.backend() {
                    Backend::MySql => {
                        format!("DATE(DATE_ADD(created_at, INTERVAL {offset} SECOND))")
                    }
                    Backend::Sqlite => format!("date(created_at, '{offset:+} seconds')"),
                };
                ("request_logs", text(&day), "COUNT(*)".to_string())
            }
        };
        let (upstream, cost) = if daily {
            ("SUM(upstream_cost)", "SUM(total_cost)")
        } else {
            ("SUM(upstream_cost)", "SUM(cost)")
        };
        let sql = format!(
            "SELECT {column} AS grp, {requests} AS requests, {}, {}, {}, {}, {}, {upstream} AS upstream_cost, {cost} AS cost \
             FROM {table} WHERE 1 = 1",
            int("input_tokens"),
            int("output_tokens"),
            int("cache_creation_tokens"),
            int("cache_read_tokens"),
            int("total_tokens"),
        );
        with_pool!(self, p => {
            let mut q = QueryBuilder::new(sql.clone());
            if daily {
                if let Some(u) = f.user_id {
                    q.push(" AND user_id = ").push_bind(u);
                }
                if let Some(m) = &f.model {
                    q.push(" AND model = ").push_bind(m.as_str());
                }
                // Whole billing days, the ones `from` and `to` fall on.
                if let Some(from) = f.from {
                    q.push(" AND date >= ").push_bind(from.with_timezone(&tz).date_naive());
                }
                if let Some(to) = f.to {
                    q.push(" AND date <= ").push_bind(to.with_timezone(&tz).date_naive());
                }
            } else {
                push_filters(&mut q, f);
            }
            q.push(format!(" GROUP BY {column} ORDER BY {column}"));
            Ok(q.build_query_as::<UsageTotals>().fetch_all(p).await?)
        })
    }

    /// Compares `daily_usages`, keys, accounts and packages with the sums of
    /// `request_logs` (the seed's cost investigation as one call).
    pub async fn consistency(&self, tz: FixedOffset) -> StoreResult<ConsistencyReport> {
        let _serial = self.ingest_lock.lock().await;
        let mut daily: HashMap<(i64, NaiveDate, String), Sums> = HashMap::new();
        let mut keys: HashMap<i64, Sums> = HashMap::new();
        let mut accounts: HashMap<i64, Sums> = HashMap::new();
        let packages = self.list_packages(None).await?;
        let by_id: HashMap<i64, &Package> = packages.iter().map(|p| (p.id, p)).collect();
        let mut package_usage: HashMap<i64, PackageUsage> = HashMap::new();
        let mut total = 0i64;
        let sql = format!("{SELECT_LINES} ORDER BY id");
        with_pool!(self, p => {
            let mut lines = sqlx::query_as::<_, Line>(&sql).fetch(p);
            while let Some(l) = lines.try_next().await? {
                total += 1;
                let day = Periods::at(l.created_at, tz).day;
                daily.entry((l.user_id, day, l.model.clone())).or_default().add(&l);
                keys.entry(l.api_key_id).or_default().add(&l);
                if let Some(a) = l.account_id {
                    accounts.entry(a).or_default().add(&l);
                }
                if let Some(pkg) = l.package_id.and_then(|id| by_id.get(&id))
                    && counts_for(pkg, &l)
                {
                    package_usage.entry(pkg.id).or_default().charge(l.cost, Periods::at(l.created_at, tz));
                }
            }
        });
        let mut diffs = Vec::new();
        let mut check = Check { diffs: &mut diffs };

        let complete_since = self
            .system_configs()
            .await?
            .get(super::operations::PURGED_BEFORE_KEY)
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| Periods::at(t.with_timezone(&Utc), tz).day);
        let kept = |day: NaiveDate| complete_since.is_none_or(|since| day >= since);
        let stored_daily = self.all_daily_usage().await?;
        let mut seen = std::collections::HashSet::new();
        for d in stored_daily.iter().filter(|d| kept(d.date)) {
            let k = (d.user_id, d.date, d.model.clone());
            let row = format!("user {} / {} / {}", d.user_id, d.date, d.model);
            let want = daily.get(&k).cloned().unwrap_or_default();
            seen.insert(k);
            check.same(
                "daily_usages",
                &row,
                "request_count",
                want.requests,
                d.request_count,
            );
            check.same(
                "daily_usages",
                &row,
                "input_tokens",
                want.input_tokens,
                d.input_tokens,
            );
            check.same(
                "daily_usages",
                &row,
                "output_tokens",
                want.output_tokens,
                d.output_tokens,
            );
            check.same(
                "daily_usages",
                &row,
                "cache_read_tokens",
                want.cache_read_tokens,
                d.cache_read_tokens,
            );
            check.same(
                "daily_usages",
                &row,
                "upstream_cost",
                want.upstream_cost,
                d.upstream_cost,
            );
            check.same("daily_usages", &row, "total_cost", want.cost, d.total_cost);
        }
        for (k, want) in daily
            .iter()
            .filter(|(k, _)| !seen.contains(*k) && kept(k.1))
        {
            let row = format!("user {} / {} / {}", k.0, k.1, k.2);
            check.same("daily_usages", &row, "request_count", want.requests, 0);
        }

        if complete_since.is_some() {
            return Ok(ConsistencyReport {
                clean: diffs.is_empty(),
                request_logs: total,
                differences: diffs,
                complete_since,
            });
        }
        for key in self.list_api_keys(None).await? {
            let want = keys.remove(&key.id).unwrap_or_default();
            let row = format!("key {}", key.id);
            check.same(
                "api_keys",
                &row,
                "request_count",
                want.requests,
                key.request_count,
            );
            check.same("api_keys", &row, "cost_used", want.cost, key.cost_used);
        }
        for account in self.list_accounts().await? {
            let want = accounts.remove(&account.id).unwrap_or_default();
            check.same(
                "accounts",
                &format!("account {}", account.id),
                "total_cost",
                want.upstream_cost,
                account.total_cost,
            );
        }
        for p in &packages {
            let want = package_usage.remove(&p.id).unwrap_or_default();
            let row = format!("package {}", p.id);
            let stored = p.usage();
            check.same(
                "user_packages",
                &row,
                "quota_used",
                want.quota_used,
                stored.quota_used,
            );
            // Period figures compare for the periods the package stores.
            let in_period = |w_key: Option<String>, s_key: Option<String>, w: Decimal| {
                if w_key == s_key { w } else { Decimal::ZERO }
            };
            check.same(
                "user_packages",
                &row,
                "daily_used",
                in_period(
                    want.day.map(|d| d.to_string()),
                    stored.day.map(|d| d.to_string()),
                    want.daily_used,
                ),
                stored.daily_used,
            );
            check.same(
                "user_packages",
                &row,
                "weekly_used",
                in_period(
                    want.week.map(|w| w.to_string()),
                    stored.week.map(|w| w.to_string()),
                    want.weekly_used,
                ),
                stored.weekly_used,
            );
            check.same(
                "user_packages",
                &row,
                "monthly_used",
                in_period(
                    want.month.map(|m| m.to_string()),
                    stored.month.map(|m| m.to_string()),
                    want.monthly_used,
                ),
                stored.monthly_used,
            );
        }
        Ok(ConsistencyReport {
            clean: diffs.is_empty(),
            request_logs: total,
            differences: diffs,
            complete_since: None,
        })
    }

    async fn all_daily_usage(&self) -> StoreResult<Vec<super::DailyUsage>> {
        with_pool!(self, p => Ok(sqlx::query_as::<_, super::DailyUsage>(
            "SELECT user_id, date, model, request_count, input_tokens, output_tokens, cache_creation_tokens, cache_read_tokens, \
             total_tokens, upstream_cost, total_cost FROM daily_usages",
        )
        .fetch_all(p)
        .await?))
    }

    /// Recomputes the cost of every request in `[from, to)` (of `model`, if
    /// given) at today's prices, keeping each request's price rate. Unless
    /// `dry_run`, writes the new costs and moves `daily_usages`, keys,
    /// accounts and packages by the differences, in one transaction.
    pub async fn rerate(
        &self,
        scope: &RerateScope,
        prices: &PriceTable,
        rates: &HashMap<i64, Decimal>,
        tz: FixedOffset,
    ) -> StoreResult<RerateReport> {
        let _serial = self.ingest_lock.lock().await;
        let (from, to, model, dry_run) =
            (scope.from, scope.to, scope.model.as_deref(), scope.dry_run);
        let mut report = RerateReport::default();
        let packages = self.list_packages(None).await?;
        let by_id: HashMap<i64, &Package> = packages.iter().map(|p| (p.id, p)).collect();
        with_pool!(self, p => {
            let mut tx = p.begin().await?;
            let mut q = QueryBuilder::new(format!("{SELECT_LINES} WHERE created_at >= "));
            q.push_bind(from).push(" AND created_at < ").push_bind(to);
            if let Some(m) = model {
                q.push(" AND model = ").push_bind(m);
            }
            q.push(" ORDER BY id");
            let lines = q.build_query_as::<Line>().fetch_all(&mut *tx).await?;
            let mut daily: HashMap<(i64, NaiveDate, String), (Decimal, Decimal)> = HashMap::new();
            let mut keys: HashMap<i64, Decimal> = HashMap::new();
            let mut accounts: HashMap<i64, Decimal> = HashMap::new();
            let mut package_delta: HashMap<i64, PackageUsage> = HashMap::new();
            for l in &lines {
                report.requests += 1;
                report.before_upstream_cost += l.upstream_cost;
                report.before_cost += l.cost;
                let entry = report.by_model.entry(l.model.clone()).or_default();
                entry.requests += 1;
                entry.before_cost += l.cost;
                let Some(price) = prices.lookup(&l.model) else {
                    entry.unpriced = true;
                    entry.after_cost += l.cost;
                    report.after_upstream_cost += l.upstream_cost;
                    report.after_cost += l.cost;
                    continue;
                };
                let upstream = price.cost(&l.usage);
                // The rate the request was billed at, else the user's rate now.
                let rate = if l.upstream_cost.is_zero() {
                    rates.get(&l.user_id).copied().unwrap_or(Decimal::ONE)
                } else {
                    l.cost / l.upstream_cost
                };
                let cost = user_cost(upstream, rate);
                entry.after_cost += cost;
                report.after_upstream_cost += upstream;
                report.after_cost += cost;
                if upstream == l.upstream_cost && cost == l.cost {
                    continue;
                }
                report.changed += 1;
                let (d_up, d_cost) = (upstream - l.upstream_cost, cost - l.cost);
                let day = Periods::at(l.created_at, tz).day;
                let e = daily.entry((l.user_id, day, l.model.clone())).or_default();
                e.0 += d_up;
                e.1 += d_cost;
                *keys.entry(l.api_key_id).or_default() += d_cost;
                if let Some(a) = l.account_id {
                    *accounts.entry(a).or_default() += d_up;
                }
                if let Some(pkg) = l.package_id.and_then(|id| by_id.get(&id))
                    && counts_for(pkg, l)
                {
                    package_delta.entry(pkg.id).or_default().charge(d_cost, Periods::at(l.created_at, tz));
                }
                if !dry_run {
                    sqlx::query("UPDATE request_logs SET upstream_cost = ?, cost = ?, price_version = ? WHERE id = ?")
                        .bind(Usd(upstream))
                        .bind(Usd(cost))
                        .bind(price.version as i64)
                        .bind(l.id)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            if !dry_run {
                let now = Utc::now();
                for ((user, day, model), (d_up, d_cost)) in &daily {
                    sqlx::query("UPDATE daily_usages SET upstream_cost = upstream_cost + ?, total_cost = total_cost + ? \
                                 WHERE user_id = ? AND date = ? AND model = ?")
                        .bind(Usd(*d_up)).bind(Usd(*d_cost)).bind(user).bind(day).bind(model)
                        .execute(&mut *tx).await?;
                }
                for (key, d) in &keys {
                    sqlx::query("UPDATE api_keys SET cost_used = cost_used + ?, usage_updated_at = ? WHERE id = ?")
                        .bind(Usd(*d)).bind(now).bind(key)
                        .execute(&mut *tx).await?;
                }
                for (account, d) in &accounts {
                    sqlx::query("UPDATE accounts SET total_cost = total_cost + ? WHERE id = ?")
                        .bind(Usd(*d)).bind(account)
                        .execute(&mut *tx).await?;
                }
                for (id, delta) in &package_delta {
                    let pkg = by_id[id];
                    let stored = pkg.usage();
                    // Period figures move only for the periods the package still counts.
                    let same = |a: Option<String>, b: Option<String>| a.is_some() && a == b;
                    let d_day = if same(delta.day.map(|d| d.to_string()), stored.day.map(|d| d.to_string())) { delta.daily_used } else { Decimal::ZERO };
                    let d_week = if same(delta.week.map(|w| w.to_string()), stored.week.map(|w| w.to_string())) { delta.weekly_used } else { Decimal::ZERO };
                    let d_month = if same(delta.month.map(|m| m.to_string()), stored.month.map(|m| m.to_string())) { delta.monthly_used } else { Decimal::ZERO };
                    sqlx::query("UPDATE user_packages SET quota_used = quota_used + ?, daily_used = daily_used + ?, \
                                 weekly_used = weekly_used + ?, monthly_used = monthly_used + ?, usage_updated_at = ? WHERE id = ?")
                        .bind(Usd(delta.quota_used)).bind(Usd(d_day)).bind(Usd(d_week)).bind(Usd(d_month)).bind(now).bind(id)
                        .execute(&mut *tx).await?;
                }
                tx.commit().await?;
                report.applied = true;
            }
        });
        Ok(report)
    }
}
