//! A second thread that takes half of a decoding step's products. A step of a 135 M-parameter
//! base runs some 200 products of 40–80 µs each, bound by reading their weights from memory,
//! which two cores do almost twice as fast as one. Rayon's workers fall asleep between such
//! short jobs and take longer to wake than half a product takes (splitting them through rayon
//! made replies slower), and no crate offers a join that stays awake for a burst of short jobs,
//! so this one helper spins for a millisecond after each job before it parks.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering::SeqCst};
use std::sync::{Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How long the helper stays awake waiting for the next job.
const SPIN: Duration = Duration::from_millis(1);

const IDLE: u8 = 0;
const POSTED: u8 = 1;
const DONE: u8 = 2;

/// The job the helper runs: a borrowed closure, alive until the poster sees `DONE`.
type Job = *mut (dyn FnMut() + Send);

struct Helper {
    state: AtomicU8,
    sleeping: AtomicBool,
    panicked: AtomicBool,
    job: UnsafeCell<Option<Job>>,
    /// One poster at a time; others run both halves themselves.
    poster: Mutex<()>,
    thread: OnceLock<Thread>,
}

// SAFETY: `job` is written only by the poster holding `poster` while the state is IDLE, and
// read only by the helper between POSTED and DONE.
unsafe impl Sync for Helper {}

fn helper() -> Option<&'static Helper> {
    static HELPER: OnceLock<Option<&'static Helper>> = OnceLock::new();
    *HELPER.get_or_init(|| {
        if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
            return None;
        }
        let h: &'static Helper = Box::leak(Box::new(Helper {
            state: AtomicU8::new(IDLE),
            sleeping: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            job: UnsafeCell::new(None),
            poster: Mutex::new(()),
            thread: OnceLock::new(),
        }));
        let spawned = std::thread::Builder::new().name("mynah-pair".into()).spawn(move || serve(h));
        match spawned {
            Ok(handle) => {
                let _ = h.thread.set(handle.thread().clone());
                Some(h)
            }
            Err(_) => None,
        }
    })
}

fn serve(h: &'static Helper) {
    loop {
        let mut since = Instant::now();
        let mut spins = 0u32;
        while h.state.load(SeqCst) != POSTED {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(256) && since.elapsed() > SPIN {
                h.sleeping.store(true, SeqCst);
                if h.state.load(SeqCst) != POSTED {
                    std::thread::park();
                }
                h.sleeping.store(false, SeqCst);
                since = Instant::now();
            }
            std::hint::spin_loop();
        }
        // SAFETY: POSTED means the poster stored a live job and waits for DONE.
        if let Some(job) = unsafe { *h.job.get() } {
            let run = std::panic::AssertUnwindSafe(|| unsafe { (*job)() });
            if std::panic::catch_unwind(run).is_err() {
                h.panicked.store(true, SeqCst);
            }
        }
        h.state.store(DONE, SeqCst);
    }
}

/// Waits for the helper's job (also while unwinding: the job borrows the poster's stack).
struct Wait(&'static Helper);

impl Drop for Wait {
    fn drop(&mut self) {
        while self.0.state.load(SeqCst) != DONE {
            std::hint::spin_loop();
        }
        // SAFETY: the helper is done with the job.
        unsafe { *self.0.job.get() = None };
        self.0.state.store(IDLE, SeqCst);
    }
}

/// Runs `a` on the helper thread while `b` runs here; both on this thread when there is no
/// helper or another thread is using it.
pub(super) fn join(a: impl FnOnce() + Send, b: impl FnOnce()) {
    let Some(h) = helper() else {
        a();
        b();
        return;
    };
    let Ok(_guard) = h.poster.try_lock() else {
        a();
        b();
        return;
    };
    let mut a = Some(a);
    let mut call = move || {
        if let Some(a) = a.take() {
            a()
        }
    };
    let job: *mut (dyn FnMut() + Send + '_) = &mut call;
    // SAFETY: the helper runs the job before DONE, and `Wait` below keeps this frame (and what
    // the job borrows) alive until then, even while unwinding.
    unsafe { *h.job.get() = Some(std::mem::transmute::<*mut (dyn FnMut() + Send + '_), Job>(job)) };
    h.state.store(POSTED, SeqCst);
    if h.sleeping.load(SeqCst) {
        if let Some(t) = h.thread.get() {
            t.unpark();
        }
    }
    let wait = Wait(h);
    b();
    drop(wait);
    if h.panicked.swap(false, SeqCst) {
        panic!("a product panicked on the helper thread");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn both_halves_run_and_see_their_borrows() {
        let mut left = vec![0u64; 1000];
        let mut right = vec![0u64; 1000];
        for round in 0..200u64 {
            super::join(
                || left.iter_mut().enumerate().for_each(|(i, v)| *v = i as u64 * round),
                || right.iter_mut().enumerate().for_each(|(i, v)| *v = i as u64 + round),
            );
            assert_eq!(left[999], 999 * round);
            assert_eq!(right[999], 999 + round);
        }
    }

    #[test]
    fn posters_on_many_threads_each_get_their_work_done() {
        std::thread::scope(|s| {
            for t in 0..4u64 {
                s.spawn(move || {
                    for _ in 0..100 {
                        let (mut a, mut b) = (0, 0);
                        super::join(|| a = t + 1, || b = t + 2);
                        assert_eq!((a, b), (t + 1, t + 2));
                    }
                });
            }
        });
    }
}
