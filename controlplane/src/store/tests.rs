//! The store suite: every test runs on SQLite, and on MariaDB/MySQL when
//! `AIPROXY_TEST_MYSQL_URL` is set (a fresh database per test).
use chrono::{Duration, Utc};
use rust_decimal::Decimal;
use std::str::FromStr;

use aiproxy_shared::billing::PackageKind;
use aiproxy_shared::domain::{
    AccountKind, AccountStatus, ActiveStatus, BillingType, HealthStatus, Role,
};

use super::db::with_pool;
use super::*;

pub(crate) struct TestDb {
    pub store: Store,
    _dir: Option<tempfile::TempDir>,
    mysql_admin: Option<(String, String)>,
}

impl TestDb {
    async fn drop_mysql(self) {
        self.store.close().await;
        if let Some((admin_url, name)) = self.mysql_admin {
            let admin = Store::connect(&admin_url)
                .await
                .expect("reconnect to MySQL");
            if let db::Pool::MySql(p) = &admin.pool {
                let drop = format!("DROP DATABASE IF EXISTS `{name}`");
                sqlx::raw_sql(&drop).execute(p).await.ok();
            }
        }
    }
}

async fn sqlite() -> TestDb {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let store = Store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    TestDb {
        store,
        _dir: Some(dir),
        mysql_admin: None,
    }
}

/// A fresh, migrated MySQL database, or None when the suite is not asked to run there.
async fn mysql() -> Option<TestDb> {
    let url = std::env::var("AIPROXY_TEST_MYSQL_URL")
        .ok()
        .filter(|s| !s.is_empty())?;
    let admin = Store::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("AIPROXY_TEST_MYSQL_URL is set but MySQL is unreachable: {e}"));
    let name = format!("aiproxy_t_{}", aiproxy_shared::keys::random_hex(6));
    if let db::Pool::MySql(p) = &admin.pool {
        let create = format!("CREATE DATABASE `{name}`");
        sqlx::raw_sql(&create).execute(p).await.unwrap();
    }
    admin.close().await;
    let base = url.rsplit_once('/').map(|(b, _)| b).unwrap_or(&url);
    let store = Store::connect(&format!("{base}/{name}")).await.unwrap();
    store.migrate().await.unwrap();
    Some(TestDb {
        store,
        _dir: None,
        mysql_admin: Some((url, name)),
    })
}

/// Runs `$body` with `$store` on every configured backend.
macro_rules! on_every_backend {
    ($name:ident, |$store:ident| $body:block) => {
        #[tokio::test]
        async fn $name() {
            let mut dbs = vec![sqlite().await];
            dbs.extend(mysql().await);
            for db in dbs {
                {
                    let $store = &db.store;
                    $body
                }
                db.drop_mysql().await;
            }
        }
    };
}

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

async fn user(store: &Store, name: &str) -> User {
    store
        .create_user(&NewUser {
            username: name.into(),
            password_hash: "hash".into(),
            role: Role::User,
            price_rate: dec("1.5"),
            email: None,
            max_concurrency: 0,
        })
        .await
        .unwrap()
}

async fn key(store: &Store, user_id: i64, hash: &str) -> ApiKey {
    store
        .create_api_key(&NewApiKey {
            user_id,
            name: "k".into(),
            key_hash: hash.into(),
            key_prefix: "sk-aiproxy-abcd".into(),
            billing_type: BillingType::Package,
            cost_limit: Some(dec("12.5")),
            rate_limit: 60,
            allowed_models: vec!["claude-sonnet-4-5".into()],
            max_concurrency: 0,
            client_filter: None,
            allowed_clients: Vec::new(),
            expires_at: None,
        })
        .await
        .unwrap()
}

