//! Mutex access that survives a panic elsewhere.
use std::sync::{Mutex, MutexGuard, PoisonError};

/// `lock()` without poisoning. The mutexes in this project guard maps and
/// counters changed by single statements, so a panic in another holder
/// cannot leave them half-written; refusing every later request over it
/// would turn one bug into an outage.
pub trait LockExt<T> {
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T> LockExt<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
