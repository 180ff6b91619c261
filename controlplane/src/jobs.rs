//! Background jobs (health checks, token refresh, rate-limit recovery,
//! request-log retention) and the database lease that runs them on exactly
//! one control-plane replica; another takes over when the holder dies.
use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::health::HealthChecker;
use crate::oauth::Refresher;
use crate::publisher::Publisher;
use crate::settings::{Defaults, SystemSettings};
use crate::store::Store;

const LEASE_NAME: &str = "background-jobs";
/// A holder that stops renewing loses the lease after this long.
pub const LEASE_TTL: Duration = Duration::from_secs(15);
const LEASE_RENEW_EVERY: Duration = Duration::from_secs(5);

const RATE_LIMIT_RECOVERY_EVERY: Duration = Duration::from_secs(5);
const TOKEN_REFRESH_EVERY: Duration = Duration::from_secs(60);
/// How often due health checks are looked for (each account is checked at
/// the configured interval).
const HEALTH_SWEEP_EVERY: Duration = Duration::from_secs(30);
const RETENTION_EVERY: Duration = Duration::from_secs(3600);
const PURGE_BATCH: u32 = 5_000;

#[derive(Clone)]
pub struct Jobs {
    pub store: Store,
    pub publisher: Publisher,
    pub health: HealthChecker,
    pub refresher: Refresher,
    pub defaults: Defaults,
    pub billing_tz: chrono::FixedOffset,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl Jobs {
    /// Starts the lease keeper and every job; jobs act only while this
    /// replica holds the lease.
    pub fn spawn(self, cancel: CancellationToken, tracker: &TaskTracker) {
        let holder = format!(
            "{}:{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "controlplane".into()),
            aiproxy_shared::keys::random_hex(6)
        );
        let (leader_tx, leader) = watch::channel(false);
        tracker.spawn(keep_lease(
            self.store.clone(),
            holder,
            leader_tx,
            cancel.clone(),
        ));

        let metrics = self.metrics.clone();
        let jobs = self.clone();
        tracker.spawn(every(
            ("rate_limit_recovery", metrics.clone()),
            leader.clone(),
            RATE_LIMIT_RECOVERY_EVERY,
            cancel.clone(),
            move || {
                let jobs = jobs.clone();
                async move { jobs.recover_rate_limits().await }
            },
        ));
        let refresher = self.refresher.clone();
        tracker.spawn(every(
            ("token_refresh", metrics.clone()),
            leader.clone(),
            TOKEN_REFRESH_EVERY,
            cancel.clone(),
            move || {
                let refresher = refresher.clone();
                async move { refresher.refresh_due().await }
            },
        ));
        let health = self.health.clone();
        tracker.spawn(every(
            ("health_check", metrics.clone()),
            leader.clone(),
            HEALTH_SWEEP_EVERY,
            cancel.clone(),
            move || {
                let health = health.clone();
                async move {
                    match health.sweep().await {
                        Ok(_) => true,
                        Err(e) => {
                            tracing::warn!(target: "health_check", error = %e, "health_check sweep failed");
                            false
                        }
                    }
                }
            },
        ));
        let jobs = self;
        tracker.spawn(every(
            ("retention", metrics),
            leader,
            RETENTION_EVERY,
            cancel,
            move || {
                let jobs = jobs.clone();
                async move { jobs.purge_old_logs().await }
            },
        ));
    }

    /// Lifts rate limits whose reset time has passed, so accounts come back
    /// on their own (nodes already skip a lapsed limit; this makes the
    /// stored state and the admin views agree).
    async fn recover_rate_limits(&self) -> bool {
        match self
            .store
            .clear_expired_rate_limits(chrono::Utc::now())
            .await
        {
            Ok(0) => true,
            Ok(n) => {
                tracing::info!(accounts = n, "rate limits lapsed; accounts back in service");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "rate-limit recovery failed");
                false
            }
        }
    }

    /// Deletes request logs older than the retention, whole billing days at
    /// a time, in batches.
    async fn purge_old_logs(&self) -> bool {
        let days = match SystemSettings::load(&self.store, &self.defaults).await {
            Ok(s) => s.retention_days(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the retention setting");
                return false;
            }
        };
        if days == 0 {
            return true;
        }
        let cutoff = retention_cutoff(chrono::Utc::now(), self.billing_tz, days);
        match self.store.purge_request_logs(cutoff, PURGE_BATCH).await {
            Ok(0) => true,
            Ok(purged) => {
                tracing::info!(purged, before = %cutoff.to_rfc3339(), "request logs past retention deleted");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "request-log purge failed");
                false
            }
        }
    }
}

/// Start of the oldest billing day kept: today and the `days - 1` before it.
pub fn retention_cutoff(
    now: chrono::DateTime<chrono::Utc>,
    tz: chrono::FixedOffset,
    days: u64,
) -> chrono::DateTime<chrono::Utc> {
    let today = now.with_timezone(&tz).date_naive();
    let first_kept = today - chrono::Days::new(days.saturating_sub(1));
    let midnight = first_kept.and_time(chrono::NaiveTime::MIN);
    // A fixed offset maps every local time to exactly one instant.
    (midnight - tz).and_utc().with_timezone(&chrono::Utc)
}

/// Takes and renews the lease; `leader` says whether this replica holds it.
async fn keep_lease(
    store: Store,
    holder: String,
    leader: watch::Sender<bool>,
    cancel: CancellationToken,
) {
    loop {
        let held = match store.try_lease(LEASE_NAME, &holder, LEASE_TTL).await {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the background-jobs lease");
                false
            }
        };
        if held != *leader.borrow() {
            if held {
                tracing::info!(%holder, "this control plane now runs the background jobs");
            } else {
                tracing::warn!(%holder, "another control plane runs the background jobs now");
            }
            leader.send_replace(held);
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(LEASE_RENEW_EVERY) => {}
        }
    }
    if *leader.borrow()
        && let Err(e) = store.release_lease(LEASE_NAME, &holder).await
    {
        tracing::warn!(error = %e, "cannot release the background-jobs lease");
    }
}

/// Runs `job` every `period` while this replica leads, until cancelled,
/// counting each run under its name by whether it succeeded.
async fn every<F, Fut>(
    (name, metrics): (&'static str, std::sync::Arc<crate::metrics::Metrics>),
    mut leader: watch::Receiver<bool>,
    period: Duration,
    cancel: CancellationToken,
    job: F,
) where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    loop {
        if !*leader.borrow_and_update() {
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = leader.changed() => if changed.is_err() { return },
            }
            continue;
        }
        // A job stops where it is when the lease goes to another replica.
        let mut lost = leader.clone();
        tokio::select! {
            _ = cancel.cancelled() => return,
            ok = job() => metrics.job_ran(name, ok),
            _ = lost.wait_for(|leads| !*leads) => {
                tracing::warn!("background job stopped: the lease moved to another control plane");
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_keeps_whole_billing_days() {
        let tz = chrono::FixedOffset::east_opt(8 * 3600).expect("zone");
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-26T02:00:00Z")
            .expect("time")
            .with_timezone(&chrono::Utc);
        // 10:00 on the 26th in UTC+8: keep the 26th and the 6 days before.
        let cutoff = retention_cutoff(now, tz, 7);
        assert_eq!(cutoff.to_rfc3339(), "2026-11-19T16:00:00+00:00");
        assert_eq!(
            retention_cutoff(now, tz, 1).to_rfc3339(),
            "2026-11-25T16:00:00+00:00"
        );
    }
}