async fn account(store: &Store) -> Account {
    store
        .create_account(&NewAccount {
            name: "a".into(),
            kind: AccountKind::ClaudeApi,
            credentials_sealed: "sealed".into(),
            base_url: Some("http://127.0.0.1:1".into()),
            proxy_sealed: None,
            priority: 10,
            max_concurrency: 3,
            weight: 1,
            bound_api_key_ids: Vec::new(),
            bound_user_ids: Vec::new(),
            enabled: true,
        })
        .await
        .unwrap()
}

fn utc() -> chrono::FixedOffset {
    chrono::FixedOffset::east_opt(0).unwrap()
}

fn usage_row(request_id: &str, user_id: i64, key_id: i64, account_id: i64) -> UsageRow {
    UsageRow {
        request_id: request_id.into(),
        user_id,
        api_key_id: key_id,
        account_id: Some(account_id),
        node_id: "n1".into(),
        model: "claude-sonnet-4-5".into(),
        platform: "anthropic".into(),
        endpoint: "/v1/messages".into(),
        status_code: 200,
        tokens: aiproxy_shared::pricing::TokenUsage {
            input: 100,
            output: 50,
            cache_creation: 10,
            cache_creation_1h: 0,
            cache_read: 1000,
        },
        upstream_cost: dec("0.0000001"),
        cost: dec("0.00000015"),
        price_version: 1,
        duration_ms: 12,
        ttfb_ms: 3,
        stream: true,
        session_hash: String::new(),
        error_class: String::new(),
        usage_source: "reported".into(),
        created_at: Utc::now(),
        package_id: None,
        upstream_request_id: String::new(),
    }
}

