//! Password guessing: after a few wrong passwords for one account from one
//! address, further tries wait, longer each time, without being checked.
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Wrong passwords allowed before tries have to wait.
const FREE_FAILURES: u32 = 5;
/// The first wait; each further failure doubles it, up to `MAX_WAIT`.
const FIRST_WAIT: Duration = Duration::from_secs(30);
const MAX_WAIT: Duration = Duration::from_secs(15 * 60);
/// A record with no failure for this long is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(60 * 60);
/// Records kept at most; a flood of names cannot grow memory without bound.
const MAX_RECORDS: usize = 10_000;

/// Who is trying: an account name and the address the tries come from.
type Trier = (String, Option<IpAddr>);

/// Failures per account and address, in this control plane's memory.
#[derive(Clone, Default)]
pub struct PasswordThrottle {
    records: Arc<Mutex<HashMap<Trier, Record>>>,
}

struct Record {
    failures: u32,
    last: Instant,
}

impl Record {
    /// Until when tries wait, if they do.
    fn blocked_until(&self) -> Option<Instant> {
        let over = self.failures.checked_sub(FREE_FAILURES)?;
        let wait = FIRST_WAIT
            .saturating_mul(1u32.checked_shl(over).unwrap_or(u32::MAX))
            .min(MAX_WAIT);
        Some(self.last + wait)
    }
}

impl PasswordThrottle {
    /// How long `account` from `from` must still wait, if it must.
    pub fn wait(&self, account: &str, from: Option<IpAddr>) -> Option<Duration> {
        self.wait_at(account, from, Instant::now())
    }

    fn wait_at(&self, account: &str, from: Option<IpAddr>, now: Instant) -> Option<Duration> {
        let records = self.records.lock().expect("throttle lock");
        let until = records.get(&(account.to_string(), from))?.blocked_until()?;
        (until > now).then(|| until - now)
    }

    pub fn failed(&self, account: &str, from: Option<IpAddr>) {
        self.failed_at(account, from, Instant::now());
    }

    fn failed_at(&self, account: &str, from: Option<IpAddr>, now: Instant) {
        let mut records = self.records.lock().expect("throttle lock");
        if records.len() >= MAX_RECORDS {
            records.retain(|_, r| now.duration_since(r.last) < FORGET_AFTER);
            if records.len() >= MAX_RECORDS {
                // Still full of live records: the oldest goes.
                if let Some(oldest) = records
                    .iter()
                    .min_by_key(|(_, r)| r.last)
                    .map(|(k, _)| k.clone())
                {
                    records.remove(&oldest);
                }
            }
        }
        let record = records
            .entry((account.to_string(), from))
            .or_insert(Record {
                failures: 0,
                last: now,
            });
        if now.duration_since(record.last) >= FORGET_AFTER {
            record.failures = 0;
        }
        record.failures = record.failures.saturating_add(1);
        record.last = now;
    }

    pub fn succeeded(&self, account: &str, from: Option<IpAddr>) {
        let mut records = self.records.lock().expect("throttle lock");
        records.remove(&(account.to_string(), from));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_after_the_free_failures_and_a_success_clears_them() {
        let t = PasswordThrottle::default();
        let ip: Option<IpAddr> = Some("10.0.0.1".parse().unwrap());
        let start = Instant::now();
        for i in 0..FREE_FAILURES {
            assert_eq!(t.wait_at("admin", ip, start), None, "failure {i}");
            t.failed_at("admin", ip, start);
        }
        assert_eq!(t.wait_at("admin", ip, start), Some(FIRST_WAIT));
        // Another address, or another account, is not held up.
        assert_eq!(
            t.wait_at("admin", Some("10.0.0.2".parse().unwrap()), start),
            None
        );
        assert_eq!(t.wait_at("alice", ip, start), None);
        // Once the wait is over a try is checked; failing again doubles it.
        let later = start + FIRST_WAIT;
        assert_eq!(t.wait_at("admin", ip, later), None);
        t.failed_at("admin", ip, later);
        assert_eq!(t.wait_at("admin", ip, later), Some(FIRST_WAIT * 2));
        for _ in 0..40 {
            t.failed_at("admin", ip, later);
        }
        assert_eq!(t.wait_at("admin", ip, later), Some(MAX_WAIT));
        t.succeeded("admin", ip);
        assert_eq!(t.wait_at("admin", ip, later), None);
    }

    #[test]
    fn old_failures_are_forgotten_and_records_stay_bounded() {
        let t = PasswordThrottle::default();
        let start = Instant::now();
        for _ in 0..FREE_FAILURES {
            t.failed_at("bob", None, start);
        }
        let much_later = start + FORGET_AFTER;
        t.failed_at("bob", None, much_later);
        assert_eq!(
            t.wait_at("bob", None, much_later),
            None,
            "counting restarted"
        );
        for i in 0..MAX_RECORDS + 10 {
            t.failed_at(&format!("user{i}"), None, much_later);
        }
        assert!(t.records.lock().unwrap().len() <= MAX_RECORDS);
    }
}
