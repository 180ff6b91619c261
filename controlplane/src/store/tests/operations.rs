//! Operations in the store: credential failures counted to the threshold,
//! operator resets, runtime settings, the audit log and the jobs lease.
use std::collections::BTreeMap;

use super::db::with_pool;
use super::*;

fn refused(message: &str) -> HealthOutcome {
    HealthOutcome::Refused {
        source: "health check",
        message: message.into(),
    }
}

on_every_backend!(
    failures_disable_at_the_threshold_and_a_reset_brings_the_account_back,
    |store| {
        let a = account(store).await;
        let v0 = store.snapshot_version().await.unwrap();
        for n in 1..=2 {
            let effect = store
                .record_account_health(a.id, &refused("401 invalid x-api-key"), 3)
                .await
                .unwrap();
            assert_eq!(effect, HealthEffect::Counted(n));
        }
        let inconclusive = HealthOutcome::Inconclusive {
            message: "503 overloaded".into(),
        };
        assert_eq!(
            store
                .record_account_health(a.id, &inconclusive, 3)
                .await
                .unwrap(),
            HealthEffect::Counted(2),
            "a 5xx neither counts nor resets"
        );
        assert_eq!(
            store.snapshot_version().await.unwrap(),
            v0,
            "counting alone changes no snapshot"
        );
        let effect = store
            .record_account_health(a.id, &refused("401 invalid x-api-key"), 3)
            .await
            .unwrap();
        assert_eq!(effect, HealthEffect::Disabled(3));
        let stored = store.get_account(a.id).await.unwrap();
        assert!(!stored.enabled);
        assert_eq!(stored.health_status, HealthStatus::Failed);
        let reason = stored.disabled_reason.unwrap();
        assert!(
            reason.contains("3 consecutive failures") && reason.contains("invalid x-api-key"),
            "{reason}"
        );
        assert!(
            store.snapshot_version().await.unwrap() > v0,
            "disabling reaches the data planes"
        );
        // Once disabled, more failures count but disable nothing again.
        assert_eq!(
            store
                .record_account_health(a.id, &refused("401"), 3)
                .await
                .unwrap(),
            HealthEffect::Counted(4)
        );

        store.reset_accounts(Some(a.id), false).await.unwrap();
        let stored = store.get_account(a.id).await.unwrap();
        assert_eq!(stored.consecutive_error_count, 0);
        assert!(!stored.enabled, "a reset without enable leaves it disabled");
        store.reset_accounts(Some(a.id), true).await.unwrap();
        let stored = store.get_account(a.id).await.unwrap();
        assert!(
            stored.enabled
                && stored.status == AccountStatus::Valid
                && stored.disabled_reason.is_none()
        );
        assert!(matches!(
            store.reset_accounts(Some(a.id + 100), true).await,
            Err(StoreError::NotFound)
        ));

        // A success resets the count and stores what the usage endpoint said.
        store
            .record_account_health(a.id, &refused("403"), 0)
            .await
            .unwrap();
        let usage = OAuthUsage {
            five_hour: Some(UsageWindow {
                utilization: 42.5,
                resets_at: Some(Utc::now()),
            }),
            seven_day: None,
        };
        assert_eq!(
            store
                .record_account_health(a.id, &HealthOutcome::Passed { usage }, 0)
                .await
                .unwrap(),
            HealthEffect::Counted(0)
        );
        let stored = store.get_account(a.id).await.unwrap();
        assert_eq!(stored.health_status, HealthStatus::Ok);
        assert_eq!(stored.usage_5h_utilization, Some(42.5));
        assert!(stored.health_checked_at.is_some() && stored.enabled);

        // Threshold 0 never disables; served traffic clears the count.
        for _ in 0..10 {
            store
                .record_account_health(a.id, &refused("401"), 0)
                .await
                .unwrap();
        }
        assert!(store.get_account(a.id).await.unwrap().enabled);
        store.clear_account_errors_served(&[a.id]).await.unwrap();
        assert_eq!(
            store
                .get_account(a.id)
                .await
                .unwrap()
                .consecutive_error_count,
            0
        );
    }
);

on_every_backend!(settings_are_stored_removed_and_bump_the_snapshot, |store| {
    let v0 = store.snapshot_version().await.unwrap();
    let mut set = BTreeMap::new();
    set.insert("account_error_threshold".to_string(), "3".to_string());
    set.insert("filter_mode".to_string(), "strict".to_string());
    store.save_system_configs(&set, &[]).await.unwrap();
    set.insert("filter_mode".to_string(), "simple".to_string());
    store
        .save_system_configs(&set, &["account_error_threshold".to_string()])
        .await
        .unwrap();
    let stored = store.system_configs().await.unwrap();
    assert_eq!(
        stored.get("filter_mode").map(String::as_str),
        Some("simple"),
        "an update overwrites"
    );
    assert_eq!(
        stored.get("account_error_threshold"),
        None,
        "unset returns to the default"
    );
    assert_eq!(store.snapshot_version().await.unwrap(), v0 + 2);
});

