//! Money in the store: packages charged across period boundaries, the
//! consistency check, re-rating, price versions and usage totals.
use std::collections::HashMap;

use aiproxy_shared::billing::parse_timezone;
use aiproxy_shared::pricing::{ModelPrice, PriceTable};
use chrono::{DateTime, Utc};

use super::db::with_pool;
use super::*;

fn cst() -> chrono::FixedOffset {
    parse_timezone("+08:00").unwrap()
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn row(id: &str, u: &User, k: &ApiKey, a: &Account, cost: &str, when: &str) -> UsageRow {
    UsageRow {
        cost: dec(cost),
        upstream_cost: dec(cost) / dec("1.5"),
        created_at: at(when),
        ..usage_row(id, u.id, k.id, a.id)
    }
}

async fn subscription(store: &Store, user_id: i64, daily: &str, weekly: &str) -> Package {
    store
        .create_package(&NewPackage {
            user_id,
            name: "pro".into(),
            kind: PackageKind::Subscription,
            daily_quota: Some(dec(daily)),
            weekly_quota: Some(dec(weekly)),
            monthly_quota: None,
            quota_total: None,
            allowed_models: Vec::new(),
            starts_at: None,
            expires_at: None,
        })
        .await
        .unwrap()
}

async fn quota(store: &Store, user_id: i64, total: &str) -> Package {
    store
        .create_package(&NewPackage {
            user_id,
            name: "top-up".into(),
            kind: PackageKind::Quota,
            daily_quota: None,
            weekly_quota: None,
            monthly_quota: None,
            quota_total: Some(dec(total)),
            allowed_models: Vec::new(),
            starts_at: None,
            expires_at: None,
        })
        .await
        .unwrap()
}

on_every_backend!(packages_are_charged_across_period_boundaries, |store| {
    let u = user(store, "sub").await;
    let k = key(store, u.id, &"a1".repeat(32)).await;
    let a = account(store).await;
    let sub = subscription(store, u.id, "1", "10").await;
    let top_up = quota(store, u.id, "50").await;
    let tz = cst();
    // Sunday evening and Monday morning in UTC+8, then past the daily limit.
    let on = |r: UsageRow, p: &Package| UsageRow {
        package_id: Some(p.id),
        ..r
    };
    let rows = vec![
        on(row("r1", &u, &k, &a, "0.6", "2026-11-22T10:00:00Z"), &sub),
        on(row("r2", &u, &k, &a, "0.5", "2026-11-22T15:00:00Z"), &sub),
        // The daily limit was reached: the node drew on the quota package.
        on(
            row("r3", &u, &k, &a, "0.25", "2026-11-22T15:30:00Z"),
            &top_up,
        ),
        // 00:30 Monday in UTC+8: a new day and a new ISO week.
        on(row("r4", &u, &k, &a, "0.75", "2026-11-22T16:30:00Z"), &sub),
        // Admitted with no package (the key bills on its own): never charged to one.
        row("r6", &u, &k, &a, "9", "2026-11-22T16:40:00Z"),
    ];
    store.ingest_usage(&rows, tz).await.unwrap();
    let sub = store.get_package(sub.id).await.unwrap();
    assert_eq!(sub.daily_used, dec("0.75"));
    assert_eq!(sub.weekly_used, dec("0.75"));
    assert_eq!(sub.quota_used, dec("1.85"));
    assert_eq!(sub.last_reset_day.unwrap().to_string(), "2026-11-23");
    assert_eq!(sub.last_reset_week, Some(202648));
    assert_eq!(sub.last_reset_month.as_deref(), Some("2026-11"));
    let top_up = store.get_package(top_up.id).await.unwrap();
    assert_eq!(
        top_up.quota_used,
        dec("0.25"),
        "r3 drew on the quota package"
    );
    let (logs, _) = store
        .list_request_logs(&RequestLogFilter {
            page: 1,
            page_size: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(logs.len(), 5);
    // Daily usage is counted by day in the billing zone.
    let days: Vec<String> = store
        .daily_usage_for_user(u.id)
        .await
        .unwrap()
        .iter()
        .map(|d| format!("{} {}", d.date, d.request_count))
        .collect();
    assert_eq!(days, ["2026-11-23 2", "2026-11-22 3"]);
    let report = store.consistency(tz).await.unwrap();
    assert!(report.clean, "{:?}", report.differences);
    assert_eq!(report.request_logs, 5);

    // A replay changes nothing; a late record of a closed day counts for
    // the week and the quota only.
    store.ingest_usage(&rows, tz).await.unwrap();
    store
        .ingest_usage(
            &[on(
                row("r5", &u, &k, &a, "0.1", "2026-11-23T12:00:00Z"),
                &sub,
            )],
            tz,
        )
        .await
        .unwrap();
    let sub = store.get_package(sub.id).await.unwrap();
    assert_eq!(
        (sub.daily_used, sub.weekly_used),
        (dec("0.85"), dec("0.85"))
    );
    assert!(store.consistency(tz).await.unwrap().clean);

    // An operator reset zeroes the figures; the check still agrees.
    assert_eq!(
        store.reset_package_usage(None, Some(u.id)).await.unwrap(),
        2
    );
    let sub = store.get_package(sub.id).await.unwrap();
    assert_eq!(
        (sub.daily_used, sub.quota_used),
        (Decimal::ZERO, Decimal::ZERO)
    );
    let report = store.consistency(tz).await.unwrap();
    assert!(report.clean, "{:?}", report.differences);
});

on_every_backend!(the_consistency_check_finds_what_differs, |store| {
    let u = user(store, "drift").await;
    let k = key(store, u.id, &"b2".repeat(32)).await;
    let a = account(store).await;
    store
        .ingest_usage(
            &[row("d1", &u, &k, &a, "0.3", "2026-11-26T01:00:00Z")],
            utc(),
        )
        .await
        .unwrap();
    assert!(store.consistency(utc()).await.unwrap().clean);
    // What the seed's operators saw: a key total that drifted from the logs.
    with_pool!(store, p => {
        sqlx::query("UPDATE api_keys SET cost_used = cost_used + ? WHERE id = ?")
            .bind(db::Usd(dec("1")))
            .bind(k.id)
            .execute(p)
            .await
            .unwrap();
    });
    let report = store.consistency(utc()).await.unwrap();
    assert!(!report.clean);
    assert_eq!(report.differences.len(), 1, "{:?}", report.differences);
    let d = &report.differences[0];
    assert_eq!((d.table, d.field), ("api_keys", "cost_used"));
    assert_eq!((d.expected.as_str(), d.actual.as_str()), ("0.3", "1.3"));
});

on_every_backend!(rerating_moves_every_aggregate_consistently, |store| {
    let u = user(store, "rerate").await;
    let k = key(store, u.id, &"c3".repeat(32)).await;
    let a = account(store).await;
    let top_up = quota(store, u.id, "100").await;
    let tz = utc();
    // Billed at a wrong price: 100 input + 50 output + 10 cache write + 1000 cache read tokens.
    store
        .ingest_usage(
            &[
                UsageRow {
                    package_id: Some(top_up.id),
                    ..row("x1", &u, &k, &a, "0.3", "2026-11-20T01:00:00Z")
                },
                UsageRow {
                    package_id: Some(top_up.id),
                    ..row("x2", &u, &k, &a, "0.3", "2026-11-21T01:00:00Z")
                },
            ],
            tz,
        )
        .await
        .unwrap();
    let mut map = HashMap::new();
    map.insert(
        "claude-sonnet-4-5".to_string(),
        ModelPrice {
            input: dec("3"),
            output: dec("15"),
            cache_write_5m: dec("3.75"),
            cache_write_1h: dec("6"),
            cache_read: dec("0.3"),
            long_context: None,
            version: 9,
        },
    );
    let prices = PriceTable::new(map);
    let scope = RerateScope {
        from: at("2026-11-20T00:00:00Z"),
        to: at("2026-11-21T00:00:00Z"),
        model: None,
        dry_run: true,
    };
    // 100*3 + 50*15 + 10*3.75 + 1000*0.3 = 1387.5 per million = 0.0013875; × 1.5
    let dry = store
        .rerate(&scope, &prices, &HashMap::new(), tz)
        .await
        .unwrap();
    assert_eq!((dry.requests, dry.changed, dry.applied), (1, 1, false));
    assert_eq!(
        (dry.before_cost, dry.after_cost),
        (dec("0.3"), dec("0.00208125"))
    );
    assert_eq!(store.get_api_key(k.id).await.unwrap().cost_used, dec("0.6"));
    let done = store
        .rerate(
            &RerateScope {
                dry_run: false,
                ..scope
            },
            &prices,
            &HashMap::new(),
            tz,
        )
        .await
        .unwrap();
    assert!(done.applied);
    assert_eq!(
        store.get_api_key(k.id).await.unwrap().cost_used,
        dec("0.30208125")
    );
    assert_eq!(
        store.get_package(top_up.id).await.unwrap().quota_used,
        dec("0.30208125")
    );
    assert_eq!(
        store.get_account(a.id).await.unwrap().total_cost,
        dec("0.2013875")
    );
    let report = store.consistency(tz).await.unwrap();
    assert!(report.clean, "{:?}", report.differences);
    let (logs, _) = store
        .list_request_logs(&RequestLogFilter {
            page: 1,
            page_size: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let rerated = logs.iter().find(|l| l.request_id == "x1").unwrap();
    assert_eq!(
        (rerated.cost, rerated.price_version),
        (dec("0.00208125"), 9)
    );
});

on_every_backend!(price_changes_are_versions_and_totals_group, |store| {
    store.seed_prices_if_empty().await.unwrap();
    let before = store.get_price("gpt-4o").await.unwrap();
    let mut changed = before.clone();
    changed.input_price = dec("2");
    let v = store.set_prices(&[changed], "ops").await.unwrap();
    let after = store.get_price("gpt-4o").await.unwrap();
    assert_eq!(after.version, v[0]);
    assert!(after.version > before.version);
    assert_eq!(after.input_price, dec("2"));
    store.delete_price("gpt-4o", "ops").await.unwrap();
    let history = store.price_history("gpt-4o").await.unwrap();
    assert_eq!(history.len(), 3);
    assert!(history[0].deleted);
    assert_eq!(history[1].prices.input_price, dec("2"));
    assert_eq!(history[1].changed_by, "ops");
    assert!(matches!(
        store.get_price("gpt-4o").await,
        Err(StoreError::NotFound)
    ));
    let sonnet = store.get_price("claude-sonnet-4-5").await.unwrap();
    assert_eq!(sonnet.long_context_threshold, 200_000);
    assert_eq!(sonnet.long_output_price, dec("22.5"));

    let u = user(store, "totals").await;
    let k = key(store, u.id, &"d4".repeat(32)).await;
    let a = account(store).await;
    store
        .ingest_usage(
            &[
                row("t1", &u, &k, &a, "0.3", "2026-11-20T01:00:00Z"),
                row("t2", &u, &k, &a, "0.6", "2026-11-21T01:00:00Z"),
            ],
            utc(),
        )
        .await
        .unwrap();
    for group in [
        GroupBy::User,
        GroupBy::Key,
        GroupBy::Model,
        GroupBy::Account,
    ] {
        let t = store
            .usage_totals(&RequestLogFilter::default(), group, utc())
            .await
            .unwrap();
        assert_eq!(t.len(), 1, "{group:?}");
        assert_eq!(
            (t[0].requests, t[0].cost, t[0].input_tokens),
            (2, dec("0.9"), 200)
        );
    }
    let by_day = store
        .usage_totals(&RequestLogFilter::default(), GroupBy::Day, utc())
        .await
        .unwrap();
    let days: Vec<_> = by_day
        .iter()
        .map(|d| (d.group.as_str(), d.requests))
        .collect();
    assert_eq!(days, [("2026-11-20", 1), ("2026-11-21", 1)]);

    // Narrowed to a key or a status, days come from the request logs, in
    // the billing zone.
    let other = key(store, u.id, &"d5".repeat(32)).await;
    let mut failed = row("t3", &u, &other, &a, "0.1", "2026-11-21T20:00:00Z");
    failed.status_code = 529;
    store.ingest_usage(&[failed], utc()).await.unwrap();
    let days = async |f: RequestLogFilter, tz: chrono::FixedOffset| {
        let totals = store.usage_totals(&f, GroupBy::Day, tz).await.unwrap();
        totals
            .into_iter()
            .map(|d| (d.group, d.requests, d.cost))
            .collect::<Vec<_>>()
    };
    let by_key = RequestLogFilter {
        api_key_id: Some(other.id),
        ..Default::default()
    };
    assert_eq!(
        days(by_key.clone(), utc()).await,
        [("2026-11-21".to_string(), 1, dec("0.1"))]
    );
    assert_eq!(
        days(by_key, cst()).await,
        [("2026-11-22".to_string(), 1, dec("0.1"))]
    );
    // From the daily aggregates, a range covers the billing days its ends fall on.
    let late = RequestLogFilter {
        from: Some(at("2026-11-20T16:00:00Z")),
        ..Default::default()
    };
    assert_eq!(
        days(late, cst()).await,
        [("2026-11-21".to_string(), 2, dec("0.7"))]
    );
    let by_status = RequestLogFilter {
        status_code: Some(200),
        ..Default::default()
    };
    assert_eq!(
        days(by_status, utc()).await,
        [
            ("2026-11-20".to_string(), 1, dec("0.3")),
            ("2026-11-21".to_string(), 1, dec("0.6"))
        ]
    );
});

on_every_backend!(snapshot_keys_read_what_the_keys_hold, |store| {
    let u = user(store, "snap").await;
    let k = key(store, u.id, &"e5".repeat(32)).await;
    let expiring = store
        .update_api_key(
            k.id,
            &ApiKeyPatch {
                expires_at: Some(Some(at("2027-01-02T03:04:05.678Z"))),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let listed = store.snapshot_keys().await.unwrap();
    assert_eq!(listed.len(), 1);
    let s = &listed[0];
    assert_eq!(
        (s.id, s.user_id, s.key_hash.as_str()),
        (k.id, u.id, expiring.key_hash.as_str())
    );
    assert_eq!(s.expires_at, expiring.expires_at);
    assert_eq!(
        (s.cost_used, s.cost_limit),
        (expiring.cost_used, Some(dec("12.5")))
    );
    assert_eq!((s.rate_limit, s.max_concurrency), (60, 0));
    assert_eq!(s.allowed_models, vec!["claude-sonnet-4-5".to_string()]);
    assert_eq!((s.billing_type.as_str(), s.active), ("package", true));
});
