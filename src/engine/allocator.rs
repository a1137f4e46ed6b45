//! What the process's allocator does with freed memory while a model trains: it keeps it.
//! A training step frees and allocates gigabytes of tensors; mimalloc returns freed memory to
//! the kernel after a delay, and every later allocation then faulted fresh zeroed pages in: a
//! fifth of a fine-tuning step went to the kernel. While a [`KeepFreedMemory`] lives, nothing is
//! returned; when the last one ends, the usual delay comes back and what is free is released.

use std::sync::{Mutex, PoisonError};

use libmimalloc_sys as mi;

/// `mi_option_purge_delay` of mimalloc 3's option enum (`mimalloc.h`), which libmimalloc-sys
/// does not name: the milliseconds before freed memory goes back to the kernel, -1 for never.
const PURGE_DELAY: mi::mi_option_t = 15;

/// The holders, and the delay to restore when the last one ends.
static HOLDERS: Mutex<(usize, std::os::raw::c_long)> = Mutex::new((0, 0));

/// Keeps freed memory in the process while it lives (see the module). Without mimalloc as the
/// global allocator (unit tests, other binaries) it changes nothing that is used.
pub struct KeepFreedMemory(());

impl KeepFreedMemory {
    pub fn new() -> KeepFreedMemory {
        let mut holders = HOLDERS.lock().unwrap_or_else(PoisonError::into_inner);
        if holders.0 == 0 {
            // SAFETY: reading and setting an option is thread-safe in mimalloc.
            unsafe {
                holders.1 = mi::mi_option_get(PURGE_DELAY);
                mi::mi_option_set(PURGE_DELAY, -1);
            }
        }
        holders.0 += 1;
        KeepFreedMemory(())
    }
}

impl Default for KeepFreedMemory {
    fn default() -> Self {
        KeepFreedMemory::new()
    }
}

impl Drop for KeepFreedMemory {
    fn drop(&mut self) {
        let mut holders = HOLDERS.lock().unwrap_or_else(PoisonError::into_inner);
        holders.0 = holders.0.saturating_sub(1);
        if holders.0 == 0 {
            // SAFETY: as above; collecting is allowed from any thread at any time.
            unsafe {
                mi::mi_option_set(PURGE_DELAY, holders.1);
                mi::mi_collect(true);
            }
        }
    }
}

/// The delay now in force, for the tests.
#[cfg(test)]
fn purge_delay() -> std::os::raw::c_long {
    // SAFETY: as above.
    unsafe { mi::mi_option_get(PURGE_DELAY) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Other tests train at the same time, so what is checked is what holds whatever they do.
    #[test]
    fn freed_memory_is_kept_while_any_training_holds_it() {
        let first = KeepFreedMemory::new();
        let second = KeepFreedMemory::new();
        assert_eq!(purge_delay(), -1);
        let saved = HOLDERS.lock().unwrap().1;
        assert_eq!(saved, 1000, "mimalloc 3's default: the option's index is the purge delay's");
        drop(first);
        assert_eq!(purge_delay(), -1, "the second holder still keeps it");
        drop(second);
        let holders = HOLDERS.lock().unwrap();
        if holders.0 == 0 {
            assert_eq!(purge_delay(), saved, "the last holder restores the delay");
        }
    }
}
