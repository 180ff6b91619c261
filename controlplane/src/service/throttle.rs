//! Password guessing and password-check floods: after a few wrong
//! passwords for one account from one address, or many for any account from
//! one address, further tries wait, longer each time, without being
//! checked; and argon2 checks run a few at a time, the rest refused at once.
use aiproxy_shared::sync::LockExt;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aiproxy_shared::net::actor_range;
use tokio::sync::Semaphore;

use super::ServiceError;

/// Wrong passwords for one account from one address before tries wait.
const FREE_FAILURES: u32 = 5;
/// Wrong passwords for any accounts from one address before tries wait:
/// random names cannot get around the per-account count.
const FREE_ADDRESS_FAILURES: u32 = 20;
/// The first wait; each further failure doubles it, up to `MAX_WAIT`.
const FIRST_WAIT: Duration = Duration::from_secs(30);
const MAX_WAIT: Duration = Duration::from_secs(15 * 60);
/// A record with no failure for this long is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(60 * 60);
/// Records kept at most; a flood of names cannot grow memory without bound.
const MAX_RECORDS: usize = 10_000;
/// Sign-ins one address may have being checked at once.
const CHECKS_PER_ADDRESS: u32 = 2;
/// Longest a signed-in admin's password hashing waits for a slot.
const ADMIN_HASH_WAIT: Duration = Duration::from_secs(30);

/// Who is trying: an account (its normalised name, or none for the
/// address's own count) and the address range the tries come from.
type Trier = (Option<String>, Option<IpAddr>);

/// Failures per account and address, and per address, in this control
/// plane's memory.
#[derive(Clone, Default)]
pub struct PasswordThrottle {
    records: Arc<Mutex<HashMap<Trier, Record>>>,
}

struct Record {
    failures: u32,
    last: Instant,
}

impl Record {
    /// Until when tries wait, if they do, after `free` failures.
    fn blocked_until(&self, free: u32) -> Option<Instant> {
        let over = self.failures.checked_sub(free)?;
        let wait = FIRST_WAIT
            .saturating_mul(1u32.checked_shl(over).unwrap_or(u32::MAX))
            .min(MAX_WAIT);
        Some(self.last + wait)
    }
}

fn account_key(account: &str) -> String {
    crate::store::username_key(account)
}

impl PasswordThrottle {
    /// How long `account` from `from` must still wait, if it must.
    pub fn wait(&self, account: &str, from: Option<IpAddr>) -> Option<Duration> {
        self.wait_at(account, from, Instant::now())
    }

    fn wait_at(&self, account: &str, from: Option<IpAddr>, now: Instant) -> Option<Duration> {
        let from = from.map(actor_range);
        let records = self.records.locked();
        let account = records
            .get(&(Some(account_key(account)), from))
            .and_then(|r| r.blocked_until(FREE_FAILURES));
        let address = from
            .and_then(|_| records.get(&(None, from)))
            .and_then(|r| r.blocked_until(FREE_ADDRESS_FAILURES));
        let until = account.into_iter().chain(address).max()?;
        (until > now).then(|| until - now)
    }

    pub fn failed(&self, account: &str, from: Option<IpAddr>) {
        self.failed_at(account, from, Instant::now());
    }

    fn failed_at(&self, account: &str, from: Option<IpAddr>, now: Instant) {
        let from = from.map(actor_range);
        let mut records = self.records.locked();
        if records.len() >= MAX_RECORDS {
            records.retain(|_, r| now.duration_since(r.last) < FORGET_AFTER);
            while records.len() >= MAX_RECORDS {
                // Still full of live records: the oldest go.
                let Some(oldest) = records
                    .iter()
                    .min_by_key(|(_, r)| r.last)
                    .map(|(k, _)| k.clone())
                else {
                    break;
                };
                records.remove(&oldest);
            }
        }
        let mut count = |trier: Trier| {
            let record = records.entry(trier).or_insert(Record {
                failures: 0,
                last: now,
            });
            if now.duration_since(record.last) >= FORGET_AFTER {
                record.failures = 0;
            }
            record.failures = record.failures.saturating_add(1);
            record.last = now;
        };
        count((Some(account_key(account)), from));
        if from.is_some() {
            count((None, from));
        }
    }

    /// The account's count starts over; the address's does not (one good
    /// password must not buy guesses at other accounts).
    pub fn succeeded(&self, account: &str, from: Option<IpAddr>) {
        let mut records = self.records.locked();
        records.remove(&(Some(account_key(account)), from.map(actor_range)));
    }
}

/// Password checks running at once: across the process, and per address.
#[derive(Clone)]
pub struct LoginGate {
    hashing: Arc<Semaphore>,
    per_address: Arc<Mutex<HashMap<IpAddr, u32>>>,
}

