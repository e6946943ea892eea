//! The hub's one way to take a lock, and the check that keeps quinn out of it. Every hub mutex is taken through
//! [`lock`]; in debug builds each thread counts the hub locks it holds, and the network layer calls
//! [`assert_unlocked`] before every call into quinn, so any test that runs a path which writes under a hub lock
//! fails there. (A std guard cannot be held across an `.await` in a `Send` future, so a per-thread count is exact.)

use std::{
    ops::{Deref, DerefMut},
    sync::{Mutex, MutexGuard},
};

#[cfg(debug_assertions)]
thread_local! {
    static HELD: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// A held hub lock.
#[derive(Debug)]
pub(crate) struct HubGuard<'a, T>(MutexGuard<'a, T>);

/// Locks a hub mutex. A panic while holding one is a bug; the state is consistent at every await-free step, so a
/// poisoned lock is taken over rather than spreading the panic.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> HubGuard<'_, T> {
    let guard = mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    #[cfg(debug_assertions)]
    HELD.with(|held| held.set(held.get() + 1));
    HubGuard(guard)
}

/// Locks a hub mutex if nobody holds it now ([`lock`]'s rules otherwise): for scans over many rooms under the map's
/// lock, which must not wait behind one room's lock (held across a store commit or read) with every lookup waiting
/// behind them. A room someone holds is in use, so no candidate for what such a scan looks for.
pub(crate) fn try_lock<T>(mutex: &Mutex<T>) -> Option<HubGuard<'_, T>> {
    let guard = match mutex.try_lock() {
        Ok(guard) => guard,
        Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return None,
    };
    #[cfg(debug_assertions)]
    HELD.with(|held| held.set(held.get() + 1));
    Some(HubGuard(guard))
}

impl<T> Drop for HubGuard<'_, T> {
    fn drop(&mut self) {
        #[cfg(debug_assertions)]
        HELD.with(|held| held.set(held.get() - 1));
    }
}

impl<T> Deref for HubGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> DerefMut for HubGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

/// Panics (debug builds) if this thread holds a hub lock: called before every call into quinn.
pub fn assert_unlocked(what: &str) {
    #[cfg(debug_assertions)]
    HELD.with(|held| assert_eq!(held.get(), 0, "{what} called into quinn under a hub lock"));
    #[cfg(not(debug_assertions))]
    let _ = what;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(debug_assertions)]
    fn a_held_lock_is_counted_until_dropped() {
        let (a, b) = (Mutex::new(1), Mutex::new(2));
        assert_unlocked("nothing held");
        let first = lock(&a);
        let second = lock(&b);
        assert_eq!(*first + *second, 3);
        assert!(std::panic::catch_unwind(|| assert_unlocked("test")).is_err());
        drop((first, second));
        assert_unlocked("all dropped");
    }
}
