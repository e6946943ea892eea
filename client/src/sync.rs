//! The client's one way to take a std mutex: a panic in another task does not poison the client's state for every
//! later caller (each lock guards state that is consistent between statements).

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, taking it over if a panicking holder poisoned it.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