on_every_backend!(users_round_trip_and_conflict, |store| {
    let u = user(store, "alice").await;
    assert_eq!(u.price_rate, dec("1.5"));
    assert_eq!(
        store.find_user_by_name("alice").await.unwrap().unwrap().id,
        u.id
    );
    let dup = store
        .create_user(&NewUser {
            username: "alice".into(),
            password_hash: "x".into(),
            role: Role::User,
            price_rate: Decimal::ONE,
            email: None,
            max_concurrency: 0,
        })
        .await;
    assert!(matches!(dup, Err(StoreError::Conflict(_))), "{dup:?}");
    let patched = store
        .update_user(
            u.id,
            &UserPatch {
                status: Some(ActiveStatus::Disabled),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(patched.status, ActiveStatus::Disabled);
    assert_eq!(patched.username, "alice");
    assert_eq!(patched.token_generation, 0, "only a new password moves it");
    let rekeyed = store
        .update_user(
            u.id,
            &UserPatch {
                password_hash: Some("new".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (rekeyed.password_hash.as_str(), rekeyed.token_generation),
        ("new", 1)
    );
    store.delete_user(u.id).await.unwrap();
    assert!(matches!(
        store.get_user(u.id).await,
        Err(StoreError::NotFound)
    ));
});

on_every_backend!(api_keys_keep_fields_and_hash_is_unique, |store| {
    let u = user(store, "bob").await;
    let k = key(store, u.id, &"ab".repeat(32)).await;
    assert_eq!(k.cost_limit, Some(dec("12.5")));
    assert_eq!(k.allowed_models, vec!["claude-sonnet-4-5".to_string()]);
    assert_eq!(k.status, ActiveStatus::Active);
    let again = store
        .create_api_key(&NewApiKey {
            user_id: u.id,
            name: "dup".into(),
            key_hash: "ab".repeat(32),
            key_prefix: "p".into(),
            billing_type: BillingType::Package,
            cost_limit: None,
            rate_limit: 0,
            allowed_models: vec![],
            max_concurrency: 0,
            client_filter: None,
            allowed_clients: Vec::new(),
            expires_at: None,
        })
        .await;
    assert!(matches!(again, Err(StoreError::Conflict(_))));
    let expires = Utc::now() + Duration::days(1);
    let patched = store
        .update_api_key(
            k.id,
            &ApiKeyPatch {
                status: Some(ActiveStatus::Disabled),
                expires_at: Some(Some(expires)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(patched.status, ActiveStatus::Disabled);
    assert_eq!(
        patched.expires_at.unwrap().timestamp_millis(),
        expires.timestamp_millis()
    );
    assert_eq!(store.list_api_keys(Some(u.id)).await.unwrap().len(), 1);
    assert_eq!(
        store.list_api_keys(Some(u.id + 1000)).await.unwrap().len(),
        0
    );
});

on_every_backend!(every_change_bumps_the_snapshot_version, |store| {
    let v0 = store.snapshot_version().await.unwrap();
    let u = user(store, "carol").await;
    let v1 = store.snapshot_version().await.unwrap();
    assert!(v1 > v0);
    key(store, u.id, &"cd".repeat(32)).await;
    let a = account(store).await;
    store
        .update_account(
            a.id,
            &AccountPatch {
                enabled: Some(false),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(store.snapshot_version().await.unwrap() >= v1 + 3);
});

on_every_backend!(ingestion_is_idempotent_and_updates_totals, |store| {
    let u = user(store, "dave").await;
    let k = key(store, u.id, &"ef".repeat(32)).await;
    let a = account(store).await;
    let rows: Vec<UsageRow> = (0..3)
        .map(|i| usage_row(&format!("req-{i}"), u.id, k.id, a.id))
        .collect();
    let first = store.ingest_usage(&rows, utc()).await.unwrap();
    assert_eq!(
        first,
        IngestOutcome {
            inserted: 3,
            duplicates: 0
        }
    );
    // A replayed batch, partly new, bills only the new row.
    let mut replay = rows.clone();
    replay.push(usage_row("req-3", u.id, k.id, a.id));
    let second = store.ingest_usage(&replay, utc()).await.unwrap();
    assert_eq!(
        second,
        IngestOutcome {
            inserted: 1,
            duplicates: 3
        }
    );

    let k = store.get_api_key(k.id).await.unwrap();
    assert_eq!(k.request_count, 4);
    assert_eq!(k.cost_used, dec("0.0000006"));
    let a = store.get_account(a.id).await.unwrap();
    assert_eq!(a.total_cost, dec("0.0000004"));
    assert_eq!(a.daily_requests, 4);

    let (logs, total) = store
        .list_request_logs(&RequestLogFilter {
            user_id: Some(u.id),
            page: 1,
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(total, 4);
    assert_eq!(logs.len(), 2);
    assert_eq!(logs[0].tokens.cache_read, 1000);
    assert_eq!(logs[0].total_tokens, 1160);
    assert_eq!(logs[0].cost, dec("0.00000015"));
    let (none, total) = store
        .list_request_logs(&RequestLogFilter {
            model: Some("gpt-4o".into()),
            page: 1,
            page_size: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(none.is_empty());
    assert_eq!(total, 0);

    let daily = store.daily_usage_for_user(u.id).await.unwrap();
    assert_eq!(daily.len(), 1);
    assert_eq!(daily[0].request_count, 4);
    assert_eq!(daily[0].total_cost, dec("0.0000006"));
});

on_every_backend!(a_request_is_found_by_its_id_or_the_upstreams, |store| {
    let u = user(store, "quoting").await;
    let k = key(store, u.id, &"cd".repeat(32)).await;
    let a = account(store).await;
    // One request, found by aiproxy's id or by the upstream's.
    let quoted = UsageRow {
        upstream_request_id: "req_011CVgPq7xyz".into(),
        ..usage_row("req-quoted", u.id, k.id, a.id)
    };
    store.ingest_usage(&[quoted], utc()).await.unwrap();
    for id in ["req-quoted", "req_011CVgPq7xyz"] {
        let (found, total) = store
            .list_request_logs(&RequestLogFilter {
                request_id: Some(id.into()),
                page: 1,
                page_size: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(total, 1, "{id}");
        assert_eq!(found[0].request_id, "req-quoted");
        assert_eq!(found[0].upstream_request_id, "req_011CVgPq7xyz");
    }
});

on_every_backend!(prices_seed_once, |store| {
    let n = store.seed_prices_if_empty().await.unwrap();
    assert!(n > 10);
    assert_eq!(store.seed_prices_if_empty().await.unwrap(), 0);
    let prices = store.list_prices().await.unwrap();
    let sonnet = prices
        .iter()
        .find(|p| p.model == "claude-sonnet-4-5")
        .unwrap();
    assert_eq!(sonnet.cache_write_5m_price, dec("3.75"));
    assert_eq!(sonnet.cache_read_price, dec("0.3"));
});

on_every_backend!(migrations_are_rerunnable, |store| {
    store.migrate().await.unwrap();
});

mod billing;
mod operations;

on_every_backend!(user_names_match_one_normalised_form_everywhere, |store| {
    let alice = user(store, "Alice").await;
    for spelling in ["Alice", "alice", "ALICE", "  alice\t", "alice   "] {
        let found = store.find_user_by_name(spelling).await.unwrap();
        assert_eq!(found.map(|u| u.id), Some(alice.id), "{spelling:?}");
    }
    // Trailing spaces and case make no second account, on either database.
    for twin in ["alice", "ALICE  "] {
        let again = store
            .create_user(&NewUser {
                username: twin.into(),
                password_hash: "h".into(),
                role: Role::User,
                price_rate: dec("1"),
                email: None,
                max_concurrency: 0,
            })
            .await;
        assert!(matches!(again, Err(StoreError::Conflict(_))), "{twin:?}");
    }
    assert!(store.find_user_by_name("alic").await.unwrap().is_none());
    // Accents are not folded away: "alicé" is someone else.
    assert!(store.find_user_by_name("alicé").await.unwrap().is_none());
});

on_every_backend!(an_owner_cannot_enable_a_key_an_admin_disabled, |store| {
    let u = user(store, "owner").await;
    let k = store
        .create_api_key(&NewApiKey {
            user_id: u.id,
            name: "k".into(),
            key_hash: "ab".repeat(32),
            key_prefix: "sk-aiproxy-abcd".into(),
            billing_type: BillingType::Package,
            cost_limit: None,
            rate_limit: 0,
            allowed_models: vec![],
            max_concurrency: 0,
            client_filter: None,
            allowed_clients: Vec::new(),
            expires_at: None,
        })
        .await
        .unwrap();
    let disabled = store
        .update_api_key(
            k.id,
            &ApiKeyPatch {
                status: Some(ActiveStatus::Disabled),
                disabled_by_admin: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(disabled.disabled_by_admin);
    // Whatever the owner's change says, the status stays the admin's.
    for status in [Some(ActiveStatus::Active), None] {
        let renamed = store
            .update_api_key(
                k.id,
                &ApiKeyPatch {
                    name: Some("renamed".into()),
                    status,
                    disabled_by_admin: Some(false),
                    by_owner: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(renamed.name, "renamed");
        assert_eq!(renamed.status, ActiveStatus::Disabled);
        assert!(renamed.disabled_by_admin);
    }
    let enabled = store
        .update_api_key(
            k.id,
            &ApiKeyPatch {
                status: Some(ActiveStatus::Active),
                disabled_by_admin: Some(false),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(enabled.status, ActiveStatus::Active);
    assert!(!enabled.disabled_by_admin);
});

on_every_backend!(concurrent_patches_lose_no_change, |store| {
    // Each patch names the fields it changes; whatever else the row holds
    // when it runs stays, so racing changes of different fields all land,
    // and every password change moves the token generation on.
    let u = user(store, "racer").await;
    let k = key(store, u.id, "racehash").await;
    let a = account(store).await;
    let rounds = 12;
    let mut changes = Vec::new();
    for i in 0..rounds {
        let store = store.clone();
        changes.push(tokio::spawn(async move {
            let password = UserPatch {
                password_hash: Some(format!("hash-{i}")),
                ..Default::default()
            };
            let concurrency = UserPatch {
                max_concurrency: Some(i + 1),
                ..Default::default()
            };
            store.update_user(u.id, &password).await.unwrap();
            store.update_user(u.id, &concurrency).await.unwrap();
            let rate = ApiKeyPatch {
                rate_limit: Some(i + 1),
                ..Default::default()
            };
            let renamed = ApiKeyPatch {
                name: Some(format!("key-{i}")),
                ..Default::default()
            };
            store.update_api_key(k.id, &rate).await.unwrap();
            store.update_api_key(k.id, &renamed).await.unwrap();
            let weight = AccountPatch {
                weight: Some(i + 1),
                ..Default::default()
            };
            let reason = AccountPatch {
                disabled_reason: Some(Some(format!("reason-{i}"))),
                ..Default::default()
            };
            store.update_account(a.id, &weight).await.unwrap();
            store.update_account(a.id, &reason).await.unwrap();
        }));
    }
    for change in changes {
        change.await.unwrap();
    }
    let after = store.get_user(u.id).await.unwrap();
    assert_eq!(
        after.token_generation,
        i64::from(rounds),
        "a password change was lost"
    );
    assert!(after.max_concurrency >= 1 && after.password_hash.starts_with("hash-"));
    let key = store.get_api_key(k.id).await.unwrap();
    assert!(
        key.rate_limit >= 1 && key.name.starts_with("key-"),
        "{key:?}"
    );
    let account = store.get_account(a.id).await.unwrap();
    assert!(account.weight >= 1, "{account:?}");
    assert!(
        account
            .disabled_reason
            .as_deref()
            .is_some_and(|r| r.starts_with("reason-")),
        "{account:?}"
    );
    let missing = store.update_user(u.id + 1000, &UserPatch::default()).await;
    assert!(matches!(missing, Err(StoreError::NotFound)), "{missing:?}");
});

on_every_backend!(a_row_that_no_longer_reads_is_left_out_alone, |store| {
    // A status or kind edited by hand to a name this version does not know
    // leaves that row out of listings (and so out of the snapshot); the
    // rest are listed and the snapshot's key projection still reads.
    let good = user(store, "good").await;
    let odd = user(store, "odd").await;
    let first = account(store).await;
    let second = account(store).await;
    key(store, odd.id, "oddhash").await;
    with_pool!(store, p => {
        sqlx::query("UPDATE users SET status = 'paused' WHERE id = ?")
            .bind(odd.id)
            .execute(p)
            .await
            .unwrap();
        sqlx::query("UPDATE accounts SET type = 'claude-next' WHERE id = ?")
            .bind(second.id)
            .execute(p)
            .await
            .unwrap();
        sqlx::query("UPDATE api_keys SET client_filter = 'loose', status = 'paused'")
            .execute(p)
            .await
            .unwrap();
    });
    let users: Vec<i64> = store
        .list_users()
        .await
        .unwrap()
        .iter()
        .map(|u| u.id)
        .collect();
    assert_eq!(users, vec![good.id]);
    let accounts: Vec<i64> = store
        .list_accounts()
        .await
        .unwrap()
        .iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(accounts, vec![first.id]);
    let keys = store.snapshot_keys().await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].client_filter.as_deref(), Some("loose"));
    assert!(!keys[0].active, "an unreadable status never lets a key in");
});

#[tokio::test]
async fn the_pool_takes_the_configured_size() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("sized.db").display());
    let sized = Store::connect_sized(&url, 3).await.unwrap();
    let default = Store::connect(&url).await.unwrap();
    let max = |s: &Store| with_pool!(s, p => p.options().get_max_connections());
    assert_eq!((max(&sized), max(&default)), (3, 8));
}
