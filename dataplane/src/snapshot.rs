//! The applied snapshot: validated, indexed for lookups, swapped atomically.
use std::collections::HashMap;
use std::sync::Arc;

use aiproxy_proto::v1 as pb;
use aiproxy_shared::billing::{PackageState, PackageUsage};
use aiproxy_shared::domain::{AccountKind, BillingType};
use aiproxy_shared::http::ProxyUrl;
use aiproxy_shared::money::{BadAmount, from_wire, limit_from_wire};
use aiproxy_shared::pricing::{LongContext, ModelPrice, PriceTable};
use arc_swap::ArcSwapOption;
use chrono::{FixedOffset, NaiveDate};
use http::{HeaderName, HeaderValue};
use rust_decimal::Decimal;
use tokio::sync::watch;

use crate::filter::Policy;
use crate::settings::Effective;

/// An API key as the relay needs it.
#[derive(Debug)]
pub struct KeyEntry {
    pub id: i64,
    pub user_id: i64,
    pub active: bool,
    pub allowed_models: Vec<String>,
    pub rate_limit: u32,
    pub expires_at_ms: i64,
    /// Requests in flight at once; 0 is unlimited.
    pub max_concurrency: u32,
    /// `billing_type = package`: draws on the user's packages.
    pub bills_packages: bool,
    pub cost_limit: Option<Decimal>,
    pub cost_used: Decimal,
    /// Which client programs may use the key (the global filter unless the
    /// key overrides it; keys that do not share one policy).
    pub(crate) client_filter: Arc<Policy>,
}

impl KeyEntry {
    /// An active key with no limits, for tests to adjust.
    #[cfg(test)]
    pub(crate) fn for_tests(id: i64, user_id: i64) -> KeyEntry {
        KeyEntry {
            id,
            user_id,
            active: true,
            allowed_models: Vec::new(),
            rate_limit: 0,
            expires_at_ms: 0,
            max_concurrency: 0,
            bills_packages: true,
            cost_limit: None,
            cost_used: Decimal::ZERO,
            client_filter: Arc::new(Policy::off()),
        }
    }
}

#[derive(Debug)]
pub struct UserEntry {
    pub id: i64,
    pub active: bool,
    pub price_rate: Decimal,
    /// Requests in flight at once across the user's keys; 0 is unlimited.
    pub max_concurrency: u32,
}

/// An upstream account with its credentials ready to put on the wire.
#[derive(Debug, Clone)]
pub struct AccountEntry {
    pub id: i64,
    pub name: String,
    pub kind: AccountKind,
    /// Base URL without a trailing slash.
    pub base_url: String,
    pub api_key: Option<HeaderValue>,
    /// `Bearer <access_token>` for OAuth accounts.
    pub bearer: Option<HeaderValue>,
    /// Outbound proxy for this account's upstream calls.
    pub proxy: Option<ProxyUrl>,
    /// Google Cloud project a Code Assist (gemini-oauth) account calls with.
    pub project: Option<String>,
    /// Headers this account adds to every upstream call (e.g. `chatgpt-account-id`).
    pub extra_headers: Vec<(HeaderName, HeaderValue)>,
    pub priority: i32,
    pub max_concurrency: u32,
    pub weight: u32,
    /// When either is set, the account serves only these keys and users.
    pub bound_key_ids: Vec<i64>,
    pub bound_user_ids: Vec<i64>,
    pub schedulable: bool,
    pub rate_limit_reset_at_ms: i64,
}

impl AccountEntry {
    /// Reserved for some keys or users.
    pub fn is_dedicated(&self) -> bool {
        !self.bound_key_ids.is_empty() || !self.bound_user_ids.is_empty()
    }

