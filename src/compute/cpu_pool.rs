//! rayon's global pool, with the thread that trains as one of its workers, and the
//! other workers kept awake while a CPU step runs.
//!
//! The CPU step issues thousands of parallel operations (products, element-wise
//! loops, the fused nodes) from the thread that runs it. From a thread outside the
//! pool each one is injected into the pool's queue, and the issuing thread sleeps on a
//! lock until a worker finishes the last piece and wakes it: a futex wait and wake per
//! operation, which under a hypervisor costs more than a short operation's work.
//! Built with the issuing thread as worker 0, an operation is pushed onto that thread's
//! own queue; the thread runs a share of it and, while the rest finishes, steals work
//! instead of sleeping. Which thread runs which piece never changes a value: every
//! parallel task writes its own outputs (see `compute::reduce` for the one reduction).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// How many workers are in [`with_workers_awake`]'s looking loop now, in any pool.
static LOOKING: AtomicUsize = AtomicUsize::new(0);

/// Builds rayon's global pool with the calling thread as one of its workers (index 0),
/// of the size rayon would pick anyway (`RAYON_NUM_THREADS`, else the cores).
///
/// Call once, from the thread that will train, before anything uses rayon. With one
/// thread the pool is left to rayon: a lone worker 0 would run work that other
/// threads (the device threads of a multi-GPU run) inject only while it waits in
/// rayon itself. If the pool already exists it is left as it is: this changes how the
/// issuing thread waits, never a result.
pub fn train_on_this_thread() {
    let threads = pool_size();
    if threads > 1 {
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .use_current_thread()
            .build_global();
    }
}

/// The global pool's size by rayon's own rule: `RAYON_NUM_THREADS` when it is a
/// positive count, else the cores this process may use.
fn pool_size() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|threads| threads.parse::<usize>().ok())
        .filter(|&threads| threads > 0)
        .unwrap_or_else(cores)
}

/// The cores this process may use, read once: `available_parallelism` reads the
/// affinity mask and the cgroup's quota, and [`with_workers_awake`] asks every step.
fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |cores| cores.get()))
}

/// Runs `work` (a training step, issued from worker 0 of the current pool) while the
/// pool's other workers look for work without going to sleep.
///
/// An idle rayon worker sleeps after a few dozen rounds of looking, so every parallel
/// operation that follows a pause longer than that (the autodiff bookkeeping and the
/// allocation between two operations) had to wake the workers again, one after
/// another, each wake a futex call and, under a hypervisor, an interrupt between
/// virtual cores. Here each other worker runs a task that takes whatever work the pool
/// has (`rayon::yield_now`) until `work` returns or unwinds, yielding its core to any
/// other runnable thread when there is none. Where the pool has one thread, more
/// threads than cores, or the caller is not its worker 0, `work` runs as it is.
pub fn with_workers_awake<R>(work: impl FnOnce() -> R) -> R {
    let threads = rayon::current_num_threads();
    if threads <= 1 || threads > cores() || rayon::current_thread_index() != Some(0) {
        return work();
    }
    let done = Arc::new(AtomicBool::new(false));
    let release = Release(done.clone());
    rayon::spawn_broadcast(move |context| {
        // Worker 0 runs `work`: it must not wait for itself.
        if context.index() == 0 {
            return;
        }
        LOOKING.fetch_add(1, Ordering::AcqRel);
        while !done.load(Ordering::Acquire) {
            if rayon::yield_now() != Some(rayon::Yield::Executed) {
                std::thread::yield_now();
            }
        }
        LOOKING.fetch_sub(1, Ordering::AcqRel);
    });
    let result = work();
    drop(release);
    result
}

/// Ends the workers' looking when dropped: when the work returns, or as it unwinds.
struct Release(Arc<AtomicBool>);

impl Drop for Release {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;
    use std::time::{Duration, Instant};

    /// The tests count [`LOOKING`], which every pool shares: one at a time.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// A pool of `threads` with a fresh thread as worker 0, running `test` there;
    /// skipped, saying so, on a machine with fewer cores (no worker would look).
    fn on_worker_zero(threads: usize, test: impl FnOnce() + Send + 'static) {
        if cores() < threads {
            eprintln!("skipped: {threads} threads need {threads} cores, this machine has fewer");
            return;
        }
        let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        std::thread::spawn(move || {
            // Kept until the test ends: a dropped pool lets its workers exit.
            let _pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .use_current_thread()
                .build()
                .expect("a pool");
            test();
        })
        .join()
        .expect("the test thread");
    }

    /// Waits up to five seconds for `LOOKING` to read `count`.
    fn looking_becomes(count: usize) -> bool {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if LOOKING.load(Ordering::Acquire) == count {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    #[test]
    fn the_other_workers_look_for_work_during_the_step_and_stop_after_it() {
        // Two threads: more than the cores (CI has two) would run the step as it is.
        on_worker_zero(2, || {
            let sum: u64 = with_workers_awake(|| {
                assert!(looking_becomes(1), "worker 1 looking during the step");
                (0..100_000u64).into_par_iter().sum()
            });
            assert_eq!(sum, 99_999 * 100_000 / 2);
            assert!(looking_becomes(0), "no worker left looking after the step");
        });
    }

    #[test]
    fn the_workers_stop_looking_when_the_step_panics() {
        on_worker_zero(2, || {
            let unwound = std::panic::catch_unwind(|| {
                with_workers_awake(|| {
                    assert!(looking_becomes(1));
                    panic!("a step that fails");
                })
            });
            assert!(unwound.is_err());
            assert!(looking_becomes(0), "no worker left looking after the panic");
        });
    }

    #[test]
    fn outside_worker_zero_the_step_runs_as_it_is() {
        let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        // This test's thread belongs to no pool.
        let sum: u64 = with_workers_awake(|| (0..1000u64).into_par_iter().sum());
        assert_eq!(sum, 999 * 1000 / 2);
        assert_eq!(LOOKING.load(Ordering::Acquire), 0);
    }
}
