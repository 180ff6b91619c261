//! Builds the versioned snapshot from the store and publishes it to watchers.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aiproxy_proto::v1 as pb;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::crypto::Sealer;
use crate::store::{Store, StoreResult};

/// How often the store's version is polled, so changes made by another
/// control-plane replica reach this one's watchers too.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Handle to the latest built snapshot.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    sealer: Sealer,
    relay: pb::RelaySettings,
    latest: watch::Sender<Option<Arc<pb::Snapshot>>>,
    changed: Notify,
}

impl Publisher {
    pub fn new(store: Store, sealer: Sealer, relay: pb::RelaySettings) -> Self {
        let (latest, _) = watch::channel(None);
        Self {
            inner: Arc::new(Inner {
                store,
                sealer,
                relay,
                latest,
                changed: Notify::new(),
            }),
        }
    }

    /// Asks for a rebuild now instead of at the next poll.
    pub fn notify(&self) {
        self.inner.changed.notify_one();
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<pb::Snapshot>>> {
        self.inner.latest.subscribe()
    }

    /// Builds once if nothing is published yet; then the loop keeps it fresh.
    pub async fn refresh(&self) -> StoreResult<()> {
        let version = self.inner.store.snapshot_version().await?;
        let current = self.inner.latest.borrow().as_ref().map(|s| s.version);
        if current != Some(version) {
            let started = std::time::Instant::now();
            let snapshot = self.build(version).await?;
            tracing::info!(
                version,
                accounts = snapshot.accounts.len(),
                api_keys = snapshot.api_keys.len(),
                build_ms = started.elapsed().as_millis() as u64,
                "snapshot built"
            );
            self.inner.latest.send_replace(Some(Arc::new(snapshot)));
        }
        Ok(())
    }

    pub async fn run(self, cancel: CancellationToken) {
        loop {
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "snapshot refresh failed");
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
                _ = self.inner.changed.notified() => {}
            }
        }
    }

    async fn build(&self, version: u64) -> StoreResult<pb::Snapshot> {
        let store = &self.inner.store;
        let accounts = store.list_accounts().await?;
        let keys = store.list_api_keys(None).await?;
        let users = store.list_users().await?;
        let prices = store.list_prices().await?;
        let accounts = accounts
            .into_iter()
            .filter_map(|a| {
                let credentials = match self.open_credentials(&a.credentials_sealed) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(account_id = a.id, error = %e, "account credentials unreadable; account left out");
                        return None;
                    }
                };
                Some(pb::Account {
                    id: a.id,
                    name: a.name,
                    kind: a.kind,
                    base_url: a.base_url.unwrap_or_default(),
                    proxy_url: a.proxy_url.unwrap_or_default(),
                    credentials,
                    priority: a.priority,
                    max_concurrency: a.max_concurrency,
                    schedulable: a.enabled && a.status == "valid",
                    rate_limit_reset_at_ms: a.rate_limit_reset_at.map(|t| t.timestamp_millis()).unwrap_or(0),
                    weight: a.weight.max(1) as u32,
                    bound_api_key_ids: a.bound_api_key_ids,
                    bound_user_ids: a.bound_user_ids,
                })
            })
            .collect();
        let api_keys = keys
            .into_iter()
            .filter_map(|k| {
                let hash = hex::decode(&k.key_hash).ok()?;
                Some(pb::ApiKey {
                    id: k.id,
                    user_id: k.user_id,
                    key_hash: hash,
                    active: k.status == "active",
                    allowed_models: k.allowed_models,
                    rate_limit: k.rate_limit.max(0) as u32,
                    expires_at_ms: k.expires_at.map(|t| t.timestamp_millis()).unwrap_or(0),
                    billing_type: k.billing_type,
                    max_concurrency: k.max_concurrency.max(0) as u32,
                })
            })
            .collect();
        let users = users
            .into_iter()
            .map(|u| pb::User {
                id: u.id,
                active: u.status == "active",
                price_rate: u.price_rate.to_string(),
                max_concurrency: u.max_concurrency.max(0) as u32,
            })
            .collect();
        let prices = prices
            .into_iter()
            .map(|p| pb::ModelPrice {
                model: p.model,
                input: p.input_price.to_string(),
                output: p.output_price.to_string(),
                cache_write_5m: p.cache_write_5m_price.to_string(),
                cache_write_1h: p.cache_write_1h_price.to_string(),
                cache_read: p.cache_read_price.to_string(),
                version: p.version as u64,
                long_context_threshold: p.long_context_threshold.max(0) as u64,
                long_input: p.long_input_price.to_string(),
                long_output: p.long_output_price.to_string(),
                long_cache_write_5m: p.long_cache_write_5m_price.to_string(),
                long_cache_write_1h: p.long_cache_write_1h_price.to_string(),
                long_cache_read: p.long_cache_read_price.to_string(),
            })
            .collect();
        Ok(pb::Snapshot {
            version,
            built_at_ms: chrono::Utc::now().timestamp_millis(),
            accounts,
            api_keys,
            users,
            prices,
            settings: Some(self.inner.relay),
        })
    }

    fn open_credentials(&self, sealed: &str) -> Result<HashMap<String, String>, String> {
        let plain = self.inner.sealer.open(sealed).map_err(|e| e.to_string())?;
        serde_json::from_slice(&plain).map_err(|e| e.to_string())
    }
}
