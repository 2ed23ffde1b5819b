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
//! With `compute.keep_projections` the adapted projections it names keep their outputs
//! too, so the rerun runs none of their base products (more memory held until each
//! layer is rerun; [`super::keep_projections`] says which).
//!
//! The nodes offer their outputs while this thread is keeping, grouped by layer
//! ([`Kept::next_layer`]); while it is replaying, each rerun layer ([`Kept::rerun_layer`],
//! last layer first) takes its own group's outputs in the order they were offered, as
//! its nodes run in the same order on both passes. Values are the same either way, so
//! this never changes a result; a node that finds nothing kept (another path, another
//! shape) computes as it always does.

use super::KeepProjections;
use std::any::Any;
use std::cell::RefCell;
use std::collections::VecDeque;

/// This thread's kept outputs and what its nodes do with them.
#[derive(Default)]
struct Stash {
    mode: Mode,
    /// One group a layer of the first pass, in layer order; each group's outputs in
    /// the order the layer offered them.
    layers: Vec<Vec<Box<dyn Any>>>,
    /// The group of the layer being rerun, what is left of it.
    current: VecDeque<Box<dyn Any>>,
    /// How many kept outputs were taken since keeping began.
    taken: usize,
    /// Which adapted projections offer their outputs too (`compute.keep_projections`).
    projections: KeepProjections,
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
    /// The adapted projections `which` selects keep their outputs too, not only
    /// attention.
    pub fn with_projections(self, which: KeepProjections) -> Self {
        STASH.with(|stash| stash.borrow_mut().projections = which);
        self
    }

    /// The first pass starts a layer: what is offered from now on is its.
    pub fn next_layer(&self) {
        STASH.with(|stash| stash.borrow_mut().layers.push(Vec::new()));
    }

    /// From now on nodes take what was kept instead of keeping.
    pub fn replay(&self) {
        STASH.with(|stash| stash.borrow_mut().mode = Mode::Replaying);
    }

    /// The rerun starts the last layer not yet rerun: its outputs, in the order they
    /// were offered, are what nodes take now (what the previous layer left is dropped).
    pub fn rerun_layer(&self) {
        STASH.with(|stash| {
            let mut stash = stash.borrow_mut();
            stash.current = stash.layers.pop().unwrap_or_default().into();
        });
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

/// Whether an untracked node should offer its output now.
pub fn keeping() -> bool {
    STASH.with(|stash| stash.borrow().mode == Mode::Keeping)
}

/// Whether an adapted projection from `in_features` to `out_features` keeps its
/// output on this thread: an untracked one offers it while keeping, a tracked one
/// takes it while replaying. The same answer on both passes, so a projection that kept
/// nothing never takes another's output of its shape.
pub fn keeps_projection(in_features: usize, out_features: usize) -> bool {
    STASH.with(|stash| {
        let stash = stash.borrow();
        stash.mode != Mode::Off && stash.projections.keeps(in_features, out_features)
    })
}

/// Keeps `output` for the rerun of the current layer.
pub fn offer<T: 'static>(output: T) {
    STASH.with(|stash| {
        let mut stash = stash.borrow_mut();
        if stash.layers.is_empty() {
            stash.layers.push(Vec::new());
        }
        stash
            .layers
            .last_mut()
            .expect("a layer")
            .push(Box::new(output))
    });
}

/// The first output left of the layer being rerun that is a `T` and that `fits`
/// accepts, if this thread is replaying; else `None`, and the caller computes. A
/// layer's nodes run in the same order on both passes, so each finds its own.
pub fn take<T: 'static>(fits: impl Fn(&T) -> bool) -> Option<T> {
    STASH.with(|stash| {
        let mut stash = stash.borrow_mut();
        if stash.mode != Mode::Replaying {
            return None;
        }
        let at = stash
            .current
            .iter()
            .position(|kept| kept.downcast_ref::<T>().is_some_and(&fits))?;
        let taken = stash.current.remove(at)?.downcast::<T>().ok()?;
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
    kept.next_layer();
    let first = untracked();
    kept.replay();
    kept.rerun_layer();
    let replayed = tracked();
    assert_eq!(kept.taken(), 1, "the rerun took the kept output");
    assert_eq!(replayed, computed);
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_are_rerun_last_first_each_taking_its_outputs_in_order() {
        assert!(!keeping());
        let kept = keep();
        assert!(keeping());
        assert_eq!(
            take::<u32>(|_| true),
            None,
            "nothing is taken while keeping"
        );
        for layer in 0..3u32 {
            kept.next_layer();
            offer(layer * 10);
            offer(layer * 10 + 1);
        }
        kept.replay();
        assert!(!keeping());
        kept.rerun_layer();
        assert_eq!(take::<u32>(|_| true), Some(20));
        // One that does not fit (another shape) stays, and the caller computes.
        assert_eq!(take::<u32>(|&value| value == 0), None);
        assert_eq!(take::<u64>(|_| true), None, "another type is not taken");
        kept.rerun_layer();
        assert_eq!(
            take::<u32>(|_| true),
            Some(10),
            "what the rerun layer left (21) is dropped"
        );
        assert_eq!(take::<u32>(|&value| value == 11), Some(11));
        assert_eq!(kept.taken(), 3);
        kept.rerun_layer();
        drop(kept);
        assert_eq!(take::<u32>(|_| true), None, "the guard forgets the rest");
        assert!(!keeping());
    }

    #[test]
    fn another_thread_keeps_nothing_of_this_one() {
        let kept = keep();
        offer(7u8);
        kept.replay();
        kept.rerun_layer();
        let elsewhere = std::thread::spawn(|| take::<u8>(|_| true)).join().unwrap();
        assert_eq!(elsewhere, None);
        assert_eq!(take::<u8>(|_| true), Some(7));
    }
}
