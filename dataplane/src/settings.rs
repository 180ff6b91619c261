//! The settings in force: the node's configuration with the operator's
//! settings from the snapshot on top, worked out once when a snapshot is
//! applied and read from it by the relay, the scheduler and the meter.
use std::time::Duration;

use aiproxy_proto::v1 as pb;

/// The node's scheduling configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerSettings {
    /// Lease lifetime without renewal (`concurrency_ttl`).
    pub lease_ttl: Duration,
    pub session_ttl: Duration,
    /// Longest wait for a slot when every usable account is full.
    pub wait_timeout: Duration,
    /// Cap of every unavailable mark (`unavailable_ttl`).
    pub unavailable_cap: Duration,
}

/// What requests served from one snapshot go by.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Effective {
    /// Upstream timeout for the response head and first byte (`proxy.timeout`).
    pub request_timeout: Duration,
    /// Lease lifetime without renewal (`concurrency_ttl`).
    pub lease_ttl: Duration,
    pub session_ttl: Duration,
    /// Longest wait for a slot when every usable account is full.
    pub wait_timeout: Duration,
    /// Cap of every unavailable mark (`unavailable_ttl`).
    pub unavailable_cap: Duration,
}

impl Effective {
    /// The node's configuration alone.
    pub fn configured(request_timeout: Duration, scheduling: &SchedulerSettings) -> Self {
        Effective {
            request_timeout,
            lease_ttl: scheduling.lease_ttl,
            session_ttl: scheduling.session_ttl,
            wait_timeout: scheduling.wait_timeout,
            unavailable_cap: scheduling.unavailable_cap,
        }
    }

    /// These settings with what the operator set over them; a setting a
    /// control plane leaves unset (or does not know) keeps its value here.
    pub fn with(&self, operator: &pb::RelaySettings) -> Self {
        let set = |ms: u64, configured: Duration| match ms {
            0 => configured,
            ms => Duration::from_millis(ms),
        };
        Effective {
            request_timeout: set(operator.request_timeout_ms, self.request_timeout),
            lease_ttl: set(operator.concurrency_ttl_ms, self.lease_ttl),
            session_ttl: set(operator.session_ttl_ms, self.session_ttl),
            // Zero is a setting of its own here: no wait at all.
            wait_timeout: if operator.wait_timeout_set {
                Duration::from_millis(operator.wait_timeout_ms)
            } else {
                self.wait_timeout
            },
            unavailable_cap: set(operator.unavailable_ttl_ms, self.unavailable_cap),
        }
    }

    /// Plain settings for tests: no wait, one-minute leases and sessions.
    #[cfg(test)]
    pub(crate) fn for_tests() -> Self {
        Effective {
            request_timeout: Duration::from_secs(600),
            lease_ttl: Duration::from_secs(60),
            session_ttl: Duration::from_secs(60),
            wait_timeout: Duration::ZERO,
            unavailable_cap: Duration::from_secs(300),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operators_settings_override_the_configured_ones_and_silence_keeps_them() {
        let configured = Effective::for_tests();
        let now = configured.with(&pb::RelaySettings {
            session_ttl_ms: 5_000,
            wait_timeout_ms: 2_500,
            wait_timeout_set: true,
            request_timeout_ms: 30_000,
            ..Default::default()
        });
        assert_eq!(now.session_ttl, Duration::from_secs(5));
        assert_eq!(now.wait_timeout, Duration::from_millis(2_500));
        assert_eq!(now.request_timeout, Duration::from_secs(30));
        assert_eq!(now.lease_ttl, Duration::from_secs(60), "unset: configured");
        assert_eq!(now.unavailable_cap, Duration::from_secs(300));
        assert_eq!(
            configured.with(&pb::RelaySettings::default()),
            configured,
            "back to the configuration"
        );
        let no_wait = Effective {
            wait_timeout: Duration::from_secs(9),
            ..configured
        }
        .with(&pb::RelaySettings {
            wait_timeout_set: true,
            ..Default::default()
        });
        assert_eq!(
            no_wait.wait_timeout,
            Duration::ZERO,
            "zero, when set, is kept"
        );
    }
}
