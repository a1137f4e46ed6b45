//! What the process's allocator does with freed memory while a model trains: it keeps it.
//! A training step frees and allocates gigabytes of tensors; mimalloc returns freed memory to
//! the kernel after a delay, and every later allocation then faulted fresh zeroed pages in: a
//! fifth of a fine-tuning step went to the kernel. While a [`KeepFreedMemory`] lives, nothing is
//! returned; when the last one ends, the usual delay comes back and what is free is released.
//!
//! It also keeps a training's new memory in small pages. Where the kernel gives transparent
//! huge pages to memory that asks for them (mimalloc does) and compacts memory to find each one
//! (`defrag` = `madvise`), a fine-tune's first step faulted in some 1 600 huge pages and took
//! 9–13 s where the later steps take 3; in small pages it took 4.

use std::sync::{Mutex, PoisonError};

use libmimalloc_sys as mi;

/// `mi_option_purge_delay` of mimalloc 3's option enum (`mimalloc.h`), which libmimalloc-sys
/// does not name: the milliseconds before freed memory goes back to the kernel, -1 for never.
const PURGE_DELAY: mi::mi_option_t = 15;

/// The holders, and what to restore when the last one ends: the purge delay and whether
/// transparent huge pages were off.
static HOLDERS: Mutex<Holders> = Mutex::new(Holders { count: 0, delay: 0, thp_disabled: None });

struct Holders {
    count: usize,
    delay: std::os::raw::c_long,
    thp_disabled: Option<bool>,
}

/// Whether transparent huge pages are off for this process (`None` where that cannot be told).
fn thp_disabled() -> Option<bool> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_GET_THP_DISABLE reads a flag of the calling process; the other
        // arguments must be zero.
        match unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) } {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }
    #[cfg(not(target_os = "linux"))]
    None
}

/// Turns transparent huge pages off or back on for this process (for memory faulted in from
/// then on). A failure changes nothing that matters: the pages stay as they were.
fn set_thp_disabled(off: bool) {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE sets a flag of the calling process; the last three arguments
    // must be zero.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, libc::c_ulong::from(off), 0, 0, 0);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = off;
}

/// Keeps freed memory in the process while it lives (see the module). Without mimalloc as the
/// global allocator (unit tests, other binaries) it changes nothing that is used.
pub struct KeepFreedMemory(());

impl KeepFreedMemory {
    pub fn new() -> KeepFreedMemory {
        let mut holders = HOLDERS.lock().unwrap_or_else(PoisonError::into_inner);
        if holders.count == 0 {
            // SAFETY: reading and setting an option is thread-safe in mimalloc.
            unsafe {
                holders.delay = mi::mi_option_get(PURGE_DELAY);
                mi::mi_option_set(PURGE_DELAY, -1);
            }
            holders.thp_disabled = thp_disabled();
            if holders.thp_disabled == Some(false) {
                set_thp_disabled(true);
            }
        }
        holders.count += 1;
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
        holders.count = holders.count.saturating_sub(1);
        if holders.count == 0 {
            // SAFETY: as above.
            unsafe { mi::mi_option_set(PURGE_DELAY, holders.delay) };
            release_freed();
            if holders.thp_disabled == Some(false) {
                set_thp_disabled(false);
            }
        }
    }
}

/// Returns the memory freed so far to the kernel now, rather than after the purge delay (a
/// memory figure taken right after loading would count a base's freed `f32` copy).
pub fn release_freed() {
    // SAFETY: collecting is allowed from any thread at any time.
    unsafe { mi::mi_collect(true) }
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
        let (saved, thp) = {
            let holders = HOLDERS.lock().unwrap();
            (holders.delay, holders.thp_disabled)
        };
        assert_eq!(saved, 1000, "mimalloc 3's default: the option's index is the purge delay's");
        if thp.is_some() {
            assert_eq!(thp_disabled(), Some(true), "training memory is faulted in small pages");
        }
        drop(first);
        assert_eq!(purge_delay(), -1, "the second holder still keeps it");
        drop(second);
        let holders = HOLDERS.lock().unwrap();
        if holders.count == 0 {
            assert_eq!(purge_delay(), saved, "the last holder restores the delay");
            assert_eq!(thp_disabled(), thp, "and the pages as they were");
        }
    }
}