    /// A plain account of `kind` with id 1, for tests to adjust.
    #[cfg(test)]
    pub(crate) fn for_tests(kind: AccountKind) -> Self {
        AccountEntry {
            id: 1,
            name: "a".into(),
            kind,
            base_url: "http://up".into(),
            api_key: Some(HeaderValue::from_static("k")),
            bearer: Some(HeaderValue::from_static("Bearer t")),
            proxy: None,
            project: None,
            extra_headers: Vec::new(),
            priority: 0,
            max_concurrency: 0,
            weight: 1,
            bound_key_ids: Vec::new(),
            bound_user_ids: Vec::new(),
            schedulable: true,
            rate_limit_reset_at_ms: 0,
        }
    }
}

#[derive(Debug)]
pub struct Snapshot {
    pub version: u64,
    pub keys: HashMap<[u8; 32], Arc<KeyEntry>>,
    pub users: HashMap<i64, UserEntry>,
    /// Ordered by priority (lower first), then id.
    pub accounts: Vec<Arc<AccountEntry>>,
    pub prices: PriceTable,
    /// The node's configuration with the operator's settings over it.
    pub settings: Effective,
    /// Packages by user.
    pub packages: HashMap<i64, Vec<PackageState>>,
    /// Package id → user id.
    pub package_owner: HashMap<i64, i64>,
    /// The zone package periods reset in.
    pub billing_tz: FixedOffset,
}

impl Snapshot {
    /// An empty snapshot, for tests to fill.
    #[cfg(test)]
    pub(crate) fn for_tests() -> Snapshot {
        Snapshot {
            version: 1,
            keys: HashMap::new(),
            users: HashMap::new(),
            accounts: Vec::new(),
            prices: PriceTable::default(),
            settings: Effective::for_tests(),
            packages: HashMap::new(),
            package_owner: HashMap::new(),
            billing_tz: FixedOffset::east_opt(0).expect("UTC"),
        }
    }

    pub fn package(&self, id: i64) -> Option<&PackageState> {
        let owner = self.package_owner.get(&id)?;
        self.packages.get(owner)?.iter().find(|p| p.id == id)
    }
}

/// An entry a node could not use; it is left out (or fenced off) alone
/// and reported, and the rest of the snapshot applies.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("api key {0} has a malformed hash (left out)")]
    KeyHash(i64),
    #[error("user {0} has a malformed price rate (left out: its keys are refused)")]
    PriceRate(i64),
    #[error("price of {0} is malformed (fenced off: the model is refused until it is fixed)")]
    Price(String),
    #[error("account {0}: credentials.{1} is not a valid header value (left out)")]
    Credential(i64, &'static str),
    #[error("account {0}: {1} (left out)")]
    Proxy(i64, String),
    #[error("api key {0} has a malformed cost (left out)")]
    KeyCost(i64),
    #[error("package {0} is malformed (fenced off: it admits nothing)")]
    Package(i64),
    #[error("client filter: {0} (refusing every client it applies to)")]
    ClientFilter(String),
}

/// A package's usage from the wire.
pub(crate) fn package_usage(u: &pb::PackageUsage) -> Result<PackageUsage, BadAmount> {
    Ok(PackageUsage {
        daily_used: from_wire(&u.daily_used)?,
        weekly_used: from_wire(&u.weekly_used)?,
        monthly_used: from_wire(&u.monthly_used)?,
        day: (u.day != 0)
            .then(|| NaiveDate::from_num_days_from_ce_opt(u.day))
            .flatten(),
        week: (u.week != 0).then_some(u.week),
        month: (u.month != 0).then_some(u.month),
        quota_used: from_wire(&u.quota_used)?,
    })
}

/// Refuses every client: what a filter the node cannot read stands for.
fn refuse_all() -> Policy {
    Policy {
        mode: aiproxy_shared::domain::FilterMode::Simple,
        allowed: Vec::new(),
        ..Policy::off()
    }
}

