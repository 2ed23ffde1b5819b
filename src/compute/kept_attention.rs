//! Attention outputs carried from a layer-recompute step's untracked forward pass to
//! its tracked rerun of each layer (`compute.checkpointing = "layers"`).
//!
//! A step with per-layer recomputation runs every decoder layer twice: untracked, to
//! get the next layer's input, then tracked, last layer first, to get its gradients.
//! The fused attention's output and log-sum-exp are all its backward pass needs beside
//! q, k and v, and the rerun computes the same q, k and v bit for bit, so the rerun's
//! attention can take the first pass's output instead of running its forward kernel
//! again: at 32k tokens that kernel is most of a layer's forward time. What this costs
//! is the outputs of the layers not yet rerun (the attention output is one of a layer's
//! activations; the log-sum-exp is a float a row and head), against a whole layer's
//! activations that the recomputation saves.
//!
//! The attention node offers its output while this thread is keeping, and takes the
//! last one kept while it is replaying: the rerun goes last layer first, so the stack's
//! order is the layers' own. Values are the same either way, so this never changes a
//! result; an attention that finds nothing kept (another path, another shape) computes
//! as it always does.

use std::any::Any;
use std::cell::RefCell;

/// This thread's kept outputs and what its attention calls do with them.
#[derive(Default)]
struct Stash {
    mode: Mode,
    kept: Vec<Box<dyn Any>>,
    /// How many kept outputs were taken since keeping began.
    taken: usize,
}

#[derive(Clone, Copy, Default, PartialEq)]
enum Mode {
    #[default]
    Off,
    Keeping,
    Replaying,
}

thread_local! {
    static STASH: RefCell<Stash> = RefCell::new(Stash::default());
}

/// Keeping on this thread until the guard is dropped, which forgets whatever is left.
pub fn keep() -> Kept {
    STASH.with(|stash| {
        *stash.borrow_mut() = Stash {
            mode: Mode::Keeping,
            ..Stash::default()
        }
    });
    Kept(std::marker::PhantomData)
}

/// The keeping of one step; not `Send`: the stash belongs to the thread that runs it.
pub struct Kept(std::marker::PhantomData<*const ()>);

impl Kept {
    /// From now on attention takes the last output kept instead of keeping.
    pub fn replay(&self) {
        STASH.with(|stash| stash.borrow_mut().mode = Mode::Replaying);
    }

    /// How many kept outputs were taken so far.
    pub fn taken(&self) -> usize {
        STASH.with(|stash| stash.borrow().taken)
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        STASH.with(|stash| *stash.borrow_mut() = Stash::default());
    }
}

/// Whether an untracked attention should offer its output now.
pub fn keeping() -> bool {
    STASH.with(|stash| stash.borrow().mode == Mode::Keeping)
}

/// Keeps `output` for the rerun.
pub fn offer<T: 'static>(output: T) {
    STASH.with(|stash| stash.borrow_mut().kept.push(Box::new(output)));
}

/// The last output kept, if this thread is replaying, one is left, it is a `T` and
/// `fits` accepts it; else `None`, and the caller computes.
pub fn take<T: 'static>(fits: impl FnOnce(&T) -> bool) -> Option<T> {
    STASH.with(|stash| {
        let mut stash = stash.borrow_mut();
        if stash.mode != Mode::Replaying {
            return None;
        }
        let last = stash.kept.last()?.downcast_ref::<T>()?;
        if !fits(last) {
            return None;
        }
        let taken = stash.kept.pop()?.downcast::<T>().ok()?;
        stash.taken += 1;
        Some(*taken)
    })
}

/// For the attention nodes' tests: runs per-layer recomputation's two passes on one
/// attention, `untracked` (whose inputs need no gradient) while keeping and `tracked`
/// while replaying, and checks that the rerun took the kept output and gives what
/// `tracked` gives computing; returns the first pass's result.
#[cfg(test)]
pub(crate) fn assert_rerun_takes_the_kept_output<T: PartialEq + std::fmt::Debug, R>(
    tracked: impl Fn() -> T,
    untracked: impl FnOnce() -> R,
) -> R {
    let computed = tracked();
    let kept = keep();
    let first = untracked();
    kept.replay();
    let replayed = tracked();
    assert_eq!(kept.taken(), 1, "the rerun took the kept output");
    assert_eq!(replayed, computed);
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_kept_in_layer_order_are_taken_last_first_while_replaying() {
        assert!(!keeping());
        let kept = keep();
        assert!(keeping());
        assert_eq!(
            take::<u32>(|_| true),
            None,
            "nothing is taken while keeping"
        );
        for layer in 0..3u32 {
            offer(layer);
        }
        kept.replay();
        assert!(!keeping());
        assert_eq!(take::<u32>(|_| true), Some(2));
        // One that does not fit (another shape) stays, and the caller computes.
        assert_eq!(take::<u32>(|&layer| layer == 0), None);
        assert_eq!(take::<u64>(|_| true), None, "another type is not taken");
        assert_eq!(take::<u32>(|_| true), Some(1));
        assert_eq!(kept.taken(), 2);
        drop(kept);
        assert_eq!(take::<u32>(|_| true), None, "the guard forgets the rest");
        assert!(!keeping());
    }

    #[test]
    fn another_thread_keeps_nothing_of_this_one() {
        let kept = keep();
        offer(7u8);
        kept.replay();
        let elsewhere = std::thread::spawn(|| take::<u8>(|_| true)).join().unwrap();
        assert_eq!(elsewhere, None);
        assert_eq!(take::<u8>(|_| true), Some(7));
    }
}
