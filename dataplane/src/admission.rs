//! What is refused before a request's body is read, so refused requests
//! cost no memory: a key or user already at its concurrency on this node, a
//! key known to be over its rate, and the node's budget of body bytes.
use aiproxy_shared::sync::LockExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http::StatusCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::errors::RelayError;
use crate::snapshot::{KeyEntry, UserEntry};

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Whose {
    Key(i64),
    User(i64),
}

/// This node's requests in flight per key and user (only those with a
/// concurrency limit), and keys refused for their rate until a moment.
#[derive(Default)]
pub struct Admission {
    in_flight: Mutex<HashMap<Whose, u32>>,
    rate_limited_until_ms: Mutex<HashMap<i64, i64>>,
}

/// A request counted against its key's and user's concurrency on this
/// node until it is dropped (when its response ends).
pub struct Admitted {
    admission: Arc<Admission>,
    counted: [Option<Whose>; 2],
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if self.counted.iter().all(Option::is_none) {
            return;
        }
        let mut in_flight = self.admission.in_flight.locked();
        for whose in self.counted.iter().flatten() {
            if let Some(n) = in_flight.get_mut(whose) {
                *n -= 1;
                if *n == 0 {
                    in_flight.remove(whose);
                }
            }
        }
    }
}

impl Admission {
    /// Counts the request, or refuses it when this node alone already has
    /// the key's or user's limit in flight (the cluster-wide count, checked
    /// later, can only be higher), or the key was refused for its rate
    /// moments ago.
    pub fn admit(
        self: &Arc<Self>,
        key: &KeyEntry,
        user: &UserEntry,
        now_ms: i64,
    ) -> Result<Admitted, RelayError> {
        if key.rate_limit > 0 {
            let limited = self.rate_limited_until_ms.locked();
            if let Some(until) = limited.get(&key.id).filter(|until| **until > now_ms) {
                let wait_ms = (*until - now_ms) as u64;
                return Err(RelayError::rate_limited(wait_ms.div_ceil(1000)));
            }
        }
        let mut admitted = Admitted {
            admission: self.clone(),
            counted: [None, None],
        };
        let limits = [
            (Whose::Key(key.id), key.max_concurrency, "API key"),
            (Whose::User(user.id), user.max_concurrency, "user"),
        ];
        if limits.iter().all(|(_, max, _)| *max == 0) {
            return Ok(admitted);
        }
        let mut in_flight = self.in_flight.locked();
        for (whose, max, _) in &limits {
            if *max > 0 && in_flight.get(whose).copied().unwrap_or(0) >= *max {
                let name = limits.iter().find(|l| l.0 == *whose).map_or("", |l| l.2);
                return Err(RelayError::concurrency_exceeded(name));
            }
        }
        for (i, (whose, max, _)) in limits.iter().enumerate() {
            if *max > 0 {
                *in_flight.entry(*whose).or_default() += 1;
                admitted.counted[i] = Some(*whose);
            }
        }
        Ok(admitted)
    }

    /// The key was refused for its rate: refuse it here, without reading
    /// bodies, until `until_ms`.
    pub fn rate_limited(&self, key_id: i64, until_ms: i64) {
        let mut limited = self.rate_limited_until_ms.locked();
        limited.insert(key_id, until_ms);
        // Forget lapsed entries now and then, so the map stays small.
        if limited.len() > 1024 {
            limited.retain(|_, until| *until > until_ms - 60_000);
        }
    }
}

/// The node's budget of request-body bytes held at once.
pub struct BodyBudget {
    bytes: Arc<Semaphore>,
    max: usize,
}

/// Body bytes taken from the budget, given back when dropped.
pub struct BodyBytes(Option<OwnedSemaphorePermit>);

impl BodyBudget {
    pub fn new(max: usize) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        BodyBudget {
            bytes: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// Nothing taken yet.
    pub fn none(&self) -> BodyBytes {
        BodyBytes(None)
    }

    /// Takes `n` more bytes into `held`, or refuses at once when the budget
    /// is spent (a 503 the client may retry).
    pub fn take(&self, held: &mut BodyBytes, n: usize) -> Result<(), RelayError> {
        if n == 0 {
            return Ok(());
        }
        let permit = u32::try_from(n)
            .ok()
            .filter(|n| (*n as usize) <= self.max)
            .and_then(|n| self.bytes.clone().try_acquire_many_owned(n).ok())
            .ok_or_else(|| RelayError {
                retry_after: Some(1),
                ..RelayError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    "server busy: too many request bodies in flight; retry shortly",
                )
            })?;
        match &mut held.0 {
            Some(p) => p.merge(permit),
            None => held.0 = Some(permit),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: i64, max: u32) -> UserEntry {
        UserEntry {
            id,
            active: true,
            price_rate: rust_decimal::Decimal::ONE,
            max_concurrency: max,
        }
    }

    #[test]
    fn a_key_at_its_limit_on_this_node_is_refused_until_one_ends() {
        let admission = Arc::new(Admission::default());
        let key = KeyEntry {
            max_concurrency: 2,
            ..KeyEntry::for_tests(1, 1)
        };
        let u = user(1, 0);
        let a = admission.admit(&key, &u, 0).unwrap();
        let _b = admission.admit(&key, &u, 0).unwrap();
        let refused = admission.admit(&key, &u, 0).err().unwrap();
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        drop(a);
        assert!(admission.admit(&key, &u, 0).is_ok());
        // A user's limit spans their keys.
        let other = KeyEntry::for_tests(2, 7);
        let limited = user(7, 1);
        let _held = admission.admit(&other, &limited, 0).unwrap();
        let third = KeyEntry::for_tests(3, 7);
        assert!(admission.admit(&third, &limited, 0).is_err());
    }

    #[test]
    fn a_rate_limited_key_is_refused_until_its_retry_time() {
        let admission = Arc::new(Admission::default());
        let key = KeyEntry {
            rate_limit: 10,
            ..KeyEntry::for_tests(1, 1)
        };
        admission.rate_limited(1, 5_000);
        let refused = admission.admit(&key, &user(1, 0), 1_000).err().unwrap();
        assert_eq!(refused.retry_after, Some(4));
        assert!(admission.admit(&key, &user(1, 0), 5_000).is_ok());
    }

    #[test]
    fn the_body_budget_refuses_once_spent_and_returns_what_is_dropped() {
        let budget = BodyBudget::new(100);
        let mut a = budget.none();
        budget.take(&mut a, 60).unwrap();
        budget.take(&mut a, 30).unwrap();
        let mut b = budget.none();
        assert!(budget.take(&mut b, 20).is_err());
        drop(a);
        budget.take(&mut b, 100).unwrap();
        assert!(
            budget.take(&mut budget.none(), 1000).is_err(),
            "more than the whole budget"
        );
    }
}
