//! A node's input gradient added to what the input's other consumers registered, on
//! all cores.
//!
//! Where a tensor feeds several operations (the normed hidden states feed the q, k and
//! v projections; the residual stream feeds a norm and the next residual sum), burn's
//! `Gradients::register` adds each new part to the old with the backend's `add`,
//! which Flex runs on one thread below 4 Mi elements: on smol-135m's `[1024, 576]`
//! activations five such sums a layer, while the other cores wait. graft's nodes
//! register through [`register_summed!`] instead, which takes the old part out first
//! and adds it with [`Kernels::gradient_sum`](super::kernels::Kernels::gradient_sum)
//! (all cores on the CPU). The sum is burn's, `new + old`, rounded once, so the bits
//! are the same.

/// Registers `$value` (a primitive of the inner backend `$inner`) as `$parent`'s
/// gradient, or adds it to the part registered before. `$parent` is a parent
/// `NodeRef` of the node whose backward runs.
///
/// `Gradients` finds a gradient only by an autodiff tensor, of which it reads the node
/// alone: one is made around a clone of `$value` for the lookup and dropped at once,
/// so `$value`'s buffer is unshared again before the sum.
macro_rules! register_summed {
    ($grads:expr, $parent:expr, $inner:ty, $value:expr) => {{
        let value = $value;
        let handle = $crate::compute::grad_sum::Handle::<$inner> {
            primitive: value.clone(),
            node: $parent.clone(),
            rc: std::sync::Arc::new($parent.id),
        };
        let before = $grads.remove::<$inner>(&handle);
        drop(handle);
        let value = match before {
            Some(before) => {
                #[cfg(test)]
                $crate::compute::grad_sum::SUMS.with(|sums| sums.set(sums.get() + 1));
                <$inner as $crate::compute::kernels::Kernels>::gradient_sum(value, before)
            }
            None => value,
        };
        $grads.register::<$inner>($parent.id, value);
    }};
}
pub(crate) use register_summed;

#[cfg(test)]
thread_local! {
    /// The sums [`register_summed!`] made on this thread, for the tests to see that
    /// the lookup found the earlier part (else burn's `register` would add it).
    pub static SUMS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The autodiff tensor type of inner backend `I`, which `Gradients` looks gradients
/// up by (burn exports its fields but not its name).
pub type Handle<I> =
    <burn::backend::Autodiff<I> as burn::tensor::backend::BackendTypes>::FloatTensorPrimitive;

#[cfg(test)]
mod tests {
    use super::super::flex_values::bits;
    use super::super::{cpu_norm, lora_product};
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{DType, Distribution, Tensor};

    type B = Autodiff<Flex, NoCheckpointing>;

    /// x feeds a norm and three adapted projections (as the normed hidden states feed
    /// q, k and v, and the residual stream a norm): its gradient, summed by the nodes
    /// on all cores, has the bits of burn's sum of the four parts, each part taken
    /// from a graph of its own, added in the order burn's backward pass reaches them.
    #[test]
    fn a_gradient_summed_by_the_nodes_has_the_bits_of_burns_sum() {
        let device = Default::default();
        let normal = |shape: [usize; 2]| {
            Tensor::<Flex, 2>::random(shape, Distribution::Normal(0.0, 1.0), &device)
        };
        // 300 x 256 values: more than one parallel chunk.
        let x = normal([300, 256]);
        let norm_weight = Tensor::<Flex, 1>::random([256], Distribution::Default, &device);
        let projections: Vec<[Tensor<Flex, 2>; 3]> = (0..3)
            .map(|_| [normal([256, 64]), normal([256, 8]), normal([8, 64])])
            .collect();
        // The parts of x's gradient from each consumer alone; None: all four at once.
        let gradient = |only: Option<usize>| {
            let x = Tensor::<B, 2>::from_inner(x.clone()).require_grad();
            let mut loss = Tensor::<B, 1>::zeros([1], &device);
            // Made first, so it registers last: its part is summed by the norm's node.
            if only.is_none_or(|only| only == 0) {
                let weight = Tensor::<B, 1>::from_inner(norm_weight.clone());
                let normed =
                    cpu_norm::rms_norm::<NoCheckpointing, 2>(x.clone(), weight, 1e-5, false);
                loss = loss + normed.sin().sum();
            }
            for (i, [w, a, b]) in projections.iter().enumerate() {
                if only.is_none_or(|only| only == i + 1) {
                    let [w, a, b] = [w, a, b].map(|t| Tensor::<B, 2>::from_inner(t.clone()));
                    let (a, b) = (a.require_grad(), b.require_grad());
                    let out = lora_product::lora_projection_autodiff::<Flex, NoCheckpointing>(
                        x.clone(),
                        w,
                        a,
                        b,
                        2.0,
                        DType::F32,
                    );
                    loss = loss + (out.clone() * out).sum();
                }
            }
            x.grad(&loss.backward()).expect("x is tracked")
        };
        let parts: Vec<Tensor<Flex, 2>> = (0..4).map(|i| gradient(Some(i))).collect();
        let burns_sum =
            parts[0].clone() + (parts[1].clone() + (parts[2].clone() + parts[3].clone()));
        let sums_before = super::SUMS.with(|sums| sums.get());
        let summed = gradient(None);
        let sums = super::SUMS.with(|sums| sums.get()) - sums_before;
        assert_eq!(sums, 3, "the nodes summed three of the four parts");
        assert_eq!(bits(summed), bits(burns_sum));
    }
}
