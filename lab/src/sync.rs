//! The lab's one way to take a std mutex: a panicking task does not poison the counters and queues every other
//! task of a run shares.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, taking it over if a panicking holder poisoned it.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
