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
use std::time::{Duration, Instant};

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
///
/// The looking task must never run nested under a piece of the step: a worker that
/// waits inside a join takes any job from its queue, and a task that looked until the
/// step ends, stacked above a piece the step waits for, would never let that piece
/// finish. So `work` starts only once the others have entered their task (or after
/// [`ENTER_WAIT`], for a worker busy with something else), and a task that starts after
/// `work` has begun returns at once. As a last guard, a task that has found nothing to
/// run for [`IDLE_LIMIT`] returns, so a task stacked above any other job someone waits
/// for costs that long, not a hang.
pub fn with_workers_awake<R>(work: impl FnOnce() -> R) -> R {
    let threads = rayon::current_num_threads();
    if threads <= 1 || threads > cores() || rayon::current_thread_index() != Some(0) {
        return work();
    }
    let state = Arc::new(Looking::default());
    let release = Release(state.clone());
    let tasks = state.clone();
    rayon::spawn_broadcast(move |context| {
        // Worker 0 runs `work`: it must not wait for itself.
        if context.index() != 0 {
            tasks.look_until_done();
        }
    });
    let waiting = Instant::now();
    while state.entered.load(Ordering::Acquire) < threads - 1 && waiting.elapsed() < ENTER_WAIT {
        std::thread::yield_now();
    }
    state.started.store(true, Ordering::Release);
    let result = work();
    drop(release);
    result
}

/// How long worker 0 waits for the others to enter their looking task: a sleeping
/// worker wakes in tens of microseconds; one busy with other work is not waited for.
const ENTER_WAIT: Duration = Duration::from_millis(5);

/// How long a looking task goes on finding nothing before it returns. Far longer than
/// the pauses between a step's operations, which it is there to bridge.
const IDLE_LIMIT: Duration = Duration::from_millis(10);

/// What the looking tasks of one [`with_workers_awake`] share with worker 0.
#[derive(Default)]
struct Looking {
    /// How many tasks have entered the looking loop.
    entered: AtomicUsize,
    /// Set before `work` begins: a task that sees it may be nested under the step.
    started: AtomicBool,
    /// Set when `work` returns or unwinds.
    done: AtomicBool,
}

impl Looking {
    fn look_until_done(&self) {
        // Step pieces are queued only after `started` is set, so a task that reads it
        // unset cannot be running under one of them.
        if self.started.load(Ordering::Acquire) {
            return;
        }
        self.entered.fetch_add(1, Ordering::AcqRel);
        LOOKING.fetch_add(1, Ordering::AcqRel);
        let mut last_found = Instant::now();
        while !self.done.load(Ordering::Acquire) {
            if rayon::yield_now() == Some(rayon::Yield::Executed) {
                last_found = Instant::now();
            } else if last_found.elapsed() > IDLE_LIMIT {
                break;
            } else {
                std::thread::yield_now();
            }
        }
        LOOKING.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Ends the workers' looking when dropped: when the work returns, or as it unwinds.
struct Release(Arc<Looking>);

impl Drop for Release {
    fn drop(&mut self) {
        self.0.done.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

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

    /// Whether worker 1 is seen looking within a step, trying up to twenty steps: on a
    /// loaded machine a worker may not get a core within [`ENTER_WAIT`], and a step
    /// then runs without it.
    fn seen_looking_in_some_step(mut step: impl FnMut(&dyn Fn() -> bool)) -> bool {
        let seen = AtomicBool::new(false);
        for _ in 0..20 {
            step(&|| {
                let looking = LOOKING.load(Ordering::Acquire) == 1;
                seen.fetch_or(looking, Ordering::AcqRel);
                looking
            });
            if seen.load(Ordering::Acquire) {
                return true;
            }
        }
        false
    }

    #[test]
    fn the_other_workers_look_for_work_during_the_step_and_stop_after_it() {
        // Two threads: more than the cores (CI has two) would run the step as it is.
        on_worker_zero(2, || {
            let seen = seen_looking_in_some_step(|worker_one_looking| {
                let sum: u64 = with_workers_awake(|| {
                    worker_one_looking();
                    (0..100_000u64).into_par_iter().sum()
                });
                assert_eq!(sum, 99_999 * 100_000 / 2);
            });
            assert!(seen, "worker 1 looking during a step");
            assert!(looking_becomes(0), "no worker left looking after the step");
        });
    }

    #[test]
    fn the_workers_stop_looking_when_the_step_panics() {
        on_worker_zero(2, || {
            let seen = seen_looking_in_some_step(|worker_one_looking| {
                let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    with_workers_awake(|| {
                        worker_one_looking();
                        panic!("a step that fails");
                    })
                }));
                assert!(unwound.is_err());
            });
            assert!(seen, "worker 1 looking during a step");
            assert!(looking_becomes(0), "no worker left looking after the panic");
        });
    }

    /// Runs a job on worker 1 (worker 0, the caller, does not run rayon work here, so
    /// the other worker takes it) and returns once it has begun.
    fn on_worker_one(job: impl FnOnce() + Send + 'static) {
        let begun = Arc::new(AtomicBool::new(false));
        let flag = begun.clone();
        rayon::spawn(move || {
            assert_eq!(rayon::current_thread_index(), Some(1));
            flag.store(true, Ordering::Release);
            job();
        });
        while !begun.load(Ordering::Acquire) {
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_worker_that_comes_free_after_the_step_began_does_not_stay_to_look() {
        on_worker_zero(2, || {
            // Worker 1 is busy when the step begins, so its looking task may come to
            // run from inside a piece of the step: it must return at once.
            let free = Arc::new(AtomicBool::new(false));
            let hold = free.clone();
            on_worker_one(move || {
                while !hold.load(Ordering::Acquire) {
                    std::thread::yield_now();
                }
            });
            let sum: u64 = with_workers_awake(|| {
                free.store(true, Ordering::Release);
                let sum = (0..100_000u64).into_par_iter().sum();
                std::thread::sleep(Duration::from_millis(20));
                assert_eq!(
                    LOOKING.load(Ordering::Acquire),
                    0,
                    "a late task stayed to look"
                );
                sum
            });
            assert_eq!(sum, 99_999 * 100_000 / 2);
        });
    }

    #[test]
    fn a_looking_task_stacked_above_a_job_the_step_waits_for_gives_way() {
        on_worker_zero(2, || {
            // Worker 1 runs a job that waits inside rayon; the looking task lands on
            // top of it, and the step waits for that job to finish. Looking until the
            // step ends would never let it.
            let go = Arc::new(AtomicBool::new(false));
            let finished = Arc::new(AtomicBool::new(false));
            let (job_go, job_finished) = (go.clone(), finished.clone());
            on_worker_one(move || {
                while !job_go.load(Ordering::Acquire) {
                    if rayon::yield_now() != Some(rayon::Yield::Executed) {
                        std::thread::yield_now();
                    }
                }
                job_finished.store(true, Ordering::Release);
            });
            with_workers_awake(|| {
                assert!(
                    looking_becomes(1),
                    "the looking task on top of worker 1's job"
                );
                go.store(true, Ordering::Release);
                let waiting = Instant::now();
                while !finished.load(Ordering::Acquire) {
                    assert!(waiting.elapsed() < Duration::from_secs(5), "the step hung");
                    std::thread::yield_now();
                }
            });
            assert!(looking_becomes(0));
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