fn account(a: pb::Account, kind: AccountKind) -> Result<AccountEntry, SnapshotError> {
    let header = |field: &'static str, v: String| {
        HeaderValue::from_str(&v).map_err(|_| SnapshotError::Credential(a.id, field))
    };
    let api_key = a
        .credentials
        .get("api_key")
        .map(|k| header("api_key", k.trim().to_string()))
        .transpose()?;
    let bearer = a
        .credentials
        .get("access_token")
        .map(|t| header("access_token", format!("Bearer {}", t.trim())))
        .transpose()?;
    let mut extra_headers = Vec::new();
    if kind == AccountKind::OpenAiResponses
        && let Some(id) = a.credentials.get("account_id")
    {
        extra_headers.push((
            HeaderName::from_static("chatgpt-account-id"),
            header("account_id", id.trim().to_string())?,
        ));
    }
    let proxy = match a.proxy_url.as_str() {
        "" => None,
        url => Some(ProxyUrl::parse(url).map_err(|e| SnapshotError::Proxy(a.id, e.to_string()))?),
    };
    let base_url = if a.base_url.is_empty() {
        kind.default_base_url().to_string()
    } else {
        a.base_url
    };
    Ok(AccountEntry {
        id: a.id,
        name: a.name,
        kind,
        base_url: base_url.trim_end_matches('/').to_string(),
        api_key,
        bearer,
        proxy,
        project: a
            .credentials
            .get("project_id")
            .filter(|p| !p.is_empty())
            .cloned(),
        extra_headers,
        priority: a.priority,
        max_concurrency: a.max_concurrency.max(0) as u32,
        weight: a.weight.max(1),
        bound_key_ids: a.bound_api_key_ids,
        bound_user_ids: a.bound_user_ids,
        schedulable: a.schedulable,
        rate_limit_reset_at_ms: a.rate_limit_reset_at_ms,
    })
}

fn price(p: &pb::ModelPrice) -> Result<ModelPrice, SnapshotError> {
    let field = |v: &str| from_wire(v).map_err(|_| SnapshotError::Price(p.model.clone()));
    Ok(ModelPrice {
        input: field(&p.input)?,
        output: field(&p.output)?,
        cache_write_5m: field(&p.cache_write_5m)?,
        cache_write_1h: field(&p.cache_write_1h)?,
        cache_read: field(&p.cache_read)?,
        long_context: match p.long_context_threshold {
            0 => None,
            threshold => Some(LongContext {
                threshold,
                input: field(&p.long_input)?,
                output: field(&p.long_output)?,
                cache_write_5m: field(&p.long_cache_write_5m)?,
                cache_write_1h: field(&p.long_cache_write_1h)?,
                cache_read: field(&p.long_cache_read)?,
            }),
        },
        version: p.version,
    })
}

fn package(p: &pb::Package) -> Result<PackageState, SnapshotError> {
    let bad = || SnapshotError::Package(p.id);
    let limit = |v: &str| limit_from_wire(v).map_err(|_| bad());
    Ok(PackageState {
        id: p.id,
        kind: p.kind.parse().map_err(|_| bad())?,
        active: p.active,
        starts_at_ms: p.starts_at_ms,
        expires_at_ms: p.expires_at_ms,
        allowed_models: p.allowed_models.clone(),
        daily_quota: limit(&p.daily_quota)?,
        weekly_quota: limit(&p.weekly_quota)?,
        monthly_quota: limit(&p.monthly_quota)?,
        quota_total: limit(&p.quota_total)?,
        usage: p
            .usage
            .as_ref()
            .map(package_usage)
            .transpose()
            .map_err(|_| bad())?
            .unwrap_or_default(),
    })
}

/// A package the node cannot read: present, so its owner is not unmetered,
/// and never in force, so it admits nothing.
fn fenced_package(p: &pb::Package) -> PackageState {
    PackageState {
        id: p.id,
        kind: aiproxy_shared::billing::PackageKind::Quota,
        active: false,
        starts_at_ms: 0,
        expires_at_ms: 0,
        allowed_models: Vec::new(),
        daily_quota: None,
        weekly_quota: None,
        monthly_quota: None,
        quota_total: Some(Decimal::ZERO),
        usage: Default::default(),
    }
}