on_every_backend!(
    audit_entries_are_listed_newest_first_with_filters,
    |store| {
        for (actor, target) in [
            ("admin", "/api/v1/accounts/1"),
            ("ops", "/api/v1/settings"),
            ("admin", "/api/v1/accounts/2"),
        ] {
            store
                .record_audit(&NewAudit {
                    actor_id: 1,
                    actor,
                    action: "PATCH",
                    target,
                    status: 200,
                    detail: Some("{}"),
                })
                .await
                .unwrap();
        }
        let all = store
            .list_audit(&AuditFilter {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            all.iter().map(|e| e.target.as_str()).collect::<Vec<_>>(),
            [
                "/api/v1/accounts/2",
                "/api/v1/settings",
                "/api/v1/accounts/1"
            ]
        );
        let admin = store
            .list_audit(&AuditFilter {
                actor: Some("admin".into()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(admin.len(), 2);
        let accounts = store
            .list_audit(&AuditFilter {
                target_prefix: Some("/api/v1/accounts".into()),
                limit: 1,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(accounts.len(), 1);
        let older = store
            .list_audit(&AuditFilter {
                before_id: Some(accounts[0].id),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(older.len(), 2, "paging continues below the last id seen");
        store
            .record_audit(&NewAudit {
                actor_id: 1,
                actor: "ops",
                action: "POST",
                target: "/api/v1/under_score%",
                status: 200,
                detail: None,
            })
            .await
            .unwrap();
        let odd = store
            .list_audit(&AuditFilter {
                target_prefix: Some("/api/v1/under_score%".into()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(odd.len(), 1, "_ and % in a prefix match themselves");
        let none = store
            .list_audit(&AuditFilter {
                target_prefix: Some("/api/v1/underXscore".into()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(none.is_empty());
    }
);

on_every_backend!(the_jobs_lease_has_one_holder_until_it_lapses, |store| {
    // Held for a minute, so a slow machine cannot see it lapse early.
    let long = std::time::Duration::from_secs(60);
    assert!(store.try_lease("jobs", "a", long).await.unwrap());
    assert!(
        !store.try_lease("jobs", "b", long).await.unwrap(),
        "held by a"
    );
    // A renewal sets the new term, here a short one.
    let short = std::time::Duration::from_millis(200);
    assert!(
        store.try_lease("jobs", "a", short).await.unwrap(),
        "a renews"
    );
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert!(
        store.try_lease("jobs", "b", long).await.unwrap(),
        "b takes a lapsed lease"
    );
    assert!(!store.try_lease("jobs", "a", long).await.unwrap());
    store.release_lease("jobs", "b").await.unwrap();
    assert!(
        store.try_lease("jobs", "a", long).await.unwrap(),
        "released at once"
    );
});

on_every_backend!(
    purged_logs_leave_the_consistency_check_clean_and_say_so,
    |store| {
        let u = user(store, "old-and-new").await;
        let k = key(store, u.id, &"ab".repeat(32)).await;
        let a = account(store).await;
        let at = |id: &str, when: &str| UsageRow {
            cost: Decimal::from_str("0.5").unwrap(),
            created_at: chrono::DateTime::parse_from_rfc3339(when)
                .unwrap()
                .with_timezone(&Utc),
            ..usage_row(id, u.id, k.id, a.id)
        };
        let rows = vec![
            at("old-1", "2026-10-01T10:00:00Z"),
            at("old-2", "2026-10-02T10:00:00Z"),
            at("new-1", "2026-11-20T10:00:00Z"),
        ];
        store.ingest_usage(&rows, utc()).await.unwrap();
        assert!(
            store
                .consistency(utc())
                .await
                .unwrap()
                .complete_since
                .is_none()
        );
        let cutoff = chrono::DateTime::parse_from_rfc3339("2026-11-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            store.purge_request_logs(cutoff, 1).await.unwrap(),
            2,
            "in batches of one"
        );
        assert_eq!(store.purge_request_logs(cutoff, 1).await.unwrap(), 0);
        let report = store.consistency(utc()).await.unwrap();
        assert!(report.clean, "{:?}", report.differences);
        assert_eq!(report.request_logs, 1);
        assert_eq!(
            report.complete_since.map(|d| d.to_string()).as_deref(),
            Some("2026-11-01")
        );
        // The kept days are still checked.
        with_pool!(store, p => {
            sqlx::query("UPDATE daily_usages SET request_count = 7 WHERE date >= '2026-11-01'")
                .execute(p)
                .await
                .unwrap();
        });
        assert!(!store.consistency(utc()).await.unwrap().clean);
    }
);