/// One address's check in progress; ends when dropped.
pub struct Checking {
    gate: LoginGate,
    from: Option<IpAddr>,
}

impl Drop for Checking {
    fn drop(&mut self) {
        if let Some(from) = self.from {
            let mut per = self.gate.per_address.locked();
            if let Some(n) = per.get_mut(&from) {
                *n -= 1;
                if *n == 0 {
                    per.remove(&from);
                }
            }
        }
    }
}

fn busy() -> ServiceError {
    ServiceError::Busy("too many sign-ins at once; try again shortly")
}

impl LoginGate {
    pub fn new(checks_at_once: usize) -> Self {
        LoginGate {
            hashing: Arc::new(Semaphore::new(checks_at_once.max(1))),
            per_address: Arc::default(),
        }
    }

    /// Checks `password` against `hash` for an anonymous caller: refused at
    /// once (429 for one address's third check at a time, 503 when every
    /// slot is busy) rather than queued.
    pub async fn verify(
        &self,
        from: Option<IpAddr>,
        password: String,
        hash: String,
    ) -> Result<bool, ServiceError> {
        let from = from.map(actor_range);
        let _checking = self.enter(from)?;
        let permit = self
            .hashing
            .clone()
            .try_acquire_owned()
            .map_err(|_| busy())?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            crate::crypto::verify_password(&password, &hash)
        })
        .await
        .map_err(|e| ServiceError::Internal(e.to_string()))
    }

    fn enter(&self, from: Option<IpAddr>) -> Result<Checking, ServiceError> {
        if let Some(from) = from {
            let mut per = self.per_address.locked();
            let n = per.entry(from).or_default();
            if *n >= CHECKS_PER_ADDRESS {
                return Err(ServiceError::Throttled(Duration::from_secs(1)));
            }
            *n += 1;
        }
        Ok(Checking {
            gate: self.clone(),
            from,
        })
    }

    /// Runs password work for a signed-in admin: waits for a slot (a
    /// sign-in flood must not lock the operator out), up to a bound.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ServiceError> {
        let permit = tokio::time::timeout(ADMIN_HASH_WAIT, self.hashing.clone().acquire_owned())
            .await
            .map_err(|_| busy())?
            .map_err(|_| busy())?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await
        .map_err(|e| ServiceError::Internal(e.to_string()))
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
        // Another address, or another account, is not held up; the name
        // matches however it is spelled.
        assert_eq!(t.wait_at("  ADMIN ", ip, start), Some(FIRST_WAIT));
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
        // A success starts the account's count over, not the address's.
        t.succeeded("admin", ip);
        let records = t.records.locked();
        assert!(!records.contains_key(&(Some("admin".into()), ip)));
        assert!(records.contains_key(&(None, ip)));
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
        assert!(t.records.locked().len() <= MAX_RECORDS);
    }

    #[test]
    fn random_names_from_one_address_are_held_up_too() {
        let t = PasswordThrottle::default();
        let ip: Option<IpAddr> = Some("203.0.113.4".parse().unwrap());
        let now = Instant::now();
        for i in 0..FREE_ADDRESS_FAILURES {
            assert_eq!(t.wait_at(&format!("guess{i}"), ip, now), None);
            t.failed_at(&format!("guess{i}"), ip, now);
        }
        assert_eq!(t.wait_at("never-tried", ip, now), Some(FIRST_WAIT));
        // One IPv6 host's whole /64 counts as one address.
        let v6 = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        for i in 0..FREE_ADDRESS_FAILURES {
            t.failed_at(&format!("g{i}"), v6(&format!("2001:db8::{i:x}")), now);
        }
        assert!(t.wait_at("x", v6("2001:db8::ffff"), now).is_some());
        assert_eq!(t.wait_at("x", v6("2001:db8:0:1::1"), now), None);
    }

    #[tokio::test]
    async fn checks_beyond_the_slots_are_refused_at_once() {
        let gate = LoginGate::new(1);
        let hash = crate::crypto::hash_password("right-password").unwrap();
        let ip: Option<IpAddr> = Some("198.51.100.1".parse().unwrap());
        let held = gate.hashing.clone().try_acquire_owned().unwrap();
        let refused = gate.verify(ip, "x".into(), hash.clone()).await;
        assert!(matches!(refused, Err(ServiceError::Busy(_))));
        drop(held);
        assert!(
            gate.verify(ip, "right-password".into(), hash.clone())
                .await
                .unwrap()
        );
        let _a = gate.enter(ip.map(actor_range)).unwrap();
        let _b = gate.enter(ip.map(actor_range)).unwrap();
        assert!(matches!(
            gate.verify(ip, "x".into(), hash).await,
            Err(ServiceError::Throttled(_))
        ));
    }
}