impl Snapshot {
    /// Converts what the control plane sent, its settings over the node's
    /// `configured` ones. An entry the node cannot use is left out, or
    /// fenced off where leaving it out would grant more (a package, a client
    /// filter), and returned with the reason; one bad entry never keeps the
    /// rest from applying.
    pub fn from_proto(s: pb::Snapshot, configured: &Effective) -> (Snapshot, Vec<SnapshotError>) {
        let mut problems = Vec::new();
        let settings = s.settings.clone().unwrap_or_default();
        let global_filter = settings.client_filter.clone().unwrap_or_default();
        let shared_filter = Arc::new(match Policy::resolve(&global_filter, "", &[]) {
            Ok(p) => p,
            Err(e) => {
                problems.push(SnapshotError::ClientFilter(e));
                refuse_all()
            }
        });
        let mut keys = HashMap::with_capacity(s.api_keys.len());
        for k in s.api_keys {
            let client_filter = if k.client_filter.is_empty() && k.allowed_clients.is_empty() {
                shared_filter.clone()
            } else {
                Arc::new(
                    match Policy::resolve(&global_filter, &k.client_filter, &k.allowed_clients) {
                        Ok(p) => p,
                        Err(e) => {
                            problems.push(SnapshotError::ClientFilter(format!(
                                "api key {}: {e}",
                                k.id
                            )));
                            refuse_all()
                        }
                    },
                )
            };
            let Ok(hash) = <[u8; 32]>::try_from(k.key_hash.as_slice()) else {
                problems.push(SnapshotError::KeyHash(k.id));
                continue;
            };
            let (Ok(cost_limit), Ok(cost_used)) =
                (limit_from_wire(&k.cost_limit), from_wire(&k.cost_used))
            else {
                problems.push(SnapshotError::KeyCost(k.id));
                continue;
            };
            keys.insert(
                hash,
                Arc::new(KeyEntry {
                    id: k.id,
                    user_id: k.user_id,
                    active: k.active,
                    allowed_models: k.allowed_models,
                    rate_limit: k.rate_limit,
                    expires_at_ms: k.expires_at_ms,
                    max_concurrency: k.max_concurrency,
                    bills_packages: BillingType::parse(&k.billing_type)
                        == Some(BillingType::Package),
                    cost_limit,
                    cost_used,
                    client_filter,
                }),
            );
        }
        let mut users = HashMap::with_capacity(s.users.len());
        for u in s.users {
            let Ok(price_rate) = from_wire(&u.price_rate) else {
                problems.push(SnapshotError::PriceRate(u.id));
                continue;
            };
            users.insert(
                u.id,
                UserEntry {
                    id: u.id,
                    active: u.active,
                    price_rate,
                    max_concurrency: u.max_concurrency,
                },
            );
        }
        let mut prices = HashMap::with_capacity(s.prices.len());
        let mut fenced = Vec::new();
        for p in s.prices {
            match price(&p) {
                Ok(price) => {
                    prices.insert(p.model, price);
                }
                Err(e) => {
                    problems.push(e);
                    fenced.push(p.model);
                }
            }
        }
        let mut prices = PriceTable::new(prices);
        for model in fenced {
            prices.fence(model);
        }
        let mut accounts = Vec::with_capacity(s.accounts.len());
        for a in s.accounts {
            // An account type this node does not know is skipped, not fatal,
            // so a newer control plane can add types.
            let Some(kind) = AccountKind::parse(&a.kind) else {
                tracing::warn!(account_id = a.id, kind = %a.kind, "unknown account type skipped");
                continue;
            };
            match account(a, kind) {
                Ok(entry) => accounts.push(Arc::new(entry)),
                Err(e) => problems.push(e),
            }
        }
        accounts.sort_by_key(|a| (a.priority, a.id));
        let mut packages: HashMap<i64, Vec<PackageState>> = HashMap::new();
        let mut package_owner = HashMap::with_capacity(s.packages.len());
        for p in s.packages {
            let state = package(&p).unwrap_or_else(|e| {
                problems.push(e);
                fenced_package(&p)
            });
            package_owner.insert(p.id, p.user_id);
            packages.entry(p.user_id).or_default().push(state);
        }
        let snapshot = Snapshot {
            version: s.version,
            keys,
            users,
            accounts,
            prices,
            settings: configured.with(&settings),
            packages,
            package_owner,
            billing_tz: FixedOffset::east_opt(settings.billing_utc_offset_seconds)
                .unwrap_or_else(|| chrono::Offset::fix(&chrono::Utc)),
        };
        (snapshot, problems)
    }
}

