//! One way to take a mutex everywhere in the agent: a panic in another
//! thread never poisons the data for the rest (every update leaves it
//! consistent).

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, carrying on with the data if another thread panicked holding it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