/// The node's current snapshot, read once per request, and its settings
/// announced to background work that must follow them.
pub struct SnapshotHolder {
    current: ArcSwapOption<Snapshot>,
    /// When the control plane last spoke on the watch stream, in ms after
    /// `born`; 0: never.
    heard: std::sync::atomic::AtomicU64,
    born: std::time::Instant,
    /// The node's configuration, which a snapshot's settings go over.
    configured: Effective,
    /// The settings in force: the configuration until a snapshot applies.
    settings: watch::Sender<Effective>,
}

impl SnapshotHolder {
    pub(crate) fn new(configured: Effective) -> Self {
        SnapshotHolder {
            current: ArcSwapOption::empty(),
            heard: Default::default(),
            born: std::time::Instant::now(),
            configured,
            settings: watch::Sender::new(configured),
        }
    }

    /// What a snapshot's settings go over.
    pub(crate) fn configured(&self) -> &Effective {
        &self.configured
    }

    pub fn load(&self) -> Option<Arc<Snapshot>> {
        self.current.load_full()
    }

    /// The control plane spoke (a snapshot, spending, a heartbeat).
    pub(crate) fn heard_from_control_plane(&self) {
        let ms = self.born.elapsed().as_millis().max(1) as u64;
        self.heard.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// How long since the control plane last spoke; `None` before it ever did.
    pub fn silence(&self) -> Option<std::time::Duration> {
        match self.heard.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            ms => Some(
                self.born
                    .elapsed()
                    .saturating_sub(std::time::Duration::from_millis(ms)),
            ),
        }
    }

    /// Makes `snapshot` current; watchers of the settings hear of them
    /// only when they changed.
    pub(crate) fn store(&self, snapshot: Snapshot) {
        let settings = snapshot.settings;
        self.current.store(Some(Arc::new(snapshot)));
        self.settings.send_if_modified(|now| {
            if *now == settings {
                return false;
            }
            tracing::info!(?settings, "settings in force changed");
            *now = settings;
            true
        });
    }

    /// The settings in force, marked changed whenever a snapshot changes them.
    pub(crate) fn settings(&self) -> watch::Receiver<Effective> {
        self.settings.subscribe()
    }

    pub fn version(&self) -> u64 {
        self.current.load().as_ref().map(|s| s.version).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> pb::Snapshot {
        pb::Snapshot {
            version: 3,
            api_keys: vec![pb::ApiKey {
                id: 1,
                user_id: 2,
                key_hash: vec![7; 32],
                active: true,
                ..Default::default()
            }],
            users: vec![pb::User {
                id: 2,
                active: true,
                price_rate: "1.5".into(),
                ..Default::default()
            }],
            accounts: vec![
                pb::Account {
                    id: 9,
                    kind: "claude-api".into(),
                    priority: 60,
                    ..Default::default()
                },
                pb::Account {
                    id: 8,
                    kind: "claude-api".into(),
                    priority: 10,
                    base_url: "http://x/".into(),
                    ..Default::default()
                },
                pb::Account {
                    id: 7,
                    kind: "future-kind".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn converts_and_orders_accounts() {
        let (s, problems) = Snapshot::from_proto(snapshot(), &Effective::for_tests());
        assert!(problems.is_empty());
        assert_eq!(s.version, 3);
        assert_eq!(
            s.accounts.iter().map(|a| a.id).collect::<Vec<_>>(),
            vec![8, 9]
        );
        assert_eq!(s.accounts[0].base_url, "http://x");
        assert_eq!(s.accounts[1].base_url, "https://api.anthropic.com");
        assert_eq!(s.users[&2].price_rate, Decimal::new(15, 1));
        assert!(s.keys.contains_key(&[7; 32]));
    }

    #[test]
    fn a_bad_entry_is_left_out_alone_and_reported() {
        let mut bad = snapshot();
        bad.accounts[0]
            .credentials
            .insert("api_key".into(), "line\nbreak".into());
        bad.accounts[1]
            .credentials
            .insert("access_token".into(), "to\rk".into());
        bad.api_keys.push(pb::ApiKey {
            id: 2,
            user_id: 2,
            key_hash: vec![1, 2, 3],
            ..Default::default()
        });
        bad.users.push(pb::User {
            id: 3,
            price_rate: "lots".into(),
            ..Default::default()
        });
        let (s, problems) = Snapshot::from_proto(bad, &Effective::for_tests());
        let reasons: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            reasons,
            vec![
                "api key 2 has a malformed hash (left out)",
                "user 3 has a malformed price rate (left out: its keys are refused)",
                "account 9: credentials.api_key is not a valid header value (left out)",
                "account 8: credentials.access_token is not a valid header value (left out)",
            ]
        );
        assert!(
            reasons
                .iter()
                .all(|r| !r.contains("break") && !r.contains("to\rk"))
        );
        assert!(s.accounts.is_empty());
        assert!(s.keys.contains_key(&[7; 32]), "good entries still apply");
        assert!(s.users.contains_key(&2) && !s.users.contains_key(&3));
    }

    #[test]
    fn entries_that_would_grant_more_are_fenced_off_not_left_out() {
        let mut s = snapshot();
        s.packages.push(pb::Package {
            id: 4,
            user_id: 2,
            kind: "mystery".into(),
            active: true,
            ..Default::default()
        });
        s.api_keys[0].client_filter = "loose".into();
        s.prices.push(pb::ModelPrice {
            model: "claude-sonnet-4-5".into(),
            input: "three dollars".into(),
            ..Default::default()
        });
        s.settings = Some(pb::RelaySettings {
            client_filter: Some(pb::ClientFilter {
                enabled: true,
                allowed_clients: vec!["cursor".into()],
                ..Default::default()
            }),
            ..Default::default()
        });
        let (s, problems) = Snapshot::from_proto(s, &Effective::for_tests());
        assert_eq!(problems.len(), 4, "{problems:?}");
        // A model whose price cannot be read is refused, not served free.
        assert!(s.prices.is_fenced("claude-sonnet-4-5"));
        assert!(s.prices.is_fenced("claude-sonnet-4-5-20250929"));
        assert!(!s.prices.is_fenced("gpt-4o"));
        // The user is not unmetered: the package is there and admits nothing.
        let p = s.package(4).expect("fenced package");
        assert!(!p.active);
        // A key whose filter cannot be read refuses every client.
        let key = &s.keys[&[7; 32]];
        assert_eq!(
            key.client_filter.mode,
            aiproxy_shared::domain::FilterMode::Simple
        );
        assert!(key.client_filter.allowed.is_empty());
    }

    #[test]
    fn settings_are_announced_when_a_snapshot_changes_them() {
        use std::time::Duration;
        let holder = SnapshotHolder::new(Effective::for_tests());
        let mut settings = holder.settings();
        let (same, _) = Snapshot::from_proto(snapshot(), holder.configured());
        holder.store(same);
        assert!(!settings.has_changed().unwrap(), "the configuration holds");
        let mut shorter = snapshot();
        shorter.settings = Some(pb::RelaySettings {
            concurrency_ttl_ms: 3_000,
            ..Default::default()
        });
        let (shorter, _) = Snapshot::from_proto(shorter, holder.configured());
        holder.store(shorter);
        assert!(settings.has_changed().unwrap());
        assert_eq!(
            settings.borrow_and_update().lease_ttl,
            Duration::from_secs(3)
        );
        let current = holder.load().unwrap();
        assert_eq!(current.settings.lease_ttl, Duration::from_secs(3));
        assert_eq!(
            current.settings.session_ttl,
            holder.configured().session_ttl
        );
    }
}
